#include "model/process_memory.h"

#include <fstream>
#include <string>

namespace memoreel {

namespace {

double status_mb(const std::string& field) {
    std::ifstream in("/proc/self/status");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind(field, 0) == 0)
            return std::stod(line.substr(field.size())) / 1024.0;  // the kernel reports kB
    return 0;
}

}  // namespace

double resident_mb() {
    return status_mb("VmRSS:");
}

double peak_resident_mb() {
    return status_mb("VmHWM:");
}

}  // namespace memoreel
