// The cached context mode: context keys/values computed once equal what the joint forward computes where the
// two must agree (one block), encoding group by group equals encoding at once, context is time-causal, a
// batch-1 context serves a CFG batch, and the memory's cross-attention enhancement starts as a no-op.
#include "model/context_kv.h"
#include "model/memory_encoder.h"
#include "model/rope.h"
#include "tests/test_support.h"

using namespace memoreel;

namespace {

WanDiTConfig small_config(int64_t layers) {
    WanDiTConfig c;
    c.in_dim = c.out_dim = 4;
    c.dim = 48;
    c.ffn_dim = 96;
    c.freq_dim = 32;
    c.text_dim = 16;
    c.text_len = 6;
    c.num_heads = 4;
    c.num_layers = layers;
    c.patch_size = {1, 2, 2};
    return c;
}

WanDiT random_dit(int64_t layers) {
    torch::manual_seed(11);
    WanDiT dit(small_config(layers));
    torch::NoGradGuard ng;
    // init_weights zeroes the head (an untrained model predicts zero); give it weights so outputs differ.
    dit->head->head->weight.normal_(0.0, 0.05);
    dit->eval();
    return dit;
}

// Memory-like context: n groups of 3 tokens at group centres -2g-0.5 (oldest first), available at the
// group's end.
ContextTokens groups_of_tokens(int64_t batch, int64_t groups, int64_t dim) {
    ContextTokens c;
    c.tokens = torch::randn({batch, groups * 3, dim});
    std::vector<double> pos, avail;
    for (int64_t g = 0; g < groups; ++g) {
        for (int64_t i = 0; i < 3; ++i) {
            pos.insert(pos.end(), {2.0 * g + 0.5, double(i), double(i % 2)});
            avail.push_back(2.0 * (g + 1));
        }
    }
    c.positions = torch::tensor(pos, torch::kFloat64).reshape({groups * 3, 3});
    c.available = torch::tensor(avail, torch::kFloat64);
    return c;
}

ContextTokens take(const ContextTokens& c, int64_t begin, int64_t end) {
    ContextTokens out;
    out.tokens = c.tokens.slice(1, begin, end);
    out.positions = c.positions.slice(0, begin, end);
    out.available = c.available.slice(0, begin, end);
    return out;
}

}  // namespace

TEST_SUITE("context_kv") {
    TEST_CASE("with one block the cached mode equals the joint forward (keys depend only on the inputs)") {
        torch::NoGradGuard ng;
        auto dit = random_dit(1);
        torch::manual_seed(3);
        const auto x = torch::randn({2, 4, 2, 4, 6});
        const auto text = dit->embed_text({torch::randn({4, 16}), torch::randn({6, 16})});
        ContextTokens ctx = groups_of_tokens(1, 3, 48);
        const double now = 6.0;
        ContextTokens joint = ctx;
        joint.tokens = ctx.tokens.expand({2, -1, -1});
        joint.positions = ctx.positions.clone();
        joint.positions.select(1, 0).sub_(now);
        const auto t = torch::tensor({300.0, 800.0});
        const auto expected = dit_velocity(*dit, x, t, text, &joint);
        // The context's text is irrelevant with one block (it enters after the keys are taken).
        const ContextKV kv = encode_context(*dit, {}, ctx, [&](double) { return text.slice(0, 0, 1); });
        const auto got = dit_velocity(*dit, x, t, text, attend_context(*dit, kv, now));
        CHECK_CLOSE(got, expected, 2e-5);
        CHECK(memoreel::test::max_abs_diff(got, dit_velocity(*dit, x, t, text)) > 1e-3);
    }

    TEST_CASE("encoding group by group equals encoding at once, later tokens never change earlier ones") {
        torch::NoGradGuard ng;
        auto dit = random_dit(3);
        torch::manual_seed(4);
        const auto text = dit->embed_text({torch::randn({5, 16})});
        const ContextText text_at = [&](double) { return text; };
        const ContextTokens ctx = groups_of_tokens(1, 4, 48);
        const ContextKV whole = encode_context(*dit, {}, ctx, text_at);
        REQUIRE(whole.length() == 12);
        REQUIRE(whole.layers.size() == 3);
        for (const std::vector<int64_t>& cuts :
             {std::vector<int64_t>{0, 3, 6, 9, 12}, {0, 6, 12}, {0, 9, 12}}) {
            ContextKV inc;
            for (size_t i = 0; i + 1 < cuts.size(); ++i)
                inc.append(encode_context(*dit, inc, take(ctx, cuts[i], cuts[i + 1]), text_at));
            for (size_t l = 0; l < 3; ++l) {
                CHECK_CLOSE(inc.layers[l].k, whole.layers[l].k, 1e-5);
                CHECK_CLOSE(inc.layers[l].v, whole.layers[l].v, 1e-5);
            }
            CHECK_CLOSE(inc.positions, whole.positions, 0.0);
        }
        // Changing the last group changes its own keys in the second block onwards, never the earlier
        // groups'.
        ContextTokens changed = ctx;
        changed.tokens = ctx.tokens.clone();
        changed.tokens.slice(1, 9, 12).add_(torch::randn({1, 3, 48}));
        const ContextKV other = encode_context(*dit, {}, changed, text_at);
        CHECK_CLOSE(other.layers[2].k.slice(1, 0, 9), whole.layers[2].k.slice(1, 0, 9), 0.0);
        CHECK(memoreel::test::max_abs_diff(other.layers[2].k.slice(1, 9, 12),
                                           whole.layers[2].k.slice(1, 9, 12)) > 1e-3);
        // Changing the first group reaches the later groups from the second block on.
        changed.tokens = ctx.tokens.clone();
        changed.tokens.slice(1, 0, 3).add_(torch::randn({1, 3, 48}));
        const ContextKV early = encode_context(*dit, {}, changed, text_at);
        CHECK_CLOSE(early.layers[0].k.slice(1, 3, 12), whole.layers[0].k.slice(1, 3, 12), 0.0);
        CHECK(memoreel::test::max_abs_diff(early.layers[1].k.slice(1, 3, 12),
                                           whole.layers[1].k.slice(1, 3, 12)) > 1e-4);
    }

    TEST_CASE("each group cross-attends to the text of its own time") {
        torch::NoGradGuard ng;
        auto dit = random_dit(2);
        torch::manual_seed(6);
        const auto a = dit->embed_text({torch::randn({5, 16})});
        const auto b = dit->embed_text({torch::randn({5, 16})});
        const ContextTokens ctx = groups_of_tokens(1, 2, 48);
        const auto one = encode_context(*dit, {}, ctx, [&](double) { return a; });
        const auto two = encode_context(*dit, {}, ctx, [&](double t) { return t <= 2.0 ? a : b; });
        // Group 0 (available at 2) is the same; group 1's second-block keys differ.
        CHECK_CLOSE(two.layers[1].k.slice(1, 0, 3), one.layers[1].k.slice(1, 0, 3), 0.0);
        CHECK(memoreel::test::max_abs_diff(two.layers[1].k.slice(1, 3, 6), one.layers[1].k.slice(1, 3, 6)) >
              1e-4);
    }

    TEST_CASE("a batch-1 context serves a batch of 2 exactly as a repeated one, relative positions only") {
        torch::NoGradGuard ng;
        auto dit = random_dit(2);
        torch::manual_seed(7);
        const auto x = torch::randn({2, 4, 2, 4, 4});
        const auto text = dit->embed_text({torch::randn({3, 16}), torch::randn({3, 16})});
        const ContextTokens ctx = groups_of_tokens(1, 3, 48);
        const auto kv1 = encode_context(*dit, {}, ctx, [&](double) { return text.slice(0, 0, 1); });
        ContextTokens ctx2 = ctx;
        ctx2.tokens = ctx.tokens.repeat({2, 1, 1});
        const auto kv2 = encode_context(*dit, {}, ctx2, [&](double) { return text.slice(0, 0, 1); });
        const auto t = torch::tensor({100.0, 900.0});
        const auto v1 = dit_velocity(*dit, x, t, text, attend_context(*dit, kv1, 6.0));
        CHECK_CLOSE(v1, dit_velocity(*dit, x, t, text, attend_context(*dit, kv2, 6.0)), 1e-5);
        // Shifting the stored context by 5 and `now` by 5 changes nothing.
        ContextKV shifted = kv1;
        shifted.positions = kv1.positions.clone();
        shifted.positions.select(1, 0).add_(5.0);
        CHECK_CLOSE(dit_velocity(*dit, x, t, text, attend_context(*dit, shifted, 11.0)), v1, 1e-5);
        // Placing the section elsewhere relative to the memory does change it.
        CHECK(memoreel::test::max_abs_diff(dit_velocity(*dit, x, t, text, attend_context(*dit, kv1, 20.0)),
                                           v1) > 1e-4);
    }

    TEST_CASE("gradients reach the memory tokens through the cached keys with the DiT frozen") {
        auto dit = random_dit(2);
        for (auto& p : dit->parameters())
            p.set_requires_grad(false);
        torch::manual_seed(9);
        ContextTokens ctx = groups_of_tokens(1, 2, 48);
        ctx.tokens.set_requires_grad(true);
        const auto text = dit->embed_text({torch::randn({3, 16})});
        const auto kv = encode_context(*dit, {}, ctx, [&](double) { return text; });
        const auto v = dit_velocity(*dit, torch::randn({1, 4, 2, 4, 4}), torch::tensor({500.0}), text,
                                    attend_context(*dit, kv, 4.0));
        v.pow(2).sum().backward();
        REQUIRE(ctx.tokens.grad().defined());
        // Every token, the older group's too, reaches the section's output.
        CHECK(ctx.tokens.grad().abs().sum(std::vector<int64_t>{0, 2}).min().item<double>() > 0);
    }

    TEST_CASE("positions beyond the horizon are rescaled into it, order kept") {
        const auto pos =
            torch::tensor({0.5, 0.0, 0.0, 10.5, 1.0, 2.0, 98.5, 0.0, 0.0}, torch::kFloat64).reshape({3, 3});
        const auto free = context_rope_positions(pos, 100.0, 0.0);
        CHECK(free[0][0].item<double>() == doctest::Approx(-99.5));
        const auto scaled = context_rope_positions(pos, 100.0, 20.0);
        CHECK(scaled[0][0].item<double>() == doctest::Approx(-20.0));
        CHECK(scaled[1][0].item<double>() == doctest::Approx(-89.5 * 20.0 / 99.5));
        CHECK(scaled[2][0].item<double>() == doctest::Approx(-1.5 * 20.0 / 99.5));
        CHECK(scaled[1][1].item<double>() == 1.0);                          // h and w untouched
        CHECK_CLOSE(context_rope_positions(pos, 100.0, 200.0), free, 0.0);  // within the horizon: unchanged
        // With the last 4 frames kept exact (a window): those keep their times, older ones fill [-20, -4].
        const auto kept = context_rope_positions(pos, 100.0, TimeHorizon(20.0, 4.0));
        CHECK(kept[2][0].item<double>() == doctest::Approx(-1.5));
        CHECK(kept[0][0].item<double>() == doctest::Approx(-20.0));
        CHECK(kept[1][0].item<double>() == doctest::Approx(-4.0 - (89.5 - 4.0) * 16.0 / 95.5));
        CHECK_THROWS(context_rope_positions(pos, 100.0, TimeHorizon(4.0, 4.0)));
    }

    TEST_CASE("the cross-attention enhancement is registered per DiT block and starts as a no-op") {
        torch::NoGradGuard ng;
        auto dit = random_dit(2);
        MemoryEncoderConfig mc;
        mc.set_rates(parse_rates("2x2x2"));
        mc.hr_channels = {8, 16};
        mc.attn_layers = 1;
        mc.attn_heads = 2;
        mc.cross_attn_features = true;
        MemoryEncoder enc(mc, dit);
        int64_t found = 0;
        for (const auto& p : enc->named_parameters())
            found += p.key().rfind("dit_cross_attn.", 0) == 0;
        CHECK(found == 2 * 10);  // q, k, v, o (weight, bias) and norm_q, norm_k per block
        CHECK(enc->named_parameters().contains("dit_cross_attn.1.o.weight"));

        torch::manual_seed(8);
        const auto x = torch::randn({1, 4, 2, 4, 4});
        const auto text = dit->embed_text({torch::randn({3, 16})});
        const auto t = torch::tensor({500.0});
        const auto features = torch::randn({1, 5, 16});
        ContextAttention with;
        with.cross = enc->cross_attention(features);
        REQUIRE(with.cross.size() == 2);
        const auto base = dit_velocity(*dit, x, t, text, ContextAttention{});
        CHECK_CLOSE(dit_velocity(*dit, x, t, text, with), base, 0.0);
        enc->dit_cross_attn->ptr<MemoryCrossAttentionImpl>(0)->o->weight.normal_(0.0, 0.1);
        CHECK(memoreel::test::max_abs_diff(dit_velocity(*dit, x, t, text, with), base) > 1e-4);
    }
}
