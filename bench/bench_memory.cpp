// `memoreel bench memory`: section latency and memory-append time against history length, for the compressed
// memory, for the uncompressed full history (what a naive system attends to) and for a sliding window alone.
//
// Per history length the benchmark builds the context a section would see exactly as the session does: the
// memory tokens from the encoder, appended section by section through its streaming state, each new group
// run once through the DiT (cached mode, context_kv.h); the sliding window encoded for the section; the full
// history two ways: joint (every step re-runs the history through the DiT, the naive system) and cached
// (keys/values of every uncompressed token kept, random values of the right shapes since costs do not depend
// on them). It times one sampler step (the CFG pair as one DiT batch of two) and reports the section latency
// as steps x step + the section's VAE decode + the per-section context preparation (window encoding, key
// rotation) + the memory append (encoder + DiT keys/values of the new groups). Latent and pixel values are
// random: costs do not depend on them.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <tuple>

#include "bench/bench_util.h"
#include "cli/commands.h"
#include "model/context_kv.h"
#include "model/memory_encoder.h"
#include "model/memory_geometry.h"
#include "model/memory_objectives.h"
#include "model/process_memory.h"
#include "model/wan_dit.h"
#include "model/wan_vae.h"

namespace memoreel {

namespace {

struct MemoryBenchArgs {
    std::string model = "configs/models/memoreel-tiny.json";
    std::string rates;  // empty: the model config's memory rates
    std::string variant = "proposed";
    std::vector<double> seconds{5, 30, 60, 120, 300};
    int64_t section_frames = 4;
    int64_t window = 8;
    double full_max_seconds = 10;  // joint full history gets slow quickly (30 s: ~4.5 min a step here)
    double full_cached_max_seconds = 60;
    int repeats = 9;
};

void bench_memory(const MemoryBenchArgs& a) {
    const ModelConfig c = ModelConfig::load(a.model);
    MemoryEncoderConfig mc;
    mc.set_rates(parse_rates(a.rates.empty() ? c.memory_rates : a.rates));
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
    auto step_ms = [&](const ContextAttention& ctx) {
        return bench::time_it([&] { (void)dit_velocity(*dit, x, t, text, ctx); }, a.repeats).median_ms;
    };
    auto joint_step_ms = [&](const ContextTokens* ctx) {
        return bench::time_it([&] { (void)dit_velocity(*dit, x, t, text, ctx); }, a.repeats).median_ms;
    };
    auto ms_since = [](std::chrono::steady_clock::time_point t0) {
        return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
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
    const auto text1 = text.slice(0, 0, 1);
    const ContextText text_at = [&](double) { return text1; };

    std::printf(
        "model %s, %lldx%lld at %lld fps, sections of %lld latent frames, %lld steps with CFG, %d threads\n",
        c.name.c_str(), static_cast<long long>(c.width), static_cast<long long>(c.height),
        static_cast<long long>(c.fps), static_cast<long long>(s), static_cast<long long>(steps),
        torch::get_num_threads());
    std::printf("memory %s %s; window %lld latent frames; VAE decode of a section %.0f ms\n",
                mc.rates().str().c_str(), mc.variant.c_str(), static_cast<long long>(a.window), decode_ms);
    std::printf(
        "section_ms = steps x step_ms + decode + prep_ms (window encoding, key rotation) + append_ms\n\n");
    std::printf("%9s  %-12s %9s %10s %10s %12s %11s %9s\n", "history_s", "mode", "ctx_tok", "step_ms",
                "prep_ms", "section_ms", "append_ms", "rss_MB");
    auto row = [&](double seconds, const char* mode, int64_t tokens, double step, double prep,
                   double append) {
        const double section = steps * step + decode_ms + prep + append;
        std::printf("%9.0f  %-12s %9lld %10.1f %10.1f %12.0f %11.1f %9.0f\n", seconds, mode,
                    static_cast<long long>(tokens), step, prep, section, append, resident_mb());
        std::fflush(stdout);
        return section;
    };

    // The memory tokens of new groups as DiT context at absolute times, available at their group's end.
    auto memory_part = [&](const MemoryTokens& m) { return memory_context(m, mc.rates(), 0.0); };
    auto section_input = [&](int64_t n, int64_t first_latent) {
        MemoryInput in;
        in.latents = torch::randn({1, c.vae.z_dim, n, h, w});
        const int64_t pix = first_latent == 0 ? 1 + 4 * (n - 1) : 4 * n;
        if (mc.has_lr())
            in.pixels = torch::rand({1, 3, pix, c.height, c.width}) * 2 - 1;
        return in;
    };

    struct Pending {
        double seconds;
        std::string mode;
        ContextAttention context;
        double prep, append;
    };
    std::vector<Pending> pending;
    MemoryEncoderState state;
    ContextKV memory;
    int64_t latents_in = 0;
    std::vector<std::tuple<double, std::string, double>> series;
    for (double seconds : a.seconds) {
        // Grow the memory to this history length, section by section (pixels are never all held at once).
        const int64_t frames = static_cast<int64_t>(std::llround(seconds * c.fps));
        const int64_t target_latents = ((1 + (frames - 1) / 4) / s) * s;
        while (latents_in < target_latents) {
            const MemoryTokens fresh = enc->encode_append(state, section_input(s, latents_in));
            memory.append(encode_context(*dit, memory, memory_part(fresh), text_at));
            latents_in += s;
        }
        const double now = static_cast<double>(latents_in);
        // The next sections' appends, timed on copies (the history stays as measured): as many sections as it
        // takes to complete a whole number of groups, averaged, since a section may complete none.
        double append_ms = 0;
        {
            const int64_t period = mc.rt / std::gcd(mc.rt, s);
            MemoryEncoderState probe = state;
            ContextKV probe_kv = memory;
            const auto t0 = std::chrono::steady_clock::now();
            for (int64_t i = 0; i < period; ++i) {
                const MemoryTokens fresh = enc->encode_append(probe, section_input(s, latents_in + i * s));
                probe_kv.append(encode_context(*dit, probe_kv, memory_part(fresh), text_at));
            }
            append_ms = ms_since(t0) / static_cast<double>(period);
        }
        const auto window_latents = torch::randn({1, c.dit.in_dim, a.window, h, w});
        const double window_offset = now - static_cast<double>(a.window);

        // Compressed memory alone, as the session sees it: the cached memory plus, when this section starts
        // inside a group, that group's provisional tokens encoded for the section.
        auto t0 = std::chrono::steady_clock::now();
        ContextTokens partial = memory_part(enc->encode_partial(state));
        if (partial.length() > 0)
            partial.available = torch::full({partial.length()}, now, torch::kFloat64);
        ContextKV with_partial = memory;
        with_partial.append(encode_context(*dit, memory, partial, text_at));
        ContextAttention mem = attend_context(*dit, with_partial, now);
        double prep = ms_since(t0);
        pending.push_back({seconds, "compressed", std::move(mem), prep, append_ms});

        // Memory and window, as `generate --window` runs the session.
        t0 = std::chrono::steady_clock::now();
        {
            ContextKV all = memory;
            all.append(
                encode_context(*dit, memory, latent_context(*dit, window_latents, window_offset), text_at));
            mem = attend_context(*dit, all, now);
        }
        prep = ms_since(t0);
        pending.push_back({seconds, "mem+window", std::move(mem), prep, append_ms});

        // Sliding window alone: constant context.
        t0 = std::chrono::steady_clock::now();
        ContextAttention win = attend_context(
            *dit, encode_context(*dit, {}, latent_context(*dit, window_latents, window_offset), text_at),
            now);
        prep = ms_since(t0);
        pending.push_back({seconds, "window", std::move(win), prep, 0.0});
    }
    // Steps timed in interleaved rounds (one step of every context per round, medians over rounds), so that
    // the machine's drift over the minutes this takes falls on every row alike rather than on some lengths.
    {
        std::vector<std::vector<double>> times(pending.size());
        for (const auto& p : pending)
            (void)dit_velocity(*dit, x, t, text, p.context);  // warm-up
        for (int r = 0; r < a.repeats; ++r)
            for (size_t i = 0; i < pending.size(); ++i) {
                const auto t0 = std::chrono::steady_clock::now();
                (void)dit_velocity(*dit, x, t, text, pending[i].context);
                times[i].push_back(ms_since(t0));
            }
        for (size_t i = 0; i < pending.size(); ++i) {
            auto& v = times[i];
            std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
            const auto& p = pending[i];
            series.emplace_back(
                p.seconds, p.mode,
                row(p.seconds, p.mode.c_str(), p.context.length(), v[v.size() / 2], p.prep, p.append));
        }
        pending.clear();
    }
    // The uncompressed baselines last, so that their large buffers do not disturb the series above.
    for (double seconds : a.seconds) {
        const int64_t frames = static_cast<int64_t>(std::llround(seconds * c.fps));
        const int64_t latents_at = ((1 + (frames - 1) / 4) / s) * s;
        std::chrono::steady_clock::time_point t0;
        double prep = 0;
        // Uncompressed full history.
        const int64_t full_tokens = uncompressed_context({c.width, c.height, static_cast<double>(c.fps),
                                                          seconds, sf, 4, c.dit.patch_size[1]})
                                        .padded;
        const auto full_positions = rope_grid_positions(full_tokens / ((h / 2) * (w / 2)), h / 2, w / 2,
                                                        {-static_cast<double>(latents_at), 0.0, 0.0});
        if (seconds <= a.full_max_seconds) {
            ContextTokens full;
            full.tokens = torch::randn({2, full_tokens, c.dit.dim});
            full.positions = full_positions;
            series.emplace_back(seconds, "full-joint",
                                row(seconds, "full-joint", full_tokens, joint_step_ms(&full), 0.0, 0.0));
        } else {
            std::printf("%9.0f  %-12s %9lld %10s (--full-max-seconds)\n", seconds, "full-joint",
                        static_cast<long long>(full_tokens), "skipped");
        }
        if (seconds <= a.full_cached_max_seconds) {
            // Every uncompressed token's keys/values kept (what caching alone buys without compression).
            ContextKV full;
            full.positions = full_positions;
            const int64_t heads = c.dit.num_heads, hd = c.dit.head_dim();
            for (int64_t l = 0; l < c.dit.num_layers; ++l)
                full.layers.push_back(
                    {torch::randn({1, full_tokens, heads, hd}), torch::randn({1, full_tokens, heads, hd})});
            t0 = std::chrono::steady_clock::now();
            ContextAttention fc = attend_context(*dit, full, 0.0);
            prep = ms_since(t0);
            series.emplace_back(seconds, "full-cached",
                                row(seconds, "full-cached", full_tokens, step_ms(fc), prep, 0.0));
        } else {
            std::printf("%9.0f  %-12s %9lld %10s (--full-cached-max-seconds)\n", seconds, "full-cached",
                        static_cast<long long>(full_tokens), "skipped");
        }
    }
    std::printf("\nmemory keys/values held at the end: %.1f MB for %lld tokens\n", memory.bytes() / 1048576.0,
                static_cast<long long>(memory.length()));
    std::printf("\npeak RSS %.0f MB\n", peak_resident_mb());
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
        std::printf("compressed memory: section latency at 60 s is %.1f%% of that at 5 s\n",
                    100.0 * at60 / at5);
}

}  // namespace

void add_bench_memory_command(CLI::App& bench) {
    auto args = std::make_shared<MemoryBenchArgs>();
    CLI::App* cmd =
        bench.add_subcommand("memory", "Section latency and memory appends against history length");
    cmd->add_option("--model", args->model, "Model config")->capture_default_str();
    cmd->add_option("--rates", args->rates, "Memory rates rh x rw x rt (default: the model config's)");
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
    cmd->add_option("--full-cached-max-seconds", args->full_cached_max_seconds,
                    "Longest history run for the cached full baseline")
        ->capture_default_str();
    cmd->add_option("--repeats", args->repeats,
                    "Timed rounds (one step per point each, interleaved; medians)")
        ->capture_default_str()
        ->check(CLI::Range(1, 100));
    cmd->callback([args] { bench_memory(*args); });
}

}  // namespace memoreel
