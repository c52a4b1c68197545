// The memory stages.
//  - memory: retrieval pretraining (paper eq. 3). A history of 10-20 s from the latent cache, its pixels
//    regenerated for the LR branch, phi(history) as clean context, k frames drawn uniformly over the whole
//    history noised at their true times, loss on them. Trains the encoder and a LoRA on the frozen DiT.
//  - ar: autoregressive fine-tuning (paper eq. 4). A random section boundary; the history before it through
//  the
//    memory (each group with the prompt in force when it was made, as the session does) plus an optional
//    uncompressed window; the next section is the target with the prompt in force at its start. Trains LoRA +
//    encoder, from the run's pretrained encoder or, with "init": "scratch", from a fresh one (the memory
//    stage starts from a fresh one unless "init": "pretrained").
// Both export memory_encoder.safetensors and lora.safetensors and record the encoder's settings in
// model.json.
#include <spdlog/spdlog.h>

#include <filesystem>
#include <map>

#include "model/checkpoint.h"
#include "model/json_fields.h"
#include "model/json_util.h"
#include "model/lora.h"
#include "model/memory_encoder.h"
#include "model/memory_objectives.h"
#include "model/trained_memory.h"
#include "training/stages.h"

namespace fs = std::filesystem;

namespace memoreel {

namespace {

struct MemoryStageOptions {
    std::string rates;  // empty: the model's memory rates (first entry)
    std::string variant = "proposed";
    bool cross_attention = false;
    std::string trainable = "encoder+lora";
    int64_t lora_rank = 16;
    double lora_alpha = 16.0;
    // pretrained: start from the run's encoder and LoRA when it has them | scratch: fresh ones. Defaults:
    // ar pretrained, memory scratch (a variant run whose base model already has a memory starts afresh).
    std::string init;
    std::vector<double> history_seconds{10.0, 20.0};
    int64_t targets = 4;  // memory: k
    bool noise_as_mask = false;
    int64_t section_latents = 4;  // ar
    int64_t window = 0;           // ar: uncompressed latent frames before the cut
    double caption_dropout = 0.1;
    double sigma_mean = 0.0, sigma_std = 1.0, sigma_shift = 1.0;
    double media_fraction = 0.3;
    // The size of a fresh encoder, {"hr_channels", "attn_layers", "attn_heads"} (absent:
    // MemoryEncoderConfig's defaults, 64..512 channels, which at the tiny DiT's width make an encoder 4.6x
    // the DiT's size). A pretrained start keeps the run's encoder, so there it must match or be absent.
    nlohmann::json encoder = nlohmann::json::object();
};

class MemoryStage : public TrainStage {
  public:
    MemoryStage(const StageEnvironment& env, bool autoregressive) : env_(env), ar_(autoregressive) {
        const std::string where = env.config.source_path;
        JsonFields f(env.config.options, where, "options");
        f.get("rates", o_.rates);
        f.get("variant", o_.variant);
        f.get("cross_attention", o_.cross_attention);
        f.get("trainable", o_.trainable);
        f.get("lora_rank", o_.lora_rank);
        f.get("lora_alpha", o_.lora_alpha);
        f.get("history_seconds", o_.history_seconds);
        f.get("caption_dropout", o_.caption_dropout);
        f.get("sigma_mean", o_.sigma_mean);
        f.get("sigma_std", o_.sigma_std);
        f.get("sigma_shift", o_.sigma_shift);
        f.get("media_fraction", o_.media_fraction);
        f.get("encoder", o_.encoder);
        o_.init = ar_ ? "pretrained" : "scratch";
        f.get("init", o_.init);
        if (ar_) {
            f.get("section_latents", o_.section_latents);
            f.get("window", o_.window);
        } else {
            f.get("targets", o_.targets);
            f.get("noise_as_mask", o_.noise_as_mask);
        }
        f.reject_unknown();
        if (o_.history_seconds.size() != 2 || !(o_.history_seconds[0] > 0) ||
            o_.history_seconds[1] < o_.history_seconds[0])
            f.fail("history_seconds", "must be [min, max] seconds with 0 < min <= max");
        if (o_.init != "pretrained" && o_.init != "scratch")
            f.fail("init", "must be 'pretrained' or 'scratch'");
        if (!o_.encoder.is_object())
            f.fail("encoder", "must be an object of hr_channels, attn_layers, attn_heads");
        for (const auto& item : o_.encoder.items())
            if (item.key() != "hr_channels" && item.key() != "attn_layers" && item.key() != "attn_heads")
                f.fail("encoder",
                       "unknown field '" + item.key() + "' (hr_channels, attn_layers, attn_heads)");
        JsonFields d(env.config.data, where, "data");
        d.accept({"world", "media", "latent_cache"});
        d.reject_unknown();
        if (env.config.batch != 1)
            throw CheckpointError(where, "",
                                  "field 'batch': the memory stages train one history per process "
                                  "step (batch 1; use more processes)");

        model_ = env.load_model();
        const ModelConfig& c = model_->config();
        const TrainedMemory run_memory = trained_memory(c, env.weights_dir());
        const bool use_run_memory = run_memory.present() && o_.init == "pretrained";
        MemoryEncoderConfig mc = use_run_memory
                                     ? run_memory.encoder
                                     : MemoryEncoderConfig::from_json(o_.encoder, where + " options.encoder");
        if (use_run_memory) {
            const MemoryEncoderConfig asked = MemoryEncoderConfig::from_json(o_.encoder, where);
            const auto differs = [&](const char* key, bool same) {
                if (o_.encoder.contains(key) && !same)
                    f.fail(std::string("encoder.") + key, "differs from the run's pretrained encoder (" +
                                                              c.memory_weights +
                                                              "); a pretrained start keeps its size");
            };
            differs("hr_channels", asked.hr_channels == mc.hr_channels);
            differs("attn_layers", asked.attn_layers == mc.attn_layers);
            differs("attn_heads", asked.attn_heads == mc.attn_heads);
        }
        const std::string rates_text =
            !o_.rates.empty() ? o_.rates : c.memory_rates.substr(0, c.memory_rates.find(','));
        mc.set_rates(parse_rates(rates_text));
        mc.variant = o_.variant;
        mc.cross_attn_features = o_.cross_attention;
        mc.validate(where + " options");
        encoder_ = MemoryEncoder(mc, model_->dit_module(), model_->vae_module());
        encoder_->to(env.device);
        LoRAOptions lo;
        lo.rank = o_.lora_rank;
        lo.alpha = o_.lora_alpha;
        attach_lora(model_->dit(), lo);
        if (use_run_memory) {
            load_module(*encoder_, TensorSource::open(run_memory.weights));
            if (!run_memory.lora.empty())
                load_lora(run_memory.lora, model_->dit());
            spdlog::info("{}: starting from the run's memory encoder ({}) and LoRA", env.config.stage,
                         c.memory_weights);
        } else {
            spdlog::info("{}: starting from a fresh memory encoder ({} {})", env.config.stage, mc.variant,
                         mc.rates().str());
        }
        model_->dit().to(env.device);
        params_ = select_trainable(model_->dit(), encoder_.get(), parse_trainable_set(o_.trainable));
        encoder_->train();

        const auto folders = ensure_latent_cache(env, *model_, world_data_options(env.config.data, where),
                                                 media_data_options(env.config.data, where));
        for (const auto& folder : folders)
            (folder.find("/media-") != std::string::npos ? media_ : world_)
                .push_back(std::make_unique<LatentClips>(std::vector<std::string>{folder}));
    }

    std::vector<std::pair<std::string, torch::Tensor>> trainable() override {
        // Names: the encoder's own, and the DiT's adapters ("dit.<layer>.lora_*"); select_trainable picked
        // which of them train.
        std::vector<std::pair<std::string, torch::Tensor>> out;
        const auto wanted = [&](const torch::Tensor& t) {
            for (const auto& p : params_)
                if (p.is_same(t))
                    return true;
            return false;
        };
        for (const auto& p : encoder_->named_parameters())
            if (wanted(p.value()))
                out.emplace_back("memory_encoder." + p.key(), p.value());
        for (const auto& [name, t] : lora_parameters(model_->dit()))
            if (wanted(t))
                out.emplace_back("dit." + name, t);
        for (const auto& p : model_->dit().named_parameters())
            if (wanted(p.value()) && p.key().find("lora") == std::string::npos)
                out.emplace_back("dit." + p.key(), p.value());
        return out;
    }

    StepOutput forward(int64_t, torch::Generator& gen) override {
        const bool media = !media_.empty() && (world_.empty() || draw_uniform(gen) < o_.media_fraction);
        const LatentClips& clips = *(media ? media_ : world_)[0];
        const double fps = clips.clip(0).fps;
        const int64_t min_latents = model_->vae().latent_frames(cacheable_frames(o_.history_seconds[0], fps));
        const int64_t i = clips.draw(gen, ar_ ? min_latents + o_.section_latents : min_latents);
        const CachedClip& clip = clips.clip(i);
        const Storyboard& story = clips.storyboard(i);
        const int64_t available = clip.latents.size(1);
        // The history starts at the clip's first frame (the VAE's causal alignment: latent 0 is pixel 0).
        const double seconds =
            o_.history_seconds[0] + (o_.history_seconds[1] - o_.history_seconds[0]) * draw_uniform(gen);
        int64_t frames = std::max<int64_t>(2, model_->vae().latent_frames(cacheable_frames(seconds, fps)));
        frames = std::min(frames, ar_ ? available - o_.section_latents : available);

        LogitNormalSigmaSampler sigma;
        sigma.mean = o_.sigma_mean;
        sigma.std = o_.sigma_std;
        sigma.shift = o_.sigma_shift;
        StepOutput out;
        if (!ar_) {
            const torch::Tensor history = clip.latents.slice(1, 0, frames).to(torch::kFloat32).unsqueeze(0);
            const torch::Tensor pixels =
                clips.pixels(i, 0, model_->vae().video_frames(frames)).unsqueeze(0).to(env_.device);
            const MemoryTokens mem = encoder_->encode_full({history.to(env_.device), pixels});
            ContextTokens ctx = memory_context(mem, encoder_->config().rates(), 0.0);
            if (o_.cross_attention)
                ctx.cross = encoder_->cross_attention(mem.flat_features());
            // The caption of a random moment of the history (the targets span all of it).
            const double t = latent_frame_seconds(draw_index(frames, gen), fps);
            const torch::Tensor text = caption_embedding(story, t, gen);
            RetrievalOptions ro;
            ro.targets = std::min(o_.targets, frames);
            ro.sigma = sigma;
            ro.noise_as_mask = o_.noise_as_mask;
            const FlowLoss fl = retrieval_loss(model_->dit(), history.to(env_.device), ctx, text, ro, gen);
            out.loss = fl.loss;
            out.metrics = {{"history_latents", static_cast<double>(frames)}};
            return out;
        }
        // ar: cut after `frames` latent frames, rounded down to a section boundary.
        const int64_t boundary =
            std::max(o_.section_latents, frames / o_.section_latents * o_.section_latents);
        const torch::Tensor history = clip.latents.slice(1, 0, boundary).to(torch::kFloat32).unsqueeze(0);
        const torch::Tensor pixels =
            clips.pixels(i, 0, model_->vae().video_frames(boundary)).unsqueeze(0).to(env_.device);
        const MemoryTokens mem = encoder_->encode_full({history.to(env_.device), pixels});
        ARInputs in;
        in.target = clip.latents.slice(1, boundary, boundary + o_.section_latents)
                        .to(torch::kFloat32)
                        .unsqueeze(0)
                        .to(env_.device);
        in.memory = memory_context(mem, encoder_->config().rates(), static_cast<double>(boundary));
        if (o_.cross_attention)
            in.memory.cross = encoder_->cross_attention(mem.flat_features());
        in.window = std::min(o_.window, boundary);
        if (in.window > 0)
            in.window_latents = history.slice(2, boundary - in.window, boundary).to(env_.device);
        // Each piece of history reads the prompt in force when it was made; the target, the one at its start.
        std::map<int64_t, torch::Tensor> embedded;
        const auto text_of = [&](double t_seconds) {
            const int64_t idx = story.index_in_force(t_seconds);
            auto it = embedded.find(idx);
            if (it == embedded.end()) {
                torch::NoGradGuard no_grad;
                it = embedded
                         .emplace(idx,
                                  embed_captions(
                                      *model_, {idx < 0 ? std::string()
                                                        : story.entries()[static_cast<size_t>(idx)].prompt}))
                         .first;
            }
            return it->second;
        };
        in.history_text = [&, boundary, fps](double available_at) {
            const double latent = static_cast<double>(boundary) + available_at;
            return text_of(latent_frame_seconds(std::max<int64_t>(0, static_cast<int64_t>(latent) - 1), fps));
        };
        const double start = latent_frame_seconds(boundary, fps);
        const torch::Tensor text = draw_uniform(gen) < o_.caption_dropout ? embed_fixed("") : text_of(start);
        const FlowLoss fl = autoregressive_loss(model_->dit(), in, text, sigma, gen);
        out.loss = fl.loss;
        out.metrics = {{"history_latents", static_cast<double>(boundary)}};
        return out;
    }

    void export_model(const std::string& model_dir) override {
        save_network(model_dir, "memory_encoder.safetensors", *encoder_);
        save_lora((fs::path(model_dir) / "lora.safetensors").string(), model_->dit());
        update_run_model_config(model_dir, model_->config(), [&](ModelConfig& c) {
            c.memory_encoder = encoder_->config().to_json();
            c.memory_rates = encoder_->config().rates().str();
            c.memory_weights = "memory_encoder.safetensors";
            c.lora_weights = "lora.safetensors";
            if (ar_)
                c.memory_window = o_.window;  // sessions of this model use the window it was trained with
        });
    }

  private:
    torch::Tensor embed_fixed(const std::string& caption) {
        torch::NoGradGuard no_grad;
        return embed_captions(*model_, {caption});
    }
    torch::Tensor caption_embedding(const Storyboard& story, double t, torch::Generator& gen) {
        const bool drop = draw_uniform(gen) < o_.caption_dropout;
        return embed_fixed(drop || story.empty() ? std::string() : story.in_force(t));
    }

    StageEnvironment env_;
    bool ar_;
    MemoryStageOptions o_;
    std::unique_ptr<VideoModel> model_;
    MemoryEncoder encoder_{nullptr};
    std::vector<torch::Tensor> params_;
    std::vector<std::unique_ptr<LatentClips>> world_, media_;
};

}  // namespace

std::unique_ptr<TrainStage> make_memory_stage(const StageEnvironment& env) {
    return std::make_unique<MemoryStage>(env, env.config.stage == "ar");
}

std::unique_ptr<TrainStage> make_stage(const StageEnvironment& env) {
    const std::string& s = env.config.stage;
    if (s == "vae")
        return make_vae_stage(env);
    if (s == "text")
        return make_text_stage(env);
    if (s == "base")
        return make_base_stage(env);
    if (s == "memory" || s == "ar")
        return make_memory_stage(env);
    throw std::invalid_argument("stage '" + s + "' is not an iterative stage");
}

}  // namespace memoreel
