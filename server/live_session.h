// A live session (DESIGN.md sections 3-4): the autoregressive session, its storyboard ledger, its live
// encoder and its viewers, and its files (<dir>/session.json, snapshot-N.safetensors, video.mp4). After
// every section the whole state is on disk, so a restarted server continues the session where it was, with
// its memory, and nothing generated is lost.
//
// Threads: run_section() and inspect_png() run on the inference worker (the only thread that touches the
// model); everything else may be called from network threads and takes the session's mutex, which is never
// held while the model runs.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "model/ar_session.h"
#include "server/event_ledger.h"
#include "server/model_host.h"
#include "server/protocol.h"
#include "server/viewer.h"
#include "stream/live_encoder.h"

namespace memoreel {

struct LiveSessionSettings {
    double default_seconds = 60;   // of video, when a request does not say
    int64_t section_frames = 4;    // latent frames per section
    double max_lead_seconds = 8;   // a live session generates at most this far ahead of real time
    size_t replay_sections = 600;  // the most stored sections a resuming viewer is sent
    size_t webm_history = 64;      // WebM sections kept in memory for resuming viewers
    int bitrate_kbps = 1500;
    ViewerLimits viewer;
    protocol::Limits limits;
};

class LiveSession {
  public:
    enum class Kind { kLive, kJob };

    // A new session (its folder is created). Throws protocol::ProtocolError bad_field for settings the model
    // cannot run (size, memory), before anything is written.
    static std::shared_ptr<LiveSession> create(ModelHost& host,
                                               const protocol::StartRequest& request,
                                               const LiveSessionSettings& settings,
                                               const std::string& dir,
                                               const std::string& id,
                                               Kind kind);
    // A session from its folder (after a restart). Throws std::runtime_error naming the file and the
    // problem.
    static std::shared_ptr<LiveSession> restore(ModelHost& host,
                                                const LiveSessionSettings& settings,
                                                const std::string& dir);
    ~LiveSession();

    const std::string& id() const { return id_; }
    const std::string& token() const { return token_; }
    bool token_matches(const std::string& token) const;
    Kind kind() const { return kind_; }
    const std::string& dir() const { return dir_; }
    int64_t created_at() const { return created_at_; }

    // ---- inference worker ----
    // True while the session wants another section now (live sessions stay within max_lead_seconds of
    // real time; jobs always).
    bool runnable(std::chrono::steady_clock::time_point now) const;
    bool finished() const;
    struct SectionReport {
        bool ran = false;  // false: the session was stopped or ended before its section began
        double latency_ms = 0;
        double seconds = 0;  // of video
        bool finished = false;
    };
    SectionReport run_section();
    // The inspector (docs/api.md): recalled | generated side by side at t seconds, as PNG; info gets
    // psnr, latent_frame, frame. Throws protocol::ProtocolError not_in_memory.
    std::string inspect_png(double t, nlohmann::json& info);
    // Marks a failed section: the session ends with status failed and the message.
    void fail(const std::string& message);

    // ---- any thread ----
    EventLedger::Submitted submit(const protocol::Interaction& interaction);
    // A viewer joins: video.start, the init segment, the stored sections from `from_section` (default: only
    // live ones), then live sections.
    void attach(const std::shared_ptr<Viewer>& viewer, std::optional<int64_t> from_section);
    void detach(const Viewer* viewer);
    // Ends generation after the current section ("stopped" or "expired").
    void stop(const std::string& reason);
    nlohmann::json status_json(bool with_token = false) const;
    std::string status() const;
    double seconds_generated() const;
    double target_seconds() const { return target_seconds_; }
    int64_t viewers() const;
    int64_t dropped_sections() const;
    void touch();  // activity (REST, a viewer): keeps the session from expiring
    double idle_seconds() const;
    void set_queue_position(int64_t position);
    std::string archive_path() const { return dir_ + "/video.mp4"; }
    // The archive's committed length (bytes of whole sections).
    uint64_t archive_bytes() const;

  private:
    LiveSession(ModelHost& host, const LiveSessionSettings& settings);
    void open_encoders();
    void ensure_ar();
    uint64_t committed_archive_bytes() const;  // the worker's (sole writer) or under mutex_
    void save_state(const std::string& snapshot_file);
    nlohmann::json state_json() const;
    nlohmann::json stats_json() const;     // under mutex_
    nlohmann::json stats_message() const;  // session.stats, under mutex_
    nlohmann::json video_start_json() const;
    void broadcast(const nlohmann::json& message);                         // under mutex_
    void drop_viewers(const std::function<bool(const Viewer&)>& leaving);  // under mutex_
    void finish(const std::string& status, const std::string& reason);     // under mutex_
    std::string read_archive(uint64_t offset, uint64_t length) const;

    ModelHost& host_;
    LiveSessionSettings settings_;
    std::string id_, token_, dir_;
    Kind kind_ = Kind::kLive;
    int64_t created_at_ = 0;
    protocol::StartRequest request_;
    SessionSettings ar_settings_;
    double target_seconds_ = 0;
    std::string format_;

    // Worker-thread state.
    std::unique_ptr<ARSession> ar_;
    std::unique_ptr<LiveEncoder> live_encoder_;
    std::unique_ptr<LiveEncoder> archive_encoder_;  // a separate MP4 encoder when the live format is WebM
    std::string snapshot_file_;

    mutable std::mutex mutex_;
    EventLedger ledger_;
    std::string status_ = "queued";
    std::string error_;
    bool stop_requested_ = false;
    bool in_section_ = false;  // the worker is generating a section
    std::string stop_reason_;
    std::vector<std::shared_ptr<Viewer>> viewers_;
    std::string mime_type_;
    std::string init_segment_;  // the live format's
    struct StoredSection {
        uint64_t offset = 0, length = 0;  // in the MP4 archive
        int64_t frames = 0;
        double start_seconds = 0, duration_seconds = 0;
        std::string prompt;
    };
    // video.chunk_metadata of a stored section (without events and stats).
    static nlohmann::json chunk_metadata(int64_t section, const StoredSection& s);
    uint64_t archive_init_bytes_ = 0;
    std::vector<StoredSection> sections_;
    std::deque<std::pair<nlohmann::json, std::string>> webm_history_;  // metadata, segment
    int64_t pixels_done_ = 0;
    int64_t latents_done_ = 0;
    int64_t memory_tokens_ = 0;
    int64_t context_tokens_ = 0;
    int64_t memory_latent_frames_ = 0;
    std::vector<double> latencies_ms_;
    std::deque<std::pair<std::chrono::steady_clock::time_point, double>> recent_;  // completion, video s
    double first_section_ms_ = -1;
    std::chrono::steady_clock::time_point started_;       // for time to first section
    std::chrono::steady_clock::time_point clock_origin_;  // real-time pacing: video time 0 in wall time
    std::chrono::steady_clock::time_point last_activity_;
    int64_t queue_position_ = 0;
    int64_t dropped_ = 0;  // sections skipped by viewers that have left
};

}  // namespace memoreel
