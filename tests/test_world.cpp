// The procedural storyboard world: deterministic by seed, stories revisit places and characters, captions
// come from the ground truth (and sometimes leave attributes out), frames show what the truth says.
#include <doctest/doctest.h>

#include <set>
#include <vector>

#include "model/storyboard.h"
#include "training/world.h"

using namespace memoreel::world;

namespace {

std::vector<uint8_t> frame(const Story& s, double t, FrameTruth* truth = nullptr, int w = 160, int h = 96) {
    std::vector<uint8_t> rgb(static_cast<size_t>(w) * h * 3);
    render_frame(s, t, w, h, rgb.data(), truth);
    return rgb;
}

// Mean colour of a pixel box.
std::array<double, 3> mean_rgb(const std::vector<uint8_t>& rgb, int w, const std::array<int, 4>& box) {
    std::array<double, 3> sum{0, 0, 0};
    int n = 0;
    for (int y = box[1]; y < box[3]; ++y)
        for (int x = box[0]; x < box[2]; ++x, ++n)
            for (int c = 0; c < 3; ++c)
                sum[c] += rgb[(static_cast<size_t>(y) * w + x) * 3 + c];
    for (auto& v : sum)
        v /= std::max(n, 1);
    return sum;
}

}  // namespace

TEST_SUITE("world") {
    TEST_CASE("the same seed gives the same world, story and pixels, another seed differs") {
        const Story a = Story::generate(7), b = Story::generate(7), c = Story::generate(8);
        CHECK(a.to_json() == b.to_json());
        CHECK(a.to_json() != c.to_json());
        CHECK(frame(a, 3.3) == frame(b, 3.3));
        CHECK(frame(a, 3.3) != frame(c, 3.3));
    }

    TEST_CASE("stories revisit places and characters, with hard cuts, and cover the requested length") {
        StoryOptions o;
        o.seconds = 120;
        int revisits = 0, returning = 0, omitted = 0;
        for (uint64_t seed = 1; seed <= 5; ++seed) {
            const Story s = Story::generate(seed, o);
            CHECK(s.shots.front().start == 0.0);
            CHECK(s.shots.back().start + s.shots.back().duration == doctest::Approx(120.0));
            std::set<int> places_seen, chars_seen;
            for (size_t i = 0; i < s.shots.size(); ++i) {
                const auto& shot = s.shots[i];
                if (i > 0) {
                    CHECK(shot.start == doctest::Approx(s.shots[i - 1].start + s.shots[i - 1].duration));
                    CHECK(shot.place != s.shots[i - 1].place);  // every shot boundary is a cut elsewhere
                }
                if (places_seen.count(shot.place)) {
                    ++revisits;
                    CHECK(shot.caption.rfind("back in the " + s.world.places[shot.place].name(), 0) == 0);
                }
                for (int c : shot.characters) {
                    if (chars_seen.count(c)) {
                        ++returning;
                        const auto& ch = s.world.cast[c];
                        // A returning character is named, sometimes without its attributes.
                        CHECK(shot.caption.find(ch.species) != std::string::npos);
                        if (shot.caption.find(ch.full_name()) == std::string::npos)
                            ++omitted;
                    }
                    chars_seen.insert(c);
                }
                places_seen.insert(shot.place);
            }
        }
        CHECK(revisits >= 10);
        CHECK(returning >= 10);
        CHECK(omitted >= 3);
    }

    TEST_CASE("captions come from the ground truth and load as a storyboard") {
        const Story s = Story::generate(3);
        const auto& first = s.shots.front();
        const auto& ch = s.world.cast[first.characters[0]];
        CHECK(first.caption.find(ch.full_name()) != std::string::npos);  // first mention: every attribute
        CHECK(first.caption.find(s.world.places[first.place].name()) != std::string::npos);
        for (const auto& shot : s.shots)
            if (shot.object >= 0)
                CHECK(shot.caption.find(s.world.objects[shot.object].noun) != std::string::npos);
        const memoreel::Storyboard board = memoreel::Storyboard::from_json(s.storyboard(), "story");
        CHECK(board.entries().size() == s.shots.size());
        CHECK(board.in_force(s.shots[1].start + 0.01) == s.shots[1].caption);
    }

    TEST_CASE("frames show what the truth says: characters in their boxes in their own colour") {
        StoryOptions o;
        o.seconds = 60;
        const Story s = Story::generate(11, o);
        int checked = 0;
        for (const auto& shot : s.shots) {
            FrameTruth truth;
            const double t = shot.start + shot.duration * 0.8;  // walk-ins have arrived by now
            const auto rgb = frame(s, t, &truth);
            CHECK(truth.place == shot.place);
            CHECK(s.shots[truth.shot].start == shot.start);
            for (size_t k = 0; k < truth.characters.size(); ++k) {
                const auto& ch = s.world.cast[truth.characters[k]];
                const auto& box = truth.boxes[k];
                if (k > 0 || (box[2] - box[0]) < 8 || (box[3] - box[1]) < 8)
                    continue;  // the first character is in front; skip ones cut by the frame edge
                // The box's central region is mostly the character's colour (patterns darken it, markings
                // are small): its mean is nearer the body colour than a typical background colour is.
                const int cx = (box[0] + box[2]) / 2, cy = (box[1] + box[3]) / 2;
                const auto m = mean_rgb(rgb, 160, {cx - 2, cy + 2, cx + 3, cy + 6});
                const double d = std::abs(m[0] - ch.colour.r * 0.8) + std::abs(m[1] - ch.colour.g * 0.8) +
                                 std::abs(m[2] - ch.colour.b * 0.8);
                CHECK_MESSAGE(d < 200, ch.full_name() << " at " << t << " s");
                ++checked;
            }
        }
        CHECK(checked >= 5);
    }

    TEST_CASE("a camera move changes the picture within a shot, bad sizes are refused") {
        const Story s = Story::generate(5);
        const auto& shot = s.shots.front();
        CHECK(frame(s, shot.start + 0.1) != frame(s, shot.start + shot.duration - 0.1));
        std::vector<uint8_t> tiny(3 * 4 * 4);
        CHECK_THROWS_AS(render_frame(s, 0, 4, 4, tiny.data()), std::invalid_argument);
        CHECK_THROWS_AS(World::generate(1, {0, 3, 2}), std::invalid_argument);
    }
}
