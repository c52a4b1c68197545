#include "model/attention.h"

#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace memoreel {

namespace {

void check_shapes(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
    TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
                "attention: q, k, v must be [B, L, heads, head_dim], got ", q.sizes(), ", ", k.sizes(), ", ",
                v.sizes());
    TORCH_CHECK(k.sizes() == v.sizes(), "attention: k and v shapes differ: ", k.sizes(), " vs ", v.sizes());
    TORCH_CHECK(q.size(0) == k.size(0) && q.size(2) == k.size(2) && q.size(3) == k.size(3), "attention: q ",
                q.sizes(), " does not match k ", k.sizes());
}

// The boolean keep-mask [B, 1, 1, Lk] (true = the key takes part), or an undefined tensor when no key is
// masked (which lets SDPA pick its fastest kernel).
torch::Tensor key_mask(const torch::Tensor& key_lens,
                       int64_t batch,
                       int64_t lk,
                       const torch::Device& device) {
    if (!key_lens.defined())
        return {};
    TORCH_CHECK(key_lens.dim() == 1 && key_lens.size(0) == batch, "attention: key_lens must be [", batch,
                "], got ", key_lens.sizes());
    const auto lens = key_lens.to(torch::kCPU, torch::kLong);
    const int64_t lo = lens.min().item<int64_t>();
    const int64_t hi = lens.max().item<int64_t>();
    // A sample with no key would softmax over nothing (NaN); the official varlen kernel rejects it too.
    TORCH_CHECK(lo >= 1 && hi <= lk, "attention: key_lens must lie in [1, ", lk, "], got [", lo, ", ", hi,
                "]");
    if (lo == lk)
        return {};
    const auto pos = torch::arange(lk, torch::TensorOptions().dtype(torch::kLong));
    return (pos.view({1, lk}) < lens.view({batch, 1})).view({batch, 1, 1, lk}).to(device);
}

}  // namespace

bool attention_uses_sdpa() {
#if TORCH_VERSION_MAJOR >= 2
    return true;
#else
    return false;
#endif
}

torch::Tensor attention_reference(const torch::Tensor& q,
                                  const torch::Tensor& k,
                                  const torch::Tensor& v,
                                  const torch::Tensor& key_lens,
                                  int64_t max_score_bytes) {
    check_shapes(q, k, v);
    const int64_t b = q.size(0), lq = q.size(1), heads = q.size(2), d = q.size(3), lk = k.size(1);
    const auto keep = key_mask(key_lens, b, lk, q.device());
    // fp32 throughout: bf16 scores would lose the precision softmax needs, and this path is CPU-sized anyway.
    // One (sample, head) pair and a block of queries at a time, into two score buffers allocated once: each
    // block is a plain 2-D matmul of a good size, and buffers of a bounded size are reused by the allocator
    // instead of being faulted in afresh for every block (which cost as much as the matmuls).
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    if (q.is_cuda() ||
        (torch::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad()))) {
        // Training (out= kernels do not record gradients) and GPUs (where one large batched kernel beats many
        // small ones): whole-batch blocks of queries, with a budget 16x the per-head one since the block
        // spans every sample and head.
        const auto qf = q.to(torch::kFloat).transpose(1, 2);        // [B, H, Lq, D]
        const auto kt = k.to(torch::kFloat).permute({0, 2, 3, 1});  // [B, H, D, Lk]
        const auto vf = v.to(torch::kFloat).transpose(1, 2);        // [B, H, Lk, D]
        const int64_t row = std::max<int64_t>(1, b * heads * lk * static_cast<int64_t>(sizeof(float)));
        const int64_t chunk = std::clamp<int64_t>(16 * max_score_bytes / row, 1, std::max<int64_t>(lq, 1));
        std::vector<torch::Tensor> parts;
        for (int64_t start = 0; start < lq; start += chunk) {
            const int64_t n = std::min(chunk, lq - start);
            auto scores = torch::matmul(qf.narrow(2, start, n), kt).mul(scale);  // [B, H, n, Lk]
            if (keep.defined())
                scores = scores.masked_fill(keep.logical_not(), -std::numeric_limits<float>::infinity());
            parts.push_back(torch::matmul(torch::softmax(scores, -1), vf));
        }
        return torch::cat(parts, 2).transpose(1, 2).to(q.scalar_type());
    }
    const auto qf = q.to(torch::kFloat).mul(scale).transpose(1, 2).contiguous();  // [B, H, Lq, D]
    const auto kt = k.to(torch::kFloat).permute({0, 2, 3, 1}).contiguous();       // [B, H, D, Lk]
    const auto vf = v.to(torch::kFloat).transpose(1, 2).contiguous();             // [B, H, Lk, D]
    const int64_t row_bytes = std::max<int64_t>(1, lk * static_cast<int64_t>(sizeof(float)));
    const int64_t chunk = std::clamp<int64_t>(max_score_bytes / row_bytes, 1, std::max<int64_t>(lq, 1));

    auto out = torch::empty({b, heads, lq, d}, qf.options());
    auto scores = torch::empty({chunk, lk}, qf.options());
    auto probs = torch::empty({chunk, lk}, qf.options());
    for (int64_t bi = 0; bi < b; ++bi) {
        const auto masked = keep.defined() ? keep[bi].view({lk}).logical_not() : torch::Tensor();
        for (int64_t hi = 0; hi < heads; ++hi) {
            const auto qh = qf[bi][hi], kh = kt[bi][hi], vh = vf[bi][hi];
            auto oh = out[bi][hi];
            for (int64_t start = 0; start < lq; start += chunk) {
                const int64_t n = std::min(chunk, lq - start);
                auto s = scores.narrow(0, 0, n);
                auto p = probs.narrow(0, 0, n);
                torch::mm_out(s, qh.narrow(0, start, n), kh);
                if (masked.defined())
                    s.masked_fill_(masked, -std::numeric_limits<float>::infinity());
                at::_softmax_out(p, s, -1, false);
                auto o = oh.narrow(0, start, n);
                torch::mm_out(o, p, vh);
            }
        }
    }
    return out.transpose(1, 2).to(q.scalar_type());
}

torch::Tensor attention(const torch::Tensor& q,
                        const torch::Tensor& k,
                        const torch::Tensor& v,
                        const torch::Tensor& key_lens) {
#if TORCH_VERSION_MAJOR >= 2
    check_shapes(q, k, v);
    const auto keep = key_mask(key_lens, q.size(0), k.size(1), q.device());
    // SDPA works on [B, heads, L, head_dim]; its default scale is 1/sqrt(head_dim), as Wan's.
    // The mask is passed only when defined (a Tensor converts to the optional argument on every 2.x release,
    // whether that is c10::optional or std::optional); without it SDPA may pick the flash kernel.
    const auto dtype = q.scalar_type();
    const auto qt = q.transpose(1, 2), kt = k.to(dtype).transpose(1, 2), vt = v.to(dtype).transpose(1, 2);
    const auto out = keep.defined() ? at::scaled_dot_product_attention(qt, kt, vt, keep)
                                    : at::scaled_dot_product_attention(qt, kt, vt);
    return out.transpose(1, 2);
#else
    return attention_reference(q, k, v, key_lens);
#endif
}

}  // namespace memoreel
