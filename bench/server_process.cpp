#include "bench/server_process.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "bench/http_get.h"

extern char** environ;

namespace memoreel::bench {

namespace {

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

bool exited(pid_t pid, int* status) {
    return waitpid(pid, status, WNOHANG) == pid;
}

}  // namespace

ServerProcess::ServerProcess(const std::vector<std::string>& serve_args,
                             int threads,
                             const std::string& state_dir,
                             const std::string& log_path,
                             double ready_timeout_s)
    : log_path_(log_path) {
    std::vector<std::string> args = {"memoreel", "--threads", std::to_string(threads), "serve"};
    args.insert(args.end(), serve_args.begin(), serve_args.end());
    // Last, so they win over anything in serve_args (options take the last occurrence).
    for (const char* a : {"--port", "0", "--state-dir"})
        args.emplace_back(a);
    args.push_back(state_dir);
    std::vector<char*> argv;
    for (auto& a : args)
        argv.push_back(a.data());
    argv.push_back(nullptr);

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0644);
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    // This executable, whatever the caller's working directory or PATH.
    const int rc = posix_spawn(&pid_, "/proc/self/exe", &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0)
        throw std::runtime_error(std::string("cannot start the server: ") + std::strerror(rc));

    // The port comes from the server's start-up line; readiness from /readyz (the model is loaded).
    const std::regex serves(R"(serves .* on http://[^:/]+:([0-9]+)/)");
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::milliseconds(static_cast<int64_t>(ready_timeout_s * 1000));
    while (std::chrono::steady_clock::now() < deadline) {
        int status = 0;
        if (exited(pid_, &status)) {
            pid_ = -1;
            throw std::runtime_error("the server exited during start-up (status " + std::to_string(status) +
                                     "); its log (" + log_path_ + ") ends:\n" + log_tail());
        }
        if (port_ == 0) {
            std::smatch m;
            const std::string log = read_file(log_path_);
            if (std::regex_search(log, m, serves))
                port_ = static_cast<uint16_t>(std::stoi(m[1].str()));
        }
        if (port_ != 0) {
            try {
                if (http_get("127.0.0.1", port_, "/readyz", {}, 2).status == 200)
                    return;
            } catch (const std::exception&) {
                // not accepting yet
            }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    stop(5);
    throw std::runtime_error("the server was not ready within " + std::to_string(ready_timeout_s) +
                             " s; its log (" + log_path_ + ") ends:\n" + log_tail());
}

ServerProcess::~ServerProcess() {
    stop();
}

void ServerProcess::stop(double grace_s) {
    if (pid_ <= 0)
        return;
    int status = 0;
    kill(pid_, SIGTERM);
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(grace_s * 1000));
    while (!exited(pid_, &status)) {
        if (std::chrono::steady_clock::now() > deadline) {
            kill(pid_, SIGKILL);
            waitpid(pid_, &status, 0);
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    pid_ = -1;
}

std::string ServerProcess::log_tail() const {
    const std::string log = read_file(log_path_);
    return log.size() > 4000 ? log.substr(log.size() - 4000) : log;
}

}  // namespace memoreel::bench
