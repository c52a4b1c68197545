#include "model/model_export.h"

#include <filesystem>

#include "model/checkpoint.h"
#include "model/config.h"
#include "model/json_util.h"

namespace fs = std::filesystem;

namespace memoreel {

std::map<std::string, ExportedFile> export_model_folder(const std::string& model_json,
                                                        const std::string& out_dir,
                                                        torch::Dtype dtype,
                                                        const std::string& description) {
    ModelConfig c = ModelConfig::load(model_json);
    const std::string from = fs::path(model_json).parent_path().string();
    if (fs::exists(out_dir) && fs::equivalent(fs::absolute(from.empty() ? "." : from), fs::absolute(out_dir)))
        throw std::invalid_argument("export: the output folder is the model's own folder (" + out_dir + ")");
    fs::create_directories(out_dir);
    std::map<std::string, ExportedFile> written;
    const auto network = [&](const std::string& role, std::string& path, const std::string& name) {
        if (path.empty())
            return;
        const std::string source = c.resolve_path(path, from);
        const TensorSource in = TensorSource::open(source);
        std::vector<std::pair<std::string, torch::Tensor>> tensors;
        for (const auto& n : in.names())
            tensors.emplace_back(n, in.get(n));
        std::map<std::string, std::string> metadata = in.metadata();
        metadata["exported_from"] = fs::path(source).filename().string();
        const std::string target = (fs::path(out_dir) / name).string();
        save_tensors(target, tensors, metadata, dtype);
        written[role] = {name, static_cast<int64_t>(fs::file_size(target)),
                         static_cast<int64_t>(tensors.size())};
        path = name;
    };
    network("dit", c.dit_weights, "dit.safetensors");
    network("vae", c.vae_weights, "vae.safetensors");
    network("text_encoder", c.text_encoder_weights, "text_encoder.safetensors");
    network("memory", c.memory_weights, "memory_encoder.safetensors");
    network("lora", c.lora_weights, "lora.safetensors");
    if (!c.tokenizer.empty() && c.tokenizer != "byte") {
        const std::string source = c.resolve_path(c.tokenizer, from);
        if (!fs::exists(source))
            throw CheckpointError(source, "", "the tokenizer named by " + model_json + " does not exist");
        const std::string target = (fs::path(out_dir) / "tokenizer.model").string();
        fs::copy_file(source, target, fs::copy_options::overwrite_existing);
        written["tokenizer"] = {"tokenizer.model", static_cast<int64_t>(fs::file_size(target)), 0};
        c.tokenizer = "tokenizer.model";
    }
    nlohmann::json j = c.to_json();
    if (!description.empty())
        j["description"] = description;
    write_file_atomic((fs::path(out_dir) / "model.json").string(), j.dump(2) + "\n");
    return written;
}

}  // namespace memoreel
