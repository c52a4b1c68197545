// The server's /metrics (docs/api.md, Operations): a small Prometheus registry rendered in the text
// exposition format 0.0.4. Counters, gauges and fixed-bucket histograms, each a family of series told apart
// by labels. Torch-free and thread-safe (one mutex: updates are a few per section, scrapes a few per minute).
//
// Families are declared once with their label names; updates name the family and give every declared label.
// A family without labels shows its one series from the start (at 0), so a scrape before the first section
// already has memoreel_sections_total 0. Using an undeclared name or the wrong kind of update is a
// programming error (std::logic_error); bad label sets or values are std::invalid_argument.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace memoreel {

class Metrics {
  public:
    using Labels = std::map<std::string, std::string>;  // label name -> value

    // The Content-Type of render()'s text.
    static constexpr const char* kContentType = "text/plain; version=0.0.4; charset=utf-8";
    // Upper bounds for section latencies, 0.05 s .. 60 s (a section is 1 s of video; real time is below 1).
    static std::vector<double> latency_buckets();

    // Declarations. Declaring the same family again the same way is a no-op; another way is std::logic_error.
    void counter(const std::string& name, const std::string& help, std::vector<std::string> label_names = {});
    void gauge(const std::string& name, const std::string& help, std::vector<std::string> label_names = {});
    // `buckets`: finite, strictly increasing upper bounds; +Inf is added.
    void histogram(const std::string& name,
                   const std::string& help,
                   std::vector<double> buckets,
                   std::vector<std::string> label_names = {});

    // Counters (value >= 0: they only go up) and gauges.
    void add(const std::string& name, double value = 1, const Labels& labels = {});
    // Gauges.
    void set(const std::string& name, double value, const Labels& labels = {});
    // Gauges whose series are recomputed on each scrape (sessions by status, realtime factor per session):
    // replaces every series of the family at once, so a series that is gone disappears and a concurrent
    // render() sees either the old family or the new one.
    void set_family(const std::string& name, const std::map<Labels, double>& series);
    // Histograms.
    void observe(const std::string& name, double value, const Labels& labels = {});

    std::string render() const;

  private:
    enum class Type { counter, gauge, histogram };
    struct Series {
        double value = 0;                   // counter, gauge
        std::vector<uint64_t> bucket_hits;  // histogram: observations per bucket (not cumulative), +Inf last
        double sum = 0;
        uint64_t count = 0;
    };
    struct Family {
        Type type = Type::counter;
        std::string help;
        std::vector<std::string> label_names;  // sorted, as Labels iterates
        std::vector<double> buckets;           // histogram upper bounds without +Inf
        std::map<std::string, Series> series;  // by rendered labels: a="x",b="y"
    };

    static const char* type_name(Type type);
    void declare(const std::string& name, Family family);
    Family& family(const std::string& name, Type type, const char* update);
    static std::string series_key(const std::string& name, const Family& family, const Labels& labels);
    static Series new_series(const Family& family);

    mutable std::mutex mutex_;
    std::map<std::string, Family> families_;  // by name: render() lists them in name order
};

}  // namespace memoreel
