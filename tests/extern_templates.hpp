// Compile time: every test file includes this header, which declares the library's class
// templates for float and double as explicitly instantiated elsewhere
// (tests/instantiate_float.cpp, tests/instantiate_double.cpp), so that their member
// functions are compiled once for the whole test executable instead of once per file.
// Without optimisation (the sanitizer build) this halves the cost of a test file.
#pragma once

#include <infinityformer/infinityformer.hpp>

// X: `template` (definition) or `extern template` (declaration); S: the Scalar.
#define INFINITYFORMER_TEST_CLASSES(X, S)           \
    X class infinityformer::GaussianBasis<S>;       \
    X class infinityformer::RidgeFit<S>;            \
    X class infinityformer::SamplePointChooser<S>;  \
    X class infinityformer::LongTermMemory<S>;      \
    X class infinityformer::ContinuousAttention<S>; \
    X class infinityformer::MemoryGate<S>;          \
    X class infinityformer::LongTermAttention<S>;   \
    X class infinityformer::ShortTermAttention<S>;  \
    X class infinityformer::InfinityFormerLayer<S>; \
    X struct infinityformer::LongTermStream<S>;     \
    X struct infinityformer::LayerStream<S>;        \
    X class infinityformer::Adam<S>;

#ifndef INFINITYFORMER_TEST_INSTANTIATE
INFINITYFORMER_TEST_CLASSES(extern template, float)
INFINITYFORMER_TEST_CLASSES(extern template, double)
#endif
