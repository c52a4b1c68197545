#include "server/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <stdexcept>

namespace memoreel {

namespace {

bool valid_name(const std::string& name, bool colons) {
    if (name.empty())
        return false;
    for (size_t i = 0; i < name.size(); ++i) {
        const char c = name[i];
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                        (colons && c == ':') || (i > 0 && c >= '0' && c <= '9');
        if (!ok)
            return false;
    }
    return true;
}

// Prometheus reads Go's float syntax: NaN, +Inf, -Inf, and decimals. std::to_chars gives the shortest text
// that reads back as the same double ("0.05", "1e-07"), where printf's %g would round.
std::string number(double v) {
    if (std::isnan(v))
        return "NaN";
    if (std::isinf(v))
        return v > 0 ? "+Inf" : "-Inf";
    char text[32];
    // Whole numbers (counts, bytes) in full: "1500000000000" reads better than "1.5e+12".
    const bool whole = v == std::floor(v) && std::fabs(v) < 1e15;
    const auto end = whole ? std::to_chars(text, text + sizeof(text), v, std::chars_format::fixed).ptr
                           : std::to_chars(text, text + sizeof(text), v).ptr;
    return std::string(text, end);
}

std::string number(uint64_t v) {
    return std::to_string(v);
}

std::string escape_help(const std::string& s) {
    std::string out;
    for (const char c : s) {
        if (c == '\\')
            out += "\\\\";
        else if (c == '\n')
            out += "\\n";
        else
            out += c;
    }
    return out;
}

std::string escape_label_value(const std::string& s) {
    std::string out;
    for (const char c : s) {
        if (c == '\\')
            out += "\\\\";
        else if (c == '"')
            out += "\\\"";
        else if (c == '\n')
            out += "\\n";
        else
            out += c;
    }
    return out;
}

std::string braces(const std::string& key, const std::string& extra = {}) {
    if (key.empty() && extra.empty())
        return {};
    if (key.empty() || extra.empty())
        return "{" + key + extra + "}";
    return "{" + key + "," + extra + "}";
}

}  // namespace

const char* Metrics::type_name(Type type) {
    return type == Type::counter ? "counter" : type == Type::gauge ? "gauge" : "histogram";
}

std::vector<double> Metrics::latency_buckets() {
    return {0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60};
}

void Metrics::counter(const std::string& name,
                      const std::string& help,
                      std::vector<std::string> label_names) {
    declare(name, Family{Type::counter, help, std::move(label_names), {}, {}});
}

void Metrics::gauge(const std::string& name, const std::string& help, std::vector<std::string> label_names) {
    declare(name, Family{Type::gauge, help, std::move(label_names), {}, {}});
}

void Metrics::histogram(const std::string& name,
                        const std::string& help,
                        std::vector<double> buckets,
                        std::vector<std::string> label_names) {
    if (!buckets.empty() && std::isinf(buckets.back()) && buckets.back() > 0)
        buckets.pop_back();  // +Inf is always there
    for (size_t i = 0; i < buckets.size(); ++i)
        if (!std::isfinite(buckets[i]) || (i > 0 && buckets[i] <= buckets[i - 1]))
            throw std::invalid_argument("metrics: histogram " + name +
                                        ": buckets must be finite and strictly increasing");
    declare(name, Family{Type::histogram, help, std::move(label_names), std::move(buckets), {}});
}

void Metrics::declare(const std::string& name, Family family) {
    if (!valid_name(name, true))
        throw std::invalid_argument("metrics: '" + name + "' is not a valid metric name");
    std::sort(family.label_names.begin(), family.label_names.end());
    for (size_t i = 0; i < family.label_names.size(); ++i) {
        const std::string& label = family.label_names[i];
        if (!valid_name(label, false) || label.compare(0, 2, "__") == 0)
            throw std::invalid_argument("metrics: " + name + ": '" + label + "' is not a valid label name");
        if (i > 0 && label == family.label_names[i - 1])
            throw std::invalid_argument("metrics: " + name + ": label '" + label + "' given twice");
        if (family.type == Type::histogram && label == "le")
            throw std::invalid_argument("metrics: " + name + ": 'le' is the histogram's own label");
    }
    if (family.label_names.empty())
        family.series.emplace("", new_series(family));

    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = families_.find(name);
    if (it == families_.end()) {
        families_.emplace(name, std::move(family));
        return;
    }
    const Family& old = it->second;
    if (old.type != family.type || old.help != family.help || old.label_names != family.label_names ||
        old.buckets != family.buckets)
        throw std::logic_error("metrics: " + name + " is declared twice, differently");
}

Metrics::Family& Metrics::family(const std::string& name, Type type, const char* update) {
    const auto it = families_.find(name);
    if (it == families_.end())
        throw std::logic_error(std::string("metrics: ") + update + " of undeclared metric " + name);
    // add() serves counters and gauges alike.
    if (it->second.type != type && !(type == Type::counter && it->second.type == Type::gauge))
        throw std::logic_error(std::string("metrics: ") + update + " of " + name + ", a " +
                               type_name(it->second.type));
    return it->second;
}

std::string Metrics::series_key(const std::string& name, const Family& family, const Labels& labels) {
    std::string key;
    auto expected = family.label_names.begin();
    for (const auto& [label, value] : labels) {
        if (expected == family.label_names.end() || *expected != label)
            break;
        if (!key.empty())
            key += ',';
        key += label + "=\"" + escape_label_value(value) + "\"";
        ++expected;
    }
    if (labels.size() != family.label_names.size() || expected != family.label_names.end()) {
        std::string names;
        for (const auto& label : family.label_names)
            names += (names.empty() ? "" : ", ") + label;
        throw std::invalid_argument("metrics: " + name + " takes the labels {" + names + "}");
    }
    return key;
}

Metrics::Series Metrics::new_series(const Family& family) {
    Series s;
    if (family.type == Type::histogram)
        s.bucket_hits.assign(family.buckets.size() + 1, 0);
    return s;
}

void Metrics::add(const std::string& name, double value, const Labels& labels) {
    std::lock_guard<std::mutex> lock(mutex_);
    Family& f = family(name, Type::counter, "add");
    if (f.type == Type::counter && !(value >= 0))  // also refuses NaN
        throw std::invalid_argument("metrics: counter " + name + " only goes up, not by " + number(value));
    const std::string key = series_key(name, f, labels);
    auto it = f.series.find(key);
    if (it == f.series.end())
        it = f.series.emplace(key, new_series(f)).first;
    it->second.value += value;
}

void Metrics::set(const std::string& name, double value, const Labels& labels) {
    std::lock_guard<std::mutex> lock(mutex_);
    Family& f = family(name, Type::gauge, "set");
    const std::string key = series_key(name, f, labels);
    f.series[key].value = value;
}

void Metrics::set_family(const std::string& name, const std::map<Labels, double>& series) {
    std::lock_guard<std::mutex> lock(mutex_);
    Family& f = family(name, Type::gauge, "set_family");
    std::map<std::string, Series> fresh;
    for (const auto& [labels, value] : series)
        fresh[series_key(name, f, labels)].value = value;
    f.series = std::move(fresh);  // only once every label set was accepted
}

void Metrics::observe(const std::string& name, double value, const Labels& labels) {
    if (std::isnan(value))
        throw std::invalid_argument("metrics: histogram " + name + " observed NaN");
    std::lock_guard<std::mutex> lock(mutex_);
    Family& f = family(name, Type::histogram, "observe");
    const std::string key = series_key(name, f, labels);
    auto it = f.series.find(key);
    if (it == f.series.end())
        it = f.series.emplace(key, new_series(f)).first;
    Series& s = it->second;
    // The first bucket whose upper bound holds the value (le: less or equal); past the last, +Inf.
    const size_t bucket = std::lower_bound(f.buckets.begin(), f.buckets.end(), value) - f.buckets.begin();
    ++s.bucket_hits[bucket];
    s.sum += value;
    ++s.count;
}

std::string Metrics::render() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::string out;
    for (const auto& [name, f] : families_) {
        out += "# HELP " + name + " " + escape_help(f.help) + "\n";
        out += "# TYPE " + name + " " + type_name(f.type) + "\n";
        for (const auto& [key, s] : f.series) {
            if (f.type != Type::histogram) {
                out += name + braces(key) + " " + number(s.value) + "\n";
                continue;
            }
            uint64_t cumulative = 0;
            for (size_t i = 0; i < s.bucket_hits.size(); ++i) {
                cumulative += s.bucket_hits[i];
                const std::string le = i < f.buckets.size() ? number(f.buckets[i]) : "+Inf";
                out += name + "_bucket" + braces(key, "le=\"" + le + "\"") + " " + number(cumulative) + "\n";
            }
            out += name + "_sum" + braces(key) + " " + number(s.sum) + "\n";
            out += name + "_count" + braces(key) + " " + number(s.count) + "\n";
        }
    }
    return out;
}

}  // namespace memoreel
