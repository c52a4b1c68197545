#include "server/live_session.h"

#include <spdlog/spdlog.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>

#include "model/json_util.h"
#include "model/session_snapshot.h"
#include "server/random_id.h"
#include "stream/png_encoder.h"
#include "stream/video_file_reader.h"

namespace memoreel {

namespace fs = std::filesystem;

namespace {

constexpr int64_t kStateFormat = 1;
// Section latencies kept for the status percentiles: the recent ones (and session.json stays small).
constexpr size_t kLatencyWindow = 256;

double ms_between(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
}

int64_t unix_now() {
    return std::chrono::duration_cast<std::chrono::seconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

SectionClock clock_for(const ModelConfig& c, int64_t section_frames, double fps) {
    const int64_t tf = c.vae.temporal_factor();
    return {1 + tf * (section_frames - 1), tf * section_frames, fps};
}

// [3, H, W] or [3, T, H, W] in [-1, 1] -> RGB24 bytes of the first frame.
std::vector<uint8_t> to_rgb_bytes(const torch::Tensor& frame) {
    const torch::Tensor video = frame.dim() == 3 ? frame.unsqueeze(1) : frame;
    const torch::Tensor rgb = video_to_rgb24(video)[0].contiguous();
    return std::vector<uint8_t>(rgb.data_ptr<uint8_t>(), rgb.data_ptr<uint8_t>() + rgb.numel());
}

double psnr_bytes(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
    double mse = 0;
    for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
        const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
        mse += d * d;
    }
    mse /= static_cast<double>(std::max<size_t>(1, a.size()));
    return mse <= 0 ? 99.0 : 10.0 * std::log10(255.0 * 255.0 / mse);
}

}  // namespace

LiveSession::LiveSession(ModelHost& host, const LiveSessionSettings& settings)
    : host_(host), settings_(settings), ledger_(Storyboard(), SectionClock{}) {
    started_ = clock_origin_ = last_activity_ = std::chrono::steady_clock::now();
}

LiveSession::~LiveSession() = default;

std::shared_ptr<LiveSession> LiveSession::create(ModelHost& host,
                                                 const protocol::StartRequest& request,
                                                 const LiveSessionSettings& settings,
                                                 const std::string& dir,
                                                 const std::string& id,
                                                 Kind kind) {
    std::shared_ptr<LiveSession> s(new LiveSession(host, settings));
    const ModelConfig& c = host.config();
    s->id_ = id;
    s->token_ = random_hex(24);
    s->dir_ = dir;
    s->kind_ = kind;
    s->created_at_ = unix_now();
    s->request_ = request;
    s->format_ = request.format;
    SessionSettings& st = s->ar_settings_;
    st.use_memory = request.memory.enabled.value_or(host.has_memory());
    if (st.use_memory && !host.has_memory())
        throw protocol::ProtocolError("bad_field",
                                      "field 'memory.enabled': this model has no memory encoder");
    st.window = request.memory.window.value_or(host.default_window());
    st.section_frames = settings.section_frames;
    st.width = request.width.value_or(c.width);
    st.height = request.height.value_or(c.height);
    st.fps = static_cast<double>(c.fps);
    st.seed = request.seed.value_or(std::random_device{}() & 0xffffffffu);
    if (request.sampling.steps)
        st.sampling.steps = *request.sampling.steps;
    if (request.sampling.guidance)
        st.sampling.guidance = *request.sampling.guidance;
    s->target_seconds_ = request.seconds.value_or(settings.default_seconds);
    s->request_.seed = st.seed;  // recorded: the same request reproduces the session
    try {
        s->ar_ = host.make_session(request.storyboard, st);
    } catch (const std::invalid_argument& e) {
        throw protocol::ProtocolError("bad_field", e.what());
    }
    s->ledger_ =
        EventLedger(request.storyboard, clock_for(c, st.section_frames, st.fps), settings.limits.max_prompts);
    fs::create_directories(dir);
    s->open_encoders();
    std::lock_guard<std::mutex> lock(s->mutex_);
    write_file_atomic(dir + "/session.json", s->state_json().dump(1));
    return s;
}

std::shared_ptr<LiveSession> LiveSession::restore(ModelHost& host,
                                                  const LiveSessionSettings& settings,
                                                  const std::string& dir) {
    const std::string file = dir + "/session.json";
    std::shared_ptr<LiveSession> s(new LiveSession(host, settings));
    try {
        const nlohmann::json j = read_json_file(file);
        if (j.at("format").get<int64_t>() != kStateFormat)
            throw std::runtime_error("unknown format " + j.at("format").dump());
        s->id_ = j.at("id").get<std::string>();
        s->token_ = j.at("token").get<std::string>();
        s->dir_ = dir;
        s->kind_ = j.at("kind").get<std::string>() == "job" ? Kind::kJob : Kind::kLive;
        s->created_at_ = j.at("created_at").get<int64_t>();
        // The request was checked against the limits in force when it came; a config changed since then
        // must not make a stored session unreadable.
        protocol::Limits stored;
        stored.max_message_bytes = stored.max_prompt_bytes = stored.max_prompts = SIZE_MAX;
        stored.max_seconds = 1e12;
        s->request_ = protocol::parse_start_request(j.at("request"), stored);
        s->format_ = s->request_.format;
        const auto& st = j.at("settings");
        SessionSettings& a = s->ar_settings_;
        a.use_memory = st.at("use_memory").get<bool>();
        a.window = st.at("window").get<int64_t>();
        a.section_frames = st.at("section_frames").get<int64_t>();
        a.width = st.at("width").get<int64_t>();
        a.height = st.at("height").get<int64_t>();
        a.fps = st.at("fps").get<double>();
        a.seed = st.at("seed").get<uint64_t>();
        if (st.contains("steps"))
            a.sampling.steps = st.at("steps").get<int64_t>();
        if (st.contains("guidance"))
            a.sampling.guidance = st.at("guidance").get<double>();
        s->target_seconds_ = j.at("target_seconds").get<double>();
        s->status_ = j.at("status").get<std::string>();
        s->error_ = j.value("error", "");
        s->ledger_ = EventLedger::from_json(j.at("ledger"), clock_for(host.config(), a.section_frames, a.fps),
                                            settings.limits.max_prompts);
        s->snapshot_file_ = j.at("snapshot").get<std::string>();
        s->archive_init_bytes_ = j.at("archive_init_bytes").get<uint64_t>();
        for (const auto& r : j.at("sections")) {
            StoredSection sec;
            sec.offset = r.at(0).get<uint64_t>();
            sec.length = r.at(1).get<uint64_t>();
            sec.frames = r.at(2).get<int64_t>();
            sec.start_seconds = r.at(3).get<double>();
            sec.duration_seconds = r.at(4).get<double>();
            sec.prompt = r.at(5).get<std::string>();
            s->sections_.push_back(sec);
        }
        s->pixels_done_ = j.at("pixels_done").get<int64_t>();
        s->latents_done_ = j.at("latents_done").get<int64_t>();
        s->memory_tokens_ = j.at("memory_tokens").get<int64_t>();
        s->context_tokens_ = j.at("context_tokens").get<int64_t>();
        s->memory_latent_frames_ = j.value("memory_latent_frames", int64_t(0));
        s->latencies_ms_ = j.at("latencies_ms").get<std::vector<double>>();
        s->first_section_ms_ = j.at("time_to_first_section_ms").get<double>();
    } catch (const nlohmann::json::exception& e) {
        throw std::runtime_error(file + ": malformed session state: " + e.what());
    } catch (const protocol::ProtocolError& e) {
        throw std::runtime_error(file + ": malformed session request: " + e.what());
    }
    // Whatever was appended to the archive after the last committed section (a crash mid-section) goes; an
    // archive shorter than what was committed has lost sections, and the session cannot go on from it.
    const uint64_t committed = s->committed_archive_bytes();
    const uint64_t on_disk = fs::exists(s->archive_path()) ? fs::file_size(s->archive_path()) : 0;
    if (on_disk < committed)
        throw std::runtime_error(s->archive_path() + ": " + std::to_string(on_disk) + " bytes, but " + file +
                                 " committed " + std::to_string(committed) + ": the archive lost sections");
    if (on_disk > committed)
        fs::resize_file(s->archive_path(), committed);
    if (!s->snapshot_file_.empty() && !fs::exists(dir + "/" + s->snapshot_file_))
        throw std::runtime_error(dir + "/" + s->snapshot_file_ + ": missing (named by " + file + ")");
    if (s->status_ == "stopping")
        s->status_ = "stopped";
    const double generated = static_cast<double>(s->pixels_done_) / s->ar_settings_.fps;
    s->clock_origin_ =
        std::chrono::steady_clock::now() - std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                               std::chrono::duration<double>(generated));
    s->open_encoders();
    if (s->archive_init_bytes_ > 0 && s->format_ == "mp4")
        s->init_segment_ = s->read_archive(0, s->archive_init_bytes_);
    return s;
}

void LiveSession::open_encoders() {
    LiveEncoderOptions o;
    o.width = static_cast<int>(ar_settings_.width);
    o.height = static_cast<int>(ar_settings_.height);
    o.fps = static_cast<int>(ar_settings_.fps);
    o.bitrate_kbps = settings_.bitrate_kbps;
    o.format = parse_live_format(format_);
    const auto n = static_cast<int64_t>(sections_.size());
    live_encoder_ = std::make_unique<LiveEncoder>(o, pixels_done_, n);
    mime_type_ = live_encoder_->mime_type();
    if (o.format != LiveFormat::kMp4) {
        o.format = LiveFormat::kMp4;
        archive_encoder_ = std::make_unique<LiveEncoder>(o, pixels_done_, n);
    }
}

// The model side of a restored session is rebuilt on the worker thread, when it is first needed.
void LiveSession::ensure_ar() {
    if (ar_)
        return;
    Storyboard story;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        story = ledger_.storyboard();
    }
    // Built aside and kept only once restored: a snapshot that fails to load must not leave a fresh session
    // that would continue from section 0.
    auto ar = host_.make_session(story, ar_settings_);
    if (!snapshot_file_.empty())
        ar->restore(load_session_snapshot(dir_ + "/" + snapshot_file_));
    ar_ = std::move(ar);
}

bool LiveSession::token_matches(const std::string& token) const {
    // Constant time in the token's length: the comparison does not leak how many characters matched.
    if (token.size() != token_.size())
        return false;
    unsigned diff = 0;
    for (size_t i = 0; i < token.size(); ++i)
        diff |= static_cast<unsigned>(token[i] ^ token_[i]);
    return diff == 0;
}

bool LiveSession::finished() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return status_ != "queued" && status_ != "running" && status_ != "stopping";
}

bool LiveSession::runnable(std::chrono::steady_clock::time_point now) const {
    std::lock_guard<std::mutex> lock(mutex_);
    if ((status_ != "queued" && status_ != "running") || stop_requested_)
        return false;
    if (kind_ == Kind::kJob)
        return true;
    const double generated = static_cast<double>(pixels_done_) / ar_settings_.fps;
    const double played = std::chrono::duration<double>(now - clock_origin_).count();
    return generated - played < settings_.max_lead_seconds;
}

LiveSession::SectionReport LiveSession::run_section() {
    const auto t0 = std::chrono::steady_clock::now();
    {
        // A stop (or an end) that came after the worker picked this session: no section.
        std::lock_guard<std::mutex> lock(mutex_);
        if ((status_ != "queued" && status_ != "running") || stop_requested_)
            return SectionReport{};
        in_section_ = true;
    }
    ensure_ar();
    EventLedger::SectionStart start;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (status_ == "queued") {
            // Time to first section counts from creation (waiting for the worker included, as a viewer
            // experiences it); the real-time clock starts with the first section.
            status_ = "running";
            clock_origin_ = t0;
        }
        start = ledger_.begin_section();
        for (const auto& e : ledger_.storyboard().entries())
            ar_->set_prompt(e);
        for (const auto& e : start.applied)
            broadcast({{"type", "session.interaction.applied"},
                       {"event_id", e.event_id},
                       {"section", start.section},
                       {"start_seconds", start.start_seconds}});
        for (const auto& e : start.superseded)
            broadcast({{"type", "session.interaction.superseded"},
                       {"event_id", e.event_id},
                       {"by", e.superseded_by}});
    }
    const SectionResult r = ar_->next_section();
    // Encode: the live segment, and the MP4 archive (the same segment when the live format is MP4).
    const torch::Tensor rgb = video_to_rgb24(r.frames).contiguous();  // [T, H, W, 3]
    std::vector<const uint8_t*> frames;
    const int64_t frame_bytes = rgb.numel() / std::max<int64_t>(1, rgb.size(0));
    for (int64_t i = 0; i < rgb.size(0); ++i)
        frames.push_back(rgb.data_ptr<uint8_t>() + i * frame_bytes);
    const MediaSegment segment = live_encoder_->encode_section(frames);
    MediaSegment archived;
    if (archive_encoder_)
        archived = archive_encoder_->encode_section(frames);
    const MediaSegment& to_archive = archive_encoder_ ? archived : segment;
    const LiveEncoder& archive_enc = archive_encoder_ ? *archive_encoder_ : *live_encoder_;

    StoredSection stored;
    uint64_t init_bytes = 0;
    {
        // Only this thread changes sections_, so reading it here needs no lock.
        uint64_t offset = committed_archive_bytes();
        // The first section starts the file (anything there is from an attempt that never committed).
        std::ofstream out(archive_path(), std::ios::binary | (offset == 0 ? std::ios::trunc : std::ios::app));
        if (offset == 0) {
            out.write(archive_enc.init_segment().data(),
                      static_cast<std::streamsize>(archive_enc.init_segment().size()));
            init_bytes = archive_enc.init_segment().size();
            offset = init_bytes;
        }
        out.write(to_archive.bytes.data(), static_cast<std::streamsize>(to_archive.bytes.size()));
        out.flush();
        if (!out)
            throw std::runtime_error(archive_path() + ": cannot append the section");
        stored = {
            offset,  to_archive.bytes.size(), segment.frames, segment.start_seconds, segment.duration_seconds,
            r.prompt};
    }
    sync_file(archive_path());
    const std::string snapshot_file = "snapshot-" + std::to_string(r.index) + ".safetensors";
    save_session_snapshot(dir_ + "/" + snapshot_file, ar_->snapshot());
    const auto t1 = std::chrono::steady_clock::now();

    SectionReport report;
    report.ran = true;
    report.latency_ms = ms_between(t0, t1);
    report.seconds = segment.duration_seconds;
    nlohmann::json metadata;
    std::string previous_snapshot;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (init_segment_.empty())
            init_segment_ = live_encoder_->init_segment();
        if (init_bytes > 0)
            archive_init_bytes_ = init_bytes;
        sections_.push_back(stored);
        pixels_done_ += segment.frames;
        latents_done_ = ar_->latent_frames_done();
        memory_tokens_ = ar_->memory_tokens();
        context_tokens_ = r.context_tokens;
        memory_latent_frames_ = ar_->latent_frames_in_memory();
        latencies_ms_.push_back(report.latency_ms);
        if (latencies_ms_.size() > kLatencyWindow)
            latencies_ms_.erase(latencies_ms_.begin(),
                                latencies_ms_.begin() + (latencies_ms_.size() - kLatencyWindow));
        if (first_section_ms_ < 0)
            first_section_ms_ = ms_between(started_, t1);
        recent_.emplace_back(t1, segment.duration_seconds);
        while (recent_.size() > 8)
            recent_.pop_front();
        in_section_ = false;
        previous_snapshot = snapshot_file_;
        snapshot_file_ = snapshot_file;
        const bool done = static_cast<double>(pixels_done_) / ar_settings_.fps >= target_seconds_ - 1e-9;
        if (done) {
            status_ = "completed";
        } else if (stop_requested_) {
            status_ = stop_reason_ == "expired" ? "expired" : "stopped";
        }
        write_file_atomic(dir_ + "/session.json", state_json().dump(1));
        report.finished = status_ != "running";

        const nlohmann::json stats = stats_message();
        metadata = chunk_metadata(r.index, stored);
        metadata["events"] = {{"started", nlohmann::json::array()}, {"active", start.active}};
        for (const auto& e : start.applied)
            metadata["events"]["started"].push_back(e.event_id);
        metadata["stats"] = stats;
        metadata["stats"].erase("type");
        for (auto& v : viewers_) {
            if (!v->has_init())
                v->send_init(init_segment_);
            v->send_section(r.index, metadata, segment.bytes);
            if (!v->skipping())
                v->send_json(stats);
        }
        if (format_ == "webm") {
            webm_history_.emplace_back(metadata, segment.bytes);
            while (webm_history_.size() > settings_.webm_history)
                webm_history_.pop_front();
        }
        if (report.finished)
            finish(status_, status_);
        drop_viewers([](const Viewer& v) { return v.closed(); });
    }
    if (!previous_snapshot.empty() && previous_snapshot != snapshot_file)
        fs::remove(dir_ + "/" + previous_snapshot);
    return report;
}

void LiveSession::fail(const std::string& message) {
    std::lock_guard<std::mutex> lock(mutex_);
    in_section_ = false;
    error_ = message;
    broadcast(protocol::ProtocolError("internal", "generation failed: " + message).to_json());
    finish("failed", "error");
}

// Under mutex_: the terminal state, told to every viewer and written down. A failed write (a full disk) is
// logged, not thrown: the session has ended either way, and its last commit point stays restorable.
void LiveSession::finish(const std::string& status, const std::string& reason) {
    status_ = status;
    broadcast({{"type", "session.done"},
               {"reason", reason},
               {"sections", sections_.size()},
               {"seconds", static_cast<double>(pixels_done_) / ar_settings_.fps}});
    try {
        write_file_atomic(dir_ + "/session.json", state_json().dump(1));
    } catch (const std::exception& e) {
        spdlog::error("session {}: cannot record its end ({}): {}", id_, status, e.what());
    }
}

void LiveSession::broadcast(const nlohmann::json& message) {
    for (auto& v : viewers_)
        v->send_json(message);
}

EventLedger::Submitted LiveSession::submit(const protocol::Interaction& interaction) {
    std::lock_guard<std::mutex> lock(mutex_);
    last_activity_ = std::chrono::steady_clock::now();
    if (status_ != "queued" && status_ != "running")
        throw protocol::ProtocolError("bad_field", "the session is " + status_ + ": it takes no more prompts",
                                      interaction.event_id);
    EventLedger::Submitted s = ledger_.submit(interaction);
    if (!s.retry) {
        nlohmann::json q = {{"type", "session.interaction.queued"},
                            {"event_id", s.event.event_id},
                            {"time", s.event.time < 0 ? nlohmann::json() : nlohmann::json(s.event.time)},
                            {"section", s.event.section}};
        broadcast(q);
        for (const auto& e : s.superseded)
            broadcast({{"type", "session.interaction.superseded"},
                       {"event_id", e.event_id},
                       {"by", e.superseded_by}});
        // session.json is only written at commit points, where the ledger and the generated sections agree:
        // mid-section the ledger has already begun the section the files do not have yet. An event that
        // comes then is written with that section's commit, moments later (a crash before it loses the
        // event; the client's retry with the same event_id submits it again).
        if (!in_section_)
            write_file_atomic(dir_ + "/session.json", state_json().dump(1));
    }
    return s;
}

nlohmann::json LiveSession::video_start_json() const {
    const ModelConfig& c = host_.config();
    nlohmann::json sampling = nlohmann::json::object();
    const SamplerConfig sc = c.sampler.with(ar_settings_.sampling);
    sampling["steps"] = sc.steps;
    sampling["guidance"] = sc.guidance;
    return {{"type", "video.start"},
            {"session_id", id_},
            {"token", token_},
            {"sections", sections_.size()},
            {"seconds_generated", static_cast<double>(pixels_done_) / ar_settings_.fps},
            {"config",
             {{"width", ar_settings_.width},
              {"height", ar_settings_.height},
              {"fps", ar_settings_.fps},
              {"format", format_},
              {"mime_type", mime_type_},
              {"section_frames", ar_settings_.section_frames},
              {"seconds", target_seconds_},
              {"seed", ar_settings_.seed},
              {"memory", {{"enabled", ar_settings_.use_memory}, {"window", ar_settings_.window}}},
              {"sampling", sampling},
              {"model", host_.name()}}},
            {"storyboard", ledger_.timeline()}};
}

void LiveSession::attach(const std::shared_ptr<Viewer>& viewer, std::optional<int64_t> from_section) {
    std::lock_guard<std::mutex> lock(mutex_);
    last_activity_ = std::chrono::steady_clock::now();
    viewer->send_json(video_start_json());
    const auto n = static_cast<int64_t>(sections_.size());
    if (!init_segment_.empty())
        viewer->send_init(init_segment_);
    int64_t from = n;
    if (from_section) {
        // A resuming viewer gets what it missed, at most as much as its queue holds (the rest is in the
        // download).
        const auto most = static_cast<int64_t>(
            std::min(settings_.replay_sections, std::max<size_t>(1, settings_.viewer.max_segments - 2)));
        from = std::clamp<int64_t>(*from_section, std::max<int64_t>(0, n - most), n);
        if (from > *from_section)
            viewer->send_json(
                {{"type", "session.skipped"}, {"from_section", *from_section}, {"to_section", from - 1}});
    }
    viewer->set_next_section(from);
    if (viewer->has_init()) {
        if (format_ == "mp4") {
            for (int64_t k = from; k < n; ++k) {
                const StoredSection& s = sections_[static_cast<size_t>(k)];
                nlohmann::json meta = chunk_metadata(k, s);
                meta["replay"] = true;
                viewer->send_section(k, meta, read_archive(s.offset, s.length));
            }
        } else {
            for (const auto& [meta, bytes] : webm_history_) {
                nlohmann::json m = meta;
                m["replay"] = true;
                viewer->send_section(meta.at("chunk_index").get<int64_t>(), m, bytes);
            }
            viewer->set_next_section(n);
        }
    }
    viewer->send_json(stats_message());
    if (status_ != "queued" && status_ != "running" && status_ != "stopping")
        viewer->send_json({{"type", "session.done"},
                           {"reason", status_ == "failed" ? "error" : status_},
                           {"sections", n},
                           {"seconds", static_cast<double>(pixels_done_) / ar_settings_.fps}});
    viewers_.push_back(viewer);
}

void LiveSession::detach(const Viewer* viewer) {
    std::lock_guard<std::mutex> lock(mutex_);
    last_activity_ = std::chrono::steady_clock::now();
    drop_viewers([&](const Viewer& v) { return &v == viewer || v.closed(); });
}

// Under mutex_: the sections a leaving viewer skipped stay counted in dropped_sections().
void LiveSession::drop_viewers(const std::function<bool(const Viewer&)>& leaving) {
    const auto gone =
        std::stable_partition(viewers_.begin(), viewers_.end(), [&](const auto& v) { return !leaving(*v); });
    for (auto it = gone; it != viewers_.end(); ++it)
        dropped_ += (*it)->skipped_sections();
    viewers_.erase(gone, viewers_.end());
}

void LiveSession::stop(const std::string& reason) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (status_ != "queued" && status_ != "running")
        return;
    stop_requested_ = true;
    stop_reason_ = reason;
    if (status_ == "queued" && !in_section_) {
        // Nothing generated yet: it ends at once.
        finish(reason == "expired" ? "expired" : "stopped", reason);
        return;
    }
    status_ = "stopping";
    // The worker is not in a section unless it is: run_section() finishes the stop at its end. Otherwise
    // (paced, waiting for real time) end here.
    if (!in_section_)
        finish(reason == "expired" ? "expired" : "stopped", reason);
}

std::string LiveSession::status() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return status_;
}

double LiveSession::seconds_generated() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<double>(pixels_done_) / ar_settings_.fps;
}

int64_t LiveSession::viewers() const {
    std::lock_guard<std::mutex> lock(mutex_);
    int64_t n = 0;
    for (const auto& v : viewers_)
        n += v->closed() ? 0 : 1;
    return n;
}

int64_t LiveSession::dropped_sections() const {
    std::lock_guard<std::mutex> lock(mutex_);
    int64_t n = dropped_;
    for (const auto& v : viewers_)
        n += v->skipped_sections();
    return n;
}

void LiveSession::touch() {
    std::lock_guard<std::mutex> lock(mutex_);
    last_activity_ = std::chrono::steady_clock::now();
}

double LiveSession::idle_seconds() const {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& v : viewers_)
        if (!v->closed())
            return 0;
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - last_activity_).count();
}

void LiveSession::set_queue_position(int64_t position) {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_position_ = position;
}

uint64_t LiveSession::archive_bytes() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return committed_archive_bytes();
}

uint64_t LiveSession::committed_archive_bytes() const {
    if (sections_.empty())
        return archive_init_bytes_ > 0 ? archive_init_bytes_ : 0;
    return sections_.back().offset + sections_.back().length;
}

std::string LiveSession::read_archive(uint64_t offset, uint64_t length) const {
    std::ifstream in(archive_path(), std::ios::binary);
    in.seekg(static_cast<std::streamoff>(offset));
    std::string out(length, '\0');
    in.read(out.data(), static_cast<std::streamsize>(length));
    if (!in)
        throw std::runtime_error(archive_path() + ": cannot read " + std::to_string(length) + " bytes at " +
                                 std::to_string(offset));
    return out;
}

nlohmann::json LiveSession::stats_message() const {
    nlohmann::json j = {{"type", "session.stats"}};
    j.update(stats_json());
    return j;
}

nlohmann::json LiveSession::chunk_metadata(int64_t section, const StoredSection& s) {
    return {{"type", "video.chunk_metadata"},
            {"chunk_index", section},
            {"frames", s.frames},
            {"start_seconds", s.start_seconds},
            {"duration_seconds", s.duration_seconds},
            {"prompt", s.prompt}};
}

nlohmann::json LiveSession::stats_json() const {
    const double generated = static_cast<double>(pixels_done_) / ar_settings_.fps;
    double rf = 0;
    if (recent_.size() >= 2) {
        double video = 0;
        for (size_t i = 1; i < recent_.size(); ++i)
            video += recent_[i].second;
        const double wall =
            std::chrono::duration<double>(recent_.back().first - recent_.front().first).count();
        rf = wall > 0 ? video / wall : 0;
    } else if (!latencies_ms_.empty() && latencies_ms_.back() > 0 && !sections_.empty()) {
        rf = sections_.back().duration_seconds / (latencies_ms_.back() / 1000.0);
    }
    const int64_t per_frame = host_.tokens_per_latent_frame(ar_settings_.width, ar_settings_.height);
    return {
        {"seconds_generated", generated},
        {"sections", sections_.size()},
        {"context_tokens", context_tokens_},
        {"memory_tokens", memory_tokens_},
        {"uncompressed_tokens", latents_done_ * per_frame},
        {"section_latency_ms", latencies_ms_.empty() ? 0.0 : latencies_ms_.back()},
        {"realtime_factor", rf},
        // A session paced at real time measures ~1.0 with jitter either way: only a clear shortfall counts.
        {"behind_realtime", kind_ == Kind::kLive && !latencies_ms_.empty() && rf < 0.95},
        {"queue_position", queue_position_},
        {"viewers",
         std::count_if(viewers_.begin(), viewers_.end(), [](const auto& v) { return !v->closed(); })}};
}

nlohmann::json LiveSession::status_json(bool with_token) const {
    std::lock_guard<std::mutex> lock(mutex_);
    nlohmann::json j = stats_json();
    std::vector<double> sorted = latencies_ms_;
    std::sort(sorted.begin(), sorted.end());
    const auto pct = [&](double p) {
        return sorted.empty() ? 0.0
                              : sorted[std::min(sorted.size() - 1, static_cast<size_t>(p * sorted.size()))];
    };
    double mean = 0;
    for (double v : sorted)
        mean += v / static_cast<double>(sorted.size());
    j["section_latency_ms"] = {{"last", latencies_ms_.empty() ? 0.0 : latencies_ms_.back()},
                               {"mean", mean},
                               {"p50", pct(0.5)},
                               {"p95", pct(0.95)}};
    const nlohmann::json start = video_start_json();
    j["id"] = id_;
    j["object"] = "session";
    j["kind"] = kind_ == Kind::kJob ? "job" : "live";
    j["status"] = status_;
    j["created_at"] = created_at_;
    j["model"] = host_.name();
    j["config"] = start.at("config");
    j["time_to_first_section_ms"] =
        first_section_ms_ < 0 ? nlohmann::json() : nlohmann::json(first_section_ms_);
    j["memory_latent_frames"] = memory_latent_frames_;
    j["storyboard"] = ledger_.timeline();
    j["events"] = ledger_.events_json();
    j["error"] = error_.empty() ? nlohmann::json() : nlohmann::json(error_);
    if (with_token)
        j["token"] = token_;
    return j;
}

nlohmann::json LiveSession::state_json() const {
    nlohmann::json sections = nlohmann::json::array();
    for (const auto& s : sections_)
        sections.push_back({s.offset, s.length, s.frames, s.start_seconds, s.duration_seconds, s.prompt});
    nlohmann::json settings = {{"use_memory", ar_settings_.use_memory},
                               {"window", ar_settings_.window},
                               {"section_frames", ar_settings_.section_frames},
                               {"width", ar_settings_.width},
                               {"height", ar_settings_.height},
                               {"fps", ar_settings_.fps},
                               {"seed", ar_settings_.seed}};
    if (ar_settings_.sampling.steps)
        settings["steps"] = *ar_settings_.sampling.steps;
    if (ar_settings_.sampling.guidance)
        settings["guidance"] = *ar_settings_.sampling.guidance;
    return {{"format", kStateFormat},
            {"id", id_},
            {"token", token_},
            {"kind", kind_ == Kind::kJob ? "job" : "live"},
            {"created_at", created_at_},
            {"request", request_.to_json()},
            {"settings", settings},
            {"target_seconds", target_seconds_},
            {"status", status_},
            {"error", error_},
            {"ledger", ledger_.to_json()},
            {"snapshot", snapshot_file_},
            {"archive_init_bytes", archive_init_bytes_},
            {"sections", sections},
            {"pixels_done", pixels_done_},
            {"latents_done", latents_done_},
            {"memory_tokens", memory_tokens_},
            {"context_tokens", context_tokens_},
            {"memory_latent_frames", memory_latent_frames_},
            {"latencies_ms", latencies_ms_},
            {"time_to_first_section_ms", first_section_ms_}};
}

std::string LiveSession::inspect_png(double t, nlohmann::json& info) {
    ensure_ar();
    if (!ar_settings_.use_memory)
        throw protocol::ProtocolError("not_in_memory", "this session runs without the compressed memory");
    StoredSection section;
    int64_t frame = 0, section_first_frame = 0;
    std::string init;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (pixels_done_ == 0)
            throw protocol::ProtocolError("not_in_memory", "nothing has been generated yet");
        frame = static_cast<int64_t>(std::llround(t * ar_settings_.fps));
        if (frame >= pixels_done_)
            throw protocol::ProtocolError("not_in_memory",
                                          "t = " + std::to_string(t) + " s has not been generated yet");
        for (const auto& s : sections_) {
            if (frame < section_first_frame + s.frames) {
                section = s;
                break;
            }
            section_first_frame += s.frames;
        }
        init = read_archive(0, archive_init_bytes_);
    }
    const int64_t tf = host_.config().vae.temporal_factor();
    const int64_t latent = frame == 0 ? 0 : (frame + tf - 1) / tf;
    const int64_t in_memory = ar_->latent_frames_in_memory();
    if (latent >= in_memory)
        throw protocol::ProtocolError("not_in_memory", "t = " + std::to_string(t) + " s (latent frame " +
                                                           std::to_string(latent) +
                                                           ") is not in the memory yet: it holds " +
                                                           std::to_string(in_memory) + " latent frames");
    const std::vector<uint8_t> recalled = to_rgb_bytes(ar_->recall_frame(latent, 0));
    // The generated frame, decoded from the archive: the init segment and its section's fragment.
    const std::string clip = dir_ + "/inspect.mp4";
    {
        std::ofstream out(clip, std::ios::binary | std::ios::trunc);
        out << init << read_archive(section.offset, section.length);
    }
    std::vector<uint8_t> generated;
    {
        VideoFileReader reader(clip);
        std::vector<uint8_t> rgb;
        for (int64_t i = 0; i <= frame - section_first_frame && reader.read_rgb(rgb); ++i)
            generated = rgb;
    }
    fs::remove(clip);
    const auto w = static_cast<int>(ar_settings_.width), h = static_cast<int>(ar_settings_.height);
    if (generated.size() != recalled.size())
        throw std::runtime_error("the generated frame could not be decoded from the archive");
    // Side by side with a 4-pixel white gap: recalled | generated.
    const int gap = 4, W = 2 * w + gap;
    std::vector<uint8_t> both(static_cast<size_t>(W) * h * 3, 255);
    for (int y = 0; y < h; ++y) {
        std::copy_n(&recalled[static_cast<size_t>(y) * w * 3], w * 3, &both[static_cast<size_t>(y) * W * 3]);
        std::copy_n(&generated[static_cast<size_t>(y) * w * 3], w * 3,
                    &both[(static_cast<size_t>(y) * W + w + gap) * 3]);
    }
    info = {{"psnr", psnr_bytes(recalled, generated)}, {"latent_frame", latent}, {"frame", frame}};
    return encode_png(both.data(), W, h);
}

}  // namespace memoreel
