// Flow matching as Wan uses it (spec section 6): x_sigma = (1 - sigma) x0 + sigma eps, the model predicts the
// velocity v = eps - x0, and sampling integrates from sigma ~ 1 down to 0 on a shifted sigma grid.
//
// Samplers are stepped one model evaluation at a time so that the caller owns the model call (CFG, MoE
// switching, per-token timesteps) and so that a session can be snapshotted between steps: every sampler's
// state is a set of named tensors plus scalars (SamplerState) that restores the trajectory bit for bit.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "model/config.h"

namespace memoreel {

// ------------------------------------------------------------------------------------------------- schedules

// Which base grid the shift is applied to. The two official solvers differ here (spec 6.1):
//  - kUniPC: linspace(sigma_max, 0, N+1)[:N] with sigma_max = float32(0.999), the top of the scheduler's
//    training table (FlowUniPCMultistepScheduler.set_timesteps);
//  - kDPMPP: linspace(1, 0, N+1)[:N] (get_sampling_sigmas + FlowDPMSolverMultistepScheduler).
enum class SigmaGrid { kUniPC, kDPMPP };

struct SigmaSchedule {
    torch::Tensor sigmas;     // float32 [N+1], CPU, last value 0
    torch::Tensor timesteps;  // int64 [N], CPU: the model's timestep input int64(sigma * 1000), truncated
};

// The shifted schedule, computed the way the official code does (float64 grid and shift, then sigmas rounded
// to float32 and timesteps truncated from the float64 values), so both match the reference bit for bit.
SigmaSchedule shifted_schedule(int64_t steps, double shift, SigmaGrid grid = SigmaGrid::kUniPC);
// Just the float32 sigmas [N+1] of shifted_schedule.
torch::Tensor shifted_sigmas(int64_t steps, double shift, SigmaGrid grid = SigmaGrid::kUniPC);
// int64(sigma * 1000), truncated toward zero, in the sigmas' own precision (pass float64 sigmas for parity
// with the official schedule, whose timesteps come from the float64 values before rounding to float32). A
// trailing sigma of 0 is kept (gives timestep 0); callers drop it when they need N timesteps.
torch::Tensor timesteps_from_sigmas(const torch::Tensor& sigmas);
// sigma' = s * u / (1 + (s - 1) * u), elementwise, in the tensor's precision.
torch::Tensor shift_sigma(const torch::Tensor& u, double shift);
double shift_sigma(double u, double shift);

// -------------------------------------------------------------------------------------------------- samplers

// A sampler's resumable state: named tensors (CPU or device) and scalars. Integers are stored as doubles
// (all are small). Absent tensors (e.g. no history yet) are simply not in the map.
struct SamplerState {
    std::string solver;
    std::map<std::string, torch::Tensor> tensors;
    std::map<std::string, double> scalars;
};

class FlowSampler {
  public:
    // A sampler on an explicit schedule: sigmas float32 [N+1] ending in 0, timesteps int64 [N].
    FlowSampler(torch::Tensor sigmas, torch::Tensor timesteps);
    explicit FlowSampler(const SigmaSchedule& schedule);
    virtual ~FlowSampler() = default;
    FlowSampler(const FlowSampler&) = delete;
    FlowSampler& operator=(const FlowSampler&) = delete;

    virtual std::string name() const = 0;

    // One step: v is the model's velocity at sample x and sigma_i; returns the sample at sigma_{i+1}.
    // i must equal step_index() (steps are taken in order; reset() starts again). The result has x's dtype;
    // scalar coefficients are float32 as in the official schedulers.
    virtual torch::Tensor step(const torch::Tensor& v, int64_t i, const torch::Tensor& x) = 0;

    // Back to the state before step 0 (same schedule).
    virtual void reset();
    // Snapshot and restore. load_state checks that the solver and the schedule are the same as this
    // sampler's.
    virtual SamplerState state() const;
    virtual void load_state(const SamplerState& state);

    const torch::Tensor& sigmas() const { return sigmas_; }
    const torch::Tensor& timesteps() const { return timesteps_; }
    int64_t num_steps() const { return timesteps_.size(0); }
    int64_t step_index() const { return step_index_; }
    bool done() const { return step_index_ >= num_steps(); }
    float sigma(int64_t i) const;
    int64_t timestep(int64_t i) const;
    // x0 prediction (x - sigma_i v) of the last step taken; undefined before the first step.
    const torch::Tensor& x0_pred() const { return x0_pred_; }

  protected:
    void check_step(int64_t i, const torch::Tensor& v, const torch::Tensor& x) const;
    // 0-d float32 CPU tensor of sigma_i: the scalar arithmetic runs through torch ops on these, exactly as
    // the official code does it, so that log/expm1/solve round the same way.
    torch::Tensor sigma_t(int64_t i) const { return sigmas_[i]; }

    torch::Tensor sigmas_;
    torch::Tensor timesteps_;
    int64_t step_index_ = 0;
    torch::Tensor x0_pred_;
};

// Flow Euler: x_{i+1} = x_i + (sigma_{i+1} - sigma_i) v (diffusers FlowMatchEulerDiscreteScheduler).
class EulerSampler : public FlowSampler {
  public:
    EulerSampler(int64_t steps, double shift, SigmaGrid grid = SigmaGrid::kUniPC);
    EulerSampler(torch::Tensor sigmas, torch::Tensor timesteps);
    std::string name() const override { return "euler"; }
    torch::Tensor step(const torch::Tensor& v, int64_t i, const torch::Tensor& x) override;
};

// FlowUniPCMultistepScheduler as Wan configures it: order 2, bh2, predict_x0, lower_order_final, corrector on
// every step after the first (spec 6.2).
class UniPCSampler : public FlowSampler {
  public:
    UniPCSampler(int64_t steps, double shift);
    UniPCSampler(torch::Tensor sigmas, torch::Tensor timesteps);
    std::string name() const override { return "unipc"; }
    torch::Tensor step(const torch::Tensor& v, int64_t i, const torch::Tensor& x) override;
    void reset() override;
    SamplerState state() const override;
    void load_state(const SamplerState& state) override;

    // The sample after the corrector and before the predictor of the last step (the input at step 0).
    const torch::Tensor& corrected() const { return last_sample_; }

  private:
    torch::Tensor lambda(int64_t i) const;  // log(1 - sigma_i) - log(sigma_i), 0-d float32
    torch::Tensor corrector(const torch::Tensor& m_t, int64_t i) const;
    torch::Tensor predictor(const torch::Tensor& x, int64_t i, int64_t order) const;

    torch::Tensor m_prev_;       // x0 prediction of step i-2 (model_outputs[-2])
    torch::Tensor m_last_;       // x0 prediction of step i-1 (model_outputs[-1])
    torch::Tensor last_sample_;  // corrected sample of the last step
    int64_t lower_order_nums_ = 0;
    int64_t this_order_ = 0;
};

// FlowDPMSolverMultistepScheduler as Wan configures it (--sample_solver dpm++): dpmsolver++, order 2,
// midpoint, lower_order_final, final sigma 0; sigmas from get_sampling_sigmas (grid starting at 1.0).
class DPMPPSampler : public FlowSampler {
  public:
    DPMPPSampler(int64_t steps, double shift);
    DPMPPSampler(torch::Tensor sigmas, torch::Tensor timesteps);
    std::string name() const override { return "dpm++"; }
    torch::Tensor step(const torch::Tensor& v, int64_t i, const torch::Tensor& x) override;
    void reset() override;
    SamplerState state() const override;
    void load_state(const SamplerState& state) override;

  private:
    // The multistep history is x0_pred() (the previous step's data prediction).
    int64_t lower_order_nums_ = 0;
};

// The sampler a SamplerConfig names ("unipc", "dpm++", "euler"), on its schedule. Euler uses the UniPC grid.
std::unique_ptr<FlowSampler> make_sampler(const SamplerConfig& config);
std::unique_ptr<FlowSampler> make_sampler(const std::string& solver, int64_t steps, double shift);

// Classifier-free guidance: v_u + g (v_c - v_u).
torch::Tensor cfg_combine(const torch::Tensor& v_uncond, const torch::Tensor& v_cond, double guidance);

// -------------------------------------------------------------------------------------------------- training

// Training-time sigmas: u = sigmoid(N(mean, std)) (SD3-style logit-normal), then shifted by `shift`.
// The official training distribution is not published (spec 6.4, uncertain); this is the common choice, and
// shift > 1 moves mass toward high noise the way the sampling schedule does.
struct LogitNormalSigmaSampler {
    double mean = 0.0;
    double std = 1.0;
    double shift = 1.0;
    // Clamped into [eps, 1 - eps] so that sigma is never exactly 0 or 1 (x_t would lose all signal or noise,
    // and log-sigma terms would be infinite).
    double eps = 1e-5;

    // n sigmas, float32 [n] on CPU, drawn from gen (the default generator when absent).
    torch::Tensor sample(int64_t n, std::optional<torch::Generator> gen = std::nullopt) const;
};

// x_t = (1 - sigma) x0 + sigma noise, with sigma [B] (or a scalar tensor) broadcast over x0's trailing dims.
torch::Tensor flow_noisy_sample(const torch::Tensor& x0,
                                const torch::Tensor& noise,
                                const torch::Tensor& sigma);
// The regression target of the velocity: noise - x0.
torch::Tensor flow_velocity_target(const torch::Tensor& x0, const torch::Tensor& noise);
// The model's timestep input for a training sigma: sigma * 1000 (float, not truncated).
torch::Tensor sigma_to_model_timestep(const torch::Tensor& sigma);

}  // namespace memoreel
