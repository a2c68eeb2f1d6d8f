// Finite-difference helpers for the gradient tests (the parts' [fd] tests, through part_util.hpp).
//
// Every helper differentiates a scalar function of one real shift δ at δ = 0, f(δ) = ℓ(x + δ e),
// so that callers can perturb an entry of any object (a matrix, a weight seen through a
// Parameter view, an entry of a copied module) without these helpers knowing about it.
//
//   five_point(f, h): (−f(2h) + 8 f(h) − 8 f(−h) + f(−2h)) / (12 h), error O(h⁴).
//   ridders(f, h0):   Ridders' extrapolation of central differences (Numerical Recipes'
//                     dfridr): a Neville tableau of (f(h) − f(−h))/(2h) for h = h0, h0/1.4, …,
//                     extrapolated to h → 0, with an error estimate (rounding included);
//                     stops when the estimate grows. Accurate to ~1e-10 relative for smooth
//                     functions when h0 is of the order of the scale on which f varies.
//   derivative(f, h0): ridders() from h0, h0/10, h0/100, h0/1000; the best estimate.
//   error(a, fd, scale): |a − fd| / max(|fd|, 1e-3 · scale), scale = max |array| of the block.
//   check(analytic, loss, entries, h0): the FD derivative of every listed entry of a block and
//                     the largest error, with the entry that gave it.
//
// The largest error seen per part is kept in fd::registry(); with the environment variable
// INFINITYFORMER_FD_REPORT set, it is printed when the test executable exits.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace fd {

/// Five-point central difference of f at 0 with step h.
template <typename F>
double five_point(F&& f, double h) {
    // Differences first: exactly 0 for a function that does not change.
    return (8 * (f(h) - f(-h)) - (f(2 * h) - f(-2 * h))) / (12 * h);
}

struct Estimate {
    double value = 0;
    double error = std::numeric_limits<double>::infinity();
};

/// Ridders' extrapolation of the derivative of f at 0, starting from step h0. The error
/// estimate is the tableau's (the change between neighbouring extrapolations) plus a rounding
/// floor 16 ε max|f| / h for the step h of the estimate: without it a small step whose
/// differences happen to agree to rounding would look exact.
template <typename F>
Estimate ridders(F&& f, double h0, int ntab = 10) {
    constexpr double con = 1.4, con2 = con * con, safe = 2.0;
    constexpr double eps = std::numeric_limits<double>::epsilon();
    std::vector<std::vector<double>> a(static_cast<std::size_t>(ntab),
                                       std::vector<double>(static_cast<std::size_t>(ntab)));
    auto at = [&a](int j, int i) -> double& {
        return a[static_cast<std::size_t>(j)][static_cast<std::size_t>(i)];
    };
    double fscale = 0;
    auto central = [&](double h) {
        const double fp = f(h), fm = f(-h);
        fscale = std::max({fscale, std::abs(fp), std::abs(fm)});
        return (fp - fm) / (2 * h);
    };
    double h = h0;
    at(0, 0) = central(h);
    Estimate best{at(0, 0), std::numeric_limits<double>::infinity()};
    double tableau_error = std::numeric_limits<double>::infinity();
    for (int i = 1; i < ntab; ++i) {
        h /= con;
        at(0, i) = central(h);
        double fac = con2;
        for (int j = 1; j <= i; ++j) {
            at(j, i) = (at(j - 1, i) * fac - at(j - 1, i - 1)) / (fac - 1);
            fac *= con2;
            const double errt =
                std::max(std::abs(at(j, i) - at(j - 1, i)), std::abs(at(j, i) - at(j - 1, i - 1)));
            if (errt <= tableau_error) {
                tableau_error = errt;
                best = {at(j, i), errt + 16 * eps * fscale / h};
            }
        }
        if (std::abs(at(i, i) - at(i - 1, i - 1)) >= safe * tableau_error) break;
    }
    return best;
}

/// ridders() from h0, h0/10, h0/100 and h0/1000: the estimate with the smallest error
/// estimate. (A first step much larger than the scale on which f varies makes the tableau
/// stop on a poor estimate with a large error estimate; a smaller one then wins. A first
/// step that is too small loses to rounding, which the estimate includes.)
template <typename F>
Estimate derivative(F&& f, double h0) {
    Estimate best;
    double h = h0;
    for (int k = 0; k < 4; ++k, h /= 10) {
        const Estimate e = ridders(f, h);
        if (e.error < best.error) best = e;
    }
    return best;
}

/// |a − fd| / max(|fd|, 1e-3 · scale).
inline double error(double analytic, double numeric, double scale) {
    const double floor = std::max(std::abs(numeric), 1e-3 * scale);
    if (floor == 0.0) return analytic == 0.0 ? 0.0 : std::numeric_limits<double>::infinity();
    return std::abs(analytic - numeric) / floor;
}

/// All of 0 … n−1 if n ≤ max_count, else max_count of them drawn without replacement (the
/// first and the last always included), ascending.
inline std::vector<Eigen::Index> pick(Eigen::Index n, Eigen::Index max_count, std::uint64_t seed) {
    std::vector<Eigen::Index> all(static_cast<std::size_t>(n));
    for (Eigen::Index i = 0; i < n; ++i) all[static_cast<std::size_t>(i)] = i;
    if (n <= max_count || n <= 2) return all;
    std::mt19937_64 engine(seed);
    std::vector<Eigen::Index> inner(all.begin() + 1, all.end() - 1);
    std::shuffle(inner.begin(), inner.end(), engine);
    std::vector<Eigen::Index> out{0, n - 1};
    out.insert(
        out.end(), inner.begin(),
        inner.begin() + static_cast<std::ptrdiff_t>(std::max<Eigen::Index>(max_count - 2, 0)));
    std::sort(out.begin(), out.end());
    return out;
}

struct Result {
    double max_error = 0;      ///< largest error(analytic, fd, scale) over the entries
    Eigen::Index worst = -1;   ///< entry (column-major index) that gave it
    double analytic = 0;       ///< analytic value there
    double numeric = 0;        ///< FD value there
    double scale = 0;          ///< max |array| used in the floor
    Eigen::Index checked = 0;  ///< number of entries differentiated
};

/// FD check of a gradient block. loss(entry, δ) returns ℓ with entry `entry` (column-major
/// index into the block) shifted by δ; step(entry) gives the first step of Ridders' tableau
/// for that entry. Scale of the floor: the largest |value| of the analytic block and of the
/// FD values.
template <typename Derived, typename Loss, typename Step>
Result check_steps(const Eigen::MatrixBase<Derived>& analytic, Loss&& loss,
                   const std::vector<Eigen::Index>& entries, Step&& step) {
    std::vector<double> numeric(entries.size());
    double scale = analytic.size() > 0 ? static_cast<double>(analytic.cwiseAbs().maxCoeff()) : 0.0;
    for (std::size_t i = 0; i < entries.size(); ++i) {
        const Eigen::Index e = entries[i];
        numeric[i] = derivative([&](double d) { return loss(e, d); }, step(e)).value;
        scale = std::max(scale, std::abs(numeric[i]));
    }
    Result r;
    r.scale = scale;
    r.checked = static_cast<Eigen::Index>(entries.size());
    for (std::size_t i = 0; i < entries.size(); ++i) {
        const double a = static_cast<double>(analytic(entries[i]));
        const double err = error(a, numeric[i], scale);
        if (err > r.max_error || r.worst < 0) {
            r.max_error = err;
            r.worst = entries[i];
            r.analytic = a;
            r.numeric = numeric[i];
        }
    }
    return r;
}

/// check_steps() with the same first step h0 for every entry.
template <typename Derived, typename Loss>
Result check(const Eigen::MatrixBase<Derived>& analytic, Loss&& loss,
             const std::vector<Eigen::Index>& entries, double h0) {
    return check_steps(analytic, loss, entries, [h0](Eigen::Index) { return h0; });
}

/// Largest FD error seen per part; printed at exit if INFINITYFORMER_FD_REPORT is set.
struct Registry {
    std::map<std::string, double> worst;
    std::map<std::string, long> entries;
    void record(const std::string& part, const Result& r) {
        double& w = worst[part];
        w = std::max(w, r.max_error);
        entries[part] += r.checked;
    }
    ~Registry() {
        if (std::getenv("INFINITYFORMER_FD_REPORT") == nullptr) return;
        for (const auto& [part, err] : worst)
            std::printf("FD %-28s largest error %.3e over %ld entries\n", part.c_str(), err,
                        entries[part]);
    }
};

inline Registry& registry() {
    static Registry r;
    return r;
}

}  // namespace fd
