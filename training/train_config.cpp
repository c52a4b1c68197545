#include "training/train_config.h"

#include <cmath>
#include <filesystem>
#include <set>

#include "model/json_fields.h"
#include "model/json_util.h"
#include "model/safetensors.h"

namespace memoreel {

namespace {

// A config with "extends": "other.json" (relative to its own folder) is that config with its own fields
// merged over it (RFC 7396 merge patch: objects merge field by field, anything else replaces).
nlohmann::json read_with_extends(const std::string& path, int depth) {
    nlohmann::json j = read_json_file(path);
    if (!j.is_object() || !j.contains("extends"))
        return j;
    if (!j["extends"].is_string())
        throw CheckpointError(path, "", "field 'extends' must be the name of another train config");
    if (depth >= 8)
        throw CheckpointError(path, "", "'extends' chains more than 8 configs deep (a cycle?)");
    const std::string parent = (std::filesystem::path(path).parent_path() / j["extends"].get<std::string>())
                                   .lexically_normal()
                                   .string();
    if (!std::filesystem::exists(parent))
        throw CheckpointError(path, "", "field 'extends' names " + parent + ", which does not exist");
    nlohmann::json merged = read_with_extends(parent, depth + 1);
    j.erase("extends");
    merged.merge_patch(j);
    return merged;
}

}  // namespace

TrainConfig TrainConfig::load(const std::string& path) {
    return from_json(read_with_extends(path, 0), path);
}

TrainConfig TrainConfig::from_json(const nlohmann::json& j, const std::string& where) {
    TrainConfig c;
    c.source_path = where;
    JsonFields f(j, where, "");
    f.get("stage", c.stage);
    f.get("model", c.model);
    f.get("steps", c.steps);
    f.get("batch", c.batch);
    f.get("lr", c.lr);
    f.get("warmup", c.warmup);
    f.get("final_lr_ratio", c.final_lr_ratio);
    f.get("weight_decay", c.weight_decay);
    f.get("beta1", c.beta1);
    f.get("beta2", c.beta2);
    f.get("eps", c.eps);
    f.get("grad_clip", c.grad_clip);
    f.get("seed", c.seed);
    f.get("threads", c.threads);
    f.get("log_every", c.log_every);
    f.get("sample_every", c.sample_every);
    f.get("checkpoint_every", c.checkpoint_every);
    f.get("keep_checkpoints", c.keep_checkpoints);
    f.get("ema_decay", c.ema_decay);
    f.get("precision", c.precision);
    f.get("folder", c.folder);
    if (c.folder.find_first_of("/\\") != std::string::npos || c.folder == "." || c.folder == ".." ||
        c.folder == "model" || c.folder == "latents")
        f.fail("folder", "must be a plain folder name other than model and latents (is '" + c.folder + "')");
    f.get("lr_scale", c.lr_scale);
    for (const auto& [prefix, scale] : c.lr_scale)
        if (prefix.empty() || !(scale > 0 && scale <= 1000))
            f.fail("lr_scale", "maps name prefixes to multipliers in (0, 1000] (is '" + prefix +
                                   "': " + std::to_string(scale) + ")");
    f.get("divergence_factor", c.divergence_factor);
    f.get("divergence_loss", c.divergence_loss);
    if (j.contains("init_from")) {
        JsonFields init(j["init_from"], where, "init_from");
        init.get("weights", c.init_from);
        init.get("only", c.init_prefixes);
        init.reject_unknown();
        if (c.init_from.empty())
            init.fail("weights", "must name a checkpoint's weights.safetensors or ema.safetensors");
        if (c.init_prefixes.empty())
            init.fail("only", "must list the name prefixes to copy (e.g. [\"dit.\"])");
    }
    f.accept({"data", "options", "description", "init_from"});
    f.reject_unknown();
    if (j.contains("data"))
        c.data = j["data"];
    if (j.contains("options"))
        c.options = j["options"];
    if (!c.data.is_null() && !c.data.is_object())
        f.fail("data", "must be a JSON object");
    if (!c.options.is_null() && !c.options.is_object())
        f.fail("options", "must be a JSON object");
    if (c.data.is_null())
        c.data = nlohmann::json::object();
    if (c.options.is_null())
        c.options = nlohmann::json::object();

    static const std::set<std::string> stages{"tokenizer", "vae", "text", "base", "memory", "ar"};
    if (!stages.count(c.stage))
        f.fail("stage", "must be one of tokenizer, vae, text, base, memory, ar (is '" + c.stage + "')");
    if (c.steps < 1 || c.steps > 100000000)
        f.fail("steps", "must be in [1, 1e8]");
    if (c.batch < 1 || c.batch > 4096)
        f.fail("batch", "must be in [1, 4096]");
    if (!(c.lr > 0 && c.lr < 10))
        f.fail("lr", "must be in (0, 10)");
    if (c.warmup < 0)
        f.fail("warmup", "must be >= 0");
    if (!(c.final_lr_ratio >= 0 && c.final_lr_ratio <= 1))
        f.fail("final_lr_ratio", "must be in [0, 1]");
    if (!(c.weight_decay >= 0 && c.weight_decay < 1))
        f.fail("weight_decay", "must be in [0, 1)");
    if (!(c.beta1 >= 0 && c.beta1 < 1) || !(c.beta2 >= 0 && c.beta2 < 1))
        f.fail("beta1", "beta1 and beta2 must be in [0, 1)");
    if (!(c.eps > 0))
        f.fail("eps", "must be > 0");
    if (!(c.grad_clip >= 0))
        f.fail("grad_clip", "must be >= 0");
    if (c.threads < 0 || c.threads > 1024)
        f.fail("threads", "must be in [0, 1024]");
    if (c.log_every < 1)
        f.fail("log_every", "must be >= 1");
    if (c.sample_every < 0)
        f.fail("sample_every", "must be >= 0");
    if (c.checkpoint_every < 1)
        f.fail("checkpoint_every", "must be >= 1");
    if (c.keep_checkpoints < 1)
        f.fail("keep_checkpoints", "must be >= 1");
    if (!(c.ema_decay >= 0 && c.ema_decay < 1))
        f.fail("ema_decay", "must be in [0, 1)");
    if (c.precision != "fp32" && c.precision != "bf16")
        f.fail("precision", "must be 'fp32' or 'bf16' (is '" + c.precision + "')");
    if (!(c.divergence_factor > 1))
        f.fail("divergence_factor", "must be > 1");
    if (!(c.divergence_loss > 0))
        f.fail("divergence_loss", "must be > 0");
    return c;
}

nlohmann::json TrainConfig::to_json() const {
    nlohmann::json j = {{"stage", stage},
                        {"model", model},
                        {"steps", steps},
                        {"batch", batch},
                        {"lr", lr},
                        {"warmup", warmup},
                        {"final_lr_ratio", final_lr_ratio},
                        {"weight_decay", weight_decay},
                        {"beta1", beta1},
                        {"beta2", beta2},
                        {"eps", eps},
                        {"grad_clip", grad_clip},
                        {"seed", seed},
                        {"threads", threads},
                        {"ema_decay", ema_decay},
                        {"log_every", log_every},
                        {"sample_every", sample_every},
                        {"checkpoint_every", checkpoint_every},
                        {"keep_checkpoints", keep_checkpoints},
                        {"divergence_factor", divergence_factor},
                        {"divergence_loss", divergence_loss},
                        {"data", data},
                        {"options", options}};
    j["precision"] = precision;
    if (!folder.empty())
        j["folder"] = folder;
    if (!lr_scale.empty())
        j["lr_scale"] = lr_scale;
    if (!init_from.empty())
        j["init_from"] = {{"weights", init_from}, {"only", init_prefixes}};
    return j;
}

double scheduled_lr(const TrainConfig& c, int64_t step) {
    if (c.warmup > 0 && step <= c.warmup)
        return c.lr * static_cast<double>(step) / static_cast<double>(c.warmup);
    const double span = static_cast<double>(std::max<int64_t>(1, c.steps - c.warmup));
    const double progress = std::min(1.0, static_cast<double>(step - c.warmup) / span);
    const double cosine = 0.5 * (1.0 + std::cos(M_PI * progress));
    return c.lr * (c.final_lr_ratio + (1.0 - c.final_lr_ratio) * cosine);
}

}  // namespace memoreel
