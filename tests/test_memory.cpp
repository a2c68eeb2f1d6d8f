// Properties of the unbounded long-term memory (memory.hpp): the first-chunk and τ-compressed
// updates composed by hand from GaussianBasis/RidgeFit, explicit sample points, sticky and
// stratified sampling, the sticky histogram, reset after a number of tokens, long streams,
// float vs double, odd chunk lengths.
#include <Eigen/Eigenvalues>
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <infinityformer/memory.hpp>
#include <random>
#include <vector>

#include "test_util.hpp"

namespace {

using namespace infinityformer;
using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;

using testutil::kPi;

using testutil::Normal;

using testutil::max_abs;

LongTermParams small_params(Sampling sampling = Sampling::uniform) {
    LongTermParams p;
    p.num_basis = 16;
    p.num_samples = 8;
    p.num_bins = 16;
    p.sampling = sampling;
    return p;
}

// The uniform points i/M, i = 1…M.
VectorXd uniform_points(Index m) {
    VectorXd s(m);
    for (Index i = 0; i < m; ++i) s[i] = static_cast<double>(i + 1) / static_cast<double>(m);
    return s;
}

// The τ-compressed refit composed from the library's separately tested pieces:
// B_new = G_infᵀ [Ψ(s) B_prev; X].
MatrixXd refit(const GaussianBasis<double>& basis, const RidgeFit<double>& inf, const VectorXd& s,
               const MatrixXd& b_prev, const MatrixXd& x) {
    MatrixXd y(s.size() + x.rows(), x.cols());
    y.topRows(s.size()) = basis.evaluate(s) * b_prev;
    y.bottomRows(x.rows()) = x;
    return inf.G().transpose() * y;
}

// Φ(x) by erfc (the library uses erf): the mass of N(μ, σ²) in [a, b].
double normal_mass(double a, double b, double mu, double sigma) {
    const double r = 1.0 / std::sqrt(2.0);
    return 0.5 * std::erfc(-(b - mu) / sigma * r) - 0.5 * std::erfc(-(a - mu) / sigma * r);
}

}  // namespace

TEST_CASE("memory: the first chunk is the single-chunk fit, later ones the compressed refit",
          "[memory]") {
    for (Index l : {8, 6}) {
        LongTermParams p = small_params();
        p.num_basis = 24;
        p.widths = {0.05, 0.1};
        p.num_samples = 12;
        p.tau = 0.6;
        LongTermMemory<double> mem(5, l, p);
        REQUIRE(mem.empty());
        REQUIRE(mem.coefficients().rows() == 24);
        REQUIRE(mem.coefficients().cols() == 5);
        CHECK(mem.coefficients().isZero(0));
        const auto basis = GaussianBasis<double>::default_family(24, {0.05, 0.1});
        const auto first = single_chunk_fit<double>(basis, l, p.ridge_lambda);
        const auto inf = unbounded_fit<double>(basis, l, 12, 0.6, p.ridge_lambda);
        Normal rng(21);
        const MatrixXd x1 = rng.matrix(l, 5), x2 = rng.matrix(l, 5), x3 = rng.matrix(l, 5);

        mem.update(x1);
        const MatrixXd b1 = first.G().transpose() * x1;
        CHECK_FALSE(mem.empty());
        CHECK(mem.tokens_stored() == l);
        CHECK(max_abs(mem.coefficients() - b1) <= 1e-13 * max_abs(b1));
        CHECK(mem.last_sample_points().size() == 0);

        mem.update(x2);
        const VectorXd s = uniform_points(12);
        const MatrixXd b2 = refit(basis, inf, s, b1, x2);
        CHECK(mem.tokens_stored() == 2 * l);
        CHECK(max_abs(mem.coefficients() - b2) <= 1e-12 * max_abs(b2));
        REQUIRE(mem.last_sample_points().size() == 12);
        CHECK(max_abs(mem.last_sample_points() - s) <= 1e-15);
        CHECK(max_abs(mem.last_past() - basis.evaluate(s) * b1) <= 1e-12 * max_abs(b1));

        mem.update(x3);
        const MatrixXd b3 = refit(basis, inf, s, b2, x3);
        CHECK(max_abs(mem.coefficients() - b3) <= 1e-12 * max_abs(b3));

        // evaluate(t) is the continuous memory Bᵀψ(t), rows = positions.
        VectorXd t(3);
        t << 0.1, 0.55, 0.97;
        CHECK(max_abs(mem.evaluate(t) - basis.evaluate(t) * b3) <= 1e-13 * max_abs(b3));
    }
}

TEST_CASE("memory: with uniform sampling the update is the linear recurrence B <- A B + C X",
          "[memory]") {
    // DESIGN §4: A = G_pastᵀ Ψ(s) (N×N), C = G_newᵀ (N×L), both fixed.
    LongTermParams p = small_params();
    p.widths = {0.1, 0.2};
    LongTermMemory<double> mem(3, 8, p);
    const auto& g = mem.unbounded_fit().G();
    const MatrixXd a = g.topRows(8).transpose() * mem.basis().evaluate(uniform_points(8));
    const MatrixXd c = g.bottomRows(8).transpose();
    Normal rng(5);
    MatrixXd b = mem.first_fit().G().transpose() * MatrixXd(rng.matrix(8, 3));
    Normal replay(5);
    mem.update(replay.matrix(8, 3));
    for (int chunk = 1; chunk < 20; ++chunk) {
        const MatrixXd x = rng.matrix(8, 3);
        mem.update(replay.matrix(8, 3));
        b = a * b + c * x;
        REQUIRE(max_abs(mem.coefficients() - b) <= 1e-12 * max_abs(b));
    }
}

TEST_CASE("memory: explicit sample points are used as given and replay a sticky stream",
          "[memory]") {
    LongTermParams p = small_params(Sampling::sticky);
    p.seed = 99;
    // D ≥ M reads the memory at the points; D < M at the D bin edges (another association
    // of the same product, so equal to rounding only).
    p.num_bins = GENERATE(16, 4);
    CAPTURE(p.num_bins);
    const double same = p.num_bins < p.num_samples ? 1e-13 : 0.0;
    LongTermMemory<double> sticky(4, 8, p);
    LongTermMemory<double> replay(4, 8, p);
    const auto basis = GaussianBasis<double>::default_family(16, p.widths);
    const auto inf = unbounded_fit<double>(basis, 8, 8, p.tau, p.ridge_lambda);
    Normal rng(2);
    // Points are ignored for a first chunk.
    const MatrixXd x0 = rng.matrix(8, 4);
    sticky.update(x0);
    replay.update(x0, VectorXd::Constant(8, 0.3));
    REQUIRE(replay.coefficients() == sticky.coefficients());
    for (int chunk = 1; chunk < 6; ++chunk) {
        VectorXd mu(5), sig(5);
        for (Index i = 0; i < 5; ++i) {
            mu[i] = rng.uniform();
            sig[i] = 1e-3 * (1 + i);
        }
        sticky.observe(mu, sig);
        const MatrixXd x = rng.matrix(8, 4);
        const MatrixXd b_prev = sticky.coefficients();
        sticky.update(x);
        const VectorXd pts = sticky.last_sample_points();
        REQUIRE(pts.size() == 8);
        // The sticky update is the refit at its sample points.
        CHECK(max_abs(sticky.coefficients() - refit(basis, inf, pts, b_prev, x)) <=
              1e-12 * max_abs(sticky.coefficients()));
        // Explicit points (any, unsorted) are used exactly as given.
        replay.update(x, pts);
        CHECK(replay.last_sample_points() == pts);
        CHECK(max_abs(replay.coefficients() - sticky.coefficients()) <=
              same * max_abs(sticky.coefficients()));
    }
    // Arbitrary points, including outside [0, 1] and unsorted.
    VectorXd odd(8);
    odd << 0.9, -0.2, 0.5, 1.3, 0.5, 0.0, 0.25, 0.7;
    const MatrixXd b_prev = replay.coefficients();
    const MatrixXd x = rng.matrix(8, 4);
    replay.update(x, odd);
    CHECK(max_abs(replay.coefficients() - refit(basis, inf, odd, b_prev, x)) <=
          1e-12 * max_abs(replay.coefficients()));
    CHECK(max_abs(replay.last_past() - basis.evaluate(odd) * b_prev) <= 1e-12 * max_abs(b_prev));
}

TEST_CASE("memory: sticky sampling is seeded, on the bin grid, sorted", "[memory]") {
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

TEST_CASE("memory: sticky bins are drawn in proportion to the histogram", "[memory]") {
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

TEST_CASE("memory: stratified sampling is deterministic and follows the histogram", "[memory]") {
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

TEST_CASE("memory: samples concentrate where the densities are", "[memory]") {
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

TEST_CASE("memory: sticky_histogram is the normalised sum of normal bin masses", "[memory]") {
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

TEST_CASE("memory: the float histogram (vectorised erf) matches the double one", "[memory]") {
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

TEST_CASE("memory: sampling falls back to uniform points without mass in [0, 1]", "[memory]") {
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

TEST_CASE("memory: reset_after_tokens refits as a first chunk", "[memory]") {
    LongTermParams p = small_params();
    p.reset_after_tokens = 8;
    LongTermMemory<double> mem(3, 4, p);
    const auto basis = GaussianBasis<double>::default_family(16, p.widths);
    const auto first = single_chunk_fit<double>(basis, 4, p.ridge_lambda);
    const auto inf = unbounded_fit<double>(basis, 4, 8, p.tau, p.ridge_lambda);
    Normal rng(8);
    const MatrixXd x1 = rng.matrix(4, 3), x2 = rng.matrix(4, 3), x3 = rng.matrix(4, 3),
                   x4 = rng.matrix(4, 3), x5 = rng.matrix(4, 3);
    mem.update(x1);
    mem.update(x2);  // 8 tokens stored: not yet reset, chunk 2 is a compressed refit
    const MatrixXd b2 = refit(basis, inf, uniform_points(8), first.G().transpose() * x1, x2);
    CHECK(max_abs(mem.coefficients() - b2) <= 1e-12 * max_abs(b2));
    CHECK(mem.tokens_stored() == 8);
    mem.update(x3);  // ≥ 8 stored at the start of chunk 3: forgotten, first-chunk fit
    const MatrixXd b3 = first.G().transpose() * x3;
    CHECK(max_abs(mem.coefficients() - b3) <= 1e-13 * max_abs(b3));
    CHECK(mem.tokens_stored() == 4);
    CHECK(mem.last_sample_points().size() == 0);
    mem.update(x4);
    const MatrixXd b4 = refit(basis, inf, uniform_points(8), b3, x4);
    CHECK(max_abs(mem.coefficients() - b4) <= 1e-12 * max_abs(b4));
    mem.update(x5);
    CHECK(max_abs(mem.coefficients() - first.G().transpose() * x5) <= 1e-13 * max_abs(b3));
    // reset() by hand: the same.
    mem.reset();
    CHECK(mem.empty());
    CHECK(mem.tokens_stored() == 0);
    CHECK(mem.coefficients().isZero(0));
    mem.update(x2);
    CHECK(max_abs(mem.coefficients() - first.G().transpose() * x2) <= 1e-13 * max_abs(b2));
}

TEST_CASE("memory: long streams stay finite and bounded", "[memory]") {
    // Boundedness is a property of the configuration, not guaranteed by the method: the
    // uniform update is B ← A B + C X, and A = G_pastᵀ Ψ(i/M) has a spectral radius above 1
    // when the basis is under-resolved (centre spacing ≫ the widths), e.g. ρ(A) = 1.15 for
    // N = 16, L = 8, M = 8 with the paper's widths {0.01, 0.05} (max |B| reaches 1e61 in 1000
    // chunks), while the paper's N = M = L = 512 gives ρ(A) = 0.54. So the streams below use
    // resolved bases, and the premise ρ(A) < 1 is checked.
    struct Config {
        Index n;
        std::vector<double> widths;
        Index m;
        const char* what;
    };
    const std::vector<Config> configs = {
        {16, {0.1, 0.2}, 8, "N = 16, widths {0.1, 0.2}, M = 8"},
        {256, {0.01, 0.05}, 16, "N = 256, widths {0.01, 0.05}, M = 16"},
    };
    for (const auto& cfg : configs) {
        for (Sampling s : {Sampling::uniform, Sampling::sticky, Sampling::stratified}) {
            INFO(cfg.what << ", " << to_string(s));
            LongTermParams p = small_params(s);
            p.num_basis = cfg.n;
            p.widths = cfg.widths;
            p.num_samples = cfg.m;
            p.seed = 3;
            LongTermMemory<double> mem(4, 8, p);
            const MatrixXd a = mem.unbounded_fit().G().topRows(cfg.m).transpose() *
                               mem.basis().evaluate(uniform_points(cfg.m));
            const double rho = a.eigenvalues().cwiseAbs().maxCoeff();
            INFO("rho(A) = " << rho);
            REQUIRE(rho < 1.0);
            Normal rng(17);
            double first = 0, largest = 0;
            for (int chunk = 0; chunk < 1000; ++chunk) {
                mem.update(rng.matrix(8, 4));
                // Densities of a few queries, some outside [0, 1], σ² from 1e-4 to 1e-1.
                VectorXd mu(6), sig(6);
                for (Index i = 0; i < 6; ++i) {
                    mu[i] = -0.1 + 1.2 * rng.uniform();
                    sig[i] = std::pow(10.0, -4 + 3 * rng.uniform());
                }
                mem.observe(mu, sig);
                REQUIRE(mem.coefficients().allFinite());
                const double now = max_abs(mem.coefficients());
                if (chunk == 0) first = now;
                largest = std::max(largest, now);
            }
            INFO("max |B| over the stream / max |B| of the first chunk = " << largest / first);
            // Measured: 1.0 (N = 16) and 5.0 (N = 256).
            CHECK(largest <= 100 * first);
            CHECK(mem.tokens_stored() == 8000);
        }
    }
}

TEST_CASE("memory: float and double memories agree", "[memory]") {
    for (Sampling s : {Sampling::uniform, Sampling::stratified}) {
        LongTermParams p = small_params(s);
        p.num_basis = 32;
        p.widths = {0.05, 0.1};
        LongTermMemory<double> md(4, 8, p);
        LongTermMemory<float> mf(4, 8, p);
        Normal rng(23);
        for (int chunk = 0; chunk < 6; ++chunk) {
            const Eigen::MatrixXf x = rng.matrix(8, 4).cast<float>();
            md.update(x.cast<double>());
            mf.update(x);
            Eigen::VectorXf mu(3), sig(3);
            mu << 0.3f, 0.62f, 0.9f;
            sig << 1e-3f, 4e-3f, 2e-2f;
            md.observe(mu.cast<double>(), sig.cast<double>());
            mf.observe(mu, sig);
        }
        const double err = max_abs(mf.coefficients().cast<double>() - md.coefficients()) /
                           max_abs(md.coefficients());
        INFO(to_string(s) << ": max |B_f - B_d| / max |B_d| = " << err);
        CHECK(err <= 1e-4);
    }
}

TEST_CASE("memory: odd chunk lengths stream and reconstruct the new chunk", "[memory]") {
    // Odd L has no reference (golden README Q5); the library uses the even-L construction.
    // Quality measure: right after an update, the memory read at the new chunk's positions
    // τ + (1−τ) j/L against the chunk, ‖x̄ − X‖_F / ‖X‖_F (0 would be perfect, 1 is what
    // forgetting the chunk gives). With N = 128 (centre spacing 0.016, a resolved basis for the
    // widths {0.01, 0.05}) and M = 16, measured over 40 chunks: odd L = 5…11: ≤ 7.2e-4;
    // even L = 4…12: ≤ 6.7e-3. The bound 1e-2 sits above both (odd L must be as good as the
    // even neighbours, checked as well) and far below the 0.5-1 of an under-resolved or
    // wrong construction: with N = 16 the basis cannot represent 8 random vectors in
    // (0.75, 1] at all (error 0.5–0.8 for odd and even L alike), so N = 16 says nothing.
    auto stream_error = [](Index l) {
        LongTermParams p;
        p.num_basis = 128;
        p.num_samples = 16;
        LongTermMemory<double> mem(4, l, p);
        Normal rng(static_cast<std::uint64_t>(100 + l));
        double err = 0, norm = 0;
        VectorXd t(l);
        for (Index j = 0; j < l; ++j)
            t[j] = p.tau + (1 - p.tau) * static_cast<double>(j + 1) / static_cast<double>(l);
        for (int chunk = 0; chunk < 40; ++chunk) {
            const MatrixXd x = rng.matrix(l, 4);
            mem.update(x);
            REQUIRE(mem.coefficients().allFinite());
            if (chunk == 0) continue;
            err += (mem.evaluate(t) - x).squaredNorm();
            norm += x.squaredNorm();
        }
        return std::sqrt(err / norm);
    };
    for (Index l : {5, 7, 9, 11}) {
        const double odd = stream_error(l);
        const double even = std::max(stream_error(l - 1), stream_error(l + 1));
        INFO("L = " << l << ": relative error " << odd << ", even neighbours " << even);
        CHECK(odd <= 1e-2);
        CHECK(odd <= 2 * even);
    }
    // The odd-L first chunk sits at the midpoints (j + ½)/L.
    LongTermParams p;
    p.num_basis = 128;
    p.num_samples = 16;
    LongTermMemory<double> mem(4, 7, p);
    Normal rng(9);
    const MatrixXd x = rng.matrix(7, 4);
    mem.update(x);
    VectorXd mid(7);
    for (Index j = 0; j < 7; ++j) mid[j] = (static_cast<double>(j) + 0.5) / 7.0;
    CHECK((mem.evaluate(mid) - x).norm() <= 1e-2 * x.norm());
}
