// sorting_task: the ∞-former paper's sorting experiment (Martins et al. 2022, §4.1) in C++.
//
//   sorting_task generate --length T --count K --seed S --out FILE
//   sorting_task train --model window|infinity|sticky --length T|MIN:MAX --seed S --out MODEL
//                      [--minutes X] [--steps N] [--batch B] [--threads N] [--lr A]
//   sorting_task eval --model MODEL --data FILE
//
// generate writes K sequences in the authors' text format (sorting_data.hpp); train trains
// one model (sorting_model_full.hpp) with Adam, printing a progress line, and writes it as a
// safetensors file with its configuration; eval prints `accuracy=X sequences=K` over the 20
// target positions of every sequence of FILE.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <string>

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

Args parse(int argc, char** argv, int first) {
    Args a;
    for (int i = first; i < argc; i += 2) {
        const std::string k = argv[i];
        if (k.rfind("--", 0) != 0 || i + 1 >= argc)
            throw std::invalid_argument("expected --name value pairs, got '" + k + "'");
        a.values[k.substr(2)] = argv[i + 1];
    }
    return a;
}

// "T" or "MIN:MAX".
std::pair<int, int> length_range(const std::string& s) {
    const auto colon = s.find(':');
    const int lo = std::stoi(s.substr(0, colon));
    const int hi = colon == std::string::npos ? lo : std::stoi(s.substr(colon + 1));
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

double accuracy(ModelF& m, const std::vector<sorting::Sequence>& data) {
    long right = 0;
    for (const auto& s : data) {
        int c = 0;
        m.run(s, false, c);
        right += c;
    }
    return static_cast<double>(right) / (20.0 * static_cast<double>(data.size()));
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
    ModelF model(c);
    infinityformer::AdamOptions o;
    o.learning_rate = a.real("lr", "0.0003");
    o.clip_norm = 1.0;
    infinityformer::Adam<float> adam(model.parameters(), o);
    std::mt19937_64 data_rng(c.seed * 7919 + 1), held_rng(c.seed * 7919 + 2);
    std::vector<sorting::Sequence> held;
    for (int k = 0; k < 16; ++k) held.push_back(sorting::generate(hi, held_rng));
    std::uniform_int_distribution<int> length(lo, hi);
    const auto start = Clock::now();
    double smooth = std::log(20.0);
    long step = 0;
    for (; step < max_steps; ++step) {
        const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
        if (elapsed > minutes * 60) break;
        model.zero_grad();
        double loss = 0;
        for (long b = 0; b < batch; ++b) {
            int correct = 0;
            loss += model.run(sorting::generate(length(data_rng), data_rng), true, correct,
                              1.0f / static_cast<float>(batch));
        }
        adam.step();
        smooth = 0.95 * smooth + 0.05 * loss / static_cast<double>(batch);
        if (step % 25 == 0) {
            const double acc = accuracy(model, held);
            const double done =
                std::max(elapsed / (minutes * 60), double(step) / double(max_steps));
            std::printf(
                "step %6ld  loss %.4f  held-out accuracy %.3f  elapsed %6.0f s  ETA %6.0f s\n",
                step, smooth, acc, elapsed, done > 0 ? elapsed / done - elapsed : 0.0);
            std::fflush(stdout);
        }
    }
    model.save(out);
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    std::printf("trained %s: %ld steps in %.0f s (%.2f steps/s), final loss %.4f, written to %s\n",
                sorting::to_string(c.kind).c_str(), step, elapsed, double(step) / elapsed, smooth,
                out.c_str());
    return 0;
}

int eval(const Args& a) {
    auto model = ModelF::load(a.get("model"));
    const auto data = sorting::read_file(a.get("data"));
    if (data.empty()) throw std::runtime_error("'" + a.get("data") + "' holds no sequence");
    std::printf("accuracy=%.4f sequences=%zu\n", accuracy(*model, data), data.size());
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    const std::string usage =
        "usage: sorting_task generate --length T --count K --seed S --out FILE\n"
        "       sorting_task train --model window|infinity|sticky --length T|MIN:MAX --seed S\n"
        "                          --out MODEL [--minutes X] [--steps N] [--batch B] [--lr A]\n"
        "       sorting_task eval --model MODEL --data FILE\n";
    if (argc < 2) {
        std::cerr << usage;
        return 2;
    }
    try {
        const std::string cmd = argv[1];
        const Args a = parse(argc, argv, 2);
        if (cmd == "generate") return generate(a);
        if (cmd == "train") return train(a);
        if (cmd == "eval") return eval(a);
        std::cerr << usage;
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "sorting_task: " << e.what() << "\n";
        return 1;
    }
}
