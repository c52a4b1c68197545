#include "model/trained_memory.h"

#include "model/checkpoint.h"
#include "model/lora.h"
#include "model/video_model.h"

namespace memoreel {

TrainedMemory trained_memory(const ModelConfig& config, const std::string& weights_dir) {
    TrainedMemory m;
    if (config.memory_encoder.is_object())
        m.encoder = MemoryEncoderConfig::from_json(config.memory_encoder, config.source_path);
    m.encoder.set_rates(parse_rates(config.memory_rates.substr(0, config.memory_rates.find(','))));
    m.weights = config.resolve_path(config.memory_weights, weights_dir);
    m.lora = config.resolve_path(config.lora_weights, weights_dir);
    return m;
}

MemoryEncoder frozen_memory_encoder(VideoModel& model,
                                    const MemoryEncoderConfig& config,
                                    const std::string& weights) {
    MemoryEncoder encoder(config, model.dit_module(), model.vae_module());
    if (!weights.empty())
        load_module(*encoder, TensorSource::open(weights));
    encoder->eval();
    encoder->to(model.device());
    for (auto& p : encoder->parameters())
        p.set_requires_grad(false);
    return encoder;
}

void merge_trained_lora(VideoModel& model, const TrainedMemory& memory) {
    if (memory.lora.empty())
        return;
    load_lora(memory.lora, model.dit());
    model.dit().to(model.device());
    merge_lora(model.dit());
}

}  // namespace memoreel
