// The portable seeded generator and the seed derivation (detail/random.hpp): the seeds that
// derive_seed() gives every purpose and stream are all different.
#include <catch2/catch.hpp>
#include <cstdint>
#include <infinityformer/detail/random.hpp>
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
