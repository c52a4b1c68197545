#include "model/memory_cross_attention.h"

#include "model/attention.h"

namespace memoreel {

MemoryCrossAttentionImpl::MemoryCrossAttentionImpl(int64_t dim,
                                                   int64_t feature_dim,
                                                   int64_t heads,
                                                   double eps)
    : heads_(heads) {
    TORCH_CHECK(heads >= 1 && dim % heads == 0, "memory cross-attention: dim ", dim, " is not divisible by ",
                heads, " heads");
    q = register_module("q", Linear(dim, dim));
    k = register_module("k", Linear(feature_dim, dim));
    v = register_module("v", Linear(feature_dim, dim));
    o = register_module("o", Linear(dim, dim));
    norm_q = register_module("norm_q", WanRMSNorm(dim, eps));
    norm_k = register_module("norm_k", WanRMSNorm(dim, eps));
    torch::NoGradGuard no_grad;
    for (auto* lin : {q.get(), k.get(), v.get()}) {
        torch::nn::init::xavier_uniform_(lin->weight);
        lin->bias.zero_();
    }
    // Zero output: an untrained enhancement adds nothing.
    o->weight.zero_();
    o->bias.zero_();
}

torch::Tensor MemoryCrossAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& features) {
    const auto dtype = q->weight.scalar_type();
    const int64_t b = x.size(0), lq = x.size(1), d = x.size(2), hd = d / heads_;
    auto f = features.to(x.device());
    if (f.size(0) != b)
        f = f.expand({b, -1, -1});
    const int64_t lf = f.size(1);
    const auto qq = norm_q->forward(q->forward(x.to(dtype))).view({b, lq, heads_, hd});
    const auto kk = norm_k->forward(k->forward(f.to(dtype))).view({b, lf, heads_, hd});
    const auto vv = v->forward(f.to(dtype)).view({b, lf, heads_, hd});
    const auto out = attention(qq.to(dtype), kk.to(dtype), vv);
    return o->forward(out.reshape({b, lq, d}).to(dtype)).to(torch::kFloat);
}

}  // namespace memoreel
