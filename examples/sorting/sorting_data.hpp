// The sorting task of the ∞-former paper (Martins et al. 2022, §4.1), as the authors
// generate it (sorting/generate_data.py in their repository): a stream of T symbols from a
// distribution that drifts from p_start to p_end, the separator, then the 20 symbols in
// decreasing order of their count in the stream.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace sorting {

constexpr int kSymbols = 20;          // 0 … 19
constexpr int kSeparator = kSymbols;  // 20
constexpr int kVocabulary = kSymbols + 1;

struct Sequence {
    std::vector<int> stream;             // T symbols
    std::array<int, kSymbols> target{};  // the symbols sorted by count
};

/// The symbols in decreasing order of their count in `stream`; a tie goes to the symbol
/// that appeared first (Python's Counter.most_common keeps insertion order among equal
/// counts); symbols that never appear follow in increasing order.
inline std::array<int, kSymbols> sorted_by_count(const std::vector<int>& stream) {
    std::array<long, kSymbols> count{};
    std::array<long, kSymbols> first{};
    first.fill(-1);
    for (std::size_t j = 0; j < stream.size(); ++j) {
        const int s = stream[j];
        if (count[s]++ == 0) first[s] = static_cast<long>(j);
    }
    std::array<int, kSymbols> order{};
    for (int s = 0; s < kSymbols; ++s) order[s] = s;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
        if (count[a] != count[b]) return count[a] > count[b];
        if (count[a] == 0) return a < b;  // absent symbols: increasing
        return first[a] < first[b];
    });
    return order;
}

/// One sequence of length T: p_start, p_end with 20 integer weights uniform in 1..9 each,
/// token j drawn from (1 − r) p_start + r p_end with r = (j + 1)/T.
inline Sequence generate(int length, std::mt19937_64& rng) {
    std::uniform_int_distribution<int> weight(1, 9);
    std::array<double, kSymbols> start{}, end{};
    double s0 = 0, s1 = 0;
    for (int k = 0; k < kSymbols; ++k) s0 += start[k] = weight(rng);
    for (int k = 0; k < kSymbols; ++k) s1 += end[k] = weight(rng);
    Sequence seq;
    seq.stream.resize(static_cast<std::size_t>(length));
    std::uniform_real_distribution<double> u(0.0, 1.0);
    for (int j = 0; j < length; ++j) {
        const double r = static_cast<double>(j + 1) / length;
        double x = u(rng), acc = 0;
        int pick = kSymbols - 1;
        for (int k = 0; k < kSymbols; ++k) {
            acc += (1 - r) * start[k] / s0 + r * end[k] / s1;
            if (x < acc) {
                pick = k;
                break;
            }
        }
        seq.stream[static_cast<std::size_t>(j)] = pick;
    }
    seq.target = sorted_by_count(seq.stream);
    return seq;
}

/// The authors' text format: the stream, the separator and the 20 targets on one line,
/// separated by spaces.
inline void write(std::ostream& out, const Sequence& s) {
    for (int t : s.stream) out << t << ' ';
    out << kSeparator;
    for (int t : s.target) out << ' ' << t;
    out << '\n';
}

/// Reads every sequence of a file in that format (any whitespace between tokens; a
/// trailing space, as the authors' files have, is fine).
/// @throws std::runtime_error naming the line and what is wrong.
inline std::vector<Sequence> read_file(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error("cannot open '" + path + "'");
    std::vector<Sequence> out;
    std::string line;
    long number = 0;
    while (std::getline(in, line)) {
        ++number;
        std::istringstream ls(line);
        std::vector<int> tokens;
        std::string tok;
        while (ls >> tok) {
            std::size_t used = 0;
            int v = -1;
            try {
                v = std::stoi(tok, &used);
            } catch (const std::exception&) {
                used = 0;
            }
            if (used != tok.size() || v < 0 || v > kSeparator)
                throw std::runtime_error(path + ":" + std::to_string(number) + ": token '" + tok +
                                         "', expected an integer 0 to 20");
            tokens.push_back(v);
        }
        if (tokens.empty()) continue;
        const auto sep = std::find(tokens.begin(), tokens.end(), kSeparator);
        if (sep == tokens.end() || tokens.end() - sep != kSymbols + 1 || sep == tokens.begin())
            throw std::runtime_error(path + ":" + std::to_string(number) +
                                     ": expected T >= 1 symbols, the separator 20 and 20 targets");
        if (std::find(sep + 1, tokens.end(), kSeparator) != tokens.end())
            throw std::runtime_error(path + ":" + std::to_string(number) +
                                     ": a second separator among the targets");
        Sequence s;
        s.stream.assign(tokens.begin(), sep);
        std::copy(sep + 1, tokens.end(), s.target.begin());
        out.push_back(std::move(s));
    }
    return out;
}

}  // namespace sorting
