/// @file detail/math.hpp
/// @brief Scalar functions used by several parts, written once: sigmoid, softplus, the
/// Gaussian density and the reference's linspace.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>

namespace infinityformer::detail {

/// 1/√(2π).
constexpr double kInvSqrt2Pi = 0.39894228040143267793994605993438;

template <typename Scalar>
Scalar sigmoid(Scalar x) {
    using std::exp;
    return Scalar(1) / (Scalar(1) + exp(-x));
}

/// softplus(x) = ln(1 + eˣ), linear above 20 (the reference's threshold).
template <typename Scalar>
Scalar softplus(Scalar x) {
    using std::exp;
    using std::log1p;
    return x > Scalar(20) ? x : log1p(exp(x));
}

/// d softplus / dx = sigmoid(x), 1 above the linear threshold.
template <typename Scalar>
Scalar softplus_derivative(Scalar x) {
    return x > Scalar(20) ? Scalar(1) : sigmoid(x);
}

/// N(x; c, v) = exp(−(x − c)²/(2v)) / √(2πv), for a variance v > 0; exactly 0 where it
/// is below the smallest normal number of the Scalar (never a subnormal).
template <typename Scalar>
Scalar gaussian_density(Scalar x, Scalar c, Scalar v) {
    using std::exp;
    using std::log;
    using std::sqrt;
    static const Scalar log_min = log(std::numeric_limits<Scalar>::min());
    const Scalar d = x - c;
    const Scalar arg = Scalar(-0.5) * (d / v) * d;
    if (arg < log_min) return Scalar(0);
    const Scalar out = Scalar(kInvSqrt2Pi) / sqrt(v) * exp(arg);
    return out < std::numeric_limits<Scalar>::min() ? Scalar(0) : out;
}

/// True if every entry is finite: x·0 is 0 for a finite x and NaN otherwise, and the sum
/// of those is one vectorised reduction (Eigen's allFinite() compares entry by entry).
template <typename Derived>
bool all_finite(const Eigen::DenseBase<Derived>& m) {
    using Scalar = typename Derived::Scalar;
    return m.size() == 0 || (m.derived().array() * Scalar(0)).sum() == Scalar(0);
}

/// True if `accumulated` + `contribution` is finite entry by entry (one vectorised pass
/// over both, nothing stored): the check before a backward pass adds its gradients. An
/// empty `accumulated` (gradients not yet sized) counts as zeros.
template <typename A, typename B>
bool sum_finite(const Eigen::DenseBase<A>& accumulated, const Eigen::DenseBase<B>& contribution) {
    if (accumulated.size() == 0) return all_finite(contribution);
    return all_finite(accumulated.derived() + contribution.derived());
}

/// Sets to exactly 0 the n values at `p` (stride `stride`) whose magnitude is below
/// `threshold`. A plain loop that compilers turn into vector selects.
template <typename Scalar>
void zero_below(Scalar* p, Eigen::Index n, Scalar threshold, Eigen::Index stride = 1) {
    for (Eigen::Index i = 0; i < n; ++i) {
        Scalar& x = p[i * stride];
        x = std::abs(x) < threshold ? Scalar(0) : x;
    }
}

/// No subnormal numbers (docs/design.md, "Subnormal numbers"): sets to exactly 0 every entry
/// of an operator that cannot change a product with it at the Scalar's precision. An entry
/// is dropped if its magnitude is below the smallest normal number, or below ε/n times the
/// largest magnitude of its row (n = columns: the operator multiplies from the left,
/// y = M x) and, with `transposed_too` (it also multiplies transposed, y = Mᵀ x), also below
/// ε/n times the largest of its column (n = rows). What is dropped from one result is then
/// below ε times its largest term: under one rounding. `row_t` and `col_t` are workspace
/// (column vectors; no allocation once they have the sizes).
template <typename Derived, typename Work>
void drop_negligible(Eigen::MatrixBase<Derived>& m, bool transposed_too, Work& row_t, Work& col_t) {
    using Scalar = typename Derived::Scalar;
    const Eigen::Index rows = m.rows(), cols = m.cols();
    if (rows == 0 || cols == 0) return;
    const Scalar eps = std::numeric_limits<Scalar>::epsilon();
    const Scalar tiny = std::numeric_limits<Scalar>::min();
    row_t.resize(rows);
    row_t.noalias() = m.cwiseAbs().rowwise().maxCoeff() * (eps / static_cast<Scalar>(cols));
    if (transposed_too) {
        col_t.resize(cols);
        col_t.noalias() =
            m.cwiseAbs().colwise().maxCoeff().transpose() * (eps / static_cast<Scalar>(rows));
    }
    for (Eigen::Index j = 0; j < cols; ++j)
        for (Eigen::Index i = 0; i < rows; ++i) {
            const Scalar t =
                std::max(tiny, transposed_too ? std::min(row_t[i], col_t[j]) : row_t[i]);
            Scalar& x = m.coeffRef(i, j);
            x = std::abs(x) < t ? Scalar(0) : x;
        }
}

/// drop_negligible() with its own workspace (operators built once).
template <typename Derived>
void drop_negligible(Eigen::MatrixBase<Derived>& m, bool transposed_too) {
    Eigen::Matrix<typename Derived::Scalar, Eigen::Dynamic, 1> row_t, col_t;
    drop_negligible(m, transposed_too, row_t, col_t);
}

/// Same shape and the same entries, bit for bit (NaN ≠ NaN); two empty matrices of the
/// same shape are equal. For the operator== of the stream states.
template <typename A, typename B>
bool same_values(const Eigen::MatrixBase<A>& x, const Eigen::MatrixBase<B>& y) {
    return x.rows() == y.rows() && x.cols() == y.cols() && (x.size() == 0 || x == y);
}

/// linspace(a, b, n)[m] as the reference computes it: a + m·h below the middle,
/// b − (n−1−m)·h from the middle on, h = (b − a)/(n − 1); both ends exact.
inline double linspace_at(double a, double b, Eigen::Index n, Eigen::Index m) {
    if (n == 1) return a;
    const double h = (b - a) / static_cast<double>(n - 1);
    return (2 * m < n) ? a + static_cast<double>(m) * h : b - static_cast<double>(n - 1 - m) * h;
}

}  // namespace infinityformer::detail
