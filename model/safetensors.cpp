#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "model/json_util.h"

namespace memoreel {

namespace {

struct DTypeEntry {
    DType dtype;
    std::string_view name;
    size_t size;
};

constexpr DTypeEntry kDTypes[] = {
    {DType::F64, "F64", 8}, {DType::F32, "F32", 4},   {DType::F16, "F16", 2}, {DType::BF16, "BF16", 2},
    {DType::I64, "I64", 8}, {DType::I32, "I32", 4},   {DType::I16, "I16", 2}, {DType::I8, "I8", 1},
    {DType::U8, "U8", 1},   {DType::BOOL, "BOOL", 1},
};

// Largest header we accept: the 5B's index-less shards have headers of a few hundred KB; 100 MB is the
// reference implementation's limit.
constexpr uint64_t kMaxHeader = 100ull << 20;

std::string shape_string(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i)
        s += (i ? "," : "") + std::to_string(shape[i]);
    return s + "]";
}

}  // namespace

CheckpointError::CheckpointError(const std::string& file, const std::string& tensor, const std::string& what)
    : std::runtime_error(file + (tensor.empty() ? "" : ": tensor '" + tensor + "'") + ": " + what),
      file_(file),
      tensor_(tensor) {}

std::string_view dtype_name(DType dtype) {
    for (const auto& e : kDTypes)
        if (e.dtype == dtype)
            return e.name;
    return "?";
}

size_t dtype_size(DType dtype) {
    for (const auto& e : kDTypes)
        if (e.dtype == dtype)
            return e.size;
    return 0;
}

bool parse_dtype(std::string_view name, DType* out) {
    for (const auto& e : kDTypes) {
        if (e.name == name) {
            *out = e.dtype;
            return true;
        }
    }
    return false;
}

int64_t TensorInfo::numel() const {
    int64_t n = 1;
    for (int64_t d : shape)
        n *= d;
    return n;
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
    std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
    file->path_ = path;
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        throw CheckpointError(path, "", std::string("cannot open: ") + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        throw CheckpointError(path, "", "not a regular file");
    }
    file->size_ = static_cast<uint64_t>(st.st_size);
    if (file->size_ < 8) {
        ::close(fd);
        throw CheckpointError(
            path, "",
            "truncated: " + std::to_string(file->size_) + " bytes, shorter than the 8-byte header length");
    }
    void* map = ::mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    if (map == MAP_FAILED)
        throw CheckpointError(path, "", std::string("cannot map: ") + std::strerror(errno));
    file->mapping_ = map;
    const auto* bytes = static_cast<const uint8_t*>(map);
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i)
        header_len = (header_len << 8) | bytes[i];
    if (header_len > kMaxHeader)
        throw CheckpointError(path, "",
                              "header length " + std::to_string(header_len) + " exceeds the 100 MB limit");
    if (header_len > file->size_ - 8)
        throw CheckpointError(path, "",
                              "header length " + std::to_string(header_len) +
                                  " runs past the end of the file (" + std::to_string(file->size_) +
                                  " bytes): truncated or not a safetensors file");
    file->data_ = bytes + 8 + header_len;
    file->data_size_ = file->size_ - 8 - header_len;
    file->parse_header(std::string_view(reinterpret_cast<const char*>(bytes + 8), header_len));
    return file;
}

SafetensorsFile::~SafetensorsFile() {
    if (mapping_)
        ::munmap(mapping_, size_);
}

void SafetensorsFile::parse_header(std::string_view header) {
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(header);
    } catch (const nlohmann::json::exception& e) {
        throw CheckpointError(path_, "", std::string("header is not valid JSON: ") + e.what());
    }
    if (!j.is_object())
        throw CheckpointError(path_, "", "header is not a JSON object");
    for (auto it = j.begin(); it != j.end(); ++it) {
        const std::string& name = it.key();
        const auto& v = it.value();
        if (name == "__metadata__") {
            if (!v.is_object())
                throw CheckpointError(path_, "", "__metadata__ is not an object");
            for (auto m = v.begin(); m != v.end(); ++m) {
                if (!m.value().is_string())
                    throw CheckpointError(path_, "", "__metadata__ entry '" + m.key() + "' is not a string");
                metadata_[m.key()] = m.value().get<std::string>();
            }
            continue;
        }
        if (!v.is_object())
            throw CheckpointError(path_, name, "entry is not an object");
        TensorInfo info;
        info.name = name;
        if (!v.contains("dtype") || !v["dtype"].is_string())
            throw CheckpointError(path_, name, "missing or non-string 'dtype'");
        const std::string dtype = v["dtype"].get<std::string>();
        if (!parse_dtype(dtype, &info.dtype))
            throw CheckpointError(path_, name, "unknown dtype '" + dtype + "'");
        if (!v.contains("shape") || !v["shape"].is_array())
            throw CheckpointError(path_, name, "missing or non-array 'shape'");
        uint64_t numel = 1;
        for (const auto& d : v["shape"]) {
            if (!d.is_number_integer() || d.get<int64_t>() < 0)
                throw CheckpointError(path_, name, "shape holds a value that is not a non-negative integer");
            const auto dim = d.get<uint64_t>();
            if (dim != 0 && numel > std::numeric_limits<uint64_t>::max() / 8 / dim)
                throw CheckpointError(path_, name, "shape is too large");
            numel *= dim;
            info.shape.push_back(static_cast<int64_t>(dim));
        }
        const auto& off = v.contains("data_offsets") ? v["data_offsets"] : nlohmann::json();
        if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
            !off[1].is_number_unsigned())
            throw CheckpointError(path_, name, "'data_offsets' must be two non-negative integers");
        info.begin = off[0].get<uint64_t>();
        info.end = off[1].get<uint64_t>();
        if (info.end < info.begin)
            throw CheckpointError(path_, name, "data_offsets end before they begin");
        if (info.end > data_size_)
            throw CheckpointError(path_, name,
                                  "data_offsets [" + std::to_string(info.begin) + "," +
                                      std::to_string(info.end) + ") run past the data (" +
                                      std::to_string(data_size_) +
                                      " bytes): the file is truncated or corrupt");
        const uint64_t expected = numel * dtype_size(info.dtype);
        if (info.nbytes() != expected)
            throw CheckpointError(path_, name,
                                  "shape " + shape_string(info.shape) + " of " + dtype + " needs " +
                                      std::to_string(expected) + " bytes but data_offsets hold " +
                                      std::to_string(info.nbytes()));
        tensors_.push_back(std::move(info));
    }
    // Overlap check: in offset order, each non-empty tensor must begin at or after the furthest end seen so
    // far.
    std::vector<const TensorInfo*> by_offset;
    for (const auto& t : tensors_)
        if (t.nbytes() > 0)
            by_offset.push_back(&t);
    std::sort(by_offset.begin(), by_offset.end(),
              [](const TensorInfo* a, const TensorInfo* b) { return a->begin < b->begin; });
    const TensorInfo* furthest = nullptr;
    for (const TensorInfo* t : by_offset) {
        if (furthest && t->begin < furthest->end)
            throw CheckpointError(path_, t->name, "data overlaps tensor '" + furthest->name + "'");
        if (!furthest || t->end > furthest->end)
            furthest = t;
    }
    std::sort(tensors_.begin(), tensors_.end(),
              [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });
    for (size_t i = 0; i < tensors_.size(); ++i)
        index_[tensors_[i].name] = i;
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
    auto it = index_.find(std::string(name));
    return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& SafetensorsFile::at(std::string_view name) const {
    const TensorInfo* info = find(name);
    if (!info)
        throw CheckpointError(path_, std::string(name), "not found in the file");
    return *info;
}

void write_safetensors(const std::string& path,
                       std::vector<TensorBytes> tensors,
                       const std::map<std::string, std::string>& metadata) {
    std::sort(tensors.begin(), tensors.end(),
              [](const TensorBytes& a, const TensorBytes& b) { return a.name < b.name; });
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata.empty()) {
        nlohmann::ordered_json meta = nlohmann::ordered_json::object();
        for (const auto& [k, v] : metadata)
            meta[k] = v;
        header["__metadata__"] = meta;
    }
    uint64_t offset = 0;
    for (size_t i = 0; i < tensors.size(); ++i) {
        const auto& t = tensors[i];
        if (i > 0 && t.name == tensors[i - 1].name)
            throw CheckpointError(path, t.name, "written twice");
        int64_t numel = 1;
        for (int64_t d : t.shape)
            numel *= d;
        if (static_cast<uint64_t>(numel) * dtype_size(t.dtype) != t.nbytes)
            throw CheckpointError(path, t.name, "byte size does not match shape and dtype");
        header[t.name] = {{"dtype", std::string(dtype_name(t.dtype))},
                          {"shape", t.shape},
                          {"data_offsets", {offset, offset + t.nbytes}}};
        offset += t.nbytes;
    }
    std::string text = header.dump();
    while (text.size() % 8 != 0)
        text.push_back(' ');
    write_file_atomic(path, [&](std::ostream& out) {
        uint8_t len[8];
        const uint64_t n = text.size();
        for (int i = 0; i < 8; ++i)
            len[i] = static_cast<uint8_t>(n >> (8 * i));
        out.write(reinterpret_cast<const char*>(len), 8);
        out.write(text.data(), static_cast<std::streamsize>(text.size()));
        for (const auto& t : tensors)
            out.write(static_cast<const char*>(t.data), static_cast<std::streamsize>(t.nbytes));
    });
}

}  // namespace memoreel
