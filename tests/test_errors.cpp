// Every public entry point rejects bad input with infinityformer::invalid_argument (or
// logic_error for call order) whose message names the place, the argument and the value
// received; after the throw the object works and its state is unchanged (compared with a
// twin that never saw the bad call).
#include <catch2/catch.hpp>
#include <cmath>
#include <functional>
#include <infinityformer/infinityformer.hpp>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace {

using namespace infinityformer;
using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();
using testutil::kPi;

using testutil::Normal;

MatrixXd with(MatrixXd m, Index i, Index j, double v) {
    m(i, j) = v;
    return m;
}
VectorXd with(VectorXd m, Index i, double v) {
    m[i] = v;
    return m;
}

// The message of an infinityformer::invalid_argument must contain the library prefix, the
// place, and every fragment given (argument name and received value).
Catch::Matchers::StdString::ContainsMatcher has(const std::string& s) { return Catch::Contains(s); }

}  // namespace

// Checks type and message; `expr` is evaluated twice (once per macro), which the state
// checks after each group cover as well.
#define REQUIRE_INVALID(expr, matcher)                                  \
    do {                                                                \
        REQUIRE_THROWS_AS(expr, infinityformer::invalid_argument);      \
        REQUIRE_THROWS_WITH(expr, has("[infinityformer] ") && matcher); \
    } while (false)

#define REQUIRE_LOGIC(expr, matcher)                                    \
    do {                                                                \
        REQUIRE_THROWS_AS(expr, infinityformer::logic_error);           \
        REQUIRE_THROWS_WITH(expr, has("[infinityformer] ") && matcher); \
    } while (false)

TEST_CASE("errors: LongTermParams::validate names each field and value", "[errors]") {
    struct Bad {
        std::function<void(LongTermParams&)> set;
        std::string fragment;  // "<field> is <received>"
    };
    const std::vector<Bad> bad = {
        {[](auto& p) { p.num_basis = 15; }, "num_basis is 15"},
        {[](auto& p) { p.num_basis = 0; }, "num_basis is 0"},
        {[](auto& p) { p.num_basis = -4; }, "num_basis is -4"},
        {[](auto& p) { p.widths = {}; }, "widths is empty"},
        {[](auto& p) {
             p.widths = {0.01, 0.0};
         },
         "widths[1] is 0"},
        {[](auto& p) {
             p.widths = {-0.5, 0.05};
         },
         "widths[0] is -0.5"},
        {[](auto& p) {
             p.widths = {0.01, kNaN};
         },
         "widths[1] is nan"},
        {[](auto& p) {
             p.widths = {kInf, 0.01};
         },
         "widths[0] is inf"},
        {[](auto& p) { p.ridge_lambda = 0; }, "ridge_lambda is 0"},
        {[](auto& p) { p.ridge_lambda = -0.5; }, "ridge_lambda is -0.5"},
        {[](auto& p) { p.ridge_lambda = kNaN; }, "ridge_lambda is nan"},
        {[](auto& p) { p.ridge_lambda = kInf; }, "ridge_lambda is inf"},
        {[](auto& p) { p.tau = 0; }, "tau is 0"},
        {[](auto& p) { p.tau = 1; }, "tau is 1"},
        {[](auto& p) { p.tau = kNaN; }, "tau is nan"},
        {[](auto& p) { p.tau = -0.25; }, "tau is -0.25"},
        {[](auto& p) { p.tau = 1.5; }, "tau is 1.5"},
        {[](auto& p) { p.num_samples = 0; }, "num_samples is 0"},
        {[](auto& p) { p.num_samples = -3; }, "num_samples is -3"},
        {[](auto& p) { p.num_bins = 0; }, "num_bins is 0"},
        {[](auto& p) { p.sigma_sq_min = 0; }, "sigma_sq_min is 0"},
        {[](auto& p) { p.sigma_sq_min = -0.25; }, "sigma_sq_min is -0.25"},
        {[](auto& p) { p.sigma_sq_min = kNaN; }, "sigma_sq_min is nan"},
        {[](auto& p) { p.kl_sigma_0 = 0; }, "kl_sigma_0 is 0"},
        {[](auto& p) { p.kl_sigma_0 = -0.125; }, "kl_sigma_0 is -0.125"},
        {[](auto& p) { p.kl_mu_0 = kNaN; }, "kl_mu_0 is nan"},
        {[](auto& p) { p.reset_after_tokens = -1; }, "reset_after_tokens is -1"},
        {[](auto& p) { p.sampling = static_cast<Sampling>(7); }, "sampling is 7"},
    };
    for (const auto& b : bad) {
        LongTermParams p;
        b.set(p);
        INFO(b.fragment);
        // The whole set names the part whose field is out of range.
        REQUIRE_INVALID(p.validate(),
                        (has("MemoryParams::validate: ") || has("AttentionParams::validate: ")) &&
                            has(b.fragment));
    }
    // The presets and edge values that are in range pass.
    CHECK_NOTHROW(LongTermParams::sorting().validate());
    CHECK_NOTHROW(LongTermParams::lm().validate());
    LongTermParams edge;
    edge.num_basis = 2;
    edge.tau = 1e-9;
    edge.num_samples = 1;
    edge.num_bins = 1;
    edge.reset_after_tokens = 0;
    CHECK_NOTHROW(edge.validate());
    // Every constructor validates the settings it uses, and only those: the attention
    // never reads τ, the memory never reads σ²_min.
    LongTermParams p;
    p.num_basis = 16;
    p.tau = 1;
    const auto basis = GaussianBasis<double>::default_family(16, p.widths);
    REQUIRE_INVALID(LongTermMemory<double>(4, 8, p), has("MemoryParams") && has("tau is 1"));
    CHECK_NOTHROW(ContinuousAttention<double>(basis, 4, 2, 0, p));
    REQUIRE_INVALID(LongTermAttention<double>(4, 2, 8, p), has("tau is 1"));
    REQUIRE_INVALID(InfinityFormerLayer<double>(4, 2, 8, p), has("tau is 1"));
    LongTermParams q;
    q.num_basis = 16;
    q.sigma_sq_min = 0;
    CHECK_NOTHROW(LongTermMemory<double>(4, 8, q));
    REQUIRE_INVALID(ContinuousAttention<double>(basis, 4, 2, 0, q),
                    has("AttentionParams") && has("sigma_sq_min is 0"));
    REQUIRE_INVALID(LongTermAttention<double>(4, 2, 8, q), has("sigma_sq_min is 0"));
    REQUIRE_INVALID(InfinityFormerLayer<double>(4, 2, 8, q), has("sigma_sq_min is 0"));
}

TEST_CASE("errors: the presets are the sum of their parts' settings", "[errors]") {
    for (const LongTermParams& p : {LongTermParams::sorting(), LongTermParams::lm()}) {
        const MemoryParams m = p.memory_params();
        const AttentionParams a = p.attention_params();
        CHECK(m.num_basis == p.num_basis);
        CHECK(m.widths == p.widths);
        CHECK(m.ridge_lambda == p.ridge_lambda);
        CHECK(m.tau == p.tau);
        CHECK(m.num_samples == p.num_samples);
        CHECK(m.num_bins == p.num_bins);
        CHECK(m.sampling == p.sampling);
        CHECK(m.reset_after_tokens == p.reset_after_tokens);
        CHECK(m.seed == p.seed);
        CHECK(a.sigma_sq_min == p.sigma_sq_min);
        CHECK(a.kl_sigma_0 == p.kl_sigma_0);
        CHECK(a.kl_mu_term == p.kl_mu_term);
        CHECK(a.kl_mu_0 == p.kl_mu_0);
    }
    // The two presets differ in the fields the paper gives them.
    CHECK(LongTermParams::lm().memory_params().sampling == Sampling::sticky);
    CHECK(LongTermParams::sorting().memory_params().sampling == Sampling::uniform);
    CHECK(LongTermParams::lm().attention_params().kl_mu_term);
}

TEST_CASE("errors: GaussianBasis", "[errors]") {
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

TEST_CASE("errors: positions and RidgeFit", "[errors]") {
    REQUIRE_INVALID(single_chunk_positions(0), has("single_chunk_positions: length is 0"));
    REQUIRE_INVALID(unbounded_positions(0, 4, 0.5), has("unbounded_positions: length is 0"));
    REQUIRE_INVALID(unbounded_positions(4, 0, 0.5), has("unbounded_positions: num_samples is 0"));
    REQUIRE_INVALID(unbounded_positions(4, 4, 1.0), has("unbounded_positions: tau is 1"));
    REQUIRE_INVALID(unbounded_positions(4, 4, kNaN), has("unbounded_positions: tau is nan"));
    const auto basis = GaussianBasis<double>::default_family(8, {0.01, 0.05});
    const FitPositions good = single_chunk_positions(6);  // 12 positions, kept [3, 9)
    const char* where = "RidgeFit::RidgeFit: ";
    REQUIRE_INVALID(RidgeFit<double>(basis, good, 0.0), has(where) && has("ridge_lambda is 0"));
    REQUIRE_INVALID(RidgeFit<double>(basis, good, -0.5), has(where) && has("ridge_lambda is -0.5"));
    REQUIRE_INVALID(RidgeFit<double>(basis, good, kNaN), has(where) && has("ridge_lambda is nan"));
    FitPositions p = good;
    p.first_kept = -1;
    REQUIRE_INVALID(RidgeFit<double>(basis, p, 1.0),
                    has(where) && has("kept positions [-1, 5)") && has("12 positions"));
    p = good;
    p.num_kept = 0;
    REQUIRE_INVALID(RidgeFit<double>(basis, p, 1.0), has(where) && has("kept positions [3, 3)"));
    p = good;
    p.first_kept = 8;
    REQUIRE_INVALID(RidgeFit<double>(basis, p, 1.0),
                    has(where) && has("kept positions [8, 14)") && has("12 positions"));
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

TEST_CASE("errors: sticky_histogram", "[errors]") {
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

TEST_CASE("errors: LongTermMemory rejects bad input and keeps its state", "[errors]") {
    LongTermParams p;
    p.num_basis = 16;
    p.num_samples = 8;
    p.num_bins = 16;
    p.sampling = Sampling::sticky;
    p.seed = 11;
    p.reset_after_tokens = 16;
    REQUIRE_INVALID(LongTermMemory<double>(0, 8, p),
                    has("LongTermMemory::LongTermMemory: dim is 0"));
    REQUIRE_INVALID(LongTermMemory<double>(4, 0, p),
                    has("LongTermMemory::LongTermMemory: chunk_length is 0"));
    LongTermMemory<double> mem(4, 8, p), twin(4, 8, p);
    Normal rng(4);
    const MatrixXd x = rng.matrix(8, 4);
    VectorXd pts(8);
    pts << 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8;
    VectorXd mu(3), s2(3);
    mu << 0.2, 0.5, 0.9;
    s2 << 1e-3, 1e-2, 4e-3;

    auto bad_calls = [&] {
        const char* where = "LongTermMemory::update: ";
        REQUIRE_INVALID(mem.update(rng.matrix(7, 4)), has(where) && has("X is 7x4, expected 8x4"));
        REQUIRE_INVALID(mem.update(rng.matrix(8, 3)), has(where) && has("X is 8x3, expected 8x4"));
        REQUIRE_INVALID(mem.update(with(x, 3, 2, kNaN)),
                        has(where) && has("X has a non-finite entry nan at (3, 2)"));
        REQUIRE_INVALID(mem.update(with(x, 0, 0, kInf)),
                        has(where) && has("X has a non-finite entry inf at (0, 0)"));
        REQUIRE_INVALID(mem.update(with(x, 7, 3, -kInf)), has(where) && has("-inf"));
        REQUIRE_INVALID(mem.update(x, VectorXd(pts.head(7))),
                        has(where) && has("sample_points is 7x1, expected 8x1"));
        REQUIRE_INVALID(mem.update(x, with(pts, 5, kNaN)),
                        has(where) && has("sample_points has a non-finite entry nan"));
        REQUIRE_INVALID(mem.update(rng.matrix(9, 4), pts), has(where) && has("X is 9x4"));
        const char* obs = "LongTermMemory::observe: ";
        REQUIRE_INVALID(mem.observe(with(mu, 1, kNaN), s2),
                        has(obs) && has("mu has a non-finite entry nan"));
        REQUIRE_INVALID(mem.observe(mu, VectorXd(s2.head(2))),
                        has(obs) && has("sigma_sq is 2x1, expected 3x1"));
        REQUIRE_INVALID(mem.observe(mu, with(s2, 2, 0.0)), has(obs) && has("sigma_sq[2] is 0"));
        REQUIRE_INVALID(mem.observe(mu, with(s2, 0, -0.5)), has(obs) && has("sigma_sq[0] is -0.5"));
        REQUIRE_INVALID(mem.observe(mu, with(s2, 0, kInf)),
                        has(obs) && has("sigma_sq") && has("inf"));
    };
    auto same_state = [&] {
        CHECK(mem.empty() == twin.empty());
        CHECK(mem.tokens_stored() == twin.tokens_stored());
        CHECK(mem.coefficients() == twin.coefficients());
        CHECK(mem.histogram() == twin.histogram());
        CHECK(mem.last_sample_points() == twin.last_sample_points());
        CHECK(mem.last_past() == twin.last_past());
    };
    // Before the first chunk.
    bad_calls();
    same_state();
    CHECK(mem.empty());
    for (LongTermMemory<double>* m : {&mem, &twin}) {
        m->update(x);
        m->observe(mu, s2);
    }
    // With a memory, an observation and a sticky generator in play.
    bad_calls();
    same_state();
    for (LongTermMemory<double>* m : {&mem, &twin}) m->update(x * 0.5);  // 16 tokens: reset due
    same_state();
    REQUIRE(mem.tokens_stored() == 16);
    // A bad chunk when a reset is due must not reset the memory.
    bad_calls();
    same_state();
    CHECK_FALSE(mem.empty());
    // The generator was not advanced: the next sticky points are the twin's.
    for (LongTermMemory<double>* m : {&mem, &twin}) {
        m->update(x);  // reset → first chunk
        m->observe(mu, s2);
        m->update(x * 2.0);  // sticky draw
    }
    same_state();
    REQUIRE(mem.last_sample_points().size() == 8);
    CHECK(mem.next_sample_points() == twin.next_sample_points());
}

TEST_CASE("errors: ContinuousAttention", "[errors]") {
    LongTermParams p;
    p.num_basis = 16;
    const auto basis = GaussianBasis<double>::default_family(16, p.widths);
    const char* ctor = "ContinuousAttention::ContinuousAttention: ";
    REQUIRE_INVALID(ContinuousAttention<double>(basis, 0, 1, 0, p), has(ctor) && has("dim is 0"));
    REQUIRE_INVALID(ContinuousAttention<double>(basis, 6, 4, 0, p),
                    has(ctor) && has("num_heads is 4") && has("divisor of dim (6)"));
    REQUIRE_INVALID(ContinuousAttention<double>(basis, 6, 0, 0, p),
                    has(ctor) && has("num_heads is 0"));
    REQUIRE_INVALID(ContinuousAttention<double>(basis, 6, 2, -1, p),
                    has(ctor) && has("d_model is -1"));

    ContinuousAttention<double> att(basis, 6, 2, 5, p), twin(basis, 6, 2, 5, p);
    Normal rng(6);
    const MatrixXd b = rng.matrix(16, 6), q = rng.matrix(3, 6);
    const MatrixXd first = att.forward(b, q);
    twin.forward(b, q);
    const char* fwd = "ContinuousAttention::forward: ";
    REQUIRE_INVALID(att.forward(rng.matrix(15, 6), q), has(fwd) && has("B is 15x6, expected 16x6"));
    REQUIRE_INVALID(att.forward(rng.matrix(16, 5), q), has(fwd) && has("B is 16x5, expected 16x6"));
    REQUIRE_INVALID(att.forward(with(b, 4, 1, kNaN), q),
                    has(fwd) && has("B has a non-finite entry nan"));
    REQUIRE_INVALID(att.forward(b, MatrixXd(0, 6)), has(fwd) && has("queries has 0 rows"));
    REQUIRE_INVALID(att.forward(b, rng.matrix(3, 5)),
                    has(fwd) && has("queries has 5 cols, expected 6"));
    REQUIRE_INVALID(att.forward(b, with(q, 2, 5, kInf)),
                    has(fwd) && has("queries has a non-finite entry inf"));
    MatrixXd out(3, 6);
    REQUIRE_INVALID(att.forward(b, q, out), has(fwd) && has("out is 3x6, expected 3x5"));
    // The trace still holds the last good forward.
    CHECK(att.last().output == first);

    const auto w = att.weights();
    const char* sw = "ContinuousAttention::set_weights: ";
    auto bad = w;
    bad.proj_key = rng.matrix(6, 5);
    REQUIRE_INVALID(att.set_weights(bad), has(sw) && has("proj_key is 6x5, expected 6x6"));
    bad = w;
    bad.proj_value = rng.matrix(5, 6);
    REQUIRE_INVALID(att.set_weights(bad), has(sw) && has("proj_value is 5x6, expected 6x6"));
    bad = w;
    bad.attn_out = rng.matrix(6, 6);
    REQUIRE_INVALID(att.set_weights(bad), has(sw) && has("attn_out is 6x6, expected 5x6"));
    bad = w;
    bad.mu = rng.matrix(15, 1);
    REQUIRE_INVALID(att.set_weights(bad), has(sw) && has("mu is 15x1, expected 16x1"));
    bad = w;
    bad.sigma = rng.matrix(17, 1);
    REQUIRE_INVALID(att.set_weights(bad), has(sw) && has("sigma is 17x1, expected 16x1"));
    bad = w;
    bad.attn_out(4, 5) = kNaN;
    REQUIRE_INVALID(att.set_weights(bad), has(sw) && has("attn_out has a non-finite entry nan"));
    bad = w;
    bad.sigma[3] = -kInf;
    REQUIRE_INVALID(att.set_weights(bad), has(sw) && has("sigma has a non-finite entry -inf"));
    // Weights unchanged, and the object computes as its twin.
    CHECK(att.weights().proj_key == twin.weights().proj_key);
    CHECK(att.weights().proj_value == twin.weights().proj_value);
    CHECK(att.weights().attn_out == twin.weights().attn_out);
    CHECK(att.weights().mu == twin.weights().mu);
    CHECK(att.weights().sigma == twin.weights().sigma);
    const MatrixXd q2 = rng.matrix(4, 6);
    CHECK(att.forward(b, q2) == twin.forward(b, q2));
}

TEST_CASE("errors: MemoryGate", "[errors]") {
    REQUIRE_INVALID(MemoryGate<double>(0), has("MemoryGate::MemoryGate: dim is 0"));
    MemoryGate<double> gate(5, 1), twin(5, 1);
    Normal rng(8);
    const MatrixXd x = rng.matrix(4, 5);
    MatrixXd g(4, 5), gated(4, 5);
    const char* fwd = "MemoryGate::forward: ";
    REQUIRE_INVALID(gate.forward(MatrixXd(0, 5), g, gated), has(fwd) && has("X has 0 rows"));
    REQUIRE_INVALID(gate.forward(rng.matrix(4, 6), g, gated),
                    has(fwd) && has("X has 6 cols, expected 5"));
    REQUIRE_INVALID(gate.forward(with(x, 1, 1, kNaN), g, gated),
                    has(fwd) && has("X has a non-finite entry nan"));
    MatrixXd g_bad(3, 5), gated_bad(4, 4);
    REQUIRE_INVALID(gate.forward(x, g_bad, gated), has(fwd) && has("gate is 3x5, expected 4x5"));
    REQUIRE_INVALID(gate.forward(x, g, gated_bad), has(fwd) && has("gated is 4x4, expected 4x5"));
    const auto w = gate.weights();
    const char* sw = "MemoryGate::set_weights: ";
    auto bad = w;
    bad.taps[1] = rng.matrix(5, 4);
    REQUIRE_INVALID(gate.set_weights(bad), has(sw) && has("taps[1] is 5x4, expected 5x5"));
    bad = w;
    bad.taps[2](0, 0) = kInf;
    REQUIRE_INVALID(gate.set_weights(bad), has(sw) && has("taps[2] has a non-finite entry inf"));
    bad = w;
    bad.bias = rng.matrix(4, 1);
    REQUIRE_INVALID(gate.set_weights(bad), has(sw) && has("bias is 4x1, expected 5x1"));
    for (std::size_t j = 0; j < 3; ++j) CHECK(gate.weights().taps[j] == twin.weights().taps[j]);
    CHECK(gate.weights().bias == twin.weights().bias);
    MatrixXd g2(4, 5), gated2(4, 5);
    gate.forward(x, g, gated);
    twin.forward(x, g2, gated2);
    CHECK(g == g2);
    CHECK(gated == gated2);
}

TEST_CASE("errors: LongTermAttention rejects bad input and keeps its state", "[errors]") {
    for (bool lm : {false, true}) {
        INFO((lm ? "lm (gate, sticky)" : "sorting"));
        LongTermParams p = lm ? LongTermParams::lm() : LongTermParams::sorting();
        p.num_basis = 16;
        p.num_samples = 8;
        p.num_bins = 16;
        REQUIRE_INVALID(LongTermAttention<double>(6, 4, 8, p), has("num_heads is 4"));
        REQUIRE_INVALID(LongTermAttention<double>(0, 1, 8, p), has("dim is 0"));
        REQUIRE_INVALID(LongTermAttention<double>(6, 2, 0, p), has("chunk_length is 0"));
        LongTermAttention<double> lta(6, 2, 8, p), twin(6, 2, 8, p);
        if (!lm) {
            REQUIRE_LOGIC(lta.gate(), has("LongTermAttention::gate") && has("no gate"));
            const auto& c = lta;
            REQUIRE_LOGIC(c.gate(), has("LongTermAttention::gate") && has("no gate"));
        }
        Normal rng(10);
        const MatrixXd x = rng.matrix(8, 6), q = rng.matrix(3, 6);
        VectorXd pts(8);
        pts << 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8;
        auto bad_calls = [&] {
            const char* fwd = "LongTermAttention::forward: ";
            const char* upd = "LongTermAttention::update: ";
            REQUIRE_INVALID(lta.forward(rng.matrix(7, 6), q),
                            has(fwd) && has("X is 7x6, expected 8x6"));
            REQUIRE_INVALID(lta.forward(with(x, 0, 0, kNaN), q),
                            has(fwd) && has("X has a non-finite entry nan"));
            REQUIRE_INVALID(lta.forward(x, rng.matrix(3, 5)),
                            has(fwd) && has("queries has 5 cols, expected 6"));
            REQUIRE_INVALID(lta.forward(x, with(q, 1, 1, kNaN)),
                            has(fwd) && has("queries has a non-finite entry nan"));
            REQUIRE_INVALID(lta.forward(x, MatrixXd(0, 6)), has(fwd) && has("queries has 0 rows"));
            REQUIRE_INVALID(lta.forward(x, q, VectorXd(pts.head(3))),
                            has(fwd) && has("sample_points is 3x1, expected 8x1"));
            REQUIRE_INVALID(lta.forward(x, q, with(pts, 0, kInf)),
                            has(fwd) && has("sample_points has a non-finite entry inf"));
            REQUIRE_INVALID(lta.forward(rng.matrix(8, 7), q, pts), has(fwd) && has("X is 8x7"));
            REQUIRE_INVALID(lta.update(rng.matrix(8, 5)),
                            has(upd) && has("X is 8x5, expected 8x6"));
            REQUIRE_INVALID(lta.update(x, VectorXd(pts.head(9 - 2))),
                            has(upd) && has("sample_points is 7x1"));
        };
        auto same_state = [&] {
            CHECK(lta.memory().empty() == twin.memory().empty());
            CHECK(lta.memory().tokens_stored() == twin.memory().tokens_stored());
            CHECK(lta.memory().coefficients() == twin.memory().coefficients());
            CHECK(lta.memory().histogram() == twin.memory().histogram());
            CHECK(lta.last_gated() == twin.last_gated());
        };
        // Call order: attend() before any update().
        REQUIRE_LOGIC(lta.attend(q), has("LongTermAttention::attend") && has("memory is empty"));
        bad_calls();
        same_state();
        CHECK(lta.memory().empty());
        for (auto* m : {&lta, &twin}) m->forward(x, q);
        bad_calls();
        // attend() with bad queries: from the attention, naming the argument.
        REQUIRE_INVALID(lta.attend(rng.matrix(2, 4)), has("queries has 4 cols, expected 6"));
        REQUIRE_INVALID(lta.attend(with(q, 0, 0, kNaN)), has("queries has a non-finite entry nan"));
        same_state();
        for (auto* m : {&lta, &twin}) m->forward(x * 0.5, q * 2.0);
        same_state();
        bad_calls();
        // The next chunks (sticky draws in the lm case) match the twin's.
        for (int c = 0; c < 3; ++c) {
            const MatrixXd xc = rng.matrix(8, 6), qc = rng.matrix(3, 6);
            CHECK(lta.forward(xc, qc) == twin.forward(xc, qc));
            CHECK(lta.memory().last_sample_points() == twin.memory().last_sample_points());
        }
        same_state();
    }
}

TEST_CASE("errors: InfinityFormerLayer rejects bad input and keeps its state", "[errors]") {
    LongTermParams p = LongTermParams::lm();
    p.num_basis = 16;
    p.num_samples = 8;
    p.num_bins = 16;
    REQUIRE_INVALID(InfinityFormerLayer<double>(6, 4, 4, p), has("num_heads is 4"));
    REQUIRE_INVALID(InfinityFormerLayer<double>(6, 0, 4, p), has("num_heads is 0"));
    REQUIRE_INVALID(InfinityFormerLayer<double>(6, 2, 0, p), has("chunk_length is 0"));
    REQUIRE_INVALID(InfinityFormerLayer<double>(0, 1, 4, p), has("d_model is 0"));
    InfinityFormerLayer<double> layer(6, 2, 4, p), twin(6, 2, 4, p);
    Normal rng(12);
    const MatrixXd x = rng.matrix(4, 6);
    auto bad_calls = [&] {
        const char* where = "InfinityFormerLayer::forward: ";
        REQUIRE_INVALID(layer.forward(rng.matrix(3, 6)),
                        has(where) && has("X is 3x6, expected 4x6"));
        REQUIRE_INVALID(layer.forward(rng.matrix(5, 6)),
                        has(where) && has("X is 5x6, expected 4x6"));
        REQUIRE_INVALID(layer.forward(rng.matrix(4, 7)),
                        has(where) && has("X is 4x7, expected 4x6"));
        REQUIRE_INVALID(layer.forward(with(x, 2, 3, kNaN)),
                        has(where) && has("X has a non-finite entry nan at (2, 3)"));
        REQUIRE_INVALID(layer.forward(with(x, 0, 5, kInf)),
                        has(where) && has("X has a non-finite entry inf"));
        // Finite input whose projected queries overflow: x_j = DBL_MAX sign(W_Q[r, j]) gives
        // q_r = DBL_MAX Σ_j |W_Q[r, j]| > DBL_MAX for the row r of largest Σ_j |W_Q[r, j]|.
        const auto w = layer.short_term_weights();
        const MatrixXd huge = testutil::overflowing_input(w.query, 4);
        REQUIRE_INVALID(layer.forward(huge), has(where) && has("queries") && has("inf"));
        const char* sw = "ShortTermAttention::set_weights: ";
        auto bad = w;
        bad.query = rng.matrix(6, 5);
        REQUIRE_INVALID(layer.set_short_term_weights(bad),
                        has(sw) && has("query is 6x5, expected 6x6"));
        bad = w;
        bad.key = rng.matrix(5, 6);
        REQUIRE_INVALID(layer.set_short_term_weights(bad),
                        has(sw) && has("key is 5x6, expected 6x6"));
        bad = w;
        bad.value = rng.matrix(6, 7);
        REQUIRE_INVALID(layer.set_short_term_weights(bad),
                        has(sw) && has("value is 6x7, expected 6x6"));
        bad = w;
        bad.out = rng.matrix(1, 1);
        REQUIRE_INVALID(layer.set_short_term_weights(bad),
                        has(sw) && has("out is 1x1, expected 6x6"));
        bad = w;
        bad.key(1, 2) = kNaN;
        REQUIRE_INVALID(layer.set_short_term_weights(bad),
                        has(sw) && has("key has a non-finite entry nan"));
        CHECK(layer.short_term_weights().query == twin.short_term_weights().query);
        CHECK(layer.short_term_weights().key == twin.short_term_weights().key);
        CHECK(layer.short_term_weights().value == twin.short_term_weights().value);
        CHECK(layer.short_term_weights().out == twin.short_term_weights().out);
    };
    // Bad calls at every stage of the stream (empty, window only, window + pending chunk,
    // memory in use); the next good chunk must give the twin's output, bit for bit.
    for (int c = 0; c < 6; ++c) {
        INFO("before chunk " << c);
        bad_calls();
        const MatrixXd xc = rng.matrix(4, 6);
        const MatrixXd y = layer.forward(xc);
        CHECK(y == twin.forward(xc));
        CHECK(layer.long_term().memory().coefficients() ==
              twin.long_term().memory().coefficients());
        CHECK(layer.long_term().memory().tokens_stored() ==
              twin.long_term().memory().tokens_stored());
    }
}

// A rejected chunk must not touch the trace that backward() differentiates.
TEST_CASE("errors: a rejected layer forward leaves the backward trace unchanged", "[errors]") {
    LongTermParams p = LongTermParams::sorting();
    p.num_basis = 16;
    p.num_samples = 8;
    InfinityFormerLayer<double> layer(6, 2, 4, p), twin(6, 2, 4, p);
    Normal rng(14);
    for (int c = 0; c < 3; ++c) {
        const MatrixXd x = rng.matrix(4, 6);
        layer.forward(x);
        twin.forward(x);
    }
    const MatrixXd huge = testutil::overflowing_input(layer.short_term_weights().query, 4);
    REQUIRE_THROWS_AS(layer.forward(huge), infinityformer::invalid_argument);
    const MatrixXd dy = rng.matrix(4, 6);
    MatrixXd dx(4, 6), dx_twin(4, 6);
    layer.backward(dy, 0.5, dx);
    twin.backward(dy, 0.5, dx_twin);
    CHECK(dx.allFinite());
    CHECK(dx == dx_twin);
    CHECK(layer.short_term_gradients().query == twin.short_term_gradients().query);
}
