/// @file version.hpp
/// @brief Library version.
#pragma once

#include <string>

#define INFINITYFORMER_VERSION_MAJOR 0
#define INFINITYFORMER_VERSION_MINOR 1
#define INFINITYFORMER_VERSION_PATCH 0

namespace infinityformer {

/// The library version as "MAJOR.MINOR.PATCH".
inline std::string version_string() {
    return std::to_string(INFINITYFORMER_VERSION_MAJOR) + "." +
           std::to_string(INFINITYFORMER_VERSION_MINOR) + "." +
           std::to_string(INFINITYFORMER_VERSION_PATCH);
}

}  // namespace infinityformer
