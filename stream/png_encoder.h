// RGB24 pictures to PNG through FFmpeg's PNG encoder (the memory inspector's images).
#pragma once

#include <cstdint>
#include <string>

namespace memoreel {

// rgb: height rows of width * 3 bytes. Throws std::runtime_error with FFmpeg's message.
std::string encode_png(const uint8_t* rgb, int width, int height);

}  // namespace memoreel
