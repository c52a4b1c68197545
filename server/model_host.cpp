#include "server/model_host.h"

#include <spdlog/spdlog.h>

#include "model/trained_memory.h"

namespace memoreel {

ModelHost::ModelHost(const ModelHostOptions& o) {
    if (o.dtype != "fp32" && o.dtype != "bf16")
        throw std::invalid_argument("dtype must be fp32 or bf16, got " + o.dtype);
    const ModelConfig config = ModelConfig::load(o.model);
    model_ = std::make_unique<VideoModel>(config, o.weights, parse_device(o.device),
                                          o.dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32);
    name_ = config.name;
    const TrainedMemory trained = trained_memory(config, o.weights);
    if (trained.present()) {
        merge_trained_lora(*model_, trained);
        encoders_.push_back(frozen_memory_encoder(*model_, trained.encoder, trained.weights));
        memory_trained_ = true;
    } else if (config.allow_random_weights) {
        MemoryEncoderConfig mc = trained.encoder;
        mc.set_rates(parse_rates(config.memory_rates));
        encoders_.push_back(frozen_memory_encoder(*model_, mc, ""));
        spdlog::warn("{}: no trained memory in the model config; the memory encoder is untrained", o.model);
    } else {
        spdlog::warn("{}: no trained memory; sessions run without compressed memory", o.model);
    }
}

std::string ModelHost::memory_rates() const {
    return encoders_.empty() ? std::string() : encoders_.front()->config().rates().str();
}

std::unique_ptr<ARSession> ModelHost::make_session(Storyboard storyboard, SessionSettings settings) {
    if (settings.use_memory && encoders_.empty())
        throw std::invalid_argument("this model has no memory encoder: start the session with memory off");
    return std::make_unique<ARSession>(*model_,
                                       settings.use_memory ? encoders_ : std::vector<MemoryEncoder>{},
                                       std::move(storyboard), std::move(settings));
}

int64_t ModelHost::tokens_per_latent_frame(int64_t width, int64_t height) const {
    const ModelConfig& c = config();
    const int64_t sf = c.vae.spatial_factor();
    return (height / sf / c.dit.patch_size[1]) * (width / sf / c.dit.patch_size[2]);
}

}  // namespace memoreel
