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
#include <utility>
#include <vector>

#include "continuous_attention.hpp"
#include "detail/limits.hpp"
#include "detail/math.hpp"
#include "detail/random.hpp"
#include "errors.hpp"
#include "gate.hpp"
#include "hyperparams.hpp"
#include "memory.hpp"
#include "parameter_view.hpp"

namespace infinityformer {

/// Where a stream is in its sequence of calls; it decides what backward() may do.
enum class StreamPhase {
    idle,             ///< nothing to differentiate (new stream, after reset())
    updated,          ///< the memory changed since the last attend(): nothing to differentiate
    attended,         ///< an attend() over a memory no update of this step changed
    attended_update,  ///< an attend() right after the update() it differentiates through
    consumed,         ///< backward() consumed the last attend(): nothing to differentiate
};

/// The state of one stream of a LongTermAttention: a value (copy, move, compare).
template <typename Scalar>
struct LongTermStream {
    using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    using Trace = typename ContinuousAttention<Scalar>::Trace;

    explicit LongTermStream(LongTermMemory<Scalar> m) : memory(std::move(m)) {}

    LongTermMemory<Scalar> memory;  ///< the memory and its sampling state
    Matrix input, gate, gated;      ///< the last update's chunk, g, g ⊙ X (gate only)
    Trace trace;                    ///< the last attend()
    StreamPhase phase = StreamPhase::idle;

    /// Equal in everything a later call reads (the workspace below is not compared).
    friend bool operator==(const LongTermStream& a, const LongTermStream& b) {
        return a.phase == b.phase && a.memory == b.memory &&
               detail::same_values(a.input, b.input) && detail::same_values(a.gate, b.gate) &&
               detail::same_values(a.gated, b.gated) && a.trace == b.trace;
    }
    friend bool operator!=(const LongTermStream& a, const LongTermStream& b) { return !(a == b); }

    // workspace: the next values, kept only once a call has succeeded; backward's results
    // (dB, dgated) and the next ones, published once the backward has succeeded
    Matrix next_input, next_gate, next_gated;
    Trace next_trace;
    Matrix dB, dgated, next_dB, next_dgated;
};

namespace detail {

/// Read-only access to the per-stream results of a long-term attention, for any owner of
/// the streams: Derived provides stream_at(where, s) and stream_count().
template <typename Scalar, typename Derived>
class LongTermStreamReader {
public:
    using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    using Trace = typename ContinuousAttention<Scalar>::Trace;

    /// Number of independent streams.
    Eigen::Index num_streams() const { return self().stream_count(); }
    /// The stream's whole state (a value: copy it, compare it).
    const LongTermStream<Scalar>& stream_state(Eigen::Index stream = 0) const {
        return self().stream_at("LongTermAttention::stream_state", stream);
    }
    /// The stream's memory (read-only).
    const LongTermMemory<Scalar>& memory(Eigen::Index stream = 0) const {
        return self().stream_at("LongTermAttention::memory", stream).memory;
    }
    /// The last attend()'s intermediate values for a stream.
    const Trace& last_attention(Eigen::Index stream = 0) const {
        return self().stream_at("LongTermAttention::last_attention", stream).trace;
    }
    /// Gate values and gated vectors of the stream's last update (empty without a gate).
    const Matrix& last_gate(Eigen::Index stream = 0) const {
        return self().stream_at("LongTermAttention::last_gate", stream).gate;
    }
    const Matrix& last_gated(Eigen::Index stream = 0) const {
        return self().stream_at("LongTermAttention::last_gated", stream).gated;
    }
    /// ∂ℓ/∂B and ∂ℓ/∂X̃ (the gated chunk) of the stream's last backward().
    const Matrix& last_grad_B(Eigen::Index stream = 0) const {
        return self().stream_at("LongTermAttention::last_grad_B", stream).dB;
    }
    const Matrix& last_grad_gated(Eigen::Index stream = 0) const {
        return self().stream_at("LongTermAttention::last_grad_gated", stream).dgated;
    }

private:
    const Derived& self() const { return static_cast<const Derived&>(*this); }
};

/// The checked index of a stream among `count`.
inline void check_stream_index(const char* where, Eigen::Index stream, Eigen::Index count) {
    if (count == 0)
        fail(where, "stream is ", stream, ", but this object has no streams (it was moved from)");
    require(stream >= 0 && stream < count, where, "stream is ", stream, ", expected 0 <= stream < ",
            count);
}

}  // namespace detail

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
/// generator seeded for the stream, gate inputs, trace, phase); every method takes the
/// stream's index last (default 0). Composite modules that own their streams' states use
/// the same steps on a LongTermStream they hold (make_stream(), step(), backward_stream()).
///
/// \tparam Scalar_ float or double.
template <typename Scalar_>
class LongTermAttention : public detail::LongTermStreamReader<Scalar_, LongTermAttention<Scalar_>> {
    static_assert(std::is_floating_point_v<Scalar_>, "LongTermAttention needs float or double");
    friend class detail::LongTermStreamReader<Scalar_, LongTermAttention<Scalar_>>;

public:
    using Scalar = Scalar_;
    using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
    using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    using Index = Eigen::Index;
    using StreamState = LongTermStream<Scalar>;
    using Trace = typename ContinuousAttention<Scalar>::Trace;

    /// @param dim e, width of memory vectors and queries. @param num_heads H, divides e.
    /// @param chunk_length L, vectors per chunk. @param params hyper-parameters (validated).
    /// @param d_model output width (0 means e).
    LongTermAttention(Index dim, Index num_heads, Index chunk_length,
                      const LongTermParams& params = LongTermParams{}, Index d_model = 0) try
        : params_(validated(params, dim, num_heads, chunk_length, d_model)),
          length_(chunk_length),
          prototype_(dim, chunk_length, params.memory_params()),
          attention_(prototype_.basis(), dim, num_heads, d_model, params.attention_params(),
                     detail::derive_seed(params.seed, detail::SeedPurpose::attention_weights)) {
        if (params.gate)
            gate_.emplace(dim, detail::derive_seed(params.seed, detail::SeedPurpose::gate_weights));
        streams_.push_back(make_stream(0));
        zero_grad();
    } catch (...) {
        detail::rethrow_as("LongTermAttention::LongTermAttention");
    }

    Index dim() const { return attention_.dim(); }
    Index chunk_length() const { return length_; }
    Index num_heads() const { return attention_.num_heads(); }
    Index d_model() const { return attention_.d_model(); }
    const LongTermParams& params() const { return params_; }

    /// Adds or removes streams; new streams start empty, existing ones keep their state.
    /// @throws infinityformer::invalid_argument if n < 1 (nothing changed).
    void set_num_streams(Index n) {
        constexpr const char* where = "LongTermAttention::set_num_streams";
        detail::require(n >= 1, where, "n is ", n, ", expected >= 1");
        detail::require_allocatable(where, "n streams", static_cast<double>(n),
                                    static_cast<double>(n) * stream_bytes());
        std::vector<StreamState> next;
        next.reserve(static_cast<std::size_t>(n));
        for (Index s = 0; s < n; ++s)
            next.push_back(s < stream_count() ? streams_[static_cast<std::size_t>(s)]
                                              : make_stream(s));
        streams_.swap(next);
    }

    /// Bytes of one stream's state and workspace once it has been through forwards and
    /// backwards with chunk-sized queries (L of them), the stream object included, at most:
    /// set_num_streams() refuses a count whose streams would not fit in the machine's memory.
    double stream_bytes() const {
        return stream_bytes_for(dim(), num_heads(), length_, d_model(), params_);
    }
    /// stream_bytes() of a module of these sizes.
    static double stream_bytes_for(Index dim, Index num_heads, Index chunk_length, Index d_model,
                                   const LongTermParams& p) {
        const double n = static_cast<double>(p.num_basis), e = static_cast<double>(dim),
                     l = static_cast<double>(chunk_length), h = static_cast<double>(num_heads),
                     out = static_cast<double>(d_model == 0 ? dim : d_model);
        // A trace (two per stream): B and values (N × e), r (H·L × N), queries, context and
        // workspace (L × e), the output (L × d_model), six H·L vectors and four e-vectors.
        const double trace = 2 * n * e + h * l * n + 3 * l * e + l * out + 6 * h * l + 4 * e;
        // Two traces, the observed densities, the gate's inputs and outputs (current and
        // next), dB and dX̃.
        const double scalars = 2 * trace + 2 * h * l + (p.gate ? 6 * l * e : 0) + n * e + l * e;
        constexpr double blocks = 48, per_block = 64;  // allocations, and each one's overhead
        return static_cast<double>(sizeof(StreamState)) +
               static_cast<double>(sizeof(Scalar)) * scalars + blocks * per_block +
               LongTermMemory<Scalar>::heap_bytes(dim, p.memory_params());
    }

    /// The continuous attention (read-only; set its weights with set_attention_weights()).
    const ContinuousAttention<Scalar>& attention() const { return attention_; }
    /// @throws infinityformer::invalid_argument (weights unchanged).
    void set_attention_weights(const typename ContinuousAttention<Scalar>::Weights& w) {
        attention_.set_weights(w);
    }

    bool has_gate() const { return gate_.has_value(); }
    /// The gate (read-only; set its weights with set_gate_weights()).
    /// @throws infinityformer::logic_error if the module was built without a gate.
    const MemoryGate<Scalar>& gate() const {
        require_gate("LongTermAttention::gate");
        return *gate_;
    }
    /// @throws infinityformer::logic_error without a gate; invalid_argument on bad weights.
    void set_gate_weights(const typename MemoryGate<Scalar>::Weights& w) {
        require_gate("LongTermAttention::set_gate_weights");
        gate_->set_weights(w);
    }

    /// Restarts the stream's sticky-sampling generator as params.seed = `seed` would have it.
    void seed_stream(std::uint64_t seed, Index stream = 0) {
        stream_at("LongTermAttention::seed_stream", stream).memory.seed(seed);
    }

    /// Replaces a stream's state by `s` (a saved stream restored by
    /// <infinityformer/io/state.hpp>, or a copy of another stream's stream_state()): what
    /// the next calls read is taken, the memory with its generator, and for the phase
    /// `updated` (an update() not yet attended) the gate's inputs and outputs of that update.
    /// The attention trace is not: the phase becomes idle unless it is `updated`, so the
    /// last attend() before the state was taken cannot be differentiated afterwards. The
    /// memory becomes stream `stream`'s: a reset() restarts its generator as this stream's.
    /// @throws infinityformer::invalid_argument if the memory's configuration is not this
    ///         module's, or the phase or gate fields are inconsistent (stream unchanged).
    void set_stream_state(StreamState s, Index stream = 0) {
        constexpr const char* where = "LongTermAttention::set_stream_state";
        StreamState& target = stream_at(where, stream);
        take_stream_state(where, s);
        s.memory.set_stream_index(stream);  // its generator restarts as this stream's
        target = std::move(s);
    }

    /// The checks of set_stream_state() (see check_stream_state()), then what it keeps of
    /// `s`: the trace is cleared, the phase becomes idle unless it is `updated`, and the
    /// gate's fields are cleared unless the phase is `updated`.
    void take_stream_state(const char* where, StreamState& s) const {
        check_stream_state(where, s);
        if (s.phase != StreamPhase::updated) {
            s.phase = StreamPhase::idle;
            if (gate_) {
                s.input.resize(0, dim());
                s.gate.resize(0, dim());
                s.gated.resize(0, dim());
            }
        }
        s.trace = Trace{};
    }

    /// The checks of set_stream_state(): the memory's configuration is this module's; an
    /// `updated` phase follows a stored chunk and, with a gate, carries the chunk, the gate
    /// values in [0, 1] and the gated chunk (each L × e, finite, gated = gate ⊙ input).
    void check_stream_state(const char* where, const StreamState& s) const {
        const std::string diff = prototype_.configuration_difference(s.memory);
        detail::require(diff.empty(), where, "the state's memory has another configuration: ", diff,
                        " (here: this module; the other: the state)");
        const auto phase = static_cast<int>(s.phase);
        detail::require(phase >= 0 && phase <= static_cast<int>(StreamPhase::consumed), where,
                        "the state's phase is ", phase, ", expected a StreamPhase");
        if (s.phase != StreamPhase::updated) return;
        detail::require(!s.memory.empty(), where,
                        "the state's phase is updated but its memory is empty, expected a "
                        "stored chunk");
        if (!gate_) return;
        detail::check_matrix(where, "state.input", s.input, length_, dim());
        detail::check_matrix(where, "state.gate", s.gate, length_, dim());
        detail::check_matrix(where, "state.gated", s.gated, length_, dim());
        detail::require(((s.gate.array() >= Scalar(0)) && (s.gate.array() <= Scalar(1))).all(),
                        where, "state.gate has a value outside [0, 1], expected sigmoid values");
        detail::require(detail::same_values(s.gated, Matrix(s.gate.cwiseProduct(s.input))), where,
                        "state.gated differs from state.gate * state.input, expected the gated "
                        "chunk");
    }

    /// Stores a chunk X (L × e) in the stream's memory (through the gate if there is one).
    void update(const Eigen::Ref<const Matrix>& X, Index stream = 0) {
        constexpr const char* where = "LongTermAttention::update";
        StreamState& s = stream_at(where, stream);
        check_chunk(where, X);
        step(where, s, &X, nullptr, nullptr);
    }
    /// As update(X), reading the old memory at the given M points (replay, tests).
    void update(const Eigen::Ref<const Matrix>& X, const Eigen::Ref<const Vector>& sample_points,
                Index stream = 0) {
        constexpr const char* where = "LongTermAttention::update";
        StreamState& s = stream_at(where, stream);
        check_chunk(where, X);
        check_points(where, sample_points);
        step(where, s, &X, &sample_points, nullptr);
    }

    /// Attention of queries Q (q × e) over the stream's memory; returns q × d_model and
    /// records the densities for the next sticky sampling.
    /// @throws infinityformer::logic_error if nothing has been stored yet.
    Matrix attend(const Eigen::Ref<const Matrix>& queries, Index stream = 0) {
        constexpr const char* where = "LongTermAttention::attend";
        StreamState& s = checked_attend(where, queries, stream);
        step(where, s, nullptr, nullptr, &queries);
        return s.trace.output;
    }
    /// attend() into caller storage (q × d_model); no allocation in a steady stream.
    void attend(const Eigen::Ref<const Matrix>& queries, Eigen::Ref<Matrix> out, Index stream = 0) {
        constexpr const char* where = "LongTermAttention::attend";
        StreamState& s = checked_attend(where, queries, stream);
        detail::check_shape(where, "out", out, queries.rows(), d_model());
        step(where, s, nullptr, nullptr, &queries);
        out = s.trace.output;
    }

    /// update(X) then attend(queries), as one call: all or nothing.
    Matrix forward(const Eigen::Ref<const Matrix>& X, const Eigen::Ref<const Matrix>& queries,
                   Index stream = 0) {
        constexpr const char* where = "LongTermAttention::forward";
        StreamState& s = stream_at(where, stream);
        check_chunk(where, X);
        check_queries(where, queries);
        step(where, s, &X, nullptr, &queries);
        return s.trace.output;
    }
    /// update(X, sample_points) then attend(queries).
    Matrix forward(const Eigen::Ref<const Matrix>& X, const Eigen::Ref<const Matrix>& queries,
                   const Eigen::Ref<const Vector>& sample_points, Index stream = 0) {
        constexpr const char* where = "LongTermAttention::forward";
        StreamState& s = stream_at(where, stream);
        check_chunk(where, X);
        check_queries(where, queries);
        check_points(where, sample_points);
        step(where, s, &X, &sample_points, &queries);
        return s.trace.output;
    }

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
                  Eigen::Ref<Matrix> dqueries, Eigen::Ref<Matrix> dX, Index stream = 0) {
        constexpr const char* where = "LongTermAttention::backward";
        StreamState& s = stream_at(where, stream);
        check_backward(where, s, dout, kl_weight);
        detail::check_shape(where, "dqueries", dqueries, s.trace.queries.rows(), dim());
        detail::check_shape(where, "dX", dX, chunk_length(), dim());
        prepare_backward(where, "", "dout", s, dout, kl_weight);
        accumulate_backward(s);
        dqueries = backward_dqueries();
        dX = backward_dX(s);
        commit_backward(s);
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

    /// Forgets the stream's memory (a new document); the weights are kept. The stream's
    /// sticky-sampling generator restarts (default: a replayed document gives the same
    /// outputs) or continues (ResetGenerator::keep).
    void reset(Index stream = 0, ResetGenerator generator = ResetGenerator::restart) {
        reset_stream(stream_at("LongTermAttention::reset", stream), generator);
    }

    // ---- Steps on a stream state held by the caller (composite modules) ----------------

    /// A new, empty state for stream index `index` (its generator seeded for that index).
    StreamState make_stream(Index index) const { return StreamState(prototype_.for_stream(index)); }

    /// Forgets a stream's memory, gate inputs and trace; its generator restarts or continues.
    void reset_stream(StreamState& s, ResetGenerator generator = ResetGenerator::restart) const {
        s.memory.reset();
        if (generator == ResetGenerator::restart) s.memory.restart_generator();
        s.input.resize(0, dim());
        s.gate.resize(0, dim());
        s.gated.resize(0, dim());
        s.trace = Trace{};
        s.phase = StreamPhase::idle;
    }

    /// One call on a stream, all or nothing: stores X if given (through the gate; at the
    /// given points if any), then attends with Q if given over the memory that results,
    /// and keeps everything only once the whole step has succeeded. Inputs must have been
    /// checked (check_chunk(), check_queries(), check_points(); attending needs a memory).
    /// Errors name `where` (the public call) and weights as `prefix` + parameters() name.
    /// @throws infinityformer::invalid_argument if a weight is not finite or a result
    ///         overflowed; infinityformer::runtime_error if the memory would diverge
    ///         (Stability::refuse). Nothing changed.
    void step(const char* where, StreamState& s, const Eigen::Ref<const Matrix>* X,
              const Eigen::Ref<const Vector>* points, const Eigen::Ref<const Matrix>* queries,
              const char* prefix = "") {
        prepare_step(where, s, X, points, queries, prefix);
        commit_step(s, X != nullptr, queries != nullptr);
    }

    /// The first half of step(): computes everything into the stream's workspace (the
    /// output is then s.next_trace.output) and changes nothing a later call reads.
    void prepare_step(const char* where, StreamState& s, const Eigen::Ref<const Matrix>* X,
                      const Eigen::Ref<const Vector>* points,
                      const Eigen::Ref<const Matrix>* queries, const char* prefix = "") {
        if (X) {
            if (gate_) {
                s.next_input = *X;
                s.next_gate.resize(X->rows(), dim());
                s.next_gated.resize(X->rows(), dim());
                gate_->forward(*X, s.next_gate, s.next_gated);
                if (!detail::all_finite(s.next_gated)) {
                    gate_->check_weights(where, std::string(prefix) + "mask_net.");
                    detail::fail(where, "the memory gate's pre-activation overflowed (largest |x| ",
                                 detail::largest_abs(*X), "), expected smaller inputs");
                }
                s.memory.prepare(where, s.next_gated, points);
            } else {
                s.memory.prepare(where, *X, points);
            }
        }
        if (queries) {
            const Matrix& B = X ? s.memory.pending_coefficients() : s.memory.coefficients();
            attention_.forward_unchecked(B, *queries, s.next_trace);
            if (!attention_.trace_finite(s.next_trace))
                attention_.explain_trace(where, prefix, s.next_trace);
        }
    }

    /// The second half of step(), after a prepare_step() with the same X and Q presence:
    /// keeps what it computed (swaps and copies only; nothing throws).
    void commit_step(StreamState& s, bool stored, bool attended) {
        if (stored) {
            s.memory.commit();
            if (gate_) {
                s.input.swap(s.next_input);
                s.gate.swap(s.next_gate);
                s.gated.swap(s.next_gated);
            }
        }
        if (attended) {
            std::swap(s.trace, s.next_trace);
            s.memory.observe(s.trace.mu, s.trace.sigma_sq);
            s.phase = (stored || s.phase == StreamPhase::updated) ? StreamPhase::attended_update
                                                                  : StreamPhase::attended;
        } else {
            s.phase = StreamPhase::updated;
        }
    }

    /// The checks of backward() but the output shapes.
    void check_backward(const char* where, const StreamState& s,
                        const Eigen::Ref<const Matrix>& dout, Scalar kl_weight) const {
        if (s.phase == StreamPhase::consumed)
            throw infinityformer::logic_error(detail::concat(
                "[infinityformer] ", where,
                ": the trace of the last attend() was consumed by the previous backward(), "
                "expected a new forward() or attend() before the next backward() (a second "
                "backward() of one attend() would add its gradients again)"));
        if (s.phase != StreamPhase::attended && s.phase != StreamPhase::attended_update)
            throw infinityformer::logic_error(detail::concat(
                "[infinityformer] ", where,
                s.trace.queries.rows() == 0
                    ? ": no attend() to differentiate, expected a forward() or attend() first"
                    : ": the memory changed (update()) since the last attend(), expected "
                      "backward() before the next update()"));
        detail::check_matrix(where, "dout", dout, s.trace.queries.rows(), d_model());
        detail::check_kl_weight(where, kl_weight);
    }

    /// backward() on a stream state, after check_backward() and the shape checks: the
    /// three steps below, then the outputs. @throws infinityformer::invalid_argument if a
    /// result overflowed (nothing changed).
    void backward_stream(StreamState& s, const Eigen::Ref<const Matrix>& dout, Scalar kl_weight,
                         Eigen::Ref<Matrix> dqueries, Eigen::Ref<Matrix> dX) {
        prepare_backward("LongTermAttention::backward", "", "dout", s, dout, kl_weight);
        accumulate_backward(s);
        dqueries = backward_dqueries();
        dX = backward_dX(s);
        commit_backward(s);
    }

    /// The computing half of a backward on a stream state (after check_backward()): every
    /// result into the workspace (this module's and the stream's), checked to be finite
    /// with the gradients they will be added to. Changes nothing a later call reads.
    /// Errors name `where`, the weights as `prefix` + parameters() name and the upstream
    /// gradient as `grad_name`.
    /// @throws infinityformer::invalid_argument naming the result that overflowed.
    void prepare_backward(const char* where, const char* prefix, const char* grad_name,
                          StreamState& s, const Eigen::Ref<const Matrix>& dout, Scalar kl_weight) {
        attention_.backward_compute(s.trace, dout, kl_weight);
        s.next_dB = attention_.backward_dB();
        const bool through_update = s.phase == StreamPhase::attended_update;
        s.next_dgated.resize(chunk_length(), dim());
        if (through_update)
            s.memory.backward_unchecked(s.next_dB, s.next_dgated);  // ∂ℓ/∂X̃ (∂ℓ/∂X: no gate)
        else
            s.next_dgated.setZero();
        if (gate_ && through_update) gate_->backward_compute(s.input, s.gate, s.next_dgated);
        if (attention_.backward_finite() && detail::all_finite(s.next_dgated) &&
            (!gate_ || !through_update || gate_->backward_finite()))
            return;
        const std::string cause = detail::concat(
            grad_name, "'s largest |entry| ", detail::largest_abs(dout), " (kl_weight ", kl_weight,
            "; the long-term memory's largest |entry| ", detail::largest_abs(s.trace.B),
            ", the queries' ", detail::largest_abs(s.trace.queries), ")");
        const std::string inputs = detail::concat(grad_name, ", kl_weight, a memory and queries");
        if (!attention_.backward_finite())
            attention_.explain_backward(where, prefix, cause, inputs);
        detail::check_backward_result(
            where, cause, inputs,
            gate_ ? "the gradient of the gated chunk, through the memory's fit"
                  : "dX, the gradient of the chunk stored by the last update()",
            s.next_dgated);
        if (gate_) gate_->explain_backward(where, std::string(prefix) + "mask_net.", cause, inputs);
        detail::fail(where, "a backward result is not finite (", cause, ")");
    }

    /// ∂ℓ/∂Q of the last prepare_backward() (q × e).
    const Matrix& backward_dqueries() const { return attention_.backward_dqueries(); }
    /// ∂ℓ/∂X of the chunk stored by the update the last prepare_backward() went through
    /// (L × e, zeros if none).
    const Matrix& backward_dX(const StreamState& s) const {
        return gate_ && s.phase == StreamPhase::attended_update ? gate_->backward_dX()
                                                                : s.next_dgated;
    }

    /// Adds the gradients of the last prepare_backward() on `s` to this module's (additions
    /// only; nothing throws).
    void accumulate_backward(const StreamState& s) {
        attention_.backward_accumulate();
        if (gate_ && s.phase == StreamPhase::attended_update) gate_->backward_accumulate();
    }

    /// The stream's part of a backward that succeeded (swaps only; nothing throws): its
    /// ∂ℓ/∂B and ∂ℓ/∂X̃ become last_grad_B() and last_grad_gated(), and the trace is consumed.
    void commit_backward(StreamState& s) const {
        s.dB.swap(s.next_dB);
        s.dgated.swap(s.next_dgated);
        s.phase = StreamPhase::consumed;
    }

    /// X must be L × e and finite.
    void check_chunk(const char* where, const Eigen::Ref<const Matrix>& X) const {
        detail::check_matrix(where, "X", X, chunk_length(), dim());
    }
    /// Queries must be q × e (q ≥ 1) and finite.
    void check_queries(const char* where, const Eigen::Ref<const Matrix>& queries) const {
        detail::require(queries.rows() >= 1, where, "queries has 0 rows, expected at least 1");
        detail::require(queries.cols() == dim(), where, "queries has ", queries.cols(),
                        " cols, expected ", dim());
        detail::check_finite(where, "queries", queries);
    }
    /// Sample points must be M finite values.
    void check_points(const char* where, const Eigen::Ref<const Vector>& points) const {
        detail::check_matrix(where, "sample_points", points, params_.num_samples, 1);
    }

private:
    static const LongTermParams& validated(const LongTermParams& p, Index dim, Index heads,
                                           Index length, Index d_model) {
        constexpr const char* where = "LongTermAttention::LongTermAttention";
        p.template validate_for<Scalar>(where);
        detail::require(dim >= 1, where, "dim is ", dim, ", expected >= 1");
        detail::require(heads >= 1 && dim % heads == 0, where, "num_heads is ", heads,
                        ", expected a positive divisor of dim (", dim, ")");
        detail::require(length >= 1, where, "chunk_length is ", length, ", expected >= 1");
        detail::require(d_model >= 0, where, "d_model is ", d_model,
                        ", expected >= 1 (or 0 for d_model = dim)");
        // Everything the constructor allocates: the shared operators and the weights with
        // their gradients (each part also checks its own), and one stream.
        const double r = static_cast<double>(heads) * static_cast<double>(length) *
                         static_cast<double>(p.num_basis);
        const Index out = d_model == 0 ? dim : d_model;
        detail::require_allocatable(
            where,
            "the weights, the memory's operators and one stream (num_heads x chunk_length x "
            "num_basis attention weights per trace)",
            r,
            LongTermMemory<Scalar>::operator_bytes(length, p.memory_params()) +
                ContinuousAttention<Scalar>::weight_bytes(p.num_basis, dim, out) +
                (p.gate ? MemoryGate<Scalar>::weight_bytes(dim) : 0.0) +
                2 * stream_bytes_for(dim, heads, length, d_model, p));
        return p;
    }

    Index stream_count() const { return static_cast<Index>(streams_.size()); }
    const StreamState& stream_at(const char* where, Index stream) const {
        detail::check_stream_index(where, stream, stream_count());
        return streams_[static_cast<std::size_t>(stream)];
    }
    StreamState& stream_at(const char* where, Index stream) {
        detail::check_stream_index(where, stream, stream_count());
        return streams_[static_cast<std::size_t>(stream)];
    }

    void require_gate(const char* where) const {
        if (!gate_)
            throw infinityformer::logic_error(
                detail::concat("[infinityformer] ", where,
                               ": this module has no gate, expected params.gate = true"));
    }

    StreamState& checked_attend(const char* where, const Eigen::Ref<const Matrix>& queries,
                                Index stream) {
        StreamState& s = stream_at(where, stream);
        if (s.memory.empty())
            throw infinityformer::logic_error(detail::concat(
                "[infinityformer] ", where,
                ": the memory is empty, expected at least one update() before attend()"));
        check_queries(where, queries);
        return s;
    }

    LongTermParams params_;
    Index length_ = 0;
    LongTermMemory<Scalar> prototype_;  // operators shared by every stream's memory
    ContinuousAttention<Scalar> attention_;
    std::optional<MemoryGate<Scalar>> gate_;
    std::vector<StreamState> streams_;
};

using LongTermAttentiond = LongTermAttention<double>;
using LongTermAttentionf = LongTermAttention<float>;

}  // namespace infinityformer
