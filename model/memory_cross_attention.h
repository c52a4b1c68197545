// The cross-attention enhancement of the memory (paper section 3.1; DESIGN.md section 2): one extra
// cross-attention per DiT block from the section's tokens to the memory encoder's penultimate features (the
// HR branch before its projection). Its output projection starts at zero, so a fresh one leaves the DiT's
// output unchanged and official checkpoints behave exactly as before until it is trained. The modules belong
// to the memory encoder (they are trained and saved with it), not to the DiT, whose parameters stay the
// official ones.
#pragma once

#include <torch/torch.h>

#include "model/linear.h"
#include "model/wan_dit.h"

namespace memoreel {

class MemoryCrossAttentionImpl : public torch::nn::Module {
  public:
    MemoryCrossAttentionImpl(int64_t dim, int64_t feature_dim, int64_t heads, double eps);
    // x [B, Lq, dim] (the normed tokens the text cross-attention sees); features [B or 1, Lf, feature_dim].
    // Returns [B, Lq, dim] fp32, to be added to the residual stream.
    torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& features);
    Linear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr};
    WanRMSNorm norm_q{nullptr}, norm_k{nullptr};

  private:
    int64_t heads_;
};
TORCH_MODULE(MemoryCrossAttention);

}  // namespace memoreel
