/// @file ridge.hpp
/// @brief Ridge-regression fitting of a signal by the basis (∞-former, §3.1 eq. 5), the
/// authors' position layouts, and a per-configuration cache of the fitting operators.
#pragma once

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <vector>

#include "basis.hpp"
#include "errors.hpp"

namespace infinityformer {

/// Positions of a fit: the full list (zero-target pads included, in order) and which
/// contiguous run of them carries the real vectors.
struct FitPositions {
    std::vector<double> all;      ///< every position, pads included, ascending
    Eigen::Index first_kept = 0;  ///< index in `all` of the first real position
    Eigen::Index num_kept = 0;    ///< number of real positions
};

namespace detail {

/// linspace(a, b, n)[m] as the reference computes it: a + m·h below the middle,
/// b − (n−1−m)·h from the middle on, h = (b − a)/(n − 1); both ends exact.
inline double linspace_at(double a, double b, Eigen::Index n, Eigen::Index m) {
    if (n == 1) return a;
    const double h = (b - a) / static_cast<double>(n - 1);
    return (2 * m < n) ? a + static_cast<double>(m) * h : b - static_cast<double>(n - 1 - m) * h;
}

}  // namespace detail

/// The single-chunk (finite memory, and first chunk of the unbounded memory) positions:
/// L real vectors at the midpoints (j + ½)/L, with a = ⌊L/2⌋ zero-target pads continuing
/// the same grid on each side (P = L + 2a positions). Works for odd L.
/// @throws infinityformer::invalid_argument if length < 1.
inline FitPositions single_chunk_positions(Eigen::Index length) {
    detail::require(length >= 1, "single_chunk_positions", "length is ", length, ", expected >= 1");
    const Eigen::Index a = length / 2;
    const Eigen::Index p = length + 2 * a;
    const double l = static_cast<double>(length);
    // The reference's linspace endpoints: even L: ±(1/(2L)); odd L: ±(1/L).
    const double off = (length % 2 == 0) ? 1.0 / (2.0 * l) : 1.0 / l;
    FitPositions pos;
    pos.all.resize(static_cast<std::size_t>(p));
    for (Eigen::Index m = 0; m < p; ++m)
        pos.all[static_cast<std::size_t>(m)] = detail::linspace_at(-0.5 + off, 1.5 - off, p, m);
    pos.first_kept = a;
    pos.num_kept = length;
    return pos;
}

/// The unbounded-memory positions (∞-former §3.2, with the reference's exact choices):
/// M compressed old samples at τ·i/M (i = 1…M), the L new vectors at τ + (1−τ)·j/L
/// (j = 1…L), plus zero-target pads: the points of linspace(−½ + s, 3/2 − s, 2P) below 0
/// and above 1, s = 1/(2L + M), P = M + L.
///
/// The real positions are kept whatever the number of pads. For even L this is the
/// reference's row slice ⌊P/2⌋…⌊P/2⌋+P−1 (the pads number ⌊P/2⌋ on each side); for odd L,
/// which the reference cannot stream, the same construction is used unchanged.
/// @throws infinityformer::invalid_argument on length < 1, num_samples < 1, τ ∉ (0, 1).
inline FitPositions unbounded_positions(Eigen::Index length, Eigen::Index num_samples, double tau) {
    constexpr const char* where = "unbounded_positions";
    detail::require(length >= 1, where, "length is ", length, ", expected >= 1");
    detail::require(num_samples >= 1, where, "num_samples is ", num_samples, ", expected >= 1");
    detail::require(tau > 0.0 && tau < 1.0, where, "tau is ", tau, ", expected 0 < tau < 1");
    const Eigen::Index p = num_samples + length;
    const double s = 1.0 / static_cast<double>(2 * length + num_samples);
    std::vector<double> left, right;
    for (Eigen::Index m = 0; m < 2 * p; ++m) {
        const double g = detail::linspace_at(-0.5 + s, 1.5 - s, 2 * p, m);
        if (g < 0.0) left.push_back(g);
        if (g > 1.0) right.push_back(g);
    }
    FitPositions pos;
    pos.all = left;
    for (Eigen::Index i = 1; i <= num_samples; ++i)
        pos.all.push_back(tau * static_cast<double>(i) / static_cast<double>(num_samples));
    for (Eigen::Index j = 1; j <= length; ++j)
        pos.all.push_back(tau + (1.0 - tau) * static_cast<double>(j) / static_cast<double>(length));
    pos.all.insert(pos.all.end(), right.begin(), right.end());
    pos.first_kept = static_cast<Eigen::Index>(left.size());
    pos.num_kept = p;
    return pos;
}

/// Ridge regression of a signal sampled at fixed positions (∞-former eq. 5):
///   B = argmin ‖Fᵀ B − Y‖² + λ‖B‖²  ⇒  G = Fᵀ (F Fᵀ + λ I)⁻¹,  B = Gᵀ Y,
/// with F[k, p] = ψ_k(t_p) over all positions, Y zero at the pads. Only the rows of G that
/// belong to the real positions are kept (G is num_kept × N).
///
/// G is computed in double whatever Scalar is (Cholesky factorisation of the N×N matrix
/// F Fᵀ + λI, never an explicit inverse) and then rounded to Scalar, so a float fit loses no
/// accuracy to the conditioning of F Fᵀ + λI (10³–10⁴ at the paper's settings). Operators
/// are shared: constructing the same configuration twice (same centres, widths, positions
/// and λ) reuses the first operator.
template <typename Scalar_>
class RidgeFit {
    static_assert(std::is_floating_point_v<Scalar_>, "RidgeFit needs float or double");

public:
    using Scalar = Scalar_;
    using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
    using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    using Index = Eigen::Index;

    /// @param basis the N basis functions.
    /// @param positions all positions (pads included) and the run of real ones.
    /// @param ridge_lambda λ > 0.
    /// @throws infinityformer::invalid_argument on bad positions or λ;
    ///         infinityformer::runtime_error if the factorisation fails.
    RidgeFit(const GaussianBasis<Scalar>& basis, const FitPositions& positions, double ridge_lambda)
        : positions_(positions), lambda_(ridge_lambda) {
        constexpr const char* where = "RidgeFit::RidgeFit";
        detail::require(std::isfinite(ridge_lambda) && ridge_lambda > 0.0, where,
                        "ridge_lambda is ", ridge_lambda, ", expected > 0");
        const auto total = static_cast<Index>(positions.all.size());
        detail::require(positions.num_kept >= 1 && positions.first_kept >= 0 &&
                            positions.first_kept + positions.num_kept <= total,
                        where, "kept positions [", positions.first_kept, ", ",
                        positions.first_kept + positions.num_kept, ") are not within the ", total,
                        " positions");
        for (std::size_t i = 0; i < positions.all.size(); ++i)
            detail::require(std::isfinite(positions.all[i]), where, "positions[", i, "] is ",
                            positions.all[i], ", expected a finite value");
        G_ = cached_operator(basis, positions, ridge_lambda);
    }

    /// The single-chunk operator for chunks of `length` vectors (single_chunk_positions()).
    static RidgeFit single_chunk(const GaussianBasis<Scalar>& basis, Index length,
                                 double ridge_lambda) {
        return RidgeFit(basis, single_chunk_positions(length), ridge_lambda);
    }

    /// The unbounded-memory operator (unbounded_positions()): rows 0…M−1 multiply the
    /// compressed old memory, rows M…M+L−1 the new chunk.
    static RidgeFit unbounded(const GaussianBasis<Scalar>& basis, Index length, Index num_samples,
                              double tau, double ridge_lambda) {
        return RidgeFit(basis, unbounded_positions(length, num_samples, tau), ridge_lambda);
    }

    /// The operator G (num_kept × N): B = Gᵀ Y.
    const Matrix& G() const { return *G_; }
    const FitPositions& positions() const { return positions_; }
    double ridge_lambda() const { return lambda_; }
    Index num_rows() const { return G_->rows(); }
    Index num_basis() const { return G_->cols(); }

    /// B = Gᵀ Y. @param Y num_kept × d, finite. @param B N × d.
    void fit(const Eigen::Ref<const Matrix>& Y, Eigen::Ref<Matrix> B) const {
        constexpr const char* where = "RidgeFit::fit";
        detail::require(Y.rows() == num_rows(), where, "Y has ", Y.rows(), " rows, expected ",
                        num_rows());
        detail::check_finite(where, "Y", Y);
        detail::check_shape(where, "B", B, num_basis(), Y.cols());
        B.noalias() = G_->transpose() * Y;
    }
    Matrix fit(const Eigen::Ref<const Matrix>& Y) const {
        Matrix B(num_basis(), Y.cols());
        fit(Y, B);
        return B;
    }

private:
    using Key = std::tuple<std::vector<double>, std::vector<double>, std::vector<double>, Index,
                           Index, double>;

    static std::shared_ptr<const Matrix> cached_operator(const GaussianBasis<Scalar>& basis,
                                                         const FitPositions& pos, double lambda) {
        const Index n = basis.size();
        std::vector<double> c(static_cast<std::size_t>(n)), s(static_cast<std::size_t>(n));
        for (Index k = 0; k < n; ++k) {
            c[static_cast<std::size_t>(k)] = static_cast<double>(basis.centers()[k]);
            s[static_cast<std::size_t>(k)] = static_cast<double>(basis.widths()[k]);
        }
        Key key(c, s, pos.all, pos.first_kept, pos.num_kept, lambda);
        static std::mutex mutex;
        static std::map<Key, std::weak_ptr<const Matrix>> cache;
        std::lock_guard<std::mutex> lock(mutex);
        auto it = cache.find(key);
        if (it != cache.end())
            if (auto alive = it->second.lock()) return alive;
        auto g = std::make_shared<const Matrix>(compute(c, s, pos, lambda));
        cache[key] = g;
        return g;
    }

    static Matrix compute(const std::vector<double>& c, const std::vector<double>& s,
                          const FitPositions& pos, double lambda) {
        const auto n = static_cast<Index>(c.size());
        const auto total = static_cast<Index>(pos.all.size());
        // F (N × total) in double.
        const GaussianBasis<double> basis(Eigen::Map<const Eigen::VectorXd>(c.data(), n),
                                          Eigen::Map<const Eigen::VectorXd>(s.data(), n));
        const Eigen::MatrixXd F =
            basis.evaluate(Eigen::Map<const Eigen::VectorXd>(pos.all.data(), total)).transpose();
        Eigen::MatrixXd A = Eigen::MatrixXd::Identity(n, n) * lambda;
        A.selfadjointView<Eigen::Lower>().rankUpdate(F);
        Eigen::LLT<Eigen::MatrixXd, Eigen::Lower> llt(A);
        if (llt.info() != Eigen::Success)
            throw infinityformer::runtime_error(
                "[infinityformer] RidgeFit: Cholesky factorisation of F F^T + lambda I failed");
        // Gᵀ = (F Fᵀ + λI)⁻¹ F_kept   (N × num_kept)
        Eigen::MatrixXd Gt = llt.solve(F.middleCols(pos.first_kept, pos.num_kept));
        return Gt.transpose().template cast<Scalar>();
    }

    FitPositions positions_;
    double lambda_;
    std::shared_ptr<const Matrix> G_;
};

using RidgeFitd = RidgeFit<double>;
using RidgeFitf = RidgeFit<float>;

}  // namespace infinityformer
