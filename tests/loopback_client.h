// Clients for the server tests on loopback: curl for HTTP (status appended as " HTTP<code>") and a
// synchronous Beast WebSocket client whose reads time out, so a missing message fails a test instead of
// hanging it. Header-only: only the two server test files include it (Beast is heavy to compile).
#pragma once

#include <sys/socket.h>
#include <sys/time.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>

#include <string>

#include "tests/test_support.h"

namespace memoreel::test {

// Body and status (" HTTP<code>") of a request; extra curl arguments before the URL.
inline std::string curl(uint16_t port, const std::string& path, const std::string& args = "") {
    return run_command("curl -s --path-as-is -w ' HTTP%{http_code}' " + args +
                       " 'http://127.0.0.1:" + std::to_string(port) + path + "'")
        .output;
}

struct WsClient {
    boost::asio::io_context ioc;
    boost::beast::websocket::stream<boost::asio::ip::tcp::socket> ws{ioc};
    explicit WsClient(uint16_t port, const std::string& path = "/v1/realtime/video") {
        boost::asio::ip::tcp::resolver resolver(ioc);
        boost::asio::connect(ws.next_layer(), resolver.resolve("127.0.0.1", std::to_string(port)));
        timeval tv{60, 0};
        setsockopt(ws.next_layer().native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        ws.handshake("127.0.0.1", path);
    }
    // The next message; *binary tells whether it was binary.
    std::string read(bool* binary = nullptr) {
        boost::beast::flat_buffer b;
        ws.read(b);
        if (binary)
            *binary = !ws.got_text();
        return boost::beast::buffers_to_string(b.data());
    }
};

}  // namespace memoreel::test
