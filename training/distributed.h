// Multi-process data parallel through LibTorch's c10d, launched the way torchrun launches: RANK, WORLD_SIZE,
// MASTER_ADDR and MASTER_PORT in the environment. Rank 0 hosts the TCP store. Every process holds a full
// replica; parameters are broadcast from rank 0 at the start and gradients are averaged before each update,
// so the replicas stay identical. Gloo on CPU; NCCL for CUDA tensors when LibTorch was built with it (Gloo
// otherwise, which also reduces CUDA tensors through host memory).
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

namespace memoreel {

class DataParallel {
  public:
    // nullptr when WORLD_SIZE is unset or 1. Malformed or missing variables throw std::invalid_argument
    // naming the variable.
    static std::unique_ptr<DataParallel> from_environment(torch::Device device);
    DataParallel(int rank,
                 int world_size,
                 const std::string& master_addr,
                 int master_port,
                 torch::Device device);
    ~DataParallel();
    DataParallel(const DataParallel&) = delete;
    DataParallel& operator=(const DataParallel&) = delete;

    int rank() const { return rank_; }
    int world_size() const { return world_size_; }
    const std::string& backend() const { return backend_; }

    // Copies rank root's values into every process's tensors (in place).
    void broadcast(const std::vector<torch::Tensor>& tensors, int root = 0);
    // Replaces each parameter's gradient by its mean over the processes (a missing gradient counts as zero).
    void average_gradients(const std::vector<torch::Tensor>& params);
    // Element-wise mean over the processes.
    std::vector<double> average(const std::vector<double>& values);
    void barrier();

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
    int rank_ = 0;
    int world_size_ = 1;
    std::string backend_;
};

}  // namespace memoreel
