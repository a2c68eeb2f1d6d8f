// ltm_chunk: time one configuration of the long-term memory attention per chunk.
//
// Streams --chunks random chunks (batch 1) through LongTermAttention: memory update with the
// chunk, then attention of the chunk's L queries over the memory, output projection included.
// Prints the median wall time per chunk after the first two as `ms_per_chunk=X`, so that
// other implementations can be run at exactly the same shapes beside it.
//
//   ltm_chunk --d-model 300 --heads 6 --basis 512 --chunk 1024 --samples 512 --tau 0.75
//             --sticky 0 --dtype float --chunks 20 --threads 1
//
// The defaults are the ∞-former's sorting configuration (Martins et al. 2022, §4.1).
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
#include <vector>

#include "bench_common.hpp"
#include "infinityformer/infinityformer.hpp"

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
};

const char* kUsage =
    "usage: ltm_chunk [--d-model 300] [--heads 6] [--basis 512] [--chunk 1024]\n"
    "                 [--samples 512] [--tau 0.75] [--sticky 0|1] [--dtype float|double]\n"
    "                 [--chunks 20] [--threads 1]\n";

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
        } else {
            throw std::invalid_argument("unknown option '" + name + "'");
        }
    }
    return o;
}

template <typename Scalar>
double run(const Options& o) {
    using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    // The sticky configuration is the language model's: its basis widths and ridge λ too.
    const auto p = bench::timed_params(
        o.basis, o.samples, infinityformer::LongTermParams{}.num_bins, o.tau, o.sticky != 0);
    infinityformer::LongTermAttention<Scalar> ltm(o.d_model, o.heads, o.chunk, p);

    std::mt19937_64 gen(7);
    Matrix X(o.chunk, o.d_model), queries(o.chunk, o.d_model), out(o.chunk, o.d_model);
    std::vector<double> ms;
    double checksum = 0;
    for (long c = 0; c < o.chunks; ++c) {
        bench::fill_normal(X, gen);
        bench::fill_normal(queries, gen);
        const auto t0 = std::chrono::steady_clock::now();
        ltm.update(X);
        ltm.attend(queries, out);
        const auto t1 = std::chrono::steady_clock::now();
        ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
        checksum += static_cast<double>(out.sum());
    }
    std::vector<double> steady(ms.begin() + 2, ms.end());
    std::sort(steady.begin(), steady.end());
    const std::size_t n = steady.size();
    const double median = n % 2 ? steady[n / 2] : 0.5 * (steady[n / 2 - 1] + steady[n / 2]);
    std::fprintf(stderr, "# checksum %.6g over %ld chunks\n", checksum, o.chunks);
    return median;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        const Options o = parse(argc, argv);
        if (o.d_model % o.heads != 0)
            throw std::invalid_argument("--heads is " + std::to_string(o.heads) +
                                        ", expected a divisor of --d-model (" +
                                        std::to_string(o.d_model) + ")");
        Eigen::setNbThreads(static_cast<int>(o.threads));
        if (o.threads > 1 && Eigen::nbThreads() == 1)
            std::fprintf(stderr,
                         "# warning: built without OpenMP, --threads %ld runs on one thread\n",
                         o.threads);
        std::fprintf(stderr,
                     "# d_model %ld, heads %ld, basis %ld, chunk %ld, samples %ld, tau %g, "
                     "sticky %ld, %s, %ld chunks, %d thread(s)\n",
                     o.d_model, o.heads, o.basis, o.chunk, o.samples, o.tau, o.sticky,
                     o.dtype.c_str(), o.chunks, Eigen::nbThreads());
        const double ms = o.dtype == "float" ? run<float>(o) : run<double>(o);
        std::printf("ms_per_chunk=%.3f\n", ms);
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "ltm_chunk: %s\n%s", e.what(), kUsage);
        return 2;
    }
}
