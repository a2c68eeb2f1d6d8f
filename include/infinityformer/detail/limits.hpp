/// @file detail/limits.hpp
/// @brief Sizes refused before anything is allocated: products of dimensions computed in
/// double (no signed overflow), compared with the index range and with the machine's memory.
#pragma once

#include <Eigen/Core>
#include <limits>

#include "../errors.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

namespace infinityformer::detail {

/// The machine's physical memory in bytes (sysconf), or the largest index if unknown.
inline double memory_budget_bytes() {
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGE_SIZE)
    const long pages = sysconf(_SC_PHYS_PAGES);
    const long page = sysconf(_SC_PAGE_SIZE);
    if (pages > 0 && page > 0) return static_cast<double>(pages) * static_cast<double>(page);
#endif
    return static_cast<double>(std::numeric_limits<Eigen::Index>::max());
}

/// Refuses a size whose largest matrix would overflow Eigen's index or whose total would
/// not fit in the machine's memory. `largest` is the element count of the largest single
/// matrix, `bytes` the estimated total; both computed in double by the caller.
inline void require_allocatable(const char* where, const char* what, double largest, double bytes) {
    const double index_max = static_cast<double>(std::numeric_limits<Eigen::Index>::max()) / 16;
    require(largest <= index_max, where, what, " needs a matrix of ", largest,
            " entries, more than the index range allows (", index_max, ")");
    const double budget = memory_budget_bytes();
    require(bytes <= budget, where, what, " needs about ", bytes,
            " bytes, more than this machine's memory (", budget, " bytes)");
}

}  // namespace infinityformer::detail
