// Helpers shared by the Catch2 test files (Eigen and Catch only, no library header): the one
// seeded, portable normal generator; the comparisons max_abs and rel_diff; the matchers and
// macros of the bad-input tests; direct loop implementations and inputs that more than one
// part's tests use.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace testutil {

constexpr double kPi = 3.14159265358979323846264338327950288;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

/// Standard normals from std::mt19937_64 (Box–Muller; the same numbers everywhere).
struct Normal {
    std::mt19937_64 engine;
    explicit Normal(std::uint64_t seed) : engine(seed) {}
    double uniform() { return static_cast<double>(engine() >> 11) * 0x1.0p-53; }
    double uniform(double a, double b) { return a + (b - a) * uniform(); }
    double operator()() {
        const double u1 = 1.0 - uniform();
        const double u2 = uniform();
        return std::sqrt(-2.0 * std::log(u1)) * std::cos(2 * kPi * u2);
    }
    Eigen::MatrixXd matrix(Eigen::Index r, Eigen::Index c, double scale = 1.0) {
        Eigen::MatrixXd m(r, c);
        for (Eigen::Index i = 0; i < m.size(); ++i) m(i) = scale * (*this)();
        return m;
    }
};

/// Largest absolute entry (0 for an empty matrix).
inline double max_abs(const Eigen::MatrixXd& m) {
    return m.size() == 0 ? 0.0 : m.cwiseAbs().maxCoeff();
}

/// max |a − b| / max |b| in double (0 if both are zero or empty, inf if only b is zero).
template <typename A, typename B>
double rel_diff(const A& a, const B& b) {
    const Eigen::MatrixXd ad = a.template cast<double>();
    const Eigen::MatrixXd bd = b.template cast<double>();
    if (ad.size() == 0 && bd.size() == 0) return 0.0;
    const double num = (ad - bd).cwiseAbs().maxCoeff();
    const double den = bd.cwiseAbs().maxCoeff();
    if (den == 0.0) return num == 0.0 ? 0.0 : std::numeric_limits<double>::infinity();
    return num / den;
}

/// Number of subnormal entries (neither 0 nor a normal number).
template <typename Derived>
Eigen::Index subnormals(const Eigen::DenseBase<Derived>& m) {
    Eigen::Index n = 0;
    for (Eigen::Index j = 0; j < m.cols(); ++j)
        for (Eigen::Index i = 0; i < m.rows(); ++i)
            n += std::fpclassify(m(i, j)) == FP_SUBNORMAL ? 1 : 0;
    return n;
}

/// Tolerance of a forward pass against a direct loop implementation (in double, on the same
/// inputs), relative to the largest reference value.
template <typename S>
constexpr double loop_tolerance() {
    return std::is_same_v<S, double> ? 1e-12 : 2e-5;  // float: measured ≤ 1.6e-6
}

/// Finite rows x (rows × cols) with x W^T overflowing: x_j = DBL_MAX sign(W[r, j]) for the
/// row r of W with the largest Σ_j |W[r, j]|, which must exceed 1 (checked).
inline Eigen::MatrixXd overflowing_input(const Eigen::MatrixXd& W, Eigen::Index rows) {
    Eigen::Index r = 0;
    const double sum = W.cwiseAbs().rowwise().sum().maxCoeff(&r);
    if (!(sum > 1.0)) throw std::logic_error("overflowing_input: every row of W sums below 1");
    Eigen::MatrixXd x(rows, W.cols());
    const double big = std::numeric_limits<double>::max();
    for (Eigen::Index j = 0; j < W.cols(); ++j) x.col(j).setConstant(W(r, j) > 0 ? big : -big);
    return x;
}

/// A copy of m with entry (i, j) (or i) set to v.
inline Eigen::MatrixXd with(Eigen::MatrixXd m, Eigen::Index i, Eigen::Index j, double v) {
    m(i, j) = v;
    return m;
}
inline Eigen::VectorXd with(Eigen::VectorXd m, Eigen::Index i, double v) {
    m[i] = v;
    return m;
}

/// The message of an infinityformer::invalid_argument must contain the library prefix, the
/// place, and every fragment given (argument name and received value).
inline Catch::Matchers::StdString::ContainsMatcher has(const std::string& s) {
    return Catch::Contains(s);
}

/// The uniform points i/M, i = 1…M.
inline Eigen::VectorXd uniform_points(Eigen::Index m) {
    Eigen::VectorXd s(m);
    for (Eigen::Index i = 0; i < m; ++i) s[i] = static_cast<double>(i + 1) / static_cast<double>(m);
    return s;
}

/// Plain causal multi-head attention, written with loops: token i of the current chunk sees
/// every row of `past` and rows 0…i of `x`. y = context W_Oᵀ. `w` holds query, key, value and
/// out (d × d, y = W x), e.g. ShortTermAttention<double>::Weights.
template <typename Weights>
Eigen::MatrixXd causal_attention(const Eigen::MatrixXd& past, const Eigen::MatrixXd& x,
                                 const Weights& w, Eigen::Index heads) {
    using Eigen::Index;
    using Eigen::MatrixXd;
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

/// Random continuous-attention weights of a useful size (e.g.
/// ContinuousAttention<S>::Weights): μ spread over (0, 1), σ² from the clamp to ~1.
template <typename Weights>
Weights random_attention_weights(Eigen::Index e, Eigen::Index dm, Eigen::Index n, Normal& rng) {
    using S = typename decltype(Weights::mu)::Scalar;
    Weights w;
    const double se = 1.0 / std::sqrt(static_cast<double>(e));
    w.proj_key = rng.matrix(e, e, se).cast<S>();
    w.proj_value = rng.matrix(e, e, se).cast<S>();
    w.attn_out = rng.matrix(dm, e, se).cast<S>();
    w.mu = rng.matrix(n, 1, 1.0).cast<S>();
    w.sigma = rng.matrix(n, 1, 0.5).cast<S>();
    return w;
}

/// Random short-term attention weights (e.g. ShortTermAttention<S>::Weights: query, key,
/// value, out, d × d), entries N(0, 1/d).
template <typename Weights>
Weights random_short_term_weights(Eigen::Index d, Normal& rng) {
    const double sd = 1.0 / std::sqrt(static_cast<double>(d));
    return {rng.matrix(d, d, sd), rng.matrix(d, d, sd), rng.matrix(d, d, sd), rng.matrix(d, d, sd)};
}

}  // namespace testutil

// Checks type and message; `expr` is evaluated twice (once per macro), which the state
// checks after each group cover as well.
#define REQUIRE_INVALID(expr, matcher)                                            \
    do {                                                                          \
        REQUIRE_THROWS_AS(expr, infinityformer::invalid_argument);                \
        REQUIRE_THROWS_WITH(expr, testutil::has("[infinityformer] ") && matcher); \
    } while (false)

#define REQUIRE_LOGIC(expr, matcher)                                              \
    do {                                                                          \
        REQUIRE_THROWS_AS(expr, infinityformer::logic_error);                     \
        REQUIRE_THROWS_WITH(expr, testutil::has("[infinityformer] ") && matcher); \
    } while (false)
