#include "model/lora.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>

#include "model/checkpoint.h"
#include "model/linear.h"

namespace memoreel {

namespace {

// Every memoreel::Linear of the network with its full dotted name.
std::vector<std::pair<std::string, LinearImpl*>> linear_layers(const torch::nn::Module& network) {
    std::vector<std::pair<std::string, LinearImpl*>> out;
    for (const auto& item : network.named_modules("", /*include_self=*/false)) {
        if (auto* linear = dynamic_cast<LinearImpl*>(item.value().get()))
            out.emplace_back(item.key(), linear);
    }
    return out;
}

bool strip_suffix(std::string& s, const std::string& suffix) {
    if (s.size() < suffix.size() || s.compare(s.size() - suffix.size(), suffix.size(), suffix) != 0)
        return false;
    s.resize(s.size() - suffix.size());
    return true;
}

void strip_prefix(std::string& s, const std::string& prefix) {
    if (s.compare(0, prefix.size(), prefix) == 0)
        s = s.substr(prefix.size());
}

struct AdapterTensors {
    std::string down_name, up_name, alpha_name;
};

}  // namespace

std::vector<std::string> attach_lora(torch::nn::Module& network, const LoRAOptions& options) {
    std::vector<std::string> names;
    for (auto& [name, linear] : linear_layers(network)) {
        if (options.select && !options.select(name))
            continue;
        if (linear->has_lora())
            continue;
        linear->attach_lora(options.rank, options.alpha);
        names.push_back(name);
    }
    return names;
}

void detach_lora(torch::nn::Module& network) {
    for (auto& [name, linear] : linear_layers(network))
        linear->detach_lora();
}

std::vector<std::pair<std::string, torch::Tensor>> lora_parameters(const torch::nn::Module& network) {
    std::vector<std::pair<std::string, torch::Tensor>> out;
    for (auto& [name, linear] : linear_layers(network)) {
        if (!linear->has_lora())
            continue;
        out.emplace_back(name + ".lora_down", linear->lora_down);
        out.emplace_back(name + ".lora_up", linear->lora_up);
    }
    return out;
}

void merge_lora(torch::nn::Module& network) {
    for (auto& [name, linear] : linear_layers(network))
        if (linear->has_lora())
            linear->merge_lora();
}

void unmerge_lora(torch::nn::Module& network) {
    for (auto& [name, linear] : linear_layers(network))
        if (linear->has_lora())
            linear->unmerge_lora();
}

void save_lora(const std::string& path, const torch::nn::Module& network) {
    auto params = lora_parameters(network);
    if (params.empty())
        throw std::runtime_error(path + ": the network has no LoRA adapter to save");
    // Rank and scale per layer are stored so that mixed ranks survive; alpha = scale * rank.
    std::map<std::string, std::string> meta{{"format", "memoreel-lora"}};
    for (auto& [name, linear] : linear_layers(network)) {
        if (!linear->has_lora())
            continue;
        char buf[32];
        std::snprintf(buf, sizeof(buf), "%.17g",
                      linear->lora_scale() * static_cast<double>(linear->lora_rank()));
        meta["alpha." + name] = buf;
    }
    save_tensors(path, params, meta);
}

void load_lora(const std::string& path, torch::nn::Module& network, double strength) {
    const TensorSource src = TensorSource::open(path);
    std::map<std::string, AdapterTensors> adapters;  // layer name -> its tensors in the file
    for (const auto& name : src.names()) {
        std::string layer = name;
        strip_prefix(layer, "base_model.model.");
        strip_prefix(layer, "diffusion_model.");
        strip_prefix(layer, "model.");
        const bool is_down = strip_suffix(layer, ".lora_down") || strip_suffix(layer, ".lora_down.weight") ||
                             strip_suffix(layer, ".lora_A.weight") ||
                             strip_suffix(layer, ".lora_A.default.weight");
        const bool is_up =
            !is_down &&
            (strip_suffix(layer, ".lora_up") || strip_suffix(layer, ".lora_up.weight") ||
             strip_suffix(layer, ".lora_B.weight") || strip_suffix(layer, ".lora_B.default.weight"));
        const bool is_alpha = !is_down && !is_up && strip_suffix(layer, ".alpha");
        if (!is_down && !is_up && !is_alpha)
            throw CheckpointError(src.file_of(name), name,
                                  "is not a LoRA tensor (expected lora_down/up or lora_A/B)");
        auto& a = adapters[layer];
        (is_down ? a.down_name : is_up ? a.up_name : a.alpha_name) = name;
    }
    std::map<std::string, LinearImpl*> layers;
    for (auto& [name, linear] : linear_layers(network))
        layers[name] = linear;

    // Everything is checked before anything is changed, so a bad file leaves the network as it was.
    struct Planned {
        LinearImpl* linear;
        torch::Tensor down, up;
        double alpha;
    };
    std::vector<Planned> plan;
    for (const auto& [layer, a] : adapters) {
        const std::string& any = !a.down_name.empty() ? a.down_name
                                 : !a.up_name.empty() ? a.up_name
                                                      : a.alpha_name;
        const std::string& file = src.file_of(any);
        if (a.down_name.empty() || a.up_name.empty())
            throw CheckpointError(
                file, any,
                "has no matching " + std::string(a.down_name.empty() ? "down (A)" : "up (B)") + " tensor");
        auto it = layers.find(layer);
        if (it == layers.end())
            throw CheckpointError(file, any, "the network has no linear layer '" + layer + "'");
        LinearImpl& linear = *it->second;
        const torch::Tensor down = src.get(a.down_name);
        const torch::Tensor up = src.get(a.up_name);
        if (down.dim() != 2 || up.dim() != 2 || down.size(0) < 1 || down.size(1) != linear.in_features() ||
            up.size(0) != linear.out_features() || up.size(1) != down.size(0) || !down.is_floating_point() ||
            !up.is_floating_point())
            throw CheckpointError(file, a.down_name,
                                  "adapter shapes do not fit layer '" + layer + "' [" +
                                      std::to_string(linear.out_features()) + "x" +
                                      std::to_string(linear.in_features()) + "]");
        const int64_t rank = down.size(0);
        double alpha = static_cast<double>(rank);  // PEFT's default when no alpha is stored
        if (!a.alpha_name.empty()) {
            const torch::Tensor t = src.get(a.alpha_name);
            if (t.numel() != 1)
                throw CheckpointError(file, a.alpha_name, "alpha must hold one number");
            alpha = t.to(torch::kFloat64).item<double>();
        } else if (auto m = src.metadata().find("alpha." + layer); m != src.metadata().end()) {
            char* end = nullptr;
            alpha = std::strtod(m->second.c_str(), &end);
            if (end == m->second.c_str() || *end != '\0')
                throw CheckpointError(file, any, "metadata alpha '" + m->second + "' is not a number");
        }
        if (!std::isfinite(alpha))
            throw CheckpointError(file, any, "alpha is not finite");
        if (linear.has_lora() && (linear.lora_merged() || linear.lora_rank() != rank))
            throw CheckpointError(
                file, a.down_name,
                "layer '" + layer + "' already holds a merged or differently sized adapter");
        plan.push_back({&linear, down, up, alpha});
    }
    torch::NoGradGuard no_grad;
    for (auto& p : plan) {
        const int64_t rank = p.down.size(0);
        if (!p.linear->has_lora())
            p.linear->attach_lora(rank, p.alpha);
        p.linear->lora_down.copy_(p.down);
        p.linear->lora_up.copy_(p.up);
        p.linear->set_lora_scale(strength * p.alpha / static_cast<double>(rank));
    }
}

}  // namespace memoreel
