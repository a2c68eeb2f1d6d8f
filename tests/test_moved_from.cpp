// Moved-from objects of every public class of the library that holds state (and of io/): each
// is built valid (small sizes; sticky sampling and the memory gate where a class has them),
// given some history, then moved from three ways: by move construction, and by move assignment
// into an object of the same and of another configuration (Eigen's move assignment swaps the
// buffers, so that moved-from object holds the other object's matrices beside its own sizes).
// Every public member is then called on the moved-from object with arguments that were valid
// for the original. Each call must return or throw infinityformer::invalid_argument,
// logic_error or runtime_error; a crash (segmentation fault, sanitizer report, Eigen assertion)
// or another exception is a defect of the library. Afterwards the moved-from object must still
// be copyable, assignable (from which it works as a fresh object does) and destructible.
//
// Every call is made first in a forked child process (POSIX), so that a crash fails that call
// only and the test goes on: one run lists every crashing call. The child explores ahead: it
// makes the call and the ones after it, in order, until one crashes; this process then makes
// the calls that returned (so that they see each other's effects), reports the one that
// crashed without making it, and forks a new explorer after it. A crash's sanitizer report
// (or Eigen's assertion message) is on stderr at its first occurrence per class and member;
// the warning at the end of each TEST_CASE gives, for each crashing member, the line of the
// library where it crashed (llvm-symbolizer, or ASAN_SYMBOLIZER_PATH, run once per
// TEST_CASE). INFINITYFORMER_MOVED_FROM_IN_PROCESS=1 makes every call in this process only
// (for a debugger; the first crash then ends the run).
//
// The `_unchecked` members (and the steps that composite modules call after checking their
// inputs) are called only as their documentation allows: when the object's own accessors say
// that the arguments fit. When they do not (a moved-from object has other sizes), the call is
// still made, in a child process only, and a crash is reported as a warning (a precondition
// violation, not a defect).
//
// Each TEST_CASE ends with a warning giving the number of distinct public members called on
// moved-from objects of its classes; the totals over the run are printed at exit.
//
// clang-tidy's bugprone-use-after-move: every use of a moved-from object here is deliberate.
#include <Eigen/Core>
#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <infinityformer/infinityformer.hpp>
#include <infinityformer/io/safetensors.hpp>
#include <infinityformer/io/state.hpp>
#include <infinityformer/io/weights.hpp>
#include <initializer_list>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "extern_templates.hpp"
#include "test_util.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#define MOVED_FROM_FORK 1
#else
#define MOVED_FROM_FORK 0
#endif
#if MOVED_FROM_FORK && defined(__GLIBC__)
#include <execinfo.h>
#include <link.h>
#define MOVED_FROM_BACKTRACE 1
#else
#define MOVED_FROM_BACKTRACE 0
#endif
#if defined(__SANITIZE_ADDRESS__)
#define MOVED_FROM_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MOVED_FROM_SANITIZER 1
#endif
#endif
#ifndef MOVED_FROM_SANITIZER
#define MOVED_FROM_SANITIZER 0
#endif
#if MOVED_FROM_SANITIZER
#include <sanitizer/common_interface_defs.h>
#endif

namespace {

using namespace infinityformer;
using Eigen::Index;

template <typename S>
using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
template <typename S>
using Vec = Eigen::Matrix<S, Eigen::Dynamic, 1>;
template <typename S>
using RowMat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatD = Mat<double>;

// ---- what was called ----------------------------------------------------------------------

// Per class: the distinct public members called on moved-from objects, the io:: functions
// given one, the members of other classes given one as an argument, and what went wrong
// (per member or message: on how many moved-from objects, and how).
struct Findings {
    std::map<std::string, std::set<std::string>> on;  // what -> the objects (labels)
    std::map<std::string, std::string> how;           // what -> the first description
    std::map<std::string, std::vector<void*>> stack;  // what -> the first stack
    void add(const std::string& what, const std::string& label, const std::string& h,
             const std::vector<void*>& s = {}) {
        on[what].insert(label);
        how.emplace(what, h);
        if (!s.empty()) stack.emplace(what, s);
    }
};

struct Tally {
    std::map<std::string, std::set<std::string>> members, functions, as_argument, objects;
    std::map<std::string, std::set<std::string>> reported;  // crashes whose report was shown
    std::map<std::string, long> calls;
    long total_calls = 0;  // the global counter: every call made on a moved-from object
    std::map<std::string, Findings> crashes, other_exceptions, precondition_crashes, oddities;

    ~Tally() {
        if (members.empty()) return;
        std::size_t m = 0, f = 0, a = 0;
        for (const auto& kv : members) m += kv.second.size();
        for (const auto& kv : functions) f += kv.second.size();
        for (const auto& kv : as_argument) a += kv.second.size();
        std::cout << "moved-from objects: " << m << " distinct public members called over "
                  << members.size() << " classes (plus " << f << " io functions and " << a
                  << " members of other classes given one as argument), " << total_calls
                  << " calls in all\n";
    }
};

Tally& tally() {
    static Tally t;
    return t;
}

// ---- running a call in a child process ----------------------------------------------------

bool forking() {
#if MOVED_FROM_FORK
    static const bool on = std::getenv("INFINITYFORMER_MOVED_FROM_IN_PROCESS") == nullptr;
    return on;
#else
    return false;
#endif
}

// What a child process tells its parent, through a pipe: records of a kind and a number, and
// for 'A' the stack at a crash (that many return addresses after the record).
using Records = std::vector<std::pair<char, int>>;
using Stack = std::vector<void*>;

#if MOVED_FROM_FORK
constexpr int kFatalSignals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL};
constexpr int kMaxFrames = 48;

// The handlers the process started with (the sanitizer's, or the default ones), taken at
// static initialisation, before Catch installs its own while a test runs: a child restores
// them, so that the sanitizer reports a crash, and Catch's handler does not report a failed
// test run from the child.
struct StartupHandlers {
    struct sigaction saved[4];
    StartupHandlers() {
        for (int i = 0; i < 4; ++i) sigaction(kFatalSignals[i], nullptr, &saved[i]);
#if MOVED_FROM_BACKTRACE
        void* warm[1];
        backtrace(warm, 1);  // loads the unwinder now, not in a signal handler
#endif
    }
};
const StartupHandlers startup_handlers;

int g_report_fd = -1;  // in a child: the pipe to the parent

void send(char kind, int number, const void* extra = nullptr, std::size_t extra_bytes = 0) {
    char buf[1 + sizeof(int) + kMaxFrames * sizeof(void*)];
    buf[0] = kind;
    std::memcpy(buf + 1, &number, sizeof number);
    if (extra_bytes > 0) std::memcpy(buf + 1 + sizeof number, extra, extra_bytes);
    const std::size_t n = 1 + sizeof number + extra_bytes;  // one write: atomic (< PIPE_BUF)
    if (::write(g_report_fd, buf, n) != static_cast<ssize_t>(n)) std::_Exit(0);
}

// At a crash in a child: its stack, for the parent to symbolise (once per test case; a
// symboliser started in every crashing child would cost far more than the test).
void send_stack() {
#if MOVED_FROM_BACKTRACE
    void* pcs[kMaxFrames];
    const int n = backtrace(pcs, kMaxFrames);
    send('A', n, pcs, static_cast<std::size_t>(n) * sizeof(void*));
#endif
}
extern "C" void moved_from_on_fatal(int sig) {  // abort() (an Eigen assertion), or no sanitizer
    send_stack();
    std::_Exit(128 + sig);
}
#if MOVED_FROM_SANITIZER
extern "C" void moved_from_on_death() { send_stack(); }
#endif

void silence_stderr() {
    const int null = ::open("/dev/null", O_WRONLY);
    if (null >= 0) ::dup2(null, 2);
}

// In a new child: the fatal signals to the sanitizer (or to moved_from_on_fatal), abort() to
// moved_from_on_fatal, the pipe to the parent.
void become_child(int report_fd) {
    g_report_fd = report_fd;
    struct sigaction sa {};
    sa.sa_handler = moved_from_on_fatal;
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < 4; ++i)
        sigaction(kFatalSignals[i], MOVED_FROM_SANITIZER ? &startup_handlers.saved[i] : &sa,
                  nullptr);
    sigaction(SIGABRT, &sa, nullptr);
#if MOVED_FROM_SANITIZER
    __sanitizer_set_death_callback(moved_from_on_death);
#endif
}

// The records a child sent (the pipe's read end is non-blocking).
void drain(int fd, Records& records, Stack& stack) {
    char head[1 + sizeof(int)];
    while (::read(fd, head, sizeof head) == static_cast<ssize_t>(sizeof head)) {
        int number = 0;
        std::memcpy(&number, head + 1, sizeof number);
        if (head[0] == 'A') {
            Stack pcs(static_cast<std::size_t>(std::clamp(number, 0, kMaxFrames)));
            const auto bytes = static_cast<ssize_t>(pcs.size() * sizeof(void*));
            if (::read(fd, pcs.data(), static_cast<std::size_t>(bytes)) == bytes) stack = pcs;
        } else {
            records.emplace_back(head[0], number);
        }
    }
}

// Waits for a child (at most `limit_s`), collecting what it sends; the status, -1 if killed.
int wait_for(pid_t pid, int fd, long limit_s, Records& records, Stack& stack) {
    int status = 0;
    for (long waited_us = 0;;) {
        drain(fd, records, stack);
        const pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid || r < 0) break;
        if (waited_us > limit_s * 1000 * 1000) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &status, 0);
            status = -1;
            break;
        }
        const long step = waited_us < 50000 ? 50 : 10000;
        ::usleep(static_cast<useconds_t>(step));
        waited_us += step;
    }
    drain(fd, records, stack);
    ::close(fd);
    return status;
}

// How a child that did not exit normally ended.
std::string how_it_crashed(int status, long limit_s) {
    std::ostringstream os;
    if (status == -1) {
        os << "did not return within " << limit_s << " s (killed)";
    } else if (WIFSIGNALED(status)) {
        os << "crashed (signal " << WTERMSIG(status) << ")";
    } else if (WIFEXITED(status) && WEXITSTATUS(status) == 128 + SIGABRT) {
        os << "crashed (abort(): an assertion)";
    } else if (WIFEXITED(status) && WEXITSTATUS(status) > 128) {
        os << "crashed (signal " << WEXITSTATUS(status) - 128 << ")";
    } else {
        os << "crashed (exit status " << WEXITSTATUS(status) << ": a sanitizer's report)";
    }
    return os.str();
}
#endif

struct ChildFate {
    bool ran = false;      // the call was made in a child
    bool crashed = false;  // and the child did not return from it
    bool fits = true;      // the precondition held (or there was none)
    std::string how;
    Stack stack;  // where it crashed
};

// Makes the call in a child process. `quiet` sends the child's stderr to /dev/null. With a
// precondition `fits`, the child evaluates it first (quietly), tells this process, and makes
// the call quietly when it does not hold.
template <typename F>
ChildFate in_child(F& body, bool quiet = false, const std::function<bool()>& fits = {}) {
    ChildFate fate;
#if MOVED_FROM_FORK
    if (!forking()) return fate;
    int fds[2] = {-1, -1};
    if (::pipe(fds) != 0) return fate;
    std::cout.flush();
    std::cerr.flush();
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    if (pid < 0) {
        ::close(fds[0]);
        ::close(fds[1]);
        return fate;
    }
    if (pid == 0) {
        ::close(fds[0]);
        become_child(fds[1]);
        const int saved_stderr = ::dup(2);
        silence_stderr();
        if (fits) {
            bool ok = false;
            try {
                ok = fits();
            } catch (...) {
            }
            send('f', ok ? 1 : 0);
            quiet = quiet || !ok;
        }
        if (!quiet && saved_stderr >= 0) ::dup2(saved_stderr, 2);
        try {
            body();
        } catch (...) {  // this process classifies the exceptions when it makes the call
        }
        std::_Exit(0);  // no atexit handlers, no leak check, no Catch
    }
    ::close(fds[1]);
    ::fcntl(fds[0], F_SETFL, O_NONBLOCK);
    fate.ran = true;
    Records records;
    const int status = wait_for(pid, fds[0], 120, records, fate.stack);
    if (fits) fate.fits = !records.empty() && records.front() == std::make_pair('f', 1);
    if (status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0) return fate;
    fate.crashed = true;
    fate.how = how_it_crashed(status, 120);
#else
    (void)body;
    (void)quiet;
    (void)fits;
#endif
    return fate;
}

// ---- using a result -----------------------------------------------------------------------

volatile double g_sink = 0;

// Reads every value of a result (a deep copy for a class), so that a dangling or null
// reference returned by an accessor is dereferenced here.
template <typename T>
void consume(const T& x) {
    if constexpr (std::is_base_of_v<Eigen::EigenBase<T>, T>) {
        const typename T::PlainObject m = x;
        double s = 0;
        for (Index i = 0; i < m.size(); ++i) s += static_cast<double>(m.data()[i]);
        g_sink = g_sink + s;
    } else if constexpr (std::is_enum_v<T>) {
        g_sink = g_sink + static_cast<double>(static_cast<int>(x));
    } else if constexpr (std::is_arithmetic_v<T>) {
        g_sink = g_sink + static_cast<double>(x);
    } else {
        const T copy(x);
        (void)copy;
    }
}

template <typename F>
void call_and_use(F& f) {
    if constexpr (std::is_void_v<std::invoke_result_t<F&>>)
        f();
    else
        consume(f());
}

enum class Outcome { returned, threw, failed };

class Probe;

// In an exploring child: the probe it explores for, and its stderr as it was.
Probe* g_exploring = nullptr;
int g_saved_stderr = -1;

// The calls made on one moved-from object, each numbered in order.
//
// How a call is made (POSIX): when this process does not yet know whether call i returns, it
// forks an exploring child, which makes call i and goes on with the test's next calls on this
// probe, recording each call it starts in a pipe, until the probe ends (or a call that must be
// made apart, or a crash). This process then makes in turn every call that returned in the
// child, knows which one crashed (it is reported, not made), and forks a new explorer after
// it. So a crash costs one fork, and the calls that return cost none.
class Probe {
public:
    /// `cls`: the class, for the counts; `label`: this object, for the messages. A crash's
    /// report is shown at its first occurrence per class and member.
    Probe(std::string cls, std::string label) : cls_(std::move(cls)), label_(std::move(label)) {
        tally().objects[cls_].insert(label_);
    }
    Probe(const Probe&) = delete;
    Probe& operator=(const Probe&) = delete;
    ~Probe() { end(); }

    /// A call that must return or throw one of the library's three exceptions.
    template <typename F>
    Outcome survives(const char* member, F&& f) {
        return call(member, f, {}, false);
    }

    /// A call documented as unchecked: made as survives() does when `fits` (the object's own
    /// accessors agree with the arguments); otherwise in a child only, a crash then noted as
    /// a precondition violation.
    template <typename P, typename F>
    Outcome survives_unchecked(const char* member, P&& fits, F&& f) {
        return call(
            member, f, [&fits] { return static_cast<bool>(fits()); }, false);
    }

    /// A call made in a child only (the destructor of the object itself).
    template <typename F>
    void in_child_only(const char* member, F&& f) {
        const int i = index_++;
        if (exploring()) stop('D', i);
        if (!forking()) return;
        auto body = [&f] { call_and_use(f); };
        count(member);
        const ChildFate child = in_child(body, shown(member));
        if (child.crashed) crashed(member, child.how, child.stack);
    }

    /// Something that is not a call on the moved-from object (work of an object assigned to
    /// it, or of the object moved into): must return, without any exception.
    template <typename F>
    bool works(const std::string& what, F&& f) {
        return call(what.c_str(), f, {}, true) == Outcome::returned;
    }

    /// Checks a result of works() (nothing in an exploring child).
    void check(bool ok, const std::string& what) {
        if (exploring()) return;
        INFO(label_ << ": " << what);
        CHECK(ok);
    }

    /// Notes a result that a moved-from object gives silently instead of throwing.
    void odd(bool condition, const std::string& what) {
        if (condition && !exploring()) tally().oddities[cls_].add(what, label_, "");
    }

    /// No more calls: an exploring child ends here.
    void end() {
        if (exploring()) stop('E', index_);
    }

    const std::string& label() const { return label_; }

private:
    static constexpr int kNone = -1;

    bool exploring() const {
        if (g_exploring != nullptr && g_exploring != this) stop('N', index_);  // another probe
        return g_exploring == this;
    }

    [[noreturn]] static void stop(char kind, int index) {
        record(kind, index);
        std::_Exit(0);
    }

    static void record(char kind, int index) {
#if MOVED_FROM_FORK
        send(kind, index);
#else
        (void)kind;
        (void)index;
#endif
    }

    bool shown(const char* member) const { return tally().reported[cls_].count(member) != 0; }

    // The exploring child's stderr: quiet for a crash already reported.
    static void set_quiet(bool quiet) {
#if MOVED_FROM_FORK
        if (quiet) {
            silence_stderr();
        } else if (g_saved_stderr >= 0) {
            ::dup2(g_saved_stderr, 2);
        }
#else
        (void)quiet;
#endif
    }

    // The library's three exceptions are an answer; any other is a failure (FAIL_CHECK here,
    // unless exploring, or for `work`, which must not throw at all).
    template <typename F>
    Outcome classify(const char* member, F& body, bool work) {
        const bool quiet = exploring();
        std::string other;
        try {
            body();
            return Outcome::returned;
        } catch (const infinityformer::invalid_argument& e) {
            if (!work) return Outcome::threw;
            other = std::string("infinityformer::invalid_argument: ") + e.what();
        } catch (const infinityformer::logic_error& e) {
            if (!work) return Outcome::threw;
            other = std::string("infinityformer::logic_error: ") + e.what();
        } catch (const infinityformer::runtime_error& e) {
            if (!work) return Outcome::threw;
            other = std::string("infinityformer::runtime_error: ") + e.what();
        } catch (const std::exception& e) {
            other = std::string(typeid(e).name()) + ": " + e.what();
        } catch (...) {
            other = "a non-standard exception";
        }
        if (!quiet) {
            if (!work) tally().other_exceptions[cls_].add(member, label_, other);
            FAIL_CHECK(label_ << ": " << member << " threw " << other
                              << (work ? ""
                                       : ", expected infinityformer::invalid_argument, "
                                         "logic_error or runtime_error"));
        }
        return Outcome::failed;
    }

    void crashed(const char* member, const std::string& how, const Stack& stack) {
        tally().reported[cls_].insert(member);
        tally().crashes[cls_].add(member, label_, how, stack);
        FAIL_CHECK(label_ << ": " << member << " " << how << " on the moved-from object");
    }

    template <typename F>
    Outcome call(const char* member, F& f, const std::function<bool()>& fits, bool work) {
        auto body = [&f] { call_and_use(f); };
        const int i = index_++;
        if (!exploring() && forking() && i >= safe_until_ && i != crash_at_ && i != apart_at_)
            explore(i);  // an exploring child returns here, exploring
        if (exploring()) {
            if (fits) {
                record('P', i);
                set_quiet(true);
                bool ok = false;
                try {
                    ok = fits();
                } catch (...) {
                }
                if (!ok) stop('F', i);  // made apart, by the parent
            }
            set_quiet(!work && shown(member));
            record('S', i);
            return classify(member, body, work);
        }
        if (!forking()) {  // everything in this process (a crash ends the run)
            if (fits) {
                bool ok = false;
                try {
                    ok = fits();
                } catch (...) {
                }
                if (!ok) return Outcome::threw;  // not made: it could crash this process
            }
            if (!work) count(member);
            return classify(member, body, work);
        }
        if (!work) count(member);
        if (i == crash_at_) {
            crash_at_ = kNone;
            if (work) {
                FAIL_CHECK(label_ << ": " << member << " " << crash_how_);  // no location
            } else {
                crashed(member, crash_how_, crash_stack_);
            }
            return Outcome::failed;
        }
        if (i == apart_at_) {  // its precondition does not hold: in a child only
            apart_at_ = kNone;
            const ChildFate child = in_child(body, shown(member), fits);
            if (!child.fits) {
                if (child.crashed)
                    tally().precondition_crashes[cls_].add(member, label_, child.how, child.stack);
                return child.crashed ? Outcome::failed : Outcome::returned;
            }
            if (child.crashed) {  // it held after all: as survives()
                crashed(member, child.how, child.stack);
                return Outcome::failed;
            }
        }
        return classify(member, body, work);  // it returned in the child
    }

    // Forks a child that makes call `i` and the next ones as this process would; learns
    // from it up to which call they return, and which call crashed or must be made apart.
    void explore(int i) {
        safe_until_ = i;
        crash_at_ = apart_at_ = kNone;
#if MOVED_FROM_FORK
        int fds[2];
        if (::pipe(fds) != 0) {
            apart_at_ = i;
            return;
        }
        std::cout.flush();
        std::cerr.flush();
        std::fflush(nullptr);
        const pid_t pid = ::fork();
        if (pid < 0) {
            ::close(fds[0]);
            ::close(fds[1]);
            apart_at_ = i;
            return;
        }
        if (pid == 0) {
            ::close(fds[0]);
            become_child(fds[1]);
            g_saved_stderr = ::dup(2);
            g_exploring = this;
            return;
        }
        ::close(fds[1]);
        ::fcntl(fds[0], F_SETFL, O_NONBLOCK);
        Records records;
        Stack stack;
        const int status = wait_for(pid, fds[0], 300, records, stack);
        const bool normal = status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (records.empty()) {  // nothing learned: call i apart
            apart_at_ = i;
            return;
        }
        const auto [kind, k] = records.back();
        switch (kind) {
            case 'E': safe_until_ = std::numeric_limits<int>::max(); break;
            case 'F':                                      // its precondition does not hold
            case 'D': safe_until_ = apart_at_ = k; break;  // a call made apart
            case 'P': safe_until_ = apart_at_ = k; break;  // crashed in the precondition
            case 'S':
                if (normal) {
                    safe_until_ = k + 1;
                } else {
                    safe_until_ = crash_at_ = k;
                    crash_how_ = how_it_crashed(status, 300);
                    crash_stack_ = stack;
                }
                break;
            default: safe_until_ = records.size() > 1 ? records[records.size() - 2].second + 1 : i;
        }
        if (safe_until_ <= i && crash_at_ != i && apart_at_ != i) apart_at_ = i;  // progress
#else
        apart_at_ = i;
#endif
    }

    void count(const std::string& member) {
        ++tally().total_calls;
        ++tally().calls[cls_];
        if (member.rfind("io::", 0) == 0) {
            tally().functions[cls_].insert(member.substr(0, member.find(' ')));
        } else if (member.rfind("arg: ", 0) == 0) {
            tally().as_argument[cls_].insert(member.substr(5, member.find(" (") - 5));
        } else {
            tally().members[cls_].insert(member.substr(0, member.find(" (")));
        }
    }

    std::string cls_, label_;
    int index_ = 0;          // the next call's number
    int safe_until_ = 0;     // the calls before it returned in an exploring child
    int crash_at_ = kNone;   // the call that crashed there
    int apart_at_ = kNone;   // the call to make in a child of its own
    std::string crash_how_;  // how it crashed
    Stack crash_stack_;      // where
};

// ---- where a child crashed -----------------------------------------------------------------

#if MOVED_FROM_BACKTRACE
// This program's file, load bias and loaded ranges, for the symboliser.
struct Program {
    std::string path;
    std::uintptr_t bias = 0;
    std::vector<std::pair<std::uintptr_t, std::uintptr_t>> ranges;
};

extern "C" int moved_from_first_object(struct dl_phdr_info* info, std::size_t, void* data) {
    auto* p = static_cast<Program*>(data);
    p->bias = info->dlpi_addr;
    for (int k = 0; k < info->dlpi_phnum; ++k)
        if (info->dlpi_phdr[k].p_type == PT_LOAD)
            p->ranges.emplace_back(
                info->dlpi_addr + info->dlpi_phdr[k].p_vaddr,
                info->dlpi_addr + info->dlpi_phdr[k].p_vaddr + info->dlpi_phdr[k].p_memsz);
    return 1;  // the first object is the program
}

const Program& program() {
    static const Program p = [] {
        Program q;
        dl_iterate_phdr(moved_from_first_object, &q);
        std::error_code ec;
        q.path = std::filesystem::read_symlink("/proc/self/exe", ec).string();
        return q;
    }();
    return p;
}
#endif

// "file:line (function)" of each return address of this program, by one run of
// llvm-symbolizer (ASAN_SYMBOLIZER_PATH if set); none if it cannot be run.
std::map<void*, std::string> symbolise(const std::set<void*>& pcs) {
    std::map<void*, std::string> out;
#if MOVED_FROM_BACKTRACE
    const Program& prog = program();
    std::vector<void*> asked;
    std::ostringstream queries;
    for (void* pc : pcs) {
        const auto a = reinterpret_cast<std::uintptr_t>(pc) - 1;  // the call, not the return
        for (const auto& r : prog.ranges)
            if (a >= r.first && a < r.second) {
                queries << prog.path << " 0x" << std::hex << a - prog.bias << std::dec << "\n";
                asked.push_back(pc);
                break;
            }
    }
    if (asked.empty() || prog.path.empty()) return out;
    const auto dir = std::filesystem::temp_directory_path();
    const std::string stem = "infinityformer-moved-from-" + std::to_string(::getpid());
    const auto in = dir / (stem + ".in"), answers = dir / (stem + ".out");
    {
        std::ofstream f(in);
        f << queries.str();
    }
    const char* tool = std::getenv("ASAN_SYMBOLIZER_PATH");
    const std::string command = std::string(tool != nullptr ? tool : "llvm-symbolizer") +
                                " --demangle < '" + in.string() + "' > '" + answers.string() +
                                "' 2> /dev/null";
    if (std::system(command.c_str()) == 0) {
        std::ifstream f(answers);
        std::string function, location, blank;
        for (void* pc : asked) {
            if (!std::getline(f, function) || !std::getline(f, location)) break;
            while (std::getline(f, blank) && !blank.empty()) {  // inlined frames
            }
            out[pc] = location + " (" + function.substr(0, function.find('(')) + ")";
        }
    }
    std::error_code ec;
    std::filesystem::remove(in, ec);
    std::filesystem::remove(answers, ec);
#else
    (void)pcs;
#endif
    return out;
}

// The innermost frame of a stack in the library's headers, "include/infinityformer/...".
std::string library_frame(const std::vector<void*>& stack, const std::map<void*, std::string>& at) {
    for (void* pc : stack) {
        const auto it = at.find(pc);
        if (it == at.end()) continue;
        const auto k = it->second.find("include/infinityformer/");
        if (k != std::string::npos) return it->second.substr(k);
    }
    return {};
}

// The count and the findings of one class, as a warning at the end of its TEST_CASE.
void summarise(const std::string& cls) {
    Tally& t = tally();
    const std::size_t objects = t.objects[cls].size();
    std::ostringstream os;
    os << "moved-from " << cls << ": " << t.members[cls].size()
       << " distinct public members called";
    if (!t.functions[cls].empty()) os << ", plus " << t.functions[cls].size() << " io functions";
    if (!t.as_argument[cls].empty())
        os << ", plus " << t.as_argument[cls].size()
           << " members of other classes given it as an argument";
    os << " (" << t.calls[cls] << " calls on " << objects << " moved-from objects)\n  members:";
    for (const auto& m : t.members[cls]) os << " " << m << ";";
    for (const auto& m : t.functions[cls]) os << " " << m << ";";
    for (const auto& m : t.as_argument[cls]) os << " (argument of) " << m << ";";
    std::set<void*> pcs;
    for (const Findings* f : {&t.crashes[cls], &t.precondition_crashes[cls]})
        for (const auto& kv : f->stack) pcs.insert(kv.second.begin(), kv.second.end());
    const std::map<void*, std::string> at = symbolise(pcs);
    const auto list = [&](const char* what, const Findings& f) {
        if (f.on.empty()) return;
        os << "\n  " << what << ":";
        for (const auto& kv : f.on) {
            os << "\n    " << kv.first;
            if (!f.how.at(kv.first).empty()) os << ": " << f.how.at(kv.first);
            os << " (" << kv.second.size() << " of " << objects << " objects)";
            const auto st = f.stack.find(kv.first);
            const std::string where = st == f.stack.end() ? "" : library_frame(st->second, at);
            if (!where.empty()) os << "\n      at " << where;
        }
    };
    list("CRASHED", t.crashes[cls]);
    list("THREW ANOTHER EXCEPTION", t.other_exceptions[cls]);
    list("crashed with arguments its own accessors disown (precondition violated, not a defect)",
         t.precondition_crashes[cls]);
    list("returned silently what the original would not", t.oddities[cls]);
    std::size_t all = 0;
    for (const auto& kv : t.members) all += kv.second.size();
    os << "\n  so far in this run: " << all << " distinct public members over " << t.members.size()
       << " classes, " << t.total_calls << " calls";
    WARN(os.str());
}

// ---- inputs -------------------------------------------------------------------------------

template <typename S>
Mat<S> rnd(Index rows, Index cols, std::uint64_t seed, double scale = 1.0) {
    testutil::Normal n(seed);
    return n.matrix(rows, cols, scale).template cast<S>();
}

template <typename S>
Vec<S> rnd_in(Index n, std::uint64_t seed, double lo, double hi) {
    testutil::Normal g(seed);
    Vec<S> v(n);
    for (Index i = 0; i < n; ++i) v[i] = static_cast<S>(g.uniform(lo, hi));
    return v;
}

// Results flattened into one column (in double), to compare two objects' work.
template <typename... M>
MatD flat(const M&... ms) {
    std::vector<double> all;
    const auto add = [&all](const auto& m) {
        const MatD d = m.template cast<double>();
        all.insert(all.end(), d.data(), d.data() + d.size());
    };
    (add(ms), ...);
    return Eigen::Map<const MatD>(all.data(), static_cast<Index>(all.size()), 1);
}

bool same(const MatD& a, const MatD& b) {
    return a.rows() == b.rows() && a.cols() == b.cols() && (a.size() == 0 || a == b);
}

template <typename D>
std::string shape(const Eigen::EigenBase<D>& m) {
    return std::to_string(m.rows()) + "x" + std::to_string(m.cols());
}

// ---- the harness --------------------------------------------------------------------------

// Spec: T; Config; describe(cfg); make(cfg); advance(T&, cfg) (some history); Args and
// args(const T&, cfg) (arguments valid for the original, taken before the move); poke(Probe&,
// T& moved, args, cfg) (every public member); use(T&, cfg) (normal work, as a signature).
template <typename Spec>
void special_members(Probe& p, typename Spec::T& moved, const typename Spec::Config& cfg) {
    using T = typename Spec::T;
    p.survives("copy constructor", [&] { return T(moved); });
    p.survives("copy assignment (from it)", [&] {
        T x = Spec::make(cfg);
        x = moved;
    });
    p.survives("move constructor (from it again)", [&] { return T(std::move(moved)); });
    p.survives("move assignment (from it again)", [&] {
        T x = Spec::make(cfg);
        x = std::move(moved);
    });
    p.in_child_only("destructor", [&] { moved.~T(); });  // the object itself, in a child only

    // Assigned a valid object, it works as that object does.
    MatD want, got;
    p.works("a fresh object's work", [&] {
        T fresh = Spec::make(cfg);
        want = Spec::use(fresh, cfg);
    });
    const T fresh = Spec::make(cfg);
    if (p.survives("copy assignment (to it)", [&] { moved = fresh; }) == Outcome::returned &&
        p.works("work after copy assignment of a fresh object",
                [&] { got = Spec::use(moved, cfg); }))
        p.check(same(got, want),
                "work after copy assignment of a fresh object, as the fresh one's");
    if (p.survives("move assignment (to it)", [&] { moved = Spec::make(cfg); }) ==
            Outcome::returned &&
        p.works("work after move assignment of a fresh object",
                [&] { got = Spec::use(moved, cfg); }))
        p.check(same(got, want),
                "work after move assignment of a fresh object, as the fresh one's");
}

// Moves from objects of each configuration three ways and calls everything on them.
template <typename Spec>
void check_moved_from(const std::string& cls, const std::string& name,
                      const std::vector<typename Spec::Config>& configs,
                      const typename Spec::Config& other) {
    using T = typename Spec::T;
    const char* const hows[] = {"move-constructed from",
                                "move-assigned from, into one of the same configuration",
                                "move-assigned from, into one of another configuration"};
    for (const auto& cfg : configs) {
        for (int how = 0; how < 3; ++how) {
            Probe p(cls, name + " " + Spec::describe(cfg) + ", " + hows[how]);
            T source = Spec::make(cfg);
            Spec::advance(source, cfg);
            const auto args = Spec::args(source, cfg);
            MatD want;
            p.works("the original's twin's work", [&] {
                T twin = Spec::make(cfg);
                Spec::advance(twin, cfg);
                want = Spec::use(twin, cfg);
            });
            std::optional<T> target;
            if (how == 0) {
                target.emplace(std::move(source));
            } else {
                const auto& tc = how == 1 ? cfg : other;
                target.emplace(Spec::make(tc));
                Spec::advance(*target, tc);
                *target = std::move(source);
            }
            MatD got;
            if (p.works("the object moved into", [&] { got = Spec::use(*target, cfg); }))
                p.check(same(got, want), "the object moved into works as the original would");
            // The use after the move is the point of this test.
            Spec::poke(p, source, args, cfg);  // NOLINT(bugprone-use-after-move)
            special_members<Spec>(p, source, cfg);
            p.end();
        }
    }
}

}  // namespace

namespace {

// ---- GaussianBasis ------------------------------------------------------------------------

template <typename S>
struct BasisSpec {
    using T = GaussianBasis<S>;
    struct Config {
        Index n;
        std::vector<double> widths;
    };
    static std::string describe(const Config& c) { return "N = " + std::to_string(c.n); }
    static T make(const Config& c) { return T::default_family(c.n, c.widths); }
    static void advance(T&, const Config&) {}
    struct Args {
        Index n = 0;
        Vec<S> t, mu, s2;
        Mat<S> dr;
        RowMat<S> r, dr_rows;
    };
    static Args args(const T& b, const Config& c) {
        Args a;
        a.n = c.n;
        a.t = rnd_in<S>(4, 1, -0.2, 1.2);
        a.mu = rnd_in<S>(3, 2, 0.0, 1.0);
        a.s2 = rnd_in<S>(3, 3, 0.001, 0.05);
        a.dr = rnd<S>(3, c.n, 4);
        a.r.resize(3, c.n);
        b.expect_psi_rows_unchecked(a.mu, a.s2, a.r);
        a.dr_rows = a.dr;
        return a;
    }
    static MatD use(T& b, const Config&) {
        const Vec<S> t = rnd_in<S>(5, 7, 0.0, 1.0), s2 = rnd_in<S>(5, 8, 0.001, 0.1);
        return flat(b.evaluate(t), b.expect_psi(t, s2), b.expect_t_psi(t, s2));
    }
    static void poke(Probe& p, T& b, const Args& a, const Config& c) {
        const Index q = a.mu.size();
        p.survives("size", [&] { return b.size(); });
        p.survives("centers", [&] { return b.centers(); });
        p.survives("widths", [&] { return b.widths(); });
        p.survives("evaluate(t, out)", [&] {
            Mat<S> out(a.t.size(), a.n);
            b.evaluate(a.t, out);
            return out;
        });
        Mat<S> r;
        if (p.survives("evaluate(t)", [&] { r = b.evaluate(a.t); }) == Outcome::returned)
            p.odd(r.cols() != a.n, "evaluate(t) returns " + shape(r) + ", the original " +
                                       std::to_string(a.t.size()) + "x" + std::to_string(a.n));
        p.survives("expect_psi(mu, sigma_sq, out)", [&] {
            Mat<S> out(q, a.n);
            b.expect_psi(a.mu, a.s2, out);
            return out;
        });
        if (p.survives("expect_psi(mu, sigma_sq)", [&] { r = b.expect_psi(a.mu, a.s2); }) ==
            Outcome::returned)
            p.odd(r.cols() != a.n, "expect_psi(mu, sigma_sq) returns " + shape(r));
        p.survives("expect_t_psi(mu, sigma_sq, out)", [&] {
            Mat<S> out(q, a.n);
            b.expect_t_psi(a.mu, a.s2, out);
            return out;
        });
        p.survives("expect_t_psi(mu, sigma_sq)", [&] { return b.expect_t_psi(a.mu, a.s2); });
        p.survives("expect_t2_psi(mu, sigma_sq, out)", [&] {
            Mat<S> out(q, a.n);
            b.expect_t2_psi(a.mu, a.s2, out);
            return out;
        });
        p.survives("expect_t2_psi(mu, sigma_sq)", [&] { return b.expect_t2_psi(a.mu, a.s2); });
        p.survives("expect_psi_backward", [&] {
            Vec<S> dmu(q), ds(q);
            b.expect_psi_backward(a.mu, a.s2, a.dr, dmu, ds);
            return flat(dmu, ds);
        });
        p.survives_unchecked(
            "expect_psi_backward_unchecked", [&] { return a.dr.cols() == b.size(); },
            [&] {
                Vec<S> dmu(q), ds(q);
                b.expect_psi_backward_unchecked(a.mu, a.s2, a.dr, dmu, ds);
                return flat(dmu, ds);
            });
        p.survives_unchecked(
            "expect_psi_rows_backward_unchecked", [&] { return a.r.cols() == b.size(); },
            [&] {
                Vec<S> dmu(q), ds(q);
                b.expect_psi_rows_backward_unchecked(a.mu, a.s2, a.r, a.dr_rows, dmu, ds);
                return flat(dmu, ds);
            });
        p.survives_unchecked(
            "expect_psi_rows_unchecked", [&] { return a.n == b.size(); },
            [&] {
                RowMat<S> out(q, a.n);
                out.setZero();
                b.expect_psi_rows_unchecked(a.mu, a.s2, out);
                return out;
            });
        p.survives("default_family (static)", [&] { return T::default_family(c.n, c.widths); });
    }
};

// ---- RidgeFit -----------------------------------------------------------------------------

template <typename S>
struct RidgeSpec {
    using T = RidgeFit<S>;
    struct Config {
        Index n;
        std::vector<double> widths;
        Index length, samples;  // samples 0: the single-chunk fit; else the unbounded one
        double lambda;
    };
    static std::string describe(const Config& c) {
        return (c.samples == 0 ? "single-chunk, N = " : "unbounded, N = ") + std::to_string(c.n);
    }
    static T make(const Config& c) {
        const auto basis = GaussianBasis<S>::default_family(c.n, c.widths);
        return c.samples == 0 ? single_chunk_fit<S>(basis, c.length, c.lambda)
                              : unbounded_fit<S>(basis, c.length, c.samples, 0.6, c.lambda);
    }
    static void advance(T&, const Config&) {}
    struct Args {
        Index rows = 0, n = 0;
        Mat<S> Y;
    };
    static Args args(const T&, const Config& c) {
        Args a;
        a.rows = c.length + c.samples;
        a.n = c.n;
        a.Y = rnd<S>(a.rows, 3, 5);
        return a;
    }
    static MatD use(T& f, const Config& c) {
        return flat(f.fit(rnd<S>(c.length + c.samples, 2, 6)));
    }
    static void poke(Probe& p, T& f, const Args& a, const Config&) {
        p.survives("G", [&] { return f.G(); });
        p.survives("positions", [&] { return f.positions(); });
        p.survives("ridge_lambda", [&] { return f.ridge_lambda(); });
        p.survives("num_rows", [&] { return f.num_rows(); });
        p.survives("num_basis", [&] { return f.num_basis(); });
        p.survives("fit(Y, B)", [&] {
            Mat<S> B(a.n, a.Y.cols());
            f.fit(a.Y, B);
            return B;
        });
        p.survives("fit(Y)", [&] { return f.fit(a.Y); });
    }
};

// ---- SamplePointChooser -------------------------------------------------------------------

template <typename S>
struct ChooserSpec {
    using T = SamplePointChooser<S>;
    struct Config {
        Sampling sampling;
        Index m, d;
    };
    static std::string describe(const Config& c) {
        return to_string(c.sampling) + ", M = " + std::to_string(c.m) +
               ", D = " + std::to_string(c.d);
    }
    static T make(const Config& c) { return T(c.sampling, c.m, c.d); }
    static Vec<S> mu() { return rnd_in<S>(5, 9, 0.1, 0.9); }
    static Vec<S> sigma() { return rnd_in<S>(5, 10, 0.05, 0.2); }
    static void advance(T& t, const Config&) {
        detail::Random rng(1);
        Vec<S> out;
        t.choose(mu(), sigma(), rng, out);
    }
    struct Args {
        Index m = 0, d = 0;
        Vec<S> mu, sigma, none;
    };
    static Args args(const T&, const Config& c) { return {c.m, c.d, mu(), sigma(), Vec<S>()}; }
    static MatD use(T& t, const Config&) {
        detail::Random rng(7);
        Vec<S> out;
        t.choose(mu(), sigma(), rng, out);
        return flat(out, t.histogram(mu(), sigma()), t.uniform_points());
    }
    static void poke(Probe& p, T& t, const Args& a, const Config&) {
        Vec<S> out;
        if (p.survives("uniform_points", [&] { out = t.uniform_points(); }) == Outcome::returned)
            p.odd(out.size() != a.m, "uniform_points() has " + std::to_string(out.size()) +
                                         " points, the original " + std::to_string(a.m));
        p.survives("bins", [&] { return t.bins(); });
        p.survives("histogram", [&] { return t.histogram(a.mu, a.sigma); });
        p.survives("histogram (nothing observed)", [&] { return t.histogram(a.none, a.none); });
        if (p.survives("choose", [&] {
                detail::Random rng(3);
                t.choose(a.mu, a.sigma, rng, out);
            }) == Outcome::returned)
            p.odd(out.size() != a.m, "choose(densities) gives " + std::to_string(out.size()) +
                                         " points, the original " + std::to_string(a.m));
        if (p.survives("choose (nothing observed)", [&] {
                detail::Random rng(3);
                t.choose(a.none, a.none, rng, out);
            }) == Outcome::returned)
            p.odd(out.size() != a.m, "choose(no densities) gives " + std::to_string(out.size()) +
                                         " points, the original " + std::to_string(a.m));
    }
};

}  // namespace

TEST_CASE("moved-from: GaussianBasis, RidgeFit, SamplePointChooser", "[moved]") {
    check_moved_from<BasisSpec<double>>("GaussianBasis", "GaussianBasis<double>", {{8, {0.1, 0.2}}},
                                        {12, {0.05, 0.1, 0.2}});
    check_moved_from<RidgeSpec<double>>("RidgeFit", "RidgeFit<double>",
                                        {{8, {0.1, 0.2}, 4, 0, 1.0}, {8, {0.1, 0.2}, 4, 6, 0.5}},
                                        {12, {0.1, 0.2}, 5, 3, 0.5});
    check_moved_from<ChooserSpec<double>>(
        "SamplePointChooser", "SamplePointChooser<double>",
        {{Sampling::uniform, 8, 6}, {Sampling::sticky, 8, 6}, {Sampling::stratified, 8, 6}},
        {Sampling::sticky, 5, 3});
    summarise("GaussianBasis");
    summarise("RidgeFit");
    summarise("SamplePointChooser");
}

namespace {

// ---- LongTermMemory -----------------------------------------------------------------------

// Small settings: N = 16, M = 8, D = 6 < M (the sticky update reads the memory at the bin
// edges), seed 3; Stability::allow (N = 16 with the paper's widths has ρ(A) = 1.15).
LongTermParams small(bool lm) {
    LongTermParams p = lm ? LongTermParams::lm() : LongTermParams::sorting();
    p.num_basis = 16;
    p.num_samples = 8;
    p.num_bins = 6;
    p.seed = 3;
    p.stability = Stability::allow;
    return p;
}

template <typename S>
struct MemorySpec {
    using T = LongTermMemory<S>;
    struct Config {
        Index dim, length;
        MemoryParams params;
    };
    static std::string describe(const Config& c) {
        return to_string(c.params.sampling) + ", e = " + std::to_string(c.dim) +
               ", L = " + std::to_string(c.length);
    }
    static T make(const Config& c) { return T(c.dim, c.length, c.params); }
    static Vec<S> mu() { return rnd_in<S>(6, 21, 0.1, 0.9); }
    static Vec<S> s2() { return rnd_in<S>(6, 22, 0.001, 0.02); }
    static void advance(T& m, const Config& c) {
        m.update(rnd<S>(c.length, c.dim, 23));
        m.observe(mu(), s2());
        m.update(rnd<S>(c.length, c.dim, 24));
        m.observe(mu(), s2());
    }
    struct Args {
        Index e = 0, l = 0, n = 0, m = 0;
        Mat<S> X, dB;
        Vec<S> points, mu, s2, t;
        typename T::State state;
        std::uint64_t seed_base = 0;
        std::shared_ptr<T> twin;  // an equal memory
        std::string saved;        // io::save_state of the original
    };
    static Args args(const T& orig, const Config& c) {
        Args a;
        a.e = c.dim;
        a.l = c.length;
        a.n = c.params.num_basis;
        a.m = c.params.num_samples;
        a.X = rnd<S>(a.l, a.e, 25);
        a.dB = rnd<S>(a.n, a.e, 26);
        a.points = rnd_in<S>(a.m, 27, 0.0, 1.0);
        std::sort(a.points.data(), a.points.data() + a.m);
        a.mu = mu();
        a.s2 = s2();
        a.t = rnd_in<S>(4, 28, 0.0, 1.0);
        a.state = orig.state();
        a.seed_base = orig.seed_base();
        a.twin = std::make_shared<T>(make(c));
        advance(*a.twin, c);
        std::ostringstream os;
        io::save_state(orig, os);
        a.saved = os.str();
        return a;
    }
    static MatD use(T& m, const Config& c) {
        m.update(rnd<S>(c.length, c.dim, 29));
        m.observe(mu(), s2());
        m.update(rnd<S>(c.length, c.dim, 30));
        const Vec<S> t = rnd_in<S>(3, 31, 0.0, 1.0);
        return flat(m.coefficients(), m.last_sample_points(), m.evaluate(t), m.histogram());
    }
    static void poke(Probe& p, T& m, const Args& a, const Config& c) {
        // const members
        p.survives("dim", [&] { return m.dim(); });
        p.survives("chunk_length", [&] { return m.chunk_length(); });
        p.survives("num_basis", [&] { return m.num_basis(); });
        p.survives("num_samples", [&] { return m.num_samples(); });
        p.survives("params", [&] { return m.params(); });
        p.survives("basis", [&] { return m.basis(); });
        p.survives("first_fit", [&] { return m.first_fit(); });
        p.survives("unbounded_fit", [&] { return m.unbounded_fit(); });
        p.survives("recurrence_operator", [&] { return m.recurrence_operator(); });
        p.survives("bin_edge_basis", [&] { return m.bin_edge_basis(); });
        p.survives("stability", [&] { return m.stability(); });
        p.survives("coefficient_bound", [&] { return m.coefficient_bound(); });
        p.survives("state", [&] { return m.state(); });
        p.survives("seed_base", [&] { return m.seed_base(); });
        p.survives("same_configuration", [&] { return m.same_configuration(*a.twin); });
        p.survives("same_configuration (as the argument)",
                   [&] { return a.twin->same_configuration(m); });
        p.survives("configuration_difference", [&] { return m.configuration_difference(*a.twin); });
        bool empty = true;
        Mat<S> r;
        if (p.survives("empty", [&] { empty = m.empty(); }) == Outcome::returned &&
            p.survives("coefficients", [&] { r = m.coefficients(); }) == Outcome::returned)
            p.odd(!empty && r.size() == 0,
                  "empty() is false but coefficients() is 0x0 (the original's " +
                      std::to_string(a.n) + "x" + std::to_string(a.e) + ")");
        if (p.survives("coefficients", [&] { r = m.coefficients(); }) == Outcome::returned)
            p.odd(r.rows() != a.n || r.cols() != a.e,
                  "coefficients() is " + shape(r) + ", the original's " + std::to_string(a.n) +
                      "x" + std::to_string(a.e));
        p.survives("tokens_stored", [&] { return m.tokens_stored(); });
        p.survives("last_sample_points", [&] { return m.last_sample_points(); });
        p.survives("last_past", [&] { return m.last_past(); });
        p.survives("histogram", [&] { return m.histogram(); });
        if (p.survives("evaluate", [&] { r = m.evaluate(a.t); }) == Outcome::returned)
            p.odd(r.rows() != a.t.size() || r.cols() != a.e,
                  "evaluate(t) is " + shape(r) + ", the original's " + std::to_string(a.t.size()) +
                      "x" + std::to_string(a.e));
        p.survives("stream_index", [&] { return m.stream_index(); });
        p.survives("operator==", [&] { return m == *a.twin; });
        p.survives("operator== (with itself)", [&] { return m == m; });
        p.survives("operator!=", [&] { return m != *a.twin; });
        p.survives("operators", [&] { return m.operators().uniform_op; });
        p.survives("backward", [&] {
            Mat<S> dX(a.l, a.e);
            m.backward(a.dB, dX);
            return dX;
        });
        p.survives_unchecked(
            "backward_unchecked",
            [&] {
                return !m.empty() && a.dB.rows() == m.num_basis() && a.dB.cols() == m.dim() &&
                       a.l == m.chunk_length();
            },
            [&] {
                Mat<S> dX(a.l, a.e);
                m.backward_unchecked(a.dB, dX);
                return dX;
            });
        p.survives("for_stream", [&] { return m.for_stream(1); });
        p.survives("operator_bytes (static)", [&] { return T::operator_bytes(a.l, c.params); });
        p.survives("heap_bytes (static)", [&] { return T::heap_bytes(a.e, c.params); });
        // the others
        p.survives("next_sample_points", [&] { return m.next_sample_points(); });
        p.survives("observe", [&] { m.observe(a.mu, a.s2); });
        p.survives("update(X)", [&] { m.update(a.X); });
        p.survives("update(X, sample_points)", [&] { m.update(a.X, a.points); });
        const Eigen::Ref<const Mat<S>> x(a.X);
        const Eigen::Ref<const Vec<S>> pts(a.points);
        p.survives_unchecked(
            "prepare",  // X checked: L x e
            [&] { return a.X.rows() == m.chunk_length() && a.X.cols() == m.dim(); },
            [&] { return m.prepare("moved-from test", x, nullptr).coefficients(); });
        p.survives_unchecked(
            "prepare (with points)",
            [&] {
                return a.X.rows() == m.chunk_length() && a.X.cols() == m.dim() &&
                       a.points.size() == m.num_samples();
            },
            [&] { return m.prepare("moved-from test", x, &pts).coefficients(); });
        p.survives_unchecked(
            "commit",  // of an Update this memory prepared
            [&] { return a.X.rows() == m.chunk_length() && a.X.cols() == m.dim(); },
            [&] { m.commit(m.prepare("moved-from test", x, nullptr)); });
        p.survives("set_stream_index", [&] { m.set_stream_index(2); });
        p.survives("seed", [&] { m.seed(11); });
        p.survives("restart_generator", [&] { m.restart_generator(); });
        p.survives("reset", [&] { m.reset(); });
        p.survives("set_state", [&] { m.set_state(a.state, a.seed_base); });
        p.survives("io::save_state", [&] {
            std::ostringstream os;
            io::save_state(m, os);
            return os.str();
        });
        p.survives("io::restore_state", [&] {
            std::istringstream in(a.saved);
            io::restore_state(m, in);
        });
    }
};

}  // namespace

TEST_CASE("moved-from: LongTermMemory", "[moved]") {
    MemoryParams uniform = small(false), sticky = small(true), stratified = small(true);
    sticky.sampling = Sampling::sticky;
    stratified.sampling = Sampling::stratified;
    MemoryParams other = small(true);
    other.num_samples = 5;
    check_moved_from<MemorySpec<double>>("LongTermMemory", "LongTermMemory<double>",
                                         {{3, 4, uniform}, {3, 4, sticky}, {3, 5, stratified}},
                                         {2, 6, other});
    check_moved_from<MemorySpec<float>>("LongTermMemory", "LongTermMemory<float>", {{3, 4, sticky}},
                                        {2, 6, other});
    summarise("LongTermMemory");
}

namespace {

// ---- ContinuousAttention ------------------------------------------------------------------

template <typename S>
struct AttentionSpec {
    using T = ContinuousAttention<S>;
    struct Config {
        Index n, dim, heads, d_model;
        AttentionParams params;
    };
    static std::string describe(const Config& c) {
        return "N = " + std::to_string(c.n) + ", e = " + std::to_string(c.dim) +
               ", H = " + std::to_string(c.heads) + ", d_model = " + std::to_string(c.d_model) +
               (c.params.kl_mu_term ? ", KL mu term" : "");
    }
    static T make(const Config& c) {
        return T(GaussianBasis<S>::default_family(c.n, {0.1, 0.2}), c.dim, c.heads, c.d_model,
                 c.params, 4);
    }
    static Index dm(const Config& c) { return c.d_model == 0 ? c.dim : c.d_model; }
    static void advance(T& a, const Config& c) {
        a.forward(rnd<S>(c.n, c.dim, 41), rnd<S>(3, c.dim, 42));
        Mat<S> dq(3, c.dim), dB(c.n, c.dim);
        a.backward(rnd<S>(3, dm(c), 43), S(0.1), dq, dB);
    }
    struct Args {
        Index n = 0, e = 0, dm = 0, q = 3;
        Mat<S> B, Q, dout;
        typename T::Trace trace;
        typename T::Weights weights;
    };
    static Args args(const T& orig, const Config& c) {
        Args a;
        a.n = c.n;
        a.e = c.dim;
        a.dm = dm(c);
        a.B = rnd<S>(c.n, c.dim, 44);
        a.Q = rnd<S>(a.q, c.dim, 45);
        a.dout = rnd<S>(a.q, a.dm, 46);
        a.trace = orig.last();
        a.weights = orig.weights();
        return a;
    }
    static MatD use(T& t, const Config& c) {
        const Mat<S> out = t.forward(rnd<S>(c.n, c.dim, 47), rnd<S>(2, c.dim, 48));
        Mat<S> dq(2, c.dim), dB(c.n, c.dim);
        t.backward(rnd<S>(2, dm(c), 49), S(0.2), dq, dB);
        return flat(out, dq, dB, t.gradients().proj_key, t.gradients().mu);
    }
    static void poke(Probe& p, T& t, const Args& a, const Config&) {
        p.survives("dim", [&] { return t.dim(); });
        p.survives("num_heads", [&] { return t.num_heads(); });
        p.survives("head_size", [&] { return t.head_size(); });
        p.survives("d_model", [&] { return t.d_model(); });
        p.survives("num_basis", [&] { return t.num_basis(); });
        p.survives("basis", [&] { return t.basis(); });
        p.survives("weights", [&] { return t.weights(); });
        p.survives("last", [&] { return t.last(); });
        p.survives("gradients", [&] { return t.gradients(); });
        p.survives("sigma_sq_min", [&] { return t.sigma_sq_min(); });
        p.survives("kl", [&] { return t.kl(S(0.4), S(0.01)); });
        p.survives("values_first", [&] { return t.values_first(a.q); });
        p.survives("last_grad_mu", [&] { return t.last_grad_mu(); });
        p.survives("last_grad_sigma_sq", [&] { return t.last_grad_sigma_sq(); });
        p.survives("trace_finite", [&] { return t.trace_finite(a.trace); });
        p.survives("check_weights", [&] { t.check_weights("moved-from test", "p."); });
        p.survives("explain_trace", [&] { t.explain_trace("moved-from test", "p.", a.trace); });
        p.survives("keys", [&] { return t.keys(a.B); });
        p.survives("values", [&] { return t.values(a.B); });
        p.survives("scores", [&] { return t.scores(a.B, a.Q); });
        p.survives_unchecked(
            "forward_unchecked",  // for modules that checked B (N x e) and the queries (q x e)
            [&] {
                return a.B.rows() == t.num_basis() && a.B.cols() == t.dim() &&
                       a.Q.cols() == t.dim();
            },
            [&] {
                typename T::Trace tr;
                t.forward_unchecked(a.B, a.Q, tr);
                return tr.output;
            });
        p.survives("forward(B, queries, out)", [&] {
            Mat<S> out(a.q, a.dm);
            t.forward(a.B, a.Q, out);
            return out;
        });
        p.survives("forward(B, queries)", [&] { return t.forward(a.B, a.Q); });
        p.survives("backward", [&] {
            Mat<S> dq(a.q, a.e), dB(a.n, a.e);
            t.backward(a.dout, S(0.1), dq, dB);
            return flat(dq, dB);
        });
        p.survives_unchecked(
            "backward_unchecked",  // backward()'s checks, on the trace given
            [&] {
                return a.trace.queries.rows() == a.dout.rows() && a.dout.cols() == t.d_model() &&
                       a.trace.queries.cols() == t.dim() && a.trace.B.rows() == t.num_basis() &&
                       a.trace.B.cols() == t.dim();
            },
            [&] {
                Mat<S> dq(a.q, a.e), dB(a.n, a.e);
                t.backward_unchecked(a.trace, a.dout, S(0.1), dq, dB);
                return flat(dq, dB);
            });
        // the two halves of a backward, for composite modules (inputs checked as above)
        const auto backward_fits = [&] {
            return a.trace.queries.rows() == a.dout.rows() && a.dout.cols() == t.d_model() &&
                   a.trace.queries.cols() == t.dim() && a.trace.B.rows() == t.num_basis() &&
                   a.trace.B.cols() == t.dim();
        };
        p.survives_unchecked("backward_compute", backward_fits,
                             [&] { t.backward_compute(a.trace, a.dout, S(0.1)); });
        p.survives("backward_finite", [&] { return t.backward_finite(); });
        p.survives("backward_dqueries", [&] { return t.backward_dqueries(); });
        p.survives("backward_dB", [&] { return t.backward_dB(); });
        p.survives("explain_backward",
                   [&] { t.explain_backward("moved-from test", "p.", "a cause", "inputs"); });
        p.survives_unchecked("backward_accumulate", backward_fits, [&] {
            t.backward_compute(a.trace, a.dout, S(0.1));
            if (t.backward_finite()) t.backward_accumulate();
        });
        p.survives("weight_bytes (static)", [&] { return T::weight_bytes(a.n, a.e, a.dm); });
        p.survives("zero_grad", [&] { t.zero_grad(); });
        p.survives("append_parameters", [&] {
            std::vector<Parameter<S>> ps;
            t.append_parameters(ps, "p.");
            for (const auto& q : ps) consume(q.values()), consume(q.gradient());
        });
        p.survives("init_weights", [&] { t.init_weights(5); });
        p.survives("set_weights", [&] { t.set_weights(a.weights); });
    }
};

// ---- MemoryGate ---------------------------------------------------------------------------

template <typename S>
struct GateSpec {
    using T = MemoryGate<S>;
    struct Config {
        Index dim;
    };
    static std::string describe(const Config& c) { return "e = " + std::to_string(c.dim); }
    static T make(const Config& c) { return T(c.dim, 6); }
    static void advance(T& g, const Config& c) {
        const Mat<S> X = rnd<S>(4, c.dim, 51);
        Mat<S> gate(4, c.dim), gated(4, c.dim), dX(4, c.dim);
        g.forward(X, gate, gated);
        g.backward(X, gate, rnd<S>(4, c.dim, 52), dX);
    }
    struct Args {
        Index e = 0, l = 4;
        Mat<S> X, gate, dgated;
        typename T::Weights weights;
    };
    static Args args(const T& orig, const Config& c) {
        Args a;
        a.e = c.dim;
        a.X = rnd<S>(a.l, a.e, 53);
        a.gate.resize(a.l, a.e);
        Mat<S> gated(a.l, a.e);
        orig.forward(a.X, a.gate, gated);
        a.dgated = rnd<S>(a.l, a.e, 54);
        a.weights = orig.weights();
        return a;
    }
    static MatD use(T& g, const Config& c) {
        const Mat<S> X = rnd<S>(3, c.dim, 55);
        Mat<S> gate(3, c.dim), gated(3, c.dim), dX(3, c.dim);
        g.forward(X, gate, gated);
        g.backward(X, gate, rnd<S>(3, c.dim, 56), dX);
        return flat(gate, gated, dX, g.gradients().taps[0], g.gradients().bias);
    }
    static void poke(Probe& p, T& g, const Args& a, const Config&) {
        p.survives("dim", [&] { return g.dim(); });
        p.survives("weights", [&] { return g.weights(); });
        p.survives("gradients", [&] { return g.gradients(); });
        p.survives("check_weights", [&] { g.check_weights("moved-from test", "p."); });
        p.survives("forward", [&] {
            Mat<S> gate(a.l, a.e), gated(a.l, a.e);
            g.forward(a.X, gate, gated);
            return flat(gate, gated);
        });
        p.survives("backward", [&] {
            Mat<S> dX(a.l, a.e);
            g.backward(a.X, a.gate, a.dgated, dX);
            return dX;
        });
        p.survives_unchecked(
            "backward_unchecked",  // backward()'s checks: every argument L x e
            [&] { return a.X.cols() == g.dim(); },
            [&] {
                Mat<S> dX(a.l, a.e);
                g.backward_unchecked(a.X, a.gate, a.dgated, dX);
                return dX;
            });
        const auto backward_fits = [&] { return a.X.cols() == g.dim(); };
        p.survives_unchecked("backward_compute", backward_fits,
                             [&] { g.backward_compute(a.X, a.gate, a.dgated); });
        p.survives("backward_finite", [&] { return g.backward_finite(); });
        p.survives("backward_dX", [&] { return g.backward_dX(); });
        p.survives("explain_backward",
                   [&] { g.explain_backward("moved-from test", "p.", "a cause", "inputs"); });
        p.survives_unchecked("backward_accumulate", backward_fits, [&] {
            g.backward_compute(a.X, a.gate, a.dgated);
            if (g.backward_finite()) g.backward_accumulate();
        });
        p.survives("weight_bytes (static)", [&] { return T::weight_bytes(a.e); });
        p.survives("zero_grad", [&] { g.zero_grad(); });
        p.survives("append_parameters", [&] {
            std::vector<Parameter<S>> ps;
            g.append_parameters(ps, "p.");
            for (const auto& q : ps) consume(q.values()), consume(q.gradient());
        });
        p.survives("init_weights", [&] { g.init_weights(7); });
        p.survives("set_weights", [&] { g.set_weights(a.weights); });
    }
};

// ---- ShortTermAttention -------------------------------------------------------------------

template <typename S>
struct ShortTermSpec {
    using T = ShortTermAttention<S>;
    struct Config {
        Index d, heads;
    };
    static std::string describe(const Config& c) {
        return "d = " + std::to_string(c.d) + ", H = " + std::to_string(c.heads);
    }
    static T make(const Config& c) { return T(c.d, c.heads, 8); }
    // One chunk of L = 4 after a previous one: forward, backward; the trace and work.
    static MatD run(T& st, const Config& c, std::uint64_t seed, typename T::Trace& t,
                    typename T::Work& w) {
        const Mat<S> prev = rnd<S>(4, c.d, seed), X = rnd<S>(4, c.d, seed + 1),
                     dY = rnd<S>(4, c.d, seed + 2);
        Mat<S> q, dX(4, c.d);
        st.project_queries(X, q);
        st.forward_unchecked(prev, X, q, t);
        st.backward_unchecked(t, dY, w);
        st.finish_backward(t, dY, w, dX);
        return flat(t.output, dX, st.gradients().query, st.gradients().out);
    }
    static void advance(T& st, const Config& c) {
        typename T::Trace t;
        typename T::Work w;
        run(st, c, 61, t, w);
    }
    struct Args {
        Index d = 0, l = 4;
        Mat<S> prev, X, dY;
        typename T::Trace trace;
        typename T::Work work;
        typename T::Weights weights;
    };
    static Args args(const T& orig, const Config& c) {
        Args a;
        a.d = c.d;
        a.prev = rnd<S>(a.l, a.d, 62);
        a.X = rnd<S>(a.l, a.d, 63);
        a.dY = rnd<S>(a.l, a.d, 64);
        T copy = orig;
        run(copy, c, 65, a.trace, a.work);
        a.weights = orig.weights();
        return a;
    }
    static MatD use(T& st, const Config& c) {
        typename T::Trace t;
        typename T::Work w;
        return run(st, c, 66, t, w);
    }
    static void poke(Probe& p, T& st, const Args& a, const Config&) {
        p.survives("d_model", [&] { return st.d_model(); });
        p.survives("num_heads", [&] { return st.num_heads(); });
        p.survives("head_size", [&] { return st.head_size(); });
        p.survives("weights", [&] { return st.weights(); });
        p.survives("gradients", [&] { return st.gradients(); });
        p.survives("check_trace", [&] { st.check_trace("moved-from test", "p.", a.trace); });
        // project_queries() checks nothing: its one requirement is X with d_model() columns.
        p.survives_unchecked(
            "project_queries", [&] { return a.X.cols() == st.d_model(); },
            [&] {
                Mat<S> q;
                st.project_queries(a.X, q);
                return q;
            });
        p.survives_unchecked(
            "forward_unchecked",  // X checked (L x d), P with d columns, q = X W_Q^T (L x d)
            [&] {
                return a.X.cols() == st.d_model() && a.prev.cols() == st.d_model() &&
                       a.trace.q.cols() == st.d_model();
            },
            [&] {
                Mat<S> q = a.trace.q;
                typename T::Trace t;
                st.forward_unchecked(a.prev, a.X, q, t);
                return t.output;
            });
        p.survives_unchecked(
            "backward_unchecked",  // a trace of this part, dY (checked) L x d
            [&] { return a.trace.x.cols() == st.d_model() && a.dY.cols() == st.d_model(); },
            [&] {
                typename T::Work w;
                st.backward_unchecked(a.trace, a.dY, w);
                return flat(w.dq, w.dk, w.dv);
            });
        p.survives_unchecked(
            "finish_backward",  // after backward_unchecked() of the same trace
            [&] { return a.trace.x.cols() == st.d_model() && a.dY.cols() == st.d_model(); },
            [&] {
                Mat<S> dX(a.l, a.d);
                auto w = a.work;
                st.finish_backward(a.trace, a.dY, w, dX);
                return dX;
            });
        const auto finish_fits = [&] {
            return a.trace.x.cols() == st.d_model() && a.dY.cols() == st.d_model();
        };
        p.survives_unchecked("finish_backward_compute", finish_fits, [&] {
            auto w = a.work;
            st.finish_backward_compute(a.trace, a.dY, w);
        });
        p.survives("finish_backward_finite (static)",
                   [&] { return T::finish_backward_finite(a.work, st.gradients()); });
        p.survives("zero_gradients", [&] { return st.zero_gradients().query; });
        p.survives_unchecked("finish_backward_accumulate", finish_fits, [&] {
            auto w = a.work;
            st.finish_backward_compute(a.trace, a.dY, w);
            if (T::finish_backward_finite(w, st.gradients())) st.finish_backward_accumulate(w);
        });
        p.survives("weight_bytes (static)", [&] { return T::weight_bytes(a.d); });
        p.survives("zero_grad", [&] { st.zero_grad(); });
        p.survives("append_parameters", [&] {
            std::vector<Parameter<S>> ps;
            st.append_parameters(ps, "p.");
            for (const auto& q : ps) consume(q.values()), consume(q.gradient());
        });
        p.survives("init_weights", [&] { st.init_weights(9); });
        p.survives("set_weights", [&] { st.set_weights(a.weights); });
    }
};

}  // namespace

TEST_CASE("moved-from: ContinuousAttention, MemoryGate, ShortTermAttention", "[moved]") {
    AttentionParams kl;
    kl.kl_mu_term = true;
    kl.sigma_sq_min = 1e-4;
    check_moved_from<AttentionSpec<double>>("ContinuousAttention", "ContinuousAttention<double>",
                                            {{8, 4, 2, 6, AttentionParams{}}, {8, 4, 1, 0, kl}},
                                            {8, 6, 3, 0, AttentionParams{}});
    check_moved_from<GateSpec<double>>("MemoryGate", "MemoryGate<double>", {{4}}, {6});
    check_moved_from<ShortTermSpec<double>>("ShortTermAttention", "ShortTermAttention<double>",
                                            {{4, 2}}, {6, 3});
    summarise("ContinuousAttention");
    summarise("MemoryGate");
    summarise("ShortTermAttention");
}

namespace {

// ---- LongTermAttention and LongTermStream -------------------------------------------------

template <typename S>
struct LongTermConfig {
    Index dim, heads, length;
    LongTermParams params;
    Index d_model;
};

template <typename S>
std::string describe_lt(const LongTermConfig<S>& c) {
    return to_string(c.params.sampling) + (c.params.gate ? ", gate" : ", no gate") +
           ", e = " + std::to_string(c.dim) + ", H = " + std::to_string(c.heads) +
           ", L = " + std::to_string(c.length);
}

template <typename S>
struct LongTermSpec {
    using T = LongTermAttention<S>;
    using Config = LongTermConfig<S>;
    using Stream = LongTermStream<S>;
    static std::string describe(const Config& c) { return describe_lt(c); }
    static T make(const Config& c) { return T(c.dim, c.heads, c.length, c.params, c.d_model); }
    static Index dm(const Config& c) { return c.d_model == 0 ? c.dim : c.d_model; }
    // forward, backward, update, attend: the stream attended right after an update.
    static MatD run(T& m, const Config& c, std::uint64_t seed) {
        const Mat<S> out = m.forward(rnd<S>(c.length, c.dim, seed), rnd<S>(3, c.dim, seed + 1));
        Mat<S> dq(3, c.dim), dX(c.length, c.dim);
        m.backward(rnd<S>(3, dm(c), seed + 2), S(0.1), dq, dX);
        m.update(rnd<S>(c.length, c.dim, seed + 3));
        const Mat<S> out2 = m.attend(rnd<S>(3, c.dim, seed + 4));
        return flat(out, dq, dX, out2, m.memory().coefficients(), m.attention().gradients().mu);
    }
    static void advance(T& m, const Config& c) { run(m, c, 71); }
    struct Args {
        Index e = 0, l = 0, dm = 0, m = 0, n = 0, q = 3;
        Mat<S> X, Q, dout;
        Vec<S> points;
        typename ContinuousAttention<S>::Weights attention;
        typename MemoryGate<S>::Weights gate;
        std::shared_ptr<Stream> stream;  // the original's stream 0 (attended after an update)
        std::string saved;               // io::save_state of the original
        std::shared_ptr<io::Safetensors> file;  // io::save_weights of the original, prefix p.
    };
    static Args args(const T& orig, const Config& c) {
        Args a;
        a.e = c.dim;
        a.l = c.length;
        a.dm = dm(c);
        a.m = c.params.num_samples;
        a.n = c.params.num_basis;
        a.X = rnd<S>(a.l, a.e, 72);
        a.Q = rnd<S>(a.q, a.e, 73);
        a.dout = rnd<S>(a.q, a.dm, 74);
        a.points = rnd_in<S>(a.m, 75, 0.0, 1.0);
        a.attention = orig.attention().weights();
        a.gate = orig.has_gate() ? orig.gate().weights() : MemoryGate<S>(c.dim).weights();
        a.stream = std::make_shared<Stream>(orig.stream_state(0));
        std::ostringstream os;
        io::save_state(orig, os);
        a.saved = os.str();
        io::SafetensorsWriter w;
        io::save_weights(orig, w, "p.");
        a.file = std::make_shared<io::Safetensors>(io::Safetensors::parse(w.bytes()));
        return a;
    }
    static MatD use(T& m, const Config& c) { return run(m, c, 76); }
    static void poke(Probe& p, T& m, const Args& a, const Config&) {
        const char* where = "moved-from test";
        p.survives("dim", [&] { return m.dim(); });
        p.survives("chunk_length", [&] { return m.chunk_length(); });
        p.survives("num_heads", [&] { return m.num_heads(); });
        p.survives("d_model", [&] { return m.d_model(); });
        p.survives("params", [&] { return m.params(); });
        p.survives("stream_bytes", [&] { return m.stream_bytes(); });
        p.survives("attention", [&] { return m.attention(); });
        p.survives("has_gate", [&] { return m.has_gate(); });
        p.survives("gate", [&] { return m.gate(); });
        p.survives("last_grad_mu", [&] { return m.last_grad_mu(); });
        p.survives("last_grad_sigma_sq", [&] { return m.last_grad_sigma_sq(); });
        p.survives("num_streams", [&] { return m.num_streams(); });
        p.survives("stream_state", [&] { return m.stream_state(0); });
        p.survives("memory", [&] { return m.memory(0); });
        p.survives("last_attention", [&] { return m.last_attention(0); });
        p.survives("last_gate", [&] { return m.last_gate(0); });
        p.survives("last_gated", [&] { return m.last_gated(0); });
        p.survives("last_grad_B", [&] { return m.last_grad_B(0); });
        p.survives("last_grad_gated", [&] { return m.last_grad_gated(0); });
        // the engine's steps on a stream the caller holds, after the checks their
        // documentation asks
        const auto& g = m.engine();
        p.survives("engine().make_stream", [&] { return g.make_stream(1); });
        p.survives("engine().check_stream_state", [&] { g.check_stream_state(where, *a.stream); });
        p.survives("engine().check_backward",
                   [&] { g.check_backward(where, *a.stream, a.dout, S(0.1)); });
        p.survives("engine().check_chunk", [&] { g.check_chunk(where, a.X); });
        p.survives("engine().check_queries", [&] { g.check_queries(where, a.Q); });
        p.survives("engine().check_points", [&] { g.check_points(where, a.points); });
        p.survives("engine().take_stream_state", [&] {
            Stream s = *a.stream;
            g.take_stream_state(where, s);
        });
        p.survives("engine().operators", [&] { return g.operators().uniform_op; });
        const Eigen::Ref<const Mat<S>> x(a.X), q(a.Q);
        const Eigen::Ref<const Vec<S>> pts(a.points);
        p.survives("engine().prepare_step", [&] {
            Stream s = *a.stream;
            g.check_queries(where, a.Q);
            auto st = g.prepare_step(where, s, nullptr, nullptr, &q);
            return st.output();
        });
        p.survives("engine().commit_step", [&] {
            Stream s = *a.stream;
            g.check_chunk(where, a.X);
            g.check_queries(where, a.Q);
            g.commit_step(g.prepare_step(where, s, &x, nullptr, &q));
            return s.trace.output;
        });
        p.survives("engine().commit_step (with points)", [&] {
            Stream s = *a.stream;
            g.check_chunk(where, a.X);
            g.check_points(where, a.points);
            g.commit_step(g.prepare_step(where, s, &x, &pts, nullptr));
            return s.memory.coefficients();
        });
        p.survives("engine().prepare_backward", [&] {
            Stream s = *a.stream;
            g.check_backward(where, s, a.dout, S(0.1));
            auto b = g.prepare_backward(where, "p.", "dout", s, a.dout, S(0.1));
            return flat(g.dqueries(b), g.dX(b));
        });
        p.survives("engine().accumulate, commit_backward", [&] {
            Stream s = *a.stream;
            g.check_backward(where, s, a.dout, S(0.1));
            auto into = g.zero_gradients();
            auto b = g.prepare_backward(where, "p.", "dout", s, a.dout, S(0.1), &into);
            g.accumulate(b, into);
            g.commit_backward(std::move(b));
            return flat(s.dB, into.attention.mu);
        });
        p.survives("engine().zero_gradients", [&] { return g.zero_gradients().attention.mu; });
        p.survives("stream_bytes_for (static)",
                   [&] { return T::stream_bytes_for(a.e, 2, a.l, a.dm, small(true)); });
        p.survives("engine().reset_stream", [&] {
            Stream s = *a.stream;
            g.reset_stream(s);
            return s.memory.coefficients();
        });
        // the calls on the module's own streams
        p.survives("update(X)", [&] { m.update(a.X); });
        p.survives("update(X, sample_points)", [&] { m.update(a.X, a.points); });
        p.survives("attend(queries)", [&] { return m.attend(a.Q); });
        p.survives("attend(queries, out)", [&] {
            Mat<S> out(a.q, a.dm);
            m.attend(a.Q, out);
            return out;
        });
        p.survives("forward(X, queries)", [&] { return m.forward(a.X, a.Q); });
        p.survives("forward(X, queries, sample_points)",
                   [&] { return m.forward(a.X, a.Q, a.points); });
        p.survives("backward", [&] {
            Mat<S> dq(a.q, a.e), dX(a.l, a.e);
            m.backward(a.dout, S(0.1), dq, dX);
            return flat(dq, dX);
        });
        p.survives("zero_grad", [&] { m.zero_grad(); });
        p.survives("parameters", [&] {
            const auto ps = m.parameters("p.");
            for (const auto& r : ps) consume(r.values()), consume(r.gradient());
            return ps.size();
        });
        p.survives("reset", [&] { m.reset(0); });
        p.survives("reset (keep the generator)", [&] { m.reset(0, ResetGenerator::keep); });
        p.survives("seed_stream", [&] { m.seed_stream(5, 0); });
        p.survives("set_stream_state", [&] { m.set_stream_state(*a.stream, 0); });
        p.survives("set_num_streams", [&] { m.set_num_streams(2); });
        p.survives("io::save_state", [&] {
            std::ostringstream os;
            io::save_state(m, os);
            return os.str();
        });
        p.survives("io::restore_state", [&] {
            std::istringstream in(a.saved);
            io::restore_state(m, in);
        });
        p.survives("io::tensors_of", [&] { return io::tensors_of(m).size(); });
        p.survives("io::describe", [&] { return io::describe(*a.file, m, "p.").problems(); });
        std::vector<std::int64_t> key, mu;
        if (p.survives("io::save_weights", [&] {
                io::SafetensorsWriter w;
                io::save_weights(m, w, "p.");
                const auto f = io::Safetensors::parse(w.bytes());
                key = f.info("p.proj_key.weight").shape;
                mu = f.info("p.mu.weight").shape;
            }) == Outcome::returned)
            p.odd(key != std::vector<std::int64_t>{a.e, a.e} ||
                      mu != std::vector<std::int64_t>{1, a.n},
                  "io::save_weights writes proj_key.weight " + io::shape_string(key) +
                      " and mu.weight " + io::shape_string(mu) + ", the original's [" +
                      std::to_string(a.e) + ", " + std::to_string(a.e) + "] and [1, " +
                      std::to_string(a.n) + "]");
        p.survives("io::load_weights", [&] { io::load_weights(m, *a.file, "p."); });
        p.survives("set_gate_weights", [&] { m.set_gate_weights(a.gate); });
        p.survives("set_attention_weights", [&] { m.set_attention_weights(a.attention); });
    }
};

// The stream state is a value of its own: moved from, it is compared and handed to a valid
// module's steps (as a caller holding its streams would).
template <typename S>
struct StreamSpec {
    using T = LongTermStream<S>;
    using Config = LongTermConfig<S>;
    using Module = LongTermAttention<S>;
    static std::string describe(const Config& c) { return describe_lt(c); }
    static T make(const Config& c) { return LongTermSpec<S>::make(c).engine().make_stream(0); }
    static MatD run(T& s, const Config& c, std::uint64_t seed) {
        Module m = LongTermSpec<S>::make(c);
        const Mat<S> X = rnd<S>(c.length, c.dim, seed), Q = rnd<S>(3, c.dim, seed + 1);
        const Eigen::Ref<const Mat<S>> x(X), q(Q);
        m.engine().commit_step(m.engine().prepare_step("moved-from test", s, &x, nullptr, &q));
        return flat(s.trace.output, s.memory.coefficients());
    }
    static void advance(T& s, const Config& c) { run(s, c, 81); }
    struct Args {
        std::shared_ptr<Module> module;
        std::shared_ptr<T> fresh;
        Mat<S> X, Q, dout;
    };
    static Args args(const T&, const Config& c) {
        Args a;
        a.module = std::make_shared<Module>(LongTermSpec<S>::make(c));
        a.fresh = std::make_shared<T>(a.module->engine().make_stream(0));
        a.X = rnd<S>(c.length, c.dim, 82);
        a.Q = rnd<S>(3, c.dim, 83);
        a.dout = rnd<S>(3, LongTermSpec<S>::dm(c), 84);
        return a;
    }
    static MatD use(T& s, const Config& c) { return run(s, c, 85); }
    static void poke(Probe& p, T& s, const Args& a, const Config&) {
        const char* where = "moved-from test";
        Module& m = *a.module;
        p.survives("operator==", [&] { return s == *a.fresh; });
        p.survives("operator== (with itself)", [&] { return s == s; });
        p.survives("operator!=", [&] { return s != *a.fresh; });
        const Eigen::Ref<const Mat<S>> x(a.X), q(a.Q);
        const auto& g = m.engine();
        p.survives("arg: LongTermEngine::check_stream_state",
                   [&] { g.check_stream_state(where, s); });
        p.survives("arg: LongTermEngine::check_backward",
                   [&] { g.check_backward(where, s, a.dout, S(0.1)); });
        p.survives("arg: LongTermEngine::take_stream_state", [&] {
            T copy = s;
            g.take_stream_state(where, copy);
        });
        p.survives("arg: LongTermEngine::prepare_step, commit_step", [&] {
            g.check_chunk(where, a.X);
            g.check_queries(where, a.Q);
            g.commit_step(g.prepare_step(where, s, &x, nullptr, &q));
        });
        p.survives("arg: LongTermEngine::prepare_step", [&] {
            g.check_queries(where, a.Q);
            return g.prepare_step(where, s, nullptr, nullptr, &q).output();
        });
        p.survives("arg: LongTermEngine::prepare_backward, accumulate, commit_backward", [&] {
            g.check_backward(where, s, a.dout, S(0.1));
            auto into = g.zero_gradients();
            auto b = g.prepare_backward(where, "", "dout", s, a.dout, S(0.1), &into);
            g.accumulate(b, into);
            g.commit_backward(std::move(b));
        });
        p.survives("arg: LongTermAttention::set_stream_state", [&] { m.set_stream_state(s, 0); });
        p.survives("arg: LongTermEngine::reset_stream", [&] { g.reset_stream(s); });
    }
};

}  // namespace

TEST_CASE("moved-from: LongTermAttention, LongTermStream", "[moved]") {
    const auto run = [](auto scalar) {
        using S = decltype(scalar);
        const std::string s = std::is_same_v<S, float> ? "<float>" : "<double>";
        // float: the configuration with the gate and sticky sampling only
        std::vector<LongTermConfig<S>> configs = {{6, 3, 5, small(true), 4}};
        if (std::is_same_v<S, double>) configs.push_back({6, 2, 4, small(false), 0});
        const LongTermConfig<S> other{4, 2, 6, small(true), 0};
        check_moved_from<LongTermSpec<S>>("LongTermAttention", "LongTermAttention" + s, configs,
                                          other);
        check_moved_from<StreamSpec<S>>("LongTermStream", "LongTermStream" + s, configs, other);
    };
    run(double{});
    run(float{});
    summarise("LongTermAttention");
    summarise("LongTermStream");
}

namespace {

// ---- LongTermView -------------------------------------------------------------------------

// Every member of a view, on the view of a moved-from layer and on a moved-from view.
template <typename S>
void poke_view(Probe& p, const LongTermView<S>& v) {
    p.survives("engine", [&] { return v.engine().dim(); });
    p.survives("dim", [&] { return v.dim(); });
    p.survives("chunk_length", [&] { return v.chunk_length(); });
    p.survives("num_heads", [&] { return v.num_heads(); });
    p.survives("d_model", [&] { return v.d_model(); });
    p.survives("params", [&] { return v.params(); });
    p.survives("attention", [&] { return v.attention(); });
    p.survives("has_gate", [&] { return v.has_gate(); });
    p.survives("gate", [&] { return v.gate(); });
    p.survives("last_grad_mu", [&] { return v.last_grad_mu(); });
    p.survives("last_grad_sigma_sq", [&] { return v.last_grad_sigma_sq(); });
    p.survives("num_streams", [&] { return v.num_streams(); });
    p.survives("stream_state", [&] { return v.stream_state(0); });
    p.survives("memory", [&] { return v.memory(0); });
    p.survives("last_attention", [&] { return v.last_attention(0); });
    p.survives("last_gate", [&] { return v.last_gate(0); });
    p.survives("last_gated", [&] { return v.last_gated(0); });
    p.survives("last_grad_B", [&] { return v.last_grad_B(0); });
    p.survives("last_grad_gated", [&] { return v.last_grad_gated(0); });
}

// ---- InfinityFormerLayer and LayerStream --------------------------------------------------

template <typename S>
struct LayerConfig {
    Index d, heads, length;
    LongTermParams params;
};

template <typename S>
std::string describe_layer(const LayerConfig<S>& c) {
    return to_string(c.params.sampling) + (c.params.gate ? ", gate" : ", no gate") +
           ", d = " + std::to_string(c.d) + ", H = " + std::to_string(c.heads) +
           ", L = " + std::to_string(c.length);
}

template <typename S>
struct LayerSpec {
    using T = InfinityFormerLayer<S>;
    using Config = LayerConfig<S>;
    static std::string describe(const Config& c) { return describe_layer(c); }
    static T make(const Config& c) { return T(c.d, c.heads, c.length, c.params); }
    // Four chunks (the memory is read from the third on) and a backward.
    static MatD run(T& m, const Config& c, std::uint64_t seed) {
        std::vector<MatD> outs;
        for (std::uint64_t k = 0; k < 4; ++k)
            outs.push_back(m.forward(rnd<S>(c.length, c.d, seed + k)).template cast<double>());
        Mat<S> dX(c.length, c.d);
        m.backward(rnd<S>(c.length, c.d, seed + 9), S(0.1), dX);
        return flat(outs[0], outs[1], outs[2], outs[3], dX, m.short_term_gradients().query,
                    m.long_term().attention().gradients().mu,
                    m.stream_state(0).long_term.memory.coefficients());
    }
    static void advance(T& m, const Config& c) { run(m, c, 91); }
    struct Args {
        Index d = 0, l = 0, n = 0;
        Mat<S> X, dY;
        std::shared_ptr<LayerStream<S>> stream;
        typename T::ShortTermWeights short_term;
        typename ContinuousAttention<S>::Weights long_term;
        typename MemoryGate<S>::Weights gate;
        std::string saved;
        std::string model_saved;  // io::save_model_state of the original as part "layer"
        std::shared_ptr<io::Safetensors> file;
    };
    static Args args(const T& orig, const Config& c) {
        Args a;
        a.d = c.d;
        a.l = c.length;
        a.n = c.params.num_basis;
        a.X = rnd<S>(a.l, a.d, 92);
        a.dY = rnd<S>(a.l, a.d, 93);
        a.stream = std::make_shared<LayerStream<S>>(orig.stream_state(0));
        std::ostringstream ms;
        io::save_model_state(io::ModelParts<S>{{"layer", orig}}, ms);
        a.model_saved = ms.str();
        a.short_term = orig.short_term_weights();
        a.long_term = orig.long_term().attention().weights();
        a.gate = orig.long_term().has_gate() ? orig.long_term().gate().weights()
                                             : MemoryGate<S>(c.d).weights();
        std::ostringstream os;
        io::save_state(orig, os);
        a.saved = os.str();
        io::SafetensorsWriter w;
        io::save_weights(orig, w);
        a.file = std::make_shared<io::Safetensors>(io::Safetensors::parse(w.bytes()));
        return a;
    }
    static MatD use(T& m, const Config& c) { return run(m, c, 94); }
    static void poke(Probe& p, T& m, const Args& a, const Config&) {
        const char* where = "moved-from test";
        p.survives("d_model", [&] { return m.d_model(); });
        p.survives("num_heads", [&] { return m.num_heads(); });
        p.survives("head_size", [&] { return m.head_size(); });
        p.survives("chunk_length", [&] { return m.chunk_length(); });
        p.survives("long_term", [&] { return m.long_term(); });
        {
            Probe view("LongTermView", "LongTermView of " + p.label());
            poke_view(view, m.long_term());
            view.end();
        }
        p.survives("short_term", [&] { return m.short_term(); });
        p.survives("short_term_weights", [&] { return m.short_term_weights(); });
        p.survives("short_term_gradients", [&] { return m.short_term_gradients(); });
        p.survives("num_streams", [&] { return m.num_streams(); });
        p.survives("stream_bytes", [&] { return m.stream_bytes(); });
        p.survives("stream_state", [&] { return m.stream_state(0); });
        p.survives("take_stream_state", [&] {
            LayerStream<S> s = *a.stream;
            m.take_stream_state(where, s);
        });
        p.survives("make_stream", [&] { return m.make_stream(1); });
        p.survives("forward(X)", [&] { return m.forward(a.X); });
        p.survives("forward(X, Y)", [&] {
            Mat<S> Y(a.l, a.d);
            m.forward(a.X, Y);
            return Y;
        });
        p.survives("forward_streams", [&] {
            std::vector<Mat<S>> Y;
            m.forward_streams({a.X}, Y, 1);
            return Y;
        });
        p.survives("forward_streams (two threads)", [&] {
            std::vector<Mat<S>> Y;
            m.forward_streams({a.X, a.X}, Y, 2);
            return Y;
        });
        p.survives("backward", [&] {
            Mat<S> dX(a.l, a.d);
            m.backward(a.dY, S(0.1), dX);
            return dX;
        });
        p.survives("backward_streams", [&] {
            std::vector<Mat<S>> dX;
            m.backward_streams({a.dY}, S(0.1), dX, 1);
            return dX;
        });
        p.survives("forward(X, Y) (row-major)", [&] {
            typename T::RowMatrix X = a.X, Y(a.l, a.d);
            m.forward(X, Y);
            return Mat<S>(Y);
        });
        p.survives("forward_batch", [&] {
            Mat<S> X(2 * a.l, a.d), Y(2 * a.l, a.d);
            X << a.X, a.X;
            m.forward_batch(X, Y, 2);
            return Y;
        });
        p.survives("backward_batch", [&] {
            Mat<S> dX(a.l, a.d);
            m.backward_batch(a.dY, S(0.1), dX, 1);
            return dX;
        });
        p.survives("zero_grad", [&] { m.zero_grad(); });
        p.survives("parameters", [&] {
            const auto ps = m.parameters();
            for (const auto& r : ps) consume(r.values()), consume(r.gradient());
            return ps.size();
        });
        p.survives("reset", [&] { m.reset(0); });
        p.survives("reset (keep the generator)", [&] { m.reset(0, ResetGenerator::keep); });
        p.survives("seed_stream", [&] { m.seed_stream(5, 0); });
        p.survives("set_stream_state", [&] { m.set_stream_state(*a.stream, 0); });
        p.survives("set_num_streams", [&] { m.set_num_streams(2); });
        p.survives("io::save_state", [&] {
            std::ostringstream os;
            io::save_state(m, os);
            return os.str();
        });
        p.survives("io::restore_state", [&] {
            std::istringstream in(a.saved);
            io::restore_state(m, in);
        });
        p.survives("io::save_model_state", [&] {
            std::ostringstream os;
            io::save_model_state(io::ModelParts<S>{{"layer", m}}, os);
            return os.str();
        });
        p.survives("io::restore_model_state", [&] {
            std::istringstream in(a.model_saved);
            io::restore_model_state(io::ModelParts<S>{{"layer", m}}, in);
        });
        p.survives("io::tensors_of", [&] { return io::tensors_of(m).size(); });
        p.survives("io::describe", [&] { return io::describe(*a.file, m, "").problems(); });
        std::vector<std::int64_t> key, mu;
        if (p.survives("io::save_weights", [&] {
                io::SafetensorsWriter w;
                io::save_weights(m, w);
                const auto f = io::Safetensors::parse(w.bytes());
                key = f.info("long_term.proj_key.weight").shape;
                mu = f.info("long_term.mu.weight").shape;
            }) == Outcome::returned)
            p.odd(key != std::vector<std::int64_t>{a.d, a.d} ||
                      mu != std::vector<std::int64_t>{1, a.n},
                  "io::save_weights writes long_term.proj_key.weight " + io::shape_string(key) +
                      " and long_term.mu.weight " + io::shape_string(mu) + ", the original's [" +
                      std::to_string(a.d) + ", " + std::to_string(a.d) + "] and [1, " +
                      std::to_string(a.n) + "]");
        p.survives("io::load_weights", [&] { io::load_weights(m, *a.file); });
        p.survives("init_short_term_weights", [&] { m.init_short_term_weights(4); });
        p.survives("set_short_term_weights", [&] { m.set_short_term_weights(a.short_term); });
        p.survives("set_long_term_weights", [&] { m.set_long_term_weights(a.long_term); });
        p.survives("set_gate_weights", [&] { m.set_gate_weights(a.gate); });
    }
};

template <typename S>
struct LayerStreamSpec {
    using T = LayerStream<S>;
    using Config = LayerConfig<S>;
    using Layer = InfinityFormerLayer<S>;
    static std::string describe(const Config& c) { return describe_layer(c); }
    static T make(const Config& c) { return LayerSpec<S>::make(c).stream_state(0); }
    static MatD run(T& s, const Config& c, std::uint64_t seed) {
        Layer layer = LayerSpec<S>::make(c);
        layer.set_stream_state(s, 0);
        std::vector<MatD> outs;
        for (std::uint64_t k = 0; k < 3; ++k)
            outs.push_back(layer.forward(rnd<S>(c.length, c.d, seed + k)).template cast<double>());
        s = layer.stream_state(0);
        return flat(outs[0], outs[1], outs[2], s.long_term.memory.coefficients());
    }
    static void advance(T& s, const Config& c) { run(s, c, 101); }
    struct Args {
        std::shared_ptr<Layer> layer;
        std::shared_ptr<T> fresh;
    };
    static Args args(const T&, const Config& c) {
        Args a;
        a.layer = std::make_shared<Layer>(LayerSpec<S>::make(c));
        a.fresh = std::make_shared<T>(a.layer->stream_state(0));
        return a;
    }
    static MatD use(T& s, const Config& c) { return run(s, c, 102); }
    static void poke(Probe& p, T& s, const Args& a, const Config&) {
        p.survives("operator==", [&] { return s == *a.fresh; });
        p.survives("operator== (with itself)", [&] { return s == s; });
        p.survives("operator!=", [&] { return s != *a.fresh; });
        p.survives("arg: InfinityFormerLayer::take_stream_state", [&] {
            T copy = s;
            a.layer->take_stream_state("moved-from test", copy);
        });
        p.survives("arg: InfinityFormerLayer::set_stream_state",
                   [&] { a.layer->set_stream_state(s, 0); });
    }
};

// A view of a layer the test keeps: the view itself moved from.
template <typename S>
struct ViewSpec {
    using T = LongTermView<S>;
    struct Config {
        std::shared_ptr<InfinityFormerLayer<S>> layer;
    };
    static std::string describe(const Config& c) {
        return "of a layer, d = " + std::to_string(c.layer->d_model());
    }
    static T make(const Config& c) { return c.layer->long_term(); }
    static void advance(T&, const Config&) {}
    struct Args {};
    static Args args(const T&, const Config&) { return {}; }
    static MatD use(T& v, const Config&) {
        return flat(v.memory(0).coefficients(), v.attention().weights().mu, v.last_grad_mu());
    }
    static void poke(Probe& p, T& v, const Args&, const Config&) { poke_view(p, v); }
};

}  // namespace

TEST_CASE("moved-from: InfinityFormerLayer, LayerStream, LongTermView", "[moved]") {
    const auto run = [](auto scalar) {
        using S = decltype(scalar);
        const std::string s = std::is_same_v<S, float> ? "<float>" : "<double>";
        // float: the configuration with the gate and sticky sampling only
        std::vector<LayerConfig<S>> configs = {{6, 3, 5, small(true)}};
        if (std::is_same_v<S, double>) configs.push_back({6, 2, 4, small(false)});
        const LayerConfig<S> other{4, 2, 6, small(true)};
        check_moved_from<LayerSpec<S>>("InfinityFormerLayer", "InfinityFormerLayer" + s, configs,
                                       other);
        check_moved_from<LayerStreamSpec<S>>("LayerStream", "LayerStream" + s, configs, other);
    };
    run(double{});
    run(float{});
    auto layer = std::make_shared<InfinityFormerLayer<double>>(6, 2, 4, small(true));
    LayerSpec<double>::advance(*layer, {6, 2, 4, small(true)});
    auto other = std::make_shared<InfinityFormerLayer<double>>(4, 2, 6, small(false));
    check_moved_from<ViewSpec<double>>("LongTermView", "LongTermView<double>", {{layer}}, {other});
    summarise("InfinityFormerLayer");
    summarise("LayerStream");
    summarise("LongTermView");
}

namespace {

// ---- Adam ---------------------------------------------------------------------------------

struct AdamSpec {
    using T = Adam<double>;
    struct Config {
        std::shared_ptr<ShortTermAttention<double>> module;  // the weights it updates
        AdamOptions options;
    };
    static std::string describe(const Config& c) {
        return "over a ShortTermAttention, d = " + std::to_string(c.module->d_model()) +
               (c.options.clip_norm > 0 ? ", clipped" : "");
    }
    static T make(const Config& c) {
        std::vector<Parameter<double>> ps;
        c.module->append_parameters(ps, "st.");
        return T(ps, c.options);
    }
    // One step from gradients 0.01: what it changes (the same for every fresh Adam).
    static MatD step(T& adam) {
        std::vector<MatD> before;
        for (const auto& p : adam.parameters()) {  // the same weights and gradients every time
            p.values().setConstant(0.5);
            p.gradient().setConstant(0.01);
            before.push_back(p.values());
        }
        adam.step();
        MatD delta(0, 1);
        for (std::size_t k = 0; k < before.size(); ++k)
            delta = flat(delta, MatD(adam.parameters()[k].values() - before[k]));
        return flat(delta, MatD::Constant(1, 1, static_cast<double>(adam.steps())));
    }
    static void advance(T& adam, const Config&) { step(adam); }
    struct Args {
        AdamOptions options;
    };
    static Args args(const T& orig, const Config&) { return {orig.options()}; }
    static MatD use(T& adam, const Config&) { return step(adam); }
    static void poke(Probe& p, T& adam, const Args& a, const Config&) {
        p.survives("options", [&] { return adam.options(); });
        p.survives("parameters", [&] {
            for (const auto& q : adam.parameters()) consume(q.values()), consume(q.gradient());
            return adam.parameters().size();
        });
        p.survives("steps", [&] { return adam.steps(); });
        p.survives("last_grad_norm", [&] { return adam.last_grad_norm(); });
        p.survives("step", [&] { adam.step(); });
        p.survives("zero_grad", [&] { adam.zero_grad(); });
        p.survives("set_options", [&] { adam.set_options(a.options); });
    }
};

// ---- io::Safetensors and io::SafetensorsWriter --------------------------------------------

io::SafetensorsWriter writer_of(int variant) {
    io::SafetensorsWriter w;
    const io::DType dtype = variant == 0 ? io::DType::F64 : io::DType::F32;
    if (variant < 2) {
        w.add("a", rnd<double>(2, 3, 111), dtype);
        w.add("b", Vec<double>(rnd<double>(4, 1, 112)), dtype);
        w.add_values("c", std::vector<double>(12, 0.5), {2, 2, 3}, dtype);
        w.metadata("note", "variant " + std::to_string(variant));
    } else {
        w.add("z", rnd<double>(5, 5, 113), io::DType::BF16);
    }
    return w;
}

struct SafetensorsSpec {
    using T = io::Safetensors;
    struct Config {
        int variant;
    };
    static std::string describe(const Config& c) { return "file " + std::to_string(c.variant); }
    static T make(const Config& c) {
        return T::parse(writer_of(c.variant).bytes(), "file " + std::to_string(c.variant));
    }
    static void advance(T&, const Config&) {}
    struct Args {
        std::string bytes;
        std::uint64_t data_bytes = 0;
    };
    static Args args(const T& orig, const Config& c) {
        return {writer_of(c.variant).bytes(), orig.data_bytes()};
    }
    static MatD use(T& f, const Config&) {
        return flat(f.matrix<double>("a", 2, 3), f.vector<double>("b", 4),
                    MatD::Constant(1, 1, static_cast<double>(f.data_bytes() + f.size())));
    }
    static void poke(Probe& p, T& f, const Args& a, const Config&) {
        p.survives("source", [&] { return f.source(); });
        p.survives("names", [&] { return f.names(); });
        p.survives("size", [&] { return f.size(); });
        p.survives("has", [&] { return f.has("a"); });
        p.survives("info", [&] { return f.info("a"); });
        p.survives("metadata", [&] { return f.metadata(); });
        std::uint64_t bytes = 0;
        if (p.survives("data_bytes", [&] { bytes = f.data_bytes(); }) == Outcome::returned)
            p.odd(bytes > a.data_bytes, "data_bytes() is " + std::to_string(bytes) +
                                            ", the original's " + std::to_string(a.data_bytes));
        p.survives("values<double>", [&] { return f.values<double>("a"); });
        p.survives("values<float>", [&] { return f.values<float>("a"); });
        p.survives("matrix", [&] { return f.matrix<double>("a", 2, 3); });
        p.survives("vector", [&] { return f.vector<double>("b", 4); });
        p.survives("taps", [&] { return f.taps<double>("c", 2, 2, 3); });
        p.survives("require_shape", [&] { f.require_shape("moved-from test", "a", {2, 3}); });
        p.survives("parse (static)", [&] { return T::parse(a.bytes).size(); });
        p.survives("parse(vector) (static)", [&] {
            return T::parse(std::vector<char>(a.bytes.begin(), a.bytes.end())).size();
        });
        p.survives("parse(data, size) (static)",
                   [&] { return T::parse(a.bytes.data(), a.bytes.size()).size(); });
        p.survives("read (static)", [&] {
            std::istringstream in(a.bytes);
            return T::read(in).size();
        });
        p.survives("load (static)", [&] { return T::load("/nonexistent/moved-from").size(); });
    }
};

struct WriterSpec {
    using T = io::SafetensorsWriter;
    struct Config {
        int variant;
    };
    static std::string describe(const Config& c) { return "file " + std::to_string(c.variant); }
    static T make(const Config& c) { return writer_of(c.variant); }
    static void advance(T&, const Config&) {}
    struct Args {
        std::filesystem::path path;
    };
    static Args args(const T&, const Config&) {
        return {std::filesystem::temp_directory_path() /
                ("infinityformer-moved-from-" +
                 std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()) +
                 ".safetensors")};
    }
    static MatD use(T& w, const Config&) {
        w.add("d", rnd<double>(1, 2, 114), io::DType::F64);
        const std::string b = w.bytes();
        MatD m(static_cast<Index>(b.size()), 1);
        for (std::size_t k = 0; k < b.size(); ++k)
            m(static_cast<Index>(k)) = static_cast<unsigned char>(b[k]);
        return m;
    }
    static void poke(Probe& p, T& w, const Args& a, const Config&) {
        p.survives("has", [&] { return w.has("a"); });
        p.survives("size", [&] { return w.size(); });
        p.survives("bytes", [&] { return io::Safetensors::parse(w.bytes()).size(); });
        p.survives("write", [&] {
            std::ostringstream os;
            w.write(os);
            return os.str();
        });
        p.survives("save", [&] {
            w.save(a.path);
            std::filesystem::remove(a.path);
        });
        p.survives("add", [&] { w.add("new", rnd<double>(2, 2, 115), io::DType::F32); });
        p.survives("add_values",
                   [&] { w.add_values("new2", std::vector<float>(3, 1.0f), {3}, io::DType::F64); });
        p.survives("metadata", [&] { w.metadata("key", "value"); });
    }
};

}  // namespace

TEST_CASE("moved-from: Adam, io::Safetensors, io::SafetensorsWriter", "[moved]") {
    auto module = std::make_shared<ShortTermAttention<double>>(4, 2, 1);
    auto other = std::make_shared<ShortTermAttention<double>>(6, 3, 2);
    AdamOptions clipped;
    clipped.clip_norm = 0.05;
    clipped.learning_rate = 0.01;
    check_moved_from<AdamSpec>("Adam", "Adam<double>", {{module, {}}, {module, clipped}},
                               {other, {}});
    check_moved_from<SafetensorsSpec>("io::Safetensors", "io::Safetensors", {{0}, {1}}, {2});
    check_moved_from<WriterSpec>("io::SafetensorsWriter", "io::SafetensorsWriter", {{0}, {1}}, {2});
    summarise("Adam");
    summarise("io::Safetensors");
    summarise("io::SafetensorsWriter");
}

namespace {

// ---- value types with members ---------------------------------------------------------------

struct NoArgs {};

struct MemoryParamsSpec {
    using T = MemoryParams;
    struct Config {
        bool lm;
    };
    static std::string describe(const Config& c) { return c.lm ? "lm" : "sorting"; }
    static T make(const Config& c) { return small(c.lm).memory_params(); }
    static void advance(T&, const Config&) {}
    static NoArgs args(const T&, const Config&) { return {}; }
    static MatD use(T& v, const Config&) {
        v.validate();
        v.validate_for<float>("moved-from test");
        return flat(Eigen::Map<const MatD>(v.widths.data(), static_cast<Index>(v.widths.size()), 1),
                    MatD::Constant(1, 1, static_cast<double>(v.num_basis)));
    }
    static void poke(Probe& p, T& v, const NoArgs&, const Config&) {
        p.survives("validate", [&] { v.validate(); });
        p.survives("validate_for<double>", [&] { v.validate_for<double>("moved-from test"); });
        p.survives("validate_for<float>", [&] { v.validate_for<float>("moved-from test"); });
    }
};

struct AttentionParamsSpec {
    using T = AttentionParams;
    struct Config {
        bool lm;
    };
    static std::string describe(const Config& c) { return c.lm ? "lm" : "sorting"; }
    static T make(const Config& c) { return small(c.lm).attention_params(); }
    static void advance(T&, const Config&) {}
    static NoArgs args(const T&, const Config&) { return {}; }
    static MatD use(T& v, const Config&) {
        v.validate_for<float>("moved-from test");
        return MatD::Constant(1, 1, v.sigma_sq_min + v.kl_sigma_0 + v.kl_mu_0);
    }
    static void poke(Probe& p, T& v, const NoArgs&, const Config&) {
        p.survives("validate", [&] { v.validate(); });
        p.survives("validate_for<double>", [&] { v.validate_for<double>("moved-from test"); });
        p.survives("validate_for<float>", [&] { v.validate_for<float>("moved-from test"); });
    }
};

struct LongTermParamsSpec {
    using T = LongTermParams;
    struct Config {
        bool lm;
    };
    static std::string describe(const Config& c) { return c.lm ? "lm" : "sorting"; }
    static T make(const Config& c) { return small(c.lm); }
    static void advance(T&, const Config&) {}
    static NoArgs args(const T&, const Config&) { return {}; }
    static MatD use(T& v, const Config& c) {
        MemoryParams m = v.memory_params();
        AttentionParams a = v.attention_params();
        return flat(MemoryParamsSpec::use(m, {c.lm}), AttentionParamsSpec::use(a, {c.lm}));
    }
    static void poke(Probe& p, T& v, const NoArgs&, const Config&) {
        p.survives("validate", [&] { v.validate(); });
        p.survives("validate_for<double>", [&] { v.validate_for<double>("moved-from test"); });
        p.survives("validate_for<float>", [&] { v.validate_for<float>("moved-from test"); });
        p.survives("memory_params", [&] { return v.memory_params(); });
        p.survives("attention_params", [&] { return v.attention_params(); });
        p.survives("sorting (static)", [&] { return T::sorting(); });
        p.survives("lm (static)", [&] { return T::lm(); });
    }
};

struct AdamOptionsSpec {
    using T = AdamOptions;
    struct Config {
        double clip;
    };
    static std::string describe(const Config& c) { return "clip_norm " + std::to_string(c.clip); }
    static T make(const Config& c) {
        T o;
        o.clip_norm = c.clip;
        return o;
    }
    static void advance(T&, const Config&) {}
    static NoArgs args(const T&, const Config&) { return {}; }
    static MatD use(T& v, const Config&) {
        v.validate();
        return MatD::Constant(1, 1, v.clip_norm + v.learning_rate);
    }
    static void poke(Probe& p, T& v, const NoArgs&, const Config&) {
        p.survives("validate", [&] { v.validate(); });
        p.survives("validate_for<double>", [&] { v.validate_for<double>("moved-from test"); });
        p.survives("validate_for<float>", [&] { v.validate_for<float>("moved-from test"); });
    }
};

struct ParameterSpec {
    using T = Parameter<double>;
    struct Config {
        std::shared_ptr<MemoryGate<double>> module;  // the storage it views
        std::size_t index;
    };
    static std::string describe(const Config& c) {
        return "a MemoryGate's parameter " + std::to_string(c.index);
    }
    static T make(const Config& c) {
        std::vector<Parameter<double>> ps;
        c.module->append_parameters(ps, "gate.");
        return ps.at(c.index);
    }
    static void advance(T&, const Config&) {}
    static NoArgs args(const T&, const Config&) { return {}; }
    static MatD use(T& v, const Config&) {
        return flat(v.values(), v.gradient(), MatD::Constant(1, 1, static_cast<double>(v.size())));
    }
    static void poke(Probe& p, T& v, const NoArgs&, const Config&) {
        p.survives("size", [&] { return v.size(); });
        p.survives("values", [&] { return MatD(v.values()); });
        p.survives("gradient", [&] { return MatD(v.gradient()); });
    }
};

struct TensorInfoSpec {
    using T = io::TensorInfo;
    struct Config {
        std::string name;
    };
    static std::string describe(const Config& c) { return "of tensor " + c.name; }
    static T make(const Config& c) { return SafetensorsSpec::make({0}).info(c.name); }
    static void advance(T&, const Config&) {}
    struct Args {
        std::uint64_t numel = 0;
    };
    static Args args(const T& orig, const Config&) { return {orig.numel()}; }
    static MatD use(T& v, const Config&) {
        return MatD::Constant(1, 1, static_cast<double>(v.numel() * 1000 + v.bytes()));
    }
    static void poke(Probe& p, T& v, const Args& a, const Config&) {
        std::uint64_t n = 0;
        if (p.survives("numel", [&] { n = v.numel(); }) == Outcome::returned)
            p.odd(n != a.numel, "numel() is " + std::to_string(n) + " (its shape moved out), " +
                                    "the original's " + std::to_string(a.numel));
        p.survives("bytes", [&] { return v.bytes(); });
    }
};

struct WeightsReportSpec {
    using T = io::WeightsReport;
    struct Config {
        bool loadable;
    };
    static std::string describe(const Config& c) {
        return c.loadable ? "loadable" : "not loadable";
    }
    static T make(const Config& c) {
        LongTermAttention<double> m(6, 2, 4, small(false));
        io::SafetensorsWriter w;
        io::save_weights(m, w, "p.");
        if (!c.loadable) w.add("p.extra", rnd<double>(2, 2, 116), io::DType::F32);
        return io::describe(io::Safetensors::parse(w.bytes()), m, "p.");
    }
    static void advance(T&, const Config&) {}
    static NoArgs args(const T&, const Config&) { return {}; }
    static MatD use(T& v, const Config&) {
        return MatD::Constant(
            1, 1, (v.loadable() ? 1000.0 : 0.0) + static_cast<double>(v.problems().size()));
    }
    static void poke(Probe& p, T& v, const NoArgs&, const Config&) {
        p.survives("loadable", [&] { return v.loadable(); });
        p.survives("problems", [&] { return v.problems(); });
    }
};

template <typename S>
struct MemoryStateSpec {
    using T = typename LongTermMemory<S>::State;
    using Config = typename MemorySpec<S>::Config;
    static std::string describe(const Config& c) { return MemorySpec<S>::describe(c); }
    static T make(const Config& c) {
        LongTermMemory<S> m = MemorySpec<S>::make(c);
        MemorySpec<S>::advance(m, c);
        return m.state();
    }
    static void advance(T&, const Config&) {}
    struct Args {
        std::shared_ptr<LongTermMemory<S>> memory;
        std::shared_ptr<T> fresh;
    };
    static Args args(const T&, const Config& c) {
        return {std::make_shared<LongTermMemory<S>>(MemorySpec<S>::make(c)),
                std::make_shared<T>(make(c))};
    }
    static MatD use(T& s, const Config& c) {
        LongTermMemory<S> m = MemorySpec<S>::make(c);
        m.set_state(s, 0);
        return MemorySpec<S>::use(m, c);
    }
    static void poke(Probe& p, T& s, const Args& a, const Config&) {
        p.odd(!s.empty && s.B.size() == 0, "the state says it is not empty (tokens " +
                                               std::to_string(s.tokens) +
                                               ") but holds no coefficients (B is 0x0)");
        p.survives("operator==", [&] { return s == *a.fresh; });
        p.survives("operator!=", [&] { return s != *a.fresh; });
        p.survives("arg: LongTermMemory::set_state", [&] { a.memory->set_state(s, 0); });
    }
};

template <typename S>
struct AttentionTraceSpec {
    using Module = ContinuousAttention<S>;
    using T = typename Module::Trace;
    using Config = typename AttentionSpec<S>::Config;
    static std::string describe(const Config& c) { return AttentionSpec<S>::describe(c); }
    static T make(const Config& c) {
        Module m = AttentionSpec<S>::make(c);
        AttentionSpec<S>::advance(m, c);
        return m.last();
    }
    static void advance(T&, const Config&) {}
    struct Args {
        std::shared_ptr<Module> module;
        std::shared_ptr<T> fresh;
        Mat<S> dout;
    };
    static Args args(const T& orig, const Config& c) {
        return {std::make_shared<Module>(AttentionSpec<S>::make(c)), std::make_shared<T>(make(c)),
                rnd<S>(orig.queries.rows(), AttentionSpec<S>::dm(c), 117)};
    }
    static MatD use(T& t, const Config&) { return flat(t.output, t.r, t.kl_reg); }
    static void poke(Probe& p, T& t, const Args& a, const Config&) {
        Module& m = *a.module;
        p.survives("operator==", [&] { return t == *a.fresh; });
        p.survives("operator!=", [&] { return t != *a.fresh; });
        bool finite = false;
        if (p.survives("arg: ContinuousAttention::trace_finite",
                       [&] { finite = m.trace_finite(t); }) == Outcome::returned)
            p.odd(finite && t.output.size() == 0,
                  "ContinuousAttention::trace_finite() accepts the moved-from (empty) trace");
        p.survives("arg: ContinuousAttention::explain_trace",
                   [&] { m.explain_trace("moved-from test", "", t); });
        p.survives_unchecked(
            "arg: ContinuousAttention::backward_unchecked",
            [&] {
                return t.queries.rows() == a.dout.rows() && t.queries.cols() == m.dim() &&
                       t.B.rows() == m.num_basis() && t.B.cols() == m.dim();
            },
            [&] {
                Mat<S> dq(a.dout.rows(), m.dim()), dB(m.num_basis(), m.dim());
                m.backward_unchecked(t, a.dout, S(0.1), dq, dB);
            });
    }
};

template <typename S>
struct ShortTraceSpec {
    using Module = ShortTermAttention<S>;
    using T = typename Module::Trace;
    using Config = typename ShortTermSpec<S>::Config;
    static std::string describe(const Config& c) { return ShortTermSpec<S>::describe(c); }
    static T make(const Config& c) {
        Module m = ShortTermSpec<S>::make(c);
        T t;
        typename Module::Work w;
        ShortTermSpec<S>::run(m, c, 118, t, w);
        return t;
    }
    static void advance(T&, const Config&) {}
    struct Args {
        std::shared_ptr<Module> module;
        std::shared_ptr<T> fresh;
        Mat<S> dY;
    };
    static Args args(const T& orig, const Config& c) {
        return {std::make_shared<Module>(ShortTermSpec<S>::make(c)), std::make_shared<T>(make(c)),
                rnd<S>(orig.x.rows(), c.d, 119)};
    }
    static MatD use(T& t, const Config&) { return flat(t.output, t.probs); }
    static void poke(Probe& p, T& t, const Args& a, const Config&) {
        Module& m = *a.module;
        p.survives("operator==", [&] { return t == *a.fresh; });
        p.survives("operator!=", [&] { return t != *a.fresh; });
        p.survives("arg: ShortTermAttention::check_trace",
                   [&] { m.check_trace("moved-from test", "", t); });
        p.survives_unchecked(
            "arg: ShortTermAttention::backward_unchecked",
            [&] { return t.x.rows() == a.dY.rows() && t.x.cols() == m.d_model(); },
            [&] {
                typename Module::Work w;
                m.backward_unchecked(t, a.dY, w);
            });
    }
};

}  // namespace

TEST_CASE("moved-from: parameter sets, views, reports, states and traces", "[moved]") {
    check_moved_from<MemoryParamsSpec>("MemoryParams", "MemoryParams", {{false}, {true}}, {true});
    check_moved_from<AttentionParamsSpec>("AttentionParams", "AttentionParams", {{false}, {true}},
                                          {true});
    check_moved_from<LongTermParamsSpec>("LongTermParams", "LongTermParams", {{false}, {true}},
                                         {true});
    check_moved_from<AdamOptionsSpec>("AdamOptions", "AdamOptions", {{0.0}, {1.0}}, {2.0});
    auto gate = std::make_shared<MemoryGate<double>>(4, 1);
    check_moved_from<ParameterSpec>("Parameter", "Parameter<double>", {{gate, 0}, {gate, 3}},
                                    {gate, 1});
    check_moved_from<TensorInfoSpec>("io::TensorInfo", "io::TensorInfo", {{"a"}, {"c"}}, {"b"});
    check_moved_from<WeightsReportSpec>("io::WeightsReport", "io::WeightsReport", {{true}, {false}},
                                        {false});
    MemoryParams sticky = small(true);
    MemoryParams other = small(false);
    other.num_samples = 5;
    check_moved_from<MemoryStateSpec<double>>(
        "LongTermMemory::State", "LongTermMemory<double>::State",
        {{3, 4, small(false)}, {3, 4, sticky}}, {2, 6, other});
    check_moved_from<AttentionTraceSpec<double>>(
        "ContinuousAttention::Trace", "ContinuousAttention<double>::Trace",
        {{8, 4, 2, 6, AttentionParams{}}}, {8, 6, 3, 0, AttentionParams{}});
    check_moved_from<ShortTraceSpec<double>>("ShortTermAttention::Trace",
                                             "ShortTermAttention<double>::Trace", {{4, 2}}, {6, 3});
    for (const char* cls :
         {"MemoryParams", "AttentionParams", "LongTermParams", "AdamOptions", "Parameter",
          "io::TensorInfo", "io::WeightsReport", "LongTermMemory::State",
          "ContinuousAttention::Trace", "ShortTermAttention::Trace"})
        summarise(cls);
}
