// WanModel, the Wan 2.x diffusion transformer (wan22-spec section 2), with per-token timesteps (Wan 2.2).
//
// Parameter names are the official checkpoint's (spec 2.9), so `load_module` reads an official state dict as
// is. Every linear layer is a memoreel::Linear, so LoRA adapters can be attached to any of them.
//
// The forward pass is split into pieces so that callers other than the official list-of-videos entry (the
// memory feature: extra clean tokens at arbitrary positions) run the same code:
//   patch_embed   latent [B, C, F, H, W]      -> tokens [B, L, dim] + grid (f, h, w)
//   embed_text    list of [Lt, text_dim]      -> [B, text_len, dim]   (zero-padded to text_len, then the MLP)
//   embed_time    t [B, L] per token          -> e [B, L, dim], e0 [B, L, 6, dim]
//   grid_rope     grid (+ padding)            -> RoPE tables for those tokens (see rope.h for arbitrary
//   positions) forward_tokens tokens + rope + e0/e + text -> head output [B, L, prod(patch) * out_dim]
//   unpatchify    head output of one sample   -> [out_dim, F, H, W]
// `forward` (the official signature) is exactly those pieces in that order.
//
// Numerics: the residual stream, norms, modulation, RoPE, the time embedding and the head run in fp32 (as the
// official code forces them); the other linear layers (attention, FFN, text MLP, patch embedding) run in the
// dtype of their weights, so a module converted to bf16 runs bf16 matmuls with an fp32 residual stream.
#pragma once

#include <torch/torch.h>

#include <array>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"
#include "model/linear.h"
#include "model/rope.h"

namespace memoreel {

// Sinusoidal timestep embedding (official sinusoidal_embedding_1d): t [N] -> [N, dim] float32, computed in
// float64, [cos(t w_k), sin(t w_k)] with w_k = 10000^(-k / (dim/2)).
torch::Tensor sinusoidal_embedding(int64_t dim, const torch::Tensor& t);

// Optional record of intermediate values (for tests and debugging); each entry is fp32 [B, L, dim].
struct WanDiTTrace {
    std::vector<torch::Tensor> self_attn_out;   // per block, after `o`, before the gate
    std::vector<torch::Tensor> cross_attn_out;  // per block, after `o`
    std::vector<torch::Tensor> block_out;       // per block
    torch::Tensor head_out;                     // [B, L, prod(patch) * out_dim]
};

// Keys and values of one self-attention layer, [B, L, heads, head_dim].
struct AttentionKV {
    torch::Tensor k;
    torch::Tensor v;
};

// How a block meets clean context computed beforehand (context_kv.h): `extra` keys (already RoPE-rotated) and
// values that the block's self-attention attends to besides its own tokens'; `record`, where to store the
// tokens' own keys (before RoPE, fp32) and values; `cross`, an optional extra cross-attention (the memory's
// cross-attention enhancement) whose output, given the normed tokens that the text cross-attention sees, is
// added to the residual stream right after it.
struct BlockContext {
    const AttentionKV* extra = nullptr;
    AttentionKV* record = nullptr;
    std::function<torch::Tensor(const torch::Tensor&)> cross;
};

// RMSNorm over the last dim (WanRMSNorm): computed in fp32, returns fp32.
class WanRMSNormImpl : public torch::nn::Module {
  public:
    WanRMSNormImpl(int64_t dim, double eps);
    torch::Tensor forward(const torch::Tensor& x);
    torch::Tensor weight;

  private:
    double eps_;
};
TORCH_MODULE(WanRMSNorm);

// Linear -> activation -> Linear, with children named "0" and "2" as the official nn.Sequential
// (text_embedding, time_embedding, ffn). Matmuls run in `dtype`, the activation in fp32; returns fp32.
class WanMlpImpl : public torch::nn::Module {
  public:
    enum class Activation { kSiLU, kGeluTanh };
    WanMlpImpl(int64_t in, int64_t hidden, int64_t out, Activation activation);
    torch::Tensor forward(const torch::Tensor& x, torch::ScalarType dtype);
    // The dtype of the weights (what the caller normally runs the matmuls in).
    torch::ScalarType weight_dtype() const { return fc0->weight.scalar_type(); }
    Linear fc0{nullptr};  // "0"
    Linear fc2{nullptr};  // "2"

  private:
    Activation activation_;
};
TORCH_MODULE(WanMlp);

// time_projection = Sequential(SiLU, Linear(dim, 6 dim)): the child is "1". fp32 in, fp32 out.
class WanTimeProjectionImpl : public torch::nn::Module {
  public:
    WanTimeProjectionImpl(int64_t dim, int64_t out);
    torch::Tensor forward(const torch::Tensor& e);
    Linear proj{nullptr};  // "1"
};
TORCH_MODULE(WanTimeProjection);

// Self- or cross-attention of a block (q, k, v, o and the RMSNorms norm_q/norm_k over the full width).
class WanAttentionImpl : public torch::nn::Module {
  public:
    WanAttentionImpl(int64_t dim, int64_t num_heads, bool qk_norm, double eps);
    // x: [B, Lq, dim] fp32. context undefined: self-attention over x, with `rope` (required) applied to q and
    // k and keys >= key_lens masked. context defined ([B, Lk, dim]): cross-attention, no RoPE, key_lens as
    // given. Returns the output of `o`, fp32 [B, Lq, dim]. `block` (self-attention only, no key_lens): extra
    // keys/values to attend to and where to record x's own (see BlockContext).
    torch::Tensor forward(const torch::Tensor& x,
                          const torch::Tensor& context,
                          const RopeTables* rope,
                          const torch::Tensor& key_lens,
                          const BlockContext* block = nullptr);
    Linear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr};
    WanRMSNorm norm_q{nullptr}, norm_k{nullptr};  // null when qk_norm is off

  private:
    int64_t num_heads_;
};
TORCH_MODULE(WanAttention);

// WanAttentionBlock: modulated self-attention, cross-attention (LayerNorm norm3, no gate), modulated FFN.
class WanAttentionBlockImpl : public torch::nn::Module {
  public:
    explicit WanAttentionBlockImpl(const WanDiTConfig& config);
    // x [B, L, dim] fp32; e0 [B, L, 6, dim]; text [B, Lt, dim]; rope for the L tokens; key_lens [B] or
    // undefined; context: clean context computed beforehand (see BlockContext).
    torch::Tensor forward(const torch::Tensor& x,
                          const torch::Tensor& e0,
                          const torch::Tensor& text,
                          const RopeTables& rope,
                          const torch::Tensor& key_lens,
                          WanDiTTrace* trace = nullptr,
                          const BlockContext* context = nullptr);
    torch::Tensor modulation;  // [1, 6, dim]
    WanAttention self_attn{nullptr};
    torch::nn::LayerNorm norm3{nullptr};  // null when cross_attn_norm is off
    WanAttention cross_attn{nullptr};
    WanMlp ffn{nullptr};

  private:
    int64_t dim_;
    double eps_;
};
TORCH_MODULE(WanAttentionBlock);

// Output head: LayerNorm (no affine) modulated by e and head.modulation, then Linear to prod(patch) *
// out_dim.
class WanHeadImpl : public torch::nn::Module {
  public:
    WanHeadImpl(int64_t dim, int64_t out_features, double eps);
    torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& e);  // fp32
    torch::Tensor modulation;                                               // [1, 2, dim]
    Linear head{nullptr};

  private:
    int64_t dim_;
    double eps_;
};
TORCH_MODULE(WanHead);

// Patch-embedded tokens of a batch of equally sized latents.
struct WanPatchTokens {
    torch::Tensor tokens;         // [B, f*h*w, dim] fp32, (f, h, w) row-major, w fastest
    std::array<int64_t, 3> grid;  // (f, h, w) token grid
};

struct WanTimeEmbedding {
    torch::Tensor e;   // [B, L, dim] fp32, the time_embedding output (used by the head)
    torch::Tensor e0;  // [B, L, 6, dim] fp32, the time_projection output (used by every block)
};

class WanDiTImpl : public torch::nn::Module {
  public:
    explicit WanDiTImpl(const WanDiTConfig& config);

    // The official WanModel.forward: x a list of latents [C_in, F, H, W] (sizes may differ), t [B, seq_len]
    // per-token timesteps (padding tokens included), context a list of text features [Lt <= text_len,
    // text_dim], seq_len >= the largest token count. Tokens are zero-padded to seq_len and keys masked by
    // each sample's real length; text is zero-padded to text_len with no cross-attention mask. Returns
    // [C_out, F, H, W] fp32 per sample.
    std::vector<torch::Tensor> forward(const std::vector<torch::Tensor>& x,
                                       const torch::Tensor& t,
                                       const std::vector<torch::Tensor>& context,
                                       int64_t seq_len,
                                       WanDiTTrace* trace = nullptr);

    // latent [B, C_in, F, H, W] (F, H, W divisible by the patch) -> tokens [B, L, dim] fp32 and the token
    // grid.
    WanPatchTokens patch_embed(const torch::Tensor& x);
    // Text features, each [Lt <= text_len, text_dim] -> [B, text_len, dim] fp32.
    torch::Tensor embed_text(const std::vector<torch::Tensor>& context);
    // Per-token timesteps t [B, L] (float, typically sigma * 1000) -> e, e0.
    WanTimeEmbedding embed_time(const torch::Tensor& t);
    // RoPE tables [length, head_dim/2] for a token grid at the official integer positions, identity rows for
    // the padding up to `length` (0 means no padding).
    RopeTables grid_rope(const std::array<int64_t, 3>& grid, int64_t length = 0) const;
    // The blocks and the head on an arbitrary token sequence. tokens [B, L, dim]; rope tables [B, L, D/2] or
    // [L, D/2] (D = head_dim); e0 [B, L, 6, dim]; e [B, L, dim]; text [B, Lt, dim] (from embed_text);
    // key_lens [B] int64 or undefined (all keys valid). Returns [B, L, prod(patch) * out_dim] fp32.
    torch::Tensor forward_tokens(const torch::Tensor& tokens,
                                 const RopeTables& rope,
                                 const torch::Tensor& e0,
                                 const torch::Tensor& e,
                                 const torch::Tensor& text,
                                 const torch::Tensor& key_lens,
                                 WanDiTTrace* trace = nullptr);
    // Head output of one sample [>= f*h*w, prod(patch) * out_dim] -> [out_dim, f*pt, h*ph, w*pw]; rows beyond
    // the grid (padding) are dropped.
    torch::Tensor unpatchify(const torch::Tensor& head_out, const std::array<int64_t, 3>& grid) const;

    // Spec 2.8: Linear xavier-uniform / zero bias, patch embedding xavier on its [dim, in*prod(patch)] view,
    // text/time embedding weights N(0, 0.02), head.head.weight zero, modulations randn/sqrt(dim), norms 1/0.
    // Called by the constructor (for training from scratch); loading a checkpoint overwrites it.
    void init_weights();

    // The official parameter names and shapes for a config, in named_parameters() order, computed without
    // building the module (e.g. to check a checkpoint or count a 5B model's parameters).
    static std::vector<std::pair<std::string, std::vector<int64_t>>> parameter_shapes(
        const WanDiTConfig& config);

    const WanDiTConfig& config() const { return config_; }
    WanAttentionBlockImpl& block(int64_t i) { return *blocks->ptr<WanAttentionBlockImpl>(i); }
    // The dtype the block matmuls run in (that of the weights).
    torch::ScalarType compute_dtype() const { return patch_embedding->weight.scalar_type(); }

    torch::nn::Conv3d patch_embedding{nullptr};
    WanMlp text_embedding{nullptr};
    WanMlp time_embedding{nullptr};
    WanTimeProjection time_projection{nullptr};
    torch::nn::ModuleList blocks{nullptr};
    WanHead head{nullptr};

  private:
    WanDiTConfig config_;
};
TORCH_MODULE(WanDiT);

}  // namespace memoreel
