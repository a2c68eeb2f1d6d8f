/// @file detail/random.hpp
/// @brief A portable seeded generator: the same seed gives the same numbers with every
/// standard library. The engine is the standard's mt19937_64, written out here so that its
/// state can be saved and restored word by word (std::mt19937_64's textual state differs
/// between standard libraries); the standard distributions are not portable either, so the
/// conversions are written here too.
#pragma once

#include <Eigen/Core>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace infinityformer::detail {

/// The 64-bit Mersenne Twister with the standard's parameters: the same sequence as
/// std::mt19937_64 for every seed (tests/test_random.cpp checks it against the standard
/// library and the standard's 10000th value), with its state open: 312 words and the
/// position of the next word to temper.
class Mt19937_64 {
public:
    using result_type = std::uint64_t;
    static constexpr std::size_t state_size = 312;

    explicit Mt19937_64(std::uint64_t s = 5489u) { seed(s); }

    static constexpr result_type min() { return 0; }
    static constexpr result_type max() { return ~result_type(0); }

    void seed(std::uint64_t s) {
        x_[0] = s;
        for (std::size_t i = 1; i < state_size; ++i)
            x_[i] = 6364136223846793005ULL * (x_[i - 1] ^ (x_[i - 1] >> 62)) + i;
        pos_ = state_size;
    }

    result_type operator()() {
        if (pos_ >= state_size) twist();
        std::uint64_t y = x_[pos_++];
        y ^= (y >> 29) & 0x5555555555555555ULL;
        y ^= (y << 17) & 0x71D67FFFEDA60000ULL;
        y ^= (y << 37) & 0xFFF7EEE000000000ULL;
        return y ^ (y >> 43);
    }

    /// The state: the words and the position (0 … 312) of the next one to temper.
    const std::array<std::uint64_t, state_size>& words() const { return x_; }
    std::size_t position() const { return pos_; }
    /// Sets the state; false (nothing changed) if the position is above 312.
    bool set_state(const std::array<std::uint64_t, state_size>& words, std::size_t position) {
        if (position > state_size) return false;
        x_ = words;
        pos_ = position;
        return true;
    }

    friend bool operator==(const Mt19937_64& a, const Mt19937_64& b) {
        return a.pos_ == b.pos_ && a.x_ == b.x_;
    }
    friend bool operator!=(const Mt19937_64& a, const Mt19937_64& b) { return !(a == b); }

private:
    void twist() {
        constexpr std::size_t n = state_size, m = 156;
        constexpr std::uint64_t upper = ~std::uint64_t(0) << 31, lower = ~upper;
        for (std::size_t i = 0; i < n; ++i) {
            const std::uint64_t y = (x_[i] & upper) | (x_[(i + 1) % n] & lower);
            x_[i] = x_[(i + m) % n] ^ (y >> 1) ^ ((y & 1u) ? 0xB5026F5AA96619E9ULL : 0u);
        }
        pos_ = 0;
    }

    std::array<std::uint64_t, state_size> x_{};
    std::size_t pos_ = state_size;
};

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

    Mt19937_64& engine() { return engine_; }
    const Mt19937_64& engine() const { return engine_; }

private:
    Mt19937_64 engine_;
};

/// What a generator is for: a composite (LongTermAttention, InfinityFormerLayer,
/// LongTermMemory's streams) derives each generator's seed from its base seed, the purpose
/// and (for sampling) the stream, so that no two share a sequence. A part's seed
/// (ShortTermAttention, ContinuousAttention, MemoryGate, init_weights()) is used as given.
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
