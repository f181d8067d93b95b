"""Strategic Stochastic Sampling of Trajectory Consistency Distillation (Zheng et al. 2024, "Trajectory
Consistency Distillation", its SSS sampler; the step of diffusers' ``TCDScheduler``).

Each step t -> t' (the next grid time) goes first deterministically to an intermediate time
s = (1 - gamma) t' along the model's trajectory, x_s = alpha_s x0_hat + sigma_s eps_hat (the
first-order exponential-integrator / DDIM step, TCD's trajectory consistency function), then forward
in noise from s to t' with fresh noise: x_t' ~ q(x_t' | x_s) = N((alpha_t'/alpha_s) x_s,
(sigma_t'^2 - (alpha_t' sigma_s / alpha_s)^2) I) (for VP schedules 1 - abar_t'/abar_s, as TCDScheduler).
gamma = 0 is deterministic DDIM on the grid; gamma = 1 predicts clean data and renoises to t': multistep
consistency sampling (CM Alg. 1, diffkit's ``consistency`` sampler, bit for bit on a grid ending at
clean data)."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ..errors import check_range
from ..noise import randn_like
from .common import GridScalars, report, steps

TCD_GAMMA = 0.3  # TCDScheduler.step's default eta (the paper's gamma)


def tcd_times(grid, gamma: float) -> list:
    """The intermediate time s of each step grid[i] -> grid[i+1]: s = (1 - gamma) t' with time counted
    from the grid's target grid[-1] (TCD's time 0, the data end: diffkit's t = -1 for ``final='zero'``,
    t = 0 for ``'sigma_min'``, where TCDScheduler's last step goes). On a grid of training timesteps
    (all integers) s is rounded down to one as ``TCDScheduler.step`` rounds ``floor((1 - eta) * t')``,
    its product in float32 (which lands on the exact decimal product where float64 falls just below an
    integer: (1 - 0.3) * 90 is 62.99... in float64, 63 in float32; tested); on a continuous grid s is the
    product itself."""
    check_range("gamma", gamma, 0.0, 1.0)
    times = [float(t) for t in torch.as_tensor(grid, dtype=torch.float64).tolist()]
    end = times[-1]
    integer = all(t.is_integer() for t in times)
    out = []
    for t_next in times[1:]:
        span = t_next - end
        out.append(end + (math.floor(np.float32(1 - gamma) * np.float32(span)) if integer else (1 - gamma) * span))
    return out


def tcd(denoiser, x: torch.Tensor, grid: torch.Tensor, *, cond: Optional[dict] = None, generator=None,
        callback=None, progress: bool = False, gamma: float = TCD_GAMMA) -> torch.Tensor:
    """TCD's strategic stochastic sampling with stochasticity ``gamma`` in [0, 1] (diffusers' ``eta``,
    default 0.3): for each step x_s = alpha_s x0 + sigma_s eps at s = :func:`tcd_times`, then (except on
    the last step, and only for gamma > 0: gamma = 0 draws no noise) x = (alpha_t'/alpha_s) x_s +
    sqrt(sigma_t'^2 - (alpha_t' sigma_s/alpha_s)^2) z. One network call per step. On a consistency
    model (an LCM folder, a :class:`~diffkit.consistency.ConsistencyDenoiser`) x0 is f and eps its pair;
    ``tcd:sigma_min`` (the grid ending at t = 0) is ``TCDScheduler`` step for step, whose sample is
    x at t = 0 (noise sqrt(1 - abar_0)); the default ``final='zero'`` ends at clean data."""
    cond = cond or {}
    c = GridScalars.of(denoiser.schedule, grid)
    s = GridScalars.of(denoiser.schedule, tcd_times(grid, gamma))
    last = len(grid) - 2
    for i in steps(grid, progress, "tcd"):
        pred = denoiser(x, c.t[i], **cond)
        x = torch.add(pred.x0 * s.alpha[i], pred.eps, alpha=s.sigma[i])  # x_s
        if gamma > 0 and i < last:
            ratio = c.alpha[i + 1] / s.alpha[i]
            noise = math.sqrt(max(c.sigma[i + 1] ** 2 - (ratio * s.sigma[i]) ** 2, 0.0))
            x = torch.add(x * ratio, randn_like(x, generator), alpha=noise)
        report(callback, i, c.t[i], c.t[i + 1], x, pred.x0)
    return x
