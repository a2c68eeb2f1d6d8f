// The explicit instantiations that tests/extern_templates.hpp declares, for double.
#define INFINITYFORMER_TEST_INSTANTIATE
#include "extern_templates.hpp"

INFINITYFORMER_TEST_CLASSES(template, double)
