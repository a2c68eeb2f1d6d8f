// Helpers of the interchange tests (test_safetensors.cpp, test_state.cpp): a file's bytes,
// whether permissions apply to this process, and a stream buffer that fails.
#pragma once

#include <filesystem>
#include <fstream>
#include <sstream>
#include <streambuf>
#include <string>
#include <utility>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

namespace io_test {

// The bytes of a file (empty if it cannot be read).
inline std::string contents(const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

// Permissions do not stop root: the checks that need them are skipped there.
inline bool permissions_apply() {
#if defined(__unix__) || defined(__APPLE__)
    return geteuid() != 0;
#else
    return false;
#endif
}

// A stream buffer that gives `good` and then fails: its next read throws E (a device error).
template <typename E>
class FailingInput : public std::streambuf {
public:
    explicit FailingInput(std::string good) : good_(std::move(good)) {
        setg(good_.data(), good_.data(), good_.data() + good_.size());
    }

protected:
    int_type underflow() override { throw E("the device failed"); }

private:
    std::string good_;
};

}  // namespace io_test
