// Training (3/3): Adam against its closed form, bad input to the backward passes, and a
// seeded training run.
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

TEST_CASE("training: Adam minimises a convex quadratic", "[training][adam]") {
    Rng rng(81);
    MatrixXd w = rng.matrix(5, 3, 2.0), g(5, 3);
    const MatrixXd target = rng.matrix(5, 3);
    MatrixXd curvature(5, 3);
    for (Index i = 0; i < curvature.size(); ++i) curvature(i) = rng.uniform(0.5, 5.0);
    auto f = [&] { return 0.5 * (curvature.array() * (w - target).array().square()).sum(); };
    Parameter<double> p;
    p.name = "w";
    p.value = w.data();
    p.grad = g.data();
    p.rows = 5;
    p.cols = 3;
    AdamOptions o;
    o.learning_rate = 0.05;
    Adam<double> adam({p}, o);
    const double f0 = f();
    for (int step = 0; step < 400; ++step) {
        if (step == 300) {  // a schedule: set_options keeps the moments
            o.learning_rate = 0.005;
            adam.set_options(o);
        }
        adam.zero_grad();
        g = curvature.cwiseProduct(w - target);
        adam.step();
    }
    CHECK(adam.steps() == 400);
    INFO("f0 = " << f0 << ", f = " << f());
    CHECK(f() < 1e-5 * f0);
    CHECK((w - target).cwiseAbs().maxCoeff() < 1e-2);
}

TEST_CASE("training: Adam steps equal the closed-form update", "[training][adam]") {
    Rng rng(82);
    auto blocks = owned_blocks(rng);
    const std::vector<MatrixXd> w0 = {blocks[0].value, blocks[1].value};
    const std::vector<MatrixXd> g1 = {blocks[0].grad, blocks[1].grad};
    const std::vector<MatrixXd> g2 = {rng.matrix(3, 2), rng.matrix(4, 1)};
    AdamOptions o;
    o.learning_rate = 0.05;
    o.beta1 = 0.8;
    o.beta2 = 0.95;
    o.epsilon = 1e-2;
    Adam<double> adam(views_of(blocks), o);
    adam.step();
    for (std::size_t b = 0; b < 2; ++b) blocks[b].grad = g2[b];
    adam.step();
    CHECK(adam.steps() == 2);
    for (std::size_t b = 0; b < 2; ++b)
        for (Index i = 0; i < w0[b].size(); ++i) {
            // m_t = β1 m + (1 − β1) g, v_t = β2 v + (1 − β2) g², w −= α m̂/(√v̂ + ε).
            double m = 0, v = 0, w = w0[b](i);
            for (int t = 1; t <= 2; ++t) {
                const double g = (t == 1 ? g1 : g2)[b](i);
                m = o.beta1 * m + (1 - o.beta1) * g;
                v = o.beta2 * v + (1 - o.beta2) * g * g;
                const double mhat = m / (1 - std::pow(o.beta1, t));
                const double vhat = v / (1 - std::pow(o.beta2, t));
                w -= o.learning_rate * mhat / (std::sqrt(vhat) + o.epsilon);
            }
            INFO("block " << b << " entry " << i);
            CHECK(std::abs(blocks[b].value(i) - w) <= 1e-14 * (1 + std::abs(w)));
        }
}

TEST_CASE("training: Adam clips the global gradient norm", "[training][adam]") {
    for (const double ratio : {0.25, 4.0}) {  // clip_norm below / above ‖g‖
        Rng rng(83);
        auto blocks = owned_blocks(rng);
        const std::vector<MatrixXd> w0 = {blocks[0].value, blocks[1].value};
        const double norm = std::sqrt(blocks[0].grad.squaredNorm() + blocks[1].grad.squaredNorm());
        AdamOptions o;
        o.learning_rate = 0.1;
        o.epsilon = 0.5;  // large: the first step then depends on the gradient's scale
        o.clip_norm = ratio * norm;
        Adam<double> adam(views_of(blocks), o);
        adam.step();
        CHECK(std::abs(adam.last_grad_norm() - norm) <= 1e-14 * norm);
        const double c = ratio < 1 ? o.clip_norm / norm : 1.0;
        for (std::size_t b = 0; b < 2; ++b)
            for (Index i = 0; i < w0[b].size(); ++i) {
                const double g = c * blocks[b].grad(i);  // m̂ = g, v̂ = g² at t = 1
                const double w = w0[b](i) - o.learning_rate * g / (std::abs(g) + o.epsilon);
                INFO("ratio " << ratio << " block " << b << " entry " << i);
                CHECK(std::abs(blocks[b].value(i) - w) <= 1e-14 * (1 + std::abs(w)));
            }
    }
}

TEST_CASE("training: Adam's weight decay is decoupled", "[training][adam]") {
    Rng rng(84);
    auto blocks = owned_blocks(rng);
    const std::vector<MatrixXd> w0 = {blocks[0].value, blocks[1].value};
    blocks[1].grad.setZero();  // block b: decay only
    AdamOptions o;
    o.learning_rate = 0.05;
    o.weight_decay = 0.3;
    o.epsilon = 1e-3;
    Adam<double> adam(views_of(blocks), o);
    adam.step();
    const double keep = 1 - o.learning_rate * o.weight_decay;
    // w ← w − αλw − α m̂/(√v̂ + ε): with g = 0 only the decay acts (an L2 term added to the
    // gradient would move w by ~α instead).
    CHECK((blocks[1].value - keep * w0[1]).cwiseAbs().maxCoeff() <=
          1e-15 * w0[1].cwiseAbs().maxCoeff());
    for (Index i = 0; i < w0[0].size(); ++i) {
        const double g = blocks[0].grad(i);
        const double w = keep * w0[0](i) - o.learning_rate * g / (std::abs(g) + o.epsilon);
        CHECK(std::abs(blocks[0].value(i) - w) <= 1e-14 * (1 + std::abs(w)));
    }
}

TEST_CASE("training: Adam rejects a non-finite gradient and changes nothing", "[training][adam]") {
    for (const double bad :
         {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(),
          -std::numeric_limits<double>::infinity()}) {
        Rng rng(85);
        auto blocks = owned_blocks(rng);
        auto twin = blocks;  // a fresh optimiser over a copy: the reference for the next step
        const std::vector<MatrixXd> w0 = {blocks[0].value, blocks[1].value};
        const MatrixXd g1 = blocks[1].grad;
        AdamOptions o;
        o.learning_rate = 0.05;
        Adam<double> adam(views_of(blocks), o), fresh(views_of(twin), o);
        blocks[1].grad(2) = bad;
        REQUIRE_THROWS_AS(adam.step(), infinityformer::runtime_error);
        REQUIRE_THROWS_WITH(adam.step(), Contains("b") && Contains("finite"));
        CHECK(blocks[0].value == w0[0]);
        CHECK(blocks[1].value == w0[1]);
        CHECK(adam.steps() == 0);
        // The moments are untouched too: the next step is a first step.
        blocks[1].grad = g1;
        adam.step();
        fresh.step();
        CHECK(blocks[0].value == twin[0].value);
        CHECK(blocks[1].value == twin[1].value);
    }
}

TEST_CASE("training: AdamOptions::validate names every bad field", "[training][adam][errors]") {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const double inf = std::numeric_limits<double>::infinity();
    struct Bad {
        const char* field;
        double AdamOptions::*member;
        std::vector<double> values;
    };
    const std::vector<Bad> bads = {
        {"learning_rate", &AdamOptions::learning_rate, {0.0, -1e-3, nan, inf}},
        {"beta1", &AdamOptions::beta1, {-0.1, 1.0, 1.5, nan}},
        {"beta2", &AdamOptions::beta2, {-0.1, 1.0, nan, inf}},
        {"epsilon", &AdamOptions::epsilon, {0.0, -1e-8, nan, inf}},
        {"weight_decay", &AdamOptions::weight_decay, {-0.1, nan, inf}},
        {"clip_norm", &AdamOptions::clip_norm, {-1.0, nan, inf}},
    };
    CHECK_NOTHROW(AdamOptions{}.validate());
    Rng rng(86);
    auto blocks = owned_blocks(rng);
    Adam<double> adam(views_of(blocks));
    for (const auto& b : bads)
        for (const double v : b.values) {
            INFO(b.field << " = " << v);
            AdamOptions o;
            o.*(b.member) = v;
            CHECK_THROWS_AS(o.validate(), infinityformer::invalid_argument);
            CHECK_THROWS_WITH(o.validate(), Contains(b.field));
            CHECK_THROWS_WITH(Adam<double>(views_of(blocks), o), Contains(b.field));
            CHECK_THROWS_WITH(adam.set_options(o), Contains(b.field));
            CHECK(adam.options().*(b.member) == AdamOptions{}.*(b.member));
        }
    // The edges of the ranges are accepted.
    AdamOptions ok;
    ok.beta1 = 0.0;
    ok.beta2 = 0.0;
    ok.weight_decay = 0.0;
    ok.clip_norm = 0.0;
    CHECK_NOTHROW(ok.validate());
}

TEST_CASE("training: backward without forward is a logic_error", "[training][errors]") {
    const LongTermParams p = lm_small(8, 4, 91);
    Rng rng(91);
    MatrixXd dq(3, 6), dB(8, 6), dX(4, 6);
    ContinuousAttentiond att(GaussianBasisd::default_family(8, p.widths), 6, 2, 0, p);
    CHECK_THROWS_AS(att.backward(rng.matrix(3, 6), 0.0, dq, dB), infinityformer::logic_error);
    LongTermAttentiond lta(6, 2, 4, p);
    CHECK_THROWS_AS(lta.backward(rng.matrix(3, 6), 0.0, dq, dX), infinityformer::logic_error);
    lta.update(rng.matrix(4, 6));  // an update alone is not an attend
    CHECK_THROWS_AS(lta.backward(rng.matrix(3, 6), 0.0, dq, dX), infinityformer::logic_error);
    lta.attend(rng.matrix(3, 6));
    CHECK_NOTHROW(lta.backward(rng.matrix(3, 6), 0.0, dq, dX));
    lta.reset();
    CHECK_THROWS_AS(lta.backward(rng.matrix(3, 6), 0.0, dq, dX), infinityformer::logic_error);
    InfinityFormerLayerd layer(6, 2, 4, p);
    CHECK_THROWS_AS(layer.backward(rng.matrix(4, 6), 0.0, dX), infinityformer::logic_error);
    layer.forward(rng.matrix(4, 6));
    CHECK_NOTHROW(layer.backward(rng.matrix(4, 6), 0.0, dX));
    layer.reset();
    CHECK_THROWS_AS(layer.backward(rng.matrix(4, 6), 0.0, dX), infinityformer::logic_error);
    layer.set_num_streams(2);
    layer.forward(rng.matrix(4, 6), 0);
    CHECK_THROWS_AS(layer.backward(rng.matrix(4, 6), 0.0, dX, 1), infinityformer::logic_error);
    LongTermMemoryd mem(6, 4, p);
    CHECK_THROWS_AS(mem.backward(rng.matrix(8, 6), dX), infinityformer::logic_error);
    mem.update(rng.matrix(4, 6));
    CHECK_NOTHROW(mem.backward(rng.matrix(8, 6), dX));
    mem.reset();
    CHECK_THROWS_AS(mem.backward(rng.matrix(8, 6), dX), infinityformer::logic_error);
}

TEST_CASE("training: bad backward arguments are rejected and change no gradient",
          "[training][errors]") {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const LongTermParams p = lm_small(8, 4, 92);
    Rng rng(92);
    const Index d = 6, l = 4, q = 3, n = 8;
    {
        ContinuousAttentiond att(GaussianBasisd::default_family(n, p.widths), d, 2, 5, p);
        att.forward(rng.matrix(n, d), rng.matrix(q, d));
        MatrixXd dq(q, d), dB(n, d), dq_bad(q, d + 1), dB_bad(n + 1, d);
        const MatrixXd dout = rng.matrix(q, 5);
        MatrixXd dout_nan = dout;
        dout_nan(1, 2) = nan;
        att.backward(dout, 0.1, dq, dB);  // non-zero gradients to protect
        auto views = [&] { return attention_views(att); };
        require_rejected("dout", views, [&] { att.backward(rng.matrix(q, d), 0.1, dq, dB); });
        require_rejected("dout", views, [&] { att.backward(dout_nan, 0.1, dq, dB); });
        require_rejected("kl_weight", views, [&] { att.backward(dout, -0.1, dq, dB); });
        require_rejected("kl_weight", views, [&] { att.backward(dout, nan, dq, dB); });
        require_rejected("dqueries", views, [&] { att.backward(dout, 0.1, dq_bad, dB); });
        require_rejected("dB", views, [&] { att.backward(dout, 0.1, dq, dB_bad); });
        // The trace survived: a valid call adds the same gradients again.
        const auto once = gradients_of(views());
        att.backward(dout, 0.1, dq, dB);
        const auto twice = gradients_of(views());
        for (std::size_t b = 0; b < once.size(); ++b)
            CHECK((twice[b] - 2 * once[b]).cwiseAbs().maxCoeff() <=
                  1e-14 * (1 + once[b].cwiseAbs().maxCoeff()));
    }
    {
        LongTermAttentiond lta(d, 2, l, p);
        for (int k = 0; k < 3; ++k) lta.forward(rng.matrix(l, d), rng.matrix(q, d));
        MatrixXd dq(q, d), dX(l, d), dX_bad(l + 1, d), dq_bad(q + 1, d);
        const MatrixXd dout = rng.matrix(q, d);
        lta.backward(dout, 0.1, dq, dX);
        auto views = [&] { return lta.parameters(); };
        require_rejected("dout", views, [&] { lta.backward(rng.matrix(q, d + 1), 0.1, dq, dX); });
        require_rejected("kl_weight", views, [&] { lta.backward(dout, -1.0, dq, dX); });
        require_rejected("kl_weight", views, [&] { lta.backward(dout, nan, dq, dX); });
        require_rejected("dqueries", views, [&] { lta.backward(dout, 0.1, dq_bad, dX); });
        require_rejected("dX", views, [&] { lta.backward(dout, 0.1, dq, dX_bad); });
        require_rejected("stream", views, [&] { lta.backward(dout, 0.1, dq, dX, 1); });
    }
    {
        InfinityFormerLayerd layer(d, 2, l, p);
        for (int k = 0; k < 4; ++k) layer.forward(rng.matrix(l, d));
        MatrixXd dX(l, d), dX_bad(l, d - 1);
        const MatrixXd dY = rng.matrix(l, d);
        MatrixXd dY_nan = dY;
        dY_nan(0, 0) = nan;
        layer.backward(dY, 0.1, dX);
        auto views = [&] { return layer.parameters(); };
        require_rejected("dY", views, [&] { layer.backward(rng.matrix(l + 1, d), 0.1, dX); });
        require_rejected("dY", views, [&] { layer.backward(dY_nan, 0.1, dX); });
        require_rejected("kl_weight", views, [&] { layer.backward(dY, -0.5, dX); });
        require_rejected("kl_weight", views, [&] { layer.backward(dY, nan, dX); });
        require_rejected("dX", views, [&] { layer.backward(dY, 0.1, dX_bad); });
        require_rejected("stream", views, [&] { layer.backward(dY, 0.1, dX, 3); });
    }
    {
        MemoryGated gate(d, 1);
        const MatrixXd X = rng.matrix(l, d);
        MatrixXd g(l, d), gx(l, d), dX(l, d), dX_bad(l, d + 1);
        gate.forward(X, g, gx);
        const MatrixXd dG = rng.matrix(l, d);
        gate.backward(X, g, dG, dX);
        auto views = [&] {
            std::vector<Parameter<double>> ps;
            gate.append_parameters(ps);
            return ps;
        };
        require_rejected("dgated", views, [&] { gate.backward(X, g, rng.matrix(l, d + 1), dX); });
        require_rejected("gate", views, [&] { gate.backward(X, rng.matrix(l - 1, d), dG, dX); });
        require_rejected("dX", views, [&] { gate.backward(X, g, dG, dX_bad); });
    }
    {
        LongTermMemoryd mem(d, l, p);
        mem.update(rng.matrix(l, d));
        MatrixXd dX(l, d), dX_bad(l + 1, d);
        CHECK_THROWS_WITH(mem.backward(rng.matrix(n + 1, d), dX), Contains("dB"));
        CHECK_THROWS_WITH(mem.backward(rng.matrix(n, d), dX_bad), Contains("dX"));
    }
    {
        const auto basis = GaussianBasisd::default_family(n, p.widths);
        VectorXd mu = VectorXd::Constant(2, 0.5), s2 = VectorXd::Constant(2, 0.01), dmu(2), ds2(2),
                 dmu_bad(3);
        CHECK_THROWS_WITH(basis.expect_psi_backward(mu, s2, rng.matrix(2, n + 1), dmu, ds2),
                          Contains("dr"));
        CHECK_THROWS_WITH(basis.expect_psi_backward(mu, s2, rng.matrix(2, n), dmu_bad, ds2),
                          Contains("dmu"));
        s2[1] = -1e-3;
        CHECK_THROWS_WITH(basis.expect_psi_backward(mu, s2, rng.matrix(2, n), dmu, ds2),
                          Contains("sigma_sq"));
    }
}

TEST_CASE("training: Adam fits a tiny layer to a fixed target over a stream", "[training][fit]") {
    using Layer = InfinityFormerLayer<double>;
    const Index d = 8, heads = 2, length = 4, num_chunks = 5;
    LongTermParams p = LongTermParams::lm();
    p.num_basis = 8;
    p.num_samples = 4;
    p.seed = 1;
    Layer layer(d, heads, length, p);
    AdamOptions o;
    o.learning_rate = 1e-2;
    Adam<double> adam(layer.parameters(), o);
    // A fixed stream and a fixed target: Y* = X A, A a random linear map.
    Rng rng(101);
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

}  // namespace
