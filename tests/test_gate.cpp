// Properties of the memory gate (gate.hpp): the 3-tap sigmoid formula with zero ends against
// a direct loop, in float and double (golden README §3.9); its backward against finite
// differences; bad input.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <infinityformer/gate.hpp>
#include <vector>

#include "extern_templates.hpp"
#include "part_util.hpp"
#include "test_fd.hpp"
#include "test_util.hpp"

namespace {

using namespace part_util;

}  // namespace

TEMPLATE_TEST_CASE("gate: equals the 3-tap formula with zero ends", "[gate]", float, double) {
    using G = MemoryGate<TestType>;
    using M = typename G::Matrix;
    const Index e = 5;
    G gate(e, 3);
    Normal rng(12);
    typename G::Weights w;
    for (auto& tap : w.taps) tap = rng.matrix(e, e, 0.5).cast<TestType>();
    w.bias = rng.matrix(e, 1, 0.5).cast<TestType>();
    gate.set_weights(w);
    for (Index l : {1, 2, 3, 6}) {
        INFO("L = " << l);
        const M x = rng.matrix(l, e).cast<TestType>();
        M g(l, e), gated(l, e);
        gate.forward(x, g, gated);
        const MatrixXd xd = x.template cast<double>();
        MatrixXd expected_g(l, e), expected_gated(l, e);
        for (Index t = 0; t < l; ++t)
            for (Index o = 0; o < e; ++o) {
                // a_t = b + W₀ x_{t−1} + W₁ x_t + W₂ x_{t+1}, x_{−1} = x_L = 0.
                double a = static_cast<double>(w.bias[o]);
                for (Index j = 0; j < 3; ++j) {
                    const Index src = t + j - 1;
                    if (src < 0 || src >= l) continue;
                    for (Index i = 0; i < e; ++i)
                        a += static_cast<double>(w.taps[static_cast<std::size_t>(j)](o, i)) *
                             xd(src, i);
                }
                expected_g(t, o) = 1.0 / (1.0 + std::exp(-a));
                expected_gated(t, o) = expected_g(t, o) * xd(t, o);
            }
        CHECK(rel_diff(g, expected_g) <= loop_tolerance<TestType>());
        CHECK(rel_diff(gated, expected_gated) <= loop_tolerance<TestType>());
    }
}

TEST_CASE("gate: backward equals finite differences", "[gate][fd][training]") {
    struct Case {
        Index length, dim;
    };
    for (const Case c : {Case{1, 3}, Case{2, 4}, Case{5, 3}, Case{5, 1}}) {
        INFO("L = " << c.length << ", e = " << c.dim);
        Normal rng(static_cast<std::uint64_t>(20 + c.length * 7 + c.dim));
        MemoryGated gate(c.dim, static_cast<std::uint64_t>(c.length));
        auto w = gate.weights();
        for (auto& tap : w.taps) tap *= 2.0;  // a gate far from ½ in places
        gate.set_weights(w);
        const MatrixXd X = rng.matrix(c.length, c.dim, 1.5);
        const MatrixXd dG = rng.matrix(c.length, c.dim);
        auto loss = [&](const MemoryGated& m, const MatrixXd& x) {
            MatrixXd g(x.rows(), c.dim), gx(x.rows(), c.dim);
            m.forward(x, g, gx);
            return gx.cwiseProduct(dG).sum();
        };
        MemoryGated base = gate;
        base.zero_grad();
        MatrixXd g(c.length, c.dim), gx(c.length, c.dim), dX(c.length, c.dim);
        base.forward(X, g, gx);
        base.backward(X, g, dG, dX);
        auto views = [](MemoryGated& m) {
            std::vector<Parameter<double>> ps;
            m.append_parameters(ps);
            return ps;
        };
        const auto analytic = gradients_of(views(base));
        REQUIRE(analytic.size() == 4);
        check_input(
            "gate", "dX", X, dX, [&](const MatrixXd& x) { return loss(gate, x); }, kH0,
            static_cast<std::uint64_t>(c.length));
        check_parameters(
            "gate", gate, views, [&](MemoryGated& m) { return loss(m, X); }, analytic, kH0,
            static_cast<std::uint64_t>(c.length + 10), 100);
    }
}

TEST_CASE("gate: rejects bad input and keeps its weights", "[gate][errors]") {
    REQUIRE_INVALID(MemoryGate<double>(0), has("MemoryGate::MemoryGate: dim is 0"));
    MemoryGate<double> gate(5, 1), twin(5, 1);
    Normal rng(8);
    const MatrixXd x = rng.matrix(4, 5);
    MatrixXd g(4, 5), gated(4, 5);
    const char* fwd = "MemoryGate::forward: ";
    REQUIRE_INVALID(gate.forward(MatrixXd(0, 5), g, gated), has(fwd) && has("X has 0 rows"));
    REQUIRE_INVALID(gate.forward(rng.matrix(4, 6), g, gated),
                    has(fwd) && has("X has 6 cols, expected 5"));
    REQUIRE_INVALID(gate.forward(with(x, 1, 1, kNaN), g, gated),
                    has(fwd) && has("X has a non-finite entry nan"));
    MatrixXd g_bad(3, 5), gated_bad(4, 4);
    REQUIRE_INVALID(gate.forward(x, g_bad, gated), has(fwd) && has("gate is 3x5, expected 4x5"));
    REQUIRE_INVALID(gate.forward(x, g, gated_bad), has(fwd) && has("gated is 4x4, expected 4x5"));
    const auto w = gate.weights();
    const char* sw = "MemoryGate::set_weights: ";
    auto bad = w;
    bad.taps[1] = rng.matrix(5, 4);
    REQUIRE_INVALID(gate.set_weights(bad), has(sw) && has("taps[1] is 5x4, expected 5x5"));
    bad = w;
    bad.taps[2](0, 0) = kInf;
    REQUIRE_INVALID(gate.set_weights(bad), has(sw) && has("taps[2] has a non-finite entry inf"));
    bad = w;
    bad.bias = rng.matrix(4, 1);
    REQUIRE_INVALID(gate.set_weights(bad), has(sw) && has("bias is 4x1, expected 5x1"));
    for (std::size_t j = 0; j < 3; ++j) CHECK(gate.weights().taps[j] == twin.weights().taps[j]);
    CHECK(gate.weights().bias == twin.weights().bias);
    MatrixXd g2(4, 5), gated2(4, 5);
    gate.forward(x, g, gated);
    twin.forward(x, g2, gated2);
    CHECK(g == g2);
    CHECK(gated == gated2);
}

// Split from "training: bad backward arguments are rejected and change no gradient" (the
// gate part).
TEST_CASE("gate: bad backward arguments are rejected and change no gradient",
          "[gate][errors][training]") {
    Normal rng(92);
    const Index d = 6, l = 4;
    MemoryGated gate(d, 1);
    const MatrixXd X = rng.matrix(l, d);
    MatrixXd g(l, d), gx(l, d), dX(l, d), dX_bad(l, d + 1);
    gate.forward(X, g, gx);
    const MatrixXd dG = rng.matrix(l, d);
    gate.backward(X, g, dG, dX);
    auto views = [&] {
        std::vector<Parameter<double>> ps;
        gate.append_parameters(ps);
        return ps;
    };
    require_rejected("dgated", views, [&] { gate.backward(X, g, rng.matrix(l, d + 1), dX); });
    require_rejected("gate", views, [&] { gate.backward(X, rng.matrix(l - 1, d), dG, dX); });
    require_rejected("dX", views, [&] { gate.backward(X, g, dG, dX_bad); });
}

TEST_CASE("gate: the constructor's seed is used as given", "[gate][seeds]") {
    const MemoryGated given(5, 17);
    MemoryGated reinit(5, 0);
    reinit.init_weights(17);
    for (std::size_t j = 0; j < 3; ++j) CHECK(given.weights().taps[j] == reinit.weights().taps[j]);
    CHECK(given.weights().bias == reinit.weights().bias);
}
