/// @file detail/streams.hpp
/// @brief The bookkeeping of a module's independent streams, written once for every module
/// that holds them (LongTermAttention, InfinityFormerLayer).
#pragma once

#include <Eigen/Core>
#include <cstddef>
#include <utility>
#include <vector>

#include "../errors.hpp"
#include "limits.hpp"

namespace infinityformer::detail {

/// The checked index of a stream among `count`.
inline void check_stream_index(const char* where, Eigen::Index stream, Eigen::Index count) {
    if (count == 0)
        fail(where, "stream is ", stream, ", but this object has no streams (it was moved from)");
    require(stream >= 0 && stream < count, where, "stream is ", stream, ", expected 0 <= stream < ",
            count);
}

/// The states of a module's streams, indexed from 0: checked access, and a resize that
/// keeps the existing streams and makes the new ones with make(index). A moved-from set
/// is empty, and every indexed access then names the move.
template <typename State>
class StreamSet {
public:
    StreamSet() = default;
    StreamSet(const StreamSet&) = default;
    StreamSet& operator=(const StreamSet&) = default;
    StreamSet(StreamSet&& o) noexcept : states_(std::move(o.states_)) { o.states_.clear(); }
    StreamSet& operator=(StreamSet&& o) noexcept {
        if (this != &o) {
            states_ = std::move(o.states_);
            o.states_.clear();
        }
        return *this;
    }

    Eigen::Index size() const { return static_cast<Eigen::Index>(states_.size()); }
    State& at(const char* where, Eigen::Index stream) {
        check_stream_index(where, stream, size());
        return states_[static_cast<std::size_t>(stream)];
    }
    const State& at(const char* where, Eigen::Index stream) const {
        check_stream_index(where, stream, size());
        return states_[static_cast<std::size_t>(stream)];
    }
    /// Unchecked access (0 <= stream < size()).
    State& operator[](Eigen::Index stream) { return states_[static_cast<std::size_t>(stream)]; }
    const State& operator[](Eigen::Index stream) const {
        return states_[static_cast<std::size_t>(stream)];
    }

    /// n streams: the first min(n, size()) kept, the others make(index). All or nothing.
    /// @throws infinityformer::invalid_argument if n < 1 or n streams of `bytes_each` would
    ///         not fit in memory (nothing changed).
    template <typename Make>
    void resize(const char* where, Eigen::Index n, double bytes_each, Make&& make) {
        require(n >= 1, where, "n is ", n, ", expected >= 1");
        require_allocatable(where, "n streams", static_cast<double>(n),
                            static_cast<double>(n) * bytes_each);
        std::vector<State> next;
        next.reserve(static_cast<std::size_t>(n));
        for (Eigen::Index s = 0; s < n; ++s)
            next.push_back(s < size() ? states_[static_cast<std::size_t>(s)] : make(s));
        states_.swap(next);
    }

private:
    std::vector<State> states_;
};

}  // namespace infinityformer::detail
