// The one attention entry point of every network here (DESIGN.md section 1): plain softmax(Q K^T / sqrt(d))
// V. LibTorch 2.x routes it through at::scaled_dot_product_attention (flash / memory-efficient kernels on
// GPU); LibTorch 1.13 has no public SDPA, so a manual path computes it in fp32, a block of queries at a time
// so that the score matrix stays bounded for long sequences.
#pragma once

#include <torch/torch.h>

namespace memoreel {

// q: [B, Lq, heads, head_dim]; k, v: [B, Lk, heads, head_dim]. Returns [B, Lq, heads, head_dim] in q's dtype
// (k and v are converted to q's dtype first).
// key_lens: optional [B] int64 (any device); keys at positions >= key_lens[b] are masked for sample b (the
// official `k_lens`). Every entry must be >= 1. Undefined means every key takes part.
// Scale is 1/sqrt(head_dim), no dropout, no causal mask.
torch::Tensor attention(const torch::Tensor& q,
                        const torch::Tensor& k,
                        const torch::Tensor& v,
                        const torch::Tensor& key_lens = {});

// The manual path, callable on any LibTorch version (tests compare it with the SDPA path on 2.x).
// max_score_bytes bounds the fp32 score block [q_chunk, Lk] of one sample and head processed at once.
torch::Tensor attention_reference(const torch::Tensor& q,
                                  const torch::Tensor& k,
                                  const torch::Tensor& v,
                                  const torch::Tensor& key_lens = {},
                                  int64_t max_score_bytes = int64_t(16) << 20);

// True when attention() uses at::scaled_dot_product_attention (LibTorch >= 2.0).
bool attention_uses_sdpa();

}  // namespace memoreel
