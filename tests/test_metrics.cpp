// The Prometheus registry (server/metrics.h): the text exposition format 0.0.4 exactly, label escaping,
// cumulative histogram buckets, gauge families replaced whole, and misuse refused.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <thread>
#include <vector>

#include "server/metrics.h"

using memoreel::Metrics;

TEST_SUITE("metrics") {
    TEST_CASE("counters with and without labels") {
        Metrics m;
        m.counter("memoreel_sections_total", "Sections generated.");
        m.counter("memoreel_bytes_sent_total", "Bytes sent to viewers.", {"kind", "format"});
        // Before anything happened: the unlabelled series at 0, the labelled family empty.
        CHECK(m.render() ==
              "# HELP memoreel_bytes_sent_total Bytes sent to viewers.\n"
              "# TYPE memoreel_bytes_sent_total counter\n"
              "# HELP memoreel_sections_total Sections generated.\n"
              "# TYPE memoreel_sections_total counter\n"
              "memoreel_sections_total 0\n");
        m.add("memoreel_sections_total");
        m.add("memoreel_sections_total", 2);
        m.add("memoreel_bytes_sent_total", 1000, {{"kind", "live"}, {"format", "webm"}});
        m.add("memoreel_bytes_sent_total", 234, {{"format", "webm"}, {"kind", "live"}});
        m.add("memoreel_bytes_sent_total", 1.5e12, {{"kind", "file"}, {"format", "mp4"}});
        CHECK(m.render() ==
              "# HELP memoreel_bytes_sent_total Bytes sent to viewers.\n"
              "# TYPE memoreel_bytes_sent_total counter\n"
              "memoreel_bytes_sent_total{format=\"mp4\",kind=\"file\"} 1500000000000\n"
              "memoreel_bytes_sent_total{format=\"webm\",kind=\"live\"} 1234\n"
              "# HELP memoreel_sections_total Sections generated.\n"
              "# TYPE memoreel_sections_total counter\n"
              "memoreel_sections_total 3\n");
    }

    TEST_CASE("label values and help text are escaped") {
        Metrics m;
        m.gauge("memoreel_realtime_factor", "Video seconds per wall second\\last sections\nper session.",
                {"session"});
        m.set("memoreel_realtime_factor", 1.25, {{"session", "a\\b \"quoted\"\nnext"}});
        CHECK(
            m.render() ==
            "# HELP memoreel_realtime_factor Video seconds per wall second\\\\last sections\\nper session.\n"
            "# TYPE memoreel_realtime_factor gauge\n"
            "memoreel_realtime_factor{session=\"a\\\\b \\\"quoted\\\"\\nnext\"} 1.25\n");
    }

    TEST_CASE("histogram buckets are cumulative with +Inf, sum and count") {
        Metrics m;
        m.histogram("memoreel_section_latency_seconds", "Wall time per section.", {0.5, 1, 2});
        CHECK(m.render() ==
              "# HELP memoreel_section_latency_seconds Wall time per section.\n"
              "# TYPE memoreel_section_latency_seconds histogram\n"
              "memoreel_section_latency_seconds_bucket{le=\"0.5\"} 0\n"
              "memoreel_section_latency_seconds_bucket{le=\"1\"} 0\n"
              "memoreel_section_latency_seconds_bucket{le=\"2\"} 0\n"
              "memoreel_section_latency_seconds_bucket{le=\"+Inf\"} 0\n"
              "memoreel_section_latency_seconds_sum 0\n"
              "memoreel_section_latency_seconds_count 0\n");
        for (const double v : {0.25, 0.5, 0.75, 1.0, 1.5, 4.0})  // 0.5 and 1 fall in their own bucket (le)
            m.observe("memoreel_section_latency_seconds", v);
        CHECK(m.render() ==
              "# HELP memoreel_section_latency_seconds Wall time per section.\n"
              "# TYPE memoreel_section_latency_seconds histogram\n"
              "memoreel_section_latency_seconds_bucket{le=\"0.5\"} 2\n"
              "memoreel_section_latency_seconds_bucket{le=\"1\"} 4\n"
              "memoreel_section_latency_seconds_bucket{le=\"2\"} 5\n"
              "memoreel_section_latency_seconds_bucket{le=\"+Inf\"} 6\n"
              "memoreel_section_latency_seconds_sum 8\n"
              "memoreel_section_latency_seconds_count 6\n");

        Metrics labelled;
        labelled.histogram("lat", "h", {0.05}, {"model"});
        labelled.observe("lat", 0.01, {{"model", "tiny"}});
        labelled.observe("lat", 0.1, {{"model", "tiny"}});
        CHECK(labelled.render() ==
              "# HELP lat h\n"
              "# TYPE lat histogram\n"
              "lat_bucket{model=\"tiny\",le=\"0.05\"} 1\n"
              "lat_bucket{model=\"tiny\",le=\"+Inf\"} 2\n"
              "lat_sum{model=\"tiny\"} 0.11\n"
              "lat_count{model=\"tiny\"} 2\n");

        const auto buckets = Metrics::latency_buckets();
        CHECK(buckets.front() == 0.05);
        CHECK(buckets.back() == 60);
        CHECK(std::is_sorted(buckets.begin(), buckets.end()));
    }

    TEST_CASE("a gauge family is replaced whole") {
        Metrics m;
        m.gauge("memoreel_sessions", "Sessions by status.", {"status"});
        m.gauge("memoreel_queue_depth", "Sections waiting for the worker.");
        m.set_family("memoreel_sessions", {{{{"status", "running"}}, 2}, {{{"status", "queued"}}, 1}});
        m.set("memoreel_queue_depth", 3);
        CHECK(m.render() ==
              "# HELP memoreel_queue_depth Sections waiting for the worker.\n"
              "# TYPE memoreel_queue_depth gauge\n"
              "memoreel_queue_depth 3\n"
              "# HELP memoreel_sessions Sessions by status.\n"
              "# TYPE memoreel_sessions gauge\n"
              "memoreel_sessions{status=\"queued\"} 1\n"
              "memoreel_sessions{status=\"running\"} 2\n");
        // The next scrape: queued is gone, stopped appeared.
        std::map<Metrics::Labels, double> by_status;
        by_status[{{"status", "running"}}] += 1;
        by_status[{{"status", "stopped"}}] += 1;
        m.set_family("memoreel_sessions", by_status);
        m.add("memoreel_queue_depth", -1);
        CHECK(m.render() ==
              "# HELP memoreel_queue_depth Sections waiting for the worker.\n"
              "# TYPE memoreel_queue_depth gauge\n"
              "memoreel_queue_depth 2\n"
              "# HELP memoreel_sessions Sessions by status.\n"
              "# TYPE memoreel_sessions gauge\n"
              "memoreel_sessions{status=\"running\"} 1\n"
              "memoreel_sessions{status=\"stopped\"} 1\n");
        // A bad label set leaves the family as it was.
        CHECK_THROWS_AS(
            m.set_family("memoreel_sessions", {{{{"status", "running"}}, 5}, {{{"state", "x"}}, 1}}),
            std::invalid_argument);
        CHECK(m.render().find("memoreel_sessions{status=\"running\"} 1\n") != std::string::npos);
        m.set_family("memoreel_sessions", {});
        CHECK(m.render().find("memoreel_sessions{") == std::string::npos);

        m.gauge("g", "special values");
        m.set("g", std::numeric_limits<double>::infinity());
        CHECK(m.render().find("g +Inf\n") != std::string::npos);
        m.set("g", -0.125);
        CHECK(m.render().find("g -0.125\n") != std::string::npos);
    }

    TEST_CASE("misuse is refused") {
        Metrics m;
        m.counter("c_total", "a counter", {"a"});
        m.counter("c_total", "a counter", {"a"});  // the same declaration again is fine
        CHECK_THROWS_AS(m.counter("c_total", "other help", {"a"}), std::logic_error);
        CHECK_THROWS_AS(m.gauge("c_total", "a counter", {"a"}), std::logic_error);
        CHECK_THROWS_AS(m.counter("bad name", "x"), std::invalid_argument);
        CHECK_THROWS_AS(m.counter("x", "x", {"__reserved"}), std::invalid_argument);
        CHECK_THROWS_AS(m.counter("x", "x", {"a", "a"}), std::invalid_argument);
        CHECK_THROWS_AS(m.histogram("h", "x", {1}, {"le"}), std::invalid_argument);
        CHECK_THROWS_AS(m.histogram("h", "x", {1, 1}), std::invalid_argument);
        CHECK_THROWS_AS(m.add("nope"), std::logic_error);
        CHECK_THROWS_AS(m.set("c_total", 1, {{"a", "x"}}), std::logic_error);
        CHECK_THROWS_AS(m.observe("c_total", 1, {{"a", "x"}}), std::logic_error);
        CHECK_THROWS_AS(m.add("c_total", -1, {{"a", "x"}}), std::invalid_argument);
        CHECK_THROWS_AS(m.add("c_total", 1), std::invalid_argument);                            // a missing
        CHECK_THROWS_AS(m.add("c_total", 1, {{"a", "x"}, {"b", "y"}}), std::invalid_argument);  // b extra
        CHECK_THROWS_AS(m.add("c_total", 1, {{"b", "x"}}), std::invalid_argument);
        m.histogram("h", "x", {1, std::numeric_limits<double>::infinity()});  // +Inf given: taken as implied
        CHECK_THROWS_AS(m.observe("h", std::nan("")), std::invalid_argument);
        CHECK(m.render().find("# TYPE c_total counter\n# HELP h x\n") != std::string::npos);  // nothing added
    }

    TEST_CASE("updates from several threads all count") {
        Metrics m;
        m.counter("n_total", "n", {"thread"});
        m.histogram("h", "h", Metrics::latency_buckets());
        std::vector<std::thread> threads;
        for (int t = 0; t < 4; ++t)
            threads.emplace_back([&m, t] {
                for (int i = 0; i < 1000; ++i) {
                    m.add("n_total", 1, {{"thread", std::to_string(t % 2)}});
                    m.observe("h", 0.5);
                    if (i % 100 == 0)
                        m.render();
                }
            });
        for (auto& th : threads)
            th.join();
        const auto text = m.render();
        CHECK(text.find("n_total{thread=\"0\"} 2000\n") != std::string::npos);
        CHECK(text.find("n_total{thread=\"1\"} 2000\n") != std::string::npos);
        CHECK(text.find("h_count 4000\n") != std::string::npos);
        CHECK(text.find("h_bucket{le=\"0.5\"} 4000\n") != std::string::npos);
        CHECK(text.find("h_bucket{le=\"0.25\"} 0\n") != std::string::npos);
    }
}
