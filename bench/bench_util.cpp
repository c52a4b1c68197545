#include "bench/bench_util.h"

#include <algorithm>

namespace memoreel::bench {

Timing time_it(const std::function<void()>& fn, int repeats, int warmup) {
    TORCH_CHECK(repeats >= 1, "time_it needs at least one timed run");
    for (int i = 0; i < warmup; ++i)
        fn();
    std::vector<double> ms;
    for (int i = 0; i < repeats; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        fn();
        ms.push_back(
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    Timing t;
    t.repeats = repeats;
    t.median_ms = ms[ms.size() / 2];
    t.min_ms = ms.front();
    t.max_ms = ms.back();
    return t;
}

double matmul_peak_gflops(torch::Dtype dtype, int64_t n) {
    torch::NoGradGuard no_grad;
    const auto a = torch::randn({n, n}).to(dtype);
    const auto b = torch::randn({n, n}).to(dtype);
    const Timing t = time_it([&] { (void)torch::matmul(a, b); }, 5, 2);
    return 2.0 * n * n * n / (t.min_ms * 1e-3) / 1e9;
}

}  // namespace memoreel::bench
