// Properties of the streaming ∞-former layer (layer.hpp): short-term causal attention over
// the previous and current chunk computed independently, plus long-term attention over the
// memory of chunks ≤ c−2 composed by hand with a separate LongTermAttention; reset; float vs
// double; long streams; the backward against finite differences, float gradients against
// double, accumulation over chunks and streams, the named parameters, a seeded training run
// with Adam; bad input, and every failed call leaves the layer as a twin that never saw it
// (stream states are values; a moved-from layer throws).
//
// GCC 12 at -O1 with sanitizers reports a false -Wmaybe-uninitialized inside
// std::optional<MemoryGate<float>>::emplace; silenced here (as in part_util.hpp).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <functional>
#include <infinityformer/layer.hpp>
#include <infinityformer/optim.hpp>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "extern_templates.hpp"
#include "part_util.hpp"
#include "test_fd.hpp"
#include "test_util.hpp"

namespace {

using namespace part_util;

using Layer = InfinityFormerLayer<double>;

struct Config {
    LongTermParams params;
    Index d, heads, l;
    const char* what;
};

std::vector<Config> configs() {
    LongTermParams sorting = LongTermParams::sorting();
    sorting.num_basis = 16;
    sorting.stability = Stability::allow;
    sorting.num_samples = 8;
    LongTermParams lm = LongTermParams::lm();  // gate, sticky, KL μ term
    lm.num_basis = 24;
    lm.stability = Stability::allow;
    lm.num_samples = 10;
    lm.num_bins = 16;
    lm.seed = 5;
    return {{sorting, 6, 2, 4, "sorting: uniform, no gate, H = 2"},
            {lm, 6, 3, 5, "lm: gate, sticky, H = 3, odd L"}};
}

// Gives every weight of the layer a random value (not the seeded initialisation).
void randomise(Layer& layer, Normal& rng) {
    const Index d = layer.d_model();
    layer.set_short_term_weights(random_short_term_weights<Layer::ShortTermWeights>(d, rng));
    const Index n = layer.long_term().attention().num_basis();
    layer.set_long_term_weights(
        random_attention_weights<ContinuousAttention<double>::Weights>(d, d, n, rng));
    if (layer.long_term().has_gate()) {
        MemoryGate<double>::Weights g;
        for (auto& tap : g.taps) tap = rng.matrix(d, d, 0.5);
        g.bias = rng.matrix(d, 1, 0.5);
        layer.set_gate_weights(g);
    }
}

struct LayerCase {
    std::string name;
    LongTermParams params;
    Index d, heads, length;
    std::vector<int> chunks;  // chunks differentiated (the stream runs up to the last one)
    double kl;
    bool sharp;
};

const std::vector<LayerCase>& layer_cases() {
    static const std::vector<LayerCase> cases = [] {
        std::vector<LayerCase> v;
        v.push_back({"lm, gate, sticky", lm_small(8, 4, 21), 6, 2, 4, {0, 1, 2, 3, 4}, 0.05, true});
        LongTermParams sorting;
        sorting.num_basis = 8;
        sorting.stability = Stability::allow;
        sorting.num_samples = 3;
        sorting.seed = 22;
        v.push_back({"sorting, no gate, uniform, odd L", sorting, 4, 1, 3, {3}, 0.0, false});
        v.push_back({"lm, gate, sticky, H = 3", lm_small(12, 4, 23), 6, 3, 2, {5}, 0.02, true});
        return v;
    }();
    return cases;
}

void sharpen_layer(InfinityFormerLayerd& layer) {
    for (auto& p : layer.parameters()) {
        if (p.name == "long_term.proj_key.weight") p.values() *= 10.0;
        if (p.name == "long_term.mu.weight") p.values() *= 3.0;
        if (p.name == "long_term.sigma.weight") p.values() *= 6.0;
    }
}

double layer_loss(InfinityFormerLayerd& m, const MatrixXd& X, const MatrixXd& dY, double kl) {
    const MatrixXd Y = m.forward(X);
    double l = Y.cwiseProduct(dY).sum();
    if (m.long_term().memory().tokens_stored() > 0)
        l += kl * m.long_term().last_attention().kl_reg.sum();
    return l;
}

// Every weight and gradient, by name.
std::vector<std::pair<std::string, MatrixXd>> weights_and_grads(Layer& layer) {
    std::vector<std::pair<std::string, MatrixXd>> out;
    for (const auto& p : layer.parameters()) {
        out.emplace_back(p.name, p.values());
        out.emplace_back(p.name + " (grad)", p.gradient());
    }
    return out;
}

// Both layers equal in everything a later call reads.
void require_twins(Layer& a, Layer& b) {
    REQUIRE(a.num_streams() == b.num_streams());
    for (Index s = 0; s < a.num_streams(); ++s) {
        INFO("stream " << s);
        CHECK(a.stream_state(s) == b.stream_state(s));
        CHECK(a.long_term().memory(s).coefficients() == b.long_term().memory(s).coefficients());
    }
    const auto wa = weights_and_grads(a), wb = weights_and_grads(b);
    REQUIRE(wa.size() == wb.size());
    for (std::size_t i = 0; i < wa.size(); ++i) {
        INFO(wa[i].first);
        CHECK(wa[i].second == wb[i].second);
    }
}

// A forward on both; the outputs must be identical.
void forward_both(Layer& a, Layer& b, Normal& rng, Index stream = 0) {
    const MatrixXd x = rng.matrix(a.chunk_length(), a.d_model());
    const MatrixXd ya = a.forward(x, stream), yb = b.forward(x, stream);
    CHECK(ya.allFinite());
    CHECK(ya == yb);
}

// A step of training on both: forward, backward; the results must be identical.
void step_both(Layer& a, Layer& b, Normal& rng, Index stream = 0) {
    forward_both(a, b, rng, stream);
    const MatrixXd dy = rng.matrix(a.chunk_length(), a.d_model());
    MatrixXd dxa(dy.rows(), dy.cols()), dxb(dy.rows(), dy.cols());
    a.backward(dy, 0.25, dxa, stream);
    b.backward(dy, 0.25, dxb, stream);
    CHECK(dxa == dxb);
}

// Sets one entry of the named weight (through parameters()).
void poke(Layer& layer, const std::string& name, double value) {
    for (auto& p : layer.parameters())
        if (p.name == name) {
            p.values()(0, 0) = value;
            return;
        }
    FAIL("no parameter " << name);
}
double peek(Layer& layer, const std::string& name) {
    for (auto& p : layer.parameters())
        if (p.name == name) return p.values()(0, 0);
    FAIL("no parameter " << name);
    return 0;
}

struct Failure {
    std::string what;
    int min_chunks;  // the call can fail only once this many chunks were processed
    // Makes one call on `layer` fail (and restores any weight it changed), checking that
    // it threw.
    std::function<void(Layer& layer, Normal& rng)> fail;
};

// A forward that fails inside because weight `name` is NaN, with an error that names the
// weight (not the input); the weight is restored.
Failure nan_weight(const std::string& name, int min_chunks) {
    return {"forward with NaN in " + name, min_chunks, [name](Layer& layer, Normal& rng) {
                const double keep = peek(layer, name);
                poke(layer, name, kNaN);
                const MatrixXd x = rng.matrix(layer.chunk_length(), layer.d_model());
                REQUIRE_THROWS_WITH(layer.forward(x),
                                    Catch::Contains("InfinityFormerLayer::forward: weight " + name +
                                                    " has a non-finite entry nan"));
                poke(layer, name, keep);
            }};
}

std::vector<Failure> failures(bool lm) {
    std::vector<Failure> f = {
        {"forward with a wrong shape", 0,
         [](Layer& layer, Normal& rng) {
             REQUIRE_THROWS_AS(layer.forward(rng.matrix(layer.chunk_length() + 1, layer.d_model())),
                               infinityformer::invalid_argument);
         }},
        {"forward with a NaN input", 0,
         [](Layer& layer, Normal& rng) {
             MatrixXd x = rng.matrix(layer.chunk_length(), layer.d_model());
             x(1, 1) = kNaN;
             REQUIRE_THROWS_AS(layer.forward(x), infinityformer::invalid_argument);
         }},
        {"forward whose projected queries overflow", 0,
         [](Layer& layer, Normal&) {
             const MatrixXd x = testutil::overflowing_input(layer.short_term_weights().query,
                                                            layer.chunk_length());
             REQUIRE_THROWS_WITH(layer.forward(x), Catch::Contains("projections X W^T overflowed"));
         }},
        nan_weight("short_term.out.weight", 0),
        nan_weight("short_term.query.weight", 0),
        nan_weight("long_term.mu.weight", 2),
        nan_weight("long_term.proj_value.weight", 2),
        {"backward with a wrong shape", 1,
         [](Layer& layer, Normal& rng) {
             MatrixXd dx(layer.chunk_length(), layer.d_model());
             REQUIRE_THROWS_AS(layer.backward(rng.matrix(1, layer.d_model()), 0.1, dx),
                               infinityformer::invalid_argument);
         }},
        {"backward with a NaN gradient", 1,
         [](Layer& layer, Normal& rng) {
             MatrixXd dy = rng.matrix(layer.chunk_length(), layer.d_model());
             dy(0, 0) = kNaN;
             MatrixXd dx(layer.chunk_length(), layer.d_model());
             REQUIRE_THROWS_AS(layer.backward(dy, 0.1, dx), infinityformer::invalid_argument);
         }},
        {"backward with a negative kl_weight", 1,
         [](Layer& layer, Normal& rng) {
             MatrixXd dx(layer.chunk_length(), layer.d_model());
             REQUIRE_THROWS_AS(
                 layer.backward(rng.matrix(layer.chunk_length(), layer.d_model()), -1.0, dx),
                 infinityformer::invalid_argument);
         }},
        {"backward into a dX of the wrong shape", 1,
         [](Layer& layer, Normal& rng) {
             MatrixXd dx(layer.chunk_length(), layer.d_model() + 1);
             REQUIRE_THROWS_AS(
                 layer.backward(rng.matrix(layer.chunk_length(), layer.d_model()), 0.1, dx),
                 infinityformer::invalid_argument);
         }},
        {"calls on a stream that does not exist", 0,
         [](Layer& layer, Normal& rng) {
             MatrixXd dx(layer.chunk_length(), layer.d_model());
             REQUIRE_THROWS_AS(layer.forward(rng.matrix(layer.chunk_length(), layer.d_model()), 5),
                               infinityformer::invalid_argument);
             REQUIRE_THROWS_AS(
                 layer.backward(rng.matrix(layer.chunk_length(), layer.d_model()), 0.1, dx, 5),
                 infinityformer::invalid_argument);
             REQUIRE_THROWS_AS(layer.set_num_streams(0), infinityformer::invalid_argument);
             REQUIRE_THROWS_AS(layer.set_num_streams(-2), infinityformer::invalid_argument);
         }},
        {"weights of a wrong shape or NaN", 0,
         [](Layer& layer, Normal& rng) {
             auto w = layer.short_term_weights();
             w.key = rng.matrix(2, 2);
             REQUIRE_THROWS_AS(layer.set_short_term_weights(w), infinityformer::invalid_argument);
             auto a = layer.long_term().attention().weights();
             a.mu(0) = kNaN;
             REQUIRE_THROWS_AS(layer.set_long_term_weights(a), infinityformer::invalid_argument);
         }},
    };
    if (lm) {
        f.push_back(nan_weight("long_term.mask_net.bias", 2));
        f.push_back(nan_weight("long_term.mask_net.weight.1", 2));
    }
    return f;
}

}  // namespace

TEST_CASE("layer: the first chunk is plain causal multi-head attention", "[layer]") {
    for (const auto& cfg : configs()) {
        INFO(cfg.what);
        Layer layer(cfg.d, cfg.heads, cfg.l, cfg.params);
        Normal rng(1);
        randomise(layer, rng);
        const MatrixXd x = rng.matrix(cfg.l, cfg.d);
        const MatrixXd y = layer.forward(x);
        REQUIRE(y.rows() == cfg.l);
        REQUIRE(y.cols() == cfg.d);
        const MatrixXd expected =
            causal_attention(MatrixXd(0, cfg.d), x, layer.short_term_weights(), cfg.heads);
        CHECK(max_abs(y - expected) <= 1e-13 * max_abs(expected));
        // Causality: the first token's output depends on the first token only.
        MatrixXd x2 = x;
        x2.bottomRows(cfg.l - 1) = rng.matrix(cfg.l - 1, cfg.d);
        Layer other(cfg.d, cfg.heads, cfg.l, cfg.params);
        other.set_short_term_weights(layer.short_term_weights());
        const MatrixXd y2 = other.forward(x2);
        CHECK(max_abs(y2.row(0) - y.row(0)) <= 1e-14 * max_abs(y));
        CHECK(max_abs(y2.bottomRows(cfg.l - 1) - y.bottomRows(cfg.l - 1)) > 1e-3);
    }
}

TEST_CASE("layer: short-term over chunks c-1, c plus long-term over chunks <= c-2", "[layer]") {
    for (const auto& cfg : configs()) {
        INFO(cfg.what);
        Layer layer(cfg.d, cfg.heads, cfg.l, cfg.params);
        Normal rng(2);
        randomise(layer, rng);
        // The long-term part by hand: a separate module with the same weights.
        LongTermAttention<double> lta(cfg.d, cfg.heads, cfg.l, cfg.params, cfg.d);
        lta.set_attention_weights(layer.long_term().attention().weights());
        if (cfg.params.gate) lta.set_gate_weights(layer.long_term().gate().weights());
        const auto& w = layer.short_term_weights();
        std::vector<MatrixXd> xs;
        for (int c = 0; c < 7; ++c) {
            xs.push_back(rng.matrix(cfg.l, cfg.d));
            const MatrixXd y = layer.forward(xs.back());
            const MatrixXd past = c == 0 ? MatrixXd(0, cfg.d) : xs[static_cast<std::size_t>(c - 1)];
            MatrixXd expected = causal_attention(past, xs.back(), w, cfg.heads);
            if (c >= 2) {
                // Chunk c−2 enters the memory, then the queries X W_Qᵀ attend to it.
                lta.update(xs[static_cast<std::size_t>(c - 2)]);
                expected += lta.attend(xs.back() * w.query.transpose());
            }
            INFO("chunk " << c);
            CHECK(max_abs(y - expected) <= 1e-12 * max_abs(expected));
            // The layer's memory is the hand-built one (chunks ≤ c−2).
            CHECK(layer.long_term().memory().empty() == (c < 2));
            if (c >= 2) {
                CHECK(max_abs(layer.long_term().memory().coefficients() -
                              lta.memory().coefficients()) == 0);
                CHECK(layer.long_term().memory().tokens_stored() == (c - 1) * cfg.l);
            }
        }
        // The long-term part matters: without it the output would differ.
        const MatrixXd x = rng.matrix(cfg.l, cfg.d);
        const MatrixXd y = layer.forward(x);
        const MatrixXd st = causal_attention(xs.back(), x, w, cfg.heads);
        CHECK(max_abs(y - st) > 1e-3 * max_abs(st));
    }
}

TEST_CASE("layer: reset starts a new stream", "[layer]") {
    for (const auto& cfg : configs()) {
        INFO(cfg.what);
        Layer layer(cfg.d, cfg.heads, cfg.l, cfg.params);
        Normal rng(3);
        randomise(layer, rng);
        std::vector<MatrixXd> xs, ys;
        for (int c = 0; c < 5; ++c) {
            xs.push_back(rng.matrix(cfg.l, cfg.d));
            ys.push_back(layer.forward(xs.back()));
        }
        // Default: the generator restarts, so the replayed document gives the same outputs,
        // sticky samples included.
        const Layer before = layer;
        layer.reset();
        CHECK(layer.long_term().memory().empty());
        for (int c = 0; c < 5; ++c) {
            INFO("chunk " << c);
            CHECK(layer.forward(xs[static_cast<std::size_t>(c)]) ==
                  ys[static_cast<std::size_t>(c)]);
        }
        // ResetGenerator::keep: the generator continues. Chunks 0–2 sample no old memory
        // (chunk 2 stores chunk 0 as a first chunk) and repeat; with sticky sampling the
        // fourth chunk's samples come from the advanced generator.
        Layer kept = before;
        kept.reset(0, ResetGenerator::keep);
        CHECK(kept.stream_state().long_term.memory.state().rng.engine() ==
              before.stream_state().long_term.memory.state().rng.engine());
        std::vector<MatrixXd> again;
        for (int c = 0; c < 5; ++c) again.push_back(kept.forward(xs[static_cast<std::size_t>(c)]));
        for (int c = 0; c < 3; ++c)
            CHECK(again[static_cast<std::size_t>(c)] == ys[static_cast<std::size_t>(c)]);
        if (cfg.params.sampling == Sampling::uniform)
            CHECK(again == ys);
        else
            CHECK(again[4] != ys[4]);
    }
}

TEST_CASE("layer: float agrees with double", "[layer]") {
    for (auto cfg : configs()) {
        // Sticky draws whole bins: a float/double difference in the histogram may move a
        // sample by a bin; stratified points move continuously, so compare with those.
        if (cfg.params.sampling == Sampling::sticky) cfg.params.sampling = Sampling::stratified;
        INFO(cfg.what);
        Layer ld(cfg.d, cfg.heads, cfg.l, cfg.params);
        InfinityFormerLayer<float> lf(cfg.d, cfg.heads, cfg.l, cfg.params);
        Normal rng(4);
        randomise(ld, rng);
        // Round the double weights to float, and use the rounded values in both.
        auto round = [](const MatrixXd& m) { return MatrixXd(m.cast<float>().cast<double>()); };
        auto sw = ld.short_term_weights();
        for (MatrixXd* m : {&sw.query, &sw.key, &sw.value, &sw.out}) *m = round(*m);
        ld.set_short_term_weights(sw);
        lf.set_short_term_weights({sw.query.cast<float>(), sw.key.cast<float>(),
                                   sw.value.cast<float>(), sw.out.cast<float>()});
        auto aw = ld.long_term().attention().weights();
        aw.proj_key = round(aw.proj_key);
        aw.proj_value = round(aw.proj_value);
        aw.attn_out = round(aw.attn_out);
        aw.mu = round(aw.mu);
        aw.sigma = round(aw.sigma);
        ld.set_long_term_weights(aw);
        lf.set_long_term_weights({aw.proj_key.cast<float>(), aw.proj_value.cast<float>(),
                                  aw.attn_out.cast<float>(), aw.mu.cast<float>(),
                                  aw.sigma.cast<float>()});
        if (cfg.params.gate) {
            auto gw = ld.long_term().gate().weights();
            MemoryGate<float>::Weights fw;
            for (std::size_t j = 0; j < 3; ++j) {
                gw.taps[j] = round(gw.taps[j]);
                fw.taps[j] = gw.taps[j].cast<float>();
            }
            gw.bias = round(gw.bias);
            fw.bias = gw.bias.cast<float>();
            ld.set_gate_weights(gw);
            lf.set_gate_weights(fw);
        }
        for (int c = 0; c < 6; ++c) {
            const Eigen::MatrixXf x = rng.matrix(cfg.l, cfg.d).cast<float>();
            const MatrixXd yd = ld.forward(x.cast<double>());
            const MatrixXd yf = lf.forward(x).cast<double>();
            const double err = max_abs(yf - yd) / max_abs(yd);
            INFO("chunk " << c << ": max |y_f - y_d| / max |y_d| = " << err);
            CHECK(err <= 1e-4);
        }
    }
}

TEST_CASE("layer: a long stream stays finite", "[layer]") {
    // Resolved bases (see memory: long streams), with every sampling.
    for (Sampling s : {Sampling::uniform, Sampling::sticky, Sampling::stratified}) {
        LongTermParams p =
            s == Sampling::uniform ? LongTermParams::sorting() : LongTermParams::lm();
        p.sampling = s;
        p.num_basis = 32;
        p.stability = Stability::allow;
        p.widths = {0.05, 0.1};
        p.num_samples = 16;
        p.num_bins = 32;
        INFO(to_string(s));
        Layer layer(8, 2, 8, p);
        Normal rng(9);
        double first_b = 0, largest_b = 0, largest_y = 0;
        for (int c = 0; c < 300; ++c) {
            const MatrixXd y = layer.forward(rng.matrix(8, 8));
            REQUIRE(y.allFinite());
            largest_y = std::max(largest_y, max_abs(y));
            if (c >= 2) {
                const double b = max_abs(layer.long_term().memory().coefficients());
                if (c == 2) first_b = b;
                largest_b = std::max(largest_b, b);
            }
        }
        CHECK(largest_b <= 100 * first_b);
        CHECK(largest_y < 100);
        CHECK(layer.long_term().memory().tokens_stored() == 298 * 8);
    }
}

TEST_CASE("layer: backward equals finite differences", "[layer][fd][training]") {
    for (const auto& c : layer_cases()) {
        Normal rng(c.params.seed + 700);
        InfinityFormerLayerd layer(c.d, c.heads, c.length, c.params);
        if (c.sharp) sharpen_layer(layer);
        for (int k = 0; k <= c.chunks.back(); ++k) {
            const MatrixXd X = rng.matrix(c.length, c.d, 1.5);
            if (std::find(c.chunks.begin(), c.chunks.end(), k) != c.chunks.end()) {
                INFO(c.name << ", chunk " << k);
                const MatrixXd dY = rng.matrix(c.length, c.d);
                const InfinityFormerLayerd state = layer;
                InfinityFormerLayerd base = state;
                base.zero_grad();
                base.forward(X);
                // Chunks 0 and 1: short-term only; from chunk 2 on, the memory holds chunk
                // k − 2 (a first-chunk fit at 2, the compressed refit after).
                CHECK(base.long_term().memory().tokens_stored() ==
                      (k >= 2 ? (k - 1) * c.length : 0));
                MatrixXd dX(c.length, c.d);
                base.backward(dY, c.kl, dX);
                const auto analytic = gradients_of(base.parameters());
                if (k < 2)
                    for (std::size_t b = 4; b < analytic.size(); ++b) CHECK(analytic[b].isZero(0));
                const double h0 = kH0;
                check_input(
                    "layer", "dX", X, dX,
                    [&](const MatrixXd& x) {
                        InfinityFormerLayerd m = state;
                        return layer_loss(m, x, dY, c.kl);
                    },
                    h0, static_cast<std::uint64_t>(k));
                check_parameters(
                    "layer", state, [](InfinityFormerLayerd& m) { return m.parameters(); },
                    [&](InfinityFormerLayerd& m) { return layer_loss(m, X, dY, c.kl); }, analytic,
                    h0, static_cast<std::uint64_t>(k + 10));
            }
            layer.forward(X);
        }
    }
}

TEST_CASE("layer: float gradients agree with double", "[layer][float][training]") {
    for (const auto& c : layer_cases()) {
        Normal rng(c.params.seed + 700);
        InfinityFormerLayerd layer(c.d, c.heads, c.length, c.params);
        if (c.sharp) sharpen_layer(layer);
        InfinityFormerLayerf layerf(c.d, c.heads, c.length, c.params);
        copy_values(layerf.parameters(), layer.parameters());
        for (int k = 0; k <= c.chunks.back(); ++k) {
            INFO(c.name << ", chunk " << k);
            const MatrixXd X = rng.matrix(c.length, c.d, 1.5);
            const MatrixXd dY = rng.matrix(c.length, c.d);
            layer.zero_grad();
            layerf.zero_grad();
            const MatrixXd Y = layer.forward(X);
            const Eigen::MatrixXf Yf = layerf.forward(X.cast<float>());
            require_float("layer", "Y", Yf, Y);
            MatrixXd dX(c.length, c.d);
            Eigen::MatrixXf dXf(c.length, c.d);
            layer.backward(dY, c.kl, dX);
            layerf.backward(dY.cast<float>(), static_cast<float>(c.kl), dXf);
            require_float("layer", "dX", dXf, dX);
            const auto gd = gradients_of(layer.parameters());
            const auto gf = gradients_of(layerf.parameters());
            const auto names = names_of(layer.parameters());
            REQUIRE(gf.size() == gd.size());
            for (std::size_t b = 0; b < gd.size(); ++b)
                require_float("layer", names[b], gf[b], gd[b]);
        }
    }
}

TEST_CASE("layer: gradients accumulate over chunks and zero_grad resets them",
          "[layer][accumulate][training]") {
    const LongTermParams p = lm_small(8, 4, 51);
    Normal rng(51);
    std::vector<MatrixXd> xs, dys;
    for (int k = 0; k < 5; ++k) {
        xs.push_back(rng.matrix(4, 6));
        dys.push_back(rng.matrix(4, 6));
    }
    MatrixXd dX(4, 6);
    auto run = [&](std::vector<int> differentiated, InfinityFormerLayerd& m) {
        std::vector<MatrixXd> ys;
        for (int k = 0; k < 5; ++k) {
            ys.push_back(m.forward(xs[static_cast<std::size_t>(k)]));
            for (int d : differentiated)
                if (d == k) m.backward(dys[static_cast<std::size_t>(k)], 0.05, dX);
        }
        return ys;
    };
    InfinityFormerLayerd acc(6, 2, 4, p), only3(6, 2, 4, p), only4(6, 2, 4, p);
    const auto y_acc = run({3, 4}, acc);
    const auto y3 = run({3}, only3);
    run({4}, only4);
    // backward() changes no forward state: the outputs are those of the other runs.
    require_same(y_acc, y3);
    require_sum(gradients_of(acc.parameters()), gradients_of(only3.parameters()),
                gradients_of(only4.parameters()));
    acc.zero_grad();
    for (const auto& g : gradients_of(acc.parameters())) CHECK(g.isZero(0.0));
    CHECK(acc.short_term_gradients().query.isZero(0.0));
    // After zero_grad the next backward starts from zero: only3's last forward (chunk 4) is
    // not differentiated yet (acc's was: a second backward of it is refused).
    only3.zero_grad();
    only3.backward(dys[4], 0.05, dX);
    require_same(gradients_of(only3.parameters()), gradients_of(only4.parameters()));
}

TEST_CASE("layer: streams are independent and accumulate into the shared gradients",
          "[layer][accumulate][streams][training]") {
    const LongTermParams p = lm_small(8, 4, 61);
    Normal rng(61);
    const int chunks = 5;
    std::vector<MatrixXd> xa, xb;
    for (int k = 0; k < chunks; ++k) {
        xa.push_back(rng.matrix(4, 6));
        xb.push_back(rng.matrix(4, 6));
    }
    const MatrixXd dya = rng.matrix(4, 6), dyb = rng.matrix(4, 6);

    InfinityFormerLayerd two(6, 2, 4, p);
    two.set_num_streams(2);
    REQUIRE(two.num_streams() == 2);
    REQUIRE(two.long_term().num_streams() == 2);
    // Streams are independent: each of two layers with the same weights runs one of the
    // streams alone (stream 1's generator is seeded for stream 1, so alone_b uses its
    // stream 1 and leaves stream 0 untouched).
    InfinityFormerLayerd alone_a(6, 2, 4, p), alone_b(6, 2, 4, p);
    alone_b.set_num_streams(2);
    MatrixXd dXa(4, 6), dXb(4, 6), dX1(4, 6), dX2(4, 6);
    for (int k = 0; k < chunks; ++k) {
        const auto i = static_cast<std::size_t>(k);
        MatrixXd ya, yb;
        if (k % 2 == 0) {  // both orders of the two streams
            ya = two.forward(xa[i], 0);
            yb = two.forward(xb[i], 1);
        } else {
            yb = two.forward(xb[i], 1);
            ya = two.forward(xa[i], 0);
        }
        INFO("chunk " << k);
        CHECK(ya == alone_a.forward(xa[i]));
        CHECK(yb == alone_b.forward(xb[i], 1));
    }
    // Sticky sampling was used, so the seeds mattered.
    CHECK(two.long_term().memory(1).last_sample_points() ==
          alone_b.long_term().memory(1).last_sample_points());
    two.backward(dya, 0.1, dX1, 0);
    two.backward(dyb, 0.1, dX2, 1);
    alone_a.backward(dya, 0.1, dXa);
    alone_b.backward(dyb, 0.1, dXb, 1);
    CHECK(dX1 == dXa);
    CHECK(dX2 == dXb);
    require_sum(gradients_of(two.parameters()), gradients_of(alone_a.parameters()),
                gradients_of(alone_b.parameters()));
    REQUIRE_THROWS_AS(two.set_num_streams(0), infinityformer::invalid_argument);
    REQUIRE_THROWS_WITH(two.forward(xa[0], 2), Contains("stream"));
}

TEST_CASE("layer: parameters() lists the documented names and shapes",
          "[layer][parameters][training]") {
    const Index d = 6, n = 8;
    for (const bool gate : {true, false}) {
        INFO("gate " << gate);
        LongTermParams p = lm_small(n, 4, 71);
        p.gate = gate;
        InfinityFormerLayerd layer(d, 2, 4, p);
        auto ps = layer.parameters();
        std::vector<std::string> expected = {
            "short_term.query.weight",   "short_term.key.weight",     "short_term.value.weight",
            "short_term.out.weight",     "long_term.proj_key.weight", "long_term.proj_value.weight",
            "long_term.attn_out.weight", "long_term.mu.weight",       "long_term.sigma.weight"};
        std::vector<std::pair<Index, Index>> shapes(7, {d, d});
        shapes.push_back({n, 1});
        shapes.push_back({n, 1});
        if (gate) {
            for (const char* s : {"long_term.mask_net.weight.0", "long_term.mask_net.weight.1",
                                  "long_term.mask_net.weight.2", "long_term.mask_net.bias"})
                expected.push_back(s);
            shapes.insert(shapes.end(), 3, {d, d});
            shapes.push_back({d, 1});
        }
        REQUIRE(names_of(ps) == expected);
        Index total = 0;
        for (std::size_t i = 0; i < ps.size(); ++i) {
            INFO(ps[i].name);
            CHECK(ps[i].rows == shapes[i].first);
            CHECK(ps[i].cols == shapes[i].second);
            CHECK(ps[i].value != nullptr);
            CHECK(ps[i].grad != nullptr);
            CHECK(ps[i].name.find("proj_query") == std::string::npos);
            total += ps[i].size();
        }
        CHECK(total == 4 * d * d + 3 * d * d + 2 * n + (gate ? 3 * d * d + d : 0));
        // The views alias the layer's weights and gradients.
        ps[0].value[1] = 0.125;
        CHECK(layer.short_term_weights().query(1) == 0.125);
        ps[6].value[2] = -0.25;
        CHECK(layer.long_term().attention().weights().attn_out(2) == -0.25);
        ps[7].value[0] = 0.5;
        CHECK(layer.long_term().attention().weights().mu(0) == 0.5);
        if (gate) {
            ps[9].value[3] = 0.75;
            CHECK(layer.long_term().gate().weights().taps[0](3) == 0.75);
            ps[12].value[1] = -0.5;
            CHECK(layer.long_term().gate().weights().bias(1) == -0.5);
        }
        ps[3].grad[0] = 2.0;
        CHECK(layer.short_term_gradients().out(0) == 2.0);
        // LongTermAttention alone: the same names without the prefix.
        LongTermAttentiond lta(d, 2, 4, p);
        const auto lp = lta.parameters();
        REQUIRE(lp.size() == ps.size() - 4);
        for (std::size_t i = 0; i < lp.size(); ++i)
            CHECK("long_term." + lp[i].name == ps[i + 4].name);
    }
}

TEST_CASE("layer: Adam fits a tiny layer to a fixed target over a stream",
          "[layer][fit][training]") {
    using Layer = InfinityFormerLayer<double>;
    const Index d = 8, heads = 2, length = 4, num_chunks = 5;
    LongTermParams p = LongTermParams::lm();
    p.num_basis = 8;
    p.stability = Stability::allow;
    p.num_samples = 4;
    p.seed = 1;
    Layer layer(d, heads, length, p);
    AdamOptions o;
    o.learning_rate = 1e-2;
    Adam<double> adam(layer.parameters(), o);
    // A fixed stream and a fixed target: Y* = X A, A a random linear map.
    Normal rng(101);
    const MatrixXd A = rng.matrix(d, d, 0.5);
    std::vector<MatrixXd> xs, targets;
    for (Index c = 0; c < num_chunks; ++c) {
        xs.push_back(rng.matrix(length, d));
        targets.push_back(xs.back() * A);
    }
    const double n = static_cast<double>(num_chunks * length * d);
    MatrixXd dX(length, d);
    // One epoch: a new document, the same chunks; returns the MSE before the step.
    auto epoch = [&](bool train) {
        layer.reset();
        double loss = 0;
        for (Index c = 0; c < num_chunks; ++c) {
            const auto i = static_cast<std::size_t>(c);
            const MatrixXd diff = layer.forward(xs[i]) - targets[i];
            loss += diff.squaredNorm() / n;
            if (train) layer.backward(2.0 * diff / n, 0.0, dX);
        }
        if (train) {
            adam.step();
            adam.zero_grad();
        }
        return loss;
    };
    const double initial = epoch(false);
    for (int step = 0; step < 300; ++step) epoch(true);
    const double final_loss = epoch(false);
    INFO("MSE " << initial << " -> " << final_loss);
    CHECK(std::isfinite(final_loss));
    CHECK(final_loss < initial / 10);
}

TEST_CASE("layer: rejects bad input and keeps its state", "[layer][errors]") {
    LongTermParams p = LongTermParams::lm();
    p.num_basis = 16;
    p.stability = Stability::allow;
    p.num_samples = 8;
    p.num_bins = 16;
    // The messages name the constructor the user called, not a part's.
    const char* ctor = "InfinityFormerLayer::InfinityFormerLayer: ";
    REQUIRE_INVALID(InfinityFormerLayer<double>(6, 4, 4, p), has(ctor) && has("num_heads is 4"));
    REQUIRE_INVALID(InfinityFormerLayer<double>(6, 0, 4, p), has(ctor) && has("num_heads is 0"));
    REQUIRE_INVALID(InfinityFormerLayer<double>(6, 2, 0, p), has(ctor) && has("chunk_length is 0"));
    REQUIRE_INVALID(InfinityFormerLayer<double>(0, 1, 4, p), has(ctor) && has("d_model is 0"));
    LongTermParams q = p;
    q.tau = 2;
    REQUIRE_INVALID(InfinityFormerLayer<double>(6, 2, 4, q), has(ctor) && has("tau is 2"));
    InfinityFormerLayer<double> layer(6, 2, 4, p), twin(6, 2, 4, p);
    Normal rng(12);
    const MatrixXd x = rng.matrix(4, 6);
    auto bad_calls = [&] {
        const char* where = "InfinityFormerLayer::forward: ";
        REQUIRE_INVALID(layer.forward(rng.matrix(3, 6)),
                        has(where) && has("X is 3x6, expected 4x6"));
        REQUIRE_INVALID(layer.forward(rng.matrix(5, 6)),
                        has(where) && has("X is 5x6, expected 4x6"));
        REQUIRE_INVALID(layer.forward(rng.matrix(4, 7)),
                        has(where) && has("X is 4x7, expected 4x6"));
        REQUIRE_INVALID(layer.forward(with(x, 2, 3, kNaN)),
                        has(where) && has("X has a non-finite entry nan at (2, 3)"));
        REQUIRE_INVALID(layer.forward(with(x, 0, 5, kInf)),
                        has(where) && has("X has a non-finite entry inf"));
        // Finite input whose projected queries overflow: x_j = DBL_MAX sign(W_Q[r, j]) gives
        // q_r = DBL_MAX Σ_j |W_Q[r, j]| > DBL_MAX for the row r of largest Σ_j |W_Q[r, j]|.
        const auto w = layer.short_term_weights();
        const MatrixXd huge = testutil::overflowing_input(w.query, 4);
        REQUIRE_INVALID(layer.forward(huge), has(where) && has("projections X W^T overflowed"));
        const char* sw = "ShortTermAttention::set_weights: ";
        auto bad = w;
        bad.query = rng.matrix(6, 5);
        REQUIRE_INVALID(layer.set_short_term_weights(bad),
                        has(sw) && has("query is 6x5, expected 6x6"));
        bad = w;
        bad.key = rng.matrix(5, 6);
        REQUIRE_INVALID(layer.set_short_term_weights(bad),
                        has(sw) && has("key is 5x6, expected 6x6"));
        bad = w;
        bad.value = rng.matrix(6, 7);
        REQUIRE_INVALID(layer.set_short_term_weights(bad),
                        has(sw) && has("value is 6x7, expected 6x6"));
        bad = w;
        bad.out = rng.matrix(1, 1);
        REQUIRE_INVALID(layer.set_short_term_weights(bad),
                        has(sw) && has("out is 1x1, expected 6x6"));
        bad = w;
        bad.key(1, 2) = kNaN;
        REQUIRE_INVALID(layer.set_short_term_weights(bad),
                        has(sw) && has("key has a non-finite entry nan"));
        CHECK(layer.short_term_weights().query == twin.short_term_weights().query);
        CHECK(layer.short_term_weights().key == twin.short_term_weights().key);
        CHECK(layer.short_term_weights().value == twin.short_term_weights().value);
        CHECK(layer.short_term_weights().out == twin.short_term_weights().out);
    };
    // Bad calls at every stage of the stream (empty, window only, window + pending chunk,
    // memory in use); the next good chunk must give the twin's output, bit for bit.
    for (int c = 0; c < 6; ++c) {
        INFO("before chunk " << c);
        bad_calls();
        const MatrixXd xc = rng.matrix(4, 6);
        const MatrixXd y = layer.forward(xc);
        CHECK(y == twin.forward(xc));
        CHECK(layer.long_term().memory().coefficients() ==
              twin.long_term().memory().coefficients());
        CHECK(layer.long_term().memory().tokens_stored() ==
              twin.long_term().memory().tokens_stored());
    }
}

// A rejected chunk must not touch the trace that backward() differentiates.
TEST_CASE("layer: a rejected forward leaves the backward trace unchanged", "[layer][errors]") {
    LongTermParams p = LongTermParams::sorting();
    p.num_basis = 16;
    p.stability = Stability::allow;
    p.num_samples = 8;
    InfinityFormerLayer<double> layer(6, 2, 4, p), twin(6, 2, 4, p);
    Normal rng(14);
    for (int c = 0; c < 3; ++c) {
        const MatrixXd x = rng.matrix(4, 6);
        layer.forward(x);
        twin.forward(x);
    }
    const MatrixXd huge = testutil::overflowing_input(layer.short_term_weights().query, 4);
    REQUIRE_THROWS_AS(layer.forward(huge), infinityformer::invalid_argument);
    const MatrixXd dy = rng.matrix(4, 6);
    MatrixXd dx(4, 6), dx_twin(4, 6);
    layer.backward(dy, 0.5, dx);
    twin.backward(dy, 0.5, dx_twin);
    CHECK(dx.allFinite());
    CHECK(dx == dx_twin);
    CHECK(layer.short_term_gradients().query == twin.short_term_gradients().query);
}

TEST_CASE("layer: every failed call leaves the layer as a twin that never saw it",
          "[layer][twin]") {
    for (bool lm : {false, true}) {
        for (const auto& failure : failures(lm)) {
            // At every stage: no chunk yet, window only, window + pending chunk, memory in use.
            for (int before = failure.min_chunks; before < 5; ++before) {
                INFO((lm ? "lm (gate, sticky): " : "sorting (uniform): ")
                     << failure.what << ", after " << before << " chunks");
                const LongTermParams p = twin_params(lm);
                Layer layer(6, 2, 4, p), twin(6, 2, 4, p);
                layer.set_num_streams(2);
                twin.set_num_streams(2);
                Normal rng(100 + before);
                // The last chunk is not differentiated yet: the failing call comes between
                // its forward and its backward, which must then give the twin's results.
                for (int c = 0; c < before; ++c) {
                    if (c + 1 < before)
                        step_both(layer, twin, rng, 0);
                    else
                        forward_both(layer, twin, rng, 0);
                }
                Normal fail_rng(7);
                failure.fail(layer, fail_rng);
                require_twins(layer, twin);
                // A backward of the last good forward (if any) gives the twin's gradients.
                if (before > 0) {
                    const MatrixXd dy = rng.matrix(4, 6);
                    MatrixXd dxa(4, 6), dxb(4, 6);
                    layer.backward(dy, 0.5, dxa);
                    twin.backward(dy, 0.5, dxb);
                    CHECK(dxa == dxb);
                }
                for (int c = 0; c < 4; ++c) step_both(layer, twin, rng, c % 2);
                require_twins(layer, twin);
            }
        }
    }
}

TEST_CASE("layer: a backward without a forward is refused and changes nothing", "[layer][twin]") {
    Layer layer(6, 2, 4, twin_params(true)), twin(6, 2, 4, twin_params(true));
    Normal rng(3);
    MatrixXd dx(4, 6);
    REQUIRE_THROWS_AS(layer.backward(rng.matrix(4, 6), 0.1, dx), infinityformer::logic_error);
    require_twins(layer, twin);
    step_both(layer, twin, rng);
    layer.reset();
    twin.reset();
    REQUIRE_THROWS_AS(layer.backward(rng.matrix(4, 6), 0.1, dx), infinityformer::logic_error);
    require_twins(layer, twin);
    for (int c = 0; c < 4; ++c) step_both(layer, twin, rng);
    require_twins(layer, twin);
}

TEST_CASE("layer: stream states are values; a copied layer continues as the original",
          "[layer][twin]") {
    Layer layer(6, 2, 4, twin_params(true));
    Normal rng(8);
    for (int c = 0; c < 4; ++c) layer.forward(rng.matrix(4, 6));
    Layer copy = layer;
    CHECK(copy.stream_state() == layer.stream_state());
    Normal rng_copy = rng;
    for (int c = 0; c < 3; ++c)
        CHECK(copy.forward(rng_copy.matrix(4, 6)) == layer.forward(rng.matrix(4, 6)));
    CHECK(copy.stream_state() == layer.stream_state());
    // One more chunk on one of them only: the states now differ.
    const auto before = layer.stream_state();
    layer.forward(rng.matrix(4, 6));
    CHECK(layer.stream_state() != before);
    CHECK(copy.stream_state() == before);
    // A state copied out is a value: it does not follow the layer.
    const LayerStream<double> snapshot = layer.stream_state();
    layer.forward(rng.matrix(4, 6));
    CHECK(snapshot != layer.stream_state());
}

// Split from "twin: moved-from objects throw instead of crashing" (the layer part; the
// LongTermAttention part: test_long_term_attention.cpp).
TEST_CASE("layer: a moved-from layer throws instead of crashing", "[layer][twin]") {
    const LongTermParams p = twin_params(true);
    Layer layer(6, 2, 4, p);
    Layer moved(std::move(layer));
    Normal rng(2);
    CHECK(moved.forward(rng.matrix(4, 6)).allFinite());
    // Every accessor of the moved-from layer answers or throws; none dereferences null.
    CHECK(layer.chunk_length() == 4);
    CHECK(layer.long_term().chunk_length() == 4);
    CHECK(layer.num_streams() == 0);
    CHECK(layer.long_term().num_streams() == 0);
    REQUIRE_THROWS_WITH(layer.forward(rng.matrix(4, 6)), Catch::Contains("moved from"));
    REQUIRE_THROWS_WITH(layer.long_term().memory(), Catch::Contains("moved from"));
    MatrixXd dx(4, 6);
    REQUIRE_THROWS_AS(layer.backward(rng.matrix(4, 6), 0.1, dx), infinityformer::invalid_argument);
    REQUIRE_THROWS_AS(layer.reset(), infinityformer::invalid_argument);
    // Assigning to it makes it usable again.
    layer = Layer(6, 2, 4, p);
    CHECK(layer.forward(rng.matrix(4, 6)).allFinite());
}

// Split from "twin: no two generators share a sequence" (the layer part; the seed derivation
// itself: test_random.cpp).
TEST_CASE("layer: stream 0's sampling generator does not replay the attention's initial weights",
          "[layer][seeds][twin]") {
    using detail::SeedPurpose;
    LongTermParams p = twin_params(true);
    Layer layer(6, 2, 4, p);
    layer.set_num_streams(2);
    detail::Random a = layer.stream_state(0).long_term.memory.state().rng;
    detail::Random b = layer.stream_state(1).long_term.memory.state().rng;
    detail::Random w(detail::derive_seed(p.seed, SeedPurpose::attention_weights));
    const double a0 = a.uniform(), b0 = b.uniform(), w0 = w.uniform();
    CHECK(a0 != b0);
    CHECK(a0 != w0);
    CHECK(b0 != w0);
}

TEST_CASE("layer: the base seed is derived per purpose; each part is handed its seed",
          "[layer][seeds]") {
    using detail::derive_seed;
    using detail::SeedPurpose;
    LongTermParams p = twin_params(true);
    p.seed = 23;
    REQUIRE(p.gate);
    const Layer layer(6, 2, 4, p);
    const ShortTermAttention<double> st(6, 2, derive_seed(p.seed, SeedPurpose::short_term_weights));
    CHECK(layer.short_term_weights().query == st.weights().query);
    CHECK(layer.short_term_weights().key == st.weights().key);
    CHECK(layer.short_term_weights().value == st.weights().value);
    CHECK(layer.short_term_weights().out == st.weights().out);
    const auto& la = layer.long_term().attention();
    const ContinuousAttention<double> att(la.basis(), 6, 2, 6, p.attention_params(),
                                          derive_seed(p.seed, SeedPurpose::attention_weights));
    CHECK(la.weights().proj_key == att.weights().proj_key);
    CHECK(la.weights().proj_value == att.weights().proj_value);
    CHECK(la.weights().attn_out == att.weights().attn_out);
    CHECK(la.weights().mu == att.weights().mu);
    CHECK(la.weights().sigma == att.weights().sigma);
    const MemoryGate<double> gate(6, derive_seed(p.seed, SeedPurpose::gate_weights));
    for (std::size_t j = 0; j < 3; ++j)
        CHECK(layer.long_term().gate().weights().taps[j] == gate.weights().taps[j]);
    CHECK(layer.long_term().gate().weights().bias == gate.weights().bias);
    // LongTermAttention alone derives as the layer does.
    const LongTermAttention<double> lta(6, 2, 4, p);
    CHECK(lta.attention().weights().proj_key == att.weights().proj_key);
    CHECK(lta.attention().weights().sigma == att.weights().sigma);
}

// Split from "errors: LongTermParams::validate names each field and value" (its last part:
// every constructor validates the settings it uses, and only those).
TEST_CASE("layer: the constructor validates the memory's and the attention's settings",
          "[layer][errors]") {
    LongTermParams p;
    p.num_basis = 16;
    p.stability = Stability::allow;
    p.tau = 1;
    REQUIRE_INVALID(InfinityFormerLayer<double>(4, 2, 8, p), has("tau is 1"));
    LongTermParams q;
    q.num_basis = 16;
    q.stability = Stability::allow;
    q.sigma_sq_min = 0;
    REQUIRE_INVALID(InfinityFormerLayer<double>(4, 2, 8, q), has("sigma_sq_min is 0"));
}

// Split from "training: backward without forward is a logic_error" (the layer part).
TEST_CASE("layer: backward without forward is a logic_error", "[layer][errors][training]") {
    const LongTermParams p = lm_small(8, 4, 91);
    Normal rng(91);
    MatrixXd dX(4, 6);
    InfinityFormerLayerd layer(6, 2, 4, p);
    CHECK_THROWS_AS(layer.backward(rng.matrix(4, 6), 0.0, dX), infinityformer::logic_error);
    layer.forward(rng.matrix(4, 6));
    CHECK_NOTHROW(layer.backward(rng.matrix(4, 6), 0.0, dX));
    layer.reset();
    CHECK_THROWS_AS(layer.backward(rng.matrix(4, 6), 0.0, dX), infinityformer::logic_error);
    layer.set_num_streams(2);
    layer.forward(rng.matrix(4, 6), 0);
    CHECK_THROWS_AS(layer.backward(rng.matrix(4, 6), 0.0, dX, 1), infinityformer::logic_error);
}

// Split from "training: bad backward arguments are rejected and change no gradient" (the
// layer part).
TEST_CASE("layer: bad backward arguments are rejected and change no gradient",
          "[layer][errors][training]") {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const LongTermParams p = lm_small(8, 4, 92);
    Normal rng(92);
    const Index d = 6, l = 4;
    InfinityFormerLayerd layer(d, 2, l, p);
    for (int k = 0; k < 4; ++k) layer.forward(rng.matrix(l, d));
    MatrixXd dX(l, d), dX_bad(l, d - 1);
    const MatrixXd dY = rng.matrix(l, d);
    MatrixXd dY_nan = dY;
    dY_nan(0, 0) = nan;
    layer.backward(dY, 0.1, dX);      // non-zero gradients to protect
    layer.forward(rng.matrix(l, d));  // a trace to differentiate: the backward consumed the last
    auto views = [&] { return layer.parameters(); };
    require_rejected("dY", views, [&] { layer.backward(rng.matrix(l + 1, d), 0.1, dX); });
    require_rejected("dY", views, [&] { layer.backward(dY_nan, 0.1, dX); });
    require_rejected("kl_weight", views, [&] { layer.backward(dY, -0.5, dX); });
    require_rejected("kl_weight", views, [&] { layer.backward(dY, nan, dX); });
    require_rejected("dX", views, [&] { layer.backward(dY, 0.1, dX_bad); });
    require_rejected("stream", views, [&] { layer.backward(dY, 0.1, dX, 3); });
}
