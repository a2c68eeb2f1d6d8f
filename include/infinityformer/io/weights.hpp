/// @file io/weights.hpp
/// @brief The weights of a LongTermAttention or an InfinityFormerLayer as safetensors
/// tensors in the authors' `state_dict()` names: which tensors a module takes (tensors_of,
/// describe), load_weights and save_weights. The file format itself is io/safetensors.hpp.
///
/// Needs nlohmann/json (CMake target infinityformer::io).
///
/// **The names** come from the module's parameters() by one rule (placement_of()): the
/// parameter `<name>` of rows × cols is the tensor `<name>` of shape [rows, cols], except
/// - `<x>.<j>` (j = 0, 1, …): tap j of `<x>` [rows, cols, taps], element [o, i, j] = (o, i)
///   (a Conv1d weight, which parameters() splits by tap: the gate's mask_net.weight.0/1/2);
/// - `<x>.bias`: the 1-D tensor `<x>.bias` [rows];
/// - `mu.weight`, `sigma.weight`: transposed, [1, N] (the authors' nn.Linear(N, 1));
/// - after `<p>sigma.weight` comes `<p>proj_query.weight`, the shape of `<p>proj_key.weight`,
///   which no parameter holds: optional, shape-checked, never applied (nor by the reference).
///
/// load_weights walks the module's parameters(), so a weight added there is required and
/// loaded without a second list; save_weights walks the parameters of copies of the module's
/// parts. tensors_of(module) and describe(file, module, prefix), which have a const module,
/// and long_term_tensors() / layer_tensors(), which have only sizes, take the parameters'
/// names and shapes from the sizes (detail::long_term_parameters(); tests/test_safetensors.cpp
/// checks it against parameters()).
///
/// **Module weights** under a prefix (load_weights, save_weights, describe): tensors whose
/// names do not start with the prefix are ignored, every tensor under it must be one the
/// module takes (else "extra"), and every one the module needs must be there ("missing").
/// The names after the prefix, for LongTermAttention (e = dim(), N = num_basis):
///
/// | name | shape | library |
/// |---|---|---|
/// | `proj_key.weight` | [e, e] | ContinuousAttention::Weights::proj_key |
/// | `proj_value.weight` | [e, e] | proj_value |
/// | `attn_out.weight` | [d_model, e] | attn_out |
/// | `mu.weight` | [1, N] | mu (transposed) |
/// | `sigma.weight` | [1, N] | sigma (transposed) |
/// | `mask_net.weight` | [e, e, 3] | MemoryGate::Weights::taps[j](o, i) = [o, i, j]; gate |
/// | `mask_net.bias` | [e] | MemoryGate::Weights::bias; gate only |
/// | `proj_query.weight` | [e, e] | optional: shape checked, never applied (nor by the reference) |
///
/// For InfinityFormerLayer (d = d_model): `short_term.query.weight`, `short_term.key.weight`,
/// `short_term.value.weight`, `short_term.out.weight` ([d, d] each, ShortTermAttention's
/// weights, as InfinityFormerLayer::parameters() names them) and the long-term names above
/// under `long_term.` (e = d_model = d), e.g. `long_term.mask_net.weight` as one [d, d, 3]
/// tensor. Loading is all or nothing: every tensor is checked and converted before the
/// module's weights are replaced, and a failure leaves them as they were.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "../continuous_attention.hpp"
#include "../errors.hpp"
#include "../gate.hpp"
#include "../layer.hpp"
#include "../long_term_attention.hpp"
#include "../parameter_view.hpp"
#include "../short_term_attention.hpp"
#include "../version.hpp"
#include "safetensors.hpp"

namespace infinityformer::io {

/// A tensor a module takes, by its name after the prefix.
struct TensorSpec {
    std::string name;
    std::vector<std::int64_t> shape;
    bool used = true;  ///< false: accepted and shape-checked, but its values are not used
};

/// How a parameter's values lie in its tensor.
enum class Layout {
    matrix,      ///< [rows, cols], element [i, j] = (i, j)
    vector,      ///< [rows] (a bias)
    transposed,  ///< [cols, rows] (mu.weight, sigma.weight)
    tap,         ///< tap `tap` of [rows, cols, taps]: element [i, j, tap] = (i, j)
};

/// The tensor that holds a parameter, and how.
struct Placement {
    std::string tensor;
    Layout layout = Layout::matrix;
    std::int64_t tap = 0;
};

namespace detail {

/// True if `name` is `part` or ends with "." + part.
inline bool is_part(const std::string& name, const std::string& part) {
    if (name.size() == part.size()) return name == part;
    return name.size() > part.size() && name[name.size() - part.size() - 1] == '.' &&
           name.compare(name.size() - part.size(), part.size(), part) == 0;
}

}  // namespace detail

/// The tensor of the parameter named `parameter` (a parameters() name): the rule of the file
/// comment.
inline Placement placement_of(const std::string& parameter) {
    const std::size_t dot = parameter.rfind('.');
    const std::string last = dot == std::string::npos ? parameter : parameter.substr(dot + 1);
    if (dot != std::string::npos && !last.empty() && last.size() <= 9 &&
        std::all_of(last.begin(), last.end(), [](char c) { return c >= '0' && c <= '9'; }))
        return {parameter.substr(0, dot), Layout::tap, std::stoll(last)};
    if (last == "bias") return {parameter, Layout::vector, 0};
    if (detail::is_part(parameter, "mu.weight") || detail::is_part(parameter, "sigma.weight"))
        return {parameter, Layout::transposed, 0};
    return {parameter, Layout::matrix, 0};
}

namespace detail {

/// A parameter's name and shape (Parameter::name, rows, cols).
struct ParameterShape {
    std::string name;
    std::int64_t rows = 0, cols = 0;
};

/// The shape of the tensor of a rows × cols parameter placed at `at` (the taps counted up to
/// this one).
inline std::vector<std::int64_t> tensor_shape(const Placement& at, std::int64_t rows,
                                              std::int64_t cols) {
    switch (at.layout) {
        case Layout::vector: return {rows};
        case Layout::transposed: return {cols, rows};
        case Layout::tap: return {rows, cols, at.tap + 1};
        default: return {rows, cols};
    }
}

/// The flat row-major index of the parameter's element (i, j) in its tensor of `shape`.
inline std::size_t element_index(const Placement& at, const std::vector<std::int64_t>& shape,
                                 std::int64_t i, std::int64_t j) {
    switch (at.layout) {
        case Layout::vector: return static_cast<std::size_t>(i);
        case Layout::transposed: return static_cast<std::size_t>(j * shape[1] + i);
        case Layout::tap: return static_cast<std::size_t>((i * shape[1] + j) * shape[2] + at.tap);
        default: return static_cast<std::size_t>(i * shape[1] + j);
    }
}

/// The tensors of these parameters, in their order (a tensor of taps where its first tap is;
/// proj_query.weight after sigma.weight).
inline std::vector<TensorSpec> tensors_from(const std::vector<ParameterShape>& params) {
    std::vector<TensorSpec> out;
    for (const auto& p : params) {
        const Placement at = placement_of(p.name);
        auto shape = tensor_shape(at, p.rows, p.cols);
        const auto it = std::find_if(out.begin(), out.end(),
                                     [&](const TensorSpec& t) { return t.name == at.tensor; });
        if (it != out.end() && at.layout == Layout::tap && it->shape.size() == 3) {
            it->shape[2] = std::max(it->shape[2], shape[2]);
            continue;
        }
        out.push_back({at.tensor, std::move(shape), true});
        if (is_part(p.name, "sigma.weight")) {
            // The reference's query projection, which it stores but never applies.
            const std::string scope = p.name.substr(0, p.name.size() - 12);
            for (const auto& q : params)
                if (q.name == scope + "proj_key.weight")
                    out.push_back({scope + "proj_query.weight", {q.rows, q.cols}, false});
        }
    }
    return out;
}

template <typename Scalar>
std::vector<ParameterShape> shapes_of(const std::vector<Parameter<Scalar>>& params) {
    std::vector<ParameterShape> s;
    for (const auto& p : params) s.push_back({p.name, p.rows, p.cols});
    return s;
}

/// What parameters() gives a LongTermAttention of these sizes (e = dim, N = num_basis), for
/// the tensors of a module that is const or not at hand (parameters() needs a mutable one);
/// tests/test_safetensors.cpp checks it against parameters().
inline std::vector<ParameterShape> long_term_parameters(std::int64_t dim, std::int64_t d_model,
                                                        std::int64_t num_basis, bool gate) {
    std::vector<ParameterShape> s = {{"proj_key.weight", dim, dim},
                                     {"proj_value.weight", dim, dim},
                                     {"attn_out.weight", d_model, dim},
                                     {"mu.weight", num_basis, 1},
                                     {"sigma.weight", num_basis, 1}};
    if (gate) {
        for (int j = 0; j < 3; ++j) s.push_back({"mask_net.weight." + std::to_string(j), dim, dim});
        s.push_back({"mask_net.bias", dim, 1});
    }
    return s;
}

/// What InfinityFormerLayer::parameters() gives a layer of these sizes.
inline std::vector<ParameterShape> layer_parameters(std::int64_t d_model, std::int64_t num_basis,
                                                    bool gate) {
    std::vector<ParameterShape> s;
    for (const char* n : {"query", "key", "value", "out"})
        s.push_back({std::string("short_term.") + n + ".weight", d_model, d_model});
    for (auto& p : long_term_parameters(d_model, d_model, num_basis, gate)) {
        p.name = "long_term." + p.name;
        s.push_back(std::move(p));
    }
    return s;
}

}  // namespace detail

/// The tensors of a module with these parameters (its parameters()), in the authors' names.
template <typename Scalar>
std::vector<TensorSpec> tensors_of(const std::vector<Parameter<Scalar>>& params) {
    return detail::tensors_from(detail::shapes_of(params));
}

/// The tensors of a LongTermAttention (e = dim, N = num_basis), in the authors' names.
inline std::vector<TensorSpec> long_term_tensors(std::int64_t dim, std::int64_t d_model,
                                                 std::int64_t num_basis, bool gate) {
    return detail::tensors_from(detail::long_term_parameters(dim, d_model, num_basis, gate));
}

/// The tensors of an InfinityFormerLayer of width d: short_term.{query,key,value,out}.weight
/// and long_term_tensors(d, d, N, gate) under "long_term.".
inline std::vector<TensorSpec> layer_tensors(std::int64_t d_model, std::int64_t num_basis,
                                             bool gate) {
    return detail::tensors_from(detail::layer_parameters(d_model, num_basis, gate));
}

template <typename Scalar>
std::vector<TensorSpec> tensors_of(const LongTermAttention<Scalar>& m) {
    return long_term_tensors(m.dim(), m.d_model(), m.attention().num_basis(), m.has_gate());
}
template <typename Scalar>
std::vector<TensorSpec> tensors_of(const InfinityFormerLayer<Scalar>& m) {
    return layer_tensors(m.d_model(), m.long_term().attention().num_basis(),
                         m.long_term().has_gate());
}

/// What a module would do with a file's tensor.
enum class NameStatus {
    taken,           ///< under the prefix, a weight of the module, shape and dtype right
    ignored,         ///< outside the prefix
    unused,          ///< under the prefix, accepted but not applied (proj_query.weight)
    extra,           ///< under the prefix, not a tensor of the module
    shape_mismatch,  ///< a tensor of the module with another shape
    dtype_mismatch,  ///< a tensor of the module with a dtype that holds no real values
};

inline const char* status_name(NameStatus s) {
    switch (s) {
        case NameStatus::taken: return "taken";
        case NameStatus::ignored: return "ignored (outside the prefix)";
        case NameStatus::unused: return "unused (accepted, not applied)";
        case NameStatus::extra: return "extra (not a tensor of the module)";
        case NameStatus::shape_mismatch: return "shape mismatch";
        case NameStatus::dtype_mismatch: return "dtype mismatch";
    }
    return "?";
}

/// One of the file's tensors and what the module would do with it.
struct NameUse {
    std::string name;  ///< full name in the file
    DType dtype = DType::F64;
    std::vector<std::int64_t> shape;
    NameStatus status = NameStatus::ignored;
    std::vector<std::int64_t> expected_shape;  ///< the module's shape (taken, unused, mismatch)
};

/// Every tensor of a file with its status, and the module's tensors the file lacks.
struct WeightsReport {
    std::vector<NameUse> names;       ///< every tensor of the file, by name
    std::vector<TensorSpec> missing;  ///< full names (prefix included) of needed tensors absent
    /// True if loading would succeed as far as names, shapes and dtypes go.
    bool loadable() const {
        if (!missing.empty()) return false;
        for (const auto& n : names)
            if (n.status == NameStatus::extra || n.status == NameStatus::shape_mismatch ||
                n.status == NameStatus::dtype_mismatch)
                return false;
        return true;
    }
    /// The problems, "; "-separated (empty if loadable()).
    std::string problems() const {
        std::string s;
        const auto add = [&s](const std::string& p) { s += (s.empty() ? "" : "; ") + p; };
        for (const auto& m : missing)
            add("missing tensor '" + m.name + "' (expected shape " + shape_string(m.shape) + ")");
        for (const auto& n : names) {
            if (n.status == NameStatus::extra)
                add("extra tensor '" + n.name + "' " + shape_string(n.shape) +
                    ", expected only the module's tensors under the prefix");
            else if (n.status == NameStatus::shape_mismatch)
                add("tensor '" + n.name + "' has shape " + shape_string(n.shape) + ", expected " +
                    shape_string(n.expected_shape));
            else if (n.status == NameStatus::dtype_mismatch)
                add("tensor '" + n.name + "' has dtype " + dtype_name(n.dtype) +
                    ", expected F64, F32, F16 or BF16");
        }
        return s;
    }
};

/// Which of the file's tensors a module with the tensors `spec` would take under `prefix`
/// (names after the prefix are matched against spec; the prefix usually ends with '.').
inline WeightsReport describe(const Safetensors& file, const std::vector<TensorSpec>& spec,
                              const std::string& prefix) {
    WeightsReport r;
    for (const auto& name : file.names()) {
        const TensorInfo& t = file.info(name);
        NameUse u{name, t.dtype, t.shape, NameStatus::ignored, {}};
        if (name.compare(0, prefix.size(), prefix) == 0 && name.size() >= prefix.size()) {
            const std::string local = name.substr(prefix.size());
            const auto it = std::find_if(spec.begin(), spec.end(),
                                         [&](const TensorSpec& s) { return s.name == local; });
            if (it == spec.end()) {
                u.status = NameStatus::extra;
            } else {
                u.expected_shape = it->shape;
                if (t.shape != it->shape)
                    u.status = NameStatus::shape_mismatch;
                else if (!is_float_dtype(t.dtype))
                    u.status = NameStatus::dtype_mismatch;
                else
                    u.status = it->used ? NameStatus::taken : NameStatus::unused;
            }
        }
        r.names.push_back(std::move(u));
    }
    for (const auto& s : spec)
        if (s.used && !file.has(prefix + s.name))
            r.missing.push_back({prefix + s.name, s.shape, true});
    return r;
}

template <typename Scalar>
WeightsReport describe(const Safetensors& file, const LongTermAttention<Scalar>& m,
                       const std::string& prefix) {
    return describe(file, tensors_of(m), prefix);
}
template <typename Scalar>
WeightsReport describe(const Safetensors& file, const InfinityFormerLayer<Scalar>& m,
                       const std::string& prefix) {
    return describe(file, tensors_of(m), prefix);
}

namespace detail {

/// Throws infinityformer::invalid_argument listing every problem of the report.
inline void require_loadable(const char* where, const Safetensors& file, const WeightsReport& r,
                             const std::string& prefix, bool gate) {
    if (r.loadable()) return;
    std::string hint;
    if (!gate)
        for (const auto& n : r.names)
            if (n.status == NameStatus::extra &&
                n.name.find("mask_net.", prefix.size()) != std::string::npos)
                hint =
                    " (the module has no memory gate: build it with params.gate = true to use "
                    "the mask_net tensors)";
    infinityformer::detail::fail(where, file.source(), ", prefix '", prefix, "': ", r.problems(),
                                 hint);
}

/// Every parameter's values from the tensors under `prefix` (names, shapes and dtypes already
/// checked), converted tensor by tensor in the order of `spec`.
template <typename Scalar>
std::vector<typename Parameter<Scalar>::Matrix> read_parameters(
    const Safetensors& f, const std::string& prefix, const std::vector<Parameter<Scalar>>& params,
    const std::vector<TensorSpec>& spec) {
    std::vector<typename Parameter<Scalar>::Matrix> out(params.size());
    for (const auto& t : spec) {
        if (!t.used) continue;
        const auto v = f.values<Scalar>(prefix + t.name);
        for (std::size_t k = 0; k < params.size(); ++k) {
            const Placement at = placement_of(params[k].name);
            if (at.tensor != t.name) continue;
            auto& m = out[k];
            m.resize(params[k].rows, params[k].cols);
            for (Eigen::Index i = 0; i < m.rows(); ++i)
                for (Eigen::Index j = 0; j < m.cols(); ++j)
                    m(i, j) = v[element_index(at, t.shape, i, j)];
        }
    }
    return out;
}

/// Loads the tensors under `prefix` into `params` (a module's parameters()): all or nothing.
template <typename Scalar>
void load_parameters(const char* where, const std::vector<Parameter<Scalar>>& params,
                     const Safetensors& file, const std::string& prefix, bool gate) {
    const auto spec = tensors_of(params);
    require_loadable(where, file, describe(file, spec, prefix), prefix, gate);
    std::vector<typename Parameter<Scalar>::Matrix> next;
    try {
        next = read_parameters(file, prefix, params, spec);
    } catch (...) {
        infinityformer::detail::rethrow_as(where);
    }
    // Every value is converted, finite and of its weight's shape: nothing below can fail.
    for (std::size_t k = 0; k < params.size(); ++k) params[k].values() = next[k];
}

/// Adds the tensors of `params` under `prefix` in `dtype`; unused tensors
/// (proj_query.weight) as zeros.
template <typename Scalar>
void add_parameters(SafetensorsWriter& out, const std::string& prefix,
                    const std::vector<Parameter<Scalar>>& params, DType dtype) {
    for (const auto& t : tensors_of(params)) {
        std::size_t n = 1;
        for (const auto d : t.shape) n *= static_cast<std::size_t>(d);
        // proj_query.weight is never applied by the reference; written so that its
        // load_state_dict(strict=True) finds every key.
        std::vector<Scalar> flat(n, Scalar(0));
        for (const auto& p : params) {
            const Placement at = placement_of(p.name);
            if (!t.used || at.tensor != t.name) continue;
            const auto m = p.values();
            for (Eigen::Index i = 0; i < m.rows(); ++i)
                for (Eigen::Index j = 0; j < m.cols(); ++j)
                    flat[element_index(at, t.shape, i, j)] = m(i, j);
        }
        out.add_values(prefix + t.name, flat, t.shape, dtype);
    }
}

/// Copies of a LongTermAttention's parts with weights, whose parameters are those of the
/// module (parameters() needs a mutable module; save_weights has a const one).
template <typename Scalar>
struct LongTermParts {
    ContinuousAttention<Scalar> attention;
    std::optional<MemoryGate<Scalar>> gate;

    /// From a LongTermAttention or a layer's LongTermView.
    template <typename LongTerm>
    explicit LongTermParts(const LongTerm& m) : attention(m.attention()) {
        if (m.has_gate()) gate.emplace(m.gate());
    }
    /// As LongTermAttention::parameters(prefix).
    void append_parameters(std::vector<Parameter<Scalar>>& out, const std::string& prefix) {
        attention.append_parameters(out, prefix);
        if (gate) gate->append_parameters(out, prefix + "mask_net.");
    }
};

/// Atomic writes: the writer gains every tensor or none (names checked first).
inline void require_new_names(const char* where, const SafetensorsWriter& out,
                              const std::vector<TensorSpec>& spec, const std::string& prefix) {
    for (const auto& s : spec)
        infinityformer::detail::require(!out.has(prefix + s.name), where, "tensor '",
                                        prefix + s.name,
                                        "' is already in the writer, expected a new prefix");
}

}  // namespace detail

/// Loads a LongTermAttention's weights from the tensors under `prefix` (see the table in
/// the file comment); tensors outside the prefix are ignored. All or nothing.
/// @throws infinityformer::invalid_argument naming the file and every missing, extra or
///         mis-shaped tensor, or a value that is not finite or does not fit (weights
///         unchanged).
template <typename Scalar>
void load_weights(LongTermAttention<Scalar>& m, const Safetensors& file,
                  const std::string& prefix) {
    detail::load_parameters("io::load_weights", m.parameters(), file, prefix, m.has_gate());
}

/// Loads an InfinityFormerLayer's weights (short_term.* and long_term.* under `prefix`).
/// All or nothing. @throws infinityformer::invalid_argument as for LongTermAttention.
template <typename Scalar>
void load_weights(InfinityFormerLayer<Scalar>& m, const Safetensors& file,
                  const std::string& prefix = "") {
    detail::load_parameters("io::load_weights", m.parameters(), file, prefix,
                            m.long_term().has_gate());
}

/// The dtype a module of `Scalar` saves its weights in unless told otherwise: F32 for float,
/// F64 for double (the values as they are, in the least room that holds them exactly).
template <typename Scalar>
constexpr DType default_dtype() {
    return std::is_same_v<Scalar, float> ? DType::F32 : DType::F64;
}

/// Adds a LongTermAttention's weights under `prefix` (the authors' names; proj_query.weight
/// as zeros, which the reference never applies) in `dtype` (default: the Scalar's,
/// default_dtype()). All or nothing.
/// @throws infinityformer::invalid_argument if a name is already in the writer or a value
///         overflows the dtype (writer unchanged).
template <typename Scalar>
void save_weights(const LongTermAttention<Scalar>& m, SafetensorsWriter& out,
                  const std::string& prefix, DType dtype = default_dtype<Scalar>()) {
    constexpr const char* where = "io::save_weights";
    detail::require_new_names(where, out, tensors_of(m), prefix);
    SafetensorsWriter next = out;
    try {
        detail::LongTermParts<Scalar> parts(m);
        std::vector<Parameter<Scalar>> params;
        parts.append_parameters(params, "");
        detail::add_parameters(next, prefix, params, dtype);
    } catch (...) {
        infinityformer::detail::rethrow_as(where);
    }
    out = std::move(next);
}

/// Adds an InfinityFormerLayer's weights under `prefix` in `dtype` (default: the Scalar's,
/// default_dtype()), and the metadata entry
/// `prefix` + "infinityformer" (a JSON string of the layer's sizes, for inspection only:
/// loading does not read it). All or nothing.
template <typename Scalar>
void save_weights(const InfinityFormerLayer<Scalar>& m, SafetensorsWriter& out,
                  const std::string& prefix = "", DType dtype = default_dtype<Scalar>()) {
    constexpr const char* where = "io::save_weights";
    detail::require_new_names(where, out, tensors_of(m), prefix);
    SafetensorsWriter next = out;
    try {
        // As InfinityFormerLayer::parameters() names them.
        ShortTermAttention<Scalar> short_term = m.short_term();
        detail::LongTermParts<Scalar> long_term(m.long_term());
        std::vector<Parameter<Scalar>> params;
        short_term.append_parameters(params, "short_term.");
        long_term.append_parameters(params, "long_term.");
        detail::add_parameters(next, prefix, params, dtype);
    } catch (...) {
        infinityformer::detail::rethrow_as(where);
    }
    const nlohmann::json config = {
        {"module", "InfinityFormerLayer"},  {"version", version_string()},
        {"d_model", m.d_model()},           {"num_heads", m.num_heads()},
        {"chunk_length", m.chunk_length()}, {"num_basis", m.long_term().attention().num_basis()},
        {"gate", m.long_term().has_gate()}};
    next.metadata(prefix + "infinityformer", config.dump());
    out = std::move(next);
}

}  // namespace infinityformer::io
