#include "model/ar_session.h"

#include <chrono>
#include <limits>
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

// ---------------------------------------------------------------------------------------------------------------
// Snapshots

namespace {

constexpr int64_t kSnapshotFormat = 1;

nlohmann::json settings_json(const SessionSettings& s, size_t encoders) {
    return {{"use_memory", s.use_memory},
            {"window", s.window},
            {"section_frames", s.section_frames},
            {"horizon", s.horizon},
            {"width", s.width},
            {"height", s.height},
            {"fps", s.fps},
            {"seed", s.seed},
            {"encoders", encoders}};
}

}  // namespace

ARSessionSnapshot ARSession::snapshot() const {
    ARSessionSnapshot out;
    auto& t = out.tensors;
    t.emplace_back("rng", gen_.get_state());
    if (window_.defined())
        t.emplace_back("window", window_);
    for (size_t l = 0; l < memory_kv_.layers.size(); ++l) {
        t.emplace_back("kv." + std::to_string(l) + ".k", memory_kv_.layers[l].k);
        t.emplace_back("kv." + std::to_string(l) + ".v", memory_kv_.layers[l].v);
    }
    if (memory_kv_.positions.defined())
        t.emplace_back("kv.positions", memory_kv_.positions);
    nlohmann::json memories = nlohmann::json::array();
    for (size_t i = 0; i < memories_.size(); ++i) {
        const auto& m = memories_[i];
        const std::string p = "mem" + std::to_string(i) + ".";
        if (m.tokens.defined())
            t.emplace_back(p + "tokens", m.tokens);
        if (m.features.defined())
            t.emplace_back(p + "features", m.features);
        for (const auto& [name, tensor] : m.state.snapshot_tensors())
            t.emplace_back(p + "state." + name, tensor);
        memories.push_back({{"grid", m.grid}, {"counters", m.state.snapshot_counters()}});
    }
    const VaeStateSnapshot dec = decoder_.snapshot();
    for (const auto& [name, tensor] : dec.tensors)
        t.emplace_back("dec." + name, tensor);
    out.meta = {{"format", kSnapshotFormat},
                {"settings", settings_json(settings_, memories_.size())},
                {"sections", sections_},
                {"latents_done", latents_done_},
                {"pixels_done", pixels_done_},
                {"last_prompt", last_prompt_},
                {"kv_layers", memory_kv_.layers.size()},
                {"storyboard", storyboard().to_json()},
                {"memories", memories},
                {"decoder", dec.counters}};
    return out;
}

void ARSession::restore(const ARSessionSnapshot& snap) {
    const nlohmann::json& m = snap.meta;
    try {
        if (m.at("format").get<int64_t>() != kSnapshotFormat)
            throw std::invalid_argument("unknown snapshot format " + m.at("format").dump());
        const nlohmann::json want = settings_json(settings_, memories_.size());
        if (m.at("settings") != want)
            throw std::invalid_argument("the snapshot was made with other settings: " +
                                        m.at("settings").dump() + ", this session has " + want.dump());
        std::map<std::string, torch::Tensor> tensors(snap.tensors.begin(), snap.tensors.end());
        const auto take = [&](const std::string& name, bool required) {
            const auto it = tensors.find(name);
            if (it == tensors.end()) {
                if (required)
                    throw std::invalid_argument("the snapshot has no tensor '" + name + "'");
                return torch::Tensor();
            }
            return it->second.to(model_.device());
        };
        const auto with_prefix = [&](const std::string& prefix) {
            std::vector<std::pair<std::string, torch::Tensor>> out;
            for (const auto& [name, tensor] : tensors)
                if (name.rfind(prefix, 0) == 0)
                    out.emplace_back(name.substr(prefix.size()), tensor.to(model_.device()));
            return out;
        };
        const auto& mems = m.at("memories");
        if (mems.size() != memories_.size())
            throw std::invalid_argument("the snapshot has " + std::to_string(mems.size()) +
                                        " memories, this session " + std::to_string(memories_.size()));
        std::vector<Memory> memories = memories_;
        for (size_t i = 0; i < memories.size(); ++i) {
            const std::string p = "mem" + std::to_string(i) + ".";
            memories[i].tokens = take(p + "tokens", false);
            memories[i].features = take(p + "features", false);
            memories[i].grid = mems[i].at("grid").get<std::array<int64_t, 3>>();
            memories[i].state = MemoryEncoderState::restore(
                with_prefix(p + "state."), mems[i].at("counters").get<std::map<std::string, int64_t>>());
        }
        ContextKV kv;
        const auto layers = m.at("kv_layers").get<size_t>();
        if (layers > 0 && layers != model_.config().dit.num_layers)
            throw std::invalid_argument("the snapshot's memory has " + std::to_string(layers) +
                                        " DiT blocks, the model " +
                                        std::to_string(model_.config().dit.num_layers));
        for (size_t l = 0; l < layers; ++l)
            kv.layers.push_back(
                {take("kv." + std::to_string(l) + ".k", true), take("kv." + std::to_string(l) + ".v", true)});
        kv.positions = layers > 0 ? take("kv.positions", true).cpu() : torch::Tensor();
        VaeStateSnapshot dec;
        dec.tensors = with_prefix("dec.");
        dec.counters = m.at("decoder").get<std::map<std::string, int64_t>>();
        VaeDecoderState decoder = VaeDecoderState::restore(dec);
        const torch::Tensor rng = tensors.count("rng") ? tensors.at("rng") : torch::Tensor();
        if (!rng.defined())
            throw std::invalid_argument("the snapshot has no tensor 'rng'");
        Storyboard story = Storyboard::from_json(m.at("storyboard"), "snapshot");
        // Everything is read: commit.
        gen_.set_current_seed(settings_.seed);
        gen_.set_state(rng);
        memories_ = std::move(memories);
        memory_kv_ = std::move(kv);
        decoder_ = std::move(decoder);
        window_ = take("window", false);
        sections_ = m.at("sections").get<int64_t>();
        latents_done_ = m.at("latents_done").get<int64_t>();
        pixels_done_ = m.at("pixels_done").get<int64_t>();
        last_prompt_ = m.at("last_prompt").get<std::string>();
        {
            std::lock_guard<std::mutex> lock(storyboard_mutex_);
            storyboard_ = std::move(story);
        }
        text_cache_.clear();
    } catch (const nlohmann::json::exception& e) {
        throw std::invalid_argument(std::string("malformed session snapshot: ") + e.what());
    } catch (const c10::Error& e) {
        throw std::invalid_argument(std::string("malformed session snapshot: ") + e.what_without_backtrace());
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Retrieval

int64_t ARSession::latent_frames_in_memory() const {
    if (memories_.empty())
        return 0;
    int64_t frames = std::numeric_limits<int64_t>::max();
    for (const auto& m : memories_)
        frames = std::min(frames, m.grid[0] * m.encoder->config().rt);
    return std::min(frames, latents_done_);
}

torch::Tensor ARSession::recall_frame(int64_t latent_frame, uint64_t seed) {
    torch::InferenceMode guard;
    if (latent_frame < 0 || latent_frame >= latent_frames_in_memory())
        throw std::out_of_range("latent frame " + std::to_string(latent_frame) +
                                " is not in the memory (it holds " +
                                std::to_string(latent_frames_in_memory()) + " latent frames)");
    const ModelConfig& c = model_.config();
    const int64_t sf = c.vae.spatial_factor();
    // Only the memory (no window, no provisional group), seen from the recalled frame's own time, with the
    // caption that was in force when it was made.
    ContextAttention context = attend_context(model_.dit(), memory_kv_, static_cast<double>(latent_frame));
    for (auto& m : memories_) {
        auto fns = m.encoder->cross_attention(m.features);
        if (context.cross.empty()) {
            context.cross = std::move(fns);
            continue;
        }
        for (size_t l = 0; l < fns.size() && l < context.cross.size(); ++l)
            context.cross[l] = [a = context.cross[l], b = fns[l]](const torch::Tensor& x) {
                return a(x) + b(x);
            };
    }
    const SamplerConfig sc = c.sampler.with(settings_.sampling);
    auto sampler = make_sampler(sc);
    SectionSampling s;
    s.guidance = sc.guidance;
    const double seconds =
        latent_frame == 0
            ? 0.0
            : static_cast<double>(1 + c.vae.temporal_factor() * (latent_frame - 1)) / settings_.fps;
    s.text_cond = text_embedding(storyboard().in_force(seconds));
    if (s.guidance != 1.0)
        s.text_uncond = text_embedding(settings_.negative_prompt.empty() ? c.sampler.negative_prompt
                                                                         : settings_.negative_prompt);
    auto gen = torch::make_generator<torch::CPUGeneratorImpl>(seed);
    s.noise = torch::randn({1, c.vae.z_dim, 1, settings_.height / sf, settings_.width / sf}, gen,
                           torch::TensorOptions().dtype(torch::kFloat32))
                  .to(model_.device());
    s.context = &context;
    const torch::Tensor z = sample_section(model_.dit(), *sampler, s);  // [1, C, 1, h, w]
    return model_.vae().decode(z)[0].select(1, 0);
}

}  // namespace memoreel
