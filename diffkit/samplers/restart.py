"""Restart sampling (Xu, Deng, Liu et al. 2023, "Restart Sampling for Improving Generative Processes",
NeurIPS 2023, Alg. 1; the ``sample_restart`` of ComfyUI's k-diffusion and of A1111's webui).

The main backward ODE is Heun (EDM Alg. 2) in x~ = x/alpha and sigma~ (as :mod:`.karras`) over the
grid. At a restart interval [t_min, t_max] (sigma~ values) the state at t_min is sent back to t_max by
the exact forward process of the VE form,

    x~_{t_max} = x~_{t_min} + sqrt(t_max^2 - t_min^2) eps,   eps ~ N(0, I)      (paper Alg. 1, line 5)

(in x~, x = alpha x~ is the VP state: x~ = x0 + sigma~ eps is that form), then the ODE is solved back from
t_max to t_min on its own Karras grid of ``n`` Heun steps (EDM eq. 5, rho = 7), K times, and the main
grid goes on. Both the exact ODE and the exact forward noising keep the marginal at each sigma~, so
restarts cost nothing in the law; their noise contracts the errors accumulated before t_max
(discretisation and, mainly, a learned score's; paper Sec. 4, Theorem 2).

As in the authors' ``generate_restart.py``, t_min is the grid's sigma~ nearest the given t_min (the
restarts start where the main grid already is, so the main grid is the plain Heun grid) and t_max is used
exactly. ComfyUI / A1111 also snap t_max to the grid, skip a restart that cannot be placed without a word,
and shrink the main grid by restart_steps * K for their default; diffkit keeps the grid and raises a
one-line error. The authors' code adds churn (restart_gamma = 0.05, on [S_min, S_max]) inside the restart
steps, which Alg. 1 does not have; diffkit omits it.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from ..errors import DiffkitError, check_range
from ..noise import randn_like
from ..timesteps import karras_sigmas
from .common import report, steps
from .karras import _eps, _KarrasGrid, heun_step

# The default (restarts=None): one interval (t_min, t_max, K restarts, n Heun steps per restart). The interval
# [0.1, 2] and K = 1 are ComfyUI's / A1111's default restart_list {0.1: [restart_steps + 1, K, 2]} for 20-35
# steps (K = 2 from 36); n = 5 is fixed, in place of their restart_steps = 9 or steps // 4, so the cost,
# 2 K n = 10 calls, does not depend on the step count. n = 5 over [0.1, 2] was picked on the Gaussian
# mixtures of benchmarks/restart_fd.py: n = 3 leaves an error floor (the FD stops falling with NFE),
# n = 7 costs too much of a 21-call budget (docs/samplers.md, "Restart"). On a grid whose sigma~ range does
# not hold [0.1, 2] (a schedule with a small largest sigma~, an edit from a low noise level) the default
# interval is cut to the grid's range; given intervals are not. On a trained network (the demo model,
# BENCHMARKS.md "Restart on a trained network") it ties heun at NFE 41 / 81 and no tried alternative (the
# paper's CIFAR-10 0.06 -> 0.3, K = 2, n = 3; K = 2 over [0.1, 2]) did better, so it was kept.
RESTARTS = ((0.1, 2.0, 1, 5),)


def check_restarts(restarts) -> list:
    """``restarts`` as a list of checked (t_min, t_max, K, n): 0 < t_min < t_max finite, K >= 0 and n >= 1
    integers; a one-line DiffkitError naming the bad entry otherwise."""
    if isinstance(restarts, (str, bytes)) or not isinstance(restarts, Sequence):
        raise DiffkitError(f"restarts={restarts!r} is not allowed; give a sequence of (t_min, t_max, K, n) "
                           f"intervals, e.g. {RESTARTS}")
    checked = []
    for j, item in enumerate(restarts):
        if isinstance(item, (str, bytes)) or not isinstance(item, Sequence) or len(item) != 4:
            raise DiffkitError(f"restarts[{j}]={item!r} is not allowed; give (t_min, t_max, K, n), e.g. "
                               f"{RESTARTS[0]}")
        t_min = check_range(f"restarts[{j}] t_min", item[0], 0.0, None, low_inclusive=False)
        t_max = check_range(f"restarts[{j}] t_max", item[1], 0.0, None, low_inclusive=False)
        if not t_min < t_max:
            raise DiffkitError(f"restarts[{j}]: t_min={t_min!r} >= t_max={t_max!r}; a restart goes from t_min up to "
                               "a larger sigma~ t_max")
        times = check_range(f"restarts[{j}] K", item[2], 0, None, integer=True)
        n = check_range(f"restarts[{j}] n", item[3], 1, None, integer=True)
        checked.append((float(t_min), float(t_max), times, n))
    return checked


def restart_calls(restarts) -> int:
    """Network calls the restarts (None: the default) add to the main Heun grid's: 2 n K per interval
    (every restart step is a full Heun step, its end at sigma~ = t_min > 0)."""
    return sum(2 * n * times for _, _, times, n in check_restarts(RESTARTS if restarts is None else restarts))


def plan_restarts(sigmas: list, restarts) -> dict:
    """{grid index j: [(K, restart sigma~ grid from t_max down to sigmas[j]), ...]}: each interval's t_min
    snapped to the nearest positive grid sigma~ (first on a tie, as ``torch.argmin`` in the references).
    The interval must lie within the grid's positive sigma~, [min, sigmas[0]], and its snapped t_min
    below t_max; a one-line DiffkitError otherwise. ``restarts`` None: :data:`RESTARTS` cut to that range."""
    positive = [(j, s) for j, s in enumerate(sigmas) if s > 0.0]
    low, high = positive[-1][1], sigmas[0]

    def nearest(t_min):  # the grid index whose positive sigma~ is nearest t_min
        return min(positive, key=lambda p: abs(p[1] - t_min))[0]
    if restarts is None:
        t_min, t_max, times, n = RESTARTS[0]
        cut = (max(t_min, low), min(t_max, high), times, n)
        if not (cut[0] < cut[1] and sigmas[nearest(cut[0])] < cut[1]):
            if len(positive) == 1:  # a one-step grid to clean data: no interval fits, whatever its bounds
                where, fix = "it has one positive sigma~", "give restarts=() (plain Heun) or at least 2 steps"
            else:
                where = (f"it starts below t_min={t_min:g}" if high <= t_min else
                         f"its smallest positive sigma~ is above t_max={t_max:g}" if low >= t_max else
                         f"cut to [{cut[0]:.4g}, {cut[1]:.4g}], t_min snaps to the grid's sigma~ "
                         f"{sigmas[nearest(cut[0])]:.4g}, not below t_max")
                fix = "give restarts=() (plain Heun) or an interval (t_min, t_max, K, n) inside that range"
            raise DiffkitError(f"the default restart interval [{t_min:g}, {t_max:g}] has no room on this grid's "
                               f"sigma~ range [{low:.4g}, {high:.4g}] ({len(sigmas) - 1} steps): {where}; {fix}")
        restarts = [cut]
    plan: dict = {}
    for k, (t_min, t_max, times, n) in enumerate(check_restarts(restarts)):
        if not (low <= t_min and t_max <= high):
            raise DiffkitError(f"restarts[{k}]: the interval [{t_min:g}, {t_max:g}] is outside this grid's sigma~ "
                               f"range [{low:.4g}, {high:.4g}]; give an interval inside it")
        j = nearest(t_min)
        if not sigmas[j] < t_max:
            raise DiffkitError(f"restarts[{k}]: the grid's sigma~ nearest t_min={t_min:g} is {sigmas[j]:.4g}, "
                               f"not below t_max={t_max:g} ({len(sigmas) - 1} steps); use more steps or a "
                               f"wider interval")
        path = karras_sigmas(n + 1, sigmas[j], t_max).tolist()
        path[0], path[-1] = t_max, sigmas[j]  # the ends exactly (rho-th powers round)
        plan.setdefault(j, []).append((times, path))
    return plan


def restart(denoiser, x: torch.Tensor, grid: torch.Tensor, *, restarts=None, cond: Optional[dict] = None,
            generator=None, callback=None, progress: bool = False) -> torch.Tensor:
    """Restart sampling (paper Alg. 1): :func:`~diffkit.samplers.karras.heun` over ``grid``, and after the
    step that reaches an interval's t_min (:func:`plan_restarts`), K times: x~ += sqrt(t_max^2 - t_min^2) eps
    (fresh per-sample noise from ``generator``), then n Heun steps on Karras sigma~ from t_max back to t_min.
    ``restarts``: (t_min, t_max, K, n) intervals in sigma~; None: :data:`RESTARTS`, cut to the grid's sigma~
    range; ``()``: Heun.
    NFE: Heun's (2 steps - 1 to clean data) + 2 n K per interval. The callback reports the main grid's
    steps (after their restarts)."""
    cond = cond or {}
    kg = _KarrasGrid(denoiser.schedule, grid, x)
    plan = plan_restarts(kg.sigma, restarts)
    kg.know(s for runs in plan.values() for _, path in runs for s in path[:-1])
    on_grid = dict(zip(kg.sigma, kg.t))  # a restart's ends on grid sigma~ (its t_min; a default t_max cut to sigma~_0)
    x = x / kg.alpha[0]
    for i in steps(grid, progress, "restart"):
        d = _eps(kg, denoiser, x, kg.t[i], kg.sigma[i], cond)
        x_from = x
        x = heun_step(denoiser, kg, x, d, kg.sigma[i], kg.sigma[i + 1], kg.t[i + 1], cond)
        for times, path in plan.get(i + 1, ()):
            path_t = [on_grid.get(s, kg.time_of(s)) for s in path[:-1]] + [kg.t[i + 1]]
            for _ in range(times):
                x = torch.add(x, randn_like(x, generator), alpha=math.sqrt(path[0] ** 2 - path[-1] ** 2))  # Alg. 1 l. 5
                for j in range(len(path) - 1):
                    d_j = _eps(kg, denoiser, x, path_t[j], path[j], cond)
                    x = heun_step(denoiser, kg, x, d_j, path[j], path[j + 1], path_t[j + 1], cond)
        if callback is not None:
            report(callback, i, kg.t[i], kg.t[i + 1], kg.alpha[i + 1] * x, x_from - kg.sigma[i] * d)
    return kg.alpha[-1] * x
