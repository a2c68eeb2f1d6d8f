/// @file src/compiled_double.cpp
/// @brief The compiled library's double instantiations (src/instantiate.hpp).
#include "instantiate.hpp"

namespace infinityformer {

INFINITYFORMER_INSTANTIATE(double)

}  // namespace infinityformer
