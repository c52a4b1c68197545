// The process's resident memory, from /proc/self/status (Linux), for progress lines, benchmarks and the
// server's /metrics (torch-free, in memoreel_format).
#pragma once

namespace memoreel {

// Current resident set size in MB (VmRSS), 0 where /proc is unavailable.
double resident_mb();
// Peak resident set size in MB (VmHWM).
double peak_resident_mb();

}  // namespace memoreel
