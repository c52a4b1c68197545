#include "model/config.h"

#include <cstdio>
#include <filesystem>
#include <sstream>

#include <set>

#include "model/json_fields.h"
#include "model/json_util.h"
#include "model/safetensors.h"

namespace memoreel {

namespace {

void require(bool ok, const std::string& where, const std::string& what) {
    if (!ok)
        throw CheckpointError(where, "", what);
}

// Bounds that keep every derived size (products, shifts) far from overflow; real models are well inside them.
constexpr int64_t kMaxWidth = 1 << 20;
constexpr int64_t kMaxLayers = 1000;
constexpr size_t kMaxVaeLevels = 8;

}  // namespace

// ---------------------------------------------------------------------------------------------- DiT

WanDiTConfig WanDiTConfig::from_json(const nlohmann::json& j, const std::string& where) {
    WanDiTConfig c;
    JsonFields f(j, where, "dit");
    std::vector<int64_t> patch(c.patch_size.begin(), c.patch_size.end());
    f.get("model_type", c.model_type);
    f.get("patch_size", patch);
    f.get("text_len", c.text_len);
    f.get("in_dim", c.in_dim);
    f.get("dim", c.dim);
    f.get("ffn_dim", c.ffn_dim);
    f.get("freq_dim", c.freq_dim);
    f.get("text_dim", c.text_dim);
    f.get("out_dim", c.out_dim);
    f.get("num_heads", c.num_heads);
    f.get("num_layers", c.num_layers);
    f.get("qk_norm", c.qk_norm);
    f.get("cross_attn_norm", c.cross_attn_norm);
    f.get("eps", c.eps);
    // Keys of the official/diffusers config.json that carry no architecture information here.
    f.accept({"window_size", "model_type"});
    f.reject_unknown();
    if (patch.size() != 3)
        f.fail("patch_size", "must have 3 entries (t, h, w)");
    std::copy(patch.begin(), patch.end(), c.patch_size.begin());
    c.validate(where);
    return c;
}

nlohmann::json WanDiTConfig::to_json() const {
    return {{"model_type", model_type},
            {"patch_size", patch_size},
            {"text_len", text_len},
            {"in_dim", in_dim},
            {"dim", dim},
            {"ffn_dim", ffn_dim},
            {"freq_dim", freq_dim},
            {"text_dim", text_dim},
            {"out_dim", out_dim},
            {"num_heads", num_heads},
            {"num_layers", num_layers},
            {"qk_norm", qk_norm},
            {"cross_attn_norm", cross_attn_norm},
            {"eps", eps}};
}

void WanDiTConfig::validate(const std::string& where) const {
    const std::string p = "dit: ";
    require(model_type == "t2v" || model_type == "i2v" || model_type == "ti2v", where,
            p + "model_type must be t2v, i2v or ti2v, not '" + model_type + "'");
    for (auto v : patch_size)
        require(v >= 1 && v <= 64, where, p + "patch_size entries must be in [1, 64]");
    for (int64_t v : {dim, ffn_dim, in_dim, out_dim, text_dim, text_len, freq_dim})
        require(v > 0 && v <= kMaxWidth, where,
                p + "dim, ffn_dim, in_dim, out_dim, text_dim, text_len and freq_dim must be in [1, " +
                    std::to_string(kMaxWidth) + "]");
    require(num_heads > 0 && dim % num_heads == 0, where,
            p + "dim (" + std::to_string(dim) + ") must be divisible by num_heads (" +
                std::to_string(num_heads) + ")");
    require(head_dim() % 2 == 0 && head_dim() >= 12, where,
            p + "head_dim = dim/num_heads must be even and >= 12 so each RoPE axis gets a frequency (is " +
                std::to_string(head_dim()) + ")");
    require(freq_dim > 0 && freq_dim % 2 == 0, where, p + "freq_dim must be positive and even");
    require(num_layers >= 1 && num_layers <= kMaxLayers, where,
            p + "num_layers must be in [1, " + std::to_string(kMaxLayers) + "]");
    require(eps > 0, where, p + "eps must be positive");
}

// ---------------------------------------------------------------------------------------------- VAE

int64_t WanVAEConfig::spatial_factor() const {
    return patch() * (int64_t(1) << (dim_mult.size() - 1));
}

int64_t WanVAEConfig::temporal_factor() const {
    int64_t f = 1;
    for (bool t : temperal_downsample)
        f *= t ? 2 : 1;
    return f;
}

WanVAEConfig WanVAEConfig::wan21() {
    WanVAEConfig c;
    c.version = "2.1";
    c.dim = 96;
    c.dec_dim = 96;
    c.z_dim = 16;
    c.mean = {-0.7571, -0.7089, -0.9113, 0.1075,  -0.1745, 0.9653,  -0.1517, 1.5508,
              0.4134,  -0.0715, 0.5517,  -0.3632, -0.1922, -0.9497, 0.2503,  -0.2921};
    c.std = {2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
             3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160};
    return c;
}

WanVAEConfig WanVAEConfig::wan22() {
    WanVAEConfig c;
    c.version = "2.2";
    c.dim = 160;
    c.dec_dim = 256;
    c.z_dim = 48;
    c.mean = {-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174,  0.1838,  0.1557,  -0.1382, 0.0542,
              0.2813,  0.0891,  0.1570,  -0.0098, 0.0375,  -0.1825, -0.2246, -0.1207, -0.0698, 0.5109,
              0.2665,  -0.2108, -0.2158, 0.2502,  -0.2055, -0.0322, 0.1109,  0.1567,  -0.0729, 0.0899,
              -0.2799, -0.1230, -0.0313, -0.1649, 0.0117,  0.0723,  -0.2839, -0.2083, -0.0520, 0.3748,
              0.0152,  0.1957,  0.1433,  -0.2944, 0.3573,  -0.0548, -0.1681, -0.0667};
    c.std = {0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
             0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
             0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
             0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744};
    return c;
}

WanVAEConfig WanVAEConfig::from_json(const nlohmann::json& j, const std::string& where) {
    JsonFields f(j, where, "vae");
    std::string version = "2.2";
    f.get("version", version);
    // Start from the official configuration of that version; "normalization": "official" keeps its constants.
    WanVAEConfig c = version == "2.1" ? wan21() : wan22();
    c.version = version;
    std::string normalization = "official";
    f.get("normalization", normalization);
    if (normalization == "identity") {
        c.mean.clear();
        c.std.clear();
    } else if (normalization != "official" && normalization != "custom") {
        f.fail("normalization", "must be 'official', 'identity' or 'custom'");
    }
    f.get("dim", c.dim);
    c.dec_dim = version == "2.1" ? c.dim : c.dec_dim;
    f.get("dec_dim", c.dec_dim);
    f.get("z_dim", c.z_dim);
    f.get("dim_mult", c.dim_mult);
    f.get("num_res_blocks", c.num_res_blocks);
    f.get("attn_scales", c.attn_scales);
    f.get("temperal_downsample", c.temperal_downsample);
    f.get("mean", c.mean);
    f.get("std", c.std);
    f.reject_unknown();
    c.validate(where);
    return c;
}

nlohmann::json WanVAEConfig::to_json() const {
    return {{"version", version},
            {"dim", dim},
            {"dec_dim", dec_dim},
            {"z_dim", z_dim},
            {"dim_mult", dim_mult},
            {"num_res_blocks", num_res_blocks},
            {"attn_scales", attn_scales},
            {"temperal_downsample", temperal_downsample},
            {"normalization", "custom"},
            {"mean", mean},
            {"std", std}};
}

void WanVAEConfig::validate(const std::string& where) const {
    const std::string p = "vae: ";
    require(version == "2.1" || version == "2.2", where, p + "version must be \"2.1\" or \"2.2\"");
    for (int64_t v : {dim, dec_dim, z_dim})
        require(v > 0 && v <= kMaxWidth, where,
                p + "dim, dec_dim and z_dim must be in [1, " + std::to_string(kMaxWidth) + "]");
    require(!dim_mult.empty() && dim_mult.size() <= kMaxVaeLevels, where,
            p + "dim_mult must have 1 to " + std::to_string(kMaxVaeLevels) + " entries");
    for (auto m : dim_mult)
        require(m > 0 && m <= 64, where, p + "dim_mult entries must be in [1, 64]");
    require(temperal_downsample.size() + 1 == dim_mult.size(), where,
            p + "temperal_downsample needs one entry fewer than dim_mult");
    require(num_res_blocks >= 1 && num_res_blocks <= 16, where, p + "num_res_blocks must be in [1, 16]");
    require(mean.empty() || static_cast<int64_t>(mean.size()) == z_dim, where,
            p + "mean must have z_dim (" + std::to_string(z_dim) + ") entries, has " +
                std::to_string(mean.size()));
    require(std.size() == mean.size(), where, p + "std must have as many entries as mean");
    for (double s : std)
        require(s > 0, where, p + "std entries must be positive");
}

// ---------------------------------------------------------------------------------------------- T5

UMT5Config UMT5Config::from_json(const nlohmann::json& j, const std::string& where) {
    UMT5Config c;
    JsonFields f(j, where, "text_encoder");
    f.get("vocab", c.vocab);
    f.get("dim", c.dim);
    f.get("dim_attn", c.dim_attn);
    f.get("dim_ffn", c.dim_ffn);
    f.get("num_heads", c.num_heads);
    f.get("num_layers", c.num_layers);
    f.get("num_buckets", c.num_buckets);
    f.get("max_distance", c.max_distance);
    f.get("shared_pos", c.shared_pos);
    f.get("text_len", c.text_len);
    f.reject_unknown();
    c.validate(where);
    return c;
}

nlohmann::json UMT5Config::to_json() const {
    return {{"vocab", vocab},
            {"dim", dim},
            {"dim_attn", dim_attn},
            {"dim_ffn", dim_ffn},
            {"num_heads", num_heads},
            {"num_layers", num_layers},
            {"num_buckets", num_buckets},
            {"max_distance", max_distance},
            {"shared_pos", shared_pos},
            {"text_len", text_len}};
}

void UMT5Config::validate(const std::string& where) const {
    const std::string p = "text_encoder: ";
    require(vocab > 2 && vocab <= (int64_t(1) << 24), where, p + "vocab must be in [3, 2^24]");
    for (int64_t v : {dim, dim_attn, dim_ffn})
        require(v > 0 && v <= kMaxWidth, where,
                p + "dim, dim_attn and dim_ffn must be in [1, " + std::to_string(kMaxWidth) + "]");
    require(num_layers >= 1 && num_layers <= kMaxLayers, where,
            p + "num_layers must be in [1, " + std::to_string(kMaxLayers) + "]");
    require(num_heads > 0 && dim_attn % num_heads == 0, where, p + "dim_attn must be divisible by num_heads");
    require(num_buckets >= 4 && num_buckets <= 1024 && num_buckets % 2 == 0, where,
            p + "num_buckets must be even and in [4, 1024]");
    require(max_distance > num_buckets / 4 && max_distance <= kMaxWidth, where,
            p + "max_distance must exceed num_buckets/4");
    require(text_len >= 2 && text_len <= 65536, where, p + "text_len must be in [2, 65536]");
}

// ---------------------------------------------------------------------------------------------- sampler

SamplerConfig SamplerConfig::with(const SamplingOverrides& o) const {
    SamplerConfig c = *this;
    c.steps = o.steps.value_or(steps);
    c.guidance = o.guidance.value_or(guidance);
    c.shift = o.shift.value_or(shift);
    c.solver = o.solver.value_or(solver);
    try {
        c.validate("request");
    } catch (const CheckpointError& e) {
        throw std::invalid_argument(e.what());
    }
    return c;
}

SamplerConfig SamplerConfig::from_json(const nlohmann::json& j, const std::string& where) {
    SamplerConfig c;
    JsonFields f(j, where, "sampler");
    f.get("solver", c.solver);
    f.get("steps", c.steps);
    f.get("shift", c.shift);
    f.get("guidance", c.guidance);
    f.get("negative_prompt", c.negative_prompt);
    f.reject_unknown();
    c.validate(where);
    return c;
}

nlohmann::json SamplerConfig::to_json() const {
    return {{"solver", solver},
            {"steps", steps},
            {"shift", shift},
            {"guidance", guidance},
            {"negative_prompt", negative_prompt}};
}

void SamplerConfig::validate(const std::string& where) const {
    const std::string p = "sampler: ";
    require(solver == "unipc" || solver == "euler" || solver == "dpm++", where,
            p + "solver must be unipc, euler or dpm++, not '" + solver + "'");
    require(steps >= 1 && steps <= 1000, where, p + "steps must be in [1, 1000]");
    require(shift > 0, where, p + "shift must be positive");
    require(guidance >= 0, where, p + "guidance must be >= 0");
}

// ---------------------------------------------------------------------------------------------- model

ModelConfig ModelConfig::load(const std::string& path) {
    const nlohmann::json j = read_json_file(path);
    ModelConfig c = from_json(j, path);
    c.source_path = path;
    return c;
}

ModelConfig ModelConfig::from_json(const nlohmann::json& j, const std::string& where) {
    ModelConfig c;
    c.source_path = where;
    JsonFields f(j, where, "");
    f.get("name", c.name);
    if (c.name.empty())
        f.fail("name", "is required");
    f.accept({"dit", "vae", "text_encoder", "sampler", "weights", "video", "memory", "description"});
    if (!j.contains("dit"))
        f.fail("dit", "is required");
    c.dit = WanDiTConfig::from_json(j["dit"], where);
    if (!j.contains("vae"))
        f.fail("vae", "is required");
    c.vae = WanVAEConfig::from_json(j["vae"], where);
    if (!j.contains("text_encoder"))
        f.fail("text_encoder", "is required");
    c.text_encoder = UMT5Config::from_json(j["text_encoder"], where);
    if (j.contains("sampler"))
        c.sampler = SamplerConfig::from_json(j["sampler"], where);
    if (j.contains("video")) {
        JsonFields v(j["video"], where, "video");
        v.get("width", c.width);
        v.get("height", c.height);
        v.get("fps", c.fps);
        v.get("frames", c.frames);
        v.reject_unknown();
    }
    if (j.contains("weights")) {
        JsonFields w(j["weights"], where, "weights");
        w.get("dit", c.dit_weights);
        w.get("vae", c.vae_weights);
        w.get("text_encoder", c.text_encoder_weights);
        w.get("tokenizer", c.tokenizer);
        w.get("allow_random", c.allow_random_weights);
        w.reject_unknown();
    }
    if (j.contains("memory")) {
        JsonFields m(j["memory"], where, "memory");
        m.get("rates", c.memory_rates);
        m.get("weights", c.memory_weights);
        m.get("lora", c.lora_weights);
        m.get("window", c.memory_window);
        if (c.memory_window < 0 || c.memory_window > 256)
            m.fail("window", "must be in [0, 256] latent frames");
        if (j["memory"].contains("encoder")) {
            c.memory_encoder = j["memory"]["encoder"];
            if (!c.memory_encoder.is_object())
                m.fail("encoder", "must be a JSON object (the memory encoder's settings)");
        }
        m.accept({"encoder"});
        m.reject_unknown();
        // Each entry "AxBxC" with A, B, C in {1, 2, 4, 8} (the encoder's own validation says the same).
        std::string entry;
        std::stringstream all(c.memory_rates);
        while (std::getline(all, entry, ',')) {
            int a = 0, b = 0, t = 0;
            char x1 = 0, x2 = 0, extra = 0;
            const bool ok =
                std::sscanf(entry.c_str(), " %d %c %d %c %d %c", &a, &x1, &b, &x2, &t, &extra) == 5 &&
                x1 == 'x' && x2 == 'x';
            const auto rate = [](int r) { return r == 1 || r == 2 || r == 4 || r == 8; };
            if (!ok || !rate(a) || !rate(b) || !rate(t))
                m.fail("rates", "'" + entry + "' is not rh x rw x rt with each 1, 2, 4 or 8");
        }
    }
    f.reject_unknown();
    c.validate();
    return c;
}

nlohmann::json ModelConfig::to_json() const {
    return {{"name", name},
            {"dit", dit.to_json()},
            {"vae", vae.to_json()},
            {"text_encoder", text_encoder.to_json()},
            {"sampler", sampler.to_json()},
            {"video", {{"width", width}, {"height", height}, {"fps", fps}, {"frames", frames}}},
            {"weights",
             {{"dit", dit_weights},
              {"vae", vae_weights},
              {"text_encoder", text_encoder_weights},
              {"tokenizer", tokenizer},
              {"allow_random", allow_random_weights}}},
            {"memory", memory_json()}};
}

std::string ModelConfig::resolve_path(const std::string& path, const std::string& weights_dir) const {
    if (path.empty() || std::filesystem::path(path).is_absolute())
        return path;
    const std::filesystem::path base =
        !weights_dir.empty() ? std::filesystem::path(weights_dir)
                             : (source_path.empty() ? std::filesystem::path(".")
                                                    : std::filesystem::path(source_path).parent_path());
    return (base / path).lexically_normal().string();
}

nlohmann::json ModelConfig::memory_json() const {
    nlohmann::json m = {{"rates", memory_rates}};
    if (!memory_encoder.is_null())
        m["encoder"] = memory_encoder;
    if (!memory_weights.empty())
        m["weights"] = memory_weights;
    if (!lora_weights.empty())
        m["lora"] = lora_weights;
    if (memory_window > 0)
        m["window"] = memory_window;
    return m;
}

void ModelConfig::validate() const {
    const std::string& where = source_path.empty() ? name : source_path;
    dit.validate(where);
    vae.validate(where);
    text_encoder.validate(where);
    sampler.validate(where);
    require(dit.in_dim == vae.z_dim || (dit.model_type == "i2v" && dit.in_dim == 2 * vae.z_dim + 4), where,
            "dit.in_dim (" + std::to_string(dit.in_dim) + ") must equal vae.z_dim (" +
                std::to_string(vae.z_dim) + ") (or 2*z_dim+4 for i2v)");
    require(dit.out_dim == vae.z_dim, where,
            "dit.out_dim (" + std::to_string(dit.out_dim) + ") must equal vae.z_dim (" +
                std::to_string(vae.z_dim) + ")");
    require(dit.text_dim == text_encoder.dim, where,
            "dit.text_dim (" + std::to_string(dit.text_dim) + ") must equal text_encoder.dim (" +
                std::to_string(text_encoder.dim) + ")");
    const int64_t grid_h = vae.spatial_factor() * dit.patch_size[1];
    const int64_t grid_w = vae.spatial_factor() * dit.patch_size[2];
    require(width > 0 && height > 0 && width <= 16384 && height <= 16384 && width % grid_w == 0 &&
                height % grid_h == 0,
            where,
            "video width and height must be positive multiples of " + std::to_string(grid_w) + " and " +
                std::to_string(grid_h) + " (VAE factor x DiT patch), at most 16384");
    require(fps > 0 && fps <= 120, where, "video fps must be in [1, 120]");
    require(frames >= 1 && frames <= 100000 && (frames - 1) % vae.temporal_factor() == 0, where,
            "video frames must be 1 + a multiple of " + std::to_string(vae.temporal_factor()));
}

}  // namespace memoreel
