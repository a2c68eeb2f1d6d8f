/// @file parameter_view.hpp
/// @brief A named view of a weight block and its gradient, which optimisers walk.
#pragma once

#include <Eigen/Core>
#include <string>
#include <type_traits>
#include <vector>

namespace infinityformer {

/// One learnable block: its name, its values and its gradient (same shape, column-major).
/// The pointers refer to storage owned by the module that produced the view. The modules
/// write into that storage and keep it: set_weights(), init_weights() (and the layer's
/// set_/init_short_term_weights()), zero_grad(), backward passes, loading weights and an
/// optimiser's step change the values, never the buffers. A view is invalidated only by
///  - destroying the module;
///  - assigning another module to it: a copy of other shapes reallocates, and after a move
///    assignment its views (taken before) must not be used: the moved-in storage is what
///    the source's views refer to (a move carries the storage, and the views, along).
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
