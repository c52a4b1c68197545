#include "model/context_dit.h"

#include "model/rope.h"

namespace memoreel {

ContextTokens latent_context(WanDiTImpl& dit, const torch::Tensor& latents, double time_offset) {
    TORCH_CHECK(latents.dim() == 5, "latent_context expects [B, C, F, H, W], got ", latents.sizes());
    const WanPatchTokens p = dit.patch_embed(latents);
    ContextTokens c;
    c.tokens = p.tokens;
    c.positions = rope_grid_positions(p.grid[0], p.grid[1], p.grid[2], {time_offset, 0.0, 0.0});
    return c;
}

ContextTokens concat_context(const std::vector<ContextTokens>& parts) {
    std::vector<torch::Tensor> tokens, positions;
    for (const auto& p : parts) {
        if (p.length() == 0)
            continue;
        TORCH_CHECK(p.positions.dim() == 2 && p.positions.size(0) == p.length() && p.positions.size(1) == 3,
                    "context positions must be [L, 3] matching the tokens");
        tokens.push_back(p.tokens);
        positions.push_back(p.positions.to(torch::kFloat64));
    }
    if (tokens.empty())
        return {};
    return {torch::cat(tokens, 1), torch::cat(positions, 0)};
}

torch::Tensor dit_velocity(WanDiTImpl& dit,
                           const torch::Tensor& x,
                           const torch::Tensor& t,
                           const torch::Tensor& text,
                           const ContextTokens* context,
                           const torch::Tensor& section_times) {
    TORCH_CHECK(x.dim() == 5, "dit_velocity expects x [B, C, F, H, W], got ", x.sizes());
    const int64_t batch = x.size(0);
    const WanPatchTokens section = dit.patch_embed(x);
    const int64_t ls = section.tokens.size(1);
    torch::Tensor t_section = t.to(x.device(), torch::kFloat32);
    if (t_section.dim() == 1)
        t_section = t_section.unsqueeze(1).expand({batch, ls});
    TORCH_CHECK(t_section.sizes() == torch::IntArrayRef({batch, ls}),
                "dit_velocity: t must be [B] or [B, section tokens] = [", batch, ", ", ls, "], got ",
                t.sizes());

    torch::Tensor tokens = section.tokens;
    torch::Tensor positions = rope_grid_positions(section.grid[0], section.grid[1], section.grid[2]);
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
        positions = positions.unsqueeze(0).repeat({batch, 1, 1});
        positions.select(2, 0).copy_(times.repeat_interleave(per_frame, 1));
    }
    torch::Tensor t_all = t_section;
    if (context && context->length() > 0) {
        TORCH_CHECK(context->tokens.size(0) == batch && context->tokens.size(2) == tokens.size(2),
                    "dit_velocity: context tokens must be [B, L, dim] with B = ", batch);
        tokens = torch::cat({tokens, context->tokens.to(tokens.device(), tokens.scalar_type())}, 1);
        torch::Tensor ctx_pos = context->positions.to(torch::kCPU, torch::kFloat64);
        if (positions.dim() == 3)
            ctx_pos = ctx_pos.unsqueeze(0).expand({positions.size(0), -1, -1});
        positions = torch::cat({positions, ctx_pos}, positions.dim() - 2);
        // Context is clean: timestep 0.
        t_all = torch::cat({t_section, torch::zeros({batch, context->length()}, t_section.options())}, 1);
    }
    const RopeTables rope = rope_cos_sin(positions.to(x.device()), dit.config().head_dim());
    const WanTimeEmbedding time = dit.embed_time(t_all);
    const torch::Tensor out = dit.forward_tokens(tokens, rope, time.e0, time.e, text, torch::Tensor());
    std::vector<torch::Tensor> videos;
    videos.reserve(batch);
    for (int64_t b = 0; b < batch; ++b)
        videos.push_back(dit.unpatchify(out[b].slice(0, 0, ls), section.grid));
    return torch::stack(videos);
}

}  // namespace memoreel
