#include "stream/video_file_writer.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/opt.h>
#include <libswscale/swscale.h>
}

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "stream/ffmpeg_error.h"

namespace memoreel {

namespace {

void check(int code, const std::string& path, const char* what) {
    if (code < 0)
        throw std::runtime_error(path + ": " + what + ": " + ffmpeg_error(code));
}

}  // namespace

struct VideoFileWriter::Impl {
    std::string path;
    std::string tmp_path;
    VideoFileOptions options;
    AVFormatContext* format = nullptr;
    AVCodecContext* codec = nullptr;
    AVStream* stream = nullptr;
    AVFrame* frame = nullptr;
    AVPacket* packet = nullptr;
    SwsContext* sws = nullptr;
    int64_t next_pts = 0;
    bool header_written = false;
    bool finished = false;

    ~Impl() {
        if (sws)
            sws_freeContext(sws);
        if (packet)
            av_packet_free(&packet);
        if (frame)
            av_frame_free(&frame);
        if (codec)
            avcodec_free_context(&codec);
        if (format) {
            if (format->pb)
                avio_closep(&format->pb);
            avformat_free_context(format);
        }
        if (!finished && !tmp_path.empty())
            std::remove(tmp_path.c_str());
    }

    // Sends one frame (or nullptr to flush) and writes every packet the encoder hands back.
    void encode(AVFrame* input) {
        check(avcodec_send_frame(codec, input), path, "sending a frame to the encoder");
        while (true) {
            int ret = avcodec_receive_packet(codec, packet);
            if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF)
                return;
            check(ret, path, "encoding");
            av_packet_rescale_ts(packet, codec->time_base, stream->time_base);
            packet->stream_index = stream->index;
            check(av_interleaved_write_frame(format, packet), path, "writing a packet");
        }
    }
};

VideoFileWriter::VideoFileWriter(const std::string& path, const VideoFileOptions& options)
    : impl_(std::make_unique<Impl>()) {
    // x264 reports per-file statistics at the info level; keep the terminal for our own progress.
    if (av_log_get_level() > AV_LOG_WARNING)
        av_log_set_level(AV_LOG_WARNING);
    Impl& m = *impl_;
    m.path = path;
    m.options = options;
    if (options.width <= 0 || options.height <= 0 || options.width % 2 || options.height % 2)
        throw std::runtime_error(path + ": width and height must be positive and even for H.264 (got " +
                                 std::to_string(options.width) + "x" + std::to_string(options.height) + ")");
    if (options.fps <= 0)
        throw std::runtime_error(path + ": fps must be positive");
    struct stat st {};
    if (path.empty() || path.back() == '/' || (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)))
        throw std::runtime_error(path + ": is a folder, not a file name");
    m.tmp_path = path + ".part";
    check(avformat_alloc_output_context2(&m.format, nullptr, "mp4", m.tmp_path.c_str()), path,
          "creating the MP4 muxer");
    const AVCodec* encoder = avcodec_find_encoder_by_name("libx264");
    if (!encoder)
        encoder = avcodec_find_encoder(AV_CODEC_ID_H264);
    if (!encoder)
        throw std::runtime_error(path + ": no H.264 encoder in this FFmpeg build");
    m.stream = avformat_new_stream(m.format, nullptr);
    m.codec = avcodec_alloc_context3(encoder);
    m.codec->width = options.width;
    m.codec->height = options.height;
    m.codec->time_base = AVRational{1, options.fps};
    m.codec->framerate = AVRational{options.fps, 1};
    m.codec->pix_fmt = AV_PIX_FMT_YUV420P;
    m.codec->gop_size = options.fps * 2;
    if (m.format->oformat->flags & AVFMT_GLOBALHEADER)
        m.codec->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
    av_opt_set(m.codec->priv_data, "preset", options.preset.c_str(), 0);
    av_opt_set(m.codec->priv_data, "crf", std::to_string(options.crf).c_str(), 0);
    check(avcodec_open2(m.codec, encoder, nullptr), path, "opening the H.264 encoder");
    check(avcodec_parameters_from_context(m.stream->codecpar, m.codec), path, "copying codec parameters");
    m.stream->time_base = m.codec->time_base;
    m.stream->avg_frame_rate = m.codec->framerate;
    check(avio_open(&m.format->pb, m.tmp_path.c_str(), AVIO_FLAG_WRITE), path, "opening the output file");
    // faststart: the index goes first so browsers can play the file while it downloads.
    AVDictionary* opts = nullptr;
    av_dict_set(&opts, "movflags", "+faststart", 0);
    int ret = avformat_write_header(m.format, &opts);
    av_dict_free(&opts);
    check(ret, path, "writing the MP4 header");
    m.header_written = true;
    m.frame = av_frame_alloc();
    m.frame->format = m.codec->pix_fmt;
    m.frame->width = options.width;
    m.frame->height = options.height;
    check(av_frame_get_buffer(m.frame, 0), path, "allocating a frame");
    m.packet = av_packet_alloc();
    m.sws = sws_getContext(options.width, options.height, AV_PIX_FMT_RGB24, options.width, options.height,
                           AV_PIX_FMT_YUV420P, SWS_BICUBIC, nullptr, nullptr, nullptr);
    if (!m.sws)
        throw std::runtime_error(path + ": cannot create the RGB to YUV converter");
}

VideoFileWriter::~VideoFileWriter() = default;

void VideoFileWriter::write_rgb(const uint8_t* rgb) {
    Impl& m = *impl_;
    if (m.finished)
        throw std::runtime_error(m.path + ": write after finish");
    check(av_frame_make_writable(m.frame), m.path, "making the frame writable");
    const uint8_t* src[1] = {rgb};
    const int stride[1] = {m.options.width * 3};
    sws_scale(m.sws, src, stride, 0, m.options.height, m.frame->data, m.frame->linesize);
    m.frame->pts = m.next_pts++;
    m.encode(m.frame);
}

void VideoFileWriter::finish() {
    Impl& m = *impl_;
    if (m.finished)
        return;
    m.encode(nullptr);
    check(av_write_trailer(m.format), m.path, "writing the MP4 trailer");
    avio_closep(&m.format->pb);
    if (std::rename(m.tmp_path.c_str(), m.path.c_str()) != 0)
        throw std::runtime_error(m.path +
                                 ": cannot move the finished file into place: " + std::strerror(errno));
    m.finished = true;
}

int64_t VideoFileWriter::frames_written() const {
    return impl_->next_pts;
}

}  // namespace memoreel
