/// @file layer.hpp
/// @brief The ∞-former attention layer: causal short-term attention over the current and
/// previous chunk plus long-term attention over everything older, summed (∞-former §3).
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "detail/random.hpp"
#include "errors.hpp"
#include "long_term_attention.hpp"
#include "parameters.hpp"
#include "params.hpp"

namespace infinityformer {

/// Streaming ∞-former attention layer of width d with H heads and chunks of L tokens.
///
/// forward(X) for chunk c (L × d, tokens as rows) returns Y (L × d):
///   Q = X W_Qᵀ;  K, V = [X_{c−1}; X] W_{K,V}ᵀ
///   short-term: per head, softmax(Q_h K_hᵀ/√d_h + causal mask) V_h, heads concatenated, W_Oᵀ
///     (token i of chunk c sees all of chunk c−1 and tokens 0…i of chunk c);
///   long-term:  LongTermAttention over the memory of chunks 0…c−2, with the short-term
///     attention's projected queries Q (as the authors do), output width d;
///   Y = short-term + long-term.
/// After the call, chunk c−1 has left the short-term window; it is stored in the long-term
/// memory (through the gate if params.gate) at the start of the next forward(), just before
/// the long-term attention that first reads it, so every token is seen by exactly one of the
/// two attentions and the gate and the fit belong to the chunk whose output they affect (as
/// in the reference, where the layer receives the previous segment's states and updates
/// its memory before attending). Cost per chunk: O(L²d + L·N·d + N·d²) whatever the length
/// of the stream.
///
/// \tparam Scalar_ float or double.
template <typename Scalar_>
class InfinityFormerLayer {
    static_assert(std::is_floating_point_v<Scalar_>, "InfinityFormerLayer needs float or double");

public:
    using Scalar = Scalar_;
    using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
    using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    using Index = Eigen::Index;

    /// Short-term attention weights (y = W x, all d × d, no biases).
    struct ShortTermWeights {
        Matrix query, key, value, out;
    };

    /// @param d_model d ≥ 1. @param num_heads H, divides d. @param chunk_length L ≥ 1.
    /// @param params long-term memory hyper-parameters (validated); params.seed also seeds
    ///        the initial weights.
    InfinityFormerLayer(Index d_model, Index num_heads, Index chunk_length,
                        const LongTermParams& params = LongTermParams{})
        : d_(d_model),
          heads_(num_heads),
          length_(chunk_length),
          ltm_(d_model, num_heads, chunk_length, params, d_model) {
        init_short_term_weights(params.seed + 2);
        streams_.resize(1);
        zero_short_term_grad();
    }

    Index d_model() const { return d_; }
    Index num_heads() const { return heads_; }
    Index head_size() const { return d_ / heads_; }
    Index chunk_length() const { return length_; }

    LongTermAttention<Scalar>& long_term() { return ltm_; }
    const LongTermAttention<Scalar>& long_term() const { return ltm_; }
    const ShortTermWeights& short_term_weights() const { return stw_; }

    /// @throws infinityformer::invalid_argument on a wrong shape or non-finite entry.
    void set_short_term_weights(const ShortTermWeights& w) {
        constexpr const char* where = "InfinityFormerLayer::set_short_term_weights";
        detail::check_matrix(where, "query", w.query, d_, d_);
        detail::check_matrix(where, "key", w.key, d_, d_);
        detail::check_matrix(where, "value", w.value, d_, d_);
        detail::check_matrix(where, "out", w.out, d_, d_);
        stw_ = w;
    }

    /// nn.Linear's initialisation U(±1/√d) from a seeded generator.
    void init_short_term_weights(std::uint64_t seed) {
        detail::Random rng(seed);
        const double bound = 1.0 / std::sqrt(static_cast<double>(d_));
        ShortTermWeights w;
        for (Matrix* m : {&w.query, &w.key, &w.value, &w.out}) {
            m->resize(d_, d_);
            detail::fill_uniform(*m, bound, rng);
        }
        stw_ = std::move(w);
    }

    /// Number of independent streams (default 1); see LongTermAttention::set_num_streams().
    Index num_streams() const { return static_cast<Index>(streams_.size()); }
    /// Adds or removes streams; new streams start empty, existing ones keep their state.
    void set_num_streams(Index n) {
        ltm_.set_num_streams(n);  // checks n
        streams_.resize(static_cast<std::size_t>(n));
    }

    /// Processes the next chunk of a stream. @param X L × d, finite. @return L × d.
    /// @throws infinityformer::invalid_argument (state unchanged).
    Matrix forward(const Eigen::Ref<const Matrix>& X, Index stream = 0) {
        Matrix Y(length_, d_);
        forward(X, Y, stream);
        return Y;
    }

    /// forward() into caller storage Y (L × d): no allocation once the stream is in its
    /// steady state (from its fourth chunk on).
    void forward(const Eigen::Ref<const Matrix>& X, Eigen::Ref<Matrix> Y, Index stream = 0) {
        constexpr const char* where = "InfinityFormerLayer::forward";
        Stream& s = state(where, stream);
        detail::check_matrix(where, "X", X, length_, d_);
        detail::check_shape(where, "Y", Y, length_, d_);
        const Index l = length_;
        const Index lp = s.prev.rows();
        const Index dh = head_size();
        // Checked before anything of the stream changes: the queries the long-term
        // attention will read (X is finite, but X W_Qᵀ may overflow).
        s.q_next.noalias() = X * stw_.query.transpose();
        detail::check_finite(where, "projected queries X W_Q^T", s.q_next);
        s.q.swap(s.q_next);
        s.x = X;
        s.kv_in.resize(lp + l, d_);
        if (lp > 0) s.kv_in.topRows(lp) = s.prev;
        s.kv_in.bottomRows(l) = X;
        s.k.noalias() = s.kv_in * stw_.key.transpose();
        s.v.noalias() = s.kv_in * stw_.value.transpose();
        s.context.resize(l, d_);
        s.probs.resize(heads_ * l, lp + l);
        const Scalar scale = Scalar(1) / std::sqrt(static_cast<Scalar>(dh));
        for (Index h = 0; h < heads_; ++h) {
            auto a = s.probs.middleRows(h * l, l);
            a.noalias() =
                scale * s.q.middleCols(h * dh, dh) * s.k.middleCols(h * dh, dh).transpose();
            for (Index i = 0; i < l; ++i) {
                const Index visible = lp + i + 1;  // causal: previous chunk + tokens 0…i
                auto row = a.row(i);
                const Scalar mx = row.head(visible).maxCoeff();
                row.head(visible) = (row.head(visible).array() - mx).exp();
                row.head(visible) /= row.head(visible).sum();
                row.tail(lp + l - visible).setZero();
            }
            s.context.middleCols(h * dh, dh).noalias() = a * s.v.middleCols(h * dh, dh);
        }
        if (s.pending.rows() > 0) ltm_.update(s.pending, stream);  // chunk c−2
        s.long_term = !ltm_.memory(stream).empty();
        if (s.long_term) {
            s.y_long.resize(length_, d_);
            ltm_.attend(s.q, s.y_long, stream);
        }
        Y.noalias() = s.context * stw_.out.transpose();
        if (s.long_term) Y += s.y_long;
        s.pending.swap(s.prev);  // chunk c−1 leaves the window: stored at the next call
        s.prev = s.x;            // (not X: Y may alias it)
        s.has_trace = true;
    }

    /// Backward of the stream's last forward() for ℓ = Σ Y ⊙ dY + kl_weight · Σ KL (the
    /// long-term attention's regulariser): accumulates the gradients of every weight
    /// (short-term, long-term, gate) and returns ∂ℓ/∂X of that chunk.
    ///
    /// Truncated back-propagation, as the authors train: the previous chunk in the
    /// short-term window and the memory of older chunks are constants. The chunk stored in
    /// the memory during this forward() (chunk c−2) gives gradients to the gate's weights
    /// through the fit, but not to chunk c−2's inputs.
    /// @param dY L × d. @param kl_weight ≥ 0. @param dX L × d, receives ∂ℓ/∂X.
    /// @throws infinityformer::logic_error without a forward(); invalid_argument on shapes.
    void backward(const Eigen::Ref<const Matrix>& dY, Scalar kl_weight, Eigen::Ref<Matrix> dX,
                  Index stream = 0) {
        constexpr const char* where = "InfinityFormerLayer::backward";
        Stream& s = state(where, stream);
        if (!s.has_trace)
            throw infinityformer::logic_error(detail::concat(
                "[infinityformer] ", where,
                ": no forward() to differentiate, expected a call to forward() first"));
        detail::check_matrix(where, "dY", dY, length_, d_);
        detail::check_kl_weight(where, kl_weight);
        detail::check_shape(where, "dX", dX, length_, d_);
        if (grads_.query.rows() != d_) zero_short_term_grad();
        const Index l = length_;
        const Index n_kv = s.kv_in.rows();
        const Index dh = head_size();
        const Scalar scale = Scalar(1) / std::sqrt(static_cast<Scalar>(dh));
        grads_.out.noalias() += dY.transpose() * s.context;
        s.dcontext.noalias() = dY * stw_.out;
        s.dq.resize(l, d_);
        s.dk.resize(n_kv, d_);
        s.dv.resize(n_kv, d_);
        for (Index h = 0; h < heads_; ++h) {
            const auto a = s.probs.middleRows(h * l, l);
            const auto dc = s.dcontext.middleCols(h * dh, dh);
            s.dprobs.noalias() = dc * s.v.middleCols(h * dh, dh).transpose();
            s.dv.middleCols(h * dh, dh).noalias() = a.transpose() * dc;
            // softmax backward: dS = A ⊙ (dA − rowsum(dA ⊙ A)); masked entries have A = 0
            s.dot.noalias() = s.dprobs.cwiseProduct(a).rowwise().sum();
            s.dprobs = a.cwiseProduct((s.dprobs.colwise() - s.dot));
            s.dq.middleCols(h * dh, dh).noalias() = scale * s.dprobs * s.k.middleCols(h * dh, dh);
            s.dk.middleCols(h * dh, dh).noalias() =
                scale * s.dprobs.transpose() * s.q.middleCols(h * dh, dh);
        }
        if (s.long_term) {
            s.dq_long.resize(l, d_);
            s.dx_stored.resize(l, d_);
            ltm_.backward(dY, kl_weight, s.dq_long, s.dx_stored, stream);
            s.dq += s.dq_long;  // chunk c−2's own gradient (s.dx_stored) is not propagated
        }
        grads_.query.noalias() += s.dq.transpose() * s.x;
        grads_.key.noalias() += s.dk.transpose() * s.kv_in;
        grads_.value.noalias() += s.dv.transpose() * s.kv_in;
        dX.noalias() = s.dq * stw_.query;
        dX.noalias() += s.dk.bottomRows(l) * stw_.key;
        dX.noalias() += s.dv.bottomRows(l) * stw_.value;
    }

    /// Short-term gradients accumulated by backward() (layout of ShortTermWeights).
    const ShortTermWeights& short_term_gradients() const { return grads_; }

    /// Sets every accumulated gradient (short-term, long-term, gate) to zero.
    void zero_grad() {
        zero_short_term_grad();
        ltm_.zero_grad();
    }

    /// Named weights with their gradients: short_term.{query,key,value,out}.weight and
    /// long_term.* (LongTermAttention::parameters()).
    std::vector<Parameter<Scalar>> parameters() {
        if (grads_.query.rows() != d_) zero_short_term_grad();
        std::vector<Parameter<Scalar>> out;
        detail::append_parameter(out, "short_term.query.weight", stw_.query, grads_.query);
        detail::append_parameter(out, "short_term.key.weight", stw_.key, grads_.key);
        detail::append_parameter(out, "short_term.value.weight", stw_.value, grads_.value);
        detail::append_parameter(out, "short_term.out.weight", stw_.out, grads_.out);
        for (auto& p : ltm_.parameters("long_term.")) out.push_back(std::move(p));
        return out;
    }

    /// Starts a new document on a stream: forgets its window and its long-term memory.
    void reset(Index stream = 0) {
        Stream& s = state("InfinityFormerLayer::reset", stream);
        s = Stream{};
        ltm_.reset(stream);
    }

private:
    struct Stream {
        Matrix prev;     // chunk c−1: the short-term window's past
        Matrix pending;  // chunk c−2: to be stored in the memory at the next forward()
        // forward trace
        Matrix x, q, kv_in, k, v, probs, context;
        Matrix q_next;  // the next queries, checked before the trace changes
        bool long_term = false;
        bool has_trace = false;
        // backward work
        Matrix y_long;
        Matrix dcontext, dprobs, dq, dk, dv, dq_long, dx_stored;
        Vector dot;
    };

    Stream& state(const char* where, Index stream) {
        detail::require(stream >= 0 && stream < num_streams(), where, "stream is ", stream,
                        ", expected 0 <= stream < ", num_streams());
        return streams_[static_cast<std::size_t>(stream)];
    }

    void zero_short_term_grad() {
        for (Matrix* m : {&grads_.query, &grads_.key, &grads_.value, &grads_.out})
            m->setZero(d_, d_);
    }

    Index d_;
    Index heads_;
    Index length_;
    LongTermAttention<Scalar> ltm_;
    ShortTermWeights stw_;
    ShortTermWeights grads_;
    std::vector<Stream> streams_;
};

using InfinityFormerLayerd = InfinityFormerLayer<double>;
using InfinityFormerLayerf = InfinityFormerLayer<float>;

}  // namespace infinityformer
