#include "bench/bench_flops.h"

#include <vector>

namespace memoreel::bench {

double dit_forward_flops(const WanDiTConfig& c, int64_t tokens, int64_t text_len) {
    const double L = static_cast<double>(tokens), Lt = static_cast<double>(text_len);
    const double d = static_cast<double>(c.dim), f = static_cast<double>(c.ffn_dim);
    const double patch = static_cast<double>(c.patch_size[0] * c.patch_size[1] * c.patch_size[2]);
    double flops = 0;
    flops += 2 * L * (c.in_dim * patch) * d;                        // patch embedding
    flops += 2 * Lt * (c.text_dim * d + d * d);                     // text embedding MLP
    flops += 2 * L * (c.freq_dim * d + d * d) + 2 * L * d * 6 * d;  // per-token time embedding + projection
    double block = 0;
    block += 4 * 2 * L * d * d;   // self-attention q, k, v, o
    block += 2 * 2 * L * L * d;   // self-attention scores and weighted sum
    block += 2 * 2 * L * d * d;   // cross-attention q, o
    block += 2 * 2 * Lt * d * d;  // cross-attention k, v
    block += 2 * 2 * L * Lt * d;  // cross-attention scores and weighted sum
    block += 2 * 2 * L * d * f;   // FFN
    flops += block * static_cast<double>(c.num_layers);
    flops += 2 * L * d * patch * c.out_dim;  // head
    return flops;
}

namespace {

// Accumulates conv FLOPs over the decoder's stages.
struct Counter {
    double flops = 0;
    void conv(double cin, double cout, double k, double voxels) { flops += 2 * cin * cout * k * voxels; }
    void residual(double cin, double cout, double voxels) {
        conv(cin, cout, 27, voxels);
        conv(cout, cout, 27, voxels);
        if (cin != cout)
            conv(cin, cout, 1, voxels);
    }
    void attention(double c, double frames, double positions) {
        conv(c, 3 * c, 1, frames * positions);
        flops += 2 * 2 * positions * positions * c * frames;
        conv(c, c, 1, frames * positions);
    }
};

}  // namespace

double vae_decode_flops(const WanVAEConfig& c,
                        int64_t latent_frames,
                        int64_t h,
                        int64_t w,
                        bool first_section) {
    Counter n;
    const double z = static_cast<double>(c.z_dim);
    const int64_t base = c.is_v22() ? c.dec_dim : c.dim;
    std::vector<double> dims{static_cast<double>(base * c.dim_mult.back())};
    for (auto it = c.dim_mult.rbegin(); it != c.dim_mult.rend(); ++it)
        dims.push_back(static_cast<double>(base * *it));
    std::vector<bool> temporal_up(c.temperal_downsample.rbegin(), c.temperal_downsample.rend());

    double frames = static_cast<double>(latent_frames);
    double hh = static_cast<double>(h), ww = static_cast<double>(w);
    auto voxels = [&] { return frames * hh * ww; };
    n.conv(z, z, 1, voxels());         // conv2
    n.conv(z, dims[0], 27, voxels());  // decoder.conv1
    n.residual(dims[0], dims[0], voxels());
    n.attention(dims[0], frames, hh * ww);
    n.residual(dims[0], dims[0], voxels());
    const size_t stages = c.dim_mult.size();
    for (size_t i = 0; i < stages; ++i) {
        double in = dims[i];
        const double out = dims[i + 1];
        // Wan 2.1's upsample convs halve the channels, so its later stages start from half the previous
        // width.
        if (!c.is_v22() && i >= 1 && i < stages)
            in = in / 2;
        for (int64_t r = 0; r < c.num_res_blocks + 1; ++r) {
            n.residual(in, out, voxels());
            in = out;
        }
        if (i + 1 == stages)
            break;
        if (temporal_up[i]) {
            n.conv(out, 2 * out, 3, voxels());  // time_conv before the temporal doubling
            frames = first_section ? 1 + 2 * (frames - 1) : 2 * frames;
        }
        hh *= 2;
        ww *= 2;
        n.conv(out, c.is_v22() ? out : out / 2, 9, voxels());  // the upsample's Conv2d 3x3 at the new size
    }
    n.conv(dims.back(), c.is_v22() ? 12 : 3, 27, voxels());  // head
    return n.flops;
}

}  // namespace memoreel::bench
