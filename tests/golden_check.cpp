// golden_check DIR: checks every golden case under DIR against the library.
// Prints one line per case (status, kind, largest relative error and its array, path) and
// closes with "N passed, M failed"; exit status 0 only if no case failed.
#include <cstdio>
#include <iostream>

#include "golden.hpp"

int main(int argc, char** argv) {
    if (argc != 2) {
        std::cerr << "usage: golden_check DIR\n"
                     "  checks every case directory (one holding meta.txt) under DIR\n";
        return 2;
    }
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
        if (r.status == golden::Status::passed)
            ++passed;
        else if (r.status == golden::Status::failed)
            ++failed;
        else
            ++skipped;
    }
    if (skipped) std::printf("(%d skipped)\n", skipped);
    std::printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
