#include "server/job_store.h"

#include "server/random_id.h"

#include <sqlite3.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <stdexcept>

namespace memoreel {

namespace {

// Version 1: the jobs table below. A later build that changes the schema raises it and migrates older files;
// this build refuses newer ones instead of guessing at columns it does not know.
constexpr int64_t kSchemaVersion = 1;

// The columns read_job() expects, in its order.
const std::string kJobColumns =
    "id, status, progress, created_at, completed_at, request, error_code, error_message, session_id";

[[noreturn]] void fail(sqlite3* db, const std::string& path, const std::string& what) {
    std::string message =
        "job store '" + path + "': " + what + ": " + (db ? sqlite3_errmsg(db) : "out of memory");
    if (db && sqlite3_errcode(db) == SQLITE_NOTADB)
        message += " (move it away or choose another state_dir)";
    throw std::runtime_error(message);
}

// One prepared statement, finalised on every path out. Values are always bound, never spliced into the SQL.
class Statement {
  public:
    Statement(sqlite3* db, const std::string& path, const std::string& sql) : db_(db), path_(path) {
        if (sqlite3_prepare_v2(db, sql.c_str(), static_cast<int>(sql.size()), &stmt_, nullptr) != SQLITE_OK)
            fail(db_, path_, "preparing \"" + sql + "\"");
    }
    ~Statement() { sqlite3_finalize(stmt_); }
    Statement(const Statement&) = delete;
    Statement& operator=(const Statement&) = delete;

    Statement& bind_text(int index, const std::string& value) {
        check(sqlite3_bind_text64(stmt_, index, value.data(), value.size(), SQLITE_TRANSIENT, SQLITE_UTF8));
        return *this;
    }
    Statement& bind_int(int index, int64_t value) {
        check(sqlite3_bind_int64(stmt_, index, value));
        return *this;
    }
    Statement& bind_real(int index, double value) {
        check(sqlite3_bind_double(stmt_, index, value));
        return *this;
    }

    // True while there is a row to read; false when the statement is done.
    bool step(const char* what) {
        const int rc = sqlite3_step(stmt_);
        if (rc == SQLITE_ROW)
            return true;
        if (rc == SQLITE_DONE)
            return false;
        fail(db_, path_, what);
    }

    int64_t int_at(int column) const { return sqlite3_column_int64(stmt_, column); }
    double real_at(int column) const { return sqlite3_column_double(stmt_, column); }
    std::string text_at(int column) const {
        const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, column));
        return text ? std::string(text, static_cast<size_t>(sqlite3_column_bytes(stmt_, column)))
                    : std::string();
    }

  private:
    void check(int rc) {
        if (rc != SQLITE_OK)
            fail(db_, path_, "binding a value");
    }

    sqlite3* db_;
    const std::string& path_;
    sqlite3_stmt* stmt_ = nullptr;
};

// Statements without values (schema, pragmas, transactions).
void exec(sqlite3* db, const std::string& path, const char* sql) {
    char* error = nullptr;
    if (sqlite3_exec(db, sql, nullptr, nullptr, &error) != SQLITE_OK) {
        sqlite3_free(error);  // the connection's errmsg says the same, and fail() reads it from there
        fail(db, path, std::string("running \"") + sql + "\"");
    }
}

JobRecord read_job(const Statement& s, const std::string& path) {
    JobRecord job;
    job.id = s.text_at(0);
    job.status = s.text_at(1);
    job.progress = s.real_at(2);
    job.created_at = s.int_at(3);
    job.completed_at = s.int_at(4);
    try {
        job.request = nlohmann::json::parse(s.text_at(5));
    } catch (const nlohmann::json::exception& e) {
        throw std::runtime_error("job store '" + path + "': job " + job.id +
                                 " has an unreadable request: " + e.what());
    }
    job.error_code = s.text_at(6);
    job.error_message = s.text_at(7);
    job.session_id = s.text_at(8);
    return job;
}

void check_status(const JobRecord& job) {
    if (!is_job_status(job.status))
        throw std::invalid_argument("job " + job.id + ": unknown status '" + job.status + "'");
}

// OpenAI's video object carries seconds as a string ("8"); the normalised request may hold a number.
nlohmann::json seconds_string(const nlohmann::json& request) {
    const auto it = request.find("seconds");
    if (it == request.end() || it->is_null())
        return nullptr;
    if (it->is_string())
        return *it;
    if (it->is_number_integer())
        return it->dump();
    if (it->is_number_float()) {
        const double s = it->get<double>();
        if (std::isfinite(s) && s == std::floor(s) && std::fabs(s) < 1e15)
            return std::to_string(static_cast<int64_t>(s));
        return it->dump();  // the shortest text that reads back as the same number
    }
    return it->dump();
}

nlohmann::json field_or_null(const nlohmann::json& request, const char* name) {
    const auto it = request.find(name);
    return it == request.end() ? nlohmann::json(nullptr) : *it;
}

}  // namespace

bool is_job_status(const std::string& status) {
    return status == "queued" || status == "in_progress" || status == "completed" || status == "failed" ||
           status == "cancelled";
}

nlohmann::json JobRecord::to_openai() const {
    // Whole percent, rounded down: 99.6 % must not read as 100 before the job is completed.
    const double clamped = std::isfinite(progress) ? std::min(100.0, std::max(0.0, progress)) : 0.0;
    nlohmann::json error = nullptr;
    if (!error_code.empty() || !error_message.empty())
        error = {{"code", error_code}, {"message", error_message}};
    return {{"id", id},
            {"object", "video"},
            {"model", field_or_null(request, "model")},
            {"status", status},
            {"progress", static_cast<int64_t>(std::floor(clamped))},
            {"created_at", created_at},
            {"completed_at", completed_at ? nlohmann::json(completed_at) : nlohmann::json(nullptr)},
            {"seconds", seconds_string(request)},
            {"size", field_or_null(request, "size")},
            {"prompt", field_or_null(request, "prompt")},
            {"storyboard", field_or_null(request, "storyboard")},
            {"error", error}};
}

void JobStore::Closer::operator()(sqlite3* db) const {
    sqlite3_close_v2(db);
}

JobStore::JobStore(const std::string& path) : path_(path) {
    namespace fs = std::filesystem;
    if (path_ != ":memory:") {
        const fs::path parent = fs::path(path_).parent_path();
        std::error_code ec;
        if (!parent.empty())
            fs::create_directories(parent, ec);
        if (ec)
            throw std::runtime_error("job store '" + path_ + "': cannot create its folder: " + ec.message());
    }
    sqlite3* raw = nullptr;
    const int rc = sqlite3_open_v2(path_.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
    db_.reset(raw);  // closed on every path, including a failed open
    if (rc != SQLITE_OK)
        fail(raw, path_, "cannot open");
    sqlite3* db = db_.get();
    // Another process (a second server on the same state_dir, the sqlite3 shell) may hold the lock briefly.
    sqlite3_busy_timeout(db, 5000);

    // The first statement reads the file's header: a file that is not a database fails here, before anything
    // is written to it. WAL lets readers go on while a job is updated; with WAL, synchronous=NORMAL keeps the
    // file consistent on power loss (the last updates may be lost, which only repeats some progress).
    if (sqlite3_exec(db, "PRAGMA journal_mode=WAL", nullptr, nullptr, nullptr) != SQLITE_OK)
        fail(db, path_, "cannot open");
    exec(db, path_, "PRAGMA synchronous=NORMAL");

    // IMMEDIATE: two processes creating the store at the same moment do it one after the other.
    exec(db, path_, "BEGIN IMMEDIATE");
    try {
        Statement tables(db, path_,
                         "SELECT count(*), coalesce(sum(name = 'schema_version'), 0) FROM sqlite_master "
                         "WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'");
        tables.step("reading the schema");
        const int64_t table_count = tables.int_at(0);
        const bool versioned = tables.int_at(1) > 0;
        if (versioned) {
            Statement version(db, path_, "SELECT max(version) FROM schema_version");
            version.step("reading the schema version");
            const int64_t v = version.int_at(0);
            if (v > kSchemaVersion)
                throw std::runtime_error("job store '" + path_ + "' has schema version " + std::to_string(v) +
                                         ", written by a newer memoreel; this build reads up to version " +
                                         std::to_string(kSchemaVersion));
            if (v < 1)
                throw std::runtime_error("job store '" + path_ + "' has no valid schema version");
        } else if (table_count > 0) {
            // Someone else's database: adding our tables to it would only hide the mistake.
            throw std::runtime_error("job store '" + path_ +
                                     "' is a SQLite database but not a memoreel job store (it has other "
                                     "tables and no schema_version)");
        } else {
            exec(db, path_,
                 "CREATE TABLE schema_version (version INTEGER NOT NULL);"
                 "INSERT INTO schema_version (version) VALUES (1);"
                 // seq: the insertion order, which breaks ties between jobs created in the same second.
                 "CREATE TABLE jobs ("
                 "  seq INTEGER PRIMARY KEY,"
                 "  id TEXT NOT NULL UNIQUE,"
                 "  status TEXT NOT NULL,"
                 "  progress REAL NOT NULL,"
                 "  created_at INTEGER NOT NULL,"
                 "  completed_at INTEGER NOT NULL,"
                 "  request TEXT NOT NULL,"
                 "  error_code TEXT NOT NULL,"
                 "  error_message TEXT NOT NULL,"
                 "  session_id TEXT NOT NULL);"
                 "CREATE INDEX jobs_by_time ON jobs (created_at, seq);"
                 "CREATE INDEX jobs_by_status ON jobs (status);");
        }
        exec(db, path_, "COMMIT");
    } catch (...) {
        sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
        throw;
    }
}

JobStore::~JobStore() = default;

void JobStore::insert(const JobRecord& job) {
    check_status(job);
    // replace: a request is user text and may hold invalid UTF-8; storing it must not throw.
    const std::string request = job.request.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    std::lock_guard<std::mutex> lock(mutex_);
    Statement s(db_.get(), path_,
                "INSERT INTO jobs (" + kJobColumns + ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)");
    s.bind_text(1, job.id)
        .bind_text(2, job.status)
        .bind_real(3, job.progress)
        .bind_int(4, job.created_at)
        .bind_int(5, job.completed_at)
        .bind_text(6, request)
        .bind_text(7, job.error_code)
        .bind_text(8, job.error_message)
        .bind_text(9, job.session_id);
    s.step(("inserting job " + job.id).c_str());
}

std::optional<JobRecord> JobStore::get(const std::string& id) const {
    std::lock_guard<std::mutex> lock(mutex_);
    Statement s(db_.get(), path_, "SELECT " + kJobColumns + " FROM jobs WHERE id = ?1");
    s.bind_text(1, id);
    if (!s.step(("reading job " + id).c_str()))
        return std::nullopt;
    return read_job(s, path_);
}

bool JobStore::update(const JobRecord& job) {
    check_status(job);
    std::lock_guard<std::mutex> lock(mutex_);
    Statement s(db_.get(), path_,
                "UPDATE jobs SET status = ?2, progress = ?3, completed_at = ?4, error_code = ?5, "
                "error_message = ?6, session_id = ?7 WHERE id = ?1");
    s.bind_text(1, job.id)
        .bind_text(2, job.status)
        .bind_real(3, job.progress)
        .bind_int(4, job.completed_at)
        .bind_text(5, job.error_code)
        .bind_text(6, job.error_message)
        .bind_text(7, job.session_id);
    s.step(("updating job " + job.id).c_str());
    return sqlite3_changes(db_.get()) > 0;
}

JobStore::Page JobStore::list(int64_t limit, const std::string& after, bool descending) const {
    if (limit < 1)
        throw std::invalid_argument("limit must be at least 1, not " + std::to_string(limit));
    limit = std::min(limit, std::numeric_limits<int64_t>::max() - 1);  // one more row is read for has_more
    std::lock_guard<std::mutex> lock(mutex_);
    std::string sql = "SELECT " + kJobColumns + " FROM jobs ";
    int64_t after_created = 0, after_seq = 0;
    if (!after.empty()) {
        Statement find(db_.get(), path_, "SELECT created_at, seq FROM jobs WHERE id = ?1");
        find.bind_text(1, after);
        if (!find.step("reading the list's start"))
            throw std::invalid_argument("no job '" + after + "' to list after");
        after_created = find.int_at(0);
        after_seq = find.int_at(1);
        sql += descending ? "WHERE (created_at, seq) < (?2, ?3) " : "WHERE (created_at, seq) > (?2, ?3) ";
    }
    sql += descending ? "ORDER BY created_at DESC, seq DESC LIMIT ?1" : "ORDER BY created_at, seq LIMIT ?1";
    Statement s(db_.get(), path_, sql);
    s.bind_int(1, limit + 1);
    if (!after.empty())
        s.bind_int(2, after_created).bind_int(3, after_seq);
    Page page;
    while (s.step("listing jobs")) {
        if (static_cast<int64_t>(page.jobs.size()) == limit) {
            page.has_more = true;
            break;
        }
        page.jobs.push_back(read_job(s, path_));
    }
    return page;
}

bool JobStore::remove(const std::string& id) {
    std::lock_guard<std::mutex> lock(mutex_);
    Statement s(db_.get(), path_, "DELETE FROM jobs WHERE id = ?1");
    s.bind_text(1, id);
    s.step(("removing job " + id).c_str());
    return sqlite3_changes(db_.get()) > 0;
}

int64_t JobStore::count_unfinished() const {
    std::lock_guard<std::mutex> lock(mutex_);
    Statement s(db_.get(), path_, "SELECT count(*) FROM jobs WHERE status IN ('queued', 'in_progress')");
    s.step("counting unfinished jobs");
    return s.int_at(0);
}

std::vector<JobRecord> JobStore::unfinished() const {
    std::lock_guard<std::mutex> lock(mutex_);
    Statement s(db_.get(), path_,
                "SELECT " + kJobColumns +
                    " FROM jobs WHERE status IN ('queued', 'in_progress') ORDER BY created_at, seq");
    std::vector<JobRecord> jobs;
    while (s.step("listing unfinished jobs"))
        jobs.push_back(read_job(s, path_));
    return jobs;
}

std::string make_job_id() {
    return random_hex(12, "video_");  // 24 hex characters
}

}  // namespace memoreel
