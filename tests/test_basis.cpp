// Properties of the Gaussian basis (basis.hpp): the default family's layout, normalisation
// of ψ, and the closed-form expectations E[{1, t, t²} ψ] against numerical quadrature of the
// defining integrals; numerical safety at extreme μ and σ²; float vs double; the direct-form
// gradient of E[ψ] against finite differences (central and Ridders'); bad input.
#include <catch2/catch.hpp>
#include <cmath>
#include <functional>
#include <infinityformer/basis.hpp>
#include <infinityformer/detail/math.hpp>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "extern_templates.hpp"
#include "part_util.hpp"
#include "test_util.hpp"

namespace {

using namespace part_util;

// log N(t; m, v)
double log_normal_pdf(double t, double m, double v) {
    const double d = t - m;
    return -0.5 * d * d / v - 0.5 * std::log(2.0 * kPi * v);
}

struct Moments {
    double m0 = 0, m1 = 0, m2 = 0;  // ∫ p ψ {1, t, t²}
    double abs1 = 0;                // ∫ p ψ |t|, the scale of m1's quadrature error
};

// ∫ N(t; μ, σ²) {1, t, t²} N(t; c, s²) dt by composite Simpson on the overlap of the two
// densities' ±40-standard-deviation windows. Outside a window the corresponding factor is
// below e^-800 (times ≤ 40), which underflows in double, so nothing representable is lost;
// inside, 8000 intervals give ≥ 70 points per standard deviation of the product. Measured
// agreement with the closed forms: ≤ 8.2e-14 relative; the tests allow 1e-11.
Moments quadrature(double mu, double sigma_sq, double c, double s) {
    const double sd = std::sqrt(sigma_sq);
    const double a = std::max(c - 40.0 * s, mu - 40.0 * sd);
    const double b = std::min(c + 40.0 * s, mu + 40.0 * sd);
    Moments m;
    if (!(a < b)) return m;
    const int n = 8000;
    const double h = (b - a) / n;
    for (int i = 0; i <= n; ++i) {
        const double t = a + h * i;
        const double w = (i == 0 || i == n) ? 1.0 : (i % 2 == 1 ? 4.0 : 2.0);
        const double f = std::exp(log_normal_pdf(t, mu, sigma_sq) + log_normal_pdf(t, c, s * s));
        m.m0 += w * f;
        m.m1 += w * f * t;
        m.m2 += w * f * t * t;
        m.abs1 += w * f * std::abs(t);
    }
    m.m0 *= h / 3.0;
    m.m1 *= h / 3.0;
    m.m2 *= h / 3.0;
    m.abs1 *= h / 3.0;
    return m;
}

}  // namespace

TEST_CASE("basis: default_family centres, widths and centre-major order", "[basis]") {
    const std::vector<double> widths = {0.01, 0.05, 0.2};
    for (Index k_centres : {1, 2, 3, 5, 16, 171}) {
        const Index n = k_centres * 3;
        const auto b = GaussianBasis<double>::default_family(n, widths);
        REQUIRE(b.size() == n);
        for (Index i = 0; i < k_centres; ++i)
            for (Index j = 0; j < 3; ++j) {
                const Index k = i * 3 + j;
                const double expected =
                    k_centres == 1 ? 0.0
                                   : static_cast<double>(i) / static_cast<double>(k_centres - 1);
                INFO("K = " << k_centres << ", i = " << i << ", j = " << j);
                CHECK(std::abs(b.centers()[k] - expected) <= 4e-16);
                CHECK(b.widths()[k] == widths[static_cast<std::size_t>(j)]);
            }
        // Both ends of linspace(0, 1, K) are exact.
        CHECK(b.centers()[0] == 0.0);
        if (k_centres > 1) CHECK(b.centers()[n - 1] == 1.0);
        // Centres are non-decreasing in k (centre-major).
        for (Index k = 1; k < n; ++k) CHECK(b.centers()[k] >= b.centers()[k - 1]);
    }
}

TEMPLATE_TEST_CASE("basis: psi is a normalised Gaussian density", "[basis]", float, double) {
    using B = GaussianBasis<TestType>;
    using V = typename B::Vector;
    const auto b = B::default_family(12, {0.005, 0.05});
    const double tol = std::is_same_v<TestType, float> ? 1e-5 : 1e-12;
    for (Index k = 0; k < b.size(); ++k) {
        const double c = static_cast<double>(b.centers()[k]);
        const double s = static_cast<double>(b.widths()[k]);
        // Simpson over c ± 12 s (the mass beyond is 2e-33).
        const int n = 2000;
        V t(n + 1);
        for (int i = 0; i <= n; ++i) t[i] = static_cast<TestType>(c - 12 * s + 24 * s * i / n);
        const auto psi = b.evaluate(t);
        REQUIRE(psi.rows() == n + 1);
        REQUIRE(psi.cols() == b.size());
        double integral = 0;
        for (int i = 0; i <= n; ++i) {
            const double w = (i == 0 || i == n) ? 1.0 : (i % 2 == 1 ? 4.0 : 2.0);
            integral += w * static_cast<double>(psi(i, k));
        }
        integral *= (24 * s / n) / 3.0;
        INFO("k = " << k);
        CHECK(std::abs(integral - 1.0) <= (std::is_same_v<TestType, float> ? 1e-4 : 1e-10));
        // Peak 1/(s√(2π)) at the centre, e^{-1/2} of it one width away, symmetric.
        V p(3);
        p << static_cast<TestType>(c), static_cast<TestType>(c + s), static_cast<TestType>(c - s);
        const auto at = b.evaluate(p);
        const double peak = 1.0 / (s * std::sqrt(2 * kPi));
        CHECK(std::abs(at(0, k) / peak - 1.0) <= tol);
        CHECK(std::abs(at(1, k) / at(0, k) - std::exp(-0.5)) <= 10 * tol);
        CHECK(std::abs(at(2, k) / at(1, k) - 1.0) <= 10 * tol);
    }
}

TEST_CASE("basis: expectations equal quadrature of the defining integrals", "[basis]") {
    using B = GaussianBasis<double>;
    const std::vector<double> mus = {-2.0, -0.5, -0.05, 0.0, 0.2, 0.5, 0.77, 1.0, 1.1, 1.6, 3.0};
    const std::vector<double> sigmas = {1e-6, 1e-4, 1e-3, 1e-2, 0.1, 0.5, 2.0};
    Eigen::VectorXd mu(static_cast<Index>(mus.size() * sigmas.size()));
    Eigen::VectorXd sig(mu.size());
    Index q = 0;
    for (double m : mus)
        for (double s2 : sigmas) {
            mu[q] = m;
            sig[q] = s2;
            ++q;
        }
    for (const auto& widths : {std::vector<double>{0.01, 0.05}, std::vector<double>{0.005, 0.2}}) {
        const auto b = B::default_family(10, widths);
        const Eigen::MatrixXd e0 = b.expect_psi(mu, sig);
        const Eigen::MatrixXd e1 = b.expect_t_psi(mu, sig);
        const Eigen::MatrixXd e2 = b.expect_t2_psi(mu, sig);
        // The out-parameter overloads write the same values.
        Eigen::MatrixXd o0(mu.size(), b.size()), o1(mu.size(), b.size()), o2(mu.size(), b.size());
        b.expect_psi(mu, sig, o0);
        b.expect_t_psi(mu, sig, o1);
        b.expect_t2_psi(mu, sig, o2);
        CHECK(o0 == e0);
        CHECK(o1 == e1);
        CHECK(o2 == e2);
        double worst = 0;
        Index nonzero = 0;
        for (Index i = 0; i < mu.size(); ++i)
            for (Index k = 0; k < b.size(); ++k) {
                const Moments m = quadrature(mu[i], sig[i], b.centers()[k], b.widths()[k]);
                // Quadrature error scale: ∫|integrand| (= the value itself for 1 and t²).
                const double tiny = 1e-280;  // values below carry few significant digits
                const double err0 = std::abs(e0(i, k) - m.m0) / std::max(m.m0, tiny);
                const double err1 = std::abs(e1(i, k) - m.m1) / std::max(m.abs1, tiny);
                const double err2 = std::abs(e2(i, k) - m.m2) / std::max(m.m2, tiny);
                worst = std::max({worst, err0, err1, err2});
                if (m.m0 > 1e-200) ++nonzero;
                INFO("mu = " << mu[i] << ", sigma_sq = " << sig[i] << ", k = " << k
                             << ": E = " << e0(i, k) << " vs " << m.m0 << ", E[t] = " << e1(i, k)
                             << " vs " << m.m1 << ", E[t2] = " << e2(i, k) << " vs " << m.m2);
                REQUIRE(err0 <= 1e-11);
                REQUIRE(err1 <= 1e-11);
                REQUIRE(err2 <= 1e-11);
            }
        // The comparison is not vacuous: most entries are far from underflow.
        CHECK(nonzero > mu.size() * b.size() / 2);
        INFO("worst relative error " << worst);
        CHECK(worst < 1e-11);
    }
}

TEST_CASE("basis: a zero-variance density gives psi at the mean", "[basis]") {
    // N(μ, 0) is a point mass at μ: E[{1, t, t²} ψ_k] = {1, μ, μ²} ψ_k(μ).
    const auto b = GaussianBasis<double>::default_family(8, {0.01, 0.05});
    Eigen::VectorXd mu(5), sig = Eigen::VectorXd::Zero(5);
    mu << -0.03, 0.0, 0.31, 0.66, 1.02;
    const Eigen::MatrixXd psi = b.evaluate(mu);
    const Eigen::MatrixXd e0 = b.expect_psi(mu, sig);
    const Eigen::MatrixXd e1 = b.expect_t_psi(mu, sig);
    const Eigen::MatrixXd e2 = b.expect_t2_psi(mu, sig);
    for (Index i = 0; i < mu.size(); ++i)
        for (Index k = 0; k < b.size(); ++k) {
            // Values below 1e-280 compare absolutely. exp(x) has condition number |x|: the
            // two routes round the exponent x = −(μ−c)²/(2s²) differently, so the relative
            // tolerance grows with |x| = |ln ψ| + O(1).
            const double scale = std::max(psi(i, k), 1e-280);
            const double tol = 1e-15 * (10 + std::abs(std::log(scale))) * scale;
            INFO("mu = " << mu[i] << ", k = " << k << ", psi = " << psi(i, k));
            CHECK(std::abs(e0(i, k) - psi(i, k)) <= tol);
            CHECK(std::abs(e1(i, k) - mu[i] * psi(i, k)) <= tol);
            CHECK(std::abs(e2(i, k) - mu[i] * mu[i] * psi(i, k)) <= tol);
        }
}

TEMPLATE_TEST_CASE("basis: expectations are finite at extreme mu and sigma_sq", "[basis]", float,
                   double) {
    using B = GaussianBasis<TestType>;
    using V = typename B::Vector;
    const bool is_double = std::is_same_v<TestType, double>;
    std::vector<double> mus = {0.0, 0.5, 1.0, -0.7, 2.0, 1e3, -1e3, 1e30, -1e30};
    if (is_double) {
        mus.push_back(1e300);
        mus.push_back(-1e300);
    }
    const std::vector<double> sigmas = {0.0, 1e-8, 1e-6, 1e-4, 1e-2, 1.0, 10.0};
    V mu(static_cast<Index>(mus.size() * sigmas.size())), sig(mu.size());
    Index q = 0;
    for (double m : mus)
        for (double s2 : sigmas) {
            mu[q] = static_cast<TestType>(m);
            sig[q] = static_cast<TestType>(s2);
            ++q;
        }
    for (const auto& widths : {std::vector<double>{0.01, 0.05}, std::vector<double>{0.005, 0.01}}) {
        const auto b = B::default_family(16, widths);
        const auto e0 = b.expect_psi(mu, sig);
        const auto e1 = b.expect_t_psi(mu, sig);
        const auto e2 = b.expect_t2_psi(mu, sig);
        for (Index i = 0; i < mu.size(); ++i)
            for (Index k = 0; k < b.size(); ++k) {
                INFO("mu = " << mu[i] << ", sigma_sq = " << sig[i] << ", k = " << k);
                REQUIRE(std::isfinite(e0(i, k)));
                REQUIRE(std::isfinite(e1(i, k)));
                REQUIRE(std::isfinite(e2(i, k)));
                REQUIRE(e0(i, k) >= 0);
                REQUIRE(e2(i, k) >= 0);  // ∫ p t² ψ ≥ 0
                // Cauchy–Schwarz: E[tψ]² ≤ E[ψ] E[t²ψ] (E[ψ]E[t²ψ] − E[tψ]² = E[ψ]² ṽ).
                // Checked where E[ψ] is a normal number (subnormals carry few digits).
                const double a0 = e0(i, k), a1 = e1(i, k), a2 = e2(i, k);
                if (a0 >= 1e3 * static_cast<double>(std::numeric_limits<TestType>::min()))
                    REQUIRE(a1 * a1 <= a0 * a2 * (1 + 1e-5));
                // |μ − c| ≥ 999 with σ² + s² ≤ 10.0025: the exponent is below −4.9e4, so
                // every expectation underflows to exactly 0.
                if (std::abs(static_cast<double>(mu[i])) >= 1e3) {
                    REQUIRE(e0(i, k) == 0);
                    REQUIRE(e1(i, k) == 0);
                    REQUIRE(e2(i, k) == 0);
                }
            }
        // ψ itself at extreme positions: 0, never NaN.
        V t(4);
        t << static_cast<TestType>(1e30), static_cast<TestType>(-1e30),
            static_cast<TestType>(is_double ? 1e300 : 3e38), std::numeric_limits<TestType>::max();
        const auto psi = b.evaluate(t);
        for (Index i = 0; i < psi.size(); ++i) REQUIRE(psi(i) == 0);
    }
}

TEST_CASE("basis: float expectations agree with double to ~1e-4", "[basis]") {
    const std::vector<double> widths = {0.01, 0.05};
    const auto bd = GaussianBasis<double>::default_family(24, widths);
    const auto bf = GaussianBasis<float>::default_family(24, widths);
    // Float-representable inputs, so both types see the same densities.
    const std::vector<float> mus = {-0.25f, 0.0f, 0.125f, 0.3f, 0.5f, 0.71f, 1.0f, 1.2f};
    const std::vector<float> sigmas = {1e-6f, 1e-4f, 1e-3f, 0.01f, 0.25f, 2.0f};
    Eigen::VectorXf muf(static_cast<Index>(mus.size() * sigmas.size())), sigf(muf.size());
    Index q = 0;
    for (float m : mus)
        for (float s2 : sigmas) {
            muf[q] = m;
            sigf[q] = s2;
            ++q;
        }
    const Eigen::VectorXd mud = muf.cast<double>(), sigd = sigf.cast<double>();
    const Eigen::MatrixXd d[3] = {bd.expect_psi(mud, sigd), bd.expect_t_psi(mud, sigd),
                                  bd.expect_t2_psi(mud, sigd)};
    const Eigen::MatrixXd f[3] = {bf.expect_psi(muf, sigf).cast<double>(),
                                  bf.expect_t_psi(muf, sigf).cast<double>(),
                                  bf.expect_t2_psi(muf, sigf).cast<double>()};
    double worst = 0;
    Index compared = 0;
    for (int m = 0; m < 3; ++m)
        for (Index i = 0; i < muf.size(); ++i) {
            const double row_max = d[m].row(i).cwiseAbs().maxCoeff();
            for (Index k = 0; k < bd.size(); ++k) {
                const double g = d[m](i, k);
                // "Not tiny": within 1e-3 of the row's largest and far from float underflow.
                if (std::abs(g) < 1e-3 * row_max || std::abs(g) < 1e-30) continue;
                ++compared;
                const double err = std::abs(f[m](i, k) - g) / std::abs(g);
                worst = std::max(worst, err);
                INFO("moment " << m << ", mu = " << muf[i] << ", sigma_sq = " << sigf[i]
                               << ", k = " << k);
                CHECK(err <= 1e-4);
            }
        }
    CHECK(compared > 200);
    INFO("worst float/double relative difference " << worst);
    CHECK(worst > 0);  // float really is a different computation
}

TEST_CASE("basis: expect_psi_backward equals finite differences of expect_psi", "[basis]") {
    using B = GaussianBasis<double>;
    const auto b = B::default_family(12, {0.01, 0.05});
    Eigen::VectorXd mu(6), sig(6);
    mu << 0.0, 0.21, 0.5, 0.93, 1.15, -0.2;
    sig << 1e-4, 3e-3, 0.02, 1e-3, 0.3, 0.05;
    Eigen::MatrixXd dr(6, 12);
    std::uint64_t state = 12345;
    for (Index i = 0; i < dr.size(); ++i) {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        dr(i) = static_cast<double>(state >> 11) * 0x1.0p-53 * 2.0 - 1.0;
    }
    Eigen::VectorXd dmu(6), dsig(6);
    b.expect_psi_backward(mu, sig, dr, dmu, dsig);
    auto loss = [&](const Eigen::VectorXd& m, const Eigen::VectorXd& s) {
        return (dr.array() * b.expect_psi(m, s).array()).sum();
    };
    for (Index q = 0; q < mu.size(); ++q) {
        // Central differences, step relative to the density's scale.
        const double hm = 1e-6 * std::sqrt(sig[q] + 1e-4);
        const double hs = 1e-6 * sig[q];
        Eigen::VectorXd mp = mu, mm = mu, sp = sig, sm = sig;
        mp[q] += hm;
        mm[q] -= hm;
        sp[q] += hs;
        sm[q] -= hs;
        const double fd_mu = (loss(mp, sig) - loss(mm, sig)) / (2 * hm);
        const double fd_sig = (loss(mu, sp) - loss(mu, sm)) / (2 * hs);
        // Natural scales: Σ_k |dr r| / √v and Σ_k |dr r| / v.
        const Eigen::MatrixXd r = b.expect_psi(mu, sig);
        double scale_mu = 0, scale_sig = 0;
        for (Index k = 0; k < b.size(); ++k) {
            const double v = sig[q] + b.widths()[k] * b.widths()[k];
            scale_mu += std::abs(dr(q, k) * r(q, k)) / std::sqrt(v);
            scale_sig += std::abs(dr(q, k) * r(q, k)) / v;
        }
        INFO("q = " << q << ": dmu " << dmu[q] << " vs " << fd_mu << ", dsigma_sq " << dsig[q]
                    << " vs " << fd_sig);
        CHECK(std::abs(dmu[q] - fd_mu) <= 1e-6 * scale_mu);
        CHECK(std::abs(dsig[q] - fd_sig) <= 1e-6 * scale_sig);
    }
}

TEMPLATE_TEST_CASE("basis: row expectations skip only terms below eps/N of the row", "[basis]",
                   float, double) {
    using B = GaussianBasis<TestType>;
    using RowM = Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    using V = typename B::Vector;
    const double eps = std::numeric_limits<TestType>::epsilon();
    const std::vector<double> mus{-0.3, 0.0, 0.37, 0.5, 0.999, 1.0, 1.4};
    const std::vector<double> sigmas{0.0, 1e-6, 1e-4, 1e-2, 0.5, 5.0};
    for (const auto& widths : {std::vector<double>{0.01, 0.05}, std::vector<double>{0.005, 0.01}}) {
        const B basis = B::default_family(512, widths);
        const Index n = basis.size();
        V mu(static_cast<Index>(mus.size() * sigmas.size())), s2(mu.size());
        Index q = 0;
        for (double m : mus)
            for (double s : sigmas) {
                mu[q] = static_cast<TestType>(m);
                s2[q++] = static_cast<TestType>(s);
            }
        RowM r(mu.size(), n);
        basis.expect_psi_rows_unchecked(mu, s2, r);
        Index skipped_rows = 0;
        for (Index i = 0; i < mu.size(); ++i) {
            double total = 0, err = 0, bound = 0;
            Index zeros = 0;
            for (Index k = 0; k < n; ++k) {
                const double v =
                    static_cast<double>(s2[i]) +
                    static_cast<double>(basis.widths()[k]) * static_cast<double>(basis.widths()[k]);
                const double d =
                    static_cast<double>(mu[i]) - static_cast<double>(basis.centers()[k]);
                const double arg = -0.5 * d * d / v;
                const double exact = std::exp(arg) / std::sqrt(2 * kPi * v);
                total += exact;
                // exp(x(1 + δ)) = exp(x)·(1 + xδ): an exponent rounded in Scalar costs |x|·ε.
                bound += (8 + std::abs(arg)) * eps * exact;
                err += std::abs(static_cast<double>(r(i, k)) - exact);
                if (r(i, k) == TestType(0) && exact > 0) ++zeros;
            }
            INFO("mu " << mu[i] << ", sigma_sq " << s2[i] << ", zeros " << zeros << ", err " << err
                       << ", total " << total);
            // Dropped terms < eps·Σr; each kept term within a few roundings of its exponent
            // (plus the denormal range, which the row flushes to 0).
            CHECK(err <= eps * total + bound +
                             static_cast<double>(n) * std::numeric_limits<TestType>::min());
            if (zeros >= 10) ++skipped_rows;
        }
        CHECK(subnormals(r) == 0);
        // The window does drop terms that are not zero in double (narrow densities).
        INFO("rows with >= 10 dropped terms: " << skipped_rows);
        CHECK(skipped_rows >= 6);
        // An unsorted basis (no window) gives the same rows.
        V c = basis.centers(), w = basis.widths();
        std::swap(c[0], c[n - 1]);
        std::swap(w[0], w[n - 1]);
        const B shuffled(c, w);
        RowM r2(mu.size(), n);
        shuffled.expect_psi_rows_unchecked(mu, s2, r2);
        std::swap(c[0], c[n - 1]);
        for (Index i = 0; i < mu.size(); ++i) {
            const double scale = static_cast<double>(r.row(i).sum());
            const TestType d0 = r2(i, n - 1) - r(i, 0), d1 = r2(i, 0) - r(i, n - 1);
            CHECK(std::abs(static_cast<double>(d0)) <= 2 * eps * scale);
            CHECK(std::abs(static_cast<double>(d1)) <= 2 * eps * scale);
        }
    }
}

TEST_CASE("basis: rejects bad input", "[basis][errors]") {
    using B = GaussianBasis<double>;
    VectorXd c(4), s(4);
    c << 0, 0.25, 0.5, 1;
    s << 0.01, 0.05, 0.01, 0.05;
    SECTION("constructor") {
        const char* where = "GaussianBasis::GaussianBasis: ";
        REQUIRE_INVALID(B(VectorXd(0), VectorXd(0)), has(where) && has("centers has 0 entries"));
        REQUIRE_INVALID(B(c, s.head(3)), has(where) && has("widths is 3x1, expected 4x1"));
        REQUIRE_INVALID(B(with(c, 1, kNaN), s), has(where) && has("centers") && has("nan"));
        REQUIRE_INVALID(B(c, with(s, 2, kInf)), has(where) && has("widths") && has("inf"));
        REQUIRE_INVALID(B(c, with(s, 2, -0.5)), has(where) && has("widths[2] is -0.5"));
        REQUIRE_INVALID(B(c, with(s, 0, 0.0)), has(where) && has("widths[0] is 0"));
    }
    SECTION("default_family") {
        const char* where = "GaussianBasis::default_family: ";
        REQUIRE_INVALID(B::default_family(8, {}), has(where) && has("widths has 0 entries"));
        REQUIRE_INVALID(B::default_family(7, {0.01, 0.05}), has(where) && has("num_basis is 7"));
        REQUIRE_INVALID(B::default_family(0, {0.01}), has(where) && has("num_basis is 0"));
        REQUIRE_INVALID(B::default_family(4, {0.01, -0.5}), has(where) && has("widths[1] is -0.5"));
        REQUIRE_INVALID(B::default_family(4, {kNaN, 0.5}), has(where) && has("widths[0] is nan"));
    }
    const B b(c, s);
    SECTION("evaluate") {
        const char* where = "GaussianBasis::evaluate: ";
        VectorXd t(3);
        t << 0.1, 0.2, 0.3;
        REQUIRE_INVALID(b.evaluate(with(t, 1, kNaN)),
                        has(where) && has("t has a non-finite entry nan"));
        REQUIRE_INVALID(b.evaluate(with(t, 2, -kInf)), has(where) && has("t") && has("-inf"));
        MatrixXd out(3, 5);
        REQUIRE_INVALID(b.evaluate(t, out), has(where) && has("out is 3x5, expected 3x4"));
    }
    SECTION("expectations") {
        VectorXd mu(3), s2(3);
        mu << 0.1, 0.5, 2.0;
        s2 << 1e-4, 0.0, 1.0;
        using Fn = std::function<MatrixXd(const VectorXd&, const VectorXd&)>;
        const std::vector<std::pair<std::string, Fn>> fns = {
            {"GaussianBasis::expect_psi: ", [&](auto& m, auto& v) { return b.expect_psi(m, v); }},
            {"GaussianBasis::expect_t_psi: ",
             [&](auto& m, auto& v) { return b.expect_t_psi(m, v); }},
            {"GaussianBasis::expect_t2_psi: ",
             [&](auto& m, auto& v) { return b.expect_t2_psi(m, v); }},
        };
        for (const auto& [where, f] : fns) {
            INFO(where);
            CHECK_NOTHROW(f(mu, s2));
            REQUIRE_INVALID(f(with(mu, 0, kNaN), s2),
                            has(where) && has("mu has a non-finite entry nan"));
            REQUIRE_INVALID(f(mu, s2.head(2)), has(where) && has("sigma_sq is 2x1, expected 3x1"));
            REQUIRE_INVALID(f(mu, with(s2, 1, -0.25)), has(where) && has("sigma_sq[1] is -0.25"));
            REQUIRE_INVALID(f(mu, with(s2, 2, kInf)), has(where) && has("sigma_sq") && has("inf"));
            REQUIRE_INVALID(f(mu, with(s2, 2, kNaN)), has(where) && has("sigma_sq") && has("nan"));
        }
        MatrixXd out(3, 3);
        REQUIRE_INVALID(b.expect_psi(mu, s2, out), has("out is 3x3, expected 3x4"));
        REQUIRE_INVALID(b.expect_t_psi(mu, s2, out), has("out is 3x3, expected 3x4"));
        REQUIRE_INVALID(b.expect_t2_psi(mu, s2, out), has("out is 3x3, expected 3x4"));
        // The backward pass.
        const char* where = "GaussianBasis::expect_psi_backward: ";
        MatrixXd dr = MatrixXd::Ones(3, 4);
        VectorXd dmu(3), ds(3), short_v(2);
        CHECK_NOTHROW(b.expect_psi_backward(mu, s2, dr, dmu, ds));
        REQUIRE_INVALID(b.expect_psi_backward(mu, s2, MatrixXd::Ones(3, 5), dmu, ds),
                        has(where) && has("dr is 3x5, expected 3x4"));
        REQUIRE_INVALID(b.expect_psi_backward(mu, s2, with(dr, 1, 1, kNaN), dmu, ds),
                        has(where) && has("dr has a non-finite entry nan"));
        REQUIRE_INVALID(b.expect_psi_backward(mu, s2, dr, short_v, ds),
                        has(where) && has("dmu is 2x1, expected 3x1"));
        REQUIRE_INVALID(b.expect_psi_backward(mu, s2, dr, dmu, short_v),
                        has(where) && has("dsigma_sq is 2x1, expected 3x1"));
        REQUIRE_INVALID(b.expect_psi_backward(mu, with(s2, 0, -0.5), dr, dmu, ds),
                        has(where) && has("sigma_sq[0] is -0.5"));
    }
}

TEST_CASE("basis: expect_psi_backward equals Ridders finite differences, small sigma_sq included",
          "[basis][fd][training]") {
    struct Case {
        Index n;
        std::vector<double> widths;
        Index q;
    };
    const std::vector<Case> cases = {
        {8, {0.01, 0.05}, 7}, {12, {0.005, 0.01}, 9}, {5, {0.02}, 4}, {24, {0.005, 0.01}, 3}};
    const std::vector<double> variances = {1e-8, 1e-6, 1e-4, 1e-3, 0.02, 0.3, 2.0, 5e-5, 0.1};
    Normal rng(11);
    for (const auto& c : cases) {
        const auto basis = GaussianBasisd::default_family(c.n, c.widths);
        const double s2_min = basis.widths().cwiseAbs2().minCoeff();
        VectorXd mu(c.q), s2(c.q);
        for (Index i = 0; i < c.q; ++i) {
            // Near the centres, between them, and outside [0, 1].
            mu[i] = i % 3 == 0 ? basis.centers()[(i * 5) % c.n] + 0.3 * basis.widths()[0]
                               : rng.uniform(-0.3, 1.3);
            s2[i] = variances[static_cast<std::size_t>(i) % variances.size()];
        }
        const MatrixXd dr = rng.matrix(c.q, c.n);
        VectorXd dmu(c.q), ds2(c.q);
        basis.expect_psi_backward(mu, s2, dr, dmu, ds2);
        auto loss = [&](const VectorXd& m, const VectorXd& s) {
            return basis.expect_psi(m, s).cwiseProduct(dr).sum();
        };
        INFO("N = " << c.n << ", Q = " << c.q);
        // Steps on the scale of each density: √(σ² + s²_min) for μ; for σ², never more
        // than half of σ² (σ² must stay ≥ 0).
        const auto mu_r = fd::check_steps(
            dmu,
            [&](Index e, double d) {
                VectorXd m = mu;
                m[e] += d;
                return loss(m, s2);
            },
            fd::pick(c.q, c.q, 0), [&](Index e) { return 0.2 * std::sqrt(s2[e] + s2_min); });
        require_fd("basis", "dmu", mu_r);
        const auto s2_r = fd::check_steps(
            ds2,
            [&](Index e, double d) {
                VectorXd s = s2;
                s[e] += d;
                return loss(mu, s);
            },
            fd::pick(c.q, c.q, 0),
            [&](Index e) { return std::min(0.5 * s2[e], 0.2 * (s2[e] + s2_min)); });
        require_fd("basis", "dsigma_sq", s2_r);
    }
}

// Split from "training: bad backward arguments are rejected and change no gradient" (the
// basis part; lm_small(8, 4, 92)'s widths).
TEST_CASE("basis: bad expect_psi_backward arguments are rejected", "[basis][errors][training]") {
    const LongTermParams p = lm_small(8, 4, 92);
    Normal rng(92);
    const Index n = 8;
    const auto basis = GaussianBasisd::default_family(n, p.widths);
    VectorXd mu = VectorXd::Constant(2, 0.5), s2 = VectorXd::Constant(2, 0.01), dmu(2), ds2(2),
             dmu_bad(3);
    CHECK_THROWS_WITH(basis.expect_psi_backward(mu, s2, rng.matrix(2, n + 1), dmu, ds2),
                      Contains("dr"));
    CHECK_THROWS_WITH(basis.expect_psi_backward(mu, s2, rng.matrix(2, n), dmu_bad, ds2),
                      Contains("dmu"));
    s2[1] = -1e-3;
    CHECK_THROWS_WITH(basis.expect_psi_backward(mu, s2, rng.matrix(2, n), dmu, ds2),
                      Contains("sigma_sq"));
}

TEMPLATE_TEST_CASE("basis: no subnormal psi; drop_negligible drops below eps/N of a row only",
                   "[basis]", float, double) {
    using B = GaussianBasis<TestType>;
    using V = typename B::Vector;
    const double eps = std::numeric_limits<TestType>::epsilon();
    const double tiny = std::numeric_limits<TestType>::min();
    const B basis = B::default_family(128, {0.005, 0.01});  // the language model's widths
    const Index n = basis.size();
    V t(2001);
    for (Index p = 0; p < t.size(); ++p)
        t[p] = static_cast<TestType>(-0.5 + 2.0 * static_cast<double>(p) / 2000.0);
    auto psi = basis.evaluate(t);
    CHECK(subnormals(psi) == 0);
    const auto kept = psi;
    detail::drop_negligible(psi, false);
    CHECK(subnormals(psi) == 0);
    Index raw_subnormal = 0, dropped = 0;
    for (Index p = 0; p < t.size(); ++p) {
        double row_max = 0, lost = 0, err = 0, bound = 0;
        for (Index k = 0; k < n; ++k) {
            const double s = static_cast<double>(basis.widths()[k]);
            const double z =
                (static_cast<double>(t[p]) - static_cast<double>(basis.centers()[k])) / s;
            const double exact = std::exp(-0.5 * z * z) / (std::sqrt(2 * kPi) * s);
            // What unflushed Scalar arithmetic would hold (the grid reaches the range).
            if (std::fpclassify(static_cast<TestType>(exact)) == FP_SUBNORMAL) ++raw_subnormal;
            row_max = std::max(row_max, exact);
            const double got = static_cast<double>(kept(p, k));
            if (got == 0.0) {
                CHECK(exact < 1.01 * tiny);  // evaluate() zeroes only the subnormal range
            } else {
                err = std::max(err, std::abs(got - exact) / exact);
                // z = (t − c)·(1/s) carries 3 roundings, z² 6, −z²/2 7: |Δarg| ≤ 3.5 z² ε;
                // exp and the normalisation add a few.
                bound = std::max(bound, (8 + 3.5 * z * z) * eps);
            }
            if (psi(p, k) == TestType(0)) {
                lost += exact;
                if (got != 0.0) ++dropped;
            } else {
                CHECK(psi(p, k) == kept(p, k));
            }
        }
        INFO("t = " << t[p] << ": lost " << lost << " of row max " << row_max);
        // Everything dropped from one row together is below ε times its largest value.
        CHECK(lost <= eps * row_max + static_cast<double>(n) * tiny);
        CHECK(err <= bound);
    }
    INFO("values that would be subnormal " << raw_subnormal << ", dropped " << dropped);
    CHECK(raw_subnormal > 0);
    CHECK(dropped > 0);
}

TEMPLATE_TEST_CASE("basis: the E[psi] row kernels (Eigen's, and the run-time dispatched one)",
                   "[basis]", float, double) {
    using S = TestType;
    const double eps = std::numeric_limits<S>::epsilon();
    const double log_min = std::log(static_cast<double>(std::numeric_limits<S>::min()));
    // Exponents from 0 to 1.2 ln(smallest normal), 1003 terms (not a multiple of 8).
    const Index len = 1003;
    std::vector<S> w(static_cast<std::size_t>(len)), c(w.size()), a(w.size()), b(w.size());
    const S mu = S(0.3), s2 = S(1e-4);
    for (Index k = 0; k < len; ++k) {
        w[static_cast<std::size_t>(k)] = static_cast<S>(k % 2 ? 2.5e-5 : 1e-4);
        const double target = 1.2 * log_min * static_cast<double>(k) / static_cast<double>(len);
        const double v = static_cast<double>(w[static_cast<std::size_t>(k)]) + 1e-4;
        c[static_cast<std::size_t>(k)] = static_cast<S>(0.3 + std::sqrt(-2 * target * v));
    }
    detail::gauss_row_eigen(w.data(), c.data(), mu, s2, a.data(), len);
    detail::gauss_row(w.data(), c.data(), mu, s2, b.data(), len);
    Index zeros = 0;
    for (Index k = 0; k < len; ++k) {
        const auto i = static_cast<std::size_t>(k);
        const double v = static_cast<double>(w[i]) + static_cast<double>(s2);
        const double d = static_cast<double>(c[i]) - static_cast<double>(mu);
        const double arg = -0.5 * d * d / v;
        const double exact = std::exp(arg) / std::sqrt(2 * kPi * v);
        INFO("k = " << k << ", exponent " << arg << ": " << a[i] << ", " << b[i] << " vs "
                    << exact);
        for (const S got : {a[i], b[i]}) {
            if (arg < log_min * (1 + 8 * eps)) {
                CHECK(got == S(0));
            } else if (arg > log_min * (1 - 8 * eps)) {
                // 4 roundings in the exponent, a few in exp and the normalisation.
                CHECK(std::abs(static_cast<double>(got) - exact) <=
                      (10 + 5 * std::abs(arg)) * eps * exact);
            }
        }
        if (b[i] == S(0)) ++zeros;
    }
    CHECK(zeros > 100);  // the range below ln(smallest normal) was reached
}
