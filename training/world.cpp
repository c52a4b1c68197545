#include "training/world.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace memoreel::world {

// ------------------------------------------------------------------------------------------------ randomness

uint64_t Rng::next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double Rng::uniform() {
    return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0);
}

int64_t Rng::below(int64_t n) {
    if (n <= 0)
        throw std::invalid_argument("Rng::below needs n > 0");
    return static_cast<int64_t>(uniform() * static_cast<double>(n));
}

double Rng::range(double lo, double hi) {
    return lo + (hi - lo) * uniform();
}

namespace {

// A hash of integer coordinates to [0, 1), for textures that must not depend on drawing order.
double hash01(int64_t a, int64_t b, uint64_t seed) {
    Rng r(seed ^ (static_cast<uint64_t>(a) * 0x9E3779B1ull) ^
          (static_cast<uint64_t>(b) * 0x85EBCA77ull << 1));
    return r.uniform();
}

const std::vector<Colour>& palette() {
    static const std::vector<Colour> colours = {
        {"red", 205, 45, 45},     {"green", 50, 165, 65},   {"blue", 45, 85, 210},
        {"yellow", 235, 205, 45}, {"orange", 240, 135, 35}, {"purple", 135, 65, 175},
        {"white", 238, 238, 238}, {"black", 35, 35, 35},    {"pink", 240, 135, 185},
        {"brown", 135, 85, 45},   {"grey", 130, 130, 130},  {"teal", 35, 155, 155},
    };
    return colours;
}

const Colour& colour_named(const std::string& name) {
    for (const auto& c : palette())
        if (c.name == name)
            return c;
    throw std::invalid_argument("unknown colour " + name);
}

template <typename T>
const T& pick(Rng& rng, const std::vector<T>& v) {
    return v[static_cast<size_t>(rng.below(static_cast<int64_t>(v.size())))];
}

struct Rgb {
    double r, g, b;
};

Rgb rgb(const Colour& c) {
    return {double(c.r), double(c.g), double(c.b)};
}
Rgb shade(Rgb c, double f) {
    return {c.r * f, c.g * f, c.b * f};
}
Rgb mix(Rgb a, Rgb b, double t) {
    return {a.r + (b.r - a.r) * t, a.g + (b.g - a.g) * t, a.b + (b.b - a.b) * t};
}

}  // namespace

// ------------------------------------------------------------------------------------------------ names

std::string to_string(Shape s) {
    switch (s) {
        case Shape::kCircle:
            return "circle";
        case Shape::kSquare:
            return "square";
        case Shape::kTriangle:
            return "triangle";
        case Shape::kDiamond:
            return "diamond";
    }
    return "?";
}

std::string to_string(Pattern p) {
    switch (p) {
        case Pattern::kPlain:
            return "plain";
        case Pattern::kStriped:
            return "striped";
        case Pattern::kDotted:
            return "dotted";
        case Pattern::kChecked:
            return "checked";
    }
    return "?";
}

std::string to_string(Marking m) {
    switch (m) {
        case Marking::kEyes:
            return "eyes";
        case Marking::kStar:
            return "star";
        case Marking::kBand:
            return "band";
    }
    return "?";
}

std::string to_string(PlaceKind k) {
    switch (k) {
        case PlaceKind::kRoom:
            return "room";
        case PlaceKind::kBeach:
            return "beach";
        case PlaceKind::kForest:
            return "forest";
        case PlaceKind::kStreet:
            return "street";
        case PlaceKind::kField:
            return "field";
    }
    return "?";
}

std::string Character::full_name() const {
    std::string name = colour.name + " ";
    if (pattern != Pattern::kPlain)
        name += to_string(pattern) + " ";
    return name + species;
}

std::string Place::name() const {
    return colour_in_name ? primary.name + " " + to_string(kind) : to_string(kind);
}

// ------------------------------------------------------------------------------------------------ world

World World::generate(uint64_t seed, const WorldOptions& o) {
    if (o.characters < 1 || o.places < 1 || o.objects < 0 || o.characters > 8 || o.places > 12 ||
        o.objects > 4)
        throw std::invalid_argument("world: need 1-8 characters, 1-12 places, 0-4 objects");
    Rng rng(seed);
    World w;
    std::vector<std::string> species = {"fox", "bird", "cat", "frog", "bear", "rabbit", "owl", "mouse"};
    // Shuffle (Fisher-Yates with the world's own generator).
    for (size_t i = species.size() - 1; i > 0; --i)
        std::swap(species[i], species[static_cast<size_t>(rng.below(static_cast<int64_t>(i) + 1))]);
    const std::vector<std::string> body = {"red",    "green",  "blue", "yellow",
                                           "orange", "purple", "pink", "teal"};
    std::vector<std::string> used_colours;
    for (int i = 0; i < o.characters; ++i) {
        Character c;
        c.id = i;
        c.species = species[static_cast<size_t>(i)];
        c.shape = static_cast<Shape>(rng.below(4));
        // Distinct colours where possible, so a returning character can be told from the others by colour.
        std::string col;
        do {
            col = pick(rng, body);
        } while (std::find(used_colours.begin(), used_colours.end(), col) != used_colours.end() &&
                 used_colours.size() < body.size());
        used_colours.push_back(col);
        c.colour = colour_named(col);
        c.pattern = static_cast<Pattern>(rng.below(4));
        c.marking = static_cast<Marking>(rng.below(3));
        c.size = rng.range(0.24, 0.34);
        w.cast.push_back(c);
    }
    const std::vector<std::string> walls = {"red",    "blue",   "yellow", "green",
                                            "purple", "orange", "pink",   "teal"};
    std::vector<std::string> names;
    for (int i = 0; i < o.places; ++i) {
        Place p;
        p.id = i;
        // The first five places are one of each kind; later ones repeat kinds in new colours.
        p.kind = static_cast<PlaceKind>(i < 5 ? (i + static_cast<int>(seed % 5)) % 5 : rng.below(5));
        do {
            p.primary = colour_named(pick(rng, walls));
        } while (std::find(names.begin(), names.end(), p.name()) != names.end());
        names.push_back(p.name());
        switch (p.kind) {
            case PlaceKind::kRoom:
                p.secondary = colour_named(rng.chance(0.5) ? "brown" : "grey");
                break;
            case PlaceKind::kBeach:
                p.secondary = colour_named("yellow");
                break;
            case PlaceKind::kForest:
                p.secondary = colour_named("brown");
                break;
            case PlaceKind::kStreet:
                p.secondary = colour_named("grey");
                break;
            case PlaceKind::kField:
                p.secondary = colour_named("green");
                break;
        }
        p.layout_seed = rng.next();
        w.places.push_back(p);
    }
    for (auto& p : w.places) {
        int same = 0;
        for (const auto& q : w.places)
            same += q.kind == p.kind;
        p.colour_in_name = p.kind == PlaceKind::kRoom || p.kind == PlaceKind::kStreet || same > 1;
    }
    const std::vector<std::string> nouns = {"lamp", "ball", "box", "flower"};
    for (int i = 0; i < o.objects; ++i) {
        Object ob;
        ob.id = i;
        ob.noun = nouns[static_cast<size_t>(i)];
        ob.colour =
            colour_named(pick(rng, std::vector<std::string>{"white", "yellow", "blue", "red", "orange"}));
        w.objects.push_back(ob);
    }
    return w;
}

nlohmann::json World::to_json() const {
    nlohmann::json j;
    for (const auto& c : cast)
        j["cast"].push_back({{"id", c.id},
                             {"name", c.full_name()},
                             {"species", c.species},
                             {"shape", to_string(c.shape)},
                             {"colour", c.colour.name},
                             {"pattern", to_string(c.pattern)},
                             {"marking", to_string(c.marking)},
                             {"size", c.size}});
    for (const auto& p : places)
        j["places"].push_back({{"id", p.id},
                               {"name", p.name()},
                               {"kind", to_string(p.kind)},
                               {"primary", p.primary.name},
                               {"secondary", p.secondary.name}});
    for (const auto& o : objects)
        j["objects"].push_back({{"id", o.id}, {"noun", o.noun}, {"colour", o.colour.name}});
    return j;
}

// ------------------------------------------------------------------------------------------------ stories

namespace {

std::string with_article(const std::string& s) {
    return "the " + s;
}

}  // namespace

Story Story::generate(uint64_t seed, const StoryOptions& o, const WorldOptions& wo) {
    if (!(o.seconds > 0) || !(o.min_shot > 0) || o.max_shot < o.min_shot)
        throw std::invalid_argument("story: need seconds > 0 and 0 < min_shot <= max_shot");
    Story s;
    s.world = World::generate(seed, wo);
    s.seconds = o.seconds;
    Rng rng(seed ^ 0x5EEDF00Dull);
    const World& w = s.world;
    std::vector<bool> place_seen(w.places.size(), false), char_seen(w.cast.size(), false);
    std::vector<int> held_by(w.objects.size(), -1);
    int previous_place = -1;
    double t = 0;
    while (t < o.seconds - 1e-9) {
        Shot shot;
        shot.start = t;
        shot.duration = std::min(rng.range(o.min_shot, o.max_shot), o.seconds - t);
        // Where: often back to a place already seen (not the one just shown), else a new one.
        std::vector<int> seen, fresh;
        for (size_t i = 0; i < w.places.size(); ++i)
            if (static_cast<int>(i) != previous_place)
                (place_seen[i] ? seen : fresh).push_back(static_cast<int>(i));
        const bool revisit = !seen.empty() && (fresh.empty() || rng.chance(o.revisit));
        shot.place = revisit ? pick(rng, seen) : (fresh.empty() ? pick(rng, seen) : pick(rng, fresh));
        // Who: one or two characters, returning ones favoured.
        const int count = (w.cast.size() > 1 && rng.chance(0.35)) ? 2 : 1;
        while (static_cast<int>(shot.characters.size()) < count) {
            std::vector<int> known, unknown;
            for (size_t i = 0; i < w.cast.size(); ++i) {
                if (std::find(shot.characters.begin(), shot.characters.end(), int(i)) !=
                    shot.characters.end())
                    continue;
                (char_seen[i] ? known : unknown).push_back(static_cast<int>(i));
            }
            const bool back = !known.empty() && (unknown.empty() || rng.chance(0.6));
            shot.characters.push_back(back ? pick(rng, known) : pick(rng, unknown));
        }
        // What: an object sometimes, picked up by the first character.
        if (!w.objects.empty() && rng.chance(0.25))
            shot.object = static_cast<int>(rng.below(static_cast<int64_t>(w.objects.size())));
        const int actor = shot.characters[0];
        if (shot.object >= 0)
            shot.action = Action::kPickUp;
        else if (!place_seen[static_cast<size_t>(shot.place)] || rng.chance(0.3))
            shot.action = Action::kWalkIn;
        else
            shot.action = rng.chance(0.5) ? Action::kWalkAcross : Action::kStand;
        // Camera: a pan over the place and a slow zoom.
        shot.pan_from = rng.range(0.25, 0.75);
        shot.pan_to = std::clamp(shot.pan_from + rng.range(-0.25, 0.25), 0.0, 1.0);
        shot.zoom_from = rng.range(1.0, 1.2);
        shot.zoom_to = std::clamp(shot.zoom_from + rng.range(-0.15, 0.3), 1.0, 1.5);

        // The caption, from the same ground truth.
        const Place& place = w.places[static_cast<size_t>(shot.place)];
        auto name_of = [&](int id) {
            const Character& c = w.cast[static_cast<size_t>(id)];
            const bool shorten = char_seen[static_cast<size_t>(id)] && rng.chance(o.omit_attributes);
            return with_article(shorten ? c.species : c.full_name());
        };
        std::string subject = name_of(actor);
        if (shot.characters.size() > 1)
            subject += " and " + name_of(shot.characters[1]);
        const bool plural = shot.characters.size() > 1;
        const std::string where = with_article(place.name());
        const auto verb = [&](const char* one, const char* many) { return std::string(plural ? many : one); };
        std::string object_phrase;
        if (shot.object >= 0) {
            const Object& ob = w.objects[static_cast<size_t>(shot.object)];
            object_phrase = "the " + ob.colour.name + " " + ob.noun;
        }
        std::string prefix, action;
        if (previous_place < 0) {
            // The opening shot names the place inside the sentence.
            switch (shot.action) {
                case Action::kWalkIn:
                    action = verb("walks into ", "walk into ") + where;
                    break;
                case Action::kWalkAcross:
                    action = verb("walks across ", "walk across ") + where;
                    break;
                case Action::kStand:
                    action = verb("stands in ", "stand in ") + where;
                    break;
                case Action::kPickUp:
                    prefix = "in " + where + ", ";
                    action = verb("picks up ", "pick up ") + object_phrase;
                    break;
            }
        } else {
            prefix = (place_seen[static_cast<size_t>(shot.place)] ? "back in " : "cut to ") + where + ", ";
            switch (shot.action) {
                case Action::kWalkIn:
                    action = verb("walks in", "walk in");
                    break;
                case Action::kWalkAcross:
                    action = verb("walks across", "walk across");
                    break;
                case Action::kStand:
                    action = verb("stands still", "stand still");
                    break;
                case Action::kPickUp:
                    action = verb("picks up ", "pick up ") + object_phrase;
                    break;
            }
        }
        shot.caption = prefix + subject + " " + action;

        place_seen[static_cast<size_t>(shot.place)] = true;
        for (int c : shot.characters)
            char_seen[static_cast<size_t>(c)] = true;
        previous_place = shot.place;
        s.shots.push_back(shot);
        t += shot.duration;
    }
    return s;
}

int Story::shot_at(double t) const {
    int i = 0;
    for (size_t k = 0; k < shots.size(); ++k)
        if (shots[k].start <= t + 1e-9)
            i = static_cast<int>(k);
    return i;
}

nlohmann::json Story::storyboard() const {
    nlohmann::json prompts = nlohmann::json::array();
    for (const auto& s : shots)
        prompts.push_back({{"time", s.start}, {"prompt", s.caption}});
    return {{"prompts", prompts}};
}

nlohmann::json Story::to_json() const {
    nlohmann::json j;
    j["world"] = world.to_json();
    j["seconds"] = seconds;
    for (const auto& s : shots) {
        j["shots"].push_back({{"start", s.start},
                              {"duration", s.duration},
                              {"place", s.place},
                              {"characters", s.characters},
                              {"object", s.object},
                              {"action", static_cast<int>(s.action)},
                              {"pan", {s.pan_from, s.pan_to}},
                              {"zoom", {s.zoom_from, s.zoom_to}},
                              {"caption", s.caption}});
    }
    return j;
}

// ------------------------------------------------------------------------------------------------ rendering

namespace {

constexpr double kPlaceWidth = 2.4;  // a place is wider than the view: the camera pans over it
constexpr double kGround = 0.86;     // feet line, in place units (the place is 1 high)

Rgb background(const Place& p, double x, double y, double t) {
    const Rgb a = rgb(p.primary), b = rgb(p.secondary);
    const uint64_t ls = p.layout_seed;
    switch (p.kind) {
        case PlaceKind::kRoom: {
            if (y >= 0.68) {  // floor with planks
                const bool seam = std::fmod(x * 8.0 + (std::floor(y * 12.0) * 0.5), 1.0) < 0.04;
                return shade(b, seam ? 0.7 : (0.85 + 0.1 * (y - 0.68)));
            }
            // Wallpaper stripes and one window at a place-specific position.
            const double wx = 0.3 + 1.8 * hash01(1, 0, ls), wy = 0.18;
            if (x > wx && x < wx + 0.35 && y > wy && y < wy + 0.3) {
                const bool frame = x < wx + 0.02 || x > wx + 0.33 || y < wy + 0.02 || y > wy + 0.28 ||
                                   std::abs(x - (wx + 0.175)) < 0.01;
                return frame ? Rgb{240, 240, 240} : mix({150, 200, 240}, {220, 235, 250}, y - wy);
            }
            return shade(a, std::fmod(x * 10.0, 1.0) < 0.5 ? 1.0 : 0.88);
        }
        case PlaceKind::kBeach: {
            const double wave = 0.56 + 0.015 * std::sin(x * 18.0 + t * 2.0);
            if (y < 0.4)
                return mix({120, 180, 235}, {200, 225, 245}, y / 0.4);
            if (y < wave)
                return mix(shade(a, 0.6), {40, 90, 170}, (y - 0.4) / 0.2);
            if (y < wave + 0.02)
                return {245, 245, 245};  // foam
            const bool speck = hash01(int64_t(x * 90), int64_t(y * 90), ls) < 0.08;
            return shade(b, speck ? 0.8 : 0.95);
        }
        case PlaceKind::kForest: {
            if (y >= 0.76)
                return shade(b, 0.7 + 0.1 * hash01(int64_t(x * 40), int64_t(y * 40), ls));
            for (int i = 0; i < 7; ++i) {  // trees: trunks and canopies
                const double tx = 0.15 + i * 0.33 + 0.12 * hash01(i, 1, ls);
                const double cy = 0.28 + 0.06 * hash01(i, 2, ls), r = 0.14 + 0.04 * hash01(i, 3, ls);
                if ((x - tx) * (x - tx) + (y - cy) * (y - cy) < r * r)
                    return shade(a, 0.75 + 0.25 * hash01(i, 4, ls));
                if (std::abs(x - tx) < 0.035 && y > cy)
                    return {110, 70, 40};
            }
            return mix({170, 200, 170}, {210, 225, 200}, y);
        }
        case PlaceKind::kStreet: {
            if (y >= 0.72) {
                const bool dash = y > 0.8 && y < 0.815 && std::fmod(x * 4.0, 1.0) < 0.5;
                return dash ? Rgb{240, 240, 240} : shade(b, 0.8);
            }
            for (int i = 0; i < 6; ++i) {  // houses with windows
                const double hx = i * 0.42 + 0.05 * hash01(i, 5, ls), top = 0.25 + 0.15 * hash01(i, 6, ls);
                if (x > hx && x < hx + 0.34 && y > top) {
                    const double u = std::fmod((x - hx) * 9.0, 1.0), v = std::fmod((y - top) * 9.0, 1.0);
                    if (u > 0.3 && u < 0.7 && v > 0.3 && v < 0.7)
                        return {250, 240, 180};
                    return shade(a, 0.8 + 0.2 * hash01(i, 7, ls));
                }
            }
            return {175, 205, 235};
        }
        case PlaceKind::kField: {
            const double hill = 0.55 + 0.06 * std::sin(x * 3.0 + 6.0 * hash01(0, 8, ls));
            if (y < hill)
                return mix({110, 170, 230}, {190, 215, 240}, y / hill);
            const bool flower = hash01(int64_t(x * 60), int64_t(y * 60), ls) < 0.05;
            return flower ? shade(a, 1.0) : shade(b, 0.75 + 0.2 * (y - hill));
        }
    }
    return {0, 0, 0};
}

// Inside the unit body [-0.5, 0.5]^2 of a shape?
bool inside(Shape s, double lx, double ly) {
    switch (s) {
        case Shape::kCircle:
            return lx * lx + ly * ly < 0.25;
        case Shape::kSquare:
            return std::abs(lx) < 0.45 && std::abs(ly) < 0.45;
        case Shape::kTriangle:
            return ly < 0.5 && ly > -0.5 && std::abs(lx) < (ly + 0.5) * 0.5;
        case Shape::kDiamond:
            return std::abs(lx) + std::abs(ly) < 0.5;
    }
    return false;
}

// The character's colour at local body coordinates (pattern and marking), or false when outside.
bool character_pixel(const Character& c, double lx, double ly, Rgb& out) {
    if (!inside(c.shape, lx, ly))
        return false;
    Rgb col = rgb(c.colour);
    switch (c.pattern) {
        case Pattern::kPlain:
            break;
        case Pattern::kStriped:
            if (static_cast<int>(std::floor((ly + 0.5) * 7.0)) % 2 == 0)
                col = shade(col, 0.55);
            break;
        case Pattern::kDotted: {
            const double u = std::fmod(lx * 5.0 + 10.0, 1.0) - 0.5, v = std::fmod(ly * 5.0 + 10.0, 1.0) - 0.5;
            if (u * u + v * v < 0.05)
                col = {245, 245, 245};
            break;
        }
        case Pattern::kChecked:
            if ((static_cast<int>(std::floor(lx * 4.0 + 8.0)) +
                 static_cast<int>(std::floor(ly * 4.0 + 8.0))) %
                2)
                col = shade(col, 0.55);
            break;
    }
    switch (c.marking) {
        case Marking::kEyes:
            for (double ex : {-0.13, 0.13}) {
                const double dx = lx - ex, dy = ly + 0.1;
                if (dx * dx + dy * dy < 0.0016)
                    col = {20, 20, 20};
                else if (dx * dx + dy * dy < 0.0064)
                    col = {250, 250, 250};
            }
            break;
        case Marking::kStar: {
            const double dx = std::abs(lx), dy = std::abs(ly + 0.05);
            if (dx + 3.0 * dy < 0.14 || 3.0 * dx + dy < 0.14)
                col = {255, 230, 40};
            break;
        }
        case Marking::kBand:
            if (std::abs(ly + 0.05) < 0.06)
                col = {25, 25, 25};
            break;
    }
    out = col;
    return true;
}

bool object_pixel(const Object& o, double lx, double ly, Rgb& out) {
    const Rgb col = rgb(o.colour);
    if (o.noun == "lamp") {
        if (ly < 0.0 && std::abs(lx) < (ly + 0.5) * 0.8 && ly > -0.5) {
            out = col;
            return true;
        }
        if (ly >= 0.0 && ly < 0.5 && std::abs(lx) < 0.05) {
            out = {60, 60, 60};
            return true;
        }
        return false;
    }
    if (o.noun == "ball") {
        if (lx * lx + ly * ly < 0.2) {
            out = (std::abs(ly) < 0.06) ? shade(col, 0.6) : col;
            return true;
        }
        return false;
    }
    if (o.noun == "box") {
        if (std::abs(lx) < 0.4 && std::abs(ly) < 0.4) {
            out = (std::abs(lx) < 0.05 || std::abs(ly) < 0.05) ? shade(col, 0.6) : col;
            return true;
        }
        return false;
    }
    // flower: petals around a centre on a stem
    const double dy = ly + 0.2;
    if (lx * lx + dy * dy < 0.01) {
        out = {250, 220, 40};
        return true;
    }
    if (lx * lx + dy * dy < 0.06) {
        out = col;
        return true;
    }
    if (ly > -0.05 && ly < 0.5 && std::abs(lx) < 0.03) {
        out = {40, 140, 50};
        return true;
    }
    return false;
}

struct Placed {
    double x, y, size;  // centre x, feet y (characters) or centre y (objects), height; place units
};

}  // namespace

void render_frame(const Story& story, double t, int width, int height, uint8_t* rgb_out, FrameTruth* truth) {
    if (width < 8 || height < 8)
        throw std::invalid_argument("render_frame: frame too small");
    if (story.shots.empty())
        throw std::invalid_argument("render_frame: the story has no shots");
    const int si = story.shot_at(t);
    const Shot& shot = story.shots[static_cast<size_t>(si)];
    const World& w = story.world;
    const Place& place = w.places[static_cast<size_t>(shot.place)];
    const double p = std::clamp((t - shot.start) / std::max(shot.duration, 1e-6), 0.0, 1.0);
    const double aspect = double(width) / double(height);

    // Camera: view height 1/zoom, centred on the pan position, kept inside the place.
    const auto view_at = [&](double q, double& cx, double& cy, double& vh) {
        vh = 1.0 / (shot.zoom_from + (shot.zoom_to - shot.zoom_from) * q);
        const double vw = aspect * vh;
        const double pan = shot.pan_from + (shot.pan_to - shot.pan_from) * q;
        cx = std::clamp(vw / 2 + pan * (kPlaceWidth - vw), vw / 2, kPlaceWidth - vw / 2);
        cy = std::clamp(1.0 - vh / 2, vh / 2, 1.0 - vh / 2);  // zoom toward the ground, where the action is
    };
    double cx, cy, vh, cx0, cy0, vh0;
    view_at(p, cx, cy, vh);
    view_at(0.0, cx0, cy0, vh0);
    const double vw0 = aspect * vh0;

    // Where everyone is: positions relative to the opening view, so the camera moves over them.
    std::vector<Placed> chars;
    const double bob = 0.008 * std::sin(t * 11.0);
    for (size_t k = 0; k < shot.characters.size(); ++k) {
        const Character& c = w.cast[static_cast<size_t>(shot.characters[k])];
        double x = cx0 + (k == 0 ? 0.0 : -0.3 * vw0);
        if (k == 0) {
            switch (shot.action) {
                case Action::kWalkIn:
                    x = (cx0 - 0.5 * vw0 - c.size) + (0.5 * vw0 + c.size) * std::min(p / 0.6, 1.0);
                    break;
                case Action::kWalkAcross:
                    x = cx0 - 0.35 * vw0 + 0.7 * vw0 * p;
                    break;
                case Action::kStand:
                    x = cx0 + 0.05 * vw0;
                    break;
                case Action::kPickUp:
                    x = cx0 - 0.25 * vw0 + 0.4 * vw0 * std::min(p / 0.5, 1.0);
                    break;
            }
        }
        const bool moving = k == 0 && shot.action != Action::kStand;
        chars.push_back({x, kGround + (moving ? bob : 0.0), c.size});
    }
    Placed obj{0, 0, 0};
    bool held = false;
    if (shot.object >= 0) {
        held = shot.action == Action::kPickUp && p >= 0.55;
        if (held)
            obj = {chars[0].x + 0.02, chars[0].y - chars[0].size - 0.06, 0.11};
        else
            obj = {cx0 + 0.15 * vw0, kGround - 0.06, 0.11};
    }

    for (int py = 0; py < height; ++py) {
        const double y = cy + ((py + 0.5) - height / 2.0) / height * vh;
        for (int px = 0; px < width; ++px) {
            const double x = cx + ((px + 0.5) - width / 2.0) / height * vh;
            Rgb col = background(place, x, y, t);
            Rgb c;
            // Characters back to front (the second stands behind the first), then the object.
            for (size_t k = chars.size(); k-- > 0;) {
                const Placed& pl = chars[k];
                const double lx = (x - pl.x) / pl.size, ly = (y - (pl.y - pl.size / 2)) / pl.size;
                if (character_pixel(w.cast[static_cast<size_t>(shot.characters[k])], lx, ly, c))
                    col = c;
            }
            if (shot.object >= 0) {
                const double lx = (x - obj.x) / obj.size, ly = (y - obj.y) / obj.size;
                if (object_pixel(w.objects[static_cast<size_t>(shot.object)], lx, ly, c))
                    col = c;
            }
            uint8_t* o = rgb_out + (static_cast<size_t>(py) * width + px) * 3;
            o[0] = static_cast<uint8_t>(std::clamp(col.r, 0.0, 255.0));
            o[1] = static_cast<uint8_t>(std::clamp(col.g, 0.0, 255.0));
            o[2] = static_cast<uint8_t>(std::clamp(col.b, 0.0, 255.0));
        }
    }

    if (truth) {
        truth->shot = si;
        truth->place = shot.place;
        truth->characters.clear();
        truth->boxes.clear();
        truth->object = shot.object;
        truth->object_held = held;
        const auto to_px = [&](double x, double y) {
            return std::array<double, 2>{(x - cx) / vh * height + width / 2.0,
                                         (y - cy) / vh * height + height / 2.0};
        };
        for (size_t k = 0; k < chars.size(); ++k) {
            const Placed& pl = chars[k];
            const auto a = to_px(pl.x - pl.size / 2, pl.y - pl.size);
            const auto b = to_px(pl.x + pl.size / 2, pl.y);
            std::array<int, 4> box{
                std::clamp(int(std::floor(a[0])), 0, width), std::clamp(int(std::floor(a[1])), 0, height),
                std::clamp(int(std::ceil(b[0])), 0, width), std::clamp(int(std::ceil(b[1])), 0, height)};
            if (box[2] > box[0] && box[3] > box[1]) {
                truth->characters.push_back(shot.characters[k]);
                truth->boxes.push_back(box);
            }
        }
    }
}

}  // namespace memoreel::world
