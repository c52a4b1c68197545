// The memory's training objectives: retrieval targets cover the whole history, the retrieval loss depends
// only on Omega, the autoregressive cut and prompt choice, first-frame conditioning, and trainable-set
// selection.
#include <set>

#include "model/lora.h"
#include "model/memory_objectives.h"
#include "tests/test_support.h"

using namespace memoreel;

namespace {

WanDiTConfig tiny_dit() {
    WanDiTConfig c;
    c.dim = 64;
    c.num_heads = 2;
    c.ffn_dim = 128;
    c.num_layers = 1;
    c.in_dim = c.out_dim = 4;
    c.text_dim = 16;
    c.text_len = 8;
    c.freq_dim = 32;
    return c;
}

// A DiT whose head is not zero, so predictions depend on the inputs.
WanDiT make_dit() {
    torch::manual_seed(11);
    WanDiT dit(tiny_dit());
    torch::NoGradGuard no_grad;
    dit->head->head->weight.normal_(0, 0.05);
    return dit;
}

ContextTokens random_memory(int64_t batch, int64_t groups) {
    ContextTokens m;
    m.tokens = torch::randn({batch, groups * 2, 64});
    std::vector<double> pos;
    for (int64_t g = 0; g < groups; ++g)
        for (int64_t j = 0; j < 2; ++j)
            pos.insert(pos.end(), {g * 2 + 0.5, 1.5, j * 4 + 1.5});
    m.positions = torch::tensor(pos, torch::kFloat64).reshape({groups * 2, 3});
    m.available = (torch::arange(groups, torch::kFloat64) + 1).mul(2.0).repeat_interleave(2);
    return m;
}

}  // namespace

TEST_SUITE("memory_objectives") {
    TEST_CASE("Omega is k distinct sorted frames, and over many draws it covers the whole history evenly") {
        auto gen = torch::make_generator<torch::CPUGeneratorImpl>(3);
        const int64_t frames = 20, k = 3, draws = 4000;
        std::vector<int64_t> counts(frames, 0);
        for (int64_t i = 0; i < draws / 8; ++i) {
            const auto omega = draw_targets(8, frames, k, gen);
            for (int64_t b = 0; b < 8; ++b) {
                for (int64_t j = 0; j < k; ++j) {
                    const int64_t v = omega[b][j].item<int64_t>();
                    if (j > 0)
                        CHECK(v > omega[b][j - 1].item<int64_t>());
                    counts[v]++;
                }
            }
        }
        // Expected 600 per frame; the binomial sd is ~22, so +-15 % is a > 4-sigma band. Ends are not
        // favoured.
        const double expected = static_cast<double>(draws) * k / frames;
        for (int64_t f = 0; f < frames; ++f) {
            CHECK_MESSAGE(counts[f] > 0.85 * expected, "frame " << f << " drawn " << counts[f]);
            CHECK_MESSAGE(counts[f] < 1.15 * expected, "frame " << f << " drawn " << counts[f]);
        }
    }

    TEST_CASE("the retrieval loss depends only on the Omega frames (gradient check)") {
        auto dit = make_dit();
        torch::manual_seed(1);
        const auto history = torch::randn({2, 4, 6, 4, 4});
        const auto text = dit->embed_text({torch::randn({3, 16}), torch::randn({5, 16})});
        const auto memory = random_memory(2, 3);
        for (bool mask_mode : {false, true}) {
            CAPTURE(mask_mode);
            auto gen = torch::make_generator<torch::CPUGeneratorImpl>(7);
            RetrievalOptions opts;
            opts.targets = 2;
            opts.noise_as_mask = mask_mode;
            torch::Tensor omega;
            FlowLoss l = retrieval_loss(*dit, history, memory, text, opts, gen, &omega);
            // The gradient of the loss with respect to the prediction is non-zero exactly on the Omega
            // frames.
            const auto pred = l.prediction.detach().requires_grad_(true);
            masked_flow_loss(pred, l.target, l.loss_mask).backward();
            const auto per_frame = pred.grad().abs().sum({1, 3, 4});  // [B, F]
            for (int64_t b = 0; b < 2; ++b) {
                for (int64_t f = 0; f < per_frame.size(1); ++f) {
                    const bool in_omega = mask_mode ? (omega[b] == f).any().item<bool>() : true;
                    CHECK_MESSAGE((per_frame[b][f].item<double>() > 0) == in_omega, "b " << b << " f " << f);
                }
            }
            if (mask_mode) {
                CHECK(l.prediction.size(2) == 6);  // the whole history is in the section
                CHECK(l.loss_mask.sum().item<double>() == 4.0);
            } else {
                CHECK(l.prediction.size(2) == 2);  // only Omega
                CHECK(l.loss_mask.min().item<double>() == 1.0);
            }
            CHECK(std::isfinite(l.loss.item<double>()));
        }
    }

    TEST_CASE("retrieval places targets at their true times: the prediction depends on Omega's positions") {
        auto dit = make_dit();
        torch::manual_seed(2);
        const auto x = torch::randn({1, 4, 2, 4, 4});
        const auto text = dit->embed_text({torch::randn({3, 16})});
        const auto memory = random_memory(1, 3);
        torch::NoGradGuard no_grad;
        const auto t = torch::full({1}, 400.0);
        // The context as retrieval_loss builds it (cached mode, history coordinates).
        const auto ctx =
            attend_context(*dit, encode_context(*dit, {}, memory, [&](double) { return text; }), 0.0);
        const auto a = dit_velocity(*dit, x, t, text, ctx, torch::tensor({0.0, 5.0}, torch::kFloat64));
        const auto b = dit_velocity(*dit, x, t, text, ctx, torch::tensor({1.0, 2.0}, torch::kFloat64));
        CHECK(memoreel::test::max_abs_diff(a, b) > 1e-4);
        // Default section times are 0..F-1.
        CHECK_CLOSE(dit_velocity(*dit, x, t, text, ctx, torch::tensor({0.0, 1.0}, torch::kFloat64)),
                    dit_velocity(*dit, x, t, text, ctx), 1e-6);
    }

    TEST_CASE(
        "autoregressive cuts fall on section boundaries with a whole section after, prompt nearest the "
        "start") {
        auto gen = torch::make_generator<torch::CPUGeneratorImpl>(5);
        const Storyboard story({{0, "a"}, {2.0, "b"}, {6.0, "c"}});
        std::set<int64_t> seen;
        for (int i = 0; i < 200; ++i) {
            const ARCut c = draw_cut(16, 4, 16.0, story, gen);
            CHECK(c.boundary % 4 == 0);
            CHECK(c.boundary >= 4);
            CHECK(c.boundary + 4 <= 16);
            seen.insert(c.boundary);
            CHECK(c.start_seconds == doctest::Approx((4.0 * c.boundary - 3) / 16.0));
            CHECK(c.prompt_index == story.index_nearest(c.start_seconds));
        }
        CHECK(seen == std::set<int64_t>{4, 8, 12});
        CHECK(latent_frame_seconds(0, 16) == 0.0);
        CHECK(latent_frame_seconds(1, 16) == doctest::Approx(1.0 / 16));
        CHECK_THROWS(draw_cut(6, 4, 16.0, story, gen));
    }

    TEST_CASE("autoregressive loss: memory and sliding window enter as context and change the prediction") {
        auto dit = make_dit();
        torch::manual_seed(4);
        ARInputs in;
        in.target = torch::randn({1, 4, 2, 4, 4});
        in.memory = random_memory(1, 2);
        in.memory.positions.select(1, 0).sub_(10.0);  // history before the cut
        in.memory.available.sub_(10.0);
        const auto text = dit->embed_text({torch::randn({3, 16})});
        LogitNormalSigmaSampler sigma;
        auto g1 = torch::make_generator<torch::CPUGeneratorImpl>(9);
        const auto plain = autoregressive_loss(*dit, in, text, sigma, g1);
        in.window = 2;
        in.window_latents = torch::randn({1, 4, 2, 4, 4});
        auto g2 = torch::make_generator<torch::CPUGeneratorImpl>(9);
        const auto windowed = autoregressive_loss(*dit, in, text, sigma, g2);
        CHECK(torch::equal(plain.target, windowed.target));  // same draw
        CHECK(memoreel::test::max_abs_diff(plain.prediction, windowed.prediction) > 1e-5);
        CHECK(plain.loss.item<double>() > 0);
        // Memory without availability times is refused (its order against the window would be undefined).
        in.memory.available = torch::Tensor();
        auto g3 = torch::make_generator<torch::CPUGeneratorImpl>(9);
        CHECK_THROWS_WITH(autoregressive_loss(*dit, in, text, sigma, g3), doctest::Contains("availability"));
    }

    TEST_CASE("base loss: the conditioned first frame is clean and outside the loss") {
        auto dit = make_dit();
        torch::manual_seed(6);
        const auto latents = torch::randn({8, 4, 3, 4, 4});
        const auto text = dit->embed_text(std::vector<torch::Tensor>(8, torch::randn({3, 16})));
        BaseOptions opts;
        opts.first_frame_probability = 0.5;
        auto gen = torch::make_generator<torch::CPUGeneratorImpl>(1);
        const auto l = base_loss(*dit, latents, text, opts, gen);
        const auto first = l.loss_mask.select(1, 0);
        CHECK(first.sum().item<double>() > 0);
        CHECK(first.sum().item<double>() < 8);
        CHECK(l.loss_mask.slice(1, 1).min().item<double>() == 1.0);
        CHECK(std::isfinite(l.loss.item<double>()));
    }

    TEST_CASE("weighted flow loss: uniform weights give the masked loss; a heavy cell counts more") {
        torch::manual_seed(7);
        const auto pred = torch::randn({2, 3, 2, 4, 5}), target = torch::randn({2, 3, 2, 4, 5});
        const auto mask = torch::tensor({{1.0f, 0.0f}, {1.0f, 1.0f}});
        const auto uniform = weighted_flow_loss(pred, target, mask, torch::ones({2, 2, 4, 5}));
        CHECK(uniform.item<double>() == doctest::Approx(masked_flow_loss(pred, target, mask).item<double>()));
        // All the error in one cell: weighting that cell raises the loss, weighting another lowers it.
        auto one = target.clone();
        one.index_put_({0, torch::indexing::Slice(), 0, 1, 2},
                       one.index({0, torch::indexing::Slice(), 0, 1, 2}) + 1);
        auto w = torch::ones({2, 2, 4, 5});
        const double plain = weighted_flow_loss(one, target, mask, w).item<double>();
        w[0][0][1][2] = 4.0;
        CHECK(weighted_flow_loss(one, target, mask, w).item<double>() > 3.0 * plain);
        w = torch::ones({2, 2, 4, 5});
        w[0][0][3][3] = 4.0;
        CHECK(weighted_flow_loss(one, target, mask, w).item<double>() < plain);
        CHECK_THROWS(weighted_flow_loss(pred, target, mask, torch::ones({2, 2, 4})));
    }

    TEST_CASE("trainable sets") {
        auto dit = make_dit();
        CHECK(parse_trainable_set("encoder+lora") == TrainableSet::kEncoderLora);
        CHECK_THROWS(parse_trainable_set("some"));
        CHECK_THROWS(select_trainable(*dit, nullptr, TrainableSet::kEncoderLora));  // no adapters
        const auto all = select_trainable(*dit, nullptr, TrainableSet::kFull);
        CHECK(all.size() == dit->parameters().size());
        attach_lora(*dit, {4, 4.0, {}});
        MemoryEncoderConfig mc;
        mc.rh = mc.rw = 2;
        mc.rt = 2;
        mc.variant = "without_lr";
        mc.hr_channels = {8, 8, 8, 8};
        mc.attn_heads = 2;
        MemoryEncoder enc(mc, dit);
        const auto lora = select_trainable(*dit, enc.get(), TrainableSet::kEncoderLora);
        CHECK(lora.size() == lora_parameters(*dit).size() + enc->parameters().size());
        CHECK(!dit->blocks[0]->named_parameters()["self_attn.q.weight"].requires_grad());
        CHECK(dit->blocks[0]->named_parameters()["self_attn.q.lora_up"].requires_grad());
        const auto only = select_trainable(*dit, enc.get(), TrainableSet::kEncoder);
        CHECK(only.size() == enc->parameters().size());
    }
}
