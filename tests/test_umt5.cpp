// umT5 encoder against the official T5Encoder's golden vectors (golden/wan/README.md, t5_tiny), plus the
// spec's bucket examples, other configurations, batching, bf16 and the HF name map.
#include "model/umt5.h"
#include "tests/test_support.h"

#include <regex>
#include <set>

using namespace memoreel;

namespace {

const TensorSource& golden() {
    static const TensorSource source = TensorSource::open(test::golden_file("t5_tiny.safetensors"));
    return source;
}

UMT5Config golden_config() {
    auto j = nlohmann::json::parse(golden().metadata().at("config"));
    j.erase("dropout");  // a constructor argument of the reference with no effect at inference
    return UMT5Config::from_json(j, "t5_tiny.safetensors");
}

UMT5Encoder golden_model() {
    UMT5Encoder model(golden_config());
    load_module(*model, golden(), LoadOptions{.prefix = "weights."});
    model->eval();
    return model;
}

}  // namespace

TEST_SUITE("umt5") {
    TEST_CASE("parameter names and shapes equal the official state_dict, strict load works") {
        UMT5Encoder model(golden_config());
        std::map<std::string, std::vector<int64_t>> ours, theirs;
        for (const auto& [name, t] : module_tensors(*model))
            ours[name] = t.sizes().vec();
        for (const auto& name : golden().names())
            if (name.rfind("weights.", 0) == 0)
                theirs[name.substr(8)] = golden().info(name).shape;
        CHECK((ours == theirs));
        CHECK(ours.size() == 22);  // embedding + 2 blocks x 10 + final norm
        CHECK_NOTHROW(load_module(*model, golden(), LoadOptions{.prefix = "weights."}));
        CHECK(torch::equal(model->blocks->ptr<T5EncoderBlockImpl>(1)->ffn->gate_proj->weight,
                           golden().get("weights.blocks.1.ffn.gate.0.weight")));
    }

    TEST_CASE("hidden states, block 0 output and position bias equal the golden ones") {
        torch::NoGradGuard no_grad;
        auto model = golden_model();
        const auto ids = golden().get("inputs.ids");
        const auto mask = golden().get("inputs.mask");
        std::vector<torch::Tensor> blocks;
        const auto hidden = model->forward(ids, mask, &blocks);
        CHECK((hidden.scalar_type() == torch::kFloat32));
        const auto expect = golden().get("outputs.hidden");
        const double d_hidden = test::max_abs_diff(hidden, expect);
        const double d_block0 = test::max_abs_diff(blocks.at(0), golden().get("checks.block0_out"));
        const double d_bias =
            test::max_abs_diff(model->position_bias(0, 12), golden().get("checks.pos_bias_block0"));
        MESSAGE("umt5 max abs diff: hidden "
                << d_hidden << " (row0 " << test::max_abs_diff(hidden[0], expect[0]) << ", row1 "
                << test::max_abs_diff(hidden[1], expect[1]) << "), block0_out " << d_block0
                << ", pos_bias_block0 " << d_bias);
        CHECK_CLOSE(hidden, expect, 1e-5);
        CHECK_CLOSE(blocks.at(0), golden().get("checks.block0_out"), 1e-5);
        CHECK_CLOSE(model->position_bias(0, 12), golden().get("checks.pos_bias_block0"), 0.0);

        const auto lens = golden().get("outputs.seq_lens");
        const auto ctx = text_context(hidden, mask);
        REQUIRE(ctx.size() == 2);
        CHECK(ctx[0].size(0) == lens[0].item<int64_t>());
        CHECK(ctx[1].size(0) == lens[1].item<int64_t>());
    }

    TEST_CASE("relative buckets equal the golden ones and the spec's examples") {
        auto model = golden_model();
        auto rel = model->blocks->ptr<T5EncoderBlockImpl>(0)->pos_embedding;
        CHECK(torch::equal(rel->buckets(12, 12), golden().get("checks.rel_buckets_12")));
        CHECK(torch::equal(relative_position_bucket(golden().get("checks.rel_range"), 32, true, 128),
                           golden().get("checks.rel_buckets_range")));
        const std::vector<std::pair<int64_t, int64_t>> examples = {{1, 17},  {8, 24},   {12, 25},   {16, 26},
                                                                   {32, 28}, {64, 30},  {127, 31},  {-1, 1},
                                                                   {-9, 8},  {-50, 13}, {-128, 15}, {0, 0}};
        for (auto [r, b] : examples) {
            CAPTURE(r);
            CHECK(relative_position_bucket(torch::tensor({r}), 32, true, 128)[0].item<int64_t>() == b);
        }
        // Unidirectional (decoder-style) buckets: only rel <= 0 is distinguished; exact below 16, then
        // 16 + floor(ln(n/16)/ln(8)*16): n = 20 -> 17.
        const auto uni = relative_position_bucket(torch::tensor({5, 0, -1, -20, -1000}), 32, false, 128);
        CHECK(torch::equal(uni, torch::tensor({0, 0, 1, 17, 31})));
    }

    TEST_CASE("a batch equals each row run alone with its own length") {
        torch::NoGradGuard no_grad;
        auto model = golden_model();
        const auto ids = golden().get("inputs.ids");
        const auto mask = golden().get("inputs.mask");
        const auto batch = model->forward(ids, mask);
        const auto row0 = model->forward(ids.slice(0, 0, 1), mask.slice(0, 0, 1));
        CHECK_CLOSE(row0[0], batch[0], 1e-5);
        // Row 1 has 7 real tokens: alone, unpadded, it must equal the padded batch on those 7 positions.
        const auto row1 = model->forward(ids.slice(0, 1, 2).slice(1, 0, 7), torch::Tensor());
        const double d = test::max_abs_diff(row1[0], batch[1].slice(0, 0, 7));
        MESSAGE("row 1 alone vs padded batch: " << d);
        CHECK(d <= 1e-5);
        CHECK_CLOSE(row1[0], golden().get("outputs.hidden")[1].slice(0, 0, 7), 1e-5);
    }

    TEST_CASE("other configurations: shared position table, other widths and heads, bf16") {
        torch::NoGradGuard no_grad;
        torch::manual_seed(7);
        UMT5Config c;
        c.vocab = 100;
        c.dim = 48;
        c.dim_attn = 96;
        c.dim_ffn = 80;
        c.num_heads = 6;
        c.num_layers = 3;
        c.num_buckets = 16;
        c.max_distance = 40;
        c.shared_pos = true;
        UMT5Encoder model(c);
        std::set<std::string> names;
        for (const auto& [name, t] : module_tensors(*model))
            names.insert(name);
        CHECK(names.count("pos_embedding.embedding.weight") == 1);
        CHECK(names.count("blocks.0.pos_embedding.embedding.weight") == 0);
        CHECK((model->pos_embedding->embedding->weight.sizes() == torch::IntArrayRef({16, 6})));
        CHECK((model->blocks->ptr<T5EncoderBlockImpl>(2)->attn->q->weight.sizes() ==
               torch::IntArrayRef({96, 48})));

        const auto ids = torch::randint(2, 100, {3, 9}, torch::kInt64);
        auto mask = torch::ones({3, 9}, torch::kInt64);
        mask[1].slice(0, 4).zero_();
        const auto out = model->forward(ids, mask);
        CHECK((out.sizes() == torch::IntArrayRef({3, 9, 48})));
        CHECK(torch::isfinite(out).all().item<bool>());
        // Padding only changes nothing in the real rows: row 1 alone with its 4 tokens matches.
        const auto alone = model->forward(ids.slice(0, 1, 2).slice(1, 0, 4));
        CHECK_CLOSE(alone[0], out[1].slice(0, 0, 4), 1e-5);

        // bf16 weights (how the real encoder runs): close to fp32, output still float32.
        model->to(torch::kBFloat16);
        const auto out_bf16 = model->forward(ids, mask);
        CHECK((out_bf16.scalar_type() == torch::kFloat32));
        const double rel = (out_bf16 - out).norm().item<double>() / out.norm().item<double>();
        MESSAGE("bf16 vs fp32 relative error " << rel);
        CHECK(rel < 0.05);
    }

    TEST_CASE("init_weights follows the official standard deviations") {
        torch::manual_seed(3);
        UMT5Config c;
        c.vocab = 64;
        c.dim = 256;
        c.dim_attn = 256;
        c.dim_ffn = 512;
        c.num_heads = 4;
        c.num_layers = 1;
        UMT5Encoder model(c);
        auto block = model->blocks->ptr<T5EncoderBlockImpl>(0);
        CHECK(block->attn->q->weight.std().item<double>() == doctest::Approx(1.0 / 256).epsilon(0.03));
        CHECK(block->attn->k->weight.std().item<double>() == doctest::Approx(1.0 / 16).epsilon(0.03));
        CHECK(block->attn->o->weight.std().item<double>() == doctest::Approx(1.0 / 32).epsilon(0.03));
        CHECK(block->ffn->fc2->weight.std().item<double>() ==
              doctest::Approx(std::pow(512.0, -0.5)).epsilon(0.03));
        CHECK(model->token_embedding->weight.std().item<double>() == doctest::Approx(1.0).epsilon(0.03));
        CHECK(torch::equal(block->norm1->weight, torch::ones({256})));
        CHECK(torch::equal(model->norm->weight, torch::ones({256})));
    }

    TEST_CASE("Hugging Face UMT5EncoderModel names load through the rename map") {
        CHECK(umt5_hf_to_official_name("shared.weight") == "token_embedding.weight");
        CHECK(umt5_hf_to_official_name("encoder.embed_tokens.weight") == "token_embedding.weight");
        CHECK(umt5_hf_to_official_name("encoder.final_layer_norm.weight") == "norm.weight");
        CHECK(umt5_hf_to_official_name("encoder.block.3.layer.0.SelfAttention.k.weight") ==
              "blocks.3.attn.k.weight");
        CHECK(umt5_hf_to_official_name(
                  "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight") ==
              "blocks.0.pos_embedding.embedding.weight");
        CHECK(umt5_hf_to_official_name("encoder.block.12.layer.0.layer_norm.weight") ==
              "blocks.12.norm1.weight");
        CHECK(umt5_hf_to_official_name("encoder.block.1.layer.1.DenseReluDense.wi_0.weight") ==
              "blocks.1.ffn.gate.0.weight");
        CHECK(umt5_hf_to_official_name("encoder.block.1.layer.1.DenseReluDense.wi_1.weight") ==
              "blocks.1.ffn.fc1.weight");
        CHECK(umt5_hf_to_official_name("encoder.block.1.layer.1.DenseReluDense.wo.weight") ==
              "blocks.1.ffn.fc2.weight");
        CHECK(umt5_hf_to_official_name("encoder.block.1.layer.1.layer_norm.weight") ==
              "blocks.1.norm2.weight");
        CHECK(umt5_hf_to_official_name("lm_head.weight") == "lm_head.weight");

        // Write the golden weights under HF names (embedding stored twice, as HF does), load, compare
        // outputs.
        torch::NoGradGuard no_grad;
        std::vector<std::pair<std::string, torch::Tensor>> hf;
        for (const auto& name : golden().names()) {
            if (name.rfind("weights.", 0) != 0)
                continue;
            std::string n = name.substr(8);
            const auto t = golden().get(name);
            std::smatch m;
            static const std::regex block_re(R"(^blocks\.(\d+)\.(.+)$)");
            if (n == "token_embedding.weight") {
                hf.emplace_back("shared.weight", t);
                hf.emplace_back("encoder.embed_tokens.weight", t);
                continue;
            }
            if (n == "norm.weight") {
                hf.emplace_back("encoder.final_layer_norm.weight", t);
                continue;
            }
            REQUIRE(std::regex_match(n, m, block_re));
            const std::string p = "encoder.block." + m[1].str() + ".layer.";
            const std::map<std::string, std::string> map = {
                {"attn.q.weight", "0.SelfAttention.q.weight"},
                {"attn.k.weight", "0.SelfAttention.k.weight"},
                {"attn.v.weight", "0.SelfAttention.v.weight"},
                {"attn.o.weight", "0.SelfAttention.o.weight"},
                {"pos_embedding.embedding.weight", "0.SelfAttention.relative_attention_bias.weight"},
                {"norm1.weight", "0.layer_norm.weight"},
                {"ffn.gate.0.weight", "1.DenseReluDense.wi_0.weight"},
                {"ffn.fc1.weight", "1.DenseReluDense.wi_1.weight"},
                {"ffn.fc2.weight", "1.DenseReluDense.wo.weight"},
                {"norm2.weight", "1.layer_norm.weight"}};
            hf.emplace_back(p + map.at(m[2].str()), t);
        }
        test::TempDir dir;
        save_tensors(dir.file("model.safetensors"), hf);
        UMT5Encoder model(golden_config());
        load_module(*model, TensorSource::open(dir.file("model.safetensors")),
                    LoadOptions{.rename = umt5_hf_to_official_name});
        const auto out = model->forward(golden().get("inputs.ids"), golden().get("inputs.mask"));
        CHECK_CLOSE(out, golden().get("outputs.hidden"), 1e-5);
    }
}
