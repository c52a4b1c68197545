// Checkpoints as torch tensors: one safetensors file, a sharded folder with a `*.safetensors.index.json`, or
// the official Wan folder layout (config.json + shards + index). Loading into a module is strict by default:
// every parameter and buffer must be present with its exact shape, and nothing unexpected may be left over.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/safetensors.h"

namespace memoreel {

torch::Dtype to_torch_dtype(DType dtype, const std::string& file, const std::string& tensor);
DType from_torch_dtype(torch::Dtype dtype);

// A lazily read set of named tensors spread over one or more safetensors files. Tensors are copied out of the
// mapping only when asked for, so a 20 GB sharded model is read one tensor at a time.
class TensorSource {
  public:
    // path: a .safetensors file, or a folder holding either an index json or exactly one .safetensors file.
    static TensorSource open(const std::string& path);
    // Several files as one source (names must not repeat).
    static TensorSource from_files(const std::vector<std::string>& files, const std::string& description);

    const std::string& description() const { return description_; }
    std::vector<std::string> names() const;
    bool has(const std::string& name) const { return where_.count(name) != 0; }
    // The file that holds a tensor (for error messages).
    const std::string& file_of(const std::string& name) const;
    const TensorInfo& info(const std::string& name) const;
    // An owned copy of the tensor (its stored dtype), or throws CheckpointError naming the file and tensor.
    torch::Tensor get(const std::string& name) const;
    // Metadata of the first file (the index's `metadata` when there is one).
    const std::map<std::string, std::string>& metadata() const { return metadata_; }

  private:
    std::string description_;
    std::vector<std::shared_ptr<SafetensorsFile>> files_;
    std::map<std::string, size_t> where_;
    std::map<std::string, std::string> metadata_;
};

struct LoadOptions {
    // Prefix added to every module name to get the checkpoint name (e.g. "weights.").
    std::string prefix;
    // Maps a checkpoint name (after the prefix is removed) to the module's name, for other naming
    // conventions.
    std::function<std::string(const std::string&)> rename;
    // Module names allowed to be absent from the checkpoint (kept as initialised), e.g. LoRA factors.
    std::function<bool(const std::string&)> may_be_missing;
    // When false, tensors in the source (under the prefix) that the module lacks are an error.
    bool allow_unexpected = false;
};

// Copies tensors into the module's parameters and buffers (converting dtype, keeping the module's device).
// Errors name the file and the tensor: missing names, unexpected names, shape mismatches.
void load_module(torch::nn::Module& module, const TensorSource& source, const LoadOptions& options = {});

// Named tensors of a module: parameters then buffers, with their full dotted names.
std::vector<std::pair<std::string, torch::Tensor>> module_tensors(const torch::nn::Module& module);

// Writes named tensors to one safetensors file, atomically. Tensors are stored as they are (contiguous CPU
// copies); pass `as` to convert floating-point tensors (e.g. to BF16 for the bundled checkpoints).
void save_tensors(const std::string& path,
                  const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                  const std::map<std::string, std::string>& metadata = {},
                  std::optional<torch::Dtype> as = std::nullopt);

// Writes a sharded checkpoint folder in the standard layout: `<stem>-0000i-of-0000n.safetensors` files of at
// most max_shard_bytes each plus `<stem>.safetensors.index.json` ({"metadata": {...}, "weight_map": {name:
// file}}).
void save_sharded(const std::string& folder,
                  const std::string& stem,
                  const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                  uint64_t max_shard_bytes,
                  const std::map<std::string, std::string>& metadata = {});

}  // namespace memoreel
