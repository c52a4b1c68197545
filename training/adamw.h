// AdamW (decoupled weight decay) over named parameters, with its state as named tensors so that a checkpoint
// holds it in the same safetensors format as the weights and a resumed run continues bit for bit.
#pragma once

#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

namespace memoreel {

class TensorSource;

struct AdamWOptions {
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
    double weight_decay = 0.01;  // applied to parameters with 2 or more dimensions (not norms and biases)
    // Learning-rate multipliers by parameter-name prefix (the longest matching prefix applies; others get 1).
    std::vector<std::pair<std::string, double>> lr_scale;
};

class AdamW {
  public:
    AdamW(std::vector<std::pair<std::string, torch::Tensor>> params, AdamWOptions options);

    // One update with learning rate lr from the parameters' current gradients (parameters without a gradient
    // are left alone).
    void step(double lr);
    void zero_grad();  // gradients become undefined
    int64_t steps() const { return steps_; }

    // Global L2 norm of the gradients; when max_norm > 0 and the norm exceeds it, the gradients are scaled
    // down to max_norm. Returns the norm before clipping.
    double clip_grad_norm(double max_norm);

    // "exp_avg.<name>" and "exp_avg_sq.<name>" for every parameter, plus "step" (int64 scalar).
    std::vector<std::pair<std::string, torch::Tensor>> state() const;
    // Restores state(); every tensor must be present with its parameter's shape (errors name the source).
    void load_state(const TensorSource& source);

    const std::vector<std::pair<std::string, torch::Tensor>>& params() const { return params_; }

  private:
    std::vector<std::pair<std::string, torch::Tensor>> params_;
    std::vector<torch::Tensor> exp_avg_;
    std::vector<torch::Tensor> exp_avg_sq_;
    std::vector<double> scale_;  // per parameter, from options_.lr_scale
    AdamWOptions options_;
    int64_t steps_ = 0;
};

}  // namespace memoreel
