#include "server/viewer.h"

#include "server/protocol.h"

namespace memoreel {

Viewer::Viewer(std::shared_ptr<WsConnection> connection, ViewerLimits limits)
    : connection_(std::move(connection)), limits_(limits) {}

bool Viewer::send_json(const nlohmann::json& message) {
    if (closed_)
        return false;
    if (!connection_->send_text(message.dump())) {
        closed_ = true;  // the connection is gone or its hard bound is reached
        return false;
    }
    return true;
}

void Viewer::send_init(const std::string& init_segment) {
    if (closed_ || init_segment.empty())
        return;
    send_json({{"type", "video.init"}, {"byte_length", init_segment.size()}});
    if (!closed_ && !connection_->send_binary(init_segment))
        closed_ = true;
    init_sent_ = !closed_;
}

void Viewer::send_section(int64_t index, nlohmann::json metadata, const std::string& segment) {
    if (closed_ || index < next_section_ || !init_sent_)
        return;
    const auto now = std::chrono::steady_clock::now();
    // Two messages per section: metadata and segment.
    const bool full = connection_->queued_messages() / 2 >= limits_.max_segments ||
                      connection_->queued_bytes() + segment.size() > limits_.max_bytes;
    if (full) {
        if (skip_from_ < 0) {
            skip_from_ = index;
            blocked_since_ = now;
        } else if (std::chrono::duration<double>(now - blocked_since_).count() > limits_.stall_seconds) {
            connection_->drop_queued();
            send_json(protocol::ProtocolError("stall_timeout",
                                              "this viewer has taken nothing for " +
                                                  std::to_string(static_cast<int>(limits_.stall_seconds)) +
                                                  " s; the session goes on: resume to watch again")
                          .to_json());
            close("stall timeout");
            return;
        }
        ++skipped_total_;
        next_section_ = index + 1;
        return;
    }
    if (skip_from_ >= 0) {
        send_json({{"type", "session.skipped"}, {"from_section", skip_from_}, {"to_section", index - 1}});
        skip_from_ = -1;
    }
    metadata["byte_length"] = segment.size();
    if (!send_json(metadata))
        return;
    if (!connection_->send_binary(segment)) {
        closed_ = true;
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
