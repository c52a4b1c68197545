// `memoreel generate`: text -> latents (sampler over the DiT) -> frames (VAE) -> MP4 (FFmpeg).
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "model/process_memory.h"
#include "cli/progress_bar.h"
#include "model/ar_session.h"
#include "model/checkpoint.h"
#include "model/trained_memory.h"
#include "model/video_model.h"
#include "stream/video_file_writer.h"

namespace memoreel {

namespace {

struct GenerateArgs {
    std::string model = "models/memoreel-tiny/model.json";
    std::string weights;
    std::string prompt;
    std::string negative_prompt;
    int64_t frames = 0;
    int64_t width = 0;
    int64_t height = 0;
    int64_t fps = 0;
    uint64_t seed = 0;
    int64_t steps = 0;
    double guidance = -1;
    double shift = 0;
    std::string solver;
    std::string out = "out/sample.mp4";
    std::string device = "cpu";
    std::string dtype = "fp32";
    // Autoregressive generation with memory (--storyboard or --seconds).
    std::string storyboard;
    double seconds = 0;
    bool no_memory = false;
    std::string memory_rates;  // empty: the model config's memory rates
    std::string memory_variant = "proposed";
    std::string memory_weights;
    bool memory_cross_attention = false;
    std::string stats;    // JSONL of per-section figures
    int64_t window = -1;  // -1: the model config's memory window
    int64_t section_frames = 4;
    double horizon = 0;
};

std::vector<std::string> split_commas(const std::string& text) {
    std::vector<std::string> out;
    size_t start = 0;
    while (!text.empty() && start <= text.size()) {
        const size_t end = text.find(',', start);
        const std::string part =
            text.substr(start, end == std::string::npos ? std::string::npos : end - start);
        if (!part.empty())
            out.push_back(part);
        if (end == std::string::npos)
            break;
        start = end + 1;
    }
    return out;
}

SamplingOverrides sampling_overrides(const GenerateArgs& a) {
    SamplingOverrides o;
    if (a.steps)
        o.steps = a.steps;
    if (a.guidance >= 0)
        o.guidance = a.guidance;
    if (a.shift > 0)
        o.shift = a.shift;
    if (!a.solver.empty())
        o.solver = a.solver;
    return o;
}

// Opens the output file before any model loads, so a bad path fails at once.
std::unique_ptr<VideoFileWriter> open_output(const std::string& path,
                                             int64_t width,
                                             int64_t height,
                                             int64_t fps) {
    const auto parent = std::filesystem::path(path).parent_path();
    if (!parent.empty())
        std::filesystem::create_directories(parent);
    VideoFileOptions opts;
    opts.width = static_cast<int>(width);
    opts.height = static_cast<int>(height);
    opts.fps = static_cast<int>(fps);
    return std::make_unique<VideoFileWriter>(path, opts);
}

// Frames [3, T, H, W] in [-1, 1] appended to the file.
void write_frames(VideoFileWriter& writer, const torch::Tensor& frames) {
    const torch::Tensor rgb = video_to_rgb24(frames);  // [T, H, W, 3] uint8
    for (int64_t t = 0; t < rgb.size(0); ++t)
        writer.write_rgb(rgb[t].contiguous().data_ptr<uint8_t>());
}

// Section by section through the autoregressive session; frames go to the file as each section is decoded, so
// memory use does not grow with the video's length.
void run_storyboard(const GenerateArgs& a) {
    const ModelConfig config = ModelConfig::load(a.model);
    Storyboard story = a.storyboard.empty() ? Storyboard({{0.0, a.prompt}}) : Storyboard::load(a.storyboard);
    if (story.empty())
        throw std::invalid_argument(a.storyboard + ": the storyboard has no prompts");
    SessionSettings st;
    st.use_memory = !a.no_memory;
    // Several encoders at once: "4x4x2,2x2x8" (their tokens are concatenated); weights likewise
    // comma-separated.
    const std::vector<std::string> rates =
        split_commas(a.memory_rates.empty() ? config.memory_rates : a.memory_rates);
    std::vector<std::string> weights = split_commas(a.memory_weights);
    // The model's own trained memory (model.json "memory": encoder settings, weights, the DiT's LoRA) unless
    // the command line names other rates or weights.
    const TrainedMemory trained = trained_memory(config, a.weights);
    const bool use_trained = !a.no_memory && weights.empty() && trained.present() &&
                             (a.memory_rates.empty() || a.memory_rates == config.memory_rates);
    if (use_trained)
        weights = {trained.weights};
    if (!weights.empty() && weights.size() != rates.size())
        throw std::invalid_argument("--memory-weights needs one file per --memory-rates entry");
    std::vector<MemoryEncoderConfig> memory_configs;
    for (const auto& r : rates) {
        MemoryEncoderConfig mc = trained.encoder;
        if (!use_trained) {
            mc.variant = a.memory_variant;
            mc.cross_attn_features = a.memory_cross_attention;
        }
        mc.set_rates(parse_rates(r));
        mc.validate("--memory-rates " + r);
        memory_configs.push_back(mc);
    }
    st.window = a.window >= 0 ? a.window : config.memory_window;
    st.section_frames = a.section_frames;
    st.horizon = a.horizon;
    st.width = a.width;
    st.height = a.height;
    st.fps = static_cast<double>(a.fps ? a.fps : config.fps);
    st.seed = a.seed;
    st.sampling = sampling_overrides(a);
    st.negative_prompt = a.negative_prompt;
    const double seconds = a.seconds > 0 ? a.seconds : (story.entries().back().time + 5.0);
    const int64_t tf = config.vae.temporal_factor();
    const int64_t first = 1 + tf * (st.section_frames - 1), later = tf * st.section_frames;
    const int64_t wanted = static_cast<int64_t>(std::ceil(seconds * st.fps));
    const int64_t sections = wanted <= first ? 1 : 1 + (wanted - first + later - 1) / later;

    const torch::Device device = parse_device(a.device);
    const int64_t width = a.width ? a.width : config.width, height = a.height ? a.height : config.height;
    const auto writer = open_output(a.out, width, height, static_cast<int64_t>(st.fps));

    VideoModel model(config, a.weights, device, a.dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32);
    if (use_trained)
        merge_trained_lora(model, trained);  // trained together with the memory encoder
    std::vector<MemoryEncoder> encoders;
    std::string memory_desc = "off";
    if (st.use_memory) {
        if (weights.empty() && !config.allow_random_weights)
            throw std::invalid_argument(
                "--memory-weights is required: the model config does not allow random weights");
        if (weights.empty())
            spdlog::warn(
                "no --memory-weights: the memory encoder is untrained (seeded random initialisation)");
        memory_desc = memory_configs.front().variant + (use_trained ? " (trained)" : "");
        for (size_t i = 0; i < memory_configs.size(); ++i) {
            encoders.push_back(frozen_memory_encoder(model, memory_configs[i],
                                                     weights.empty() ? std::string() : weights[i]));
            memory_desc += " " + memory_configs[i].rates().str();
        }
    }
    ARSession session(model, encoders, story, st);
    spdlog::info(
        "generating {:.1f} s ({} sections of {} latent frames) at {}x{} {} fps with {}, memory {}, window {}",
        seconds, sections, st.section_frames, width, height, st.fps, config.name, memory_desc, st.window);
    ProgressBar bar("sections", sections, "section");
    std::ofstream stats;
    if (!a.stats.empty()) {
        stats.open(a.stats);
        if (!stats)
            throw std::invalid_argument("--stats " + a.stats + ": cannot open for writing");
    }
    double sample_ms = 0, decode_ms = 0, memory_ms = 0;
    for (int64_t i = 0; i < sections; ++i) {
        const SectionResult r = session.next_section();
        if (stats.is_open()) {
            nlohmann::json line = {{"section", r.index},
                                   {"start_seconds", r.start_seconds},
                                   {"prompt", r.prompt},
                                   {"context_tokens", r.context_tokens},
                                   {"memory_tokens", r.memory_tokens},
                                   {"sample_ms", r.sample_ms},
                                   {"decode_ms", r.decode_ms},
                                   {"memory_ms", r.memory_ms},
                                   {"state_bytes", session.state_bytes()},
                                   {"rss_mb", resident_mb()}};
            stats << line.dump() << '\n' << std::flush;
        }
        write_frames(*writer, r.frames);
        sample_ms += r.sample_ms;
        decode_ms += r.decode_ms;
        memory_ms += r.memory_ms;
        bar.update(i + 1, "t " + std::to_string(static_cast<int>(r.start_seconds)) + "s, memory " +
                              std::to_string(r.memory_tokens) + " tokens, \"" + r.prompt.substr(0, 40) +
                              "\"");
    }
    bar.finish();
    writer->finish();
    spdlog::info(
        "wrote {} ({} frames, {:.2f} s); per section: sample {:.0f} ms, decode {:.0f} ms, memory {:.0f} ms; "
        "{} memory tokens",
        a.out, writer->frames_written(), writer->frames_written() / st.fps, sample_ms / sections,
        decode_ms / sections, memory_ms / sections, session.memory_tokens());
}

void run_generate(const GenerateArgs& a) {
    if (!a.storyboard.empty() || a.seconds > 0)
        return run_storyboard(a);
    if (a.prompt.empty())
        throw std::invalid_argument("give --prompt, or --storyboard");
    ModelConfig config = ModelConfig::load(a.model);
    GenerateRequest req;
    req.prompt = a.prompt;
    req.negative_prompt = a.negative_prompt;
    req.frames = a.frames ? a.frames : config.frames;
    req.width = a.width ? a.width : config.width;
    req.height = a.height ? a.height : config.height;
    req.seed = a.seed;
    req.sampling = sampling_overrides(a);
    const int64_t fps = a.fps ? a.fps : config.fps;
    // Everything that can be checked is checked before the (possibly many-GB) model loads.
    validate_request(config, req);
    const torch::Device device = parse_device(a.device);
    const auto writer = open_output(a.out, req.width, req.height, fps);

    VideoModel model(config, a.weights, device, a.dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32);
    const int64_t steps = config.sampler.with(req.sampling).steps;
    spdlog::info("generating {} frames at {}x{} ({} fps) with {} ({} steps), seed {}", req.frames, req.width,
                 req.height, fps, config.name, steps, req.seed);
    torch::Tensor video;
    {
        ProgressBar bar("sampling", steps, "step");
        video = model.generate(req, [&](int64_t done, int64_t total) {
            (void)total;
            bar.update(done);
        });
        bar.finish();
    }
    write_frames(*writer, video);
    writer->finish();
    spdlog::info("wrote {} ({} frames, {}x{}, {} fps)", a.out, writer->frames_written(), req.width,
                 req.height, fps);
}

}  // namespace

void add_generate_command(CLI::App& app) {
    auto args = std::make_shared<GenerateArgs>();
    CLI::App* cmd = app.add_subcommand("generate", "Generate a video from a text prompt and write it as MP4");
    cmd->add_option("--model", args->model, "Model config (configs/models/*.json)")->capture_default_str();
    cmd->add_option("--weights", args->weights,
                    "Folder holding the weights named in the config (default: the config's folder)");
    cmd->add_option("--prompt", args->prompt, "Text prompt (or use --storyboard)");
    cmd->add_option(
        "--storyboard", args->storyboard,
        "Storyboard JSON ({\"prompts\": [{\"time\": s, \"prompt\": ...}]}): generate section by section "
        "with compressed memory");
    cmd->add_option("--seconds", args->seconds,
                    "Length for storyboard generation (default: last prompt + 5 s)")
        ->check(CLI::Range(0.0, 86400.0));
    cmd->add_flag("--no-memory", args->no_memory, "Storyboard generation without the compressed memory");
    cmd->add_option("--memory-rates", args->memory_rates,
                    "Memory rates rh x rw x rt; several encoders: 4x4x2,2x2x8 (default: the model config's)")
        ->capture_default_str();
    cmd->add_option("--memory-variant", args->memory_variant,
                    "proposed, only_lr, without_lr or large_patchifier")
        ->capture_default_str()
        ->check(CLI::IsMember({"proposed", "only_lr", "without_lr", "large_patchifier"}));
    cmd->add_option("--memory-weights", args->memory_weights, "Memory encoder weights (.safetensors)");
    cmd->add_flag("--memory-cross-attention", args->memory_cross_attention,
                  "Cross-attention enhancement: memory features into an extra cross-attention per DiT block");
    cmd->add_option(
        "--stats", args->stats,
        "Write per-section figures (latency, context and memory tokens, state bytes, RSS) as JSONL");
    cmd->add_option("--window", args->window,
                    "Latent frames of recent history given uncompressed (default: the model's memory.window)")
        ->check(CLI::Range(int64_t(0), int64_t(256)));
    cmd->add_option("--section-frames", args->section_frames,
                    "Latent frames per section (memory groups may straddle sections)")
        ->capture_default_str()
        ->check(CLI::Range(int64_t(1), int64_t(64)));
    cmd->add_option(
           "--horizon", args->horizon,
           "Latent frames of history time the DiT sees; older memory is rescaled into it (0: no limit)")
        ->check(CLI::NonNegativeNumber);
    cmd->add_option("--negative-prompt", args->negative_prompt,
                    "Negative prompt for classifier-free guidance");
    cmd->add_option("--frames", args->frames, "Number of frames (1 + 4k; default from the config)")
        ->check(CLI::Range(int64_t(1), int64_t(100000)));
    cmd->add_option("--width", args->width, "Width in pixels (default from the config)")
        ->check(CLI::Range(int64_t(1), int64_t(16384)));
    cmd->add_option("--height", args->height, "Height in pixels (default from the config)")
        ->check(CLI::Range(int64_t(1), int64_t(16384)));
    cmd->add_option("--fps", args->fps, "Frames per second of the file (default from the config)")
        ->check(CLI::Range(int64_t(1), int64_t(120)));
    cmd->add_option("--seed", args->seed, "Random seed")->capture_default_str();
    cmd->add_option("--steps", args->steps, "Sampling steps (default from the config)")
        ->check(CLI::Range(int64_t(1), int64_t(1000)));
    cmd->add_option("--guidance", args->guidance, "Classifier-free guidance scale (default from the config)")
        ->check(CLI::NonNegativeNumber);
    cmd->add_option("--shift", args->shift, "Sigma shift (default from the config)")
        ->check(CLI::PositiveNumber);
    cmd->add_option("--solver", args->solver, "unipc, euler or dpm++ (default from the config)")
        ->check(CLI::IsMember({"unipc", "euler", "dpm++"}));
    cmd->add_option("--out", args->out, "Output MP4 file")->capture_default_str();
    cmd->add_option("--device", args->device, "cpu, cuda or cuda:N")->capture_default_str();
    cmd->add_option("--dtype", args->dtype, "Weights' dtype: fp32 or bf16")
        ->capture_default_str()
        ->check(CLI::IsMember({"fp32", "bf16"}));
    cmd->callback([args] { run_generate(*args); });
}

}  // namespace memoreel
