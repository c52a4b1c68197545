#include "model/storyboard.h"

#include <algorithm>
#include <cmath>

#include "model/json_util.h"
#include "model/safetensors.h"

namespace memoreel {

namespace {

void check_entry(const StoryboardEntry& e, const std::string& where, size_t index) {
    const std::string at = "storyboard entry " + std::to_string(index) + ": ";
    if (!std::isfinite(e.time) || e.time < 0)
        throw CheckpointError(where, "", at + "time must be >= 0 seconds");
    if (e.prompt.empty())
        throw CheckpointError(where, "", at + "prompt is empty");
    if (e.prompt.size() > Storyboard::kMaxPromptBytes)
        throw CheckpointError(
            where, "",
            at + "prompt is longer than " + std::to_string(Storyboard::kMaxPromptBytes) + " bytes");
}

}  // namespace

Storyboard::Storyboard(std::vector<StoryboardEntry> entries) {
    for (size_t i = 0; i < entries.size(); ++i) {
        check_entry(entries[i], "storyboard", i);
        set(entries[i]);
    }
}

Storyboard Storyboard::load(const std::string& path) {
    return from_json(read_json_file(path), path);
}

Storyboard Storyboard::from_json(const nlohmann::json& j, const std::string& where) {
    const nlohmann::json* list = &j;
    if (j.is_object()) {
        if (!j.contains("prompts"))
            throw CheckpointError(where, "", "storyboard has no 'prompts' array");
        list = &j["prompts"];
    }
    if (!list->is_array())
        throw CheckpointError(where, "", "storyboard 'prompts' must be an array");
    if (list->size() > kMaxEntries)
        throw CheckpointError(where, "",
                              "storyboard has more than " + std::to_string(kMaxEntries) + " entries");
    Storyboard s;
    for (size_t i = 0; i < list->size(); ++i) {
        const auto& e = (*list)[i];
        const std::string at = "storyboard entry " + std::to_string(i) + ": ";
        if (!e.is_object())
            throw CheckpointError(where, "", at + "must be an object {time, prompt}");
        StoryboardEntry entry;
        if (!e.contains("time") || !e["time"].is_number())
            throw CheckpointError(where, "", at + "'time' (seconds) must be a number");
        if (!e.contains("prompt") || !e["prompt"].is_string())
            throw CheckpointError(where, "", at + "'prompt' must be a string");
        entry.time = e["time"].get<double>();
        entry.prompt = e["prompt"].get<std::string>();
        check_entry(entry, where, i);
        s.set(entry);
    }
    return s;
}

nlohmann::json Storyboard::to_json() const {
    nlohmann::json list = nlohmann::json::array();
    for (const auto& e : entries_)
        list.push_back({{"time", e.time}, {"prompt", e.prompt}});
    return {{"prompts", list}};
}

void Storyboard::set(const StoryboardEntry& entry) {
    auto it = std::lower_bound(entries_.begin(), entries_.end(), entry.time,
                               [](const StoryboardEntry& e, double t) { return e.time < t; });
    if (it != entries_.end() && it->time == entry.time)
        it->prompt = entry.prompt;
    else
        entries_.insert(it, entry);
}

int64_t Storyboard::index_in_force(double t) const {
    if (entries_.empty())
        return -1;
    auto it = std::upper_bound(entries_.begin(), entries_.end(), t,
                               [](double time, const StoryboardEntry& e) { return time < e.time; });
    return it == entries_.begin() ? 0 : static_cast<int64_t>(it - entries_.begin()) - 1;
}

const std::string& Storyboard::in_force(double t) const {
    static const std::string kEmpty;
    const int64_t i = index_in_force(t);
    return i < 0 ? kEmpty : entries_[static_cast<size_t>(i)].prompt;
}

int64_t Storyboard::index_nearest(double t) const {
    if (entries_.empty())
        return -1;
    int64_t best = 0;
    for (size_t i = 1; i < entries_.size(); ++i)
        if (std::abs(entries_[i].time - t) < std::abs(entries_[static_cast<size_t>(best)].time - t))
            best = static_cast<int64_t>(i);
    return best;
}

}  // namespace memoreel
