// Training (2/3): the layer's backward pass against finite differences, float against
// double, accumulation over calls, chunks and streams, and the named parameters.
//
// Finite differences: test_fd.hpp (Ridders' extrapolation in double, error
// |a − fd| / max(|fd|, 1e-3 · max |block|) < 1e-6); helpers: training_util.hpp.
//
// The oracles are finite differences of the forward passes, hand-written closed forms and
// independent runs; no number here is copied from the library's output.
//
// GCC 12 at -O1 with sanitizers reports a false -Wmaybe-uninitialized inside
// std::optional<MemoryGate<float>>::emplace (see tests/test_layer.cpp); silenced here too.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <algorithm>
#include <array>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <infinityformer/infinityformer.hpp>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "test_fd.hpp"
#include "training_util.hpp"

namespace {

using namespace training_util;

TEST_CASE("training: InfinityFormerLayer::backward equals finite differences",
          "[training][fd][layer]") {
    for (const auto& c : layer_cases()) {
        Rng rng(c.params.seed + 700);
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

TEST_CASE("training: float InfinityFormerLayer gradients agree with double",
          "[training][float][layer]") {
    for (const auto& c : layer_cases()) {
        Rng rng(c.params.seed + 700);
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

TEST_CASE("training: ContinuousAttention gradients accumulate over backward calls",
          "[training][accumulate]") {
    const AttCase c{2, 6, 5, 10, {0.005, 0.01}, 1e-4, true, 0.1, 3, false, {{1, 2e-3, 0.4}}, 31};
    AttSetup s1 = attention_setup(c);
    AttCase c2 = c;
    c2.seed = 32;  // other inputs, the same weights (s1.att)
    AttSetup s2 = attention_setup(c2);
    MatrixXd dq(c.q, c.dim), dB(c.n, c.dim);
    auto single = [&](const AttSetup& s) {
        ContinuousAttentiond m = s1.att;
        m.zero_grad();
        m.forward(s.B, s.Q);
        m.backward(s.dout, c.kl, dq, dB);
        return gradients_of(attention_views(m));
    };
    ContinuousAttentiond acc = s1.att;
    acc.zero_grad();
    acc.forward(s1.B, s1.Q);
    acc.backward(s1.dout, c.kl, dq, dB);
    acc.forward(s2.B, s2.Q);
    acc.backward(s2.dout, c.kl, dq, dB);
    require_sum(gradients_of(attention_views(acc)), single(s1), single(s2));
    acc.zero_grad();
    for (const auto& g : gradients_of(attention_views(acc))) CHECK(g.isZero(0.0));
}

TEST_CASE("training: LongTermAttention gradients accumulate over chunks",
          "[training][accumulate]") {
    const LongTermParams p = lm_small(8, 4, 41);
    Rng rng(41);
    std::vector<MatrixXd> xs, qs, douts;
    for (int k = 0; k < 4; ++k) {
        xs.push_back(rng.matrix(4, 6));
        qs.push_back(rng.matrix(3, 6));
        douts.push_back(rng.matrix(3, 6));
    }
    MatrixXd dq(3, 6), dX(4, 6);
    auto run = [&](std::vector<int> differentiated) {
        LongTermAttentiond m(6, 2, 4, p);
        for (int k = 0; k < 4; ++k) {
            m.forward(xs[static_cast<std::size_t>(k)], qs[static_cast<std::size_t>(k)]);
            for (int d : differentiated)
                if (d == k) m.backward(douts[static_cast<std::size_t>(k)], 0.1, dq, dX);
        }
        return gradients_of(m.parameters());
    };
    require_sum(run({2, 3}), run({2}), run({3}));
}

TEST_CASE(
    "training: InfinityFormerLayer gradients accumulate over chunks and zero_grad resets them",
    "[training][accumulate][layer]") {
    const LongTermParams p = lm_small(8, 4, 51);
    Rng rng(51);
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
    // After zero_grad the next backward (of the same last forward) starts from zero.
    acc.backward(dys[4], 0.05, dX);
    require_same(gradients_of(acc.parameters()), gradients_of(only4.parameters()));
}

TEST_CASE("training: streams are independent and accumulate into the shared gradients",
          "[training][accumulate][streams]") {
    const LongTermParams p = lm_small(8, 4, 61);
    Rng rng(61);
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

TEST_CASE("training: parameters() lists the documented names and shapes",
          "[training][parameters]") {
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

}  // namespace
