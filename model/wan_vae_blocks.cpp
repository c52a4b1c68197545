#include "model/wan_vae_blocks.h"

#include <ATen/Parallel.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <mutex>

#include "model/attention.h"

namespace memoreel::wan_vae {

namespace {

// Frames [start, start+len) of a [B,C,T,...] tensor.
torch::Tensor frames(const torch::Tensor& x, int64_t start, int64_t len) {
    return x.narrow(2, start, len);
}

// The last n frames (all when there are fewer).
torch::Tensor last_frames(const torch::Tensor& x, int64_t n) {
    const int64_t t = x.size(2);
    return n >= t ? x : x.narrow(2, t - n, n);
}

bool needs_grad(const torch::Tensor& a, const torch::Tensor& b) {
    return torch::GradMode::is_enabled() && (a.requires_grad() || (b.defined() && b.requires_grad()));
}

// 1x1(x1) convolution as a batched matmul over the flattened positions.
torch::Tensor pointwise_conv(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
    const int64_t b = x.size(0), cin = x.size(1), cout = weight.size(0);
    const auto w = weight.reshape({cout, cin});
    const auto xm = x.reshape({b, cin, -1});
    torch::Tensor y;
    if (b == 1) {
        y = bias.defined() ? at::addmm(bias.view({cout, 1}), w, xm[0]).unsqueeze(0)
                           : at::mm(w, xm[0]).unsqueeze(0);
    } else {
        y = at::matmul(w, xm);
        if (bias.defined())
            y = y + bias.view({1, cout, 1});
    }
    auto sizes = x.sizes().vec();
    sizes[1] = cout;
    return y.view(sizes);
}

torch::Tensor onednn_conv(const torch::Tensor& x,
                          const torch::Tensor& weight,
                          const torch::Tensor& bias,
                          at::IntArrayRef stride,
                          at::IntArrayRef padding) {
    const std::vector<int64_t> dilation(stride.size(), 1);
    return at::mkldnn_convolution(x.contiguous(), weight.contiguous(),
                                  bias.defined() ? c10::optional<torch::Tensor>(bias) : c10::nullopt, padding,
                                  stride, dilation, 1);
}

// One-time check that oneDNN's convolution is present, enabled and agrees with at::convolution on this
// machine.
struct FastConvSupport {
    bool fp32 = false;
    bool bf16 = false;

    FastConvSupport() {
        if (!at::hasMKLDNN() || !at::globalContext().userEnabledMkldnn())
            return;
        torch::NoGradGuard no_grad;
        auto gen = at::make_generator<at::CPUGeneratorImpl>(1234);
        const auto x = at::randn({1, 8, 4, 6, 10}, gen, torch::kFloat);
        const auto w = at::randn({6, 8, 3, 3, 3}, gen, torch::kFloat) / std::sqrt(8.0 * 27.0);
        const auto b = at::randn({6}, gen, torch::kFloat);
        const auto ref = conv_reference(x, w, b, {1, 1, 1}, {0, 1, 1});
        try {
            const auto got = onednn_conv(x, w, b, {1, 1, 1}, {0, 1, 1});
            const double diff = (got - ref).abs().max().item<double>();
            fp32 = got.sizes() == ref.sizes() && diff <= 1e-5;
            if (!fp32)
                spdlog::warn("wan_vae: oneDNN fp32 convolution differs by {}; using at::convolution", diff);
        } catch (const std::exception& e) {
            spdlog::warn("wan_vae: oneDNN fp32 convolution unavailable ({}); using at::convolution",
                         e.what());
        }
        try {
            const auto got = onednn_conv(x.to(torch::kBFloat16), w.to(torch::kBFloat16),
                                         b.to(torch::kBFloat16), {1, 1, 1}, {0, 1, 1});
            // bf16 has 8 mantissa bits: agreement to a few percent of the output scale is what is expected.
            const double diff = (got.to(torch::kFloat) - ref).abs().max().item<double>();
            bf16 = diff <= 0.05 * (1.0 + ref.abs().max().item<double>());
        } catch (const std::exception&) {
            bf16 = false;  // no bf16 support in this CPU's oneDNN: at::convolution handles bf16 instead
        }
    }
};

const FastConvSupport& fast_conv_support() {
    static const FastConvSupport support;
    return support;
}

}  // namespace

// ---------------------------------------------------------------------------------------------- cache

size_t CacheCursor::next() {
    if (index_ == cache_.feats.size()) {
        cache_.feats.emplace_back();
        cache_.rep.push_back(0);
    }
    return index_++;
}

// ---------------------------------------------------------------------------------------------- kernels

bool fast_conv_enabled(torch::Dtype dtype) {
    if (dtype == torch::kFloat)
        return fast_conv_support().fp32;
    if (dtype == torch::kBFloat16)
        return fast_conv_support().bf16;
    return false;
}

torch::Tensor conv_reference(const torch::Tensor& x,
                             const torch::Tensor& weight,
                             const torch::Tensor& bias,
                             at::IntArrayRef stride,
                             at::IntArrayRef padding) {
    const auto dt = weight.scalar_type();
    const std::vector<int64_t> dilation(stride.size(), 1), output_padding(stride.size(), 0);
    auto y = at::convolution(x.to(dt), weight, bias.defined() ? bias.to(dt) : bias, stride, padding, dilation,
                             false, output_padding, 1);
    return y.to(x.scalar_type());
}

torch::Tensor conv(const torch::Tensor& x,
                   const torch::Tensor& weight,
                   const torch::Tensor& bias,
                   at::IntArrayRef stride,
                   at::IntArrayRef padding) {
    const auto dt = weight.scalar_type();
    const auto xd = x.to(dt);
    const auto bd = bias.defined() ? bias.to(dt) : bias;
    bool pointwise = true;
    for (int64_t d = 2; d < weight.dim(); ++d)
        pointwise = pointwise && weight.size(d) == 1;
    for (size_t d = 0; d < stride.size(); ++d)
        pointwise = pointwise && stride[d] == 1 && padding[d] == 0;
    torch::Tensor y;
    if (pointwise) {
        y = pointwise_conv(xd, weight, bd);
    } else if (x.is_cpu() && fast_conv_enabled(dt)) {
        y = onednn_conv(xd, weight, bd, stride, padding);
    } else {
        const std::vector<int64_t> dilation(stride.size(), 1), output_padding(stride.size(), 0);
        y = at::convolution(xd, weight, bd, stride, padding, dilation, false, output_padding, 1);
    }
    return y.to(x.scalar_type());
}

namespace {

// Vectorisable inner loops (restrict: the compiler may not assume it otherwise, and then keeps them scalar).
void accumulate_squares(float* __restrict acc, const float* __restrict row, int64_t n) {
    for (int64_t i = 0; i < n; ++i)
        acc[i] += row[i] * row[i];
}

void scale_row(float* __restrict out,
               const float* __restrict row,
               const float* __restrict inv,
               float g,
               int64_t n) {
    for (int64_t i = 0; i < n; ++i)
        out[i] = row[i] * inv[i] * g;
}

bool fused_norm_applies(const torch::Tensor& x, const torch::Tensor& gamma) {
    return x.is_cpu() && x.scalar_type() == torch::kFloat && !needs_grad(x, gamma);
}

// The fused kernel: x contiguous fp32 [B, C, ...]; out has x's shape, positions contiguous within a channel,
// any channel and batch strides (so it can be a slice of a larger buffer).
void rms_norm_kernel(const torch::Tensor& x, const torch::Tensor& gamma, bool silu, torch::Tensor& out) {
    const int64_t c = x.size(1);
    const auto g = gamma.to(torch::kFloat).contiguous();
    const int64_t batch = x.size(0);
    const int64_t positions = c == 0 ? 0 : x.numel() / (batch * c);
    const float* xp = x.data_ptr<float>();
    const float* gp = g.data_ptr<float>();
    float* op = out.data_ptr<float>();
    const int64_t out_batch_stride = out.stride(0), out_channel_stride = out.stride(1);
    const float scale = static_cast<float>(std::sqrt(static_cast<double>(c)));
    for (int64_t b = 0; b < batch; ++b) {
        const float* xb = xp + b * c * positions;
        float* ob = op + b * out_batch_stride;
        // Each task owns a run of positions and walks the channels over it in cache-sized blocks: contiguous
        // passes only, no strided reduction.
        at::parallel_for(0, positions, 4096, [&](int64_t p0, int64_t p1) {
            constexpr int64_t kBlock = 1024;
            float inv[kBlock];
            for (int64_t p = p0; p < p1; p += kBlock) {
                const int64_t n = std::min(kBlock, p1 - p);
                std::fill(inv, inv + n, 0.0f);
                for (int64_t ch = 0; ch < c; ++ch)
                    accumulate_squares(inv, xb + ch * positions + p, n);
                for (int64_t i = 0; i < n; ++i)
                    inv[i] = scale / std::max(std::sqrt(inv[i]), 1e-12f);
                for (int64_t ch = 0; ch < c; ++ch)
                    scale_row(ob + ch * out_channel_stride + p, xb + ch * positions + p, inv, gp[ch], n);
            }
        });
    }
    if (silu)
        at::silu_(out);
}

}  // namespace

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& gamma, bool silu) {
    const int64_t c = x.size(1);
    if (!fused_norm_applies(x, gamma)) {
        // F.normalize: x / max(||x||_2, 1e-12) over channels; gamma broadcast as [1, C, 1, ...].
        std::vector<int64_t> shape(x.dim(), 1);
        shape[1] = c;
        const double scale = std::sqrt(static_cast<double>(c));
        auto y = x / x.norm(2, {1}, true).clamp_min(1e-12) * scale * gamma.to(torch::kFloat).reshape(shape);
        return silu ? torch::silu(y) : y;
    }
    const auto xc = x.contiguous();
    auto y = torch::empty_like(xc);
    rms_norm_kernel(xc, gamma, silu, y);
    return y;
}

std::shared_ptr<torch::nn::Module> make_holder(const std::string& type_name) {
    return std::make_shared<torch::nn::Module>(type_name);
}

// ---------------------------------------------------------------------------------------------- convs

namespace {

// torch.nn.ConvNd's default initialisation: kaiming-uniform with a = sqrt(5), bias uniform in
// +-1/sqrt(fan_in).
void default_conv_init(torch::Tensor& weight, torch::Tensor& bias) {
    torch::NoGradGuard no_grad;
    if (weight.is_meta())
        return;
    torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
    const double fan_in = static_cast<double>(weight.numel() / weight.size(0));
    const double bound = 1.0 / std::sqrt(fan_in);
    if (bias.defined())
        bias.uniform_(-bound, bound);
}

}  // namespace

CausalConv3dImpl::CausalConv3dImpl(int64_t in,
                                   int64_t out,
                                   std::array<int64_t, 3> kernel,
                                   std::array<int64_t, 3> stride,
                                   std::array<int64_t, 3> padding,
                                   const torch::TensorOptions& options)
    : stride_(stride), padding_(padding) {
    weight = register_parameter("weight", torch::empty({out, in, kernel[0], kernel[1], kernel[2]}, options));
    bias = register_parameter("bias", torch::empty({out}, options));
    reset_parameters();
}

void CausalConv3dImpl::reset_parameters() {
    default_conv_init(weight, bias);
}

torch::Tensor CausalConv3dImpl::forward(const torch::Tensor& x, const torch::Tensor& cache) {
    int64_t front = 2 * padding_[0];
    std::vector<torch::Tensor> parts;
    if (cache.defined() && front > 0) {
        front -= cache.size(2);
        parts.push_back(cache.to(x.device(), x.scalar_type()));
    }
    parts.push_back(x);
    if (front > 0) {
        auto sizes = x.sizes().vec();
        sizes[2] = front;
        parts.insert(parts.begin(), torch::zeros(sizes, x.options()));
    }
    const auto input = parts.size() == 1 ? x : torch::cat(parts, 2);
    // The spatial zero padding is the convolution's own (same values as the official explicit F.pad).
    return conv(input, weight, bias, {stride_[0], stride_[1], stride_[2]}, {0, padding_[1], padding_[2]});
}

torch::Tensor CausalConv3dImpl::forward_cached(const torch::Tensor& x,
                                               CacheCursor& cursor,
                                               const torch::Tensor& norm_gamma) {
    const size_t slot = cursor.next();
    torch::Tensor& old = cursor.feat(slot);
    if (norm_gamma.defined() && fused_norm_applies(x, norm_gamma) && padding_[0] > 0) {
        // Build the convolution's input in one buffer, [zero padding | cached frames | SiLU(norm(x))],
        // writing the norm straight into it: this saves a full-size copy (the torch::cat) per convolution.
        const int64_t front = 2 * padding_[0];
        const int64_t cached = old.defined() ? std::min(old.size(2), front) : 0;
        const int64_t zeros = front - cached;
        auto sizes = x.sizes().vec();
        const int64_t t = sizes[2];
        sizes[2] = front + t;
        auto buffer = torch::empty(sizes, x.options());
        if (zeros > 0)
            buffer.narrow(2, 0, zeros).zero_();
        if (cached > 0)
            buffer.narrow(2, zeros, cached).copy_(last_frames(old, cached));
        auto normed = buffer.narrow(2, front, t);
        rms_norm_kernel(x.contiguous(), norm_gamma, /*silu=*/true, normed);
        // The official cache: the last 2 input frames, with the previous cache's last frame in front of a
        // single frame (those sit right before it in the buffer); never the zero padding.
        old = (t >= 2 || cached > 0 ? last_frames(buffer, 2) : normed).clone();
        return conv(buffer, weight, bias, {stride_[0], stride_[1], stride_[2]},
                    {0, padding_[1], padding_[2]});
    }
    const auto input = norm_gamma.defined() ? rms_norm(x, norm_gamma, true) : x;
    auto keep = last_frames(input, 2).clone();
    if (keep.size(2) < 2 && old.defined())
        keep = torch::cat({last_frames(old, 1).to(keep.device()), keep}, 2);
    auto y = forward(input, old);
    old = keep;
    return y;
}

Conv2dImpl::Conv2dImpl(int64_t in,
                       int64_t out,
                       int64_t kernel,
                       int64_t stride,
                       int64_t padding,
                       const torch::TensorOptions& options)
    : stride_(stride), padding_(padding) {
    weight = register_parameter("weight", torch::empty({out, in, kernel, kernel}, options));
    bias = register_parameter("bias", torch::empty({out}, options));
    reset_parameters();
}

void Conv2dImpl::reset_parameters() {
    default_conv_init(weight, bias);
}

torch::Tensor Conv2dImpl::forward(const torch::Tensor& x, std::array<int64_t, 4> extra_pad) {
    TORCH_CHECK(x.dim() == 5, "Conv2d over frames expects [B,C,T,H,W], got ", x.sizes());
    const bool padded = extra_pad[0] || extra_pad[1] || extra_pad[2] || extra_pad[3];
    const auto input =
        padded ? at::constant_pad_nd(x, {extra_pad[0], extra_pad[1], extra_pad[2], extra_pad[3]}) : x;
    return conv(input, weight.unsqueeze(2), bias, {1, stride_, stride_}, {0, padding_, padding_});
}

RMSNormImpl::RMSNormImpl(int64_t dim, bool images, const torch::TensorOptions& options) {
    gamma = register_parameter(
        "gamma", images ? torch::ones({dim, 1, 1}, options) : torch::ones({dim, 1, 1, 1}, options));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x, bool silu) {
    return rms_norm(x, gamma, silu);
}

// ---------------------------------------------------------------------------------------------- blocks

ResidualBlockImpl::ResidualBlockImpl(int64_t in, int64_t out, const torch::TensorOptions& options)
    : VaeLayer("ResidualBlock") {
    auto residual = register_module("residual", make_holder());
    norm1 = RMSNorm(in, false, options);
    conv1 = CausalConv3d(in, out, std::array<int64_t, 3>{3, 3, 3}, std::array<int64_t, 3>{1, 1, 1},
                         std::array<int64_t, 3>{1, 1, 1}, options);
    norm2 = RMSNorm(out, false, options);
    conv2 = CausalConv3d(out, out, std::array<int64_t, 3>{3, 3, 3}, std::array<int64_t, 3>{1, 1, 1},
                         std::array<int64_t, 3>{1, 1, 1}, options);
    // Official Sequential indices: 1 SiLU, 4 SiLU and 5 Dropout carry no parameters.
    residual->register_module("0", norm1);
    residual->register_module("2", conv1);
    residual->register_module("3", norm2);
    residual->register_module("6", conv2);
    if (in != out) {
        shortcut = register_module("shortcut", CausalConv3d(in, out, std::array<int64_t, 3>{1, 1, 1},
                                                            std::array<int64_t, 3>{1, 1, 1},
                                                            std::array<int64_t, 3>{0, 0, 0}, options));
    }
}

torch::Tensor ResidualBlockImpl::forward(const torch::Tensor& x, CacheCursor& cursor) {
    // Each conv reads SiLU(RMS_norm(.)), fused into its input buffer; Dropout(0) is the identity.
    auto h = conv1->forward_cached(x, cursor, norm1->gamma);
    h = conv2->forward_cached(h, cursor, norm2->gamma);
    return h + (shortcut ? shortcut->forward(x) : x);
}

AttentionBlockImpl::AttentionBlockImpl(int64_t dim, const torch::TensorOptions& options)
    : VaeLayer("AttentionBlock") {
    norm = register_module("norm", RMSNorm(dim, true, options));
    to_qkv = register_module("to_qkv", Conv2d(dim, dim * 3, 1, 1, 0, options));
    proj = register_module("proj", Conv2d(dim, dim, 1, 1, 0, options));
    // The official block zero-initialises the output projection's weight, so it starts as the identity.
    if (!proj->weight.is_meta()) {
        torch::NoGradGuard no_grad;
        proj->weight.zero_();
    }
}

torch::Tensor AttentionBlockImpl::forward(const torch::Tensor& x, CacheCursor&) {
    return forward(x);
}

torch::Tensor AttentionBlockImpl::forward(const torch::Tensor& x) {
    const int64_t b = x.size(0), c = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
    // Per frame: [B,C,T,H,W] -> [(B T), C, H, W] (the norm and 1x1 convs are per position, so they run before
    // the relayout).
    const auto qkv = to_qkv->forward(norm->forward(x, false));  // [B, 3C, T, H, W]
    const auto per_frame = qkv.permute({0, 2, 3, 4, 1}).reshape({b * t, h * w, 1, 3 * c});
    const auto q = per_frame.narrow(3, 0, c);
    const auto k = per_frame.narrow(3, c, c);
    const auto v = per_frame.narrow(3, 2 * c, c);
    const auto o = memoreel::attention(q, k, v);  // [(B T), HW, 1, C], scale 1/sqrt(C)
    const auto y = o.reshape({b, t, h, w, c}).permute({0, 4, 1, 2, 3});
    return proj->forward(y.contiguous()) + x;
}

ResampleImpl::ResampleImpl(int64_t dim, ResampleMode mode, bool halve_up, const torch::TensorOptions& options)
    : VaeLayer("Resample"), mode_(mode) {
    auto resample = register_module("resample", make_holder());
    const bool up = mode == ResampleMode::Upsample2d || mode == ResampleMode::Upsample3d;
    // Index 0 is the Upsample or ZeroPad2d (no parameters); index 1 the conv.
    if (up) {
        conv = Conv2d(dim, halve_up ? dim / 2 : dim, 3, 1, 1, options);
    } else {
        conv = Conv2d(dim, dim, 3, 2, 0, options);
    }
    resample->register_module("1", conv);
    if (mode == ResampleMode::Upsample3d) {
        time_conv = register_module("time_conv", CausalConv3d(dim, dim * 2, std::array<int64_t, 3>{3, 1, 1},
                                                              std::array<int64_t, 3>{1, 1, 1},
                                                              std::array<int64_t, 3>{1, 0, 0}, options));
    } else if (mode == ResampleMode::Downsample3d) {
        time_conv = register_module("time_conv", CausalConv3d(dim, dim, std::array<int64_t, 3>{3, 1, 1},
                                                              std::array<int64_t, 3>{2, 1, 1},
                                                              std::array<int64_t, 3>{0, 0, 0}, options));
    }
}

// time_conv gives [B, 2C, T, H, W]; channel block 0 becomes the even frames and block 1 the odd ones.
torch::Tensor ResampleImpl::time_conv_interleaved(const torch::Tensor& x, const torch::Tensor& cache) {
    const int64_t b = x.size(0), c = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
    auto y = time_conv->forward(x, cache).view({b, 2, c, t, h, w});
    return torch::stack({y.select(1, 0), y.select(1, 1)}, 3).reshape({b, c, t * 2, h, w});
}

torch::Tensor ResampleImpl::upsample_time(const torch::Tensor& x, CacheCursor& cursor) {
    const size_t slot = cursor.next();
    torch::Tensor& feat = cursor.feat(slot);
    torch::Tensor
        head;  // the very first frame passes through unchanged (official chunk 0: state becomes Rep)
    torch::Tensor rest = x;
    if (!feat.defined() && !cursor.rep(slot)) {
        cursor.set_rep(slot, true);
        head = frames(x, 0, 1);
        rest = frames(x, 1, x.size(2) - 1);
        if (rest.size(2) == 0)
            return head;
    }
    auto keep = last_frames(rest, 2).clone();
    torch::Tensor y;
    if (cursor.rep(slot)) {
        // The first chunk after frame 0 is convolved with zero padding: frame 0's features are not used.
        if (keep.size(2) < 2)
            keep = torch::cat({torch::zeros_like(keep), keep}, 2);
        y = time_conv_interleaved(rest, torch::Tensor());
        cursor.set_rep(slot, false);
    } else {
        if (keep.size(2) < 2)
            keep = torch::cat({last_frames(feat, 1).to(keep.device()), keep}, 2);
        y = time_conv_interleaved(rest, feat);
    }
    feat = keep;
    return head.defined() ? torch::cat({head, y}, 2) : y;
}

torch::Tensor ResampleImpl::downsample_time(const torch::Tensor& x, CacheCursor& cursor) {
    const size_t slot = cursor.next();
    torch::Tensor& feat = cursor.feat(slot);
    torch::Tensor
        head;  // official chunk 0: no time conv, the frame is stored (only its last frame is ever used)
    torch::Tensor rest = x;
    if (!feat.defined()) {
        head = frames(x, 0, 1);
        rest = frames(x, 1, x.size(2) - 1);
        feat = head.clone();
        if (rest.size(2) == 0)
            return head;
    }
    TORCH_CHECK(rest.size(2) % 2 == 0,
                "wan_vae: a temporal downsample needs an even number of frames after the "
                "first; got ",
                rest.size(2), " (encoder pieces must be 1+4k, then 4k frames)");
    auto keep = last_frames(rest, 1).clone();
    auto y = time_conv->forward(torch::cat({last_frames(feat, 1).to(rest.device()), rest}, 2));
    feat = keep;
    return head.defined() ? torch::cat({head, y}, 2) : y;
}

torch::Tensor ResampleImpl::forward(const torch::Tensor& x, CacheCursor& cursor) {
    switch (mode_) {
        case ResampleMode::Upsample2d:
        case ResampleMode::Upsample3d: {
            const auto t = mode_ == ResampleMode::Upsample3d ? upsample_time(x, cursor) : x;
            // nearest-exact at an exact 2x scale picks the same source pixel as nearest (computed in fp32).
            const auto up =
                at::upsample_nearest3d(t.to(torch::kFloat), {t.size(2), t.size(3) * 2, t.size(4) * 2});
            return conv->forward(up.to(t.scalar_type()));
        }
        case ResampleMode::Downsample2d:
        case ResampleMode::Downsample3d: {
            // ZeroPad2d((0, 1, 0, 1)): one zero column on the right and one zero row at the bottom.
            const auto y = conv->forward(x, {0, 1, 0, 1});
            return mode_ == ResampleMode::Downsample3d ? downsample_time(y, cursor) : y;
        }
    }
    return x;
}

// ---------------------------------------------------------------------------------------------- 2.2
// shortcuts

torch::Tensor avg_down_3d(const torch::Tensor& x, int64_t out_channels, int64_t ft, int64_t fs) {
    const int64_t pad_t = (ft - x.size(2) % ft) % ft;
    const auto xp = pad_t > 0 ? at::constant_pad_nd(x, {0, 0, 0, 0, pad_t, 0}) : x;
    const int64_t b = xp.size(0), c = xp.size(1), t = xp.size(2), h = xp.size(3), w = xp.size(4);
    const int64_t factor = ft * fs * fs;
    TORCH_CHECK((c * factor) % out_channels == 0, "AvgDown3D: ", c, "*", factor, " not divisible by ",
                out_channels);
    TORCH_CHECK(h % fs == 0 && w % fs == 0, "AvgDown3D: size ", h, "x", w, " not divisible by ", fs);
    const int64_t group = c * factor / out_channels;
    const auto y = xp.reshape({b, c, t / ft, ft, h / fs, fs, w / fs, fs})
                       .permute({0, 1, 3, 5, 7, 2, 4, 6})
                       .reshape({b, out_channels, group, t / ft, h / fs, w / fs});
    return y.mean(2);
}

torch::Tensor dup_up_3d(const torch::Tensor& x,
                        int64_t out_channels,
                        int64_t ft,
                        int64_t fs,
                        bool first_chunk) {
    const int64_t b = x.size(0), c = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
    const int64_t factor = ft * fs * fs;
    TORCH_CHECK((out_channels * factor) % c == 0, "DupUp3D: ", out_channels, "*", factor,
                " not divisible by ", c);
    const int64_t repeats = out_channels * factor / c;
    auto y = x.repeat_interleave(repeats, 1)
                 .view({b, out_channels, ft, fs, fs, t, h, w})
                 .permute({0, 1, 5, 2, 6, 3, 7, 4})
                 .reshape({b, out_channels, t * ft, h * fs, w * fs});
    if (first_chunk && ft > 1)
        y = y.narrow(2, ft - 1, y.size(2) - (ft - 1));
    return y;
}

DownResidualBlockImpl::DownResidualBlockImpl(int64_t in,
                                             int64_t out,
                                             int64_t mult,
                                             bool temporal,
                                             bool down,
                                             const torch::TensorOptions& options)
    : VaeLayer("Down_ResidualBlock"), out_(out), ft_(temporal ? 2 : 1), fs_(down ? 2 : 1) {
    auto holder = register_module("downsamples", make_holder());
    int64_t cin = in;
    for (int64_t i = 0; i < mult; ++i) {
        layers.push_back(std::make_shared<ResidualBlockImpl>(cin, out, options));
        cin = out;
    }
    if (down) {
        layers.push_back(std::make_shared<ResampleImpl>(
            out, temporal ? ResampleMode::Downsample3d : ResampleMode::Downsample2d, false, options));
    }
    for (size_t i = 0; i < layers.size(); ++i)
        holder->register_module(std::to_string(i), layers[i]);
}

size_t DownResidualBlockImpl::cache_slots() const {
    size_t n = 0;
    for (const auto& l : layers)
        n += l->cache_slots();
    return n;
}

torch::Tensor DownResidualBlockImpl::forward(const torch::Tensor& x, CacheCursor& cursor) {
    torch::Tensor h = x;
    for (auto& layer : layers)
        h = layer->forward(h, cursor);
    return h + avg_down_3d(x, out_, ft_, fs_);
}

UpResidualBlockImpl::UpResidualBlockImpl(int64_t in,
                                         int64_t out,
                                         int64_t mult,
                                         bool temporal,
                                         bool up,
                                         const torch::TensorOptions& options)
    : VaeLayer("Up_ResidualBlock"), out_(out), ft_(temporal ? 2 : 1), up_(up) {
    auto holder = register_module("upsamples", make_holder());
    int64_t cin = in;
    for (int64_t i = 0; i < mult; ++i) {
        layers.push_back(std::make_shared<ResidualBlockImpl>(cin, out, options));
        cin = out;
    }
    if (up) {
        layers.push_back(std::make_shared<ResampleImpl>(
            out, temporal ? ResampleMode::Upsample3d : ResampleMode::Upsample2d, false, options));
    }
    for (size_t i = 0; i < layers.size(); ++i)
        holder->register_module(std::to_string(i), layers[i]);
}

size_t UpResidualBlockImpl::cache_slots() const {
    size_t n = 0;
    for (const auto& l : layers)
        n += l->cache_slots();
    return n;
}

torch::Tensor UpResidualBlockImpl::forward(const torch::Tensor& x, CacheCursor& cursor) {
    torch::Tensor h = x;
    for (auto& layer : layers)
        h = layer->forward(h, cursor);
    if (!up_)
        return h;
    return h + dup_up_3d(x, out_, ft_, 2, cursor.first_chunk());
}

// ---------------------------------------------------------------------------------------------- patchify

torch::Tensor patchify(const torch::Tensor& x, int64_t patch) {
    if (patch == 1)
        return x;
    const int64_t b = x.size(0), c = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
    TORCH_CHECK(h % patch == 0 && w % patch == 0, "patchify: size ", h, "x", w, " not divisible by ", patch);
    // "b c f (h q) (w r) -> b (c r q) f h w"
    return x.reshape({b, c, t, h / patch, patch, w / patch, patch})
        .permute({0, 1, 6, 4, 2, 3, 5})
        .reshape({b, c * patch * patch, t, h / patch, w / patch});
}

torch::Tensor unpatchify(const torch::Tensor& x, int64_t patch) {
    if (patch == 1)
        return x;
    const int64_t b = x.size(0), c = x.size(1) / (patch * patch), t = x.size(2), h = x.size(3), w = x.size(4);
    // "b (c r q) f h w -> b c f (h q) (w r)"
    return x.reshape({b, c, patch, patch, t, h, w})
        .permute({0, 1, 4, 5, 3, 6, 2})
        .reshape({b, c, t, h * patch, w * patch});
}

}  // namespace memoreel::wan_vae
