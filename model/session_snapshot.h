// Session snapshots on disk: one safetensors file holding an ARSession's state tensors, with the JSON
// document in the header's metadata. Written atomically (a temporary file, fsync, rename), so a crash leaves
// either the previous snapshot or the new one, never a torn file.
#pragma once

#include <string>

#include "model/ar_session.h"

namespace memoreel {

void save_session_snapshot(const std::string& path, const ARSessionSnapshot& snapshot);
// Throws CheckpointError / std::invalid_argument naming the file and the problem.
ARSessionSnapshot load_session_snapshot(const std::string& path);

}  // namespace memoreel
