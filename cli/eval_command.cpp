// `memoreel eval retrieval`: the memory's retrieval quality per history position (training/eval_retrieval.h);
// `memoreel eval consistency`: whether returning places and characters look as before, with and without
// memory (training/eval_consistency.h). Both print a table and write JSON.
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
#include <memory>

#include "cli/commands.h"
#include "model/json_util.h"
#include "training/eval_consistency.h"
#include "training/eval_retrieval.h"

namespace memoreel {

namespace {

struct RetrievalArgs {
    RetrievalEvalOptions o;
    std::string out = "out/eval/retrieval.json";
};

struct ConsistencyArgs {
    ConsistencyEvalOptions o;
    std::string model = "runs/tiny/model/model.json";
    std::string scratch;
    int64_t window = 1;
    std::string out = "out/eval/consistency.json";
};

void write_result(const std::string& out, const nlohmann::json& r, const std::string& table) {
    const auto parent = std::filesystem::path(out).parent_path();
    if (!parent.empty())
        std::filesystem::create_directories(parent);
    write_file_atomic(out, r.dump(2) + "\n");
    std::fputs(table.c_str(), stdout);
    spdlog::info("wrote {}", out);
}

void run_retrieval(const RetrievalArgs& a) {
    const nlohmann::json r =
        evaluate_retrieval(a.o, [](const std::string& line) { spdlog::info("{}", line); });
    write_result(a.out, r, retrieval_table(r));
}

void run_consistency(ConsistencyArgs a) {
    a.o.settings = table2_settings(a.model, a.scratch, a.window);
    const nlohmann::json r =
        evaluate_consistency(a.o, [](const std::string& line) { spdlog::info("{}", line); });
    write_result(a.out, r, consistency_table(r));
}

}  // namespace

void add_eval_command(CLI::App& app) {
    CLI::App* eval =
        app.add_subcommand("eval", "Evaluate trained models: memory retrieval, story consistency");
    eval->require_subcommand(1);
    auto a = std::make_shared<RetrievalArgs>();
    a->o.models = {"runs/tiny/model/model.json"};
    CLI::App* r = eval->add_subcommand(
        "retrieval", "PSNR/SSIM of frames retrieved from the compressed memory, per history position");
    r->add_option("--model", a->o.models, "Model config(s) with a trained memory (repeat to compare)")
        ->capture_default_str();
    r->add_option("--stories", a->o.world.stories, "Held-out world stories")->capture_default_str();
    r->add_option("--story-seed", a->o.world.seed, "First held-out story seed")->capture_default_str();
    r->add_option("--media", a->o.media.manifest, "A fetch_media.sh manifest: add its eval-split clips");
    r->add_option("--history-seconds", a->o.history_seconds, "History length")
        ->capture_default_str()
        ->check(CLI::Range(1.0, 600.0));
    r->add_option("--positions", a->o.positions, "Retrieved frames per clip, spread over the history")
        ->capture_default_str()
        ->check(CLI::Range(1, 1000));
    r->add_option("--buckets", a->o.buckets, "Position buckets")
        ->capture_default_str()
        ->check(CLI::Range(1, 100));
    r->add_option("--guidance", a->o.guidance, "Classifier-free guidance (1: none)")->capture_default_str();
    r->add_option("--steps", a->o.steps, "Sampler steps (0: the model's)")->capture_default_str();
    r->add_option("--seed", a->o.seed, "Noise seed")->capture_default_str();
    r->add_flag("--no-memory-row", a->o.no_memory_row,
                "Add a first row: the first model without memory (frames from the caption alone)");
    r->add_option("--images", a->o.images, "Folder for every retrieved frame beside its original (PNG)");
    r->add_option("--out", a->out, "JSON output")->capture_default_str();
    r->callback([a] { run_retrieval(*a); });

    auto c = std::make_shared<ConsistencyArgs>();
    CLI::App* k = eval->add_subcommand(
        "consistency",
        "Long held-out storyboards with full memory, memory without pretraining, window only and no history: "
        "do returning places and characters look as before?");
    k->add_option("--model", c->model, "The full model (trained memory, from the pretrained encoder)")
        ->capture_default_str();
    k->add_option("--scratch", c->scratch,
                  "The same model fine-tuned from a fresh encoder (ar \"init\": \"scratch\"); omitted: "
                  "that row is left out");
    k->add_option("--window", c->window, "Latent frames of the window-only setting")
        ->capture_default_str()
        ->check(CLI::Range(int64_t(1), int64_t(256)));
    k->add_option("--stories", c->o.world.stories, "Held-out world stories")->capture_default_str();
    k->add_option("--story-seed", c->o.world.seed, "First held-out story seed")->capture_default_str();
    k->add_option("--seconds", c->o.world.seconds, "Story length")
        ->capture_default_str()
        ->check(CLI::Range(2.0, 3600.0));
    k->add_option("--steps", c->o.steps, "Sampler steps (0: the model's)")->capture_default_str();
    k->add_option("--horizon", c->o.horizon, "Latent frames of time the memory is rescaled into (0: none)")
        ->capture_default_str();
    k->add_option("--seed", c->o.seed, "Noise seed (the same for every setting)")->capture_default_str();
    k->add_option("--videos", c->o.videos, "Folder to write every generated story as MP4");
    k->add_option("--out", c->out, "JSON output")->capture_default_str();
    k->callback([c] { run_consistency(*c); });
}

}  // namespace memoreel
