// Threads (the contract in the README, "Threads"): forward() on distinct streams from
// distinct threads, and the batch calls forward_streams()/backward_streams(), give what
// the sequential calls give. Also built alone with ThreadSanitizer (preset tsan).
#include <catch2/catch.hpp>
#include <infinityformer/infinityformer.hpp>
#include <thread>
#include <vector>

#include "extern_templates.hpp"
#include "part_util.hpp"
#include "test_util.hpp"

namespace {

using namespace part_util;
using Layer = InfinityFormerLayer<double>;

// The lm preset (gate, sticky sampling, KL μ term) at a small, resolved size.
Layer make_layer(Index streams) {
    LongTermParams p = LongTermParams::lm();
    p.num_basis = 16;
    p.widths = {0.1, 0.2};
    p.num_samples = 8;
    p.num_bins = 8;
    p.seed = 12;
    Layer layer(8, 2, 6, p);
    layer.set_num_streams(streams);
    return layer;
}

// Inputs of chunk c of stream s (the same for every layer of a test).
MatrixXd chunk(Index s, int c) {
    Normal rng(static_cast<std::uint64_t>(100 * s + c));
    return rng.matrix(6, 8);
}

}  // namespace

TEST_CASE("threads: forward on distinct streams from distinct threads is the sequential one",
          "[threads]") {
    const Index streams = 4;
    Layer seq = make_layer(streams), par = make_layer(streams);
    std::vector<std::vector<MatrixXd>> seq_out(streams), par_out(streams);
    for (int c = 0; c < 5; ++c)
        for (Index s = 0; s < streams; ++s) seq_out[s].push_back(seq.forward(chunk(s, c), s));
    std::vector<std::thread> pool;
    for (Index s = 0; s < streams; ++s)
        pool.emplace_back([&par, &par_out, s] {
            for (int c = 0; c < 5; ++c) par_out[s].push_back(par.forward(chunk(s, c), s));
        });
    for (auto& t : pool) t.join();
    for (Index s = 0; s < streams; ++s) {
        INFO("stream " << s);
        CHECK(par_out[s] == seq_out[s]);
        CHECK(par.stream_state(s) == seq.stream_state(s));
    }
}

TEST_CASE("threads: forward_streams and backward_streams equal the sequential loop",
          "[threads][training]") {
    const Index streams = 5;
    for (int threads : {1, 2, 3, 8}) {
        INFO(threads << " threads");
        Layer seq = make_layer(streams), par = make_layer(streams);
        for (int c = 0; c < 4; ++c) {
            std::vector<MatrixXd> x, dy, y, dx;
            for (Index s = 0; s < streams; ++s) {
                x.push_back(chunk(s, c));
                dy.push_back(chunk(s, 50 + c));
            }
            par.forward_streams(x, y, threads);
            par.backward_streams(dy, 0.02, dx, threads);
            for (Index s = 0; s < streams; ++s) {
                const MatrixXd ys = seq.forward(x[s], s);
                MatrixXd dxs(6, 8);
                seq.backward(dy[s], 0.02, dxs, s);
                CHECK(y[s] == ys);
                CHECK(dx[s] == dxs);
                CHECK(par.stream_state(s) == seq.stream_state(s));
            }
        }
        // Gradients accumulated over 4 chunks × 5 streams: equal to rounding (grouped sums).
        CHECK(max_rel_grad_diff(par, seq) <= 1e-13);
    }
}

TEST_CASE("threads: the batch calls are all or nothing", "[threads][errors][twin]") {
    Layer layer = make_layer(3), twin = make_layer(3);
    std::vector<MatrixXd> x = {chunk(0, 0), chunk(1, 0), chunk(2, 0)}, y, dx;
    const std::vector<MatrixXd> dy = {chunk(0, 9), chunk(1, 9), chunk(2, 9)};
    const char* fw = "InfinityFormerLayer::forward_streams: ";
    const char* bw = "InfinityFormerLayer::backward_streams: ";
    REQUIRE_LOGIC(layer.backward_streams(dy, 0.1, dx, 2), has(bw) && has("no forward()"));
    x[2](1, 1) = kNaN;
    REQUIRE_INVALID(layer.forward_streams(x, y, 2), has(fw) && has("X[2] has a non-finite entry"));
    x[2](1, 1) = 0.5;
    // A weight made NaN: stream 1's forward fails inside; no stream changes.
    auto params = layer.parameters();
    const double keep = params[0].values()(0, 0);
    params[0].values()(0, 0) = kNaN;
    REQUIRE_INVALID(layer.forward_streams(x, y, 2),
                    has(fw) && has("weight short_term.query.weight has a non-finite entry"));
    params[0].values()(0, 0) = keep;
    for (Index s = 0; s < 3; ++s) CHECK(layer.stream_state(s) == twin.stream_state(s));
    REQUIRE_INVALID(layer.forward_streams(std::vector<MatrixXd>(4, chunk(0, 0)), y, 2),
                    has(fw) && has("the batch has 4 streams, expected 1 to num_streams() = 3"));
    REQUIRE_INVALID(layer.forward_streams(x, y, 0), has(fw) && has("threads is 0"));
    layer.forward_streams(x, y, 2);
    twin.forward_streams(x, y, 1);
    std::vector<MatrixXd> bad = dy;
    bad[1](0, 0) = kInf;
    REQUIRE_INVALID(layer.backward_streams(bad, 0.1, dx, 2),
                    has(bw) && has("dY[1] has a non-finite"));
    for (std::size_t k = 0; k < params.size(); ++k) CHECK(params[k].gradient().isZero(0));
}
