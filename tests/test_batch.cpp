// The stacked batch calls (forward_batch(), backward_batch()) against their oracles, the
// per-stream calls, bit for bit: outputs, input gradients and every stream's state, on 1 to
// 8 threads, with chunks of odd length (blocks at unaligned addresses) inside a larger
// matrix (an outer stride that is not the rows); the gradients against backward_streams()
// with the same threads bit for bit (the same grouped sums) and against the sequential loop
// to rounding; all or nothing on every kind of bad input. And forward() of a row-major
// chunk against forward() of its column-major copy, bit for bit.
#include <catch2/catch.hpp>
#include <infinityformer/infinityformer.hpp>
#include <vector>

#include "extern_templates.hpp"
#include "part_util.hpp"
#include "test_util.hpp"

namespace {

using namespace part_util;
using Layer = InfinityFormerLayer<double>;
using RowMatrixXd = Layer::RowMatrix;

constexpr Index kD = 8, kL = 5;  // L odd: stream b's block starts at b·5 doubles

// The lm preset (gate, sticky sampling, KL μ term) at a small, resolved size.
Layer make_layer(Index streams) {
    LongTermParams p = LongTermParams::lm();
    p.num_basis = 16;
    p.widths = {0.1, 0.2};
    p.num_samples = 8;
    p.num_bins = 8;
    p.seed = 12;
    Layer layer(kD, 2, kL, p);
    layer.set_num_streams(streams);
    return layer;
}

// Chunk c of stream s (the same for every layer of a test).
MatrixXd chunk(Index s, int c) {
    Normal rng(static_cast<std::uint64_t>(1000 * s + c));
    return rng.matrix(kL, kD);
}

// B chunks stacked, inside a larger matrix (1 row and 2 columns around it).
struct Stacked {
    MatrixXd storage;
    explicit Stacked(Index b) : storage(MatrixXd::Constant(b * kL + 3, kD + 3, 7.0)) {}
    auto block() { return storage.block(1, 2, storage.rows() - 3, kD); }
};

bool same_gradients(Layer& a, Layer& b) {
    const auto pa = a.parameters(), pb = b.parameters();
    for (std::size_t k = 0; k < pa.size(); ++k)
        if (!detail::same_values(pa[k].gradient(), pb[k].gradient())) return false;
    return true;
}

}  // namespace

TEST_CASE("batch: forward_batch and backward_batch equal the per-stream calls bit for bit",
          "[batch][threads][training]") {
    const Index streams = 5;
    for (int threads : {1, 2, 3, 8})
        for (Index b : {Index(3), streams}) {
            INFO(threads << " threads, B = " << b);
            Layer seq = make_layer(streams), lists = make_layer(streams),
                  batch = make_layer(streams);
            for (int c = 0; c < 5; ++c) {
                Stacked x(b), y(b), dy(b), dx(b);
                std::vector<MatrixXd> xs, dys, ys, dxs;
                for (Index s = 0; s < b; ++s) {
                    xs.push_back(chunk(s, c));
                    dys.push_back(chunk(s, 50 + c));
                    x.block().middleRows(s * kL, kL) = xs.back();
                    dy.block().middleRows(s * kL, kL) = dys.back();
                }
                batch.forward_batch(x.block(), y.block(), threads);
                batch.backward_batch(dy.block(), 0.02, dx.block(), threads);
                lists.forward_streams(xs, ys, threads);
                lists.backward_streams(dys, 0.02, dxs, threads);
                for (Index s = 0; s < b; ++s) {
                    INFO("chunk " << c << ", stream " << s);
                    MatrixXd ys_seq(kL, kD), dxs_seq(kL, kD);
                    seq.forward(xs[s], ys_seq, s);
                    seq.backward(dys[s], 0.02, dxs_seq, s);
                    CHECK(detail::same_values(MatrixXd(y.block().middleRows(s * kL, kL)), ys_seq));
                    CHECK(
                        detail::same_values(MatrixXd(dx.block().middleRows(s * kL, kL)), dxs_seq));
                    CHECK(batch.stream_state(s) == seq.stream_state(s));
                }
                // Only the stacked blocks were written.
                CHECK((y.storage.topRows(1).array() == 7.0).all());
                CHECK((y.storage.bottomRows(2).array() == 7.0).all());
                CHECK((y.storage.leftCols(2).array() == 7.0).all());
                CHECK((dx.storage.rightCols(1).array() == 7.0).all());
                for (Index s = b; s < streams; ++s)
                    CHECK(batch.stream_state(s) == make_layer(streams).stream_state(s));
            }
            // The same grouped sums as backward_streams() on as many threads; to rounding
            // the sequential loop's.
            CHECK(same_gradients(batch, lists));
            CHECK(max_rel_grad_diff(batch, seq) <= 1e-13);
        }
}

TEST_CASE("batch: the output may alias the input", "[batch]") {
    Layer a = make_layer(3), b = make_layer(3);
    for (int c = 0; c < 4; ++c) {
        MatrixXd x(3 * kL, kD), y(3 * kL, kD), dx(3 * kL, kD);
        for (Index s = 0; s < 3; ++s) x.middleRows(s * kL, kL) = chunk(s, c);
        MatrixXd inout = x;
        a.forward_batch(x, y, 2);
        b.forward_batch(inout, inout, 2);
        REQUIRE(detail::same_values(inout, y));
        MatrixXd dy = y;
        a.backward_batch(y, 0.1, dx, 2);
        b.backward_batch(dy, 0.1, dy, 2);
        REQUIRE(detail::same_values(dy, dx));
    }
}

TEST_CASE("batch: forward_batch and backward_batch are all or nothing", "[batch][errors][twin]") {
    Layer layer = make_layer(3), twin = make_layer(3);
    MatrixXd x(3 * kL, kD), y = MatrixXd::Constant(3 * kL, kD, 4.0), dx = y;
    for (Index s = 0; s < 3; ++s) x.middleRows(s * kL, kL) = chunk(s, 0);
    const MatrixXd y_before = y;
    const char* fw = "InfinityFormerLayer::forward_batch: ";
    const char* bw = "InfinityFormerLayer::backward_batch: ";
    auto unchanged = [&] {
        for (Index s = 0; s < 3; ++s) REQUIRE(layer.stream_state(s) == twin.stream_state(s));
        REQUIRE(detail::same_values(y, y_before));
    };
    REQUIRE_LOGIC(layer.backward_batch(x, 0.1, dx, 2), has(bw) && has("no forward()"));
    REQUIRE_INVALID(layer.forward_batch(x.topRows(7), y.topRows(7), 2),
                    has(fw) && has("X is 7x8, expected B*L x d") &&
                        has("L = chunk_length() = 5 and d = d_model() = 8"));
    REQUIRE_INVALID(layer.forward_batch(x.topRows(0), y.topRows(0), 1), has(fw) && has("X is 0x8"));
    REQUIRE_INVALID(layer.forward_batch(x.leftCols(7), y.leftCols(7), 1),
                    has(fw) && has("X is 15x7"));
    MatrixXd four(4 * kL, kD);
    four << x, x.topRows(kL);
    REQUIRE_INVALID(
        layer.forward_batch(four, four, 1),
        has(fw) && has("X stacks B = 4 chunks of 5 rows, expected 1 to num_streams() = 3"));
    REQUIRE_INVALID(layer.forward_batch(x, y.topRows(2 * kL), 1),
                    has(fw) && has("Y is 10x8, expected 15x8"));
    REQUIRE_INVALID(layer.forward_batch(x, y, 0), has(fw) && has("threads is 0"));
    unchanged();
    x(2 * kL + 1, 3) = kNaN;
    REQUIRE_INVALID(
        layer.forward_batch(x, y, 2),
        has(fw) && has("X's rows 10 to 14 (stream 2) has a non-finite entry nan at (1, 3)"));
    x(2 * kL + 1, 3) = 0.5;
    unchanged();
    // A weight made NaN: every stream's forward fails inside; no stream changes, Y unwritten.
    auto params = layer.parameters();
    const double keep = params[0].values()(0, 0);
    params[0].values()(0, 0) = kNaN;
    REQUIRE_INVALID(layer.forward_batch(x, y, 2),
                    has(fw) && has("weight short_term.query.weight has a non-finite entry"));
    params[0].values()(0, 0) = keep;
    unchanged();
    // A smaller batch than the streams: streams 0 and 1 only.
    layer.forward_batch(x.topRows(2 * kL), y.topRows(2 * kL), 2);
    twin.forward_batch(x.topRows(2 * kL), y.topRows(2 * kL), 1);
    REQUIRE_LOGIC(layer.backward_batch(x, 0.1, dx, 2),
                  has(bw) && has("no forward()"));  // stream 2 has none
    MatrixXd dy = x.topRows(2 * kL), dx2(2 * kL, kD);
    dy(kL + 4, 0) = kInf;
    REQUIRE_INVALID(
        layer.backward_batch(dy, 0.1, dx2, 2),
        has(bw) && has("dY's rows 5 to 9 (stream 1) has a non-finite entry inf at (4, 0)"));
    dy(kL + 4, 0) = 0;
    REQUIRE_INVALID(layer.backward_batch(dy, -1.0, dx2, 2), has(bw) && has("kl_weight is -1"));
    REQUIRE_INVALID(layer.backward_batch(dy, 0.1, dx, 2),
                    has(bw) && has("dX is 15x8, expected 10x8"));
    for (const auto& p : params) CHECK(p.gradient().isZero(0));
    for (Index s = 0; s < 3; ++s) CHECK(layer.stream_state(s) == twin.stream_state(s));
    // The list call's messages name the stream too.
    std::vector<MatrixXd> dys = {dy.topRows(kL), dy.bottomRows(kL)}, dxs;
    dys[1](2, 2) = kNaN;
    REQUIRE_INVALID(layer.backward_streams(dys, 0.1, dxs, 2),
                    has("InfinityFormerLayer::backward_streams: dY[1] has a non-finite"));
    layer.backward_batch(dy, 0.1, dx2, 2);
    twin.backward_batch(dy, 0.1, dx2, 1);
    for (Index s = 0; s < 3; ++s) CHECK(layer.stream_state(s) == twin.stream_state(s));
}

TEST_CASE("batch: forward of a row-major chunk is forward of its column-major copy",
          "[batch][layer]") {
    Layer a = make_layer(2), b = make_layer(2);
    RowMatrixXd big = RowMatrixXd::Zero(3 * kL, kD);
    for (int c = 0; c < 5; ++c) {
        INFO("chunk " << c);
        const MatrixXd x = chunk(1, c);
        MatrixXd ya(kL, kD);
        a.forward(x, ya, 1);
        // Row-major: a whole matrix, then a block of a larger one, then in place.
        RowMatrixXd xr = x, yr(kL, kD);
        if (c % 3 == 0) {
            b.forward(xr, yr, 1);
        } else if (c % 3 == 1) {
            big.middleRows(kL, kL) = x;
            b.forward(big.middleRows(kL, kL), big.middleRows(2 * kL, kL), 1);
            yr = big.middleRows(2 * kL, kL);
        } else {
            b.forward(xr, xr, 1);
            yr = xr;
        }
        REQUIRE(detail::same_values(MatrixXd(yr), ya));
        REQUIRE(a.stream_state(1) == b.stream_state(1));
    }
    RowMatrixXd bad = RowMatrixXd::Zero(kL, kD), y(kL, kD);
    bad(2, 1) = kNaN;
    const auto before = b.stream_state(0);
    REQUIRE_INVALID(b.forward(bad, y, 0),
                    has("InfinityFormerLayer::forward: X has a non-finite entry nan at (2, 1)"));
    REQUIRE_INVALID(b.forward(RowMatrixXd(bad.topRows(4)), y, 0), has("X is 4x8, expected 5x8"));
    RowMatrixXd y4(4, kD);
    REQUIRE_INVALID(b.forward(y, y4, 0), has("Y is 4x8, expected 5x8"));
    REQUIRE_INVALID(b.forward(y, y, 2), has("stream is 2, expected 0 <= stream < 2"));
    CHECK(b.stream_state(0) == before);
}
