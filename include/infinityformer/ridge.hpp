/// @file ridge.hpp
/// @brief Ridge-regression fitting of a signal by the basis at given positions (∞-former,
/// §3.1 eq. 5). The memory's position layouts are in positions.hpp; its operators, fits
/// included, are built once per configuration (memory_operators.hpp).
#pragma once

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <memory>
#include <type_traits>
#include <vector>

#include "basis.hpp"
#include "detail/config.hpp"
#include "detail/limits.hpp"
#include "detail/math.hpp"
#include "errors.hpp"

namespace infinityformer {

/// Positions of a fit: the full list (zero-target pads included, in order) and which
/// contiguous run of them carries the real vectors.
struct FitPositions {
    std::vector<double> all;      ///< every position, pads included, ascending
    Eigen::Index first_kept = 0;  ///< index in `all` of the first real position
    Eigen::Index num_kept = 0;    ///< number of real positions
};

/// Ridge regression of a signal sampled at fixed positions (∞-former eq. 5):
///   B = argmin ‖Fᵀ B − Y‖² + λ‖B‖²  ⇒  G = Fᵀ (F Fᵀ + λ I)⁻¹,  B = Gᵀ Y,
/// with F[k, p] = ψ_k(t_p) over all positions, Y zero at the pads. Only the rows of G that
/// belong to the real positions are kept (G is num_kept × N).
///
/// G is computed in double whatever Scalar is (Cholesky factorisation of the N×N matrix
/// F Fᵀ + λI, never an explicit inverse) and then rounded to Scalar, so a float fit loses no
/// accuracy to the conditioning of F Fᵀ + λI (10³–10⁴ at the paper's settings). Copies
/// share the operator.
template <typename Scalar_>
class RidgeFit {
    static_assert(std::is_floating_point_v<Scalar_>, "RidgeFit needs float or double");
    static_assert(detail::instantiable_scalar<Scalar_>(),
                  "infinityformer::compiled holds RidgeFit<float> and <double> only");

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
    RidgeFit(const GaussianBasis<Scalar>& basis, const FitPositions& positions,
             double ridge_lambda);

    /// Copies share G. Moving copies too (there is no cheaper move): a moved-from fit is
    /// unchanged, never one without an operator.
    RidgeFit(const RidgeFit&) = default;
    RidgeFit& operator=(const RidgeFit&) = default;

    /// The operator G (num_kept × N): B = Gᵀ Y.
    const Matrix& G() const { return *G_; }
    const FitPositions& positions() const { return positions_; }
    double ridge_lambda() const { return lambda_; }
    Index num_rows() const { return G_->rows(); }
    Index num_basis() const { return G_->cols(); }

    /// B = Gᵀ Y. @param Y num_kept × d, finite. @param B N × d.
    void fit(const Eigen::Ref<const Matrix>& Y, Eigen::Ref<Matrix> B) const;
    Matrix fit(const Eigen::Ref<const Matrix>& Y) const;

private:
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
        // G multiplies transposed (B = Gᵀ X) and from the left (the backward, G ∂B): an
        // entry negligible for both, or subnormal in the Scalar, is exactly 0.
        Matrix G = Gt.transpose().template cast<Scalar>();
        detail::drop_negligible(G, true);
        return G;
    }

    FitPositions positions_;
    double lambda_;
    std::shared_ptr<const Matrix> G_;
};

#if INFINITYFORMER_HEADER_ONLY

template <typename Scalar_>
RidgeFit<Scalar_>::RidgeFit(const GaussianBasis<Scalar>& basis, const FitPositions& positions,
                            double ridge_lambda)
    : positions_(positions), lambda_(ridge_lambda) {
    constexpr const char* where = "RidgeFit::RidgeFit";
    detail::require(std::isfinite(ridge_lambda) && ridge_lambda > 0.0, where, "ridge_lambda is ",
                    ridge_lambda, ", expected > 0");
    const auto total = static_cast<Index>(positions.all.size());
    detail::require(positions.num_kept >= 1 && positions.first_kept >= 0 &&
                        positions.num_kept <= total &&
                        positions.first_kept <= total - positions.num_kept,
                    where, "kept positions: ", positions.num_kept, " from index ",
                    positions.first_kept, ", expected at least 1 within the ", total, " positions");
    detail::require_allocatable(
        where, "the fit (basis size x positions)",
        static_cast<double>(basis.size()) * static_cast<double>(total),
        8.0 * static_cast<double>(basis.size()) *
            (static_cast<double>(total) + 2.0 * static_cast<double>(basis.size())));
    for (std::size_t i = 0; i < positions.all.size(); ++i)
        detail::require(std::isfinite(positions.all[i]), where, "positions[", i, "] is ",
                        positions.all[i], ", expected a finite value");
    const Index n = basis.size();
    std::vector<double> c(static_cast<std::size_t>(n)), w(static_cast<std::size_t>(n));
    for (Index k = 0; k < n; ++k) {
        c[static_cast<std::size_t>(k)] = static_cast<double>(basis.centers()[k]);
        w[static_cast<std::size_t>(k)] = static_cast<double>(basis.widths()[k]);
    }
    G_ = std::make_shared<const Matrix>(compute(c, w, positions, ridge_lambda));
}

template <typename Scalar_>
void RidgeFit<Scalar_>::fit(const Eigen::Ref<const Matrix>& Y, Eigen::Ref<Matrix> B) const {
    constexpr const char* where = "RidgeFit::fit";
    detail::require(Y.rows() == num_rows(), where, "Y has ", Y.rows(), " rows, expected ",
                    num_rows());
    detail::check_finite(where, "Y", Y);
    detail::check_shape(where, "B", B, num_basis(), Y.cols());
    B.noalias() = G_->transpose() * Y;
}

template <typename Scalar_>
auto RidgeFit<Scalar_>::fit(const Eigen::Ref<const Matrix>& Y) const -> Matrix {
    Matrix B(num_basis(), Y.cols());
    fit(Y, B);
    return B;
}

#endif  // INFINITYFORMER_HEADER_ONLY

INFINITYFORMER_EXTERN_TEMPLATE(class, RidgeFit)

using RidgeFitd = RidgeFit<double>;
using RidgeFitf = RidgeFit<float>;

}  // namespace infinityformer
