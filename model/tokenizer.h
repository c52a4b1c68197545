// The text tokenizer of the umT5 encoder: a SentencePiece unigram model with T5's conventions (pad 0, EOS 1,
// unk 2, no BOS), called the way Wan calls its HF tokenizer (spec section 5): prompt cleaning, EOS appended,
// padding to max_len with 0, truncation that keeps the EOS, and a mask of 1 on real tokens (EOS included).
//
// SentencePiece itself lives in the isolated shared library libmemoreel_spm.so (see CMakeLists.txt: its
// embedded protobuf must not meet LibTorch's), loaded here at run time with dlopen(RTLD_LOCAL |
// RTLD_DEEPBIND). It is looked for next to the running executable; MEMOREEL_SPM_LIBRARY overrides the path.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace memoreel {

class TokenizerError : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

// Wan's prompt cleaning ('whitespace' mode): html.unescape twice, then every run of (Unicode) whitespace
// becomes one space and the ends are stripped. ftfy.fix_text, which the reference runs first, is not
// available in C++; it only repairs mojibake and odd Unicode, so well-formed UTF-8 prompts are unaffected.
// HTML unescaping covers numeric references and the common named entities, not the full HTML5 table.
std::string clean_prompt_text(const std::string& text);

// Where the SentencePiece shim library is loaded from (MEMOREEL_SPM_LIBRARY, or next to the executable).
std::string spm_library_path();

struct TokenizedText {
    torch::Tensor ids;   // int64 [B, max_len]: pieces, EOS, then pad 0
    torch::Tensor mask;  // int64 [B, max_len]: 1 on pieces and EOS, 0 on padding
};

class Tokenizer {
  public:
    static constexpr int64_t kPadId = 0;
    static constexpr int64_t kEosId = 1;
    static constexpr int64_t kUnkId = 2;

    // Loads a SentencePiece .model file; throws TokenizerError naming the file when it cannot.
    // The name "byte" instead selects byte-level tokenization (ByT5's scheme: id = UTF-8 byte + 3, same
    // pad/EOS/unk ids, vocabulary 259), which needs no trained model: untrained configurations use it.
    explicit Tokenizer(const std::string& model_path);
    static constexpr const char* kByteModel = "byte";
    static constexpr int64_t kByteVocab = 259;
    bool is_byte_level() const { return bytes_; }
    ~Tokenizer();
    Tokenizer(const Tokenizer&) = delete;
    Tokenizer& operator=(const Tokenizer&) = delete;
    Tokenizer(Tokenizer&& other) noexcept;
    Tokenizer& operator=(Tokenizer&& other) noexcept;

    // Cleans the text, tokenizes, keeps at most max_len - 1 pieces, appends EOS and pads to max_len.
    TokenizedText encode(const std::string& text, int64_t max_len) const;
    TokenizedText encode(const std::vector<std::string>& texts, int64_t max_len) const;
    // The raw SentencePiece ids of text: no cleaning, no EOS, no padding.
    std::vector<int64_t> encode_pieces(const std::string& text) const;
    // Text of ids; pad and EOS (control symbols) produce nothing. Throws on ids outside the vocabulary.
    std::string decode(const std::vector<int64_t>& ids) const;
    // A 1-D id tensor, or one row of encode()'s ids; only positions with a nonzero mask when one is given.
    std::string decode(const torch::Tensor& ids, const torch::Tensor& mask = {}) const;

    int64_t vocab_size() const;
    // The id of a piece, or kUnkId when the piece is unknown.
    int64_t piece_to_id(const std::string& piece) const;
    const std::string& model_path() const { return path_; }

  private:
    std::string path_;
    void* handle_ = nullptr;
    bool bytes_ = false;
};

struct TokenizerTrainOptions {
    std::string model_type = "unigram";
    // 1.0 keeps every character of the corpus (small corpora; T5 used 0.9995 on its large one).
    double character_coverage = 1.0;
    // When false, vocab_size is an upper bound: a small corpus may not support the requested size.
    bool hard_vocab_limit = false;
    // One thread and no sentence sampling make unigram training deterministic (SentencePiece 0.1.97's trainer
    // spec has no seed field).
    int64_t num_threads = 1;
    int64_t input_sentence_size = 0;  // 0 = all sentences
    int64_t max_sentence_length = 4192;
    // Extra SentencePieceTrainer flags, "--name=value" separated by spaces, appended last.
    std::string extra_args;
};

// Trains a T5-compatible SentencePiece model from a text file (one sentence per line): writes
// model_prefix + ".model" and ".vocab". Ids 0/1/2 are <pad>, </s>, <unk>; no BOS. Lines are cleaned with
// clean_prompt_text() first (into a temporary file beside the prefix) so training sees what encode() sees.
// Paths must not contain whitespace (SentencePieceTrainer's argument string splits on it).
void train_tokenizer(const std::string& corpus_file,
                     const std::string& model_prefix,
                     int64_t vocab_size,
                     const TokenizerTrainOptions& options = {});

}  // namespace memoreel
