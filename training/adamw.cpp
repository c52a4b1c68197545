#include "training/adamw.h"

#include <cmath>

#include "model/checkpoint.h"

namespace memoreel {

AdamW::AdamW(std::vector<std::pair<std::string, torch::Tensor>> params, AdamWOptions options)
    : params_(std::move(params)), options_(options) {
    for (const auto& [name, p] : params_) {
        exp_avg_.push_back(torch::zeros_like(p, torch::MemoryFormat::Contiguous));
        exp_avg_sq_.push_back(torch::zeros_like(p, torch::MemoryFormat::Contiguous));
        double scale = 1.0;
        size_t matched = 0;
        for (const auto& [prefix, s] : options_.lr_scale)
            if (name.rfind(prefix, 0) == 0 && prefix.size() > matched) {
                scale = s;
                matched = prefix.size();
            }
        scale_.push_back(scale);
    }
}

void AdamW::step(double lr) {
    torch::NoGradGuard no_grad;
    ++steps_;
    const double bias1 = 1.0 - std::pow(options_.beta1, static_cast<double>(steps_));
    const double bias2 = 1.0 - std::pow(options_.beta2, static_cast<double>(steps_));
    for (size_t i = 0; i < params_.size(); ++i) {
        torch::Tensor& p = params_[i].second;
        const torch::Tensor& g = p.grad();
        if (!g.defined())
            continue;
        const double lr_i = lr * scale_[i];
        if (options_.weight_decay > 0 && p.dim() >= 2)
            p.mul_(1.0 - lr_i * options_.weight_decay);
        exp_avg_[i].mul_(options_.beta1).add_(g, 1.0 - options_.beta1);
        exp_avg_sq_[i].mul_(options_.beta2).addcmul_(g, g, 1.0 - options_.beta2);
        const torch::Tensor denom = (exp_avg_sq_[i] / bias2).sqrt_().add_(options_.eps);
        p.addcdiv_(exp_avg_[i], denom, -lr_i / bias1);
    }
}

void AdamW::zero_grad() {
    // Undefined, not zero: a parameter that gets no gradient in a step must be skipped by step() whether or
    // not it had one before (a resumed run starts with none), or resumed runs would differ.
    for (auto& [name, p] : params_)
        p.mutable_grad() = torch::Tensor();
}

double AdamW::clip_grad_norm(double max_norm) {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> norms;
    for (const auto& [name, p] : params_)
        if (p.grad().defined())
            norms.push_back(p.grad().to(torch::kFloat64).pow(2).sum());
    if (norms.empty())
        return 0.0;
    const double norm = std::sqrt(torch::stack(norms).sum().item<double>());
    if (max_norm > 0 && std::isfinite(norm) && norm > max_norm) {
        const double scale = max_norm / (norm + 1e-6);
        for (auto& [name, p] : params_)
            if (p.grad().defined())
                p.mutable_grad().mul_(scale);
    }
    return norm;
}

std::vector<std::pair<std::string, torch::Tensor>> AdamW::state() const {
    std::vector<std::pair<std::string, torch::Tensor>> out;
    for (size_t i = 0; i < params_.size(); ++i) {
        out.emplace_back("exp_avg." + params_[i].first, exp_avg_[i]);
        out.emplace_back("exp_avg_sq." + params_[i].first, exp_avg_sq_[i]);
    }
    out.emplace_back("step", torch::tensor(steps_, torch::kInt64));
    return out;
}

void AdamW::load_state(const TensorSource& source) {
    torch::NoGradGuard no_grad;
    const auto fetch = [&](const std::string& name, torch::Tensor& into) {
        if (!source.has(name))
            throw CheckpointError(source.description(), name, "missing from the optimiser state");
        const torch::Tensor t = source.get(name);
        if (t.sizes() != into.sizes())
            throw CheckpointError(source.file_of(name), name, "has the wrong shape for its parameter");
        into.copy_(t);
    };
    for (size_t i = 0; i < params_.size(); ++i) {
        fetch("exp_avg." + params_[i].first, exp_avg_[i]);
        fetch("exp_avg_sq." + params_[i].first, exp_avg_sq_[i]);
    }
    if (!source.has("step"))
        throw CheckpointError(source.description(), "step", "missing from the optimiser state");
    steps_ = source.get("step").item<int64_t>();
}

}  // namespace memoreel
