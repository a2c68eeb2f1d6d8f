// Shared by the benchmark programs: the long-term parameters of a timed configuration and
// random input.
#pragma once

#include <Eigen/Core>
#include <random>

#include "infinityformer/hyperparams.hpp"

namespace bench {

/// The parameters of a timed run: the sorting defaults, or with `sticky` the language-model
/// preset (its widths and ridge λ) with sticky memories; no gate (memory update and
/// attention only, as the timed reference runs).
inline infinityformer::LongTermParams timed_params(Eigen::Index basis, Eigen::Index samples,
                                                   Eigen::Index bins, double tau, bool sticky) {
    infinityformer::LongTermParams p =
        sticky ? infinityformer::LongTermParams::lm() : infinityformer::LongTermParams{};
    p.gate = false;
    p.num_basis = basis;
    p.num_samples = samples;
    p.num_bins = bins;
    p.tau = tau;
    p.sampling = sticky ? infinityformer::Sampling::sticky : infinityformer::Sampling::uniform;
    return p;
}

/// Fills `m` with standard normal numbers.
template <typename Derived>
void fill_normal(Eigen::MatrixBase<Derived>& m, std::mt19937_64& gen) {
    using Scalar = typename Derived::Scalar;
    std::normal_distribution<double> normal;
    for (Eigen::Index j = 0; j < m.cols(); ++j)
        for (Eigen::Index i = 0; i < m.rows(); ++i) m(i, j) = static_cast<Scalar>(normal(gen));
}

/// A rows × cols matrix of standard normal numbers.
template <typename Scalar>
Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> random_matrix(Eigen::Index rows,
                                                                    Eigen::Index cols,
                                                                    std::mt19937_64& gen) {
    Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> m(rows, cols);
    fill_normal(m, gen);
    return m;
}

}  // namespace bench
