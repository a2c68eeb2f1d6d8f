/// @file long_term_attention.hpp
/// @brief The ∞-former's long-term memory attention: optional gate, unbounded memory and
/// Gaussian continuous attention, as one streaming module (the reference's
/// `long_term_attention`).
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <optional>
#include <type_traits>

#include "continuous_attention.hpp"
#include "errors.hpp"
#include "gate.hpp"
#include "memory.hpp"
#include "params.hpp"

namespace infinityformer {

/// Long-term memory attention of one stream.
///
/// forward(X, Q) for chunk c: (1) optionally gates X (MemoryGate), (2) stores it in the
/// memory (LongTermMemory::update: first-chunk fit, or τ-compressed refit with the old
/// memory read at M points), (3) attends with the queries Q over the new memory
/// (ContinuousAttention), (4) records the queries' densities for the next sticky sampling.
/// The steps are also available apart: update() and attend().
///
/// \tparam Scalar_ float or double.
template <typename Scalar_>
class LongTermAttention {
    static_assert(std::is_floating_point_v<Scalar_>, "LongTermAttention needs float or double");

public:
    using Scalar = Scalar_;
    using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
    using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    using Index = Eigen::Index;

    /// @param dim e, width of memory vectors and queries. @param num_heads H, divides e.
    /// @param chunk_length L, vectors per chunk. @param params hyper-parameters (validated).
    /// @param d_model output width (0 means e).
    LongTermAttention(Index dim, Index num_heads, Index chunk_length,
                      const LongTermParams& params = LongTermParams{}, Index d_model = 0)
        : memory_(dim, chunk_length, params),
          attention_(memory_.basis(), dim, num_heads, d_model, params) {
        if (params.gate) gate_.emplace(dim, params.seed + 1);
    }

    Index dim() const { return memory_.dim(); }
    Index chunk_length() const { return memory_.chunk_length(); }
    Index num_heads() const { return attention_.num_heads(); }
    Index d_model() const { return attention_.d_model(); }
    const LongTermParams& params() const { return memory_.params(); }

    LongTermMemory<Scalar>& memory() { return memory_; }
    const LongTermMemory<Scalar>& memory() const { return memory_; }
    ContinuousAttention<Scalar>& attention() { return attention_; }
    const ContinuousAttention<Scalar>& attention() const { return attention_; }
    bool has_gate() const { return gate_.has_value(); }
    /// @throws infinityformer::logic_error if the module was built without a gate.
    MemoryGate<Scalar>& gate() { return gate_ref("LongTermAttention::gate"); }
    const MemoryGate<Scalar>& gate() const {
        return const_cast<LongTermAttention*>(this)->gate_ref("LongTermAttention::gate");
    }

    /// Gate values and gated vectors of the last update (empty without a gate).
    const Matrix& last_gate() const { return last_gate_; }
    const Matrix& last_gated() const { return last_gated_; }

    /// Stores a chunk X (L × e) in the memory (through the gate if there is one).
    void update(const Eigen::Ref<const Matrix>& X) { update_impl(X, nullptr); }
    /// As update(X), reading the old memory at the given M points (replay, tests).
    void update(const Eigen::Ref<const Matrix>& X, const Eigen::Ref<const Vector>& sample_points) {
        detail::check_matrix("LongTermAttention::update", "sample_points", sample_points,
                             memory_.num_samples(), 1);
        update_impl(X, &sample_points);
    }

    /// Attention of queries Q (q × e) over the memory; returns q × d_model and records the
    /// densities for the next sticky sampling.
    /// @throws infinityformer::logic_error if nothing has been stored yet.
    Matrix attend(const Eigen::Ref<const Matrix>& queries) {
        if (memory_.empty())
            throw infinityformer::logic_error(
                "[infinityformer] LongTermAttention::attend: the memory is empty, expected at "
                "least one update() before attend()");
        Matrix out = attention_.forward(memory_.coefficients(), queries);
        memory_.observe(attention_.last().mu, attention_.last().sigma_sq);
        return out;
    }

    /// update(X) then attend(queries).
    Matrix forward(const Eigen::Ref<const Matrix>& X, const Eigen::Ref<const Matrix>& queries) {
        check_queries("LongTermAttention::forward", queries);
        update(X);
        return attend(queries);
    }
    /// update(X, sample_points) then attend(queries).
    Matrix forward(const Eigen::Ref<const Matrix>& X, const Eigen::Ref<const Matrix>& queries,
                   const Eigen::Ref<const Vector>& sample_points) {
        check_queries("LongTermAttention::forward", queries);
        update(X, sample_points);
        return attend(queries);
    }

    /// Forgets the memory (a new document); weights are kept.
    void reset() {
        memory_.reset();
        last_gate_.resize(0, dim());
        last_gated_.resize(0, dim());
    }

private:
    MemoryGate<Scalar>& gate_ref(const char* where) {
        if (!gate_)
            throw infinityformer::logic_error(
                detail::concat("[infinityformer] ", where,
                               ": this module has no gate, expected params.gate = true"));
        return *gate_;
    }

    void check_queries(const char* where, const Eigen::Ref<const Matrix>& queries) const {
        detail::require(queries.rows() >= 1, where, "queries has 0 rows, expected at least 1");
        detail::require(queries.cols() == dim(), where, "queries has ", queries.cols(),
                        " cols, expected ", dim());
        detail::check_finite(where, "queries", queries);
    }

    void update_impl(const Eigen::Ref<const Matrix>& X, const Eigen::Ref<const Vector>* points) {
        detail::check_matrix("LongTermAttention::update", "X", X, chunk_length(), dim());
        if (gate_) {
            last_gate_.resize(X.rows(), dim());
            last_gated_.resize(X.rows(), dim());
            gate_->forward(X, last_gate_, last_gated_);
            if (points)
                memory_.update(last_gated_, *points);
            else
                memory_.update(last_gated_);
        } else {
            if (points)
                memory_.update(X, *points);
            else
                memory_.update(X);
        }
    }

    LongTermMemory<Scalar> memory_;
    ContinuousAttention<Scalar> attention_;
    std::optional<MemoryGate<Scalar>> gate_;
    Matrix last_gate_;
    Matrix last_gated_;
};

using LongTermAttentiond = LongTermAttention<double>;
using LongTermAttentionf = LongTermAttention<float>;

}  // namespace infinityformer
