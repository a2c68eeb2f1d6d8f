// g++'s warnings on the whole library. The unit tests are compiled by clang (asan preset,
// three times faster), so the test gxx_library_warnings (ci preset) runs
//   g++ -std=c++17 -fsyntax-only -Wall -Wextra -Wpedantic -Werror
// on this file: every class template of the library instantiated for float and double, and
// every function template of the interchange headers. INFINITYFORMER_CHECK_SCALAR (float
// or double) instantiates one Scalar, so that the two halves run on two cores
// (gxx_library_warnings_float and _double). The optional blocks.hpp is read too: its
// classes instantiated, and its member and function templates called.
#define INFINITYFORMER_TEST_INSTANTIATE
#include <infinityformer/blocks.hpp>
#include <infinityformer/io/safetensors.hpp>
#include <infinityformer/io/state.hpp>
#include <infinityformer/io/weights.hpp>
#include <sstream>

#include "extern_templates.hpp"

#ifndef INFINITYFORMER_CHECK_SCALAR
#error "define INFINITYFORMER_CHECK_SCALAR as float or double"
#endif
INFINITYFORMER_TEST_CLASSES(template, INFINITYFORMER_CHECK_SCALAR)
template class infinityformer::Embedding<INFINITYFORMER_CHECK_SCALAR>;
template class infinityformer::LayerNorm<INFINITYFORMER_CHECK_SCALAR>;
template class infinityformer::FeedForward<INFINITYFORMER_CHECK_SCALAR>;
template class infinityformer::Linear<INFINITYFORMER_CHECK_SCALAR>;

namespace {

template <typename S>
[[maybe_unused]] void interchange(infinityformer::LongTermMemory<S>& memory,
                                  infinityformer::LongTermAttention<S>& attention,
                                  infinityformer::InfinityFormerLayer<S>& layer) {
    namespace io = infinityformer::io;
    std::stringstream s;
    io::save_state(memory, s);
    io::restore_state(memory, s);
    io::save_state(attention, s, 0);
    io::restore_state(attention, s, 0);
    io::save_state(layer, s, 0);
    io::restore_state(layer, s, 0);
    io::save_state_file(memory, "m");
    io::restore_state_file(memory, "m");
    io::save_state_file(attention, "a", 0);
    io::restore_state_file(attention, "a", 0);
    io::save_state_file(layer, "l", 0);
    io::restore_state_file(layer, "l", 0);
    io::SafetensorsWriter w;
    io::save_weights(attention, w, "a.");
    io::save_weights(layer, w, "l.");
    const auto file = io::Safetensors::parse(w.bytes());
    io::load_weights(attention, file, "a.");
    io::load_weights(layer, file, "l.");
    (void)io::describe(file, attention, "a.");
    (void)io::describe(file, layer, "l.");
}

template void interchange<INFINITYFORMER_CHECK_SCALAR>(
    infinityformer::LongTermMemory<INFINITYFORMER_CHECK_SCALAR>&,
    infinityformer::LongTermAttention<INFINITYFORMER_CHECK_SCALAR>&,
    infinityformer::InfinityFormerLayer<INFINITYFORMER_CHECK_SCALAR>&);

template <typename S>
[[maybe_unused]] double blocks(infinityformer::Embedding<S>& embedding,
                               const std::vector<int>& tokens, const std::vector<long>& targets) {
    using Matrix = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
    const Matrix x = embedding.forward(tokens);
    (void)embedding.forward(std::vector<unsigned char>{});
    Matrix dlogits;
    return infinityformer::softmax_cross_entropy(x, targets, dlogits) +
           infinityformer::softmax_cross_entropy(x, std::vector<std::size_t>{});
}

template double blocks<INFINITYFORMER_CHECK_SCALAR>(
    infinityformer::Embedding<INFINITYFORMER_CHECK_SCALAR>&, const std::vector<int>&,
    const std::vector<long>&);

}  // namespace
