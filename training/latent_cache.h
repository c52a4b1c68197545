// The latent cache (issue 4): clips encoded once by the VAE so that DiT and memory training never re-run it.
// One safetensors file per clip: `latents` [C_z, T', h, w] (normalised, as the VAE's encode returns them) and
// metadata holding the clip's frame count, frame rate, storyboard and source description as JSON strings.
// Files are written atomically, so an interrupted caching run leaves whole clips only and can be resumed.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/wan_vae.h"

namespace memoreel {

struct CachedClip {
    std::string name;
    torch::Tensor latents;  // [C_z, T', h, w]
    int64_t frames = 0;     // pixel frames encoded (1 + 4 (T' - 1))
    double fps = 0;
    nlohmann::json storyboard;  // {"prompts": [...]} (may be empty for clips without captions)
    nlohmann::json info;        // where it came from (world seed and truth file, media clip and window, ...)
};

// Writes <dir>/<name>.safetensors (latents stored as `dtype`).
void write_cached_clip(const std::string& dir, const CachedClip& clip, torch::Dtype dtype = torch::kFloat32);
// Reads one cache file; errors name the file and what is wrong.
CachedClip read_cached_clip(const std::string& path);
// The cache files of a folder, sorted.
std::vector<std::string> list_cached_clips(const std::string& dir);

// Encodes `frames` RGB24 frames of width x height (frame_at(i, rgb) fills frame i) through the VAE's causal
// streaming encoder, chunk_latents latent frames at a time, never holding more than one chunk of pixels.
// frames must be 1 + 4k. Returns normalised latents [C_z, 1 + (frames - 1) / 4, h, w] on the CPU.
torch::Tensor encode_frames(WanVAEImpl& vae,
                            int64_t frames,
                            int width,
                            int height,
                            const std::function<void(int64_t, uint8_t*)>& frame_at,
                            int64_t chunk_latents = 4);

}  // namespace memoreel
