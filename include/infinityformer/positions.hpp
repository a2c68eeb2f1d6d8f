/// @file positions.hpp
/// @brief The long-term memory's position layouts (the authors' exact choices): where the
/// vectors of a first chunk, and of the compressed past and a new chunk, sit on [0, 1]
/// before the ridge fit, with the zero-target pads around them.
#pragma once

#include <Eigen/Core>
#include <vector>

#include "basis.hpp"
#include "detail/limits.hpp"
#include "detail/math.hpp"
#include "errors.hpp"
#include "ridge.hpp"

namespace infinityformer {

/// The single-chunk (finite memory, and first chunk of the unbounded memory) positions:
/// L real vectors at the midpoints (j + ½)/L, with a = ⌊L/2⌋ zero-target pads continuing
/// the same grid on each side (P = L + 2a positions). Works for odd L.
/// @throws infinityformer::invalid_argument if length < 1.
inline FitPositions single_chunk_positions(Eigen::Index length) {
    detail::require(length >= 1, "single_chunk_positions", "length is ", length, ", expected >= 1");
    detail::require_allocatable("single_chunk_positions", "length",
                                2.0 * static_cast<double>(length),
                                16.0 * static_cast<double>(length));
    const Eigen::Index a = length / 2;
    const Eigen::Index p = length + 2 * a;
    const double l = static_cast<double>(length);
    // The reference's linspace endpoints: even L: ±(1/(2L)); odd L: ±(1/L).
    const double off = (length % 2 == 0) ? 1.0 / (2.0 * l) : 1.0 / l;
    FitPositions pos;
    pos.all.resize(static_cast<std::size_t>(p));
    for (Eigen::Index m = 0; m < p; ++m)
        pos.all[static_cast<std::size_t>(m)] = detail::linspace_at(-0.5 + off, 1.5 - off, p, m);
    pos.first_kept = a;
    pos.num_kept = length;
    return pos;
}

/// The unbounded-memory positions (∞-former §3.2, with the reference's exact choices):
/// M compressed old samples at τ·i/M (i = 1…M), the L new vectors at τ + (1−τ)·j/L
/// (j = 1…L), plus zero-target pads: the points of linspace(−½ + s, 3/2 − s, 2P) below 0
/// and above 1, s = 1/(2L + M), P = M + L.
///
/// The real positions are kept whatever the number of pads. For even L this is the
/// reference's row slice ⌊P/2⌋…⌊P/2⌋+P−1 (the pads number ⌊P/2⌋ on each side); for odd L,
/// which the reference cannot stream, the same construction is used unchanged.
/// @throws infinityformer::invalid_argument on length < 1, num_samples < 1, τ ∉ (0, 1).
inline FitPositions unbounded_positions(Eigen::Index length, Eigen::Index num_samples, double tau) {
    constexpr const char* where = "unbounded_positions";
    detail::require(length >= 1, where, "length is ", length, ", expected >= 1");
    detail::require(num_samples >= 1, where, "num_samples is ", num_samples, ", expected >= 1");
    detail::require(tau > 0.0 && tau < 1.0, where, "tau is ", tau, ", expected 0 < tau < 1");
    const double grid = 4.0 * (static_cast<double>(length) + static_cast<double>(num_samples));
    detail::require_allocatable(where, "length + num_samples", grid, 16.0 * grid);
    const Eigen::Index p = num_samples + length;
    const double s = 1.0 / static_cast<double>(2 * length + num_samples);
    std::vector<double> left, right;
    for (Eigen::Index m = 0; m < 2 * p; ++m) {
        const double g = detail::linspace_at(-0.5 + s, 1.5 - s, 2 * p, m);
        if (g < 0.0) left.push_back(g);
        if (g > 1.0) right.push_back(g);
    }
    FitPositions pos;
    pos.all = left;
    for (Eigen::Index i = 1; i <= num_samples; ++i)
        pos.all.push_back(tau * static_cast<double>(i) / static_cast<double>(num_samples));
    for (Eigen::Index j = 1; j <= length; ++j)
        pos.all.push_back(tau + (1.0 - tau) * static_cast<double>(j) / static_cast<double>(length));
    pos.all.insert(pos.all.end(), right.begin(), right.end());
    pos.first_kept = static_cast<Eigen::Index>(left.size());
    pos.num_kept = p;
    return pos;
}

/// The single-chunk operator for chunks of `length` vectors (single_chunk_positions()).
template <typename Scalar>
RidgeFit<Scalar> single_chunk_fit(const GaussianBasis<Scalar>& basis, Eigen::Index length,
                                  double ridge_lambda) {
    return RidgeFit<Scalar>(basis, single_chunk_positions(length), ridge_lambda);
}

/// The unbounded-memory operator (unbounded_positions()): rows 0…M−1 multiply the
/// compressed old memory, rows M…M+L−1 the new chunk.
template <typename Scalar>
RidgeFit<Scalar> unbounded_fit(const GaussianBasis<Scalar>& basis, Eigen::Index length,
                               Eigen::Index num_samples, double tau, double ridge_lambda) {
    return RidgeFit<Scalar>(basis, unbounded_positions(length, num_samples, tau), ridge_lambda);
}

}  // namespace infinityformer
