#include <infinityformer/infinityformer.hpp>
#include <iostream>

int main() {
    std::cout << infinityformer::version_string() << '\n';
    return 0;
}
