// The tokenizer stage: SentencePiece (T5's ids) trained on the captions the model will read: every
// storyboard entry of the world's training stories, plus any extra text files named in the data section.
// Deterministic (one thread, all sentences).
//
// BPE by default, not T5's unigram: the captions are a closed vocabulary of a few dozen words, and
// SentencePiece's unigram trainer stops at 87 pieces on them whatever vocab_size asks ("purple" becomes six
// pieces, "the" two), so a small text encoder must learn to spell before the DiT can read a colour. BPE
// merges every caption word into one piece.
#include <spdlog/spdlog.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <sstream>

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
    TokenizerTrainOptions train_options;
    train_options.model_type = "bpe";
    f.get("model_type", train_options.model_type);
    f.reject_unknown();
    if (train_options.model_type != "bpe" && train_options.model_type != "unigram")
        f.fail("model_type", "must be 'bpe' or 'unigram'");
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
    train_tokenizer(corpus, prefix, vocab, train_options);
    const Tokenizer tok(prefix + ".model");
    update_run_model_config(env.model_dir(), c, [&](ModelConfig& m) {
        m.tokenizer = "tokenizer.model";
        // A text encoder trained on the previous tokenizer's ids reads the new ones as other words: it goes,
        // and the base stage trains a fresh one (a DiT trained with it stays: it is a warm start for the next
        // base).
        if (!m.text_encoder_weights.empty()) {
            spdlog::warn(
                "the tokenizer changed: {} no longer uses {} (trained on the previous tokenizer's ids); "
                "the next base stage trains a new text encoder",
                (fs::path(env.model_dir()) / "model.json").string(), m.text_encoder_weights);
            m.text_encoder_weights.clear();
        }
    });
    // How well it fits the captions: pieces per caption, and the share of words that are one piece, on a
    // held-out story.
    world::StoryOptions o;
    o.seconds = world.seconds;
    const world::Story held = world::Story::generate(900001, o);
    size_t pieces = 0, words = 0, whole = 0;
    for (const auto& s : held.shots) {
        const std::string text = clean_prompt_text(s.caption);
        pieces += tok.encode_pieces(text).size();
        std::istringstream in(text);
        for (std::string word; in >> word;) {
            while (!word.empty() && std::ispunct(static_cast<unsigned char>(word.back())))
                word.pop_back();
            if (word.empty())
                continue;
            ++words;
            whole += tok.encode_pieces(word).size() == 1;
        }
    }
    const auto fixed = [](double v) { return std::to_string(v).substr(0, 4); };
    return "tokenizer (" + train_options.model_type + "): " + std::to_string(tok.vocab_size()) +
           " pieces from " + std::to_string(lines) + " captions; a held-out caption is " +
           fixed(static_cast<double>(pieces) / std::max<size_t>(1, held.shots.size())) +
           " pieces on average, " + std::to_string(whole) + " of its " + std::to_string(words) +
           " words are one piece (" + prefix + ".model)";
}

}  // namespace memoreel
