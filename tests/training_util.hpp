// Helpers shared by the training tests (test_training*.cpp): generators, finite-difference
// checks of parameters and inputs, and the set-ups of every part's test cases.
#pragma once
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

namespace training_util {

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

inline void require_fd(const std::string& part, const std::string& what, const fd::Result& r) {
    fd::registry().record(part, r);
    INFO(part << ": " << what << ": worst entry " << r.worst << " of " << r.checked
              << " checked, analytic " << r.analytic << ", fd " << r.numeric << ", scale "
              << r.scale << ", error " << r.max_error);
    CHECK(r.max_error < kFdBound);
}

// Float vs double: rel_diff(float, double) < kFloatBound, the largest kept per part.
// `drift` (default 0): how much the double result itself moves when computed from the float
// run's memory instead of its own (the memory's float rounding, amplified by the case's
// conditioning); float may differ from double by 10 times that, if it exceeds kFloatBound.
template <typename A, typename B>
void require_float(const std::string& part, const std::string& what, const A& f, const B& d,
                   double drift = 0.0) {
    fd::Result r;
    r.max_error = rel_diff(f, d);
    r.checked = d.size();
    fd::registry().record("float " + part, r);
    const double bound = std::max(kFloatBound, 10.0 * drift);
    INFO(part << ": " << what << ": max |float - double| / max |double| = " << r.max_error
              << " (bound " << bound << ", drift of the double result " << drift << ")");
    CHECK(r.max_error < bound);
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

inline void require_same(const std::vector<MatrixXd>& a, const std::vector<MatrixXd>& b) {
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
inline double inverse_softplus(double y) { return std::log(std::expm1(y)); }

// ---------------------------------------------------------------------------------------------
// (a) GaussianBasis::expect_psi_backward
// ---------------------------------------------------------------------------------------------

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
inline void place_query(const MatrixXd& keys, const VectorXd& w_mu, const VectorXd& w_sigma,
                        Index heads, MatrixXd& Q, const Placed& p, double sigma_sq_min, Rng& rng) {
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

inline LongTermParams attention_params(const AttCase& c) {
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
inline AttSetup attention_setup(const AttCase& c) {
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

inline double attention_loss(ContinuousAttentiond& att, const MatrixXd& B, const MatrixXd& Q,
                             const MatrixXd& dout, double kl) {
    const MatrixXd out = att.forward(B, Q);
    return out.cwiseProduct(dout).sum() + kl * att.last().kl_reg.sum();
}

inline std::vector<Parameter<double>> attention_views(ContinuousAttentiond& att) {
    std::vector<Parameter<double>> ps;
    att.append_parameters(ps);
    return ps;
}

inline const std::vector<AttCase>& attention_cases() {
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

// ---------------------------------------------------------------------------------------------
// (c) MemoryGate::backward
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// (d) LongTermMemory::backward
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// (e) LongTermAttention::backward
// ---------------------------------------------------------------------------------------------

inline LongTermParams lm_small(Index n, Index m, std::uint64_t seed) {
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

inline const std::vector<LtaCase>& lta_cases() {
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
            {{0, 1e-3, 0.6}, {2, 0, 0.45}});  // not 0.5: see attention_cases()
        return v;
    }();
    return cases;
}

struct LtaSetup {
    LongTermAttentiond state;  // after chunks 0 … chunk−1
    MatrixXd X, Q, dout;
    std::vector<MatrixXd> past_x, past_q;
};

inline LtaSetup lta_setup(const LtaCase& c) {
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

// Float vs double compares arithmetic, not the conditioning of a case: both sides get the
// same inputs, every value rounded to float first (a double computation on unrounded
// inputs can differ from one on rounded inputs by far more than float arithmetic adds,
// e.g. a query placed at μ = 1/2 by cancellation).
inline MatrixXd float_rounded(const MatrixXd& m) { return m.cast<float>().cast<double>(); }

template <typename S>
void round_values_to_float(const std::vector<Parameter<S>>& ps) {
    for (const auto& p : ps) p.values() = p.values().template cast<float>().template cast<S>();
}

inline void round_to_float(AttSetup& s) {
    std::vector<Parameter<double>> ps;
    s.att.append_parameters(ps);
    round_values_to_float(ps);
    s.B = float_rounded(s.B);
    s.Q = float_rounded(s.Q);
    s.dout = float_rounded(s.dout);
}

// Rebuilds the state from the rounded weights and the rounded past chunks.
inline void round_to_float(LtaSetup& s, const LtaCase& c) {
    LongTermAttentiond lta(c.dim, c.heads, c.length, c.params, c.d_model);
    copy_values(lta.parameters(), s.state.parameters());
    round_values_to_float(lta.parameters());
    for (std::size_t k = 0; k < s.past_x.size(); ++k) {
        s.past_x[k] = float_rounded(s.past_x[k]);
        s.past_q[k] = float_rounded(s.past_q[k]);
        lta.forward(s.past_x[k], s.past_q[k]);
    }
    s.state = lta;
    s.X = float_rounded(s.X);
    s.Q = float_rounded(s.Q);
    s.dout = float_rounded(s.dout);
}

inline double lta_loss(LongTermAttentiond& m, const MatrixXd& X, const MatrixXd& Q,
                       const MatrixXd& dout, double kl) {
    const MatrixXd out = m.forward(X, Q);
    return out.cwiseProduct(dout).sum() + kl * m.last_attention().kl_reg.sum();
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

inline const std::vector<LayerCase>& layer_cases() {
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

inline void sharpen_layer(InfinityFormerLayerd& layer) {
    for (auto& p : layer.parameters()) {
        if (p.name == "long_term.proj_key.weight") p.values() *= 10.0;
        if (p.name == "long_term.mu.weight") p.values() *= 3.0;
        if (p.name == "long_term.sigma.weight") p.values() *= 6.0;
    }
}

inline double layer_loss(InfinityFormerLayerd& m, const MatrixXd& X, const MatrixXd& dY,
                         double kl) {
    const MatrixXd Y = m.forward(X);
    double l = Y.cwiseProduct(dY).sum();
    if (m.long_term().memory().tokens_stored() > 0)
        l += kl * m.long_term().last_attention().kl_reg.sum();
    return l;
}

// ---------------------------------------------------------------------------------------------
// 2. Accumulation, zero_grad, streams
// ---------------------------------------------------------------------------------------------

inline void require_sum(const std::vector<MatrixXd>& acc, const std::vector<MatrixXd>& a,
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

// ---------------------------------------------------------------------------------------------
// 3. Named parameters
// ---------------------------------------------------------------------------------------------

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

inline std::vector<Owned> owned_blocks(Rng& rng) {
    return {{"a", rng.matrix(3, 2), rng.matrix(3, 2)}, {"b", rng.matrix(4, 1), rng.matrix(4, 1)}};
}

inline std::vector<Parameter<double>> views_of(std::vector<Owned>& blocks) {
    std::vector<Parameter<double>> out;
    for (auto& b : blocks) out.push_back(b.view());
    return out;
}

// ---------------------------------------------------------------------------------------------
// 5. Bad input
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// 6. A seeded training run
// ---------------------------------------------------------------------------------------------

}  // namespace training_util
