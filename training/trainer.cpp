#include "training/trainer.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "model/checkpoint.h"
#include "model/json_util.h"
#include "training/adamw.h"
#include "training/autocast.h"
#include "training/distributed.h"

namespace fs = std::filesystem;

namespace memoreel {

namespace {

constexpr double kEmaDecay = 0.98;

std::string checkpoints_root(const std::string& stage_dir) {
    return (fs::path(stage_dir) / "checkpoints").string();
}

std::string latest_file(const std::string& stage_dir) {
    return (fs::path(checkpoints_root(stage_dir)) / "latest.json").string();
}

struct RunState {
    int64_t step = 0;
    double loss_ema = 0;
    double best_ema = 0;
    bool ema_started = false;
};

// Keeps only the metrics lines of steps <= step, so a resumed run's file reads as one run.
void truncate_metrics(const std::string& path, int64_t step) {
    if (!fs::exists(path))
        return;
    std::ifstream in(path);
    std::ostringstream kept;
    std::string line;
    while (std::getline(in, line)) {
        if (line.empty())
            continue;
        try {
            const auto j = nlohmann::json::parse(line);
            if (j.value("step", int64_t{0}) <= step)
                kept << line << '\n';
        } catch (const nlohmann::json::exception&) {
            // A line cut short by a kill: dropped.
        }
    }
    write_file_atomic(path, kept.str());
}

void write_checkpoint(const std::string& stage_dir,
                      int64_t step,
                      const std::vector<std::pair<std::string, torch::Tensor>>& params,
                      const AdamW& optimizer,
                      const std::vector<std::pair<std::string, torch::Tensor>>& ema,
                      const RunState& state,
                      const TrainConfig& config,
                      int world_size,
                      int64_t keep) {
    const fs::path root = checkpoints_root(stage_dir);
    fs::create_directories(root);
    const fs::path final_dir = checkpoint_dir(stage_dir, step);
    const fs::path tmp = root / (final_dir.filename().string() + ".tmp");
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    save_tensors((tmp / "weights.safetensors").string(), params, {{"step", std::to_string(step)}});
    save_tensors((tmp / "optimizer.safetensors").string(), optimizer.state(),
                 {{"step", std::to_string(step)}});
    if (!ema.empty())
        save_tensors((tmp / "ema.safetensors").string(), ema, {{"step", std::to_string(step)}});
    const nlohmann::json meta = {{"step", step},
                                 {"loss_ema", state.loss_ema},
                                 {"best_ema", state.best_ema},
                                 {"ema_started", state.ema_started},
                                 {"world_size", world_size},
                                 {"threads", torch::get_num_threads()},
                                 {"config", config.to_json()}};
    write_file_atomic((tmp / "state.json").string(), meta.dump(2) + "\n");
    fs::remove_all(final_dir);
    fs::rename(tmp, final_dir);
    write_file_atomic(latest_file(stage_dir),
                      nlohmann::json{{"step", step}, {"dir", final_dir.filename().string()}}.dump() + "\n");
    // Older checkpoints beyond `keep`.
    std::vector<std::pair<int64_t, fs::path>> all;
    for (const auto& e : fs::directory_iterator(root)) {
        const std::string name = e.path().filename().string();
        long long s = 0;
        char rest = 0;
        if (e.is_directory() && std::sscanf(name.c_str(), "step-%lld%c", &s, &rest) == 1)
            all.emplace_back(s, e.path());
    }
    std::sort(all.begin(), all.end());
    for (size_t i = 0; i + static_cast<size_t>(keep) < all.size(); ++i)
        if (all[i].first != step)
            fs::remove_all(all[i].second);
}

// Copies every named tensor from a checkpoint file into its counterpart, naming a missing or mis-shaped one.
void copy_stored(const TensorSource& stored,
                 const std::vector<std::pair<std::string, torch::Tensor>>& into,
                 const std::string& missing) {
    torch::NoGradGuard no_grad;
    for (const auto& [name, t] : into) {
        if (!stored.has(name))
            throw CheckpointError(stored.description(), name, missing);
        const torch::Tensor v = stored.get(name);
        if (v.sizes() != t.sizes())
            throw CheckpointError(stored.file_of(name), name, "has the wrong shape for this stage");
        torch::Tensor(t).copy_(v);
    }
}

// A fresh run's warm start (config.init_from): copies the stored tensors whose names start with one of the
// prefixes into the trained ones. Every trained tensor under a prefix must be stored with its shape, so a
// typo or another architecture fails here instead of training half a model from scratch.
std::string warm_start(const TrainConfig& config,
                       const std::vector<std::pair<std::string, torch::Tensor>>& params) {
    const TensorSource stored = TensorSource::open(config.init_from);
    std::vector<std::pair<std::string, torch::Tensor>> chosen;
    for (const auto& [name, t] : params)
        for (const auto& prefix : config.init_prefixes)
            if (name.rfind(prefix, 0) == 0) {
                chosen.emplace_back(name, t);
                break;
            }
    if (chosen.empty())
        throw CheckpointError(config.source_path, "",
                              "field 'init_from.only': no trained tensor of stage " + config.stage +
                                  " starts with these prefixes");
    copy_stored(stored, chosen, "is missing (named by init_from in " + config.source_path + ")");
    std::string prefixes;
    for (const auto& p : config.init_prefixes)
        prefixes += (prefixes.empty() ? "" : ", ") + p;
    return "warm start: " + std::to_string(chosen.size()) + " of " + std::to_string(params.size()) +
           " trained tensors (" + prefixes + ") from " + config.init_from + ", the others as built";
}

// While alive, the trained parameters hold the weight average (for samples and the export); the trained
// weights come back on destruction. No-op without an average.
class AveragedWeights {
  public:
    AveragedWeights(const std::vector<std::pair<std::string, torch::Tensor>>& params,
                    const std::vector<std::pair<std::string, torch::Tensor>>& ema)
        : params_(params) {
        torch::NoGradGuard no_grad;
        for (size_t i = 0; i < ema.size(); ++i) {
            saved_.push_back(params_[i].second.clone());
            params_[i].second.copy_(ema[i].second);
        }
    }
    ~AveragedWeights() {
        torch::NoGradGuard no_grad;
        for (size_t i = 0; i < saved_.size(); ++i)
            params_[i].second.copy_(saved_[i]);
    }
    AveragedWeights(const AveragedWeights&) = delete;
    AveragedWeights& operator=(const AveragedWeights&) = delete;

  private:
    const std::vector<std::pair<std::string, torch::Tensor>>& params_;
    std::vector<torch::Tensor> saved_;
};

bool all_finite(const std::vector<std::pair<std::string, torch::Tensor>>& params) {
    torch::NoGradGuard no_grad;
    for (const auto& [name, p] : params)
        if (!torch::isfinite(p).all().item<bool>())
            return false;
    return true;
}

}  // namespace

std::string checkpoint_dir(const std::string& stage_dir, int64_t step) {
    char name[32];
    std::snprintf(name, sizeof(name), "step-%08lld", static_cast<long long>(step));
    return (fs::path(checkpoints_root(stage_dir)) / name).string();
}

int64_t latest_checkpoint_step(const std::string& stage_dir) {
    const std::string path = latest_file(stage_dir);
    if (!fs::exists(path))
        return 0;
    const nlohmann::json j = read_json_file(path);
    if (!j.contains("step") || !j["step"].is_number_integer())
        throw CheckpointError(path, "", "has no integer 'step'");
    return j["step"].get<int64_t>();
}

uint64_t step_seed(uint64_t seed, int64_t step, int rank) {
    // SplitMix64 finaliser over the three values: neighbouring steps get unrelated streams.
    uint64_t z = seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(step) * 0xBF58476D1CE4E5B9ull +
                 static_cast<uint64_t>(rank) * 0x94D049BB133111EBull + 0x632BE59BD9B4E019ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

TrainResult run_training(TrainStage& stage, const TrainConfig& config, const TrainerOptions& options) {
    DataParallel* dp = options.parallel;
    const int rank = dp ? dp->rank() : 0;
    const bool leader = rank == 0;
    const auto event = [&](const std::string& what) {
        if (leader && options.on_event)
            options.on_event(what);
    };
    fs::create_directories(options.stage_dir);
    const std::string metrics_path = (fs::path(options.stage_dir) / "metrics.jsonl").string();
    const std::string samples_dir = (fs::path(options.stage_dir) / "samples").string();

    auto params = stage.trainable();
    if (params.empty())
        throw std::invalid_argument("stage " + config.stage + " has nothing to train");
    std::vector<torch::Tensor> tensors;
    for (const auto& [name, p] : params)
        tensors.push_back(p);
    AdamW optimizer(params, {config.beta1,
                             config.beta2,
                             config.eps,
                             config.weight_decay,
                             {config.lr_scale.begin(), config.lr_scale.end()}});

    RunState state;
    if (options.restart && leader)
        fs::remove_all(checkpoints_root(options.stage_dir));
    if (dp)
        dp->barrier();
    const int64_t resume = latest_checkpoint_step(options.stage_dir);
    if (resume > 0) {
        const std::string dir = checkpoint_dir(options.stage_dir, resume);
        const TensorSource weights = TensorSource::open((fs::path(dir) / "weights.safetensors").string());
        copy_stored(weights, params, "is missing: the checkpoint was written by a different stage setup");
        optimizer.load_state(TensorSource::open((fs::path(dir) / "optimizer.safetensors").string()));
        const nlohmann::json meta = read_json_file((fs::path(dir) / "state.json").string());
        state.step = resume;
        state.loss_ema = meta.value("loss_ema", 0.0);
        state.best_ema = meta.value("best_ema", 0.0);
        state.ema_started = meta.value("ema_started", false);
        if (leader) {
            const nlohmann::json was = meta.value("config", nlohmann::json::object());
            nlohmann::json now = config.to_json();
            if (was.value("stage", "") != config.stage)
                throw CheckpointError(dir, "",
                                      "was written by stage '" + was.value("stage", "") + "', not '" +
                                          config.stage + "' (use --restart)");
            // Anything but the logging/sample/checkpoint cadence changes the steps that follow: the run goes
            // on, but it is no longer the run the checkpoint began (steps, for one, reshape the lr schedule).
            // A field missing on one side has its default there (a checkpoint from before the field existed,
            // or an optional field such as lr_scale added or dropped on resume).
            const nlohmann::json defaults = TrainConfig{}.to_json();
            const auto value_in = [&](const nlohmann::json& j, const std::string& key) {
                return j.contains(key) ? j[key] : defaults.value(key, nlohmann::json());
            };
            std::set<std::string> keys;
            for (const auto& j : {was, now})
                for (auto it = j.begin(); it != j.end(); ++it)
                    keys.insert(it.key());
            for (const std::string& key : keys) {
                if (key == "log_every" || key == "sample_every" || key == "checkpoint_every" ||
                    key == "keep_checkpoints" || key == "stage")
                    continue;
                const nlohmann::json before = value_in(was, key), after = value_in(now, key);
                if (before != after)
                    spdlog::warn(
                        "resuming with a different '{}' than the checkpoint's ({} -> {}): the steps that "
                        "follow differ from an uninterrupted run's",
                        key, before.dump(), after.dump());
            }
            const int was_world = meta.value("world_size", 1), was_threads = meta.value("threads", 0);
            if (was_world != (dp ? dp->world_size() : 1))
                spdlog::warn(
                    "resuming with {} process(es), the checkpoint was written by {}: each step draws "
                    "different examples",
                    dp ? dp->world_size() : 1, was_world);
            if (was_threads != 0 && was_threads != torch::get_num_threads())
                spdlog::warn(
                    "resuming with {} threads, the checkpoint was written with {}: sums reduce in "
                    "another order, so results differ in the last bits",
                    torch::get_num_threads(), was_threads);
            truncate_metrics(metrics_path, resume);
        }
        event("resumed from " + dir + " (step " + std::to_string(resume) + ")");
    } else {
        if (!config.init_from.empty())
            event(warm_start(config, params));
        if (leader)
            truncate_metrics(metrics_path, 0);
    }
    if (leader)
        write_file_atomic((fs::path(options.stage_dir) / "config.json").string(),
                          config.to_json().dump(2) + "\n");
    // Identical replicas from the start (also covers any initialisation that drew from a process's RNG).
    if (dp)
        dp->broadcast(tensors);
    // The weight average starts as the weights, or as the checkpoint's average when it has one (a run that
    // switches the average on mid-way starts it from the checkpoint's weights).
    std::vector<std::pair<std::string, torch::Tensor>> average;
    if (config.ema_decay > 0) {
        torch::NoGradGuard no_grad;
        for (const auto& [name, p] : params)
            average.emplace_back(name, p.detach().clone());
        const std::string file =
            resume > 0 ? (fs::path(checkpoint_dir(options.stage_dir, resume)) / "ema.safetensors").string()
                       : std::string();
        if (!file.empty() && fs::exists(file)) {
            copy_stored(TensorSource::open(file), average, "is missing from the weight average");
        } else if (resume > 0) {
            event("the checkpoint has no weight average: it starts from the checkpoint's weights");
        }
    }

    TrainResult result;
    result.first_step = state.step + 1;
    const auto t0 = std::chrono::steady_clock::now();
    const auto elapsed = [&] {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    std::ofstream metrics;
    if (leader)
        metrics.open(metrics_path, std::ios::app);

    const auto last_good = [&]() -> std::string {
        const int64_t s = latest_checkpoint_step(options.stage_dir);
        return s > 0 ? checkpoint_dir(options.stage_dir, s) + " (step " + std::to_string(s) + ")"
                     : std::string("none (no checkpoint was written yet)");
    };
    bool checkpoint_due = false;  // the weights of step - 1 await this step's verdict
    for (int64_t step = state.step + 1; step <= config.steps; ++step) {
        auto gen = torch::make_generator<torch::CPUGeneratorImpl>(step_seed(config.seed, step, rank));
        optimizer.zero_grad();
        StepOutput out = [&] {
            const Autocast autocast(config.precision == "bf16", tensors.front().device());
            return stage.forward(step, gen);
        }();
        out.loss.backward();
        if (dp)
            dp->average_gradients(tensors);
        std::vector<double> figures{out.loss.item<double>()};
        for (const auto& [k, v] : out.metrics)
            figures.push_back(v);
        if (dp)
            figures = dp->average(figures);
        const double loss = figures[0];
        // The norm before clipping decides divergence; clipping first is harmless (a diverged step is
        // dropped).
        const double grad_norm = optimizer.clip_grad_norm(config.grad_clip);

        std::string diverged;
        if (!std::isfinite(loss))
            diverged = "the loss is not finite (" + std::to_string(loss) + ")";
        else if (!std::isfinite(grad_norm))
            diverged = "the gradient norm is not finite";
        else if (loss > config.divergence_loss)
            diverged = "the loss " + std::to_string(loss) + " exceeds divergence_loss " +
                       std::to_string(config.divergence_loss);
        const double ema = state.ema_started ? kEmaDecay * state.loss_ema + (1 - kEmaDecay) * loss : loss;
        if (diverged.empty() && state.ema_started && step > std::max<int64_t>(config.warmup, 50) &&
            state.best_ema > 0 && ema > config.divergence_factor * state.best_ema)
            diverged = "the loss average " + std::to_string(ema) + " is more than " +
                       std::to_string(config.divergence_factor) + "x its best " +
                       std::to_string(state.best_ema);
        if (!diverged.empty()) {
            if (leader && metrics.is_open()) {
                metrics << nlohmann::json{{"step", step}, {"event", "diverged"}, {"reason", diverged}}.dump()
                        << '\n';
                metrics.flush();
            }
            throw DivergenceError("training diverged at step " + std::to_string(step) + ": " + diverged +
                                  ". Stopped; the last good checkpoint is " + last_good() +
                                  ". Lower lr (or raise warmup) and resume from it.");
        }
        // The weights of step - 1 just gave a good loss: their checkpoint is safe to write.
        if (checkpoint_due && leader) {
            write_checkpoint(options.stage_dir, step - 1, params, optimizer, average, state, config,
                             dp ? dp->world_size() : 1, config.keep_checkpoints);
            event("checkpoint " + checkpoint_dir(options.stage_dir, step - 1));
        }
        checkpoint_due = false;

        const double lr = scheduled_lr(config, step);
        optimizer.step(lr);
        if (!average.empty()) {
            // Shorter memory over the first steps, so that the average is not mostly the initialisation.
            const double d =
                std::min(config.ema_decay, static_cast<double>(1 + step) / static_cast<double>(10 + step));
            torch::NoGradGuard no_grad;
            for (size_t i = 0; i < average.size(); ++i)
                average[i].second.mul_(d).add_(params[i].second, 1 - d);
        }
        state.step = step;
        state.loss_ema = ema;
        state.ema_started = true;
        if (step > config.warmup && (state.best_ema <= 0 || ema < state.best_ema))
            state.best_ema = ema;

        if (leader && (step % config.log_every == 0 || step == config.steps || step == result.first_step)) {
            nlohmann::json line = {{"step", step}, {"loss", loss},           {"loss_ema", ema},
                                   {"lr", lr},     {"grad_norm", grad_norm}, {"seconds", elapsed()}};
            size_t i = 1;
            for (const auto& [k, v] : out.metrics)
                line[k] = figures[i++];
            metrics << line.dump() << '\n';
            metrics.flush();
        }
        if (options.on_step && leader)
            options.on_step({step, config.steps, result.first_step, loss, ema, lr, grad_norm, elapsed()});
        if (step % config.checkpoint_every == 0 && step < config.steps)
            checkpoint_due = true;
        if (leader && config.sample_every > 0 && step % config.sample_every == 0 && step < config.steps) {
            fs::create_directories(samples_dir);
            {
                AveragedWeights averaged(params, average);
                stage.sample(step, samples_dir);
            }
            event("samples of step " + std::to_string(step) + " in " + samples_dir);
        }
        if (options.exit_after > 0 && step == options.exit_after) {
            if (metrics.is_open())
                metrics.flush();
            std::_Exit(137);
        }
    }

    // The end: the final weights have no next step to vouch for them, so they are checked directly.
    if (!all_finite(params))
        throw DivergenceError("training ended with non-finite weights; the last good checkpoint is " +
                              last_good());
    const int64_t done = latest_checkpoint_step(options.stage_dir);
    if (leader && done < config.steps) {
        write_checkpoint(options.stage_dir, config.steps, params, optimizer, average, state, config,
                         dp ? dp->world_size() : 1, config.keep_checkpoints);
        event("checkpoint " + checkpoint_dir(options.stage_dir, config.steps));
    }
    if (leader) {
        fs::create_directories(samples_dir);
        AveragedWeights averaged(params, average);
        stage.sample(config.steps, samples_dir);
        stage.export_model(options.model_dir);
        event("exported into " + options.model_dir);
    }
    if (dp) {
        // The replicas must be identical: per-tensor sums, compared with their mean over the processes.
        std::vector<double> sums;
        {
            torch::NoGradGuard no_grad;
            for (const auto& t : tensors)
                sums.push_back(t.to(torch::kFloat64).sum().item<double>());
        }
        // Rank 0's sums, broadcast, compared exactly (a mean over 3 equal values need not equal them).
        torch::Tensor leader_sums = torch::tensor(sums, torch::dtype(torch::kFloat64));
        if (dp->backend() == "nccl")
            leader_sums = leader_sums.cuda();
        dp->broadcast({leader_sums});
        leader_sums = leader_sums.cpu();
        double total = 0;
        size_t differing = 0;
        for (size_t i = 0; i < sums.size(); ++i) {
            total += sums[i];
            differing += sums[i] != leader_sums[static_cast<int64_t>(i)].item<double>();
        }
        const std::vector<double> all_differing = dp->average({static_cast<double>(differing)});
        char text[160];
        std::snprintf(text, sizeof(text), "rank %d: replica checksum %.17g, %s", rank, total,
                      all_differing[0] == 0 ? "replicas identical" : "REPLICAS DIFFER");
        spdlog::info("{}", text);
        if (all_differing[0] != 0)
            throw std::runtime_error(std::string("data parallel: ") + text);
        dp->barrier();
    }
    result.last_step = config.steps;
    result.seconds = elapsed();
    result.loss_ema = state.loss_ema;
    result.checkpoint = checkpoint_dir(options.stage_dir, config.steps);
    return result;
}

}  // namespace memoreel
