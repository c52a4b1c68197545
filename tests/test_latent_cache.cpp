// The latent cache: streamed encoding of rendered frames equals the VAE's one-shot encode, files round-trip
// with their storyboard, and bad files name themselves.
#include "model/safetensors.h"
#include "tests/test_support.h"
#include "training/latent_cache.h"
#include "training/training_data.h"
#include "training/world.h"

using namespace memoreel;

namespace {

WanVAE tiny_vae() {
    WanVAEConfig c = WanVAEConfig::wan21();
    c.dim = 8;
    c.z_dim = 4;
    c.mean.clear();  // identity normalisation
    c.std.clear();
    torch::manual_seed(2);
    WanVAE vae(c);
    vae->eval();
    return vae;
}

}  // namespace

TEST_SUITE("latent_cache") {
    TEST_CASE("streamed encoding of a rendered story equals the one-shot encode") {
        auto vae = tiny_vae();
        world::StoryOptions o;
        o.seconds = 2;
        const world::Story story = world::Story::generate(4, o);
        const int w = 32, h = 32;
        const int64_t frames = 13;
        std::vector<uint8_t> all(static_cast<size_t>(frames) * w * h * 3);
        for (int64_t i = 0; i < frames; ++i)
            world::render_frame(story, i / 16.0, w, h, all.data() + i * w * h * 3);
        const auto frame_at = [&](int64_t i, uint8_t* rgb) {
            std::copy_n(all.data() + i * w * h * 3, w * h * 3, rgb);
        };
        const auto streamed = encode_frames(*vae, frames, w, h, frame_at, 1);
        torch::NoGradGuard ng;
        const auto video = torch::from_blob(all.data(), {frames, h, w, 3}, torch::kUInt8)
                               .permute({3, 0, 1, 2})
                               .to(torch::kFloat32)
                               .div(127.5)
                               .sub(1.0)
                               .unsqueeze(0);
        const auto whole = vae->encode(video)[0];
        CHECK(streamed.sizes() == torch::IntArrayRef({4, 4, 4, 4}));
        CHECK_CLOSE(streamed, whole, 1e-4);
        CHECK_CLOSE(encode_frames(*vae, frames, w, h, frame_at, 2), whole, 1e-4);
        CHECK_THROWS_AS(encode_frames(*vae, 12, w, h, frame_at), std::invalid_argument);

        // A section cut at latent s opens with frame 4s encoded alone: at s = 0 that is the cached latent 0,
        // at s = 2 the single-image latent of frame 8, which is not the cached 4-frame latent 2.
        memoreel::test::TempDir dir;
        CachedClip c{"world-000004", whole, frames, 16.0};
        c.info = {
            {"source", "world"}, {"seed", 4}, {"story", {{"seconds", 2.0}}}, {"width", w}, {"height", h}};
        write_cached_clip(dir.path(), c);
        const LatentClips clips({dir.path()});
        const torch::Tensor open = opening_latents(*vae, clips, {{0, 0}, {0, 2}});
        REQUIRE(open.sizes() == torch::IntArrayRef({2, 4, 1, 4, 4}));
        CHECK_CLOSE(open[0], whole.slice(1, 0, 1), 1e-4);
        CHECK_CLOSE(open[1], vae->encode(video.slice(2, 8, 9))[0], 1e-4);
        CHECK((open[1] - whole.slice(1, 2, 3)).abs().max().item<double>() > 1e-2);
        CHECK_THROWS_AS(opening_latents(*vae, clips, {}), std::invalid_argument);
    }

    TEST_CASE("a cached clip round-trips with its storyboard, and bad files are named") {
        memoreel::test::TempDir dir;
        CachedClip c;
        c.name = "story-0004";
        c.latents = torch::randn({4, 3, 2, 2});
        c.frames = 9;
        c.fps = 16;
        c.storyboard = {{"prompts", {{{"time", 0.0}, {"prompt", "the red fox walks into the blue room"}}}}};
        c.info = {{"source", "world"}, {"seed", 4}};
        write_cached_clip(dir.path(), c);
        const auto files = list_cached_clips(dir.path());
        REQUIRE(files.size() == 1);
        const CachedClip r = read_cached_clip(files[0]);
        CHECK(r.name == "story-0004");
        CHECK(torch::equal(r.latents, c.latents));
        CHECK(r.frames == 9);
        CHECK(r.fps == 16.0);
        CHECK(r.storyboard == c.storyboard);
        CHECK(r.info == c.info);
        // bf16 storage halves the file and stays close.
        c.name = "half";
        write_cached_clip(dir.path(), c, torch::kBFloat16);
        CHECK_CLOSE(read_cached_clip(dir.file("half.safetensors")).latents, c.latents, 0.05);
        // A frame count that does not match the latents, and a file that is not a cache file.
        c.name = "wrong";
        c.frames = 13;
        write_cached_clip(dir.path(), c);
        CHECK_THROWS_WITH_AS(read_cached_clip(dir.file("wrong.safetensors")),
                             doctest::Contains("wrong.safetensors"), CheckpointError);
        save_tensors(dir.file("other.safetensors"), {{"x", torch::zeros({2})}});
        CHECK_THROWS_WITH_AS(read_cached_clip(dir.file("other.safetensors")),
                             doctest::Contains("not a latent cache file"), CheckpointError);
        CHECK_THROWS_AS(write_cached_clip(dir.path(), CachedClip{"a/b", torch::zeros({1, 1, 1, 1}), 1}),
                        std::invalid_argument);
    }
}

TEST_SUITE("latent_cache") {
    TEST_CASE("memoreel data cache writes world stories once, and a second run keeps them") {
        memoreel::test::TempDir dir;
        const std::string cmd = "'" + memoreel::test::memoreel_binary() +
                                "' --threads 2 data cache --model '" + memoreel::test::source_dir() +
                                "/configs/models/memoreel-tiny.json' --seconds 1 --out '" + dir.path() + "'";
        auto r = memoreel::test::run_command(cmd + " --stories 1");
        REQUIRE_MESSAGE(r.status == 0, r.output);
        CHECK(r.output.find("1 clips written, 0 already there") != std::string::npos);
        const auto first = read_cached_clip(dir.file("world-000001.safetensors"));
        CHECK(first.frames == 13);  // 16 frames in a second, 1 + 4k of them
        CHECK(first.latents.sizes() == torch::IntArrayRef({16, 4, 24, 40}));
        CHECK(first.storyboard.at("prompts").size() >= 1);
        CHECK(first.info.at("source") == "world");
        r = memoreel::test::run_command(cmd + " --stories 2");
        REQUIRE_MESSAGE(r.status == 0, r.output);
        CHECK(r.output.find("1 clips written, 1 already there") != std::string::npos);
        CHECK(torch::equal(read_cached_clip(dir.file("world-000001.safetensors")).latents, first.latents));
        {
            // Where the characters are, from the world's truth, on the latent grid (8 px cells).
            const LatentClips clips({dir.path()});
            const torch::Tensor cells = clips.character_cells(0, 0, 4, 24, 40);
            REQUIRE(cells.sizes() == torch::IntArrayRef({4, 24, 40}));
            const double share = cells.mean().item<double>();
            CHECK(share > 0.0);
            CHECK(share < 0.5);
            const world::Story story = world::Story::generate(1, world::StoryOptions{1.0});
            std::vector<uint8_t> rgb(320 * 192 * 3);
            world::FrameTruth truth;
            world::render_frame(story, 0.0, 320, 192, rgb.data(), &truth);
            for (const auto& b : truth.boxes) {
                CHECK(cells[0][(b[1] + b[3]) / 16][(b[0] + b[2]) / 16].item<float>() == 1.0f);
                CHECK(cells[0][(b[1] + b[3]) / 16].sum().item<float>() < 40.0f);  // not the whole row
            }
        }
        r = memoreel::test::run_command(cmd + " --media '" + dir.file("none.json") + "'");
        CHECK(r.status != 0);
        CHECK(r.output.find("none.json") != std::string::npos);
    }
}
