// The application side of one WebSocket on /v1/realtime/video (docs/protocol.md): parses client messages,
// starts or resumes a session, attaches this connection as one of its viewers, and forwards prompts, pings
// and stops. Runs on the connection's network thread; it never touches the model (sessions queue their work
// for the inference worker).
#pragma once

#include <chrono>
#include <memory>
#include <mutex>

#include "server/http_server.h"
#include "server/session_manager.h"

namespace memoreel {

class LiveSocket : public WsHandler {
  public:
    // authorized: false when the server wants an API key and the upgrade request had none (the client gets
    // an `unauthorized` error it can show, then the close).
    LiveSocket(SessionManager& sessions,
               protocol::Limits limits,
               ViewerLimits viewer_limits,
               bool authorized);

    void on_open(const std::shared_ptr<WsConnection>& connection) override;
    void on_text(const std::string& text) override;
    void on_binary(const std::string& bytes) override;
    void on_close() override;

    // Start timeout: a connection that neither started nor resumed within `seconds` is told and closed.
    // Returns true when it did that (the caller stops watching this socket).
    bool check_start_timeout(double seconds);
    bool closed() const;

  private:
    void send_error(const protocol::ProtocolError& e, bool fatal = false);
    void join(const std::shared_ptr<LiveSession>& session, std::optional<int64_t> from_section);

    SessionManager& sessions_;
    protocol::Limits limits_;
    ViewerLimits viewer_limits_;
    bool authorized_;
    mutable std::mutex mutex_;
    std::shared_ptr<WsConnection> connection_;
    std::shared_ptr<LiveSession> session_;
    std::shared_ptr<Viewer> viewer_;
    bool closed_ = false;
    std::chrono::steady_clock::time_point opened_ = std::chrono::steady_clock::now();
};

}  // namespace memoreel
