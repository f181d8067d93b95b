"""Fast samplers (PNDM family, DPM-Solver(++), Karras-style, UniPC) against closed forms:
the exact probability-flow ODE map for Gaussian data, first steps written out from the papers'
equations, DDIM, per-sample generators, reduced-precision model outputs and exact NFE counts."""
from __future__ import annotations

import importlib
import inspect
import math

import numpy as np
import pytest
import torch

import diffkit
from diffkit import Denoiser, DiffkitError, NoiseSchedule
from diffkit.analytic import GaussianMixture, gaussian_ode_solution
from diffkit.samplers import REGISTRY
from diffkit.samplers.ddim import ddim
from diffkit.samplers.dpm_solver import dpm_solver_multistep, dpm_solver_singlestep, singlestep_orders
from diffkit.samplers.karras import heun, lms_coefficients
from diffkit.samplers.pndm import plms, pndm, s_pndm
from diffkit.samplers.unipc import unipc
from diffkit.timesteps import make_grid
from conftest import rounded_output

F64 = torch.float64
FAST = [name for name in REGISTRY if name not in ("ddpm", "ddim")]
# the samplers whose step count the caller sets (all but ode, which picks its own: tests/test_samplers_ode.py)
FIXED = [name for name in FAST if not REGISTRY[name].adaptive]


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule.linear()


@pytest.fixture(scope="module")
def gaussian():
    return GaussianMixture.random(4, 1, seed=3)


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture.random(3, 3, seed=5)


def _alpha_sigma(schedule, t):
    # the Denoiser hands the network float32 times, so the exact model lives at those times
    t = torch.tensor(float(t), dtype=torch.float32).to(F64)
    return schedule.alpha(t).item(), schedule.sigma(t).item()


def _eps(mix, schedule, x, t):
    """eps*(x, t) straight from the mixture (not through the Denoiser)."""
    a, s = _alpha_sigma(schedule, t)
    return mix.eps(x, torch.tensor(a, dtype=F64), torch.tensor(s, dtype=F64))


# ------------------------------------------------------------------ convergence order
# Global order on a logSNR-uniform grid to t = 0 (final "sigma_min", no lower-order final steps).
# Multistep methods started by a first-order step are globally 2nd order (the starting step's
# O(h^2) local error is not damped); UniPC's corrector lifts every step, including the first, by
# one order. The pseudo methods (PLMS, F-/S-PNDM) apply Adams-Bashforth weights to eps inside the
# exponential transfer, which is exact only to O(h^2), so they are globally 2nd order here.
# DPM-Solver-3M's second difference carries half the exact weight (order 2 measured); DEIS-3's
# exact tAB weights measure ~3.9 (the warm-up steps, at high noise, cost little here). iPNDM's fixed-step
# Adams-Bashforth weights on a non-uniform grid are exact to O(h^2) per step: order 2 (measured 2.08).
EXPECTED_ORDER = {"pndm": 2, "plms": 2, "plms-3": 2, "s-pndm": 2, "dpm-solver": 3, "dpm-solver-2": 2,
                  "dpm-solver-2m": 2,
                  "dpm-solver-3m": 2, "dpm-solver++-2s": 2, "dpm-solver++-2m": 2, "dpm-solver++-3m": 2,
                  "euler": 1, "heun": 2, "dpm2": 2, "lms": 2, "ipndm": 2, "unipc": 2, "unipc-3": 3, "unipc-bh1": 3,
                  "unipc-eps": 3, "unipc-eps-bh1": 3, "deis": 2, "deis-3": 3,
                  "ddim": 1}
STEPS = {"default": (16, 32, 64), "dpm-solver++-2s": (32, 64, 128), "dpm-solver": (24, 48, 96)}


def _order_fit(schedule, gaussian, name, spacing="logsnr", steps_list=None, fn_schedule=None):
    sched = fn_schedule or schedule
    info = REGISTRY[name]
    den = Denoiser(gaussian.network(sched), sched)
    x = torch.randn(32, gaussian.dim, generator=torch.Generator().manual_seed(0), dtype=F64)
    T = sched.num_timesteps
    a_T, s_T = sched.alpha(T - 1.0), sched.sigma(T - 1.0)
    a_0, s_0 = sched.alpha(0.0), sched.sigma(0.0)
    exact = gaussian_ode_solution(gaussian.means[0], gaussian.covs[0], x, a_T, s_T, a_0, s_0)
    options = dict(info.options)
    if "lower_order_final" in inspect.signature(info.fn).parameters:
        options["lower_order_final"] = False
    steps_list = steps_list or STEPS.get(name, STEPS["default"])
    errors = []
    for n in steps_list:
        grid = make_grid(sched, n, spacing, "sigma_min")
        out = info.fn(den, x.clone(), grid, **options)
        errors.append((out - exact).pow(2).mean().sqrt().item())
    slope = -np.polyfit(np.log(steps_list), np.log(errors), 1)[0]
    return slope, errors


@pytest.mark.parametrize("name", sorted(EXPECTED_ORDER))
def test_error_falls_at_theoretical_order(schedule, gaussian, name):
    slope, errors = _order_fit(schedule, gaussian, name)
    assert errors[-1] < 0.03
    assert slope >= EXPECTED_ORDER[name] - 0.3, f"{name}: measured order {slope:.2f}, errors {errors}"


def _imperfect_network(mixture, schedule):
    """eps* plus a smooth error that changes with t, as a trained network's does (a bias of up to
    0.05 in eps units at t = T-1): its probability-flow ODE is still well defined."""
    net = mixture.network(schedule)
    T = schedule.num_timesteps
    return lambda x, t: net(x, t) + 0.05 * (t.to(x.dtype) / (T - 1)).reshape(-1, *([1] * (x.dim() - 1)))


def _imperfect_ode_endpoint(network, schedule, x_T):
    """That model's ODE dx~/dsigma~ = eps(alpha x~, t(sigma~)), from t = T-1 to clean data (DOP853)."""
    from scipy.integrate import solve_ivp
    T = schedule.num_timesteps
    sig_max = schedule.karras_sigma(T - 1.0).item()
    shape = x_T.shape

    def rhs(sig, y):
        t = schedule.t_from_karras_sigma(torch.tensor(max(sig, 1e-9), dtype=F64)).clamp(min=-1.0)
        alpha = 1.0 / math.sqrt(1.0 + sig * sig)
        xt = torch.from_numpy(y).reshape(shape) * alpha
        return network(xt, t.reshape(1).expand(shape[0]).to(torch.float32)).reshape(-1).numpy()

    sol = solve_ivp(rhs, (sig_max, 0.0), (x_T / schedule.alpha(T - 1.0).item()).reshape(-1).numpy(),
                    method="DOP853", rtol=1e-9, atol=1e-9)
    return torch.from_numpy(sol.y[:, -1]).reshape(shape)


def test_default_grids_converge_to_the_ode_of_an_imperfect_model(schedule, mixture):
    # Every deterministic sampler on its default grid approaches the ODE solution from t = T-1 as
    # the step count grows, also for a model that is not eps*. A grid whose first step jumps from
    # t = T-1 to sigma~ = 20 (logsnr_skip) does not: its first-order jump makes an error of order
    # (jump in sigma~) x (change of eps across it) that no step count removes (on a CPU-trained
    # MNIST U-Net that floor was larger than the error of 10-step DDIM).
    # 8 and 32 steps (the same factor 4 as 16 and 64, at half the cost): the RMS error falls by
    # 3.9 (ddim, first order, the least) to 1075 (dpm-solver); at 16 / 64 steps by 3.7 to 332.
    network = _imperfect_network(mixture, schedule)
    den = Denoiser(network, schedule)
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(12), dtype=F64)
    exact = _imperfect_ode_endpoint(network, schedule, x)
    for name, info in REGISTRY.items():
        if info.stochastic or info.adaptive:  # ode: its tolerance, not steps (tests/test_samplers_ode.py)
            continue
        errors = [(diffkit.sample(den, x.clone(), sampler=name, steps=n, progress=False) - exact)
                  .pow(2).mean().sqrt().item() for n in (8, 32)]
        assert errors[1] < errors[0] / 2.5, f"{name} on {info.default_spacing}: RMS {errors} at 8 / 32 steps"


def test_fon_is_fourth_order_where_log_alpha_is_linear(gaussian):
    # With a constant beta, log alpha_t is linear in t, so the ODE in t has no kinks and RK4 shows
    # its classical order (with other schedules the right-hand side jumps at every integer t and
    # the error stops falling at that order; docs/samplers.md, `fon`).
    # The grid stops at t = 99, away from the singular point t = -1 of the ODE in t.
    sched = NoiseSchedule.from_betas(torch.full((1000,), 0.01, dtype=F64))
    den = Denoiser(gaussian.network(sched), sched)
    x = torch.randn(32, gaussian.dim, generator=torch.Generator().manual_seed(0), dtype=F64)
    exact = gaussian_ode_solution(gaussian.means[0], gaussian.covs[0], x, sched.alpha(999.0), sched.sigma(999.0),
                                  sched.alpha(99.0), sched.sigma(99.0))
    steps_list = (8, 16, 32)
    errors = []
    for n in steps_list:
        out = REGISTRY["fon"].fn(den, x.clone(), torch.linspace(999.0, 99.0, n + 1, dtype=F64))
        errors.append((out - exact).pow(2).mean().sqrt().item())
    slope = -np.polyfit(np.log(steps_list), np.log(errors), 1)[0]
    assert slope >= 4 - 0.3, f"fon: measured order {slope:.2f}, errors {errors}"


# ------------------------------------------------------------------ first steps by hand
def test_dpm_solver_2_first_step_matches_algorithm_1(schedule, mixture):
    # DPM-Solver-2 (Lu et al. 2022, Alg. 1 / eq. 3.8), written out with the schedule directly.
    den = Denoiser(mixture.network(schedule), schedule)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    t, s1, s = 700.0, 420.5, 200.0
    grid = torch.tensor([t, s1, s], dtype=F64)
    out = dpm_solver_singlestep(den, x.clone(), grid, orders=[2], algorithm_type="dpmsolver")
    (a_t, sg_t), (a_1, sg_1), (a_s, sg_s) = (_alpha_sigma(schedule, u) for u in (t, s1, s))
    lam = lambda a, sg: math.log(a / sg)  # noqa: E731
    h = lam(a_s, sg_s) - lam(a_t, sg_t)
    r1 = (lam(a_1, sg_1) - lam(a_t, sg_t)) / h
    e0 = _eps(mixture, schedule, x, t)
    u = (a_1 / a_t) * x - sg_1 * math.expm1(r1 * h) * e0
    e1 = _eps(mixture, schedule, u, s1)
    expected = (a_s / a_t) * x - sg_s * math.expm1(h) * e0 - sg_s / (2 * r1) * math.expm1(h) * (e1 - e0)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_dpm_solver_pp_2m_second_step_matches_algorithm_2(schedule, mixture):
    # DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2): step 1 uses D = (1 + 1/(2r)) x0_1 - 1/(2r) x0_0.
    den = Denoiser(mixture.network(schedule), schedule)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    times = [900.0, 500.0, 150.0]
    out = dpm_solver_multistep(den, x.clone(), torch.tensor(times, dtype=F64), solver_order=2,
                               algorithm_type="dpmsolver++", lower_order_final=False)
    (a0, s0), (a1, s1), (a2, s2) = (_alpha_sigma(schedule, u) for u in times)
    lam0, lam1, lam2 = (math.log(a / sg) for a, sg in ((a0, s0), (a1, s1), (a2, s2)))
    x0_0 = (x - s0 * _eps(mixture, schedule, x, times[0])) / a0
    x1 = (s1 / s0) * x - a1 * math.expm1(-(lam1 - lam0)) * x0_0           # DPM-Solver++(1) first step
    x0_1 = (x1 - s1 * _eps(mixture, schedule, x1, times[1])) / a1
    h, r = lam2 - lam1, (lam1 - lam0) / (lam2 - lam1)
    D = (1 + 1 / (2 * r)) * x0_1 - 1 / (2 * r) * x0_0
    expected = (s2 / s1) * x1 - a2 * math.expm1(-h) * D
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_heun_first_step_matches_edm_algorithm_2(schedule, mixture):
    den = Denoiser(mixture.network(schedule), schedule)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    grid = make_grid(schedule, 3, "karras")
    seen = []
    heun(den, x.clone(), grid, callback=lambda d: seen.append(d["x"].clone()))
    t0, t1 = grid[0].item(), grid[1].item()
    a0, a1 = schedule.alpha(grid[0]).item(), schedule.alpha(grid[1]).item()
    k0, k1 = (schedule.karras_sigma(grid[:2])).tolist()        # EDM sigma = sqrt((1 - abar)/abar)

    def slope(x_tilde, t, k):
        """(x~ - D(x~; sigma))/sigma with D the exact denoiser at the VP state alpha x~."""
        a = 1 / math.sqrt(1 + k * k)
        eps = _eps(mixture, schedule, a * x_tilde, t)
        denoised = x_tilde - k * eps
        return (x_tilde - denoised) / k

    xt = x / a0
    d = slope(xt, t0, k0)
    x_euler = xt + (k1 - k0) * d
    expected = a1 * (xt + (k1 - k0) * 0.5 * (d + slope(x_euler, t1, k1)))
    torch.testing.assert_close(seen[0], expected, rtol=1e-10, atol=1e-10)


class _Scripted:
    """A network that returns a scripted eps per call (ignores x), recording the times."""

    def __init__(self, values):
        self.values, self.times = list(values), []

    def __call__(self, x, t):
        self.times.append(float(t[0]))
        return self.values[len(self.times) - 1].expand_as(x).clone()


def _phi(schedule, x, e, t, s):
    (a_t, _), (a_s, _) = _alpha_sigma(schedule, t), _alpha_sigma(schedule, s)
    # PNDM eq. 9: x_s = sqrt(abar_s/abar_t) x_t - (abar_s - abar_t) e /
    #                   (sqrt(abar_t) (sqrt((1 - abar_s) abar_t) + sqrt((1 - abar_t) abar_s)))
    ab_t, ab_s = a_t ** 2, a_s ** 2
    return (a_s / a_t) * x - (ab_s - ab_t) * e / (a_t * (math.sqrt((1 - ab_s) * ab_t) + math.sqrt((1 - ab_t) * ab_s)))


def test_plms_uses_55_59_37_9_over_24(schedule):
    values = [torch.full((1, 2), v, dtype=F64) for v in (0.3, -0.7, 1.1, 0.2, -0.4)]
    den = Denoiser(_Scripted(values), schedule)
    grid = make_grid(schedule, 5, "linear")
    seen = []
    plms(den, torch.ones(1, 2, dtype=F64), grid, callback=lambda d: seen.append(d["x"].clone()))
    t, s = grid[3].item(), grid[4].item()
    e = (55 * values[3] - 59 * values[2] + 37 * values[1] - 9 * values[0]) / 24
    torch.testing.assert_close(seen[3], _phi(schedule, seen[2], e, t, s), rtol=1e-12, atol=1e-12)
    # the warm-up: step 1 is Adams-Bashforth 2, (3 e_1 - e_0)/2
    e1 = (3 * values[1] - values[0]) / 2
    torch.testing.assert_close(seen[1], _phi(schedule, seen[0], e1, grid[1].item(), grid[2].item()))


def test_plms_3_uses_adams_bashforth_3(schedule):
    """plms-3: after the AB1/AB2 warm-up every step is e' = (23 e_t - 16 e_{t-d} + 5 e_{t-2d})/12
    (3rd-order Adams-Bashforth) fed to PNDM eq. 9; one network call per step."""
    values = [torch.full((1, 2), v, dtype=F64) for v in (0.3, -0.7, 1.1, 0.2, -0.4)]
    net = _Scripted(values)
    den = Denoiser(net, schedule)
    grid = make_grid(schedule, 5, "linear")
    seen = []
    info = REGISTRY["plms-3"]
    assert info.options == {"order": 3} and info.nfe(5, "zero") == 5
    info.fn(den, torch.ones(1, 2, dtype=F64), grid, **info.options,
            callback=lambda d: seen.append(d["x"].clone()))
    assert len(net.times) == 5
    for i in (2, 3):
        e = (23 * values[i] - 16 * values[i - 1] + 5 * values[i - 2]) / 12
        torch.testing.assert_close(seen[i], _phi(schedule, seen[i - 1], e, grid[i].item(), grid[i + 1].item()),
                                   rtol=1e-12, atol=1e-12)


def test_prk_warmup_matches_pndm_eq_12(schedule, mixture):
    den = Denoiser(mixture.network(schedule), schedule)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    grid = make_grid(schedule, 6, "linear")
    seen = []
    pndm(den, x.clone(), grid, callback=lambda d: seen.append(d["x"].clone()))
    t, s = grid[0].item(), grid[1].item()
    m = (t + s) / 2
    e1 = _eps(mixture, schedule, x, t)
    e2 = _eps(mixture, schedule, _phi(schedule, x, e1, t, m), m)
    e3 = _eps(mixture, schedule, _phi(schedule, x, e2, t, m), m)
    e4 = _eps(mixture, schedule, _phi(schedule, x, e3, t, s), s)
    expected = _phi(schedule, x, (e1 + 2 * e2 + 2 * e3 + e4) / 6, t, s)
    torch.testing.assert_close(seen[0], expected, rtol=1e-10, atol=1e-10)
    assert den.nfe == 4 * 3 + 3  # three PRK steps, then PLMS


def test_s_pndm_first_step_is_pseudo_improved_euler(schedule, mixture):
    den = Denoiser(mixture.network(schedule), schedule)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(5), dtype=F64)
    grid = make_grid(schedule, 4, "linear")
    seen = []
    s_pndm(den, x.clone(), grid, callback=lambda d: seen.append(d["x"].clone()))
    t, s = grid[0].item(), grid[1].item()
    e1 = _eps(mixture, schedule, x, t)
    e2 = _eps(mixture, schedule, _phi(schedule, x, e1, t, s), s)
    torch.testing.assert_close(seen[0], _phi(schedule, x, (e1 + e2) / 2, t, s), rtol=1e-10, atol=1e-10)


def test_unipc_corrector_matches_unic_1(schedule, mixture):
    # UniPC-bh2, data prediction, 2 steps to sigma_min: UniP-1 (= DDIM), then UniC-1 with
    # a_p = 1/2 (Zhao et al. 2023, Alg. 1), then UniP-1 from the corrected state.
    den = Denoiser(mixture.network(schedule), schedule)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(6), dtype=F64)
    times = [800.0, 300.0, 60.0]
    out = unipc(den, x.clone(), torch.tensor(times, dtype=F64), solver_order=2, solver_type="bh2")
    (a0, s0), (a1, s1), (a2, s2) = (_alpha_sigma(schedule, u) for u in times)
    lam = [math.log(a / sg) for a, sg in ((a0, s0), (a1, s1), (a2, s2))]
    x0_of = lambda xx, t, a, sg: (xx - sg * _eps(mixture, schedule, xx, t)) / a  # noqa: E731
    m0 = x0_of(x, times[0], a0, s0)
    h1 = lam[1] - lam[0]
    x1_pred = (s1 / s0) * x - a1 * math.expm1(-h1) * m0
    m1 = x0_of(x1_pred, times[1], a1, s1)
    B = math.expm1(-h1)
    x1 = x1_pred - a1 * B * 0.5 * (m1 - m0)
    h2 = lam[2] - lam[1]
    expected = (s2 / s1) * x1 - a2 * math.expm1(-h2) * m1
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["unipc-eps", "unipc-eps-bh1"])
def test_unipc_eps_first_corrector_and_last_step_by_hand(schedule, mixture, name):
    # UniPC with noise prediction (Zhao et al. 2023, Appendix, the eps form of eq. 8-9): the first
    # step is UniP-1 = DDIM, UniC-1 corrects it with a_p = 1/2 and B(h) = expm1(h) (bh2) or h (bh1)
    # using the evaluation at the predicted point, and the step into clean data is the x0 of that
    # evaluation taken at the corrected state.
    den = Denoiser(mixture.network(schedule), schedule)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(11), dtype=F64)
    times = [800.0, 300.0, -1.0]
    out = diffkit.sample(den, x.clone(), sampler=name, grid=torch.tensor(times, dtype=F64), progress=False)
    (a0, s0), (a1, s1) = (_alpha_sigma(schedule, u) for u in times[:2])
    h = math.log(a1 / s1) - math.log(a0 / s0)
    e0 = _eps(mixture, schedule, x, times[0])
    x1_pred = (a1 / a0) * x - s1 * math.expm1(h) * e0
    e1 = _eps(mixture, schedule, x1_pred, times[1])
    b_h = math.expm1(h) if name == "unipc-eps" else h
    x1 = x1_pred - s1 * b_h * 0.5 * (e1 - e0)
    torch.testing.assert_close(out, (x1 - s1 * e1) / a1, rtol=1e-10, atol=1e-10)
    assert den.nfe == 2


def test_lms_coefficients_are_adams_bashforth_on_a_uniform_grid():
    sigmas = [10.0, 9.0, 8.0, 7.0, 6.0]
    # integrating the Lagrange basis on nodes 7, 8, 9, 10 over [7, 6] (step -1): AB4 weights
    np.testing.assert_allclose(lms_coefficients(sigmas, 3, 4), np.array([55, -59, 37, -9]) / 24 * -1.0, rtol=1e-12)
    np.testing.assert_allclose(lms_coefficients(sigmas, 1, 2), np.array([3, -1]) / 2 * -1.0, rtol=1e-12)
    assert lms_coefficients(sigmas, 0, 1) == [-1.0]


def test_dpm_solver_1_equals_ddim_step_by_step(schedule, mixture):
    den = Denoiser(mixture.network(schedule), schedule)
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(7), dtype=F64)
    grid = make_grid(schedule, 12, "linear")
    a, b = [], []
    ddim(den, x.clone(), grid, callback=lambda d: a.append(d["x"].clone()))
    dpm_solver_singlestep(den, x.clone(), grid, solver_order=1, callback=lambda d: b.append(d["x"].clone()))
    assert len(a) == len(b) == 12
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-10)


def test_singlestep_order_split_follows_the_fast_method():
    # NFE K: K//3 third-order steps and the remainder (Lu et al. 2022, Sec. 3.4)
    assert singlestep_orders(10, 3, clean_final=False) == [3, 3, 3, 1]
    assert singlestep_orders(11, 3, clean_final=False) == [3, 3, 3, 2]
    assert singlestep_orders(10, 3, clean_final=True) == [3, 3, 3, 1]
    assert singlestep_orders(8, 3, clean_final=True) == [3, 3, 1, 1]
    assert sum(singlestep_orders(20, 2, clean_final=True)) == 20


# ------------------------------------------------------------------ batches, precision, NFE
@pytest.mark.parametrize("name", FAST)
def test_batch_size_invariance(schedule, mixture, name):
    den = Denoiser(mixture.network(schedule), schedule)
    noise = torch.randn(16, 3, generator=torch.Generator().manual_seed(8), dtype=F64)
    # ode controls each sample's step size alone, so it is batch-invariant at any tolerance
    how = {"rtol": 1e-4, "atol": 1e-4} if REGISTRY[name].adaptive else {"steps": 6}
    full = diffkit.sample(den, noise, sampler=name, seed=100, progress=False, **how)
    # a batch of 16 and of 1 round the network's float64 sums differently (by the CPU's vector width); an adaptive
    # step controller magnifies that round-off (h ~ E^(-1/k)): ~2e-9 on an AVX-512 machine
    close = 1e-7 if REGISTRY[name].adaptive else 1e-9
    for i in (0, 5, 15):
        one = diffkit.sample(den, noise[i:i + 1], sampler=name, seed=100 + i, progress=False, **how)
        torch.testing.assert_close(one[0], full[i], rtol=close, atol=close)


@pytest.mark.parametrize("order", [2, 3])
def test_deis_computes_every_step_coefficient_before_the_first_model_call(schedule, mixture, monkeypatch, order):
    # the weights and the first-order coefficients depend only on the grid: no per-step solve or
    # coefficient in the sampling loop (they are made once per grid, before the first call)
    deis_module = importlib.import_module("diffkit.samplers.deis")  # the package's name deis is the function
    made = []
    for name in ("exponential_adams_weights", "noise_step_coefficient"):
        real = getattr(deis_module, name)
        monkeypatch.setattr(deis_module, name, lambda *a, _real=real, **k: made.append(1) or _real(*a, **k))
    net = mixture.network(schedule)
    seen = []
    den = Denoiser(lambda x, t: seen.append(len(made)) or net(x, t), schedule)
    deis_module.deis(den, torch.randn(4, 3, dtype=F64), make_grid(schedule, 8, "logsnr", "zero"),
                     solver_order=order)
    assert len(seen) == 8 and len(made) >= 8 and seen == [len(made)] * 8


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_reduced_precision_model_output_stays_close(schedule, mixture, low):
    net = mixture.network(schedule)
    rounded = rounded_output(net, low)
    noise = torch.randn(32, 3, generator=torch.Generator().manual_seed(9))
    for name in FIXED:  # ode: tests/test_samplers_ode.py
        ref = diffkit.sample(Denoiser(net, schedule), noise, sampler=name, steps=10, seed=1, progress=False)
        out = diffkit.sample(Denoiser(rounded, schedule), noise, sampler=name, steps=10, seed=1, progress=False)
        assert torch.isfinite(out).all(), name
        err = (out - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()
        # A 10-step solver amplifies the output rounding u (bfloat16 2^-8, float16 2^-11) by a modest
        # factor, except noise-prediction singlestep solvers, whose differences of eps at large
        # steps multiply it by expm1(h)/r (the instability DPM-Solver++ was made to remove), and the
        # third-order SDE solver: its first x0 = (x - sigma eps)/alpha carry eps's rounding times
        # sigma/alpha ~ 160 into D1 and D2, which it weights more than the ODE solvers do (measured
        # 17 u in bfloat16, 3 of 32 samples off by 0.16-0.67; 4 u in float16; 0.35 u at 20 steps). iPNDM
        # applies the fixed-step AB4 weights (sum of |w| = 6.7) to eps at 10 Karras steps whose lengths
        # change by large ratios: 10.6 u in bfloat16, 12.2 u in float16 (0.6 / 1.4 u at 20 steps; plms 8.4 / 6.5 u).
        unit = 2.0 ** -8 if low is torch.bfloat16 else 2.0 ** -11
        factor = (80 if name in ("dpm-solver", "dpm-solver-2") else 24 if name in ("sde-dpm-solver++-3m", "ipndm")
                  else 12)
        assert err < factor * unit, f"{name}: relative RMS {err:.3g}"


@pytest.mark.parametrize("name", [name for name in REGISTRY if not REGISTRY[name].adaptive])
def test_nfe_matches_registry(schedule, mixture, name):
    info = REGISTRY[name]
    den = Denoiser(mixture.network(schedule), schedule)
    noise = torch.randn(2, 3, dtype=F64)
    finals = ["zero"] if name in ("ddpm", "ddim") else ["zero", "sigma_min"]
    for final in finals:
        spacing = info.default_spacing if final == "zero" else "logsnr"
        for steps in (1, 2, 3, 4, 7):
            if name == "lms" and steps == 1 and final == "sigma_min":
                continue
            if steps < info.min_steps and final == "zero":  # restart: the one-step grid holds one positive sigma~
                with pytest.raises(DiffkitError, match="or at least 2 steps$"):
                    diffkit.sample(den, noise, sampler=name, steps=steps, spacing=spacing, final=final, seed=0,
                                   progress=False)
                continue
            den.reset_nfe()
            diffkit.sample(den, noise, sampler=name, steps=steps, spacing=spacing, final=final, seed=0,
                           progress=False)
            assert den.nfe == info.nfe(steps, final), (name, final, steps)


def test_nfe_front_door_and_one_line_error(schedule, mixture):
    den = Denoiser(mixture.network(schedule), schedule)
    diffkit.sample(den, (2, 3), sampler="heun", nfe=9, seed=0, progress=False, dtype=F64)
    assert den.nfe == 9
    with pytest.raises(DiffkitError) as err:
        diffkit.sample(den, (2, 3), sampler="heun", nfe=8, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "nfe=8" in msg and "7, 9" in msg


def test_diffusers_option_names_choose_the_grid(schedule, mixture):
    den = Denoiser(mixture.network(schedule), schedule)
    noise = torch.randn(3, 3, dtype=F64)
    a = diffkit.sample(den, noise, sampler="dpm-solver++-2m", steps=8, use_karras_sigmas=True,
                       final_sigmas_type="sigma_min", progress=False)
    b = diffkit.sample(den, noise, sampler="dpm-solver++-2m", steps=8, spacing="karras", final="sigma_min",
                       progress=False)
    torch.testing.assert_close(a, b)


def test_a_sampler_spec_carries_its_grid(schedule, mixture):
    # "NAME@SPACING:FINAL" is the name with spacing= and final= (one parser for every front end)
    den = Denoiser(mixture.network(schedule), schedule)
    noise = torch.randn(3, 3, dtype=F64)
    a = diffkit.sample(den, noise, sampler="unipc@logsnr:zero", steps=6, progress=False)
    b = diffkit.sample(den, noise, sampler="unipc", steps=6, spacing="logsnr", final="zero", progress=False)
    torch.testing.assert_close(a, b)
    c = diffkit.sample(den, noise, sampler="unipc:zero", steps=6, spacing="logsnr", progress=False)
    torch.testing.assert_close(a, c)
    default = diffkit.sample(den, noise, sampler="unipc", steps=6, progress=False)
    assert (a - default).abs().max() > 1e-4  # the spec is not ignored
    # heun spends 2 calls a step; with the grid's end at sigma_min the last step is no longer Euler
    den.nfe = 0
    diffkit.sample(den, noise, sampler="heun:sigma_min", nfe=8, progress=False)
    assert den.nfe == 8
    for kwargs in ({"sampler": "unipc:zero", "final": "sigma_min"}, {"sampler": "unipc@logsnr", "spacing": "karras"},
                   {"sampler": "unipc", "final": "zero", "final_sigmas_type": "sigma_min"},
                   {"sampler": "unipc", "spacing": "logsnr", "use_karras_sigmas": True}):
        with pytest.raises(DiffkitError) as err:
            diffkit.sample(den, noise, steps=6, progress=False, **kwargs)
        assert "contradicts" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DiffkitError, match="spacing='nope'"):
        diffkit.sample(den, noise, sampler="unipc@nope", steps=6, progress=False)


def test_samplers_reach_the_exact_distribution(schedule, mixture):
    # with enough steps every sampler's samples match the mixture's mean and covariance
    noise = torch.randn(1500, 3, generator=torch.Generator().manual_seed(10), dtype=F64)
    den = Denoiser(mixture.network(schedule), schedule)
    for name in ("unipc-3", "sde-dpm-solver++-2m"):
        x = diffkit.sample(den, noise, sampler=name, steps=25, seed=0, progress=False)
        assert (x.mean(0) - mixture.mean()).abs().max() < 0.1, name
        assert (torch.cov(x.T) - mixture.cov()).abs().max() < 0.15, name


def test_samplers_command_lists_every_sampler(capsys):
    import argparse
    from diffkit.commands import samplers as command
    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["samplers"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    for name, info in REGISTRY.items():
        assert name in out
    assert "calls/step" in out and "NFE" in out


def test_logsnr_skip_grid_jumps_then_is_uniform_in_log_snr(schedule):
    grid = make_grid(schedule, 8, "logsnr_skip")
    assert grid[0].item() == schedule.num_timesteps - 1 and grid[-1].item() == -1 and grid[-2].item() == 0
    assert schedule.karras_sigma(grid[1]).item() == pytest.approx(20.0, rel=1e-9)
    lam = schedule.log_snr(grid[1:-1])
    np.testing.assert_allclose(torch.diff(lam).numpy(), torch.diff(lam)[0].item(), rtol=1e-8)
    # no room for the jump (sigma at t_max below skip_sigma): plain logsnr
    torch.testing.assert_close(make_grid(schedule, 8, "logsnr_skip", skip_sigma=1e4), make_grid(schedule, 8, "logsnr"))
