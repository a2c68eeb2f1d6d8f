#include <infinityformer/infinityformer.hpp>
#include <iostream>

int main() {
    using Layer = infinityformer::InfinityFormerLayer<float>;
    const Eigen::Index d_model = 64, num_heads = 4, chunk_length = 128;

    // The authors' language-model configuration: sticky memories, memory gate, tau = 0.5.
    infinityformer::LongTermParams params = infinityformer::LongTermParams::lm();
    params.seed = 7;  // seeds the initial weights and the sticky sampling
    Layer layer(d_model, num_heads, chunk_length, params);

    // Tokens are rows. Chunk c attends to chunk c - 1 directly and to everything older
    // through the long-term memory, whose size stays num_basis x d_model.
    for (int c = 0; c < 5; ++c) {
        const Layer::Matrix X = Layer::Matrix::Random(chunk_length, d_model);
        const Layer::Matrix Y = layer.forward(X);  // chunk_length x d_model
        const auto& memory = layer.long_term().memory();
        std::cout << "chunk " << c << ": |Y| = " << Y.norm() << ", memory "
                  << memory.coefficients().rows() << " x " << memory.coefficients().cols()
                  << " holding " << memory.tokens_stored() << " tokens\n";
    }
    layer.reset();  // start a new document
}
