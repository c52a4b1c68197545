// `memoreel serve` as a library (DESIGN.md section 4): the HTTP/WebSocket server with the live protocol, the
// REST API of docs/api.md, the operational endpoints and the web client's files, over a SessionManager.
// The CLI and the tests both run it this way.
#pragma once

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "server/http_server.h"
#include "server/metrics.h"
#include "server/session_manager.h"

namespace memoreel {

struct ApiServerOptions {
    HttpServerOptions http;
    SessionManagerOptions sessions;
    std::vector<std::string> api_keys;  // empty: no key needed
    double start_timeout_seconds = 10;
};

class ApiServer {
  public:
    ApiServer(ModelHost& host, ApiServerOptions options);
    ~ApiServer();
    // Restores sessions, starts the worker and the network threads. Throws when the port cannot be bound.
    void start();
    void stop();
    uint16_t port() const;
    SessionManager& sessions() { return *sessions_; }

  private:
    void handle(const HttpRequest& request, Respond respond);
    bool authorized(const HttpRequest& request) const;
    void handle_session(const HttpRequest& r, const std::vector<std::string>& parts, Respond& respond);
    void handle_videos(const HttpRequest& r, const std::vector<std::string>& parts, Respond& respond);

    ModelHost& host_;
    ApiServerOptions options_;
    Metrics metrics_;
    std::unique_ptr<SessionManager> sessions_;
    std::unique_ptr<HttpServer> http_;
    std::mutex sockets_mutex_;
    std::vector<std::weak_ptr<class LiveSocket>> pending_sockets_;
    std::thread timeouts_;
    std::atomic<bool> stopping_{false};
    std::atomic<uint64_t> bytes_reported_{
        0};  // bytes_sent() at the last /metrics (the counter gets the rest)
};

}  // namespace memoreel
