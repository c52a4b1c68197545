// Model configs: the shipped files load, and every invalid one is rejected with the file and the field named.
#include "model/config.h"
#include "model/json_util.h"
#include "model/safetensors.h"
#include "tests/test_support.h"

using namespace memoreel;
using memoreel::test::TempDir;

namespace {

std::string config_path(const std::string& name) {
    return memoreel::test::source_dir() + "/configs/models/" + name;
}

// Loads the tiny config, applies an edit to its JSON, and returns the error message of loading the result.
std::string error_after(const std::function<void(nlohmann::json&)>& edit) {
    TempDir dir;
    auto j = read_json_file(config_path("memoreel-tiny.json"));
    edit(j);
    write_file_atomic(dir.file("edited.json"), j.dump());
    try {
        ModelConfig::load(dir.file("edited.json"));
    } catch (const CheckpointError& e) {
        std::string msg = e.what();
        CHECK(msg.find(dir.file("edited.json")) != std::string::npos);
        return msg;
    }
    return "";
}

}  // namespace

TEST_SUITE("config") {
    TEST_CASE("the shipped configs load and agree with the spec") {
        const auto big = ModelConfig::load(config_path("wan2.2-ti2v-5b.json"));
        CHECK(big.dit.dim == 3072);
        CHECK(big.dit.head_dim() == 128);
        CHECK(big.dit.num_layers == 30);
        CHECK(big.vae.z_dim == 48);
        CHECK(big.vae.spatial_factor() == 16);
        CHECK(big.vae.temporal_factor() == 4);
        CHECK(big.vae.mean.size() == 48);
        CHECK(big.text_encoder.vocab == 256384);
        CHECK(big.sampler.steps == 50);
        CHECK(big.width == 1280);
        CHECK(big.height == 704);

        const auto tiny = ModelConfig::load(config_path("memoreel-tiny.json"));
        CHECK(tiny.vae.spatial_factor() == 8);
        CHECK(tiny.vae.mean.empty());
        CHECK(tiny.dit.in_dim == tiny.vae.z_dim);
        CHECK(tiny.allow_random_weights);
    }

    TEST_CASE("a config round-trips through to_json") {
        const auto a = ModelConfig::load(config_path("wan2.2-ti2v-5b.json"));
        const auto b = ModelConfig::from_json(a.to_json(), "round-trip");
        CHECK(b.to_json() == a.to_json());
    }

    TEST_CASE("invalid configs name the file and the problem") {
        CHECK(error_after([](auto& j) { j["dit"]["num_heads"] = 3; }).find("divisible by num_heads") !=
              std::string::npos);
        CHECK(error_after([](auto& j) { j["dit"]["dimm"] = 3; }).find("field 'dit.dimm': unknown field") !=
              std::string::npos);
        CHECK(error_after([](auto& j) {
                  j["dit"]["dim"] = "wide";
              }).find("field 'dit.dim': must be an integer") != std::string::npos);
        CHECK(error_after([](auto& j) { j["dit"]["in_dim"] = 48; }).find("must equal vae.z_dim") !=
              std::string::npos);
        CHECK(error_after([](auto& j) { j["video"]["width"] = 100; }).find("multiples of 16") !=
              std::string::npos);
        CHECK(error_after([](auto& j) { j["video"]["frames"] = 10; }).find("1 + a multiple of 4") !=
              std::string::npos);
        CHECK(error_after([](auto& j) { j["sampler"]["solver"] = "ddim"; }).find("solver must be") !=
              std::string::npos);
        CHECK(error_after([](auto& j) {
                  j["vae"]["mean"] = {1.0, 2.0};
              }).find("mean must have z_dim") != std::string::npos);
        CHECK(error_after([](auto& j) { j.erase("dit"); }).find("field 'dit': is required") !=
              std::string::npos);
        CHECK(error_after([](auto& j) { j["dit"]["num_heads"] = 32; }).find("head_dim") != std::string::npos);
        CHECK(error_after([](auto& j) { j["video"]["frames"] = 33.9; }).find("must be an integer") !=
              std::string::npos);
        CHECK(error_after([](auto& j) { j["dit"]["dim"] = 1e300; }).find("must be an integer") !=
              std::string::npos);
        // Sizes that would overflow derived factors (and divide by zero) are refused up front.
        CHECK(error_after([](auto& j) {
                  j["vae"]["dim_mult"] = std::vector<int>(64, 1);
                  j["vae"]["temperal_downsample"] = std::vector<bool>(63, true);
              }).find("dim_mult must have 1 to 8 entries") != std::string::npos);
        CHECK(error_after([](auto& j) {
                  j["dit"]["patch_size"] = {1, int64_t(1) << 62, int64_t(1) << 62};
              }).find("patch_size entries must be in [1, 64]") != std::string::npos);
        CHECK(error_after([](auto& j) { j["text_encoder"]["dim_attn"] = -4; }).find("dim_attn") !=
              std::string::npos);
        CHECK(error_after([](auto& j) { j["dit"]["num_layers"] = 1000000; }).find("num_layers must be in") !=
              std::string::npos);
    }

    TEST_CASE("a config that is not JSON, or absent") {
        TempDir dir;
        write_file_atomic(dir.file("bad.json"), "{\"name\": ");
        CHECK_THROWS_WITH_AS(ModelConfig::load(dir.file("bad.json")), doctest::Contains("invalid JSON"),
                             CheckpointError);
        CHECK_THROWS_WITH_AS(ModelConfig::load(dir.file("none.json")), doctest::Contains("cannot open"),
                             CheckpointError);
    }
}
