#include "server/event_ledger.h"

#include <algorithm>
#include <cmath>

namespace memoreel {

double SectionClock::start(int64_t section) const {
    if (section <= 0)
        return 0.0;
    return static_cast<double>(first_frames + (section - 1) * later_frames) / fps;
}

int64_t SectionClock::section_at_or_after(double t) const {
    if (t <= 0)
        return 0;
    // Frames are exact integers: compare in frames, with a tolerance for times typed in decimal.
    const double frame = t * fps - 1e-6;
    if (frame <= 0)
        return 0;
    if (frame <= static_cast<double>(first_frames))
        return 1;
    return 1 + static_cast<int64_t>(std::ceil((frame - static_cast<double>(first_frames)) /
                                              static_cast<double>(later_frames)));
}

nlohmann::json PromptEvent::to_json() const {
    nlohmann::json j = {
        {"event_id", event_id},
        {"prompt", prompt},
        {"mode", mode},
        {"now", now},
        {"status", status},
        {"payload", payload},
        {"time", time < 0 ? nlohmann::json() : nlohmann::json(time)},
        {"section", section < 0 ? nlohmann::json() : nlohmann::json(section)},
        {"superseded_by", superseded_by.empty() ? nlohmann::json() : nlohmann::json(superseded_by)}};
    return j;
}

PromptEvent PromptEvent::from_json(const nlohmann::json& j) {
    PromptEvent e;
    e.event_id = j.at("event_id").get<std::string>();
    e.prompt = j.at("prompt").get<std::string>();
    e.mode = j.at("mode").get<std::string>();
    e.now = j.at("now").get<bool>();
    e.status = j.at("status").get<std::string>();
    e.payload = j.at("payload");
    e.time = j.at("time").is_null() ? -1.0 : j.at("time").get<double>();
    e.section = j.at("section").is_null() ? -1 : j.at("section").get<int64_t>();
    e.superseded_by = j.at("superseded_by").is_null() ? "" : j.at("superseded_by").get<std::string>();
    return e;
}

EventLedger::EventLedger(Storyboard storyboard, SectionClock clock, size_t max_prompts)
    : storyboard_(std::move(storyboard)), clock_(clock), max_prompts_(max_prompts) {}

// Puts a timed event on the storyboard. The past cannot change: a time before the next section's start means
// that start. "replace" rewrites the pending entry in force at that time; when that entry is already playing
// (it started earlier), the new prompt starts at the event's time instead.
bool EventLedger::has_entry_at(double time) const {
    const int64_t i = storyboard_.index_in_force(time);
    return i >= 0 && storyboard_.entries()[static_cast<size_t>(i)].time == time;
}

void EventLedger::place(PromptEvent& e, double time) {
    const double earliest = clock_.start(begun_);
    time = std::max(time, earliest);
    if (e.mode == "replace") {
        const int64_t i = storyboard_.index_in_force(time);
        if (i >= 0 && storyboard_.entries()[static_cast<size_t>(i)].time >= earliest)
            time = storyboard_.entries()[static_cast<size_t>(i)].time;
    }
    // A "now" event waiting for the next section holds a place for its entry (unless one exists there), so
    // that placing it when the section begins cannot fail.
    const bool reserved =
        !waiting_now_.empty() && e.event_id != waiting_now_ && time != earliest && !has_entry_at(earliest);
    if (!has_entry_at(time) && storyboard_.entries().size() + (reserved ? 1 : 0) >= max_prompts_)
        throw protocol::ProtocolError(
            "bad_storyboard",
            "the storyboard already has " + std::to_string(max_prompts_) + " prompts, the limit", e.event_id);
    // An event still waiting at the same time is superseded by this one.
    if (const auto it = entry_event_.find(time); it != entry_event_.end())
        supersede(it->second, e.event_id);
    storyboard_.set({time, e.prompt});
    entry_event_[time] = e.event_id;
    e.time = time;
    e.section = clock_.section_at_or_after(time);
}

EventLedger::Submitted EventLedger::submit(const protocol::Interaction& in) {
    if (const auto it = events_.find(in.event_id); it != events_.end()) {
        if (it->second.payload != in.payload())
            throw protocol::ProtocolError(
                "event_conflict",
                "event_id '" + in.event_id +
                    "' was already used with another payload: " + it->second.payload.dump(),
                in.event_id);
        return {it->second, true};
    }
    // Every event is kept (idempotent retries answer from it): a bound keeps a session's state finite.
    if (events_.size() >= 8 * max_prompts_)
        throw protocol::ProtocolError(
            "bad_storyboard",
            "this session has taken " + std::to_string(events_.size()) + " prompt events, its limit",
            in.event_id);
    // A "now" event is placed when the next section begins; refuse it here, not then, when the storyboard
    // has no room left.
    if (!in.time.has_value() && waiting_now_.empty() && !has_entry_at(clock_.start(begun_)) &&
        storyboard_.entries().size() >= max_prompts_)
        throw protocol::ProtocolError("bad_storyboard",
                                      "the storyboard is full (" + std::to_string(max_prompts_) + " prompts)",
                                      in.event_id);
    PromptEvent e;
    e.event_id = in.event_id;
    e.payload = in.payload();
    e.prompt = in.prompt;
    e.mode = in.mode;
    e.status = "queued";
    e.now = !in.time.has_value();
    superseded_.clear();
    if (e.now) {
        // Waits for the next section boundary, where it applies unless a newer "now" event arrives first.
        e.section = begun_;
        if (!waiting_now_.empty())
            supersede(waiting_now_, e.event_id);
        waiting_now_ = e.event_id;
    } else {
        place(e, *in.time);
    }
    events_[e.event_id] = e;
    Submitted out{e, false, {}};
    out.superseded.swap(superseded_);
    return out;
}

void EventLedger::supersede(const std::string& id, const std::string& by) {
    auto& older = events_.at(id);
    if (older.status != "queued")
        return;
    older.status = "superseded";
    older.superseded_by = by;
    superseded_.push_back(older);
}

EventLedger::SectionStart EventLedger::begin_section() {
    SectionStart out;
    out.section = begun_;
    out.start_seconds = clock_.start(begun_);
    superseded_.clear();
    if (!waiting_now_.empty()) {
        place(events_.at(waiting_now_), out.start_seconds);
        waiting_now_.clear();
    }
    const int64_t idx = storyboard_.index_in_force(out.start_seconds);
    const StoryboardEntry& entry = storyboard_.entries().at(static_cast<size_t>(std::max<int64_t>(idx, 0)));
    out.prompt = entry.prompt;
    const auto setter = entry_event_.find(entry.time);
    const std::string active = setter == entry_event_.end() ? std::string() : setter->second;
    if (!active.empty())
        out.active.push_back(active);
    for (auto& [id, e] : events_) {
        if (e.status != "queued" || e.time < 0)
            continue;
        if (id == active) {
            e.status = "applied";
            e.section = out.section;
            out.applied.push_back(e);
        } else if (e.time <= out.start_seconds) {
            // Its time has come but another entry is in force (one placed later at a later time).
            supersede(id, active);
        }
    }
    out.superseded.swap(superseded_);
    ++begun_;
    return out;
}

nlohmann::json EventLedger::timeline() const {
    nlohmann::json rows = nlohmann::json::array();
    const int64_t current = std::max<int64_t>(0, begun_ - 1);
    const double now = clock_.start(current);
    const int64_t in_force = begun_ > 0 ? storyboard_.index_in_force(now) : -1;
    for (size_t i = 0; i < storyboard_.entries().size(); ++i) {
        const auto& entry = storyboard_.entries()[i];
        nlohmann::json row = {{"time", entry.time}, {"prompt", entry.prompt}};
        const char* state = "pending";
        if (static_cast<int64_t>(i) == in_force)
            state = "current";
        else if (begun_ > 0 && static_cast<int64_t>(i) < in_force)
            state = "past";
        row["state"] = state;
        if (const auto it = entry_event_.find(entry.time); it != entry_event_.end()) {
            row["event_id"] = it->second;
            const auto& e = events_.at(it->second);
            if (e.status == "applied")
                row["applied_section"] = e.section;
        } else if (std::string(state) != "pending") {
            row["applied_section"] = clock_.section_at_or_after(entry.time);
        }
        rows.push_back(row);
    }
    if (!waiting_now_.empty())
        rows.push_back({{"time", nullptr},
                        {"prompt", events_.at(waiting_now_).prompt},
                        {"state", "pending"},
                        {"event_id", waiting_now_}});
    return rows;
}

nlohmann::json EventLedger::events_json() const {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& [id, e] : events_) {
        nlohmann::json j = {
            {"event_id", id},
            {"status", e.status},
            {"prompt", e.prompt},
            {"time", e.time < 0 ? nlohmann::json() : nlohmann::json(e.time)},
            {"section", e.section < 0 ? nlohmann::json() : nlohmann::json(e.section)},
            {"superseded_by", e.superseded_by.empty() ? nlohmann::json() : nlohmann::json(e.superseded_by)}};
        out.push_back(j);
    }
    return out;
}

nlohmann::json EventLedger::to_json() const {
    nlohmann::json events = nlohmann::json::array();
    for (const auto& [id, e] : events_)
        events.push_back(e.to_json());
    nlohmann::json setters = nlohmann::json::array();
    for (const auto& [t, id] : entry_event_)
        setters.push_back({t, id});
    return {{"storyboard", storyboard_.to_json()},
            {"begun", begun_},
            {"events", events},
            {"waiting_now", waiting_now_},
            {"entry_event", setters}};
}

EventLedger EventLedger::from_json(const nlohmann::json& j, const SectionClock& clock, size_t max_prompts) {
    EventLedger l(Storyboard::from_json(j.at("storyboard"), "session ledger"), clock, max_prompts);
    l.begun_ = j.at("begun").get<int64_t>();
    for (const auto& e : j.at("events")) {
        PromptEvent ev = PromptEvent::from_json(e);
        l.events_[ev.event_id] = ev;
    }
    l.waiting_now_ = j.at("waiting_now").get<std::string>();
    for (const auto& s : j.at("entry_event"))
        l.entry_event_[s.at(0).get<double>()] = s.at(1).get<std::string>();
    return l;
}

}  // namespace memoreel
