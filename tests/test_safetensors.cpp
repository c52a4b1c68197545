// safetensors reading/writing, sharded folders, and every malformed-file case with the message it must give.
#include <filesystem>
#include <fstream>

#include "model/checkpoint.h"
#include "model/json_util.h"
#include "tests/test_support.h"

using namespace memoreel;
using memoreel::test::TempDir;

namespace {

// Writes a raw file: 8-byte little-endian length (or a forged one), the header text, then data bytes.
void write_raw(const std::string& path,
               const std::string& header,
               size_t data_bytes,
               std::optional<uint64_t> forged_len = std::nullopt) {
    std::ofstream out(path, std::ios::binary);
    uint64_t n = forged_len.value_or(header.size());
    for (int i = 0; i < 8; ++i)
        out.put(static_cast<char>((n >> (8 * i)) & 0xff));
    out << header;
    for (size_t i = 0; i < data_bytes; ++i)
        out.put(static_cast<char>(i));
}

std::string open_error(const std::string& path) {
    try {
        SafetensorsFile::open(path);
    } catch (const CheckpointError& e) {
        return e.what();
    }
    return "";
}

bool contains(const std::string& s, const std::string& part) {
    return s.find(part) != std::string::npos;
}

struct TwoLinear : torch::nn::Module {
    TwoLinear() {
        a = register_module("a", torch::nn::Linear(3, 4));
        b = register_module("b", torch::nn::Linear(4, 2));
    }
    torch::nn::Linear a{nullptr}, b{nullptr};
};

}  // namespace

TEST_SUITE("safetensors") {
    TEST_CASE("every dtype round-trips bit-exactly through write and memory-mapped read") {
        TempDir dir;
        std::vector<std::pair<std::string, torch::Tensor>> tensors = {
            {"f32", torch::randn({3, 5})},
            {"f16", torch::randn({4}).to(torch::kFloat16)},
            {"bf16", torch::randn({2, 3, 2}).to(torch::kBFloat16)},
            {"i64", torch::arange(-6, 6, torch::kInt64).reshape({3, 4})},
            {"f64", torch::randn({2}, torch::kFloat64)},
            {"i32", torch::arange(0, 7, torch::kInt32)},
            {"u8", torch::arange(0, 255, torch::kUInt8)},
            {"scalar", torch::tensor(3.5f)},
            {"empty", torch::zeros({0, 3})},
        };
        save_tensors(dir.file("all.safetensors"), tensors, {{"source", "test"}});
        auto src = TensorSource::open(dir.file("all.safetensors"));
        CHECK(src.metadata().at("source") == "test");
        CHECK(src.names().size() == tensors.size());
        for (const auto& [name, t] : tensors) {
            torch::Tensor back = src.get(name);
            CHECK_MESSAGE((back.scalar_type() == t.scalar_type()), name);
            CHECK_MESSAGE((back.sizes() == t.sizes()), name);
            CHECK_MESSAGE(torch::equal(back, t), name);
        }
        // The header is padded to 8 bytes and the file is exactly header + data.
        auto file = SafetensorsFile::open(dir.file("all.safetensors"));
        uint64_t data = 0;
        for (const auto& t : file->tensors())
            data += t.nbytes();
        CHECK((file->file_size() - data - 8) % 8 == 0);
    }

    TEST_CASE("conversion on save: floating tensors become bf16, integers stay") {
        TempDir dir;
        save_tensors(dir.file("x.safetensors"), {{"w", torch::randn({4})}, {"i", torch::arange(3)}}, {},
                     torch::kBFloat16);
        auto src = TensorSource::open(dir.file("x.safetensors"));
        CHECK((src.get("w").scalar_type() == torch::kBFloat16));
        CHECK((src.get("i").scalar_type() == torch::kInt64));
    }

    TEST_CASE("golden files open and hold the documented tensors") {
        auto f = SafetensorsFile::open(memoreel::test::golden_file("dit_tiny_ti2v.safetensors"));
        CHECK(f->at("inputs.x").shape == std::vector<int64_t>{2, 16, 3, 8, 8});
        CHECK(f->metadata().count("config") == 1);
    }

    TEST_CASE("a truncated file names the file") {
        TempDir dir;
        const auto p = dir.file("short.safetensors");
        std::ofstream(p) << "abc";
        const auto msg = open_error(p);
        CHECK(contains(msg, p));
        CHECK(contains(msg, "truncated"));
    }

    TEST_CASE("a header length past the end of the file") {
        TempDir dir;
        const auto p = dir.file("len.safetensors");
        write_raw(p, "{}", 0, 1000);
        const auto msg = open_error(p);
        CHECK(contains(msg, p));
        CHECK(contains(msg, "runs past the end"));
    }

    TEST_CASE("invalid JSON in the header") {
        TempDir dir;
        const auto p = dir.file("json.safetensors");
        write_raw(p, "{\"a\": {\"dtype\": \"F32\",", 0);
        const auto msg = open_error(p);
        CHECK(contains(msg, p));
        CHECK(contains(msg, "not valid JSON"));
    }

    TEST_CASE("offsets that run past the data name the tensor") {
        TempDir dir;
        const auto p = dir.file("past.safetensors");
        write_raw(p, R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 8);
        const auto msg = open_error(p);
        CHECK(contains(msg, p));
        CHECK(contains(msg, "tensor 'w'"));
        CHECK(contains(msg, "run past the data"));
    }

    TEST_CASE("overlapping offsets name both tensors") {
        TempDir dir;
        const auto p = dir.file("overlap.safetensors");
        write_raw(p,
                  R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                  12);
        const auto msg = open_error(p);
        CHECK(contains(msg, p));
        CHECK(contains(msg, "overlaps"));
        CHECK(contains(msg, "'a'"));
        CHECK(contains(msg, "'b'"));
    }

    TEST_CASE("an overlap hidden behind an empty tensor is still found") {
        TempDir dir;
        const auto p = dir.file("overlap2.safetensors");
        write_raw(p,
                  R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "z": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]},
                      "c": {"dtype": "F32", "shape": [1], "data_offsets": [6, 10]}})",
                  12);
        const auto msg = open_error(p);
        CHECK(contains(msg, "tensor 'c'"));
        CHECK(contains(msg, "overlaps tensor 'a'"));
    }

    TEST_CASE("a failed write leaves the old file and no temporary behind") {
        TempDir dir;
        save_tensors(dir.file("w.safetensors"), {{"x", torch::ones({2})}});
        CHECK_THROWS_AS(
            write_file_atomic(dir.file("w.safetensors"),
                              [](std::ostream&) { throw CheckpointError("w", "", "simulated failure"); }),
            CheckpointError);
        CHECK(torch::equal(TensorSource::open(dir.file("w.safetensors")).get("x"), torch::ones({2})));
        int files = 0;
        for (auto& e : std::filesystem::directory_iterator(dir.path()))
            files += e.is_regular_file();
        CHECK(files == 1);
    }

    TEST_CASE("an unknown dtype") {
        TempDir dir;
        const auto p = dir.file("dtype.safetensors");
        write_raw(p, R"({"w": {"dtype": "F8_E9", "shape": [2], "data_offsets": [0, 2]}})", 2);
        const auto msg = open_error(p);
        CHECK(contains(msg, "tensor 'w'"));
        CHECK(contains(msg, "unknown dtype 'F8_E9'"));
    }

    TEST_CASE("a shape that does not match the byte size") {
        TempDir dir;
        const auto p = dir.file("shape.safetensors");
        write_raw(p, R"({"w": {"dtype": "F32", "shape": [3, 3], "data_offsets": [0, 32]}})", 32);
        const auto msg = open_error(p);
        CHECK(contains(msg, "tensor 'w'"));
        CHECK(contains(msg, "needs 36 bytes"));
    }

    TEST_CASE("malformed entries: negative shape, missing offsets, reversed offsets") {
        TempDir dir;
        const auto p = dir.file("bad.safetensors");
        write_raw(p, R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4);
        CHECK(contains(open_error(p), "non-negative"));
        write_raw(p, R"({"w": {"dtype": "F32", "shape": [1]}})", 4);
        CHECK(contains(open_error(p), "data_offsets"));
        write_raw(p, R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [4, 0]}})", 4);
        CHECK(contains(open_error(p), "end before they begin"));
    }

    TEST_CASE("loading a module: shape mismatch, missing and unexpected names") {
        TempDir dir;
        TwoLinear m;
        auto good = module_tensors(m);
        save_tensors(dir.file("good.safetensors"), good);
        TwoLinear fresh;
        load_module(fresh, TensorSource::open(dir.file("good.safetensors")));
        CHECK(torch::equal(fresh.a->weight, m.a->weight));

        // Shape mismatch.
        auto wrong = good;
        wrong[0].second = torch::zeros({5, 3});
        save_tensors(dir.file("shape.safetensors"), wrong);
        try {
            load_module(fresh, TensorSource::open(dir.file("shape.safetensors")));
            FAIL("expected an error");
        } catch (const CheckpointError& e) {
            CHECK(contains(e.what(), dir.file("shape.safetensors")));
            CHECK(contains(e.what(), "tensor '" + good[0].first + "'"));
            CHECK(contains(e.what(), "does not match"));
        }
        // Missing tensor.
        auto missing = good;
        missing.pop_back();
        save_tensors(dir.file("missing.safetensors"), missing);
        try {
            load_module(fresh, TensorSource::open(dir.file("missing.safetensors")));
            FAIL("expected an error");
        } catch (const CheckpointError& e) {
            CHECK(contains(e.what(), good.back().first));
            CHECK(contains(e.what(), "missing"));
        }
        // Unexpected tensor.
        auto extra = good;
        extra.emplace_back("c.weight", torch::zeros({1}));
        save_tensors(dir.file("extra.safetensors"), extra);
        try {
            load_module(fresh, TensorSource::open(dir.file("extra.safetensors")));
            FAIL("expected an error");
        } catch (const CheckpointError& e) {
            CHECK(contains(e.what(), "tensor 'c.weight'"));
            CHECK(contains(e.what(), "unexpected"));
        }
        LoadOptions lenient;
        lenient.allow_unexpected = true;
        load_module(fresh, TensorSource::open(dir.file("extra.safetensors")), lenient);
    }

    TEST_CASE("a sharded folder with an index loads, and its inconsistencies are reported") {
        TempDir dir;
        TwoLinear m;
        auto tensors = module_tensors(m);
        save_sharded(dir.path(), "diffusion_pytorch_model", tensors, /*max_shard_bytes=*/40);
        int shards = 0;
        for (auto& e : std::filesystem::directory_iterator(dir.path()))
            shards += e.path().extension() == ".safetensors";
        CHECK(shards >= 2);
        TwoLinear fresh;
        load_module(fresh, TensorSource::open(dir.path()));
        CHECK(torch::equal(fresh.b->bias, m.b->bias));
        CHECK(TensorSource::open(dir.path()).metadata().count("total_size") == 1);

        // The index names a tensor that is in no shard.
        auto index = read_json_file(dir.file("diffusion_pytorch_model.safetensors.index.json"));
        index["weight_map"]["ghost"] = index["weight_map"]["a.weight"];
        write_file_atomic(dir.file("diffusion_pytorch_model.safetensors.index.json"), index.dump());
        try {
            TensorSource::open(dir.path());
            FAIL("expected an error");
        } catch (const CheckpointError& e) {
            CHECK(contains(e.what(), "tensor 'ghost'"));
        }
        // An index that is not JSON.
        write_file_atomic(dir.file("diffusion_pytorch_model.safetensors.index.json"), "{oops");
        CHECK_THROWS_WITH_AS(TensorSource::open(dir.path()), doctest::Contains("invalid JSON"),
                             CheckpointError);
    }

    TEST_CASE("a missing path is a clear error") {
        CHECK_THROWS_WITH_AS(TensorSource::open("no/such/model.safetensors"),
                             doctest::Contains("does not exist"), CheckpointError);
    }
}
