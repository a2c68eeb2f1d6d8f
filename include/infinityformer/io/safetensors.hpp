/// @file io/safetensors.hpp
/// @brief The safetensors file format alone: a reader that accepts any input without
/// undefined behaviour, and a writer. It knows no module: which tensors hold the weights of
/// a LongTermAttention or an InfinityFormerLayer is io/weights.hpp's part.
///
/// Needs nlohmann/json (CMake target infinityformer::io).
///
/// **The format.** Bytes 0–7 hold N, the header's length (unsigned 64-bit, little-endian);
/// bytes 8 … 8+N−1 a UTF-8 JSON object
///
///     {"__metadata__": {"key": "value", ...},
///      "<name>": {"dtype": "F32", "shape": [6, 6], "data_offsets": [begin, end]}, ...}
///
/// and the rest of the file is the data section: tensor `<name>` occupies bytes [begin, end)
/// of it, its elements in row-major order, little-endian.
///
/// **Reading** (Safetensors::parse / read / load) checks everything before it allocates or
/// reads: the header length against the input's size (and at most kMaxHeaderBytes), the JSON
/// (well formed, nesting at most kMaxJsonDepth, no key given twice in an object), the
/// fields' types, the dtype (one of the safetensors dtypes; only F64, F32, F16 and BF16 can
/// be converted to values), the shape (integers ≥ 0, element count and byte count without
/// overflow), the offsets (begin ≤ end ≤ the data section's size, end − begin = elements ×
/// item size) and that every byte of the data section belongs to exactly one tensor (as the
/// format requires: a corrupted header length is caught this way). Keys of a tensor entry
/// other than the three are ignored; so is the order of the entries and of the data.
/// A malformed input throws infinityformer::runtime_error, "[infinityformer]
/// io::Safetensors::parse: <source>: <what is wrong>, expected <what is valid>".
/// A file or stream that cannot be read (an empty path, a missing file, a directory, a read
/// error) throws infinityformer::runtime_error too, "[infinityformer] io::Safetensors::load:
/// <path>: <what went wrong>" (read: the source's name); so does one that cannot be written
/// (SafetensorsWriter::write, save), never a std::ios_base::failure or filesystem_error.
///
/// **Values** (values(), matrix(), vector(), taps()) convert any floating dtype exactly to
/// double, then to the requested Scalar; a NaN or infinity, or a value beyond the Scalar's
/// range (e.g. 1e300 read as float), throws infinityformer::invalid_argument naming the
/// tensor and the element (flat row-major index); so do a missing name and a shape other
/// than the one asked for.
///
/// **Writing** (SafetensorsWriter) rounds to the file's dtype to nearest, ties to even, from
/// the value given (float or double) directly: for a double, F16 and BF16 are the correctly
/// rounded values of the double, which can differ from PyTorch's `.to(bfloat16)` of a float64
/// tensor (which rounds to float32 first) when the double is within 2⁻²⁴ relative of a
/// bfloat16 midpoint; cast to float first to reproduce PyTorch. A value whose rounded
/// magnitude exceeds the dtype's largest finite value, and any NaN or infinity, throws
/// invalid_argument naming the tensor and the element. Tensors are stored in ascending byte
/// order of their names, contiguously; the header is padded with spaces to a multiple of 8.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <istream>
#include <iterator>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <set>
#include <sstream>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include "../errors.hpp"
#include "files.hpp"

namespace infinityformer::io {

/// The safetensors dtypes. F64, F32, F16 and BF16 can be read as values and written; the
/// others are recognised (so a file holding, say, an I64 buffer can be read) but their
/// tensors cannot be converted to weights.
enum class DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U64,
    U32,
    U16,
    U8,
    BOOL,
    F8_E4M3,
    F8_E5M2
};

/// The dtype's name in a safetensors header ("F64", "BF16", …).
inline const char* dtype_name(DType t) {
    switch (t) {
        case DType::F64: return "F64";
        case DType::F32: return "F32";
        case DType::F16: return "F16";
        case DType::BF16: return "BF16";
        case DType::I64: return "I64";
        case DType::I32: return "I32";
        case DType::I16: return "I16";
        case DType::I8: return "I8";
        case DType::U64: return "U64";
        case DType::U32: return "U32";
        case DType::U16: return "U16";
        case DType::U8: return "U8";
        case DType::BOOL: return "BOOL";
        case DType::F8_E4M3: return "F8_E4M3";
        case DType::F8_E5M2: return "F8_E5M2";
    }
    return "?";
}

/// Bytes per element.
inline std::uint64_t dtype_size(DType t) {
    switch (t) {
        case DType::F64:
        case DType::I64:
        case DType::U64: return 8;
        case DType::F32:
        case DType::I32:
        case DType::U32: return 4;
        case DType::F16:
        case DType::BF16:
        case DType::I16:
        case DType::U16: return 2;
        default: return 1;
    }
}

/// True for the dtypes values() converts (F64, F32, F16, BF16).
inline bool is_float_dtype(DType t) {
    return t == DType::F64 || t == DType::F32 || t == DType::F16 || t == DType::BF16;
}

/// The dtype named `name` in a header, if it is one.
inline std::optional<DType> dtype_from_name(const std::string& name) {
    for (DType t : {DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64, DType::I32,
                    DType::I16, DType::I8, DType::U64, DType::U32, DType::U16, DType::U8,
                    DType::BOOL, DType::F8_E4M3, DType::F8_E5M2})
        if (name == dtype_name(t)) return t;
    return std::nullopt;
}

/// "[6, 6, 3]".
inline std::string shape_string(const std::vector<std::int64_t>& shape) {
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

/// One tensor's entry in the header: offsets relative to the data section, [begin, end).
struct TensorInfo {
    std::string name;
    DType dtype = DType::F64;
    std::vector<std::int64_t> shape;
    std::uint64_t begin = 0, end = 0;

    /// Number of elements (the product of the shape; 1 for a 0-d tensor).
    std::uint64_t numel() const {
        std::uint64_t n = 1;
        for (auto d : shape) n *= static_cast<std::uint64_t>(d);
        return n;
    }
    std::uint64_t bytes() const { return end - begin; }
};

namespace detail {

using infinityformer::detail::concat;

static_assert(std::numeric_limits<double>::is_iec559 && std::numeric_limits<float>::is_iec559,
              "safetensors.hpp needs IEEE 754 float and double");

inline std::uint64_t load_le(const unsigned char* p, std::uint64_t size) {
    std::uint64_t v = 0;
    for (std::uint64_t k = size; k-- > 0;) v = (v << 8) | p[k];
    return v;
}

inline void store_le(std::string& out, std::uint64_t v, std::uint64_t size) {
    for (std::uint64_t k = 0; k < size; ++k) {
        out.push_back(static_cast<char>(static_cast<unsigned char>(v & 0xFFu)));
        v >>= 8;
    }
}

inline double from_bits64(std::uint64_t u) {
    double d;
    std::memcpy(&d, &u, sizeof d);
    return d;
}
inline float from_bits32(std::uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}
inline std::uint64_t bits64(double d) {
    std::uint64_t u;
    std::memcpy(&u, &d, sizeof u);
    return u;
}
inline std::uint32_t bits32(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

/// The value of IEEE binary16 bits, exactly.
inline double half_to_double(std::uint16_t h) {
    const int exp = (h >> 10) & 0x1F;
    const int mant = h & 0x3FF;
    double v;
    if (exp == 0)
        v = std::ldexp(static_cast<double>(mant), -24);
    else if (exp == 31)
        v = mant == 0 ? std::numeric_limits<double>::infinity()
                      : std::numeric_limits<double>::quiet_NaN();
    else
        v = std::ldexp(static_cast<double>(1024 + mant), exp - 25);
    return (h & 0x8000) ? -v : v;
}

/// A binary floating-point format narrower than double.
struct Format {
    int precision;  ///< significand bits, the implicit one included
    int min_exp;    ///< frexp exponent of the smallest normal value (2^(min_exp − 1))
    double max;     ///< largest finite value
};
inline Format format_of(DType t) {
    switch (t) {
        case DType::F32: return {24, -125, static_cast<double>(std::numeric_limits<float>::max())};
        case DType::F16: return {11, -13, 65504.0};
        default: return {8, -125, std::ldexp(255.0, 120)};  // BF16: (2 − 2⁻⁷)·2¹²⁷
    }
}

/// x (finite) rounded to the nearest value of `f` (subnormals included), ties to even; the
/// result may exceed f.max (the caller checks). Exact arithmetic: scalings by powers of two
/// and the split of a value below 2⁵³ into integer and fraction.
inline double round_to(double x, const Format& f) {
    if (x == 0.0) return x;
    int e = 0;
    (void)std::frexp(x, &e);
    const int q = std::max(e, f.min_exp) - f.precision;  // exponent of the unit in the last place
    const double s = std::ldexp(std::abs(x), -q);
    double r = std::floor(s);
    const double frac = s - r;
    if (frac > 0.5 || (frac == 0.5 && std::fmod(r, 2.0) != 0.0)) r += 1.0;
    return std::copysign(std::ldexp(r, q), x);
}

/// The binary16 bits of a value exactly representable as one (|v| ≤ 65504).
inline std::uint16_t half_bits(double v) {
    const std::uint16_t sign = std::signbit(v) ? 0x8000 : 0;
    const double a = std::abs(v);
    if (a == 0.0) return sign;
    if (a < std::ldexp(1.0, -14))
        return static_cast<std::uint16_t>(sign | static_cast<std::uint16_t>(std::ldexp(a, 24)));
    int e = 0;
    const double m = std::frexp(a, &e);  // a = m·2^e, m in [0.5, 1)
    const auto mant = static_cast<std::uint16_t>(std::ldexp(m, 11) - 1024.0);
    return static_cast<std::uint16_t>(sign | ((e + 14) << 10) | mant);
}

/// Appends x in dtype t (F64, F32, F16 or BF16), rounded to nearest even; throws naming the
/// tensor and element if x is not finite or does not fit.
inline void encode(double x, DType t, std::string& out, const char* where, const std::string& name,
                   std::uint64_t index) {
    if (!std::isfinite(x))
        infinityformer::detail::fail(where, "tensor '", name, "' element ", index, " is ", x,
                                     ", expected a finite value");
    if (t == DType::F64) {
        store_le(out, bits64(x), 8);
        return;
    }
    const Format f = format_of(t);
    const double r = round_to(x, f);
    if (!(std::abs(r) <= f.max))
        infinityformer::detail::fail(where, "tensor '", name, "' element ", index, " is ", x,
                                     ", which overflows ", dtype_name(t),
                                     ", expected |x| <= ", f.max);
    switch (t) {
        case DType::F32: store_le(out, bits32(static_cast<float>(r)), 4); break;
        case DType::BF16: store_le(out, bits32(static_cast<float>(r)) >> 16, 2); break;
        default: store_le(out, half_bits(r), 2); break;
    }
}

/// Checked product; false on overflow of a uint64.
inline bool mul_ok(std::uint64_t a, std::uint64_t b, std::uint64_t& out) {
    if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) return false;
    out = a * b;
    return true;
}

/// A JSON value that is a non-negative integer (not a float such as 6.0).
inline bool json_count(const nlohmann::json& v, std::uint64_t& out) {
    if (v.is_number_unsigned()) {
        out = v.get<std::uint64_t>();
        return true;
    }
    if (v.is_number_integer() && v.get<std::int64_t>() >= 0) {
        out = static_cast<std::uint64_t>(v.get<std::int64_t>());
        return true;
    }
    return false;
}

/// Throws infinityformer::invalid_argument unless s is valid UTF-8 (JSON strings must be).
inline void require_utf8(const char* where, const char* what, const std::string& s) {
    try {
        (void)nlohmann::json(s).dump();
    } catch (const nlohmann::json::exception&) {
        infinityformer::detail::fail(where, what, " '", s, "' is not valid UTF-8, expected UTF-8");
    }
}

/// Depth of nesting of [ and { outside strings (an upper bound if the text is not JSON).
inline std::size_t json_depth(const char* p, std::size_t n) {
    std::size_t depth = 0, deepest = 0;
    bool in_string = false, escaped = false;
    for (std::size_t k = 0; k < n; ++k) {
        const char c = p[k];
        if (in_string) {
            if (escaped)
                escaped = false;
            else if (c == '\\')
                escaped = true;
            else if (c == '"')
                in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            deepest = std::max(deepest, ++depth);
        } else if ((c == ']' || c == '}') && depth > 0) {
            --depth;
        }
    }
    return deepest;
}

}  // namespace detail

/// A parsed safetensors file: its header (names, dtypes, shapes, offsets, metadata) and its
/// bytes. A value: copy, move; every accessor is const.
class Safetensors {
public:
    /// Headers longer than this are refused (the limit of the safetensors package itself).
    static constexpr std::uint64_t kMaxHeaderBytes = 100000000;
    /// Deepest JSON nesting accepted (a valid header nests 3 deep).
    static constexpr std::size_t kMaxJsonDepth = 16;

    /// Parses a whole file held in memory. @param source names the input in error messages.
    /// @throws infinityformer::runtime_error on any malformed input.
    static Safetensors parse(std::string bytes, const std::string& source = "<buffer>") {
        Safetensors s;
        s.source_ = source;
        s.bytes_ = std::move(bytes);
        s.parse_header();
        return s;
    }
    static Safetensors parse(const std::vector<char>& bytes,
                             const std::string& source = "<buffer>") {
        return parse(std::string(bytes.begin(), bytes.end()), source);
    }
    static Safetensors parse(const void* data, std::size_t size,
                             const std::string& source = "<buffer>") {
        const char* p = static_cast<const char*>(data);
        return parse(size == 0 ? std::string() : std::string(p, p + size), source);
    }

    /// Reads the stream's buffer to its end and parses what it held (the stream's state is
    /// not changed; its exceptions mask does not matter).
    /// @throws infinityformer::runtime_error "io::Safetensors::read: <source>: …" if the
    ///         stream is already failed or reading fails (whatever the buffer throws), or as
    ///         parse() if the input is malformed.
    static Safetensors read(std::istream& in, const std::string& source = "<stream>") {
        return parse(file_detail::read_all(in, "io::Safetensors::read", source), source);
    }

    /// Reads and parses a file (the path names it in error messages).
    /// @throws infinityformer::runtime_error "io::Safetensors::load: <path>: …" if the path
    ///         is empty, does not exist, is a directory, cannot be opened or reading it fails,
    ///         or as parse() if it is malformed.
    static Safetensors load(const std::filesystem::path& path) {
        constexpr const char* where = "io::Safetensors::load";
        std::ifstream in = file_detail::open_for_reading(where, path, path.string());
        return parse(file_detail::read_all(in, where, path.string()), path.string());
    }

    /// The name given to the input (a path for load()).
    const std::string& source() const { return source_; }
    /// Every tensor's name, in ascending byte order.
    std::vector<std::string> names() const {
        std::vector<std::string> out;
        out.reserve(tensors_.size());
        for (const auto& kv : tensors_) out.push_back(kv.first);
        return out;
    }
    std::size_t size() const { return tensors_.size(); }
    bool has(const std::string& name) const { return tensors_.count(name) != 0; }
    /// @throws infinityformer::invalid_argument if there is no tensor `name`.
    const TensorInfo& info(const std::string& name) const {
        const auto it = tensors_.find(name);
        if (it == tensors_.end())
            infinityformer::detail::fail("io::Safetensors::info", source_, ": no tensor '", name,
                                         "', expected one of the file's ", tensors_.size(),
                                         " tensors");
        return it->second;
    }
    /// The header's "__metadata__" (empty if absent).
    const std::map<std::string, std::string>& metadata() const { return metadata_; }
    /// Size of the data section in bytes (0 for a moved-from object, which has no tensors).
    std::uint64_t data_bytes() const {
        return bytes_.size() > data_start_ ? bytes_.size() - data_start_ : 0;
    }

    /// The tensor's elements in row-major order, converted to Scalar.
    /// @throws infinityformer::invalid_argument if the name is absent, the dtype is not a
    ///         floating one, or an element is not finite or out of Scalar's range.
    template <typename Scalar>
    std::vector<Scalar> values(const std::string& name) const {
        static_assert(std::is_floating_point_v<Scalar>, "values() needs float or double");
        constexpr const char* where = "io::Safetensors::values";
        const TensorInfo& t = info(name);
        if (!is_float_dtype(t.dtype))
            infinityformer::detail::fail(where, source_, ": tensor '", name, "' has dtype ",
                                         dtype_name(t.dtype),
                                         ", expected a floating dtype (F64, F32, F16, BF16)");
        const std::uint64_t n = t.numel(), w = dtype_size(t.dtype);
        std::vector<Scalar> out(static_cast<std::size_t>(n));
        const auto* p =
            reinterpret_cast<const unsigned char*>(bytes_.data()) + data_start_ + t.begin;
        for (std::uint64_t k = 0; k < n; ++k) {
            const std::uint64_t u = detail::load_le(p + k * w, w);
            double v = 0;
            switch (t.dtype) {
                case DType::F64: v = detail::from_bits64(u); break;
                case DType::F32: v = detail::from_bits32(static_cast<std::uint32_t>(u)); break;
                case DType::BF16:
                    v = detail::from_bits32(static_cast<std::uint32_t>(u << 16));
                    break;
                default: v = detail::half_to_double(static_cast<std::uint16_t>(u)); break;
            }
            if (!std::isfinite(v))
                infinityformer::detail::fail(where, source_, ": tensor '", name, "' element ", k,
                                             " is ", v, ", expected a finite value");
            if (std::abs(v) > static_cast<double>(std::numeric_limits<Scalar>::max()))
                infinityformer::detail::fail(
                    where, source_, ": tensor '", name, "' element ", k, " is ", v,
                    ", which does not fit in ", sizeof(Scalar) == 4 ? "float" : "double",
                    ", expected |x| <= ", static_cast<double>(std::numeric_limits<Scalar>::max()));
            out[static_cast<std::size_t>(k)] = static_cast<Scalar>(v);
        }
        return out;
    }

    /// A 2-D tensor of shape [rows, cols] as a matrix (element [i, j] at (i, j)).
    /// @throws infinityformer::invalid_argument on another shape, or as values().
    template <typename Scalar>
    Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> matrix(const std::string& name,
                                                                 std::int64_t rows,
                                                                 std::int64_t cols) const {
        require_shape("io::Safetensors::matrix", name, {rows, cols});
        const auto v = values<Scalar>(name);
        Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> m(rows, cols);
        for (std::int64_t i = 0; i < rows; ++i)
            for (std::int64_t j = 0; j < cols; ++j)
                m(i, j) = v[static_cast<std::size_t>(i * cols + j)];
        return m;
    }

    /// A 1-D tensor of shape [n] as a vector.
    template <typename Scalar>
    Eigen::Matrix<Scalar, Eigen::Dynamic, 1> vector(const std::string& name, std::int64_t n) const {
        require_shape("io::Safetensors::vector", name, {n});
        const auto v = values<Scalar>(name);
        return Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>>(v.data(), n);
    }

    /// A 3-D tensor of shape [rows, cols, k] (a Conv1d weight [out, in, tap]) as k matrices:
    /// result[j](o, i) = element [o, i, j].
    template <typename Scalar>
    std::vector<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>> taps(const std::string& name,
                                                                            std::int64_t rows,
                                                                            std::int64_t cols,
                                                                            std::int64_t k) const {
        require_shape("io::Safetensors::taps", name, {rows, cols, k});
        const auto v = values<Scalar>(name);
        std::vector<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>> out(
            static_cast<std::size_t>(k),
            Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>(rows, cols));
        for (std::int64_t o = 0; o < rows; ++o)
            for (std::int64_t i = 0; i < cols; ++i)
                for (std::int64_t j = 0; j < k; ++j)
                    out[static_cast<std::size_t>(j)](o, i) =
                        v[static_cast<std::size_t>((o * cols + i) * k + j)];
        return out;
    }

    /// Throws infinityformer::invalid_argument unless tensor `name` has shape `expected`.
    void require_shape(const char* where, const std::string& name,
                       const std::vector<std::int64_t>& expected) const {
        const TensorInfo& t = info(name);
        if (t.shape != expected)
            infinityformer::detail::fail(where, source_, ": tensor '", name, "' has shape ",
                                         shape_string(t.shape), ", expected ",
                                         shape_string(expected));
    }

private:
    Safetensors() = default;

    template <typename... Args>
    [[noreturn]] static void corrupt(const std::string& source, const Args&... args) {
        throw infinityformer::runtime_error(
            detail::concat("[infinityformer] io::Safetensors::parse: ", source, ": ", args...));
    }

    void parse_header() {
        const std::uint64_t size = bytes_.size();
        if (size < 8)
            corrupt(source_, "the input has ", size,
                    " bytes, expected at least 8 (the header length)");
        const auto* u = reinterpret_cast<const unsigned char*>(bytes_.data());
        const std::uint64_t n = detail::load_le(u, 8);
        if (n > size - 8)
            corrupt(source_, "the header length is ", n, " bytes, expected at most ", size - 8,
                    " (the input has ", size, " bytes)");
        if (n > kMaxHeaderBytes)
            corrupt(source_, "the header length is ", n, " bytes, expected at most ",
                    kMaxHeaderBytes);
        data_start_ = 8 + n;
        const char* h = bytes_.data() + 8;
        const auto hn = static_cast<std::size_t>(n);
        // (The JSON parser would take a NUL byte for the end of its input.)
        if (hn > 0 && std::memchr(h, 0, hn) != nullptr)
            corrupt(source_, "the header has a NUL byte at offset ",
                    8 + (static_cast<const char*>(std::memchr(h, 0, hn)) - h),
                    ", expected UTF-8 JSON text");
        if (detail::json_depth(h, hn) > kMaxJsonDepth)
            corrupt(source_, "the header nests deeper than ", kMaxJsonDepth,
                    " levels, expected a flat JSON object");

        // Parse without exceptions; the callback records a key given twice in one object
        // (nlohmann would keep the last silently).
        std::vector<std::set<std::string>> open;
        std::string duplicate;
        const auto cb = [&](int, nlohmann::json::parse_event_t ev, nlohmann::json& v) {
            using E = nlohmann::json::parse_event_t;
            if (ev == E::object_start) {
                open.emplace_back();
            } else if (ev == E::object_end) {
                if (!open.empty()) open.pop_back();
            } else if (ev == E::key && !open.empty() && v.is_string()) {
                if (!open.back().insert(v.get<std::string>()).second && duplicate.empty())
                    duplicate = v.get<std::string>();
            }
            return true;
        };
        const nlohmann::json j = nlohmann::json::parse(h, h + hn, cb, false);
        if (j.is_discarded())
            corrupt(source_, "the header is not valid JSON, expected a JSON object of ", n,
                    " bytes");
        if (!j.is_object())
            corrupt(source_, "the header is a JSON ", j.type_name(), ", expected an object");
        if (!duplicate.empty())
            corrupt(source_, "the header has the key '", duplicate,
                    "' more than once in an object, expected unique names");

        const std::uint64_t data = size - data_start_;
        for (const auto& kv : j.items()) {
            const std::string& name = kv.key();
            const nlohmann::json& e = kv.value();
            if (name == "__metadata__") {
                if (!e.is_object())
                    corrupt(source_, "__metadata__ is a JSON ", e.type_name(),
                            ", expected an object of strings");
                for (const auto& m : e.items()) {
                    if (!m.value().is_string())
                        corrupt(source_, "__metadata__ entry '", m.key(), "' is a JSON ",
                                m.value().type_name(), ", expected a string");
                    metadata_[m.key()] = m.value().get<std::string>();
                }
                continue;
            }
            tensors_.emplace(name, parse_entry(name, e, data));
        }

        // No byte may belong to two tensors (empty tensors occupy none).
        std::vector<const TensorInfo*> order;
        for (const auto& kv : tensors_)
            if (kv.second.end > kv.second.begin) order.push_back(&kv.second);
        std::sort(order.begin(), order.end(), [](const TensorInfo* a, const TensorInfo* b) {
            return a->begin < b->begin || (a->begin == b->begin && a->name < b->name);
        });
        std::uint64_t covered = 0;
        for (std::size_t k = 0; k < order.size(); ++k) {
            if (k > 0 && order[k]->begin < order[k - 1]->end)
                corrupt(source_, "tensors '", order[k - 1]->name, "' [", order[k - 1]->begin, ", ",
                        order[k - 1]->end, ") and '", order[k]->name, "' [", order[k]->begin, ", ",
                        order[k]->end, ") overlap, expected disjoint data_offsets");
            covered += order[k]->bytes();
        }
        // Disjoint and inside the data section: they fill it exactly iff the sizes add up.
        if (covered != data)
            corrupt(source_, "the tensors hold ", covered, " bytes, expected ", data,
                    " (the data section, from byte 8 + header length = ", data_start_,
                    " to the end, every byte in exactly one tensor)");
    }

    TensorInfo parse_entry(const std::string& name, const nlohmann::json& e,
                           std::uint64_t data) const {
        const auto bad = [&](const auto&... args) {
            corrupt(source_, "tensor '", name, "' ", args...);
        };
        if (!e.is_object()) bad("is a JSON ", e.type_name(), ", expected an object");
        TensorInfo t;
        t.name = name;
        const auto dt = e.find("dtype");
        if (dt == e.end() || !dt->is_string()) bad("has no string field 'dtype', expected one");
        const auto parsed = dtype_from_name(dt->get<std::string>());
        if (!parsed)
            bad("has dtype '", dt->get<std::string>(),
                "', expected a safetensors dtype (F64, F32, F16, BF16, I64, …)");
        t.dtype = *parsed;

        const auto sh = e.find("shape");
        if (sh == e.end() || !sh->is_array())
            bad("has no array field 'shape', expected a list of sizes");
        for (const auto& d : *sh) {
            std::uint64_t v = 0;
            if (!detail::json_count(d, v) ||
                v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
                bad("has shape entry ", d.dump(), ", expected an integer >= 0");
            t.shape.push_back(static_cast<std::int64_t>(v));
        }
        // A zero anywhere makes an empty tensor, whatever the other sizes' product.
        const bool zero = std::find(t.shape.begin(), t.shape.end(), 0) != t.shape.end();
        std::uint64_t numel = zero ? 0 : 1;
        for (std::size_t k = 0; !zero && k < t.shape.size(); ++k)
            if (!detail::mul_ok(numel, static_cast<std::uint64_t>(t.shape[k]), numel))
                bad("has shape ", shape_string(t.shape),
                    " whose element count overflows, expected a size that fits");
        std::uint64_t nbytes = 0;
        if (!detail::mul_ok(numel, dtype_size(t.dtype), nbytes))
            bad("has shape ", shape_string(t.shape), " whose byte count overflows");

        const auto off = e.find("data_offsets");
        if (off == e.end() || !off->is_array() || off->size() != 2 ||
            !detail::json_count((*off)[0], t.begin) || !detail::json_count((*off)[1], t.end))
            bad("has data_offsets ", off == e.end() ? std::string("(none)") : off->dump(),
                ", expected [begin, end] with integers >= 0");
        if (t.end < t.begin)
            bad("has data_offsets [", t.begin, ", ", t.end, "], expected begin <= end");
        if (t.end > data)
            bad("has data_offsets [", t.begin, ", ", t.end, "], expected end <= ", data,
                " (the data section's size)");
        if (t.end - t.begin != nbytes)
            bad("has ", t.end - t.begin, " bytes (data_offsets [", t.begin, ", ", t.end,
                "]), expected ", nbytes, " for ", dtype_name(t.dtype), " of shape ",
                shape_string(t.shape));
        return t;
    }

    std::string source_;
    std::string bytes_;
    std::uint64_t data_start_ = 8;
    std::map<std::string, TensorInfo> tensors_;
    std::map<std::string, std::string> metadata_;
};

/// Builds a safetensors file: add tensors and metadata, then write() or save().
class SafetensorsWriter {
public:
    /// Starts with the metadata "format" = "pt" (as PyTorch's files have it).
    SafetensorsWriter() { metadata_["format"] = "pt"; }

    /// Adds a matrix or vector, stored in row-major order. The default shape is [rows] for
    /// a column vector type (Eigen's ColsAtCompileTime == 1) and [rows, cols] otherwise; an
    /// explicit shape must have rows·cols elements.
    /// @throws infinityformer::invalid_argument on a duplicate or reserved name, a dtype
    ///         other than F64/F32/F16/BF16, a shape mismatch, or a value that is not finite or
    ///         overflows the dtype (the writer is then unchanged).
    template <typename Derived>
    SafetensorsWriter& add(const std::string& name, const Eigen::DenseBase<Derived>& m, DType dtype,
                           std::optional<std::vector<std::int64_t>> shape = std::nullopt) {
        using S = typename Derived::Scalar;
        static_assert(std::is_floating_point_v<S>, "add() needs a float or double matrix");
        std::vector<double> flat;
        flat.reserve(static_cast<std::size_t>(m.size()));
        for (Eigen::Index i = 0; i < m.rows(); ++i)
            for (Eigen::Index j = 0; j < m.cols(); ++j)
                flat.push_back(static_cast<double>(m(i, j)));
        std::vector<std::int64_t> dims;
        if (shape)
            dims = *shape;
        else if (Derived::ColsAtCompileTime == 1)
            dims = {static_cast<std::int64_t>(m.rows())};
        else
            dims = {static_cast<std::int64_t>(m.rows()), static_cast<std::int64_t>(m.cols())};
        return add_values(name, flat, dims, dtype);
    }

    /// Adds a tensor given by its elements in row-major order (float or double).
    template <typename Scalar>
    SafetensorsWriter& add_values(const std::string& name, const std::vector<Scalar>& values,
                                  const std::vector<std::int64_t>& shape, DType dtype) {
        static_assert(std::is_floating_point_v<Scalar>, "add_values() needs float or double");
        constexpr const char* where = "io::SafetensorsWriter::add";
        infinityformer::detail::require(name != "__metadata__", where,
                                        "the name __metadata__ is reserved, expected another");
        infinityformer::detail::require(entries_.count(name) == 0, where, "tensor '", name,
                                        "' was already added, expected unique names");
        infinityformer::detail::require(is_float_dtype(dtype), where, "tensor '", name,
                                        "' has dtype ", dtype_name(dtype),
                                        ", expected F64, F32, F16 or BF16");
        detail::require_utf8(where, "the tensor name", name);
        std::uint64_t n = 1;
        bool fits = true;
        for (auto d : shape) {
            infinityformer::detail::require(d >= 0, where, "tensor '", name, "' has shape ",
                                            shape_string(shape), ", expected sizes >= 0");
            fits = fits && detail::mul_ok(n, static_cast<std::uint64_t>(d), n);
        }
        infinityformer::detail::require(fits && n == values.size(), where, "tensor '", name,
                                        "' has shape ", shape_string(shape), " (", n,
                                        " elements), expected ", values.size(), " elements");
        Entry e;
        e.dtype = dtype;
        e.shape = shape;
        e.bytes.reserve(values.size() * dtype_size(dtype));
        for (std::size_t k = 0; k < values.size(); ++k)
            detail::encode(static_cast<double>(values[k]), dtype, e.bytes, where, name, k);
        entries_.emplace(name, std::move(e));
        return *this;
    }

    /// Sets a "__metadata__" entry (replacing one of the same key).
    /// @throws infinityformer::invalid_argument if key or value is not valid UTF-8.
    SafetensorsWriter& metadata(const std::string& key, const std::string& value) {
        detail::require_utf8("io::SafetensorsWriter::metadata", "the key", key);
        detail::require_utf8("io::SafetensorsWriter::metadata", "the value", value);
        metadata_[key] = value;
        return *this;
    }

    bool has(const std::string& name) const { return entries_.count(name) != 0; }
    std::size_t size() const { return entries_.size(); }

    /// The whole file.
    std::string bytes() const {
        nlohmann::json meta = nlohmann::json::object();
        for (const auto& kv : metadata_) meta[kv.first] = kv.second;
        std::string header = "{\"__metadata__\":" + meta.dump();
        std::uint64_t offset = 0;
        for (const auto& kv : entries_) {
            const std::uint64_t end = offset + kv.second.bytes.size();
            nlohmann::json t = {{"dtype", dtype_name(kv.second.dtype)},
                                {"shape", kv.second.shape},
                                {"data_offsets", {offset, end}}};
            header += "," + nlohmann::json(kv.first).dump() + ":" + t.dump();
            offset = end;
        }
        header += "}";
        header.append((8 - header.size() % 8) % 8, ' ');
        std::string out;
        out.reserve(8 + header.size() + offset);
        detail::store_le(out, header.size(), 8);
        out += header;
        for (const auto& kv : entries_) out += kv.second.bytes;
        return out;
    }

    /// Writes the file to the stream.
    /// @throws infinityformer::runtime_error if the stream fails (or throws: whatever its
    ///         exceptions mask).
    void write(std::ostream& out) const {
        constexpr const char* where = "io::SafetensorsWriter::write";
        const std::string b = bytes();
        try {
            out.write(b.data(), static_cast<std::streamsize>(b.size()));
            out.flush();
        } catch (...) {
            file_detail::rethrow_write_error(where, "", "writing");
        }
        if (!out)
            file_detail::fail(where, "", "writing failed (the stream's ",
                              out.bad() ? "badbit" : "failbit",
                              " is set), expected a writable stream");
    }

    /// Writes to path + ".tmp", then renames it to path: a failed save leaves an existing
    /// file as it was and no temporary file (a path + ".tmp" that is a directory is refused
    /// and left alone).
    /// @throws infinityformer::runtime_error "io::SafetensorsWriter::save: <path>: …" if the
    ///         path is empty, is a directory or another non-regular file, its directory does
    ///         not exist, or creating, writing or renaming the temporary file fails.
    void save(const std::filesystem::path& path) const {
        const std::string b = bytes();
        file_detail::save_atomically(
            "io::SafetensorsWriter::save", path, path.string(), [&b](std::ostream& out) {
                out.write(b.data(), static_cast<std::streamsize>(b.size()));
            });
    }

private:
    struct Entry {
        DType dtype = DType::F64;
        std::vector<std::int64_t> shape;
        std::string bytes;
    };
    std::map<std::string, Entry> entries_;
    std::map<std::string, std::string> metadata_;
};

}  // namespace infinityformer::io
