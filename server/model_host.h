// The one model a server process serves (DESIGN.md section 4): the Wan-family model with its trained memory
// (encoder weights, LoRA merged into the DiT), loaded once and shared by every session. Only the inference
// worker's thread runs it.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "model/ar_session.h"
#include "model/video_model.h"

namespace memoreel {

struct ModelHostOptions {
    std::string model = "models/memoreel-tiny/model.json";
    std::string weights;  // folder of the weights (default: the config's folder)
    std::string device = "cpu";
    std::string dtype = "fp32";  // fp32 | bf16
};

class ModelHost {
  public:
    // Throws with the file and the problem (a bad config, missing weights, no CUDA).
    explicit ModelHost(const ModelHostOptions& options);

    const ModelConfig& config() const { return model_->config(); }
    const std::string& name() const { return name_; }
    VideoModel& model() { return *model_; }
    // False when the config names no trained memory and does not allow random weights.
    bool has_memory() const { return !encoders_.empty(); }
    bool memory_trained() const { return memory_trained_; }
    int64_t default_window() const { return config().memory_window; }
    std::string memory_rates() const;

    // A new autoregressive session over the shared model (memory encoders shared too: they are frozen and
    // keep no per-session state).
    std::unique_ptr<ARSession> make_session(Storyboard storyboard, SessionSettings settings);
    // DiT tokens of one latent frame at this size: what a history frame would cost uncompressed.
    int64_t tokens_per_latent_frame(int64_t width, int64_t height) const;

  private:
    std::unique_ptr<VideoModel> model_;
    std::vector<MemoryEncoder> encoders_;
    std::string name_;
    bool memory_trained_ = false;
};

}  // namespace memoreel
