// infinityformer-inspect FILE [--prefix P]
//
// Lists the tensors of a safetensors file (name, dtype, shape, bytes) and its metadata. With
// --prefix, also what a LongTermAttention (or, if P + "short_term.query.weight" is there, an
// InfinityFormerLayer) would take from the tensors under P: the sizes e, d_model and N are
// read from P + proj_key.weight, attn_out.weight and mu.weight, the gate from the presence
// of P + mask_net.*, and every name gets its status (taken, unused, extra, shape mismatch)
// and the missing names are listed.
//
// Exit status: 0 if the file was read (and, with --prefix, the weights would load), 1 if it
// cannot be read or the weights would not load, 2 on bad usage.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <infinityformer/io/safetensors.hpp>
#include <infinityformer/io/weights.hpp>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

namespace io = infinityformer::io;

namespace {

int usage(const char* why) {
    if (why) std::cerr << "infinityformer-inspect: " << why << "\n";
    std::cerr << "usage: infinityformer-inspect FILE [--prefix P]\n"
                 "  lists the tensors (name, dtype, shape, bytes) and metadata of a safetensors\n"
                 "  file; with --prefix, which tensors under P a LongTermAttention or an\n"
                 "  InfinityFormerLayer (P + short_term.*) would take, and which are missing\n";
    return 2;
}

// Dimension k of the tensor `name`, if the file has it with at least k + 1 dimensions.
std::optional<std::int64_t> dim(const io::Safetensors& f, const std::string& name, std::size_t k) {
    if (!f.has(name) || f.info(name).shape.size() <= k) return std::nullopt;
    return f.info(name).shape[k];
}

// The longest name, for the columns.
int name_width(const io::Safetensors& f) {
    std::size_t w = 4;
    for (const auto& n : f.names()) w = std::max(w, n.size());
    return static_cast<int>(w);
}

int report(const io::Safetensors& f, const std::string& prefix) {
    const int w = name_width(f);
    const bool layer = f.has(prefix + "short_term.query.weight");
    const std::string lt = layer ? prefix + "long_term." : prefix;
    const auto e = dim(f, lt + "proj_key.weight", 0);
    const auto n = dim(f, lt + "mu.weight", 1);
    const auto dm = dim(f, lt + "attn_out.weight", 0);
    const bool gate = f.has(lt + "mask_net.weight") || f.has(lt + "mask_net.bias");
    std::printf("\nunder prefix '%s': %s", prefix.c_str(),
                layer ? "an InfinityFormerLayer" : "a LongTermAttention");
    if (!e || !n) {
        std::printf("\n  cannot infer the sizes: %s%s is missing (or has too few dimensions)\n",
                    lt.c_str(), !e ? "proj_key.weight" : "mu.weight");
        return 1;
    }
    std::printf(" with e = %lld, d_model = %lld, N = %lld, %s\n", static_cast<long long>(*e),
                static_cast<long long>(dm.value_or(*e)), static_cast<long long>(*n),
                gate ? "gate" : "no gate");
    const auto spec = layer ? io::layer_tensors(*e, *n, gate)
                            : io::long_term_tensors(*e, dm.value_or(*e), *n, gate);
    const auto r = io::describe(f, spec, prefix);
    for (const auto& u : r.names) {
        if (u.status == io::NameStatus::ignored) continue;
        std::printf("  %-*s  %s", w, u.name.c_str(), io::status_name(u.status));
        if (u.status == io::NameStatus::shape_mismatch)
            std::printf(": %s, expected %s", io::shape_string(u.shape).c_str(),
                        io::shape_string(u.expected_shape).c_str());
        if (u.status == io::NameStatus::dtype_mismatch)
            std::printf(": %s", io::dtype_name(u.dtype));
        std::printf("\n");
    }
    for (const auto& m : r.missing)
        std::printf("  %-*s  missing (expected %s)\n", w, m.name.c_str(),
                    io::shape_string(m.shape).c_str());
    std::size_t outside = 0;
    for (const auto& u : r.names) outside += u.status == io::NameStatus::ignored ? 1 : 0;
    std::printf("  %zu tensors outside the prefix ignored; %s\n", outside,
                r.loadable() ? "the weights would load" : "the weights would NOT load");
    return r.loadable() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    std::string file;
    std::optional<std::string> prefix;
    for (int k = 1; k < argc; ++k) {
        const std::string a = argv[k];
        if (a == "-h" || a == "--help") return usage(nullptr), 0;
        if (a == "--prefix") {
            if (k + 1 >= argc) return usage("--prefix needs a value");
            prefix = argv[++k];
        } else if (a.rfind("--", 0) == 0) {
            return usage(("unknown option " + a).c_str());
        } else if (file.empty()) {
            file = a;
        } else {
            return usage("more than one FILE given");
        }
    }
    if (file.empty()) return usage("no FILE given");
    try {
        const auto f = io::Safetensors::load(file);
        std::printf("%s: %zu tensors, %llu data bytes\n", file.c_str(), f.size(),
                    static_cast<unsigned long long>(f.data_bytes()));
        for (const auto& name : f.names()) {
            const auto& t = f.info(name);
            std::printf("  %-*s  %-7s %-16s %llu bytes\n", name_width(f), name.c_str(),
                        io::dtype_name(t.dtype), io::shape_string(t.shape).c_str(),
                        static_cast<unsigned long long>(t.bytes()));
        }
        std::printf("metadata: %zu entries\n", f.metadata().size());
        for (const auto& kv : f.metadata())
            std::printf("  %s = %s\n", kv.first.c_str(), kv.second.c_str());
        return prefix ? report(f, *prefix) : 0;
    } catch (const std::exception& ex) {
        std::cerr << "infinityformer-inspect: " << ex.what() << "\n";
        return 1;
    }
}
