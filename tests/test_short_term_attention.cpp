// The layer's causal short-term attention (short_term_attention.hpp), tested directly: its
// forward against a plain loop implementation of causal multi-head attention, with and
// without a previous chunk; backward_unchecked + finish_backward against finite differences
// for dX and every weight (also with a ∂ℓ/∂Q added between the two halves, as the layer
// does), in double; float against double; bad weights and sizes.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <infinityformer/short_term_attention.hpp>
#include <string>
#include <vector>

#include "extern_templates.hpp"
#include "part_util.hpp"
#include "test_fd.hpp"
#include "test_util.hpp"

namespace {

using namespace part_util;

using Att = ShortTermAttention<double>;

// The forward of chunk X after the window's previous chunk `prev` (0 rows: none), as the
// layer runs it: the queries first, then the attention.
template <typename S>
typename ShortTermAttention<S>::Trace run_forward(
    const ShortTermAttention<S>& att, const typename ShortTermAttention<S>::Matrix& prev,
    const typename ShortTermAttention<S>::Matrix& X) {
    typename ShortTermAttention<S>::Matrix q;
    att.project_queries(X, q);
    typename ShortTermAttention<S>::Trace t;
    att.forward_unchecked(prev, X, q, t);
    return t;
}

struct Case {
    Index d, heads, l, lp;  // width, heads, chunk length, rows of the previous chunk
    std::uint64_t seed;
};

// Without a previous chunk (a stream's first chunk), with one of the chunk's length (as in the
// layer) and with one of another length.
const std::vector<Case>& cases() {
    static const std::vector<Case> c = {
        {6, 1, 4, 0, 1}, {6, 2, 4, 0, 2}, {6, 3, 5, 0, 3}, {6, 1, 4, 4, 4},
        {6, 2, 4, 4, 5}, {6, 3, 5, 5, 6}, {8, 2, 3, 6, 7}, {4, 4, 3, 1, 8},
    };
    return c;
}

}  // namespace

TEST_CASE("short-term attention: forward equals a direct loop implementation",
          "[short_term_attention]") {
    Att::Trace reused;  // one trace for every case: forward_unchecked writes all of it
    for (const Case& c : cases()) {
        INFO("d = " << c.d << ", H = " << c.heads << ", L = " << c.l << ", L_p = " << c.lp);
        Att att(c.d, c.heads, c.seed);
        REQUIRE(att.d_model() == c.d);
        REQUIRE(att.num_heads() == c.heads);
        REQUIRE(att.head_size() == c.d / c.heads);
        Normal rng(100 + c.seed);
        att.set_weights(random_short_term_weights<Att::Weights>(c.d, rng));
        const auto& w = att.weights();
        const MatrixXd prev = rng.matrix(c.lp, c.d), x = rng.matrix(c.l, c.d);
        MatrixXd q;
        att.project_queries(x, q);
        const MatrixXd q_expected = x * w.query.transpose();
        CHECK(max_abs(q - q_expected) <= 1e-15 * max_abs(q_expected));
        MatrixXd q_copy = q;
        Att::Trace t;
        att.forward_unchecked(prev, x, q, t);
        const MatrixXd expected = causal_attention(prev, x, w, c.heads);
        REQUIRE(t.output.rows() == c.l);
        REQUIRE(t.output.cols() == c.d);
        CHECK(max_abs(t.output - expected) <= 1e-13 * max_abs(expected));
        // The trace: the chunk, its queries, the window [P; X], the causal probabilities.
        CHECK(t.x == x);
        CHECK(t.q == q_copy);
        REQUIRE(t.kv_in.rows() == c.lp + c.l);
        CHECK(t.kv_in.topRows(c.lp) == prev);
        CHECK(t.kv_in.bottomRows(c.l) == x);
        REQUIRE(t.probs.rows() == c.heads * c.l);
        REQUIRE(t.probs.cols() == c.lp + c.l);
        for (Index h = 0; h < c.heads; ++h)
            for (Index i = 0; i < c.l; ++i) {
                const Index visible = c.lp + i + 1;
                const auto row = t.probs.row(h * c.l + i);
                CHECK(std::abs(row.head(visible).sum() - 1.0) <= 1e-14);
                CHECK(row.head(visible).minCoeff() > 0.0);
                CHECK(row.tail(c.lp + c.l - visible).isZero(0.0));
            }
        CHECK(max_abs(t.output - t.context * w.out.transpose()) <= 1e-14 * max_abs(t.output));
        // A trace used before (other shapes) is overwritten completely.
        att.forward_unchecked(prev, x, q_copy, reused);
        CHECK(reused == t);
        // Causality: the first token's output depends on the previous chunk and the first
        // token only.
        MatrixXd x2 = x;
        x2.bottomRows(c.l - 1) = rng.matrix(c.l - 1, c.d);
        const Att::Trace t2 = run_forward(att, prev, x2);
        CHECK(max_abs(t2.output.row(0) - t.output.row(0)) <= 1e-14 * max_abs(t.output));
        CHECK(max_abs(t2.output.bottomRows(c.l - 1) - t.output.bottomRows(c.l - 1)) > 1e-3);
        // The previous chunk is attended to.
        if (c.lp > 0) {
            const Att::Trace alone = run_forward(att, MatrixXd(0, c.d), x);
            CHECK(max_abs(alone.output - t.output) > 1e-3);
        }
    }
}

TEST_CASE("short-term attention: backward equals finite differences",
          "[short_term_attention][fd][training]") {
    for (const Case& c : cases()) {
        for (const bool extra : {false, true}) {
            // extra: ℓ also reads Q (ℓ += Σ Q ⊙ R), whose ∂ℓ/∂Q = R is added to w.dq between
            // backward_unchecked() and finish_backward(), as the layer adds the long-term part.
            INFO("d = " << c.d << ", H = " << c.heads << ", L = " << c.l << ", L_p = " << c.lp
                        << (extra ? ", with an extra dQ" : ""));
            Normal rng(200 + c.seed);
            Att att(c.d, c.heads, c.seed);
            att.set_weights(random_short_term_weights<Att::Weights>(c.d, rng));
            const MatrixXd prev = rng.matrix(c.lp, c.d, 1.5), X = rng.matrix(c.l, c.d, 1.5);
            const MatrixXd dY = rng.matrix(c.l, c.d), R = rng.matrix(c.l, c.d);
            auto loss = [&](const Att& m, const MatrixXd& x) {
                const Att::Trace t = run_forward(m, prev, x);
                double v = t.output.cwiseProduct(dY).sum();
                if (extra) v += t.q.cwiseProduct(R).sum();
                return v;
            };
            Att base = att;
            base.zero_grad();
            const Att::Trace t = run_forward(base, prev, X);
            Att::Work w;
            base.backward_unchecked(t, dY, w);
            REQUIRE(w.dq.rows() == c.l);
            REQUIRE(w.dk.rows() == c.lp + c.l);
            REQUIRE(w.dv.rows() == c.lp + c.l);
            if (extra) w.dq += R;
            MatrixXd dX(c.l, c.d);
            base.finish_backward(t, dY, w, dX);
            const auto ps = parameter_views(base);
            const std::vector<std::string> names = {"query.weight", "key.weight", "value.weight",
                                                    "out.weight"};
            REQUIRE(names_of(ps) == names);
            const auto analytic = gradients_of(ps);
            const std::uint64_t seed = c.seed + (extra ? 100 : 0);
            check_input(
                "short-term attention", "dX", X, dX,
                [&](const MatrixXd& x) { return loss(att, x); }, kH0, seed);
            check_parameters(
                "short-term attention", att, parameter_views<Att>,
                [&](Att& m) { return loss(m, X); }, analytic, kH0, seed + 10);
            // finish_backward() accumulates; zero_grad() resets.
            base.finish_backward(t, dY, w, dX);
            const auto twice = gradients_of(parameter_views(base));
            for (std::size_t b = 0; b < analytic.size(); ++b)
                CHECK(max_abs(twice[b] - 2 * analytic[b]) <= 1e-14 * max_abs(analytic[b]));
            base.zero_grad();
            for (const auto& g : gradients_of(parameter_views(base))) CHECK(g.isZero(0.0));
        }
    }
}

TEST_CASE("short-term attention: float agrees with double", "[short_term_attention][float]") {
    for (const Case& c : cases()) {
        INFO("d = " << c.d << ", H = " << c.heads << ", L = " << c.l << ", L_p = " << c.lp);
        Normal rng(300 + c.seed);
        // Both get the same inputs and weights, every value rounded to float first.
        Att att(c.d, c.heads, c.seed);
        att.set_weights(random_short_term_weights<Att::Weights>(c.d, rng));
        round_values_to_float(parameter_views(att));
        ShortTermAttention<float> attf(c.d, c.heads);
        copy_values(parameter_views(attf), parameter_views(att));
        const MatrixXd prev = float_rounded(rng.matrix(c.lp, c.d, 1.5));
        const MatrixXd X = float_rounded(rng.matrix(c.l, c.d, 1.5));
        const MatrixXd dY = float_rounded(rng.matrix(c.l, c.d));

        att.zero_grad();
        const Att::Trace t = run_forward(att, prev, X);
        Att::Work w;
        att.backward_unchecked(t, dY, w);
        MatrixXd dX(c.l, c.d);
        att.finish_backward(t, dY, w, dX);

        attf.zero_grad();
        const Eigen::MatrixXf prevf = prev.cast<float>(), Xf = X.cast<float>(),
                              dYf = dY.cast<float>();
        const ShortTermAttention<float>::Trace tf = run_forward(attf, prevf, Xf);
        ShortTermAttention<float>::Work wf;
        attf.backward_unchecked(tf, dYf, wf);
        Eigen::MatrixXf dXf(c.l, c.d);
        attf.finish_backward(tf, dYf, wf, dXf);

        require_float("short-term attention", "output", tf.output, t.output);
        require_float("short-term attention", "dX", dXf, dX);
        const auto gd = gradients_of(parameter_views(att));
        const auto gf = gradients_of(parameter_views(attf));
        const auto names = names_of(parameter_views(att));
        REQUIRE(gf.size() == gd.size());
        for (std::size_t b = 0; b < gd.size(); ++b)
            require_float("short-term attention", names[b], gf[b], gd[b]);
    }
}

TEST_CASE("short-term attention: set_weights rejects wrong shapes and non-finite entries",
          "[short_term_attention][errors]") {
    Att att(6, 2, 1), twin(6, 2, 1);
    Normal rng(5);
    const Att::Weights w = att.weights();
    const char* sw = "ShortTermAttention::set_weights: ";
    struct Field {
        std::string name;
        MatrixXd Att::Weights::*member;
    };
    const std::vector<Field> fields = {{"query", &Att::Weights::query},
                                       {"key", &Att::Weights::key},
                                       {"value", &Att::Weights::value},
                                       {"out", &Att::Weights::out}};
    for (const Field& f : fields) {
        INFO(f.name);
        Att::Weights bad = w;
        bad.*f.member = rng.matrix(6, 5);
        REQUIRE_INVALID(att.set_weights(bad), has(sw) && has(f.name + " is 6x5, expected 6x6"));
        bad = w;
        bad.*f.member = rng.matrix(5, 6);
        REQUIRE_INVALID(att.set_weights(bad), has(sw) && has(f.name + " is 5x6, expected 6x6"));
        bad = w;
        bad.*f.member = MatrixXd(0, 0);
        REQUIRE_INVALID(att.set_weights(bad), has(sw) && has(f.name + " is 0x0, expected 6x6"));
        bad = w;
        (bad.*f.member)(1, 2) = kNaN;
        REQUIRE_INVALID(att.set_weights(bad),
                        has(sw) && has(f.name + " has a non-finite entry nan at (1, 2)"));
        bad = w;
        (bad.*f.member)(5, 0) = -kInf;
        REQUIRE_INVALID(att.set_weights(bad),
                        has(sw) && has(f.name + " has a non-finite entry -inf at (5, 0)"));
        // Nothing was taken.
        CHECK(att.weights().query == twin.weights().query);
        CHECK(att.weights().key == twin.weights().key);
        CHECK(att.weights().value == twin.weights().value);
        CHECK(att.weights().out == twin.weights().out);
    }
    // The object computes as its twin, and takes good weights.
    const MatrixXd prev = rng.matrix(4, 6), x = rng.matrix(4, 6);
    CHECK(run_forward(att, prev, x) == run_forward(twin, prev, x));
    Att::Weights good = w;
    good.key *= 0.5;
    CHECK_NOTHROW(att.set_weights(good));
    CHECK(att.weights().key == good.key);
}

TEST_CASE("short-term attention: the constructor rejects bad sizes",
          "[short_term_attention][errors]") {
    const char* where = "ShortTermAttention::ShortTermAttention: ";
    REQUIRE_INVALID(Att(0, 1), has(where) && has("d_model is 0"));
    REQUIRE_INVALID(Att(-2, 1), has(where) && has("d_model is -2"));
    REQUIRE_INVALID(Att(6, 0), has(where) && has("num_heads is 0"));
    REQUIRE_INVALID(Att(6, 4),
                    has(where) && has("num_heads is 4") && has("divisor of d_model (6)"));
    REQUIRE_INVALID(Att(6, 12), has(where) && has("num_heads is 12"));
    CHECK_NOTHROW(Att(1, 1));
    CHECK_NOTHROW(Att(6, 6));
    // The initial weights: U(±1/√d) from the seed (the same seed, the same weights), and
    // zero gradients of the weights' shapes.
    const Att a(6, 2, 7), b(6, 2, 7), other(6, 2, 8);
    CHECK(a.weights().query == b.weights().query);
    CHECK(a.weights().out == b.weights().out);
    CHECK(a.weights().query != other.weights().query);
    for (const MatrixXd* m :
         {&a.weights().query, &a.weights().key, &a.weights().value, &a.weights().out}) {
        REQUIRE(m->rows() == 6);
        REQUIRE(m->cols() == 6);
        CHECK(max_abs(*m) <= 1.0 / std::sqrt(6.0));
        CHECK(max_abs(*m) > 0.0);
    }
    for (const MatrixXd* g :
         {&a.gradients().query, &a.gradients().key, &a.gradients().value, &a.gradients().out}) {
        REQUIRE(g->rows() == 6);
        REQUIRE(g->cols() == 6);
        CHECK(g->isZero(0.0));
    }
}

TEST_CASE("short-term attention: the constructor's seed is used as given",
          "[short_term_attention][seeds]") {
    const ShortTermAttention<double> given(6, 2, 17);
    ShortTermAttention<double> reinit(6, 2, 0);
    reinit.init_weights(17);
    CHECK(given.weights().query == reinit.weights().query);
    CHECK(given.weights().key == reinit.weights().key);
    CHECK(given.weights().value == reinit.weights().value);
    CHECK(given.weights().out == reinit.weights().out);
}
