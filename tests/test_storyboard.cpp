// Storyboards: prompt in force by time, nearest entry, replacement, and clear errors for bad files.
#include "model/json_util.h"
#include "model/safetensors.h"
#include "model/storyboard.h"
#include "tests/test_support.h"

using namespace memoreel;
using memoreel::test::TempDir;

TEST_SUITE("storyboard") {
    TEST_CASE("the prompt in force is the latest entry started at or before t") {
        Storyboard s(
            {{4.5, "cut to the beach"}, {0, "a green fox walks into a red room"}, {10, "back in the room"}});
        CHECK(s.entries().front().time == 0);  // sorted
        CHECK(s.in_force(0) == "a green fox walks into a red room");
        CHECK(s.in_force(4.49) == "a green fox walks into a red room");
        CHECK(s.in_force(4.5) == "cut to the beach");
        CHECK(s.in_force(9.99) == "cut to the beach");
        CHECK(s.in_force(1e6) == "back in the room");
        Storyboard late({{2.0, "starts late"}});
        CHECK(late.in_force(0.5) == "starts late");  // before any start: the first entry
        CHECK(Storyboard().index_in_force(3) == -1);
    }

    TEST_CASE("nearest entry, ties to the earlier one, setting the same time replaces") {
        Storyboard s({{0, "a"}, {4, "b"}, {10, "c"}});
        CHECK(s.index_nearest(1.9) == 0);
        CHECK(s.index_nearest(2.0) == 0);
        CHECK(s.index_nearest(2.1) == 1);
        CHECK(s.index_nearest(7.5) == 2);
        s.set({4, "b2"});
        CHECK(s.entries().size() == 3);
        CHECK(s.in_force(5) == "b2");
        s.set({6, "d"});
        CHECK(s.in_force(7) == "d");
    }

    TEST_CASE("files round-trip, bad ones name the file and the entry") {
        TempDir dir;
        Storyboard s({{0, "a"}, {2.5, "b"}});
        write_file_atomic(dir.file("s.json"), s.to_json().dump());
        CHECK(Storyboard::load(dir.file("s.json")).to_json() == s.to_json());
        write_file_atomic(dir.file("arr.json"), R"([{"time": 1, "prompt": "x"}])");
        CHECK(Storyboard::load(dir.file("arr.json")).in_force(0) == "x");

        auto error = [&](const std::string& text) {
            write_file_atomic(dir.file("bad.json"), text);
            try {
                Storyboard::load(dir.file("bad.json"));
            } catch (const CheckpointError& e) {
                CHECK(std::string(e.what()).find(dir.file("bad.json")) != std::string::npos);
                return std::string(e.what());
            }
            return std::string();
        };
        CHECK(error(R"({"prompts": [{"time": -1, "prompt": "x"}]})").find("entry 0: time must be >= 0") !=
              std::string::npos);
        CHECK(error(R"({"prompts": [{"time": 0, "prompt": "x"}, {"time": 1, "prompt": ""}]})")
                  .find("entry 1: prompt is empty") != std::string::npos);
        CHECK(error(R"({"prompts": [{"time": "soon", "prompt": "x"}]})").find("'time'") != std::string::npos);
        CHECK(error(R"({"scenes": []})").find("no 'prompts'") != std::string::npos);
        CHECK(error("[1, 2").find("invalid JSON") != std::string::npos);
        CHECK(error(R"([{"time": 0, "prompt": ")" + std::string(3000, 'x') + R"("}])").find("longer than") !=
              std::string::npos);
    }
}
