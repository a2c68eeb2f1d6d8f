/// @file memory_operators.hpp
/// @brief What a memory configuration computes once and every stream of it shares: the
/// basis, the two fits, the uniform recurrence A, Ψ at the bin edges and the stability
/// figures, in one immutable object with one process-wide cache.
#pragma once

#include <Eigen/Core>
#include <cstddef>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "basis.hpp"
#include "detail/config.hpp"
#include "detail/math.hpp"
#include "errors.hpp"
#include "hyperparams.hpp"
#include "positions.hpp"
#include "reach.hpp"
#include "ridge.hpp"
#include "sampling.hpp"
#include "stability.hpp"

namespace infinityformer {

/// The operators of one memory configuration (chunk length L and the MemoryParams fields
/// whose role is FieldRole::operators), immutable and shared: shared() builds them once
/// per configuration and hands the same object to every memory of it, whatever its width,
/// stream, seed or Stability. A memory of one stream holds only its coefficients, the
/// densities it observed and its generator (LongTermMemory::State) besides a pointer to
/// these.
template <typename Scalar>
struct MemoryOperators {
    static_assert(detail::instantiable_scalar<Scalar>(),
                  "infinityformer::compiled holds MemoryOperators<float> and <double> only");

    using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
    using Index = Eigen::Index;

    /// The operators of (chunk_length, p): built on first use, then shared (the cache keeps
    /// the eight most recently built alive, and any other one while a memory holds it).
    /// `p` must have been validated.
    static std::shared_ptr<const MemoryOperators> shared(Index chunk_length, const MemoryParams& p);

    /// Builds them (shared() is the way to get them).
    MemoryOperators(Index length, const MemoryParams& p);

    GaussianBasis<Scalar> basis;  ///< the N basis functions
    RidgeFit<Scalar> first;       ///< the single-chunk fit (L × N), for a first chunk
    RidgeFit<Scalar> inf;         ///< the unbounded-memory fit ((M + L) × N)
    MemoryStability stability;    ///< how far an update can amplify the old memory
    Vector uniform_points;        ///< i/M, i = 1…M
    Matrix uniform_op;            ///< A = G_pastᵀ Ψ(i/M) (N × N), the uniform recurrence
    Matrix edge_psi;              ///< Ψ at the D bin edges j/D (sticky with D < M; else empty)

    /// Under Stability::refuse, a memory of this configuration and width `dim` is refused
    /// if it cannot hold its own chunk (memory_reach(): the newest chunk spans no more than
    /// the memory's resolution), if its uniform recurrence diverges, or if its concentrated
    /// growth exceeds kMaxConcentratedGrowth.
    /// @throws infinityformer::invalid_argument naming the configuration, the settings that
    ///         would help and, for a divergent one, the nearest num_basis above and below
    ///         that is accepted.
    void refuse_unstable(const char* where, const MemoryParams& p, Index length, Index dim) const;

    /// Whether the configuration (length, p) passes every check of refuse_unstable().
    static bool accepted(Index length, const MemoryParams& p);

    /// Bytes the operators of (chunk_length, p) take (the fits are computed in double over
    /// about 2(M + L) positions), at most.
    static double bytes(Index chunk_length, const MemoryParams& p) {
        const double n = static_cast<double>(p.num_basis), m = static_cast<double>(p.num_samples),
                     l = static_cast<double>(chunk_length), d = static_cast<double>(p.num_bins);
        return 8 * (3 * n * n + 6 * n * (m + l + 1)) +
               static_cast<double>(sizeof(Scalar)) * (n * n + n * (m + 2 * l) + d * n + 5 * n);
    }

private:
    static Vector uniform(Index m) {
        return SamplePointChooser<Scalar>(Sampling::uniform, m, 1).uniform_points();
    }
};

#if INFINITYFORMER_HEADER_ONLY

template <typename Scalar>
auto MemoryOperators<Scalar>::shared(Index chunk_length, const MemoryParams& p)
    -> std::shared_ptr<const MemoryOperators> {
    std::vector<double> key{static_cast<double>(chunk_length)};
    MemoryParams::for_each_field(
        [&](const char*, FieldRole role, auto, const auto& field) {
            if (role != FieldRole::operators) return;
            if constexpr (std::is_same_v<std::decay_t<decltype(field)>, std::vector<double>>) {
                key.push_back(static_cast<double>(field.size()));
                key.insert(key.end(), field.begin(), field.end());
            } else {
                key.push_back(static_cast<double>(field));
            }
        },
        p);
    static std::mutex mutex;
    static std::map<std::vector<double>, std::weak_ptr<const MemoryOperators>> cache;
    static std::deque<std::shared_ptr<const MemoryOperators>> recent;
    {
        std::lock_guard<std::mutex> lock(mutex);
        auto it = cache.find(key);
        if (it != cache.end())
            if (auto alive = it->second.lock()) return alive;
    }
    // Built outside the lock (seconds at N = M = 512 under a sanitizer); two threads
    // building the same one at once keep the first.
    auto built = std::make_shared<const MemoryOperators>(chunk_length, p);
    std::lock_guard<std::mutex> lock(mutex);
    auto& slot = cache[key];
    if (auto alive = slot.lock()) return alive;
    slot = built;
    recent.push_back(built);
    if (recent.size() > 8) recent.pop_front();
    return built;
}

template <typename Scalar>
MemoryOperators<Scalar>::MemoryOperators(Index length, const MemoryParams& p)
    : basis(GaussianBasis<Scalar>::default_family(p.num_basis, p.widths)),
      first(infinityformer::single_chunk_fit(basis, length, p.ridge_lambda)),
      inf(infinityformer::unbounded_fit(basis, length, p.num_samples, p.tau, p.ridge_lambda)),
      stability(detail::analyse_memory(basis, first, inf, p)),
      uniform_points(uniform(p.num_samples)) {
    const Index m = p.num_samples;
    // A = G_pastᵀ Ψ(uniform points), N × N, in double then rounded.
    const Eigen::MatrixXd Gp = inf.G().topRows(m).template cast<double>();
    const Eigen::MatrixXd psi = basis.evaluate(uniform_points).template cast<double>();
    uniform_op = (Gp.transpose() * psi).template cast<Scalar>();
    detail::drop_negligible(uniform_op, false);  // multiplies B from the left
    if (p.sampling == Sampling::sticky && p.num_bins < m) {
        Vector edges(p.num_bins);
        for (Index j = 0; j < p.num_bins; ++j)
            edges[j] =
                static_cast<Scalar>(static_cast<double>(j) / static_cast<double>(p.num_bins));
        edge_psi = basis.evaluate(edges);  // Ψ at the D bin edges (sticky)
        detail::drop_negligible(edge_psi, false);
    }
}

template <typename Scalar>
bool MemoryOperators<Scalar>::accepted(Index length, const MemoryParams& p) {
    // The figures alone, in double (not a MemoryOperators<double>, whose uniform recurrence
    // is not needed, and which the compiled library must not instantiate before its
    // declaration below).
    const GaussianBasis<double> basis =
        GaussianBasis<double>::default_family(p.num_basis, p.widths);
    const MemoryStability s = detail::analyse_memory(
        basis, infinityformer::single_chunk_fit(basis, length, p.ridge_lambda),
        infinityformer::unbounded_fit(basis, length, p.num_samples, p.tau, p.ridge_lambda), p);
    return detail::accepts(detail::reach_with_gain(p, length, s.chunk_gain), s);
}

template <typename Scalar>
void MemoryOperators<Scalar>::refuse_unstable(const char* where, const MemoryParams& p,
                                              Index length, Index dim) const {
    const MemoryStability& s = stability;
    const auto num = [](double v) {
        std::ostringstream os;
        os << v;  // 6 significant digits
        return os.str();
    };
    std::string widths;
    for (double w : p.widths) widths += (widths.empty() ? "" : ", ") + num(w);
    const MemoryReach reach = detail::reach_with_gain(p, length, s.chunk_gain);
    const std::string config = detail::concat(
        "(N = ", p.num_basis, ", widths {", widths, "}, L = ", length, ", M = ", p.num_samples,
        ", D = ", p.num_bins, ", tau = ", num(p.tau), ", lambda = ", num(p.ridge_lambda),
        ", e = ", dim, "; centre spacing ", num(reach.centre_spacing), ")");
    detail::require(
        reach.chunk_share > reach.resolution, where,
        "the memory cannot hold its own chunk: each chunk is fitted into (tau, 1], a span of ",
        num(reach.chunk_share), ", no wider than the memory's resolution ", num(reach.resolution),
        " (the largest of the centre spacing ", num(reach.centre_spacing), ", the narrowest width ",
        num(reach.narrowest_width), " and 1/M), so every chunk would ",
        "be stored as a blur of its L tokens ", config,
        ", expected 1 - tau > resolution: ", "lower tau below ", num(1.0 - reach.resolution),
        ", or use more basis functions and ",
        "narrower widths (memory_reach() gives these figures), or set stability = "
        "Stability::allow (the reference, unchecked)");
    detail::require(
        reach.chunk_gain >= kMinChunkGain, where,
        "the memory cannot hold its own chunk: a new chunk that differs from the past is kept ",
        "at ", num(reach.chunk_gain),
        " of its size at its own positions (the fit weighs its L = ", length,
        " tokens against M = ", p.num_samples, " samples of the past) ", config,
        ", expected a chunk gain >= ", kMinChunkGain,
        ": use longer chunks, fewer samples (num_samples) or a smaller ridge_lambda "
        "(memory_reach() gives these figures), or set stability = Stability::allow (the "
        "reference, unchecked)");
    if (detail::accepts(reach, s)) return;
    const bool diverges = !(s.uniform_radius < 1.0);
    // The nearest num_basis on each side (multiples of the number of widths) that passes
    // every check, everything else unchanged: at most 8 steps each way, and not above 4N.
    const Index step = static_cast<Index>(p.widths.size());
    Index below = 0, above = 0;
    for (Index k = 1; k <= 8 && (below == 0 || above == 0); ++k) {
        MemoryParams q = p;
        q.num_basis = p.num_basis - k * step;
        if (below == 0 && q.num_basis >= 2 * step && accepted(length, q)) below = q.num_basis;
        q.num_basis = p.num_basis + k * step;
        if (above == 0 && q.num_basis <= 4 * p.num_basis && accepted(length, q))
            above = q.num_basis;
    }
    std::string nearest;
    if (below > 0 || above > 0) {
        nearest = "; the nearest num_basis accepted with the other settings unchanged: ";
        if (below > 0) nearest += std::to_string(below) + (above > 0 ? " and " : "");
        if (above > 0) nearest += std::to_string(above);
    } else {
        nearest = detail::concat("; no num_basis within ", 8 * step, " of ", p.num_basis,
                                 " is accepted with the other settings unchanged");
    }
    const std::string advice =
        ": use more basis functions (num_basis) or wider widths, or set stability = "
        "Stability::stabilise (bounded, a deviation from the reference) or "
        "Stability::allow (the reference's unbounded update)" +
        nearest;
    detail::require(!diverges, where,
                    "the memory diverges: the uniform recurrence B <- A B + C X has spectral "
                    "radius ",
                    num(s.uniform_radius), " ", config, ", expected < 1", advice);
    detail::require(false, where,
                    "the memory diverges when the attention concentrates: ", to_string(p.sampling),
                    " sampling with every point in one place grows the memory by ",
                    num(s.concentrated_growth), " per chunk ", config,
                    ", expected <= ", kMaxConcentratedGrowth, advice);
}

#endif  // INFINITYFORMER_HEADER_ONLY

INFINITYFORMER_EXTERN_TEMPLATE(struct, MemoryOperators)

}  // namespace infinityformer
