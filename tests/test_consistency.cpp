// The story-consistency metric (training/consistency_metric.h): the ground-truth renders of a story score as
// fully consistent, a grey video and another story's renders do not.
#include <doctest/doctest.h>

#include <vector>

#include "training/consistency_metric.h"
#include "training/world.h"

using namespace memoreel;

namespace {

constexpr int kW = 160, kH = 96;

// Frames at 4 fps: the story's own renders, or another story's at the same times, or flat grey.
std::vector<GeneratedFrame> frames_of(const world::Story& story,
                                      const world::Story* shown,
                                      bool grey = false) {
    std::vector<GeneratedFrame> out;
    for (double t = 0; t < story.seconds; t += 0.25) {
        GeneratedFrame f;
        f.time = t;
        f.rgb.assign(static_cast<size_t>(kW) * kH * 3, 128);
        if (!grey)
            world::render_frame(shown ? *shown : story, t, kW, kH, f.rgb.data());
        out.push_back(std::move(f));
    }
    return out;
}

// Enough stories that both kinds of return, stated and unstated, are judged.
std::vector<world::Story> stories() {
    std::vector<world::Story> s;
    world::StoryOptions o;
    o.seconds = 40;
    for (uint64_t seed = 910001; seed < 910005; ++seed)
        s.push_back(world::Story::generate(seed, o));
    return s;
}

}  // namespace

TEST_SUITE("consistency") {
    TEST_CASE("the ground truth itself is consistent: every return identified and kept") {
        ConsistencyCounts all;
        for (const auto& story : stories()) {
            nlohmann::json details = nlohmann::json::array();
            all.add(score_consistency(story, frames_of(story, nullptr), kW, kH, &details));
            for (const auto& d : details) {
                CHECK(d.contains("shot"));
                if (d["kind"] == "place")
                    CHECK_MESSAGE(d["similarity"].get<double>() > d["best_other"].get<double>(), d.dump());
            }
        }
        REQUIRE(all.place_returns >= 4);
        REQUIRE(all.unstated_returns >= 1);
        REQUIRE(all.stated_returns >= 1);
        const auto j = all.to_json();
        CHECK(j["place"]["identified"].get<double>() == 1.0);
        CHECK(j["place"]["similarity"].get<double>() > 0.5);
        CHECK(j["character_unstated"]["kept"].get<double>() == 1.0);
        CHECK(j["character_stated"]["kept"].get<double>() == 1.0);
        REQUIRE(all.place_colour_shots >= 4);
        CHECK(j["place_colour"]["obeyed"].get<double>() == 1.0);
    }

    TEST_CASE("a grey video keeps nothing, another story's video keeps less") {
        ConsistencyCounts grey, other, own;
        const auto s = stories();
        for (size_t i = 0; i < s.size(); ++i) {
            grey.add(score_consistency(s[i], frames_of(s[i], nullptr, true), kW, kH));
            other.add(score_consistency(s[i], frames_of(s[i], &s[(i + 1) % s.size()]), kW, kH));
            own.add(score_consistency(s[i], frames_of(s[i], nullptr), kW, kH));
        }
        // Identical histograms everywhere: no return is closer to its own place than to the others.
        CHECK(grey.places_identified == 0);
        CHECK(grey.unstated_kept + grey.stated_kept == 0);
        CHECK(grey.place_returns == own.place_returns);
        const auto kept = [](const ConsistencyCounts& c) {
            return static_cast<double>(c.unstated_kept + c.stated_kept) /
                   static_cast<double>(c.unstated_returns + c.stated_returns);
        };
        CHECK(kept(other) < kept(own));
        CHECK(other.places_identified < own.places_identified);
        // The caption's place colour: grey draws none; another story's places mostly have other colours.
        CHECK(grey.place_colour_obeyed == 0);
        CHECK(grey.place_colour_shots == own.place_colour_shots);
        CHECK(other.place_colour_obeyed < own.place_colour_obeyed);
    }

    TEST_CASE("frames of the wrong size are refused, shot cores skip the cut") {
        const auto s = stories().front();
        std::vector<GeneratedFrame> f(1);
        f[0].rgb.resize(10);
        CHECK_THROWS_WITH(score_consistency(s, f, kW, kH), doctest::Contains("160x96"));
        world::Shot shot;
        shot.start = 10;
        shot.duration = 4;
        const auto [from, to] = shot_core(shot);
        CHECK(from == doctest::Approx(11.0));
        CHECK(to == doctest::Approx(13.4));
    }
}
