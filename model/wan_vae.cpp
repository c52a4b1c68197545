#include "model/wan_vae.h"

#include <algorithm>
#include <cmath>

namespace memoreel {

namespace wan_vae {

namespace {

using K3 = std::array<int64_t, 3>;

CausalConv3d make_conv3(int64_t in, int64_t out, const torch::TensorOptions& options) {
    return CausalConv3d(in, out, K3{3, 3, 3}, K3{1, 1, 1}, K3{1, 1, 1}, options);
}

void register_list(torch::nn::Module& parent,
                   const std::string& name,
                   const std::vector<std::shared_ptr<VaeLayer>>& layers) {
    auto holder = parent.register_module(name, make_holder());
    for (size_t i = 0; i < layers.size(); ++i)
        holder->register_module(std::to_string(i), layers[i]);
}

size_t count_slots(const std::vector<std::shared_ptr<VaeLayer>>& layers) {
    size_t n = 0;
    for (const auto& l : layers)
        n += l->cache_slots();
    return n;
}

bool contains(const std::vector<double>& values, double v) {
    return std::find(values.begin(), values.end(), v) != values.end();
}

// Middle blocks (Res, Attn, Res) and the head (RMS_norm, SiLU, conv), shared by encoder and decoder.
std::vector<std::shared_ptr<VaeLayer>> make_middle(int64_t dim, const torch::TensorOptions& options) {
    return {std::make_shared<ResidualBlockImpl>(dim, dim, options),
            std::make_shared<AttentionBlockImpl>(dim, options),
            std::make_shared<ResidualBlockImpl>(dim, dim, options)};
}

void register_head(torch::nn::Module& parent, const RMSNorm& norm, const CausalConv3d& conv) {
    auto head = parent.register_module("head", make_holder());
    head->register_module("0", norm);  // 1 is the SiLU
    head->register_module("2", conv);
}

}  // namespace

Encoder3dImpl::Encoder3dImpl(const WanVAEConfig& config, const torch::TensorOptions& options) {
    const bool v22 = config.is_v22();
    const int64_t n = static_cast<int64_t>(config.dim_mult.size());
    std::vector<int64_t> dims{config.dim};
    for (auto m : config.dim_mult)
        dims.push_back(config.dim * m);
    const int64_t in_channels = 3 * config.patch() * config.patch();
    const auto temporal = [&](int64_t i) {
        return i < static_cast<int64_t>(config.temperal_downsample.size()) && config.temperal_downsample[i];
    };

    conv1 = register_module("conv1", make_conv3(in_channels, dims[0], options));
    double scale = 1.0;
    for (int64_t i = 0; i < n; ++i) {
        const int64_t in = dims[i], out = dims[i + 1];
        const bool down = i != n - 1;
        if (v22) {
            downsamples.push_back(std::make_shared<DownResidualBlockImpl>(in, out, config.num_res_blocks,
                                                                          temporal(i), down, options));
            continue;
        }
        int64_t cin = in;
        for (int64_t r = 0; r < config.num_res_blocks; ++r) {
            downsamples.push_back(std::make_shared<ResidualBlockImpl>(cin, out, options));
            if (contains(config.attn_scales, scale))
                downsamples.push_back(std::make_shared<AttentionBlockImpl>(out, options));
            cin = out;
        }
        if (down) {
            downsamples.push_back(std::make_shared<ResampleImpl>(
                out, temporal(i) ? ResampleMode::Downsample3d : ResampleMode::Downsample2d, false, options));
            scale /= 2.0;
        }
    }
    register_list(*this, "downsamples", downsamples);
    middle = make_middle(dims.back(), options);
    register_list(*this, "middle", middle);
    head_norm = RMSNorm(dims.back(), false, options);
    head_conv = make_conv3(dims.back(), config.z_dim * 2, options);
    register_head(*this, head_norm, head_conv);
}

size_t Encoder3dImpl::cache_slots() const {
    return 2 + count_slots(downsamples) + count_slots(middle);
}

torch::Tensor Encoder3dImpl::forward(const torch::Tensor& x, CacheCursor& cursor) {
    auto h = conv1->forward_cached(x, cursor);
    for (auto& layer : downsamples)
        h = layer->forward(h, cursor);
    for (auto& layer : middle)
        h = layer->forward(h, cursor);
    return head_conv->forward_cached(h, cursor, head_norm->gamma);
}

Decoder3dImpl::Decoder3dImpl(const WanVAEConfig& config, const torch::TensorOptions& options) {
    const bool v22 = config.is_v22();
    const int64_t n = static_cast<int64_t>(config.dim_mult.size());
    // Widths dec_dim * [mult[-1], reversed mult...]; temporal upsampling is temperal_downsample reversed.
    std::vector<int64_t> dims{config.dec_dim * config.dim_mult.back()};
    for (int64_t i = n - 1; i >= 0; --i)
        dims.push_back(config.dec_dim * config.dim_mult[i]);
    std::vector<bool> temporal_up(config.temperal_downsample.rbegin(), config.temperal_downsample.rend());
    const auto temporal = [&](int64_t i) {
        return i < static_cast<int64_t>(temporal_up.size()) && temporal_up[i];
    };
    const int64_t out_channels = 3 * config.patch() * config.patch();

    conv1 = register_module("conv1", make_conv3(config.z_dim, dims[0], options));
    middle = make_middle(dims[0], options);
    register_list(*this, "middle", middle);
    double scale = 1.0 / std::pow(2.0, static_cast<double>(n - 2));
    for (int64_t i = 0; i < n; ++i) {
        int64_t in = dims[i];
        const int64_t out = dims[i + 1];
        const bool up = i != n - 1;
        if (v22) {
            upsamples.push_back(std::make_shared<UpResidualBlockImpl>(in, out, config.num_res_blocks + 1,
                                                                      temporal(i), up, options));
            continue;
        }
        // 2.1: the upsample convs halve the width, so every level after an upsampling one starts at half
        // width (the official code writes this as `if i in (1, 2, 3)` for its 4 levels).
        if (i > 0)
            in /= 2;
        for (int64_t r = 0; r < config.num_res_blocks + 1; ++r) {
            upsamples.push_back(std::make_shared<ResidualBlockImpl>(in, out, options));
            if (contains(config.attn_scales, scale))
                upsamples.push_back(std::make_shared<AttentionBlockImpl>(out, options));
            in = out;
        }
        if (up) {
            upsamples.push_back(std::make_shared<ResampleImpl>(
                out, temporal(i) ? ResampleMode::Upsample3d : ResampleMode::Upsample2d, true, options));
            scale *= 2.0;
        }
    }
    register_list(*this, "upsamples", upsamples);
    head_norm = RMSNorm(dims.back(), false, options);
    head_conv = make_conv3(dims.back(), out_channels, options);
    register_head(*this, head_norm, head_conv);
}

size_t Decoder3dImpl::cache_slots() const {
    return 2 + count_slots(middle) + count_slots(upsamples);
}

torch::Tensor Decoder3dImpl::forward(const torch::Tensor& x, CacheCursor& cursor) {
    auto h = conv1->forward_cached(x, cursor);
    for (auto& layer : middle)
        h = layer->forward(h, cursor);
    for (auto& layer : upsamples)
        h = layer->forward(h, cursor);
    return head_conv->forward_cached(h, cursor, head_norm->gamma);
}

}  // namespace wan_vae

// ---------------------------------------------------------------------------------------------- states

namespace {

constexpr int64_t kSnapshotFormat = 1;

// The slot number after a "feat." / "rep." prefix.
int64_t slot_index(const std::string& name, size_t prefix, int64_t slots) {
    const std::string digits = name.substr(prefix);
    const bool ok = !digits.empty() && digits.size() < 8 &&
                    std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; });
    const int64_t i = ok ? std::stoll(digits) : -1;
    TORCH_CHECK(i >= 0 && i < slots, "VAE state snapshot: '", name, "' does not name one of the ", slots,
                " slots");
    return i;
}

int64_t counter(const VaeStateSnapshot& s, const std::string& name) {
    const auto it = s.counters.find(name);
    TORCH_CHECK(it != s.counters.end(), "VAE state snapshot: counter '", name, "' is missing");
    return it->second;
}

}  // namespace

void VaeCodingState::reset() {
    cache_ = wan_vae::FeatCache();
    frames_in_ = frames_out_ = 0;
    batch_ = height_ = width_ = 0;
}

int64_t VaeCodingState::bytes() const {
    int64_t n = 0;
    for (const auto& t : cache_.feats)
        if (t.defined())
            n += t.numel() * static_cast<int64_t>(t.element_size());
    return n;
}

VaeStateSnapshot VaeCodingState::snapshot() const {
    VaeStateSnapshot s;
    s.counters = {{"kind", kind_},
                  {"format", kSnapshotFormat},
                  {"slots", static_cast<int64_t>(cache_.size())},
                  {"frames_in", frames_in_},
                  {"frames_out", frames_out_},
                  {"batch", batch_},
                  {"height", height_},
                  {"width", width_}};
    for (size_t i = 0; i < cache_.size(); ++i) {
        if (cache_.feats[i].defined())
            s.tensors.emplace_back("feat." + std::to_string(i), cache_.feats[i]);
        if (cache_.rep[i])
            s.counters["rep." + std::to_string(i)] = 1;
    }
    return s;
}

void VaeCodingState::restore_snapshot(const VaeStateSnapshot& s) {
    TORCH_CHECK(counter(s, "format") == kSnapshotFormat, "VAE state snapshot: unknown format ",
                counter(s, "format"));
    TORCH_CHECK(counter(s, "kind") == kind_, "VAE state snapshot: kind ", counter(s, "kind"), " where ",
                kind_, " (1 encoder, 2 decoder) was expected");
    const int64_t slots = counter(s, "slots");
    TORCH_CHECK(slots >= 0 && slots < 100000, "VAE state snapshot: bad slot count ", slots);
    reset();
    cache_.feats.resize(static_cast<size_t>(slots));
    cache_.rep.assign(static_cast<size_t>(slots), 0);
    for (const auto& [name, tensor] : s.tensors) {
        TORCH_CHECK(name.rfind("feat.", 0) == 0, "VAE state snapshot: unexpected tensor '", name, "'");
        const int64_t i = slot_index(name, 5, slots);
        TORCH_CHECK(tensor.defined() && tensor.dim() == 5, "VAE state snapshot: tensor '", name,
                    "' is not 5-D");
        cache_.feats[static_cast<size_t>(i)] = tensor;
    }
    for (const auto& [name, value] : s.counters) {
        if (name.rfind("rep.", 0) != 0)
            continue;
        const int64_t i = slot_index(name, 4, slots);
        cache_.rep[static_cast<size_t>(i)] = value != 0 ? 1 : 0;
    }
    frames_in_ = counter(s, "frames_in");
    frames_out_ = counter(s, "frames_out");
    batch_ = counter(s, "batch");
    height_ = counter(s, "height");
    width_ = counter(s, "width");
    TORCH_CHECK(frames_in_ >= 0 && (frames_in_ > 0) == (slots > 0), "VAE state snapshot: ", slots,
                " cache slots do not fit ", frames_in_, " frames consumed");
}

VaeEncoderState VaeEncoderState::restore(const VaeStateSnapshot& snapshot) {
    VaeEncoderState s;
    s.restore_snapshot(snapshot);
    return s;
}

VaeDecoderState VaeDecoderState::restore(const VaeStateSnapshot& snapshot) {
    VaeDecoderState s;
    s.restore_snapshot(snapshot);
    return s;
}

// ---------------------------------------------------------------------------------------------- the VAE

WanVAEImpl::WanVAEImpl(const WanVAEConfig& config, const torch::TensorOptions& options) : config_(config) {
    config_.validate("WanVAE");
    encoder = register_module("encoder", wan_vae::Encoder3d(config_, options));
    conv1 = register_module(
        "conv1",
        wan_vae::CausalConv3d(config_.z_dim * 2, config_.z_dim * 2, std::array<int64_t, 3>{1, 1, 1},
                              std::array<int64_t, 3>{1, 1, 1}, std::array<int64_t, 3>{0, 0, 0}, options));
    conv2 = register_module(
        "conv2",
        wan_vae::CausalConv3d(config_.z_dim, config_.z_dim, std::array<int64_t, 3>{1, 1, 1},
                              std::array<int64_t, 3>{1, 1, 1}, std::array<int64_t, 3>{0, 0, 0}, options));
    decoder = register_module("decoder", wan_vae::Decoder3d(config_, options));
    encoder_slots_ = encoder->cache_slots();
    decoder_slots_ = decoder->cache_slots();

    const auto f32 = torch::TensorOptions().dtype(torch::kFloat);
    mean_ = torch::zeros({config_.z_dim}, f32);
    auto std = torch::ones({config_.z_dim}, f32);
    if (!config_.mean.empty()) {
        mean_ = torch::tensor(config_.mean, torch::kDouble).to(torch::kFloat);
        std = torch::tensor(config_.std, torch::kDouble).to(torch::kFloat);
    }
    inv_std_ = 1.0 / std;  // in fp32, as the official scale[1]
}

void WanVAEImpl::init_weights() {
    torch::NoGradGuard no_grad;
    for (auto& m : modules(/*include_self=*/false)) {
        if (auto* c = m->as<wan_vae::CausalConv3dImpl>())
            c->reset_parameters();
        if (auto* c = m->as<wan_vae::Conv2dImpl>())
            c->reset_parameters();
        if (auto* n = m->as<wan_vae::RMSNormImpl>()) {
            if (!n->gamma.is_meta())
                n->gamma.fill_(1.0);
        }
    }
    for (auto& m : modules(false)) {
        if (auto* a = m->as<wan_vae::AttentionBlockImpl>()) {
            if (!a->proj->weight.is_meta())
                a->proj->weight.zero_();
        }
    }
}

void WanVAEImpl::set_chunks_per_pass(int64_t n) {
    TORCH_CHECK(n >= 1, "chunks_per_pass must be >= 1, got ", n);
    chunks_per_pass_ = n;
}

torch::Tensor WanVAEImpl::normalize(const torch::Tensor& mu_raw) const {
    const auto shape = std::vector<int64_t>{1, config_.z_dim, 1, 1, 1};
    return (mu_raw - mean_.to(mu_raw.device()).view(shape)) * inv_std_.to(mu_raw.device()).view(shape);
}

torch::Tensor WanVAEImpl::denormalize(const torch::Tensor& z) const {
    const auto shape = std::vector<int64_t>{1, config_.z_dim, 1, 1, 1};
    return z / inv_std_.to(z.device()).view(shape) + mean_.to(z.device()).view(shape);
}

void WanVAEImpl::check_video(const VaeCodingState& state, const torch::Tensor& video) const {
    TORCH_CHECK(video.dim() == 5 && video.size(1) == 3, "WanVAE: video must be [B, 3, T, H, W], got ",
                video.sizes());
    const int64_t f = config_.spatial_factor();
    TORCH_CHECK(video.size(3) % f == 0 && video.size(4) % f == 0,
                "WanVAE: height and width must be multiples of ", f, ", got ", video.size(3), "x",
                video.size(4));
    if (state.started()) {
        TORCH_CHECK(
            video.size(0) == state.batch_ && video.size(3) == state.height_ && video.size(4) == state.width_,
            "WanVAE: this stream is ", state.batch_, " x ", state.height_, "x", state.width_, ", got ",
            video.sizes());
    }
}

VaeEncoding WanVAEImpl::encode_chunk(VaeEncoderState& state, const torch::Tensor& video) {
    check_video(state, video);
    const int64_t t = video.size(2);
    if (!state.started()) {
        TORCH_CHECK(t >= 1 && (t - 1) % 4 == 0,
                    "WanVAE: the first piece of a stream must have 1+4k frames, got ", t);
        TORCH_CHECK(state.cache_.empty(), "WanVAE: encoder state has a cache but no frames");
    } else {
        TORCH_CHECK(t >= 4 && t % 4 == 0, "WanVAE: pieces after the first must have 4k frames, got ", t);
        TORCH_CHECK(state.cache_.size() == encoder_slots_, "WanVAE: encoder state has ", state.cache_.size(),
                    " cache slots where this model has ", encoder_slots_, " (a state of another model?)");
    }
    const auto x = wan_vae::patchify(video.to(torch::kFloat), config_.patch());

    // Official chunks: [0] alone at the start of the clip, then 4 frames each; chunks_per_pass_ of them per
    // pass.
    std::vector<torch::Tensor> outs;
    int64_t start = 0;
    while (start < t) {
        int64_t len = 0;
        for (int64_t c = 0; c < chunks_per_pass_ && start + len < t; ++c)
            len += (state.frames_in_ == 0 && start + len == 0) ? 1 : 4;
        wan_vae::CacheCursor cursor(state.cache_, false);
        outs.push_back(encoder->forward(x.narrow(2, start, len), cursor));
        TORCH_CHECK(cursor.used() == encoder_slots_, "WanVAE: encoder used ", cursor.used(),
                    " cache slots, expected ", encoder_slots_);
        if (state.frames_in_ == 0) {
            state.batch_ = video.size(0);
            state.height_ = video.size(3);
            state.width_ = video.size(4);
        }
        state.frames_in_ += len;
        start += len;
    }
    VaeEncoding e;
    e.enc_out = outs.size() == 1 ? outs[0] : torch::cat(outs, 2);
    const auto mu_log_var = conv1->forward(e.enc_out).chunk(2, 1);
    e.mu_raw = mu_log_var[0];
    e.log_var = mu_log_var[1];
    e.mu = normalize(e.mu_raw);
    state.frames_out_ += e.mu.size(2);
    return e;
}

VaeEncoding WanVAEImpl::encode_all(const torch::Tensor& video) {
    TORCH_CHECK(video.dim() == 5 && video.size(2) >= 1, "WanVAE: video must be [B, 3, T>=1, H, W], got ",
                video.sizes());
    VaeEncoderState state;
    const int64_t used = video_frames(latent_frames(video.size(2)));
    return encode_chunk(state, used == video.size(2) ? video : video.narrow(2, 0, used));
}

torch::Tensor WanVAEImpl::encode(const torch::Tensor& video) {
    return encode_all(video).mu;
}

torch::Tensor WanVAEImpl::decode_chunk(VaeDecoderState& state, const torch::Tensor& z, bool clamp) {
    TORCH_CHECK(z.dim() == 5 && z.size(1) == config_.z_dim && z.size(2) >= 1, "WanVAE: latents must be [B, ",
                config_.z_dim, ", T>=1, h, w], got ", z.sizes());
    const int64_t f = config_.spatial_factor();
    if (state.started()) {
        TORCH_CHECK(
            z.size(0) == state.batch_ && z.size(3) * f == state.height_ && z.size(4) * f == state.width_,
            "WanVAE: this stream is ", state.batch_, " x ", state.height_ / f, "x", state.width_ / f,
            " latents, got ", z.sizes());
        TORCH_CHECK(state.cache_.size() == decoder_slots_, "WanVAE: decoder state has ", state.cache_.size(),
                    " cache slots where this model has ", decoder_slots_, " (a state of another model?)");
    } else {
        TORCH_CHECK(state.cache_.empty(), "WanVAE: decoder state has a cache but no frames");
    }
    const auto x = conv2->forward(denormalize(z.to(torch::kFloat)));
    std::vector<torch::Tensor> outs;
    const int64_t t = z.size(2);
    for (int64_t start = 0; start < t; start += chunks_per_pass_) {
        const int64_t len = std::min(chunks_per_pass_, t - start);
        wan_vae::CacheCursor cursor(state.cache_, state.frames_in_ == 0);
        outs.push_back(decoder->forward(x.narrow(2, start, len), cursor));
        TORCH_CHECK(cursor.used() == decoder_slots_, "WanVAE: decoder used ", cursor.used(),
                    " cache slots, expected ", decoder_slots_);
        if (state.frames_in_ == 0) {
            state.batch_ = z.size(0);
            state.height_ = z.size(3) * f;
            state.width_ = z.size(4) * f;
        }
        state.frames_in_ += len;
    }
    auto out = wan_vae::unpatchify(outs.size() == 1 ? outs[0] : torch::cat(outs, 2), config_.patch());
    state.frames_out_ += out.size(2);
    return clamp ? out.clamp(-1.0, 1.0) : out;
}

torch::Tensor WanVAEImpl::decode(const torch::Tensor& z, bool clamp) {
    VaeDecoderState state;
    return decode_chunk(state, z, clamp);
}

}  // namespace memoreel
