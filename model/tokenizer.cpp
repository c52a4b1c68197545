#include "model/tokenizer.h"

#include <dlfcn.h>

#include <cctype>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>

#include "model/spm_shim/spm_shim.h"

namespace fs = std::filesystem;

namespace memoreel {

namespace {

constexpr size_t kErrorLen = 1024;

// ------------------------------------------------------------------------------------------ the shim library

struct SpmApi {
    void* library = nullptr;
    mspm_load_fn load = nullptr;
    mspm_encode_fn encode = nullptr;
    mspm_decode_fn decode = nullptr;
    mspm_vocab_size_fn vocab_size = nullptr;
    mspm_piece_to_id_fn piece_to_id = nullptr;
    mspm_free_fn free = nullptr;
    mspm_train_fn train = nullptr;
};

std::string executable_dir() {
    std::error_code ec;
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    return ec ? std::string() : exe.parent_path().string();
}

template <typename Fn>
Fn symbol(void* library, const char* name, const std::string& path) {
    dlerror();
    void* p = dlsym(library, name);
    if (!p) {
        const char* err = dlerror();
        throw TokenizerError("SentencePiece shim " + path + " lacks symbol " + name +
                             (err ? std::string(": ") + err : ""));
    }
    return reinterpret_cast<Fn>(p);
}

SpmApi load_api() {
    const std::string path = spm_library_path();
    // RTLD_LOCAL keeps the shim's symbols (and the protobuf-lite inside libsentencepiece) out of the global
    // namespace; RTLD_DEEPBIND makes the shim and its dependencies prefer their own symbols over LibTorch's
    // already-loaded libprotobuf. Without both the process crashes in protobuf's static initialisers.
    void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (!lib) {
        const char* err = dlerror();
        throw TokenizerError("cannot load the SentencePiece shim library " + path + ": " +
                             (err ? err : "unknown error") +
                             " (build the memoreel_spm target, or set MEMOREEL_SPM_LIBRARY)");
    }
    SpmApi api;
    api.library = lib;  // never closed: handles into it live as long as the process
    api.load = symbol<mspm_load_fn>(lib, "mspm_load", path);
    api.encode = symbol<mspm_encode_fn>(lib, "mspm_encode", path);
    api.decode = symbol<mspm_decode_fn>(lib, "mspm_decode", path);
    api.vocab_size = symbol<mspm_vocab_size_fn>(lib, "mspm_vocab_size", path);
    api.piece_to_id = symbol<mspm_piece_to_id_fn>(lib, "mspm_piece_to_id", path);
    api.free = symbol<mspm_free_fn>(lib, "mspm_free", path);
    api.train = symbol<mspm_train_fn>(lib, "mspm_train", path);
    return api;
}

const SpmApi& spm() {
    // Loaded once; a failed load is retried on the next call (the error may have been a wrong environment).
    static std::mutex mutex;
    static std::unique_ptr<SpmApi> api;
    std::lock_guard<std::mutex> lock(mutex);
    if (!api)
        api = std::make_unique<SpmApi>(load_api());
    return *api;
}

// --------------------------------------------------------------------------------------------- text cleaning

void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

// Decodes one UTF-8 sequence at s[i]; returns its length (1 for an invalid byte, with cp = the byte).
size_t decode_utf8(const std::string& s, size_t i, uint32_t& cp) {
    const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
    const unsigned char c = b(i);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (len == 0 || i + len > s.size()) {
        cp = c;
        return 1;
    }
    cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    for (size_t k = 1; k < len; ++k) {
        if ((b(i + k) & 0xC0) != 0x80) {
            cp = c;
            return 1;
        }
        cp = (cp << 6) | (b(i + k) & 0x3F);
    }
    return len;
}

// Python's str.isspace / re's \s for str patterns.
bool is_unicode_space(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
           cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}

// html.unescape's replacements for numeric references in 0x80..0x9F (Windows-1252) and a few others.
bool invalid_charref(uint32_t num, uint32_t& out) {
    static const std::map<uint32_t, uint32_t> table = {
        {0x00, 0xFFFD}, {0x0D, 0x0D},   {0x80, 0x20AC}, {0x81, 0x81},   {0x82, 0x201A}, {0x83, 0x0192},
        {0x84, 0x201E}, {0x85, 0x2026}, {0x86, 0x2020}, {0x87, 0x2021}, {0x88, 0x02C6}, {0x89, 0x2030},
        {0x8A, 0x0160}, {0x8B, 0x2039}, {0x8C, 0x0152}, {0x8D, 0x8D},   {0x8E, 0x017D}, {0x8F, 0x8F},
        {0x90, 0x90},   {0x91, 0x2018}, {0x92, 0x2019}, {0x93, 0x201C}, {0x94, 0x201D}, {0x95, 0x2022},
        {0x96, 0x2013}, {0x97, 0x2014}, {0x98, 0x02DC}, {0x99, 0x2122}, {0x9A, 0x0161}, {0x9B, 0x203A},
        {0x9C, 0x0153}, {0x9D, 0x9D},   {0x9E, 0x017E}, {0x9F, 0x0178}};
    auto it = table.find(num);
    if (it == table.end())
        return false;
    out = it->second;
    return true;
}

// Code points html.unescape drops from numeric references (control characters and noncharacters).
bool dropped_codepoint(uint32_t cp) {
    return (cp >= 0x1 && cp <= 0x8) || cp == 0xB || (cp >= 0xE && cp <= 0x1F) || (cp >= 0x7F && cp <= 0x9F) ||
           (cp >= 0xFDD0 && cp <= 0xFDEF) || (cp & 0xFFFE) == 0xFFFE;
}

// Named entities: the common ones in prompts. `legacy` ones are also recognised without the semicolon, as
// HTML5 (and html.unescape) does.
struct Entity {
    const char* name;
    uint32_t cp;
    bool legacy;
};
const Entity kEntities[] = {
    {"amp", '&', true},       {"lt", '<', true},         {"gt", '>', true},        {"quot", '"', true},
    {"apos", '\'', false},    {"nbsp", 0xA0, true},      {"copy", 0xA9, true},     {"reg", 0xAE, true},
    {"deg", 0xB0, true},      {"middot", 0xB7, true},    {"laquo", 0xAB, true},    {"raquo", 0xBB, true},
    {"times", 0xD7, true},    {"divide", 0xF7, true},    {"eacute", 0xE9, true},   {"egrave", 0xE8, true},
    {"agrave", 0xE0, true},   {"ccedil", 0xE7, true},    {"uuml", 0xFC, true},     {"ouml", 0xF6, true},
    {"auml", 0xE4, true},     {"szlig", 0xDF, true},     {"ntilde", 0xF1, true},   {"hellip", 0x2026, false},
    {"mdash", 0x2014, false}, {"ndash", 0x2013, false},  {"lsquo", 0x2018, false}, {"rsquo", 0x2019, false},
    {"ldquo", 0x201C, false}, {"rdquo", 0x201D, false},  {"bull", 0x2022, false},  {"trade", 0x2122, false},
    {"euro", 0x20AC, false},  {"thinsp", 0x2009, false}, {"ensp", 0x2002, false},  {"emsp", 0x2003, false},
};

std::string html_unescape(const std::string& s) {
    std::string out;
    out.reserve(s.size());
    size_t i = 0;
    while (i < s.size()) {
        if (s[i] != '&') {
            out += s[i++];
            continue;
        }
        size_t j = i + 1;
        if (j < s.size() && s[j] == '#') {
            ++j;
            const bool hex = j < s.size() && (s[j] == 'x' || s[j] == 'X');
            if (hex)
                ++j;
            const size_t start = j;
            uint64_t num = 0;
            while (j < s.size() && (hex ? std::isxdigit(static_cast<unsigned char>(s[j]))
                                        : std::isdigit(static_cast<unsigned char>(s[j])))) {
                const char d = static_cast<char>(std::tolower(static_cast<unsigned char>(s[j])));
                const uint64_t digit =
                    d <= '9' ? static_cast<uint64_t>(d - '0') : static_cast<uint64_t>(d - 'a' + 10);
                if (num <= 0x10FFFF)
                    num = num * (hex ? 16 : 10) + digit;  // saturates past the Unicode range
                ++j;
            }
            if (j == start) {  // "&#" without digits stays as it is
                out += s[i++];
                continue;
            }
            if (j < s.size() && s[j] == ';')
                ++j;
            uint32_t cp = 0;
            if (invalid_charref(static_cast<uint32_t>(std::min<uint64_t>(num, 0xFFFFFFFF)), cp)) {
                append_utf8(out, cp);
            } else if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) {
                append_utf8(out, 0xFFFD);
            } else if (!dropped_codepoint(static_cast<uint32_t>(num))) {
                append_utf8(out, static_cast<uint32_t>(num));
            }
            i = j;
            continue;
        }
        bool matched = false;
        for (const auto& e : kEntities) {
            const size_t n = std::strlen(e.name);
            if (s.compare(j, n, e.name) != 0)
                continue;
            const bool semi = j + n < s.size() && s[j + n] == ';';
            if (!semi && !e.legacy)
                continue;
            append_utf8(out, e.cp);
            i = j + n + (semi ? 1 : 0);
            matched = true;
            break;
        }
        if (!matched)
            out += s[i++];
    }
    return out;
}

std::string collapse_whitespace(const std::string& s) {
    std::string out;
    out.reserve(s.size());
    bool pending_space = false;
    for (size_t i = 0; i < s.size();) {
        uint32_t cp = 0;
        const size_t len = decode_utf8(s, i, cp);
        if (is_unicode_space(cp) && !(len == 1 && cp >= 0x80)) {  // a lone invalid byte is not whitespace
            pending_space = true;
        } else {
            if (pending_space && !out.empty())
                out += ' ';
            pending_space = false;
            out.append(s, i, len);
        }
        i += len;
    }
    return out;
}

bool has_whitespace(const std::string& s) {
    return std::any_of(s.begin(), s.end(),
                       [](char c) { return std::isspace(static_cast<unsigned char>(c)); });
}

}  // namespace

std::string clean_prompt_text(const std::string& text) {
    // basic_clean: (ftfy.fix_text,) html.unescape(html.unescape(.)), strip; whitespace_clean: \s+ -> ' ',
    // strip.
    return collapse_whitespace(html_unescape(html_unescape(text)));
}

std::string spm_library_path() {
    if (const char* env = std::getenv("MEMOREEL_SPM_LIBRARY"); env && *env)
        return env;
    const std::string dir = executable_dir();
    return (dir.empty() ? fs::path("libmemoreel_spm.so") : fs::path(dir) / "libmemoreel_spm.so").string();
}

// ------------------------------------------------------------------------------------------------- Tokenizer

Tokenizer::Tokenizer(const std::string& model_path) : path_(model_path) {
    if (model_path == kByteModel) {
        bytes_ = true;
        return;
    }
    std::error_code ec;
    if (!fs::is_regular_file(model_path, ec))
        throw TokenizerError("tokenizer model " + model_path + " does not exist or is not a file");
    const SpmApi& api = spm();
    char err[kErrorLen] = {0};
    handle_ = api.load(model_path.c_str(), err, sizeof(err));
    if (!handle_)
        throw TokenizerError("cannot load tokenizer model " + model_path + ": " +
                             (err[0] ? std::string(err) : "not a SentencePiece model"));
    // T5's conventions are assumed throughout (pad 0, EOS 1); a model without them would silently produce
    // ids the encoder was not trained on.
    const int64_t eos = api.piece_to_id(handle_, "</s>");
    const int64_t n = api.vocab_size(handle_);
    if (n <= kEosId || eos != kEosId) {
        api.free(handle_);
        handle_ = nullptr;
        throw TokenizerError("tokenizer model " + model_path +
                             " does not follow T5's conventions (</s> has id " + std::to_string(eos) +
                             ", expected 1; vocabulary size " + std::to_string(n) + ")");
    }
}

Tokenizer::~Tokenizer() {
    if (handle_)
        spm().free(handle_);
}

Tokenizer::Tokenizer(Tokenizer&& other) noexcept
    : path_(std::move(other.path_)), handle_(other.handle_), bytes_(other.bytes_) {
    other.handle_ = nullptr;
    other.bytes_ = false;
}

Tokenizer& Tokenizer::operator=(Tokenizer&& other) noexcept {
    if (this != &other) {
        if (handle_)
            spm().free(handle_);
        path_ = std::move(other.path_);
        handle_ = other.handle_;
        bytes_ = other.bytes_;
        other.handle_ = nullptr;
        other.bytes_ = false;
    }
    return *this;
}

std::vector<int64_t> Tokenizer::encode_pieces(const std::string& text) const {
    if (bytes_) {
        std::vector<int64_t> ids;
        ids.reserve(text.size());
        for (unsigned char c : text)
            ids.push_back(static_cast<int64_t>(c) + 3);
        return ids;
    }
    TORCH_CHECK(handle_, "tokenizer: used after being moved from");
    const SpmApi& api = spm();
    std::vector<int32_t> ids(text.size() + 16);
    char err[kErrorLen] = {0};
    int64_t n =
        api.encode(handle_, text.c_str(), ids.data(), static_cast<int64_t>(ids.size()), err, sizeof(err));
    if (n > static_cast<int64_t>(ids.size())) {
        ids.resize(static_cast<size_t>(n));
        n = api.encode(handle_, text.c_str(), ids.data(), static_cast<int64_t>(ids.size()), err, sizeof(err));
    }
    if (n < 0)
        throw TokenizerError("tokenizer " + path_ + ": encoding failed: " + err);
    return std::vector<int64_t>(ids.begin(), ids.begin() + n);
}

TokenizedText Tokenizer::encode(const std::vector<std::string>& texts, int64_t max_len) const {
    if (max_len < 1)
        throw TokenizerError("tokenizer: max_len must be >= 1 (room for EOS), got " +
                             std::to_string(max_len));
    const int64_t b = static_cast<int64_t>(texts.size());
    TokenizedText out{torch::zeros({b, max_len}, torch::kInt64), torch::zeros({b, max_len}, torch::kInt64)};
    auto ids = out.ids.accessor<int64_t, 2>();
    auto mask = out.mask.accessor<int64_t, 2>();
    for (int64_t r = 0; r < b; ++r) {
        std::vector<int64_t> pieces = encode_pieces(clean_prompt_text(texts[r]));
        // truncation=True with add_special_tokens: the pieces are cut so that EOS still fits.
        if (static_cast<int64_t>(pieces.size()) > max_len - 1)
            pieces.resize(static_cast<size_t>(max_len - 1));
        const int64_t n = static_cast<int64_t>(pieces.size());
        for (int64_t k = 0; k < n; ++k)
            ids[r][k] = pieces[k];
        ids[r][n] = kEosId;
        for (int64_t k = 0; k <= n; ++k)
            mask[r][k] = 1;
    }
    return out;
}

TokenizedText Tokenizer::encode(const std::string& text, int64_t max_len) const {
    return encode(std::vector<std::string>{text}, max_len);
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids) const {
    if (bytes_) {
        std::string text;
        for (int64_t id : ids) {
            if (id < 0 || id >= kByteVocab)
                throw TokenizerError("byte tokenizer: id " + std::to_string(id) +
                                     " is outside the vocabulary (" + std::to_string(kByteVocab) + ")");
            if (id == kUnkId)
                text += '?';
            if (id >= 3)
                text += static_cast<char>(id - 3);
        }
        return text;
    }
    TORCH_CHECK(handle_, "tokenizer: used after being moved from");
    const SpmApi& api = spm();
    const int64_t vocab = vocab_size();
    std::vector<int32_t> in;
    in.reserve(ids.size());
    for (int64_t id : ids) {
        if (id < 0 || id >= vocab)
            throw TokenizerError("tokenizer " + path_ + ": id " + std::to_string(id) +
                                 " is outside the vocabulary (" + std::to_string(vocab) + ")");
        in.push_back(static_cast<int32_t>(id));
    }
    char err[kErrorLen] = {0};
    std::string text(in.size() * 8 + 16, '\0');
    int64_t n = api.decode(handle_, in.data(), static_cast<int64_t>(in.size()), text.data(),
                           static_cast<int64_t>(text.size()), err, sizeof(err));
    if (n >= static_cast<int64_t>(text.size())) {
        text.assign(static_cast<size_t>(n) + 1, '\0');
        n = api.decode(handle_, in.data(), static_cast<int64_t>(in.size()), text.data(),
                       static_cast<int64_t>(text.size()), err, sizeof(err));
    }
    if (n < 0)
        throw TokenizerError("tokenizer " + path_ + ": decoding failed: " + err);
    text.resize(static_cast<size_t>(n));
    return text;
}

std::string Tokenizer::decode(const torch::Tensor& ids, const torch::Tensor& mask) const {
    TORCH_CHECK(ids.dim() == 1, "tokenizer: decode expects 1-D ids, got ", ids.sizes());
    const torch::Tensor i64 = ids.to(torch::kCPU, torch::kInt64).contiguous();
    torch::Tensor keep;
    if (mask.defined()) {
        TORCH_CHECK(mask.sizes() == ids.sizes(), "tokenizer: decode mask shape differs from ids");
        keep = mask.to(torch::kCPU).ne(0);
    }
    std::vector<int64_t> v;
    for (int64_t k = 0; k < i64.size(0); ++k)
        if (!keep.defined() || keep[k].item<bool>())
            v.push_back(i64[k].item<int64_t>());
    return decode(v);
}

int64_t Tokenizer::vocab_size() const {
    if (bytes_)
        return kByteVocab;
    TORCH_CHECK(handle_, "tokenizer: used after being moved from");
    return spm().vocab_size(handle_);
}

int64_t Tokenizer::piece_to_id(const std::string& piece) const {
    if (bytes_) {
        if (piece == "<pad>")
            return kPadId;
        if (piece == "</s>")
            return kEosId;
        return piece.size() == 1 ? static_cast<unsigned char>(piece[0]) + 3 : kUnkId;
    }
    TORCH_CHECK(handle_, "tokenizer: used after being moved from");
    return spm().piece_to_id(handle_, piece.c_str());
}

// -------------------------------------------------------------------------------------------------- training

void train_tokenizer(const std::string& corpus_file,
                     const std::string& model_prefix,
                     int64_t vocab_size,
                     const TokenizerTrainOptions& options) {
    if (has_whitespace(corpus_file) || has_whitespace(model_prefix))
        throw TokenizerError("train_tokenizer: paths must not contain whitespace (corpus '" + corpus_file +
                             "', prefix '" + model_prefix + "')");
    if (vocab_size < 8)
        throw TokenizerError("train_tokenizer: vocab_size must be >= 8");
    std::ifstream in(corpus_file);
    if (!in)
        throw TokenizerError("train_tokenizer: cannot read corpus " + corpus_file);
    // The trainer sees the same cleaned text that encode() will feed the model.
    const std::string cleaned = model_prefix + ".corpus.txt";
    {
        std::ofstream out(cleaned, std::ios::trunc);
        if (!out)
            throw TokenizerError("train_tokenizer: cannot write " + cleaned);
        std::string line;
        int64_t lines = 0;
        while (std::getline(in, line)) {
            line = clean_prompt_text(line);
            if (line.empty())
                continue;
            out << line << '\n';
            ++lines;
        }
        if (lines == 0)
            throw TokenizerError("train_tokenizer: corpus " + corpus_file + " has no text");
        if (!out)
            throw TokenizerError("train_tokenizer: writing " + cleaned + " failed");
    }
    auto num = [](auto v) {
        std::ostringstream o;
        o << v;
        return o.str();
    };
    std::vector<std::pair<std::string, std::string>> flags = {
        {"input", cleaned},
        {"model_prefix", model_prefix},
        {"vocab_size", num(vocab_size)},
        {"model_type", options.model_type},
        {"character_coverage", num(options.character_coverage)},
        {"hard_vocab_limit", options.hard_vocab_limit ? "true" : "false"},
        {"num_threads", num(options.num_threads)},
        {"input_sentence_size", num(options.input_sentence_size)},
        {"max_sentence_length", num(options.max_sentence_length)},
        // T5's special ids and pieces.
        {"pad_id", "0"},
        {"eos_id", "1"},
        {"unk_id", "2"},
        {"bos_id", "-1"},
        {"pad_piece", "<pad>"},
        {"eos_piece", "</s>"},
        {"unk_piece", "<unk>"},
        {"minloglevel", "1"},
    };
    // extra_args override the flags above (SentencePieceTrainer's argument string keeps the first occurrence
    // of a repeated flag, so a plain append would not).
    std::istringstream extra(options.extra_args);
    for (std::string word; extra >> word;) {
        if (word.rfind("--", 0) != 0 || word.find('=') == std::string::npos)
            throw TokenizerError("train_tokenizer: extra argument '" + word +
                                 "' is not of the form --name=value");
        const std::string key = word.substr(2, word.find('=') - 2), value = word.substr(word.find('=') + 1);
        auto it = std::find_if(flags.begin(), flags.end(), [&](const auto& f) { return f.first == key; });
        if (it != flags.end())
            it->second = value;
        else
            flags.emplace_back(key, value);
    }
    std::string args;
    for (const auto& [key, value] : flags)
        args += (args.empty() ? "--" : " --") + key + "=" + value;
    char err[kErrorLen] = {0};
    const int rc = spm().train(args.c_str(), err, sizeof(err));
    std::error_code ec;
    fs::remove(cleaned, ec);
    if (rc != 0)
        throw TokenizerError("training tokenizer " + model_prefix + ".model from " + corpus_file +
                             " failed: " + err);
}

}  // namespace memoreel
