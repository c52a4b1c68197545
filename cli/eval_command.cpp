// `memoreel eval retrieval`: the memory's retrieval quality per history position (training/eval_retrieval.h),
// printed as a table and written as JSON.
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
#include <memory>

#include "cli/commands.h"
#include "model/json_util.h"
#include "training/eval_retrieval.h"

namespace memoreel {

namespace {

struct RetrievalArgs {
    RetrievalEvalOptions o;
    std::string out = "out/eval/retrieval.json";
};

void run_retrieval(const RetrievalArgs& a) {
    const nlohmann::json r =
        evaluate_retrieval(a.o, [](const std::string& line) { spdlog::info("{}", line); });
    const auto parent = std::filesystem::path(a.out).parent_path();
    if (!parent.empty())
        std::filesystem::create_directories(parent);
    write_file_atomic(a.out, r.dump(2) + "\n");
    std::fputs(retrieval_table(r).c_str(), stdout);
    spdlog::info("wrote {}", a.out);
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
    r->add_option("--out", a->out, "JSON output")->capture_default_str();
    r->callback([a] { run_retrieval(*a); });
}

}  // namespace memoreel
