// A storyboard: timestamped prompts. The prompt in force at time t is the latest entry that starts at or
// before t (the first entry before any start). Torch-free: the server, the trainer and the CLI all read
// storyboards.
//
// File format (JSON): {"prompts": [{"time": 0, "prompt": "a green fox walks into a red room"},
//                                  {"time": 4.5, "prompt": "cut to the beach"}]}
// A bare array of such entries is accepted too. Times are seconds from the start of the video.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace memoreel {

struct StoryboardEntry {
    double time = 0;  // seconds
    std::string prompt;
};

class Storyboard {
  public:
    static constexpr size_t kMaxPromptBytes = 2000;
    static constexpr size_t kMaxEntries = 10000;

    Storyboard() = default;
    explicit Storyboard(std::vector<StoryboardEntry> entries);

    // Reads and validates a storyboard file; errors name the file and the entry.
    static Storyboard load(const std::string& path);
    // where: a name for error messages (a file, "request").
    static Storyboard from_json(const nlohmann::json& j, const std::string& where);
    nlohmann::json to_json() const;

    // Adds an entry; an entry at the same time is replaced (the newest word for that moment wins).
    void set(const StoryboardEntry& entry);
    const std::vector<StoryboardEntry>& entries() const { return entries_; }
    bool empty() const { return entries_.empty(); }

    // Index of the entry in force at time t; -1 when the storyboard is empty.
    int64_t index_in_force(double t) const;
    const std::string& in_force(double t) const;
    // Index of the entry whose start is nearest to t (ties go to the earlier entry); -1 when empty.
    int64_t index_nearest(double t) const;

  private:
    std::vector<StoryboardEntry> entries_;  // sorted by time, unique times
};

}  // namespace memoreel
