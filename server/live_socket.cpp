#include "server/live_socket.h"

#include <spdlog/spdlog.h>

namespace memoreel {

namespace {

template <class... Ts>
struct Overloaded : Ts... {
    using Ts::operator()...;
};
template <class... Ts>
Overloaded(Ts...) -> Overloaded<Ts...>;

}  // namespace

LiveSocket::LiveSocket(SessionManager& sessions,
                       protocol::Limits limits,
                       ViewerLimits viewer_limits,
                       bool authorized)
    : sessions_(sessions), limits_(limits), viewer_limits_(viewer_limits), authorized_(authorized) {}

void LiveSocket::on_open(const std::shared_ptr<WsConnection>& connection) {
    std::lock_guard<std::mutex> lock(mutex_);
    connection_ = connection;
    opened_ = std::chrono::steady_clock::now();
    if (!authorized_) {
        send_error(protocol::ProtocolError("unauthorized", "this server needs an API key (?api_key=...)"),
                   true);
        connection_->close("unauthorized");
        closed_ = true;
    }
}

void LiveSocket::send_error(const protocol::ProtocolError& e, bool fatal) {
    nlohmann::json j = e.to_json();
    if (fatal)
        j["fatal"] = true;
    if (connection_)
        connection_->send_text(j.dump());
}

void LiveSocket::join(const std::shared_ptr<LiveSession>& session, std::optional<int64_t> from_section) {
    session_ = session;
    viewer_ = std::make_shared<Viewer>(connection_, viewer_limits_);
    session->attach(viewer_, from_section);
}

void LiveSocket::on_text(const std::string& text) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_)
        return;
    try {
        const protocol::ClientMessage message = protocol::parse_client_message(text, limits_);
        std::visit(
            Overloaded{
                [&](const protocol::StartRequest& r) {
                    if (session_)
                        throw protocol::ProtocolError(
                            "already_started", "this connection already watches session " + session_->id());
                    join(sessions_.create_session(r), int64_t(0));
                },
                [&](const protocol::ResumeRequest& r) {
                    if (session_)
                        throw protocol::ProtocolError(
                            "already_started", "this connection already watches session " + session_->id());
                    auto s = sessions_.find(r.session_id);
                    if (!s)
                        throw protocol::ProtocolError("unknown_session", "no session " + r.session_id);
                    if (!s->token_matches(r.token))
                        throw protocol::ProtocolError("bad_token",
                                                      "the token does not open session " + r.session_id);
                    join(s, r.from_section);
                },
                [&](const protocol::Interaction& i) {
                    if (!session_)
                        throw protocol::ProtocolError("not_started", "send session.start first", i.event_id);
                    const auto submitted = session_->submit(i);
                    if (submitted.retry) {
                        // A retry: this connection gets the event's current status again.
                        const PromptEvent& e = submitted.event;
                        nlohmann::json j = {{"event_id", e.event_id}, {"section", e.section}};
                        if (e.status == "applied") {
                            j["type"] = "session.interaction.applied";
                        } else if (e.status == "superseded") {
                            j["type"] = "session.interaction.superseded";
                            j["by"] = e.superseded_by;
                        } else {
                            j["type"] = "session.interaction.queued";
                            j["time"] = e.time < 0 ? nlohmann::json() : nlohmann::json(e.time);
                        }
                        connection_->send_text(j.dump());
                    }
                },
                [&](const protocol::Ping& p) {
                    connection_->send_text(nlohmann::json{{"type", "session.pong"}, {"id", p.id}}.dump());
                },
                [&](const protocol::Stop&) {
                    if (!session_)
                        throw protocol::ProtocolError("not_started", "send session.start first");
                    session_->stop("stopped");
                },
            },
            message);
    } catch (const protocol::ProtocolError& e) {
        send_error(e);
    } catch (const std::exception& e) {
        // Not the client's fault (a file, the database): it is told, and the connection stays.
        spdlog::error("live socket {}: {}", connection_->remote(), e.what());
        send_error(protocol::ProtocolError("internal", e.what()));
    }
}

void LiveSocket::on_binary(const std::string&) {
    std::lock_guard<std::mutex> lock(mutex_);
    send_error(
        protocol::ProtocolError("unknown_type", "binary messages are not part of the client protocol"));
}

void LiveSocket::on_close() {
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
    if (session_ && viewer_)
        session_->detach(viewer_.get());
}

bool LiveSocket::check_start_timeout(double seconds) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_ || session_)
        return true;
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - opened_).count() < seconds)
        return false;
    send_error(protocol::ProtocolError("start_timeout", "no session.start or session.resume within " +
                                                            std::to_string(static_cast<int>(seconds)) + " s"),
               true);
    if (connection_)
        connection_->close("start timeout");
    closed_ = true;
    return true;
}

bool LiveSocket::closed() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return closed_;
}

}  // namespace memoreel
