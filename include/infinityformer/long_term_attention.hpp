/// @file long_term_attention.hpp
/// @brief The ∞-former's long-term memory attention: optional gate, unbounded memory and
/// Gaussian continuous attention, as one streaming module (the reference's
/// `long_term_attention`), with its backward pass.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "continuous_attention.hpp"
#include "errors.hpp"
#include "gate.hpp"
#include "memory.hpp"
#include "parameters.hpp"
#include "params.hpp"

namespace infinityformer {

/// Long-term memory attention over one or more independent streams that share weights.
///
/// forward(X, Q) for chunk c: (1) optionally gates X (MemoryGate), (2) stores it in the
/// memory (LongTermMemory::update: first-chunk fit, or τ-compressed refit with the old
/// memory read at M points), (3) attends with the queries Q over the new memory
/// (ContinuousAttention), (4) records the queries' densities for the next sticky sampling.
/// The steps are also available apart: update() and attend().
///
/// backward(dout) differentiates the last attend() of a stream (refused once an update()
/// has followed it), for the loss
/// ℓ = Σ output ⊙ dout + kl_weight · Σ KL: the weights' gradients accumulate (over calls,
/// chunks and streams, until zero_grad()), ∂ℓ/∂Q is returned, and, if an update() preceded
/// that attend(), ∂ℓ/∂X of the chunk stored by it, through the fit and the gate. The memory
/// of earlier chunks is a constant (truncated back-propagation, as the authors train).
///
/// Streams (set_num_streams()) each have their own memory, sampling generator (seeded with
/// params.seed + stream index) and forward trace; every method takes the stream's index
/// last (default 0).
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
        : attention_(GaussianBasis<Scalar>::default_family(
                         validated(params, dim, chunk_length).num_basis, params.widths),
                     dim, num_heads, d_model, params) {
        streams_.emplace_back(dim, chunk_length, params);
        if (params.gate) gate_.emplace(dim, params.seed + 1);
        zero_grad();
    }

    Index dim() const { return attention_.dim(); }
    Index chunk_length() const { return streams_.front().memory.chunk_length(); }
    Index num_heads() const { return attention_.num_heads(); }
    Index d_model() const { return attention_.d_model(); }
    const LongTermParams& params() const { return streams_.front().memory.params(); }

    /// Number of independent streams (default 1).
    Index num_streams() const { return static_cast<Index>(streams_.size()); }
    /// Adds or removes streams; new streams start empty, existing ones keep their state.
    void set_num_streams(Index n) {
        detail::require(n >= 1, "LongTermAttention::set_num_streams", "n is ", n,
                        ", expected >= 1");
        const LongTermParams p = params();
        const Index l = chunk_length();
        while (num_streams() > n) streams_.pop_back();
        while (num_streams() < n) {
            LongTermParams ps = p;
            ps.seed = p.seed + static_cast<std::uint64_t>(num_streams());
            streams_.emplace_back(dim(), l, ps);
        }
    }

    LongTermMemory<Scalar>& memory(Index stream = 0) {
        return state("LongTermAttention::memory", stream).memory;
    }
    const LongTermMemory<Scalar>& memory(Index stream = 0) const {
        return const_cast<LongTermAttention*>(this)->memory(stream);
    }
    ContinuousAttention<Scalar>& attention() { return attention_; }
    const ContinuousAttention<Scalar>& attention() const { return attention_; }
    /// The last attend()'s intermediate values for a stream.
    const typename ContinuousAttention<Scalar>::Trace& last_attention(Index stream = 0) const {
        return const_cast<LongTermAttention*>(this)
            ->state("LongTermAttention::last_attention", stream)
            .trace;
    }
    bool has_gate() const { return gate_.has_value(); }
    /// @throws infinityformer::logic_error if the module was built without a gate.
    MemoryGate<Scalar>& gate() { return gate_ref("LongTermAttention::gate"); }
    const MemoryGate<Scalar>& gate() const {
        return const_cast<LongTermAttention*>(this)->gate_ref("LongTermAttention::gate");
    }

    /// Gate values and gated vectors of the stream's last update (empty without a gate).
    const Matrix& last_gate(Index stream = 0) const {
        return const_cast<LongTermAttention*>(this)
            ->state("LongTermAttention::last_gate", stream)
            .gate;
    }
    const Matrix& last_gated(Index stream = 0) const {
        return const_cast<LongTermAttention*>(this)
            ->state("LongTermAttention::last_gated", stream)
            .gated;
    }

    /// Stores a chunk X (L × e) in the stream's memory (through the gate if there is one).
    void update(const Eigen::Ref<const Matrix>& X, Index stream = 0) {
        update_impl(X, nullptr, stream);
    }
    /// As update(X), reading the old memory at the given M points (replay, tests).
    void update(const Eigen::Ref<const Matrix>& X, const Eigen::Ref<const Vector>& sample_points,
                Index stream = 0) {
        detail::check_matrix("LongTermAttention::update", "sample_points", sample_points,
                             params().num_samples, 1);
        update_impl(X, &sample_points, stream);
    }

    /// Attention of queries Q (q × e) over the stream's memory; returns q × d_model and
    /// records the densities for the next sticky sampling.
    /// @throws infinityformer::logic_error if nothing has been stored yet.
    Matrix attend(const Eigen::Ref<const Matrix>& queries, Index stream = 0) {
        return attend_impl(queries, stream).output;
    }
    /// attend() into caller storage (q × d_model); no allocation in a steady stream.
    void attend(const Eigen::Ref<const Matrix>& queries, Eigen::Ref<Matrix> out, Index stream = 0) {
        detail::check_shape("LongTermAttention::attend", "out", out, queries.rows(), d_model());
        out = attend_impl(queries, stream).output;
    }

    /// update(X) then attend(queries).
    Matrix forward(const Eigen::Ref<const Matrix>& X, const Eigen::Ref<const Matrix>& queries,
                   Index stream = 0) {
        check_queries("LongTermAttention::forward", queries);
        update(X, stream);
        return attend(queries, stream);
    }
    /// update(X, sample_points) then attend(queries).
    Matrix forward(const Eigen::Ref<const Matrix>& X, const Eigen::Ref<const Matrix>& queries,
                   const Eigen::Ref<const Vector>& sample_points, Index stream = 0) {
        check_queries("LongTermAttention::forward", queries);
        update(X, sample_points, stream);
        return attend(queries, stream);
    }

    /// Backward of the stream's last attend() (and of the update just before it, if any).
    /// @param dout q × d_model, ∂ℓ/∂output. @param kl_weight ≥ 0, weight of Σ KL in ℓ.
    /// @param dqueries q × e, receives ∂ℓ/∂Q.
    /// @param dX L × e, receives ∂ℓ/∂X of the chunk stored by that update (zeros if the
    ///        attend() read a memory no update of this step had changed).
    /// @throws infinityformer::logic_error without an attend(); invalid_argument on shapes.
    void backward(const Eigen::Ref<const Matrix>& dout, Scalar kl_weight,
                  Eigen::Ref<Matrix> dqueries, Eigen::Ref<Matrix> dX, Index stream = 0) {
        constexpr const char* where = "LongTermAttention::backward";
        Stream& s = state(where, stream);
        if (!s.differentiable)
            throw infinityformer::logic_error(detail::concat(
                "[infinityformer] ", where,
                s.trace.queries.rows() == 0
                    ? ": no attend() to differentiate, expected a forward() or attend() first"
                    : ": the memory changed (update()) since the last attend(), expected "
                      "backward() before the next update()"));
        const Index nq = s.trace.queries.rows();
        detail::check_matrix(where, "dout", dout, nq, d_model());
        detail::check_kl_weight(where, kl_weight);
        detail::check_shape(where, "dqueries", dqueries, nq, dim());
        detail::check_shape(where, "dX", dX, chunk_length(), dim());
        s.dB.resize(attention_.num_basis(), dim());
        s.dgated.resize(chunk_length(), dim());
        attention_.backward_unchecked(s.trace, dout, kl_weight, dqueries, s.dB);
        if (!s.attended_update) {
            dX.setZero();
            return;
        }
        if (gate_) {
            s.memory.backward_unchecked(s.dB, s.dgated);
            gate_->backward_unchecked(s.input, s.gate, s.dgated, dX);
        } else {
            s.memory.backward_unchecked(s.dB, dX);
        }
    }

    /// ∂ℓ/∂B, ∂ℓ/∂X̃ (the gated chunk), ∂ℓ/∂μ, ∂ℓ/∂σ² of the stream's last backward().
    const Matrix& last_grad_B(Index stream = 0) const {
        return const_cast<LongTermAttention*>(this)
            ->state("LongTermAttention::last_grad_B", stream)
            .dB;
    }
    const Matrix& last_grad_gated(Index stream = 0) const {
        return const_cast<LongTermAttention*>(this)
            ->state("LongTermAttention::last_grad_gated", stream)
            .dgated;
    }
    const Vector& last_grad_mu() const { return attention_.last_grad_mu(); }
    const Vector& last_grad_sigma_sq() const { return attention_.last_grad_sigma_sq(); }

    /// Sets every accumulated gradient to zero.
    void zero_grad() {
        attention_.zero_grad();
        if (gate_) gate_->zero_grad();
    }

    /// Named weights with their gradients, for optimisers (names as the reference's
    /// state_dict(), the gate's weight split by tap): proj_key.weight, proj_value.weight,
    /// attn_out.weight, mu.weight, sigma.weight[, mask_net.weight.0/1/2, mask_net.bias].
    std::vector<Parameter<Scalar>> parameters(const std::string& prefix = "") {
        std::vector<Parameter<Scalar>> out;
        attention_.append_parameters(out, prefix);
        if (gate_) gate_->append_parameters(out, prefix + "mask_net.");
        return out;
    }

    /// Forgets the stream's memory (a new document); weights are kept.
    void reset(Index stream = 0) {
        Stream& s = state("LongTermAttention::reset", stream);
        s.memory.reset();
        s.gate.resize(0, dim());
        s.gated.resize(0, dim());
        s.updated = s.attended_update = s.differentiable = false;
        s.trace = typename ContinuousAttention<Scalar>::Trace{};
    }

private:
    struct Stream {
        Stream(Index dim, Index length, const LongTermParams& p) : memory(dim, length, p) {}
        LongTermMemory<Scalar> memory;
        Matrix input, gate, gated;     // last update: raw chunk, g, g ⊙ X (gate only)
        bool updated = false;          // an update since the last attend
        bool attended_update = false;  // the last attend read a memory updated just before
        bool differentiable = false;   // an attend() and no update() since
        typename ContinuousAttention<Scalar>::Trace trace;
        Matrix dB, dgated;  // backward work
    };

    static const LongTermParams& validated(const LongTermParams& p, Index dim, Index length) {
        constexpr const char* where = "LongTermAttention::LongTermAttention";
        p.validate();
        detail::require(dim >= 1, where, "dim is ", dim, ", expected >= 1");
        detail::require(length >= 1, where, "chunk_length is ", length, ", expected >= 1");
        return p;
    }

    Stream& state(const char* where, Index stream) {
        detail::require(stream >= 0 && stream < num_streams(), where, "stream is ", stream,
                        ", expected 0 <= stream < ", num_streams());
        return streams_[static_cast<std::size_t>(stream)];
    }

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

    const typename ContinuousAttention<Scalar>::Trace& attend_impl(
        const Eigen::Ref<const Matrix>& queries, Index stream) {
        constexpr const char* where = "LongTermAttention::attend";
        Stream& s = state(where, stream);
        if (s.memory.empty())
            throw infinityformer::logic_error(detail::concat(
                "[infinityformer] ", where,
                ": the memory is empty, expected at least one update() before attend()"));
        check_queries(where, queries);
        attention_.forward_unchecked(s.memory.coefficients(), queries, s.trace);
        s.memory.observe(s.trace.mu, s.trace.sigma_sq);
        s.attended_update = s.updated;
        s.updated = false;
        s.differentiable = true;
        return s.trace;
    }

    void update_impl(const Eigen::Ref<const Matrix>& X, const Eigen::Ref<const Vector>* points,
                     Index stream) {
        constexpr const char* where = "LongTermAttention::update";
        Stream& s = state(where, stream);
        detail::check_matrix(where, "X", X, chunk_length(), dim());
        if (gate_) {
            s.input = X;
            s.gate.resize(X.rows(), dim());
            s.gated.resize(X.rows(), dim());
            gate_->forward(X, s.gate, s.gated);
            if (points)
                s.memory.update(s.gated, *points);
            else
                s.memory.update(s.gated);
        } else {
            if (points)
                s.memory.update(X, *points);
            else
                s.memory.update(X);
        }
        s.updated = true;
        s.differentiable = false;  // the last attend()'s fit and gate state are gone
    }

    ContinuousAttention<Scalar> attention_;
    std::optional<MemoryGate<Scalar>> gate_;
    std::vector<Stream> streams_;
};

using LongTermAttentiond = LongTermAttention<double>;
using LongTermAttentionf = LongTermAttention<float>;

}  // namespace infinityformer
