#include "model/ar_session.h"

#include <chrono>
#include <numeric>

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
    : ARSession(
          model,
          encoder.is_empty() ? std::vector<MemoryEncoder>{} : std::vector<MemoryEncoder>{std::move(encoder)},
          std::move(storyboard),
          std::move(settings)) {}

ARSession::ARSession(VideoModel& model,
                     std::vector<MemoryEncoder> encoders,
                     Storyboard storyboard,
                     SessionSettings settings)
    : model_(model),
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
    if (settings_.use_memory) {
        for (auto& e : encoders) {
            if (e.is_empty())
                throw std::invalid_argument("a memory encoder is null");
            memories_.push_back({std::move(e), {}, {}, {0, 0, 0}});
        }
        if (memories_.empty())
            throw std::invalid_argument("use_memory is set but no memory encoder was given");
    }
    // Sections must end on a group boundary of every encoder so that memory appends align.
    int64_t rt = 1;
    for (const auto& m : memories_)
        rt = std::lcm(rt, m.encoder->config().rt);
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
    std::vector<ContextTokens> mems;
    double oldest = 0;
    for (const auto& m : memories_) {
        if (!m.tokens.defined() || m.tokens.size(1) == 0)
            continue;
        ContextTokens mem;
        mem.tokens = m.tokens;
        mem.positions =
            memory_positions(m.grid, m.encoder->config().rates(), static_cast<double>(first_latent));
        oldest = std::max(oldest, -mem.positions.select(1, 0).min().item<double>());
        mems.push_back(mem);
    }
    // Beyond the trained horizon: rescale the history's times into [-horizon, 0), one scale for every encoder
    // so their tokens stay aligned in time.
    if (settings_.horizon > 0 && oldest > settings_.horizon)
        for (auto& mem : mems)
            mem.positions.select(1, 0).mul_(settings_.horizon / oldest);
    parts.insert(parts.end(), mems.begin(), mems.end());
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
    const SamplerConfig sc = c.sampler.with(settings_.sampling);
    const double guidance = sc.guidance;
    auto sampler = make_sampler(sc);
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
    for (auto& m : memories_) {
        MemoryInput in;
        in.latents = latents;
        if (m.encoder->config().has_lr())
            in.pixels = frames;
        const MemoryTokens fresh = m.encoder->encode_append(m.state, in);
        if (fresh.groups() > 0) {
            const auto grid = fresh.grid();
            m.tokens = m.tokens.defined() ? torch::cat({m.tokens, fresh.flat()}, 1) : fresh.flat();
            m.grid = {m.grid[0] + grid[0], grid[1], grid[2]};
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

int64_t ARSession::memory_tokens() const {
    int64_t n = 0;
    for (const auto& m : memories_)
        n += m.tokens.defined() ? m.tokens.size(1) : 0;
    return n;
}

torch::Tensor ARSession::memory() const {
    std::vector<torch::Tensor> parts;
    for (const auto& m : memories_)
        if (m.tokens.defined())
            parts.push_back(m.tokens);
    return parts.empty() ? torch::Tensor() : torch::cat(parts, 1);
}

std::map<std::string, int64_t> ARSession::state_bytes() const {
    std::map<std::string, int64_t> out;
    int64_t tokens = 0, enc = 0;
    for (const auto& m : memories_) {
        tokens += bytes_of(m.tokens);
        for (const auto& [name, t] : m.state.snapshot_tensors())
            enc += bytes_of(t);
    }
    out["memory_tokens"] = tokens;
    out["encoder_state"] = enc;
    int64_t dec = 0;
    for (const auto& [name, t] : decoder_.snapshot().tensors)
        dec += bytes_of(t);
    out["decoder_state"] = dec;
    out["window"] = bytes_of(window_);
    return out;
}

}  // namespace memoreel
