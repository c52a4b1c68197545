// `memoreel bench memory`: section latency and memory-append time against history length, for the compressed
// memory, for the uncompressed full history (what a naive system attends to) and for a sliding window alone.
//
// Per history length the benchmark builds the context a section would see (real memory tokens from the
// encoder, appended chunk by chunk through its streaming state; the full history as patch-embedded latent
// frames; the window as its last w latent frames), times one sampler step (the CFG pair as one DiT batch of
// two) with that context, and reports the section latency as steps x step + the section's VAE decode + the
// memory append. Latent and pixel values are random: costs do not depend on them.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <tuple>

#include "bench/bench_util.h"
#include "cli/commands.h"
#include "model/context_dit.h"
#include "model/memory_encoder.h"
#include "model/memory_geometry.h"
#include "model/wan_dit.h"
#include "model/wan_vae.h"

namespace memoreel {

namespace {

struct MemoryBenchArgs {
    std::string model = "configs/models/memoreel-tiny.json";
    std::string rates = "4x4x2";
    std::string variant = "proposed";
    std::vector<double> seconds{5, 30, 60, 120, 300};
    int64_t section_frames = 4;
    int64_t window = 8;
    double full_max_seconds = 10;  // the full-history baseline gets slow quickly (30 s: ~4.5 min a step here)
    int repeats = 3;
};

double rss_mb(const char* field) {
    std::ifstream in("/proc/self/status");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind(field, 0) == 0)
            return std::stod(line.substr(std::string(field).size())) / 1024.0;
    return 0;
}

void bench_memory(const MemoryBenchArgs& a) {
    const ModelConfig c = ModelConfig::load(a.model);
    MemoryEncoderConfig mc;
    mc.set_rates(parse_rates(a.rates));
    mc.variant = a.variant;
    mc.validate("bench memory");
    torch::manual_seed(0);
    WanDiT dit(c.dit);
    WanVAE vae(c.vae);
    dit->eval();
    vae->eval();
    MemoryEncoder enc(mc, dit, vae);
    enc->eval();
    torch::InferenceMode guard;

    const int64_t sf = c.vae.spatial_factor(), h = c.height / sf, w = c.width / sf;
    const int64_t steps = c.sampler.steps;
    const int64_t s = a.section_frames;
    const auto x = torch::randn({2, c.dit.in_dim, s, h, w});
    const auto text =
        dit->embed_text({torch::randn({16, c.dit.text_dim}), torch::randn({16, c.dit.text_dim})});
    const auto t = torch::full({2}, 500.0);
    auto step_ms = [&](const ContextTokens* ctx) {
        return bench::time_it([&] { (void)dit_velocity(*dit, x, t, text, ctx); }, a.repeats).median_ms;
    };
    // The section's decode does not depend on the history (fixed-size causal cache).
    VaeDecoderState dec;
    (void)vae->decode_chunk(dec, torch::randn({1, c.vae.z_dim, 1, h, w}));
    const double decode_ms = bench::time_it(
                                 [&] {
                                     VaeDecoderState d = dec;
                                     (void)vae->decode_chunk(d, torch::randn({1, c.vae.z_dim, s, h, w}));
                                 },
                                 1, 0)
                                 .median_ms;

    std::printf(
        "model %s, %lldx%lld at %lld fps, sections of %lld latent frames, %lld steps with CFG, %d threads\n",
        c.name.c_str(), static_cast<long long>(c.width), static_cast<long long>(c.height),
        static_cast<long long>(c.fps), static_cast<long long>(s), static_cast<long long>(steps),
        torch::get_num_threads());
    std::printf("memory %s %s; window %lld latent frames; VAE decode of a section %.0f ms\n\n",
                mc.rates().str().c_str(), mc.variant.c_str(), static_cast<long long>(a.window), decode_ms);
    std::printf("%9s  %-11s %9s %12s %14s %11s %9s\n", "history_s", "mode", "ctx_tok", "step_ms",
                "section_ms", "append_ms", "rss_MB");

    MemoryEncoderState state;
    int64_t latents_in = 0;
    std::vector<std::tuple<double, std::string, double>> series;
    for (double seconds : a.seconds) {
        // Grow the memory to this history length, chunk by chunk (pixels are never all held at once).
        const int64_t frames = static_cast<int64_t>(std::llround(seconds * c.fps));
        const int64_t target_latents = ((1 + (frames - 1) / 4) / s) * s;
        while (latents_in < target_latents) {
            const int64_t n = std::min<int64_t>(4 * s, target_latents - latents_in);
            MemoryInput in;
            in.latents = torch::randn({1, c.vae.z_dim, n, h, w});
            const int64_t pix = latents_in == 0 ? 1 + 4 * (n - 1) : 4 * n;
            if (mc.has_lr())
                in.pixels = torch::rand({1, 3, pix, c.height, c.width}) * 2 - 1;
            (void)enc->encode_append(state, in);
            latents_in += n;
        }
        // One more section's append, timed on a copy of the state (the history stays as measured).
        double append_ms = 0;
        {
            MemoryEncoderState probe = state;
            MemoryInput in;
            in.latents = torch::randn({1, c.vae.z_dim, s, h, w});
            if (mc.has_lr())
                in.pixels = torch::rand({1, 3, 4 * s, c.height, c.width}) * 2 - 1;
            const auto t0 = std::chrono::steady_clock::now();
            (void)enc->encode_append(probe, in);
            append_ms =
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        }
        // Compressed memory: the tokens the encoder holds for this history, at their relative times.
        const int64_t groups = state.groups_emitted;
        const auto grid_full = enc->token_grid(groups * mc.rt, h, w);
        ContextTokens mem;
        mem.tokens = torch::randn({2, grid_full[0] * grid_full[1] * grid_full[2], c.dit.dim});
        mem.positions = memory_positions(grid_full, mc.rates(), static_cast<double>(latents_in));
        const double mem_step = step_ms(&mem);
        const double mem_section = steps * mem_step + decode_ms + append_ms;
        std::printf("%9.0f  %-11s %9lld %12.1f %14.0f %11.1f %9.0f\n", seconds, "compressed",
                    static_cast<long long>(mem.length()), mem_step, mem_section, append_ms, rss_mb("VmRSS:"));
        series.emplace_back(seconds, "compressed", mem_section);

        // Sliding window alone: constant context.
        ContextTokens win = latent_context(*dit, torch::randn({2, c.dit.in_dim, a.window, h, w}),
                                           -static_cast<double>(a.window));
        const double win_step = step_ms(&win);
        std::printf("%9.0f  %-11s %9lld %12.1f %14.0f %11s %9.0f\n", seconds, "window",
                    static_cast<long long>(win.length()), win_step, steps * win_step + decode_ms, "-",
                    rss_mb("VmRSS:"));
        series.emplace_back(seconds, "window", steps * win_step + decode_ms);

        // Uncompressed full history.
        const int64_t full_tokens = uncompressed_context({c.width, c.height, static_cast<double>(c.fps),
                                                          seconds, sf, 4, c.dit.patch_size[1]})
                                        .padded;
        if (seconds <= a.full_max_seconds) {
            ContextTokens full;
            full.tokens = torch::randn({2, full_tokens, c.dit.dim});
            full.positions = rope_grid_positions(full_tokens / ((h / 2) * (w / 2)), h / 2, w / 2,
                                                 {-static_cast<double>(latents_in), 0.0, 0.0});
            const double full_step = step_ms(&full);
            std::printf("%9.0f  %-11s %9lld %12.1f %14.0f %11s %9.0f\n", seconds, "full",
                        static_cast<long long>(full_tokens), full_step, steps * full_step + decode_ms, "-",
                        rss_mb("VmRSS:"));
            series.emplace_back(seconds, "full", steps * full_step + decode_ms);
        } else {
            std::printf("%9.0f  %-11s %9lld %12s %14s %11s %9s\n", seconds, "full",
                        static_cast<long long>(full_tokens), "skipped", "(--full-max-seconds)", "-", "-");
        }
        std::fflush(stdout);
    }
    std::printf("\npeak RSS %.0f MB\n", rss_mb("VmHWM:"));
    // The figure the issue asks for: compressed-memory section latency at 60 s against 5 s.
    double at5 = 0, at60 = 0;
    for (const auto& [sec, mode, ms] : series) {
        if (mode != "compressed")
            continue;
        if (sec == 5)
            at5 = ms;
        if (sec == 60)
            at60 = ms;
    }
    if (at5 > 0 && at60 > 0)
        std::printf("compressed memory: section latency at 60 s is %.0f%% of that at 5 s\n",
                    100.0 * at60 / at5);
}

}  // namespace

void add_bench_memory_command(CLI::App& bench) {
    auto args = std::make_shared<MemoryBenchArgs>();
    CLI::App* cmd =
        bench.add_subcommand("memory", "Section latency and memory appends against history length");
    cmd->add_option("--model", args->model, "Model config")->capture_default_str();
    cmd->add_option("--rates", args->rates, "Memory rates rh x rw x rt")->capture_default_str();
    cmd->add_option("--variant", args->variant, "Memory encoder variant")
        ->capture_default_str()
        ->check(CLI::IsMember({"proposed", "only_lr", "without_lr", "large_patchifier"}));
    cmd->add_option("--seconds", args->seconds, "History lengths in seconds (comma-separated)")
        ->capture_default_str()
        ->delimiter(',');
    cmd->add_option("--section-frames", args->section_frames, "Latent frames per section")
        ->capture_default_str()
        ->check(CLI::Range(int64_t(1), int64_t(64)));
    cmd->add_option("--window", args->window, "Sliding-window latent frames")
        ->capture_default_str()
        ->check(CLI::Range(int64_t(1), int64_t(256)));
    cmd->add_option("--full-max-seconds", args->full_max_seconds, "Longest history run for the full baseline")
        ->capture_default_str();
    cmd->add_option("--repeats", args->repeats, "Timed steps per point (median)")
        ->capture_default_str()
        ->check(CLI::Range(1, 100));
    cmd->callback([args] { bench_memory(*args); });
}

}  // namespace memoreel
