// Details a first day meets, each checked: a float layer's weights are saved as F32; a
// row-major chunk runs without a copy when its output is row-major too; the memory is read
// on [0, 1] only; restoring into a stream the layer does not have names the call you made.
// Prints one line per check and returns the number that failed.
#include <infinityformer/infinityformer.hpp>
#include <infinityformer/io/safetensors.hpp>
#include <infinityformer/io/state.hpp>
#include <infinityformer/io/weights.hpp>
#include <iostream>
#include <sstream>
#include <string>

namespace ifr = infinityformer;
namespace io = infinityformer::io;
using Layer = ifr::InfinityFormerLayerf;

int failures = 0;
void check(bool ok, const std::string& what) {
    std::cout << (ok ? "ok      " : "FAILED  ") << what << "\n";
    failures += ok ? 0 : 1;
}

int main() {
    auto params = ifr::LongTermParams::lm();
    params.num_basis = 128;
    params.num_samples = 128;
    const Eigen::Index d = 32, heads = 4, L = 64;
    Layer layer(d, heads, L, params), twin(d, heads, L, params);

    // 1. The weights of a float layer are written as F32 unless another dtype is asked for.
    io::SafetensorsWriter weights;
    io::save_weights(layer, weights);
    const io::Safetensors file = io::Safetensors::parse(weights.bytes());
    check(file.info("short_term.query.weight").dtype == io::DType::F32,
          "a float layer's weights are saved as F32");

    // 2. A row-major chunk with a row-major output: the stream's own workspace takes the
    //    copy (nothing allocated once the stream runs), the output is the column-major one.
    for (int c = 0; c < 3; ++c) {
        const Layer::RowMatrix x = Layer::RowMatrix::Random(L, d);
        Layer::RowMatrix y(L, d);
        layer.forward(x, y);
        const Layer::Matrix expected = twin.forward(Layer::Matrix(x));
        check(Layer::Matrix(y) == expected,
              "row-major chunk " + std::to_string(c) + " gives the column-major output");
    }

    // 3. The memory holds the signal on [0, 1]; a position outside is refused.
    Eigen::VectorXf t(2);
    t << 0.5f, 1.5f;
    try {
        layer.long_term().memory().evaluate(t);
        check(false, "evaluate(1.5) is refused");
    } catch (const ifr::invalid_argument& e) {
        check(std::string(e.what()).find("t[1] is 1.5") != std::string::npos,
              std::string("evaluate(1.5) is refused: ") + e.what());
    }

    // 4. A stream index the layer does not have: the message names io::restore_state.
    std::stringstream state;
    io::save_state(layer, state);
    try {
        io::restore_state(layer, state, /*stream=*/3);
        check(false, "restoring into stream 3 of 1 is refused");
    } catch (const std::exception& e) {
        check(std::string(e.what()).find("io::restore_state") != std::string::npos,
              std::string("restoring into stream 3 of 1 is refused: ") + e.what());
    }
    return failures;
}
