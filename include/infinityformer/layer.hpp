/// @file layer.hpp
/// @brief The ∞-former attention layer: causal short-term attention over the current and
/// previous chunk plus long-term attention over everything older, summed (∞-former §3).
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/config.hpp"
#include "detail/math.hpp"
#include "detail/parallel.hpp"
#include "detail/random.hpp"
#include "detail/streams.hpp"
#include "errors.hpp"
#include "hyperparams.hpp"
#include "long_term_engine.hpp"
#include "parameter_view.hpp"
#include "short_term_attention.hpp"

namespace infinityformer {

/// Where a layer's stream is in its sequence of calls.
enum class LayerPhase {
    idle,       ///< no forward() to differentiate (new stream, after reset())
    forwarded,  ///< backward() differentiates the last forward()
    consumed,   ///< backward() consumed the last forward(): nothing to differentiate
};

/// The state of one stream of an InfinityFormerLayer: a value (copy, move, compare).
template <typename Scalar>
struct LayerStream {
    using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

    explicit LayerStream(LongTermStream<Scalar> lt) : long_term(std::move(lt)) {}

    Matrix prev;     ///< chunk c−1: the short-term window's past
    Matrix pending;  ///< chunk c−2: to be stored in the memory at the next forward()
    typename ShortTermAttention<Scalar>::Trace short_term;  ///< the last forward()'s trace
    LongTermStream<Scalar> long_term;  ///< memory, gate inputs, long-term trace and phase
    bool used_long_term = false;       ///< the last forward() read the long-term memory
    LayerPhase phase = LayerPhase::idle;

    /// Equal in everything a later call reads (the workspace below is not compared).
    friend bool operator==(const LayerStream& a, const LayerStream& b) {
        return a.phase == b.phase && a.used_long_term == b.used_long_term &&
               detail::same_values(a.prev, b.prev) && detail::same_values(a.pending, b.pending) &&
               a.short_term == b.short_term && a.long_term == b.long_term;
    }
    friend bool operator!=(const LayerStream& a, const LayerStream& b) { return !(a == b); }

    // workspace
    Matrix q_next, y_next;
    Matrix x_in;  ///< a row-major chunk, copied (forward() of a RowMatrix)
    typename ShortTermAttention<Scalar>::Trace next_short_term;
    typename ShortTermAttention<Scalar>::Work work;
};

/// A read-only view of a layer's long-term part: its settings and weights (the layer's
/// LongTermEngine), and each of the layer's streams' long-term state (memory(s),
/// last_attention(s), last_grad_mu(s), …).
template <typename Scalar>
class LongTermView : public detail::LongTermStreamReader<Scalar, LongTermView<Scalar>> {
    friend class detail::LongTermStreamReader<Scalar, LongTermView<Scalar>>;

public:
    using Index = Eigen::Index;

    LongTermView(const LongTermEngine<Scalar>& engine,
                 const detail::StreamSet<LayerStream<Scalar>>& streams)
        : engine_(&engine), streams_(&streams) {}

    /// The weights and settings.
    const LongTermEngine<Scalar>& engine() const { return *engine_; }
    Index dim() const { return engine_->dim(); }
    Index chunk_length() const { return engine_->chunk_length(); }
    Index num_heads() const { return engine_->num_heads(); }
    Index d_model() const { return engine_->d_model(); }
    const LongTermParams& params() const { return engine_->params(); }
    const ContinuousAttention<Scalar>& attention() const { return engine_->attention(); }
    bool has_gate() const { return engine_->has_gate(); }
    const MemoryGate<Scalar>& gate() const { return engine_->gate(); }

private:
    Index stream_count() const { return streams_->size(); }
    const LongTermStream<Scalar>& stream_at(const char* where, Index stream) const {
        return streams_->at(where, stream).long_term;
    }

    const LongTermEngine<Scalar>* engine_;
    const detail::StreamSet<LayerStream<Scalar>>* streams_;
};

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
/// Each stream's state (LayerStream: the window's previous chunk, the chunk waiting to be
/// stored, the short-term trace, the long-term stream state, the phase, the workspaces)
/// has one owner, the layer; the parts (ShortTermAttention, LongTermEngine) hold only
/// weights and gradients, and long_term() is a read-only view of the long-term part. Every call
/// computes aside and keeps the result only once it is complete and finite: a call that throws
/// leaves the streams, the weights and the gradients as they were.
///
/// \tparam Scalar_ float or double.
template <typename Scalar_>
class InfinityFormerLayer {
    static_assert(std::is_floating_point_v<Scalar_>, "InfinityFormerLayer needs float or double");
    static_assert(detail::instantiable_scalar<Scalar_>(),
                  "infinityformer::compiled holds InfinityFormerLayer<float> and <double> only");

public:
    using Scalar = Scalar_;
    using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
    using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    /// Row-major chunks (forward()'s overload for a row-major output).
    using RowMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    using Index = Eigen::Index;
    using StreamState = LayerStream<Scalar>;

    /// Short-term attention weights (y = W x, all d × d, no biases).
    using ShortTermWeights = typename ShortTermAttention<Scalar>::Weights;

    /// @param d_model d ≥ 1. @param num_heads H, divides d. @param chunk_length L ≥ 1.
    /// @param params long-term memory hyper-parameters (validated); params.seed is the base
    ///        seed of every initial weight and of the streams' sampling.
    InfinityFormerLayer(Index d_model, Index num_heads, Index chunk_length,
                        const LongTermParams& params = LongTermParams{});

    Index d_model() const { return short_.d_model(); }
    Index num_heads() const { return short_.num_heads(); }
    Index head_size() const { return short_.head_size(); }
    Index chunk_length() const { return length_; }

    /// Read-only view of the long-term part (settings, weights, each stream's memory).
    LongTermView<Scalar> long_term() const { return LongTermView<Scalar>(ltm_, streams_); }
    /// The short-term attention (read-only).
    const ShortTermAttention<Scalar>& short_term() const { return short_; }
    const ShortTermWeights& short_term_weights() const { return short_.weights(); }

    /// @throws infinityformer::invalid_argument on a wrong shape or non-finite entry.
    void set_short_term_weights(const ShortTermWeights& w);
    /// nn.Linear's initialisation U(±1/√d) from a seeded generator (seed used as given).
    void init_short_term_weights(std::uint64_t seed);
    /// The long-term attention's weights. @throws infinityformer::invalid_argument.
    void set_long_term_weights(const typename ContinuousAttention<Scalar>::Weights& w);
    /// The memory gate's weights. @throws infinityformer::logic_error without a gate.
    void set_gate_weights(const typename MemoryGate<Scalar>::Weights& w);
    /// Restarts the stream's sticky-sampling generator as params.seed = `seed` would have it.
    void seed_stream(std::uint64_t seed, Index stream = 0);

    /// Number of independent streams (default 1).
    Index num_streams() const { return streams_.size(); }
    /// Adds or removes streams; new streams start empty, existing ones keep their state.
    /// @throws infinityformer::invalid_argument if n < 1 or the streams would not fit in
    ///         the machine's memory (nothing changed).
    void set_num_streams(Index n);
    /// A new, empty stream state for stream index `index` (to fill and give to
    /// set_stream_state()).
    StreamState make_stream(Index index) const;

    /// The stream's whole state (a value: copy it, compare it).
    const StreamState& stream_state(Index stream = 0) const {
        return state("InfinityFormerLayer::stream_state", stream);
    }

    /// Bytes of one stream's state and workspace once it has been through forwards and
    /// backwards, the stream object included, at most: set_num_streams() refuses a count
    /// whose streams would not fit in the machine's memory.
    double stream_bytes() const {
        return stream_bytes_for(d_model(), num_heads(), length_, ltm_.params());
    }

    /// Replaces a stream's state by `s` (a saved stream restored by
    /// <infinityformer/io/state.hpp>, or a copy of another stream's stream_state()): the
    /// window's previous chunk, the chunk waiting to be stored and the long-term memory with
    /// its generator are taken; the traces are not, so the stream is idle (its last
    /// forward() before the state was taken cannot be differentiated afterwards); a reset()
    /// restarts its generator as stream `stream`'s. Build `s` with make_stream(stream) when
    /// it does not come from a layer.
    /// @throws infinityformer::invalid_argument if a chunk is not 0 or L rows of d finite
    ///         values, a chunk waits without a window before it, or the long-term part does
    ///         not fit this layer (stream unchanged).
    void set_stream_state(StreamState s, Index stream = 0);

    /// The checks of set_stream_state(), then what it keeps of `s` (the traces cleared, the
    /// stream idle); errors name `where` (a reader that checks before it commits).
    void take_stream_state(const char* where, StreamState& s) const;

    /// Processes the next chunk of a stream. @param X L × d, finite. @return L × d.
    /// @throws infinityformer::invalid_argument (state unchanged).
    Matrix forward(const Eigen::Ref<const Matrix>& X, Index stream = 0);

    /// forward() into caller storage Y (L × d; may alias X): no allocation once the stream
    /// is in its steady state (from its fourth chunk on).
    void forward(const Eigen::Ref<const Matrix>& X, Eigen::Ref<Matrix> Y, Index stream = 0);

    /// forward() into row-major caller storage Y (L × d) of a row-major chunk X (L × d): X is
    /// copied into the stream's own column-major workspace, so that this too allocates
    /// nothing once the stream is in its steady state, and Y is bit for bit what forward()
    /// of a column-major copy of X gives. The output's storage order chooses the overload:
    /// give X in Y's order (an X in the other order binds through Eigen::Ref's temporary
    /// copy, one allocation per call). Y may alias X.
    void forward(const Eigen::Ref<const RowMatrix>& X, Eigen::Ref<RowMatrix> Y, Index stream = 0);

    /// forward() of one chunk on each of the streams 0 … S−1 (S = X.size() ≤ num_streams()),
    /// the streams shared out between `threads` threads (contiguous blocks): Y[s] is what
    /// forward(X[s], s) gives, bit for bit. All or nothing: if any stream's forward fails,
    /// no stream changes and the error of the first failing stream is thrown.
    /// @param X S chunks (L × d). @param Y resized to S outputs (L × d).
    void forward_streams(const std::vector<Matrix>& X, std::vector<Matrix>& Y, int threads = 1);

    /// forward_streams() on a stacked batch: X is B·L × d, rows b·L … (b+1)·L−1 the chunk of
    /// stream b, for the streams 0 … B−1 (B ≤ num_streams()), shared out between `threads`
    /// threads; Y (B·L × d, may alias X) receives the outputs stacked the same way, each
    /// block bit for bit what forward(X_b, Y_b, b) gives. X's and Y's blocks are used in
    /// place (no copy; blocks of column-major matrices are fine). All or nothing: if any
    /// stream's forward fails, no stream changes, Y is not written, and the error of the
    /// first failing stream is thrown. Allocates what forward_streams() allocates for its
    /// own bookkeeping (two small vectors, and the threads it starts), nothing per stream
    /// once the streams are in their steady state.
    /// @throws infinityformer::invalid_argument if X's rows are not a positive multiple of
    ///         L or B > num_streams(), X's columns are not d, Y's shape differs from X's,
    ///         X has a non-finite entry (named with its stream), or threads < 1.
    void forward_batch(const Eigen::Ref<const Matrix>& X, Eigen::Ref<Matrix> Y, int threads = 1);

    /// Backward of the stream's last forward() for ℓ = Σ Y ⊙ dY + kl_weight · Σ KL (the
    /// long-term attention's regulariser): accumulates the gradients of every weight
    /// (short-term, long-term, gate) and returns ∂ℓ/∂X of that chunk. A forward() is
    /// differentiated once: the backward that succeeds consumes its trace (a second one
    /// would add the gradients again).
    ///
    /// Truncated back-propagation, as the authors train: the previous chunk in the
    /// short-term window and the memory of older chunks are constants. The chunk stored in
    /// the memory during this forward() (chunk c−2) gives gradients to the gate's weights
    /// through the fit, but not to chunk c−2's inputs.
    /// @param dY L × d. @param kl_weight ≥ 0. @param dX L × d, receives ∂ℓ/∂X.
    /// @throws infinityformer::logic_error without a forward() or once its trace was
    ///         consumed; invalid_argument on shapes, non-finite input or a result that
    ///         overflowed (nothing changed: no gradient, dX not written, the trace still
    ///         differentiable).
    void backward(const Eigen::Ref<const Matrix>& dY, Scalar kl_weight, Eigen::Ref<Matrix> dX,
                  Index stream = 0);

    /// backward() of the last forward() of each of the streams 0 … S−1 (S = dY.size()), the
    /// streams shared out between `threads` threads: each thread accumulates into its own
    /// gradients (Gradients, laid out as the weights), which are then added to the layer's
    /// in thread order. dX[s] is what backward(dY[s], kl_weight, dX[s], s) gives, bit for
    /// bit; the gradients equal the sequential loop's to rounding (the sum is grouped by
    /// thread). Every check is made before anything is computed; the gradients, the streams
    /// and dX change only once every stream is done and every sum is finite (all or
    /// nothing). Allocates one set of gradients per thread. @param dX resized to S matrices
    /// (L × d).
    void backward_streams(const std::vector<Matrix>& dY, Scalar kl_weight, std::vector<Matrix>& dX,
                          int threads = 1);

    /// backward_streams() on a stacked batch: dY is B·L × d, rows b·L … (b+1)·L−1 the upstream
    /// gradient of stream b's last forward(), for the streams 0 … B−1; dX (B·L × d, may
    /// alias dY) receives ∂ℓ/∂X stacked the same way, each block bit for bit what
    /// backward(dY_b, kl_weight, dX_b, b) gives; the gradients as backward_streams() sums
    /// them. The same checks, order and all-or-nothing guarantee as backward_streams();
    /// blocks used in place.
    /// @throws infinityformer::invalid_argument as forward_batch() on the shapes (dY's
    ///         rows, dX's shape), on a non-finite entry of dY (named with its stream), a
    ///         bad kl_weight or a result that overflowed; logic_error as backward().
    void backward_batch(const Eigen::Ref<const Matrix>& dY, Scalar kl_weight, Eigen::Ref<Matrix> dX,
                        int threads = 1);

    /// Short-term gradients accumulated by backward() (layout of ShortTermWeights).
    const ShortTermWeights& short_term_gradients() const { return short_.gradients(); }

    /// Sets every accumulated gradient (short-term, long-term, gate) to zero.
    void zero_grad();

    /// Named weights with their gradients: short_term.{query,key,value,out}.weight and
    /// long_term.* (LongTermEngine::append_parameters()).
    std::vector<Parameter<Scalar>> parameters();

    /// Starts a new document on a stream: forgets its window and its long-term memory. The
    /// stream's sticky-sampling generator restarts from its seed by default, so replaying a
    /// document after reset() gives the same outputs as the first time;
    /// ResetGenerator::keep lets it continue (the reference's behaviour: other samples).
    void reset(Index stream = 0, ResetGenerator generator = ResetGenerator::restart);

private:
    // A thread's own sum of gradients, laid out as the weights.
    struct Gradients {
        ShortTermWeights short_term;
        typename LongTermEngine<Scalar>::Gradients long_term;
    };
    Gradients zero_gradients() const { return {short_.zero_gradients(), ltm_.zero_gradients()}; }
    // parameters() with the gradients `g` in place of the accumulated ones.
    std::vector<Parameter<Scalar>> parameters_with(Gradients& g) {
        std::vector<Parameter<Scalar>> out;
        short_.append_parameters(out, "short_term.", g.short_term);
        ltm_.append_parameters(out, "long_term.", &g.long_term);
        return out;
    }

    // A forward computed aside (prepare_forward()) for commit_forward(): move-only.
    struct Step {
        StreamState* s;
        std::optional<typename LongTermEngine<Scalar>::Step> long_term;
    };
    // A backward computed aside and checked (prepare_backward()): move-only.
    struct Backward {
        StreamState* s;
        std::optional<typename LongTermEngine<Scalar>::Backward> long_term;
    };

    // The computing half of forward(): everything into the stream's workspace (the output
    // is then s.y_next); nothing a later call reads changes. X checked.
    Step prepare_forward(const char* where, StreamState& s, const Eigen::Ref<const Matrix>& X) {
        Step step{&s, std::nullopt};
        short_.project_queries(X, s.q_next);
        short_.forward_unchecked(s.prev, X, s.q_next, s.next_short_term);
        short_.check_trace(where, "short_term.", s.next_short_term);
        const Eigen::Ref<const Matrix> pending(s.pending);
        const Eigen::Ref<const Matrix> queries(s.next_short_term.q);
        const bool store = s.pending.rows() > 0;  // chunk c−2
        if (store || !s.long_term.memory.empty()) {
            step.long_term.emplace(ltm_.prepare_step(where, s.long_term, store ? &pending : nullptr,
                                                     nullptr, &queries, "long_term."));
            s.y_next = s.next_short_term.output + step.long_term->output();
        } else {
            s.y_next = s.next_short_term.output;
        }
        if (!detail::all_finite(s.y_next))
            detail::fail(where,
                         "the output Y = short-term + long-term overflowed (largest "
                         "|short-term| ",
                         detail::largest_abs(s.next_short_term.output), ", |long-term| ",
                         detail::largest_abs(s.long_term.next_trace.output),
                         "), expected smaller inputs");
        return step;
    }

    // The keeping half: swaps and copies only (nothing throws).
    void commit_forward(Step&& step) {
        StreamState& s = *step.s;
        s.used_long_term = step.long_term.has_value();
        if (step.long_term) ltm_.commit_step(std::move(*step.long_term));
        std::swap(s.short_term, s.next_short_term);
        s.pending.swap(s.prev);   // chunk c−1 leaves the window: stored at the next call
        s.prev = s.short_term.x;  // (not X: Y may alias it)
        s.phase = LayerPhase::forwarded;
    }

    // Every check of backward() but dX's shape.
    void check_backward(const char* where, const StreamState& s, const Eigen::Ref<const Matrix>& dY,
                        Scalar kl_weight) const {
        check_phase(where, s);
        detail::check_matrix(where, "dY", dY, length_, d_model());
        detail::check_kl_weight(where, kl_weight);
        if (s.used_long_term) ltm_.check_backward(where, s.long_term, dY, kl_weight);
    }

    // A forward() to differentiate, its trace not consumed.
    static void check_phase(const char* where, const StreamState& s) {
        if (s.phase == LayerPhase::consumed)
            throw infinityformer::logic_error(detail::concat(
                "[infinityformer] ", where,
                ": the trace of the last forward() was consumed by the previous backward(), "
                "expected a new forward() before the next backward() (a second backward() of "
                "one forward() would add its gradients again)"));
        if (s.phase != LayerPhase::forwarded)
            throw infinityformer::logic_error(detail::concat(
                "[infinityformer] ", where,
                ": no forward() to differentiate, expected a call to forward() first"));
    }

    // backward() after the checks: every result computed into the stream's workspace and
    // checked with the gradients it will be added to (`into`, a thread's own, or the
    // layer's). Reads the weights only, so threads may run it at once on distinct streams.
    // Throws invalid_argument (nothing changed) if a result overflowed.
    Backward prepare_backward(const char* where, StreamState& s, const Eigen::Ref<const Matrix>& dY,
                              Scalar kl_weight, const Gradients* into) const {
        Backward b{&s, std::nullopt};
        auto& w = s.work;
        short_.backward_unchecked(s.short_term, dY, w);
        if (s.used_long_term) {
            b.long_term.emplace(ltm_.prepare_backward(where, "long_term.", "dY", s.long_term, dY,
                                                      kl_weight,
                                                      into ? &into->long_term : nullptr));
            w.dq += ltm_.dqueries(*b.long_term);  // chunk c−2's own gradient is not propagated
        }
        short_.finish_backward_compute(s.short_term, dY, w);
        const ShortTermWeights& st = into ? into->short_term : short_.gradients();
        if (!ShortTermAttention<Scalar>::finish_backward_finite(w, st)) {
            const std::string long_term =
                s.used_long_term ? detail::concat(
                                       "; the long-term part's gradient of the queries, largest "
                                       "|entry| ",
                                       detail::largest_abs(ltm_.dqueries(*b.long_term)))
                                 : std::string();
            ShortTermAttention<Scalar>::explain_backward(
                where, "short_term.",
                detail::concat("dY's largest |entry| ", detail::largest_abs(dY), " (kl_weight ",
                               kl_weight, "; the short-term window's largest |entry| ",
                               detail::largest_abs(s.short_term.kv_in), long_term, ")"),
                "dY, kl_weight and a window", w, st);
        }
        return b;
    }

    // Adds a prepared backward's gradients to `into`, or to the layer's (nothing throws).
    void accumulate(const Backward& b, Gradients* into) {
        if (into) {
            ShortTermAttention<Scalar>::finish_backward_accumulate(b.s->work, into->short_term);
            if (b.long_term) ltm_.accumulate(*b.long_term, into->long_term);
        } else {
            short_.finish_backward_accumulate(b.s->work);
            if (b.long_term) ltm_.accumulate(*b.long_term);
        }
    }

    // The stream's part of a backward that succeeded: dX written, the trace consumed
    // (copies and swaps only; nothing throws).
    void commit_backward(Backward&& b, Eigen::Ref<Matrix> dX) const {
        StreamState& s = *b.s;
        dX = s.work.dx;
        if (b.long_term) ltm_.commit_backward(std::move(*b.long_term));
        s.phase = LayerPhase::consumed;
    }

    // The number of streams of a batch call, checked.
    Index check_batch(const char* where, std::size_t size, int threads) const {
        const auto count = static_cast<Index>(size);
        detail::require(count >= 1 && count <= num_streams(), where, "the batch has ", count,
                        " streams, expected 1 to num_streams() = ", num_streams());
        detail::require(threads >= 1, where, "threads is ", threads, ", expected >= 1");
        return count;
    }

    // The B streams of a stacked batch call (forward_batch(), backward_batch()), checked:
    // `in` is B·L × d with 1 <= B <= num_streams(), `out` has its shape.
    Index check_stacked(const char* where, const char* in_name, const Eigen::Ref<const Matrix>& in,
                        const char* out_name, const Eigen::Ref<const Matrix>& out,
                        int threads) const {
        const Index rows = in.rows(), b = rows / length_;
        if (in.cols() != d_model() || rows == 0 || rows % length_ != 0)
            detail::fail(where, in_name, " is ", rows, "x", in.cols(),
                         ", expected B*L x d: B >= 1 chunks stacked (one per stream) with L = "
                         "chunk_length() = ",
                         length_, " and d = d_model() = ", d_model());
        detail::require(b <= num_streams(), where, in_name, " stacks B = ", b, " chunks of ",
                        length_, " rows, expected 1 to num_streams() = ", num_streams());
        detail::check_shape(where, out_name, out, rows, d_model());
        detail::require(threads >= 1, where, "threads is ", threads, ", expected >= 1");
        return b;
    }

    // The chunks of a batch call as the caller gave them, viewed without a copy: the S
    // matrices of a *_streams call, each checked L × d and finite (named "X[s]"), or the
    // row blocks of a *_batch call's stacked matrix (shape checked by check_stacked(), each
    // block checked finite, named "X's rows a to b (stream s)").
    struct Chunks {
        const std::vector<Matrix>* list;
        const Eigen::Ref<const Matrix>* stacked;
        const char* name;
        Index length;
        Eigen::Ref<const Matrix> operator[](Index i) const {
            if (list) return Eigen::Ref<const Matrix>((*list)[static_cast<std::size_t>(i)]);
            return Eigen::Ref<const Matrix>(stacked->middleRows(i * length, length));
        }
    };
    // Where a batch call writes: S matrices (resized at the commit) or a stacked matrix's
    // row blocks (shape checked).
    struct Outputs {
        std::vector<Matrix>* list;
        Eigen::Ref<Matrix>* stacked;
        Index length;
        Eigen::Ref<Matrix> operator[](Index i) const {
            if (list) return Eigen::Ref<Matrix>((*list)[static_cast<std::size_t>(i)]);
            return Eigen::Ref<Matrix>(stacked->middleRows(i * length, length));
        }
    };
    // Chunk i's own checks (shape and finiteness), the message naming its stream.
    void check_chunk(const char* where, const Chunks& in, Index i) const;

    // The body of forward_streams() and forward_batch(): the streams 0 … count−1 prepared
    // on `threads` threads, then committed in order if all succeeded.
    void forward_each(const char* where, Index count, int threads, const Chunks& X,
                      const Outputs& Y);
    // The body of backward_streams() and backward_batch().
    void backward_each(const char* where, Index count, int threads, const Chunks& dY,
                       Scalar kl_weight, const Outputs& dX);

    static Index validated(Index d_model, Index heads, Index length, const LongTermParams& p) {
        constexpr const char* where = "InfinityFormerLayer::InfinityFormerLayer";
        detail::check_heads(where, "d_model", d_model, heads);
        detail::require(length >= 1, where, "chunk_length is ", length, ", expected >= 1");
        p.template validate_for<Scalar>(where);
        // Everything the constructor allocates (each part also checks its own): the
        // short-term weights, the long-term module with its stream, and the layer's stream.
        const double l = static_cast<double>(length), dm = static_cast<double>(d_model);
        detail::require_allocatable(
            where,
            "the weights, the memory's operators and one stream (num_heads x chunk_length^2 "
            "attention weights, d_model^2 weights)",
            std::max(2 * static_cast<double>(heads) * l * l, dm * dm),
            ShortTermAttention<Scalar>::weight_bytes(d_model) +
                LongTermMemory<Scalar>::operator_bytes(length, p.memory_params()) +
                ContinuousAttention<Scalar>::weight_bytes(p.num_basis, d_model, d_model) +
                (p.gate ? MemoryGate<Scalar>::weight_bytes(d_model) : 0.0) +
                LongTermEngine<Scalar>::stream_bytes_for(d_model, heads, length, d_model, p) +
                stream_bytes_for(d_model, heads, length, p));
        return length;
    }

    // stream_bytes() of a layer of these sizes: the short-term window, two traces and the
    // backward workspace, and the long-term part (LongTermAttention::stream_bytes_for()).
    static double stream_bytes_for(Index d_model, Index heads, Index length,
                                   const LongTermParams& p) {
        const double h = static_cast<double>(heads), l = static_cast<double>(length),
                     d = static_cast<double>(d_model);
        constexpr double blocks = 33, per_block = 64;  // allocations, and each one's overhead
        return static_cast<double>(sizeof(StreamState) - sizeof(LongTermStream<Scalar>)) +
               static_cast<double>(sizeof(Scalar)) * (33 * l * d + 6 * h * l * l + h * l) +
               blocks * per_block +
               LongTermEngine<Scalar>::stream_bytes_for(d_model, heads, length, d_model, p);
    }

    StreamState& state(const char* where, Index stream) { return streams_.at(where, stream); }
    const StreamState& state(const char* where, Index stream) const {
        return streams_.at(where, stream);
    }

    Index length_ = 0;
    ShortTermAttention<Scalar> short_;
    LongTermEngine<Scalar> ltm_;  // the long-term weights
    detail::StreamSet<StreamState> streams_;
};

#if INFINITYFORMER_HEADER_ONLY

template <typename Scalar_>
InfinityFormerLayer<Scalar_>::InfinityFormerLayer(Index d_model, Index num_heads,
                                                  Index chunk_length, const LongTermParams& params)
    : length_(validated(d_model, num_heads, chunk_length, params)),
      short_(d_model, num_heads,
             detail::derive_seed(params.seed, detail::SeedPurpose::short_term_weights)),
      ltm_(d_model, num_heads, chunk_length, params, d_model,
           "InfinityFormerLayer::InfinityFormerLayer") {
    set_num_streams(1);
}

template <typename Scalar_>
void InfinityFormerLayer<Scalar_>::set_short_term_weights(const ShortTermWeights& w) {
    short_.set_weights(w);
}

template <typename Scalar_>
void InfinityFormerLayer<Scalar_>::init_short_term_weights(std::uint64_t seed) {
    short_.init_weights(seed);
}

template <typename Scalar_>
void InfinityFormerLayer<Scalar_>::set_long_term_weights(
    const typename ContinuousAttention<Scalar>::Weights& w) {
    ltm_.set_attention_weights(w);
}

template <typename Scalar_>
void InfinityFormerLayer<Scalar_>::set_gate_weights(const typename MemoryGate<Scalar>::Weights& w) {
    ltm_.set_gate_weights(w);
}

template <typename Scalar_>
void InfinityFormerLayer<Scalar_>::seed_stream(std::uint64_t seed, Index stream) {
    state("InfinityFormerLayer::seed_stream", stream).long_term.memory.seed(seed);
}

template <typename Scalar_>
void InfinityFormerLayer<Scalar_>::set_num_streams(Index n) {
    streams_.resize("InfinityFormerLayer::set_num_streams", n, stream_bytes(),
                    [&](Index s) { return make_stream(s); });
}

template <typename Scalar_>
auto InfinityFormerLayer<Scalar_>::make_stream(Index index) const -> StreamState {
    return StreamState(ltm_.make_stream(index));
}

template <typename Scalar_>
void InfinityFormerLayer<Scalar_>::set_stream_state(StreamState s, Index stream) {
    constexpr const char* where = "InfinityFormerLayer::set_stream_state";
    StreamState& target = state(where, stream);
    take_stream_state(where, s);
    s.long_term.memory.set_stream_index(stream);  // its generator restarts as this stream's
    target = std::move(s);
}

template <typename Scalar_>
void InfinityFormerLayer<Scalar_>::take_stream_state(const char* where, StreamState& s) const {
    for (Matrix* chunk : {&s.prev, &s.pending}) {
        if (chunk->rows() == 0) chunk->resize(0, d_model());
        detail::check_matrix(where, chunk == &s.prev ? "state.prev" : "state.pending", *chunk,
                             chunk->rows() == 0 ? 0 : length_, d_model());
    }
    detail::require(s.pending.rows() == 0 || s.prev.rows() > 0, where,
                    "state.pending holds a chunk but state.prev is empty, expected the "
                    "window's chunk after the one waiting to be stored");
    s.long_term.phase = StreamPhase::idle;       // the layer attends after every update
    ltm_.take_stream_state(where, s.long_term);  // checks the long-term part
    s.short_term = typename ShortTermAttention<Scalar>::Trace{};
    s.used_long_term = false;
    s.phase = LayerPhase::idle;
}

template <typename Scalar_>
auto InfinityFormerLayer<Scalar_>::forward(const Eigen::Ref<const Matrix>& X, Index stream)
    -> Matrix {
    Matrix Y(length_, d_model());
    forward(X, Y, stream);
    return Y;
}

template <typename Scalar_>
void InfinityFormerLayer<Scalar_>::forward(const Eigen::Ref<const Matrix>& X, Eigen::Ref<Matrix> Y,
                                           Index stream) {
    constexpr const char* where = "InfinityFormerLayer::forward";
    StreamState& s = state(where, stream);
    detail::check_matrix(where, "X", X, length_, d_model());
    detail::check_shape(where, "Y", Y, length_, d_model());
    commit_forward(prepare_forward(where, s, X));
    Y = s.y_next;
}

template <typename Scalar_>
void InfinityFormerLayer<Scalar_>::forward(const Eigen::Ref<const RowMatrix>& X,
                                           Eigen::Ref<RowMatrix> Y, Index stream) {
    constexpr const char* where = "InfinityFormerLayer::forward";
    StreamState& s = state(where, stream);
    detail::check_matrix(where, "X", X, length_, d_model());
    detail::check_shape(where, "Y", Y, length_, d_model());
    s.x_in = X;  // sized once: no allocation from the second call on
    commit_forward(prepare_forward(where, s, s.x_in));
    Y = s.y_next;
}

template <typename Scalar_>
void InfinityFormerLayer<Scalar_>::check_chunk(const char* where, const Chunks& in, Index i) const {
    const Eigen::Ref<const Matrix> x = in[i];
    if (in.list) {
        const std::string name = detail::concat(in.name, "[", i, "]");
        detail::check_matrix(where, name.c_str(), x, length_, d_model());
    } else if (!detail::all_finite(x)) {
        const std::string name = detail::concat(in.name, "'s rows ", i * length_, " to ",
                                                (i + 1) * length_ - 1, " (stream ", i, ")");
        detail::check_finite(where, name.c_str(), x);
    }
}

template <typename Scalar_>
void InfinityFormerLayer<Scalar_>::forward_each(const char* where, Index count, int threads,
                                                const Chunks& X, const Outputs& Y) {
    for (Index i = 0; i < count; ++i) check_chunk(where, X, i);
    std::vector<std::optional<Step>> steps(static_cast<std::size_t>(count));
    std::vector<std::exception_ptr> errors(static_cast<std::size_t>(count));
    detail::parallel_blocks(count, threads, [&](Index begin, Index end, Index) {
        for (Index i = begin; i < end; ++i) {
            try {
                steps[static_cast<std::size_t>(i)].emplace(
                    prepare_forward(where, streams_[i], X[i]));
            } catch (...) {
                errors[static_cast<std::size_t>(i)] = std::current_exception();
            }
        }
    });
    for (const auto& e : errors)
        if (e) std::rethrow_exception(e);
    // Every X read: Y may alias it from here on.
    if (Y.list) {
        Y.list->resize(static_cast<std::size_t>(count));
        for (auto& y : *Y.list) y.resize(length_, d_model());
    }
    for (Index i = 0; i < count; ++i) {
        commit_forward(std::move(*steps[static_cast<std::size_t>(i)]));
        Y[i] = streams_[i].y_next;
    }
}

template <typename Scalar_>
void InfinityFormerLayer<Scalar_>::forward_streams(const std::vector<Matrix>& X,
                                                   std::vector<Matrix>& Y, int threads) {
    constexpr const char* where = "InfinityFormerLayer::forward_streams";
    const Index count = check_batch(where, X.size(), threads);
    forward_each(where, count, threads, Chunks{&X, nullptr, "X", length_},
                 Outputs{&Y, nullptr, length_});
}

template <typename Scalar_>
void InfinityFormerLayer<Scalar_>::forward_batch(const Eigen::Ref<const Matrix>& X,
                                                 Eigen::Ref<Matrix> Y, int threads) {
    constexpr const char* where = "InfinityFormerLayer::forward_batch";
    const Index count = check_stacked(where, "X", X, "Y", Y, threads);
    forward_each(where, count, threads, Chunks{nullptr, &X, "X", length_},
                 Outputs{nullptr, &Y, length_});
}

template <typename Scalar_>
void InfinityFormerLayer<Scalar_>::backward(const Eigen::Ref<const Matrix>& dY, Scalar kl_weight,
                                            Eigen::Ref<Matrix> dX, Index stream) {
    constexpr const char* where = "InfinityFormerLayer::backward";
    StreamState& s = state(where, stream);
    check_backward(where, s, dY, kl_weight);
    detail::check_shape(where, "dX", dX, length_, d_model());
    Backward b = prepare_backward(where, s, dY, kl_weight, nullptr);
    accumulate(b, nullptr);
    commit_backward(std::move(b), dX);
}

template <typename Scalar_>
void InfinityFormerLayer<Scalar_>::backward_each(const char* where, Index count, int threads,
                                                 const Chunks& dY, Scalar kl_weight,
                                                 const Outputs& dX) {
    for (Index i = 0; i < count; ++i) {
        check_phase(where, streams_[i]);
        check_chunk(where, dY, i);
        check_backward(where, streams_[i], dY[i], kl_weight);
    }
    const Index workers = std::min<Index>(threads, count);
    std::vector<Gradients> sums(static_cast<std::size_t>(workers), zero_gradients());
    std::vector<std::optional<Backward>> done(static_cast<std::size_t>(count));
    std::vector<std::exception_ptr> errors(static_cast<std::size_t>(workers));
    detail::parallel_blocks(count, threads, [&](Index begin, Index end, Index w) {
        Gradients& mine = sums[static_cast<std::size_t>(w)];
        try {
            for (Index i = begin; i < end; ++i) {
                auto& b = done[static_cast<std::size_t>(i)];
                b.emplace(prepare_backward(where, streams_[i], dY[i], kl_weight, &mine));
                accumulate(*b, &mine);
            }
        } catch (...) {
            errors[static_cast<std::size_t>(w)] = std::current_exception();
        }
    });
    for (const auto& e : errors)
        if (e) std::rethrow_exception(e);
    // The sums aside, checked, then kept.
    const auto own = parameters();
    std::vector<Matrix> total(own.size());
    for (std::size_t k = 0; k < own.size(); ++k) total[k] = own[k].gradient();
    for (auto& g : sums) {
        const auto theirs = parameters_with(g);
        for (std::size_t k = 0; k < own.size(); ++k) total[k] += theirs[k].gradient();
    }
    for (std::size_t k = 0; k < own.size(); ++k)
        if (!detail::all_finite(total[k]))
            detail::fail(where, "adding the streams' gradients of weight ", own[k].name,
                         " to the accumulated one (largest |entry| ",
                         detail::largest_abs(own[k].gradient()),
                         ") overflowed, expected accumulated gradients below ",
                         static_cast<double>(std::numeric_limits<Scalar>::max()),
                         " (zero_grad() after each optimiser step?; nothing was "
                         "accumulated)");
    // Every dY read: dX may alias it from here on.
    if (dX.list) {
        dX.list->resize(static_cast<std::size_t>(count));
        for (auto& dx : *dX.list) dx.resize(length_, d_model());
    }
    for (std::size_t k = 0; k < own.size(); ++k) own[k].gradient() = total[k];
    for (Index i = 0; i < count; ++i)
        commit_backward(std::move(*done[static_cast<std::size_t>(i)]), dX[i]);
}

template <typename Scalar_>
void InfinityFormerLayer<Scalar_>::backward_streams(const std::vector<Matrix>& dY, Scalar kl_weight,
                                                    std::vector<Matrix>& dX, int threads) {
    constexpr const char* where = "InfinityFormerLayer::backward_streams";
    const Index count = check_batch(where, dY.size(), threads);
    backward_each(where, count, threads, Chunks{&dY, nullptr, "dY", length_}, kl_weight,
                  Outputs{&dX, nullptr, length_});
}

template <typename Scalar_>
void InfinityFormerLayer<Scalar_>::backward_batch(const Eigen::Ref<const Matrix>& dY,
                                                  Scalar kl_weight, Eigen::Ref<Matrix> dX,
                                                  int threads) {
    constexpr const char* where = "InfinityFormerLayer::backward_batch";
    const Index count = check_stacked(where, "dY", dY, "dX", dX, threads);
    backward_each(where, count, threads, Chunks{nullptr, &dY, "dY", length_}, kl_weight,
                  Outputs{nullptr, &dX, length_});
}

template <typename Scalar_>
void InfinityFormerLayer<Scalar_>::zero_grad() {
    short_.zero_grad();
    ltm_.zero_grad();
}

template <typename Scalar_>
auto InfinityFormerLayer<Scalar_>::parameters() -> std::vector<Parameter<Scalar>> {
    std::vector<Parameter<Scalar>> out;
    short_.append_parameters(out, "short_term.");
    ltm_.append_parameters(out, "long_term.");
    return out;
}

template <typename Scalar_>
void InfinityFormerLayer<Scalar_>::reset(Index stream, ResetGenerator generator) {
    StreamState& s = state("InfinityFormerLayer::reset", stream);
    s.prev.resize(0, d_model());
    s.pending.resize(0, d_model());
    s.short_term = typename ShortTermAttention<Scalar>::Trace{};
    s.used_long_term = false;
    s.phase = LayerPhase::idle;
    ltm_.reset_stream(s.long_term, generator);
}

#endif  // INFINITYFORMER_HEADER_ONLY

INFINITYFORMER_EXTERN_TEMPLATE(class, InfinityFormerLayer)

using InfinityFormerLayerd = InfinityFormerLayer<double>;
using InfinityFormerLayerf = InfinityFormerLayer<float>;

}  // namespace infinityformer
