// All or nothing: for each way a public call can fail (bad arguments, a weight turned NaN,
// an overflow inside the short-term or the long-term part, a call out of order), the object
// that saw the failed call and a twin that never saw it stay bit-identical afterwards, in
// every output, gradient, weight and stream state (memory coefficients, window, traces,
// sampling generator), over the chunks that follow. Also: stream states are values (copy,
// compare), and a moved-from object throws instead of crashing.
#include <catch2/catch.hpp>
#include <cmath>
#include <functional>
#include <infinityformer/infinityformer.hpp>
#include <limits>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace {

using namespace infinityformer;
using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;
using testutil::Normal;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kMax = std::numeric_limits<double>::max();

using Layer = InfinityFormerLayer<double>;

LongTermParams small(bool lm) {
    LongTermParams p = lm ? LongTermParams::lm() : LongTermParams::sorting();
    p.num_basis = 16;
    p.num_samples = 8;
    p.num_bins = 6;  // D < M: the sticky update reads the memory at the bin edges
    p.seed = 3;
    return p;
}

// Every weight and gradient, by name.
std::vector<std::pair<std::string, MatrixXd>> weights_and_grads(Layer& layer) {
    std::vector<std::pair<std::string, MatrixXd>> out;
    for (const auto& p : layer.parameters()) {
        out.emplace_back(p.name, p.values());
        out.emplace_back(p.name + " (grad)", p.gradient());
    }
    return out;
}

// Both layers equal in everything a later call reads.
void require_twins(Layer& a, Layer& b) {
    REQUIRE(a.num_streams() == b.num_streams());
    for (Index s = 0; s < a.num_streams(); ++s) {
        INFO("stream " << s);
        CHECK(a.stream_state(s) == b.stream_state(s));
        CHECK(a.long_term().memory(s).coefficients() == b.long_term().memory(s).coefficients());
    }
    const auto wa = weights_and_grads(a), wb = weights_and_grads(b);
    REQUIRE(wa.size() == wb.size());
    for (std::size_t i = 0; i < wa.size(); ++i) {
        INFO(wa[i].first);
        CHECK(wa[i].second == wb[i].second);
    }
}

// A step of training on both: forward, backward; the results must be identical.
void step_both(Layer& a, Layer& b, Normal& rng, Index stream = 0) {
    const MatrixXd x = rng.matrix(a.chunk_length(), a.d_model());
    const MatrixXd dy = rng.matrix(a.chunk_length(), a.d_model());
    const MatrixXd ya = a.forward(x, stream), yb = b.forward(x, stream);
    CHECK(ya.allFinite());
    CHECK(ya == yb);
    MatrixXd dxa(x.rows(), x.cols()), dxb(x.rows(), x.cols());
    a.backward(dy, 0.25, dxa, stream);
    b.backward(dy, 0.25, dxb, stream);
    CHECK(dxa == dxb);
}

// Sets one entry of the named weight (through parameters()).
void poke(Layer& layer, const std::string& name, double value) {
    for (auto& p : layer.parameters())
        if (p.name == name) {
            p.values()(0, 0) = value;
            return;
        }
    FAIL("no parameter " << name);
}
double peek(Layer& layer, const std::string& name) {
    for (auto& p : layer.parameters())
        if (p.name == name) return p.values()(0, 0);
    FAIL("no parameter " << name);
    return 0;
}

struct Failure {
    std::string what;
    int min_chunks;  // the call can fail only once this many chunks were processed
    // Makes one call on `layer` fail (and restores any weight it changed), checking that
    // it threw.
    std::function<void(Layer& layer, Normal& rng)> fail;
};

// A forward that fails inside because weight `name` is NaN; the weight is restored.
Failure nan_weight(const std::string& name, const std::string& message, int min_chunks) {
    return {"forward with NaN in " + name, min_chunks, [name, message](Layer& layer, Normal& rng) {
                const double keep = peek(layer, name);
                poke(layer, name, kNaN);
                const MatrixXd x = rng.matrix(layer.chunk_length(), layer.d_model());
                REQUIRE_THROWS_WITH(layer.forward(x), Catch::Contains(message));
                poke(layer, name, keep);
            }};
}

std::vector<Failure> failures(bool lm) {
    std::vector<Failure> f = {
        {"forward with a wrong shape", 0,
         [](Layer& layer, Normal& rng) {
             REQUIRE_THROWS_AS(layer.forward(rng.matrix(layer.chunk_length() + 1, layer.d_model())),
                               infinityformer::invalid_argument);
         }},
        {"forward with a NaN input", 0,
         [](Layer& layer, Normal& rng) {
             MatrixXd x = rng.matrix(layer.chunk_length(), layer.d_model());
             x(1, 1) = kNaN;
             REQUIRE_THROWS_AS(layer.forward(x), infinityformer::invalid_argument);
         }},
        {"forward whose projected queries overflow", 0,
         [](Layer& layer, Normal&) {
             const MatrixXd x = testutil::overflowing_input(layer.short_term_weights().query,
                                                            layer.chunk_length());
             REQUIRE_THROWS_WITH(layer.forward(x), Catch::Contains("queries"));
         }},
        nan_weight("short_term.out.weight", "short-term output", 0),
        nan_weight("long_term.mu.weight", "long-term", 2),
        nan_weight("long_term.proj_value.weight", "long-term output", 2),
        {"backward with a wrong shape", 1,
         [](Layer& layer, Normal& rng) {
             MatrixXd dx(layer.chunk_length(), layer.d_model());
             REQUIRE_THROWS_AS(layer.backward(rng.matrix(1, layer.d_model()), 0.1, dx),
                               infinityformer::invalid_argument);
         }},
        {"backward with a NaN gradient", 1,
         [](Layer& layer, Normal& rng) {
             MatrixXd dy = rng.matrix(layer.chunk_length(), layer.d_model());
             dy(0, 0) = kNaN;
             MatrixXd dx(layer.chunk_length(), layer.d_model());
             REQUIRE_THROWS_AS(layer.backward(dy, 0.1, dx), infinityformer::invalid_argument);
         }},
        {"backward with a negative kl_weight", 1,
         [](Layer& layer, Normal& rng) {
             MatrixXd dx(layer.chunk_length(), layer.d_model());
             REQUIRE_THROWS_AS(
                 layer.backward(rng.matrix(layer.chunk_length(), layer.d_model()), -1.0, dx),
                 infinityformer::invalid_argument);
         }},
        {"backward into a dX of the wrong shape", 1,
         [](Layer& layer, Normal& rng) {
             MatrixXd dx(layer.chunk_length(), layer.d_model() + 1);
             REQUIRE_THROWS_AS(
                 layer.backward(rng.matrix(layer.chunk_length(), layer.d_model()), 0.1, dx),
                 infinityformer::invalid_argument);
         }},
        {"calls on a stream that does not exist", 0,
         [](Layer& layer, Normal& rng) {
             MatrixXd dx(layer.chunk_length(), layer.d_model());
             REQUIRE_THROWS_AS(layer.forward(rng.matrix(layer.chunk_length(), layer.d_model()), 5),
                               infinityformer::invalid_argument);
             REQUIRE_THROWS_AS(
                 layer.backward(rng.matrix(layer.chunk_length(), layer.d_model()), 0.1, dx, 5),
                 infinityformer::invalid_argument);
             REQUIRE_THROWS_AS(layer.set_num_streams(0), infinityformer::invalid_argument);
             REQUIRE_THROWS_AS(layer.set_num_streams(-2), infinityformer::invalid_argument);
         }},
        {"weights of a wrong shape or NaN", 0,
         [](Layer& layer, Normal& rng) {
             auto w = layer.short_term_weights();
             w.key = rng.matrix(2, 2);
             REQUIRE_THROWS_AS(layer.set_short_term_weights(w), infinityformer::invalid_argument);
             auto a = layer.long_term().attention().weights();
             a.mu(0) = kNaN;
             REQUIRE_THROWS_AS(layer.set_long_term_weights(a), infinityformer::invalid_argument);
         }},
    };
    if (lm) {
        f.push_back(nan_weight("long_term.mask_net.bias", "gated chunk", 2));
        f.push_back(nan_weight("long_term.mask_net.weight.1", "gated chunk", 2));
    }
    return f;
}

}  // namespace

TEST_CASE("twin: every failed layer call leaves the layer as a twin that never saw it",
          "[twin][layer]") {
    for (bool lm : {false, true}) {
        for (const auto& failure : failures(lm)) {
            // At every stage: no chunk yet, window only, window + pending chunk, memory in use.
            for (int before = failure.min_chunks; before < 5; ++before) {
                INFO((lm ? "lm (gate, sticky): " : "sorting (uniform): ")
                     << failure.what << ", after " << before << " chunks");
                const LongTermParams p = small(lm);
                Layer layer(6, 2, 4, p), twin(6, 2, 4, p);
                layer.set_num_streams(2);
                twin.set_num_streams(2);
                Normal rng(100 + before);
                for (int c = 0; c < before; ++c) step_both(layer, twin, rng, 0);
                Normal fail_rng(7);
                failure.fail(layer, fail_rng);
                require_twins(layer, twin);
                // A backward of the last good forward (if any) gives the twin's gradients.
                if (before > 0) {
                    const MatrixXd dy = rng.matrix(4, 6);
                    MatrixXd dxa(4, 6), dxb(4, 6);
                    layer.backward(dy, 0.5, dxa);
                    twin.backward(dy, 0.5, dxb);
                    CHECK(dxa == dxb);
                }
                for (int c = 0; c < 4; ++c) step_both(layer, twin, rng, c % 2);
                require_twins(layer, twin);
            }
        }
    }
}

TEST_CASE("twin: a backward without a forward is refused and changes nothing", "[twin][layer]") {
    Layer layer(6, 2, 4, small(true)), twin(6, 2, 4, small(true));
    Normal rng(3);
    MatrixXd dx(4, 6);
    REQUIRE_THROWS_AS(layer.backward(rng.matrix(4, 6), 0.1, dx), infinityformer::logic_error);
    require_twins(layer, twin);
    step_both(layer, twin, rng);
    layer.reset();
    twin.reset();
    REQUIRE_THROWS_AS(layer.backward(rng.matrix(4, 6), 0.1, dx), infinityformer::logic_error);
    require_twins(layer, twin);
    for (int c = 0; c < 4; ++c) step_both(layer, twin, rng);
    require_twins(layer, twin);
}

TEST_CASE("twin: failed LongTermAttention calls leave it as its twin", "[twin][long_term]") {
    for (bool lm : {false, true}) {
        INFO((lm ? "lm" : "sorting"));
        LongTermParams p = small(lm);
        p.ridge_lambda = 1e-6;  // a sharp fit: the new chunk's operator has columns summing above 1
        LongTermAttention<double> lta(6, 2, 4, p), twin(6, 2, 4, p);
        Normal rng(21);
        auto same = [&] {
            CHECK(lta.stream_state() == twin.stream_state());
            CHECK(lta.attention().gradients().mu == twin.attention().gradients().mu);
            CHECK(lta.attention().gradients().proj_key == twin.attention().gradients().proj_key);
        };
        auto step = [&] {
            const MatrixXd x = rng.matrix(4, 6), q = rng.matrix(3, 6), dout = rng.matrix(3, 6);
            CHECK(lta.forward(x, q) == twin.forward(x, q));
            MatrixXd dq(3, 6), dx(4, 6), dq2(3, 6), dx2(4, 6);
            lta.backward(dout, 0.3, dq, dx);
            twin.backward(dout, 0.3, dq2, dx2);
            CHECK(dq == dq2);
            CHECK(dx == dx2);
        };
        for (int c = 0; c < 3; ++c) step();
        // A forward whose attention produces NaN (a NaN weight): the memory keeps the
        // previous chunk, the trace stays differentiable.
        const auto w = lta.attention().weights();
        // set_weights refuses NaN, so the NaN goes in through the optimiser's view.
        for (auto& prm : lta.parameters())
            if (prm.name == "sigma.weight") prm.values()(2, 0) = kNaN;
        REQUIRE_THROWS_AS(lta.forward(rng.matrix(4, 6), rng.matrix(3, 6)),
                          infinityformer::invalid_argument);
        REQUIRE_THROWS_AS(lta.attend(rng.matrix(3, 6)), infinityformer::invalid_argument);
        lta.set_attention_weights(w);
        same();
        {
            const MatrixXd dout = rng.matrix(3, 6);
            MatrixXd dq(3, 6), dx(4, 6), dq2(3, 6), dx2(4, 6);
            lta.backward(dout, 0.3, dq, dx);
            twin.backward(dout, 0.3, dq2, dx2);
            CHECK(dq == dq2);
            CHECK(dx == dx2);
        }
        // Finite input so large that the new memory coefficients overflow (no gate: the
        // gate would scale it down).
        if (!lm) {
            const MatrixXd G_new = lta.memory().unbounded_fit().G().bottomRows(4);
            const MatrixXd huge = testutil::overflowing_input(G_new.transpose(), 6).transpose();
            REQUIRE_THROWS_AS(lta.update(huge), infinityformer::invalid_argument);
            same();
        }
        // A rejected backward (wrong shape) accumulates nothing.
        MatrixXd dq(3, 6), dx(4, 6), dx_bad(3, 6);
        REQUIRE_THROWS_AS(lta.backward(rng.matrix(2, 6), 0.3, dq, dx),
                          infinityformer::invalid_argument);
        REQUIRE_THROWS_AS(lta.backward(rng.matrix(3, 6), 0.3, dq, dx_bad),
                          infinityformer::invalid_argument);
        same();
        for (int c = 0; c < 3; ++c) step();
        same();
    }
}

TEST_CASE("twin: a failed memory update leaves the memory as its twin", "[twin][memory]") {
    for (Sampling sampling : {Sampling::uniform, Sampling::sticky, Sampling::stratified}) {
        INFO(to_string(sampling));
        LongTermParams p = small(false);
        p.sampling = sampling;
        p.ridge_lambda = 1e-6;  // a sharp fit: the new chunk's operator has columns summing above 1
        LongTermMemory<double> mem(3, 4, p), twin(3, 4, p);
        Normal rng(5);
        VectorXd mu(2), s2(2);
        mu << 0.3, 0.7;
        s2 << 0.01, 0.04;
        for (int c = 0; c < 3; ++c) {
            const MatrixXd x = rng.matrix(4, 3);
            mem.update(x);
            twin.update(x);
            mem.observe(mu, s2);
            twin.observe(mu, s2);
        }
        REQUIRE(mem == twin);
        // X whose column 0 follows the signs of G_new's column of largest absolute sum: that
        // coefficient of G_newᵀ X overflows.
        const MatrixXd G_new = mem.unbounded_fit().G().bottomRows(4);
        const MatrixXd huge = testutil::overflowing_input(G_new.transpose(), 3).transpose();
        REQUIRE_THROWS_AS(mem.update(huge), infinityformer::invalid_argument);
        CHECK(mem == twin);
        CHECK(mem.state() == twin.state());
        VectorXd bad_s2 = s2;
        bad_s2(1) = -1;
        REQUIRE_THROWS_AS(mem.observe(mu, bad_s2), infinityformer::invalid_argument);
        CHECK(mem == twin);
        for (int c = 0; c < 3; ++c) {
            const MatrixXd x = rng.matrix(4, 3);
            mem.update(x);
            twin.update(x);
            CHECK(mem.coefficients() == twin.coefficients());
            CHECK(mem.last_sample_points() == twin.last_sample_points());
        }
        CHECK(mem == twin);
    }
}

TEST_CASE("twin: stream states are values; a copied layer continues as the original",
          "[twin][layer]") {
    Layer layer(6, 2, 4, small(true));
    Normal rng(8);
    for (int c = 0; c < 4; ++c) layer.forward(rng.matrix(4, 6));
    Layer copy = layer;
    CHECK(copy.stream_state() == layer.stream_state());
    Normal rng_copy = rng;
    for (int c = 0; c < 3; ++c)
        CHECK(copy.forward(rng_copy.matrix(4, 6)) == layer.forward(rng.matrix(4, 6)));
    CHECK(copy.stream_state() == layer.stream_state());
    // One more chunk on one of them only: the states now differ.
    const auto before = layer.stream_state();
    layer.forward(rng.matrix(4, 6));
    CHECK(layer.stream_state() != before);
    CHECK(copy.stream_state() == before);
    // A state copied out is a value: it does not follow the layer.
    const LayerStream<double> snapshot = layer.stream_state();
    layer.forward(rng.matrix(4, 6));
    CHECK(snapshot != layer.stream_state());
}

TEST_CASE("twin: moved-from objects throw instead of crashing", "[twin]") {
    const LongTermParams p = small(true);
    Layer layer(6, 2, 4, p);
    Layer moved(std::move(layer));
    Normal rng(2);
    CHECK(moved.forward(rng.matrix(4, 6)).allFinite());
    // Every accessor of the moved-from layer answers or throws; none dereferences null.
    CHECK(layer.chunk_length() == 4);
    CHECK(layer.long_term().chunk_length() == 4);
    CHECK(layer.num_streams() == 0);
    CHECK(layer.long_term().num_streams() == 0);
    REQUIRE_THROWS_WITH(layer.forward(rng.matrix(4, 6)), Catch::Contains("moved from"));
    REQUIRE_THROWS_WITH(layer.long_term().memory(), Catch::Contains("moved from"));
    MatrixXd dx(4, 6);
    REQUIRE_THROWS_AS(layer.backward(rng.matrix(4, 6), 0.1, dx), infinityformer::invalid_argument);
    REQUIRE_THROWS_AS(layer.reset(), infinityformer::invalid_argument);
    // Assigning to it makes it usable again.
    layer = Layer(6, 2, 4, p);
    CHECK(layer.forward(rng.matrix(4, 6)).allFinite());

    LongTermAttention<double> lta(6, 2, 4, p);
    LongTermAttention<double> lta2(std::move(lta));
    CHECK(lta.chunk_length() == 4);
    REQUIRE_THROWS_WITH(lta.memory(), Catch::Contains("moved from"));
    REQUIRE_THROWS_WITH(lta.update(rng.matrix(4, 6)), Catch::Contains("moved from"));
}

TEST_CASE("twin: no two generators share a sequence", "[twin][seeds]") {
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
    // Stream 0's sampling generator does not replay the attention's initial weights.
    LongTermParams p = small(true);
    Layer layer(6, 2, 4, p);
    layer.set_num_streams(2);
    detail::Random a = layer.stream_state(0).long_term.memory.state().rng;
    detail::Random b = layer.stream_state(1).long_term.memory.state().rng;
    detail::Random w(detail::derive_seed(p.seed, SeedPurpose::attention_weights));
    const double a0 = a.uniform(), b0 = b.uniform(), w0 = w.uniform();
    CHECK(a0 != b0);
    CHECK(a0 != w0);
    CHECK(b0 != w0);
}
