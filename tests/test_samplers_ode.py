"""The adaptive probability-flow ODE sampler ``ode`` against closed forms: its Runge-Kutta pairs'
orders of convergence on y' = -y and y' = cos(t), its step-size control against scipy's solve_ivp,
the exact ODE map of Gaussian data (diffkit.analytic.gaussian_ode_solution) and the Gaussian
posterior mean, an independent DOP853 solve of the ODE in EDM's variables on a 2-d mixture,
per-sample step control (batch invariance, NFE = the largest per-sample count, every call on the
whole batch), bad options and half-precision outputs."""
from __future__ import annotations

import math
import re

import pytest
import torch

import diffkit
from diffkit import Denoiser, DiffkitError, NoiseSchedule
from diffkit.analytic import GaussianMixture, gaussian_ode_solution
from diffkit.samplers import REGISTRY
from diffkit.samplers.ode import METHODS, RK23, RK45, rk_step
from conftest import rounded_output

F64 = torch.float64
SCHEDULE = NoiseSchedule.linear()
T = SCHEDULE.num_timesteps


def one_line(pattern, func, *args, **kwargs):
    with pytest.raises(DiffkitError) as err:
        func(*args, **kwargs)
    assert "\n" not in str(err.value) and re.search(pattern, str(err.value)), str(err.value)


def _fixed_step_error(tab, f, exact, n, embedded):
    """|y(1) - exact(1)| after n equal steps from y(0) = exact(0), with the pair's solution or (embedded)
    its error-estimating one, y1_hat = y1 - err."""
    y, lam = torch.full((1, 1), exact(0.0), dtype=F64), torch.zeros(1, dtype=F64)
    h = torch.full((1,), 1.0 / n, dtype=F64)
    k = f(lam, y)
    for _ in range(n):
        y1, k1, err = rk_step(tab, f, lam, y, h, k)
        lam = lam + h
        y, k = (y1 - err, f(lam, y1 - err)) if embedded else (y1, k1)
    return abs(y.item() - exact(1.0))


@pytest.mark.parametrize("tab,order", [(RK45, 5), (RK23, 3)])
@pytest.mark.parametrize("embedded", [False, True])
@pytest.mark.parametrize("problem", ["decay", "cos"])
def test_the_tableaus_converge_at_their_orders(tab, order, embedded, problem):
    # y' = -y (y = e^-t) checks the stages' weights, y' = cos t (y = sin t) the nodes c; halving the
    # step divides the global error by 2^p: p = 5 / 3 for the solutions, 4 / 2 for the embedded ones
    f, exact = {"decay": (lambda lam, y: -y, lambda t: math.exp(-t)),
                "cos": (lambda lam, y: torch.cos(lam)[:, None] + 0 * y, math.sin)}[problem]
    errors = [_fixed_step_error(tab, f, exact, n, embedded) for n in (8, 16, 32)]
    p = order - 1 if embedded else order
    for coarse, fine in zip(errors, errors[1:]):
        assert p - 0.25 < math.log2(coarse / fine) < p + 0.35, (errors, p)


@pytest.mark.parametrize("method", list(METHODS))
def test_the_step_size_control_is_scipys(method):
    # each row of the batch against its own scipy.integrate.solve_ivp (same pair, error norm, step
    # rule and initial step): the same steps, so the same endpoint to round-off
    from scipy.integrate import solve_ivp
    from diffkit.samplers.ode import _solve
    m = torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    y0 = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    for tol in (1e-3, 1e-6, 1e-9):
        out = _solve(METHODS[method], lambda lam, y: 0.3 * torch.sin(lam)[:, None] * y @ m.T - 0.1 * y ** 3,
                     y0, -2.0, 3.0, tol, tol)
        for i in range(5):
            ref = solve_ivp(lambda t, y: 0.3 * math.sin(t) * m.numpy() @ y - 0.1 * y ** 3, (-2.0, 3.0), y0[i].numpy(),
                            method=method, rtol=tol, atol=tol).y[:, -1]
            torch.testing.assert_close(out[i], torch.from_numpy(ref), rtol=0, atol=1e-13)


@pytest.fixture(scope="module")
def gaussian():
    return GaussianMixture.random(4, 1, seed=3)


def _exact(gaussian, x, t_end):
    a = lambda t: SCHEDULE.alpha(torch.tensor(t, dtype=F64))  # noqa: E731
    s = lambda t: SCHEDULE.sigma(torch.tensor(t, dtype=F64))  # noqa: E731
    return gaussian_ode_solution(gaussian.means[0], gaussian.covs[0], x, a(T - 1.0), s(T - 1.0), a(t_end), s(t_end))


@pytest.mark.parametrize("method,tols", [("RK45", (1e-4, 1e-6, 1e-8)), ("RK23", (1e-3, 1e-4, 1e-6))])
def test_gaussian_endpoint_matches_the_exact_ode_map_to_the_tolerance(gaussian, method, tols):
    """The error at the endpoint follows the tolerance, within 30x of it. Measured max |error| /
    tol: RK45 0.88, 0.18, 0.90 at 1e-4, 1e-6, 1e-8 (68, 140, 266 calls); RK23 0.57, 0.90, 1.24 at
    1e-3, 1e-4, 1e-6 (65, 113, 362 calls). The third-order pair takes tol^(-1/3) steps: 1595
    calls at 1e-8 (ratio 1.35), four times the rest of the file, so it stops at 1e-6."""
    den = Denoiser(gaussian.network(SCHEDULE), SCHEDULE)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    exact = _exact(gaussian, x, 0.0)
    errors, nfes = [], []
    for tol in tols:
        den.reset_nfe()
        out = diffkit.sample(den, x, "ode", final="sigma_min", rtol=tol, atol=tol, method=method, progress=False)
        errors.append((out - exact).abs().max().item())
        nfes.append(den.nfe)
    assert all(error < 30 * tol for error, tol in zip(errors, tols)), errors
    assert errors[0] > errors[1] > errors[2], errors
    assert nfes[0] < nfes[1] < nfes[2], nfes


def test_default_tolerance_and_final_zero_end_with_the_posterior_mean(gaussian):
    # final "zero": the ODE to t = 0, then the x0 prediction there (the step to sigma = 0 of DDIM /
    # Euler), for Gaussian data E[x0 | x_t] = m + alpha C (alpha^2 C + sigma^2 I)^-1 (x_t - alpha m)
    den = Denoiser(gaussian.network(SCHEDULE), SCHEDULE)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    x_0 = _exact(gaussian, x, 0.0)
    a, s = SCHEDULE.alpha(0.0).item(), SCHEDULE.sigma(0.0).item()
    m, c = gaussian.means[0], gaussian.covs[0]
    posterior = m + (x_0 - a * m) @ torch.linalg.solve(a * a * c + s * s * torch.eye(4, dtype=F64), a * c)
    out = diffkit.sample(den, x, "ode", progress=False)  # rtol = atol = 1e-5, final "zero"
    assert (out - posterior).abs().max().item() < 1e-4


def _sigma_tilde_reference(mixture, x_T, t_end):
    """An independent solve: dx~/dsigma~ = eps*(alpha x~) in EDM's variables (x~ = x/alpha,
    sigma~ = sigma/alpha), the whole batch as one vector, DOP853 at rtol = atol = 1e-10."""
    from scipy.integrate import solve_ivp
    sig = lambda t: SCHEDULE.karras_sigma(torch.tensor(t, dtype=F64)).item()  # noqa: E731
    shape = x_T.shape

    def rhs(s, y):
        a = 1.0 / math.sqrt(1.0 + s * s)
        eps = mixture.eps(torch.from_numpy(y).reshape(shape) * a, torch.tensor(a, dtype=F64),
                          torch.tensor(s * a, dtype=F64))
        return eps.reshape(-1).numpy()

    sol = solve_ivp(rhs, (sig(T - 1.0), sig(t_end)), (x_T / SCHEDULE.alpha(T - 1.0).item()).reshape(-1).numpy(),
                    method="DOP853", rtol=1e-10, atol=1e-10)
    return torch.from_numpy(sol.y[:, -1]).reshape(shape) * SCHEDULE.alpha(t_end).item()


def test_two_d_mixture_agrees_with_an_independent_dop853_solve():
    mixture = GaussianMixture.random(2, 8, seed=0)  # the benchmark's 2-d mixture
    den = Denoiser(mixture.network(SCHEDULE), SCHEDULE)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    ref = _sigma_tilde_reference(mixture, x, 0.0)
    # the Denoiser hands the network float32 times: the model differs from eps* at exact times by ~1e-7
    tight = diffkit.sample(den, x, "ode", final="sigma_min", rtol=1e-9, atol=1e-9, progress=False)
    assert (tight - ref).abs().max().item() < 1e-6
    default = diffkit.sample(den, x, "ode", final="sigma_min", progress=False)
    assert (default - ref).abs().max().item() < 1e-3


def test_each_sample_is_solved_alone_and_the_nfe_is_the_largest_count():
    mixture = GaussianMixture.random(2, 8, seed=0)
    net, rows = mixture.network(SCHEDULE), []
    den = Denoiser(lambda x, t: rows.append(x.shape[0]) or net(x, t), SCHEDULE)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    seen = []
    full = diffkit.sample(den, x, "ode", rtol=1e-4, atol=1e-4, progress=False, callback=seen.append)
    batch_nfe = den.nfe
    assert [d["nfe"] for d in seen][-1] == batch_nfe
    alone = []
    for i in range(6):
        den.reset_nfe()
        one = diffkit.sample(den, x[i:i + 1], "ode", rtol=1e-4, atol=1e-4, progress=False)
        torch.testing.assert_close(one[0], full[i], rtol=1e-9, atol=1e-9)
        alone.append(den.nfe)
    assert batch_nfe == max(alone) and min(alone) < max(alone), alone
    # every call sees the whole batch (a finished row is evaluated at its end, its result unused)
    assert rows[:batch_nfe] == [6] * batch_nfe, rows


def test_wrappers_holding_one_row_per_sample_see_the_whole_batch():
    """Guidance with one null context per sample (text_to_image's negative prompts) and inpainting's
    known image and mask hold B rows: every network call must bring all B."""
    from diffkit.editing import InpaintingDenoiser
    from diffkit.guidance import ClassifierFreeGuidance
    mixture = GaussianMixture.random(3, 4, seed=1)
    net = mixture.network(SCHEDULE)
    den = Denoiser(lambda x, t, context=None: net(x, t) + (0.0 if context is None else 0.01 * context.mean(1)),
                   SCHEDULE)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    context = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    null = torch.zeros(5, 2, 3, dtype=F64) + torch.arange(5, dtype=F64)[:, None, None]
    guided = ClassifierFreeGuidance(den, 2.0, null_context=null)
    out = diffkit.sample(guided, x, "ode", cond={"context": context}, rtol=1e-4, atol=1e-4, progress=False)
    for i in (0, 4):  # and sample i as if alone
        one = diffkit.sample(ClassifierFreeGuidance(den, 2.0, null_context=null[i:i + 1]), x[i:i + 1], "ode",
                             cond={"context": context[i:i + 1]}, rtol=1e-4, atol=1e-4, progress=False)
        torch.testing.assert_close(one[0], out[i], rtol=1e-9, atol=1e-9)
    known = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    mask = torch.tensor([[1.0, 0.0, 1.0]], dtype=F64).expand(5, 3)
    painted = diffkit.sample(InpaintingDenoiser(den, known, mask), x, "ode", rtol=1e-4, atol=1e-4, progress=False)
    assert painted.shape == x.shape and torch.isfinite(painted).all()


def test_the_solver_restarts_at_the_grid_times_where_the_callback_reports(gaussian):
    den = Denoiser(gaussian.network(SCHEDULE), SCHEDULE)
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(4), dtype=F64)
    seen = []
    out = diffkit.sample(den, x, "ode", grid=[999.0, 500.0, 100.0, 0.0], rtol=1e-8, atol=1e-8, progress=False,
                         callback=seen.append)
    assert [(d["t"], d["s"]) for d in seen] == [(999.0, 500.0), (500.0, 100.0), (100.0, 0.0)]
    for d in seen:
        assert (d["x"] - _exact(gaussian, x, d["s"])).abs().max().item() < 1e-6
    torch.testing.assert_close(out, seen[-1]["x"])
    assert seen[0]["nfe"] < seen[1]["nfe"] < seen[2]["nfe"] == den.nfe


def test_bad_options_are_one_line_errors(gaussian):
    den = Denoiser(gaussian.network(SCHEDULE), SCHEDULE)
    for kwargs, pattern in (({"steps": 10}, "picks its own steps, so steps=10 does not apply; set its accuracy with "
                                            "rtol / atol"),
                            ({"nfe": 20}, "nfe=20 does not apply"),
                            ({"spacing": "logsnr"}, "spacing='logsnr' does not apply"),
                            ({"rtol": 0.0}, "rtol"), ({"atol": -1.0}, "atol"), ({"rtol": float("nan")}, "rtol"),
                            ({"method": "euler"}, "method='euler'"),
                            ({"method": "DOP853"}, "method='DOP853' is not allowed; choose one of: RK45, RK23"),
                            ({"order": 2}, "option 'order' is not one")):
        one_line(pattern, diffkit.sample, den, (2, 4), "ode", progress=False, **kwargs)
    one_line("spacing='logsnr' does not apply", diffkit.sample, den, (2, 4), "ode@logsnr", progress=False)
    one_line("picks its own steps, so steps does not apply", REGISTRY["ode"].nfe, 10)
    one_line("nfe does not apply", REGISTRY["ode"].steps_for_nfe, 10)
    one_line("leaves no ODE to solve to final='sigma_min'", diffkit.sample, Denoiser(lambda x, t: 0 * x,
             NoiseSchedule.linear(1)), (2, 4), "ode", final="sigma_min", progress=False)
    ztsnr = NoiseSchedule.linear(100).rescale_zero_terminal_snr()
    one_line("cannot start at t=99", diffkit.sample,
             Denoiser(lambda x, t: 0 * x, ztsnr, prediction_type="v_prediction"), (2, 4), "ode", progress=False)


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
def test_half_precision_model_outputs_stay_finite_and_close(gaussian, low):
    net = gaussian.network(SCHEDULE)
    rounded = rounded_output(net, low)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(5))
    ref = diffkit.sample(Denoiser(net, SCHEDULE), x, "ode", final="sigma_min", progress=False)
    den = Denoiser(rounded, SCHEDULE)
    out = diffkit.sample(den, x, "ode", final="sigma_min", rtol=1e-3, atol=1e-3, progress=False)
    assert torch.isfinite(out).all() and out.dtype == torch.float32
    err = ((out - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()
    assert err < 12 * (2.0 ** -8 if low is torch.bfloat16 else 2.0 ** -11) + 1e-3, err
    out = diffkit.sample(den, x.half(), "ode", final="sigma_min", progress=False)  # the default tolerance too
    assert torch.isfinite(out).all()


def test_ode_runs_through_guidance_and_thresholding(gaussian):
    from diffkit.guidance import ClassifierFreeGuidance
    net = gaussian.network(SCHEDULE)
    den = Denoiser(lambda x, t, y: net(x, t) + 0.01 * y.to(x.dtype)[:, None], SCHEDULE)  # label 3: unconditional
    cfg = ClassifierFreeGuidance(den, 1.5, null_class=3)
    out = diffkit.sample(cfg, (3, 4), "ode", seed=0, cond={"y": torch.tensor([0, 1, 2])}, rtol=1e-3, atol=1e-3,
                         progress=False)
    assert out.shape == (3, 4) and torch.isfinite(out).all()
    out = diffkit.sample(den, (3, 4), "ode", seed=0, cond={"y": torch.tensor([0, 1, 2])}, thresholding="clip",
                         rtol=1e-3, atol=1e-3, progress=False)
    assert out.abs().max() <= 1.0 + 1e-6


def test_samplers_command_prints_it_as_adaptive(capsys):
    from diffkit.cli import main
    assert main(["samplers"]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith("ode "))
    assert re.match(r"ode\s+adaptive\s+-\s+no\s+adaptive\s+zero\s+set by rtol/atol", line), line


def test_a_failing_network_call_ends_the_solve_and_raises(gaussian):
    net, calls = gaussian.network(SCHEDULE), []

    def failing(x, t):
        calls.append(1)
        if len(calls) == 20:
            raise RuntimeError("out of memory")
        return net(x, t)
    with pytest.raises(RuntimeError, match="out of memory"):
        diffkit.sample(Denoiser(failing, SCHEDULE), (5, 4), "ode", seed=0, progress=False)
    assert len(calls) == 20


def test_a_solve_that_cannot_meet_the_tolerance_is_a_one_line_error(gaussian):
    net = gaussian.network(SCHEDULE)
    nan_late = lambda x, t: net(x, t) * (float("nan") if float(t[0]) < 300 else 1.0)  # noqa: E731
    one_line(r"the ODE solve of sample 0 failed \(RK45: Required step size", diffkit.sample,
             Denoiser(nan_late, SCHEDULE), (2, 4), "ode", seed=0, progress=False)


def test_per_sample_cond_gives_each_sample_what_it_gives_that_sample_alone(gaussian):
    # rows finish at different times; a label-dependent model still gives each sample its own answer
    net = gaussian.network(SCHEDULE)
    den = Denoiser(lambda x, t, y: net(x, t) * (1.0 + 0.5 * y.to(x.dtype)[:, None]), SCHEDULE)
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(6), dtype=F64)
    labels = torch.tensor([0, 3, 1, 2])
    full = diffkit.sample(den, x, "ode", cond={"y": labels}, rtol=1e-4, atol=1e-4, progress=False)
    for i in range(4):
        one = diffkit.sample(den, x[i:i + 1], "ode", cond={"y": labels[i:i + 1]}, rtol=1e-4, atol=1e-4, progress=False)
        torch.testing.assert_close(one[0], full[i], rtol=1e-9, atol=1e-9)
