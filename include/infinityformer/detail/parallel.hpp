/// @file detail/parallel.hpp
/// @brief Contiguous blocks of a range on a few threads (the layers' batch calls).
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <thread>
#include <vector>

namespace infinityformer::detail {

/// Calls f(begin, end, w) for w = 0 … W−1 with W = min(threads, count) contiguous blocks
/// of [0, count), block 0 on the calling thread and the others on threads of their own;
/// returns when all are done. f must not throw (callers keep its errors per item).
template <typename F>
void parallel_blocks(Eigen::Index count, int threads, F&& f) {
    const Eigen::Index workers = std::min<Eigen::Index>(threads, count);
    const auto edge = [&](Eigen::Index w) { return count * w / workers; };
    if (workers <= 1) {
        f(Eigen::Index(0), count, Eigen::Index(0));
        return;
    }
    std::vector<std::thread> pool;
    pool.reserve(static_cast<std::size_t>(workers - 1));
    try {
        for (Eigen::Index w = 1; w < workers; ++w)
            pool.emplace_back([&f, &edge, w] { f(edge(w), edge(w + 1), w); });
    } catch (...) {  // a thread could not be started: finish the started ones, report
        for (auto& t : pool) t.join();
        throw;
    }
    f(Eigen::Index(0), edge(1), Eigen::Index(0));
    for (auto& t : pool) t.join();
}

}  // namespace infinityformer::detail
