#include "stream/video_file_reader.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libswscale/swscale.h>
}

#include <stdexcept>

#include "stream/ffmpeg_error.h"

namespace memoreel {

struct VideoFileReader::Impl {
    std::string path;
    VideoInfo info;
    AVFormatContext* format = nullptr;
    AVCodecContext* codec = nullptr;
    AVFrame* frame = nullptr;
    AVPacket* packet = nullptr;
    SwsContext* sws = nullptr;
    int stream = -1;
    bool draining = false;
    bool done = false;

    ~Impl() {
        if (sws)
            sws_freeContext(sws);
        if (packet)
            av_packet_free(&packet);
        if (frame)
            av_frame_free(&frame);
        if (codec)
            avcodec_free_context(&codec);
        if (format)
            avformat_close_input(&format);
    }

    [[noreturn]] void fail(const std::string& what, int code = 0) const {
        throw std::runtime_error(path + ": " + what + (code ? ": " + ffmpeg_error(code) : std::string()));
    }

    // Decodes until a frame is available; false at the end.
    bool next_frame() {
        while (!done) {
            const int r = avcodec_receive_frame(codec, frame);
            if (r == 0)
                return true;
            if (r == AVERROR_EOF) {
                done = true;
                return false;
            }
            if (r != AVERROR(EAGAIN))
                fail("decoding", r);
            if (draining) {
                done = true;
                return false;
            }
            // Feed the next packet of our stream (or start draining at the end of the file).
            for (;;) {
                const int rr = av_read_frame(format, packet);
                if (rr == AVERROR_EOF) {
                    draining = true;
                    avcodec_send_packet(codec, nullptr);
                    break;
                }
                if (rr < 0)
                    fail("reading", rr);
                if (packet->stream_index != stream) {
                    av_packet_unref(packet);
                    continue;
                }
                const int sr = avcodec_send_packet(codec, packet);
                av_packet_unref(packet);
                if (sr < 0 && sr != AVERROR(EAGAIN))
                    fail("decoding a packet", sr);
                break;
            }
        }
        return false;
    }
};

VideoFileReader::VideoFileReader(const std::string& path) : impl_(std::make_unique<Impl>()) {
    Impl& m = *impl_;
    m.path = path;
    int r = avformat_open_input(&m.format, path.c_str(), nullptr, nullptr);
    if (r < 0)
        m.fail("cannot open", r);
    if ((r = avformat_find_stream_info(m.format, nullptr)) < 0)
        m.fail("cannot read stream information", r);
    const AVCodec* dec = nullptr;
    m.stream = av_find_best_stream(m.format, AVMEDIA_TYPE_VIDEO, -1, -1, &dec, 0);
    if (m.stream < 0 || !dec)
        m.fail("no decodable video stream");
    AVStream* st = m.format->streams[m.stream];
    m.codec = avcodec_alloc_context3(dec);
    if (!m.codec)
        m.fail("out of memory");
    if ((r = avcodec_parameters_to_context(m.codec, st->codecpar)) < 0)
        m.fail("codec parameters", r);
    if ((r = avcodec_open2(m.codec, dec, nullptr)) < 0)
        m.fail("cannot open the decoder", r);
    m.frame = av_frame_alloc();
    m.packet = av_packet_alloc();
    if (!m.frame || !m.packet)
        m.fail("out of memory");
    m.info.width = m.codec->width;
    m.info.height = m.codec->height;
    if (st->avg_frame_rate.num > 0 && st->avg_frame_rate.den > 0)
        m.info.fps = av_q2d(st->avg_frame_rate);
    if (m.format->duration > 0)
        m.info.seconds = static_cast<double>(m.format->duration) / AV_TIME_BASE;
    if (m.info.width <= 0 || m.info.height <= 0)
        m.fail("video stream has no size");
}

VideoFileReader::~VideoFileReader() = default;

const VideoInfo& VideoFileReader::info() const {
    return impl_->info;
}

bool VideoFileReader::read_rgb(std::vector<uint8_t>& rgb) {
    Impl& m = *impl_;
    if (!m.next_frame())
        return false;
    const int w = m.frame->width, h = m.frame->height;
    if (w != m.info.width || h != m.info.height)
        m.fail("frame size changed mid-stream");
    m.sws = sws_getCachedContext(m.sws, w, h, static_cast<AVPixelFormat>(m.frame->format), w, h,
                                 AV_PIX_FMT_RGB24, SWS_BILINEAR, nullptr, nullptr, nullptr);
    if (!m.sws)
        m.fail("no pixel format conversion to RGB24");
    rgb.resize(static_cast<size_t>(w) * h * 3);
    uint8_t* dst[4] = {rgb.data(), nullptr, nullptr, nullptr};
    int dst_stride[4] = {w * 3, 0, 0, 0};
    sws_scale(m.sws, m.frame->data, m.frame->linesize, 0, h, dst, dst_stride);
    av_frame_unref(m.frame);
    return true;
}

std::vector<uint8_t> read_image_rgb(const std::string& path, int& width, int& height) {
    VideoFileReader reader(path);
    std::vector<uint8_t> rgb;
    if (!reader.read_rgb(rgb))
        throw std::runtime_error(path + ": no frame");
    width = reader.info().width;
    height = reader.info().height;
    return rgb;
}

}  // namespace memoreel
