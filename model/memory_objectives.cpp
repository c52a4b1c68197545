#include "model/memory_objectives.h"

#include "model/linear.h"
#include "model/lora.h"

namespace memoreel {

namespace {

// Per-frame sigma [B, F] -> per-token model timesteps [B, F*h*w] (sigma * 1000, not truncated).
torch::Tensor token_timesteps(const torch::Tensor& frame_sigma, int64_t tokens_per_frame) {
    return sigma_to_model_timestep(frame_sigma).repeat_interleave(tokens_per_frame, 1);
}

torch::Tensor expand_frames(const torch::Tensor& per_frame, const torch::Tensor& like) {
    // [B, F] -> [B, 1, F, 1, 1] broadcastable over [B, C, F, h, w]
    return per_frame.to(like.scalar_type()).view({like.size(0), 1, like.size(2), 1, 1});
}

int64_t tokens_per_frame(const WanDiTImpl& dit, const torch::Tensor& x) {
    const auto& p = dit.config().patch_size;
    return (x.size(3) / p[1]) * (x.size(4) / p[2]);
}

}  // namespace

TrainableSet parse_trainable_set(const std::string& name) {
    if (name == "encoder")
        return TrainableSet::kEncoder;
    if (name == "encoder+lora")
        return TrainableSet::kEncoderLora;
    if (name == "full")
        return TrainableSet::kFull;
    throw std::invalid_argument("trainable set must be encoder, encoder+lora or full, not '" + name + "'");
}

std::vector<torch::Tensor> select_trainable(WanDiTImpl& dit, MemoryEncoderImpl* encoder, TrainableSet set) {
    std::vector<torch::Tensor> out;
    for (auto& p : dit.named_parameters()) {
        const bool is_lora = p.key().find(".lora_") != std::string::npos;
        const bool train = set == TrainableSet::kFull || (set == TrainableSet::kEncoderLora && is_lora);
        p.value().set_requires_grad(train);
        if (train)
            out.push_back(p.value());
    }
    if (set == TrainableSet::kEncoderLora && out.empty())
        throw std::invalid_argument("encoder+lora: the DiT has no LoRA adapters attached");
    if (encoder) {
        for (auto& p : encoder->parameters()) {
            p.set_requires_grad(true);
            out.push_back(p);
        }
    } else if (set != TrainableSet::kFull) {
        throw std::invalid_argument("training the encoder needs an encoder");
    }
    return out;
}

torch::Tensor masked_flow_loss(const torch::Tensor& prediction,
                               const torch::Tensor& target,
                               const torch::Tensor& loss_mask) {
    TORCH_CHECK(prediction.sizes() == target.sizes(), "prediction and target shapes differ");
    const auto mask = expand_frames(loss_mask, prediction);
    const auto se = (prediction - target).pow(2) * mask;
    const double per_frame =
        static_cast<double>(prediction.size(1) * prediction.size(3) * prediction.size(4));
    return se.sum() / (loss_mask.sum().clamp_min(1) * per_frame);
}

torch::Tensor weighted_flow_loss(const torch::Tensor& prediction,
                                 const torch::Tensor& target,
                                 const torch::Tensor& loss_mask,
                                 const torch::Tensor& weight) {
    TORCH_CHECK(prediction.sizes() == target.sizes(), "prediction and target shapes differ");
    TORCH_CHECK(weight.dim() == 4 && weight.size(0) == prediction.size(0) &&
                    weight.size(1) == prediction.size(2) && weight.size(2) == prediction.size(3) &&
                    weight.size(3) == prediction.size(4),
                "loss weight must be [B, F, h, w] of the prediction, got ", weight.sizes());
    const auto w = weight.to(prediction.scalar_type()).unsqueeze(1) * expand_frames(loss_mask, prediction);
    const auto se = (prediction - target).pow(2) * w;
    return se.sum() / (w.sum() * static_cast<double>(prediction.size(1))).clamp_min(1e-12);
}

// ------------------------------------------------------------------------------------------------------ base

FlowLoss base_loss(WanDiTImpl& dit,
                   const torch::Tensor& latents,
                   const torch::Tensor& text,
                   const BaseOptions& options,
                   torch::Generator& gen) {
    const int64_t b = latents.size(0), f = latents.size(2);
    FlowLoss out;
    out.sigma = options.sigma.sample(b, gen).to(latents.device());
    const auto noise =
        torch::randn(latents.sizes(), gen, latents.options().device(torch::kCPU)).to(latents.device());
    torch::Tensor frame_sigma = out.sigma.unsqueeze(1).repeat({1, f});
    // First-frame conditioning: the first latent frame clean (as TI2V pins the image latent), not in the
    // loss.
    const auto cond = torch::rand({b}, gen).lt(options.first_frame_probability).to(latents.device());
    out.loss_mask = torch::ones({b, f}, latents.options());
    if (f > 1) {
        frame_sigma.select(1, 0).masked_fill_(cond, 0.0);
        out.loss_mask.select(1, 0).masked_fill_(cond, 0.0);
    }
    const auto s = expand_frames(frame_sigma, latents);
    const auto x_t = (1 - s) * latents + s * noise;
    out.target = flow_velocity_target(latents, noise);
    out.prediction =
        dit_velocity(dit, x_t, token_timesteps(frame_sigma, tokens_per_frame(dit, latents)), text);
    out.loss = options.weight.defined() ? weighted_flow_loss(out.prediction, out.target, out.loss_mask,
                                                             options.weight.to(latents.device()))
                                        : masked_flow_loss(out.prediction, out.target, out.loss_mask);
    return out;
}

// --------------------------------------------------------------------------------------------------
// retrieval

torch::Tensor draw_targets(int64_t batch, int64_t frames, int64_t k, torch::Generator& gen) {
    TORCH_CHECK(k >= 1 && k <= frames, "retrieval: need 1 <= k (", k, ") <= history frames (", frames, ")");
    std::vector<torch::Tensor> rows;
    for (int64_t i = 0; i < batch; ++i)
        rows.push_back(std::get<0>(torch::randperm(frames, gen, torch::kInt64).slice(0, 0, k).sort()));
    return torch::stack(rows);
}

namespace {

// Context tokens (times relative to the section) through the DiT in the cached mode, as the session runs
// them: time-causal among themselves, keys/values read by the section.
ContextAttention cached_context(WanDiTImpl& dit, const ContextTokens& context, const ContextText& text_at) {
    ContextAttention out = attend_context(dit, encode_context(dit, ContextKV{}, context, text_at), 0.0);
    out.cross = context.cross;
    return out;
}

}  // namespace

ContextTokens memory_context(const MemoryTokens& memory, const MemoryRates& rates, double t_ref) {
    ContextTokens c;
    if (memory.groups() == 0)
        return c;
    c.tokens = memory.flat();
    const auto grid = memory.grid();
    c.positions = memory_positions(grid, rates, t_ref, memory.first_group);
    c.available = (torch::arange(grid[0], torch::kFloat64) + double(memory.first_group + 1))
                      .mul(double(rates.rt))
                      .sub(t_ref)
                      .repeat_interleave(grid[1] * grid[2]);
    return c;
}

FlowLoss retrieval_loss(WanDiTImpl& dit,
                        const torch::Tensor& history,
                        const ContextTokens& memory,
                        const torch::Tensor& text,
                        const RetrievalOptions& options,
                        torch::Generator& gen,
                        torch::Tensor* omega_out) {
    TORCH_CHECK(history.dim() == 5, "retrieval: history must be [B, C, T, h, w]");
    const int64_t b = history.size(0), t = history.size(2);
    const auto dev = history.device();
    const torch::Tensor omega = draw_targets(b, t, options.targets, gen);  // [B, k] CPU
    if (omega_out)
        *omega_out = omega;
    FlowLoss out;
    out.sigma = options.sigma.sample(b, gen).to(dev);

    torch::Tensor clean, frame_sigma, times;
    if (!options.noise_as_mask) {
        // Only Omega enters the section, each frame at its true time.
        const auto idx = omega.to(dev);
        std::vector<torch::Tensor> picked;
        for (int64_t i = 0; i < b; ++i)
            picked.push_back(history[i].index_select(1, idx[i]));
        clean = torch::stack(picked);
        frame_sigma = out.sigma.unsqueeze(1).repeat({1, options.targets});
        times = omega.to(torch::kFloat64);
        out.loss_mask = torch::ones({b, options.targets}, history.options());
    } else {
        // Every frame enters; frames outside Omega are masked by noise from L(mask_sigma_min, 1), not in the
        // loss.
        clean = history;
        LogitNormalSigmaSampler mask = options.sigma;
        auto mask_sigma = options.mask_sigma_min + (1.0 - options.mask_sigma_min) * mask.sample(b * t, gen);
        frame_sigma = mask_sigma.view({b, t}).to(dev);
        out.loss_mask = torch::zeros({b, t}, history.options());
        for (int64_t i = 0; i < b; ++i) {
            const auto idx = omega[i].to(dev);
            frame_sigma[i].index_fill_(0, idx, out.sigma[i].item<double>());
            out.loss_mask[i].index_fill_(0, idx, 1.0);
        }
        times = torch::arange(t, torch::kFloat64);
    }
    const auto noise = torch::randn(clean.sizes(), gen, clean.options().device(torch::kCPU)).to(dev);
    const auto s = expand_frames(frame_sigma, clean);
    const auto x_t = (1 - s) * clean + s * noise;
    out.target = flow_velocity_target(clean, noise);
    const ContextAttention context = cached_context(dit, memory, [&](double) { return text; });
    out.prediction = dit_velocity(dit, x_t, token_timesteps(frame_sigma, tokens_per_frame(dit, clean)), text,
                                  context, times);
    out.loss = masked_flow_loss(out.prediction, out.target, out.loss_mask);
    return out;
}

// ------------------------------------------------------------------------------------------- autoregressive

double latent_frame_seconds(int64_t i, double fps, int64_t vae_temporal) {
    return i <= 0 ? 0.0 : static_cast<double>(vae_temporal * i - (vae_temporal - 1)) / fps;
}

ARCut draw_cut(int64_t frames,
               int64_t section,
               double fps,
               const Storyboard& storyboard,
               torch::Generator& gen) {
    TORCH_CHECK(section >= 1 && frames >= 2 * section, "autoregressive: a video of ", frames,
                " latent frames cannot hold a history section and a target section of ", section);
    const int64_t cuts =
        (frames - section) / section;  // boundaries section, 2*section, ... with a whole section after
    ARCut c;
    c.section = section;
    c.boundary = section * (1 + torch::randint(cuts, {1}, gen, torch::kInt64).item<int64_t>());
    c.start_seconds = latent_frame_seconds(c.boundary, fps);
    c.prompt_index = storyboard.index_nearest(c.start_seconds);
    return c;
}

FlowLoss autoregressive_loss(WanDiTImpl& dit,
                             const ARInputs& inputs,
                             const torch::Tensor& text,
                             const LogitNormalSigmaSampler& sigma,
                             torch::Generator& gen) {
    const auto& x0 = inputs.target;
    const int64_t b = x0.size(0), f = x0.size(2);
    FlowLoss out;
    out.sigma = sigma.sample(b, gen).to(x0.device());
    const auto noise = torch::randn(x0.sizes(), gen, x0.options().device(torch::kCPU)).to(x0.device());
    const auto frame_sigma = out.sigma.unsqueeze(1).repeat({1, f});
    const auto s = expand_frames(frame_sigma, x0);
    const auto x_t = (1 - s) * x0 + s * noise;
    // As the session: the memory's keys/values first (each group against the groups before it), then the
    // window encoded against the memory, so the newest memory group never sees the window.
    TORCH_CHECK(inputs.memory.length() == 0 || inputs.memory.available.defined(),
                "autoregressive: memory context needs availability times (memory_context sets them)");
    const ContextText history_text =
        inputs.history_text ? inputs.history_text : ContextText([&](double) { return text; });
    ContextKV kv = encode_context(dit, ContextKV{}, inputs.memory, history_text);
    if (inputs.window > 0) {
        TORCH_CHECK(inputs.window_latents.defined() && inputs.window_latents.size(2) == inputs.window,
                    "autoregressive: window_latents must hold the last ", inputs.window, " history frames");
        kv.append(encode_context(
            dit, kv, latent_context(dit, inputs.window_latents, -static_cast<double>(inputs.window)),
            history_text));
    }
    ContextAttention context = attend_context(dit, kv, 0.0);
    context.cross = inputs.memory.cross;
    out.target = flow_velocity_target(x0, noise);
    out.loss_mask = torch::ones({b, f}, x0.options());
    out.prediction =
        dit_velocity(dit, x_t, token_timesteps(frame_sigma, tokens_per_frame(dit, x0)), text, context);
    out.loss = masked_flow_loss(out.prediction, out.target, out.loss_mask);
    return out;
}

}  // namespace memoreel
