#include "bench/http_get.h"

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <chrono>
#include <sstream>

namespace memoreel::bench {

namespace beast = boost::beast;
namespace http = beast::http;
using tcp = boost::asio::ip::tcp;

HttpReply http_get(const std::string& host,
                   uint16_t port,
                   const std::string& target,
                   const std::map<std::string, std::string>& headers,
                   double timeout_s) {
    boost::asio::io_context ioc;
    beast::tcp_stream stream(ioc);
    const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
    tcp::resolver resolver(ioc);
    stream.expires_after(timeout);
    stream.connect(resolver.resolve(host, std::to_string(port)));
    http::request<http::empty_body> req{http::verb::get, target, 11};
    req.set(http::field::host, host);
    req.set(http::field::user_agent, "memoreel-bench");
    for (const auto& [name, value] : headers)
        req.set(name, value);
    stream.expires_after(timeout);
    http::write(stream, req);
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(64 << 20);
    http::read(stream, buffer, parser);
    beast::error_code ec;
    stream.socket().shutdown(tcp::socket::shutdown_both, ec);
    return {static_cast<int>(parser.get().result_int()), parser.get().body()};
}

double prometheus_sum(const std::string& text, const std::string& name) {
    double sum = 0;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        if (line.empty() || line[0] == '#' || line.compare(0, name.size(), name) != 0)
            continue;
        const char next = line.size() > name.size() ? line[name.size()] : '\0';
        if (next != ' ' && next != '{')  // another family that starts with the same name
            continue;
        const size_t space = line.rfind(' ');
        if (space != std::string::npos)
            sum += std::stod(line.substr(space + 1));
    }
    return sum;
}

}  // namespace memoreel::bench
