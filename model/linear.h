// The linear layer every network here uses: torch::nn::Linear's parameter names (weight [out,in], bias
// [out]), plus an optional low-rank adapter (LoRA) that can be attached, trained, merged into the weight and
// unmerged. Keeping LoRA inside the layer means named_parameters() of a network still yields the official
// checkpoint names for the base weights, and the adapter appears as `<layer>.lora_down` / `<layer>.lora_up`
// beside them.
#pragma once

#include <torch/torch.h>

namespace memoreel {

class LinearImpl : public torch::nn::Module {
  public:
    LinearImpl(int64_t in_features, int64_t out_features, bool bias = true);

    torch::Tensor forward(const torch::Tensor& x);

    int64_t in_features() const { return in_features_; }
    int64_t out_features() const { return out_features_; }

    // LoRA: y = x W^T + b + (alpha/rank) * (x A^T) B^T with A = lora_down [rank,in], B = lora_up [out,rank].
    // B starts at zero so an attached adapter leaves the output unchanged until trained.
    void attach_lora(int64_t rank, double alpha);
    void detach_lora();
    bool has_lora() const { return lora_down.defined(); }
    int64_t lora_rank() const { return has_lora() ? lora_down.size(0) : 0; }
    double lora_scale() const { return lora_scale_; }
    // Not while merged: unmerge must subtract exactly what merge added.
    void set_lora_scale(double scale);
    // W += scale * B A (the adapter is then skipped in forward); unmerge subtracts it again. With fp32
    // weights the round trip restores them to within one rounding; with bf16 weights the two roundings are
    // visible.
    void merge_lora();
    void unmerge_lora();
    bool lora_merged() const { return lora_merged_; }

    torch::Tensor weight;
    torch::Tensor bias;
    torch::Tensor lora_down;
    torch::Tensor lora_up;

  private:
    int64_t in_features_;
    int64_t out_features_;
    double lora_scale_ = 0.0;
    bool lora_merged_ = false;
};
TORCH_MODULE(Linear);

}  // namespace memoreel
