// A training run's settings (configs/train/*.json): the stage, the model it starts from, the optimiser and
// schedule, logging/sample/checkpoint cadence, divergence limits, and the stage's own data and options as
// JSON sections that the stage reads with the same field checking. Torch-free.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace memoreel {

struct TrainConfig {
    std::string source_path;  // the file it came from (errors name it)
    std::string stage;        // tokenizer | vae | base | memory | ar
    // The run's subfolder for this stage's checkpoints, metrics and samples (empty: the stage name). A second
    // run of a stage on the same run folder (a decoder fine-tune after the VAE) gets its own.
    std::string folder;
    // The model config the run starts from when its assembled model folder (<run>/model) does not exist yet.
    // Relative paths in a train config resolve against the working directory (the project root).
    std::string model = "configs/models/memoreel-tiny.json";

    int64_t steps = 1000;
    int64_t batch = 1;  // per process
    double lr = 1e-4;
    int64_t warmup = 0;           // linear warm-up steps, then cosine decay
    double final_lr_ratio = 0.1;  // the cosine ends at lr * final_lr_ratio
    double weight_decay = 0.01;   // decoupled (AdamW), on matrices only
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
    double grad_clip = 1.0;  // global norm; 0 disables
    uint64_t seed = 0;
    int threads = 0;  // CPU threads; 0: all cores
    // Exponential moving average of the trained weights, what samples and the exported model use (0: off,
    // the last step's weights). Small batches make the last step's weights noisy; the average is not.
    double ema_decay = 0;
    // Learning-rate multipliers by trained-tensor name prefix, e.g. {"text_encoder.": 10}: a text encoder
    // that starts over under a warm-started DiT learns at its own pace.
    std::map<std::string, double> lr_scale;
    // "bf16": each step's forward runs under autocast (matrix products in bfloat16, weights and optimiser
    // fp32); "fp32": everything fp32.
    std::string precision = "fp32";
    // Warm start: a run that starts without a checkpoint first copies the tensors named with one of
    // init_prefixes (e.g. "dit.") from init_from, a checkpoint's weights.safetensors or ema.safetensors; the
    // rest start as the stage builds them. Used to keep a trained DiT while its text encoder starts over.
    std::string init_from;
    std::vector<std::string> init_prefixes;

    int64_t log_every = 10;          // JSONL metrics line every N steps
    int64_t sample_every = 0;        // sample videos every N steps (0: only at the end)
    int64_t checkpoint_every = 100;  // checkpoint every N steps (and at the end)
    int64_t keep_checkpoints = 2;

    // Divergence: a non-finite loss or gradient always stops the run; so does a loss EMA above
    // divergence_factor x the lowest EMA seen (after warm-up), or a single loss above divergence_loss.
    double divergence_factor = 20.0;
    double divergence_loss = 1e4;

    nlohmann::json data;     // stage-specific: where the examples come from
    nlohmann::json options;  // stage-specific: what is trained and how

    static TrainConfig load(const std::string& path);
    static TrainConfig from_json(const nlohmann::json& j, const std::string& where);
    nlohmann::json to_json() const;
};

// The learning rate at step (1-based): linear warm-up to lr, then cosine decay to lr * final_lr_ratio.
double scheduled_lr(const TrainConfig& config, int64_t step);

}  // namespace memoreel
