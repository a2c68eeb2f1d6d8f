// golden_check DIR: checks every golden case under DIR against the library.
// Prints one line per case (status, kind, largest relative error and its array, path) and
// closes with "N passed, M failed"; exit status 0 only if no case failed.
//
// golden_check --self-test DIR: checks the checker on the cases of DIR: a value moved by
// more than its tolerance must fail, one moved by less must pass, and the metric of the
// golden README must give its worked values. Exit status 0 only if every check holds.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <string>

#include "golden.hpp"

namespace fs = std::filesystem;

namespace {

// Copies a case to a temporary directory and scales the largest entry of one array.
fs::path perturbed_copy(const fs::path& root, const std::string& case_name,
                        const std::string& array, double factor) {
    const fs::path src = root / case_name;
    const fs::path dst = fs::temp_directory_path() / ("infinityformer_golden_" + case_name + "_" +
                                                      std::to_string(std::random_device{}()));
    fs::remove_all(dst);
    fs::copy(src, dst, fs::copy_options::recursive);
    golden::Case c(dst);
    golden::Matrix m = c.array(array);
    Eigen::Index i = 0, j = 0;
    m.cwiseAbs().maxCoeff(&i, &j);
    m(i, j) *= factor;
    std::ofstream out(dst / (array + ".txt"));
    out.precision(17);
    out << m.rows() << " " << m.cols() << "\n";
    for (Eigen::Index r = 0; r < m.rows(); ++r)
        for (Eigen::Index k = 0; k < m.cols(); ++k)
            out << m(r, k) << (k + 1 < m.cols() ? " " : "\n");
    return dst;
}

// Copies a case to a temporary directory and flips the lowest bit of the first data byte of
// one of its safetensors files (the least significant mantissa byte of the first tensor in
// the file's order of offsets, data_offsets [0, ...)).
fs::path flipped_copy(const fs::path& root, const std::string& case_name, const std::string& file) {
    const fs::path dst = fs::temp_directory_path() / ("infinityformer_golden_" + case_name + "_" +
                                                      std::to_string(std::random_device{}()));
    fs::remove_all(dst);
    fs::copy(root / case_name, dst, fs::copy_options::recursive);
    std::fstream f(dst / file, std::ios::in | std::ios::out | std::ios::binary);
    unsigned char len[8] = {};
    f.read(reinterpret_cast<char*>(len), 8);
    std::uint64_t n = 0;
    for (int k = 7; k >= 0; --k) n = (n << 8) | len[k];
    char byte = 0;
    f.seekg(static_cast<std::streamoff>(8 + n));
    f.read(&byte, 1);
    byte = static_cast<char>(byte ^ 1);
    f.seekp(static_cast<std::streamoff>(8 + n));
    f.write(&byte, 1);
    return dst;
}

int self_test(const fs::path& root) {
    int failures = 0;
    auto expect = [&failures](bool ok, const std::string& what) {
        std::printf("%s  %s\n", ok ? "PASS" : "FAIL", what.c_str());
        if (!ok) ++failures;
    };
    struct Perturbation {
        const char* case_name;
        const char* array;
        double factor;
        golden::Status expected;
    };
    const Perturbation cases[] = {
        {"ltm_stream_uniform", "c1_output", 1.0 + 1e-6, golden::Status::failed},
        {"ltm_stream_uniform", "c1_output", 1.0 + 1e-13, golden::Status::passed},
        {"ltm_stream_sticky", "c1_hist", 1.0 + 1e-7, golden::Status::failed},
        {"ltm_stream_gated", "c0_gate", 1.0 + 1e-7, golden::Status::failed},
        {"ltm_grad", "grad_c1_q", 1.0 + 1e-6, golden::Status::failed},
        {"ltm_weights", "c1_output_bf16", 1.0 + 1e-6, golden::Status::failed},
        {"ltm_weights", "c1_output_f32", 1.0 + 1e-13, golden::Status::passed},
    };
    for (const auto& p : cases) {
        if (!fs::exists(root / p.case_name / "meta.txt")) {
            expect(false, std::string(p.case_name) + ": case not found under " + root.string());
            continue;
        }
        const auto dir = perturbed_copy(root, p.case_name, p.array, p.factor);
        const auto r = golden::check_case(dir);
        fs::remove_all(dir);
        char what[160];
        std::snprintf(what, sizeof what, "%s with %s scaled by 1 + %.0e %s", p.case_name, p.array,
                      p.factor - 1.0,
                      p.expected == golden::Status::failed ? "fails" : "still passes");
        bool ok = r.status == p.expected;
        if (ok && p.expected == golden::Status::failed)
            ok = r.message.find(p.array) != std::string::npos;  // and names the array
        expect(ok, what);
    }
    // One bit of the F32 file's data: its values are no longer the F64 values rounded.
    if (fs::exists(root / "ltm_weights" / "meta.txt")) {
        const auto dir = flipped_copy(root, "ltm_weights", "weights_f32.safetensors");
        const auto r = golden::check_case(dir);
        fs::remove_all(dir);
        expect(r.status == golden::Status::failed &&
                   r.message.find("weights_f32_values") != std::string::npos,
               "ltm_weights with one bit of weights_f32.safetensors flipped fails");
    } else {
        expect(false, "ltm_weights: case not found under " + root.string());
    }
    // The metric of the golden README: entry 1 is judged on the array's scale with
    // φ = 1e-3, |1e-6| / 1e-3 = 1e-3; without the floor it is a relative error of 1.
    golden::Matrix g(1, 3), a(1, 3);
    g << 1.0, 1e-6, 0.0;
    a << 1.0 + 1e-10, 2e-6, 0.0;
    expect(std::abs(golden::max_rel_err(a, g, 1e-3) - 1e-3) <= 1e-12, "metric with floor 1e-3");
    expect(std::abs(golden::max_rel_err(a, g, 0.0) - 1.0) <= 1e-9, "metric without floor");
    std::printf("self-test: %d failed\n", failures);
    return failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc == 3 && std::string(argv[1]) == "--self-test") return self_test(argv[2]);
    if (argc != 2) {
        std::cerr << "usage: golden_check DIR\n"
                     "       golden_check --self-test DIR\n"
                     "  checks every case directory (one holding meta.txt) under DIR;\n"
                     "  --self-test checks that the checker catches values off by more than\n"
                     "  their tolerance (on the cases of DIR)\n";
        return 2;
    }
#ifdef INFINITYFORMER_COMPILED
    std::printf("library: infinityformer::compiled, built for %s\n",
                infinityformer::compiled_variant());
#endif
    const auto cases = golden::find_cases(argv[1]);
    if (cases.empty()) {
        std::cerr << "golden_check: no case directory (with meta.txt) under " << argv[1] << "\n";
        return 2;
    }
    int passed = 0, failed = 0, skipped = 0;
    for (const auto& dir : cases) {
        const auto r = golden::check_case(dir);
        const char* status = r.status == golden::Status::passed   ? "PASS"
                             : r.status == golden::Status::failed ? "FAIL"
                                                                  : "SKIP";
        const auto* w = r.worst();
        char err[64] = "-";
        if (w) std::snprintf(err, sizeof err, "%.3e", w->err);
        std::printf("%s  %-24s max_rel_err %-10s %-22s %s\n", status, r.kind.c_str(), err,
                    w ? w->name.c_str() : "", r.dir.c_str());
        if (!r.message.empty()) std::printf("      %s\n", r.message.c_str());
        if (r.status == golden::Status::passed && r.arrays.empty()) {
            std::printf("      FAIL: the case compared no array\n");
            ++failed;
        } else if (r.status == golden::Status::passed) {
            ++passed;
        } else if (r.status == golden::Status::failed) {
            ++failed;
        } else {
            ++skipped;
        }
    }
    if (skipped) std::printf("(%d skipped)\n", skipped);
    std::printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
