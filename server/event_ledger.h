// The storyboard of a live session and the prompt events that steer it (docs/protocol.md,
// session.interaction): idempotent event ids, "now" events resolved at the next section boundary (the newest
// pending one wins, older ones are superseded), timed events placed on the story's timeline, and for every
// event the section where it took effect. Torch-free: the worker asks it at each section's start which prompt
// is in force; the network side submits events and reads the timeline.
//
// Not thread-safe by itself: LiveSession holds it under its mutex.
#pragma once

#include <nlohmann/json.hpp>

#include <map>
#include <string>
#include <vector>

#include "model/storyboard.h"
#include "server/protocol.h"

namespace memoreel {

// When each section starts: the first section has 1 + tf (S - 1) frames (the causal VAE's first latent frame
// is one frame), every later one tf S.
struct SectionClock {
    int64_t first_frames = 13;
    int64_t later_frames = 16;
    double fps = 16;
    double start(int64_t section) const;
    // The first section starting at or after t (seconds).
    int64_t section_at_or_after(double t) const;
};

struct PromptEvent {
    std::string event_id;
    nlohmann::json payload;  // what a retry must repeat (protocol::Interaction::payload)
    std::string prompt;
    std::string mode;      // add | replace
    bool now = false;      // "now": resolved when the next section starts
    double time = -1;      // resolved storyboard time (seconds); -1 while a "now" event waits
    std::string status;    // queued | applied | superseded
    int64_t section = -1;  // queued: where it will apply (when known); applied: where it did
    std::string superseded_by;
    nlohmann::json to_json() const;
    static PromptEvent from_json(const nlohmann::json& j);
};

class EventLedger {
  public:
    EventLedger(Storyboard storyboard, SectionClock clock, size_t max_prompts = 512);

    struct Submitted {
        PromptEvent event;
        bool retry = false;  // the same id and payload again: answered with its current status
        std::vector<PromptEvent> superseded;  // older events this one replaced before they applied
    };
    // Records an event against the next section that has not begun. Throws protocol::ProtocolError:
    // event_conflict (same id, other payload), bad_storyboard (the storyboard is full).
    Submitted submit(const protocol::Interaction& interaction);

    struct SectionStart {
        int64_t section = 0;
        double start_seconds = 0;
        std::string prompt;                   // in force at the section's start
        std::vector<PromptEvent> applied;     // events that take effect here
        std::vector<PromptEvent> superseded;  // events that never will
        std::vector<std::string> active;      // the event whose prompt is in force (if it came from one)
    };
    // Section `sections_begun()` starts: resolves waiting "now" events, decides what applies.
    SectionStart begin_section();
    // Sections started so far (the next one to begin has this index).
    int64_t sections_begun() const { return begun_; }

    const Storyboard& storyboard() const { return storyboard_; }
    const std::map<std::string, PromptEvent>& events() const { return events_; }
    // The storyboard for display: entries with their state (past, current, pending) relative to the section
    // being generated (`current`), the event that set each one and the section where it applied.
    nlohmann::json timeline() const;
    nlohmann::json events_json() const;

    // Persistence (session snapshots).
    nlohmann::json to_json() const;
    static EventLedger from_json(const nlohmann::json& j, const SectionClock& clock, size_t max_prompts);

  private:
    void place(PromptEvent& e, double time);
    bool has_entry_at(double time) const;
    void supersede(const std::string& id, const std::string& by);

    Storyboard storyboard_;
    SectionClock clock_;
    size_t max_prompts_;
    int64_t begun_ = 0;
    std::map<std::string, PromptEvent> events_;
    std::string waiting_now_;                    // the "now" event waiting for the next section
    std::vector<PromptEvent> superseded_;        // collected during one submit / begin_section
    std::map<double, std::string> entry_event_;  // storyboard entry time -> the event that set it last
};

}  // namespace memoreel
