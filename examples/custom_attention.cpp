// Your own attention plus the ∞-former's long-term memory: the model has its own query,
// key and value projections and its own causal softmax attention over the current chunk,
// and adds LongTermAttention's output for the same queries (its own Q) over the memory of
// every earlier chunk. Streams four chunks, forward and backward: the gradient of the loss
// w.r.t. the model's queries that LongTermAttention::backward returns flows into the query
// projection, next to the local attention's. Checks two gradients against central finite
// differences of the whole stream's loss (exact here: the memory holds the raw chunks,
// which no weight changes), and returns non-zero if they disagree.
#include <cmath>
#include <cstdio>
#include <infinityformer/long_term_attention.hpp>
#include <random>
#include <string>
#include <vector>

using Matrix = Eigen::MatrixXd;
using Index = Eigen::Index;

namespace {

const Index d = 16, L = 8, num_chunks = 4;

// The model's own weights (y = W x, d × d) and their gradients.
struct Own {
    Matrix wq, wk, wv, dwq, dwk, dwv;
    Matrix dwq_long;  // the share of dwq that came through the long-term attention
};

// Causal single-head softmax attention within a chunk, and what its backward needs.
struct Local {
    Matrix q, k, v, p, out;  // p: L × L, row i the weights of tokens 0 … i
};

Local local_forward(const Own& w, const Matrix& x) {
    Local a;
    a.q = x * w.wq.transpose();
    a.k = x * w.wk.transpose();
    a.v = x * w.wv.transpose();
    const double scale = 1.0 / std::sqrt(double(d));
    a.p = Matrix::Zero(L, L);
    for (Index i = 0; i < L; ++i) {
        const Eigen::RowVectorXd s = a.q.row(i) * a.k.topRows(i + 1).transpose() * scale;
        const Eigen::RowVectorXd e = (s.array() - s.maxCoeff()).exp().matrix();
        a.p.row(i).head(i + 1) = e / e.sum();
    }
    a.out = a.p * a.v;
    return a;
}

// dS = P ⊙ (dP − rowsum(dP ⊙ P)), dP = dOut Vᵀ; returns dQ, adds dK, dV's weight gradients.
Matrix local_backward(Own& w, const Matrix& x, const Local& a, const Matrix& dout) {
    const double scale = 1.0 / std::sqrt(double(d));
    const Matrix dv = a.p.transpose() * dout;
    const Matrix dp = dout * a.v.transpose();
    const Eigen::VectorXd rows = (dp.array() * a.p.array()).rowwise().sum();
    const Matrix ds = a.p.array() * (dp.colwise() - rows).array();  // 0 above the diagonal
    const Matrix dk = ds.transpose() * a.q * scale;
    w.dwk += dk.transpose() * x;
    w.dwv += dv.transpose() * x;
    return ds * a.k * scale;  // dQ
}

// The whole stream: chunk c's output is local(X_c) + long-term(Q_c) over chunks 0 … c−1.
// ℓ = Σ_c Σ Y_c ⊙ G_c. With `backward`, every chunk is differentiated right after its
// forward (LongTermAttention differentiates its last attend(), before the next update()).
double run(Own& w, infinityformer::LongTermAttention<double>& memory, const std::vector<Matrix>& X,
           const std::vector<Matrix>& G, bool backward, double* long_term_share = nullptr) {
    memory.reset();  // a new document: empty memory, sampling generator restarted
    double loss = 0, long_norm = 0, local_norm = 0;
    Matrix dq_long(L, d), dx_stored(L, d);
    for (Index c = 0; c < num_chunks; ++c) {
        const Local a = local_forward(w, X[std::size_t(c)]);
        Matrix y = a.out;
        if (c > 0) {
            // Chunk c−1 leaves the local window: store it, then attend with this chunk's Q.
            const Matrix lt = memory.forward(X[std::size_t(c - 1)], a.q);
            y += lt;
            long_norm += lt.squaredNorm();
        }
        local_norm += a.out.squaredNorm();
        loss += (y.array() * G[std::size_t(c)].array()).sum();
        if (!backward) continue;
        const Matrix& dy = G[std::size_t(c)];
        Matrix dq = local_backward(w, X[std::size_t(c)], a, dy);
        if (c > 0) {
            // ∂ℓ/∂Q through the long-term attention, and ∂ℓ/∂X_{c−1} (the stored chunk,
            // data here); the memory's weights' gradients accumulate inside.
            memory.backward(dy, /*kl_weight=*/0.0, dq_long, dx_stored);
            dq += dq_long;
            w.dwq_long += dq_long.transpose() * X[std::size_t(c)];
        }
        w.dwq += dq.transpose() * X[std::size_t(c)];
    }
    if (long_term_share) *long_term_share = std::sqrt(long_norm / (long_norm + local_norm));
    return loss;
}

}  // namespace

int main() {
    infinityformer::LongTermParams params = infinityformer::LongTermParams::sorting();
    params.num_basis = 32;
    params.num_samples = 32;
    params.seed = 3;
    infinityformer::LongTermAttention<double> memory(d, /*num_heads=*/2, L, params);

    std::mt19937_64 rng(7);
    std::normal_distribution<double> gauss;
    auto normal = [&](Index rows, Index cols, double scale) {
        Matrix m(rows, cols);
        for (Index i = 0; i < m.size(); ++i) m(i) = scale * gauss(rng);
        return m;
    };
    Own w;
    const double s = 1.0 / std::sqrt(double(d));
    w.wq = normal(d, d, s);
    w.wk = normal(d, d, s);
    w.wv = normal(d, d, s);
    std::vector<Matrix> X, G;
    for (Index c = 0; c < num_chunks; ++c) {
        X.push_back(normal(L, d, 1.0));
        G.push_back(normal(L, d, 1.0));
    }

    w.dwq = w.dwk = w.dwv = w.dwq_long = Matrix::Zero(d, d);
    memory.zero_grad();
    double share = 0;
    const double loss = run(w, memory, X, G, true, &share);
    std::printf("loss over %ld chunks: %.6f; the long-term memory's share of the output: %.2f\n",
                long(num_chunks), loss, share);

    // Central differences of the whole stream's loss.
    const double h = 1e-5;
    auto fd = [&](double& entry) {
        const double keep = entry;
        entry = keep + h;
        const double up = run(w, memory, X, G, false);
        entry = keep - h;
        const double down = run(w, memory, X, G, false);
        entry = keep;
        return (up - down) / (2 * h);
    };
    int failures = 0;
    auto report = [&](const char* name, double analytic, double numeric) {
        const double rel = std::abs(analytic - numeric) / std::max(1e-3, std::abs(numeric));
        std::printf(
            "d loss / d %-28s backward % .8f, finite difference % .8f (relative "
            "difference %.1e)\n",
            name, analytic, numeric, rel);
        failures += rel > 1e-5;
    };
    // The query projection, at the entry where the long-term attention's path (its dqueries)
    // contributes most: the finite difference sees both paths.
    Index i = 0, j = 0;
    w.dwq_long.cwiseAbs().maxCoeff(&i, &j);
    const std::string name = "W_Q[" + std::to_string(i) + ", " + std::to_string(j) + "]";
    report(name.c_str(), w.dwq(i, j), fd(w.wq(i, j)));
    std::printf("  of which through LongTermAttention::backward's dqueries: % .8f\n",
                w.dwq_long(i, j));
    // A weight of the long-term attention, through its parameters() views.
    for (const auto& p : memory.parameters())
        if (p.name == "proj_value.weight")
            report("proj_value.weight[1, 3]", p.grad[1 + 3 * d], fd(p.value[1 + 3 * d]));
    return failures == 0 ? 0 : 1;
}
