/// @file blocks.hpp
/// @brief The building blocks of a whole model around InfinityFormerLayer (which has no
/// residual, no normalisation and no feed-forward): a token embedding, layer
/// normalisation, a feed-forward block, a linear map (an output head) and the softmax
/// cross-entropy, each with its backward pass.
///
/// Optional: <infinityformer/infinityformer.hpp> does not include this header; include
/// <infinityformer/blocks.hpp> where it is used. Header-only in every mode: every member is
/// defined in its class and compiled with the including file, under INFINITYFORMER_COMPILED
/// too (the compiled library holds none of it, and a program that links it needs nothing
/// more).
///
/// Tokens are rows: an input X is n × d (n ≥ 0 rows, column-major Eigen matrices). Every
/// module follows the library's rules:
///  - forward() keeps what its backward needs (a trace); backward() differentiates the last
///    forward() once (the backward that succeeds consumes the trace), accumulates the
///    weights' gradients (until zero_grad()) and returns ∂ℓ/∂X;
///  - parameters(prefix) lists the named weights with their gradients for an optimiser
///    (Adam), next to a layer's parameters();
///  - bad input (a wrong shape, a token out of range, a non-finite entry, a size or an eps
///    out of range) throws infinityformer::invalid_argument naming the call, the argument,
///    the value expected and the value received; backward() without a forward() to
///    differentiate throws infinityformer::logic_error; a result that would overflow throws
///    infinityformer::invalid_argument. A call that throws changes nothing: every result is
///    computed aside and kept only once it is complete and finite;
///  - initial weights come from a seed through the library's portable generator
///    (detail::Random): a seed gives the same weights with every standard library.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/config.hpp"
#include "detail/limits.hpp"
#include "detail/math.hpp"
#include "detail/random.hpp"
#include "errors.hpp"
#include "parameter_view.hpp"

namespace infinityformer {

/// The nonlinearity of a FeedForward block.
enum class Activation {
    relu,  ///< max(x, 0) (derivative 0 at x ≤ 0)
    gelu,  ///< x Φ(x) with the exact normal CDF Φ (PyTorch's GELU, approximate='none')
};

/// The target of a row that has none (softmax_cross_entropy() skips it), as PyTorch's
/// ignore_index.
constexpr Eigen::Index ignore_target = -1;

namespace detail {

/// Checks a size given to a constructor: ≥ 1.
inline void check_size(const char* where, const char* name, Eigen::Index v) {
    require(v >= 1, where, name, " is ", v, ", expected >= 1");
}

/// Refuses weights (and their gradients) of `entries` values that would not fit.
template <typename Scalar>
void check_weight_entries(const char* where, double entries) {
    require_allocatable(where, "the weights and their gradients", entries,
                        2 * entries * static_cast<double>(sizeof(Scalar)));
}

/// Throws infinityformer::logic_error: `where` has no forward() to differentiate.
[[noreturn]] inline void fail_no_forward(const char* where, bool consumed) {
    throw infinityformer::logic_error(concat(
        "[infinityformer] ", where, ": ",
        consumed ? "the last forward() was already differentiated (a second backward() would "
                   "add its gradients again), expected a forward() since"
                 : "no forward() to differentiate, expected a forward() first"));
}

/// A forward result that overflowed: throws infinityformer::invalid_argument naming the
/// input `x_name` and the largest magnitudes of the input and of the weights.
template <typename Scalar>
[[noreturn]] void fail_forward(const char* where, const char* x_name, double largest_x,
                               double largest_weight) {
    fail(where, "the output overflowed (", x_name, "'s largest |entry| ", largest_x,
         ", the weights' largest |entry| ", largest_weight, "), expected ", x_name,
         " and weights whose products stay below ",
         static_cast<double>(std::numeric_limits<Scalar>::max()), " (nothing changed)");
}

/// Checks that every token is an index into a vocabulary of `vocabulary` entries.
template <typename Int>
void check_tokens(const char* where, const char* name, const std::vector<Int>& tokens,
                  Eigen::Index vocabulary) {
    static_assert(std::is_integral_v<Int>, "tokens are integers");
    for (std::size_t i = 0; i < tokens.size(); ++i) {
        const Int t = tokens[i];
        bool ok = true;
        if constexpr (std::is_signed_v<Int>) ok = t >= 0;
        ok = ok && static_cast<unsigned long long>(t) < static_cast<unsigned long long>(vocabulary);
        if (!ok)
            fail(where, name, "[", i, "] is ", +t, ", expected 0 <= token < ", vocabulary,
                 " (the vocabulary)");
    }
}

/// The largest |entry| over several matrices.
template <typename... M>
double largest_of(const M&... m) {
    return std::max({0.0, largest_abs(m)...});
}

}  // namespace detail

/// A table of `vocabulary` rows of width d: forward(tokens) returns the rows of the tokens
/// (n × d, row i the row of tokens[i]). backward(dY) adds row i of dY to the gradient of
/// row tokens[i] (a token seen twice gets both).
///
/// \tparam Scalar_ float or double.
template <typename Scalar_>
class Embedding {
    static_assert(std::is_floating_point_v<Scalar_>, "Embedding needs float or double");

public:
    using Scalar = Scalar_;
    using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    using Index = Eigen::Index;

    /// The table (PyTorch's nn.Embedding.weight).
    struct Weights {
        Matrix table;  ///< vocabulary × d
    };

    /// @param vocabulary V ≥ 1, the number of tokens. @param dim d ≥ 1.
    /// @param seed seed of the initial table, N(0, 1) entries (nn.Embedding's).
    /// @throws infinityformer::invalid_argument on a size < 1 or beyond the machine's memory.
    Embedding(Index vocabulary, Index dim, std::uint64_t seed = 0)
        : vocabulary_(checked_size(vocabulary, dim)), dim_(dim) {
        weights_.table.resize(vocabulary, dim);
        grads_.table = Matrix::Zero(vocabulary, dim);
        init_weights(seed);
    }

    Embedding(const Embedding&) = default;
    Embedding& operator=(const Embedding&) = default;
    /// Moves the weights and gradients (views from parameters() follow them): `o` keeps its
    /// sizes, with zero weights and gradients and no forward to differentiate.
    Embedding(Embedding&& o) { take(o); }
    Embedding& operator=(Embedding&& o) {
        if (this != &o) take(o);
        return *this;
    }

    Index vocabulary() const { return vocabulary_; }
    Index dim() const { return dim_; }
    const Weights& weights() const { return weights_; }
    /// Gradients accumulated by backward(), laid out as the weights.
    const Weights& gradients() const { return grads_; }

    /// Copies `w` into the existing storage (views from parameters() stay valid).
    /// @throws infinityformer::invalid_argument if the table is not V × d or has a
    ///         non-finite entry (nothing changed).
    void set_weights(const Weights& w) {
        detail::check_matrix("Embedding::set_weights", "table", w.table, vocabulary_, dim_);
        weights_.table = w.table;
    }

    /// N(0, 1) entries (Box–Muller, column by column) from a generator seeded with `seed`,
    /// written into the existing storage.
    void init_weights(std::uint64_t seed) {
        detail::Random rng(seed);
        for (Index j = 0; j < dim_; ++j)
            for (Index i = 0; i < vocabulary_; ++i)
                weights_.table(i, j) = static_cast<Scalar>(rng.normal());
    }

    /// The rows of `tokens`; kept for backward().
    /// @param tokens n ≥ 0 token ids (any integer type), each in [0, V).
    /// @return n × d.
    /// @throws infinityformer::invalid_argument naming the first token out of range, or the
    ///         table row of a token if it has a non-finite entry (set through parameters()?)
    ///         (nothing changed).
    template <typename Int>
    Matrix forward(const std::vector<Int>& tokens) {
        constexpr const char* where = "Embedding::forward";
        detail::check_tokens(where, "tokens", tokens, vocabulary_);
        const Index n = static_cast<Index>(tokens.size());
        Matrix out(n, dim_);
        std::vector<Index> kept(tokens.size());
        for (Index i = 0; i < n; ++i) {
            const auto t = static_cast<Index>(tokens[static_cast<std::size_t>(i)]);
            kept[static_cast<std::size_t>(i)] = t;
            out.row(i) = weights_.table.row(t);
            if (!detail::all_finite(out.row(i)))
                detail::fail(where, "weight row ", t, " (tokens[", i,
                             "]) has a non-finite entry, expected finite values (set through "
                             "parameters() or an optimiser step?)");
        }
        tokens_ = std::move(kept);
        phase_ = Phase::forwarded;
        return out;
    }

    /// Backward of the last forward(tokens): adds row i of dY to the gradient of row
    /// tokens[i]. Consumes the forward.
    /// @param dY n × d, ∂ℓ/∂output, finite.
    /// @throws infinityformer::logic_error without a forward() to differentiate;
    ///         invalid_argument on dY's shape or a non-finite entry, or if a gradient
    ///         overflowed (nothing changed).
    void backward(const Eigen::Ref<const Matrix>& dY) {
        constexpr const char* where = "Embedding::backward";
        if (phase_ != Phase::forwarded) detail::fail_no_forward(where, phase_ == Phase::consumed);
        detail::check_matrix(where, "dY", dY, static_cast<Index>(tokens_.size()), dim_);
        // This call's gradient of each distinct token's row, computed aside.
        std::vector<Index> rows(tokens_);
        std::sort(rows.begin(), rows.end());
        rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
        const Index u = static_cast<Index>(rows.size());
        Matrix contribution = Matrix::Zero(u, dim_), accumulated(u, dim_);
        for (std::size_t i = 0; i < tokens_.size(); ++i) {
            const auto k = std::lower_bound(rows.begin(), rows.end(), tokens_[i]) - rows.begin();
            contribution.row(k) += dY.row(static_cast<Index>(i));
        }
        for (Index k = 0; k < u; ++k)
            accumulated.row(k) = grads_.table.row(rows[static_cast<std::size_t>(k)]);
        detail::check_gradient_sum(where,
                                   detail::concat("dY's largest |entry| ", detail::largest_abs(dY)),
                                   "dY", "", "weight", accumulated, contribution);
        for (Index k = 0; k < u; ++k)
            grads_.table.row(rows[static_cast<std::size_t>(k)]) += contribution.row(k);
        phase_ = Phase::consumed;
    }

    /// True if backward() has a forward() to differentiate.
    bool has_forward() const { return phase_ == Phase::forwarded; }

    /// Sets the accumulated gradients to zero.
    void zero_grad() { grads_.table.setZero(); }

    /// The named weights with their gradients: `prefix`weight (V × d).
    std::vector<Parameter<Scalar>> parameters(const std::string& prefix = "") {
        std::vector<Parameter<Scalar>> out;
        out.push_back(make_parameter(prefix + "weight", weights_.table, grads_.table));
        return out;
    }

private:
    enum class Phase { idle, forwarded, consumed };

    static Index checked_size(Index vocabulary, Index dim) {
        constexpr const char* where = "Embedding::Embedding";
        detail::check_size(where, "vocabulary", vocabulary);
        detail::check_size(where, "dim", dim);
        detail::check_weight_entries<Scalar>(
            where, static_cast<double>(vocabulary) * static_cast<double>(dim));
        return vocabulary;
    }

    void take(Embedding& o) {
        vocabulary_ = o.vocabulary_;
        dim_ = o.dim_;
        weights_ = std::move(o.weights_);
        grads_ = std::move(o.grads_);
        tokens_ = std::move(o.tokens_);
        phase_ = o.phase_;
        o.weights_.table = Matrix::Zero(o.vocabulary_, o.dim_);
        o.grads_.table = Matrix::Zero(o.vocabulary_, o.dim_);
        o.tokens_.clear();
        o.phase_ = Phase::idle;
    }

    Index vocabulary_ = 0, dim_ = 0;
    Weights weights_, grads_;
    std::vector<Index> tokens_;
    Phase phase_ = Phase::idle;
};

/// Layer normalisation over the d features of each row (Ba et al. 2016; PyTorch's
/// nn.LayerNorm(d, eps)):
///   y = (x − mean(x)) / √(var(x) + ε) ⊙ gain + bias,  var the biased variance (÷ d).
/// Finite for every finite row: a constant row gives y = bias; a row whose entries are
/// near the largest Scalar is scaled before its variance is taken.
///
/// \tparam Scalar_ float or double.
template <typename Scalar_>
class LayerNorm {
    static_assert(std::is_floating_point_v<Scalar_>, "LayerNorm needs float or double");

public:
    using Scalar = Scalar_;
    using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
    using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    using Index = Eigen::Index;

    /// The weights (PyTorch's nn.LayerNorm.weight and .bias).
    struct Weights {
        Vector gain;  ///< d, initially 1
        Vector bias;  ///< d, initially 0
    };

    /// @param dim d ≥ 1. @param eps ε > 0, a normal number of Scalar (default 1e-5, as
    ///        PyTorch's). Gain 1, bias 0.
    /// @throws infinityformer::invalid_argument naming `dim` or `eps`.
    explicit LayerNorm(Index dim, double eps = 1e-5) : dim_(dim), eps_(checked_eps(dim, eps)) {
        weights_.gain = Vector::Ones(dim);
        weights_.bias = Vector::Zero(dim);
        grads_.gain = Vector::Zero(dim);
        grads_.bias = Vector::Zero(dim);
    }

    LayerNorm(const LayerNorm&) = default;
    LayerNorm& operator=(const LayerNorm&) = default;
    /// Moves the weights and gradients (views from parameters() follow them): `o` keeps its
    /// size and ε, with gain 1, bias 0, zero gradients and no forward to differentiate.
    LayerNorm(LayerNorm&& o) { take(o); }
    LayerNorm& operator=(LayerNorm&& o) {
        if (this != &o) take(o);
        return *this;
    }

    Index dim() const { return dim_; }
    Scalar eps() const { return eps_; }
    const Weights& weights() const { return weights_; }
    /// Gradients accumulated by backward(), laid out as the weights.
    const Weights& gradients() const { return grads_; }

    /// Copies `w` into the existing storage (views from parameters() stay valid).
    /// @throws infinityformer::invalid_argument if gain or bias is not d × 1 or has a
    ///         non-finite entry (nothing changed).
    void set_weights(const Weights& w) {
        constexpr const char* where = "LayerNorm::set_weights";
        detail::check_matrix(where, "gain", w.gain, dim_, 1);
        detail::check_matrix(where, "bias", w.bias, dim_, 1);
        weights_.gain = w.gain;
        weights_.bias = w.bias;
    }

    /// y for each row of X; kept for backward().
    /// @param X n × d (n ≥ 0), finite. @return n × d.
    /// @throws infinityformer::invalid_argument on X's shape or a non-finite entry, a
    ///         non-finite weight (named as parameters() lists it), or an output that
    ///         overflowed (nothing changed).
    Matrix forward(const Eigen::Ref<const Matrix>& X) {
        constexpr const char* where = "LayerNorm::forward";
        detail::check_matrix(where, "X", X, X.rows(), dim_);
        detail::check_weight(where, "", "weight", weights_.gain);
        detail::check_weight(where, "", "bias", weights_.bias);
        const Index n = X.rows();
        const Scalar d = static_cast<Scalar>(dim_);
        // Below this largest |entry|, Σ x and Σ (x − mean)² cannot overflow.
        using std::sqrt;
        const Scalar safe = sqrt(std::numeric_limits<Scalar>::max() / (Scalar(4) * d));
        Trace t;
        t.xhat.resize(n, dim_);
        t.rstd.resize(n);
        for (Index i = 0; i < n; ++i) {
            const Scalar c = X.row(i).cwiseAbs().maxCoeff();
            if (c <= safe) {
                const Scalar mean = X.row(i).mean();
                const Scalar var = (X.row(i).array() - mean).square().sum() / d;
                t.rstd[i] = Scalar(1) / sqrt(var + eps_);
                t.xhat.row(i) = (X.row(i).array() - mean) * t.rstd[i];
            } else {  // scaled by the largest |entry| first: u = x / c, |u| ≤ 1
                const Eigen::Matrix<Scalar, 1, Eigen::Dynamic> u =
                    (X.row(i).array() / c - (X.row(i).array() / c).mean()).matrix();
                const Scalar var_u = u.squaredNorm() / d;  // var(x) / c², at most 1
                t.xhat.row(i) = u / sqrt(var_u + eps_ / (c * c));
                const Scalar sd = c * sqrt(var_u);  // at most c: finite
                t.rstd[i] = Scalar(1) / sqrt(sd * sd + eps_);
            }
        }
        Matrix y = (t.xhat.array().rowwise() * weights_.gain.transpose().array()).rowwise() +
                   weights_.bias.transpose().array();
        if (!detail::all_finite(y))
            detail::fail_forward<Scalar>(where, "X", detail::largest_abs(X),
                                         detail::largest_of(weights_.gain, weights_.bias));
        trace_ = std::move(t);
        phase_ = Phase::forwarded;
        return y;
    }

    /// Backward of the last forward(X), consumed: with x̂ = (x − mean)/√(var + ε),
    ///   dgain += Σ_rows dY ⊙ x̂;  dbias += Σ_rows dY;
    ///   dx = (dx̂ − mean(dx̂) − x̂ · mean(dx̂ ⊙ x̂)) / √(var + ε),  dx̂ = dY ⊙ gain.
    /// @param dY n × d, ∂ℓ/∂y, finite. @return n × d, ∂ℓ/∂X.
    /// @throws infinityformer::logic_error without a forward() to differentiate;
    ///         invalid_argument on dY's shape or a non-finite entry, or a result that
    ///         overflowed (nothing changed).
    Matrix backward(const Eigen::Ref<const Matrix>& dY) {
        constexpr const char* where = "LayerNorm::backward";
        if (phase_ != Phase::forwarded) detail::fail_no_forward(where, phase_ == Phase::consumed);
        detail::check_matrix(where, "dY", dY, trace_.xhat.rows(), dim_);
        const Vector dgain = (dY.array() * trace_.xhat.array()).colwise().sum().transpose();
        const Vector dbias = dY.colwise().sum().transpose();
        const Matrix dxhat = dY.array().rowwise() * weights_.gain.transpose().array();
        Matrix dX(dY.rows(), dim_);
        for (Index i = 0; i < dY.rows(); ++i) {
            const Scalar m1 = dxhat.row(i).mean();
            const Scalar m2 = (dxhat.row(i).array() * trace_.xhat.row(i).array()).mean();
            dX.row(i) =
                trace_.rstd[i] * (dxhat.row(i).array() - m1 - trace_.xhat.row(i).array() * m2);
        }
        const std::string cause =
            detail::concat("dY's largest |entry| ", detail::largest_abs(dY), " (largest |gain| ",
                           detail::largest_abs(weights_.gain), ")");
        detail::check_gradient_sum(where, cause, "dY", "", "weight", grads_.gain, dgain);
        detail::check_gradient_sum(where, cause, "dY", "", "bias", grads_.bias, dbias);
        detail::check_backward_result(where, cause, "dY", "dX", dX);
        grads_.gain += dgain;
        grads_.bias += dbias;
        phase_ = Phase::consumed;
        return dX;
    }

    /// True if backward() has a forward() to differentiate.
    bool has_forward() const { return phase_ == Phase::forwarded; }

    /// Sets the accumulated gradients to zero.
    void zero_grad() {
        grads_.gain.setZero();
        grads_.bias.setZero();
    }

    /// The named weights with their gradients: `prefix`weight (the gain, d × 1) and
    /// `prefix`bias (d × 1), as PyTorch names them.
    std::vector<Parameter<Scalar>> parameters(const std::string& prefix = "") {
        std::vector<Parameter<Scalar>> out;
        out.push_back(make_parameter(prefix + "weight", weights_.gain, grads_.gain));
        out.push_back(make_parameter(prefix + "bias", weights_.bias, grads_.bias));
        return out;
    }

private:
    enum class Phase { idle, forwarded, consumed };
    struct Trace {
        Matrix xhat;  ///< (x − mean) / √(var + ε), n × d
        Vector rstd;  ///< 1 / √(var + ε), n
    };

    static Scalar checked_eps(Index dim, double eps) {
        constexpr const char* where = "LayerNorm::LayerNorm";
        detail::check_size(where, "dim", dim);
        detail::check_weight_entries<Scalar>(where, 2 * static_cast<double>(dim));
        detail::require(std::isfinite(eps) && eps > 0.0, where, "eps is ", eps, ", expected > 0");
        detail::require_normal<Scalar>(where, "eps", eps,
                                       "expected an eps that keeps 1/sqrt(var + eps) finite");
        return static_cast<Scalar>(eps);
    }

    void take(LayerNorm& o) {
        dim_ = o.dim_;
        eps_ = o.eps_;
        weights_ = std::move(o.weights_);
        grads_ = std::move(o.grads_);
        trace_ = std::move(o.trace_);
        phase_ = o.phase_;
        o.weights_.gain = Vector::Ones(o.dim_);
        o.weights_.bias = Vector::Zero(o.dim_);
        o.grads_.gain = Vector::Zero(o.dim_);
        o.grads_.bias = Vector::Zero(o.dim_);
        o.trace_ = Trace{};
        o.phase_ = Phase::idle;
    }

    Index dim_ = 0;
    Scalar eps_ = Scalar(1e-5);
    Weights weights_, grads_;
    Trace trace_;
    Phase phase_ = Phase::idle;
};

/// y = x Wᵀ + b for each row x (PyTorch's nn.Linear): W is out × in, b is out.
///
/// \tparam Scalar_ float or double.
template <typename Scalar_>
class Linear {
    static_assert(std::is_floating_point_v<Scalar_>, "Linear needs float or double");

public:
    using Scalar = Scalar_;
    using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
    using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    using Index = Eigen::Index;

    /// The weights (PyTorch's nn.Linear.weight and .bias).
    struct Weights {
        Matrix weight;  ///< W, out × in
        Vector bias;    ///< b, out
    };

    /// @param in ≥ 1, the width of x. @param out ≥ 1, the width of y.
    /// @param seed seed of the initial W, U(±1/√in) (nn.Linear's); b starts at 0.
    /// @throws infinityformer::invalid_argument on a size < 1 or beyond the machine's memory.
    Linear(Index in, Index out, std::uint64_t seed = 0) : in_(checked_sizes(in, out)), out_(out) {
        weights_.weight.resize(out, in);
        weights_.bias = Vector::Zero(out);
        grads_.weight = Matrix::Zero(out, in);
        grads_.bias = Vector::Zero(out);
        init_weights(seed);
    }

    Linear(const Linear&) = default;
    Linear& operator=(const Linear&) = default;
    /// Moves the weights and gradients (views from parameters() follow them): `o` keeps its
    /// sizes, with zero weights and gradients and no forward to differentiate.
    Linear(Linear&& o) { take(o); }
    Linear& operator=(Linear&& o) {
        if (this != &o) take(o);
        return *this;
    }

    Index in() const { return in_; }
    Index out() const { return out_; }
    const Weights& weights() const { return weights_; }
    /// Gradients accumulated by backward(), laid out as the weights.
    const Weights& gradients() const { return grads_; }

    /// Copies `w` into the existing storage (views from parameters() stay valid).
    /// @throws infinityformer::invalid_argument if W is not out × in or b not out × 1, or
    ///         one has a non-finite entry (nothing changed).
    void set_weights(const Weights& w) {
        constexpr const char* where = "Linear::set_weights";
        detail::check_matrix(where, "weight", w.weight, out_, in_);
        detail::check_matrix(where, "bias", w.bias, out_, 1);
        weights_.weight = w.weight;
        weights_.bias = w.bias;
    }

    /// W from U(±1/√in) (column by column) from a generator seeded with `seed`, b = 0,
    /// written into the existing storage.
    void init_weights(std::uint64_t seed) {
        detail::Random rng(seed);
        detail::fill_uniform(weights_.weight, 1.0 / std::sqrt(static_cast<double>(in_)), rng);
        weights_.bias.setZero();
    }

    /// y = X Wᵀ + b; X kept for backward().
    /// @param X n × in (n ≥ 0), finite. @return n × out.
    /// @throws infinityformer::invalid_argument on X's shape or a non-finite entry, a
    ///         non-finite weight, or an output that overflowed (nothing changed).
    Matrix forward(const Eigen::Ref<const Matrix>& X) {
        constexpr const char* where = "Linear::forward";
        detail::check_matrix(where, "X", X, X.rows(), in_);
        detail::check_weight(where, "", "weight", weights_.weight);
        detail::check_weight(where, "", "bias", weights_.bias);
        Matrix y(X.rows(), out_);
        y.noalias() = X * weights_.weight.transpose();
        y.rowwise() += weights_.bias.transpose();
        if (!detail::all_finite(y))
            detail::fail_forward<Scalar>(where, "X", detail::largest_abs(X),
                                         detail::largest_of(weights_.weight, weights_.bias));
        x_ = X;
        phase_ = Phase::forwarded;
        return y;
    }

    /// Backward of the last forward(X), consumed:
    ///   dW += dYᵀ X;  db += Σ_rows dY;  dX = dY W.
    /// @param dY n × out, ∂ℓ/∂y, finite. @return n × in, ∂ℓ/∂X.
    /// @throws infinityformer::logic_error without a forward() to differentiate;
    ///         invalid_argument on dY's shape or a non-finite entry, or a result that
    ///         overflowed (nothing changed).
    Matrix backward(const Eigen::Ref<const Matrix>& dY) {
        constexpr const char* where = "Linear::backward";
        if (phase_ != Phase::forwarded) detail::fail_no_forward(where, phase_ == Phase::consumed);
        detail::check_matrix(where, "dY", dY, x_.rows(), out_);
        Matrix dW(out_, in_);
        dW.noalias() = dY.transpose() * x_;
        const Vector db = dY.colwise().sum().transpose();
        Matrix dX(dY.rows(), in_);
        dX.noalias() = dY * weights_.weight;
        const std::string cause =
            detail::concat("dY's largest |entry| ", detail::largest_abs(dY), " (largest |X| ",
                           detail::largest_abs(x_), ", largest |weight| ",
                           detail::largest_abs(weights_.weight), ")");
        detail::check_gradient_sum(where, cause, "dY", "", "weight", grads_.weight, dW);
        detail::check_gradient_sum(where, cause, "dY", "", "bias", grads_.bias, db);
        detail::check_backward_result(where, cause, "dY", "dX", dX);
        grads_.weight += dW;
        grads_.bias += db;
        phase_ = Phase::consumed;
        return dX;
    }

    /// True if backward() has a forward() to differentiate.
    bool has_forward() const { return phase_ == Phase::forwarded; }

    /// Sets the accumulated gradients to zero.
    void zero_grad() {
        grads_.weight.setZero();
        grads_.bias.setZero();
    }

    /// The named weights with their gradients: `prefix`weight (out × in), `prefix`bias
    /// (out × 1).
    std::vector<Parameter<Scalar>> parameters(const std::string& prefix = "") {
        std::vector<Parameter<Scalar>> out;
        out.push_back(make_parameter(prefix + "weight", weights_.weight, grads_.weight));
        out.push_back(make_parameter(prefix + "bias", weights_.bias, grads_.bias));
        return out;
    }

private:
    enum class Phase { idle, forwarded, consumed };

    static Index checked_sizes(Index in, Index out) {
        constexpr const char* where = "Linear::Linear";
        detail::check_size(where, "in", in);
        detail::check_size(where, "out", out);
        detail::check_weight_entries<Scalar>(
            where, static_cast<double>(out) * (static_cast<double>(in) + 1));
        return in;
    }

    void take(Linear& o) {
        in_ = o.in_;
        out_ = o.out_;
        weights_ = std::move(o.weights_);
        grads_ = std::move(o.grads_);
        x_ = std::move(o.x_);
        phase_ = o.phase_;
        o.weights_ = {Matrix::Zero(o.out_, o.in_), Vector::Zero(o.out_)};
        o.grads_ = o.weights_;
        o.x_.resize(0, o.in_);
        o.phase_ = Phase::idle;
    }

    Index in_ = 0, out_ = 0;
    Weights weights_, grads_;
    Matrix x_;  // the last forward's X
    Phase phase_ = Phase::idle;
};

/// The position-wise feed-forward block of a Transformer, d → f → d:
///   y = act(x W₁ᵀ + b₁) W₂ᵀ + b₂,  W₁: f × d, W₂: d × f,  act ReLU or GELU.
///
/// \tparam Scalar_ float or double.
template <typename Scalar_>
class FeedForward {
    static_assert(std::is_floating_point_v<Scalar_>, "FeedForward needs float or double");

public:
    using Scalar = Scalar_;
    using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
    using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    using Index = Eigen::Index;

    /// The weights.
    struct Weights {
        Matrix w1;  ///< W₁, f × d
        Vector b1;  ///< b₁, f
        Matrix w2;  ///< W₂, d × f
        Vector b2;  ///< b₂, d
    };

    /// @param dim d ≥ 1. @param hidden f ≥ 1.
    /// @param seed seed of the initial weights: W₁ from U(±1/√d), then W₂ from U(±1/√f)
    ///        (nn.Linear's), from one generator; the biases start at 0.
    /// @param activation ReLU (default) or GELU.
    /// @throws infinityformer::invalid_argument on a size < 1 or beyond the machine's memory.
    FeedForward(Index dim, Index hidden, std::uint64_t seed = 0,
                Activation activation = Activation::relu)
        : dim_(checked_sizes(dim, hidden)), hidden_(hidden), activation_(activation) {
        weights_.w1.resize(hidden, dim);
        weights_.w2.resize(dim, hidden);
        weights_.b1 = Vector::Zero(hidden);
        weights_.b2 = Vector::Zero(dim);
        grads_ = zeros();
        init_weights(seed);
    }

    FeedForward(const FeedForward&) = default;
    FeedForward& operator=(const FeedForward&) = default;
    /// Moves the weights and gradients (views from parameters() follow them): `o` keeps its
    /// sizes and activation, with zero weights and gradients and no forward to
    /// differentiate.
    FeedForward(FeedForward&& o) { take(o); }
    FeedForward& operator=(FeedForward&& o) {
        if (this != &o) take(o);
        return *this;
    }

    Index dim() const { return dim_; }
    Index hidden() const { return hidden_; }
    Activation activation() const { return activation_; }
    const Weights& weights() const { return weights_; }
    /// Gradients accumulated by backward(), laid out as the weights.
    const Weights& gradients() const { return grads_; }

    /// Copies `w` into the existing storage (views from parameters() stay valid).
    /// @throws infinityformer::invalid_argument naming the first weight of a wrong shape or
    ///         with a non-finite entry (nothing changed).
    void set_weights(const Weights& w) {
        constexpr const char* where = "FeedForward::set_weights";
        detail::check_matrix(where, "w1", w.w1, hidden_, dim_);
        detail::check_matrix(where, "b1", w.b1, hidden_, 1);
        detail::check_matrix(where, "w2", w.w2, dim_, hidden_);
        detail::check_matrix(where, "b2", w.b2, dim_, 1);
        weights_.w1 = w.w1;
        weights_.b1 = w.b1;
        weights_.w2 = w.w2;
        weights_.b2 = w.b2;
    }

    /// W₁ from U(±1/√d), then W₂ from U(±1/√f) (each column by column), from a generator
    /// seeded with `seed`; b₁ = b₂ = 0. Written into the existing storage.
    void init_weights(std::uint64_t seed) {
        detail::Random rng(seed);
        detail::fill_uniform(weights_.w1, 1.0 / std::sqrt(static_cast<double>(dim_)), rng);
        detail::fill_uniform(weights_.w2, 1.0 / std::sqrt(static_cast<double>(hidden_)), rng);
        weights_.b1.setZero();
        weights_.b2.setZero();
    }

    /// y for each row of X; what backward() needs is kept.
    /// @param X n × d (n ≥ 0), finite. @return n × d.
    /// @throws infinityformer::invalid_argument on X's shape or a non-finite entry, a
    ///         non-finite weight (named as parameters() lists it), or an output that
    ///         overflowed (nothing changed).
    Matrix forward(const Eigen::Ref<const Matrix>& X) {
        constexpr const char* where = "FeedForward::forward";
        detail::check_matrix(where, "X", X, X.rows(), dim_);
        detail::check_weight(where, "", "w1", weights_.w1);
        detail::check_weight(where, "", "b1", weights_.b1);
        detail::check_weight(where, "", "w2", weights_.w2);
        detail::check_weight(where, "", "b2", weights_.b2);
        Trace t;
        t.x = X;
        t.pre.resize(X.rows(), hidden_);
        t.pre.noalias() = X * weights_.w1.transpose();
        t.pre.rowwise() += weights_.b1.transpose();
        t.h = t.pre.unaryExpr([this](Scalar v) { return act(v); });
        Matrix y(X.rows(), dim_);
        y.noalias() = t.h * weights_.w2.transpose();
        y.rowwise() += weights_.b2.transpose();
        if (!detail::all_finite(t.pre) || !detail::all_finite(y))
            detail::fail_forward<Scalar>(
                where, "X", detail::largest_abs(X),
                detail::largest_of(weights_.w1, weights_.b1, weights_.w2, weights_.b2));
        trace_ = std::move(t);
        phase_ = Phase::forwarded;
        return y;
    }

    /// Backward of the last forward(X), consumed: with a = X W₁ᵀ + b₁, h = act(a),
    ///   dW₂ += dYᵀ h;  db₂ += Σ_rows dY;  da = (dY W₂) ⊙ act′(a);
    ///   dW₁ += daᵀ X;  db₁ += Σ_rows da;  dX = da W₁.
    /// @param dY n × d, ∂ℓ/∂y, finite. @return n × d, ∂ℓ/∂X.
    /// @throws infinityformer::logic_error without a forward() to differentiate;
    ///         invalid_argument on dY's shape or a non-finite entry, or a result that
    ///         overflowed (nothing changed).
    Matrix backward(const Eigen::Ref<const Matrix>& dY) {
        constexpr const char* where = "FeedForward::backward";
        if (phase_ != Phase::forwarded) detail::fail_no_forward(where, phase_ == Phase::consumed);
        detail::check_matrix(where, "dY", dY, trace_.x.rows(), dim_);
        Weights g;
        g.w2.resize(dim_, hidden_);
        g.w2.noalias() = dY.transpose() * trace_.h;
        g.b2 = dY.colwise().sum().transpose();
        Matrix da(dY.rows(), hidden_);
        da.noalias() = dY * weights_.w2;
        da = da.cwiseProduct(trace_.pre.unaryExpr([this](Scalar v) { return act_derivative(v); }));
        g.w1.resize(hidden_, dim_);
        g.w1.noalias() = da.transpose() * trace_.x;
        g.b1 = da.colwise().sum().transpose();
        Matrix dX(dY.rows(), dim_);
        dX.noalias() = da * weights_.w1;
        const std::string cause =
            detail::concat("dY's largest |entry| ", detail::largest_abs(dY), " (largest |X| ",
                           detail::largest_abs(trace_.x), ", largest |weight| ",
                           detail::largest_of(weights_.w1, weights_.w2), ")");
        detail::check_gradient_sum(where, cause, "dY", "", "w1", grads_.w1, g.w1);
        detail::check_gradient_sum(where, cause, "dY", "", "b1", grads_.b1, g.b1);
        detail::check_gradient_sum(where, cause, "dY", "", "w2", grads_.w2, g.w2);
        detail::check_gradient_sum(where, cause, "dY", "", "b2", grads_.b2, g.b2);
        detail::check_backward_result(where, cause, "dY", "dX", dX);
        grads_.w1 += g.w1;
        grads_.b1 += g.b1;
        grads_.w2 += g.w2;
        grads_.b2 += g.b2;
        phase_ = Phase::consumed;
        return dX;
    }

    /// True if backward() has a forward() to differentiate.
    bool has_forward() const { return phase_ == Phase::forwarded; }

    /// Sets the accumulated gradients to zero.
    void zero_grad() { grads_ = zeros(); }

    /// The named weights with their gradients: `prefix`w1 (f × d), `prefix`b1 (f × 1),
    /// `prefix`w2 (d × f), `prefix`b2 (d × 1).
    std::vector<Parameter<Scalar>> parameters(const std::string& prefix = "") {
        std::vector<Parameter<Scalar>> out;
        out.push_back(make_parameter(prefix + "w1", weights_.w1, grads_.w1));
        out.push_back(make_parameter(prefix + "b1", weights_.b1, grads_.b1));
        out.push_back(make_parameter(prefix + "w2", weights_.w2, grads_.w2));
        out.push_back(make_parameter(prefix + "b2", weights_.b2, grads_.b2));
        return out;
    }

private:
    enum class Phase { idle, forwarded, consumed };
    struct Trace {
        Matrix x;    ///< X, n × d
        Matrix pre;  ///< a = X W₁ᵀ + b₁, n × f
        Matrix h;    ///< act(a), n × f
    };

    static Index checked_sizes(Index dim, Index hidden) {
        constexpr const char* where = "FeedForward::FeedForward";
        detail::check_size(where, "dim", dim);
        detail::check_size(where, "hidden", hidden);
        detail::check_weight_entries<Scalar>(
            where, 2 * static_cast<double>(dim) * static_cast<double>(hidden) +
                       static_cast<double>(dim + hidden));
        return dim;
    }

    // GELU: x Φ(x), Φ(x) = (1 + erf(x/√2))/2; its derivative Φ(x) + x φ(x).
    Scalar act(Scalar v) const {
        using std::erf;
        if (activation_ == Activation::relu) return v > Scalar(0) ? v : Scalar(0);
        return v * Scalar(0.5) * (Scalar(1) + erf(v * Scalar(0.70710678118654752440)));
    }
    Scalar act_derivative(Scalar v) const {
        using std::erf;
        using std::exp;
        if (activation_ == Activation::relu) return v > Scalar(0) ? Scalar(1) : Scalar(0);
        const Scalar cdf = Scalar(0.5) * (Scalar(1) + erf(v * Scalar(0.70710678118654752440)));
        const Scalar pdf = Scalar(detail::kInvSqrt2Pi) * exp(Scalar(-0.5) * v * v);
        return cdf + v * pdf;
    }

    Weights zeros() const {
        return {Matrix::Zero(hidden_, dim_), Vector::Zero(hidden_), Matrix::Zero(dim_, hidden_),
                Vector::Zero(dim_)};
    }

    void take(FeedForward& o) {
        dim_ = o.dim_;
        hidden_ = o.hidden_;
        activation_ = o.activation_;
        weights_ = std::move(o.weights_);
        grads_ = std::move(o.grads_);
        trace_ = std::move(o.trace_);
        phase_ = o.phase_;
        o.weights_ = o.zeros();
        o.grads_ = o.zeros();
        o.trace_ = Trace{};
        o.phase_ = Phase::idle;
    }

    Index dim_ = 0, hidden_ = 0;
    Activation activation_ = Activation::relu;
    Weights weights_, grads_;
    Trace trace_;
    Phase phase_ = Phase::idle;
};

/// The mean over the rows that have a target of −log softmax(logits row)[target], and its
/// gradient (softmax − one-hot(target)) / (rows with a target) in `dlogits` (zero rows
/// where the target is ignore_target). Computed in double with log-sum-exp (the largest
/// logit of each row subtracted first), so finite logits give a finite loss unless a row's
/// logits span more than the largest double.
/// @param logits n × V, finite. @param targets n entries (any integer type), each in [0, V)
///        or ignore_target (−1) for a row without one; at least one not ignored.
/// @param dlogits resized to n × V, receives ∂loss/∂logits (written only on success).
/// @return the mean loss.
/// @throws infinityformer::invalid_argument on the number of targets, a target out of
///         range, no target, a non-finite logit, or a loss that overflowed (dlogits
///         unchanged).
template <typename Derived, typename Int>
double softmax_cross_entropy(
    const Eigen::MatrixBase<Derived>& logits, const std::vector<Int>& targets,
    Eigen::Matrix<typename Derived::Scalar, Eigen::Dynamic, Eigen::Dynamic>& dlogits) {
    static_assert(std::is_integral_v<Int>, "targets are integers");
    using Scalar = typename Derived::Scalar;
    using Index = Eigen::Index;
    constexpr const char* where = "softmax_cross_entropy";
    const Index n = logits.rows(), v = logits.cols();
    detail::require(static_cast<Index>(targets.size()) == n, where, "targets has ", targets.size(),
                    " entries, expected ", n, " (the rows of logits)");
    Index counted = 0;
    for (std::size_t i = 0; i < targets.size(); ++i) {
        const Int t = targets[i];
        if constexpr (std::is_signed_v<Int>) {
            if (static_cast<long long>(t) == ignore_target) continue;
        }
        bool ok = true;
        if constexpr (std::is_signed_v<Int>) ok = t >= 0;
        ok = ok && static_cast<unsigned long long>(t) < static_cast<unsigned long long>(v);
        detail::require(ok, where, "targets[", i, "] is ", +t, ", expected 0 <= target < ", v,
                        " (the columns of logits) or ", ignore_target, " (ignore_target)");
        ++counted;
    }
    detail::require(counted > 0, where, "targets has no entry other than ", ignore_target,
                    " (ignore_target), expected at least one target");
    detail::check_finite(where, "logits", logits);
    const double scale = 1.0 / static_cast<double>(counted);
    Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> g =
        Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>::Zero(n, v);
    Eigen::VectorXd z(v), e(v);
    double loss = 0;
    for (Index i = 0; i < n; ++i) {
        const auto t = static_cast<long long>(targets[static_cast<std::size_t>(i)]);
        if (t == ignore_target) continue;
        z = logits.row(i).transpose().template cast<double>();
        const double top = z.maxCoeff();
        e = (z.array() - top).exp().matrix();  // in [0, 1], the largest 1
        const double sum = e.sum();            // in [1, V]
        const double row_loss = std::log(sum) - (z[t] - top);
        if (!std::isfinite(row_loss))
            detail::fail(where, "the loss of row ", i, " overflowed (its logits span from ",
                         z.minCoeff(), " to ", top,
                         "), expected logits whose differences stay "
                         "below ",
                         std::numeric_limits<double>::max());
        loss += row_loss * scale;  // the mean as it goes: no overflow of the sum
        e /= sum;
        e[t] -= 1.0;
        g.row(i) = (e * scale).transpose().template cast<Scalar>();
    }
    detail::require(std::isfinite(loss), where,
                    "the mean loss overflowed, expected logits whose "
                    "differences stay below ",
                    std::numeric_limits<double>::max());
    dlogits = std::move(g);
    return loss;
}

/// softmax_cross_entropy() without the gradient: the mean loss only.
template <typename Derived, typename Int>
double softmax_cross_entropy(const Eigen::MatrixBase<Derived>& logits,
                             const std::vector<Int>& targets) {
    Eigen::Matrix<typename Derived::Scalar, Eigen::Dynamic, Eigen::Dynamic> unused;
    return softmax_cross_entropy(logits, targets, unused);
}

}  // namespace infinityformer
