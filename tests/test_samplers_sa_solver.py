"""SA-Solver (``sa-solver``; Xue et al. 2023) against diffusers' ``SASolverScheduler`` step for step
with the same noise draws, against UniPC-bh1 (its tau = 0 limit), and against closed forms on
Gaussian data: the exact probability-flow ODE map (tau = 0, empirical order) and the exact
marginal at t = 0 (tau = 1, sample moments)."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

import diffkit
from diffkit import Denoiser, DiffkitError, NoiseSchedule
from diffkit.analytic import GaussianMixture, gaussian_ode_solution
from diffkit.samplers import sa_solver, unipc
from diffkit.timesteps import make_grid
from test_sampler_references import assert_gaussian_moments

F64 = torch.float64
S = NoiseSchedule.linear()


def _diffusers_run(predictor_order, corrector_order, tau, steps, float64, monkeypatch):
    """(x_T, diffusers' SASolverScheduler output, its grid, schedule, network) on a mixture's exact
    eps* with step noise from generator seed 11. ``tau`` None: diffusers' default tau_func (1 on
    t in [200, 800]). ``float64``: its sigmas in float64 and its noise drawn as diffkit draws it
    (float32 from the CPU generator, cast), so both run in float64 on the same draws."""
    diffusers = pytest.importorskip("diffusers")
    from diffkit.interop.schedulers import grid_from_diffusers, schedule_from_diffusers
    scheduler = diffusers.SASolverScheduler(predictor_order=predictor_order, corrector_order=corrector_order,
                                            tau_func=None if tau is None else (lambda t: tau))
    scheduler.set_timesteps(steps)
    schedule, _ = schedule_from_diffusers(scheduler)
    grid = grid_from_diffusers(scheduler)
    assert grid[-1] == 0.0 and len(grid) == steps + 1  # SA-Solver ends at t = 0's sigma
    if float64:
        abar = schedule.alpha_bar(grid)
        scheduler.sigmas = ((1 - abar) / abar).sqrt()
        module = importlib.import_module(type(scheduler).__module__)
        monkeypatch.setattr(module, "randn_tensor", lambda shape, generator=None, device=None, dtype=None:
                            torch.randn(shape, generator=generator, dtype=torch.float32).to(dtype))
    net = GaussianMixture.random(3, 3, seed=5, spread=1.0, scale=0.4).network(schedule)
    x_T = torch.randn(64, 3, generator=torch.Generator().manual_seed(7), dtype=F64)
    x = x_T.clone() if float64 else x_T.float()
    generator = torch.Generator().manual_seed(11)
    for t in scheduler.timesteps:
        x = scheduler.step(net(x, t.reshape(1).expand(x.shape[0])), t, x, generator=generator).prev_sample
    return x_T, x.to(F64), grid, schedule, net


@pytest.mark.parametrize("predictor_order, corrector_order, tau", [(2, 2, 0.0), (2, 2, 1.0), (2, 2, None),
                                                                   (3, 3, 1.0), (3, 4, 0.0), (1, 1, 1.0),
                                                                   (4, 2, 1.0)])
def test_sa_solver_equals_diffusers_sasolver_scheduler_with_the_same_noise(predictor_order, corrector_order, tau,
                                                                          monkeypatch):
    """10 steps (orders warming up, lower_order_final) in diffusers' float32: 1e-5 relative (measured
    <= 5e-6 over all 48 order / tau pairs); its sigmas and noise in float64: 1e-12 (measured 1.6e-14)."""
    options = {"predictor_order": predictor_order, "corrector_order": corrector_order,
               "tau": 1.0 if tau is None else tau, "tau_window": (200, 800) if tau is None else None}
    for float64, tol in ((False, 1e-5), (True, 1e-12)):
        x_T, theirs, grid, schedule, net = _diffusers_run(predictor_order, corrector_order, tau, 10, float64,
                                                          monkeypatch)
        ours = diffkit.sample(Denoiser(net, schedule), x_T.clone(), "sa-solver", grid=grid, progress=False,
                              generator=torch.Generator().manual_seed(11), **options)
        rel = ((ours - theirs).abs().max() / theirs.abs().max()).item()
        assert rel < tol, (float64, rel)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_tau_zero_is_unipc_bh1_and_draws_no_noise(order):
    """At tau = 0 SA-Predictor p with SA-Corrector p + 1 (nodes) is UniP-p + UniC-p in bh1 form (the
    same order rules); no noise is drawn (the generator is untouched)."""
    gm = GaussianMixture.random(3, 3, seed=5)
    den = Denoiser(gm.network(S), S)
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    grid = make_grid(S, 9, "logsnr", "sigma_min")
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    ours = sa_solver(den, x.clone(), grid, predictor_order=order, corrector_order=order + 1, tau=0.0,
                     generator=generator)
    theirs = unipc(den, x.clone(), grid, solver_order=order, solver_type="bh1")
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    assert torch.equal(generator.get_state(), state)


# min(corrector nodes, predictor order + 1) (Adams-Moulton with c nodes after an order-p
# Adams-Bashforth predictor); measured on (16, 32, 64) steps: 2.17, 2.53, 3.11, 3.33, 5.36
EXPECTED_ORDER = {(1, 2): 2, (2, 2): 2, (2, 3): 3, (3, 3): 3, (4, 4): 4}


@pytest.mark.parametrize("orders", sorted(EXPECTED_ORDER))
def test_tau_zero_error_against_the_exact_ode_falls_at_its_order(orders):
    """Gaussian data: the exact probability-flow ODE map from t = T-1 to 0 against tau = 0 on
    logSNR grids of 16, 32, 64 steps (no lower-order final steps); slope of log error vs log steps."""
    gaussian = GaussianMixture.random(4, 1, seed=3)
    den = Denoiser(gaussian.network(S), S)
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    T = S.num_timesteps
    exact = gaussian_ode_solution(gaussian.means[0], gaussian.covs[0], x, S.alpha(T - 1.0), S.sigma(T - 1.0),
                                  S.alpha(0.0), S.sigma(0.0))
    counts = (16, 32, 64)
    errors = [(sa_solver(den, x.clone(), make_grid(S, n, "logsnr", "sigma_min"), predictor_order=orders[0],
                         corrector_order=orders[1], tau=0.0, lower_order_final=False) - exact)
              .pow(2).mean().sqrt().item() for n in counts]
    slope = -np.polyfit(np.log(counts), np.log(errors), 1)[0]
    assert errors[-1] < 1e-3 and slope >= EXPECTED_ORDER[orders] - 0.3, (slope, errors)


def test_tau_one_samples_the_exact_marginal_of_gaussian_data():
    """tau = 1 (the reverse SDE), the registered defaults, 100 logSNR steps to t = 0: the sample mean and
    covariance of 20000 draws within 4.5 standard errors of the exact N(alpha_0 mu, alpha_0^2 C + sigma_0^2 I).
    (At 20 steps the covariance is off by 0.066, 52 standard errors: diffusers' 2-node weights a = 1/2,
    docs/samplers.md.)"""
    gaussian = GaussianMixture.random(4, 1, seed=3)
    den = Denoiser(gaussian.network(S), S)
    x_T = torch.randn(20000, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    out = diffkit.sample(den, x_T, "sa-solver", steps=100, final="sigma_min",
                         generator=torch.Generator().manual_seed(2), progress=False)
    a0, s0 = S.alpha(0.0), S.sigma(0.0)
    assert_gaussian_moments(out, a0 * gaussian.means[0], a0 ** 2 * gaussian.covs[0] + s0 ** 2 * torch.eye(4, dtype=F64))


def test_step_into_clean_data_is_the_last_x0_and_bad_options_are_one_line_errors():
    gm = GaussianMixture.random(3, 3, seed=5)
    den = Denoiser(gm.network(S), S)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    seen = []
    out = diffkit.sample(den, x, "sa-solver", steps=5, seed=0, progress=False, callback=seen.append)
    assert diffkit.samplers.REGISTRY["sa-solver"].default_final == "zero"
    torch.testing.assert_close(out, seen[-1]["x0"], rtol=0, atol=0)
    for bad, match in [({"predictor_order": 5}, "predictor_order=5 is out of range"),
                       ({"corrector_order": 0}, "corrector_order=0 is out of range"),
                       ({"tau": -0.5}, "tau=-0.5 is out of range"),
                       ({"tau_window": (800, 200)}, r"tau_window=\(800, 200\) is not allowed"),
                       ({"tau_window": "middle"}, "tau_window='middle' is not allowed")]:
        with pytest.raises(DiffkitError, match=match):
            diffkit.sample(den, x, "sa-solver", steps=5, seed=0, progress=False, **bad)


def test_sasolver_scheduler_grids_end_at_t_zero_and_a_repeated_last_sigma_is_refused():
    """``grid_from_diffusers``: SASolverScheduler's last step ends at t = 0's sigma (no final_sigmas_type); with
    use_karras_sigmas it repeats its last sigma (a zero-length last step): refused, naming diffkit's own grid."""
    diffusers = pytest.importorskip("diffusers")
    from diffkit.interop.schedulers import grid_from_diffusers
    scheduler = diffusers.SASolverScheduler(use_karras_sigmas=True)
    scheduler.set_timesteps(10)
    with pytest.raises(DiffkitError, match="SASolverScheduler's last timestep is 0: .*repeats its last sigma.*"
                                           "sa-solver spacing='karras'"):
        grid_from_diffusers(scheduler)


def test_cli_samples_with_sa_solver_and_its_tau_and_refuses_tau_for_other_samplers(tmp_path, capsys):
    """``diffkit sample --sampler sa-solver [--tau T]``: tau 0 (the ODE) and the default 1 give other images
    from the same seed; --tau with another sampler is a one-line error naming the sampler."""
    from test_cli_errors import one_line_error, run_cli
    from test_guidance import write_model_checkpoint
    checkpoint = write_model_checkpoint(tmp_path / "m.safetensors", None)
    common = ["sample", "--checkpoint", checkpoint, "--sampler", "sa-solver", "--steps", 3, "--num", 2, "--seed", 0,
              "--no-progress"]
    for name, extra in (("sde.png", []), ("ode.png", ["--tau", "0"])):
        code, out, _ = run_cli(capsys, *common, "--out", tmp_path / name, *extra)
        assert code == 0 and "sa-solver" in out
    assert (tmp_path / "sde.png").read_bytes() != (tmp_path / "ode.png").read_bytes()
    line = one_line_error(capsys, *common[:4], "tcd", "--tau", "0.5", "--out", tmp_path / "x.png")
    assert line.endswith("--tau 0.5 sets the stochasticity of the sa-solver sampler, not of 'tcd'; give --sampler "
                         "sa-solver") and not (tmp_path / "x.png").exists()
