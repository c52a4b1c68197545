// Unguessable identifiers and tokens (session ids, session tokens, job ids, event ids made for REST
// prompts): hex digits from std::random_device, the OS's entropy, never a seeded generator, since an id or a
// token is all a client needs to read or steer a session. Torch-free.
#pragma once

#include <string>

namespace memoreel {

// 2 * bytes random hex characters after `prefix`.
std::string random_hex(size_t bytes, const std::string& prefix = "");

}  // namespace memoreel
