// Exports a model folder (a model.json and the weights it names, e.g. a training run's `<run>/model`) into a
// self-contained folder: every network as one safetensors file with its floating-point tensors converted
// (bf16 for the bundled default), the tokenizer copied, and a model.json whose paths name the new files. This
// is how `models/memoreel-tiny/` is made from `runs/tiny/model/`.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>

namespace memoreel {

struct ExportedFile {
    std::string file;  // name inside the folder
    int64_t bytes = 0;
    int64_t tensors = 0;
};

// description: written into model.json (empty: keep none). Returns what was written, by role (dit, vae,
// text_encoder, tokenizer, memory, lora). Throws CheckpointError naming a missing or unreadable file.
std::map<std::string, ExportedFile> export_model_folder(const std::string& model_json,
                                                        const std::string& out_dir,
                                                        torch::Dtype dtype,
                                                        const std::string& description = "");

}  // namespace memoreel
