// SentencePiece tokenizer through the isolated shim: training a small T5-style vocabulary, Wan's call
// conventions (cleaning, EOS, padding, truncation, mask), round trips, and clear errors for bad model files.
#include "model/tokenizer.h"
#include "tests/test_support.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

using namespace memoreel;
using memoreel::test::TempDir;

namespace {

// A few hundred varied caption-like sentences from word lists, deterministic.
std::vector<std::string> make_corpus(int n, uint32_t seed) {
    const std::vector<std::string> who = {"a red fox",        "the old sailor", "two children",
                                          "a grey cat",       "the tall woman", "a small robot",
                                          "an orange bird",   "the blue car",   "a young wizard",
                                          "the quiet farmer", "three dancers",  "a golden dog"};
    const std::vector<std::string> does = {"walks along", "jumps over",    "looks at",    "runs toward",
                                           "sits beside", "dances around", "flies above", "waits near",
                                           "paints",      "climbs",        "follows",     "carries"};
    const std::vector<std::string> what = {"the river",        "a wooden bridge", "the snowy mountain",
                                           "a busy market",    "the lighthouse",  "an empty street",
                                           "the green forest", "a sandy beach",   "the castle",
                                           "a glass tower",    "the night sky",   "a small boat"};
    const std::vector<std::string> how = {"in the morning", "at sunset", "under heavy rain",
                                          "while it snows", "slowly",    "with great care",
                                          "in slow motion", "at night",  "as the camera pans left",
                                          "in a wide shot", "close up",  "from above"};
    std::mt19937 rng(seed);
    auto pick = [&](const std::vector<std::string>& v) { return v[rng() % v.size()]; };
    std::vector<std::string> out;
    for (int i = 0; i < n; ++i) {
        std::string s = pick(who) + " " + pick(does) + " " + pick(what) + " " + pick(how);
        if (rng() % 3 == 0)
            s += ", and " + pick(who) + " " + pick(does) + " " + pick(what);
        if (rng() % 4 == 0)
            s += " " + std::to_string(rng() % 2000);
        s += rng() % 2 ? "." : "!";
        s[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(s[0])));
        out.push_back(s);
    }
    return out;
}

// One trained model shared by the tests (training takes a moment).
struct TrainedTokenizer {
    TempDir dir;
    std::vector<std::string> corpus = make_corpus(400, 11);
    std::string model;
    TrainedTokenizer() {
        std::ofstream out(dir.file("corpus.txt"));
        for (const auto& s : corpus)
            out << s << '\n';
        out.close();
        train_tokenizer(dir.file("corpus.txt"), dir.file("spm"), 300);
        model = dir.file("spm.model");
    }
};

const TrainedTokenizer& trained() {
    static TrainedTokenizer t;
    return t;
}

std::vector<int64_t> row(const torch::Tensor& t, int64_t r = 0) {
    const auto c = t[r].contiguous();
    return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

}  // namespace

TEST_SUITE("tokenizer") {
    TEST_CASE("text cleaning follows Wan's whitespace mode") {
        CHECK(clean_prompt_text("  a  red\tfox \n\n jumps  ") == "a red fox jumps");
        CHECK(clean_prompt_text("fish &amp; chips") == "fish & chips");
        CHECK(clean_prompt_text("&amp;lt;b&amp;gt;") == "<b>");  // unescaped twice
        CHECK(clean_prompt_text("it&#39;s &quot;here&quot;") == "it's \"here\"");
        CHECK(clean_prompt_text("caf&#xE9; &eacute;t&eacute;") == "caf\xC3\xA9 \xC3\xA9t\xC3\xA9");
        CHECK(clean_prompt_text("a&nbsp;&nbsp;b") == "a b");  // U+00A0 is whitespace
        CHECK(clean_prompt_text("a\xE3\x80\x80"
                                "b\xE2\x80\x83"
                                "c") == "a b c");  // U+3000, U+2003
        CHECK(clean_prompt_text("AT&T & more &unknown; &#;") == "AT&T & more &unknown; &#;");
        CHECK(clean_prompt_text("\xE2\x80\x94 dash &mdash;") == "\xE2\x80\x94 dash \xE2\x80\x94");
        CHECK(clean_prompt_text("") == "");
        CHECK(clean_prompt_text(" \t ") == "");
    }

    TEST_CASE("a trained model has T5's special ids and round-trips text") {
        const auto& t = trained();
        CHECK(std::filesystem::exists(t.dir.file("spm.vocab")));
        Tokenizer tok(t.model);
        CHECK(tok.vocab_size() > 50);
        CHECK(tok.vocab_size() <= 300);
        CHECK(tok.piece_to_id("<pad>") == 0);
        CHECK(tok.piece_to_id("</s>") == 1);
        CHECK(tok.piece_to_id("<unk>") == 2);
        CHECK(tok.piece_to_id("no-such-piece-anywhere") == Tokenizer::kUnkId);
        CHECK(tok.model_path() == t.model);

        for (size_t i = 0; i < t.corpus.size(); i += 37) {
            const auto& s = t.corpus[i];
            CAPTURE(s);
            const auto pieces = tok.encode_pieces(s);
            CHECK(!pieces.empty());
            CHECK(tok.decode(pieces) == s);
            const auto enc = tok.encode(s, 128);
            CHECK(tok.decode(enc.ids[0], enc.mask[0]) == s);
            CHECK(tok.decode(enc.ids[0]) == s);  // pad and EOS decode to nothing
        }
        // New sentences from the same vocabulary of words also round-trip.
        for (const auto& s : make_corpus(20, 99))
            CHECK(tok.decode(tok.encode_pieces(s)) == s);
    }

    TEST_CASE("EOS, padding, mask and truncation follow the HF call conventions") {
        Tokenizer tok(trained().model);
        const std::string text = "A red fox walks along the river at sunset.";
        const auto pieces = tok.encode_pieces(text);
        const int64_t n = static_cast<int64_t>(pieces.size());
        REQUIRE(n > 3);

        const auto enc = tok.encode(text, 32);
        CHECK((enc.ids.sizes() == torch::IntArrayRef({1, 32})));
        CHECK((enc.ids.scalar_type() == torch::kInt64));
        CHECK((enc.mask.scalar_type() == torch::kInt64));
        const auto ids = row(enc.ids), mask = row(enc.mask);
        for (int64_t k = 0; k < n; ++k)
            CHECK(ids[k] == pieces[k]);
        CHECK(ids[n] == Tokenizer::kEosId);
        for (int64_t k = n + 1; k < 32; ++k)
            CHECK(ids[k] == Tokenizer::kPadId);
        for (int64_t k = 0; k < 32; ++k)
            CHECK(mask[k] == (k <= n ? 1 : 0));
        CHECK(enc.mask.sum().item<int64_t>() == n + 1);

        // Truncation keeps EOS within max_len.
        const int64_t max_len = n - 1;
        const auto cut = tok.encode(text, max_len);
        const auto cut_ids = row(cut.ids);
        for (int64_t k = 0; k < max_len - 1; ++k)
            CHECK(cut_ids[k] == pieces[k]);
        CHECK(cut_ids[max_len - 1] == Tokenizer::kEosId);
        CHECK(cut.mask.sum().item<int64_t>() == max_len);
        // Exactly fitting: n pieces + EOS in n + 1.
        const auto exact = tok.encode(text, n + 1);
        CHECK(row(exact.ids)[n] == Tokenizer::kEosId);
        CHECK(exact.mask.sum().item<int64_t>() == n + 1);

        CHECK(row(tok.encode(text, 1).ids) == std::vector<int64_t>{1});
        CHECK(row(tok.encode("", 4).ids) == std::vector<int64_t>{1, 0, 0, 0});
        CHECK(row(tok.encode("   ", 3).mask) == std::vector<int64_t>{1, 0, 0});
        CHECK_THROWS_AS(tok.encode(text, 0), TokenizerError);

        // Cleaning happens before tokenizing.
        CHECK(torch::equal(tok.encode("  A red  fox\twalks along the river at&nbsp;sunset. ", 32).ids,
                           enc.ids));

        // A batch pads every row to max_len.
        const auto batch =
            tok.encode(std::vector<std::string>{text, "", "Two children paint the castle."}, 24);
        CHECK((batch.ids.sizes() == torch::IntArrayRef({3, 24})));
        CHECK(torch::equal(batch.ids[0], tok.encode(text, 24).ids[0]));
        CHECK(batch.mask[1].sum().item<int64_t>() == 1);
        CHECK_THROWS_AS(tok.decode(std::vector<int64_t>{tok.vocab_size()}), TokenizerError);
    }

    TEST_CASE("training is deterministic and a moved tokenizer keeps working") {
        const auto& t = trained();
        TempDir dir;
        train_tokenizer(t.dir.file("corpus.txt"), dir.file("again"), 300);
        Tokenizer a(t.model), b(dir.file("again.model"));
        CHECK(a.vocab_size() == b.vocab_size());
        for (const auto& s : make_corpus(10, 5))
            CHECK(a.encode_pieces(s) == b.encode_pieces(s));
        Tokenizer c = std::move(a);
        CHECK(c.decode(c.encode_pieces("A grey cat.")) == "A grey cat.");
    }

    TEST_CASE("missing, corrupt and foreign model files give clear errors") {
        TempDir dir;
        const std::string missing = dir.file("nope.model");
        CHECK_THROWS_WITH_AS(Tokenizer{missing}, doctest::Contains(missing.c_str()), TokenizerError);

        const std::string garbage = dir.file("garbage.model");
        {
            std::ofstream out(garbage, std::ios::binary);
            std::mt19937 rng(3);
            for (int i = 0; i < 4096; ++i)
                out.put(static_cast<char>(rng() & 0xFF));
        }
        CHECK_THROWS_WITH_AS(Tokenizer{garbage}, doctest::Contains(garbage.c_str()), TokenizerError);

        const std::string empty = dir.file("empty.model");
        std::ofstream(empty).close();
        CHECK_THROWS_WITH_AS(Tokenizer{empty}, doctest::Contains(empty.c_str()), TokenizerError);
        CHECK_THROWS_WITH_AS(Tokenizer{dir.path()}, doctest::Contains(dir.path().c_str()), TokenizerError);

        // A SentencePiece model with default (non-T5) ids is refused.
        std::ofstream(dir.file("c.txt")) << "one two three four five six seven eight nine ten\n"
                                         << "eleven twelve thirteen fourteen fifteen sixteen\n";
        train_tokenizer(dir.file("c.txt"), dir.file("foreign"), 40,
                        TokenizerTrainOptions{.extra_args = "--pad_id=-1 --eos_id=2 --unk_id=0 --bos_id=1"});
        CHECK_THROWS_WITH_AS(Tokenizer{dir.file("foreign.model")}, doctest::Contains("T5"), TokenizerError);

        CHECK_THROWS_AS(train_tokenizer(dir.file("no-corpus.txt"), dir.file("x"), 100), TokenizerError);
        CHECK_THROWS_AS(train_tokenizer(dir.file("c.txt"), dir.file("with space"), 100), TokenizerError);
    }

    TEST_CASE("the shim library path honours MEMOREEL_SPM_LIBRARY") {
        const char* old = std::getenv("MEMOREEL_SPM_LIBRARY");
        const std::string saved = old ? old : "";
        ::setenv("MEMOREEL_SPM_LIBRARY", "/somewhere/libx.so", 1);
        CHECK(spm_library_path() == "/somewhere/libx.so");
        if (old)
            ::setenv("MEMOREEL_SPM_LIBRARY", saved.c_str(), 1);
        else
            ::unsetenv("MEMOREEL_SPM_LIBRARY");
        CHECK(spm_library_path().find("libmemoreel_spm.so") != std::string::npos);
    }

    TEST_CASE("byte-level mode: ByT5's ids, T5's special tokens, round trip") {
        Tokenizer tok(Tokenizer::kByteModel);
        CHECK(tok.is_byte_level());
        CHECK(tok.vocab_size() == 259);
        CHECK(tok.encode_pieces("Az") == std::vector<int64_t>{'A' + 3, 'z' + 3});
        const auto t = tok.encode("  a  red\tfox ", 8);
        // Cleaned to "a red fox" (9 bytes), truncated to 7 pieces + EOS.
        CHECK(t.ids[0][6].item<int64_t>() == 'f' + 3);
        CHECK(t.ids[0][7].item<int64_t>() == Tokenizer::kEosId);
        CHECK(t.mask.sum().item<int64_t>() == 8);
        CHECK(tok.decode(tok.encode("héllo wörld", 32).ids[0]) == "héllo wörld");
        CHECK(tok.piece_to_id("</s>") == Tokenizer::kEosId);
        CHECK_THROWS_AS(tok.decode(std::vector<int64_t>{300}), TokenizerError);
    }
}
