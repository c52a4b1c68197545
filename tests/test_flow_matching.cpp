// Flow-matching schedules and samplers against the official schedulers' golden vectors (golden/wan/README.md,
// unipc_schedule), the spec's literal UniPC vector (spec 6.2), and closed forms for Euler.
#include "model/flow_matching.h"
#include "tests/test_support.h"

#include <cmath>

using namespace memoreel;

namespace {

const TensorSource& golden() {
    static const TensorSource source = TensorSource::open(test::golden_file("unipc_schedule.safetensors"));
    return source;
}

// The golden file's fake model: v = 0.5 x + 0.001 float32(t).
torch::Tensor fake_velocity(const torch::Tensor& x, int64_t t) {
    return 0.5 * x + 0.001 * torch::scalar_tensor(static_cast<double>(t), torch::kFloat32);
}

struct TrajectoryDiffs {
    double v = 0, x = 0, x0 = 0, corrected = 0;
};

// Runs the golden trajectory (8 steps, shift 5) with the given sampler and returns per-quantity max
// differences.
TrajectoryDiffs run_golden_trajectory(FlowSampler& sampler, const std::string& prefix, bool with_corrected) {
    const auto gv = golden().get(prefix + ".v");
    const auto gx = golden().get(prefix + ".x");
    const auto gx0 = golden().get(prefix + ".x0_pred");
    const auto gc = with_corrected ? golden().get(prefix + ".corrected") : torch::Tensor();
    TrajectoryDiffs d;
    torch::Tensor x = golden().get("traj.x_init");
    for (int64_t i = 0; i < sampler.num_steps(); ++i) {
        const torch::Tensor v = fake_velocity(x, sampler.timestep(i));
        d.v = std::max(d.v, test::max_abs_diff(v, gv[i]));
        x = sampler.step(v, i, x);
        REQUIRE(x.sizes() == gx[i].sizes());
        d.x = std::max(d.x, test::max_abs_diff(x, gx[i]));
        d.x0 = std::max(d.x0, test::max_abs_diff(sampler.x0_pred(), gx0[i]));
        if (with_corrected) {
            auto& unipc = dynamic_cast<UniPCSampler&>(sampler);
            d.corrected = std::max(d.corrected, test::max_abs_diff(unipc.corrected(), gc[i]));
        }
    }
    return d;
}

// Runs a sampler over a whole trajectory with a deterministic, x-dependent fake model; returns every sample.
std::vector<torch::Tensor> run_all(FlowSampler& sampler, torch::Tensor x, int64_t from = 0) {
    std::vector<torch::Tensor> out;
    for (int64_t i = from; i < sampler.num_steps(); ++i) {
        x = sampler.step(torch::sin(3 * x) + 0.1 * x + 0.002 * sampler.timestep(i), i, x);
        out.push_back(x);
    }
    return out;
}

}  // namespace

TEST_SUITE("flow_matching") {
    TEST_CASE("UniPC and DPM++ schedules equal the golden sigmas and timesteps bit for bit") {
        for (auto [steps, shift] : std::vector<std::pair<int64_t, int>>{{8, 5}, {50, 5}, {40, 12}, {40, 5}}) {
            CAPTURE(steps);
            CAPTURE(shift);
            const std::string key = "unipc.steps" + std::to_string(steps) + "_shift" + std::to_string(shift);
            const auto s = shifted_schedule(steps, shift, SigmaGrid::kUniPC);
            const auto gs = golden().get(key + ".sigmas");
            const auto gt = golden().get(key + ".timesteps");
            CHECK((s.sigmas.scalar_type() == torch::kFloat32));
            CHECK((s.timesteps.scalar_type() == torch::kInt64));
            CHECK_MESSAGE(torch::equal(s.sigmas, gs), "max diff " << test::max_abs_diff(s.sigmas, gs));
            CHECK(torch::equal(s.timesteps, gt));
            CHECK(torch::equal(shifted_sigmas(steps, shift), gs));
        }
        const auto d = shifted_schedule(8, 5.0, SigmaGrid::kDPMPP);
        CHECK(torch::equal(d.sigmas, golden().get("dpmpp.steps8_shift5.sigmas")));
        CHECK(torch::equal(d.timesteps, golden().get("dpmpp.steps8_shift5.timesteps")));
        CHECK(d.sigmas[0].item<float>() == 1.0f);

        // Spec 6.1 literal values.
        const auto s50 = shifted_schedule(50, 5.0);
        CHECK(s50.timesteps[0].item<int64_t>() == 999);
        CHECK(s50.timesteps[49].item<int64_t>() == 92);
        CHECK(s50.sigmas[50].item<float>() == 0.0f);
        CHECK(std::abs(s50.sigmas[48].item<float>() - 0.172265f) < 1e-6);
        const auto s40 = shifted_schedule(40, 12.0);
        CHECK(s40.timesteps[39].item<int64_t>() == 235);
        CHECK(s40.timesteps[35].item<int64_t>() == 631);
    }

    TEST_CASE("timesteps_from_sigmas truncates") {
        const auto t =
            timesteps_from_sigmas(torch::tensor({0.99980, 0.0925, 0.0009999, 0.0}, torch::kFloat64));
        CHECK(t[0].item<int64_t>() == 999);
        CHECK(t[1].item<int64_t>() == 92);
        CHECK(t[2].item<int64_t>() == 0);
        CHECK(t[3].item<int64_t>() == 0);
        CHECK(shift_sigma(0.5, 5.0) == doctest::Approx(5.0 * 0.5 / 3.0));
    }

    TEST_CASE("UniPC trajectory equals the golden one (v, x, x0_pred, corrected per step)") {
        UniPCSampler sampler(8, 5.0);
        CHECK(torch::equal(sampler.sigmas(), golden().get("unipc.steps8_shift5.sigmas")));
        const auto d = run_golden_trajectory(sampler, "traj.unipc", true);
        MESSAGE("unipc max abs diff: v " << d.v << ", x " << d.x << ", x0_pred " << d.x0 << ", corrected "
                                         << d.corrected);
        CHECK(d.v <= 1e-6);
        CHECK(d.x <= 1e-5);
        CHECK(d.x0 <= 1e-5);
        CHECK(d.corrected <= 1e-5);
        CHECK(sampler.done());
    }

    TEST_CASE("DPM++ trajectory equals the golden one (v, x, x0_pred per step)") {
        DPMPPSampler sampler(8, 5.0);
        const auto d = run_golden_trajectory(sampler, "traj.dpmpp", false);
        MESSAGE("dpm++ max abs diff: v " << d.v << ", x " << d.x << ", x0_pred " << d.x0);
        CHECK(d.v <= 1e-6);
        CHECK(d.x <= 1e-5);
        CHECK(d.x0 <= 1e-5);
    }

    TEST_CASE("UniPC reproduces the spec's literal test vector") {
        UniPCSampler sampler(8, 5.0);
        const std::vector<float> sig = {0.9997998f, 0.972006f,  0.9372655f, 0.8926018f, 0.8330554f,
                                        0.7496998f, 0.6246874f, 0.4163888f, 0.0f};
        for (size_t i = 0; i < sig.size(); ++i)
            CHECK(std::abs(sampler.sigma(i) - sig[i]) < 1e-7);
        const std::vector<int64_t> ts = {999, 972, 937, 892, 833, 749, 624, 416};
        for (size_t i = 0; i < ts.size(); ++i)
            CHECK(sampler.timestep(i) == ts[i]);

        std::map<int64_t, std::vector<float>> expect = {
            {0, {-0.9610811f, -0.5716448f, -0.1822084f, 0.2072279f, 0.5966642f, 0.9861006f}},
            {3, {-0.7661306f, -0.4295186f, -0.0929064f, 0.2437057f, 0.5803178f, 0.91693f}},
            {6, {-0.1731266f, 0.0038031f, 0.1807328f, 0.3576624f, 0.534592f, 0.7115218f}},
            {7, {0.4362918f, 0.4503011f, 0.4643105f, 0.4783199f, 0.4923293f, 0.5063387f}}};
        torch::Tensor x = torch::linspace(-1, 1, 6).view({1, 2, 3});
        double worst = 0;
        for (int64_t i = 0; i < 8; ++i) {
            const torch::Tensor v = 0.9 * (x - 0.5) / sampler.sigma(i) + 0.05 * x;
            x = sampler.step(v, i, x);
            if (expect.count(i)) {
                const auto e = torch::tensor(expect[i]).view({1, 2, 3});
                worst = std::max(worst, test::max_abs_diff(x, e));
                CHECK_CLOSE(x, e, 1e-6);  // the spec prints 7 decimals
            }
        }
        MESSAGE("spec 6.2 vector max abs diff " << worst);
    }

    TEST_CASE("Euler matches its closed forms") {
        // v = c constant: x_N = x_0 + (sigma_N - sigma_0) c = x_0 - sigma_0 c.
        {
            EulerSampler sampler(10, 3.0);
            const auto x_init = torch::randn({2, 3, 4}, torch::kFloat64);
            const auto c = torch::randn({2, 3, 4}, torch::kFloat64);
            torch::Tensor x = x_init;
            for (int64_t i = 0; i < sampler.num_steps(); ++i)
                x = sampler.step(c, i, x);
            // The sample is float32 inside each step (as diffusers does); compare at float32 precision.
            CHECK_CLOSE(x, x_init - sampler.sigma(0) * c, 1e-5);
        }
        // Linear ODE dx/dsigma = x - a: each Euler step multiplies (x - a) by (1 + dsigma).
        {
            EulerSampler sampler(7, 5.0);
            const auto a = torch::randn({5});
            const auto x_init = torch::randn({5});
            torch::Tensor x = x_init;
            double factor = 1.0;
            for (int64_t i = 0; i < sampler.num_steps(); ++i) {
                x = sampler.step(x - a, i, x);
                factor *= 1.0 + (static_cast<double>(sampler.sigma(i + 1)) - sampler.sigma(i));
                CHECK_CLOSE(x, a + factor * (x_init - a), 1e-5);
            }
        }
        // A perfect velocity for a fixed (x0, eps) pair lands on x0 (and x0_pred equals x0 at every step).
        {
            EulerSampler sampler(12, 5.0, SigmaGrid::kDPMPP);
            const auto x0 = torch::randn({3, 8});
            const auto eps = torch::randn({3, 8});
            torch::Tensor x = flow_noisy_sample(x0, eps, torch::scalar_tensor(sampler.sigma(0)));
            for (int64_t i = 0; i < sampler.num_steps(); ++i) {
                x = sampler.step(flow_velocity_target(x0, eps), i, x);
                CHECK_CLOSE(sampler.x0_pred(), x0, 1e-5);
            }
            CHECK_CLOSE(x, x0, 1e-5);
        }
    }

    TEST_CASE("cfg_combine") {
        const auto u = torch::randn({4});
        const auto c = torch::randn({4});
        CHECK_CLOSE(cfg_combine(u, c, 1.0), c, 1e-6);
        CHECK(torch::equal(cfg_combine(u, c, 0.0), u));
        CHECK_CLOSE(cfg_combine(u, c, 5.0), u + 5.0 * (c - u), 0.0);
    }

    TEST_CASE("logit-normal training sigmas") {
        const int64_t n = 200000;
        auto gen = at::make_generator<at::CPUGeneratorImpl>(1234);
        LogitNormalSigmaSampler ln;
        ln.mean = 0.3;
        ln.std = 0.8;
        const auto s = ln.sample(n, gen);
        CHECK((s.scalar_type() == torch::kFloat32));
        CHECK(s.min().item<float>() > 0.0f);
        CHECK(s.max().item<float>() < 1.0f);
        const auto logit = torch::log(s.to(torch::kFloat64) / (1 - s.to(torch::kFloat64)));
        // Standard errors: mean 0.8/sqrt(n) = 0.0018, std ~ 0.8/sqrt(2n) = 0.0013; allow ~5 of them.
        CHECK(std::abs(logit.mean().item<double>() - 0.3) < 0.01);
        CHECK(std::abs(logit.std().item<double>() - 0.8) < 0.01);

        // Same seed, same draws; shift moves mass toward 1 pointwise (the shift is monotone).
        LogitNormalSigmaSampler shifted = ln;
        shifted.shift = 3.0;
        auto gen2 = at::make_generator<at::CPUGeneratorImpl>(1234);
        const auto s3 = shifted.sample(n, gen2);
        CHECK((s3 >= s).all().item<bool>());
        CHECK(s3.mean().item<double>() > s.mean().item<double>() + 0.1);
        CHECK(s3.max().item<float>() < 1.0f);
        CHECK_CLOSE(s3.to(torch::kFloat64), shift_sigma(s.to(torch::kFloat64), 3.0), 1e-6);

        // Targets and noisy samples.
        const auto x0 = torch::randn({3, 2, 4});
        const auto eps = torch::randn({3, 2, 4});
        const auto sig = torch::tensor({0.0f, 0.5f, 1.0f});
        const auto xt = flow_noisy_sample(x0, eps, sig);
        CHECK_CLOSE(xt[0], x0[0], 0.0);
        CHECK_CLOSE(xt[1], 0.5 * (x0[1] + eps[1]), 1e-6);
        CHECK_CLOSE(xt[2], eps[2], 0.0);
        CHECK(torch::equal(flow_velocity_target(x0, eps), eps - x0));
        CHECK_CLOSE(sigma_to_model_timestep(sig), torch::tensor({0.0f, 500.0f, 1000.0f}), 0.0);
    }

    TEST_CASE("sampler state save/restore mid-trajectory reproduces the trajectory exactly") {
        const auto x_init = torch::randn({1, 4, 2, 3, 3});
        for (const std::string solver : {"unipc", "dpm++", "euler"}) {
            CAPTURE(solver);
            auto full = make_sampler(solver, 9, 5.0);
            const auto reference = run_all(*full, x_init);

            for (int64_t cut : {1, 2, 5, 8}) {
                CAPTURE(cut);
                auto first = make_sampler(solver, 9, 5.0);
                torch::Tensor x = x_init;
                for (int64_t i = 0; i < cut; ++i)
                    x = first->step(torch::sin(3 * x) + 0.1 * x + 0.002 * first->timestep(i), i, x);
                const SamplerState st = first->state();
                CHECK(st.solver == solver);
                // A fresh sampler, restored, continues exactly where the first one stopped.
                auto second = make_sampler(solver, 9, 5.0);
                second->load_state(st);
                CHECK(second->step_index() == cut);
                const auto rest = run_all(*second, x, cut);
                REQUIRE(rest.size() == reference.size() - cut);
                for (size_t k = 0; k < rest.size(); ++k)
                    CHECK(torch::equal(rest[k], reference[cut + k]));
            }
            // reset() starts over and gives the same trajectory.
            full->reset();
            const auto again = run_all(*full, x_init);
            for (size_t k = 0; k < again.size(); ++k)
                CHECK(torch::equal(again[k], reference[k]));
        }
    }

    TEST_CASE("sampler misuse gives clear errors") {
        UniPCSampler sampler(4, 5.0);
        const auto x = torch::randn({2, 3});
        CHECK_THROWS_WITH_AS(sampler.step(x, 1, x), doctest::Contains("next step is 0"), c10::Error);
        sampler.step(x, 0, x);
        DPMPPSampler other(4, 5.0);
        CHECK_THROWS_AS(other.load_state(sampler.state()), c10::Error);
        UniPCSampler longer(5, 5.0);
        CHECK_THROWS_WITH_AS(longer.load_state(sampler.state()), doctest::Contains("schedule differs"),
                             c10::Error);
        CHECK_THROWS_AS(make_sampler("heun", 4, 5.0), std::invalid_argument);
        CHECK_THROWS_AS(UniPCSampler(torch::tensor({0.9f, 0.9f, 0.0f}), torch::tensor({900, 900})),
                        c10::Error);
        CHECK_THROWS_AS(EulerSampler(torch::tensor({0.9f, 0.5f}), torch::tensor({900})), c10::Error);
        for (int64_t i = 1; i < 4; ++i)
            sampler.step(x, i, x);
        CHECK(sampler.done());
        CHECK_THROWS_AS(sampler.step(x, 4, x), c10::Error);
    }
}
