// The building blocks of a whole model (blocks.hpp): every backward pass against finite
// differences (Ridders, through part_util.hpp) in double; the identities that pin the
// forward passes (layer norm's zero mean and variance var/(var + ε) per row, cross-entropy
// as −log softmax at the target, its gradient's rows summing to zero, GELU's values);
// finiteness on extreme but finite input (a constant row, rows near the largest Scalar,
// logits far apart); bad input refused with the call and the argument named and nothing
// changed; backward without a forward; seeds, moves, float against double, and Adam
// training the blocks through their parameters().
#include <catch2/catch.hpp>
#include <cmath>
#include <infinityformer/blocks.hpp>
#include <infinityformer/optim.hpp>
#include <limits>
#include <string>
#include <vector>

#include "extern_templates.hpp"
#include "part_util.hpp"
#include "test_util.hpp"

namespace {

using namespace infinityformer;
using namespace part_util;
using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;

// ℓ = Σ y ⊙ W for a module's forward on a copy (forward keeps a trace: not const).
template <typename Module>
double weighted_output(const Module& module, const MatrixXd& x, const MatrixXd& w) {
    Module m = module;
    return m.forward(x).cwiseProduct(w).sum();
}

template <typename Module>
auto views() {
    return [](Module& m) { return m.parameters(); };
}

// The FD checks of a module with input X: ∂ℓ/∂X and every parameter.
template <typename Module>
void check_module(const std::string& part, const Module& module, const MatrixXd& X, double h0,
                  std::uint64_t seed) {
    Normal rng(seed);
    Module base = module;
    const MatrixXd Y = base.forward(X);
    const MatrixXd W = rng.matrix(Y.rows(), Y.cols());
    base.zero_grad();
    const MatrixXd dX = base.backward(W);
    const auto analytic = gradients_of(base.parameters());
    check_input(
        part, "dX", X, dX, [&](const MatrixXd& x) { return weighted_output(module, x, W); }, h0,
        seed);
    check_parameters(
        part, module, views<Module>(), [&](Module& m) { return weighted_output(m, X, W); },
        analytic, h0, seed + 1, 100);
}

// The weights and gradients seen through a module's parameters().
template <typename Module>
std::vector<MatrixXd> values_of(Module& m) {
    std::vector<MatrixXd> out;
    for (const auto& p : m.parameters()) out.push_back(p.values().template cast<double>());
    return out;
}

}  // namespace

TEST_CASE("blocks: backward passes equal finite differences", "[blocks][fd]") {
    Normal rng(11);
    const Index n = 5, d = 6, f = 10;
    const MatrixXd X = rng.matrix(n, d, 1.5);

    SECTION("layer norm") {
        LayerNorm<double> ln(d);
        ln.set_weights({rng.matrix(d, 1), rng.matrix(d, 1)});
        check_module("blocks layer norm", ln, X, kH0, 21);
        // a row with a variance below ε: the ε term matters in every derivative
        MatrixXd small = X;
        small.row(2) *= 1e-3;
        LayerNorm<double> tight(d, 1e-4);
        tight.set_weights({rng.matrix(d, 1), rng.matrix(d, 1)});
        check_module("blocks layer norm", tight, small, 1e-4, 22);
    }
    SECTION("feed-forward, ReLU") {
        FeedForward<double> ff(d, f, 3);
        auto w = ff.weights();
        w.b1 = rng.matrix(f, 1, 0.5);
        w.b2 = rng.matrix(d, 1, 0.5);
        ff.set_weights(w);
        // a small first step: the pre-activations are ~0.1 or more from ReLU's kink
        check_module("blocks feed-forward relu", ff, X, 1e-3, 23);
    }
    SECTION("feed-forward, GELU") {
        FeedForward<double> ff(d, f, 4, Activation::gelu);
        auto w = ff.weights();
        w.b1 = rng.matrix(f, 1, 0.5);
        w.b2 = rng.matrix(d, 1, 0.5);
        ff.set_weights(w);
        check_module("blocks feed-forward gelu", ff, X, kH0, 24);
    }
    SECTION("linear") {
        Linear<double> lin(d, 7, 5);
        auto w = lin.weights();
        w.bias = rng.matrix(7, 1);
        lin.set_weights(w);
        check_module("blocks linear", lin, X, kH0, 25);
    }
    SECTION("embedding, a token repeated") {
        Embedding<double> emb(9, d, 6);
        const std::vector<int> tokens = {4, 1, 4, 8, 0, 4};
        Embedding<double> base = emb;
        base.forward(tokens);
        const MatrixXd W = rng.matrix(6, d);
        base.backward(W);
        check_parameters(
            "blocks embedding", emb, views<Embedding<double>>(),
            [&](Embedding<double>& m) { return m.forward(tokens).cwiseProduct(W).sum(); },
            gradients_of(base.parameters()), kH0, 26, 100);
        CHECK(base.gradients().table.row(2).norm() == 0.0);  // a token not seen
    }
    SECTION("cross-entropy, rows without a target") {
        const MatrixXd logits = rng.matrix(n, 7, 2.0);
        const std::vector<Index> targets = {3, ignore_target, 0, 6, ignore_target};
        MatrixXd dlogits;
        softmax_cross_entropy(logits, targets, dlogits);
        check_input(
            "blocks cross-entropy", "dlogits", logits, dlogits,
            [&](const MatrixXd& z) { return softmax_cross_entropy(z, targets); }, kH0, 27);
        CHECK(dlogits.row(1).norm() == 0.0);
        CHECK(dlogits.row(4).norm() == 0.0);
    }
}

TEST_CASE(
    "blocks: layer norm gives zero mean and variance var/(var + eps) per row, finite on "
    "extreme rows",
    "[blocks]") {
    Normal rng(3);
    const Index d = 8;
    const double eps = 1e-5;
    LayerNorm<double> ln(d, eps);
    MatrixXd X = rng.matrix(4, d, 2.0);
    X.row(1) = X.row(1) * 1e-3 + MatrixXd::Constant(1, d, 5.0);  // a variance near ε
    const MatrixXd Y = ln.forward(X);
    for (Index i = 0; i < X.rows(); ++i) {
        INFO("row " << i);
        const double mean = X.row(i).mean();
        const double var = (X.row(i).array() - mean).square().mean();
        CHECK(std::abs(Y.row(i).mean()) < 1e-12);
        CHECK(Y.row(i).array().square().mean() == Approx(var / (var + eps)).epsilon(1e-12));
    }
    // gain and bias act after the normalisation
    LayerNorm<double> scaled(d, eps);
    const VectorXd gain = rng.matrix(d, 1), bias = rng.matrix(d, 1);
    scaled.set_weights({gain, bias});
    const MatrixXd expected =
        (Y.array().rowwise() * gain.transpose().array()).rowwise() + bias.transpose().array();
    CHECK(rel_diff(scaled.forward(X), expected) < 1e-14);

    SECTION("a constant row gives the bias, and a finite gradient") {
        const MatrixXd c = MatrixXd::Constant(2, d, 3.25);
        const MatrixXd y = scaled.forward(c);
        CHECK(y.row(0).transpose() == bias);
        const MatrixXd dx = scaled.backward(rng.matrix(2, d));
        CHECK(dx.allFinite());
        CHECK(std::abs(dx.row(0).sum()) < 1e-9);  // a shift of the row changes nothing
    }
    SECTION("rows near the largest double and below the smallest normal") {
        const double big = std::numeric_limits<double>::max();
        MatrixXd x(3, d);
        x.row(0) = rng.matrix(1, d) * (big / 8);
        x.row(1).setConstant(big);
        x.row(1)(0) = -big;
        x.row(2) = rng.matrix(1, d) * 1e-310;  // subnormal: below ε, normalised to ~0
        const MatrixXd y = ln.forward(x);
        REQUIRE(y.allFinite());
        CHECK(std::abs(y.row(0).mean()) < 1e-14);
        CHECK(y.row(0).array().square().mean() == Approx(1.0).epsilon(1e-12));
        CHECK(y.row(1).array().square().mean() == Approx(1.0).epsilon(1e-12));
        CHECK(y.row(2).cwiseAbs().maxCoeff() < 1e-300);
        CHECK(ln.backward(rng.matrix(3, d)).allFinite());
    }
    SECTION("float: a row near the largest float") {
        LayerNorm<float> lf(d);
        Eigen::MatrixXf x = (rng.matrix(1, d) * 3e37).cast<float>();
        const Eigen::MatrixXf y = lf.forward(x);
        REQUIRE(y.allFinite());
        CHECK(std::abs(y.mean()) < 1e-5f);
        CHECK(y.array().square().mean() == Approx(1.0).epsilon(1e-5));
    }
}

TEST_CASE(
    "blocks: cross-entropy is -log softmax at the target, stable, its gradient rows sum "
    "to zero",
    "[blocks]") {
    Normal rng(4);
    const MatrixXd logits = rng.matrix(6, 5, 3.0);
    const std::vector<int> targets = {0, 4, 2, -1, 2, 1};
    MatrixXd g;
    const double loss = softmax_cross_entropy(logits, targets, g);
    double direct = 0;
    for (Index i = 0; i < 6; ++i) {
        if (targets[std::size_t(i)] < 0) continue;
        const VectorXd e = logits.row(i).transpose().array().exp();
        direct += -std::log(e[targets[std::size_t(i)]] / e.sum());
        const VectorXd p = e / e.sum();
        VectorXd expected = p / 5.0;
        expected[targets[std::size_t(i)]] -= 1.0 / 5.0;
        CHECK(rel_diff(g.row(i).transpose(), expected) < 1e-14);
    }
    CHECK(loss == Approx(direct / 5.0).epsilon(1e-14));
    for (Index i = 0; i < 6; ++i) CHECK(std::abs(g.row(i).sum()) < 1e-16);
    CHECK(g.row(3).norm() == 0.0);

    SECTION("logits far apart: no overflow, the exact limits") {
        MatrixXd z(2, 3);
        z << 1000.0, 0.0, -1000.0, -1e300, 1e300, 0.0;
        MatrixXd dz;
        const double l = softmax_cross_entropy(z, std::vector<int>{0, 0}, dz);
        // row 0: −log softmax = log(1 + e⁻¹⁰⁰⁰ + e⁻²⁰⁰⁰) = 0; row 1: 2e300
        CHECK(l == Approx(1e300));
        CHECK(dz.allFinite());
        CHECK(dz(1, 0) == -0.5);
        CHECK(dz(1, 1) == 0.5);
    }
    SECTION("float logits are computed in double") {
        const Eigen::MatrixXf zf = (logits * 30.0).cast<float>();  // exp overflows in float
        Eigen::MatrixXf gf;
        const double lf = softmax_cross_entropy(zf, targets, gf);
        MatrixXd gd;
        const double ld = softmax_cross_entropy(zf.cast<double>(), targets, gd);
        CHECK(lf == ld);
        CHECK(gf.allFinite());
        CHECK(rel_diff(gf, gd) < 1e-6);
    }
}

TEST_CASE("blocks: forward values of the embedding, linear map and GELU", "[blocks]") {
    Normal rng(5);
    Embedding<double> emb(6, 3, 9);
    const MatrixXd e = emb.forward(std::vector<long>{5, 0, 5});
    CHECK(e.row(0) == emb.weights().table.row(5));
    CHECK(e.row(1) == emb.weights().table.row(0));
    CHECK(e.row(2) == emb.weights().table.row(5));
    CHECK(emb.forward(std::vector<int>{}).rows() == 0);

    Linear<double> lin(3, 4, 2);
    auto w = lin.weights();
    w.bias = rng.matrix(4, 1);
    lin.set_weights(w);
    const MatrixXd x = rng.matrix(5, 3);
    CHECK(rel_diff(lin.forward(x),
                   MatrixXd((x * w.weight.transpose()).rowwise() + w.bias.transpose())) < 1e-15);

    FeedForward<double> ff(1, 1, 0, Activation::gelu);
    ff.set_weights(
        {MatrixXd::Ones(1, 1), VectorXd::Zero(1), MatrixXd::Ones(1, 1), VectorXd::Zero(1)});
    MatrixXd v(3, 1);
    v << 1.0, -1.0, 0.0;
    const MatrixXd y = ff.forward(v);
    CHECK(y(0) == Approx(0.8413447460685429).epsilon(1e-15));  // Φ(1)
    CHECK(y(1) == Approx(-0.15865525393145707).epsilon(1e-14));
    CHECK(y(2) == 0.0);
    FeedForward<double> relu(1, 1, 0);
    relu.set_weights(ff.weights());
    CHECK(relu.forward(v) == MatrixXd((MatrixXd(3, 1) << 1.0, 0.0, 0.0).finished()));
}

TEST_CASE("blocks: seeds give the library's portable numbers; moves keep sizes", "[blocks]") {
    detail::Random r(42);
    Embedding<double> emb(4, 3, 42);
    CHECK(emb.weights().table(0, 0) == r.normal());  // column by column
    CHECK(emb.weights().table(1, 0) == r.normal());
    CHECK(Embedding<double>(4, 3, 42).weights().table == emb.weights().table);
    CHECK(Embedding<double>(4, 3, 43).weights().table != emb.weights().table);

    FeedForward<double> ff(4, 6, 7);
    detail::Random u(7);
    CHECK(ff.weights().w1(0, 0) == u.uniform(-0.5, 0.5));  // 1/√d
    CHECK(ff.weights().w1.cwiseAbs().maxCoeff() <= 0.5);
    CHECK(ff.weights().w2.cwiseAbs().maxCoeff() <= 1.0 / std::sqrt(6.0));
    CHECK(ff.weights().b1.norm() == 0.0);
    Linear<float> lin(9, 2, 1);
    CHECK(lin.weights().weight.cwiseAbs().maxCoeff() <= 1.0f / 3.0f);
    CHECK(lin.weights().bias.norm() == 0.0f);

    // a move carries the storage, and the views, along; the source keeps its sizes
    const auto views_before = ff.parameters();
    const MatrixXd w1 = ff.weights().w1;
    FeedForward<double> moved(std::move(ff));
    CHECK(views_before[0].value == moved.parameters()[0].value);
    CHECK(moved.weights().w1 == w1);
    CHECK(ff.weights().w1.rows() == 6);  // NOLINT(bugprone-use-after-move): documented state
    CHECK(ff.weights().w1.norm() == 0.0);
    CHECK(ff.forward(MatrixXd::Ones(2, 4)).norm() == 0.0);
    LayerNorm<double> ln(3);
    LayerNorm<double> ln2(std::move(ln));
    CHECK(ln.weights().gain == VectorXd::Ones(3));  // NOLINT(bugprone-use-after-move)
    CHECK(!ln.has_forward());
}

TEST_CASE("blocks: bad input is refused with the argument named, and changes nothing", "[blocks]") {
    Normal rng(6);
    const double nan = kNaN, inf = kInf;

    SECTION("constructors") {
        REQUIRE_INVALID(Embedding<double>(0, 3), has("Embedding::Embedding: vocabulary is 0"));
        REQUIRE_INVALID(Embedding<double>(3, -1), has("Embedding::Embedding: dim is -1"));
        REQUIRE_INVALID(LayerNorm<double>(0), has("LayerNorm::LayerNorm: dim is 0"));
        REQUIRE_INVALID(LayerNorm<double>(4, 0.0), has("eps is 0, expected > 0"));
        REQUIRE_INVALID(LayerNorm<double>(4, -1e-5), has("eps is -1.0000000000000001e-05"));
        REQUIRE_INVALID(LayerNorm<double>(4, nan), has("eps is nan"));
        REQUIRE_INVALID(LayerNorm<float>(4, 1e-50), has("eps is 1e-50, outside the normal range"));
        REQUIRE_INVALID(FeedForward<double>(4, 0), has("FeedForward::FeedForward: hidden is 0"));
        REQUIRE_INVALID(Linear<double>(0, 2), has("Linear::Linear: in is 0"));
        REQUIRE_INVALID(Linear<double>(std::numeric_limits<Index>::max() / 4, 1 << 20),
                        has("Linear::Linear: the weights"));
    }
    SECTION("embedding") {
        Embedding<double> emb(5, 3, 1);
        const Embedding<double> before = emb;
        emb.forward(std::vector<int>{1, 2});
        const MatrixXd dY = rng.matrix(2, 3);
        const char* fwd = "Embedding::forward: ";
        REQUIRE_INVALID(emb.forward(std::vector<int>{1, 5}),
                        has(fwd) && has("tokens[1] is 5, expected 0 <= token < 5"));
        REQUIRE_INVALID(emb.forward(std::vector<int>{-1}), has("tokens[0] is -1"));
        REQUIRE_INVALID(emb.forward(std::vector<unsigned char>{200}), has("tokens[0] is 200"));
        auto p = emb.parameters();
        p[0].values()(3, 1) = nan;
        REQUIRE_INVALID(emb.forward(std::vector<int>{0, 3}), has("weight row 3 (tokens[1])"));
        p[0].values()(3, 1) = 0.5;
        REQUIRE_INVALID(emb.backward(MatrixXd(3, 3)), has("dY is 3x3, expected 2x3"));
        REQUIRE_INVALID(emb.backward(with(dY, 0, 0, inf)), has("dY has a non-finite entry inf"));
        CHECK(emb.gradients().table.norm() == 0.0);
        emb.backward(dY);  // the forward of tokens {1, 2} is still the one differentiated
        CHECK(emb.gradients().table.row(1) == dY.row(0));
        CHECK(emb.gradients().table.row(2) == dY.row(1));
        REQUIRE_LOGIC(emb.backward(dY), has("Embedding::backward: the last forward() was already"));
        REQUIRE_LOGIC(Embedding<double>(before).backward(dY), has("no forward() to differentiate"));
        // an accumulated gradient that would overflow: nothing added
        emb.forward(std::vector<int>{1, 1});
        const MatrixXd huge = MatrixXd::Constant(2, 3, std::numeric_limits<double>::max());
        const MatrixXd grads = emb.gradients().table;
        REQUIRE_INVALID(emb.backward(huge),
                        has("Embedding::backward: dY's largest |entry|") && has("overflowed"));
        CHECK(emb.gradients().table == grads);
        CHECK(emb.has_forward());
    }
    SECTION("layer norm") {
        LayerNorm<double> ln(4);
        ln.set_weights({rng.matrix(4, 1), rng.matrix(4, 1)});
        const LayerNorm<double> twin = ln;
        const MatrixXd X = rng.matrix(3, 4), dY = rng.matrix(3, 4);
        REQUIRE_LOGIC(ln.backward(dY), has("LayerNorm::backward: no forward()"));
        ln.forward(X);
        REQUIRE_INVALID(ln.forward(MatrixXd(3, 5)),
                        has("LayerNorm::forward: X is 3x5, expected 3x4"));
        REQUIRE_INVALID(ln.forward(with(X, 2, 1, nan)),
                        has("X has a non-finite entry nan at (2, 1)"));
        REQUIRE_INVALID(ln.set_weights({rng.matrix(3, 1), rng.matrix(4, 1)}),
                        has("LayerNorm::set_weights: gain is 3x1, expected 4x1"));
        REQUIRE_INVALID(
            ln.set_weights({rng.matrix(4, 1), with(VectorXd(rng.matrix(4, 1)), 0, inf)}),
            has("bias has a non-finite entry inf"));
        REQUIRE_INVALID(ln.backward(MatrixXd(2, 4)), has("dY is 2x4, expected 3x4"));
        LayerNorm<double> big = ln;
        auto w = big.weights();
        w.gain.setConstant(std::numeric_limits<double>::max());
        big.set_weights(w);
        REQUIRE_INVALID(big.forward(X), has("LayerNorm::forward: the output overflowed"));
        // the forward of X is still the one differentiated, the weights unchanged
        LayerNorm<double> reference = twin;
        reference.forward(X);
        CHECK(ln.weights().gain == twin.weights().gain);
        CHECK(ln.backward(dY) == reference.backward(dY));
        CHECK(ln.gradients().gain == reference.gradients().gain);
    }
    SECTION("feed-forward and linear") {
        FeedForward<double> ff(3, 5, 2);
        const MatrixXd X = rng.matrix(4, 3);
        ff.forward(X);
        auto p = ff.parameters();
        REQUIRE(p[2].name == "w2");
        p[2].values()(1, 1) = inf;
        REQUIRE_INVALID(ff.forward(X), has("FeedForward::forward: weight w2 has a non-finite"));
        p[2].values()(1, 1) = 0.0;
        REQUIRE_INVALID(ff.set_weights({MatrixXd::Zero(5, 3), VectorXd::Zero(5),
                                        MatrixXd::Zero(3, 4), VectorXd::Zero(3)}),
                        has("FeedForward::set_weights: w2 is 3x4, expected 3x5"));
        auto w = ff.weights();
        w.w1 *= 4.0;  // a row of W₁ whose |entries| sum above 1
        ff.set_weights(w);
        REQUIRE_INVALID(ff.forward(overflowing_input(w.w1, 4)),
                        has("the output overflowed (X's largest |entry|"));
        const MatrixXd huge = MatrixXd::Constant(4, 3, std::numeric_limits<double>::max());
        const auto grads = gradients_of(ff.parameters());
        REQUIRE_INVALID(ff.backward(huge), has("FeedForward::backward: dY's largest |entry|"));
        require_same(gradients_of(ff.parameters()), grads);
        CHECK(ff.backward(rng.matrix(4, 3)).allFinite());

        Linear<double> lin(3, 2, 1);
        REQUIRE_LOGIC(lin.backward(MatrixXd(1, 2)), has("Linear::backward: no forward()"));
        REQUIRE_INVALID(lin.forward(MatrixXd(2, 2)),
                        has("Linear::forward: X is 2x2, expected 2x3"));
        REQUIRE_INVALID(lin.set_weights({MatrixXd::Zero(3, 2), VectorXd::Zero(2)}),
                        has("Linear::set_weights: weight is 3x2, expected 2x3"));
    }
    SECTION("cross-entropy") {
        const MatrixXd z = rng.matrix(3, 4);
        MatrixXd g = MatrixXd::Constant(1, 1, 7.0);
        const char* ce = "softmax_cross_entropy: ";
        REQUIRE_INVALID(softmax_cross_entropy(z, std::vector<int>{0, 1}, g),
                        has(ce) && has("targets has 2 entries, expected 3"));
        REQUIRE_INVALID(softmax_cross_entropy(z, std::vector<int>{0, 4, 1}, g),
                        has("targets[1] is 4, expected 0 <= target < 4"));
        REQUIRE_INVALID(softmax_cross_entropy(z, std::vector<int>{0, -2, 1}, g),
                        has("targets[1] is -2"));
        REQUIRE_INVALID(softmax_cross_entropy(z, std::vector<int>{-1, -1, -1}, g),
                        has("no entry other than -1"));
        REQUIRE_INVALID(softmax_cross_entropy(with(z, 1, 2, nan), std::vector<int>{0, 1, 2}, g),
                        has("logits has a non-finite entry nan at (1, 2)"));
        MatrixXd wide(1, 2);
        wide << -std::numeric_limits<double>::max(), std::numeric_limits<double>::max();
        REQUIRE_INVALID(softmax_cross_entropy(wide, std::vector<int>{0}, g),
                        has("the loss of row 0 overflowed"));
        CHECK(g == MatrixXd::Constant(1, 1, 7.0));
    }
}

TEST_CASE("blocks: float agrees with double", "[blocks][float]") {
    Normal rng(8);
    const Index n = 6, d = 8, f = 12;
    const MatrixXd X = float_rounded(rng.matrix(n, d, 1.5)), dY = float_rounded(rng.matrix(n, d));
    auto compare = [&](auto& md, auto& mf, const std::string& part) {
        using F = std::decay_t<decltype(mf)>;
        copy_values(mf.parameters(), md.parameters());
        require_float(part, "y", mf.forward(X.cast<float>()), md.forward(X));
        require_float(part, "dX", mf.backward(dY.cast<float>()), md.backward(dY));
        const auto gf = gradients_of(mf.parameters()), gd = gradients_of(md.parameters());
        for (std::size_t k = 0; k < gd.size(); ++k) require_float(part, "gradient", gf[k], gd[k]);
        static_assert(std::is_same_v<typename F::Scalar, float>);
    };
    LayerNorm<double> ld(d);
    LayerNorm<float> lf(d);
    ld.set_weights({float_rounded(rng.matrix(d, 1)), float_rounded(rng.matrix(d, 1))});
    compare(ld, lf, "blocks layer norm");
    for (auto act : {Activation::relu, Activation::gelu}) {
        FeedForward<double> ffd(d, f, 1, act);
        FeedForward<float> fff(d, f, 1, act);
        round_values_to_float(ffd.parameters());
        compare(ffd, fff, "blocks feed-forward");
    }
    Linear<double> lin_d(d, d, 3);
    Linear<float> lin_f(d, d, 3);
    round_values_to_float(lin_d.parameters());
    compare(lin_d, lin_f, "blocks linear");
}

TEST_CASE("blocks: Adam trains a small model through the blocks' parameters()", "[blocks]") {
    // Embedding → LayerNorm → FeedForward (residual) → Linear → cross-entropy: the next
    // token of a fixed permutation of 7 tokens.
    const Index vocabulary = 7, d = 8;
    Embedding<double> emb(vocabulary, d, 1);
    LayerNorm<double> ln(d);
    FeedForward<double> ff(d, 16, 2, Activation::gelu);
    Linear<double> head(d, vocabulary, 3);
    std::vector<Parameter<double>> ps;
    for (auto& p : emb.parameters("embedding.")) ps.push_back(p);
    for (auto& p : ln.parameters("norm.")) ps.push_back(p);
    for (auto& p : ff.parameters("ff.")) ps.push_back(p);
    for (auto& p : head.parameters("head.")) ps.push_back(p);
    CHECK(names_of(ps) == std::vector<std::string>{"embedding.weight", "norm.weight", "norm.bias",
                                                   "ff.w1", "ff.b1", "ff.w2", "ff.b2",
                                                   "head.weight", "head.bias"});
    AdamOptions options;
    options.learning_rate = 0.05;
    Adam<double> adam(ps, options);
    const std::vector<int> tokens = {3, 0, 6, 2, 5, 1, 4}, next = {0, 6, 2, 5, 1, 4, 3};
    double first = 0, last = 0;
    for (int step = 0; step < 40; ++step) {
        const MatrixXd e = emb.forward(tokens);
        const MatrixXd h = ln.forward(e);
        const MatrixXd r = h + ff.forward(h);
        MatrixXd dlogits;
        const double loss = softmax_cross_entropy(head.forward(r), next, dlogits);
        (step == 0 ? first : last) = loss;
        const MatrixXd dr = head.backward(dlogits);
        const MatrixXd dh = dr + ff.backward(dr);
        emb.backward(ln.backward(dh));
        adam.step();
        adam.zero_grad();
    }
    INFO("loss " << first << " -> " << last);
    CHECK(first > 1.0);
    CHECK(last < 0.1 * first);
    CHECK(emb.gradients().table.norm() == 0.0);  // Adam's zero_grad() reached the blocks
}
