#include "model/section_sampler.h"

namespace memoreel {

torch::Tensor sample_section(WanDiTImpl& dit,
                             FlowSampler& sampler,
                             const SectionSampling& s,
                             const std::function<void(int64_t, int64_t)>& on_step) {
    const bool cfg = s.guidance != 1.0;
    TORCH_CHECK(!cfg || s.text_uncond.defined(),
                "sample_section: guidance needs an unconditional text embedding");
    const auto text = cfg ? torch::cat({s.text_cond, s.text_uncond}, 0) : s.text_cond;
    const ContextAttention none;
    const ContextAttention& context = s.context ? *s.context : none;
    torch::Tensor x = s.noise;
    const int64_t total = sampler.num_steps();
    while (!sampler.done()) {
        const int64_t i = sampler.step_index();
        const auto t = torch::full({cfg ? 2 : 1}, static_cast<double>(sampler.timestep(i)),
                                   torch::TensorOptions().device(x.device()));
        const auto input = cfg ? x.repeat({2, 1, 1, 1, 1}) : x;
        const auto v = dit_velocity(dit, input, t, text, context, s.section_times);
        const auto guided = cfg ? cfg_combine(v.slice(0, 1, 2), v.slice(0, 0, 1), s.guidance) : v;
        x = sampler.step(guided, i, x);
        if (on_step)
            on_step(i + 1, total);
    }
    return x;
}

}  // namespace memoreel
