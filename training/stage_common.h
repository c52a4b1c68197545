// What every training stage shares: where the run keeps its assembled model, how a stage reads its data
// section, the text embedding of a batch of captions (with gradients when the text encoder trains), and
// writing sample videos.
//
// A run folder holds one folder per stage (checkpoints, metrics, samples) and `model/`: the assembled model
// (model.json + weights) that each finished stage exports into and the next stage starts from. `model/` is a
// model folder like the bundled default: `memoreel generate --model <run>/model/model.json` runs it.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/video_model.h"
#include "training/train_config.h"
#include "training/training_data.h"

namespace memoreel {

class DataParallel;
class JsonFields;

struct StageEnvironment {
    TrainConfig config;
    std::string run_dir;
    torch::Device device = torch::kCPU;
    DataParallel* parallel = nullptr;
    int rank = 0;

    std::string model_dir() const;          // <run>/model
    std::string stage_dir() const;          // <run>/<folder>, default <run>/<stage>
    std::string model_config_path() const;  // <run>/model/model.json
    bool has_run_model() const;
    // The run's assembled model config, or the train config's model when the run has none yet.
    ModelConfig model_config() const;
    // The folder its weight paths resolve against: the run's model folder (model_config() rewrites the paths
    // of a starting model found elsewhere).
    std::string weights_dir() const;
    // Where the run's latent cache lives: data.latent_cache (runs of variants share their base run's) or
    // <run>/latents.
    std::string latent_cache_dir() const;
    // Loads the model the stage starts from (fp32, on the device, all parameters frozen).
    std::unique_ptr<VideoModel> load_model() const;
};

// Changes one stage's fields in <model_dir>/model.json and writes it atomically; allow_random is turned off
// once every network has weights. The file is read again here rather than taken from the stage's start: a
// stage that ran meanwhile on the same run folder (a text stage beside a VAE stage) has exported its own
// weights into it, and writing back the whole config read at start would drop them. started_with is used
// when the run has no model.json yet.
void update_run_model_config(const std::string& model_dir,
                             const ModelConfig& started_with,
                             const std::function<void(ModelConfig&)>& change);
// Saves a module's tensors to <model_dir>/<file> (fp32; the bundle step converts).
void save_network(const std::string& model_dir, const std::string& file, const torch::nn::Module& module);

// The VAE tensors that decide the latents: the encoder and conv1 (mu, log_var); conv2 and the decoder only
// read them.
bool is_vae_encoder_tensor(const std::string& name);

// Reads "world": {"stories", "seed", "seconds"} and "media": {"manifest", "split", "window_seconds"} from a
// stage's data section (where names the train config for errors).
WorldDataOptions world_data_options(const nlohmann::json& data, const std::string& where);
MediaDataOptions media_data_options(const nlohmann::json& data, const std::string& where);

// Captions -> the DiT's text embedding [B, text_len, dim]. With grad, gradients reach the text encoder and
// the DiT's text MLP (when their parameters require them).
torch::Tensor embed_captions(VideoModel& model, const std::vector<std::string>& captions);

// Writes [3, T, H, W] frames in [-1, 1] as an MP4.
void write_video(const std::string& path, const torch::Tensor& frames, int fps);

// The latent cache of a run (<latent_cache_dir>/<name>), built from the data section when missing (rank 0
// builds, the others wait), and tied to the VAE that encoded it: a cache made by other VAE weights is an
// error.
std::vector<std::string> ensure_latent_cache(const StageEnvironment& env,
                                             VideoModel& model,
                                             const WorldDataOptions& world,
                                             const MediaDataOptions& media);

}  // namespace memoreel
