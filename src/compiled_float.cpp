/// @file src/compiled_float.cpp
/// @brief The compiled library's float instantiations (src/instantiate.hpp).
#include "instantiate.hpp"

namespace infinityformer {

INFINITYFORMER_INSTANTIATE(float)

const char* compiled_variant() noexcept { return INFINITYFORMER_VARIANT; }

}  // namespace infinityformer
