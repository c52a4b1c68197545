// Mixed precision for training steps: while an Autocast is alive with bf16 on, LibTorch's autocast runs
// matrix products (linear, matmul, conv) in bfloat16 on the device's backend while the weights, the optimiser
// state and the residual stream stay fp32. On this CPU a bf16 product runs at about twice the fp32 rate
// (platform notes), and products are most of a DiT step.
#pragma once

#include <torch/torch.h>

namespace memoreel {

class Autocast {
  public:
    Autocast(bool bf16, const torch::Device& device);
    ~Autocast();
    Autocast(const Autocast&) = delete;
    Autocast& operator=(const Autocast&) = delete;

  private:
    bool on_ = false;
    bool cuda_ = false;
    bool was_enabled_ = false;
    at::ScalarType was_dtype_ = at::kBFloat16;
};

// Autocast off (CPU and CUDA) while alive, as it was after: for work inside a step that must match fp32
// results computed elsewhere (the VAE encoding a latent the cache holds in fp32).
class AutocastPause {
  public:
    AutocastPause();
    ~AutocastPause();
    AutocastPause(const AutocastPause&) = delete;
    AutocastPause& operator=(const AutocastPause&) = delete;

  private:
    bool cpu_ = false;
    bool cuda_ = false;
};

}  // namespace memoreel
