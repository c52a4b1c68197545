#include "stream/live_encoder.h"

#include <gst/app/gstappsink.h>
#include <gst/app/gstappsrc.h>
#include <gst/gst.h>
#include <gst/video/video.h>

#include <cmath>
#include <mutex>
#include <optional>
#include <stdexcept>

#include "stream/media_segments.h"

namespace memoreel {

namespace {

void ensure_gstreamer() {
    static std::once_flag once;
    static std::string failure;
    std::call_once(once, [] {
        GError* err = nullptr;
        if (!gst_init_check(nullptr, nullptr, &err)) {
            failure = err ? err->message : "unknown error";
            if (err)
                g_error_free(err);
        }
    });
    if (!failure.empty())
        throw std::runtime_error("GStreamer failed to initialise: " + failure);
}

void put_be32(std::string& b, uint64_t at, uint32_t v) {
    for (int i = 0; i < 4; ++i)
        b[at + static_cast<uint64_t>(i)] = static_cast<char>((v >> (24 - 8 * i)) & 0xFF);
}

void put_be64(std::string& b, uint64_t at, uint64_t v) {
    put_be32(b, at, static_cast<uint32_t>(v >> 32));
    put_be32(b, at + 4, static_cast<uint32_t>(v & 0xFFFFFFFFu));
}

// One GStreamer pipeline "appsrc name=src ... ! appsink name=sink", owned (RAII).
class Pipeline {
  public:
    explicit Pipeline(const std::string& description) {
        GError* err = nullptr;
        pipeline_ = gst_parse_launch(description.c_str(), &err);
        if (err) {
            const std::string msg = err->message;
            g_error_free(err);
            if (pipeline_)
                gst_object_unref(pipeline_);
            throw std::runtime_error("live encoder: cannot build the GStreamer pipeline (" + msg +
                                     "); are gstreamer1.0-plugins-{base,good,ugly} installed?");
        }
        src_ = gst_bin_get_by_name(GST_BIN(pipeline_), "src");
        sink_ = gst_bin_get_by_name(GST_BIN(pipeline_), "sink");
        try {
            if (!src_ || !sink_)
                fail("the pipeline has no appsrc 'src' or appsink 'sink'");
            if (gst_element_set_state(pipeline_, GST_STATE_PLAYING) == GST_STATE_CHANGE_FAILURE)
                fail("the pipeline does not start");
        } catch (...) {
            release();  // the destructor does not run for a constructor that throws
            throw;
        }
    }
    ~Pipeline() { release(); }
    Pipeline(const Pipeline&) = delete;
    Pipeline& operator=(const Pipeline&) = delete;

    void push(const uint8_t* rgb, size_t bytes, GstClockTime pts, GstClockTime duration) {
        GstBuffer* buf = gst_buffer_new_allocate(nullptr, bytes, nullptr);
        gst_buffer_fill(buf, 0, rgb, bytes);
        GST_BUFFER_PTS(buf) = pts;
        GST_BUFFER_DTS(buf) = pts;
        GST_BUFFER_DURATION(buf) = duration;
        if (gst_app_src_push_buffer(GST_APP_SRC(src_), buf) != GST_FLOW_OK)
            fail("the pipeline refused a frame");
    }
    void force_keyframe(GstClockTime pts, unsigned count) {
        // Serialized with the buffers (appsrc queues it): the encoder makes the next frame a keyframe.
        if (!gst_element_send_event(
                src_, gst_video_event_new_downstream_force_key_unit(pts, pts, pts, TRUE, count)))
            fail("the keyframe request was refused");
    }
    void end_of_stream() {
        if (gst_app_src_end_of_stream(GST_APP_SRC(src_)) != GST_FLOW_OK)
            fail("end of stream refused");
    }
    // The next chunk of muxer output; nullopt at end of stream. Throws after 10 s without output.
    std::optional<std::string> pull() {
        GstSample* sample = gst_app_sink_try_pull_sample(GST_APP_SINK(sink_), 10 * GST_SECOND);
        if (!sample) {
            if (gst_app_sink_is_eos(GST_APP_SINK(sink_)))
                return std::nullopt;
            fail("no output from the muxer for 10 s");
        }
        std::string out;
        GstBuffer* buf = gst_sample_get_buffer(sample);
        GstMapInfo map;
        if (buf && gst_buffer_map(buf, &map, GST_MAP_READ)) {
            out.assign(reinterpret_cast<const char*>(map.data), map.size);
            gst_buffer_unmap(buf, &map);
        }
        gst_sample_unref(sample);
        return out;
    }

    [[noreturn]] void fail(const std::string& what) {
        std::string detail;
        if (GstBus* bus = gst_element_get_bus(pipeline_)) {
            if (GstMessage* m = gst_bus_pop_filtered(bus, GST_MESSAGE_ERROR)) {
                GError* err = nullptr;
                gchar* debug = nullptr;
                gst_message_parse_error(m, &err, &debug);
                detail = std::string(": ") + (err ? err->message : "") +
                         (debug ? std::string(" (") + debug + ")" : "");
                if (err)
                    g_error_free(err);
                g_free(debug);
                gst_message_unref(m);
            }
            gst_object_unref(bus);
        }
        throw std::runtime_error("live encoder: " + what + detail);
    }

  private:
    void release() {
        gst_element_set_state(pipeline_, GST_STATE_NULL);
        if (src_)
            gst_object_unref(src_);
        if (sink_)
            gst_object_unref(sink_);
        gst_object_unref(pipeline_);
    }

    GstElement* pipeline_ = nullptr;
    GstElement* src_ = nullptr;
    GstElement* sink_ = nullptr;
};

// A live init segment declares no duration (mvhd, tkhd, mdhd, mehd set to 0): the stream grows as fragments
// come, and the first section's length must not become the media's duration.
void clear_durations(std::string& init) {
    const auto top = read_mp4_boxes(init);
    for (const auto& moov : top) {
        if (moov.type != "moov")
            continue;
        for (const auto& b : read_mp4_children(init, moov)) {
            const auto version = static_cast<uint8_t>(init[b.offset + 8]);
            if (b.type == "mvhd")
                version == 1 ? put_be64(init, b.offset + 32, 0) : put_be32(init, b.offset + 24, 0);
            if (b.type == "mvex")
                for (const auto& m : read_mp4_children(init, b))
                    if (m.type == "mehd")
                        static_cast<uint8_t>(init[m.offset + 8]) == 1 ? put_be64(init, m.offset + 12, 0)
                                                                      : put_be32(init, m.offset + 12, 0);
            if (b.type == "trak")
                for (const auto& t : read_mp4_children(init, b)) {
                    const auto v = static_cast<uint8_t>(init[t.offset + 8]);
                    if (t.type == "tkhd")
                        v == 1 ? put_be64(init, t.offset + 36, 0) : put_be32(init, t.offset + 28, 0);
                    if (t.type == "mdia")
                        for (const auto& d : read_mp4_children(init, t))
                            if (d.type == "mdhd") {
                                const auto dv = static_cast<uint8_t>(init[d.offset + 8]);
                                dv == 1 ? put_be64(init, d.offset + 32, 0) : put_be32(init, d.offset + 24, 0);
                            }
                }
        }
    }
}

// Places a fragment on the session's timeline: mfhd sequence number and tfdt decode time.
void retime_fragment(std::string& f, uint32_t sequence, uint64_t decode_time) {
    const auto top = read_mp4_boxes(f);
    for (const auto& moof : top) {
        if (moof.type != "moof")
            continue;
        for (const auto& b : read_mp4_children(f, moof)) {
            if (b.type == "mfhd")
                put_be32(f, b.offset + 12, sequence);
            if (b.type == "traf")
                for (const auto& t : read_mp4_children(f, b))
                    if (t.type == "tfdt") {
                        if (static_cast<uint8_t>(f[t.offset + 8]) == 1)
                            put_be64(f, t.offset + 12, decode_time);
                        else if (decode_time <= 0xFFFFFFFFu)
                            put_be32(f, t.offset + 12, static_cast<uint32_t>(decode_time));
                        else
                            throw std::runtime_error("live encoder: the stream outgrew a 32-bit tfdt");
                    }
        }
    }
}

}  // namespace

LiveFormat parse_live_format(const std::string& name) {
    if (name == "mp4")
        return LiveFormat::kMp4;
    if (name == "webm")
        return LiveFormat::kWebm;
    throw std::invalid_argument("unknown stream format '" + name + "' (mp4 or webm)");
}

std::string to_string(LiveFormat f) {
    return f == LiveFormat::kMp4 ? "mp4" : "webm";
}

struct LiveEncoder::Impl {
    LiveEncoderOptions o;
    int64_t frames_pushed = 0;  // on the session's timeline
    int64_t sections = 0;
    int64_t webm_first_frame = 0;
    std::string init;
    uint32_t timescale = 0;
    std::unique_ptr<Pipeline> webm;  // the long-lived WebM pipeline
    std::unique_ptr<SegmentSplitter> webm_splitter;

    std::string caps() const {
        return "video/x-raw,format=RGB,width=" + std::to_string(o.width) +
               ",height=" + std::to_string(o.height) + ",framerate=" + std::to_string(o.fps) + "/1";
    }
    GstClockTime frame_ns(int64_t n) const {
        return gst_util_uint64_scale(static_cast<guint64>(n), GST_SECOND, static_cast<guint64>(o.fps));
    }

    std::string mp4_section(const std::vector<const uint8_t*>& frames) {
        // One fragment per pipeline: fragment-duration far beyond a section, flushed by EOS.
        Pipeline p(
            "appsrc name=src format=time caps=\"" + caps() +
            "\" ! videoconvert ! x264enc tune=zerolatency speed-preset=veryfast key-int-max=100000 "
            "option-string=scenecut=0 "
            "bitrate=" +
            std::to_string(o.bitrate_kbps) +
            " ! video/x-h264,profile=constrained-baseline ! h264parse ! mp4mux fragment-duration=3600000 "
            "streamable=true ! appsink name=sink sync=false");
        const size_t bytes = static_cast<size_t>(o.width) * o.height * 3;
        for (size_t i = 0; i < frames.size(); ++i)
            p.push(frames[i], bytes, frame_ns(static_cast<int64_t>(i)),
                   frame_ns(static_cast<int64_t>(i) + 1) - frame_ns(static_cast<int64_t>(i)));
        p.end_of_stream();
        SegmentSplitter split(SegmentSplitter::Kind::kMp4);
        while (auto chunk = p.pull())
            split.append(*chunk);
        std::optional<std::string> fragment = split.take_segment();
        if (!fragment || !split.has_init())
            p.fail("the muxer wrote no fragment");
        if (split.take_segment())
            p.fail("the muxer split a section into several fragments");
        if (init.empty()) {
            init = split.init();
            clear_durations(init);
            timescale = read_mp4_timescale(init);
        }
        const auto decode_time = static_cast<uint64_t>(
            std::llround(static_cast<double>(frames_pushed) * timescale / static_cast<double>(o.fps)));
        retime_fragment(*fragment, static_cast<uint32_t>(sections + 1), decode_time);
        return std::move(*fragment);
    }

    std::string webm_section(const std::vector<const uint8_t*>& frames) {
        try {
            return webm_section_on_pipeline(frames);
        } catch (...) {
            // A failed pipeline is not reused: the next section starts a fresh one (a new keyframe anyway).
            webm.reset();
            webm_splitter.reset();
            throw;
        }
    }

    std::string webm_section_on_pipeline(const std::vector<const uint8_t*>& frames) {
        bool fresh = false;  // a new pipeline starts with a keyframe by itself
        if (!webm) {
            webm = std::make_unique<Pipeline>(
                "appsrc name=src format=time caps=\"" + caps() +
                "\" ! videoconvert ! vp8enc deadline=1 keyframe-mode=disabled target-bitrate=" +
                std::to_string(static_cast<int64_t>(o.bitrate_kbps) * 1000) +
                " ! webmmux streamable=true min-cluster-duration=" + std::to_string(frame_ns(1) / 2) +
                " max-cluster-duration=" + std::to_string(3600 * GST_SECOND) +
                " ! appsink name=sink sync=false");
            webm_splitter = std::make_unique<SegmentSplitter>(SegmentSplitter::Kind::kWebm);
            fresh = true;
        }
        const size_t bytes = static_cast<size_t>(o.width) * o.height * 3;
        for (size_t i = 0; i < frames.size(); ++i) {
            const int64_t n = frames_pushed + static_cast<int64_t>(i);
            if (i == 0 && n > webm_first_frame && !fresh)
                webm->force_keyframe(frame_ns(n), static_cast<unsigned>(sections));
            webm->push(frames[i], bytes, frame_ns(n), frame_ns(n + 1) - frame_ns(n));
        }
        // matroskamux writes each block as it arrives: the section is out once its blocks are.
        while (webm_splitter->open_cluster_blocks() < static_cast<int64_t>(frames.size())) {
            auto chunk = webm->pull();
            if (!chunk)
                webm->fail("the stream ended early");
            webm_splitter->append(*chunk);
        }
        if (webm_splitter->take_segment())
            webm->fail("a section's frames spread over several clusters");
        if (init.empty())
            init = webm_splitter->init();
        return webm_splitter->take_open_cluster();
    }
};

LiveEncoder::LiveEncoder(const LiveEncoderOptions& options, int64_t first_frame, int64_t first_section)
    : impl_(std::make_unique<Impl>()) {
    ensure_gstreamer();
    Impl& m = *impl_;
    m.o = options;
    if (m.o.width <= 0 || m.o.height <= 0 || m.o.width % 2 || m.o.height % 2)
        throw std::invalid_argument("live encoder: width and height must be positive and even (got " +
                                    std::to_string(m.o.width) + "x" + std::to_string(m.o.height) + ")");
    if (m.o.fps <= 0 || m.o.fps > 240)
        throw std::invalid_argument("live encoder: fps must be in [1, 240]");
    if (m.o.bitrate_kbps < 50 || m.o.bitrate_kbps > 100000)
        throw std::invalid_argument("live encoder: bitrate must be in [50, 100000] kbit/s");
    if (first_frame < 0 || first_section < 0)
        throw std::invalid_argument("live encoder: negative start");
    m.frames_pushed = m.webm_first_frame = first_frame;
    m.sections = first_section;
}

LiveEncoder::~LiveEncoder() = default;

MediaSegment LiveEncoder::encode_section(const std::vector<const uint8_t*>& frames) {
    Impl& m = *impl_;
    if (frames.empty())
        throw std::invalid_argument("live encoder: a section needs at least one frame");
    MediaSegment seg;
    seg.index = m.sections;
    seg.frames = static_cast<int64_t>(frames.size());
    seg.start_seconds = static_cast<double>(m.frames_pushed) / m.o.fps;
    seg.duration_seconds = static_cast<double>(frames.size()) / m.o.fps;
    seg.bytes = m.o.format == LiveFormat::kMp4 ? m.mp4_section(frames) : m.webm_section(frames);
    m.frames_pushed += seg.frames;
    ++m.sections;
    return seg;
}

const std::string& LiveEncoder::init_segment() const {
    return impl_->init;
}

std::string LiveEncoder::mime_type() const {
    return impl_->o.format == LiveFormat::kMp4 ? "video/mp4; codecs=\"avc1.42E01E\""
                                               : "video/webm; codecs=\"vp8\"";
}

const LiveEncoderOptions& LiveEncoder::options() const {
    return impl_->o;
}

int64_t LiveEncoder::sections() const {
    return impl_->sections;
}

}  // namespace memoreel
