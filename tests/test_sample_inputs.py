"""diffkit.sample and Denoiser refuse bad input up front, in one line (a Python-API audit's findings)."""
import dataclasses
import re

import pytest
import torch

import diffkit
from diffkit import Denoiser, DiffkitError, NoiseSchedule
from diffkit.samplers.registry import REGISTRY

S = NoiseSchedule.linear(100)


def gaussian_eps(x, t):
    """The exact noise predictor of N(0, I) data: eps* = sigma x / (alpha^2 + sigma^2) = sigma x."""
    sigma = S.sigma(t.double()).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return sigma * x


DEN = Denoiser(gaussian_eps, S)


def one_line(match, fn, *args, **kwargs):
    with pytest.raises(DiffkitError, match=match) as err:
        fn(*args, **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kwargs, match", [
    ({"grid": [0.0, 50.0, 99.0]}, "must decrease strictly"),
    ({"grid": [99.0, 99.0, -1.0]}, "must decrease strictly"),
    ({"grid": [99.0]}, "at least two finite times"),
    ({"grid": []}, "at least two finite times"),
    ({"grid": [[99.0, 0.0]]}, "at least two finite times"),
    ({"grid": [99.0, float("nan")]}, "at least two finite times"),
    ({"grid": [500.0, 0.0]}, r"grid times must lie in \[-1, 99\]"),
    ({"grid": [99.0, 50.0, -1.0], "nfe": 7}, "drop nfe"),
    ({"grid": [99.0, 50.0, -1.0], "spacing": "karras"}, "drop spacing"),
    ({"grid": [99.0, 50.0, -1.0], "use_karras_sigmas": True}, "drop use_karras_sigmas"),
    ({"grid": [99.0, 50.0, -1.0], "timestep_spacing": "trailing"}, "drop timestep_spacing"),
    ({"steps": 3, "spacing": "linear", "timestep_spacing": "trailing"},
     "spacing='linear' contradicts timestep_spacing"),
    ({"steps": 3, "steps_offset": 1}, "steps_offset=1 shifts the 'leading' spacing only"),
    ({"steps": 3, "clip_sample": True, "thresholding": "dynamic"}, "contradicts clip_sample=True"),
    ({"steps": 3, "clip_sample_range": 2.0}, "clip_sample_range goes with clip_sample=True"),
    ({"steps": 4, "eta": 1.5}, r"eta=1.5 makes a step's noise larger .* allowed on this grid: eta <= 1.0"),
    ({"steps": 4, "eta": float("inf")}, "eta=inf is not allowed"),
    ({"steps": 4, "eta": 1e300}, "allowed on this grid"),
    ({"steps": 3, "bogus": 1}, "option 'bogus' is not one sampler 'ddim' takes; it takes eta"),
    ({"steps": 3, "generator": [torch.Generator()] * 3}, "got 3 generators for a batch of 4"),
    ({"steps": 3, "generator": 5}, "generator of type int"),
    ({"steps": 3, "cond": [1]}, "cond of type list"),
    ({"steps": 3, "cond": {"y": torch.zeros(3, dtype=torch.long)}}, r"shape \(3,\) are not allowed; give \(4,\)"),
    ({"steps": 3, "cond": {"y": torch.zeros(4)}}, "dtype float32 are not allowed"),
    ({"steps": 3, "seed": 2**70}, "seed"),
])
def test_bad_sampling_arguments_are_one_line_errors(kwargs, match):
    one_line(match, diffkit.sample, DEN, (4, 2), "ddim", progress=False, **kwargs)


def test_bad_noise_shapes_and_types_are_one_line_errors():
    bad = torch.randn(4, 2)
    bad[0, 0] = float("nan")
    one_line("NaN or infinite", diffkit.sample, DEN, bad, "ddim", steps=3, progress=False)
    one_line("dtype int64", diffkit.sample, DEN, torch.zeros(4, 2, dtype=torch.long), "ddim", steps=3, progress=False)
    one_line(r"shape \(4,\)", diffkit.sample, DEN, torch.randn(4), "ddim", steps=3, progress=False)
    one_line("shape_or_noise=4", diffkit.sample, DEN, 4, "ddim", steps=3, progress=False)
    one_line("dtype=torch.int64", diffkit.sample, DEN, (4, 2), "ddim", steps=3, progress=False, dtype=torch.int64)
    one_line("wrap the network", diffkit.sample, gaussian_eps, (4, 2), "ddim", steps=3, progress=False)


def test_a_denoiser_checks_its_network_schedule_and_output():
    one_line("net of type int", Denoiser, 5, S)
    one_line("schedule of type str", Denoiser, gaussian_eps, "linear")
    one_line("data_scale=inf", Denoiser, gaussian_eps, S, data_scale=float("inf"))
    one_line("returned a tuple", diffkit.sample, Denoiser(lambda x, t: (x,), S), (2, 2), "ddim", steps=2,
             progress=False)
    narrow = Denoiser(lambda x, t: torch.cat([x, x], 1)[:, :, :1], S, learned_variance=True)
    one_line(r"needs an output of shape \(2, 2, 3\)", diffkit.sample, narrow, (2, 1, 3), "ddpm", steps=2,
             progress=False)


def test_the_network_gets_its_own_dtype_and_half_noise_is_solved_in_float32():
    class Net(torch.nn.Module):  # float32 weights
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 1)

        def forward(self, x, t):
            assert x.dtype == torch.float32
            return self.conv(x)
    d = Denoiser(Net(), S)
    out = diffkit.sample(d, torch.randn(2, 1, 4, 4, dtype=torch.float64), "ddim", steps=3, progress=False)
    assert out.dtype == torch.float64 and torch.isfinite(out).all()
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    reference = diffkit.sample(DEN, noise.double(), "dpm-solver", steps=10, progress=False)
    half = diffkit.sample(DEN, noise.bfloat16(), "dpm-solver", steps=10, progress=False)
    assert half.dtype == torch.float32  # the solver's state: bf16 lost up to 0.7 here (a cancellation at t = T)
    assert (half.double() - reference).abs().max() < 0.02  # the bf16 rounding of the noise itself


def _ztsnr_denoiser(prediction_type: str):
    """The exact predictor of N(0, 0.5^2 I) data on a zero-terminal-SNR schedule (Lin et al. 2024):
    x0* = alpha s^2 x / (alpha^2 s^2 + sigma^2), eps* = (x - alpha x0*)/sigma, v = alpha eps - sigma x0."""
    ztsnr = NoiseSchedule.from_name("linear", 100, zero_terminal_snr=True)

    def net(x, t):
        shape = (-1, *([1] * (x.ndim - 1)))
        a = ztsnr.alpha(t.double()).to(x.dtype).reshape(shape)
        s = ztsnr.sigma(t.double()).to(x.dtype).reshape(shape)
        x0 = a * 0.25 * x / (a * a * 0.25 + s * s)
        eps = (x - a * x0) / s
        return {"v_prediction": a * eps - s * x0, "sample": x0, "epsilon": eps}[prediction_type]
    return Denoiser(net, ztsnr, prediction_type=prediction_type)


def test_zero_terminal_snr_schedules_run_every_sampler_that_can_and_name_the_rest():
    d = _ztsnr_denoiser("v_prediction")
    able = {name for name, info in REGISTRY.items() if info.infinite_noise_start}
    assert able == {"ddpm", "ddim", "consistency", "tcd", "sde-dpm-solver++-2m"}
    for name, info in REGISTRY.items():
        if info.adaptive:  # ode takes no steps; its refusal at t = T-1: tests/test_samplers_ode.py
            continue
        steps = 2 * info.calls_per_step if info.calls_per_step > 1 else 4
        # a timestep grid that starts below T-1 (alpha_bar > 0): every sampler runs
        out = diffkit.sample(d, (2, 2), name, steps=steps, spacing="linear", final="zero", seed=0, progress=False)
        assert torch.isfinite(out).all(), name
        # the trailing grid starts at T-1, at infinite noise: only the x-space first steps can
        if name in able:
            out = diffkit.sample(d, (2, 2), name, steps=steps, spacing="trailing", seed=0, progress=False)
            assert torch.isfinite(out).all(), name
        else:
            one_line(re.escape(f"sampler '{name}' cannot start at t=99, where this zero-terminal-SNR schedule has "
                               "alpha_bar = 0 (infinite noise); start there with ddpm, ddim, consistency, tcd, "
                               "sde-dpm-solver++-2m"),
                     diffkit.sample, d, (2, 2), name, steps=steps, spacing="trailing", progress=False)
        if info.default_spacing in ("karras", "logsnr", "logsnr_skip", "logsnr_graded"):
            one_line(re.escape(f"spacing='{info.default_spacing}' is placed in sigma / log-SNR, which are infinite"),
                     diffkit.sample, d, (2, 2), name, steps=steps, progress=False)


def test_ddim_from_infinite_noise_reaches_the_data_and_refuses_an_epsilon_network():
    """DDIM on the trailing grid from t = T-1 (alpha_bar = 0), as Lin et al. sample: with the exact
    v / x0 predictor of N(0, 0.25 I) data, 100 steps give the data's variance."""
    noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for kind in ("v_prediction", "sample"):
        out = diffkit.sample(_ztsnr_denoiser(kind), noise.clone(), "ddim", steps=100, spacing="trailing",
                             progress=False)
        assert abs(out.var().item() - 0.25) < 0.02, (kind, out.var().item())
    one_line("an epsilon-prediction network cannot start at t=99, where alpha_bar = 0",
             diffkit.sample, _ztsnr_denoiser("epsilon"), (2, 2), "ddim", steps=4, spacing="trailing", progress=False)
    one_line("an epsilon-prediction network cannot start at t=99", diffkit.sample, _ztsnr_denoiser("epsilon"),
             (2, 2), "ddpm", grid=[99.0, 50.0, -1.0], progress=False)
    from diffkit.denoiser import ThresholdedDenoiser
    from diffkit.guidance import ClassifierFreeGuidance
    for wrapped in (ThresholdedDenoiser(_ztsnr_denoiser("epsilon"), "dynamic"),  # the network inside wrappers
                    ClassifierFreeGuidance(ThresholdedDenoiser(_ztsnr_denoiser("epsilon"), "dynamic"), 1.0,
                                           null_class=2)):
        one_line("an epsilon-prediction network cannot start at t=99", diffkit.sample, wrapped, (2, 2), "ddim",
                 steps=4, spacing="trailing", progress=False)


def test_guidance_null_class_and_schedule_options_are_checked():
    from diffkit.guidance import ClassifierFreeGuidance
    one_line("null_class=-1 is not allowed", ClassifierFreeGuidance, DEN, 2.0, null_class=-1)
    one_line("null_class='a' is not allowed", ClassifierFreeGuidance, DEN, 2.0, null_class="a")
    one_line("option 'foo' is not one the linear schedule takes", NoiseSchedule.from_name, "linear", 10, foo=1)
    one_line("option 'beta_start' is not one the cosine schedule takes", NoiseSchedule.from_name, "cosine", 10,
             beta_start=0.1)


def test_load_denoiser_names_a_bad_path_or_device(tmp_path):
    from diffkit.loading import load_denoiser
    one_line("path of type NoneType", load_denoiser, None)
    one_line("device='bogus' is not allowed", load_denoiser, tmp_path / "x.safetensors", device="bogus")


def test_guidance_rescale_needs_more_than_one_value_per_sample():
    from diffkit.guidance import ClassifierFreeGuidance
    g = ClassifierFreeGuidance(Denoiser(lambda x, t, y=None: 0.1 * x, S), 2.0, rescale=0.7, null_class=3)
    one_line("more than one value", diffkit.sample, g, (4, 1), "ddim", steps=2, progress=False,
             cond={"y": torch.zeros(4, dtype=torch.long)})


def test_flag_options_take_booleans_only():
    one_line("lower_order_final='no' is not allowed; give True or False", diffkit.sample, DEN, (2, 2),
             "dpm-solver++-2m", steps=3, progress=False, lower_order_final="no")
    out = diffkit.sample(DEN, (2, 2), "dpm-solver++-2m", steps=3, progress=False, lower_order_final=False, seed=0)
    assert torch.isfinite(out).all()


def test_direct_grid_options_are_checked():
    from diffkit.timesteps import make_grid
    one_line("rho=0", make_grid, S, 10, "karras", rho=0)
    one_line("rho=nan", make_grid, S, 10, "karras", rho=float("nan"))
    one_line("must be finite", make_grid, S, 3, "linear", custom=[90, float("nan"), 10])


def test_classifier_guidance_checks_its_classifier_and_labels():
    from diffkit.guidance import classifier_log_prob_grad
    x, t = torch.randn(4, 2), 50.0
    linear = torch.nn.Linear(2, 3)
    one_line(r"gave \(4,\)", classifier_log_prob_grad, lambda x, t: x.sum(1), x, t, torch.zeros(4, dtype=torch.long))
    one_line(r"gave \(4, 1\)", classifier_log_prob_grad, lambda x, t: x[:, :1], x, t, torch.zeros(4, dtype=torch.long))
    one_line("gave tuple", classifier_log_prob_grad, lambda x, t: (x,), x, t, torch.zeros(4, dtype=torch.long))
    one_line("do not depend on x", classifier_log_prob_grad, lambda x, t: linear(x).detach(), x, t,
             torch.zeros(4, dtype=torch.long))
    one_line(r"lie in 0..2", classifier_log_prob_grad, lambda x, t: linear(x), x, t, torch.full((4,), 5))
    one_line("3 class labels for a batch of 4", classifier_log_prob_grad, lambda x, t: linear(x), x, t,
             torch.zeros(3, dtype=torch.long))
    grad = classifier_log_prob_grad(lambda x, t: linear(x), x, t, torch.zeros(4, dtype=torch.long))
    assert grad.shape == x.shape and torch.isfinite(grad).all()


def test_a_timestep_spacing_ending_at_zero_sets_final_zero_unless_final_is_given():
    """unipc (default final sigma_min) on spacing='linear' failed: the grid's last time is t = 0."""
    for spacing in ("linear", "quadratic", "leading"):
        DEN.reset_nfe()
        out = diffkit.sample(DEN, (2, 2), "unipc", steps=5, spacing=spacing, seed=0, progress=False)
        assert torch.isfinite(out).all() and DEN.nfe == REGISTRY["unipc"].nfe(5, "zero")
    one_line("leaves no step to final=sigma_min", diffkit.sample, DEN, (2, 2), "unipc", steps=5, spacing="linear",
             final="sigma_min", progress=False)
    # trailing ends at t = 0 from 2T/3 steps on (T = 100: 67 steps), and then switches the same way
    for steps, final in ((66, "sigma_min"), (67, "zero"), (100, "zero")):
        DEN.reset_nfe()
        diffkit.sample(DEN, (2, 2), "unipc", steps=steps, spacing="trailing", seed=0, progress=False)
        assert DEN.nfe == REGISTRY["unipc"].nfe(steps, final), (steps, DEN.nfe)
    DEN.reset_nfe()
    diffkit.sample(DEN, (2, 2), "unipc", nfe=80, spacing="trailing", seed=0, progress=False)
    assert DEN.nfe == 80


def test_steps_for_nfe_is_the_brute_force_answer_and_a_bisection_for_huge_nfe():
    """A bisection over the step count (nfe grows with steps): it looped over every count up to nfe
    (a minute and gigabytes of memory for nfe = 10^8)."""
    for name, info in REGISTRY.items():
        if info.adaptive:  # ode: no steps, so no step count for an NFE (tests/test_samplers_ode.py)
            continue
        for final in ("zero", "sigma_min"):
            for n in range(1, 40):
                want = next((s for s in range(info.min_steps, n + 1) if info.nfe(s, final) == n), None)
                if want is None:
                    one_line(f"cannot spend exactly nfe={n}", info.steps_for_nfe, n, final)
                else:
                    assert info.steps_for_nfe(n, final) == want, (name, final, n)
    # a bisection, not a walk over every step count: about log2(N) + 10 cost evaluations
    calls = []
    heun = REGISTRY["heun"]
    counting = dataclasses.replace(heun,
                                   nfe_of_steps=lambda steps, final: calls.append(steps) or heun.nfe(steps, final))
    one_line("cannot spend exactly nfe=100000000; it can spend 99999995", counting.steps_for_nfe, 10 ** 8)
    assert len(calls) < 40, len(calls)
    assert REGISTRY["ddim"].steps_for_nfe(10 ** 9) == 10 ** 9


def test_diffusers_option_names_mean_what_they_mean_in_diffusers():
    """timestep_spacing / steps_offset / use_karras_sigmas choose the grid as diffusers' schedulers
    do (compared with DDIMScheduler's own timesteps), clip_sample[_range] is thresholding='clip'
    with that bound, thresholding=True is diffusers' dynamic thresholding (capped at its default
    sample_max_value = 1.0, and taking precedence over clip_sample)."""
    diffusers = pytest.importorskip("diffusers")
    from diffkit.interop.schedulers import grid_from_diffusers
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))

    def run(**kwargs):
        return diffkit.sample(DEN, noise, "ddim", progress=False, **kwargs)
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=100, timestep_spacing="leading", steps_offset=1)
    scheduler.set_timesteps(10)
    assert torch.equal(run(steps=10, spacing="leading", steps_offset=1), run(grid=grid_from_diffusers(scheduler)))
    assert torch.equal(run(steps=10, timestep_spacing="trailing"), run(steps=10, spacing="trailing"))
    assert torch.equal(run(steps=10, clip_sample=True, clip_sample_range=0.5),
                       run(steps=10, thresholding="clip", sample_max_value=0.5))
    assert not torch.equal(run(steps=10, clip_sample=True, clip_sample_range=0.5), run(steps=10))
    assert torch.equal(run(steps=10, thresholding=True), run(steps=10, thresholding="dynamic", sample_max_value=1.0))
    assert torch.equal(run(steps=10, thresholding=True, clip_sample=True), run(steps=10, thresholding=True))
    assert torch.equal(run(steps=10, thresholding=True, sample_max_value=1.5),
                       run(steps=10, thresholding="dynamic", sample_max_value=1.5))


def test_numpy_integers_are_integers_and_bad_singlestep_orders_are_one_line():
    import numpy as np
    out = diffkit.sample(DEN, (2, 2), "ddim", steps=np.int64(4), seed=0, progress=False)
    assert torch.equal(out, diffkit.sample(DEN, (2, 2), "ddim", steps=4, seed=0, progress=False))
    one_line("must be 1, 2 or 3 each", diffkit.sample, DEN, (2, 2), "dpm-solver", steps=4, orders="31", progress=False)
