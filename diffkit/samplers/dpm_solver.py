"""DPM-Solver (Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model
Sampling in Around 10 Steps") and DPM-Solver++ (Lu et al. 2022b, "DPM-Solver++: Fast Solver for
Guided Sampling of Diffusion Probabilistic Models").

Both solve the probability-flow ODE written in log-SNR ``lambda = log(alpha/sigma)`` with the
linear part integrated exactly (an exponential integrator):

    noise prediction (DPM-Solver eq. 3.4):  x_s = (alpha_s/alpha_t) x_t - alpha_s int_{l_t}^{l_s} e^{-l} eps(l) dl
    data prediction  (DPM-Solver++ eq. 8):  x_s = (sigma_s/sigma_t) x_t + sigma_s int_{l_t}^{l_s} e^{l} x0(l) dl

with ``h = lambda_s - lambda_t`` and the phi-functions ``phi_1(h) h = expm1(h)`` etc. The integrand
is approximated by a polynomial in lambda from earlier evaluations (multistep) or from extra
evaluations inside the step (singlestep). Options use diffusers' names where the idea is the
same: ``solver_order``, ``algorithm_type`` (``dpmsolver``, ``dpmsolver++``, ``sde-dpmsolver++``),
``solver_type`` (``midpoint``, ``heun``), ``lower_order_final``. diffusers' ``final_sigmas_type``
and ``use_karras_sigmas`` are grid choices (``final`` and ``spacing="karras"`` in
:func:`diffkit.sample`). Thresholding is a Denoiser wrapper (``diffkit.sample(thresholding=...)``),
so it acts on every x0 these solvers see.

A step into clean data (lambda_s = +inf) is always first order: the last x0 prediction
(the integrand's polynomial cannot be extrapolated to lambda = inf).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from ..errors import DiffkitError, check_choice, check_range
from ..noise import randn_like
from .common import GridScalars, expm1, model_output, multistep_orders, noise_step_coefficient, report, steps

ALGORITHM_TYPES = ("dpmsolver", "dpmsolver++", "sde-dpmsolver++")
SOLVER_TYPES = ("midpoint", "heun")


# ------------------------------------------------------------------ multistep
def dpm_solver_multistep(denoiser, x: torch.Tensor, grid: torch.Tensor, *, solver_order: int = 2,
                         algorithm_type: str = "dpmsolver++", solver_type: str = "midpoint",
                         lower_order_final: bool = True, cond: Optional[dict] = None, generator=None,
                         callback=None, progress: bool = False, noise=None) -> torch.Tensor:
    """Multistep DPM-Solver / DPM-Solver++ of order 1-3 (one model call per step).

    Data prediction, ``dpmsolver++`` (DPM-Solver++ Algorithm 2, eq. 8-10), with r_0 = h_0/h,
    D1 = (x0_t - x0_prev)/r_0:
        2M midpoint: x_s = (sigma_s/sigma_t) x - alpha_s phi D0 - 0.5 alpha_s phi D1,  phi = expm1(-h)
        2M heun:     x_s = (sigma_s/sigma_t) x - alpha_s phi D0 + alpha_s (phi/h + 1) D1
        3M:          ... + alpha_s (phi/h + 1) D1 - alpha_s ((phi + h)/h^2 - 1/2) D2
    (D1, D2 the first/second divided differences in lambda, as in the reference implementation).
    Noise prediction, ``dpmsolver`` (DPM-Solver Sec. 3.3 multistep, reference code): the same with
    (alpha, sigma) swapped, phi = expm1(h) and eps in place of x0.
    ``sde-dpmsolver++`` (DPM-Solver++ Sec. 5 SDE variant, diffusers 'sde-dpmsolver++'; 3M is
    k-diffusion's ``sample_dpmpp_3m_sde``, eta = 1), with phi_2 = 1 - (1 - e^{-2h})/(2h):
        2M midpoint: x_s = (sigma_s/sigma_t) e^{-h} x + alpha_s (1 - e^{-2h}) (D0 + 0.5 D1)
                           + sigma_s sqrt(1 - e^{-2h}) z
        2M heun, 3M: ... + alpha_s phi_2 D1 - alpha_s (phi_2/(2h) - 1/2) D2 + sigma_s sqrt(1 - e^{-2h}) z
    (diffusers' third-order 'sde-dpmsolver++' writes + alpha_s (-(e^{-2h} - 1 + 2h)/(2h)^2 - 1/2) D2, which
    differs by alpha_s D2, an O(h^2) term per step: docs/samplers.md).
    The first steps use lower orders (warm-up); with ``lower_order_final`` the step order never
    exceeds the number of remaining steps, at every step count (diffusers' DPMSolverMultistep does
    so only below 15 steps; docs/samplers.md).
    ``noise``: ``noise(i, mean, std) -> z`` gives step i's z of the SDE variant (mean: x_s without it) instead
    of a draw from ``generator`` (LEDITS++'s recorded noise maps, :mod:`diffkit.interop.ledits_pp`).
    """
    check_choice("algorithm_type", algorithm_type, ALGORITHM_TYPES)
    check_choice("solver_type", solver_type, SOLVER_TYPES)
    check_range("solver_order", solver_order, 1, 3, integer=True)
    cond = cond or {}
    data = algorithm_type != "dpmsolver"
    sde = algorithm_type == "sde-dpmsolver++"
    c = GridScalars.of(denoiser.schedule, grid)
    outputs: list = []  # model outputs at grid[i], grid[i-1], grid[i-2] (newest first)
    orders = multistep_orders(c.log_snr, solver_order, lower_order_final)
    for i in steps(grid, progress, algorithm_type):
        pred = denoiser(x, c.t[i], **cond)
        outputs.insert(0, pred.x0 if data else pred.eps)
        del outputs[3:]
        order = orders[i]
        lam_t, lam_s = c.log_snr[i], c.log_snr[i + 1]
        h = lam_s - lam_t
        a_t, s_t, a_s, s_s = c.alpha[i], c.sigma[i], c.alpha[i + 1], c.sigma[i + 1]
        d0 = outputs[0]
        d1 = d2 = None
        if order >= 2:
            r0 = (lam_t - c.log_snr[i - 1]) / h
            d1_0 = (outputs[0] - outputs[1]) * (1.0 / r0)
            d1 = d1_0
            if order == 3:
                r1 = (c.log_snr[i - 1] - c.log_snr[i - 2]) / h
                d1_1 = (outputs[1] - outputs[2]) / r1
                d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
        if sde:
            decay = math.exp(-h)
            one_m = -math.expm1(-2.0 * h)
            x = (s_s / s_t * decay) * x + (a_s * one_m) * d0
            phi_2 = 1.0 - one_m / (2.0 * h)  # k-diffusion's phi_2 at h_eta = 2h
            if d1 is not None:
                x = x + (0.5 * a_s * one_m if order == 2 and solver_type == "midpoint" else a_s * phi_2) * d1
            if d2 is not None:
                x = x - (a_s * (phi_2 / (2.0 * h) - 0.5)) * d2
            if s_s > 0:
                std = s_s * math.sqrt(one_m)
                x = x + std * (randn_like(x, generator) if noise is None else noise(i, x, std))
        elif data:
            phi = math.expm1(-h)
            x = torch.add(x * (s_s / s_t), d0, alpha=-(a_s * phi))
            if d1 is not None:
                if order == 2 and solver_type == "midpoint":
                    x = torch.add(x, d1, alpha=-(0.5 * a_s * phi))
                else:
                    x = torch.add(x, d1, alpha=a_s * (phi / h + 1.0))
            if d2 is not None:
                x = torch.add(x, d2, alpha=-(a_s * ((phi + h) / h ** 2 - 0.5)))
        else:
            phi_s = noise_step_coefficient(a_t, s_t, a_s, s_s, h)  # sigma_s expm1(h)
            x = torch.add(x * (a_s / a_t), d0, alpha=-phi_s)
            if d1 is not None:
                if order == 2 and solver_type == "midpoint":
                    x = torch.add(x, d1, alpha=-(0.5 * phi_s))
                else:
                    x = torch.add(x, d1, alpha=-(s_s * (math.expm1(h) / h - 1.0)))
            if d2 is not None:
                x = torch.add(x, d2, alpha=-(s_s * ((math.expm1(h) - h) / h ** 2 - 0.5)))
        report(callback, i, c.t[i], c.t[i + 1], x, pred.x0)
    return x


# ------------------------------------------------------------------ singlestep
def singlestep_orders(num_intervals: int, solver_order: int, clean_final: bool) -> list:
    """The order of each singlestep chunk for a grid of ``num_intervals`` intervals (= NFE).

    As many steps of ``solver_order`` as fit, the remainder as one lower-order step at the end.
    (Not the reference 'fast' split, ``get_orders_and_timesteps_for_singlestep_solver`` of Lu et
    al. 2022, Sec. 3.4, which takes NFE//3 + 1 equal outer steps ending in orders 2, 1: a split of
    a non-uniform fine grid; docs/samplers.md.) A chunk of order k spans k grid intervals,
    its inner grid times are its intermediate evaluation times. When the grid ends at clean data
    the last interval is its own first-order step (the chunk polynomials cannot reach lambda = inf).
    """
    n = num_intervals - 1 if clean_final else num_intervals
    orders = [solver_order] * (n // solver_order) + ([n % solver_order] if n % solver_order else [])
    return orders + ([1] if clean_final else [])


def dpm_solver_singlestep(denoiser, x: torch.Tensor, grid: torch.Tensor, *, solver_order: int = 3,
                          algorithm_type: str = "dpmsolver", orders: Optional[Sequence[int]] = None,
                          cond: Optional[dict] = None, generator=None, callback=None,
                          progress: bool = False) -> torch.Tensor:
    """Singlestep DPM-Solver-1/2/3 (Lu et al. 2022, Algorithms 1-2, eq. 3.7-3.9) and DPM-Solver++
    2S/3S (Lu et al. 2022b, Algorithm 1). One model call per grid interval: a chunk of order k
    goes from grid[i] to grid[i+k], evaluating at grid[i+1], grid[i+2] (r_j = (lambda_{i+j} -
    lambda_i)/h; a logSNR-uniform grid gives the reference r1 = 1/2 and r1, r2 = 1/3, 2/3).

    Noise prediction (``dpmsolver``), with e0 = eps(x_t, t):
        DPM-Solver-1: x_s = (alpha_s/alpha_t) x_t - sigma_s expm1(h) e0            (eq. 3.7 = DDIM)
        DPM-Solver-2: u = (alpha_s1/alpha_t) x_t - sigma_s1 expm1(r1 h) e0
                      x_s = (alpha_s/alpha_t) x_t - sigma_s expm1(h) e0 - sigma_s/(2 r1) expm1(h) (eps(u, s1) - e0)
        DPM-Solver-3: Algorithm 2 (u1 at r1, u2 at r2 with the phi_2 correction, then x_s).
    Data prediction (``dpmsolver++``): the same with alpha <-> sigma, expm1(h) -> expm1(-h), x0 for eps.
    ``orders`` overrides the split of :func:`singlestep_orders` (its sum must be the interval count).
    """
    check_choice("algorithm_type", algorithm_type, ALGORITHM_TYPES[:2])
    check_range("solver_order", solver_order, 1, 3, integer=True)
    cond = cond or {}
    data = algorithm_type == "dpmsolver++"
    c = GridScalars.of(denoiser.schedule, grid)
    n = len(grid) - 1
    clean_final = math.isinf(c.log_snr[-1])
    orders = list(orders) if orders is not None else singlestep_orders(n, solver_order, clean_final)
    if (any(isinstance(k, bool) or k not in (1, 2, 3) for k in orders) or sum(orders) != n
            or (clean_final and orders[-1] != 1)):
        raise DiffkitError(f"orders={orders} must be 1, 2 or 3 each, sum to the grid's {n} intervals and "
                           "end with 1 when the grid ends at clean data")
    i = 0
    bar = iter(steps(torch.zeros(len(orders) + 1), progress, f"{algorithm_type}-singlestep"))
    for k in orders:
        next(bar)
        x_t = x
        x, m0 = singlestep_chunk(denoiser, x, c, i, k, cond, data)
        if callback is not None:  # the x0 prediction at t, whichever the solver works with
            report(callback, i, c.t[i], c.t[i + k], x, m0 if data else (x_t - c.sigma[i] * m0) / c.alpha[i])
        i += k
    return x


def singlestep_chunk(denoiser, x, c: GridScalars, i: int, k: int, cond: dict, data: bool, m0=None,
                     lower: bool = False):
    """One singlestep update of order k from grid[i] to grid[i+k]; returns (x_s, model output at t),
    and with ``lower`` also the embedded order k-1 result from the same evaluations (DPM-Solver-1
    for k = 2, DPM-Solver-2 at r1 for k = 3: the pairs of DPM-Solver-12 / 23, Lu et al. 2022,
    Sec. 3.4 / App. C). ``m0``: the model output at (x, grid[i]) when the caller has it (the
    ancestral DPM-Solver++(2S)). ``c``'s entries may be per-sample tensors (dpm-adaptive)."""
    lam = c.log_snr
    h = lam[i + k] - lam[i]
    if m0 is None:
        m0 = model_output(denoiser, x, c.t[i], cond, data)

    def first_order(j, rh):
        """The order-1 transfer x_t -> grid[i+j] with lambda step rh, and its phi = expm1(+-rh)."""
        if data:
            phi = expm1(-rh)
            return (c.sigma[i + j] / c.sigma[i]) * x - (c.alpha[i + j] * phi) * m0, phi
        phi_s = noise_step_coefficient(c.alpha[i], c.sigma[i], c.alpha[i + j], c.sigma[i + j], rh)
        return (c.alpha[i + j] / c.alpha[i]) * x - phi_s * m0, phi_s

    # the scale of the correction terms: alpha_s (data) or sigma_s (noise), with the sign folded in
    def scale(j):
        return c.alpha[i + j] if data else -c.sigma[i + j]

    if k == 1:
        return (first_order(1, h)[0], m0) + ((x,) if lower else ())
    r1 = (lam[i + 1] - lam[i]) / h
    u1, _ = first_order(1, r1 * h)
    m1 = model_output(denoiser, u1, c.t[i + 1], cond, data)
    base, phi = first_order(k, h)
    # DPM-Solver-2 (Alg. 1) / DPM-Solver++(2S) to grid[i+k]: - 1/(2 r1) * (coefficient of m0) * (m1 - m0)
    second = base - ((c.alpha[i + k] * phi if data else phi) / (2.0 * r1)) * (m1 - m0) if k == 2 or lower else None
    if k == 2:
        return (second, m0) + ((base,) if lower else ())
    r2 = (lam[i + 2] - lam[i]) / h
    sgn = -1.0 if data else 1.0
    rh2 = r2 * h
    phi_22 = expm1(sgn * rh2) / (sgn * rh2) - 1.0  # expm1(+-r2 h)/(+-r2 h) - 1
    phi_2 = expm1(sgn * h) / (sgn * h) - 1.0
    u2, _ = first_order(2, rh2)
    u2 = u2 + (scale(2) * (r2 / r1) * phi_22 * sgn) * (m1 - m0)
    m2 = model_output(denoiser, u2, c.t[i + 2], cond, data)
    x_s = base + (scale(3) * phi_2 * sgn / r2) * (m2 - m0)
    return (x_s, m0) + ((second,) if lower else ())
