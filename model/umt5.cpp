#include "model/umt5.h"

#include <cmath>
#include <limits>
#include <regex>

namespace memoreel {

namespace {

// torch.finfo(dtype).min: the value padding keys get before the softmax.
double finfo_min(torch::ScalarType dtype) {
    switch (dtype) {
        case torch::kFloat64:
            return std::numeric_limits<double>::lowest();
        case torch::kFloat32:
            return static_cast<double>(std::numeric_limits<float>::lowest());
        case torch::kBFloat16:
            return static_cast<double>(std::numeric_limits<c10::BFloat16>::lowest());
        case torch::kFloat16:
            return static_cast<double>(std::numeric_limits<c10::Half>::lowest());
        default:
            TORCH_CHECK(false, "umT5: unsupported activation dtype ", dtype);
    }
}

bool is_reduced_float(torch::ScalarType t) {
    return t == torch::kBFloat16 || t == torch::kFloat16;
}

}  // namespace

// ------------------------------------------------------------------------------------------------------ norm

T5RMSNormImpl::T5RMSNormImpl(int64_t dim, double eps) : eps_(eps) {
    weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor T5RMSNormImpl::forward(const torch::Tensor& x) {
    // The statistics are always float32, whatever the activation dtype.
    torch::Tensor y = x * torch::rsqrt(x.to(torch::kFloat32).pow(2).mean(-1, /*keepdim=*/true) + eps_);
    if (is_reduced_float(weight.scalar_type()))
        y = y.to(weight.scalar_type());
    return weight * y;
}

// ----------------------------------------------------------------------------------------- relative position

torch::Tensor relative_position_bucket(const torch::Tensor& rel_pos,
                                       int64_t num_buckets,
                                       bool bidirectional,
                                       int64_t max_distance) {
    torch::Tensor rel = rel_pos.to(torch::kInt64);
    torch::Tensor buckets;
    int64_t n = num_buckets;
    if (bidirectional) {
        n = num_buckets / 2;
        buckets = rel.gt(0).to(torch::kInt64) * n;
        rel = rel.abs();
    } else {
        buckets = torch::zeros_like(rel);
        rel = -torch::min(rel, torch::zeros_like(rel));
    }
    const int64_t max_exact = n / 2;
    // Float32 as in the reference. Positions below max_exact take the exact branch; clamping them up first
    // only avoids log(0) -> -inf -> int64 (undefined) for values that torch.where discards anyway.
    torch::Tensor large =
        max_exact +
        (torch::log(rel.clamp_min(max_exact).to(torch::kFloat32) / max_exact) /
         std::log(static_cast<double>(max_distance) / static_cast<double>(max_exact)) * (n - max_exact))
            .to(torch::kInt64);
    large = torch::min(large, torch::full_like(large, n - 1));
    return buckets + torch::where(rel < max_exact, rel, large);
}

T5RelativeEmbeddingImpl::T5RelativeEmbeddingImpl(int64_t num_buckets,
                                                 int64_t num_heads,
                                                 bool bidirectional,
                                                 int64_t max_distance)
    : num_buckets_(num_buckets),
      num_heads_(num_heads),
      bidirectional_(bidirectional),
      max_distance_(max_distance) {
    embedding = register_module("embedding", torch::nn::Embedding(num_buckets, num_heads));
}

torch::Tensor T5RelativeEmbeddingImpl::buckets(int64_t lq, int64_t lk) const {
    const auto opts = torch::TensorOptions().dtype(torch::kInt64).device(embedding->weight.device());
    const torch::Tensor rel = torch::arange(lk, opts).unsqueeze(0) - torch::arange(lq, opts).unsqueeze(1);
    return relative_position_bucket(rel, num_buckets_, bidirectional_, max_distance_);
}

torch::Tensor T5RelativeEmbeddingImpl::forward(int64_t lq, int64_t lk) {
    return embedding(buckets(lq, lk)).permute({2, 0, 1}).unsqueeze(0).contiguous();
}

// ------------------------------------------------------------------------------------------------- attention

T5AttentionImpl::T5AttentionImpl(int64_t dim, int64_t dim_attn, int64_t num_heads)
    : dim_(dim), dim_attn_(dim_attn), num_heads_(num_heads) {
    TORCH_CHECK(num_heads > 0 && dim_attn % num_heads == 0, "umT5: dim_attn ", dim_attn,
                " is not divisible by num_heads ", num_heads);
    q = register_module("q", Linear(dim, dim_attn, false));
    k = register_module("k", Linear(dim, dim_attn, false));
    v = register_module("v", Linear(dim, dim_attn, false));
    o = register_module("o", Linear(dim_attn, dim, false));
}

torch::Tensor T5AttentionImpl::forward(const torch::Tensor& x,
                                       const torch::Tensor& mask,
                                       const torch::Tensor& pos_bias) {
    const int64_t b = x.size(0), l = x.size(1), n = num_heads_, c = dim_attn_ / num_heads_;
    const torch::Tensor qh = q(x).view({b, l, n, c}).permute({0, 2, 1, 3});
    const torch::Tensor kh = k(x).view({b, l, n, c}).permute({0, 2, 1, 3});
    const torch::Tensor vh = v(x).view({b, l, n, c}).permute({0, 2, 1, 3});

    torch::Tensor bias = torch::zeros({b, n, l, l}, x.options());
    if (pos_bias.defined())
        bias = bias + pos_bias.to(x.scalar_type());
    if (mask.defined()) {
        TORCH_CHECK(mask.dim() == 2 && mask.size(0) == b && mask.size(1) == l,
                    "umT5: mask must be [B, L] = [", b, ", ", l, "], got ", mask.sizes());
        bias = bias.masked_fill(mask.view({b, 1, 1, l}).eq(0), finfo_min(x.scalar_type()));
    }
    // T5 does not scale the logits by 1/sqrt(head_dim).
    torch::Tensor attn = torch::matmul(qh, kh.transpose(-1, -2)) + bias;
    attn = torch::softmax(attn.to(torch::kFloat32), -1).to(attn.scalar_type());
    const torch::Tensor out = torch::matmul(attn, vh).permute({0, 2, 1, 3}).reshape({b, l, n * c});
    return o(out);
}

// ---------------------------------------------------------------------------------------------- feed-forward

torch::Tensor t5_gelu(const torch::Tensor& x) {
    return 0.5 * x * (1.0 + torch::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * torch::pow(x, 3.0))));
}

T5FeedForwardImpl::T5FeedForwardImpl(int64_t dim, int64_t dim_ffn) : dim_(dim), dim_ffn_(dim_ffn) {
    gate_proj = Linear(dim, dim_ffn, false);
    gate = register_module("gate", torch::nn::ModuleList(gate_proj));
    fc1 = register_module("fc1", Linear(dim, dim_ffn, false));
    fc2 = register_module("fc2", Linear(dim_ffn, dim, false));
}

torch::Tensor T5FeedForwardImpl::forward(const torch::Tensor& x) {
    return fc2(fc1(x) * t5_gelu(gate_proj(x)));
}

// -------------------------------------------------------------------------------------------- block, encoder

T5EncoderBlockImpl::T5EncoderBlockImpl(const UMT5Config& config) {
    norm1 = register_module("norm1", T5RMSNorm(config.dim));
    attn = register_module("attn", T5Attention(config.dim, config.dim_attn, config.num_heads));
    norm2 = register_module("norm2", T5RMSNorm(config.dim));
    ffn = register_module("ffn", T5FeedForward(config.dim, config.dim_ffn));
    if (!config.shared_pos)
        pos_embedding = register_module(
            "pos_embedding",
            T5RelativeEmbedding(config.num_buckets, config.num_heads, true, config.max_distance));
}

torch::Tensor T5EncoderBlockImpl::forward(const torch::Tensor& x,
                                          const torch::Tensor& mask,
                                          const torch::Tensor& pos_bias) {
    const torch::Tensor e = pos_embedding ? pos_embedding(x.size(1), x.size(1)) : pos_bias;
    // fp16_clamp in the reference only acts on float16 with infinities; bf16/fp32 never reach it.
    torch::Tensor y = x + attn(norm1(x), mask, e);
    y = y + ffn(norm2(y));
    if (y.scalar_type() == torch::kFloat16 && torch::isinf(y).any().item<bool>()) {
        const double clamp = 65504.0 - 1000.0;
        y = y.clamp(-clamp, clamp);
    }
    return y;
}

UMT5EncoderImpl::UMT5EncoderImpl(const UMT5Config& config) : config_(config) {
    config_.validate("UMT5Encoder");
    token_embedding = register_module("token_embedding", torch::nn::Embedding(config.vocab, config.dim));
    if (config.shared_pos)
        pos_embedding = register_module(
            "pos_embedding",
            T5RelativeEmbedding(config.num_buckets, config.num_heads, true, config.max_distance));
    blocks = register_module("blocks", torch::nn::ModuleList());
    for (int64_t i = 0; i < config.num_layers; ++i)
        blocks->push_back(T5EncoderBlock(config));
    norm = register_module("norm", T5RMSNorm(config.dim));
    init_weights();
}

void UMT5EncoderImpl::init_weights() {
    torch::NoGradGuard no_grad;
    const auto& c = config_;
    auto normal = [](torch::Tensor& w, double std) { w.normal_(0.0, std); };
    normal(token_embedding->weight, 1.0);
    auto init_rel = [&](T5RelativeEmbedding& r) {
        normal(r->embedding->weight, std::pow(2.0 * static_cast<double>(c.num_buckets * c.num_heads), -0.5));
    };
    if (pos_embedding)
        init_rel(pos_embedding);
    for (const auto& m : *blocks) {
        auto block = std::dynamic_pointer_cast<T5EncoderBlockImpl>(m);
        block->norm1->weight.fill_(1.0);
        block->norm2->weight.fill_(1.0);
        normal(block->attn->q->weight, std::pow(static_cast<double>(c.dim * c.dim_attn), -0.5));
        normal(block->attn->k->weight, std::pow(static_cast<double>(c.dim), -0.5));
        normal(block->attn->v->weight, std::pow(static_cast<double>(c.dim), -0.5));
        normal(block->attn->o->weight, std::pow(static_cast<double>(c.num_heads * c.dim_attn), -0.5));
        normal(block->ffn->gate_proj->weight, std::pow(static_cast<double>(c.dim), -0.5));
        normal(block->ffn->fc1->weight, std::pow(static_cast<double>(c.dim), -0.5));
        normal(block->ffn->fc2->weight, std::pow(static_cast<double>(c.dim_ffn), -0.5));
        if (block->pos_embedding)
            init_rel(block->pos_embedding);
    }
    norm->weight.fill_(1.0);
}

torch::Tensor UMT5EncoderImpl::position_bias(int64_t index, int64_t length) {
    if (pos_embedding)
        return pos_embedding(length, length);
    TORCH_CHECK(index >= 0 && index < static_cast<int64_t>(blocks->size()), "umT5: no block ", index);
    return blocks->ptr<T5EncoderBlockImpl>(index)->pos_embedding(length, length);
}

torch::Tensor UMT5EncoderImpl::forward(const torch::Tensor& ids,
                                       const torch::Tensor& mask,
                                       std::vector<torch::Tensor>* block_outputs) {
    TORCH_CHECK(ids.dim() == 2, "umT5: ids must be [B, L], got ", ids.sizes());
    torch::Tensor x = token_embedding(ids.to(torch::kInt64));
    const torch::Tensor e = pos_embedding ? pos_embedding(x.size(1), x.size(1)) : torch::Tensor();
    torch::Tensor m = mask;
    if (m.defined())
        m = m.to(x.device());
    for (const auto& module : *blocks) {
        x = module->as<T5EncoderBlockImpl>()->forward(x, m, e);
        if (block_outputs)
            block_outputs->push_back(x);
    }
    return norm(x).to(torch::kFloat32);
}

std::vector<torch::Tensor> text_context(const torch::Tensor& hidden, const torch::Tensor& mask) {
    TORCH_CHECK(hidden.dim() == 3 && mask.dim() == 2 && hidden.size(0) == mask.size(0),
                "text_context: hidden [B, L, C] and mask [B, L] expected");
    const torch::Tensor lens = mask.gt(0).sum(1).to(torch::kCPU, torch::kInt64);
    std::vector<torch::Tensor> out;
    for (int64_t b = 0; b < hidden.size(0); ++b)
        out.push_back(hidden[b].slice(0, 0, lens[b].item<int64_t>()));
    return out;
}

// -------------------------------------------------------------------------------------------------- HF names

std::string umt5_hf_to_official_name(const std::string& hf_name) {
    static const std::regex block_re(R"(^encoder\.block\.(\d+)\.layer\.([01])\.(.+)$)");
    if (hf_name == "shared.weight" || hf_name == "encoder.embed_tokens.weight")
        return "token_embedding.weight";
    if (hf_name == "encoder.final_layer_norm.weight")
        return "norm.weight";
    std::smatch m;
    if (!std::regex_match(hf_name, m, block_re))
        return hf_name;
    const std::string prefix = "blocks." + m[1].str() + ".";
    const std::string layer = m[2].str();
    const std::string rest = m[3].str();
    if (layer == "0") {
        static const std::regex attn_re(R"(^SelfAttention\.([qkvo])\.weight$)");
        std::smatch a;
        if (std::regex_match(rest, a, attn_re))
            return prefix + "attn." + a[1].str() + ".weight";
        if (rest == "SelfAttention.relative_attention_bias.weight")
            return prefix + "pos_embedding.embedding.weight";
        if (rest == "layer_norm.weight")
            return prefix + "norm1.weight";
    } else {
        if (rest == "DenseReluDense.wi_0.weight")
            return prefix + "ffn.gate.0.weight";
        if (rest == "DenseReluDense.wi_1.weight")
            return prefix + "ffn.fc1.weight";
        if (rest == "DenseReluDense.wo.weight")
            return prefix + "ffn.fc2.weight";
        if (rest == "layer_norm.weight")
            return prefix + "norm2.weight";
    }
    return hf_name;
}

}  // namespace memoreel
