// The backward passes keep the forward passes' guarantee: finite input gives finite results
// or an infinityformer::invalid_argument naming the cause, with nothing accumulated, no
// output written and the stream unchanged (so that the trace can still be differentiated);
// and a trace is differentiated once: a second backward() of one forward() is refused (it
// would add the gradients again) and changes nothing.
#include <catch2/catch.hpp>
#include <infinityformer/infinityformer.hpp>
#include <limits>
#include <vector>

#include "extern_templates.hpp"
#include "part_util.hpp"
#include "test_util.hpp"

namespace {

using namespace part_util;
using Eigen::MatrixXf;
using Eigen::VectorXf;

constexpr double kBig = 1e308;
constexpr double kMax = std::numeric_limits<double>::max();

// The message of a refused second backward (a macro: Catch's combined matchers refer to
// their parts, which must live as long as the check).
#define CONSUMED has("consumed by the previous backward()") && has("new forward()")
// The message of an overflow in `where`, starting with `cause`.
#define OVERFLOWED(where, cause) \
    has(std::string(where) + ": " + (cause)) && has("overflowed") && has("nothing was accumulated")

template <typename S>
Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic> scaled(Normal& rng, Index r, Index c,
                                                        double scale) {
    return (rng.matrix(r, c) * scale).cast<S>();
}

// A layer after `chunks` chunks of N(0, 1), and its twin (a copy).
InfinityFormerLayerd layer_after(int chunks, std::uint64_t seed) {
    InfinityFormerLayerd layer(6, 2, 4, lm_small(8, 4, seed));
    Normal rng(seed);
    for (int c = 0; c < chunks; ++c) layer.forward(rng.matrix(4, 6));
    return layer;
}

template <typename S>
void require_same_layer(InfinityFormerLayer<S>& a, InfinityFormerLayer<S>& b) {
    REQUIRE(a.num_streams() == b.num_streams());
    for (Index s = 0; s < a.num_streams(); ++s) CHECK(a.stream_state(s) == b.stream_state(s));
    require_same(gradients_of(a.parameters()), gradients_of(b.parameters()));
}

template <typename S>
void require_same_lta(LongTermAttention<S>& a, LongTermAttention<S>& b) {
    CHECK(a.stream_state() == b.stream_state());
    require_same(gradients_of(a.parameters()), gradients_of(b.parameters()));
}

}  // namespace

// ---- Task: finite input never becomes a silent NaN in a backward pass ----------------------

TEST_CASE("backward guard: a layer's dY of 1e308 is refused and changes nothing", "[backward]") {
    // Today's code gives the gradient of short_term.value.weight NaN here.
    InfinityFormerLayerd layer(6, 2, 4, lm_small(8, 4, 0));
    Normal init(1);
    for (int c = 0; c < 4; ++c) layer.forward(init.matrix(4, 6));
    auto twin = layer;
    const MatrixXd dY = MatrixXd::Constant(4, 6, kBig);
    MatrixXd dX = MatrixXd::Constant(4, 6, 7.0);
    REQUIRE_INVALID(
        layer.backward(dY, 0.1, dX),
        OVERFLOWED("InfinityFormerLayer::backward", "dY's largest |entry| 1") && has("e+308"));
    CHECK(dX == MatrixXd::Constant(4, 6, 7.0));
    require_same_layer(layer, twin);
    // The failed call did not consume the trace: a valid backward gives the twin's results.
    Normal rng(2);
    const MatrixXd dy = rng.matrix(4, 6);
    MatrixXd dxa(4, 6), dxb(4, 6);
    layer.backward(dy, 0.1, dxa);
    twin.backward(dy, 0.1, dxb);
    CHECK(dxa.allFinite());
    CHECK(dxa == dxb);
    require_same_layer(layer, twin);
}

TEST_CASE("backward guard: float kl_weight 1e30 over a large memory is refused", "[backward]") {
    // A memory of 1e10 read by queries of 1e-10: the scores are O(1), the forward finite;
    // kl_weight 1e30 times the keys B W_K^T w overflows the queries' gradient in float.
    LongTermParams p = lm_small(8, 4, 3);
    SECTION("long-term attention") {
        LongTermAttentionf lta(6, 2, 4, p);
        Normal rng(3);
        for (int c = 0; c < 3; ++c)
            lta.forward(scaled<float>(rng, 4, 6, 1e10), scaled<float>(rng, 3, 6, 1e-10));
        REQUIRE(lta.last_attention().output.allFinite());
        auto twin = lta;
        const MatrixXf dout = scaled<float>(rng, 3, 6, 1.0);
        MatrixXf dq = MatrixXf::Constant(3, 6, 7.f), dX = MatrixXf::Constant(4, 6, 7.f);
        REQUIRE_INVALID(lta.backward(dout, 1e30f, dq, dX),
                        OVERFLOWED("LongTermAttention::backward", "dout's largest |entry|") &&
                            has("kl_weight 1.00000001") && has("e+30"));
        CHECK(dq == MatrixXf::Constant(3, 6, 7.f));
        CHECK(dX == MatrixXf::Constant(4, 6, 7.f));
        require_same_lta(lta, twin);
        lta.backward(dout, 0.1f, dq, dX);  // not consumed by the failed call
        CHECK(dq.allFinite());
        CHECK(dX.allFinite());
    }
    SECTION("layer") {
        InfinityFormerLayerf layer(6, 2, 4, p);
        Normal rng(4);
        for (int c = 0; c < 2; ++c) layer.forward(scaled<float>(rng, 4, 6, 1e10));
        for (int c = 0; c < 2; ++c) layer.forward(scaled<float>(rng, 4, 6, 1e-10));
        auto twin = layer;
        const MatrixXf dY = scaled<float>(rng, 4, 6, 1.0);
        MatrixXf dX = MatrixXf::Constant(4, 6, 7.f);
        REQUIRE_INVALID(layer.backward(dY, 1e30f, dX),
                        OVERFLOWED("InfinityFormerLayer::backward", "dY's largest |entry|") &&
                            has("kl_weight 1.00000001"));
        CHECK(dX == MatrixXf::Constant(4, 6, 7.f));
        require_same_layer(layer, twin);
        layer.backward(dY, 0.1f, dX);
        CHECK(dX.allFinite());
    }
}

TEMPLATE_TEST_CASE("backward guard: a huge but finite window is refused, not a NaN", "[backward]",
                   float, double) {
    using S = TestType;
    using M = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
    // The window's previous chunk of 1e160 (float: 1e20) and a chunk of 1e-160 (1e-20): the
    // scores q k are O(1) and the output finite, but ∂ℓ/∂Q = dS K is of order 1e320 (1e40).
    const double big = std::is_same<S, float>::value ? 1e20 : 1e160;
    InfinityFormerLayer<S> layer(8, 2, 4, lm_small(8, 4, 9));
    Normal rng(9);
    auto state = layer.stream_state();
    state.prev = scaled<S>(rng, 4, 8, big);
    layer.set_stream_state(state);
    const M y = layer.forward(scaled<S>(rng, 4, 8, 1 / big));
    REQUIRE(y.allFinite());
    auto twin = layer;
    const M dY = scaled<S>(rng, 4, 8, 1.0);
    M dX = M::Constant(4, 8, S(7));
    REQUIRE_INVALID(layer.backward(dY, S(0.1), dX),
                    OVERFLOWED("InfinityFormerLayer::backward", "dY's largest |entry|") &&
                        has("the short-term window's largest |entry|") &&
                        (has("the gradient of weight short_term.") || has("dX")));
    CHECK(dX == M::Constant(4, 8, S(7)));
    require_same_layer(layer, twin);

    // The part alone: finish_backward() refuses it too and accumulates nothing.
    ShortTermAttention<S> st(8, 2, 5);
    typename ShortTermAttention<S>::Trace t;
    typename ShortTermAttention<S>::Work w;
    const M x = scaled<S>(rng, 4, 8, 1 / big);
    M q;
    st.project_queries(x, q);
    st.forward_unchecked(scaled<S>(rng, 4, 8, big), x, q, t);
    st.check_trace("test", "", t);
    st.backward_unchecked(t, dY, w);
    M dx = M::Constant(4, 8, S(7));
    REQUIRE_INVALID(st.finish_backward(t, dY, w, dx),
                    OVERFLOWED("ShortTermAttention::finish_backward", "dY's largest |entry|") &&
                        has("window's largest |entry|"));
    CHECK(dx == M::Constant(4, 8, S(7)));
    for (const auto& g : gradients_of(parameter_views(st))) CHECK(g.isZero(0.0));
}

TEST_CASE("backward guard: continuous attention's dout of 1.8e308 is refused", "[backward]") {
    const LongTermParams p = lm_small(8, 4, 5);
    ContinuousAttentiond att(GaussianBasisd::default_family(8, p.widths), 6, 2, 0, p);
    Normal rng(5);
    att.forward(rng.matrix(8, 6), rng.matrix(3, 6));
    att.zero_grad();
    const auto before = gradients_of(parameter_views(att));
    MatrixXd dq = MatrixXd::Constant(3, 6, 7.0), dB = MatrixXd::Constant(8, 6, 7.0);
    REQUIRE_INVALID(
        att.backward(MatrixXd::Constant(3, 6, kMax), 0.1, dq, dB),
        OVERFLOWED("ContinuousAttention::backward", "dout's largest |entry| 1") && has("e+308"));
    CHECK(dq == MatrixXd::Constant(3, 6, 7.0));
    CHECK(dB == MatrixXd::Constant(8, 6, 7.0));
    require_same(gradients_of(parameter_views(att)), before);
    att.backward(rng.matrix(3, 6), 0.1, dq, dB);  // the trace is still there
    CHECK(dq.allFinite());
    CHECK(dB.allFinite());
}

TEST_CASE("backward guard: the gate, the memory and the basis refuse overflowing gradients",
          "[backward]") {
    Normal rng(6);
    SECTION("MemoryGate::backward") {
        MemoryGated gate(6, 1);
        const MatrixXd X = rng.matrix(4, 6);
        MatrixXd g(4, 6), gated(4, 6), dX = MatrixXd::Constant(4, 6, 7.0);
        gate.forward(X, g, gated);
        gate.zero_grad();
        REQUIRE_INVALID(gate.backward(X, g, MatrixXd::Constant(4, 6, kMax), dX),
                        OVERFLOWED("MemoryGate::backward", "dgated's largest |entry| 1"));
        CHECK(dX == MatrixXd::Constant(4, 6, 7.0));
        for (const auto& grad : gradients_of(parameter_views(gate))) CHECK(grad.isZero(0.0));
    }
    SECTION("LongTermMemory::backward") {
        LongTermParams p = small_params();
        p.ridge_lambda = 1e-6;  // a sharp fit: the new chunk's rows of G sum above 1
        LongTermMemory<double> mem(6, 4, p.memory_params());
        mem.update(rng.matrix(4, 6));
        mem.update(rng.matrix(4, 6));
        const MatrixXd G = mem.unbounded_fit().G().bottomRows(4);  // what multiplied the chunk
        const MatrixXd dB = testutil::overflowing_input(G, 6).transpose();  // N × e
        MatrixXd dX = MatrixXd::Constant(4, 6, 7.0);
        REQUIRE_INVALID(mem.backward(dB, dX),
                        OVERFLOWED("LongTermMemory::backward", "dB's largest |entry| 1"));
        CHECK(dX == MatrixXd::Constant(4, 6, 7.0));
        mem.backward(rng.matrix(16, 6), dX);
        CHECK(dX.allFinite());
    }
    SECTION("GaussianBasis::expect_psi_backward") {
        const auto basis = GaussianBasisd::default_family(8, {0.1, 0.2});
        const VectorXd mu = VectorXd::Constant(2, 0.5), s2 = VectorXd::Constant(2, 0.01);
        VectorXd dmu = VectorXd::Constant(2, 7.0), ds = VectorXd::Constant(2, 7.0);
        REQUIRE_INVALID(basis.expect_psi_backward(mu, s2, MatrixXd::Constant(2, 8, kBig), dmu, ds),
                        OVERFLOWED("GaussianBasis::expect_psi_backward", "dr's largest |entry| 1"));
        CHECK(dmu == VectorXd::Constant(2, 7.0));
        CHECK(ds == VectorXd::Constant(2, 7.0));
    }
}

TEST_CASE("backward guard: gradients that would overflow when accumulated are refused",
          "[backward]") {
    // One chunk (short-term only), every gradient at the largest double: adding a
    // contribution of 1e300 overflows, although the contribution itself is finite.
    auto layer = layer_after(1, 7);
    for (auto& prm : layer.parameters())
        prm.gradient().setConstant(std::numeric_limits<double>::max());
    auto twin = layer;
    Normal rng(7);
    MatrixXd dX = MatrixXd::Constant(4, 6, 7.0);
    REQUIRE_INVALID(layer.backward(rng.matrix(4, 6, 1e300), 0.1, dX),
                    has("InfinityFormerLayer::backward: adding this call's gradient of weight "
                        "short_term.") &&
                        has("to the accumulated one") && has("nothing was accumulated"));
    CHECK(dX == MatrixXd::Constant(4, 6, 7.0));
    require_same_layer(layer, twin);
}

TEST_CASE("backward guard: backward_streams is all or nothing on an overflow", "[backward]") {
    InfinityFormerLayerd layer(6, 2, 4, lm_small(8, 4, 8));
    layer.set_num_streams(3);
    Normal rng(8);
    for (int c = 0; c < 4; ++c) {
        std::vector<MatrixXd> x, y;
        for (int s = 0; s < 3; ++s) x.push_back(rng.matrix(4, 6));
        layer.forward_streams(x, y, 2);
    }
    auto twin = layer;
    std::vector<MatrixXd> dy = {rng.matrix(4, 6), MatrixXd::Constant(4, 6, kMax), rng.matrix(4, 6)};
    std::vector<MatrixXd> dx = {MatrixXd::Constant(1, 1, 7.0)};
    REQUIRE_INVALID(layer.backward_streams(dy, 0.1, dx, 2),
                    OVERFLOWED("InfinityFormerLayer::backward_streams", "dY's largest |entry| 1"));
    REQUIRE(dx.size() == 1);
    CHECK(dx[0] == MatrixXd::Constant(1, 1, 7.0));
    require_same_layer(layer, twin);
    dy[1] = rng.matrix(4, 6);
    layer.backward_streams(dy, 0.1, dx, 2);
    for (const auto& m : dx) CHECK(m.allFinite());
}

// ---- Task: a second backward of one forward is refused -------------------------------------

TEST_CASE("backward guard: a layer's second backward of one forward is refused", "[backward]") {
    auto layer = layer_after(4, 11);
    Normal rng(11);
    const MatrixXd dY = rng.matrix(4, 6);
    MatrixXd dX(4, 6);
    layer.backward(dY, 0.1, dX);
    auto twin = layer;
    MatrixXd dX2 = MatrixXd::Constant(4, 6, 7.0);
    REQUIRE_LOGIC(layer.backward(dY, 0.1, dX2), has("InfinityFormerLayer::backward: ") && CONSUMED);
    CHECK(dX2 == MatrixXd::Constant(4, 6, 7.0));
    require_same_layer(layer, twin);
    // backward_streams refuses it too.
    std::vector<MatrixXd> dx;
    REQUIRE_LOGIC(layer.backward_streams({dY}, 0.1, dx, 1),
                  has("InfinityFormerLayer::backward_streams: ") && CONSUMED);
    require_same_layer(layer, twin);
    // A new forward makes backward available again.
    layer.forward(rng.matrix(4, 6));
    CHECK_NOTHROW(layer.backward(dY, 0.1, dX));
    // And the batch call is consumed in the same way.
    layer.forward(rng.matrix(4, 6));
    layer.backward_streams({dY}, 0.1, dx, 1);
    REQUIRE_LOGIC(layer.backward_streams({dY}, 0.1, dx, 1), CONSUMED);
    REQUIRE_LOGIC(layer.backward(dY, 0.1, dX), CONSUMED);
}

TEST_CASE("backward guard: a long-term attention's second backward is refused", "[backward]") {
    LongTermAttentiond lta(6, 2, 4, lm_small(8, 4, 12));
    Normal rng(12);
    for (int c = 0; c < 2; ++c) lta.forward(rng.matrix(4, 6), rng.matrix(3, 6));
    const MatrixXd dout = rng.matrix(3, 6);
    MatrixXd dq(3, 6), dX(4, 6);
    lta.backward(dout, 0.1, dq, dX);
    auto twin = lta;
    MatrixXd dq2 = MatrixXd::Constant(3, 6, 7.0), dX2 = MatrixXd::Constant(4, 6, 7.0);
    REQUIRE_LOGIC(lta.backward(dout, 0.1, dq2, dX2),
                  has("LongTermAttention::backward: ") && CONSUMED);
    CHECK(dq2 == MatrixXd::Constant(3, 6, 7.0));
    CHECK(dX2 == MatrixXd::Constant(4, 6, 7.0));
    require_same_lta(lta, twin);
    // The stream's state after a backward can be copied into another stream.
    LongTermAttentiond other(6, 2, 4, lm_small(8, 4, 12));
    CHECK_NOTHROW(other.set_stream_state(lta.stream_state()));
    // An attend() alone (no update) gives a new trace, consumed in the same way.
    lta.attend(rng.matrix(3, 6));
    CHECK_NOTHROW(lta.backward(dout, 0.1, dq, dX));
    CHECK(dX.isZero(0.0));
    REQUIRE_LOGIC(lta.backward(dout, 0.1, dq, dX), CONSUMED);
    // After an update, the refusal says that the memory changed.
    lta.update(rng.matrix(4, 6));
    REQUIRE_LOGIC(lta.backward(dout, 0.1, dq, dX), has("the memory changed"));
    lta.attend(rng.matrix(3, 6));
    CHECK_NOTHROW(lta.backward(dout, 0.1, dq, dX));
}

TEST_CASE("backward guard: continuous attention's second backward is refused", "[backward]") {
    const LongTermParams p = lm_small(8, 4, 13);
    ContinuousAttentiond att(GaussianBasisd::default_family(8, p.widths), 6, 2, 0, p);
    Normal rng(13);
    const MatrixXd B = rng.matrix(8, 6), Q = rng.matrix(3, 6), dout = rng.matrix(3, 6);
    att.forward(B, Q);
    MatrixXd dq(3, 6), dB(8, 6);
    att.backward(dout, 0.1, dq, dB);
    const auto once = gradients_of(parameter_views(att));
    MatrixXd dq2 = MatrixXd::Constant(3, 6, 7.0), dB2 = MatrixXd::Constant(8, 6, 7.0);
    REQUIRE_LOGIC(att.backward(dout, 0.1, dq2, dB2),
                  has("ContinuousAttention::backward: ") && CONSUMED);
    CHECK(dq2 == MatrixXd::Constant(3, 6, 7.0));
    CHECK(dB2 == MatrixXd::Constant(8, 6, 7.0));
    require_same(gradients_of(parameter_views(att)), once);
    att.forward(B, Q);
    att.backward(dout, 0.1, dq2, dB2);
    CHECK(dq2 == dq);
    CHECK(dB2 == dB);
}
