/// @file gate.hpp
/// @brief The memory gate (the authors' "mask", `mask_type = cnn`): a width-3 convolution
/// over time followed by a sigmoid, scaling every vector that enters the long-term memory.
#pragma once

#include <Eigen/Core>
#include <array>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "continuous_attention.hpp"
#include "detail/random.hpp"
#include "errors.hpp"

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
    explicit MemoryGate(Index dim, std::uint64_t seed = 0) : dim_(dim) {
        detail::require(dim >= 1, "MemoryGate::MemoryGate", "dim is ", dim, ", expected >= 1");
        init_weights(seed);
    }

    Index dim() const { return dim_; }
    const Weights& weights() const { return weights_; }

    /// @throws infinityformer::invalid_argument on a shape or non-finite entry (unchanged).
    void set_weights(const Weights& w) {
        constexpr const char* where = "MemoryGate::set_weights";
        detail::check_matrix(where, "taps[0]", w.taps[0], dim_, dim_);
        detail::check_matrix(where, "taps[1]", w.taps[1], dim_, dim_);
        detail::check_matrix(where, "taps[2]", w.taps[2], dim_, dim_);
        detail::check_matrix(where, "bias", w.bias, dim_, 1);
        weights_ = w;
    }

    void init_weights(std::uint64_t seed) {
        detail::Random rng(seed);
        Weights w;
        const double bound = 1.0 / std::sqrt(3.0 * static_cast<double>(dim_));
        for (auto& tap : w.taps) {
            tap.resize(dim_, dim_);
            detail::fill_uniform(tap, bound, rng);
        }
        w.bias.resize(dim_);
        detail::fill_uniform(w.bias, bound, rng);
        weights_ = std::move(w);
    }

    /// @param X L × e (L ≥ 1), finite. @param gate L × e, receives g.
    /// @param gated L × e, receives g ⊙ X.
    void forward(const Eigen::Ref<const Matrix>& X, Eigen::Ref<Matrix> gate,
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

private:
    Index dim_;
    Weights weights_;
};

using MemoryGated = MemoryGate<double>;
using MemoryGatef = MemoryGate<float>;

}  // namespace infinityformer
