// The safetensors reader and writer (io/safetensors.hpp): round trips bit for bit; F16, BF16
// and F32 rounding against oracles written here (exhaustive nearest-value search, the
// float32 bit formula, the hardware's conversion); a file built byte by byte; malformed
// files refused with a message naming the problem. Module weights (io/weights.hpp) under a
// prefix (missing, extra, mis-shaped, ignored, all or nothing); a layer saved, loaded and
// run bit-identically; the tensors derived from parameters(), none left out.
#include "extern_templates.hpp"
// (first: the library's templates are declared as instantiated elsewhere)
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <infinityformer/io/safetensors.hpp>
#include <infinityformer/io/weights.hpp>
#include <limits>
#include <map>
#include <random>
#include <sstream>
#include <streambuf>
#include <string>
#include <system_error>
#include <vector>
#if defined(__unix__) || defined(__APPLE__)
#include <sys/stat.h>
#include <unistd.h>
#endif

#include "io_test_util.hpp"
#include "test_util.hpp"

namespace {

using namespace infinityformer;
using namespace testutil;
using Catch::Matchers::Contains;
using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;
using io::DType;

// ---- Oracles: written from the IEEE formats, independent of the header -------------------

// The value of binary16 bits (exponent bias 15, 10 mantissa bits).
double half_value(std::uint16_t h) {
    const int e = (h >> 10) & 31, m = h & 1023;
    const double mag = e == 0 ? m * std::pow(2.0, -24) : (1024 + m) * std::pow(2.0, e - 25);
    return (h & 0x8000) ? -mag : mag;
}

// The binary16 nearest to x (|x| < 65520), ties to the even bit pattern: binary search among
// the finite positive halves (sorted as their bits), then compare with the exact midpoint.
std::uint16_t nearest_half(double x) {
    const double a = std::abs(x);
    std::uint16_t lo = 0, hi = 0x7BFF;  // 0 and 65504
    if (a >= half_value(hi)) {
        lo = hi;
    } else {
        while (hi - lo > 1) {
            const auto mid = static_cast<std::uint16_t>((lo + hi) / 2);
            (half_value(mid) <= a ? lo : hi) = mid;
        }
    }
    std::uint16_t pick = lo;
    if (lo != 0x7BFF) {
        const double midpoint = (half_value(lo) + half_value(lo + 1)) / 2;  // exact: 12 bits
        if (a > midpoint || (a == midpoint && (lo & 1))) pick = static_cast<std::uint16_t>(lo + 1);
    }
    return static_cast<std::uint16_t>(pick | (std::signbit(x) ? 0x8000 : 0));
}

std::uint32_t float_bits(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}
float bits_float(std::uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
std::uint64_t double_bits(double d) {
    std::uint64_t u;
    std::memcpy(&u, &d, 8);
    return u;
}

// ---- Files by hand -----------------------------------------------------------------------

std::string le(std::uint64_t v, int n) {
    std::string s;
    for (int k = 0; k < n; ++k) s.push_back(static_cast<char>((v >> (8 * k)) & 0xFF));
    return s;
}

// 8-byte length, header (not padded unless asked), data.
std::string file_of(const std::string& header, const std::string& data) {
    return le(header.size(), 8) + header + data;
}

// The data section of a writer's file (after its header), and the stored values' bits.
std::string data_of(const std::string& file) {
    std::uint64_t n = 0;
    for (int k = 7; k >= 0; --k) n = (n << 8) | static_cast<unsigned char>(file[std::size_t(k)]);
    return file.substr(8 + n);
}
std::vector<std::uint16_t> words16(const std::string& data) {
    std::vector<std::uint16_t> out;
    for (std::size_t k = 0; k + 1 < data.size(); k += 2)
        out.push_back(static_cast<std::uint16_t>(static_cast<unsigned char>(data[k]) |
                                                 (static_cast<unsigned char>(data[k + 1]) << 8)));
    return out;
}

template <typename S>
std::string encoded(const std::vector<S>& v, DType t) {
    io::SafetensorsWriter w;
    w.add_values("x", v, {static_cast<std::int64_t>(v.size())}, t);
    return data_of(w.bytes());
}

#define REQUIRE_CORRUPT(bytes, fragment)                                                          \
    do {                                                                                          \
        REQUIRE_THROWS_AS(io::Safetensors::parse(bytes, "bad.st"), runtime_error);                \
        REQUIRE_THROWS_WITH(                                                                      \
            io::Safetensors::parse(bytes, "bad.st"),                                              \
            Contains("[infinityformer] io::Safetensors::parse: bad.st: ") && Contains(fragment)); \
    } while (false)

LongTermParams small_params(bool gate) {
    LongTermParams p = LongTermParams::sorting();
    p.num_basis = 8;
    p.num_samples = 4;
    p.gate = gate;
    p.seed = 3;
    // N = 8 holds too little of a chunk to be a useful memory (reach.hpp), which the
    // default policy refuses; the numerics under test do not depend on it.
    p.stability = Stability::allow;
    return p;
}

bool same_attention(const ContinuousAttentiond::Weights& a,
                    const ContinuousAttentiond::Weights& b) {
    return a.proj_key == b.proj_key && a.proj_value == b.proj_value && a.attn_out == b.attn_out &&
           a.mu == b.mu && a.sigma == b.sigma;
}
bool same_gate(const MemoryGated::Weights& a, const MemoryGated::Weights& b) {
    return a.taps[0] == b.taps[0] && a.taps[1] == b.taps[1] && a.taps[2] == b.taps[2] &&
           a.bias == b.bias;
}

// ---- File-system errors ------------------------------------------------------------------

namespace fs = std::filesystem;

// A fresh directory under the system's temporary directory, removed with what it holds.
struct Scratch {
    fs::path dir;
    explicit Scratch(const std::string& tag)
        : dir(fs::temp_directory_path() / (tag + std::to_string(std::random_device{}()))) {
        fs::remove_all(dir);
        fs::create_directories(dir);
    }
    ~Scratch() {
        std::error_code ignored;
        fs::remove_all(dir, ignored);
    }
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;
    fs::path operator/(const std::string& name) const { return dir / name; }
};

using io_test::contents;
using io_test::FailingInput;
using io_test::permissions_apply;

// Io::Safetensors::read of a stream over FailingInput<E>, with the stream's exceptions mask.
template <typename E>
io::Safetensors read_failing(const std::string& good, std::ios::iostate exceptions) {
    FailingInput<E> buffer(good);
    std::istream in(&buffer);
    in.exceptions(exceptions);
    return io::Safetensors::read(in, "src");
}

// A stream buffer that takes `room` bytes and then refuses more (a full disk).
class FullOutput : public std::streambuf {
public:
    explicit FullOutput(std::size_t room) : room_(room) {}

protected:
    int_type overflow(int_type c) override {
        if (traits_type::eq_int_type(c, traits_type::eof())) return traits_type::not_eof(c);
        if (room_ == 0) return traits_type::eof();
        --room_;
        return c;
    }

private:
    std::size_t room_;
};

// The library's runtime_error (never a std::ios_base::failure or filesystem_error).
#define REQUIRE_FILE_ERROR(expr, matcher)                                    \
    do {                                                                     \
        REQUIRE_THROWS_AS(expr, runtime_error);                              \
        REQUIRE_THROWS_WITH(expr, Contains("[infinityformer] ") && matcher); \
    } while (false)

}  // namespace

TEMPLATE_TEST_CASE("safetensors: save then load is bit-identical", "[safetensors]", float, double) {
    using M = Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic>;
    using V = Eigen::Matrix<TestType, Eigen::Dynamic, 1>;
    Normal rng(5);
    const M m = (rng.matrix(3, 5) * 1e3).cast<TestType>();
    const V v = (rng.matrix(4, 1) * 1e-3).cast<TestType>();
    // Halves and bfloat16 values (random bit patterns, finite) are exactly representable.
    std::mt19937 bits(7);
    std::vector<TestType> halves, bfloats;
    while (halves.size() < 200) {
        const auto h = static_cast<std::uint16_t>(bits());
        if (((h >> 10) & 31) != 31) halves.push_back(static_cast<TestType>(half_value(h)));
    }
    while (bfloats.size() < 200) {
        const auto b = static_cast<std::uint32_t>(bits()) & 0xFFFF0000u;
        if (((b >> 23) & 0xFF) != 0xFF) bfloats.push_back(static_cast<TestType>(bits_float(b)));
    }
    const DType own = std::is_same_v<TestType, double> ? DType::F64 : DType::F32;
    io::SafetensorsWriter w;
    w.add("m", m, own).add("v", v, own).add("m32", m.template cast<float>(), DType::F32);
    w.add_values("h", halves, {20, 10}, DType::F16).add_values("b", bfloats, {200}, DType::BF16);
    w.metadata("note", "ünïcode ✓");
    std::ostringstream os;
    w.write(os);
    REQUIRE(os.str() == w.bytes());
    const auto f = io::Safetensors::parse(os.str(), "mem");
    CHECK(f.names() == std::vector<std::string>{"b", "h", "m", "m32", "v"});
    CHECK(f.metadata().at("note") == "ünïcode ✓");
    CHECK(f.metadata().at("format") == "pt");
    CHECK(f.info("v").shape == std::vector<std::int64_t>{4});
    CHECK(f.info("m").shape == std::vector<std::int64_t>{3, 5});
    const M m2 = f.matrix<TestType>("m", 3, 5);
    CHECK(std::memcmp(m2.data(), m.data(), sizeof(TestType) * 15) == 0);
    CHECK(f.vector<TestType>("v", 4) == v);
    CHECK(f.matrix<float>("m32", 3, 5) == m.template cast<float>());
    CHECK(f.values<TestType>("h") == halves);
    CHECK(f.values<TestType>("b") == bfloats);
    // signed zeros survive
    CHECK(words16(encoded<TestType>({TestType(-0.0)}, DType::F16))[0] == 0x8000);
    CHECK(words16(encoded<TestType>({TestType(-0.0)}, DType::BF16))[0] == 0x8000);
}

TEST_CASE("safetensors: a file built by hand is read little-endian, row-major", "[safetensors]") {
    // The header's keys in an order the writer would not use; data not in name order.
    const std::string header = R"({"z":{"shape":[2],"dtype":"BF16","data_offsets":[26,30]},)"
                               R"("d":{"dtype":"F64","shape":[1,2],"data_offsets":[0,16]},)"
                               R"("h":{"dtype":"F16","shape":[3],"data_offsets":[16,22]},)"
                               R"("__metadata__":{"format":"pt","k":"v"},)"
                               R"("f":{"dtype":"F32","shape":[1],"data_offsets":[22,26]}})";
    std::string data;
    data += std::string("\x00\x00\x00\x00\x00\x00\xF8\x3F", 8);  // 1.5
    data += std::string("\x00\x00\x00\x00\x00\x00\x04\xC0", 8);  // -2.5
    data += std::string("\x00\x3C\x01\x00\xFF\xFB", 6);          // 1, 2^-24, -65504
    data += std::string("\x00\x00\x20\xC0", 4);                  // -2.5f
    data += std::string("\x80\x3F\x49\x40", 4);                  // 1, 3.140625
    const auto f = io::Safetensors::parse(file_of(header, data), "hand");
    CHECK(f.names() == std::vector<std::string>{"d", "f", "h", "z"});
    CHECK(f.metadata().size() == 2);
    CHECK(f.matrix<double>("d", 1, 2) == (MatrixXd(1, 2) << 1.5, -2.5).finished());
    CHECK(f.values<double>("h") == std::vector<double>{1.0, std::ldexp(1.0, -24), -65504.0});
    CHECK(f.values<double>("f") == std::vector<double>{-2.5});
    CHECK(f.values<float>("z") == std::vector<float>{1.0f, 3.140625f});
    CHECK(f.info("h").begin == 16);
    CHECK(f.info("h").end == 22);

    // Row-major 2-D and the [out, in, tap] layout of a Conv1d weight.
    std::string d6;
    for (int k = 0; k < 12; ++k) d6 += le(double_bits(k), 8);
    const auto g = io::Safetensors::parse(
        file_of(R"({"a":{"dtype":"F64","shape":[2,2,3],"data_offsets":[0,96]}})", d6));
    const auto taps = g.taps<double>("a", 2, 2, 3);
    for (int o = 0; o < 2; ++o)
        for (int i = 0; i < 2; ++i)
            for (int j = 0; j < 3; ++j) CHECK(taps[std::size_t(j)](o, i) == (o * 2 + i) * 3 + j);
    const auto r = io::Safetensors::parse(
        file_of(R"({"a":{"dtype":"F64","shape":[3,4],"data_offsets":[0,96]}})", d6));
    CHECK(r.matrix<double>("a", 3, 4)(1, 2) == 6.0);
    REQUIRE_INVALID(r.matrix<double>("a", 4, 3), Contains("has shape [3, 4], expected [4, 3]"));
    REQUIRE_INVALID(r.vector<double>("a", 12), Contains("expected [12]"));
    REQUIRE_INVALID(r.info("b"), Contains("no tensor 'b'"));

    // The writer's layout: length field, space padding to 8, data after the header.
    io::SafetensorsWriter w;
    w.add_values("x", std::vector<float>{1.0f, -2.5f}, {2}, DType::F32);
    const std::string b = w.bytes();
    const std::uint64_t n = static_cast<unsigned char>(b[0]) | (std::uint64_t(b[1] & 0xFF) << 8);
    CHECK(b.substr(2, 6) == std::string(6, '\0'));
    CHECK(n % 8 == 0);
    CHECK(b.size() == 8 + n + 8);
    CHECK(b.substr(8 + n) == std::string("\x00\x00\x80\x3F\x00\x00\x20\xC0", 8));
    const auto j = nlohmann::json::parse(b.substr(8, n));
    CHECK(j["x"]["dtype"] == "F32");
    CHECK(j["x"]["shape"] == nlohmann::json::array({2}));
    CHECK(j["x"]["data_offsets"] == nlohmann::json::array({0, 8}));
    CHECK(b.substr(8, n).find_last_not_of(' ') + 1 == b.substr(8, n).rfind('}') + 1);
}

TEST_CASE("safetensors: F16, BF16 and F32 round to nearest, ties to even", "[safetensors]") {
    const double u16 = std::ldexp(1.0, -10);  // F16 ulp at 1
    // Hand-chosen ties, just above ties, subnormals, the largest values.
    const std::vector<double> x = {1 + u16 / 2,
                                   1 + 3 * u16 / 2,
                                   1 + u16 / 2 + 1e-12,
                                   std::ldexp(1, -25),
                                   std::ldexp(3, -25),
                                   std::ldexp(1, -25) * 1.0001,
                                   std::ldexp(1, -26),
                                   65504.0,
                                   65519.99,
                                   -1 - u16 / 2,
                                   6.1e-5};
    const std::vector<std::uint16_t> want = {0x3C00,
                                             0x3C02,
                                             0x3C01,
                                             0x0000,
                                             0x0002,
                                             0x0001,
                                             0x0000,
                                             0x7BFF,
                                             0x7BFF,
                                             0xBC00,
                                             nearest_half(6.1e-5)};
    CHECK(words16(encoded(x, DType::F16)) == want);

    // Every midpoint between neighbouring halves (ties), and values just off them, against
    // the exhaustive nearest search.
    std::vector<double> mids;
    std::vector<std::uint16_t> expect;
    for (std::uint16_t h = 0; h < 0x7BFF; ++h) {
        const double mid = (half_value(h) + half_value(h + 1)) / 2;
        for (double v : {mid, std::nextafter(mid, 0.0), std::nextafter(mid, 1e9), -mid}) {
            mids.push_back(v);
            expect.push_back(nearest_half(v));
        }
    }
    CHECK(words16(encoded(mids, DType::F16)) == expect);
    // Midpoint ties go to even: check the oracle itself on one.
    CHECK(nearest_half((half_value(0x3C01) + half_value(0x3C02)) / 2) == 0x3C02);

    // BF16 from float: the float32 bit formula (u + 0x7FFF + ((u >> 16) & 1)) >> 16.
    std::mt19937 gen(11);
    std::vector<float> fl;
    std::vector<std::uint16_t> bf;
    for (std::uint32_t u : {0x3F808000u, 0x3F818000u, 0x3F808001u, 0x00008000u, 0x00018000u}) {
        fl.push_back(bits_float(u));
        bf.push_back(static_cast<std::uint16_t>((u + 0x7FFF + ((u >> 16) & 1)) >> 16));
    }
    CHECK(bf[0] == 0x3F80);
    CHECK(bf[1] == 0x3F82);
    while (fl.size() < 20000) {
        std::uint32_t u = static_cast<std::uint32_t>(gen());
        if (gen() % 4 == 0) u = (u & 0xFFFF0000u) | 0x8000u;  // many exact ties
        const std::uint32_t r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16;
        if (((u >> 23) & 0xFF) == 0xFF || ((r >> 7) & 0xFF) == 0xFF) continue;  // inf/NaN
        fl.push_back(bits_float(u));
        bf.push_back(static_cast<std::uint16_t>(r));
    }
    CHECK(words16(encoded(fl, DType::BF16)) == bf);
    // From a double the value itself is rounded: 1 + 2^-8 + 2^-40 is above the tie 1 + 2^-8
    // (its float rounding, 1 + 2^-8, would be a tie rounding down to 0x3F80).
    CHECK(words16(encoded<double>({1 + std::ldexp(1, -8) + std::ldexp(1, -40)}, DType::BF16))[0] ==
          0x3F81);

    // F32 from double: the hardware's conversion (round to nearest even) as the oracle.
    Normal rng(3);
    std::vector<double> d = {1 + std::ldexp(1, -24), 1 + 3 * std::ldexp(1, -24), 1e-40, 1e-46,
                             3.4028235e38};
    for (int k = 0; k < 2000; ++k) d.push_back(rng() * std::pow(10.0, rng.uniform(-40, 37)));
    const std::string bytes = encoded(d, DType::F32);
    for (std::size_t k = 0; k < d.size(); ++k) {
        std::uint32_t u = 0;
        for (int b = 3; b >= 0; --b) u = (u << 8) | static_cast<unsigned char>(bytes[4 * k + b]);
        INFO("k = " << k << ", x = " << d[k]);
        CHECK(u == float_bits(static_cast<float>(d[k])));
    }

    // Overflow after rounding, and non-finite values, are refused naming tensor and element.
    io::SafetensorsWriter w;
    REQUIRE_INVALID(w.add_values("t", std::vector<double>{1, 65520.0}, {2}, DType::F16),
                    Contains("tensor 't' element 1") && Contains("overflows F16"));
    REQUIRE_INVALID(w.add_values("t", std::vector<double>{1e39}, {1}, DType::F32),
                    Contains("overflows F32"));
    REQUIRE_INVALID(w.add_values("t", std::vector<float>{bits_float(0x7F7FFFFF)}, {1}, DType::BF16),
                    Contains("overflows BF16"));
    REQUIRE_INVALID(w.add_values("t", std::vector<double>{0, 0, kNaN}, {3}, DType::F64),
                    Contains("element 2 is nan"));
    CHECK(w.size() == 0);
    CHECK_NOTHROW(w.add_values("t", std::vector<double>{65519.99}, {1}, DType::F16));
}

TEST_CASE("safetensors: values that do not fit the Scalar are refused", "[safetensors]") {
    io::SafetensorsWriter w;
    w.add_values("big", std::vector<double>{1.0, 1e300}, {2}, DType::F64);
    const auto f = io::Safetensors::parse(w.bytes(), "w.st");
    CHECK(f.values<double>("big")[1] == 1e300);
    REQUIRE_INVALID(f.values<float>("big"),
                    Contains("w.st: tensor 'big' element 1 is 1.0000000000000001e+300") &&
                        Contains("does not fit in float"));
    const std::string hdr = R"({"n":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
    const auto n = io::Safetensors::parse(file_of(hdr, le(0, 4) + le(0x7FC00000, 4)), "nan.st");
    REQUIRE_INVALID(n.values<double>("n"), Contains("nan.st: tensor 'n' element 1 is nan"));
    const auto i = io::Safetensors::parse(
        file_of(R"({"i":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", le(1, 8)));
    CHECK(i.info("i").dtype == DType::I64);
    REQUIRE_INVALID(i.values<double>("i"), Contains("dtype I64, expected a floating dtype"));
}

TEST_CASE("safetensors: malformed files are refused with a message", "[safetensors]") {
    io::SafetensorsWriter w;
    w.add("a", MatrixXd::Constant(2, 3, 0.5), DType::F32).add("b", VectorXd::Ones(2), DType::BF16);
    const std::string good = w.bytes();
    REQUIRE_NOTHROW(io::Safetensors::parse(good));
    // Every truncation, and one byte more.
    for (std::size_t k = 0; k < good.size(); ++k) {
        INFO("truncated to " << k << " bytes");
        REQUIRE_THROWS_AS(io::Safetensors::parse(good.substr(0, k)), runtime_error);
    }
    REQUIRE_CORRUPT(good + "x", "the tensors hold 28 bytes, expected 29");
    REQUIRE_CORRUPT(std::string("1234567"), "the input has 7 bytes, expected at least 8");
    // The header length: each byte flipped.
    for (int k = 0; k < 8; ++k) {
        INFO("length byte " << k);
        std::string bad = good;
        bad[std::size_t(k)] = static_cast<char>(bad[std::size_t(k)] ^ 0x01);
        REQUIRE_THROWS_AS(io::Safetensors::parse(bad), runtime_error);
    }
    std::string huge = good;
    huge[7] = '\x7F';
    REQUIRE_CORRUPT(huge, "expected at most " + std::to_string(good.size() - 8));

    const auto t = [](const std::string& entry) { return R"({"t":)" + entry + "}"; };
    const std::string d8(8, '\0');
    REQUIRE_CORRUPT(file_of(R"({"t": )", d8), "not valid JSON");
    REQUIRE_CORRUPT(file_of("[1, 2]", d8), "the header is a JSON array, expected an object");
    REQUIRE_CORRUPT(file_of(std::string(40, '[') + std::string(40, ']'), ""), "nests deeper");
    REQUIRE_CORRUPT(file_of(t("3"), d8), "tensor 't' is a JSON number, expected an object");
    REQUIRE_CORRUPT(file_of(t(R"({"dtype":"F128","shape":[2],"data_offsets":[0,8]})"), d8),
                    "tensor 't' has dtype 'F128'");
    REQUIRE_CORRUPT(file_of(t(R"({"dtype":3,"shape":[2],"data_offsets":[0,8]})"), d8),
                    "no string field 'dtype'");
    REQUIRE_CORRUPT(file_of(t(R"({"dtype":"F32","shape":2,"data_offsets":[0,8]})"), d8),
                    "no array field 'shape'");
    for (const char* s : {"[-1]", "[1.5]", R"(["2"])", "[1e30]", "[null]"})
        REQUIRE_CORRUPT(
            file_of(t(std::string(R"({"dtype":"F32","shape":)") + s + R"(,"data_offsets":[0,8]})"),
                    d8),
            "has shape entry");
    REQUIRE_CORRUPT(
        file_of(t(R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]})"), d8),
        "element count overflows");
    REQUIRE_CORRUPT(
        file_of(t(R"({"dtype":"F64","shape":[4294967296,536870912],"data_offsets":[0,8]})"), d8),
        "byte count overflows");
    REQUIRE_CORRUPT(file_of(t(R"({"dtype":"F32","shape":[2],"data_offsets":[0]})"), d8),
                    "has data_offsets [0], expected [begin, end]");
    REQUIRE_CORRUPT(file_of(t(R"({"dtype":"F32","shape":[2],"data_offsets":[-8,0]})"), d8),
                    "expected [begin, end] with integers >= 0");
    REQUIRE_CORRUPT(file_of(t(R"({"dtype":"F32","shape":[0],"data_offsets":[8,0]})"), d8),
                    "expected begin <= end");
    REQUIRE_CORRUPT(file_of(t(R"({"dtype":"F32","shape":[2],"data_offsets":[8,16]})"), d8),
                    "expected end <= 8 (the data section's size)");
    REQUIRE_CORRUPT(file_of(t(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})"), d8),
                    "has 8 bytes (data_offsets [0, 8]), expected 12 for F32 of shape [3]");
    REQUIRE_CORRUPT(file_of(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                            R"("b":{"dtype":"F16","shape":[2],"data_offsets":[4,8]}})",
                            d8),
                    "tensors 'a' [0, 8) and 'b' [4, 8) overlap");
    REQUIRE_CORRUPT(file_of(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                            R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                            d8),
                    "the key 'a' more than once");
    REQUIRE_CORRUPT(file_of(R"({"__metadata__":{"k":1}})", ""),
                    "__metadata__ entry 'k' is a JSON number, expected a string");
    REQUIRE_CORRUPT(file_of(R"({"__metadata__":[]})", ""), "__metadata__ is a JSON array");
    REQUIRE_CORRUPT(file_of(t(R"({"dtype":"F32","shape":[1],"data_offsets":[0,4]})"), d8),
                    "the tensors hold 4 bytes, expected 8");
    REQUIRE_CORRUPT(file_of("{\"\xff\":1}", ""), "not valid JSON");  // not UTF-8
    // An empty file with only metadata, and empty tensors, are valid.
    CHECK(io::Safetensors::parse(file_of(R"({"__metadata__":{}})", "")).size() == 0);
    CHECK(io::Safetensors::parse(
              file_of(t(R"({"dtype":"F32","shape":[0,5],"data_offsets":[0,0]})"), ""))
              .values<double>("t")
              .empty());
    // Files and streams.
    REQUIRE_FILE_ERROR(io::Safetensors::load("/nonexistent/x.safetensors"),
                       Contains("/nonexistent/x.safetensors: cannot open"));
    std::istringstream in(good);
    CHECK(io::Safetensors::read(in, "s").names() == std::vector<std::string>{"a", "b"});
}

TEST_CASE("safetensors: LongTermAttention weights under a prefix", "[safetensors]") {
    const Index e = 6, heads = 2, len = 4;
    LongTermAttentiond src(e, heads, len, small_params(true));
    Normal rng(21);
    src.set_attention_weights(
        random_attention_weights<ContinuousAttentiond::Weights>(e, e, 8, rng));
    io::SafetensorsWriter w;
    io::save_weights(src, w, "m.0.", DType::F64);
    w.add("other.weight", MatrixXd::Ones(3, 2), DType::F32);  // outside the prefix
    const auto f = io::Safetensors::parse(w.bytes(), "ltm.st");

    LongTermAttentiond dst(e, heads, len, [] {
        auto p = small_params(true);
        p.seed = 99;
        return p;
    }());
    REQUIRE_FALSE(same_attention(dst.attention().weights(), src.attention().weights()));
    io::load_weights(dst, f, "m.0.");
    CHECK(same_attention(dst.attention().weights(), src.attention().weights()));
    CHECK(same_gate(dst.gate().weights(), src.gate().weights()));
    // element [o, i, j] of mask_net.weight is taps[j](o, i)
    const auto flat = f.values<double>("m.0.mask_net.weight");
    CHECK(flat[std::size_t((2 * e + 5) * 3 + 1)] == src.gate().weights().taps[1](2, 5));

    const auto report = io::describe(f, dst, "m.0.");
    CHECK(report.loadable());
    CHECK(report.missing.empty());
    for (const auto& u : report.names) {
        INFO(u.name);
        const auto want = u.name == "other.weight"            ? io::NameStatus::ignored
                          : u.name == "m.0.proj_query.weight" ? io::NameStatus::unused
                                                              : io::NameStatus::taken;
        CHECK(u.status == want);
    }

    // Build variants of the file: drop, add or reshape one tensor.
    const auto variant = [&](const std::string& drop, const std::string& add,
                             std::vector<std::int64_t> shape) {
        io::SafetensorsWriter v;
        for (const auto& n : f.names()) {
            if (n == drop) continue;
            const auto vals = f.values<double>(n);
            v.add_values(n, vals, f.info(n).shape, DType::F64);
        }
        if (!add.empty()) {
            std::int64_t k = 1;
            for (auto s : shape) k *= s;
            v.add_values(add, std::vector<double>(std::size_t(k), 1e300), shape, DType::F64);
        }
        return io::Safetensors::parse(v.bytes(), "ltm.st");
    };
    // Other weights in dst, so that a partial load would show.
    dst.set_attention_weights(
        random_attention_weights<ContinuousAttentiond::Weights>(e, e, 8, rng));
    const LongTermAttentiond before = dst;
    const auto unchanged = [&] {
        CHECK(same_attention(dst.attention().weights(), before.attention().weights()));
        CHECK(same_gate(dst.gate().weights(), before.gate().weights()));
    };
    REQUIRE_INVALID(io::load_weights(dst, variant("m.0.mu.weight", "", {}), "m.0."),
                    Contains("io::load_weights: ltm.st, prefix 'm.0.'") &&
                        Contains("missing tensor 'm.0.mu.weight' (expected shape [1, 8])"));
    unchanged();
    REQUIRE_INVALID(io::load_weights(dst, variant("", "m.0.extra.weight", {2}), "m.0."),
                    Contains("extra tensor 'm.0.extra.weight' [2]"));
    unchanged();
    REQUIRE_INVALID(io::load_weights(
                        dst, variant("m.0.proj_key.weight", "m.0.proj_key.weight", {6, 5}), "m.0."),
                    Contains("tensor 'm.0.proj_key.weight' has shape [6, 5], expected [6, 6]"));
    unchanged();
    REQUIRE_INVALID(
        io::load_weights(dst, variant("m.0.proj_query.weight", "m.0.proj_query.weight", {6, 7}),
                         "m.0."),
        Contains("'m.0.proj_query.weight' has shape [6, 7], expected [6, 6]"));
    unchanged();
    // Shapes right, a value that does not fit: float module, 1e300 in the gate's bias (the
    // last tensor converted): nothing set.
    {
        LongTermAttentionf fm(e, heads, len, small_params(true));
        const auto attn = fm.attention().weights();
        const auto gate = fm.gate().weights();
        REQUIRE_INVALID(
            io::load_weights(fm, variant("m.0.mask_net.bias", "m.0.mask_net.bias", {6}), "m.0."),
            Contains("io::load_weights: ltm.st: tensor 'm.0.mask_net.bias' element 0 is "
                     "1.0000000000000001e+300"));
        CHECK(fm.attention().weights().proj_key == attn.proj_key);
        CHECK(fm.gate().weights().bias == gate.bias);
    }
    // proj_query is optional; the prefix must match exactly (m.1. holds nothing).
    CHECK_NOTHROW(io::load_weights(dst, variant("m.0.proj_query.weight", "", {}), "m.0."));
    REQUIRE_INVALID(io::load_weights(dst, f, "m.1."),
                    Contains("missing tensor 'm.1.proj_key.weight'"));
    // A module without a gate: the gate's tensors are extra.
    LongTermAttentiond nogate(e, heads, len, small_params(false));
    REQUIRE_INVALID(io::load_weights(nogate, f, "m.0."),
                    Contains("extra tensor 'm.0.mask_net.bias'") &&
                        Contains("extra tensor 'm.0.mask_net.weight'") &&
                        Contains("params.gate = true"));
    // Writing twice under one prefix is refused and leaves the writer as it was.
    REQUIRE_INVALID(io::save_weights(src, w, "m.0."), Contains("already in the writer"));
    CHECK(w.size() == 9);
}

TEST_CASE("safetensors: a layer saved and loaded runs bit-identically", "[safetensors]") {
    const Index d = 6, heads = 2, len = 4;
    InfinityFormerLayerd a(d, heads, len, small_params(true));
    Normal rng(8);
    a.set_short_term_weights(
        random_short_term_weights<InfinityFormerLayerd::ShortTermWeights>(d, rng));
    io::SafetensorsWriter w;
    io::save_weights(a, w, "layer.", DType::F64);
    // The layer's parameter names (the gate's split by tap) are the file's names.
    for (const auto& p : a.parameters()) {
        std::string n = p.name;
        if (n.rfind("long_term.mask_net.weight.", 0) == 0) n = "long_term.mask_net.weight";
        CHECK(w.has("layer." + n));
    }
    const auto path = std::filesystem::temp_directory_path() /
                      ("infinityformer_st_" + std::to_string(std::random_device{}()));
    w.save(path);
    const auto f = io::Safetensors::load(path);
    CHECK(f.metadata().count("layer.infinityformer") == 1);
    InfinityFormerLayerd b(d, heads, len, small_params(true));  // the same sampling seed
    b.set_long_term_weights(random_attention_weights<ContinuousAttentiond::Weights>(d, d, 8, rng));
    b.set_short_term_weights(
        random_short_term_weights<InfinityFormerLayerd::ShortTermWeights>(d, rng));
    REQUIRE_FALSE(b.short_term_weights().query == a.short_term_weights().query);
    io::load_weights(b, f, "layer.");
    CHECK(same_attention(b.long_term().attention().weights(), a.long_term().attention().weights()));
    CHECK(same_gate(b.long_term().gate().weights(), a.long_term().gate().weights()));
    for (int c = 0; c < 4; ++c) {
        const MatrixXd x = rng.matrix(len, d);
        const MatrixXd ya = a.forward(x), yb = b.forward(x);
        CHECK(std::memcmp(ya.data(), yb.data(), sizeof(double) * std::size_t(ya.size())) == 0);
    }
    // A failed save (the temporary file cannot be created) leaves the old file.
    std::filesystem::create_directory(path.string() + ".tmp");
    io::SafetensorsWriter other;
    other.add("x", VectorXd::Ones(1), DType::F64);
    REQUIRE_THROWS_AS(other.save(path), runtime_error);
    CHECK(io::Safetensors::load(path).size() == f.size());
    std::filesystem::remove_all(path.string() + ".tmp");
    std::filesystem::remove(path);

    // float, stored as F32: the same, and a layer of another width is refused by name.
    InfinityFormerLayerf fa(d, heads, len, small_params(true)),
        fb(d, heads, len, small_params(true));
    InfinityFormerLayerd wide(8, heads, len, small_params(true));
    fb.init_short_term_weights(5);
    REQUIRE_FALSE(fb.short_term_weights().query == fa.short_term_weights().query);
    io::SafetensorsWriter wf;
    io::save_weights(fa, wf, "", DType::F32);
    io::load_weights(fb, io::Safetensors::parse(wf.bytes()), "");
    // Without a dtype, each Scalar is saved as itself: float as F32, double as F64.
    io::SafetensorsWriter by_default_f, by_default_d;
    io::save_weights(fa, by_default_f);
    io::save_weights(wide, by_default_d);
    const auto ff = io::Safetensors::parse(by_default_f.bytes());
    const auto fd = io::Safetensors::parse(by_default_d.bytes());
    CHECK(ff.info("short_term.query.weight").dtype == DType::F32);
    CHECK(ff.info("long_term.mu.weight").dtype == DType::F32);
    CHECK(fd.info("short_term.query.weight").dtype == DType::F64);
    CHECK(by_default_f.bytes() == wf.bytes());
    const Eigen::MatrixXf x = rng.matrix(len, d).cast<float>();
    CHECK(fa.forward(x) == fb.forward(x));
    REQUIRE_INVALID(io::load_weights(wide, f, "layer."),
                    Contains("'layer.short_term.query.weight' has shape [6, 6], expected [8, 8]"));
}

namespace {

// The tensors of module m (tensors_of(m), from its sizes) are those of its parameters() by
// the rule of io/weights.hpp: every parameter lies in a used tensor of its shape, every
// element of a used tensor belongs to one parameter, and the only tensor without a
// parameter is the unused proj_query.weight. Then every parameter, set to distinct values
// through its view, comes back bit for bit through a file.
template <typename Module, typename Save, typename Load>
void check_tensors_of_parameters(Module& m, Module& fresh, const Save& save, const Load& load) {
    const auto spec = io::tensors_of(m);
    auto params = m.parameters();
    const auto derived = io::tensors_of(params);
    REQUIRE(derived.size() == spec.size());
    for (std::size_t k = 0; k < spec.size(); ++k) {
        INFO(spec[k].name);
        CHECK(derived[k].name == spec[k].name);
        CHECK(derived[k].shape == spec[k].shape);
        CHECK(derived[k].used == spec[k].used);
    }
    std::map<std::string, std::int64_t> covered;
    for (const auto& p : params) {
        INFO(p.name);
        const io::Placement at = io::placement_of(p.name);
        const auto it = std::find_if(spec.begin(), spec.end(),
                                     [&](const io::TensorSpec& t) { return t.name == at.tensor; });
        REQUIRE(it != spec.end());
        CHECK(it->used);
        std::vector<std::int64_t> want{p.rows, p.cols};
        if (at.layout == io::Layout::vector) want = {p.rows};
        if (at.layout == io::Layout::transposed) want = {p.cols, p.rows};
        if (at.layout == io::Layout::tap) want.push_back(it->shape.size() == 3 ? it->shape[2] : 0);
        CHECK(it->shape == want);
        covered[at.tensor] += p.size();
    }
    std::size_t unused = 0;
    for (const auto& t : spec) {
        INFO(t.name);
        std::int64_t n = 1;
        for (const auto d : t.shape) n *= d;
        if (!t.used) {
            ++unused;
            CHECK(t.name.size() >= 17);
            CHECK(t.name.compare(t.name.size() - 17, 17, "proj_query.weight") == 0);
            CHECK(covered.count(t.name) == 0);
        } else {
            CHECK(covered[t.name] == n);
        }
    }
    CHECK(unused == 1);

    double next = 0.25;
    for (auto& p : params)
        for (Index k = 0; k < p.size(); ++k) p.value[k] = (next += 0.125);
    io::SafetensorsWriter w;
    save(m, w);
    load(fresh, io::Safetensors::parse(w.bytes()));
    const auto mine = m.parameters(), theirs = fresh.parameters();
    REQUIRE(mine.size() == theirs.size());
    for (std::size_t k = 0; k < mine.size(); ++k) {
        INFO(mine[k].name);
        CHECK(mine[k].name == theirs[k].name);
        CHECK(mine[k].values() == theirs[k].values());
    }
}

}  // namespace

TEST_CASE("safetensors: the tensors are the parameters(), none left out", "[safetensors]") {
    for (const bool gate : {false, true}) {
        INFO("gate " << gate);
        auto other = small_params(gate);
        other.seed = 77;
        LongTermAttentiond a(6, 2, 4, small_params(gate), 10), a2(6, 2, 4, other, 10);
        check_tensors_of_parameters(
            a, a2, [](const auto& m, auto& w) { io::save_weights(m, w, "p."); },
            [](auto& m, const auto& f) { io::load_weights(m, f, "p."); });
        InfinityFormerLayerd l(6, 2, 4, small_params(gate)), l2(6, 2, 4, other);
        check_tensors_of_parameters(
            l, l2, [](const auto& m, auto& w) { io::save_weights(m, w); },
            [](auto& m, const auto& f) { io::load_weights(m, f); });
    }
}

TEST_CASE("safetensors: every file error is a runtime_error naming the file", "[safetensors]") {
    Scratch tmp("infinityformer_st_io_");
    io::SafetensorsWriter w;
    w.add("x", VectorXd::Ones(3), DType::F64);
    const std::string bytes = w.bytes();
    const fs::path good = tmp / "good.safetensors", dir = tmp / "dir";
    w.save(good);
    fs::create_directory(dir);
    REQUIRE((contents(good) == bytes));
    REQUIRE_FALSE(fs::exists(good.string() + ".tmp"));

    // Reading a directory, a missing file, a file in a missing directory or under a file.
    const std::string load = "[infinityformer] io::Safetensors::load: ";
    REQUIRE_FILE_ERROR(io::Safetensors::load(dir),
                       Contains(load + dir.string() + ": cannot open the file: it is a directory"));
    for (const fs::path& missing : {tmp / "missing.safetensors", tmp / "no" / "x.safetensors"}) {
        INFO(missing);
        REQUIRE_FILE_ERROR(io::Safetensors::load(missing),
                           Contains(load + missing.string() + ": cannot open the file: "));
    }
    REQUIRE_FILE_ERROR(io::Safetensors::load(tmp / "missing.safetensors"),
                       Contains("it does not exist"));
    REQUIRE_FILE_ERROR(io::Safetensors::load(good / "x"),
                       Contains(load + (good / "x").string() + ": cannot open the file: "));
    REQUIRE_FILE_ERROR(io::Safetensors::load(""), Contains(load + "the path is empty"));
    // A truncated file: the parser names it.
    const fs::path cut = tmp / "cut.safetensors";
    {
        std::ofstream out(cut, std::ios::binary);
        out << bytes.substr(0, bytes.size() - 1);
    }
    REQUIRE_FILE_ERROR(io::Safetensors::load(cut),
                       Contains("io::Safetensors::parse: " + cut.string() + ": "));
    // A file that opens but cannot be read (reading /proc/self/mem at offset 0 fails: EIO).
    if (fs::exists("/proc/self/mem"))
        REQUIRE_FILE_ERROR(io::Safetensors::load("/proc/self/mem"),
                           Contains(load + "/proc/self/mem: reading failed: "));
    if (permissions_apply()) {
        const fs::path locked = tmp / "locked.safetensors";
        w.save(locked);
        fs::permissions(locked, fs::perms::none);
        REQUIRE_FILE_ERROR(io::Safetensors::load(locked),
                           Contains(load + locked.string() + ": cannot open the file: "));
        fs::permissions(locked, fs::perms::owner_all);
    }

    // Streams: a buffer that throws (whatever the exceptions mask), a failed stream.
    const std::string read = "[infinityformer] io::Safetensors::read: src: ";
    REQUIRE_FILE_ERROR(read_failing<std::ios_base::failure>(bytes.substr(0, 10), std::ios::goodbit),
                       Contains(read + "reading failed: the device failed"));
    REQUIRE_FILE_ERROR(
        read_failing<std::runtime_error>(bytes.substr(0, 10), std::ios::badbit | std::ios::failbit),
        Contains(read + "reading failed: the device failed"));
    {
        std::istringstream in(bytes);
        in.setstate(std::ios::failbit);
        REQUIRE_FILE_ERROR(io::Safetensors::read(in, "src"),
                           Contains(read + "the stream is in a failed state"));
    }
    {
        std::istringstream in(bytes);
        in.exceptions(std::ios::badbit | std::ios::failbit);  // reading to the end is no failure
        CHECK(io::Safetensors::read(in, "src").names() == std::vector<std::string>{"x"});
    }
    for (std::ios::iostate mask : {std::ios::goodbit, std::ios::badbit}) {
        FullOutput full(5);
        std::ostream out(&full);
        out.exceptions(mask);
        REQUIRE_FILE_ERROR(w.write(out), Contains("io::SafetensorsWriter::write: writing failed"));
    }

    // Writing: onto a directory, into a missing directory or under a file, an empty path; the
    // temporary file cannot be created. Nothing is left behind and the old file is intact.
    io::SafetensorsWriter other;
    other.add("y", VectorXd::Zero(2), DType::F32);
    const std::string save = "[infinityformer] io::SafetensorsWriter::save: ";
    REQUIRE_FILE_ERROR(other.save(dir), Contains(save + dir.string() +
                                                 ": cannot write the file: it is a directory"));
    CHECK(fs::is_directory(dir));
    CHECK_FALSE(fs::exists(dir.string() + ".tmp"));
    REQUIRE_FILE_ERROR(other.save(tmp / "no" / "x.safetensors"),
                       Contains(save + (tmp / "no" / "x.safetensors").string() +
                                ": cannot write the file: the directory '" + (tmp / "no").string() +
                                "' does not exist"));
    CHECK_FALSE(fs::exists(tmp / "no"));
    REQUIRE_FILE_ERROR(
        other.save(good / "x.safetensors"),
        Contains(save + (good / "x.safetensors").string() + ": cannot write the file: '" +
                 good.string() + "' is not a directory"));
    const bool had_tmp = fs::exists(".tmp");
    REQUIRE_FILE_ERROR(other.save(""), Contains(save + "the path is empty"));
    CHECK(fs::exists(".tmp") == had_tmp);
    fs::create_directory(good.string() + ".tmp");
    REQUIRE_FILE_ERROR(other.save(good),
                       Contains(save + good.string() + ": cannot create the temporary file '" +
                                good.string() + ".tmp': it is a directory"));
    CHECK(fs::is_directory(good.string() + ".tmp"));  // not ours: left alone
    CHECK((contents(good) == bytes));
    fs::remove(good.string() + ".tmp");
#if defined(__unix__) || defined(__APPLE__)
    const fs::path fifo = tmp / "fifo";
    REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
    REQUIRE_FILE_ERROR(other.save(fifo), Contains(save + fifo.string() +
                                                  ": cannot write the file: it exists and is "
                                                  "not a regular file"));
    CHECK(fs::is_fifo(fifo));
    CHECK_FALSE(fs::exists(fifo.string() + ".tmp"));
#endif
    if (permissions_apply()) {
        const fs::path ro = tmp / "ro";
        fs::create_directory(ro);
        fs::permissions(ro, fs::perms::owner_read | fs::perms::owner_exec);
        REQUIRE_FILE_ERROR(other.save(ro / "x.safetensors"),
                           Contains(save + (ro / "x.safetensors").string() +
                                    ": cannot create the temporary file '"));
        fs::permissions(ro, fs::perms::owner_all);
        CHECK(fs::is_empty(ro));
    }
    // A save that works replaces the file and leaves no temporary file.
    other.save(good);
    CHECK((contents(good) == other.bytes()));
    CHECK_FALSE(fs::exists(good.string() + ".tmp"));
}
