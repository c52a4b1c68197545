// FFmpeg error codes as text, for the messages of the reader and the writer.
#pragma once

#include <string>

namespace memoreel {

std::string ffmpeg_error(int code);

}  // namespace memoreel
