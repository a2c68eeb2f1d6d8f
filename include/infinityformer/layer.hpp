/// @file layer.hpp
/// @brief The ∞-former attention layer: causal short-term attention over the current and
/// previous chunk plus long-term attention over everything older, summed (∞-former §3).
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "detail/random.hpp"
#include "errors.hpp"
#include "long_term_attention.hpp"
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
        prev_.resize(0, d_);
        pending_.resize(0, d_);
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

    /// Processes the next chunk. @param X L × d, finite. @return L × d.
    /// @throws infinityformer::invalid_argument (state unchanged).
    Matrix forward(const Eigen::Ref<const Matrix>& X) {
        detail::check_matrix("InfinityFormerLayer::forward", "X", X, length_, d_);
        const Index l = length_;
        const Index lp = prev_.rows();
        const Index dh = head_size();
        Matrix q = X * stw_.query.transpose();
        Matrix kv_in(lp + l, d_);
        kv_in.topRows(lp) = prev_;
        kv_in.bottomRows(l) = X;
        const Matrix k = kv_in * stw_.key.transpose();
        const Matrix v = kv_in * stw_.value.transpose();
        Matrix context(l, d_);
        Matrix scores(l, lp + l);
        const Scalar scale = Scalar(1) / std::sqrt(static_cast<Scalar>(dh));
        for (Index h = 0; h < heads_; ++h) {
            scores.noalias() =
                scale * q.middleCols(h * dh, dh) * k.middleCols(h * dh, dh).transpose();
            for (Index i = 0; i < l; ++i) {
                const Index visible = lp + i + 1;  // causal: previous chunk + tokens 0…i
                auto row = scores.row(i);
                const Scalar mx = row.head(visible).maxCoeff();
                row.head(visible) = (row.head(visible).array() - mx).exp();
                row.head(visible) /= row.head(visible).sum();
                row.tail(lp + l - visible).setZero();
            }
            context.middleCols(h * dh, dh).noalias() = scores * v.middleCols(h * dh, dh);
        }
        Matrix y = context * stw_.out.transpose();
        // Nothing below may throw once the memory changes: check what attend() would.
        detail::check_finite("InfinityFormerLayer::forward", "projected queries X W_Q^T", q);
        if (pending_.rows() > 0) ltm_.update(pending_);  // chunk c−2, out of the window
        if (!ltm_.memory().empty()) y += ltm_.attend(q);
        pending_.swap(prev_);  // chunk c−1 leaves the window: stored at the next call
        prev_ = X;
        return y;
    }

    /// Starts a new stream: forgets the short-term window and the long-term memory.
    void reset() {
        prev_.resize(0, d_);
        pending_.resize(0, d_);
        ltm_.reset();
    }

private:
    Index d_;
    Index heads_;
    Index length_;
    LongTermAttention<Scalar> ltm_;
    ShortTermWeights stw_;
    Matrix prev_;     // chunk c−1: the short-term window's past
    Matrix pending_;  // chunk c−2: to be stored in the memory at the next forward()
};

using InfinityFormerLayerd = InfinityFormerLayer<double>;
using InfinityFormerLayerf = InfinityFormerLayer<float>;

}  // namespace infinityformer
