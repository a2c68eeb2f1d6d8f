/// @file detail/random.hpp
/// @brief A portable seeded generator: the same seed gives the same numbers with every
/// standard library (std::mt19937_64's output is fixed by the standard; the standard
/// distributions are not, so the conversions are written here).
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <random>

namespace infinityformer::detail {

class Random {
public:
    explicit Random(std::uint64_t seed = 0) : engine_(seed) {}

    void seed(std::uint64_t s) { engine_.seed(s); }

    /// Uniform on [0, 1) with 53 random bits.
    double uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }

    /// Uniform on [a, b).
    double uniform(double a, double b) { return a + (b - a) * uniform(); }

    /// Standard normal (Box–Muller, one value per call).
    double normal() {
        const double u1 = 1.0 - uniform();  // (0, 1]
        const double u2 = uniform();
        return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586476925 * u2);
    }

    std::mt19937_64& engine() { return engine_; }
    const std::mt19937_64& engine() const { return engine_; }

private:
    std::mt19937_64 engine_;
};

/// Fills a matrix with U(−bound, bound) entries, column by column.
template <typename Derived>
void fill_uniform(Eigen::MatrixBase<Derived>& m, double bound, Random& rng) {
    using S = typename Derived::Scalar;
    for (Eigen::Index j = 0; j < m.cols(); ++j)
        for (Eigen::Index i = 0; i < m.rows(); ++i)
            m(i, j) = static_cast<S>(rng.uniform(-bound, bound));
}

}  // namespace infinityformer::detail
