/// @file infinityformer.hpp
/// @brief Umbrella header: includes every part of the library.
#pragma once

#include "basis.hpp"
#include "continuous_attention.hpp"
#include "errors.hpp"
#include "gate.hpp"
#include "layer.hpp"
#include "long_term_attention.hpp"
#include "memory.hpp"
#include "optim.hpp"
#include "parameters.hpp"
#include "params.hpp"
#include "ridge.hpp"
#include "version.hpp"
