// Shared test helpers: where the golden vectors and the checkout are, temporary folders, tensor comparison.
#pragma once

#include <doctest/doctest.h>
#include <torch/torch.h>

#include <string>

#include "model/checkpoint.h"

namespace memoreel::test {

// The checkout root (MEMOREEL_SOURCE_DIR overrides the build-time default).
std::string source_dir();
// ../shared/golden/wan beside the checkout (MEMOREEL_GOLDEN_DIR overrides).
std::string golden_dir();
std::string golden_file(const std::string& name);
// The memoreel executable built beside the test executable.
std::string memoreel_binary();

// A fresh temporary folder, removed when the object goes out of scope.
class TempDir {
  public:
    TempDir();
    ~TempDir();
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::string& path() const { return path_; }
    std::string file(const std::string& name) const { return path_ + "/" + name; }

  private:
    std::string path_;
};

// Runs a shell command, stdout and stderr together.
struct CommandResult {
    int status = 0;  // as pclose returns it (0 on success)
    std::string output;
};
CommandResult run_command(const std::string& cmd);

// Largest absolute difference (after broadcasting-free shape check).
double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b);

}  // namespace memoreel::test

// Asserts same shape and max |a-b| <= atol, printing the difference when it fails.
#define CHECK_CLOSE(a, b, atol)                                                                             \
    do {                                                                                                    \
        const auto _a = (a);                                                                                \
        const auto _b = (b);                                                                                \
        REQUIRE_MESSAGE(_a.sizes() == _b.sizes(), "shapes differ: " << _a.sizes() << " vs " << _b.sizes()); \
        const double _d = ::memoreel::test::max_abs_diff(_a, _b);                                           \
        CHECK_MESSAGE(_d <= (atol), #a " vs " #b ": max abs diff " << _d << " > " << (atol));               \
    } while (0)
