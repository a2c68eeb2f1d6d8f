// Properties of the continuous attention (continuous_attention.hpp), the memory gate
// (gate.hpp) and the long-term attention module (long_term_attention.hpp): each against a
// direct loop implementation of the golden README's formulas (§3.7, §3.9), the KL
// regulariser against quadrature, and the module against its parts composed by hand.
#include <catch2/catch.hpp>
#include <cmath>
#include <infinityformer/long_term_attention.hpp>
#include <random>
#include <type_traits>
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

// max |a − b| / max |b|
template <typename A>
double rel(const A& a, const MatrixXd& b) {
    return max_abs(a.template cast<double>() - b) / std::max(max_abs(b), 1e-300);
}

// §3.7 of the golden README, one (head, query) at a time, in double.
struct Reference {
    MatrixXd scores, r, context, output;
    VectorXd a_mu, a_sigma, mu, sigma_sq, kl;
};

struct RefParams {
    double sigma_sq_min, sigma_0, mu_0;
    bool mu_term;
};

Reference reference(const VectorXd& centres, const VectorXd& widths, const MatrixXd& b,
                    const MatrixXd& q, const MatrixXd& wk, const MatrixXd& wv, const MatrixXd& wo,
                    const VectorXd& wmu, const VectorXd& wsig, Index heads, const RefParams& rp) {
    const Index n = b.rows(), e = b.cols(), nq = q.rows(), dh = e / heads, dm = wo.rows();
    MatrixXd keys = MatrixXd::Zero(n, e), values = MatrixXd::Zero(n, e);
    for (Index k = 0; k < n; ++k)
        for (Index o = 0; o < e; ++o)
            for (Index j = 0; j < e; ++j) {
                keys(k, o) += b(k, j) * wk(o, j);
                values(k, o) += b(k, j) * wv(o, j);
            }
    Reference ref;
    ref.scores.resize(heads * nq, n);
    ref.r.resize(heads * nq, n);
    ref.a_mu.resize(heads * nq);
    ref.a_sigma.resize(heads * nq);
    ref.mu.resize(heads * nq);
    ref.sigma_sq.resize(heads * nq);
    ref.kl.resize(heads * nq);
    ref.context = MatrixXd::Zero(nq, e);
    for (Index h = 0; h < heads; ++h)
        for (Index i = 0; i < nq; ++i) {
            const Index row = h * nq + i;
            double a_mu = 0, a_sig = 0;
            for (Index k = 0; k < n; ++k) {
                double s = 0;
                for (Index j = 0; j < dh; ++j) s += keys(k, h * dh + j) * q(i, h * dh + j);
                s /= std::sqrt(static_cast<double>(dh));
                ref.scores(row, k) = s;
                a_mu += wmu[k] * s;
                a_sig += wsig[k] * s;
            }
            const double mu = 1.0 / (1.0 + std::exp(-a_mu));
            const double sp = a_sig > 20 ? a_sig : std::log1p(std::exp(a_sig));
            const double s2 = std::max(sp, rp.sigma_sq_min);
            ref.a_mu[row] = a_mu;
            ref.a_sigma[row] = a_sig;
            ref.mu[row] = mu;
            ref.sigma_sq[row] = s2;
            const double s02 = rp.sigma_0 * rp.sigma_0;
            ref.kl[row] = 0.5 * (s2 / s02 - std::log(s2 / s02) - 1);
            if (rp.mu_term) ref.kl[row] += 0.5 * (mu - rp.mu_0) * (mu - rp.mu_0) / s02;
            for (Index k = 0; k < n; ++k) {
                const double v = s2 + widths[k] * widths[k];
                const double d = mu - centres[k];
                ref.r(row, k) = std::exp(-d * d / (2 * v)) / std::sqrt(2 * kPi * v);
                for (Index j = 0; j < dh; ++j)
                    ref.context(i, h * dh + j) += ref.r(row, k) * values(k, h * dh + j);
            }
        }
    ref.output = MatrixXd::Zero(nq, dm);
    for (Index i = 0; i < nq; ++i)
        for (Index o = 0; o < dm; ++o)
            for (Index j = 0; j < e; ++j) ref.output(i, o) += ref.context(i, j) * wo(o, j);
    return ref;
}

template <typename S>
Reference reference_for(const ContinuousAttention<S>& att, const MatrixXd& b, const MatrixXd& q,
                        const LongTermParams& p) {
    const auto& w = att.weights();
    return reference(att.basis().centers().template cast<double>(),
                     att.basis().widths().template cast<double>(), b, q,
                     w.proj_key.template cast<double>(), w.proj_value.template cast<double>(),
                     w.attn_out.template cast<double>(), w.mu.template cast<double>(),
                     w.sigma.template cast<double>(), att.num_heads(),
                     {static_cast<double>(static_cast<S>(p.sigma_sq_min)),
                      static_cast<double>(static_cast<S>(p.kl_sigma_0)),
                      static_cast<double>(static_cast<S>(p.kl_mu_0)), p.kl_mu_term});
}

// Random weights of a useful size: μ spread over (0, 1), σ² from the clamp to ~1.
template <typename S>
typename ContinuousAttention<S>::Weights random_weights(Index e, Index dm, Index n, Normal& rng) {
    typename ContinuousAttention<S>::Weights w;
    const double se = 1.0 / std::sqrt(static_cast<double>(e));
    w.proj_key = rng.matrix(e, e, se).cast<S>();
    w.proj_value = rng.matrix(e, e, se).cast<S>();
    w.attn_out = rng.matrix(dm, e, se).cast<S>();
    w.mu = rng.matrix(n, 1, 1.0).cast<S>();
    w.sigma = rng.matrix(n, 1, 0.5).cast<S>();
    return w;
}

template <typename S>
constexpr double tolerance() {
    return std::is_same_v<S, double> ? 1e-12 : 2e-5;  // float: measured ≤ 1.6e-6
}

}  // namespace

TEMPLATE_TEST_CASE("attention: forward equals a direct loop implementation", "[attention]", float,
                   double) {
    using Att = ContinuousAttention<TestType>;
    using M = typename Att::Matrix;
    const double tol = tolerance<TestType>();
    for (bool lm : {false, true}) {
        LongTermParams p = lm ? LongTermParams::lm() : LongTermParams::sorting();
        p.num_basis = 24;
        const auto basis = GaussianBasis<TestType>::default_family(24, p.widths);
        for (Index heads : {1, 2, 3}) {
            for (Index d_model : {0, 5, 9}) {
                INFO((lm ? "lm" : "sorting") << ", H = " << heads << ", d_model = " << d_model);
                const Index e = 6;
                Att att(basis, e, heads, d_model, p);
                const Index dm = d_model == 0 ? e : d_model;
                REQUIRE(att.d_model() == dm);
                REQUIRE(att.head_size() == e / heads);
                Normal rng(static_cast<std::uint64_t>(1000 * heads + d_model + (lm ? 7 : 0)));
                att.set_weights(random_weights<TestType>(e, dm, 24, rng));
                const M b = rng.matrix(24, e).cast<TestType>();
                const M q = rng.matrix(7, e).cast<TestType>();
                const M out = att.forward(b, q);
                REQUIRE(out.rows() == 7);
                REQUIRE(out.cols() == dm);
                REQUIRE(out.allFinite());
                const Reference ref =
                    reference_for(att, b.template cast<double>(), q.template cast<double>(), p);
                const auto& t = att.last();
                CHECK(rel(out, ref.output) <= tol);
                CHECK(rel(t.output, ref.output) <= tol);
                CHECK(rel(att.scores(b, q), ref.scores) <= tol);
                CHECK(rel(t.mu, ref.mu) <= tol);
                CHECK(rel(t.sigma_sq, ref.sigma_sq) <= tol);
                CHECK(rel(t.r, ref.r) <= 10 * tol);
                CHECK(rel(t.context, ref.context) <= 10 * tol);
                CHECK(rel(t.kl_reg, ref.kl) <= tol);
                // The out-parameter overload writes the same.
                M out2(7, dm);
                att.forward(b, q, out2);
                CHECK(out2 == out);
                // The data exercise what they should: μ spread out, some σ² not clamped.
                CHECK(ref.mu.maxCoeff() - ref.mu.minCoeff() > 0.2);
                CHECK(ref.sigma_sq.maxCoeff() > 10 * p.sigma_sq_min);
            }
        }
    }
}

TEMPLATE_TEST_CASE("attention: sigma_sq clamp and the linear branch of softplus", "[attention]",
                   float, double) {
    using Att = ContinuousAttention<TestType>;
    using M = typename Att::Matrix;
    using V = typename Att::Vector;
    LongTermParams p;
    p.num_basis = 16;
    const auto basis = GaussianBasis<TestType>::default_family(16, p.widths);
    Att att(basis, 4, 2, 0, p);
    Normal rng(5);
    auto w = random_weights<TestType>(4, 4, 16, rng);
    att.set_weights(w);
    const M b = rng.matrix(16, 4).cast<TestType>();
    const M q = rng.matrix(3, 4).cast<TestType>();
    // Scores of (head 0, query 0) = row 0 and (head 1, query 2) = row 1·3 + 2 = 5.
    const Reference before =
        reference_for(att, b.template cast<double>(), q.template cast<double>(), p);
    MatrixXd s(2, 16);
    s.row(0) = before.scores.row(0);
    s.row(1) = before.scores.row(5);
    // w_σ with w_σ·s₀ = −30 (softplus ≈ 9e-14 < σ²_min: clamp) and w_σ·s₅ = 25 (> 20).
    Eigen::Vector2d target(-30.0, 25.0);
    const VectorXd wsig = s.transpose() * (s * s.transpose()).ldlt().solve(target);
    w.sigma = wsig.cast<TestType>();
    att.set_weights(w);
    att.forward(b, q);
    const auto& t = att.last();
    INFO("a_sigma[0] = " << t.a_sigma[0] << ", a_sigma[5] = " << t.a_sigma[5]);
    REQUIRE(t.a_sigma[0] < TestType(-29));
    REQUIRE(t.a_sigma[5] > TestType(24));
    CHECK(t.sigma_sq[0] == static_cast<TestType>(p.sigma_sq_min));
    CHECK(t.sigma_sq[0] == att.sigma_sq_min());
    CHECK(t.sigma_sq[5] == t.a_sigma[5]);  // softplus(x) = x above 20
    // The other rows are untouched by the construction and still match the reference.
    const Reference ref =
        reference_for(att, b.template cast<double>(), q.template cast<double>(), p);
    CHECK(rel(t.sigma_sq, ref.sigma_sq) <= tolerance<TestType>());
    CHECK(rel(t.output, ref.output) <= 10 * tolerance<TestType>());
    V expected_r0(16);
    for (Index k = 0; k < 16; ++k) {
        const double v =
            p.sigma_sq_min + static_cast<double>(basis.widths()[k] * basis.widths()[k]);
        const double d = static_cast<double>(t.mu[0]) - static_cast<double>(basis.centers()[k]);
        expected_r0[k] = static_cast<TestType>(std::exp(-d * d / (2 * v)) / std::sqrt(2 * kPi * v));
    }
    CHECK(rel(t.r.row(0).transpose(), expected_r0.template cast<double>()) <=
          10 * tolerance<TestType>());
}

TEST_CASE("attention: the KL regulariser equals quadrature of the divergence", "[attention]") {
    // KL(p ‖ q) = ∫ p log(p/q) by Simpson over μ ± 40σ (the log-ratio is written from the
    // densities, not from the closed form). Without the μ term, q = N(μ, σ₀²).
    auto kl_quadrature = [](double mu, double s2, double mu0, double s02) {
        const double sd = std::sqrt(s2);
        const int n = 4000;
        const double a = mu - 40 * sd, h = 80 * sd / n;
        double sum = 0;
        for (int i = 0; i <= n; ++i) {
            const double t = a + h * i;
            const double w = (i == 0 || i == n) ? 1.0 : (i % 2 == 1 ? 4.0 : 2.0);
            const double logp = -0.5 * (t - mu) * (t - mu) / s2 - 0.5 * std::log(2 * kPi * s2);
            const double logq = -0.5 * (t - mu0) * (t - mu0) / s02 - 0.5 * std::log(2 * kPi * s02);
            sum += w * std::exp(logp) * (logp - logq);
        }
        return sum * h / 3;
    };
    const auto basis = GaussianBasis<double>::default_family(8, {0.01, 0.05});
    for (bool mu_term : {false, true}) {
        for (double mu0 : {-1.0, 0.3}) {
            LongTermParams p;
            p.num_basis = 8;
            p.kl_mu_term = mu_term;
            p.kl_mu_0 = mu0;
            p.kl_sigma_0 = 0.05;
            const ContinuousAttention<double> att(basis, 2, 1, 0, p);
            for (double mu : {0.05, 0.3, 0.5, 0.93})
                for (double s2 : {1e-6, 1e-4, 2.5e-3, 0.01, 0.3}) {
                    const double expected =
                        kl_quadrature(mu, s2, mu_term ? mu0 : mu, p.kl_sigma_0 * p.kl_sigma_0);
                    const double got = att.kl(mu, s2);
                    INFO("mu_term = " << mu_term << ", mu0 = " << mu0 << ", mu = " << mu
                                      << ", sigma_sq = " << s2 << ": " << got << " vs "
                                      << expected);
                    CHECK(std::abs(got - expected) <= 1e-9 * std::abs(expected) + 1e-12);
                }
            // KL vanishes exactly at the prior.
            CHECK(std::abs(att.kl(mu_term ? mu0 : 0.42, 0.0025)) <= 1e-15);
        }
    }
    // forward() records the same per (head, query).
    LongTermParams p = LongTermParams::lm();
    p.num_basis = 8;
    ContinuousAttention<double> att(basis, 4, 2, 0, p);
    Normal rng(2);
    att.forward(rng.matrix(8, 4), rng.matrix(3, 4));
    const auto& t = att.last();
    REQUIRE(t.kl_reg.size() == 6);
    for (Index i = 0; i < 6; ++i) CHECK(t.kl_reg[i] == att.kl(t.mu[i], t.sigma_sq[i]));
}

TEMPLATE_TEST_CASE("gate: equals the 3-tap formula with zero ends", "[attention][gate]", float,
                   double) {
    using G = MemoryGate<TestType>;
    using M = typename G::Matrix;
    const Index e = 5;
    G gate(e, 3);
    Normal rng(12);
    typename G::Weights w;
    for (auto& tap : w.taps) tap = rng.matrix(e, e, 0.5).cast<TestType>();
    w.bias = rng.matrix(e, 1, 0.5).cast<TestType>();
    gate.set_weights(w);
    for (Index l : {1, 2, 3, 6}) {
        INFO("L = " << l);
        const M x = rng.matrix(l, e).cast<TestType>();
        M g(l, e), gated(l, e);
        gate.forward(x, g, gated);
        const MatrixXd xd = x.template cast<double>();
        MatrixXd expected_g(l, e), expected_gated(l, e);
        for (Index t = 0; t < l; ++t)
            for (Index o = 0; o < e; ++o) {
                // a_t = b + W₀ x_{t−1} + W₁ x_t + W₂ x_{t+1}, x_{−1} = x_L = 0.
                double a = static_cast<double>(w.bias[o]);
                for (Index j = 0; j < 3; ++j) {
                    const Index src = t + j - 1;
                    if (src < 0 || src >= l) continue;
                    for (Index i = 0; i < e; ++i)
                        a += static_cast<double>(w.taps[static_cast<std::size_t>(j)](o, i)) *
                             xd(src, i);
                }
                expected_g(t, o) = 1.0 / (1.0 + std::exp(-a));
                expected_gated(t, o) = expected_g(t, o) * xd(t, o);
            }
        CHECK(rel(g, expected_g) <= tolerance<TestType>());
        CHECK(rel(gated, expected_gated) <= tolerance<TestType>());
    }
}

TEMPLATE_TEST_CASE("long-term attention: forward is gate, memory update, attention composed",
                   "[attention]", float, double) {
    using S = TestType;
    using M = typename LongTermAttention<S>::Matrix;
    using V = typename LongTermAttention<S>::Vector;
    for (bool lm : {false, true}) {
        INFO((lm ? "lm (gate, sticky)" : "sorting (uniform, no gate)"));
        LongTermParams p = lm ? LongTermParams::lm() : LongTermParams::sorting();
        p.num_basis = 16;
        p.num_samples = 8;
        p.num_bins = 16;
        p.seed = 41;
        const Index e = 6, heads = 2, l = 8, dm = lm ? 0 : 4;
        LongTermAttention<S> lta(e, heads, l, p, dm);
        REQUIRE(lta.has_gate() == lm);
        // The same pieces by hand, with the module's (randomised) weights.
        Normal rng(3);
        lta.set_attention_weights(random_weights<S>(e, lm ? e : dm, 16, rng));
        LongTermMemory<S> mem(e, l, p);
        ContinuousAttention<S> att(mem.basis(), e, heads, dm, p);
        att.set_weights(lta.attention().weights());
        MemoryGate<S> gate(e, 12345);  // different initial weights, replaced below
        if (lm) gate.set_weights(lta.gate().weights());
        for (int chunk = 0; chunk < 5; ++chunk) {
            const M x = rng.matrix(l, e).cast<S>();
            const M q = rng.matrix(4, e).cast<S>();
            const M out = lta.forward(x, q);
            M stored = x;
            if (lm) {
                M g(l, e), gated(l, e);
                gate.forward(x, g, gated);
                stored = gated;
                CHECK(lta.last_gate() == g);
                CHECK(lta.last_gated() == gated);
            }
            mem.update(stored);
            const M expected = att.forward(mem.coefficients(), q);
            mem.observe(att.last().mu, att.last().sigma_sq);
            INFO("chunk " << chunk);
            CHECK(lta.memory().coefficients() == mem.coefficients());
            CHECK(lta.memory().last_sample_points() == mem.last_sample_points());
            CHECK(out == expected);
            // The module recorded the densities of this attention.
            CHECK(lta.memory().histogram() == mem.histogram());
        }
        // Explicit sample points.
        V pts(8);
        pts << S(0.05), S(0.1), S(0.2), S(0.4), S(0.5), S(0.55), S(0.8), S(1.0);
        const M x = rng.matrix(l, e).cast<S>();
        const M q = rng.matrix(3, e).cast<S>();
        const M out = lta.forward(x, q, pts);
        M stored = x;
        if (lm) {
            M g(l, e), gated(l, e);
            gate.forward(x, g, gated);
            stored = gated;
        }
        mem.update(stored, pts);
        CHECK(lta.memory().last_sample_points() == pts);
        CHECK(out == att.forward(mem.coefficients(), q));
        // update() then attend() is forward().
        LongTermAttention<S> a(e, heads, l, p, dm), b(e, heads, l, p, dm);
        const M x1 = rng.matrix(l, e).cast<S>(), x2 = rng.matrix(l, e).cast<S>();
        const M q1 = rng.matrix(2, e).cast<S>(), q2 = rng.matrix(2, e).cast<S>();
        a.forward(x1, q1);
        const M fa = a.forward(x2, q2);
        b.update(x1);
        b.attend(q1);
        b.update(x2);
        CHECK(b.attend(q2) == fa);
        // reset() forgets the memory and keeps the weights.
        a.reset();
        CHECK(a.memory().empty());
        LongTermAttention<S> fresh(e, heads, l, p, dm);
        CHECK(a.forward(x1, q1) == fresh.forward(x1, q1));
    }
}

TEST_CASE("long-term attention: attend records the densities for sticky sampling", "[attention]") {
    LongTermParams p = LongTermParams::lm();
    p.num_basis = 16;
    p.num_samples = 8;
    p.num_bins = 32;
    LongTermAttention<double> lta(4, 2, 8, p);
    // The densities by hand: a separate attention with the same weights over the same memory.
    ContinuousAttention<double> att(lta.memory().basis(), 4, 2, 0, p);
    att.set_weights(lta.attention().weights());
    Normal rng(6);
    const MatrixXd x = rng.matrix(8, 4), q = rng.matrix(5, 4);
    lta.update(x);
    CHECK(lta.memory().histogram().isZero(0));  // nothing observed yet
    lta.attend(q);
    att.forward(lta.memory().coefficients(), q);
    const auto& t = att.last();
    const VectorXd expected = sticky_histogram<double>(t.mu, t.sigma_sq.cwiseSqrt(), 32);
    CHECK(rel(lta.memory().histogram(), expected) <= 1e-15);
    CHECK(lta.memory().histogram().sum() > 0.99);
}

TEST_CASE("attention: values-first and R·B-first contexts agree, forward and backward",
          "[attention]") {
    // Every query's output, KL term and gradient share nothing with the other queries, so
    // one call with 9 queries (values first) equals nine calls with one query (R·B first).
    LongTermParams p;
    p.num_basis = 32;
    p.kl_mu_term = true;
    const auto basis = GaussianBasis<double>::default_family(32, p.widths);
    ContinuousAttentiond full(basis, 12, 3, 10, p);
    Normal rng(41);
    full.set_weights(random_weights<double>(12, 10, 32, rng));
    REQUIRE(full.values_first(9));
    REQUIRE_FALSE(full.values_first(1));
    ContinuousAttentiond single = full;
    const MatrixXd b = rng.matrix(32, 12);
    const MatrixXd q = rng.matrix(9, 12);
    const MatrixXd dout = rng.matrix(9, 10);
    const double kl_weight = 0.3;

    full.zero_grad();
    const MatrixXd out = full.forward(b, q);
    REQUIRE(full.last().values.rows() == 32);
    MatrixXd dq(9, 12), db(32, 12);
    full.backward(dout, kl_weight, dq, db);

    single.zero_grad();
    MatrixXd out1(9, 10), dq1(9, 12), db1 = MatrixXd::Zero(32, 12);
    for (Index i = 0; i < 9; ++i) {
        out1.row(i) = single.forward(b, q.row(i));
        REQUIRE(single.last().values.rows() == 0);
        MatrixXd dqi(1, 12), dbi(32, 12);
        single.backward(dout.row(i), kl_weight, dqi, dbi);
        dq1.row(i) = dqi;
        db1 += dbi;
    }
    const auto close = [](const MatrixXd& a, const MatrixXd& e) {
        return max_abs(a - e) <= 1e-12 * max_abs(e);
    };
    CHECK(close(out1, out));
    CHECK(close(dq1, dq));
    CHECK(close(db1, db));
    const auto& g = full.gradients();
    const auto& g1 = single.gradients();
    CHECK(close(g1.proj_key, g.proj_key));
    CHECK(close(g1.proj_value, g.proj_value));
    CHECK(close(g1.attn_out, g.attn_out));
    CHECK(close(g1.mu, g.mu));
    CHECK(close(g1.sigma, g.sigma));
}
