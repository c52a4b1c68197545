// Wan's 3D rotary position embedding (wan22-spec section 2.5), generalised to real-valued positions.
//
// A head of head_dim real channels is split over three axes (t, h, w): d_t = d - 4*floor(d/6), d_h = d_w =
// 2*floor(d/6) real channels, in that order. Adjacent channels (2j, 2j+1) form a pair rotated by the angle
// pos_axis * theta_j, where each axis has its own ladder theta_j = 10000^(-2j/d_axis), j < d_axis/2.
//
// The official code tabulates integer positions 0..1023 in complex128. Here positions are arbitrary reals per
// token (the memory places tokens at fractional region centres and at negative times), so angles are computed
// per token in float64 and cast to float32; at integer positions the values equal the official table's.
// Because the rotation of q and k by the same kind of angle only leaves their difference in q.k, shifting
// every position by a constant leaves attention scores unchanged.
#pragma once

#include <torch/torch.h>

#include <array>

namespace memoreel {

// Per-pair cos/sin of the rotation angles: [..., head_dim/2] float32 each, leading dims as the positions'.
struct RopeTables {
    torch::Tensor cos;
    torch::Tensor sin;
};

// Real channels per axis (t, h, w) for a head of head_dim channels (even, >= 12).
std::array<int64_t, 3> rope_axis_dims(int64_t head_dim);

// The angular frequency of each channel pair, [head_dim/2] float64 (axis ladders concatenated t, h, w).
torch::Tensor rope_frequencies(int64_t head_dim);

// The axis (0 = t, 1 = h, 2 = w) of each channel pair, [head_dim/2] int64.
torch::Tensor rope_pair_axes(int64_t head_dim);

// positions: [..., 3] (t, h, w), any floating or integer dtype (converted to float64 before use).
// Returns cos/sin [..., head_dim/2] float32 on the positions' device.
RopeTables rope_cos_sin(const torch::Tensor& positions, int64_t head_dim);

// Rotates x [B, L, heads, head_dim] (or [L, heads, head_dim]) by tables [B, L, head_dim/2] or [L,
// head_dim/2]. Computed in fp32; returns fp32.
torch::Tensor apply_rope(const torch::Tensor& x, const RopeTables& rope);

// The positions of a token grid of f x h x w tokens flattened row-major (w fastest), as [f*h*w, 3] float64:
// token (i, j, k) sits at (offset_t + i*step_t, offset_h + j*step_h, offset_w + k*step_w). The defaults give
// the official integer grid; offset/step let a coarser grid (e.g. memory tokens) sit at the centres of the
// regions it covers, in the same units.
torch::Tensor rope_grid_positions(int64_t f,
                                  int64_t h,
                                  int64_t w,
                                  std::array<double, 3> offset = {0.0, 0.0, 0.0},
                                  std::array<double, 3> step = {1.0, 1.0, 1.0});

// Extends tables [L, D/2] (or [B, L, D/2]) along the token dim to `length` with identity rotations (cos 1,
// sin 0), so padding tokens pass through unrotated, as in the official rope_apply.
RopeTables rope_pad(const RopeTables& rope, int64_t length);

}  // namespace memoreel
