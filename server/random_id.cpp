#include "server/random_id.h"

#include <random>

namespace memoreel {

std::string random_hex(size_t bytes, const std::string& prefix) {
    static constexpr char kHex[] = "0123456789abcdef";
    std::random_device device;
    std::string out = prefix;
    for (size_t i = 0; i < bytes; ++i) {
        const unsigned v = device() & 0xffu;
        out += kHex[v >> 4];
        out += kHex[v & 15u];
    }
    return out;
}

}  // namespace memoreel
