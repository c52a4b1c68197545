// `memoreel eval retrieval`: how well a model's compressed memory lets the DiT bring back frames of a history
// (the paper's table 1). For each held-out clip: encode a history of history_seconds through the VAE and the
// memory encoder, then, with only the memory as context, sample the latent frames at positions spread evenly
// over the whole history at their true times (the retrieval objective's setting, noise to clean with the
// model's sampler), and compare each retrieved frame with the original latent frame, both decoded by the VAE
// as a single image: PSNR and SSIM (scikit-image's definition, training/image_metrics.h) per position bucket
// (by relative position in the history) and overall. The VAE's own error is left out of the comparison,
// so the figures measure the memory. LPIPS is not reported: no LPIPS weights exist offline.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "training/training_data.h"

namespace memoreel {

struct RetrievalEvalOptions {
    std::vector<std::string> models;           // model.json files (each with its trained memory)
    WorldDataOptions world{4, 900001, 14.0};   // held-out stories (training uses low seeds)
    MediaDataOptions media{"", "eval", 10.0};  // the eval split of a fetched-media manifest (optional)
    double history_seconds = 12.0;
    int64_t positions = 8;  // retrieved latent frames per clip, evenly spread
    int64_t buckets = 4;
    int64_t per_section = 4;  // retrieved frames sampled together (the training k)
    double guidance = 1.0;    // 1: no classifier-free guidance (the memory alone decides)
    int64_t steps = 0;        // sampler steps (0: the model's)
    uint64_t seed = 1;
    // Adds a first row: the first model's DiT without memory or LoRA, each frame sampled from the caption
    // alone at its time (the floor every memory row is read against).
    bool no_memory_row = false;
    std::string images;  // folder for retrieved | original PNGs (empty: none)
};

// Runs the evaluation; returns {"models": [{"model", "memory", "clips": [...], "buckets": [...],
// "overall"}]}. progress(line) receives one line per clip.
nlohmann::json evaluate_retrieval(const RetrievalEvalOptions& options,
                                  const std::function<void(const std::string&)>& progress = {});

// The table evaluate_retrieval's JSON describes, as Markdown (one row per model: overall, per source, per
// position bucket).
std::string retrieval_table(const nlohmann::json& result);

}  // namespace memoreel
