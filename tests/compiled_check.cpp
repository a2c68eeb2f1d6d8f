// compiled_check [LEVEL]: which build of the compiled library the dynamic loader chose.
// Without LEVEL it must be the best x86-64 level this CPU has among those built; with LEVEL
// (run under `ld.so --glibc-hwcaps-mask LEVEL`) it must be LEVEL. Exit status 77 (skipped)
// where the CPU lacks LEVEL, 1 on a mismatch. Then one chunk through the layer and the
// long-term attention, whose outputs must be finite.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <infinityformer/infinityformer.hpp>
#include <string>

namespace {

// The best level of x86-64 that this CPU has and the library was built for.
std::string best_level(const std::string& built) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
    __builtin_cpu_init();
    if (built.find("x86-64-v4") != std::string::npos && __builtin_cpu_supports("x86-64-v4"))
        return "x86-64-v4";
    if (built.find("x86-64-v3") != std::string::npos && __builtin_cpu_supports("x86-64-v3"))
        return "x86-64-v3";
    return "x86-64";
#else
    (void)built;
    return "";  // unknown here: any level passes
#endif
}

bool cpu_has(const std::string& level) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
    __builtin_cpu_init();
    if (level == "x86-64-v4") return __builtin_cpu_supports("x86-64-v4");
    if (level == "x86-64-v3") return __builtin_cpu_supports("x86-64-v3");
#else
    (void)level;
#endif
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    const std::string loaded = infinityformer::compiled_variant();
    std::string expected;
    if (argc == 3) {  // LEVEL, then the levels that were built
        expected = argv[1];
        if (!cpu_has(expected)) {
            std::printf("this CPU lacks %s: skipped\n", expected.c_str());
            return 77;
        }
    } else if (argc == 2) {  // the levels that were built
        expected = best_level(argv[1]);
    } else {
        std::fprintf(stderr, "usage: compiled_check [LEVEL] BUILT_LEVELS\n");
        return 2;
    }
    std::printf("loaded: %s, expected: %s\n", loaded.c_str(),
                expected.empty() ? "(any)" : expected.c_str());
    if (!expected.empty() && loaded != expected) return 1;

    using Layer = infinityformer::InfinityFormerLayer<float>;
    Layer layer(16, 2, 8);
    double sum = 0;
    for (int c = 0; c < 4; ++c) sum += layer.forward(Layer::Matrix::Random(8, 16)).norm();
    infinityformer::LongTermAttention<double> ltm(8, 2, 8);
    const Eigen::MatrixXd X = Eigen::MatrixXd::Random(8, 8);
    sum += ltm.forward(X, X).norm();
    std::printf("sum of output norms: %g\n", sum);
    return std::isfinite(sum) ? 0 : 1;
}
