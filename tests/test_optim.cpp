// The Adam optimiser (optim.hpp) over Parameter views of blocks owned by the test: it
// minimises a convex quadratic, its steps equal the closed-form update, global-norm clipping,
// decoupled weight decay; a non-finite gradient is rejected and changes nothing;
// AdamOptions::validate names every bad field; make_parameter() checks the gradient's
// shape. An Adam built over a module's views keeps
// working after the module's init_weights()/set_weights(). (Adam training a layer:
// test_layer.cpp.)
#include <catch2/catch.hpp>
#include <cmath>
#include <functional>
#include <infinityformer/continuous_attention.hpp>
#include <infinityformer/gate.hpp>
#include <infinityformer/layer.hpp>
#include <infinityformer/optim.hpp>
#include <infinityformer/parameter_view.hpp>
#include <infinityformer/short_term_attention.hpp>
#include <limits>
#include <string>
#include <vector>

#include "extern_templates.hpp"
#include "part_util.hpp"
#include "test_util.hpp"

namespace {

using namespace infinityformer;
using Catch::Matchers::Contains;
using Eigen::Index;
using Eigen::MatrixXd;
using part_util::parameter_views;
using testutil::Normal;

struct Owned {  // a parameter block owned by the test
    std::string name;
    MatrixXd value, grad;
    Parameter<double> view() { return make_parameter(name, value, grad); }
};

std::vector<Owned> owned_blocks(Normal& rng) {
    return {{"a", rng.matrix(3, 2), rng.matrix(3, 2)}, {"b", rng.matrix(4, 1), rng.matrix(4, 1)}};
}

std::vector<Parameter<double>> views_of(std::vector<Owned>& blocks) {
    std::vector<Parameter<double>> out;
    for (auto& b : blocks) out.push_back(b.view());
    return out;
}

// An Adam over views(), then change() (a re-initialisation or set_weights() of the module),
// then one step with every gradient 1: the step must act on the module's storage, on the
// values change() left there (each moves by −α/(1 + ε), Adam's first step for g = 1).
void check_adam_after(const std::function<std::vector<Parameter<double>>()>& views,
                      const std::function<void()>& change,
                      const std::function<std::vector<MatrixXd>()>& expected) {
    AdamOptions o;
    o.learning_rate = 0.01;
    Adam<double> adam(views(), o);
    change();
    const auto now = views();
    const auto& held = adam.parameters();
    REQUIRE(held.size() == now.size());
    for (std::size_t k = 0; k < now.size(); ++k) {
        INFO(now[k].name);
        // The module wrote into the storage the optimiser holds (else the step below would
        // write to freed memory).
        REQUIRE(held[k].value == now[k].value);
        REQUIRE(held[k].grad == now[k].grad);
    }
    const auto initial = expected();
    REQUIRE(initial.size() == now.size());
    for (std::size_t k = 0; k < now.size(); ++k) {
        INFO(now[k].name);
        REQUIRE(now[k].values() == initial[k]);
        now[k].gradient().setOnes();
    }
    adam.step();
    const double shift = o.learning_rate / (1.0 + o.epsilon);
    for (std::size_t k = 0; k < now.size(); ++k) {
        INFO(now[k].name);
        const MatrixXd want = initial[k].array() - shift;
        CHECK((now[k].values() - want).cwiseAbs().maxCoeff() <= 1e-15);
    }
}

template <typename Module>
std::vector<MatrixXd> values_of(Module& m) {
    std::vector<MatrixXd> out;
    for (const auto& p : parameter_views(m)) out.push_back(p.values());
    return out;
}

}  // namespace

TEST_CASE("optim: Adam minimises a convex quadratic", "[optim][adam][training]") {
    Normal rng(81);
    MatrixXd w = rng.matrix(5, 3, 2.0), g(5, 3);
    const MatrixXd target = rng.matrix(5, 3);
    MatrixXd curvature(5, 3);
    for (Index i = 0; i < curvature.size(); ++i) curvature(i) = rng.uniform(0.5, 5.0);
    auto f = [&] { return 0.5 * (curvature.array() * (w - target).array().square()).sum(); };
    Parameter<double> p;
    p.name = "w";
    p.value = w.data();
    p.grad = g.data();
    p.rows = 5;
    p.cols = 3;
    AdamOptions o;
    o.learning_rate = 0.05;
    Adam<double> adam({p}, o);
    const double f0 = f();
    for (int step = 0; step < 400; ++step) {
        if (step == 300) {  // a schedule: set_options keeps the moments
            o.learning_rate = 0.005;
            adam.set_options(o);
        }
        adam.zero_grad();
        g = curvature.cwiseProduct(w - target);
        adam.step();
    }
    CHECK(adam.steps() == 400);
    INFO("f0 = " << f0 << ", f = " << f());
    CHECK(f() < 1e-5 * f0);
    CHECK((w - target).cwiseAbs().maxCoeff() < 1e-2);
}

TEST_CASE("optim: Adam steps equal the closed-form update", "[optim][adam][training]") {
    Normal rng(82);
    auto blocks = owned_blocks(rng);
    const std::vector<MatrixXd> w0 = {blocks[0].value, blocks[1].value};
    const std::vector<MatrixXd> g1 = {blocks[0].grad, blocks[1].grad};
    const std::vector<MatrixXd> g2 = {rng.matrix(3, 2), rng.matrix(4, 1)};
    AdamOptions o;
    o.learning_rate = 0.05;
    o.beta1 = 0.8;
    o.beta2 = 0.95;
    o.epsilon = 1e-2;
    Adam<double> adam(views_of(blocks), o);
    adam.step();
    for (std::size_t b = 0; b < 2; ++b) blocks[b].grad = g2[b];
    adam.step();
    CHECK(adam.steps() == 2);
    for (std::size_t b = 0; b < 2; ++b)
        for (Index i = 0; i < w0[b].size(); ++i) {
            // m_t = β1 m + (1 − β1) g, v_t = β2 v + (1 − β2) g², w −= α m̂/(√v̂ + ε).
            double m = 0, v = 0, w = w0[b](i);
            for (int t = 1; t <= 2; ++t) {
                const double g = (t == 1 ? g1 : g2)[b](i);
                m = o.beta1 * m + (1 - o.beta1) * g;
                v = o.beta2 * v + (1 - o.beta2) * g * g;
                const double mhat = m / (1 - std::pow(o.beta1, t));
                const double vhat = v / (1 - std::pow(o.beta2, t));
                w -= o.learning_rate * mhat / (std::sqrt(vhat) + o.epsilon);
            }
            INFO("block " << b << " entry " << i);
            CHECK(std::abs(blocks[b].value(i) - w) <= 1e-14 * (1 + std::abs(w)));
        }
}

TEST_CASE("optim: Adam clips the global gradient norm", "[optim][adam][training]") {
    for (const double ratio : {0.25, 4.0}) {  // clip_norm below / above ‖g‖
        Normal rng(83);
        auto blocks = owned_blocks(rng);
        const std::vector<MatrixXd> w0 = {blocks[0].value, blocks[1].value};
        const double norm = std::sqrt(blocks[0].grad.squaredNorm() + blocks[1].grad.squaredNorm());
        AdamOptions o;
        o.learning_rate = 0.1;
        o.epsilon = 0.5;  // large: the first step then depends on the gradient's scale
        o.clip_norm = ratio * norm;
        Adam<double> adam(views_of(blocks), o);
        adam.step();
        CHECK(std::abs(adam.last_grad_norm() - norm) <= 1e-14 * norm);
        const double c = ratio < 1 ? o.clip_norm / norm : 1.0;
        for (std::size_t b = 0; b < 2; ++b)
            for (Index i = 0; i < w0[b].size(); ++i) {
                const double g = c * blocks[b].grad(i);  // m̂ = g, v̂ = g² at t = 1
                const double w = w0[b](i) - o.learning_rate * g / (std::abs(g) + o.epsilon);
                INFO("ratio " << ratio << " block " << b << " entry " << i);
                CHECK(std::abs(blocks[b].value(i) - w) <= 1e-14 * (1 + std::abs(w)));
            }
    }
}

TEST_CASE("optim: Adam's weight decay is decoupled", "[optim][adam][training]") {
    Normal rng(84);
    auto blocks = owned_blocks(rng);
    const std::vector<MatrixXd> w0 = {blocks[0].value, blocks[1].value};
    blocks[1].grad.setZero();  // block b: decay only
    AdamOptions o;
    o.learning_rate = 0.05;
    o.weight_decay = 0.3;
    o.epsilon = 1e-3;
    Adam<double> adam(views_of(blocks), o);
    adam.step();
    const double keep = 1 - o.learning_rate * o.weight_decay;
    // w ← w − αλw − α m̂/(√v̂ + ε): with g = 0 only the decay acts (an L2 term added to the
    // gradient would move w by ~α instead).
    CHECK((blocks[1].value - keep * w0[1]).cwiseAbs().maxCoeff() <=
          1e-15 * w0[1].cwiseAbs().maxCoeff());
    for (Index i = 0; i < w0[0].size(); ++i) {
        const double g = blocks[0].grad(i);
        const double w = keep * w0[0](i) - o.learning_rate * g / (std::abs(g) + o.epsilon);
        CHECK(std::abs(blocks[0].value(i) - w) <= 1e-14 * (1 + std::abs(w)));
    }
}

TEST_CASE("optim: Adam rejects a non-finite gradient and changes nothing",
          "[optim][adam][training]") {
    for (const double bad :
         {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(),
          -std::numeric_limits<double>::infinity()}) {
        Normal rng(85);
        auto blocks = owned_blocks(rng);
        auto twin = blocks;  // a fresh optimiser over a copy: the reference for the next step
        const std::vector<MatrixXd> w0 = {blocks[0].value, blocks[1].value};
        const MatrixXd g1 = blocks[1].grad;
        AdamOptions o;
        o.learning_rate = 0.05;
        Adam<double> adam(views_of(blocks), o), fresh(views_of(twin), o);
        blocks[1].grad(2) = bad;
        REQUIRE_THROWS_AS(adam.step(), infinityformer::runtime_error);
        REQUIRE_THROWS_WITH(adam.step(), Contains("b") && Contains("finite"));
        CHECK(blocks[0].value == w0[0]);
        CHECK(blocks[1].value == w0[1]);
        CHECK(adam.steps() == 0);
        // The moments are untouched too: the next step is a first step.
        blocks[1].grad = g1;
        adam.step();
        fresh.step();
        CHECK(blocks[0].value == twin[0].value);
        CHECK(blocks[1].value == twin[1].value);
    }
}

TEST_CASE("optim: AdamOptions::validate names every bad field", "[optim][adam][errors][training]") {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const double inf = std::numeric_limits<double>::infinity();
    struct Bad {
        const char* field;
        double AdamOptions::*member;
        std::vector<double> values;
    };
    const std::vector<Bad> bads = {
        {"learning_rate", &AdamOptions::learning_rate, {0.0, -1e-3, nan, inf}},
        {"beta1", &AdamOptions::beta1, {-0.1, 1.0, 1.5, nan}},
        {"beta2", &AdamOptions::beta2, {-0.1, 1.0, nan, inf}},
        {"epsilon", &AdamOptions::epsilon, {0.0, -1e-8, nan, inf}},
        {"weight_decay", &AdamOptions::weight_decay, {-0.1, nan, inf}},
        {"clip_norm", &AdamOptions::clip_norm, {-1.0, nan, inf}},
    };
    CHECK_NOTHROW(AdamOptions{}.validate());
    Normal rng(86);
    auto blocks = owned_blocks(rng);
    Adam<double> adam(views_of(blocks));
    for (const auto& b : bads)
        for (const double v : b.values) {
            INFO(b.field << " = " << v);
            AdamOptions o;
            o.*(b.member) = v;
            CHECK_THROWS_AS(o.validate(), infinityformer::invalid_argument);
            CHECK_THROWS_WITH(o.validate(), Contains(b.field));
            CHECK_THROWS_WITH(Adam<double>(views_of(blocks), o), Contains(b.field));
            CHECK_THROWS_WITH(adam.set_options(o), Contains(b.field));
            CHECK(adam.options().*(b.member) == AdamOptions{}.*(b.member));
        }
    // The edges of the ranges are accepted.
    AdamOptions ok;
    ok.beta1 = 0.0;
    ok.beta2 = 0.0;
    ok.weight_decay = 0.0;
    ok.clip_norm = 0.0;
    CHECK_NOTHROW(ok.validate());
}

TEST_CASE("optim: make_parameter views the caller's blocks and checks their shapes",
          "[optim][parameter][errors]") {
    Normal rng(83);
    MatrixXd w = rng.matrix(3, 2), g = rng.matrix(3, 2);
    const Parameter<double> p = make_parameter("w", w, g);
    CHECK(p.name == "w");
    CHECK(p.value == w.data());
    CHECK(p.grad == g.data());
    CHECK(p.rows == 3);
    CHECK(p.cols == 2);
    CHECK(p.size() == 6);
    CHECK(p.values() == w);
    CHECK(p.gradient() == g);
    Eigen::VectorXf b = Eigen::VectorXf::Ones(4), gb = Eigen::VectorXf::Zero(4);
    const Parameter<float> pb = make_parameter("bias", b, gb);
    CHECK(pb.rows == 4);
    CHECK(pb.cols == 1);
    CHECK(pb.value == b.data());

    // Adam over one's own weights (one step with g = 1 moves each by −α/(1 + ε)).
    const MatrixXd w0 = w;
    g.setOnes();
    AdamOptions o;
    o.learning_rate = 0.01;
    Adam<double> adam({p}, o);
    adam.step();
    CHECK((w.array() - (w0.array() - o.learning_rate / (1.0 + o.epsilon))).abs().maxCoeff() <=
          1e-15);

    // A gradient of another shape: nothing resized, the error names both shapes.
    MatrixXd wrong = rng.matrix(2, 3);
    const std::string prefix = "[infinityformer] make_parameter: ";
    REQUIRE_THROWS_MATCHES(make_parameter("w", w, wrong), infinityformer::invalid_argument,
                           Catch::Matchers::Message(prefix + "grad of parameter \"w\" is 2x3, "
                                                             "expected 3x2 (the shape of value)"));
    CHECK(wrong.rows() == 2);
    MatrixXd none;
    REQUIRE_THROWS_MATCHES(make_parameter("v", w, none), infinityformer::invalid_argument,
                           Catch::Matchers::Message(prefix + "grad of parameter \"v\" is 0x0, "
                                                             "expected 3x2 (the shape of value)"));
    Eigen::VectorXf short_grad(3);
    REQUIRE_THROWS_MATCHES(make_parameter("bias", b, short_grad), infinityformer::invalid_argument,
                           Catch::Matchers::Message(prefix + "grad of parameter \"bias\" is "
                                                             "3x1, expected 4x1 (the shape of "
                                                             "value)"));
}

TEST_CASE("optim: Adam over a part's views survives init_weights() and set_weights()",
          "[optim][adam][training]") {
    SECTION("short-term attention") {
        ShortTermAttentiond m(6, 2, 5);
        ShortTermAttentiond fresh(6, 2, 9);  // what init_weights(9) gives (seed as given)
        auto views = [&] { return parameter_views(m); };
        check_adam_after(
            views, [&] { m.init_weights(9); }, [&] { return values_of(fresh); });
        ShortTermAttentiond other(6, 2, 11);
        check_adam_after(
            views, [&] { m.set_weights(other.weights()); }, [&] { return values_of(other); });
    }
    SECTION("memory gate") {
        MemoryGated m(5, 1);
        MemoryGated fresh(5, 7);
        auto views = [&] { return parameter_views(m); };
        check_adam_after(
            views, [&] { m.init_weights(7); }, [&] { return values_of(fresh); });
        MemoryGated other(5, 8);
        check_adam_after(
            views, [&] { m.set_weights(other.weights()); }, [&] { return values_of(other); });
    }
    SECTION("continuous attention") {
        LongTermParams p;
        p.num_basis = 8;
        const auto basis = GaussianBasisd::default_family(8, p.widths);
        ContinuousAttentiond m(basis, 6, 2, 4, p.attention_params(), 3);
        ContinuousAttentiond fresh(basis, 6, 2, 4, p.attention_params(), 3);
        fresh.init_weights(12);
        auto views = [&] { return parameter_views(m); };
        check_adam_after(
            views, [&] { m.init_weights(12); }, [&] { return values_of(fresh); });
        ContinuousAttentiond other(basis, 6, 2, 4, p.attention_params(), 4);
        other.init_weights(13);
        check_adam_after(
            views, [&] { m.set_weights(other.weights()); }, [&] { return values_of(other); });
    }
    SECTION("layer: init_short_term_weights() and set_short_term_weights()") {
        LongTermParams p;
        p.num_basis = 8;
        p.gate = true;
        // N = 8 holds too little of a chunk to be a useful memory (reach.hpp), which the
        // default policy refuses; the numerics under test do not depend on it.
        p.stability = Stability::allow;
        InfinityFormerLayerd layer(6, 2, 4, p);
        ShortTermAttentiond fresh(6, 2, 21);
        auto views = [&] { return layer.parameters(); };
        // The short-term weights take the new values; the long-term ones keep theirs.
        std::vector<MatrixXd> expected;
        for (const auto& q : layer.parameters()) expected.push_back(q.values());
        const std::vector<MatrixXd> st = values_of(fresh);
        for (std::size_t k = 0; k < st.size(); ++k) expected[k] = st[k];
        check_adam_after(
            views, [&] { layer.init_short_term_weights(21); }, [&] { return expected; });
        ShortTermAttentiond other(6, 2, 22);
        std::vector<MatrixXd> expected2;
        for (const auto& q : layer.parameters()) expected2.push_back(q.values());
        const std::vector<MatrixXd> st2 = values_of(other);
        for (std::size_t k = 0; k < st2.size(); ++k) expected2[k] = st2[k];
        check_adam_after(
            views, [&] { layer.set_short_term_weights(other.weights()); },
            [&] { return expected2; });
    }
}
