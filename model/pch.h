// The one precompiled header of the project: every torch translation unit reuses it (REUSE_FROM).
#pragma once
#include <torch/torch.h>

#include <spdlog/spdlog.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>
