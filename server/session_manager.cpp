#include "server/session_manager.h"

#include "model/process_memory.h"
#include "server/random_id.h"

#include <spdlog/spdlog.h>

#include <cmath>
#include <filesystem>

namespace memoreel {

namespace fs = std::filesystem;

namespace {

int64_t unix_now() {
    return std::chrono::duration_cast<std::chrono::seconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

bool live_status(const std::string& s) {
    return s == "queued" || s == "running" || s == "stopping";
}

}  // namespace

SessionManager::SessionManager(ModelHost& host, SessionManagerOptions options, Metrics& metrics)
    : host_(host), options_(std::move(options)), metrics_(metrics) {
    fs::create_directories(options_.state_dir + "/sessions");
    jobs_ = std::make_unique<JobStore>(options_.state_dir + "/jobs.sqlite");
    metrics_.counter("memoreel_sections_total", "Sections generated", {"kind"});
    metrics_.histogram("memoreel_section_latency_seconds",
                       "Wall time of one section (sample, decode, memory, encode, snapshot)",
                       Metrics::latency_buckets());
    metrics_.counter("memoreel_section_errors_total", "Sections that failed");
    metrics_.gauge("memoreel_sessions", "Sessions by status", {"status"});
    metrics_.gauge("memoreel_jobs", "Unfinished offline jobs");
    metrics_.gauge("memoreel_realtime_factor", "Seconds of video per wall second, per running live session",
                   {"session"});
    metrics_.gauge("memoreel_queue_depth", "Live sessions waiting for the worker");
    metrics_.gauge("memoreel_viewers", "Connected viewers");
    // The standard process metric's name, so dashboards and the load run (bench serve) find it.
    metrics_.gauge("process_resident_memory_bytes", "Resident memory of the server process");
    metrics_.gauge("memoreel_dropped_segments",
                   "Sections skipped for slow viewers, over the sessions the server holds");
}

SessionManager::~SessionManager() {
    stop();
}

std::string SessionManager::session_dir(const std::string& id) const {
    return options_.state_dir + "/sessions/" + id;
}

void SessionManager::restore_all() {
    std::map<std::string, std::shared_ptr<LiveSession>> ended_jobs;
    for (const auto& entry : fs::directory_iterator(options_.state_dir + "/sessions")) {
        if (!entry.is_directory() || !fs::exists(entry.path() / "session.json"))
            continue;
        try {
            auto s = LiveSession::restore(host_, options_.session, entry.path().string());
            // A finished job is only its record and its files (content): it needs no session in memory.
            if (s->kind() == LiveSession::Kind::kJob && s->finished()) {
                ended_jobs[s->id()] = s;
                continue;
            }
            sessions_[s->id()] = s;
            spdlog::info("restored session {} ({}, {:.1f} s generated)", s->id(), s->status(),
                         s->seconds_generated());
        } catch (const std::exception& e) {
            spdlog::error("cannot restore {}: {}", entry.path().string(), e.what());
        }
    }
    // Jobs whose session never got written (a crash right after the job was stored) start again; jobs whose
    // session ended before their record was updated (a crash in between) get their final state now.
    for (JobRecord& j : jobs_->unfinished()) {
        if (sessions_.count(j.id))
            continue;
        if (const auto it = ended_jobs.find(j.id); it != ended_jobs.end()) {
            after_job_section(it->second);
            continue;
        }
        try {
            protocol::StartRequest r =
                protocol::parse_start_request(j.request.at("start"), options_.session.limits);
            auto s = LiveSession::create(host_, r, options_.session, session_dir(j.id), j.id,
                                         LiveSession::Kind::kJob);
            sessions_[j.id] = s;
        } catch (const std::exception& e) {
            j.status = "failed";
            j.error_code = "internal";
            j.error_message = std::string("could not restart after a restart: ") + e.what();
            j.completed_at = unix_now();
            jobs_->update(j);
        }
    }
}

void SessionManager::start() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        restore_all();
        stopping_ = false;
    }
    worker_ = std::thread([this] { worker_loop(); });
    housekeeping_ = std::thread([this] { housekeeping_loop(); });
    ready_ = true;
}

void SessionManager::stop() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stopping_ && !worker_.joinable())
            return;
        stopping_ = true;
    }
    ready_ = false;
    wake_.notify_all();
    if (worker_.joinable())
        worker_.join();
    if (housekeeping_.joinable())
        housekeeping_.join();
}

std::shared_ptr<LiveSession> SessionManager::create_session(const protocol::StartRequest& request) {
    std::lock_guard<std::mutex> lock(mutex_);
    size_t live = 0;
    for (const auto& [id, s] : sessions_)
        live += s->kind() == LiveSession::Kind::kLive && live_status(s->status()) ? 1 : 0;
    if (live >= options_.max_sessions)
        throw protocol::ProtocolError("too_many_sessions", "the server runs " + std::to_string(live) +
                                                               " live sessions, its limit; try again in " +
                                                               std::to_string(retry_after_seconds()) + " s");
    const std::string id = random_hex(10, "s_");
    auto s =
        LiveSession::create(host_, request, options_.session, session_dir(id), id, LiveSession::Kind::kLive);
    sessions_[id] = s;
    wake_.notify_all();
    return s;
}

std::shared_ptr<LiveSession> SessionManager::find(const std::string& id) const {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = sessions_.find(id);
    return it == sessions_.end() ? nullptr : it->second;
}

bool SessionManager::remove(const std::string& id) {
    std::shared_ptr<LiveSession> s;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        const auto it = sessions_.find(id);
        if (it == sessions_.end())
            return false;
        s = it->second;
        sessions_.erase(it);
    }
    s->stop("stopped");
    // The worker may be in this session's section: its files go once it is done (the task runs between
    // sections, on the worker).
    post([s] {
        std::error_code ec;
        fs::remove_all(s->dir(), ec);
    });
    return true;
}

JobRecord SessionManager::create_job(const protocol::StartRequest& request,
                                     const nlohmann::json& normalised) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (static_cast<size_t>(jobs_->count_unfinished()) >= options_.max_jobs)
        throw protocol::ProtocolError("too_many_jobs", "the server has " + std::to_string(options_.max_jobs) +
                                                           " unfinished jobs, its limit; try again later");
    JobRecord j;
    j.id = make_job_id();
    j.status = "queued";
    j.created_at = unix_now();
    j.request = normalised;
    j.request["start"] = request.to_json();
    j.session_id = j.id;
    auto s = LiveSession::create(host_, request, options_.session, session_dir(j.id), j.id,
                                 LiveSession::Kind::kJob);
    jobs_->insert(j);
    sessions_[j.id] = s;
    wake_.notify_all();
    return j;
}

std::optional<JobRecord> SessionManager::job(const std::string& id) const {
    return jobs_->get(id);
}

JobStore::Page SessionManager::list_jobs(int64_t limit, const std::string& after, bool descending) const {
    return jobs_->list(limit, after, descending);
}

bool SessionManager::delete_job(const std::string& id) {
    auto j = jobs_->get(id);
    if (!j)
        return false;
    if (!remove(id)) {
        // A finished job has no session in memory, only its files.
        post([dir = session_dir(id)] {
            std::error_code ec;
            fs::remove_all(dir, ec);
        });
    }
    return jobs_->remove(id);
}

std::string SessionManager::job_content_path(const JobRecord& job) const {
    return session_dir(job.session_id) + "/video.mp4";
}

bool SessionManager::post(std::function<void()> task, size_t max_pending) {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (tasks_.size() >= max_pending)
            return false;
        tasks_.push_back(std::move(task));
    }
    wake_.notify_all();
    return true;
}

int SessionManager::retry_after_seconds() const {
    // A live session lasts its length in video seconds at best; a rough hint is enough for clients.
    return std::max(5, static_cast<int>(std::ceil(mean_section_seconds_.load() * 10)));
}

// Under mutex_. Live sessions first, round-robin from the one after the last served; then the oldest job.
std::shared_ptr<LiveSession> SessionManager::pick(std::chrono::steady_clock::time_point now) {
    std::vector<std::shared_ptr<LiveSession>> live, jobs;
    for (const auto& [id, s] : sessions_) {
        if (!s->runnable(now))
            continue;
        (s->kind() == LiveSession::Kind::kLive ? live : jobs).push_back(s);
    }
    if (!live.empty()) {
        size_t first = 0;
        for (size_t i = 0; i < live.size(); ++i)
            if (live[i]->id() > last_live_) {
                first = i;
                break;
            }
        for (size_t k = 0; k < live.size(); ++k)
            live[(first + k) % live.size()]->set_queue_position(static_cast<int64_t>(k));
        last_live_ = live[first]->id();
        return live[first];
    }
    if (jobs.empty())
        return nullptr;
    std::shared_ptr<LiveSession> oldest = jobs.front();
    for (const auto& j : jobs)
        if (j->created_at() < oldest->created_at())
            oldest = j;
    return oldest;
}

void SessionManager::worker_loop() {
    bool last_was_task = false;
    while (true) {
        std::function<void()> task;
        std::shared_ptr<LiveSession> session;
        {
            std::unique_lock<std::mutex> lock(mutex_);
            if (stopping_)
                return;
            // Tasks (the inspector) and sections alternate, so a burst of inspector requests cannot starve
            // the live sessions.
            if (!tasks_.empty() && !last_was_task) {
                task = std::move(tasks_.front());
                tasks_.pop_front();
            } else {
                session = pick(std::chrono::steady_clock::now());
                if (!session && !tasks_.empty()) {
                    task = std::move(tasks_.front());
                    tasks_.pop_front();
                } else if (!session) {
                    // Nothing wants the model now: wait for work or for a paced session's next turn.
                    last_was_task = false;
                    wake_.wait_for(lock, std::chrono::milliseconds(50));
                    continue;
                }
            }
        }
        last_was_task = static_cast<bool>(task);
        // Nothing may end this thread but stop(): a failure is the session's (or the task's), and a failure
        // while recording it (a full disk, a busy database) is logged and the worker goes on.
        try {
            if (task)
                task();
            else
                run_one_section(session);
        } catch (const std::exception& e) {
            spdlog::error("worker: {}", e.what());
        }
    }
}

void SessionManager::run_one_section(const std::shared_ptr<LiveSession>& session) {
    const bool job = session->kind() == LiveSession::Kind::kJob;
    if (job) {
        if (auto j = jobs_->get(session->id()); j && j->status == "queued") {
            j->status = "in_progress";
            jobs_->update(*j);
        }
    }
    try {
        const auto report = session->run_section();
        if (report.ran) {
            metrics_.add("memoreel_sections_total", 1, {{"kind", job ? "job" : "live"}});
            metrics_.observe("memoreel_section_latency_seconds", report.latency_ms / 1000.0);
            mean_section_seconds_ = 0.9 * mean_section_seconds_.load() + 0.1 * report.latency_ms / 1000.0;
        }
    } catch (const std::exception& e) {
        spdlog::error("session {}: section failed: {}", session->id(), e.what());
        metrics_.add("memoreel_section_errors_total");
        session->fail(e.what());
    }
    if (job && after_job_section(session)) {
        // Finished: the record and the files (content) are what is left of a job.
        std::lock_guard<std::mutex> lock(mutex_);
        sessions_.erase(session->id());
    }
}

bool SessionManager::after_job_section(const std::shared_ptr<LiveSession>& s) {
    auto j = jobs_->get(s->id());
    if (!j || j->finished())
        return true;
    const std::string status = s->status();
    j->progress = std::min(100.0, 100.0 * s->seconds_generated() / std::max(1e-9, s->target_seconds()));
    if (status == "completed") {
        j->status = "completed";
        j->progress = 100;
        j->completed_at = unix_now();
    } else if (status == "failed") {
        j->status = "failed";
        j->error_code = "internal";
        j->error_message = s->status_json().value("error", "generation failed");
        j->completed_at = unix_now();
    } else if (status == "stopped" || status == "expired") {
        j->status = "cancelled";
        j->completed_at = unix_now();
    }
    jobs_->update(*j);
    return j->finished();
}

void SessionManager::housekeeping_loop() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stopping_) {
        wake_.wait_for(lock, std::chrono::seconds(1));
        if (stopping_)
            return;
        std::vector<std::shared_ptr<LiveSession>> expire, forget;
        for (const auto& [id, s] : sessions_) {
            if (s->kind() != LiveSession::Kind::kLive)
                continue;
            const std::string st = s->status();
            if ((st == "queued" || st == "running") && s->idle_seconds() > options_.idle_seconds)
                expire.push_back(s);
            else if (!live_status(st) && options_.keep_seconds > 0 &&
                     s->idle_seconds() > options_.keep_seconds)
                forget.push_back(s);
        }
        lock.unlock();
        // As on the worker: a failure here (a write, the database) is logged, the thread goes on.
        try {
            for (auto& s : expire) {
                spdlog::info("session {} expired after {:.0f} s without viewers or requests", s->id(),
                             s->idle_seconds());
                s->stop("expired");
            }
            for (auto& s : forget)
                remove(s->id());
            update_metrics();
        } catch (const std::exception& e) {
            spdlog::error("housekeeping: {}", e.what());
        }
        lock.lock();
    }
}

void SessionManager::update_metrics() {
    std::map<Metrics::Labels, double> by_status, rf;
    double viewers = 0, waiting = 0, dropped = 0;
    const auto now = std::chrono::steady_clock::now();
    std::vector<std::shared_ptr<LiveSession>> all;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        for (const auto& [id, s] : sessions_)
            all.push_back(s);
    }
    for (const char* st : {"queued", "running", "stopping", "completed", "stopped", "expired", "failed"})
        by_status[{{"status", st}}] = 0;
    for (const auto& s : all) {
        const std::string st = s->status();
        by_status[{{"status", st}}] += 1;
        viewers += static_cast<double>(s->viewers());
        dropped += static_cast<double>(s->dropped_sections());
        if (s->kind() == LiveSession::Kind::kLive && st == "running") {
            if (s->runnable(now))
                waiting += 1;
            const nlohmann::json j = s->status_json();
            rf[{{"session", s->id()}}] = j.at("realtime_factor").get<double>();
        }
    }
    metrics_.set_family("memoreel_sessions", by_status);
    metrics_.set_family("memoreel_realtime_factor", rf);
    metrics_.set("memoreel_viewers", viewers);
    metrics_.set("process_resident_memory_bytes", resident_mb() * 1024.0 * 1024.0);
    metrics_.set("memoreel_queue_depth", waiting);
    metrics_.set("memoreel_dropped_segments", dropped);
    metrics_.set("memoreel_jobs", static_cast<double>(jobs_->count_unfinished()));
}

}  // namespace memoreel
