// A `memoreel serve` child process for the load run (bench serve): started from this same executable on a
// free loopback port with its own state folder, so the figures are the server's alone (its RSS, its threads),
// and stopped with SIGTERM (then SIGKILL) when the object goes away.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace memoreel::bench {

class ServerProcess {
  public:
    // `serve_args`: the arguments after `memoreel [--threads N] serve` (config, model, limits...); --port 0
    // and --state-dir are added. The server's log goes to `log_path`. Waits until /readyz answers 200 or
    // `ready_timeout_s` passes (model loading); throws with the log's tail when the child dies or is not
    // ready.
    ServerProcess(const std::vector<std::string>& serve_args,
                  int threads,
                  const std::string& state_dir,
                  const std::string& log_path,
                  double ready_timeout_s);
    ~ServerProcess();
    ServerProcess(const ServerProcess&) = delete;
    ServerProcess& operator=(const ServerProcess&) = delete;

    uint16_t port() const { return port_; }
    pid_t pid() const { return pid_; }
    // SIGTERM, wait up to `grace_s` (the worker finishes its section), then SIGKILL. Idempotent.
    void stop(double grace_s = 60);

  private:
    std::string log_tail() const;

    pid_t pid_ = -1;
    uint16_t port_ = 0;
    std::string log_path_;
};

}  // namespace memoreel::bench
