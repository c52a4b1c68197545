// The story-consistency metric of `memoreel eval consistency` (torch-free): given a video generated from a
// world story's storyboard, does a returning place or character look like it did before? The world's ground
// truth says which shots revisit which place and which characters return after being away; the generated
// frames say what the model drew.
//
// Each shot is judged on its core: from max(1 s, 20 %) after its start (a prompt takes effect at the next
// section boundary, up to a section later) to 15 % before its end.
//  - Place returns (a shot in a place seen in an earlier shot, with other places in between, which the world
//    guarantees): the shot's colour histogram (8x8x8 RGB bins over the core's frames) is compared by
//    histogram intersection with the place's previous shot ("similarity", 1 = identical colour
//    distribution). "identified" counts the returns whose previous same-place shot is more similar than every
//    earlier shot of another place: the return is recognisably that place, not just any place.
//  - Character returns (a character in a shot who was in an earlier shot but not in the one before): the
//    fraction of the core's pixels within RGB distance 40 of the character's true colour, against the same
//    fraction in the ground-truth render of those frames. A return "keeps its colour" when the generated
//    fraction reaches 30 % of the rendered one. Returns whose caption leaves the colour unstated ("the fox"),
//    where only memory can know it, are counted apart from those that restate it; a return is skipped when
//    the colour is also in the background (the rendered fraction outside the character's boxes is over 25 %
//    of the total) or the character covers under 0.3 % of the rendered frame.
//  - Place colours (every shot, first visits included, whose caption names its place's colour, "cut to the
//    red room"): the fraction of the core's pixels within RGB distance 40 of the place's colour against the
//    rendered fraction; the shot "obeys" its caption when it reaches 30 % of it (shots where the colour
//    covers under 5 % of the render are skipped). This one scores the caption, not the memory: a model that
//    draws a room in any colour keeps its returns consistent and still fails here.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include <nlohmann/json.hpp>

#include "training/world.h"

namespace memoreel {

struct GeneratedFrame {
    double time = 0;           // seconds
    std::vector<uint8_t> rgb;  // width * height * 3
};

struct ConsistencyCounts {
    int64_t place_returns = 0, places_identified = 0;
    double place_similarity = 0;  // sum over place returns
    int64_t unstated_returns = 0, unstated_kept = 0;
    int64_t stated_returns = 0, stated_kept = 0;
    int64_t place_colour_shots = 0, place_colour_obeyed = 0;

    void add(const ConsistencyCounts& o);
    // {"place": {"returns", "identified", "similarity"}, "character_unstated": {"returns", "kept"},
    //  "character_stated": {...}, "place_colour": {"shots", "obeyed"}} with rates in [0, 1].
    nlohmann::json to_json() const;
};

// Scores one story's generated frames (any subset of its frames, each with its time). details, when given,
// receives one JSON object per judged return.
ConsistencyCounts score_consistency(const world::Story& story,
                                    const std::vector<GeneratedFrame>& frames,
                                    int width,
                                    int height,
                                    nlohmann::json* details = nullptr);

// The core [from, to) of a shot in seconds (empty when the shot is too short).
std::pair<double, double> shot_core(const world::Shot& shot);

}  // namespace memoreel
