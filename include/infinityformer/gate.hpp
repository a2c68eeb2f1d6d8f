/// @file gate.hpp
/// @brief The memory gate (the authors' "mask", `mask_type = cnn`): a width-3 convolution
/// over time followed by a sigmoid, scaling every vector that enters the long-term memory.
#pragma once

#include <Eigen/Core>
#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "detail/config.hpp"
#include "detail/limits.hpp"
#include "detail/math.hpp"
#include "detail/random.hpp"
#include "errors.hpp"
#include "parameter_view.hpp"

namespace infinityformer {

/// For a chunk X (L × e, row x_t the vector at time t):
///   a_t = b + W₀ x_{t−1} + W₁ x_t + W₂ x_{t+1},   x_{−1} = x_L = 0
///   g_t = sigmoid(a_t),   x̃_t = g_t ⊙ x_t.
/// Taps in cross-correlation order (W₀ reads the previous vector), zero padding at both
/// ends of every chunk: the gate sees the chunk alone, as the reference's Conv1d does.
/// W_j (e × e, out × in) is the reference's `mask_net.weight[:, :, j]`.
///
/// \tparam Scalar_ float or double.
template <typename Scalar_>
class MemoryGate {
    static_assert(std::is_floating_point_v<Scalar_>, "MemoryGate needs float or double");
    static_assert(detail::instantiable_scalar<Scalar_>(),
                  "infinityformer::compiled holds MemoryGate<float> and <double> only");

public:
    using Scalar = Scalar_;
    using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
    using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    using Index = Eigen::Index;

    struct Weights {
        std::array<Matrix, 3> taps;  ///< W₀, W₁, W₂, each e × e (out × in)
        Vector bias;                 ///< b, e
    };

    /// @param dim e ≥ 1. Weights initialised as PyTorch's Conv1d: U(±1/√(3e)).
    /// @param seed seed of the initial weights (used as given).
    explicit MemoryGate(Index dim, std::uint64_t seed = 0);

    /// Bytes of the weights, their gradients and a backward's gradients (computed aside) of a
    /// gate of width e (the constructor refuses a width beyond the machine's memory).
    static double weight_bytes(Index dim) {
        const double e = static_cast<double>(dim);
        return static_cast<double>(sizeof(Scalar)) * 3 * (3 * e * e + e);
    }

    MemoryGate(const MemoryGate&) = default;
    MemoryGate& operator=(const MemoryGate&) = default;
    /// Moves the weights and gradients (views from parameters() follow them): `o` keeps its
    /// sizes and settings, with zero weights and gradients, and no forward to differentiate;
    /// every call on it works. Allocates `o`'s zeros.
    MemoryGate(MemoryGate&& o) { take(o); }
    MemoryGate& operator=(MemoryGate&& o) {
        if (this != &o) take(o);
        return *this;
    }

    Index dim() const { return dim_; }
    const Weights& weights() const { return weights_; }

    /// Copies `w` into the existing storage (views from append_parameters() stay valid).
    /// @throws infinityformer::invalid_argument on a shape or non-finite entry (unchanged).
    void set_weights(const Weights& w);

    /// PyTorch's Conv1d initialisation U(±1/√(3e)) from a seeded generator, written into the
    /// existing storage (views from append_parameters() stay valid).
    void init_weights(std::uint64_t seed);

    /// @param X L × e (L ≥ 1), finite. @param gate L × e, receives g.
    /// @param gated L × e, receives g ⊙ X.
    void forward(const Eigen::Ref<const Matrix>& X, Eigen::Ref<Matrix> gate,
                 Eigen::Ref<Matrix> gated) const;

    /// Throws infinityformer::invalid_argument if a weight has a non-finite entry (named
    /// `prefix` + weight.0/1/2 or bias, as parameters() lists them).
    void check_weights(const char* where, const std::string& prefix) const;

    /// Gradients accumulated by backward(), laid out as the weights.
    const Weights& gradients() const { return grads_; }
    void zero_grad();

    /// Appends the named weights and gradients: `prefix`weight.0/1/2 (tap j is the reference's
    /// mask_net.weight[:, :, j]) and `prefix`bias.
    void append_parameters(std::vector<Parameter<Scalar>>& out, const std::string& prefix = "");
    /// Views of the weights with the gradients `grads` (laid out as the weights) in place
    /// of the accumulated ones.
    void append_parameters(std::vector<Parameter<Scalar>>& out, const std::string& prefix,
                           Weights& grads);

    /// Backward of forward(X) → (gate, gated): accumulates ∂ℓ/∂W_j and ∂ℓ/∂b into
    /// gradients() and writes ∂ℓ/∂X, given ∂ℓ/∂gated.
    ///   dA = dX̃ ⊙ X ⊙ g ⊙ (1 − g);  db = Σ_t dA_t;  dW_j = Σ_t dA_t x_{t+j−1}ᵀ
    ///   dx_t = g_t ⊙ dx̃_t + W₀ᵀ dA_{t+1} + W₁ᵀ dA_t + W₂ᵀ dA_{t−1}
    /// @param X L × e (the forward's input). @param gate L × e (the forward's g).
    /// @param dgated L × e. @param dX L × e.
    /// @throws infinityformer::invalid_argument on shapes, non-finite input or a result that
    ///         overflowed (nothing changed: no gradient, dX not written).
    void backward(const Eigen::Ref<const Matrix>& X, const Eigen::Ref<const Matrix>& gate,
                  const Eigen::Ref<const Matrix>& dgated, Eigen::Ref<Matrix> dX);

    /// backward() without the argument checks; the results are checked (computed aside,
    /// added and written only once all are finite).
    /// @throws infinityformer::invalid_argument if a result overflowed (nothing changed).
    void backward_unchecked(const Eigen::Ref<const Matrix>& X, const Eigen::Ref<const Matrix>& gate,
                            const Eigen::Ref<const Matrix>& dgated, Eigen::Ref<Matrix> dX);

    /// Workspace of the backward pass, held by the caller of backward_compute(w): this
    /// call's results, kept once all are finite.
    struct Work {
        Matrix dA, dx;
        Weights dgrad;
    };

    /// The computing half of backward() (inputs checked): this call's gradients of the
    /// weights and ∂ℓ/∂X (backward_dX()) into the workspace; nothing accumulated.
    void backward_compute(const Eigen::Ref<const Matrix>& X, const Eigen::Ref<const Matrix>& gate,
                          const Eigen::Ref<const Matrix>& dgated);
    /// backward_compute() into the caller's workspace `w`.
    void backward_compute(const Eigen::Ref<const Matrix>& X, const Eigen::Ref<const Matrix>& gate,
                          const Eigen::Ref<const Matrix>& dgated, Work& w) const;

    /// True if every result of the last backward_compute() is finite, and so is every
    /// gradient once it is added (one vectorised pass over each).
    bool backward_finite() const;
    /// backward_finite() of workspace `w`, with the gradients `into` it will be added to.
    bool backward_finite(const Work& w, const Weights& into) const;

    /// Throws infinityformer::invalid_argument naming the first result of the last
    /// backward_compute() that is not finite (a weight's gradient as `prefix` + weight.j or
    /// bias, or its sum with the accumulated one; then dX), with `cause` and `inputs` (see
    /// detail::fail_backward()).
    [[noreturn]] void explain_backward(const char* where, const std::string& prefix,
                                       const std::string& cause, const std::string& inputs) const;
    /// explain_backward() of workspace `w` and the gradients `into`.
    [[noreturn]] void explain_backward(const char* where, const std::string& prefix,
                                       const std::string& cause, const std::string& inputs,
                                       const Work& w, const Weights& into) const;

    /// ∂ℓ/∂X of the last backward_compute() (L × e).
    const Matrix& backward_dX() const { return work_.dx; }

    /// The keeping half, after backward_compute() and backward_finite(): adds this call's
    /// gradients to gradients() (additions only; nothing throws).
    void backward_accumulate();
    /// backward_accumulate() of workspace `w` into gradients().
    void backward_accumulate(const Work& w);
    /// backward_accumulate() of workspace `w` into the gradients `into`.
    static void backward_accumulate(const Work& w, Weights& into);
    /// Zero gradients laid out as the weights (a thread's own sum of gradients).
    Weights zero_gradients() const;

private:
    // backward_compute(), the check, then backward_accumulate() and dX.
    void backward_checked(const char* where, const Eigen::Ref<const Matrix>& X,
                          const Eigen::Ref<const Matrix>& gate,
                          const Eigen::Ref<const Matrix>& dgated, Eigen::Ref<Matrix> dX) {
        backward_compute(X, gate, dgated);
        if (!backward_finite())
            explain_backward(
                where, "",
                detail::concat("dgated's largest |entry| ", detail::largest_abs(dgated),
                               " (largest |X| ", detail::largest_abs(X), ")"),
                "dgated and X");
        backward_accumulate();
        dX = work_.dx;
    }

    // The moves: everything moved; `o` left with zero weights and gradients of its width.
    void take(MemoryGate& o) {
        dim_ = o.dim_;
        weights_ = std::move(o.weights_);
        grads_ = std::move(o.grads_);
        work_ = std::move(o.work_);
        o.zero_grad();
        o.weights_ = o.grads_;
    }

    Index dim_ = 0;
    Weights weights_;
    Weights grads_;
    Work work_;
};

#if INFINITYFORMER_HEADER_ONLY

template <typename Scalar_>
MemoryGate<Scalar_>::MemoryGate(Index dim, std::uint64_t seed) : dim_(dim) {
    constexpr const char* where = "MemoryGate::MemoryGate";
    detail::require(dim >= 1, where, "dim is ", dim, ", expected >= 1");
    const double e = static_cast<double>(dim);
    detail::require_allocatable(where, "the weights (3 taps of dim x dim) and gradients", e * e,
                                weight_bytes(dim));
    init_weights(seed);
}

template <typename Scalar_>
void MemoryGate<Scalar_>::set_weights(const Weights& w) {
    constexpr const char* where = "MemoryGate::set_weights";
    detail::check_matrix(where, "taps[0]", w.taps[0], dim_, dim_);
    detail::check_matrix(where, "taps[1]", w.taps[1], dim_, dim_);
    detail::check_matrix(where, "taps[2]", w.taps[2], dim_, dim_);
    detail::check_matrix(where, "bias", w.bias, dim_, 1);
    weights_ = w;  // same shapes: copied into the existing storage
}

template <typename Scalar_>
void MemoryGate<Scalar_>::init_weights(std::uint64_t seed) {
    detail::Random rng(seed);
    const double bound = 1.0 / std::sqrt(3.0 * static_cast<double>(dim_));
    for (auto& tap : weights_.taps) {
        tap.resize(dim_, dim_);  // allocates only in the constructor; a no-op afterwards
        detail::fill_uniform(tap, bound, rng);
    }
    weights_.bias.resize(dim_);
    detail::fill_uniform(weights_.bias, bound, rng);
}

template <typename Scalar_>
void MemoryGate<Scalar_>::forward(const Eigen::Ref<const Matrix>& X, Eigen::Ref<Matrix> gate,
                                  Eigen::Ref<Matrix> gated) const {
    constexpr const char* where = "MemoryGate::forward";
    detail::require(X.rows() >= 1, where, "X has 0 rows, expected at least 1");
    detail::require(X.cols() == dim_, where, "X has ", X.cols(), " cols, expected ", dim_);
    detail::check_finite(where, "X", X);
    detail::check_shape(where, "gate", gate, X.rows(), dim_);
    detail::check_shape(where, "gated", gated, X.rows(), dim_);
    const Index l = X.rows();
    gate.noalias() = X * weights_.taps[1].transpose();
    gate.rowwise() += weights_.bias.transpose();
    if (l > 1) {
        gate.bottomRows(l - 1).noalias() += X.topRows(l - 1) * weights_.taps[0].transpose();
        gate.topRows(l - 1).noalias() += X.bottomRows(l - 1) * weights_.taps[2].transpose();
    }
    gate = gate.unaryExpr([](Scalar a) { return detail::sigmoid(a); });
    gated = gate.cwiseProduct(X);
}

template <typename Scalar_>
void MemoryGate<Scalar_>::check_weights(const char* where, const std::string& prefix) const {
    for (int j = 0; j < 3; ++j) {
        const std::string name = "weight." + std::to_string(j);
        detail::check_weight(where, prefix, name.c_str(),
                             weights_.taps[static_cast<std::size_t>(j)]);
    }
    detail::check_weight(where, prefix, "bias", weights_.bias);
}

template <typename Scalar_>
void MemoryGate<Scalar_>::zero_grad() {
    for (auto& tap : grads_.taps) tap.setZero(dim_, dim_);
    grads_.bias.setZero(dim_);
}

template <typename Scalar_>
void MemoryGate<Scalar_>::append_parameters(std::vector<Parameter<Scalar>>& out,
                                            const std::string& prefix) {
    if (grads_.bias.size() != dim_) zero_grad();
    append_parameters(out, prefix, grads_);
}

template <typename Scalar_>
void MemoryGate<Scalar_>::append_parameters(std::vector<Parameter<Scalar>>& out,
                                            const std::string& prefix, Weights& grads) {
    for (int j = 0; j < 3; ++j)
        detail::append_parameter(out, prefix + "weight." + std::to_string(j),
                                 weights_.taps[static_cast<std::size_t>(j)],
                                 grads.taps[static_cast<std::size_t>(j)]);
    detail::append_parameter(out, prefix + "bias", weights_.bias, grads.bias);
}

template <typename Scalar_>
void MemoryGate<Scalar_>::backward(const Eigen::Ref<const Matrix>& X,
                                   const Eigen::Ref<const Matrix>& gate,
                                   const Eigen::Ref<const Matrix>& dgated, Eigen::Ref<Matrix> dX) {
    constexpr const char* where = "MemoryGate::backward";
    detail::require(X.rows() >= 1, where, "X has 0 rows, expected at least 1");
    detail::check_matrix(where, "X", X, X.rows(), dim_);
    detail::check_matrix(where, "gate", gate, X.rows(), dim_);
    detail::check_matrix(where, "dgated", dgated, X.rows(), dim_);
    detail::check_shape(where, "dX", dX, X.rows(), dim_);
    backward_checked(where, X, gate, dgated, dX);
}

template <typename Scalar_>
void MemoryGate<Scalar_>::backward_unchecked(const Eigen::Ref<const Matrix>& X,
                                             const Eigen::Ref<const Matrix>& gate,
                                             const Eigen::Ref<const Matrix>& dgated,
                                             Eigen::Ref<Matrix> dX) {
    backward_checked("MemoryGate::backward_unchecked", X, gate, dgated, dX);
}

template <typename Scalar_>
void MemoryGate<Scalar_>::backward_compute(const Eigen::Ref<const Matrix>& X,
                                           const Eigen::Ref<const Matrix>& gate,
                                           const Eigen::Ref<const Matrix>& dgated) {
    backward_compute(X, gate, dgated, work_);
}

template <typename Scalar_>
void MemoryGate<Scalar_>::backward_compute(const Eigen::Ref<const Matrix>& X,
                                           const Eigen::Ref<const Matrix>& gate,
                                           const Eigen::Ref<const Matrix>& dgated, Work& w) const {
    const Index l = X.rows();
    w.dA =
        dgated.cwiseProduct(X).cwiseProduct(gate.cwiseProduct((Scalar(1) - gate.array()).matrix()));
    w.dgrad.bias.noalias() = w.dA.colwise().sum().transpose();
    w.dgrad.taps[1].noalias() = w.dA.transpose() * X;
    w.dx = gate.cwiseProduct(dgated);
    w.dx.noalias() += w.dA * weights_.taps[1];
    if (l > 1) {
        w.dgrad.taps[0].noalias() = w.dA.bottomRows(l - 1).transpose() * X.topRows(l - 1);
        w.dgrad.taps[2].noalias() = w.dA.topRows(l - 1).transpose() * X.bottomRows(l - 1);
        w.dx.topRows(l - 1).noalias() += w.dA.bottomRows(l - 1) * weights_.taps[0];
        w.dx.bottomRows(l - 1).noalias() += w.dA.topRows(l - 1) * weights_.taps[2];
    } else {
        w.dgrad.taps[0].setZero(dim_, dim_);
        w.dgrad.taps[2].setZero(dim_, dim_);
    }
}

template <typename Scalar_>
bool MemoryGate<Scalar_>::backward_finite() const {
    return backward_finite(work_, grads_);
}

template <typename Scalar_>
bool MemoryGate<Scalar_>::backward_finite(const Work& w, const Weights& into) const {
    return detail::sum_finite(into.bias, w.dgrad.bias) &&
           detail::sum_finite(into.taps[0], w.dgrad.taps[0]) &&
           detail::sum_finite(into.taps[1], w.dgrad.taps[1]) &&
           detail::sum_finite(into.taps[2], w.dgrad.taps[2]) && detail::all_finite(w.dx);
}

template <typename Scalar_>
void MemoryGate<Scalar_>::explain_backward(const char* where, const std::string& prefix,
                                           const std::string& cause,
                                           const std::string& inputs) const {
    explain_backward(where, prefix, cause, inputs, work_, grads_);
}

template <typename Scalar_>
void MemoryGate<Scalar_>::explain_backward(const char* where, const std::string& prefix,
                                           const std::string& cause, const std::string& inputs,
                                           const Work& w, const Weights& into) const {
    detail::check_gradient_sum(where, cause, inputs, prefix, "bias", into.bias, w.dgrad.bias);
    for (std::size_t j = 0; j < 3; ++j) {
        const std::string name = "weight." + std::to_string(j);
        detail::check_gradient_sum(where, cause, inputs, prefix, name.c_str(), into.taps[j],
                                   w.dgrad.taps[j]);
    }
    detail::check_backward_result(where, cause, inputs, "the gate's dX", w.dx);
    detail::fail(where, "a backward result is not finite (", cause, ")");
}

template <typename Scalar_>
void MemoryGate<Scalar_>::backward_accumulate() {
    if (grads_.bias.size() != dim_) zero_grad();
    backward_accumulate(work_, grads_);
}

template <typename Scalar_>
void MemoryGate<Scalar_>::backward_accumulate(const Work& w) {
    if (grads_.bias.size() != dim_) zero_grad();
    backward_accumulate(w, grads_);
}

template <typename Scalar_>
void MemoryGate<Scalar_>::backward_accumulate(const Work& w, Weights& into) {
    into.bias += w.dgrad.bias;
    for (std::size_t j = 0; j < 3; ++j) into.taps[j] += w.dgrad.taps[j];
}

template <typename Scalar_>
auto MemoryGate<Scalar_>::zero_gradients() const -> Weights {
    Weights g;
    g.bias.setZero(dim_);
    for (auto& t : g.taps) t.setZero(dim_, dim_);
    return g;
}

#endif  // INFINITYFORMER_HEADER_ONLY

INFINITYFORMER_EXTERN_TEMPLATE(class, MemoryGate)

using MemoryGated = MemoryGate<double>;
using MemoryGatef = MemoryGate<float>;

}  // namespace infinityformer
