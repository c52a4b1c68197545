// The cached context mode (DESIGN.md section 3): how the memory meets the DiT at inference and in training.
//
// In the joint mode (context_dit.h) context and section tokens attend to each other in every block, so every
// sampling step of every section re-runs the whole context through the DiT: a section's cost grows with the
// history even though the memory is compressed. In the cached mode a context token attends only to context
// that was available no later than itself (time-causal), never to the section being denoised, and it is
// clean (timestep 0) with a fixed text. Its keys and values in every block therefore never change once it
// has entered the context: they are computed once (encode_context, when the memory encoder emits the token)
// and every later section only adds the attention of its own queries over them. What a section costs beyond
// a plain text-to-video section is that attention, linear in the number of compressed tokens.
//
// Text: a context token cross-attends to the prompt of the time it was made (the caller's text_at), so the
// memory remembers what it showed under which caption; the same for both classifier-free guidance branches.
//
// Positions: keys are stored before RoPE, with absolute times (latent frames from the stream start, or any
// fixed origin), and rotated per use relative to `now` (context_rope_positions). Beyond the trained horizon
// the context's times are rescaled linearly so that the oldest token sits at -horizon (order kept), both when
// a token is encoded and when a section reads the memory.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <vector>

#include "model/context_dit.h"
#include "model/wan_dit.h"

namespace memoreel {

// Per-block keys (before RoPE) and values, in the DiT's compute dtype, of clean context tokens, with
// their absolute positions. Batch 1 is broadcast over any section batch.
struct ContextKV {
    std::vector<AttentionKV> layers;  // one per DiT block, [B, L, heads, head_dim], the compute dtype
    torch::Tensor positions;          // [L, 3] float64 (t, h, w), absolute times

    int64_t length() const { return positions.defined() ? positions.size(0) : 0; }
    int64_t bytes() const;
    // Appends `more` (same batch, same number of layers).
    void append(const ContextKV& more);
    // A copy of tokens [begin, end).
    ContextKV slice(int64_t begin, int64_t end) const;
};

// The text embedding [B or 1, text_len, dim] context made at time `available` cross-attends to.
using ContextText = std::function<torch::Tensor(double available)>;

// How context times are mapped for RoPE beyond the trained horizon (latent frames). Times within `exact` of
// now (the sliding window, the newest memory) keep their values; when the oldest token is further back than
// horizon > exact, the older times are rescaled linearly from [-oldest, -exact] onto [-horizon, -exact], so
// order is kept and the DiT never sees offsets beyond the horizon. horizon 0: no limit.
struct TimeHorizon {
    TimeHorizon(double horizon_frames = 0, double exact_frames = 0)
        : horizon(horizon_frames), exact(exact_frames) {}
    double horizon;
    double exact;
};

// RoPE positions [L, 3] of context relative to `now` (t - now, mapped by the horizon); h and w unchanged.
torch::Tensor context_rope_positions(const torch::Tensor& positions, double now, const TimeHorizon& horizon);

// Runs fresh clean tokens (tokens [B, n, dim], positions [n, 3] in past's coordinates, optional `available`
// [n]) through the DiT's blocks and returns their keys/values. The tokens are taken in groups of equal
// availability, in ascending order; a group attends to `past`, to the groups before it and to itself, with
// the text of its time. Encoding a context group by group (appending each result to past) therefore gives
// the same keys and values as encoding it at once. horizon: see context_rope_positions (groups without an
// `available` time count as made at the latest position + 1). Works with autograd (training) and without.
ContextKV encode_context(WanDiTImpl& dit,
                         const ContextKV& past,
                         const ContextTokens& fresh,
                         const ContextText& text_at,
                         const TimeHorizon& horizon = {});

// Context as a section starting at time `now` sees it: keys rotated to positions relative to now, in the
// compute dtype, ready to be attended to by every sampling step. cross: optional per-block extra
// cross-attention (the memory's cross-attention enhancement).
struct ContextAttention {
    std::vector<AttentionKV> layers;
    std::vector<std::function<torch::Tensor(const torch::Tensor&)>> cross;
    torch::Tensor positions;  // [L, 3] float64: the relative positions the keys were rotated to

    int64_t length() const { return layers.empty() ? 0 : layers.front().k.size(1); }
};
ContextAttention attend_context(WanDiTImpl& dit,
                                const ContextKV& context,
                                double now,
                                const TimeHorizon& horizon = {});

// The section's velocity (as dit_velocity) with cached context: section queries attend to the section's own
// keys and the context's; the context is not recomputed.
torch::Tensor dit_velocity(WanDiTImpl& dit,
                           const torch::Tensor& x,
                           const torch::Tensor& t,
                           const torch::Tensor& text,
                           const ContextAttention& context,
                           const torch::Tensor& section_times = {});

}  // namespace memoreel
