/// @file io/files.hpp
/// @brief Internal: the file and stream operations of the interchange headers
/// (io/safetensors.hpp, io/state.hpp). Every failure of the file system or of a stream is an
/// infinityformer::runtime_error, "[infinityformer] <where>: <name>: <what went wrong>", where
/// <name> names the file (or the stream); never a std::ios_base::failure, a
/// std::filesystem::filesystem_error or a silent success.
#pragma once

#include <cerrno>
#include <cstddef>
#include <exception>
#include <filesystem>
#include <fstream>
#include <ios>
#include <istream>
#include <new>
#include <ostream>
#include <streambuf>
#include <string>
#include <system_error>
#include <utility>

#include "../errors.hpp"

namespace infinityformer::io::file_detail {

/// Throws infinityformer::runtime_error "[infinityformer] where: name: what..." (no "name: "
/// if `name` is empty).
template <typename... Args>
[[noreturn]] void fail(const char* where, const std::string& name, const Args&... what) {
    throw infinityformer::runtime_error(infinityformer::detail::concat(
        "[infinityformer] ", where, ": ", name, name.empty() ? "" : ": ", what...));
}

/// The system's description of errno value `e` ("Permission denied"), or `otherwise` if 0.
inline std::string reason(int e, const char* otherwise) {
    return e != 0 ? std::generic_category().message(e) : std::string(otherwise);
}

/// "it is a directory", "it does not exist", ... for a path whose status is `s` (error `ec`),
/// or empty if it is a regular file or something else that may be opened.
inline std::string unusable(const std::filesystem::file_status& s, const std::error_code& ec) {
    namespace fs = std::filesystem;
    if (s.type() == fs::file_type::not_found) return "it does not exist";
    if (ec) return ec.message();
    if (fs::is_directory(s)) return "it is a directory";
    return {};
}

/// Opens `path` for reading (binary).
/// @throws infinityformer::runtime_error if the path is empty, does not exist, is a directory
///         or cannot be opened, naming `name` and the reason.
inline std::ifstream open_for_reading(const char* where, const std::filesystem::path& path,
                                      const std::string& name) {
    if (path.empty()) fail(where, "", "the path is empty, expected the path of a file");
    std::error_code ec;
    const auto status = std::filesystem::status(path, ec);
    const std::string bad = unusable(status, ec);
    if (!bad.empty())
        fail(where, name, "cannot open the file: ", bad, ", expected a readable file");
    errno = 0;
    std::ifstream in(path, std::ios::binary);
    const int e = errno;
    if (!in.is_open())
        fail(where, name, "cannot open the file: ", reason(e, "the system gave no reason"),
             ", expected a readable file");
    return in;
}

/// Reads `in`'s buffer to its end (the stream's state is neither read nor set, except that a
/// stream already failed is refused). An exception of the buffer (a read error: e.g. a
/// std::ios_base::failure of a std::filebuf), or no memory for the bytes, throws
/// infinityformer::runtime_error naming `name`.
inline std::string read_all(std::istream& in, const char* where, const std::string& name) {
    std::streambuf* buffer = in.rdbuf();
    if (buffer == nullptr)
        fail(where, name, "the stream has no buffer, expected a readable stream");
    if (in.fail())
        fail(where, name, "the stream is in a failed state (", in.bad() ? "badbit" : "failbit",
             " set), expected a readable stream");
    std::string out;
    constexpr std::size_t piece = std::size_t(1) << 20;
    try {
        for (;;) {
            const std::size_t at = out.size();
            out.resize(at + piece);
            const std::streamsize got =
                buffer->sgetn(&out[at], static_cast<std::streamsize>(piece));
            out.resize(at + static_cast<std::size_t>(got > 0 ? got : 0));
            if (got < static_cast<std::streamsize>(piece)) break;  // the end (sgetn's contract)
        }
    } catch (const std::bad_alloc&) {
        fail(where, name, "reading failed: the input is larger than the memory available (",
             out.size(), " bytes read)");
    } catch (const std::exception& e) {
        fail(where, name, "reading failed: ", e.what());
    }
    return out;
}

/// Inside a catch block for an exception thrown while writing to a stream: rethrows it as
/// infinityformer::runtime_error "where: name: writing failed (what)" if it is not already
/// one of the library's exceptions (which are rethrown unchanged).
[[noreturn]] inline void rethrow_write_error(const char* where, const std::string& name,
                                             const char* writing) {
    try {
        throw;
    } catch (const infinityformer::runtime_error&) {
        throw;
    } catch (const infinityformer::invalid_argument&) {
        throw;
    } catch (const infinityformer::logic_error&) {
        throw;
    } catch (const std::exception& e) {
        fail(where, name, writing, " failed (", e.what(), ")");
    }
}

/// Writes a file atomically: `write(std::ostream&)` fills `path` + ".tmp" (binary, replacing
/// a regular file of that name), which is then closed and renamed over `path`. Checked first:
/// the path is not empty, is not a directory nor another non-regular file (a device, a FIFO),
/// its directory exists, and `path` + ".tmp" is not a directory. On any failure the
/// temporary file is removed if this call created it (never anything else) and an existing
/// file at `path` is left as it was.
/// @throws infinityformer::runtime_error naming `name` and what went wrong; an exception of
///         the library thrown by `write` (e.g. invalid_argument) passes unchanged.
template <typename Write>
void save_atomically(const char* where, const std::filesystem::path& path, const std::string& name,
                     Write&& write) {
    namespace fs = std::filesystem;
    if (path.empty()) fail(where, "", "the path is empty, expected the path of a file");
    std::error_code ec;
    const auto status = fs::status(path, ec);
    if (fs::is_directory(status))
        fail(where, name, "cannot write the file: it is a directory, expected a file's path");
    if (status.type() != fs::file_type::not_found) {
        if (ec) fail(where, name, "cannot write the file: ", ec.message());
        if (!fs::is_regular_file(status))
            fail(where, name,
                 "cannot write the file: it exists and is not a regular file (a device, a "
                 "FIFO or a socket), expected a regular file or a new name");
    }
    const fs::path parent = path.parent_path();
    if (!parent.empty()) {
        const auto p = fs::status(parent, ec);
        if (p.type() == fs::file_type::not_found)
            fail(where, name, "cannot write the file: the directory '", parent.string(),
                 "' does not exist");
        if (ec)
            fail(where, name, "cannot write the file: cannot reach the directory '",
                 parent.string(), "': ", ec.message());
        if (!fs::is_directory(p))
            fail(where, name, "cannot write the file: '", parent.string(), "' is not a directory");
    }
    const fs::path tmp = path.string() + ".tmp";
    const std::string tmp_name = "'" + tmp.string() + "'";
    const auto t = fs::status(tmp, ec);
    if (fs::exists(t) && !fs::is_regular_file(t))
        fail(where, name, "cannot create the temporary file ", tmp_name, ": it is a ",
             fs::is_directory(t) ? "directory" : "non-regular file",
             ", expected a regular file or none (remove it)");

    errno = 0;
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out.is_open())
        fail(where, name, "cannot create the temporary file ", tmp_name, ": ",
             reason(errno, "the system gave no reason"));
    // From here on the temporary file is ours: removed on every failure.
    const auto discard = [&] {
        out.close();
        std::error_code ignored;
        fs::remove(tmp, ignored);
    };
    const auto written = [&]() -> std::string {
        out.flush();
        if (out) out.close();
        return out ? std::string() : reason(errno, "the stream failed");
    };
    try {
        errno = 0;
        write(static_cast<std::ostream&>(out));
    } catch (...) {
        const bool stream_failed = !out;
        const int e = errno;
        discard();
        if (stream_failed)
            fail(where, name, "writing the temporary file ", tmp_name,
                 " failed: ", reason(e, "the stream failed"));
        rethrow_write_error(where, name, "writing the temporary file");
    }
    const std::string bad = written();
    if (!bad.empty()) {
        discard();
        fail(where, name, "writing the temporary file ", tmp_name, " failed: ", bad);
    }
    fs::rename(tmp, path, ec);  // replaces an existing file (also on Windows)
    if (ec) {
        discard();
        fail(where, name, "cannot rename the temporary file ", tmp_name,
             " to the file: ", ec.message());
    }
}

}  // namespace infinityformer::io::file_detail
