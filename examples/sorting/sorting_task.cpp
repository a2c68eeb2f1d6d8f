// sorting_task: the ∞-former paper's sorting experiment (Martins et al. 2022, §4.1) in C++.
//
//   sorting_task generate --length T --count K --seed S --out FILE
//   sorting_task train --model window|infinity|sticky --length T|MIN:MAX --seed S --out MODEL
//                      [--minutes X] [--steps N] [--batch B] [--lr A] [--d D] [--layers K]
//                      [--chunk L] [--basis N] [--curriculum 0|1] [--threads N]
//   sorting_task eval --model MODEL --data FILE [--threads N]
//
// generate writes K sequences in the authors' text format (sorting_data.hpp); train trains
// one model (sorting_model_full.hpp) with Adam, printing a progress line, and writes it as a
// safetensors file with its configuration; eval prints `accuracy=X sequences=K` over the 20
// target positions of every sequence of FILE.
//
// --threads N runs the sequences of a batch (or of FILE) on N threads, each with its own copy
// of the model: the copies' gradients are summed in a fixed order into the first, which takes
// the Adam step, and its weights are copied back to the others. The data and the result do
// not depend on N except for the rounding of that sum.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "sorting_model_full.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using ModelF = sorting::Model<float>;

struct Args {
    std::map<std::string, std::string> values;
    std::string get(const std::string& k, const std::string& fallback = "") const {
        const auto it = values.find(k);
        if (it != values.end()) return it->second;
        if (fallback.empty()) throw std::invalid_argument("missing --" + k);
        return fallback;
    }
    long number(const std::string& k, const std::string& fallback = "") const {
        const std::string v = get(k, fallback);
        std::size_t used = 0;
        long x = 0;
        try {
            x = std::stol(v, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        if (used != v.size())
            throw std::invalid_argument("--" + k + " is '" + v + "', expected an integer");
        return x;
    }
    double real(const std::string& k, const std::string& fallback) const {
        const std::string v = get(k, fallback);
        std::size_t used = 0;
        double x = 0;
        try {
            x = std::stod(v, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        if (used != v.size())
            throw std::invalid_argument("--" + k + " is '" + v + "', expected a number");
        return x;
    }
};

// --name value pairs; a name not in `known` is an error (no option is silently ignored).
Args parse(int argc, char** argv, int first, const std::vector<std::string>& known) {
    Args a;
    for (int i = first; i < argc; i += 2) {
        const std::string k = argv[i];
        if (k.rfind("--", 0) != 0 || i + 1 >= argc)
            throw std::invalid_argument("expected --name value pairs, got '" + k + "'");
        const std::string name = k.substr(2);
        if (std::find(known.begin(), known.end(), name) == known.end()) {
            std::string list;
            for (const auto& n : known) list += (list.empty() ? "--" : ", --") + n;
            throw std::invalid_argument("unknown option '" + k + "', expected one of " + list);
        }
        a.values[name] = argv[i + 1];
    }
    return a;
}

// "T" or "MIN:MAX".
std::pair<int, int> length_range(const std::string& s) {
    const auto colon = s.find(':');
    int lo = 0, hi = 0;
    try {
        std::size_t a = 0, b = 0;
        lo = std::stoi(s.substr(0, colon), &a);
        hi = colon == std::string::npos ? lo : std::stoi(s.substr(colon + 1), &b);
        if (a != (colon == std::string::npos ? s.size() : colon) ||
            (colon != std::string::npos && b != s.size() - colon - 1))
            lo = 0;
    } catch (const std::exception&) {
        lo = 0;
    }
    if (lo < 1 || hi < lo)
        throw std::invalid_argument("--length is '" + s +
                                    "', expected T or MIN:MAX with 1 <= MIN <= MAX");
    return {lo, hi};
}

int generate(const Args& a) {
    const int length = static_cast<int>(a.number("length"));
    const long count = a.number("count");
    if (length < 1 || count < 1) throw std::invalid_argument("--length and --count must be >= 1");
    std::mt19937_64 rng(static_cast<std::uint64_t>(a.number("seed")));
    std::ofstream out(a.get("out"));
    if (!out) throw std::runtime_error("cannot write '" + a.get("out") + "'");
    for (long k = 0; k < count; ++k) sorting::write(out, sorting::generate(length, rng));
    return out ? 0 : 1;
}

// Copies of one model for --threads: replica 0 is the model being trained or evaluated.
class Replicas {
public:
    Replicas(std::unique_ptr<ModelF> first, long threads) {
        if (threads < 1 || threads > 256)
            throw std::invalid_argument("--threads is " + std::to_string(threads) +
                                        ", expected 1 to 256");
        models_.push_back(std::move(first));
        for (long t = 1; t < threads; ++t)
            models_.push_back(std::make_unique<ModelF>(models_[0]->config()));
        sync();
    }
    ModelF& master() { return *models_[0]; }

    // Copies the master's weights to the other replicas.
    void sync() {
        auto& from = models_[0]->parameters();
        for (std::size_t r = 1; r < models_.size(); ++r) {
            auto& to = models_[r]->parameters();
            for (std::size_t k = 0; k < from.size(); ++k) to[k].values() = from[k].values();
        }
    }

    // Runs f(model, k) for k = 0 … n−1, sequence k on replica k mod threads; with `train`
    // the replicas' gradients are then added to the master's.
    template <typename F>
    void run(std::size_t n, bool train, F f) {
        const std::size_t t = models_.size();
        auto work = [&](std::size_t r) {
            for (std::size_t k = r; k < n; k += t) f(*models_[r], k);
        };
        if (t == 1) {
            work(0);
        } else {
            std::vector<std::thread> pool;
            std::vector<std::exception_ptr> errors(t);
            for (std::size_t r = 1; r < t; ++r)
                pool.emplace_back([&, r] {
                    try {
                        work(r);
                    } catch (...) {
                        errors[r] = std::current_exception();
                    }
                });
            try {
                work(0);
            } catch (...) {
                errors[0] = std::current_exception();
            }
            for (auto& th : pool) th.join();
            for (auto& e : errors)
                if (e) std::rethrow_exception(e);
        }
        if (!train) return;
        auto& to = models_[0]->parameters();
        for (std::size_t r = 1; r < t; ++r) {
            auto& from = models_[r]->parameters();
            for (std::size_t k = 0; k < to.size(); ++k) to[k].gradient() += from[k].gradient();
        }
    }
    void zero_grad() {
        for (auto& m : models_) m->zero_grad();
    }

private:
    std::vector<std::unique_ptr<ModelF>> models_;
};

double accuracy(Replicas& m, const std::vector<sorting::Sequence>& data) {
    std::vector<int> right(data.size(), 0);
    m.run(data.size(), false,
          [&](ModelF& model, std::size_t k) { model.run(data[k], false, right[k]); });
    long sum = 0;
    for (int r : right) sum += r;
    return static_cast<double>(sum) / (20.0 * static_cast<double>(data.size()));
}

int train(const Args& a) {
    sorting::Config c;
    c.kind = sorting::kind_from(a.get("model"));
    c.seed = static_cast<std::uint64_t>(a.number("seed"));
    c.d = a.number("d", "64");
    c.layers = a.number("layers", "2");
    c.chunk = a.number("chunk", "128");
    c.num_basis = a.number("basis", "128");
    c.num_samples = c.num_basis;
    const auto [lo, hi] = length_range(a.get("length"));
    const double minutes = a.real("minutes", "60");
    const long max_steps = a.number("steps", "1000000000");
    const long batch = a.number("batch", "8");
    const std::string out = a.get("out");
    if (!(minutes > 0) || max_steps < 0 || batch < 1)
        throw std::invalid_argument("expected --minutes > 0, --steps >= 0 and --batch >= 1");
    Replicas model(std::make_unique<ModelF>(c), a.number("threads", "1"));
    infinityformer::AdamOptions o;
    o.learning_rate = a.real("lr", "0.0003");
    o.clip_norm = 1.0;
    infinityformer::Adam<float> adam(model.master().parameters(), o);
    std::mt19937_64 data_rng(c.seed * 7919 + 1), held_rng(c.seed * 7919 + 2);
    std::vector<sorting::Sequence> held;
    for (int k = 0; k < 16; ++k) held.push_back(sorting::generate(hi, held_rng));
    // --curriculum 1: the longest stream grows from 20 symbols to MAX over the first half of
    // the budget (time or steps), the shortest is min(MIN, that longest).
    const bool curriculum = a.number("curriculum", "0") != 0;
    const auto start = Clock::now();
    double smooth = std::log(20.0);
    long step = 0;
    double last_report = 0;
    for (; step < max_steps; ++step) {
        const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
        if (elapsed > minutes * 60) break;
        model.zero_grad();
        double loss = 0;
        const double progress =
            std::max(elapsed / (minutes * 60), double(step) / double(std::max(1L, max_steps)));
        int top = hi, bottom = lo;
        if (curriculum) {
            top = std::min(hi, 20 + static_cast<int>((hi - 20) * std::min(1.0, 2 * progress)));
            bottom = std::min(lo, top);
        }
        std::uniform_int_distribution<int> length(bottom, top);
        std::vector<sorting::Sequence> seqs;
        for (long b = 0; b < batch; ++b)
            seqs.push_back(sorting::generate(length(data_rng), data_rng));
        std::vector<double> losses(seqs.size());
        model.run(seqs.size(), true, [&](ModelF& m, std::size_t k) {
            int correct = 0;
            losses[k] = m.run(seqs[k], true, correct, 1.0f / static_cast<float>(batch));
        });
        for (double l : losses) loss += l;
        adam.step();
        model.sync();
        smooth = 0.95 * smooth + 0.05 * loss / static_cast<double>(batch);
        // The progress line (with a held-out evaluation, which at T = 8,000 costs as much as
        // ten steps): every 25 steps, at most once a minute.
        if (step % 25 == 0 && (step == 0 || elapsed - last_report >= 60)) {
            last_report = elapsed;
            const double acc = accuracy(model, held);
            const double done =
                std::max(elapsed / (minutes * 60), double(step) / double(max_steps));
            std::printf(
                "step %6ld  loss %.4f  held-out accuracy %.3f  elapsed %6.0f s  ETA %6.0f s\n",
                step, smooth, acc, elapsed, done > 0 ? elapsed / done - elapsed : 0.0);
            std::fflush(stdout);
        }
    }
    model.master().save(out);
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    std::printf("trained %s: %ld steps in %.0f s (%.2f steps/s), final loss %.4f, written to %s\n",
                sorting::to_string(c.kind).c_str(), step, elapsed, double(step) / elapsed, smooth,
                out.c_str());
    return 0;
}

int eval(const Args& a) {
    Replicas model(ModelF::load(a.get("model")), a.number("threads", "1"));
    const auto data = sorting::read_file(a.get("data"));
    if (data.empty()) throw std::runtime_error("'" + a.get("data") + "' holds no sequence");
    std::printf("accuracy=%.4f sequences=%zu\n", accuracy(model, data), data.size());
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    const std::string usage =
        "usage: sorting_task generate --length T --count K --seed S --out FILE\n"
        "       sorting_task train --model window|infinity|sticky --length T|MIN:MAX --seed S\n"
        "                          --out MODEL [--minutes X] [--steps N] [--batch B] [--lr A]\n"
        "                          [--d D] [--layers K] [--chunk L] [--basis N] [--curriculum "
        "0|1]\n"
        "                          [--threads N]\n"
        "       sorting_task eval --model MODEL --data FILE [--threads N]\n";
    if (argc < 2) {
        std::cerr << usage;
        return 2;
    }
    try {
        const std::string cmd = argv[1];
        if (cmd == "generate")
            return generate(parse(argc, argv, 2, {"length", "count", "seed", "out"}));
        if (cmd == "train")
            return train(parse(argc, argv, 2,
                               {"model", "length", "seed", "out", "minutes", "steps", "batch", "lr",
                                "d", "layers", "chunk", "basis", "curriculum", "threads"}));
        if (cmd == "eval") return eval(parse(argc, argv, 2, {"model", "data", "threads"}));
        std::cerr << usage;
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "sorting_task: " << e.what() << "\n";
        return 1;
    }
}
