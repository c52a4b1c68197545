// The prompt-event ledger of a live session: "now" events apply at the next section boundary and the newest
// wins, timed events apply at the first section starting at or after their time (never in the past), replace
// rewrites the pending entry, ids are idempotent, and the ledger survives a round trip through JSON.
#include "server/event_ledger.h"

#include <doctest/doctest.h>

using namespace memoreel;

namespace {

protocol::Interaction event(const std::string& id,
                            const std::string& prompt,
                            std::optional<double> time = {},
                            const std::string& mode = "add") {
    protocol::Interaction i;
    i.event_id = id;
    i.prompt = prompt;
    i.time = time;
    i.mode = mode;
    return i;
}

}  // namespace

TEST_SUITE("event_ledger") {
    TEST_CASE("section clock: 13 frames then 16 per section at 16 fps") {
        const SectionClock c{13, 16, 16};
        CHECK(c.start(0) == 0);
        CHECK(c.start(1) == doctest::Approx(13.0 / 16));
        CHECK(c.start(3) == doctest::Approx(45.0 / 16));
        CHECK(c.section_at_or_after(0) == 0);
        CHECK(c.section_at_or_after(0.5) == 1);
        CHECK(c.section_at_or_after(13.0 / 16) == 1);
        CHECK(c.section_at_or_after(13.0 / 16 + 0.01) == 2);
        CHECK(c.section_at_or_after(45.0 / 16) == 3);
    }

    TEST_CASE("now events: the newest waiting one applies at the next section, older ones are superseded") {
        EventLedger l(Storyboard({{0, "a red fox"}}), {13, 16, 16});
        auto s0 = l.begin_section();
        CHECK(s0.prompt == "a red fox");
        CHECK(s0.applied.empty());
        const auto a = l.submit(event("a", "a blue whale"));
        CHECK(a.event.status == "queued");
        CHECK(a.event.section == 1);
        const auto b = l.submit(event("b", "a green owl"));
        REQUIRE(b.superseded.size() == 1);
        CHECK(b.superseded[0].event_id == "a");
        CHECK(b.superseded[0].superseded_by == "b");
        const auto s1 = l.begin_section();
        CHECK(s1.prompt == "a green owl");
        REQUIRE(s1.applied.size() == 1);
        CHECK(s1.applied[0].event_id == "b");
        CHECK(s1.applied[0].section == 1);
        CHECK(s1.applied[0].time == doctest::Approx(13.0 / 16));
        CHECK(s1.active == std::vector<std::string>{"b"});
        CHECK(l.events().at("a").status == "superseded");
        // The timeline shows the first entry past and b current, applied at section 1.
        const auto t = l.timeline();
        REQUIRE(t.size() == 2);
        CHECK(t[0]["state"] == "past");
        CHECK(t[1]["state"] == "current");
        CHECK(t[1]["applied_section"] == 1);
    }

    TEST_CASE("timed events apply where their time falls, never in the past") {
        EventLedger l(Storyboard({{0, "a red fox"}}), {13, 16, 16});
        l.begin_section();
        l.begin_section();  // sections 0 and 1 begun: section 2 starts at 29/16 s
        const auto past = l.submit(event("p", "the beach", 0.2));
        CHECK(past.event.time == doctest::Approx(29.0 / 16));
        CHECK(past.event.section == 2);
        const auto later = l.submit(event("l", "the red room", 4.0));
        CHECK(later.event.section == 5);  // section 4 starts at 61/16 < 4 s, section 5 at 77/16
        CHECK(l.begin_section().applied.at(0).event_id == "p");
        CHECK(l.begin_section().applied.empty());
        CHECK(l.begin_section().prompt == "the beach");
        const auto s5 = l.begin_section();
        CHECK(s5.prompt == "the red room");
        REQUIRE(s5.applied.size() == 1);
        CHECK(s5.applied[0].event_id == "l");
    }

    TEST_CASE("replace rewrites the pending entry in force, add at the same time supersedes") {
        EventLedger l(Storyboard({{0, "a red fox"}, {5, "the beach"}}), {13, 16, 16});
        l.begin_section();
        const auto r = l.submit(event("r", "the forest", 6.0, "replace"));
        CHECK(r.event.time == 5.0);  // the entry in force at 6 s starts at 5 s and has not played yet
        CHECK(l.storyboard().entries().size() == 2);
        CHECK(l.storyboard().in_force(5.5) == "the forest");
        const auto x = l.submit(event("x", "the desert", 5.0));
        REQUIRE(x.superseded.size() == 1);
        CHECK(x.superseded[0].event_id == "r");
        // Replacing the entry that is playing starts the new prompt at the next section instead.
        const auto y = l.submit(event("y", "a storm", std::nullopt, "replace"));
        CHECK(y.event.now);
        const auto s1 = l.begin_section();
        CHECK(s1.prompt == "a storm");
        CHECK(l.storyboard().in_force(0) == "a red fox");
    }

    TEST_CASE("event ids are idempotent: a retry gets the status, another payload conflicts") {
        EventLedger l(Storyboard({{0, "a red fox"}}), {13, 16, 16});
        l.submit(event("e1", "a blue whale"));
        const auto again = l.submit(event("e1", "a blue whale"));
        CHECK(again.retry);
        CHECK(again.event.status == "queued");
        CHECK_THROWS_AS(l.submit(event("e1", "a green owl")), protocol::ProtocolError);
        try {
            l.submit(event("e1", "a green owl"));
        } catch (const protocol::ProtocolError& e) {
            CHECK(e.code() == "event_conflict");
            CHECK(e.event_id() == "e1");
        }
        l.begin_section();
        CHECK(l.submit(event("e1", "a blue whale")).event.status == "applied");
    }

    TEST_CASE("a full storyboard refuses new entries, the ledger survives JSON") {
        EventLedger l(Storyboard({{0, "a"}, {1, "b"}}), {13, 16, 16}, 2);
        CHECK_THROWS_AS(l.submit(event("e", "c", 9.0)), protocol::ProtocolError);
        l.submit(event("f", "b2", 1.0));  // replaces the entry at 1 s: allowed
        l.submit(event("g", "now-prompt"));
        const EventLedger back = EventLedger::from_json(l.to_json(), {13, 16, 16}, 2);
        CHECK(back.to_json() == l.to_json());
        CHECK(back.timeline() == l.timeline());
    }

    TEST_CASE("a now event is refused at once when the storyboard is full, and a waiting one keeps its place") {
        EventLedger full(Storyboard({{0, "a"}, {1, "b"}}), {13, 16, 16}, 2);
        full.begin_section();  // the next section starts at 13/16 s, where there is no entry
        try {
            full.submit(event("n", "c"));
            FAIL("a now event was accepted into a full storyboard");
        } catch (const protocol::ProtocolError& e) {
            CHECK(e.code() == "bad_storyboard");
        }
        // One place left: a waiting now event holds it, so a timed event elsewhere is refused and the now
        // event still applies when the section begins.
        EventLedger l(Storyboard({{0, "a"}}), {13, 16, 16}, 2);
        l.begin_section();
        l.submit(event("n", "c"));
        CHECK_THROWS_AS(l.submit(event("t", "d", 5.0)), protocol::ProtocolError);
        const auto s1 = l.begin_section();
        CHECK(s1.prompt == "c");
        CHECK(s1.applied.at(0).event_id == "n");
    }
}
