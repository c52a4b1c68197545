#include "training/consistency_metric.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <string>

namespace memoreel {

namespace {

constexpr int kBins = 8;  // per channel
constexpr double kColourRadius = 40.0;
constexpr double kKeptFraction = 0.3;
constexpr double kBackgroundLimit = 0.25;
constexpr double kMinCoverage = 0.003;
constexpr double kMinPlaceCoverage = 0.05;

using Histogram = std::vector<double>;

void add_histogram(const uint8_t* rgb, int64_t pixels, Histogram& h) {
    for (int64_t i = 0; i < pixels; ++i) {
        const int r = rgb[3 * i] * kBins / 256, g = rgb[3 * i + 1] * kBins / 256,
                  b = rgb[3 * i + 2] * kBins / 256;
        h[static_cast<size_t>((r * kBins + g) * kBins + b)] += 1.0;
    }
}

void normalise(Histogram& h) {
    double sum = 0;
    for (double v : h)
        sum += v;
    if (sum > 0)
        for (double& v : h)
            v /= sum;
}

double intersection(const Histogram& a, const Histogram& b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); ++i)
        s += std::min(a[i], b[i]);
    return s;
}

bool near(const uint8_t* p, const world::Colour& c) {
    const double dr = p[0] - c.r, dg = p[1] - c.g, db = p[2] - c.b;
    return dr * dr + dg * dg + db * db <= kColourRadius * kColourRadius;
}

// The generated frames whose time lies in the shot's core.
std::vector<const GeneratedFrame*> core_frames(const world::Shot& shot,
                                               const std::vector<GeneratedFrame>& frames) {
    const auto [from, to] = shot_core(shot);
    std::vector<const GeneratedFrame*> out;
    for (const auto& f : frames)
        if (f.time >= from && f.time < to)
            out.push_back(&f);
    return out;
}

struct CharacterCoverage {
    double total = 0;       // rendered: fraction of pixels near the colour
    double background = 0;  // rendered: the part outside the character's boxes
};

CharacterCoverage rendered_coverage(const world::Story& story,
                                    const std::vector<const GeneratedFrame*>& at,
                                    int character,
                                    int width,
                                    int height) {
    const world::Colour& colour = story.world.cast[static_cast<size_t>(character)].colour;
    std::vector<uint8_t> rgb(static_cast<size_t>(width) * height * 3);
    CharacterCoverage c;
    for (const GeneratedFrame* f : at) {
        world::FrameTruth truth;
        world::render_frame(story, f->time, width, height, rgb.data(), &truth);
        std::array<int, 4> box{0, 0, 0, 0};
        for (size_t k = 0; k < truth.characters.size(); ++k)
            if (truth.characters[k] == character)
                box = truth.boxes[k];
        int64_t near_all = 0, near_outside = 0;
        for (int y = 0; y < height; ++y)
            for (int x = 0; x < width; ++x) {
                if (!near(&rgb[(static_cast<size_t>(y) * width + x) * 3], colour))
                    continue;
                ++near_all;
                if (!(x >= box[0] && x < box[2] && y >= box[1] && y < box[3]))
                    ++near_outside;
            }
        c.total += static_cast<double>(near_all) / (static_cast<double>(width) * height);
        c.background += static_cast<double>(near_outside) / (static_cast<double>(width) * height);
    }
    if (!at.empty()) {
        c.total /= static_cast<double>(at.size());
        c.background /= static_cast<double>(at.size());
    }
    return c;
}

// The fraction of pixels near colour in the ground-truth renders at the given frames' times.
double rendered_colour_coverage(const world::Story& story,
                                const std::vector<const GeneratedFrame*>& at,
                                const world::Colour& colour,
                                int width,
                                int height) {
    std::vector<uint8_t> rgb(static_cast<size_t>(width) * height * 3);
    double sum = 0;
    for (const GeneratedFrame* f : at) {
        world::render_frame(story, f->time, width, height, rgb.data());
        int64_t n = 0;
        for (size_t i = 0; i < rgb.size(); i += 3)
            n += near(&rgb[i], colour) ? 1 : 0;
        sum += static_cast<double>(n) / (static_cast<double>(width) * height);
    }
    return at.empty() ? 0.0 : sum / static_cast<double>(at.size());
}

double generated_coverage(const std::vector<const GeneratedFrame*>& at,
                          const world::Colour& colour,
                          int64_t pixels) {
    double sum = 0;
    for (const GeneratedFrame* f : at) {
        int64_t n = 0;
        for (int64_t i = 0; i < pixels; ++i)
            n += near(&f->rgb[static_cast<size_t>(3 * i)], colour) ? 1 : 0;
        sum += static_cast<double>(n) / static_cast<double>(pixels);
    }
    return at.empty() ? 0.0 : sum / static_cast<double>(at.size());
}

double ratio(int64_t a, int64_t b) {
    return b > 0 ? static_cast<double>(a) / static_cast<double>(b) : 0.0;
}

}  // namespace

std::pair<double, double> shot_core(const world::Shot& shot) {
    const double from = shot.start + std::max(1.0, 0.2 * shot.duration);
    const double to = shot.start + 0.85 * shot.duration;
    return {from, std::max(from, to)};
}

void ConsistencyCounts::add(const ConsistencyCounts& o) {
    place_returns += o.place_returns;
    places_identified += o.places_identified;
    place_similarity += o.place_similarity;
    unstated_returns += o.unstated_returns;
    unstated_kept += o.unstated_kept;
    stated_returns += o.stated_returns;
    stated_kept += o.stated_kept;
    place_colour_shots += o.place_colour_shots;
    place_colour_obeyed += o.place_colour_obeyed;
}

nlohmann::json ConsistencyCounts::to_json() const {
    return {{"place",
             {{"returns", place_returns},
              {"identified", ratio(places_identified, place_returns)},
              {"similarity", place_returns ? place_similarity / static_cast<double>(place_returns) : 0.0}}},
            {"character_unstated",
             {{"returns", unstated_returns}, {"kept", ratio(unstated_kept, unstated_returns)}}},
            {"character_stated", {{"returns", stated_returns}, {"kept", ratio(stated_kept, stated_returns)}}},
            {"place_colour",
             {{"shots", place_colour_shots}, {"obeyed", ratio(place_colour_obeyed, place_colour_shots)}}}};
}

ConsistencyCounts score_consistency(const world::Story& story,
                                    const std::vector<GeneratedFrame>& frames,
                                    int width,
                                    int height,
                                    nlohmann::json* details) {
    const int64_t pixels = static_cast<int64_t>(width) * height;
    for (const auto& f : frames)
        if (static_cast<int64_t>(f.rgb.size()) != pixels * 3)
            throw std::invalid_argument("score_consistency: a frame is not " + std::to_string(width) + "x" +
                                        std::to_string(height) + " RGB");
    const size_t shots = story.shots.size();
    std::vector<std::vector<const GeneratedFrame*>> core(shots);
    std::vector<Histogram> hist(shots);
    for (size_t s = 0; s < shots; ++s) {
        core[s] = core_frames(story.shots[s], frames);
        if (core[s].empty())
            continue;
        hist[s].assign(kBins * kBins * kBins, 0.0);
        for (const GeneratedFrame* f : core[s])
            add_histogram(f->rgb.data(), pixels, hist[s]);
        normalise(hist[s]);
    }
    ConsistencyCounts c;
    // Every shot whose caption names its place's colour ("cut to the red room"): is that colour drawn?
    for (size_t j = 0; j < shots; ++j) {
        const world::Shot& shot = story.shots[j];
        const world::Place& place = story.world.places[static_cast<size_t>(shot.place)];
        if (core[j].empty() || !place.colour_in_name || shot.caption.find(place.name()) == std::string::npos)
            continue;
        const double truth = rendered_colour_coverage(story, core[j], place.primary, width, height);
        if (truth < kMinPlaceCoverage)
            continue;
        const double got = generated_coverage(core[j], place.primary, pixels);
        const bool obeyed = got >= kKeptFraction * truth;
        ++c.place_colour_shots;
        c.place_colour_obeyed += obeyed ? 1 : 0;
        if (details)
            details->push_back({{"kind", "place_colour"},
                                {"shot", j},
                                {"place", place.name()},
                                {"coverage", got},
                                {"rendered_coverage", truth},
                                {"obeyed", obeyed}});
    }
    for (size_t j = 1; j < shots; ++j) {
        if (core[j].empty())
            continue;
        const world::Shot& shot = story.shots[j];
        // The place: its previous shot there, against every earlier shot elsewhere.
        int previous = -1;
        for (size_t i = 0; i < j; ++i)
            if (story.shots[i].place == shot.place && !core[i].empty())
                previous = static_cast<int>(i);
        if (previous >= 0) {
            const double same = intersection(hist[j], hist[static_cast<size_t>(previous)]);
            double best_other = -1;
            for (size_t i = 0; i < j; ++i)
                if (story.shots[i].place != shot.place && !core[i].empty())
                    best_other = std::max(best_other, intersection(hist[j], hist[i]));
            const bool identified = same > best_other;
            ++c.place_returns;
            c.places_identified += identified ? 1 : 0;
            c.place_similarity += same;
            if (details)
                details->push_back({{"kind", "place"},
                                    {"shot", j},
                                    {"previous_shot", previous},
                                    {"place", story.world.places[static_cast<size_t>(shot.place)].name()},
                                    {"similarity", same},
                                    {"best_other", best_other},
                                    {"identified", identified}});
        }
        // The characters back after an absence.
        const auto& before = story.shots[j - 1].characters;
        for (int ch : shot.characters) {
            if (std::find(before.begin(), before.end(), ch) != before.end())
                continue;
            bool seen = false;
            for (size_t i = 0; i + 1 < j && !seen; ++i)
                seen = std::find(story.shots[i].characters.begin(), story.shots[i].characters.end(), ch) !=
                       story.shots[i].characters.end();
            if (!seen)
                continue;
            const world::Character& character = story.world.cast[static_cast<size_t>(ch)];
            const CharacterCoverage truth = rendered_coverage(story, core[j], ch, width, height);
            if (truth.total < kMinCoverage || truth.background > kBackgroundLimit * truth.total)
                continue;
            const double got = generated_coverage(core[j], character.colour, pixels);
            const bool kept = got >= kKeptFraction * truth.total;
            const bool stated = shot.caption.find(character.full_name()) != std::string::npos;
            (stated ? c.stated_returns : c.unstated_returns) += 1;
            (stated ? c.stated_kept : c.unstated_kept) += kept ? 1 : 0;
            if (details)
                details->push_back({{"kind", "character"},
                                    {"shot", j},
                                    {"character", character.full_name()},
                                    {"stated", stated},
                                    {"coverage", got},
                                    {"rendered_coverage", truth.total},
                                    {"kept", kept}});
        }
    }
    return c;
}

}  // namespace memoreel
