// The training objectives of the memory (DESIGN.md section 2; paper eqs. 2-4) as batch builders plus losses,
// on CPU or GPU. Each builder draws its randomness from a caller-given generator, runs the DiT (with memory
// context where the objective has one) and returns the flow-matching loss with what it drew, so trainers and
// tests can inspect it.
//
//  - base: text-to-video on sections, with TI2V's first-frame conditioning on a fraction of samples (the
//  first
//    latent frame clean, timestep 0, no loss on it).
//  - retrieval (eq. 3): a history H of T latent frames, a target set Omega of k frames drawn uniformly
//  without
//    replacement over the WHOLE history (never tied to its start or end: fixed positions teach the encoder to
//    spend its capacity on a few frames), only Omega noised, placed at its true time positions, phi(H) as
//    context, loss on Omega only. noise_as_mask (the paper's variant): every history frame is in the section,
//    the frames outside Omega noised at a level from L(0.2, 1) as a mask and excluded from the loss.
//  - autoregressive (eq. 4): a random cut at a section boundary; the target is the next section, the history
//  is
//    everything before it (phi(history) as context, optionally the last w latent frames uncompressed), the
//    prompt is the storyboard entry nearest the section's start time.
#pragma once

#include <torch/torch.h>

#include <optional>
#include <string>
#include <vector>

#include "model/context_kv.h"
#include "model/flow_matching.h"
#include "model/memory_encoder.h"
#include "model/storyboard.h"

namespace memoreel {

// Which parameters train: the encoder alone, the encoder and the DiT's LoRA adapters, or everything.
enum class TrainableSet { kEncoder, kEncoderLora, kFull };
TrainableSet parse_trainable_set(const std::string& name);  // "encoder", "encoder+lora", "full"
// Sets requires_grad accordingly and returns the trainable parameters. kEncoderLora needs adapters attached.
// encoder may be null (base training of the DiT alone: kFull).
std::vector<torch::Tensor> select_trainable(WanDiTImpl& dit, MemoryEncoderImpl* encoder, TrainableSet set);

// What every objective returns.
struct FlowLoss {
    torch::Tensor loss;        // scalar: mean squared velocity error over the frames in the loss
    torch::Tensor prediction;  // [B, C, F, h, w] the DiT's velocity for the section it saw
    torch::Tensor target;      // [B, C, F, h, w] noise - x0
    torch::Tensor loss_mask;   // [B, F] float: 1 on frames that count
    torch::Tensor sigma;       // [B] the training sigma of each sample
};

// Mean of (prediction - target)^2 over the frames with loss_mask 1 (all channels and pixels of those frames).
torch::Tensor masked_flow_loss(const torch::Tensor& prediction,
                               const torch::Tensor& target,
                               const torch::Tensor& loss_mask);
// The same with a loss weight per latent cell, weight [B, F, h, w] (broadcast over channels), normalised by
// the total weight of the frames in the loss: uniform weights give masked_flow_loss.
torch::Tensor weighted_flow_loss(const torch::Tensor& prediction,
                                 const torch::Tensor& target,
                                 const torch::Tensor& loss_mask,
                                 const torch::Tensor& weight);

// ------------------------------------------------------------------------------------------------------ base

struct BaseOptions {
    LogitNormalSigmaSampler sigma;
    double first_frame_probability = 0.2;  // TI2V's training hint (spec 3.1)
    torch::Tensor weight;                  // [B, F, h, w] loss weight per latent cell; undefined: uniform
};

// latents: clean sections [B, C, F, h, w]; text: [B, text_len, dim] (WanDiTImpl::embed_text).
FlowLoss base_loss(WanDiTImpl& dit,
                   const torch::Tensor& latents,
                   const torch::Tensor& text,
                   const BaseOptions& options,
                   torch::Generator& gen);

// --------------------------------------------------------------------------------------------------
// retrieval

struct RetrievalOptions {
    int64_t targets = 4;  // k, the size of Omega
    LogitNormalSigmaSampler sigma;
    bool noise_as_mask = false;
    double mask_sigma_min = 0.2;  // L(0.2, 1): mask noise levels
};

// k distinct latent frame indices per sample, uniform over [0, frames), sorted: [B, k] int64.
torch::Tensor draw_targets(int64_t batch, int64_t frames, int64_t k, torch::Generator& gen);

// history: clean latents [B, C, T, h, w]; memory: phi(history), flattened tokens [B, L, dim] with their
// positions (time relative to latent frame 0 of the history); text as for base_loss.
FlowLoss retrieval_loss(WanDiTImpl& dit,
                        const torch::Tensor& history,
                        const ContextTokens& memory,
                        const torch::Tensor& text,
                        const RetrievalOptions& options,
                        torch::Generator& gen,
                        torch::Tensor* omega_out = nullptr);

// phi(history) as DiT context: tokens, positions relative to latent frame t_ref, and the time each group
// becomes available (the end of its frames), for the cached mode.
ContextTokens memory_context(const MemoryTokens& memory, const MemoryRates& rates, double t_ref);

// ------------------------------------------------------------------------------------------- autoregressive

struct ARCut {
    int64_t boundary = 0;  // first latent frame of the target section
    int64_t section = 0;   // latent frames in the target section
    double start_seconds = 0;
    int64_t prompt_index = -1;  // storyboard entry used
};

// A random section boundary of a video of `frames` latent frames cut into sections of `section` latent frames
// (at least one section of history before it and a whole section after it).
ARCut draw_cut(int64_t frames,
               int64_t section,
               double fps,
               const Storyboard& storyboard,
               torch::Generator& gen);

// Seconds at which latent frame i starts (Wan alignment: latent 0 is pixel frame 0, latent i >= 1 starts at
// pixel frame 4i - 3).
double latent_frame_seconds(int64_t i, double fps, int64_t vae_temporal = 4);

struct ARInputs {
    torch::Tensor target;          // [B, C, S, h, w] the clean section after the cut
    ContextTokens memory;          // phi(history) at times relative to the cut
    int64_t window = 0;            // uncompressed latent frames of history given as clean tokens
    torch::Tensor window_latents;  // [B, C, window, h, w]
    // The text each piece of history cross-attends to, by its availability time relative to the cut (e.g.
    // the storyboard entry in force then, as the session does); unset: the target's text.
    ContextText history_text;
};

// The section after the cut, with memory (and optional sliding window) as clean context in the cached mode
// (context_kv.h), as the session generates it. The memory's cross-attention enhancement, if any, comes in
// inputs.memory.cross.
FlowLoss autoregressive_loss(WanDiTImpl& dit,
                             const ARInputs& inputs,
                             const torch::Tensor& text,
                             const LogitNormalSigmaSampler& sigma,
                             torch::Generator& gen);

}  // namespace memoreel
