// The sorting showcase's own parts (examples/sorting/): the task's targets and text format,
// and the whole model's gradients against central finite differences in double (its parts,
// the library's blocks.hpp, have their own in tests/test_blocks.cpp).
#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <functional>
#include <random>

#include "../examples/sorting/sorting_data.hpp"
#include "../examples/sorting/sorting_model_full.hpp"

namespace {

using sorting::Mat;
using M = Mat<double>;

// Largest |analytic − numeric| / max(1, |numeric|) over the entries of `x` (every entry, or
// with `stride` k every k-th, starting at `stride` / 2 so that neither end is the only one
// seen), for the scalar loss f (central differences, step h).
double fd_error(M& x, const M& analytic, const std::function<double()>& f, double h = 1e-6,
                Eigen::Index stride = 1) {
    double worst = 0;
    for (Eigen::Index i = std::min(stride / 2, x.size() - 1); i < x.size(); i += stride) {
        const double keep = x(i);
        x(i) = keep + h;
        const double up = f();
        x(i) = keep - h;
        const double down = f();
        x(i) = keep;
        const double numeric = (up - down) / (2 * h);
        worst = std::max(worst, std::abs(analytic(i) - numeric) / std::max(1.0, std::abs(numeric)));
    }
    return worst;
}

}  // namespace

TEST_CASE("sorting: targets sort by count, ties by first appearance, absent symbols last",
          "[sorting]") {
    // counts: 3 → 3, 7 → 2, 5 → 2 (5 first seen after 7), 0 → 1; the others absent.
    const std::vector<int> stream = {7, 3, 5, 3, 0, 7, 5, 3};
    const auto t = sorting::sorted_by_count(stream);
    const std::array<int, 20> expected = {3,  7,  5,  0,  1,  2,  4,  6,  8,  9,
                                          10, 11, 12, 13, 14, 15, 16, 17, 18, 19};
    CHECK(t == expected);
}

TEST_CASE("sorting: the text format reads the authors' lines and refuses others", "[sorting]") {
    std::mt19937_64 rng(3);
    const auto a = sorting::generate(50, rng), b = sorting::generate(7, rng);
    const std::string path = "infinityformer_sorting_format.txt";
    {
        std::ofstream out(path);
        sorting::write(out, a);
        // the authors' own layout: every token followed by a space
        for (int x : b.stream) out << x << ' ';
        out << 20 << ' ';
        for (int x : b.target) out << x << ' ';
        out << '\n';
    }
    const auto read = sorting::read_file(path);
    REQUIRE(read.size() == 2);
    CHECK(read[0].stream == a.stream);
    CHECK(read[0].target == a.target);
    CHECK(read[1].stream == b.stream);
    CHECK(read[1].target == sorting::sorted_by_count(b.stream));
    {
        std::ofstream out(path);
        out << "1 2 3 20 0 1\n";
    }
    CHECK_THROWS_WITH(sorting::read_file(path), Catch::Contains(":1: expected"));
    {
        std::ofstream out(path);
        out << "1 x 3\n";
    }
    CHECK_THROWS_WITH(sorting::read_file(path), Catch::Contains("token 'x'"));
    std::remove(path.c_str());
}

TEST_CASE("sorting: a generated sequence has symbols 0 to 19 and its sorted targets", "[sorting]") {
    std::mt19937_64 rng(5);
    const auto s = sorting::generate(1000, rng);
    CHECK(s.stream.size() == 1000);
    for (int x : s.stream) REQUIRE((x >= 0 && x < 20));
    CHECK(s.target == sorting::sorted_by_count(s.stream));
}

// The whole model on a sequence that fits in one chunk (nothing earlier that truncated
// back-propagation would hold constant): its gradients equal finite differences of its
// loss, for the window attention and the layer.
TEST_CASE("sorting: the model's gradients equal finite differences on one chunk", "[sorting][fd]") {
    for (auto kind : {sorting::Kind::window, sorting::Kind::infinity}) {
        INFO(sorting::to_string(kind));
        sorting::Config c;
        c.kind = kind;
        c.d = 8;
        c.heads = 2;
        c.layers = 2;
        c.ff = 12;
        c.chunk = 32;
        c.num_basis = 32;
        c.num_samples = 32;
        c.kl_m = 0;  // the loss is the cross-entropy alone
        sorting::Model<double> model(c);
        std::mt19937_64 rng(2);
        const auto seq = sorting::generate(9, rng);  // 9 + 20 tokens: one chunk
        int correct = 0;
        model.zero_grad();
        model.run(seq, true, correct);
        for (auto& p : model.parameters()) {
            INFO(p.name);
            M value = p.values();
            const M grad = p.gradient();
            auto loss = [&] {
                p.values() = value;
                int k = 0;
                return model.run(seq, false, k);
            };
            // every tensor, about 16 entries of each (the whole model costs 40 s under
            // the sanitizers with every entry; the parts' own tests above check every entry)
            const Eigen::Index stride = std::max<Eigen::Index>(1, value.size() / 16);
            CHECK(fd_error(value, grad, loss, 1e-6, stride) < 1e-6);
            p.values() = value;
        }
    }
}

// The window model skips the chunks its last chunk cannot see: its loss, accuracy and
// every gradient are those of the run over all chunks, bit for bit; and the skip is as
// short as it can be: a symbol in the first chunk kept changes the loss, while one in the
// chunk before it does not, even in the run over all chunks.
TEST_CASE("sorting: the window model's skipped chunks change nothing", "[sorting]") {
    sorting::Config c;
    c.kind = sorting::Kind::window;
    c.d = 8;
    c.heads = 2;
    c.ff = 12;
    c.chunk = 24;
    std::mt19937_64 rng(4);
    const auto seq = sorting::generate(150, rng);  // 170 tokens: 8 chunks, 22 of padding
    const sorting::Index chunks = 8, pad = 22;
    for (sorting::Index layers : {1, 2, 3}) {
        INFO("layers " << layers);
        auto run = [&](bool skip, const sorting::Sequence& s, std::vector<M>* grads) {
            sorting::Config k = c;
            k.layers = layers;
            k.skip_unseen = skip;
            sorting::Model<double> model(k);
            int correct = 0;
            model.zero_grad();
            const double loss = model.run(s, true, correct);
            if (grads)
                for (auto& p : model.parameters()) grads->push_back(p.gradient());
            return std::make_pair(loss, correct);
        };
        std::vector<M> g0, g1;
        const auto r0 = run(false, seq, &g0);
        const auto r1 = run(true, seq, &g1);
        CHECK(r0.first == r1.first);
        CHECK(r0.second == r1.second);
        REQUIRE(g0.size() == g1.size());
        for (std::size_t k = 0; k < g0.size(); ++k) CHECK(g0[k] == g1[k]);
        CHECK(g0.back().cwiseAbs().maxCoeff() > 0);
        // the first symbol of the first chunk kept, and the last one before it
        const auto j = static_cast<std::size_t>((chunks - 1 - layers) * c.chunk - pad);
        sorting::Sequence seen = seq, unseen = seq;
        seen.stream[j] = (seen.stream[j] + 1) % 20;
        unseen.stream[j - 1] = (unseen.stream[j - 1] + 1) % 20;
        CHECK(run(true, seen, nullptr).first != r0.first);
        CHECK(run(false, unseen, nullptr).first == r0.first);
    }
    sorting::Config small = c;
    small.chunk = 19;
    CHECK_THROWS_WITH(sorting::Model<double>(small),
                      Catch::Contains("chunk is 19, expected at least 20"));
}
