#include "server/http_server.h"

#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>

#include <spdlog/spdlog.h>

#include <deque>
#include <filesystem>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <thread>

namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace net = boost::asio;
using tcp = net::ip::tcp;
namespace fs = std::filesystem;

namespace memoreel {

std::string HttpRequest::header(const std::string& lower_name) const {
    const auto it = headers.find(lower_name);
    return it == headers.end() ? std::string() : it->second;
}

HttpResponse HttpResponse::json(int status, const std::string& body) {
    HttpResponse r;
    r.status = status;
    r.body = body;
    return r;
}

HttpResponse HttpResponse::error(int status, const std::string& code, const std::string& message) {
    std::string escaped;
    for (char c : message) {
        if (c == '"' || c == '\\')
            escaped += '\\';
        if (static_cast<unsigned char>(c) < 0x20) {
            escaped += ' ';
            continue;
        }
        escaped += c;
    }
    return json(status, "{\"error\": {\"code\": \"" + code + "\", \"message\": \"" + escaped + "\"}}");
}

bool url_decode(const std::string& in, std::string& out, bool plus_is_space) {
    out.clear();
    for (size_t i = 0; i < in.size(); ++i) {
        const char c = in[i];
        if (c == '%') {
            if (i + 2 >= in.size() || !std::isxdigit(static_cast<unsigned char>(in[i + 1])) ||
                !std::isxdigit(static_cast<unsigned char>(in[i + 2])))
                return false;
            out += static_cast<char>(std::stoi(in.substr(i + 1, 2), nullptr, 16));
            i += 2;
        } else if (c == '+' && plus_is_space) {
            out += ' ';
        } else {
            out += c;
        }
    }
    return true;
}

std::string static_file_path(const std::string& root, const std::string& request_path) {
    if (root.empty() || request_path.empty() || request_path[0] != '/')
        return {};
    if (request_path.find('\0') != std::string::npos)
        return {};
    // Segment by segment: no "..", no hidden files; then the resolved file must still lie under the root
    // (symbolic links included).
    std::string rel = request_path.substr(1);
    if (rel.empty() || rel.back() == '/')
        rel += "index.html";
    fs::path p;
    size_t start = 0;
    while (start <= rel.size()) {
        const size_t end = rel.find('/', start);
        const std::string seg = rel.substr(start, end == std::string::npos ? std::string::npos : end - start);
        if (seg.empty() || seg == "." || seg == ".." || seg[0] == '.' || seg.find('\\') != std::string::npos)
            return {};
        p /= seg;
        if (end == std::string::npos)
            break;
        start = end + 1;
    }
    std::error_code ec;
    const fs::path base = fs::canonical(root, ec);
    if (ec)
        return {};
    const fs::path full = fs::canonical(base / p, ec);
    if (ec || !fs::is_regular_file(full, ec))
        return {};
    const auto rel_to_base = full.lexically_relative(base);
    if (rel_to_base.empty() || *rel_to_base.begin() == "..")
        return {};
    return full.string();
}

std::string mime_type_for(const std::string& path) {
    const std::string ext = fs::path(path).extension().string();
    static const std::map<std::string, std::string> types = {{".html", "text/html; charset=utf-8"},
                                                             {".js", "text/javascript; charset=utf-8"},
                                                             {".css", "text/css; charset=utf-8"},
                                                             {".json", "application/json"},
                                                             {".png", "image/png"},
                                                             {".svg", "image/svg+xml"},
                                                             {".mp4", "video/mp4"},
                                                             {".webm", "video/webm"},
                                                             {".txt", "text/plain; charset=utf-8"},
                                                             {".ico", "image/x-icon"}};
    const auto it = types.find(ext);
    return it == types.end() ? "application/octet-stream" : it->second;
}

struct HttpServer::Impl {
    HttpServerOptions options;
    HttpRoutes routes;
    net::io_context ioc;
    std::unique_ptr<tcp::acceptor> acceptor;
    std::vector<std::thread> threads;
    std::optional<net::executor_work_guard<net::io_context::executor_type>> work;
    std::atomic<uint64_t> bytes_sent{0};
    std::atomic<int64_t> connections{0};
    uint16_t bound_port = 0;
    bool running = false;
    // Closed by stop(): posts from application threads (sends, late HTTP answers) check it first, so none
    // reaches a stopped io_context.
    struct Gate {
        std::shared_mutex mutex;
        bool open = true;
    };
    std::shared_ptr<Gate> gate = std::make_shared<Gate>();
    // Open WebSocket sessions, so that stop() can end them (and break their handler cycles) first.
    std::mutex sessions_mutex;
    std::vector<std::weak_ptr<WsConnection>> sessions;

    Impl(HttpServerOptions o, HttpRoutes r) : options(std::move(o)), routes(std::move(r)) {}
    void accept();
};

namespace {

// The longest prefix of at most n bytes that does not cut a UTF-8 character (close reasons must be valid).
std::string utf8_prefix(const std::string& s, size_t n) {
    if (s.size() <= n)
        return s;
    while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80)
        --n;
    return s.substr(0, n);
}

HttpRequest to_request(const http::request<http::string_body>& req, const std::string& remote) {
    HttpRequest r;
    r.method = std::string(req.method_string());
    r.target = std::string(req.target());
    const auto q = r.target.find('?');
    if (!url_decode(r.target.substr(0, q), r.path, false))
        r.path = "\x01";  // malformed: routed to a 400
    if (q != std::string::npos) {
        std::string rest = r.target.substr(q + 1);
        size_t start = 0;
        while (start < rest.size()) {
            const size_t amp = rest.find('&', start);
            const std::string pair =
                rest.substr(start, amp == std::string::npos ? std::string::npos : amp - start);
            const size_t eq = pair.find('=');
            std::string k, v;
            if (url_decode(pair.substr(0, eq), k, true) &&
                url_decode(eq == std::string::npos ? "" : pair.substr(eq + 1), v, true))
                r.query[k] = v;
            if (amp == std::string::npos)
                break;
            start = amp + 1;
        }
    }
    for (const auto& f : req) {
        std::string name(f.name_string());
        for (auto& c : name)
            c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        r.headers[name] = std::string(f.value());
    }
    r.body = req.body();
    r.remote = remote;
    return r;
}

class WsSession : public WsConnection, public std::enable_shared_from_this<WsSession> {
  public:
    WsSession(tcp::socket&& socket,
              HttpServer::Impl& server,
              std::shared_ptr<WsHandler> handler,
              std::string remote)
        : ws_(std::move(socket)),
          server_(server),
          gate_(server.gate),
          max_queue_messages_(server.options.max_ws_queue_messages),
          max_queue_bytes_(server.options.max_ws_queue_bytes),
          handler_(std::move(handler)),
          remote_(std::move(remote)) {}

    void run(http::request<http::string_body> req) {
        ws_.set_option(websocket::stream_base::timeout::suggested(beast::role_type::server));
        ws_.read_message_max(server_.options.max_ws_message_bytes);
        ws_.set_option(websocket::stream_base::decorator(
            [](websocket::response_type& res) { res.set(http::field::server, "memoreel"); }));
        ws_.async_accept(req, beast::bind_front_handler(&WsSession::on_accept, shared_from_this()));
    }

    bool send_text(std::string text) override { return enqueue({{std::move(text), false}}); }
    bool send_binary(std::string bytes) override { return enqueue({{std::move(bytes), true}}); }
    bool send_pair(std::string text, std::string bytes) override {
        return enqueue({{std::move(text), false}, {std::move(bytes), true}});
    }
    void close(const std::string& reason) override {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (closed_ || closing_)
                return;
            closing_ = true;  // enqueue refuses from now on: nothing can follow the Close frame
            close_reason_ = utf8_prefix(reason, 120);
        }
        post([self = shared_from_this()] { self->write_next(); });
    }
    // stop(): ends the connection now (on its strand), whatever is queued.
    void shut_down() {
        net::post(ws_.get_executor(), [self = shared_from_this()] {
            beast::error_code ec;
            beast::get_lowest_layer(self->ws_).socket().close(ec);
            self->finish();
        });
    }
    size_t queued_bytes() const override { return queued_bytes_.load(); }
    size_t queued_messages() const override { return queued_messages_.load(); }
    double seconds_since_progress() const override {
        if (queued_messages_.load() == 0)
            return 0;
        const auto since = std::chrono::steady_clock::now().time_since_epoch() -
                           std::chrono::steady_clock::duration(last_progress_.load());
        return std::chrono::duration<double>(since).count();
    }
    const std::string& remote() const override { return remote_; }
    size_t drop_queued() override {
        std::lock_guard<std::mutex> lock(mutex_);
        // The front message may be mid-write; everything after it goes.
        size_t dropped = 0;
        while (queue_.size() > (writing_ ? 1u : 0u)) {
            queued_bytes_ -= queue_.back().bytes.size();
            --queued_messages_;
            queue_.pop_back();
            ++dropped;
        }
        return dropped;
    }

  private:
    struct Message {
        std::string bytes;
        bool binary = false;
    };

    // Queues the messages together (nothing else can come between them) or none of them.
    bool enqueue(std::vector<std::pair<std::string, bool>> messages) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (closed_ || closing_)
                return false;
            size_t bytes = 0;
            for (const auto& m : messages)
                bytes += m.first.size();
            if (queued_messages_ + messages.size() > max_queue_messages_ ||
                queued_bytes_ + bytes > max_queue_bytes_)
                return false;
            if (queued_messages_ == 0)
                mark_progress();
            queued_bytes_ += bytes;
            queued_messages_ += messages.size();
            for (auto& [data, binary] : messages)
                queue_.push_back({std::move(data), binary});
        }
        post([self = shared_from_this()] { self->write_next(); });
        return true;
    }

    // Posts to the strand unless the server has stopped.
    template <typename F>
    void post(F&& f) {
        // Application threads may call after the server stopped: the gate (shared, outliving it) says so.
        std::shared_lock<std::shared_mutex> lock(gate_->mutex);
        if (gate_->open)
            net::post(ws_.get_executor(), std::forward<F>(f));
    }

    void on_accept(beast::error_code ec) {
        if (ec) {
            spdlog::debug("websocket accept from {}: {}", remote_, ec.message());
            return finish();
        }
        ++server_.connections;
        open_ = true;
        {
            std::lock_guard<std::mutex> lock(server_.sessions_mutex);
            server_.sessions.push_back(weak_from_this());
        }
        if (!call_handler([&] { handler_->on_open(shared_from_this()); }))
            return;
        read();
    }

    void read() {
        ws_.async_read(buffer_, beast::bind_front_handler(&WsSession::on_read, shared_from_this()));
    }

    void on_read(beast::error_code ec, std::size_t) {
        if (ec) {
            // Beast fails the connection itself (close code 1009, "too big") when a message exceeds the
            // limit.
            if (ec == websocket::error::message_too_big)
                spdlog::info("websocket {}: message over {} bytes, connection closed", remote_,
                             server_.options.max_ws_message_bytes);
            return finish();
        }
        const std::string data = beast::buffers_to_string(buffer_.data());
        buffer_.consume(buffer_.size());
        const bool text = ws_.got_text();
        if (!call_handler([&] { text ? handler_->on_text(data) : handler_->on_binary(data); }))
            return;
        read();
    }

    void write_next() {
        std::lock_guard<std::mutex> lock(mutex_);
        if (writing_ || closed_)
            return;
        if (queue_.empty()) {
            if (closing_ && !close_started_) {
                close_started_ = true;
                websocket::close_reason cr(websocket::close_code::normal);
                cr.reason = close_reason_;
                ws_.async_close(cr, [self = shared_from_this()](beast::error_code) { self->finish(); });
            }
            return;
        }
        writing_ = true;
        ws_.binary(queue_.front().binary);
        ws_.async_write(net::buffer(queue_.front().bytes),
                        beast::bind_front_handler(&WsSession::on_write, shared_from_this()));
    }

    void on_write(beast::error_code ec, std::size_t n) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            writing_ = false;
            queued_bytes_ -= queue_.front().bytes.size();
            --queued_messages_;
            queue_.pop_front();
            mark_progress();
        }
        server_.bytes_sent += n;
        if (ec)
            return finish();
        write_next();
    }

    // An application callback that throws ends this connection, not the server.
    template <typename F>
    bool call_handler(F&& f) {
        try {
            f();
            return true;
        } catch (const std::exception& e) {
            spdlog::error("websocket {}: handler failed: {}", remote_, e.what());
        }
        beast::error_code ec;
        beast::get_lowest_layer(ws_).socket().close(ec);
        finish();
        return false;
    }

    void finish() {
        if (closed_)
            return;
        closed_ = true;
        if (open_)
            --server_.connections;
        if (handler_) {
            auto handler = std::move(handler_);  // the handler may hold this connection: break the cycle
            try {
                handler->on_close();
            } catch (const std::exception& e) {
                spdlog::error("websocket {}: on_close failed: {}", remote_, e.what());
            }
        }
    }

    websocket::stream<beast::tcp_stream> ws_;
    HttpServer::Impl& server_;  // used on the strand only (the threads are joined before the server goes)
    std::shared_ptr<HttpServer::Impl::Gate> gate_;
    size_t max_queue_messages_, max_queue_bytes_;
    std::shared_ptr<WsHandler> handler_;
    std::string remote_;
    beast::flat_buffer buffer_;
    mutable std::mutex mutex_;
    std::deque<Message> queue_;
    std::atomic<size_t> queued_bytes_{0}, queued_messages_{0};
    std::atomic<std::chrono::steady_clock::rep> last_progress_{0};  // steady_clock ticks
    void mark_progress() { last_progress_ = std::chrono::steady_clock::now().time_since_epoch().count(); }
    bool writing_ = false;        // changed on the strand under the mutex
    bool close_started_ = false;  // on the strand
    std::atomic<bool> closing_{false}, closed_{false};
    bool open_ = false;
    std::string close_reason_;
};

class HttpSession : public std::enable_shared_from_this<HttpSession> {
  public:
    HttpSession(tcp::socket&& socket, HttpServer::Impl& server)
        : stream_(std::move(socket)), server_(server) {
        beast::error_code ec;
        const auto ep = stream_.socket().remote_endpoint(ec);
        remote_ = ec ? "?" : ep.address().to_string() + ":" + std::to_string(ep.port());
    }

    void run() {
        net::dispatch(stream_.get_executor(),
                      beast::bind_front_handler(&HttpSession::read, shared_from_this()));
    }

  private:
    void read() {
        parser_.emplace();
        parser_->body_limit(server_.options.max_body_bytes);
        parser_->header_limit(16 * 1024);
        stream_.expires_after(std::chrono::seconds(server_.options.idle_timeout_seconds));
        http::async_read(stream_, buffer_, *parser_,
                         beast::bind_front_handler(&HttpSession::on_read, shared_from_this()));
    }

    void on_read(beast::error_code ec, std::size_t) {
        if (ec == http::error::end_of_stream)
            return shutdown();
        if (ec == http::error::body_limit) {
            keep_alive_ = false;
            version_ = parser_->get().version();
            head_ = false;
            return write(HttpResponse::error(
                413, "body_too_large",
                "the request body is over " + std::to_string(server_.options.max_body_bytes) + " bytes"));
        }
        if (ec == http::error::header_limit) {
            keep_alive_ = false;
            head_ = false;
            return write(
                HttpResponse::error(431, "headers_too_large", "the request headers are over 16 KiB"));
        }
        if (ec)
            return;  // timeout or a broken peer: nothing to answer
        http::request<http::string_body> req = parser_->release();
        keep_alive_ = req.keep_alive();
        version_ = req.version();
        head_ = req.method() == http::verb::head;
        const HttpRequest r = to_request(req, remote_);
        if (websocket::is_upgrade(req)) {
            if (r.path == server_.routes.ws_path && server_.routes.websocket) {
                auto handler = server_.routes.websocket(r);
                if (handler) {
                    stream_.expires_never();
                    std::make_shared<WsSession>(stream_.release_socket(), server_, std::move(handler),
                                                remote_)
                        ->run(std::move(req));
                    return;
                }
            }
            keep_alive_ = false;
            return write(HttpResponse::error(404, "not_found", "no WebSocket endpoint at " + r.path));
        }
        if (r.path == "\x01")
            return write(
                HttpResponse::error(400, "bad_path", "the request path is not valid percent-encoding"));
        if (req.method() == http::verb::get || req.method() == http::verb::head) {
            const std::string file = static_file_path(server_.options.web_root, r.path);
            if (!file.empty())
                return write_file(file, mime_type_for(file), {});
        }
        if (!server_.routes.http)
            return write(HttpResponse::error(404, "not_found", "nothing at " + r.path));
        // The handler may answer from another thread, later: back onto this connection's strand, once.
        auto self = shared_from_this();
        auto answered = std::make_shared<std::atomic<bool>>(false);
        auto gate = server_.gate;
        Respond respond = [self, answered, gate](HttpResponse res) {
            if (answered->exchange(true))
                return;
            std::shared_lock<std::shared_mutex> lock(gate->mutex);
            if (gate->open)
                net::post(self->stream_.get_executor(),
                          [self, res = std::move(res)]() mutable { self->write(std::move(res)); });
        };
        try {
            server_.routes.http(r, respond);
        } catch (const std::exception& e) {
            spdlog::error("{} {}: handler failed: {}", r.method, r.path, e.what());
            respond(HttpResponse::error(500, "internal", "the server failed to answer this request"));
        }
    }

    void write(HttpResponse res) {
        if (!res.file.empty() && res.status == 200)
            return write_file(res.file, res.content_type, res.headers);
        auto msg = std::make_shared<http::response<http::string_body>>(static_cast<http::status>(res.status),
                                                                       version_);
        msg->set(http::field::server, "memoreel");
        msg->set(http::field::content_type, res.content_type);
        msg->set(http::field::cache_control, "no-store");
        for (const auto& [k, v] : res.headers)
            msg->set(k, v);
        msg->keep_alive(keep_alive_);
        const size_t length = res.body.size();
        msg->body() = head_ ? std::string() : std::move(res.body);
        msg->prepare_payload();
        if (head_)
            msg->content_length(length);
        send(std::move(msg), std::chrono::seconds(30));
    }

    void write_file(const std::string& path,
                    const std::string& content_type,
                    const std::map<std::string, std::string>& extra) {
        http::file_body::value_type body;
        beast::error_code ec;
        body.open(path.c_str(), beast::file_mode::scan, ec);
        if (ec)
            return write(HttpResponse::error(404, "not_found", "cannot read the file"));
        const auto size = body.size();
        const auto headers = [&](auto& msg) {
            msg.set(http::field::server, "memoreel");
            msg.set(http::field::content_type, content_type);
            for (const auto& [k, v] : extra)
                msg.set(k, v);
            msg.content_length(size);
            msg.keep_alive(keep_alive_);
        };
        if (head_) {
            auto msg = std::make_shared<http::response<http::empty_body>>(http::status::ok, version_);
            headers(*msg);
            return send(std::move(msg), std::chrono::seconds(30));
        }
        auto msg = std::make_shared<http::response<http::file_body>>(
            std::piecewise_construct, std::make_tuple(std::move(body)),
            std::make_tuple(http::status::ok, version_));
        headers(*msg);
        // A big file to a slow client may take a while; an absent one is cut off.
        send(std::move(msg), std::chrono::seconds(300));
    }

    // Writes a response (kept alive by the completion handler) with its own deadline.
    template <typename Body>
    void send(std::shared_ptr<http::response<Body>> msg, std::chrono::seconds timeout) {
        stream_.expires_after(timeout);
        http::async_write(stream_, *msg,
                          [self = shared_from_this(), msg](beast::error_code ec, std::size_t n) {
                              self->server_.bytes_sent += n;
                              self->after_write(ec);
                          });
    }

    void after_write(beast::error_code ec) {
        if (ec)
            return;
        if (!keep_alive_)
            return shutdown();
        read();
    }

    void shutdown() {
        beast::error_code ec;
        stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    }

    beast::tcp_stream stream_;
    HttpServer::Impl& server_;
    beast::flat_buffer buffer_;
    std::optional<http::request_parser<http::string_body>> parser_;
    std::string remote_;
    bool keep_alive_ = true;
    bool head_ = false;
    unsigned version_ = 11;
};

}  // namespace

void HttpServer::Impl::accept() {
    acceptor->async_accept(net::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
        if (ec) {
            if (ec == net::error::operation_aborted || !acceptor->is_open())
                return;
            spdlog::warn("accept: {}", ec.message());
            // Out of descriptors and the like: try again shortly rather than spin.
            auto timer = std::make_shared<net::steady_timer>(ioc, std::chrono::milliseconds(100));
            timer->async_wait([this, timer](beast::error_code) { accept(); });
            return;
        } else {
            std::make_shared<HttpSession>(std::move(socket), *this)->run();
        }
        accept();
    });
}

HttpServer::HttpServer(HttpServerOptions options, HttpRoutes routes)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(routes))) {}

HttpServer::~HttpServer() {
    stop();
}

void HttpServer::start() {
    Impl& m = *impl_;
    if (m.running)
        return;
    beast::error_code ec;
    const auto address = net::ip::make_address(m.options.address, ec);
    if (ec)
        throw std::runtime_error("server address '" + m.options.address + "': " + ec.message());
    const tcp::endpoint ep(address, m.options.port);
    m.acceptor = std::make_unique<tcp::acceptor>(net::make_strand(m.ioc));
    m.acceptor->open(ep.protocol(), ec);
    if (!ec)
        m.acceptor->set_option(net::socket_base::reuse_address(true), ec);
    if (!ec)
        m.acceptor->bind(ep, ec);
    if (!ec)
        m.acceptor->listen(net::socket_base::max_listen_connections, ec);
    if (ec)
        throw std::runtime_error("cannot listen on " + m.options.address + ":" +
                                 std::to_string(m.options.port) + ": " + ec.message());
    m.bound_port = m.acceptor->local_endpoint().port();
    m.ioc.restart();
    {
        std::unique_lock<std::shared_mutex> lock(m.gate->mutex);
        m.gate->open = true;
    }
    m.work.emplace(m.ioc.get_executor());
    m.accept();
    for (int i = 0; i < std::max(1, m.options.threads); ++i)
        m.threads.emplace_back([&m] {
            for (;;) {
                try {
                    m.ioc.run();
                    return;
                } catch (const std::exception& e) {
                    spdlog::error("server thread: {}", e.what());
                }
            }
        });
    m.running = true;
}

void HttpServer::stop() {
    Impl& m = *impl_;
    if (!m.running)
        return;
    net::post(m.acceptor->get_executor(), [&m] {
        beast::error_code ec;
        m.acceptor->close(ec);
    });
    // End the WebSocket sessions first (their handlers hear on_close and let go of them), give them a moment,
    // then stop the network threads.
    std::vector<std::weak_ptr<WsConnection>> open;
    {
        std::lock_guard<std::mutex> lock(m.sessions_mutex);
        open.swap(m.sessions);
    }
    for (auto& w : open)
        if (auto c = w.lock())
            static_cast<WsSession*>(c.get())->shut_down();
    for (int i = 0; i < 200 && m.connections.load() > 0; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    {
        std::unique_lock<std::shared_mutex> lock(m.gate->mutex);
        m.gate->open = false;
    }
    m.work.reset();
    m.ioc.stop();
    for (auto& t : m.threads)
        t.join();
    m.threads.clear();
    beast::error_code ec;
    m.acceptor->close(ec);
    m.running = false;
}

uint16_t HttpServer::port() const {
    return impl_->bound_port;
}

uint64_t HttpServer::bytes_sent() const {
    return impl_->bytes_sent.load();
}

int64_t HttpServer::open_websockets() const {
    return impl_->connections.load();
}

}  // namespace memoreel
