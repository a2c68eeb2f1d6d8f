// Properties of the continuous attention (continuous_attention.hpp): the forward against a
// direct loop implementation of the golden README's formulas (§3.7), in float and double;
// the σ² clamp and softplus; the KL regulariser against quadrature; values-first and
// R·B-first contexts; the backward against finite differences (no gradient through an
// active clamp), float gradients against double, accumulation; bad input.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <infinityformer/continuous_attention.hpp>
#include <limits>
#include <vector>

#include "extern_templates.hpp"
#include "part_util.hpp"
#include "test_fd.hpp"
#include "test_util.hpp"

namespace {

using namespace part_util;

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

struct AttCase {
    Index heads, dim, d_model, n;
    std::vector<double> widths;
    double sigma_sq_min;
    bool mu_term;
    double kl;
    Index q;
    bool sharp;  // w_μ ×3, w_σ ×6
    std::vector<Placed> placed;
    std::uint64_t seed = 0;
};

LongTermParams attention_params(const AttCase& c) {
    LongTermParams p;
    p.num_basis = c.n;
    p.widths = c.widths;
    p.sigma_sq_min = c.sigma_sq_min;
    p.kl_mu_term = c.mu_term;
    p.seed = c.seed;
    return p;
}

template <typename S>
ContinuousAttention<S> make_attention(const AttCase& c) {
    return ContinuousAttention<S>(GaussianBasis<S>::default_family(c.n, c.widths), c.dim, c.heads,
                                  c.d_model, attention_params(c));
}

struct AttSetup {
    ContinuousAttentiond att;
    MatrixXd B, Q, dout;
};

// The double module and inputs of a case, with its placed queries.
AttSetup attention_setup(const AttCase& c) {
    Normal rng(c.seed + 1000);
    AttSetup s{make_attention<double>(c), rng.matrix(c.n, c.dim), rng.matrix(c.q, c.dim),
               MatrixXd()};
    if (c.sharp) {
        auto w = s.att.weights();
        w.mu *= 3.0;
        w.sigma *= 6.0;
        s.att.set_weights(w);
    }
    s.dout = rng.matrix(c.q, s.att.d_model());
    const auto& w = s.att.weights();
    for (const auto& p : c.placed)
        place_query(s.B * w.proj_key.transpose(), w.mu, w.sigma, c.heads, s.Q, p, c.sigma_sq_min,
                    rng);
    return s;
}

double attention_loss(ContinuousAttentiond& att, const MatrixXd& B, const MatrixXd& Q,
                      const MatrixXd& dout, double kl) {
    const MatrixXd out = att.forward(B, Q);
    return out.cwiseProduct(dout).sum() + kl * att.last().kl_reg.sum();
}

const std::vector<AttCase>& attention_cases() {
    const std::vector<double> lm{0.005, 0.01}, sorting{0.01, 0.05};
    static const std::vector<AttCase> cases = {
        // heads, dim, d_model, N, widths, σ²_min, μ term, KL weight, Q, sharp,
        // placed queries {row, σ² (0: clamped), μ}, seed. No placed μ sits at the centre of
        // symmetry of the basis (0.5 with an odd number of centres, or between two): there
        // ∂ℓ/∂μ is a difference of equal terms, which float cannot compare with double.
        {1, 4, 5, 8, sorting, 1e-6, false, 0.0, 3, false, {{1, 0, 0.4}}, 1},
        {2, 6, 0, 10, lm, 1e-4, true, 0.1, 4, true, {{0, 2e-3, .3}, {2, 0, .6}, {3, 5e-4, .52}}, 2},
        {3, 6, 4, 12, lm, 1e-4, true, 0.05, 2, true, {{0, 0, 0.2}, {1, 3e-3, 0.8}}, 33},
        {3, 9, 7, 8, sorting, 1e-6, false, 0.2, 3, false, {{2, 1e-3, 0.45}}, 4},
        {2, 4, 3, 8, sorting, 1e-6, true, 0.0, 3, true, {}, 5},
        {1, 3, 2, 6, {0.02, 0.05}, 1e-2, false, 0.3, 2, true, {{1, 0, 0.45}}, 6},
        {4, 4, 2, 8, lm, 1e-4, true, 0.1, 2, false, {{0, 0, 0.5}, {1, 1e-3, 0.5}}, 7},
    };
    return cases;
}

void round_to_float(AttSetup& s) {
    std::vector<Parameter<double>> ps;
    s.att.append_parameters(ps);
    round_values_to_float(ps);
    s.B = float_rounded(s.B);
    s.Q = float_rounded(s.Q);
    s.dout = float_rounded(s.dout);
}

}  // namespace

TEMPLATE_TEST_CASE("continuous attention: forward equals a direct loop implementation",
                   "[continuous_attention]", float, double) {
    using Att = ContinuousAttention<TestType>;
    using M = typename Att::Matrix;
    const double tol = loop_tolerance<TestType>();
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
                att.set_weights(random_attention_weights<typename Att::Weights>(e, dm, 24, rng));
                const M b = rng.matrix(24, e).cast<TestType>();
                const M q = rng.matrix(7, e).cast<TestType>();
                const M out = att.forward(b, q);
                REQUIRE(out.rows() == 7);
                REQUIRE(out.cols() == dm);
                REQUIRE(out.allFinite());
                const Reference ref =
                    reference_for(att, b.template cast<double>(), q.template cast<double>(), p);
                const auto& t = att.last();
                CHECK(rel_diff(out, ref.output) <= tol);
                CHECK(rel_diff(t.output, ref.output) <= tol);
                CHECK(rel_diff(att.scores(b, q), ref.scores) <= tol);
                CHECK(rel_diff(t.mu, ref.mu) <= tol);
                CHECK(rel_diff(t.sigma_sq, ref.sigma_sq) <= tol);
                CHECK(rel_diff(t.r, ref.r) <= 10 * tol);
                CHECK(rel_diff(t.context, ref.context) <= 10 * tol);
                CHECK(rel_diff(t.kl_reg, ref.kl) <= tol);
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

TEMPLATE_TEST_CASE("continuous attention: sigma_sq clamp and the linear branch of softplus",
                   "[continuous_attention]", float, double) {
    using Att = ContinuousAttention<TestType>;
    using M = typename Att::Matrix;
    using V = typename Att::Vector;
    LongTermParams p;
    p.num_basis = 16;
    const auto basis = GaussianBasis<TestType>::default_family(16, p.widths);
    Att att(basis, 4, 2, 0, p);
    Normal rng(5);
    auto w = random_attention_weights<typename Att::Weights>(4, 4, 16, rng);
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
    CHECK(rel_diff(t.sigma_sq, ref.sigma_sq) <= loop_tolerance<TestType>());
    CHECK(rel_diff(t.output, ref.output) <= 10 * loop_tolerance<TestType>());
    V expected_r0(16);
    for (Index k = 0; k < 16; ++k) {
        const double v =
            p.sigma_sq_min + static_cast<double>(basis.widths()[k] * basis.widths()[k]);
        const double d = static_cast<double>(t.mu[0]) - static_cast<double>(basis.centers()[k]);
        expected_r0[k] = static_cast<TestType>(std::exp(-d * d / (2 * v)) / std::sqrt(2 * kPi * v));
    }
    CHECK(rel_diff(t.r.row(0).transpose(), expected_r0.template cast<double>()) <=
          10 * loop_tolerance<TestType>());
}

TEST_CASE("continuous attention: the KL regulariser equals quadrature of the divergence",
          "[continuous_attention]") {
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

TEST_CASE("continuous attention: values-first and R·B-first contexts agree, forward and backward",
          "[continuous_attention]") {
    // Every query's output, KL term and gradient share nothing with the other queries, so
    // one call with 9 queries (values first) equals nine calls with one query (R·B first).
    LongTermParams p;
    p.num_basis = 32;
    p.kl_mu_term = true;
    const auto basis = GaussianBasis<double>::default_family(32, p.widths);
    ContinuousAttentiond full(basis, 12, 3, 10, p);
    Normal rng(41);
    full.set_weights(random_attention_weights<ContinuousAttentiond::Weights>(12, 10, 32, rng));
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

TEST_CASE("continuous attention: backward equals finite differences",
          "[continuous_attention][fd][training]") {
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
        const auto analytic = gradients_of(parameter_views(base));
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
            "attention", s.att, parameter_views<ContinuousAttentiond>,
            [&](ContinuousAttentiond& m) { return attention_loss(m, s.B, s.Q, s.dout, c.kl); },
            analytic, h0, c.seed + 2);
    }
}

TEST_CASE("continuous attention: no gradient passes an active sigma_sq clamp",
          "[continuous_attention][fd][training]") {
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
    const auto ps = parameter_views(s.att);
    REQUIRE(ps[4].name == "sigma.weight");
    const double step = 1e-2 / base.scores(s.B, s.Q).cwiseAbs().maxCoeff();
    for (Index k = 0; k < c.n; ++k) {
        auto loss = [&](double h) {
            ContinuousAttentiond m = s.att;
            parameter_views(m)[4].value[k] += h;
            return attention_loss(m, s.B, s.Q, s.dout, c.kl);
        };
        const double l0 = loss(0.0);
        for (const double h : {step, -step, 2 * step, -2 * step}) CHECK(loss(h) == l0);
        CHECK(fd::five_point(loss, step) == 0.0);
    }
}

TEST_CASE("continuous attention: float gradients agree with double",
          "[continuous_attention][float][training]") {
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
        copy_values(psf, parameter_views(s.att));
        attf.zero_grad();
        attf.forward(s.B.cast<float>(), s.Q.cast<float>());
        Eigen::MatrixXf dqf(c.q, c.dim), dBf(c.n, c.dim);
        attf.backward(s.dout.cast<float>(), static_cast<float>(c.kl), dqf, dBf);
        require_float("attention", "dqueries", dqf, dq);
        require_float("attention", "dB", dBf, dB);
        const auto gd = gradients_of(parameter_views(att));
        const auto gf = gradients_of(psf);
        for (std::size_t b = 0; b < gd.size(); ++b) {
            require_float("attention", psf[b].name, gf[b], gd[b]);
        }
    }
}

TEST_CASE("continuous attention: gradients accumulate over backward calls",
          "[continuous_attention][accumulate][training]") {
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
        return gradients_of(parameter_views(m));
    };
    ContinuousAttentiond acc = s1.att;
    acc.zero_grad();
    acc.forward(s1.B, s1.Q);
    acc.backward(s1.dout, c.kl, dq, dB);
    acc.forward(s2.B, s2.Q);
    acc.backward(s2.dout, c.kl, dq, dB);
    require_sum(gradients_of(parameter_views(acc)), single(s1), single(s2));
    acc.zero_grad();
    for (const auto& g : gradients_of(parameter_views(acc))) CHECK(g.isZero(0.0));
}

TEST_CASE("continuous attention: rejects bad input and keeps its weights",
          "[continuous_attention][errors]") {
    LongTermParams p;
    p.num_basis = 16;
    const auto basis = GaussianBasis<double>::default_family(16, p.widths);
    const char* ctor = "ContinuousAttention::ContinuousAttention: ";
    REQUIRE_INVALID(ContinuousAttention<double>(basis, 0, 1, 0, p), has(ctor) && has("dim is 0"));
    REQUIRE_INVALID(ContinuousAttention<double>(basis, 6, 4, 0, p),
                    has(ctor) && has("num_heads is 4") && has("divisor of dim (6)"));
    REQUIRE_INVALID(ContinuousAttention<double>(basis, 6, 0, 0, p),
                    has(ctor) && has("num_heads is 0"));
    REQUIRE_INVALID(ContinuousAttention<double>(basis, 6, 2, -1, p),
                    has(ctor) && has("d_model is -1"));

    ContinuousAttention<double> att(basis, 6, 2, 5, p), twin(basis, 6, 2, 5, p);
    Normal rng(6);
    const MatrixXd b = rng.matrix(16, 6), q = rng.matrix(3, 6);
    const MatrixXd first = att.forward(b, q);
    twin.forward(b, q);
    const char* fwd = "ContinuousAttention::forward: ";
    REQUIRE_INVALID(att.forward(rng.matrix(15, 6), q), has(fwd) && has("B is 15x6, expected 16x6"));
    REQUIRE_INVALID(att.forward(rng.matrix(16, 5), q), has(fwd) && has("B is 16x5, expected 16x6"));
    REQUIRE_INVALID(att.forward(with(b, 4, 1, kNaN), q),
                    has(fwd) && has("B has a non-finite entry nan"));
    REQUIRE_INVALID(att.forward(b, MatrixXd(0, 6)), has(fwd) && has("queries has 0 rows"));
    REQUIRE_INVALID(att.forward(b, rng.matrix(3, 5)),
                    has(fwd) && has("queries has 5 cols, expected 6"));
    REQUIRE_INVALID(att.forward(b, with(q, 2, 5, kInf)),
                    has(fwd) && has("queries has a non-finite entry inf"));
    MatrixXd out(3, 6);
    REQUIRE_INVALID(att.forward(b, q, out), has(fwd) && has("out is 3x6, expected 3x5"));
    // The trace still holds the last good forward.
    CHECK(att.last().output == first);

    const auto w = att.weights();
    const char* sw = "ContinuousAttention::set_weights: ";
    auto bad = w;
    bad.proj_key = rng.matrix(6, 5);
    REQUIRE_INVALID(att.set_weights(bad), has(sw) && has("proj_key is 6x5, expected 6x6"));
    bad = w;
    bad.proj_value = rng.matrix(5, 6);
    REQUIRE_INVALID(att.set_weights(bad), has(sw) && has("proj_value is 5x6, expected 6x6"));
    bad = w;
    bad.attn_out = rng.matrix(6, 6);
    REQUIRE_INVALID(att.set_weights(bad), has(sw) && has("attn_out is 6x6, expected 5x6"));
    bad = w;
    bad.mu = rng.matrix(15, 1);
    REQUIRE_INVALID(att.set_weights(bad), has(sw) && has("mu is 15x1, expected 16x1"));
    bad = w;
    bad.sigma = rng.matrix(17, 1);
    REQUIRE_INVALID(att.set_weights(bad), has(sw) && has("sigma is 17x1, expected 16x1"));
    bad = w;
    bad.attn_out(4, 5) = kNaN;
    REQUIRE_INVALID(att.set_weights(bad), has(sw) && has("attn_out has a non-finite entry nan"));
    bad = w;
    bad.sigma[3] = -kInf;
    REQUIRE_INVALID(att.set_weights(bad), has(sw) && has("sigma has a non-finite entry -inf"));
    // Weights unchanged, and the object computes as its twin.
    CHECK(att.weights().proj_key == twin.weights().proj_key);
    CHECK(att.weights().proj_value == twin.weights().proj_value);
    CHECK(att.weights().attn_out == twin.weights().attn_out);
    CHECK(att.weights().mu == twin.weights().mu);
    CHECK(att.weights().sigma == twin.weights().sigma);
    const MatrixXd q2 = rng.matrix(4, 6);
    CHECK(att.forward(b, q2) == twin.forward(b, q2));
}

// Split from "errors: LongTermParams::validate names each field and value" (its last part:
// every constructor validates the settings it uses, and only those).
TEST_CASE("continuous attention: the constructor validates the attention's settings only",
          "[continuous_attention][errors]") {
    // The attention never reads τ.
    LongTermParams p;
    p.num_basis = 16;
    p.tau = 1;
    const auto basis = GaussianBasis<double>::default_family(16, p.widths);
    CHECK_NOTHROW(ContinuousAttention<double>(basis, 4, 2, 0, p));
    LongTermParams q;
    q.num_basis = 16;
    q.sigma_sq_min = 0;
    REQUIRE_INVALID(ContinuousAttention<double>(basis, 4, 2, 0, q),
                    has("ContinuousAttention::ContinuousAttention: sigma_sq_min is 0"));
}

// Split from "training: backward without forward is a logic_error" (the continuous attention
// part).
TEST_CASE("continuous attention: backward without forward is a logic_error",
          "[continuous_attention][errors][training]") {
    const LongTermParams p = lm_small(8, 4, 91);
    Normal rng(91);
    MatrixXd dq(3, 6), dB(8, 6);
    ContinuousAttentiond att(GaussianBasisd::default_family(8, p.widths), 6, 2, 0, p);
    CHECK_THROWS_AS(att.backward(rng.matrix(3, 6), 0.0, dq, dB), infinityformer::logic_error);
}

// Split from "training: bad backward arguments are rejected and change no gradient" (the
// continuous attention part).
TEST_CASE("continuous attention: bad backward arguments are rejected and change no gradient",
          "[continuous_attention][errors][training]") {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const LongTermParams p = lm_small(8, 4, 92);
    Normal rng(92);
    const Index d = 6, q = 3, n = 8;
    ContinuousAttentiond att(GaussianBasisd::default_family(n, p.widths), d, 2, 5, p);
    const MatrixXd B = rng.matrix(n, d), Q = rng.matrix(q, d);
    att.forward(B, Q);
    MatrixXd dq(q, d), dB(n, d), dq_bad(q, d + 1), dB_bad(n + 1, d);
    const MatrixXd dout = rng.matrix(q, 5);
    MatrixXd dout_nan = dout;
    dout_nan(1, 2) = nan;
    att.backward(dout, 0.1, dq, dB);  // non-zero gradients to protect
    att.forward(B, Q);                // the same trace again: the backward consumed the first one
    auto views = [&] { return parameter_views(att); };
    require_rejected("dout", views, [&] { att.backward(rng.matrix(q, d), 0.1, dq, dB); });
    require_rejected("dout", views, [&] { att.backward(dout_nan, 0.1, dq, dB); });
    require_rejected("kl_weight", views, [&] { att.backward(dout, -0.1, dq, dB); });
    require_rejected("kl_weight", views, [&] { att.backward(dout, nan, dq, dB); });
    require_rejected("dqueries", views, [&] { att.backward(dout, 0.1, dq_bad, dB); });
    require_rejected("dB", views, [&] { att.backward(dout, 0.1, dq, dB_bad); });
    // The trace survived the rejected calls: a valid call adds the same gradients again.
    const auto once = gradients_of(views());
    att.backward(dout, 0.1, dq, dB);
    const auto twice = gradients_of(views());
    for (std::size_t b = 0; b < once.size(); ++b)
        CHECK((twice[b] - 2 * once[b]).cwiseAbs().maxCoeff() <=
              1e-14 * (1 + once[b].cwiseAbs().maxCoeff()));
}

TEST_CASE("continuous attention: the constructor's seed is used as given",
          "[continuous_attention][seeds]") {
    // A part's seed is its generator's seed, as ShortTermAttention's and MemoryGate's (the
    // derivation from a base seed is LongTermAttention's: test_layer.cpp).
    LongTermParams p;
    p.num_basis = 8;
    p.seed = 17;
    const auto basis = GaussianBasisd::default_family(8, p.widths);
    const ContinuousAttentiond given(basis, 6, 2, 4, p.attention_params(), 17);
    const ContinuousAttentiond from_params(basis, 6, 2, 4, p);
    ContinuousAttentiond reinit(basis, 6, 2, 4, p.attention_params(), 0);
    reinit.init_weights(17);
    for (const ContinuousAttentiond* a : {&given, &from_params}) {
        CHECK(a->weights().proj_key == reinit.weights().proj_key);
        CHECK(a->weights().proj_value == reinit.weights().proj_value);
        CHECK(a->weights().attn_out == reinit.weights().attn_out);
        CHECK(a->weights().mu == reinit.weights().mu);
        CHECK(a->weights().sigma == reinit.weights().sigma);
    }
}
