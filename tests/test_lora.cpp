// LoRA: attach, train, save/load separately, merge and unmerge.
#include "model/checkpoint.h"
#include "model/linear.h"
#include "model/lora.h"
#include "tests/test_support.h"

using namespace memoreel;
using memoreel::test::TempDir;

namespace {

// A small network with nested names like a DiT block ("blocks.0.attn.q").
struct ToyBlock : torch::nn::Module {
    ToyBlock() {
        q = register_module("q", Linear(8, 8));
        ffn = register_module("ffn", torch::nn::Sequential(Linear(8, 16), torch::nn::GELU(), Linear(16, 8)));
    }
    torch::Tensor forward(torch::Tensor x) { return ffn->forward(q(x)) + x; }
    Linear q{nullptr};
    torch::nn::Sequential ffn{nullptr};
};

struct ToyNet : torch::nn::Module {
    ToyNet() {
        blocks = register_module("blocks", torch::nn::ModuleList());
        for (int i = 0; i < 2; ++i)
            blocks->push_back(std::make_shared<ToyBlock>());
        head = register_module("head", Linear(8, 3));
    }
    torch::Tensor forward(torch::Tensor x) {
        for (const auto& b : *blocks)
            x = b->as<ToyBlock>()->forward(x);
        return head(x);
    }
    torch::nn::ModuleList blocks{nullptr};
    Linear head{nullptr};
};

// Trains the adapters a few steps towards a random target so that they are non-zero.
void train_adapters(ToyNet& net, int steps = 20) {
    std::vector<torch::Tensor> params;
    for (auto& [name, p] : lora_parameters(net))
        params.push_back(p);
    torch::optim::Adam opt(params, torch::optim::AdamOptions(1e-2));
    torch::manual_seed(3);
    const auto x = torch::randn({16, 8});
    const auto y = torch::randn({16, 3});
    for (int i = 0; i < steps; ++i) {
        opt.zero_grad();
        auto loss = torch::mse_loss(net.forward(x), y);
        loss.backward();
        opt.step();
    }
}

}  // namespace

TEST_SUITE("lora") {
    TEST_CASE("attached adapters start as the identity, train alone, and keep base names intact") {
        torch::manual_seed(0);
        ToyNet net;
        const auto x = torch::randn({4, 8});
        const auto before = net.forward(x).detach();
        std::map<std::string, torch::Tensor> base;
        for (auto& p : net.named_parameters())
            base[p.key()] = p.value().detach().clone();

        const auto layers = attach_lora(net, {4, 8.0, [](const std::string& n) { return n != "head"; }});
        CHECK(layers.size() == 6);  // q, ffn.0, ffn.2 in two blocks; head excluded
        CHECK(std::find(layers.begin(), layers.end(), "blocks.1.ffn.2") != layers.end());
        CHECK(net.named_parameters().contains("blocks.0.q.lora_down"));
        CHECK(net.named_parameters().contains("blocks.0.q.weight"));
        CHECK_CLOSE(net.forward(x), before, 0.0);

        for (auto& p : net.parameters())
            p.set_requires_grad(false);
        for (auto& [name, p] : lora_parameters(net))
            p.set_requires_grad(true);
        train_adapters(net);
        CHECK(memoreel::test::max_abs_diff(net.forward(x), before) > 1e-3);
        for (auto& p : net.named_parameters())
            if (base.count(p.key()))
                CHECK_MESSAGE(torch::equal(p.value(), base[p.key()]), p.key());
    }

    TEST_CASE("merge equals the adapter path, and unmerge restores the base weights") {
        torch::manual_seed(1);
        ToyNet net;
        attach_lora(net, {4, 4.0, {}});
        train_adapters(net);
        torch::NoGradGuard no_grad;
        const auto x = torch::randn({5, 8});
        const auto with_adapter = net.forward(x);
        std::map<std::string, torch::Tensor> base;
        for (auto& p : net.named_parameters())
            base[p.key()] = p.value().clone();

        merge_lora(net);
        CHECK(!torch::equal(net.head->weight, base["head.weight"]));
        CHECK_CLOSE(net.forward(x), with_adapter, 1e-5);
        unmerge_lora(net);
        for (auto& p : net.named_parameters())
            CHECK_CLOSE(p.value(), base[p.key()], 1e-6);
        CHECK_CLOSE(net.forward(x), with_adapter, 1e-6);
        detach_lora(net);
        CHECK(lora_parameters(net).empty());
        CHECK(!net.named_parameters().contains("head.lora_up"));
    }

    TEST_CASE("adapters save to their own file and load into a fresh network") {
        TempDir dir;
        torch::manual_seed(2);
        ToyNet net;
        attach_lora(net, {3, 6.0, {}});
        train_adapters(net);
        save_lora(dir.file("adapter.safetensors"), net);
        // The file holds only adapters.
        for (const auto& name : TensorSource::open(dir.file("adapter.safetensors")).names())
            CHECK(name.find(".lora_") != std::string::npos);

        ToyNet fresh;
        torch::NoGradGuard no_grad;
        for (auto& p : fresh.named_parameters())
            p.value().copy_(net.named_parameters()[p.key()]);
        load_lora(dir.file("adapter.safetensors"), fresh);
        const auto x = torch::randn({3, 8});
        CHECK_CLOSE(fresh.forward(x), net.forward(x), 1e-6);
        CHECK(fresh.head->lora_scale() == doctest::Approx(2.0));
    }

    TEST_CASE("PEFT-style files load, mismatched adapters are clear errors") {
        TempDir dir;
        ToyNet net;
        torch::manual_seed(4);
        const auto a = torch::randn({2, 8}), b = torch::randn({3, 2});
        save_tensors(dir.file("peft.safetensors"), {{"base_model.model.head.lora_A.weight", a},
                                                    {"base_model.model.head.lora_B.weight", b}});
        load_lora(dir.file("peft.safetensors"), net, 0.5);
        CHECK(net.head->lora_rank() == 2);
        CHECK(net.head->lora_scale() == doctest::Approx(0.5));  // alpha defaults to rank
        CHECK(torch::equal(net.head->lora_up, b));

        ToyNet other;
        save_tensors(dir.file("wrong.safetensors"),
                     {{"head.lora_down", torch::zeros({2, 7})}, {"head.lora_up", torch::zeros({3, 2})}});
        CHECK_THROWS_WITH_AS(load_lora(dir.file("wrong.safetensors"), other), doctest::Contains("do not fit"),
                             CheckpointError);
        save_tensors(dir.file("nolayer.safetensors"),
                     {{"tail.lora_down", torch::zeros({2, 8})}, {"tail.lora_up", torch::zeros({3, 2})}});
        CHECK_THROWS_WITH_AS(load_lora(dir.file("nolayer.safetensors"), other),
                             doctest::Contains("no linear layer 'tail'"), CheckpointError);
        save_tensors(dir.file("half.safetensors"), {{"head.lora_down", torch::zeros({2, 8})}});
        CHECK_THROWS_WITH_AS(load_lora(dir.file("half.safetensors"), other),
                             doctest::Contains("no matching up"), CheckpointError);
    }

    TEST_CASE("a file with one bad adapter changes nothing, bad alphas are clear errors") {
        TempDir dir;
        ToyNet net;
        save_tensors(dir.file("partly.safetensors"), {{"head.lora_down", torch::ones({2, 8})},
                                                      {"head.lora_up", torch::ones({3, 2})},
                                                      {"blocks.0.q.lora_down", torch::ones({2, 5})},
                                                      {"blocks.0.q.lora_up", torch::ones({8, 2})}});
        CHECK_THROWS_AS(load_lora(dir.file("partly.safetensors"), net), CheckpointError);
        CHECK(lora_parameters(net).empty());  // head got no adapter although its tensors were fine

        save_tensors(dir.file("scalar.safetensors"),
                     {{"head.lora_down", torch::tensor(1.0f)}, {"head.lora_up", torch::ones({3, 2})}});
        CHECK_THROWS_WITH_AS(load_lora(dir.file("scalar.safetensors"), net), doctest::Contains("do not fit"),
                             CheckpointError);
        save_tensors(dir.file("alpha.safetensors"),
                     {{"head.lora_down", torch::ones({2, 8})}, {"head.lora_up", torch::ones({3, 2})}},
                     {{"alpha.head", "abc"}});
        CHECK_THROWS_WITH_AS(load_lora(dir.file("alpha.safetensors"), net), doctest::Contains("not a number"),
                             CheckpointError);
        save_tensors(dir.file("alone.safetensors"), {{"head.alpha", torch::tensor(4.0f)}});
        CHECK_THROWS_WITH_AS(load_lora(dir.file("alone.safetensors"), net), doctest::Contains("head.alpha"),
                             CheckpointError);
    }

    TEST_CASE("the scale of a merged adapter cannot change") {
        ToyNet net;
        attach_lora(net, {2, 2.0, {}});
        merge_lora(net);
        CHECK_THROWS(net.head->set_lora_scale(3.0));
        unmerge_lora(net);
        net.head->set_lora_scale(3.0);
        CHECK(net.head->lora_scale() == 3.0);
    }
}
