// Saved stream states (io/state.hpp): a stream restored from its state continues bit for
// bit as the stream that never stopped (outputs, input gradients, weight gradients, the
// whole stream state), for the layer, the long-term attention and the memory, float and
// double, uniform and sticky, from the first chunks and mid-stream; every truncated,
// damaged, foreign or newer state is refused with its own message and the object is left as
// a twin that never saw the call; the header's layout is checked byte by byte against
// docs/state-format.md.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <zlib.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <infinityformer/io/state.hpp>
#include <random>
#include <sstream>
#include <stdexcept>
#include <streambuf>
#include <string>
#include <system_error>
#include <vector>
#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

#include "extern_templates.hpp"
#include "io_test_util.hpp"
#include "test_util.hpp"

namespace {

using namespace infinityformer;
using testutil::has;
using testutil::Normal;

LongTermParams small_params(Sampling sampling) {
    LongTermParams p = sampling == Sampling::sticky ? LongTermParams::lm() : LongTermParams{};
    p.num_basis = 8;
    p.num_samples = 6;
    p.num_bins = 8;
    p.sampling = sampling;
    p.seed = 11;
    // N = 8 holds too little of a chunk to be a useful memory (reach.hpp), which the
    // default policy refuses; the numerics under test do not depend on it.
    p.stability = Stability::allow;
    return p;
}

constexpr Eigen::Index kD = 6, kHeads = 2, kL = 4;

template <typename S>
using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;

// One chunk on a layer: forward, and a backward with dY; returns Y, dX and the gradients.
template <typename S>
std::vector<Mat<S>> train_chunk(InfinityFormerLayer<S>& layer, const Mat<S>& x, const Mat<S>& dy) {
    std::vector<Mat<S>> out;
    out.push_back(layer.forward(x));
    Mat<S> dx(kL, kD);
    layer.zero_grad();
    layer.backward(dy, S(0.01), dx);
    out.push_back(dx);
    for (auto& p : layer.parameters()) out.push_back(p.gradient());
    return out;
}

template <typename S>
std::string saved(const InfinityFormerLayer<S>& layer) {
    std::ostringstream out;
    io::save_state(layer, out);
    return out.str();
}

template <typename Object>
void restore_from(Object& object, const std::string& bytes) {
    std::istringstream in(bytes);
    io::restore_state(object, in);
}

template <typename S>
void check_layer_continuation(Sampling sampling, int stop_after, bool via_file) {
    const auto p = small_params(sampling);
    InfinityFormerLayer<S> a(kD, kHeads, kL, p), b(kD, kHeads, kL, p);
    Normal rng(100 + static_cast<std::uint64_t>(stop_after));
    auto chunk = [&rng] { return Mat<S>(rng.matrix(kL, kD).template cast<S>()); };
    for (int c = 0; c < stop_after; ++c) train_chunk(a, chunk(), chunk());
    for (int c = 0; c < 3; ++c) b.forward(chunk());  // b holds another stream before
    if (via_file) {
        const std::string path = "infinityformer_test_state.bin";
        io::save_state_file(a, path);
        io::restore_state_file(b, path);
        std::remove(path.c_str());
    } else {
        restore_from(b, saved(a));
    }
    CHECK(b.stream_state().long_term.memory.state().rng.engine() ==
          a.stream_state().long_term.memory.state().rng.engine());
    for (int c = 0; c < 4; ++c) {
        const Mat<S> x = chunk(), dy = chunk();
        const auto ra = train_chunk(a, x, dy), rb = train_chunk(b, x, dy);
        REQUIRE(ra.size() == rb.size());
        for (std::size_t k = 0; k < ra.size(); ++k) {
            INFO("chunk " << c << " after the restore, result " << k);
            REQUIRE(detail::same_values(ra[k], rb[k]));  // bit for bit
        }
    }
    CHECK(a.stream_state() == b.stream_state());  // every field a later call reads
}

// A valid state's checksums recomputed after an edit (to build newer or malformed states).
void reseal(std::string& s) {
    auto u32_at = [&s](std::size_t at) {
        std::uint32_t v = 0;
        for (int k = 0; k < 4; ++k)
            v |= std::uint32_t(static_cast<unsigned char>(s[at + std::size_t(k)])) << (8 * k);
        return v;
    };
    auto put_u32 = [&s](std::size_t at, std::uint32_t v) {
        for (int k = 0; k < 4; ++k) s[at + std::size_t(k)] = static_cast<char>(v >> (8 * k));
    };
    auto crc = [&s](std::size_t begin, std::size_t end) {
        return std::uint32_t(crc32(0L, reinterpret_cast<const Bytef*>(s.data() + begin),
                                   static_cast<uInt>(end - begin)));
    };
    put_u32(16, crc(0, 16));
    const std::size_t h = u32_at(12);
    put_u32(h - 8, crc(h, s.size()));
    put_u32(h - 4, crc(0, h - 4));
}

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
    std::string operator/(const std::string& name) const { return (dir / name).string(); }
};

using io_test::contents;
using io_test::FailingInput;
using io_test::permissions_apply;

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

std::uint64_t le(const std::string& s, std::size_t at, int n) {
    std::uint64_t v = 0;
    for (int k = 0; k < n; ++k)
        v |= std::uint64_t(static_cast<unsigned char>(s[at + std::size_t(k)])) << (8 * k);
    return v;
}

}  // namespace

TEST_CASE("state: a restored layer stream continues bit for bit", "[state]") {
    for (auto sampling : {Sampling::uniform, Sampling::sticky})
        for (int stop : {0, 1, 2, 5}) {
            INFO(to_string(sampling) << ", saved after " << stop << " chunks");
            check_layer_continuation<double>(sampling, stop, false);
            check_layer_continuation<float>(sampling, stop, stop == 2);
        }
}

TEST_CASE("state: restored long-term attention and memory streams continue bit for bit",
          "[state]") {
    const auto p = small_params(Sampling::sticky);  // gate on
    Normal rng(7);
    LongTermAttention<double> a(kD, kHeads, kL, p), b(kD, kHeads, kL, p);
    a.set_num_streams(2);
    b.set_num_streams(2);
    for (int c = 0; c < 3; ++c) a.forward(rng.matrix(kL, kD), rng.matrix(3, kD), 1);
    a.update(rng.matrix(kL, kD), 1);  // saved between an update() and its attend()
    std::stringstream ss;
    io::save_state(a, ss, 1);
    io::restore_state(b, ss, 0);
    const Eigen::MatrixXd q = rng.matrix(3, kD), dout = rng.matrix(3, kD);
    const Eigen::MatrixXd ya = a.attend(q, 1), yb = b.attend(q, 0);
    CHECK(detail::same_values(ya, yb));
    Eigen::MatrixXd dqa(3, kD), dqb(3, kD), dxa(kL, kD), dxb(kL, kD);
    a.backward(dout, 0.02, dqa, dxa, 1);
    b.backward(dout, 0.02, dqb, dxb, 0);
    CHECK(detail::same_values(dqa, dqb));
    CHECK(detail::same_values(dxa, dxb));  // through the fit and the gate of the saved update
    CHECK(detail::same_values(a.gate().gradients().bias, b.gate().gradients().bias));
    const Eigen::MatrixXd x = rng.matrix(kL, kD);
    CHECK(detail::same_values(a.forward(x, q, 1), b.forward(x, q, 0)));

    LongTermMemory<float> m(kD, kL, p), n(kD, kL, p, 3);
    for (int c = 0; c < 4; ++c) {
        m.update(rng.matrix(kL, kD).cast<float>());
        m.observe(Eigen::VectorXf::Constant(4, 0.3f), Eigen::VectorXf::Constant(4, 0.01f));
    }
    std::stringstream ms;
    io::save_state(m, ms);
    io::restore_state(n, ms);
    CHECK(n.stream_index() == 3);  // the stream index is the object's own
    CHECK(n.seed_base() == m.seed_base());
    for (int c = 0; c < 3; ++c) {
        const Eigen::MatrixXf xf = rng.matrix(kL, kD).cast<float>();
        m.update(xf);
        n.update(xf);
        REQUIRE(detail::same_values(m.coefficients(), n.coefficients()));
    }
    CHECK(m.state() == n.state());
}

TEST_CASE("state: the header is laid out as docs/state-format.md says", "[state]") {
    auto p = small_params(Sampling::sticky);
    InfinityFormerLayer<float> layer(kD, kHeads, kL, p);
    Normal rng(3);
    for (int c = 0; c < 3; ++c) layer.forward(rng.matrix(kL, kD).cast<float>());
    const std::string s = saved(layer);
    const unsigned char magic[8] = {0x89, 'I', 'F', 'S', 0x0D, 0x0A, 0x1A, 0x0A};
    for (std::size_t i = 0; i < 8; ++i) CHECK(static_cast<unsigned char>(s[i]) == magic[i]);
    CHECK(le(s, 8, 4) == 1);             // format version
    const std::size_t h = le(s, 12, 4);  // header length
    CHECK(h == 136 + 8 * p.widths.size());
    CHECK(le(s, 20, 1) == 3);                  // an InfinityFormerLayer
    CHECK(le(s, 21, 1) == 4);                  // float
    CHECK(le(s, 32, 8) == std::uint64_t(kD));  // dim
    CHECK(le(s, 40, 8) == std::uint64_t(kL));  // chunk_length
    CHECK(le(s, 48, 8) == std::uint64_t(kHeads));
    CHECK(le(s, 64, 8) == std::uint64_t(p.num_basis));
    CHECK(le(s, 104, 1) == 1);  // sticky
    CHECK(le(s, 106, 1) == 1);  // gate
    CHECK(le(s, 116, 4) == p.widths.size());
    CHECK(le(s, h - 16, 8) == s.size() - h);  // payload length
    // Payload: the window's two chunks (rows, then the values), then the memory.
    CHECK(le(s, h, 8) == std::uint64_t(kL));
    const std::size_t mem = h + 2 * (8 + 4 * kL * kD);
    CHECK(le(s, mem + 8, 8) == std::uint64_t(kL));  // tokens stored (chunk 0)
    // seed base, tokens, rescaled (8 bytes each), peak (a float), empty, generator position
    CHECK(le(s, mem + 29, 2) ==
          layer.stream_state().long_term.memory.state().rng.engine().position());
    const std::size_t n_obs_at = mem + 31 + 312 * 8;
    CHECK(le(s, n_obs_at, 8) == std::uint64_t(kHeads * kL));
    const std::size_t points_at = n_obs_at + 8 + 2 * 4 * kHeads * kL;
    CHECK(le(s, points_at, 8) == 0);  // the last update was a first chunk: no points
    CHECK(s.size() == points_at + 8 + 4 * p.num_basis * kD + 1);
}

TEST_CASE("state: a truncated, damaged, foreign or newer state is refused, the stream unchanged",
          "[state][twin]") {
    const auto p = small_params(Sampling::sticky);
    Normal rng(5);
    InfinityFormerLayer<double> a(kD, kHeads, kL, p), b(kD, kHeads, kL, p);
    for (int c = 0; c < 4; ++c) a.forward(rng.matrix(kL, kD));
    for (int c = 0; c < 3; ++c) b.forward(rng.matrix(kL, kD));
    const auto before = b.stream_state();
    const std::string good = saved(a);
    auto refused = [&](const std::string& bytes, const std::string& says) {
        INFO(says);
        CHECK_THROWS_WITH(restore_from(b, bytes), has(says));
        CHECK_THROWS_AS(restore_from(b, bytes), infinityformer::runtime_error);
        REQUIRE(b.stream_state() == before);
    };
    for (std::size_t n = 0; n < good.size(); ++n) refused(good.substr(0, n), "truncated");
    for (std::size_t i = 0; i < good.size(); ++i)
        for (unsigned flip : {0x01u, 0x80u}) {
            std::string bad = good;
            bad[i] = static_cast<char>(static_cast<unsigned char>(bad[i]) ^ flip);
            refused(bad, "damaged");
        }
    refused("hello, world: not a state at all", "not an infinityformer state");

    std::string newer = good;
    newer[8] = 2;
    reseal(newer);
    refused(newer, "format version 2, newer than this build reads (up to 1)");

    InfinityFormerLayer<float> f(kD, kHeads, kL, p);
    f.forward(rng.matrix(kL, kD).cast<float>());
    refused(saved(f), "saved from a float object, this object is double");

    auto other = [&](LongTermParams q) {
        InfinityFormerLayer<double> o(kD, kHeads, kL, q);
        o.forward(rng.matrix(kL, kD));
        return saved(o);
    };
    auto q = p;
    q.num_basis = 10;
    refused(other(q), "another configuration: num_basis is 10 in the state, 8 in this object");
    q = p;
    q.tau = 0.6;
    refused(other(q), "another configuration: tau is 0.59999999999999998 in the state");
    q = p;
    q.gate = false;
    refused(other(q), "gate is 0 in the state, 1 in this object");
    q = p;
    q.widths = {0.005, 0.02};
    refused(other(q), "widths[1] is 0.02 in the state");
    q = p;
    q.seed = 99;  // the seed and the attention's settings do not change what a state means
    q.sigma_sq_min = 1e-3;
    {
        InfinityFormerLayer<double> o(kD, kHeads, kL, q);
        CHECK_NOTHROW(restore_from(o, good));
    }

    LongTermMemory<double> memory(kD, kL, p);
    std::ostringstream ms;
    io::save_state(memory, ms);
    refused(ms.str(), "the state is of a LongTermMemory, this object is an InfinityFormerLayer");

    // Valid checksums around invalid contents (a file not written by the library).
    const std::size_t h = le(good, 12, 4);
    std::string nan_b = good;
    const double nan = testutil::kNaN;
    std::memcpy(&nan_b[good.size() - 9], &nan, 8);  // B's last entry, before the phase byte
    reseal(nan_b);
    refused(nan_b, "state.B has a non-finite entry");
    std::string many = good;
    const std::size_t n_obs_at = h + 2 * (8 + 8 * kL * kD) + 35 + 312 * 8;
    many[n_obs_at + 6] = 0x7f;  // 2^54-ish observed densities
    reseal(many);
    refused(many, "malformed state");

    std::string phase1 = good;
    phase1.back() = 1;  // a layer's long-term stream is never left between update and attend
    reseal(phase1);
    refused(phase1, "malformed state");

    const std::string path = "infinityformer_test_state_trailing.bin";
    {
        std::ofstream out(path, std::ios::binary);
        out << good << "x";
    }
    CHECK_THROWS_WITH(io::restore_state_file(b, path), has("bytes after the state"));
    CHECK(b.stream_state() == before);
    std::remove(path.c_str());
    CHECK_THROWS_AS(io::restore_state_file(b, path), infinityformer::runtime_error);
    CHECK(b.stream_state() == before);
}

TEST_CASE("state: every file or stream error is a runtime_error naming the file", "[state][twin]") {
    Scratch tmp("infinityformer_state_io_");
    const auto p = small_params(Sampling::uniform);
    Normal rng(6);
    InfinityFormerLayer<double> a(kD, kHeads, kL, p), b(kD, kHeads, kL, p);
    for (int c = 0; c < 3; ++c) a.forward(rng.matrix(kL, kD));
    for (int c = 0; c < 2; ++c) b.forward(rng.matrix(kL, kD));
    const auto before = b.stream_state();
    const std::string good = tmp / "good.state", dir = tmp / "dir";
    io::save_state_file(a, good);
    const std::string bytes = contents(good);
    REQUIRE((bytes == saved(a)));
    REQUIRE_FALSE(fs::exists(good + ".tmp"));
    fs::create_directory(dir);

    // Reading a directory, a missing file, a file in a missing directory or under a file, an
    // empty path, a truncated file, a file that opens but cannot be read.
    const std::string restore = "[infinityformer] io::restore_state_file: ";
    auto refused = [&](const std::string& path, const std::string& says) {
        INFO(path);
        CHECK_THROWS_AS(io::restore_state_file(b, path), infinityformer::runtime_error);
        CHECK_THROWS_WITH(io::restore_state_file(b, path), has(restore) && has(says));
        REQUIRE(b.stream_state() == before);
    };
    refused(dir, "'" + dir + "': cannot open the file: it is a directory");
    refused(tmp / "missing.state",
            "'" + tmp / "missing.state" + "': cannot open the file: it does not exist");
    refused(tmp / "no/x.state", "'" + tmp / "no/x.state" + "': cannot open the file: ");
    refused(good + "/x", "'" + good + "/x': cannot open the file: ");
    refused("", "the path is empty");
    const std::string cut = tmp / "cut.state";
    {
        std::ofstream out(cut, std::ios::binary);
        out << bytes.substr(0, bytes.size() - 1);
    }
    refused(cut, "'" + cut + "': the state is truncated");
    if (fs::exists("/proc/self/mem")) refused("/proc/self/mem", "'/proc/self/mem': reading failed");
    if (permissions_apply()) {
        const std::string locked = tmp / "locked.state";
        io::save_state_file(a, locked);
        fs::permissions(locked, fs::perms::none);
        refused(locked, "'" + locked + "': cannot open the file: ");
        fs::permissions(locked, fs::perms::owner_all);
    }

    // Streams: a buffer that throws (whatever the exceptions mask), a failed stream.
    for (std::ios::iostate mask : {std::ios::goodbit, std::ios::badbit}) {
        INFO("exceptions " << mask);
        FailingInput<std::ios_base::failure> io_failure(bytes.substr(0, 30));
        FailingInput<std::runtime_error> other_failure(bytes.substr(0, 30));
        for (std::streambuf* buffer : {static_cast<std::streambuf*>(&io_failure),
                                       static_cast<std::streambuf*>(&other_failure)}) {
            std::istream in(buffer);
            in.exceptions(mask);
            CHECK_THROWS_AS(io::restore_state(b, in), infinityformer::runtime_error);
        }
        FailingInput<std::runtime_error> again(bytes.substr(0, 30));
        std::istream in(&again);
        in.exceptions(mask);
        CHECK_THROWS_WITH(io::restore_state(b, in),
                          has("[infinityformer] io::restore_state: reading failed"));
        REQUIRE(b.stream_state() == before);
    }
    {
        std::istringstream in(bytes);
        in.setstate(std::ios::failbit);
        CHECK_THROWS_WITH(io::restore_state(b, in),
                          has("[infinityformer] io::restore_state: the input stream is in a "
                              "failed state"));
        REQUIRE(b.stream_state() == before);
    }
    for (std::ios::iostate mask : {std::ios::goodbit, std::ios::badbit}) {
        FullOutput full(100);
        std::ostream out(&full);
        out.exceptions(mask);
        CHECK_THROWS_AS(io::save_state(a, out), infinityformer::runtime_error);
        CHECK_THROWS_WITH(io::save_state(a, out),
                          has("[infinityformer] io::save_state: writing the state failed"));
    }

    // Writing: onto a directory, into a missing directory or under a file, an empty path; the
    // temporary file cannot be created. Nothing is left behind and the old file is intact.
    const std::string save = "[infinityformer] io::save_state_file: ";
    auto unsaved = [&](const std::string& path, const std::string& says) {
        INFO(path);
        CHECK_THROWS_AS(io::save_state_file(b, path), infinityformer::runtime_error);
        CHECK_THROWS_WITH(io::save_state_file(b, path), has(save) && has(says));
        CHECK_FALSE(fs::exists(path + ".tmp"));
    };
    unsaved(dir, "'" + dir + "': cannot write the file: it is a directory");
    CHECK(fs::is_directory(dir));
    unsaved(tmp / "no/x.state", "'" + tmp / "no/x.state" +
                                    "': cannot write the file: the directory '" + tmp / "no" +
                                    "' does not exist");
    unsaved(good + "/x.state",
            "'" + good + "/x.state': cannot write the file: '" + good + "' is not a directory");
    const bool had_tmp = fs::exists(".tmp");
    CHECK_THROWS_WITH(io::save_state_file(b, ""), has(save + "the path is empty"));
    CHECK(fs::exists(".tmp") == had_tmp);
    fs::create_directory(good + ".tmp");
    CHECK_THROWS_AS(io::save_state_file(b, good), infinityformer::runtime_error);
    CHECK_THROWS_WITH(io::save_state_file(b, good),
                      has(save + "'" + good + "': cannot create the temporary file '" + good +
                          ".tmp': it is a directory"));
    CHECK(fs::is_directory(good + ".tmp"));  // not ours: left alone
    CHECK((contents(good) == bytes));
    fs::remove(good + ".tmp");
    if (permissions_apply()) {
        const std::string ro = tmp / "ro";
        fs::create_directory(ro);
        fs::permissions(ro, fs::perms::owner_read | fs::perms::owner_exec);
        CHECK_THROWS_WITH(io::save_state_file(b, ro + "/x.state"),
                          has(save + "'" + ro + "/x.state': cannot create the temporary file"));
        fs::permissions(ro, fs::perms::owner_all);
        CHECK(fs::is_empty(ro));
    }
    // A bad stream index is the argument's fault: no temporary file either.
    CHECK_THROWS_AS(io::save_state_file(b, good, 7), infinityformer::invalid_argument);
    CHECK_FALSE(fs::exists(good + ".tmp"));
    CHECK((contents(good) == bytes));
    // A save that works replaces the file and leaves no temporary file.
    io::save_state_file(b, good);
    CHECK((contents(good) == saved(b)));
    CHECK_FALSE(fs::exists(good + ".tmp"));
}

TEST_CASE("state: set_stream_state checks what it is given", "[state][twin]") {
    const auto p = small_params(Sampling::sticky);
    Normal rng(9);
    InfinityFormerLayer<double> layer(kD, kHeads, kL, p);
    for (int c = 0; c < 3; ++c) layer.forward(rng.matrix(kL, kD));
    const auto before = layer.stream_state();
    auto s = before;
    s.prev.resize(0, kD);
    CHECK_THROWS_WITH(layer.set_stream_state(s), has("state.pending holds a chunk"));
    s = before;
    s.pending(1, 2) = testutil::kInf;
    CHECK_THROWS_WITH(layer.set_stream_state(s), has("state.pending has a non-finite entry"));
    auto q = p;
    q.num_basis = 10;
    LongTermAttention<double> other(kD, kHeads, kL, q, kD);
    LayerStream<double> foreign(other.engine().make_stream(0));
    CHECK_THROWS_WITH(layer.set_stream_state(foreign),
                      has("another configuration: num_basis is 8 here, 10 in the other"));
    CHECK(layer.stream_state() == before);

    // A copy of a stream (here from a layer with another seed) is taken, as stream 1's.
    auto seeded = p;
    seeded.seed = 77;
    InfinityFormerLayer<double> fork(kD, kHeads, kL, seeded);
    fork.set_num_streams(2);
    fork.set_stream_state(before, 1);
    CHECK(fork.stream_state(1).long_term.memory.stream_index() == 1);
    CHECK(fork.stream_state(1).long_term.memory.state() == before.long_term.memory.state());

    LongTermAttention<double> lt(kD, kHeads, kL, p);
    auto t = lt.stream_state();
    t.phase = StreamPhase::updated;
    CHECK_THROWS_WITH(lt.set_stream_state(t), has("its memory is empty"));
    auto st = lt.memory().state();
    st.tokens = 3;
    auto fresh = lt.engine().make_stream(0);
    CHECK_THROWS_WITH(fresh.memory.set_state(st, 0), has("state.tokens is 3"));
    st.tokens = (Eigen::Index(1) << 62) + kL;  // the counter could overflow
    st.empty = false;
    CHECK_THROWS_WITH(fresh.memory.set_state(st, 0), has("from 0 to 2^62"));
    CHECK(lt.stream_state() == lt.engine().make_stream(0));
}

namespace {

// A model of two layers with three streams each and a long-term attention with two, its
// streams advanced by `chunks` chunks (forward and backward) from a seed of their own.
template <typename S>
struct Model {
    LongTermParams p = small_params(Sampling::sticky);
    InfinityFormerLayer<S> first{kD, kHeads, kL, p}, second{kD, kHeads, kL, p};
    LongTermAttention<S> memory{kD, kHeads, kL, p};
    Model() {
        first.set_num_streams(3);
        second.set_num_streams(3);
        memory.set_num_streams(2);
    }
    io::ModelParts<S> parts() { return {{"first", first}, {"second", second}, {"memory", memory}}; }

    // One chunk of every stream: the layers stacked (second after first), the attention
    // reading the first layer's output. Returns every output and input gradient.
    std::vector<Mat<S>> step(Normal& rng) {
        std::vector<Mat<S>> out;
        for (Eigen::Index s = 0; s < 3; ++s) {
            const Mat<S> x = rng.matrix(kL, kD).template cast<S>();
            const Mat<S> dy = rng.matrix(kL, kD).template cast<S>();
            Mat<S> h = first.forward(x, s), y = second.forward(h, s), dh(kL, kD), dx(kL, kD);
            second.backward(dy, S(0.01), dh, s);
            first.backward(dh, S(0.01), dx, s);
            out.push_back(y);
            out.push_back(dx);
            if (s < 2) out.push_back(memory.forward(h, x.topRows(3), s));
        }
        for (auto* l : {&first, &second})
            for (auto& q : l->parameters()) out.push_back(q.gradient());
        return out;
    }
    // Every stream's state, for comparisons.
    std::vector<LayerStream<S>> layer_states() const {
        std::vector<LayerStream<S>> out;
        for (const auto* l : {&first, &second})
            for (Eigen::Index s = 0; s < l->num_streams(); ++s) out.push_back(l->stream_state(s));
        return out;
    }
    std::vector<LongTermStream<S>> memory_states() const {
        std::vector<LongTermStream<S>> out;
        for (Eigen::Index s = 0; s < memory.num_streams(); ++s)
            out.push_back(memory.stream_state(s));
        return out;
    }
};

template <typename S>
std::string saved_model(Model<S>& m) {
    std::ostringstream out;
    io::save_model_state(m.parts(), out);
    return out.str();
}

}  // namespace

TEST_CASE("state: a model's streams saved in one file continue bit for bit", "[state]") {
    Scratch tmp("infinityformer_model_state_");
    for (bool via_file : {false, true}) {
        INFO((via_file ? "file" : "stream"));
        Model<double> a, b;
        Normal rng(40), other(41);
        for (int c = 0; c < 4; ++c) a.step(rng);
        for (int c = 0; c < 2; ++c) b.step(other);  // b holds other streams before
        if (via_file) {
            const std::string path = tmp / "model.state";
            io::save_model_state_file(a.parts(), path);
            CHECK((contents(path) == saved_model(a)));
            io::restore_model_state_file(b.parts(), path);
        } else {
            std::stringstream ss;
            io::save_model_state(a.parts(), ss);
            ss << "after";  // the stream is left after the model state
            io::restore_model_state(b.parts(), ss);
            std::string rest;
            ss >> rest;
            CHECK(rest == "after");
        }
        // (The traces are not saved: the states are equal from the next chunk on.)
        for (int c = 0; c < 3; ++c) {
            Normal ra(500 + static_cast<std::uint64_t>(c)), rb(500 + static_cast<std::uint64_t>(c));
            a.first.zero_grad();
            a.second.zero_grad();
            b.first.zero_grad();
            b.second.zero_grad();
            const auto ya = a.step(ra), yb = b.step(rb);
            REQUIRE(ya.size() == yb.size());
            for (std::size_t k = 0; k < ya.size(); ++k) {
                INFO("chunk " << c << " after the restore, result " << k);
                REQUIRE(detail::same_values(ya[k], yb[k]));
            }
        }
        CHECK(a.layer_states() == b.layer_states());
        CHECK(a.memory_states() == b.memory_states());
    }
    // Float, a layer alone.
    InfinityFormerLayer<float> f(kD, kHeads, kL, small_params(Sampling::uniform)),
        g(kD, kHeads, kL, small_params(Sampling::uniform));
    Normal rng(3);
    for (int c = 0; c < 3; ++c) f.forward(rng.matrix(kL, kD).cast<float>());
    std::stringstream ss;
    io::save_model_state(io::ModelParts<float>{{"only", f}}, ss);
    io::restore_model_state(io::ModelParts<float>{{"only", g}}, ss);
    const Eigen::MatrixXf x = rng.matrix(kL, kD).cast<float>();
    CHECK(detail::same_values(f.forward(x), g.forward(x)));
    CHECK(f.stream_state() == g.stream_state());
}

TEST_CASE("state: the model container is laid out as docs/state-format.md says", "[state]") {
    Model<double> m;
    Normal rng(8);
    m.step(rng);
    const std::string s = saved_model(m);
    const unsigned char magic[8] = {0x89, 'I', 'F', 'M', 0x0D, 0x0A, 0x1A, 0x0A};
    for (std::size_t i = 0; i < 8; ++i) CHECK(static_cast<unsigned char>(s[i]) == magic[i]);
    CHECK(le(s, 8, 4) == 1);  // format version
    const std::size_t h = le(s, 12, 4);
    CHECK(le(s, 16, 4) == crc32(0L, reinterpret_cast<const Bytef*>(s.data()), 16));
    CHECK(le(s, 20, 1) == 8);  // double
    CHECK(le(s, 24, 4) == 3);  // parts
    std::size_t at = 28;
    std::vector<std::uint64_t> lengths;
    for (const char* name : {"first", "second", "memory"}) {
        const std::size_t n = le(s, at, 4);
        CHECK(s.substr(at + 4, n) == name);
        at += 4 + n;
        CHECK(le(s, at, 1) == (std::string(name) == "memory" ? 2u : 3u));  // kind
        const std::size_t streams = le(s, at + 4, 8);
        CHECK(streams == (std::string(name) == "memory" ? 2u : 3u));
        at += 12;
        for (std::size_t k = 0; k < streams; ++k, at += 8) lengths.push_back(le(s, at, 8));
    }
    CHECK(le(s, at, 8) == s.size() - h);  // payload length
    CHECK(at + 16 == h);
    CHECK(le(s, h - 4, 4) == crc32(0L, reinterpret_cast<const Bytef*>(s.data()), uInt(h - 4)));
    CHECK(h == 173);  // the example of docs/state-format.md
    // The payload: each stream's state as io::save_state writes it.
    std::size_t p = h;
    for (Eigen::Index k = 0; k < 3; ++k) {
        std::ostringstream one;
        io::save_state(m.first, one, k);
        CHECK((s.substr(p, lengths[std::size_t(k)]) == one.str()));
        p += lengths[std::size_t(k)];
    }
    std::ostringstream last;
    io::save_state(m.memory, last, 1);
    CHECK((s.substr(s.size() - lengths.back()) == last.str()));
}

TEST_CASE("state: a truncated, damaged or mismatched model state is refused, the model unchanged",
          "[state][twin]") {
    Model<double> a, b;
    Normal rng(12), other(13);
    for (int c = 0; c < 3; ++c) a.step(rng);
    b.step(other);
    const auto layers = b.layer_states();
    const auto memories = b.memory_states();
    const std::string good = saved_model(a);
    const std::string call = "[infinityformer] io::restore_model_state: ";
    auto unchanged = [&] {
        REQUIRE(b.layer_states() == layers);
        REQUIRE(b.memory_states() == memories);
    };
    auto refused_by = [&](const io::ModelParts<double>& parts, const std::string& bytes,
                          const std::string& says) {
        INFO(says);
        std::istringstream in(bytes);
        CHECK_THROWS_AS(io::restore_model_state(parts, in), infinityformer::runtime_error);
        std::istringstream again(bytes);
        CHECK_THROWS_WITH(io::restore_model_state(parts, again), has(call) && has(says));
        unchanged();
    };
    auto refused = [&](const std::string& bytes, const std::string& says) {
        refused_by(b.parts(), bytes, says);
    };
    const std::size_t h = le(good, 12, 4);
    for (std::size_t n = 0; n < good.size(); n += (n < h + 200 ? 1 : 61))
        refused(good.substr(0, n), "truncated");
    for (std::size_t i = 0; i < good.size(); i += (i < h + 200 ? 1 : 37)) {
        std::string bad = good;
        bad[i] = static_cast<char>(static_cast<unsigned char>(bad[i]) ^ 0x10u);
        refused(bad, i < 8 ? "not an infinityformer model state" : "damaged");
    }
    refused("hello, world: not a state at all", "not an infinityformer model state");
    std::ostringstream one;
    io::save_state(a.first, one);
    refused(one.str(), "this is one stream's state (io::save_state), expected a model state");
    std::string newer = good;
    newer[8] = 2;
    reseal(newer);
    refused(newer, "model state has format version 2, newer than this build reads (up to 1)");

    // Another model: fewer parts, other names or order, another kind, other stream counts.
    refused_by({{"first", b.first}, {"second", b.second}}, good,
               "holds 3 parts ('first', 'second', 'memory'), the model has 2 ('first', 'second')");
    refused_by({{"first", b.first}, {"later", b.second}, {"memory", b.memory}}, good,
               "part 1 is named 'second' in the model state, 'later' in the model");
    refused_by({{"second", b.second}, {"first", b.first}, {"memory", b.memory}}, good,
               "part 0 is named 'first' in the model state, 'second' in the model");
    {
        InfinityFormerLayer<double> wrong(kD, kHeads, kL, a.p);
        refused_by({{"first", b.first}, {"second", b.second}, {"memory", wrong}}, good,
                   "part 'memory' is a LongTermAttention in the model state, an "
                   "InfinityFormerLayer in the model");
        wrong.set_num_streams(2);
        refused_by({{"first", b.first}, {"second", wrong}, {"memory", b.memory}}, good,
                   "part 'second' has 3 streams in the model state, 2 in the model");
        // Another shape: the stream's own reader says which field, the model which part.
        auto q = a.p;
        q.num_basis = 10;
        InfinityFormerLayer<double> shaped(kD, kHeads, kL, q);
        shaped.set_num_streams(3);
        const auto shaped_before = shaped.stream_state(2);
        refused_by({{"first", b.first}, {"second", shaped}, {"memory", b.memory}}, good,
                   "part 'second', stream 0: the state is from another configuration: num_basis "
                   "is 8 in the state, 10 in this object");
        CHECK(shaped.stream_state(2) == shaped_before);
        InfinityFormerLayer<double> wider(2 * kD, kHeads, kL, a.p);
        wider.set_num_streams(3);
        refused_by({{"first", b.first}, {"second", wider}, {"memory", b.memory}}, good,
                   "part 'second', stream 0: the state is from another configuration: dim is 6 "
                   "in the state, 12 in this object");
    }
    {
        Model<float> f;
        std::ostringstream out;
        io::save_model_state(f.parts(), out);
        refused(out.str(), "saved from float objects, this model is double");
    }
    // A malformed stream inside valid container checksums: the part and the stream named.
    {
        std::string inner = good;
        std::size_t at = h;  // the first stream's state: its phase byte is its last
        at += le(good, 28 + 4 + 5 + 4 + 8, 8);
        inner[at - 1] = 1;  // a layer's long-term stream is never left `updated`
        reseal(inner);      // the container's checksums only
        refused(inner, "part 'first', stream 0: the state is damaged");
    }

    // The model itself: no parts, a duplicate name or object, a const part.
    std::istringstream in(good);
    REQUIRE_INVALID(io::restore_model_state(io::ModelParts<double>{}, in),
                    has(call) && has("the model has no parts, expected at least one"));
    REQUIRE_INVALID(
        io::restore_model_state(io::ModelParts<double>{{"x", b.first}, {"x", b.second}}, in),
        has("parts 0 and 1 are both named 'x', expected distinct names"));
    REQUIRE_INVALID(
        io::restore_model_state(io::ModelParts<double>{{"x", b.first}, {"y", b.first}}, in),
        has("parts 'x' and 'y' are the same object, expected each once"));
    REQUIRE_INVALID(io::restore_model_state(io::ModelParts<double>{{"", b.first}}, in),
                    has("part 0 is named '' (0 bytes), expected 1 to 1024 bytes"));
    const auto& constant = b.second;
    REQUIRE_INVALID(
        io::restore_model_state(
            io::ModelParts<double>{{"first", b.first}, {"second", constant}, {"memory", b.memory}},
            in),
        has("part 'second' was made from a const layer"));
    std::ostringstream sink;
    REQUIRE_INVALID(
        io::save_model_state(io::ModelParts<double>{{"x", b.first}, {"x", b.second}}, sink),
        has("[infinityformer] io::save_model_state: parts 0 and 1 are both named"));
    CHECK(sink.str().empty());
    unchanged();

    // Files: trailing bytes, a missing file; the file named, the model unchanged.
    Scratch tmp("infinityformer_model_io_");
    const std::string path = tmp / "model.state";
    {
        std::ofstream out(path, std::ios::binary);
        out << good << "x";
    }
    const std::string file_call = "[infinityformer] io::restore_model_state_file: '" + path + "': ";
    CHECK_THROWS_WITH(io::restore_model_state_file(b.parts(), path),
                      has(file_call + "the file is damaged: it has bytes after the state"));
    unchanged();
    {
        std::ofstream out(path, std::ios::binary);
        out << good.substr(0, good.size() - 3);
    }
    CHECK_THROWS_WITH(io::restore_model_state_file(b.parts(), path),
                      has(file_call + "the model state is truncated"));
    unchanged();
    CHECK_THROWS_WITH(io::restore_model_state_file(b.parts(), tmp / "missing"),
                      has("io::restore_model_state_file: '" + tmp / "missing" +
                          "': cannot open the file: it does not exist"));
    CHECK_THROWS_WITH(
        io::save_model_state_file(b.parts(), tmp / "no/x.state"),
        has("io::save_model_state_file: '" + tmp / "no/x.state" + "': cannot write the file"));
    unchanged();
    io::save_model_state_file(a.parts(), path);
    io::restore_model_state_file(b.parts(), path);
    Normal ra(99), rb(99);
    for (auto* l : {&a.first, &a.second, &b.first, &b.second}) l->zero_grad();
    CHECK(a.step(ra) == b.step(rb));
    CHECK(b.layer_states() == a.layer_states());
}

TEST_CASE("state: a stream index out of range names the call the user made", "[state]") {
    const auto p = small_params(Sampling::uniform);
    InfinityFormerLayer<double> layer(kD, kHeads, kL, p);
    LongTermAttention<double> lt(kD, kHeads, kL, p);
    const std::string good = saved(layer);
    for (Eigen::Index bad : {Eigen::Index(3), Eigen::Index(-1)}) {
        INFO("stream " << bad);
        const std::string expected =
            "stream is " + std::to_string(bad) + ", expected 0 <= stream < 1";
        std::istringstream in(good), in2(good);
        REQUIRE_INVALID(io::restore_state(layer, in, bad),
                        has("[infinityformer] io::restore_state: " + expected));
        REQUIRE_INVALID(io::restore_state(lt, in2, bad),
                        has("[infinityformer] io::restore_state: " + expected));
        std::ostringstream out;
        REQUIRE_INVALID(io::save_state(layer, out, bad),
                        has("[infinityformer] io::save_state: " + expected));
        REQUIRE_INVALID(io::save_state(lt, out, bad),
                        has("[infinityformer] io::save_state: " + expected));
        const std::string path = "infinityformer_test_state_index.bin";
        io::save_state_file(layer, path);
        REQUIRE_INVALID(io::restore_state_file(layer, path, bad),
                        has("[infinityformer] io::restore_state_file: " + expected));
        REQUIRE_INVALID(io::save_state_file(layer, path, bad),
                        has("[infinityformer] io::save_state_file: " + expected));
        std::remove(path.c_str());
    }
    CHECK(layer.stream_state() == InfinityFormerLayer<double>(kD, kHeads, kL, p).stream_state());
}
