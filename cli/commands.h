// Subcommands of the memoreel executable. Each adds itself to the CLI11 app and runs from its callback.
#pragma once

namespace CLI {
class App;
}

namespace memoreel {

void add_generate_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_data_command(CLI::App& app);
void add_train_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_export_command(CLI::App& app);
void add_serve_command(CLI::App& app);
// `bench memory` and `bench serve` (the load run), added under the bench subcommand.
void add_bench_memory_command(CLI::App& bench);
void add_bench_serve_command(CLI::App& bench);

}  // namespace memoreel
