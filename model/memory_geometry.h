// Context lengths of video history as the DiT sees it: uncompressed (every latent frame patchified) and
// compressed by a memory encoder at rates rh x rw x rt. Used by the benchmark, the server's statistics and
// the paper's figures (section 3.1: 561,600 tokens for 60 s of 832x480 24 fps history with a 4x8x8 VAE and
// 2x2 patches; ~5.8k for 20 s at 4x4x2).
#pragma once

#include <cstdint>

namespace memoreel {

struct HistoryGeometry {
    int64_t width = 832;  // pixels
    int64_t height = 480;
    double fps = 24;
    double seconds = 60;
    int64_t vae_spatial = 8;  // VAE compression: 8 (Wan 2.1) or 16 (Wan 2.2)
    int64_t vae_temporal = 4;
    int64_t patch = 2;  // DiT spatial patch
};

struct ContextLength {
    // The paper's accounting: frames / vae_temporal latent frames and real-valued per-axis ratios, so
    // non-divisible sizes give fractional token counts (how the paper arrives at "~5.8k").
    double nominal = 0;
    // What an implementation holds: whole tokens, each axis padded up to a multiple of its rate, and the
    // causal latent count 1 + (frames - 1) / vae_temporal.
    int64_t padded = 0;
    int64_t latent_frames = 0;                   // causal latent frames of the history
    int64_t grid_t = 0, grid_h = 0, grid_w = 0;  // padded token grid
};

// Every latent frame as DiT tokens (the baseline a naive system attends to).
ContextLength uncompressed_context(const HistoryGeometry& g);
// The memory encoder's tokens at rates rh x rw x rt: (T/rt) x (H/(p*rh)) x (W/(p*rw)).
ContextLength compressed_context(const HistoryGeometry& g, int64_t rh, int64_t rw, int64_t rt);

}  // namespace memoreel
