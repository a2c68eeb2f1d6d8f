// Choosing a memory's parameters before training: how far back it holds its past, where a
// token of a given age sits on [0, 1], and what the constructor says about a configuration
// that cannot work.
#include <infinityformer/infinityformer.hpp>
#include <iostream>

namespace ifr = infinityformer;

int main() {
    // The sorting preset (tau 0.75, N 512, widths {0.01, 0.05}) over chunks of 1,024 tokens.
    const ifr::MemoryParams params = ifr::LongTermParams::sorting().memory_params();
    const Eigen::Index L = 1024;
    const ifr::MemoryReach reach = ifr::memory_reach(params, L);
    std::cout << "resolution " << reach.resolution << ", chunk gain " << reach.chunk_gain
              << ", holds its own chunk: " << (reach.holds_own_chunk ? "yes" : "no") << "\n"
              << "detail of 1,024 tokens is kept for about " << reach.horizon_tokens(1024)
              << " tokens, of 256 tokens for " << reach.horizon_tokens(256) << "\n";

    // A memory that has stored 64 chunks, read back where a token 5,000 tokens old sits.
    ifr::LongTermMemory<float> memory(/*dim=*/4, L, params);
    for (int c = 0; c < 64; ++c)
        memory.update(ifr::LongTermMemory<float>::Matrix::Constant(L, 4, c % 2 ? 1.f : -1.f));
    const double t = ifr::token_position(5000, L, params.tau, memory.tokens_stored());
    Eigen::VectorXf at(1);
    at << static_cast<float>(t);
    const int chunk = 63 - static_cast<int>(5000 / L);  // the chunk it arrived in
    std::cout << "a token 5,000 tokens old sits at t = " << t << ", where the memory reads "
              << memory.evaluate(at)(0, 0) << " (it was " << (chunk % 2 ? 1 : -1) << ")\n";

    // A reduced language-model memory: refused, with the nearest num_basis that works.
    ifr::MemoryParams small = ifr::LongTermParams::lm().memory_params();
    small.num_basis = 64;
    small.num_samples = 16;
    try {
        ifr::LongTermMemory<float> refused(4, /*chunk_length=*/16, small);
    } catch (const ifr::invalid_argument& e) {
        std::cout << e.what() << "\n";
        return 0;
    }
    return 1;  // the configuration above diverges and must have been refused
}
