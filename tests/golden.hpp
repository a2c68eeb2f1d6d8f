// Conformance against golden data computed by the authors' reference implementation
// (tests/data/golden/README.md). Shared by the Catch2 suite and the golden_check runner.
//
// Every shape and parameter comes from the case's meta.txt and the arrays' headers, so any
// set of cases of these kinds can be checked.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <infinityformer/infinityformer.hpp>
#include <infinityformer/io/safetensors.hpp>
#include <infinityformer/io/weights.hpp>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace golden {

using Matrix = Eigen::MatrixXd;
using Vector = Eigen::VectorXd;
using Index = Eigen::Index;

/// One case directory: meta.txt and NAME.txt arrays.
class Case {
public:
    explicit Case(std::filesystem::path dir) : dir_(std::move(dir)) {
        std::ifstream in(dir_ / "meta.txt");
        if (!in) throw std::runtime_error("cannot open " + (dir_ / "meta.txt").string());
        std::string line;
        while (std::getline(in, line)) {
            const auto eq = line.find(" = ");
            if (eq == std::string::npos) continue;
            meta_[line.substr(0, eq)] = line.substr(eq + 3);
        }
    }

    const std::filesystem::path& dir() const { return dir_; }
    bool has_meta(const std::string& key) const { return meta_.count(key) != 0; }
    std::string str(const std::string& key) const {
        auto it = meta_.find(key);
        if (it == meta_.end()) throw std::runtime_error("meta.txt has no key '" + key + "'");
        return it->second;
    }
    double num(const std::string& key) const { return std::stod(str(key)); }
    Index integer(const std::string& key) const { return std::stol(str(key)); }

    bool has(const std::string& name) const {
        return std::filesystem::exists(dir_ / (name + ".txt"));
    }
    Matrix array(const std::string& name) const {
        const auto path = dir_ / (name + ".txt");
        std::ifstream in(path);
        if (!in) throw std::runtime_error("cannot open " + path.string());
        Index rows = 0, cols = 0;
        if (!(in >> rows >> cols) || rows < 0 || cols < 0)
            throw std::runtime_error("bad header in " + path.string());
        Matrix m(rows, cols);
        std::string tok;
        for (Index i = 0; i < rows; ++i)
            for (Index j = 0; j < cols; ++j) {
                if (!(in >> tok)) throw std::runtime_error("truncated " + path.string());
                m(i, j) = std::strtod(tok.c_str(), nullptr);
            }
        return m;
    }

    /// The basis widths width_0 … width_{W−1}.
    std::vector<double> widths() const {
        std::vector<double> w;
        for (Index j = 0; j < integer("num_widths"); ++j)
            w.push_back(num("width_" + std::to_string(j)));
        return w;
    }

private:
    std::filesystem::path dir_;
    std::map<std::string, std::string> meta_;
};

/// err_i = |a_i − g_i| / max(|g_i|, φ·max_j|g_j|, 1e-280); returns max_i err_i.
inline double max_rel_err(const Matrix& a, const Matrix& g, double phi) {
    const double scale = phi * g.cwiseAbs().maxCoeff();
    double worst = 0.0;
    for (Index j = 0; j < g.cols(); ++j)
        for (Index i = 0; i < g.rows(); ++i) {
            const double den = std::max({std::abs(g(i, j)), scale, 1e-280});
            const double e = std::abs(a(i, j) - g(i, j)) / den;
            if (!(e <= worst)) worst = e;  // NaN propagates as a failure
        }
    return worst;
}

struct ArrayResult {
    std::string name;
    double err;
    double rtol;
    bool pass;
};

enum class Status { passed, failed, skipped };

struct CaseResult {
    std::string dir;
    std::string kind;
    Status status = Status::passed;
    std::string message;  // why it failed or was skipped
    std::vector<ArrayResult> arrays;

    /// The largest error over all arrays and the array it belongs to.
    const ArrayResult* worst() const {
        const ArrayResult* w = nullptr;
        for (const auto& a : arrays)
            if (!w || !(a.err <= w->err)) w = &a;
        return w;
    }
};

/// Compares results with a case's arrays and records the outcome.
class Checker {
public:
    Checker(const Case& c, CaseResult& r) : case_(c), res_(r) {}

    void compare(const std::string& name, const Matrix& actual, double rtol, double phi) {
        const Matrix g = case_.array(name);
        if (g.rows() != actual.rows() || g.cols() != actual.cols()) {
            fail(name + ": shape " + std::to_string(actual.rows()) + "x" +
                 std::to_string(actual.cols()) + ", expected " + std::to_string(g.rows()) + "x" +
                 std::to_string(g.cols()));
            res_.arrays.push_back({name, INFINITY, rtol, false});
            return;
        }
        const double err = g.size() == 0 ? 0.0 : max_rel_err(actual, g, phi);
        const bool ok = err <= rtol;
        res_.arrays.push_back({name, err, rtol, ok});
        if (!ok) {
            std::ostringstream os;
            os.precision(3);
            os << name << ": err " << err << " > rtol " << rtol;
            fail(os.str());
        }
    }
    void compare(const std::string& name, const Vector& actual, double rtol, double phi) {
        compare(name, Matrix(actual), rtol, phi);
    }
    void compare(const std::string& name, const std::vector<double>& actual, double rtol,
                 double phi) {
        compare(name, Matrix(Eigen::Map<const Vector>(actual.data(), Index(actual.size()))), rtol,
                phi);
    }
    /// Values that must equal `expected` bit for bit (the err shown is the README metric
    /// with φ = 0, for information; any difference fails).
    void exact(const std::string& name, const Vector& actual, const Vector& expected) {
        bool same = actual.size() == expected.size();
        for (Index i = 0; same && i < actual.size(); ++i)
            same = std::memcmp(&actual[i], &expected[i], sizeof(double)) == 0;
        const double err = actual.size() == expected.size() && actual.size() > 0
                               ? max_rel_err(actual, expected, 0.0)
                               : (same ? 0.0 : INFINITY);
        res_.arrays.push_back({name, err, 0.0, same});
        if (!same) {
            std::ostringstream os;
            os.precision(3);
            os << name << ": not bit-identical (" << actual.size() << " vs " << expected.size()
               << " values, err " << err << ")";
            fail(os.str());
        }
    }

    /// A meta value that must equal what the implementation derives.
    void expect_meta(const std::string& key, Index actual) {
        if (!case_.has_meta(key)) return;
        if (case_.integer(key) != actual)
            fail("meta " + key + " = " + case_.str(key) + ", implementation has " +
                 std::to_string(actual));
    }

    void fail(const std::string& why) {
        res_.status = Status::failed;
        if (!res_.message.empty()) res_.message += "; ";
        res_.message += why;
    }

private:
    const Case& case_;
    CaseResult& res_;
};

// Tolerances of golden README §5.
constexpr double kExact = 1e-9;   // closed forms, positions (φ = 0)
constexpr double kSolve = 1e-9;   // linear solves and pipelines (φ = 1e-3)
constexpr double kOutput = 1e-8;  // streamed outputs (φ = 1e-3)
constexpr double kPhi = 1e-3;

inline infinityformer::LongTermParams params_from(const Case& c) {
    infinityformer::LongTermParams p = c.str("version") == "lm"
                                           ? infinityformer::LongTermParams::lm()
                                           : infinityformer::LongTermParams::sorting();
    p.gate = false;
    // The reference's update, unchecked: the cases replay a few chunks of the authors'
    // code, whatever the stability of their (small) configuration.
    p.stability = infinityformer::Stability::allow;
    p.num_basis = c.integer("num_basis");
    p.widths = c.widths();
    if (c.has_meta("ridge_penalty")) p.ridge_lambda = c.num("ridge_penalty");
    if (c.has_meta("tau")) p.tau = c.num("tau");
    if (c.has_meta("num_samples")) p.num_samples = c.integer("num_samples");
    if (c.has_meta("num_bins")) p.num_bins = c.integer("num_bins");
    if (c.has_meta("sigma_sq_min")) p.sigma_sq_min = c.num("sigma_sq_min");
    if (c.has_meta("kl_sigma_0")) p.kl_sigma_0 = c.num("kl_sigma_0");
    if (c.has_meta("kl_mu_term")) p.kl_mu_term = c.integer("kl_mu_term") != 0;
    if (c.has_meta("kl_mu_0")) p.kl_mu_0 = c.num("kl_mu_0");
    return p;
}

inline infinityformer::GaussianBasis<double> basis_from(const Case& c) {
    return infinityformer::GaussianBasis<double>::default_family(c.integer("num_basis"),
                                                                 c.widths());
}

inline void check_basis_arrays(Checker& ck, const infinityformer::GaussianBasis<double>& basis) {
    ck.compare("centers", basis.centers(), kExact, 0.0);
    ck.compare("widths", basis.widths(), kExact, 0.0);
}

inline infinityformer::ContinuousAttention<double>::Weights attention_weights_from(const Case& c) {
    infinityformer::ContinuousAttention<double>::Weights w;
    w.proj_key = c.array("proj_key_weight");
    w.proj_value = c.array("proj_value_weight");
    w.attn_out = c.array("attn_out_weight");
    w.mu = c.array("mu_weight").transpose();
    w.sigma = c.array("sigma_weight").transpose();
    return w;
}

inline void check_basis_gaussian(const Case& c, Checker& ck) {
    const auto basis = basis_from(c);
    check_basis_arrays(ck, basis);
    const Vector t = c.array("t");
    ck.compare("psi", basis.evaluate(t), kExact, 0.0);
    const Vector mu = c.array("mu"), s2 = c.array("sigma_sq");
    ck.compare("E_psi", basis.expect_psi(mu, s2), kExact, 0.0);
    ck.compare("E_t_psi", basis.expect_t_psi(mu, s2), kExact, 0.0);
    ck.compare("E_t2_psi", basis.expect_t2_psi(mu, s2), kExact, 0.0);
}

inline void check_continuous_softmax_grad(const Case& c, Checker& ck) {
    const auto basis = basis_from(c);
    check_basis_arrays(ck, basis);
    const Vector mu = c.array("mu"), s2 = c.array("sigma_sq");
    const Matrix dr = c.array("dr");
    const Index q = mu.size();
    Matrix theta(q, 2);
    theta.col(0) = mu.cwiseQuotient(s2);
    theta.col(1) = (-0.5 * s2.cwiseInverse());
    ck.compare("theta", theta, kExact, 0.0);
    const Matrix r = basis.expect_psi(mu, s2);
    ck.compare("r", r, kExact, 0.0);

    // Exact derivatives: the library's direct form.
    Vector dmu(q), ds2(q);
    basis.expect_psi_backward(mu, s2, dr, dmu, ds2);
    ck.compare("grad_mu_exact", dmu, kExact, 0.0);
    ck.compare("grad_sigma_sq_exact", ds2, kExact, 0.0);
    Matrix gt_exact(q, 2);
    gt_exact.col(0) = s2.cwiseProduct(dmu);
    gt_exact.col(1) =
        2.0 * mu.cwiseProduct(s2).cwiseProduct(dmu) + 2.0 * s2.cwiseProduct(s2).cwiseProduct(ds2);
    ck.compare("grad_theta_exact", gt_exact, kExact, 0.0);

    // The reference's route: covariance form w.r.t. θ, then through θ(μ, σ²) (README §3.3).
    const Matrix et = basis.expect_t_psi(mu, s2), et2 = basis.expect_t2_psi(mu, s2);
    Matrix g(q, 2);
    for (Index i = 0; i < q; ++i) {
        g(i, 0) = (dr.row(i).array() * (et.row(i).array() - mu[i] * r.row(i).array())).sum();
        g(i, 1) =
            (dr.row(i).array() * (et2.row(i).array() - (mu[i] * mu[i] + s2[i]) * r.row(i).array()))
                .sum();
    }
    ck.compare("grad_theta", g, kExact, 0.0);
    const Vector gmu = g.col(0).cwiseQuotient(s2);
    const Vector gs2 =
        (-mu.cwiseProduct(g.col(0)) + 0.5 * g.col(1)).cwiseQuotient(s2.cwiseProduct(s2));
    ck.compare("grad_mu", gmu, kExact, 0.0);
    ck.compare("grad_sigma_sq", gs2, 1e-4, 0.0);  // README §5: the θ route loses digits
}

inline void check_ridge_fit(const Case& c, Checker& ck) {
    const auto basis = basis_from(c);
    check_basis_arrays(ck, basis);
    const Index len = c.integer("length");
    const auto fit = infinityformer::single_chunk_fit<double>(basis, len, c.num("ridge_penalty"));
    ck.expect_meta("num_positions", Index(fit.positions().all.size()));
    ck.expect_meta("pad_left", fit.positions().first_kept);
    ck.expect_meta("first_kept_row", fit.positions().first_kept);
    ck.expect_meta("pad_right", Index(fit.positions().all.size()) - fit.positions().first_kept -
                                    fit.positions().num_kept);
    ck.compare("positions", fit.positions().all, kExact, 0.0);
    ck.compare("G", fit.G(), kSolve, kPhi);
    ck.compare("B", fit.fit(c.array("X")), kSolve, kPhi);
}

inline void check_ltm_single(const Case& c, Checker& ck) {
    const auto basis = basis_from(c);
    check_basis_arrays(ck, basis);
    const auto params = params_from(c);
    const Index e = c.integer("num_heads") * c.integer("head_size");
    const auto fit =
        infinityformer::single_chunk_fit<double>(basis, c.integer("length"), params.ridge_lambda);
    ck.compare("G", fit.G(), kSolve, kPhi);
    const Matrix B = fit.fit(c.array("k"));
    ck.compare("B", B, kSolve, kPhi);
    infinityformer::ContinuousAttention<double> attn(basis, e, c.integer("num_heads"),
                                                     c.integer("d_model"), params);
    attn.set_weights(attention_weights_from(c));
    const Matrix out = attn.forward(B, c.array("q"));
    const auto& t = attn.last();
    // The forward pass forms neither keys nor scores; they are compared as computed on
    // demand from the memory and queries the forward pass recorded.
    ck.compare("keys", attn.keys(t.B), kSolve, kPhi);
    ck.compare("values", attn.values(t.B), kSolve, kPhi);
    ck.compare("scores", attn.scores(t.B, t.queries), kSolve, kPhi);
    ck.compare("mu", t.mu, kSolve, kPhi);
    ck.compare("sigma_sq", t.sigma_sq, kSolve, kPhi);
    ck.compare("r", Matrix(t.r), kSolve, kPhi);
    ck.compare("context", t.context, kSolve, kPhi);
    ck.compare("output", out, kSolve, kPhi);
    ck.compare("kl_reg", t.kl_reg, kSolve, kPhi);
}

/// The stream kinds: uniform, sticky and gated (and the forward part of ltm_grad and
/// ltm_weights, which share the layout).
inline void check_stream(const Case& c, Checker& ck, bool sticky, bool gated) {
    auto params = params_from(c);
    params.sampling = sticky ? infinityformer::Sampling::sticky : infinityformer::Sampling::uniform;
    params.gate = gated;
    const Index heads = c.integer("num_heads");
    const Index e = heads * c.integer("head_size");
    const Index len = c.integer("length");
    infinityformer::LongTermAttention<double> ltm(e, heads, len, params, c.integer("d_model"));
    ltm.set_attention_weights(attention_weights_from(c));
    if (gated) {
        infinityformer::MemoryGate<double>::Weights gw;
        for (int j = 0; j < 3; ++j)
            gw.taps[std::size_t(j)] = c.array("mask_weight_" + std::to_string(j));
        gw.bias = c.array("mask_bias");
        ltm.set_gate_weights(gw);
    }
    const auto& mem = ltm.memory();
    check_basis_arrays(ck, mem.basis());
    ck.compare("positions_first", mem.first_fit().positions().all, kExact, 0.0);
    ck.compare("G_first", mem.first_fit().G(), kSolve, kPhi);
    const auto& inf_pos = mem.unbounded_fit().positions();
    ck.expect_meta("inf_num_positions", Index(inf_pos.all.size()));
    ck.expect_meta("inf_pad_left", inf_pos.first_kept);
    ck.expect_meta("inf_first_kept_row", inf_pos.first_kept);
    ck.expect_meta("inf_pad_right",
                   Index(inf_pos.all.size()) - inf_pos.first_kept - inf_pos.num_kept);
    ck.compare("positions_inf", inf_pos.all, kExact, 0.0);
    ck.compare("G_inf", mem.unbounded_fit().G(), kSolve, kPhi);
    if (!sticky) {
        infinityformer::LongTermMemory<double> probe(e, len, params);
        const Vector points = probe.next_sample_points();
        ck.compare("sample_points", points, kExact, 0.0);
        ck.compare("samples_psi", mem.basis().evaluate(points), kSolve, kPhi);
    }
    const Index chunks = c.integer("num_chunks");
    for (Index j = 0; j < chunks; ++j) {
        const std::string p = "c" + std::to_string(j) + "_";
        const Matrix k = c.array(p + "k"), q = c.array(p + "q");
        Matrix out;
        if (sticky && j >= 1) {
            ck.compare(p + "hist", ltm.memory().histogram(), kSolve, kPhi);
            out = ltm.forward(k, q, c.array(p + "ts"));
        } else {
            out = ltm.forward(k, q);
        }
        if (gated) {
            ck.compare(p + "gate", ltm.last_gate(), kSolve, kPhi);
            ck.compare(p + "k_gated", ltm.last_gated(), kSolve, kPhi);
        }
        if (j >= 1) ck.compare(p + "X_past", mem.last_past(), kSolve, kPhi);
        ck.compare(p + "B", mem.coefficients(), kSolve, kPhi);
        const auto& t = ltm.last_attention();
        ck.compare(p + "mu", t.mu, kSolve, kPhi);
        ck.compare(p + "sigma_sq", t.sigma_sq, kSolve, kPhi);
        ck.compare(p + "kl_reg", t.kl_reg, kSolve, kPhi);
        ck.compare(p + "output", out, kOutput, kPhi);
    }
}

/// ltm_grad: chunk 0 forward, chunk 1 forward and backward (golden README §3.10).
inline void check_ltm_grad(const Case& c, Checker& ck) {
    auto params = params_from(c);
    params.sampling = infinityformer::Sampling::sticky;
    params.gate = true;
    const Index heads = c.integer("num_heads");
    const Index e = heads * c.integer("head_size");
    infinityformer::LongTermAttention<double> ltm(e, heads, c.integer("length"), params,
                                                  c.integer("d_model"));
    ltm.set_attention_weights(attention_weights_from(c));
    infinityformer::MemoryGate<double>::Weights gw;
    for (int j = 0; j < 3; ++j)
        gw.taps[std::size_t(j)] = c.array("mask_weight_" + std::to_string(j));
    gw.bias = c.array("mask_bias");
    ltm.set_gate_weights(gw);
    const auto& mem = ltm.memory();
    ck.compare("G_first", mem.first_fit().G(), kSolve, kPhi);
    ck.compare("G_inf", mem.unbounded_fit().G(), kSolve, kPhi);

    ltm.forward(c.array("c0_k"), c.array("c0_q"));
    ck.compare("c0_B", mem.coefficients(), kSolve, kPhi);
    ck.compare("c0_mu", ltm.last_attention().mu, kSolve, kPhi);
    ck.compare("c0_sigma_sq", ltm.last_attention().sigma_sq, kSolve, kPhi);
    ck.compare("c1_hist", mem.histogram(), kSolve, kPhi);

    const Matrix k1 = c.array("c1_k"), q1 = c.array("c1_q"), dout = c.array("dout");
    const Matrix out = ltm.forward(k1, q1, c.array("c1_ts"));
    const auto& t = ltm.last_attention();
    ck.compare("c1_gate", ltm.last_gate(), kSolve, kPhi);
    ck.compare("c1_k_gated", ltm.last_gated(), kSolve, kPhi);
    ck.compare("c1_X_past", mem.last_past(), kSolve, kPhi);
    ck.compare("c1_B", mem.coefficients(), kSolve, kPhi);
    ck.compare("c1_mu", t.mu, kSolve, kPhi);
    ck.compare("c1_sigma_sq", t.sigma_sq, kSolve, kPhi);
    ck.compare("c1_kl_reg", t.kl_reg, kSolve, kPhi);
    ck.compare("c1_output", out, kOutput, kPhi);

    const double kl_weight = c.num("kl_weight");
    Matrix loss(1, 1);
    loss(0, 0) = (out.array() * dout.array()).sum() + kl_weight * t.kl_reg.sum();
    ck.compare("loss", loss, kExact, 0.0);

    constexpr double kGrad = 1e-7;  // README §5
    ltm.zero_grad();
    Matrix dq(q1.rows(), e), dk(k1.rows(), e);
    ltm.backward(dout, kl_weight, dq, dk);
    const auto& ga = ltm.attention().gradients();
    const auto& gg = ltm.gate().gradients();
    ck.compare("grad_proj_key_weight", ga.proj_key, kGrad, kPhi);
    ck.compare("grad_proj_value_weight", ga.proj_value, kGrad, kPhi);
    ck.compare("grad_attn_out_weight", ga.attn_out, kGrad, kPhi);
    ck.compare("grad_mu_weight", Matrix(ga.mu.transpose()), kGrad, kPhi);
    ck.compare("grad_sigma_weight", Matrix(ga.sigma.transpose()), kGrad, kPhi);
    for (int j = 0; j < 3; ++j)
        ck.compare("grad_mask_weight_" + std::to_string(j), gg.taps[std::size_t(j)], kGrad, kPhi);
    ck.compare("grad_mask_bias", gg.bias, kGrad, kPhi);
    ck.compare("grad_c1_q", dq, kGrad, kPhi);
    ck.compare("grad_c1_k", dk, kGrad, kPhi);
    ck.compare("grad_c1_k_gated", ltm.last_grad_gated(), kGrad, kPhi);
    ck.compare("grad_c1_B", ltm.last_grad_B(), kGrad, kPhi);
    ck.compare("grad_c1_mu", ltm.last_grad_mu(), kGrad, kPhi);
    ck.compare("grad_c1_sigma_sq", ltm.last_grad_sigma_sq(), kGrad, kPhi);
}

/// ltm_weights (golden README §4): the gated sticky stream of ltm_stream_gated with its
/// weights read from three safetensors files (F64, F32, BF16) under meta weights_prefix;
/// each file's outputs against its own expected outputs; the files' structure; the decoded
/// values exact (F32 = F64 rounded to float, BF16 = F32 rounded to bfloat16, nearest even).
inline void check_ltm_weights(const Case& c, Checker& ck) {
    namespace io = infinityformer::io;
    auto params = params_from(c);
    params.sampling = infinityformer::Sampling::sticky;
    params.gate = true;
    const Index heads = c.integer("num_heads");
    const Index e = heads * c.integer("head_size");
    const Index len = c.integer("length");
    const Index chunks = c.integer("num_chunks");
    const std::string prefix = c.str("weights_prefix");
    const std::string ignored = c.str("weights_ignored");
    const Index module_tensors = c.integer("weights_num_module_tensors");
    struct File {
        const char* name;
        std::string suffix;
        io::DType dtype;
    };
    const File files[] = {{"weights_f64.safetensors", "", io::DType::F64},
                          {"weights_f32.safetensors", "_f32", io::DType::F32},
                          {"weights_bf16.safetensors", "_bf16", io::DType::BF16}};
    std::vector<io::Safetensors> loaded;
    for (const File& f : files) {
        loaded.push_back(io::Safetensors::load(c.dir() / f.name));
        const io::Safetensors& st = loaded.back();
        Index under = 0;
        for (const auto& name : st.names()) {
            if (name.compare(0, prefix.size(), prefix) == 0) ++under;
            if (st.info(name).dtype != f.dtype)
                ck.fail(std::string(f.name) + ": tensor " + name + " has dtype " +
                        io::dtype_name(st.info(name).dtype) + ", expected " +
                        io::dtype_name(f.dtype));
        }
        if (under != module_tensors)
            ck.fail(std::string(f.name) + ": " + std::to_string(under) +
                    " tensors under the prefix, meta weights_num_module_tensors = " +
                    std::to_string(module_tensors));
        if (!st.has(ignored) || ignored.compare(0, prefix.size(), prefix) == 0)
            ck.fail(std::string(f.name) + ": weights_ignored " + ignored +
                    " is not a tensor of the file outside the prefix");

        infinityformer::LongTermAttention<double> ltm(e, heads, len, params, c.integer("d_model"));
        io::load_weights(ltm, st, prefix);
        for (Index j = 0; j < chunks; ++j) {
            const std::string p = "c" + std::to_string(j) + "_";
            const Matrix k = c.array(p + "k"), q = c.array(p + "q");
            const Matrix out =
                j == 0 ? ltm.forward(k, q) : ltm.forward(k, q, c.array(p + "ts" + f.suffix));
            ck.compare(p + "output" + f.suffix, out, kOutput, kPhi);
        }
    }

    // Decoded values: the same names and shapes in the three files; F32 = (float) F64 and
    // BF16 = the F32 value's bits rounded to their upper half, ties to even.
    const auto& f64 = loaded[0];
    const auto& f32 = loaded[1];
    const auto& bf16 = loaded[2];
    if (f32.names() != f64.names() || bf16.names() != f64.names()) {
        ck.fail("the three files hold different tensor names");
        return;
    }
    std::vector<double> got32, want32, got16, want16;
    for (const auto& name : f64.names()) {
        if (f32.info(name).shape != f64.info(name).shape ||
            bf16.info(name).shape != f64.info(name).shape) {
            ck.fail("tensor " + name + " has different shapes in the three files");
            continue;
        }
        const auto a = f64.values<double>(name), b = f32.values<double>(name),
                   h = bf16.values<double>(name);
        for (std::size_t i = 0; i < a.size(); ++i) {
            got32.push_back(b[i]);
            want32.push_back(static_cast<double>(static_cast<float>(a[i])));
            std::uint32_t u = 0;
            const float fb = static_cast<float>(b[i]);  // exact: b[i] is a float's value
            std::memcpy(&u, &fb, sizeof u);
            const std::uint32_t r = ((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16) << 16;
            float fr = 0;
            std::memcpy(&fr, &r, sizeof fr);
            got16.push_back(h[i]);
            want16.push_back(static_cast<double>(fr));
        }
    }
    const auto vec = [](const std::vector<double>& v) {
        return Vector(Eigen::Map<const Vector>(v.data(), Index(v.size())));
    };
    ck.exact("weights_f32_values", vec(got32), vec(want32));
    ck.exact("weights_bf16_values", vec(got16), vec(want16));
}

inline void check_sticky_histogram(const Case& c, Checker& ck) {
    const Index bins = c.integer("num_bins");
    Vector edges(bins + 1);
    for (Index j = 0; j <= bins; ++j) edges[j] = double(j) / double(bins);
    edges[0] = c.num("edge_first");
    edges[bins] = c.num("edge_last");
    ck.compare("edges", edges, kExact, 0.0);
    const Vector mu = c.array("mu"), sigma = c.array("sigma");
    ck.compare("p", infinityformer::sticky_histogram<double>(mu, sigma, bins), kExact, 1e-5);
}

/// Checks one case directory; never throws (errors become a failed result).
inline CaseResult check_case(const std::filesystem::path& dir) {
    CaseResult res;
    res.dir = dir.string();
    try {
        const Case c(dir);
        res.kind = c.str("kind");
        Checker ck(c, res);
        const std::string& k = res.kind;
        if (k == "basis_gaussian")
            check_basis_gaussian(c, ck);
        else if (k == "continuous_softmax_grad")
            check_continuous_softmax_grad(c, ck);
        else if (k == "ridge_fit")
            check_ridge_fit(c, ck);
        else if (k == "ltm_single")
            check_ltm_single(c, ck);
        else if (k == "ltm_stream_uniform")
            check_stream(c, ck, false, false);
        else if (k == "ltm_stream_sticky")
            check_stream(c, ck, true, false);
        else if (k == "ltm_stream_gated")
            check_stream(c, ck, true, true);
        else if (k == "sticky_histogram")
            check_sticky_histogram(c, ck);
        else if (k == "ltm_grad")
            check_ltm_grad(c, ck);
        else if (k == "ltm_weights")
            check_ltm_weights(c, ck);
        else {
            res.status = Status::failed;
            res.message = "unknown kind '" + k + "'";
        }
    } catch (const std::exception& ex) {
        res.status = Status::failed;
        res.message += std::string(res.message.empty() ? "" : "; ") + "exception: " + ex.what();
    }
    return res;
}

/// Every directory under root (root included) that holds a meta.txt, sorted.
inline std::vector<std::filesystem::path> find_cases(const std::filesystem::path& root) {
    std::vector<std::filesystem::path> out;
    if (std::filesystem::exists(root / "meta.txt")) out.push_back(root);
    if (std::filesystem::is_directory(root))
        for (const auto& entry : std::filesystem::recursive_directory_iterator(root))
            if (entry.is_directory() && std::filesystem::exists(entry.path() / "meta.txt"))
                out.push_back(entry.path());
    std::sort(out.begin(), out.end());
    return out;
}

}  // namespace golden
