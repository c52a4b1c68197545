// The umT5 text encoder of Wan (wan/modules/t5.py T5Encoder; spec section 5), module for module so that
// named_parameters() yields the official checkpoint names (token_embedding.weight,
// blocks.N.attn.q.weight, ...).
//
// Numerics follow the official code: RMS norms in float32 (then cast to the weight dtype for bf16 weights),
// attention without 1/sqrt(d) scaling plus a relative position bias, padding keys filled with
// finfo(dtype).min, softmax in float32, gated-GELU (tanh) feed-forward. The output is float32 [B, L, dim] at
// every position; the pipeline keeps the first seq_len rows of each sample (text_context()).
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "model/config.h"
#include "model/linear.h"

namespace memoreel {

// T5 "LayerNorm": x * rsqrt(mean(x^2) + eps) * weight, no mean subtraction, no bias.
class T5RMSNormImpl : public torch::nn::Module {
  public:
    explicit T5RMSNormImpl(int64_t dim, double eps = 1e-6);
    torch::Tensor forward(const torch::Tensor& x);
    torch::Tensor weight;

  private:
    double eps_;
};
TORCH_MODULE(T5RMSNorm);

// Bucket of a relative position rel = key - query (T5 _relative_position_bucket). Bidirectional: buckets
// [0, n/2) for rel <= 0 and [n/2, n) for rel > 0; within a half, exact up to n/4 and logarithmic up to
// max_distance. Computed in float32 like the reference so that boundary cases round the same way.
torch::Tensor relative_position_bucket(const torch::Tensor& rel_pos,
                                       int64_t num_buckets,
                                       bool bidirectional,
                                       int64_t max_distance);

// Per-head bias table over relative-position buckets; forward(lq, lk) gives [1, heads, lq, lk].
class T5RelativeEmbeddingImpl : public torch::nn::Module {
  public:
    T5RelativeEmbeddingImpl(int64_t num_buckets,
                            int64_t num_heads,
                            bool bidirectional,
                            int64_t max_distance = 128);
    torch::Tensor forward(int64_t lq, int64_t lk);
    // The buckets of key - query for lq x lk positions (int64 [lq, lk]).
    torch::Tensor buckets(int64_t lq, int64_t lk) const;

    torch::nn::Embedding embedding{nullptr};
    int64_t num_buckets() const { return num_buckets_; }
    int64_t num_heads() const { return num_heads_; }

  private:
    int64_t num_buckets_;
    int64_t num_heads_;
    bool bidirectional_;
    int64_t max_distance_;
};
TORCH_MODULE(T5RelativeEmbedding);

class T5AttentionImpl : public torch::nn::Module {
  public:
    T5AttentionImpl(int64_t dim, int64_t dim_attn, int64_t num_heads);
    // x [B, L, dim]; mask [B, L] (nonzero = real token) or undefined;
    // pos_bias [1 or B, heads, L, L] or undefined.
    torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask, const torch::Tensor& pos_bias);

    Linear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr};
    int64_t dim() const { return dim_; }
    int64_t dim_attn() const { return dim_attn_; }
    int64_t num_heads() const { return num_heads_; }

  private:
    int64_t dim_;
    int64_t dim_attn_;
    int64_t num_heads_;
};
TORCH_MODULE(T5Attention);

// fc2(fc1(x) * gelu_tanh(gate(x))). `gate` is a list holding the Linear at index 0 (the official
// nn.Sequential(Linear, GELU)), which gives the checkpoint name ffn.gate.0.weight.
class T5FeedForwardImpl : public torch::nn::Module {
  public:
    T5FeedForwardImpl(int64_t dim, int64_t dim_ffn);
    torch::Tensor forward(const torch::Tensor& x);

    torch::nn::ModuleList gate{nullptr};
    Linear gate_proj{nullptr};  // gate[0], held typed
    Linear fc1{nullptr}, fc2{nullptr};
    int64_t dim() const { return dim_; }
    int64_t dim_ffn() const { return dim_ffn_; }

  private:
    int64_t dim_;
    int64_t dim_ffn_;
};
TORCH_MODULE(T5FeedForward);

// GELU, tanh approximation, written out as the reference's module does:
// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
torch::Tensor t5_gelu(const torch::Tensor& x);

// Pre-norm encoder block (official T5SelfAttention): x + attn(norm1 x), then x + ffn(norm2 x).
class T5EncoderBlockImpl : public torch::nn::Module {
  public:
    T5EncoderBlockImpl(const UMT5Config& config);
    // pos_bias: the shared bias when shared_pos, else undefined (the block uses its own table).
    torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask, const torch::Tensor& pos_bias);

    T5RMSNorm norm1{nullptr};
    T5Attention attn{nullptr};
    T5RMSNorm norm2{nullptr};
    T5FeedForward ffn{nullptr};
    T5RelativeEmbedding pos_embedding{nullptr};  // null when shared_pos
};
TORCH_MODULE(T5EncoderBlock);

class UMT5EncoderImpl : public torch::nn::Module {
  public:
    explicit UMT5EncoderImpl(const UMT5Config& config);

    // ids int64 [B, L], mask [B, L] (any integer/bool/float dtype; nonzero = real token, EOS included) or
    // undefined (no padding). Returns float32 [B, L, dim]. When block_outputs is given, it receives the
    // output of every block (before the final norm), for tests and debugging.
    torch::Tensor forward(const torch::Tensor& ids,
                          const torch::Tensor& mask = {},
                          std::vector<torch::Tensor>* block_outputs = nullptr);

    // The official init_weights: norms 1, token embedding N(0, 1), q N(0, (dim*dim_attn)^-1/2), k/v N(0,
    // dim^-1/2), o N(0, (heads*dim_attn)^-1/2), gate/fc1 N(0, dim^-1/2), fc2 N(0, dim_ffn^-1/2), relative
    // tables N(0, (2*buckets*heads)^-1/2). Run by the constructor; uses the default generator.
    void init_weights();

    const UMT5Config& config() const { return config_; }
    // The position bias block `index` adds (the shared one when shared_pos), [1, heads, L, L].
    torch::Tensor position_bias(int64_t index, int64_t length);

    torch::nn::Embedding token_embedding{nullptr};
    T5RelativeEmbedding pos_embedding{nullptr};  // only when shared_pos
    torch::nn::ModuleList blocks{nullptr};
    T5RMSNorm norm{nullptr};

  private:
    UMT5Config config_;
};
TORCH_MODULE(UMT5Encoder);

// Per sample, the first seq_len = mask.sum() rows of the encoder output (what Wan hands to the DiT).
std::vector<torch::Tensor> text_context(const torch::Tensor& hidden, const torch::Tensor& mask);

// Maps a Hugging Face UMT5EncoderModel / Diffusers text_encoder tensor name to the official name (spec 5),
// for LoadOptions::rename. Names it does not know are returned unchanged (so strict loading reports them).
// Both `shared.weight` and `encoder.embed_tokens.weight` map to token_embedding.weight (they are tied).
std::string umt5_hf_to_official_name(const std::string& hf_name);

}  // namespace memoreel
