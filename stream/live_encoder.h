// The live stream's encoder: RGB frames in, Media Source Extensions-ready media segments out, through a
// GStreamer pipeline (DESIGN.md section 6):
//   mp4:  appsrc ! videoconvert ! x264enc (zero latency, constrained baseline) ! h264parse
//         ! mp4mux (fragmented, streamable) ! appsink
//   webm: appsrc ! videoconvert ! vp8enc (realtime) ! webmmux (streamable) ! appsink
// Every section starts with a keyframe, and each section becomes exactly one media segment (one moof+mdat
// fragment, or one WebM cluster), so a viewer can join at any section boundary with the cached init segment.
// encode_section() returns when the section's segment has left the muxer: the segment of section N never
// waits for section N+1.
//
// Why MP4 runs one short pipeline per section: mp4mux takes a sample's duration from the next sample's
// timestamp, so a long-lived muxer holds a section's last frame (and with it the fragment) until the next
// section arrives, which would add a whole section to every viewer's latency. Each section is therefore
// encoded by its own encoder+muxer, ended by EOS (which flushes the fragment); x264 with the same settings
// writes the same SPS/PPS, so the first section's init segment serves every fragment, and each fragment is
// renumbered (mfhd) and placed on the session's timeline (tfdt). A fresh pipeline per section also means a
// restored session needs no encoder state: encode_section() continues at any start frame. WebM (matroskamux
// writes each block as it comes) keeps one pipeline and a forced key unit per section.
//
// Not thread-safe: one owner (the session's stream) pushes sections in order.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace memoreel {

enum class LiveFormat { kMp4, kWebm };

LiveFormat parse_live_format(const std::string& name);  // "mp4" | "webm"
std::string to_string(LiveFormat f);

struct LiveEncoderOptions {
    int width = 0;
    int height = 0;
    int fps = 16;
    LiveFormat format = LiveFormat::kMp4;
    int bitrate_kbps = 1500;
};

struct MediaSegment {
    int64_t index = 0;  // section number from 0
    std::string bytes;  // one fragment (moof+mdat) or one WebM cluster
    int64_t frames = 0;
    double start_seconds = 0;  // presentation time of its first frame
    double duration_seconds = 0;
};

class LiveEncoder {
  public:
    // first_frame: where the stream's timeline starts (a restored session continues its old timeline).
    explicit LiveEncoder(const LiveEncoderOptions& options,
                         int64_t first_frame = 0,
                         int64_t first_section = 0);
    ~LiveEncoder();
    LiveEncoder(const LiveEncoder&) = delete;
    LiveEncoder& operator=(const LiveEncoder&) = delete;

    // Encodes one section (rgb: height rows of width * 3 bytes each) and returns its media segment. Throws
    // std::runtime_error with GStreamer's message when the pipeline fails.
    MediaSegment encode_section(const std::vector<const uint8_t*>& rgb_frames);
    // The init segment (ftyp+moov, or the WebM header up to the first cluster); empty before the first
    // section.
    const std::string& init_segment() const;
    // For MediaSource.isTypeSupported / addSourceBuffer: video/mp4; codecs="avc1.42E01E" or
    // video/webm; codecs="vp8".
    std::string mime_type() const;
    const LiveEncoderOptions& options() const;
    int64_t sections() const;

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace memoreel
