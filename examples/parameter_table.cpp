// The table of README's "Choosing parameters": how long a memory holds its past, against τ,
// the chunk length L, the number of basis functions N and the widths, measured by streaming
// a signal through LongTermMemory<float> and reading every past token back at the position
// token_position() gives it, beside what memory_reach() predicts from the parameters alone.
//
//   parameter_table [--quick | --variant]  (scripts/parameter-table writes the README's
//                                          table; --variant names the library build)
//
// Signal: 16 dimensions, each a sum of 4 sinusoids of amplitude 1/2 with periods drawn
// log-uniformly in [256, 65536] tokens plus white noise of standard deviation 0.05 (the
// demo's signal). Uniform sampling, M = 512, λ = 1 unless the row says otherwise. A row
// streams T = min(65,536, 8,192·L) tokens and reads back 64 tokens evenly spaced in each
// age band; the error is the mean over them of |x̂ − x| / |x| (0: exact; 1: no better than
// reading zero). The figures depend on the signal; the time on the CPU and the build.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <infinityformer/infinityformer.hpp>
#include <infinityformer/reach.hpp>
#include <random>
#include <string>
#include <vector>

namespace ifr = infinityformer;
using Memory = ifr::LongTermMemory<float>;
using Matrix = Memory::Matrix;
using Vector = Memory::Vector;
using Index = Eigen::Index;

namespace {

constexpr Index kDim = 16;
constexpr Index kMaxTokens = 65536;
constexpr Index kProbesPerBand = 64;
// Age bands in tokens: [0, 256), [256, 1k), [1k, 2k), … [32k, 64k).
const std::vector<Index> kBandEdges = {0, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536};

// The whole stream, T × kDim, in double (sinusoids with random phases plus noise).
Eigen::MatrixXd make_signal(Index tokens, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> unit(0.0, 1.0);
    std::normal_distribution<double> noise(0.0, 0.05);
    const double pi = 3.14159265358979323846;
    Eigen::MatrixXd x = Eigen::MatrixXd::Zero(tokens, kDim);
    for (Index j = 0; j < kDim; ++j)
        for (int k = 0; k < 4; ++k) {
            const double period = 256.0 * std::pow(256.0, unit(rng));
            const double phase = 2.0 * pi * unit(rng);
            for (Index i = 0; i < tokens; ++i)
                x(i, j) += 0.5 * std::sin(phase + 2.0 * pi * static_cast<double>(i) / period);
        }
    for (Index i = 0; i < x.size(); ++i) x(i) += noise(rng);
    return x;
}

std::string age_text(Index tokens) {
    return tokens < 1024 ? std::to_string(tokens) : std::to_string(tokens / 1024) + "k";
}

struct Row {
    std::string label;
    Index length;
    ifr::MemoryParams params;
};

std::string widths_text(const std::vector<double>& w) {
    std::string s = "{";
    for (std::size_t i = 0; i < w.size(); ++i) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%s%g", i ? ", " : "", w[i]);
        s += buf;
    }
    return s + "}";
}

void run(const Row& row, const Eigen::MatrixXd& signal) {
    const Index L = row.length;
    const ifr::MemoryParams& p = row.params;
    std::printf("| %s | %g | %ld | %ld | %s |", row.label.c_str(), p.tau, static_cast<long>(L),
                static_cast<long>(p.num_basis), widths_text(p.widths).c_str());
    const ifr::MemoryReach reach = ifr::memory_reach(p, L);
    std::printf(" %.2f | %.0f |", reach.chunk_gain, reach.horizon_tokens(1024));
    std::unique_ptr<Memory> memory;
    try {
        memory = std::make_unique<Memory>(kDim, L, p);
    } catch (const ifr::invalid_argument& e) {
        const bool own = !reach.holds_own_chunk;
        std::printf(" refused: %s |", own ? "cannot hold its own chunk" : "diverges");
        for (std::size_t b = 0; b + 1 < kBandEdges.size(); ++b) std::printf(" |");
        std::printf(" |\n");
        return;
    }
    const Index tokens = std::min(kMaxTokens, 8192 * L) / L * L;
    const Matrix x = signal.topRows(tokens).cast<float>();
    const auto start = std::chrono::steady_clock::now();
    for (Index c = 0; c < tokens / L; ++c) memory->update(x.middleRows(c * L, L));
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    // Mean relative error of the tokens aged lo … hi − 1 (at most kProbesPerBand of them).
    auto error = [&](Index lo, Index hi) {
        const Index n = std::min(kProbesPerBand, hi - lo);
        Vector t(n);
        Matrix truth(n, kDim);
        for (Index i = 0; i < n; ++i) {
            const Index age = lo + (hi - lo) * i / n;
            t[i] = static_cast<float>(ifr::token_position(age, L, p.tau, memory->tokens_stored()));
            truth.row(i) = x.row(tokens - 1 - age);
        }
        const Matrix recon = memory->evaluate(t);
        double err = 0;
        for (Index i = 0; i < n; ++i)
            err += static_cast<double>((recon.row(i) - truth.row(i)).norm() / truth.row(i).norm());
        return err / static_cast<double>(n);
    };
    // Measured horizon: the first age a (8 steps per octave) whose tokens a … 1.09a (at
    // least 16 of them) are read back with a mean error of 0.5 or more.
    double measured = static_cast<double>(tokens);
    for (double a = 0; a < static_cast<double>(tokens); a = std::max(a + 1.0, a * 1.0905)) {
        const Index lo = static_cast<Index>(a);
        const Index hi = std::min(tokens, std::max(lo + 16, static_cast<Index>(a * 1.0905)));
        if (error(lo, hi) >= 0.5) {
            measured = a;
            break;
        }
    }
    std::string cells;
    for (std::size_t b = 0; b + 1 < kBandEdges.size(); ++b) {
        const Index lo = kBandEdges[b], hi = std::min(kBandEdges[b + 1], tokens);
        char buf[32];
        if (lo >= hi)
            std::snprintf(buf, sizeof buf, " – |");
        else
            std::snprintf(buf, sizeof buf, " %.2f |", error(lo, hi));
        cells += buf;
    }
    std::printf(" %.0f |%s %.3g |\n", measured, cells.c_str(),
                ms / static_cast<double>(tokens) * 1024.0);
    std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc > 1 && std::strcmp(argv[1], "--variant") == 0) {
#ifdef INFINITYFORMER_COMPILED
        std::printf("%s\n", ifr::compiled_variant());
#else
        std::printf("header-only\n");
#endif
        return 0;
    }
    const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
    const ifr::MemoryParams base = ifr::LongTermParams::sorting().memory_params();
    std::vector<Row> rows;
    auto add = [&](const char* label, Index length, auto change) {
        Row r{label, length, base};
        change(r.params);
        rows.push_back(r);
    };
    const auto same = [](ifr::MemoryParams&) {};
    add("**`sorting()`, L 1024**", 1024, same);
    for (double tau : {0.25, 0.5, 0.9})
        add("τ", 1024, [tau](ifr::MemoryParams& p) { p.tau = tau; });
    for (Index length : {1, 16, 128, 4096}) add("L", length, same);
    for (Index n : {32, 128, 2048}) add("N", 1024, [n](ifr::MemoryParams& p) { p.num_basis = n; });
    add("widths", 1024, [](ifr::MemoryParams& p) { p.widths = {0.005, 0.01}; });
    add("widths", 1024, [](ifr::MemoryParams& p) {
        p.widths = {0.002};
        p.num_basis = 512;
    });
    add("widths", 1024, [](ifr::MemoryParams& p) {
        p.widths = {0.05};
        p.num_basis = 256;
    });
    add("τ and N", 1024, [](ifr::MemoryParams& p) {
        p.tau = 0.9;
        p.num_basis = 2048;
    });
    add("L and τ", 128, [](ifr::MemoryParams& p) { p.tau = 0.9; });
    add("N and τ", 1024, [](ifr::MemoryParams& p) {
        p.num_basis = 16;
        p.tau = 0.9;
    });
    if (quick) rows.resize(2);

    const Eigen::MatrixXd signal = make_signal(kMaxTokens, 7);
    std::printf(
        "| varied | τ | L | N | widths | chunk gain | horizon of 1k-token detail, predicted "
        "(tokens) | "
        "horizon, measured (tokens) |");
    for (std::size_t b = 0; b + 1 < kBandEdges.size(); ++b)
        std::printf(" %s–%s |", age_text(kBandEdges[b]).c_str(),
                    age_text(kBandEdges[b + 1]).c_str());
    std::printf(" ms per 1k tokens |\n|");
    for (std::size_t c = 0; c < 8 + kBandEdges.size(); ++c) std::printf("---|");
    std::printf("\n");
    for (const Row& row : rows) run(row, signal);
    return 0;
}
