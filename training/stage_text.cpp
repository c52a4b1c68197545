// The text stage: pretraining the text encoder on the captions alone, before the base stage.
//
// Wan reads prompts with umT5, pretrained on text; a text encoder that learns only through the diffusion loss
// learns which words are in a caption but hardly where they stand, so "the green fox walks into the red room"
// and "the red fox walks into the green room" read alike (the first tiny base drew rooms and streets from the
// place nouns and ignored every colour word). This stage gives each token's output its phrase first:
//  - masked-token prediction: a share of the pieces is replaced by T5's first sentinel (the id just above the
//    tokenizer's pieces, where T5 keeps its <extra_id_N>), and the output there predicts the piece;
//  - neighbour prediction: the output at every position predicts the pieces at offsets -k..-1 and 1..k, so
//    a colour's output says which noun follows it and a noun's which colour precedes it.
// Each offset has its own d x d map; the logits are that map's output against the token embedding (tied, with
// T5's 1/sqrt(d) scale). The maps are training-only and are not exported.
#include <spdlog/spdlog.h>

#include <cmath>
#include <filesystem>
#include <sstream>

#include "model/json_fields.h"
#include "model/json_util.h"
#include "model/tokenizer.h"
#include "model/umt5.h"
#include "training/stages.h"
#include "training/world.h"

namespace fs = std::filesystem;

namespace memoreel {

namespace {

struct TextStageOptions {
    double mask_probability = 0.15;
    int64_t neighbours = 3;  // offsets -k..-1, 1..k
    uint64_t sample_seed = 900001;
};

std::vector<std::string> world_captions(const WorldDataOptions& world) {
    std::vector<std::string> out;
    for (int64_t i = 0; i < world.stories; ++i) {
        world::StoryOptions o;
        o.seconds = world.seconds;
        for (const auto& shot : world::Story::generate(world.seed + static_cast<uint64_t>(i), o).shots)
            out.push_back(shot.caption);
    }
    return out;
}

class TextStage : public TrainStage {
  public:
    explicit TextStage(const StageEnvironment& env) : env_(env) {
        const std::string where = env.config.source_path;
        JsonFields f(env.config.options, where, "options");
        f.get("mask_probability", o_.mask_probability);
        f.get("neighbours", o_.neighbours);
        f.get("sample_seed", o_.sample_seed);
        f.reject_unknown();
        if (!(o_.mask_probability >= 0 && o_.mask_probability < 1))
            f.fail("mask_probability", "must be in [0, 1)");
        if (o_.neighbours < 0 || o_.neighbours > 16)
            f.fail("neighbours", "must be in [0, 16]");
        JsonFields d(env.config.data, where, "data");
        d.accept({"world"});
        d.reject_unknown();
        captions_ = world_captions(world_data_options(env.config.data, where));
        if (captions_.empty())
            throw std::invalid_argument(where + ": no captions to train on (data.world.stories is 0)");

        model_ = env.load_model();
        const UMT5Config& tc = model_->config().text_encoder;
        sentinel_ = tc.vocab - 1;
        if (model_->tokenizer().vocab_size() > sentinel_)
            throw std::invalid_argument(
                where + ": the text stage masks with T5's sentinel id text_encoder.vocab - 1 = " +
                std::to_string(sentinel_) + ", which the tokenizer (" +
                std::to_string(model_->tokenizer().vocab_size()) +
                " pieces) uses: train the tokenizer with a smaller vocab_size");
        spdlog::info("text stage: {} captions, {} encoder ({})", captions_.size(),
                     model_->config().text_encoder_weights.empty() ? "a fresh" : "continuing the model's",
                     model_->config().text_encoder_weights.empty() ? "seeded init"
                                                                   : model_->config().text_encoder_weights);
        // One map per predicted offset: index 0 is the piece itself (masked positions only), then -k..-1,
        // 1..k.
        heads_ =
            torch::randn({1 + 2 * o_.neighbours, tc.dim, tc.dim}, torch::TensorOptions().device(env.device)) *
            (1.0 / std::sqrt(static_cast<double>(tc.dim)));
        heads_.set_requires_grad(true);
        auto& enc = model_->text_encoder();
        enc.train();
        for (auto& p : enc.parameters())
            p.set_requires_grad(true);
    }

    std::vector<std::pair<std::string, torch::Tensor>> trainable() override {
        std::vector<std::pair<std::string, torch::Tensor>> out;
        for (const auto& p : model_->text_encoder().named_parameters())
            out.emplace_back("text_encoder." + p.key(), p.value());
        out.emplace_back("text_heads", heads_);
        return out;
    }

    StepOutput forward(int64_t, torch::Generator& gen) override {
        std::vector<std::string> batch;
        for (int64_t b = 0; b < env_.config.batch; ++b)
            batch.push_back(
                captions_[static_cast<size_t>(draw_index(static_cast<int64_t>(captions_.size()), gen))]);
        const Losses l = losses(batch, gen);
        return {l.loss,
                {{"masked_accuracy", l.masked_accuracy}, {"neighbour_accuracy", l.neighbour_accuracy}}};
    }

    // The held-out story's captions with every third piece masked, and what the encoder fills in.
    void sample(int64_t step, const std::string& dir) override {
        torch::NoGradGuard no_grad;
        model_->text_encoder().eval();
        const world::Story story = world::Story::generate(o_.sample_seed, {});
        std::vector<std::string> captions;
        for (const auto& s : story.shots)
            captions.push_back(s.caption);
        const Tokenizer& tok = model_->tokenizer();
        // A prediction can be an id the tokenizer lacks (the embedding has room above its pieces).
        const auto piece = [&](int64_t id) {
            return id < tok.vocab_size() ? tok.decode(std::vector<int64_t>{id})
                                         : std::string("<") + std::to_string(id) + ">";
        };
        nlohmann::json lines = nlohmann::json::array();
        for (const auto& caption : captions) {
            const std::vector<int64_t> ids = tok.encode_pieces(clean_prompt_text(caption));
            std::vector<int64_t> input = ids;
            for (size_t i = 1; i < input.size(); i += 3)
                input[i] = sentinel_;
            input.push_back(Tokenizer::kEosId);
            const torch::Tensor x = torch::tensor(input, torch::kInt64).unsqueeze(0).to(env_.device);
            const torch::Tensor predicted = logits(model_->text_encoder().forward(x), 0)[0].argmax(-1).cpu();
            std::ostringstream masked, filled;
            for (size_t i = 0; i < ids.size(); ++i) {
                const bool m = input[i] == sentinel_;
                masked << (i ? " " : "") << (m ? "[_]" : piece(ids[i]));
                filled << (i ? " " : "")
                       << (m ? "[" + piece(predicted[static_cast<int64_t>(i)].item<int64_t>()) + "]"
                             : piece(ids[i]));
            }
            lines.push_back({{"caption", caption}, {"masked", masked.str()}, {"filled", filled.str()}});
        }
        auto gen = torch::make_generator<torch::CPUGeneratorImpl>(o_.sample_seed);
        const Losses held = losses(captions, gen);
        model_->text_encoder().train();
        char name[64];
        std::snprintf(name, sizeof(name), "step-%08lld.json", static_cast<long long>(step));
        fs::create_directories(dir);
        write_file_atomic((fs::path(dir) / name).string(),
                          nlohmann::json{{"step", step},
                                         {"held_out_masked_accuracy", held.masked_accuracy},
                                         {"held_out_neighbour_accuracy", held.neighbour_accuracy},
                                         {"captions", lines}}
                                  .dump(2) +
                              "\n");
    }

    void export_model(const std::string& model_dir) override {
        save_network(model_dir, "text_encoder.safetensors", model_->text_encoder());
        update_run_model_config(model_dir, model_->config(),
                                [](ModelConfig& c) { c.text_encoder_weights = "text_encoder.safetensors"; });
    }

  private:
    struct Losses {
        torch::Tensor loss;
        double masked_accuracy = 0, neighbour_accuracy = 0;
    };

    // Logits [B, L, vocab] of map `head` applied to the encoder output.
    torch::Tensor logits(const torch::Tensor& hidden, int64_t head) {
        const torch::Tensor& embedding = model_->text_encoder().token_embedding->weight;
        const double scale = 1.0 / std::sqrt(static_cast<double>(embedding.size(1)));
        return torch::matmul(torch::matmul(hidden, heads_[head]), embedding.t()) * scale;
    }

    Losses losses(const std::vector<std::string>& captions, torch::Generator& gen) {
        const Tokenizer& tok = model_->tokenizer();
        const TokenizedText t = tok.encode(captions, model_->config().text_encoder.text_len);
        const int64_t length = t.mask.sum(1).max().item<int64_t>();
        const torch::Tensor ids = t.ids.slice(1, 0, length);
        const torch::Tensor real = t.mask.slice(1, 0, length) != 0;
        const torch::Tensor pieces = real & (ids != Tokenizer::kEosId);
        const torch::Tensor masked = (at::rand(ids.sizes(), gen) < o_.mask_probability) & pieces;
        const torch::Tensor input = ids.masked_fill(masked, sentinel_).to(env_.device);
        const torch::Tensor hidden = model_->text_encoder().forward(input, real.to(env_.device));

        std::vector<torch::Tensor> terms;
        double masked_hits = 0, masked_count = 0, neighbour_hits = 0, neighbour_count = 0;
        const auto add = [&](int64_t head, const torch::Tensor& where, const torch::Tensor& target,
                             bool neighbour) {
            const int64_t n = where.sum().item<int64_t>();
            if (n == 0)
                return;
            const torch::Tensor w = where.to(env_.device);
            const torch::Tensor l = logits(hidden, head).index({w});
            const torch::Tensor y = target.to(env_.device).index({w});
            terms.push_back(torch::nn::functional::cross_entropy(
                l.to(torch::kFloat32), y,
                torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum)));
            const double hits = (l.argmax(-1) == y).sum().item<double>();
            (neighbour ? neighbour_hits : masked_hits) += hits;
            (neighbour ? neighbour_count : masked_count) += static_cast<double>(n);
        };
        add(0, masked, ids, false);
        int64_t head = 1;
        for (int64_t offset = -o_.neighbours; offset <= o_.neighbours; ++offset) {
            if (offset == 0)
                continue;
            // target[i] = ids[i + offset] where both positions hold real tokens (EOS included: it marks the
            // end).
            torch::Tensor target = torch::zeros_like(ids);
            torch::Tensor where = torch::zeros_like(real);
            if (std::abs(offset) < length) {
                const int64_t from = std::max<int64_t>(0, -offset),
                              to = length - std::max<int64_t>(0, offset);
                target.slice(1, from, to).copy_(ids.slice(1, from + offset, to + offset));
                where.slice(1, from, to)
                    .copy_(real.slice(1, from, to) & real.slice(1, from + offset, to + offset));
            }
            add(head++, where, target, true);
        }
        Losses out;
        const double count = masked_count + neighbour_count;
        out.loss = terms.empty() ? hidden.sum() * 0 : torch::stack(terms).sum() / std::max(1.0, count);
        out.masked_accuracy = masked_count > 0 ? masked_hits / masked_count : 0;
        out.neighbour_accuracy = neighbour_count > 0 ? neighbour_hits / neighbour_count : 0;
        return out;
    }

    StageEnvironment env_;
    TextStageOptions o_;
    std::unique_ptr<VideoModel> model_;
    std::vector<std::string> captions_;
    int64_t sentinel_ = 0;
    torch::Tensor heads_;
};

}  // namespace

std::unique_ptr<TrainStage> make_text_stage(const StageEnvironment& env) {
    return std::make_unique<TextStage>(env);
}

}  // namespace memoreel
