#include "stream/ffmpeg_error.h"

extern "C" {
#include <libavutil/error.h>
}

namespace memoreel {

std::string ffmpeg_error(int code) {
    char buf[AV_ERROR_MAX_STRING_SIZE] = {0};
    av_strerror(code, buf, sizeof(buf));
    return buf;
}

}  // namespace memoreel
