// One WebSocket viewer of a live session and the slow-viewer policy (docs/protocol.md, "Timing and flow
// control"): sections go out as a JSON video.chunk_metadata message followed by one binary segment. A viewer
// whose send queue already holds `max_segments` segments or `max_bytes` does not get the next section: it
// skips sections (never half a pair, never the init segment) until its queue has drained, then gets
// session.skipped and continues at the next section, whose segment starts with a keyframe. A viewer that has
// taken nothing queued for `stall_seconds` is disconnected with stall_timeout. Generation never waits for a
// viewer.
//
// Thread-safety: LiveSession calls it under the session's mutex; sends are queued to the connection's strand.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <memory>
#include <string>

#include "server/http_server.h"

namespace memoreel {

struct ViewerLimits {
    size_t max_bytes = 8 << 20;
    size_t max_segments = 32;
    double stall_seconds = 30;
};

class Viewer {
  public:
    Viewer(std::shared_ptr<WsConnection> connection, ViewerLimits limits);

    bool send_json(const nlohmann::json& message);
    // video.init + the init segment.
    void send_init(const std::string& init_segment);
    bool has_init() const { return init_sent_; }
    // One section (metadata + segment) under the skip policy.
    void send_section(int64_t index, nlohmann::json metadata, const std::string& segment);
    // Closes with an error (fatal) or after session.done.
    void close(const std::string& reason);
    bool closed() const { return closed_; }
    // The first section this viewer still wants (sections before it are not sent: it has them).
    int64_t next_section() const { return next_section_; }
    void set_next_section(int64_t section) { next_section_ = section; }
    int64_t skipped_sections() const { return skipped_total_; }
    // In a run of skipped sections (its queue is full): per-section extras (stats) are not queued either.
    bool skipping() const { return skip_from_ >= 0; }
    const WsConnection& connection() const { return *connection_; }

  private:
    void lost(const std::string& reason);

    std::shared_ptr<WsConnection> connection_;
    ViewerLimits limits_;
    bool init_sent_ = false;
    bool closed_ = false;
    int64_t next_section_ = 0;
    int64_t skip_from_ = -1;  // first section skipped in the current run of skips
    int64_t skipped_total_ = 0;
};

}  // namespace memoreel
