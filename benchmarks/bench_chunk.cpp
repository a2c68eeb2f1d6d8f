// Per-chunk cost of the long-term memory attention (memory update + attention of the chunk's
// queries + output projection) at the ∞-former's two configurations, batch 1, float and
// double, next to the rate of Eigen's matrix product at the same shapes.
//
//   sorting: d_model 300, 6 heads × 50, N = 512, L = 1024, M = 512, τ = 0.75, uniform
//   lm:      d_model 768, 12 heads × 64, N = 512, L = 512, M = 512, τ = 0.5, sticky (D = 128)
//
// Counters: `GFLOPS` counts the floating-point operations of the products this library
// performs per chunk (FlopCount below); the `Gemm` benchmarks time exactly those products on
// random matrices of the same shapes, so the ratio of the two rates says how close a chunk
// comes to pure matrix-product speed. `ref_GFLOP` is the count of the reference's
// association (keys, scores and the memory read at M points formed explicitly).
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <random>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "infinityformer/infinityformer.hpp"

namespace {

using Eigen::Index;

struct Config {
    const char* name;
    Index d_model, heads, basis, chunk, samples;
    double tau;
    bool sticky;
    Index bins;
};

constexpr Config kSorting{"sorting", 300, 6, 512, 1024, 512, 0.75, false, 128};
constexpr Config kLm{"lm", 768, 12, 512, 512, 512, 0.5, true, 128};

struct FlopCount {
    double ours;
    double reference;
};

// Products per chunk (2·m·n·k each); element-wise work is not counted.
FlopCount flops(const Config& c) {
    const double n = static_cast<double>(c.basis), e = static_cast<double>(c.d_model),
                 l = static_cast<double>(c.chunk), m = static_cast<double>(c.samples),
                 d = static_cast<double>(c.bins), h = static_cast<double>(c.heads), dh = e / h,
                 q = l;
    const double update_new = 2 * n * l * e;                             // G_newᵀ X
    const double update_past_ref = 2 * m * n * e + 2 * n * m * e;        // Ψ(s) B, G_pastᵀ (·)
    const double update_past = c.sticky ? 2 * d * n * e + 2 * n * d * e  // Ψ(edges) B, (G S)(·)
                                        : 2 * n * n * e;                 // A B
    const double values = 2 * n * e * e;
    const double context = 2 * h * q * n * dh;
    const double output = 2 * q * e * e;
    const double keys = 2 * n * e * e, scores = 2 * h * q * n * dh;
    const double mu_sigma_ref = 2 * 2 * h * q * n;
    const double mu_sigma = 2 * 2 * n * e + 2 * 2 * e * e + 2 * 2 * q * e;
    return {
        update_new + update_past + values + context + output + mu_sigma,
        update_new + update_past_ref + values + context + output + keys + scores + mu_sigma_ref};
}

template <typename Scalar>
using Mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

using bench::random_matrix;

template <typename Scalar>
void BM_Chunk(benchmark::State& state, Config c) {
    const auto p = bench::timed_params(c.basis, c.samples, c.bins, c.tau, c.sticky);
    infinityformer::LongTermAttention<Scalar> ltm(c.d_model, c.heads, c.chunk, p);
    std::mt19937_64 gen(11);
    // A few different chunks, cycled; three chunks first so every lazy operator exists.
    std::vector<Mat<Scalar>> xs, qs;
    for (int i = 0; i < 4; ++i) {
        xs.push_back(random_matrix<Scalar>(c.chunk, c.d_model, gen));
        qs.push_back(random_matrix<Scalar>(c.chunk, c.d_model, gen));
    }
    Mat<Scalar> out(c.chunk, c.d_model);
    for (int i = 0; i < 3; ++i) {
        ltm.update(xs[static_cast<std::size_t>(i)]);
        ltm.attend(qs[static_cast<std::size_t>(i)], out);
    }
    std::size_t i = 0;
    for (auto _ : state) {
        ltm.update(xs[i % xs.size()]);
        ltm.attend(qs[i % qs.size()], out);
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
        ++i;
    }
    const FlopCount f = flops(c);
    state.counters["GFLOPS"] =
        benchmark::Counter(f.ours * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["GFLOP"] = f.ours * 1e-9;
    state.counters["ref_GFLOP"] = f.reference * 1e-9;
}

// The same products as one chunk, on random matrices of the same shapes.
template <typename Scalar>
void BM_Gemm(benchmark::State& state, Config c) {
    std::mt19937_64 gen(12);
    const Index n = c.basis, e = c.d_model, l = c.chunk, d = c.bins, h = c.heads, dh = e / h;
    const Index past = c.sticky ? d : n;
    const Mat<Scalar> A = random_matrix<Scalar>(n, past, gen);
    const Mat<Scalar> P = random_matrix<Scalar>(past, e, gen);
    const Mat<Scalar> Psi = random_matrix<Scalar>(d, n, gen);
    const Mat<Scalar> C = random_matrix<Scalar>(n, l, gen);
    const Mat<Scalar> X = random_matrix<Scalar>(l, e, gen);
    const Mat<Scalar> B = random_matrix<Scalar>(n, e, gen);
    const Mat<Scalar> W = random_matrix<Scalar>(e, e, gen);
    const Mat<Scalar> R = random_matrix<Scalar>(h * l, n, gen);
    Mat<Scalar> Bn(n, e), V(n, e), ctx(l, e), out(l, e), edge(d, e);
    for (auto _ : state) {
        if (c.sticky) edge.noalias() = Psi * B;
        Bn.noalias() = A * P;
        Bn.noalias() += C * X;
        V.noalias() = B * W.transpose();
        for (Index k = 0; k < h; ++k)
            ctx.middleCols(k * dh, dh).noalias() =
                R.middleRows(k * l, l) * V.middleCols(k * dh, dh);
        out.noalias() = ctx * W.transpose();
        benchmark::DoNotOptimize(out.data());
        benchmark::DoNotOptimize(Bn.data());
        benchmark::DoNotOptimize(edge.data());
        benchmark::ClobberMemory();
    }
    const double gemm =
        2.0 * (static_cast<double>(c.sticky ? d * n * e : 0) + static_cast<double>(n * past * e) +
               static_cast<double>(n * l * e) + static_cast<double>(n * e * e) +
               static_cast<double>(h * l * n * dh) + static_cast<double>(l * e * e));
    state.counters["GFLOPS"] =
        benchmark::Counter(gemm * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["GFLOP"] = gemm * 1e-9;
}

}  // namespace

int main(int argc, char** argv) {
    for (const Config& c : {kSorting, kLm}) {
        const std::string name = c.name;
        const auto add = [&](const std::string& label, void (*fn)(benchmark::State&, Config)) {
            benchmark::RegisterBenchmark((label + "/" + name).c_str(), fn, c)
                ->Unit(benchmark::kMillisecond)
                ->UseRealTime();
        };
        add("Chunk<float>", BM_Chunk<float>);
        add("Gemm<float>", BM_Gemm<float>);
        add("Chunk<double>", BM_Chunk<double>);
        add("Gemm<double>", BM_Gemm<double>);
    }
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
