"""Adaptive-step DPM-Solver (Lu et al. 2022, "DPM-Solver", Sec. 3.4 and App. C, Algorithm 4:
DPM-Solver-12 and DPM-Solver-23; the authors' ``dpm_solver_adaptive``, k-diffusion's
``sample_dpm_adaptive``).

Each step from lambda_s to lambda_t = lambda_s + h takes a singlestep DPM-Solver-k (k = 2: r1 = 1/2;
k = 3: r1, r2 = 1/3, 2/3) and the lower-order DPM-Solver-(k-1) from the same evaluations
(:func:`~diffkit.samplers.dpm_solver.singlestep_chunk` with ``lower``), then

    delta = max(atol, rtol max(|x_lower|, |x_prev|)),  E = ||(x_higher - x_lower) / delta||_2 / sqrt(D),
    E <= 1: accept x_higher (x_prev = x_lower);   h <- min(theta h E^(-1/k), lambda_end - lambda_s),

from h = h_init, with x_prev the start's state before the first accepted step, until
|t_s - t_end| <= t_err (Algorithm 4; the authors' defaults rtol 0.05, atol 0.0078, h_init 0.05,
theta 0.9, k = 3). The authors take E as the largest over the batch; here, as in the ``ode``
sampler (:func:`~diffkit.samplers.ode.solve_per_sample`), every sample has its own lambda, h,
x_prev and E, so sample i does not depend on the batch, and every network call still sees the
whole batch (a finished row is evaluated at its end, its result unused). Each try costs k calls
(the evaluation at the step's start is made again after a rejection, as in the reference code);
the NFE is the largest per-sample count.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import check_choice, check_range
from .common import GridScalars
from .dpm_solver import ALGORITHM_TYPES, singlestep_chunk
from .ode import accept_rows, check_step, rms, solve_per_sample


def _adaptive_solve(schedule, model, y: torch.Tensor, lam0: float, lam1: float, order: int, data: bool,
                    rtol: float, atol: float, h_init: float, theta: float, t_err: float) -> torch.Tensor:
    """Every row of y from lam0 to lam1 by Algorithm 4 with its own step control (module docstring)."""
    batch = y.shape[0]
    y, x_prev = y.clone(), y.clone()
    lam = torch.full((batch,), lam0, dtype=torch.float64)
    h = torch.full((batch,), h_init, dtype=torch.float64)
    t_end = float(schedule.t_from_log_snr(torch.tensor(lam1, dtype=torch.float64)))
    nodes = (0.0, 0.5, 1.0) if order == 2 else (0.0, 1 / 3, 2 / 3, 1.0)
    done = torch.zeros(batch, dtype=torch.bool)
    while not done.all():
        active = ~done
        step = torch.where(active, torch.minimum(h, lam1 - lam), torch.ones_like(h))  # finished: any step
        check_step(f"DPM-Solver-{order - 1}{order}", active, lam, step)
        lams = [lam + r * step for r in nodes]
        held = done.to(y.device)[:, None]

        def at_rows(ys, t):  # a finished row is evaluated at its end (its state, lam1)
            return model(torch.where(held, y, ys), torch.where(done, t_end, t))
        c = GridScalars(t=[schedule.t_from_log_snr(v) for v in lams],
                        alpha=[torch.sigmoid(2.0 * v).sqrt().to(y)[:, None] for v in lams],
                        sigma=[torch.sigmoid(-2.0 * v).sqrt().to(y)[:, None] for v in lams],
                        log_snr=[v.to(y)[:, None] for v in lams])
        x_high, _, x_low = singlestep_chunk(at_rows, y, c, 0, order, {}, data, lower=True)
        delta = torch.clamp(rtol * torch.maximum(x_low.abs(), x_prev.abs()), min=atol)
        error = rms((x_high - x_low) / delta)
        accept = (error <= 1) & active
        lam = accept_rows(accept, lam, step, lam1, (y, x_high), (x_prev, x_low))
        done |= accept & ((lam == lam1) | ((schedule.t_from_log_snr(lam) - t_end).abs() <= t_err))
        h = torch.where(active, torch.minimum(theta * step * error.pow(-1.0 / order), lam1 - lam), h)
    return y


def dpm_adaptive(denoiser, x: torch.Tensor, grid: torch.Tensor, *, order: int = 3, rtol: float = 0.05,
                 atol: float = 0.0078, h_init: float = 0.05, theta: float = 0.9, t_err: float = 1e-5,
                 algorithm_type: str = "dpmsolver", cond: Optional[dict] = None, generator=None, callback=None,
                 progress: bool = False) -> torch.Tensor:
    """DPM-Solver-12 (``order=2``) or DPM-Solver-23 (``order=3``, default) with adaptive steps in
    lambda, per sample (Lu et al. 2022, Algorithm 4; see the module docstring), from grid[0] through
    the grid's times (where it restarts and the callback reports, as ``ode``) to grid[-1];
    ``algorithm_type="dpmsolver++"`` takes the data-prediction steps instead (DPM-Solver++). ``h_init``
    is in lambda, ``t_err`` in training steps. ``generator`` is unused (deterministic)."""
    check_range("order", order, 2, 3, integer=True)
    for name, value in (("rtol", rtol), ("atol", atol), ("h_init", h_init)):
        check_range(name, value, 0.0, None, low_inclusive=False)
    check_range("theta", theta, 0.0, 1.0, low_inclusive=False)
    check_range("t_err", t_err, 0.0, None)
    check_choice("algorithm_type", algorithm_type, ALGORITHM_TYPES[:2])
    schedule, data = denoiser.schedule, algorithm_type == "dpmsolver++"

    def solve(model, y, lam0, lam1):
        # the first h is h_init unless the interval is shorter (the reference would step past its end)
        return _adaptive_solve(schedule, model, y, lam0, lam1, order, data, rtol, atol, h_init, theta, t_err)
    return solve_per_sample(denoiser, x, grid, cond, callback, progress, "dpm-adaptive", solve)
