// `memoreel eval consistency`: long held-out world storyboards generated section by section with the AR
// session under several settings, each scored against the world's ground truth
// (training/consistency_metric.h: do returning places and characters look as they did before?). The paper's
// table 2 in miniature:
//  - full memory: the model with its trained memory (and the window it was fine-tuned with);
//  - memory without pretraining: a model whose `ar` stage started from a fresh encoder ("init": "scratch");
//  - window only: the full model's weights, no memory, a sliding window of recent latent frames;
//  - no history: the full model's weights, no memory, no window (each section sees only its prompt).
// Every setting generates the same stories with the same noise seed.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "training/training_data.h"

namespace memoreel {

struct ConsistencySetting {
    std::string name;
    std::string model;       // model.json
    bool use_memory = true;  // the model's trained memory
    int64_t window = -1;     // latent frames (-1: the model's memory window)
};

struct ConsistencyEvalOptions {
    std::vector<ConsistencySetting> settings;
    WorldDataOptions world{3, 910001, 30.0};  // held-out long stories (training uses low seeds)
    int64_t steps = 0;                        // sampler steps (0: the model's)
    double horizon = 0;                       // latent frames (0: unlimited), as generate's --horizon
    uint64_t seed = 1;
    int64_t frame_stride = 4;  // score every n-th frame (4 fps at 16 fps)
    std::string videos;        // folder for the generated MP4s (empty: none written)
};

// The four settings of table 2 from a full model (and, when given, its from-scratch counterpart).
std::vector<ConsistencySetting> table2_settings(const std::string& full_model,
                                                const std::string& scratch_model,
                                                int64_t window_only);

// Runs the evaluation: {"settings": [{"name", "model", "memory", "window", "stories": [...], "overall"}],
// "metric"}. progress(line) gets one line per generated story.
nlohmann::json evaluate_consistency(const ConsistencyEvalOptions& options,
                                    const std::function<void(const std::string&)>& progress = {});

// The table evaluate_consistency's JSON describes, as Markdown (one row per setting).
std::string consistency_table(const nlohmann::json& result);

}  // namespace memoreel
