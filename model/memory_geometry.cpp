#include "model/memory_geometry.h"

#include <cmath>
#include <stdexcept>

namespace memoreel {

namespace {

int64_t ceil_div(int64_t a, int64_t b) {
    return (a + b - 1) / b;
}

ContextLength context(const HistoryGeometry& g, int64_t rh, int64_t rw, int64_t rt) {
    if (g.width <= 0 || g.height <= 0 || g.fps <= 0 || g.seconds < 0 || g.vae_spatial <= 0 ||
        g.vae_temporal <= 0 || g.patch <= 0 || rh <= 0 || rw <= 0 || rt <= 0)
        throw std::invalid_argument("context length: every size and rate must be positive");
    ContextLength c;
    const double frames = g.seconds * g.fps;
    const double cell_h = static_cast<double>(g.vae_spatial * g.patch * rh);
    const double cell_w = static_cast<double>(g.vae_spatial * g.patch * rw);
    c.nominal = (g.height / cell_h) * (g.width / cell_w) * (frames / g.vae_temporal / rt);
    const int64_t n = static_cast<int64_t>(std::llround(frames));
    c.latent_frames = n <= 0 ? 0 : 1 + (n - 1) / g.vae_temporal;
    c.grid_t = ceil_div(c.latent_frames, rt);
    c.grid_h = ceil_div(ceil_div(g.height, g.vae_spatial * g.patch), rh);
    c.grid_w = ceil_div(ceil_div(g.width, g.vae_spatial * g.patch), rw);
    c.padded = c.grid_t * c.grid_h * c.grid_w;
    return c;
}

}  // namespace

ContextLength uncompressed_context(const HistoryGeometry& g) {
    return context(g, 1, 1, 1);
}

ContextLength compressed_context(const HistoryGeometry& g, int64_t rh, int64_t rw, int64_t rt) {
    return context(g, rh, rw, rt);
}

}  // namespace memoreel
