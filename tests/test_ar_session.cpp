// The autoregressive session: prompt in force per section, a prompt set mid-section applies from the next
// one, section-by-section decoding and memory appends equal whole-history processing, only the compressed
// memory grows, and time positions stay inside the horizon.
#include "model/ar_session.h"
#include "model/checkpoint.h"
#include "model/session_snapshot.h"
#include "tests/test_support.h"

using namespace memoreel;

namespace {

ModelConfig tiny_model() {
    const auto j = nlohmann::json::parse(R"({
      "name": "session-test",
      "dit": {"model_type": "ti2v", "text_len": 16, "in_dim": 16, "out_dim": 16, "dim": 64, "ffn_dim": 128,
              "freq_dim": 32, "text_dim": 32, "num_heads": 2, "num_layers": 1},
      "vae": {"version": "2.1", "dim": 8, "z_dim": 16, "normalization": "identity"},
      "text_encoder": {"vocab": 300, "dim": 32, "dim_attn": 32, "dim_ffn": 64, "num_heads": 2, "num_layers": 1,
                       "text_len": 16},
      "sampler": {"solver": "unipc", "steps": 2, "shift": 5.0, "guidance": 2.0},
      "video": {"width": 64, "height": 64, "fps": 16, "frames": 5},
      "weights": {"tokenizer": "byte", "allow_random": true}})");
    return ModelConfig::from_json(j, "session-test");
}

// The DiT's head starts at zero; randomise it so sampled latents depend on the context.
void wake_up(VideoModel& m) {
    torch::NoGradGuard ng;
    m.dit().head->head->weight.normal_(0, 0.05);
}

MemoryEncoderConfig memory_config() {
    MemoryEncoderConfig c;
    c.set_rates(parse_rates("4x4x2"));
    c.hr_channels = {8, 16, 32, 32};
    c.attn_heads = 2;
    return c;
}

struct Fixture {
    VideoModel model{tiny_model()};
    MemoryEncoder encoder{nullptr};
    Fixture() {
        wake_up(model);
        encoder = MemoryEncoder(memory_config(), model.dit_module(), model.vae_module());
        encoder->eval();
        torch::NoGradGuard ng;
        encoder->proj->weight.normal_(0, 0.05);  // make the HR branch visible
    }
    SessionSettings settings(int64_t window = 0) {
        SessionSettings s;
        s.window = window;
        s.section_frames = 2;
        s.seed = 3;
        return s;
    }
};

}  // namespace

TEST_SUITE("ar_session") {
    TEST_CASE("the prompt in force per section, a prompt set during a section applies from the next") {
        Fixture f;
        ARSession session(f.model, f.encoder, Storyboard({{0, "a red fox"}}), f.settings());
        const auto s0 = session.next_section([&](int64_t step, int64_t) {
            if (step == 1)
                session.set_prompt({0.1, "a blue whale"});  // mid-section, before section 1 starts
        });
        CHECK(s0.prompt == "a red fox");
        CHECK(s0.frames.size(1) == 5);  // first section: 1 + 4 (S - 1)
        const auto s1 = session.next_section();
        CHECK(s1.prompt == "a blue whale");
        CHECK(s1.frames.size(1) == 8);
        CHECK(s1.start_seconds == doctest::Approx(5.0 / 16));
        CHECK(session.seconds_generated() == doctest::Approx(13.0 / 16));
    }

    TEST_CASE("section-by-section decode and memory equal processing the whole history at once") {
        Fixture f;
        ARSession session(f.model, f.encoder, Storyboard({{0, "a red fox"}}), f.settings(2));
        std::vector<torch::Tensor> latents, frames;
        for (int i = 0; i < 3; ++i) {
            const auto r = session.next_section();
            latents.push_back(r.latents);
            frames.push_back(r.frames);
        }
        torch::NoGradGuard ng;
        const auto all_latents = torch::cat(latents, 1).unsqueeze(0);
        const auto all_frames = torch::cat(frames, 1).unsqueeze(0);
        VaeDecoderState fresh;
        CHECK_CLOSE(f.model.vae().decode_chunk(fresh, all_latents), all_frames, 1e-5);
        MemoryInput in;
        in.latents = all_latents;
        in.pixels = all_frames;
        const auto full = f.encoder->encode_full(in, /*include_partial=*/false);
        CHECK_CLOSE(session.memory(), full.flat(), 1e-5);
        // 3 sections of 2 latent frames = 3 groups at rt 2; a 64x64 video is 8x8 latents, 1x1 memory token at
        // 4x4.
        CHECK(session.memory_tokens() == 3);
        // The memory's keys/values in the DiT, appended section by section, equal encoding the whole memory
        // at once (one prompt, so one text).
        const auto text = f.model.embed_text("a red fox");
        ContextTokens ctx;
        ctx.tokens = full.flat();
        ctx.positions = memory_positions(full.grid(), memory_config().rates(), 0.0);
        ctx.available = torch::tensor({2.0, 4.0, 6.0}, torch::kFloat64);
        const ContextKV whole = encode_context(f.model.dit(), {}, ctx, [&](double) { return text; });
        REQUIRE(session.memory_kv().length() == 3);
        CHECK_CLOSE(session.memory_kv().positions, whole.positions, 0.0);
        for (size_t l = 0; l < whole.layers.size(); ++l) {
            CHECK_CLOSE(session.memory_kv().layers[l].k, whole.layers[l].k, 1e-5);
            CHECK_CLOSE(session.memory_kv().layers[l].v, whole.layers[l].v, 1e-5);
        }
    }

    TEST_CASE("only the compressed memory grows, the window and the decoder state stay fixed") {
        Fixture f;
        ARSession session(f.model, f.encoder, Storyboard({{0, "a red fox"}}), f.settings(2));
        std::vector<std::map<std::string, int64_t>> sizes;
        std::vector<int64_t> tokens;
        for (int i = 0; i < 5; ++i) {
            session.next_section();
            sizes.push_back(session.state_bytes());
            tokens.push_back(session.memory_tokens());
        }
        for (size_t i = 2; i < sizes.size(); ++i) {
            CHECK(sizes[i]["decoder_state"] == sizes[1]["decoder_state"]);
            CHECK(sizes[i]["window"] == sizes[1]["window"]);
            // Memory tokens and the encoder's attention cache grow by the same amount each section.
            CHECK(tokens[i] - tokens[i - 1] == tokens[1] - tokens[0]);
            CHECK(sizes[i]["memory_tokens"] - sizes[i - 1]["memory_tokens"] ==
                  sizes[1]["memory_tokens"] - sizes[0]["memory_tokens"]);
            CHECK(sizes[i]["encoder_state"] - sizes[i - 1]["encoder_state"] ==
                  sizes[2]["encoder_state"] - sizes[1]["encoder_state"]);
            // The memory's keys/values in the DiT: a fixed amount per memory token.
            CHECK(sizes[i]["memory_kv"] - sizes[i - 1]["memory_kv"] ==
                  sizes[1]["memory_kv"] - sizes[0]["memory_kv"]);
            CHECK(sizes[i]["memory_kv"] > sizes[i - 1]["memory_kv"]);
        }
        CHECK(sizes.back()["window"] == 2 * 16 * 8 * 8 * 4);  // 2 latent frames [16, 8, 8] in fp32
    }

    TEST_CASE("memory times are relative to the section and rescaled into the horizon") {
        Fixture f;
        auto settings = f.settings();
        settings.horizon = 3.0;
        ARSession session(f.model, f.encoder, Storyboard({{0, "a red fox"}}), settings);
        for (int i = 0; i < 4; ++i)
            session.next_section();
        const auto ctx = session.context_for(session.latent_frames_done());
        REQUIRE(ctx.length() == session.memory_tokens());
        REQUIRE(session.memory_kv().length() == session.memory_tokens());
        const auto times =
            context_rope_positions(session.memory_kv().positions, double(session.latent_frames_done()), 3.0)
                .select(1, 0);
        CHECK(times.max().item<double>() < 0);
        CHECK(times.min().item<double>() == doctest::Approx(-3.0));
        // Without a horizon the oldest group's centre is 0.5 latent frames from the start: 8 - 0.5 back.
        settings.horizon = 0;
        ARSession free(f.model, f.encoder, Storyboard({{0, "a red fox"}}), settings);
        for (int i = 0; i < 4; ++i)
            free.next_section();
        CHECK(
            context_rope_positions(free.memory_kv().positions, 8.0, 0.0).select(1, 0).min().item<double>() ==
            doctest::Approx(-7.5));
        // What the session itself hands the DiT: the memory's relative times, rescaled into the horizon.
        CHECK(session.context_for(8).positions.select(1, 0).min().item<double>() == doctest::Approx(-3.0));
        CHECK(free.context_for(8).positions.select(1, 0).min().item<double>() == doctest::Approx(-7.5));
        // With a window, its frames keep their exact times; the older memory fills the rest of the horizon.
        settings.horizon = 3.0;
        settings.window = 2;
        ARSession windowed(f.model, f.encoder, Storyboard({{0, "a red fox"}}), settings);
        for (int i = 0; i < 4; ++i)
            windowed.next_section();
        const auto wctx = windowed.context_for(8).positions.select(1, 0);
        REQUIRE(wctx.size(0) == 4 + 2 * 16);  // 4 memory tokens, 2 window frames of 4x4 tokens
        CHECK(wctx.slice(0, 4, 20).eq(-2.0).all().item<bool>());
        CHECK(wctx.slice(0, 20).eq(-1.0).all().item<bool>());
        CHECK(wctx.min().item<double>() == doctest::Approx(-3.0));
        settings.horizon = 2.0;  // not longer than the window
        CHECK_THROWS_AS(ARSession(f.model, f.encoder, Storyboard({{0, "x"}}), settings),
                        std::invalid_argument);
        // Keys are stored before RoPE with absolute times: the newest group is centred at latent frame 6.5.
        CHECK(free.memory_kv().positions.select(1, 0).max().item<double>() == doctest::Approx(6.5));
    }

    TEST_CASE("bad settings are refused") {
        Fixture f;
        auto s = f.settings();
        s.section_frames = 0;
        CHECK_THROWS_WITH_AS(ARSession(f.model, f.encoder, Storyboard({{0, "x"}}), s),
                             doctest::Contains("section_frames"), std::invalid_argument);
        CHECK_THROWS_AS(ARSession(f.model, f.encoder, Storyboard(), f.settings()), std::invalid_argument);
    }

    TEST_CASE("sections that end inside a memory group: the incomplete group is provisional context") {
        Fixture f;
        auto s = f.settings();
        s.section_frames = 3;  // rt = 2
        ARSession session(f.model, f.encoder, Storyboard({{0, "a red fox"}}), s);
        const auto r0 = session.next_section();
        CHECK(r0.context_tokens == 0);
        CHECK(session.memory_tokens() == 1);  // frames 0-1; frame 2 waits for its group
        // The provisional group sits at the centre of the frames it has so far (frame 2), not in the future.
        const auto pending = session.context_for(3).positions.select(1, 0);
        CHECK(pending.max().item<double>() == doctest::Approx(-1.0));
        CHECK(pending.min().item<double>() == doctest::Approx(-2.5));
        const auto r1 = session.next_section();
        CHECK(r1.context_tokens == 2);  // the completed group and the provisional one
        CHECK(session.memory_tokens() == 3);
        const auto r2 = session.next_section();
        CHECK(r2.context_tokens == 3);  // on a group boundary: nothing provisional
        CHECK(session.memory_tokens() == 4);
        CHECK(session.memory_kv().length() == 4);
    }

    TEST_CASE("several encoders at once: tokens concatenated, each equal to its own whole-history encoding") {
        Fixture f;
        MemoryEncoderConfig fine = memory_config();
        fine.set_rates(parse_rates("2x2x1"));
        MemoryEncoderConfig coarse = memory_config();
        coarse.set_rates(parse_rates("4x4x4"));
        MemoryEncoder a(fine, f.model.dit_module(), f.model.vae_module());
        MemoryEncoder b(coarse, f.model.dit_module(), f.model.vae_module());
        a->eval();
        b->eval();
        auto settings = f.settings();
        settings.section_frames = 4;  // a multiple of both rt (1 and 4)
        ARSession session(f.model, std::vector<MemoryEncoder>{a, b}, Storyboard({{0, "a red fox"}}),
                          settings);
        std::vector<torch::Tensor> latents, frames;
        for (int i = 0; i < 2; ++i) {
            const auto r = session.next_section();
            latents.push_back(r.latents);
            frames.push_back(r.frames);
        }
        torch::NoGradGuard ng;
        MemoryInput in;
        in.latents = torch::cat(latents, 1).unsqueeze(0);
        in.pixels = torch::cat(frames, 1).unsqueeze(0);
        const auto ta = a->encode_full(in, false).flat();  // 8 groups of 2x2 tokens
        const auto tb = b->encode_full(in, false).flat();  // 2 groups of 1x1
        CHECK(ta.size(1) == 32);
        CHECK(tb.size(1) == 2);
        CHECK_CLOSE(session.memory(), torch::cat({ta, tb}, 1), 1e-5);
        CHECK(session.context_for(8).length() == 34);
    }
}

TEST_SUITE("ar_session") {
    TEST_CASE("a session restored from its snapshot on disk continues exactly as the uninterrupted one") {
        Fixture f;
        auto settings = f.settings(1);
        settings.section_frames = 3;  // a memory group left open across the snapshot
        const Storyboard story({{0, "a red fox"}, {0.5, "a blue whale"}});
        ARSession straight(f.model, f.encoder, story, settings);
        std::vector<torch::Tensor> want;
        for (int i = 0; i < 3; ++i)
            want.push_back(straight.next_section().frames);

        test::TempDir dir;
        const std::string path = dir.path() + "/snapshot.safetensors";
        {
            ARSession first(f.model, f.encoder, story, settings);
            first.next_section();
            first.set_prompt({2.0, "a green owl"});  // the storyboard travels with the snapshot
            save_session_snapshot(path, first.snapshot());
        }
        ARSession resumed(f.model, f.encoder, Storyboard({{0, "anything"}}), settings);
        resumed.restore(load_session_snapshot(path));
        CHECK(resumed.sections_done() == 1);
        CHECK(resumed.storyboard().entries().size() == 3);
        for (int i = 1; i < 3; ++i) {
            const auto r = resumed.next_section();
            CHECK(r.index == i);
            CHECK(torch::equal(r.frames, want[static_cast<size_t>(i)]));
        }
        CHECK(resumed.memory_tokens() == straight.memory_tokens());

        // Another session's settings are refused with what differs; a file that is no snapshot names itself.
        auto other = settings;
        other.seed = 4;
        ARSession mismatched(f.model, f.encoder, story, other);
        CHECK_THROWS_WITH_AS(mismatched.restore(load_session_snapshot(path)), doctest::Contains("settings"),
                             std::invalid_argument);
        save_tensors(dir.path() + "/plain.safetensors", {{"x", torch::ones({2})}});
        CHECK_THROWS_WITH_AS(load_session_snapshot(dir.path() + "/plain.safetensors"),
                             doctest::Contains("not a session snapshot"), std::invalid_argument);
    }

    TEST_CASE("recall_frame: frames in the memory are recalled through the model, others are refused") {
        Fixture f;
        ARSession session(f.model, f.encoder, Storyboard({{0, "a red fox"}}), f.settings());
        CHECK_THROWS_AS(session.recall_frame(0), std::out_of_range);
        session.next_section();
        session.next_section();
        CHECK(session.latent_frames_in_memory() == 4);
        const auto frame = session.recall_frame(2, 7);
        CHECK(frame.sizes() == torch::IntArrayRef({3, 64, 64}));
        CHECK(torch::isfinite(frame).all().item<bool>());
        CHECK(torch::equal(frame, session.recall_frame(2, 7)));  // deterministic for a seed
        CHECK_THROWS_WITH_AS(session.recall_frame(4), doctest::Contains("not in the memory"),
                             std::out_of_range);
    }
}
