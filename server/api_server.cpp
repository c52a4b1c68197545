#include "server/api_server.h"

#include <spdlog/spdlog.h>

#include <filesystem>
#include <future>
#include <sstream>

#include "server/live_socket.h"
#include "server/random_id.h"

namespace memoreel {

namespace {

std::vector<std::string> split_path(const std::string& path) {
    std::vector<std::string> parts;
    std::stringstream in(path);
    std::string part;
    while (std::getline(in, part, '/'))
        if (!part.empty())
            parts.push_back(part);
    return parts;
}

int status_for(const std::string& code) {
    if (code == "too_many_sessions" || code == "too_many_jobs" || code == "busy")
        return 429;
    if (code == "unknown_session" || code == "not_found")
        return 404;
    if (code == "bad_token")
        return 403;
    if (code == "unauthorized")
        return 401;
    if (code == "event_conflict" || code == "not_in_memory" || code == "not_ready")
        return 409;
    if (code == "message_too_large")
        return 413;
    if (code == "internal")
        return 500;
    return 400;
}

nlohmann::json parse_body(const HttpRequest& r) {
    if (r.body.empty())
        return nlohmann::json::object();
    try {
        return nlohmann::json::parse(r.body);
    } catch (const nlohmann::json::exception& e) {
        throw protocol::ProtocolError("bad_json", std::string("the body is not JSON: ") + e.what());
    }
}

// The OpenAI create-video body, extended with a storyboard, memory and sampling, as a session.start request.
nlohmann::json start_from_openai(const nlohmann::json& b, const std::string& model_name) {
    if (!b.is_object())
        throw protocol::ProtocolError("bad_json", "the body must be a JSON object");
    for (auto it = b.begin(); it != b.end(); ++it) {
        static const std::set<std::string> known = {"prompt", "storyboard", "seconds",  "size",  "model",
                                                    "seed",   "memory",     "sampling", "format"};
        if (!known.count(it.key()))
            throw protocol::ProtocolError("bad_field", "field '" + it.key() + "': unknown field");
    }
    nlohmann::json start = nlohmann::json::object();
    if (b.contains("model") && !b["model"].is_null() && b["model"] != model_name)
        throw protocol::ProtocolError(
            "bad_field", "field 'model': this server serves " + model_name + ", not " + b["model"].dump());
    for (const char* k : {"prompt", "storyboard", "seed", "memory", "sampling"})
        if (b.contains(k))
            start[k] = b[k];
    if (b.contains("seconds")) {
        const auto& s = b["seconds"];
        if (s.is_string()) {
            try {
                size_t used = 0;
                start["seconds"] = std::stod(s.get<std::string>(), &used);
                if (used != s.get<std::string>().size())
                    throw std::invalid_argument("trailing characters");
            } catch (const std::exception&) {
                throw protocol::ProtocolError("bad_field", "field 'seconds': not a number: " + s.dump());
            }
        } else {
            start["seconds"] = s;
        }
    }
    if (b.contains("size")) {
        const std::string size = b["size"].is_string() ? b["size"].get<std::string>() : "";
        const auto x = size.find('x');
        try {
            if (x == std::string::npos)
                throw std::invalid_argument("no x");
            start["width"] = std::stoll(size.substr(0, x));
            start["height"] = std::stoll(size.substr(x + 1));
        } catch (const std::exception&) {
            throw protocol::ProtocolError("bad_field", "field 'size': WIDTHxHEIGHT, e.g. \"320x192\"");
        }
    }
    return start;
}

}  // namespace

ApiServer::ApiServer(ModelHost& host, ApiServerOptions options) : host_(host), options_(std::move(options)) {
    sessions_ = std::make_unique<SessionManager>(host_, options_.sessions, metrics_);
    metrics_.counter("memoreel_bytes_sent_total", "Bytes written to clients (HTTP and WebSocket)");
    HttpRoutes routes;
    routes.http = [this](const HttpRequest& r, Respond respond) { handle(r, std::move(respond)); };
    routes.websocket = [this](const HttpRequest& r) -> std::shared_ptr<WsHandler> {
        auto socket = std::make_shared<LiveSocket>(*sessions_, options_.sessions.session.limits,
                                                   options_.sessions.session.viewer, authorized(r));
        std::lock_guard<std::mutex> lock(sockets_mutex_);
        pending_sockets_.push_back(socket);
        return socket;
    };
    options_.http.max_ws_message_bytes = options_.sessions.session.limits.max_message_bytes;
    // The application's skip policy acts first (viewer.max_segments); the network layer's bound is the
    // backstop for a connection that takes nothing at all.
    options_.http.max_ws_queue_messages = std::max<size_t>(
        options_.http.max_ws_queue_messages, 4 * options_.sessions.session.viewer.max_segments + 16);
    options_.http.max_ws_queue_bytes =
        std::max<size_t>(options_.http.max_ws_queue_bytes, 2 * options_.sessions.session.viewer.max_bytes);
    http_ = std::make_unique<HttpServer>(options_.http, std::move(routes));
}

ApiServer::~ApiServer() {
    stop();
}

void ApiServer::start() {
    sessions_->start();
    http_->start();
    stopping_ = false;
    timeouts_ = std::thread([this] {
        while (!stopping_) {
            std::this_thread::sleep_for(std::chrono::milliseconds(250));
            std::lock_guard<std::mutex> lock(sockets_mutex_);
            pending_sockets_.erase(
                std::remove_if(pending_sockets_.begin(), pending_sockets_.end(),
                               [&](const std::weak_ptr<LiveSocket>& w) {
                                   auto s = w.lock();
                                   return !s || s->check_start_timeout(options_.start_timeout_seconds);
                               }),
                pending_sockets_.end());
        }
    });
}

void ApiServer::stop() {
    stopping_ = true;
    if (timeouts_.joinable())
        timeouts_.join();
    if (http_)
        http_->stop();
    if (sessions_)
        sessions_->stop();
}

uint16_t ApiServer::port() const {
    return http_->port();
}

bool ApiServer::authorized(const HttpRequest& r) const {
    if (options_.api_keys.empty())
        return true;
    std::string key;
    const std::string auth = r.header("authorization");
    if (auth.rfind("Bearer ", 0) == 0)
        key = auth.substr(7);
    else if (const auto it = r.query.find("api_key"); it != r.query.end())
        key = it->second;
    for (const auto& k : options_.api_keys)
        if (!key.empty() && k == key)
            return true;
    return false;
}

void ApiServer::handle(const HttpRequest& r, Respond respond) {
    const auto parts = split_path(r.path);
    try {
        if (r.path == "/healthz")
            return respond(HttpResponse::json(200, R"({"status":"ok"})"));
        if (r.path == "/readyz")
            return respond(
                sessions_->ready()
                    ? HttpResponse::json(200,
                                         nlohmann::json{{"status", "ready"}, {"model", host_.name()}}.dump())
                    : HttpResponse::error(503, "not_ready", "the inference worker is not running"));
        if (r.path == "/metrics") {
            sessions_->update_metrics();
            const uint64_t sent = http_->bytes_sent();
            const uint64_t before = bytes_reported_.exchange(sent);
            if (sent > before)
                metrics_.add("memoreel_bytes_sent_total", static_cast<double>(sent - before));
            HttpResponse res;
            res.content_type = Metrics::kContentType;
            res.body = metrics_.render();
            return respond(res);
        }
        if (parts.size() >= 2 && parts[0] == "v1") {
            if (!authorized(r))
                return respond(HttpResponse::error(401, "unauthorized",
                                                   "a valid API key is needed: Authorization: Bearer <key>"));
            if (parts[1] == "sessions")
                return handle_session(r, parts, respond);
            if (parts[1] == "videos")
                return handle_videos(r, parts, respond);
        }
        respond(HttpResponse::error(404, "not_found", "nothing at " + r.path));
    } catch (const protocol::ProtocolError& e) {
        HttpResponse res = HttpResponse::error(status_for(e.code()), e.code(), e.what());
        if (res.status == 429)
            res.headers["Retry-After"] = std::to_string(sessions_->retry_after_seconds());
        respond(res);
    } catch (const std::invalid_argument& e) {
        respond(HttpResponse::error(400, "bad_request", e.what()));
    }
}

void ApiServer::handle_session(const HttpRequest& r,
                               const std::vector<std::string>& parts,
                               Respond& respond) {
    const auto& limits = options_.sessions.session.limits;
    if (parts.size() == 2) {
        if (r.method != "POST")
            return respond(
                HttpResponse::error(405, "method_not_allowed", "POST /v1/sessions creates a session"));
        const auto session = sessions_->create_session(protocol::parse_start_request(parse_body(r), limits));
        return respond(HttpResponse::json(201, session->status_json(true).dump()));
    }
    const auto session = sessions_->find(parts[2]);
    if (!session)
        throw protocol::ProtocolError("unknown_session", "no session " + parts[2]);
    std::string token = r.header("x-session-token");
    if (token.empty())
        if (const auto it = r.query.find("token"); it != r.query.end())
            token = it->second;
    if (!session->token_matches(token))
        throw protocol::ProtocolError(
            "bad_token", "the session token (X-Session-Token or ?token=) does not open " + parts[2]);
    session->touch();
    const std::string what = parts.size() > 3 ? parts[3] : "";
    if (parts.size() > 4)
        return respond(HttpResponse::error(404, "not_found", "nothing at " + r.path));
    if (what.empty() && r.method == "GET")
        return respond(HttpResponse::json(200, session->status_json().dump()));
    if (what.empty() && r.method == "DELETE") {
        sessions_->remove(session->id());
        HttpResponse res;
        res.status = 204;
        res.content_type = "application/json";
        return respond(res);
    }
    if (what == "prompts" && r.method == "POST") {
        nlohmann::json body = parse_body(r);
        if (!body.is_object())
            throw protocol::ProtocolError("bad_json", "the body must be a JSON object");
        nlohmann::json event = nlohmann::json::object();
        for (auto it = body.begin(); it != body.end(); ++it) {
            if (it.key() == "event_id")
                continue;
            event[it.key()] = it.value();
        }
        const nlohmann::json message = {
            {"event_id",
             body.contains("event_id") ? body["event_id"] : nlohmann::json(random_hex(8, "rest_"))},
            {"event", event}};
        const auto submitted = session->submit(protocol::parse_interaction(message, limits));
        const PromptEvent& e = submitted.event;
        return respond(HttpResponse::json(
            submitted.retry ? 200 : 202,
            nlohmann::json{{"event_id", e.event_id},
                           {"status", e.status},
                           {"time", e.time < 0 ? nlohmann::json() : nlohmann::json(e.time)},
                           {"section", e.section}}
                .dump()));
    }
    if (what == "stop" && r.method == "POST") {
        session->stop("stopped");
        return respond(HttpResponse::json(200, session->status_json().dump()));
    }
    if (what == "video.mp4" && (r.method == "GET" || r.method == "HEAD")) {
        if (session->archive_bytes() == 0)
            throw protocol::ProtocolError("not_ready", "nothing has been generated yet");
        HttpResponse res;
        res.content_type = "video/mp4";
        res.file = session->archive_path();
        res.headers["Content-Disposition"] = "attachment; filename=\"" + session->id() + ".mp4\"";
        return respond(res);
    }
    if (what == "inspect.png" && r.method == "GET") {
        const auto it = r.query.find("t");
        double t = 0;
        try {
            if (it == r.query.end())
                throw std::invalid_argument("missing");
            size_t used = 0;
            t = std::stod(it->second, &used);
            if (used != it->second.size() || !std::isfinite(t) || t < 0)
                throw std::invalid_argument("bad");
        } catch (const std::exception&) {
            throw protocol::ProtocolError("bad_field", "query 't': seconds >= 0 are required");
        }
        // The model runs on the worker only: the answer comes when the worker reaches this task. A bounded
        // number wait, so inspector requests cannot pile up behind the live sessions.
        constexpr size_t kMaxPendingInspections = 8;
        const bool queued = sessions_->post(
            [session, t, respond]() {
                try {
                    nlohmann::json info;
                    HttpResponse res;
                    res.content_type = "image/png";
                    res.body = session->inspect_png(t, info);
                    res.headers["X-Memoreel-Psnr"] = std::to_string(info.at("psnr").get<double>());
                    res.headers["X-Memoreel-Latent-Frame"] =
                        std::to_string(info.at("latent_frame").get<int64_t>());
                    res.headers["X-Memoreel-Frame"] = std::to_string(info.at("frame").get<int64_t>());
                    res.headers["Access-Control-Expose-Headers"] =
                        "X-Memoreel-Psnr, X-Memoreel-Latent-Frame, X-Memoreel-Frame";
                    respond(res);
                } catch (const protocol::ProtocolError& e) {
                    respond(HttpResponse::error(status_for(e.code()), e.code(), e.what()));
                } catch (const std::exception& e) {
                    respond(HttpResponse::error(500, "internal", e.what()));
                }
            },
            kMaxPendingInspections);
        if (!queued)
            throw protocol::ProtocolError(
                "busy", std::to_string(kMaxPendingInspections) +
                            " inspector requests are waiting for the model; try again later");
        return;
    }
    respond(HttpResponse::error(404, "not_found", r.method + " " + r.path + " is not an endpoint"));
}

void ApiServer::handle_videos(const HttpRequest& r, const std::vector<std::string>& parts, Respond& respond) {
    const auto& limits = options_.sessions.session.limits;
    if (parts.size() == 2 && r.method == "POST") {
        const nlohmann::json body = parse_body(r);
        const protocol::StartRequest start =
            protocol::parse_start_request(start_from_openai(body, host_.name()), limits);
        nlohmann::json normalised = body;
        normalised["model"] = host_.name();
        normalised["seconds"] = start.seconds.value_or(options_.sessions.session.default_seconds);
        const ModelConfig& c = host_.config();
        normalised["size"] = std::to_string(start.width.value_or(c.width)) + "x" +
                             std::to_string(start.height.value_or(c.height));
        const JobRecord job = sessions_->create_job(start, normalised);
        return respond(HttpResponse::json(200, job.to_openai().dump()));
    }
    if (parts.size() == 2 && r.method == "GET") {
        int64_t limit = 20;
        if (const auto it = r.query.find("limit"); it != r.query.end()) {
            try {
                limit = std::stoll(it->second);
            } catch (const std::exception&) {
                limit = 0;
            }
            if (limit < 1 || limit > 100)
                throw protocol::ProtocolError("bad_field", "query 'limit': 1 to 100");
        }
        const std::string after = r.query.count("after") ? r.query.at("after") : "";
        const std::string order = r.query.count("order") ? r.query.at("order") : "desc";
        if (order != "asc" && order != "desc")
            throw protocol::ProtocolError("bad_field", "query 'order': asc or desc");
        const auto page = sessions_->list_jobs(limit, after, order == "desc");
        nlohmann::json data = nlohmann::json::array();
        for (const auto& j : page.jobs)
            data.push_back(j.to_openai());
        return respond(HttpResponse::json(
            200,
            nlohmann::json{
                {"object", "list"},
                {"data", data},
                {"first_id", page.jobs.empty() ? nlohmann::json() : nlohmann::json(page.jobs.front().id)},
                {"last_id", page.jobs.empty() ? nlohmann::json() : nlohmann::json(page.jobs.back().id)},
                {"has_more", page.has_more}}
                .dump()));
    }
    if (parts.size() < 3 || parts.size() > 4)
        return respond(HttpResponse::error(404, "not_found", "nothing at " + r.path));
    const auto job = sessions_->job(parts[2]);
    if (!job)
        throw protocol::ProtocolError("not_found", "no video job " + parts[2]);
    if (parts.size() == 3 && r.method == "GET")
        return respond(HttpResponse::json(200, job->to_openai().dump()));
    if (parts.size() == 3 && r.method == "DELETE") {
        sessions_->delete_job(job->id);
        return respond(HttpResponse::json(
            200, nlohmann::json{{"id", job->id}, {"object", "video.deleted"}, {"deleted", true}}.dump()));
    }
    if (parts.size() == 4 && parts[3] == "content" && (r.method == "GET" || r.method == "HEAD")) {
        if (job->status != "completed")
            throw protocol::ProtocolError("not_ready", "the video is " + job->status + ", not completed");
        HttpResponse res;
        res.content_type = "video/mp4";
        res.file = sessions_->job_content_path(*job);
        res.headers["Content-Disposition"] = "attachment; filename=\"" + job->id + ".mp4\"";
        return respond(res);
    }
    respond(HttpResponse::error(404, "not_found", r.method + " " + r.path + " is not an endpoint"));
}

}  // namespace memoreel
