// A whole small model around InfinityFormerLayer, from the library's parts:
//   Embedding → 2 × [InfinityFormerLayer + residual, LayerNorm, FeedForward + residual,
//   LayerNorm] → Linear head → softmax cross-entropy,
// trained with one Adam over every parameter (the blocks' parameters() and each layer's)
// on next-token prediction over a stream of chunks: a fixed sequence of 24 tokens over a
// vocabulary of 8, repeated, so that the next token depends on more than the current one.
// Each chunk is differentiated right after its forward (truncated back-propagation, as
// the layer does); the gradients of the stream's chunks add up before each Adam step.
// Prints the loss, and returns non-zero if it did not fall.
#include <cstdio>
#include <infinityformer/blocks.hpp>
#include <infinityformer/infinityformer.hpp>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace inf = infinityformer;
using Matrix = Eigen::MatrixXd;
using Index = Eigen::Index;

struct Block {
    inf::InfinityFormerLayer<double> attention;
    inf::LayerNorm<double> norm1, norm2;
    inf::FeedForward<double> ff;
    Block(Index d, Index heads, Index chunk, const inf::LongTermParams& p, std::uint64_t seed)
        : attention(d, heads, chunk, p), norm1(d), norm2(d), ff(d, 2 * d, seed) {}
};

int main() {
    const Index vocabulary = 8, d = 16, heads = 2, chunk = 8, chunks_per_stream = 6;
    inf::LongTermParams params = inf::LongTermParams::sorting();
    params.num_basis = 32;  // a small memory for a small model
    params.num_samples = 32;

    inf::Embedding<double> embedding(vocabulary, d, /*seed=*/1);
    std::vector<std::unique_ptr<Block>> blocks;  // the layers' parameter views need fixed homes
    for (std::uint64_t b = 0; b < 2; ++b) {
        params.seed = 10 + b;
        blocks.push_back(std::make_unique<Block>(d, heads, chunk, params, 20 + b));
    }
    inf::Linear<double> head(d, vocabulary, /*seed=*/3);

    std::vector<inf::Parameter<double>> parameters;
    auto add = [&](std::vector<inf::Parameter<double>> ps, const std::string& prefix) {
        for (auto& p : ps) {
            p.name = prefix + p.name;
            parameters.push_back(p);
        }
    };
    add(embedding.parameters(), "embedding.");
    for (std::size_t b = 0; b < blocks.size(); ++b) {
        const std::string n = "block" + std::to_string(b) + ".";
        add(blocks[b]->attention.parameters(), n + "attention.");
        add(blocks[b]->norm1.parameters(), n + "norm1.");
        add(blocks[b]->ff.parameters(), n + "ff.");
        add(blocks[b]->norm2.parameters(), n + "norm2.");
    }
    add(head.parameters(), "head.");
    inf::AdamOptions options;
    options.learning_rate = 1e-2;
    inf::Adam<double> adam(parameters, options);

    // The stream: a fixed random sequence of 24 tokens, repeated.
    std::mt19937_64 rng(5);
    std::vector<int> pattern(24);
    for (auto& t : pattern) t = static_cast<int>(rng() % vocabulary);
    auto token = [&](Index i) { return pattern[std::size_t(i % 24)]; };

    std::printf("%zu parameter blocks\n", parameters.size());
    double first = 0, last = 0;
    const int steps = 20;
    for (int step = 0; step < steps; ++step) {
        for (auto& b : blocks) b->attention.reset();  // every step streams from the start
        double loss = 0;
        for (Index c = 0; c < chunks_per_stream; ++c) {
            std::vector<int> tokens, targets;
            for (Index i = 0; i < chunk; ++i) {
                tokens.push_back(token(c * chunk + i));
                targets.push_back(token(c * chunk + i + 1));
            }
            // forward
            Matrix x = embedding.forward(tokens);
            for (auto& b : blocks) {
                const Matrix h = b->norm1.forward(x + b->attention.forward(x));
                x = b->norm2.forward(h + b->ff.forward(h));
            }
            Matrix dlogits;
            loss += inf::softmax_cross_entropy(head.forward(x), targets, dlogits) /
                    double(chunks_per_stream);
            // backward of the chunk's share of the stream's mean loss
            Matrix dx = head.backward(dlogits / double(chunks_per_stream)), dlayer(chunk, d);
            for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) {
                Block& b = **it;
                const Matrix dh2 = b.norm2.backward(dx);
                const Matrix dh = dh2 + b.ff.backward(dh2);
                const Matrix dsum = b.norm1.backward(dh);
                b.attention.backward(dsum, /*kl_weight=*/0.0, dlayer);
                dx = dsum + dlayer;
            }
            embedding.backward(dx);
        }
        adam.step();
        adam.zero_grad();
        if (step == 0) first = loss;
        last = loss;
        if (step % 4 == 0 || step == steps - 1)
            std::printf("step %2d: mean next-token loss %.4f\n", step, loss);
    }
    const bool fell = last < 0.8 * first;
    std::printf("loss %.4f -> %.4f: %s\n", first, last, fell ? "it fell" : "it did NOT fall");
    return fell ? 0 : 1;
}
