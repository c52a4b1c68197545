#include "training/eval_retrieval.h"

#include <spdlog/spdlog.h>

#include <array>
#include <cmath>
#include <filesystem>
#include <map>
#include <sstream>

#include "model/checkpoint.h"
#include "model/context_kv.h"
#include "model/flow_matching.h"
#include "model/json_util.h"
#include "model/memory_encoder.h"
#include "model/memory_objectives.h"
#include "model/section_sampler.h"
#include "model/trained_memory.h"
#include "model/video_model.h"
#include "stream/png_encoder.h"
#include "stream/video_file_reader.h"
#include "training/image_metrics.h"
#include "training/stage_common.h"
#include "training/world.h"

namespace fs = std::filesystem;

namespace memoreel {

namespace {

struct EvalClip {
    std::string name;
    std::string source;    // world | media
    torch::Tensor pixels;  // [3, F, H, W] in [-1, 1], F = 1 + 4k
    Storyboard storyboard;
    double fps = 16;
};

std::vector<EvalClip> held_out_clips(const RetrievalEvalOptions& o, int width, int height, int fps) {
    std::vector<EvalClip> out;
    const int64_t wanted = cacheable_frames(o.history_seconds, fps);
    for (int64_t i = 0; i < o.world.stories; ++i) {
        const uint64_t seed = o.world.seed + static_cast<uint64_t>(i);
        world::StoryOptions so;
        so.seconds = std::max(o.world.seconds, o.history_seconds + 1.0);
        const world::Story story = world::Story::generate(seed, so);
        std::vector<std::vector<uint8_t>> frames(static_cast<size_t>(wanted));
        std::vector<const uint8_t*> ptrs;
        for (int64_t f = 0; f < wanted; ++f) {
            frames[static_cast<size_t>(f)].resize(static_cast<size_t>(width) * height * 3);
            world::render_frame(story, static_cast<double>(f) / fps, width, height,
                                frames[static_cast<size_t>(f)].data());
            ptrs.push_back(frames[static_cast<size_t>(f)].data());
        }
        out.push_back({"world-" + std::to_string(seed), "world", rgb_frames_to_tensor(ptrs, width, height),
                       Storyboard::from_json(story.storyboard(), "story"), static_cast<double>(fps)});
    }
    if (!o.media.manifest.empty()) {
        // One window per eval clip: its first history_seconds (or all of it, rounded down to 1 + 4k frames).
        for (const auto& c : manifest_clips(o.media)) {
            VideoFileReader reader(c.file);
            check_clip_size(reader, c.file, width, height);
            std::vector<std::vector<uint8_t>> frames;
            std::vector<uint8_t> rgb;
            while (static_cast<int64_t>(frames.size()) < wanted && reader.read_rgb(rgb))
                frames.push_back(rgb);
            const int64_t usable = cacheable_frames(static_cast<double>(frames.size()) / fps, fps);
            if (usable < 9)
                continue;
            std::vector<const uint8_t*> ptrs;
            for (int64_t f = 0; f < usable; ++f)
                ptrs.push_back(frames[static_cast<size_t>(f)].data());
            out.push_back({c.name, "media", rgb_frames_to_tensor(ptrs, width, height), Storyboard(),
                           static_cast<double>(fps)});
        }
    }
    return out;
}

// [3, H, W] in [-1, 1] -> RGB24 bytes.
std::vector<uint8_t> to_rgb(const torch::Tensor& image) {
    const torch::Tensor u8 =
        image.detach().cpu().to(torch::kFloat32).add(1.0).mul(127.5).round().clamp(0, 255).to(torch::kUInt8);
    const torch::Tensor hwc = u8.permute({1, 2, 0}).contiguous();
    return std::vector<uint8_t>(hwc.data_ptr<uint8_t>(), hwc.data_ptr<uint8_t>() + hwc.numel());
}

// Writes retrieved | original side by side as <dir>/<model folder>[-nomemory]/<clip>-<position>.png, so a
// table's figures can be checked by eye.
void write_pair_png(const std::string& dir,
                    const std::string& model_path,
                    bool with_memory,
                    const std::string& clip,
                    int64_t position,
                    const std::vector<uint8_t>& got,
                    const std::vector<uint8_t>& want,
                    int w,
                    int h) {
    const fs::path folder =
        fs::path(dir) / (fs::path(model_path).parent_path().parent_path().filename().string() +
                         (with_memory ? "" : "-nomemory"));
    fs::create_directories(folder);
    std::vector<uint8_t> pair(static_cast<size_t>(2 * w) * h * 3);
    const size_t row = static_cast<size_t>(w) * 3;
    for (int y = 0; y < h; ++y) {
        std::copy_n(got.begin() + static_cast<long>(y * row), row,
                    pair.begin() + static_cast<long>(2 * y * row));
        std::copy_n(want.begin() + static_cast<long>(y * row), row,
                    pair.begin() + static_cast<long>((2 * y + 1) * row));
    }
    const std::string png = encode_png(pair.data(), 2 * w, h);
    write_file_atomic((folder / (clip + "-" + std::to_string(position) + ".png")).string(), png);
}

}  // namespace

nlohmann::json evaluate_retrieval(const RetrievalEvalOptions& o,
                                  const std::function<void(const std::string&)>& progress) {
    nlohmann::json result = {{"history_seconds", o.history_seconds},
                             {"positions", o.positions},
                             {"buckets", o.buckets},
                             {"guidance", o.guidance},
                             {"models", nlohmann::json::array()},
                             {"metric",
                              "PSNR (dB) and SSIM of each retrieved latent frame against the original, "
                              "both decoded by the model's VAE as one image; LPIPS not reported (no "
                              "LPIPS weights offline)"}};
    // (model, with its memory?): the optional reference row first, the first model's DiT without its
    // memory or LoRA, so every memory row reads against what the caption alone brings back.
    std::vector<std::pair<std::string, bool>> rows_to_run;
    if (o.no_memory_row && !o.models.empty())
        rows_to_run.emplace_back(o.models.front(), false);
    for (const auto& m : o.models)
        rows_to_run.emplace_back(m, true);
    for (const auto& [model_path, with_memory] : rows_to_run) {
        torch::NoGradGuard no_grad;
        const ModelConfig config = ModelConfig::load(model_path);
        const std::string base = fs::path(model_path).parent_path().string();
        VideoModel model(config, base);
        const TrainedMemory trained = trained_memory(config, base);
        if (with_memory && !trained.present())
            throw CheckpointError(model_path, "", "has no trained memory (\"memory\": {\"weights\"})");
        const MemoryEncoderConfig mc = with_memory ? trained.encoder : MemoryEncoderConfig{};
        MemoryEncoder encoder{nullptr};
        if (with_memory) {
            encoder = frozen_memory_encoder(model, mc, trained.weights);
            merge_trained_lora(model, trained);
        }
        const int w = static_cast<int>(config.width), h = static_cast<int>(config.height);
        const auto clips = held_out_clips(o, w, h, static_cast<int>(config.fps));
        std::vector<double> bucket_psnr(static_cast<size_t>(o.buckets)),
            bucket_ssim(static_cast<size_t>(o.buckets));
        std::vector<int64_t> bucket_n(static_cast<size_t>(o.buckets));
        std::map<std::string, std::array<double, 3>> by_source;  // psnr sum, ssim sum, n
        nlohmann::json clip_rows = nlohmann::json::array();
        const torch::Tensor empty_text = model.embed_text("");
        for (const auto& clip : clips) {
            const torch::Tensor pixels = clip.pixels.unsqueeze(0);
            const torch::Tensor latents = model.vae().encode(pixels);  // [1, C, T, h, w]
            const int64_t t = latents.size(2);
            ContextTokens ctx;
            if (with_memory) {
                const MemoryTokens mem = encoder->encode_full({latents, pixels});
                ctx = memory_context(mem, mc.rates(), 0.0);
                if (mc.cross_attn_features)
                    ctx.cross = encoder->cross_attention(mem.flat_features());
            }
            std::vector<int64_t> positions;
            for (int64_t k = 0; k < o.positions; ++k) {
                const int64_t p = o.positions == 1
                                      ? t / 2
                                      : static_cast<int64_t>(std::llround(static_cast<double>(k) * (t - 1) /
                                                                          (o.positions - 1)));
                if (positions.empty() || positions.back() != p)
                    positions.push_back(p);
            }
            nlohmann::json rows = nlohmann::json::array();
            for (size_t first = 0; first < positions.size(); first += static_cast<size_t>(o.per_section)) {
                const size_t last = std::min(positions.size(), first + static_cast<size_t>(o.per_section));
                std::vector<int64_t> pos(positions.begin() + static_cast<long>(first),
                                         positions.begin() + static_cast<long>(last));
                const torch::Tensor idx = torch::tensor(pos, torch::kInt64);
                // The caption in force at the middle of these positions (world stories), else none.
                const double mid = latent_frame_seconds(pos[pos.size() / 2], clip.fps);
                const torch::Tensor text =
                    clip.storyboard.empty() ? empty_text : model.embed_text(clip.storyboard.in_force(mid));
                ContextAttention context;
                if (with_memory) {
                    context = attend_context(
                        model.dit(),
                        encode_context(model.dit(), ContextKV{}, ctx, [&](double) { return text; }), 0.0);
                    context.cross = ctx.cross;  // the cross-attention enhancement, when the encoder has it
                }
                SamplerConfig sc = config.sampler;
                if (o.steps > 0)
                    sc.steps = o.steps;
                auto sampler = make_sampler(sc);
                auto gen = torch::make_generator<torch::CPUGeneratorImpl>(o.seed + first);
                SectionSampling s;
                s.noise = torch::randn(
                    {1, latents.size(1), static_cast<int64_t>(pos.size()), latents.size(3), latents.size(4)},
                    gen, torch::kFloat32);
                s.text_cond = text;
                s.text_uncond = empty_text;
                s.guidance = o.guidance;
                s.context = with_memory ? &context : nullptr;
                s.section_times = idx.to(torch::kFloat64);
                const torch::Tensor retrieved = sample_section(model.dit(), *sampler, s);
                for (size_t j = 0; j < pos.size(); ++j) {
                    const auto one = [&](const torch::Tensor& z) {
                        return to_rgb(model.vae().decode(z.unsqueeze(2))[0].select(1, 0));
                    };
                    const auto got = one(retrieved.select(2, static_cast<int64_t>(j)));
                    const auto want = one(latents.select(2, pos[j]));
                    if (!o.images.empty())
                        write_pair_png(o.images, model_path, with_memory, clip.name, pos[j], got, want, w, h);
                    const double psnr = psnr_rgb(got.data(), want.data(), w, h);
                    const double ssim = ssim_rgb(got.data(), want.data(), w, h);
                    const double rel = t > 1 ? static_cast<double>(pos[j]) / (t - 1) : 0.0;
                    const int64_t b = std::min(o.buckets - 1, static_cast<int64_t>(rel * o.buckets));
                    bucket_psnr[static_cast<size_t>(b)] += psnr;
                    bucket_ssim[static_cast<size_t>(b)] += ssim;
                    ++bucket_n[static_cast<size_t>(b)];
                    auto& src = by_source[clip.source];
                    src[0] += psnr;
                    src[1] += ssim;
                    src[2] += 1;
                    rows.push_back({{"position", pos[j]}, {"relative", rel}, {"psnr", psnr}, {"ssim", ssim}});
                }
            }
            clip_rows.push_back({{"clip", clip.name},
                                 {"source", clip.source},
                                 {"latent_frames", t},
                                 {"memory_tokens", ctx.length()},
                                 {"frames", rows}});
            if (progress)
                progress(fs::path(model_path).parent_path().filename().string() + " " + clip.name + ": " +
                         std::to_string(rows.size()) + " frames retrieved");
        }
        nlohmann::json buckets = nlohmann::json::array();
        double ps = 0, ss = 0;
        int64_t n = 0;
        for (int64_t b = 0; b < o.buckets; ++b) {
            const auto i = static_cast<size_t>(b);
            buckets.push_back({{"from", static_cast<double>(b) / o.buckets},
                               {"to", static_cast<double>(b + 1) / o.buckets},
                               {"frames", bucket_n[i]},
                               {"psnr", bucket_n[i] ? bucket_psnr[i] / bucket_n[i] : 0.0},
                               {"ssim", bucket_n[i] ? bucket_ssim[i] / bucket_n[i] : 0.0}});
            ps += bucket_psnr[i];
            ss += bucket_ssim[i];
            n += bucket_n[i];
        }
        nlohmann::json sources = nlohmann::json::object();
        for (const auto& [name, v] : by_source)
            sources[name] = {{"psnr", v[0] / v[2]}, {"ssim", v[1] / v[2]}, {"frames", v[2]}};
        result["models"].push_back(
            {{"model", model_path},
             {"memory", with_memory ? nlohmann::json{{"variant", mc.variant}, {"rates", mc.rates().str()}}
                                    : nlohmann::json{{"variant", "none"}, {"rates", "(caption only)"}}},
             {"clips", clip_rows},
             {"buckets", buckets},
             {"sources", sources},
             {"overall", {{"psnr", n ? ps / n : 0.0}, {"ssim", n ? ss / n : 0.0}, {"frames", n}}}});
    }
    return result;
}

std::string retrieval_table(const nlohmann::json& r) {
    // The paper's table 1 layout, as Markdown: one row per model; columns overall, per source, per bucket of
    // the frame's position in the history (0 % = its start).
    std::ostringstream out;
    out << "retrieval from a " << r.value("history_seconds", 0.0) << " s history: " << r.value("metric", "")
        << "\n\n";
    const auto& models = r.at("models");
    if (models.empty())
        return out.str();
    std::vector<std::string> sources;
    for (const auto& item : models[0].at("sources").items())
        sources.push_back(item.key());
    out << "| model | memory | overall |";
    for (const auto& s : sources)
        out << " " << s << " |";
    char cell[64];
    for (const auto& b : models[0].at("buckets")) {
        std::snprintf(cell, sizeof(cell), " %.0f-%.0f %% |", b["from"].get<double>() * 100,
                      b["to"].get<double>() * 100);
        out << cell;
    }
    out << "\n|---|---|---|";
    for (size_t i = 0; i < sources.size() + models[0].at("buckets").size(); ++i)
        out << "---|";
    out << "\n";
    const auto format = [&](const nlohmann::json& v) {
        std::snprintf(cell, sizeof(cell), " %.2f / %.4f |", v.value("psnr", 0.0), v.value("ssim", 0.0));
        return std::string(cell);
    };
    for (const auto& m : models) {
        out << "| " << m.at("model").get<std::string>() << " | " << m["memory"]["variant"].get<std::string>()
            << " " << m["memory"]["rates"].get<std::string>() << " |" << format(m.at("overall"));
        for (const auto& s : sources)
            out << (m.at("sources").contains(s) ? format(m["sources"][s]) : std::string(" - |"));
        for (const auto& b : m.at("buckets"))
            out << format(b);
        out << "\n";
    }
    out << "\nframes: " << models[0]["overall"].value("frames", int64_t(0)) << " per model";
    for (const auto& s : sources)
        out << ", " << s << " " << models[0]["sources"][s].value("frames", 0.0);
    out << "\n";
    return out.str();
}

}  // namespace memoreel
