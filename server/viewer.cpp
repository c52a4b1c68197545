#include "server/viewer.h"

#include "server/protocol.h"

namespace memoreel {

Viewer::Viewer(std::shared_ptr<WsConnection> connection, ViewerLimits limits)
    : connection_(std::move(connection)), limits_(limits) {}

bool Viewer::send_json(const nlohmann::json& message) {
    if (closed_)
        return false;
    if (!connection_->send_text(message.dump())) {
        lost("send queue full");
        return false;
    }
    return true;
}

// The connection is gone or its hard bound (the backstop above the skip policy) is reached: close it rather
// than leave a client that gets nothing more and is not told.
void Viewer::lost(const std::string& reason) {
    closed_ = true;
    connection_->close(reason);
}

void Viewer::send_init(const std::string& init_segment) {
    if (closed_ || init_segment.empty())
        return;
    if (!connection_->send_pair(
            nlohmann::json{{"type", "video.init"}, {"byte_length", init_segment.size()}}.dump(),
            init_segment))
        lost("send queue full");
    init_sent_ = !closed_;
}

void Viewer::send_section(int64_t index, nlohmann::json metadata, const std::string& segment) {
    if (closed_ || index < next_section_ || !init_sent_)
        return;
    // Slow is skipped; stalled (the peer has taken nothing queued for stall_seconds, full queue or not) is
    // disconnected.
    if (connection_->seconds_since_progress() > limits_.stall_seconds) {
        connection_->drop_queued();
        nlohmann::json error =
            protocol::ProtocolError("stall_timeout",
                                    "this viewer has taken nothing for " +
                                        std::to_string(static_cast<int>(limits_.stall_seconds)) +
                                        " s; the session goes on: resume to watch again")
                .to_json();
        error["fatal"] = true;
        send_json(error);
        close("stall timeout");
        return;
    }
    // Two messages per section: metadata and segment.
    const bool full = connection_->queued_messages() / 2 >= limits_.max_segments ||
                      connection_->queued_bytes() + segment.size() > limits_.max_bytes;
    if (full) {
        if (skip_from_ < 0)
            skip_from_ = index;
        ++skipped_total_;
        next_section_ = index + 1;
        return;
    }
    if (skip_from_ >= 0) {
        send_json({{"type", "session.skipped"}, {"from_section", skip_from_}, {"to_section", index - 1}});
        skip_from_ = -1;
    }
    metadata["byte_length"] = segment.size();
    if (!connection_->send_pair(metadata.dump(), segment)) {
        lost("send queue full");
        return;
    }
    next_section_ = index + 1;
}

void Viewer::close(const std::string& reason) {
    if (closed_)
        return;
    closed_ = true;
    connection_->close(reason);
}

}  // namespace memoreel
