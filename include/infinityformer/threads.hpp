/// @file threads.hpp
/// @brief How many threads one stream's products use: Eigen's matrix products and the
/// rows of E[ψ] are shared out between them (OpenMP).
#pragma once

#include <Eigen/Core>

#include "detail/config.hpp"
#include "errors.hpp"

namespace infinityformer {

/// Sets the number of threads that a single call (one stream's forward or backward, a
/// memory update) shares its products between: Eigen's OpenMP threads, which split the
/// large matrix products, and the rows of E[ψ]. The default is 1, so that calls running
/// on threads of their own (forward_streams(), backward_streams(), a caller's pool) do not
/// multiply threads; a latency-bound program with one long stream sets the number of cores.
///
/// The compiled library (infinityformer::compiled) is built with OpenMP and takes the
/// setting for all its classes. Header-only, it takes effect only in a program compiled
/// with OpenMP (-fopenmp); otherwise every call runs on the calling thread and
/// num_threads() stays 1. A program that routes Eigen's products to OpenBLAS
/// (infinityformer::openblas) sets OpenBLAS's own threads the same way
/// (openblas_set_num_threads), so that the two do not multiply.
/// @throws infinityformer::invalid_argument if n < 1 (nothing changed).
namespace detail {
/// set_num_threads() on the Eigen of the file that compiles it (the program's header-only,
/// the library's in src/compiled_float.cpp): the one body of both.
inline void set_eigen_threads(int n) {
    require(n >= 1, "infinityformer::set_num_threads", "n is ", n, ", expected >= 1");
    Eigen::setNbThreads(n);
}
}  // namespace detail

#ifndef INFINITYFORMER_COMPILED  // header-only: this program's own Eigen
inline void set_num_threads(int n) { detail::set_eigen_threads(n); }
/// The threads a call shares its products between (1 without OpenMP).
inline int num_threads() noexcept { return Eigen::nbThreads(); }
#else  // the compiled library's Eigen (src/compiled_float.cpp)
INFINITYFORMER_EXPORT void set_num_threads(int n);
INFINITYFORMER_EXPORT int num_threads() noexcept;
#endif

}  // namespace infinityformer
