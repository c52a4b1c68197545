// The memory compression encoder phi of "Pretraining Frame Preservation in Autoregressive Video Memory
// Compression" (paper section 3.1, Fig. 3; DESIGN.md section 2). It turns a latent (and pixel) history into
// a grid of memory tokens already in the DiT's inner space (width `dim`), so that they never pass through the
// VAE's narrow bottleneck.
//
// Notation: latent history Z [B, C_z, T, H, W], DiT spatial patch p = 2, rates (rh, rw, rt) written
// "rh x rw x rt" ("4x4x2": rh = rw = 4, rt = 2). A memory "group" g is the rt latent frames g*rt ..
// g*rt+rt-1; it gives one memory time step of (H/(p*rh)) x (W/(p*rw)) tokens.
//
// Branches (variant switches, for the paper's ablations):
//   LR (proposed, only_lr): for each group, average the group's pixel frames (latent 0 <-> pixel frame 0,
//       latent k >= 1 <-> pixel frames 4k-3 .. 4k, as the Wan VAE aligns them), area-downsample by (rh, rw),
//       encode that single image with the VAE (each group independently, batched) and apply the DiT's OWN
//       patch_embedding (shared module: gradients reach the DiT's weights, nothing is copied). Trainers with
//       latent caches can pass those LR latents directly (see lr_latents()).
//   HR (proposed, without_lr): full-resolution latents -> CausalConv3d(C_z -> c0, k3) + SiLU, then strided
//       causal convs (k3, SiLU) over the channel ladder hr_channels: the log2(rt) temporal stride-2 steps
//       first, then max(log2(p*rh), log2(p*rw)) spatial steps (a step may stride only h or only w). When
//       there are fewer steps than rungs of the ladder the remaining rungs are stride-1 layers, when more,
//       the extra steps stay at the last width. Then attn_layers pre-LayerNorm transformer blocks (multi-head
//       attention, block-causal in time: a token sees its own and earlier groups only; GELU MLP 4x), then a
//       1x1x1 projection to `dim`. proposed: tokens = LR + proj(HR), proj ZERO-initialised so an untrained
//       encoder equals its LR branch. without_lr: tokens = proj(HR); proj keeps the default (kaiming) init,
//       since a zero projection would make the untrained variant's memory identically zero.
//   large_patchifier (FramePack's baseline): one Conv3d with kernel = stride = (rt, p*rh, p*rw) on the
//       full-resolution latents, initialised from the DiT's patch embedding as FramePack does (each kernel
//       entry nearest-upsampled to the larger kernel and divided by the number of copies rt*rh*rw), so a
//       latent constant over a block maps exactly as the DiT would map that constant.
//
// Causality and appendability: temporal convolutions pad only on the past side (padding = kernel - stride,
// held as a per-layer cache of the last input frames, zeros at the start), so with temporal stride 2 output
// frame j depends on input frames <= 2j+1 only and group g's features depend on latent frames < (g+1)*rt;
// attention uses a KV cache of all earlier groups. The streaming entry encode_append() accepts ANY number of
// new frames, buffers an incomplete trailing group inside the caller-owned MemoryEncoderState and returns
// tokens for newly completed groups only; encoding a history in chunks equals encoding it at once.
// encode_partial() gives the tokens of the trailing incomplete group, zero-padded in time (HR latents) and
// averaging only the pixel frames present (LR), without changing the state: those tokens are provisional and
// are recomputed (differently) once the group completes through encode_append(). encode_full() = one append
// on a fresh state plus (optionally) the partial group.
//
// Padding: spatial sizes that are not multiples of (p*rh, p*rw) latent pixels are ZERO-padded on the bottom /
// right (latents: zero is the normalised mean; pixels: zero is mid-grey), never rejected. Zero (rather than
// replicate) padding keeps the padded region free of content and is what the convolutions' own padding does.
//
// Positions (memory_positions): the 3D RoPE position of a token is the centre of the latent region it covers
// in DiT-token units, time relative to the first latent frame of the section being generated (t_ref), so the
// history lies at negative times.
//
// Positional information inside the HR attention comes only from the convolutions (no RoPE): the encoder's
// tokens take their RoPE positions in the DiT.
#pragma once

#include <torch/torch.h>

#include <array>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "model/linear.h"
#include "model/memory_cross_attention.h"
#include "model/wan_dit.h"
#include "model/wan_vae.h"

namespace memoreel {

struct MemoryRates {
    int64_t rh = 4;
    int64_t rw = 4;
    int64_t rt = 2;
    // "rh x rw x rt" as "4x4x2" (spaces allowed).
    std::string str() const;
    bool operator==(const MemoryRates& o) const { return rh == o.rh && rw == o.rw && rt == o.rt; }
};

// Parses "4x4x2" (rh x rw x rt); throws std::invalid_argument naming the text on malformed input. Validation
// of the values is MemoryEncoderConfig::validate's.
MemoryRates parse_rates(const std::string& text);

struct MemoryEncoderConfig {
    int64_t rh = 4;
    int64_t rw = 4;
    int64_t rt = 2;
    std::string variant = "proposed";  // proposed | only_lr | without_lr | large_patchifier
    std::vector<int64_t> hr_channels{64, 128, 256, 512};
    int64_t attn_layers = 2;
    int64_t attn_heads = 8;
    // The cross-attention enhancement: return the penultimate HR features (before the projection) and own one
    // zero-initialised cross-attention per DiT block over them (memory_cross_attention.h).
    bool cross_attn_features = false;

    MemoryRates rates() const { return {rh, rw, rt}; }
    void set_rates(const MemoryRates& r) {
        rh = r.rh;
        rw = r.rw;
        rt = r.rt;
    }
    bool has_lr() const { return variant == "proposed" || variant == "only_lr"; }
    bool has_hr() const { return variant == "proposed" || variant == "without_lr"; }
    int64_t feature_dim() const { return hr_channels.empty() ? 0 : hr_channels.back(); }

    // JSON: {"rates": "4x4x2", "variant", "hr_channels", "attn_layers", "attn_heads", "cross_attn_features"};
    // absent fields keep their defaults.
    static MemoryEncoderConfig from_json(const nlohmann::json& j, const std::string& where);
    nlohmann::json to_json() const;
    // Rates in {1, 2, 4, 8}, a known variant, positive channels, feature width divisible by attn_heads.
    // Throws std::invalid_argument naming `where`.
    void validate(const std::string& where) const;
};

// New memory tokens: a whole number of groups starting at group `first_group` of the stream.
struct MemoryTokens {
    torch::Tensor tokens;    // [B, G, h, w, dim] fp32
    torch::Tensor features;  // [B, G, h, w, feature_dim] fp32, when cross_attn_features and an HR branch
    int64_t first_group = 0;

    int64_t groups() const { return tokens.defined() ? tokens.size(1) : 0; }
    std::array<int64_t, 3> grid() const;
    // [B, G*h*w, dim], (g, i, j) row-major: the order memory_positions() uses.
    torch::Tensor flat() const;
    torch::Tensor flat_features() const;
};

// RoPE positions [G*h*w, 3] float64 of a token grid (G, h, w) whose first group is first_group: (t, y, x) =
// ((first_group+g)*rt + (rt-1)/2 - t_ref, i*rh + (rh-1)/2, j*rw + (rw-1)/2), in latent frames (the DiT's
// temporal patch is 1) and DiT tokens (one DiT token covers p latent pixels).
torch::Tensor memory_positions(const std::array<int64_t, 3>& grid,
                               const MemoryRates& rates,
                               double t_ref,
                               int64_t first_group = 0);

// New history for encode_append. Give what the variant needs:
//   latents     [B, C_z, n, H, W] the next n >= 0 latent frames (HR variants and large_patchifier; for
//   proposed
//               it also fixes the geometry);
//   pixels      [B, 3, m, H*s, W*s] the next m >= 0 pixel frames in [-1, 1] (s the VAE's spatial factor), the
//               first call starting at pixel frame 0; or instead
//   lr_latents  [B, C_z, g, Hp/rh, Wp/rw] the LR latents of the next g groups (Hp, Wp the padded latent
//   size),
//               as lr_latents() computes them.
// A stream uses either pixels or lr_latents throughout.
struct MemoryInput {
    torch::Tensor latents;
    torch::Tensor pixels;
    torch::Tensor lr_latents;
};

// Caller-owned streaming state. Plain values: copying a state forks the stream (cached tensors are replaced,
// never modified in place). A default-constructed state starts a new history.
struct MemoryEncoderState {
    // Geometry, fixed by the first call: batch, unpadded latent height/width, padded latent height/width.
    int64_t batch = 0;
    int64_t height = 0;
    int64_t width = 0;
    int64_t padded_height = 0;
    int64_t padded_width = 0;
    int64_t lr_mode = 0;  // 0 not yet known, 1 pixels, 2 lr_latents

    int64_t latent_frames_in = 0;  // HR latent frames consumed
    int64_t pixel_frames_in = 0;   // pixel frames consumed
    int64_t hr_groups = 0;         // groups through the HR path (or the large patchifier)
    int64_t lr_groups = 0;         // groups through the LR path
    int64_t groups_emitted = 0;    // groups returned so far

    torch::Tensor hr_pending;               // [B, C_z, < rt, Hp, Wp] latent frames of the incomplete group
    torch::Tensor pix_pending;              // [B, 3, k, Hp*s, Wp*s] pixel frames of the incomplete LR group
    std::vector<torch::Tensor> conv_cache;  // per HR conv: its last (kernel_t - stride_t) input frames
    std::vector<torch::Tensor> attn_k;  // per attention layer: keys of all earlier groups [B, L, heads, d]
    std::vector<torch::Tensor> attn_v;
    // Finished branch outputs waiting for the other branch: [B, n, h, w, *].
    torch::Tensor hr_ready;
    torch::Tensor hr_ready_features;
    torch::Tensor lr_ready;

    bool started() const { return batch > 0; }
    // Named tensors (undefined ones left out) and integer counters, for session snapshots on disk.
    std::vector<std::pair<std::string, torch::Tensor>> snapshot_tensors() const;
    std::map<std::string, int64_t> snapshot_counters() const;
    // Throws c10::Error on a malformed snapshot.
    static MemoryEncoderState restore(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                                      const std::map<std::string, int64_t>& counters);
};

// One causal 3D convolution of the HR stack: kernel 3 in every dimension, spatial zero padding 1, temporal
// padding (3 - stride_t) on the past side only (taken from the cache).
class MemoryCausalConvImpl : public torch::nn::Module {
  public:
    MemoryCausalConvImpl(int64_t in, int64_t out, std::array<int64_t, 3> stride);
    // x [B, in, T, H, W] with T a multiple of stride_t; cache updated to the last cache_frames() inputs.
    torch::Tensor forward(const torch::Tensor& x, torch::Tensor& cache);
    int64_t cache_frames() const { return 3 - stride_[0]; }
    torch::nn::Conv3d conv{nullptr};

  private:
    std::array<int64_t, 3> stride_;
};
TORCH_MODULE(MemoryCausalConv);

// Pre-norm transformer block at the HR feature width.
class MemoryAttentionBlockImpl : public torch::nn::Module {
  public:
    MemoryAttentionBlockImpl(int64_t dim, int64_t heads);
    // x [B, G, n, dim]: G new groups of n tokens each; k_cache/v_cache [B, L, heads, d] (undefined at the
    // start) are extended with the new groups. Group g's queries attend to the cache and groups <= g.
    torch::Tensor forward(const torch::Tensor& x, torch::Tensor& k_cache, torch::Tensor& v_cache);
    torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr};
    Linear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr}, fc1{nullptr}, fc2{nullptr};

  private:
    int64_t heads_;
};
TORCH_MODULE(MemoryAttentionBlock);

class MemoryEncoderImpl : public torch::nn::Module {
  public:
    // dit: the DiT whose patch_embedding the LR branch shares (and large_patchifier initialises from); it is
    // held, not registered, so the encoder's parameters() are its own. vae: needed only to encode pixels in
    // the LR branch (frozen: run without gradients); may be null.
    MemoryEncoderImpl(const MemoryEncoderConfig& config, WanDiT dit, WanVAE vae = nullptr);

    const MemoryEncoderConfig& config() const { return config_; }
    int64_t dim() const { return dim_; }
    int64_t patch() const { return patch_; }
    // Memory token grid (G, h, w) for T latent frames of H x W (partial groups and padding included).
    std::array<int64_t, 3> token_grid(int64_t T, int64_t H, int64_t W) const;

    // Streaming: tokens of the groups completed by this call (possibly none: then tokens has G = 0 once the
    // geometry is known, and is undefined before). With gradients enabled the cached tensors keep their
    // graph, so a trainer can back-propagate through several appends; inference should run under NoGradGuard.
    MemoryTokens encode_append(MemoryEncoderState& state, const MemoryInput& input);
    // Tokens of every group not yet emitted, incomplete inputs completed provisionally (HR latents
    // zero-padded in time, LR pixels averaged over the frames present): normally the trailing partial group,
    // zero or one group. The state is unchanged; those groups come again, final, from later appends.
    MemoryTokens encode_partial(const MemoryEncoderState& state);
    // Fresh state, one append, then the partial group when include_partial.
    MemoryTokens encode_full(const MemoryInput& input, bool include_partial = true);

    // LR latents [B, C_z, G, Hp/rh, Wp/rw] of pixel groups: pixels [B, 3, m, H*s, W*s] holding the frames of
    // groups first_group .. (first_group + G - 1) exactly (G from m; group 0 has 4rt-3 frames, others 4rt),
    // padded_hw the padded latent size. For latent caches of trainers.
    torch::Tensor lr_latents(const torch::Tensor& pixels,
                             int64_t first_group,
                             std::array<int64_t, 2> padded_hw);

    // The pieces (public for tests and ablations).
    // LR tokens [B, G, h, w, dim] from LR latents [B, C_z, G, h*p, w*p].
    torch::Tensor lr_tokens(const torch::Tensor& lr_latents);
    // The HR conv stack on whole groups; caches in state.
    torch::Tensor hr_convs(const torch::Tensor& latents, std::vector<torch::Tensor>& caches);

    // Pixel frame range [begin, end) of group g (Wan alignment).
    int64_t group_pixel_begin(int64_t g) const { return g == 0 ? 0 : 4 * g * config_.rt - 3; }
    int64_t group_pixel_end(int64_t g) const { return 4 * (g + 1) * config_.rt - 3; }

    // HR branch (proposed, without_lr).
    torch::nn::ModuleList convs{nullptr};
    torch::nn::ModuleList blocks{nullptr};
    Linear proj{nullptr};
    // large_patchifier.
    torch::nn::Conv3d patchifier{nullptr};
    // Cross-attention enhancement (cross_attn_features with an HR branch): one per DiT block.
    torch::nn::ModuleList dit_cross_attn{nullptr};

    // The per-block extra cross-attentions over memory features [B or 1, L, feature_dim] (flat_features()),
    // as dit_velocity's ContextAttention::cross takes them; empty without the enhancement or features.
    std::vector<std::function<torch::Tensor(const torch::Tensor&)>> cross_attention(
        const torch::Tensor& features);

  private:
    struct HrOut {
        torch::Tensor tokens;    // [B, G, h, w, dim]
        torch::Tensor features;  // [B, G, h, w, feature_dim]
    };
    // Whole groups of padded latents through HR (or the patchifier), state caches updated.
    HrOut run_hr(MemoryEncoderState& state, const torch::Tensor& latents);
    // Fixes the stream's geometry on its first call and checks every input against it.
    void start(MemoryEncoderState& state, const MemoryInput& input) const;
    torch::Tensor pad_latents(const MemoryEncoderState& state, const torch::Tensor& x) const;
    torch::Tensor pad_pixels(const MemoryEncoderState& state, const torch::Tensor& x) const;
    int64_t vae_factor() const;

    MemoryEncoderConfig config_;
    WanDiT dit_;
    WanVAE vae_;
    int64_t dim_;
    int64_t patch_;
    int64_t z_dim_;
};
TORCH_MODULE(MemoryEncoder);

}  // namespace memoreel
