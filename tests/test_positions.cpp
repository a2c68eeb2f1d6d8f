// The long-term memory's position layouts (positions.hpp): the single-chunk midpoints with
// their pads, the unbounded-memory layout of compressed samples, new chunk and pads (the
// authors' exact choices, golden README Q4); bad input. Where a token of a given age sits
// (token_position) and what a configuration can hold (memory_reach, the refusal of a memory
// that cannot hold its own chunk or diverges, with the nearest num_basis accepted).
#include <catch2/catch.hpp>
#include <cmath>
#include <infinityformer/memory.hpp>
#include <infinityformer/positions.hpp>
#include <infinityformer/reach.hpp>
#include <string>

#include "extern_templates.hpp"
#include "test_util.hpp"

namespace {

using namespace infinityformer;
using Eigen::Index;
using testutil::has;
using testutil::kNaN;

}  // namespace

TEST_CASE("positions: single_chunk_positions are midpoints with floor(L/2) pads per side",
          "[positions]") {
    for (Index l = 1; l <= 41; ++l) {
        const FitPositions pos = single_chunk_positions(l);
        const Index a = l / 2;
        INFO("L = " << l);
        REQUIRE(static_cast<Index>(pos.all.size()) == l + 2 * a);
        REQUIRE(pos.first_kept == a);
        REQUIRE(pos.num_kept == l);
        for (Index p = 0; p < l + 2 * a; ++p) {
            // t_p = (p − a + ½)/L: midpoints (j + ½)/L for p = a + j, the same grid beyond.
            const double expected = (static_cast<double>(p - a) + 0.5) / static_cast<double>(l);
            CHECK(std::abs(pos.all[static_cast<std::size_t>(p)] - expected) <= 1e-14);
        }
        // Pads lie outside [0, 1], real positions inside.
        for (Index p = 0; p < a; ++p) CHECK(pos.all[static_cast<std::size_t>(p)] < 0.0);
        for (Index p = a + l; p < l + 2 * a; ++p) CHECK(pos.all[static_cast<std::size_t>(p)] > 1.0);
    }
}

TEST_CASE("positions: unbounded_positions layout", "[positions]") {
    for (double tau : {0.25, 0.5, 0.75}) {
        for (Index l = 1; l < 60; ++l) {
            for (Index m = 1; m < 60; ++m) {
                const FitPositions pos = unbounded_positions(l, m, tau);
                const Index p = m + l;
                const auto total = static_cast<Index>(pos.all.size());
                INFO("tau = " << tau << ", L = " << l << ", M = " << m);
                REQUIRE(pos.num_kept == p);
                REQUIRE(pos.first_kept >= 0);
                REQUIRE(pos.first_kept + p <= total);
                const Index n_left = pos.first_kept;
                const Index n_right = total - pos.first_kept - p;
                // Real positions: τ i/M, then τ + (1 − τ) j/L; the last ones exactly τ and 1.
                for (Index i = 1; i <= m; ++i) {
                    const double got = pos.all[static_cast<std::size_t>(n_left + i - 1)];
                    REQUIRE(std::abs(got - tau * static_cast<double>(i) / m) <= 1e-15);
                }
                REQUIRE(pos.all[static_cast<std::size_t>(n_left + m - 1)] == tau);
                for (Index j = 1; j <= l; ++j) {
                    const double got = pos.all[static_cast<std::size_t>(n_left + m + j - 1)];
                    REQUIRE(std::abs(got - (tau + (1 - tau) * static_cast<double>(j) / l)) <=
                            1e-15);
                }
                REQUIRE(pos.all[static_cast<std::size_t>(n_left + p - 1)] == 1.0);
                // Pads: < 0 on the left, > 1 on the right, ascending, on the grid
                // linspace(−½ + s, 3/2 − s, 2P), s = 1/(2L + M) (golden README Q4).
                const double s = 1.0 / static_cast<double>(2 * l + m);
                const double h = (2.0 - 2.0 * s) / static_cast<double>(2 * p - 1);
                for (Index q = 0; q < n_left; ++q) {
                    const double got = pos.all[static_cast<std::size_t>(q)];
                    REQUIRE(got < 0.0);
                    REQUIRE(std::abs(got - (-0.5 + s + h * static_cast<double>(q))) <= 1e-14);
                }
                for (Index q = 0; q < n_right; ++q) {
                    const double got = pos.all[static_cast<std::size_t>(n_left + p + q)];
                    REQUIRE(got > 1.0);
                    const double expected = 1.5 - s - h * static_cast<double>(n_right - 1 - q);
                    REQUIRE(std::abs(got - expected) <= 1e-14);
                }
                // The grid has 2P points: those in [0, 1] number 2P − n_left − n_right.
                Index inside = 0;
                for (Index q = 0; q < 2 * p; ++q) {
                    const double g = -0.5 + s + h * static_cast<double>(q);
                    if (g >= 0.0 && g <= 1.0) ++inside;
                }
                REQUIRE(inside == 2 * p - n_left - n_right);
                for (Index q = 1; q < total; ++q)
                    REQUIRE(pos.all[static_cast<std::size_t>(q)] >
                            pos.all[static_cast<std::size_t>(q - 1)]);
                // For even L the reference keeps rows ⌊P/2⌋…: the left pads must number
                // exactly ⌊(M + L)/2⌋ (and so do the right ones).
                if (l % 2 == 0) {
                    REQUIRE(n_left == p / 2);
                    REQUIRE(n_right == p / 2);
                }
            }
        }
    }
}

// Split from "errors: positions and RidgeFit" (the positions part).
TEST_CASE("positions: reject bad input", "[positions][errors]") {
    REQUIRE_INVALID(single_chunk_positions(0), has("single_chunk_positions: length is 0"));
    REQUIRE_INVALID(unbounded_positions(0, 4, 0.5), has("unbounded_positions: length is 0"));
    REQUIRE_INVALID(unbounded_positions(4, 0, 0.5), has("unbounded_positions: num_samples is 0"));
    REQUIRE_INVALID(unbounded_positions(4, 4, 1.0), has("unbounded_positions: tau is 1"));
    REQUIRE_INVALID(unbounded_positions(4, 4, kNaN), has("unbounded_positions: tau is nan"));
}

TEST_CASE("reach: token_position follows a token through the updates of a memory",
          "[positions][reach]") {
    const Index m = 8;
    for (Index l : {1, 3, 4}) {
        const double tau = 0.6;
        const FitPositions first = single_chunk_positions(l);
        const FitPositions next = unbounded_positions(l, m, tau);
        for (Index j = 1; j <= l; ++j) {
            INFO("L = " << l << ", j = " << j);
            const Index age = l - j;  // token j of the newest chunk
            const double fresh = next.all[static_cast<std::size_t>(next.first_kept + m + j - 1)];
            // The newest chunk: where unbounded_positions() fitted it.
            CHECK(token_position(age, l, tau) == fresh);
            // One and three updates later, compressed by tau each time.
            CHECK(token_position(age + l, l, tau) == Approx(tau * fresh).epsilon(1e-15));
            CHECK(token_position(age + 3 * l, l, tau) ==
                  Approx(tau * tau * tau * fresh).epsilon(1e-15));
            // In a memory of two chunks, the first chunk's tokens were fitted alone.
            const double alone = first.all[static_cast<std::size_t>(first.first_kept + j - 1)];
            CHECK(token_position(age + l, l, tau, 2 * l) == Approx(tau * alone).epsilon(1e-15));
            CHECK(token_position(age, l, tau, 2 * l) == fresh);
        }
    }
    REQUIRE_INVALID(token_position(-1, 4, 0.5), has("token_position: age is -1, expected >= 0"));
    REQUIRE_INVALID(token_position(8, 4, 0.5, 8), has("age is 8, expected < tokens_stored (8)"));
    REQUIRE_INVALID(token_position(0, 0, 0.5), has("chunk_length is 0"));
    REQUIRE_INVALID(token_position(0, 4, 1.0), has("tau is 1, expected 0 < tau < 1"));
}

TEST_CASE("reach: the chunk gain is what a memory reads back after storing ones over zeros",
          "[positions][reach]") {
    for (Index l : {1, 4, 16}) {
        MemoryParams p = LongTermParams::sorting().memory_params();
        p.num_basis = 64;
        p.num_samples = 32;
        p.stability = Stability::allow;
        const MemoryReach reach = memory_reach(p, l);
        // A first chunk of zeros, then a chunk of ones: the old memory is zero, so the
        // coefficients are G_newᵀ 1, read back at the new chunk's positions.
        LongTermMemory<double> memory(3, l, p);
        memory.update(Eigen::MatrixXd::Zero(l, 3));
        memory.update(Eigen::MatrixXd::Ones(l, 3));
        Eigen::VectorXd t(l);
        for (Index age = 0; age < l; ++age) t[age] = token_position(age, l, p.tau);
        const Eigen::MatrixXd read = memory.evaluate(t);
        INFO("L = " << l);
        CHECK(read.col(0).mean() == Approx(reach.chunk_gain).epsilon(1e-10));
        CHECK(read.col(2).mean() == Approx(reach.chunk_gain).epsilon(1e-10));
        CHECK(reach.chunk_gain > 0.0);
    }
}

TEST_CASE("reach: the horizon is the age at which detail shrinks below the resolution",
          "[positions][reach]") {
    // The sorting widths {0.01, 0.05} with 64 centres (N = 128, spacing 1/63 > 0.01) and
    // with 128 (N = 256, spacing 1/127 < 0.01); L = 256, M = 128.
    MemoryParams p = LongTermParams::sorting().memory_params();
    p.num_samples = 128;
    p.num_basis = 256;
    CHECK(memory_reach(p, 256).resolution == Approx(0.01));  // above 1/127 and 1/128
    p.num_basis = 128;
    const MemoryReach r = memory_reach(p, 256);
    CHECK(r.centre_spacing == Approx(1.0 / 63.0));
    CHECK(r.resolution == Approx(1.0 / 63.0));  // above 0.01 and 1/128
    CHECK(r.effective_resolution == Approx(r.resolution / std::sqrt(1.0 - 0.75 * 0.75)));
    CHECK(r.chunk_share == Approx(0.25));
    CHECK(r.tokens_per_resolution == Approx(256 * r.resolution / 0.25));
    CHECK(r.holds_own_chunk);
    // At the horizon, the detail's span τ^(h/L)·(1 − τ^(P/L)) equals the effective resolution.
    for (double detail : {1.0, 64.0, 256.0, 1024.0}) {
        const double h = r.horizon_tokens(detail);
        INFO("detail " << detail << " tokens, horizon " << h);
        const double span = std::pow(0.75, h / 256.0) * (1.0 - std::pow(0.75, detail / 256.0));
        if (h > 0)
            CHECK(span == Approx(r.effective_resolution).epsilon(1e-12));
        else
            CHECK(1.0 - std::pow(0.75, detail / 256.0) <= r.effective_resolution);
    }
    CHECK(r.horizon_tokens(1.0) == 0.0);  // single tokens are never apart at L = 256
    CHECK(r.horizon_tokens(256.0) > 0.0);
    CHECK(r.horizon_chunks() == Approx(r.horizon_tokens(256.0) / 256.0));
    REQUIRE_INVALID(r.horizon_tokens(0.0), has("detail_tokens is 0, expected > 0 and finite"));
    p.tau = 1.5;
    REQUIRE_INVALID(memory_reach(p, 1024), has("memory_reach"));
    REQUIRE_INVALID(memory_reach(LongTermParams::sorting().memory_params(), 0),
                    has("memory_reach: chunk_length is 0"));
}

TEST_CASE("reach: a memory that cannot hold its own chunk is refused, unless allowed",
          "[positions][reach][errors]") {
    // Sixteen basis functions: centres 1/7 apart, wider than the chunk's share 1 − 0.9.
    MemoryParams narrow = LongTermParams::sorting().memory_params();
    narrow.num_basis = 16;
    narrow.tau = 0.9;
    CHECK_FALSE(memory_reach(narrow, 16).holds_own_chunk);
    REQUIRE_INVALID(LongTermMemory<double>(2, 16, narrow),
                    has("cannot hold its own chunk") && has("lower tau below 0.857143"));
    narrow.tau = 0.75;  // share 0.25 > 1/7
    CHECK(memory_reach(narrow, 16).holds_own_chunk);
    CHECK_NOTHROW(LongTermMemory<double>(2, 16, narrow));

    // One token against 512 samples of the past: kept at a fifth of its size.
    MemoryParams weak = LongTermParams::sorting().memory_params();
    weak.num_basis = 32;
    weak.num_samples = 512;
    const MemoryReach r = memory_reach(weak, 1);
    CHECK(r.chunk_gain < kMinChunkGain);
    CHECK_FALSE(r.holds_own_chunk);
    REQUIRE_INVALID(LongTermMemory<double>(2, 1, weak),
                    has("cannot hold its own chunk") && has("fewer samples (num_samples)"));
    weak.stability = Stability::allow;
    CHECK_NOTHROW(LongTermMemory<double>(2, 1, weak));
}

TEST_CASE("reach: a divergent configuration's refusal names the nearest num_basis accepted",
          "[positions][reach][errors]") {
    // N = 32 with the sorting widths at L = M = 16 diverges (docs/design.md §4).
    MemoryParams p = LongTermParams::sorting().memory_params();
    p.num_basis = 32;
    p.num_samples = 16;
    std::string message;
    try {
        LongTermMemory<double> m(2, 16, p);
    } catch (const invalid_argument& e) {
        message = e.what();
    }
    INFO(message);
    REQUIRE_THAT(message, has("the memory diverges") && has("the nearest num_basis accepted"));
    // Every num_basis the message names is accepted; every even one between them is not.
    const std::size_t at = message.find("unchanged: ") + 11;
    const Index below = std::stol(message.substr(at));
    const Index above = std::stol(message.substr(message.find(" and ", at) + 5));
    CHECK(below < 32);
    CHECK(above > 32);
    for (Index n = below; n <= above; n += 2) {
        INFO("num_basis = " << n);
        p.num_basis = n;
        if (n == below || n == above)
            CHECK_NOTHROW(LongTermMemory<double>(2, 16, p));
        else
            CHECK_THROWS_AS(LongTermMemory<double>(2, 16, p), invalid_argument);
    }
}
