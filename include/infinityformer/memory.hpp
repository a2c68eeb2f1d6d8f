/// @file memory.hpp
/// @brief The unbounded long-term memory: τ-compression of the past into a fixed number of
/// basis coefficients, with uniform, sticky or stratified reading of the old memory
/// (∞-former, Martins et al. 2022, §3.2–3.3).
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <unsupported/Eigen/SpecialFunctions>
#include <vector>

#include "basis.hpp"
#include "detail/random.hpp"
#include "errors.hpp"
#include "params.hpp"
#include "ridge.hpp"

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
    for (std::size_t j = 0; j < d; ++j)
        p(static_cast<Eigen::Index>(j), 0) =
            total > 0.0 ? static_cast<Scalar>(mass[j] / total) : Scalar(0);
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

/// The unbounded continuous long-term memory of one stream.
///
/// State: the coefficients B (N × e) of x̄(t) = Bᵀψ(t), or nothing before the first chunk.
/// update() with a chunk X (L × e):
///  - first chunk: B ← G_firstᵀ X, the vectors at the midpoints (j + ½)/L;
///  - later chunks: the old memory is read at M sorted points s (X_past = Ψ(s) B, M × e),
///    placed at τ·i/M, the new chunk at τ + (1 − τ)·j/L, and B ← G_infᵀ [X_past; X]:
///    the past is compressed into [0, τ], the chunk fills (τ, 1].
/// The M points are i/M (uniform), drawn from the sticky-memory histogram of the densities
/// passed to observe() (sticky; left edges of the drawn bins, sorted), or the histogram's
/// quantiles (i − ½)/M (stratified); update(X, points) takes them explicitly. Sticky and
/// stratified fall back to uniform points while no densities with mass in [0, 1] have been
/// observed. The memory costs N × e scalars whatever the length of the stream.
///
/// Cost per chunk: the old memory is not read at the M points when that can be avoided.
/// With the uniform points the update is the fixed linear recurrence B ← A B + G_newᵀ X,
/// A = G_pastᵀ Ψ(s) (N × N, built in double by the constructor). Sticky points are bin
/// edges j/D, so G_pastᵀ Ψ(s) B = (G_pastᵀ S)(Ψ(edges) B), S the M × D selection of the
/// drawn bins: two products with D instead of M rows. Other points take Ψ(s) B, then G_pastᵀ.
///
/// Chunks must have exactly L = chunk_length vectors (the operators are built for L).
/// Odd L, which the reference cannot stream, uses the same position construction
/// (unbounded_positions()).
///
/// \tparam Scalar_ float or double.
template <typename Scalar_>
class LongTermMemory {
    static_assert(std::is_floating_point_v<Scalar_>, "LongTermMemory needs float or double");

public:
    using Scalar = Scalar_;
    using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
    using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    using Index = Eigen::Index;

    /// @param dim e ≥ 1, width of the memory vectors.
    /// @param chunk_length L ≥ 1, vectors per chunk.
    /// @param params validated; num_basis, widths, ridge_lambda, tau, num_samples, num_bins,
    ///        sampling, reset_after_tokens and seed are used.
    LongTermMemory(Index dim, Index chunk_length, const LongTermParams& params)
        : params_(validated(params, dim, chunk_length)),
          dim_(dim),
          length_(chunk_length),
          basis_(GaussianBasis<Scalar>::default_family(params.num_basis, params.widths)),
          first_(RidgeFit<Scalar>::single_chunk(basis_, chunk_length, params.ridge_lambda)),
          inf_(RidgeFit<Scalar>::unbounded(basis_, chunk_length, params.num_samples, params.tau,
                                           params.ridge_lambda)),
          rng_(params.seed) {
        const Index m = params.num_samples;
        uniform_points_.resize(m);
        for (Index i = 0; i < m; ++i)
            uniform_points_[i] =
                static_cast<Scalar>(static_cast<double>(i + 1) / static_cast<double>(m));
        uniform_op_ = std::make_shared<const Matrix>(uniform_operator());
        reset();
    }

    Index dim() const { return dim_; }
    Index chunk_length() const { return length_; }
    Index num_basis() const { return basis_.size(); }
    Index num_samples() const { return params_.num_samples; }
    const LongTermParams& params() const { return params_; }
    const GaussianBasis<Scalar>& basis() const { return basis_; }
    /// Single-chunk operator (L × N), used for the first chunk.
    const RidgeFit<Scalar>& first_fit() const { return first_; }
    /// Unbounded-memory operator ((M + L) × N).
    const RidgeFit<Scalar>& unbounded_fit() const { return inf_; }

    /// True before the first chunk and after reset().
    bool empty() const { return empty_; }
    /// B, N × e (zeros while empty()).
    const Matrix& coefficients() const { return B_; }
    /// Tokens stored since the last reset.
    Index tokens_stored() const { return tokens_; }

    /// Points at which the old memory was read by the last update (M; empty for a first
    /// chunk).
    const Vector& last_sample_points() const { return last_points_; }
    /// The values of the old memory at those points (M × e; 0 × e for a first chunk),
    /// computed on demand: the update itself does not always form them.
    Matrix last_past() const {
        if (last_points_.size() == 0) return Matrix(0, dim_);
        return basis_.evaluate(last_points_) * B_prev_;
    }

    /// Stores a chunk. @param X L × e, finite.
    /// @throws infinityformer::invalid_argument (memory unchanged).
    void update(const Eigen::Ref<const Matrix>& X) {
        check_chunk("LongTermMemory::update", X);
        maybe_reset();
        if (empty_) {
            store(X, nullptr, false);
        } else {
            choose_points(points_);
            const Eigen::Ref<const Vector> points(points_);
            store(X, &points, bins_valid_);
        }
    }

    /// Stores a chunk, reading the old memory at the given points instead of choosing them
    /// (replay, tests). The points are ignored for a first chunk.
    /// @param X L × e. @param sample_points M finite points.
    void update(const Eigen::Ref<const Matrix>& X, const Eigen::Ref<const Vector>& sample_points) {
        constexpr const char* where = "LongTermMemory::update";
        check_chunk(where, X);
        detail::check_matrix(where, "sample_points", sample_points, params_.num_samples, 1);
        maybe_reset();
        store(X, empty_ ? nullptr : &sample_points, false);
    }

    /// Records the attention densities of the last chunk's queries (all heads), from which
    /// sticky and stratified sampling build their histogram at the next update.
    /// @param mu n means. @param sigma_sq n variances > 0.
    void observe(const Eigen::Ref<const Vector>& mu, const Eigen::Ref<const Vector>& sigma_sq) {
        constexpr const char* where = "LongTermMemory::observe";
        detail::check_finite(where, "mu", mu);
        detail::check_shape(where, "sigma_sq", sigma_sq, mu.size(), 1);
        detail::check_finite(where, "sigma_sq", sigma_sq);
        for (Index q = 0; q < sigma_sq.size(); ++q)
            detail::require(sigma_sq[q] > Scalar(0), where, "sigma_sq[", q, "] is ", sigma_sq[q],
                            ", expected > 0");
        obs_mu_ = mu;
        obs_sigma_ = sigma_sq.cwiseSqrt();
    }

    /// Histogram of the observed densities over num_bins bins (zeros if none observed).
    Vector histogram() const {
        Vector p(params_.num_bins);
        if (obs_mu_.size() == 0) {
            p.setZero();
        } else {
            std::vector<double> mass, cdf;
            detail::histogram_into(obs_mu_, obs_sigma_, params_.num_bins, mass, cdf, p);
        }
        return p;
    }

    /// The M points the next update would read the memory at; for sticky sampling this
    /// draws from the generator (so it advances it).
    Vector next_sample_points() {
        Vector out(params_.num_samples);
        choose_points(out);
        return out;
    }

    /// Backward of the last update's fit: ∂ℓ/∂X = G_new ∂ℓ/∂B, with G_new the rows of the
    /// operator that multiplied the new chunk (G_first for a first chunk, the last L rows of
    /// G_inf otherwise). The old memory is a constant (truncated back-propagation).
    /// @param dB N × e. @param dX L × e.
    /// @throws infinityformer::logic_error before any update.
    void backward(const Eigen::Ref<const Matrix>& dB, Eigen::Ref<Matrix> dX) const {
        constexpr const char* where = "LongTermMemory::backward";
        if (empty_)
            throw infinityformer::logic_error(
                detail::concat("[infinityformer] ", where,
                               ": no update() to differentiate, expected a call "
                               "to update() first"));
        detail::check_matrix(where, "dB", dB, num_basis(), dim_);
        detail::check_shape(where, "dX", dX, length_, dim_);
        backward_unchecked(dB, dX);
    }
    void backward_unchecked(const Eigen::Ref<const Matrix>& dB, Eigen::Ref<Matrix> dX) const {
        if (last_points_.size() == 0)
            dX.noalias() = first_.G() * dB;
        else
            dX.noalias() = inf_.G().bottomRows(length_) * dB;
    }

    /// The continuous memory at T positions: x̄(t) = Bᵀψ(t), returned as T × e rows.
    Matrix evaluate(const Eigen::Ref<const Vector>& t) const {
        const Matrix psi = basis_.evaluate(t);
        return psi * B_;
    }

    /// Forgets everything stored (and the observed densities); the generator continues.
    void reset() {
        empty_ = true;
        B_.setZero(num_basis(), dim_);
        tokens_ = 0;
        obs_mu_.resize(0);
        obs_sigma_.resize(0);
        last_points_.resize(0);
        B_prev_.resize(0, dim_);
    }

    /// Re-seeds the sticky-sampling generator.
    void seed(std::uint64_t s) { rng_.seed(s); }

private:
    static const LongTermParams& validated(const LongTermParams& p, Index dim, Index length) {
        constexpr const char* where = "LongTermMemory::LongTermMemory";
        p.validate();
        detail::require(dim >= 1, where, "dim is ", dim, ", expected >= 1");
        detail::require(length >= 1, where, "chunk_length is ", length, ", expected >= 1");
        return p;
    }

    void check_chunk(const char* where, const Eigen::Ref<const Matrix>& X) const {
        detail::check_matrix(where, "X", X, length_, dim_);
    }

    // The M points for the next update, into `out` (M); workspace members, no allocation
    // once they have their sizes.
    void choose_points(Vector& out) {
        const Index m = params_.num_samples;
        const Index d = params_.num_bins;
        out.resize(m);
        bins_valid_ = false;
        if (params_.sampling == Sampling::uniform || obs_mu_.size() == 0) {
            out = uniform_points_;
            return;
        }
        hist_.resize(d);
        detail::histogram_into(obs_mu_, obs_sigma_, d, mass_, cdf_, hist_);
        const Vector& p = hist_;
        bins_.resize(static_cast<std::size_t>(m));
        if (!(p.sum() > Scalar(0))) {
            out = uniform_points_;
            return;
        }
        cdf_[0] = 0.0;
        for (Index j = 0; j < d; ++j)
            cdf_[static_cast<std::size_t>(j + 1)] =
                cdf_[static_cast<std::size_t>(j)] + static_cast<double>(p[j]);
        const double total = cdf_.back();
        for (Index i = 0; i < m; ++i) {
            const double u = params_.sampling == Sampling::sticky
                                 ? rng_.uniform() * total
                                 : (static_cast<double>(i) + 0.5) / static_cast<double>(m) * total;
            // Bin j with cdf[j] <= u < cdf[j+1] (never an empty bin).
            auto it = std::upper_bound(cdf_.begin() + 1, cdf_.end(), u);
            Index j = std::min<Index>(static_cast<Index>(it - cdf_.begin()) - 1, d - 1);
            while (j > 0 && p[j] <= Scalar(0)) --j;
            double point = static_cast<double>(j) / static_cast<double>(d);
            if (params_.sampling == Sampling::stratified && p[j] > Scalar(0)) {
                const double frac =
                    (u - cdf_[static_cast<std::size_t>(j)]) / static_cast<double>(p[j]);
                point += std::clamp(frac, 0.0, 1.0) / static_cast<double>(d);
            }
            out[i] = static_cast<Scalar>(point);
            if (params_.sampling == Sampling::sticky) bins_[static_cast<std::size_t>(i)] = j;
        }
        std::sort(out.data(), out.data() + m);
        std::sort(bins_.begin(), bins_.end());  // the same order as the sorted points
        // Sticky points are left bin edges; the update can then read the memory at the D
        // edges only (the order of the points does not matter to it).
        bins_valid_ = params_.sampling == Sampling::sticky;
    }

    void maybe_reset() {
        if (params_.reset_after_tokens > 0 && tokens_ >= params_.reset_after_tokens) reset();
    }

    // points == nullptr: first chunk. from_bins: the points are the left edges of bins_.
    void store(const Eigen::Ref<const Matrix>& X, const Eigen::Ref<const Vector>* points,
               bool from_bins) {
        B_new_.resize(num_basis(), dim_);
        if (points == nullptr) {
            B_new_.noalias() = first_.G().transpose() * X;
            last_points_.resize(0);
        } else {
            const Index m = params_.num_samples;
            const Index d = params_.num_bins;
            last_points_ = *points;
            const Matrix& G = inf_.G();
            if (last_points_ == uniform_points_) {
                B_new_.noalias() = *uniform_op_ * B_;
            } else if (from_bins && d < m) {
                if (edge_psi_.rows() != d) {
                    Vector edges(d);
                    for (Index j = 0; j < d; ++j)
                        edges[j] =
                            static_cast<Scalar>(static_cast<double>(j) / static_cast<double>(d));
                    edge_psi_ = basis_.evaluate(edges);
                }
                edge_past_.noalias() = edge_psi_ * B_;  // D × e
                gathered_.setZero(num_basis(), d);      // G_pastᵀ S
                for (Index i = 0; i < m; ++i)
                    gathered_.col(bins_[static_cast<std::size_t>(i)]) += G.row(i).transpose();
                B_new_.noalias() = gathered_ * edge_past_;
            } else {
                psi_.resize(m, num_basis());
                basis_.evaluate(last_points_, psi_);
                past_.noalias() = psi_ * B_;
                B_new_.noalias() = G.topRows(m).transpose() * past_;
            }
            B_new_.noalias() += G.bottomRows(length_).transpose() * X;
        }
        // Rotate: B_prev_ ← B_, B_ ← B_new_ (no copies).
        B_prev_.swap(B_);
        B_.swap(B_new_);
        empty_ = false;
        tokens_ += length_;
    }

    // A = G_pastᵀ Ψ(uniform points), N × N, in double then rounded.
    Matrix uniform_operator() const {
        const Index m = params_.num_samples;
        const Eigen::MatrixXd Gp = inf_.G().topRows(m).template cast<double>();
        const Eigen::MatrixXd psi = basis_.evaluate(uniform_points_).template cast<double>();
        return (Gp.transpose() * psi).template cast<Scalar>();
    }

    LongTermParams params_;
    Index dim_;
    Index length_;
    GaussianBasis<Scalar> basis_;
    RidgeFit<Scalar> first_;
    RidgeFit<Scalar> inf_;
    detail::Random rng_;
    Vector uniform_points_;
    bool empty_ = true;
    Matrix B_;
    Index tokens_ = 0;
    Vector obs_mu_, obs_sigma_;
    Vector last_points_;
    Matrix B_prev_;  // the memory before the last update (for last_past())
    std::shared_ptr<const Matrix> uniform_op_;  // A of the uniform recurrence (shared by copies)
    Matrix edge_psi_;                           // Ψ at the D bin edges (sticky), built lazily
    // workspace of update(): no allocation once sized
    Vector points_, hist_;
    Matrix psi_, past_, B_new_, edge_past_, gathered_;
    std::vector<double> mass_, cdf_;
    std::vector<Index> bins_;
    bool bins_valid_ = false;
};

using LongTermMemoryd = LongTermMemory<double>;
using LongTermMemoryf = LongTermMemory<float>;

}  // namespace infinityformer
