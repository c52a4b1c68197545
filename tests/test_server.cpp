// The live server on loopback with the micro model (tests/data/micro-model.json): the WebSocket protocol
// of docs/protocol.md end to end (start, init + fragments that parse as fMP4, prompt acknowledgements and
// idempotency, reconnect with the token, ping, stop/done), every bad input answered with its error code while
// the server goes on serving others, and the REST API (sessions, tokens, jobs, limits, metrics).
#include <doctest/doctest.h>

#include <filesystem>
#include <functional>

#include "server/api_server.h"
#include "stream/media_segments.h"
#include "tests/loopback_client.h"

using namespace memoreel;
namespace beast = boost::beast;
namespace websocket = beast::websocket;
namespace net = boost::asio;
using tcp = net::ip::tcp;

namespace {

struct Client : test::WsClient {
    using test::WsClient::WsClient;
    void send(const nlohmann::json& j) { ws.write(net::buffer(j.dump())); }
    // The next message; binary ones come back as {"binary": size} with the bytes in *bytes.
    nlohmann::json next(std::string* bytes = nullptr) {
        bool binary = false;
        const std::string s = read(&binary);
        if (binary) {
            if (bytes)
                *bytes = s;
            return {{"binary", s.size()}};
        }
        return nlohmann::json::parse(s);
    }
    // Reads until a message of `type` (text), keeping what came before in *seen.
    nlohmann::json until(const std::string& type, std::vector<nlohmann::json>* seen = nullptr) {
        for (int i = 0; i < 10000; ++i) {
            nlohmann::json m = next();
            if (m.value("type", "") == type)
                return m;
            if (seen)
                seen->push_back(m);
        }
        throw std::runtime_error("no " + type);
    }
};

// args: curl options, then the path last ("-X POST -d '{}' /v1/sessions").
std::string curl(uint16_t port, const std::string& args) {
    const size_t cut = args.find_last_of(' ');
    return cut == std::string::npos ? test::curl(port, args)
                                    : test::curl(port, args.substr(cut + 1), args.substr(0, cut));
}

struct Server {
    test::TempDir dir;
    ModelHost host;
    std::unique_ptr<ApiServer> api;
    explicit Server(size_t max_sessions = 4, const std::function<void(ApiServerOptions&)>& adjust = {})
        : host(ModelHostOptions{test::source_dir() + "/tests/data/micro-model.json"}) {
        ApiServerOptions o;
        o.http.port = 0;
        o.sessions.state_dir = dir.file("state");
        o.sessions.max_sessions = max_sessions;
        o.sessions.session.limits.max_message_bytes = 4096;
        o.start_timeout_seconds = 1;
        if (adjust)
            adjust(o);
        api = std::make_unique<ApiServer>(host, o);
        api->start();
    }
    uint16_t port() const { return api->port(); }
};

}  // namespace

TEST_SUITE("server") {
    TEST_CASE(
        "a live session over WebSocket: fMP4 fragments, prompts applied at a section, reconnect, stop") {
        Server server;
        Client c(server.port());
        c.send({{"type", "session.start"}, {"prompt", "a red fox"}, {"seconds", 30}, {"seed", 3}});
        const auto start = c.until("video.start");
        const std::string id = start["session_id"], token = start["token"];
        CHECK(start["config"]["width"] == 64);
        CHECK(start["config"]["mime_type"].get<std::string>().find("avc1") != std::string::npos);
        CHECK(c.until("video.init")["byte_length"].get<size_t>() > 0);
        std::string init;
        c.next(&init);
        CHECK(init.substr(4, 4) == "ftyp");
        CHECK(read_mp4_timescale(init) > 0);
        for (int k = 0; k < 2; ++k) {
            const auto meta = c.until("video.chunk_metadata");
            CHECK(meta["chunk_index"] == k);
            std::string fragment;
            c.next(&fragment);
            CHECK(fragment.size() == meta["byte_length"].get<size_t>());
            const auto info = read_mp4_fragment(fragment);
            CHECK(info.starts_with_keyframe);
            CHECK(info.samples == meta["frames"].get<uint32_t>());
        }
        // A prompt "now": queued for the next section, then applied there; a retry gets its status again.
        const nlohmann::json event = {
            {"type", "session.interaction"}, {"event_id", "e1"}, {"event", {{"prompt", "cut to the beach"}}}};
        c.send(event);
        const auto queued = c.until("session.interaction.queued");
        CHECK(queued["event_id"] == "e1");
        const auto applied = c.until("session.interaction.applied");
        CHECK(applied["section"] == queued["section"]);
        std::vector<nlohmann::json> seen;
        nlohmann::json meta;
        do {
            meta = c.until("video.chunk_metadata");
        } while (meta["chunk_index"] != applied["section"]);
        CHECK(meta["prompt"] == "cut to the beach");
        c.send(event);
        CHECK(c.until("session.interaction.applied")["event_id"] == "e1");
        nlohmann::json conflicting = event;
        conflicting["event"]["prompt"] = "another";
        c.send(conflicting);
        CHECK(c.until("error")["code"] == "event_conflict");
        c.send({{"type", "session.ping"}, {"id", 7}});
        CHECK(c.until("session.pong")["id"] == 7);

        // Reconnect: another connection resumes with the token and gets the init segment and what it missed.
        Client again(server.port());
        again.send({{"type", "session.resume"}, {"session_id", id}, {"token", token}, {"from_section", 1}});
        CHECK(again.until("video.start")["session_id"] == id);
        again.until("video.init");
        again.next();
        const auto replayed = again.until("video.chunk_metadata");
        CHECK(replayed["chunk_index"] == 1);
        CHECK(replayed["replay"] == true);
        // A wrong token opens nothing.
        Client intruder(server.port());
        intruder.send({{"type", "session.resume"}, {"session_id", id}, {"token", "x" + token.substr(1)}});
        CHECK(intruder.until("error")["code"] == "bad_token");
        CHECK(curl(server.port(), "-H 'X-Session-Token: nope' /v1/sessions/" + id).find("HTTP403") !=
              std::string::npos);

        c.send({{"type", "session.stop"}});
        const auto done = c.until("session.done");
        CHECK(done["reason"] == "stopped");
        CHECK(again.until("session.done")["reason"] == "stopped");
    }

    TEST_CASE(
        "a viewer that reads nothing is skipped, then disconnected, while the others get every section") {
        Server server(4, [](ApiServerOptions& o) {
            o.sessions.session.max_lead_seconds = 1000;  // generate as fast as the model can
            o.sessions.session.viewer.max_segments = 2;
            // Long enough that the queue fills (two more sections after the kernel's buffers) before the
            // viewer counts as stalled, even on loaded cores: with 2 s, a section that took over a second to
            // generate let the stall close the viewer before anything was skipped, and the test looped.
            o.sessions.session.viewer.stall_seconds = 8;
        });
        Client owner(server.port());
        owner.send({{"type", "session.start"}, {"prompt", "a red fox"}, {"seconds", 600}, {"seed", 5}});
        const auto start = owner.until("video.start");
        // A viewer with a tiny receive buffer that never reads: the kernel holds little for it, so the
        // server's own queue for it fills.
        net::io_context ioc;
        websocket::stream<tcp::socket> slow(ioc);
        slow.next_layer().open(tcp::v4());
        slow.next_layer().set_option(net::socket_base::receive_buffer_size(4096));
        slow.next_layer().connect({net::ip::make_address("127.0.0.1"), server.port()});
        slow.handshake("127.0.0.1", "/v1/realtime/video");
        slow.write(net::buffer(nlohmann::json{
            {"type", "session.resume"}, {"session_id", start["session_id"]}, {"token", start["token"]}}
                                   .dump()));
        // The owner keeps getting consecutive sections while the slow viewer's sections are skipped and it is
        // then closed as stalled.
        int64_t expected = -1;
        bool dropped = false, closed = false;
        for (int k = 0; k < 400 && !(dropped && closed && k > 20); ++k) {
            const auto meta = owner.until("video.chunk_metadata");
            if (expected >= 0)
                REQUIRE(meta["chunk_index"] == expected);
            expected = meta["chunk_index"].get<int64_t>() + 1;
            if (k % 10 == 9) {
                const std::string metrics = curl(server.port(), "/metrics");
                dropped = metrics.find("memoreel_dropped_segments 0") == std::string::npos;
                closed = metrics.find("memoreel_viewers 1") != std::string::npos;
            }
        }
        CHECK(dropped);
        CHECK(closed);
        // What the slow viewer finds when it reads at last: some sections, then the fatal stall_timeout, then
        // the close.
        timeval tv{20, 0};
        setsockopt(slow.next_layer().native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        int sections = 0;
        nlohmann::json error;
        try {
            while (true) {
                beast::flat_buffer b;
                slow.read(b);
                if (!slow.got_text())
                    continue;
                const auto m = nlohmann::json::parse(beast::buffers_to_string(b.data()));
                if (m["type"] == "video.chunk_metadata")
                    ++sections;
                if (m["type"] == "error")
                    error = m;
            }
        } catch (const beast::system_error& e) {
            CHECK(e.code() == websocket::error::closed);
        }
        CHECK(error.value("code", "") == "stall_timeout");
        CHECK(error.value("fatal", false));
        CHECK(sections < expected);
    }

    TEST_CASE("bad input gets its error and the server goes on serving others") {
        Server server;
        Client c(server.port());
        const auto error_for = [&](const std::string& text) {
            c.ws.write(net::buffer(text));
            return c.until("error");
        };
        CHECK(error_for("{not json")["code"] == "bad_json");
        CHECK(error_for(R"({"type": "session.dance"})")["code"] == "unknown_type");
        CHECK(error_for(R"({"type": "session.start", "storyboard": {"prompts": []}})")["code"] ==
              "bad_storyboard");
        CHECK(error_for(R"({"type": "session.start", "prompt": "x", "seconds": -1})")["code"] == "bad_field");
        CHECK(error_for(
                  R"({"type": "session.interaction", "event_id": "a", "event": {"prompt": "x"}})")["code"] ==
              "not_started");
        CHECK(error_for(R"({"type": "session.resume", "session_id": "s_none", "token": "t"})")["code"] ==
              "unknown_session");
        CHECK(error_for(R"({"type": "session.start", "prompt": ")" + std::string(1500, 'x') +
                        "\"}")["code"] == "prompt_too_long");
        // Too large for the message limit: the connection ends, the server does not.
        Client big(server.port());
        big.ws.write(net::buffer(std::string(8000, ' ')));
        CHECK_THROWS(big.next());
        // A connection that never starts is told and closed after the start timeout.
        Client idle(server.port());
        CHECK(idle.until("error")["code"] == "start_timeout");
        // Still serving: health, and a new session streams.
        CHECK(curl(server.port(), "/healthz").find("HTTP200") != std::string::npos);
        Client fresh(server.port());  // `c` never started: the start timeout has closed it by now
        fresh.send({{"type", "session.start"}, {"prompt", "a red fox"}, {"seconds", 1}});
        CHECK(fresh.until("video.chunk_metadata")["chunk_index"] == 0);
        CHECK(fresh.until("session.done")["reason"] == "completed");
    }

    TEST_CASE("REST: sessions with tokens, prompts, limits with Retry-After, jobs, metrics") {
        Server server(1);
        const uint16_t port = server.port();
        const std::string created =
            curl(port, "-X POST -d '{\"prompt\": \"a red fox\", \"seconds\": 20}' /v1/sessions");
        REQUIRE(created.find("HTTP201") != std::string::npos);
        const auto j = nlohmann::json::parse(created.substr(0, created.rfind(" HTTP")));
        const std::string id = j["id"], token = j["token"];
        const std::string auth = " -H 'X-Session-Token: " + token + "' ";
        // The limit of one live session: 429 with Retry-After.
        const std::string refused =
            test::run_command("curl -s -D - -X POST -d '{\"prompt\": \"x\"}' http://127.0.0.1:" +
                              std::to_string(port) + "/v1/sessions")
                .output;
        CHECK(refused.find(" 429") != std::string::npos);
        CHECK(refused.find("Retry-After:") != std::string::npos);
        CHECK(refused.find("too_many_sessions") != std::string::npos);
        CHECK(curl(port, auth +
                             "-X POST -d '{\"event_id\": \"p1\", \"prompt\": \"cut to the beach\", \"time\": "
                             "3}' /v1/sessions/" +
                             id + "/prompts")
                  .find("HTTP202") != std::string::npos);
        CHECK(curl(port, auth +
                             "-X POST -d '{\"event_id\": \"p1\", \"prompt\": \"cut to the beach\", \"time\": "
                             "3}' /v1/sessions/" +
                             id + "/prompts")
                  .find("HTTP200") != std::string::npos);
        CHECK(
            curl(port,
                 auth +
                     "-X POST -d '{\"event_id\": \"p1\", \"prompt\": \"other\", \"time\": 3}' /v1/sessions/" +
                     id + "/prompts")
                .find("HTTP409") != std::string::npos);
        CHECK(curl(port, auth + "-X POST -d '{\"prompt\": 5}' /v1/sessions/" + id + "/prompts")
                  .find("HTTP400") != std::string::npos);
        CHECK(curl(port, "-X POST -d '{oops' /v1/sessions").find("bad_json") != std::string::npos);
        // Wait for a section, then the status, the download and the inspector.
        for (int i = 0; i < 600; ++i) {
            const std::string s = curl(port, auth + "/v1/sessions/" + id);
            if (s.find("\"sections\":0") == std::string::npos)
                break;
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        CHECK(curl(port, auth + "-o /dev/null /v1/sessions/" + id + "/video.mp4").find("HTTP200") !=
              std::string::npos);
        CHECK(curl(port, auth + "-o /dev/null /v1/sessions/" + id + "/inspect.png?t=0").find("HTTP200") !=
              std::string::npos);
        CHECK(curl(port, auth + "/v1/sessions/" + id + "/inspect.png?t=999").find("HTTP409") !=
              std::string::npos);
        CHECK(curl(port, auth + "-X DELETE /v1/sessions/" + id).find("HTTP204") != std::string::npos);
        CHECK(curl(port, auth + "/v1/sessions/" + id).find("HTTP404") != std::string::npos);

        // A job in the OpenAI shape: created, polled to completion, downloaded, listed, deleted.
        const std::string job = curl(
            port,
            "-X POST -d '{\"prompt\": \"a red fox\", \"seconds\": \"1\", \"size\": \"64x64\"}' /v1/videos");
        REQUIRE(job.find("HTTP200") != std::string::npos);
        const std::string vid = nlohmann::json::parse(job.substr(0, job.rfind(" HTTP")))["id"];
        CHECK(vid.rfind("video_", 0) == 0);
        std::string polled;
        for (int i = 0; i < 600; ++i) {
            polled = curl(port, "/v1/videos/" + vid);
            if (polled.find("\"completed\"") != std::string::npos)
                break;
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        CHECK(polled.find("\"progress\":100") != std::string::npos);
        CHECK(curl(port, "-o /dev/null /v1/videos/" + vid + "/content").find("HTTP200") != std::string::npos);
        CHECK(curl(port, "/v1/videos?limit=5").find(vid) != std::string::npos);
        CHECK(curl(port, "-X POST -d '{\"prompt\": \"x\", \"model\": \"sora-2\"}' /v1/videos")
                  .find("HTTP400") != std::string::npos);
        CHECK(curl(port, "-X DELETE /v1/videos/" + vid).find("\"deleted\":true") != std::string::npos);
        CHECK(curl(port, "/v1/videos/" + vid).find("HTTP404") != std::string::npos);
        // Its files go too (the worker removes them between sections).
        const std::string job_dir = server.dir.file("state") + "/sessions/" + vid;
        for (int i = 0; i < 100 && std::filesystem::exists(job_dir); ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        CHECK_FALSE(std::filesystem::exists(job_dir));
        const std::string metrics = curl(port, "/metrics");
        CHECK(metrics.find("memoreel_sections_total{kind=\"job\"}") != std::string::npos);
        CHECK(metrics.find("memoreel_section_latency_seconds_count") != std::string::npos);
    }
}
