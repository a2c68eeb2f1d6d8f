// The portable seeded generator and the seed derivation (detail/random.hpp): the seeds that
// derive_seed() gives every purpose and stream are all different.
#include <catch2/catch.hpp>
#include <cstdint>
#include <infinityformer/detail/random.hpp>
#include <random>
#include <vector>

#include "extern_templates.hpp"

namespace {

using namespace infinityformer;

}  // namespace

// The layer's part of this test (stream 0's sampling generator against the attention's
// initial weights) is in test_layer.cpp.
TEST_CASE("random: no two generators share a sequence", "[random][seeds][twin]") {
    using detail::SeedPurpose;
    std::vector<std::uint64_t> seeds;
    for (std::uint64_t base : {0ULL, 1ULL, 2ULL, 41ULL})
        for (auto purpose : {SeedPurpose::attention_weights, SeedPurpose::gate_weights,
                             SeedPurpose::short_term_weights})
            seeds.push_back(detail::derive_seed(base, purpose));
    for (std::uint64_t base : {0ULL, 1ULL, 2ULL, 41ULL})
        for (std::uint64_t s = 0; s < 8; ++s)
            seeds.push_back(detail::derive_seed(base, SeedPurpose::sampling, s));
    for (std::size_t i = 0; i < seeds.size(); ++i)
        for (std::size_t j = i + 1; j < seeds.size(); ++j) {
            INFO(i << " " << j);
            CHECK(seeds[i] != seeds[j]);
        }
}

// The engine is written out so that its state can be saved: it must be the standard's
// mt19937_64 (same sequence as the standard library's for any seed; the standard fixes its
// 10000th value from the default seed) and a state set from words() continues the sequence.
TEST_CASE("random: the engine is the standard's mt19937_64, its state settable",
          "[random][state]") {
    detail::Mt19937_64 standard_seed;
    for (int i = 1; i < 10000; ++i) standard_seed();
    CHECK(standard_seed() == 9981545732273789042ULL);  // [rand.predef] in the C++ standard
    for (std::uint64_t s : {0ULL, 1ULL, 0x9e3779b97f4a7c15ULL, ~0ULL}) {
        std::mt19937_64 theirs(s);
        detail::Mt19937_64 ours(s);
        for (int i = 0; i < 1000; ++i) REQUIRE(ours() == theirs());
        detail::Mt19937_64 copy(7);
        REQUIRE(copy.set_state(ours.words(), ours.position()));
        CHECK(copy == ours);
        for (int i = 0; i < 700; ++i) REQUIRE(copy() == theirs());
    }
    detail::Mt19937_64 e(3);
    const auto before = e;
    CHECK_FALSE(e.set_state(e.words(), detail::Mt19937_64::state_size + 1));
    CHECK(e == before);
}
