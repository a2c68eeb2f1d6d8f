/// @file infinityformer.hpp
/// @brief Umbrella header: includes every part of the library.
#pragma once

#include "basis.hpp"
#include "continuous_attention.hpp"
#include "errors.hpp"
#include "gate.hpp"
#include "hyperparams.hpp"
#include "layer.hpp"
#include "long_term_attention.hpp"
#include "long_term_engine.hpp"
#include "memory.hpp"
#include "memory_operators.hpp"
#include "optim.hpp"
#include "parameter_view.hpp"
#include "positions.hpp"
#include "reach.hpp"
#include "ridge.hpp"
#include "sampling.hpp"
#include "short_term_attention.hpp"
#include "threads.hpp"
#include "version.hpp"
