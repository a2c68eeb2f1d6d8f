// Properties of the streaming ∞-former layer (layer.hpp): short-term causal attention over
// the previous and current chunk computed independently, plus long-term attention over the
// memory of chunks ≤ c−2 composed by hand with a separate LongTermAttention; reset; float vs
// double; long streams.
#include <catch2/catch.hpp>
#include <cmath>
#include <infinityformer/layer.hpp>
#include <random>
#include <vector>

#include "test_util.hpp"

namespace {

using namespace infinityformer;
using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;

using testutil::kPi;

using testutil::Normal;

using testutil::max_abs;

using Layer = InfinityFormerLayer<double>;

// Plain causal multi-head attention, written with loops: token i of the current chunk sees
// every row of `past` and rows 0…i of `x`. y = context W_Oᵀ.
MatrixXd causal_attention(const MatrixXd& past, const MatrixXd& x, const Layer::ShortTermWeights& w,
                          Index heads) {
    const Index lp = past.rows(), l = x.rows(), d = x.cols(), dh = d / heads;
    MatrixXd in(lp + l, d);
    in << past, x;
    const MatrixXd q = x * w.query.transpose();
    const MatrixXd k = in * w.key.transpose();
    const MatrixXd v = in * w.value.transpose();
    MatrixXd ctx = MatrixXd::Zero(l, d);
    for (Index h = 0; h < heads; ++h)
        for (Index i = 0; i < l; ++i) {
            const Index visible = lp + i + 1;
            std::vector<double> s(static_cast<std::size_t>(visible));
            double mx = -1e300;
            for (Index j = 0; j < visible; ++j) {
                double dot = 0;
                for (Index c = 0; c < dh; ++c) dot += q(i, h * dh + c) * k(j, h * dh + c);
                s[static_cast<std::size_t>(j)] = dot / std::sqrt(static_cast<double>(dh));
                mx = std::max(mx, s[static_cast<std::size_t>(j)]);
            }
            double z = 0;
            for (auto& e : s) z += (e = std::exp(e - mx));
            for (Index j = 0; j < visible; ++j)
                for (Index c = 0; c < dh; ++c)
                    ctx(i, h * dh + c) += s[static_cast<std::size_t>(j)] / z * v(j, h * dh + c);
        }
    return ctx * w.out.transpose();
}

struct Config {
    LongTermParams params;
    Index d, heads, l;
    const char* what;
};

std::vector<Config> configs() {
    LongTermParams sorting = LongTermParams::sorting();
    sorting.num_basis = 16;
    sorting.num_samples = 8;
    LongTermParams lm = LongTermParams::lm();  // gate, sticky, KL μ term
    lm.num_basis = 24;
    lm.num_samples = 10;
    lm.num_bins = 16;
    lm.seed = 5;
    return {{sorting, 6, 2, 4, "sorting: uniform, no gate, H = 2"},
            {lm, 6, 3, 5, "lm: gate, sticky, H = 3, odd L"}};
}

// Gives every weight of the layer a random value (not the seeded initialisation).
void randomise(Layer& layer, Normal& rng) {
    const Index d = layer.d_model();
    const double sd = 1.0 / std::sqrt(static_cast<double>(d));
    layer.set_short_term_weights(
        {rng.matrix(d, d, sd), rng.matrix(d, d, sd), rng.matrix(d, d, sd), rng.matrix(d, d, sd)});
    const Index n = layer.long_term().attention().num_basis();
    layer.set_long_term_weights({rng.matrix(d, d, sd), rng.matrix(d, d, sd), rng.matrix(d, d, sd),
                                 rng.matrix(n, 1, 1.0), rng.matrix(n, 1, 0.5)});
    if (layer.long_term().has_gate()) {
        MemoryGate<double>::Weights g;
        for (auto& tap : g.taps) tap = rng.matrix(d, d, 0.5);
        g.bias = rng.matrix(d, 1, 0.5);
        layer.set_gate_weights(g);
    }
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
        layer.reset();
        CHECK(layer.long_term().memory().empty());
        // Chunks 0–2 involve no sampling of an old memory (chunk 2 stores chunk 0 as a first
        // chunk), so they repeat exactly even with sticky sampling's generator advanced.
        for (int c = 0; c < 3; ++c) {
            INFO("chunk " << c);
            CHECK(layer.forward(xs[static_cast<std::size_t>(c)]) ==
                  ys[static_cast<std::size_t>(c)]);
        }
        if (cfg.params.sampling == Sampling::uniform)
            for (int c = 3; c < 5; ++c)
                CHECK(layer.forward(xs[static_cast<std::size_t>(c)]) ==
                      ys[static_cast<std::size_t>(c)]);
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
