// A stream that survives a restart: save the layer's weights (safetensors) and the stream's
// state, build a new layer as a restarted program would, load both, and continue. The
// restarted stream gives exactly the outputs of the stream that never stopped.
#include <cmath>
#include <cstdio>
#include <infinityformer/infinityformer.hpp>
#include <infinityformer/io/safetensors.hpp>
#include <infinityformer/io/state.hpp>
#include <infinityformer/io/weights.hpp>
#include <iostream>

using Layer = infinityformer::InfinityFormerLayerf;

// Chunk c of a deterministic stream (L x d).
Layer::Matrix chunk(int c, Eigen::Index length, Eigen::Index d) {
    Layer::Matrix x(length, d);
    for (Eigen::Index i = 0; i < length; ++i)
        for (Eigen::Index j = 0; j < d; ++j)
            x(i, j) = static_cast<float>(std::sin(0.37 * (c * length + i) + 0.61 * j));
    return x;
}

int main() {
    namespace io = infinityformer::io;
    auto params = infinityformer::LongTermParams::lm();  // sticky memories, memory gate
    params.num_basis = 128;
    params.num_samples = 128;
    const Eigen::Index d = 32, heads = 4, length = 64;

    Layer layer(d, heads, length, params);
    for (int c = 0; c < 6; ++c) layer.forward(chunk(c, length, d));

    // Before stopping: the weights and the stream's state, in two files.
    io::SafetensorsWriter weights;
    io::save_weights(layer, weights);
    weights.save("layer.safetensors");
    io::save_state_file(layer, "stream.state");

    // The stream that never stops, for comparison.
    const Layer::Matrix expected = layer.forward(chunk(6, length, d));

    // After a restart: a new layer (its own initial weights) takes both files.
    auto other = params;
    other.seed = 2024;
    Layer restarted(d, heads, length, other);
    io::load_weights(restarted, io::Safetensors::load("layer.safetensors"), "");
    io::restore_state_file(restarted, "stream.state");
    const Layer::Matrix y = restarted.forward(chunk(6, length, d));

    const bool same = y == expected;
    std::cout << "chunk 6 after the restart is " << (same ? "identical" : "DIFFERENT")
              << " (largest difference " << (y - expected).cwiseAbs().maxCoeff() << ")\n";
    std::remove("layer.safetensors");
    std::remove("stream.state");
    return same ? 0 : 1;
}
