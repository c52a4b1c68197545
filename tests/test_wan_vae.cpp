// Wan 2.1 / 2.2 VAE: parity with the official modules (golden vectors), streaming == whole-clip coding, state
// snapshots, and invariants at sizes the golden files do not cover.
#include <chrono>

#include "model/checkpoint.h"
#include "model/wan_vae.h"
#include "tests/test_support.h"

using namespace memoreel;
using memoreel::test::golden_file;
using memoreel::test::max_abs_diff;
using memoreel::test::TempDir;

namespace {

// Golden README: atol 1e-4 for an fp32 port (summation order alone moves outputs by up to 2.2e-6).
constexpr double kGoldenAtol = 1e-4;
// Streaming vs whole clip, and fast vs reference convolution: the same arithmetic, so far tighter.
constexpr double kStreamAtol = 1e-5;

struct Golden {
    TensorSource source;
    WanVAEConfig config;
    WanVAE vae{nullptr};

    torch::Tensor get(const std::string& name) const { return source.get(name); }
};

std::vector<double> to_doubles(const torch::Tensor& t) {
    const auto d = t.to(torch::kDouble).contiguous();
    return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

// The golden file's constructor arguments (its __metadata__ "config") and normalisation constants.
Golden load_golden(const std::string& file, const std::string& version) {
    Golden g{TensorSource::open(golden_file(file)), {}, nullptr};
    const auto j = nlohmann::json::parse(g.source.metadata().at("config"));
    WanVAEConfig& c = g.config;
    c.version = version;
    c.dim = j.at("dim").get<int64_t>();
    c.dec_dim = j.value("dec_dim", c.dim);
    c.z_dim = j.at("z_dim").get<int64_t>();
    c.dim_mult = j.at("dim_mult").get<std::vector<int64_t>>();
    c.num_res_blocks = j.at("num_res_blocks").get<int64_t>();
    c.attn_scales = j.at("attn_scales").get<std::vector<double>>();
    c.temperal_downsample = j.at("temperal_downsample").get<std::vector<bool>>();
    c.mean = to_doubles(g.source.get("norm.mean"));
    c.std = to_doubles(g.source.get("norm.std"));
    g.vae = WanVAE(c);
    load_module(*g.vae, g.source, LoadOptions{.prefix = "weights."});
    g.vae->eval();
    return g;
}

Golden golden21() {
    return load_golden("vae21_tiny.safetensors", "2.1");
}
Golden golden22() {
    return load_golden("vae22_tiny.safetensors", "2.2");
}

int64_t parameter_count(torch::nn::Module& m) {
    int64_t n = 0;
    for (const auto& p : m.parameters())
        n += p.numel();
    return n;
}

void check_names_and_shapes(Golden& g, size_t expected_tensors) {
    std::map<std::string, std::vector<int64_t>> golden;
    for (const auto& name : g.source.names())
        if (name.rfind("weights.", 0) == 0)
            golden[name.substr(8)] = g.source.info(name).shape;
    std::map<std::string, std::vector<int64_t>> ours;
    for (const auto& [name, t] : module_tensors(*g.vae))
        ours[name] = t.sizes().vec();
    CHECK(golden.size() == expected_tensors);
    CHECK(ours.size() == expected_tensors);
    for (const auto& [name, shape] : golden) {
        INFO(name);
        REQUIRE(ours.count(name) == 1);
        CHECK(ours[name] == shape);
    }
    CHECK(g.vae->buffers().empty());
}

void check_golden_parity(Golden g) {
    torch::NoGradGuard no_grad;
    const auto video = g.get("inputs.video");
    const auto enc = g.vae->encode_all(video);
    CHECK_CLOSE(enc.enc_out, g.get("checks.enc_out"), kGoldenAtol);
    CHECK_CLOSE(enc.mu_raw, g.get("checks.mu_raw"), kGoldenAtol);
    CHECK_CLOSE(enc.mu, g.get("outputs.mu"), kGoldenAtol);
    CHECK_CLOSE(enc.log_var, g.get("outputs.log_var"), kGoldenAtol);
    CHECK_CLOSE(g.vae->encode(video), enc.mu, 0.0);
    MESSAGE("enc_out " << max_abs_diff(enc.enc_out, g.get("checks.enc_out")) << ", mu_raw "
                       << max_abs_diff(enc.mu_raw, g.get("checks.mu_raw")) << ", mu "
                       << max_abs_diff(enc.mu, g.get("outputs.mu")) << ", log_var "
                       << max_abs_diff(enc.log_var, g.get("outputs.log_var")));

    // Decode the official mu so that the decoder is checked on its own.
    const auto mu = g.get("outputs.mu");
    CHECK_CLOSE(g.vae->denormalize(mu), g.get("checks.z_denorm"), kGoldenAtol);
    const auto decoded = g.vae->decode(mu);
    const auto unclamped = g.vae->decode(mu, /*clamp=*/false);
    CHECK_CLOSE(decoded, g.get("outputs.decode"), kGoldenAtol);
    CHECK_CLOSE(unclamped, g.get("outputs.decode_unclamped"), kGoldenAtol);
    CHECK(decoded.abs().max().item<double>() <= 1.0);
    MESSAGE("z_denorm " << max_abs_diff(g.vae->denormalize(mu), g.get("checks.z_denorm")) << ", decode "
                        << max_abs_diff(decoded, g.get("outputs.decode")) << ", decode_unclamped "
                        << max_abs_diff(unclamped, g.get("outputs.decode_unclamped")));
}

// Decodes z in sections of the given latent-frame counts with one state, and concatenates.
torch::Tensor decode_in_sections(WanVAEImpl& vae,
                                 const torch::Tensor& z,
                                 const std::vector<int64_t>& sections,
                                 bool clamp = false) {
    VaeDecoderState state;
    std::vector<torch::Tensor> parts;
    int64_t start = 0;
    for (int64_t n : sections) {
        parts.push_back(vae.decode_chunk(state, z.narrow(2, start, n), clamp));
        start += n;
        CHECK(state.frames_in() == start);
        CHECK(state.frames_out() == vae.video_frames(start));
    }
    REQUIRE(start == z.size(2));
    return torch::cat(parts, 2);
}

torch::Tensor encode_in_pieces(WanVAEImpl& vae,
                               const torch::Tensor& video,
                               const std::vector<int64_t>& pieces) {
    VaeEncoderState state;
    std::vector<torch::Tensor> parts;
    int64_t start = 0;
    for (int64_t n : pieces) {
        parts.push_back(vae.encode_chunk(state, video.narrow(2, start, n)).mu);
        start += n;
        CHECK(state.frames_out() == vae.latent_frames(start));
    }
    REQUIRE(start == video.size(2));
    return torch::cat(parts, 2);
}

torch::Tensor random_video(int64_t b, int64_t t, int64_t h, int64_t w, uint64_t seed) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    return at::rand({b, 3, t, h, w}, gen, torch::kFloat) * 2 - 1;
}

torch::Tensor random_latents(int64_t b, int64_t z, int64_t t, int64_t h, int64_t w, uint64_t seed) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    return at::randn({b, z, t, h, w}, gen, torch::kFloat);
}

}  // namespace

TEST_SUITE("wan_vae") {
    TEST_CASE("parameter names and shapes equal the official state_dict, and load strictly") {
        auto g21 = golden21();
        check_names_and_shapes(g21, 194);
        CHECK(parameter_count(*g21.vae) == 529201);
        auto g22 = golden22();
        check_names_and_shapes(g22, 196);
        CHECK(parameter_count(*g22.vae) == 623328);
        // Spot checks of the official layouts named in the spec.
        const auto params = g21.vae->named_parameters();
        CHECK(params["decoder.upsamples.3.resample.1.weight"].sizes() == torch::IntArrayRef({12, 24, 3, 3}));
        CHECK(params["decoder.upsamples.3.time_conv.weight"].sizes() ==
              torch::IntArrayRef({48, 24, 3, 1, 1}));
        CHECK(params["encoder.downsamples.5.time_conv.weight"].sizes() ==
              torch::IntArrayRef({12, 12, 3, 1, 1}));
        const auto params22 = g22.vae->named_parameters();
        CHECK(params22["encoder.downsamples.1.downsamples.2.time_conv.weight"].sizes() ==
              torch::IntArrayRef({12, 12, 3, 1, 1}));
        CHECK(params22["decoder.upsamples.0.upsamples.3.time_conv.weight"].sizes() ==
              torch::IntArrayRef({48, 24, 3, 1, 1}));
        CHECK(params22["encoder.middle.1.norm.gamma"].sizes() == torch::IntArrayRef({24, 1, 1}));
        CHECK(params22["decoder.head.2.weight"].sizes() == torch::IntArrayRef({12, 6, 3, 3, 3}));
    }

    TEST_CASE("2.1 matches the official encode and decode") {
        check_golden_parity(golden21());
    }

    TEST_CASE("2.2 matches the official encode and decode") {
        check_golden_parity(golden22());
    }

    TEST_CASE("2.2 patchify matches the official one and unpatchify inverts it") {
        auto g = golden22();
        const auto in = g.get("checks.patchify_in");
        const auto out = wan_vae::patchify(in, 2);
        CHECK_CLOSE(out, g.get("checks.patchify_out"), 0.0);
        CHECK_CLOSE(wan_vae::unpatchify(out, 2), in, 0.0);
    }

    TEST_CASE("the oneDNN convolution agrees with at::convolution") {
        torch::NoGradGuard no_grad;
        auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
        const auto x = at::randn({2, 12, 5, 8, 12}, gen, torch::kFloat);
        struct Case {
            std::vector<int64_t> kernel, stride, padding;
        };
        for (const auto& c : {Case{{3, 3, 3}, {1, 1, 1}, {0, 1, 1}}, Case{{3, 1, 1}, {2, 1, 1}, {0, 0, 0}},
                              Case{{1, 3, 3}, {1, 2, 2}, {0, 0, 0}}, Case{{1, 1, 1}, {1, 1, 1}, {0, 0, 0}}}) {
            const auto w =
                at::randn({10, 12, c.kernel[0], c.kernel[1], c.kernel[2]}, gen, torch::kFloat) * 0.1;
            const auto b = at::randn({10}, gen, torch::kFloat);
            CHECK_CLOSE(wan_vae::conv(x, w, b, c.stride, c.padding),
                        wan_vae::conv_reference(x, w, b, c.stride, c.padding), kStreamAtol);
        }
        MESSAGE("oneDNN fast path: fp32 " << wan_vae::fast_conv_enabled(torch::kFloat) << ", bf16 "
                                          << wan_vae::fast_conv_enabled(torch::kBFloat16));
    }

    TEST_CASE("the fused RMS norm equals F.normalize * sqrt(C) * gamma, and is differentiable") {
        auto gen = at::make_generator<at::CPUGeneratorImpl>(6);
        const auto x = at::randn({2, 7, 3, 4, 5}, gen, torch::kFloat);
        const auto gamma = at::randn({7, 1, 1, 1}, gen, torch::kFloat);
        const auto ref = x / x.norm(2, {1}, true).clamp_min(1e-12) * std::sqrt(7.0) * gamma;
        {
            torch::NoGradGuard no_grad;
            CHECK_CLOSE(wan_vae::rms_norm(x, gamma, false), ref, 1e-6);
            CHECK_CLOSE(wan_vae::rms_norm(x, gamma, true), torch::silu(ref), 1e-6);
            // A position whose channels are all zero stays zero (the 1e-12 floor), as F.normalize.
            CHECK(wan_vae::rms_norm(torch::zeros({1, 4, 1, 2, 2}), torch::ones({4, 1, 1, 1}), false)
                      .abs()
                      .max()
                      .item<double>() == 0.0);
        }
        auto g = gamma.clone().requires_grad_();
        wan_vae::rms_norm(x, g, true).sum().backward();
        CHECK(g.grad().defined());
    }

    TEST_CASE("streaming decode in uneven sections equals the whole-clip decode") {
        torch::NoGradGuard no_grad;
        for (auto* make : {&golden21, &golden22}) {
            auto g = make();
            const auto z = g.get("outputs.mu");  // 3 latent frames
            const auto whole = g.vae->decode(z, false);
            for (const auto& sections : std::vector<std::vector<int64_t>>{{1, 2}, {1, 1, 1}, {2, 1}, {3}}) {
                const auto streamed = decode_in_sections(*g.vae, z, sections);
                CHECK_CLOSE(streamed, whole, kStreamAtol);
                MESSAGE(g.config.version << " sections of " << sections.size() << ": max diff "
                                         << max_abs_diff(streamed, whole));
            }
            // Clamping per section is clamping the whole.
            CHECK_CLOSE(decode_in_sections(*g.vae, z, {1, 2}, true), g.vae->decode(z), kStreamAtol);
        }
    }

    TEST_CASE("streaming decode over a longer clip, and several chunks per pass") {
        torch::NoGradGuard no_grad;
        for (auto* make : {&golden21, &golden22}) {
            auto g = make();
            const int64_t f = g.config.spatial_factor();
            const auto z = random_latents(1, g.config.z_dim, 6, 32 / f, 48 / f, 11);
            const auto whole = g.vae->decode(z, false);
            CHECK(whole.sizes() == torch::IntArrayRef({1, 3, 21, 32, 48}));
            CHECK_CLOSE(decode_in_sections(*g.vae, z, {1, 2, 3}), whole, kStreamAtol);
            CHECK_CLOSE(decode_in_sections(*g.vae, z, {4, 1, 1}), whole, kStreamAtol);
            g.vae->set_chunks_per_pass(3);
            CHECK_CLOSE(g.vae->decode(z, false), whole, kStreamAtol);
            CHECK_CLOSE(decode_in_sections(*g.vae, z, {2, 4}), whole, kStreamAtol);
            g.vae->set_chunks_per_pass(1);
        }
    }

    TEST_CASE("streaming encode in pieces equals the whole-clip encode") {
        torch::NoGradGuard no_grad;
        for (auto* make : {&golden21, &golden22}) {
            auto g = make();
            const auto video = g.get("inputs.video");  // 9 frames
            const auto whole = g.vae->encode(video);
            for (const auto& pieces : std::vector<std::vector<int64_t>>{{1, 4, 4}, {5, 4}, {1, 8}, {9}}) {
                const auto streamed = encode_in_pieces(*g.vae, video, pieces);
                CHECK_CLOSE(streamed, whole, kStreamAtol);
            }
            g.vae->set_chunks_per_pass(2);
            CHECK_CLOSE(g.vae->encode(video), whole, kStreamAtol);
            CHECK_CLOSE(encode_in_pieces(*g.vae, video, {1, 8}), whole, kStreamAtol);
            g.vae->set_chunks_per_pass(1);
        }
    }

    TEST_CASE("a state snapshot written to disk and restored mid-stream continues identically") {
        torch::NoGradGuard no_grad;
        auto g = golden22();
        const auto z = g.get("outputs.mu");
        const auto whole = g.vae->decode(z, false);
        TempDir dir;

        VaeDecoderState state;
        const auto first = g.vae->decode_chunk(state, z.narrow(2, 0, 1), false);
        auto snap = state.snapshot();
        CHECK(snap.counters.at("kind") == VaeDecoderState::kKind);
        CHECK(snap.counters.at("slots") == static_cast<int64_t>(g.vae->decoder_cache_slots()));
        // After latent frame 0 the upsample3d caches are in the official "Rep" state.
        int64_t reps = 0;
        for (const auto& [name, value] : snap.counters)
            reps += name.rfind("rep.", 0) == 0 ? value : 0;
        CHECK(reps == 2);
        save_tensors(dir.file("state.safetensors"), snap.tensors);
        const auto source = TensorSource::open(dir.file("state.safetensors"));
        VaeStateSnapshot loaded;
        loaded.counters = snap.counters;
        for (const auto& name : source.names())
            loaded.tensors.emplace_back(name, source.get(name));
        auto restored = VaeDecoderState::restore(loaded);
        CHECK(restored.frames_in() == 1);
        CHECK(restored.bytes() == state.bytes());

        const auto rest_restored = g.vae->decode_chunk(restored, z.narrow(2, 1, 2), false);
        const auto rest_original = g.vae->decode_chunk(state, z.narrow(2, 1, 2), false);
        CHECK_CLOSE(rest_restored, rest_original, 0.0);
        CHECK_CLOSE(torch::cat({first, rest_restored}, 2), whole, kStreamAtol);

        // A copy forks the stream: continuing it does not disturb the original.
        VaeEncoderState enc;
        const auto video = g.get("inputs.video");
        g.vae->encode_chunk(enc, video.narrow(2, 0, 5));
        VaeEncoderState fork = enc;
        const auto a = g.vae->encode_chunk(fork, video.narrow(2, 5, 4)).mu;
        const auto b = g.vae->encode_chunk(enc, video.narrow(2, 5, 4)).mu;
        CHECK_CLOSE(a, b, 0.0);
        auto enc_restored = VaeEncoderState::restore(enc.snapshot());
        CHECK(enc_restored.frames_in() == 9);

        // Snapshots of the other kind, malformed ones, or of a stream that does not fit, are refused.
        CHECK_THROWS(VaeEncoderState::restore(snap));
        auto malformed = snap;
        malformed.tensors.emplace_back("feat.x", torch::zeros({1, 1, 1, 1, 1}));
        CHECK_THROWS(VaeDecoderState::restore(malformed));
        malformed = snap;
        malformed.counters.erase("frames_in");
        CHECK_THROWS(VaeDecoderState::restore(malformed));
        VaeDecoderState bad = VaeDecoderState::restore(snap);
        CHECK_THROWS(g.vae->decode_chunk(bad, torch::zeros({1, g.config.z_dim, 1, 3, 3})));
        VaeDecoderState other;
        g.vae->decode_chunk(other, z.narrow(2, 0, 1));
        auto g21 = golden21();
        CHECK_THROWS(g21.vae->decode_chunk(other, torch::zeros({1, 16, 1, 4, 4})));
    }

    TEST_CASE("encoder pieces of the wrong length are refused") {
        torch::NoGradGuard no_grad;
        auto g = golden21();
        const auto video = random_video(1, 9, 16, 16, 3);
        VaeEncoderState state;
        CHECK_THROWS(g.vae->encode_chunk(state, video.narrow(2, 0, 4)));
        g.vae->encode_chunk(state, video.narrow(2, 0, 1));
        CHECK_THROWS(g.vae->encode_chunk(state, video.narrow(2, 1, 3)));
        CHECK_THROWS(g.vae->encode(random_video(1, 1, 20, 16, 3)));  // 20 is not a multiple of 8
    }

    TEST_CASE("non-square sizes, odd and longer frame counts") {
        torch::NoGradGuard no_grad;
        auto g22 = golden22();
        // A single image: one latent frame, 2x3 for 32x48 (spec 4.1).
        const auto image = random_video(1, 1, 32, 48, 21);
        const auto zi = g22.vae->encode(image);
        CHECK(zi.sizes() == torch::IntArrayRef({1, 48, 1, 2, 3}));
        CHECK(g22.vae->decode(zi).sizes() == torch::IntArrayRef({1, 3, 1, 32, 48}));

        auto g21 = golden21();
        for (int64_t frames : {1, 5, 13}) {
            const auto video = random_video(1, frames, 24, 40, 22 + frames);
            const auto z = g21.vae->encode(video);
            CHECK(z.sizes() == torch::IntArrayRef({1, 16, 1 + (frames - 1) / 4, 3, 5}));
            const auto out = g21.vae->decode(z);
            CHECK(out.sizes() == torch::IntArrayRef({1, 3, frames, 24, 40}));
            CHECK(torch::isfinite(out).all().item<bool>());
        }
        // The official loop ignores frames after the last whole chunk.
        const auto video = random_video(1, 7, 24, 40, 30);
        CHECK_CLOSE(g21.vae->encode(video), g21.vae->encode(video.narrow(2, 0, 5)), 0.0);

        // Encoding is causal: a frame never changes the latents of earlier frames.
        const auto long_video = random_video(1, 13, 32, 48, 31);
        auto changed = long_video.clone();
        changed.narrow(2, 9, 4).uniform_(-1, 1);
        const auto za = g22.vae->encode(long_video), zb = g22.vae->encode(changed);
        CHECK_CLOSE(za.narrow(2, 0, 3), zb.narrow(2, 0, 3), 0.0);
        CHECK(max_abs_diff(za.narrow(2, 3, 1), zb.narrow(2, 3, 1)) > 1e-3);
    }

    TEST_CASE("a batch of 2 equals each sample alone") {
        torch::NoGradGuard no_grad;
        for (auto* make : {&golden21, &golden22}) {
            auto g = make();
            const auto video = random_video(2, 5, 32, 48, 40);
            const auto z = g.vae->encode(video);
            const auto out = g.vae->decode(z, false);
            for (int64_t i = 0; i < 2; ++i) {
                CHECK_CLOSE(z.narrow(0, i, 1), g.vae->encode(video.narrow(0, i, 1)), kStreamAtol);
                CHECK_CLOSE(out.narrow(0, i, 1), g.vae->decode(z.narrow(0, i, 1), false), kStreamAtol);
            }
        }
    }

    TEST_CASE("other widths build with the right shapes and run") {
        torch::NoGradGuard no_grad;
        WanVAEConfig c = WanVAEConfig::wan22();
        c.dim = 8;
        c.dec_dim = 12;
        c.z_dim = 4;
        c.mean.clear();
        c.std.clear();
        WanVAE vae(c);
        const auto p = vae->named_parameters();
        CHECK(p["encoder.conv1.weight"].sizes() == torch::IntArrayRef({8, 12, 3, 3, 3}));
        CHECK(p["encoder.downsamples.2.downsamples.0.shortcut.weight"].sizes() ==
              torch::IntArrayRef({32, 16, 1, 1, 1}));
        CHECK(p["encoder.head.2.weight"].sizes() == torch::IntArrayRef({8, 32, 3, 3, 3}));
        CHECK(p["conv1.weight"].sizes() == torch::IntArrayRef({8, 8, 1, 1, 1}));
        CHECK(p["decoder.conv1.weight"].sizes() == torch::IntArrayRef({48, 4, 3, 3, 3}));
        CHECK(p["decoder.upsamples.2.upsamples.0.shortcut.weight"].sizes() ==
              torch::IntArrayRef({24, 48, 1, 1, 1}));
        CHECK(p["decoder.upsamples.2.upsamples.3.resample.1.weight"].sizes() ==
              torch::IntArrayRef({24, 24, 3, 3}));
        CHECK(p["decoder.head.2.weight"].sizes() == torch::IntArrayRef({12, 12, 3, 3, 3}));
        const auto z = vae->encode(random_video(1, 5, 16, 32, 50));
        CHECK(z.sizes() == torch::IntArrayRef({1, 4, 2, 1, 2}));
        CHECK(vae->decode(z).sizes() == torch::IntArrayRef({1, 3, 5, 16, 32}));

        // 2.1 with attention at a downsampled scale (the official structure, which its forward never ran).
        WanVAEConfig a = WanVAEConfig::wan21();
        a.dim = a.dec_dim = 4;
        a.z_dim = 4;
        a.attn_scales = {0.5};
        a.mean.clear();
        a.std.clear();
        WanVAE va(a);
        const auto pa = va->named_parameters();
        CHECK(pa.contains("encoder.downsamples.4.to_qkv.weight"));  // Res, Res, down, Res, Attn
        const auto za = va->encode(random_video(1, 5, 16, 16, 51));
        CHECK(va->decode(za).sizes() == torch::IntArrayRef({1, 3, 5, 16, 16}));
    }

    TEST_CASE("the official full-size configurations have the published parameter counts") {
        // Built on the meta device: shapes only, no 2.8 GB allocation.
        const auto meta = torch::TensorOptions().device(torch::kMeta);
        WanVAE v21(WanVAEConfig::wan21(), meta);
        CHECK(parameter_count(*v21) == 126892531);
        WanVAE v22(WanVAEConfig::wan22(), meta);
        CHECK(parameter_count(*v22) == 704688668);
        CHECK(v22->named_parameters().size() == 196);
        CHECK(v22->named_parameters()["decoder.upsamples.0.upsamples.3.time_conv.weight"].sizes() ==
              torch::IntArrayRef({2048, 1024, 3, 1, 1}));
        CHECK(v21->named_parameters()["decoder.upsamples.3.resample.1.weight"].sizes() ==
              torch::IntArrayRef({192, 384, 3, 3}));
    }

    TEST_CASE("init_weights gives the official initialisation") {
        WanVAEConfig c = WanVAEConfig::wan22();
        c.dim = c.dec_dim = 4;
        c.z_dim = 4;
        c.mean.clear();
        c.std.clear();
        WanVAE vae(c);
        {
            torch::NoGradGuard no_grad;
            for (auto& p : vae->parameters())
                p.fill_(5.0);
        }
        vae->init_weights();
        for (const auto& item : vae->named_parameters()) {
            const std::string& name = item.key();
            const torch::Tensor& t = item.value();
            INFO(name);
            if (name.find("gamma") != std::string::npos) {
                CHECK(t.eq(1).all().item<bool>());
            } else if (name.find("proj.weight") != std::string::npos) {
                CHECK(t.eq(0).all().item<bool>());
            } else {
                const double fan_in = t.dim() > 1 ? double(t.numel() / t.size(0)) : 0.0;
                CHECK(t.abs().max().item<double>() > 0.0);
                if (fan_in > 0)
                    CHECK(t.abs().max().item<double>() <= 1.0 / std::sqrt(fan_in) + 1e-6);
            }
        }
        // Trainable: gradients reach the first encoder conv through encode and decode.
        const auto x = random_video(1, 5, 16, 32, 60);
        vae->train();
        const auto enc = vae->encode_all(x);
        (vae->decode(enc.mu, false) - x).square().mean().backward();
        CHECK(vae->encoder->conv1->weight.grad().defined());
        CHECK(vae->encoder->conv1->weight.grad().abs().sum().item<double>() > 0.0);
    }

    TEST_CASE("bf16 weights decode close to fp32") {
        torch::NoGradGuard no_grad;
        auto g = golden21();
        const auto z = g.get("outputs.mu");
        const auto ref = g.vae->decode(z, false);
        g.vae->to(torch::kBFloat16);
        const auto out = g.vae->decode(z, false);
        CHECK((out.scalar_type() == torch::kFloat));
        // bf16 keeps 8 bits of mantissa; through ~40 convolutions the error stays a few percent of the range.
        const double rel = max_abs_diff(out, ref) / ref.abs().max().item<double>();
        MESSAGE("bf16 decode: max abs diff " << max_abs_diff(out, ref) << " (" << rel << " of the range)");
        CHECK(rel < 0.1);
    }

    TEST_CASE("decode speed of the golden inputs (informational)" * doctest::skip()) {
        torch::NoGradGuard no_grad;
        for (auto* make : {&golden21, &golden22}) {
            auto g = make();
            const auto z = g.get("outputs.mu");
            g.vae->decode(z);
            const auto start = std::chrono::steady_clock::now();
            const int reps = 5;
            for (int i = 0; i < reps; ++i)
                g.vae->decode(z);
            const double ms =
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() /
                reps;
            MESSAGE(g.config.version << " decode " << z.sizes() << ": " << ms << " ms ("
                                     << at::get_num_threads() << " threads)");
        }
    }

    TEST_CASE("decode speed of the tiny product configuration (informational)" * doctest::skip()) {
        torch::NoGradGuard no_grad;
        WanVAEConfig c = WanVAEConfig::wan21();
        c.dim = c.dec_dim = 16;
        c.mean.clear();
        c.std.clear();
        WanVAE vae(c);
        const auto z = random_latents(1, 16, 9, 24, 40, 70);  // 33 frames of 192x320
        for (int64_t per_pass : {1, 3, 9}) {
            vae->set_chunks_per_pass(per_pass);
            vae->decode(z.narrow(2, 0, 2));
            const auto start = std::chrono::steady_clock::now();
            vae->decode(z);
            const double ms =
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
            MESSAGE("tiny 2.1 decode 9 latent frames -> 33x192x320, " << per_pass << " chunks/pass: " << ms
                                                                      << " ms");
        }
        vae->set_chunks_per_pass(1);
        vae->to(torch::kBFloat16);
        const auto start = std::chrono::steady_clock::now();
        vae->decode(z);
        const double ms =
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
        MESSAGE("bf16 weights: " << ms << " ms");
    }
}
