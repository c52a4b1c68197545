// Small file helpers shared by checkpoints and configs: JSON files read with errors that name the file,
// and durable (fsync + rename) writes. Torch-free.
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>

namespace memoreel {

// Reads and parses a JSON file; throws CheckpointError naming the file (and the parse position) on failure.
nlohmann::json read_json_file(const std::string& path);

// Writes a file atomically: a uniquely named temporary file beside it, fsync, rename, fsync of the folder. A
// failed write removes the temporary file and leaves any existing file untouched. Errors are CheckpointError
// naming path.
void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& write);
void write_file_atomic(const std::string& path, const std::string& text);

// fsync a file by path (best effort on filesystems that do not support it).
void sync_file(const std::string& path);

// Reads a whole file into a string; throws CheckpointError naming the file.
std::string read_text_file(const std::string& path);

}  // namespace memoreel
