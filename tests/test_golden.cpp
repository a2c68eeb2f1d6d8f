// Conformance with the authors' reference (tests/data/golden): every case must pass within
// the tolerances of the golden README §5; the checker itself must catch a wrong value.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <random>

#include "golden.hpp"

namespace fs = std::filesystem;

TEST_CASE("golden: every visible case passes", "[golden]") {
    const auto cases = golden::find_cases(INFINITYFORMER_GOLDEN_DIR);
    REQUIRE(cases.size() >= 11);
    for (const auto& dir : cases) {
        const auto r = golden::check_case(dir);
        INFO(r.dir << " (" << r.kind << "): " << r.message);
        if (r.status == golden::Status::skipped) {
            // Only the two kinds that belong to later work may be skipped.
            CHECK((r.kind == "ltm_grad" || r.kind == "ltm_weights"));
            continue;
        }
        CHECK(r.status == golden::Status::passed);
        CHECK_FALSE(r.arrays.empty());
    }
}

namespace {

// Copies a case to a temporary directory and scales one entry of one array.
fs::path perturbed_copy(const std::string& case_name, const std::string& array, double factor) {
    const fs::path src = fs::path(INFINITYFORMER_GOLDEN_DIR) / case_name;
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

}  // namespace

TEST_CASE("golden: the checker fails a value off by more than the tolerance", "[golden]") {
    SECTION("output off by 1e-6 relative") {
        const auto dir = perturbed_copy("ltm_stream_uniform", "c1_output", 1.0 + 1e-6);
        const auto r = golden::check_case(dir);
        CHECK(r.status == golden::Status::failed);
        CHECK_THAT(r.message, Catch::Contains("c1_output"));
        fs::remove_all(dir);
    }
    SECTION("output off by 1e-13 relative still passes") {
        const auto dir = perturbed_copy("ltm_stream_uniform", "c1_output", 1.0 + 1e-13);
        CHECK(golden::check_case(dir).status == golden::Status::passed);
        fs::remove_all(dir);
    }
    SECTION("a sticky histogram off by 1e-7 fails") {
        const auto dir = perturbed_copy("ltm_stream_sticky", "c1_hist", 1.0 + 1e-7);
        CHECK(golden::check_case(dir).status == golden::Status::failed);
        fs::remove_all(dir);
    }
    SECTION("a gate value off by 1e-7 fails") {
        const auto dir = perturbed_copy("ltm_stream_gated", "c0_gate", 1.0 + 1e-7);
        CHECK(golden::check_case(dir).status == golden::Status::failed);
        fs::remove_all(dir);
    }
}

TEST_CASE("golden: metric of the README", "[golden]") {
    golden::Matrix g(1, 3), a(1, 3);
    g << 1.0, 1e-6, 0.0;
    a << 1.0 + 1e-10, 2e-6, 0.0;
    // Entry 1 is judged on the array's scale with φ = 1e-3: |1e-6| / 1e-3 = 1e-3.
    CHECK(golden::max_rel_err(a, g, 1e-3) == Approx(1e-3).epsilon(1e-9));
    CHECK(golden::max_rel_err(a, g, 0.0) == Approx(1.0).epsilon(1e-9));
}
