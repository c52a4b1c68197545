#include "model/linear.h"

namespace memoreel {

LinearImpl::LinearImpl(int64_t in_features, int64_t out_features, bool with_bias)
    : in_features_(in_features), out_features_(out_features) {
    // torch::nn::Linear's default initialisation (kaiming-uniform with a=sqrt(5), bias uniform in
    // +-1/sqrt(in)).
    weight = register_parameter("weight", torch::empty({out_features, in_features}));
    torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
    if (with_bias) {
        const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
        bias = register_parameter("bias", torch::empty({out_features}).uniform_(-bound, bound));
    }
}

torch::Tensor LinearImpl::forward(const torch::Tensor& x) {
    torch::Tensor y = torch::nn::functional::linear(
        x, weight.to(x.scalar_type()), bias.defined() ? bias.to(x.scalar_type()) : torch::Tensor());
    if (has_lora() && !lora_merged_ && lora_scale_ != 0.0) {
        const auto a = lora_down.to(x.scalar_type());
        const auto b = lora_up.to(x.scalar_type());
        y = y + torch::nn::functional::linear(torch::nn::functional::linear(x, a), b) * lora_scale_;
    }
    return y;
}

void LinearImpl::attach_lora(int64_t rank, double alpha) {
    TORCH_CHECK(rank > 0, "LoRA rank must be positive");
    TORCH_CHECK(!has_lora(), "a LoRA adapter is already attached");
    auto opts = weight.options();
    lora_down = register_parameter("lora_down", torch::empty({rank, in_features_}, opts));
    torch::nn::init::kaiming_uniform_(lora_down, std::sqrt(5.0));
    lora_up = register_parameter("lora_up", torch::zeros({out_features_, rank}, opts));
    lora_scale_ = alpha / static_cast<double>(rank);
    lora_merged_ = false;
}

void LinearImpl::detach_lora() {
    TORCH_CHECK(!lora_merged_, "unmerge the LoRA adapter before detaching it");
    if (!has_lora())
        return;
    // LibTorch has no unregister for parameters; rebuild the parameter dict without the adapter.
    auto& params = const_cast<torch::OrderedDict<std::string, torch::Tensor>&>(parameters_);
    torch::OrderedDict<std::string, torch::Tensor> kept;
    for (const auto& item : params)
        if (item.key() != "lora_down" && item.key() != "lora_up")
            kept.insert(item.key(), item.value());
    params = std::move(kept);
    lora_down = torch::Tensor();
    lora_up = torch::Tensor();
    lora_scale_ = 0.0;
}

void LinearImpl::set_lora_scale(double scale) {
    TORCH_CHECK(!lora_merged_, "cannot change the scale of a merged LoRA adapter; unmerge it first");
    lora_scale_ = scale;
}

void LinearImpl::merge_lora() {
    TORCH_CHECK(has_lora(), "no LoRA adapter to merge");
    if (lora_merged_)
        return;
    torch::NoGradGuard no_grad;
    // Computed in fp64 so that merge followed by unmerge restores fp32 weights to within rounding.
    const auto delta =
        torch::matmul(lora_up.to(torch::kFloat64), lora_down.to(torch::kFloat64)) * lora_scale_;
    weight.copy_((weight.to(torch::kFloat64) + delta).to(weight.scalar_type()));
    lora_merged_ = true;
}

void LinearImpl::unmerge_lora() {
    TORCH_CHECK(has_lora(), "no LoRA adapter to unmerge");
    if (!lora_merged_)
        return;
    torch::NoGradGuard no_grad;
    const auto delta =
        torch::matmul(lora_up.to(torch::kFloat64), lora_down.to(torch::kFloat64)) * lora_scale_;
    weight.copy_((weight.to(torch::kFloat64) - delta).to(weight.scalar_type()));
    lora_merged_ = false;
}

}  // namespace memoreel
