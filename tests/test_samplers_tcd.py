"""The ``tcd`` sampler (Trajectory Consistency Distillation's strategic stochastic sampling, Zheng
et al. 2024): against diffusers' TCDScheduler (its timesteps, its rounding of s, its step loop on a
plain denoiser, and StableDiffusionPipeline / LatentConsistencyModelPipeline with a TCDScheduler on
tiny LCM folders), gamma = 1 against the consistency sampler (bit for bit), gamma = 0 against DDIM
(no noise drawn), and the closed-form moments of its chain on the exact consistency function of
Gaussian data."""
import dataclasses
import importlib
import math
import re

import pytest
import torch

import diffkit
from diffkit import Denoiser, DiffkitError
from diffkit.analytic import gaussian_ode_solution
from diffkit.consistency import ConsistencyDenoiser
from diffkit.noise import generators_from_seed
from diffkit.samplers import consistency, ddim, tcd
from diffkit.samplers.tcd import tcd_times
from diffkit.timesteps import lcm_original_times, make_grid
from test_consistency import F64, S, LinearNet, _gaussian

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_lcm import PROMPTS, _save  # noqa: E402

GAMMAS = (0.0, 0.3, 0.8, 1.0)


def test_lcm_spacing_and_the_rounding_of_s_are_tcd_schedulers():
    """TCDScheduler.set_timesteps takes the lcm spacing's times (its N original steps, then S of them
    evenly by index), and s = floor((1 - gamma) t') as TCDScheduler.step rounds it (in float32, where
    float64 differs: (1 - 0.3) * 90 = 62.99...)."""
    for T, original, steps in ((1000, 50, 1), (1000, 50, 4), (1000, 50, 7), (1000, 50, 50), (1000, 20, 3),
                               (100, 50, 4), (999, 50, 4)):
        ref = diffusers.TCDScheduler(num_train_timesteps=T, original_inference_steps=original)
        ref.set_timesteps(steps)
        grid = make_grid(diffkit.NoiseSchedule.linear(T), steps, "lcm", lcm_source=lcm_original_times(T, original))
        assert grid[:-1].tolist() == ref.timesteps.tolist(), (T, original, steps)
    grid = torch.arange(999, -1, -1, dtype=F64)  # every training time t' = 998 ... 0 as some step's next time
    for gamma in (0.0, 0.05, 0.3, 0.33, 0.5, 0.8, 0.9, 1.0):
        theirs = torch.floor((1 - gamma) * torch.arange(998, -1, -1)).tolist()
        assert tcd_times(grid, gamma) == theirs, gamma
    assert math.floor((1 - 0.3) * 90) == 62 and tcd_times([99.0, 90.0, 0.0], 0.3)[0] == 63
    # time counts from the target: the clean-data end t = -1 (final 'zero'); continuous grids are not rounded
    assert tcd_times([999.0, 499.0, -1.0], 0.5) == [249.0, -1.0]
    assert tcd_times([900.5, 400.5, 0.0], 0.5) == [200.25, 0.0]
    for bad in (-0.1, 1.5, float("nan"), "0.3"):
        with pytest.raises(DiffkitError, match=r"^gamma="):
            tcd_times([999.0, -1.0], bad)


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_tcd_equals_the_tcd_scheduler_loop_step_by_step(gamma, steps, monkeypatch):
    """On a plain eps denoiser (TCD's models have no boundary condition) with the grid ending at t = 0
    (``final='sigma_min'``, where TCDScheduler's last step goes): every step's x equals the
    scheduler's prev_sample for the same per-sample generators, in float64 (the scheduler given
    diffkit's float64 abar: its own is float32, whose rounding x0 = (x - sqrt(1 - abar) eps)/sqrt(abar)
    magnifies 1/sqrt(abar_999) = 156-fold: 3.5e-6 relative in float32; its step noise drawn in float32
    as diffkit's seed convention draws it, then cast)."""
    import diffusers.schedulers.scheduling_tcd as scheduling_tcd
    draw = scheduling_tcd.randn_tensor
    monkeypatch.setattr(scheduling_tcd, "randn_tensor", lambda shape, dtype=None, **k: draw(
        shape, dtype=torch.float32, **k).to(dtype))
    net = LinearNet(6, seed=2)
    ref = diffusers.TCDScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    ref.alphas_cumprod = S.alpha_bar(torch.arange(1000, dtype=F64))
    ref.set_timesteps(steps)
    x_T = torch.randn(3, 6, generator=torch.Generator().manual_seed(5), dtype=F64)
    x, theirs = x_T.clone(), []
    gens = generators_from_seed(11, 3)
    for t in ref.timesteps:
        x = ref.step(net(x, torch.full((3,), float(t))), t, x, eta=gamma, generator=gens, return_dict=False)[0]
        theirs.append(x)
    den = Denoiser(net, S)
    ours = []
    out = tcd(den, x_T.clone(), make_grid(S, steps, "lcm", "sigma_min"), generator=generators_from_seed(11, 3),
              gamma=gamma, callback=lambda state: ours.append(state["x"]))
    assert len(ours) == steps and den.nfe == steps
    for mine, their in zip(ours, theirs):
        torch.testing.assert_close(mine, their, rtol=1e-12, atol=1e-12)
    assert out is ours[-1]


def test_gamma_one_is_the_consistency_sampler_bit_for_bit():
    """s = -1 (clean data) at gamma = 1: x_s = f, renoised to t' as CM Alg. 1 (final 'zero'; any spacing)."""
    den = ConsistencyDenoiser(Denoiser(LinearNet(5, seed=1), S))
    x_T = torch.randn(4, 5, generator=torch.Generator().manual_seed(2), dtype=F64)
    for steps, spacing in ((1, "lcm"), (4, "lcm"), (7, "lcm"), (5, "karras")):
        grid = make_grid(S, steps, spacing)
        ours = tcd(den, x_T.clone(), grid, generator=generators_from_seed(3, 4), gamma=1.0)
        theirs = consistency(den, x_T.clone(), grid, generator=generators_from_seed(3, 4))
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    front = diffkit.sample(den, x_T.clone(), sampler="tcd", steps=4, gamma=1, seed=9, progress=False)
    torch.testing.assert_close(front, diffkit.sample(den, x_T.clone(), sampler="consistency", steps=4, seed=9,
                                                     progress=False), rtol=0, atol=0)


def test_gamma_zero_draws_no_noise_and_is_ddim(monkeypatch):
    den = ConsistencyDenoiser(Denoiser(LinearNet(5, seed=1), S))
    x_T = torch.randn(4, 5, generator=torch.Generator().manual_seed(2), dtype=F64)
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    tcd_module = importlib.import_module("diffkit.samplers.tcd")  # the package's name tcd is the function
    monkeypatch.setattr(tcd_module, "randn_like", lambda *a, **k: pytest.fail("gamma=0 drew noise"))
    for spacing, final in (("lcm", "zero"), ("lcm", "sigma_min"), ("logsnr", "zero")):
        grid = make_grid(S, 6, spacing, final)
        ours = tcd(den, x_T.clone(), grid, generator=gen, gamma=0.0)
        torch.testing.assert_close(ours, ddim(den, x_T.clone(), grid), rtol=1e-12, atol=1e-12)
    assert torch.equal(gen.get_state(), state)


def _tcd_moments(grid, gamma, mu, s):
    """Mean and variance (per dimension) of the tcd chain from x_T at the exact marginal driven by the exact
    consistency function to clean data of N(mu, s^2 I): f = mu + (s / r_t)(x - a_t mu), r_t^2 =
    a_t^2 s^2 + sigma_t^2 (the probability-flow ODE's endpoint), is affine, so is x_s = a_s f +
    sigma_s (x - a_t f)/sigma_t, and the renoising adds independent Gaussian noise."""
    a = lambda t: S.alpha(torch.tensor(float(t), dtype=F64)).item()  # noqa: E731
    sg = lambda t: S.sigma(torch.tensor(float(t), dtype=F64)).item()  # noqa: E731
    times, mids = grid.tolist(), tcd_times(grid, gamma)
    m, v = a(times[0]) * mu, a(times[0]) ** 2 * s ** 2 + sg(times[0]) ** 2
    for i, (t, t_s) in enumerate(zip(times[:-1], mids)):
        A = s / math.sqrt(a(t) ** 2 * s ** 2 + sg(t) ** 2)
        B = mu - A * a(t) * mu
        c1, c2 = a(t_s) - sg(t_s) * a(t) / sg(t), sg(t_s) / sg(t)
        m, v = (c1 * A + c2) * m + c1 * B, (c1 * A + c2) ** 2 * v
        if gamma > 0 and i < len(mids) - 1:
            ratio = a(times[i + 1]) / a(t_s)
            m, v = ratio * m, ratio ** 2 * v + sg(times[i + 1]) ** 2 - (ratio * sg(t_s)) ** 2
    return m, v


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0])
def test_tcd_on_the_exact_consistency_function_has_the_closed_form_moments(gamma):
    """200k draws: mean and variance within 5 standard errors of the chain's closed form. At gamma = 1
    that is the data's N(mu, s^2 I) to round-off (exact samples, as for multistep consistency sampling);
    at gamma < 1 it is not: x_s = a_s f + sigma_s eps is not the trajectory's point at s unless the
    model is TCD's trajectory function (the variance comes out 59% / 31% high at gamma 0 / 0.3, 4 steps)."""
    mu, s, _ = _gaussian()
    cov = s ** 2 * torch.eye(2, dtype=F64)

    def f_clean(x, t):  # the ODE's endpoint at clean data (alpha 1, sigma 0)
        t64 = torch.tensor(float(t[0]), dtype=F64)
        return gaussian_ode_solution(mu, cov, x, S.alpha(t64), S.sigma(t64), 1.0, 0.0)
    f_star = Denoiser(f_clean, S, prediction_type="sample")
    n = 200_000
    grid = make_grid(S, 4, "lcm")
    a_T, sigma_T = S.alpha(grid[0]).item(), S.sigma(grid[0]).item()
    x_T = a_T * mu + math.sqrt(a_T ** 2 * s ** 2 + sigma_T ** 2) * torch.randn(
        n, 2, generator=torch.Generator().manual_seed(0), dtype=F64)  # the marginal at t = 999
    out = tcd(f_star, x_T, grid, generator=torch.Generator().manual_seed(1), gamma=gamma)
    m, v = _tcd_moments(grid, gamma, mu, s)
    assert ((out.mean(0) - m).abs() < 5 * math.sqrt(v / n)).all(), (out.mean(0), m)
    assert ((out.var(0) - v).abs() < 5 * v * math.sqrt(2 / n)).all(), (out.var(0), v)
    exact = abs(v - s ** 2) < 1e-12 and torch.allclose(m, mu, rtol=0, atol=1e-12)
    assert exact == (gamma == 1.0), (v, s ** 2)


# ---------------------------------------------------------------- LCM folders against diffusers' pipelines
@pytest.fixture(scope="module")
def lcm_lora(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("tcd_lcm_lora"), "lcm_lora", lora=True)


@pytest.fixture(scope="module")
def lcm(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("tcd_lcm"), "lcm")


def _tcd_pipe(pipe, gamma=None):
    """The pipeline with a TCDScheduler of its LCMScheduler's config; ``gamma``: given to its step as eta
    (LatentConsistencyModelPipeline passes eta=None, which TCDScheduler refuses)."""
    tcd_pipe = type(pipe)(**{**pipe.components,
                             "scheduler": diffusers.TCDScheduler.from_config(pipe.scheduler.config)})
    tcd_pipe.set_progress_bar_config(disable=True)
    if gamma is not None:
        tcd_pipe.prepare_extra_step_kwargs = lambda generator, eta: {"eta": gamma, "generator": generator}
    return tcd_pipe


@pytest.mark.parametrize("gamma,scale,steps", [(0.3, 1.0, 4), (0.0, 1.8, 4), (1.0, 1.0, 3), (0.8, 1.8, 2)])
def test_lcm_lora_folder_equals_stable_diffusion_pipeline_with_tcd_scheduler(lcm_lora, gamma, scale, steps):
    """``tcd:sigma_min`` on an LCM-LoRA-style folder = StableDiffusionPipeline with a TCDScheduler
    (eta = gamma; s > 1 classifier-free guidance): same z_0. diffkit's denoiser is the folder's
    consistency function f = c_skip x + c_out x0_hat, TCDScheduler takes the UNet's output as it is;
    with LCM's timestep_scaling 10, c_skip < 1e-7 at every time sampled."""
    pipe, folder = lcm_lora
    sd = load_stable_diffusion(folder)
    latents = torch.randn(sd.latent_shape(2), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        theirs = _tcd_pipe(pipe)(PROMPTS, num_inference_steps=steps, guidance_scale=scale, eta=gamma,
                                 latents=latents.clone(), generator=generators_from_seed(5, 2),
                                 output_type="latent").images
    ours = text_to_image(sd, PROMPTS, sampler="tcd:sigma_min", steps=steps, guidance_scale=scale, gamma=gamma,
                         latents=latents, seed=5, return_latents=True)
    assert relative_error(ours, theirs) < 2e-6, relative_error(ours, theirs)  # measured 3.5e-7 to 6.3e-7


@pytest.mark.parametrize("gamma", [0.3, 1.0])
def test_lcm_folder_equals_latent_consistency_model_pipeline_with_tcd_scheduler(lcm, gamma):
    """The LCM UNet with its guidance input w = s - 1 (LatentConsistencyModelPipeline, its step's eta set
    to gamma); the default steps on an LCM folder are 4 for tcd as for consistency."""
    pipe, folder = lcm
    sd = load_stable_diffusion(folder)
    latents = torch.randn(sd.latent_shape(2), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        theirs = _tcd_pipe(pipe, gamma)(PROMPTS, num_inference_steps=4, guidance_scale=8.5, latents=latents.clone(),
                                        generator=generators_from_seed(3, 2), output_type="latent").images
    ours = text_to_image(sd, PROMPTS, sampler="tcd:sigma_min", gamma=gamma, latents=latents, seed=3,
                         return_latents=True)
    assert relative_error(ours, theirs) < 2e-6, relative_error(ours, theirs)  # measured 3.5e-7 to 6.3e-7
    if gamma == 1.0:  # on the clean-data grid (the default final): the consistency sampler exactly
        torch.testing.assert_close(text_to_image(sd, PROMPTS, sampler="tcd", gamma=1.0, latents=latents, seed=3,
                                                 return_latents=True),
                                   text_to_image(sd, PROMPTS, latents=latents, seed=3, return_latents=True),
                                   rtol=0, atol=0)


def test_sample_command_takes_gamma_for_tcd_only(lcm_lora, tmp_path, capsys, monkeypatch):
    calls, real = [], tcd
    monkeypatch.setitem(diffkit.samplers.REGISTRY, "tcd", dataclasses.replace(
        diffkit.samplers.REGISTRY["tcd"], fn=lambda *a, **k: calls.append((len(a[2]) - 1, k.get("gamma"))) or real(
            *a, **k)))
    out = tmp_path / "grid.png"
    argv = ["sample", "--checkpoint", str(lcm_lora[1]), "--prompt", "hot", "--num", "1", "--batch-size", "1",
            "--out", str(out), "--no-progress", "--sampler", "tcd"]
    assert main(argv + ["--gamma", "0.5"]) == 0 and out.is_file()
    assert main(argv) == 0
    assert calls == [(4, 0.5), (4, None)]  # the LCM folder's 4 steps; gamma: the sampler's default 0.3
    for extra, match in ((["--gamma", "1.5"], r"argument --gamma: '1.5' is not a number in \[0, 1\]"),
                         (["--eta", "0.3"], r"eta=0\.3 applies to the ddim sampler, not 'tcd'; tcd's stochasticity "
                                            r"\(diffusers' TCDScheduler eta\) is gamma: diffkit sample --gamma$"),
                         (["--sampler", "ddim", "--gamma", "0.5"],
                          r"--gamma 0.5 sets the stochasticity of the tcd sampler, not of 'ddim'; give --sampler tcd")):
        out.unlink(missing_ok=True)
        try:
            code = main(argv + extra)
        except SystemExit as exit_:  # argparse's (one line, as every diffkit flag's)
            code = exit_.code
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and re.search(match, err[0]), err
        assert not out.exists()
    with pytest.raises(DiffkitError, match=r"^gamma=2 .*allowed"):
        diffkit.sample(ConsistencyDenoiser(Denoiser(LinearNet(2), S)), (1, 2), sampler="tcd", steps=2, gamma=2,
                       progress=False)
