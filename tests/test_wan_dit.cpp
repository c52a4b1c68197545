// WanModel parity with the official implementation (golden/wan/dit_tiny_ti2v.safetensors) and invariants that
// must hold beyond the golden configuration: batching and padding, non-square grids, RoPE at other head dims
// and at real-valued positions, other widths, the token-level entry, bf16 weights, initialisation, parameter
// counts.
#include <cmath>
#include <regex>
#include <set>

#include "model/attention.h"
#include "model/checkpoint.h"
#include "model/rope.h"
#include "model/wan_dit.h"
#include "tests/test_support.h"

using namespace memoreel;
using memoreel::test::golden_file;
using memoreel::test::max_abs_diff;

namespace {

// fp32 parity tolerance (golden README: atol 1e-4 for fp32 ports; outputs are O(1), |max| ~ 5).
constexpr double kGoldenAtol = 1e-4;
// Same model, same maths, only the batch composition / summation order differs.
constexpr double kInvariantAtol = 2e-5;

const TensorSource& golden() {
    static const TensorSource src = TensorSource::open(golden_file("dit_tiny_ti2v.safetensors"));
    return src;
}

WanDiTConfig golden_config() {
    return WanDiTConfig::from_json(nlohmann::json::parse(golden().metadata().at("config")), "golden");
}

torch::Tensor g(const std::string& name) {
    return golden().get(name);
}

WanDiT golden_model() {
    WanDiT model(golden_config());
    LoadOptions opts;
    opts.prefix = "weights.";
    load_module(*model, golden(), opts);
    model->eval();
    return model;
}

// A small config unlike the golden one: other width, head_dim 48 (RoPE split 16/16/16), 3 layers.
WanDiTConfig other_config() {
    WanDiTConfig c;
    c.in_dim = 4;
    c.out_dim = 6;
    c.dim = 96;
    c.num_heads = 2;
    c.ffn_dim = 160;
    c.freq_dim = 32;
    c.text_dim = 24;
    c.text_len = 10;
    c.num_layers = 3;
    return c;
}

// Gives a freshly initialised model non-degenerate weights (the official init zeroes the head).
void randomise(WanDiTImpl& model, uint64_t seed) {
    torch::NoGradGuard no_grad;
    torch::manual_seed(seed);
    for (auto& p : model.named_parameters()) {
        const auto& name = p.key();
        auto& t = p.value();
        if (name.find("norm") != std::string::npos && name.find("weight") != std::string::npos) {
            t.normal_(1.0, 0.1);
        } else if (t.dim() >= 2 && name.find("modulation") == std::string::npos) {
            t.normal_(0.0, 1.0 / std::sqrt(double(t.numel() / t.size(0))));
        } else {
            t.normal_(0.0, 0.2);
        }
    }
}

double rel_diff(const torch::Tensor& a, const torch::Tensor& b) {
    return max_abs_diff(a, b) / b.abs().max().item<double>();
}

// Parameter count from the formula of spec section 1, generalised from (text 4096, freq 256, patch 4) to the
// config.
int64_t formula_count(const WanDiTConfig& c) {
    const int64_t d = c.dim, f = c.ffn_dim, p = c.patch_size[0] * c.patch_size[1] * c.patch_size[2];
    const int64_t block = 2 * (4 * (d * d + d) + 2 * d) + 2 * d + (2 * d * f + f + d) + 6 * d;
    const int64_t embeddings = p * c.in_dim * d + d + c.text_dim * d + d + d * d + d + c.freq_dim * d + d +
                               d * d + d + 6 * d * d + 6 * d;
    const int64_t head = 2 * d + p * c.out_dim * d + p * c.out_dim;
    return c.num_layers * block + embeddings + head;
}

int64_t shape_count(const WanDiTConfig& c) {
    int64_t n = 0;
    for (const auto& [name, shape] : WanDiTImpl::parameter_shapes(c)) {
        int64_t k = 1;
        for (auto s : shape)
            k *= s;
        n += k;
    }
    return n;
}

// Per-token timesteps for a sample: frame 0 clean (TI2V), t elsewhere (padding included).
torch::Tensor ti2v_t(int64_t seq_len, int64_t frame0_tokens, float t) {
    auto out = torch::full({seq_len}, t);
    out.narrow(0, 0, frame0_tokens).zero_();
    return out;
}

}  // namespace

TEST_SUITE("wan_dit") {
    TEST_CASE("parameter names and shapes are the official ones, the golden checkpoint loads strictly") {
        const auto config = golden_config();
        WanDiT model(config);
        std::map<std::string, std::vector<int64_t>> expected;
        for (const auto& name : golden().names()) {
            if (name.rfind("weights.", 0) == 0)
                expected[name.substr(8)] = golden().info(name).shape;
        }
        REQUIRE(expected.size() == 69);
        const auto params = model->named_parameters();
        CHECK(params.size() == expected.size());
        int64_t numel = 0;
        for (const auto& p : params) {
            REQUIRE_MESSAGE(expected.count(p.key()), "unexpected parameter " << p.key());
            CHECK_MESSAGE(p.value().sizes().vec() == expected[p.key()], p.key());
            numel += p.value().numel();
        }
        CHECK(numel == 589248);
        CHECK(module_tensors(*model).size() == expected.size());  // no buffers
        // parameter_shapes lists the same, in named_parameters order.
        const auto shapes = WanDiTImpl::parameter_shapes(config);
        REQUIRE(shapes.size() == params.size());
        for (size_t i = 0; i < shapes.size(); ++i) {
            CHECK((shapes[i].first == params[i].key()));
            CHECK((shapes[i].second == params[i].value().sizes().vec()));
        }
        // Official state_dict order within a block.
        CHECK(params[12].key() == "blocks.0.modulation");
        CHECK(params[13].key() == "blocks.0.self_attn.q.weight");
        CHECK(params[21].key() == "blocks.0.self_attn.norm_q.weight");
        CHECK(params[23].key() == "blocks.0.norm3.weight");
        LoadOptions opts;
        opts.prefix = "weights.";
        CHECK_NOTHROW(load_module(*model, golden(), opts));
    }

    TEST_CASE("case A: output and every intermediate match the official model") {
        torch::NoGradGuard no_grad;
        auto model = golden_model();
        const auto x = g("inputs.x"), ctx = g("inputs.context"), t = g("inputs.t");
        const int64_t seq_len = g("inputs.seq_len")[0].item<int64_t>();
        std::map<std::string, double> diffs;
        const auto check = [&](const std::string& name, const torch::Tensor& ours, const torch::Tensor& ref,
                               double atol) {
            REQUIRE_MESSAGE(ours.sizes() == ref.sizes(),
                            name << ": " << ours.sizes() << " vs " << ref.sizes());
            diffs[name] = max_abs_diff(ours, ref);
            CHECK_MESSAGE(diffs[name] <= atol, name << ": max abs diff " << diffs[name]);
        };

        // Time embedding on the check timesteps.
        const auto st = g("checks.sinusoid_t");
        check("sinusoid", sinusoidal_embedding(256, st), g("checks.sinusoid"), kGoldenAtol);
        const auto te = model->embed_time(st.view({1, -1}));
        check("time_embedding", te.e[0], g("checks.time_embedding"), kGoldenAtol);
        check("time_projection", te.e0[0].reshape({5, 768}), g("checks.time_projection"), kGoldenAtol);

        // RoPE table: position p on every axis gives row p of the official table.
        const auto p = torch::arange(1024, torch::kFloat64).view({1024, 1}).expand({1024, 3});
        const auto rope = rope_cos_sin(p, 64);
        check("rope_cos", rope.cos, g("checks.rope_cos"), 1e-7);
        check("rope_sin", rope.sin, g("checks.rope_sin"), 1e-7);

        const auto pe = model->patch_embed(x);
        CHECK((pe.grid == std::array<int64_t, 3>{3, 4, 4}));
        check("patch_embed", pe.tokens, g("checks.patch_embed").flatten(2).transpose(1, 2), kGoldenAtol);
        check("context_emb", model->embed_text({ctx[0], ctx[1]}), g("checks.context_emb"), kGoldenAtol);

        WanDiTTrace trace;
        const auto out = model->forward({x[0], x[1]}, t, {ctx[0], ctx[1]}, seq_len, &trace);
        REQUIRE(out.size() == 2);
        REQUIRE(trace.block_out.size() == 2);
        check("block0_self_attn_out", trace.self_attn_out[0], g("checks.block0_self_attn_out"), kGoldenAtol);
        check("block0_cross_attn_out", trace.cross_attn_out[0], g("checks.block0_cross_attn_out"),
              kGoldenAtol);
        check("block0_out", trace.block_out[0], g("checks.block0_out"), kGoldenAtol);
        check("block1_out", trace.block_out[1], g("checks.block1_out"), kGoldenAtol);
        check("head_out", trace.head_out, g("checks.head_out"), kGoldenAtol);
        CHECK((out[0].scalar_type() == torch::kFloat));
        check("out", torch::stack(out), g("outputs.out"), kGoldenAtol);
        for (const auto& [name, d] : diffs)
            MESSAGE(name << " max abs diff " << d);
    }

    TEST_CASE("case B: padding, key mask, different context lengths and frame counts") {
        torch::NoGradGuard no_grad;
        auto model = golden_model();
        const int64_t seq_len = g("inputs.b.seq_len")[0].item<int64_t>();
        const auto out = model->forward({g("inputs.b.x0"), g("inputs.b.x1")}, g("inputs.b.t"),
                                        {g("inputs.b.context0"), g("inputs.b.context1")}, seq_len);
        REQUIRE(out.size() == 2);
        CHECK_CLOSE(out[0], g("outputs.b.out0"), kGoldenAtol);
        CHECK_CLOSE(out[1], g("outputs.b.out1"), kGoldenAtol);
        MESSAGE("b.out0 max abs diff " << max_abs_diff(out[0], g("outputs.b.out0")));
        MESSAGE("b.out1 max abs diff " << max_abs_diff(out[1], g("outputs.b.out1")));
        // Sample 1 alone without padding gives the same result.
        const auto alone =
            model->forward({g("inputs.b.x1")}, g("inputs.b.t").narrow(0, 1, 1).narrow(1, 0, 32),
                           {g("inputs.b.context1")}, 32);
        CHECK_CLOSE(alone[0], g("outputs.b.out1"), kGoldenAtol);
    }

    TEST_CASE("a batch equals each sample alone: non-square grids, odd frame counts, padding") {
        torch::NoGradGuard no_grad;
        auto model = golden_model();
        torch::manual_seed(5);
        // Token grids 3x2x6 (36), 5x3x2 (30) and 1x4x4 (16); contexts of 3, 16 and 1 rows.
        const std::vector<torch::Tensor> xs = {torch::randn({16, 3, 4, 12}), torch::randn({16, 5, 6, 4}),
                                               torch::randn({16, 1, 8, 8})};
        const std::vector<torch::Tensor> ctx = {torch::randn({3, 64}), torch::randn({16, 64}),
                                                torch::randn({1, 64})};
        const std::vector<int64_t> lens = {36, 30, 16};
        const int64_t seq_len = 40;
        const auto t = torch::rand({3, seq_len}) * 1000;
        const auto batch = model->forward(xs, t, ctx, seq_len);
        REQUIRE(batch.size() == 3);
        double worst = 0;
        for (size_t i = 0; i < xs.size(); ++i) {
            CHECK((batch[i].sizes() == xs[i].sizes()));
            const auto alone =
                model->forward({xs[i]}, t.narrow(0, i, 1).narrow(1, 0, lens[i]), {ctx[i]}, lens[i]);
            CHECK_CLOSE(batch[i], alone[0], kInvariantAtol);
            worst = std::max(worst, max_abs_diff(batch[i], alone[0]));
            CHECK(batch[i].abs().max().item<double>() > 0.1);
        }
        MESSAGE("batch vs alone max abs diff " << worst);
        // The timestep of a padding token has no effect on real tokens (its key is masked).
        auto t2 = t.clone();
        t2.narrow(1, 36, 4).fill_(3.0);
        CHECK_CLOSE(model->forward(xs, t2, ctx, seq_len)[0], batch[0], kInvariantAtol);
        // A real token's own timestep does change the output.
        t2.narrow(1, 0, 1).fill_(999.0);
        CHECK(max_abs_diff(model->forward(xs, t2, ctx, seq_len)[0], batch[0]) > 1e-3);
    }

    TEST_CASE("forward_tokens is permutation-equivariant when positions and timesteps move with the tokens") {
        // The memory feature calls forward_tokens on sequences that are not a grid in order; nothing may
        // assume the grid order beyond the RoPE positions it is given.
        torch::NoGradGuard no_grad;
        auto model = golden_model();
        torch::manual_seed(11);
        const auto x = torch::randn({1, 16, 2, 6, 4});
        auto pe = model->patch_embed(x);
        const int64_t n = pe.tokens.size(1);
        auto rope = model->grid_rope(pe.grid);
        const auto te = model->embed_time(torch::rand({1, n}) * 1000);
        const auto text = model->embed_text({torch::randn({9, 64})});
        const auto ref = model->forward_tokens(pe.tokens, rope, te.e0, te.e, text, {});
        const auto perm = torch::randperm(n);
        const auto out = model->forward_tokens(
            pe.tokens.index_select(1, perm), {rope.cos.index_select(0, perm), rope.sin.index_select(0, perm)},
            te.e0.index_select(1, perm), te.e.index_select(1, perm), text, {});
        CHECK_CLOSE(out, ref.index_select(1, perm), kInvariantAtol);
        // Batched tables [B, L, D/2] give the same as shared [L, D/2].
        const auto out_b = model->forward_tokens(pe.tokens, {rope.cos.unsqueeze(0), rope.sin.unsqueeze(0)},
                                                 te.e0, te.e, text, torch::tensor({n}));
        CHECK_CLOSE(out_b, ref, 1e-6);
    }

    TEST_CASE("RoPE at integer positions equals the official complex128 table for other head dims") {
        for (const int64_t d : {12, 48, 64, 96, 128}) {
            CAPTURE(d);
            // Official: axis widths d - 4(d/6), 2(d/6), 2(d/6); per axis freqs 1/10000^(2j/d_axis); angle
            // pos*freq.
            const int64_t dh = 2 * (d / 6), dt = d - 2 * dh;
            std::vector<std::pair<int64_t, int64_t>> pairs;  // (axis, axis width) of each complex column
            for (int64_t j = 0; j < dt / 2; ++j)
                pairs.push_back({0, dt});
            for (int64_t a = 1; a <= 2; ++a)
                for (int64_t j = 0; j < dh / 2; ++j)
                    pairs.push_back({a, dh});
            REQUIRE(int64_t(pairs.size()) == d / 2);
            const int64_t n = 1024;
            auto cos_ref = torch::empty({n, d / 2}, torch::kFloat64);
            auto sin_ref = torch::empty({n, d / 2}, torch::kFloat64);
            auto cr = cos_ref.accessor<double, 2>();
            auto sr = sin_ref.accessor<double, 2>();
            std::vector<int64_t> first = {0, dt / 2, dt / 2 + dh / 2};
            for (int64_t c = 0; c < d / 2; ++c) {
                const auto [axis, width] = pairs[c];
                const double freq = 1.0 / std::pow(10000.0, double(2 * (c - first[axis])) / double(width));
                for (int64_t p = 0; p < n; ++p) {
                    cr[p][c] = std::cos(double(p) * freq);
                    sr[p][c] = std::sin(double(p) * freq);
                }
            }
            // Position p on one axis and distinct values on the others: each column must read its own axis.
            const auto p = torch::arange(n, torch::kFloat64);
            for (int64_t axis = 0; axis < 3; ++axis) {
                auto pos = torch::stack({p + 7, p * 3 + 1, p * 5 + 2}, 1);
                pos.select(1, axis).copy_(p);
                const auto rope = rope_cos_sin(pos, d);
                REQUIRE((rope.cos.scalar_type() == torch::kFloat));
                for (int64_t c = 0; c < d / 2; ++c) {
                    if (pairs[c].first != axis)
                        continue;
                    CHECK(max_abs_diff(rope.cos.select(1, c), cos_ref.select(1, c).to(torch::kFloat)) <=
                          1e-7);
                    CHECK(max_abs_diff(rope.sin.select(1, c), sin_ref.select(1, c).to(torch::kFloat)) <=
                          1e-7);
                }
            }
        }
        CHECK((rope_axis_dims(128) == std::array<int64_t, 3>{44, 42, 42}));
        CHECK((rope_axis_dims(64) == std::array<int64_t, 3>{24, 20, 20}));
        CHECK((rope_axis_dims(48) == std::array<int64_t, 3>{16, 16, 16}));
    }

    TEST_CASE("RoPE is relative: a constant shift of real-valued positions leaves q.k unchanged") {
        torch::manual_seed(3);
        for (const int64_t d : {48, 64, 128}) {
            CAPTURE(d);
            const int64_t l = 20, heads = 3;
            const auto q = torch::randn({1, l, heads, d});
            const auto k = torch::randn({1, l, heads, d});
            // Fractional, negative positions (memory tokens sit at region centres and at negative times).
            const auto pos = (torch::rand({1, l, 3}, torch::kFloat64) - 0.5) * 60;
            const auto scores = [&](const torch::Tensor& positions) {
                const auto r = rope_cos_sin(positions, d);
                const auto qr = apply_rope(q, r), kr = apply_rope(k, r);
                return torch::einsum("blhd,bmhd->bhlm", {qr, kr});
            };
            const auto base = scores(pos);
            const auto shift = torch::tensor({-13.25, 2.5, 0.375}, torch::kFloat64).view({1, 1, 3});
            CHECK(max_abs_diff(scores(pos + shift), base) < 1e-4 * base.abs().max().item<double>());
            // ... while moving one axis of one token does change them, and rotation keeps norms.
            auto moved = pos.clone();
            moved[0][0][1] += 1.0;
            CHECK(max_abs_diff(scores(moved), base) > 1e-3);
            const auto r = rope_cos_sin(pos, d);
            CHECK_CLOSE(apply_rope(q, r).pow(2).sum(-1), q.pow(2).sum(-1), 1e-3);
            // Padding rows are the identity.
            const auto padded = rope_pad({r.cos[0], r.sin[0]}, l + 4);
            const auto x = torch::randn({l + 4, heads, d});
            CHECK(torch::equal(apply_rope(x, padded).narrow(0, l, 4), x.narrow(0, l, 4)));
        }
        // Grid helper: w fastest, then h, then f, with offsets and steps.
        const auto gp = rope_grid_positions(2, 3, 4, {-4.0, 0.5, 0.5}, {2.0, 2.0, 2.0});
        REQUIRE((gp.sizes() == torch::IntArrayRef({24, 3})));
        CHECK(gp[0][0].item<double>() == -4.0);
        CHECK(gp[1][2].item<double>() == 2.5);
        CHECK(gp[4][1].item<double>() == 2.5);
        CHECK(gp[12][0].item<double>() == -2.0);
    }

    TEST_CASE("attention: key mask equals truncated keys, chunked manual path equals one block") {
        torch::manual_seed(1);
        const auto q = torch::randn({2, 37, 3, 16});
        const auto k = torch::randn({2, 29, 3, 16});
        const auto v = torch::randn({2, 29, 3, 16});
        const auto lens = torch::tensor({29, 11});
        const auto out = attention(q, k, v, lens);
        CHECK((out.sizes() == q.sizes()));
        // Sample 1 with its keys cut to 11.
        const auto cut = attention(q.narrow(0, 1, 1), k.narrow(0, 1, 1).narrow(1, 0, 11),
                                   v.narrow(0, 1, 1).narrow(1, 0, 11));
        CHECK_CLOSE(out.narrow(0, 1, 1), cut, 1e-5);
        // Naive softmax(QK^T/sqrt(d))V for sample 0.
        const auto qs = q[0].transpose(0, 1), ks = k[0].transpose(0, 1), vs = v[0].transpose(0, 1);
        const auto naive = torch::matmul(torch::softmax(torch::matmul(qs, ks.transpose(1, 2)) / 4.0, -1), vs);
        CHECK_CLOSE(out[0], naive.transpose(0, 1), 1e-5);
        // A tiny score budget forces one query per block.
        CHECK_CLOSE(attention_reference(q, k, v, lens, 1), attention_reference(q, k, v, lens), 1e-6);
        CHECK_CLOSE(attention_reference(q, k, v, lens), out, 1e-5);
        CHECK_THROWS(attention(q, k, v, torch::tensor({0, 5})));
        // With gradients (training) the autograd path gives the same values, and gradients flow.
        const auto qg = q.clone().requires_grad_(true);
        const auto graded = attention_reference(qg, k, v, lens, 1);
        CHECK_CLOSE(graded.detach(), attention_reference(q, k, v, lens), 1e-5);
        graded.sum().backward();
        CHECK(qg.grad().defined());
        CHECK(qg.grad().abs().sum().item<double>() > 0);
    }

    TEST_CASE("another width: names follow the official patterns, parity invariants hold") {
        torch::NoGradGuard no_grad;
        const auto c = other_config();
        WanDiT model(c);
        const std::regex pattern(
            R"(patch_embedding\.(weight|bias)|(text|time)_embedding\.[02]\.(weight|bias)|time_projection\.1\.(weight|bias)|)"
            R"(blocks\.[0-2]\.(modulation|(self|cross)_attn\.([qkvo]\.(weight|bias)|norm_[qk]\.weight)|norm3\.(weight|bias)|ffn\.[02]\.(weight|bias))|)"
            R"(head\.(modulation|head\.(weight|bias)))");
        std::set<std::string> names;
        for (const auto& p : model->named_parameters()) {
            CHECK_MESSAGE(std::regex_match(p.key(), pattern), p.key());
            names.insert(p.key());
        }
        CHECK(names.size() == 12 + 3 * 27 + 3);
        const auto params = model->named_parameters();
        CHECK((params["patch_embedding.weight"].sizes() == torch::IntArrayRef({96, 4, 1, 2, 2})));
        CHECK((params["text_embedding.0.weight"].sizes() == torch::IntArrayRef({96, 24})));
        CHECK((params["time_embedding.0.weight"].sizes() == torch::IntArrayRef({96, 32})));
        CHECK((params["time_projection.1.weight"].sizes() == torch::IntArrayRef({576, 96})));
        CHECK((params["blocks.2.ffn.0.weight"].sizes() == torch::IntArrayRef({160, 96})));
        CHECK((params["blocks.2.ffn.2.weight"].sizes() == torch::IntArrayRef({96, 160})));
        CHECK((params["blocks.1.modulation"].sizes() == torch::IntArrayRef({1, 6, 96})));
        CHECK((params["head.head.weight"].sizes() == torch::IntArrayRef({24, 96})));
        CHECK((params["head.modulation"].sizes() == torch::IntArrayRef({1, 2, 96})));

        // Freshly initialised: the zero head makes the output exactly zero.
        torch::manual_seed(2);
        const std::vector<torch::Tensor> xs = {torch::randn({4, 3, 6, 10}), torch::randn({4, 2, 4, 4})};
        const std::vector<torch::Tensor> ctx = {torch::randn({10, 24}), torch::randn({4, 24})};
        const auto t = torch::rand({2, 50}) * 1000;
        for (const auto& o : model->forward(xs, t, ctx, 50))
            CHECK(o.abs().max().item<double>() == 0.0);

        randomise(*model, 9);
        const auto batch = model->forward(xs, t, ctx, 50);
        REQUIRE((batch[0].sizes() == torch::IntArrayRef({6, 3, 6, 10})));
        REQUIRE((batch[1].sizes() == torch::IntArrayRef({6, 2, 4, 4})));
        const auto a0 = model->forward({xs[0]}, t.narrow(0, 0, 1).narrow(1, 0, 45), {ctx[0]}, 45);
        const auto a1 = model->forward({xs[1]}, t.narrow(0, 1, 1).narrow(1, 0, 8), {ctx[1]}, 8);
        CHECK_CLOSE(batch[0], a0[0], kInvariantAtol);
        CHECK_CLOSE(batch[1], a1[0], kInvariantAtol);
        CHECK(batch[0].abs().max().item<double>() > 0.1);
        CHECK_THROWS(model->forward(xs, t.narrow(1, 0, 40), ctx, 40));  // seq_len too short
        CHECK_THROWS(
            model->forward({torch::randn({4, 3, 5, 10})}, t[0].view({1, 50}), {ctx[0]}, 50));  // odd H
        CHECK_THROWS(model->embed_text({torch::randn({11, 24})}));  // longer than text_len
    }

    TEST_CASE("unpatchify inverts the spec's patch layout for any patch size") {
        WanDiTConfig c = other_config();
        c.patch_size = {2, 2, 3};
        WanDiT model(c);
        const int64_t co = c.out_dim, f = 2, h = 3, w = 2;
        const auto video = torch::randn({co, f * 2, h * 2, w * 3});
        // Token (f,h,w) element ((pt*ph_n + ph)*pw_n + pw)*C + c holds pixel (c, f*pt_n+pt, h*ph_n+ph,
        // w*pw_n+pw).
        auto tokens = torch::zeros({f * h * w + 3, 12 * co});
        auto ta = tokens.accessor<float, 2>();
        auto va = video.accessor<float, 4>();
        for (int64_t i = 0; i < f; ++i)
            for (int64_t j = 0; j < h; ++j)
                for (int64_t k = 0; k < w; ++k)
                    for (int64_t pt = 0; pt < 2; ++pt)
                        for (int64_t ph = 0; ph < 2; ++ph)
                            for (int64_t pw = 0; pw < 3; ++pw)
                                for (int64_t ch = 0; ch < co; ++ch)
                                    ta[(i * h + j) * w + k][((pt * 2 + ph) * 3 + pw) * co + ch] =
                                        va[ch][i * 2 + pt][j * 2 + ph][k * 3 + pw];
        CHECK(torch::equal(model->unpatchify(tokens, {f, h, w}), video));
        // And the patch embedding reads the same layout: a conv equals a linear map on (c, pt, ph, pw)
        // vectors.
        torch::NoGradGuard no_grad;
        WanDiTConfig ci = c;
        ci.in_dim = 3;
        WanDiT m2(ci);
        const auto x = torch::randn({1, 3, 4, 6, 6});
        const auto pe = m2->patch_embed(x);
        CHECK((pe.grid == std::array<int64_t, 3>{2, 3, 2}));
        const auto patches =
            x[0].view({3, 2, 2, 3, 2, 2, 3}).permute({1, 3, 5, 0, 2, 4, 6}).reshape({12, 36});
        const auto lin = torch::matmul(patches, m2->patch_embedding->weight.view({c.dim, 36}).t()) +
                         m2->patch_embedding->bias;
        CHECK_CLOSE(pe.tokens[0], lin, 1e-5);
    }

    TEST_CASE("bf16 weights: bf16 matmuls, fp32 residual, close to fp32") {
        torch::NoGradGuard no_grad;
        auto model = golden_model();
        const auto x = g("inputs.x"), ctx = g("inputs.context"), t = g("inputs.t");
        model->to(torch::kBFloat16);
        CHECK((model->compute_dtype() == torch::kBFloat16));
        const auto out = model->forward({x[0], x[1]}, t, {ctx[0], ctx[1]}, 48);
        CHECK((out[0].scalar_type() == torch::kFloat));
        const double rel = rel_diff(torch::stack(out), g("outputs.out"));
        MESSAGE("bf16 vs fp32 golden: max abs diff / max |ref| = " << rel);
        CHECK(rel < 0.05);
    }

    TEST_CASE("initialisation follows the official init_weights") {
        torch::NoGradGuard no_grad;
        torch::manual_seed(0);
        const auto c = other_config();
        WanDiT model(c);
        auto p = model->named_parameters();
        CHECK(p["head.head.weight"].abs().max().item<double>() == 0.0);
        CHECK(p["blocks.0.self_attn.q.bias"].abs().max().item<double>() == 0.0);
        CHECK(p["time_projection.1.bias"].abs().max().item<double>() == 0.0);
        CHECK(torch::equal(p["blocks.1.norm3.weight"], torch::ones({c.dim})));
        CHECK(p["blocks.1.norm3.bias"].abs().max().item<double>() == 0.0);
        CHECK(torch::equal(p["blocks.2.cross_attn.norm_k.weight"], torch::ones({c.dim})));
        // xavier_uniform bounds: sqrt(6 / (fan_in + fan_out)).
        const auto bound = [](int64_t fi, int64_t fo) { return std::sqrt(6.0 / double(fi + fo)); };
        const double q_max = p["blocks.0.self_attn.q.weight"].abs().max().item<double>();
        CHECK(q_max <= bound(96, 96));
        CHECK(q_max > 0.9 * bound(96, 96));
        const double ffn_max = p["blocks.0.ffn.0.weight"].abs().max().item<double>();
        CHECK(ffn_max <= bound(96, 160));
        CHECK(ffn_max > 0.9 * bound(96, 160));
        // Patch embedding: xavier on the [dim, in*4] view (fan_out = dim).
        const double pe_max = p["patch_embedding.weight"].abs().max().item<double>();
        CHECK(pe_max <= bound(16, 96));
        CHECK(pe_max > bound(16, 96 * 4));
        // Embedding MLPs N(0, 0.02); modulations randn / sqrt(dim).
        CHECK(std::abs(p["text_embedding.2.weight"].std().item<double>() - 0.02) < 0.002);
        CHECK(std::abs(p["time_embedding.0.weight"].std().item<double>() - 0.02) < 0.002);
        CHECK(std::abs(p["blocks.0.modulation"].std().item<double>() - 1 / std::sqrt(96.0)) < 0.015);
        CHECK(std::abs(p["head.modulation"].std().item<double>() - 1 / std::sqrt(96.0)) < 0.02);
    }

    TEST_CASE("parameter counts: spec formula, official model sizes, instantiated numel") {
        // Computed from shapes: nothing is allocated for the big models.
        WanDiTConfig ti2v;  // defaults are TI2V-5B
        CHECK(shape_count(ti2v) == 4999787712LL);
        CHECK(formula_count(ti2v) == 4999787712LL);
        WanDiTConfig one_layer = ti2v;
        one_layer.num_layers = 1;
        CHECK(shape_count(one_layer) == 253743296LL);
        WanDiTConfig a14b = ti2v;
        a14b.model_type = "t2v";
        a14b.dim = 5120;
        a14b.ffn_dim = 13824;
        a14b.num_heads = 40;
        a14b.num_layers = 40;
        a14b.in_dim = a14b.out_dim = 16;
        CHECK(shape_count(a14b) == 14288491584LL);
        a14b.model_type = "i2v";
        a14b.in_dim = 36;
        CHECK(shape_count(a14b) == 14288901184LL);
        WanDiTConfig small = ti2v;
        small.model_type = "t2v";
        small.dim = 1536;
        small.ffn_dim = 8960;
        small.num_heads = 12;
        small.in_dim = small.out_dim = 16;
        CHECK(shape_count(small) == 1418996800LL);
        // Instantiated tiny models agree with the formula.
        for (const auto& c : {golden_config(), other_config()}) {
            WanDiT model(c);
            int64_t numel = 0;
            for (const auto& p : model->parameters())
                numel += p.numel();
            CHECK(numel == formula_count(c));
            CHECK(numel == shape_count(c));
        }
    }
}
