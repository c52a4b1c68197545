// Building blocks of the Wan 2.1 / 2.2 causal 3D VAE (reference/wan22-spec.md section 4): causal convolutions
// with the official frame cache, RMS norm, residual and attention blocks, resampling, and the 2.2 block
// shortcuts (AvgDown3D / DupUp3D). Internal to model/wan_vae.{h,cpp}; nothing here knows the whole network.
//
// Streaming: every temporal operator takes a CacheCursor that walks a FeatCache (the official `feat_cache`
// list) in forward order. The operators accept any number of frames per call, and a call with n frames gives
// exactly what the official code gives for those frames fed one official chunk at a time (one latent frame
// per decoder chunk; [0], [1..4], [5..8] per encoder chunk), so callers may group chunks when that is faster.
#pragma once

#include <torch/torch.h>

#include <array>
#include <memory>
#include <string>
#include <vector>

namespace memoreel::wan_vae {

// ---------------------------------------------------------------------------------------------- cache

// The official feat_cache: one entry per cached operator, in forward order. An undefined tensor is the
// official `None` (nothing seen yet); `rep` marks the "Rep" state of an upsample3d time conv.
struct FeatCache {
    std::vector<torch::Tensor> feats;
    std::vector<uint8_t> rep;

    size_t size() const { return feats.size(); }
    bool empty() const { return feats.empty(); }
};

// Walks a FeatCache during one pass (the official `feat_idx`), growing it on the first pass.
class CacheCursor {
  public:
    // first_chunk: this pass holds the first latent frame (DupUp3D trims its first frames then).
    CacheCursor(FeatCache& cache, bool first_chunk) : cache_(cache), first_chunk_(first_chunk) {}

    // The next slot in forward order.
    size_t next();
    torch::Tensor& feat(size_t slot) { return cache_.feats[slot]; }
    bool rep(size_t slot) const { return cache_.rep[slot] != 0; }
    void set_rep(size_t slot, bool rep) { cache_.rep[slot] = rep ? 1 : 0; }
    bool first_chunk() const { return first_chunk_; }
    size_t used() const { return index_; }

  private:
    FeatCache& cache_;
    bool first_chunk_;
    size_t index_ = 0;
};

// ---------------------------------------------------------------------------------------------- kernels

// Convolution of x [B,C,T,H,W] (or [N,C,H,W]) with an explicit zero padding, in the weight's dtype (x is cast
// for the call and the result returned in x's dtype). On CPU, oneDNN's convolution is used directly when it
// is available and a one-time self-check agrees with at::convolution: LibTorch 1.13's at::conv3d takes a slow
// im2col path for batch-1 video tensors (4x slower). 1x1(x1) kernels run as a matmul.
torch::Tensor conv(const torch::Tensor& x,
                   const torch::Tensor& weight,
                   const torch::Tensor& bias,
                   at::IntArrayRef stride,
                   at::IntArrayRef padding);

// The same through at::convolution only (the reference the fast path is checked against).
torch::Tensor conv_reference(const torch::Tensor& x,
                             const torch::Tensor& weight,
                             const torch::Tensor& bias,
                             at::IntArrayRef stride,
                             at::IntArrayRef padding);

// Whether conv() uses oneDNN directly for fp32 / bf16 weights (after the self-check).
bool fast_conv_enabled(torch::Dtype dtype);

// F.normalize(x, dim=1) * sqrt(C) * gamma, optionally followed by SiLU, in fp32 whatever gamma's dtype.
// A fused CPU loop when no gradient is needed (F.normalize's strided channel reduction is ~6x slower).
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& gamma, bool silu);

// ---------------------------------------------------------------------------------------------- modules

// A module that can sit in an encoder or decoder stage list (the official nn.Sequential of mixed blocks).
class VaeLayer : public torch::nn::Module {
  public:
    explicit VaeLayer(const std::string& name) : torch::nn::Module(name) {}
    virtual torch::Tensor forward(const torch::Tensor& x, CacheCursor& cursor) = 0;
    // Number of cache slots this layer uses per pass.
    virtual size_t cache_slots() const = 0;
};

// A parameter-free container that only gives its children their official names (nn.Sequential indices).
std::shared_ptr<torch::nn::Module> make_holder(const std::string& type_name = "Sequential");

// CausalConv3d: a Conv3d whose temporal padding 2*pt is applied in front only; H and W padded on both sides.
class CausalConv3dImpl : public torch::nn::Module {
  public:
    CausalConv3dImpl(int64_t in,
                     int64_t out,
                     std::array<int64_t, 3> kernel,
                     std::array<int64_t, 3> stride = {1, 1, 1},
                     std::array<int64_t, 3> padding = {0, 0, 0},
                     const torch::TensorOptions& options = {});

    // The official forward(x, cache_x): cache (previous input frames) replaces part of the front padding.
    torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cache = {});
    // The official cached call site: keeps the last 2 input frames (the previous chunk's last frame is kept
    // too when x has only 1 frame) in the next cache slot, and convolves with the slot's old content.
    // With norm_gamma, the conv's input is SiLU(RMS_norm(x) * gamma) (the official norm-SiLU-conv sequence),
    // computed straight into the convolution's padded input buffer.
    torch::Tensor forward_cached(const torch::Tensor& x,
                                 CacheCursor& cursor,
                                 const torch::Tensor& norm_gamma = {});
    void reset_parameters();

    torch::Tensor weight;
    torch::Tensor bias;

  private:
    std::array<int64_t, 3> stride_;
    std::array<int64_t, 3> padding_;
};
TORCH_MODULE(CausalConv3d);

// nn.Conv2d, applied frame by frame to [B,C,T,H,W] (as a (1,k,k) 3D convolution, which needs no relayout).
class Conv2dImpl : public torch::nn::Module {
  public:
    Conv2dImpl(int64_t in,
               int64_t out,
               int64_t kernel,
               int64_t stride = 1,
               int64_t padding = 0,
               const torch::TensorOptions& options = {});
    // x: [B,C,T,H,W] with the extra zero padding (left, right, top, bottom) first (ZeroPad2d).
    torch::Tensor forward(const torch::Tensor& x, std::array<int64_t, 4> extra_pad = {0, 0, 0, 0});
    void reset_parameters();

    torch::Tensor weight;
    torch::Tensor bias;

  private:
    int64_t stride_;
    int64_t padding_;
};
TORCH_MODULE(Conv2d);

// RMS_norm: gamma is [C,1,1,1] for 5-D use (images=false) or [C,1,1] inside the attention block
// (images=true).
class RMSNormImpl : public torch::nn::Module {
  public:
    RMSNormImpl(int64_t dim, bool images, const torch::TensorOptions& options = {});
    torch::Tensor forward(const torch::Tensor& x, bool silu = false);

    torch::Tensor gamma;
};
TORCH_MODULE(RMSNorm);

// ResidualBlock: residual = [RMS_norm, SiLU, CausalConv3d 3, RMS_norm, SiLU, Dropout(0), CausalConv3d 3],
// shortcut = CausalConv3d 1 when in != out. Parameter names residual.{0,2,3,6}, shortcut.
class ResidualBlockImpl : public VaeLayer {
  public:
    ResidualBlockImpl(int64_t in, int64_t out, const torch::TensorOptions& options = {});
    torch::Tensor forward(const torch::Tensor& x, CacheCursor& cursor) override;
    size_t cache_slots() const override { return 2; }

    RMSNorm norm1{nullptr}, norm2{nullptr};
    CausalConv3d conv1{nullptr}, conv2{nullptr}, shortcut{nullptr};
};
TORCH_MODULE(ResidualBlock);

// AttentionBlock: single-head spatial self-attention per frame (norm, to_qkv, proj), plus the input.
class AttentionBlockImpl : public VaeLayer {
  public:
    AttentionBlockImpl(int64_t dim, const torch::TensorOptions& options = {});
    torch::Tensor forward(const torch::Tensor& x, CacheCursor& cursor) override;
    torch::Tensor forward(const torch::Tensor& x);
    size_t cache_slots() const override { return 0; }

    RMSNorm norm{nullptr};
    Conv2d to_qkv{nullptr}, proj{nullptr};
};
TORCH_MODULE(AttentionBlock);

enum class ResampleMode { Upsample2d, Upsample3d, Downsample2d, Downsample3d };

// Resample: spatial 2x down (ZeroPad2d right/bottom + stride-2 conv, key resample.1) or up (nearest 2x +
// conv, key resample.1), with a temporal time_conv for the 3d modes. halve_up: the 2.1 upsample convs output
// dim/2.
class ResampleImpl : public VaeLayer {
  public:
    ResampleImpl(int64_t dim, ResampleMode mode, bool halve_up, const torch::TensorOptions& options = {});
    torch::Tensor forward(const torch::Tensor& x, CacheCursor& cursor) override;
    size_t cache_slots() const override {
        return mode_ == ResampleMode::Upsample3d || mode_ == ResampleMode::Downsample3d ? 1 : 0;
    }
    ResampleMode mode() const { return mode_; }

    Conv2d conv{nullptr};
    CausalConv3d time_conv{nullptr};

  private:
    torch::Tensor upsample_time(const torch::Tensor& x, CacheCursor& cursor);
    torch::Tensor downsample_time(const torch::Tensor& x, CacheCursor& cursor);
    torch::Tensor time_conv_interleaved(const torch::Tensor& x, const torch::Tensor& cache);

    ResampleMode mode_;
};
TORCH_MODULE(Resample);

// 2.2 encoder block shortcut (no parameters, never cached): zero-pad time in front to a multiple of ft, fold
// the ft*fs*fs sub-positions into channels, average groups of channels down to `out`.
torch::Tensor avg_down_3d(const torch::Tensor& x, int64_t out_channels, int64_t ft, int64_t fs);
// 2.2 decoder block shortcut: repeat channels, unfold them into ft*fs*fs sub-positions; on the first chunk
// the first ft-1 frames are dropped (to match the main path, whose first latent frame gives one frame).
torch::Tensor dup_up_3d(const torch::Tensor& x,
                        int64_t out_channels,
                        int64_t ft,
                        int64_t fs,
                        bool first_chunk);

// 2.2 Down_ResidualBlock: `downsamples` = mult ResidualBlocks (+ Resample), plus AvgDown3D of the input.
class DownResidualBlockImpl : public VaeLayer {
  public:
    DownResidualBlockImpl(int64_t in,
                          int64_t out,
                          int64_t mult,
                          bool temporal,
                          bool down,
                          const torch::TensorOptions& options = {});
    torch::Tensor forward(const torch::Tensor& x, CacheCursor& cursor) override;
    size_t cache_slots() const override;

    std::vector<std::shared_ptr<VaeLayer>> layers;

  private:
    int64_t out_;
    int64_t ft_;
    int64_t fs_;
};
TORCH_MODULE(DownResidualBlock);

// 2.2 Up_ResidualBlock: `upsamples` = mult ResidualBlocks (+ Resample), plus DupUp3D of the input when up.
class UpResidualBlockImpl : public VaeLayer {
  public:
    UpResidualBlockImpl(int64_t in,
                        int64_t out,
                        int64_t mult,
                        bool temporal,
                        bool up,
                        const torch::TensorOptions& options = {});
    torch::Tensor forward(const torch::Tensor& x, CacheCursor& cursor) override;
    size_t cache_slots() const override;

    std::vector<std::shared_ptr<VaeLayer>> layers;

  private:
    int64_t out_;
    int64_t ft_;
    bool up_;
};
TORCH_MODULE(UpResidualBlock);

// 2.2 pixel shuffle: [B,C,T,2h,2w] -> [B,4C,T,h,w], channel index c*4 + r*2 + q (q: row offset, r: column
// offset), and its inverse.
torch::Tensor patchify(const torch::Tensor& x, int64_t patch);
torch::Tensor unpatchify(const torch::Tensor& x, int64_t patch);

}  // namespace memoreel::wan_vae
