// The vae stage: the Wan VAE (causal 3D convolutional encoder/decoder) trained as a VAE on world renders and
// real clips: L1 + MSE reconstruction on random crops plus a small KL term, the latent sampled with the
// reparameterisation trick. On export the per-channel latent mean and std (over full-size clips) become the
// model's latent normalisation, so the DiT sees unit-scale latents.
#include <spdlog/spdlog.h>

#include <filesystem>
#include <optional>

#include "model/json_fields.h"
#include "model/json_util.h"
#include "training/image_metrics.h"
#include "training/stages.h"

namespace fs = std::filesystem;

namespace memoreel {

namespace {

struct VaeOptions {
    int64_t frames = 9;                   // 1 + 4k pixel frames per example
    std::vector<int64_t> crop{128, 128};  // [H, W]; empty: full frames
    double l1_weight = 1.0;
    double mse_weight = 1.0;
    double kl_weight = 1e-6;
    double media_fraction = 0.3;
    int64_t sample_frames = 17;
    uint64_t sample_seed = 900001;  // a held-out story (training stories use their own seed range)
    // false: the decoder alone trains (encoder and conv1 frozen, latent mean/std kept). The latents stay
    // exactly what they were, so a DiT trained on them and the latent cache stay valid.
    bool train_encoder = true;
};

class VaeStage : public TrainStage {
  public:
    explicit VaeStage(const StageEnvironment& env) : env_(env) {
        const std::string where = env.config.source_path;
        JsonFields f(env.config.options, where, "options");
        f.get("frames", o_.frames);
        f.get("crop", o_.crop);
        f.get("l1_weight", o_.l1_weight);
        f.get("mse_weight", o_.mse_weight);
        f.get("kl_weight", o_.kl_weight);
        f.get("media_fraction", o_.media_fraction);
        f.get("sample_frames", o_.sample_frames);
        f.get("sample_seed", o_.sample_seed);
        f.get("train_encoder", o_.train_encoder);
        f.reject_unknown();
        if (o_.frames < 1 || (o_.frames - 1) % 4 != 0)
            f.fail("frames", "must be 1 + 4k");
        if (!o_.crop.empty() &&
            (o_.crop.size() != 2 || o_.crop[0] % 16 || o_.crop[1] % 16 || o_.crop[0] <= 0 || o_.crop[1] <= 0))
            f.fail("crop", "must be [height, width], positive multiples of 16");
        JsonFields d(env.config.data, where, "data");
        d.accept({"world", "media"});
        d.reject_unknown();
        model_ = env.load_model();
        const ModelConfig& c = model_->config();
        if (!o_.crop.empty() && (o_.crop[0] > c.height || o_.crop[1] > c.width))
            f.fail("crop", "is larger than the model's frames");
        data_ = std::make_unique<PixelClips>(world_data_options(env.config.data, where),
                                             media_data_options(env.config.data, where), o_.media_fraction,
                                             static_cast<int>(c.width), static_cast<int>(c.height),
                                             static_cast<int>(c.fps));
        WanVAEImpl& vae = model_->vae();
        vae.train();
        for (const auto& p : vae.named_parameters())
            p.value().set_requires_grad(o_.train_encoder || !is_vae_encoder_tensor(p.key()));
    }

    std::vector<std::pair<std::string, torch::Tensor>> trainable() override {
        std::vector<std::pair<std::string, torch::Tensor>> out;
        for (const auto& p : model_->vae().named_parameters())
            if (o_.train_encoder || !is_vae_encoder_tensor(p.key()))
                out.emplace_back("vae." + p.key(), p.value());
        return out;
    }

    StepOutput forward(int64_t, torch::Generator& gen) override {
        WanVAEImpl& vae = model_->vae();
        std::vector<torch::Tensor> batch;
        for (int64_t b = 0; b < env_.config.batch; ++b) {
            torch::Tensor x = data_->sample(o_.frames, gen);  // [3, F, H, W]
            if (!o_.crop.empty()) {
                const int64_t y0 = draw_index(x.size(2) - o_.crop[0] + 1, gen);
                const int64_t x0 = draw_index(x.size(3) - o_.crop[1] + 1, gen);
                x = x.slice(2, y0, y0 + o_.crop[0]).slice(3, x0, x0 + o_.crop[1]);
            }
            batch.push_back(x);
        }
        const torch::Tensor x = torch::stack(batch).to(env_.device);
        VaeEncoding enc;
        {
            // A frozen encoder needs no graph: the decoder's gradients stop at the latent.
            std::optional<torch::NoGradGuard> frozen;
            if (!o_.train_encoder)
                frozen.emplace();
            enc = vae.encode_all(x);
        }
        const torch::Tensor log_var = enc.log_var.clamp(-30.0, 20.0);
        const torch::Tensor eps = torch::randn(enc.mu_raw.sizes(), gen, torch::kFloat32).to(env_.device);
        const torch::Tensor z_raw = enc.mu_raw + eps * (0.5 * log_var).exp();
        const torch::Tensor recon = vae.decode(vae.normalize(z_raw), /*clamp=*/false);
        const torch::Tensor l1 = (recon - x).abs().mean();
        const torch::Tensor mse = (recon - x).pow(2).mean();
        const torch::Tensor kl = 0.5 * (enc.mu_raw.pow(2) + log_var.exp() - 1.0 - log_var).mean();
        StepOutput out;
        out.loss = o_.l1_weight * l1 + o_.mse_weight * mse + o_.kl_weight * kl;
        const double m = mse.item<double>();
        out.metrics = {{"l1", l1.item<double>()},
                       {"psnr", 10.0 * std::log10(4.0 / std::max(m, 1e-12))},
                       {"kl", kl.item<double>()}};
        return out;
    }

    // A held-out story reconstructed at full size: original above, reconstruction below, with its PSNR.
    void sample(int64_t step, const std::string& dir) override {
        WanVAEImpl& vae = model_->vae();
        vae.eval();
        const ModelConfig& c = model_->config();
        const PixelClips held_out({1, o_.sample_seed, 8.0}, {}, 0.0, static_cast<int>(c.width),
                                  static_cast<int>(c.height), static_cast<int>(c.fps));
        auto gen = torch::make_generator<torch::CPUGeneratorImpl>(o_.sample_seed);
        const torch::Tensor x = held_out.sample(o_.sample_frames, gen).unsqueeze(0).to(env_.device);
        torch::Tensor recon;
        {
            torch::NoGradGuard no_grad;
            recon = vae.decode(vae.encode(x));
        }
        vae.train();
        const double mse = (recon - x).pow(2).mean().item<double>();
        const double psnr = 10.0 * std::log10(4.0 / std::max(mse, 1e-12));
        char name[64];
        std::snprintf(name, sizeof(name), "step-%08lld", static_cast<long long>(step));
        write_video((fs::path(dir) / (std::string(name) + ".mp4")).string(), torch::cat({x[0], recon[0]}, 2),
                    static_cast<int>(c.fps));
        write_file_atomic((fs::path(dir) / (std::string(name) + ".json")).string(),
                          nlohmann::json{{"step", step}, {"held_out_psnr", psnr}}.dump() + "\n");
        spdlog::info("vae sample step {}: held-out reconstruction PSNR {:.2f} dB", step, psnr);
    }

    void export_model(const std::string& model_dir) override {
        WanVAEImpl& vae = model_->vae();
        vae.eval();
        if (!o_.train_encoder) {
            // The encoder did not change, so neither did the latents' statistics (the DiT was trained on
            // them).
            save_network(model_dir, "vae.safetensors", vae);
            update_run_model_config(model_dir, model_->config(),
                                    [](ModelConfig& c) { c.vae_weights = "vae.safetensors"; });
            spdlog::info("vae exported (decoder fine-tuned; encoder and latent statistics unchanged)");
            return;
        }
        // Latent statistics over full-size held-out-free training clips: the normalisation the DiT sees.
        torch::Tensor sum, sum_sq;
        int64_t count = 0;
        auto gen = torch::make_generator<torch::CPUGeneratorImpl>(env_.config.seed + 12345);
        {
            torch::NoGradGuard no_grad;
            for (int i = 0; i < 8; ++i) {
                const torch::Tensor x = data_->sample(17, gen).unsqueeze(0).to(env_.device);
                const torch::Tensor mu = vae.encode_all(x).mu_raw.to(torch::kFloat64);  // [1, z, t, h, w]
                const torch::Tensor flat = mu.transpose(0, 1).reshape({mu.size(1), -1});
                sum = sum.defined() ? sum + flat.sum(1) : flat.sum(1);
                sum_sq = sum_sq.defined() ? sum_sq + flat.pow(2).sum(1) : flat.pow(2).sum(1);
                count += flat.size(1);
            }
        }
        const torch::Tensor mean = (sum / count).cpu();
        const torch::Tensor std = (sum_sq / count - mean.pow(2)).clamp_min(1e-8).sqrt().cpu();
        save_network(model_dir, "vae.safetensors", vae);
        update_run_model_config(model_dir, model_->config(), [&](ModelConfig& c) {
            c.vae.mean.assign(mean.data_ptr<double>(), mean.data_ptr<double>() + mean.numel());
            c.vae.std.assign(std.data_ptr<double>(), std.data_ptr<double>() + std.numel());
            c.vae_weights = "vae.safetensors";
        });
        spdlog::info("vae exported: latent mean {:.3f}..{:.3f}, std {:.3f}..{:.3f}",
                     mean.min().item<double>(), mean.max().item<double>(), std.min().item<double>(),
                     std.max().item<double>());
    }

  private:
    StageEnvironment env_;
    VaeOptions o_;
    std::unique_ptr<VideoModel> model_;
    std::unique_ptr<PixelClips> data_;
};

}  // namespace

std::unique_ptr<TrainStage> make_vae_stage(const StageEnvironment& env) {
    return std::make_unique<VaeStage>(env);
}

}  // namespace memoreel
