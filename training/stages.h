// The training stages of `memoreel train` (DESIGN.md section 2 and 5): tokenizer, vae, text, base, memory, ar.
// Each reads its own "data" and "options" sections of the train config (fields documented in
// configs/train/README.md) and exports what it trained into the run's assembled model folder.
#pragma once

#include <memory>

#include "training/stage_common.h"
#include "training/trainer.h"

namespace memoreel {

// The iterative stages (vae, text, base, memory, ar).
std::unique_ptr<TrainStage> make_stage(const StageEnvironment& env);

// The tokenizer stage is not iterative: it writes a caption corpus from the world's storyboards (and any
// extra text files), trains SentencePiece on it and exports tokenizer.model. Returns a one-line summary.
std::string train_tokenizer_stage(const StageEnvironment& env);

std::unique_ptr<TrainStage> make_vae_stage(const StageEnvironment& env);
std::unique_ptr<TrainStage> make_text_stage(const StageEnvironment& env);
std::unique_ptr<TrainStage> make_base_stage(const StageEnvironment& env);
std::unique_ptr<TrainStage> make_memory_stage(const StageEnvironment& env);

}  // namespace memoreel
