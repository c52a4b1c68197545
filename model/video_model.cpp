#include "model/video_model.h"

#include <filesystem>

#include "model/checkpoint.h"
#include "model/flow_matching.h"
#include "model/json_util.h"
#include "model/section_sampler.h"
#include "model/tokenizer.h"
#include "model/umt5.h"
#include "model/wan_dit.h"
#include "model/wan_vae.h"

namespace fs = std::filesystem;

namespace memoreel {

namespace {

// Seeds for networks a config leaves without weights: fixed, so two runs of an untrained config agree.
constexpr uint64_t kRandomInitSeed = 20251123;

// The official Wan checkpoint folder carries a config.json; when it is there, its architecture numbers must
// agree with the model config, or loading would fail later with a less helpful shape error.
void check_official_dit_config(const std::string& folder, const WanDiTConfig& dit) {
    const fs::path file = fs::path(folder) / "config.json";
    if (!fs::is_directory(folder) || !fs::exists(file))
        return;
    const nlohmann::json j = read_json_file(file.string());
    auto check = [&](const char* key, int64_t expected) {
        if (j.contains(key) && j[key].is_number_integer() && j[key].get<int64_t>() != expected)
            throw CheckpointError(file.string(), "",
                                  std::string("'") + key + "' is " + std::to_string(j[key].get<int64_t>()) +
                                      " but the model config says " + std::to_string(expected));
    };
    check("dim", dit.dim);
    check("ffn_dim", dit.ffn_dim);
    check("num_heads", dit.num_heads);
    check("num_layers", dit.num_layers);
    check("in_dim", dit.in_dim);
    check("out_dim", dit.out_dim);
    check("freq_dim", dit.freq_dim);
    check("text_len", dit.text_len);
}

}  // namespace

struct VideoModel::Impl {
    ModelConfig config;
    torch::Device device{torch::kCPU};
    std::unique_ptr<Tokenizer> tokenizer;
    UMT5Encoder text_encoder{nullptr};
    WanDiT dit{nullptr};
    WanVAE vae{nullptr};

    // Loads a network's weights or, when the config names none, keeps the seeded initialisation (if allowed).
    void load_or_init(torch::nn::Module& module, const std::string& path, const char* what) {
        if (path.empty()) {
            if (!config.allow_random_weights)
                throw CheckpointError(config.source_path, "",
                                      std::string("names no weights for the ") + what + " (set weights." +
                                          what + " or allow_random)");
            return;
        }
        load_module(module, TensorSource::open(path));
    }
};

VideoModel::VideoModel(const ModelConfig& config,
                       const std::string& weights_dir,
                       torch::Device device,
                       torch::Dtype dtype)
    : impl_(std::make_unique<Impl>()) {
    Impl& m = *impl_;
    m.config = config;
    m.device = device;
    const auto resolve = [&](const std::string& path) { return config.resolve_path(path, weights_dir); };

    if (config.tokenizer.empty())
        throw CheckpointError(config.source_path, "",
                              "names no tokenizer (weights.tokenizer: a .model file or \"byte\")");
    m.tokenizer = std::make_unique<Tokenizer>(
        config.tokenizer == Tokenizer::kByteModel ? config.tokenizer : resolve(config.tokenizer));
    if (m.tokenizer->vocab_size() > config.text_encoder.vocab)
        throw CheckpointError(config.source_path, "",
                              "the tokenizer has " + std::to_string(m.tokenizer->vocab_size()) +
                                  " pieces but text_encoder.vocab is " +
                                  std::to_string(config.text_encoder.vocab));

    torch::manual_seed(kRandomInitSeed);
    m.text_encoder = UMT5Encoder(config.text_encoder);
    m.load_or_init(*m.text_encoder, resolve(config.text_encoder_weights), "text_encoder");

    m.dit = WanDiT(config.dit);
    const std::string dit_path = resolve(config.dit_weights);
    if (!dit_path.empty())
        check_official_dit_config(dit_path, config.dit);
    m.load_or_init(*m.dit, dit_path, "dit");

    m.vae = WanVAE(config.vae);
    m.load_or_init(*m.vae, resolve(config.vae_weights), "vae");

    for (torch::nn::Module* net :
         {static_cast<torch::nn::Module*>(m.text_encoder.get()), static_cast<torch::nn::Module*>(m.dit.get()),
          static_cast<torch::nn::Module*>(m.vae.get())}) {
        net->eval();
        net->to(device, dtype);
        for (auto& p : net->parameters())
            p.set_requires_grad(false);
    }
}

VideoModel::~VideoModel() = default;

const ModelConfig& VideoModel::config() const {
    return impl_->config;
}
torch::Device VideoModel::device() const {
    return impl_->device;
}
WanDiTImpl& VideoModel::dit() {
    return *impl_->dit;
}
WanVAEImpl& VideoModel::vae() {
    return *impl_->vae;
}
WanDiT VideoModel::dit_module() {
    return impl_->dit;
}
WanVAE VideoModel::vae_module() {
    return impl_->vae;
}
UMT5EncoderImpl& VideoModel::text_encoder() {
    return *impl_->text_encoder;
}
Tokenizer& VideoModel::tokenizer() {
    return *impl_->tokenizer;
}

torch::Tensor VideoModel::encode_prompt(const std::string& text) {
    Impl& m = *impl_;
    torch::InferenceMode guard;
    const TokenizedText tokens = m.tokenizer->encode(text, m.config.text_encoder.text_len);
    const auto ids = tokens.ids.to(m.device);
    const auto mask = tokens.mask.to(m.device);
    const torch::Tensor hidden = m.text_encoder->forward(ids, mask);  // [1, L, dim]
    // The DiT receives the real tokens only (EOS included) and pads them to text_len itself (spec 2.4).
    const int64_t len = std::min<int64_t>(tokens.mask.sum().item<int64_t>(), m.config.dit.text_len);
    return hidden[0].slice(0, 0, len);
}

torch::Tensor VideoModel::sample_latents(const GenerateRequest& req, const StepCallback& on_step) {
    Impl& m = *impl_;
    const ModelConfig& c = m.config;
    validate_request(c, req);
    const int64_t sf = c.vae.spatial_factor();
    const int64_t tf = c.vae.temporal_factor();

    const SamplerConfig sc = c.sampler.with(req.sampling);
    const double guidance = sc.guidance;
    auto sampler = make_sampler(sc);

    SectionSampling s;
    s.guidance = guidance;
    s.text_cond = embed_text(req.prompt);
    if (guidance != 1.0)
        s.text_uncond =
            embed_text(req.negative_prompt.empty() ? c.sampler.negative_prompt : req.negative_prompt);
    torch::InferenceMode guard;
    // Noise from a CPU generator so that a seed means the same video on every machine and device.
    auto gen = torch::make_generator<torch::CPUGeneratorImpl>(req.seed);
    const int64_t lat_t = (req.frames - 1) / tf + 1;
    s.noise = torch::randn({1, c.vae.z_dim, lat_t, req.height / sf, req.width / sf}, gen,
                           torch::TensorOptions().dtype(torch::kFloat32))
                  .to(m.device);
    return sample_section(*m.dit, *sampler, s, on_step)[0];
}

torch::Tensor VideoModel::embed_text(const std::string& text) {
    const torch::Tensor features = encode_prompt(text);
    torch::InferenceMode guard;
    return impl_->dit->embed_text({features});
}

torch::Tensor VideoModel::decode(const torch::Tensor& latents) {
    torch::InferenceMode guard;
    return impl_->vae->decode(latents.unsqueeze(0).to(impl_->device))[0];
}

torch::Tensor VideoModel::generate(const GenerateRequest& request, const StepCallback& on_step) {
    return decode(sample_latents(request, on_step));
}

void validate_request(const ModelConfig& c, const GenerateRequest& req) {
    const int64_t tf = c.vae.temporal_factor();
    if (req.frames < 1 || (req.frames - 1) % tf != 0)
        throw std::invalid_argument("frames must be 1 + a multiple of " + std::to_string(tf) + ", got " +
                                    std::to_string(req.frames));
    const int64_t gh = c.vae.spatial_factor() * c.dit.patch_size[1];
    const int64_t gw = c.vae.spatial_factor() * c.dit.patch_size[2];
    if (req.width <= 0 || req.height <= 0 || req.width % gw || req.height % gh)
        throw std::invalid_argument("width and height must be positive multiples of " + std::to_string(gw) +
                                    " and " + std::to_string(gh) + ", got " + std::to_string(req.width) +
                                    "x" + std::to_string(req.height));
    if ((((req.frames - 1) / tf) + 1) % c.dit.patch_size[0] != 0)
        throw std::invalid_argument("the latent frame count must be a multiple of the DiT's temporal patch");
}

torch::Tensor video_to_rgb24(const torch::Tensor& video) {
    TORCH_CHECK(video.dim() == 4 && video.size(0) == 3, "video_to_rgb24 expects [3, T, H, W]");
    return ((video.detach().to(torch::kCPU, torch::kFloat32).clamp(-1, 1) + 1) * 127.5)
        .round()
        .to(torch::kUInt8)
        .permute({1, 2, 3, 0})
        .contiguous();
}

torch::Device parse_device(const std::string& name) {
    const torch::Device device(name);
    if (device.is_cuda() && !torch::cuda::is_available())
        throw std::invalid_argument("device " + name + ": this LibTorch build or machine has no CUDA");
    return device;
}

}  // namespace memoreel
