/// @file detail/config.hpp
/// @brief Header-only or compiled: where the heavy members of the class templates come from.
///
/// Header-only (the default), every definition is read from the headers and compiled with
/// the including file's flags. With INFINITYFORMER_COMPILED (set by the CMake target
/// infinityformer::compiled) the out-of-line member definitions of the exported classes are
/// not read: calls go to the shared library libinfinityformer_compiled, which holds them for
/// float and double, built once per x86-64 level, the dynamic loader picking the best one
/// for the CPU (docs/design.md §9).
#pragma once

#include <Eigen/Core>

#if defined(INFINITYFORMER_COMPILED) && !defined(INFINITYFORMER_BUILDING_COMPILED)
#define INFINITYFORMER_HEADER_ONLY 0
#else
#define INFINITYFORMER_HEADER_ONLY 1
#endif

#if defined(__GNUC__) || defined(__clang__)
#define INFINITYFORMER_EXPORT __attribute__((visibility("default")))
#else
#define INFINITYFORMER_EXPORT
#endif

#if defined(INFINITYFORMER_BUILDING_COMPILED)
// Inside the compiled library, each exported class template declares its float and double
// instantiations, exported, right after its definition (INFINITYFORMER_EXTERN_TEMPLATE):
// before any use can instantiate the class implicitly with the library's hidden visibility
// (ridge.hpp and stability.hpp use GaussianBasis<double> whatever the Scalar), which would
// then be the class's visibility. src/instantiate.hpp defines them, each in the file of its
// Scalar, and the other Scalar's file calls them.
#define INFINITYFORMER_EXTERN_TEMPLATE(key, Class)          \
    extern template key INFINITYFORMER_EXPORT Class<float>; \
    extern template key INFINITYFORMER_EXPORT Class<double>;
#else
#define INFINITYFORMER_EXTERN_TEMPLATE(key, Class)
#endif

#if defined(INFINITYFORMER_COMPILED)
// The compiled library and its users must agree on how Eigen aligns what it allocates:
// a matrix allocated on one side is freed or resized on the other.
#if EIGEN_MAX_ALIGN_BYTES != 64 || EIGEN_DEFAULT_ALIGN_BYTES != 64 || EIGEN_MALLOC_ALREADY_ALIGNED
#error \
    "infinityformer::compiled is built with EIGEN_MAX_ALIGN_BYTES=64; compile this file with -DEIGEN_MAX_ALIGN_BYTES=64 (the CMake target infinityformer::compiled sets it) and without EIGEN_MALLOC_ALREADY_ALIGNED, or use the header-only target infinityformer::infinityformer"
#endif

namespace infinityformer {
/// The instruction set the loaded compiled library was built for ("x86-64",
/// "x86-64-v3", "x86-64-v4", or "generic" off x86-64): the one the dynamic loader chose.
INFINITYFORMER_EXPORT const char* compiled_variant() noexcept;
}  // namespace infinityformer
#endif

namespace infinityformer::detail {

/// True where a class template may be instantiated for Scalar: any floating-point type
/// header-only, float and double when its members come from the compiled library.
template <typename Scalar>
constexpr bool instantiable_scalar() {
#if INFINITYFORMER_HEADER_ONLY
    return std::is_floating_point_v<Scalar>;
#else
    return std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>;
#endif
}

}  // namespace infinityformer::detail
