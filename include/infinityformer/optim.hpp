/// @file optim.hpp
/// @brief The Adam optimiser (Kingma & Ba 2015) with optional decoupled weight decay
/// (AdamW, Loshchilov & Hutter 2019) and global gradient-norm clipping.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "detail/config.hpp"
#include "detail/limits.hpp"
#include "detail/math.hpp"
#include "errors.hpp"
#include "parameter_view.hpp"

namespace infinityformer {

/// Hyper-parameters of Adam; defaults are the usual ones (PyTorch's torch.optim.Adam).
struct AdamOptions {
    double learning_rate = 1e-3;  ///< step size α > 0
    double beta1 = 0.9;           ///< decay of the first moment, in [0, 1)
    double beta2 = 0.999;         ///< decay of the second moment, in [0, 1)
    double epsilon = 1e-8;        ///< added to √v̂, > 0
    double weight_decay = 0.0;    ///< decoupled decay: w ← w − α·λ·w (AdamW), ≥ 0
    double clip_norm = 0.0;       ///< if > 0, gradients are scaled so that their global L2
                                  ///< norm is at most clip_norm; 0 = no clipping

    /// @throws infinityformer::invalid_argument naming the field out of range.
    void validate() const {
        constexpr const char* where = "AdamOptions::validate";
        detail::require(std::isfinite(learning_rate) && learning_rate > 0.0, where,
                        "learning_rate is ", learning_rate, ", expected > 0");
        detail::require(beta1 >= 0.0 && beta1 < 1.0, where, "beta1 is ", beta1,
                        ", expected 0 <= beta1 < 1");
        detail::require(beta2 >= 0.0 && beta2 < 1.0, where, "beta2 is ", beta2,
                        ", expected 0 <= beta2 < 1");
        detail::require(std::isfinite(epsilon) && epsilon > 0.0, where, "epsilon is ", epsilon,
                        ", expected > 0");
        detail::require(std::isfinite(weight_decay) && weight_decay >= 0.0, where,
                        "weight_decay is ", weight_decay, ", expected >= 0");
        detail::require(std::isfinite(clip_norm) && clip_norm >= 0.0, where, "clip_norm is ",
                        clip_norm, ", expected >= 0 (0 = no clipping)");
    }

    /// validate(), then what the Scalar of the weights cannot hold: the learning rate and
    /// epsilon must be normal numbers of it (an epsilon that rounds to 0 divides 0 by 0 for
    /// a weight whose gradient has been 0), and so must learning_rate · weight_decay if
    /// weight_decay > 0. @param where the public call, named in the message.
    template <typename Scalar>
    void validate_for(const char* where) const {
        validate();
        detail::require_normal<Scalar>(where, "learning_rate", learning_rate,
                                       "expected a step the weights' Scalar can hold");
        detail::require_normal<Scalar>(where, "epsilon", epsilon,
                                       "expected a value that does not round to 0");
        if (weight_decay > 0.0)
            detail::require_normal<Scalar>(where, "learning_rate * weight_decay",
                                           learning_rate * weight_decay,
                                           "expected a decay the weights' Scalar can hold");
    }
};

/// Adam over a list of Parameter views (e.g. InfinityFormerLayer::parameters()).
/// The moment buffers are allocated once, in the constructor; step() allocates nothing.
///
/// \tparam Scalar_ float or double.
template <typename Scalar_>
class Adam {
    static_assert(std::is_floating_point_v<Scalar_>, "Adam needs float or double");
    static_assert(detail::instantiable_scalar<Scalar_>(),
                  "infinityformer::compiled holds Adam<float> and <double> only");

public:
    using Scalar = Scalar_;
    using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

    /// @param parameters the views to update (each with rows, cols >= 0 and both pointers
    ///        set unless it is empty). @param options validated for Scalar.
    /// @throws infinityformer::invalid_argument naming the option or the parameter.
    explicit Adam(std::vector<Parameter<Scalar>> parameters, const AdamOptions& options = {});

    const AdamOptions& options() const { return opt_; }
    /// Changes the options (e.g. a learning-rate schedule); the moments are kept.
    void set_options(const AdamOptions& options);
    const std::vector<Parameter<Scalar>>& parameters() const { return params_; }
    long steps() const { return t_; }
    /// Global L2 norm of the gradients seen by the last step(), before clipping.
    double last_grad_norm() const { return last_norm_; }

    /// One update of every parameter from its gradient. Gradients are left as they are
    /// (call zero_grad() before accumulating the next ones).
    /// @throws infinityformer::runtime_error if a gradient is not finite or an update
    ///         overflows (nothing updated).
    void step();

    /// Sets every parameter's gradient to zero.
    void zero_grad();

private:
    static const AdamOptions& checked(const char* where, const AdamOptions& o) {
        o.template validate_for<Scalar>(where);
        return o;
    }

    std::vector<Parameter<Scalar>> params_;
    AdamOptions opt_;
    std::vector<Matrix> m_, v_;
    long t_ = 0;
    double last_norm_ = 0.0;
};

#if INFINITYFORMER_HEADER_ONLY

template <typename Scalar_>
Adam<Scalar_>::Adam(std::vector<Parameter<Scalar>> parameters, const AdamOptions& options)
    : params_(std::move(parameters)), opt_(checked("Adam::Adam", options)) {
    constexpr const char* where = "Adam::Adam";
    double entries = 0.0;
    for (std::size_t i = 0; i < params_.size(); ++i) {
        const auto& p = params_[i];
        detail::require(p.rows >= 0 && p.cols >= 0, where, "parameter ", i, " (", p.name, ") is ",
                        p.rows, "x", p.cols, ", expected sizes >= 0");
        const double size = static_cast<double>(p.rows) * static_cast<double>(p.cols);
        detail::require(size == 0.0 || (p.value != nullptr && p.grad != nullptr), where,
                        "parameter ", i, " (", p.name, ") has a null ",
                        p.value == nullptr ? "value" : "gradient",
                        " pointer, expected a view of a module's weights");
        entries += size;
    }
    detail::require_allocatable(where, "the moments (two per weight)", entries,
                                2 * entries * static_cast<double>(sizeof(Scalar)));
    for (const auto& p : params_) {
        m_.push_back(Matrix::Zero(p.rows, p.cols));
        v_.push_back(Matrix::Zero(p.rows, p.cols));
    }
}

template <typename Scalar_>
void Adam<Scalar_>::set_options(const AdamOptions& options) {
    opt_ = checked("Adam::set_options", options);
}

template <typename Scalar_>
void Adam<Scalar_>::step() {
    double sq = 0.0;
    for (const auto& p : params_) {
        const double n = static_cast<double>(p.gradient().squaredNorm());
        if (!std::isfinite(n))
            throw infinityformer::runtime_error(detail::concat(
                "[infinityformer] Adam::step: gradient of ", p.name,
                " is not finite, expected finite gradients; no parameter was updated"));
        sq += n;
    }
    last_norm_ = std::sqrt(sq);
    const double clip =
        (opt_.clip_norm > 0.0 && last_norm_ > opt_.clip_norm) ? opt_.clip_norm / last_norm_ : 1.0;
    const long t = t_ + 1;
    const double bc1 = 1.0 - std::pow(opt_.beta1, static_cast<double>(t));
    const double bc2 = 1.0 - std::pow(opt_.beta2, static_cast<double>(t));
    const auto b1 = static_cast<Scalar>(opt_.beta1), b2 = static_cast<Scalar>(opt_.beta2);
    const auto step = static_cast<Scalar>(opt_.learning_rate / bc1);
    const auto inv_sqrt_bc2 = static_cast<Scalar>(1.0 / std::sqrt(bc2));
    const auto eps = static_cast<Scalar>(opt_.epsilon);
    const auto decay = static_cast<Scalar>(opt_.learning_rate * opt_.weight_decay);
    const auto c = static_cast<Scalar>(clip);
    // The new moments and weights, as expressions: checked first (one pass, nothing
    // stored), written only if every parameter's are finite.
    for (std::size_t i = 0; i < params_.size(); ++i) {
        const auto g = params_[i].gradient();
        const auto w = params_[i].values();
        const auto m = b1 * m_[i].array() + (Scalar(1) - b1) * c * g.array();
        const auto v = b2 * v_[i].array() + (Scalar(1) - b2) * (c * g.array()).square();
        const auto decayed = w.array() - decay * w.array();
        const auto updated = decayed - step * m / (v.sqrt() * inv_sqrt_bc2 + eps);
        if (!detail::all_finite(updated))
            throw infinityformer::runtime_error(
                detail::concat("[infinityformer] Adam::step: the update of ", params_[i].name,
                               " overflowed (learning_rate ", opt_.learning_rate, ", weight_decay ",
                               opt_.weight_decay, ", largest |weight| ", detail::largest_abs(w),
                               "), expected finite weights; no parameter was updated"));
    }
    t_ = t;
    for (std::size_t i = 0; i < params_.size(); ++i) {
        auto w = params_[i].values();
        const auto g = params_[i].gradient();
        m_[i] = b1 * m_[i] + (Scalar(1) - b1) * c * g;
        v_[i] = b2 * v_[i] + (Scalar(1) - b2) * (c * g).cwiseAbs2();
        if (decay > Scalar(0)) w -= decay * w;
        w.array() -= step * m_[i].array() / (v_[i].array().sqrt() * inv_sqrt_bc2 + eps);
    }
}

template <typename Scalar_>
void Adam<Scalar_>::zero_grad() {
    for (auto& p : params_) p.gradient().setZero();
}

#endif  // INFINITYFORMER_HEADER_ONLY

INFINITYFORMER_EXTERN_TEMPLATE(class, Adam)

}  // namespace infinityformer
