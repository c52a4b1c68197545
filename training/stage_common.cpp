#include "training/stage_common.h"

#include <spdlog/spdlog.h>

#include <filesystem>
#include <fstream>

#include "model/checkpoint.h"
#include "model/json_fields.h"
#include "model/json_util.h"
#include "model/tokenizer.h"
#include "model/umt5.h"
#include "model/wan_dit.h"
#include "stream/video_file_writer.h"
#include "training/distributed.h"

namespace fs = std::filesystem;

namespace memoreel {

std::string StageEnvironment::model_dir() const {
    return (fs::path(run_dir) / "model").string();
}
std::string StageEnvironment::stage_dir() const {
    return (fs::path(run_dir) / (config.folder.empty() ? config.stage : config.folder)).string();
}
std::string StageEnvironment::model_config_path() const {
    return (fs::path(model_dir()) / "model.json").string();
}
bool StageEnvironment::has_run_model() const {
    return fs::exists(model_config_path());
}
ModelConfig StageEnvironment::model_config() const {
    if (has_run_model())
        return ModelConfig::load(model_config_path());
    // A run that starts from another run's model (a variant trained on a shared base): its weight paths are
    // rewritten relative to this run's model folder, so that the model.json this run exports finds them.
    ModelConfig c = ModelConfig::load(config.model);
    const fs::path here = fs::absolute(model_dir());
    for (std::string* p : {&c.dit_weights, &c.vae_weights, &c.text_encoder_weights, &c.tokenizer,
                           &c.memory_weights, &c.lora_weights}) {
        if (p->empty() || *p == "byte")
            continue;
        const fs::path resolved = fs::absolute(c.resolve_path(*p, ""));
        *p = fs::path(resolved).lexically_relative(here).string();
    }
    return c;
}
std::string StageEnvironment::weights_dir() const {
    return model_dir();
}
std::string StageEnvironment::latent_cache_dir() const {
    std::string dir;
    if (config.data.is_object() && config.data.contains("latent_cache")) {
        if (!config.data["latent_cache"].is_string())
            throw CheckpointError(config.source_path, "", "field 'data.latent_cache' must be a folder name");
        dir = config.data["latent_cache"].get<std::string>();
    }
    return dir.empty() ? (fs::path(run_dir) / "latents").string() : dir;
}
std::unique_ptr<VideoModel> StageEnvironment::load_model() const {
    return std::make_unique<VideoModel>(model_config(), weights_dir(), device, torch::kFloat32);
}

void update_run_model_config(const std::string& model_dir,
                             const ModelConfig& started_with,
                             const std::function<void(ModelConfig&)>& change) {
    fs::create_directories(model_dir);
    const std::string path = (fs::path(model_dir) / "model.json").string();
    ModelConfig config = fs::exists(path) ? ModelConfig::load(path) : started_with;
    change(config);
    const bool complete = !config.dit_weights.empty() && !config.vae_weights.empty() &&
                          !config.text_encoder_weights.empty() && config.tokenizer != "byte";
    config.allow_random_weights = !complete;
    write_file_atomic(path, config.to_json().dump(2) + "\n");
}

void save_network(const std::string& model_dir, const std::string& file, const torch::nn::Module& module) {
    fs::create_directories(model_dir);
    save_tensors((fs::path(model_dir) / file).string(), module_tensors(module), {{"format", "pt"}},
                 torch::kFloat32);
}

WorldDataOptions world_data_options(const nlohmann::json& data, const std::string& where) {
    WorldDataOptions o;
    if (!data.contains("world"))
        return o;
    JsonFields f(data["world"], where, "data.world");
    f.get("stories", o.stories);
    f.get("seed", o.seed);
    f.get("seconds", o.seconds);
    f.reject_unknown();
    if (o.stories < 0 || o.stories > 10000000)
        f.fail("stories", "must be in [0, 1e7]");
    if (!(o.seconds >= 1 && o.seconds <= 3600))
        f.fail("seconds", "must be in [1, 3600]");
    return o;
}

MediaDataOptions media_data_options(const nlohmann::json& data, const std::string& where) {
    MediaDataOptions o;
    if (!data.contains("media"))
        return o;
    JsonFields f(data["media"], where, "data.media");
    f.get("manifest", o.manifest);
    f.get("split", o.split);
    f.get("window_seconds", o.window_seconds);
    f.reject_unknown();
    if (!o.manifest.empty() && !fs::exists(o.manifest))
        f.fail("manifest", o.manifest + " does not exist (run scripts/fetch_media.sh first)");
    if (!(o.window_seconds >= 0.5 && o.window_seconds <= 3600))
        f.fail("window_seconds", "must be in [0.5, 3600]");
    return o;
}

torch::Tensor embed_captions(VideoModel& model, const std::vector<std::string>& captions) {
    const ModelConfig& c = model.config();
    const TokenizedText tokens = model.tokenizer().encode(captions, c.text_encoder.text_len);
    const torch::Tensor ids = tokens.ids.to(model.device());
    const torch::Tensor mask = tokens.mask.to(model.device());
    const torch::Tensor hidden = model.text_encoder().forward(ids, mask);  // [B, L, dim]
    std::vector<torch::Tensor> per_sample;
    for (size_t i = 0; i < captions.size(); ++i) {
        const int64_t len =
            std::min<int64_t>(tokens.mask[static_cast<int64_t>(i)].sum().item<int64_t>(), c.dit.text_len);
        per_sample.push_back(hidden[static_cast<int64_t>(i)].slice(0, 0, len));
    }
    return model.dit().embed_text(per_sample);
}

void write_video(const std::string& path, const torch::Tensor& frames, int fps) {
    const torch::Tensor rgb = video_to_rgb24(frames.detach().cpu().to(torch::kFloat32));  // [T, H, W, 3]
    VideoFileOptions o;
    o.width = static_cast<int>(rgb.size(2));
    o.height = static_cast<int>(rgb.size(1));
    o.fps = fps;
    fs::create_directories(fs::path(path).parent_path());
    VideoFileWriter writer(path, o);
    for (int64_t t = 0; t < rgb.size(0); ++t)
        writer.write_rgb(rgb[t].contiguous().data_ptr<uint8_t>());
    writer.finish();
}

namespace {

// FNV-1a, 64 bit.
struct Fnv1a {
    uint64_t h = 0xcbf29ce484222325ull;
    void add(const void* data, size_t n) {
        const auto* p = static_cast<const unsigned char*>(data);
        for (size_t i = 0; i < n; ++i) {
            h ^= p[i];
            h *= 0x100000001b3ull;
        }
    }
    std::string hex() const {
        char text[32];
        std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(h));
        return text;
    }
};

// A digest of a file's bytes: the VAE file a cache was made with (for the record, and for caches stamped
// before the encoder digest).
std::string file_digest(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in)
        throw CheckpointError(path, "", "cannot be read");
    Fnv1a h;
    std::vector<char> buf(1 << 20);
    while (in) {
        in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
        h.add(buf.data(), static_cast<size_t>(in.gcount()));
    }
    return h.hex();
}

// A digest of what decides the cached latents: the encoder's tensors and the latent mean/std. A decoder
// fine-tune changes the VAE file but not this, so the cache (and the DiT trained on it) stays valid.
std::string vae_encoder_digest(WanVAEImpl& vae, const ModelConfig& c) {
    Fnv1a h;
    const auto add_tensors = [&](const auto& named) {
        for (const auto& item : named) {
            if (!is_vae_encoder_tensor(item.key()))
                continue;
            const torch::Tensor t = item.value().detach().to(torch::kCPU, torch::kFloat32).contiguous();
            h.add(item.key().data(), item.key().size());
            h.add(t.data_ptr(), static_cast<size_t>(t.numel()) * sizeof(float));
        }
    };
    add_tensors(vae.named_parameters());
    add_tensors(vae.named_buffers());
    for (const std::vector<double>* v : {&c.vae.mean, &c.vae.std})
        h.add(v->data(), v->size() * sizeof(double));
    return h.hex();
}

}  // namespace

bool is_vae_encoder_tensor(const std::string& name) {
    return name.rfind("encoder.", 0) == 0 || name.rfind("conv1.", 0) == 0;
}

std::vector<std::string> ensure_latent_cache(const StageEnvironment& env,
                                             VideoModel& model,
                                             const WorldDataOptions& world,
                                             const MediaDataOptions& media) {
    const ModelConfig& c = model.config();
    const std::string vae_file =
        c.vae_weights.empty() ? std::string() : c.resolve_path(c.vae_weights, env.weights_dir());
    const std::string vae_id = vae_file.empty() ? "seeded-random" : file_digest(vae_file);
    const std::string encoder_id = vae_file.empty() ? "seeded-random" : vae_encoder_digest(model.vae(), c);
    std::vector<std::string> folders;
    const auto one = [&](const std::string& name, const WorldDataOptions& w, const MediaDataOptions& m) {
        const std::string folder = (fs::path(env.latent_cache_dir()) / name).string();
        const std::string stamp = (fs::path(folder) / "vae.json").string();
        // What the clips were made from: another story length or window would silently mix clip lengths.
        const nlohmann::json source = {
            {"world", {{"seed", w.seed}, {"seconds", w.seconds}}},
            {"media", {{"manifest", m.manifest}, {"split", m.split}, {"window_seconds", m.window_seconds}}}};
        if (env.rank == 0) {
            if (fs::exists(stamp)) {
                const nlohmann::json old = read_json_file(stamp);
                if (old.contains("source") && old["source"] != source)
                    throw CheckpointError(folder, "",
                                          "was made from other data settings (" + old["source"].dump() +
                                              ", now " + source.dump() +
                                              "): delete the folder or restore the settings");
                // A cache stamped before the encoder digest existed is checked against the whole file.
                const bool by_encoder = old.contains("encoder");
                const std::string was = by_encoder ? old.value("encoder", "") : old.value("vae", "");
                const std::string now = by_encoder ? encoder_id : vae_id;
                if (was != now)
                    throw CheckpointError(
                        folder, "",
                        std::string("was encoded by other VAE ") +
                            (by_encoder ? "encoder weights or latent statistics" : "weights") + " (" + was +
                            ", now " + now + "): delete the folder to re-encode it");
            }
            fs::create_directories(folder);
            write_file_atomic(
                stamp,
                nlohmann::json{
                    {"encoder", encoder_id}, {"vae", vae_id}, {"vae_file", vae_file}, {"source", source}}
                        .dump() +
                    "\n");
            torch::NoGradGuard no_grad;
            int64_t last_logged = -1;
            const int64_t written = build_latent_cache(
                model.vae(), folder, w, m, static_cast<int>(c.width), static_cast<int>(c.height),
                static_cast<int>(c.fps), torch::kBFloat16,
                [&](int64_t done, int64_t total, const std::string& clip) {
                    if (done * 10 / total != last_logged) {
                        last_logged = done * 10 / total;
                        spdlog::info("latent cache {}: {}/{} ({})", name, done, total, clip);
                    }
                });
            if (written > 0)
                spdlog::info("latent cache {}: {} clips encoded", folder, written);
        }
        folders.push_back(folder);
    };
    if (world.stories > 0)
        one("world", world, MediaDataOptions{});
    if (!media.manifest.empty()) {
        WorldDataOptions none;
        none.stories = 0;
        one("media-" + media.split, none, media);
    }
    if (env.parallel)
        env.parallel->barrier();
    if (folders.empty())
        throw std::invalid_argument(env.config.source_path +
                                    ": the data section names no world stories and no media");
    return folders;
}

}  // namespace memoreel
