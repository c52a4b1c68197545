#include "model/checkpoint.h"

#include <filesystem>
#include <set>

#include "model/json_util.h"

namespace fs = std::filesystem;

namespace memoreel {

namespace {
bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() > suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

torch::Dtype to_torch_dtype(DType dtype, const std::string& file, const std::string& tensor) {
    switch (dtype) {
        case DType::F64:
            return torch::kFloat64;
        case DType::F32:
            return torch::kFloat32;
        case DType::F16:
            return torch::kFloat16;
        case DType::BF16:
            return torch::kBFloat16;
        case DType::I64:
            return torch::kInt64;
        case DType::I32:
            return torch::kInt32;
        case DType::I16:
            return torch::kInt16;
        case DType::I8:
            return torch::kInt8;
        case DType::U8:
            return torch::kUInt8;
        case DType::BOOL:
            return torch::kBool;
    }
    throw CheckpointError(file, tensor, "unsupported dtype");
}

DType from_torch_dtype(torch::Dtype dtype) {
    switch (dtype) {
        case torch::kFloat64:
            return DType::F64;
        case torch::kFloat32:
            return DType::F32;
        case torch::kFloat16:
            return DType::F16;
        case torch::kBFloat16:
            return DType::BF16;
        case torch::kInt64:
            return DType::I64;
        case torch::kInt32:
            return DType::I32;
        case torch::kInt16:
            return DType::I16;
        case torch::kInt8:
            return DType::I8;
        case torch::kUInt8:
            return DType::U8;
        case torch::kBool:
            return DType::BOOL;
        default:
            throw std::runtime_error(std::string("no safetensors dtype for ") + c10::toString(dtype));
    }
}

TensorSource TensorSource::from_files(const std::vector<std::string>& files, const std::string& description) {
    TensorSource src;
    src.description_ = description;
    for (const auto& path : files) {
        auto file = SafetensorsFile::open(path);
        for (const auto& t : file->tensors()) {
            auto [it, inserted] = src.where_.emplace(t.name, src.files_.size());
            if (!inserted)
                throw CheckpointError(path, t.name, "also present in " + src.files_[it->second]->path());
        }
        if (src.files_.empty())
            src.metadata_ = file->metadata();
        src.files_.push_back(std::move(file));
    }
    return src;
}

TensorSource TensorSource::open(const std::string& path) {
    std::error_code ec;
    if (!fs::exists(path, ec))
        throw CheckpointError(path, "", "does not exist");
    if (!fs::is_directory(path, ec))
        return from_files({path}, path);

    std::vector<fs::path> indexes, shards;
    fs::directory_iterator listing(path, ec);
    if (ec)
        throw CheckpointError(path, "", "cannot list the folder: " + ec.message());
    for (const auto& entry : listing) {
        const std::string name = entry.path().filename().string();
        if (ends_with(name, ".safetensors.index.json"))
            indexes.push_back(entry.path());
        else if (ends_with(name, ".safetensors"))
            shards.push_back(entry.path());
    }
    std::sort(indexes.begin(), indexes.end());
    std::sort(shards.begin(), shards.end());
    if (indexes.size() > 1)
        throw CheckpointError(path, "",
                              "holds several *.safetensors.index.json files; point at one model folder");
    if (indexes.empty()) {
        if (shards.size() != 1)
            throw CheckpointError(path, "",
                                  shards.empty()
                                      ? "holds no .safetensors file"
                                      : "holds several .safetensors files but no *.safetensors.index.json");
        return from_files({shards[0].string()}, path);
    }
    const std::string index_path = indexes[0].string();
    const nlohmann::json index = read_json_file(index_path);
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
        throw CheckpointError(index_path, "", "has no 'weight_map' object");
    std::vector<std::string> files;
    std::map<std::string, std::string> expected;  // tensor -> shard file name
    for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
        if (!it.value().is_string())
            throw CheckpointError(index_path, it.key(), "weight_map value is not a string");
        const std::string shard = it.value().get<std::string>();
        if (shard.find('/') != std::string::npos || shard == ".." || shard.empty())
            throw CheckpointError(index_path, it.key(),
                                  "shard name '" + shard + "' is not a plain file name");
        expected[it.key()] = shard;
        const std::string full = (fs::path(path) / shard).string();
        if (std::find(files.begin(), files.end(), full) == files.end())
            files.push_back(full);
    }
    std::sort(files.begin(), files.end());
    TensorSource src = from_files(files, path);
    // The index and the shards must agree exactly.
    for (const auto& [name, shard] : expected) {
        auto it = src.where_.find(name);
        if (it == src.where_.end())
            throw CheckpointError(index_path, name, "listed in weight_map but absent from " + shard);
        if (fs::path(src.files_[it->second]->path()).filename() != shard)
            throw CheckpointError(
                index_path, name,
                "weight_map says " + shard + " but it is in " + src.files_[it->second]->path());
    }
    for (const auto& [name, where] : src.where_)
        if (!expected.count(name))
            throw CheckpointError(src.files_[where]->path(), name,
                                  "present in a shard but not in " + index_path);
    if (index.contains("metadata") && index["metadata"].is_object()) {
        src.metadata_.clear();
        for (auto it = index["metadata"].begin(); it != index["metadata"].end(); ++it)
            src.metadata_[it.key()] =
                it.value().is_string() ? it.value().get<std::string>() : it.value().dump();
    }
    return src;
}

std::vector<std::string> TensorSource::names() const {
    std::vector<std::string> out;
    out.reserve(where_.size());
    for (const auto& [name, _] : where_)
        out.push_back(name);
    return out;
}

const std::string& TensorSource::file_of(const std::string& name) const {
    auto it = where_.find(name);
    if (it == where_.end())
        throw CheckpointError(description_, name, "not found in the checkpoint");
    return files_[it->second]->path();
}

const TensorInfo& TensorSource::info(const std::string& name) const {
    auto it = where_.find(name);
    if (it == where_.end())
        throw CheckpointError(description_, name, "not found in the checkpoint");
    return files_[it->second]->at(name);
}

torch::Tensor TensorSource::get(const std::string& name) const {
    auto it = where_.find(name);
    if (it == where_.end())
        throw CheckpointError(description_, name, "not found in the checkpoint");
    const auto& file = *files_[it->second];
    const TensorInfo& t = file.at(name);
    const auto dtype = to_torch_dtype(t.dtype, file.path(), name);
    auto out = torch::empty(t.shape, torch::TensorOptions().dtype(dtype));
    if (t.nbytes() > 0)
        std::memcpy(out.data_ptr(), file.data(t), t.nbytes());
    return out;
}

std::vector<std::pair<std::string, torch::Tensor>> module_tensors(const torch::nn::Module& module) {
    std::vector<std::pair<std::string, torch::Tensor>> out;
    for (const auto& p : module.named_parameters(/*recurse=*/true))
        out.emplace_back(p.key(), p.value());
    for (const auto& b : module.named_buffers(/*recurse=*/true))
        out.emplace_back(b.key(), b.value());
    return out;
}

void load_module(torch::nn::Module& module, const TensorSource& source, const LoadOptions& options) {
    torch::NoGradGuard no_grad;
    // Checkpoint names under the prefix, mapped to module names.
    std::map<std::string, std::string> by_module_name;
    for (const auto& name : source.names()) {
        if (name.compare(0, options.prefix.size(), options.prefix) != 0)
            continue;
        std::string local = name.substr(options.prefix.size());
        if (options.rename)
            local = options.rename(local);
        by_module_name[local] = name;
    }
    std::set<std::string> used;
    std::vector<std::string> missing;
    for (auto& [name, target] : module_tensors(module)) {
        auto it = by_module_name.find(name);
        if (it == by_module_name.end()) {
            if (!(options.may_be_missing && options.may_be_missing(name)))
                missing.push_back(name);
            continue;
        }
        const std::string& ckpt_name = it->second;
        const TensorInfo& info = source.info(ckpt_name);
        if (info.shape != target.sizes().vec()) {
            std::ostringstream msg;
            msg << "shape " << c10::IntArrayRef(info.shape) << " does not match the model's "
                << target.sizes() << " (module parameter '" << name << "')";
            throw CheckpointError(source.file_of(ckpt_name), ckpt_name, msg.str());
        }
        torch::Tensor value = source.get(ckpt_name);
        if (value.is_floating_point() != target.is_floating_point())
            throw CheckpointError(source.file_of(ckpt_name), ckpt_name,
                                  std::string("dtype ") + std::string(dtype_name(info.dtype)) +
                                      " cannot be loaded into a " + c10::toString(target.scalar_type()) +
                                      " tensor");
        target.copy_(value);
        used.insert(name);
    }
    if (!missing.empty()) {
        std::string list;
        for (size_t i = 0; i < missing.size() && i < 8; ++i)
            list += (i ? ", " : "") + options.prefix + missing[i];
        if (missing.size() > 8)
            list += ", ... (" + std::to_string(missing.size()) + " in all)";
        throw CheckpointError(source.description(), options.prefix + missing[0],
                              "missing from the checkpoint; missing tensors: " + list);
    }
    if (!options.allow_unexpected) {
        for (const auto& [local, ckpt_name] : by_module_name) {
            if (!used.count(local))
                throw CheckpointError(source.file_of(ckpt_name), ckpt_name,
                                      "unexpected: the model has no tensor named '" + local + "'");
        }
    }
}

void save_tensors(const std::string& path,
                  const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                  const std::map<std::string, std::string>& metadata,
                  std::optional<torch::Dtype> as) {
    std::vector<torch::Tensor> keep;  // contiguous CPU copies that own the bytes while writing
    std::vector<TensorBytes> out;
    keep.reserve(tensors.size());
    for (const auto& [name, t] : tensors) {
        torch::Tensor c = t.detach().to(torch::kCPU);
        if (as && c.is_floating_point())
            c = c.to(*as);
        c = c.contiguous();
        keep.push_back(c);
        TensorBytes b;
        b.name = name;
        b.dtype = from_torch_dtype(c.scalar_type());
        b.shape = c.sizes().vec();
        b.data = c.data_ptr();
        b.nbytes = static_cast<uint64_t>(c.numel()) * c.element_size();
        out.push_back(std::move(b));
    }
    write_safetensors(path, std::move(out), metadata);
}

void save_sharded(const std::string& folder,
                  const std::string& stem,
                  const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                  uint64_t max_shard_bytes,
                  const std::map<std::string, std::string>& metadata) {
    fs::create_directories(folder);
    std::vector<std::vector<std::pair<std::string, torch::Tensor>>> shards(1);
    uint64_t current = 0, total = 0;
    for (const auto& entry : tensors) {
        const uint64_t bytes = static_cast<uint64_t>(entry.second.numel()) * entry.second.element_size();
        if (current > 0 && current + bytes > max_shard_bytes) {
            shards.emplace_back();
            current = 0;
        }
        shards.back().push_back(entry);
        current += bytes;
        total += bytes;
    }
    nlohmann::ordered_json index;
    nlohmann::ordered_json meta = {{"total_size", total}};
    for (const auto& [k, v] : metadata)
        meta[k] = v;
    index["metadata"] = meta;
    nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
    char buf[64];
    for (size_t i = 0; i < shards.size(); ++i) {
        std::snprintf(buf, sizeof(buf), "-%05zu-of-%05zu.safetensors", i + 1, shards.size());
        const std::string file = stem + buf;
        save_tensors((fs::path(folder) / file).string(), shards[i]);
        for (const auto& [name, _] : shards[i])
            weight_map[name] = file;
    }
    index["weight_map"] = weight_map;
    write_file_atomic((fs::path(folder) / (stem + ".safetensors.index.json")).string(), index.dump(2));
}

}  // namespace memoreel
