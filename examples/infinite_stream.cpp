// Streams a long synthetic signal through the ∞-former's unbounded long-term memory and shows
// that the memory's size and the cost of a chunk do not depend on how much came before, and
// how well the memory still reconstructs past content as a function of its age.
//
//   infinite_stream [--tokens N] [--chunk L] [--basis N] [--samples M] [--dim d] [--tau t]
//                   [--seed s] [--sampling uniform|sticky|stratified|both|all] [--help]
//
// Signal. Every dimension is a sum of 4 sinusoids with random phases, amplitude 1/2 each and
// periods drawn log-uniformly in [256, 65536] tokens, plus white noise of standard deviation
// 0.05: smooth at the scale a basis fit resolves in a recent chunk, with components on time
// scales far longer than a chunk.
//
// Where a past token lives. Token j of chunk c enters the memory at position
// τ + (1 − τ)(j + 1)/L (first chunk: (j + ½)/L). Every later update reads the old memory at M
// sorted points s_1…s_M and refits what it read at τ·i/M, so content at position s moves to
// τ·g(s), g the piecewise-linear map through (0, 0) and (s_i, i/M). With uniform points
// s_i = i/M, g(s) = s: a token k chunks old lives at p·τ^k. With sticky or stratified points g
// stretches the attended regions and squeezes the others; the demo applies g from the points
// each update used (last_sample_points()).
//
// What is measured. (c1) Ordinary tokens: 32 tokens from each of a few chunks per age bucket
// are recorded; at the end the memory is evaluated at their positions (evaluate(t)) and
// compared with their values. (c2) Events (below): the same comparison, made 1, 2, 4, …, 128
// chunks after each event arrived, averaged over all events of the stream. The bookkeeping is
// bounded too, whatever the length of the stream.
//
// The attention that drives sticky and stratified sampling. Sticky memories read the old
// memory where the previous chunk's queries attended (observe(μ, σ²) after every chunk). A
// LongTermAttention with random weights would give densities unrelated to the content, so the
// demo uses a stand-in for a trained model: every 4 chunks a span of 8 tokens is an "event";
// after every chunk, 8 queries (σ = 0.004) attend to the current position of each of the 8
// most recent events, and 64 queries read broadly (μ uniform in [0, 1], σ = 0.05). Table (c2)
// shows what this keeps; table (c1), what it costs the other tokens.
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <exception>
#include <infinityformer/infinityformer.hpp>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

namespace ifr = infinityformer;
using Memory = ifr::LongTermMemory<float>;
using Matrix = Memory::Matrix;
using Vector = Memory::Vector;
using Index = Eigen::Index;

constexpr double kPi = 3.14159265358979323846;
constexpr int kSinusoids = 4;               // per dimension
constexpr double kMinPeriod = 256.0;        // tokens
constexpr double kMaxPeriod = 65536.0;      // tokens
constexpr double kNoise = 0.05;             // standard deviation of the white noise
constexpr Index kProbesPerChunk = 32;       // tokens recorded from a probe chunk
constexpr Index kProbeChunksPerBucket = 8;  // probe chunks per age bucket, at most
constexpr Index kEventEvery = 4;            // one event every kEventEvery chunks: ...
constexpr Index kEventTokens = 8;           // ... a span of this many tokens
constexpr Index kAttendedEvents = 8;        // queries look up the most recent events ...
constexpr Index kQueriesPerEvent = 8;       // ... with this many queries each
constexpr double kEventSigma = 0.004;       // σ of an event query's density
constexpr Index kBroadQueries = 64;         // queries spread over the whole memory
constexpr double kBroadSigma = 0.05;        // σ of a broad query's density
constexpr Index kTimingWindow = 50;         // chunks in the early / late timing medians
constexpr std::array<Index, 8> kCheckpoints = {1, 2, 4, 8, 16, 32, 64, 128};  // chunks

struct Options {
    Index tokens = 1 << 20;
    Index chunk = 1024;
    Index basis = 512;
    Index samples = 512;
    Index dim = 64;
    double tau = 0.75;
    std::uint64_t seed = 1;
    std::string sampling = "all";
    std::string figure_data;  // where to write table (c)'s errors for a plot ("": nowhere)
};

void print_help() {
    std::printf(
        "usage: infinite_stream [options]\n"
        "Streams synthetic tokens through infinityformer::LongTermMemory<float> and reports\n"
        "(a) the memory's size, (b) the time per chunk early and late in the stream and\n"
        "(c) the reconstruction error of past tokens by age.\n"
        "\n"
        "  --tokens N      tokens to stream, at least 2 chunks (default 1048576)\n"
        "  --chunk L       tokens per chunk (default 1024)\n"
        "  --basis N       basis functions, a multiple of 2 (default 512)\n"
        "  --samples M     points at which the old memory is read per update (default 512)\n"
        "  --dim d         width of a token (default 64)\n"
        "  --tau t         share of [0, 1] given to the compressed past, 0 < t < 1 "
        "(default 0.75)\n"
        "  --seed s        seed of the signal, the probes and sticky sampling (default 1)\n"
        "  --sampling S    uniform, sticky, stratified, both (uniform and sticky) or all "
        "(default all)\n"
        "  --figure-data F write table (c)'s errors to F, one line per age: kind (ordinary or\n"
        "                  event), age in tokens, then one column per sampling (scripts/demo\n"
        "                  plots them)\n"
        "  --help          this text\n");
}

Index parse_index(const std::string& flag, const std::string& text) {
    std::size_t used = 0;
    long long v = 0;
    try {
        v = std::stoll(text, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used != text.size() || v < 1)
        throw std::invalid_argument(flag + " expects a positive integer, got '" + text + "'");
    return static_cast<Index>(v);
}

double parse_double(const std::string& flag, const std::string& text) {
    std::size_t used = 0;
    double v = 0.0;
    try {
        v = std::stod(text, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used != text.size() || !std::isfinite(v))
        throw std::invalid_argument(flag + " expects a number, got '" + text + "'");
    return v;
}

// Returns false if --help was given.
bool parse(int argc, char** argv, Options& o) {
    for (int i = 1; i < argc; ++i) {
        const std::string flag = argv[i];
        if (flag == "--help" || flag == "-h") return false;
        if (i + 1 >= argc) throw std::invalid_argument("unknown option or missing value: " + flag);
        const std::string value = argv[++i];
        if (flag == "--tokens") {
            o.tokens = parse_index(flag, value);
        } else if (flag == "--chunk") {
            o.chunk = parse_index(flag, value);
        } else if (flag == "--basis") {
            o.basis = parse_index(flag, value);
        } else if (flag == "--samples") {
            o.samples = parse_index(flag, value);
        } else if (flag == "--dim") {
            o.dim = parse_index(flag, value);
        } else if (flag == "--tau") {
            o.tau = parse_double(flag, value);
        } else if (flag == "--seed") {
            o.seed = static_cast<std::uint64_t>(parse_index(flag, value));
        } else if (flag == "--sampling") {
            if (value != "uniform" && value != "sticky" && value != "stratified" &&
                value != "both" && value != "all")
                throw std::invalid_argument(
                    "--sampling expects uniform, sticky, stratified, both or all, got '" + value +
                    "'");
            o.sampling = value;
        } else if (flag == "--figure-data") {
            o.figure_data = value;
        } else {
            throw std::invalid_argument("unknown option: " + flag);
        }
    }
    if (o.tokens < 2 * o.chunk)
        throw std::invalid_argument("--tokens must be at least two chunks (2 x --chunk)");
    return true;
}

// Per dimension: a sum of sinusoids, advanced token by token by rotating phasors (in double),
// plus white noise.
class Signal {
public:
    Signal(Index dim, std::uint64_t seed) : rng_(seed), noise_(0.0, kNoise) {
        std::uniform_real_distribution<double> unit(0.0, 1.0);
        const auto n = static_cast<std::size_t>(dim * kSinusoids);
        re_.resize(n);
        im_.resize(n);
        step_re_.resize(n);
        step_im_.resize(n);
        for (std::size_t k = 0; k < n; ++k) {
            const double period = kMinPeriod * std::pow(kMaxPeriod / kMinPeriod, unit(rng_));
            const double phase = 2.0 * kPi * unit(rng_);
            re_[k] = std::cos(phase);
            im_[k] = std::sin(phase);
            step_re_[k] = std::cos(2.0 * kPi / period);
            step_im_[k] = std::sin(2.0 * kPi / period);
        }
        dim_ = dim;
    }

    // Fills X (L × d) with the next L tokens.
    void next(Matrix& X) {
        const double amplitude = 0.5;
        for (Index t = 0; t < X.rows(); ++t) {
            for (Index j = 0; j < dim_; ++j) {
                double v = noise_(rng_);
                for (int s = 0; s < kSinusoids; ++s) {
                    const auto k = static_cast<std::size_t>(j * kSinusoids + s);
                    v += amplitude * im_[k];
                    const double re = re_[k] * step_re_[k] - im_[k] * step_im_[k];
                    im_[k] = re_[k] * step_im_[k] + im_[k] * step_re_[k];
                    re_[k] = re;
                }
                X(t, j) = static_cast<float>(v);
            }
        }
        // Keep the phasors on the unit circle.
        for (std::size_t k = 0; k < re_.size(); ++k) {
            const double r = std::hypot(re_[k], im_[k]);
            re_[k] /= r;
            im_[k] /= r;
        }
    }

private:
    std::mt19937_64 rng_;
    std::normal_distribution<double> noise_;
    Index dim_ = 0;
    std::vector<double> re_, im_, step_re_, step_im_;
};

// One memory with its own sampling, and where every probe lives in it.
struct Stream {
    ifr::Sampling sampling;
    Memory memory;
    std::vector<double> position;  // per probe
    std::vector<double> ms;        // per chunk, time of memory.update()
};

// An event: a span of tokens that the stand-in attention looks up while it is recent.
struct Event {
    Index chunk = 0;                            // chunk it arrived with
    Matrix value;                               // its tokens, T x d
    std::vector<std::vector<double>> position;  // per stream, T positions
    std::size_t next_checkpoint = 0;            // index into kCheckpoints
};

// Moves every tracked position through the last update's map s -> τ·g(s).
void compress_positions(const Vector& points, double tau, std::vector<double>& position) {
    const auto m = static_cast<std::size_t>(points.size());
    std::vector<double> s(m);
    for (std::size_t i = 0; i < m; ++i) s[i] = static_cast<double>(points[static_cast<Index>(i)]);
    for (double& p : position) {
        // i = number of points <= p; anchors (s_i, i/M) and (s_{i+1}, (i+1)/M), s_0 = 0.
        const auto i =
            static_cast<std::size_t>(std::upper_bound(s.begin(), s.end(), p) - s.begin());
        double g = 1.0;
        if (i < m) {
            const double lo = i == 0 ? 0.0 : s[i - 1];
            const double frac = (p - lo) / (s[i] - lo);
            g = (static_cast<double>(i) + frac) / static_cast<double>(m);
        }
        p = tau * g;
    }
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double mean_of(const std::vector<double>& v, std::size_t begin, std::size_t end) {
    double s = 0.0;
    for (std::size_t i = begin; i < end; ++i) s += v[i];
    return end > begin ? s / static_cast<double>(end - begin) : 0.0;
}

std::string kilo(Index tokens) {
    if (tokens >= 1024 && tokens % 1024 == 0) return std::to_string(tokens / 1024) + "k";
    return std::to_string(tokens);
}

int run(const Options& o) {
    using Clock = std::chrono::steady_clock;
    const auto wall_start = Clock::now();

    ifr::LongTermParams params = ifr::LongTermParams::sorting();
    params.num_basis = o.basis;
    params.num_samples = o.samples;
    params.tau = o.tau;
    params.seed = o.seed;

    std::vector<ifr::Sampling> modes;
    if (o.sampling == "uniform" || o.sampling == "both" || o.sampling == "all")
        modes.push_back(ifr::Sampling::uniform);
    if (o.sampling == "sticky" || o.sampling == "both" || o.sampling == "all")
        modes.push_back(ifr::Sampling::sticky);
    if (o.sampling == "stratified" || o.sampling == "all")
        modes.push_back(ifr::Sampling::stratified);

    std::vector<Stream> streams;
    streams.reserve(modes.size());
    for (ifr::Sampling mode : modes) {
        ifr::LongTermParams p = params;
        p.sampling = mode;
        streams.push_back(Stream{mode, Memory(o.dim, o.chunk, p), {}, {}});
    }
    const std::size_t num_streams = streams.size();
    const Memory& m0 = streams.front().memory;

    const Index L = o.chunk;
    const Index num_chunks = o.tokens / L;
    const Index total = num_chunks * L;
    const Index event_tokens = std::min(kEventTokens, L);

    std::printf("infinityformer %s: infinite stream demo\n", ifr::version_string().c_str());
    std::printf("stream : %lld tokens = %lld chunks of L = %lld, d = %lld (float)\n",
                static_cast<long long>(total), static_cast<long long>(num_chunks),
                static_cast<long long>(L), static_cast<long long>(o.dim));
    std::printf("memory : N = %lld basis functions (widths", static_cast<long long>(o.basis));
    for (double w : params.widths) std::printf(" %g", w);
    std::printf("), M = %lld samples, tau = %g, lambda = %g\n", static_cast<long long>(o.samples),
                o.tau, params.ridge_lambda);
    std::printf(
        "signal : per dimension %d sinusoids, periods log-uniform in [%g, %g] tokens,\n"
        "         amplitude 0.5 each, plus white noise (sd %g)\n",
        kSinusoids, kMinPeriod, kMaxPeriod, kNoise);
    std::printf(
        "queries: observed after every chunk (sticky and stratified read the memory where\n"
        "         they attended): %lld queries (sigma %g) on each of the %lld most recent events\n"
        "         (a span of %lld tokens every %lld chunks) + %lld broad queries (mu uniform in\n"
        "         [0, 1], sigma %g); a stand-in for a trained model's attention\n",
        static_cast<long long>(kQueriesPerEvent), kEventSigma,
        static_cast<long long>(kAttendedEvents), static_cast<long long>(event_tokens),
        static_cast<long long>(kEventEvery), static_cast<long long>(kBroadQueries), kBroadSigma);

    // (a) The state of a stream is its coefficient matrix B (N x d). The operators (first-chunk
    // and unbounded fits, the basis at the uniform points) are fixed for the configuration.
    struct State {
        long long rows, cols, bytes, tokens;
    };
    auto state_of = [](const Memory& m) {
        const Matrix& B = m.coefficients();
        return State{static_cast<long long>(B.rows()), static_cast<long long>(B.cols()),
                     static_cast<long long>(B.size()) * static_cast<long long>(sizeof(float)),
                     static_cast<long long>(m.tokens_stored())};
    };
    const State at_start = state_of(m0);
    const double operator_mib =
        static_cast<double>(m0.first_fit().G().size() + m0.unbounded_fit().G().size() +
                            m0.num_samples() * m0.num_basis()) *
        sizeof(float) / (1024.0 * 1024.0);

    // Age buckets of table (c1) (age of a token = number of tokens that came after it).
    const std::vector<Index> edges = {1024, 2048, 4096, 8192, 16384, 32768, 65536, 262144};
    const std::size_t num_buckets = edges.size() + 1;
    auto bucket_of = [&](Index age) {
        std::size_t b = 0;
        while (b < edges.size() && age >= edges[b]) ++b;
        return b;
    };
    // Probe chunks: at most kProbeChunksPerBucket per age bucket, evenly spread.
    std::vector<char> probe_chunk(static_cast<std::size_t>(num_chunks), 0);
    {
        std::vector<std::vector<Index>> by_bucket(num_buckets);
        for (Index c = 0; c < num_chunks; ++c)
            by_bucket[bucket_of(total - 1 - (c * L + L / 2))].push_back(c);
        for (const auto& v : by_bucket) {
            const auto n = static_cast<Index>(v.size());
            const Index k = std::min(n, kProbeChunksPerBucket);
            for (Index i = 0; i < k; ++i)
                probe_chunk[static_cast<std::size_t>(
                    v[static_cast<std::size_t>((2 * i + 1) * n / (2 * k))])] = 1;
        }
    }

    Signal signal(o.dim, o.seed);
    std::mt19937_64 rng(o.seed ^ 0x9e3779b97f4a7c15ULL);
    std::uniform_real_distribution<double> unit(0.0, 1.0);
    Matrix X(L, o.dim);

    std::vector<Index> probe_token;  // index of the probe in the stream
    std::vector<float> probe_value;  // d per probe
    std::deque<Event> events;        // events still to be checked
    // Error of the events at each checkpoint, per stream, and how many events reached it.
    std::vector<std::vector<double>> event_err(num_streams,
                                               std::vector<double>(kCheckpoints.size(), 0.0));
    std::vector<Index> event_count(kCheckpoints.size(), 0);

    auto entry_position = [&](Index j, bool first_chunk) {
        const auto l = static_cast<double>(L);
        const auto jj = static_cast<double>(j);
        return first_chunk ? (jj + 0.5) / l : o.tau + (1.0 - o.tau) * (jj + 1.0) / l;
    };
    // Mean relative error |x_hat - x| / |x| of the rows of `value` read at `position`.
    auto mean_error = [](const Memory& m, const std::vector<double>& position,
                         const Eigen::Ref<const Matrix>& value) {
        Vector t(static_cast<Index>(position.size()));
        for (std::size_t i = 0; i < position.size(); ++i)
            t[static_cast<Index>(i)] = static_cast<float>(position[i]);
        const Matrix recon = m.evaluate(t);
        double sum = 0.0;
        for (Index i = 0; i < value.rows(); ++i)
            sum += static_cast<double>((recon.row(i) - value.row(i)).norm() / value.row(i).norm());
        return sum / static_cast<double>(value.rows());
    };

    Vector mu(kAttendedEvents * kQueriesPerEvent + kBroadQueries);
    Vector sigma_sq(mu.size());
    sigma_sq.head(kBroadQueries).setConstant(static_cast<float>(kBroadSigma * kBroadSigma));
    sigma_sq.tail(mu.size() - kBroadQueries)
        .setConstant(static_cast<float>(kEventSigma * kEventSigma));

    std::printf("\n%10s %13s", "tokens", "chunks");
    for (const Stream& s : streams)
        std::printf(" %13s", (ifr::to_string(s.sampling) + " ms").c_str());
    std::printf("\n");
    Index next_report = 1;

    for (Index c = 0; c < num_chunks; ++c) {
        signal.next(X);

        const std::size_t first_new = probe_token.size();
        if (probe_chunk[static_cast<std::size_t>(c)]) {
            for (Index k = 0; k < kProbesPerChunk; ++k) {  // jittered, evenly spread offsets
                const Index lo = k * L / kProbesPerChunk;
                const Index hi = std::max(lo + 1, (k + 1) * L / kProbesPerChunk);
                const Index j = lo + static_cast<Index>(unit(rng) * static_cast<double>(hi - lo));
                probe_token.push_back(c * L + j);
                for (Index e = 0; e < o.dim; ++e) probe_value.push_back(X(j, e));
            }
        }
        Index event_start = -1;
        if (c % kEventEvery == 0) {
            event_start = static_cast<Index>(unit(rng) * static_cast<double>(L - event_tokens + 1));
            events.push_back(Event{c, X.middleRows(event_start, event_tokens), {}, 0});
            events.back().position.resize(num_streams);
        }
        for (Index q = 0; q < kBroadQueries; ++q) mu[q] = static_cast<float>(unit(rng));

        for (std::size_t si = 0; si < num_streams; ++si) {
            Stream& s = streams[si];
            const auto t0 = Clock::now();
            s.memory.update(X);
            const auto t1 = Clock::now();
            s.ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());

            // Where the tracked tokens live now (the new ones have no positions yet).
            if (c > 0) {
                const Vector& points = s.memory.last_sample_points();
                compress_positions(points, o.tau, s.position);
                for (Event& ev : events) compress_positions(points, o.tau, ev.position[si]);
            }
            for (std::size_t p = first_new; p < probe_token.size(); ++p)
                s.position.push_back(entry_position(probe_token[p] - c * L, c == 0));
            if (event_start >= 0)
                for (Index j = 0; j < event_tokens; ++j)
                    events.back().position[si].push_back(entry_position(event_start + j, c == 0));

            // This chunk's attention densities, read by the next update's sampling.
            if (s.sampling != ifr::Sampling::uniform) {
                const auto n = static_cast<Index>(events.size());
                Index q = kBroadQueries;
                for (Index e = 0; e < kAttendedEvents; ++e) {
                    // While fewer than kAttendedEvents events exist, some are looked up twice.
                    const Event& ev = events[static_cast<std::size_t>(n - 1 - e % n)];
                    const auto middle = static_cast<std::size_t>(event_tokens / 2);
                    for (Index r = 0; r < kQueriesPerEvent; ++r, ++q)
                        mu[q] = static_cast<float>(ev.position[si][middle]);
                }
                s.memory.observe(mu, sigma_sq);
            }
        }

        // (c2) Events that are 1, 2, 4, ... chunks old now.
        for (Event& ev : events) {
            if (ev.next_checkpoint >= kCheckpoints.size() ||
                c - ev.chunk != kCheckpoints[ev.next_checkpoint])
                continue;
            for (std::size_t si = 0; si < num_streams; ++si)
                event_err[si][ev.next_checkpoint] +=
                    mean_error(streams[si].memory, ev.position[si], ev.value);
            ++event_count[ev.next_checkpoint];
            ++ev.next_checkpoint;
        }
        // Keep the events that are still to be checked or looked up.
        while (events.size() > static_cast<std::size_t>(kAttendedEvents) &&
               events.front().next_checkpoint >= kCheckpoints.size())
            events.pop_front();

        if ((c + 1) * 10 >= next_report * num_chunks) {
            const auto from = static_cast<std::size_t>((next_report - 1) * num_chunks / 10);
            const auto to = static_cast<std::size_t>(c + 1);
            std::printf("%10lld %6lld/%-6lld", static_cast<long long>((c + 1) * L),
                        static_cast<long long>(c + 1), static_cast<long long>(num_chunks));
            for (const Stream& s : streams) std::printf(" %13.2f", mean_of(s.ms, from, to));
            std::printf("\n");
            std::fflush(stdout);
            while (next_report * num_chunks <= (c + 1) * 10) ++next_report;
        }
    }
    std::printf("(ms: mean time of memory.update() per chunk since the previous line)\n");

    // (a)
    const State at_end = state_of(m0);
    std::printf("\n(a) memory of one stream (%s sampling; the others are the same size)\n",
                ifr::to_string(streams.front().sampling).c_str());
    for (const auto& [when, st] : {std::pair<const char*, State>{"start", at_start},
                                   std::pair<const char*, State>{"end", at_end}})
        std::printf(
            "  %-6s coefficients B = %lld x %lld floats = %lld bytes, %10lld tokens "
            "stored\n",
            when, st.rows, st.cols, st.bytes, st.tokens);
    const bool same_size = at_start.rows == at_end.rows && at_start.cols == at_end.cols;
    std::printf("  size of B %s; fixed operators (built once per configuration): %.1f MiB\n",
                same_size ? "unchanged" : "CHANGED", operator_mib);

    // (b) Time per chunk, early vs late. Chunk 1 is the cheaper first-chunk fit, so the early
    // window starts at chunk 2.
    const auto window = std::max<std::size_t>(
        1, std::min<std::size_t>(static_cast<std::size_t>(kTimingWindow),
                                 static_cast<std::size_t>(num_chunks - 1) / 2));
    const std::string early_name = "chunks 2-" + std::to_string(window + 1);
    const std::string late_name = "chunks " +
                                  std::to_string(num_chunks - static_cast<Index>(window) + 1) +
                                  "-" + std::to_string(num_chunks);
    std::printf("\n(b) time of memory.update() per chunk, median\n");
    std::printf("  %-12s %16s %16s %10s\n", "sampling", early_name.c_str(), late_name.c_str(),
                "late/early");
    std::vector<double> ratios;
    for (const Stream& s : streams) {
        const std::vector<double> early(s.ms.begin() + 1,
                                        s.ms.begin() + 1 + static_cast<std::ptrdiff_t>(window));
        const std::vector<double> late(s.ms.end() - static_cast<std::ptrdiff_t>(window),
                                       s.ms.end());
        const double e = median(early);
        const double l = median(late);
        ratios.push_back(l / e);
        std::printf("  %-12s %13.3f ms %13.3f ms %10.2f\n", ifr::to_string(s.sampling).c_str(), e,
                    l, l / e);
    }

    // (c1) Ordinary tokens, read back from the final memory, by age bucket.
    std::printf(
        "\n(c) mean relative error |x_hat - x| / |x| of past tokens read back from the memory\n"
        "    at the positions they have moved to (0 = exact; about 1 = forgotten: the memory\n"
        "    there holds a blend of many older chunks)\n");
    const std::size_t num_probes = probe_token.size();
    std::vector<std::vector<double>> err(num_streams, std::vector<double>(num_buckets, 0.0));
    std::vector<Index> count(num_buckets, 0);
    for (std::size_t p = 0; p < num_probes; ++p) ++count[bucket_of(total - 1 - probe_token[p])];
    for (std::size_t si = 0; si < num_streams; ++si) {
        const Eigen::Map<
            const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>
            values(probe_value.data(), static_cast<Index>(num_probes), o.dim);
        for (std::size_t p = 0; p < num_probes; ++p)
            err[si][bucket_of(total - 1 - probe_token[p])] += mean_error(
                streams[si].memory, {streams[si].position[p]}, values.row(static_cast<Index>(p)));
    }
    std::printf("\n  (c1) ordinary tokens, read from the final memory\n");
    std::printf("  %-18s %7s", "age (tokens)", "tokens");
    for (const Stream& s : streams) std::printf(" %11s", ifr::to_string(s.sampling).c_str());
    std::printf("\n");
    for (std::size_t b = 0; b < num_buckets; ++b) {
        if (count[b] == 0) continue;
        const std::string name = b == 0              ? "< " + kilo(edges[0])
                                 : b == edges.size() ? ">= " + kilo(edges.back())
                                                     : kilo(edges[b - 1]) + " - " + kilo(edges[b]);
        std::printf("  %-18s %7lld", name.c_str(), static_cast<long long>(count[b]));
        for (std::size_t si = 0; si < num_streams; ++si)
            std::printf(" %11.3f", err[si][b] / static_cast<double>(count[b]));
        std::printf("\n");
    }

    // (c2) Events, checked during the stream.
    std::printf(
        "\n  (c2) event tokens, k chunks after they arrived (looked up by the queries for "
        "%lld chunks),\n       mean over all events of the stream\n",
        static_cast<long long>(kAttendedEvents * kEventEvery));
    std::printf("  %-18s %7s", "age (chunks)", "events");
    for (const Stream& s : streams) std::printf(" %11s", ifr::to_string(s.sampling).c_str());
    std::printf("\n");
    for (std::size_t k = 0; k < kCheckpoints.size(); ++k) {
        if (event_count[k] == 0) continue;
        const std::string name =
            std::to_string(kCheckpoints[k]) + " (" + kilo(kCheckpoints[k] * L) + " tokens)";
        std::printf("  %-18s %7lld", name.c_str(), static_cast<long long>(event_count[k]));
        for (std::size_t si = 0; si < num_streams; ++si)
            std::printf(" %11.3f", event_err[si][k] / static_cast<double>(event_count[k]));
        std::printf("\n");
    }

    if (!o.figure_data.empty()) {
        // Each age bucket of (c1) at the geometric middle of its edges (the first from 256,
        // the last to 4 x its lower edge); the events at k chunks.
        std::FILE* out = std::fopen(o.figure_data.c_str(), "w");
        if (out == nullptr) throw std::runtime_error("cannot write " + o.figure_data);
        std::fprintf(out, "# kind age_tokens");
        for (const Stream& s : streams)
            std::fprintf(out, " %s", ifr::to_string(s.sampling).c_str());
        std::fprintf(out, "\n");
        for (std::size_t b = 0; b < num_buckets; ++b) {
            if (count[b] == 0) continue;
            const double lo = b == 0 ? 256.0 : static_cast<double>(edges[b - 1]);
            const double hi = b == edges.size() ? 4.0 * lo : static_cast<double>(edges[b]);
            std::fprintf(out, "ordinary %.0f", std::sqrt(lo * hi));
            for (std::size_t si = 0; si < num_streams; ++si)
                std::fprintf(out, " %.4f", err[si][b] / static_cast<double>(count[b]));
            std::fprintf(out, "\n");
        }
        for (std::size_t k = 0; k < kCheckpoints.size(); ++k) {
            if (event_count[k] == 0) continue;
            std::fprintf(out, "event %lld", static_cast<long long>(kCheckpoints[k] * L));
            for (std::size_t si = 0; si < num_streams; ++si)
                std::fprintf(out, " %.4f", event_err[si][k] / static_cast<double>(event_count[k]));
            std::fprintf(out, "\n");
        }
        std::fclose(out);
    }

    const double seconds = std::chrono::duration<double>(Clock::now() - wall_start).count();
    std::printf(
        "\nsummary: %lld tokens in %.1f s; B stayed %lld x %lld floats (%lld bytes);\n"
        "         update() time late/early:",
        static_cast<long long>(total), seconds, at_end.rows, at_end.cols, at_end.bytes);
    for (std::size_t si = 0; si < num_streams; ++si)
        std::printf(" %s %.2f%s", ifr::to_string(streams[si].sampling).c_str(), ratios[si],
                    si + 1 < num_streams ? "," : "\n");
    return same_size ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    Options o;
    try {
        if (!parse(argc, argv, o)) {
            print_help();
            return 0;
        }
        return run(o);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "infinite_stream: %s\n(run with --help for the options)\n", e.what());
        return 2;
    }
}
