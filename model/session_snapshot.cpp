#include "model/session_snapshot.h"

#include "model/checkpoint.h"

namespace memoreel {

namespace {
constexpr const char* kMetaKey = "memoreel.session";
}

void save_session_snapshot(const std::string& path, const ARSessionSnapshot& snapshot) {
    save_tensors(path, snapshot.tensors, {{kMetaKey, snapshot.meta.dump()}});
}

ARSessionSnapshot load_session_snapshot(const std::string& path) {
    const TensorSource source = TensorSource::open(path);
    const auto it = source.metadata().find(kMetaKey);
    if (it == source.metadata().end())
        throw std::invalid_argument(path + ": not a session snapshot (no '" + std::string(kMetaKey) +
                                    "' metadata)");
    ARSessionSnapshot out;
    try {
        out.meta = nlohmann::json::parse(it->second);
    } catch (const nlohmann::json::exception& e) {
        throw std::invalid_argument(path + ": malformed session metadata: " + e.what());
    }
    for (const auto& name : source.names())
        out.tensors.emplace_back(name, source.get(name));
    return out;
}

}  // namespace memoreel
