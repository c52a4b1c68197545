// The network layer (server/http_server.h) on loopback: static files that cannot escape the web root, REST
// answered through the handler (also later, from another thread), limits with clear answers, WebSocket text
// and binary both ways, the message limit, and the bounded send queue.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "server/http_server.h"
#include "tests/loopback_client.h"

using namespace memoreel;
namespace beast = boost::beast;
namespace websocket = beast::websocket;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using test::curl;
using test::WsClient;

namespace {

// Echoes text back as "echo: ...", binary back as binary; remembers that it was closed.
struct EchoHandler : WsHandler {
    std::shared_ptr<WsConnection> conn;
    std::atomic<bool> closed{false};
    void on_open(const std::shared_ptr<WsConnection>& c) override { conn = c; }
    void on_text(const std::string& t) override { conn->send_text("echo: " + t); }
    void on_binary(const std::string& b) override { conn->send_binary(b); }
    void on_close() override {
        closed = true;
        conn.reset();
    }
};

}  // namespace

TEST_SUITE("http_server") {
    TEST_CASE("static files stay inside the web root, REST goes to the handler, limits answer clearly") {
        test::TempDir dir;
        std::filesystem::create_directories(dir.file("web/js"));
        std::ofstream(dir.file("web/index.html")) << "<h1>memoreel</h1>";
        std::ofstream(dir.file("web/js/app.js")) << "console.log(1)";
        std::ofstream(dir.file("secret.txt")) << "do not serve";
        std::filesystem::create_symlink(dir.file("secret.txt"), dir.file("web/link.txt"));
        HttpServerOptions o;
        o.port = 0;
        o.web_root = dir.file("web");
        o.max_body_bytes = 1000;
        HttpRoutes routes;
        routes.http = [](const HttpRequest& r, Respond respond) {
            if (r.path == "/later") {  // answered from another thread, after a while
                std::thread([respond] {
                    std::this_thread::sleep_for(std::chrono::milliseconds(50));
                    respond(HttpResponse::json(202, "{\"late\": true}"));
                }).detach();
                return;
            }
            if (r.path == "/echo")
                return respond(
                    HttpResponse::json(200, "{\"method\": \"" + r.method + "\", \"q\": \"" + r.query.at("q") +
                                                "\", \"body\": " + std::to_string(r.body.size()) + "}"));
            respond(HttpResponse::error(404, "not_found", "nothing at " + r.path));
        };
        HttpServer server(o, routes);
        server.start();
        const uint16_t port = server.port();
        REQUIRE(port != 0);
        CHECK(curl(port, "/").find("<h1>memoreel</h1> HTTP200") != std::string::npos);
        CHECK(curl(port, "/js/app.js", "-I").find("text/javascript") != std::string::npos);
        // Escapes: dot-dot (raw and encoded), a symbolic link out of the root, hidden files.
        for (const std::string path : {"/../secret.txt", "/%2e%2e/secret.txt", "/js/../../secret.txt",
                                       "/link.txt", "/.hidden", "/..%2fsecret.txt"}) {
            const std::string got = curl(port, path);
            CHECK_MESSAGE(got.find("do not serve") == std::string::npos, path);
            CHECK_MESSAGE(got.find("HTTP404") != std::string::npos, path << ": " << got);
        }
        const std::string echo = curl(port, "/echo?q=a%20b", "-X POST -d abc");
        CHECK(echo.find("\"method\": \"POST\"") != std::string::npos);
        CHECK(echo.find("\"q\": \"a b\"") != std::string::npos);
        CHECK(echo.find("\"body\": 3") != std::string::npos);
        CHECK(curl(port, "/later").find("{\"late\": true} HTTP202") != std::string::npos);
        const std::string big = test::run_command(
                                    "head -c 5000 /dev/zero | curl -s -w ' HTTP%{http_code}' "
                                    "--data-binary @- 'http://127.0.0.1:" +
                                    std::to_string(port) + "/echo'")
                                    .output;
        CHECK_MESSAGE(big.find("HTTP413") != std::string::npos, big);
        CHECK(big.find("body_too_large") != std::string::npos);
        // A handler that throws (here: /echo without its query) gives a 500; it does not take the server
        // down.
        const std::string thrown = curl(port, "/echo");
        CHECK_MESSAGE(thrown.find("HTTP500") != std::string::npos, thrown);
        CHECK(thrown.find("\"internal\"") != std::string::npos);
        CHECK(curl(port, "/", "-I").find("Content-Length: 17") !=
              std::string::npos);  // HEAD keeps the length
        // The server still serves after all that.
        CHECK(curl(port, "/").find("HTTP200") != std::string::npos);
        server.stop();
    }

    TEST_CASE("websocket: text and binary both ways, oversized messages closed, bounded send queue") {
        HttpServerOptions o;
        o.port = 0;
        o.max_ws_message_bytes = 1024;
        o.max_ws_queue_messages = 4;
        auto handler = std::make_shared<EchoHandler>();
        HttpRoutes routes;
        routes.websocket = [handler](const HttpRequest&) -> std::shared_ptr<WsHandler> { return handler; };
        HttpServer server(o, routes);
        server.start();
        {
            WsClient c(server.port());
            c.ws.text(true);
            c.ws.write(net::buffer(std::string("hello")));
            CHECK(c.read() == "echo: hello");
            c.ws.binary(true);
            const std::string bytes("\x00\x01\x02\xff", 4);
            c.ws.write(net::buffer(bytes));
            bool binary = false;
            CHECK(c.read(&binary) == bytes);
            CHECK(binary);
            CHECK(server.open_websockets() == 1);
            // The queue bound: more sends than the bound without the peer reading: some are refused.
            int accepted = 0;
            for (int i = 0; i < 50; ++i)
                accepted += handler->conn->send_text(std::string(100000, 'x')) ? 1 : 0;
            CHECK(accepted < 50);
            CHECK(handler->conn->queued_messages() <= 4);
            // Oversized message: the server closes with "message too big".
            c.ws.text(true);
            c.ws.write(net::buffer(std::string(5000, 'y')));
            beast::error_code ec;
            beast::flat_buffer b;
            while (!ec)
                c.ws.read(b, ec);
            // The connection ends: a close frame with 1009 when the client reads it before the server's
            // socket closes, otherwise a reset or broken pipe (the server closed with the rest of the message
            // unread).
            CHECK(ec);
            if (ec == websocket::error::closed)
                CHECK(c.ws.reason().code == websocket::close_code::too_big);
        }
        for (int i = 0; i < 100 && !handler->closed; ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        CHECK(handler->closed);
        CHECK(server.bytes_sent() > 0);
        {
            WsClient again(server.port());  // the server goes on
            again.ws.write(net::buffer(std::string("still there?")));
            CHECK(again.read() == "echo: still there?");
        }
        // A path that is not the WebSocket endpoint is refused.
        CHECK_THROWS(WsClient(server.port(), "/elsewhere"));
    }
}
