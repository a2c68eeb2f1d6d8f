#include <infinityformer/infinityformer.hpp>
#include <iostream>
#include <vector>

int main() {
    using Layer = infinityformer::InfinityFormerLayer<double>;
    using Matrix = Layer::Matrix;
    const Eigen::Index d_model = 8, num_heads = 2, chunk_length = 4, num_chunks = 5;

    infinityformer::LongTermParams params = infinityformer::LongTermParams::lm();
    params.num_basis = 18;  // small enough for a tiny model, large enough to be accepted
    params.num_samples = 8;
    params.seed = 1;
    Layer layer(d_model, num_heads, chunk_length, params);
    infinityformer::AdamOptions options;
    options.learning_rate = 1e-2;
    infinityformer::Adam<double> adam(layer.parameters(), options);

    // A fixed stream of chunks and a fixed target for each: Y* = X A.
    const Matrix A = 0.5 * Matrix::Random(d_model, d_model);
    std::vector<Matrix> chunks, targets;
    for (Eigen::Index c = 0; c < num_chunks; ++c) {
        chunks.push_back(Matrix::Random(chunk_length, d_model));
        targets.push_back(chunks.back() * A);
    }
    const double n = static_cast<double>(num_chunks * chunk_length * d_model);
    Matrix dX(chunk_length, d_model);
    for (int step = 0; step <= 300; ++step) {
        layer.reset();  // every step streams the same document from its start
        double loss = 0;
        for (std::size_t c = 0; c < chunks.size(); ++c) {
            const Matrix diff = layer.forward(chunks[c]) - targets[c];
            loss += diff.squaredNorm() / n;  // mean squared error over the stream
            // dY = 2 (Y - Y*) / n; gradients accumulate over the chunks (truncated
            // back-propagation: each chunk's backward stops at the memory of earlier ones).
            layer.backward(2.0 * diff / n, /*kl_weight=*/0.0, dX);
        }
        if (step % 50 == 0) std::cout << "step " << step << ": loss " << loss << "\n";
        adam.step();
        adam.zero_grad();
    }
}
