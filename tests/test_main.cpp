// The one test executable (each LibTorch process costs ~0.6 s to start, so tests share it).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <torch/torch.h>

int main(int argc, char** argv) {
    // Parity tests hold fp32 tolerances that do not depend on the thread count; 2 threads match the CI
    // machine.
    torch::set_num_threads(2);
    doctest::Context context(argc, argv);
    return context.run();
}
