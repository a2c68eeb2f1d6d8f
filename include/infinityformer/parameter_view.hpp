/// @file parameter_view.hpp
/// @brief A named view of a weight block and its gradient, which optimisers walk.
#pragma once

#include <Eigen/Core>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "errors.hpp"

namespace infinityformer {

/// One learnable block: its name, its values and its gradient (same shape, column-major).
/// Modules list theirs (parameters(), append_parameters()); make_parameter() makes the view
/// of a block the caller owns.
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

/// The view named `name` of a block the caller owns, `value`, and of its gradient `grad`
/// (e.g. to run Adam over one's own weights next to a module's parameters()). Both are
/// Eigen matrices or vectors (column-major, or vectors); the view refers to their storage
/// and is valid while they live and are not resized.
/// @throws infinityformer::invalid_argument naming `grad`, its shape and the one expected
///         (value's) if they differ.
template <typename Derived>
Parameter<typename Derived::Scalar> make_parameter(std::string name,
                                                   Eigen::PlainObjectBase<Derived>& value,
                                                   Eigen::PlainObjectBase<Derived>& grad) {
    static_assert(
        !Derived::IsRowMajor || Derived::RowsAtCompileTime == 1 || Derived::ColsAtCompileTime == 1,
        "make_parameter needs column-major storage (a Parameter maps it so)");
    if (grad.rows() != value.rows() || grad.cols() != value.cols())
        detail::fail("make_parameter", "grad of parameter \"", name, "\" is ", grad.rows(), "x",
                     grad.cols(), ", expected ", value.rows(), "x", value.cols(),
                     " (the shape of value)");
    Parameter<typename Derived::Scalar> p;
    p.name = std::move(name);
    p.value = value.data();
    p.grad = grad.data();
    p.rows = value.rows();
    p.cols = value.cols();
    return p;
}

namespace detail {

/// Appends make_parameter(name, value, grad), `grad` first resized to value's shape (and
/// zeroed) if it differs.
template <typename Scalar, typename M>
void append_parameter(std::vector<Parameter<Scalar>>& out, std::string name, M& value, M& grad) {
    if (grad.rows() != value.rows() || grad.cols() != value.cols())
        grad.setZero(value.rows(), value.cols());
    out.push_back(make_parameter(std::move(name), value, grad));
}

}  // namespace detail
}  // namespace infinityformer
