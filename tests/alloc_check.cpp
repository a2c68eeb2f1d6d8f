// Checks that streaming training (forward, backward over several streams, Adam step) and
// streaming inference allocate nothing once every stream is in its steady state.
// A separate executable: it replaces the global operator new to count allocations.
// GCC warns that the replacement delete below frees memory from "a mismatched allocation
// function": it sees std::allocator's operator new, which this file itself replaces.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

#include <cstdio>
#include <cstdlib>
#include <infinityformer/infinityformer.hpp>
#include <new>
#include <vector>

namespace {
long g_allocations = 0;
bool g_counting = false;
}  // namespace

void* operator new(std::size_t n) {
    if (g_counting) ++g_allocations;
    if (void* p = std::malloc(n ? n : 1)) return p;
    throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace {

template <typename Scalar>
long count_training(infinityformer::Sampling sampling, bool gate) {
    using Layer = infinityformer::InfinityFormerLayer<Scalar>;
    using Matrix = typename Layer::Matrix;
    auto p = infinityformer::LongTermParams::lm();
    p.num_basis = 16;
    p.num_samples = 8;
    p.sampling = sampling;
    p.gate = gate;
    // An under-resolved basis (N = 16): the stabilised update runs, rescaling included.
    p.stability = infinityformer::Stability::stabilise;
    const Eigen::Index d = 8, l = 6;
    Layer layer(d, 2, l, p);
    layer.set_num_streams(3);
    infinityformer::AdamOptions opt;
    opt.clip_norm = 1.0;
    opt.weight_decay = 0.01;
    infinityformer::Adam<Scalar> adam(layer.parameters(), opt);
    const Matrix X = Matrix::Random(l, d), dY = Matrix::Random(l, d);
    Matrix Y(l, d), dX(l, d);
    long counted = 0;
    for (int step = 0; step < 8; ++step) {
        g_allocations = 0;
        // From the fourth chunk on every stream has a full window and has refitted its memory
        // at least once (the first refit sizes the sampling workspace).
        g_counting = step >= 4;
        for (Eigen::Index s = 0; s < layer.num_streams(); ++s) {
            layer.forward(X, Y, s);
            layer.backward(dY, Scalar(0.01), dX, s);
        }
        adam.step();
        adam.zero_grad();
        g_counting = false;
        counted += g_allocations;
    }
    return counted;
}

// The stacked batch calls on `threads` threads, and forward() of row-major chunks: the
// allocations per steady step beyond the per-stream loop's none. forward_batch() and
// backward_batch() keep forward_streams()'s and backward_streams()'s bookkeeping (a few small
// vectors, the per-thread gradient sums of the backward, the threads started), but nothing
// per stream: the stacked blocks are used in place. Returns {forward_batch, backward_batch,
// forward_streams, backward_streams, row-major forward} allocations over 4 steady steps.
template <typename Scalar>
std::vector<long> count_batch(int threads) {
    using Layer = infinityformer::InfinityFormerLayer<Scalar>;
    using Matrix = typename Layer::Matrix;
    auto p = infinityformer::LongTermParams::lm();
    p.num_basis = 16;
    p.num_samples = 8;
    p.stability = infinityformer::Stability::stabilise;
    const Eigen::Index d = 8, l = 6, streams = 3;
    Layer batch(d, 2, l, p), lists(d, 2, l, p), rows(d, 2, l, p);
    batch.set_num_streams(streams);
    lists.set_num_streams(streams);
    // The stacked chunks inside larger matrices: blocks with an outer stride.
    Matrix X = Matrix::Random(streams * l + 2, d + 1), dY = Matrix::Random(streams * l + 2, d + 1);
    Matrix Y(streams * l + 2, d + 1), dX(streams * l + 2, d + 1);
    const std::vector<Matrix> Xs(static_cast<std::size_t>(streams), Matrix::Random(l, d)),
        dYs(static_cast<std::size_t>(streams), Matrix::Random(l, d));
    std::vector<Matrix> Ys, dXs;
    const typename Layer::RowMatrix Xr = Matrix::Random(l, d);
    typename Layer::RowMatrix Yr(l, d);
    std::vector<long> counted(5, 0);
    auto count = [&](std::size_t k, bool on, auto&& f) {
        g_allocations = 0;
        g_counting = on;
        f();
        g_counting = false;
        counted[k] += g_allocations;
    };
    for (int step = 0; step < 8; ++step) {
        const bool on = step >= 4;
        count(0, on, [&] {
            batch.forward_batch(X.block(1, 0, streams * l, d), Y.block(1, 0, streams * l, d),
                                threads);
        });
        count(1, on, [&] {
            batch.backward_batch(dY.block(1, 1, streams * l, d), Scalar(0.01),
                                 dX.block(0, 1, streams * l, d), threads);
        });
        count(2, on, [&] { lists.forward_streams(Xs, Ys, threads); });
        count(3, on, [&] { lists.backward_streams(dYs, Scalar(0.01), dXs, threads); });
        count(4, on, [&] { rows.forward(Xr, Yr); });
        batch.zero_grad();
        lists.zero_grad();
    }
    return counted;
}

}  // namespace

int main() {
    int failures = 0;
    const struct {
        const char* name;
        long allocations;
    } runs[] = {
        {"double, uniform, no gate",
         count_training<double>(infinityformer::Sampling::uniform, false)},
        {"double, sticky, gate", count_training<double>(infinityformer::Sampling::sticky, true)},
        {"double, stratified, gate",
         count_training<double>(infinityformer::Sampling::stratified, true)},
        {"float, sticky, gate", count_training<float>(infinityformer::Sampling::sticky, true)},
    };
    for (const auto& r : runs) {
        std::printf("%-28s allocations in 4 steady steps: %ld\n", r.name, r.allocations);
        if (r.allocations != 0) ++failures;
    }
    for (int threads : {1, 2}) {
        const auto b = count_batch<double>(threads);
        std::printf(
            "double, %d thread(s): allocations in 4 steady steps: forward_batch %ld "
            "(forward_streams %ld), backward_batch %ld (backward_streams %ld)\n",
            threads, b[0], b[2], b[1], b[3]);
        if (b[0] != b[2] || b[1] != b[3]) ++failures;
        if (threads == 1) {
            std::printf("double, row-major forward(X, Y): allocations in 4 steady steps: %ld\n",
                        b[4]);
            if (b[4] != 0) ++failures;
        }
    }
    return failures == 0 ? 0 : 1;
}
