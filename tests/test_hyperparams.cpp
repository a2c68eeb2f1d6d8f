// The hyper-parameters (hyperparams.hpp): LongTermParams::validate() names the part, the
// field and the value of every setting out of range; the presets and their slices
// memory_params() and attention_params(). (That each part's constructor validates the
// settings it uses, and only those, is tested with each part.)
#include <catch2/catch.hpp>
#include <functional>
#include <infinityformer/hyperparams.hpp>
#include <string>
#include <vector>

#include "extern_templates.hpp"
#include "test_util.hpp"

namespace {

using namespace infinityformer;
using testutil::has;
using testutil::kInf;
using testutil::kNaN;

}  // namespace

TEST_CASE("hyperparams: LongTermParams::validate names each field and value",
          "[hyperparams][errors]") {
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
}

TEST_CASE("hyperparams: the presets are the sum of their parts' settings",
          "[hyperparams][errors]") {
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
