/// @file sampling.hpp
/// @brief Where the old memory is read before each refit (∞-former §3.3): the sticky-memory
/// histogram of the attention densities, and the choice of the M sample points (uniform,
/// sticky, stratified).
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <unsupported/Eigen/SpecialFunctions>
#include <vector>

#include "detail/limits.hpp"
#include "detail/random.hpp"
#include "errors.hpp"
#include "hyperparams.hpp"

namespace infinityformer {

namespace detail {

/// The sticky-memory histogram into `p` (D), with `mass` and `cdf` as workspace (resized to
/// D and D + 1; no allocation once they have that size). Inputs already validated.
///
/// Precision follows Scalar. In double every Φ is std::erf in double (tail bins are
/// differences of Φ near 0 or 1). In float, as in a float model of the reference, Φ is
/// Eigen's vectorised float erf (absolute error ~1e-7, below float's resolution of the
/// probabilities) and the masses are summed in double; a difference rounded below 0 counts
/// as 0. The float path is about ten times faster: it matters, since every chunk evaluates
/// H·L·(D + 1) of them.
template <typename DerivedMu, typename DerivedSigma, typename DerivedP>
void histogram_into(const Eigen::MatrixBase<DerivedMu>& mu,
                    const Eigen::MatrixBase<DerivedSigma>& sigma, Eigen::Index num_bins,
                    std::vector<double>& mass, std::vector<double>& cdf,
                    Eigen::MatrixBase<DerivedP>& p) {
    using Scalar = typename DerivedP::Scalar;
    const auto d = static_cast<std::size_t>(num_bins);
    mass.assign(d, 0.0);
    cdf.resize(d + 1);
    const double inv_sqrt2 = 0.70710678118654752440084436210485;
    // Edges −1e-6, 1/D, …, (D−1)/D, 1 + 1e-6 (the reference's nudged ends).
    const auto edge = [d](std::size_t j) {
        return j == 0   ? -1e-6
               : j == d ? 1.0 + 1e-6
                        : static_cast<double>(j) / static_cast<double>(d);
    };
    constexpr Eigen::Index kMaxFloatEdges = 1024;
    if constexpr (std::is_same_v<Scalar, float>) {
        if (num_bins + 1 <= kMaxFloatEdges) {
            // Fixed-capacity arrays: on the stack, no allocation.
            using Edges = Eigen::Array<float, Eigen::Dynamic, 1, 0, kMaxFloatEdges, 1>;
            Edges e(num_bins + 1), c(num_bins + 1);
            for (std::size_t j = 0; j <= d; ++j)
                e[static_cast<Eigen::Index>(j)] = static_cast<float>(edge(j));
            Eigen::Map<Eigen::ArrayXd> m(mass.data(), num_bins);
            for (Eigen::Index q = 0; q < mu.rows(); ++q) {
                const float mq = static_cast<float>(mu(q, 0));
                const float scale =
                    static_cast<float>(inv_sqrt2 / static_cast<double>(sigma(q, 0)));
                c = ((e - mq) * scale).erf();
                m += (0.5f * (c.tail(num_bins) - c.head(num_bins)))
                         .max(0.0f)
                         .template cast<double>();
            }
        }
    }
    if (!std::is_same_v<Scalar, float> || num_bins + 1 > kMaxFloatEdges) {
        for (Eigen::Index q = 0; q < mu.rows(); ++q) {
            const double m = static_cast<double>(mu(q, 0));
            const double s = static_cast<double>(sigma(q, 0));
            for (std::size_t j = 0; j <= d; ++j)
                cdf[j] = 0.5 * (1.0 + std::erf((edge(j) - m) / s * inv_sqrt2));
            for (std::size_t j = 0; j < d; ++j) mass[j] += cdf[j + 1] - cdf[j];
        }
    }
    double total = 0.0;
    for (double v : mass) total += v;
    // A probability below the Scalar's smallest normal number is 0 (never a subnormal).
    const double tiny = static_cast<double>(std::numeric_limits<Scalar>::min());
    for (std::size_t j = 0; j < d; ++j) {
        const double v = total > 0.0 ? mass[j] / total : 0.0;
        p(static_cast<Eigen::Index>(j), 0) = v < tiny ? Scalar(0) : static_cast<Scalar>(v);
    }
}

}  // namespace detail

/// Sticky-memory histogram (∞-former §3.3, golden README §3.8): the mass of every density
/// N(μ_q, σ_q²) in each of D bins of [0, 1], summed over all densities, then normalised once.
/// Edges: −1e-6, 1/D, …, (D−1)/D, 1 + 1e-6 (the reference's nudged ends).
/// @param mu n means. @param sigma n standard deviations (> 0; note: not variances).
/// @param num_bins D ≥ 1.
/// @return D probabilities summing to 1, or all zeros if no density has mass in [0, 1]
///         (to double precision).
/// @throws infinityformer::invalid_argument on mismatched, non-finite or non-positive input.
template <typename Scalar, typename DerivedMu, typename DerivedSigma>
Eigen::Matrix<Scalar, Eigen::Dynamic, 1> sticky_histogram(
    const Eigen::MatrixBase<DerivedMu>& mu, const Eigen::MatrixBase<DerivedSigma>& sigma,
    Eigen::Index num_bins) {
    constexpr const char* where = "sticky_histogram";
    detail::require(num_bins >= 1, where, "num_bins is ", num_bins, ", expected >= 1");
    detail::require(mu.cols() == 1 && sigma.cols() == 1, where, "mu and sigma are ", mu.rows(), "x",
                    mu.cols(), " and ", sigma.rows(), "x", sigma.cols(),
                    ", expected column vectors");
    detail::check_shape(where, "sigma", sigma, mu.rows(), 1);
    detail::check_finite(where, "mu", mu);
    detail::check_finite(where, "sigma", sigma);
    for (Eigen::Index q = 0; q < sigma.rows(); ++q)
        detail::require(sigma(q, 0) > 0, where, "sigma[", q, "] is ", sigma(q, 0),
                        ", expected > 0");
    Eigen::Matrix<Scalar, Eigen::Dynamic, 1> p(num_bins);
    std::vector<double> mass, cdf;
    detail::histogram_into(mu, sigma, num_bins, mass, cdf, p);
    return p;
}

/// Chooses the M points at which the old memory is read (the Sampling modes), from the
/// densities observed since the last update. Holds only workspace: the observed densities
/// and the generator belong to the memory's state and are passed in.
template <typename Scalar>
class SamplePointChooser {
public:
    using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
    using Index = Eigen::Index;

    /// @param sampling the mode. @param num_samples M ≥ 1. @param num_bins D ≥ 1.
    /// @throws infinityformer::invalid_argument on an unknown mode, a count below 1 or
    ///         sizes beyond the machine's memory.
    SamplePointChooser(Sampling sampling, Index num_samples, Index num_bins)
        : sampling_(sampling), m_(num_samples), d_(num_bins) {
        constexpr const char* where = "SamplePointChooser::SamplePointChooser";
        const int mode = static_cast<int>(sampling);
        detail::require(mode >= static_cast<int>(Sampling::uniform) &&
                            mode <= static_cast<int>(Sampling::stratified),
                        where, "sampling is ", mode, ", expected a Sampling value");
        detail::require(num_samples >= 1, where, "num_samples is ", num_samples, ", expected >= 1");
        detail::require(num_bins >= 1, where, "num_bins is ", num_bins, ", expected >= 1");
        const double m = static_cast<double>(num_samples), d = static_cast<double>(num_bins);
        detail::require_allocatable(where, "the points and bins (num_samples, num_bins)",
                                    std::max(m, d + 1), 16 * (2 * m + 2 * d + 2));
        uniform_.resize(num_samples);
        for (Index i = 0; i < m_; ++i)
            uniform_[i] = static_cast<Scalar>(static_cast<double>(i + 1) / static_cast<double>(m_));
    }

    /// Moving copies (a few vectors of M and D): a moved-from chooser is unchanged.
    SamplePointChooser(const SamplePointChooser&) = default;
    SamplePointChooser& operator=(const SamplePointChooser&) = default;

    /// The uniform points i/M, i = 1…M.
    const Vector& uniform_points() const { return uniform_; }

    /// The M points into `out` for densities N(mu_q, sigma_q²) (sigma: standard deviations;
    /// empty: nothing observed). Sticky sampling draws from `rng`. Returns true if the points
    /// are the left edges of the bins listed, sorted, in bins() (sticky); the caller may
    /// then read the memory at the D edges only. Sticky and stratified fall back to the
    /// uniform points while no density has mass in [0, 1]. No allocation once sized.
    bool choose(const Vector& mu, const Vector& sigma, detail::Random& rng, Vector& out) {
        out.resize(m_);
        if (sampling_ == Sampling::uniform || mu.size() == 0) {
            out = uniform_;
            return false;
        }
        hist_.resize(d_);
        detail::histogram_into(mu, sigma, d_, mass_, cdf_, hist_);
        const Vector& p = hist_;
        bins_.resize(static_cast<std::size_t>(m_));
        if (!(p.sum() > Scalar(0))) {
            out = uniform_;
            return false;
        }
        cdf_[0] = 0.0;
        for (Index j = 0; j < d_; ++j)
            cdf_[static_cast<std::size_t>(j + 1)] =
                cdf_[static_cast<std::size_t>(j)] + static_cast<double>(p[j]);
        const double total = cdf_.back();
        for (Index i = 0; i < m_; ++i) {
            const double u = sampling_ == Sampling::sticky
                                 ? rng.uniform() * total
                                 : (static_cast<double>(i) + 0.5) / static_cast<double>(m_) * total;
            // Bin j with cdf[j] <= u < cdf[j+1] (never an empty bin).
            auto it = std::upper_bound(cdf_.begin() + 1, cdf_.end(), u);
            Index j = std::min<Index>(static_cast<Index>(it - cdf_.begin()) - 1, d_ - 1);
            while (j > 0 && p[j] <= Scalar(0)) --j;
            double point = static_cast<double>(j) / static_cast<double>(d_);
            if (sampling_ == Sampling::stratified && p[j] > Scalar(0)) {
                const double frac =
                    (u - cdf_[static_cast<std::size_t>(j)]) / static_cast<double>(p[j]);
                point += std::clamp(frac, 0.0, 1.0) / static_cast<double>(d_);
            }
            out[i] = static_cast<Scalar>(point);
            if (sampling_ == Sampling::sticky) bins_[static_cast<std::size_t>(i)] = j;
        }
        std::sort(out.data(), out.data() + m_);
        std::sort(bins_.begin(), bins_.end());  // the same order as the sorted points
        return sampling_ == Sampling::sticky;
    }

    /// The drawn bins of the last choose() that returned true (M, sorted).
    const std::vector<Index>& bins() const { return bins_; }

    /// The histogram of densities (D; zeros if none), as choose() builds it.
    Vector histogram(const Vector& mu, const Vector& sigma) const {
        Vector p(d_);
        if (mu.size() == 0) {
            p.setZero();
        } else {
            std::vector<double> mass, cdf;
            detail::histogram_into(mu, sigma, d_, mass, cdf, p);
        }
        return p;
    }

private:
    Sampling sampling_;
    Index m_;
    Index d_;
    Vector uniform_;
    // workspace
    Vector hist_;
    std::vector<double> mass_, cdf_;
    std::vector<Index> bins_;
};

}  // namespace infinityformer
