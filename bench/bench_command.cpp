// `memoreel bench dit|vae`: median time of one DiT forward / one VAE decode for one section at a
// configuration and resolution, with achieved GFLOP/s against this machine's measured matmul peak.
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <cstdio>

#include "bench/bench_flops.h"
#include "bench/bench_util.h"
#include "cli/commands.h"
#include "model/config.h"
#include "model/wan_dit.h"
#include "model/wan_vae.h"

namespace memoreel {

namespace {

struct BenchArgs {
    std::string model = "configs/models/memoreel-tiny.json";
    int64_t width = 0;
    int64_t height = 0;
    int64_t latent_frames = 4;  // one section: 4 latent frames = 16 pixel frames (1 s at 16 fps)
    int repeats = 5;
    std::string dtype = "fp32";
    bool first_section = false;
};

torch::Dtype parse_dtype(const std::string& name) {
    if (name == "fp32")
        return torch::kFloat32;
    if (name == "bf16")
        return torch::kBFloat16;
    throw std::invalid_argument("--dtype must be fp32 or bf16, not '" + name + "'");
}

// What both benchmarks set up: the config, the dtype, the section's latent size, and the machine's peak.
struct BenchSetup {
    ModelConfig config;
    torch::Dtype dtype;
    int64_t width, height;  // pixels
    int64_t h, w;           // latent
    double peak;            // GFLOP/s of a 1024^3 matmul in dtype
};

BenchSetup setup(const BenchArgs& a) {
    BenchSetup s{ModelConfig::load(a.model), parse_dtype(a.dtype), 0, 0, 0, 0, 0};
    s.width = a.width ? a.width : s.config.width;
    s.height = a.height ? a.height : s.config.height;
    const int64_t sf = s.config.vae.spatial_factor();
    s.h = s.height / sf;
    s.w = s.width / sf;
    s.peak = bench::matmul_peak_gflops(s.dtype);
    std::printf("model            %s (%s)\n", s.config.name.c_str(), s.config.source_path.c_str());
    std::printf("threads          %d\n", torch::get_num_threads());
    std::printf("dtype            %s\n", a.dtype.c_str());
    std::printf("matmul peak      %.1f GFLOP/s (1024^3 %s, best of 5)\n", s.peak, a.dtype.c_str());
    torch::manual_seed(0);
    return s;
}

void print_result(const char* what, const bench::Timing& t, double flops, double peak) {
    const double gflops = flops / (t.median_ms * 1e-3) / 1e9;
    std::printf(
        "%-16s median %.1f ms (min %.1f, max %.1f, %d runs)  %.2f GFLOP  %.1f GFLOP/s  %.0f%% of peak\n",
        what, t.median_ms, t.min_ms, t.max_ms, t.repeats, flops / 1e9, gflops, 100.0 * gflops / peak);
}

void bench_dit(const BenchArgs& a) {
    const BenchSetup s = setup(a);
    const ModelConfig& c = s.config;
    const int64_t width = s.width, height = s.height, h = s.h, w = s.w;
    const double peak = s.peak;
    WanDiT dit(c.dit);
    dit->eval();
    dit->to(s.dtype);
    torch::InferenceMode guard;
    const auto x = torch::randn({c.dit.in_dim, a.latent_frames, h, w});
    const int64_t tokens = a.latent_frames * (h / c.dit.patch_size[1]) * (w / c.dit.patch_size[2]);
    const int64_t text_tokens = std::min<int64_t>(c.dit.text_len, 32);
    const auto ctx = torch::randn({text_tokens, c.dit.text_dim});
    std::printf("section          %lld latent frames at %lldx%lld px -> latent %lldx%lld, %lld tokens\n",
                static_cast<long long>(a.latent_frames), static_cast<long long>(width),
                static_cast<long long>(height), static_cast<long long>(h), static_cast<long long>(w),
                static_cast<long long>(tokens));
    const double flops1 = bench::dit_forward_flops(c.dit, tokens, c.dit.text_len);
    auto t1 = torch::full({1, tokens}, 500.0);
    print_result("forward (B=1)",
                 bench::time_it([&] { (void)dit->forward({x}, t1, {ctx}, tokens); }, a.repeats), flops1,
                 peak);
    // The sampler's step with classifier-free guidance runs the conditional and unconditional pass as one
    // batch.
    auto t2 = torch::full({2, tokens}, 500.0);
    print_result("forward (B=2,cfg)",
                 bench::time_it(
                     [&] {
                         (void)dit->forward({x, x}, t2, {ctx, ctx}, tokens);
                     },
                     a.repeats),
                 2 * flops1, peak);
}

void bench_vae(const BenchArgs& a) {
    const BenchSetup s = setup(a);
    const ModelConfig& c = s.config;
    const int64_t width = s.width, height = s.height, h = s.h, w = s.w;
    const double peak = s.peak;
    WanVAE vae(c.vae);
    vae->eval();
    vae->to(s.dtype);
    torch::InferenceMode guard;
    // A section in the middle of a stream: the decoder caches hold the previous section, the section's latent
    // frames each decode to 4 frames. (--first-section measures the stream's first section instead.)
    const auto warm = torch::randn({1, c.vae.z_dim, 1, h, w});
    const auto z = torch::randn({1, c.vae.z_dim, a.latent_frames, h, w});
    const int64_t frames = a.first_section ? 1 + 4 * (a.latent_frames - 1) : 4 * a.latent_frames;
    std::printf("section          %lld latent frames -> %lld frames at %lldx%lld px\n",
                static_cast<long long>(a.latent_frames), static_cast<long long>(frames),
                static_cast<long long>(width), static_cast<long long>(height));
    const double flops = bench::vae_decode_flops(c.vae, a.latent_frames, h, w, a.first_section);
    auto timing = bench::time_it(
        [&] {
            VaeDecoderState state;
            if (!a.first_section)
                (void)vae->decode_chunk(state, warm);
            (void)vae->decode_chunk(state, z);
        },
        a.repeats);
    print_result("decode", timing, flops, peak);
    std::printf("per frame        %.1f ms\n", timing.median_ms / static_cast<double>(frames));
}

}  // namespace

void add_bench_command(CLI::App& app) {
    auto args = std::make_shared<BenchArgs>();
    CLI::App* cmd = app.add_subcommand(
        "bench", "Benchmarks: the networks at one section, the memory, the server under load");
    cmd->require_subcommand(1);
    auto add_common = [&](CLI::App* sub) {
        sub->add_option("--model", args->model, "Model config")->capture_default_str();
        sub->add_option("--width", args->width, "Width in pixels (default from the config)");
        sub->add_option("--height", args->height, "Height in pixels (default from the config)");
        sub->add_option("--latent-frames", args->latent_frames, "Latent frames in the section")
            ->capture_default_str()
            ->check(CLI::Range(1, 1024));
        sub->add_option("--repeats", args->repeats, "Timed runs (median reported)")
            ->capture_default_str()
            ->check(CLI::Range(1, 1000));
        sub->add_option("--dtype", args->dtype, "fp32 or bf16")
            ->capture_default_str()
            ->check(CLI::IsMember({"fp32", "bf16"}));
    };
    CLI::App* dit = cmd->add_subcommand("dit", "Median time per DiT forward of one section");
    add_common(dit);
    dit->callback([args] { bench_dit(*args); });
    CLI::App* vae = cmd->add_subcommand("vae", "Median time per VAE decode of one section");
    add_common(vae);
    vae->add_flag("--first-section", args->first_section, "Decode the stream's first section (no cache)");
    vae->callback([args] { bench_vae(*args); });
    add_bench_memory_command(*cmd);
    add_bench_serve_command(*cmd);
}

}  // namespace memoreel
