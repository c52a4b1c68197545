#include "server/protocol.h"

#include <cmath>
#include <set>

namespace memoreel::protocol {

namespace {

[[noreturn]] void bad_field(const std::string& field,
                            const std::string& what,
                            const std::string& event_id = {}) {
    throw ProtocolError("bad_field", "field '" + field + "': " + what, event_id);
}

void only_fields(const nlohmann::json& j, const std::string& where, const std::set<std::string>& allowed) {
    for (auto it = j.begin(); it != j.end(); ++it)
        if (!allowed.count(it.key()))
            bad_field(where.empty() ? it.key() : where + "." + it.key(), "unknown field");
}

const nlohmann::json* field(const nlohmann::json& j, const char* name) {
    const auto it = j.find(name);
    return it == j.end() || it->is_null() ? nullptr : &*it;
}

double finite_number(const nlohmann::json& v, const std::string& name) {
    if (!v.is_number())
        bad_field(name, "must be a number");
    const double d = v.get<double>();
    if (!std::isfinite(d))
        bad_field(name, "must be finite");
    return d;
}

int64_t integer(const nlohmann::json& v, const std::string& name, int64_t lo, int64_t hi) {
    if (!v.is_number_integer())
        bad_field(name, "must be an integer");
    const auto i = v.get<int64_t>();
    if (i < lo || i > hi)
        bad_field(name, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return i;
}

std::string string_field(const nlohmann::json& v, const std::string& name, size_t max_bytes) {
    if (!v.is_string())
        bad_field(name, "must be a string");
    const std::string s = v.get<std::string>();
    if (s.size() > max_bytes)
        bad_field(name, "longer than " + std::to_string(max_bytes) + " bytes");
    return s;
}

void check_prompt(const std::string& prompt, const Limits& limits, const std::string& event_id = {}) {
    if (prompt.size() > limits.max_prompt_bytes)
        throw ProtocolError("prompt_too_long",
                            "a prompt is " + std::to_string(prompt.size()) + " bytes; the limit is " +
                                std::to_string(limits.max_prompt_bytes),
                            event_id);
}

StartRequest parse_start(const nlohmann::json& j, const Limits& limits) {
    only_fields(j, "",
                {"type", "storyboard", "prompt", "seconds", "seed", "format", "width", "height", "memory",
                 "sampling"});
    StartRequest r;
    if (const auto* s = field(j, "storyboard")) {
        if (field(j, "prompt"))
            bad_field("prompt", "give a storyboard or a prompt, not both");
        r.storyboard = parse_storyboard(*s, limits);
    } else if (const auto* p = field(j, "prompt")) {
        // A single prompt is a one-entry storyboard (vLLM-Omni's start message carries one prompt).
        const std::string prompt = string_field(*p, "prompt", limits.max_message_bytes);
        check_prompt(prompt, limits);
        if (prompt.empty())
            bad_field("prompt", "must not be empty");
        r.storyboard = Storyboard({{0.0, prompt}});
    } else {
        throw ProtocolError("bad_storyboard", "session.start needs a storyboard (or a prompt)");
    }
    if (const auto* v = field(j, "seconds")) {
        const double s = finite_number(*v, "seconds");
        if (!(s > 0 && s <= limits.max_seconds))
            bad_field("seconds",
                      "must be in (0, " + std::to_string(static_cast<int64_t>(limits.max_seconds)) + "]");
        r.seconds = s;
    }
    if (const auto* v = field(j, "seed"))
        r.seed = static_cast<uint64_t>(integer(*v, "seed", 0, (int64_t(1) << 53)));
    if (const auto* v = field(j, "format")) {
        r.format = string_field(*v, "format", 16);
        if (r.format != "mp4" && r.format != "webm")
            bad_field("format", "must be mp4 or webm");
    }
    if (const auto* v = field(j, "width"))
        r.width = integer(*v, "width", 16, 4096);
    if (const auto* v = field(j, "height"))
        r.height = integer(*v, "height", 16, 4096);
    if (const auto* v = field(j, "memory"))
        r.memory = parse_memory_settings(*v);
    if (const auto* v = field(j, "sampling"))
        r.sampling = parse_sampling_settings(*v);
    return r;
}

ResumeRequest parse_resume(const nlohmann::json& j) {
    only_fields(j, "", {"type", "session_id", "token", "from_section"});
    ResumeRequest r;
    const auto* id = field(j, "session_id");
    const auto* token = field(j, "token");
    if (!id)
        bad_field("session_id", "required");
    if (!token)
        bad_field("token", "required");
    r.session_id = string_field(*id, "session_id", 128);
    r.token = string_field(*token, "token", 256);
    if (const auto* v = field(j, "from_section"))
        r.from_section = integer(*v, "from_section", 0, int64_t(1) << 40);
    return r;
}

}  // namespace

StartRequest parse_start_request(const nlohmann::json& j, const Limits& limits) {
    if (!j.is_object())
        throw ProtocolError("bad_json", "the request must be a JSON object");
    return parse_start(j, limits);
}

nlohmann::json StartRequest::to_json() const {
    nlohmann::json j = {{"storyboard", storyboard.to_json()}, {"format", format}};
    if (seconds)
        j["seconds"] = *seconds;
    if (seed)
        j["seed"] = *seed;
    if (width)
        j["width"] = *width;
    if (height)
        j["height"] = *height;
    nlohmann::json m = nlohmann::json::object();
    if (memory.enabled)
        m["enabled"] = *memory.enabled;
    if (memory.window)
        m["window"] = *memory.window;
    if (!m.empty())
        j["memory"] = m;
    nlohmann::json sm = nlohmann::json::object();
    if (sampling.steps)
        sm["steps"] = *sampling.steps;
    if (sampling.guidance)
        sm["guidance"] = *sampling.guidance;
    if (!sm.empty())
        j["sampling"] = sm;
    return j;
}

nlohmann::json ProtocolError::to_json() const {
    nlohmann::json j = {{"type", "error"}, {"code", code_}, {"message", what()}};
    if (!event_id_.empty())
        j["event_id"] = event_id_;
    return j;
}

nlohmann::json Interaction::payload() const {
    return {{"prompt", prompt}, {"time", time ? nlohmann::json(*time) : nlohmann::json()}, {"mode", mode}};
}

Storyboard parse_storyboard(const nlohmann::json& j, const Limits& limits) {
    Storyboard s;
    try {
        s = Storyboard::from_json(j, "storyboard");
    } catch (const std::exception& e) {
        throw ProtocolError("bad_storyboard", e.what());
    }
    if (s.empty())
        throw ProtocolError("bad_storyboard", "the storyboard has no prompts");
    if (s.entries().size() > limits.max_prompts)
        throw ProtocolError("bad_storyboard", "the storyboard has " + std::to_string(s.entries().size()) +
                                                  " prompts; the limit is " +
                                                  std::to_string(limits.max_prompts));
    for (const auto& e : s.entries()) {
        check_prompt(e.prompt, limits);
        if (e.time > limits.max_seconds)
            throw ProtocolError("bad_storyboard", "a prompt starts at " + std::to_string(e.time) +
                                                      " s, beyond the session limit");
    }
    return s;
}

MemorySettings parse_memory_settings(const nlohmann::json& j) {
    if (!j.is_object())
        bad_field("memory", "must be an object");
    only_fields(j, "memory", {"enabled", "window"});
    MemorySettings m;
    if (const auto* v = field(j, "enabled")) {
        if (!v->is_boolean())
            bad_field("memory.enabled", "must be true or false");
        m.enabled = v->get<bool>();
    }
    if (const auto* v = field(j, "window"))
        m.window = integer(*v, "memory.window", 0, 64);
    return m;
}

SamplingSettings parse_sampling_settings(const nlohmann::json& j) {
    if (!j.is_object())
        bad_field("sampling", "must be an object");
    only_fields(j, "sampling", {"steps", "guidance"});
    SamplingSettings s;
    if (const auto* v = field(j, "steps"))
        s.steps = integer(*v, "sampling.steps", 1, 100);
    if (const auto* v = field(j, "guidance")) {
        const double g = finite_number(*v, "sampling.guidance");
        if (g < 0 || g > 30)
            bad_field("sampling.guidance", "must be in [0, 30]");
        s.guidance = g;
    }
    return s;
}

Interaction parse_interaction(const nlohmann::json& j, const Limits& limits) {
    Interaction r;
    const auto* id = field(j, "event_id");
    if (!id)
        bad_field("event_id", "required");
    r.event_id = string_field(*id, "event_id", 64);
    if (r.event_id.empty())
        bad_field("event_id", "must not be empty");
    const auto* event = field(j, "event");
    if (!event || !event->is_object())
        bad_field("event", "required: {\"prompt\", \"time\", \"mode\"}", r.event_id);
    for (auto it = event->begin(); it != event->end(); ++it)
        if (it.key() != "prompt" && it.key() != "time" && it.key() != "mode")
            bad_field("event." + it.key(), "unknown field", r.event_id);
    const auto* prompt = field(*event, "prompt");
    if (!prompt || !prompt->is_string())
        bad_field("event.prompt", "required, a string", r.event_id);
    r.prompt = prompt->get<std::string>();
    check_prompt(r.prompt, limits, r.event_id);
    if (r.prompt.empty())
        bad_field("event.prompt", "must not be empty", r.event_id);
    if (const auto* t = field(*event, "time")) {
        if (!t->is_number() || !std::isfinite(t->get<double>()) || t->get<double>() < 0 ||
            t->get<double>() > limits.max_seconds)
            bad_field("event.time", "must be a number of seconds in [0, session limit], or null for now",
                      r.event_id);
        r.time = t->get<double>();
    }
    if (const auto* m = field(*event, "mode")) {
        if (!m->is_string() || (m->get<std::string>() != "add" && m->get<std::string>() != "replace"))
            bad_field("event.mode", "must be add or replace", r.event_id);
        r.mode = m->get<std::string>();
    }
    return r;
}

ClientMessage parse_client_message(std::string_view text, const Limits& limits) {
    if (text.size() > limits.max_message_bytes)
        throw ProtocolError("message_too_large", "a message is " + std::to_string(text.size()) +
                                                     " bytes; the limit is " +
                                                     std::to_string(limits.max_message_bytes));
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::parse_error& e) {
        throw ProtocolError("bad_json", std::string("not JSON: ") + e.what());
    }
    if (!j.is_object())
        throw ProtocolError("bad_json", "a message must be a JSON object");
    const auto* type = field(j, "type");
    if (!type || !type->is_string())
        throw ProtocolError("unknown_type", "a message needs a string field 'type'");
    const std::string t = type->get<std::string>();
    if (t == "session.start")
        return parse_start(j, limits);
    if (t == "session.resume")
        return parse_resume(j);
    if (t == "session.interaction") {
        only_fields(j, "", {"type", "event_id", "event"});
        return parse_interaction(j, limits);
    }
    if (t == "session.ping") {
        only_fields(j, "", {"type", "id"});
        Ping p;
        if (const auto it = j.find("id"); it != j.end())
            p.id = *it;
        return p;
    }
    if (t == "session.stop") {
        only_fields(j, "", {"type"});
        return Stop{};
    }
    throw ProtocolError("unknown_type", "unknown message type '" + t.substr(0, 64) + "'");
}

}  // namespace memoreel::protocol
