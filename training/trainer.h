// The training loop every stage shares: AdamW with warm-up + cosine schedule and gradient clipping, data
// parallel gradient averaging, an optional moving average of the weights (what samples and the export use),
// JSONL metrics, periodic samples, atomic checkpoints with exact resume, and divergence detection.
//
// Exact resume: a step's randomness comes from a generator seeded by (seed, step, rank) alone, and a
// checkpoint holds the trainable weights, the optimiser state and the weight average, so a resumed run
// computes the same steps as an uninterrupted one. A checkpoint of step s is written once step s+1's forward
// and backward have shown that its weights give a finite, non-divergent loss (and before step s+1 updates
// them), so the last checkpoint on disk is always a good one: a diverging run stops with a message naming it.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "training/train_config.h"

namespace memoreel {

class DataParallel;

struct StepOutput {
    torch::Tensor loss;                     // scalar with a graph to the trainable parameters
    std::map<std::string, double> metrics;  // extra figures for the metrics file (averaged over processes)
};

// One stage of training: what it trains, the loss of a step, samples, and what it exports.
class TrainStage {
  public:
    virtual ~TrainStage() = default;
    // The parameters it trains, with unique names (checkpoints store them under these names). Same order and
    // shapes in every process.
    virtual std::vector<std::pair<std::string, torch::Tensor>> trainable() = 0;
    // The loss of one batch for step (1-based), its randomness drawn from gen only.
    virtual StepOutput forward(int64_t step, torch::Generator& gen) = 0;
    // Writes samples (videos, images) of the current weights into dir. Rank 0 only.
    virtual void sample(int64_t step, const std::string& dir) {
        (void)step;
        (void)dir;
    }
    // Writes the trained networks into the assembled model folder (and its model.json). Rank 0 only.
    virtual void export_model(const std::string& model_dir) = 0;
};

struct TrainProgress {
    int64_t step = 0;
    int64_t total = 0;
    int64_t first_step =
        1;  // the first step this process ran (after a resume: the step after the checkpoint)
    double loss = 0;
    double loss_ema = 0;
    double lr = 0;
    double grad_norm = 0;
    double seconds = 0;  // since this process started training
};

struct TrainerOptions {
    std::string stage_dir;  // checkpoints/, metrics.jsonl, samples/, config.json
    std::string model_dir;  // the assembled model folder the stage exports into
    bool restart = false;   // ignore (and replace) existing checkpoints
    // Test hook: end the process abruptly (std::_Exit(137), no clean-up, like SIGKILL) right after this
    // step's update. 0: never.
    int64_t exit_after = 0;
    DataParallel* parallel = nullptr;
    std::function<void(const TrainProgress&)> on_step;
    std::function<void(const std::string&)> on_event;  // resumed, checkpoint written, sample written ...
};

struct TrainResult {
    int64_t first_step = 1;
    int64_t last_step = 0;
    double seconds = 0;
    double loss_ema = 0;
    std::string checkpoint;  // the final checkpoint folder
};

// Thrown when the loss or the gradients diverge. The message names the step, the figure and the last good
// checkpoint (kept on disk).
class DivergenceError : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

TrainResult run_training(TrainStage& stage, const TrainConfig& config, const TrainerOptions& options);

// The step of the latest checkpoint in stage_dir (0 when there is none).
int64_t latest_checkpoint_step(const std::string& stage_dir);
std::string checkpoint_dir(const std::string& stage_dir, int64_t step);

// Mixes (seed, step, rank) into the seed of that step's generator.
uint64_t step_seed(uint64_t seed, int64_t step, int rank);

}  // namespace memoreel
