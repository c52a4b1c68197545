// A terminal progress bar with rate and ETA. Draws in place on a TTY; on a pipe (CI, logs) prints a line at
// most every few seconds so logs stay short.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace memoreel {

class ProgressBar {
  public:
    // start: the position work begins at (a resumed run), so rate and ETA count only this run's work.
    ProgressBar(std::string label, int64_t total, std::string unit = "it", int64_t start = 0);
    ~ProgressBar();
    // Sets the position (absolute) and an optional suffix such as "loss 0.123".
    void update(int64_t done, const std::string& suffix = "");
    void finish(const std::string& suffix = "");

  private:
    void draw(bool force);

    std::string label_;
    int64_t total_;
    std::string unit_;
    int64_t done_ = 0;
    int64_t start_done_ = 0;
    std::string suffix_;
    bool tty_;
    bool finished_ = false;
    int64_t drawn_done_ = -1;  // what the last line showed, so finish() does not repeat it
    std::string drawn_suffix_;
    std::chrono::steady_clock::time_point start_;
    std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace memoreel
