// Helpers shared by the parts' gradient, float and twin tests: finite-difference checks of
// parameters and inputs through Parameter views (test_fd.hpp), float-vs-double checks,
// gradient bookkeeping, queries placed at a chosen density, and the small settings that
// several parts' tests use. Set-ups used by one part only live in that part's test file.
#pragma once
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <infinityformer/errors.hpp>
#include <infinityformer/hyperparams.hpp>
#include <infinityformer/parameter_view.hpp>
#include <string>
#include <vector>

#include "test_fd.hpp"
#include "test_util.hpp"

namespace part_util {

using namespace infinityformer;
using namespace testutil;
using Catch::Matchers::Contains;
using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;

constexpr double kFdBound = 1e-6;     // FD error bound (double)
constexpr double kFloatBound = 1e-3;  // float vs double, relative to the block's max |value|
constexpr Index kMaxEntries = 14;     // entries differentiated per block (random subset)
constexpr double kH0 = 0.1;           // first FD step (Ridders), also tried /10, /100, /1000

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

// The Parameter views of a module that lists them with append_parameters(out).
template <typename Module>
std::vector<Parameter<typename Module::Scalar>> parameter_views(Module& m) {
    std::vector<Parameter<typename Module::Scalar>> ps;
    m.append_parameters(ps);
    return ps;
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

// acc = a + b block by block (to 1e-12 relative), and both parts contribute.
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

// Float vs double compares arithmetic, not the conditioning of a case: both sides get the
// same inputs, every value rounded to float first (a double computation on unrounded
// inputs can differ from one on rounded inputs by far more than float arithmetic adds,
// e.g. a query placed at μ = 1/2 by cancellation).
inline MatrixXd float_rounded(const MatrixXd& m) { return m.cast<float>().cast<double>(); }

template <typename S>
void round_values_to_float(const std::vector<Parameter<S>>& ps) {
    for (const auto& p : ps) p.values() = p.values().template cast<float>().template cast<S>();
}

// ---------------------------------------------------------------------------------------------
// Queries placed at a chosen density (continuous and long-term attention)
// ---------------------------------------------------------------------------------------------

// softplus⁻¹(y) = ln(eʸ − 1).
inline double inverse_softplus(double y) { return std::log(std::expm1(y)); }

// A query placed so that its density has a given σ² (0: inside the clamp, softplus(w_σ·s) =
// 0.3 σ²_min) and μ in every head.
struct Placed {
    Index row;
    double sigma_sq, mu;
};

// Sets row `row` of Q so that in every head w_σ·s = a_sigma and, if d_h ≥ 2, w_μ·s = a_mu
// (s = K_h q_h/√d_h), plus a random part that changes neither.
inline void place_query(const MatrixXd& keys, const VectorXd& w_mu, const VectorXd& w_sigma,
                        Index heads, MatrixXd& Q, const Placed& p, double sigma_sq_min,
                        Normal& rng) {
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

// ---------------------------------------------------------------------------------------------
// Settings shared by several parts' tests
// ---------------------------------------------------------------------------------------------

// The lm preset, small (gradient tests, bad backward calls).
inline LongTermParams lm_small(Index n, Index m, std::uint64_t seed) {
    LongTermParams p = LongTermParams::lm();
    p.num_basis = n;
    p.num_samples = m;
    p.num_bins = 16;
    p.seed = seed;
    p.stability = Stability::allow;  // short streams of an under-resolved basis
    return p;
}

// A small memory (memory and sampling tests): N = 16, M = 8, D = 16.
inline LongTermParams small_params(Sampling sampling = Sampling::uniform) {
    LongTermParams p;
    p.num_basis = 16;
    p.num_samples = 8;
    p.num_bins = 16;
    p.sampling = sampling;
    p.stability = Stability::allow;  // N = 16 with the paper's widths: ρ(A) = 1.15
    return p;
}

// The twin tests' settings: a preset with N = 16, M = 8, D = 6 < M (the sticky update reads
// the memory at the bin edges), seed 3.
inline LongTermParams twin_params(bool lm) {
    LongTermParams p = lm ? LongTermParams::lm() : LongTermParams::sorting();
    p.num_basis = 16;
    p.num_samples = 8;
    p.num_bins = 6;  // D < M: the sticky update reads the memory at the bin edges
    p.seed = 3;
    p.stability = Stability::allow;  // N = 16 with the paper's widths: ρ(A) = 1.15
    return p;
}

// The largest relative difference between the gradients of two modules' parameters() (the
// same kind of module: the same names in the same order).
template <typename Module>
double max_rel_grad_diff(Module& a, Module& b) {
    const auto pa = a.parameters(), pb = b.parameters();
    double worst = 0;
    for (std::size_t k = 0; k < pa.size(); ++k)
        worst = std::max(worst, rel_diff(pa[k].gradient(), pb[k].gradient()));
    return worst;
}

}  // namespace part_util
