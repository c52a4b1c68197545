// The DiT with clean context beside the section being denoised (DESIGN.md sections 2-3): memory tokens, a
// sliding window of uncompressed latent frames, or a first frame. Context tokens are already in the DiT's
// inner space, carry timestep 0 (clean, Wan 2.2's per-token timesteps) and sit at their own RoPE positions;
// the section's tokens sit on the integer grid starting at time 0, so history has negative time. Only the
// section's outputs are returned.
#pragma once

#include <torch/torch.h>

#include <array>
#include <functional>
#include <vector>

#include "model/wan_dit.h"

namespace memoreel {

struct ContextTokens {
    torch::Tensor tokens;  // [B, Lc, dim]
    torch::Tensor
        positions;  // [Lc, 3] (shared by the batch) float64: RoPE (t, h, w), time relative to the section
    // [Lc] float64, optional: the time (same units and origin as positions' t) from which each token exists,
    // e.g. the end of the frames it summarises. In cached mode (context_kv.h) a token attends only to context
    // available no later than itself. Undefined: all tokens at once.
    torch::Tensor available;
    // Optional per-block extra cross-attention the section's tokens run (the memory's cross-attention
    // enhancement, MemoryEncoderImpl::cross_attention); used by the cached mode.
    std::vector<std::function<torch::Tensor(const torch::Tensor&)>> cross;

    int64_t length() const { return tokens.defined() ? tokens.size(1) : 0; }
};

// Clean latent frames [B, C, F, H, W] as context: patch-embedded by the DiT itself, on the token grid with
// time starting at time_offset (e.g. -F for the F latent frames just before the section).
ContextTokens latent_context(WanDiTImpl& dit, const torch::Tensor& latents, double time_offset);

// Several contexts as one (tokens concatenated in order; a part without `available` times counts as available
// after every other part).
ContextTokens concat_context(const std::vector<ContextTokens>& parts);

// The velocity for a section. x: noisy section latents [B, C, F, H, W]; t: the model timestep per sample [B]
// (sigma * 1000) or per section token [B, F*h*w] (e.g. 0 on a clean first frame, as TI2V does); text: the
// DiT's text embedding [B, text_len, dim] (WanDiTImpl::embed_text); context: optional clean tokens. Returns
// [B, C, F, H, W] fp32. With no context this is exactly the official forward of the section. section_times:
// optional time of each section frame, [F] or per sample [B, F] (default 0..F-1): the retrieval objective
// places its target frames at their true positions in the history.
//
// This is the joint mode: context and section tokens attend to each other in every block, as the official
// TI2V first frame does. The memory uses the cached mode (context_kv.h).
torch::Tensor dit_velocity(WanDiTImpl& dit,
                           const torch::Tensor& x,
                           const torch::Tensor& t,
                           const torch::Tensor& text,
                           const ContextTokens* context = nullptr,
                           const torch::Tensor& section_times = {});

// The section's tokens before the blocks: patch tokens [B, L, dim], RoPE positions ([L, 3] or [B, L, 3]
// float64), per-token timesteps [B, L] and the token grid. Shared by the joint and the cached modes.
struct SectionTokens {
    torch::Tensor tokens;
    torch::Tensor positions;
    torch::Tensor timesteps;
    std::array<int64_t, 3> grid{0, 0, 0};
};
SectionTokens section_tokens(WanDiTImpl& dit,
                             const torch::Tensor& x,
                             const torch::Tensor& t,
                             const torch::Tensor& section_times);

// Head output [B, >= L, *] -> the section's velocity [B, C, F, H, W].
torch::Tensor section_velocity(WanDiTImpl& dit,
                               const torch::Tensor& head_out,
                               const std::array<int64_t, 3>& grid);

}  // namespace memoreel
