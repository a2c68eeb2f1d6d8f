/// @file long_term_engine.hpp
/// @brief The long-term attention's weights and its steps on a stream state the caller
/// holds (LongTermStream): gate, memory update and continuous attention as one typed step
/// (prepare_step() → Step → commit_step()), and its backward (prepare_backward() →
/// Backward → accumulate() → commit_backward()). LongTermAttention and InfinityFormerLayer
/// each hold one engine and their own streams.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "continuous_attention.hpp"
#include "detail/config.hpp"
#include "detail/limits.hpp"
#include "detail/math.hpp"
#include "detail/random.hpp"
#include "errors.hpp"
#include "gate.hpp"
#include "hyperparams.hpp"
#include "memory.hpp"
#include "memory_operators.hpp"
#include "parameter_view.hpp"

namespace infinityformer {

/// Where a stream is in its sequence of calls; it decides what a backward may do.
enum class StreamPhase {
    idle,             ///< nothing to differentiate (new stream, after reset())
    updated,          ///< the memory changed since the last attend(): nothing to differentiate
    attended,         ///< an attend() over a memory no update of this step changed
    attended_update,  ///< an attend() right after the update() it differentiates through
    consumed,         ///< a backward consumed the last attend(): nothing to differentiate
};

/// The state of one stream of a long-term attention: a value (copy, move, compare). Its
/// traces, workspaces and the results of its last backward live here; the engine that
/// acts on it holds only weights and gradients.
template <typename Scalar>
struct LongTermStream {
    using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
    using Trace = typename ContinuousAttention<Scalar>::Trace;

    explicit LongTermStream(LongTermMemory<Scalar> m) : memory(std::move(m)) {}

    LongTermMemory<Scalar> memory;  ///< the memory and its sampling state
    Matrix input, gate, gated;      ///< the last update's chunk, g, g ⊙ X (gate only)
    Trace trace;                    ///< the last attend()
    StreamPhase phase = StreamPhase::idle;
    Matrix dB, dgated;  ///< ∂ℓ/∂B and ∂ℓ/∂X̃ (the gated chunk) of the last backward

    /// ∂ℓ/∂μ and ∂ℓ/∂σ² (KL terms included) of the stream's last backward (H·q each).
    const Vector& grad_mu() const { return attention_work.last_dmu; }
    const Vector& grad_sigma_sq() const { return attention_work.last_dsigma_sq; }

    /// Equal in everything a later call reads (the workspace below is not compared).
    friend bool operator==(const LongTermStream& a, const LongTermStream& b) {
        return a.phase == b.phase && a.memory == b.memory &&
               detail::same_values(a.input, b.input) && detail::same_values(a.gate, b.gate) &&
               detail::same_values(a.gated, b.gated) && a.trace == b.trace;
    }
    friend bool operator!=(const LongTermStream& a, const LongTermStream& b) { return !(a == b); }

    // workspace: the next values, kept only once a call has succeeded
    Matrix next_input, next_gate, next_gated, next_dgated;
    Trace next_trace;
    typename ContinuousAttention<Scalar>::Work attention_work;
    typename MemoryGate<Scalar>::Work gate_work;
};

namespace detail {

/// Read-only access to the per-stream results of a long-term attention, for any owner of
/// the streams: Derived provides stream_at(where, s) and stream_count().
template <typename Scalar, typename Derived>
class LongTermStreamReader {
public:
    using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
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
    /// ∂ℓ/∂μ and ∂ℓ/∂σ² (KL terms included) of the stream's last backward().
    const Vector& last_grad_mu(Eigen::Index stream = 0) const {
        return self().stream_at("LongTermAttention::last_grad_mu", stream).grad_mu();
    }
    const Vector& last_grad_sigma_sq(Eigen::Index stream = 0) const {
        return self().stream_at("LongTermAttention::last_grad_sigma_sq", stream).grad_sigma_sq();
    }

private:
    const Derived& self() const { return static_cast<const Derived&>(*this); }
};

}  // namespace detail

/// The long-term attention's weights (continuous attention, optional gate), the shared
/// memory operators of its configuration, and its steps on a LongTermStream held by the
/// caller. Which call may follow which is in the types:
///
///     Step st = engine.prepare_step(where, s, X, points, Q);   // computes aside
///     engine.commit_step(std::move(st));                       // keeps (nothing throws)
///     Backward b = engine.prepare_backward(where, prefix, name, s, dout, kl, into);
///     engine.accumulate(b, into);        // adds the gradients (nothing throws)
///     engine.commit_backward(std::move(b));                    // consumes the trace
///
/// A Step or Backward that is dropped changes nothing a later call reads. The calls that
/// take `where` are for modules that checked their inputs (check_chunk(), check_queries(),
/// check_points(), check_backward()); errors name `where`, the public call.
template <typename Scalar_>
class LongTermEngine {
    static_assert(std::is_floating_point_v<Scalar_>, "LongTermEngine needs float or double");
    static_assert(detail::instantiable_scalar<Scalar_>(),
                  "infinityformer::compiled holds LongTermEngine<float> and <double> only");

public:
    using Scalar = Scalar_;
    using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
    using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    using Index = Eigen::Index;
    using StreamState = LongTermStream<Scalar>;
    using Trace = typename ContinuousAttention<Scalar>::Trace;

    /// Gradients laid out as the weights (a thread's own sum: zero_gradients()).
    struct Gradients {
        typename ContinuousAttention<Scalar>::Weights attention;
        typename MemoryGate<Scalar>::Weights gate;  ///< empty without a gate
    };

    /// A step prepared on a stream: the stream it was computed for, the memory's update
    /// (if it stores a chunk) and whether it attends. Move-only; commit_step() keeps it.
    class Step {
    public:
        Step(Step&&) = default;
        Step& operator=(Step&&) = default;
        /// The attention's output (q × d_model) the step computed (attending steps only).
        const Matrix& output() const { return s_->next_trace.output; }

    private:
        friend class LongTermEngine;
        Step(StreamState& s, bool attends) : s_(&s), attends_(attends) {}
        StreamState* s_;
        std::optional<typename LongTermMemory<Scalar>::Update> update_;
        bool attends_;
    };

    /// A backward computed on a stream, checked to be finite with the gradients it will be
    /// added to. Move-only; accumulate() adds it, commit_backward() consumes the trace.
    class Backward {
    public:
        Backward(Backward&&) = default;
        Backward& operator=(Backward&&) = default;

    private:
        friend class LongTermEngine;
        Backward(StreamState& s, bool through) : s_(&s), through_update_(through) {}
        StreamState* s_;
        bool through_update_;
    };

    /// @param dim e, width of memory vectors and queries. @param num_heads H, divides e.
    /// @param chunk_length L, vectors per chunk. @param params hyper-parameters (validated).
    /// @param d_model output width (0 means e). @param where the public constructor, for
    ///        the errors.
    LongTermEngine(Index dim, Index num_heads, Index chunk_length, const LongTermParams& params,
                   Index d_model, const char* where);

    /// Moves the weights (the source keeps zeros of its sizes and its configuration, on
    /// which every call works).
    LongTermEngine(LongTermEngine&& o)
        : params_(o.params_),
          dim_(o.dim_),
          length_(o.length_),
          operators_(o.operators_),
          attention_(std::move(o.attention_)),
          gate_(std::move(o.gate_)) {}
    LongTermEngine& operator=(LongTermEngine&& o) {
        if (this != &o) {
            params_ = o.params_;
            dim_ = o.dim_;
            length_ = o.length_;
            operators_ = o.operators_;
            attention_ = std::move(o.attention_);
            gate_ = std::move(o.gate_);
        }
        return *this;
    }
    LongTermEngine(const LongTermEngine&) = default;
    LongTermEngine& operator=(const LongTermEngine&) = default;

    Index dim() const { return dim_; }
    Index chunk_length() const { return length_; }
    Index num_heads() const { return attention_.num_heads(); }
    Index d_model() const { return attention_.d_model(); }
    const LongTermParams& params() const { return params_; }
    /// The operators every stream's memory shares.
    const MemoryOperators<Scalar>& operators() const { return *operators_; }

    /// The continuous attention (read-only; set its weights with set_attention_weights()).
    const ContinuousAttention<Scalar>& attention() const { return attention_; }
    /// @throws infinityformer::invalid_argument (weights unchanged).
    void set_attention_weights(const typename ContinuousAttention<Scalar>::Weights& w);
    bool has_gate() const { return gate_.has_value(); }
    /// @throws infinityformer::logic_error if there is no gate.
    const MemoryGate<Scalar>& gate() const {
        require_gate("LongTermAttention::gate");
        return *gate_;
    }
    /// @throws infinityformer::logic_error without a gate; invalid_argument on bad weights.
    void set_gate_weights(const typename MemoryGate<Scalar>::Weights& w);

    /// Sets every accumulated gradient to zero.
    void zero_grad();
    /// Zero gradients laid out as the weights.
    Gradients zero_gradients() const;
    /// Named weights with their gradients (the reference's state_dict() names, the gate's
    /// weight split by tap): proj_key.weight, proj_value.weight, attn_out.weight,
    /// mu.weight, sigma.weight[, mask_net.weight.0/1/2, mask_net.bias]; with `grads`, its
    /// matrices in place of the accumulated gradients.
    void append_parameters(std::vector<Parameter<Scalar>>& out, const std::string& prefix,
                           Gradients* grads = nullptr);

    // ---- Streams --------------------------------------------------------------------

    /// A new, empty stream state for stream index `index` (its generator seeded for it).
    StreamState make_stream(Index index) const;

    /// Forgets a stream's memory, gate inputs and trace; its generator restarts or continues.
    void reset_stream(StreamState& s, ResetGenerator generator = ResetGenerator::restart) const;

    /// The checks of a stream state given by the caller (check_stream_state()), then what a
    /// module keeps of it: the trace is cleared, the phase becomes idle unless it is
    /// `updated`, and the gate's fields are cleared unless the phase is `updated`.
    void take_stream_state(const char* where, StreamState& s) const;

    /// The memory's configuration is this engine's; an `updated` phase follows a stored
    /// chunk and, with a gate, carries the chunk, the gate values in [0, 1] and the gated
    /// chunk (each L × e, finite, gated = gate ⊙ input).
    void check_stream_state(const char* where, const StreamState& s) const;

    /// X must be L × e and finite.
    void check_chunk(const char* where, const Eigen::Ref<const Matrix>& X) const;
    /// Queries must be q × e (q ≥ 1) and finite.
    void check_queries(const char* where, const Eigen::Ref<const Matrix>& queries) const;
    /// Sample points must be M finite values.
    void check_points(const char* where, const Eigen::Ref<const Vector>& points) const;

    // ---- The forward step -----------------------------------------------------------

    /// Computes one step on stream `s` aside: stores X if given (through the gate; at the
    /// given points if any), then attends with Q if given over the memory that results
    /// (attending alone needs a stored memory). Nothing a later call reads changes until
    /// commit_step(). Weights are named as `prefix` + parameters() name.
    /// @throws infinityformer::invalid_argument if a weight is not finite or a result
    ///         overflowed; infinityformer::runtime_error if the memory would diverge
    ///         (Stability::refuse). Nothing changed.
    Step prepare_step(const char* where, StreamState& s, const Eigen::Ref<const Matrix>* X,
                      const Eigen::Ref<const Vector>* points,
                      const Eigen::Ref<const Matrix>* queries, const char* prefix = "") const;

    /// Keeps a prepared step (swaps and copies only; nothing throws).
    void commit_step(Step&& step) const;

    // ---- The backward ---------------------------------------------------------------

    /// The checks of a backward of stream `s` but the output shapes.
    void check_backward(const char* where, const StreamState& s,
                        const Eigen::Ref<const Matrix>& dout, Scalar kl_weight) const;

    /// Computes the backward of stream `s`'s last attend() (after check_backward()) into the
    /// stream's workspace, checked to be finite with the gradients it will be added to
    /// (`into`, or this engine's accumulated ones). Changes nothing a later call reads.
    /// Errors name `where`, the weights as `prefix` + parameters() name and the upstream
    /// gradient as `grad_name`.
    /// @throws infinityformer::invalid_argument naming the result that overflowed.
    Backward prepare_backward(const char* where, const char* prefix, const char* grad_name,
                              StreamState& s, const Eigen::Ref<const Matrix>& dout,
                              Scalar kl_weight, const Gradients* into = nullptr) const;

    /// ∂ℓ/∂Q of a prepared backward (q × e).
    const Matrix& dqueries(const Backward& b) const { return b.s_->attention_work.dqueries; }
    /// ∂ℓ/∂X of the chunk stored by the update the backward went through (L × e, zeros if
    /// none).
    const Matrix& dX(const Backward& b) const {
        return gate_ && b.through_update_ ? b.s_->gate_work.dx : b.s_->next_dgated;
    }

    /// Adds a prepared backward's gradients to this engine's accumulated ones (additions and
    /// swaps only; nothing throws).
    void accumulate(const Backward& b);
    /// accumulate() into `into` instead (threads: each its own).
    void accumulate(const Backward& b, Gradients& into) const;

    /// The stream's part of a backward that succeeded (swaps only; nothing throws): its
    /// ∂ℓ/∂B and ∂ℓ/∂X̃ become the stream's dB and dgated, and the trace is consumed.
    void commit_backward(Backward&& b) const;

    // ---- Sizes ----------------------------------------------------------------------

    /// Bytes of one stream's state and workspace once it has been through forwards and
    /// backwards with chunk-sized queries (L of them), the stream object included, at most.
    static double stream_bytes_for(Index dim, Index num_heads, Index chunk_length, Index d_model,
                                   const LongTermParams& p) {
        const double n = static_cast<double>(p.num_basis), e = static_cast<double>(dim),
                     l = static_cast<double>(chunk_length), h = static_cast<double>(num_heads),
                     out = static_cast<double>(d_model == 0 ? dim : d_model);
        // A trace (two per stream): B and values (N × e), r (H·L × N), queries, context and
        // workspace (L × e), the output (L × d_model), six H·L vectors and four e-vectors.
        const double trace = 2 * n * e + h * l * n + 3 * l * e + l * out + 6 * h * l + 4 * e;
        // The attention's backward workspace: dr (H·L × N), dV, dB and its gradients
        // (N × e), dcontext and dqueries (L × e), the weights' gradients, 14 H·L vectors.
        const double work =
            h * l * n + 3 * n * e + 3 * l * e + 2 * e * e + out * e + 2 * n + 14 * h * l + 4 * e;
        // Two traces, the observed densities, the gate's inputs, outputs and backward
        // workspace (current and next), dB and dX̃ (current and next).
        const double scalars =
            2 * trace + work + 2 * h * l + (p.gate ? 9 * l * e + 4 * e * e : 0) + n * e + 2 * l * e;
        constexpr double blocks = 80, per_block = 64;  // allocations, and each one's overhead
        return static_cast<double>(sizeof(StreamState)) +
               static_cast<double>(sizeof(Scalar)) * scalars + blocks * per_block +
               LongTermMemory<Scalar>::heap_bytes(dim, p.memory_params());
    }

private:
    static const LongTermParams& validated(const char* where, const LongTermParams& p, Index dim,
                                           Index heads, Index length, Index d_model) {
        p.template validate_for<Scalar>(where);
        detail::check_heads(where, "dim", dim, heads);
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
            MemoryOperators<Scalar>::bytes(length, p.memory_params()) +
                ContinuousAttention<Scalar>::weight_bytes(p.num_basis, dim, out) +
                (p.gate ? MemoryGate<Scalar>::weight_bytes(dim) : 0.0) +
                stream_bytes_for(dim, heads, length, d_model, p));
        return p;
    }

    void require_gate(const char* where) const {
        if (!gate_)
            throw infinityformer::logic_error(
                detail::concat("[infinityformer] ", where,
                               ": this module has no gate, expected params.gate = true"));
    }

    LongTermParams params_;
    Index dim_ = 0;
    Index length_ = 0;
    std::shared_ptr<const MemoryOperators<Scalar>> operators_;
    ContinuousAttention<Scalar> attention_;
    std::optional<MemoryGate<Scalar>> gate_;
};

#if INFINITYFORMER_HEADER_ONLY

template <typename Scalar_>
LongTermEngine<Scalar_>::LongTermEngine(Index dim, Index num_heads, Index chunk_length,
                                        const LongTermParams& params, Index d_model,
                                        const char* where)
    : params_(validated(where, params, dim, num_heads, chunk_length, d_model)),
      dim_(dim),
      length_(chunk_length),
      operators_(MemoryOperators<Scalar>::shared(chunk_length, params.memory_params())),
      attention_(operators_->basis, dim, num_heads, d_model, params.attention_params(),
                 detail::derive_seed(params.seed, detail::SeedPurpose::attention_weights)) {
    if (params.stability == Stability::refuse)
        operators_->refuse_unstable(where, params, chunk_length, dim);
    if (params.gate)
        gate_.emplace(dim, detail::derive_seed(params.seed, detail::SeedPurpose::gate_weights));
    zero_grad();
}

template <typename Scalar_>
void LongTermEngine<Scalar_>::set_attention_weights(
    const typename ContinuousAttention<Scalar>::Weights& w) {
    attention_.set_weights(w);
}

template <typename Scalar_>
void LongTermEngine<Scalar_>::set_gate_weights(const typename MemoryGate<Scalar>::Weights& w) {
    require_gate("LongTermAttention::set_gate_weights");
    gate_->set_weights(w);
}

template <typename Scalar_>
void LongTermEngine<Scalar_>::zero_grad() {
    attention_.zero_grad();
    if (gate_) gate_->zero_grad();
}

template <typename Scalar_>
auto LongTermEngine<Scalar_>::zero_gradients() const -> Gradients {
    Gradients g;
    g.attention = attention_.zero_gradients();
    if (gate_) g.gate = gate_->zero_gradients();
    return g;
}

template <typename Scalar_>
void LongTermEngine<Scalar_>::append_parameters(std::vector<Parameter<Scalar>>& out,
                                                const std::string& prefix, Gradients* grads) {
    if (grads) {
        attention_.append_parameters(out, prefix, grads->attention);
        if (gate_) gate_->append_parameters(out, prefix + "mask_net.", grads->gate);
    } else {
        attention_.append_parameters(out, prefix);
        if (gate_) gate_->append_parameters(out, prefix + "mask_net.");
    }
}

template <typename Scalar_>
auto LongTermEngine<Scalar_>::make_stream(Index index) const -> StreamState {
    return StreamState(LongTermMemory<Scalar>(dim_, length_, params_.memory_params(), index));
}

template <typename Scalar_>
void LongTermEngine<Scalar_>::reset_stream(StreamState& s, ResetGenerator generator) const {
    s.memory.reset();
    if (generator == ResetGenerator::restart) s.memory.restart_generator();
    s.input.resize(0, dim());
    s.gate.resize(0, dim());
    s.gated.resize(0, dim());
    s.trace = Trace{};
    s.phase = StreamPhase::idle;
}

template <typename Scalar_>
void LongTermEngine<Scalar_>::take_stream_state(const char* where, StreamState& s) const {
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

template <typename Scalar_>
void LongTermEngine<Scalar_>::check_stream_state(const char* where, const StreamState& s) const {
    const std::string diff = LongTermMemory<Scalar>::configuration_difference(
        dim_, length_, params_.memory_params(), s.memory);
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
    detail::require(((s.gate.array() >= Scalar(0)) && (s.gate.array() <= Scalar(1))).all(), where,
                    "state.gate has a value outside [0, 1], expected sigmoid values");
    detail::require(detail::same_values(s.gated, Matrix(s.gate.cwiseProduct(s.input))), where,
                    "state.gated differs from state.gate * state.input, expected the gated "
                    "chunk");
}

template <typename Scalar_>
void LongTermEngine<Scalar_>::check_chunk(const char* where,
                                          const Eigen::Ref<const Matrix>& X) const {
    detail::check_matrix(where, "X", X, length_, dim());
}

template <typename Scalar_>
void LongTermEngine<Scalar_>::check_queries(const char* where,
                                            const Eigen::Ref<const Matrix>& queries) const {
    detail::require(queries.rows() >= 1, where, "queries has 0 rows, expected at least 1");
    detail::require(queries.cols() == dim(), where, "queries has ", queries.cols(),
                    " cols, expected ", dim());
    detail::check_finite(where, "queries", queries);
}

template <typename Scalar_>
void LongTermEngine<Scalar_>::check_points(const char* where,
                                           const Eigen::Ref<const Vector>& points) const {
    detail::check_matrix(where, "sample_points", points, params_.num_samples, 1);
}

template <typename Scalar_>
auto LongTermEngine<Scalar_>::prepare_step(const char* where, StreamState& s,
                                           const Eigen::Ref<const Matrix>* X,
                                           const Eigen::Ref<const Vector>* points,
                                           const Eigen::Ref<const Matrix>* queries,
                                           const char* prefix) const -> Step {
    Step step(s, queries != nullptr);
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
            step.update_.emplace(s.memory.prepare(where, s.next_gated, points));
        } else {
            step.update_.emplace(s.memory.prepare(where, *X, points));
        }
    }
    if (queries) {
        const Matrix& B = X ? step.update_->coefficients() : s.memory.coefficients();
        attention_.forward_unchecked(B, *queries, s.next_trace);
        if (!attention_.trace_finite(s.next_trace))
            attention_.explain_trace(where, prefix, s.next_trace);
    }
    return step;
}

template <typename Scalar_>
void LongTermEngine<Scalar_>::commit_step(Step&& step) const {
    StreamState& s = *step.s_;
    const bool stored = step.update_.has_value();
    if (stored) {
        s.memory.commit(std::move(*step.update_));
        if (gate_) {
            s.input.swap(s.next_input);
            s.gate.swap(s.next_gate);
            s.gated.swap(s.next_gated);
        }
    }
    if (step.attends_) {
        std::swap(s.trace, s.next_trace);
        s.memory.observe(s.trace.mu, s.trace.sigma_sq);
        s.phase = (stored || s.phase == StreamPhase::updated) ? StreamPhase::attended_update
                                                              : StreamPhase::attended;
    } else {
        s.phase = StreamPhase::updated;
    }
}

template <typename Scalar_>
void LongTermEngine<Scalar_>::check_backward(const char* where, const StreamState& s,
                                             const Eigen::Ref<const Matrix>& dout,
                                             Scalar kl_weight) const {
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

template <typename Scalar_>
auto LongTermEngine<Scalar_>::prepare_backward(const char* where, const char* prefix,
                                               const char* grad_name, StreamState& s,
                                               const Eigen::Ref<const Matrix>& dout,
                                               Scalar kl_weight, const Gradients* into) const
    -> Backward {
    const bool through = s.phase == StreamPhase::attended_update;
    const auto& ga = into ? into->attention : attention_.gradients();
    attention_.backward_compute(s.trace, dout, kl_weight, s.attention_work);
    s.next_dgated.resize(chunk_length(), dim());
    if (through)  // ∂ℓ/∂X̃ (∂ℓ/∂X without a gate)
        s.memory.backward_unchecked(s.attention_work.dB, s.next_dgated);
    else
        s.next_dgated.setZero();
    const bool gated = gate_ && through;
    if (gated) gate_->backward_compute(s.input, s.gate, s.next_dgated, s.gate_work);
    const auto* gg = gated ? (into ? &into->gate : &gate_->gradients()) : nullptr;
    const bool attention_ok = attention_.backward_finite(s.attention_work, ga);
    if (attention_ok && detail::all_finite(s.next_dgated) &&
        (!gated || gate_->backward_finite(s.gate_work, *gg)))
        return Backward(s, through);
    const std::string cause = detail::concat(
        grad_name, "'s largest |entry| ", detail::largest_abs(dout), " (kl_weight ", kl_weight,
        "; the long-term memory's largest |entry| ", detail::largest_abs(s.trace.B),
        ", the queries' ", detail::largest_abs(s.trace.queries), ")");
    const std::string inputs = detail::concat(grad_name, ", kl_weight, a memory and queries");
    if (!attention_ok)
        attention_.explain_backward(where, prefix, cause, inputs, s.attention_work, ga);
    detail::check_backward_result(where, cause, inputs,
                                  gate_
                                      ? "the gradient of the gated chunk, through the memory's fit"
                                      : "dX, the gradient of the chunk stored by the last update()",
                                  s.next_dgated);
    if (gated)
        gate_->explain_backward(where, std::string(prefix) + "mask_net.", cause, inputs,
                                s.gate_work, *gg);
    detail::fail(where, "a backward result is not finite (", cause, ")");
}

template <typename Scalar_>
void LongTermEngine<Scalar_>::accumulate(const Backward& b) {
    attention_.backward_accumulate(b.s_->attention_work);
    if (gate_ && b.through_update_) gate_->backward_accumulate(b.s_->gate_work);
}

template <typename Scalar_>
void LongTermEngine<Scalar_>::accumulate(const Backward& b, Gradients& into) const {
    ContinuousAttention<Scalar>::backward_accumulate(b.s_->attention_work, into.attention);
    if (gate_ && b.through_update_)
        MemoryGate<Scalar>::backward_accumulate(b.s_->gate_work, into.gate);
}

template <typename Scalar_>
void LongTermEngine<Scalar_>::commit_backward(Backward&& b) const {
    StreamState& s = *b.s_;
    s.dB.swap(s.attention_work.dB);  // the next backward overwrites the workspace's
    s.dgated.swap(s.next_dgated);
    s.phase = StreamPhase::consumed;
}

#endif  // INFINITYFORMER_HEADER_ONLY

INFINITYFORMER_EXTERN_TEMPLATE(class, LongTermEngine)

using LongTermEngined = LongTermEngine<double>;
using LongTermEnginef = LongTermEngine<float>;

}  // namespace infinityformer
