// Benchmark helpers: median timing and the machine's measured matmul peak.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <functional>
#include <vector>

namespace memoreel::bench {

struct Timing {
    double median_ms = 0;
    double min_ms = 0;
    double max_ms = 0;
    int repeats = 0;
};

// Runs fn `warmup` times untimed, then `repeats` times, and reports the median.
Timing time_it(const std::function<void()>& fn, int repeats, int warmup = 1);

// Measured peak of a large square matmul (n x n x n) in the given dtype, GFLOP/s.
double matmul_peak_gflops(torch::Dtype dtype, int64_t n = 1024);

}  // namespace memoreel::bench
