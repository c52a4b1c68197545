// The trained memory a model config names ("memory": {"encoder", "weights", "lora"}): the encoder's settings
// and weights and the DiT's LoRA adapters trained with it, as `memoreel train` exports them. Shared by
// generation, evaluation and the memory training stages.
#pragma once

#include <string>

#include "model/config.h"
#include "model/memory_encoder.h"

namespace memoreel {

class VideoModel;

struct TrainedMemory {
    MemoryEncoderConfig encoder;  // its rates: the config's first memory_rates entry
    std::string weights;          // resolved path; empty when the config names no trained memory
    std::string lora;             // resolved path; may be empty
    bool present() const { return !weights.empty(); }
};

// Paths resolve as the model's networks do (ModelConfig::resolve_path).
TrainedMemory trained_memory(const ModelConfig& config, const std::string& weights_dir = "");

// An encoder over the model's DiT and VAE with weights loaded (none: the seeded initialisation), frozen, in
// eval mode, on the model's device.
MemoryEncoder frozen_memory_encoder(VideoModel& model,
                                    const MemoryEncoderConfig& config,
                                    const std::string& weights);

// Loads the LoRA into the model's DiT and merges it, so sampling costs nothing extra. No-op without one.
void merge_trained_lora(VideoModel& model, const TrainedMemory& memory);

}  // namespace memoreel
