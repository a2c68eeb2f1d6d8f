// The parts of the sorting model that the library does not provide, each with its backward
// pass (tests/test_sorting_model.cpp checks them against finite differences): a token
// embedding, layer normalisation, a feed-forward block, and the softmax cross-entropy of
// the output.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <infinityformer/parameter_view.hpp>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

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

template <typename S, typename M>
void add_parameter(std::vector<infinityformer::Parameter<S>>& out, const std::string& name,
                   M& value, M& grad) {
    grad.setZero(value.rows(), value.cols());
    infinityformer::Parameter<S> p;
    p.name = name;
    p.value = value.data();
    p.grad = grad.data();
    p.rows = value.rows();
    p.cols = value.cols();
    out.push_back(p);
}

/// Rows of a V × d table, one per token.
template <typename S>
struct Embedding {
    Mat<S> table, grad;
    Embedding(Index vocabulary, Index d, std::mt19937_64& rng)
        : table(normal_matrix<S>(vocabulary, d, 1.0, rng)), grad(Mat<S>::Zero(vocabulary, d)) {}

    void forward(const std::vector<int>& tokens, Mat<S>& out) const {
        out.resize(static_cast<Index>(tokens.size()), table.cols());
        for (std::size_t i = 0; i < tokens.size(); ++i)
            out.row(static_cast<Index>(i)) = table.row(tokens[i]);
    }
    void backward(const std::vector<int>& tokens, const Mat<S>& dout) {
        for (std::size_t i = 0; i < tokens.size(); ++i)
            grad.row(tokens[i]) += dout.row(static_cast<Index>(i));
    }
    void parameters(std::vector<infinityformer::Parameter<S>>& out, const std::string& name) {
        add_parameter(out, name + ".weight", table, grad);
    }
};

/// y = (x − mean) / √(var + ε) ⊙ gain + bias over the d features of each row.
template <typename S>
struct LayerNorm {
    Vec<S> gain, bias, dgain, dbias;
    S eps = S(1e-5);
    struct Trace {
        Mat<S> xhat;
        Vec<S> rstd;
    };
    explicit LayerNorm(Index d)
        : gain(Vec<S>::Ones(d)),
          bias(Vec<S>::Zero(d)),
          dgain(Vec<S>::Zero(d)),
          dbias(Vec<S>::Zero(d)) {}

    void forward(const Mat<S>& x, Mat<S>& y, Trace& t) const {
        const Index d = x.cols();
        t.xhat.resize(x.rows(), d);
        t.rstd.resize(x.rows());
        for (Index i = 0; i < x.rows(); ++i) {
            const S mean = x.row(i).mean();
            const S var = (x.row(i).array() - mean).square().mean();
            t.rstd[i] = S(1) / std::sqrt(var + eps);
            t.xhat.row(i) = (x.row(i).array() - mean) * t.rstd[i];
        }
        y = (t.xhat.array().rowwise() * gain.transpose().array()).rowwise() +
            bias.transpose().array();
    }
    /// Accumulates ∂ℓ/∂gain, ∂ℓ/∂bias; writes ∂ℓ/∂x.
    void backward(const Trace& t, const Mat<S>& dy, Mat<S>& dx) {
        dgain += (dy.array() * t.xhat.array()).colwise().sum().transpose().matrix();
        dbias += dy.colwise().sum().transpose();
        const Mat<S> dxhat = dy.array().rowwise() * gain.transpose().array();
        dx.resize(dy.rows(), dy.cols());
        for (Index i = 0; i < dy.rows(); ++i) {
            const S m1 = dxhat.row(i).mean();
            const S m2 = (dxhat.row(i).array() * t.xhat.row(i).array()).mean();
            dx.row(i) = t.rstd[i] * (dxhat.row(i).array() - m1 - t.xhat.row(i).array() * m2);
        }
    }
    void parameters(std::vector<infinityformer::Parameter<S>>& out, const std::string& name) {
        add_parameter(out, name + ".weight", gain, dgain);
        add_parameter(out, name + ".bias", bias, dbias);
    }
};

/// y = relu(x W1ᵀ + b1) W2ᵀ + b2 (W1: f × d, W2: d × f).
template <typename S>
struct FeedForward {
    Mat<S> w1, w2, dw1, dw2;
    Vec<S> b1, b2, db1, db2;
    struct Trace {
        Mat<S> x, pre, h;
    };
    FeedForward(Index d, Index f, std::mt19937_64& rng)
        : w1(normal_matrix<S>(f, d, 1.0 / std::sqrt(double(d)), rng)),
          w2(normal_matrix<S>(d, f, 1.0 / std::sqrt(double(f)), rng)),
          dw1(Mat<S>::Zero(f, d)),
          dw2(Mat<S>::Zero(d, f)),
          b1(Vec<S>::Zero(f)),
          b2(Vec<S>::Zero(d)),
          db1(Vec<S>::Zero(f)),
          db2(Vec<S>::Zero(d)) {}

    void forward(const Mat<S>& x, Mat<S>& y, Trace& t) const {
        t.x = x;
        t.pre = (x * w1.transpose()).rowwise() + b1.transpose();
        t.h = t.pre.cwiseMax(S(0));
        y = (t.h * w2.transpose()).rowwise() + b2.transpose();
    }
    void backward(const Trace& t, const Mat<S>& dy, Mat<S>& dx) {
        dw2.noalias() += dy.transpose() * t.h;
        db2 += dy.colwise().sum().transpose();
        Mat<S> dh = dy * w2;
        dh = (t.pre.array() > S(0)).select(dh, S(0));
        dw1.noalias() += dh.transpose() * t.x;
        db1 += dh.colwise().sum().transpose();
        dx.noalias() = dh * w1;
    }
    void parameters(std::vector<infinityformer::Parameter<S>>& out, const std::string& name) {
        add_parameter(out, name + ".w1", w1, dw1);
        add_parameter(out, name + ".b1", b1, db1);
        add_parameter(out, name + ".w2", w2, dw2);
        add_parameter(out, name + ".b2", b2, db2);
    }
};

/// Mean over the listed rows of −log softmax(logits_row)[target]; dlogits (all rows; zero
/// where no target) receives its gradient. Also counts the rows whose largest logit is the
/// target. Computed in double.
template <typename S>
double cross_entropy(const Mat<S>& logits, const std::vector<Index>& rows,
                     const std::vector<int>& targets, Mat<S>& dlogits, int* correct = nullptr) {
    if (rows.size() != targets.size() || rows.empty())
        throw std::invalid_argument("cross_entropy: rows and targets differ in size or are empty");
    dlogits.setZero(logits.rows(), logits.cols());
    double loss = 0;
    int right = 0;
    const double n = static_cast<double>(rows.size());
    for (std::size_t k = 0; k < rows.size(); ++k) {
        const Index r = rows[k];
        const Eigen::VectorXd z = logits.row(r).transpose().template cast<double>();
        const double top = z.maxCoeff();
        const Eigen::VectorXd e = (z.array() - top).exp().matrix();
        const double sum = e.sum();
        loss += -(z[targets[k]] - top - std::log(sum));
        Index best = 0;
        z.maxCoeff(&best);
        if (best == targets[k]) ++right;
        Eigen::VectorXd g = e / sum;
        g[targets[k]] -= 1.0;
        dlogits.row(r) = (g / n).transpose().template cast<S>();
    }
    if (correct) *correct = right;
    return loss / n;
}

}  // namespace sorting
