// Where the stages' examples come from.
//  - PixelClips: RGB video windows for the VAE: procedural world stories rendered on the fly (by seed) and
//  the
//    fetched real clips of a manifest's split, held decoded in memory.
//  - LatentClips: the latent cache of the DiT stages (world stories and real-clip windows encoded once), with
//    the pixels behind any cached clip regenerated on demand (the memory encoder's LR branch needs pixels).
//  - build_latent_cache: fills a cache folder (resumable, whole files only).
// All randomness comes from the caller's generator.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/storyboard.h"
#include "model/wan_vae.h"
#include "training/latent_cache.h"

namespace memoreel {

struct WorldDataOptions {
    int64_t stories = 0;  // stories with seeds [seed, seed + stories)
    uint64_t seed = 1;
    double seconds = 20;  // story length
};

struct MediaDataOptions {
    std::string manifest;         // a scripts/fetch_media.sh manifest.json; empty: no real clips
    std::string split = "train";  // the manifest split to use
    double window_seconds = 10;   // cache windows
};

struct ManifestClip {
    std::string name, file, split;
};
// The clips of a fetch_media.sh manifest in media.split ("all": every clip), files resolved beside it. Errors
// name the manifest.
std::vector<ManifestClip> manifest_clips(const MediaDataOptions& media);

class VideoFileReader;
// Throws std::invalid_argument naming the file when its frames are not width x height.
void check_clip_size(const VideoFileReader& reader, const std::string& file, int width, int height);

// Uniform integer in [0, n) from gen.
int64_t draw_index(int64_t n, torch::Generator& gen);
double draw_uniform(torch::Generator& gen);

class PixelClips {
  public:
    PixelClips(WorldDataOptions world,
               MediaDataOptions media,
               double media_fraction,
               int width,
               int height,
               int fps);
    // A window of `frames` consecutive frames [3, frames, H, W] in [-1, 1], from a random source and time.
    torch::Tensor sample(int64_t frames, torch::Generator& gen) const;
    int64_t media_clips() const { return static_cast<int64_t>(media_.size()); }

  private:
    WorldDataOptions world_;
    double media_fraction_;
    int width_, height_, fps_;
    std::vector<std::vector<std::vector<uint8_t>>> media_;  // clip -> frame -> RGB24
};

// Pixels [3, F, H, W] in [-1, 1] from RGB24 frames.
torch::Tensor rgb_frames_to_tensor(const std::vector<const uint8_t*>& frames, int width, int height);

// The cache folder's clips, in memory.
class LatentClips {
  public:
    // Every *.safetensors of the folders (a missing or empty folder is an error naming it).
    explicit LatentClips(const std::vector<std::string>& folders);
    int64_t size() const { return static_cast<int64_t>(clips_.size()); }
    const CachedClip& clip(int64_t i) const { return clips_.at(static_cast<size_t>(i)); }
    const Storyboard& storyboard(int64_t i) const { return storyboards_.at(static_cast<size_t>(i)); }
    // A random clip with at least min_latents latent frames (throws when there is none).
    int64_t draw(torch::Generator& gen, int64_t min_latents = 1) const;
    // Pixel frames [first, first + count) of clip i as [3, count, H, W] in [-1, 1]: a world story is rendered
    // again from its seed, a media window decoded again from its file.
    torch::Tensor pixels(int64_t i, int64_t first, int64_t count) const;
    // Where the characters are in latent frames [first, first + count) of clip i, from the world's ground
    // truth: [count, h, w] float, 1 on the latent cells (cell = width / w pixels) that a character's box
    // touches in any of the pixel frames the latent frame encodes (frame 0 for latent 0, 4k - 3 .. 4k for
    // latent k). All zeros for media clips, which have no truth.
    torch::Tensor character_cells(int64_t i, int64_t first, int64_t count, int64_t h, int64_t w) const;

  private:
    std::vector<CachedClip> clips_;
    std::vector<Storyboard> storyboards_;
};

// The latent a clip cut at latent frame `first` of cached clip i opens with: the causal VAE encodes a clip's
// first pixel frame alone, so a section drawn from the middle of a cached clip starts with a 4-frame latent
// where every clip (and every session's first section) starts with a single-image one. This encodes pixel
// frame vae.video_frames(first + 1) - 1 alone: frame 0 for first = 0 (the cached latent 0 again), else frame
// 4 first, the last one latent `first` covers, so that the cached latents first + 1, ... follow it as they
// would in a clip cut there. One encoder call (fp32, autocast paused) for all: [N, z, 1, h, w] on the CPU.
torch::Tensor opening_latents(WanVAEImpl& vae,
                              const LatentClips& clips,
                              const std::vector<std::pair<int64_t, int64_t>>& clip_and_first);

// Encodes world stories and/or the manifest's clips of a split into `folder` (skipping files already there).
// Returns the number of clips written. progress(done, total, name) is called after each clip.
int64_t build_latent_cache(WanVAEImpl& vae,
                           const std::string& folder,
                           const WorldDataOptions& world,
                           const MediaDataOptions& media,
                           int width,
                           int height,
                           int fps,
                           torch::Dtype dtype,
                           const std::function<void(int64_t, int64_t, const std::string&)>& progress = {});

// 1 + 4k frames that fit in `seconds` at fps (0 when none).
int64_t cacheable_frames(double seconds, double fps);

}  // namespace memoreel
