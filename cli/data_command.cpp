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
    std::string model = "configs/models/memoreel-tiny.json";
    std::string weights;
    std::string media;  // a fetch_media.sh manifest; empty: world stories
    int stories = 8;
    uint64_t seed = 1;
    double seconds = 20;  // story length, or media window length
    std::string out = "data/latents/world";
    std::string dtype = "fp32";
};

// 1 + 4k frames that fit in `seconds` at fps.
int64_t cacheable_frames(double seconds, double fps) {
    const int64_t n = static_cast<int64_t>(seconds * fps);
    return n < 1 ? 0 : 1 + 4 * ((n - 1) / 4);
}

void run_cache(const CacheArgs& a) {
    const ModelConfig config = ModelConfig::load(a.model);
    VideoModel model(config, a.weights);
    const int w = static_cast<int>(config.width), h = static_cast<int>(config.height);
    const double fps = static_cast<double>(config.fps);
    const torch::Dtype dtype = a.dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32;
    int written = 0, kept = 0;
    const auto exists = [&](const std::string& name) {
        return std::filesystem::exists(std::filesystem::path(a.out) / (name + ".safetensors"));
    };
    if (a.media.empty()) {
        ProgressBar bar("stories", a.stories, "story");
        for (int i = 0; i < a.stories; ++i) {
            const uint64_t seed = a.seed + static_cast<uint64_t>(i);
            char name[64];
            std::snprintf(name, sizeof(name), "world-%06llu", static_cast<unsigned long long>(seed));
            if (exists(name)) {  // a resumed run keeps what is there (files are written whole)
                ++kept;
                bar.update(i + 1, name);
                continue;
            }
            world::StoryOptions o;
            o.seconds = a.seconds;
            const world::Story story = world::Story::generate(seed, o);
            CachedClip c;
            c.name = name;
            c.frames = cacheable_frames(a.seconds, fps);
            c.fps = fps;
            c.latents = encode_frames(model.vae(), c.frames, w, h, [&](int64_t f, uint8_t* rgb) {
                world::render_frame(story, static_cast<double>(f) / fps, w, h, rgb);
            });
            c.storyboard = story.storyboard();
            c.info = {
                {"source", "world"}, {"seed", seed}, {"width", w}, {"height", h}, {"story", story.to_json()}};
            write_cached_clip(a.out, c, dtype);
            ++written;
            bar.update(i + 1, name);
        }
        bar.finish();
    } else {
        const nlohmann::json manifest = read_json_file(a.media);
        const auto dir = std::filesystem::path(a.media).parent_path();
        for (const auto& clip : manifest.at("clips")) {
            const std::string file = (dir / clip.at("file").get<std::string>()).string();
            VideoFileReader reader(file);
            if (reader.info().width != w || reader.info().height != h)
                throw std::invalid_argument(file + ": " + std::to_string(reader.info().width) + "x" +
                                            std::to_string(reader.info().height) + ", the model wants " +
                                            std::to_string(w) + "x" + std::to_string(h) +
                                            " (run scripts/fetch_media.sh with its size)");
            const int64_t per_window = cacheable_frames(a.seconds, fps);
            std::vector<std::vector<uint8_t>> window;
            std::vector<uint8_t> rgb;
            int64_t start = 0, index = 0;
            bool more = true;
            while (more) {
                window.clear();
                while (static_cast<int64_t>(window.size()) < per_window && (more = reader.read_rgb(rgb)))
                    window.push_back(rgb);
                if (static_cast<int64_t>(window.size()) < per_window)
                    break;  // the tail shorter than a window is left out
                char name[160];
                std::snprintf(name, sizeof(name), "%s-%03lld", clip.at("clip").get<std::string>().c_str(),
                              static_cast<long long>(index));
                if (!exists(name)) {
                    CachedClip c;
                    c.name = name;
                    c.frames = per_window;
                    c.fps = fps;
                    c.latents = encode_frames(model.vae(), per_window, w, h, [&](int64_t f, uint8_t* out) {
                        std::copy(window[f].begin(), window[f].end(), out);
                    });
                    c.storyboard = nlohmann::json::object();
                    c.info = {{"source", "media"},
                              {"clip", clip.at("clip")},
                              {"split", clip.at("split")},
                              {"start_frame", start},
                              {"file", file}};
                    write_cached_clip(a.out, c, dtype);
                    ++written;
                } else {
                    ++kept;
                }
                start += per_window;
                ++index;
            }
            spdlog::info("{}: {} windows of {} frames", clip.at("clip").get<std::string>(), index,
                         per_window);
        }
    }
    spdlog::info("latent cache {}: {} clips written, {} already there", a.out, written, kept);
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
    cache->add_option("--dtype", cargs->dtype, "Stored latents")
        ->capture_default_str()
        ->check(CLI::IsMember({"fp32", "bf16"}));
    cache->add_option("--out", cargs->out, "Cache folder")->capture_default_str();
    cache->callback([cargs] { run_cache(*cargs); });
}

}  // namespace memoreel
