// MP4 writing through FFmpeg's libraries, checked with ffprobe (a separate program reading the file back).
#include <cstdio>
#include <filesystem>

#include "stream/video_file_writer.h"
#include "tests/test_support.h"

using namespace memoreel;
using memoreel::test::TempDir;

namespace {

// stdout only: the callers parse ffprobe's output.
std::string run(const std::string& cmd) {
    return memoreel::test::run_command(cmd + " 2>/dev/null").output;
}

}  // namespace

TEST_SUITE("video_file") {
    TEST_CASE("frames become a playable H.264 MP4 with the asked frame count, size and rate") {
        TempDir dir;
        const int w = 96, h = 64, n = 17;
        {
            VideoFileWriter writer(dir.file("clip.mp4"), {w, h, 16});
            std::vector<uint8_t> rgb(w * h * 3);
            for (int t = 0; t < n; ++t) {
                for (int i = 0; i < w * h * 3; ++i)
                    rgb[i] = static_cast<uint8_t>((i * 7 + t * 13) & 0xff);
                writer.write_rgb(rgb.data());
            }
            CHECK(!std::filesystem::exists(dir.file("clip.mp4")));  // appears only when finished
            writer.finish();
            CHECK(writer.frames_written() == n);
        }
        const std::string probe =
            run("ffprobe -v error -count_frames -select_streams v:0 -show_entries "
                "stream=codec_name,width,height,r_frame_rate,nb_read_frames -of csv=p=0 '" +
                dir.file("clip.mp4") + "'");
        CHECK(probe == "h264,96,64,16/1," + std::to_string(n) + "\n");
    }

    TEST_CASE("an abandoned writer leaves no file, bad sizes are refused") {
        TempDir dir;
        {
            VideoFileWriter writer(dir.file("never.mp4"), {32, 32, 8});
            std::vector<uint8_t> rgb(32 * 32 * 3, 128);
            writer.write_rgb(rgb.data());
        }
        CHECK(std::filesystem::is_empty(dir.path()));
        CHECK_THROWS_WITH(VideoFileWriter(dir.file("odd.mp4"), {33, 32, 8}), doctest::Contains("even"));
    }
}
