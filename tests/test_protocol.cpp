// The live protocol's client messages (server/protocol.h, docs/protocol.md): every message type read, every
// bad input refused with its error code and the field it concerns.
#include <doctest/doctest.h>

#include "server/protocol.h"

using namespace memoreel::protocol;

namespace {

std::string code_of(const std::string& text, const Limits& limits = {}) {
    try {
        parse_client_message(text, limits);
    } catch (const ProtocolError& e) {
        return e.code() + ": " + e.what();
    }
    return "accepted";
}

}  // namespace

TEST_SUITE("protocol") {
    TEST_CASE("session.start with a storyboard, or one prompt, and its settings") {
        const auto m = parse_client_message(
            R"({"type": "session.start", "storyboard": {"prompts": [{"time": 0, "prompt": "a red fox"},
               {"time": 4, "prompt": "cut to the beach"}]}, "seconds": 30, "seed": 5, "format": "webm",
               "memory": {"enabled": false, "window": 2}, "sampling": {"steps": 4, "guidance": 1.5}})");
        const auto& s = std::get<StartRequest>(m);
        REQUIRE(s.storyboard.entries().size() == 2);
        CHECK(s.storyboard.in_force(5.0) == "cut to the beach");
        CHECK(*s.seconds == 30.0);
        CHECK(*s.seed == 5u);
        CHECK(s.format == "webm");
        CHECK(*s.memory.enabled == false);
        CHECK(*s.memory.window == 2);
        CHECK(*s.sampling.steps == 4);
        const auto one =
            std::get<StartRequest>(parse_client_message(R"({"type":"session.start","prompt":"a cat"})"));
        CHECK(one.storyboard.in_force(0) == "a cat");
        CHECK(one.format == "mp4");
        CHECK_FALSE(one.seconds.has_value());
    }

    TEST_CASE("resume, interaction, ping and stop") {
        const auto r = std::get<ResumeRequest>(parse_client_message(
            R"({"type":"session.resume","session_id":"s_1","token":"t","from_section":3})"));
        CHECK(r.session_id == "s_1");
        CHECK(*r.from_section == 3);
        const auto i = std::get<Interaction>(parse_client_message(
            R"({"type":"session.interaction","event_id":"e1","event":{"prompt":"back in the red room"}})"));
        CHECK(i.event_id == "e1");
        CHECK_FALSE(i.time.has_value());
        CHECK(i.mode == "add");
        const auto j = std::get<Interaction>(parse_client_message(
            R"({"type":"session.interaction","event_id":"e1","event":{"prompt":"back in the red room","time":null,"mode":"add"}})"));
        CHECK(i.payload() == j.payload());  // a retry spelled out in full is the same event
        const auto k = std::get<Interaction>(parse_client_message(
            R"({"type":"session.interaction","event_id":"e1","event":{"prompt":"x","time":12.5,"mode":"replace"}})"));
        CHECK(k.payload() != i.payload());
        CHECK(*k.time == 12.5);
        CHECK(std::get<Ping>(parse_client_message(R"({"type":"session.ping","id":7})")).id == 7);
        CHECK(std::holds_alternative<Stop>(parse_client_message(R"({"type":"session.stop"})")));
    }

    TEST_CASE("every bad input is refused with its code and names the field") {
        CHECK(code_of("{not json").rfind("bad_json", 0) == 0);
        CHECK(code_of("[1,2]").rfind("bad_json", 0) == 0);
        CHECK(code_of(R"({"kind":"x"})").rfind("unknown_type", 0) == 0);
        CHECK(code_of(R"({"type":"session.dance"})")
                  .rfind("unknown_type: unknown message type 'session.dance'", 0) == 0);
        CHECK(code_of(R"({"type":"session.start"})").rfind("bad_storyboard", 0) == 0);
        CHECK(code_of(R"({"type":"session.start","storyboard":{"prompts":[]}})").rfind("bad_storyboard", 0) ==
              0);
        CHECK(code_of(R"({"type":"session.start","storyboard":{"prompts":[{"time":-1,"prompt":"x"}]}})")
                  .rfind("bad_storyboard", 0) == 0);
        CHECK(
            code_of(
                R"({"type":"session.start","prompt":"x","storyboard":{"prompts":[{"time":0,"prompt":"y"}]}})")
                .find("'prompt'") != std::string::npos);
        CHECK(code_of(R"({"type":"session.start","prompt":"x","format":"avi"})").find("'format'") !=
              std::string::npos);
        CHECK(code_of(R"({"type":"session.start","prompt":"x","seconds":0})").find("'seconds'") !=
              std::string::npos);
        CHECK(
            code_of(R"({"type":"session.start","prompt":"x","colour":1})").find("'colour': unknown field") !=
            std::string::npos);
        CHECK(code_of(R"({"type":"session.start","prompt":"x","memory":{"window":-1}})")
                  .find("'memory.window'") != std::string::npos);
        CHECK(code_of(R"({"type":"session.start","prompt":"x","sampling":{"steps":1.5}})")
                  .find("'sampling.steps'") != std::string::npos);
        CHECK(code_of(R"({"type":"session.resume","session_id":"s"})").find("'token'") != std::string::npos);
        CHECK(code_of(R"({"type":"session.interaction","event":{"prompt":"x"}})").find("'event_id'") !=
              std::string::npos);
        CHECK(code_of(R"({"type":"session.interaction","event_id":"e","event":{"prompt":"x","mode":"swap"}})")
                  .find("'event.mode'") != std::string::npos);
        CHECK(code_of(R"({"type":"session.interaction","event_id":"e","event":{"prompt":"x","time":"soon"}})")
                  .find("'event.time'") != std::string::npos);
        Limits small;
        small.max_prompt_bytes = 10;
        small.max_message_bytes = 200;
        CHECK(code_of(R"({"type":"session.start","prompt":"a very long prompt indeed"})", small)
                  .rfind("prompt_too_long", 0) == 0);
        CHECK(code_of(std::string(300, ' '), small).rfind("message_too_large", 0) == 0);
        try {
            parse_client_message(R"({"type":"session.interaction","event_id":"e9","event":{"prompt":""}})");
            FAIL("accepted an empty prompt");
        } catch (const ProtocolError& e) {
            CHECK(e.event_id() == "e9");  // the error names the event it refuses
            CHECK(e.to_json()["event_id"] == "e9");
            CHECK(e.to_json()["type"] == "error");
        }
    }
}
