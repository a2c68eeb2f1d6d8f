/// @file basis.hpp
/// @brief Gaussian radial basis functions and their closed-form expectations under a
/// Gaussian density (∞-former, Martins et al. 2022, §3.1 and Appendix A).
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "detail/config.hpp"
#include "detail/gauss_row.hpp"
#include "detail/limits.hpp"
#include "detail/math.hpp"
#include "errors.hpp"

namespace infinityformer {

/// N normalised Gaussian densities ψ_k(t) = N(t; c_k, s_k²).
///
/// The continuous memory is x̄(t) = Bᵀ ψ(t). Basis function k has centre c_k and width
/// (standard deviation) s_k. The default family (default_family()) crosses K = N/|S|
/// centres linspace(0, 1, K) with the widths S, centre-major: k = i·|S| + j.
///
/// Under a density p = N(μ, σ²) the expectations have closed forms (v_k = σ² + s_k²):
///   E_p[ψ_k]    = N(μ; c_k, v_k)
///   E_p[t ψ_k]  = E_p[ψ_k] · m̃_k,              m̃_k = (c_k σ² + μ s_k²)/v_k
///   E_p[t² ψ_k] = E_p[ψ_k] · (m̃_k² + ṽ_k),      ṽ_k = σ² s_k²/v_k
/// They are evaluated so that no NaN or overflow arises for any finite μ and σ² ≥ 0: an
/// expectation that underflows is exactly 0, whatever the size of m̃_k.
///
/// Layouts: positions and densities are rows, basis functions columns (T×N, Q×N).
///
/// \tparam Scalar_ float or double.
template <typename Scalar_>
class GaussianBasis {
    static_assert(std::is_floating_point_v<Scalar_>, "GaussianBasis needs float or double");
    static_assert(detail::instantiable_scalar<Scalar_>(),
                  "infinityformer::compiled holds GaussianBasis<float> and <double> only");

public:
    using Scalar = Scalar_;
    using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
    using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    using Index = Eigen::Index;

    /// A basis from explicit centres and widths (both N, all finite; widths > 0 whose
    /// squares are normal numbers of the Scalar).
    /// @throws infinityformer::invalid_argument on empty, mismatched or bad values.
    GaussianBasis(const Eigen::Ref<const Vector>& centers, const Eigen::Ref<const Vector>& widths);

    /// The authors' family: K = num_basis / widths.size() centres i/(K−1) (both 0 and 1
    /// included; a single centre sits at 0), crossed with `widths`, centre-major.
    /// Paper defaults: widths {0.01, 0.05} (sorting), {0.005, 0.01} (language model).
    /// @throws infinityformer::invalid_argument if num_basis is not a positive multiple of
    /// widths.size() or a width is not > 0.
    static GaussianBasis default_family(Index num_basis, const std::vector<double>& widths);

    /// Moving copies (N centres and widths): a moved-from basis is unchanged, never empty.
    GaussianBasis(const GaussianBasis&) = default;
    GaussianBasis& operator=(const GaussianBasis&) = default;

    /// Number of basis functions N.
    Index size() const { return centers_.size(); }
    const Vector& centers() const { return centers_; }
    const Vector& widths() const { return widths_; }

    /// ψ at T positions: out(p, k) = ψ_k(t_p). @param t T positions. @param out T×N.
    /// A value below the smallest normal number is exactly 0 (never a subnormal). The
    /// memory drops the values of its operators that are negligible in their row as well
    /// (detail::drop_negligible).
    void evaluate(const Eigen::Ref<const Vector>& t, Eigen::Ref<Matrix> out) const;
    Matrix evaluate(const Eigen::Ref<const Vector>& t) const;

    /// E[ψ_k] under N(μ_q, σ²_q) for Q densities. @param mu Q. @param sigma_sq Q, ≥ 0.
    /// A value below the smallest normal number is 0 (never a subnormal), here and in
    /// expect_t_psi() and expect_t2_psi().
    /// @param out Q×N.
    void expect_psi(const Eigen::Ref<const Vector>& mu, const Eigen::Ref<const Vector>& sigma_sq,
                    Eigen::Ref<Matrix> out) const;
    Matrix expect_psi(const Eigen::Ref<const Vector>& mu,
                      const Eigen::Ref<const Vector>& sigma_sq) const;

    /// E[t ψ_k] under N(μ_q, σ²_q). Shapes as expect_psi().
    void expect_t_psi(const Eigen::Ref<const Vector>& mu, const Eigen::Ref<const Vector>& sigma_sq,
                      Eigen::Ref<Matrix> out) const;
    Matrix expect_t_psi(const Eigen::Ref<const Vector>& mu,
                        const Eigen::Ref<const Vector>& sigma_sq) const;

    /// E[t² ψ_k] under N(μ_q, σ²_q). Shapes as expect_psi().
    void expect_t2_psi(const Eigen::Ref<const Vector>& mu, const Eigen::Ref<const Vector>& sigma_sq,
                       Eigen::Ref<Matrix> out) const;
    Matrix expect_t2_psi(const Eigen::Ref<const Vector>& mu,
                         const Eigen::Ref<const Vector>& sigma_sq) const;

    /// Gradient of L = Σ_{q,k} dr(q,k) · E[ψ_k](μ_q, σ²_q) with respect to μ and σ², in the
    /// direct form (no cancellation, unlike the route through the natural parameters):
    ///   ∂L/∂μ_q  = Σ_k dr_qk r_qk (c_k − μ_q)/v_qk
    ///   ∂L/∂σ²_q = Σ_k dr_qk r_qk ((μ_q − c_k)²/v_qk² − 1/v_qk)/2,   v_qk = σ²_q + s_k².
    /// @param mu Q. @param sigma_sq Q, ≥ 0. @param dr Q × N upstream gradient.
    /// @param dmu Q. @param dsigma_sq Q.
    /// @throws infinityformer::invalid_argument on shapes, non-finite input or a result
    ///         that overflowed (computed aside: dmu and dsigma_sq are then not written).
    void expect_psi_backward(const Eigen::Ref<const Vector>& mu,
                             const Eigen::Ref<const Vector>& sigma_sq,
                             const Eigen::Ref<const Matrix>& dr, Eigen::Ref<Vector> dmu,
                             Eigen::Ref<Vector> dsigma_sq) const;

    /// expect_psi_backward() without argument checks (inputs already validated).
    template <typename MuT, typename SigT, typename DrT, typename DmuT, typename DsT>
    void expect_psi_backward_unchecked(const Eigen::MatrixBase<MuT>& mu,
                                       const Eigen::MatrixBase<SigT>& sigma_sq,
                                       const Eigen::MatrixBase<DrT>& dr,
                                       Eigen::MatrixBase<DmuT>& dmu,
                                       Eigen::MatrixBase<DsT>& dsigma_sq) const {
        using std::exp;
        using std::sqrt;
        const Scalar inv_sqrt_2pi = Scalar(detail::kInvSqrt2Pi);
        dmu.setZero();
        dsigma_sq.setZero();
        for (Index k = 0; k < size(); ++k) {
            const Scalar c = centers_[k];
            const Scalar s2 = widths_[k] * widths_[k];
            for (Index q = 0; q < mu.size(); ++q) {
                const Scalar v = sigma_sq[q] + s2;
                const Scalar d = mu[q] - c;
                const Scalar arg = Scalar(-0.5) * (d / v) * d;
                if (arg < log_min_) continue;  // E[ψ_k] is 0 there (no subnormal)
                const Scalar w = dr(q, k) * inv_sqrt_2pi / sqrt(v) * exp(arg);
                if (w == Scalar(0)) continue;
                dmu[q] -= w * d / v;
                dsigma_sq[q] += Scalar(0.5) * w * ((d / v) * (d / v) - Scalar(1) / v);
            }
        }
    }

    /// expect_psi_backward() from the rows r = E[ψ] that expect_psi_rows_unchecked() computed
    /// for the same densities (Q × N, row-major): each term is dr_qk r_qk times its weight,
    /// so no exponential is evaluated again, and a term whose r_qk was set to 0 (negligible,
    /// see there) is 0 here too, consistently with the forward values. Only the span of
    /// non-zero r in each row is visited, vectorised. `dr` Q × N, row-major.
    template <typename MuT, typename SigT, typename RT, typename DrT, typename DmuT, typename DsT>
    void expect_psi_rows_backward_unchecked(const Eigen::MatrixBase<MuT>& mu,
                                            const Eigen::MatrixBase<SigT>& sigma_sq,
                                            const Eigen::MatrixBase<RT>& r,
                                            const Eigen::MatrixBase<DrT>& dr,
                                            Eigen::MatrixBase<DmuT>& dmu,
                                            Eigen::MatrixBase<DsT>& dsigma_sq) const {
        const Index n = size();
        for (Index q = 0; q < mu.size(); ++q) {
            Index a = 0, b = n;
            while (a < b && r(q, a) == Scalar(0)) ++a;
            while (b > a && r(q, b - 1) == Scalar(0)) --b;
            const Index len = b - a;
            if (len == 0) {
                dmu[q] = Scalar(0);
                dsigma_sq[q] = Scalar(0);
                continue;
            }
            const auto inv_v = (widths_sq_.segment(a, len).array() + sigma_sq[q]).inverse();
            const auto d = (centers_.segment(a, len).array() - mu[q]) * inv_v;  // (c − μ)/v
            const auto w = r.row(q).segment(a, len).transpose().array() *
                           dr.row(q).segment(a, len).transpose().array();
            dmu[q] = (w * d).sum();
            dsigma_sq[q] = Scalar(0.5) * (w * (d.square() - inv_v)).sum();
        }
    }

    /// E[ψ] for Q densities into the rows of `out` (Q × N, best row-major), vectorised along
    /// the basis and skipping terms that cannot matter. Inputs already validated. Every
    /// entry is 0 or a normal number at least ε/N times its row's largest.
    ///
    /// The bound: for density q let R be one computed term (at the centre nearest μ) and
    /// T = (ε/N)·R, ε the Scalar's machine epsilon. Every term with r_k < T is set to 0, so the
    /// mass dropped from the row is below N·T = ε·R ≤ ε·Σ_k r_k: less than one rounding of the
    /// row's sum. Since r_k ≤ n̄·exp(−½ d_k²/v̄) with n̄ = 1/√(2π(σ² + min s²)),
    /// v̄ = σ² + max s² and d_k = c_k − μ, this holds for every centre farther from μ than
    /// ρ = √(2 v̄ ln(n̄/T)). When the centres are sorted (as in default_family()) those are the
    /// two ends of the row; only the window of centres within ρ of μ is evaluated.
    template <typename MuT, typename SigT, typename OutT>
    void expect_psi_rows_unchecked(const Eigen::MatrixBase<MuT>& mu,
                                   const Eigen::MatrixBase<SigT>& sigma_sq,
                                   Eigen::MatrixBase<OutT>& out) const {
        using std::exp;
        using std::log;
        using std::sqrt;
        const Scalar inv_sqrt_2pi = Scalar(detail::kInvSqrt2Pi);
        const Index n = size();
        const Scalar* c = centers_.data();
        const Scalar eps_over_n = std::numeric_limits<Scalar>::epsilon() / static_cast<Scalar>(n);
        const Index rows = mu.size();
        // Rows are independent: with OpenMP (and Eigen::nbThreads() > 1) they are shared out
        // between Eigen's number of threads (set_num_threads()), whatever OMP_NUM_THREADS says.
#ifdef _OPENMP
#pragma omp parallel for schedule(static) \
    num_threads(Eigen::nbThreads()) if (Eigen::nbThreads() > 1 && rows >= 64)
#endif
        for (Index q = 0; q < rows; ++q) {
            const Scalar m = mu[q];
            const Scalar sg = sigma_sq[q];
            Index a = 0, b = n;
            if (sorted_ && n > 1) {
                const Index j = std::min<Index>(std::lower_bound(c, c + n, m) - c, n - 1);
                Scalar r_ref = 0;
                for (Index k = std::max<Index>(j - 1, 0); k <= j; ++k) {
                    const Scalar v = sg + widths_sq_[k];
                    const Scalar d = c[k] - m;
                    r_ref = std::max(r_ref, inv_sqrt_2pi / sqrt(v) * exp(Scalar(-0.5) * d * d / v));
                }
                if (r_ref > Scalar(0)) {
                    const Scalar threshold = eps_over_n * r_ref;
                    const Scalar n_bar = inv_sqrt_2pi / sqrt(sg + min_width_sq_);
                    // n̄ ≥ r_ref > T, so the logarithm is positive; 1.001 covers its rounding.
                    const Scalar rho = Scalar(1.001) * sqrt(Scalar(2) * (sg + max_width_sq_) *
                                                            log(n_bar / threshold));
                    a = std::lower_bound(c, c + n, m - rho) - c;
                    b = std::upper_bound(c, c + n, m + rho) - c;
                }
            }
            auto row = out.row(q);
            row.head(a).setZero();
            row.tail(n - b).setZero();
            const Index len = b - a;
            if (len <= 0) continue;
            auto seg = row.segment(a, len).transpose().array();
            // The terms, 0 where the exponent is below ln(smallest normal): into the row
            // itself when it is contiguous (run-time dispatched, detail/gauss_row.hpp).
            if (row.innerStride() == 1) {
                detail::gauss_row(widths_sq_.data() + a, c + a, m, sg, &row.coeffRef(a), len);
            } else {
                Scalar buf[256];  // on the stack: no allocation, nothing shared
                for (Index k0 = 0; k0 < len; k0 += 256) {
                    const Index part = std::min<Index>(256, len - k0);
                    detail::gauss_row(widths_sq_.data() + a + k0, c + a + k0, m, sg, buf, part);
                    for (Index k = 0; k < part; ++k) row[a + k0 + k] = buf[k];
                }
            }
            // Terms of the window below ε/N of the row's largest (or subnormal) are 0 too,
            // by the bound above: no subnormal number reaches the products with r.
            const Scalar floor =
                std::max(eps_over_n * seg.maxCoeff(), std::numeric_limits<Scalar>::min());
            if (seg.minCoeff() < floor)
                for (Index k = a; k < b; ++k) row[k] = row[k] < floor ? Scalar(0) : row[k];
        }
    }

private:
    template <typename Out>
    void check_densities(const char* where, const Eigen::Ref<const Vector>& mu,
                         const Eigen::Ref<const Vector>& sigma_sq, const Out& out,
                         const char* out_name = "out") const {
        detail::check_finite(where, "mu", mu);
        detail::check_shape(where, "sigma_sq", sigma_sq, mu.size(), 1);
        detail::check_finite(where, "sigma_sq", sigma_sq);
        for (Index q = 0; q < sigma_sq.size(); ++q)
            detail::require(sigma_sq[q] >= Scalar(0), where, "sigma_sq[", q, "] is ", sigma_sq[q],
                            ", expected >= 0");
        detail::check_shape(where, out_name, out, mu.size(), size());
    }

    // moment 0: E[ψ]; 1: E[tψ]; 2: E[t²ψ]. Subnormal values are 0.
    void expectations(const Eigen::Ref<const Vector>& mu, const Eigen::Ref<const Vector>& sigma_sq,
                      int moment, Eigen::Ref<Matrix> out) const {
        for (Index k = 0; k < size(); ++k) {
            const Scalar c = centers_[k];
            const Scalar s2 = widths_[k] * widths_[k];
            for (Index q = 0; q < mu.size(); ++q) {
                const Scalar sig2 = sigma_sq[q];
                const Scalar v = sig2 + s2;
                const Scalar e = detail::gaussian_density(mu[q], c, v);
                if (moment == 0 || e == Scalar(0)) {
                    // An underflowed expectation is 0 whatever m̃ is (m̃² may overflow).
                    out(q, k) = e;
                    continue;
                }
                // Weights σ²/v and s²/v in [0, 1]: no product of two large values.
                const Scalar m = c * (sig2 / v) + mu[q] * (s2 / v);
                const Scalar x = moment == 1 ? e * m : e * (m * m + sig2 * (s2 / v));
                out(q, k) = std::abs(x) < std::numeric_limits<Scalar>::min() ? Scalar(0) : x;
            }
        }
        if (moment == 0 || detail::all_finite(out)) return;
        // E[t ψ] and E[t² ψ] grow with |m̃| (between the centre and μ): values beyond the
        // Scalar's range are refused, not returned as Inf.
        for (Index k = 0; k < size(); ++k)
            for (Index q = 0; q < mu.size(); ++q)
                if (!std::isfinite(static_cast<double>(out(q, k))))
                    detail::fail(moment == 1 ? "GaussianBasis::expect_t_psi"
                                             : "GaussianBasis::expect_t2_psi",
                                 moment == 1 ? "E[t psi_" : "E[t^2 psi_", k, "] under mu[", q,
                                 "] = ", mu[q], ", sigma_sq[", q, "] = ", sigma_sq[q],
                                 " overflowed (centre ", centers_[k], ", width ", widths_[k],
                                 "), expected a value the Scalar can hold: smaller centres or "
                                 "means");
    }

    Vector centers_;
    Vector widths_;
    Vector widths_sq_;
    Scalar min_width_sq_{};
    Scalar max_width_sq_{};
    bool sorted_ = false;
    static inline const Scalar log_min_ = std::log(std::numeric_limits<Scalar>::min());
};

#if INFINITYFORMER_HEADER_ONLY

template <typename Scalar_>
GaussianBasis<Scalar_>::GaussianBasis(const Eigen::Ref<const Vector>& centers,
                                      const Eigen::Ref<const Vector>& widths)
    : centers_(centers), widths_(widths) {
    constexpr const char* where = "GaussianBasis::GaussianBasis";
    detail::require(centers.size() >= 1, where, "centers has ", centers.size(),
                    " entries, expected at least 1");
    detail::check_shape(where, "widths", widths, centers.size(), 1);
    detail::check_finite(where, "centers", centers);
    detail::check_finite(where, "widths", widths);
    for (Index k = 0; k < widths.size(); ++k) {
        detail::require(widths[k] > Scalar(0), where, "widths[", k, "] is ", widths[k],
                        ", expected > 0");
        // The expectations divide by s² and by σ² + s²: a square that underflows or
        // overflows the Scalar turns them into NaN.
        const double w = static_cast<double>(widths[k]);
        const std::string name = detail::concat("widths[", k, "]^2");
        detail::require_normal<Scalar>(where, name.c_str(), w * w,
                                       "expected a width whose square is a normal number");
    }
    widths_sq_ = widths_.array().square();
    min_width_sq_ = widths_sq_.minCoeff();
    max_width_sq_ = widths_sq_.maxCoeff();
    sorted_ = std::is_sorted(centers_.data(), centers_.data() + centers_.size());
}

template <typename Scalar_>
auto GaussianBasis<Scalar_>::default_family(Index num_basis, const std::vector<double>& widths)
    -> GaussianBasis {
    constexpr const char* where = "GaussianBasis::default_family";
    const auto w = static_cast<Index>(widths.size());
    detail::require(w >= 1, where, "widths has 0 entries, expected at least 1");
    detail::require(num_basis >= 1 && num_basis % w == 0, where, "num_basis is ", num_basis,
                    ", expected a positive multiple of the number of widths (", w, ")");
    const double n = static_cast<double>(num_basis);
    detail::require_allocatable(where, "num_basis centres and widths", n,
                                6 * n * static_cast<double>(sizeof(Scalar)));
    const Index k_centers = num_basis / w;
    Vector c(num_basis), s(num_basis);
    for (Index i = 0; i < k_centers; ++i) {
        // linspace(0, 1, K) as the reference computes it: both ends exact.
        const double ci = detail::linspace_at(0.0, 1.0, k_centers, i);
        for (Index j = 0; j < w; ++j) {
            detail::require(std::isfinite(widths[static_cast<std::size_t>(j)]) &&
                                widths[static_cast<std::size_t>(j)] > 0.0,
                            where, "widths[", j, "] is ", widths[static_cast<std::size_t>(j)],
                            ", expected > 0");
            c[i * w + j] = static_cast<Scalar>(ci);
            s[i * w + j] = static_cast<Scalar>(widths[static_cast<std::size_t>(j)]);
        }
    }
    return GaussianBasis(c, s);
}

template <typename Scalar_>
void GaussianBasis<Scalar_>::evaluate(const Eigen::Ref<const Vector>& t,
                                      Eigen::Ref<Matrix> out) const {
    constexpr const char* where = "GaussianBasis::evaluate";
    detail::check_finite(where, "t", t);
    detail::check_shape(where, "out", out, t.size(), size());
    using std::exp;
    using std::log;
    const Scalar inv_sqrt_2pi = Scalar(detail::kInvSqrt2Pi);
    for (Index k = 0; k < size(); ++k) {
        const Scalar c = centers_[k];
        const Scalar inv_s = Scalar(1) / widths_[k];
        // norm·exp(arg) as exp(arg + ln norm): no subnormal intermediate either.
        const Scalar log_norm = log(inv_sqrt_2pi * inv_s);
        for (Index p = 0; p < t.size(); ++p) {
            const Scalar z = (t[p] - c) * inv_s;
            const Scalar arg = Scalar(-0.5) * z * z + log_norm;
            const Scalar v = arg < log_min_ ? Scalar(0) : exp(arg);
            out(p, k) = v < std::numeric_limits<Scalar>::min() ? Scalar(0) : v;
        }
    }
}

template <typename Scalar_>
auto GaussianBasis<Scalar_>::evaluate(const Eigen::Ref<const Vector>& t) const -> Matrix {
    Matrix out(t.size(), size());
    evaluate(t, out);
    return out;
}

template <typename Scalar_>
void GaussianBasis<Scalar_>::expect_psi(const Eigen::Ref<const Vector>& mu,
                                        const Eigen::Ref<const Vector>& sigma_sq,
                                        Eigen::Ref<Matrix> out) const {
    check_densities("GaussianBasis::expect_psi", mu, sigma_sq, out);
    expectations(mu, sigma_sq, 0, out);
}

template <typename Scalar_>
auto GaussianBasis<Scalar_>::expect_psi(const Eigen::Ref<const Vector>& mu,
                                        const Eigen::Ref<const Vector>& sigma_sq) const -> Matrix {
    Matrix out(mu.size(), size());
    expect_psi(mu, sigma_sq, out);
    return out;
}

template <typename Scalar_>
void GaussianBasis<Scalar_>::expect_t_psi(const Eigen::Ref<const Vector>& mu,
                                          const Eigen::Ref<const Vector>& sigma_sq,
                                          Eigen::Ref<Matrix> out) const {
    check_densities("GaussianBasis::expect_t_psi", mu, sigma_sq, out);
    expectations(mu, sigma_sq, 1, out);
}

template <typename Scalar_>
auto GaussianBasis<Scalar_>::expect_t_psi(const Eigen::Ref<const Vector>& mu,
                                          const Eigen::Ref<const Vector>& sigma_sq) const
    -> Matrix {
    Matrix out(mu.size(), size());
    expect_t_psi(mu, sigma_sq, out);
    return out;
}

template <typename Scalar_>
void GaussianBasis<Scalar_>::expect_t2_psi(const Eigen::Ref<const Vector>& mu,
                                           const Eigen::Ref<const Vector>& sigma_sq,
                                           Eigen::Ref<Matrix> out) const {
    check_densities("GaussianBasis::expect_t2_psi", mu, sigma_sq, out);
    expectations(mu, sigma_sq, 2, out);
}

template <typename Scalar_>
auto GaussianBasis<Scalar_>::expect_t2_psi(const Eigen::Ref<const Vector>& mu,
                                           const Eigen::Ref<const Vector>& sigma_sq) const
    -> Matrix {
    Matrix out(mu.size(), size());
    expect_t2_psi(mu, sigma_sq, out);
    return out;
}

template <typename Scalar_>
void GaussianBasis<Scalar_>::expect_psi_backward(const Eigen::Ref<const Vector>& mu,
                                                 const Eigen::Ref<const Vector>& sigma_sq,
                                                 const Eigen::Ref<const Matrix>& dr,
                                                 Eigen::Ref<Vector> dmu,
                                                 Eigen::Ref<Vector> dsigma_sq) const {
    constexpr const char* where = "GaussianBasis::expect_psi_backward";
    check_densities(where, mu, sigma_sq, dr, "dr");
    detail::check_finite(where, "dr", dr);
    detail::check_shape(where, "dmu", dmu, mu.size(), 1);
    detail::check_shape(where, "dsigma_sq", dsigma_sq, mu.size(), 1);
    Vector gm(mu.size()), gs(mu.size());
    expect_psi_backward_unchecked(mu, sigma_sq, dr, gm, gs);
    if (!(detail::all_finite(gm) && detail::all_finite(gs)))
        detail::fail_backward<Scalar>(
            where, detail::concat("dr's largest |entry| ", detail::largest_abs(dr)),
            detail::all_finite(gm) ? "dsigma_sq" : "dmu", "dr");
    dmu = gm;
    dsigma_sq = gs;
}

#endif  // INFINITYFORMER_HEADER_ONLY

INFINITYFORMER_EXTERN_TEMPLATE(class, GaussianBasis)

using GaussianBasisd = GaussianBasis<double>;
using GaussianBasisf = GaussianBasis<float>;

}  // namespace infinityformer
