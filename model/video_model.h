// The narrow C++ API that the CLI, the server and the trainer share: a whole Wan-family model (tokenizer,
// text encoder, DiT, VAE, sampler) built from a ModelConfig, with its weights loaded, and text-to-video
// generation.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "model/config.h"
#include "model/wan_dit.h"
#include "model/wan_vae.h"

namespace memoreel {

class Tokenizer;
class UMT5EncoderImpl;

struct GenerateRequest {
    std::string prompt;
    std::string negative_prompt;  // empty: the config's default negative prompt
    int64_t frames = 0;           // pixel frames, 1 + 4k
    int64_t width = 0;
    int64_t height = 0;
    uint64_t seed = 0;
    SamplingOverrides sampling;
};

// Called after each sampling step with (steps done, total steps).
using StepCallback = std::function<void(int64_t, int64_t)>;

class VideoModel {
  public:
    // weights_dir: folder the config's weight paths are relative to (empty: the config file's folder).
    // Networks whose weights the config leaves empty are initialised from a fixed seed when the config allows
    // random weights, and an error otherwise. dtype: the weights' dtype (bf16 runs bf16 matmuls and
    // convolutions with fp32 norms, residual stream and latents, as the official GPU inference does).
    VideoModel(const ModelConfig& config,
               const std::string& weights_dir = "",
               torch::Device device = torch::kCPU,
               torch::Dtype dtype = torch::kFloat32);
    ~VideoModel();
    VideoModel(const VideoModel&) = delete;
    VideoModel& operator=(const VideoModel&) = delete;

    const ModelConfig& config() const;
    torch::Device device() const;

    // Text -> umT5 hidden states of the real tokens (EOS included): [Lt, text_dim].
    torch::Tensor encode_prompt(const std::string& text);
    // Text -> the DiT's text embedding [1, text_len, dim] (encode_prompt + the DiT's text MLP).
    torch::Tensor embed_text(const std::string& text);
    // Samples normalised latents [z_dim, T', h, w] for the request (text-to-video).
    torch::Tensor sample_latents(const GenerateRequest& request, const StepCallback& on_step = {});
    // Latents -> frames [3, T, H, W] in [-1, 1].
    torch::Tensor decode(const torch::Tensor& latents);
    // sample_latents + decode.
    torch::Tensor generate(const GenerateRequest& request, const StepCallback& on_step = {});

    WanDiTImpl& dit();
    // The module holders (shared ownership), for components that keep a reference, such as the memory
    // encoder.
    WanDiT dit_module();
    WanVAE vae_module();
    WanVAEImpl& vae();
    UMT5EncoderImpl& text_encoder();
    Tokenizer& tokenizer();

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// Checks a request's geometry against the model (frames 1 + 4k, sizes multiples of the VAE factor x patch)
// with std::invalid_argument naming the problem. sample_latents() calls it; callers may call it before
// loading a model.
void validate_request(const ModelConfig& config, const GenerateRequest& request);

// "cpu", "cuda" or "cuda:N"; std::invalid_argument when this build or machine has no CUDA (LibTorch's own
// message for a malformed name).
torch::Device parse_device(const std::string& name);

// [3, T, H, W] in [-1, 1] -> [T, H, W, 3] uint8 (rounded), ready for a video encoder.
torch::Tensor video_to_rgb24(const torch::Tensor& video);

}  // namespace memoreel
