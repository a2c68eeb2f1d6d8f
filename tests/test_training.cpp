// Training: the backward passes against finite differences (test_fd.hpp: Ridders'
// extrapolation in double, error |a − fd| / max(|fd|, 1e-3 · max |block|) < 1e-6), float
// gradients against double ones, accumulation over calls, chunks and streams, the named
// parameters, Adam against its closed form, bad input, and a seeded training run.
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

namespace {

using namespace infinityformer;
using Catch::Matchers::Contains;
using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;

constexpr double kPi = 3.14159265358979323846264338327950288;
constexpr double kFdBound = 1e-6;     // FD error bound (double)
constexpr double kFloatBound = 1e-3;  // float vs double, relative to the block's max |value|
constexpr Index kMaxEntries = 14;     // entries differentiated per block (random subset)
constexpr double kH0 = 0.1;           // first FD step (Ridders), also tried /10, /100, /1000

struct Rng {
    std::mt19937_64 engine;
    explicit Rng(std::uint64_t seed) : engine(seed) {}
    double uniform() { return static_cast<double>(engine() >> 11) * 0x1.0p-53; }
    double uniform(double a, double b) { return a + (b - a) * uniform(); }
    double normal() {
        const double u1 = 1.0 - uniform();
        const double u2 = uniform();
        return std::sqrt(-2.0 * std::log(u1)) * std::cos(2 * kPi * u2);
    }
    MatrixXd matrix(Index r, Index c, double scale = 1.0) {
        MatrixXd m(r, c);
        for (Index i = 0; i < m.size(); ++i) m(i) = scale * normal();
        return m;
    }
};

// max |a − b| / max |b| (0 if both are zero).
template <typename A, typename B>
double rel_diff(const A& a, const B& b) {
    const MatrixXd ad = a.template cast<double>();
    const MatrixXd bd = b.template cast<double>();
    if (ad.size() == 0 && bd.size() == 0) return 0.0;
    const double num = (ad - bd).cwiseAbs().maxCoeff();
    const double den = bd.cwiseAbs().maxCoeff();
    if (den == 0.0) return num == 0.0 ? 0.0 : std::numeric_limits<double>::infinity();
    return num / den;
}

void require_fd(const std::string& part, const std::string& what, const fd::Result& r) {
    fd::registry().record(part, r);
    INFO(part << ": " << what << ": worst entry " << r.worst << " of " << r.checked
              << " checked, analytic " << r.analytic << ", fd " << r.numeric << ", scale "
              << r.scale << ", error " << r.max_error);
    CHECK(r.max_error < kFdBound);
}

// Float vs double: rel_diff(float, double) < kFloatBound, the largest kept per part.
template <typename A, typename B>
void require_float(const std::string& part, const std::string& what, const A& f, const B& d) {
    fd::Result r;
    r.max_error = rel_diff(f, d);
    r.checked = d.size();
    fd::registry().record("float " + part, r);
    INFO(part << ": " << what << ": max |float - double| / max |double| = " << r.max_error);
    CHECK(r.max_error < kFloatBound);
}

template <typename S>
std::vector<MatrixXd> gradients_of(const std::vector<Parameter<S>>& ps) {
    std::vector<MatrixXd> out;
    for (const auto& p : ps) out.push_back(p.gradient().template cast<double>());
    return out;
}

template <typename S>
std::vector<std::string> names_of(const std::vector<Parameter<S>>& ps) {
    std::vector<std::string> out;
    for (const auto& p : ps) out.push_back(p.name);
    return out;
}

// dst.values ← src.values (cast), after checking names and shapes.
template <typename S>
void copy_values(const std::vector<Parameter<S>>& dst, const std::vector<Parameter<double>>& src) {
    REQUIRE(dst.size() == src.size());
    for (std::size_t i = 0; i < dst.size(); ++i) {
        REQUIRE(dst[i].name == src[i].name);
        REQUIRE(dst[i].rows == src[i].rows);
        REQUIRE(dst[i].cols == src[i].cols);
        dst[i].values() = src[i].values().template cast<S>();
    }
}

void require_same(const std::vector<MatrixXd>& a, const std::vector<MatrixXd>& b) {
    REQUIRE(a.size() == b.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
        INFO("block " << i);
        REQUIRE(a[i].rows() == b[i].rows());
        REQUIRE(a[i].cols() == b[i].cols());
        CHECK(a[i] == b[i]);
    }
}

// FD check of every parameter block. views(m) returns the Parameter views of module m,
// loss(m) runs the forward pass on m (a fresh copy of `state` with one entry shifted).
template <typename Module, typename Views, typename Loss>
void check_parameters(const std::string& part, const Module& state, Views views, Loss loss,
                      const std::vector<MatrixXd>& analytic, double h0, std::uint64_t seed,
                      Index max_entries = kMaxEntries) {
    Module probe = state;
    const auto ps = views(probe);
    REQUIRE(ps.size() == analytic.size());
    for (std::size_t b = 0; b < ps.size(); ++b) {
        REQUIRE(analytic[b].rows() == ps[b].rows);
        REQUIRE(analytic[b].cols() == ps[b].cols);
        auto f = [&](Index e, double d) {
            Module m = state;
            const auto v = views(m);
            v[b].value[e] += d;
            return loss(m);
        };
        const auto r = fd::check(analytic[b], f, fd::pick(ps[b].size(), max_entries, seed + b), h0);
        require_fd(part, ps[b].name, r);
    }
}

// FD check of the gradient w.r.t. an input matrix x: loss(x') with x' a shifted copy.
template <typename Loss>
void check_input(const std::string& part, const std::string& name, const MatrixXd& x,
                 const MatrixXd& analytic, Loss loss, double h0, std::uint64_t seed,
                 Index max_entries = 4 * kMaxEntries) {
    REQUIRE(analytic.rows() == x.rows());
    REQUIRE(analytic.cols() == x.cols());
    auto f = [&](Index e, double d) {
        MatrixXd xp = x;
        xp(e) += d;
        return loss(xp);
    };
    require_fd(part, name, fd::check(analytic, f, fd::pick(x.size(), max_entries, seed), h0));
}

// softplus⁻¹(y) = ln(eʸ − 1).
double inverse_softplus(double y) { return std::log(std::expm1(y)); }

// ---------------------------------------------------------------------------------------------
// (a) GaussianBasis::expect_psi_backward
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// (b) ContinuousAttention::backward
// ---------------------------------------------------------------------------------------------

// A query placed so that its density has a given σ² (0: inside the clamp, softplus(w_σ·s) =
// 0.3 σ²_min) and μ in every head.
struct Placed {
    Index row;
    double sigma_sq, mu;
};

// Sets row `row` of Q so that in every head w_σ·s = a_sigma and, if d_h ≥ 2, w_μ·s = a_mu
// (s = K_h q_h/√d_h), plus a random part that changes neither.
void place_query(const MatrixXd& keys, const VectorXd& w_mu, const VectorXd& w_sigma, Index heads,
                 MatrixXd& Q, const Placed& p, double sigma_sq_min, Rng& rng) {
    const Index dh = keys.cols() / heads;
    const double a_sigma = inverse_softplus(p.sigma_sq > 0 ? p.sigma_sq : 0.3 * sigma_sq_min);
    const double a_mu = std::log(p.mu / (1 - p.mu));
    for (Index h = 0; h < heads; ++h) {
        const Index rows = std::min<Index>(dh, 2);
        MatrixXd A(rows, dh);
        const MatrixXd Kh = keys.middleCols(h * dh, dh) / std::sqrt(static_cast<double>(dh));
        A.row(0) = (Kh.transpose() * w_sigma).transpose();
        VectorXd b(rows);
        b[0] = a_sigma;
        if (rows == 2) {
            A.row(1) = (Kh.transpose() * w_mu).transpose();
            b[1] = a_mu;
        }
        const MatrixXd AAt = A * A.transpose();
        VectorXd q = A.transpose() * AAt.ldlt().solve(b);
        VectorXd z = 0.3 * rng.matrix(dh, 1);
        z -= A.transpose() * AAt.ldlt().solve(A * z);
        Q.row(p.row).segment(h * dh, dh) = (q + z).transpose();
    }
}

// Checks that the placed queries got their densities.
template <typename Trace>
void check_placed(const Trace& t, const std::vector<Placed>& placed, Index heads, Index nq,
                  double sigma_sq_min) {
    for (const auto& p : placed)
        for (Index h = 0; h < heads; ++h) {
            const Index row = h * nq + p.row;
            INFO("placed query " << p.row << ", head " << h);
            if (p.sigma_sq > 0) {
                CHECK(std::abs(t.sigma_sq[row] - p.sigma_sq) <= 1e-6 * p.sigma_sq);
                if (t.queries.cols() >= 2 * heads) CHECK(std::abs(t.mu[row] - p.mu) <= 1e-6);
            } else {
                CHECK(t.sigma_sq[row] == sigma_sq_min);
                CHECK(t.a_sigma[row] < inverse_softplus(0.5 * sigma_sq_min));
            }
        }
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
    Rng rng(c.seed + 1000);
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

std::vector<Parameter<double>> attention_views(ContinuousAttentiond& att) {
    std::vector<Parameter<double>> ps;
    att.append_parameters(ps);
    return ps;
}

const std::vector<AttCase>& attention_cases() {
    const std::vector<double> lm{0.005, 0.01}, sorting{0.01, 0.05};
    static const std::vector<AttCase> cases = {
        // heads, dim, d_model, N, widths, σ²_min, μ term, KL weight, Q, sharp,
        // placed queries {row, σ² (0: clamped), μ}, seed
        {1, 4, 5, 8, sorting, 1e-6, false, 0.0, 3, false, {{1, 0, 0.4}}, 1},
        {2, 6, 0, 10, lm, 1e-4, true, 0.1, 4, true, {{0, 2e-3, .3}, {2, 0, .6}, {3, 5e-4, .52}}, 2},
        {3, 6, 4, 12, lm, 1e-4, true, 0.05, 2, true, {{0, 0, 0.2}, {1, 3e-3, 0.8}}, 33},
        {3, 9, 7, 8, sorting, 1e-6, false, 0.2, 3, false, {{2, 1e-3, 0.45}}, 4},
        {2, 4, 3, 8, sorting, 1e-6, true, 0.0, 3, true, {}, 5},
        {1, 3, 2, 6, {0.02, 0.05}, 1e-2, false, 0.3, 2, true, {{1, 0, 0.5}}, 6},
        {4, 4, 2, 8, lm, 1e-4, true, 0.1, 2, false, {{0, 0, 0.5}, {1, 1e-3, 0.5}}, 7},
    };
    return cases;
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

// ---------------------------------------------------------------------------------------------
// (c) MemoryGate::backward
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// (d) LongTermMemory::backward
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// (e) LongTermAttention::backward
// ---------------------------------------------------------------------------------------------

LongTermParams lm_small(Index n, Index m, std::uint64_t seed) {
    LongTermParams p = LongTermParams::lm();
    p.num_basis = n;
    p.num_samples = m;
    p.num_bins = 16;
    p.seed = seed;
    return p;
}

struct LtaCase {
    std::string name;
    LongTermParams params;
    Index dim, heads, length, q, d_model;
    int chunk;  // chunk differentiated; chunks 0 … chunk−1 are streamed first
    double kl;
    bool sharp;  // W_K ×30 (the lm memory's coefficients are ~0.02), w_μ ×3, w_σ ×6
    std::vector<Placed> placed;
};

const std::vector<LtaCase>& lta_cases() {
    static const std::vector<LtaCase> cases = [] {
        std::vector<LtaCase> v;
        // shape: dim, heads, L, Q, d_model (0: dim)
        auto add = [&v](std::string name, const LongTermParams& p, std::array<Index, 5> shape,
                        int chunk, double kl, bool sharp, std::vector<Placed> placed) {
            v.push_back({std::move(name), p, shape[0], shape[1], shape[2], shape[3], shape[4],
                         chunk, kl, sharp, std::move(placed)});
        };
        add("lm, gate, sticky, chunk 3", lm_small(8, 4, 5), {6, 2, 4, 3, 0}, 3, 0.1, true,
            {{0, 2e-3, 0.7}, {1, 0, 0.4}});
        add("lm, gate, sticky, chunk 4, H = 3, odd L", lm_small(8, 5, 6), {6, 3, 3, 2, 0}, 4, 0.05,
            false, {{1, 1e-3, 0.55}});
        add("lm, gate, first chunk", lm_small(8, 4, 7), {4, 2, 4, 3, 0}, 0, 0.2, true,
            {{2, 5e-3, 0.3}});
        LongTermParams reset = lm_small(8, 4, 9);
        reset.reset_after_tokens = 8;  // chunk 2 finds 8 tokens stored: a first-chunk refit
        add("lm, reset_after_tokens, chunk 2 refits from empty", reset, {6, 2, 4, 3, 0}, 2, 0.05,
            true, {{1, 3e-3, 0.5}});
        LongTermParams sorting;
        sorting.num_basis = 8;
        sorting.num_samples = 4;
        sorting.seed = 8;
        add("sorting, no gate, uniform, d_model 5", sorting, {4, 2, 4, 3, 5}, 2, 0.0, true,
            {{0, 1e-3, 0.6}, {2, 0, 0.5}});
        return v;
    }();
    return cases;
}

struct LtaSetup {
    LongTermAttentiond state;  // after chunks 0 … chunk−1
    MatrixXd X, Q, dout;
    std::vector<MatrixXd> past_x, past_q;
};

LtaSetup lta_setup(const LtaCase& c) {
    Rng rng(c.params.seed + 500);
    LongTermAttentiond lta(c.dim, c.heads, c.length, c.params, c.d_model);
    if (c.sharp) {
        const auto ps = lta.parameters();
        ps[0].values() *= 30.0;  // proj_key.weight
        ps[3].values() *= 3.0;   // mu.weight
        ps[4].values() *= 6.0;   // sigma.weight
    }
    LtaSetup s{lta, MatrixXd(), MatrixXd(), MatrixXd(), {}, {}};
    for (int k = 0; k < c.chunk; ++k) {
        s.past_x.push_back(rng.matrix(c.length, c.dim, 1.5));
        s.past_q.push_back(rng.matrix(c.q, c.dim, 1.5));
        s.state.forward(s.past_x.back(), s.past_q.back());
    }
    s.X = rng.matrix(c.length, c.dim, 1.5);
    s.Q = rng.matrix(c.q, c.dim, 1.5);
    s.dout = rng.matrix(c.q, s.state.d_model());
    // The queries do not change the memory: place them against the keys of the memory that
    // this chunk's update will give.
    LongTermAttentiond probe = s.state;
    probe.forward(s.X, s.Q);
    const auto& w = probe.attention().weights();
    for (const auto& p : c.placed)
        place_query(probe.attention().keys(probe.memory().coefficients()), w.mu, w.sigma, c.heads,
                    s.Q, p, c.params.sigma_sq_min, rng);
    return s;
}

double lta_loss(LongTermAttentiond& m, const MatrixXd& X, const MatrixXd& Q, const MatrixXd& dout,
                double kl) {
    const MatrixXd out = m.forward(X, Q);
    return out.cwiseProduct(dout).sum() + kl * m.last_attention().kl_reg.sum();
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
        require_float("long-term attention", "dqueries", dqf, dq);
        require_float("long-term attention", "dX", dXf, dX);
        const auto gd = gradients_of(lta.parameters());
        const auto gf = gradients_of(ltf.parameters());
        const auto names = names_of(lta.parameters());
        REQUIRE(gf.size() == gd.size());
        for (std::size_t b = 0; b < gd.size(); ++b)
            require_float("long-term attention", names[b], gf[b], gd[b]);
    }
}

// ---------------------------------------------------------------------------------------------
// (f) InfinityFormerLayer::backward
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// 2. Accumulation, zero_grad, streams
// ---------------------------------------------------------------------------------------------

void require_sum(const std::vector<MatrixXd>& acc, const std::vector<MatrixXd>& a,
                 const std::vector<MatrixXd>& b) {
    REQUIRE(acc.size() == a.size());
    REQUIRE(acc.size() == b.size());
    for (std::size_t i = 0; i < acc.size(); ++i) {
        INFO("block " << i);
        const MatrixXd sum = a[i] + b[i];
        const double scale = std::max(1e-300, sum.cwiseAbs().maxCoeff());
        CHECK((acc[i] - sum).cwiseAbs().maxCoeff() <= 1e-12 * scale);
        // Both parts contribute (otherwise the check would not see a missing one).
        CHECK(a[i].cwiseAbs().maxCoeff() > 0.0);
        CHECK(b[i].cwiseAbs().maxCoeff() > 0.0);
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
    // Stream i's sticky generator is seeded with params.seed + i: a single-stream layer
    // with the same weights and its generator re-seeded so replays stream 1.
    InfinityFormerLayerd alone_a(6, 2, 4, p), alone_b(6, 2, 4, p);
    alone_b.long_term().memory().seed(p.seed + 1);
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
        CHECK(yb == alone_b.forward(xb[i]));
    }
    // Sticky sampling was used, so the seeds mattered.
    CHECK(two.long_term().memory(1).last_sample_points() ==
          alone_b.long_term().memory().last_sample_points());
    two.backward(dya, 0.1, dX1, 0);
    two.backward(dyb, 0.1, dX2, 1);
    alone_a.backward(dya, 0.1, dXa);
    alone_b.backward(dyb, 0.1, dXb);
    CHECK(dX1 == dXa);
    CHECK(dX2 == dXb);
    require_sum(gradients_of(two.parameters()), gradients_of(alone_a.parameters()),
                gradients_of(alone_b.parameters()));
    REQUIRE_THROWS_AS(two.set_num_streams(0), infinityformer::invalid_argument);
    REQUIRE_THROWS_WITH(two.forward(xa[0], 2), Contains("stream"));
}

// ---------------------------------------------------------------------------------------------
// 3. Named parameters
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// 4. Adam
// ---------------------------------------------------------------------------------------------

struct Owned {  // a parameter block owned by the test
    std::string name;
    MatrixXd value, grad;
    Parameter<double> view() {
        Parameter<double> p;
        p.name = name;
        p.value = value.data();
        p.grad = grad.data();
        p.rows = value.rows();
        p.cols = value.cols();
        return p;
    }
};

std::vector<Owned> owned_blocks(Rng& rng) {
    return {{"a", rng.matrix(3, 2), rng.matrix(3, 2)}, {"b", rng.matrix(4, 1), rng.matrix(4, 1)}};
}

std::vector<Parameter<double>> views_of(std::vector<Owned>& blocks) {
    std::vector<Parameter<double>> out;
    for (auto& b : blocks) out.push_back(b.view());
    return out;
}

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

// ---------------------------------------------------------------------------------------------
// 5. Bad input
// ---------------------------------------------------------------------------------------------

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

// Runs `bad` (which must throw invalid_argument naming `name`) and checks that the gradients
// seen through `views` did not change.
template <typename Views, typename Bad>
void require_rejected(const char* name, Views views, Bad bad) {
    const auto before = gradients_of(views());
    INFO("argument " << name);
    CHECK_THROWS_AS(bad(), infinityformer::invalid_argument);
    CHECK_THROWS_WITH(bad(), Contains(name));
    require_same(gradients_of(views()), before);
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

// ---------------------------------------------------------------------------------------------
// 6. A seeded training run
// ---------------------------------------------------------------------------------------------

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
