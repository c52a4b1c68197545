// Model configurations (configs/models/*.json): one struct per network, validated with messages that name the
// file and the field. Torch-free so tools can read configs cheaply.
#pragma once

#include <array>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace memoreel {

// WanModel constructor arguments (wan/modules/model.py); names as in the official config.json.
struct WanDiTConfig {
    std::string model_type = "ti2v";  // t2v | i2v | ti2v
    std::array<int64_t, 3> patch_size{1, 2, 2};
    int64_t text_len = 512;
    int64_t in_dim = 48;
    int64_t dim = 3072;
    int64_t ffn_dim = 14336;
    int64_t freq_dim = 256;
    int64_t text_dim = 4096;
    int64_t out_dim = 48;
    int64_t num_heads = 24;
    int64_t num_layers = 30;
    bool qk_norm = true;
    bool cross_attn_norm = true;
    double eps = 1e-6;

    int64_t head_dim() const { return dim / num_heads; }
    // Reads the fields present in j over the defaults (the official config.json omits several).
    static WanDiTConfig from_json(const nlohmann::json& j, const std::string& where);
    nlohmann::json to_json() const;
    void validate(const std::string& where) const;
};

// WanVAE_ constructor arguments (wan/modules/vae2_1.py and vae2_2.py) plus the latent normalisation.
struct WanVAEConfig {
    std::string version = "2.2";  // "2.1" (4x8x8, 3 channels) or "2.2" (4x16x16, pixel patchify 2)
    int64_t dim = 160;
    int64_t dec_dim = 256;
    int64_t z_dim = 48;
    std::vector<int64_t> dim_mult{1, 2, 4, 4};
    int64_t num_res_blocks = 2;
    std::vector<double> attn_scales{};
    std::vector<bool> temperal_downsample{false, true, true};
    std::vector<double> mean;  // per latent channel; empty means 0
    std::vector<double> std;   // per latent channel; empty means 1

    bool is_v22() const { return version == "2.2"; }
    int64_t patch() const { return is_v22() ? 2 : 1; }
    int64_t spatial_factor() const;   // 8 (2.1) or 16 (2.2) with the standard dim_mult
    int64_t temporal_factor() const;  // 4 with temperal_downsample [F,T,T]
    static WanVAEConfig from_json(const nlohmann::json& j, const std::string& where);
    nlohmann::json to_json() const;
    void validate(const std::string& where) const;
    // The official configurations with their normalisation constants.
    static WanVAEConfig wan21();
    static WanVAEConfig wan22();
};

// umT5 encoder (wan/modules/t5.py T5Encoder).
struct UMT5Config {
    int64_t vocab = 256384;
    int64_t dim = 4096;
    int64_t dim_attn = 4096;
    int64_t dim_ffn = 10240;
    int64_t num_heads = 64;
    int64_t num_layers = 24;
    int64_t num_buckets = 32;
    int64_t max_distance = 128;
    bool shared_pos = false;
    int64_t text_len = 512;  // tokenizer max_length

    static UMT5Config from_json(const nlohmann::json& j, const std::string& where);
    nlohmann::json to_json() const;
    void validate(const std::string& where) const;
};

// Per-request changes to a model's sampler settings (absent fields keep the config's).
struct SamplingOverrides {
    std::optional<int64_t> steps;
    std::optional<double> guidance;
    std::optional<double> shift;
    std::optional<std::string> solver;
};

struct SamplerConfig {
    std::string solver = "unipc";  // unipc | euler | dpm++
    int64_t steps = 50;
    double shift = 5.0;
    double guidance = 5.0;
    std::string negative_prompt;

    // These settings with the overrides applied, validated (std::invalid_argument on a bad override).
    SamplerConfig with(const SamplingOverrides& overrides) const;
    static SamplerConfig from_json(const nlohmann::json& j, const std::string& where);
    nlohmann::json to_json() const;
    void validate(const std::string& where) const;
};

// A whole model: the networks, where their weights are, and the default video geometry.
struct ModelConfig {
    std::string name;
    std::string source_path;  // the config file it came from
    WanDiTConfig dit;
    WanVAEConfig vae;
    UMT5Config text_encoder;
    SamplerConfig sampler;
    int64_t width = 1280;
    int64_t height = 704;
    int64_t fps = 24;
    int64_t frames = 121;
    // Weight locations, resolved against the weights folder (--weights) or the config file's folder.
    // Empty means "random initialisation" (allowed only when allow_random_weights is set).
    std::string dit_weights;
    std::string vae_weights;
    std::string text_encoder_weights;
    std::string tokenizer;  // SentencePiece model file
    bool allow_random_weights = false;
    // The memory this model's sessions use by default ("memory": {"rates"}): rates "rh x rw x rt", several
    // encoders comma-separated. Chosen per model: a memory key costs a section 2*dim multiply-adds per query
    // and layer whatever the width, a section token ~12*dim^2, so a narrow model needs a coarser memory to
    // keep its section latency flat (see README, bench memory).
    std::string memory_rates = "4x4x2";
    // Trained memory ("memory": {"encoder", "weights", "lora"}): the encoder's settings (MemoryEncoderConfig
    // JSON; its rates are memory_rates'), its weights, and the DiT's LoRA adapters trained with it. Weight
    // paths resolve like the others. Empty: no trained memory (sessions use a seeded encoder if allowed).
    nlohmann::json memory_encoder;
    std::string memory_weights;
    std::string lora_weights;
    // Latent frames of recent history a session gives uncompressed beside the memory ("memory": {"window"}):
    // what the autoregressive fine-tuning trained with, so sessions use it unless told otherwise.
    int64_t memory_window = 0;

    static ModelConfig load(const std::string& path);
    static ModelConfig from_json(const nlohmann::json& j, const std::string& where);
    nlohmann::json to_json() const;
    nlohmann::json memory_json() const;
    // A weight path of this config, resolved against weights_dir, or against the config file's folder when
    // weights_dir is empty. Empty and absolute paths are returned as they are.
    std::string resolve_path(const std::string& path, const std::string& weights_dir = "") const;
    void validate() const;
};

}  // namespace memoreel
