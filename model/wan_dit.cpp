#include "model/wan_dit.h"

#include <cmath>

#include "model/attention.h"

namespace memoreel {

namespace {

torch::Tensor layer_norm_fp32(const torch::Tensor& x, int64_t dim, double eps) {
    return torch::layer_norm(x.to(torch::kFloat), {dim}, {}, {}, eps);
}

int64_t patch_volume(const WanDiTConfig& c) {
    return c.patch_size[0] * c.patch_size[1] * c.patch_size[2];
}

}  // namespace

torch::Tensor sinusoidal_embedding(int64_t dim, const torch::Tensor& t) {
    TORCH_CHECK(dim % 2 == 0, "sinusoidal_embedding: dim must be even, got ", dim);
    TORCH_CHECK(t.dim() == 1, "sinusoidal_embedding: t must be 1-D, got ", t.sizes());
    const int64_t half = dim / 2;
    const auto pos = t.to(torch::kFloat64);
    // Official: 10000^(-arange(half) / half) (divides by half, not half - 1), float64, cos half first.
    const auto freqs =
        torch::pow(10000.0, torch::arange(half, pos.options()).neg().div(static_cast<double>(half)));
    const auto angles = torch::outer(pos, freqs);
    return torch::cat({torch::cos(angles), torch::sin(angles)}, 1).to(torch::kFloat);
}

// ------------------------------------------------------------------------------------------------ small
// modules

WanRMSNormImpl::WanRMSNormImpl(int64_t dim, double eps) : eps_(eps) {
    weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor WanRMSNormImpl::forward(const torch::Tensor& x) {
    const auto xf = x.to(torch::kFloat);
    return xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps_) * weight.to(torch::kFloat);
}

WanMlpImpl::WanMlpImpl(int64_t in, int64_t hidden, int64_t out, Activation activation)
    : activation_(activation) {
    fc0 = register_module("0", Linear(in, hidden));
    fc2 = register_module("2", Linear(hidden, out));
}

torch::Tensor WanMlpImpl::forward(const torch::Tensor& x, torch::ScalarType dtype) {
    // Activations stay fp32: bf16 GELU/SiLU are several times slower on CPU and less accurate.
    auto h = fc0->forward(x.to(dtype)).to(torch::kFloat);
    h = activation_ == Activation::kSiLU ? torch::silu(h) : torch::gelu(h, "tanh");
    return fc2->forward(h.to(dtype)).to(torch::kFloat);
}

WanTimeProjectionImpl::WanTimeProjectionImpl(int64_t dim, int64_t out) {
    proj = register_module("1", Linear(dim, out));
}

torch::Tensor WanTimeProjectionImpl::forward(const torch::Tensor& e) {
    // fp32 regardless of the weight dtype (Linear converts its weights to the input's dtype), as the official
    // code forces the time MLPs to fp32.
    return proj->forward(torch::silu(e.to(torch::kFloat)));
}

// ------------------------------------------------------------------------------------------------ attention

WanAttentionImpl::WanAttentionImpl(int64_t dim, int64_t num_heads, bool qk_norm, double eps)
    : num_heads_(num_heads) {
    q = register_module("q", Linear(dim, dim));
    k = register_module("k", Linear(dim, dim));
    v = register_module("v", Linear(dim, dim));
    o = register_module("o", Linear(dim, dim));
    if (qk_norm) {
        norm_q = register_module("norm_q", WanRMSNorm(dim, eps));
        norm_k = register_module("norm_k", WanRMSNorm(dim, eps));
    }
}

torch::Tensor WanAttentionImpl::forward(const torch::Tensor& x,
                                        const torch::Tensor& context,
                                        const RopeTables* rope,
                                        const torch::Tensor& key_lens,
                                        const BlockContext* block) {
    const bool self = !context.defined();
    TORCH_CHECK(!self || rope != nullptr, "WanAttention: self-attention needs RoPE tables");
    TORCH_CHECK(!block || (self && !key_lens.defined()),
                "WanAttention: block context is for self-attention without a key mask");
    const auto dtype = q->weight.scalar_type();
    const auto& src = self ? x : context;
    const int64_t b = x.size(0), lq = x.size(1), lk = src.size(1);
    const int64_t head_dim = x.size(2) / num_heads_;

    // The RMSNorms act on the full width (all heads together), before the head split, in fp32.
    auto qq = q->forward(x.to(dtype));
    auto kk = k->forward(src.to(dtype));
    qq = norm_q ? norm_q->forward(qq) : qq.to(torch::kFloat);
    kk = norm_k ? norm_k->forward(kk) : kk.to(torch::kFloat);
    auto vv = v->forward(src.to(dtype)).view({b, lk, num_heads_, head_dim});
    qq = qq.view({b, lq, num_heads_, head_dim});
    kk = kk.view({b, lk, num_heads_, head_dim});
    if (block && block->record)
        *block->record = {kk.to(dtype), vv};  // keys in the compute dtype: half the cache with bf16 weights
    if (self) {
        qq = apply_rope(qq, *rope);
        kk = apply_rope(kk, *rope);
    }
    if (block && block->extra) {
        const auto& ex = *block->extra;
        TORCH_CHECK(ex.k.dim() == 4 && ex.k.size(2) == num_heads_ && ex.k.size(3) == head_dim &&
                        ex.v.sizes() == ex.k.sizes(),
                    "WanAttention: extra keys/values must be [B, L, ", num_heads_, ", ", head_dim, "], got ",
                    ex.k.sizes(), " and ", ex.v.sizes());
        const auto expand = [&](const torch::Tensor& t) {
            return t.size(0) == b ? t : t.expand({b, -1, -1, -1});
        };
        kk = torch::cat({kk.to(dtype), expand(ex.k).to(dtype)}, 1);
        vv = torch::cat({vv, expand(ex.v).to(vv.scalar_type())}, 1);
    }
    const auto out = attention(qq.to(dtype), kk.to(dtype), vv, key_lens);
    return o->forward(out.reshape({b, lq, num_heads_ * head_dim}).to(dtype)).to(torch::kFloat);
}

// ------------------------------------------------------------------------------------------------ block,
// head

WanAttentionBlockImpl::WanAttentionBlockImpl(const WanDiTConfig& c) : dim_(c.dim), eps_(c.eps) {
    // Registration order gives the official state_dict order: modulation, self_attn, norm3, cross_attn, ffn.
    modulation = register_parameter("modulation", torch::randn({1, 6, c.dim}) / std::sqrt(double(c.dim)));
    self_attn = register_module("self_attn", WanAttention(c.dim, c.num_heads, c.qk_norm, c.eps));
    if (c.cross_attn_norm) {
        norm3 = register_module(
            "norm3",
            torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.dim}).eps(c.eps).elementwise_affine(true)));
    }
    cross_attn = register_module("cross_attn", WanAttention(c.dim, c.num_heads, c.qk_norm, c.eps));
    ffn = register_module("ffn", WanMlp(c.dim, c.ffn_dim, c.dim, WanMlpImpl::Activation::kGeluTanh));
}

torch::Tensor WanAttentionBlockImpl::forward(const torch::Tensor& x_in,
                                             const torch::Tensor& e0,
                                             const torch::Tensor& text,
                                             const RopeTables& rope,
                                             const torch::Tensor& key_lens,
                                             WanDiTTrace* trace,
                                             const BlockContext* context) {
    // The six modulation chunks (shift, scale, gate for self-attention, then for the FFN), each [B, L, dim],
    // formed one at a time: the whole [B, L, 6, dim] sum is large for long sequences.
    const auto mod = [&](int64_t i) { return modulation.select(1, i).to(torch::kFloat) + e0.select(2, i); };
    auto x = x_in.to(torch::kFloat);

    auto y = self_attn->forward(layer_norm_fp32(x, dim_, eps_) * (1 + mod(1)) + mod(0), {}, &rope, key_lens,
                                context);
    if (trace)
        trace->self_attn_out.push_back(y);
    x = x + y * mod(2);

    const auto xn = norm3 ? torch::layer_norm(x, {dim_}, norm3->weight.to(torch::kFloat),
                                              norm3->bias.to(torch::kFloat), eps_)
                          : x;
    // Text cross-attention has no key mask: padded text rows are attended to, as officially.
    y = cross_attn->forward(xn, text, nullptr, {});
    if (trace)
        trace->cross_attn_out.push_back(y);
    x = x + y;
    if (context && context->cross)
        x = x + context->cross(xn);

    y = ffn->forward(layer_norm_fp32(x, dim_, eps_) * (1 + mod(4)) + mod(3), ffn->weight_dtype());
    x = x + y * mod(5);
    if (trace)
        trace->block_out.push_back(x);
    return x;
}

WanHeadImpl::WanHeadImpl(int64_t dim, int64_t out_features, double eps) : dim_(dim), eps_(eps) {
    modulation = register_parameter("modulation", torch::randn({1, 2, dim}) / std::sqrt(double(dim)));
    head = register_module("head", Linear(dim, out_features));
}

torch::Tensor WanHeadImpl::forward(const torch::Tensor& x, const torch::Tensor& e) {
    // e is the time_embedding output itself (no SiLU, no projection); the head runs in fp32 as officially.
    const auto ef = e.to(torch::kFloat);
    const auto shift = modulation.select(1, 0).to(torch::kFloat) + ef;
    const auto scale = modulation.select(1, 1).to(torch::kFloat) + ef;
    return head->forward(layer_norm_fp32(x, dim_, eps_) * (1 + scale) + shift);
}

// ------------------------------------------------------------------------------------------------ WanDiT

WanDiTImpl::WanDiTImpl(const WanDiTConfig& config) : config_(config) {
    const auto& c = config_;
    c.validate("WanDiT");
    const std::vector<int64_t> patch(c.patch_size.begin(), c.patch_size.end());
    patch_embedding = register_module(
        "patch_embedding", torch::nn::Conv3d(torch::nn::Conv3dOptions(c.in_dim, c.dim, patch).stride(patch)));
    text_embedding = register_module("text_embedding",
                                     WanMlp(c.text_dim, c.dim, c.dim, WanMlpImpl::Activation::kGeluTanh));
    time_embedding =
        register_module("time_embedding", WanMlp(c.freq_dim, c.dim, c.dim, WanMlpImpl::Activation::kSiLU));
    time_projection = register_module("time_projection", WanTimeProjection(c.dim, 6 * c.dim));
    blocks = register_module("blocks", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.num_layers; ++i)
        blocks->push_back(WanAttentionBlock(c));
    head = register_module("head", WanHead(c.dim, patch_volume(c) * c.out_dim, c.eps));
    init_weights();
}

void WanDiTImpl::init_weights() {
    torch::NoGradGuard no_grad;
    namespace init = torch::nn::init;
    for (const auto& m : modules(/*include_self=*/false)) {
        if (auto* lin = m->as<LinearImpl>()) {
            init::xavier_uniform_(lin->weight);
            if (lin->bias.defined())
                lin->bias.zero_();
        } else if (auto* rms = m->as<WanRMSNormImpl>()) {
            rms->weight.fill_(1.0);
        } else if (auto* block = m->as<WanAttentionBlockImpl>()) {
            block->modulation.normal_(0.0, 1.0 / std::sqrt(double(config_.dim)));
            if (block->norm3) {
                block->norm3->weight.fill_(1.0);
                block->norm3->bias.zero_();
            }
        }
    }
    // xavier on the [dim, in * prod(patch)] view: fan_out is dim, not dim * prod(patch) as for the 5-D
    // tensor.
    init::xavier_uniform_(patch_embedding->weight.view({config_.dim, -1}));
    for (auto* mlp : {text_embedding.get(), time_embedding.get()}) {
        init::normal_(mlp->fc0->weight, 0.0, 0.02);
        init::normal_(mlp->fc2->weight, 0.0, 0.02);
    }
    head->modulation.normal_(0.0, 1.0 / std::sqrt(double(config_.dim)));
    // A zero output layer: an untrained model predicts zero velocity.
    head->head->weight.zero_();
}

std::vector<std::pair<std::string, std::vector<int64_t>>> WanDiTImpl::parameter_shapes(
    const WanDiTConfig& c) {
    std::vector<std::pair<std::string, std::vector<int64_t>>> out;
    const int64_t d = c.dim;
    const auto add = [&](const std::string& name, std::vector<int64_t> shape) {
        out.emplace_back(name, std::move(shape));
    };
    const auto linear = [&](const std::string& name, int64_t in, int64_t o) {
        add(name + ".weight", {o, in});
        add(name + ".bias", {o});
    };
    add("patch_embedding.weight", {d, c.in_dim, c.patch_size[0], c.patch_size[1], c.patch_size[2]});
    add("patch_embedding.bias", {d});
    linear("text_embedding.0", c.text_dim, d);
    linear("text_embedding.2", d, d);
    linear("time_embedding.0", c.freq_dim, d);
    linear("time_embedding.2", d, d);
    linear("time_projection.1", d, 6 * d);
    for (int64_t i = 0; i < c.num_layers; ++i) {
        const std::string b = "blocks." + std::to_string(i) + ".";
        add(b + "modulation", {1, 6, d});
        for (const std::string attn : {"self_attn", "norm3", "cross_attn"}) {
            if (attn == "norm3") {
                if (c.cross_attn_norm) {
                    add(b + "norm3.weight", {d});
                    add(b + "norm3.bias", {d});
                }
                continue;
            }
            for (const char* p : {"q", "k", "v", "o"})
                linear(b + attn + "." + p, d, d);
            if (c.qk_norm) {
                add(b + attn + ".norm_q.weight", {d});
                add(b + attn + ".norm_k.weight", {d});
            }
        }
        linear(b + "ffn.0", d, c.ffn_dim);
        linear(b + "ffn.2", c.ffn_dim, d);
    }
    add("head.modulation", {1, 2, d});
    linear("head.head", d, patch_volume(c) * c.out_dim);
    return out;
}

WanPatchTokens WanDiTImpl::patch_embed(const torch::Tensor& x) {
    const auto& p = config_.patch_size;
    TORCH_CHECK(x.dim() == 5 && x.size(1) == config_.in_dim, "WanDiT: latents must be [B, ", config_.in_dim,
                ", F, H, W], got ", x.sizes());
    TORCH_CHECK(x.size(2) % p[0] == 0 && x.size(3) % p[1] == 0 && x.size(4) % p[2] == 0,
                "WanDiT: latent size ", x.sizes(), " is not a multiple of the patch (", p[0], ", ", p[1],
                ", ", p[2], ")");
    const auto y =
        patch_embedding->forward(x.to(patch_embedding->weight.scalar_type()));  // [B, dim, f, h, w]
    return {y.flatten(2).transpose(1, 2).to(torch::kFloat).contiguous(), {y.size(2), y.size(3), y.size(4)}};
}

torch::Tensor WanDiTImpl::embed_text(const std::vector<torch::Tensor>& context) {
    TORCH_CHECK(!context.empty(), "WanDiT: empty context list");
    std::vector<torch::Tensor> padded;
    for (const auto& u : context) {
        TORCH_CHECK(u.dim() == 2 && u.size(1) == config_.text_dim && u.size(0) <= config_.text_len,
                    "WanDiT: text features must be [<= ", config_.text_len, ", ", config_.text_dim, "], got ",
                    u.sizes());
        // Zero rows, which the MLP turns into a constant (bias-made) vector that cross-attention does see.
        padded.push_back(torch::cat({u, u.new_zeros({config_.text_len - u.size(0), u.size(1)})}));
    }
    return text_embedding->forward(torch::stack(padded), text_embedding->weight_dtype());
}

WanTimeEmbedding WanDiTImpl::embed_time(const torch::Tensor& t) {
    TORCH_CHECK(t.dim() == 2, "WanDiT: t must be per token [B, L], got ", t.sizes());
    const int64_t b = t.size(0), l = t.size(1);
    const auto sin = sinusoidal_embedding(config_.freq_dim, t.flatten()).view({b, l, config_.freq_dim});
    auto e = time_embedding->forward(sin, torch::kFloat);
    auto e0 = time_projection->forward(e).unflatten(2, {6, config_.dim});
    return {std::move(e), std::move(e0)};
}

RopeTables WanDiTImpl::grid_rope(const std::array<int64_t, 3>& grid, int64_t length) const {
    const auto positions =
        rope_grid_positions(grid[0], grid[1], grid[2]).to(patch_embedding->weight.device());
    auto rope = rope_cos_sin(positions, config_.head_dim());
    return length > 0 ? rope_pad(rope, length) : rope;
}

torch::Tensor WanDiTImpl::forward_tokens(const torch::Tensor& tokens,
                                         const RopeTables& rope,
                                         const torch::Tensor& e0,
                                         const torch::Tensor& e,
                                         const torch::Tensor& text,
                                         const torch::Tensor& key_lens,
                                         WanDiTTrace* trace) {
    const int64_t d = config_.dim;
    TORCH_CHECK(tokens.dim() == 3 && tokens.size(2) == d, "WanDiT: tokens must be [B, L, ", d, "], got ",
                tokens.sizes());
    const int64_t b = tokens.size(0), l = tokens.size(1);
    TORCH_CHECK(e0.dim() == 4 && e0.size(0) == b && e0.size(1) == l && e0.size(2) == 6 && e0.size(3) == d,
                "WanDiT: e0 must be [", b, ", ", l, ", 6, ", d, "], got ", e0.sizes());
    TORCH_CHECK(e.dim() == 3 && e.size(0) == b && e.size(1) == l && e.size(2) == d, "WanDiT: e must be [", b,
                ", ", l, ", ", d, "], got ", e.sizes());
    TORCH_CHECK(text.dim() == 3 && text.size(0) == b && text.size(2) == d, "WanDiT: text must be [", b,
                ", Lt, ", d, "], got ", text.sizes());
    auto x = tokens.to(torch::kFloat);
    for (const auto& block : *blocks)
        x = block->as<WanAttentionBlockImpl>()->forward(x, e0, text, rope, key_lens, trace);
    auto out = head->forward(x, e);
    if (trace)
        trace->head_out = out;
    return out;
}

torch::Tensor WanDiTImpl::unpatchify(const torch::Tensor& head_out,
                                     const std::array<int64_t, 3>& grid) const {
    const auto& p = config_.patch_size;
    const int64_t c = config_.out_dim, n = grid[0] * grid[1] * grid[2];
    TORCH_CHECK(head_out.dim() == 2 && head_out.size(0) >= n && head_out.size(1) == patch_volume(config_) * c,
                "WanDiT: unpatchify needs [>= ", n, ", ", patch_volume(config_) * c, "], got ",
                head_out.sizes());
    // Token (f, h, w) holds (pt, ph, pw, c) with c fastest; it lands at (c, f*pt.., h*ph.., w*pw..).
    return head_out.narrow(0, 0, n)
        .reshape({grid[0], grid[1], grid[2], p[0], p[1], p[2], c})
        .permute({6, 0, 3, 1, 4, 2, 5})
        .reshape({c, grid[0] * p[0], grid[1] * p[1], grid[2] * p[2]});
}

std::vector<torch::Tensor> WanDiTImpl::forward(const std::vector<torch::Tensor>& x,
                                               const torch::Tensor& t,
                                               const std::vector<torch::Tensor>& context,
                                               int64_t seq_len,
                                               WanDiTTrace* trace) {
    const int64_t b = static_cast<int64_t>(x.size());
    TORCH_CHECK(b >= 1 && context.size() == x.size(), "WanDiT: need as many contexts (", context.size(),
                ") as latents (", b, ")");
    TORCH_CHECK(t.dim() == 2 && t.size(0) == b && t.size(1) == seq_len, "WanDiT: t must be [", b, ", ",
                seq_len, "] (per-token timesteps), got ", t.sizes());
    std::vector<torch::Tensor> tokens, cos, sin;
    std::vector<std::array<int64_t, 3>> grids;
    std::vector<int64_t> lens;
    for (const auto& u : x) {
        TORCH_CHECK(u.dim() == 4, "WanDiT: each latent must be [C, F, H, W], got ", u.sizes());
        auto pe = patch_embed(u.unsqueeze(0));
        const int64_t n = pe.tokens.size(1);
        TORCH_CHECK(n <= seq_len, "WanDiT: a latent has ", n, " tokens, more than seq_len ", seq_len);
        tokens.push_back(torch::cat({pe.tokens, pe.tokens.new_zeros({1, seq_len - n, config_.dim})}, 1));
        const auto rope = grid_rope(pe.grid, seq_len);
        cos.push_back(rope.cos);
        sin.push_back(rope.sin);
        grids.push_back(pe.grid);
        lens.push_back(n);
    }
    const auto te = embed_time(t);
    const auto text = embed_text(context);
    const auto key_lens = torch::tensor(lens, torch::TensorOptions().dtype(torch::kLong));
    const auto out = forward_tokens(torch::cat(tokens), {torch::stack(cos), torch::stack(sin)}, te.e0, te.e,
                                    text, key_lens, trace);
    std::vector<torch::Tensor> result;
    for (int64_t i = 0; i < b; ++i)
        result.push_back(unpatchify(out[i], grids[i]));
    return result;
}

}  // namespace memoreel
