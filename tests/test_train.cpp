// `memoreel train`: exact resume after a kill, divergence detection, data-parallel replicas, and every stage
// end to end on a small model (the tiny architecture at 64x64) into a model folder that `generate` loads.
#include <nlohmann/json.hpp>

#include <unistd.h>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "model/checkpoint.h"
#include "model/json_util.h"
#include "model/tokenizer.h"
#include "tests/test_support.h"
#include "training/adamw.h"
#include "training/stage_common.h"
#include "training/train_config.h"

using namespace memoreel;
namespace fs = std::filesystem;

namespace {

// The tiny model at 64x64, so that every stage runs in seconds.
std::string small_model(const test::TempDir& dir) {
    nlohmann::json j = read_json_file(test::source_dir() + "/configs/models/memoreel-tiny.json");
    j["video"] = {{"width", 64}, {"height", 64}, {"fps", 16}, {"frames", 9}};
    const std::string path = dir.file("small-model.json");
    write_file_atomic(path, j.dump(2));
    return path;
}

nlohmann::json vae_config(const std::string& model) {
    return {{"stage", "vae"},
            {"model", model},
            {"steps", 4},
            {"batch", 1},
            {"lr", 1e-3},
            {"seed", 7},
            {"log_every", 1},
            {"checkpoint_every", 1},
            {"keep_checkpoints", 10},
            {"ema_decay", 0.5},
            {"data", {{"world", {{"stories", 3}, {"seed", 1}, {"seconds", 4}}}}},
            {"options", {{"frames", 5}, {"crop", {32, 32}}, {"sample_frames", 5}}}};
}

std::string write_config(const test::TempDir& dir, const std::string& name, const nlohmann::json& j) {
    const std::string path = dir.file(name + ".json");
    write_file_atomic(path, j.dump(2));
    return path;
}

test::CommandResult train(const std::string& stage,
                          const std::string& config,
                          const std::string& run,
                          const std::string& extra = "") {
    return test::run_command(test::memoreel_binary() + " --threads 1 train " + stage + " --config '" +
                             config + "' --run '" + run + "' " + extra);
}

// step -> loss, and the number of lines per step (a resumed run must not repeat steps).
std::map<int64_t, double> losses(const std::string& metrics, std::map<int64_t, int>* lines = nullptr) {
    std::map<int64_t, double> out;
    std::ifstream in(metrics);
    std::string line;
    while (std::getline(in, line)) {
        const auto j = nlohmann::json::parse(line);
        if (!j.contains("loss"))
            continue;
        out[j["step"]] = j["loss"];
        if (lines)
            ++(*lines)[j["step"]];
    }
    return out;
}

double weights_max_diff(const std::string& a, const std::string& b) {
    const TensorSource sa = TensorSource::open(a), sb = TensorSource::open(b);
    REQUIRE(sa.names() == sb.names());
    double d = 0;
    for (const auto& n : sa.names())
        d = std::max(d, test::max_abs_diff(sa.get(n), sb.get(n)));
    return d;
}

}  // namespace

TEST_SUITE("train") {
    TEST_CASE("a killed run resumes and computes the same steps as an uninterrupted one") {
        test::TempDir dir;
        const std::string config = write_config(dir, "vae", vae_config(small_model(dir)));
        auto whole = train("vae", config, dir.file("whole"));
        REQUIRE_MESSAGE(whole.status == 0, whole.output);

        auto killed = train("vae", config, dir.file("killed"), "--exit-after 2");
        CHECK(killed.status != 0);  // ended abruptly, as SIGKILL would
        CHECK_FALSE(fs::exists(dir.file("killed/model/model.json")));
        auto resumed = train("vae", config, dir.file("killed"));
        REQUIRE_MESSAGE(resumed.status == 0, resumed.output);
        CHECK(resumed.output.find("resumed from") != std::string::npos);
        CHECK(resumed.output.find("resuming with a different") == std::string::npos);

        std::map<int64_t, int> lines;
        const auto a = losses(dir.file("whole/vae/metrics.jsonl"));
        const auto b = losses(dir.file("killed/vae/metrics.jsonl"), &lines);
        REQUIRE(a.size() == 4);
        REQUIRE(b.size() == 4);
        for (int64_t s = 1; s <= 4; ++s) {
            CHECK_MESSAGE(a.at(s) == b.at(s), "step " << s << ": " << a.at(s) << " vs " << b.at(s));
            CHECK(lines[s] == 1);
        }
        CHECK(weights_max_diff(dir.file("whole/vae/checkpoints/step-00000004/weights.safetensors"),
                               dir.file("killed/vae/checkpoints/step-00000004/weights.safetensors")) == 0.0);
        CHECK(weights_max_diff(dir.file("whole/vae/checkpoints/step-00000004/optimizer.safetensors"),
                               dir.file("killed/vae/checkpoints/step-00000004/optimizer.safetensors")) ==
              0.0);
        // The weight average resumes too, and it is not the last step's weights.
        const std::string ema4 = "vae/checkpoints/step-00000004/ema.safetensors";
        CHECK(weights_max_diff(dir.file("whole/" + ema4), dir.file("killed/" + ema4)) == 0.0);
        CHECK(weights_max_diff(dir.file("whole/" + ema4),
                               dir.file("whole/vae/checkpoints/step-00000004/weights.safetensors")) > 0.0);
        CHECK(fs::exists(dir.file("killed/model/vae.safetensors")));
        CHECK(fs::exists(dir.file("killed/vae/samples/step-00000004.mp4")));

        // Going on with a field the checkpoint's config did not have is named too (its default was in force).
        nlohmann::json more = vae_config(small_model(dir));
        more["steps"] = 5;
        more["lr_scale"] = {{"decoder.", 2.0}};
        const auto longer = train("vae", write_config(dir, "vae-more", more), dir.file("killed"));
        REQUIRE_MESSAGE(longer.status == 0, longer.output);
        CHECK(longer.output.find("different 'lr_scale'") != std::string::npos);
        CHECK(longer.output.find("different 'steps'") != std::string::npos);
    }

    TEST_CASE("divergence stops the run with a clear message and keeps the last good checkpoint") {
        test::TempDir dir;
        nlohmann::json j = vae_config(small_model(dir));
        j["lr"] = 5.0;  // AdamW moves every weight by ~5 per step: the reconstruction explodes
        j["steps"] = 30;
        j["grad_clip"] = 0.0;
        j["divergence_loss"] = 50.0;
        const std::string config = write_config(dir, "vae", j);
        const auto r = train("vae", config, dir.file("run"));
        CHECK(r.status != 0);
        CHECK_MESSAGE(r.output.find("training diverged at step") != std::string::npos, r.output);
        CHECK(r.output.find("last good checkpoint") != std::string::npos);
        CHECK_FALSE(fs::exists(dir.file("run/model/model.json")));
        const std::string latest = dir.file("run/vae/checkpoints/latest.json");
        if (fs::exists(latest)) {
            const auto l = read_json_file(latest);
            const TensorSource w = TensorSource::open(
                dir.file("run/vae/checkpoints/" + l["dir"].get<std::string>() + "/weights.safetensors"));
            for (const auto& n : w.names())
                CHECK_MESSAGE(torch::isfinite(w.get(n)).all().item<bool>(), n);
        }
    }

    TEST_CASE("two data-parallel processes (Gloo) keep identical replicas") {
        test::TempDir dir;
        nlohmann::json j = vae_config(small_model(dir));
        j["steps"] = 3;
        const std::string config = write_config(dir, "vae", j);
        const int port = 20000 + static_cast<int>(::getpid() % 20000);
        const std::string env = "WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port);
        const std::string cmd = test::memoreel_binary() + " --threads 1 train vae --config '" + config +
                                "' --run '" + dir.file("run") + "'";
        const auto r = test::run_command("sh -c \"env RANK=1 " + env + " " + cmd + " > '" +
                                         dir.file("rank1.log") + "' 2>&1 & env RANK=0 " + env + " " + cmd +
                                         "; s=\\$?; wait \\$!; s1=\\$?; " + "exit \\$((s + s1))\"");
        const std::string log1 = test::run_command("cat '" + dir.file("rank1.log") + "'").output;
        REQUIRE_MESSAGE(r.status == 0, r.output << "\n--- rank 1 ---\n" << log1);
        CHECK(r.output.find("rank 0 of 2 (gloo") != std::string::npos);
        CHECK(log1.find("rank 1 of 2 (gloo") != std::string::npos);
        // Each process compares its parameters with the mean over both; print the checksums too.
        const auto checksum = [](const std::string& log) {
            const auto at = log.find("replica checksum ");
            return at == std::string::npos ? std::string() : log.substr(at + 17, log.find(',', at) - at - 17);
        };
        CHECK(r.output.find("replicas identical") != std::string::npos);
        CHECK(log1.find("replicas identical") != std::string::npos);
        CHECK(!checksum(r.output).empty());
        CHECK(checksum(r.output) == checksum(log1));
        // Two processes average two examples per step: not the single-process run.
        const auto single = train("vae", config, dir.file("single"));
        REQUIRE_MESSAGE(single.status == 0, single.output);
        CHECK(weights_max_diff(dir.file("run/vae/checkpoints/step-00000003/weights.safetensors"),
                               dir.file("single/vae/checkpoints/step-00000003/weights.safetensors")) > 0.0);
    }

    TEST_CASE("every stage trains into one model folder that generate loads") {
        test::TempDir dir;
        const std::string model = small_model(dir);
        const std::string run = dir.file("run");
        const nlohmann::json world = {{"stories", 2}, {"seed", 1}, {"seconds", 3}};
        const auto stage = [&](const std::string& name, nlohmann::json options, int64_t steps = 2) {
            nlohmann::json j = {
                {"stage", name},         {"model", model}, {"steps", steps}, {"lr", 1e-4},
                {"checkpoint_every", 1}, {"log_every", 1}, {"seed", 3},      {"data", {{"world", world}}},
                {"options", options}};
            const auto r = train(name, write_config(dir, name, j), run);
            REQUIRE_MESSAGE(r.status == 0, name << ":\n" << r.output);
            return r;
        };
        const auto tok = stage("tokenizer", {{"vocab_size", 200}});
        CHECK(tok.output.find("tokenizer (bpe):") != std::string::npos);
        {
            // BPE keeps the captions' words whole (SentencePiece's unigram spelled "purple" in six pieces).
            const Tokenizer t(run + "/model/tokenizer.model");
            std::ifstream captions(run + "/tokenizer/captions.txt");
            std::string first;
            std::getline(captions, first);
            std::istringstream words(first);
            for (std::string w; words >> w;)
                if (w.back() != ',')
                    CHECK_MESSAGE(t.encode_pieces(w).size() == 1, w);
        }
        stage("vae", {{"frames", 5}, {"crop", {32, 32}}, {"sample_frames", 5}});
        auto m = read_json_file(run + "/model/model.json");
        CHECK(m["weights"]["vae"] == "vae.safetensors");
        CHECK(m["weights"]["tokenizer"] == "tokenizer.model");
        CHECK(m["vae"]["mean"].size() == 16);  // the latent normalisation measured on export
        // Text-encoder pretraining on the captions: masked pieces and neighbours, scored on a held-out story.
        CHECK(m["weights"].value("text_encoder", "") == "");
        stage("text", {{"mask_probability", 0.3}, {"neighbours", 2}}, 3);
        {
            const auto sample = read_json_file(run + "/text/samples/step-00000003.json");
            CHECK(sample["held_out_neighbour_accuracy"].get<double>() >= 0.0);
            CHECK(sample["captions"].size() > 0);
            CHECK(sample["captions"][0]["masked"].get<std::string>().find("[_]") != std::string::npos);
            std::ifstream metrics(run + "/text/metrics.jsonl");
            std::string line;
            std::getline(metrics, line);
            CHECK(nlohmann::json::parse(line).contains("masked_accuracy"));
        }
        m = read_json_file(run + "/model/model.json");
        CHECK(m["weights"]["text_encoder"] == "text_encoder.safetensors");
        const torch::Tensor pretrained =
            TensorSource::open(run + "/model/text_encoder.safetensors").get("token_embedding.weight").clone();
        // Half the steps are image steps (single latent frames from more clips): the metrics say which.
        stage("base",
              {{"section_latents", 2},
               {"sample_seconds", 0.3},
               {"image_fraction", 0.5},
               {"character_weight", 4.0},
               {"encode_opening", true}},
              4);
        CHECK(fs::exists(run + "/base/samples/step-00000004.mp4"));
        {
            std::ifstream metrics(run + "/base/metrics.jsonl");
            std::set<double> kinds;
            double opened = 0;
            for (std::string line; std::getline(metrics, line);) {
                const auto j = nlohmann::json::parse(line);
                kinds.insert(j.at("image_step").get<double>());
                // The share of latent cells under the character weight (world truth boxes): some, not all.
                CHECK(j.at("character_cells").get<double>() < 0.5);
                opened += j.at("opened").get<double>();
            }
            // Sections drawn after latent 0 opened with a single-image latent encoded in the step.
            CHECK(opened > 0.0);
            CHECK(kinds == std::set<double>{0.0, 1.0});
        }
        CHECK(fs::exists(run + "/latents/world/world-000001.safetensors"));
        m = read_json_file(run + "/model/model.json");
        CHECK(m["weights"]["allow_random"] == false);  // every network now has weights
        // The base stage went on from the pretrained text encoder (the same tensors, trained further).
        {
            const torch::Tensor after =
                TensorSource::open(run + "/model/text_encoder.safetensors").get("token_embedding.weight");
            CHECK(test::max_abs_diff(after, pretrained) > 0.0);
            CHECK(test::max_abs_diff(after, pretrained) < 0.05);
        }
        // A decoder fine-tune after the base, in its own folder: the encoder and the latent statistics stay
        // as they were, so the latent cache the base built stays valid for the memory stage below.
        {
            const auto vae_before = TensorSource::open(run + "/model/vae.safetensors");
            const torch::Tensor encoder = vae_before.get("encoder.conv1.weight").clone();
            const torch::Tensor mu = vae_before.get("conv1.weight").clone();
            const torch::Tensor decoder = vae_before.get("decoder.conv1.weight").clone();
            const auto mean_before = read_json_file(run + "/model/model.json")["vae"]["mean"];
            nlohmann::json j = {
                {"stage", "vae"},
                {"folder", "vae-decoder"},
                {"model", model},
                {"steps", 2},
                {"lr", 1e-3},
                {"checkpoint_every", 1},
                {"seed", 3},
                {"data", {{"world", world}}},
                {"options",
                 {{"frames", 5}, {"crop", {32, 32}}, {"sample_frames", 5}, {"train_encoder", false}}}};
            const auto r = train("vae", write_config(dir, "vae-decoder", j), run);
            REQUIRE_MESSAGE(r.status == 0, r.output);
            CHECK(fs::exists(run + "/vae-decoder/checkpoints/latest.json"));
            CHECK(
                fs::exists(run + "/vae/checkpoints/latest.json"));  // the first VAE run's folder is untouched
            const auto vae_after = TensorSource::open(run + "/model/vae.safetensors");
            CHECK(test::max_abs_diff(vae_after.get("encoder.conv1.weight"), encoder) == 0.0);
            CHECK(test::max_abs_diff(vae_after.get("conv1.weight"), mu) == 0.0);
            CHECK(test::max_abs_diff(vae_after.get("decoder.conv1.weight"), decoder) > 0.0);
            CHECK(read_json_file(run + "/model/model.json")["vae"]["mean"] == mean_before);
        }
        // A fresh encoder sized by the stage's options (the bundled model's is smaller than the default).
        stage("memory", {{"history_seconds", {1.0, 2.5}},
                         {"targets", 2},
                         {"lora_rank", 4},
                         {"encoder", {{"hr_channels", {8, 16}}, {"attn_heads", 2}}}});
        m = read_json_file(run + "/model/model.json");
        CHECK(m["memory"]["encoder"]["hr_channels"] == nlohmann::json({8, 16}));
        CHECK(m["memory"]["encoder"]["attn_heads"] == 2);
        CHECK(m["memory"]["weights"] == "memory_encoder.safetensors");
        CHECK(m["memory"]["lora"] == "lora.safetensors");
        const auto ar = stage("ar", {{"history_seconds", {0.5, 2.0}},
                                     {"section_latents", 2},
                                     {"lora_rank", 4},
                                     {"window", 1},
                                     {"encoder", {{"hr_channels", {8, 16}}}}});  // the run's size: accepted
        CHECK(ar.output.find("starting from the run's memory encoder") != std::string::npos);
        CHECK(read_json_file(run + "/model/model.json")["memory"]["window"] == 1);  // sessions use it

        // A variant on the shared base (as the evaluation tables train them): its own run folder, the base
        // run's model and latent cache, a fresh encoder although the base model has a memory.
        {
            nlohmann::json j = {{"stage", "ar"},
                                {"model", run + "/model/model.json"},
                                {"steps", 1},
                                {"lr", 1e-4},
                                {"seed", 5},
                                {"data", {{"world", world}, {"latent_cache", run + "/latents"}}},
                                {"options",
                                 {{"history_seconds", {0.5, 2.0}},
                                  {"section_latents", 2},
                                  {"lora_rank", 4},
                                  {"init", "scratch"}}}};
            // A pretrained start keeps the run's encoder: another size is a config error that says so.
            nlohmann::json other = j;
            other["options"]["init"] = "pretrained";
            other["options"]["encoder"] = {{"hr_channels", {8, 32}}, {"attn_heads", 2}};
            const auto bad = train("ar", write_config(dir, "ar-other-size", other), dir.file("other"));
            CHECK(bad.status != 0);
            CHECK(bad.output.find("differs from the run's pretrained encoder") != std::string::npos);
            const auto v = train("ar", write_config(dir, "ar-scratch", j), dir.file("scratch"));
            REQUIRE_MESSAGE(v.status == 0, v.output);
            CHECK(v.output.find("starting from a fresh memory encoder") != std::string::npos);
            CHECK_FALSE(fs::exists(dir.file("scratch/latents")));
            const auto sm = read_json_file(dir.file("scratch/model/model.json"));
            CHECK(sm["weights"]["dit"] == "../../run/model/dit.safetensors");
            CHECK(sm["memory"]["weights"] == "memory_encoder.safetensors");
        }

        // A new tokenizer on a trained model (a variant run): its text encoder goes, and a base run
        // warm-starts the DiT from the base run's checkpoint while the text encoder starts over.
        {
            nlohmann::json j = {{"stage", "tokenizer"},
                                {"model", run + "/model/model.json"},
                                {"steps", 1},
                                {"data", {{"world", world}}},
                                {"options", {{"vocab_size", 60}, {"model_type", "unigram"}}}};
            const auto t = train("tokenizer", write_config(dir, "tok-unigram", j), dir.file("warm"));
            REQUIRE_MESSAGE(t.status == 0, t.output);
            CHECK(t.output.find("the tokenizer changed") != std::string::npos);
            CHECK(read_json_file(dir.file("warm/model/model.json"))["weights"].value("text_encoder", "?") ==
                  "");
            nlohmann::json b = {{"stage", "base"},
                                {"model", run + "/model/model.json"},
                                {"steps", 1},
                                {"lr", 1e-4},
                                {"seed", 5},
                                {"init_from",
                                 {{"weights", run + "/base/checkpoints/step-00000004/weights.safetensors"},
                                  {"only", {"dit."}}}},
                                {"data", {{"world", world}, {"latent_cache", run + "/latents"}}},
                                {"options", {{"section_latents", 2}, {"sample_seconds", 0.3}}}};
            // First the same step under bf16 autocast, from the same start (the warm run's model folder
            // before its base exports into it): its loss agrees with fp32's to bf16 rounding.
            nlohmann::json b16 = b;
            b16["precision"] = "bf16";
            b16["model"] = dir.file("warm/model/model.json");
            const auto w16 = train("base", write_config(dir, "base-warm16", b16), dir.file("warm16"));
            REQUIRE_MESSAGE(w16.status == 0, w16.output);
            CHECK(read_json_file(dir.file("warm16/base/config.json"))["precision"] == "bf16");
            const auto w = train("base", write_config(dir, "base-warm", b), dir.file("warm"));
            REQUIRE_MESSAGE(w.status == 0, w.output);
            const double l32 = losses(dir.file("warm/base/metrics.jsonl")).at(1);
            const double l16 = losses(dir.file("warm16/base/metrics.jsonl")).at(1);
            CHECK(l16 == doctest::Approx(l32).epsilon(0.03));
            CHECK(l16 != l32);  // it did run in bf16
            CHECK(w.output.find("warm start: ") != std::string::npos);
            CHECK(w.output.find("(dit.) from") != std::string::npos);
            CHECK(read_json_file(dir.file("warm/model/model.json"))["weights"]["text_encoder"] ==
                  "text_encoder.safetensors");
            b["init_from"]["only"] = {"ditt."};
            const auto bad = train("base", write_config(dir, "base-typo", b), dir.file("typo"));
            CHECK(bad.status != 0);
            CHECK(bad.output.find("init_from.only") != std::string::npos);
        }

        const auto g = test::run_command(
            test::memoreel_binary() + " --threads 1 generate --model '" + run +
            "/model/model.json' --prompt 'the red fox' --seconds 1 --section-frames 2 --out '" +
            dir.file("out.mp4") + "'");
        REQUIRE_MESSAGE(g.status == 0, g.output);
        CHECK(g.output.find("(trained)") != std::string::npos);
        CHECK(fs::exists(dir.file("out.mp4")));

        // eval retrieval on the trained memory: a table, and JSON with every bucket filled.
        const auto e =
            test::run_command(test::memoreel_binary() + " --threads 1 eval retrieval --model '" + run +
                              "/model/model.json' --stories 1 --history-seconds 2 --positions 3 " +
                              "--buckets 3 --steps 2 --no-memory-row --images '" + dir.file("images") +
                              "' --out '" + dir.file("retrieval.json") + "'");
        REQUIRE_MESSAGE(e.status == 0, e.output);
        // The printed table is Markdown, one row per model, with the bucket columns.
        CHECK(e.output.find("| model | memory | overall |") != std::string::npos);
        CHECK(e.output.find("| " + run + "/model/model.json | proposed ") != std::string::npos);
        CHECK(e.output.find(" 67-100 % |") != std::string::npos);
        const auto r = read_json_file(dir.file("retrieval.json"));
        // The reference row (the same DiT without memory) first, then the model with its memory; the same
        // frames are scored, and the memory changes what is retrieved.
        REQUIRE(r["models"].size() == 2);
        CHECK(r["models"][0]["memory"]["variant"] == "none");
        CHECK(r["models"][0]["overall"]["frames"] == 3);
        CHECK(r["models"][0]["overall"]["psnr"].get<double>() !=
              r["models"][1]["overall"]["psnr"].get<double>());
        CHECK(e.output.find(" | none (caption only) |") != std::string::npos);
        // --images: every retrieved frame beside its original, for both rows.
        for (const char* row : {"", "-nomemory"}) {
            const fs::path folder = fs::path(dir.file("images")) / (fs::path(run).filename().string() + row);
            int pngs = 0;
            for (const auto& f : fs::directory_iterator(folder))
                pngs += f.path().extension() == ".png";
            CHECK_MESSAGE(pngs == 3, folder.string());
        }
        const auto& row = r["models"][1];
        CHECK(row["buckets"].size() == 3);
        for (const auto& b : row["buckets"]) {
            CHECK(b["frames"] == 1);
            CHECK(std::isfinite(b["psnr"].get<double>()));
            CHECK(b["ssim"].get<double>() <= 1.0);
        }
        CHECK(row["overall"]["frames"] == 3);
        CHECK(r["metric"].get<std::string>().find("LPIPS not reported") != std::string::npos);

        // eval consistency: the four settings of table 2 generate the same story and are scored.
        const auto k =
            test::run_command(test::memoreel_binary() + " --threads 1 eval consistency --model '" + run +
                              "/model/model.json' --scratch '" + dir.file("scratch/model/model.json") +
                              "' --stories 1 --seconds 4 --steps 2 --videos '" + dir.file("videos") +
                              "' --out '" + dir.file("consistency.json") + "'");
        REQUIRE_MESSAGE(k.status == 0, k.output);
        CHECK(k.output.find("| no history | ") != std::string::npos);
        CHECK(k.output.find("place colour obeyed (shots)") != std::string::npos);
        const auto c = read_json_file(dir.file("consistency.json"));
        REQUIRE(c["settings"].size() == 4);
        CHECK(c["settings"][0]["name"] == "full memory");
        CHECK(c["settings"][0]["window"] == 1);  // the model's trained window
        CHECK(c["settings"][1]["name"] == "memory without pretraining");
        CHECK(c["settings"][2]["memory"] == false);
        CHECK(c["settings"][3]["window"] == 0);
        for (const auto& s : c["settings"]) {
            REQUIRE(s["stories"].size() == 1);
            CHECK(s["stories"][0]["sections"].get<int64_t>() >= 2);
            CHECK(s["overall"].contains("character_unstated"));
            CHECK(s["overall"]["place_colour"].contains("obeyed"));
        }
        CHECK(c["settings"][0]["stories"][0]["memory_tokens"].get<int64_t>() > 0);
        CHECK(c["settings"][3]["stories"][0]["memory_tokens"] == 0);
        CHECK(fs::exists(dir.file("videos/no-history/story-910001.mp4")));

        // export: the run's model as a self-contained bf16 folder that generate runs.
        const auto x = test::run_command(test::memoreel_binary() + " export --model '" + run +
                                         "/model/model.json' --out '" + dir.file("bundle") + "'");
        REQUIRE_MESSAGE(x.status == 0, x.output);
        const auto bm = read_json_file(dir.file("bundle/model.json"));
        CHECK(bm["weights"]["dit"] == "dit.safetensors");
        CHECK(bm["weights"]["tokenizer"] == "tokenizer.model");
        CHECK(bm["memory"]["lora"] == "lora.safetensors");
        CHECK(bm["memory"]["window"] == 1);
        const TensorSource dit = TensorSource::open(dir.file("bundle/dit.safetensors"));
        for (const auto& n : dit.names())
            CHECK_MESSAGE(dit.info(n).dtype == DType::BF16, n);
        CHECK(static_cast<double>(fs::file_size(dir.file("bundle/dit.safetensors"))) <
              0.51 * static_cast<double>(fs::file_size(run + "/model/dit.safetensors")));
        const auto gb = test::run_command(
            test::memoreel_binary() + " --threads 1 generate --model '" + dir.file("bundle/model.json") +
            "' --prompt 'the red fox' --seconds 1 --section-frames 2 --out '" + dir.file("bundle.mp4") + "'");
        REQUIRE_MESSAGE(gb.status == 0, gb.output);
        CHECK(gb.output.find("(trained)") != std::string::npos);
    }

    TEST_CASE("a stage's export changes only its own fields of the run's model.json") {
        // Two stages on one run folder: the VAE stage started before the text stage exported, and its export
        // must keep the text encoder the text stage wrote meanwhile.
        test::TempDir dir;
        const ModelConfig started = ModelConfig::load(small_model(dir));
        const std::string model_dir = dir.file("run/model");
        update_run_model_config(model_dir, started, [](ModelConfig& c) { c.tokenizer = "tokenizer.model"; });
        update_run_model_config(model_dir, started,
                                [](ModelConfig& c) { c.text_encoder_weights = "text_encoder.safetensors"; });
        update_run_model_config(model_dir, started,
                                [](ModelConfig& c) { c.vae_weights = "vae.safetensors"; });
        ModelConfig now = ModelConfig::load(model_dir + "/model.json");
        CHECK(now.tokenizer == "tokenizer.model");
        CHECK(now.text_encoder_weights == "text_encoder.safetensors");
        CHECK(now.vae_weights == "vae.safetensors");
        CHECK(now.allow_random_weights);  // no DiT yet
        update_run_model_config(model_dir, started,
                                [](ModelConfig& c) { c.dit_weights = "dit.safetensors"; });
        now = ModelConfig::load(model_dir + "/model.json");
        CHECK(now.vae_weights == "vae.safetensors");
        CHECK_FALSE(now.allow_random_weights);
    }

    TEST_CASE("train configs: bad fields are named") {
        CHECK_THROWS_WITH(TrainConfig::from_json({{"stage", "vea"}}, "x.json"), doctest::Contains("stage"));
        CHECK_THROWS_WITH(TrainConfig::from_json({{"stage", "vae"}, {"lr", -1.0}}, "x.json"),
                          doctest::Contains("'lr'"));
        CHECK_THROWS_WITH(TrainConfig::from_json({{"stage", "vae"}, {"stpes", 3}}, "x.json"),
                          doctest::Contains("unknown field"));
        TrainConfig c =
            TrainConfig::from_json({{"stage", "base"}, {"steps", 100}, {"warmup", 10}, {"lr", 1.0}}, "x");
        CHECK(scheduled_lr(c, 5) == doctest::Approx(0.5));
        CHECK(scheduled_lr(c, 10) == doctest::Approx(1.0));
        CHECK(scheduled_lr(c, 100) == doctest::Approx(c.final_lr_ratio));
    }

    TEST_CASE("lr_scale multiplies the learning rate of the tensors under a prefix") {
        const TrainConfig c = TrainConfig::from_json(
            {{"stage", "base"}, {"lr_scale", {{"text_encoder.", 10.0}, {"text_encoder.norm", 2.0}}}}, "x");
        CHECK(c.lr_scale.at("text_encoder.") == 10.0);
        CHECK_THROWS_WITH(
            TrainConfig::from_json({{"stage", "base"}, {"lr_scale", {{"dit.", -1.0}}}}, "x.json"),
            doctest::Contains("'lr_scale'"));
        // Same gradients: the first Adam step moves each tensor by lr x its scale (the longest prefix wins).
        std::vector<std::pair<std::string, torch::Tensor>> params;
        for (const char* name : {"dit.w", "text_encoder.w", "text_encoder.norm.w"})
            params.emplace_back(name, torch::zeros({3}, torch::kFloat64).requires_grad_(true));
        AdamW opt(params, {0.9, 0.999, 1e-8, 0.0, {c.lr_scale.begin(), c.lr_scale.end()}});
        for (auto& [name, p] : params)
            p.mutable_grad() = torch::ones({3}, torch::kFloat64);
        opt.step(1e-3);
        CHECK(params[0].second[0].item<double>() == doctest::Approx(-1e-3));
        CHECK(params[1].second[0].item<double>() == doctest::Approx(-1e-2));
        CHECK(params[2].second[0].item<double>() == doctest::Approx(-2e-3));
    }

    TEST_CASE("a train config extends another: fields merge over it, missing or cyclic bases are named") {
        test::TempDir dir;
        write_file_atomic(dir.file("base.json"),
                          R"({"stage": "memory", "steps": 100, "lr": 1e-4,
                              "options": {"rates": "4x4x8", "targets": 4}})");
        write_file_atomic(dir.file("child.json"),
                          R"({"extends": "base.json", "steps": 600, "options": {"rates": "2x2x1"}})");
        const TrainConfig c = TrainConfig::load(dir.file("child.json"));
        CHECK(c.stage == "memory");
        CHECK(c.steps == 600);
        CHECK(c.lr == doctest::Approx(1e-4));
        CHECK(c.options["rates"] == "2x2x1");
        CHECK(c.options["targets"] == 4);  // kept from the base
        write_file_atomic(dir.file("orphan.json"), R"({"extends": "nowhere.json"})");
        CHECK_THROWS_WITH(TrainConfig::load(dir.file("orphan.json")), doctest::Contains("nowhere.json"));
        write_file_atomic(dir.file("loop.json"), R"({"extends": "loop.json"})");
        CHECK_THROWS_WITH(TrainConfig::load(dir.file("loop.json")), doctest::Contains("cycle"));
        // The shipped table configs all resolve.
        for (const auto& e : fs::directory_iterator(test::source_dir() + "/configs/train/tables")) {
            const TrainConfig t = TrainConfig::load(e.path().string());
            CHECK_MESSAGE((t.stage == "memory" || t.stage == "ar"), e.path());
            CHECK(t.data.contains("latent_cache"));
        }
    }
}
