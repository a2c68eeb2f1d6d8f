// The sorting model: token embedding plus sinusoidal positions, blocks of
// layer norm → attention → residual → layer norm → feed-forward → residual, a final layer
// norm and the output over the 21 symbols. The attention is the library's
// InfinityFormerLayer (`infinity`: uniform sampling, `sticky`: sticky memories) or, for the
// `window` baseline, the library's ShortTermAttention alone (the current and the previous
// chunk, Transformer-XL style). Trained with truncated back-propagation: a sequence is
// left-padded to whole chunks so that its 20 targets lie in its last chunk, every chunk is
// run forward, and only the last one backward. The embedding, the layer norms, the
// feed-forward blocks, the output head and the cross-entropy are the library's
// (<infinityformer/blocks.hpp>), with this model's initialisation (sorting_model.hpp).
#pragma once

#include <algorithm>
#include <infinityformer/infinityformer.hpp>
#include <infinityformer/io/safetensors.hpp>
#include <memory>
#include <string>
#include <vector>

#include "sorting_data.hpp"
#include "sorting_model.hpp"

namespace sorting {

enum class Kind { window, infinity, sticky };

inline std::string to_string(Kind k) {
    return k == Kind::window ? "window" : k == Kind::infinity ? "infinity" : "sticky";
}
inline Kind kind_from(const std::string& s) {
    if (s == "window") return Kind::window;
    if (s == "infinity") return Kind::infinity;
    if (s == "sticky") return Kind::sticky;
    throw std::invalid_argument("--model is '" + s + "', expected window, infinity or sticky");
}

struct Config {
    Kind kind = Kind::infinity;
    Index d = 64, heads = 4, layers = 2, ff = 256, chunk = 128;
    Index num_basis = 128, num_samples = 128;
    std::uint64_t seed = 1;
    double kl_m = 1e-6;  // the authors' weight of mean(KL)
    // window only: skip the chunks the last one cannot see. Block b of chunk c attends to
    // block b's inputs of chunks c−1 and c, so the last chunk's output depends on the
    // inputs of its `layers` predecessors alone, and the result is the same without them.
    bool skip_unseen = true;
};

constexpr int kPad = kVocabulary;  // a 22nd token: left padding to whole chunks

template <typename S>
class Model {
public:
    using Matrix = Mat<S>;

    explicit Model(const Config& c)
        : cfg_(checked(c)),
          rng_(c.seed),
          emb_(make_embedding<S>(kVocabulary + 1, c.d, rng_)),
          final_(c.d),
          head_(c.d, kVocabulary) {
        auto p = c.kind == Kind::sticky ? infinityformer::LongTermParams::lm()
                                        : infinityformer::LongTermParams::sorting();
        p.gate = false;
        p.num_basis = c.num_basis;
        p.num_samples = c.num_samples;
        p.num_bins = 128;
        p.stability = infinityformer::Stability::stabilise;
        for (Index b = 0; b < c.layers; ++b) {
            p.seed = c.seed * 1000 + static_cast<std::uint64_t>(b);
            blocks_.push_back(std::make_unique<Block>(c, p, rng_));
        }
        head_ = make_head<S>(c.d, kVocabulary, rng_);  // drawn after the blocks' weights
        position_.resize(c.chunk, c.d);
        for (Index i = 0; i < c.chunk; ++i)
            for (Index j = 0; j < c.d; ++j) {
                const double f = std::pow(10000.0, -double(2 * (j / 2)) / double(c.d));
                position_(i, j) = static_cast<S>(j % 2 == 0 ? std::sin(i * f) : std::cos(i * f));
            }
        params_ = collect();
    }

    const Config& config() const { return cfg_; }
    std::vector<infinityformer::Parameter<S>>& parameters() { return params_; }
    void zero_grad() {
        for (auto& p : params_) p.gradient().setZero();
    }

    /// Runs one sequence; returns its mean cross-entropy over the 20 targets and sets
    /// `correct`. With `train`, the gradients of `scale` × (that loss + the KL term)
    /// accumulate.
    double run(const Sequence& s, bool train, int& correct, S scale = S(1)) {
        const Index l = cfg_.chunk;
        std::vector<int> tokens(s.stream);
        tokens.push_back(kSeparator);
        for (int k = 0; k + 1 < kSymbols; ++k) tokens.push_back(s.target[std::size_t(k)]);
        const Index n = static_cast<Index>(tokens.size());
        const Index chunks = (n + l - 1) / l;
        tokens.insert(tokens.begin(), static_cast<std::size_t>(chunks * l - n), kPad);
        for (auto& b : blocks_) b->reset();
        Matrix logits;
        const Index first = cfg_.kind == Kind::window && cfg_.skip_unseen
                                ? std::max<Index>(0, chunks - 1 - cfg_.layers)
                                : 0;
        for (Index c = first; c < chunks; ++c) {
            const std::vector<int> chunk(tokens.begin() + c * l, tokens.begin() + (c + 1) * l);
            forward_chunk(chunk, logits);
            if (c + 1 < chunks) continue;
            // The separator, then targets 0 … 18 fed back: the last 20 rows have a target.
            std::vector<Index> targets(static_cast<std::size_t>(l), infinityformer::ignore_target);
            correct = 0;
            for (int k = 0; k < kSymbols; ++k) {
                const Index row = l - kSymbols + k;
                targets[std::size_t(row)] = s.target[std::size_t(k)];
                Index best = 0;
                logits.row(row).maxCoeff(&best);
                if (best == s.target[std::size_t(k)]) ++correct;
            }
            Matrix dlogits;
            const double loss = infinityformer::softmax_cross_entropy(logits, targets, dlogits);
            if (train) backward_chunk(Matrix(dlogits * scale), scale);
            return loss;
        }
        return 0;
    }

    /// Weights (F32) and the configuration (metadata) in a safetensors file.
    void save(const std::string& path) {
        namespace io = infinityformer::io;
        io::SafetensorsWriter w;
        for (auto& p : params_) w.add(p.name, p.values(), io::DType::F32);
        w.metadata("sorting.kind", to_string(cfg_.kind));
        for (const auto& [k, v] :
             std::vector<std::pair<std::string, Index>>{{"d", cfg_.d},
                                                        {"heads", cfg_.heads},
                                                        {"layers", cfg_.layers},
                                                        {"ff", cfg_.ff},
                                                        {"chunk", cfg_.chunk},
                                                        {"num_basis", cfg_.num_basis},
                                                        {"num_samples", cfg_.num_samples}})
            w.metadata("sorting." + k, std::to_string(v));
        w.save(path);
    }
    Model(const Model&) = delete;  // the parameter views point into this object
    Model& operator=(const Model&) = delete;

    static std::unique_ptr<Model> load(const std::string& path) {
        namespace io = infinityformer::io;
        const auto f = io::Safetensors::load(path);
        auto get = [&](const std::string& k) {
            const auto it = f.metadata().find("sorting." + k);
            if (it == f.metadata().end())
                throw std::runtime_error(path + ": no metadata sorting." + k +
                                         ", expected a model written by sorting_task train");
            return it->second;
        };
        Config c;
        c.kind = kind_from(get("kind"));
        c.d = std::stol(get("d"));
        c.heads = std::stol(get("heads"));
        c.layers = std::stol(get("layers"));
        c.ff = std::stol(get("ff"));
        c.chunk = std::stol(get("chunk"));
        c.num_basis = std::stol(get("num_basis"));
        c.num_samples = std::stol(get("num_samples"));
        auto m = std::make_unique<Model>(c);
        for (auto& p : m->params_) p.values() = f.matrix<S>(p.name, p.rows, p.cols);
        return m;
    }

private:
    static const Config& checked(const Config& c) {
        if (c.chunk < kSymbols)
            throw std::invalid_argument("chunk is " + std::to_string(c.chunk) +
                                        ", expected at least 20: the separator and the 19 "
                                        "targets fed back lie in the last chunk");
        if (c.layers < 1 || c.d < 1 || c.ff < 1)
            throw std::invalid_argument("layers, d and ff are " + std::to_string(c.layers) + ", " +
                                        std::to_string(c.d) + " and " + std::to_string(c.ff) +
                                        ", expected at least 1");
        return c;
    }
    struct Window {  // the short-term attention alone: the current and the previous chunk
        infinityformer::ShortTermAttention<S> st;
        Matrix prev, q;
        typename infinityformer::ShortTermAttention<S>::Trace trace;
        typename infinityformer::ShortTermAttention<S>::Work work;
        Window(Index d, Index h, std::uint64_t seed) : st(d, h, seed), prev(0, d) {}
    };
    struct Block {
        infinityformer::LayerNorm<S> ln1, ln2;
        std::unique_ptr<infinityformer::InfinityFormerLayer<S>> layer;
        std::unique_ptr<Window> window;
        infinityformer::FeedForward<S> ff;
        Block(const Config& c, const infinityformer::LongTermParams& p, std::mt19937_64& rng)
            : ln1(c.d), ln2(c.d), ff(make_feed_forward<S>(c.d, c.ff, rng)) {
            if (c.kind == Kind::window)
                window = std::make_unique<Window>(c.d, c.heads, p.seed);
            else
                layer = std::make_unique<infinityformer::InfinityFormerLayer<S>>(c.d, c.heads,
                                                                                 c.chunk, p);
        }
        void reset() {
            if (layer) layer->reset();
            if (window) window->prev.resize(0, window->prev.cols());
        }
        Matrix attend(const Matrix& h) {
            if (layer) return layer->forward(h);
            Window& w = *window;
            w.st.project_queries(h, w.q);
            w.st.forward_unchecked(w.prev, h, w.q, w.trace);
            w.prev = h;
            return w.trace.output;
        }
        Matrix attend_backward(const Matrix& dy, S kl_weight) {
            Matrix dx(dy.rows(), dy.cols());
            if (layer) {
                layer->backward(dy, kl_weight, dx);
            } else {
                window->st.backward_unchecked(window->trace, dy, window->work);
                window->st.finish_backward(window->trace, dy, window->work, dx);
            }
            return dx;
        }
    };

    void forward_chunk(const std::vector<int>& chunk, Matrix& logits) {
        Matrix x = emb_.forward(chunk) + position_;
        for (auto& b : blocks_) {
            x += b->attend(b->ln1.forward(x));
            x += b->ff.forward(b->ln2.forward(x));
        }
        logits = head_.forward(final_.forward(x));
    }

    // Each part differentiates its last forward, that of the last chunk.
    void backward_chunk(const Matrix& dlogits, S scale) {
        Matrix dx = final_.backward(head_.backward(dlogits));
        const S kl = static_cast<S>(cfg_.kl_m / double(cfg_.heads * cfg_.chunk)) * scale;
        for (auto it = blocks_.rbegin(); it != blocks_.rend(); ++it) {
            Block& b = **it;
            dx += b.ln2.backward(b.ff.backward(dx));
            dx += b.ln1.backward(b.attend_backward(dx, kl));
        }
        emb_.backward(dx);
    }

    std::vector<infinityformer::Parameter<S>> collect() {
        std::vector<infinityformer::Parameter<S>> out;
        auto add = [&out](const std::vector<infinityformer::Parameter<S>>& ps) {
            out.insert(out.end(), ps.begin(), ps.end());
        };
        add(emb_.parameters("embedding."));
        for (std::size_t b = 0; b < blocks_.size(); ++b) {
            const std::string n = "block" + std::to_string(b) + ".";
            Block& k = *blocks_[b];
            add(k.ln1.parameters(n + "ln1."));
            if (k.layer)
                for (auto& p : k.layer->parameters()) {
                    p.name = n + "attention." + p.name;
                    out.push_back(p);
                }
            else
                k.window->st.append_parameters(out, n + "attention.short_term.");
            add(k.ln2.parameters(n + "ln2."));
            add(k.ff.parameters(n + "ff."));
        }
        add(final_.parameters("final_norm."));
        add(head_.parameters("output."));
        return out;
    }

    Config cfg_;
    std::mt19937_64 rng_;
    infinityformer::Embedding<S> emb_;
    std::vector<std::unique_ptr<Block>> blocks_;
    infinityformer::LayerNorm<S> final_;
    infinityformer::Linear<S> head_;
    Matrix position_;
    std::vector<infinityformer::Parameter<S>> params_;
};

}  // namespace sorting
