// B streams of a two-layer model through the stacked batch calls: each layer takes the B
// streams' chunks as one [B·L, d] matrix (rows b·L … (b+1)·L−1 are stream b's) on 2 threads,
// a training step runs the batch backward and Adam, and the whole model's state (both
// layers, every stream) goes to one file, with the weights in a safetensors file. A fresh
// model restored from the two files continues exactly as the model that never stopped.
#include <cmath>
#include <cstdio>
#include <infinityformer/infinityformer.hpp>
#include <infinityformer/io/safetensors.hpp>
#include <infinityformer/io/state.hpp>
#include <infinityformer/io/weights.hpp>
#include <vector>

using Layer = infinityformer::InfinityFormerLayerf;
using Matrix = Layer::Matrix;
namespace io = infinityformer::io;

constexpr Eigen::Index kStreams = 4, kD = 32, kHeads = 4, kLength = 16;
constexpr int kThreads = 2;

// Chunk c of every stream, stacked: stream b's tokens in rows b·L … (b+1)·L−1.
Matrix stacked_chunk(int c) {
    Matrix x(kStreams * kLength, kD);
    for (Eigen::Index b = 0; b < kStreams; ++b)
        for (Eigen::Index i = 0; i < kLength; ++i)
            for (Eigen::Index j = 0; j < kD; ++j)
                x(b * kLength + i, j) = static_cast<float>(
                    std::sin(0.37 * static_cast<double>(c * kLength + i) + 0.61 * j + 1.3 * b));
    return x;
}

struct Model {
    Layer first, second;
    explicit Model(const infinityformer::LongTermParams& p)
        : first(kD, kHeads, kLength, p), second(kD, kHeads, kLength, p) {
        first.set_num_streams(kStreams);
        second.set_num_streams(kStreams);
    }
    io::ModelParts<float> parts() { return {{"first", first}, {"second", second}}; }

    // Both layers on every stream's chunk: B streams on 2 threads, no copy of the batch.
    Matrix forward(const Matrix& x) {
        Matrix h(x.rows(), kD), y(x.rows(), kD);
        first.forward_batch(x, h, kThreads);
        second.forward_batch(h, y, kThreads);
        return y;
    }
};

int main() {
    auto params = infinityformer::LongTermParams::lm();  // sticky memories, memory gate
    params.num_basis = 32;
    params.widths = {0.05, 0.1};  // wide enough for 32 basis functions (stable memory)
    params.num_samples = 32;
    Model model(params);
    std::vector<infinityformer::Parameter<float>> weights = model.first.parameters();
    for (auto& p : model.second.parameters()) weights.push_back(p);
    infinityformer::Adam<float> adam(weights, {});

    // Training: predict the next chunk of each stream (loss ½‖Y − X_next‖²).
    for (int c = 0; c < 6; ++c) {
        const Matrix y = model.forward(stacked_chunk(c));
        const Matrix dy = y - stacked_chunk(c + 1);
        Matrix dh(dy.rows(), kD), dx(dy.rows(), kD);
        model.second.backward_batch(dy, 0.01f, dh, kThreads);
        model.first.backward_batch(dh, 0.01f, dx, kThreads);
        adam.step();
        adam.zero_grad();
        std::printf("chunk %d: loss %.4f\n", c, 0.5 * static_cast<double>(dy.squaredNorm()));
    }

    // Stop: the weights in one file, every stream of both layers in another.
    io::SafetensorsWriter file;
    io::save_weights(model.first, file, "first.");
    io::save_weights(model.second, file, "second.");
    file.save("batch_model.safetensors");
    io::save_model_state_file(model.parts(), "batch_model.state");

    // Restart: a fresh model (other initial weights) takes both files.
    auto other = params;
    other.seed = 2024;
    Model restarted(other);
    const auto loaded = io::Safetensors::load("batch_model.safetensors");
    io::load_weights(restarted.first, loaded, "first.");
    io::load_weights(restarted.second, loaded, "second.");
    io::restore_model_state_file(restarted.parts(), "batch_model.state");
    std::remove("batch_model.safetensors");
    std::remove("batch_model.state");

    int status = 0;
    for (int c = 6; c < 9; ++c) {
        const Matrix expected = model.forward(stacked_chunk(c));
        const Matrix y = restarted.forward(stacked_chunk(c));
        const bool same = y == expected;
        std::printf("chunk %d after the restart: %s (largest difference %g)\n", c,
                    same ? "identical" : "DIFFERENT",
                    static_cast<double>((y - expected).cwiseAbs().maxCoeff()));
        if (!same) status = 1;
    }
    return status;
}
