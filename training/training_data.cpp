#include "training/training_data.h"

#include <spdlog/spdlog.h>

#include <filesystem>

#include "model/json_util.h"
#include "model/safetensors.h"
#include "stream/video_file_reader.h"
#include "training/autocast.h"
#include "training/world.h"

namespace fs = std::filesystem;

namespace memoreel {

int64_t draw_index(int64_t n, torch::Generator& gen) {
    if (n <= 0)
        throw std::invalid_argument("draw_index: nothing to draw from");
    return torch::randint(n, {1}, gen, torch::kInt64).item<int64_t>();
}

double draw_uniform(torch::Generator& gen) {
    return torch::rand({1}, gen, torch::kFloat64).item<double>();
}

int64_t cacheable_frames(double seconds, double fps) {
    const int64_t n = static_cast<int64_t>(seconds * fps + 1e-9);
    return n < 1 ? 0 : 1 + 4 * ((n - 1) / 4);
}

torch::Tensor rgb_frames_to_tensor(const std::vector<const uint8_t*>& frames, int width, int height) {
    const int64_t f = static_cast<int64_t>(frames.size());
    torch::Tensor out = torch::empty({f, height, width, 3}, torch::kUInt8);
    const size_t bytes = static_cast<size_t>(width) * height * 3;
    for (int64_t i = 0; i < f; ++i)
        std::memcpy(out[i].data_ptr<uint8_t>(), frames[static_cast<size_t>(i)], bytes);
    return out.permute({3, 0, 1, 2}).to(torch::kFloat32).div_(127.5).sub_(1.0).contiguous();
}

std::vector<ManifestClip> manifest_clips(const MediaDataOptions& media) {
    std::vector<ManifestClip> out;
    if (media.manifest.empty())
        return out;
    const nlohmann::json manifest = read_json_file(media.manifest);
    const fs::path dir = fs::path(media.manifest).parent_path();
    if (!manifest.contains("clips") || !manifest["clips"].is_array())
        throw CheckpointError(media.manifest, "", "has no 'clips' array");
    for (const auto& c : manifest["clips"])
        if (media.split == "all" || c.value("split", "") == media.split)
            out.push_back({c.at("clip").get<std::string>(), (dir / c.at("file").get<std::string>()).string(),
                           c.value("split", "")});
    if (out.empty())
        throw CheckpointError(media.manifest, "", "has no clips in split '" + media.split + "'");
    return out;
}

void check_clip_size(const VideoFileReader& reader, const std::string& file, int width, int height) {
    if (reader.info().width != width || reader.info().height != height)
        throw std::invalid_argument(file + ": " + std::to_string(reader.info().width) + "x" +
                                    std::to_string(reader.info().height) + ", the model wants " +
                                    std::to_string(width) + "x" + std::to_string(height) +
                                    " (run scripts/fetch_media.sh with its size)");
}

namespace {

world::Story story_of_seed(uint64_t seed, double seconds) {
    world::StoryOptions o;
    o.seconds = seconds;
    return world::Story::generate(seed, o);
}

}  // namespace

// ------------------------------------------------------------------------------------------ pixel clips

PixelClips::PixelClips(WorldDataOptions world,
                       MediaDataOptions media,
                       double media_fraction,
                       int width,
                       int height,
                       int fps)
    : world_(world), media_fraction_(media_fraction), width_(width), height_(height), fps_(fps) {
    for (const auto& clip : manifest_clips(media)) {
        const std::string& file = clip.file;
        VideoFileReader reader(file);
        check_clip_size(reader, file, width, height);
        std::vector<std::vector<uint8_t>> frames;
        std::vector<uint8_t> rgb;
        while (reader.read_rgb(rgb))
            frames.push_back(rgb);
        media_.push_back(std::move(frames));
    }
    if (world_.stories <= 0 && media_.empty())
        throw std::invalid_argument("no training data: no world stories and no media clips");
}

torch::Tensor PixelClips::sample(int64_t frames, torch::Generator& gen) const {
    const bool use_media = !media_.empty() && (world_.stories <= 0 || draw_uniform(gen) < media_fraction_);
    std::vector<std::vector<uint8_t>> rendered;
    std::vector<const uint8_t*> ptrs;
    if (use_media) {
        const auto& clip = media_[static_cast<size_t>(draw_index(static_cast<int64_t>(media_.size()), gen))];
        const int64_t n = static_cast<int64_t>(clip.size());
        const int64_t start = n > frames ? draw_index(n - frames + 1, gen) : 0;
        for (int64_t i = 0; i < frames; ++i)
            ptrs.push_back(clip[static_cast<size_t>(std::min(start + i, n - 1))].data());
    } else {
        const uint64_t seed = world_.seed + static_cast<uint64_t>(draw_index(world_.stories, gen));
        const world::Story story = story_of_seed(seed, world_.seconds);
        const double span = std::max(0.0, world_.seconds - static_cast<double>(frames) / fps_);
        const double t0 = span * draw_uniform(gen);
        rendered.resize(static_cast<size_t>(frames));
        for (int64_t i = 0; i < frames; ++i) {
            auto& rgb = rendered[static_cast<size_t>(i)];
            rgb.resize(static_cast<size_t>(width_) * height_ * 3);
            world::render_frame(story, t0 + static_cast<double>(i) / fps_, width_, height_, rgb.data());
            ptrs.push_back(rgb.data());
        }
    }
    return rgb_frames_to_tensor(ptrs, width_, height_);
}

// ----------------------------------------------------------------------------------------- latent clips

LatentClips::LatentClips(const std::vector<std::string>& folders) {
    for (const auto& folder : folders) {
        const auto files = list_cached_clips(folder);
        if (files.empty())
            throw std::invalid_argument("latent cache " + folder + " holds no clips");
        for (const auto& f : files) {
            CachedClip c = read_cached_clip(f);
            storyboards_.push_back(c.storyboard.is_object() && c.storyboard.contains("prompts")
                                       ? Storyboard::from_json(c.storyboard, f)
                                       : Storyboard());
            clips_.push_back(std::move(c));
        }
    }
}

int64_t LatentClips::draw(torch::Generator& gen, int64_t min_latents) const {
    std::vector<int64_t> ok;
    for (int64_t i = 0; i < size(); ++i)
        if (clips_[static_cast<size_t>(i)].latents.size(1) >= min_latents)
            ok.push_back(i);
    if (ok.empty())
        throw std::invalid_argument("no cached clip has " + std::to_string(min_latents) +
                                    " latent frames (make the stories or media windows longer)");
    return ok[static_cast<size_t>(draw_index(static_cast<int64_t>(ok.size()), gen))];
}

torch::Tensor LatentClips::pixels(int64_t i, int64_t first, int64_t count) const {
    const CachedClip& c = clip(i);
    const nlohmann::json& info = c.info;
    const int w = info.value("width", 0), h = info.value("height", 0);
    std::vector<std::vector<uint8_t>> frames;
    if (info.value("source", "") == "world") {
        const world::Story story =
            story_of_seed(info.at("seed").get<uint64_t>(), info.at("story").at("seconds"));
        for (int64_t f = first; f < first + count; ++f) {
            frames.emplace_back(static_cast<size_t>(w) * h * 3);
            world::render_frame(story, static_cast<double>(f) / c.fps, w, h, frames.back().data());
        }
    } else if (info.value("source", "") == "media") {
        const std::string file = info.at("file");
        VideoFileReader reader(file);
        check_clip_size(reader, file, w, h);
        const int64_t start = info.at("start_frame").get<int64_t>() + first;
        std::vector<uint8_t> rgb;
        for (int64_t f = 0; f < start + count && reader.read_rgb(rgb); ++f)
            if (f >= start)
                frames.push_back(rgb);
        if (static_cast<int64_t>(frames.size()) != count)
            throw std::runtime_error(file + ": ends before frame " + std::to_string(start + count));
    } else {
        throw std::invalid_argument("cached clip " + c.name + " has no pixel source");
    }
    std::vector<const uint8_t*> ptrs;
    for (const auto& f : frames)
        ptrs.push_back(f.data());
    return rgb_frames_to_tensor(ptrs, w, h);
}

torch::Tensor LatentClips::character_cells(int64_t i,
                                           int64_t first,
                                           int64_t count,
                                           int64_t h,
                                           int64_t w) const {
    auto cells = torch::zeros({count, h, w}, torch::kFloat32);
    const CachedClip& c = clip(i);
    const nlohmann::json& info = c.info;
    if (info.value("source", "") != "world")
        return cells;
    const int width = info.value("width", 0), height = info.value("height", 0);
    const world::Story story = story_of_seed(info.at("seed").get<uint64_t>(), info.at("story").at("seconds"));
    std::vector<uint8_t> scratch(static_cast<size_t>(width) * height * 3);
    auto a = cells.accessor<float, 3>();
    world::FrameTruth truth;
    for (int64_t k = 0; k < count; ++k) {
        const int64_t latent = first + k;
        const int64_t last = latent == 0 ? 0 : 4 * latent;
        for (int64_t f = latent == 0 ? 0 : last - 3; f <= last && f < c.frames; ++f) {
            world::render_frame(story, static_cast<double>(f) / c.fps, width, height, scratch.data(), &truth);
            for (const auto& box : truth.boxes) {
                // Cells [floor(x0 / cell), ceil(x1 / cell)): a box edge inside a cell marks it.
                const int64_t x0 = box[0] * w / width, y0 = box[1] * h / height;
                const int64_t x1 = (static_cast<int64_t>(box[2]) * w + width - 1) / width;
                const int64_t y1 = (static_cast<int64_t>(box[3]) * h + height - 1) / height;
                for (int64_t y = std::max<int64_t>(0, y0); y < std::min(h, y1); ++y)
                    for (int64_t x = std::max<int64_t>(0, x0); x < std::min(w, x1); ++x)
                        a[k][y][x] = 1.0f;
            }
        }
    }
    return cells;
}

torch::Tensor opening_latents(WanVAEImpl& vae,
                              const LatentClips& clips,
                              const std::vector<std::pair<int64_t, int64_t>>& clip_and_first) {
    if (clip_and_first.empty())
        throw std::invalid_argument("opening_latents: no clips");
    std::vector<torch::Tensor> frames;
    for (const auto& [i, first] : clip_and_first)
        frames.push_back(clips.pixels(i, vae.video_frames(first + 1) - 1, 1));
    const AutocastPause fp32;  // the cache was encoded in fp32
    torch::NoGradGuard no_grad;
    const auto device = vae.parameters().front().device();
    return vae.encode(torch::stack(frames).to(device)).to(torch::kCPU);
}

// ---------------------------------------------------------------------------------------------- build

int64_t build_latent_cache(WanVAEImpl& vae,
                           const std::string& folder,
                           const WorldDataOptions& world,
                           const MediaDataOptions& media,
                           int width,
                           int height,
                           int fps,
                           torch::Dtype dtype,
                           const std::function<void(int64_t, int64_t, const std::string&)>& progress) {
    fs::create_directories(folder);
    const auto exists = [&](const std::string& name) {
        return fs::exists(fs::path(folder) / (name + ".safetensors"));
    };
    const auto clips = manifest_clips(media);
    int64_t written = 0, done = 0;
    const int64_t total = world.stories + static_cast<int64_t>(clips.size());
    for (int64_t i = 0; i < world.stories; ++i) {
        const uint64_t seed = world.seed + static_cast<uint64_t>(i);
        char name[64];
        std::snprintf(name, sizeof(name), "world-%06llu", static_cast<unsigned long long>(seed));
        if (!exists(name)) {  // a resumed run keeps what is there (files are written whole)
            const world::Story story = story_of_seed(seed, world.seconds);
            CachedClip c;
            c.name = name;
            c.frames = cacheable_frames(world.seconds, fps);
            c.fps = fps;
            c.latents = encode_frames(vae, c.frames, width, height, [&](int64_t f, uint8_t* rgb) {
                world::render_frame(story, static_cast<double>(f) / fps, width, height, rgb);
            });
            c.storyboard = story.storyboard();
            c.info = {{"source", "world"},
                      {"seed", seed},
                      {"width", width},
                      {"height", height},
                      {"story", story.to_json()}};
            write_cached_clip(folder, c, dtype);
            ++written;
        }
        if (progress)
            progress(++done, total, name);
    }
    for (const auto& clip : clips) {
        const std::string& clip_name = clip.name;
        const std::string& file = clip.file;
        VideoFileReader reader(file);
        check_clip_size(reader, file, width, height);
        const int64_t per_window = cacheable_frames(media.window_seconds, fps);
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
            std::snprintf(name, sizeof(name), "%s-%03lld", clip_name.c_str(), static_cast<long long>(index));
            if (!exists(name)) {
                CachedClip c;
                c.name = name;
                c.frames = per_window;
                c.fps = fps;
                c.latents = encode_frames(vae, per_window, width, height, [&](int64_t f, uint8_t* out) {
                    std::copy(window[static_cast<size_t>(f)].begin(), window[static_cast<size_t>(f)].end(),
                              out);
                });
                c.storyboard = nlohmann::json::object();
                c.info = {{"source", "media"},    {"clip", clip_name}, {"split", clip.split},
                          {"start_frame", start}, {"file", file},      {"width", width},
                          {"height", height}};
                write_cached_clip(folder, c, dtype);
                ++written;
            }
            start += per_window;
            ++index;
        }
        if (progress)
            progress(++done, total, clip_name);
    }
    return written;
}

}  // namespace memoreel
