/// @file reach.hpp
/// @brief How far back a memory configuration holds its past: where a token of a given age
/// sits on [0, 1] (token_position()), and the age at which a chunk has shrunk below what
/// the basis can resolve (memory_reach()). README, "Choosing parameters", has the measured
/// table these figures predict.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>

#include "basis.hpp"
#include "errors.hpp"
#include "hyperparams.hpp"
#include "positions.hpp"
#include "ridge.hpp"

namespace infinityformer {

/// Where the token `age` tokens before the newest one stored (age 0) sits on [0, 1] in a
/// memory of chunks of `chunk_length` tokens with compression `tau`, right after an update
/// with uniform sampling (sticky and stratified sampling move the past unevenly; this is
/// then where the token would sit had the memory been read uniformly).
///
/// Every update compresses the old signal x̄(t) into [0, τ] (t ↦ τ·t) and fits the new chunk
/// into (τ, 1], its token j = 1…L at τ + (1−τ)·j/L (positions.hpp). A token k = ⌊age/L⌋
/// chunks back, at j = L − age mod L in its chunk, therefore sits at τᵏ·(τ + (1−τ)·j/L).
/// With `tokens_stored` (the memory's tokens_stored()), the tokens of the memory's first
/// chunk, which was fitted alone over [0, 1] at (j − ½)/L, are placed at τᵏ·(j − ½)/L.
///
/// In an InfinityFormerLayer the newest token stored, after the forward() of chunk c, is
/// the last token of chunk c − 2.
/// @param age ≥ 0 (and < tokens_stored when given).
/// @param tokens_stored the tokens the memory holds (a multiple of chunk_length), or −1
///        for a stream long enough that the first chunk does not matter.
/// @throws infinityformer::invalid_argument if chunk_length < 1, τ ∉ (0, 1), age < 0, or
///         age ≥ tokens_stored ≥ 0 (the token is not in the memory).
inline double token_position(Eigen::Index age, Eigen::Index chunk_length, double tau,
                             Eigen::Index tokens_stored = -1) {
    constexpr const char* where = "token_position";
    detail::require(chunk_length >= 1, where, "chunk_length is ", chunk_length, ", expected >= 1");
    detail::require(tau > 0.0 && tau < 1.0, where, "tau is ", tau, ", expected 0 < tau < 1");
    detail::require(age >= 0, where, "age is ", age, ", expected >= 0");
    detail::require(tokens_stored < 0 || age < tokens_stored, where, "age is ", age,
                    ", expected < tokens_stored (", tokens_stored,
                    "): the token is not in the memory");
    const Eigen::Index k = age / chunk_length;
    const Eigen::Index j = chunk_length - age % chunk_length;  // 1…L, L the chunk's last
    const double l = static_cast<double>(chunk_length);
    const bool first = tokens_stored >= 0 && age >= tokens_stored - chunk_length;
    const double own =
        first ? (static_cast<double>(j) - 0.5) / l : tau + (1.0 - tau) * static_cast<double>(j) / l;
    // τᵏ underflows to 0 for very old tokens, which is where they are.
    return own * std::pow(tau, static_cast<double>(k));
}

/// What a memory configuration can hold, from its parameters alone (memory_reach()).
struct MemoryReach {
    Eigen::Index chunk_length = 0;  ///< L
    double tau = 0.0;               ///< τ
    /// 1/(K − 1), K = num_basis / widths.size() evenly spaced centres on [0, 1].
    double centre_spacing = 0.0;
    /// The smallest of the widths (standard deviations).
    double narrowest_width = 0.0;
    /// r = max(centre spacing, narrowest width, 1/M): the shortest span of [0, 1] the
    /// memory keeps apart from its neighbours (no Gaussian of the basis is narrower than the
    /// narrowest width or closer to the next than the spacing, and the old memory is read
    /// at M points per update).
    double resolution = 0.0;
    /// r / √(1 − τ²): the blur a token has gathered after many updates, in today's
    /// coordinates (each refit blurs by about r, and the blur of the refit k updates ago
    /// has shrunk by τᵏ since; the squares add up to r²/(1 − τ²)).
    double effective_resolution = 0.0;
    /// 1 − τ: the share of [0, 1] each new chunk is fitted into.
    double chunk_share = 0.0;
    /// L·r / (1−τ): how many tokens of the newest chunk share one span r (above 1, the
    /// chunk is smoothed as it is stored: detail shorter than this many tokens is lost at
    /// once).
    double tokens_per_resolution = 0.0;
    /// g: how much of a chunk's own content the update keeps at its own positions — the
    /// mean over its L tokens of the value read back right after storing a chunk of ones
    /// over an old memory of zeros (Ψ(new positions) G_newᵀ 1). Near 1, a chunk that
    /// differs from the past is stored as it is; small (one token against many samples of
    /// the past, a basis too sparse in (τ, 1]), new content is mostly lost at once.
    double chunk_gain = 0.0;
    /// Whether the memory holds its own chunk: the newest chunk spans more than r and
    /// g ≥ kMinChunkGain. When it does not, every chunk is blurred or attenuated from its
    /// first update on: under Stability::refuse (the default) the memory's constructor
    /// refuses such a configuration.
    bool holds_own_chunk = false;

    /// The age in tokens up to which the memory keeps detail that spans `detail_tokens`
    /// consecutive tokens apart from its surroundings: P tokens that are k chunks old span
    /// about τᵏ(1 − τ^(P/L)) of [0, 1], kept while that exceeds the effective resolution,
    /// so the horizon is L·ln((1 − τ^(P/L)) / r_eff) / ln(1/τ), or 0 when even the newest
    /// such detail is finer than r_eff. A prediction from the geometry alone; README,
    /// "Choosing parameters", compares it with measured reconstruction errors.
    /// @throws infinityformer::invalid_argument if detail_tokens is not > 0 and finite.
    double horizon_tokens(double detail_tokens) const {
        detail::require(detail_tokens > 0.0 && std::isfinite(detail_tokens),
                        "MemoryReach::horizon_tokens", "detail_tokens is ", detail_tokens,
                        ", expected > 0 and finite");
        const double l = static_cast<double>(chunk_length);
        const double span = 1.0 - std::pow(tau, detail_tokens / l);
        return span > effective_resolution
                   ? l * std::log(span / effective_resolution) / std::log(1.0 / tau)
                   : 0.0;
    }
    /// horizon_tokens(L) / L: the age in chunks up to which whole chunks stay apart.
    double horizon_chunks() const {
        return horizon_tokens(static_cast<double>(chunk_length)) /
               static_cast<double>(chunk_length);
    }
};

/// The least chunk gain (MemoryReach::chunk_gain) of a memory that holds its own chunk.
constexpr double kMinChunkGain = 0.5;

namespace detail {

/// MemoryReach::chunk_gain from the rows of the unbounded fit's operator that multiply the
/// new chunk (G_new, L × N: rows M…M+L−1 of G) and the basis, in double.
inline double chunk_gain(const GaussianBasis<double>& basis,
                         const Eigen::Ref<const Eigen::MatrixXd>& G_new, double tau) {
    const Eigen::Index length = G_new.rows();
    Eigen::VectorXd t(length);  // the new chunk's positions
    for (Eigen::Index age = 0; age < length; ++age) t[age] = token_position(age, length, tau);
    const Eigen::VectorXd coefficients = G_new.colwise().sum().transpose();
    return (basis.evaluate(t) * coefficients).mean();
}

/// The figures of memory_reach() with the chunk gain given.
inline MemoryReach reach_with_gain(const MemoryParams& params, Eigen::Index chunk_length,
                                   double gain) {
    MemoryReach r;
    r.chunk_length = chunk_length;
    r.tau = params.tau;
    const Eigen::Index centres = params.num_basis / static_cast<Eigen::Index>(params.widths.size());
    r.centre_spacing = centres > 1 ? 1.0 / static_cast<double>(centres - 1) : 1.0;
    r.narrowest_width = *std::min_element(params.widths.begin(), params.widths.end());
    r.resolution = std::max(
        {r.centre_spacing, r.narrowest_width, 1.0 / static_cast<double>(params.num_samples)});
    r.effective_resolution = r.resolution / std::sqrt(1.0 - params.tau * params.tau);
    r.chunk_share = 1.0 - params.tau;
    r.tokens_per_resolution = static_cast<double>(chunk_length) * r.resolution / r.chunk_share;
    r.chunk_gain = gain;
    r.holds_own_chunk = r.chunk_share > r.resolution && gain >= kMinChunkGain;
    return r;
}

}  // namespace detail

/// The reach of memories of `params` (validated: MemoryParams::validate()) over chunks
/// of `chunk_length` tokens: geometric figures and the chunk gain, which builds the
/// configuration's fit in double (a Cholesky factorisation of N × N: milliseconds at
/// N = 512, about a second at N = 2048). The reconstruction error they predict depends on
/// the signal (README, "Choosing parameters", measures it).
/// @throws infinityformer::invalid_argument if chunk_length < 1 or params is invalid.
inline MemoryReach memory_reach(const MemoryParams& params, Eigen::Index chunk_length) {
    constexpr const char* where = "memory_reach";
    detail::require(chunk_length >= 1, where, "chunk_length is ", chunk_length, ", expected >= 1");
    params.validate(where);
    const GaussianBasis<double> basis =
        GaussianBasis<double>::default_family(params.num_basis, params.widths);
    const RidgeFit<double> fit =
        unbounded_fit(basis, chunk_length, params.num_samples, params.tau, params.ridge_lambda);
    return detail::reach_with_gain(
        params, chunk_length,
        detail::chunk_gain(basis, fit.G().middleRows(params.num_samples, chunk_length),
                           params.tau));
}

}  // namespace infinityformer
