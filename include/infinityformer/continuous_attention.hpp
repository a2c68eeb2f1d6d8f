/// @file continuous_attention.hpp
/// @brief Multi-head Gaussian continuous attention over a continuous memory
/// x̄(t) = Bᵀψ(t) (∞-former, Martins et al. 2022, §3.1, eqs. 6–8), with the KL regulariser.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "basis.hpp"
#include "detail/config.hpp"
#include "detail/limits.hpp"
#include "detail/math.hpp"
#include "detail/random.hpp"
#include "errors.hpp"
#include "hyperparams.hpp"
#include "parameter_view.hpp"

namespace infinityformer {

/// Gaussian continuous attention, multi-head, over the memory coefficients B (N×e).
///
/// For head h (columns h·d_h … (h+1)·d_h − 1) and query q_i (a row of Q):
///   K_h = B W_K,hᵀ,  V_h = B W_V,hᵀ                       (N × d_h)
///   s = K_h q_{h,i} / √d_h                                  (N)
///   μ = sigmoid(w_μ · s),  σ² = max(softplus(w_σ · s), σ²_min)
///   r = E_{N(μ,σ²)}[ψ]                                      (N)
///   context[i, head h] = V_hᵀ r;  output = context W_Oᵀ     (Q × d_model)
///   KL = ½(σ²/σ₀² − ln(σ²/σ₀²) − 1) [+ ½(μ − μ₀)²/σ₀²]
/// Weights follow y = W x (PyTorch's nn.Linear layout): W_K, W_V are e×e, W_O d_model×e,
/// w_μ and w_σ are N-vectors. The queries are used as given (the reference has a query
/// projection that it never applies). Per-(head, query) results have H·Q rows, row h·Q + i.
///
/// \tparam Scalar_ float or double.
template <typename Scalar_>
class ContinuousAttention {
    static_assert(std::is_floating_point_v<Scalar_>, "ContinuousAttention needs float or double");
    static_assert(detail::instantiable_scalar<Scalar_>(),
                  "infinityformer::compiled holds ContinuousAttention<float> and <double> only");

public:
    using Scalar = Scalar_;
    using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
    using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    using Index = Eigen::Index;

    /// The learnable weights (no biases).
    struct Weights {
        Matrix proj_key;    ///< W_K, e × e
        Matrix proj_value;  ///< W_V, e × e
        Matrix attn_out;    ///< W_O, d_model × e
        Vector mu;          ///< w_μ, N
        Vector sigma;       ///< w_σ, N
    };

    /// Row-major storage for r, whose rows are computed one density at a time.
    using RowMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

    /// What the last forward() computed (kept for inspection and for the backward pass).
    /// Neither the keys B W_Kᵀ nor the H·Q × N scores are formed: w_μ · s needs only
    /// K_hᵀ w_μ = W_K,h (Bᵀ w_μ), one d_h-vector per head (keys() and scores() compute the
    /// full matrices on demand).
    struct Trace {
        Vector u_mu;       ///< Bᵀ w_μ, e
        Vector u_sigma;    ///< Bᵀ w_σ, e
        Vector key_mu;     ///< W_K Bᵀ w_μ, e: rows h·d_h … of head h hold K_hᵀ w_μ
        Vector key_sigma;  ///< W_K Bᵀ w_σ, e
        Matrix values;     ///< B W_Vᵀ, N × e, when the context was computed values-first
                           ///< (empty when R_h B was formed first, see forward())
        Vector a_mu;       ///< w_μ · s, H·Q
        Vector a_sigma;    ///< w_σ · s, H·Q
        Vector mu;         ///< H·Q
        Vector sigma_sq;   ///< after the clamp, H·Q
        RowMatrix r;       ///< E[ψ], H·Q × N
        Matrix context;    ///< Q × e
        Matrix output;     ///< Q × d_model
        Vector kl_reg;     ///< H·Q
        Matrix B;          ///< the memory attended to, N × e (for the backward pass)
        Matrix queries;    ///< Q × e (for the backward pass)
        Matrix rb;         ///< workspace: R_h B (Q × e) on the R·B-first route

        /// Equal in every computed value (the workspace rb is not compared).
        friend bool operator==(const Trace& a, const Trace& b) {
            return detail::same_values(a.u_mu, b.u_mu) &&
                   detail::same_values(a.u_sigma, b.u_sigma) &&
                   detail::same_values(a.key_mu, b.key_mu) &&
                   detail::same_values(a.key_sigma, b.key_sigma) &&
                   detail::same_values(a.values, b.values) && detail::same_values(a.a_mu, b.a_mu) &&
                   detail::same_values(a.a_sigma, b.a_sigma) && detail::same_values(a.mu, b.mu) &&
                   detail::same_values(a.sigma_sq, b.sigma_sq) && detail::same_values(a.r, b.r) &&
                   detail::same_values(a.context, b.context) &&
                   detail::same_values(a.output, b.output) &&
                   detail::same_values(a.kl_reg, b.kl_reg) && detail::same_values(a.B, b.B) &&
                   detail::same_values(a.queries, b.queries);
        }
        friend bool operator!=(const Trace& a, const Trace& b) { return !(a == b); }
    };

    /// @param basis the memory's basis (N functions; N is the basis's).
    /// @param dim e, width of the memory vectors and of the queries.
    /// @param num_heads H, must divide dim.
    /// @param d_model output width (0 means dim).
    /// @param params σ²_min and the KL constants (validated).
    /// @param seed seed of the initial weights, PyTorch's nn.Linear initialisation (used as
    ///        given, as every part's; LongTermAttention derives its attention's from its base
    ///        seed).
    ContinuousAttention(const GaussianBasis<Scalar>& basis, Index dim, Index num_heads,
                        Index d_model, const AttentionParams& params, std::uint64_t seed = 0);

    /// The attention's slice of a whole set (params.attention_params(), seed params.seed used
    /// as given); the memory's fields are not read.
    ContinuousAttention(const GaussianBasis<Scalar>& basis, Index dim, Index num_heads,
                        Index d_model, const LongTermParams& params)
        : ContinuousAttention(basis, dim, num_heads, d_model, params.attention_params(),
                              params.seed) {}

    /// Bytes of the weights, their gradients and a backward's gradients (computed aside) for
    /// N basis functions, width e and output width d_model (the constructor refuses sizes
    /// beyond the machine's memory).
    static double weight_bytes(Index num_basis, Index dim, Index d_model) {
        const double n = static_cast<double>(num_basis), e = static_cast<double>(dim),
                     d = static_cast<double>(d_model);
        return static_cast<double>(sizeof(Scalar)) * 3 * (2 * e * e + d * e + 2 * n);
    }

    ContinuousAttention(const ContinuousAttention&) = default;
    ContinuousAttention& operator=(const ContinuousAttention&) = default;
    /// Moves the weights and gradients (views from parameters() follow them): `o` keeps its
    /// sizes and settings, with zero weights and gradients, and no forward to differentiate;
    /// every call on it works. Allocates `o`'s zeros.
    ContinuousAttention(ContinuousAttention&& o) : basis_(o.basis_) { take(o); }
    ContinuousAttention& operator=(ContinuousAttention&& o) {
        if (this != &o) take(o);
        return *this;
    }

    Index dim() const { return dim_; }
    Index num_heads() const { return heads_; }
    Index head_size() const { return dim_ / heads_; }
    Index d_model() const { return d_model_; }
    Index num_basis() const { return basis_.size(); }
    const GaussianBasis<Scalar>& basis() const { return basis_; }

    const Weights& weights() const { return weights_; }

    /// Replaces the weights after checking every shape and that all entries are finite,
    /// copying them into the existing storage (views from append_parameters() stay valid).
    /// @throws infinityformer::invalid_argument (weights unchanged).
    void set_weights(const Weights& w);

    /// PyTorch's nn.Linear initialisation: U(−1/√in, 1/√in), from a seeded generator,
    /// written into the existing storage (views from append_parameters() stay valid).
    void init_weights(std::uint64_t seed);

    /// Attention of the queries over the memory B.
    /// @param B N × e memory coefficients. @param queries Q × e, Q ≥ 1.
    /// @param out Q × d_model.
    /// @throws infinityformer::invalid_argument on shapes or non-finite input.
    void forward(const Eigen::Ref<const Matrix>& B, const Eigen::Ref<const Matrix>& queries,
                 Eigen::Ref<Matrix> out);
    Matrix forward(const Eigen::Ref<const Matrix>& B, const Eigen::Ref<const Matrix>& queries);

    /// Intermediate values of the last forward().
    const Trace& last() const { return trace_; }

    /// The keys B W_Kᵀ (N × e), computed on demand (forward() never forms them).
    Matrix keys(const Eigen::Ref<const Matrix>& B) const;
    /// The values B W_Vᵀ (N × e), computed on demand.
    Matrix values(const Eigen::Ref<const Matrix>& B) const;
    /// The scores s = K_h q / √d_h of every head and query, H·Q × N (row h·Q + i), computed
    /// on demand; forward() uses w_μ · s = (K_hᵀ w_μ) · q / √d_h instead.
    Matrix scores(const Eigen::Ref<const Matrix>& B, const Eigen::Ref<const Matrix>& queries) const;

    /// True if forward() with Q queries computes the context as R_h (B W_V,hᵀ) (values
    /// first); false if as (R_h B) W_V,hᵀ. The cheaper association by flop count:
    /// N·e·e + H·Q·N·d_h against H·Q·N·e + H·Q·e·d_h (one query: R·B first is cheaper).
    bool values_first(Index num_queries) const;

    /// forward() into a caller-owned trace, without the checks: for modules that keep one
    /// trace per stream and checked their inputs already.
    void forward_unchecked(const Eigen::Ref<const Matrix>& B,
                           const Eigen::Ref<const Matrix>& queries, Trace& t) const;

    /// True if every value of a trace that a later call reads is finite (and σ² > 0): the
    /// check after forward_unchecked(), a few reductions beside the products.
    bool trace_finite(const Trace& t) const;

    /// Throws infinityformer::invalid_argument saying why a trace is not finite: a weight
    /// with a non-finite entry (named `prefix` + its parameters() name), or else the first
    /// stage that overflowed, with the magnitudes that made it overflow.
    [[noreturn]] void explain_trace(const char* where, const std::string& prefix,
                                    const Trace& t) const;

    /// Throws infinityformer::invalid_argument if a weight has a non-finite entry (named
    /// `prefix` + its parameters() name).
    void check_weights(const char* where, const std::string& prefix) const;

    /// KL(N(μ, σ²) ‖ N(μ₀, σ₀²)) with this object's constants.
    Scalar kl(Scalar mu, Scalar sigma_sq) const;

    Scalar sigma_sq_min() const { return sigma_sq_min_; }

    /// The workspace and results of one backward, held by whoever holds the trace (a
    /// stream), so that streams can be differentiated at once over shared weights.
    struct Work {
        Matrix dcontext, dV, values;
        RowMatrix dr;
        Vector dmu, dsigma_sq, da_mu, da_sigma, g_mu, g_sigma, wk_g_mu, wk_g_sigma;
        Weights dgrad;                    // this backward's gradients, added once all are finite
        Matrix dqueries, dB;              // this backward's ∂ℓ/∂queries, ∂ℓ/∂B
        Vector last_dmu, last_dsigma_sq;  // last_grad_mu(), last_grad_sigma_sq()
    };

    /// Gradients accumulated by backward(), laid out as the weights.
    const Weights& gradients() const { return grads_; }
    /// Zero gradients laid out as the weights (a thread's own sum of gradients).
    Weights zero_gradients() const;
    /// Sets every gradient to zero (keeps the buffers).
    void zero_grad();

    /// Backward pass of the last forward() for the loss
    ///   ℓ = Σ output ⊙ dout + kl_weight · Σ kl_reg:
    /// accumulates ∂ℓ/∂weights into gradients() and writes ∂ℓ/∂queries and ∂ℓ/∂B.
    /// ∂r/∂(μ, σ²) uses the direct form; no gradient passes the σ² clamp where it is active
    /// (softplus(w_σ·s) < σ²_min). A forward() is differentiated once: its trace is
    /// consumed by the backward() that succeeds (a second one would add the gradients again).
    /// @param dout Q × d_model. @param kl_weight ≥ 0. @param dqueries Q × e. @param dB N × e.
    /// @throws infinityformer::logic_error without a forward() or once its trace was
    ///         consumed; infinityformer::invalid_argument on shapes, non-finite input or a
    ///         result that overflowed (nothing changed: no gradient, no output, the trace
    ///         still differentiable).
    void backward(const Eigen::Ref<const Matrix>& dout, Scalar kl_weight,
                  Eigen::Ref<Matrix> dqueries, Eigen::Ref<Matrix> dB);

    /// backward() of a trace held by the caller, without the argument checks (composite
    /// modules that checked already). The results are checked: computed aside, they are
    /// added and written only once all are finite.
    /// @throws infinityformer::invalid_argument if a result overflowed (nothing changed).
    void backward_unchecked(const Trace& t, const Eigen::Ref<const Matrix>& dout, Scalar kl_weight,
                            Eigen::Ref<Matrix> dqueries, Eigen::Ref<Matrix> dB);

    /// The computing half of a backward of trace t (inputs checked): this call's gradients of
    /// the weights, ∂ℓ/∂queries (backward_dqueries()), ∂ℓ/∂B (backward_dB()) and ∂ℓ/∂μ, ∂ℓ/∂σ²
    /// into the workspace. Nothing is accumulated; gradients() and last_grad_mu() unchanged.
    /// The score path is rank 2 per head: ∂ℓ/∂s_h = da_μ,h w_μᵀ + da_σ,h w_σᵀ, so the
    /// gradients of the queries, of W_K and of B through the keys are outer products.
    void backward_compute(const Trace& t, const Eigen::Ref<const Matrix>& dout, Scalar kl_weight);
    /// backward_compute() into the caller's workspace `w`.
    void backward_compute(const Trace& t, const Eigen::Ref<const Matrix>& dout, Scalar kl_weight,
                          Work& w) const;

    /// True if every result of the last backward_compute() is finite, and so is every
    /// gradient once it is added: one vectorised pass over each (no branch per entry).
    bool backward_finite() const;
    /// backward_finite() of workspace `w`, with the gradients `into` it will be added to.
    bool backward_finite(const Work& w, const Weights& into) const;

    /// Throws infinityformer::invalid_argument naming the first result of the last
    /// backward_compute() that is not finite (a weight's gradient as `prefix` + its
    /// parameters() name, or its sum with the accumulated one), with `cause`, the input and
    /// its magnitudes, and `inputs`, what the caller controls.
    [[noreturn]] void explain_backward(const char* where, const std::string& prefix,
                                       const std::string& cause, const std::string& inputs) const;
    /// explain_backward() of workspace `w` and the gradients `into`.
    [[noreturn]] void explain_backward(const char* where, const std::string& prefix,
                                       const std::string& cause, const std::string& inputs,
                                       const Work& w, const Weights& into) const;

    /// ∂ℓ/∂queries (Q × e) and ∂ℓ/∂B (N × e) of the last backward_compute().
    const Matrix& backward_dqueries() const { return work_.dqueries; }
    const Matrix& backward_dB() const { return work_.dB; }

    /// The keeping half, after backward_compute() and backward_finite(): adds this call's
    /// gradients to gradients() and makes its ∂ℓ/∂μ, ∂ℓ/∂σ² those of last_grad_mu() and
    /// last_grad_sigma_sq() (additions and swaps only; nothing throws).
    void backward_accumulate();
    /// backward_accumulate() of workspace `w` into gradients().
    void backward_accumulate(Work& w);
    /// backward_accumulate() of workspace `w` into the gradients `into` (laid out as the
    /// weights, e.g. zero_gradients()).
    static void backward_accumulate(Work& w, Weights& into);

    /// Appends the named weights and gradients (the reference's names, after `prefix`).
    void append_parameters(std::vector<Parameter<Scalar>>& out, const std::string& prefix = "");
    /// Views of the weights with the gradients `grads` (laid out as the weights) in place
    /// of the accumulated ones.
    void append_parameters(std::vector<Parameter<Scalar>>& out, const std::string& prefix,
                           Weights& grads);

    /// ∂ℓ/∂μ and ∂ℓ/∂σ² (KL terms included) of the last backward(), H·Q each.
    const Vector& last_grad_mu() const { return work_.last_dmu; }
    const Vector& last_grad_sigma_sq() const { return work_.last_dsigma_sq; }

private:
    // backward_compute(), the check, then backward_accumulate() and the outputs.
    void backward_checked(const char* where, const Trace& t, const Eigen::Ref<const Matrix>& dout,
                          Scalar kl_weight, Eigen::Ref<Matrix> dqueries, Eigen::Ref<Matrix> dB) {
        backward_compute(t, dout, kl_weight);
        if (!backward_finite())
            explain_backward(
                where, "",
                detail::concat("dout's largest |entry| ", detail::largest_abs(dout), " (kl_weight ",
                               kl_weight, "; largest |B| ", detail::largest_abs(t.B),
                               ", largest |query| ", detail::largest_abs(t.queries), ")"),
                "dout, kl_weight, a memory and queries");
        backward_accumulate();
        dqueries = work_.dqueries;
        dB = work_.dB;
    }

    void check_inputs(const char* where, const Eigen::Ref<const Matrix>& B,
                      const Eigen::Ref<const Matrix>& queries) const {
        detail::check_matrix(where, "B", B, num_basis(), dim_);
        detail::require(queries.rows() >= 1, where, "queries has 0 rows, expected at least 1");
        detail::require(queries.cols() == dim_, where, "queries has ", queries.cols(),
                        " cols, expected ", dim_);
        detail::check_finite(where, "queries", queries);
    }

    // Computes into the spare trace and keeps it only if it is finite, so that a failed
    // forward() leaves last() and the next backward() as they were.
    void compute(const Eigen::Ref<const Matrix>& B, const Eigen::Ref<const Matrix>& queries) {
        compute(B, queries, spare_);
        if (!trace_finite(spare_)) explain_trace("ContinuousAttention::forward", "", spare_);
        std::swap(trace_, spare_);
        trace_consumed_ = false;  // a new trace for backward()
    }

    void compute(const Eigen::Ref<const Matrix>& B, const Eigen::Ref<const Matrix>& queries,
                 Trace& t) const {
        const Index nq = queries.rows();
        const Index dh = head_size();
        const Index n = num_basis();
        t.B = B;
        t.queries = queries;
        // w · s_h,i = q_h,i · (K_hᵀ w) / √d_h with K_hᵀ w = W_K,h (Bᵀ w).
        t.u_mu.noalias() = B.transpose() * weights_.mu;
        t.u_sigma.noalias() = B.transpose() * weights_.sigma;
        t.key_mu.noalias() = weights_.proj_key * t.u_mu;
        t.key_sigma.noalias() = weights_.proj_key * t.u_sigma;
        const Scalar scale = Scalar(1) / std::sqrt(static_cast<Scalar>(dh));
        t.a_mu.resize(heads_ * nq);
        t.a_sigma.resize(heads_ * nq);
        for (Index h = 0; h < heads_; ++h) {
            const auto qh = queries.middleCols(h * dh, dh);
            t.a_mu.segment(h * nq, nq).noalias() = scale * qh * t.key_mu.segment(h * dh, dh);
            t.a_sigma.segment(h * nq, nq).noalias() = scale * qh * t.key_sigma.segment(h * dh, dh);
        }
        t.mu.resize(heads_ * nq);
        t.sigma_sq.resize(heads_ * nq);
        t.kl_reg.resize(heads_ * nq);
        for (Index i = 0; i < heads_ * nq; ++i) {
            t.mu[i] = detail::sigmoid(t.a_mu[i]);
            const Scalar sp = detail::softplus(t.a_sigma[i]);
            t.sigma_sq[i] = sp < sigma_sq_min_ ? sigma_sq_min_ : sp;
            t.kl_reg[i] = kl(t.mu[i], t.sigma_sq[i]);
        }
        t.r.resize(heads_ * nq, n);
        basis_.expect_psi_rows_unchecked(t.mu, t.sigma_sq, t.r);
        t.context.resize(nq, dim_);
        if (values_first(nq)) {
            t.values.noalias() = B * weights_.proj_value.transpose();
            for (Index h = 0; h < heads_; ++h)
                t.context.middleCols(h * dh, dh).noalias() =
                    t.r.middleRows(h * nq, nq) * t.values.middleCols(h * dh, dh);
        } else {
            t.values.resize(0, dim_);
            for (Index h = 0; h < heads_; ++h) {
                t.rb.noalias() = t.r.middleRows(h * nq, nq) * B;
                t.context.middleCols(h * dh, dh).noalias() =
                    t.rb * weights_.proj_value.middleRows(h * dh, dh).transpose();
            }
        }
        t.output.noalias() = t.context * weights_.attn_out.transpose();
    }

    // The moves: everything moved but the basis and settings (copied); `o` left with zero
    // weights and gradients of its sizes and no trace.
    void take(ContinuousAttention& o) {
        basis_ = o.basis_;
        dim_ = o.dim_;
        heads_ = o.heads_;
        d_model_ = o.d_model_;
        sigma_sq_min_ = o.sigma_sq_min_;
        kl_sigma_0_ = o.kl_sigma_0_;
        kl_mu_term_ = o.kl_mu_term_;
        kl_mu_0_ = o.kl_mu_0_;
        weights_ = std::move(o.weights_);
        grads_ = std::move(o.grads_);
        trace_ = std::move(o.trace_);
        spare_ = std::move(o.spare_);
        work_ = std::move(o.work_);
        trace_consumed_ = o.trace_consumed_;
        o.zero_grad();
        o.weights_ = o.grads_;
        o.trace_ = Trace{};
        o.spare_ = Trace{};
        o.trace_consumed_ = false;
    }

    GaussianBasis<Scalar> basis_;
    Index dim_ = 0;
    Index heads_ = 1;
    Index d_model_ = 0;
    Scalar sigma_sq_min_{};
    Scalar kl_sigma_0_{};
    bool kl_mu_term_ = false;
    Scalar kl_mu_0_{};

    Weights weights_;
    Weights grads_;
    Trace trace_;
    Trace spare_;  // the next trace, kept once it is complete and finite
    Work work_;
    bool trace_consumed_ = false;  // backward() has differentiated trace_ already
};

#if INFINITYFORMER_HEADER_ONLY

template <typename Scalar_>
ContinuousAttention<Scalar_>::ContinuousAttention(const GaussianBasis<Scalar>& basis, Index dim,
                                                  Index num_heads, Index d_model,
                                                  const AttentionParams& params, std::uint64_t seed)
    : basis_(basis), dim_(dim), heads_(num_heads), d_model_(d_model == 0 ? dim : d_model) {
    constexpr const char* where = "ContinuousAttention::ContinuousAttention";
    params.template validate_for<Scalar>(where);
    detail::check_heads(where, "dim", dim, num_heads);
    detail::require(d_model >= 0, where, "d_model is ", d_model,
                    ", expected >= 1 (or 0 for d_model = dim)");
    const double e = static_cast<double>(dim), out = static_cast<double>(d_model_);
    detail::require_allocatable(where,
                                "the weights (proj_key, proj_value: dim x dim; attn_out: "
                                "d_model x dim) and gradients",
                                std::max(e * e, out * e),
                                weight_bytes(basis.size(), dim, d_model_));
    sigma_sq_min_ = static_cast<Scalar>(params.sigma_sq_min);
    kl_sigma_0_ = static_cast<Scalar>(params.kl_sigma_0);
    kl_mu_term_ = params.kl_mu_term;
    kl_mu_0_ = static_cast<Scalar>(params.kl_mu_0);
    init_weights(seed);
}

template <typename Scalar_>
void ContinuousAttention<Scalar_>::set_weights(const Weights& w) {
    constexpr const char* where = "ContinuousAttention::set_weights";
    detail::check_matrix(where, "proj_key", w.proj_key, dim_, dim_);
    detail::check_matrix(where, "proj_value", w.proj_value, dim_, dim_);
    detail::check_matrix(where, "attn_out", w.attn_out, d_model_, dim_);
    detail::check_matrix(where, "mu", w.mu, num_basis(), 1);
    detail::check_matrix(where, "sigma", w.sigma, num_basis(), 1);
    weights_ = w;  // same shapes: copied into the existing storage
}

template <typename Scalar_>
void ContinuousAttention<Scalar_>::init_weights(std::uint64_t seed) {
    detail::Random rng(seed);
    Weights& w = weights_;
    // The resizes allocate only in the constructor; they are no-ops afterwards.
    w.proj_key.resize(dim_, dim_);
    w.proj_value.resize(dim_, dim_);
    w.attn_out.resize(d_model_, dim_);
    w.mu.resize(num_basis());
    w.sigma.resize(num_basis());
    const double b_e = 1.0 / std::sqrt(static_cast<double>(dim_));
    const double b_n = 1.0 / std::sqrt(static_cast<double>(num_basis()));
    detail::fill_uniform(w.proj_key, b_e, rng);
    detail::fill_uniform(w.proj_value, b_e, rng);
    detail::fill_uniform(w.attn_out, b_e, rng);
    detail::fill_uniform(w.mu, b_n, rng);
    detail::fill_uniform(w.sigma, b_n, rng);
}

template <typename Scalar_>
void ContinuousAttention<Scalar_>::forward(const Eigen::Ref<const Matrix>& B,
                                           const Eigen::Ref<const Matrix>& queries,
                                           Eigen::Ref<Matrix> out) {
    check_inputs("ContinuousAttention::forward", B, queries);
    detail::check_shape("ContinuousAttention::forward", "out", out, queries.rows(), d_model_);
    compute(B, queries);
    out = trace_.output;
}

template <typename Scalar_>
auto ContinuousAttention<Scalar_>::forward(const Eigen::Ref<const Matrix>& B,
                                           const Eigen::Ref<const Matrix>& queries) -> Matrix {
    check_inputs("ContinuousAttention::forward", B, queries);
    compute(B, queries);
    return trace_.output;
}

template <typename Scalar_>
auto ContinuousAttention<Scalar_>::keys(const Eigen::Ref<const Matrix>& B) const -> Matrix {
    detail::check_matrix("ContinuousAttention::keys", "B", B, num_basis(), dim_);
    return B * weights_.proj_key.transpose();
}

template <typename Scalar_>
auto ContinuousAttention<Scalar_>::values(const Eigen::Ref<const Matrix>& B) const -> Matrix {
    detail::check_matrix("ContinuousAttention::values", "B", B, num_basis(), dim_);
    return B * weights_.proj_value.transpose();
}

template <typename Scalar_>
auto ContinuousAttention<Scalar_>::scores(const Eigen::Ref<const Matrix>& B,
                                          const Eigen::Ref<const Matrix>& queries) const -> Matrix {
    check_inputs("ContinuousAttention::scores", B, queries);
    const Index nq = queries.rows();
    const Index dh = head_size();
    const Matrix K = B * weights_.proj_key.transpose();
    Matrix S(heads_ * nq, num_basis());
    const Scalar scale = Scalar(1) / std::sqrt(static_cast<Scalar>(dh));
    for (Index h = 0; h < heads_; ++h)
        S.middleRows(h * nq, nq).noalias() =
            scale * queries.middleCols(h * dh, dh) * K.middleCols(h * dh, dh).transpose();
    return S;
}

template <typename Scalar_>
bool ContinuousAttention<Scalar_>::values_first(Index num_queries) const {
    const double n = static_cast<double>(num_basis());
    const double e = static_cast<double>(dim_);
    const double hq = static_cast<double>(heads_) * static_cast<double>(num_queries);
    const double dh = static_cast<double>(head_size());
    return n * e * e + hq * n * dh <= hq * n * e + hq * e * dh;
}

template <typename Scalar_>
void ContinuousAttention<Scalar_>::forward_unchecked(const Eigen::Ref<const Matrix>& B,
                                                     const Eigen::Ref<const Matrix>& queries,
                                                     Trace& t) const {
    compute(B, queries, t);
}

template <typename Scalar_>
bool ContinuousAttention<Scalar_>::trace_finite(const Trace& t) const {
    return detail::all_finite(t.a_mu) && detail::all_finite(t.a_sigma) &&
           detail::all_finite(t.key_mu) && detail::all_finite(t.key_sigma) &&
           detail::all_finite(t.sigma_sq) &&
           (t.sigma_sq.size() == 0 || t.sigma_sq.minCoeff() > Scalar(0)) &&
           detail::all_finite(t.kl_reg) && detail::all_finite(t.context) &&
           detail::all_finite(t.output);
}

template <typename Scalar_>
void ContinuousAttention<Scalar_>::explain_trace(const char* where, const std::string& prefix,
                                                 const Trace& t) const {
    check_weights(where, prefix);
    const double b = detail::largest_abs(t.B), q = detail::largest_abs(t.queries);
    if (!(detail::all_finite(t.key_mu) && detail::all_finite(t.key_sigma) &&
          detail::all_finite(t.a_mu) && detail::all_finite(t.a_sigma)))
        detail::fail(where,
                     "the long-term attention scores w_mu . s and w_sigma . s "
                     "overflowed (largest |B| ",
                     b, ", largest |query| ", q,
                     "), expected a memory and queries whose products stay below ",
                     static_cast<double>(std::numeric_limits<Scalar>::max()));
    if (!(detail::all_finite(t.kl_reg) && detail::all_finite(t.sigma_sq)))
        detail::fail(where, "the KL regulariser overflowed (sigma^2 up to ",
                     detail::largest_abs(t.sigma_sq),
                     " against kl_sigma_0^2 = ", kl_sigma_0_ * kl_sigma_0_, "; largest |B| ", b,
                     ", largest |query| ", q, "), expected smaller memory or queries");
    detail::fail(where, "the long-term attention output overflowed (largest |B| ", b,
                 ", largest |context| ", detail::largest_abs(t.context),
                 "), expected a memory whose values stay below ",
                 static_cast<double>(std::numeric_limits<Scalar>::max()));
}

template <typename Scalar_>
void ContinuousAttention<Scalar_>::check_weights(const char* where,
                                                 const std::string& prefix) const {
    detail::check_weight(where, prefix, "proj_key.weight", weights_.proj_key);
    detail::check_weight(where, prefix, "proj_value.weight", weights_.proj_value);
    detail::check_weight(where, prefix, "attn_out.weight", weights_.attn_out);
    detail::check_weight(where, prefix, "mu.weight", weights_.mu);
    detail::check_weight(where, prefix, "sigma.weight", weights_.sigma);
}

template <typename Scalar_>
auto ContinuousAttention<Scalar_>::kl(Scalar mu, Scalar sigma_sq) const -> Scalar {
    using std::log;
    const Scalar s0sq = kl_sigma_0_ * kl_sigma_0_;
    const Scalar ratio = sigma_sq / s0sq;
    Scalar v = Scalar(0.5) * (ratio - log(ratio) - Scalar(1));
    if (kl_mu_term_) v += Scalar(0.5) * (mu - kl_mu_0_) * (mu - kl_mu_0_) / s0sq;
    return v;
}

template <typename Scalar_>
auto ContinuousAttention<Scalar_>::zero_gradients() const -> Weights {
    Weights g;
    g.proj_key.setZero(dim_, dim_);
    g.proj_value.setZero(dim_, dim_);
    g.attn_out.setZero(d_model_, dim_);
    g.mu.setZero(num_basis());
    g.sigma.setZero(num_basis());
    return g;
}

template <typename Scalar_>
void ContinuousAttention<Scalar_>::zero_grad() {
    grads_.proj_key.setZero(dim_, dim_);
    grads_.proj_value.setZero(dim_, dim_);
    grads_.attn_out.setZero(d_model_, dim_);
    grads_.mu.setZero(num_basis());
    grads_.sigma.setZero(num_basis());
}

template <typename Scalar_>
void ContinuousAttention<Scalar_>::backward(const Eigen::Ref<const Matrix>& dout, Scalar kl_weight,
                                            Eigen::Ref<Matrix> dqueries, Eigen::Ref<Matrix> dB) {
    constexpr const char* where = "ContinuousAttention::backward";
    if (trace_.queries.rows() == 0)
        throw infinityformer::logic_error(
            detail::concat("[infinityformer] ", where,
                           ": no forward() to differentiate, expected a call "
                           "to forward() first"));
    if (trace_consumed_)
        throw infinityformer::logic_error(detail::concat(
            "[infinityformer] ", where,
            ": the trace of the last forward() was consumed by the previous backward(), "
            "expected a new forward() before the next backward() (a second backward() "
            "of one forward() would add its gradients again)"));
    const Index nq = trace_.queries.rows();
    detail::check_matrix(where, "dout", dout, nq, d_model_);
    detail::check_kl_weight(where, kl_weight);
    detail::check_shape(where, "dqueries", dqueries, nq, dim_);
    detail::check_shape(where, "dB", dB, num_basis(), dim_);
    backward_checked(where, trace_, dout, kl_weight, dqueries, dB);
    trace_consumed_ = true;
}

template <typename Scalar_>
void ContinuousAttention<Scalar_>::backward_unchecked(const Trace& t,
                                                      const Eigen::Ref<const Matrix>& dout,
                                                      Scalar kl_weight, Eigen::Ref<Matrix> dqueries,
                                                      Eigen::Ref<Matrix> dB) {
    backward_checked("ContinuousAttention::backward_unchecked", t, dout, kl_weight, dqueries, dB);
}

template <typename Scalar_>
void ContinuousAttention<Scalar_>::backward_compute(const Trace& t,
                                                    const Eigen::Ref<const Matrix>& dout,
                                                    Scalar kl_weight) {
    backward_compute(t, dout, kl_weight, work_);
}

template <typename Scalar_>
void ContinuousAttention<Scalar_>::backward_compute(const Trace& t,
                                                    const Eigen::Ref<const Matrix>& dout,
                                                    Scalar kl_weight, Work& w) const {
    const Index nq = t.queries.rows();
    const Index dh = head_size();
    const Index n = num_basis();
    const Index hq = heads_ * nq;
    const Scalar scale = Scalar(1) / std::sqrt(static_cast<Scalar>(dh));
    Weights& g = w.dgrad;
    const Matrix* values = &t.values;
    if (t.values.rows() != n) {
        w.values.noalias() = t.B * weights_.proj_value.transpose();
        values = &w.values;
    }
    g.attn_out.noalias() = dout.transpose() * t.context;
    w.dcontext.noalias() = dout * weights_.attn_out;
    w.dr.resize(hq, n);
    w.dV.resize(n, dim_);
    for (Index h = 0; h < heads_; ++h) {
        const auto dc = w.dcontext.middleCols(h * dh, dh);
        w.dr.middleRows(h * nq, nq).noalias() = dc * values->middleCols(h * dh, dh).transpose();
        w.dV.middleCols(h * dh, dh).noalias() = t.r.middleRows(h * nq, nq).transpose() * dc;
    }
    w.dmu.resize(hq);
    w.dsigma_sq.resize(hq);
    basis_.expect_psi_rows_backward_unchecked(t.mu, t.sigma_sq, t.r, w.dr, w.dmu, w.dsigma_sq);
    const Scalar s0sq = kl_sigma_0_ * kl_sigma_0_;
    w.da_mu.resize(hq);
    w.da_sigma.resize(hq);
    for (Index i = 0; i < hq; ++i) {
        Scalar dmu = w.dmu[i];
        if (kl_mu_term_) dmu += kl_weight * (t.mu[i] - kl_mu_0_) / s0sq;
        const Scalar ds2 = w.dsigma_sq[i] +
                           kl_weight * Scalar(0.5) * (Scalar(1) / s0sq - Scalar(1) / t.sigma_sq[i]);
        w.dmu[i] = dmu;
        w.dsigma_sq[i] = ds2;
        w.da_mu[i] = dmu * t.mu[i] * (Scalar(1) - t.mu[i]);
        const Scalar a = t.a_sigma[i];
        const bool clamped = detail::softplus(a) < sigma_sq_min_;
        const Scalar dsp = detail::softplus_derivative(a);
        w.da_sigma[i] = clamped ? Scalar(0) : ds2 * dsp;
    }
    // g_μ,h = Q_hᵀ da_μ,h (stacked over heads: e), and the same for σ.
    w.g_mu.resize(dim_);
    w.g_sigma.resize(dim_);
    w.dqueries.resize(nq, dim_);
    for (Index h = 0; h < heads_; ++h) {
        const auto qh = t.queries.middleCols(h * dh, dh);
        w.g_mu.segment(h * dh, dh).noalias() = scale * qh.transpose() * w.da_mu.segment(h * nq, nq);
        w.g_sigma.segment(h * dh, dh).noalias() =
            scale * qh.transpose() * w.da_sigma.segment(h * nq, nq);
        w.dqueries.middleCols(h * dh, dh).noalias() =
            scale * w.da_mu.segment(h * nq, nq) * t.key_mu.segment(h * dh, dh).transpose();
        w.dqueries.middleCols(h * dh, dh).noalias() +=
            scale * w.da_sigma.segment(h * nq, nq) * t.key_sigma.segment(h * dh, dh).transpose();
    }
    // ∂ℓ/∂w_μ = Σ_h S_hᵀ da_μ,h = B W_Kᵀ g_μ; ∂ℓ/∂K = w_μ g_μᵀ + w_σ g_σᵀ.
    w.wk_g_mu.noalias() = weights_.proj_key.transpose() * w.g_mu;
    g.mu.noalias() = t.B * w.wk_g_mu;
    w.wk_g_sigma.noalias() = weights_.proj_key.transpose() * w.g_sigma;
    g.sigma.noalias() = t.B * w.wk_g_sigma;
    g.proj_key.noalias() = w.g_mu * t.u_mu.transpose();
    g.proj_key.noalias() += w.g_sigma * t.u_sigma.transpose();
    g.proj_value.noalias() = w.dV.transpose() * t.B;
    w.dB.noalias() = w.dV * weights_.proj_value;
    w.dB.noalias() += weights_.mu * w.wk_g_mu.transpose();
    w.dB.noalias() += weights_.sigma * w.wk_g_sigma.transpose();
}

template <typename Scalar_>
bool ContinuousAttention<Scalar_>::backward_finite() const {
    return backward_finite(work_, grads_);
}

template <typename Scalar_>
bool ContinuousAttention<Scalar_>::backward_finite(const Work& w, const Weights& into) const {
    return detail::sum_finite(into.attn_out, w.dgrad.attn_out) &&
           detail::sum_finite(into.proj_value, w.dgrad.proj_value) &&
           detail::sum_finite(into.proj_key, w.dgrad.proj_key) &&
           detail::sum_finite(into.mu, w.dgrad.mu) &&
           detail::sum_finite(into.sigma, w.dgrad.sigma) && detail::all_finite(w.dmu) &&
           detail::all_finite(w.dsigma_sq) && detail::all_finite(w.dqueries) &&
           detail::all_finite(w.dB);
}

template <typename Scalar_>
void ContinuousAttention<Scalar_>::explain_backward(const char* where, const std::string& prefix,
                                                    const std::string& cause,
                                                    const std::string& inputs) const {
    explain_backward(where, prefix, cause, inputs, work_, grads_);
}

template <typename Scalar_>
void ContinuousAttention<Scalar_>::explain_backward(const char* where, const std::string& prefix,
                                                    const std::string& cause,
                                                    const std::string& inputs, const Work& w,
                                                    const Weights& into) const {
    detail::check_gradient_sum(where, cause, inputs, prefix, "attn_out.weight", into.attn_out,
                               w.dgrad.attn_out);
    detail::check_gradient_sum(where, cause, inputs, prefix, "proj_value.weight", into.proj_value,
                               w.dgrad.proj_value);
    detail::check_backward_result(where, cause, inputs,
                                  "the gradient of the attention densities' means", w.dmu);
    detail::check_backward_result(
        where, cause, inputs, "the gradient of the attention densities' variances", w.dsigma_sq);
    detail::check_gradient_sum(where, cause, inputs, prefix, "proj_key.weight", into.proj_key,
                               w.dgrad.proj_key);
    detail::check_gradient_sum(where, cause, inputs, prefix, "mu.weight", into.mu, w.dgrad.mu);
    detail::check_gradient_sum(where, cause, inputs, prefix, "sigma.weight", into.sigma,
                               w.dgrad.sigma);
    detail::check_backward_result(where, cause, inputs,
                                  "the gradient of the long-term attention's queries", w.dqueries);
    detail::check_backward_result(where, cause, inputs, "the gradient of the memory B", w.dB);
    detail::fail(where, "a backward result is not finite (", cause, ")");
}

template <typename Scalar_>
void ContinuousAttention<Scalar_>::backward_accumulate() {
    if (grads_.mu.size() != num_basis()) zero_grad();
    backward_accumulate(work_, grads_);
}

template <typename Scalar_>
void ContinuousAttention<Scalar_>::backward_accumulate(Work& w) {
    if (grads_.mu.size() != num_basis()) zero_grad();
    backward_accumulate(w, grads_);
}

template <typename Scalar_>
void ContinuousAttention<Scalar_>::backward_accumulate(Work& w, Weights& into) {
    into.attn_out += w.dgrad.attn_out;
    into.proj_value += w.dgrad.proj_value;
    into.proj_key += w.dgrad.proj_key;
    into.mu += w.dgrad.mu;
    into.sigma += w.dgrad.sigma;
    w.last_dmu.swap(w.dmu);
    w.last_dsigma_sq.swap(w.dsigma_sq);
}

template <typename Scalar_>
void ContinuousAttention<Scalar_>::append_parameters(std::vector<Parameter<Scalar>>& out,
                                                     const std::string& prefix) {
    if (grads_.mu.size() != num_basis()) zero_grad();
    append_parameters(out, prefix, grads_);
}

template <typename Scalar_>
void ContinuousAttention<Scalar_>::append_parameters(std::vector<Parameter<Scalar>>& out,
                                                     const std::string& prefix, Weights& grads) {
    detail::append_parameter(out, prefix + "proj_key.weight", weights_.proj_key, grads.proj_key);
    detail::append_parameter(out, prefix + "proj_value.weight", weights_.proj_value,
                             grads.proj_value);
    detail::append_parameter(out, prefix + "attn_out.weight", weights_.attn_out, grads.attn_out);
    detail::append_parameter(out, prefix + "mu.weight", weights_.mu, grads.mu);
    detail::append_parameter(out, prefix + "sigma.weight", weights_.sigma, grads.sigma);
}

#endif  // INFINITYFORMER_HEADER_ONLY

INFINITYFORMER_EXTERN_TEMPLATE(class, ContinuousAttention)

using ContinuousAttentiond = ContinuousAttention<double>;
using ContinuousAttentionf = ContinuousAttention<float>;

}  // namespace infinityformer
