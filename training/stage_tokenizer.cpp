// The tokenizer stage: SentencePiece (unigram, T5 conventions) trained on the captions the model will read:
// every storyboard entry of the world's training stories, plus any extra text files named in the data
// section. Deterministic (one thread, all sentences).
#include <spdlog/spdlog.h>

#include <filesystem>
#include <fstream>

#include "model/json_fields.h"
#include "model/json_util.h"
#include "model/tokenizer.h"
#include "training/stages.h"
#include "training/world.h"

namespace fs = std::filesystem;

namespace memoreel {

std::string train_tokenizer_stage(const StageEnvironment& env) {
    const std::string where = env.config.source_path;
    JsonFields d(env.config.data, where, "data");
    std::vector<std::string> extra;
    d.get("text_files", extra);
    d.accept({"world"});
    d.reject_unknown();
    const WorldDataOptions world = world_data_options(env.config.data, where);
    int64_t vocab = 0;
    JsonFields f(env.config.options, where, "options");
    f.get("vocab_size", vocab);
    f.reject_unknown();
    ModelConfig c = env.model_config();
    if (vocab == 0)
        vocab = c.text_encoder.vocab;
    if (vocab < 8 || vocab > c.text_encoder.vocab)
        f.fail("vocab_size",
               "must be in [8, text_encoder.vocab = " + std::to_string(c.text_encoder.vocab) + "]");

    fs::create_directories(env.stage_dir());
    const std::string corpus = (fs::path(env.stage_dir()) / "captions.txt").string();
    int64_t lines = 0;
    write_file_atomic(corpus, [&](std::ostream& out) {
        for (int64_t i = 0; i < world.stories; ++i) {
            world::StoryOptions o;
            o.seconds = world.seconds;
            const world::Story story = world::Story::generate(world.seed + static_cast<uint64_t>(i), o);
            for (const auto& shot : story.shots) {
                out << shot.caption << '\n';
                ++lines;
            }
        }
        for (const auto& file : extra) {
            std::ifstream in(file);
            if (!in)
                throw CheckpointError(file, "", "cannot be read (named in data.text_files of " + where + ")");
            std::string line;
            while (std::getline(in, line))
                if (!line.empty()) {
                    out << line << '\n';
                    ++lines;
                }
        }
    });
    if (lines == 0)
        throw std::invalid_argument(where + ": no captions to train on (data.world.stories is 0)");
    fs::create_directories(env.model_dir());
    const std::string prefix = (fs::path(env.model_dir()) / "tokenizer").string();
    train_tokenizer(corpus, prefix, vocab);
    const Tokenizer tok(prefix + ".model");
    c.tokenizer = "tokenizer.model";
    save_run_model_config(env.model_dir(), c);
    // How well it fits the captions: pieces per caption on a held-out story.
    world::StoryOptions o;
    o.seconds = world.seconds;
    const world::Story held = world::Story::generate(900001, o);
    size_t pieces = 0;
    for (const auto& s : held.shots)
        pieces += tok.encode_pieces(clean_prompt_text(s.caption)).size();
    return "tokenizer: " + std::to_string(tok.vocab_size()) + " pieces from " + std::to_string(lines) +
           " captions; a held-out caption is " +
           std::to_string(static_cast<double>(pieces) / std::max<size_t>(1, held.shots.size())).substr(0, 4) +
           " pieces on average (" + prefix + ".model)";
}

}  // namespace memoreel
