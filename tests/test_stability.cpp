// Whether the memory stays bounded (stability.hpp and the Stability policy of memory.hpp):
// the three figures of MemoryStability against their definitions (eigenvalues of A, the
// one-bin growth, the column sums of the fits), the refusals, the run-time bound and the
// stabilised update. The 100,000-chunk streams are tests/stream_check.cpp.
#include <Eigen/Eigenvalues>
#include <catch2/catch.hpp>
#include <cmath>
#include <infinityformer/memory.hpp>
#include <optional>
#include <vector>

#include "extern_templates.hpp"
#include "part_util.hpp"
#include "test_util.hpp"

namespace {

using namespace part_util;

MemoryParams memory_params(Index n, std::vector<double> widths, Index m, Sampling s,
                           Stability st = Stability::refuse) {
    MemoryParams p = widths[0] == 0.005 ? LongTermParams::lm().memory_params() : MemoryParams{};
    p.num_basis = n;
    p.widths = std::move(widths);
    p.num_samples = m;
    p.num_bins = 16;
    p.sampling = s;
    p.stability = st;
    p.seed = 4;
    return p;
}

// A = G_pastᵀ Ψ(i/M), from the public operators.
MatrixXd uniform_operator(const LongTermMemory<double>& mem) {
    const Index m = mem.num_samples();
    return mem.unbounded_fit().G().topRows(m).transpose() * mem.basis().evaluate(uniform_points(m));
}

// A sticky configuration that passes the constructor (widths {0.05, 0.1}, N = 16, L = M =
// 16: ρ(A) = 0.59, concentrated growth 1.09 ≤ kMaxConcentratedGrowth) but whose memory
// grows while the attention stays on one place (every query at μ = 0.3, σ² = 1e-4):
// measured, max |B| passes the bound after 64 chunks and reaches 1e70 times it in 2,000.
MemoryParams growing_sticky(Stability st) {
    return memory_params(16, {0.05, 0.1}, 16, Sampling::sticky, st);
}

// The densities a stream observes: random (μ ∈ [−0.1, 1.1], σ² from 1e-4 to 1e-1) or
// concentrated (all at μ = 0.3, σ² = 1e-4).
void observe(LongTermMemory<double>& mem, Normal& rng, bool concentrated) {
    VectorXd mu(6), s2(6);
    for (Index q = 0; q < 6; ++q) {
        mu[q] = concentrated ? 0.3 : -0.1 + 1.2 * rng.uniform();
        s2[q] = concentrated ? 1e-4 : std::pow(10.0, -4 + 3 * rng.uniform());
    }
    mem.observe(mu, s2);
}

// Streams `chunks` chunks of normals, observing densities after each.
void stream(LongTermMemory<double>& mem, int chunks, Normal& rng, bool concentrated,
            double* largest_ratio) {
    for (int c = 0; c < chunks; ++c) {
        const MatrixXd x = rng.matrix(mem.chunk_length(), mem.dim());
        mem.update(x);
        observe(mem, rng, concentrated);
        if (largest_ratio && mem.coefficient_bound() > 0)
            *largest_ratio =
                std::max(*largest_ratio, max_abs(mem.coefficients()) / mem.coefficient_bound());
    }
}

}  // namespace

TEST_CASE("stability: the uniform radius is the spectral radius of A", "[stability]") {
    struct Case {
        Index n, m, l;
        std::vector<double> widths;
    };
    // Power iteration, on the smaller of N × N and M × M (M = 64 < N = 96: M × M).
    const std::vector<Case> cases = {{16, 8, 8, {0.01, 0.05}},
                                     {64, 16, 16, {0.01, 0.05}},
                                     {24, 10, 5, {0.005, 0.01}},
                                     {96, 64, 16, {0.05, 0.1}},
                                     {128, 64, 8, {0.01, 0.05}}};
    for (const auto& c : cases) {
        INFO("N = " << c.n << ", M = " << c.m << ", L = " << c.l);
        LongTermMemory<double> mem(
            2, c.l, memory_params(c.n, c.widths, c.m, Sampling::uniform, Stability::allow));
        const double exact = uniform_operator(mem).eigenvalues().cwiseAbs().maxCoeff();
        INFO("exact " << exact << ", reported " << mem.stability().uniform_radius);
        CHECK(std::abs(mem.stability().uniform_radius - exact) <= 0.01 * exact + 1e-12);
        CHECK(mem.stability().concentrated_growth == mem.stability().uniform_radius);
    }
}

TEST_CASE("stability: the concentrated growth is the one-bin update's eigenvalue", "[stability]") {
    // Every sample in bin b: X_past = 1 x̄(b/D)ᵀ, so B ← (G_pastᵀ 1) ψ(b/D)ᵀ B, a rank-one
    // map whose non-zero eigenvalue is ψ(b/D)ᵀ G_pastᵀ 1. The update itself, read at M
    // copies of b/D, must grow a memory that holds a constant by that factor.
    LongTermMemory<double> mem(
        1, 8, memory_params(32, {0.05, 0.1}, 8, Sampling::sticky, Stability::allow));
    double worst = 0;
    for (Index b = 0; b < 16; ++b) {
        const VectorXd at = VectorXd::Constant(8, static_cast<double>(b) / 16.0);
        const VectorXd c = mem.unbounded_fit().G().topRows(8).colwise().sum().transpose();
        const MatrixXd rank_one = c * mem.basis().evaluate(at).row(0);
        const double lambda = rank_one.eigenvalues().cwiseAbs().maxCoeff();
        worst = std::max(worst, lambda);
    }
    CHECK(std::abs(mem.stability().concentrated_growth - worst) <= 1e-12 * worst);
}

TEST_CASE("stability: kappa bounds every fit and is reached", "[stability]") {
    // |B_k| = |Σ_p G[p, k] y_p| ≤ κ max|y|, with equality for y_p = sign(G[p, k*]).
    LongTermMemory<double> mem(
        1, 8, memory_params(16, {0.01, 0.05}, 8, Sampling::uniform, Stability::allow));
    const MatrixXd& g = mem.unbounded_fit().G();
    const MatrixXd& g1 = mem.first_fit().G();
    const double kappa = mem.stability().fit_bound;
    Index k = 0;
    const bool from_inf =
        g.cwiseAbs().colwise().sum().maxCoeff(&k) >= g1.cwiseAbs().colwise().sum().maxCoeff();
    const MatrixXd& op = from_inf ? g : g1;
    if (!from_inf) g1.cwiseAbs().colwise().sum().maxCoeff(&k);
    const VectorXd y = op.col(k).unaryExpr([](double v) { return v < 0 ? -1.0 : 1.0; });
    CHECK(std::abs((op.transpose() * y)[k] - kappa) <= 1e-12 * kappa);
    Normal rng(3);
    for (int t = 0; t < 50; ++t) {
        const VectorXd r =
            rng.matrix(op.rows(), 1).unaryExpr([](double v) { return std::tanh(v); });
        CHECK(max_abs(op.transpose() * r) <= kappa * max_abs(r) * (1 + 1e-12));
    }
}

TEST_CASE("stability: divergent configurations are refused with what to change",
          "[stability][errors]") {
    const char* ctor = "LongTermMemory::LongTermMemory: the memory diverges";
    // The cases: sorting widths at N = 32 and N = 64 (ρ(A) = 5.23 and 1.25).
    for (Index n : {32, 64})
        for (Sampling s : {Sampling::uniform, Sampling::sticky, Sampling::stratified}) {
            INFO("N = " << n << ", " << to_string(s));
            REQUIRE_INVALID(LongTermMemory<double>(2, 16, memory_params(n, {0.01, 0.05}, 16, s)),
                            has(ctor) && has("spectral radius ") && has("N = ") &&
                                has("num_basis") && has("Stability::stabilise"));
        }
    // The lm widths at N = 32: a contracting uniform recurrence (ρ = 0.0016), but sticky
    // and stratified readings that grow by 6.7 and 24 per chunk.
    CHECK_NOTHROW(
        LongTermMemory<double>(2, 16, memory_params(32, {0.005, 0.01}, 16, Sampling::uniform)));
    for (Sampling s : {Sampling::sticky, Sampling::stratified})
        REQUIRE_INVALID(
            LongTermMemory<double>(2, 16, memory_params(32, {0.005, 0.01}, 16, s)),
            has(ctor) && has("when the attention concentrates") && has(to_string(s) + " sampling"));
    // The composite constructors report the call the user made.
    LongTermParams lp = LongTermParams::lm();
    lp.num_basis = 32;
    lp.num_samples = 16;
    lp.num_bins = 16;
    REQUIRE_INVALID(InfinityFormerLayer<double>(16, 2, 16, lp),
                    has("InfinityFormerLayer::InfinityFormerLayer: the memory diverges"));
    REQUIRE_INVALID(LongTermAttention<double>(16, 2, 16, lp),
                    has("LongTermAttention::LongTermAttention: the memory diverges"));
    // That the paper's presets (N = M = 512) are accepted is checked by stream_check: their
    // analysis takes 45 s at -O0 under the sanitizers.
}

TEST_CASE("stability: a growing memory stops at the bound, unchanged", "[stability][twin]") {
    LongTermMemory<double> mem(2, 16, growing_sticky(Stability::refuse));
    Normal rng(21);
    int failed_at = -1;
    for (int c = 0; c < 1000 && failed_at < 0; ++c) {
        const LongTermMemory<double> twin = mem;
        const MatrixXd x = rng.matrix(16, 2);
        try {
            mem.update(x);
        } catch (const infinityformer::runtime_error& e) {
            failed_at = c;
            CHECK_THAT(e.what(), Catch::Contains("LongTermMemory::update: the memory diverges") &&
                                     Catch::Contains("Stability::stabilise"));
            CHECK(mem == twin);
            break;
        }
        CHECK(max_abs(mem.coefficients()) <= mem.coefficient_bound());
        observe(mem, rng, true);
    }
    INFO("stopped at chunk " << failed_at);
    CHECK(failed_at > 0);
}

TEST_CASE("stability: the stabilised update holds the bound and is the reference below it",
          "[stability]") {
    // Where the reference exceeds the bound, stabilise stays within it.
    {
        LongTermMemory<double> ref(2, 16, growing_sticky(Stability::allow));
        LongTermMemory<double> stab(2, 16, growing_sticky(Stability::stabilise));
        Normal r1(21), r2(21);
        double ref_ratio = 0, stab_ratio = 0;
        stream(ref, 1000, r1, true, &ref_ratio);
        stream(stab, 1000, r2, true, &stab_ratio);
        INFO("reference: max |B| / bound " << ref_ratio << "; stabilised " << stab_ratio);
        CHECK(ref_ratio > 1);
        CHECK(stab_ratio <= 1 + 1e-12);
        CHECK(stab.state().rescaled > 0);
        CHECK(stab.coefficients().allFinite());
    }
    // A resolved configuration never reaches the bound: bit for bit the reference.
    for (Sampling s : {Sampling::uniform, Sampling::sticky, Sampling::stratified}) {
        INFO(to_string(s));
        LongTermMemory<double> ref(2, 16,
                                   memory_params(128, {0.01, 0.05}, 16, s, Stability::allow));
        LongTermMemory<double> stab(2, 16,
                                    memory_params(128, {0.01, 0.05}, 16, s, Stability::stabilise));
        Normal r1(8), r2(8);
        stream(ref, 300, r1, false, nullptr);
        stream(stab, 300, r2, false, nullptr);
        CHECK(stab.state().rescaled == 0);
        CHECK(stab.coefficients() == ref.coefficients());
    }
}

// Every route into the memory is held to the documented policy, whatever the sampling and
// wherever the points come from: under refuse an update either stays within the run-time
// bound or throws runtime_error with the memory unchanged; under stabilise it stays within
// the bound. The configuration (N = 32, widths {0.005, 0.01}, L = M = 16) has ρ(A) = 0.0016,
// so refuse accepts it for uniform sampling, but concentrated readings grow it by up to
// 23.5 per chunk (docs/design.md, the stability table). The points are placed by the caller,
// all M at one of 13 places of [−0.1, 1.1] (the test does not know which is worst), and go
// in through LongTermMemory::update(X, points), LongTermAttention::update(X, points) and
// LongTermAttention::forward(X, Q, points).
TEST_CASE("stability: points given by the caller are held to the bound on every route",
          "[stability]") {
    const Index n = 32, m = 16, l = 16, e = 4;
    for (Stability policy : {Stability::refuse, Stability::stabilise})
        for (Sampling sampling : {Sampling::uniform, Sampling::sticky, Sampling::stratified})
            for (int route = 0; route < 3; ++route) {
                // Refuse turns the sticky and stratified samplings of that configuration
                // away (concentrated growth above 1.5): those take N = 128, widths {0.01,
                // 0.05}, which it accepts (growth 1.21 and 1.22).
                const bool wide = policy == Stability::refuse && sampling != Sampling::uniform;
                LongTermParams p = wide ? LongTermParams{} : LongTermParams::lm();
                p.num_basis = wide ? 128 : n;
                if (wide) p.widths = {0.01, 0.05};
                p.num_samples = m;
                p.num_bins = 16;
                p.sampling = sampling;
                p.stability = policy;
                p.seed = 3;
                int refused = 0, above = 0;
                for (int place = 0; place <= 12; ++place) {
                    const VectorXd points = VectorXd::Constant(m, -0.1 + 0.1 * place);
                    // Only the object the route uses (each builds its operators).
                    std::optional<LongTermMemory<double>> mem_;
                    std::optional<LongTermAttention<double>> lta_;
                    if (route == 0)
                        mem_.emplace(e, l, p);
                    else
                        lta_.emplace(e, 2, l, p);
                    Normal rng(7);
                    for (int c = 0; c < 30; ++c) {
                        const MatrixXd x = rng.matrix(l, e);
                        const MatrixXd q = rng.matrix(3, e);
                        const LongTermMemory<double> before = route == 0 ? *mem_ : lta_->memory();
                        try {
                            if (route == 0) mem_->update(x, points);
                            if (route == 1) lta_->update(x, points);
                            if (route == 2) lta_->forward(x, q, points);
                        } catch (const infinityformer::runtime_error& err) {
                            ++refused;
                            CHECK(policy == Stability::refuse);
                            CHECK_THAT(err.what(), Contains("the memory diverges"));
                            CHECK((route == 0 ? *mem_ : lta_->memory()) == before);
                            break;
                        }
                        const LongTermMemory<double>& now = route == 0 ? *mem_ : lta_->memory();
                        if (!(max_abs(now.coefficients()) <= now.coefficient_bound())) {
                            ++above;
                            break;
                        }
                    }
                }
                INFO(to_string(policy) << ", " << to_string(sampling) << " sampling, route "
                                       << route << ": " << refused << " of 13 places refused");
                CHECK(above == 0);
                // The worst places grow the memory 23 times a chunk: refuse must stop some
                // (the wide configuration grows at most 1.22 a chunk: slower than 30 chunks).
                if (policy == Stability::refuse && !wide) CHECK(refused > 0);
            }
}

// What a stream refused under Stability::refuse does next (documented with Stability): it is
// unchanged, and since what it observed is unchanged too, the next chunks are refused as
// well while the attention stays where it was: the stream is stuck until reset(). The
// same stream under Stability::stabilise goes on.
TEST_CASE("stability: a refused stream stays refused until reset; stabilise goes on",
          "[stability]") {
    LongTermMemory<double> mem(2, 16, growing_sticky(Stability::refuse));
    LongTermMemory<double> alive(2, 16, growing_sticky(Stability::stabilise));
    Normal rng(21), same(21);
    int c = 0;
    for (; c < 1000; ++c) {
        try {
            mem.update(rng.matrix(16, 2));
        } catch (const infinityformer::runtime_error&) {
            break;
        }
        observe(mem, rng, true);
    }
    REQUIRE(c < 1000);
    int refused = 0;
    for (int k = 0; k < 20; ++k) {
        try {
            mem.update(rng.matrix(16, 2));
        } catch (const infinityformer::runtime_error& e) {
            CHECK_THAT(e.what(), Contains("reset()"));
            ++refused;
        }
    }
    INFO("after the first refusal at chunk " << c << ", " << refused << " of 20 refused");
    CHECK(refused == 20);
    mem.reset();
    mem.update(rng.matrix(16, 2));
    CHECK(mem.tokens_stored() == 16);
    // Stabilise: the same stream never stops.
    for (int k = 0; k < c + 21; ++k) {
        alive.update(same.matrix(16, 2));
        observe(alive, same, true);
    }
    CHECK(alive.state().rescaled > 0);
}
