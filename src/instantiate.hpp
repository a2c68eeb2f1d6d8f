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
// another instruction set. Each class template declares its two instantiations exported
// right after its definition (INFINITYFORMER_EXTERN_TEMPLATE, detail/config.hpp), before
// any use instantiates it implicitly; the definitions here take that visibility (an
// attribute repeated here would be ignored). Parts before the classes that hold them.
#define INFINITYFORMER_INSTANTIATE(Scalar)      \
    template class GaussianBasis<Scalar>;       \
    template class RidgeFit<Scalar>;            \
    template struct MemoryOperators<Scalar>;    \
    template class LongTermMemory<Scalar>;      \
    template class ContinuousAttention<Scalar>; \
    template class MemoryGate<Scalar>;          \
    template class ShortTermAttention<Scalar>;  \
    template class LongTermEngine<Scalar>;      \
    template class LongTermAttention<Scalar>;   \
    template class InfinityFormerLayer<Scalar>; \
    template class Adam<Scalar>;
