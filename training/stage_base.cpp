// The base stage: the DiT (and the text encoder) trained for text-to-video on sections of the latent cache,
// with TI2V's first-frame conditioning on a fraction of samples and caption dropout (the empty caption is the
// tiny model's negative prompt, so classifier-free guidance has a trained unconditional branch). The caption
// of a section is the storyboard entry in force at its start; real clips, which have no captions, train the
// unconditional branch.
#include <spdlog/spdlog.h>

#include <filesystem>
#include <map>

#include "model/json_fields.h"
#include "model/json_util.h"
#include "model/memory_objectives.h"
#include "model/umt5.h"
#include "training/stages.h"
#include "training/world.h"

namespace fs = std::filesystem;

namespace memoreel {

namespace {

struct BaseStageOptions {
    int64_t section_latents = 4;
    double first_frame_probability = 0.2;
    // Of the unconditioned samples, the share that is a clip's first section. A session's first section
    // starts at latent 0, the VAE's single-image latent, which a uniformly drawn start almost never is (1 in
    // ~77 for a 20 s clip), so without these draws the first frames of every session come out as noise.
    double first_section_probability = 0.25;
    // Image steps (Wan's joint image-video training): the step's latent frames are batch x section_latents
    // single frames from as many clips and moments instead of `batch` sections. A section's frames are
    // nearly one picture, so an image step shows section_latents times the scenes at the same cost, and
    // appearance and layout (caption -> place, colours, characters) are what a small run learns slowest.
    double image_fraction = 0;
    // Sections (and image latents) drawn after a clip's latent 0 open with the single-image latent of the
    // frame they would start at (training_data.h: opening_latents), encoded here, instead of the cached
    // 4-frame latent. Why: with no context the DiT cannot tell a clip's start from its middle (rotary
    // positions are relative), so trained on both it gives a blend for latent 0, which the VAE decodes as a
    // single frame: the tiny base's first frames came out 25-45 grey levels (of 255) off the rest of the clip
    // (scripts/temporal_jumps.sh). Wan's training clips all start at their first frame, as these then do.
    bool encode_opening = false;
    double caption_dropout = 0.1;
    bool train_text_encoder = true;
    double sigma_mean = 0.0;
    double sigma_std = 1.0;
    double sigma_shift = 1.0;
    double media_fraction = 0.2;
    // The loss weight of the latent cells a character covers (world clips, from the ground truth; 1:
    // uniform). Characters cover ~3 % of a frame, so a uniform loss spends almost all of a small run on
    // places and lets them go: the tiny base drew rooms and streets with no one in them.
    double character_weight = 1.0;
    // 0: one section, what the DiT is trained on (longer clips put latent frames at untrained positions).
    double sample_seconds = 0;
    uint64_t sample_seed = 900001;
};

class BaseStage : public TrainStage {
  public:
    explicit BaseStage(const StageEnvironment& env) : env_(env) {
        const std::string where = env.config.source_path;
        JsonFields f(env.config.options, where, "options");
        f.get("section_latents", o_.section_latents);
        f.get("first_frame_probability", o_.first_frame_probability);
        f.get("first_section_probability", o_.first_section_probability);
        f.get("image_fraction", o_.image_fraction);
        f.get("encode_opening", o_.encode_opening);
        f.get("caption_dropout", o_.caption_dropout);
        f.get("train_text_encoder", o_.train_text_encoder);
        f.get("sigma_mean", o_.sigma_mean);
        f.get("sigma_std", o_.sigma_std);
        f.get("sigma_shift", o_.sigma_shift);
        f.get("media_fraction", o_.media_fraction);
        f.get("character_weight", o_.character_weight);
        f.get("sample_seconds", o_.sample_seconds);
        f.get("sample_seed", o_.sample_seed);
        f.reject_unknown();
        if (o_.section_latents < 1 || o_.section_latents > 64)
            f.fail("section_latents", "must be in [1, 64]");
        if (!(o_.image_fraction >= 0 && o_.image_fraction <= 1))
            f.fail("image_fraction", "must be in [0, 1]");
        if (!(o_.character_weight >= 1 && o_.character_weight <= 100))
            f.fail("character_weight", "must be in [1, 100]");
        JsonFields d(env.config.data, where, "data");
        d.accept({"world", "media", "latent_cache"});
        d.reject_unknown();
        model_ = env.load_model();
        const auto folders = ensure_latent_cache(env, *model_, world_data_options(env.config.data, where),
                                                 media_data_options(env.config.data, where));
        for (const auto& folder : folders)
            (folder.find("/media-") != std::string::npos ? media_ : world_)
                .push_back(std::make_unique<LatentClips>(std::vector<std::string>{folder}));
        for (torch::nn::Module* m : trained_modules()) {
            m->train();
            for (auto& p : m->parameters())
                p.set_requires_grad(true);
        }
    }

    std::vector<torch::nn::Module*> trained_modules() {
        std::vector<torch::nn::Module*> out{&model_->dit()};
        if (o_.train_text_encoder)
            out.push_back(reinterpret_cast<torch::nn::Module*>(&model_->text_encoder()));
        return out;
    }

    std::vector<std::pair<std::string, torch::Tensor>> trainable() override {
        std::vector<std::pair<std::string, torch::Tensor>> out;
        for (const auto& p : model_->dit().named_parameters())
            out.emplace_back("dit." + p.key(), p.value());
        if (o_.train_text_encoder)
            for (const auto& p : model_->text_encoder().named_parameters())
                out.emplace_back("text_encoder." + p.key(), p.value());
        return out;
    }

    StepOutput forward(int64_t, torch::Generator& gen) override {
        std::vector<torch::Tensor> sections;
        std::vector<std::string> captions;
        std::vector<torch::Tensor> weights;
        std::vector<std::pair<int64_t, int64_t>> openings;  // (sample, clip) of sections to open anew
        std::vector<std::pair<int64_t, int64_t>> opening_clips;
        // First-frame conditioning gives the DiT a clean single-image latent (as TI2V's image input and a
        // session's first frame are), which only a clip's latent 0 is: conditioned batches start there.
        const bool image = o_.image_fraction > 0 && draw_uniform(gen) < o_.image_fraction;
        const bool first_frame = !image && draw_uniform(gen) < o_.first_frame_probability;
        const int64_t length = image ? 1 : o_.section_latents;
        const int64_t count = image ? env_.config.batch * o_.section_latents : env_.config.batch;
        for (int64_t b = 0; b < count; ++b) {
            const bool media = !media_.empty() && (world_.empty() || draw_uniform(gen) < o_.media_fraction);
            const LatentClips& clips = *(media ? media_ : world_)[0];
            const int64_t i = clips.draw(gen, length);
            const CachedClip& clip = clips.clip(i);
            const bool first_section = first_frame || draw_uniform(gen) < o_.first_section_probability;
            const int64_t start = first_section ? 0 : draw_index(clip.latents.size(1) - length + 1, gen);
            sections.push_back(clip.latents.slice(1, start, start + length).to(torch::kFloat32));
            if (o_.encode_opening && start > 0) {
                openings.emplace_back(b, media ? 1 : 0);
                opening_clips.emplace_back(i, start);
            }
            if (o_.character_weight != 1.0)
                weights.push_back(1.0 + (o_.character_weight - 1.0) *
                                            clips.character_cells(i, start, length, clip.latents.size(2),
                                                                  clip.latents.size(3)));
            const std::string caption =
                clips.storyboard(i).empty()
                    ? std::string()
                    : clips.storyboard(i).in_force(latent_frame_seconds(start, clip.fps));
            captions.push_back(draw_uniform(gen) < o_.caption_dropout ? std::string() : caption);
        }
        if (!openings.empty()) {
            // The character weight of an opened section keeps the cells of latent `start`'s 4 frames, a
            // superset of its one frame's.
            const torch::Tensor z = opening(opening_clips, openings);
            for (size_t n = 0; n < openings.size(); ++n) {
                torch::Tensor& section = sections[static_cast<size_t>(openings[n].first)];
                section = torch::cat({z[static_cast<int64_t>(n)], section.slice(1, 1)},
                                     1);  // not in place: may be the cache's
            }
        }
        const torch::Tensor latents = torch::stack(sections).to(env_.device);
        const torch::Tensor text = embed_captions(*model_, captions);
        BaseOptions bo;
        bo.sigma.mean = o_.sigma_mean;
        bo.sigma.std = o_.sigma_std;
        bo.sigma.shift = o_.sigma_shift;
        bo.first_frame_probability = first_frame ? 1.0 : 0.0;
        if (!weights.empty())
            bo.weight = torch::stack(weights);
        const FlowLoss fl = base_loss(model_->dit(), latents, text, bo, gen);
        StepOutput out{fl.loss, {{"image_step", image ? 1.0 : 0.0}}};
        if (o_.encode_opening)  // the share of samples that opened with a freshly encoded latent
            out.metrics["opened"] = static_cast<double>(openings.size()) / static_cast<double>(count);
        if (bo.weight.defined())  // the share of cells the character weight applies to
            out.metrics["character_cells"] = bo.weight.gt(1.0).to(torch::kFloat32).mean().item<double>();
        return out;
    }

    // Text-to-video from the first captions of a held-out story, with the model's own sampler.
    void sample(int64_t step, const std::string& dir) override {
        for (torch::nn::Module* m : trained_modules())
            m->eval();
        world::Story story = world::Story::generate(o_.sample_seed, {});
        const ModelConfig& c = model_->config();
        GenerateRequest req;
        req.frames = o_.sample_seconds > 0
                         ? 1 + 4 * ((static_cast<int64_t>(o_.sample_seconds * c.fps) - 1) / 4)
                         : model_->vae().video_frames(o_.section_latents);
        req.width = c.width;
        req.height = c.height;
        req.seed = o_.sample_seed;
        nlohmann::json captions = nlohmann::json::array();
        std::vector<torch::Tensor> clips;
        for (size_t s = 0; s < std::min<size_t>(2, story.shots.size()); ++s) {
            req.prompt = story.shots[s].caption;
            captions.push_back(req.prompt);
            clips.push_back(model_->generate(req));
        }
        for (torch::nn::Module* m : trained_modules())
            m->train();
        char name[64];
        std::snprintf(name, sizeof(name), "step-%08lld", static_cast<long long>(step));
        write_video((fs::path(dir) / (std::string(name) + ".mp4")).string(), torch::cat(clips, 1),
                    static_cast<int>(c.fps));
        write_file_atomic((fs::path(dir) / (std::string(name) + ".json")).string(),
                          nlohmann::json{{"step", step}, {"captions", captions}}.dump(2) + "\n");
    }

    void export_model(const std::string& model_dir) override {
        save_network(model_dir, "dit.safetensors", model_->dit());
        save_network(model_dir, "text_encoder.safetensors", model_->text_encoder());
        update_run_model_config(model_dir, model_->config(), [](ModelConfig& c) {
            c.dit_weights = "dit.safetensors";
            c.text_encoder_weights = "text_encoder.safetensors";
        });
    }

  private:
    // opening_latents for the drawn (clip, start) pairs; a real clip is decoded from its file's start, so its
    // openings are kept (a few windows of a few dozen starts each), world stories render in a moment.
    torch::Tensor opening(const std::vector<std::pair<int64_t, int64_t>>& clip_and_start,
                          const std::vector<std::pair<int64_t, int64_t>>& sample_and_media) {
        std::vector<torch::Tensor> out(clip_and_start.size());
        std::vector<std::pair<int64_t, int64_t>> world;
        std::vector<size_t> world_at;
        for (size_t n = 0; n < clip_and_start.size(); ++n) {
            if (sample_and_media[n].second == 0) {
                world.push_back(clip_and_start[n]);
                world_at.push_back(n);
                continue;
            }
            auto [it, fresh] = media_openings_.try_emplace(clip_and_start[n]);
            if (fresh)
                it->second = opening_latents(model_->vae(), *media_[0], {clip_and_start[n]})[0];
            out[n] = it->second;
        }
        if (!world.empty()) {
            const torch::Tensor z = opening_latents(model_->vae(), *world_[0], world);
            for (size_t k = 0; k < world.size(); ++k)
                out[world_at[k]] = z[static_cast<int64_t>(k)];
        }
        return torch::stack(out);
    }

    StageEnvironment env_;
    BaseStageOptions o_;
    std::unique_ptr<VideoModel> model_;
    std::vector<std::unique_ptr<LatentClips>> world_, media_;
    std::map<std::pair<int64_t, int64_t>, torch::Tensor> media_openings_;
};

}  // namespace

std::unique_ptr<TrainStage> make_base_stage(const StageEnvironment& env) {
    return std::make_unique<BaseStage>(env);
}

}  // namespace memoreel
