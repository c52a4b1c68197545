#include "model/json_util.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "model/safetensors.h"

namespace memoreel {

std::string read_text_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw CheckpointError(path, "", std::string("cannot open: ") + std::strerror(errno));
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

nlohmann::json read_json_file(const std::string& path) {
    const std::string text = read_text_file(path);
    try {
        return nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
        throw CheckpointError(path, "", std::string("invalid JSON: ") + e.what());
    }
}

void sync_file(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ::fsync(fd);
        ::close(fd);
    }
}

void write_file_atomic(const std::string& path, const std::string& text) {
    const std::string tmp = path + ".tmp";
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        if (!out) throw CheckpointError(path, "", "cannot open for writing: " + tmp);
        out << text;
        out.flush();
        if (!out) throw CheckpointError(path, "", "write failed (disk full?)");
    }
    sync_file(tmp);
    if (std::rename(tmp.c_str(), path.c_str()) != 0)
        throw CheckpointError(path, "", std::string("cannot rename into place: ") + std::strerror(errno));
}

}  // namespace memoreel
