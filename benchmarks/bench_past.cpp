// Cost per chunk against the length of the past, 1,024 to 1,048,576 tokens: the ∞-former's
// long-term memory attention next to exact softmax attention over the whole past.
//
// Shapes: the sorting configuration (d_model 300, 6 heads × 50, N = 512, L = 1024, M = 512,
// τ = 0.75, uniform sampling), float, batch 1.
//
//  - Infinity/T: one stream is first fed T tokens (untimed), then each iteration is one
//    chunk: memory update + attention of the chunk's L queries + output projection.
//  - Exact/T: a key/value cache holding T past tokens (random; the cost does not depend on
//    the values). Each iteration is one chunk: key and value projections of the new chunk,
//    attention of its L queries over the T + L keys (per head, blocks of 1,024 keys with a
//    running maximum and sum, so the scores never exceed 1,024 × L; the exponentials are
//    Eigen's vectorised ones), and the output
//    projection. There is no causal mask inside the chunk (it changes the cost by < L/T).
//
// The benchmarks run in order of T and share the stream, so the whole run streams about
// 1M tokens once.
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "infinityformer/infinityformer.hpp"

namespace {

using Eigen::Index;
using Matrix = Eigen::MatrixXf;
using Vector = Eigen::VectorXf;

constexpr Index kModel = 300, kHeads = 6, kChunk = 1024, kBlock = 1024;
constexpr Index kMaxPast = Index(1) << 20;

Matrix random_matrix(Index rows, Index cols, std::mt19937_64& gen) {
    return bench::random_matrix<float>(rows, cols, gen);
}

struct Inputs {
    std::vector<Matrix> chunks, queries;
    Inputs() {
        std::mt19937_64 gen(21);
        for (int i = 0; i < 4; ++i) {
            chunks.push_back(random_matrix(kChunk, kModel, gen));
            queries.push_back(random_matrix(kChunk, kModel, gen));
        }
    }
};

const Inputs& inputs() {
    static const Inputs in;
    return in;
}

infinityformer::LongTermAttention<float>& stream() {
    static infinityformer::LongTermAttention<float> ltm = [] {
        infinityformer::LongTermParams p;  // N = 512, M = 512, τ = 0.75: the sorting model
        // Warm the machine up (clock, caches, the process's heap) on a throw-away stream of
        // the same shapes, so that the first measured point is not the first work done.
        infinityformer::LongTermAttention<float> warm(kModel, kHeads, kChunk, p);
        Matrix out(kChunk, kModel);
        for (std::size_t i = 0; i < 20; ++i) {
            warm.update(inputs().chunks[i % 4]);
            warm.attend(inputs().queries[i % 4], out);
        }
        return infinityformer::LongTermAttention<float>(kModel, kHeads, kChunk, p);
    }();
    return ltm;
}

void BM_Infinity(benchmark::State& state) {
    const Index past = state.range(0);
    auto& ltm = stream();
    const Inputs& in = inputs();
    Matrix out(kChunk, kModel);
    std::size_t i = 0;
    while (ltm.memory().tokens_stored() < past) {
        ltm.update(in.chunks[i % 4]);
        ltm.attend(in.queries[i % 4], out);
        ++i;
    }
    for (auto _ : state) {
        ltm.update(in.chunks[i % 4]);
        ltm.attend(in.queries[i % 4], out);
        benchmark::DoNotOptimize(out.data());
        ++i;
    }
    state.counters["past_tokens"] = static_cast<double>(past);
}

// Exact attention: weights, a key/value cache of kMaxPast + L rows, workspaces.
struct Exact {
    Matrix wq, wk, wv, wo, keys, values;
    Matrix context, out, scores, acc, qt;
    Vector run_max, run_sum;
    Exact() {
        std::mt19937_64 gen(22);
        const float bound = 1.0f / std::sqrt(static_cast<float>(kModel));
        wk = random_matrix(kModel, kModel, gen) * bound;
        wv = random_matrix(kModel, kModel, gen) * bound;
        wo = random_matrix(kModel, kModel, gen) * bound;
        // A random block of 64k rows, tiled: the values do not change the cost.
        const Index tile = 65536;
        const Matrix k0 = random_matrix(tile, kModel, gen), v0 = random_matrix(tile, kModel, gen);
        keys.resize(kMaxPast + kChunk, kModel);
        values.resize(kMaxPast + kChunk, kModel);
        for (Index r = 0; r < keys.rows(); r += tile) {
            const Index n = std::min(tile, keys.rows() - r);
            keys.middleRows(r, n) = k0.topRows(n);
            values.middleRows(r, n) = v0.topRows(n);
        }
    }

    // One chunk with `past` cached tokens.
    void chunk(const Matrix& X, const Matrix& Q, Index past) {
        const Index dh = kModel / kHeads;
        const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
        keys.middleRows(past, kChunk).noalias() = X * wk.transpose();
        values.middleRows(past, kChunk).noalias() = X * wv.transpose();
        const Index total = past + kChunk;
        context.resize(kChunk, kModel);
        for (Index h = 0; h < kHeads; ++h) {
            // Transposed layout (keys × queries), so that every per-query reduction and
            // exponential runs down a contiguous column.
            qt = Q.middleCols(h * dh, dh).transpose();  // dh × L
            run_max.setConstant(kChunk, -std::numeric_limits<float>::infinity());
            run_sum.setZero(kChunk);
            acc.setZero(dh, kChunk);
            for (Index b = 0; b < total; b += kBlock) {
                const Index n = std::min(kBlock, total - b);
                scores.resize(n, kChunk);
                scores.noalias() = scale * keys.block(b, h * dh, n, dh) * qt;
                for (Index j = 0; j < kChunk; ++j) {
                    auto col = scores.col(j).array();
                    const float m = std::max(run_max[j], col.maxCoeff());
                    const float r = std::exp(run_max[j] - m);
                    col = (col - m).exp();
                    run_sum[j] = run_sum[j] * r + col.sum();
                    acc.col(j) *= r;
                    run_max[j] = m;
                }
                acc.noalias() += values.block(b, h * dh, n, dh).transpose() * scores;
            }
            context.middleCols(h * dh, dh) =
                (acc * run_sum.cwiseInverse().asDiagonal()).transpose();
        }
        out.noalias() = context * wo.transpose();
    }
};

void BM_Exact(benchmark::State& state) {
    static Exact exact;
    const Index past = state.range(0);
    const Inputs& in = inputs();
    std::size_t i = 0;
    for (auto _ : state) {
        exact.chunk(in.chunks[i % 4], in.queries[i % 4], past);
        benchmark::DoNotOptimize(exact.out.data());
        ++i;
    }
    state.counters["past_tokens"] = static_cast<double>(past);
}

}  // namespace

int main(int argc, char** argv) {
    for (Index past = 1024; past <= kMaxPast; past *= 2) {
        const auto iterations = past >= 131072 ? 1 : past >= 16384 ? 3 : 10;
        benchmark::RegisterBenchmark("Infinity", BM_Infinity)
            ->Arg(past)
            ->Iterations(40)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
        benchmark::RegisterBenchmark("Exact", BM_Exact)
            ->Arg(past)
            ->Iterations(iterations)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
    }
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
