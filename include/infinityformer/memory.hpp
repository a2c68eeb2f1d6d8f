/// @file memory.hpp
/// @brief The unbounded long-term memory: τ-compression of the past into a fixed number of
/// basis coefficients, with uniform, sticky or stratified reading of the old memory
/// (∞-former, Martins et al. 2022, §3.2–3.3).
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "basis.hpp"
#include "detail/config.hpp"
#include "detail/limits.hpp"
#include "detail/math.hpp"
#include "detail/random.hpp"
#include "errors.hpp"
#include "hyperparams.hpp"
#include "memory_operators.hpp"
#include "ridge.hpp"
#include "sampling.hpp"
#include "stability.hpp"

namespace infinityformer {

/// The unbounded continuous long-term memory of one stream.
///
/// State (State, a value type: state(), operator==): the coefficients B (N × e) of
/// x̄(t) = Bᵀψ(t), or nothing before the first chunk; the densities observed since; the
/// sampling generator; the counters. The operators (the fits, A, Ψ at the bin edges) are
/// built once per configuration and shared by copies.
/// update() with a chunk X (L × e):
///  - first chunk: B ← G_firstᵀ X, the vectors at the midpoints (j + ½)/L;
///  - later chunks: the old memory is read at M sorted points s (X_past = Ψ(s) B, M × e),
///    placed at τ·i/M, the new chunk at τ + (1 − τ)·j/L, and B ← G_infᵀ [X_past; X]:
///    the past is compressed into [0, τ], the chunk fills (τ, 1].
/// The M points are i/M (uniform), drawn from the sticky-memory histogram of the densities
/// passed to observe() (sticky; left edges of the drawn bins, sorted), or the histogram's
/// quantiles (i − ½)/M (stratified); update(X, points) takes them explicitly. Sticky and
/// stratified fall back to uniform points while no densities with mass in [0, 1] have been
/// observed. The memory costs N × e scalars whatever the length of the stream.
///
/// Cost per chunk: the old memory is not read at the M points when that can be avoided.
/// With the uniform points the update is the fixed linear recurrence B ← A B + G_newᵀ X,
/// A = G_pastᵀ Ψ(s) (N × N, built in double by the constructor). Sticky points are bin
/// edges j/D, so G_pastᵀ Ψ(s) B = (G_pastᵀ S)(Ψ(edges) B), S the M × D selection of the
/// drawn bins: two products with D instead of M rows. Other points take Ψ(s) B, then G_pastᵀ.
///
/// Chunks must have exactly L = chunk_length vectors (the operators are built for L).
/// Odd L, which the reference cannot stream, uses the same position construction
/// (unbounded_positions()).
///
/// \tparam Scalar_ float or double.
/// Every call either completes or leaves the state as it was: update() computes the new
/// coefficients aside and commits them only once they are finite.
///
template <typename Scalar_>
class LongTermMemory {
    static_assert(std::is_floating_point_v<Scalar_>, "LongTermMemory needs float or double");
    static_assert(detail::instantiable_scalar<Scalar_>(),
                  "infinityformer::compiled holds LongTermMemory<float> and <double> only");

public:
    using Scalar = Scalar_;
    using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
    using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    using Index = Eigen::Index;

    /// Everything of one stream's memory that a later call reads: a value (copy, compare).
    struct State {
        bool empty = true;   ///< nothing stored since construction or reset()
        Matrix B;            ///< N × e coefficients (zeros while empty)
        Index tokens = 0;    ///< tokens stored since the last reset
        Vector obs_mu;       ///< means observed since (observe()); empty: none
        Vector obs_sigma;    ///< their standard deviations
        Vector last_points;  ///< points the last update read the memory at (0: first chunk)
        Matrix B_prev;       ///< the memory before the last update (for last_past())
        detail::Random rng;  ///< the sticky-sampling generator
        Scalar peak = 0;     ///< largest |x| stored since the last reset (the run-time bound)
        Index rescaled = 0;  ///< updates whose old memory Stability::stabilise scaled down

        friend bool operator==(const State& a, const State& b) {
            return a.empty == b.empty && a.tokens == b.tokens && a.rescaled == b.rescaled &&
                   (a.peak == b.peak) && detail::same_values(a.B, b.B) &&
                   detail::same_values(a.obs_mu, b.obs_mu) &&
                   detail::same_values(a.obs_sigma, b.obs_sigma) &&
                   detail::same_values(a.last_points, b.last_points) &&
                   detail::same_values(a.B_prev, b.B_prev) && a.rng.engine() == b.rng.engine();
        }
        friend bool operator!=(const State& a, const State& b) { return !(a == b); }
    };

    /// @param dim e ≥ 1, width of the memory vectors.
    /// @param chunk_length L ≥ 1, vectors per chunk.
    /// @param params validated.
    /// @param stream index of the stream this memory serves: its sampling generator is
    ///        seeded with detail::derive_seed(params.seed, SeedPurpose::sampling, stream).
    LongTermMemory(Index dim, Index chunk_length, const MemoryParams& params, Index stream = 0);

    /// The memory's slice of a whole set (params.memory_params()).
    LongTermMemory(Index dim, Index chunk_length, const LongTermParams& params, Index stream = 0)
        : LongTermMemory(dim, chunk_length, params.memory_params(), stream) {}

    LongTermMemory(const LongTermMemory&) = default;
    LongTermMemory& operator=(const LongTermMemory&) = default;
    /// Moves the state out: `o` is left an empty memory of its configuration and stream,
    /// its generator restarted (as after reset() and restart_generator()), on which every
    /// call works. Allocates `o`'s empty coefficients (N × e).
    LongTermMemory(LongTermMemory&& o) : chooser_(o.chooser_) { take(o); }
    LongTermMemory& operator=(LongTermMemory&& o) {
        if (this != &o) take(o);
        return *this;
    }

    Index dim() const { return dim_; }
    Index chunk_length() const { return length_; }
    Index num_basis() const { return ops_->basis.size(); }
    Index num_samples() const { return params_.num_samples; }
    const MemoryParams& params() const { return params_; }
    const GaussianBasis<Scalar>& basis() const { return ops_->basis; }
    /// Single-chunk operator (L × N), used for the first chunk.
    const RidgeFit<Scalar>& first_fit() const { return ops_->first; }
    /// Unbounded-memory operator ((M + L) × N).
    const RidgeFit<Scalar>& unbounded_fit() const { return ops_->inf; }
    /// A = G_pastᵀ Ψ(i/M) (N × N), the operator of the uniform update B ← A B + G_newᵀ X.
    const Matrix& recurrence_operator() const { return ops_->uniform_op; }
    /// Ψ at the D bin edges j/D (D × N), which the sticky update reads the memory at when
    /// D < M; empty for the other samplings.
    const Matrix& bin_edge_basis() const { return ops_->edge_psi; }
    /// How far this configuration's update can amplify the old memory (computed once per
    /// configuration when the first such memory is built).
    const MemoryStability& stability() const { return ops_->stability; }
    /// The run-time bound on max |B|: kBoundSlack · κ · (largest |x| stored since the last
    /// reset); see Stability.
    double coefficient_bound() const {
        return kBoundSlack * ops_->stability.fit_bound * static_cast<double>(state_.peak);
    }

    /// The stream's state (a value: copy it, compare it).
    const State& state() const { return state_; }

    /// Bytes of the operators a configuration builds once and its memories share (the
    /// fits are computed in double over about 2(M + L) positions), at most.
    static double operator_bytes(Index chunk_length, const MemoryParams& p) {
        return MemoryOperators<Scalar>::bytes(chunk_length, p);
    }
    /// Bytes one memory's state and workspace take on the heap once it has been through
    /// every kind of update, at most: besides the object itself (sizeof) and the densities
    /// it observes (two values per query and head).
    static double heap_bytes(Index dim, const MemoryParams& p) {
        const double n = static_cast<double>(p.num_basis), m = static_cast<double>(p.num_samples),
                     e = static_cast<double>(dim), d = static_cast<double>(p.num_bins);
        constexpr double blocks = 24, per_block = 64;  // allocations, and each one's overhead
        return static_cast<double>(sizeof(Scalar)) *
                   (4 * n * e + m * n + m * e + d * e + n * d + 4 * m + n + d) +
               8 * (2 * d + 2 + m) + blocks * per_block;
    }

    /// Replaces the stream's state, for instance with one saved earlier
    /// (<infinityformer/io/state.hpp>) or copied from another memory of the same
    /// configuration; `seed_base` is what restart_generator() will restart from. Checked,
    /// all or nothing: B must be N × e and finite, `empty` exactly when no token is stored,
    /// the token count a multiple of L, the observed means finite with standard deviations
    /// > 0, peak finite and ≥ 0, last_points empty or M finite points, B_prev empty or N × e.
    /// @throws infinityformer::invalid_argument naming the field (state unchanged).
    void set_state(State s, std::uint64_t seed_base);

    /// The seed restart_generator() restarts from (params.seed, or seed()'s).
    std::uint64_t seed_base() const { return seed_base_; }

    /// Same dimensions and parameters but the seed (which a state's generator and seed base
    /// replace): a state of one is valid for the other.
    bool same_configuration(const LongTermMemory& o) const {
        return configuration_difference(o).empty();
    }
    /// The first dimension or parameter (the seed aside) in which `o` differs from this
    /// memory, as "name is X here, Y in the other"; empty if none does.
    std::string configuration_difference(const LongTermMemory& o) const {
        return configuration_difference(dim_, length_, params_, o);
    }
    /// configuration_difference() of a memory of these sizes and parameters (here) from `o`.
    static std::string configuration_difference(Index dim, Index chunk_length,
                                                const MemoryParams& p, const LongTermMemory& o);
    /// The shared operators of this memory's configuration.
    const MemoryOperators<Scalar>& operators() const { return *ops_; }

    /// Makes this the memory of stream `stream`: restart_generator() then seeds the
    /// generator as that stream's (the generator's current state is kept).
    void set_stream_index(Index stream);

    /// True before the first chunk and after reset().
    bool empty() const { return state_.empty; }
    /// B, N × e (zeros while empty()).
    const Matrix& coefficients() const { return state_.B; }
    /// Tokens stored since the last reset.
    Index tokens_stored() const { return state_.tokens; }

    /// Points at which the old memory was read by the last update (M; empty for a first
    /// chunk).
    const Vector& last_sample_points() const { return state_.last_points; }
    /// The values of the old memory at those points (M × e; 0 × e for a first chunk),
    /// computed on demand: the update itself does not always form them.
    /// Empty too after set_state() with a state without B_prev (a restored memory), until
    /// the next update.
    Matrix last_past() const;

    /// Stores a chunk. @param X L × e, finite.
    /// @throws infinityformer::invalid_argument (memory unchanged).
    void update(const Eigen::Ref<const Matrix>& X);

    /// Stores a chunk, reading the old memory at the given points instead of choosing them
    /// (replay, tests). The points are ignored for a first chunk. Whatever the sampling,
    /// the update is held to the run-time bound of params.stability, as sticky and
    /// stratified updates are (points placed by the caller can amplify the memory where
    /// the uniform ones cannot): under Stability::refuse it may throw runtime_error.
    /// @param X L × e. @param sample_points M finite points.
    void update(const Eigen::Ref<const Matrix>& X, const Eigen::Ref<const Vector>& sample_points);

    /// Records the attention densities of the last chunk's queries (all heads), from which
    /// sticky and stratified sampling build their histogram at the next update.
    /// @param mu n means. @param sigma_sq n variances > 0.
    void observe(const Eigen::Ref<const Vector>& mu, const Eigen::Ref<const Vector>& sigma_sq);

    /// Histogram of the observed densities over num_bins bins (zeros if none observed).
    Vector histogram() const;

    /// The M points the next update would read the memory at; for sticky sampling this
    /// draws from the generator (so it advances it).
    Vector next_sample_points();

    /// Backward of the last update's fit: ∂ℓ/∂X = G_new ∂ℓ/∂B, with G_new the rows of the
    /// operator that multiplied the new chunk (G_first for a first chunk, the last L rows of
    /// G_inf otherwise). The old memory is a constant (truncated back-propagation).
    /// @param dB N × e. @param dX L × e.
    /// @throws infinityformer::logic_error before any update; invalid_argument on shapes,
    ///         non-finite input or a dX that would overflow (dX not written).
    void backward(const Eigen::Ref<const Matrix>& dB, Eigen::Ref<Matrix> dX) const;
    void backward_unchecked(const Eigen::Ref<const Matrix>& dB, Eigen::Ref<Matrix> dX) const;

    /// The continuous memory at T positions: x̄(t) = Bᵀψ(t), returned as T × e rows.
    /// token_position() (reach.hpp) gives where a token of a given age sits.
    /// @param t T positions in [0, 1] (outside it the fit was trained towards zero: the
    ///        pads of positions.hpp).
    /// @throws infinityformer::invalid_argument naming the first t[i] outside [0, 1] or not
    ///         finite.
    Matrix evaluate(const Eigen::Ref<const Vector>& t) const;

    /// Forgets everything stored (and the observed densities); the generator continues (as
    /// the periodic reset of reset_after_tokens needs; restart_generator() restarts it).
    void reset();

    /// A memory of the same configuration for stream `stream`: empty, its generator seeded
    /// for that stream, the operators shared with this one (nothing is rebuilt).
    LongTermMemory for_stream(Index stream) const;

    /// Restarts the sticky-sampling generator as a memory of this stream built with
    /// params.seed = `base` would have it (and remembers `base` for restart_generator()).
    void seed(std::uint64_t base);
    /// Restarts the generator from the seed it was last given (params.seed, or seed()'s).
    void restart_generator() { seed(seed_base_); }

    /// Index of the stream this memory serves (its generator's seed depends on it).
    Index stream_index() const { return stream_; }

    /// Same configuration and the same state (the workspace is not compared).
    friend bool operator==(const LongTermMemory& a, const LongTermMemory& b) {
        return a.dim_ == b.dim_ && a.length_ == b.length_ && a.stream_ == b.stream_ &&
               a.seed_base_ == b.seed_base_ && a.params_ == b.params_ && a.state_ == b.state_;
    }
    friend bool operator!=(const LongTermMemory& a, const LongTermMemory& b) { return !(a == b); }

    /// The next state of a memory, computed aside by prepare() and kept by commit(): a
    /// move-only value that only the memory that prepared it can commit, once, and only
    /// while that memory is as it was (nothing in between changed it).
    class Update {
    public:
        Update() = default;
        Update(Update&&) = default;
        Update& operator=(Update&&) = default;
        /// The coefficients the memory would hold (N × e).
        const Matrix& coefficients() const { return B_; }

    private:
        friend class LongTermMemory;
        const LongTermMemory* owner_ = nullptr;
        std::uint64_t version_ = 0;
        Matrix B_;
        Vector points_;
        detail::Random rng_;
        Scalar peak_ = 0;
        bool rescaled_ = false, reset_ = false;
    };

    /// The first half of update(), for modules that attend to the new memory before keeping
    /// it: computes the next state aside (nothing observable changes) and returns it for
    /// commit(); an Update never committed is simply forgotten. X (L × e) must have been
    /// checked; `points` (M) replaces the chosen points when given; errors name `where`.
    /// No allocation in a steady stream (commit() gives the buffers back).
    /// @throws infinityformer::runtime_error if the update would exceed the run-time bound
    ///         (Stability::refuse); infinityformer::invalid_argument if it overflows.
    Update prepare(const char* where, const Eigen::Ref<const Matrix>& X,
                   const Eigen::Ref<const Vector>* points);

    /// Keeps an Update this memory prepared (swaps only).
    /// @throws infinityformer::logic_error if another memory prepared it, it was committed
    ///         already, or this memory changed since it was prepared (memory unchanged).
    void commit(Update&& u);

private:
    // The moves: the state and the workspace are moved, the configuration and the shared
    // operators copied; `o` becomes an empty memory of its configuration.
    void take(LongTermMemory& o) {
        params_ = o.params_;
        dim_ = o.dim_;
        length_ = o.length_;
        stream_ = o.stream_;
        seed_base_ = o.seed_base_;
        ops_ = o.ops_;
        state_ = std::move(o.state_);
        chooser_ = o.chooser_;
        spare_ = std::move(o.spare_);
        psi_ = std::move(o.psi_);
        past_ = std::move(o.past_);
        edge_past_ = std::move(o.edge_past_);
        gathered_ = std::move(o.gathered_);
        fresh_ = std::move(o.fresh_);
        drop_rows_ = std::move(o.drop_rows_);
        drop_cols_ = std::move(o.drop_cols_);
        version_ = o.version_ + 1;  // an Update of `o` is not this memory's
        ++o.version_;
        o.state_ = State();
        o.restart_generator();
        o.reset();
    }

    // A memory fed with zeros decays geometrically: its subnormal coefficients are 0.
    static void drop_subnormal(Matrix& B) {
        detail::zero_below(B.data(), B.size(), std::numeric_limits<Scalar>::min());
    }

    // max |B| ≤ kBoundSlack · κ · peak (κ · peak: the largest coefficient of a fit of
    // values no larger than the largest stored); only an amplified old memory breaks it.
    // `given`: the points came from the caller.
    void hold_bound(const char* where, const Eigen::Ref<const Matrix>& X, bool given, Update& u) {
        Matrix& next = u.B_;
        const double bound = kBoundSlack * ops_->stability.fit_bound * static_cast<double>(u.peak_);
        const double top = detail::largest_abs(next);
        if (top <= bound) return;
        if (params_.stability == Stability::refuse)
            throw infinityformer::runtime_error(detail::concat(
                "[infinityformer] ", where, ": the memory diverges: max |B| would be ", top,
                ", above the bound ", bound, " = ", kBoundSlack, " x kappa (",
                ops_->stability.fit_bound, ") x the largest stored |x| (", u.peak_,
                "), where kappa x |x| bounds every fit of the stored values; the old memory "
                "was amplified by reading it at ",
                given ? "the sample_points given" : "the sampled points", " (",
                to_string(params_.sampling), " sampling, growth up to ",
                ops_->stability.concentrated_growth,
                " per chunk when its points concentrate); expected stability = "
                "Stability::stabilise, more basis functions or wider widths (memory unchanged; "
                "while the attention stays where it is, the next chunks will be refused too: "
                "reset() the stream, or use Stability::stabilise, which keeps it going)"));
        // stabilise: B' = γ·(old memory's share) + G_newᵀ X with max |B'| ≤ bound.
        fresh_.noalias() = ops_->inf.G().bottomRows(length_).transpose() * X;
        next -= fresh_;
        const double past = detail::largest_abs(next);
        const double now = detail::largest_abs(fresh_);
        const double gamma = past > 0.0 ? std::clamp((bound - now) / past, 0.0, 1.0) : 0.0;
        next *= static_cast<Scalar>(gamma);
        next += fresh_;
        u.rescaled_ = true;
    }

    // A non-finite update from finite input: the chunk's magnitude overflowed the fit.
    [[noreturn]] void overflow(const char* where, const Eigen::Ref<const Matrix>& X) const {
        detail::fail(where, "the new memory coefficients B overflowed (largest |x| of the chunk ",
                     detail::largest_abs(X), ", of the memory so far ",
                     detail::largest_abs(state_.B), ", kappa ", ops_->stability.fit_bound,
                     "), expected a chunk with |x| below ",
                     static_cast<double>(std::numeric_limits<Scalar>::max()) /
                         std::max(1.0, ops_->stability.fit_bound),
                     " (memory unchanged)");
    }

    static const MemoryParams& validated(const MemoryParams& p, Index dim, Index length) {
        constexpr const char* where = "LongTermMemory::LongTermMemory";
        p.template validate_for<Scalar>(where);
        detail::require(dim >= 1, where, "dim is ", dim, ", expected >= 1");
        detail::require(length >= 1, where, "chunk_length is ", length, ", expected >= 1");
        const double n = static_cast<double>(p.num_basis), m = static_cast<double>(p.num_samples),
                     l = static_cast<double>(length), e = static_cast<double>(dim),
                     d = static_cast<double>(p.num_bins);
        const double largest = std::max({n * n, n * 2 * (m + l + 1), m * e, d * n, d * e});
        detail::require_allocatable(
            where, "this memory (num_basis, num_samples, chunk_length, dim)", largest,
            operator_bytes(length, p) + heap_bytes(dim, p) + sizeof(LongTermMemory));
        return p;
    }

    void check_chunk(const char* where, const Eigen::Ref<const Matrix>& X) const {
        detail::check_matrix(where, "X", X, length_, dim_);
    }

    MemoryParams params_;
    Index dim_ = 0;
    Index length_ = 0;
    Index stream_ = 0;
    std::uint64_t seed_base_ = 0;  // the seed the generator was last given (seed())
    std::shared_ptr<const MemoryOperators<Scalar>> ops_;
    State state_;
    std::uint64_t version_ = 0;  // counts commits: an Update is for one version
    // workspace of prepare(): no allocation once sized
    SamplePointChooser<Scalar> chooser_;
    // The buffers of the last committed Update, for the next prepare() (a copy of the
    // memory starts without: they are workspace).
    struct Spare {
        Update update;
        Spare() = default;
        Spare(const Spare&) {}
        Spare& operator=(const Spare&) { return *this; }
        Spare(Spare&&) = default;
        Spare& operator=(Spare&&) = default;
    } spare_;
    Matrix psi_, past_, edge_past_, gathered_, fresh_;
    Vector drop_rows_, drop_cols_;
};

#if INFINITYFORMER_HEADER_ONLY

template <typename Scalar_>
LongTermMemory<Scalar_>::LongTermMemory(Index dim, Index chunk_length, const MemoryParams& params,
                                        Index stream)
    : params_(validated(params, dim, chunk_length)),
      dim_(dim),
      length_(chunk_length),
      ops_(MemoryOperators<Scalar>::shared(chunk_length, params_)),
      chooser_(params.sampling, params.num_samples, params.num_bins) {
    if (params_.stability == Stability::refuse)
        ops_->refuse_unstable("LongTermMemory::LongTermMemory", params_, chunk_length, dim);
    detail::require(stream >= 0, "LongTermMemory::LongTermMemory", "stream is ", stream,
                    ", expected >= 0");
    stream_ = stream;
    seed(params.seed);
    reset();
}

template <typename Scalar_>
void LongTermMemory<Scalar_>::set_state(State s, std::uint64_t seed_base) {
    constexpr const char* where = "LongTermMemory::set_state";
    detail::check_matrix(where, "state.B", s.B, num_basis(), dim_);
    constexpr Index most = Index(1) << 62;  // no stream reaches it; the counters cannot overflow
    detail::require(s.tokens >= 0 && s.tokens <= most && s.tokens % length_ == 0, where,
                    "state.tokens is ", s.tokens, ", expected a multiple of chunk_length (",
                    length_, ") from 0 to 2^62");
    detail::require(s.empty == (s.tokens == 0), where, "state.empty is ", s.empty,
                    " with state.tokens ", s.tokens,
                    ", expected empty exactly when no token is stored");
    detail::check_shape(where, "state.obs_sigma", s.obs_sigma, s.obs_mu.size(), 1);
    detail::check_finite(where, "state.obs_mu", s.obs_mu);
    detail::check_finite(where, "state.obs_sigma", s.obs_sigma);
    for (Index q = 0; q < s.obs_sigma.size(); ++q)
        detail::require(s.obs_sigma[q] > Scalar(0), where, "state.obs_sigma[", q, "] is ",
                        s.obs_sigma[q], ", expected > 0");
    detail::require(std::isfinite(static_cast<double>(s.peak)) && s.peak >= Scalar(0), where,
                    "state.peak is ", s.peak, ", expected a finite value >= 0");
    detail::require(s.rescaled >= 0 && s.rescaled <= most, where, "state.rescaled is ", s.rescaled,
                    ", expected 0 to 2^62");
    detail::require(!s.empty || s.last_points.size() == 0, where, "state.last_points holds ",
                    s.last_points.size(), " points of an empty memory, expected none");
    if (s.last_points.size() != 0)
        detail::check_matrix(where, "state.last_points", s.last_points, params_.num_samples, 1);
    if (s.B_prev.size() != 0)
        detail::check_matrix(where, "state.B_prev", s.B_prev, num_basis(), dim_);
    if (s.B_prev.size() == 0) s.B_prev.resize(0, dim_);
    state_ = std::move(s);
    seed_base_ = seed_base;
    ++version_;
}

template <typename Scalar_>
auto LongTermMemory<Scalar_>::configuration_difference(Index dim, Index chunk_length,
                                                       const MemoryParams& p,
                                                       const LongTermMemory& o) -> std::string {
    const std::string sizes =
        detail::first_difference({{"dim", double(dim), double(o.dim_)},
                                  {"chunk_length", double(chunk_length), double(o.length_)}},
                                 "here", "in the other");
    return sizes.empty() ? p.configuration_difference(o.params_, "here", "in the other") : sizes;
}

template <typename Scalar_>
void LongTermMemory<Scalar_>::set_stream_index(Index stream) {
    detail::require(stream >= 0, "LongTermMemory::set_stream_index", "stream is ", stream,
                    ", expected >= 0");
    stream_ = stream;
}

template <typename Scalar_>
auto LongTermMemory<Scalar_>::last_past() const -> Matrix {
    if (state_.last_points.size() == 0 || state_.B_prev.rows() == 0) return Matrix(0, dim_);
    return ops_->basis.evaluate(state_.last_points) * state_.B_prev;
}

template <typename Scalar_>
void LongTermMemory<Scalar_>::update(const Eigen::Ref<const Matrix>& X) {
    constexpr const char* where = "LongTermMemory::update";
    check_chunk(where, X);
    commit(prepare(where, X, nullptr));
}

template <typename Scalar_>
void LongTermMemory<Scalar_>::update(const Eigen::Ref<const Matrix>& X,
                                     const Eigen::Ref<const Vector>& sample_points) {
    constexpr const char* where = "LongTermMemory::update";
    check_chunk(where, X);
    detail::check_matrix(where, "sample_points", sample_points, params_.num_samples, 1);
    commit(prepare(where, X, &sample_points));
}

template <typename Scalar_>
void LongTermMemory<Scalar_>::observe(const Eigen::Ref<const Vector>& mu,
                                      const Eigen::Ref<const Vector>& sigma_sq) {
    constexpr const char* where = "LongTermMemory::observe";
    detail::check_finite(where, "mu", mu);
    detail::check_shape(where, "sigma_sq", sigma_sq, mu.size(), 1);
    detail::check_finite(where, "sigma_sq", sigma_sq);
    for (Index q = 0; q < sigma_sq.size(); ++q)
        detail::require(sigma_sq[q] > Scalar(0), where, "sigma_sq[", q, "] is ", sigma_sq[q],
                        ", expected > 0");
    ++version_;
    state_.obs_mu = mu;
    state_.obs_sigma = sigma_sq.cwiseSqrt();
}

template <typename Scalar_>
auto LongTermMemory<Scalar_>::histogram() const -> Vector {
    return chooser_.histogram(state_.obs_mu, state_.obs_sigma);
}

template <typename Scalar_>
auto LongTermMemory<Scalar_>::next_sample_points() -> Vector {
    ++version_;
    Vector out(params_.num_samples);
    chooser_.choose(state_.obs_mu, state_.obs_sigma, state_.rng, out);
    return out;
}

template <typename Scalar_>
void LongTermMemory<Scalar_>::backward(const Eigen::Ref<const Matrix>& dB,
                                       Eigen::Ref<Matrix> dX) const {
    constexpr const char* where = "LongTermMemory::backward";
    if (state_.empty)
        throw infinityformer::logic_error(
            detail::concat("[infinityformer] ", where,
                           ": no update() to differentiate, expected a call "
                           "to update() first"));
    detail::check_matrix(where, "dB", dB, num_basis(), dim_);
    detail::check_shape(where, "dX", dX, length_, dim_);
    // The checked call computes aside (the layer's path, backward_unchecked(), does not).
    Matrix out(length_, dim_);
    backward_unchecked(dB, out);
    if (!detail::all_finite(out))
        detail::fail_backward<Scalar>(
            where, detail::concat("dB's largest |entry| ", detail::largest_abs(dB)), "dX = G dB",
            "dB");
    dX = out;
}

template <typename Scalar_>
void LongTermMemory<Scalar_>::backward_unchecked(const Eigen::Ref<const Matrix>& dB,
                                                 Eigen::Ref<Matrix> dX) const {
    if (state_.last_points.size() == 0)
        dX.noalias() = ops_->first.G() * dB;
    else
        dX.noalias() = ops_->inf.G().bottomRows(length_) * dB;
}

template <typename Scalar_>
auto LongTermMemory<Scalar_>::evaluate(const Eigen::Ref<const Vector>& t) const -> Matrix {
    for (Index i = 0; i < t.size(); ++i)
        detail::require(t[i] >= Scalar(0) && t[i] <= Scalar(1), "LongTermMemory::evaluate", "t[", i,
                        "] is ", t[i], ", expected a position in [0, 1]");
    const Matrix psi = ops_->basis.evaluate(t);
    return psi * state_.B;
}

template <typename Scalar_>
void LongTermMemory<Scalar_>::reset() {
    ++version_;
    state_.empty = true;
    state_.B.setZero(num_basis(), dim_);
    state_.tokens = 0;
    state_.obs_mu.resize(0);
    state_.obs_sigma.resize(0);
    state_.last_points.resize(0);
    state_.B_prev.resize(0, dim_);
    state_.peak = Scalar(0);
}

template <typename Scalar_>
auto LongTermMemory<Scalar_>::for_stream(Index stream) const -> LongTermMemory {
    detail::require(stream >= 0, "LongTermMemory::for_stream", "stream is ", stream,
                    ", expected >= 0");
    LongTermMemory m(*this);
    m.state_ = State();
    m.stream_ = stream;
    m.seed(params_.seed);
    m.reset();
    return m;
}

template <typename Scalar_>
void LongTermMemory<Scalar_>::seed(std::uint64_t base) {
    ++version_;
    seed_base_ = base;
    state_.rng.seed(detail::derive_seed(base, detail::SeedPurpose::sampling,
                                        static_cast<std::uint64_t>(stream_)));
}

template <typename Scalar_>
auto LongTermMemory<Scalar_>::prepare(const char* where, const Eigen::Ref<const Matrix>& X,
                                      const Eigen::Ref<const Vector>* points) -> Update {
    Update u = std::move(spare_.update);
    u.owner_ = this;
    u.version_ = version_;
    const bool reset =
        params_.reset_after_tokens > 0 && state_.tokens >= params_.reset_after_tokens;
    const bool first = state_.empty || reset;
    const Matrix& G = ops_->inf.G();
    u.rng_ = state_.rng;
    u.reset_ = reset;
    u.rescaled_ = false;
    u.peak_ = std::max(first ? Scalar(0) : state_.peak, X.cwiseAbs().maxCoeff());
    Matrix& next = u.B_;
    next.resize(num_basis(), dim_);
    fresh_.resize(num_basis(), dim_);  // sized here: a first rescale allocates nothing
    if (first) {
        next.noalias() = ops_->first.G().transpose() * X;
        u.points_.resize(0);
        drop_subnormal(next);
        if (!detail::all_finite(next)) overflow(where, X);
        return u;
    }
    bool from_bins = false;
    if (points)
        u.points_ = *points;
    else
        from_bins = chooser_.choose(state_.obs_mu, state_.obs_sigma, u.rng_, u.points_);
    const Index m = params_.num_samples;
    const Index d = params_.num_bins;
    const Matrix& B = state_.B;
    if (u.points_ == ops_->uniform_points) {
        next.noalias() = ops_->uniform_op * B;
    } else if (from_bins && d < m) {
        const auto& bins = chooser_.bins();
        edge_past_.noalias() = ops_->edge_psi * B;  // D × e
        gathered_.setZero(num_basis(), d);          // G_pastᵀ S
        for (Index i = 0; i < m; ++i)
            gathered_.col(bins[static_cast<std::size_t>(i)]) += G.row(i).transpose();
        next.noalias() = gathered_ * edge_past_;
    } else {
        psi_.resize(m, num_basis());
        ops_->basis.evaluate(u.points_, psi_);
        detail::drop_negligible(psi_, false, drop_rows_, drop_cols_);  // Ψ(s) B
        past_.noalias() = psi_ * B;
        next.noalias() = G.topRows(m).transpose() * past_;
    }
    next.noalias() += G.bottomRows(length_).transpose() * X;
    drop_subnormal(next);
    if (!detail::all_finite(next)) overflow(where, X);
    // Only the uniform sampling's own points are bounded by construction under refuse
    // (ρ(A) < 1); points given by the caller can sit anywhere, as sticky and stratified
    // points can, and are held to the run-time bound like theirs.
    const bool bounded_recurrence = params_.sampling == Sampling::uniform && !points;
    if (params_.stability == Stability::stabilise ||
        (params_.stability == Stability::refuse && !bounded_recurrence))
        hold_bound(where, X, points != nullptr, u);
    return u;
}

template <typename Scalar_>
void LongTermMemory<Scalar_>::commit(Update&& u) {
    if (u.owner_ != this || u.version_ != version_)
        throw infinityformer::logic_error(
            "[infinityformer] LongTermMemory::commit: the update was not prepared by this "
            "memory in its current state, expected the Update of the last prepare() of "
            "this memory");
    if (u.reset_) reset();
    // B_prev ← B, B ← the new coefficients (swaps: no copies).
    state_.B_prev.swap(state_.B);
    state_.B.swap(u.B_);
    state_.last_points.swap(u.points_);
    state_.rng = u.rng_;
    state_.empty = false;
    state_.tokens += length_;
    state_.peak = u.peak_;
    if (u.rescaled_) ++state_.rescaled;
    ++version_;
    u.owner_ = nullptr;
    spare_.update = std::move(u);  // its buffers serve the next prepare()
}

#endif  // INFINITYFORMER_HEADER_ONLY

INFINITYFORMER_EXTERN_TEMPLATE(class, LongTermMemory)

using LongTermMemoryd = LongTermMemory<double>;
using LongTermMemoryf = LongTermMemory<float>;

}  // namespace infinityformer
