// The live stream's encoder (GStreamer): one media segment per section, each starting with a keyframe, on one
// timeline, an init segment that serves every segment (also for a late joiner), decoded back by FFmpeg.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>

#include "stream/live_encoder.h"
#include "stream/media_segments.h"
#include "stream/video_file_reader.h"
#include "tests/test_support.h"

using namespace memoreel;
using memoreel::test::TempDir;

namespace {

constexpr int kW = 96, kH = 64, kFps = 16;

// A section of flat frames whose grey level encodes (section, frame), so decoded frames can be told apart.
std::vector<std::vector<uint8_t>> section_frames(int section, int n) {
    std::vector<std::vector<uint8_t>> f(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i)
        f[static_cast<size_t>(i)].assign(kW * kH * 3, static_cast<uint8_t>(40 + section * 50 + i * 2));
    return f;
}

std::vector<const uint8_t*> ptrs(const std::vector<std::vector<uint8_t>>& f) {
    std::vector<const uint8_t*> p;
    for (const auto& x : f)
        p.push_back(x.data());
    return p;
}

// Decodes a file with FFmpeg: the mean grey level of each frame.
std::vector<double> decode_levels(const std::string& path) {
    VideoFileReader r(path);
    std::vector<uint8_t> rgb;
    std::vector<double> out;
    while (r.read_rgb(rgb)) {
        double s = 0;
        for (uint8_t v : rgb)
            s += v;
        out.push_back(s / static_cast<double>(rgb.size()));
    }
    return out;
}

void write(const std::string& path, const std::string& bytes) {
    std::ofstream(path, std::ios::binary) << bytes;
}

}  // namespace

TEST_SUITE("live_encoder") {
    TEST_CASE(
        "mp4: one keyframe-led fragment per section on one timeline, decodable, init without duration") {
        TempDir dir;
        LiveEncoderOptions o;
        o.width = kW;
        o.height = kH;
        o.fps = kFps;
        LiveEncoder enc(o);
        CHECK(enc.mime_type() == "video/mp4; codecs=\"avc1.42E01E\"");
        std::string all, late;
        const int counts[] = {13, 16, 16};
        for (int s = 0; s < 3; ++s) {
            const auto frames = section_frames(s, counts[s]);
            const MediaSegment seg = enc.encode_section(ptrs(frames));
            CHECK(seg.index == s);
            CHECK(seg.frames == counts[s]);
            const Mp4FragmentInfo info = read_mp4_fragment(seg.bytes);
            CHECK(info.sequence == static_cast<uint32_t>(s + 1));
            CHECK(info.samples == static_cast<uint32_t>(counts[s]));
            CHECK(info.starts_with_keyframe);
            const uint32_t timescale = read_mp4_timescale(enc.init_segment());
            const int before = s == 0 ? 0 : (s == 1 ? 13 : 29);
            CHECK(info.decode_time == static_cast<uint64_t>(std::llround(before * double(timescale) / kFps)));
            CHECK(seg.start_seconds == doctest::Approx(before / double(kFps)));
            if (s == 0)
                all = enc.init_segment();
            all += seg.bytes;
            if (s == 2)
                late = enc.init_segment() + seg.bytes;  // a viewer joining at section 2
        }
        // The init segment: ftyp + moov, nothing else; no duration declared.
        const auto boxes = read_mp4_boxes(enc.init_segment());
        REQUIRE(boxes.size() == 2);
        CHECK(boxes[0].type == "ftyp");
        CHECK(boxes[1].type == "moov");
        write(dir.file("all.mp4"), all);
        const auto levels = decode_levels(dir.file("all.mp4"));
        REQUIRE(levels.size() == 45);
        CHECK(levels[0] == doctest::Approx(40).epsilon(0.05));
        CHECK(levels[13] == doctest::Approx(90).epsilon(0.05));  // section 1's first frame
        CHECK(levels[44] == doctest::Approx(140 + 30).epsilon(0.05));
        write(dir.file("late.mp4"), late);
        const auto late_levels = decode_levels(dir.file("late.mp4"));
        REQUIRE(late_levels.size() == 16);
        CHECK(late_levels[0] == doctest::Approx(140).epsilon(0.05));
    }

    TEST_CASE("mp4: an encoder restored mid-stream continues the timeline") {
        LiveEncoderOptions o;
        o.width = kW;
        o.height = kH;
        o.fps = kFps;
        LiveEncoder enc(o, 45, 3);
        const auto frames = section_frames(0, 16);
        const MediaSegment seg = enc.encode_section(ptrs(frames));
        CHECK(seg.index == 3);
        const Mp4FragmentInfo info = read_mp4_fragment(seg.bytes);
        CHECK(info.sequence == 4u);
        CHECK(info.decode_time == static_cast<uint64_t>(std::llround(
                                      45 * double(read_mp4_timescale(enc.init_segment())) / kFps)));
    }

    TEST_CASE("webm: one cluster per section starting with a keyframe, decodable") {
        TempDir dir;
        LiveEncoderOptions o;
        o.width = kW;
        o.height = kH;
        o.fps = kFps;
        o.format = parse_live_format("webm");
        LiveEncoder enc(o);
        CHECK(enc.mime_type() == "video/webm; codecs=\"vp8\"");
        std::string all;
        for (int s = 0; s < 3; ++s) {
            const auto frames = section_frames(s, s == 0 ? 13 : 16);
            const MediaSegment seg = enc.encode_section(ptrs(frames));
            CHECK(webm_cluster_blocks(seg.bytes) == seg.frames);
            if (s == 0)
                all = enc.init_segment();
            all += seg.bytes;
        }
        write(dir.file("all.webm"), all);
        const auto levels = decode_levels(dir.file("all.webm"));
        REQUIRE(levels.size() == 45);
        CHECK(levels[13] == doctest::Approx(90).epsilon(0.06));
    }

    TEST_CASE("bad settings and malformed fragments are refused with a message") {
        LiveEncoderOptions o;
        o.width = 95;
        o.height = kH;
        CHECK_THROWS_WITH(LiveEncoder{o}, doctest::Contains("even"));
        CHECK_THROWS_WITH(parse_live_format("avi"), doctest::Contains("mp4 or webm"));
        CHECK_THROWS_WITH(read_mp4_fragment(std::string("\0\0\0\x08junk", 8)), doctest::Contains("moof"));
        std::string bad("\0\0\0\x04moof", 8);
        CHECK_THROWS_WITH(read_mp4_boxes(bad), doctest::Contains("declares size 4"));
        CHECK_THROWS_WITH(webm_cluster_blocks("xyz"), doctest::Contains("Cluster"));
    }
}
