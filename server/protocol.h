// The live protocol's client messages (docs/protocol.md): parsed from WebSocket text into typed requests,
// every field checked, every refusal a ProtocolError with the protocol's error code and the field it
// concerns. Torch-free and network-free, so the server's session code and the tests share one reading of the
// protocol.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>

#include "model/storyboard.h"

namespace memoreel::protocol {

class ProtocolError : public std::runtime_error {
  public:
    ProtocolError(std::string code, const std::string& message, std::string event_id = {})
        : std::runtime_error(message), code_(std::move(code)), event_id_(std::move(event_id)) {}
    const std::string& code() const { return code_; }
    const std::string& event_id() const { return event_id_; }
    // {"type": "error", "code", "message"[, "event_id"]}
    nlohmann::json to_json() const;

  private:
    std::string code_;
    std::string event_id_;
};

struct Limits {
    size_t max_message_bytes = 256 * 1024;
    size_t max_prompt_bytes = 1000;
    size_t max_prompts = 512;
    double max_seconds = 3600;  // of video per session
};

struct MemorySettings {
    std::optional<bool> enabled;
    std::optional<int64_t> window;  // latent frames
};

struct SamplingSettings {
    std::optional<int64_t> steps;
    std::optional<double> guidance;
};

struct StartRequest {
    Storyboard storyboard;
    std::optional<double> seconds;
    std::optional<uint64_t> seed;
    std::string format = "mp4";
    std::optional<int64_t> width;  // pixels; the model's by default
    std::optional<int64_t> height;
    MemorySettings memory;
    SamplingSettings sampling;
    // The request as the parser reads it (what a session keeps to be rebuilt after a restart).
    nlohmann::json to_json() const;
};

struct ResumeRequest {
    std::string session_id;
    std::string token;
    std::optional<int64_t> from_section;
};

struct Interaction {
    std::string event_id;
    std::string prompt;
    std::optional<double> time;  // nullopt: "now" (the next section that has not started)
    std::string mode = "add";    // add | replace
    // The payload without the id: what a retry must repeat exactly.
    nlohmann::json payload() const;
};

struct Ping {
    nlohmann::json id;
};

struct Stop {};

using ClientMessage = std::variant<StartRequest, ResumeRequest, Interaction, Ping, Stop>;

// Parses one text message. Throws ProtocolError: bad_json, unknown_type, bad_field, message_too_large,
// prompt_too_long, bad_storyboard.
ClientMessage parse_client_message(std::string_view text, const Limits& limits = {});

// Pieces shared with the REST API (the same checks for the same fields).
// A session.start body without its "type" (POST /v1/sessions).
StartRequest parse_start_request(const nlohmann::json& j, const Limits& limits);
Storyboard parse_storyboard(const nlohmann::json& j, const Limits& limits);
MemorySettings parse_memory_settings(const nlohmann::json& j);
SamplingSettings parse_sampling_settings(const nlohmann::json& j);
Interaction parse_interaction(const nlohmann::json& j, const Limits& limits);

}  // namespace memoreel::protocol
