// LoRA over a whole network: attach adapters to its memoreel::Linear layers, train them, save/load them as a
// separate safetensors file, merge them into the base weights and unmerge them again.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

namespace memoreel {

struct LoRAOptions {
    int64_t rank = 16;
    double alpha = 16.0;
    // Which layers get an adapter, by full dotted name (e.g. "blocks.3.self_attn.q"). Default: every Linear.
    std::function<bool(const std::string&)> select;
};

// Attaches adapters; returns the names of the layers that got one.
std::vector<std::string> attach_lora(torch::nn::Module& network, const LoRAOptions& options);
void detach_lora(torch::nn::Module& network);
// The adapter parameters (for an optimizer), with their full names.
std::vector<std::pair<std::string, torch::Tensor>> lora_parameters(const torch::nn::Module& network);
void merge_lora(torch::nn::Module& network);
void unmerge_lora(torch::nn::Module& network);

// Saves the adapters as `<layer>.lora_down` [rank,in] and `<layer>.lora_up` [out,rank] with rank and alpha in
// the metadata.
void save_lora(const std::string& path, const torch::nn::Module& network);
// Loads adapters into the network, attaching them where absent. Accepts this project's names and the common
// community layouts: PEFT (`<layer>.lora_A.weight` / `lora_B.weight`, optional `base_model.model.` and
// `diffusion_model.` prefixes, `.default`) and kohya (`lora_down.weight` / `lora_up.weight` with `.alpha`).
// Every adapter in the file must match a Linear layer of the network; shapes are checked.
void load_lora(const std::string& path, torch::nn::Module& network, double strength = 1.0);

}  // namespace memoreel
