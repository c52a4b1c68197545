// `memoreel export`: a model folder (e.g. a training run's `<run>/model/model.json`) as a self-contained
// folder in bf16/fp16/fp32 (model/model_export.h). The bundled default `models/memoreel-tiny/` is made this
// way.
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <memory>

#include "cli/commands.h"
#include "model/model_export.h"

namespace memoreel {

namespace {

struct ExportArgs {
    std::string model = "runs/tiny/model/model.json";
    std::string out;
    std::string dtype = "bf16";
    std::string description;
};

void run_export(const ExportArgs& a) {
    const torch::Dtype dtype =
        a.dtype == "bf16" ? torch::kBFloat16 : (a.dtype == "fp16" ? torch::kFloat16 : torch::kFloat32);
    const auto written = export_model_folder(a.model, a.out, dtype, a.description);
    int64_t total = 0;
    for (const auto& [role, f] : written) {
        spdlog::info("{:<13} {:<28} {:>8.2f} MB  {} tensors", role, f.file, f.bytes / 1e6, f.tensors);
        total += f.bytes;
    }
    spdlog::info("wrote {}/model.json: {:.2f} MB in all ({})", a.out, total / 1e6, a.dtype);
}

}  // namespace

void add_export_command(CLI::App& app) {
    auto a = std::make_shared<ExportArgs>();
    CLI::App* cmd = app.add_subcommand(
        "export", "Write a model folder (model.json + weights) as a self-contained folder in bf16/fp16/fp32");
    cmd->add_option("--model", a->model, "The model.json to export")->capture_default_str();
    cmd->add_option("--out", a->out, "Output folder")->required();
    cmd->add_option("--dtype", a->dtype, "Floating-point type of the weights")
        ->capture_default_str()
        ->check(CLI::IsMember({"bf16", "fp16", "fp32"}));
    cmd->add_option("--description", a->description, "Description written into model.json");
    cmd->callback([a] { run_export(*a); });
}

}  // namespace memoreel
