// `memoreel generate`: text -> latents (sampler over the DiT) -> frames (VAE) -> MP4 (FFmpeg).
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <filesystem>

#include "cli/commands.h"
#include "cli/progress_bar.h"
#include "model/video_model.h"
#include "stream/video_file_writer.h"

namespace memoreel {

namespace {

struct GenerateArgs {
    std::string model = "configs/models/memoreel-tiny.json";
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
};

torch::Device parse_device(const std::string& name) {
    const torch::Device device(name);  // throws with LibTorch's message for a malformed name
    if (device.is_cuda() && !torch::cuda::is_available())
        throw std::invalid_argument("--device " + name + ": this LibTorch build or machine has no CUDA");
    return device;
}

void run_generate(const GenerateArgs& a) {
    ModelConfig config = ModelConfig::load(a.model);
    GenerateRequest req;
    req.prompt = a.prompt;
    req.negative_prompt = a.negative_prompt;
    req.frames = a.frames ? a.frames : config.frames;
    req.width = a.width ? a.width : config.width;
    req.height = a.height ? a.height : config.height;
    req.seed = a.seed;
    if (a.steps)
        req.steps = a.steps;
    if (a.guidance >= 0)
        req.guidance = a.guidance;
    if (a.shift > 0)
        req.shift = a.shift;
    if (!a.solver.empty())
        req.solver = a.solver;
    const int64_t fps = a.fps ? a.fps : config.fps;
    // Everything that can be checked is checked before the (possibly many-GB) model loads.
    validate_request(config, req);
    const torch::Device device = parse_device(a.device);
    const auto parent = std::filesystem::path(a.out).parent_path();
    if (!parent.empty())
        std::filesystem::create_directories(parent);
    VideoFileOptions opts;
    opts.width = static_cast<int>(req.width);
    opts.height = static_cast<int>(req.height);
    opts.fps = static_cast<int>(fps);
    VideoFileWriter writer(a.out, opts);  // opens the output now: a bad path fails before sampling

    VideoModel model(config, a.weights, device, a.dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32);
    const int64_t steps = req.steps.value_or(config.sampler.steps);
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
    const torch::Tensor rgb = video_to_rgb24(video);  // [T, H, W, 3] uint8
    for (int64_t t = 0; t < rgb.size(0); ++t)
        writer.write_rgb(rgb[t].contiguous().data_ptr<uint8_t>());
    writer.finish();
    spdlog::info("wrote {} ({} frames, {}x{}, {} fps)", a.out, writer.frames_written(), opts.width,
                 opts.height, fps);
}

}  // namespace

void add_generate_command(CLI::App& app) {
    auto args = std::make_shared<GenerateArgs>();
    CLI::App* cmd = app.add_subcommand("generate", "Generate a video from a text prompt and write it as MP4");
    cmd->add_option("--model", args->model, "Model config (configs/models/*.json)")->capture_default_str();
    cmd->add_option("--weights", args->weights,
                    "Folder holding the weights named in the config (default: the config's folder)");
    cmd->add_option("--prompt", args->prompt, "Text prompt")->required();
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
