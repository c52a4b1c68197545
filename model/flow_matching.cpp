#include "model/flow_matching.h"

#include <cmath>
#include <sstream>
#include <stdexcept>

namespace memoreel {

namespace {

// numpy.linspace(start, stop, num)[k] for k < num - 1: y = k * step + start with
// step = (stop - start) / (num - 1), in float64 and in that order (numpy multiplies the arange by the step,
// then adds start). Matching this exactly is what makes the rounded float32 sigmas agree bit for bit.
double numpy_linspace_at(double start, double stop, int64_t num, int64_t k) {
    const double step = (stop - start) / static_cast<double>(num - 1);
    return static_cast<double>(k) * step + start;
}

// Scalar helpers on 0-d float32 CPU tensors. The official schedulers do their scalar maths in float32 torch
// ops (sigmas are float32 tensors), so doing the same here keeps log/expm1/linalg.solve rounding identical.
torch::Tensor lambda_of(const torch::Tensor& sigma) {
    return torch::log(1 - sigma) - torch::log(sigma);
}

float to_float(const torch::Tensor& t) {
    return t.item<float>();
}

void check_schedule(const torch::Tensor& sigmas, const torch::Tensor& timesteps) {
    TORCH_CHECK(sigmas.dim() == 1 && sigmas.size(0) >= 2,
                "sampler: sigmas must be 1-D with N+1 >= 2 values, got ", sigmas.sizes());
    TORCH_CHECK(timesteps.dim() == 1 && timesteps.size(0) == sigmas.size(0) - 1,
                "sampler: timesteps must be 1-D with N values for N+1 sigmas, got ", timesteps.sizes(),
                " and ", sigmas.sizes());
    auto s = sigmas.accessor<float, 1>();
    const int64_t n = sigmas.size(0) - 1;
    TORCH_CHECK(s[n] == 0.0f, "sampler: the last sigma must be 0, got ", s[n]);
    for (int64_t i = 0; i < n; ++i) {
        // Strictly decreasing and in (0, 1]: equal neighbours would make the step size h zero (division by
        // zero in the multistep solvers), and sigma > 1 has no meaning for x = (1 - sigma) x0 + sigma eps.
        TORCH_CHECK(s[i] > 0.0f && s[i] <= 1.0f, "sampler: sigma ", i, " = ", s[i], " is outside (0, 1]");
        TORCH_CHECK(s[i] > s[i + 1], "sampler: sigmas must strictly decrease (sigma ", i, " = ", s[i],
                    ", sigma ", i + 1, " = ", s[i + 1], ")");
    }
}

int64_t scalar_int(const SamplerState& st, const std::string& key) {
    auto it = st.scalars.find(key);
    TORCH_CHECK(it != st.scalars.end(), "sampler state (", st.solver, "): missing scalar '", key, "'");
    return static_cast<int64_t>(std::llround(it->second));
}

torch::Tensor optional_tensor(const SamplerState& st, const std::string& key) {
    auto it = st.tensors.find(key);
    return it == st.tensors.end() ? torch::Tensor() : it->second;
}

void put(SamplerState& st, const std::string& key, const torch::Tensor& t) {
    if (t.defined())
        st.tensors[key] = t;
}

}  // namespace

// ------------------------------------------------------------------------------------------------- schedules

double shift_sigma(double u, double shift) {
    return shift * u / (1.0 + (shift - 1.0) * u);
}

torch::Tensor shift_sigma(const torch::Tensor& u, double shift) {
    return shift * u / (1 + (shift - 1.0) * u);
}

SigmaSchedule shifted_schedule(int64_t steps, double shift, SigmaGrid grid) {
    TORCH_CHECK(steps >= 1, "sampler: steps must be >= 1, got ", steps);
    TORCH_CHECK(shift > 0.0 && std::isfinite(shift), "sampler: shift must be positive, got ", shift);
    // UniPC: the scheduler's sigma_max is its training table's first entry 1 - 1/1000 held as float32 (then
    // read back with .item() as a double); sigma_min is exactly 0.
    const double start =
        grid == SigmaGrid::kUniPC ? static_cast<double>(static_cast<float>(1.0 - 1.0 / 1000.0)) : 1.0;
    std::vector<double> sig(static_cast<size_t>(steps));
    for (int64_t k = 0; k < steps; ++k)
        sig[k] = shift_sigma(numpy_linspace_at(start, 0.0, steps + 1, k), shift);
    // The DPM++ scheduler re-applies its constructor shift (1), which is the identity: 1*s/(1+0*s) == s
    // exactly.
    SigmaSchedule out;
    out.sigmas = torch::empty({steps + 1}, torch::kFloat32);
    out.timesteps = torch::empty({steps}, torch::kInt64);
    auto s = out.sigmas.accessor<float, 1>();
    auto t = out.timesteps.accessor<int64_t, 1>();
    for (int64_t k = 0; k < steps; ++k) {
        s[k] = static_cast<float>(sig[k]);
        // Truncation, from the float64 value as the reference does.
        t[k] = static_cast<int64_t>(sig[k] * 1000.0);
    }
    s[steps] = 0.0f;
    return out;
}

torch::Tensor shifted_sigmas(int64_t steps, double shift, SigmaGrid grid) {
    return shifted_schedule(steps, shift, grid).sigmas;
}

torch::Tensor timesteps_from_sigmas(const torch::Tensor& sigmas) {
    // A float -> int64 conversion truncates toward zero, like numpy's astype/torch's .to(int64).
    return (sigmas * 1000).to(torch::kInt64);
}

// ----------------------------------------------------------------------------------------------- FlowSampler

FlowSampler::FlowSampler(const SigmaSchedule& schedule) : FlowSampler(schedule.sigmas, schedule.timesteps) {}

FlowSampler::FlowSampler(torch::Tensor sigmas, torch::Tensor timesteps)
    : sigmas_(sigmas.detach().to(torch::kCPU, torch::kFloat32).contiguous().clone()),
      timesteps_(timesteps.detach().to(torch::kCPU, torch::kInt64).contiguous().clone()) {
    check_schedule(sigmas_, timesteps_);
}

float FlowSampler::sigma(int64_t i) const {
    TORCH_CHECK(i >= 0 && i <= num_steps(), "sampler: sigma index ", i, " out of range [0, ", num_steps(),
                "]");
    return sigmas_.data_ptr<float>()[i];
}

int64_t FlowSampler::timestep(int64_t i) const {
    TORCH_CHECK(i >= 0 && i < num_steps(), "sampler: step ", i, " out of range [0, ", num_steps(), ")");
    return timesteps_.data_ptr<int64_t>()[i];
}

void FlowSampler::check_step(int64_t i, const torch::Tensor& v, const torch::Tensor& x) const {
    TORCH_CHECK(i == step_index_, name(), " sampler: step ", i, " requested but the next step is ",
                step_index_, " (steps run in order; reset() or load_state() to go back)");
    TORCH_CHECK(i < num_steps(), name(), " sampler: all ", num_steps(), " steps are done");
    TORCH_CHECK(v.defined() && x.defined() && v.sizes() == x.sizes(), name(),
                " sampler: velocity and sample must have the same shape");
    TORCH_CHECK(x.is_floating_point() && v.is_floating_point(), name(),
                " sampler: tensors must be floating point");
}

void FlowSampler::reset() {
    step_index_ = 0;
    x0_pred_ = torch::Tensor();
}

SamplerState FlowSampler::state() const {
    SamplerState st;
    st.solver = name();
    st.scalars["step_index"] = static_cast<double>(step_index_);
    st.tensors["sigmas"] = sigmas_;
    st.tensors["timesteps"] = timesteps_;
    put(st, "x0_pred", x0_pred_);
    return st;
}

void FlowSampler::load_state(const SamplerState& st) {
    TORCH_CHECK(st.solver == name(), "sampler state is for solver '", st.solver, "', not '", name(), "'");
    auto s = optional_tensor(st, "sigmas");
    auto t = optional_tensor(st, "timesteps");
    TORCH_CHECK(s.defined() && t.defined() && s.sizes() == sigmas_.sizes() &&
                    t.sizes() == timesteps_.sizes() &&
                    torch::equal(s.to(torch::kCPU, torch::kFloat32), sigmas_) &&
                    torch::equal(t.to(torch::kCPU, torch::kInt64), timesteps_),
                name(), " sampler state: its schedule differs from this sampler's");
    const int64_t idx = scalar_int(st, "step_index");
    TORCH_CHECK(idx >= 0 && idx <= num_steps(), name(), " sampler state: step_index ", idx, " out of range");
    step_index_ = idx;
    x0_pred_ = optional_tensor(st, "x0_pred");
}

// ----------------------------------------------------------------------------------------------------- Euler

EulerSampler::EulerSampler(int64_t steps, double shift, SigmaGrid grid)
    : FlowSampler(shifted_schedule(steps, shift, grid)) {}

EulerSampler::EulerSampler(torch::Tensor sigmas, torch::Tensor timesteps)
    : FlowSampler(std::move(sigmas), std::move(timesteps)) {}

torch::Tensor EulerSampler::step(const torch::Tensor& v, int64_t i, const torch::Tensor& x) {
    check_step(i, v, x);
    x0_pred_ = x - v * sigma(i);
    // As diffusers' FlowMatchEulerDiscreteScheduler: float32 sample, float32 step size, back to x's dtype.
    const float dt = to_float(sigma_t(i + 1) - sigma_t(i));
    torch::Tensor out = (x.to(torch::kFloat32) + v * dt).to(x.scalar_type());
    ++step_index_;
    return out;
}

// ----------------------------------------------------------------------------------------------------- UniPC

UniPCSampler::UniPCSampler(int64_t steps, double shift)
    : FlowSampler(shifted_schedule(steps, shift, SigmaGrid::kUniPC)) {}

UniPCSampler::UniPCSampler(torch::Tensor sigmas, torch::Tensor timesteps)
    : FlowSampler(std::move(sigmas), std::move(timesteps)) {}

void UniPCSampler::reset() {
    FlowSampler::reset();
    m_prev_ = m_last_ = last_sample_ = torch::Tensor();
    lower_order_nums_ = 0;
    this_order_ = 0;
}

torch::Tensor UniPCSampler::lambda(int64_t i) const {
    return lambda_of(sigma_t(i));
}

// UniC (bh2): corrects the sample the last predictor produced, using this step's x0 prediction m_t.
torch::Tensor UniPCSampler::corrector(const torch::Tensor& m_t, int64_t i) const {
    const int64_t order = this_order_;
    const torch::Tensor& m0 = m_last_;
    const torch::Tensor& x = last_sample_;
    const torch::Tensor s_t = sigma_t(i), s_s0 = sigma_t(i - 1);
    const torch::Tensor alpha_t = 1 - s_t;
    const torch::Tensor lambda_s0 = lambda(i - 1);
    const torch::Tensor h = lambda(i) - lambda_s0;

    torch::Tensor d1;
    std::vector<torch::Tensor> rks;
    if (order == 2) {
        const torch::Tensor rk = (lambda(i - 2) - lambda_s0) / h;
        rks.push_back(rk);
        d1 = (m_prev_ - m0) / to_float(rk);
    }
    rks.push_back(torch::ones({}, torch::kFloat32));
    const torch::Tensor rk_vec = torch::stack(rks);

    const torch::Tensor hh = -h;
    const torch::Tensor h_phi_1 = torch::expm1(hh);
    const torch::Tensor b_h = torch::expm1(hh);  // bh2
    torch::Tensor h_phi_k = h_phi_1 / hh - 1;
    int64_t factorial = 1;
    std::vector<torch::Tensor> r_rows, b_vals;
    for (int64_t k = 1; k <= order; ++k) {
        r_rows.push_back(torch::pow(rk_vec, k - 1));
        b_vals.push_back(h_phi_k * factorial / b_h);
        factorial *= k + 1;
        h_phi_k = h_phi_k / hh - 1.0 / static_cast<double>(factorial);
    }
    torch::Tensor rhos_c;
    if (order == 1) {
        rhos_c = torch::full({1}, 0.5f);
    } else {
        rhos_c = torch::linalg_solve(torch::stack(r_rows), torch::stack(b_vals));
    }
    // The reference casts rho to the sample's dtype before use (a rounding step when sampling in bf16).
    rhos_c = rhos_c.to(x.scalar_type()).to(torch::kFloat32);

    torch::Tensor x_t = x * to_float(s_t / s_s0) - m0 * to_float(alpha_t * h_phi_1);
    torch::Tensor res = (m_t - m0) * to_float(rhos_c[-1]);
    if (order == 2)
        res = d1 * to_float(rhos_c[0]) + res;
    x_t = x_t - res * to_float(alpha_t * b_h);
    return x_t.to(x.scalar_type());
}

// UniP (bh2) from sigma_i to sigma_{i+1}, with m_last_ = m_i already pushed.
torch::Tensor UniPCSampler::predictor(const torch::Tensor& x, int64_t i, int64_t order) const {
    const torch::Tensor& m0 = m_last_;
    const torch::Tensor s_t = sigma_t(i + 1), s_s0 = sigma_t(i);
    // sigma_{i+1} = 0: lambda = +inf, so phi_1 = B(h) = -1 and the first-order update is exactly the x0
    // prediction. Handled explicitly rather than through inf arithmetic (0 * x would turn an inf in x into
    // NaN).
    if (to_float(s_t) == 0.0f && order == 1)
        return m0.to(x.scalar_type());
    const torch::Tensor alpha_t = 1 - s_t;
    const torch::Tensor lambda_s0 = lambda(i);
    const torch::Tensor h = lambda(i + 1) - lambda_s0;
    const torch::Tensor hh = -h;
    const torch::Tensor h_phi_1 = torch::expm1(hh);
    const torch::Tensor b_h = torch::expm1(hh);

    torch::Tensor x_t = x * to_float(s_t / s_s0) - m0 * to_float(alpha_t * h_phi_1);
    if (order == 2) {
        const torch::Tensor rk = (lambda(i - 1) - lambda_s0) / h;
        const torch::Tensor d1 = (m_prev_ - m0) / to_float(rk);
        // The official code fixes rho_p = 0.5 for order 2.
        x_t = x_t - (d1 * 0.5f) * to_float(alpha_t * b_h);
    }
    return x_t.to(x.scalar_type());
}

torch::Tensor UniPCSampler::step(const torch::Tensor& v, int64_t i, const torch::Tensor& x) {
    check_step(i, v, x);
    const torch::Tensor m_t = x - v * sigma(i);  // x0 prediction (flow_prediction, predict_x0)
    torch::Tensor sample = x;
    if (i > 0 && last_sample_.defined())
        sample = corrector(m_t, i);

    m_prev_ = m_last_;
    m_last_ = m_t;
    x0_pred_ = m_t;
    // lower_order_final: order 1 on the last step; warm-up: order 1 on the first.
    this_order_ = std::min<int64_t>({2, num_steps() - i, lower_order_nums_ + 1});
    last_sample_ = sample;
    torch::Tensor out = predictor(sample, i, this_order_);
    lower_order_nums_ = std::min<int64_t>(lower_order_nums_ + 1, 2);
    ++step_index_;
    return out;
}

SamplerState UniPCSampler::state() const {
    SamplerState st = FlowSampler::state();
    st.scalars["lower_order_nums"] = static_cast<double>(lower_order_nums_);
    st.scalars["this_order"] = static_cast<double>(this_order_);
    put(st, "model_output_prev", m_prev_);
    put(st, "model_output_last", m_last_);
    put(st, "last_sample", last_sample_);
    return st;
}

void UniPCSampler::load_state(const SamplerState& st) {
    FlowSampler::load_state(st);
    lower_order_nums_ = scalar_int(st, "lower_order_nums");
    this_order_ = scalar_int(st, "this_order");
    m_prev_ = optional_tensor(st, "model_output_prev");
    m_last_ = optional_tensor(st, "model_output_last");
    last_sample_ = optional_tensor(st, "last_sample");
    TORCH_CHECK(step_index_ == 0 || (m_last_.defined() && last_sample_.defined()),
                "unipc sampler state: history tensors missing at step ", step_index_);
    TORCH_CHECK(lower_order_nums_ < 2 || m_prev_.defined(), "unipc sampler state: model_output_prev missing");
}

// ----------------------------------------------------------------------------------------------------- DPM++

DPMPPSampler::DPMPPSampler(int64_t steps, double shift)
    : FlowSampler(shifted_schedule(steps, shift, SigmaGrid::kDPMPP)) {}

DPMPPSampler::DPMPPSampler(torch::Tensor sigmas, torch::Tensor timesteps)
    : FlowSampler(std::move(sigmas), std::move(timesteps)) {}

void DPMPPSampler::reset() {
    FlowSampler::reset();
    lower_order_nums_ = 0;
}

torch::Tensor DPMPPSampler::step(const torch::Tensor& v, int64_t i, const torch::Tensor& x) {
    check_step(i, v, x);
    const int64_t n = num_steps();
    const torch::Tensor m0 = x - v * sigma(i);  // data prediction (dpmsolver++)
    const torch::Tensor m1 = x0_pred_;          // the previous step's: the whole multistep history at order 2
    x0_pred_ = m0;
    // final_sigmas_type "zero" always makes the last step first order.
    const bool first_order = lower_order_nums_ < 1 || i == n - 1;
    const torch::Tensor sample = x.to(torch::kFloat32);  // the reference upcasts the sample

    const torch::Tensor s_t = sigma_t(i + 1), s_s0 = sigma_t(i);
    torch::Tensor out;
    if (to_float(s_t) == 0.0f && first_order) {
        // lambda_t = +inf so exp(-h) = 0 and x_t = 0 * x + m0 = m0 exactly.
        out = m0.to(torch::kFloat32);
    } else {
        const torch::Tensor alpha_t = 1 - s_t;
        const torch::Tensor lambda_s0 = lambda_of(s_s0);
        const torch::Tensor h = lambda_of(s_t) - lambda_s0;
        // sigma_s0 = 1 (the first step) gives lambda_s0 = -inf, h = +inf, exp(-h) = 0: IEEE arithmetic
        // handles it the way the reference does.
        const torch::Tensor coef = alpha_t * (torch::exp(-h) - 1.0);
        out = sample * to_float(s_t / s_s0) - m0 * to_float(coef);
        if (!first_order) {
            const torch::Tensor h_0 = lambda_s0 - lambda_of(sigma_t(i - 1));
            const torch::Tensor r0 = h_0 / h;
            const torch::Tensor d1 = (m0 - m1) * to_float(1.0 / r0);
            out = out - d1 * to_float(0.5 * coef);
        }
    }
    lower_order_nums_ = std::min<int64_t>(lower_order_nums_ + 1, 2);
    ++step_index_;
    return out.to(m0.scalar_type());
}

SamplerState DPMPPSampler::state() const {
    SamplerState st = FlowSampler::state();
    st.scalars["lower_order_nums"] = static_cast<double>(lower_order_nums_);
    return st;
}

void DPMPPSampler::load_state(const SamplerState& st) {
    FlowSampler::load_state(st);
    lower_order_nums_ = scalar_int(st, "lower_order_nums");
    TORCH_CHECK(step_index_ == 0 || x0_pred_.defined(), "dpm++ sampler state: x0_pred missing at step ",
                step_index_);
}

// ---------------------------------------------------------------------------------------------- factory, CFG

std::unique_ptr<FlowSampler> make_sampler(const std::string& solver, int64_t steps, double shift) {
    if (solver == "unipc")
        return std::make_unique<UniPCSampler>(steps, shift);
    if (solver == "dpm++")
        return std::make_unique<DPMPPSampler>(steps, shift);
    if (solver == "euler")
        return std::make_unique<EulerSampler>(steps, shift);
    throw std::invalid_argument("unknown sampler '" + solver + "' (expected unipc, dpm++ or euler)");
}

std::unique_ptr<FlowSampler> make_sampler(const SamplerConfig& config) {
    return make_sampler(config.solver, config.steps, config.shift);
}

torch::Tensor cfg_combine(const torch::Tensor& v_uncond, const torch::Tensor& v_cond, double guidance) {
    return v_uncond + guidance * (v_cond - v_uncond);
}

// -------------------------------------------------------------------------------------------------- training

torch::Tensor LogitNormalSigmaSampler::sample(int64_t n, std::optional<torch::Generator> gen) const {
    TORCH_CHECK(n >= 0, "timestep sampler: n must be >= 0");
    TORCH_CHECK(std > 0.0 && shift > 0.0 && eps > 0.0 && eps < 0.5, "timestep sampler: invalid parameters");
    const auto opts = torch::TensorOptions().dtype(torch::kFloat64);
    torch::Tensor z = gen ? torch::randn({n}, *gen, opts) : torch::randn({n}, opts);
    torch::Tensor u = torch::sigmoid(z * std + mean);
    return shift_sigma(u, shift).clamp(eps, 1.0 - eps).to(torch::kFloat32);
}

namespace {

torch::Tensor broadcast_sigma(const torch::Tensor& sigma, const torch::Tensor& x) {
    torch::Tensor s = sigma.to(x.device(), x.scalar_type());
    if (s.dim() == 1 && x.dim() > 1 && s.size(0) == x.size(0)) {
        std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
        shape[0] = s.size(0);
        s = s.view(shape);
    }
    return s;
}

}  // namespace

torch::Tensor flow_noisy_sample(const torch::Tensor& x0,
                                const torch::Tensor& noise,
                                const torch::Tensor& sigma) {
    TORCH_CHECK(x0.sizes() == noise.sizes(), "flow_noisy_sample: x0 and noise shapes differ");
    const torch::Tensor s = broadcast_sigma(sigma, x0);
    return (1 - s) * x0 + s * noise;
}

torch::Tensor flow_velocity_target(const torch::Tensor& x0, const torch::Tensor& noise) {
    return noise - x0;
}

torch::Tensor sigma_to_model_timestep(const torch::Tensor& sigma) {
    return sigma * 1000;
}

}  // namespace memoreel
