// Analytic FLOP counts (2 per multiply-add) of the matmuls and convolutions of a forward pass, from the
// architecture in the spec. Norms, activations and element-wise ops are not counted.
#pragma once

#include <cstdint>

#include "model/config.h"

namespace memoreel::bench {

// One DiT forward of one sample: `tokens` video tokens, text padded to `text_len`.
double dit_forward_flops(const WanDiTConfig& c, int64_t tokens, int64_t text_len);

// One VAE decode of `latent_frames` latent frames at latent size h x w. first_section: the stream's first
// section (latent frame 0 decodes to one frame); otherwise every latent frame decodes to 4.
double vae_decode_flops(const WanVAEConfig& c,
                        int64_t latent_frames,
                        int64_t h,
                        int64_t w,
                        bool first_section);

}  // namespace memoreel::bench
