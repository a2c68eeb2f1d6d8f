/// @file short_term_attention.hpp
/// @brief The layer's causal short-term attention over the previous and the current chunk
/// (the transformer part of the ∞-former, §3), with its backward pass.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "detail/config.hpp"
#include "detail/limits.hpp"
#include "detail/math.hpp"
#include "detail/random.hpp"
#include "errors.hpp"
#include "parameter_view.hpp"

namespace infinityformer {

/// Multi-head causal softmax attention of width d over a window of two chunks.
///
/// For a chunk X (L × d) and the chunk before it P (L_p × d, L_p = 0 for a first chunk):
///   Q = X W_Qᵀ;  K, V = [P; X] W_{K,V}ᵀ
///   per head h: A_h = softmax(Q_h K_hᵀ/√d_h + causal mask), context_h = A_h V_h;
///   output = [context_1 … context_H] W_Oᵀ
/// Token i of X sees all of P and tokens 0…i of X. Weights follow y = W x (nn.Linear), all
/// d × d, no biases.
///
/// The part holds the weights and their gradients only: what a forward computes for one
/// stream is a Trace that the caller keeps (one per stream) and hands back to backward().
///
/// \tparam Scalar_ float or double.
template <typename Scalar_>
class ShortTermAttention {
    static_assert(std::is_floating_point_v<Scalar_>, "ShortTermAttention needs float or double");
    static_assert(detail::instantiable_scalar<Scalar_>(),
                  "infinityformer::compiled holds ShortTermAttention<float> and <double> only");

public:
    using Scalar = Scalar_;
    using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
    using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    /// Row-major storage for the attention weights, whose softmax runs along rows.
    using RowMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    using Index = Eigen::Index;

    /// The weights (y = W x, all d × d).
    struct Weights {
        Matrix query, key, value, out;
    };

    /// What forward() computed for one chunk (kept for backward()).
    struct Trace {
        Matrix x;         ///< the chunk X, L × d
        Matrix q;         ///< X W_Qᵀ, L × d
        Matrix kv_in;     ///< [P; X], (L_p + L) × d
        Matrix k, v;      ///< [P; X] W_{K,V}ᵀ
        RowMatrix probs;  ///< A_h stacked over heads, H·L × (L_p + L) (masked entries 0),
                          ///< row-major: each softmax reads and writes one contiguous row
        Matrix context;   ///< L × d
        Matrix output;    ///< context W_Oᵀ, L × d

        friend bool operator==(const Trace& a, const Trace& b) {
            return detail::same_values(a.x, b.x) && detail::same_values(a.q, b.q) &&
                   detail::same_values(a.kv_in, b.kv_in) && detail::same_values(a.k, b.k) &&
                   detail::same_values(a.v, b.v) && detail::same_values(a.probs, b.probs) &&
                   detail::same_values(a.context, b.context) &&
                   detail::same_values(a.output, b.output);
        }
        friend bool operator!=(const Trace& a, const Trace& b) { return !(a == b); }
    };

    /// Workspace of a backward, held by whoever holds the trace (a stream): ∂ℓ/∂Q, ∂ℓ/∂K,
    /// ∂ℓ/∂V, the weights' gradients and ∂ℓ/∂X of the last call, kept once all are finite.
    struct Work {
        Matrix dcontext, dq, dk, dv;
        RowMatrix dprobs;  // ∂ℓ/∂A_h, laid out as Trace::probs
        Vector dot;
        Weights dgrad;  // this call's gradients of the weights
        Matrix dx;      // and its ∂ℓ/∂X
    };

    /// @param d_model d ≥ 1. @param num_heads H, divides d.
    /// @param seed seed of the initial weights, nn.Linear's U(±1/√d) (used as given).
    ShortTermAttention(Index d_model, Index num_heads, std::uint64_t seed = 0);

    /// Bytes of the weights, their gradients and a backward's gradients (computed aside) of a
    /// part of width d_model: the constructor refuses a width for which they exceed the
    /// machine's memory.
    static double weight_bytes(Index d_model) {
        const double d = static_cast<double>(d_model);
        return static_cast<double>(sizeof(Scalar)) * 12 * d * d;  // and a backward's gradients
    }

    ShortTermAttention(const ShortTermAttention&) = default;
    ShortTermAttention& operator=(const ShortTermAttention&) = default;
    /// Moves the weights and gradients (views from parameters() follow them): `o` keeps its
    /// sizes and settings, with zero weights and gradients, and no forward to differentiate;
    /// every call on it works. Allocates `o`'s zeros.
    ShortTermAttention(ShortTermAttention&& o) { take(o); }
    ShortTermAttention& operator=(ShortTermAttention&& o) {
        if (this != &o) take(o);
        return *this;
    }

    Index d_model() const { return d_; }
    Index num_heads() const { return heads_; }
    Index head_size() const { return d_ / heads_; }

    const Weights& weights() const { return weights_; }
    /// Copies `w` into the existing storage (views from append_parameters() stay valid).
    /// @throws infinityformer::invalid_argument on a wrong shape or non-finite entry
    /// (weights unchanged).
    void set_weights(const Weights& w);

    /// nn.Linear's initialisation U(±1/√d) from a seeded generator, written into the
    /// existing storage (views from append_parameters() stay valid).
    void init_weights(std::uint64_t seed);

    /// The queries X W_Qᵀ (L × d) into q.
    void project_queries(const Eigen::Ref<const Matrix>& X, Matrix& q) const;

    /// Forward of a chunk X (L × d, checked) after the window's previous chunk P (L_p × d,
    /// possibly 0 rows), with the queries q = X W_Qᵀ already computed (moved into t.q).
    /// Writes every field of t.
    void forward_unchecked(const Eigen::Ref<const Matrix>& prev, const Eigen::Ref<const Matrix>& X,
                           Matrix& q, Trace& t) const;

    /// Throws infinityformer::invalid_argument unless every value of t is finite, saying
    /// why: a weight with a non-finite entry (named `prefix` + its parameters() name), or
    /// the first stage that overflowed (projections, scores, output) with the magnitudes
    /// that made it overflow. A few reductions beside the products.
    void check_trace(const char* where, const std::string& prefix, const Trace& t) const;

    /// First half of the backward of trace t for ∂ℓ/∂output = dY (checked): ∂ℓ/∂Q, ∂ℓ/∂K
    /// and ∂ℓ/∂V into w.dq, w.dk, w.dv. Nothing is accumulated yet, so that a caller can add
    /// to w.dq what other parts read from Q before finish_backward().
    void backward_unchecked(const Trace& t, const Eigen::Ref<const Matrix>& dY, Work& w) const;

    /// Second half: accumulates the weights' gradients from t, dY and w (w.dq may include
    /// other parts' ∂ℓ/∂Q) and writes ∂ℓ/∂X of the chunk (L × d). The previous chunk of the
    /// window is a constant (truncated back-propagation). The results are computed aside
    /// and added and written only once all are finite.
    /// @throws infinityformer::invalid_argument if a result overflowed (nothing changed).
    void finish_backward(const Trace& t, const Eigen::Ref<const Matrix>& dY, Work& w,
                         Eigen::Ref<Matrix> dX);

    /// The computing half of finish_backward(): this call's gradients of the weights and
    /// ∂ℓ/∂X (w.dx) into the workspace; nothing accumulated.
    void finish_backward_compute(const Trace& t, const Eigen::Ref<const Matrix>& dY, Work& w) const;

    /// True if every result of the last finish_backward_compute() is finite, and so is every
    /// gradient once it is added (one vectorised pass over each).
    /// `into`: the gradients they will be added to.
    static bool finish_backward_finite(const Work& w, const Weights& into);

    /// Throws infinityformer::invalid_argument naming the first result of the last
    /// finish_backward_compute() that is not finite (a weight's gradient as `prefix` + its
    /// parameters() name, or its sum with the accumulated one; then dX), with `cause` and
    /// `inputs` (see detail::fail_backward()).
    [[noreturn]] static void explain_backward(const char* where, const std::string& prefix,
                                              const std::string& cause, const std::string& inputs,
                                              const Work& w, const Weights& into);

    /// The keeping half, after finish_backward_compute() and finish_backward_finite(): adds
    /// this call's gradients to gradients() (additions only; nothing throws).
    static void finish_backward_accumulate(const Work& w, Weights& into);
    /// Adds this call's gradients (w) to gradients().
    void finish_backward_accumulate(const Work& w);
    /// Zero gradients laid out as the weights (a thread's own sum of gradients).
    Weights zero_gradients() const;
    /// Appends views of the weights with the gradients `grads` (laid out as the weights)
    /// in place of the accumulated ones: `prefix`{query,key,value,out}.weight.
    void append_parameters(std::vector<Parameter<Scalar>>& out, const std::string& prefix,
                           Weights& grads);

    /// Gradients accumulated by finish_backward(), laid out as the weights.
    const Weights& gradients() const { return grads_; }
    void zero_grad();

    /// Appends the named weights and gradients: `prefix`{query,key,value,out}.weight.
    void append_parameters(std::vector<Parameter<Scalar>>& out, const std::string& prefix = "");

private:
    // The moves: everything moved; `o` left with zero weights and gradients of its sizes.
    void take(ShortTermAttention& o) {
        d_ = o.d_;
        heads_ = o.heads_;
        weights_ = std::move(o.weights_);
        grads_ = std::move(o.grads_);
        o.zero_grad();
        o.weights_ = o.grads_;
    }

    Index d_ = 0;
    Index heads_ = 0;
    Weights weights_;
    Weights grads_;
};

#if INFINITYFORMER_HEADER_ONLY

template <typename Scalar_>
ShortTermAttention<Scalar_>::ShortTermAttention(Index d_model, Index num_heads, std::uint64_t seed)
    : d_(d_model), heads_(num_heads) {
    constexpr const char* where = "ShortTermAttention::ShortTermAttention";
    detail::check_heads(where, "d_model", d_model, num_heads);
    const double d = static_cast<double>(d_model);
    detail::require_allocatable(where, "the weights (4 x d_model x d_model) and gradients", d * d,
                                weight_bytes(d_model));
    init_weights(seed);
    zero_grad();
}

template <typename Scalar_>
void ShortTermAttention<Scalar_>::set_weights(const Weights& w) {
    constexpr const char* where = "ShortTermAttention::set_weights";
    detail::check_matrix(where, "query", w.query, d_, d_);
    detail::check_matrix(where, "key", w.key, d_, d_);
    detail::check_matrix(where, "value", w.value, d_, d_);
    detail::check_matrix(where, "out", w.out, d_, d_);
    weights_ = w;  // same shapes: copied into the existing storage
}

template <typename Scalar_>
void ShortTermAttention<Scalar_>::init_weights(std::uint64_t seed) {
    detail::Random rng(seed);
    const double bound = 1.0 / std::sqrt(static_cast<double>(d_));
    for (Matrix* m : {&weights_.query, &weights_.key, &weights_.value, &weights_.out}) {
        m->resize(d_, d_);  // allocates only in the constructor; a no-op afterwards
        detail::fill_uniform(*m, bound, rng);
    }
}

template <typename Scalar_>
void ShortTermAttention<Scalar_>::project_queries(const Eigen::Ref<const Matrix>& X,
                                                  Matrix& q) const {
    q.noalias() = X * weights_.query.transpose();
}

template <typename Scalar_>
void ShortTermAttention<Scalar_>::forward_unchecked(const Eigen::Ref<const Matrix>& prev,
                                                    const Eigen::Ref<const Matrix>& X, Matrix& q,
                                                    Trace& t) const {
    const Index l = X.rows();
    const Index lp = prev.rows();
    const Index dh = head_size();
    t.q.swap(q);
    t.x = X;
    t.kv_in.resize(lp + l, d_);
    if (lp > 0) t.kv_in.topRows(lp) = prev;
    t.kv_in.bottomRows(l) = X;
    t.k.noalias() = t.kv_in * weights_.key.transpose();
    t.v.noalias() = t.kv_in * weights_.value.transpose();
    t.context.resize(l, d_);
    t.probs.resize(heads_ * l, lp + l);
    const Scalar scale = Scalar(1) / std::sqrt(static_cast<Scalar>(dh));
    for (Index h = 0; h < heads_; ++h) {
        auto a = t.probs.middleRows(h * l, l);
        a.noalias() = scale * t.q.middleCols(h * dh, dh) * t.k.middleCols(h * dh, dh).transpose();
        for (Index i = 0; i < l; ++i) {
            const Index visible = lp + i + 1;  // causal: previous chunk + tokens 0…i
            auto row = a.row(i);
            const Scalar mx = row.head(visible).maxCoeff();
            row.head(visible) = (row.head(visible).array() - mx).exp();
            // Weights below ε/visible of the largest (1) are exactly 0: no subnormal
            // number reaches P V, and the mass dropped is below one rounding of the sum.
            detail::zero_below(
                &row.coeffRef(0), visible,
                std::numeric_limits<Scalar>::epsilon() / static_cast<Scalar>(visible),
                row.innerStride());
            row.head(visible) /= row.head(visible).sum();
            row.tail(lp + l - visible).setZero();
        }
        t.context.middleCols(h * dh, dh).noalias() = a * t.v.middleCols(h * dh, dh);
    }
    t.output.noalias() = t.context * weights_.out.transpose();
}

template <typename Scalar_>
void ShortTermAttention<Scalar_>::check_trace(const char* where, const std::string& prefix,
                                              const Trace& t) const {
    if (detail::all_finite(t.q) && detail::all_finite(t.k) && detail::all_finite(t.v) &&
        detail::all_finite(t.probs) && detail::all_finite(t.output))
        return;
    detail::check_weight(where, prefix, "query.weight", weights_.query);
    detail::check_weight(where, prefix, "key.weight", weights_.key);
    detail::check_weight(where, prefix, "value.weight", weights_.value);
    detail::check_weight(where, prefix, "out.weight", weights_.out);
    const double x = detail::largest_abs(t.kv_in);
    const double top = static_cast<double>(std::numeric_limits<Scalar>::max());
    if (!(detail::all_finite(t.q) && detail::all_finite(t.k) && detail::all_finite(t.v)))
        detail::fail(where, "the short-term projections X W^T overflowed (largest |x| ", x,
                     "), expected inputs whose products with the weights stay below ", top);
    if (!detail::all_finite(t.probs))
        detail::fail(where,
                     "the short-term attention scores Q K^T / sqrt(d_h) overflowed "
                     "(largest |x| ",
                     x, ", |q| ", detail::largest_abs(t.q), ", |k| ", detail::largest_abs(t.k),
                     "), expected |q| |k| below ", top);
    detail::fail(where, "the short-term output overflowed (largest |x| ", x, ", |context| ",
                 detail::largest_abs(t.context), "), expected smaller inputs");
}

template <typename Scalar_>
void ShortTermAttention<Scalar_>::backward_unchecked(const Trace& t,
                                                     const Eigen::Ref<const Matrix>& dY,
                                                     Work& w) const {
    const Index l = t.x.rows();
    const Index n_kv = t.kv_in.rows();
    const Index dh = head_size();
    const Scalar scale = Scalar(1) / std::sqrt(static_cast<Scalar>(dh));
    w.dcontext.noalias() = dY * weights_.out;
    w.dq.resize(l, d_);
    w.dk.resize(n_kv, d_);
    w.dv.resize(n_kv, d_);
    for (Index h = 0; h < heads_; ++h) {
        const auto a = t.probs.middleRows(h * l, l);
        const auto dc = w.dcontext.middleCols(h * dh, dh);
        w.dprobs.noalias() = dc * t.v.middleCols(h * dh, dh).transpose();
        w.dv.middleCols(h * dh, dh).noalias() = a.transpose() * dc;
        // softmax backward: dS = A ⊙ (dA − rowsum(dA ⊙ A)); masked entries have A = 0
        w.dot.noalias() = w.dprobs.cwiseProduct(a).rowwise().sum();
        w.dprobs = a.cwiseProduct((w.dprobs.colwise() - w.dot));
        w.dq.middleCols(h * dh, dh).noalias() = scale * w.dprobs * t.k.middleCols(h * dh, dh);
        w.dk.middleCols(h * dh, dh).noalias() =
            scale * w.dprobs.transpose() * t.q.middleCols(h * dh, dh);
    }
}

template <typename Scalar_>
void ShortTermAttention<Scalar_>::finish_backward(const Trace& t,
                                                  const Eigen::Ref<const Matrix>& dY, Work& w,
                                                  Eigen::Ref<Matrix> dX) {
    constexpr const char* where = "ShortTermAttention::finish_backward";
    finish_backward_compute(t, dY, w);
    if (!finish_backward_finite(w, grads_))
        explain_backward(
            where, "",
            detail::concat("dY's largest |entry| ", detail::largest_abs(dY),
                           " (the window's largest |entry| ", detail::largest_abs(t.kv_in),
                           ", the queries' gradient's largest |entry| ", detail::largest_abs(w.dq),
                           ")"),
            "dY and a window", w, grads_);
    finish_backward_accumulate(w, grads_);
    dX = w.dx;
}

template <typename Scalar_>
void ShortTermAttention<Scalar_>::finish_backward_compute(const Trace& t,
                                                          const Eigen::Ref<const Matrix>& dY,
                                                          Work& w) const {
    const Index l = t.x.rows();
    w.dgrad.out.noalias() = dY.transpose() * t.context;
    w.dgrad.query.noalias() = w.dq.transpose() * t.x;
    w.dgrad.key.noalias() = w.dk.transpose() * t.kv_in;
    w.dgrad.value.noalias() = w.dv.transpose() * t.kv_in;
    w.dx.noalias() = w.dq * weights_.query;
    w.dx.noalias() += w.dk.bottomRows(l) * weights_.key;
    w.dx.noalias() += w.dv.bottomRows(l) * weights_.value;
}

template <typename Scalar_>
bool ShortTermAttention<Scalar_>::finish_backward_finite(const Work& w, const Weights& into) {
    return detail::sum_finite(into.out, w.dgrad.out) &&
           detail::sum_finite(into.value, w.dgrad.value) &&
           detail::sum_finite(into.key, w.dgrad.key) &&
           detail::sum_finite(into.query, w.dgrad.query) && detail::all_finite(w.dx);
}

template <typename Scalar_>
void ShortTermAttention<Scalar_>::explain_backward(const char* where, const std::string& prefix,
                                                   const std::string& cause,
                                                   const std::string& inputs, const Work& w,
                                                   const Weights& into) {
    detail::check_gradient_sum(where, cause, inputs, prefix, "out.weight", into.out, w.dgrad.out);
    detail::check_gradient_sum(where, cause, inputs, prefix, "value.weight", into.value,
                               w.dgrad.value);
    detail::check_gradient_sum(where, cause, inputs, prefix, "key.weight", into.key, w.dgrad.key);
    detail::check_gradient_sum(where, cause, inputs, prefix, "query.weight", into.query,
                               w.dgrad.query);
    detail::check_backward_result(where, cause, inputs, "dX", w.dx);
    detail::fail(where, "a backward result is not finite (", cause, ")");
}

template <typename Scalar_>
void ShortTermAttention<Scalar_>::finish_backward_accumulate(const Work& w, Weights& into) {
    into.out += w.dgrad.out;
    into.value += w.dgrad.value;
    into.key += w.dgrad.key;
    into.query += w.dgrad.query;
}

template <typename Scalar_>
void ShortTermAttention<Scalar_>::finish_backward_accumulate(const Work& w) {
    finish_backward_accumulate(w, grads_);
}

template <typename Scalar_>
auto ShortTermAttention<Scalar_>::zero_gradients() const -> Weights {
    Weights g;
    for (Matrix* m : {&g.query, &g.key, &g.value, &g.out}) m->setZero(d_, d_);
    return g;
}

template <typename Scalar_>
void ShortTermAttention<Scalar_>::append_parameters(std::vector<Parameter<Scalar>>& out,
                                                    const std::string& prefix, Weights& grads) {
    detail::append_parameter(out, prefix + "query.weight", weights_.query, grads.query);
    detail::append_parameter(out, prefix + "key.weight", weights_.key, grads.key);
    detail::append_parameter(out, prefix + "value.weight", weights_.value, grads.value);
    detail::append_parameter(out, prefix + "out.weight", weights_.out, grads.out);
}

template <typename Scalar_>
void ShortTermAttention<Scalar_>::zero_grad() {
    for (Matrix* m : {&grads_.query, &grads_.key, &grads_.value, &grads_.out}) m->setZero(d_, d_);
}

template <typename Scalar_>
void ShortTermAttention<Scalar_>::append_parameters(std::vector<Parameter<Scalar>>& out,
                                                    const std::string& prefix) {
    append_parameters(out, prefix, grads_);
}

#endif  // INFINITYFORMER_HEADER_ONLY

INFINITYFORMER_EXTERN_TEMPLATE(class, ShortTermAttention)

using ShortTermAttentiond = ShortTermAttention<double>;
using ShortTermAttentionf = ShortTermAttention<float>;

}  // namespace infinityformer
