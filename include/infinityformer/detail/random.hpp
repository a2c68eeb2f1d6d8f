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
    Random() : engine_(0) {}
    explicit Random(std::uint64_t seed) : engine_(seed) {}

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

/// What a generator is for: every generator's seed is derived from the base seed, its
/// purpose and (for sampling) its stream, so that no two share a sequence.
enum class SeedPurpose : std::uint64_t {
    attention_weights = 1,   ///< ContinuousAttention's initial weights
    gate_weights = 2,        ///< MemoryGate's initial weights
    short_term_weights = 3,  ///< the layer's short-term attention weights
    sampling = 4,            ///< a stream's sticky-sampling generator
};

/// SplitMix64's finaliser: a bijection of 64-bit words with good avalanche.
inline std::uint64_t mix64(std::uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/// The seed of the generator for `purpose` (and `stream`) under the base seed.
inline std::uint64_t derive_seed(std::uint64_t base, SeedPurpose purpose,
                                 std::uint64_t stream = 0) {
    return mix64(mix64(mix64(base) ^ static_cast<std::uint64_t>(purpose)) + stream);
}

/// Fills a matrix with U(−bound, bound) entries, column by column.
template <typename Derived>
void fill_uniform(Eigen::MatrixBase<Derived>& m, double bound, Random& rng) {
    using S = typename Derived::Scalar;
    for (Eigen::Index j = 0; j < m.cols(); ++j)
        for (Eigen::Index i = 0; i < m.rows(); ++i)
            m(i, j) = static_cast<S>(rng.uniform(-bound, bound));
}

}  // namespace infinityformer::detail
