// The long-term memory's position layouts (positions.hpp): the single-chunk midpoints with
// their pads, the unbounded-memory layout of compressed samples, new chunk and pads (the
// authors' exact choices, golden README Q4); bad input.
#include <catch2/catch.hpp>
#include <cmath>
#include <infinityformer/positions.hpp>

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
