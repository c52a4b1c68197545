// safetensors files: memory-mapped reading with full validation, and atomic writing.
// Torch-free on purpose: the server and tools read checkpoints' metadata without pulling in LibTorch.
//
// Format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets},
// __metadata__}, then the raw little-endian tensor bytes; data_offsets are relative to the start of that data
// block.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace memoreel {

// An error in a checkpoint or config file. The message always names the file, and the tensor when there is
// one.
class CheckpointError : public std::runtime_error {
  public:
    CheckpointError(const std::string& file, const std::string& tensor, const std::string& what);
    const std::string& file() const { return file_; }
    const std::string& tensor() const { return tensor_; }

  private:
    std::string file_;
    std::string tensor_;
};

enum class DType : uint8_t { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

std::string_view dtype_name(DType dtype);
size_t dtype_size(DType dtype);
// Parses a safetensors dtype string; returns false for an unknown one.
bool parse_dtype(std::string_view name, DType* out);

struct TensorInfo {
    std::string name;
    DType dtype = DType::F32;
    std::vector<int64_t> shape;
    uint64_t begin = 0;  // offsets into the data block
    uint64_t end = 0;
    int64_t numel() const;
    uint64_t nbytes() const { return end - begin; }
};

// A read-only, memory-mapped safetensors file. Every structural property is checked at open():
// header bounds, JSON, dtypes, shapes against byte sizes, offsets inside the data and non-overlapping.
class SafetensorsFile {
  public:
    static std::shared_ptr<SafetensorsFile> open(const std::string& path);
    ~SafetensorsFile();
    SafetensorsFile(const SafetensorsFile&) = delete;
    SafetensorsFile& operator=(const SafetensorsFile&) = delete;

    const std::string& path() const { return path_; }
    // Tensors in name order.
    const std::vector<TensorInfo>& tensors() const { return tensors_; }
    const TensorInfo* find(std::string_view name) const;
    // Throws CheckpointError naming the file and the tensor when it is absent.
    const TensorInfo& at(std::string_view name) const;
    // Start of a tensor's bytes inside the mapping (valid while this object lives).
    const uint8_t* data(const TensorInfo& info) const { return data_ + info.begin; }
    const std::map<std::string, std::string>& metadata() const { return metadata_; }
    uint64_t file_size() const { return size_; }

  private:
    SafetensorsFile() = default;
    void parse_header(std::string_view header);

    std::string path_;
    void* mapping_ = nullptr;
    uint64_t size_ = 0;
    const uint8_t* data_ = nullptr;  // start of the data block
    uint64_t data_size_ = 0;
    std::vector<TensorInfo> tensors_;
    std::map<std::string, size_t> index_;
    std::map<std::string, std::string> metadata_;
};

// One tensor to write: raw little-endian bytes of dtype with the given shape.
struct TensorBytes {
    std::string name;
    DType dtype = DType::F32;
    std::vector<int64_t> shape;
    const void* data = nullptr;
    uint64_t nbytes = 0;
};

// Writes a safetensors file atomically (a temporary file beside it, fsync, rename). Tensors are stored in
// name order; the header is space-padded to a multiple of 8 bytes as the reference writer does.
void write_safetensors(const std::string& path,
                       std::vector<TensorBytes> tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace memoreel
