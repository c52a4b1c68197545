#include "model/memory_encoder.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>

#include "model/attention.h"

namespace memoreel {

namespace F = torch::nn::functional;

namespace {

int64_t ceil_div(int64_t a, int64_t b) {
    return (a + b - 1) / b;
}

int64_t log2_exact(int64_t v) {
    int64_t n = 0;
    while ((int64_t(1) << n) < v) {
        ++n;
    }
    return n;
}

bool is_rate(int64_t v) {
    return v == 1 || v == 2 || v == 4 || v == 8;
}

// Concatenation along `dim` that treats an undefined tensor as empty.
torch::Tensor cat_defined(const torch::Tensor& a, const torch::Tensor& b, int64_t dim) {
    if (!a.defined() || a.size(dim) == 0) {
        return b;
    }
    if (!b.defined() || b.size(dim) == 0) {
        return a;
    }
    return torch::cat({a, b}, dim);
}

int64_t frames_of(const torch::Tensor& t, int64_t dim) {
    return t.defined() ? t.size(dim) : 0;
}

// The first n entries along dim, and what remains (undefined when nothing remains).
std::pair<torch::Tensor, torch::Tensor> split_front(const torch::Tensor& t, int64_t n, int64_t dim) {
    const int64_t total = frames_of(t, dim);
    torch::Tensor rest;
    if (total > n) {
        rest = t.slice(dim, n, total);
    }
    return {n > 0 ? t.slice(dim, 0, n) : torch::Tensor(), rest};
}

constexpr int64_t kSnapshotKind = 3;
constexpr int64_t kSnapshotFormat = 1;

}  // namespace

// ---- rates and config ----

std::string MemoryRates::str() const {
    std::ostringstream s;
    s << rh << "x" << rw << "x" << rt;
    return s.str();
}

MemoryRates parse_rates(const std::string& text) {
    std::vector<int64_t> v;
    std::string cur;
    auto flush = [&]() {
        if (cur.empty()) {
            throw std::invalid_argument("memory rates '" + text + "': expected \"rh x rw x rt\", e.g. 4x4x2");
        }
        size_t used = 0;
        int64_t n = 0;
        try {
            n = std::stoll(cur, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        if (used != cur.size()) {
            throw std::invalid_argument("memory rates '" + text + "': '" + cur + "' is not an integer");
        }
        v.push_back(n);
        cur.clear();
    };
    for (char c : text) {
        if (c == ' ' || c == '\t') {
            continue;
        }
        if (c == 'x' || c == 'X') {
            flush();
        } else {
            cur.push_back(c);
        }
    }
    flush();
    if (v.size() != 3) {
        throw std::invalid_argument("memory rates '" + text + "': expected three numbers \"rh x rw x rt\"");
    }
    return {v[0], v[1], v[2]};
}

MemoryEncoderConfig MemoryEncoderConfig::from_json(const nlohmann::json& j, const std::string& where) {
    MemoryEncoderConfig c;
    try {
        if (!j.is_object()) {
            throw std::invalid_argument("expected an object");
        }
        if (j.contains("rates")) {
            c.set_rates(parse_rates(j.at("rates").get<std::string>()));
        }
        if (j.contains("variant")) {
            c.variant = j.at("variant").get<std::string>();
        }
        if (j.contains("hr_channels")) {
            c.hr_channels = j.at("hr_channels").get<std::vector<int64_t>>();
        }
        if (j.contains("attn_layers")) {
            c.attn_layers = j.at("attn_layers").get<int64_t>();
        }
        if (j.contains("attn_heads")) {
            c.attn_heads = j.at("attn_heads").get<int64_t>();
        }
        if (j.contains("cross_attn_features")) {
            c.cross_attn_features = j.at("cross_attn_features").get<bool>();
        }
    } catch (const nlohmann::json::exception& e) {
        throw std::invalid_argument(where + ": memory encoder config: " + e.what());
    } catch (const std::invalid_argument& e) {
        throw std::invalid_argument(where + ": memory encoder config: " + e.what());
    }
    c.validate(where);
    return c;
}

nlohmann::json MemoryEncoderConfig::to_json() const {
    return {{"rates", rates().str()},     {"variant", variant},
            {"hr_channels", hr_channels}, {"attn_layers", attn_layers},
            {"attn_heads", attn_heads},   {"cross_attn_features", cross_attn_features}};
}

void MemoryEncoderConfig::validate(const std::string& where) const {
    auto fail = [&](const std::string& msg) {
        throw std::invalid_argument(where + ": memory encoder config: " + msg);
    };
    if (!is_rate(rh) || !is_rate(rw) || !is_rate(rt)) {
        fail("rates " + rates().str() + " must each be 1, 2, 4 or 8");
    }
    if (variant != "proposed" && variant != "only_lr" && variant != "without_lr" &&
        variant != "large_patchifier") {
        fail("unknown variant '" + variant + "' (proposed | only_lr | without_lr | large_patchifier)");
    }
    if (hr_channels.empty() || hr_channels.size() > 16) {
        fail("hr_channels must list 1 to 16 widths");
    }
    for (int64_t c : hr_channels) {
        if (c < 1 || c > 65536) {
            fail("hr_channels entries must be in [1, 65536]");
        }
    }
    if (attn_layers < 0 || attn_layers > 64) {
        fail("attn_layers must be in [0, 64]");
    }
    if (attn_heads < 1 || feature_dim() % attn_heads != 0) {
        fail("attn_heads must be >= 1 and divide the last hr_channels width");
    }
    if (cross_attn_features && !has_hr()) {
        fail(
            "cross_attn_features (the cross-attention enhancement) needs an HR branch: variant proposed or "
            "without_lr, not " +
            variant);
    }
}

// ---- tokens and positions ----

std::array<int64_t, 3> MemoryTokens::grid() const {
    if (!tokens.defined()) {
        return {0, 0, 0};
    }
    return {tokens.size(1), tokens.size(2), tokens.size(3)};
}

torch::Tensor MemoryTokens::flat() const {
    // Explicit length: a -1 cannot be inferred when there are no groups.
    return tokens.reshape({tokens.size(0), tokens.size(1) * tokens.size(2) * tokens.size(3), tokens.size(4)});
}

torch::Tensor MemoryTokens::flat_features() const {
    if (!features.defined()) {
        return {};
    }
    return features.reshape(
        {features.size(0), features.size(1) * features.size(2) * features.size(3), features.size(4)});
}

torch::Tensor memory_positions(const std::array<int64_t, 3>& grid,
                               const MemoryRates& rates,
                               double t_ref,
                               int64_t first_group) {
    const int64_t n = grid[0] * grid[1] * grid[2];
    auto pos = torch::empty({n, 3}, torch::TensorOptions().dtype(torch::kFloat64));
    auto a = pos.accessor<double, 2>();
    int64_t r = 0;
    for (int64_t g = 0; g < grid[0]; ++g) {
        const double t = double((first_group + g) * rates.rt) + double(rates.rt - 1) / 2.0 - t_ref;
        for (int64_t i = 0; i < grid[1]; ++i) {
            for (int64_t j = 0; j < grid[2]; ++j, ++r) {
                a[r][0] = t;
                a[r][1] = double(i * rates.rh) + double(rates.rh - 1) / 2.0;
                a[r][2] = double(j * rates.rw) + double(rates.rw - 1) / 2.0;
            }
        }
    }
    return pos;
}

// ---- state snapshots ----

std::vector<std::pair<std::string, torch::Tensor>> MemoryEncoderState::snapshot_tensors() const {
    std::vector<std::pair<std::string, torch::Tensor>> out;
    auto add = [&](const std::string& name, const torch::Tensor& t) {
        if (t.defined()) {
            out.emplace_back(name, t);
        }
    };
    add("hr_pending", hr_pending);
    add("pix_pending", pix_pending);
    for (size_t i = 0; i < conv_cache.size(); ++i) {
        add("conv." + std::to_string(i), conv_cache[i]);
    }
    for (size_t i = 0; i < attn_k.size(); ++i) {
        add("attn_k." + std::to_string(i), attn_k[i]);
        add("attn_v." + std::to_string(i), attn_v[i]);
    }
    add("hr_ready", hr_ready);
    add("hr_ready_features", hr_ready_features);
    add("lr_ready", lr_ready);
    return out;
}

std::map<std::string, int64_t> MemoryEncoderState::snapshot_counters() const {
    return {{"kind", kSnapshotKind},
            {"format", kSnapshotFormat},
            {"batch", batch},
            {"height", height},
            {"width", width},
            {"padded_height", padded_height},
            {"padded_width", padded_width},
            {"lr_mode", lr_mode},
            {"latent_frames_in", latent_frames_in},
            {"pixel_frames_in", pixel_frames_in},
            {"hr_groups", hr_groups},
            {"lr_groups", lr_groups},
            {"groups_emitted", groups_emitted},
            {"conv_layers", int64_t(conv_cache.size())},
            {"attn_layers", int64_t(attn_k.size())}};
}

MemoryEncoderState MemoryEncoderState::restore(
    const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
    const std::map<std::string, int64_t>& counters) {
    auto get = [&](const std::string& name) {
        const auto it = counters.find(name);
        TORCH_CHECK(it != counters.end(), "memory encoder state snapshot: missing counter '", name, "'");
        TORCH_CHECK(it->second >= 0, "memory encoder state snapshot: negative counter '", name, "'");
        return it->second;
    };
    TORCH_CHECK(get("kind") == kSnapshotKind, "memory encoder state snapshot: not a memory encoder state");
    TORCH_CHECK(get("format") == kSnapshotFormat, "memory encoder state snapshot: unknown format ",
                get("format"));
    MemoryEncoderState s;
    s.batch = get("batch");
    s.height = get("height");
    s.width = get("width");
    s.padded_height = get("padded_height");
    s.padded_width = get("padded_width");
    s.lr_mode = get("lr_mode");
    TORCH_CHECK(s.lr_mode <= 2, "memory encoder state snapshot: bad lr_mode");
    s.latent_frames_in = get("latent_frames_in");
    s.pixel_frames_in = get("pixel_frames_in");
    s.hr_groups = get("hr_groups");
    s.lr_groups = get("lr_groups");
    s.groups_emitted = get("groups_emitted");
    const int64_t nconv = get("conv_layers");
    const int64_t nattn = get("attn_layers");
    TORCH_CHECK(nconv <= 64 && nattn <= 64, "memory encoder state snapshot: too many layers");
    s.conv_cache.resize(nconv);
    s.attn_k.resize(nattn);
    s.attn_v.resize(nattn);
    for (const auto& [name, t] : tensors) {
        auto index = [&](const std::string& prefix, int64_t n) -> int64_t {
            size_t used = 0;
            int64_t i = -1;
            try {
                i = std::stoll(name.substr(prefix.size()), &used);
            } catch (const std::exception&) {
            }
            TORCH_CHECK(used == name.size() - prefix.size() && i >= 0 && i < n,
                        "memory encoder state snapshot: bad tensor name '", name, "'");
            return i;
        };
        if (name == "hr_pending") {
            s.hr_pending = t;
        } else if (name == "pix_pending") {
            s.pix_pending = t;
        } else if (name == "hr_ready") {
            s.hr_ready = t;
        } else if (name == "hr_ready_features") {
            s.hr_ready_features = t;
        } else if (name == "lr_ready") {
            s.lr_ready = t;
        } else if (name.rfind("conv.", 0) == 0) {
            s.conv_cache[index("conv.", nconv)] = t;
        } else if (name.rfind("attn_k.", 0) == 0) {
            s.attn_k[index("attn_k.", nattn)] = t;
        } else if (name.rfind("attn_v.", 0) == 0) {
            s.attn_v[index("attn_v.", nattn)] = t;
        } else {
            TORCH_CHECK(false, "memory encoder state snapshot: unknown tensor '", name, "'");
        }
    }
    return s;
}

// ---- layers ----

MemoryCausalConvImpl::MemoryCausalConvImpl(int64_t in, int64_t out, std::array<int64_t, 3> stride)
    : stride_(stride) {
    TORCH_CHECK(stride[0] == 1 || stride[0] == 2, "MemoryCausalConv: temporal stride must be 1 or 2");
    conv = register_module("conv", torch::nn::Conv3d(torch::nn::Conv3dOptions(in, out, 3)
                                                         .stride({stride[0], stride[1], stride[2]})
                                                         .padding({0, 1, 1})));
}

torch::Tensor MemoryCausalConvImpl::forward(const torch::Tensor& x, torch::Tensor& cache) {
    TORCH_CHECK(x.size(2) % stride_[0] == 0, "MemoryCausalConv: ", x.size(2),
                " frames is not a multiple of the temporal stride");
    const int64_t cf = cache_frames();
    if (!cache.defined()) {
        // Zeros: the causal (past-side) padding at the start of the history.
        cache = torch::zeros({x.size(0), x.size(1), cf, x.size(3), x.size(4)}, x.options());
    }
    const auto xin = torch::cat({cache.to(x.scalar_type()), x}, 2);
    cache = xin.slice(2, xin.size(2) - cf, xin.size(2));
    return conv->forward(xin.to(conv->weight.scalar_type()));
}

MemoryAttentionBlockImpl::MemoryAttentionBlockImpl(int64_t dim, int64_t heads) : heads_(heads) {
    norm1 = register_module("norm1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim}).eps(1e-6)));
    q = register_module("q", Linear(dim, dim));
    k = register_module("k", Linear(dim, dim));
    v = register_module("v", Linear(dim, dim));
    o = register_module("o", Linear(dim, dim));
    norm2 = register_module("norm2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim}).eps(1e-6)));
    fc1 = register_module("fc1", Linear(dim, 4 * dim));
    fc2 = register_module("fc2", Linear(4 * dim, dim));
}

torch::Tensor MemoryAttentionBlockImpl::forward(const torch::Tensor& x,
                                                torch::Tensor& k_cache,
                                                torch::Tensor& v_cache) {
    const int64_t B = x.size(0), G = x.size(1), n = x.size(2), D = x.size(3);
    const int64_t d = D / heads_;
    const auto h = norm1->forward(x);
    const auto qs = q->forward(h).view({B, G, n, heads_, d});
    const auto ks = k->forward(h).view({B, G * n, heads_, d});
    const auto vs = v->forward(h).view({B, G * n, heads_, d});
    const int64_t past = frames_of(k_cache, 1);
    const auto k_all = cat_defined(k_cache, ks, 1);
    const auto v_all = cat_defined(v_cache, vs, 1);
    // Block-causal: group g's queries see the past and groups <= g. One call per group (rather than a
    // masked score matrix over the whole history) keeps the score block at n x L.
    std::vector<torch::Tensor> outs;
    outs.reserve(G);
    for (int64_t g = 0; g < G; ++g) {
        const int64_t len = past + (g + 1) * n;
        outs.push_back(attention(qs.select(1, g), k_all.slice(1, 0, len), v_all.slice(1, 0, len)));
    }
    k_cache = k_all;
    v_cache = v_all;
    auto y = x + o->forward(torch::stack(outs, 1).reshape({B, G, n, D}));
    return y + fc2->forward(F::gelu(fc1->forward(norm2->forward(y))));
}

// ---- encoder ----

MemoryEncoderImpl::MemoryEncoderImpl(const MemoryEncoderConfig& config, WanDiT dit, WanVAE vae)
    : config_(config), dit_(std::move(dit)), vae_(std::move(vae)) {
    config_.validate("MemoryEncoder");
    TORCH_CHECK(!dit_.is_empty(), "MemoryEncoder: a DiT is required (its patch embedding is shared)");
    const auto& dc = dit_->config();
    TORCH_CHECK(dc.patch_size[0] == 1 && dc.patch_size[1] == dc.patch_size[2],
                "MemoryEncoder: the DiT patch must be (1, p, p)");
    dim_ = dc.dim;
    patch_ = dc.patch_size[1];
    z_dim_ = dc.in_dim;
    if (!vae_.is_empty()) {
        TORCH_CHECK(vae_->config().z_dim == z_dim_, "MemoryEncoder: VAE z_dim ", vae_->config().z_dim,
                    " differs from the DiT's in_dim ", z_dim_);
    }
    const int64_t rt = config_.rt, rh = config_.rh, rw = config_.rw;
    if (config_.has_hr()) {
        std::vector<std::array<int64_t, 3>> strides;
        for (int64_t i = 0; i < log2_exact(rt); ++i) {
            strides.push_back({2, 1, 1});
        }
        const int64_t nh = log2_exact(patch_ * rh), nw = log2_exact(patch_ * rw);
        for (int64_t i = 0; i < std::max(nh, nw); ++i) {
            strides.push_back({1, i < nh ? 2 : 1, i < nw ? 2 : 1});
        }
        const auto& ch = config_.hr_channels;
        const int64_t rungs = int64_t(ch.size()) - 1;
        const int64_t layers = std::max(int64_t(strides.size()), rungs);
        convs = register_module("convs", torch::nn::ModuleList());
        convs->push_back(MemoryCausalConv(z_dim_, ch[0], std::array<int64_t, 3>{1, 1, 1}));
        for (int64_t i = 0; i < layers; ++i) {
            const std::array<int64_t, 3> s =
                i < int64_t(strides.size()) ? strides[i] : std::array<int64_t, 3>{1, 1, 1};
            convs->push_back(MemoryCausalConv(ch[std::min(i, rungs)], ch[std::min(i + 1, rungs)], s));
        }
        blocks = register_module("blocks", torch::nn::ModuleList());
        for (int64_t i = 0; i < config_.attn_layers; ++i) {
            blocks->push_back(MemoryAttentionBlock(config_.feature_dim(), config_.attn_heads));
        }
        proj = register_module("proj", Linear(config_.feature_dim(), dim_));
        if (config_.variant == "proposed") {
            // Zero: an untrained encoder is exactly its LR branch (the DiT's own context representation).
            torch::NoGradGuard ng;
            proj->weight.zero_();
            proj->bias.zero_();
        }
        if (config_.cross_attn_features) {
            // The cross-attention enhancement: one zero-initialised cross-attention per DiT block.
            const auto& dc = dit_->config();
            dit_cross_attn = register_module("dit_cross_attn", torch::nn::ModuleList());
            for (int64_t i = 0; i < dc.num_layers; ++i)
                dit_cross_attn->push_back(
                    MemoryCrossAttention(dim_, config_.feature_dim(), dc.num_heads, dc.eps));
        }
    }
    if (config_.variant == "large_patchifier") {
        patchifier = register_module(
            "patchifier",
            torch::nn::Conv3d(torch::nn::Conv3dOptions(z_dim_, dim_, {rt, patch_ * rh, patch_ * rw})
                                  .stride({rt, patch_ * rh, patch_ * rw})));
        torch::NoGradGuard ng;
        const auto w = dit_->patch_embedding->weight.detach().to(torch::kFloat);  // [dim, z, 1, p, p]
        // FramePack: each entry nearest-upsampled over the larger kernel, divided by the number of copies.
        const auto big = w.repeat_interleave(rt, 2).repeat_interleave(rh, 3).repeat_interleave(rw, 4) /
                         double(rt * rh * rw);
        patchifier->weight.copy_(big);
        patchifier->bias.copy_(dit_->patch_embedding->bias.detach());
    }
}

std::array<int64_t, 3> MemoryEncoderImpl::token_grid(int64_t T, int64_t H, int64_t W) const {
    return {ceil_div(T, config_.rt), ceil_div(H, patch_ * config_.rh), ceil_div(W, patch_ * config_.rw)};
}

int64_t MemoryEncoderImpl::vae_factor() const {
    TORCH_CHECK(!vae_.is_empty(), "MemoryEncoder: pixels given but the encoder has no VAE");
    return vae_->config().spatial_factor();
}

void MemoryEncoderImpl::start(MemoryEncoderState& state, const MemoryInput& in) const {
    const bool use_lat = in.latents.defined();
    const bool use_pix = config_.has_lr() && in.pixels.defined();
    const bool use_lrl = config_.has_lr() && in.lr_latents.defined();
    TORCH_CHECK(!(use_pix && use_lrl), "MemoryEncoder: give pixels or lr_latents, not both");
    if (use_lat) {
        TORCH_CHECK(in.latents.dim() == 5 && in.latents.size(1) == z_dim_,
                    "MemoryEncoder: latents must be [B, ", z_dim_, ", n, H, W], got ", in.latents.sizes());
    }
    if (use_pix) {
        TORCH_CHECK(in.pixels.dim() == 5 && in.pixels.size(1) == 3,
                    "MemoryEncoder: pixels must be [B, 3, m, H, W], got ", in.pixels.sizes());
    }
    if (use_lrl) {
        TORCH_CHECK(in.lr_latents.dim() == 5 && in.lr_latents.size(1) == z_dim_,
                    "MemoryEncoder: lr_latents must be [B, ", z_dim_, ", g, h, w], got ",
                    in.lr_latents.sizes());
    }
    if (!state.started()) {
        const int64_t ph = patch_ * config_.rh, pw = patch_ * config_.rw;
        if (use_lat) {
            state.batch = in.latents.size(0);
            state.height = in.latents.size(3);
            state.width = in.latents.size(4);
        } else if (use_pix) {
            const int64_t s = vae_factor();
            state.batch = in.pixels.size(0);
            state.height = ceil_div(in.pixels.size(3), s);
            state.width = ceil_div(in.pixels.size(4), s);
        } else if (use_lrl) {
            state.batch = in.lr_latents.size(0);
            state.height = in.lr_latents.size(3) * config_.rh;
            state.width = in.lr_latents.size(4) * config_.rw;
        } else {
            return;  // nothing to fix the geometry yet
        }
        TORCH_CHECK(state.batch > 0 && state.height > 0 && state.width > 0, "MemoryEncoder: empty geometry");
        state.padded_height = ceil_div(state.height, ph) * ph;
        state.padded_width = ceil_div(state.width, pw) * pw;
    }
    const int64_t B = state.batch;
    if (use_lat) {
        TORCH_CHECK(in.latents.size(0) == B && in.latents.size(3) == state.height &&
                        in.latents.size(4) == state.width,
                    "MemoryEncoder: latents ", in.latents.sizes(),
                    " do not match the stream's geometry (batch ", B, ", ", state.height, "x", state.width,
                    ")");
    }
    if (use_pix) {
        const int64_t s = vae_factor();
        TORCH_CHECK(state.lr_mode != 2, "MemoryEncoder: this stream takes lr_latents, not pixels");
        TORCH_CHECK(in.pixels.size(0) == B && ceil_div(in.pixels.size(3), s) == state.height &&
                        ceil_div(in.pixels.size(4), s) == state.width,
                    "MemoryEncoder: pixels ", in.pixels.sizes(),
                    " do not match the stream's latent geometry ", state.height, "x", state.width,
                    " (VAE factor ", s, ")");
        TORCH_CHECK(!state.pix_pending.defined() || state.pix_pending.size(3) == state.padded_height * s,
                    "MemoryEncoder: pixel size changed within a stream");
    }
    if (use_lrl) {
        TORCH_CHECK(state.lr_mode != 1, "MemoryEncoder: this stream takes pixels, not lr_latents");
        TORCH_CHECK(in.lr_latents.size(0) == B && in.lr_latents.size(3) == state.padded_height / config_.rh &&
                        in.lr_latents.size(4) == state.padded_width / config_.rw,
                    "MemoryEncoder: lr_latents ", in.lr_latents.sizes(), " must be [", B, ", ", z_dim_,
                    ", g, ", state.padded_height / config_.rh, ", ", state.padded_width / config_.rw, "]");
    }
}

torch::Tensor MemoryEncoderImpl::pad_latents(const MemoryEncoderState& state, const torch::Tensor& x) const {
    const int64_t dh = state.padded_height - x.size(3), dw = state.padded_width - x.size(4);
    if (dh == 0 && dw == 0) {
        return x;
    }
    return F::pad(x, F::PadFuncOptions({0, dw, 0, dh}));
}

torch::Tensor MemoryEncoderImpl::pad_pixels(const MemoryEncoderState& state, const torch::Tensor& x) const {
    const int64_t s = vae_factor();
    const int64_t dh = state.padded_height * s - x.size(3), dw = state.padded_width * s - x.size(4);
    if (dh == 0 && dw == 0) {
        return x;
    }
    return F::pad(x, F::PadFuncOptions({0, dw, 0, dh}));
}

torch::Tensor MemoryEncoderImpl::hr_convs(const torch::Tensor& latents, std::vector<torch::Tensor>& caches) {
    if (caches.size() != convs->size()) {
        caches.assign(convs->size(), torch::Tensor());
    }
    auto x = latents;
    for (size_t i = 0; i < convs->size(); ++i) {
        x = F::silu(convs->ptr<MemoryCausalConvImpl>(i)->forward(x, caches[i]));
    }
    return x;
}

MemoryEncoderImpl::HrOut MemoryEncoderImpl::run_hr(MemoryEncoderState& state, const torch::Tensor& latents) {
    const int64_t G = latents.size(2) / config_.rt;
    HrOut out;
    if (config_.variant == "large_patchifier") {
        const auto y =
            patchifier->forward(latents.to(patchifier->weight.scalar_type()));  // [B, dim, G, h, w]
        out.tokens = y.permute({0, 2, 3, 4, 1}).to(torch::kFloat).contiguous();
    } else {
        const auto f = hr_convs(latents, state.conv_cache);  // [B, C, G, h, w]
        TORCH_CHECK(f.size(2) == G, "MemoryEncoder: internal: HR stack gave ", f.size(2), " frames for ", G,
                    " groups");
        const int64_t B = f.size(0), C = f.size(1), h = f.size(3), w = f.size(4);
        auto x = f.permute({0, 2, 3, 4, 1}).reshape({B, G, h * w, C}).to(torch::kFloat);
        if (state.attn_k.size() != blocks->size()) {
            state.attn_k.assign(blocks->size(), torch::Tensor());
            state.attn_v.assign(blocks->size(), torch::Tensor());
        }
        for (size_t l = 0; l < blocks->size(); ++l) {
            x = blocks->ptr<MemoryAttentionBlockImpl>(l)->forward(x, state.attn_k[l], state.attn_v[l]);
        }
        out.features = x.reshape({B, G, h, w, C});
        out.tokens = proj->forward(out.features).to(torch::kFloat);
    }
    state.hr_groups += G;
    return out;
}

torch::Tensor MemoryEncoderImpl::lr_tokens(const torch::Tensor& lr_latents) {
    const int64_t B = lr_latents.size(0), C = lr_latents.size(1), G = lr_latents.size(2);
    const auto x =
        lr_latents.permute({0, 2, 1, 3, 4}).reshape({B * G, C, 1, lr_latents.size(3), lr_latents.size(4)});
    const auto pe = dit_->patch_embed(x);
    return pe.tokens.view({B, G, pe.grid[1], pe.grid[2], dim_});
}

torch::Tensor MemoryEncoderImpl::lr_latents(const torch::Tensor& pixels,
                                            int64_t first_group,
                                            std::array<int64_t, 2> padded_hw) {
    const int64_t s = vae_factor();
    const int64_t rh = config_.rh, rw = config_.rw;
    MemoryEncoderState geom;
    geom.padded_height = padded_hw[0];
    geom.padded_width = padded_hw[1];
    const auto px = pad_pixels(geom, pixels);
    // Temporal box downsampling: the mean of each group's pixel frames (those present, for a partial last
    // group).
    std::vector<torch::Tensor> images;
    int64_t offset = 0;
    for (int64_t g = first_group; offset < px.size(2); ++g) {
        const int64_t n = std::min(group_pixel_end(g) - group_pixel_begin(g), px.size(2) - offset);
        images.push_back(px.slice(2, offset, offset + n).to(torch::kFloat).mean(2));
        offset += n;
    }
    TORCH_CHECK(!images.empty(), "MemoryEncoder: no pixel frames");
    const int64_t B = px.size(0), G = int64_t(images.size());
    auto img = torch::stack(images, 1).reshape({B * G, 3, px.size(3), px.size(4)});
    // Spatial area downsampling.
    img = F::avg_pool2d(img, F::AvgPool2dFuncOptions({rh, rw}).stride({rh, rw}));
    torch::Tensor z;
    {
        // The VAE is frozen here; no graph through it.
        torch::NoGradGuard ng;
        const auto dtype = vae_->encoder->conv1->weight.scalar_type();
        z = vae_->encode(img.unsqueeze(2).to(dtype)).to(torch::kFloat);  // [B*G, C, 1, h, w]
    }
    TORCH_CHECK(z.size(2) == 1 && z.size(3) * s * rh == padded_hw[0] * s,
                "MemoryEncoder: internal: unexpected LR latent ", z.sizes());
    return z.squeeze(2).view({B, G, z.size(1), z.size(3), z.size(4)}).permute({0, 2, 1, 3, 4});
}

namespace {

// The first n groups of a ready queue [B, G, ...], the rest stays in the queue.
torch::Tensor take_groups(torch::Tensor& queue, int64_t n) {
    auto [front, rest] = split_front(queue, n, 1);
    queue = rest;
    return front;
}

}  // namespace

MemoryTokens MemoryEncoderImpl::encode_append(MemoryEncoderState& state, const MemoryInput& input) {
    start(state, input);
    MemoryTokens out;
    out.first_group = state.groups_emitted;
    const int64_t rt = config_.rt;
    const bool hr_path = config_.has_hr() || config_.variant == "large_patchifier";
    if (!state.started()) {
        return out;
    }
    if (hr_path && input.latents.defined() && input.latents.size(2) > 0) {
        const auto all = cat_defined(state.hr_pending, pad_latents(state, input.latents), 2);
        const int64_t whole = all.size(2) / rt * rt;
        auto [front, rest] = split_front(all, whole, 2);
        if (whole > 0) {
            auto r = run_hr(state, front);
            state.hr_ready = cat_defined(state.hr_ready, r.tokens, 1);
            if (r.features.defined() && config_.cross_attn_features) {
                state.hr_ready_features = cat_defined(state.hr_ready_features, r.features, 1);
            }
        }
        state.hr_pending = rest;
    }
    if (input.latents.defined()) {
        state.latent_frames_in += input.latents.size(2);
    }
    if (config_.has_lr() && input.pixels.defined() && input.pixels.size(2) > 0) {
        state.lr_mode = 1;
        const auto all = cat_defined(state.pix_pending, pad_pixels(state, input.pixels), 2);
        int64_t offset = 0, n = 0;
        for (int64_t g = state.lr_groups;; ++g) {
            const int64_t len = group_pixel_end(g) - group_pixel_begin(g);
            if (offset + len > all.size(2)) {
                break;
            }
            offset += len;
            ++n;
        }
        auto [front, rest] = split_front(all, offset, 2);
        if (n > 0) {
            const auto lat = lr_latents(front, state.lr_groups, {state.padded_height, state.padded_width});
            state.lr_ready = cat_defined(state.lr_ready, lr_tokens(lat), 1);
            state.lr_groups += n;
        }
        state.pix_pending = rest;
        state.pixel_frames_in += input.pixels.size(2);
    }
    if (config_.has_lr() && input.lr_latents.defined() && input.lr_latents.size(2) > 0) {
        state.lr_mode = 2;
        state.lr_ready = cat_defined(state.lr_ready, lr_tokens(input.lr_latents), 1);
        state.lr_groups += input.lr_latents.size(2);
    }

    // Emit the groups every branch has finished.
    const int64_t hr_avail = frames_of(state.hr_ready, 1), lr_avail = frames_of(state.lr_ready, 1);
    int64_t n = 0;
    if (config_.variant == "proposed") {
        n = std::min(hr_avail, lr_avail);
    } else if (config_.variant == "only_lr") {
        n = lr_avail;
    } else {
        n = hr_avail;
    }
    const int64_t h = state.padded_height / (patch_ * config_.rh),
                  w = state.padded_width / (patch_ * config_.rw);
    if (n == 0) {
        // On the encoder's device, so callers can concatenate without checking for the empty case.
        const auto opts = dit_->patch_embedding->weight.options().dtype(torch::kFloat);
        out.tokens = torch::zeros({state.batch, 0, h, w, dim_}, opts);
        if (config_.has_hr() && config_.cross_attn_features) {
            out.features = torch::zeros({state.batch, 0, h, w, config_.feature_dim()}, opts);
        }
        return out;
    }
    torch::Tensor tokens;
    if (config_.has_lr()) {
        tokens = take_groups(state.lr_ready, n);
    }
    if (config_.variant != "only_lr") {
        const auto hr = take_groups(state.hr_ready, n);
        tokens = tokens.defined() ? tokens + hr : hr;
        if (config_.has_hr() && config_.cross_attn_features) {
            out.features = take_groups(state.hr_ready_features, n);
        }
    }
    out.tokens = tokens;
    state.groups_emitted += n;
    return out;
}

MemoryTokens MemoryEncoderImpl::encode_partial(const MemoryEncoderState& state_in) {
    MemoryEncoderState state = state_in;  // a fork: the caller's state is left as it was
    MemoryInput pad;
    if (state.started()) {
        const int64_t rt = config_.rt;
        const int64_t pending = frames_of(state.hr_pending, 2);
        const bool hr_path = config_.has_hr() || config_.variant == "large_patchifier";
        if (hr_path && pending > 0) {
            // Zero frames complete the group in time (the provisional tokens of a partial group).
            const auto& p = state.hr_pending;
            const auto zeros =
                torch::zeros({p.size(0), p.size(1), rt - pending, p.size(3), p.size(4)}, p.options());
            auto r = run_hr(state, torch::cat({p, zeros}, 2));
            state.hr_pending = torch::Tensor();
            state.hr_ready = cat_defined(state.hr_ready, r.tokens, 1);
            if (r.features.defined() && config_.cross_attn_features) {
                state.hr_ready_features = cat_defined(state.hr_ready_features, r.features, 1);
            }
        }
        if (config_.has_lr() && frames_of(state.pix_pending, 2) > 0) {
            const auto lat =
                lr_latents(state.pix_pending, state.lr_groups, {state.padded_height, state.padded_width});
            state.lr_ready = cat_defined(state.lr_ready, lr_tokens(lat), 1);
            state.lr_groups += 1;
            state.pix_pending = torch::Tensor();
        }
    }
    return encode_append(state, pad);
}

MemoryTokens MemoryEncoderImpl::encode_full(const MemoryInput& input, bool include_partial) {
    MemoryEncoderState state;
    auto out = encode_append(state, input);
    if (!include_partial) {
        return out;
    }
    auto rest = encode_partial(state);
    if (rest.groups() == 0) {
        return out;
    }
    out.tokens = cat_defined(out.tokens, rest.tokens, 1);
    if (out.features.defined() || rest.features.defined()) {
        out.features = cat_defined(out.features, rest.features, 1);
    }
    return out;
}

std::vector<std::function<torch::Tensor(const torch::Tensor&)>> MemoryEncoderImpl::cross_attention(
    const torch::Tensor& features) {
    std::vector<std::function<torch::Tensor(const torch::Tensor&)>> out;
    if (!dit_cross_attn || !features.defined() || features.size(1) == 0)
        return out;
    TORCH_CHECK(features.dim() == 3 && features.size(2) == config_.feature_dim(),
                "memory cross-attention: features must be [B, L, ", config_.feature_dim(), "], got ",
                features.sizes());
    for (size_t i = 0; i < dit_cross_attn->size(); ++i) {
        auto module = dit_cross_attn->ptr<MemoryCrossAttentionImpl>(i);
        out.push_back([module, features](const torch::Tensor& x) { return module->forward(x, features); });
    }
    return out;
}

}  // namespace memoreel
