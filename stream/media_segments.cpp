#include "stream/media_segments.h"

#include <stdexcept>

namespace memoreel {

namespace {

uint32_t be32(std::string_view b, uint64_t at) {
    if (at + 4 > b.size())
        throw std::runtime_error("fMP4: truncated field at byte " + std::to_string(at));
    const auto u = [&](uint64_t i) { return static_cast<uint32_t>(static_cast<uint8_t>(b[i])); };
    return (u(at) << 24) | (u(at + 1) << 16) | (u(at + 2) << 8) | u(at + 3);
}

uint64_t be64(std::string_view b, uint64_t at) {
    return (static_cast<uint64_t>(be32(b, at)) << 32) | be32(b, at + 4);
}

std::vector<Mp4Box> boxes_in(std::string_view b, uint64_t begin, uint64_t end, uint64_t* complete) {
    std::vector<Mp4Box> out;
    uint64_t at = begin;
    while (at + 8 <= end) {
        Mp4Box box;
        box.offset = at;
        box.size = be32(b, at);
        box.type = std::string(b.substr(at + 4, 4));
        if (box.size == 1) {
            if (at + 16 > end)
                break;
            box.size = be64(b, at + 8);
            box.header = 16;
        } else if (box.size == 0) {
            box.size = end - at;  // to the end of the enclosing space
        }
        if (box.size < box.header)
            throw std::runtime_error("fMP4: box '" + box.type + "' at byte " + std::to_string(at) +
                                     " declares size " + std::to_string(box.size));
        if (box.size > end - at)  // (at + size could wrap around)
            break;
        out.push_back(box);
        at += box.size;
    }
    if (complete)
        *complete = at;
    return out;
}

const Mp4Box* find(const std::vector<Mp4Box>& boxes, const char* type) {
    for (const auto& b : boxes)
        if (b.type == type)
            return &b;
    return nullptr;
}

const Mp4Box& need(const std::vector<Mp4Box>& boxes, const char* type, const char* where) {
    const Mp4Box* b = find(boxes, type);
    if (!b)
        throw std::runtime_error(std::string("fMP4: no '") + type + "' box in " + where);
    return *b;
}

// EBML variable-length integers (element IDs keep their marker bits, sizes drop them).
struct Vint {
    uint64_t value = 0;
    int length = 0;
    bool unknown = false;  // all value bits set: "unknown size"
};

std::optional<Vint> read_vint(std::string_view b, uint64_t at, bool keep_marker) {
    if (at >= b.size())
        return std::nullopt;
    const auto first = static_cast<uint8_t>(b[at]);
    int len = 1;
    while (len <= 8 && !(first & (0x80 >> (len - 1))))
        ++len;
    if (len > 8)
        throw std::runtime_error("WebM: invalid element header at byte " + std::to_string(at));
    if (at + static_cast<uint64_t>(len) > b.size())
        return std::nullopt;
    Vint v;
    v.length = len;
    uint64_t value = keep_marker ? first : (first & (0xFFu >> len));
    bool all_ones = (first & (0xFFu >> len)) == (0xFFu >> len);
    for (int i = 1; i < len; ++i) {
        const auto byte = static_cast<uint8_t>(b[at + static_cast<uint64_t>(i)]);
        value = (value << 8) | byte;
        all_ones = all_ones && byte == 0xFF;
    }
    v.value = value;
    v.unknown = !keep_marker && all_ones;
    return v;
}

constexpr uint64_t kSegmentId = 0x18538067, kClusterId = 0x1F43B675, kSimpleBlockId = 0xA3,
                   kBlockGroupId = 0xA0;

// Offset of the first Cluster element in a WebM stream, if it has arrived.
std::optional<uint64_t> first_cluster(std::string_view b) {
    uint64_t at = 0;
    while (true) {
        const auto id = read_vint(b, at, true);
        if (!id)
            return std::nullopt;
        const auto size = read_vint(b, at + static_cast<uint64_t>(id->length), false);
        if (!size)
            return std::nullopt;
        if (id->value == kClusterId)
            return at;
        const uint64_t payload = at + static_cast<uint64_t>(id->length + size->length);
        if (id->value == kSegmentId) {  // master element: descend (its size is unknown when streaming)
            at = payload;
            continue;
        }
        if (size->unknown)
            throw std::runtime_error("WebM: unknown-size element before the first cluster");
        at = payload + size->value;
    }
}

// Offsets of every Cluster element start from `from` on (elements scanned at the cluster's child level).
std::vector<uint64_t> cluster_starts(std::string_view b, uint64_t from) {
    std::vector<uint64_t> out;
    uint64_t at = from;
    while (true) {
        const auto id = read_vint(b, at, true);
        if (!id)
            break;
        const auto size = read_vint(b, at + static_cast<uint64_t>(id->length), false);
        if (!size)
            break;
        const uint64_t payload = at + static_cast<uint64_t>(id->length + size->length);
        if (id->value == kClusterId) {
            out.push_back(at);
            if (size->unknown) {  // children follow directly
                at = payload;
                continue;
            }
        }
        if (size->unknown)
            throw std::runtime_error("WebM: unknown-size element inside a cluster");
        if (payload + size->value > b.size())
            break;
        at = payload + size->value;
    }
    return out;
}

}  // namespace

std::vector<Mp4Box> read_mp4_boxes(std::string_view bytes, uint64_t* complete_bytes) {
    return boxes_in(bytes, 0, bytes.size(), complete_bytes);
}

std::vector<Mp4Box> read_mp4_children(std::string_view bytes, const Mp4Box& parent) {
    return boxes_in(bytes, parent.offset + parent.header, parent.offset + parent.size, nullptr);
}

Mp4FragmentInfo read_mp4_fragment(std::string_view f) {
    const auto top = read_mp4_boxes(f);
    const Mp4Box& moof = need(top, "moof", "the fragment");
    need(top, "mdat", "the fragment");
    Mp4FragmentInfo info;
    const auto in_moof = read_mp4_children(f, moof);
    info.sequence = be32(f, need(in_moof, "mfhd", "moof").offset + 12);
    const Mp4Box& traf = need(in_moof, "traf", "moof");
    const auto in_traf = read_mp4_children(f, traf);
    const Mp4Box& tfhd = need(in_traf, "tfhd", "traf");
    const uint32_t tfhd_flags = be32(f, tfhd.offset + 8) & 0xFFFFFF;
    uint64_t at = tfhd.offset + 16;  // after version/flags and track_ID
    if (tfhd_flags & 0x1)
        at += 8;  // base_data_offset
    if (tfhd_flags & 0x2)
        at += 4;  // sample_description_index
    if (tfhd_flags & 0x8)
        at += 4;  // default_sample_duration
    if (tfhd_flags & 0x10)
        at += 4;  // default_sample_size
    std::optional<uint32_t> default_flags;
    if (tfhd_flags & 0x20)
        default_flags = be32(f, at);
    const Mp4Box& tfdt = need(in_traf, "tfdt", "traf");
    const uint32_t tfdt_version = be32(f, tfdt.offset + 8) >> 24;
    info.decode_time = tfdt_version == 1 ? be64(f, tfdt.offset + 12) : be32(f, tfdt.offset + 12);
    bool first = true;
    for (const auto& box : in_traf) {
        if (box.type != "trun")
            continue;
        const uint32_t vf = be32(f, box.offset + 8), flags = vf & 0xFFFFFF;
        const uint32_t count = be32(f, box.offset + 12);
        uint64_t p = box.offset + 16;
        if (flags & 0x1)
            p += 4;  // data_offset
        std::optional<uint32_t> first_sample_flags;
        if (flags & 0x4) {
            first_sample_flags = be32(f, p);
            p += 4;
        }
        if (first && count > 0) {
            std::optional<uint32_t> sample_flags = first_sample_flags;
            if (!sample_flags && (flags & 0x400)) {
                // Per-sample flags: skip the fields before them in the first sample's record.
                uint64_t q = p + ((flags & 0x100) ? 4 : 0) + ((flags & 0x200) ? 4 : 0);
                sample_flags = be32(f, q);
            }
            if (!sample_flags)
                sample_flags = default_flags;
            // sample_is_non_sync_sample is bit 16; a sync sample has it clear.
            info.starts_with_keyframe = sample_flags && !((*sample_flags >> 16) & 1);
            first = false;
        }
        info.samples += count;
    }
    return info;
}

uint32_t read_mp4_timescale(std::string_view init) {
    const auto top = read_mp4_boxes(init);
    const auto moov = read_mp4_children(init, need(top, "moov", "the init segment"));
    const auto trak = read_mp4_children(init, need(moov, "trak", "moov"));
    const auto mdia = read_mp4_children(init, need(trak, "mdia", "trak"));
    const Mp4Box& mdhd = need(mdia, "mdhd", "mdia");
    const uint32_t version = be32(init, mdhd.offset + 8) >> 24;
    return be32(init, mdhd.offset + (version == 1 ? 28 : 20));
}

void SegmentSplitter::append(std::string_view bytes) {
    pending_.append(bytes.data(), bytes.size());
    if (kind_ == Kind::kMp4)
        split_mp4();
    else
        split_webm();
}

void SegmentSplitter::finish() {
    finished_ = true;
    if (kind_ == Kind::kWebm)
        split_webm();
}

std::optional<std::string> SegmentSplitter::take_segment() {
    if (ready_.empty())
        return std::nullopt;
    std::string s = std::move(ready_.front());
    ready_.erase(ready_.begin());
    return s;
}

void SegmentSplitter::split_mp4() {
    uint64_t complete = 0;
    const auto boxes = read_mp4_boxes(pending_, &complete);
    // Consume whole units: ftyp..moov (init), moof+mdat (a fragment); anything else rides with the next unit.
    uint64_t unit_start = 0;
    uint64_t consumed = 0;
    for (size_t i = 0; i < boxes.size(); ++i) {
        const Mp4Box& b = boxes[i];
        const uint64_t end = b.offset + b.size;
        if (b.type == "moov") {
            init_ = pending_.substr(unit_start, end - unit_start);
            unit_start = consumed = end;
        } else if (b.type == "mdat" && i > 0 && boxes[i - 1].type == "moof") {
            ready_.push_back(pending_.substr(unit_start, end - unit_start));
            unit_start = consumed = end;
        }
    }
    pending_.erase(0, consumed);
}

void SegmentSplitter::split_webm() {
    if (init_.empty()) {
        const auto at = first_cluster(pending_);
        if (!at)
            return;
        init_ = pending_.substr(0, *at);
        pending_.erase(0, *at);
    }
    const auto starts = cluster_starts(pending_, 0);
    // Every cluster but the last is complete; the last one too at the end of the stream.
    size_t complete = starts.empty() ? 0 : starts.size() - 1;
    if (finished_)
        complete = starts.size();
    uint64_t consumed = 0;
    for (size_t i = 0; i < complete; ++i) {
        const uint64_t end = i + 1 < starts.size() ? starts[i + 1] : pending_.size();
        ready_.push_back(pending_.substr(starts[i], end - starts[i]));
        consumed = end;
    }
    pending_.erase(0, consumed);
}

int64_t SegmentSplitter::open_cluster_blocks() const {
    return kind_ == Kind::kWebm && !init_.empty() && !pending_.empty() ? webm_cluster_blocks(pending_) : 0;
}

std::string SegmentSplitter::take_open_cluster() {
    std::string s;
    s.swap(pending_);
    return s;
}

int64_t webm_cluster_blocks(std::string_view b) {
    const auto id = read_vint(b, 0, true);
    if (!id)
        return 0;  // not even the cluster's ID has arrived
    if (id->value != kClusterId)
        throw std::runtime_error("WebM: a cluster must start with the Cluster element");
    const auto size = read_vint(b, static_cast<uint64_t>(id->length), false);
    if (!size)
        return 0;
    uint64_t at = static_cast<uint64_t>(id->length + size->length);
    int64_t blocks = 0;
    while (true) {
        const auto cid = read_vint(b, at, true);
        if (!cid)
            break;
        const auto csize = read_vint(b, at + static_cast<uint64_t>(cid->length), false);
        if (!csize || csize->unknown)
            break;
        const uint64_t end = at + static_cast<uint64_t>(cid->length + csize->length) + csize->value;
        if (end > b.size())
            break;
        if (cid->value == kSimpleBlockId || cid->value == kBlockGroupId)
            ++blocks;
        at = end;
    }
    return blocks;
}

}  // namespace memoreel
