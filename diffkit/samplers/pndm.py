"""Pseudo numerical methods (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on
Manifolds", PNDM; seed 004): classical solvers applied to the *gradient part* eps while the
*transfer part* phi is DDIM's exact step, plus FON, classical RK4 on the ODE in x and t.

    phi(x_t, e, t, s) = (alpha_s/alpha_t) x_t - (alpha_s sigma_t/alpha_t - sigma_s) e       (PNDM eq. 9;
                                                                                  DDIM eq. 12, eta = 0)

    PRK  (eq. 12, 4 calls): e1 = eps(x, t); x1 = phi(x, e1, t, m); e2 = eps(x1, m);
                            x2 = phi(x, e2, t, m); e3 = eps(x2, m); x3 = phi(x, e3, t, s);
                            e4 = eps(x3, s); x_s = phi(x, (e1 + 2 e2 + 2 e3 + e4)/6, t, s),
                            with m = (t + s)/2 the midpoint time (t + delta/2 in the paper).
    PLMS (eq. 13, 1 call):  e' = (55 e_t - 59 e_{t-d} + 37 e_{t-2d} - 9 e_{t-3d})/24; x_s = phi(x, e', t, s).
    S-PNDM (Sec. 3.3/App.): pseudo improved Euler on the first step (e' = (e1 + eps(phi(x, e1, t, s), s))/2),
                            then the 2nd-order pseudo linear multistep e' = (3 e_t - e_{t-d})/2.
    F-PNDM (Algorithm 2):   3 PRK steps, then PLMS.

The multistep formulas use the paper's uniform-step coefficients on any grid (as PNDM and diffusers
do). The history after a PRK step holds its first stage e1 = eps(x_t, t), as in the reference code.
A step into clean data (t = -1) evaluates only at its start time (a PRK / improved-Euler / RK4
stage there would need the network at t = -1): on such grids F-PNDM and S-PNDM run at most
``steps - 1`` warm-up steps and FON's last step is the transfer phi with eps(x_t, t).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import check_range
from .common import GridScalars, report, steps

# PLMS weights by order (Adams-Bashforth on the uniform grid; PNDM eq. 13 for order 4).
PLMS_COEFFICIENTS = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12),
                     4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


class _Transfer:
    """phi between any two times, with alpha/sigma at the grid times and the grid midpoints
    computed once per grid."""

    def __init__(self, schedule, grid):
        grid = torch.as_tensor(grid, dtype=torch.float64)
        self.g = GridScalars.of(schedule, grid)
        self.mid = GridScalars.of(schedule, 0.5 * (grid[:-1] + grid[1:]))

    def at(self, i: int, where: str):
        """(t, alpha, sigma) of grid time i (``grid``) or of the midpoint of step i (``mid``)."""
        s = self.g if where == "grid" else self.mid
        return s.t[i], s.alpha[i], s.sigma[i]

    @staticmethod
    def phi(x, e, a_t, s_t, a_s, s_s):
        return torch.add(x * (a_s / a_t), e, alpha=-(a_s * s_t / a_t - s_s))


def transfer(schedule, x: torch.Tensor, eps: torch.Tensor, t: float, s: float) -> torch.Tensor:
    """phi(x_t, eps, t, s): the DDIM (eta = 0) step from t to s given eps (PNDM eq. 9)."""
    tt = torch.tensor([t, s], dtype=torch.float64)
    (a_t, a_s), (s_t, s_s) = schedule.alpha(tt).tolist(), schedule.sigma(tt).tolist()
    return _Transfer.phi(x, eps, a_t, s_t, a_s, s_s)


def _prk_step(denoiser, x, tr: _Transfer, i: int, cond: dict):
    """One PRK step from grid[i] to grid[i+1] (PNDM eq. 12); returns (x_s, e1, x0 at t)."""
    t, a_t, s_t = tr.at(i, "grid")
    m, a_m, s_m = tr.at(i, "mid")
    s, a_s, s_s = tr.at(i + 1, "grid")
    phi = _Transfer.phi
    p1 = denoiser(x, t, **cond)
    e1 = p1.eps
    e2 = denoiser(phi(x, e1, a_t, s_t, a_m, s_m), m, **cond).eps
    e3 = denoiser(phi(x, e2, a_t, s_t, a_m, s_m), m, **cond).eps
    e4 = denoiser(phi(x, e3, a_t, s_t, a_s, s_s), s, **cond).eps
    e_prime = (e1 + 2.0 * e2 + 2.0 * e3 + e4) / 6.0
    return phi(x, e_prime, a_t, s_t, a_s, s_s), e1, p1.x0


def _multistep(denoiser, x, grid, *, warmup: str, max_order: int, cond, callback, progress, name):
    """Shared loop: ``warmup`` is 'prk' (F-PNDM), 'euler2' (S-PNDM's improved Euler) or 'lower'
    (lower-order PLMS while the history fills)."""
    cond = cond or {}
    tr = _Transfer(denoiser.schedule, grid)
    n = len(grid) - 1
    history: list = []  # eps at earlier grid times, newest first
    phi = _Transfer.phi
    room = n - 1 if tr.g.t[-1] < 0 else n  # steps whose end time the network can be evaluated at
    warm_steps = {"prk": min(3, room), "euler2": min(1, room), "lower": 0}[warmup]
    for i in steps(grid, progress, name):
        t, a_t, s_t = tr.at(i, "grid")
        s, a_s, s_s = tr.at(i + 1, "grid")
        if i < warm_steps and warmup == "prk":
            x, e1, x0 = _prk_step(denoiser, x, tr, i, cond)
            history.insert(0, e1)
        elif i < warm_steps:  # pseudo improved Euler (S-PNDM's first step)
            p = denoiser(x, t, **cond)
            e_end = denoiser(phi(x, p.eps, a_t, s_t, a_s, s_s), s, **cond).eps
            x, x0 = phi(x, 0.5 * (p.eps + e_end), a_t, s_t, a_s, s_s), (p.x0 if callback is not None else None)
            history.insert(0, p.eps)
        else:
            p = denoiser(x, t, **cond)
            history.insert(0, p.eps)
            order = min(max_order, len(history))
            # phi(x, sum_k w_k e_k) = (alpha_s/alpha_t) x - c sum_k w_k e_k, summed in place of e'
            c = a_s * s_t / a_t - s_s
            x_new = x * (a_s / a_t)
            for w, e in zip(PLMS_COEFFICIENTS[order], history):
                x_new = torch.add(x_new, e, alpha=-c * w)
            x, x0 = x_new, (p.x0 if callback is not None else None)
        del history[max_order:]
        report(callback, i, t, s, x, x0)
    return x


def pndm(denoiser, x: torch.Tensor, grid: torch.Tensor, *, cond: Optional[dict] = None, generator=None,
         callback=None, progress: bool = False) -> torch.Tensor:
    """F-PNDM (PNDM Algorithm 2): PRK for the first 3 steps (at most steps - 1 on a grid ending at
    clean data), then 4th-order PLMS."""
    return _multistep(denoiser, x, grid, warmup="prk", max_order=4, cond=cond, callback=callback,
                      progress=progress, name="f-pndm")


def plms(denoiser, x: torch.Tensor, grid: torch.Tensor, *, order: int = 4, cond: Optional[dict] = None,
         generator=None, callback=None, progress: bool = False) -> torch.Tensor:
    """PLMS (PNDM eq. 13) with a lower-order warm-up instead of PRK (one call per step; like
    diffusers' PNDMScheduler(skip_prk_steps=True), but with Adams-Bashforth orders 1, 2, 3 while
    the history fills rather than a repeated first evaluation)."""
    check_range("order", order, 1, 4, integer=True)
    return _multistep(denoiser, x, grid, warmup="lower", max_order=order, cond=cond, callback=callback,
                      progress=progress, name="plms")


def s_pndm(denoiser, x: torch.Tensor, grid: torch.Tensor, *, cond: Optional[dict] = None, generator=None,
           callback=None, progress: bool = False) -> torch.Tensor:
    """S-PNDM: pseudo improved Euler on the first step (2 calls), then 2nd-order pseudo linear
    multistep e' = (3 e_t - e_{t-d})/2 (PNDM Sec. 3.3)."""
    return _multistep(denoiser, x, grid, warmup="euler2", max_order=2, cond=cond, callback=callback,
                      progress=progress, name="s-pndm")


def pndm_skip_prk(denoiser, x: torch.Tensor, grid: torch.Tensor, *, cond: Optional[dict] = None, generator=None,
                  callback=None, progress: bool = False) -> torch.Tensor:
    """diffusers' ``PNDMScheduler(skip_prk_steps=True)``, Stable Diffusion's default scheduler:
    S-PNDM's pseudo improved Euler on the first step (2 calls), then PLMS of orders 2, 3 and 4
    (PNDM eq. 13) with e_1 = eps(x_T, T) in the history."""
    return _multistep(denoiser, x, grid, warmup="euler2", max_order=4, cond=cond, callback=callback,
                      progress=progress, name="pndm-skip-prk")


def _log_alpha_slope(schedule, times: torch.Tensor, side: str) -> list:
    """d log(alpha_t)/dt of the piecewise-linear log alpha at each time, on the segment below it
    (``side="below"``: [ceil(t) - 1, ceil(t)]) or above it (``"above"``: [floor(t), floor(t) + 1]);
    the two differ only at integer times, where a step starting (ending) there uses below (above)."""
    T = schedule.num_timesteps
    upper = torch.ceil(times) if side == "below" else torch.floor(times) + 1
    upper = upper.clamp(0, T - 1)
    slope = schedule.log_alpha(upper) - schedule.log_alpha(upper - 1)
    # a zero-terminal-SNR schedule's last interval has alpha linear, log alpha = c + log(T - 1 - t)
    to_zero = torch.isinf(slope)
    return torch.where(to_zero, -1.0 / (T - 1 - times.to(torch.float64)), slope).tolist()


def fon(denoiser, x: torch.Tensor, grid: torch.Tensor, *, cond: Optional[dict] = None, generator=None,
        callback=None, progress: bool = False) -> torch.Tensor:
    """FON: classical 4th-order Runge-Kutta on the probability-flow ODE in x and t (PNDM Sec. 4's
    baseline; the ODE of the score-SDE paper, Song, Sohl-Dickstein et al. 2021, eq. 13). With log
    alpha piecewise linear in t,

        dx/dt = (d log alpha/dt) (x - eps(x, t)/sigma_t)        (= -beta(t)/2 (x - eps/sigma) in DDPM terms),

    RK4 with stages at t, the midpoint and s. The ODE is singular at t = -1 (sigma = 0), so a step
    into clean data is the transfer phi with eps(x_t, t)."""
    cond = cond or {}
    schedule = denoiser.schedule
    grid = torch.as_tensor(grid, dtype=torch.float64)
    tr = _Transfer(schedule, grid)
    slope_start = _log_alpha_slope(schedule, grid, "below")
    slope_end = _log_alpha_slope(schedule, grid, "above")
    slope_mid = _log_alpha_slope(schedule, 0.5 * (grid[:-1] + grid[1:]), "below")

    def f(xx, t, sigma, slope):
        p = denoiser(xx, t, **cond)
        return slope * (xx - p.eps / sigma), p

    for i in steps(grid, progress, "fon"):
        t, a_t, s_t = tr.at(i, "grid")
        m, _, s_m = tr.at(i, "mid")
        s, a_s, s_s = tr.at(i + 1, "grid")
        if s < 0:
            p = denoiser(x, t, **cond)
            x, x0 = _Transfer.phi(x, p.eps, a_t, s_t, a_s, s_s), p.x0
        else:
            dt = s - t
            k1, p = f(x, t, s_t, slope_start[i])
            k2, _ = f(x + (0.5 * dt) * k1, m, s_m, slope_mid[i])
            k3, _ = f(x + (0.5 * dt) * k2, m, s_m, slope_mid[i])
            k4, _ = f(x + dt * k3, s, s_s, slope_end[i + 1])
            x, x0 = x + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4), p.x0
        report(callback, i, t, s, x, x0)
    return x
