#include <Eigen/Core>
#include <infinityformer/infinityformer.hpp>
#include <iostream>

int main() {
    // A product large enough for Eigen's GEMM kernel (OpenBLAS's sgemm when the consumer
    // links infinityformer::openblas): 64 terms of 0.25 each, exactly 16.
    const Eigen::MatrixXf a = Eigen::MatrixXf::Constant(64, 64, 0.5f);
    const Eigen::MatrixXf b = a * a;
    if (b(0, 0) != 16.0f) return 1;
    std::cout << infinityformer::version_string() << '\n';
    return 0;
}
