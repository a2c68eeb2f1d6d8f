/// @file parameters.hpp
/// @brief Deprecated name of parameter_view.hpp (kept so that existing includes compile).
#pragma once

#include "parameter_view.hpp"
