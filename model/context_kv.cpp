#include "model/context_kv.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "model/rope.h"

namespace memoreel {

namespace {

torch::Tensor cat_or(const torch::Tensor& a, const torch::Tensor& b, int64_t dim) {
    if (!a.defined() || a.size(dim) == 0)
        return b;
    if (!b.defined() || b.size(dim) == 0)
        return a;
    return torch::cat({a, b}, dim);
}

// Rotates every layer's keys to the given tables, keys and values in the compute dtype.
std::vector<AttentionKV> rotate(const ContextKV& c, const RopeTables& rope, torch::ScalarType dtype) {
    std::vector<AttentionKV> out;
    out.reserve(c.layers.size());
    for (const auto& l : c.layers)
        out.push_back({apply_rope(l.k, rope).to(dtype), l.v.to(dtype)});
    return out;
}

}  // namespace

int64_t ContextKV::bytes() const {
    int64_t n = 0;
    for (const auto& l : layers)
        for (const auto* t : {&l.k, &l.v})
            n += t->defined() ? t->numel() * t->element_size() : 0;
    return n;
}

void ContextKV::append(const ContextKV& more) {
    if (more.length() == 0)
        return;
    if (length() == 0) {
        *this = more;
        return;
    }
    TORCH_CHECK(more.layers.size() == layers.size(), "ContextKV: appending ", more.layers.size(),
                " layers to ", layers.size());
    for (size_t i = 0; i < layers.size(); ++i)
        layers[i] = {torch::cat({layers[i].k, more.layers[i].k}, 1),
                     torch::cat({layers[i].v, more.layers[i].v}, 1)};
    positions = torch::cat({positions, more.positions});
}

ContextKV ContextKV::slice(int64_t begin, int64_t end) const {
    ContextKV out;
    out.positions = positions.slice(0, begin, end).clone();
    for (const auto& l : layers)
        out.layers.push_back({l.k.slice(1, begin, end).clone(), l.v.slice(1, begin, end).clone()});
    return out;
}

torch::Tensor context_rope_positions(const torch::Tensor& positions, double now, const TimeHorizon& horizon) {
    auto rel = positions.to(torch::kCPU, torch::kFloat64).clone();
    if (rel.size(0) == 0)
        return rel;
    auto t = rel.select(1, 0);
    t.sub_(now);
    const double oldest = -t.min().item<double>();
    const double h = horizon.horizon, e = std::max(0.0, horizon.exact);
    TORCH_CHECK(h <= 0 || h > e, "context horizon (", h, ") must exceed the span kept exact (", e, ")");
    if (h > 0 && oldest > h) {
        // t < -e: -e + (t + e) * (h - e) / (oldest - e); newer times unchanged.
        const auto older = t < -e;
        t.copy_(torch::where(older, (t + e) * ((h - e) / (oldest - e)) - e, t));
    }
    return rel;
}

ContextKV encode_context(WanDiTImpl& dit,
                         const ContextKV& past,
                         const ContextTokens& fresh,
                         const ContextText& text_at,
                         const TimeHorizon& horizon) {
    ContextKV out;
    const int64_t n = fresh.length();
    if (n == 0)
        return out;
    const auto& cfg = dit.config();
    TORCH_CHECK(fresh.tokens.dim() == 3 && fresh.tokens.size(2) == cfg.dim,
                "encode_context: tokens must be [B, n, ", cfg.dim, "], got ", fresh.tokens.sizes());
    TORCH_CHECK(fresh.positions.dim() == 2 && fresh.positions.size(0) == n && fresh.positions.size(1) == 3,
                "encode_context: positions must be [n, 3]");
    TORCH_CHECK(past.length() == 0 || past.layers.size() == static_cast<size_t>(cfg.num_layers),
                "encode_context: past context has ", past.layers.size(), " layers, the DiT ", cfg.num_layers);
    const auto device = fresh.tokens.device();
    const int64_t batch = fresh.tokens.size(0);
    const auto positions = fresh.positions.to(torch::kCPU, torch::kFloat64);

    // Availability groups in ascending order; tokens without a time come last, made just after the latest
    // position.
    torch::Tensor avail;
    if (fresh.available.defined()) {
        TORCH_CHECK(fresh.available.numel() == n, "encode_context: available must be [n]");
        avail = fresh.available.to(torch::kCPU, torch::kFloat64).flatten().clone();
    } else {
        avail = torch::full({n}, std::numeric_limits<double>::infinity(), torch::kFloat64);
    }
    const double latest = positions.select(1, 0).max().item<double>() + 1.0;
    std::vector<double> times(avail.data_ptr<double>(), avail.data_ptr<double>() + n);
    std::vector<double> groups = times;
    std::sort(groups.begin(), groups.end());
    groups.erase(std::unique(groups.begin(), groups.end()), groups.end());

    // Clean tokens: the time embedding of t = 0, the same for every token.
    const WanTimeEmbedding t0 = dit.embed_time(torch::zeros({1, 1}, torch::TensorOptions().device(device)));

    ContextKV done = past;  // past, then each encoded group
    for (const double g : groups) {
        std::vector<int64_t> idx;
        for (int64_t i = 0; i < n; ++i)
            if (times[i] == g)
                idx.push_back(i);
        const auto index = torch::tensor(idx, torch::kInt64);
        const auto x_in = fresh.tokens.index_select(1, index.to(device)).to(torch::kFloat);
        const auto pos = positions.index_select(0, index);
        const double now = std::isfinite(g) ? g : latest;
        // Keys seen by this group: everything done so far, then the group itself.
        const auto all_pos =
            context_rope_positions(done.length() ? torch::cat({done.positions, pos}) : pos, now, horizon);
        const int64_t lp = done.length();
        const auto rope_all = rope_cos_sin(all_pos.to(device), cfg.head_dim());
        const RopeTables rope_past{rope_all.cos.slice(0, 0, lp), rope_all.sin.slice(0, 0, lp)};
        const RopeTables rope_self{rope_all.cos.slice(0, lp), rope_all.sin.slice(0, lp)};

        torch::Tensor text = text_at(g).to(device);
        if (text.size(0) != batch)
            text = text.expand({batch, -1, -1});
        const int64_t m = x_in.size(1);
        const auto e0 = t0.e0.expand({batch, m, 6, cfg.dim});
        const std::vector<AttentionKV> extra =
            lp > 0 ? rotate(done, rope_past, dit.compute_dtype()) : std::vector<AttentionKV>{};

        ContextKV group;
        group.positions = pos;
        group.layers.resize(cfg.num_layers);
        torch::Tensor x = x_in;
        for (int64_t l = 0; l < cfg.num_layers; ++l) {
            BlockContext bc;
            bc.extra = lp > 0 ? &extra[l] : nullptr;
            bc.record = &group.layers[l];
            // The last block's output is not needed, only its keys and values; still run it whole (the block
            // records them on the way) since it is cheap next to the attention.
            x = dit.block(l).forward(x, e0, text, rope_self, {}, nullptr, &bc);
        }
        out.append(group);
        if (g == groups.back())
            break;  // nothing attends to `done` after the last group
        if (batch != 1 && done.length() > 0 && done.layers[0].k.size(0) == 1) {
            for (auto& layer : done.layers)
                layer = {layer.k.expand({batch, -1, -1, -1}), layer.v.expand({batch, -1, -1, -1})};
        }
        done.append(group);
    }
    return out;
}

ContextAttention attend_context(WanDiTImpl& dit,
                                const ContextKV& context,
                                double now,
                                const TimeHorizon& horizon) {
    ContextAttention out;
    if (context.length() == 0)
        return out;
    const auto device = context.layers.at(0).k.device();
    out.positions = context_rope_positions(context.positions, now, horizon);
    const auto rope = rope_cos_sin(out.positions.to(device), dit.config().head_dim());
    out.layers = rotate(context, rope, dit.compute_dtype());
    return out;
}

torch::Tensor dit_velocity(WanDiTImpl& dit,
                           const torch::Tensor& x,
                           const torch::Tensor& t,
                           const torch::Tensor& text,
                           const ContextAttention& context,
                           const torch::Tensor& section_times) {
    const SectionTokens section = section_tokens(dit, x, t, section_times);
    const int64_t layers = dit.config().num_layers;
    TORCH_CHECK(context.length() == 0 || static_cast<int64_t>(context.layers.size()) == layers,
                "dit_velocity: cached context has ", context.layers.size(), " layers, the DiT ", layers);
    TORCH_CHECK(context.cross.empty() || static_cast<int64_t>(context.cross.size()) == layers,
                "dit_velocity: context cross-attention must have one entry per block");
    const RopeTables rope = rope_cos_sin(section.positions.to(x.device()), dit.config().head_dim());
    const WanTimeEmbedding time = dit.embed_time(section.timesteps);
    auto h = section.tokens;
    for (int64_t l = 0; l < layers; ++l) {
        BlockContext bc;
        if (context.length() > 0)
            bc.extra = &context.layers[l];
        if (!context.cross.empty())
            bc.cross = context.cross[l];
        h = dit.block(l).forward(h, time.e0, text, rope, {}, nullptr, &bc);
    }
    return section_velocity(dit, dit.head->forward(h, time.e), section.grid);
}

}  // namespace memoreel
