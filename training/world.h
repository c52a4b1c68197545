// The procedural storyboard world (DESIGN.md section 5): training and evaluation data whose ground truth is
// exact. A world is a cast of recurring characters (species, body shape, colour, pattern, a face or marking),
// places (backgrounds of their own kind, palette, texture and layout) and objects. A story is a sequence of
// shots in those places with camera moves and hard cuts; it revisits characters and places after other shots,
// and its captions are written from the same ground truth ("the green striped fox walks into the red room",
// "cut to the beach", "back in the red room, the fox picks up the lamp"), sometimes leaving attributes
// unstated so that only memory can keep them consistent. Every frame comes with who/where/what.
//
// Everything is deterministic by seed (its own generator, not the C++ library's distributions, whose output
// differs between standard libraries) and torch-free: frames are RGB bytes.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace memoreel::world {

// SplitMix64: a small, fully specified generator, so a seed gives the same world on every platform.
class Rng {
  public:
    explicit Rng(uint64_t seed) : state_(seed) {}
    uint64_t next();
    double uniform();                    // [0, 1)
    int64_t below(int64_t n);            // [0, n)
    double range(double lo, double hi);  // [lo, hi)
    bool chance(double p) { return uniform() < p; }

  private:
    uint64_t state_;
};

struct Colour {
    std::string name;
    uint8_t r = 0, g = 0, b = 0;
};

enum class Shape { kCircle, kSquare, kTriangle, kDiamond };
enum class Pattern { kPlain, kStriped, kDotted, kChecked };
enum class Marking { kEyes, kStar, kBand };
enum class PlaceKind { kRoom, kBeach, kForest, kStreet, kField };

std::string to_string(Shape s);
std::string to_string(Pattern p);
std::string to_string(Marking m);
std::string to_string(PlaceKind k);

struct Character {
    int id = 0;
    std::string species;  // the noun: "fox", "bird", ...
    Shape shape = Shape::kCircle;
    Colour colour;
    Pattern pattern = Pattern::kPlain;
    Marking marking = Marking::kEyes;
    double size = 0.3;  // body height as a fraction of the frame height

    // "green striped fox" (plain patterns are not named); the short form is "fox".
    std::string full_name() const;
};

struct Place {
    int id = 0;
    PlaceKind kind = PlaceKind::kRoom;
    Colour primary;              // names the place: "the red room"
    Colour secondary;            // floor, sand, ground, road
    uint64_t layout_seed = 0;    // window/tree/house positions, texture phase
    bool colour_in_name = true;  // rooms and streets always; other kinds only when the world has several

    std::string name() const;  // "red room", "beach", "green forest" ...
};

struct Object {
    int id = 0;
    std::string noun;  // "lamp", "ball", "box", "flower"
    Colour colour;
};

struct WorldOptions {
    int characters = 5;
    int places = 5;
    int objects = 4;
};

struct World {
    std::vector<Character> cast;
    std::vector<Place> places;
    std::vector<Object> objects;

    static World generate(uint64_t seed, const WorldOptions& options = {});
    nlohmann::json to_json() const;
};

enum class Action { kWalkIn, kWalkAcross, kStand, kPickUp };

// One shot: a place, who is in it, what they do, and how the camera moves. Times in seconds.
struct Shot {
    double start = 0;
    double duration = 0;
    int place = 0;
    std::vector<int> characters;  // ids, the first one acts
    int object = -1;              // id of the object in the shot, or -1
    Action action = Action::kStand;
    double pan_from = 0, pan_to = 0;    // camera centre over the place's width, in [0, 1]
    double zoom_from = 1, zoom_to = 1;  // 1 = the whole height of the place
    std::string caption;
};

struct StoryOptions {
    double seconds = 30;
    double min_shot = 3, max_shot = 7;
    double revisit = 0.6;          // probability that a shot returns to a place already seen
    double omit_attributes = 0.5;  // probability that a later mention uses the short name only
};

// What is on screen in one frame.
struct FrameTruth {
    int shot = 0;
    int place = 0;
    std::vector<int> characters;
    std::vector<std::array<int, 4>> boxes;  // per character: x0, y0, x1, y1 in pixels (clipped)
    int object = -1;
    bool object_held = false;
};

struct Story {
    World world;
    std::vector<Shot> shots;
    double seconds = 0;

    static Story generate(uint64_t seed, const StoryOptions& options = {}, const WorldOptions& world = {});
    // The storyboard: {"prompts": [{"time", "prompt"}]}, one per shot (Storyboard::from_json reads it).
    nlohmann::json storyboard() const;
    nlohmann::json to_json() const;  // world, shots and captions
    int shot_at(double t) const;
};

// Renders the frame at time t (seconds) into rgb (width * height * 3 bytes, row-major, top row first) and
// fills truth when given.
void render_frame(const Story& story,
                  double t,
                  int width,
                  int height,
                  uint8_t* rgb,
                  FrameTruth* truth = nullptr);

}  // namespace memoreel::world
