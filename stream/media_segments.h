// Splits a muxer's byte stream into what Media Source Extensions consumes: the init segment, then media
// segments (fragmented MP4: ftyp+moov, then moof+mdat pairs; WebM: the header up to the first Cluster, then
// clusters). Also reads the few fields the server and the tests need (ISO BMFF box layout, the fragment's
// sample count and decode time, a WebM cluster's block count). Torch-free and GStreamer-free: bytes in,
// segments out.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace memoreel {

struct Mp4Box {
    std::string type;     // four characters
    uint64_t offset = 0;  // of the box header in the buffer
    uint64_t size = 0;    // whole box
    uint64_t header = 8;  // 8, or 16 with a 64-bit size
};

// Top-level boxes of a buffer, in order; stops at an incomplete box (returned in `rest` as its offset).
std::vector<Mp4Box> read_mp4_boxes(std::string_view bytes, uint64_t* complete_bytes = nullptr);
// Child boxes of a container box's payload.
std::vector<Mp4Box> read_mp4_children(std::string_view bytes, const Mp4Box& parent);

struct Mp4FragmentInfo {
    uint32_t sequence = 0;     // mfhd
    uint64_t decode_time = 0;  // tfdt baseMediaDecodeTime (track timescale)
    uint32_t samples = 0;      // trun sample_count (all truns)
    bool starts_with_keyframe = false;
};
// Reads a moof (+ mdat) fragment; throws std::runtime_error naming what is malformed.
Mp4FragmentInfo read_mp4_fragment(std::string_view fragment);
// The track timescale from an init segment's moov/trak/mdia/mdhd (throws when absent).
uint32_t read_mp4_timescale(std::string_view init);

// Incremental splitter: append muxer output as it comes, take complete segments.
class SegmentSplitter {
  public:
    enum class Kind { kMp4, kWebm };
    explicit SegmentSplitter(Kind kind) : kind_(kind) {}

    void append(std::string_view bytes);
    // Signals the end of the stream: the last WebM cluster (whose end is otherwise only known when the next
    // one starts) becomes complete.
    void finish();
    bool has_init() const { return !init_.empty(); }
    const std::string& init() const { return init_; }
    // The next complete media segment, if any.
    std::optional<std::string> take_segment();
    // WebM only: the bytes of the cluster still being written and the blocks (frames) it holds so far.
    int64_t open_cluster_blocks() const;
    std::string take_open_cluster();

  private:
    void split_mp4();
    void split_webm();
    Kind kind_;
    std::string pending_;
    std::string init_;
    std::vector<std::string> ready_;
    bool finished_ = false;
};

// WebM: counts SimpleBlock/BlockGroup elements in a cluster (unknown-size clusters allowed).
int64_t webm_cluster_blocks(std::string_view cluster);

}  // namespace memoreel
