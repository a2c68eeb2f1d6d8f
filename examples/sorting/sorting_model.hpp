// The sorting model's parts come from the library's optional <infinityformer/blocks.hpp>
// (token embedding, layer normalisation, feed-forward block, linear output head, softmax
// cross-entropy; tests/test_blocks.cpp checks their backward passes). What is the sorting
// model's own is its initialisation: N(0, 1) for the embedding, N(0, 1/d) and N(0, 1/f)
// for the feed-forward weights, all drawn in order from the model's one generator (the
// library's modules would seed each from a seed of its own), written in with set_weights().
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <infinityformer/blocks.hpp>
#include <random>

namespace sorting {

template <typename S>
using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
template <typename S>
using Vec = Eigen::Matrix<S, Eigen::Dynamic, 1>;
using Index = Eigen::Index;

template <typename S>
Mat<S> normal_matrix(Index rows, Index cols, double scale, std::mt19937_64& rng) {
    std::normal_distribution<double> n(0.0, scale);
    Mat<S> m(rows, cols);
    for (Index i = 0; i < m.size(); ++i) m(i) = static_cast<S>(n(rng));
    return m;
}

/// A V × d embedding with N(0, 1) rows drawn from `rng`.
template <typename S>
infinityformer::Embedding<S> make_embedding(Index vocabulary, Index d, std::mt19937_64& rng) {
    infinityformer::Embedding<S> e(vocabulary, d);
    e.set_weights({normal_matrix<S>(vocabulary, d, 1.0, rng)});
    return e;
}

/// relu(x W1ᵀ + b1) W2ᵀ + b2 with W1 (f × d) from N(0, 1/d), then W2 (d × f) from N(0, 1/f),
/// drawn from `rng`; zero biases.
template <typename S>
infinityformer::FeedForward<S> make_feed_forward(Index d, Index f, std::mt19937_64& rng) {
    infinityformer::FeedForward<S> ff(d, f);
    auto w = ff.weights();
    w.w1 = normal_matrix<S>(f, d, 1.0 / std::sqrt(double(d)), rng);
    w.w2 = normal_matrix<S>(d, f, 1.0 / std::sqrt(double(f)), rng);
    ff.set_weights(w);
    return ff;
}

/// The output head x Wᵀ + b over `outputs` symbols, W from N(0, 1/d) drawn from `rng`, b = 0.
template <typename S>
infinityformer::Linear<S> make_head(Index d, Index outputs, std::mt19937_64& rng) {
    infinityformer::Linear<S> head(d, outputs);
    head.set_weights(
        {normal_matrix<S>(outputs, d, 1.0 / std::sqrt(double(d)), rng), Vec<S>::Zero(outputs)});
    return head;
}

}  // namespace sorting
