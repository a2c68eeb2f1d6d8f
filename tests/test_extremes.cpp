// Extreme but legal values, and values just beyond what a Scalar can hold: one table of
// cases, each with the outcome it must have — finite results, or an exception naming the
// cause (the input or weight, and that it overflowed) with the object unchanged.
// Set INFINITYFORMER_PRINT_TABLE=1 to print the table as Markdown.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <infinityformer/infinityformer.hpp>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define IF_HAS_ASAN 1
#endif
#endif
#ifndef IF_HAS_ASAN
#define IF_HAS_ASAN 0
#endif
#if defined(__SANITIZE_ADDRESS__) || IF_HAS_ASAN
#include <sanitizer/allocator_interface.h>
#else
#include <malloc.h>
#endif

#include "extern_templates.hpp"
#include "part_util.hpp"
#include "test_util.hpp"

namespace {

using namespace part_util;

// One row: what was tried and what it must give ("finite" or an error containing `error`).
struct Row {
    std::string what;
    std::string error;  // empty: the call must complete with finite results
    std::function<void()> call;
};

void print_row(const Row& r, const std::string& got) {
    if (std::getenv("INFINITYFORMER_PRINT_TABLE"))
        std::printf("| %s | %s |\n", r.what.c_str(), got.c_str());
}

void check_rows(const std::vector<Row>& rows) {
    for (const auto& r : rows) {
        INFO(r.what);
        std::string got = "finite";
        try {
            r.call();
        } catch (const std::exception& e) {
            got = e.what();
        }
        print_row(r, got.substr(0, 200));
        if (r.error.empty())
            CHECK(got == "finite");
        else
            CHECK_THAT(got, Catch::Contains(r.error));
    }
}

// A small layer whose memory is accepted by the default policy (widths {0.1, 0.2}, N = 16,
// L = M = 8: ρ(A) = 0.51).
template <typename S>
InfinityFormerLayer<S> small_layer() {
    LongTermParams p;
    p.num_basis = 16;
    p.widths = {0.1, 0.2};
    p.num_samples = 8;
    p.num_bins = 8;
    return InfinityFormerLayer<S>(8, 2, 8, p);
}

// Three chunks of N(0, scale²) through a fresh layer (the third reads the memory), then a
// backward; throws what the layer throws. The layer must be unchanged by a failed call.
template <typename S>
void stream_layer(double scale) {
    using M = typename InfinityFormerLayer<S>::Matrix;
    auto layer = small_layer<S>();
    Normal rng(3);
    for (int c = 0; c < 3; ++c) {
        const M x = (rng.matrix(8, 8) * scale).template cast<S>();
        const auto twin = layer.stream_state();
        try {
            const M y = layer.forward(x);
            REQUIRE(y.allFinite());
        } catch (...) {
            CHECK(layer.stream_state() == twin);
            throw;
        }
    }
    M dx(8, 8);
    layer.backward(M::Ones(8, 8), S(0.01), dx);
}

template <typename S>
void attention_over(double b_scale, double q_scale) {
    using M = typename ContinuousAttention<S>::Matrix;
    LongTermParams p;
    p.num_basis = 16;
    const auto basis = GaussianBasis<S>::default_family(16, p.widths);
    ContinuousAttention<S> att(basis, 4, 2, 0, p);
    Normal rng(5);
    const M b = (rng.matrix(16, 4) * b_scale).template cast<S>();
    const M q = (rng.matrix(3, 4) * q_scale).template cast<S>();
    const M out = att.forward(b, q);
    REQUIRE(out.allFinite());
    REQUIRE(att.last().kl_reg.allFinite());
}

template <typename S>
void layer_shape(Index d, Index heads, Index l, Index n, Index m, Index bins) {
    LongTermParams p;
    p.num_basis = n;
    p.widths = {0.3};
    p.num_samples = m;
    p.num_bins = bins;
    p.sampling = Sampling::sticky;
    p.stability = Stability::allow;  // degenerate shapes hold little of a chunk (reach.hpp)
    InfinityFormerLayer<S> layer(d, heads, l, p);
    Normal rng(9);
    typename InfinityFormerLayer<S>::Matrix dx(l, d);
    for (int c = 0; c < 6; ++c) {
        const auto y = layer.forward(rng.matrix(l, d).template cast<S>());
        REQUIRE(y.allFinite());
        layer.backward(rng.matrix(l, d).template cast<S>(), S(0.1), dx);
        REQUIRE(dx.allFinite());
    }
}

void memory_tau(double tau) {
    LongTermParams p;
    p.num_basis = 64;
    p.widths = {0.05, 0.1};
    p.num_samples = 16;
    p.tau = tau;
    p.stability = Stability::allow;  // τ near 1 leaves the chunk no room (reach.hpp)
    LongTermMemory<double> mem(2, 8, p);
    Normal rng(4);
    for (int c = 0; c < 50; ++c) mem.update(rng.matrix(8, 2));
    REQUIRE(mem.coefficients().allFinite());
}

}  // namespace

TEST_CASE("extremes: magnitudes of the input", "[extremes][errors]") {
    check_rows({
        {"double, |x| ~ 1e150 (scores ~ 1e300)", "", [] { stream_layer<double>(1e150); }},
        {"double, |x| ~ 1e155 (short-term scores overflow)",
         "InfinityFormerLayer::forward: the short-term attention scores Q K^T / sqrt(d_h) "
         "overflowed",
         [] { stream_layer<double>(1e155); }},
        {"double, x = DBL_MAX sign(W_Q[r, :]) (projections overflow)",
         "InfinityFormerLayer::forward: the short-term projections X W^T overflowed",
         [] {
             auto layer = small_layer<double>();
             const auto twin = layer.stream_state();
             try {
                 layer.forward(testutil::overflowing_input(layer.short_term_weights().query, 8));
             } catch (...) {
                 CHECK(layer.stream_state() == twin);
                 throw;
             }
         }},
        {"double, |x| ~ 1e-300", "", [] { stream_layer<double>(1e-300); }},
        {"double, |x| ~ 1e-310 (subnormal input)", "", [] { stream_layer<double>(1e-310); }},
        {"float, |x| ~ 1e17", "", [] { stream_layer<float>(1e17); }},
        {"float, |x| ~ 1e20 (short-term scores overflow)",
         "short-term attention scores Q K^T / sqrt(d_h) overflowed",
         [] { stream_layer<float>(1e20); }},
        {"float, |x| ~ 1e-40 (subnormal input)", "", [] { stream_layer<float>(1e-40); }},
        {"continuous attention, double, |B| ~ 1e100, |Q| ~ 1e100", "",
         [] { attention_over<double>(1e100, 1e100); }},
        {"continuous attention, double, |B| ~ 1e160, |Q| ~ 1e160 (scores overflow)",
         "ContinuousAttention::forward: the long-term attention scores w_mu . s and w_sigma . s "
         "overflowed",
         [] { attention_over<double>(1e160, 1e160); }},
        {"continuous attention, float, |B| ~ 1e20, |Q| ~ 1e20 (scores overflow)",
         "long-term attention scores w_mu . s and w_sigma . s overflowed",
         [] { attention_over<float>(1e20, 1e20); }},
        {"continuous attention, float, |B| ~ 1e17, |Q| ~ 1e17", "",
         [] { attention_over<float>(1e17, 1e17); }},
    });
}

TEST_CASE("extremes: densities, clamps and the smallest shapes", "[extremes]") {
    check_rows({
        {"E[psi] at mu = +-1e300, sigma^2 = 1e-300 and 1e300", "",
         [] {
             const auto basis = GaussianBasis<double>::default_family(16, {0.01, 0.05});
             VectorXd mu(4), s2(4);
             mu << 1e300, -1e300, 1e300, 0.5;
             s2 << 1e-300, 1e-300, 1e300, 1e-300;
             REQUIRE(basis.expect_psi(mu, s2).allFinite());
         }},
        {"observed mu = +-1e300 (sticky falls back to uniform points)", "",
         [] {
             LongTermMemory<double> mem(2, 8, small_params(Sampling::sticky));
             Normal rng(2);
             mem.update(rng.matrix(8, 2));
             VectorXd mu(2), s2(2);
             mu << 1e300, -1e300;
             s2 << 1e-4, 1e-4;
             mem.observe(mu, s2);
             mem.update(rng.matrix(8, 2));
             REQUIRE(mem.coefficients().allFinite());
             REQUIRE(mem.last_sample_points() == uniform_points(8));
         }},
        {"sigma^2 at its clamp (w_sigma = -1e3: softplus ~ 0)", "",
         [] {
             LongTermParams p;
             p.num_basis = 16;
             const auto basis = GaussianBasis<double>::default_family(16, p.widths);
             ContinuousAttention<double> att(basis, 4, 2, 0, p);
             auto w = att.weights();
             w.sigma.setConstant(-1e3);
             att.set_weights(w);
             Normal rng(1);
             const MatrixXd out = att.forward(rng.matrix(16, 4), rng.matrix(3, 4));
             REQUIRE(out.allFinite());
             REQUIRE(att.last().sigma_sq.minCoeff() == p.sigma_sq_min);
             REQUIRE(att.last().kl_reg.allFinite());
         }},
        {"N = 1, M = 1, D = 1, L = 1, d = 1, H = 1 (layer, sticky, 6 chunks)", "",
         [] { layer_shape<double>(1, 1, 1, 1, 1, 1); }},
        {"N = 1, M = 1, D = 1, L = 1, d = 1, H = 1, float", "",
         [] { layer_shape<float>(1, 1, 1, 1, 1, 1); }},
        {"N = 2, M = 1, D = 1, L = 2, d = 2, H = 2", "",
         [] { layer_shape<double>(2, 2, 2, 2, 1, 1); }},
        {"tau = 1e-9 (50 chunks)", "", [] { memory_tau(1e-9); }},
        {"tau = 1 - 1e-9 (50 chunks)", "", [] { memory_tau(1 - 1e-9); }},
    });
}

TEST_CASE("extremes: settings beyond the Scalar's range are refused", "[extremes][errors]") {
    const auto memory = [](std::vector<double> widths) {
        LongTermParams p;
        p.widths = std::move(widths);
        p.num_basis = 2 * static_cast<Index>(p.widths.size());
        return p;
    };
    check_rows({
        {"float, widths {1e-20} (square 1e-40 < FLT_MIN)",
         "widths[0]^2 is 9.9999999999999993e-41, outside the normal range of float",
         [&] { LongTermMemory<float>(2, 4, memory({1e-20})); }},
        {"double, widths {1e-20}: accepted by validate_for<double>", "",
         [&] { memory({1e-20}).validate_for<double>("test"); }},
        {"double, widths {1e-160} (square below DBL_MIN)", "outside the normal range of double",
         [&] { memory({1e-160}).validate_for<double>("test"); }},
        {"float, widths {1e20} (square beyond FLT_MAX)", "outside the normal range of float",
         [&] { LongTermMemory<float>(2, 4, memory({1e20})); }},
        {"float, sigma_sq_min = 1e-40", "sigma_sq_min is 9.9999999999999993e-41, outside",
         [] {
             LongTermParams p;
             p.sigma_sq_min = 1e-40;
             LongTermAttention<float>(4, 2, 8, p);
         }},
        {"double, sigma_sq_min = 1e-40: accepted", "",
         [] {
             LongTermParams p;
             p.sigma_sq_min = 1e-40;
             p.kl_sigma_0 = 1e-10;
             p.validate_for<double>("test");
         }},
        {"float, kl_sigma_0 = 1e-25 (sigma_0^2 = 1e-50)", "kl_sigma_0^2 is",
         [] {
             LongTermParams p;
             p.kl_sigma_0 = 1e-25;
             LongTermAttention<float>(4, 2, 8, p);
         }},
        {"double, kl_sigma_0 = 1e-3, sigma_sq_min = 1e-310 (KL at the clamp underflows)",
         "sigma_sq_min is 9.9999999999999694e-311, outside the normal range of double",
         [] {
             LongTermParams p;
             p.kl_sigma_0 = 1e-3;
             p.sigma_sq_min = 1e-310;
             p.validate_for<double>("test");
         }},
        {"double, sigma_sq_min = 1e300, kl_sigma_0 = 1e-10 (sigma^2/sigma_0^2 overflows)",
         "sigma_sq_min / kl_sigma_0^2 is",
         [] {
             LongTermParams p;
             p.sigma_sq_min = 1e300;
             p.kl_sigma_0 = 1e-10;
             p.validate_for<double>("test");
         }},
        {"float, kl_mu_0 = 1e20 with the mu term", "(1 + |kl_mu_0|)^2 / kl_sigma_0^2 is",
         [] {
             LongTermParams p = LongTermParams::lm();
             p.kl_mu_0 = 1e20;
             p.validate_for<float>("test");
         }},
    });
}

TEST_CASE("extremes: sizes near the index limits are refused before allocating",
          "[extremes][errors]") {
    const Index big = Index(1) << 40;
    check_rows({
        {"num_basis = 2^40", "LongTermMemory::LongTermMemory: this memory",
         [&] {
             LongTermParams p;
             p.num_basis = big;
             LongTermMemory<double>(2, 8, p);
         }},
        {"num_samples = 2^62", "needs",
         [&] {
             LongTermParams p;
             p.num_samples = Index(1) << 62;
             LongTermMemory<double>(2, 8, p);
         }},
        {"chunk_length = 2^40 (layer)", "InfinityFormerLayer::InfinityFormerLayer: ",
         [&] { InfinityFormerLayer<double>(8, 2, big); }},
        {"d_model = 2^40 (layer)", "InfinityFormerLayer::InfinityFormerLayer: ",
         [&] { InfinityFormerLayer<float>(big, 1, 8); }},
        {"num_heads = 2^40, d_model = 2^40", "InfinityFormerLayer::InfinityFormerLayer: ",
         [&] { InfinityFormerLayer<float>(big, big, 8); }},
        {"RidgeFit with first_kept = INT64_MAX (no overflow in the check)",
         "RidgeFit::RidgeFit: kept positions: 2 from index 9223372036854775807",
         [] {
             FitPositions pos;
             pos.all = {0.0, 0.5, 1.0};
             pos.first_kept = std::numeric_limits<Index>::max();
             pos.num_kept = 2;
             RidgeFit<double>(GaussianBasis<double>::default_family(4, {0.1}), pos, 1.0);
         }},
        {"unbounded_positions(2^62, 2^62, 0.5)", "unbounded_positions: length + num_samples",
         [] { unbounded_positions(Index(1) << 62, Index(1) << 62, 0.5); }},
    });
    // A refused stream count leaves the count as it was.
    auto layer = small_layer<double>();
    layer.set_num_streams(3);
    REQUIRE_INVALID(layer.set_num_streams(Index(1) << 50),
                    has("InfinityFormerLayer::set_num_streams: n streams needs"));
    CHECK(layer.num_streams() == 3);
    LongTermAttention<double> lta(4, 2, 8, twin_params(false));
    REQUIRE_INVALID(lta.set_num_streams(Index(1) << 50), has("n streams needs"));
    CHECK(lta.num_streams() == 1);
}

// Every constructor counts what it allocates: a width of 2^20 asks for terabytes of
// weights (d × d each), which must be refused by name before anything is allocated, not
// end in std::bad_alloc.
TEST_CASE("extremes: widths beyond the machine's memory are refused by every constructor",
          "[extremes][errors]") {
    const Index wide = Index(1) << 20;
    LongTermParams p;
    p.num_basis = 16;
    p.widths = {0.1, 0.2};
    p.num_samples = 8;
    const auto basis = GaussianBasis<double>::default_family(16, p.widths);
    check_rows({
        {"ShortTermAttention, d_model = 2^20",
         "ShortTermAttention::ShortTermAttention: ", [&] { ShortTermAttention<double>(wide, 1); }},
        {"ContinuousAttention, dim = 2^20", "ContinuousAttention::ContinuousAttention: ",
         [&] { ContinuousAttention<double>(basis, wide, 1, 0, p); }},
        {"ContinuousAttention, d_model = 2^40", "ContinuousAttention::ContinuousAttention: ",
         [&] { ContinuousAttention<double>(basis, 4, 1, Index(1) << 40, p); }},
        {"MemoryGate, dim = 2^20", "MemoryGate::MemoryGate: ", [&] { MemoryGate<float>{wide}; }},
        {"LongTermMemory, dim = 2^34 (N x dim coefficients)",
         "LongTermMemory::LongTermMemory: ", [&] { LongTermMemory<double>(Index(1) << 34, 8, p); }},
        {"LongTermAttention, dim = 2^20", "LongTermAttention::LongTermAttention: ",
         [&] { LongTermAttention<double>(wide, 1, 8, p); }},
        {"InfinityFormerLayer, d_model = 2^20", "InfinityFormerLayer::InfinityFormerLayer: ",
         [&] { InfinityFormerLayer<float>(wide, 1, 8, p); }},
        {"SamplePointChooser, num_samples = 2^62", "SamplePointChooser::SamplePointChooser: ",
         [&] { SamplePointChooser<double>(Sampling::uniform, Index(1) << 62, 8); }},
        {"default_family, num_basis = 2^62", "GaussianBasis::default_family: ",
         [&] { GaussianBasis<double>::default_family(Index(1) << 62, {0.1}); }},
    });
    // The messages say that memory ran short, not which allocation happened to fail.
    REQUIRE_INVALID(ShortTermAttention<double>(wide, 1), has("needs about"));
}

namespace {
// Bytes allocated and not yet freed, as the allocator counts them.
double heap_in_use() {
#if defined(__SANITIZE_ADDRESS__) || IF_HAS_ASAN
    return static_cast<double>(__sanitizer_get_current_allocated_bytes());
#else
    const auto info = mallinfo2();
    return static_cast<double>(info.uordblks + info.hblkhd);
#endif
}
}  // namespace

// set_num_streams() refuses counts whose streams would not fit: its estimate of a stream
// must cover what a stream really takes, measured by the allocator, once it has been
// through forwards and backwards (its workspace sized), plus the stream object itself.
TEMPLATE_TEST_CASE("extremes: a stream's estimated size covers what it allocates",
                   "[extremes][errors]", float, double) {
    using S = TestType;
    using M = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
    for (int variant = 0; variant < 3; ++variant) {
        LongTermParams p;
        p.num_basis = 16;
        p.widths = {0.1, 0.2};
        p.num_samples = variant == 2 ? 24 : 8;
        p.num_bins = variant == 2 ? 4 : 8;
        p.sampling = variant == 0 ? Sampling::uniform : Sampling::sticky;
        p.gate = variant != 0;
        INFO("variant " << variant);
        Normal rng(5);
        // Stream 0 first: what the modules allocate once (their own workspaces) is not a
        // stream's.
        const auto run_layer = [&](InfinityFormerLayer<S>& layer, Index stream) {
            M dx(8, 8);
            for (int c = 0; c < 5; ++c) {
                layer.forward(rng.matrix(8, 8).template cast<S>(), stream);
                layer.backward(rng.matrix(8, 8).template cast<S>(), S(0.1), dx, stream);
            }
        };
        InfinityFormerLayer<S> layer(8, 2, 8, p);
        run_layer(layer, 0);
        double before = heap_in_use();
        layer.set_num_streams(4);
        for (Index s = 1; s < 4; ++s) run_layer(layer, s);
        const double layer_stream = (heap_in_use() - before) / 3;
        INFO("a layer's stream: " << layer_stream << " bytes, estimated " << layer.stream_bytes());
        CHECK(layer_stream <= layer.stream_bytes());

        const auto run_lta = [&](LongTermAttention<S>& lta, Index stream) {
            M dq(8, 8), dx(8, 8);
            for (int c = 0; c < 5; ++c) {
                lta.forward(rng.matrix(8, 8).template cast<S>(),
                            rng.matrix(8, 8).template cast<S>(), stream);
                lta.backward(rng.matrix(8, 8).template cast<S>(), S(0.1), dq, dx, stream);
            }
        };
        LongTermAttention<S> lta(8, 2, 8, p);
        run_lta(lta, 0);
        before = heap_in_use();
        lta.set_num_streams(4);
        for (Index s = 1; s < 4; ++s) run_lta(lta, s);
        const double lta_stream = (heap_in_use() - before) / 3;
        INFO("a long-term attention's stream (chunk-sized queries): "
             << lta_stream << " bytes, estimated " << lta.stream_bytes());
        CHECK(lta_stream <= lta.stream_bytes());
        // A count whose streams would not fit is refused, the count unchanged.
        const auto too_many = static_cast<Index>(
            std::ceil(infinityformer::detail::memory_budget_bytes() / layer.stream_bytes()) + 1);
        REQUIRE_INVALID(layer.set_num_streams(too_many), has("n streams needs about"));
        CHECK(layer.num_streams() == 4);
    }
}

// Rows of large normal numbers (×30): short-term scores hundreds apart.
template <typename S>
Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic> rng_matrix_for_short_term(Index rows, Index cols,
                                                                           std::uint64_t seed) {
    Normal rng(seed);
    return rng.matrix(rows, cols, 30.0).template cast<S>();
}

// No subnormal number in what the memory builds and computes (docs/design.md, "Subnormal
// numbers"): the language model's narrow widths put basis values, operator entries and
// attention weights in the subnormal range of both Scalars; they must be exactly 0 instead,
// whatever the caller's floating-point mode.
TEMPLATE_TEST_CASE("extremes: no operator, memory, attention or gradient holds a subnormal",
                   "[extremes]", float, double) {
    using S = TestType;
    using M = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
    const Index e = 16, heads = 2, length = 32;
    for (Sampling sampling : {Sampling::uniform, Sampling::sticky, Sampling::stratified}) {
        LongTermParams p = lm_small(64, 32, 5);
        p.sampling = sampling;
        LongTermAttention<S> ltm(e, heads, length, p);
        const LongTermMemory<S>& mem = ltm.memory();
        INFO(to_string(sampling));
        CHECK(subnormals(mem.first_fit().G()) == 0);
        CHECK(subnormals(mem.unbounded_fit().G()) == 0);
        CHECK(subnormals(mem.recurrence_operator()) == 0);
        CHECK(subnormals(mem.bin_edge_basis()) == 0);
        if (sampling == Sampling::sticky) CHECK(mem.bin_edge_basis().rows() == 16);
        Normal rng(21);
        for (int chunk = 0; chunk < 5; ++chunk) {
            const M X = rng.matrix(length, e, 1.5).template cast<S>();
            const M Q = rng.matrix(length, e, 4.0).template cast<S>();  // spread densities
            ltm.forward(X, Q);
            const M dout = rng.matrix(length, ltm.d_model()).template cast<S>();
            M dq(length, e), dX(length, e);
            ltm.backward(dout, S(0.1), dq, dX);
            INFO("chunk " << chunk);
            CHECK(subnormals(ltm.memory().coefficients()) == 0);
            CHECK(subnormals(ltm.last_attention().r) == 0);
            CHECK(subnormals(ltm.last_attention().context) == 0);
            CHECK(subnormals(dq) == 0);
            CHECK(subnormals(dX) == 0);
            for (const auto& param : ltm.parameters()) {
                INFO(param.name);
                CHECK(subnormals(param.gradient()) == 0);
            }
        }
    }
    // The short-term softmax: scores far apart give weights below the normal range.
    ShortTermAttention<S> sta(e, heads, 9);
    typename ShortTermAttention<S>::Trace t;
    const M prev = rng_matrix_for_short_term<S>(length, e, 1);
    const M X = rng_matrix_for_short_term<S>(length, e, 2);
    M q = X * sta.weights().query.transpose();
    sta.forward_unchecked(prev, X, q, t);
    CHECK(subnormals(t.probs) == 0);
    CHECK(subnormals(t.context) == 0);
}

// Every public constructor validates what it reads, the low-level ones included: whatever
// finite values it is given, it either refuses them (invalid_argument) or builds an object
// whose results on finite input are finite. Tried here on the parts' own constructors with
// values at and beyond the edges of each Scalar's range; nothing tells the test which
// values the code has a rule for.
TEMPLATE_TEST_CASE("extremes: low-level constructors refuse what would give non-finite results",
                   "[extremes][errors]", float, double) {
    using S = TestType;
    using V = Eigen::Matrix<S, Eigen::Dynamic, 1>;
    using M = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
    const std::vector<double> values = {1e-300, 1e-200, 1e-160, 1e-100, 1e-40, 1e-30,
                                        1e-20,  1e-10,  1e-3,   0.5,    1e10,  1e20,
                                        1e30,   1e100,  1e160,  1e200,  1e300};
    int built = 0, refused = 0;
    for (double w : values)
        for (double c : {0.5, 1e20, 1e200}) {
            if (!std::isfinite(static_cast<S>(w)) || !std::isfinite(static_cast<S>(c)) ||
                static_cast<S>(w) == S(0))
                continue;  // not a value of the Scalar: not a finite argument
            INFO("width " << w << ", centre " << c);
            V centres(2), widths(2);
            centres << S(0), static_cast<S>(c);
            widths << static_cast<S>(w), S(0.1);
            std::optional<GaussianBasis<S>> basis;
            try {
                basis.emplace(centres, widths);
            } catch (const infinityformer::invalid_argument&) {
                ++refused;
                continue;
            }
            ++built;
            V t(4), mu(3), s2(3);
            t << S(0), S(0.5), S(1), static_cast<S>(c);
            mu << S(0), S(0.5), static_cast<S>(c);
            s2 << S(0), S(1e-4), S(1);
            CHECK(basis->evaluate(t).allFinite());
            CHECK(basis->expect_psi(mu, s2).allFinite());
            // E[t ψ] and E[t² ψ] may exceed the Scalar (centres of 1e20 in float): then an
            // error naming them, never an Inf.
            for (int moment = 1; moment <= 2; ++moment) try {
                    const M e =
                        moment == 1 ? basis->expect_t_psi(mu, s2) : basis->expect_t2_psi(mu, s2);
                    CHECK(e.allFinite());
                } catch (const infinityformer::invalid_argument& err) {
                    CHECK_THAT(err.what(), Contains("overflowed (centre"));
                }
            V dmu(3), ds2(3);
            basis->expect_psi_backward(mu, s2, M::Ones(3, 2), dmu, ds2);
            CHECK(dmu.allFinite());
            CHECK(ds2.allFinite());
        }
    INFO(built << " bases built, " << refused << " refused");
    CHECK(built > 0);
    CHECK(refused > 0);

    // Adam's options: refused, or every step on finite gradients leaves finite weights
    // (a refused step leaves them as they were).
    for (double lr : {1e-3, 1e39, 1e300})
        for (double eps : {1e-8, 1e-50, 1e-320})
            for (double decay : {0.0, 1e300}) {
                INFO("learning_rate " << lr << ", epsilon " << eps << ", weight_decay " << decay);
                MemoryGate<S> gate(3, 1);
                std::vector<Parameter<S>> ps;
                gate.append_parameters(ps);
                AdamOptions o;
                o.learning_rate = lr;
                o.epsilon = eps;
                o.weight_decay = decay;
                std::optional<Adam<S>> adam;
                try {
                    adam.emplace(ps, o);
                } catch (const infinityformer::invalid_argument&) {
                    continue;
                }
                for (int k = 0; k < 3; ++k) {
                    for (auto& p : ps) p.gradient().setConstant(k == 1 ? S(0) : S(1e-3));
                    const auto before = gate.weights().taps[0];
                    try {
                        adam->step();
                    } catch (const infinityformer::runtime_error&) {
                        CHECK(gate.weights().taps[0] == before);
                        break;
                    }
                    for (const auto& p : ps) CHECK(p.values().allFinite());
                }
            }
}
