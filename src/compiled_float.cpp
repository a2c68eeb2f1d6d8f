/// @file src/compiled_float.cpp
/// @brief The compiled library's float instantiations (src/instantiate.hpp).
#include "instantiate.hpp"

namespace infinityformer {

INFINITYFORMER_INSTANTIATE(float)

const char* compiled_variant() noexcept { return INFINITYFORMER_VARIANT; }

// One thread until asked (threads.hpp): OpenMP would otherwise start one per core, under
// every caller thread that runs a stream.
namespace {
[[maybe_unused]] const bool one_thread_at_load = (Eigen::setNbThreads(1), true);
}  // namespace

void set_num_threads(int n) { detail::set_eigen_threads(n); }

int num_threads() noexcept { return Eigen::nbThreads(); }

}  // namespace infinityformer
