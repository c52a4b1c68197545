// One sampling run of the flow-matching sampler over the DiT for a block of latent frames, with
// classifier-free guidance (conditional and unconditional passes as one batch of two) and optional clean
// context (cached mode, context_kv.h). Shared by text-to-video generation and by the autoregressive session.
#pragma once

#include <torch/torch.h>

#include <functional>

#include "model/context_kv.h"
#include "model/flow_matching.h"

namespace memoreel {

struct SectionSampling {
    torch::Tensor noise;        // [1, C, F, h, w] the starting sample
    torch::Tensor text_cond;    // [1, text_len, dim] (WanDiTImpl::embed_text)
    torch::Tensor text_uncond;  // [1, text_len, dim]; undefined when guidance == 1
    double guidance = 1.0;
    const ContextAttention* context = nullptr;  // cached clean context (batch 1, shared by the CFG passes)
    // [F] float64: each frame's time (latent frames, relative to the section), for frames that are not
    // consecutive (retrieval at chosen history positions); undefined: 0, 1, ..., F-1.
    torch::Tensor section_times;
};

// Runs every step of `sampler` (from its current step) and returns the final latents [1, C, F, h, w].
torch::Tensor sample_section(WanDiTImpl& dit,
                             FlowSampler& sampler,
                             const SectionSampling& s,
                             const std::function<void(int64_t, int64_t)>& on_step = {});

}  // namespace memoreel
