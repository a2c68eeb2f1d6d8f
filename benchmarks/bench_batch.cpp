// B = 8 streams of one InfinityFormerLayer<float> at the sorting configuration
// (LongTermParams::sorting(): d_model 300, 6 heads, L = 1024, N = 512, M = 512, uniform
// sampling), one chunk per stream per iteration, in the steady state (each stream past its
// third chunk):
//
//   BM_Loop            the plain loop: forward(X_b, Y_b, b) for b = 0 … 7, blocks of the
//                      stacked input and output
//   BM_Batch/threads:T forward_batch(X, Y, T) on the stacked [8·L, d] input
//
// Real time (the batch starts threads); `stream_chunks_per_s` is 8 / the time of an
// iteration. The batch on 1 thread against the loop is the cost of the batch's bookkeeping
// (expected: none measurable); on 2 threads, what the second core gives.
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <random>

#include "bench_common.hpp"
#include "infinityformer/infinityformer.hpp"

namespace {

using Eigen::Index;
using Layer = infinityformer::InfinityFormerLayer<float>;
using Mat = Layer::Matrix;

constexpr Index kStreams = 8, kD = 300, kHeads = 6, kL = 1024;

struct Setup {
    Layer layer{kD, kHeads, kL, infinityformer::LongTermParams::sorting()};
    Mat x, y;
    Setup() {
        layer.set_num_streams(kStreams);
        std::mt19937_64 gen(21);
        x = bench::random_matrix<float>(kStreams * kL, kD, gen);
        y.resize(kStreams * kL, kD);
        for (int c = 0; c < 3; ++c) layer.forward_batch(x, y, 2);  // every operator sized
    }
};

void finish(benchmark::State& state) {
    state.counters["stream_chunks_per_s"] = benchmark::Counter(
        static_cast<double>(kStreams), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Loop(benchmark::State& state) {
    Setup s;
    for (auto _ : state) {
        for (Index b = 0; b < kStreams; ++b)
            s.layer.forward(s.x.middleRows(b * kL, kL), s.y.middleRows(b * kL, kL), b);
        benchmark::DoNotOptimize(s.y.data());
        benchmark::ClobberMemory();
    }
    finish(state);
}

void BM_Batch(benchmark::State& state) {
    Setup s;
    const int threads = static_cast<int>(state.range(0));
    for (auto _ : state) {
        s.layer.forward_batch(s.x, s.y, threads);
        benchmark::DoNotOptimize(s.y.data());
        benchmark::ClobberMemory();
    }
    finish(state);
}

}  // namespace

BENCHMARK(BM_Loop)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(4);
BENCHMARK(BM_Batch)
    ->ArgName("threads")
    ->Arg(1)
    ->Arg(2)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(4);

BENCHMARK_MAIN();
