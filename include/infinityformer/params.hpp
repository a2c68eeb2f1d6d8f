/// @file params.hpp
/// @brief Deprecated name of hyperparams.hpp (kept so that existing includes compile).
#pragma once

#include "hyperparams.hpp"
