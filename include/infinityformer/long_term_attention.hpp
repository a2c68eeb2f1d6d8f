/// @file long_term_attention.hpp
/// @brief The ∞-former's long-term memory attention: optional gate, unbounded memory and
/// Gaussian continuous attention, as one streaming module over independent streams (the
/// reference's `long_term_attention`), with its backward pass.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/config.hpp"
#include "detail/streams.hpp"
#include "errors.hpp"
#include "hyperparams.hpp"
#include "long_term_engine.hpp"
#include "parameter_view.hpp"

namespace infinityformer {

/// Long-term memory attention over one or more independent streams that share weights.
///
/// forward(X, Q) for chunk c: (1) optionally gates X (MemoryGate), (2) stores it in the
/// memory (LongTermMemory::update: first-chunk fit, or τ-compressed refit with the old
/// memory read at M points), (3) attends with the queries Q over the new memory
/// (ContinuousAttention), (4) records the queries' densities for the next sticky sampling.
/// The steps are also available apart: update() and attend(). Every call computes aside
/// and keeps the result only once it is complete and finite: a call that throws leaves
/// the stream, the weights and the gradients as they were.
///
/// backward(dout) differentiates the last attend() of a stream, once (refused once an
/// update() has followed it, or once a backward() has consumed it), for the loss
/// ℓ = Σ output ⊙ dout + kl_weight · Σ KL: the weights' gradients accumulate (over calls,
/// chunks and streams, until zero_grad()), ∂ℓ/∂Q is returned, and, if an update() preceded
/// that attend(), ∂ℓ/∂X of the chunk stored by it, through the fit and the gate. The memory
/// of earlier chunks is a constant (truncated back-propagation, as the authors train).
///
/// Streams (set_num_streams()) each have their own state (LongTermStream: memory, sampling
/// generator seeded for the stream, gate inputs, trace, phase, last backward's results);
/// every method takes the stream's index last (default 0). The module is a LongTermEngine
/// (the weights and the steps) and the streams it acts on; a composite module holds its
/// own engine and streams (InfinityFormerLayer).
///
/// \tparam Scalar_ float or double.
template <typename Scalar_>
class LongTermAttention : public detail::LongTermStreamReader<Scalar_, LongTermAttention<Scalar_>> {
    static_assert(std::is_floating_point_v<Scalar_>, "LongTermAttention needs float or double");
    static_assert(detail::instantiable_scalar<Scalar_>(),
                  "infinityformer::compiled holds LongTermAttention<float> and <double> only");
    friend class detail::LongTermStreamReader<Scalar_, LongTermAttention<Scalar_>>;

public:
    using Scalar = Scalar_;
    using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
    using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    using Index = Eigen::Index;
    using Engine = LongTermEngine<Scalar>;
    using StreamState = LongTermStream<Scalar>;
    using Trace = typename ContinuousAttention<Scalar>::Trace;

    /// @param dim e, width of memory vectors and queries. @param num_heads H, divides e.
    /// @param chunk_length L, vectors per chunk. @param params hyper-parameters (validated).
    /// @param d_model output width (0 means e).
    LongTermAttention(Index dim, Index num_heads, Index chunk_length,
                      const LongTermParams& params = LongTermParams{}, Index d_model = 0);

    Index dim() const { return engine_.dim(); }
    Index chunk_length() const { return engine_.chunk_length(); }
    Index num_heads() const { return engine_.num_heads(); }
    Index d_model() const { return engine_.d_model(); }
    const LongTermParams& params() const { return engine_.params(); }
    /// The weights and the steps (read-only).
    const Engine& engine() const { return engine_; }

    /// Adds or removes streams; new streams start empty, existing ones keep their state.
    /// @throws infinityformer::invalid_argument if n < 1 or the streams would not fit in
    ///         the machine's memory (nothing changed).
    void set_num_streams(Index n);

    /// Bytes of one stream's state and workspace once it has been through forwards and
    /// backwards with chunk-sized queries (L of them), the stream object included, at most:
    /// set_num_streams() refuses a count whose streams would not fit in the machine's memory.
    double stream_bytes() const {
        return Engine::stream_bytes_for(dim(), num_heads(), chunk_length(), d_model(), params());
    }
    /// stream_bytes() of a module of these sizes.
    static double stream_bytes_for(Index dim, Index num_heads, Index chunk_length, Index d_model,
                                   const LongTermParams& p) {
        return Engine::stream_bytes_for(dim, num_heads, chunk_length, d_model, p);
    }

    /// The continuous attention (read-only; set its weights with set_attention_weights()).
    const ContinuousAttention<Scalar>& attention() const { return engine_.attention(); }
    /// @throws infinityformer::invalid_argument (weights unchanged).
    void set_attention_weights(const typename ContinuousAttention<Scalar>::Weights& w);
    bool has_gate() const { return engine_.has_gate(); }
    /// The gate (read-only; set its weights with set_gate_weights()).
    /// @throws infinityformer::logic_error if the module was built without a gate.
    const MemoryGate<Scalar>& gate() const { return engine_.gate(); }
    /// @throws infinityformer::logic_error without a gate; invalid_argument on bad weights.
    void set_gate_weights(const typename MemoryGate<Scalar>::Weights& w);

    /// Restarts the stream's sticky-sampling generator as params.seed = `seed` would have it.
    void seed_stream(std::uint64_t seed, Index stream = 0);

    /// Replaces a stream's state by `s` (a saved stream restored by
    /// <infinityformer/io/state.hpp>, or a copy of another stream's stream_state()): what
    /// the next calls read is taken, the memory with its generator, and for the phase
    /// `updated` (an update() not yet attended) the gate's inputs and outputs of that update.
    /// The attention trace is not: the phase becomes idle unless it is `updated`, so the
    /// last attend() before the state was taken cannot be differentiated afterwards. The
    /// memory becomes stream `stream`'s: a reset() restarts its generator as this stream's.
    /// @throws infinityformer::invalid_argument if the memory's configuration is not this
    ///         module's, or the phase or gate fields are inconsistent (stream unchanged).
    void set_stream_state(StreamState s, Index stream = 0);

    /// Stores a chunk X (L × e) in the stream's memory (through the gate if there is one).
    void update(const Eigen::Ref<const Matrix>& X, Index stream = 0);
    /// As update(X), reading the old memory at the given M points (replay, tests).
    void update(const Eigen::Ref<const Matrix>& X, const Eigen::Ref<const Vector>& sample_points,
                Index stream = 0);

    /// Attention of queries Q (q × e) over the stream's memory; returns q × d_model and
    /// records the densities for the next sticky sampling.
    /// @throws infinityformer::logic_error if nothing has been stored yet.
    Matrix attend(const Eigen::Ref<const Matrix>& queries, Index stream = 0);
    /// attend() into caller storage (q × d_model); no allocation in a steady stream.
    void attend(const Eigen::Ref<const Matrix>& queries, Eigen::Ref<Matrix> out, Index stream = 0);

    /// update(X) then attend(queries), as one call: all or nothing.
    Matrix forward(const Eigen::Ref<const Matrix>& X, const Eigen::Ref<const Matrix>& queries,
                   Index stream = 0);
    /// update(X, sample_points) then attend(queries).
    Matrix forward(const Eigen::Ref<const Matrix>& X, const Eigen::Ref<const Matrix>& queries,
                   const Eigen::Ref<const Vector>& sample_points, Index stream = 0);

    /// Backward of the stream's last attend() (and of the update just before it, if any),
    /// once: the backward that succeeds consumes the attend()'s trace (a second one would
    /// add the gradients again).
    /// @param dout q × d_model, ∂ℓ/∂output. @param kl_weight ≥ 0, weight of Σ KL in ℓ.
    /// @param dqueries q × e, receives ∂ℓ/∂Q.
    /// @param dX L × e, receives ∂ℓ/∂X of the chunk stored by that update (zeros if the
    ///        attend() read a memory no update of this step had changed).
    /// @throws infinityformer::logic_error without an attend() to differentiate (none, an
    ///         update() since, or consumed); invalid_argument on shapes, non-finite input or
    ///         a result that overflowed (nothing changed: no gradient, no output, the trace
    ///         still differentiable).
    void backward(const Eigen::Ref<const Matrix>& dout, Scalar kl_weight,
                  Eigen::Ref<Matrix> dqueries, Eigen::Ref<Matrix> dX, Index stream = 0);

    /// Sets every accumulated gradient to zero.
    void zero_grad();

    /// Named weights with their gradients, for optimisers (names as the reference's
    /// state_dict(), the gate's weight split by tap): proj_key.weight, proj_value.weight,
    /// attn_out.weight, mu.weight, sigma.weight[, mask_net.weight.0/1/2, mask_net.bias].
    std::vector<Parameter<Scalar>> parameters(const std::string& prefix = "");

    /// Forgets the stream's memory (a new document); the weights are kept. The stream's
    /// sticky-sampling generator restarts (default: a replayed document gives the same
    /// outputs) or continues (ResetGenerator::keep).
    void reset(Index stream = 0, ResetGenerator generator = ResetGenerator::restart);

private:
    Index stream_count() const { return streams_.size(); }
    const StreamState& stream_at(const char* where, Index stream) const {
        return streams_.at(where, stream);
    }

    StreamState& checked_attend(const char* where, const Eigen::Ref<const Matrix>& queries,
                                Index stream) {
        StreamState& s = streams_.at(where, stream);
        if (s.memory.empty())
            throw infinityformer::logic_error(detail::concat(
                "[infinityformer] ", where,
                ": the memory is empty, expected at least one update() before attend()"));
        engine_.check_queries(where, queries);
        return s;
    }

    Engine engine_;
    detail::StreamSet<StreamState> streams_;
};

#if INFINITYFORMER_HEADER_ONLY

template <typename Scalar_>
LongTermAttention<Scalar_>::LongTermAttention(Index dim, Index num_heads, Index chunk_length,
                                              const LongTermParams& params, Index d_model)
    : engine_(dim, num_heads, chunk_length, params, d_model,
              "LongTermAttention::LongTermAttention") {
    set_num_streams(1);
}

template <typename Scalar_>
void LongTermAttention<Scalar_>::set_num_streams(Index n) {
    streams_.resize("LongTermAttention::set_num_streams", n, stream_bytes(),
                    [&](Index s) { return engine_.make_stream(s); });
}

template <typename Scalar_>
void LongTermAttention<Scalar_>::set_attention_weights(
    const typename ContinuousAttention<Scalar>::Weights& w) {
    engine_.set_attention_weights(w);
}

template <typename Scalar_>
void LongTermAttention<Scalar_>::set_gate_weights(const typename MemoryGate<Scalar>::Weights& w) {
    engine_.set_gate_weights(w);
}

template <typename Scalar_>
void LongTermAttention<Scalar_>::seed_stream(std::uint64_t seed, Index stream) {
    streams_.at("LongTermAttention::seed_stream", stream).memory.seed(seed);
}

template <typename Scalar_>
void LongTermAttention<Scalar_>::set_stream_state(StreamState s, Index stream) {
    constexpr const char* where = "LongTermAttention::set_stream_state";
    StreamState& target = streams_.at(where, stream);
    engine_.take_stream_state(where, s);
    s.memory.set_stream_index(stream);  // its generator restarts as this stream's
    target = std::move(s);
}

template <typename Scalar_>
void LongTermAttention<Scalar_>::update(const Eigen::Ref<const Matrix>& X, Index stream) {
    constexpr const char* where = "LongTermAttention::update";
    StreamState& s = streams_.at(where, stream);
    engine_.check_chunk(where, X);
    engine_.commit_step(engine_.prepare_step(where, s, &X, nullptr, nullptr));
}

template <typename Scalar_>
void LongTermAttention<Scalar_>::update(const Eigen::Ref<const Matrix>& X,
                                        const Eigen::Ref<const Vector>& sample_points,
                                        Index stream) {
    constexpr const char* where = "LongTermAttention::update";
    StreamState& s = streams_.at(where, stream);
    engine_.check_chunk(where, X);
    engine_.check_points(where, sample_points);
    engine_.commit_step(engine_.prepare_step(where, s, &X, &sample_points, nullptr));
}

template <typename Scalar_>
auto LongTermAttention<Scalar_>::attend(const Eigen::Ref<const Matrix>& queries, Index stream)
    -> Matrix {
    constexpr const char* where = "LongTermAttention::attend";
    StreamState& s = checked_attend(where, queries, stream);
    engine_.commit_step(engine_.prepare_step(where, s, nullptr, nullptr, &queries));
    return s.trace.output;
}

template <typename Scalar_>
void LongTermAttention<Scalar_>::attend(const Eigen::Ref<const Matrix>& queries,
                                        Eigen::Ref<Matrix> out, Index stream) {
    constexpr const char* where = "LongTermAttention::attend";
    StreamState& s = checked_attend(where, queries, stream);
    detail::check_shape(where, "out", out, queries.rows(), d_model());
    engine_.commit_step(engine_.prepare_step(where, s, nullptr, nullptr, &queries));
    out = s.trace.output;
}

template <typename Scalar_>
auto LongTermAttention<Scalar_>::forward(const Eigen::Ref<const Matrix>& X,
                                         const Eigen::Ref<const Matrix>& queries, Index stream)
    -> Matrix {
    constexpr const char* where = "LongTermAttention::forward";
    StreamState& s = streams_.at(where, stream);
    engine_.check_chunk(where, X);
    engine_.check_queries(where, queries);
    engine_.commit_step(engine_.prepare_step(where, s, &X, nullptr, &queries));
    return s.trace.output;
}

template <typename Scalar_>
auto LongTermAttention<Scalar_>::forward(const Eigen::Ref<const Matrix>& X,
                                         const Eigen::Ref<const Matrix>& queries,
                                         const Eigen::Ref<const Vector>& sample_points,
                                         Index stream) -> Matrix {
    constexpr const char* where = "LongTermAttention::forward";
    StreamState& s = streams_.at(where, stream);
    engine_.check_chunk(where, X);
    engine_.check_queries(where, queries);
    engine_.check_points(where, sample_points);
    engine_.commit_step(engine_.prepare_step(where, s, &X, &sample_points, &queries));
    return s.trace.output;
}

template <typename Scalar_>
void LongTermAttention<Scalar_>::backward(const Eigen::Ref<const Matrix>& dout, Scalar kl_weight,
                                          Eigen::Ref<Matrix> dqueries, Eigen::Ref<Matrix> dX,
                                          Index stream) {
    constexpr const char* where = "LongTermAttention::backward";
    StreamState& s = streams_.at(where, stream);
    engine_.check_backward(where, s, dout, kl_weight);
    detail::check_shape(where, "dqueries", dqueries, s.trace.queries.rows(), dim());
    detail::check_shape(where, "dX", dX, chunk_length(), dim());
    auto b = engine_.prepare_backward(where, "", "dout", s, dout, kl_weight);
    engine_.accumulate(b);
    dqueries = engine_.dqueries(b);
    dX = engine_.dX(b);
    engine_.commit_backward(std::move(b));
}

template <typename Scalar_>
void LongTermAttention<Scalar_>::zero_grad() {
    engine_.zero_grad();
}

template <typename Scalar_>
auto LongTermAttention<Scalar_>::parameters(const std::string& prefix)
    -> std::vector<Parameter<Scalar>> {
    std::vector<Parameter<Scalar>> out;
    engine_.append_parameters(out, prefix);
    return out;
}

template <typename Scalar_>
void LongTermAttention<Scalar_>::reset(Index stream, ResetGenerator generator) {
    engine_.reset_stream(streams_.at("LongTermAttention::reset", stream), generator);
}

#endif  // INFINITYFORMER_HEADER_ONLY

INFINITYFORMER_EXTERN_TEMPLATE(class, LongTermAttention)

using LongTermAttentiond = LongTermAttention<double>;
using LongTermAttentionf = LongTermAttention<float>;

}  // namespace infinityformer
