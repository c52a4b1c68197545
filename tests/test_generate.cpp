// `memoreel generate` end to end: the executable writes an MP4 that ffprobe reads back with the frame count,
// size and rate asked for; bad requests fail with a clear message and no file.
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "tests/test_support.h"

using memoreel::test::TempDir;

namespace {

using Result = memoreel::test::CommandResult;
memoreel::test::CommandResult run(const std::string& cmd) {
    return memoreel::test::run_command(cmd);
}

std::string generate_cmd(const std::string& extra) {
    return "'" + memoreel::test::memoreel_binary() + "' --threads 2 generate --model '" +
           memoreel::test::source_dir() + "/configs/models/memoreel-tiny.json' --prompt 'a green fox' " +
           extra;
}

}  // namespace

TEST_SUITE("generate") {
    TEST_CASE("writes a playable MP4 with the frames, size and fps asked for") {
        TempDir dir;
        const auto r =
            run(generate_cmd("--frames 9 --width 96 --height 64 --fps 12 --steps 2 --seed 3 --out '" +
                             dir.file("clip.mp4") + "'"));
        INFO(r.output);
        REQUIRE(r.status == 0);
        const auto probe =
            run("ffprobe -v error -count_frames -select_streams v:0 -show_entries "
                "stream=codec_name,width,height,r_frame_rate,nb_read_frames -of csv=p=0 '" +
                dir.file("clip.mp4") + "'");
        CHECK(probe.output == "h264,96,64,12/1,9\n");
        CHECK(r.output.find("sampling") != std::string::npos);  // the progress bar
    }

    TEST_CASE("the same seed gives the same video, another seed another") {
        TempDir dir;
        for (const char* name : {"a", "b", "c"}) {
            const std::string seed = std::string(name) == "c" ? "5" : "4";
            const auto r = run(generate_cmd("--frames 5 --width 64 --height 64 --steps 2 --seed " + seed +
                                            " --out '" + dir.file(std::string(name) + ".mp4") + "'"));
            REQUIRE_MESSAGE(r.status == 0, r.output);
        }
        auto md5 = [&](const std::string& f) {
            return run("ffmpeg -v error -i '" + dir.file(f) + "' -f md5 -").output;
        };
        CHECK(md5("a.mp4") == md5("b.mp4"));
        CHECK(md5("a.mp4") != md5("c.mp4"));
    }

    TEST_CASE("bad requests fail with a clear message and leave no file") {
        TempDir dir;
        auto r = run(generate_cmd("--frames 10 --out '" + dir.file("x.mp4") + "'"));
        CHECK(r.status != 0);
        CHECK(r.output.find("frames must be 1 + a multiple of 4") != std::string::npos);
        r = run(generate_cmd("--frames 5 --width 100 --out '" + dir.file("x.mp4") + "'"));
        CHECK(r.status != 0);
        CHECK(r.output.find("multiples of 16") != std::string::npos);
        r = run("'" + memoreel::test::memoreel_binary() + "' generate --model '" + dir.file("nope.json") +
                "' --prompt x");
        CHECK(r.status != 0);
        CHECK(r.output.find("nope.json") != std::string::npos);
        CHECK(!std::filesystem::exists(dir.file("x.mp4")));
        // Command-line values outside their range are refused by the parser, before anything loads.
        for (const std::string bad :
             {"--guidance -3", "--shift -1", "--fps 4294967320", "--solver ddim", "--dtype fp8"}) {
            r = run(generate_cmd(bad + " --out '" + dir.file("x.mp4") + "'"));
            CHECK_MESSAGE(r.status != 0, bad);
            CHECK_MESSAGE(r.output.find(bad.substr(0, bad.find(' '))) != std::string::npos,
                          bad << ": " << r.output);
        }
        r = run(generate_cmd("--frames 5 --out '" + dir.file("no/such/dir/") + "'"));
        CHECK(r.status != 0);
        CHECK(r.output.find("sampling") == std::string::npos);  // failed before any sampling
        r = run("'" + memoreel::test::memoreel_binary() + "' --log-level verbose generate --prompt x");
        CHECK(r.status != 0);
        CHECK(r.output.find("--log-level") != std::string::npos);
        r = run("'" + memoreel::test::memoreel_binary() + "' bench dit --repeats 0");
        CHECK(r.status != 0);
        CHECK(r.output.find("--repeats") != std::string::npos);
    }

    TEST_CASE("a storyboard generates section by section with memory into one MP4") {
        TempDir dir;
        {
            std::ofstream(dir.file("story.json"))
                << R"({"prompts": [{"time": 0, "prompt": "a red fox"}, {"time": 0.5, "prompt": "cut to the beach"}]})";
        }
        const auto r =
            run(generate_cmd("--storyboard '" + dir.file("story.json") +
                             "' --seconds 1 --width 64 --height 64 --steps 1 --section-frames 2 --window 2 "
                             "--out '" +
                             dir.file("story.mp4") + "'"));
        INFO(r.output);
        REQUIRE(r.status == 0);
        // 16 fps, 1 s: sections of 2 latent frames give 5, then 8 frames each: 3 sections, 21 frames.
        const auto probe =
            run("ffprobe -v error -count_frames -select_streams v:0 -show_entries "
                "stream=width,height,r_frame_rate,nb_read_frames -of csv=p=0 '" +
                dir.file("story.mp4") + "'");
        CHECK(probe.output == "64,64,16/1,21\n");
        CHECK(r.output.find("memory tokens") != std::string::npos);
        const auto bad = run(
            generate_cmd("--storyboard '" + dir.file("none.json") + "' --out '" + dir.file("x.mp4") + "'"));
        CHECK(bad.status != 0);
        CHECK(bad.output.find("none.json") != std::string::npos);
    }

    TEST_CASE("the bundled default loads every trained part and generates a storyboard with its memory") {
        // models/memoreel-tiny is what serve and generate load by default: strict loading of the DiT, VAE,
        // text encoder, tokenizer, memory encoder and LoRA, at its own resolution, two sections.
        TempDir dir;
        {
            std::ofstream(dir.file("story.json"))
                << R"({"prompts": [{"time": 0, "prompt": "the green striped fox walks into the red room"},
                                  {"time": 0.8, "prompt": "cut to the beach"}]})";
        }
        const auto r =
            run("'" + memoreel::test::memoreel_binary() + "' --threads 2 generate --model '" +
                memoreel::test::source_dir() + "/models/memoreel-tiny/model.json' --storyboard '" +
                dir.file("story.json") + "' --seconds 1.5 --steps 1 --out '" + dir.file("story.mp4") + "'");
        INFO(r.output);
        REQUIRE(r.status == 0);
        CHECK(r.output.find("proposed (trained)") != std::string::npos);  // its memory, not seeded weights
        const auto probe =
            run("ffprobe -v error -count_frames -select_streams v:0 -show_entries "
                "stream=width,height,nb_read_frames -of csv=p=0 '" +
                dir.file("story.mp4") + "'");
        // 320x192 at 16 fps: a first section of 13 frames, then 16.
        CHECK(probe.output == "320,192,29\n");
    }
}
