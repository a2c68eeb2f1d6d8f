/// @file io/state.hpp
/// @brief Saving and restoring the state of one stream (LongTermMemory, LongTermAttention,
/// InfinityFormerLayer) in a versioned, checksummed binary format, so that a stream can stop
/// and resume later with bit-identical results. Needs zlib (CMake: infinityformer::io); the
/// layout is documented byte by byte in docs/state-format.md.
///
/// What is saved is what the next calls read: the memory's coefficients, the densities
/// observed for sticky sampling, the sampling generator and the seed it restarts from, the
/// counters; for a LongTermAttention stream after an update() not yet attended, the gate's
/// inputs of that update; for a layer, the short-term window's chunk and the chunk waiting
/// to be stored. Not saved: the traces of the last call (a restored stream cannot
/// differentiate the call made before the save: save after backward()), the memory before
/// the last update (so last_past() is empty after a restore), the weights (save them with
/// <infinityformer/io/weights.hpp>).
///
///     std::ofstream out("stream.state", std::ios::binary);
///     infinityformer::io::save_state(layer, out);       // or save_state_file(layer, path)
///     ...
///     std::ifstream in("stream.state", std::ios::binary);
///     infinityformer::io::restore_state(layer, in);     // or restore_state_file(layer, path)
///
/// A state is only valid for an object of the same Scalar and the same configuration
/// (dimensions and memory parameters; the seed and the attention's parameters may differ).
/// restore_state() rejects (infinityformer::runtime_error), with a message saying which it
/// is, a stream or file that is not
/// a state, is truncated, is damaged (a checksum differs), comes from a newer format
/// version, another Scalar, another kind of object or another configuration; the object is
/// then unchanged.
#pragma once

#include <zlib.h>

#include <Eigen/Core>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <ios>
#include <istream>
#include <limits>
#include <ostream>
#include <sstream>
#include <streambuf>
#include <string>
#include <type_traits>
#include <vector>

#include "../errors.hpp"
#include "../layer.hpp"
#include "../long_term_attention.hpp"
#include "../memory.hpp"
#include "files.hpp"

namespace infinityformer::io {

/// The format version this build writes; it reads versions 1 … kStateFormatVersion.
inline constexpr std::uint32_t kStateFormatVersion = 1;

/// What a state file holds (byte 20 of the file).
enum class StateKind : std::uint8_t { memory = 1, long_term_attention = 2, layer = 3 };

namespace state_detail {

inline constexpr unsigned char kMagic[8] = {0x89, 'I', 'F', 'S', 0x0D, 0x0A, 0x1A, 0x0A};
inline constexpr std::size_t kPreludeBytes = 20;       // magic, version, header length, CRC
inline constexpr std::size_t kFixedHeaderBytes = 136;  // the header without its widths
inline constexpr std::uint32_t kMaxWidths = 1u << 16;

inline const char* kind_name(std::uint8_t k) {
    switch (k) {
        case 1: return "a LongTermMemory";
        case 2: return "a LongTermAttention";
        case 3: return "an InfinityFormerLayer";
        default: return "an unknown kind of object";
    }
}

inline std::uint32_t crc32_of(const unsigned char* data, std::size_t size) {
    uLong crc = crc32(0L, Z_NULL, 0);
    while (size > 0) {  // zlib takes uInt lengths
        const auto n = static_cast<uInt>(std::min<std::size_t>(size, 1u << 30));
        crc = crc32(crc, data, n);
        data += n;
        size -= n;
    }
    return static_cast<std::uint32_t>(crc);
}

// FNV-1a, 64 bits: the configuration's hash.
inline std::uint64_t fnv1a(const unsigned char* data, std::size_t size) {
    std::uint64_t h = 0xcbf29ce484222325ULL;
    for (std::size_t i = 0; i < size; ++i) {
        h ^= data[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/// Little-endian bytes, whatever the host's byte order.
class Bytes {
public:
    void u8(std::uint8_t v) { data_.push_back(v); }
    void u16(std::uint16_t v) { put(v, 2); }
    void u32(std::uint32_t v) { put(v, 4); }
    void u64(std::uint64_t v) { put(v, 8); }
    void i64(std::int64_t v) { put(static_cast<std::uint64_t>(v), 8); }
    void f64(double v) {
        std::uint64_t b;
        std::memcpy(&b, &v, 8);
        put(b, 8);
    }
    template <typename Scalar>
    void scalar(Scalar v) {
        if constexpr (sizeof(Scalar) == 4) {
            std::uint32_t b;
            std::memcpy(&b, &v, 4);
            put(b, 4);
        } else {
            f64(static_cast<double>(v));
        }
    }
    /// A matrix's entries, row by row.
    template <typename Derived>
    void matrix(const Eigen::DenseBase<Derived>& m) {
        for (Eigen::Index i = 0; i < m.rows(); ++i)
            for (Eigen::Index j = 0; j < m.cols(); ++j) scalar(m(i, j));
    }
    void patch_u32(std::size_t at, std::uint32_t v) {
        for (int k = 0; k < 4; ++k)
            data_[at + static_cast<std::size_t>(k)] = static_cast<unsigned char>(v >> (8 * k));
    }
    void patch_u64(std::size_t at, std::uint64_t v) {
        for (int k = 0; k < 8; ++k)
            data_[at + static_cast<std::size_t>(k)] = static_cast<unsigned char>(v >> (8 * k));
    }
    void append(const Bytes& o) { data_.insert(data_.end(), o.data_.begin(), o.data_.end()); }
    std::size_t size() const { return data_.size(); }
    const unsigned char* data() const { return data_.data(); }

private:
    void put(std::uint64_t v, int n) {
        for (int k = 0; k < n; ++k) data_.push_back(static_cast<unsigned char>(v >> (8 * k)));
    }
    std::vector<unsigned char> data_;
};

/// Reads little-endian values from a checked range; running past its end is a malformed
/// state (the checksums passed, so the writer was not this library).
class Cursor {
public:
    Cursor(const unsigned char* data, std::size_t size, const char* where, const char* part)
        : p_(data), end_(data + size), where_(where), part_(part) {}

    std::size_t left() const { return static_cast<std::size_t>(end_ - p_); }
    std::uint8_t u8() { return static_cast<std::uint8_t>(get(1)); }
    std::uint16_t u16() { return static_cast<std::uint16_t>(get(2)); }
    std::uint32_t u32() { return static_cast<std::uint32_t>(get(4)); }
    std::uint64_t u64() { return get(8); }
    std::int64_t i64() { return static_cast<std::int64_t>(get(8)); }
    double f64() {
        const std::uint64_t b = get(8);
        double v;
        std::memcpy(&v, &b, 8);
        return v;
    }
    template <typename Scalar>
    Scalar scalar() {
        if constexpr (sizeof(Scalar) == 4) {
            const auto b = static_cast<std::uint32_t>(get(4));
            float v;
            std::memcpy(&v, &b, 4);
            return v;
        } else {
            return static_cast<Scalar>(f64());
        }
    }
    /// A rows × cols matrix stored row by row, its size checked against what is left.
    template <typename Matrix>
    Matrix matrix(std::int64_t rows, std::int64_t cols, const char* name) {
        using Scalar = typename Matrix::Scalar;
        const bool fits =
            rows >= 0 && cols >= 0 &&
            (cols == 0 || static_cast<std::uint64_t>(rows) <=
                              left() / sizeof(Scalar) / static_cast<std::uint64_t>(cols));
        if (!fits)
            malformed(name, " is ", rows, "x", cols, ", more than the ", left(), " bytes left");
        Matrix m(static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols));
        for (Eigen::Index i = 0; i < m.rows(); ++i)
            for (Eigen::Index j = 0; j < m.cols(); ++j) m(i, j) = scalar<Scalar>();
        return m;
    }

    template <typename... Args>
    [[noreturn]] void malformed(const Args&... args) const {
        throw infinityformer::runtime_error(infinityformer::detail::concat(
            "[infinityformer] ", where_, ": malformed state (", part_, "): ", args...,
            "; the checksums match, so it was not written by "
            "this library"));
    }

private:
    std::uint64_t get(int n) {
        if (left() < static_cast<std::size_t>(n))
            malformed("a field runs past the end (", left(), " bytes left, ", n, " needed)");
        std::uint64_t v = 0;
        for (int k = 0; k < n; ++k) v |= static_cast<std::uint64_t>(p_[k]) << (8 * k);
        p_ += n;
        return v;
    }
    const unsigned char* p_;
    const unsigned char* end_;
    const char* where_;
    const char* part_;
};

/// The configuration a state is valid for, as stored in the header: the sizes, then the
/// memory's fields in MemoryParams::for_each_field()'s order but the seed (version 1 has
/// the gate and a pad byte before reset_after_tokens).
struct Config {
    std::uint8_t kind = 0;
    std::uint8_t scalar = 0;
    std::int64_t dim = 0, chunk_length = 0, num_heads = 0, d_model = 0;
    MemoryParams memory;
    std::uint8_t gate = 0;

    void write(Bytes& b) const {
        b.i64(dim);
        b.i64(chunk_length);
        b.i64(num_heads);
        b.i64(d_model);
        MemoryParams::for_each_field(
            [&](const char* name, FieldRole role, auto, const auto& field) {
                using T = std::decay_t<decltype(field)>;
                if (role == FieldRole::seed) return;
                if (std::strcmp(name, "reset_after_tokens") == 0) {
                    b.u8(gate);
                    b.u8(0);
                }
                if constexpr (std::is_same_v<T, std::vector<double>>) {
                    b.u32(static_cast<std::uint32_t>(field.size()));
                    for (double w : field) b.f64(w);
                } else if constexpr (std::is_enum_v<T>) {
                    b.u8(static_cast<std::uint8_t>(field));
                } else if constexpr (std::is_floating_point_v<T>) {
                    b.f64(field);
                } else {
                    b.i64(static_cast<std::int64_t>(field));
                }
            },
            memory);
    }
    void read(Cursor& c) {
        dim = c.i64();
        chunk_length = c.i64();
        num_heads = c.i64();
        d_model = c.i64();
        MemoryParams::for_each_field(
            [&](const char* name, FieldRole role, auto, auto& field) {
                using T = std::decay_t<decltype(field)>;
                if (role == FieldRole::seed) return;
                if (std::strcmp(name, "reset_after_tokens") == 0) {
                    gate = c.u8();
                    c.u8();
                }
                if constexpr (std::is_same_v<T, std::vector<double>>) {
                    const std::uint32_t w = c.u32();
                    if (w > kMaxWidths || static_cast<std::size_t>(w) * 8 > c.left())
                        c.malformed(w, " widths, more than the header holds");
                    field.resize(w);
                    for (auto& x : field) x = c.f64();
                } else if constexpr (std::is_enum_v<T>) {
                    field = static_cast<T>(c.u8());
                } else if constexpr (std::is_floating_point_v<T>) {
                    field = c.f64();
                } else {
                    field = static_cast<T>(c.i64());
                }
            },
            memory);
    }
    std::uint64_t hash() const {
        Bytes b;
        write(b);
        return fnv1a(b.data(), b.size());
    }
};

template <typename Scalar>
Config config_of(StateKind kind, const LongTermMemory<Scalar>& m, std::int64_t heads,
                 std::int64_t d_model, bool gate) {
    Config c;
    c.kind = static_cast<std::uint8_t>(kind);
    c.scalar = sizeof(Scalar);
    c.dim = m.dim();
    c.chunk_length = m.chunk_length();
    c.num_heads = heads;
    c.d_model = d_model;
    c.memory = m.params();
    c.memory.seed = 0;  // not part of the configuration
    c.gate = gate ? 1 : 0;
    return c;
}

/// The first field in which the file's configuration differs from the object's.
inline std::string first_difference(const Config& f, const Config& o) {
    const char *a = "in the state", *b = "in this object";
    std::string d = infinityformer::detail::first_difference(
        {{"dim", double(f.dim), double(o.dim)},
         {"chunk_length", double(f.chunk_length), double(o.chunk_length)},
         {"num_heads", double(f.num_heads), double(o.num_heads)},
         {"d_model", double(f.d_model), double(o.d_model)},
         {"gate", double(f.gate), double(o.gate)}},
        a, b);
    return d.empty() ? f.memory.configuration_difference(o.memory, a, b) : d;
}

// ---- payload parts -------------------------------------------------------------------

template <typename Scalar>
void write_memory(Bytes& b, const LongTermMemory<Scalar>& m) {
    const auto& s = m.state();
    b.u64(m.seed_base());
    b.i64(s.tokens);
    b.i64(s.rescaled);
    b.scalar(s.peak);
    b.u8(s.empty ? 1 : 0);
    b.u16(static_cast<std::uint16_t>(s.rng.engine().position()));
    for (std::uint64_t w : s.rng.engine().words()) b.u64(w);
    b.i64(s.obs_mu.size());
    b.matrix(s.obs_mu.transpose());
    b.matrix(s.obs_sigma.transpose());
    b.i64(s.last_points.size());
    b.matrix(s.last_points.transpose());
    b.matrix(s.B);
}

template <typename Scalar>
void read_memory(Cursor& c, LongTermMemory<Scalar>& m) {
    using State = typename LongTermMemory<Scalar>::State;
    using Matrix = typename LongTermMemory<Scalar>::Matrix;
    using Vector = typename LongTermMemory<Scalar>::Vector;
    State s;
    const std::uint64_t seed_base = c.u64();
    s.tokens = static_cast<Eigen::Index>(c.i64());
    s.rescaled = static_cast<Eigen::Index>(c.i64());
    s.peak = c.template scalar<Scalar>();
    const std::uint8_t empty = c.u8();
    if (empty > 1) c.malformed("the memory's empty flag is ", int(empty), ", expected 0 or 1");
    s.empty = empty == 1;
    const std::size_t position = c.u16();
    std::array<std::uint64_t, infinityformer::detail::Mt19937_64::state_size> words{};
    for (auto& w : words) w = c.u64();
    if (!s.rng.engine().set_state(words, position))
        c.malformed("the generator's position is ", position, ", expected at most ", words.size());
    const std::int64_t n = c.i64();
    s.obs_mu = c.template matrix<Matrix>(1, n, "the observed means").transpose();
    s.obs_sigma = Vector(c.template matrix<Matrix>(1, n, "the observed deviations").transpose());
    const std::int64_t points = c.i64();
    if (points != 0 && points != m.num_samples())
        c.malformed(points, " points of the last update, expected 0 or ", m.num_samples());
    s.last_points = Vector(c.template matrix<Matrix>(1, points, "the last points").transpose());
    s.B = c.template matrix<Matrix>(m.num_basis(), m.dim(), "B");
    m.set_state(std::move(s), seed_base);
}

// `updated`: the stream's phase is StreamPhase::updated (an update() not yet attended).
template <typename Scalar>
void write_long_term(Bytes& b, const LongTermStream<Scalar>& s, bool gate, bool updated) {
    write_memory(b, s.memory);
    b.u8(updated ? 1 : 0);
    if (updated && gate) {
        b.matrix(s.input);
        b.matrix(s.gate);
        b.matrix(s.gated);
    }
}

template <typename Scalar>
void read_long_term(Cursor& c, LongTermStream<Scalar>& s, bool gate) {
    using Matrix = typename LongTermStream<Scalar>::Matrix;
    read_memory(c, s.memory);
    const std::uint8_t phase = c.u8();
    if (phase > 1) c.malformed("the stream's phase is ", int(phase), ", expected 0 or 1");
    s.phase = phase == 1 ? StreamPhase::updated : StreamPhase::idle;
    if (phase == 1 && gate) {
        const auto l = s.memory.chunk_length(), e = s.memory.dim();
        s.input = c.template matrix<Matrix>(l, e, "the gate's input");
        s.gate = c.template matrix<Matrix>(l, e, "the gate's values");
        s.gated = c.template matrix<Matrix>(l, e, "the gated chunk");
    }
}

// ---- the container -------------------------------------------------------------------

/// Prelude, header (with the configuration) and payload, checksummed.
inline void write_file(std::ostream& out, const Config& cfg, const Bytes& payload,
                       const char* where) {
    Bytes h;
    for (unsigned char m : kMagic) h.u8(m);
    h.u32(kStateFormatVersion);
    const std::size_t header_bytes = kFixedHeaderBytes + 8 * cfg.memory.widths.size();
    h.u32(static_cast<std::uint32_t>(header_bytes));
    h.u32(crc32_of(h.data(), h.size()));
    h.u8(cfg.kind);
    h.u8(cfg.scalar);
    h.u16(0);
    h.u64(cfg.hash());
    cfg.write(h);
    h.u64(payload.size());
    h.u32(crc32_of(payload.data(), payload.size()));
    h.u32(crc32_of(h.data(), h.size()));
    if (h.size() != header_bytes)
        throw infinityformer::logic_error(
            infinityformer::detail::concat("[infinityformer] ", where, ": header of ", h.size(),
                                           " bytes, expected ", header_bytes));
    try {  // a stream whose exceptions mask is set throws: the library's error instead
        out.write(reinterpret_cast<const char*>(h.data()), static_cast<std::streamsize>(h.size()));
        out.write(reinterpret_cast<const char*>(payload.data()),
                  static_cast<std::streamsize>(payload.size()));
    } catch (...) {
        file_detail::rethrow_write_error(where, "", "writing the state");
    }
    if (!out)
        throw infinityformer::runtime_error(infinityformer::detail::concat(
            "[infinityformer] ", where, ": writing the state failed (the stream's state is bad)"));
}

// Reads up to n bytes (in pieces, so that a lying length allocates no more than the
// stream holds); returns what was read.
inline std::vector<unsigned char> read_up_to(std::istream& in, std::uint64_t n) {
    std::vector<unsigned char> out;
    constexpr std::uint64_t piece = 1u << 20;
    while (out.size() < n && in) {
        const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(piece, n - out.size()));
        const std::size_t at = out.size();
        out.resize(at + want);
        in.read(reinterpret_cast<char*>(out.data() + at), static_cast<std::streamsize>(want));
        out.resize(at + static_cast<std::size_t>(in.gcount()));
    }
    return out;
}

template <typename... Args>
[[noreturn]] void reject(const char* where, const Args&... args) {
    throw infinityformer::runtime_error(
        infinityformer::detail::concat("[infinityformer] ", where, ": ", args...));
}

/// Inside a catch block while reading a state: a value the object refused (its own check,
/// an invalid_argument) is a fault of the input, so it is rethrown as a runtime_error
/// named after `where`; other errors as rethrow_as() does.
[[noreturn]] inline void rethrow_read_error(const char* where) {
    try {
        throw;
    } catch (const infinityformer::invalid_argument& e) {
        throw infinityformer::runtime_error(
            infinityformer::detail::renamed(e.what(), where) +
            " (in a state whose checksums match: it was not written by this library)");
    } catch (...) {
        infinityformer::detail::rethrow_as(where);
    }
}

inline void check_readable(std::istream& in, const char* where) {
    if (in.fail())
        reject(where, "the input stream is in a failed state (", in.bad() ? "badbit" : "failbit",
               " set), expected a readable stream (state unchanged)");
}

/// Up to n bytes of `in`. A read error (the stream's badbit) is reported as such, whether
/// the stream throws (its exceptions mask) or not; a stream that throws at its end
/// (exceptions(failbit)) ends like any other here.
inline std::vector<unsigned char> read_bytes(std::istream& in, std::uint64_t n, const char* where) {
    std::vector<unsigned char> got;
    try {
        got = read_up_to(in, n);
    } catch (const std::exception& e) {
        if (in.bad()) reject(where, "reading failed (", e.what(), "; state unchanged)");
        reject(where, "the state is truncated or unreadable: the input stream failed (", e.what(),
               "; state unchanged)");
    }
    if (in.bad()) reject(where, "reading failed (the stream's badbit is set; state unchanged)");
    return got;
}

/// The first 20 bytes of a state or model-state file, checked: the magic, a format version
/// from 1 to `newest`, the header's length, under the prelude's own checksum.
struct Prelude {
    std::vector<unsigned char> bytes;
    std::uint32_t version = 0;
    std::uint32_t header_bytes = 0;
};

/// Reads and checks a Prelude. `noun` names the file in messages ("state", "model state"),
/// `magic_hex` spells `magic`; when the first bytes are `other_magic` instead (may be null),
/// `other_message` says what the file is.
inline Prelude read_prelude(std::istream& in, const char* where, const char* noun,
                            const unsigned char (&magic)[8], const char* magic_hex,
                            std::uint32_t newest, const unsigned char* other_magic = nullptr,
                            const char* other_message = nullptr) {
    check_readable(in, where);
    Prelude p;
    p.bytes = read_bytes(in, kPreludeBytes, where);
    const std::size_t have = std::min(p.bytes.size(), sizeof magic);
    if (p.bytes.empty())
        reject(where, "the ", noun, " is truncated: the input is empty (state unchanged)");
    if (std::memcmp(p.bytes.data(), magic, have) != 0) {
        if (other_magic != nullptr && std::memcmp(p.bytes.data(), other_magic, have) == 0)
            reject(where, other_message);
        reject(where, "not an infinityformer ", noun, ": the first bytes are not the magic bytes ",
               magic_hex, " (another file, or a damaged one; state unchanged)");
    }
    if (p.bytes.size() < kPreludeBytes)
        reject(where, "the ", noun, " is truncated: its prelude needs ", kPreludeBytes,
               " bytes, the input ends after ", p.bytes.size(), " (state unchanged)");
    Cursor pc(p.bytes.data() + 8, 12, where, "prelude");
    p.version = pc.u32();
    p.header_bytes = pc.u32();
    if (pc.u32() != crc32_of(p.bytes.data(), 16))
        reject(where, "the ", noun,
               " is damaged: the checksum of its first 16 bytes differs (state unchanged)");
    if (p.version > newest)
        reject(where, "the ", noun, " has format version ", p.version,
               ", newer than this build reads (up to ", newest,
               "): update infinityformer (state unchanged)");
    if (p.version == 0)
        reject(where, "malformed ", noun,
               ": format version 0 does not exist, yet the checksum matches (not written by "
               "this library; state unchanged)");
    return p;
}

/// Reads and checks a state's container against the object's configuration; returns the
/// payload (checksum verified).
inline std::vector<unsigned char> read_file(std::istream& in, const Config& object,
                                            const char* where) {
    auto truncated = [where](std::uint64_t expected, std::uint64_t got, const char* part) {
        reject(where, "the state is truncated: its ", part, " needs ", expected,
               " bytes, the input ends after ", got, " (state unchanged)");
    };
    auto read = [where](std::istream& is, std::uint64_t n) { return read_bytes(is, n, where); };
    const Prelude prelude_read =
        read_prelude(in, where, "state", kMagic, "89 49 46 53 0D 0A 1A 0A", kStateFormatVersion);
    const auto& prelude = prelude_read.bytes;
    const std::uint32_t header_bytes = prelude_read.header_bytes;
    if (header_bytes < kFixedHeaderBytes || header_bytes > kFixedHeaderBytes + 8 * kMaxWidths ||
        (header_bytes - kFixedHeaderBytes) % 8 != 0)
        reject(where, "malformed state: a header of ", header_bytes, " bytes, expected ",
               kFixedHeaderBytes, " + 8 per width");
    auto header = prelude;
    const auto rest = read(in, header_bytes - kPreludeBytes);
    header.insert(header.end(), rest.begin(), rest.end());
    if (header.size() < header_bytes) truncated(header_bytes, header.size(), "header");
    Cursor tail(header.data() + header_bytes - 4, 4, where, "header");
    if (tail.u32() != crc32_of(header.data(), header_bytes - 4))
        reject(where, "the state is damaged: its header's checksum differs (state unchanged)");
    Cursor hc(header.data() + kPreludeBytes, header_bytes - kPreludeBytes - 4, where, "header");
    Config file;
    file.kind = hc.u8();
    file.scalar = hc.u8();
    hc.u16();
    const std::uint64_t hash = hc.u64();
    file.read(hc);
    const std::uint64_t payload_bytes = hc.u64();
    const std::uint32_t payload_crc = hc.u32();
    if (hc.left() != 0) hc.malformed(hc.left(), " bytes left in the header");
    if (file.scalar != object.scalar)
        reject(where, "the state was saved from a ",
               file.scalar == 4   ? "float"
               : file.scalar == 8 ? "double"
                                  : "unknown-Scalar",
               " object, this object is ", object.scalar == 4 ? "float" : "double",
               " (state unchanged)");
    if (file.kind != object.kind)
        reject(where, "the state is of ", kind_name(file.kind), ", this object is ",
               kind_name(object.kind), " (state unchanged)");
    const std::string diff = first_difference(file, object);
    if (!diff.empty())
        reject(where, "the state is from another configuration: ", diff, " (state unchanged)");
    if (hash != file.hash())
        reject(where, "malformed state: its configuration hash ", hash,
               " is not the hash of its own configuration (", file.hash(),
               "), yet the checksum matches (not written by this library; state unchanged)");
    auto payload = read(in, payload_bytes);
    if (payload.size() < payload_bytes)
        reject(where, "the state is truncated: it needs ", payload_bytes + header_bytes,
               " bytes (header and payload), the input ends after ", payload.size() + header_bytes,
               " (state unchanged)");
    if (payload_crc != crc32_of(payload.data(), payload.size()))
        reject(where, "the state is damaged: the checksum of its ", payload_bytes,
               "-byte payload differs (state unchanged)");
    return payload;
}

inline void expect_end(const Cursor& c) {
    if (c.left() != 0) c.malformed(c.left(), " bytes left after the state's last field");
}

template <typename Save>
void save_to_path(const std::string& path, const char* where, Save save) {
    file_detail::save_atomically(where, path, "'" + path + "'", save);
}

/// After a file's state: the file's end.
inline void expect_file_end(std::istream& in, const char* where) {
    const auto after = in.peek();
    if (in.bad()) reject(where, "reading failed (the stream's badbit is set; state unchanged)");
    if (after != std::char_traits<char>::eof())
        reject(where, "the file is damaged: it has bytes after the state (state unchanged)");
}

/// f(), its runtime_errors "[infinityformer] where: …" rethrown as "… where: <name>: …"
/// (the file's name, or a part of a model and its stream, after the call's).
template <typename F>
auto named(const char* where, const std::string& name, F&& f) -> decltype(f()) {
    try {
        return f();
    } catch (const infinityformer::runtime_error& e) {
        const std::string m = e.what(),
                          head = infinityformer::detail::concat("[infinityformer] ", where, ": ");
        if (m.compare(0, head.size(), head) != 0) throw;
        throw infinityformer::runtime_error(head + name + ": " + m.substr(head.size()));
    }
}

}  // namespace state_detail

// ---- LongTermMemory ------------------------------------------------------------------

/// Writes the memory's state (format: docs/state-format.md).
/// @throws infinityformer::runtime_error if the stream fails.
template <typename Scalar>
void save_state(const LongTermMemory<Scalar>& memory, std::ostream& out) {
    namespace sd = state_detail;
    sd::Bytes payload;
    sd::write_memory(payload, memory);
    sd::write_file(out, sd::config_of(StateKind::memory, memory, 0, 0, false), payload,
                   "io::save_state");
}

namespace state_detail {

// Reads a state into a value the object can take without failing (checked against it).
template <typename Scalar>
LongTermMemory<Scalar> parse_state(LongTermMemory<Scalar>& memory, std::istream& in, Eigen::Index,
                                   const char* where) {
    const auto payload = read_file(in, config_of(StateKind::memory, memory, 0, 0, false), where);
    Cursor c(payload.data(), payload.size(), where, "payload");
    LongTermMemory<Scalar> next = memory.for_stream(memory.stream_index());
    try {
        read_memory(c, next);
    } catch (...) {
        rethrow_read_error(where);
    }
    expect_end(c);
    return next;
}
template <typename Scalar>
void commit_state(LongTermMemory<Scalar>& memory, LongTermMemory<Scalar>&& next, Eigen::Index) {
    memory = std::move(next);
}

}  // namespace state_detail

/// Reads a state written by save_state() into the memory; `in` is left after it.
/// @throws infinityformer::runtime_error naming what is wrong (memory unchanged).
template <typename Scalar>
void restore_state(LongTermMemory<Scalar>& memory, std::istream& in) {
    auto next = state_detail::parse_state(memory, in, 0, "io::restore_state");
    state_detail::commit_state(memory, std::move(next), 0);
}

// ---- LongTermAttention ---------------------------------------------------------------

/// Writes the state of one stream of a LongTermAttention.
/// @throws infinityformer::invalid_argument on a bad stream index; runtime_error if the
///         output stream fails.
template <typename Scalar>
void save_state(const LongTermAttention<Scalar>& module, std::ostream& out,
                Eigen::Index stream = 0) {
    namespace sd = state_detail;
    infinityformer::detail::check_stream_index("io::save_state", stream, module.num_streams());
    const auto& s = module.stream_state(stream);
    sd::Bytes payload;
    sd::write_long_term(payload, s, module.has_gate(), s.phase == StreamPhase::updated);
    sd::write_file(out,
                   sd::config_of(StateKind::long_term_attention, s.memory, module.num_heads(),
                                 module.d_model(), module.has_gate()),
                   payload, "io::save_state");
}

namespace state_detail {

template <typename Scalar>
LongTermStream<Scalar> parse_state(LongTermAttention<Scalar>& module, std::istream& in,
                                   Eigen::Index stream, const char* where) {
    infinityformer::detail::check_stream_index(where, stream, module.num_streams());
    const auto& current = module.stream_state(stream);
    const auto payload =
        read_file(in,
                  config_of(StateKind::long_term_attention, current.memory, module.num_heads(),
                            module.d_model(), module.has_gate()),
                  where);
    Cursor c(payload.data(), payload.size(), where, "payload");
    try {
        auto next = module.engine().make_stream(stream);
        read_long_term(c, next, module.has_gate());
        expect_end(c);
        module.engine().take_stream_state(where, next);
        return next;
    } catch (...) {
        rethrow_read_error(where);
    }
}
template <typename Scalar>
void commit_state(LongTermAttention<Scalar>& module, LongTermStream<Scalar>&& next,
                  Eigen::Index stream) {
    module.set_stream_state(std::move(next), stream);
}

}  // namespace state_detail

/// Reads a state written by save_state() into stream `stream` of the module; `in` is left
/// after it. The stream's index is the module's: a state saved from stream 1 may be
/// restored into stream 0 (its generator then restarts, at a reset, as stream 0's).
/// @throws infinityformer::runtime_error naming what is wrong with the input (module
///         unchanged); invalid_argument on a bad stream index.
template <typename Scalar>
void restore_state(LongTermAttention<Scalar>& module, std::istream& in, Eigen::Index stream = 0) {
    auto next = state_detail::parse_state(module, in, stream, "io::restore_state");
    state_detail::commit_state(module, std::move(next), stream);
}

// ---- InfinityFormerLayer -------------------------------------------------------------

/// Writes the state of one stream of a layer.
/// @throws infinityformer::invalid_argument on a bad stream index; runtime_error if the
///         output stream fails.
template <typename Scalar>
void save_state(const InfinityFormerLayer<Scalar>& layer, std::ostream& out,
                Eigen::Index stream = 0) {
    namespace sd = state_detail;
    infinityformer::detail::check_stream_index("io::save_state", stream, layer.num_streams());
    const auto& s = layer.stream_state(stream);
    const auto lt = layer.long_term();
    sd::Bytes payload;
    for (const auto* chunk : {&s.prev, &s.pending}) {
        payload.i64(chunk->rows());
        payload.matrix(*chunk);
    }
    // A layer attends after every update: its long-term streams are never left `updated`.
    sd::write_long_term(payload, s.long_term, lt.has_gate(), false);
    sd::write_file(out,
                   sd::config_of(StateKind::layer, s.long_term.memory, layer.num_heads(),
                                 layer.d_model(), lt.has_gate()),
                   payload, "io::save_state");
}

namespace state_detail {

template <typename Scalar>
LayerStream<Scalar> parse_state(InfinityFormerLayer<Scalar>& layer, std::istream& in,
                                Eigen::Index stream, const char* where) {
    using Matrix = typename InfinityFormerLayer<Scalar>::Matrix;
    infinityformer::detail::check_stream_index(where, stream, layer.num_streams());
    const auto& current = layer.stream_state(stream);
    const auto lt = layer.long_term();
    const auto payload = read_file(in,
                                   config_of(StateKind::layer, current.long_term.memory,
                                             layer.num_heads(), layer.d_model(), lt.has_gate()),
                                   where);
    Cursor c(payload.data(), payload.size(), where, "payload");
    try {
        LayerStream<Scalar> next = layer.make_stream(stream);
        for (Matrix* chunk : {&next.prev, &next.pending}) {
            const std::int64_t rows = c.i64();
            if (rows != 0 && rows != layer.chunk_length())
                c.malformed("a window chunk of ", rows, " rows, expected 0 or ",
                            layer.chunk_length());
            *chunk = c.template matrix<Matrix>(rows, layer.d_model(), "a window chunk");
        }
        read_long_term(c, next.long_term, lt.has_gate());
        if (next.long_term.phase != StreamPhase::idle)
            c.malformed("the layer's long-term phase byte is 1, expected 0");
        expect_end(c);
        layer.take_stream_state(where, next);
        return next;
    } catch (...) {
        rethrow_read_error(where);
    }
}
template <typename Scalar>
void commit_state(InfinityFormerLayer<Scalar>& layer, LayerStream<Scalar>&& next,
                  Eigen::Index stream) {
    layer.set_stream_state(std::move(next), stream);
}

}  // namespace state_detail

/// Reads a state written by save_state() into stream `stream` of the layer; `in` is left
/// after it.
/// @throws infinityformer::runtime_error naming what is wrong with the input (layer
///         unchanged); invalid_argument on a bad stream index.
template <typename Scalar>
void restore_state(InfinityFormerLayer<Scalar>& layer, std::istream& in, Eigen::Index stream = 0) {
    auto next = state_detail::parse_state(layer, in, stream, "io::restore_state");
    state_detail::commit_state(layer, std::move(next), stream);
}

// ---- files ---------------------------------------------------------------------------

/// save_state() to a file: written to `path` + ".tmp", then renamed over `path`, so that a
/// failed save leaves an existing file as it was (and no temporary file).
/// @throws infinityformer::runtime_error "io::save_state_file: '<path>': …" if the path is
///         empty, is a directory or another non-regular file, its directory does not exist,
///         or creating, writing or renaming the temporary file fails; invalid_argument on a
///         bad stream index.
template <typename Object>
void save_state_file(const Object& object, const std::string& path, Eigen::Index stream = 0) {
    if constexpr (!std::is_same_v<Object, LongTermMemory<typename Object::Scalar>>)
        infinityformer::detail::check_stream_index("io::save_state_file", stream,
                                                   object.num_streams());
    state_detail::save_to_path(path, "io::save_state_file", [&](std::ostream& out) {
        if constexpr (std::is_same_v<Object, LongTermMemory<typename Object::Scalar>>)
            save_state(object, out);
        else
            save_state(object, out, stream);
    });
}

/// restore_state() from a file that holds one state and nothing after it (stream ignored
/// for a LongTermMemory).
/// @throws infinityformer::runtime_error "io::restore_state_file: '<path>': …" if the path
///         is empty, does not exist, is a directory, cannot be opened or read, or naming what
///         is wrong with its contents (object unchanged); invalid_argument on a bad stream
///         index.
template <typename Object>
void restore_state_file(Object& object, const std::string& path, Eigen::Index stream = 0) {
    constexpr const char* where = "io::restore_state_file";
    const std::string name = "'" + path + "'";
    std::ifstream in = file_detail::open_for_reading(where, path, name);
    auto next = state_detail::named(where, name, [&] {
        auto parsed = state_detail::parse_state(object, in, stream, where);
        state_detail::expect_file_end(in, where);
        return parsed;
    });
    state_detail::commit_state(object, std::move(next), stream);
}

// ---- a whole model -------------------------------------------------------------------

template <typename Scalar>
class ModelPart;

namespace state_detail {
template <typename Scalar>
struct ModelReader;
}  // namespace state_detail

/// One named part of a model for save_model_state() and restore_model_state(): an
/// InfinityFormerLayer or a LongTermAttention, every stream of which is saved. It refers to
/// the object (which must outlive it); made from a const object it can only be saved.
template <typename Scalar>
class ModelPart {
public:
    ModelPart(std::string name, InfinityFormerLayer<Scalar>& layer)
        : name_(std::move(name)), layer_(&layer), mutable_layer_(&layer) {}
    ModelPart(std::string name, const InfinityFormerLayer<Scalar>& layer)
        : name_(std::move(name)), layer_(&layer) {}
    ModelPart(std::string name, LongTermAttention<Scalar>& attention)
        : name_(std::move(name)), attention_(&attention), mutable_attention_(&attention) {}
    ModelPart(std::string name, const LongTermAttention<Scalar>& attention)
        : name_(std::move(name)), attention_(&attention) {}
    ModelPart(std::string, InfinityFormerLayer<Scalar>&&) = delete;  // would dangle
    ModelPart(std::string, LongTermAttention<Scalar>&&) = delete;

    const std::string& name() const { return name_; }
    StateKind kind() const { return layer_ ? StateKind::layer : StateKind::long_term_attention; }
    /// The layer, or null for a long-term attention.
    const InfinityFormerLayer<Scalar>* layer() const { return layer_; }
    /// The long-term attention, or null for a layer.
    const LongTermAttention<Scalar>* attention() const { return attention_; }
    /// The object's number of streams.
    Eigen::Index num_streams() const {
        return layer_ ? layer_->num_streams() : attention_->num_streams();
    }

private:
    template <typename S>
    friend struct state_detail::ModelReader;
    std::string name_;
    const InfinityFormerLayer<Scalar>* layer_ = nullptr;
    InfinityFormerLayer<Scalar>* mutable_layer_ = nullptr;
    const LongTermAttention<Scalar>* attention_ = nullptr;
    LongTermAttention<Scalar>* mutable_attention_ = nullptr;
};

/// A model's parts, in the order they are saved and restored:
///
///     const io::ModelParts<double> model = {{"encoder", encoder}, {"decoder", decoder}};
///     io::save_model_state_file(model, "model.state");
///     io::restore_model_state_file(model, "model.state");
template <typename Scalar>
using ModelParts = std::vector<ModelPart<Scalar>>;

/// The model-state format version this build writes; it reads 1 … kModelStateFormatVersion.
inline constexpr std::uint32_t kModelStateFormatVersion = 1;

namespace state_detail {

inline constexpr unsigned char kModelMagic[8] = {0x89, 'I', 'F', 'M', 0x0D, 0x0A, 0x1A, 0x0A};
inline constexpr std::size_t kModelFixedHeaderBytes = 44;  // prelude, sizes, CRCs: no parts
inline constexpr std::uint32_t kMaxPartName = 1024;

// The parts' checks before reading or writing: at least one, names of 1 to 1024 bytes, each
// name and each object once.
template <typename Scalar>
void check_parts(const char* where, const ModelParts<Scalar>& parts) {
    infinityformer::detail::require(!parts.empty(), where,
                                    "the model has no parts, expected at least one");
    for (std::size_t i = 0; i < parts.size(); ++i) {
        const auto& p = parts[i];
        infinityformer::detail::require(!p.name().empty() && p.name().size() <= kMaxPartName, where,
                                        "part ", i, " is named '", p.name(), "' (", p.name().size(),
                                        " bytes), expected 1 to ", kMaxPartName, " bytes");
        for (std::size_t j = 0; j < i; ++j) {
            infinityformer::detail::require(parts[j].name() != p.name(), where, "parts ", j,
                                            " and ", i, " are both named '", p.name(),
                                            "', expected distinct names");
            const bool same = (p.layer() && p.layer() == parts[j].layer()) ||
                              (p.attention() && p.attention() == parts[j].attention());
            infinityformer::detail::require(!same, where, "parts '", parts[j].name(), "' and '",
                                            p.name(), "' are the same object, expected each once");
        }
    }
}

inline const char* part_kind_name(std::uint8_t k) {
    return k == static_cast<std::uint8_t>(StateKind::layer) ? "an InfinityFormerLayer"
           : k == static_cast<std::uint8_t>(StateKind::long_term_attention)
               ? "a LongTermAttention"
               : "an unknown kind of object";
}

// A part's row of the file's table.
struct PartEntry {
    std::string name;
    std::uint8_t kind = 0;
    std::vector<std::uint64_t> lengths;  // each stream's state, in bytes
};

// Reads a byte range as an input stream (a stream state inside a model state).
class SpanInput : public std::streambuf {
public:
    SpanInput(const unsigned char* data, std::size_t size) {
        char* p = const_cast<char*>(reinterpret_cast<const char*>(data));
        setg(p, p, p + size);
    }
    std::size_t left() const { return static_cast<std::size_t>(egptr() - gptr()); }
};

// Reads and checks a model state against the parts, then commits every stream at once.
template <typename Scalar>
struct ModelReader {
    const ModelParts<Scalar>& parts;
    const char* where;
    std::vector<std::vector<LayerStream<Scalar>>> layers;
    std::vector<std::vector<LongTermStream<Scalar>>> attentions;

    void read(std::istream& in) {
        check_parts(where, parts);
        for (const auto& p : parts)
            if (!(p.layer_ ? p.mutable_layer_ != nullptr : p.mutable_attention_ != nullptr))
                infinityformer::detail::fail(
                    where, "part '", p.name(), "' was made from a const ",
                    p.layer_ ? "layer" : "long-term attention",
                    ", expected an object this call may change (state unchanged)");
        auto truncated = [this](std::uint64_t expected, std::uint64_t got, const char* part) {
            reject(where, "the model state is truncated: its ", part, " needs ", expected,
                   " bytes, the input ends after ", got, " (state unchanged)");
        };
        const Prelude prelude_read =
            read_prelude(in, where, "model state", kModelMagic, "89 49 46 4D 0D 0A 1A 0A",
                         kModelStateFormatVersion, kMagic,
                         "this is one stream's state (io::save_state), expected a model state "
                         "(io::save_model_state; state unchanged)");
        const auto& prelude = prelude_read.bytes;
        const std::uint32_t header_bytes = prelude_read.header_bytes;
        if (header_bytes < kModelFixedHeaderBytes)
            reject(where, "malformed model state: a header of ", header_bytes,
                   " bytes, expected at least ", kModelFixedHeaderBytes);
        auto header = prelude;
        const auto rest = read_bytes(in, header_bytes - kPreludeBytes, where);
        header.insert(header.end(), rest.begin(), rest.end());
        if (header.size() < header_bytes) truncated(header_bytes, header.size(), "header");
        Cursor tail(header.data() + header_bytes - 4, 4, where, "header");
        if (tail.u32() != crc32_of(header.data(), header_bytes - 4))
            reject(where,
                   "the model state is damaged: its header's checksum differs (state "
                   "unchanged)");
        Cursor hc(header.data() + kPreludeBytes, header_bytes - kPreludeBytes - 4, where,
                  "model header");
        const std::uint8_t scalar = hc.u8();
        hc.u8();
        hc.u16();
        const std::uint32_t count = hc.u32();
        if (count > hc.left() / 16) hc.malformed(count, " parts, more than the header holds");
        std::vector<PartEntry> table(count);
        std::uint64_t total = 0;
        for (auto& e : table) {
            const std::uint32_t n = hc.u32();
            if (n == 0 || n > kMaxPartName || n > hc.left())
                hc.malformed("a part's name of ", n, " bytes, expected 1 to ", kMaxPartName);
            for (std::uint32_t k = 0; k < n; ++k) e.name.push_back(static_cast<char>(hc.u8()));
            e.kind = hc.u8();
            hc.u8();
            hc.u16();
            const std::uint64_t streams = hc.u64();
            if (streams > hc.left() / 8)
                hc.malformed(streams, " streams of part '", e.name,
                             "', more than the header holds");
            e.lengths.resize(static_cast<std::size_t>(streams));
            for (auto& l : e.lengths) {
                l = hc.u64();
                if (l > (std::uint64_t(1) << 62) || total + l < total)
                    hc.malformed("a stream's state of ", l, " bytes");
                total += l;
            }
        }
        const std::uint64_t payload_bytes = hc.u64();
        const std::uint32_t payload_crc = hc.u32();
        if (hc.left() != 0) hc.malformed(hc.left(), " bytes left in the header");
        if (scalar != sizeof(Scalar))
            reject(where, "the model state was saved from ",
                   scalar == 4   ? "float"
                   : scalar == 8 ? "double"
                                 : "unknown-Scalar",
                   " objects, this model is ", sizeof(Scalar) == 4 ? "float" : "double",
                   " (state unchanged)");
        check_table(table);
        if (total != payload_bytes)
            hc.malformed("the streams' states add up to ", total, " bytes, the payload has ",
                         payload_bytes);
        const auto payload = read_bytes(in, payload_bytes, where);
        if (payload.size() < payload_bytes)
            reject(where, "the model state is truncated: it needs ", payload_bytes + header_bytes,
                   " bytes (header and payload), the input ends after ",
                   payload.size() + header_bytes, " (state unchanged)");
        if (payload_crc != crc32_of(payload.data(), payload.size()))
            reject(where, "the model state is damaged: the checksum of its ", payload_bytes,
                   "-byte payload differs (state unchanged)");
        parse_streams(table, payload);
    }

    // The file's parts are the model's: their number, names, kinds and stream counts.
    void check_table(const std::vector<PartEntry>& table) const {
        auto names = [](auto&& list) {
            std::string out;
            for (const auto& p : list) out += (out.empty() ? "'" : ", '") + name_of(p) + "'";
            return out;
        };
        if (table.size() != parts.size())
            reject(where, "the model state holds ", table.size(), " parts (", names(table),
                   "), the model has ", parts.size(), " (", names(parts),
                   "), expected the same parts in the same order (state unchanged)");
        for (std::size_t i = 0; i < table.size(); ++i) {
            const auto& e = table[i];
            const auto& p = parts[i];
            if (e.name != p.name())
                reject(where, "part ", i, " is named '", e.name, "' in the model state, '",
                       p.name(),
                       "' in the model, expected the same parts in the same order "
                       "(state unchanged)");
            if (e.kind != static_cast<std::uint8_t>(p.kind()))
                reject(where, "part '", e.name, "' is ", part_kind_name(e.kind),
                       " in the model state, ", part_kind_name(static_cast<std::uint8_t>(p.kind())),
                       " in the model (state unchanged)");
            if (e.lengths.size() != static_cast<std::size_t>(p.num_streams()))
                reject(where, "part '", e.name, "' has ", e.lengths.size(),
                       " streams in the model state, ", p.num_streams(),
                       " in the model, expected as many (set_num_streams() first; state "
                       "unchanged)");
        }
    }
    static std::string name_of(const PartEntry& e) { return e.name; }
    static std::string name_of(const ModelPart<Scalar>& p) { return p.name(); }

    // Each stream's state read by the object's own reader (checked, nothing changed).
    void parse_streams(const std::vector<PartEntry>& table,
                       const std::vector<unsigned char>& payload) {
        layers.resize(parts.size());
        attentions.resize(parts.size());
        std::size_t at = 0;
        for (std::size_t i = 0; i < parts.size(); ++i) {
            const auto& p = parts[i];
            for (std::size_t k = 0; k < table[i].lengths.size(); ++k) {
                const auto length = static_cast<std::size_t>(table[i].lengths[k]);
                const auto stream = static_cast<Eigen::Index>(k);
                const std::string name =
                    infinityformer::detail::concat("part '", p.name(), "', stream ", k);
                named(where, name, [&] {
                    SpanInput buffer(payload.data() + at, length);
                    std::istream sub(&buffer);
                    if (p.mutable_layer_)
                        layers[i].push_back(parse_state(*p.mutable_layer_, sub, stream, where));
                    else
                        attentions[i].push_back(
                            parse_state(*p.mutable_attention_, sub, stream, where));
                    if (buffer.left() != 0)
                        reject(where, "malformed model state: ", buffer.left(),
                               " bytes after the stream's state, yet the checksum matches (not "
                               "written by this library; state unchanged)");
                });
                at += length;
            }
        }
    }

    // Every stream's state kept (each was taken by its object's checks: nothing fails).
    void commit() {
        for (std::size_t i = 0; i < parts.size(); ++i) {
            const auto& p = parts[i];
            for (std::size_t k = 0; k < layers[i].size(); ++k)
                commit_state(*p.mutable_layer_, std::move(layers[i][k]),
                             static_cast<Eigen::Index>(k));
            for (std::size_t k = 0; k < attentions[i].size(); ++k)
                commit_state(*p.mutable_attention_, std::move(attentions[i][k]),
                             static_cast<Eigen::Index>(k));
        }
    }
};

template <typename Scalar>
void write_model(std::ostream& out, const ModelParts<Scalar>& parts, const char* where) {
    check_parts(where, parts);
    std::vector<std::string> states;  // each stream's, as save_state() writes it
    Bytes h;
    for (unsigned char m : kModelMagic) h.u8(m);
    h.u32(kModelStateFormatVersion);
    h.u32(0);  // the header's length, patched below
    h.u32(0);  // the prelude's CRC, patched below
    h.u8(sizeof(Scalar));
    h.u8(0);
    h.u16(0);
    h.u32(static_cast<std::uint32_t>(parts.size()));
    for (const auto& p : parts) {
        h.u32(static_cast<std::uint32_t>(p.name().size()));
        for (char c : p.name()) h.u8(static_cast<std::uint8_t>(c));
        h.u8(static_cast<std::uint8_t>(p.kind()));
        h.u8(0);
        h.u16(0);
        h.u64(static_cast<std::uint64_t>(p.num_streams()));
        for (Eigen::Index k = 0; k < p.num_streams(); ++k) {
            std::ostringstream one;
            if (p.layer())
                save_state(*p.layer(), one, k);
            else
                save_state(*p.attention(), one, k);
            states.push_back(std::move(one).str());
            h.u64(states.back().size());
        }
    }
    std::string payload;
    for (const auto& st : states) payload += st;
    const auto* bytes = reinterpret_cast<const unsigned char*>(payload.data());
    h.u64(payload.size());
    h.u32(crc32_of(bytes, payload.size()));
    const std::size_t header_bytes = h.size() + 4;
    h.patch_u32(12, static_cast<std::uint32_t>(header_bytes));
    h.patch_u32(16, crc32_of(h.data(), 16));
    h.u32(crc32_of(h.data(), h.size()));
    try {  // a stream whose exceptions mask is set throws: the library's error instead
        out.write(reinterpret_cast<const char*>(h.data()), static_cast<std::streamsize>(h.size()));
        out.write(reinterpret_cast<const char*>(payload.data()),
                  static_cast<std::streamsize>(payload.size()));
    } catch (...) {
        file_detail::rethrow_write_error(where, "", "writing the model state");
    }
    if (!out)
        throw infinityformer::runtime_error(infinityformer::detail::concat(
            "[infinityformer] ", where,
            ": writing the model state failed (the stream's state is bad)"));
}

}  // namespace state_detail

/// Writes the state of every stream of every part of a model, in one versioned,
/// checksummed container (docs/state-format.md, "Model states"): each stream's state as
/// save_state() writes it.
/// @throws infinityformer::invalid_argument if the model has no parts, a name is empty or
///         longer than 1024 bytes, two parts share a name or an object; runtime_error if the
///         output stream fails.
template <typename Scalar>
void save_model_state(const ModelParts<Scalar>& model, std::ostream& out) {
    state_detail::write_model(out, model, "io::save_model_state");
}

/// Reads a model state written by save_model_state() into the model's parts, all or
/// nothing: the parts (their number, order, names, kinds and numbers of streams) must be
/// the saved ones, and every stream's state is read and checked (as restore_state() checks
/// it) before any is kept. `in` is left after the model state. A stream's state is restored
/// into the stream of the same index.
/// @throws infinityformer::runtime_error naming what is wrong with the input, and the part
///         and the stream for a stream's state (every part unchanged); invalid_argument on
///         a bad model (as save_model_state(), or a part made from a const object).
template <typename Scalar>
void restore_model_state(const ModelParts<Scalar>& model, std::istream& in) {
    state_detail::ModelReader<Scalar> reader{model, "io::restore_model_state", {}, {}};
    reader.read(in);
    reader.commit();
}

/// save_model_state() to a file, written as save_state_file() writes (a temporary file
/// renamed over `path`: a failed save leaves an existing file as it was).
/// @throws as save_model_state(), and runtime_error "io::save_model_state_file: '<path>': …"
///         as save_state_file().
template <typename Scalar>
void save_model_state_file(const ModelParts<Scalar>& model, const std::string& path) {
    constexpr const char* where = "io::save_model_state_file";
    state_detail::check_parts(where, model);
    state_detail::save_to_path(
        path, where, [&](std::ostream& out) { state_detail::write_model(out, model, where); });
}

/// restore_model_state() from a file that holds one model state and nothing after it.
/// @throws as restore_model_state(), and runtime_error
///         "io::restore_model_state_file: '<path>': …" as restore_state_file() (every part
///         unchanged).
template <typename Scalar>
void restore_model_state_file(const ModelParts<Scalar>& model, const std::string& path) {
    constexpr const char* where = "io::restore_model_state_file";
    const std::string name = "'" + path + "'";
    std::ifstream in = file_detail::open_for_reading(where, path, name);
    state_detail::ModelReader<Scalar> reader{model, where, {}, {}};
    state_detail::named(where, name, [&] {
        reader.read(in);
        state_detail::expect_file_end(in, where);
    });
    reader.commit();
}

}  // namespace infinityformer::io
