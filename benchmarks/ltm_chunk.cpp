// ltm_chunk: time one configuration of the long-term memory attention per chunk.
//
// Streams --chunks random chunks through LongTermAttention: memory update with the chunk,
// then attention of the chunk's L queries over the memory, output projection included
// (with --backward 1 also the backward of ℓ = Σ Y ⊙ dY + kl_weight · Σ KL for random dY: a
// training step). Prints what the figure depends on (the SIMD instruction sets Eigen was
// compiled for, whether flush-to-zero / denormals-are-zero were set, the BLAS), then the
// median wall time per chunk after the first two as `ms_per_chunk=X`, so that other
// implementations can be run at exactly the same shapes beside it.
//
//   ltm_chunk --d-model 300 --heads 6 --basis 512 --chunk 1024 --samples 512 --tau 0.75
//             --sticky 0 --dtype float --chunks 20 --threads 1
//             [--backward 0|1] [--streams S] [--sampling uniform|sticky|stratified]
//             [--widths sorting|lm] [--ftz 0|1] [--kl-weight 0.1]
//
// The defaults are the ∞-former's sorting configuration (Martins et al. 2022, §4.1);
// --sticky 1 is the language-model preset with sticky memories (--widths lm --sampling
// sticky). --streams S runs S independent streams per step (a batch); with --threads T > 1
// they are shared out over T copies of the module, one per thread.
#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>
#if defined(__SSE__) || defined(_M_X64)
#include <xmmintrin.h>
#define LTM_CHUNK_HAS_MXCSR 1
#endif

#include "bench_common.hpp"
#include "infinityformer/infinityformer.hpp"

#ifdef EIGEN_USE_BLAS
// OpenBLAS names itself when it is the BLAS linked (weak: absent from other BLAS).
extern "C" char* openblas_get_config(void) __attribute__((weak));
extern "C" char* openblas_get_corename(void) __attribute__((weak));
extern "C" void openblas_set_num_threads(int) __attribute__((weak));
extern "C" int openblas_get_num_threads(void) __attribute__((weak));
#endif

namespace {

struct Options {
    long d_model = 300;
    long heads = 6;
    long basis = 512;
    long chunk = 1024;
    long samples = 512;
    double tau = 0.75;
    long sticky = 0;
    std::string dtype = "float";
    long chunks = 20;
    long threads = 1;
    long backward = 0;
    long streams = 1;
    std::string sampling;  // empty: from --sticky
    std::string widths;    // empty: from --sticky
    long ftz = 0;
    double kl_weight = 0.1;
};

const char* kUsage =
    "usage: ltm_chunk [--d-model 300] [--heads 6] [--basis 512] [--chunk 1024]\n"
    "                 [--samples 512] [--tau 0.75] [--sticky 0|1] [--dtype float|double]\n"
    "                 [--chunks 20] [--threads 1] [--backward 0|1] [--streams 1]\n"
    "                 [--sampling uniform|sticky|stratified] [--widths sorting|lm]\n"
    "                 [--ftz 0|1] [--kl-weight 0.1]\n";

long parse_long(const std::string& name, const std::string& value, long min) {
    std::size_t used = 0;
    long v = 0;
    try {
        v = std::stol(value, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used != value.size() || v < min)
        throw std::invalid_argument(name + " is '" + value +
                                    "', expected an integer >= " + std::to_string(min));
    return v;
}

Options parse(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        const std::string name = argv[i];
        if (name == "--help" || name == "-h") {
            std::fputs(kUsage, stdout);
            std::exit(0);
        }
        if (i + 1 >= argc) throw std::invalid_argument(name + " needs a value");
        const std::string value = argv[++i];
        if (name == "--d-model") {
            o.d_model = parse_long(name, value, 1);
        } else if (name == "--heads") {
            o.heads = parse_long(name, value, 1);
        } else if (name == "--basis") {
            o.basis = parse_long(name, value, 2);
        } else if (name == "--chunk") {
            o.chunk = parse_long(name, value, 1);
        } else if (name == "--samples") {
            o.samples = parse_long(name, value, 1);
        } else if (name == "--tau") {
            std::size_t used = 0;
            try {
                o.tau = std::stod(value, &used);
            } catch (const std::exception&) {
                used = 0;
            }
            if (used != value.size() || !(o.tau > 0.0 && o.tau < 1.0))
                throw std::invalid_argument("--tau is '" + value + "', expected 0 < tau < 1");
        } else if (name == "--sticky") {
            o.sticky = parse_long(name, value, 0);
            if (o.sticky > 1)
                throw std::invalid_argument("--sticky is '" + value + "', expected 0 or 1");
        } else if (name == "--dtype") {
            if (value != "float" && value != "double")
                throw std::invalid_argument("--dtype is '" + value + "', expected float or double");
            o.dtype = value;
        } else if (name == "--chunks") {
            o.chunks = parse_long(name, value, 3);
        } else if (name == "--threads") {
            o.threads = parse_long(name, value, 1);
        } else if (name == "--backward") {
            o.backward = parse_long(name, value, 0);
            if (o.backward > 1)
                throw std::invalid_argument("--backward is '" + value + "', expected 0 or 1");
        } else if (name == "--streams") {
            o.streams = parse_long(name, value, 1);
        } else if (name == "--sampling") {
            if (value != "uniform" && value != "sticky" && value != "stratified")
                throw std::invalid_argument("--sampling is '" + value +
                                            "', expected uniform, sticky or stratified");
            o.sampling = value;
        } else if (name == "--widths") {
            if (value != "sorting" && value != "lm")
                throw std::invalid_argument("--widths is '" + value + "', expected sorting or lm");
            o.widths = value;
        } else if (name == "--ftz") {
            o.ftz = parse_long(name, value, 0);
            if (o.ftz > 1) throw std::invalid_argument("--ftz is '" + value + "', expected 0 or 1");
        } else if (name == "--kl-weight") {
            std::size_t used = 0;
            try {
                o.kl_weight = std::stod(value, &used);
            } catch (const std::exception&) {
                used = 0;
            }
            if (used != value.size() || !(o.kl_weight >= 0.0))
                throw std::invalid_argument("--kl-weight is '" + value + "', expected >= 0");
        } else {
            throw std::invalid_argument("unknown option '" + name + "'");
        }
    }
    return o;
}

infinityformer::LongTermParams params_of(const Options& o) {
    const bool lm = o.widths.empty() ? o.sticky != 0 : o.widths == "lm";
    auto p = bench::timed_params(o.basis, o.samples, infinityformer::LongTermParams{}.num_bins,
                                 o.tau, lm);
    const std::string sampling = !o.sampling.empty() ? o.sampling
                                 : o.sticky != 0     ? "sticky"
                                                     : "uniform";
    p.sampling = sampling == "sticky"       ? infinityformer::Sampling::sticky
                 : sampling == "stratified" ? infinityformer::Sampling::stratified
                                            : infinityformer::Sampling::uniform;
    return p;
}

// One module with its share of the streams, and the buffers of one step.
template <typename Scalar>
struct Worker {
    using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    infinityformer::LongTermAttention<Scalar> ltm;
    std::vector<Matrix> X, queries, dout;
    Matrix out, dq, dX;
    Worker(const Options& o, long streams)
        : ltm(o.d_model, o.heads, o.chunk, params_of(o)),
          X(static_cast<std::size_t>(streams)),
          queries(static_cast<std::size_t>(streams)),
          dout(static_cast<std::size_t>(streams)),
          out(o.chunk, o.d_model),
          dq(o.chunk, o.d_model),
          dX(o.chunk, o.d_model) {
        ltm.set_num_streams(streams);
    }
    void fill(std::mt19937_64& gen) {
        for (std::size_t s = 0; s < X.size(); ++s) {
            X[s] = bench::random_matrix<Scalar>(ltm.chunk_length(), ltm.dim(), gen);
            queries[s] = bench::random_matrix<Scalar>(ltm.chunk_length(), ltm.dim(), gen);
            dout[s] = bench::random_matrix<Scalar>(ltm.chunk_length(), ltm.d_model(), gen);
        }
    }
    void step(bool backward, Scalar kl_weight) {
        if (backward) ltm.zero_grad();
        for (std::size_t s = 0; s < X.size(); ++s) {
            const auto stream = static_cast<Eigen::Index>(s);
            ltm.update(X[s], stream);
            ltm.attend(queries[s], out, stream);
            if (backward) ltm.backward(dout[s], kl_weight, dq, dX, stream);
        }
    }
    double checksum() const { return static_cast<double>(out.sum()); }
};

template <typename Scalar>
double run(const Options& o) {
    // Streams shared out over the threads (a copy of the module per thread, the same
    // weights); one stream on several threads uses Eigen's (OpenMP) threads instead.
    const long workers = o.streams > 1 ? std::min(o.threads, o.streams) : 1;
    std::vector<Worker<Scalar>> pool;
    pool.reserve(static_cast<std::size_t>(workers));
    for (long w = 0; w < workers; ++w)
        pool.emplace_back(o, o.streams / workers + (w < o.streams % workers ? 1 : 0));
    for (auto& w : pool) w.ltm.set_attention_weights(pool.front().ltm.attention().weights());

    std::mt19937_64 gen(7);
    std::vector<double> ms;
    double checksum = 0;
    const bool backward = o.backward != 0;
    const auto kl = static_cast<Scalar>(o.kl_weight);
    for (long c = 0; c < o.chunks; ++c) {
        for (auto& w : pool) w.fill(gen);
        const auto t0 = std::chrono::steady_clock::now();
        if (workers == 1) {
            pool.front().step(backward, kl);
        } else {
            std::vector<std::thread> threads;
            for (auto& w : pool) threads.emplace_back([&w, backward, kl] { w.step(backward, kl); });
            for (auto& t : threads) t.join();
        }
        const auto t1 = std::chrono::steady_clock::now();
        ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
        for (const auto& w : pool) checksum += w.checksum();
    }
    std::vector<double> steady(ms.begin() + 2, ms.end());
    std::sort(steady.begin(), steady.end());
    const std::size_t n = steady.size();
    const double median = n % 2 ? steady[n / 2] : 0.5 * (steady[n / 2 - 1] + steady[n / 2]);
    std::fprintf(stderr, "# checksum %.6g over %ld chunks\n", checksum, o.chunks);
    return median;
}

// The widest SIMD instruction set Eigen was compiled for (its own string leaves out AVX2
// and FMA).
std::string simd_in_use() {
#if defined(INFINITYFORMER_COMPILED)  // the library's, not this file's
    return std::string("compiled library, ") + infinityformer::compiled_variant();
#else
#if defined(EIGEN_VECTORIZE_AVX512)
    std::string s = "AVX-512";
#elif defined(EIGEN_VECTORIZE_AVX2)
    std::string s = "AVX2";
#elif defined(EIGEN_VECTORIZE_AVX)
    std::string s = "AVX";
#elif defined(EIGEN_VECTORIZE_SSE4_2)
    std::string s = "SSE4.2";
#elif defined(EIGEN_VECTORIZE_SSE2)
    std::string s = "SSE2";
#else
    std::string s = Eigen::SimdInstructionSetsInUse();
#endif
#ifdef EIGEN_VECTORIZE_FMA
    s += "+FMA";
#endif
    return s;
#endif
}

// Flush-to-zero and denormals-are-zero in this thread's MXCSR ("n/a" off x86).
std::string mxcsr_state() {
#ifdef LTM_CHUNK_HAS_MXCSR
    const unsigned csr = _mm_getcsr();
    return std::string("ftz=") + ((csr & 0x8000u) ? "on" : "off") +
           " daz=" + ((csr & 0x0040u) ? "on" : "off");
#else
    return "ftz=n/a daz=n/a";
#endif
}

// True if the BLAS behind Eigen's products runs on threads of its own (OpenBLAS).
bool blas_threads() {
#ifdef EIGEN_USE_BLAS
    return openblas_set_num_threads != nullptr;
#else
    return false;
#endif
}

std::string blas_in_use() {
#ifdef EIGEN_USE_BLAS
    if (openblas_get_config) {
        std::string s = std::string("OpenBLAS (") + openblas_get_config();
        if (openblas_get_corename) s += std::string(", core ") + openblas_get_corename();
        if (openblas_get_num_threads)
            s += ", " + std::to_string(openblas_get_num_threads()) + " thread(s)";
        return s + ")";
    }
    return "external BLAS (EIGEN_USE_BLAS)";
#else
    return "none (Eigen's own kernels)";
#endif
}

}  // namespace

int main(int argc, char** argv) {
    try {
        const Options o = parse(argc, argv);
        if (o.d_model % o.heads != 0)
            throw std::invalid_argument("--heads is " + std::to_string(o.heads) +
                                        ", expected a divisor of --d-model (" +
                                        std::to_string(o.d_model) + ")");
        // Several streams: one thread per module copy (run()); one stream: Eigen's threads
        // (and OpenBLAS's, which would otherwise take every core).
        const int product_threads = o.streams > 1 ? 1 : static_cast<int>(o.threads);
        infinityformer::set_num_threads(product_threads);
#ifdef EIGEN_USE_BLAS
        if (openblas_set_num_threads) openblas_set_num_threads(product_threads);
#endif
        if (o.streams == 1 && o.threads > 1 && infinityformer::num_threads() == 1 &&
            !blas_threads())
            std::fprintf(stderr,
                         "# warning: built without OpenMP, --threads %ld runs on one thread "
                         "(use --streams > 1 to share streams over threads)\n",
                         o.threads);
        std::fprintf(stderr,
                     "# d_model %ld, heads %ld, basis %ld, chunk %ld, samples %ld, tau %g, "
                     "sticky %ld, sampling %s, widths %s, %s, %ld chunks, %ld stream(s), "
                     "backward %ld, %ld thread(s)\n",
                     o.d_model, o.heads, o.basis, o.chunk, o.samples, o.tau, o.sticky,
                     infinityformer::to_string(params_of(o).sampling).c_str(),
                     params_of(o).widths[0] == 0.005 ? "lm" : "sorting", o.dtype.c_str(), o.chunks,
                     o.streams, o.backward, o.threads);
        if (o.ftz != 0) {
#ifdef LTM_CHUNK_HAS_MXCSR
            _mm_setcsr(_mm_getcsr() | 0x8040u);  // FTZ | DAZ, for comparison runs only
#else
            throw std::invalid_argument("--ftz 1 needs an x86 CPU (MXCSR)");
#endif
        }
        const double ms = o.dtype == "float" ? run<float>(o) : run<double>(o);
        std::printf("simd=%s %s blas=\"%s\"\n", simd_in_use().c_str(), mxcsr_state().c_str(),
                    blas_in_use().c_str());
        std::printf("ms_per_chunk=%.3f\n", ms);
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "ltm_chunk: %s\n%s", e.what(), kUsage);
        return 2;
    }
}
