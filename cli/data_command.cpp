// `memoreel data world`: renders a story of the procedural world to an MP4 with its storyboard and ground
// truth, to look at the training data (and to feed `generate --storyboard` the same captions).
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <filesystem>
#include <memory>
#include <vector>

#include "cli/commands.h"
#include "cli/progress_bar.h"
#include "model/json_util.h"
#include "model/video_model.h"
#include "stream/video_file_reader.h"
#include "stream/video_file_writer.h"
#include "training/latent_cache.h"
#include "training/training_data.h"
#include "training/world.h"

namespace memoreel {

namespace {

struct WorldArgs {
    uint64_t seed = 1;
    double seconds = 30;
    int width = 320;
    int height = 192;
    int fps = 16;
    std::string out = "out/world.mp4";
};

void run_world(const WorldArgs& a) {
    world::StoryOptions o;
    o.seconds = a.seconds;
    const world::Story story = world::Story::generate(a.seed, o);
    const auto parent = std::filesystem::path(a.out).parent_path();
    if (!parent.empty())
        std::filesystem::create_directories(parent);
    const std::string stem = (parent / std::filesystem::path(a.out).stem()).string();
    write_file_atomic(stem + ".storyboard.json", story.storyboard().dump(2) + "\n");
    nlohmann::json truth = story.to_json();
    VideoFileOptions vo;
    vo.width = a.width;
    vo.height = a.height;
    vo.fps = a.fps;
    VideoFileWriter writer(a.out, vo);
    std::vector<uint8_t> rgb(static_cast<size_t>(a.width) * a.height * 3);
    const int64_t frames = static_cast<int64_t>(a.seconds * a.fps);
    for (int64_t i = 0; i < frames; ++i) {
        world::FrameTruth ft;
        world::render_frame(story, static_cast<double>(i) / a.fps, a.width, a.height, rgb.data(), &ft);
        writer.write_rgb(rgb.data());
        truth["frames"].push_back({{"shot", ft.shot},
                                   {"place", ft.place},
                                   {"characters", ft.characters},
                                   {"boxes", ft.boxes},
                                   {"object", ft.object},
                                   {"object_held", ft.object_held}});
    }
    writer.finish();
    write_file_atomic(stem + ".truth.json", truth.dump() + "\n");
    spdlog::info("wrote {} ({} frames), {}.storyboard.json, {}.truth.json", a.out, frames, stem, stem);
    for (const auto& shot : story.shots)
        spdlog::info("{:6.2f} s  {}", shot.start, shot.caption);
}

struct CacheArgs {
    std::string model = "models/memoreel-tiny/model.json";
    std::string weights;
    std::string media;  // a fetch_media.sh manifest; empty: world stories
    int stories = 8;
    uint64_t seed = 1;
    double seconds = 20;  // story length, or media window length
    std::string out = "data/latents/world";
    std::string dtype = "fp32";
    std::string split = "all";  // media: the manifest split to encode
};

void run_cache(const CacheArgs& a) {
    const ModelConfig config = ModelConfig::load(a.model);
    VideoModel model(config, a.weights);
    WorldDataOptions world;
    MediaDataOptions media;
    if (a.media.empty()) {
        world.stories = a.stories;
        world.seed = a.seed;
        world.seconds = a.seconds;
    } else {
        media.manifest = a.media;
        media.split = a.split;
        media.window_seconds = a.seconds;
    }
    const size_t before = std::filesystem::is_directory(a.out) ? list_cached_clips(a.out).size() : 0;
    std::unique_ptr<ProgressBar> bar;
    const int64_t written = build_latent_cache(
        model.vae(), a.out, world, media, static_cast<int>(config.width), static_cast<int>(config.height),
        static_cast<int>(config.fps), a.dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32,
        [&](int64_t done, int64_t total, const std::string& name) {
            if (!bar)
                bar = std::make_unique<ProgressBar>("clips", total, "clip");
            bar->update(done, name);
        });
    if (bar)
        bar->finish();
    spdlog::info("latent cache {}: {} clips written, {} already there", a.out, written, before);
}

}  // namespace

void add_data_command(CLI::App& app) {
    CLI::App* data = app.add_subcommand("data", "Training data: the procedural storyboard world");
    data->require_subcommand(1);
    auto args = std::make_shared<WorldArgs>();
    CLI::App* cmd =
        data->add_subcommand("world", "Render a story of the procedural world to MP4 + storyboard + truth");
    cmd->add_option("--seed", args->seed, "World and story seed")->capture_default_str();
    cmd->add_option("--seconds", args->seconds, "Story length")
        ->capture_default_str()
        ->check(CLI::Range(1.0, 3600.0));
    cmd->add_option("--width", args->width, "Frame width")
        ->capture_default_str()
        ->check(CLI::Range(16, 4096));
    cmd->add_option("--height", args->height, "Frame height")
        ->capture_default_str()
        ->check(CLI::Range(16, 4096));
    cmd->add_option("--fps", args->fps, "Frames per second")
        ->capture_default_str()
        ->check(CLI::Range(1, 120));
    cmd->add_option("--out", args->out, "Output MP4 (storyboard and truth JSON beside it)")
        ->capture_default_str();
    cmd->callback([args] { run_world(*args); });

    auto cargs = std::make_shared<CacheArgs>();
    CLI::App* cache = data->add_subcommand(
        "cache", "Encode world stories (default) or fetched media windows (--media) into the latent cache");
    cache->add_option("--model", cargs->model, "Model config (its VAE and geometry)")->capture_default_str();
    cache->add_option("--weights", cargs->weights, "Weights folder");
    cache->add_option("--media", cargs->media,
                      "A scripts/fetch_media.sh manifest.json instead of world stories");
    cache->add_option("--stories", cargs->stories, "World stories")
        ->capture_default_str()
        ->check(CLI::Range(1, 1000000));
    cache->add_option("--seed", cargs->seed, "First story seed")->capture_default_str();
    cache->add_option("--seconds", cargs->seconds, "Story length, or media window length")
        ->capture_default_str()
        ->check(CLI::Range(0.25, 3600.0));
    cache->add_option("--split", cargs->split, "Media: the manifest split (train, eval or all)")
        ->capture_default_str()
        ->check(CLI::IsMember({"train", "eval", "all"}));
    cache->add_option("--dtype", cargs->dtype, "Stored latents")
        ->capture_default_str()
        ->check(CLI::IsMember({"fp32", "bf16"}));
    cache->add_option("--out", cargs->out, "Cache folder")->capture_default_str();
    cache->callback([cargs] { run_cache(*cargs); });
}

}  // namespace memoreel
