#include "training/eval_consistency.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <sstream>

#include "model/ar_session.h"
#include "model/trained_memory.h"
#include "model/video_model.h"
#include "stream/video_file_writer.h"
#include "training/consistency_metric.h"
#include "training/world.h"

namespace fs = std::filesystem;

namespace memoreel {

namespace {

std::string slug(const std::string& name) {
    std::string s;
    for (char c : name)
        s += std::isalnum(static_cast<unsigned char>(c)) ? c : '-';
    return s;
}

}  // namespace

std::vector<ConsistencySetting> table2_settings(const std::string& full_model,
                                                const std::string& scratch_model,
                                                int64_t window_only) {
    std::vector<ConsistencySetting> s;
    s.push_back({"full memory", full_model, true, -1});
    if (!scratch_model.empty())
        s.push_back({"memory without pretraining", scratch_model, true, -1});
    s.push_back({"window only", full_model, false, window_only});
    s.push_back({"no history", full_model, false, 0});
    return s;
}

nlohmann::json evaluate_consistency(const ConsistencyEvalOptions& o,
                                    const std::function<void(const std::string&)>& progress) {
    if (o.settings.empty())
        throw std::invalid_argument("eval consistency: no settings");
    if (o.frame_stride < 1)
        throw std::invalid_argument("eval consistency: frame_stride must be >= 1");
    nlohmann::json result = {
        {"stories", o.world.stories},
        {"story_seed", o.world.seed},
        {"seconds", o.world.seconds},
        {"settings", nlohmann::json::array()},
        {"metric",
         "per return of a place: colour-histogram intersection with its previous shot there (similarity) and "
         "whether that shot is the most similar earlier one (identified); per return of a character after an "
         "absence: whether its true colour covers >= 30 % of the area it covers in the ground-truth render "
         "(kept), split by whether the caption restates the colour; per shot whose caption names its place's "
         "colour: whether that colour covers >= 30 % of its rendered area (place colour obeyed); shot cores "
         "only (training/consistency_metric.h)"}};
    for (const ConsistencySetting& setting : o.settings) {
        torch::NoGradGuard no_grad;
        const ModelConfig config = ModelConfig::load(setting.model);
        const std::string base = fs::path(setting.model).parent_path().string();
        VideoModel model(config, base);
        const TrainedMemory trained = trained_memory(config, base);
        if (setting.use_memory && !trained.present() && !config.allow_random_weights)
            throw std::invalid_argument(setting.model +
                                        ": has no trained memory (\"memory\": {\"weights\"})");
        // The LoRA was trained with the memory; the baselines keep the same weights and drop the context.
        merge_trained_lora(model, trained);
        std::vector<MemoryEncoder> encoders;
        if (setting.use_memory)
            encoders.push_back(frozen_memory_encoder(model, trained.encoder, trained.weights));

        const int width = static_cast<int>(config.width), height = static_cast<int>(config.height);
        const double fps = static_cast<double>(config.fps);
        ConsistencyCounts total;
        nlohmann::json stories = nlohmann::json::array();
        for (int64_t k = 0; k < o.world.stories; ++k) {
            const uint64_t story_seed = o.world.seed + static_cast<uint64_t>(k);
            world::StoryOptions so;
            so.seconds = o.world.seconds;
            const world::Story story = world::Story::generate(story_seed, so);
            SessionSettings st;
            st.use_memory = setting.use_memory;
            st.window = setting.window >= 0 ? setting.window : config.memory_window;
            st.horizon = o.horizon;
            st.fps = fps;
            st.seed = o.seed;
            if (o.steps > 0)
                st.sampling.steps = o.steps;
            ARSession session(model, encoders, Storyboard::from_json(story.storyboard(), "story"), st);

            std::unique_ptr<VideoFileWriter> writer;
            if (!o.videos.empty()) {
                const fs::path dir = fs::path(o.videos) / slug(setting.name);
                fs::create_directories(dir);
                VideoFileOptions vo;
                vo.width = width;
                vo.height = height;
                vo.fps = static_cast<int>(config.fps);
                writer = std::make_unique<VideoFileWriter>(
                    (dir / ("story-" + std::to_string(story_seed) + ".mp4")).string(), vo);
            }
            const auto wanted = static_cast<int64_t>(std::ceil(o.world.seconds * fps));
            std::vector<GeneratedFrame> frames;
            int64_t frame = 0;
            double section_ms = 0;
            int64_t sections = 0;
            while (frame < wanted) {
                const SectionResult r = session.next_section();
                section_ms += r.sample_ms + r.decode_ms + r.memory_ms;
                ++sections;
                const torch::Tensor rgb = video_to_rgb24(r.frames.cpu().to(torch::kFloat32));  // [T, H, W, 3]
                for (int64_t t = 0; t < rgb.size(0); ++t, ++frame) {
                    const torch::Tensor one = rgb[t].contiguous();
                    const uint8_t* p = one.data_ptr<uint8_t>();
                    if (writer)
                        writer->write_rgb(p);
                    if (frame % o.frame_stride == 0)
                        frames.push_back(
                            {static_cast<double>(frame) / fps, std::vector<uint8_t>(p, p + one.numel())});
                }
            }
            if (writer)
                writer->finish();
            nlohmann::json details = nlohmann::json::array();
            const ConsistencyCounts c = score_consistency(story, frames, width, height, &details);
            total.add(c);
            nlohmann::json row = c.to_json();
            row["seed"] = story_seed;
            row["shots"] = story.shots.size();
            row["sections"] = sections;
            row["section_ms"] = sections ? section_ms / static_cast<double>(sections) : 0.0;
            row["memory_tokens"] = session.memory_tokens();
            row["returns"] = details;
            stories.push_back(row);
            if (progress) {
                std::ostringstream line;
                line << setting.name << ": story " << story_seed << ", " << story.shots.size() << " shots, "
                     << c.place_returns << " place and " << c.unstated_returns + c.stated_returns
                     << " character returns judged";
                progress(line.str());
            }
        }
        result["settings"].push_back({{"name", setting.name},
                                      {"model", setting.model},
                                      {"memory", setting.use_memory},
                                      {"window", setting.window >= 0 ? setting.window : config.memory_window},
                                      {"stories", stories},
                                      {"overall", total.to_json()}});
    }
    return result;
}

std::string consistency_table(const nlohmann::json& r) {
    // The paper's table 2 layout, as Markdown: one row per setting.
    std::ostringstream out;
    out << "story consistency over " << r.value("stories", int64_t(0)) << " held-out stories of "
        << r.value("seconds", 0.0) << " s (seed " << r.value("story_seed", uint64_t(0)) << ")\n\n";
    out << "| setting | place identified (returns) | place similarity | character kept, unstated (returns) | "
           "character kept, stated (returns) | place colour obeyed (shots) |\n|---|---|---|---|---|---|\n";
    char line[512];
    for (const auto& s : r.at("settings")) {
        const auto& a = s.at("overall");
        std::snprintf(line, sizeof(line),
                      "| %s | %.1f %% (%lld) | %.3f | %.1f %% (%lld) | %.1f %% (%lld) | %.1f %% (%lld) |\n",
                      s.at("name").get<std::string>().c_str(), a["place"]["identified"].get<double>() * 100,
                      static_cast<long long>(a["place"]["returns"].get<int64_t>()),
                      a["place"]["similarity"].get<double>(),
                      a["character_unstated"]["kept"].get<double>() * 100,
                      static_cast<long long>(a["character_unstated"]["returns"].get<int64_t>()),
                      a["character_stated"]["kept"].get<double>() * 100,
                      static_cast<long long>(a["character_stated"]["returns"].get<int64_t>()),
                      a["place_colour"]["obeyed"].get<double>() * 100,
                      static_cast<long long>(a["place_colour"]["shots"].get<int64_t>()));
        out << line;
    }
    return out.str();
}

}  // namespace memoreel
