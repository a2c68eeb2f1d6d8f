// Training (1/3): the backward passes of the basis, continuous attention, gate, memory fit and
// long-term attention against finite differences, and float against double.
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

TEST_CASE("training: expect_psi_backward equals finite differences, small sigma_sq included",
          "[training][fd][basis]") {
    struct Case {
        Index n;
        std::vector<double> widths;
        Index q;
    };
    const std::vector<Case> cases = {
        {8, {0.01, 0.05}, 7}, {12, {0.005, 0.01}, 9}, {5, {0.02}, 4}, {24, {0.005, 0.01}, 3}};
    const std::vector<double> variances = {1e-8, 1e-6, 1e-4, 1e-3, 0.02, 0.3, 2.0, 5e-5, 0.1};
    Rng rng(11);
    for (const auto& c : cases) {
        const auto basis = GaussianBasisd::default_family(c.n, c.widths);
        const double s2_min = basis.widths().cwiseAbs2().minCoeff();
        VectorXd mu(c.q), s2(c.q);
        for (Index i = 0; i < c.q; ++i) {
            // Near the centres, between them, and outside [0, 1].
            mu[i] = i % 3 == 0 ? basis.centers()[(i * 5) % c.n] + 0.3 * basis.widths()[0]
                               : rng.uniform(-0.3, 1.3);
            s2[i] = variances[static_cast<std::size_t>(i) % variances.size()];
        }
        const MatrixXd dr = rng.matrix(c.q, c.n);
        VectorXd dmu(c.q), ds2(c.q);
        basis.expect_psi_backward(mu, s2, dr, dmu, ds2);
        auto loss = [&](const VectorXd& m, const VectorXd& s) {
            return basis.expect_psi(m, s).cwiseProduct(dr).sum();
        };
        INFO("N = " << c.n << ", Q = " << c.q);
        // Steps on the scale of each density: √(σ² + s²_min) for μ; for σ², never more
        // than half of σ² (σ² must stay ≥ 0).
        const auto mu_r = fd::check_steps(
            dmu,
            [&](Index e, double d) {
                VectorXd m = mu;
                m[e] += d;
                return loss(m, s2);
            },
            fd::pick(c.q, c.q, 0), [&](Index e) { return 0.2 * std::sqrt(s2[e] + s2_min); });
        require_fd("basis", "dmu", mu_r);
        const auto s2_r = fd::check_steps(
            ds2,
            [&](Index e, double d) {
                VectorXd s = s2;
                s[e] += d;
                return loss(mu, s);
            },
            fd::pick(c.q, c.q, 0),
            [&](Index e) { return std::min(0.5 * s2[e], 0.2 * (s2[e] + s2_min)); });
        require_fd("basis", "dsigma_sq", s2_r);
    }
}

TEST_CASE("training: ContinuousAttention::backward equals finite differences",
          "[training][fd][attention]") {
    for (const auto& c : attention_cases()) {
        INFO("H = " << c.heads << ", dim = " << c.dim << ", d_model = " << c.d_model
                    << ", kl = " << c.kl << ", mu term = " << c.mu_term << ", seed = " << c.seed);
        AttSetup s = attention_setup(c);
        ContinuousAttentiond base = s.att;
        base.zero_grad();
        base.forward(s.B, s.Q);
        const auto& t = base.last();
        check_placed(t, c.placed, c.heads, c.q, base.sigma_sq_min());
        MatrixXd dq(c.q, c.dim), dB(c.n, c.dim);
        base.backward(s.dout, c.kl, dq, dB);
        const auto analytic = gradients_of(attention_views(base));
        const double h0 = kH0;
        check_input(
            "attention", "dqueries", s.Q, dq,
            [&](const MatrixXd& Q) {
                ContinuousAttentiond m = s.att;
                return attention_loss(m, s.B, Q, s.dout, c.kl);
            },
            h0, c.seed);
        check_input(
            "attention", "dB", s.B, dB,
            [&](const MatrixXd& B) {
                ContinuousAttentiond m = s.att;
                return attention_loss(m, B, s.Q, s.dout, c.kl);
            },
            h0, c.seed + 1);
        check_parameters(
            "attention", s.att, attention_views,
            [&](ContinuousAttentiond& m) { return attention_loss(m, s.B, s.Q, s.dout, c.kl); },
            analytic, h0, c.seed + 2);
    }
}

TEST_CASE("training: no gradient passes an active sigma_sq clamp", "[training][fd][attention]") {
    // One query, clamped in both heads: σ² = σ²_min whatever w_σ is nearby, so the loss does
    // not depend on w_σ, although ∂ℓ/∂σ² is far from 0 there (KL weight > 0).
    const AttCase c{2, 4, 3, 8, {0.005, 0.01}, 1e-4, true, 0.5, 1, true, {{0, 0, 0.5}}, 8};
    AttSetup s = attention_setup(c);
    ContinuousAttentiond base = s.att;
    base.zero_grad();
    base.forward(s.B, s.Q);
    MatrixXd dq(1, c.dim), dB(c.n, c.dim);
    base.backward(s.dout, c.kl, dq, dB);
    check_placed(base.last(), c.placed, c.heads, 1, base.sigma_sq_min());
    REQUIRE(base.last_grad_sigma_sq().cwiseAbs().minCoeff() > 1.0);
    CHECK(base.gradients().sigma.isZero(0.0));
    // ℓ w.r.t. w_σ: the clamp holds for every shift (a_σ moves by at most 0.02, the margin is
    // ln(1/0.3) ≈ 1.2), so ℓ does not change at all and its FD derivative is 0.
    const auto ps = attention_views(s.att);
    REQUIRE(ps[4].name == "sigma.weight");
    const double step = 1e-2 / base.scores(s.B, s.Q).cwiseAbs().maxCoeff();
    for (Index k = 0; k < c.n; ++k) {
        auto loss = [&](double h) {
            ContinuousAttentiond m = s.att;
            attention_views(m)[4].value[k] += h;
            return attention_loss(m, s.B, s.Q, s.dout, c.kl);
        };
        const double l0 = loss(0.0);
        for (const double h : {step, -step, 2 * step, -2 * step}) CHECK(loss(h) == l0);
        CHECK(fd::five_point(loss, step) == 0.0);
    }
}

TEST_CASE("training: float ContinuousAttention gradients agree with double",
          "[training][float][attention]") {
    for (const auto& c : attention_cases()) {
        INFO("seed = " << c.seed);
        AttSetup s = attention_setup(c);
        round_to_float(s);
        ContinuousAttentiond att = s.att;
        att.zero_grad();
        att.forward(s.B, s.Q);
        MatrixXd dq(c.q, c.dim), dB(c.n, c.dim);
        att.backward(s.dout, c.kl, dq, dB);

        auto attf = make_attention<float>(c);
        std::vector<Parameter<float>> psf;
        attf.append_parameters(psf);
        copy_values(psf, attention_views(s.att));
        attf.zero_grad();
        attf.forward(s.B.cast<float>(), s.Q.cast<float>());
        Eigen::MatrixXf dqf(c.q, c.dim), dBf(c.n, c.dim);
        attf.backward(s.dout.cast<float>(), static_cast<float>(c.kl), dqf, dBf);
        require_float("attention", "dqueries", dqf, dq);
        require_float("attention", "dB", dBf, dB);
        const auto gd = gradients_of(attention_views(att));
        const auto gf = gradients_of(psf);
        for (std::size_t b = 0; b < gd.size(); ++b) {
            require_float("attention", psf[b].name, gf[b], gd[b]);
        }
    }
}

TEST_CASE("training: MemoryGate::backward equals finite differences", "[training][fd][gate]") {
    struct Case {
        Index length, dim;
    };
    for (const Case c : {Case{1, 3}, Case{2, 4}, Case{5, 3}, Case{5, 1}}) {
        INFO("L = " << c.length << ", e = " << c.dim);
        Rng rng(static_cast<std::uint64_t>(20 + c.length * 7 + c.dim));
        MemoryGated gate(c.dim, static_cast<std::uint64_t>(c.length));
        auto w = gate.weights();
        for (auto& tap : w.taps) tap *= 2.0;  // a gate far from ½ in places
        gate.set_weights(w);
        const MatrixXd X = rng.matrix(c.length, c.dim, 1.5);
        const MatrixXd dG = rng.matrix(c.length, c.dim);
        auto loss = [&](const MemoryGated& m, const MatrixXd& x) {
            MatrixXd g(x.rows(), c.dim), gx(x.rows(), c.dim);
            m.forward(x, g, gx);
            return gx.cwiseProduct(dG).sum();
        };
        MemoryGated base = gate;
        base.zero_grad();
        MatrixXd g(c.length, c.dim), gx(c.length, c.dim), dX(c.length, c.dim);
        base.forward(X, g, gx);
        base.backward(X, g, dG, dX);
        auto views = [](MemoryGated& m) {
            std::vector<Parameter<double>> ps;
            m.append_parameters(ps);
            return ps;
        };
        const auto analytic = gradients_of(views(base));
        REQUIRE(analytic.size() == 4);
        check_input(
            "gate", "dX", X, dX, [&](const MatrixXd& x) { return loss(gate, x); }, kH0,
            static_cast<std::uint64_t>(c.length));
        check_parameters(
            "gate", gate, views, [&](MemoryGated& m) { return loss(m, X); }, analytic, kH0,
            static_cast<std::uint64_t>(c.length + 10), 100);
    }
}

TEST_CASE("training: LongTermMemory::backward equals finite differences of the fit",
          "[training][fd][memory]") {
    struct Case {
        Index length, dim, n, m;
        std::vector<double> widths;
        Sampling sampling;
        int chunk;  // chunk index differentiated (0: first-chunk fit)
    };
    const std::vector<Case> cases = {
        {4, 3, 8, 4, {0.005, 0.01}, Sampling::sticky, 0},
        {4, 3, 8, 4, {0.005, 0.01}, Sampling::sticky, 2},
        {5, 2, 6, 3, {0.01, 0.05}, Sampling::uniform, 0},
        {5, 2, 6, 3, {0.01, 0.05}, Sampling::uniform, 1},
        {3, 2, 9, 7, {0.02}, Sampling::stratified, 3},
    };
    for (const auto& c : cases) {
        INFO("L = " << c.length << ", chunk " << c.chunk << ", " << to_string(c.sampling));
        LongTermParams p;
        p.num_basis = c.n;
        p.widths = c.widths;
        p.num_samples = c.m;
        p.num_bins = 16;
        p.sampling = c.sampling;
        p.seed = 3;
        Rng rng(static_cast<std::uint64_t>(40 + c.chunk + c.length));
        LongTermMemoryd mem(c.dim, c.length, p);
        for (int k = 0; k < c.chunk; ++k) {
            mem.update(rng.matrix(c.length, c.dim));
            const VectorXd mu = rng.matrix(3, 1, 0.3).array() + 0.5;
            const VectorXd s2 = 0.01 * rng.matrix(3, 1).cwiseAbs2();
            mem.observe(mu, s2);
        }
        const MatrixXd X = rng.matrix(c.length, c.dim);
        const MatrixXd dBup = rng.matrix(c.n, c.dim);
        auto loss = [&](const MatrixXd& x) {
            LongTermMemoryd m = mem;  // the same generator state: the same sample points
            m.update(x);
            return m.coefficients().cwiseProduct(dBup).sum();
        };
        LongTermMemoryd base = mem;
        base.update(X);
        CHECK(base.last_sample_points().size() == (c.chunk == 0 ? 0 : c.m));
        MatrixXd dX(c.length, c.dim);
        base.backward(dBup, dX);
        check_input("memory fit", "dX", X, dX, loss, 1e-1, 1, 1000);
    }
}

TEST_CASE("training: LongTermAttention::backward equals finite differences",
          "[training][fd][long-term]") {
    for (const auto& c : lta_cases()) {
        INFO(c.name);
        LtaSetup s = lta_setup(c);
        LongTermAttentiond base = s.state;
        base.zero_grad();
        base.forward(s.X, s.Q);
        check_placed(base.last_attention(), c.placed, c.heads, c.q, c.params.sigma_sq_min);
        if (c.params.reset_after_tokens > 0) {
            // The memory was forgotten before this chunk: it holds this chunk alone.
            CHECK(base.memory().tokens_stored() == c.length);
            CHECK(base.memory().last_sample_points().size() == 0);
        } else if (c.chunk > 0 && c.params.sampling == Sampling::sticky) {
            // Sticky sampling is really in use: the points are not the uniform i/M.
            VectorXd uniform(c.params.num_samples);
            for (Index i = 0; i < uniform.size(); ++i)
                uniform[i] = static_cast<double>(i + 1) / static_cast<double>(uniform.size());
            REQUIRE(base.memory().last_sample_points().size() == uniform.size());
            CHECK((base.memory().last_sample_points() - uniform).norm() > 0.0);
            // A copy of the state draws the same points.
            LongTermAttentiond again = s.state;
            again.forward(s.X, s.Q);
            CHECK(again.memory().last_sample_points() == base.memory().last_sample_points());
        }
        MatrixXd dq(c.q, c.dim), dX(c.length, c.dim);
        base.backward(s.dout, c.kl, dq, dX);
        const auto analytic = gradients_of(base.parameters());
        REQUIRE(analytic.size() == (c.params.gate ? 9u : 5u));
        auto loss_of = [&](const MatrixXd& X, const MatrixXd& Q) {
            LongTermAttentiond m = s.state;
            return lta_loss(m, X, Q, s.dout, c.kl);
        };
        const double h0 = kH0;
        check_input(
            "long-term attention", "dqueries", s.Q, dq,
            [&](const MatrixXd& Q) { return loss_of(s.X, Q); }, h0, 1);
        check_input(
            "long-term attention", "dX", s.X, dX,
            [&](const MatrixXd& X) { return loss_of(X, s.Q); }, h0, 2);
        check_parameters(
            "long-term attention", s.state, [](LongTermAttentiond& m) { return m.parameters(); },
            [&](LongTermAttentiond& m) { return lta_loss(m, s.X, s.Q, s.dout, c.kl); }, analytic,
            h0, 3);
    }
}

// Regression: up to commit 3c3c4d9 backward() differentiated the gate and the fit with the
// state of the *latest* update() (Stream::input, Stream::gate, the memory's last sample
// points), not with that of the update the last attend() read (error 33 against the FD
// here); since 6ed4576 the call is refused.
TEST_CASE(
    "training: LongTermAttention::backward after a later update() is still that of the "
    "last attend()",
    "[training][fd][long-term]") {
    // update(X1), attend(Q), update(X2), backward(dout): the documented backward is that of
    // the last attend(), which read the memory left by update(X1); its dX is ∂ℓ/∂X1 (or the
    // call is refused). ℓ does not depend on X2.
    const LongTermParams p = lm_small(8, 4, 10);
    Rng rng(10);
    LongTermAttentiond lta(6, 2, 4, p);
    for (int k = 0; k < 2; ++k) lta.forward(rng.matrix(4, 6), rng.matrix(3, 6));
    const MatrixXd X1 = rng.matrix(4, 6), X2 = rng.matrix(4, 6), Q = rng.matrix(3, 6);
    const MatrixXd dout = rng.matrix(3, 6);
    const double kl = 0.05;
    LongTermAttentiond base = lta;
    base.zero_grad();
    base.update(X1);
    base.attend(Q);
    base.update(X2);
    MatrixXd dq(3, 6), dX(4, 6);
    try {
        base.backward(dout, kl, dq, dX);
    } catch (const infinityformer::logic_error&) {
        SUCCEED("refused: the chunk that attend() read is no longer the last update");
        return;
    }
    auto loss = [&](const MatrixXd& x) {
        LongTermAttentiond m = lta;
        m.update(x);
        const MatrixXd out = m.attend(Q);
        return out.cwiseProduct(dout).sum() + kl * m.last_attention().kl_reg.sum();
    };
    check_input("long-term attention, update after attend", "dX1", X1, dX, loss, kH0, 4);
}

TEST_CASE("training: float LongTermAttention gradients agree with double",
          "[training][float][long-term]") {
    for (const auto& c : lta_cases()) {
        INFO(c.name);
        LtaSetup s = lta_setup(c);
        round_to_float(s, c);
        LongTermAttentiond lta = s.state;
        lta.zero_grad();
        lta.forward(s.X, s.Q);
        MatrixXd dq(c.q, c.dim), dX(c.length, c.dim);
        lta.backward(s.dout, c.kl, dq, dX);

        // The float module: the same weights, the same chunks, cast.
        LongTermAttentionf ltf(c.dim, c.heads, c.length, c.params, c.d_model);
        copy_values(ltf.parameters(), s.state.parameters());
        for (std::size_t k = 0; k < s.past_x.size(); ++k)
            ltf.forward(s.past_x[k].cast<float>(), s.past_q[k].cast<float>());
        ltf.zero_grad();
        ltf.forward(s.X.cast<float>(), s.Q.cast<float>());
        REQUIRE(ltf.memory().last_sample_points().cast<double>() ==
                lta.memory().last_sample_points());
        Eigen::MatrixXf dqf(c.q, c.dim), dXf(c.length, c.dim);
        ltf.backward(s.dout.cast<float>(), static_cast<float>(c.kl), dqf, dXf);
        const auto gd = gradients_of(lta.parameters());
        const auto gf = gradients_of(ltf.parameters());
        const auto names = names_of(lta.parameters());
        REQUIRE(gf.size() == gd.size());
        // Without a gate every result is the attention's backward at the memory B (and
        // G_new dB): redo it in double at the float run's B to measure the drift.
        std::vector<double> drift(gd.size() + 2, 0.0);
        if (!c.params.gate && c.chunk > 0) {
            const MatrixXd Bf = ltf.memory().coefficients().cast<double>();
            ContinuousAttentiond att = lta.attention();
            att.zero_grad();
            att.forward(Bf, s.Q);
            MatrixXd dq_b(c.q, c.dim), dB_b(Bf.rows(), c.dim);
            att.backward(s.dout, c.kl, dq_b, dB_b);
            const MatrixXd dX_b = lta.memory().unbounded_fit().G().bottomRows(c.length) * dB_b;
            const auto gb = gradients_of(attention_views(att));
            REQUIRE(gb.size() == gd.size());
            for (std::size_t b = 0; b < gd.size(); ++b) drift[b] = rel_diff(gb[b], gd[b]);
            drift[gd.size()] = rel_diff(dq_b, dq);
            drift[gd.size() + 1] = rel_diff(dX_b, dX);
        }
        require_float("long-term attention", "dqueries", dqf, dq, drift[gd.size()]);
        require_float("long-term attention", "dX", dXf, dX, drift[gd.size() + 1]);
        for (std::size_t b = 0; b < gd.size(); ++b)
            require_float("long-term attention", names[b], gf[b], gd[b], drift[b]);
    }
}

}  // namespace
