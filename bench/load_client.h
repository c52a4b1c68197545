// One WebSocket viewer of the load run (bench serve): connects to /v1/realtime/video, sends its first message
// (session.start for a session's owner, session.resume for the viewers that join it), then reads everything
// the server sends and records when it arrived. Asynchronous on the caller's io_context, which runs on one
// thread, so no record needs a lock while the run goes on.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace memoreel::bench {

using Clock = std::chrono::steady_clock;

inline double seconds_between(Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double>(b - a).count();
}

// What one connection saw. Times are steady-clock points; the report turns them into seconds.
struct ViewerRecord {
    int session = 0;     // index of the session in the run
    bool owner = false;  // sent session.start (else session.resume)
    bool slow = false;   // reads with a delay, to exercise the slow-viewer policy
    Clock::time_point first_sent;
    Clock::time_point video_start_at, first_segment_at;
    bool got_video_start = false, got_segment = false;
    std::string session_id, token;
    std::vector<Clock::time_point> segment_at;  // one per received section segment
    std::vector<int64_t> chunk_index;           // the section of each
    std::vector<double> chunk_seconds;          // the video duration of each
    std::vector<double> section_latency_ms;     // the server's generation time of each (chunk stats)
    double last_realtime_factor = 0;
    int behind_realtime_stats = 0;  // stats that said behind_realtime
    int64_t bytes = 0;              // binary bytes (init + segments)
    int64_t skipped_sections = 0;   // from session.skipped
    int skipped_messages = 0;
    std::map<std::string, int> errors;  // by code ("connection" for transport failures)
    std::string done_reason;            // session.done's reason, empty until then
    // Prompts this connection sent (owners): when, and how long until applied and until on screen.
    std::map<std::string, Clock::time_point> prompt_sent;
    std::vector<double> prompt_applied_s;  // sent -> session.interaction.applied
    std::vector<double> prompt_visible_s;  // sent -> the segment of the section that started it
    bool closed = false;
};

class LoadViewer : public std::enable_shared_from_this<LoadViewer> {
  public:
    using OnVideoStart = std::function<void(ViewerRecord&)>;
    // `path`: the WebSocket target including any query (?api_key=...). `read_delay_s` > 0 makes a slow
    // viewer.
    LoadViewer(boost::asio::io_context& ioc,
               std::string host,
               uint16_t port,
               std::string path,
               nlohmann::json first_message,
               ViewerRecord& record,
               double read_delay_s = 0,
               OnVideoStart on_video_start = {});

    void start();
    void send(const nlohmann::json& message);
    // A prompt "now" with a fresh event id; recorded in prompt_sent.
    void send_prompt(const std::string& event_id, const std::string& prompt);
    // Closes the WebSocket (a normal close; the session goes on unless it was stopped).
    void close();

  private:
    void close_now();
    void fail(const char* what, boost::beast::error_code ec);
    void read_next();
    void on_read(boost::beast::error_code ec, size_t bytes);
    void on_text(const std::string& text);
    void write_next();

    boost::asio::io_context& ioc_;
    boost::beast::websocket::stream<boost::beast::tcp_stream> ws_;
    boost::asio::steady_timer delay_;
    boost::beast::flat_buffer buffer_;
    std::string host_, path_;
    uint16_t port_;
    nlohmann::json first_message_;
    ViewerRecord& record_;
    double read_delay_s_;
    OnVideoStart on_video_start_;
    std::deque<std::string> outbox_;
    bool open_ = false, writing_ = false, closing_ = false;
    bool expect_init_ = false, expect_segment_ = false;
    std::vector<std::string> pending_started_;  // events.started of the metadata whose segment comes next
};

}  // namespace memoreel::bench
