// MP4 (H.264) files through FFmpeg's libraries: frames of RGB24 in, a playable file out.
// Knows nothing of the model: it takes plain byte frames.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace memoreel {

struct VideoFileOptions {
    int width = 0;
    int height = 0;
    int fps = 24;
    int crf = 18;                     // x264 quality (lower is better)
    std::string preset = "veryfast";  // x264 speed preset
};

// Writes frames as they come; finish() flushes the encoder and writes the trailer. The file appears under its
// name only when finish() succeeds (written to a temporary name, then renamed), so a crash leaves no half
// file.
class VideoFileWriter {
  public:
    VideoFileWriter(const std::string& path, const VideoFileOptions& options);
    ~VideoFileWriter();
    VideoFileWriter(const VideoFileWriter&) = delete;
    VideoFileWriter& operator=(const VideoFileWriter&) = delete;

    // rgb: height rows of width*3 bytes (RGB24, row stride width*3).
    void write_rgb(const uint8_t* rgb);
    void finish();
    int64_t frames_written() const;

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace memoreel
