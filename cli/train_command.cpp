// `memoreel train <stage>`: one stage of the training pipeline into a run folder (see training/stages.h and
// configs/train/README.md). Data parallel when launched with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT.
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <filesystem>
#include <memory>

#include "cli/commands.h"
#include "cli/progress_bar.h"
#include "training/distributed.h"
#include "training/stages.h"
#include "training/trainer.h"

namespace memoreel {

namespace {

struct TrainArgs {
    std::string stage;
    std::string config;  // default configs/train/tiny-<stage>.json
    std::string run = "runs/tiny";
    int64_t steps = 0;  // 0: the config's
    bool restart = false;
    int64_t exit_after = 0;
    std::string device = "cpu";
};

void run_train(const TrainArgs& a) {
    const std::string config_path = a.config.empty() ? "configs/train/tiny-" + a.stage + ".json" : a.config;
    StageEnvironment env;
    env.config = TrainConfig::load(config_path);
    if (env.config.stage != a.stage)
        throw std::invalid_argument(config_path + " is a '" + env.config.stage + "' config, not '" + a.stage +
                                    "'");
    if (a.steps > 0)
        env.config.steps = a.steps;
    env.run_dir = a.run;
    env.device = torch::Device(a.device);
    if (env.device.is_cuda() && !torch::cuda::is_available())
        throw std::invalid_argument("--device cuda: this LibTorch has no CUDA device");
    if (env.config.threads > 0)
        torch::set_num_threads(env.config.threads);

    if (a.stage == "tokenizer") {
        spdlog::info("{}", train_tokenizer_stage(env));
        return;
    }
    std::unique_ptr<DataParallel> dp = DataParallel::from_environment(env.device);
    env.parallel = dp.get();
    env.rank = dp ? dp->rank() : 0;
    const auto stage = make_stage(env);

    TrainerOptions o;
    o.stage_dir = env.stage_dir();
    o.model_dir = env.model_dir();
    o.restart = a.restart;
    o.exit_after = a.exit_after;
    o.parallel = dp.get();
    std::unique_ptr<ProgressBar> bar;
    o.on_step = [&](const TrainProgress& p) {
        if (!bar)
            bar = std::make_unique<ProgressBar>(a.stage, p.total, "step", p.first_step - 1);
        char text[96];
        std::snprintf(text, sizeof(text), "loss %.4f (avg %.4f) lr %.2e", p.loss, p.loss_ema, p.lr);
        bar->update(p.step, text);
    };
    o.on_event = [&](const std::string& what) {
        if (!bar || what.rfind("checkpoint", 0) != 0)
            spdlog::info("{}", what);
    };
    spdlog::info("train {}: {} steps, batch {} x {} process(es), lr {:g}, run {}", a.stage, env.config.steps,
                 env.config.batch, dp ? dp->world_size() : 1, env.config.lr, a.run);
    const TrainResult r = run_training(*stage, env.config, o);
    if (bar)
        bar->finish();
    spdlog::info("train {}: steps {}..{} in {:.1f} s, loss average {:.4f}, checkpoint {}, model {}", a.stage,
                 r.first_step, r.last_step, r.seconds, r.loss_ema, r.checkpoint, env.model_dir());
}

}  // namespace

void add_train_command(CLI::App& app) {
    auto a = std::make_shared<TrainArgs>();
    CLI::App* cmd = app.add_subcommand(
        "train", "Train one stage (tokenizer, vae, text, base, memory, ar) into a run folder");
    cmd->add_option("stage", a->stage, "The stage")
        ->required()
        ->check(CLI::IsMember({"tokenizer", "vae", "text", "base", "memory", "ar"}));
    cmd->add_option("--config", a->config, "Train config (default configs/train/tiny-<stage>.json)");
    cmd->add_option("--run", a->run,
                    "Run folder: <run>/<stage> (checkpoints, metrics, samples; the config's folder if it "
                    "names one), <run>/model")
        ->capture_default_str();
    cmd->add_option("--steps", a->steps, "Override the config's steps")->check(CLI::Range(1, 100000000));
    cmd->add_flag("--restart", a->restart, "Discard this stage's checkpoints and start again");
    cmd->add_option("--exit-after", a->exit_after,
                    "Testing: end the process abruptly (as if killed) after this step")
        ->check(CLI::Range(1, 100000000));
    cmd->add_option("--device", a->device, "cpu or cuda[:N]")->capture_default_str();
    cmd->callback([a] { run_train(*a); });
}

}  // namespace memoreel
