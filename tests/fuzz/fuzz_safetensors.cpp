// libFuzzer target: the safetensors reader (io::Safetensors::parse) and the weight loaders
// on arbitrary bytes (scripts/fuzz builds and runs it).
//
// Whatever the input, parsing either succeeds or throws one of the library's exceptions.
// A parsed file is read further: every tensor's values as float and as double, the
// description of what a layer and a long-term attention would take from it, and the
// loaders under the prefixes "" and the golden files' (each either loads or throws, and a
// failed load leaves the weights as they were); what loads is written back and must read
// back to the same tensors.
#include <cstdint>
#include <cstdlib>
#include <infinityformer/io/safetensors.hpp>
#include <infinityformer/io/weights.hpp>
#include <optional>
#include <string>
#include <vector>

namespace {

using namespace infinityformer;

struct Modules {
    LongTermParams p = [] {
        LongTermParams q = LongTermParams::lm();  // gated
        q.num_basis = 20;
        q.num_samples = 8;
        q.num_bins = 16;
        q.stability = Stability::allow;  // N = 20 with the lm widths holds little of a
                                         // chunk (reach.hpp); the reader does not mind
        return q;
    }();
    LongTermAttention<double> attention{6, 2, 12, p, 6};
    InfinityFormerLayer<float> layer{6, 2, 12, p};
};

// Every weight of a module, as double matrices (to compare two modules' weights).
std::vector<Eigen::MatrixXd> weights_of(const LongTermAttention<double>& m) {
    const auto& w = m.attention().weights();
    std::vector<Eigen::MatrixXd> out = {w.proj_key, w.proj_value, w.attn_out, w.mu, w.sigma};
    for (const auto& tap : m.gate().weights().taps) out.push_back(tap);
    out.push_back(m.gate().weights().bias);
    return out;
}
std::vector<Eigen::MatrixXd> weights_of(const InfinityFormerLayer<float>& m) {
    const auto& s = m.short_term_weights();
    const auto& w = m.long_term().attention().weights();
    std::vector<Eigen::MatrixXd> out;
    for (const Eigen::MatrixXf* x :
         {&s.query, &s.key, &s.value, &s.out, &w.proj_key, &w.proj_value, &w.attn_out})
        out.push_back(x->cast<double>());
    out.push_back(w.mu.cast<double>());
    out.push_back(w.sigma.cast<double>());
    for (const auto& tap : m.long_term().gate().weights().taps) out.push_back(tap.cast<double>());
    out.push_back(m.long_term().gate().weights().bias.cast<double>());
    return out;
}
bool same(const std::vector<Eigen::MatrixXd>& a, const std::vector<Eigen::MatrixXd>& b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (a[i].rows() != b[i].rows() || a[i].cols() != b[i].cols() ||
            !(a[i].array() == b[i].array()).all())
            return false;
    return true;
}

// On a copy of the module, so that every input starts from the same weights (a crash
// reproduces from its input alone).
template <typename Module>
void try_load(const Module& base, const io::Safetensors& file, const std::string& prefix) {
    Module m = base;
    const auto before = weights_of(m);
    try {
        io::load_weights(m, file, prefix);
    } catch (const infinityformer::invalid_argument&) {
        if (!same(weights_of(m), before)) std::abort();  // a failed load changed the weights
        return;
    } catch (const infinityformer::runtime_error&) {
        if (!same(weights_of(m), before)) std::abort();
        return;
    }
    io::SafetensorsWriter out;
    io::save_weights(m, out, prefix);
    const auto again = io::Safetensors::parse(out.bytes(), "round trip");
    Module copy = m;
    io::load_weights(copy, again, prefix);
    if (!same(weights_of(copy), weights_of(m))) std::abort();  // the round trip changed one
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static Modules* modules = new Modules;
    std::optional<io::Safetensors> parsed;
    try {
        parsed.emplace(io::Safetensors::parse(data, size, "fuzz input"));
    } catch (const infinityformer::runtime_error&) {
        return 0;
    } catch (const infinityformer::invalid_argument&) {
        return 0;
    }
    const io::Safetensors& file = *parsed;
    for (const auto& name : file.names()) {
        try {
            (void)file.values<float>(name);
        } catch (const infinityformer::invalid_argument&) {
        } catch (const infinityformer::runtime_error&) {
        }
        try {
            (void)file.values<double>(name);
        } catch (const infinityformer::invalid_argument&) {
        } catch (const infinityformer::runtime_error&) {
        }
    }
    (void)io::describe(file, modules->layer, "").problems();
    for (const std::string prefix : {"", "transformer.h.0.attn.long_term_attention."}) {
        try_load(modules->attention, file, prefix);
        try_load(modules->layer, file, prefix);
    }
    return 0;
}
