// The server's network layer (Boost.Beast, torch-free): HTTP and WebSocket on one port, one session object
// per connection running on its own strand, as in Beast's advanced server example. Network threads never run
// the model: HTTP handlers answer through a callback (which may be called later, from any thread), and
// WebSocket traffic goes to a WsHandler whose sends are queued to the connection's strand.
//
// What this layer enforces by itself: the request body limit (413), the header limit, static files confined
// to the web root (a path that escapes it is 404, never read), a WebSocket message limit (the peer gets a
// close with "message too big"), and a bounded per-connection send queue (WsConnection::send reports when it
// is full, so the caller applies its slow-viewer policy).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace memoreel {

struct HttpRequest {
    std::string method;  // GET, POST, ...
    std::string target;  // as sent: path and query
    std::string path;    // decoded path without the query
    std::map<std::string, std::string> query;
    std::map<std::string, std::string> headers;  // lower-case names
    std::string body;
    std::string remote;  // peer address
    std::string header(const std::string& lower_name) const;
};

struct HttpResponse {
    int status = 200;
    std::string content_type = "application/json";
    std::string body;
    std::map<std::string, std::string> headers;  // extra headers (Retry-After, Content-Disposition, ...)
    // When set, the body is this file (streamed from disk, not read into memory) with content_type.
    std::string file;

    static HttpResponse json(int status, const std::string& body);
    // {"error": {"code", "message"}} with the status.
    static HttpResponse error(int status, const std::string& code, const std::string& message);
};

using Respond = std::function<void(HttpResponse)>;

// One WebSocket connection as the application sees it. Thread-safe: sends are posted to the connection's
// strand.
class WsConnection {
  public:
    virtual ~WsConnection() = default;
    // Queues a message; false (and nothing queued) when the connection is closed or its queue would exceed
    // its byte or message bound.
    virtual bool send_text(std::string text) = 0;
    virtual bool send_binary(std::string bytes) = 0;
    // A text message immediately followed by a binary one (metadata + media): both are queued, with nothing
    // between them even when other threads send, or neither is.
    virtual bool send_pair(std::string text, std::string bytes) = 0;
    // Sends a close frame after what is queued, with a reason.
    virtual void close(const std::string& reason) = 0;
    virtual size_t queued_bytes() const = 0;
    virtual size_t queued_messages() const = 0;
    // Seconds since the peer last took a queued message (or since the queue last became non-empty); 0 while
    // nothing is queued. What tells a stalled peer from a slow one.
    virtual double seconds_since_progress() const = 0;
    virtual const std::string& remote() const = 0;
    // Drops every queued message not yet being written (the slow-viewer policy skips to a newer keyframe);
    // returns how many were dropped.
    virtual size_t drop_queued() = 0;
};

// The application side of one WebSocket connection (created per connection by WsFactory).
class WsHandler {
  public:
    virtual ~WsHandler() = default;
    virtual void on_open(const std::shared_ptr<WsConnection>& connection) = 0;
    virtual void on_text(const std::string& text) = 0;
    virtual void on_binary(const std::string& bytes) = 0;
    virtual void on_close() = 0;
};

struct HttpServerOptions {
    std::string address = "127.0.0.1";
    uint16_t port = 8080;  // 0: any free port (see HttpServer::port)
    int threads = 2;
    std::string web_root;  // static files ("" = none)
    size_t max_body_bytes = 1 << 20;
    size_t max_ws_message_bytes = 256 * 1024;
    size_t max_ws_queue_bytes = 8 << 20;
    size_t max_ws_queue_messages = 64;
    int idle_timeout_seconds = 60;  // an HTTP connection with no request
};

struct HttpRoutes {
    // REST: called for every request whose path does not name a static file. May answer later.
    std::function<void(const HttpRequest&, Respond)> http;
    // WebSocket upgrade requests to `ws_path`; nullptr refuses them.
    std::string ws_path = "/v1/realtime/video";
    std::function<std::shared_ptr<WsHandler>(const HttpRequest&)> websocket;
};

class HttpServer {
  public:
    HttpServer(HttpServerOptions options, HttpRoutes routes);
    ~HttpServer();  // stops
    HttpServer(const HttpServer&) = delete;
    HttpServer& operator=(const HttpServer&) = delete;

    // Binds and starts the network threads; throws std::runtime_error naming the address on failure.
    void start();
    void stop();
    uint16_t port() const;  // the bound port
    // Bytes written to clients so far (all connections).
    uint64_t bytes_sent() const;
    int64_t open_websockets() const;

    struct Impl;  // defined in http_server.cpp (named here so its connection classes can reach it)

  private:
    std::unique_ptr<Impl> impl_;
};

// The static file a request path names under root, or "" when it names none or would escape root.
std::string static_file_path(const std::string& root, const std::string& request_path);
// Content-Type by file extension.
std::string mime_type_for(const std::string& path);
// Percent-decoding of a path or query component; false when malformed.
bool url_decode(const std::string& in, std::string& out, bool plus_is_space);

}  // namespace memoreel
