/// @file stability.hpp
/// @brief Whether the memory's recurrence stays bounded: the three figures computed with a
/// configuration's operators (MemoryStability, memory_operators.hpp) and the limits it is
/// held to.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <vector>

#include "basis.hpp"
#include "hyperparams.hpp"
#include "reach.hpp"
#include "ridge.hpp"

namespace infinityformer {

/// How far the memory's update can amplify the old memory, for one configuration (computed
/// in double with its operators, shared by every memory of that configuration). Every update is B ←
/// G_pastᵀ Ψ(s) B + G_newᵀ X with the M points s.
struct MemoryStability {
    /// ρ(A), the spectral radius of A = G_pastᵀ Ψ(i/M): the growth per chunk of the uniform
    /// recurrence (uniform sampling, and sticky or stratified before any density is
    /// observed). Bounded for every input if and only if below 1. Estimated by power
    /// iteration (detail::spectral_radius), within 1 % of the exact value.
    double uniform_radius = 0.0;
    /// The growth per chunk when all M points fall in one place, the most concentrated
    /// reading the sampling can make: sticky, max over the bins b of |ψ(b/D)ᵀ G_pastᵀ 1|
    /// (every sample drawn from bin b, the memory a constant); stratified, the same over
    /// 1,024 points of [0, 1]; uniform, equal to uniform_radius. Above 1 (the paper's
    /// configurations give 1.01–1.11), a stream whose attention stays on one region grows.
    double concentrated_growth = 0.0;
    /// κ = the largest column sum of |G| over both fits: any fit of values bounded by
    /// x_max has |B| ≤ κ·x_max entrywise. The run-time bound (Stability) is
    /// kBoundSlack·κ times the largest |x| stored since the last reset.
    double fit_bound = 0.0;
    /// MemoryReach::chunk_gain (reach.hpp): the mean value read back at a new chunk's
    /// positions right after storing a chunk of ones over a zero memory.
    double chunk_gain = 0.0;
};

/// The run-time bound on the coefficients, in units of κ·max|x| (MemoryStability::
/// fit_bound): an update that would take max |B| above it is taken to diverge. In bounded
/// streams of resolved configurations max |B| stays below 8 κ·max|x| (docs/design.md, the
/// stability table); a memory beyond 16 is dominated by its amplified past, not by what
/// it stored.
constexpr double kBoundSlack = 16.0;

/// Configurations whose concentrated growth exceeds this are refused under
/// Stability::refuse: a stream whose attention stays on one region would grow by more
/// than 50 % per chunk (57× in ten chunks). The paper's configurations give 1.01–1.11;
/// slower growth is caught at run time by the bound κ·max|x|.
constexpr double kMaxConcentratedGrowth = 1.5;

namespace detail {

/// The spectral radius of a square matrix by power iteration: ρ ≈ exp(mean log ‖A v_k‖)
/// over the second half of 2K steps of normalised v_k (K = 128, or 512 up to 64 × 64,
/// where complex pairs make the norms oscillate more and a step costs little). Within 1 %
/// of Eigen's EigenSolver on every configuration of docs/design.md's stability table (which
/// tests/test_stability.cpp checks), without an O(n³) decomposition that takes seconds at
/// n = 512 and a heavy template in every file that includes the memory.
inline double spectral_radius(const Eigen::MatrixXd& a) {
    const Eigen::Index n = a.rows();
    if (n == 0) return 0.0;
    Eigen::VectorXd v(n), w(n);
    for (Eigen::Index i = 0; i < n; ++i)
        v[i] = 1.0 + 0.5 * std::sin(1.0 + 0.7 * static_cast<double>(i));
    v.normalize();
    const int half = n <= 64 ? 512 : 128;
    double sum_log = 0.0;
    for (int k = 0; k < 2 * half; ++k) {
        w.noalias() = a * v;
        const double norm = w.norm();
        if (!(norm > 0.0)) return 0.0;  // nilpotent on this vector
        if (k >= half) sum_log += std::log(norm);
        v = w / norm;
    }
    return std::exp(sum_log / half);
}

/// The three figures of MemoryStability for the given fits (G_inf's first M rows multiply
/// the old memory), computed in double.
template <typename Scalar>
MemoryStability analyse_memory(const GaussianBasis<Scalar>& basis, const RidgeFit<Scalar>& first,
                               const RidgeFit<Scalar>& inf, const MemoryParams& p) {
    const Eigen::Index m = p.num_samples;
    const Eigen::MatrixXd gp = inf.G().topRows(m).template cast<double>();  // M × N
    const GaussianBasis<double> b(basis.centers().template cast<double>(),
                                  basis.widths().template cast<double>());
    Eigen::VectorXd u(m);
    for (Eigen::Index i = 0; i < m; ++i) u[i] = static_cast<double>(i + 1) / static_cast<double>(m);
    const Eigen::MatrixXd psi_u = b.evaluate(u);  // M × N
    MemoryStability s;
    // A = G_pᵀ Ψ(u) (N × N) and Ψ(u) G_pᵀ (M × M) have the same non-zero eigenvalues.
    s.uniform_radius = m < b.size() ? spectral_radius(psi_u * gp.transpose())
                                    : spectral_radius(gp.transpose() * psi_u);
    const Eigen::VectorXd c = gp.colwise().sum().transpose();  // G_pᵀ 1, N
    if (p.sampling == Sampling::uniform) {
        s.concentrated_growth = s.uniform_radius;
    } else {
        const Eigen::Index points = p.sampling == Sampling::sticky ? p.num_bins : 1024;
        Eigen::VectorXd t(points);
        for (Eigen::Index j = 0; j < points; ++j)
            t[j] = p.sampling == Sampling::sticky
                       ? static_cast<double>(j) / static_cast<double>(p.num_bins)
                       : static_cast<double>(j) / static_cast<double>(points - 1);
        s.concentrated_growth = (b.evaluate(t) * c).cwiseAbs().maxCoeff();
    }
    const Eigen::Index length = inf.G().rows() - m;
    s.chunk_gain = chunk_gain(b, inf.G().middleRows(m, length).template cast<double>(), p.tau);
    s.fit_bound = std::max(inf.G().template cast<double>().cwiseAbs().colwise().sum().maxCoeff(),
                           first.G().template cast<double>().cwiseAbs().colwise().sum().maxCoeff());
    return s;
}

/// Stability::refuse's rule, from a configuration's figures: it holds its own chunk, its
/// uniform recurrence contracts, and its concentrated growth is at most
/// kMaxConcentratedGrowth (MemoryOperators::refuse_unstable() says which fails).
inline bool accepts(const MemoryReach& reach, const MemoryStability& s) {
    return reach.holds_own_chunk && s.uniform_radius < 1.0 &&
           s.concentrated_growth <= kMaxConcentratedGrowth;
}

}  // namespace detail
}  // namespace infinityformer
