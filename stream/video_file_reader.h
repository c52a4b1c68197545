// Video and image files through FFmpeg's libraries: decoded frames out as RGB24 bytes. Knows nothing of the
// model. Used for real clips (training and evaluation windows) and for reference images in tests.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace memoreel {

struct VideoInfo {
    int width = 0;
    int height = 0;
    double fps = 0;      // the stream's average frame rate (0 when the container does not say)
    double seconds = 0;  // duration (0 when unknown)
};

class VideoFileReader {
  public:
    // Throws std::runtime_error naming the file when it cannot be opened or has no decodable video stream.
    explicit VideoFileReader(const std::string& path);
    ~VideoFileReader();
    VideoFileReader(const VideoFileReader&) = delete;
    VideoFileReader& operator=(const VideoFileReader&) = delete;

    const VideoInfo& info() const;
    // The next frame as height rows of width*3 bytes (RGB24); false at the end of the stream.
    bool read_rgb(std::vector<uint8_t>& rgb);

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// The first frame of an image (PNG, JPEG, ...) or video file as RGB24.
std::vector<uint8_t> read_image_rgb(const std::string& path, int& width, int& height);

}  // namespace memoreel
