// The DiT with clean context beside the section being denoised (DESIGN.md sections 2-3): memory tokens, a
// sliding window of uncompressed latent frames, or a first frame. Context tokens are already in the DiT's
// inner space, carry timestep 0 (clean, Wan 2.2's per-token timesteps) and sit at their own RoPE positions;
// the section's tokens sit on the integer grid starting at time 0, so history has negative time. Only the
// section's outputs are returned.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "model/wan_dit.h"

namespace memoreel {

struct ContextTokens {
    torch::Tensor tokens;  // [B, Lc, dim]
    torch::Tensor
        positions;  // [Lc, 3] (shared by the batch) float64: RoPE (t, h, w), time relative to the section

    int64_t length() const { return tokens.defined() ? tokens.size(1) : 0; }
};

// Clean latent frames [B, C, F, H, W] as context: patch-embedded by the DiT itself, on the token grid with
// time starting at time_offset (e.g. -F for the F latent frames just before the section).
ContextTokens latent_context(WanDiTImpl& dit, const torch::Tensor& latents, double time_offset);

// Several contexts as one (tokens concatenated in order).
ContextTokens concat_context(const std::vector<ContextTokens>& parts);

// The velocity for a section. x: noisy section latents [B, C, F, H, W]; t: the model timestep per sample [B]
// (sigma * 1000) or per section token [B, F*h*w] (e.g. 0 on a clean first frame, as TI2V does); text: the
// DiT's text embedding [B, text_len, dim] (WanDiTImpl::embed_text); context: optional clean tokens. Returns
// [B, C, F, H, W] fp32. With no context this is exactly the official forward of the section. section_times:
// optional time of each section frame, [F] or per sample [B, F] (default 0..F-1): the retrieval objective places
// its target frames at their true positions in the history.
torch::Tensor dit_velocity(WanDiTImpl& dit,
                           const torch::Tensor& x,
                           const torch::Tensor& t,
                           const torch::Tensor& text,
                           const ContextTokens* context = nullptr,
                           const torch::Tensor& section_times = {});

}  // namespace memoreel
