#include "model/ar_session.h"

#include <chrono>

#include "model/memory_objectives.h"
#include "model/section_sampler.h"

namespace memoreel {

namespace {

double ms_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

int64_t bytes_of(const torch::Tensor& t) {
    return t.defined() ? t.numel() * t.element_size() : 0;
}

constexpr size_t kTextCacheEntries = 16;

}  // namespace

ARSession::ARSession(VideoModel& model,
                     MemoryEncoder encoder,
                     Storyboard storyboard,
                     SessionSettings settings)
    : model_(model),
      encoder_(std::move(encoder)),
      settings_(std::move(settings)),
      storyboard_(std::move(storyboard)),
      gen_(torch::make_generator<torch::CPUGeneratorImpl>(settings_.seed)) {
    const ModelConfig& c = model_.config();
    if (settings_.width == 0)
        settings_.width = c.width;
    if (settings_.height == 0)
        settings_.height = c.height;
    if (settings_.fps == 0)
        settings_.fps = static_cast<double>(c.fps);
    if (storyboard_.empty())
        throw std::invalid_argument("a session needs a storyboard with at least one prompt");
    if (settings_.use_memory && encoder_.is_empty())
        throw std::invalid_argument("use_memory is set but no memory encoder was given");
    const int64_t rt = settings_.use_memory ? encoder_->config().rt : 1;
    if (settings_.section_frames < 1 || settings_.section_frames % rt != 0)
        throw std::invalid_argument("section_frames (" + std::to_string(settings_.section_frames) +
                                    ") must be a positive multiple of the memory's rt (" +
                                    std::to_string(rt) + ")");
    if (settings_.window < 0)
        throw std::invalid_argument("window must be >= 0");
    GenerateRequest probe;
    probe.frames = 1 + c.vae.temporal_factor() * (settings_.section_frames - 1);
    probe.width = settings_.width;
    probe.height = settings_.height;
    validate_request(c, probe);
}

void ARSession::set_prompt(const StoryboardEntry& entry) {
    std::lock_guard<std::mutex> lock(storyboard_mutex_);
    storyboard_.set(entry);
}

Storyboard ARSession::storyboard() const {
    std::lock_guard<std::mutex> lock(storyboard_mutex_);
    return storyboard_;
}

double ARSession::seconds_generated() const {
    return static_cast<double>(pixels_done_) / settings_.fps;
}

torch::Tensor ARSession::text_embedding(const std::string& prompt) {
    auto it = text_cache_.find(prompt);
    if (it != text_cache_.end())
        return it->second;
    if (text_cache_.size() >= kTextCacheEntries)
        text_cache_.erase(text_cache_.begin());
    return text_cache_[prompt] = model_.embed_text(prompt);
}

ContextTokens ARSession::context_for(int64_t first_latent) {
    std::vector<ContextTokens> parts;
    if (memory_.defined() && memory_.size(1) > 0) {
        ContextTokens mem;
        mem.tokens = memory_;
        mem.positions =
            memory_positions(memory_grid_, encoder_->config().rates(), static_cast<double>(first_latent));
        // Beyond the trained horizon: rescale the history's times into [-horizon, 0).
        const double oldest = -mem.positions.select(1, 0).min().item<double>();
        if (settings_.horizon > 0 && oldest > settings_.horizon)
            mem.positions.select(1, 0).mul_(settings_.horizon / oldest);
        parts.push_back(mem);
    }
    if (window_.defined() && window_.size(2) > 0)
        parts.push_back(latent_context(model_.dit(), window_, -static_cast<double>(window_.size(2))));
    return concat_context(parts);
}

SectionResult ARSession::next_section(const std::function<void(int64_t, int64_t)>& on_step) {
    torch::InferenceMode guard;
    const ModelConfig& c = model_.config();
    const int64_t sf = c.vae.spatial_factor();
    SectionResult r;
    r.index = sections_;
    r.first_latent = latents_done_;
    r.start_seconds = static_cast<double>(pixels_done_) / settings_.fps;
    r.prompt = storyboard().in_force(r.start_seconds);  // read once: later changes apply to the next section

    // Sample.
    auto t0 = std::chrono::steady_clock::now();
    const double guidance = settings_.guidance.value_or(c.sampler.guidance);
    auto sampler =
        make_sampler(settings_.solver.value_or(c.sampler.solver), settings_.steps.value_or(c.sampler.steps),
                     settings_.shift.value_or(c.sampler.shift));
    SectionSampling s;
    s.guidance = guidance;
    s.text_cond = text_embedding(r.prompt);
    if (guidance != 1.0)
        s.text_uncond = text_embedding(settings_.negative_prompt.empty() ? c.sampler.negative_prompt
                                                                         : settings_.negative_prompt);
    s.noise =
        torch::randn({1, c.vae.z_dim, settings_.section_frames, settings_.height / sf, settings_.width / sf},
                     gen_, torch::TensorOptions().dtype(torch::kFloat32))
            .to(model_.device());
    const ContextTokens context = context_for(r.first_latent);
    r.context_tokens = context.length();
    s.context = &context;
    const torch::Tensor latents = sample_section(model_.dit(), *sampler, s, on_step);  // [1, C, S, h, w]
    r.sample_ms = ms_since(t0);

    // Decode with the causal cache: the first section gives 1 + 4(S-1) frames, later ones 4S.
    t0 = std::chrono::steady_clock::now();
    const torch::Tensor frames = model_.vae().decode_chunk(decoder_, latents);  // [1, 3, n, H, W]
    r.decode_ms = ms_since(t0);

    // Append to memory and window.
    t0 = std::chrono::steady_clock::now();
    if (settings_.use_memory) {
        MemoryInput in;
        in.latents = latents;
        if (encoder_->config().has_lr())
            in.pixels = frames;
        const MemoryTokens fresh = encoder_->encode_append(encoder_state_, in);
        if (fresh.groups() > 0) {
            const auto grid = fresh.grid();
            memory_ = memory_.defined() ? torch::cat({memory_, fresh.flat()}, 1) : fresh.flat();
            memory_grid_ = {memory_grid_[0] + grid[0], grid[1], grid[2]};
        }
    }
    if (settings_.window > 0) {
        window_ = window_.defined() ? torch::cat({window_, latents}, 2) : latents;
        if (window_.size(2) > settings_.window)
            window_ = window_.slice(2, window_.size(2) - settings_.window).clone();
    }
    r.memory_ms = ms_since(t0);

    r.latents = latents[0];
    r.frames = frames[0];
    r.memory_tokens = memory_tokens();
    latents_done_ += settings_.section_frames;
    pixels_done_ += frames.size(2);
    ++sections_;
    return r;
}

std::map<std::string, int64_t> ARSession::state_bytes() const {
    std::map<std::string, int64_t> out;
    out["memory_tokens"] = bytes_of(memory_);
    int64_t enc = 0;
    for (const auto& [name, t] : encoder_state_.snapshot_tensors())
        enc += bytes_of(t);
    out["encoder_state"] = enc;
    int64_t dec = 0;
    for (const auto& [name, t] : decoder_.snapshot().tensors)
        dec += bytes_of(t);
    out["decoder_state"] = dec;
    out["window"] = bytes_of(window_);
    return out;
}

}  // namespace memoreel
