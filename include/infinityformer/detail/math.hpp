/// @file detail/math.hpp
/// @brief Scalar functions used by several parts, written once: sigmoid, softplus, the
/// Gaussian density and the reference's linspace.
#pragma once

#include <Eigen/Core>
#include <cmath>

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

/// N(x; c, v) = exp(−(x − c)²/(2v)) / √(2πv), for a variance v > 0.
template <typename Scalar>
Scalar gaussian_density(Scalar x, Scalar c, Scalar v) {
    using std::exp;
    using std::sqrt;
    const Scalar d = x - c;
    return Scalar(kInvSqrt2Pi) / sqrt(v) * exp(Scalar(-0.5) * (d / v) * d);
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
