#include "model/context_dit.h"

#include <limits>

#include "model/rope.h"

namespace memoreel {

ContextTokens latent_context(WanDiTImpl& dit, const torch::Tensor& latents, double time_offset) {
    TORCH_CHECK(latents.dim() == 5, "latent_context expects [B, C, F, H, W], got ", latents.sizes());
    const WanPatchTokens p = dit.patch_embed(latents);
    ContextTokens c;
    c.tokens = p.tokens;
    c.positions = rope_grid_positions(p.grid[0], p.grid[1], p.grid[2], {time_offset, 0.0, 0.0});
    // The frames exist together once the last of them is done.
    c.available = torch::full({c.positions.size(0)}, time_offset + static_cast<double>(p.grid[0]),
                              torch::TensorOptions().dtype(torch::kFloat64));
    return c;
}

ContextTokens concat_context(const std::vector<ContextTokens>& parts) {
    std::vector<torch::Tensor> tokens, positions, available;
    bool any_available = false;
    for (const auto& p : parts)
        any_available = any_available || (p.length() > 0 && p.available.defined());
    for (const auto& p : parts) {
        if (p.length() == 0)
            continue;
        TORCH_CHECK(p.positions.dim() == 2 && p.positions.size(0) == p.length() && p.positions.size(1) == 3,
                    "context positions must be [L, 3] matching the tokens");
        TORCH_CHECK(!p.available.defined() || p.available.numel() == p.length(),
                    "context availability times must be [L] matching the tokens");
        tokens.push_back(p.tokens);
        positions.push_back(p.positions.to(torch::kFloat64));
        if (any_available)
            available.push_back(p.available.defined()
                                    ? p.available.to(torch::kFloat64).flatten()
                                    : torch::full({p.length()}, std::numeric_limits<double>::infinity(),
                                                  torch::TensorOptions().dtype(torch::kFloat64)));
    }
    if (tokens.empty())
        return {};
    ContextTokens c;
    c.tokens = torch::cat(tokens, 1);
    c.positions = torch::cat(positions, 0);
    if (any_available)
        c.available = torch::cat(available);
    for (const auto& p : parts) {
        if (p.cross.empty())
            continue;
        if (c.cross.empty()) {
            c.cross = p.cross;
            continue;
        }
        TORCH_CHECK(c.cross.size() == p.cross.size(), "context cross-attention lists differ in length");
        for (size_t l = 0; l < c.cross.size(); ++l)
            c.cross[l] = [a = c.cross[l], b = p.cross[l]](const torch::Tensor& x) { return a(x) + b(x); };
    }
    return c;
}

SectionTokens section_tokens(WanDiTImpl& dit,
                             const torch::Tensor& x,
                             const torch::Tensor& t,
                             const torch::Tensor& section_times) {
    TORCH_CHECK(x.dim() == 5, "dit_velocity expects x [B, C, F, H, W], got ", x.sizes());
    const int64_t batch = x.size(0);
    const WanPatchTokens section = dit.patch_embed(x);
    const int64_t ls = section.tokens.size(1);
    SectionTokens out;
    out.grid = section.grid;
    out.tokens = section.tokens;
    out.timesteps = t.to(x.device(), torch::kFloat32);
    if (out.timesteps.dim() == 1)
        out.timesteps = out.timesteps.unsqueeze(1).expand({batch, ls});
    TORCH_CHECK(out.timesteps.sizes() == torch::IntArrayRef({batch, ls}),
                "dit_velocity: t must be [B] or [B, section tokens] = [", batch, ", ", ls, "], got ",
                t.sizes());
    out.positions = rope_grid_positions(section.grid[0], section.grid[1], section.grid[2]);
    if (section_times.defined()) {
        const int64_t f = section.grid[0], per_frame = section.grid[1] * section.grid[2];
        torch::Tensor times = section_times.to(torch::kCPU, torch::kFloat64);
        if (times.dim() == 1)
            times = times.unsqueeze(0);
        TORCH_CHECK(times.dim() == 2 && times.size(1) == f && (times.size(0) == 1 || times.size(0) == batch),
                    "dit_velocity: section_times must be [F] or [B, F] with F = ", f, ", got ",
                    section_times.sizes());
        times = times.expand({batch, f});
        // Every token of frame i takes the frame's time; (h, w) stay on the grid.
        out.positions = out.positions.unsqueeze(0).repeat({batch, 1, 1});
        out.positions.select(2, 0).copy_(times.repeat_interleave(per_frame, 1));
    }
    return out;
}

torch::Tensor section_velocity(WanDiTImpl& dit,
                               const torch::Tensor& head_out,
                               const std::array<int64_t, 3>& grid) {
    const int64_t ls = grid[0] * grid[1] * grid[2];
    std::vector<torch::Tensor> videos;
    videos.reserve(head_out.size(0));
    for (int64_t b = 0; b < head_out.size(0); ++b)
        videos.push_back(dit.unpatchify(head_out[b].slice(0, 0, ls), grid));
    return torch::stack(videos);
}

torch::Tensor dit_velocity(WanDiTImpl& dit,
                           const torch::Tensor& x,
                           const torch::Tensor& t,
                           const torch::Tensor& text,
                           const ContextTokens* context,
                           const torch::Tensor& section_times) {
    const SectionTokens section = section_tokens(dit, x, t, section_times);
    const int64_t batch = x.size(0);
    torch::Tensor tokens = section.tokens;
    torch::Tensor positions = section.positions;
    torch::Tensor t_all = section.timesteps;
    if (context && context->length() > 0) {
        TORCH_CHECK(context->tokens.size(0) == batch && context->tokens.size(2) == tokens.size(2),
                    "dit_velocity: context tokens must be [B, L, dim] with B = ", batch);
        tokens = torch::cat({tokens, context->tokens.to(tokens.device(), tokens.scalar_type())}, 1);
        torch::Tensor ctx_pos = context->positions.to(torch::kCPU, torch::kFloat64);
        if (positions.dim() == 3)
            ctx_pos = ctx_pos.unsqueeze(0).expand({positions.size(0), -1, -1});
        positions = torch::cat({positions, ctx_pos}, positions.dim() - 2);
        // Context is clean: timestep 0.
        t_all = torch::cat({t_all, torch::zeros({batch, context->length()}, t_all.options())}, 1);
    }
    const RopeTables rope = rope_cos_sin(positions.to(x.device()), dit.config().head_dim());
    const WanTimeEmbedding time = dit.embed_time(t_all);
    const torch::Tensor out = dit.forward_tokens(tokens, rope, time.e0, time.e, text, torch::Tensor());
    return section_velocity(dit, out, section.grid);
}

}  // namespace memoreel
