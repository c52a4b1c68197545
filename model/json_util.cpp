#include "model/json_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "model/safetensors.h"

namespace memoreel {

std::string read_text_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in)
        throw CheckpointError(path, "", std::string("cannot open: ") + std::strerror(errno));
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

void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& write) {
    std::string tmp = path + ".tmp-XXXXXX";
    const int fd = ::mkstemp(tmp.data());
    if (fd < 0)
        throw CheckpointError(path, "",
                              std::string("cannot create a temporary file: ") + std::strerror(errno));
    ::close(fd);
    try {
        {
            std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
            if (!out)
                throw CheckpointError(path, "", "cannot open for writing: " + tmp);
            write(out);
            out.flush();
            if (!out)
                throw CheckpointError(path, "", "write failed (disk full?)");
        }
        ::chmod(tmp.c_str(), 0644);  // mkstemp creates 0600; checkpoints and configs are ordinary files
        sync_file(tmp);
        if (std::rename(tmp.c_str(), path.c_str()) != 0)
            throw CheckpointError(path, "", std::string("cannot rename into place: ") + std::strerror(errno));
    } catch (...) {
        std::remove(tmp.c_str());
        throw;
    }
    // The rename is durable only once the folder's entry is on disk.
    std::string dir =
        path.substr(0, path.find_last_of('/') == std::string::npos ? 0 : path.find_last_of('/'));
    sync_file(dir.empty() ? "." : dir);
}

void write_file_atomic(const std::string& path, const std::string& text) {
    write_file_atomic(path, [&](std::ostream& out) { out << text; });
}

}  // namespace memoreel
