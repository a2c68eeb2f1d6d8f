/// @file hyperparams.hpp
/// @brief Hyper-parameters of the long-term part: one struct per part (MemoryParams,
/// AttentionParams) and the whole set (LongTermParams) with the paper's two presets.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "errors.hpp"

namespace infinityformer {

/// How the M points at which the old memory is read before each refit are chosen.
enum class Sampling {
    /// s_i = i/M, i = 1…M (the `sorting` model; the memory update is then a fixed linear
    /// recurrence).
    uniform,
    /// Sticky memories (∞-former §3.3): a histogram over `num_bins` bins of the previous
    /// chunk's attention densities; M bins drawn in proportion to their mass by the
    /// memory's seeded generator; each drawn bin contributes its left edge; sorted.
    sticky,
    /// Deterministic variant of sticky memories: the points are the quantiles
    /// (i − ½)/M, i = 1…M, of the histogram read as a piecewise-uniform density.
    stratified,
};

/// Name of a Sampling value ("uniform", "sticky", "stratified").
inline std::string to_string(Sampling s) {
    switch (s) {
        case Sampling::uniform: return "uniform";
        case Sampling::sticky: return "sticky";
        case Sampling::stratified: return "stratified";
    }
    return "unknown";
}

/// Settings of the long-term memory (LongTermMemory): the basis, the fit and the sampling.
/// Defaults: the paper's synthetic `sorting` model.
struct MemoryParams {
    /// N, number of basis functions; a multiple of widths.size(). Paper: 512.
    Eigen::Index num_basis = 512;
    /// Basis widths S (standard deviations). Sorting: {0.01, 0.05}; LM: {0.005, 0.01}.
    std::vector<double> widths = {0.01, 0.05};
    /// λ of the ridge regression, > 0. Sorting: 1; LM: 0.5.
    double ridge_lambda = 1.0;
    /// τ ∈ (0, 1): share of [0, 1] given to the compressed past. Sorting: 0.75; LM: 0.5.
    double tau = 0.75;
    /// M ≥ 1, points at which the old memory is read before each refit. Paper: 512.
    Eigen::Index num_samples = 512;
    /// D ≥ 1, bins of the sticky-memory histogram. Paper: 128.
    Eigen::Index num_bins = 128;
    /// Choice of the M points. Sorting: uniform; LM: sticky.
    Sampling sampling = Sampling::uniform;
    /// If > 0, the memory is forgotten at the start of a chunk once this many tokens have
    /// been stored since the last reset (the LM code uses 2048). 0 = never (default).
    Eigen::Index reset_after_tokens = 0;
    /// Base seed: stream s draws its sticky samples from a generator seeded with
    /// detail::derive_seed(seed, SeedPurpose::sampling, s).
    std::uint64_t seed = 0;

    /// Checks every field. @throws infinityformer::invalid_argument naming the field, the
    /// range expected and the value received.
    void validate() const {
        constexpr const char* where = "MemoryParams::validate";
        const auto w = static_cast<Eigen::Index>(widths.size());
        detail::require(w >= 1, where, "widths is empty, expected at least one width");
        for (std::size_t j = 0; j < widths.size(); ++j)
            detail::require(std::isfinite(widths[j]) && widths[j] > 0.0, where, "widths[", j,
                            "] is ", widths[j], ", expected > 0");
        detail::require(num_basis >= 1 && num_basis % w == 0, where, "num_basis is ", num_basis,
                        ", expected a positive multiple of the number of widths (", w, ")");
        detail::require(std::isfinite(ridge_lambda) && ridge_lambda > 0.0, where,
                        "ridge_lambda is ", ridge_lambda, ", expected > 0");
        detail::require(tau > 0.0 && tau < 1.0, where, "tau is ", tau, ", expected 0 < tau < 1");
        detail::require(num_samples >= 1, where, "num_samples is ", num_samples, ", expected >= 1");
        detail::require(num_bins >= 1, where, "num_bins is ", num_bins, ", expected >= 1");
        detail::require(reset_after_tokens >= 0, where, "reset_after_tokens is ",
                        reset_after_tokens, ", expected >= 0 (0 = never)");
        detail::require(sampling == Sampling::uniform || sampling == Sampling::sticky ||
                            sampling == Sampling::stratified,
                        where, "sampling is ", static_cast<int>(sampling),
                        ", expected uniform, sticky or stratified");
    }
};

/// Settings of the continuous attention (ContinuousAttention) beyond its shapes: the σ²
/// clamp and the KL regulariser. N is the basis's; the weights' seed is separate.
/// Defaults: the paper's synthetic `sorting` model.
struct AttentionParams {
    /// Lower clamp of σ² after softplus, > 0. Sorting: 1e-6; LM: 1e-4.
    double sigma_sq_min = 1e-6;
    /// σ₀ of the KL regulariser KL(N(μ, σ²) ‖ N(μ₀, σ₀²)), > 0. Paper: 0.05.
    double kl_sigma_0 = 0.05;
    /// Whether the KL regulariser includes the μ term ½(μ − μ₀)²/σ₀². Sorting: no; LM: yes.
    bool kl_mu_term = false;
    /// μ₀ of the KL regulariser (used when kl_mu_term). LM: −1.
    double kl_mu_0 = -1.0;

    /// Checks every field. @throws infinityformer::invalid_argument naming the field.
    void validate() const {
        constexpr const char* where = "AttentionParams::validate";
        detail::require(std::isfinite(sigma_sq_min) && sigma_sq_min > 0.0, where,
                        "sigma_sq_min is ", sigma_sq_min, ", expected > 0");
        detail::require(std::isfinite(kl_sigma_0) && kl_sigma_0 > 0.0, where, "kl_sigma_0 is ",
                        kl_sigma_0, ", expected > 0");
        detail::require(std::isfinite(kl_mu_0), where, "kl_mu_0 is ", kl_mu_0,
                        ", expected a finite value");
    }
};

/// Every hyper-parameter of the long-term part (memory, attention, gate) in one set, with
/// the paper's two configurations as presets: the memory's fields (MemoryParams), the
/// attention's (AttentionParams) and the gate's switch. Each part takes only its own slice
/// (memory_params(), attention_params(); the gate takes `gate` and the seed). `seed` is the
/// base seed of every generator: initial weights (attention, gate, short-term) and each
/// stream's sticky sampling draw from seeds derived from it by purpose and stream
/// (detail::derive_seed), so no two share a sequence.
///
/// The defaults are the paper's synthetic `sorting` model (Martins et al. 2022, §4.1 and
/// the authors' code); lm() gives the GPT-2 language-model configuration (§4.2).
/// Shapes (model width, heads, chunk length) are constructor arguments of the classes.
struct LongTermParams : MemoryParams, AttentionParams {
    /// Memory gate (the authors' "mask"): a width-3 convolution over time and a sigmoid
    /// scaling every vector that enters the memory. Sorting: off; LM: on.
    bool gate = false;

    /// The synthetic sorting model (the defaults).
    static LongTermParams sorting() { return LongTermParams{}; }

    /// The GPT-2 language model: widths {0.005, 0.01}, λ = 0.5, τ = 0.5, sticky memories,
    /// σ²_min = 1e-4, KL with μ term (μ₀ = −1), gate on. The reference's reset of the memory
    /// every 2048 stored tokens is left off; set reset_after_tokens = 2048 to get it.
    static LongTermParams lm() {
        LongTermParams p;
        p.widths = {0.005, 0.01};
        p.ridge_lambda = 0.5;
        p.tau = 0.5;
        p.sampling = Sampling::sticky;
        p.sigma_sq_min = 1e-4;
        p.kl_mu_term = true;
        p.kl_mu_0 = -1.0;
        p.gate = true;
        return p;
    }

    /// The memory's slice.
    const MemoryParams& memory_params() const { return *this; }
    /// The attention's slice.
    const AttentionParams& attention_params() const { return *this; }

    /// Checks every field (each slice's validate()). @throws infinityformer::invalid_argument
    /// naming the field, the range expected and the value received.
    void validate() const {
        memory_params().validate();
        attention_params().validate();
    }
};

}  // namespace infinityformer
