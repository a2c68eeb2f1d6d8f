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
    return failures == 0 ? 0 : 1;
}
