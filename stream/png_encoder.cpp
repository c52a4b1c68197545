#include "stream/png_encoder.h"

extern "C" {
#include <libavcodec/avcodec.h>
}

#include <cstring>
#include <memory>
#include <stdexcept>

#include "stream/ffmpeg_error.h"

namespace memoreel {

namespace {

void check(int code, const char* what) {
    if (code < 0)
        throw std::runtime_error(std::string("PNG encoding: ") + what + ": " + ffmpeg_error(code));
}

struct CodecContextFree {
    void operator()(AVCodecContext* c) const { avcodec_free_context(&c); }
};
struct FrameFree {
    void operator()(AVFrame* f) const { av_frame_free(&f); }
};
struct PacketFree {
    void operator()(AVPacket* p) const { av_packet_free(&p); }
};

}  // namespace

std::string encode_png(const uint8_t* rgb, int width, int height) {
    if (width <= 0 || height <= 0)
        throw std::invalid_argument("PNG encoding: empty picture");
    const AVCodec* codec = avcodec_find_encoder(AV_CODEC_ID_PNG);
    if (!codec)
        throw std::runtime_error("PNG encoding: this FFmpeg has no PNG encoder");
    std::unique_ptr<AVCodecContext, CodecContextFree> ctx(avcodec_alloc_context3(codec));
    ctx->width = width;
    ctx->height = height;
    ctx->pix_fmt = AV_PIX_FMT_RGB24;
    ctx->time_base = {1, 1};
    check(avcodec_open2(ctx.get(), codec, nullptr), "opening the encoder");
    std::unique_ptr<AVFrame, FrameFree> frame(av_frame_alloc());
    frame->format = AV_PIX_FMT_RGB24;
    frame->width = width;
    frame->height = height;
    check(av_frame_get_buffer(frame.get(), 0), "allocating a frame");
    for (int y = 0; y < height; ++y)
        std::memcpy(frame->data[0] + static_cast<ptrdiff_t>(y) * frame->linesize[0],
                    rgb + static_cast<ptrdiff_t>(y) * width * 3, static_cast<size_t>(width) * 3);
    check(avcodec_send_frame(ctx.get(), frame.get()), "sending the picture");
    check(avcodec_send_frame(ctx.get(), nullptr), "flushing");
    std::unique_ptr<AVPacket, PacketFree> packet(av_packet_alloc());
    std::string out;
    while (avcodec_receive_packet(ctx.get(), packet.get()) == 0) {
        out.append(reinterpret_cast<const char*>(packet->data), static_cast<size_t>(packet->size));
        av_packet_unref(packet.get());
    }
    if (out.empty())
        throw std::runtime_error("PNG encoding: the encoder produced nothing");
    return out;
}

}  // namespace memoreel
