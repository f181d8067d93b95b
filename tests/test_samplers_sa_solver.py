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


@pytest.mark.parametrize("orders", [(2, 2), (3, 3), (4, 4), (2, 3)])
def test_exact_weights_integrate_an_x0_linear_in_lambda_exactly(orders):
    """With x0(lambda) = a + b lambda the probability-flow ODE in data prediction (eq. 9, tau = 0) has the closed
    form x/sigma = x_T/sigma_T + [e^lambda (a + b (lambda - 1))] from lambda_T: every SA-Predictor and
    SA-Corrector with >= 2 nodes integrates that x0 exactly with ``weights="exact"`` (the warm-up's first-order
    predictor is corrected by the 2-node corrector; no lower-order final step), to 1e-10. diffusers' 2-node
    a = 1/2 weights do not (off by more than 1e-3)."""
    a = torch.tensor([0.3, -0.2, 0.5], dtype=F64)
    b = torch.tensor([0.05, 0.1, -0.08], dtype=F64)

    def net(x, t):
        lam = S.log_snr(t.to(F64)).reshape(-1, 1)
        return (a + b * lam).expand_as(x).to(x.dtype)
    den = Denoiser(net, S, prediction_type="sample")
    grid = torch.tensor([999.0, 700, 400, 250, 150, 90, 50, 25, 10, 0], dtype=F64)
    x_T = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    lam_T, lam_0 = S.log_snr(grid[0]), S.log_snr(grid[-1])

    def antiderivative(lam):
        return torch.exp(lam) * (a + b * (lam - 1.0))
    exact = S.sigma(grid[-1]) * (x_T / S.sigma(grid[0]) + antiderivative(lam_0) - antiderivative(lam_T))
    options = {"predictor_order": orders[0], "corrector_order": orders[1], "tau": 0.0, "lower_order_final": False}
    ours = sa_solver(den, x_T.clone(), grid, weights="exact", **options)
    torch.testing.assert_close(ours, exact, rtol=1e-10, atol=1e-10)
    if 2 in orders:
        assert (sa_solver(den, x_T.clone(), grid, **options) - exact).abs().max() > 1e-3


@pytest.mark.parametrize("predictor", [True, False])
@pytest.mark.parametrize("tau", [0.0, 1.0])
def test_exact_weights_are_diffusers_lagrange_integrals_before_its_two_node_term(predictor, tau):
    """Per node, ``sa_weights(..., "exact")`` is diffusers' ``get_coefficients_fn`` (the Lagrange basis in
    absolute lambda against int e^{(1 + tau^2) lambda} lambda^k, eq. 13-16; run in float64 here), for 1-4 nodes;
    ``"diffusers"`` weights are that plus, at 2 nodes, the term diffusers adds outside the function."""
    diffusers = pytest.importorskip("diffusers")
    from diffkit.samplers.sa_solver import sa_weights
    scheduler = diffusers.SASolverScheduler()
    lam_t, h = -1.0, 0.4
    lam_s, earlier = lam_t + h, [-1.3, -1.7, -2.2]
    c2, t2 = 1.0 + tau ** 2, tau ** 2
    alpha_s = 1.0 / np.sqrt(1.0 + np.exp(-2 * lam_s))
    sigma_s = alpha_s * np.exp(-lam_s)
    hh = -c2 * h
    unit = c2 * sigma_s * np.exp(-t2 * lam_s)  # diffusers' factor in front of its coefficients
    for nodes in range(1, 5):
        extra = nodes - 1 if predictor else nodes - 2
        if extra < 0:
            continue
        rks = [(lam - lam_t) / h for lam in earlier[:extra]]

        def per_node(weights):
            """The coefficient of each x0: (corrector: the new one,) m_0 at lambda_t, the earlier ones."""
            b_h, w = sa_weights(rks, hh, predictor, weights)
            new = [] if predictor else [-alpha_s * b_h * w[-1]]
            earlier_coefs = [-alpha_s * b_h * a / r for a, r in zip(w, rks)]
            return np.array(new + [-alpha_s * np.expm1(hh) - sum(earlier_coefs) - sum(new)] + earlier_coefs)
        lambdas = ([] if predictor else [lam_s]) + [lam_t] + earlier[:extra]
        theirs = scheduler.get_coefficients_fn(nodes, torch.tensor(lam_t, dtype=F64), torch.tensor(lam_s, dtype=F64),
                                               [torch.tensor(v, dtype=F64) for v in lambdas], tau)
        theirs = np.array([float(v) for v in theirs]) * unit
        np.testing.assert_allclose(per_node("exact"), theirs, rtol=1e-9, atol=1e-12)
        if nodes == 2:  # diffusers' term, from stochastic_adams_bashforth_update / _moulton_update
            inner = (h * c2 - 1 + np.exp(-c2 * h)) / c2 ** 2
            term = (h ** 2 / 2 - inner) / (lam_t - earlier[0]) if predictor else h / 2 - inner / h
            term = np.exp(c2 * lam_s) * term
            theirs = theirs + unit * term * np.array([1.0, -1.0])
        np.testing.assert_allclose(per_node("diffusers"), theirs, rtol=1e-9, atol=1e-12)


def test_the_gaussian_benchmark_prints_its_table(monkeypatch, capsys):
    """benchmarks/sa_solver_gaussian.py (docs/samplers.md, "Few steps") on 200 samples and 2 steps: one row per
    sampler, finite errors."""
    from pathlib import Path
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    bench = importlib.import_module("sa_solver_gaussian")
    bench.main(["--samples", "200", "--steps", "2,3"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| `")]
    assert len(rows) == len(bench.ROWS) and all("nan" not in row for row in rows)
