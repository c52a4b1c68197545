#include "training/latent_cache.h"

#include <algorithm>
#include <filesystem>
#include <stdexcept>

#include "model/checkpoint.h"
#include "model/safetensors.h"

namespace memoreel {

namespace fs = std::filesystem;

void write_cached_clip(const std::string& dir, const CachedClip& clip, torch::Dtype dtype) {
    if (clip.name.empty() || clip.name.find('/') != std::string::npos)
        throw std::invalid_argument("latent cache: bad clip name '" + clip.name + "'");
    TORCH_CHECK(clip.latents.defined() && clip.latents.dim() == 4, "latent cache: ", clip.name,
                ": latents must be [C, T, h, w]");
    fs::create_directories(dir);
    const std::map<std::string, std::string> meta = {
        {"format", "memoreel-latent-clip-1"},
        {"frames", std::to_string(clip.frames)},
        {"fps", nlohmann::json(clip.fps).dump()},
        {"storyboard", clip.storyboard.is_null() ? "{}" : clip.storyboard.dump()},
        {"info", clip.info.is_null() ? "{}" : clip.info.dump()}};
    save_tensors((fs::path(dir) / (clip.name + ".safetensors")).string(), {{"latents", clip.latents.cpu()}},
                 meta, dtype);
}

CachedClip read_cached_clip(const std::string& path) {
    const TensorSource src = TensorSource::open(path);
    const auto& meta = src.metadata();
    const auto need = [&](const char* key) -> const std::string& {
        const auto it = meta.find(key);
        if (it == meta.end())
            throw CheckpointError(path, "",
                                  std::string("not a latent cache file: no '") + key + "' metadata");
        return it->second;
    };
    if (need("format") != "memoreel-latent-clip-1")
        throw CheckpointError(path, "", "unknown latent cache format '" + need("format") + "'");
    CachedClip c;
    c.name = fs::path(path).stem().string();
    c.latents = src.get("latents").to(torch::kFloat32);
    if (c.latents.dim() != 4)
        throw CheckpointError(path, "latents", "must be [C, T, h, w]");
    try {
        c.frames = std::stoll(need("frames"));
        c.fps = nlohmann::json::parse(need("fps")).get<double>();
        c.storyboard = nlohmann::json::parse(need("storyboard"));
        c.info = nlohmann::json::parse(need("info"));
    } catch (const std::exception& e) {
        throw CheckpointError(path, "", std::string("malformed metadata: ") + e.what());
    }
    if (c.frames < 1 || 1 + (c.frames - 1) / 4 != c.latents.size(1))
        throw CheckpointError(path, "latents",
                              "holds " + std::to_string(c.latents.size(1)) +
                                  " latent frames, the metadata says " + std::to_string(c.frames) +
                                  " pixel frames");
    return c;
}

std::vector<std::string> list_cached_clips(const std::string& dir) {
    std::vector<std::string> out;
    if (!fs::is_directory(dir))
        throw std::invalid_argument("latent cache: " + dir + " is not a folder");
    for (const auto& e : fs::directory_iterator(dir))
        if (e.is_regular_file() && e.path().extension() == ".safetensors")
            out.push_back(e.path().string());
    std::sort(out.begin(), out.end());
    return out;
}

torch::Tensor encode_frames(WanVAEImpl& vae,
                            int64_t frames,
                            int width,
                            int height,
                            const std::function<void(int64_t, uint8_t*)>& frame_at,
                            int64_t chunk_latents) {
    if (frames < 1 || (frames - 1) % 4 != 0)
        throw std::invalid_argument("encode_frames: need 1 + 4k frames, got " + std::to_string(frames));
    if (chunk_latents < 1)
        throw std::invalid_argument("encode_frames: chunk_latents must be >= 1");
    torch::InferenceMode guard;
    const auto device = vae.parameters().front().device();
    VaeEncoderState state;
    std::vector<torch::Tensor> parts;
    std::vector<uint8_t> rgb(static_cast<size_t>(width) * height * 3);
    int64_t next = 0;
    while (next < frames) {
        // The first chunk is 1 + 4(k - 1) frames, later ones 4k.
        const int64_t n =
            std::min<int64_t>(next == 0 ? 1 + 4 * (chunk_latents - 1) : 4 * chunk_latents, frames - next);
        auto chunk = torch::empty({1, 3, n, height, width}, torch::kFloat32);
        for (int64_t i = 0; i < n; ++i) {
            frame_at(next + i, rgb.data());
            const auto f = torch::from_blob(rgb.data(), {height, width, 3}, torch::kUInt8);
            chunk[0].select(1, i).copy_(f.permute({2, 0, 1}).to(torch::kFloat32).div(127.5).sub(1.0));
        }
        parts.push_back(vae.encode_chunk(state, chunk.to(device)).mu.cpu());
        next += n;
    }
    return torch::cat(parts, 2)[0];
}

}  // namespace memoreel
