#include <CLI/CLI.hpp>
#include <torch/torch.h>
int main(int argc, char** argv) {
    CLI::App app{"memoreel"};
    CLI11_PARSE(app, argc, argv);
    return 0;
}
