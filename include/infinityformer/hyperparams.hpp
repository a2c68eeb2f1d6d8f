/// @file hyperparams.hpp
/// @brief Hyper-parameters of the long-term part: one struct per part (MemoryParams,
/// AttentionParams) and the whole set (LongTermParams) with the paper's two presets.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <limits>
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

/// What the memory does about an update that could grow without bound (the recurrence
/// B ← G_pastᵀ Ψ(s) B + G_newᵀ X amplifies the old memory when the basis is too narrow for
/// its centre spacing, or when the sampled points concentrate; see MemoryStability).
enum class Stability {
    /// Default. The constructor refuses a configuration whose uniform recurrence has a
    /// spectral radius ≥ 1 (every sampling reads the uniform points until it has observed
    /// densities), or whose concentrated growth exceeds kMaxConcentratedGrowth (sticky,
    /// stratified). Uniform sampling is then bounded for every input. Sticky and stratified
    /// sampling read the memory through matrices that change every chunk, and no cheap
    /// criterion over all of them is known; sample points given by the caller
    /// (update(X, points), whatever the sampling) can sit anywhere: such an update that
    /// would take max |B| above
    /// kBoundSlack·κ·max|x| (MemoryStability) throws infinityformer::runtime_error, the memory
    /// unchanged. Otherwise the update is the reference's, bit for bit. A refused stream is
    /// stuck: nothing it reads has changed (its densities, its generator, which a refused
    /// update does not advance), so the next chunks are refused too while the attention
    /// stays where it was. Catch the error and reset() the stream (its memory is lost), or
    /// build with stabilise, which keeps such a stream going.
    refuse,
    /// Opt-in deviation from the reference: nothing is refused; an update that would take
    /// max |B| above kBoundSlack·κ·max|x| scales the old memory's share of it down until the
    /// bound holds (LongTermMemory::State::rescaled counts those updates). Where the memory
    /// stays within the bound, identical to the reference.
    stabilise,
    /// The reference's update, unchecked (golden data, replay of a short stream): the
    /// memory may grow; a non-finite result still throws.
    allow,
};

/// What reset() does to a stream's sticky-sampling generator.
enum class ResetGenerator {
    /// Default: the generator restarts as a new stream's would (from the seed it was last
    /// given), so a document replayed after reset() gives the same outputs.
    restart,
    /// The generator continues where it was (as the reference's, which one generator serves
    /// for the whole run): a replayed document draws other sticky samples.
    keep,
};

/// Name of a Stability value ("refuse", "stabilise", "allow").
inline std::string to_string(Stability s) {
    switch (s) {
        case Stability::refuse: return "refuse";
        case Stability::stabilise: return "stabilise";
        case Stability::allow: return "allow";
    }
    return "unknown";
}

/// What a MemoryParams field decides, for the code that walks the field list.
enum class FieldRole {
    operators,  ///< the memory's operators (basis, fits, A, Ψ): part of their cache key
    behaviour,  ///< what the updates do: a state is valid only for the same value
    seed,       ///< the base seed: not part of the configuration
};

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
    /// What to do about an update that could grow without bound (Stability). Default:
    /// refuse such configurations and such updates.
    Stability stability = Stability::refuse;

    /// Every field once, in the state file's order: visit(name, role, rule, p.field...) for
    /// the same field of each of the given sets, where rule(q) is empty if the field's value
    /// is valid in `q`, else "name is v, expected …". Validation, equality,
    /// configuration_difference(), the memory operators' cache key and the state file's
    /// configuration all walk this list: a new field is added here, and only here.
    template <typename Visit, typename... Self>
    static void for_each_field(Visit&& visit, Self&... p) {
        using R = std::string (*)(const MemoryParams&);
        visit("num_basis", FieldRole::operators, R([](const MemoryParams& q) {
                  const auto w = static_cast<Eigen::Index>(q.widths.size());
                  // (an empty widths list is the widths rule's error)
                  return w == 0 || (q.num_basis >= 1 && q.num_basis % w == 0)
                             ? std::string()
                             : detail::concat("num_basis is ", q.num_basis,
                                              ", expected a positive multiple of the number of "
                                              "widths (",
                                              w, ")");
              }),
              p.num_basis...);
        visit("num_samples", FieldRole::operators, R([](const MemoryParams& q) {
                  return q.num_samples >= 1
                             ? std::string()
                             : detail::concat("num_samples is ", q.num_samples, ", expected >= 1");
              }),
              p.num_samples...);
        visit("num_bins", FieldRole::operators, R([](const MemoryParams& q) {
                  return q.num_bins >= 1
                             ? std::string()
                             : detail::concat("num_bins is ", q.num_bins, ", expected >= 1");
              }),
              p.num_bins...);
        visit("ridge_lambda", FieldRole::operators, R([](const MemoryParams& q) {
                  return std::isfinite(q.ridge_lambda) && q.ridge_lambda > 0.0
                             ? std::string()
                             : detail::concat("ridge_lambda is ", q.ridge_lambda, ", expected > 0");
              }),
              p.ridge_lambda...);
        visit("tau", FieldRole::operators, R([](const MemoryParams& q) {
                  return q.tau > 0.0 && q.tau < 1.0
                             ? std::string()
                             : detail::concat("tau is ", q.tau, ", expected 0 < tau < 1");
              }),
              p.tau...);
        visit("sampling", FieldRole::operators, R([](const MemoryParams& q) {
                  return q.sampling == Sampling::uniform || q.sampling == Sampling::sticky ||
                                 q.sampling == Sampling::stratified
                             ? std::string()
                             : detail::concat("sampling is ", static_cast<int>(q.sampling),
                                              ", expected uniform, sticky or stratified");
              }),
              p.sampling...);
        visit("stability", FieldRole::behaviour, R([](const MemoryParams& q) {
                  return q.stability == Stability::refuse || q.stability == Stability::stabilise ||
                                 q.stability == Stability::allow
                             ? std::string()
                             : detail::concat("stability is ", static_cast<int>(q.stability),
                                              ", expected refuse, stabilise or allow");
              }),
              p.stability...);
        visit("reset_after_tokens", FieldRole::behaviour, R([](const MemoryParams& q) {
                  return q.reset_after_tokens >= 0
                             ? std::string()
                             : detail::concat("reset_after_tokens is ", q.reset_after_tokens,
                                              ", expected >= 0 (0 = never)");
              }),
              p.reset_after_tokens...);
        visit("widths", FieldRole::operators, R([](const MemoryParams& q) {
                  if (q.widths.empty())
                      return std::string("widths is empty, expected at least one width");
                  for (std::size_t j = 0; j < q.widths.size(); ++j)
                      if (!(std::isfinite(q.widths[j]) && q.widths[j] > 0.0))
                          return detail::concat("widths[", j, "] is ", q.widths[j],
                                                ", expected > 0");
                  return std::string();
              }),
              p.widths...);
        visit("seed", FieldRole::seed, R([](const MemoryParams&) { return std::string(); }),
              p.seed...);
    }

    /// Checks every field. @throws infinityformer::invalid_argument naming the field, the
    /// range expected and the value received.
    void validate(const char* where = "MemoryParams::validate") const {
        for_each_field(
            [&](const char*, FieldRole, auto rule, const auto&) {
                const std::string error = rule(*this);
                if (!error.empty()) detail::fail(where, error);
            },
            *this);
    }

    /// Equal in every field, the seed included.
    friend bool operator==(const MemoryParams& a, const MemoryParams& b) {
        bool equal = true;
        for_each_field([&](const char*, FieldRole, auto, const auto& x,
                           const auto& y) { equal = equal && x == y; },
                       a, b);
        return equal;
    }
    friend bool operator!=(const MemoryParams& a, const MemoryParams& b) { return !(a == b); }

    /// The first field but the seed in which `o` differs, as "name is A <a_is>, B <b_is>"
    /// (the widths compared by count, then entry by entry); empty if none does.
    std::string configuration_difference(const MemoryParams& o, const char* a_is,
                                         const char* b_is) const {
        std::string out;
        for_each_field(
            [&](const char* name, FieldRole role, auto, const auto& x, const auto& y) {
                if (out.empty() && role != FieldRole::seed)
                    out = detail::field_difference(name, x, y, a_is, b_is);
            },
            *this, o);
        return out;
    }
    /// validate(), and what the Scalar's range adds: every width s must have s² a normal
    /// number of Scalar (the basis divides by s²).
    template <typename Scalar>
    void validate_for(const char* where) const {
        validate(where);
        for (std::size_t j = 0; j < widths.size(); ++j) {
            const std::string name = detail::concat("widths[", j, "]^2");
            detail::require_normal<Scalar>(where, name.c_str(), widths[j] * widths[j],
                                           "expected a width whose square is a normal number");
        }
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
    void validate(const char* where = "AttentionParams::validate") const {
        detail::require(std::isfinite(sigma_sq_min) && sigma_sq_min > 0.0, where,
                        "sigma_sq_min is ", sigma_sq_min, ", expected > 0");
        detail::require(std::isfinite(kl_sigma_0) && kl_sigma_0 > 0.0, where, "kl_sigma_0 is ",
                        kl_sigma_0, ", expected > 0");
        detail::require(std::isfinite(kl_mu_0), where, "kl_mu_0 is ", kl_mu_0,
                        ", expected a finite value");
    }

    /// validate(), and what the Scalar's range adds: σ²_min and σ₀² normal numbers of
    /// Scalar, the KL finite at σ² = σ²_min (σ²_min/σ₀² normal) and its μ term finite for
    /// every μ ∈ [0, 1] ((1 + |μ₀|)²/σ₀² finite).
    template <typename Scalar>
    void validate_for(const char* where) const {
        validate(where);
        detail::require_normal<Scalar>(where, "sigma_sq_min", sigma_sq_min,
                                       "expected a normal number");
        detail::require_normal<Scalar>(where, "kl_sigma_0^2", kl_sigma_0 * kl_sigma_0,
                                       "expected a normal number");
        detail::require_normal<Scalar>(where, "sigma_sq_min / kl_sigma_0^2",
                                       sigma_sq_min / (kl_sigma_0 * kl_sigma_0),
                                       "so that the KL regulariser is finite at sigma^2_min");
        if (kl_mu_term) {
            const double d = 1.0 + std::abs(kl_mu_0);
            detail::require_normal<Scalar>(where, "(1 + |kl_mu_0|)^2 / kl_sigma_0^2",
                                           d * d / (kl_sigma_0 * kl_sigma_0),
                                           "so that the KL's mu term is finite");
        }
    }
};

/// Every hyper-parameter of the long-term part (memory, attention, gate) in one set, with
/// the paper's two configurations as presets: the memory's fields (MemoryParams), the
/// attention's (AttentionParams) and the gate's switch. Each part takes only its own slice
/// (memory_params(), attention_params(); the gate takes `gate` and the seed). `seed` is the
/// base seed of every generator of a composite (LongTermAttention, InfinityFormerLayer):
/// initial weights (attention, gate, short-term) and each stream's sticky sampling draw from
/// seeds derived from it by purpose and stream (detail::derive_seed), so no two share a
/// sequence. A part built alone from these settings (ContinuousAttention(…, params)) uses
/// `seed` as given, as every part does with its seed.
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
    /// Each slice's validate_for<Scalar>(), messages prefixed with `where`.
    template <typename Scalar>
    void validate_for(const char* where) const {
        memory_params().template validate_for<Scalar>(where);
        attention_params().template validate_for<Scalar>(where);
    }
};

}  // namespace infinityformer
