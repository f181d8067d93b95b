"""The adaptive probability-flow ODE sampler: an adaptive Runge-Kutta solve of the VP model's
probability-flow ODE (Song et al. 2021, "Score-Based Generative Modeling through SDEs", Sec. 4.3
and App. D.2, whose ``ode_sampler`` calls scipy's RK45 at rtol = atol = 1e-5; PNDM's "PF" baseline).

In half the log-SNR lambda = log(alpha/sigma) (DPM-Solver, Lu et al. 2022, eq. 2.4 with
d log alpha / d lambda = sigma^2, the smoothest of the usual variables) the ODE reads

    dx/dlambda = sigma^2 x - sigma eps_hat(x, t(lambda)) = alpha (x0_hat - alpha x),

with alpha^2 = sigmoid(2 lambda), sigma^2 = sigmoid(-2 lambda). It is solved by Dormand-Prince 5(4)
(``method="RK45"``, scipy's and score_sde's default; or Bogacki-Shampine 3(2), "RK23") from grid[0]
through every grid time with sigma > 0 (the solver restarts at each, where the callback reports);
a grid that ends at clean data (t = -1, lambda = +inf) ends with the x0 prediction at the time
before, the step every other sampler takes there (DDIM / Euler to sigma = 0).

Each sample is its own ODE with its own lambda, step size and error control, so sample i does not
depend on the batch; every stage is one network call on the whole batch, each row at its own time
(a row that has reached the end is evaluated there by a step of 0 and its result unused, so the
network and any wrapper with per-sample state always see every row), and the NFE is the largest
per-sample count.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from ..errors import DiffkitError, check_choice, check_range
from ..denoiser import Prediction
from .common import steps


class Tableau(NamedTuple):
    """An explicit embedded Runge-Kutta pair with the first-same-as-last property: nodes ``c``,
    stages ``a`` (row i: the weights of k_0..k_{i-1}; the last row is the solution's weights, so the
    last stage is f at the new point, the next step's first), the solution's weights ``b`` and the
    embedded ones ``b_hat``, whose difference estimates the local error of the lower order ``order``."""
    name: str
    c: tuple
    a: tuple
    b: tuple
    b_hat: tuple
    order: int


# Dormand & Prince 1980; Hairer, Norsett & Wanner, Solving ODEs I, Sec. II.5, Table 5.2 (DOPRI5)
RK45 = Tableau(name="RK45", c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
               a=((),
                  (1 / 5,),
                  (3 / 40, 9 / 40),
                  (44 / 45, -56 / 15, 32 / 9),
                  (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
                  (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
                  (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)),
               b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
               b_hat=(5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40), order=4)
# Bogacki & Shampine 1989, "A 3(2) pair of Runge-Kutta formulas", Appl. Math. Lett. 2(4), 321-325
RK23 = Tableau(name="RK23", c=(0.0, 1 / 2, 3 / 4, 1.0), a=((), (1 / 2,), (0.0, 3 / 4), (2 / 9, 1 / 3, 4 / 9)),
               b=(2 / 9, 1 / 3, 4 / 9, 0.0), b_hat=(7 / 24, 1 / 4, 1 / 3, 1 / 8), order=2)
METHODS = {tab.name: tab for tab in (RK45, RK23)}  # scipy's names; its DOP853 and implicit methods are not offered


def rk_step(tab: Tableau, f, lam: torch.Tensor, y: torch.Tensor, h: torch.Tensor, k0: torch.Tensor):
    """One step of the pair ``tab`` for every row, from (lam, y) with f(lam, y) = k0 by per-row steps h
    (``lam``, ``h``: (B,); ``y``, ``k0``: (B, D)): (y1, f(lam + h, y1), the local error estimate
    h sum (b_i - b_hat_i) k_i). One call of ``f`` per stage after the first, each on all the rows."""
    hh = h.to(y)[:, None]
    ks = [k0]
    for i in range(1, len(tab.c)):
        yi = y + hh * sum(a * k for a, k in zip(tab.a[i], ks) if a != 0.0)
        ks.append(f(lam + tab.c[i] * h, yi))  # the last stage is at (lam + h, y1): the next step's first
    return yi, ks[-1], hh * sum((b - bh) * k for b, bh, k in zip(tab.b, tab.b_hat, ks))


def rms(v: torch.Tensor) -> torch.Tensor:
    """Per-row root mean square of a (B, D) tensor, on the CPU."""
    return v.pow(2).mean(dim=1).sqrt().cpu()


def _first_step(f, lam0, y0, k0, span: float, rtol: float, atol: float, order: int) -> torch.Tensor:
    """Per-row initial step (Hairer, Norsett & Wanner I, Sec. II.4, as scipy's ``select_initial_step``):
    h0 = 0.01 ||y0|| / ||f0||, one explicit Euler trial for ||f'||, h = min(100 h0, h1, the interval)."""
    scale = atol + y0.abs() * rtol
    d0, d1 = rms(y0 / scale), rms(k0 / scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1).clamp(max=span)
    d2 = rms((f(lam0 + h0, y0 + h0.to(y0)[:, None] * k0) - k0) / scale) / h0
    small = (d1 <= 1e-15) & (d2 <= 1e-15)
    h1 = torch.where(small, (h0 * 1e-3).clamp(min=1e-6), (0.01 / torch.maximum(d1, d2)) ** (1 / (order + 1)))
    return torch.minimum(torch.minimum(100 * h0, h1), torch.full_like(h0, span))


def check_step(name: str, active: torch.Tensor, lam: torch.Tensor, h: torch.Tensor) -> None:
    """A one-line error when an active row's step ``h`` is below the float spacing at its ``lam``
    (or not a number): the solve cannot meet its tolerance there."""
    bad = active & ~(h >= 10 * (torch.nextafter(lam, torch.full_like(lam, math.inf)) - lam))
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise DiffkitError(f"the ODE solve of sample {i} failed ({name}: Required step size is less than "
                           f"spacing between numbers at lambda={float(lam[i]):.6g}); loosen rtol/atol")


def accept_rows(accept: torch.Tensor, lam: torch.Tensor, h: torch.Tensor, lam1: float, *pairs) -> torch.Tensor:
    """The per-sample bookkeeping of an accepted step: rows where ``accept`` move to lam + h (to lam1
    exactly when h was the rest of the interval) and take each (state, new state) pair's new rows
    (in place); returns the new lam."""
    rows = accept.to(pairs[0][0].device)
    for state, new in pairs:
        state[rows] = new[rows]
    return torch.where(accept, torch.where(h == lam1 - lam, torch.full_like(lam, lam1), lam + h), lam)


def _solve(tab: Tableau, f, y: torch.Tensor, lam0: float, lam1: float, rtol: float, atol: float) -> torch.Tensor:
    """Every row from lam0 to lam1 (lam1 > lam0) with its own step-size control (Hairer, Norsett &
    Wanner I, Sec. II.4: err = ||(y1 - y1_hat) / (atol + rtol max(|y0|, |y1|))||_rms per row, h_new =
    h min(10, max(0.2, 0.9 err^(-1/(q+1)))) for the embedded order q, no growth right after a
    rejection: scipy's RK45 / RK23)."""
    y, lam = y.clone(), torch.full((y.shape[0],), lam0, dtype=torch.float64)
    k = f(lam, y)
    h = _first_step(f, lam, y, k, lam1 - lam0, rtol, atol, tab.order)
    done, rejected = torch.zeros_like(lam, dtype=torch.bool), torch.zeros_like(lam, dtype=torch.bool)
    while not done.all():
        # every row is evaluated (a finished one at its end, by a step of 0, its result unused): the
        # network and any wrapper always see the whole batch, whatever per-sample state they hold
        active = ~done
        ha = torch.where(active, torch.minimum(h, lam1 - lam), torch.zeros_like(h))
        check_step(tab.name, active, lam, ha)
        y1, k1, err = rk_step(tab, f, lam, y, ha, k)
        norm = rms(err / (atol + rtol * torch.maximum(y.abs(), y1.abs())))
        accept = (norm < 1) & active
        grow = (0.9 * norm.pow(-1 / (tab.order + 1))).nan_to_num(nan=0.2, posinf=10.0)
        factor = torch.where(accept, grow.clamp(max=10.0), grow.clamp(min=0.2))
        factor = torch.where(accept & rejected, factor.clamp(max=1.0), factor)
        lam = accept_rows(accept, lam, ha, lam1, (y, y1), (k, k1))
        done |= accept & (lam == lam1)
        rejected = torch.where(active, ~accept, rejected)
        h = torch.where(active, ha * factor, h)
    return y


def solve_per_sample(denoiser, x: torch.Tensor, grid: torch.Tensor, cond: Optional[dict], callback,
                     progress: bool, desc: str, solve) -> torch.Tensor:
    """What the adaptive samplers share: the state in float64 (on the CPU for mps), (B, D); from
    grid[0] through every grid time with sigma > 0, where ``solve(model, y, lam0, lam1)`` restarts
    and the callback reports (``{"step", "t", "s", "x", "x0", "nfe"}``: x0 predicted at t, network
    calls so far); a grid that ends at clean data ends with the x0 prediction at the time before.
    ``model(ys, t)`` is one network call on all rows, row i at time t[i] (clamped to the interval:
    round-off of the inverse map), returning eps and x0 as float64 (B, D) tensors."""
    cond = cond or {}
    schedule = denoiser.schedule
    times = torch.as_tensor(grid, dtype=torch.float64)
    lam = schedule.log_snr(times).tolist()
    if not math.isfinite(lam[0]):
        raise DiffkitError(f"the ODE cannot start at t={float(times[0]):g}, where alpha_bar = 0 (lambda = -inf); "
                           f"start below it")
    shape, batch = x.shape, x.shape[0]
    work = torch.device("cpu") if x.device.type == "mps" else x.device  # mps has no float64
    y = x.detach().to(device=work, dtype=torch.float64).reshape(batch, -1)
    calls, first_x0, span = [0], [None], [0.0, 0.0]

    def model(ys: torch.Tensor, t: torch.Tensor) -> Prediction:
        pred = denoiser(ys.reshape(-1, *shape[1:]).to(device=x.device, dtype=x.dtype), t.clamp(*span), **cond)
        calls[0] += 1
        if first_x0[0] is None:  # the first call of a solve: every row at its start
            first_x0[0] = pred.x0

        def rows(v):
            return v.detach().to(device=work, dtype=torch.float64).reshape(len(ys), -1)
        return Prediction(eps=rows(pred.eps), x0=rows(pred.x0))

    for i in steps(times, progress, desc):
        if math.isinf(lam[i + 1]):  # to clean data: the x0 prediction at grid[i]
            x0 = denoiser(y.reshape(shape).to(device=x.device, dtype=x.dtype), float(times[i]), **cond).x0
            calls[0] += 1
            y = x0.detach().to(device=work, dtype=torch.float64).reshape(batch, -1)
        else:
            first_x0[0], span[:] = None, [float(times[i + 1]), float(times[i])]
            y = solve(model, y, lam[i], lam[i + 1])
            x0 = first_x0[0]
        if callback is not None:
            callback({"step": i, "t": float(times[i]), "s": float(times[i + 1]),
                      "x": y.reshape(shape).to(device=x.device, dtype=x.dtype), "x0": x0, "nfe": calls[0]})
    return y.reshape(shape).to(device=x.device, dtype=x.dtype)


def ode(denoiser, x: torch.Tensor, grid: torch.Tensor, *, rtol: float = 1e-5, atol: float = 1e-5,
        method: str = "RK45", cond: Optional[dict] = None, generator=None, callback=None,
        progress: bool = False) -> torch.Tensor:
    """The probability-flow ODE (Song et al. 2021, eq. 13; in lambda: Lu et al. 2022, eq. 2.4) from
    grid[0] to grid[-1] by the embedded pair ``method`` (RK45: Dormand-Prince 5(4); RK23) at ``rtol``,
    ``atol``, per sample; the grid's inner times are where the solver restarts and the callback
    reports (``{"step", "t", "s", "x", "x0", "nfe"}``: x0 predicted at t, network calls so far). The
    state is float64 (on the CPU for mps); the network sees x's dtype. ``generator`` is unused (the
    sampler is deterministic)."""
    check_range("rtol", rtol, 0.0, None, low_inclusive=False)
    check_range("atol", atol, 0.0, None, low_inclusive=False)
    check_choice("method", method, METHODS)
    schedule = denoiser.schedule

    def solve(model, y, lam0, lam1):
        def f(lams: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
            """dx/dlambda = sigma^2 x - sigma eps_hat for every row, each at its own lambda."""
            eps = model(ys, schedule.t_from_log_snr(lams)).eps
            sigma = torch.sigmoid(-2.0 * lams).sqrt().to(ys)[:, None]
            return sigma * sigma * ys - sigma * eps
        return _solve(METHODS[method], f, y, lam0, lam1, rtol, atol)
    return solve_per_sample(denoiser, x, grid, cond, callback, progress, "ode", solve)
