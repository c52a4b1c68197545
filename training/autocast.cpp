#include "training/autocast.h"

#include <ATen/autocast_mode.h>

namespace memoreel {

Autocast::Autocast(bool bf16, const torch::Device& device) : on_(bf16), cuda_(device.is_cuda()) {
    if (!on_)
        return;
    if (cuda_) {
        was_enabled_ = at::autocast::is_enabled();
        was_dtype_ = at::autocast::get_autocast_gpu_dtype();
        at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
        at::autocast::set_enabled(true);
    } else {
        was_enabled_ = at::autocast::is_cpu_enabled();
        was_dtype_ = at::autocast::get_autocast_cpu_dtype();
        at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
        at::autocast::set_cpu_enabled(true);
    }
    at::autocast::increment_nesting();
}

Autocast::~Autocast() {
    if (!on_)
        return;
    // The cast weights are cached for the step's forward; the outermost region frees them.
    if (at::autocast::decrement_nesting() == 0)
        at::autocast::clear_cache();
    if (cuda_) {
        at::autocast::set_enabled(was_enabled_);
        at::autocast::set_autocast_gpu_dtype(was_dtype_);
    } else {
        at::autocast::set_cpu_enabled(was_enabled_);
        at::autocast::set_autocast_cpu_dtype(was_dtype_);
    }
}

AutocastPause::AutocastPause() : cpu_(at::autocast::is_cpu_enabled()), cuda_(at::autocast::is_enabled()) {
    at::autocast::set_cpu_enabled(false);
    at::autocast::set_enabled(false);
}

AutocastPause::~AutocastPause() {
    at::autocast::set_cpu_enabled(cpu_);
    at::autocast::set_enabled(cuda_);
}

}  // namespace memoreel
