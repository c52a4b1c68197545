#include "model/rope.h"

namespace memoreel {

std::array<int64_t, 3> rope_axis_dims(int64_t head_dim) {
    TORCH_CHECK(head_dim % 2 == 0 && head_dim >= 12, "rope: head_dim must be even and >= 12, got ", head_dim);
    const int64_t hw = 2 * (head_dim / 6);
    return {head_dim - 2 * hw, hw, hw};
}

torch::Tensor rope_frequencies(int64_t head_dim) {
    const auto dims = rope_axis_dims(head_dim);
    const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
    std::vector<torch::Tensor> ladders;
    for (const int64_t d : dims) {
        // Same float64 operations as the official rope_params: 1 / 10000^(arange(0, d, 2) / d).
        ladders.push_back(1.0 / torch::pow(10000.0, torch::arange(0, d, 2, f64).div(static_cast<double>(d))));
    }
    return torch::cat(ladders);
}

torch::Tensor rope_pair_axes(int64_t head_dim) {
    const auto dims = rope_axis_dims(head_dim);
    std::vector<torch::Tensor> parts;
    for (int64_t a = 0; a < 3; ++a)
        parts.push_back(torch::full({dims[a] / 2}, a, torch::kLong));
    return torch::cat(parts);
}

RopeTables rope_cos_sin(const torch::Tensor& positions, int64_t head_dim) {
    TORCH_CHECK(positions.dim() >= 1 && positions.size(-1) == 3, "rope: positions must be [..., 3], got ",
                positions.sizes());
    const auto device = positions.device();
    const auto freqs = rope_frequencies(head_dim).to(device);
    const auto axes = rope_pair_axes(head_dim).to(device);
    // Each pair reads the position of its own axis; one product per angle, exactly as the official outer
    // product.
    const auto angles = positions.to(torch::kFloat64).index_select(-1, axes) * freqs;
    return {torch::cos(angles).to(torch::kFloat), torch::sin(angles).to(torch::kFloat)};
}

torch::Tensor apply_rope(const torch::Tensor& x, const RopeTables& rope) {
    const int64_t d = x.size(-1);
    TORCH_CHECK(x.dim() >= 3 && d % 2 == 0, "rope: x must be [..., L, heads, head_dim], got ", x.sizes());
    TORCH_CHECK(rope.cos.size(-1) == d / 2 && rope.sin.sizes() == rope.cos.sizes(), "rope: tables ",
                rope.cos.sizes(), " do not fit head_dim ", d);
    TORCH_CHECK(rope.cos.size(-2) == x.size(-3), "rope: tables cover ", rope.cos.size(-2), " tokens, x has ",
                x.size(-3));
    const auto c = rope.cos.unsqueeze(-2);  // broadcast over heads
    const auto s = rope.sin.unsqueeze(-2);
    const auto pairs = x.to(torch::kFloat).unflatten(-1, {d / 2, 2});
    const auto x0 = pairs.select(-1, 0);
    const auto x1 = pairs.select(-1, 1);
    // (x0 + i x1)(cos + i sin), the official complex product.
    return torch::stack({x0 * c - x1 * s, x0 * s + x1 * c}, -1).flatten(-2);
}

torch::Tensor rope_grid_positions(int64_t f,
                                  int64_t h,
                                  int64_t w,
                                  std::array<double, 3> offset,
                                  std::array<double, 3> step) {
    TORCH_CHECK(f >= 0 && h >= 0 && w >= 0, "rope: negative grid size");
    const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
    const auto axis = [&](int64_t n, int a) { return torch::arange(n, f64) * step[a] + offset[a]; };
    const auto t = axis(f, 0).view({f, 1, 1}).expand({f, h, w});
    const auto y = axis(h, 1).view({1, h, 1}).expand({f, h, w});
    const auto x = axis(w, 2).view({1, 1, w}).expand({f, h, w});
    return torch::stack({t, y, x}, -1).reshape({f * h * w, 3});
}

RopeTables rope_pad(const RopeTables& rope, int64_t length) {
    const int64_t token_dim = rope.cos.dim() - 2;
    const int64_t have = rope.cos.size(token_dim);
    TORCH_CHECK(length >= have, "rope: cannot pad ", have, " tokens to ", length);
    if (length == have)
        return rope;
    auto shape = rope.cos.sizes().vec();
    shape[token_dim] = length - have;
    return {torch::cat({rope.cos, torch::ones(shape, rope.cos.options())}, token_dim),
            torch::cat({rope.sin, torch::zeros(shape, rope.sin.options())}, token_dim)};
}

}  // namespace memoreel
