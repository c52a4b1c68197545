// memoreel: one executable, subcommands over the shared libraries (model/, stream/; later server/,
// training/).
#include <spdlog/spdlog.h>
#include <torch/torch.h>
#include <CLI/CLI.hpp>

#include <malloc.h>

#include <cstdio>
#include <sstream>
#include <thread>

#include "cli/commands.h"
#include "model/safetensors.h"

namespace {

// glibc serves allocations above its (dynamic) mmap threshold with fresh mmap pages and gives freed heap tops
// back to the OS; a DiT step allocates and frees tens of MB of activations many times, so every step paid for
// page faults on memory it had just released (measured: a third of a CFG step of the tiny model, and most of
// the system time). Keeping blocks up to glibc's maximum threshold (32 MB) on the heap and not trimming it
// makes the memory reusable; the cost is that RSS stays at its peak, which a long-running process reaches
// anyway. (The same reason PyTorch's CPU tuning guide suggests jemalloc or tcmalloc.)
void keep_freed_memory() {
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

}  // namespace

int main(int argc, char** argv) {
    keep_freed_memory();
    CLI::App app{"memoreel: autoregressive video generation with compressed memory (Wan 2.x family)"};
    app.require_subcommand(1);
    // A later occurrence of an option wins, so wrapper scripts can put defaults first.
    app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    std::string log_level = "info";
    app.add_option("--threads", threads, "CPU threads for LibTorch")
        ->capture_default_str()
        ->check(CLI::Range(1, 1024));
    app.add_option("--log-level", log_level, "trace, debug, info, warn, error")
        ->capture_default_str()
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
    app.parse_complete_callback([&] {
        spdlog::set_level(spdlog::level::from_str(log_level));
        // LibTorch defaults to 1 thread on these machines; this also sizes the pool its worker threads use.
        torch::set_num_threads(threads);
    });
    memoreel::add_generate_command(app);
    memoreel::add_bench_command(app);
    memoreel::add_data_command(app);
    memoreel::add_train_command(app);
    memoreel::add_eval_command(app);
    memoreel::add_export_command(app);
    memoreel::add_serve_command(app);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        // Through string streams, not std::cout/std::cerr: a reference to those from the executable makes the
        // linker copy them into it, and SentencePiece (dlopen'ed with RTLD_DEEPBIND, see model/tokenizer.h)
        // would then write to libstdc++'s never-constructed originals and crash.
        std::ostringstream out, err;
        const int code = app.exit(e, out, err);
        std::fputs(out.str().c_str(), stdout);
        std::fputs(err.str().c_str(), stderr);
        return code;
    } catch (const c10::Error& e) {
        // LibTorch's own checks: print the message without the C++ backtrace.
        spdlog::error("{}", e.what_without_backtrace());
        return 1;
    } catch (const memoreel::CheckpointError& e) {
        spdlog::error("{}", e.what());
        return 2;
    } catch (const std::exception& e) {
        spdlog::error("{}", e.what());
        return 1;
    }
    return 0;
}
