/// @file src/instantiate.hpp
/// @brief The compiled library (infinityformer::compiled): the exported class templates,
/// explicitly instantiated for one Scalar. Each src/compiled_*.cpp instantiates one, and
/// CMakeLists.txt builds the pair once per x86-64 level (docs/design.md §9).
#pragma once

#ifndef INFINITYFORMER_BUILDING_COMPILED
#error "src/ is the compiled library's source: build it through CMake (infinityformer::compiled)"
#endif

#include <infinityformer/infinityformer.hpp>

// Default visibility for these instantiations only: the library is compiled with hidden
// visibility and a version script (src/exports.map), so Eigen's and the standard library's
// instantiations inside it stay its own and never bind to a caller's copies built for
// another instruction set.
// Parts before the classes that hold them: an explicit instantiation must come before the
// class is instantiated implicitly as a member's type, or its visibility would be ignored.
#define INFINITYFORMER_INSTANTIATE(Scalar)                          \
    template class INFINITYFORMER_EXPORT LongTermMemory<Scalar>;    \
    template class INFINITYFORMER_EXPORT LongTermAttention<Scalar>; \
    template class INFINITYFORMER_EXPORT InfinityFormerLayer<Scalar>;
