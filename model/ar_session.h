// Autoregressive generation with compressed memory (DESIGN.md section 3): a session owns the storyboard, the
// memory tokens, the memory encoder's and the VAE decoder's causal states, a short window of recent latents
// and its RNG, and produces the video section after section.
//
// Each section: the prompt in force at the section's start time; sample the section's latents with the memory
// (and the sliding window) as clean context in the cached mode (context_kv.h); decode with the cached causal
// VAE decoder; append the section's latents and frames to the memory encoders, whose newly completed groups
// are run once through the DiT (their per-block keys and values, cross-attending to the section's prompt)
// and kept. A prompt set while a section is being generated takes effect at the next section boundary.
//
// What grows with the history: the memory tokens, their per-block keys/values in the DiT, and the encoder's
// attention cache (one key/value per memory token). Everything else is bounded: the VAE decoder state and the
// encoder's convolution caches are fixed-size, the window holds w latent frames, and no latent or pixel
// history is kept. A section's cost grows only by its queries' attention over the cached keys.
//
// Time positions far beyond the trained horizon: memory keys are stored before RoPE with absolute times;
// each use rotates them relative to the section (or the group being encoded). When the history is longer
// than `horizon` latent frames, the context's times are rescaled linearly so that the oldest token sits at
// -horizon (order and relative spacing kept), so the DiT never sees time offsets larger than it was trained
// on.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <map>
#include <mutex>
#include <string>

#include "model/context_kv.h"
#include "model/memory_encoder.h"
#include "model/storyboard.h"
#include "model/video_model.h"

namespace memoreel {

struct SessionSettings {
    bool use_memory = true;      // false: no compressed memory (baselines: window only, or no history)
    int64_t window = 0;          // latent frames of recent history given uncompressed
    int64_t section_frames = 4;  // latent frames per section (any; memory groups may straddle sections)
    double horizon = 0;          // latent frames; 0 = unlimited
    int64_t width = 0;           // pixels (0: the model config's)
    int64_t height = 0;
    double fps = 0;
    uint64_t seed = 0;
    SamplingOverrides sampling;
    std::string negative_prompt;
};

// Everything a session needs to continue exactly where it stopped (DESIGN.md section 4: sessions survive a
// server restart): named tensors (the RNG state, the memory tokens and their per-block keys/values, the
// memory encoders' and the VAE decoder's causal caches, the window) and a JSON document (counters,
// storyboard, the last prompt, and the settings it was made with, which restore() checks). Written to disk by
// session_snapshot.h.
struct ARSessionSnapshot {
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    nlohmann::json meta;
};

struct SectionResult {
    int64_t index = 0;         // section number from 0
    int64_t first_latent = 0;  // latent frame index of the section's first frame
    double start_seconds = 0;
    std::string prompt;
    torch::Tensor latents;       // [C, S, h, w]
    torch::Tensor frames;        // [3, n, H, W] in [-1, 1]: 1 + 4(S-1) frames for the first section, 4S after
    int64_t context_tokens = 0;  // memory + window tokens the DiT attended to
    int64_t memory_tokens = 0;   // after the append
    double sample_ms = 0, decode_ms = 0, memory_ms = 0;
};

class ARSession {
  public:
    // encoders: the memory encoders (sharing the model's DiT); several run side by side and their tokens are
    // concatenated (e.g. 4x4x2 + 2x2x8). Empty (or a null encoder) when settings.use_memory is false.
    ARSession(VideoModel& model,
              std::vector<MemoryEncoder> encoders,
              Storyboard storyboard,
              SessionSettings settings);
    ARSession(VideoModel& model, MemoryEncoder encoder, Storyboard storyboard, SessionSettings settings);

    // Adds or replaces a prompt (thread-safe); it takes effect at the first section starting at or after its
    // time that has not begun yet.
    void set_prompt(const StoryboardEntry& entry);
    Storyboard storyboard() const;

    SectionResult next_section(const std::function<void(int64_t, int64_t)>& on_step = {});

    int64_t sections_done() const { return sections_; }
    int64_t latent_frames_done() const { return latents_done_; }
    double seconds_generated() const;
    int64_t memory_tokens() const;
    // Bytes held by the session's state that could grow: memory tokens, encoder state, decoder state, window.
    std::map<std::string, int64_t> state_bytes() const;
    const SessionSettings& settings() const { return settings_; }
    // All memory tokens [1, L, dim]: each encoder's tokens oldest first, encoders in order (undefined before
    // the first completed group).
    torch::Tensor memory() const;
    // The clean context a section starting at latent frame first_latent sees: the memory's cached keys/values
    // at their (possibly horizon-rescaled) relative times, then the window, encoded for this section.
    ContextAttention context_for(int64_t first_latent);
    // The memory's per-block keys/values (absolute positions).
    const ContextKV& memory_kv() const { return memory_kv_; }

    // The state between sections (call it from the thread that runs next_section, between sections). The
    // tensors are shared with the session, not copied: states replace cached tensors instead of writing
    // into them, so a snapshot stays valid while the session goes on.
    ARSessionSnapshot snapshot() const;
    // Continues from a snapshot of a session made with the same model, memory encoders and settings (a
    // freshly constructed session). Throws std::invalid_argument naming what does not match, or what is
    // missing or malformed.
    void restore(const ARSessionSnapshot& snapshot);

    // Retrieval through the model (paper eq. 3 at inference): the latent frame `latent_frame` of the history
    // recalled with only the compressed memory as context, decoded to pixels [3, H, W] in [-1, 1]. Throws
    // std::out_of_range when that frame is not in the memory yet (or the session has no memory).
    torch::Tensor recall_frame(int64_t latent_frame, uint64_t seed = 0);
    // Latent frames whose memory groups are complete (recall_frame accepts 0 .. this - 1).
    int64_t latent_frames_in_memory() const;

  private:
    torch::Tensor text_embedding(const std::string& prompt);

    VideoModel& model_;
    // One compressed memory per encoder.
    struct Memory {
        MemoryEncoder encoder;
        MemoryEncoderState state;
        torch::Tensor tokens;                  // [1, L, dim] oldest first
        torch::Tensor features;                // [1, L, feature_dim] (cross-attention enhancement only)
        std::array<int64_t, 3> grid{0, 0, 0};  // (groups, h, w)
    };
    // Appends the new memory tokens of every encoder to the cached context.
    void append_memory(const std::vector<MemoryTokens>& fresh, const torch::Tensor& text);
    std::vector<Memory> memories_;
    SessionSettings settings_;
    mutable std::mutex storyboard_mutex_;
    Storyboard storyboard_;
    torch::Generator gen_;
    int64_t sections_ = 0;
    int64_t latents_done_ = 0;
    int64_t pixels_done_ = 0;
    VaeDecoderState decoder_;
    ContextKV memory_kv_;                              // every memory token's keys/values in the DiT
    torch::Tensor window_;                             // [1, C, <= w, h, w]
    std::string last_prompt_;                          // the previous section's (per-section context's text)
    std::map<std::string, torch::Tensor> text_cache_;  // prompt -> DiT text embedding (a few entries)
};

}  // namespace memoreel
