/// @file parameter_view.hpp
/// @brief A named view of a weight block and its gradient, which optimisers walk.
#pragma once

#include <Eigen/Core>
#include <string>
#include <type_traits>
#include <vector>

namespace infinityformer {

/// One learnable block: its name, its values and its gradient (same shape, column-major).
/// The pointers refer to storage owned by the module that produced the view; the view is
/// valid until that module is destroyed or its weights are replaced (set_weights(),
/// init_weights()).
template <typename Scalar_>
struct Parameter {
    static_assert(std::is_floating_point_v<Scalar_>, "Parameter needs float or double");
    using Scalar = Scalar_;
    using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

    std::string name;
    Scalar* value = nullptr;
    Scalar* grad = nullptr;
    Eigen::Index rows = 0;
    Eigen::Index cols = 0;

    Eigen::Index size() const { return rows * cols; }
    Eigen::Map<Matrix> values() const { return Eigen::Map<Matrix>(value, rows, cols); }
    Eigen::Map<Matrix> gradient() const { return Eigen::Map<Matrix>(grad, rows, cols); }
};

namespace detail {

/// Appends the view of `value` (and of `grad`, resized to its shape if needed).
template <typename Scalar, typename M>
void append_parameter(std::vector<Parameter<Scalar>>& out, std::string name, M& value, M& grad) {
    if (grad.rows() != value.rows() || grad.cols() != value.cols())
        grad.setZero(value.rows(), value.cols());
    Parameter<Scalar> p;
    p.name = std::move(name);
    p.value = value.data();
    p.grad = grad.data();
    p.rows = value.rows();
    p.cols = value.cols();
    out.push_back(std::move(p));
}

}  // namespace detail
}  // namespace infinityformer
