// The official Wan checkpoint folder layout (config.json + sharded safetensors + index) loads into the DiT
// and reproduces the golden output; LoRA attaches to the DiT's linear layers under the official names.
#include <filesystem>

#include "model/checkpoint.h"
#include "model/json_util.h"
#include "model/lora.h"
#include "model/wan_dit.h"
#include "tests/test_support.h"

using namespace memoreel;
using memoreel::test::TempDir;

namespace {

const TensorSource& golden() {
    static const TensorSource src =
        TensorSource::open(memoreel::test::golden_file("dit_tiny_ti2v.safetensors"));
    return src;
}

WanDiTConfig golden_config() {
    return WanDiTConfig::from_json(nlohmann::json::parse(golden().metadata().at("config")), "golden");
}

// Writes the golden weights the way the official release lays out a model folder.
void write_official_folder(const std::string& dir) {
    std::vector<std::pair<std::string, torch::Tensor>> weights;
    for (const auto& name : golden().names())
        if (name.rfind("weights.", 0) == 0)
            weights.emplace_back(name.substr(8), golden().get(name));
    save_sharded(dir, "diffusion_pytorch_model", weights, /*max_shard_bytes=*/1 << 20);
    auto config = nlohmann::json::parse(golden().metadata().at("config"));
    config["_class_name"] = "WanModel";
    config["_diffusers_version"] = "0.33.0";
    write_file_atomic(dir + "/config.json", config.dump(2));
}

torch::Tensor run_case_a(WanDiT& dit) {
    torch::NoGradGuard no_grad;
    const auto x = golden().get("inputs.x");
    const auto ctx = golden().get("inputs.context");
    const auto t = golden().get("inputs.t");
    const auto out = dit->forward({x[0], x[1]}, t, {ctx[0], ctx[1]}, 48);
    return torch::stack(out);
}

}  // namespace

TEST_SUITE("wan_folder") {
    TEST_CASE("an official-layout sharded folder loads and reproduces the golden output") {
        TempDir dir;
        write_official_folder(dir.path());
        int shards = 0;
        for (auto& e : std::filesystem::directory_iterator(dir.path()))
            shards += e.path().extension() == ".safetensors";
        CHECK(shards >= 3);
        // The folder's config.json is the official one: it parses as a DiT config.
        const auto cfg =
            WanDiTConfig::from_json(read_json_file(dir.file("config.json")), dir.file("config.json"));
        CHECK(cfg.dim == 128);
        WanDiT dit(cfg);
        load_module(*dit, TensorSource::open(dir.path()));
        CHECK_CLOSE(run_case_a(dit), golden().get("outputs.out"), 1e-4);
    }

    TEST_CASE("bf16 shards load into an fp32 model") {
        TempDir dir;
        std::vector<std::pair<std::string, torch::Tensor>> weights;
        for (const auto& name : golden().names())
            if (name.rfind("weights.", 0) == 0)
                weights.emplace_back(name.substr(8), golden().get(name));
        save_tensors(dir.file("model.safetensors"), weights, {}, torch::kBFloat16);
        WanDiT dit(golden_config());
        load_module(*dit, TensorSource::open(dir.path()));
        CHECK((dit->blocks[0]->named_parameters()["self_attn.q.weight"].scalar_type() == torch::kFloat32));
        // bf16 rounding of the weights moves the output a little, not a lot.
        const double diff = memoreel::test::max_abs_diff(run_case_a(dit), golden().get("outputs.out"));
        CHECK(diff > 0);
        CHECK(diff < 0.1);
    }

    TEST_CASE("LoRA on the DiT: official names stay, merge/unmerge restores, a saved adapter reloads") {
        TempDir dir;
        WanDiT dit(golden_config());
        load_module(*dit, golden(), LoadOptions{"weights."});
        const auto before = run_case_a(dit);
        const auto layers =
            attach_lora(*dit, {8, 8.0, [](const std::string& n) {
                                   return n.find("blocks.") == 0 && n.find("attn.") != std::string::npos;
                               }});
        CHECK(layers.size() == 2 * 2 * 4);  // 2 blocks x (self, cross) x (q, k, v, o)
        // The base checkpoint still loads strictly into the model with adapters (they are allowed to be
        // absent).
        LoadOptions opts{"weights."};
        opts.may_be_missing = [](const std::string& n) { return n.find(".lora_") != std::string::npos; };
        load_module(*dit, golden(), opts);
        CHECK_CLOSE(run_case_a(dit), before, 0.0);
        {
            torch::NoGradGuard no_grad;
            for (auto& [name, p] : lora_parameters(*dit))
                p.normal_(0, 0.05);
        }
        const auto adapted = run_case_a(dit);
        CHECK(memoreel::test::max_abs_diff(adapted, before) > 1e-3);
        save_lora(dir.file("lora.safetensors"), *dit);
        std::map<std::string, torch::Tensor> base;
        for (auto& p : dit->named_parameters())
            if (p.key().find(".lora_") == std::string::npos)
                base[p.key()] = p.value().clone();
        merge_lora(*dit);
        CHECK_CLOSE(run_case_a(dit), adapted, 1e-4);
        unmerge_lora(*dit);
        for (auto& [name, w] : base)
            CHECK_CLOSE(dit->named_parameters()[name], w, 1e-6);

        WanDiT fresh(golden_config());
        load_module(*fresh, golden(), LoadOptions{"weights."});
        load_lora(dir.file("lora.safetensors"), *fresh);
        CHECK_CLOSE(run_case_a(fresh), adapted, 1e-6);
    }
}
