#include "cli/progress_bar.h"

#include <unistd.h>

#include <cstdio>

namespace memoreel {

namespace {

std::string format_seconds(double s) {
    if (s < 0 || s > 1e7)
        return "?";
    char buf[32];
    const int total = static_cast<int>(s + 0.5);
    if (total >= 3600)
        std::snprintf(buf, sizeof(buf), "%d:%02d:%02d", total / 3600, (total / 60) % 60, total % 60);
    else
        std::snprintf(buf, sizeof(buf), "%02d:%02d", total / 60, total % 60);
    return buf;
}

}  // namespace

ProgressBar::ProgressBar(std::string label, int64_t total, std::string unit, int64_t start)
    : label_(std::move(label)),
      total_(total),
      unit_(std::move(unit)),
      done_(start),
      start_done_(start),
      tty_(::isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {
    draw(true);
}

ProgressBar::~ProgressBar() {
    if (!finished_)
        finish();
}

void ProgressBar::update(int64_t done, const std::string& suffix) {
    done_ = done;
    suffix_ = suffix;
    draw(done_ >= total_);
}

void ProgressBar::finish(const std::string& suffix) {
    if (finished_)
        return;
    if (!suffix.empty())
        suffix_ = suffix;
    // The last update usually drew the final state already; a log should not show it twice.
    if (drawn_done_ != done_ || drawn_suffix_ != suffix_)
        draw(true);
    if (tty_)
        std::fputc('\n', stderr);
    finished_ = true;
}

void ProgressBar::draw(bool force) {
    const auto now = std::chrono::steady_clock::now();
    const double since_draw = std::chrono::duration<double>(now - last_draw_).count();
    if (!force && since_draw < (tty_ ? 0.1 : 5.0))
        return;
    last_draw_ = now;
    drawn_done_ = done_;
    drawn_suffix_ = suffix_;
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    const double rate = elapsed > 0 ? (done_ - start_done_) / elapsed : 0.0;
    const double eta = (rate > 0 && total_ > done_) ? (total_ - done_) / rate : 0.0;
    const double frac = total_ > 0 ? static_cast<double>(done_) / total_ : 1.0;
    constexpr int kWidth = 28;
    std::string bar(kWidth, ' ');
    for (int i = 0; i < static_cast<int>(frac * kWidth + 1e-9) && i < kWidth; ++i)
        bar[i] = '#';
    char rate_text[48];
    if (rate >= 1.0 || rate == 0.0)
        std::snprintf(rate_text, sizeof(rate_text), "%.2f %s/s", rate, unit_.c_str());
    else
        std::snprintf(rate_text, sizeof(rate_text), "%.2f s/%s", 1.0 / rate, unit_.c_str());
    std::fprintf(stderr, "%s%s [%s] %lld/%lld %3.0f%% %s elapsed %s eta %s%s%s", tty_ ? "\r\033[K" : "",
                 label_.c_str(), bar.c_str(), static_cast<long long>(done_), static_cast<long long>(total_),
                 frac * 100.0, rate_text, format_seconds(elapsed).c_str(), format_seconds(eta).c_str(),
                 suffix_.empty() ? "" : "  ", suffix_.c_str());
    if (!tty_)
        std::fputc('\n', stderr);
    std::fflush(stderr);
}

}  // namespace memoreel
