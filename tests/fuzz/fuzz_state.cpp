// libFuzzer target: io::restore_state on arbitrary bytes, into a memory, a long-term
// attention and a layer, and io::restore_model_state into a model of a layer and a long-term
// attention (scripts/fuzz builds and runs it). Double only: the reader's code is
// the same for both Scalars but the 4- or 8-byte decoding of a value (which the unit tests
// check for both), and a second Scalar would double the compilation that CI pays for.
//
// The first input byte chooses the object (bits 0–1: memory, attention, layer, model) and
// whether the checksums are recomputed over the rest before it is read (bit 3; a model
// state's container ends its header as a stream state does, so the same positions, but not
// the states inside it): without that, almost
// every mutation would stop at a checksum, and the parser behind it would go unexplored.
// Whatever the input, restore_state must either restore a state the object can continue
// from (one forward() gives finite values or a library exception) or throw one of the
// library's exceptions and leave the object as it was.
//
// INFINITYFORMER_FUZZ_SEEDS=DIR writes the seed corpus (valid states of each kind, saved at
// several points of a stream) into DIR and exits.
#include <zlib.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <infinityformer/io/state.hpp>
#include <sstream>
#include <string>

namespace {

using namespace infinityformer;

LongTermParams params(bool sticky) {
    LongTermParams p = sticky ? LongTermParams::lm() : LongTermParams{};
    p.num_basis = 8;
    p.num_samples = 6;
    p.num_bins = 8;
    p.stability = Stability::allow;  // N = 8 holds little of a chunk (reach.hpp); the reader
                                     // under test does not depend on it
    return p;
}

constexpr Eigen::Index kD = 6, kHeads = 2, kL = 4;

template <typename S>
struct Objects {
    using Matrix = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
    LongTermMemory<S> memory{kD, kL, params(true)};
    LongTermAttention<S> attention{kD, kHeads, kL, params(true)};
    InfinityFormerLayer<S> layer{kD, kHeads, kL, params(true)};

    // Advances every object by `chunks` chunks of a fixed stream.
    void advance(int chunks) {
        for (int c = 0; c < chunks; ++c) {
            const Matrix x =
                Matrix::Constant(kL, kD, S(0.1) * S(c + 1)) + Matrix::Identity(kL, kD) * S(c % 3);
            memory.update(x);
            memory.observe(Eigen::Matrix<S, Eigen::Dynamic, 1>::Constant(3, S(0.4)),
                           Eigen::Matrix<S, Eigen::Dynamic, 1>::Constant(3, S(0.02)));
            attention.forward(x, x.topRows(3));
            layer.forward(x);
        }
        attention.update(Matrix::Constant(kL, kD, S(0.5)));  // phase `updated`, gate inputs
    }
};

// The checksums of a state recomputed (where the input is long enough to have them).
void reseal(std::string& s) {
    if (s.size() < 20) return;
    auto put = [&s](std::size_t at, std::uint32_t v) {
        for (int k = 0; k < 4; ++k) s[at + std::size_t(k)] = static_cast<char>(v >> (8 * k));
    };
    auto crc = [&s](std::size_t begin, std::size_t end) {
        return static_cast<std::uint32_t>(crc32(
            0L, reinterpret_cast<const Bytef*>(s.data() + begin), static_cast<uInt>(end - begin)));
    };
    put(16, crc(0, 16));
    std::uint32_t h = 0;
    for (int k = 0; k < 4; ++k)
        h |= std::uint32_t(static_cast<unsigned char>(s[12 + k])) << (8 * k);
    if (h < 28 || h > s.size()) return;
    put(h - 8, crc(h, s.size()));
    put(h - 4, crc(0, h - 4));
}

template <typename S>
bool same(const LongTermMemory<S>& a, const LongTermMemory<S>& b) {
    return a == b;
}
template <typename Object>
bool same(const Object& a, const Object& b) {
    return a.stream_state() == b.stream_state();
}

template <typename Object, typename Step>
void exercise(Object& object, const std::string& bytes, Step step) {
    const auto before = object;
    std::istringstream in(bytes);
    try {
        io::restore_state(object, in);
    } catch (const infinityformer::runtime_error&) {
        if (!same(object, before)) std::abort();  // a refused state changed the object
        return;
    }
    try {
        step(object);  // the restored object can continue
    } catch (const infinityformer::invalid_argument&) {
    } catch (const infinityformer::runtime_error&) {
    }
    object = before;
}

// The model reader: refused with both parts unchanged, or both restored and able to go on.
template <typename S>
void exercise_model(Objects<S>& o, const std::string& bytes) {
    using Matrix = typename Objects<S>::Matrix;
    const auto layer = o.layer;
    const auto attention = o.attention;
    std::istringstream in(bytes);
    try {
        io::restore_model_state(io::ModelParts<S>{{"layer", o.layer}, {"attention", o.attention}},
                                in);
    } catch (const infinityformer::runtime_error&) {
        if (!same(o.layer, layer) || !same(o.attention, attention)) std::abort();
        return;
    }
    try {
        const Matrix x = Matrix::Constant(kL, kD, S(0.25));
        if (!o.layer.forward(x).allFinite()) std::abort();
        o.attention.forward(x, x.topRows(2));
    } catch (const infinityformer::invalid_argument&) {
    } catch (const infinityformer::runtime_error&) {
    }
    o.layer = layer;
    o.attention = attention;
}

template <typename S>
void run(unsigned which, const std::string& bytes) {
    using Matrix = typename Objects<S>::Matrix;
    static Objects<S>* o = [] {
        auto* p = new Objects<S>;
        p->advance(3);
        return p;
    }();
    const Matrix x = Matrix::Constant(kL, kD, S(0.25));
    switch (which) {
        case 0: exercise(o->memory, bytes, [&](LongTermMemory<S>& m) { m.update(x); }); break;
        case 1:
            exercise(o->attention, bytes, [&](LongTermAttention<S>& a) {
                a.forward(x, x.topRows(2));
                Matrix dq(2, kD), dx(kL, kD);
                a.backward(Matrix::Ones(2, kD), S(0.1), dq, dx);
            });
            break;
        case 2:
            exercise(o->layer, bytes, [&](InfinityFormerLayer<S>& l) {
                const Matrix y = l.forward(x);
                if (!y.allFinite()) std::abort();
            });
            break;
        default: exercise_model(*o, bytes);
    }
}

template <typename S>
void write_seeds(const std::string& dir, const char* tag) {
    Objects<S> o;
    for (int stage = 0; stage < 3; ++stage) {
        // Each state twice: read as it is, and with its checksums recomputed (mode byte).
        auto save = [&](unsigned which, const char* kind, auto& object) {
            std::ostringstream out;
            io::save_state(object, out);
            for (unsigned reseal : {0u, 8u}) {
                const std::string name = dir + "/" + kind + "_" + tag + "_" +
                                         std::to_string(stage) + (reseal ? "_resealed" : "");
                const char mode = static_cast<char>(which | reseal);
                std::ofstream(name, std::ios::binary) << mode << out.str();
            }
        };
        save(0, "memory", o.memory);
        save(1, "attention", o.attention);
        save(2, "layer", o.layer);
        std::ostringstream model;
        io::save_model_state(io::ModelParts<S>{{"layer", o.layer}, {"attention", o.attention}},
                             model);
        for (unsigned reseal : {0u, 8u}) {
            const std::string name =
                dir + "/model_" + tag + "_" + std::to_string(stage) + (reseal ? "_resealed" : "");
            std::ofstream(name, std::ios::binary) << static_cast<char>(3u | reseal) << model.str();
        }
        o.advance(stage + 1);
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    if (const char* dir = std::getenv("INFINITYFORMER_FUZZ_SEEDS")) {
        write_seeds<double>(dir, "double");
        std::exit(0);
    }
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const unsigned mode = data[0];
    std::string bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
    if (mode & 8u) reseal(bytes);
    run<double>(mode & 3u, bytes);
    return 0;
}
