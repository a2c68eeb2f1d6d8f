/// @file detail/gauss_row.hpp
/// @brief The inner loop of E[ψ] (GaussianBasis::expect_psi_rows_unchecked): one density's
/// terms along a window of the basis, out_k = exp(−½ d_k²/v_k) / √(2π v_k) with
/// d_k = c_k − μ, v_k = s_k² + σ², and exactly 0 where the exponent is below
/// ln(smallest normal). It takes half the time of a chunk in a build with the compiler's
/// default flags (SSE2 on x86-64), so there it is dispatched at run time to an AVX2+FMA
/// version when the CPU has those; a build whose flags already give AVX2 (or any other
/// target) uses Eigen's vectorised exp.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__AVX2__) && \
    !defined(INFINITYFORMER_NO_DISPATCH)
#define INFINITYFORMER_GAUSS_ROW_DISPATCH 1
#include <immintrin.h>
#endif

namespace infinityformer::detail {

/// Eigen's vectorised route (every target). `out` holds `len` values.
template <typename Scalar>
void gauss_row_eigen(const Scalar* widths_sq, const Scalar* centers, Scalar mu, Scalar sigma_sq,
                     Scalar* out, Eigen::Index len) {
    using Array = Eigen::Array<Scalar, Eigen::Dynamic, 1>;
    static const Scalar log_min = std::log(std::numeric_limits<Scalar>::min());
    const Eigen::Map<const Array> w(widths_sq, len), c(centers, len);
    Eigen::Map<Array> seg(out, len);
    const auto v = w + sigma_sq;
    seg = Scalar(-0.5) * (c - mu).square() / v;
    // A vectorised exp clamps its argument instead of underflowing: such terms are set to
    // exactly 0 afterwards (Eigen 3.4's select() would not vectorise).
    const bool underflow = seg.minCoeff() < log_min;
    seg = seg.exp() * v.rsqrt() * Scalar(0.39894228040143267793994605993438);
    if (underflow)
        for (Eigen::Index k = 0; k < len; ++k) {
            const Scalar d = centers[k] - mu;
            if (Scalar(-0.5) * d * d / (sigma_sq + widths_sq[k]) < log_min) out[k] = 0;
        }
}

#ifdef INFINITYFORMER_GAUSS_ROW_DISPATCH

// exp of 8 floats (Cephes' polynomial, as Eigen's pexp): relative error ~1e-7 for
// x ≥ ln(FLT_MIN); the caller zeroes lanes below that.
__attribute__((target("avx2,fma"))) inline __m256 exp8_avx2(__m256 x) {
    const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
    x = _mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f));
    x = _mm256_max_ps(x, _mm256_set1_ps(-88.3762626647949f));
    const __m256 m = _mm256_round_ps(_mm256_fmadd_ps(x, log2e, _mm256_set1_ps(0.5f)),
                                     _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(m, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(m, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 y = _mm256_set1_ps(1.9875691500E-4f);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507E-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073E-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894E-2f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459E-1f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201E-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    // 2^m for m ≥ −126 (the caller's range) by the exponent bits.
    const __m256i e =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(m), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// exp of 4 doubles (Cephes' Padé form, as Eigen's pexp): ~1 ulp for x ≥ ln(DBL_MIN).
__attribute__((target("avx2,fma"))) inline __m256d exp4_avx2(__m256d x) {
    const __m256d one = _mm256_set1_pd(1.0);
    x = _mm256_min_pd(x, _mm256_set1_pd(709.437));
    x = _mm256_max_pd(x, _mm256_set1_pd(-709.436139303));
    const __m256d fx = _mm256_round_pd(
        _mm256_fmadd_pd(x, _mm256_set1_pd(1.4426950408889634073599), _mm256_set1_pd(0.5)),
        _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_pd(fx, _mm256_set1_pd(0.693145751953125), x);
    x = _mm256_fnmadd_pd(fx, _mm256_set1_pd(1.42860682030941723212e-6), x);
    const __m256d x2 = _mm256_mul_pd(x, x);
    __m256d px = _mm256_set1_pd(1.26177193074810590878e-4);
    px = _mm256_fmadd_pd(px, x2, _mm256_set1_pd(3.02994407707441961300e-2));
    px = _mm256_fmadd_pd(px, x2, _mm256_set1_pd(9.99999999999999999910e-1));
    px = _mm256_mul_pd(px, x);
    __m256d qx = _mm256_set1_pd(3.00198505138664455042e-6);
    qx = _mm256_fmadd_pd(qx, x2, _mm256_set1_pd(2.52448340349684104192e-3));
    qx = _mm256_fmadd_pd(qx, x2, _mm256_set1_pd(2.27265548208155028766e-1));
    qx = _mm256_fmadd_pd(qx, x2, _mm256_set1_pd(2.00000000000000000009e0));
    __m256d y = _mm256_div_pd(px, _mm256_sub_pd(qx, px));
    y = _mm256_fmadd_pd(_mm256_set1_pd(2.0), y, one);
    // 2^fx for fx ≥ −1022 by the exponent bits (fx fits in 32 bits).
    const __m128i m32 = _mm256_cvtpd_epi32(fx);
    const __m256i m64 = _mm256_cvtepi32_epi64(m32);
    const __m256i e = _mm256_slli_epi64(_mm256_add_epi64(m64, _mm256_set1_epi64x(1023)), 52);
    return _mm256_mul_pd(y, _mm256_castsi256_pd(e));
}

__attribute__((target("avx2,fma"))) inline void gauss_row_avx2(const float* widths_sq,
                                                               const float* centers, float mu,
                                                               float sigma_sq, float* out,
                                                               Eigen::Index len) {
    const float log_min = -87.33654475f;  // ln(FLT_MIN), rounded up: never a subnormal
    const __m256 vmu = _mm256_set1_ps(mu), vs = _mm256_set1_ps(sigma_sq);
    const __m256 vlog = _mm256_set1_ps(log_min), half = _mm256_set1_ps(-0.5f);
    const __m256 norm = _mm256_set1_ps(0.39894228040143267793994605993438f);
    Eigen::Index k = 0;
    for (; k + 8 <= len; k += 8) {
        const __m256 v = _mm256_add_ps(_mm256_loadu_ps(widths_sq + k), vs);
        const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(centers + k), vmu);
        const __m256 arg = _mm256_div_ps(_mm256_mul_ps(half, _mm256_mul_ps(d, d)), v);
        const __m256 keep = _mm256_cmp_ps(arg, vlog, _CMP_GE_OQ);
        const __m256 r = _mm256_div_ps(_mm256_mul_ps(exp8_avx2(arg), norm), _mm256_sqrt_ps(v));
        _mm256_storeu_ps(out + k, _mm256_and_ps(r, keep));
    }
    if (k < len) gauss_row_eigen(widths_sq + k, centers + k, mu, sigma_sq, out + k, len - k);
}

__attribute__((target("avx2,fma"))) inline void gauss_row_avx2(const double* widths_sq,
                                                               const double* centers, double mu,
                                                               double sigma_sq, double* out,
                                                               Eigen::Index len) {
    const double log_min = -708.3964185322641;  // ln(DBL_MIN), rounded up
    const __m256d vmu = _mm256_set1_pd(mu), vs = _mm256_set1_pd(sigma_sq);
    const __m256d vlog = _mm256_set1_pd(log_min), half = _mm256_set1_pd(-0.5);
    const __m256d norm = _mm256_set1_pd(0.39894228040143267793994605993438);
    Eigen::Index k = 0;
    for (; k + 4 <= len; k += 4) {
        const __m256d v = _mm256_add_pd(_mm256_loadu_pd(widths_sq + k), vs);
        const __m256d d = _mm256_sub_pd(_mm256_loadu_pd(centers + k), vmu);
        const __m256d arg = _mm256_div_pd(_mm256_mul_pd(half, _mm256_mul_pd(d, d)), v);
        const __m256d keep = _mm256_cmp_pd(arg, vlog, _CMP_GE_OQ);
        const __m256d r = _mm256_div_pd(_mm256_mul_pd(exp4_avx2(arg), norm), _mm256_sqrt_pd(v));
        _mm256_storeu_pd(out + k, _mm256_and_pd(r, keep));
    }
    if (k < len) gauss_row_eigen(widths_sq + k, centers + k, mu, sigma_sq, out + k, len - k);
}

/// True if this CPU runs the AVX2+FMA route (checked once).
inline bool gauss_row_has_avx2() {
    static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return yes;
}
#endif

/// The terms of one density along `len` basis functions into `out` (contiguous): the
/// AVX2+FMA route where it was dispatched and the CPU has it, Eigen's otherwise.
template <typename Scalar>
void gauss_row(const Scalar* widths_sq, const Scalar* centers, Scalar mu, Scalar sigma_sq,
               Scalar* out, Eigen::Index len) {
#ifdef INFINITYFORMER_GAUSS_ROW_DISPATCH
    if (gauss_row_has_avx2()) {
        gauss_row_avx2(widths_sq, centers, mu, sigma_sq, out, len);
        return;
    }
#endif
    gauss_row_eigen(widths_sq, centers, mu, sigma_sq, out, len);
}

}  // namespace infinityformer::detail
