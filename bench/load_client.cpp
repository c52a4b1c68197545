#include "bench/load_client.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>

namespace memoreel::bench {

namespace beast = boost::beast;
namespace websocket = beast::websocket;
using tcp = boost::asio::ip::tcp;

LoadViewer::LoadViewer(boost::asio::io_context& ioc,
                       std::string host,
                       uint16_t port,
                       std::string path,
                       nlohmann::json first_message,
                       ViewerRecord& record,
                       double read_delay_s,
                       OnVideoStart on_video_start)
    : ioc_(ioc),
      ws_(ioc),
      delay_(ioc),
      host_(std::move(host)),
      path_(std::move(path)),
      port_(port),
      first_message_(std::move(first_message)),
      record_(record),
      read_delay_s_(read_delay_s),
      on_video_start_(std::move(on_video_start)) {
    // Segments of a large model at a high bitrate are a few MB at most.
    ws_.read_message_max(64 << 20);
}

void LoadViewer::start() {
    auto self = shared_from_this();
    tcp::resolver resolver(ioc_);
    beast::error_code ec;
    const auto endpoints = resolver.resolve(host_, std::to_string(port_), ec);
    if (ec)
        return fail("resolve", ec);
    beast::get_lowest_layer(ws_).expires_after(std::chrono::seconds(30));
    beast::get_lowest_layer(ws_).async_connect(endpoints, [self](beast::error_code ec, const auto&) {
        if (ec)
            return self->fail("connect", ec);
        // The stream's own timeouts from here on (idle pings, handshake), not the connect deadline.
        beast::get_lowest_layer(self->ws_).expires_never();
        self->ws_.set_option(websocket::stream_base::timeout::suggested(beast::role_type::client));
        self->ws_.async_handshake(self->host_ + ":" + std::to_string(self->port_), self->path_,
                                  [self](beast::error_code ec) {
                                      if (ec)
                                          return self->fail("handshake", ec);
                                      self->open_ = true;
                                      self->record_.first_sent = Clock::now();
                                      self->send(self->first_message_);
                                      self->read_next();
                                  });
    });
}

void LoadViewer::send(const nlohmann::json& message) {
    if (record_.closed)
        return;
    outbox_.push_back(message.dump());
    if (open_ && !writing_)
        write_next();
}

void LoadViewer::send_prompt(const std::string& event_id, const std::string& prompt) {
    record_.prompt_sent[event_id] = Clock::now();
    send({{"type", "session.interaction"},
          {"event_id", event_id},
          {"event", {{"prompt", prompt}, {"time", nullptr}, {"mode", "add"}}}});
}

void LoadViewer::write_next() {
    if (closing_) {
        writing_ = false;
        return close_now();
    }
    if (outbox_.empty()) {
        writing_ = false;
        return;
    }
    writing_ = true;
    ws_.text(true);
    auto self = shared_from_this();
    ws_.async_write(boost::asio::buffer(outbox_.front()), [self](beast::error_code ec, size_t) {
        self->outbox_.pop_front();
        if (ec)
            return self->fail("write", ec);
        self->write_next();
    });
}

void LoadViewer::close() {
    if (closing_ || record_.closed)
        return;
    closing_ = true;
    delay_.cancel();
    // One write at a time, the close frame included: a write in progress closes when it completes.
    if (!writing_)
        close_now();
}

void LoadViewer::close_now() {
    if (record_.closed)
        return;
    if (!open_) {
        record_.closed = true;
        beast::error_code ec;
        beast::get_lowest_layer(ws_).socket().close(ec);
        return;
    }
    auto self = shared_from_this();
    ws_.async_close(websocket::close_code::normal,
                    [self](beast::error_code) { self->record_.closed = true; });
}

void LoadViewer::fail(const char* what, beast::error_code ec) {
    if (record_.closed)
        return;
    record_.closed = true;
    // Our own close and the server's close after session.done are the normal ends of a connection.
    if (closing_ || ec == websocket::error::closed || ec == boost::asio::error::operation_aborted ||
        !record_.done_reason.empty())
        return;
    record_.errors[std::string("connection_") + what] += 1;
}

void LoadViewer::read_next() {
    auto self = shared_from_this();
    auto read = [self] {
        self->ws_.async_read(self->buffer_,
                             [self](beast::error_code ec, size_t bytes) { self->on_read(ec, bytes); });
    };
    if (read_delay_s_ > 0 && record_.got_segment) {
        delay_.expires_after(std::chrono::milliseconds(static_cast<int64_t>(read_delay_s_ * 1000)));
        delay_.async_wait([self, read](beast::error_code ec) {
            if (!ec && !self->closing_)
                read();
        });
    } else {
        read();
    }
}

void LoadViewer::on_read(beast::error_code ec, size_t bytes) {
    if (ec)
        return fail("read", ec);
    const auto now = Clock::now();
    if (ws_.got_text()) {
        on_text(beast::buffers_to_string(buffer_.data()));
    } else {
        record_.bytes += static_cast<int64_t>(bytes);
        if (expect_segment_) {
            record_.segment_at.push_back(now);
            if (!record_.got_segment) {
                record_.got_segment = true;
                record_.first_segment_at = now;
            }
            for (const auto& id : pending_started_) {
                const auto it = record_.prompt_sent.find(id);
                if (it != record_.prompt_sent.end())
                    record_.prompt_visible_s.push_back(seconds_between(it->second, now));
            }
            pending_started_.clear();
        } else if (!expect_init_) {
            record_.errors["unexpected_binary"] += 1;
        }
        expect_init_ = expect_segment_ = false;
    }
    buffer_.consume(buffer_.size());
    if (!closing_)
        read_next();
}

void LoadViewer::on_text(const std::string& text) {
    const auto now = Clock::now();
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(text);
    } catch (const std::exception&) {
        record_.errors["bad_server_json"] += 1;
        return;
    }
    const std::string type = j.value("type", "");
    if (type == "video.start") {
        record_.got_video_start = true;
        record_.video_start_at = now;
        record_.session_id = j.value("session_id", "");
        record_.token = j.value("token", "");
        if (on_video_start_)
            on_video_start_(record_);
    } else if (type == "video.init") {
        expect_init_ = true;
    } else if (type == "video.chunk_metadata") {
        expect_segment_ = true;
        record_.chunk_index.push_back(j.value("chunk_index", int64_t{-1}));
        record_.chunk_seconds.push_back(j.value("duration_seconds", 0.0));
        pending_started_.clear();
        if (j.contains("events") && j["events"].contains("started"))
            for (const auto& id : j["events"]["started"])
                pending_started_.push_back(id.get<std::string>());
        if (j.contains("stats")) {
            const auto& s = j["stats"];
            record_.section_latency_ms.push_back(s.value("section_latency_ms", 0.0));
            record_.last_realtime_factor = s.value("realtime_factor", 0.0);
            if (s.value("behind_realtime", false))
                record_.behind_realtime_stats += 1;
        }
    } else if (type == "session.interaction.applied") {
        const auto it = record_.prompt_sent.find(j.value("event_id", ""));
        if (it != record_.prompt_sent.end())
            record_.prompt_applied_s.push_back(seconds_between(it->second, now));
    } else if (type == "session.skipped") {
        record_.skipped_messages += 1;
        record_.skipped_sections +=
            j.value("to_section", int64_t{0}) - j.value("from_section", int64_t{0}) + 1;
    } else if (type == "session.done") {
        record_.done_reason = j.value("reason", "unknown");
    } else if (type == "error") {
        record_.errors[j.value("code", "unknown")] += 1;
    }
    // session.stats, queued, superseded and pong need no record.
}

}  // namespace memoreel::bench
