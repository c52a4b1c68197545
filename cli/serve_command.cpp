// `memoreel serve`: the live server (DESIGN.md section 4) with the settings of configs/server.json, any of
// which a flag overrides. Runs until SIGINT/SIGTERM, then stops the network, lets the worker finish its
// section (whose snapshot is written), and exits; sessions continue when the server starts again.
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <csignal>
#include <thread>

#include "cli/commands.h"
#include "model/json_fields.h"
#include "model/json_util.h"
#include "server/api_server.h"

namespace memoreel {

namespace {

struct ServeArgs {
    std::string config = "configs/server.json";
    std::string address;
    int port = -1;
    std::string model;
    std::string weights;
    std::string device;
    std::string dtype;
    std::string state_dir;
    std::string web_root;
    std::vector<std::string> api_keys;
    int max_sessions = -1;
};

struct ServeConfig {
    ModelHostOptions model;
    ApiServerOptions api;
};

ServeConfig read_config(const std::string& path) {
    ServeConfig c;
    const nlohmann::json j = read_json_file(path);
    JsonFields top(j, path, "");
    auto& h = c.api.http;
    std::string address = h.address;
    int64_t port = h.port, threads = h.threads;
    top.get("address", address);
    top.get("port", port);
    top.get("network_threads", threads);
    top.get("web_root", h.web_root);
    top.get("model", c.model.model);
    top.get("device", c.model.device);
    top.get("dtype", c.model.dtype);
    top.get("state_dir", c.api.sessions.state_dir);
    top.get("api_keys", c.api.api_keys);
    top.get("start_timeout_seconds", c.api.start_timeout_seconds);
    if (port < 0 || port > 65535)
        top.fail("port", "must be 0..65535");
    if (threads < 1 || threads > 64)
        top.fail("network_threads", "must be 1..64");
    h.address = address;
    h.port = static_cast<uint16_t>(port);
    h.threads = static_cast<int>(threads);
    top.accept({"limits", "session", "viewer"});
    top.reject_unknown();
    auto& so = c.api.sessions;
    auto& ss = so.session;
    if (j.contains("limits")) {
        JsonFields f(j["limits"], path, "limits");
        int64_t sessions = static_cast<int64_t>(so.max_sessions), jobs = static_cast<int64_t>(so.max_jobs);
        int64_t body = static_cast<int64_t>(h.max_body_bytes),
                message = static_cast<int64_t>(ss.limits.max_message_bytes);
        int64_t prompt = static_cast<int64_t>(ss.limits.max_prompt_bytes),
                prompts = static_cast<int64_t>(ss.limits.max_prompts);
        f.get("max_sessions", sessions);
        f.get("max_jobs", jobs);
        f.get("max_body_bytes", body);
        f.get("max_message_bytes", message);
        f.get("max_prompt_bytes", prompt);
        f.get("max_prompts", prompts);
        f.get("max_seconds", ss.limits.max_seconds);
        f.get("session_idle_seconds", so.idle_seconds);
        f.get("session_keep_seconds", so.keep_seconds);
        f.reject_unknown();
        for (const auto& [name, v] : std::map<std::string, int64_t>{{"max_sessions", sessions},
                                                                    {"max_jobs", jobs},
                                                                    {"max_body_bytes", body},
                                                                    {"max_message_bytes", message},
                                                                    {"max_prompt_bytes", prompt},
                                                                    {"max_prompts", prompts}})
            if (v < 1)
                f.fail(name, "must be >= 1");
        so.max_sessions = static_cast<size_t>(sessions);
        so.max_jobs = static_cast<size_t>(jobs);
        h.max_body_bytes = static_cast<size_t>(body);
        ss.limits.max_message_bytes = static_cast<size_t>(message);
        ss.limits.max_prompt_bytes = static_cast<size_t>(prompt);
        ss.limits.max_prompts = static_cast<size_t>(prompts);
    }
    if (j.contains("session")) {
        JsonFields f(j["session"], path, "session");
        int64_t bitrate = ss.bitrate_kbps, replay = static_cast<int64_t>(ss.replay_sections);
        f.get("default_seconds", ss.default_seconds);
        f.get("section_frames", ss.section_frames);
        f.get("max_lead_seconds", ss.max_lead_seconds);
        f.get("bitrate_kbps", bitrate);
        f.get("replay_sections", replay);
        f.reject_unknown();
        if (ss.section_frames < 1 || ss.section_frames > 64)
            f.fail("section_frames", "must be 1..64");
        if (bitrate < 50 || bitrate > 100000)
            f.fail("bitrate_kbps", "must be 50..100000");
        ss.bitrate_kbps = static_cast<int>(bitrate);
        ss.replay_sections = static_cast<size_t>(std::max<int64_t>(0, replay));
    }
    if (j.contains("viewer")) {
        JsonFields f(j["viewer"], path, "viewer");
        int64_t bytes = static_cast<int64_t>(ss.viewer.max_bytes),
                segments = static_cast<int64_t>(ss.viewer.max_segments);
        f.get("max_queue_bytes", bytes);
        f.get("max_queue_segments", segments);
        f.get("stall_seconds", ss.viewer.stall_seconds);
        f.reject_unknown();
        if (bytes < 65536 || segments < 2)
            f.fail("", "max_queue_bytes >= 65536 and max_queue_segments >= 2");
        ss.viewer.max_bytes = static_cast<size_t>(bytes);
        ss.viewer.max_segments = static_cast<size_t>(segments);
    }
    return c;
}

// A signal handler can only set a flag of static storage; this is the one global besides the logger.
volatile std::sig_atomic_t g_signal = 0;

void run_serve(const ServeArgs& a) {
    ServeConfig c = read_config(a.config);
    if (!a.address.empty())
        c.api.http.address = a.address;
    if (a.port >= 0)
        c.api.http.port = static_cast<uint16_t>(a.port);
    if (!a.model.empty())
        c.model.model = a.model;
    if (!a.weights.empty())
        c.model.weights = a.weights;
    if (!a.device.empty())
        c.model.device = a.device;
    if (!a.dtype.empty())
        c.model.dtype = a.dtype;
    if (!a.state_dir.empty())
        c.api.sessions.state_dir = a.state_dir;
    if (!a.web_root.empty())
        c.api.http.web_root = a.web_root;
    if (!a.api_keys.empty())
        c.api.api_keys = a.api_keys;
    if (a.max_sessions > 0)
        c.api.sessions.max_sessions = static_cast<size_t>(a.max_sessions);
    spdlog::info("loading {}", c.model.model);
    ModelHost host(c.model);
    ApiServer server(host, c.api);
    server.start();
    spdlog::info("memoreel serves {} on http://{}:{}/ (state in {}{})", host.name(), c.api.http.address,
                 server.port(), c.api.sessions.state_dir,
                 c.api.api_keys.empty() ? "" : ", API keys required");
    std::signal(SIGINT, [](int s) { g_signal = s; });
    std::signal(SIGTERM, [](int s) { g_signal = s; });
    while (!g_signal)
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    spdlog::info("stopping (signal {}): the current section finishes and is saved",
                 static_cast<int>(g_signal));
    server.stop();
}

}  // namespace

void add_serve_command(CLI::App& app) {
    auto args = std::make_shared<ServeArgs>();
    CLI::App* cmd = app.add_subcommand(
        "serve", "Run the live server: WebSocket streaming, REST sessions and jobs, the web client");
    cmd->add_option("--config", args->config, "Server config (JSON)")->capture_default_str();
    cmd->add_option("--address", args->address, "Address to listen on (config: address)");
    cmd->add_option("--port", args->port, "Port (0: any free port; config: port)")
        ->check(CLI::Range(0, 65535));
    cmd->add_option("--model", args->model, "Model config (config: model)");
    cmd->add_option("--weights", args->weights, "Folder of the weights named in the model config");
    cmd->add_option("--device", args->device, "cpu, cuda or cuda:N");
    cmd->add_option("--dtype", args->dtype, "fp32 or bf16")->check(CLI::IsMember({"fp32", "bf16"}));
    cmd->add_option("--state-dir", args->state_dir, "Where sessions and jobs are kept (config: state_dir)");
    cmd->add_option("--web-root", args->web_root, "The web client's folder (config: web_root)");
    cmd->add_option("--api-key", args->api_keys, "Require this API key (repeatable; config: api_keys)");
    cmd->add_option("--max-sessions", args->max_sessions,
                    "Live sessions at once (config: limits.max_sessions)")
        ->check(CLI::Range(1, 1000));
    cmd->callback([args] { run_serve(*args); });
}

}  // namespace memoreel
