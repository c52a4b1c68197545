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
            memories_.push_back({std::move(e), {}, {}, {}, {0, 0, 0}});
        }
        if (memories_.empty())
            throw std::invalid_argument("use_memory is set but no memory encoder was given");
    }
    // Sections need not end on a memory group boundary: a group still incomplete at a section's start enters
    // that section's context provisionally (encode_partial) and the memory for good once it completes.
    if (settings_.section_frames < 1)
        throw std::invalid_argument("section_frames must be >= 1, got " +
                                    std::to_string(settings_.section_frames));
    if (settings_.horizon < 0 || (settings_.horizon > 0 && settings_.horizon <= settings_.window))
        throw std::invalid_argument("horizon must be 0 (none) or longer than the window (" +
                                    std::to_string(settings_.window) + " latent frames)");
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

ContextAttention ARSession::context_for(int64_t first_latent) {
    torch::InferenceMode guard;
    const double now = static_cast<double>(first_latent);
    // The window (and the newest memory beside it) keeps exact times; older history is rescaled into the
    // horizon.
    const TimeHorizon horizon(settings_.horizon, static_cast<double>(settings_.window));
    std::vector<std::function<torch::Tensor(const torch::Tensor&)>> cross;
    for (auto& m : memories_) {
        const auto fns = m.encoder->cross_attention(m.features);
        if (fns.empty())
            continue;
        if (cross.empty()) {
            cross = fns;
            continue;
        }
        // Several encoders with the enhancement: their cross-attentions add up.
        for (size_t l = 0; l < cross.size(); ++l)
            cross[l] = [a = cross[l], b = fns[l]](const torch::Tensor& x) { return a(x) + b(x); };
    }
    // Per-section context, encoded now against the memory: the provisional tokens of groups not yet complete
    // (their frames are generated but the group is not), and the window.
    std::vector<ContextTokens> fresh;
    for (auto& m : memories_) {
        if (!m.state.started())
            continue;
        ContextTokens partial =
            memory_context(m.encoder->encode_partial(m.state), m.encoder->config().rates(), 0.0);
        if (partial.length() > 0) {
            partial.available = torch::full({partial.length()}, now, torch::kFloat64);
            // Provisional: centred on the frames that exist so far, never in the section's future.
            const int64_t rt = m.encoder->config().rt;
            const int64_t start = (first_latent / rt) * rt;
            partial.positions.select(1, 0).fill_(static_cast<double>(start) +
                                                 static_cast<double>(first_latent - start - 1) / 2.0);
            fresh.push_back(std::move(partial));
        }
    }
    if (window_.defined() && window_.size(2) > 0)
        fresh.push_back(latent_context(model_.dit(), window_, now - static_cast<double>(window_.size(2))));
    ContextAttention out;
    if (!fresh.empty()) {
        const torch::Tensor text = text_embedding(last_prompt_);
        ContextKV all = memory_kv_;
        all.append(encode_context(
            model_.dit(), memory_kv_, concat_context(fresh), [&](double) { return text; }, horizon));
        out = attend_context(model_.dit(), all, now, horizon);
    } else {
        out = attend_context(model_.dit(), memory_kv_, now, horizon);
    }
    out.cross = std::move(cross);
    return out;
}

void ARSession::append_memory(const std::vector<MemoryTokens>& fresh, const torch::Tensor& text) {
    std::vector<ContextTokens> parts;
    for (size_t i = 0; i < memories_.size(); ++i) {
        auto& m = memories_[i];
        const MemoryTokens& f = fresh[i];
        if (f.groups() == 0)
            continue;
        const auto grid = f.grid();
        m.tokens = m.tokens.defined() ? torch::cat({m.tokens, f.flat()}, 1) : f.flat();
        if (f.features.defined())
            m.features =
                m.features.defined() ? torch::cat({m.features, f.flat_features()}, 1) : f.flat_features();
        m.grid = {m.grid[0] + grid[0], grid[1], grid[2]};
        ContextTokens c = memory_context(f, m.encoder->config().rates(), 0.0);
        parts.push_back(std::move(c));
    }
    const ContextTokens all = concat_context(parts);
    if (all.length() == 0)
        return;
    memory_kv_.append(encode_context(
        model_.dit(), memory_kv_, all, [&](double) { return text; },
        TimeHorizon(settings_.horizon, static_cast<double>(settings_.window))));
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
    const ContextAttention context = context_for(r.first_latent);
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
    std::vector<MemoryTokens> fresh;
    for (auto& m : memories_) {
        MemoryInput in;
        in.latents = latents;
        if (m.encoder->config().has_lr())
            in.pixels = frames;
        fresh.push_back(m.encoder->encode_append(m.state, in));
    }
    append_memory(fresh, s.text_cond);
    last_prompt_ = r.prompt;
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
    out["memory_kv"] = memory_kv_.bytes();
    int64_t features = 0;
    for (const auto& m : memories_)
        features += bytes_of(m.features);
    out["memory_features"] = features;
    return out;
}

}  // namespace memoreel
