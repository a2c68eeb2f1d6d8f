// Where the old memory is read before each refit (sampling.hpp): the sticky histogram of the
// attention densities against a direct sum of normal bin masses (double and the vectorised
// float path), and the choice of the sample points, seen through LongTermMemory: sticky
// (seeded, on the bin grid, in proportion to the histogram), stratified (deterministic
// quantiles), concentration where the densities are, the uniform fallback; bad input.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <infinityformer/memory.hpp>
#include <infinityformer/sampling.hpp>
#include <vector>

#include "extern_templates.hpp"
#include "part_util.hpp"
#include "test_util.hpp"

namespace {

using namespace part_util;

// Φ(x) by erfc (the library uses erf): the mass of N(μ, σ²) in [a, b].
double normal_mass(double a, double b, double mu, double sigma) {
    const double r = 1.0 / std::sqrt(2.0);
    return 0.5 * std::erfc(-(b - mu) / sigma * r) - 0.5 * std::erfc(-(a - mu) / sigma * r);
}

}  // namespace

TEST_CASE("sampling: sticky sampling is seeded, on the bin grid, sorted", "[sampling]") {
    LongTermParams p = small_params(Sampling::sticky);
    p.num_samples = 64;
    p.num_bins = 32;
    VectorXd mu(4), sig(4);
    mu << 0.1, 0.45, 0.8, 1.05;
    sig << 1e-3, 4e-3, 1e-2, 2e-2;
    auto draw = [&](std::uint64_t seed, int times) {
        LongTermParams q = p;
        q.seed = seed;
        LongTermMemory<double> mem(2, 8, q);
        mem.observe(mu, sig);
        std::vector<VectorXd> out;
        for (int i = 0; i < times; ++i) out.push_back(mem.next_sample_points());
        return out;
    };
    const auto a = draw(7, 3), b = draw(7, 3), c = draw(8, 3);
    for (int i = 0; i < 3; ++i) {
        CHECK(a[i] == b[i]);
        CHECK(a[i] != c[i]);
        for (const auto* v : {&a[i], &c[i]}) {
            for (Index k = 0; k < v->size(); ++k) {
                const double x = (*v)[k];
                CHECK(x >= 0.0);
                CHECK(x < 1.0);
                CHECK(x * 32 == std::round(x * 32));  // a left edge b/D
                if (k > 0) CHECK(x >= (*v)[k - 1]);
            }
        }
    }
    // Successive draws of one generator differ (the generator advances).
    CHECK(a[0] != a[1]);
    // seed() restarts the sequence.
    LongTermParams q = p;
    q.seed = 1234;
    LongTermMemory<double> mem(2, 8, q);
    mem.observe(mu, sig);
    const VectorXd first = mem.next_sample_points();
    mem.next_sample_points();
    mem.seed(1234);
    CHECK(mem.next_sample_points() == first);
    // The same stream twice with one seed: identical memories; another seed: different.
    auto stream = [&](std::uint64_t seed) {
        LongTermParams r = small_params(Sampling::sticky);
        r.seed = seed;
        LongTermMemory<double> m(3, 8, r);
        Normal rng(4);
        for (int chunk = 0; chunk < 5; ++chunk) {
            m.update(rng.matrix(8, 3));
            VectorXd mm(3), ss(3);
            mm << rng.uniform(), rng.uniform(), rng.uniform();
            ss << 1e-3, 1e-2, 4e-2;
            m.observe(mm, ss);
        }
        return MatrixXd(m.coefficients());
    };
    CHECK(stream(5) == stream(5));
    CHECK(stream(5) != stream(6));
}

TEST_CASE("sampling: sticky bins are drawn in proportion to the histogram", "[sampling]") {
    LongTermParams p = small_params(Sampling::sticky);
    p.num_samples = 4000;
    p.num_bins = 8;
    p.seed = 31;
    LongTermMemory<double> mem(2, 8, p);
    VectorXd mu(3), sig(3);
    mu << 0.2, 0.6, 0.95;
    sig << 0.1, 0.05, 0.2;
    mem.observe(mu, sig);
    const VectorXd hist = mem.histogram();
    const VectorXd pts = mem.next_sample_points();
    std::vector<double> count(8, 0.0);
    for (Index i = 0; i < pts.size(); ++i) count[static_cast<std::size_t>(pts[i] * 8 + 0.5)] += 1;
    for (Index j = 0; j < 8; ++j) {
        const double expected = 4000 * hist[j];
        const double sd = std::sqrt(4000 * hist[j] * (1 - hist[j]));
        INFO("bin " << j << ": " << count[static_cast<std::size_t>(j)] << " drawn, expected "
                    << expected);
        // Binomial: a fixed seed, 4.5 standard deviations (a biased sampler, e.g. one bin
        // off, misses by far more).
        CHECK(std::abs(count[static_cast<std::size_t>(j)] - expected) <= 4.5 * sd + 1);
    }
}

TEST_CASE("sampling: stratified sampling is deterministic and follows the histogram",
          "[sampling]") {
    LongTermParams p = small_params(Sampling::stratified);
    p.num_samples = 50;
    p.num_bins = 20;
    VectorXd mu(3), sig(3);
    mu << 0.15, 0.5, 0.9;
    sig << 1e-3, 1e-2, 5e-3;
    LongTermMemory<double> a(2, 8, p);
    p.seed = 77;  // the seed plays no role
    LongTermMemory<double> b(2, 8, p);
    a.observe(mu, sig);
    b.observe(mu, sig);
    const VectorXd pa = a.next_sample_points();
    CHECK(a.next_sample_points() == pa);
    CHECK(b.next_sample_points() == pa);
    const VectorXd hist = a.histogram();
    REQUIRE(pa.size() == 50);
    for (Index i = 0; i < pa.size(); ++i) {
        CHECK(pa[i] >= 0.0);
        CHECK(pa[i] <= 1.0);
        if (i > 0) CHECK(pa[i] >= pa[i - 1]);
    }
    // Quantiles (i − ½)/M of the piecewise-uniform density: bin j receives M p_j points up
    // to rounding (±1).
    for (Index j = 0; j < 20; ++j) {
        Index n = 0;
        for (Index i = 0; i < pa.size(); ++i)
            if (pa[i] >= j / 20.0 && (pa[i] < (j + 1) / 20.0 || (j == 19 && pa[i] <= 1.0))) ++n;
        INFO("bin " << j << ": " << n << " points, M p = " << 50 * hist[j]);
        CHECK(std::abs(static_cast<double>(n) - 50 * hist[j]) <= 1.0 + 1e-9);
    }
    // Exactly the documented rule: point i = F⁻¹((i − ½)/M), F the CDF of the histogram read
    // as a piecewise-uniform density on the bins [j/D, (j+1)/D).
    std::vector<double> cdf(21, 0.0);
    for (Index j = 0; j < 20; ++j)
        cdf[static_cast<std::size_t>(j + 1)] = cdf[static_cast<std::size_t>(j)] + hist[j];
    for (Index i = 0; i < 50; ++i) {
        const double u = (static_cast<double>(i) + 0.5) / 50.0 * cdf[20];
        Index j = 0;
        while (j < 19 && !(u < cdf[static_cast<std::size_t>(j + 1)])) ++j;
        const double expected =
            (static_cast<double>(j) + (u - cdf[static_cast<std::size_t>(j)]) / hist[j]) / 20.0;
        INFO("point " << i);
        CHECK(std::abs(pa[i] - expected) <= 1e-12);
    }
}

TEST_CASE("sampling: samples concentrate where the densities are", "[sampling]") {
    VectorXd mu = VectorXd::Constant(6, 0.2), sig = VectorXd::Constant(6, 1e-6);
    for (Sampling s : {Sampling::sticky, Sampling::stratified}) {
        LongTermParams p = small_params(s);
        p.num_bins = 128;
        p.num_samples = 32;
        LongTermMemory<double> mem(2, 8, p);
        mem.observe(mu, sig);
        const VectorXd pts = mem.next_sample_points();
        INFO(to_string(s) << ": points from " << pts.minCoeff() << " to " << pts.maxCoeff());
        // σ = 1e-3: the mass lies in 0.2 ± 0.006, i.e. in bin 25 = [0.1953, 0.2031).
        CHECK(pts.minCoeff() >= 25.0 / 128 - 1e-12);
        CHECK(pts.maxCoeff() <= 26.0 / 128);
    }
    // And the memory actually reads there.
    LongTermParams p = small_params(Sampling::stratified);
    p.num_bins = 128;
    LongTermMemory<double> mem(2, 8, p);
    Normal rng(1);
    mem.update(rng.matrix(8, 2));
    mem.observe(mu, sig);
    mem.update(rng.matrix(8, 2));
    CHECK(std::abs(mem.last_sample_points().mean() - 0.2) < 0.01);
}

TEST_CASE("sampling: sticky_histogram is the normalised sum of normal bin masses", "[sampling]") {
    VectorXd mu(7), sigma(7);
    mu << 0.0, 0.31, 0.5, 0.999, 1.2, -0.05, 0.73;
    sigma << 0.01, 0.02, 0.3, 0.01, 0.1, 0.05, 1e-4;
    for (Index d : {1, 7, 128}) {
        const VectorXd p = sticky_histogram<double>(mu, sigma, d);
        REQUIRE(p.size() == d);
        CHECK(std::abs(p.sum() - 1.0) <= 1e-14);
        CHECK(p.minCoeff() >= 0.0);
        // Direct: edges −1e-6, j/D, 1 + 1e-6; masses summed over the densities, then
        // normalised once.
        std::vector<double> mass(static_cast<std::size_t>(d), 0.0);
        double total = 0;
        for (Index j = 0; j < d; ++j) {
            const double lo = j == 0 ? -1e-6 : static_cast<double>(j) / d;
            const double hi = j == d - 1 ? 1.0 + 1e-6 : static_cast<double>(j + 1) / d;
            for (Index q = 0; q < mu.size(); ++q)
                mass[static_cast<std::size_t>(j)] += normal_mass(lo, hi, mu[q], sigma[q]);
            total += mass[static_cast<std::size_t>(j)];
        }
        for (Index j = 0; j < d; ++j)
            CHECK(std::abs(p[j] - mass[static_cast<std::size_t>(j)] / total) <= 1e-13);
    }
    // A float result from the same computation.
    const Eigen::VectorXf pf = sticky_histogram<float>(mu.cast<float>(), sigma.cast<float>(), 16);
    const VectorXd pd = sticky_histogram<double>(mu.cast<float>().cast<double>(),
                                                 sigma.cast<float>().cast<double>(), 16);
    CHECK(max_abs(pf.cast<double>() - pd) <= 1e-6);
    // All mass far outside [0, 1]: all zeros.
    VectorXd far_mu(3), far_sigma(3);
    far_mu << 5.0, -3.0, 40.0;
    far_sigma << 0.01, 0.1, 1.0;
    const VectorXd z = sticky_histogram<double>(far_mu, far_sigma, 16);
    CHECK(z.size() == 16);
    CHECK(z.isZero(0));
}

TEST_CASE("sampling: the float histogram (vectorised erf) matches the double one", "[sampling]") {
    // Many densities, narrow to wide, as a chunk's H·L queries give them.
    Normal rng(77);
    const Index n = 3000;
    VectorXd mu(n), sigma(n);
    for (Index q = 0; q < n; ++q) {
        mu[q] = -0.2 + 1.4 * rng.uniform();
        sigma[q] = std::pow(10.0, -3.0 + 3.0 * rng.uniform());
    }
    const Eigen::VectorXf mf = mu.cast<float>(), sf = sigma.cast<float>();
    for (Index d : {1, 16, 128, 1023}) {
        const Eigen::VectorXf pf = sticky_histogram<float>(mf, sf, d);
        const VectorXd pd = sticky_histogram<double>(mf.cast<double>(), sf.cast<double>(), d);
        INFO("D = " << d);
        CHECK(pf.minCoeff() >= 0.0f);
        CHECK(std::abs(pf.cast<double>().sum() - 1.0) <= 1e-6);
        // Per bin within 1e-6 of the probability and 1e-4 of its own size.
        for (Index j = 0; j < d; ++j)
            CHECK(std::abs(static_cast<double>(pf[j]) - pd[j]) <= 1e-6 + 1e-4 * pd[j]);
    }
}

TEST_CASE("sampling: falls back to uniform points without mass in [0, 1]", "[sampling]") {
    VectorXd far_mu(2), far_sig(2);
    far_mu << 5.0, -3.0;
    far_sig << 1e-4, 1e-2;
    for (Sampling s : {Sampling::sticky, Sampling::stratified}) {
        INFO(to_string(s));
        LongTermParams p = small_params(s);
        LongTermMemory<double> mem(2, 8, p);
        // Nothing observed yet.
        CHECK(mem.histogram().isZero(0));
        CHECK(mem.next_sample_points() == uniform_points(8));
        mem.observe(far_mu, far_sig);
        CHECK(mem.histogram().isZero(0));
        CHECK(mem.next_sample_points() == uniform_points(8));
        // ... and the update reads at i/M.
        Normal rng(3);
        mem.update(rng.matrix(8, 2));
        mem.observe(far_mu, far_sig);
        mem.update(rng.matrix(8, 2));
        CHECK(mem.last_sample_points() == uniform_points(8));
    }
}

TEST_CASE("sampling: sticky_histogram rejects bad input", "[sampling][errors]") {
    VectorXd mu(2), sigma(2);
    mu << 0.2, 0.7;
    sigma << 0.01, 0.1;
    const char* where = "sticky_histogram: ";
    REQUIRE_INVALID(sticky_histogram<double>(mu, sigma, 0), has(where) && has("num_bins is 0"));
    REQUIRE_INVALID(sticky_histogram<double>(mu, VectorXd(sigma.head(1)), 8),
                    has(where) && has("sigma is 1x1, expected 2x1"));
    REQUIRE_INVALID(sticky_histogram<double>(MatrixXd::Ones(2, 2), sigma, 8),
                    has(where) && has("2x2"));
    REQUIRE_INVALID(sticky_histogram<double>(with(mu, 1, kNaN), sigma, 8),
                    has(where) && has("mu has a non-finite entry nan"));
    REQUIRE_INVALID(sticky_histogram<double>(mu, with(sigma, 0, 0.0), 8),
                    has(where) && has("sigma[0] is 0"));
    REQUIRE_INVALID(sticky_histogram<double>(mu, with(sigma, 1, -0.5), 8),
                    has(where) && has("sigma[1] is -0.5"));
    REQUIRE_INVALID(sticky_histogram<double>(mu, with(sigma, 1, kInf), 8),
                    has(where) && has("sigma has a non-finite entry inf"));
}
