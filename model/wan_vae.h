// The Wan 2.1 and Wan 2.2 causal 3D VAEs (reference/wan22-spec.md section 4), one code base for both:
//   2.1: 4x8x8 compression, 3 channels in and out, flat stage lists, upsample convs that halve the width;
//   2.2: 4x16x16 compression through a pixel patchify (2x) before the encoder, Down/Up_ResidualBlock stages
//   with
//        parameter-free AvgDown3D / DupUp3D shortcuts, full-width upsample convs, a separate decoder width.
// named_parameters() equals the official state_dict names, so official weights load with load_module().
//
// Whole clips go through encode()/decode(), which reproduce the official wrapper (chunks [0], [1..4], [5..8]
// when encoding, one latent frame at a time when decoding, normalised latents, decode clamped to [-1, 1]).
// Streaming goes through encode_chunk()/decode_chunk() with a caller-owned VaeEncoderState / VaeDecoderState
// (the official feat_cache, held outside the module): a clip coded in pieces gives the same result as coded
// at once. The module itself holds no per-clip state, so one VAE can serve any number of sessions.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"
#include "model/wan_vae_blocks.h"

namespace memoreel {

// A coding state as named tensors plus integer counters, for session snapshots on disk. The tensors are
// shared with the state (states never modify a cached tensor in place, they replace it), so taking a snapshot
// is cheap.
struct VaeStateSnapshot {
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    std::map<std::string, int64_t> counters;
};

// The causal cache of one encoder or decoder stream. Plain values: copying a state forks the stream (the copy
// and the original can be continued independently); a default-constructed state starts a new clip.
class VaeCodingState {
  public:
    bool started() const { return frames_in_ > 0; }
    // Frames consumed (pixel frames for the encoder, latent frames for the decoder) and produced so far.
    int64_t frames_in() const { return frames_in_; }
    int64_t frames_out() const { return frames_out_; }
    // Back to the start of a new clip.
    void reset();
    // Bytes held by the cached tensors.
    int64_t bytes() const;
    // Tensors "feat.<slot>" and counters "kind", "format", "slots", "frames_in", "frames_out", "batch",
    // "height", "width" and "rep.<slot>" (the official "Rep" marker of an upsample3d cache).
    VaeStateSnapshot snapshot() const;

  protected:
    explicit VaeCodingState(int64_t kind) : kind_(kind) {}
    void restore_snapshot(const VaeStateSnapshot& snapshot);

    friend class WanVAEImpl;
    wan_vae::FeatCache cache_;
    int64_t kind_;
    int64_t frames_in_ = 0;
    int64_t frames_out_ = 0;
    // Geometry of the stream (batch, input height and width), fixed by its first call.
    int64_t batch_ = 0;
    int64_t height_ = 0;
    int64_t width_ = 0;
};

// Encoder stream: feed 1+4k frames first, then 4k frames per call; each call yields its latent frames.
class VaeEncoderState : public VaeCodingState {
  public:
    VaeEncoderState() : VaeCodingState(kKind) {}
    // Throws c10::Error when the snapshot is not an encoder state or is malformed.
    static VaeEncoderState restore(const VaeStateSnapshot& snapshot);
    static constexpr int64_t kKind = 1;
};

// Decoder stream: feed any number of latent frames per call; latent frame 0 gives 1 frame, later ones 4 each.
class VaeDecoderState : public VaeCodingState {
  public:
    VaeDecoderState() : VaeCodingState(kKind) {}
    static VaeDecoderState restore(const VaeStateSnapshot& snapshot);
    static constexpr int64_t kKind = 2;
};

// What the official encode computes, for the caller and for parity tests.
struct VaeEncoding {
    torch::Tensor mu;       // normalised latents (mu_raw - mean) * (1/std): the official encode output
    torch::Tensor log_var;  // second half of conv1's output (computed and dropped by the official code)
    torch::Tensor mu_raw;   // first half of conv1's output
    torch::Tensor enc_out;  // encoder output before conv1, [B, 2 z_dim, T', h, w]
};

namespace wan_vae {

// Encoder3d: conv1, downsamples (2.1: flat list of blocks; 2.2: Down_ResidualBlocks), middle (Res, Attn,
// Res), head (RMS_norm, SiLU, CausalConv3d -> 2 z_dim).
class Encoder3dImpl : public torch::nn::Module {
  public:
    Encoder3dImpl(const WanVAEConfig& config, const torch::TensorOptions& options = {});
    torch::Tensor forward(const torch::Tensor& x, CacheCursor& cursor);
    size_t cache_slots() const;

    CausalConv3d conv1{nullptr};
    std::vector<std::shared_ptr<VaeLayer>> downsamples;
    std::vector<std::shared_ptr<VaeLayer>> middle;
    RMSNorm head_norm{nullptr};
    CausalConv3d head_conv{nullptr};
};
TORCH_MODULE(Encoder3d);

// Decoder3d: conv1, middle, upsamples (2.1: flat list; 2.2: Up_ResidualBlocks), head -> 3 (2.1) or 12 (2.2).
class Decoder3dImpl : public torch::nn::Module {
  public:
    Decoder3dImpl(const WanVAEConfig& config, const torch::TensorOptions& options = {});
    torch::Tensor forward(const torch::Tensor& x, CacheCursor& cursor);
    size_t cache_slots() const;

    CausalConv3d conv1{nullptr};
    std::vector<std::shared_ptr<VaeLayer>> middle;
    std::vector<std::shared_ptr<VaeLayer>> upsamples;
    RMSNorm head_norm{nullptr};
    CausalConv3d head_conv{nullptr};
};
TORCH_MODULE(Decoder3d);

}  // namespace wan_vae

class WanVAEImpl : public torch::nn::Module {
  public:
    // options: dtype and device of the parameters (kMeta builds the structure without allocating, e.g. to
    // count parameters). Parameters start with init_weights().
    explicit WanVAEImpl(const WanVAEConfig& config, const torch::TensorOptions& options = {});

    const WanVAEConfig& config() const { return config_; }

    // Training from scratch, as the official modules initialise: convolutions torch's default
    // (kaiming-uniform a=sqrt(5), bias uniform +-1/sqrt(fan_in)), RMS_norm gammas 1, attention output
    // projection weights 0.
    void init_weights();

    // ---- whole clips (the official wrapper) ----
    // video [B, 3, T, H, W] in [-1, 1], H and W multiples of spatial_factor(). As the official code, frames
    // after the last whole chunk (T-1 not a multiple of 4) are ignored. Returns normalised mu [B, z,
    // 1+(T-1)/4, h, w].
    torch::Tensor encode(const torch::Tensor& video);
    VaeEncoding encode_all(const torch::Tensor& video);
    // z: normalised latents [B, z, T', h, w] -> video [B, 3, 1+4(T'-1), H, W], clamped to [-1, 1] when clamp.
    torch::Tensor decode(const torch::Tensor& z, bool clamp = true);

    // ---- streaming ----
    // video: the next frames of the clip (1+4k on the first call, 4k later); returns the new latent frames.
    VaeEncoding encode_chunk(VaeEncoderState& state, const torch::Tensor& video);
    // z: the next normalised latent frames (any number >= 1); returns the new video frames.
    torch::Tensor decode_chunk(VaeDecoderState& state, const torch::Tensor& z, bool clamp = true);

    // (mu_raw - mean) * inv_std and its inverse z / inv_std + mean (the official scale = [mean, 1/std]).
    torch::Tensor normalize(const torch::Tensor& mu_raw) const;
    torch::Tensor denormalize(const torch::Tensor& z) const;

    int64_t latent_frames(int64_t frames) const { return frames < 1 ? 0 : 1 + (frames - 1) / 4; }
    int64_t video_frames(int64_t latent_frames) const {
        return latent_frames < 1 ? 0 : 1 + 4 * (latent_frames - 1);
    }
    size_t encoder_cache_slots() const { return encoder_slots_; }
    size_t decoder_cache_slots() const { return decoder_slots_; }

    // How many official chunks (one latent frame each) go through the network in one pass. 1 (the default) is
    // the official loop; larger values give the same result (the cache semantics are per frame) with fewer,
    // larger convolutions and more memory.
    void set_chunks_per_pass(int64_t n);
    int64_t chunks_per_pass() const { return chunks_per_pass_; }

    wan_vae::Encoder3d encoder{nullptr};
    wan_vae::CausalConv3d conv1{nullptr};  // 2 z -> 2 z, 1x1x1: gives mu and log_var
    wan_vae::CausalConv3d conv2{nullptr};  // z -> z, 1x1x1: applied to latents before the decoder
    wan_vae::Decoder3d decoder{nullptr};

  private:
    void check_video(const VaeCodingState& state, const torch::Tensor& video) const;

    WanVAEConfig config_;
    torch::Tensor mean_;     // [z] fp32 (0 when the config has none)
    torch::Tensor inv_std_;  // [z] fp32, 1/std computed in fp32 as the official wrapper does
    size_t encoder_slots_ = 0;
    size_t decoder_slots_ = 0;
    int64_t chunks_per_pass_ = 1;
};
TORCH_MODULE(WanVAE);

}  // namespace memoreel
