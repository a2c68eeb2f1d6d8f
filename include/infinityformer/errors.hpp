/// @file errors.hpp
/// @brief Exceptions thrown at the API boundary and the helpers that build their messages.
///
/// Every message starts with "[infinityformer] Class::method: " and names the argument, the
/// value expected and the value received, e.g.
/// "[infinityformer] ContinuousAttention::forward: queries has 63 cols, expected 64".
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "detail/math.hpp"

namespace infinityformer {

/// Bad input: wrong shape, non-finite value, parameter out of range.
class invalid_argument : public std::invalid_argument {
public:
    using std::invalid_argument::invalid_argument;
};

/// Call made in the wrong order (e.g. backward without forward).
class logic_error : public std::logic_error {
public:
    using std::logic_error::logic_error;
};

/// Numerical failure (e.g. a factorisation that did not succeed) or corrupt data.
class runtime_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

namespace detail {

template <typename... Args>
std::string concat(const Args&... args) {
    std::ostringstream os;
    os.precision(17);
    (os << ... << args);
    return os.str();
}

/// Throws infinityformer::invalid_argument with "[infinityformer] where: " + message.
template <typename... Args>
[[noreturn]] void fail(const char* where, const Args&... args) {
    throw infinityformer::invalid_argument(concat("[infinityformer] ", where, ": ", args...));
}

/// Throws unless `condition` holds.
template <typename... Args>
void require(bool condition, const char* where, const Args&... args) {
    if (!condition) fail(where, args...);
}

/// An error message with its "[infinityformer] Class::method: " prefix naming `where`.
inline std::string renamed(const char* what, const char* where) {
    const std::string m(what), tag = "[infinityformer] ";
    if (m.rfind(tag, 0) != 0) return m;
    const auto colon = m.find(": ", tag.size());
    return colon == std::string::npos ? m : tag + where + m.substr(colon);
}

/// Inside a catch block: rethrows the library's exception with its message renamed to
/// `where`, the public call the user made (composite constructors); others unchanged.
[[noreturn]] inline void rethrow_as(const char* where) {
    try {
        throw;
    } catch (const infinityformer::invalid_argument& e) {
        throw infinityformer::invalid_argument(renamed(e.what(), where));
    } catch (const infinityformer::runtime_error& e) {
        throw infinityformer::runtime_error(renamed(e.what(), where));
    } catch (const infinityformer::logic_error& e) {
        throw infinityformer::logic_error(renamed(e.what(), where));
    }
}

/// Checks a width and a number of heads that divides it (every module with heads).
inline void check_heads(const char* where, const char* width_name, Eigen::Index width,
                        Eigen::Index heads) {
    require(width >= 1, where, width_name, " is ", width, ", expected >= 1");
    require(heads >= 1 && width % heads == 0, where, "num_heads is ", heads,
            ", expected a positive divisor of ", width_name, " (", width, ")");
}

/// Checks that a positive double is a normal, finite number once rounded to Scalar.
template <typename Scalar>
void require_normal(const char* where, const char* name, double v, const char* why) {
    using L = std::numeric_limits<Scalar>;
    const bool ok = std::isfinite(v) && v >= static_cast<double>(L::min()) &&
                    v <= static_cast<double>(L::max());
    require(ok, where, name, " is ", v, ", outside the normal range of ",
            sizeof(Scalar) == 4 ? "float" : "double", " (", L::min(), " to ", L::max(), "): ", why);
}

/// Checks the shape of a matrix argument.
template <typename Derived>
void check_shape(const char* where, const char* name, const Eigen::DenseBase<Derived>& m,
                 Eigen::Index rows, Eigen::Index cols) {
    if (m.rows() != rows || m.cols() != cols)
        fail(where, name, " is ", m.rows(), "x", m.cols(), ", expected ", rows, "x", cols);
}

/// Checks that every entry of a matrix argument is finite.
template <typename Derived>
void check_finite(const char* where, const char* name, const Eigen::DenseBase<Derived>& m) {
    for (Eigen::Index j = 0; j < m.cols(); ++j)
        for (Eigen::Index i = 0; i < m.rows(); ++i) {
            const auto v = m(i, j);
            if (!std::isfinite(static_cast<double>(v)))
                fail(where, name, " has a non-finite entry ", v, " at (", i, ", ", j,
                     "), expected finite values");
        }
}

/// The weight of the KL regulariser in a loss: finite and >= 0.
template <typename Scalar>
void check_kl_weight(const char* where, Scalar kl_weight) {
    require(std::isfinite(static_cast<double>(kl_weight)) && kl_weight >= Scalar(0), where,
            "kl_weight is ", kl_weight, ", expected a finite value >= 0");
}

/// A weight read by a forward pass: throws infinityformer::invalid_argument naming it
/// (`prefix` + `name`, as parameters() lists it) if it has a non-finite entry.
template <typename Derived>
void check_weight(const char* where, const std::string& prefix, const char* name,
                  const Eigen::DenseBase<Derived>& m) {
    for (Eigen::Index j = 0; j < m.cols(); ++j)
        for (Eigen::Index i = 0; i < m.rows(); ++i)
            if (!std::isfinite(static_cast<double>(m(i, j))))
                fail(where, "weight ", prefix, name, " has a non-finite entry ", m(i, j), " at (",
                     i, ", ", j,
                     "), expected finite values (set through parameters() or an optimiser step?)");
}

/// The largest |entry| of a matrix (0 if empty), as a double, for messages.
template <typename Derived>
double largest_abs(const Eigen::DenseBase<Derived>& m) {
    return m.size() == 0 ? 0.0 : static_cast<double>(m.derived().cwiseAbs().maxCoeff());
}

/// A backward pass's result that overflowed: throws infinityformer::invalid_argument
/// "`cause` overflowed `result`, expected `inputs` whose products stay below <largest
/// Scalar> (nothing was accumulated)". `cause` names the input and its magnitudes (e.g.
/// "dY's largest |entry| 1e+308 (kl_weight 0.1)"), `inputs` what the caller controls.
template <typename Scalar>
[[noreturn]] void fail_backward(const char* where, const std::string& cause,
                                const std::string& result, const std::string& inputs) {
    fail(where, cause, " overflowed ", result, ", expected ", inputs, " whose products stay below ",
         static_cast<double>(std::numeric_limits<Scalar>::max()), " (nothing was accumulated)");
}

/// In the explanation of a failed backward: throws (fail_backward()) if `result` is not
/// finite.
template <typename Derived>
void check_backward_result(const char* where, const std::string& cause, const std::string& inputs,
                           const std::string& result, const Eigen::DenseBase<Derived>& m) {
    if (!all_finite(m)) fail_backward<typename Derived::Scalar>(where, cause, result, inputs);
}

/// In the explanation of a failed backward: throws if `contribution`, a call's gradient of
/// the weight `prefix` + `name`, is not finite (fail_backward()), or if adding it to the
/// gradient accumulated so far (`accumulated`, empty if none yet) overflows.
template <typename A, typename B>
void check_gradient_sum(const char* where, const std::string& cause, const std::string& inputs,
                        const std::string& prefix, const char* name,
                        const Eigen::DenseBase<A>& accumulated,
                        const Eigen::DenseBase<B>& contribution) {
    using Scalar = typename A::Scalar;
    if (!all_finite(contribution))
        fail_backward<Scalar>(where, cause, concat("the gradient of weight ", prefix, name),
                              inputs);
    if (!sum_finite(accumulated, contribution))
        fail(where, "adding this call's gradient of weight ", prefix, name, " (largest |entry| ",
             largest_abs(contribution), ") to the accumulated one (largest |entry| ",
             largest_abs(accumulated), ") overflowed, expected accumulated gradients below ",
             static_cast<double>(std::numeric_limits<Scalar>::max()),
             " (zero_grad() after each optimiser step?; nothing was accumulated)");
}

/// Shape and finiteness together.
template <typename Derived>
void check_matrix(const char* where, const char* name, const Eigen::DenseBase<Derived>& m,
                  Eigen::Index rows, Eigen::Index cols) {
    check_shape(where, name, m, rows, cols);
    check_finite(where, name, m);
}

/// A named setting of two configurations, for first_difference().
struct FieldPair {
    const char* name;
    double a, b;
};

/// The first field in which two configurations differ ("name is A <a_is>, B <b_is>");
/// empty if none does.
inline std::string first_difference(std::initializer_list<FieldPair> fields, const char* a_is,
                                    const char* b_is) {
    for (const auto& f : fields)
        if (!(f.a == f.b)) return concat(f.name, " is ", f.a, " ", a_is, ", ", f.b, " ", b_is);
    return {};
}

/// How one setting differs between two configurations, as first_difference() says it
/// (numbers and enumerations as numbers; a list by its length, then entry by entry); empty
/// if it does not.
template <typename T>
std::string field_difference(const char* name, const T& a, const T& b, const char* a_is,
                             const char* b_is) {
    if constexpr (std::is_same_v<T, std::vector<double>>) {
        if (a.size() != b.size())
            return concat("the number of ", name, " is ", a.size(), " ", a_is, ", ", b.size(), " ",
                          b_is);
        for (std::size_t j = 0; j < a.size(); ++j)
            if (!(a[j] == b[j]))
                return concat(name, "[", j, "] is ", a[j], " ", a_is, ", ", b[j], " ", b_is);
        return {};
    } else {
        return first_difference({{name, static_cast<double>(a), static_cast<double>(b)}}, a_is,
                                b_is);
    }
}

}  // namespace detail
}  // namespace infinityformer
