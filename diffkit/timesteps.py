"""Time grids for samplers: every spacing in one place.

A grid is a float64 CPU tensor of ``steps + 1`` strictly decreasing times (training-timestep
units, see :mod:`diffkit.schedule`). Step i of a sampler goes from ``grid[i]`` to ``grid[i+1]``;
the network is evaluated at times >= 0 only, and the last entry is the target: ``-1`` (clean data,
``final="zero"``) or ``0`` (the schedule's smallest noise level, ``final="sigma_min"``; diffusers'
``final_sigmas_type``).

Spacings (``T`` = training steps, ``S`` = sampling steps):
    linear      DDIM (Song et al. 2021, Sec. 5): tau_i = floor(c i), i = 0..S-1, c = T/S
    quadratic   DDIM: tau_i = floor(c i^2), c = 0.8 T/(S-1)^2 (as in the DDIM reference code)
    leading     diffusers: tau_i = i * (T // S) + offset
    trailing    diffusers / Lin et al. 2024 Table 2: round(T - i T/S) - 1, i = 0..S-1
    linspace    diffusers: round(linspace(0, T-1, S+1)) without its 0
    karras      EDM sigmas (Karras et al. 2022, eq. 5) with rho = 7, mapped to t
    logsnr      uniform in log-SNR lambda (DPM-Solver 'logSNR' skip type)
    logsnr_skip   t_max, then uniform in lambda from sigma~ = ``skip_sigma`` (default 20) to t = 0: the
                first step is one long first-order jump across the high-noise range where the data
                prediction barely changes (for data of unit scale, x0_hat moves by O(1/sigma~^2)),
                so no step is spent there; with ``skip_sigma`` >= the schedule's largest sigma~
                it is ``logsnr``
    time_uniform  uniform in continuous t (DPM-Solver 'time_uniform')
    custom      any user list of evaluation times
The first five give integer evaluation times (what the network was trained on); the last three
give continuous times, which the schedule's interpolation supports.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from .errors import DiffkitError, check_choice, check_range
from .schedule import NoiseSchedule

SPACINGS = ("linear", "quadratic", "leading", "trailing", "linspace", "karras", "logsnr", "logsnr_skip",
            "time_uniform")
SKIP_SIGMA = 20.0
FINALS = ("zero", "sigma_min")
_F64 = torch.float64


def make_grid(schedule: NoiseSchedule, steps: int, spacing: str = "linear", final: str = "zero", *,
              rho: float = 7.0, offset: int = 0, t_max: Optional[float] = None,
              custom: Optional[Sequence[float]] = None, skip_sigma: float = SKIP_SIGMA) -> torch.Tensor:
    """The ``steps + 1`` decreasing grid times for ``steps`` sampler steps (see module doc)."""
    T = schedule.num_timesteps
    check_choice("final", final, FINALS)
    t_end = -1.0 if final == "zero" else 0.0
    if custom is not None:
        evaluated = torch.as_tensor(list(custom), dtype=_F64).flatten()
        return _finish(evaluated, t_end, T, "custom")
    check_choice("spacing", spacing, SPACINGS)
    check_range("steps", steps, 1, T, integer=True)
    S = steps
    if spacing == "linear":
        evaluated = torch.floor(torch.arange(S, dtype=_F64) * (T / S)).flip(0)
    elif spacing == "quadratic":
        if S == 1:
            evaluated = torch.zeros(1, dtype=_F64)
        else:
            c = 0.8 * T / (S - 1) ** 2
            evaluated = torch.floor(c * torch.arange(S, dtype=_F64) ** 2).flip(0)
    elif spacing == "leading":
        check_range("offset", offset, 0, T - 1, integer=True)
        evaluated = (torch.arange(S, dtype=_F64) * (T // S) + offset).flip(0)
    elif spacing == "trailing":
        evaluated = torch.round(torch.arange(T, 0, -T / S, dtype=_F64))[:S] - 1
    elif spacing == "linspace":
        evaluated = torch.round(torch.linspace(0, T - 1, S + 1, dtype=_F64)).flip(0)[:-1]
    else:  # continuous spacings between t_max and t = 0
        top = float(T - 1 if t_max is None else t_max)
        n = S + 1 if final == "sigma_min" else S
        if spacing == "karras":
            smax, smin = schedule.karras_sigma(top).item(), schedule.karras_sigma(0.0).item()
            ts = schedule.t_from_karras_sigma(karras_sigmas(n, smin, smax, rho))
        elif spacing == "logsnr":
            lam = torch.linspace(schedule.log_snr(top).item(), schedule.log_snr(0.0).item(), n, dtype=_F64)
            ts = schedule.t_from_log_snr(lam)
        elif spacing == "logsnr_skip":
            check_range("skip_sigma", skip_sigma, 0.0, None, low_inclusive=False)
            lam_top, lam_end = schedule.log_snr(top).item(), schedule.log_snr(0.0).item()
            lam_skip = -math.log(skip_sigma)
            if n < 3 or not lam_top < lam_skip < lam_end:
                lam = torch.linspace(lam_top, lam_end, n, dtype=_F64)
            else:
                lam = torch.cat([torch.tensor([lam_top], dtype=_F64),
                                 torch.linspace(lam_skip, lam_end, n - 1, dtype=_F64)])
            ts = schedule.t_from_log_snr(lam)
        else:
            ts = torch.linspace(top, 0.0, n, dtype=_F64)
        ts[0], ts[-1] = top, 0.0  # remove round-off of the inverse maps at the ends
        if final == "sigma_min":
            return _finish(ts[:-1], 0.0, T, spacing)
        return _finish(ts, -1.0, T, spacing)
    return _finish(evaluated, t_end, T, spacing)


def _finish(evaluated: torch.Tensor, t_end: float, T: int, name: str) -> torch.Tensor:
    """Validate the evaluation times and append the final target."""
    if evaluated.numel() < 1:
        raise DiffkitError(f"{name} spacing produced no evaluation times")
    if (evaluated < 0).any() or (evaluated > T - 1).any():
        raise DiffkitError(f"{name} timesteps must lie in [0, {T - 1}]; got {evaluated.tolist()[:6]}")
    if (evaluated[1:] >= evaluated[:-1]).any():
        raise DiffkitError(f"{name} spacing with {evaluated.numel()} steps repeats a timestep "
                           f"({evaluated.tolist()[:6]}...); use fewer steps or another spacing")
    if evaluated[-1] <= t_end:
        raise DiffkitError(f"{name} spacing ends at t={evaluated[-1].item():g}, which leaves no step to "
                           f"final={'sigma_min' if t_end == 0 else 'zero'}; use final='zero'")
    return torch.cat([evaluated, torch.tensor([t_end], dtype=_F64)])


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM's noise levels (Karras et al. 2022, eq. 5): n values from sigma_max down to sigma_min."""
    ramp = torch.linspace(0, 1, n, dtype=_F64)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


__all__ = ["SPACINGS", "FINALS", "make_grid", "karras_sigmas"]
