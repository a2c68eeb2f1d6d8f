// Properties of the ridge-regression fit (ridge.hpp): exact recovery of a signal in the span
// of the basis, G against an independent solve of the normal equations, stationarity of the
// ridge objective, operator sharing, float vs double (on the position layouts of
// positions.hpp, tested in test_positions.cpp); bad input.
#include <Eigen/Dense>
#include <catch2/catch.hpp>
#include <cmath>
#include <infinityformer/positions.hpp>
#include <infinityformer/ridge.hpp>
#include <string>
#include <vector>

#include "extern_templates.hpp"
#include "test_util.hpp"

namespace {

using namespace infinityformer;
using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;

using testutil::has;
using testutil::kInf;
using testutil::kNaN;
using testutil::kPi;
using testutil::max_abs;
using testutil::with;

// Portable seeded normals (std::normal_distribution differs between standard libraries).
using testutil::Normal;

// F[k, p] = ψ_k(t_p), written out here (not through GaussianBasis::evaluate).
MatrixXd design(const VectorXd& centres, const VectorXd& widths, const std::vector<double>& t) {
    MatrixXd f(centres.size(), static_cast<Index>(t.size()));
    for (Index k = 0; k < f.rows(); ++k)
        for (Index p = 0; p < f.cols(); ++p) {
            const double z = (t[static_cast<std::size_t>(p)] - centres[k]) / widths[k];
            f(k, p) = std::exp(-0.5 * z * z) / (widths[k] * std::sqrt(2 * kPi));
        }
    return f;
}

// G of the normal equations, solved by a rank-revealing QR (no Cholesky, no shared code):
// G = rows [first, first + n) of Fᵀ (F Fᵀ + λI)⁻¹.
MatrixXd normal_equations_G(const MatrixXd& f, Index first, Index n, double lambda) {
    const MatrixXd a = f * f.transpose() + lambda * MatrixXd::Identity(f.rows(), f.rows());
    const MatrixXd gt = a.colPivHouseholderQr().solve(f.middleCols(first, n));
    return gt.transpose();
}

}  // namespace

TEST_CASE("ridge: a signal in the span of the basis is recovered exactly", "[ridge]") {
    // 8 basis functions, centres spread over [0, 1] with a width that keeps F Fᵀ well
    // conditioned; 40 real positions over [−0.1, 1.1]; no padding; λ = 1e-10.
    const Index n = 8, p = 40, d = 5;
    VectorXd c(n), w = VectorXd::Constant(n, 0.1);
    for (Index k = 0; k < n; ++k) c[k] = static_cast<double>(k) / static_cast<double>(n - 1);
    const GaussianBasis<double> basis(c, w);
    FitPositions pos;
    for (Index q = 0; q < p; ++q) pos.all.push_back(-0.1 + 1.2 * static_cast<double>(q) / (p - 1));
    pos.first_kept = 0;
    pos.num_kept = p;
    const MatrixXd f = design(c, w, pos.all);
    // The premise: F Fᵀ is well conditioned, so λ = 1e-10 biases B by ≤ λ/σ_min ≪ 1e-6.
    const Eigen::JacobiSVD<MatrixXd> svd(f * f.transpose());
    const double sigma_min = svd.singularValues().minCoeff();
    const double cond = svd.singularValues().maxCoeff() / sigma_min;
    INFO("cond(F F^T) = " << cond << ", sigma_min = " << sigma_min);
    REQUIRE(cond < 1e6);
    REQUIRE(1e-10 / sigma_min < 1e-8);

    const RidgeFit<double> fit(basis, pos, 1e-10);
    REQUIRE(fit.num_rows() == p);
    REQUIRE(fit.num_basis() == n);
    Normal rng(7);
    const MatrixXd b0 = rng.matrix(n, d);
    const MatrixXd x = f.transpose() * b0;  // P × d: the signal Bᵀψ(t) at the positions
    const MatrixXd b = fit.fit(x);
    INFO("relative error " << max_abs(b - b0) / max_abs(b0));
    CHECK(max_abs(b - b0) <= 1e-6 * max_abs(b0));
    // fit(Y, B) writes the same, and equals Gᵀ Y.
    MatrixXd b2(n, d);
    fit.fit(x, b2);
    CHECK(b2 == b);
    CHECK(max_abs(b - fit.G().transpose() * x) <= 1e-14 * max_abs(b));
}

TEST_CASE("ridge: G equals an independent solve of the normal equations", "[ridge]") {
    struct Config {
        Index n;
        std::vector<double> widths;
        double lambda;
        FitPositions pos;
        const char* what;
    };
    const std::vector<Config> configs = {
        {16, {0.01, 0.05}, 1.0, single_chunk_positions(8), "single chunk, L = 8"},
        {16, {0.01, 0.05}, 1.0, single_chunk_positions(7), "single chunk, L = 7"},
        {24, {0.005, 0.01}, 0.5, single_chunk_positions(12), "single chunk, lm widths"},
        {16, {0.01, 0.05}, 1.0, unbounded_positions(8, 8, 0.75), "unbounded L = 8, M = 8"},
        {32, {0.01, 0.05}, 1.0, unbounded_positions(6, 13, 0.5), "unbounded L = 6, M = 13"},
        {24, {0.005, 0.01}, 0.5, unbounded_positions(7, 10, 0.5), "unbounded L = 7 (odd)"},
    };
    for (const auto& cfg : configs) {
        INFO(cfg.what);
        const auto basis = GaussianBasis<double>::default_family(cfg.n, cfg.widths);
        const RidgeFit<double> fit(basis, cfg.pos, cfg.lambda);
        // Centres i/(K−1), centre-major, written out independently.
        const Index w = static_cast<Index>(cfg.widths.size()), k_c = cfg.n / w;
        VectorXd c(cfg.n), s(cfg.n);
        for (Index i = 0; i < k_c; ++i)
            for (Index j = 0; j < w; ++j) {
                c[i * w + j] = static_cast<double>(i) / static_cast<double>(k_c - 1);
                s[i * w + j] = cfg.widths[static_cast<std::size_t>(j)];
            }
        const MatrixXd f = design(c, s, cfg.pos.all);
        const MatrixXd g_ref =
            normal_equations_G(f, cfg.pos.first_kept, cfg.pos.num_kept, cfg.lambda);
        REQUIRE(fit.G().rows() == cfg.pos.num_kept);
        REQUIRE(fit.G().cols() == cfg.n);
        const double err = max_abs(fit.G() - g_ref) / max_abs(g_ref);
        INFO("max |G - G_ref| / max |G_ref| = " << err);
        CHECK(err <= 1e-10);
    }
}

TEST_CASE("ridge: the fit is a stationary point of the padded ridge objective", "[ridge]") {
    // B minimises ‖Fᵀ B − Y_padded‖² + λ‖B‖² (zero targets at the pads), so its gradient
    // F (Fᵀ B − Y_padded) + λ B vanishes.
    const auto basis = GaussianBasis<double>::default_family(20, {0.01, 0.05});
    Normal rng(11);
    for (const FitPositions& pos : {single_chunk_positions(9), unbounded_positions(10, 6, 0.75)}) {
        for (double lambda : {0.5, 1.0, 3.0}) {
            const RidgeFit<double> fit(basis, pos, lambda);
            const MatrixXd y = rng.matrix(pos.num_kept, 3);
            const MatrixXd b = fit.fit(y);
            MatrixXd y_pad = MatrixXd::Zero(static_cast<Index>(pos.all.size()), 3);
            y_pad.middleRows(pos.first_kept, pos.num_kept) = y;
            const MatrixXd f = design(basis.centers(), basis.widths(), pos.all);
            const MatrixXd grad = f * (f.transpose() * b - y_pad) + lambda * b;
            // Scale: the two terms of the gradient separately.
            const double scale = max_abs(f * y_pad) + lambda * max_abs(b);
            INFO("lambda = " << lambda << ", |grad| / scale = " << max_abs(grad) / scale);
            CHECK(max_abs(grad) <= 1e-11 * scale);
            // And the fit is not trivial: it explains part of the signal.
            CHECK((f.transpose() * b - y_pad).norm() < y_pad.norm());
        }
    }
}

TEST_CASE("ridge: copies share the operator; memories share one per configuration", "[ridge]") {
    const auto basis = GaussianBasis<double>::default_family(16, {0.01, 0.05});
    const auto a = unbounded_fit<double>(basis, 8, 8, 0.75, 1.0);
    const auto a2 = a;
    CHECK(&a.G() == &a2.G());
    // The fits themselves are not cached (memory_operators.hpp caches the memory's whole
    // set): an equal configuration gives an equal operator.
    const auto b = RidgeFit<double>(basis, unbounded_positions(8, 8, 0.75), 1.0);
    CHECK(a.G() == b.G());
    CHECK(unbounded_fit<double>(basis, 8, 8, 0.75, 0.5).G() != a.G());
    // Memories: one operators object per (L, operator fields), whatever the width, seed,
    // stream or Stability; any operator field changed gives another.
    MemoryParams p;
    p.num_basis = 16;
    p.num_samples = 8;
    p.num_bins = 4;
    p.stability = Stability::allow;
    const LongTermMemory<double> m1(3, 8, p), m2(5, 8, p, 2);
    auto q = p;
    q.seed = 9;
    q.stability = Stability::stabilise;
    q.reset_after_tokens = 16;
    const LongTermMemory<double> m3(3, 8, q);
    CHECK(&m1.operators() == &m2.operators());
    CHECK(&m1.operators() == &m3.operators());
    CHECK(&m1.first_fit().G() == &m2.first_fit().G());
    MemoryParams::for_each_field(
        [&](const char* name, FieldRole role, auto, const auto&) {
            if (role != FieldRole::operators) return;
            auto r = p;
            const std::string field = name;
            if (field == "num_basis") r.num_basis = 18;
            if (field == "num_samples") r.num_samples = 9;
            if (field == "num_bins") r.num_bins = 5;
            if (field == "ridge_lambda") r.ridge_lambda = 0.5;
            if (field == "tau") r.tau = 0.5;
            if (field == "sampling") r.sampling = Sampling::sticky;
            if (field == "widths") r.widths = {0.01, 0.06};
            INFO(field);
            REQUIRE(r != p);
            const LongTermMemory<double> other(3, 8, r);
            CHECK(&other.operators() != &m1.operators());
        },
        p);
    const LongTermMemory<double> longer(3, 9, p);
    CHECK(&longer.operators() != &m1.operators());
}

TEST_CASE("ridge: float G agrees with double G", "[ridge]") {
    const std::vector<double> widths = {0.01, 0.05};
    const auto bd = GaussianBasis<double>::default_family(32, widths);
    const auto bf = GaussianBasis<float>::default_family(32, widths);
    // The float basis's centres are the double ones rounded (i/31 is not a float).
    const GaussianBasis<double> bd_of_f(bf.centers().cast<double>(), bf.widths().cast<double>());
    for (const FitPositions& pos :
         {single_chunk_positions(10), unbounded_positions(10, 12, 0.75)}) {
        const RidgeFit<double> gd(bd, pos, 1.0);
        const RidgeFit<double> gd_of_f(bd_of_f, pos, 1.0);
        const RidgeFit<float> gf(bf, pos, 1.0);
        // G is computed in double and rounded: for the same (float) centres and widths the
        // float operator is the double one to within float rounding (2⁻²⁴ ≈ 6e-8 relative).
        const double err_same = max_abs(gf.G().cast<double>() - gd_of_f.G()) / max_abs(gd_of_f.G());
        INFO("same basis: max |G_f - G_d| / max |G_d| = " << err_same);
        CHECK(err_same <= 1.2e-7);
        // Against the double family, rounding the centres to float (δc ≈ 1e-9, amplified by
        // ∂ψ/∂c ~ 1/s and the conditioning of F Fᵀ + λI) adds a few 1e-6 (measured 3e-6).
        const double err = max_abs(gf.G().cast<double>() - gd.G()) / max_abs(gd.G());
        INFO("double family: max |G_f - G_d| / max |G_d| = " << err);
        CHECK(err <= 1e-5);
        // And a float fit of a float signal agrees as well.
        Normal rng(3);
        const MatrixXd y = rng.matrix(pos.num_kept, 4);
        const MatrixXd b_d = gd.fit(y);
        const MatrixXd b_f = gf.fit(y.cast<float>()).cast<double>();
        CHECK(max_abs(b_f - b_d) <= 1e-5 * max_abs(b_d));
    }
}

// Split from "errors: positions and RidgeFit" (the RidgeFit part).
TEST_CASE("ridge: RidgeFit rejects bad input", "[ridge][errors]") {
    const auto basis = GaussianBasis<double>::default_family(8, {0.01, 0.05});
    const FitPositions good = single_chunk_positions(6);  // 12 positions, kept [3, 9)
    const char* where = "RidgeFit::RidgeFit: ";
    REQUIRE_INVALID(RidgeFit<double>(basis, good, 0.0), has(where) && has("ridge_lambda is 0"));
    REQUIRE_INVALID(RidgeFit<double>(basis, good, -0.5), has(where) && has("ridge_lambda is -0.5"));
    REQUIRE_INVALID(RidgeFit<double>(basis, good, kNaN), has(where) && has("ridge_lambda is nan"));
    FitPositions p = good;
    p.first_kept = -1;
    REQUIRE_INVALID(RidgeFit<double>(basis, p, 1.0),
                    has(where) && has("kept positions: 6 from index -1") && has("12 positions"));
    p = good;
    p.num_kept = 0;
    REQUIRE_INVALID(RidgeFit<double>(basis, p, 1.0),
                    has(where) && has("kept positions: 0 from index 3"));
    p = good;
    p.first_kept = 8;
    REQUIRE_INVALID(RidgeFit<double>(basis, p, 1.0),
                    has(where) && has("kept positions: 6 from index 8") && has("12 positions"));
    p = good;
    p.all[4] = kNaN;
    REQUIRE_INVALID(RidgeFit<double>(basis, p, 1.0), has(where) && has("positions[4] is nan"));
    const RidgeFit<double> fit(basis, good, 1.0);
    Normal rng(1);
    const MatrixXd y = rng.matrix(6, 3);
    REQUIRE_INVALID(fit.fit(rng.matrix(5, 3)), has("RidgeFit::fit: Y has 5 rows, expected 6"));
    REQUIRE_INVALID(fit.fit(with(y, 2, 1, kInf)),
                    has("RidgeFit::fit: Y has a non-finite entry inf"));
    MatrixXd b(8, 2);
    REQUIRE_INVALID(fit.fit(y, b), has("RidgeFit::fit: B is 8x2, expected 8x3"));
    CHECK_NOTHROW(fit.fit(y));
}
