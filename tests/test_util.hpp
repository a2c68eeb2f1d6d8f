// Helpers shared by the Catch2 test files: a seeded, portable normal generator.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <stdexcept>

namespace testutil {

constexpr double kPi = 3.14159265358979323846264338327950288;

/// Standard normals from std::mt19937_64 (Box–Muller; the same numbers everywhere).
struct Normal {
    std::mt19937_64 engine;
    explicit Normal(std::uint64_t seed) : engine(seed) {}
    double uniform() { return static_cast<double>(engine() >> 11) * 0x1.0p-53; }
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

}  // namespace testutil
