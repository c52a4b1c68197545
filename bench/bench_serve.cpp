// `memoreel bench serve`: the bounded load run of the live server. Starts `memoreel serve` as a child on a
// free loopback port (or uses a running server, --url), opens N live sessions over WebSocket with V more
// viewers each, steers every session with a prompt every few seconds, and after M minutes stops them. Prints,
// and writes as JSON: time to first section, section latency (the server's generation time) and delivery
// interval percentiles, real-time factor, sections/s, prompt-to-applied latency, skipped (dropped) sections,
// errors, and the server's resident memory, queue depth and viewers over time (scraped from /metrics).
#include <spdlog/spdlog.h>
#include <torch/torch.h>
#include <CLI/CLI.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "bench/http_get.h"
#include "bench/load_client.h"
#include "bench/server_process.h"
#include "cli/commands.h"

namespace memoreel {

namespace {

namespace fs = std::filesystem;
using bench::Clock;
using bench::seconds_between;
using bench::ViewerRecord;

struct LoadArgs {
    std::string url;  // host:port of a running server; empty = start one
    std::string config = "configs/server.json";
    std::string model;
    std::vector<std::string> serve_args;
    std::string state_dir;
    bool keep_state = false;
    std::string api_key;
    int sessions = 2;
    int viewers = 1;  // more viewers per session, besides the one that started it
    int slow_viewers = 0;
    double slow_delay_s = 5;
    double minutes = 2;
    double stagger_s = 0;
    double prompt_every_s = 20;
    int steps = 0;  // 0: the model's default
    double sample_every_s = 5;
    double grace_s = 180;
    double ready_timeout_s = 600;
    std::string json_path;
};

// The storyboard every session plays (seeds differ): the world's caption style, a cut and a return.
nlohmann::json storyboard() {
    return {{"prompts",
             {{{"time", 0}, {"prompt", "the green striped fox walks into the red room"}},
              {{"time", 4}, {"prompt", "cut to the beach, a blue dotted bear walks along the water"}},
              {{"time", 8}, {"prompt", "back in the red room, the fox picks up the lamp"}}}}};
}

// What the prompts sent mid-stream say, in turn.
const std::vector<std::string> kSteering = {
    "the fox walks to the window of the red room",
    "cut to the forest, the bear sits under a tree",
    "back on the beach, the fox runs along the water",
    "the bear walks into the red room and sits down",
};

struct Sample {
    double t = 0;  // seconds since the run started
    double rss_mb = 0, queue_depth = 0, viewers = 0, sections_total = 0, dropped = 0, bytes_sent = 0;
};

double percentile(std::vector<double> v, double p) {
    if (v.empty())
        return 0;
    std::sort(v.begin(), v.end());
    const size_t i = static_cast<size_t>(std::ceil(p * static_cast<double>(v.size()))) - (p > 0 ? 1 : 0);
    return v[std::min(v.size() - 1, i)];
}

nlohmann::json summary(const std::vector<double>& v) {
    return {{"count", v.size()},
            {"p50", percentile(v, 0.5)},
            {"p90", percentile(v, 0.9)},
            {"p99", percentile(v, 0.99)},
            {"max", percentile(v, 1.0)}};
}

// Seconds between consecutive segments of one viewer.
std::vector<double> intervals(const ViewerRecord& r) {
    std::vector<double> out;
    for (size_t i = 1; i < r.segment_at.size(); ++i)
        out.push_back(seconds_between(r.segment_at[i - 1], r.segment_at[i]));
    return out;
}

// Video seconds per wall second from the first segment to the last (the first section's own time excluded).
double realtime_factor(const ViewerRecord& r) {
    if (r.segment_at.size() < 2)
        return 0;
    double video = 0;
    for (size_t i = 1; i < r.chunk_seconds.size(); ++i)
        video += r.chunk_seconds[i];
    const double wall = seconds_between(r.segment_at.front(), r.segment_at.back());
    return wall > 0 ? video / wall : 0;
}

class LoadRun {
  public:
    explicit LoadRun(const LoadArgs& a) : a_(a) {}

    nlohmann::json run(const std::string& host, uint16_t port) {
        host_ = host;
        port_ = port;
        std::printf(
            "load run       %d sessions x (1 + %d viewers%s), %.1f min, a prompt every %.0f s, server "
            "%s:%u\n",
            a_.sessions, a_.viewers,
            a_.slow_viewers ? (", " + std::to_string(a_.slow_viewers) + " slow").c_str() : "", a_.minutes,
            a_.prompt_every_s, host.c_str(), static_cast<unsigned>(port));
        std::fflush(stdout);
        t0_ = Clock::now();
        std::atomic<bool> sampling{true};
        std::thread sampler([&] {
            while (sampling) {
                sample();
                for (int i = 0; i < static_cast<int>(a_.sample_every_s * 10) && sampling; ++i)
                    std::this_thread::sleep_for(std::chrono::milliseconds(100));
            }
        });
        for (int s = 0; s < a_.sessions; ++s)
            start_session(s);
        auto end = new_timer();
        end->expires_after(std::chrono::milliseconds(static_cast<int64_t>(a_.minutes * 60000)));
        end->async_wait([this](boost::system::error_code ec) {
            if (!ec)
                stop_sessions();
        });
        report_progress(new_timer());
        ioc_.run();
        sampling = false;
        sampler.join();
        sample();
        return report();
    }

  private:
    std::string ws_path() const {
        return "/v1/realtime/video" + (a_.api_key.empty() ? std::string() : "?api_key=" + a_.api_key);
    }

    ViewerRecord& new_record(int session, bool owner) {
        records_.emplace_back();
        records_.back().session = session;
        records_.back().owner = owner;
        return records_.back();
    }

    // Timers of the run, cancelled together when the connections close so that the io_context's run() ends.
    std::shared_ptr<boost::asio::steady_timer> new_timer() {
        timers_.push_back(std::make_shared<boost::asio::steady_timer>(ioc_));
        return timers_.back();
    }

    void start_session(int s) {
        auto timer = new_timer();
        timer->expires_after(std::chrono::milliseconds(static_cast<int64_t>(a_.stagger_s * 1000 * s)));
        timer->async_wait([this, s, timer](boost::system::error_code) {
            nlohmann::json start = {
                {"type", "session.start"},
                {"storyboard", storyboard()},
                {"seed", s + 1},
                {"format", "mp4"},
                // Long enough not to end by itself within the run (at most real time + lead).
                {"seconds", std::min(3600.0, a_.minutes * 60 + 120)}};
            if (a_.steps > 0)
                start["sampling"] = {{"steps", a_.steps}};
            ViewerRecord& r = new_record(s, true);
            auto owner = std::make_shared<bench::LoadViewer>(
                ioc_, host_, port_, ws_path(), start, r, 0, [this](ViewerRecord& rec) { join_viewers(rec); });
            connections_.push_back(owner);
            owners_.push_back(owner);
            owner->start();
            if (a_.prompt_every_s > 0)
                schedule_prompt(owner, s, 0);
        });
    }

    void join_viewers(const ViewerRecord& owner) {
        for (int v = 0; v < a_.viewers; ++v) {
            ViewerRecord& r = new_record(owner.session, false);
            r.slow = v < a_.slow_viewers;
            auto viewer = std::make_shared<bench::LoadViewer>(
                ioc_, host_, port_, ws_path(),
                nlohmann::json{
                    {"type", "session.resume"}, {"session_id", owner.session_id}, {"token", owner.token}},
                r, r.slow ? a_.slow_delay_s : 0);
            connections_.push_back(viewer);
            viewer->start();
        }
    }

    void schedule_prompt(const std::shared_ptr<bench::LoadViewer>& owner, int s, int k) {
        auto timer = new_timer();
        timer->expires_after(std::chrono::milliseconds(static_cast<int64_t>(a_.prompt_every_s * 1000)));
        timer->async_wait([this, owner, s, k, timer](boost::system::error_code ec) {
            if (ec || stopping_)
                return;
            owner->send_prompt("load-" + std::to_string(s) + "-" + std::to_string(k),
                               kSteering[static_cast<size_t>(k) % kSteering.size()]);
            schedule_prompt(owner, s, k + 1);
        });
    }

    void report_progress(std::shared_ptr<boost::asio::steady_timer> timer) {
        timer->expires_after(std::chrono::seconds(30));
        timer->async_wait([this, timer](boost::system::error_code ec) {
            if (ec)
                return;
            int64_t sections = 0;
            for (const auto& r : records_)
                if (r.owner)
                    sections += static_cast<int64_t>(r.segment_at.size());
            std::printf("  %6.0f s   %lld sections received by the owners, %zu connections\n",
                        seconds_between(t0_, Clock::now()), static_cast<long long>(sections),
                        connections_.size());
            std::fflush(stdout);
            report_progress(timer);
        });
    }

    // Owners ask for the stop; the worker finishes the section it is on and everyone gets session.done. The
    // connections close once every owner has its done, or when the grace time is over.
    void stop_sessions() {
        stopping_ = true;
        stopped_at_ = Clock::now();
        std::printf("  %6.0f s   stopping: session.stop sent, waiting for session.done (grace %.0f s)\n",
                    seconds_between(t0_, stopped_at_), a_.grace_s);
        std::fflush(stdout);
        for (auto& o : owners_)
            o->send({{"type", "session.stop"}});
        grace_ = new_timer();
        wait_for_done(Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(a_.grace_s * 1000)));
    }

    void wait_for_done(Clock::time_point deadline) {
        const bool all_done = std::all_of(records_.begin(), records_.end(), [](const ViewerRecord& r) {
            return !r.owner || r.closed || !r.done_reason.empty();
        });
        if (all_done || Clock::now() > deadline) {
            for (auto& c : connections_)
                c->close();
            for (auto& t : timers_)
                t->cancel();
            return;
        }
        grace_->expires_after(std::chrono::milliseconds(200));
        grace_->async_wait([this, deadline](boost::system::error_code ec) {
            if (!ec)
                wait_for_done(deadline);
        });
    }

    std::map<std::string, std::string> auth() const {
        if (a_.api_key.empty())
            return {};
        return {{"Authorization", "Bearer " + a_.api_key}};
    }

    void sample() {
        Sample s;
        s.t = seconds_between(t0_, Clock::now());
        try {
            const auto reply = bench::http_get(host_, port_, "/metrics", auth());
            if (reply.status != 200)
                throw std::runtime_error("HTTP " + std::to_string(reply.status));
            s.rss_mb = bench::prometheus_sum(reply.body, "process_resident_memory_bytes") / (1024.0 * 1024.0);
            s.queue_depth = bench::prometheus_sum(reply.body, "memoreel_queue_depth");
            s.viewers = bench::prometheus_sum(reply.body, "memoreel_viewers");
            s.sections_total = bench::prometheus_sum(reply.body, "memoreel_sections_total");
            s.dropped = bench::prometheus_sum(reply.body, "memoreel_dropped_segments");
            s.bytes_sent = bench::prometheus_sum(reply.body, "memoreel_bytes_sent_total");
        } catch (const std::exception& e) {
            std::lock_guard<std::mutex> lock(samples_mutex_);
            ++metrics_errors_;
            spdlog::warn("/metrics: {}", e.what());
            return;
        }
        std::lock_guard<std::mutex> lock(samples_mutex_);
        samples_.push_back(s);
    }

    nlohmann::json report();

    const LoadArgs& a_;
    std::string host_;
    uint16_t port_ = 0;
    boost::asio::io_context ioc_;
    Clock::time_point t0_, stopped_at_;
    std::deque<ViewerRecord> records_;  // a deque: the viewers keep references into it
    std::vector<std::shared_ptr<bench::LoadViewer>> connections_, owners_;
    std::vector<std::shared_ptr<boost::asio::steady_timer>> timers_;
    std::shared_ptr<boost::asio::steady_timer> grace_;
    bool stopping_ = false;
    std::mutex samples_mutex_;
    std::vector<Sample> samples_;
    int metrics_errors_ = 0;
};

nlohmann::json LoadRun::report() {
    const double window = seconds_between(t0_, stopping_ ? stopped_at_ : Clock::now());
    std::vector<double> ttfs, gen_ms, interval_s, applied_s, visible_s, join_s;
    int64_t owner_sections = 0, deliveries = 0, skipped = 0, bytes = 0, behind = 0;
    int64_t slow_segments = 0, slow_skipped = 0, slow_count = 0;
    std::map<std::string, int> errors;
    nlohmann::json sessions = nlohmann::json::array();
    std::printf(
        "\nper session (owner's view; generation = the server's time for the section, interval = between "
        "two segments arriving)\n");
    std::printf("%-8s %-18s %8s %8s %8s %6s %22s %22s %8s %7s %s\n", "session", "id", "TTFS s", "sections",
                "video s", "RTF", "generation ms p50/p90", "interval s p50/p90/max", "viewers", "skipped",
                "done");
    for (const auto& r : records_) {
        for (const auto& [code, n] : r.errors)
            errors[code] += n;
        deliveries += static_cast<int64_t>(r.segment_at.size());
        skipped += r.skipped_sections;
        bytes += r.bytes;
        if (r.slow) {
            // Slow viewers are there to be skipped: their intervals are their own read delay.
            ++slow_count;
            slow_segments += static_cast<int64_t>(r.segment_at.size());
            slow_skipped += r.skipped_sections;
        } else {
            for (double v : intervals(r))
                interval_s.push_back(v);
        }
        if (!r.owner) {
            if (r.got_segment)
                join_s.push_back(seconds_between(r.first_sent, r.first_segment_at));
            continue;
        }
        behind += r.behind_realtime_stats;
        owner_sections += static_cast<int64_t>(r.segment_at.size());
        gen_ms.insert(gen_ms.end(), r.section_latency_ms.begin(), r.section_latency_ms.end());
        applied_s.insert(applied_s.end(), r.prompt_applied_s.begin(), r.prompt_applied_s.end());
        visible_s.insert(visible_s.end(), r.prompt_visible_s.begin(), r.prompt_visible_s.end());
        const double first = r.got_segment ? seconds_between(r.first_sent, r.first_segment_at) : -1;
        if (first >= 0)
            ttfs.push_back(first);
        double video = 0;
        for (double d : r.chunk_seconds)
            video += d;
        int viewers = 0;
        int64_t session_skipped = 0;
        for (const auto& v : records_)
            if (v.session == r.session && !v.owner) {
                ++viewers;
                session_skipped += v.skipped_sections;
            }
        const auto iv = intervals(r);
        // The server's own view of the session, read with its token.
        nlohmann::json status;
        if (!r.session_id.empty()) {
            try {
                auto headers = auth();
                headers["X-Session-Token"] = r.token;
                const auto reply = bench::http_get(host_, port_, "/v1/sessions/" + r.session_id, headers);
                if (reply.status == 200)
                    status = nlohmann::json::parse(reply.body);
            } catch (const std::exception& e) {
                spdlog::warn("session status {}: {}", r.session_id, e.what());
            }
        }
        char gen[64], inter[64];
        std::snprintf(gen, sizeof gen, "%.0f / %.0f", percentile(r.section_latency_ms, 0.5),
                      percentile(r.section_latency_ms, 0.9));
        std::snprintf(inter, sizeof inter, "%.2f / %.2f / %.2f", percentile(iv, 0.5), percentile(iv, 0.9),
                      percentile(iv, 1.0));
        std::printf("%-8d %-18s %8.2f %8zu %8.1f %6.2f %22s %22s %8d %7lld %s\n", r.session,
                    r.session_id.c_str(), first, r.segment_at.size(), video, realtime_factor(r), gen, inter,
                    viewers, static_cast<long long>(session_skipped),
                    r.done_reason.empty() ? "-" : r.done_reason.c_str());
        sessions.push_back({{"session", r.session},
                            {"id", r.session_id},
                            {"time_to_first_section_s", first},
                            {"sections", r.segment_at.size()},
                            {"video_seconds", video},
                            {"realtime_factor", realtime_factor(r)},
                            {"generation_ms", summary(r.section_latency_ms)},
                            {"interval_s", summary(iv)},
                            {"viewers", viewers},
                            {"skipped_sections", session_skipped},
                            {"done", r.done_reason},
                            {"server_status", status}});
    }
    double video_total = 0;
    for (const auto& s : sessions)
        video_total += s["video_seconds"].get<double>();

    std::printf("\ntotals over %.0f s (from the first start to the stop)\n", window);
    std::printf("  sections/s           %.3f (%lld sections; %.1f s of video, %.3f video s per wall s)\n",
                owner_sections / window, static_cast<long long>(owner_sections), video_total,
                video_total / window);
    std::printf("  deliveries           %lld segments to %zu connections, %.1f MB\n",
                static_cast<long long>(deliveries), records_.size(), bytes / 1e6);
    std::printf("  time to first section p50 %.2f s, max %.2f s (%zu sessions)\n", percentile(ttfs, 0.5),
                percentile(ttfs, 1.0), ttfs.size());
    std::printf("  generation ms        p50 %.0f, p90 %.0f, p99 %.0f, max %.0f (%zu sections)\n",
                percentile(gen_ms, 0.5), percentile(gen_ms, 0.9), percentile(gen_ms, 0.99),
                percentile(gen_ms, 1.0), gen_ms.size());
    std::printf(
        "  interval s           p50 %.2f, p90 %.2f, p99 %.2f, max %.2f (every connection but the slow)\n",
        percentile(interval_s, 0.5), percentile(interval_s, 0.9), percentile(interval_s, 0.99),
        percentile(interval_s, 1.0));
    std::printf("  viewer join s        p50 %.2f, max %.2f (resume -> first segment, %zu viewers)\n",
                percentile(join_s, 0.5), percentile(join_s, 1.0), join_s.size());
    std::printf("  prompt -> applied s  p50 %.2f, max %.2f (%zu); -> its segment p50 %.2f, max %.2f\n",
                percentile(applied_s, 0.5), percentile(applied_s, 1.0), applied_s.size(),
                percentile(visible_s, 0.5), percentile(visible_s, 1.0));
    std::printf("  behind real time     %lld of %lld sections' stats said behind_realtime\n",
                static_cast<long long>(behind), static_cast<long long>(owner_sections));
    if (slow_count > 0)
        std::printf("  slow viewers         %lld: %lld segments received, %lld sections skipped\n",
                    static_cast<long long>(slow_count), static_cast<long long>(slow_segments),
                    static_cast<long long>(slow_skipped));
    const double server_dropped = samples_.empty() ? 0 : samples_.back().dropped;
    std::printf(
        "  dropped (skipped)    %lld sections (session.skipped at the viewers); server counter %.0f\n",
        static_cast<long long>(skipped), server_dropped);
    std::string error_text;
    int error_count = 0;
    for (const auto& [code, n] : errors) {
        error_text += " " + code + " x" + std::to_string(n);
        error_count += n;
    }
    std::printf("  errors               %d%s; /metrics scrapes failed: %d\n", error_count, error_text.c_str(),
                metrics_errors_);

    std::printf("\nserver over time (/metrics)\n%8s %10s %8s %8s %10s %8s\n", "t s", "RSS MB", "queue",
                "viewers", "sections", "dropped");
    const size_t step = std::max<size_t>(1, (samples_.size() + 23) / 24);  // at most ~24 rows
    nlohmann::json series = nlohmann::json::array();
    double rss_min = 1e30, rss_max = 0;
    for (size_t i = 0; i < samples_.size(); ++i) {
        const Sample& s = samples_[i];
        rss_min = std::min(rss_min, s.rss_mb);
        rss_max = std::max(rss_max, s.rss_mb);
        series.push_back({{"t", s.t},
                          {"rss_mb", s.rss_mb},
                          {"queue_depth", s.queue_depth},
                          {"viewers", s.viewers},
                          {"sections_total", s.sections_total},
                          {"dropped", s.dropped},
                          {"bytes_sent", s.bytes_sent}});
        if (i % step == 0 || i + 1 == samples_.size())
            std::printf("%8.0f %10.1f %8.0f %8.0f %10.0f %8.0f\n", s.t, s.rss_mb, s.queue_depth, s.viewers,
                        s.sections_total, s.dropped);
    }
    if (!samples_.empty())
        std::printf("  RSS %.1f MB at the first sample, %.1f MB at the last, max %.1f MB\n",
                    samples_.front().rss_mb, samples_.back().rss_mb, rss_max);

    return {{"settings",
             {{"sessions", a_.sessions},
              {"viewers_per_session", a_.viewers},
              {"slow_viewers_per_session", a_.slow_viewers},
              {"minutes", a_.minutes},
              {"prompt_every_s", a_.prompt_every_s},
              {"steps", a_.steps}}},
            {"window_s", window},
            {"sections", owner_sections},
            {"sections_per_s", owner_sections / window},
            {"video_seconds", video_total},
            {"video_seconds_per_s", video_total / window},
            {"time_to_first_section_s", summary(ttfs)},
            {"generation_ms", summary(gen_ms)},
            {"interval_s", summary(interval_s)},
            {"viewer_join_s", summary(join_s)},
            {"prompt_applied_s", summary(applied_s)},
            {"prompt_visible_s", summary(visible_s)},
            {"behind_realtime_stats", behind},
            {"deliveries", deliveries},
            {"bytes", bytes},
            {"skipped_sections", skipped},
            {"slow_viewers",
             {{"count", slow_count}, {"segments", slow_segments}, {"skipped_sections", slow_skipped}}},
            {"server_dropped_segments", server_dropped},
            {"errors", errors},
            {"metrics_errors", metrics_errors_},
            {"rss_mb", {{"min", samples_.empty() ? 0 : rss_min}, {"max", rss_max}}},
            {"samples", series},
            {"sessions", sessions}};
}

void run_load(const LoadArgs& a) {
    if (a.slow_viewers > a.viewers)
        throw std::invalid_argument("--slow-viewers must not exceed --viewers");
    nlohmann::json result;
    if (!a.url.empty()) {
        const size_t colon = a.url.rfind(':');
        if (colon == std::string::npos)
            throw std::invalid_argument("--url must be HOST:PORT, not '" + a.url + "'");
        std::string host = a.url.substr(0, colon);
        if (host.rfind("http://", 0) == 0)
            host = host.substr(7);
        const int port = std::stoi(a.url.substr(colon + 1));
        LoadRun run(a);
        result = run.run(host, static_cast<uint16_t>(port));
    } else {
        // A state folder of its own, so the run neither sees nor leaves sessions in the real one.
        std::string dir = a.state_dir;
        if (dir.empty()) {
            std::string tmpl = (fs::temp_directory_path() / "memoreel-load-XXXXXX").string();
            if (!mkdtemp(tmpl.data()))
                throw std::runtime_error("cannot create a temporary folder in " +
                                         fs::temp_directory_path().string());
            dir = tmpl;
        }
        fs::create_directories(dir);
        const std::string log = dir + "/server.log";
        std::vector<std::string> serve = {"--config", a.config, "--max-sessions",
                                          std::to_string(std::max(a.sessions, 1))};
        if (!a.model.empty()) {
            serve.push_back("--model");
            serve.push_back(a.model);
        }
        if (!a.api_key.empty()) {
            serve.push_back("--api-key");
            serve.push_back(a.api_key);
        }
        serve.insert(serve.end(), a.serve_args.begin(), a.serve_args.end());
        std::printf("server         memoreel serve %s (log %s)\n",
                    a.model.empty() ? a.config.c_str() : a.model.c_str(), log.c_str());
        std::fflush(stdout);
        const auto t = Clock::now();
        {
            bench::ServerProcess server(serve, torch::get_num_threads(), dir + "/state", log,
                                        a.ready_timeout_s);
            std::printf("ready          after %.1f s on port %u, %d LibTorch threads\n",
                        seconds_between(t, Clock::now()), static_cast<unsigned>(server.port()),
                        torch::get_num_threads());
            LoadRun run(a);
            result = run.run("127.0.0.1", server.port());
            server.stop();
        }
        if (!a.keep_state && a.state_dir.empty())
            fs::remove_all(dir);
    }
    if (!a.json_path.empty()) {
        std::ofstream out(a.json_path);
        out << result.dump(1) << "\n";
        if (!out)
            throw std::runtime_error("cannot write " + a.json_path);
        std::printf("\nwrote %s\n", a.json_path.c_str());
    }
}

}  // namespace

void add_bench_serve_command(CLI::App& bench) {
    auto a = std::make_shared<LoadArgs>();
    CLI::App* cmd = bench.add_subcommand(
        "serve", "Load run of the live server: N sessions with viewers for M minutes (latency, RSS, drops)");
    cmd->add_option("--url", a->url, "HOST:PORT of a running server (default: start one)");
    cmd->add_option("--config", a->config, "Server config for the started server")->capture_default_str();
    cmd->add_option("--model", a->model, "Model config for the started server (default: the config's)");
    cmd->add_option("--serve-arg", a->serve_args, "More arguments for `memoreel serve` (repeatable)");
    cmd->add_option("--state-dir", a->state_dir,
                    "State folder for the started server (default: a temporary one)");
    cmd->add_flag("--keep-state", a->keep_state, "Keep the temporary state folder (sessions, server.log)");
    cmd->add_option("--api-key", a->api_key, "API key (the started server then requires it)");
    cmd->add_option("--sessions", a->sessions, "Live sessions at once")
        ->capture_default_str()
        ->check(CLI::Range(1, 256));
    cmd->add_option("--viewers", a->viewers, "More viewers per session (join with session.resume)")
        ->capture_default_str()
        ->check(CLI::Range(0, 256));
    cmd->add_option("--slow-viewers", a->slow_viewers, "Of those, viewers that read slowly")
        ->capture_default_str()
        ->check(CLI::Range(0, 256));
    cmd->add_option("--slow-delay", a->slow_delay_s, "Seconds a slow viewer waits before each read")
        ->capture_default_str()
        ->check(CLI::Range(0.01, 600.0));
    cmd->add_option("--minutes", a->minutes, "Length of the run")
        ->capture_default_str()
        ->check(CLI::Range(0.05, 600.0));
    cmd->add_option("--stagger", a->stagger_s, "Seconds between session starts")
        ->capture_default_str()
        ->check(CLI::Range(0.0, 3600.0));
    cmd->add_option("--prompt-every", a->prompt_every_s, "Seconds between steering prompts (0: none)")
        ->capture_default_str()
        ->check(CLI::Range(0.0, 3600.0));
    cmd->add_option("--steps", a->steps, "Sampling steps (default: the model's)")->check(CLI::Range(1, 1000));
    cmd->add_option("--sample-every", a->sample_every_s, "Seconds between /metrics scrapes")
        ->capture_default_str()
        ->check(CLI::Range(0.2, 600.0));
    cmd->add_option("--grace", a->grace_s, "Seconds to wait for session.done after the stop")
        ->capture_default_str()
        ->check(CLI::Range(1.0, 3600.0));
    cmd->add_option("--ready-timeout", a->ready_timeout_s, "Seconds the started server may take to load")
        ->capture_default_str();
    cmd->add_option("--json", a->json_path, "Write every figure as JSON");
    cmd->callback([a] { run_load(*a); });
}

}  // namespace memoreel
