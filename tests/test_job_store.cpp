// The offline job store (server/job_store.h): jobs kept in SQLite survive a restart, list in a stable order
// with cursor paging, and files that are not job stores are refused without being changed.
#include <doctest/doctest.h>
#include <sqlite3.h>

#include <fstream>
#include <random>
#include <set>
#include <thread>

#include "server/job_store.h"
#include "tests/test_support.h"

using memoreel::JobRecord;
using memoreel::JobStore;

namespace {

JobRecord job(const std::string& id, int64_t created_at, const std::string& status = "queued") {
    JobRecord j;
    j.id = id;
    j.status = status;
    j.created_at = created_at;
    j.request = {{"prompt", "a red fox " + id},
                 {"storyboard", {{"prompts", {{{"time", 0}, {"prompt", "a red fox"}}}}}},
                 {"seconds", 8},
                 {"size", "320x192"},
                 {"seed", 1},
                 {"model", "memoreel-tiny"}};
    return j;
}

std::vector<std::string> ids(const JobStore::Page& page) {
    std::vector<std::string> out;
    for (const auto& j : page.jobs)
        out.push_back(j.id);
    return out;
}

std::string error_of(const std::string& path) {
    try {
        JobStore store(path);
    } catch (const std::runtime_error& e) {
        return e.what();
    }
    return "opened";
}

// Runs SQL on the file directly, as another program (or an older or newer memoreel) would.
void raw_sql(const std::string& path, const std::string& sql) {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
    const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr);
    const std::string message = sqlite3_errmsg(db);
    sqlite3_close(db);
    REQUIRE_MESSAGE(rc == SQLITE_OK, message);
}

}  // namespace

TEST_SUITE("job_store") {
    TEST_CASE("insert, get, update and remove a job") {
        memoreel::test::TempDir dir;
        JobStore store(dir.file("state/nested/jobs.sqlite"));  // the folders are created
        CHECK_FALSE(store.get("video_none").has_value());

        const auto id = memoreel::make_job_id();
        store.insert(job(id, 1763900000));
        auto got = store.get(id);
        REQUIRE(got.has_value());
        CHECK(got->status == "queued");
        CHECK(got->created_at == 1763900000);
        CHECK(got->completed_at == 0);
        CHECK(got->request == job(id, 1763900000).request);
        CHECK(got->session_id.empty());
        CHECK_THROWS_AS(store.insert(job(id, 1763900001)), std::runtime_error);  // the id is taken

        got->status = "failed";
        got->progress = 37.5;
        got->completed_at = 1763900100;
        got->error_code = "generation_failed";
        got->error_message = "the worker \"stopped\"";
        got->session_id = "s_1";
        got->request = {{"prompt", "changed"}};  // not written: the request never changes
        CHECK(store.update(*got));
        const auto updated = store.get(id);
        CHECK(updated->status == "failed");
        CHECK(updated->progress == 37.5);
        CHECK(updated->completed_at == 1763900100);
        CHECK(updated->error_code == "generation_failed");
        CHECK(updated->error_message == "the worker \"stopped\"");
        CHECK(updated->session_id == "s_1");
        CHECK(updated->request.at("prompt") == "a red fox " + id);
        CHECK(updated->finished());

        CHECK_FALSE(store.update(job("video_none", 1)));
        auto bad = *updated;
        bad.status = "done";
        CHECK_THROWS_AS(store.update(bad), std::invalid_argument);
        CHECK_THROWS_AS(store.insert(job("video_other", 1, "running")), std::invalid_argument);

        CHECK(store.remove(id));
        CHECK_FALSE(store.remove(id));
        CHECK_FALSE(store.get(id).has_value());
    }

    TEST_CASE("the video object of the OpenAI shape") {
        auto j = job("video_0123456789abcdef01234567", 1763900000, "in_progress");
        j.progress = 99.7;
        auto v = j.to_openai();
        CHECK(v.at("id") == "video_0123456789abcdef01234567");
        CHECK(v.at("object") == "video");
        CHECK(v.at("model") == "memoreel-tiny");
        CHECK(v.at("status") == "in_progress");
        CHECK(v.at("progress") == 99);  // an integer, never 100 before completion
        CHECK(v.at("progress").is_number_integer());
        CHECK(v.at("created_at") == 1763900000);
        CHECK(v.at("completed_at").is_null());
        CHECK(v.at("seconds") == "8");
        CHECK(v.at("size") == "320x192");
        CHECK(v.at("prompt") == "a red fox video_0123456789abcdef01234567");
        CHECK(v.at("storyboard").at("prompts").size() == 1);
        CHECK(v.at("error").is_null());

        j.request["seconds"] = 7.5;
        CHECK(j.to_openai().at("seconds") == "7.5");
        j.request["seconds"] = 12.0;
        CHECK(j.to_openai().at("seconds") == "12");
        j.request["seconds"] = "4";
        CHECK(j.to_openai().at("seconds") == "4");

        j.status = "failed";
        j.completed_at = 1763900050;
        j.error_code = "generation_failed";
        j.error_message = "out of memory";
        v = j.to_openai();
        CHECK(v.at("completed_at") == 1763900050);
        CHECK(v.at("error") == nlohmann::json{{"code", "generation_failed"}, {"message", "out of memory"}});
    }

    TEST_CASE("job ids are video_ and 24 hex characters, and differ") {
        std::set<std::string> seen;
        for (int i = 0; i < 1000; ++i) {
            const auto id = memoreel::make_job_id();
            REQUIRE(id.size() == 30);
            CHECK(id.rfind("video_", 0) == 0);
            CHECK(id.find_first_not_of("0123456789abcdef", 6) == std::string::npos);
            seen.insert(id);
        }
        CHECK(seen.size() == 1000);
    }

    TEST_CASE("list pages in both orders with after and has_more") {
        memoreel::test::TempDir dir;
        JobStore store(dir.file("jobs.sqlite"));
        // Inserted out of time order, and b, c, d share a second: ties go by insertion order.
        store.insert(job("video_e", 500));
        store.insert(job("video_a", 100));
        store.insert(job("video_b", 200));
        store.insert(job("video_c", 200));
        store.insert(job("video_d", 200));

        auto page = store.list(2, "", false);
        CHECK(ids(page) == std::vector<std::string>{"video_a", "video_b"});
        CHECK(page.has_more);
        page = store.list(2, "video_b", false);
        CHECK(ids(page) == std::vector<std::string>{"video_c", "video_d"});
        CHECK(page.has_more);
        page = store.list(2, "video_d", false);
        CHECK(ids(page) == std::vector<std::string>{"video_e"});
        CHECK_FALSE(page.has_more);
        page = store.list(100, "video_e", false);
        CHECK(page.jobs.empty());
        CHECK_FALSE(page.has_more);

        page = store.list(3, "", true);
        CHECK(ids(page) == std::vector<std::string>{"video_e", "video_d", "video_c"});
        CHECK(page.has_more);
        page = store.list(2, "video_c", true);
        CHECK(ids(page) == std::vector<std::string>{"video_b", "video_a"});
        CHECK_FALSE(page.has_more);  // exactly the last ones: nothing more

        page = store.list(5, "", true);
        CHECK(page.jobs.size() == 5);
        CHECK_FALSE(page.has_more);

        CHECK_THROWS_AS(store.list(2, "video_zz", true), std::invalid_argument);
        CHECK_THROWS_AS(store.list(0, "", true), std::invalid_argument);
        // Ids are bound, never spliced into SQL.
        CHECK_THROWS_AS(store.list(2, "x' OR '1'='1", true), std::invalid_argument);
        CHECK_FALSE(store.get("x' OR '1'='1").has_value());

        CHECK(store.remove("video_c"));
        page = store.list(10, "video_b", false);
        CHECK(ids(page) == std::vector<std::string>{"video_d", "video_e"});
    }

    TEST_CASE("unfinished jobs: counted, and listed oldest first") {
        memoreel::test::TempDir dir;
        JobStore store(dir.file("jobs.sqlite"));
        CHECK(store.count_unfinished() == 0);
        CHECK(store.unfinished().empty());
        store.insert(job("video_3", 300, "queued"));
        store.insert(job("video_1", 100, "in_progress"));
        store.insert(job("video_2", 200, "completed"));
        store.insert(job("video_4", 400, "failed"));
        store.insert(job("video_5", 500, "cancelled"));
        store.insert(job("video_0", 50, "queued"));
        CHECK(store.count_unfinished() == 3);
        const auto open = store.unfinished();
        REQUIRE(open.size() == 3);
        CHECK(open[0].id == "video_0");
        CHECK(open[1].id == "video_1");
        CHECK(open[2].id == "video_3");
    }

    TEST_CASE("jobs survive closing and reopening the file") {
        memoreel::test::TempDir dir;
        const auto path = dir.file("state/jobs.sqlite");
        {
            JobStore store(path);
            store.insert(job("video_a", 100, "completed"));
            auto running = job("video_b", 200, "in_progress");
            running.progress = 40;
            running.session_id = "s_9";
            store.insert(running);
        }
        JobStore store(path);
        CHECK(store.get("video_a")->status == "completed");
        const auto open = store.unfinished();
        REQUIRE(open.size() == 1);
        CHECK(open[0].id == "video_b");
        CHECK(open[0].progress == 40);
        CHECK(open[0].session_id == "s_9");
        CHECK(open[0].request == job("video_b", 200).request);
        store.insert(job("video_c", 300));
        CHECK(ids(store.list(10, "", false)) == std::vector<std::string>{"video_a", "video_b", "video_c"});
    }

    TEST_CASE("a file that is not a job store is refused, naming the file") {
        memoreel::test::TempDir dir;
        const auto garbage = dir.file("random.sqlite");
        std::string bytes(3000, '\0');
        std::mt19937 rng(7);
        for (auto& c : bytes)
            c = static_cast<char>(rng());
        std::ofstream(garbage, std::ios::binary) << bytes;
        auto message = error_of(garbage);
        CHECK(message.find(garbage) != std::string::npos);
        CHECK(message.find("not a database") != std::string::npos);
        std::ifstream in(garbage, std::ios::binary);
        CHECK(std::string(std::istreambuf_iterator<char>(in), {}) == bytes);  // left as it was

        // A SQLite database of something else.
        const auto other = dir.file("other.sqlite");
        raw_sql(other, "CREATE TABLE notes (text TEXT)");
        message = error_of(other);
        CHECK(message.find(other) != std::string::npos);
        CHECK(message.find("not a memoreel job store") != std::string::npos);

        // A job store from a newer memoreel.
        const auto newer = dir.file("newer.sqlite");
        { JobStore store(newer); }
        raw_sql(newer, "UPDATE schema_version SET version = 99");
        message = error_of(newer);
        CHECK(message.find(newer) != std::string::npos);
        CHECK(message.find("schema version 99") != std::string::npos);

        // A folder where the file should be.
        message = error_of(dir.path());
        CHECK(message.find(dir.path()) != std::string::npos);
    }

    TEST_CASE("concurrent inserts from several threads all arrive") {
        memoreel::test::TempDir dir;
        JobStore store(dir.file("jobs.sqlite"));
        constexpr int kThreads = 4, kEach = 50;
        std::vector<std::thread> threads;
        std::vector<std::vector<std::string>> made(kThreads);
        for (int t = 0; t < kThreads; ++t)
            threads.emplace_back([&, t] {
                for (int i = 0; i < kEach; ++i) {
                    auto j = job(memoreel::make_job_id(), 1000 + i);
                    store.insert(j);
                    made[t].push_back(j.id);
                    // Reads interleave with the other threads' writes.
                    if (!store.get(j.id))
                        made[t].push_back("missing");
                }
            });
        for (auto& th : threads)
            th.join();
        CHECK(store.count_unfinished() == kThreads * kEach);
        std::set<std::string> listed;
        std::string after;
        for (;;) {
            const auto page = store.list(37, after, false);
            for (const auto& j : page.jobs)
                listed.insert(j.id);
            if (!page.has_more)
                break;
            after = page.jobs.back().id;
        }
        CHECK(listed.size() == static_cast<size_t>(kThreads * kEach));
        for (const auto& list : made)
            for (const auto& id : list)
                CHECK(listed.count(id) == 1);
    }
}
