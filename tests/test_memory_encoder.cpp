// The memory encoder phi (model/memory_encoder.h): incremental == full encoding for every variant and rate
// (with padding in time and space), zero-initialised projection, token grids, causality, the large
// patchifier's initialisation, RoPE positions, state snapshots and gradients. Tiny DiT and VAE so the suite
// stays fast on two cores.
#include <cmath>

#include "model/memory_encoder.h"
#include "tests/test_support.h"

using namespace memoreel;
using memoreel::test::max_abs_diff;

namespace {

// Same maths, only the split into calls (convolution lengths, attention calls) differs.
constexpr double kStreamAtol = 1e-5;

WanDiTConfig tiny_dit_config() {
    WanDiTConfig c;
    c.model_type = "t2v";
    c.in_dim = 16;
    c.out_dim = 16;
    c.dim = 64;
    c.ffn_dim = 128;
    c.freq_dim = 32;
    c.text_dim = 32;
    c.text_len = 8;
    c.num_heads = 2;
    c.num_layers = 1;
    return c;
}

WanDiT tiny_dit() {
    return WanDiT(tiny_dit_config());
}

WanVAE tiny_vae() {
    auto c = WanVAEConfig::wan21();
    c.dim = 8;
    c.dec_dim = 8;
    c.mean.clear();
    c.std.clear();
    return WanVAE(c);
}

// Small HR widths so the rate sweep is fast (the default ladder is exercised once below).
MemoryEncoderConfig small_config(const std::string& variant, const std::string& rates = "4x4x2") {
    MemoryEncoderConfig c;
    c.variant = variant;
    c.set_rates(parse_rates(rates));
    c.hr_channels = {8, 16, 32, 32};
    c.attn_layers = 2;
    c.attn_heads = 2;
    return c;
}

// Gives the zero-initialised projection weights so the HR branch is visible in the tokens.
void perturb_projection(MemoryEncoder& enc) {
    torch::NoGradGuard ng;
    if (!enc->proj.is_empty()) {
        enc->proj->weight.normal_(0.0, 0.05);
        enc->proj->bias.normal_(0.0, 0.05);
    }
}

// Pixel frames for T latent frames (Wan alignment: 1 + 4 (T-1)).
int64_t pixel_frames(int64_t T) {
    return T < 1 ? 0 : 1 + 4 * (T - 1);
}

// Appends the history in latent chunks (and pixel chunks split at other points, to exercise buffering),
// then the partial group; returns all tokens concatenated and the final state.
torch::Tensor encode_chunked(MemoryEncoder& enc,
                             const torch::Tensor& lat,
                             const torch::Tensor& pix,
                             const std::vector<int64_t>& lat_chunks,
                             const std::vector<int64_t>& pix_chunks,
                             MemoryEncoderState* final_state = nullptr,
                             torch::Tensor* features = nullptr) {
    MemoryEncoderState st;
    std::vector<torch::Tensor> toks, feats;
    const size_t n = std::max(lat_chunks.size(), pix_chunks.size());
    int64_t lo = 0, po = 0;
    int64_t expect_first = 0;
    for (size_t i = 0; i < n; ++i) {
        MemoryInput in;
        if (lat.defined() && i < lat_chunks.size()) {
            in.latents = lat.slice(2, lo, lo + lat_chunks[i]);
            lo += lat_chunks[i];
        }
        if (pix.defined() && i < pix_chunks.size()) {
            in.pixels = pix.slice(2, po, po + pix_chunks[i]);
            po += pix_chunks[i];
        }
        auto t = enc->encode_append(st, in);
        CHECK(t.first_group == expect_first);
        expect_first += t.groups();
        toks.push_back(t.tokens);
        if (t.features.defined()) {
            feats.push_back(t.features);
        }
    }
    auto last = enc->encode_partial(st);
    if (last.groups() > 0) {
        toks.push_back(last.tokens);
        if (last.features.defined()) {
            feats.push_back(last.features);
        }
    }
    if (final_state) {
        *final_state = st;
    }
    if (features && !feats.empty()) {
        *features = torch::cat(feats, 1);
    }
    return torch::cat(toks, 1);
}

}  // namespace

TEST_SUITE("memory_encoder") {
    TEST_CASE("rates parse, config JSON round trip and validation") {
        const auto r = parse_rates("4x4x2");
        CHECK(r.rh == 4);
        CHECK(r.rw == 4);
        CHECK(r.rt == 2);
        CHECK((parse_rates("2 x 2 x 8") == MemoryRates{2, 2, 8}));
        CHECK_THROWS_AS(parse_rates("4x4"), std::invalid_argument);
        CHECK_THROWS_AS(parse_rates("4xax2"), std::invalid_argument);
        auto c = small_config("without_lr", "2x4x8");
        c.cross_attn_features = true;
        const auto back = MemoryEncoderConfig::from_json(c.to_json(), "test");
        CHECK((back.to_json() == c.to_json()));
        CHECK((back.rates() == MemoryRates{2, 4, 8}));
        CHECK_THROWS_AS(MemoryEncoderConfig::from_json({{"rates", "3x4x2"}}, "t"), std::invalid_argument);
        CHECK_THROWS_AS(MemoryEncoderConfig::from_json({{"rates", "4x4x16"}}, "t"), std::invalid_argument);
        CHECK_THROWS_AS(MemoryEncoderConfig::from_json({{"variant", "bogus"}}, "t"), std::invalid_argument);
        CHECK_THROWS_WITH_AS(
            MemoryEncoderConfig::from_json({{"variant", "only_lr"}, {"cross_attn_features", true}}, "t"),
            doctest::Contains("HR branch"), std::invalid_argument);
        CHECK_THROWS_AS(MemoryEncoderConfig::from_json({{"attn_heads", 3}}, "t"), std::invalid_argument);
        CHECK_THROWS_AS(MemoryEncoderConfig::from_json({{"hr_channels", nlohmann::json::array()}}, "t"),
                        std::invalid_argument);
    }

    TEST_CASE("token grid sizes for each rate") {
        torch::manual_seed(0);
        auto dit = tiny_dit();
        const int64_t T = 16, H = 16, W = 16;
        const auto lat = torch::randn({1, 16, T, H, W});
        for (const std::string rates : {"4x4x2", "2x2x2", "2x2x1", "2x2x4", "2x2x8", "4x2x1"}) {
            CAPTURE(rates);
            for (const std::string variant : {"without_lr", "large_patchifier"}) {
                MemoryEncoder enc(small_config(variant, rates), dit);
                const auto r = parse_rates(rates);
                const auto grid = enc->token_grid(T, H, W);
                CHECK((grid == std::array<int64_t, 3>{T / r.rt, H / (2 * r.rh), W / (2 * r.rw)}));
                torch::NoGradGuard ng;
                MemoryInput in;
                in.latents = lat;
                const auto out = enc->encode_full(in);
                CHECK(out.tokens.sizes() == torch::IntArrayRef({1, grid[0], grid[1], grid[2], 64}));
                CHECK(out.flat().sizes() == torch::IntArrayRef({1, grid[0] * grid[1] * grid[2], 64}));
            }
        }
        // Non-divisible sizes round up (padding), they are not rejected.
        MemoryEncoder enc(small_config("without_lr", "4x4x2"), dit);
        CHECK((enc->token_grid(11, 10, 14) == std::array<int64_t, 3>{6, 2, 2}));
    }

    TEST_CASE("incremental == full re-encode, every variant (4x4x2, padding in time and space)") {
        torch::manual_seed(1);
        auto dit = tiny_dit();
        auto vae = tiny_vae();
        // 11 latent frames (5 whole groups + 1 partial), 10x14 latents (padded to 16x16), 80x112 pixels.
        const int64_t T = 11;
        const auto lat = torch::randn({1, 16, T, 10, 14});
        const auto pix = torch::rand({1, 3, pixel_frames(T), 80, 112}) * 2 - 1;
        for (const std::string variant : {"proposed", "only_lr", "without_lr", "large_patchifier"}) {
            CAPTURE(variant);
            auto cfg = small_config(variant);
            cfg.cross_attn_features = cfg.has_hr();  // the enhancement needs an HR branch
            MemoryEncoder enc(cfg, dit, vae);
            perturb_projection(enc);
            torch::NoGradGuard ng;
            MemoryInput all;
            all.latents = lat;
            all.pixels = pix;
            const auto full = enc->encode_full(all);
            CHECK((full.grid() == std::array<int64_t, 3>{6, 2, 2}));
            // Latent chunks 4, 5, 2 (split inside groups); pixel chunks split elsewhere: 7, 20, 14.
            torch::Tensor feats;
            const auto inc = encode_chunked(enc, lat, pix, {4, 5, 2}, {7, 20, 14}, nullptr, &feats);
            CHECK_CLOSE(inc, full.tokens, kStreamAtol);
            MESSAGE(variant << ": max |incremental - full| = " << max_abs_diff(inc, full.tokens));
            // Whole groups per call (2 + 2 + 1 groups, then the partial one).
            const auto inc2 = encode_chunked(enc, lat, pix, {4, 4, 3}, {13, 16, 12});
            CHECK_CLOSE(inc2, full.tokens, kStreamAtol);
            if (cfg.has_hr()) {
                REQUIRE(full.features.defined());
                CHECK(full.features.size(4) == 32);
                CHECK_CLOSE(feats, full.features, kStreamAtol);
            } else {
                CHECK(!full.features.defined());
            }
            // Without the partial group: exactly the 5 complete groups, equal to the first 5 of the full one.
            const auto whole = enc->encode_full(all, false);
            CHECK(whole.groups() == 5);
            CHECK_CLOSE(whole.tokens, full.tokens.slice(1, 0, 5), kStreamAtol);
        }
    }

    TEST_CASE("incremental == full re-encode, default HR widths (64..512) and precomputed LR latents") {
        torch::manual_seed(2);
        auto dit = tiny_dit();
        auto vae = tiny_vae();
        MemoryEncoderConfig cfg;  // proposed, 4x4x2, 64-128-256-512, 2 layers, 8 heads
        MemoryEncoder enc(cfg, dit, vae);
        perturb_projection(enc);
        const int64_t T = 8;
        const auto lat = torch::randn({1, 16, T, 8, 8});
        const auto pix = torch::rand({1, 3, pixel_frames(T), 64, 64}) * 2 - 1;
        torch::NoGradGuard ng;
        MemoryInput all;
        all.latents = lat;
        all.pixels = pix;
        const auto full = enc->encode_full(all);
        CHECK((full.grid() == std::array<int64_t, 3>{4, 1, 1}));
        const auto inc = encode_chunked(enc, lat, pix, {2, 4, 2}, {5, 16, 8});
        CHECK_CLOSE(inc, full.tokens, kStreamAtol);
        MESSAGE("default widths: max |incremental - full| = " << max_abs_diff(inc, full.tokens));
        // The latent-cache entry: LR latents computed once, passed per group.
        const auto lrl = enc->lr_latents(pix, 0, {8, 8});
        CHECK(lrl.sizes() == torch::IntArrayRef({1, 16, 4, 2, 2}));
        MemoryEncoderState st;
        std::vector<torch::Tensor> toks;
        for (auto [l0, l1, g0, g1] : std::vector<std::array<int64_t, 4>>{{0, 3, 0, 2}, {3, 8, 2, 4}}) {
            MemoryInput in;
            in.latents = lat.slice(2, l0, l1);
            in.lr_latents = lrl.slice(2, g0, g1);
            toks.push_back(enc->encode_append(st, in).tokens);
        }
        CHECK_CLOSE(torch::cat(toks, 1), full.tokens, kStreamAtol);
    }

    TEST_CASE("incremental == full re-encode at every rate (HR branch)") {
        torch::manual_seed(3);
        auto dit = tiny_dit();
        // 19 latent frames: non-divisible for every rt > 1; 12x10 latents: non-divisible for 4x4 and 2x2
        // (p=2).
        const auto lat = torch::randn({1, 16, 19, 12, 10});
        for (const std::string rates : {"4x4x2", "2x2x2", "2x2x1", "2x2x4", "2x2x8", "2x4x2"}) {
            CAPTURE(rates);
            for (const std::string variant : {"without_lr", "large_patchifier"}) {
                CAPTURE(variant);
                MemoryEncoder enc(small_config(variant, rates), dit);
                torch::NoGradGuard ng;
                MemoryInput all;
                all.latents = lat;
                const auto full = enc->encode_full(all);
                const auto r = parse_rates(rates);
                CHECK(full.groups() == (19 + r.rt - 1) / r.rt);
                const auto inc = encode_chunked(enc, lat, {}, {4, 6, 2, 7}, {});
                CHECK_CLOSE(inc, full.tokens, kStreamAtol);
                MESSAGE(rates << " " << variant << ": max diff " << max_abs_diff(inc, full.tokens));
                // One frame at a time.
                const auto one = encode_chunked(enc, lat, {}, std::vector<int64_t>(19, 1), {});
                CHECK_CLOSE(one, full.tokens, kStreamAtol);
            }
        }
    }

    TEST_CASE("appends that complete no group return zero groups, batch of 2 streams like two batches of 1") {
        torch::manual_seed(9);
        auto dit = tiny_dit();
        auto vae = tiny_vae();
        MemoryEncoder enc(small_config("proposed", "2x2x4"), dit, vae);
        perturb_projection(enc);
        const int64_t T = 9;
        const auto lat = torch::randn({2, 16, T, 4, 6});
        const auto pix = torch::rand({2, 3, pixel_frames(T), 32, 48}) * 2 - 1;
        torch::NoGradGuard ng;
        MemoryEncoderState st;
        MemoryInput in;
        in.latents = lat.slice(2, 0, 3);
        in.pixels = pix.slice(2, 0, 9);
        const auto none = enc->encode_append(st, in);
        CHECK(none.groups() == 0);
        CHECK(none.tokens.sizes() == torch::IntArrayRef({2, 0, 1, 2, 64}));
        CHECK(none.flat().sizes() == torch::IntArrayRef({2, 0, 64}));
        CHECK(st.latent_frames_in == 3);
        CHECK(st.pixel_frames_in == 9);
        // Partial group now (3 of 4 latent frames, 9 of 13 pixel frames).
        CHECK(enc->encode_partial(st).groups() == 1);
        MemoryInput all;
        all.latents = lat;
        all.pixels = pix;
        const auto full = enc->encode_full(all);
        CHECK(full.groups() == 3);
        for (int64_t b = 0; b < 2; ++b) {
            MemoryInput one;
            one.latents = lat.slice(0, b, b + 1);
            one.pixels = pix.slice(0, b, b + 1);
            CHECK_CLOSE(enc->encode_full(one).tokens, full.tokens.slice(0, b, b + 1), kStreamAtol);
        }
        CHECK_CLOSE(encode_chunked(enc, lat, pix, {3, 1, 4, 1}, {9, 4, 16, 4}), full.tokens, kStreamAtol);
    }

    TEST_CASE("zero-initialised projection: an untrained encoder equals its LR branch") {
        torch::manual_seed(4);
        auto dit = tiny_dit();
        auto vae = tiny_vae();
        MemoryEncoder enc(small_config("proposed"), dit, vae);
        const auto lat = torch::randn({1, 16, 6, 8, 8});
        const auto pix = torch::rand({1, 3, pixel_frames(6), 64, 64}) * 2 - 1;
        torch::NoGradGuard ng;
        MemoryInput all;
        all.latents = lat;
        all.pixels = pix;
        const auto lr_only = enc->lr_tokens(enc->lr_latents(pix, 0, {8, 8}));
        const auto out = enc->encode_full(all);
        CHECK(max_abs_diff(out.tokens, lr_only) == 0.0);
        // And equals the only_lr variant built on the same DiT and VAE.
        MemoryEncoder only(small_config("only_lr"), dit, vae);
        CHECK(max_abs_diff(only->encode_full(all).tokens, lr_only) == 0.0);
        perturb_projection(enc);
        CHECK(max_abs_diff(enc->encode_full(all).tokens, lr_only) > 1e-3);
    }

    TEST_CASE("causality: a change in group g leaves earlier groups' tokens unchanged") {
        torch::manual_seed(5);
        auto dit = tiny_dit();
        auto vae = tiny_vae();
        const int64_t T = 8;  // 4 groups at rt = 2
        const auto lat = torch::randn({1, 16, T, 8, 8});
        const auto pix = torch::rand({1, 3, pixel_frames(T), 64, 64}) * 2 - 1;
        for (const std::string variant : {"proposed", "only_lr", "without_lr", "large_patchifier"}) {
            CAPTURE(variant);
            MemoryEncoder enc(small_config(variant), dit, vae);
            perturb_projection(enc);
            torch::NoGradGuard ng;
            MemoryInput a;
            a.latents = lat;
            a.pixels = pix;
            const auto base = enc->encode_full(a).tokens;
            const int64_t g = 2;
            // Latent frame 4 (first of group 2) and pixel frame 13 (its first pixel frame).
            MemoryInput b = a;
            b.latents = lat.clone();
            b.latents.select(2, 2 * g) += 1.0;
            b.pixels = pix.clone();
            b.pixels.select(2, enc->group_pixel_begin(g)).mul_(-1.0);
            const auto changed = enc->encode_full(b).tokens;
            CHECK(max_abs_diff(changed.slice(1, 0, g), base.slice(1, 0, g)) == 0.0);
            CHECK(max_abs_diff(changed.select(1, g), base.select(1, g)) > 1e-4);
            // The last frame of group g-1 affects group g-1 (the temporal stride-2 conv sees both frames).
            if (variant != "only_lr") {
                MemoryInput c = a;
                c.latents = lat.clone();
                c.latents.select(2, 2 * g - 1) += 1.0;
                const auto prev = enc->encode_full(c).tokens;
                CHECK(max_abs_diff(prev.slice(1, 0, g - 1), base.slice(1, 0, g - 1)) == 0.0);
                CHECK(max_abs_diff(prev.select(1, g - 1), base.select(1, g - 1)) > 1e-4);
            }
        }
    }

    TEST_CASE("large_patchifier initialisation maps a block-constant latent like the DiT patch embedding") {
        torch::manual_seed(6);
        auto dit = tiny_dit();
        dit->to(torch::kDouble);
        for (const std::string rates : {"4x4x2", "2x2x8", "2x4x1"}) {
            CAPTURE(rates);
            const auto r = parse_rates(rates);
            MemoryEncoder enc(small_config("large_patchifier", rates), dit);
            // In float64 so that the comparison measures the initialisation, not fp32 summation order over
            // rt*p*rh*p*rw*C_z products; both outputs come back as fp32.
            enc->to(torch::kDouble);
            const int64_t G = 2, h = 2, w = 3;
            const auto coarse = torch::randn({1, 16, G, h, w}, torch::kDouble);
            // Constant over each (rt, p*rh, p*rw) block.
            const auto lat = coarse.repeat_interleave(r.rt, 2)
                                 .repeat_interleave(2 * r.rh, 3)
                                 .repeat_interleave(2 * r.rw, 4);
            torch::NoGradGuard ng;
            MemoryInput in;
            in.latents = lat;
            const auto out = enc->encode_full(in).tokens;  // [1, G, h, w, dim]
            // The DiT's patch embedding of the block average (a constant 1x2x2 patch).
            const auto ref = dit->patch_embed(coarse.repeat_interleave(2, 3).repeat_interleave(2, 4));
            CHECK_CLOSE(out.reshape({1, -1, 64}), ref.tokens, 1e-5);
            MESSAGE(rates << ": max diff " << max_abs_diff(out.reshape({1, -1, 64}), ref.tokens));
        }
    }

    TEST_CASE("positions: region centres, time relative to the section") {
        const auto pos = memory_positions({2, 2, 3}, MemoryRates{4, 4, 2}, 8.0);
        REQUIRE(pos.sizes() == torch::IntArrayRef({12, 3}));
        CHECK((pos.scalar_type() == torch::kFloat64));
        auto a = pos.accessor<double, 2>();
        CHECK(a[0][0] == doctest::Approx(-7.5));  // group 0: centre 0.5, relative to 8
        CHECK(a[0][1] == doctest::Approx(1.5));
        CHECK(a[0][2] == doctest::Approx(1.5));
        CHECK(a[1][2] == doctest::Approx(5.5));   // j = 1
        CHECK(a[2][2] == doctest::Approx(9.5));   // j = 2
        CHECK(a[3][1] == doctest::Approx(5.5));   // i = 1
        CHECK(a[6][0] == doctest::Approx(-5.5));  // group 1: centre 2.5
        // Appended tokens continue from their first group; rt = 1 centres are the frames themselves.
        const auto later = memory_positions({1, 1, 1}, MemoryRates{2, 2, 1}, 10.0, 7);
        CHECK(later[0][0].item<double>() == doctest::Approx(-3.0));
        CHECK(later[0][1].item<double>() == doctest::Approx(0.5));
        const auto r8 = memory_positions({2, 1, 1}, MemoryRates{2, 2, 8}, 0.0);
        CHECK(r8[1][0].item<double>() == doctest::Approx(11.5));
    }

    TEST_CASE("state snapshot and restore mid-stream continue identically") {
        torch::manual_seed(7);
        auto dit = tiny_dit();
        auto vae = tiny_vae();
        auto cfg = small_config("proposed");
        cfg.cross_attn_features = true;
        MemoryEncoder enc(cfg, dit, vae);
        perturb_projection(enc);
        const int64_t T = 9;
        const auto lat = torch::randn({1, 16, T, 8, 8});
        const auto pix = torch::rand({1, 3, pixel_frames(T), 64, 64}) * 2 - 1;
        torch::NoGradGuard ng;
        MemoryEncoderState st;
        MemoryInput first;
        first.latents = lat.slice(2, 0, 3);  // one group plus a buffered frame
        first.pixels = pix.slice(2, 0, 10);  // one group plus buffered pixel frames
        enc->encode_append(st, first);
        // Through a file, as a session snapshot would go.
        test::TempDir dir;
        const auto named = st.snapshot_tensors();
        {
            std::vector<torch::Tensor> ts;
            for (const auto& [name, t] : named) {
                ts.push_back(t);
            }
            torch::save(ts, dir.file("state.pt"));
        }
        std::vector<torch::Tensor> loaded;
        torch::load(loaded, dir.file("state.pt"));
        REQUIRE(loaded.size() == named.size());
        std::vector<std::pair<std::string, torch::Tensor>> named_loaded;
        for (size_t i = 0; i < named.size(); ++i) {
            named_loaded.emplace_back(named[i].first, loaded[i]);
        }
        auto restored = MemoryEncoderState::restore(named_loaded, st.snapshot_counters());
        MemoryInput rest;
        rest.latents = lat.slice(2, 3, T);
        rest.pixels = pix.slice(2, 10, pixel_frames(T));
        const auto a = enc->encode_append(st, rest);
        const auto b = enc->encode_append(restored, rest);
        CHECK(a.first_group == b.first_group);
        CHECK(max_abs_diff(a.tokens, b.tokens) == 0.0);
        CHECK(max_abs_diff(a.features, b.features) == 0.0);
        CHECK(max_abs_diff(enc->encode_partial(st).tokens, enc->encode_partial(restored).tokens) == 0.0);
        CHECK_THROWS(MemoryEncoderState::restore(named_loaded, {{"kind", 1}}));
    }

    TEST_CASE("gradients reach the encoder and the DiT's patch embedding") {
        torch::manual_seed(8);
        auto dit = tiny_dit();
        auto vae = tiny_vae();
        MemoryEncoder enc(small_config("proposed"), dit, vae);
        // The DiT's parameters are not the encoder's (shared, not copied).
        for (const auto& p : enc->named_parameters()) {
            CHECK(p.key().find("patch_embedding") == std::string::npos);
        }
        const auto lat = torch::randn({1, 16, 4, 8, 8});
        const auto pix = torch::rand({1, 3, pixel_frames(4), 64, 64}) * 2 - 1;
        MemoryInput all;
        all.latents = lat;
        all.pixels = pix;
        enc->encode_full(all).tokens.pow(2).sum().backward();
        CHECK(dit->patch_embedding->weight.grad().defined());
        CHECK(dit->patch_embedding->weight.grad().abs().sum().item<double>() > 0);
        // Zero projection: only the projection itself gets a gradient at first.
        CHECK(enc->proj->weight.grad().abs().sum().item<double>() > 0);
        // Once it is non-zero, the gradient reaches the first convolution too.
        perturb_projection(enc);
        enc->zero_grad();
        enc->encode_full(all).tokens.pow(2).sum().backward();
        for (const auto& p : enc->named_parameters()) {
            CAPTURE(p.key());
            REQUIRE(p.value().grad().defined());
        }
        const auto conv0 = enc->convs->ptr<MemoryCausalConvImpl>(0)->conv->weight.grad();
        CHECK(conv0.abs().sum().item<double>() > 0);
    }
}
