// Every session of the server process, and the inference worker that runs them (DESIGN.md section 4): one
// thread owns the model and generates section after section, round-robin over the live sessions that want a
// section now (each stays within a few seconds of real time), and gives the model to offline jobs only when
// no live session is waiting. Short tasks (the memory inspector) run between sections. A housekeeping thread
// expires idle sessions and removes old ones. At start-up every session folder under <state_dir>/sessions is
// restored, and unfinished jobs continue.
#pragma once

#include <nlohmann/json.hpp>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "server/job_store.h"
#include "server/live_session.h"
#include "server/metrics.h"
#include "server/model_host.h"

namespace memoreel {

struct SessionManagerOptions {
    std::string state_dir = "var/memoreel";
    size_t max_sessions = 4;      // live sessions generating at once
    size_t max_jobs = 16;         // unfinished offline jobs
    double idle_seconds = 300;    // a live session nobody watches or steers for this long expires
    double keep_seconds = 86400;  // finished sessions' files are removed after this long (0: never)
    LiveSessionSettings session;
};

class SessionManager {
  public:
    SessionManager(ModelHost& host, SessionManagerOptions options, Metrics& metrics);
    ~SessionManager();  // stops the threads
    SessionManager(const SessionManager&) = delete;
    SessionManager& operator=(const SessionManager&) = delete;

    // Restores the sessions and jobs on disk, then starts the worker and housekeeping threads.
    void start();
    void stop();
    bool ready() const { return ready_; }

    // A new live session. Throws protocol::ProtocolError: too_many_sessions (with a retry hint), bad_field.
    std::shared_ptr<LiveSession> create_session(const protocol::StartRequest& request);
    std::shared_ptr<LiveSession> find(const std::string& id) const;
    // Stops the session and removes its files; false when there is none.
    bool remove(const std::string& id);

    // Offline jobs (/v1/videos). create_job throws protocol::ProtocolError too_many_jobs / bad_field.
    JobRecord create_job(const protocol::StartRequest& request, const nlohmann::json& normalised);
    std::optional<JobRecord> job(const std::string& id) const;
    JobStore::Page list_jobs(int64_t limit, const std::string& after, bool descending) const;
    bool delete_job(const std::string& id);
    std::string job_content_path(const JobRecord& job) const;

    // Runs `task` on the worker thread between sections (it may use the model). Returns at once; the task
    // reports through its own captures. False (and nothing queued) when `max_pending` tasks already wait:
    // requests that post tasks (the inspector) answer 429 then.
    bool post(std::function<void()> task, size_t max_pending = SIZE_MAX);

    // Seconds until a new session could likely start (for Retry-After).
    int retry_after_seconds() const;
    // Refreshes the gauges of /metrics (sessions by status, viewers, queue depth, real-time factors).
    void update_metrics();

  private:
    void worker_loop();
    void housekeeping_loop();
    void restore_all();
    std::shared_ptr<LiveSession> pick(std::chrono::steady_clock::time_point now);
    void run_one_section(const std::shared_ptr<LiveSession>& session);
    // Brings the job's record up to date with its session; true when the job has finished.
    bool after_job_section(const std::shared_ptr<LiveSession>& s);
    std::string session_dir(const std::string& id) const;

    ModelHost& host_;
    SessionManagerOptions options_;
    Metrics& metrics_;
    std::unique_ptr<JobStore> jobs_;

    mutable std::mutex mutex_;
    std::condition_variable wake_;
    std::map<std::string, std::shared_ptr<LiveSession>> sessions_;
    std::deque<std::function<void()>> tasks_;
    std::string last_live_;  // round-robin cursor
    bool stopping_ = false;
    std::atomic<bool> ready_{false};
    std::thread worker_, housekeeping_;
    std::atomic<double> mean_section_seconds_{1.0};
};

}  // namespace memoreel
