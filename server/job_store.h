// The offline jobs of the /v1/videos API (docs/api.md), kept in SQLite (<state_dir>/jobs.sqlite) so they
// survive a restart: the server requeues what was unfinished when it starts again. Torch-free; SQLite stays
// inside the .cpp.
//
// Thread-safe: one connection guarded by a mutex. Jobs change a few times per section, so a single connection
// is far from the bottleneck, and it keeps every read consistent with the writes before it.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

struct sqlite3;

namespace memoreel {

struct JobRecord {
    std::string id;            // "video_" + 24 hex chars (make_job_id())
    std::string status;        // queued | in_progress | completed | failed | cancelled
    double progress = 0;       // 0..100
    int64_t created_at = 0;    // unix seconds
    int64_t completed_at = 0;  // 0: not finished
    // The normalised create request: prompt, storyboard, seconds, size, seed, memory, sampling, model.
    nlohmann::json request = nlohmann::json::object();
    std::string error_code, error_message;  // failed only
    std::string session_id;                 // the internal session that renders it ("" before it starts)

    bool finished() const { return status != "queued" && status != "in_progress"; }
    // The video object of docs/api.md: {id, object: "video", model, status, progress (integer), created_at,
    // completed_at (null while 0), seconds (a string), size, prompt, storyboard, error: {code, message} |
    // null}.
    nlohmann::json to_openai() const;
};

// True for the five statuses a job can have.
bool is_job_status(const std::string& status);

class JobStore {
  public:
    // Opens the database, or creates it and its parent folder. Throws std::runtime_error naming the file and
    // SQLite's message; a file that is not a SQLite database, a database that is not a job store, or one
    // written by a newer schema is refused rather than changed.
    explicit JobStore(const std::string& path);
    ~JobStore();
    JobStore(const JobStore&) = delete;
    JobStore& operator=(const JobStore&) = delete;

    const std::string& path() const { return path_; }

    // Throws std::invalid_argument for an unknown status, std::runtime_error when the id exists already.
    void insert(const JobRecord& job);
    std::optional<JobRecord> get(const std::string& id) const;
    // Writes status, progress, completed_at, error and session_id of an existing job (the request never
    // changes); false when there is no such job.
    bool update(const JobRecord& job);

    struct Page {
        std::vector<JobRecord> jobs;
        bool has_more = false;
    };
    // Up to `limit` (>= 1) jobs ordered by (created_at, insertion order), newest first when `descending`,
    // starting after the job `after` in that order ("" = from the start). Throws std::invalid_argument for an
    // unknown `after` or a limit below 1.
    Page list(int64_t limit, const std::string& after = {}, bool descending = true) const;
    bool remove(const std::string& id);

    int64_t count_unfinished() const;           // queued + in_progress
    std::vector<JobRecord> unfinished() const;  // oldest first: what a restarted server requeues

  private:
    struct Closer {
        void operator()(sqlite3* db) const;
    };
    std::string path_;
    mutable std::mutex mutex_;
    std::unique_ptr<sqlite3, Closer> db_;
};

// "video_" + 24 random hex characters. The id is all a client needs to read or delete a job, so it comes from
// std::random_device (the OS's entropy), not a seeded generator.
std::string make_job_id();

}  // namespace memoreel
