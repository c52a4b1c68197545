#include "training/distributed.h"

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#if defined(USE_C10D_NCCL) && __has_include(<torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>)
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#define MEMOREEL_HAVE_NCCL 1
#endif

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdlib>
#include <stdexcept>

namespace memoreel {

namespace {

std::string env_or(const char* name, const std::string& fallback) {
    const char* v = std::getenv(name);
    return v && *v ? std::string(v) : fallback;
}

int env_int(const char* name, int lo, int hi) {
    const char* v = std::getenv(name);
    if (!v || !*v)
        throw std::invalid_argument(std::string(name) +
                                    " is not set (data parallel needs RANK, WORLD_SIZE, " +
                                    "MASTER_ADDR and MASTER_PORT)");
    char* end = nullptr;
    const long x = std::strtol(v, &end, 10);
    if (*end != '\0' || x < lo || x > hi)
        throw std::invalid_argument(std::string(name) + "='" + v + "' is not an integer in [" +
                                    std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return static_cast<int>(x);
}

}  // namespace

struct DataParallel::Impl {
    c10::intrusive_ptr<c10d::Store> store;
    // ProcessGroupGloo / ProcessGroupNCCL: both are c10d process groups (LibTorch 1.13) or backends (2.x)
    // with the same collective calls; held through a small type-erased wrapper.
    std::function<void(std::vector<at::Tensor>&)> allreduce;
    std::function<void(std::vector<at::Tensor>&, int)> broadcast;
    std::function<void()> barrier;
    c10::intrusive_ptr<c10::intrusive_ptr_target> keep;

    template <typename Group>
    void bind(const c10::intrusive_ptr<Group>& pg) {
        allreduce = [pg](std::vector<at::Tensor>& t) { pg->allreduce(t)->wait(); };
        broadcast = [pg](std::vector<at::Tensor>& t, int root) {
            c10d::BroadcastOptions o;
            o.rootRank = root;
            pg->broadcast(t, o)->wait();
        };
        barrier = [pg] { pg->barrier()->wait(); };
        keep = pg;
    }
};

std::unique_ptr<DataParallel> DataParallel::from_environment(torch::Device device) {
    const char* ws = std::getenv("WORLD_SIZE");
    if (!ws || !*ws)
        return nullptr;
    const int world = env_int("WORLD_SIZE", 1, 65536);
    if (world == 1)
        return nullptr;
    const int rank = env_int("RANK", 0, world - 1);
    const int port = env_int("MASTER_PORT", 1, 65535);
    return std::make_unique<DataParallel>(rank, world, env_or("MASTER_ADDR", "127.0.0.1"), port, device);
}

DataParallel::DataParallel(int rank,
                           int world_size,
                           const std::string& master_addr,
                           int master_port,
                           torch::Device device)
    : impl_(std::make_unique<Impl>()), rank_(rank), world_size_(world_size) {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(master_port);
    so.isServer = rank == 0;
    so.numWorkers = static_cast<size_t>(world_size);
    so.waitWorkers = true;
    so.timeout = std::chrono::minutes(5);
    impl_->store = c10::make_intrusive<c10d::TCPStore>(master_addr, so);

#ifdef MEMOREEL_HAVE_NCCL
    if (device.is_cuda()) {
        impl_->bind(c10::make_intrusive<c10d::ProcessGroupNCCL>(impl_->store, rank, world_size));
        backend_ = "nccl";
    }
#endif
    if (!impl_->allreduce) {
        // Long: rank 0 may build a latent cache or write samples while the others wait in a collective.
        auto options = c10d::ProcessGroupGloo::Options::create(std::chrono::hours(6));
        // GLOO_SOCKET_IFNAME picks the interface as in PyTorch; a loopback master means a one-machine run.
        const std::string ifname = env_or("GLOO_SOCKET_IFNAME", "");
        if (!ifname.empty())
            options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
        else if (master_addr == "localhost" || master_addr.rfind("127.", 0) == 0)
            options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
        else
            options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
        impl_->bind(c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, rank, world_size, options));
        backend_ = "gloo";
    }
    spdlog::info("data parallel: rank {} of {} ({}, store {}:{})", rank, world_size, backend_, master_addr,
                 master_port);
}

DataParallel::~DataParallel() = default;

void DataParallel::broadcast(const std::vector<torch::Tensor>& tensors, int root) {
    torch::NoGradGuard no_grad;
    for (const auto& t : tensors) {
        // Collectives want dense contiguous tensors; parameters are, but copy back if one is not.
        std::vector<at::Tensor> one{t.is_contiguous() ? t : t.contiguous()};
        impl_->broadcast(one, root);
        if (!t.is_contiguous())
            t.copy_(one[0]);
    }
}

void DataParallel::average_gradients(const std::vector<torch::Tensor>& params) {
    torch::NoGradGuard no_grad;
    if (params.empty())
        return;
    // One flat buffer per dtype: one collective per step instead of one per parameter.
    std::vector<torch::Tensor> flat;
    for (const auto& p : params)
        flat.push_back(p.grad().defined() ? p.grad().reshape({-1}) : torch::zeros({p.numel()}, p.options()));
    std::vector<at::Tensor> buffer{torch::cat(flat)};
    impl_->allreduce(buffer);
    buffer[0].div_(world_size_);
    int64_t offset = 0;
    for (const auto& p : params) {
        const int64_t n = p.numel();
        torch::Tensor g = buffer[0].slice(0, offset, offset + n).view(p.sizes());
        if (p.grad().defined())
            p.mutable_grad().copy_(g);
        else
            p.mutable_grad() = g.clone();
        offset += n;
    }
}

std::vector<double> DataParallel::average(const std::vector<double>& values) {
    if (values.empty())
        return {};
    std::vector<at::Tensor> t{torch::tensor(values, torch::kFloat64)};
    if (backend_ == "nccl")
        t[0] = t[0].cuda();
    impl_->allreduce(t);
    const torch::Tensor mean = (t[0] / world_size_).cpu();
    return std::vector<double>(mean.data_ptr<double>(), mean.data_ptr<double>() + mean.numel());
}

void DataParallel::barrier() {
    impl_->barrier();
}

}  // namespace memoreel
