"""The hand-over between two denoisers on one time grid: diffusers' ``denoising_end`` / ``denoising_start``.

SD-XL's "ensemble of expert denoisers" (Podell et al. 2023, Sec. 2.5, after eDiff-I, Balaji et al. 2022,
Sec. 4) runs the base model over the high-noise part of a sampler's time grid and a refiner over the rest,
handing over the noisy latents at one grid time. diffusers 0.42 cuts the grid at the discrete timestep

    c(f) = int(round(T - f T))                       (T = num_train_timesteps, f in (0, 1))

``StableDiffusionXLPipeline(denoising_end=f)`` runs the timesteps t >= c(f) and returns the state after
them; ``StableDiffusionXLImg2ImgPipeline(denoising_start=f)`` starts at the first timestep t < c(f) with
the given latents as that step's state (not noised; ``strength`` ignored). With the same grid and
f, the two parts are the whole grid, and the state handed over is the state at the first grid time below
c(f). On a diffkit grid (its times, then the final target) that is :func:`grid_until` and
:func:`grid_from`.
"""
from __future__ import annotations

import math

import torch

from .errors import DiffkitError


def check_fraction(name: str, value) -> float:
    """``denoising_end`` / ``denoising_start``: a number strictly between 0 and 1 (the pipelines ignore
    anything else; diffkit refuses it in one line)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 < value < 1:
        raise DiffkitError(f"{name}={value!r} is not allowed; give a fraction of the denoising strictly between "
                           f"0 and 1 (e.g. 0.8: the base runs the first 80%)")
    return float(value)


def cutoff(fraction: float, num_timesteps: int) -> int:
    """The pipelines' ``discrete_timestep_cutoff`` c(f) = int(round(T - f T))."""
    return int(round(num_timesteps - fraction * num_timesteps))


def grid_until(grid: torch.Tensor, denoising_end: float, num_timesteps: int) -> torch.Tensor:
    """The part of ``grid`` (times, then the final target) that ``denoising_end`` runs: its times t >=
    c(f), each a step, ending at the next grid time (the state handed over); the whole grid if every
    time is >= c(f). Fewer than one step is a one-line error."""
    f = check_fraction("denoising_end", denoising_end)
    kept = int((grid[:-1] >= cutoff(f, num_timesteps)).sum())
    if kept < 1:
        raise DiffkitError(f"denoising_end={denoising_end} runs no step: its cut int(round({num_timesteps} - "
                           f"{f:g} * {num_timesteps})) = {cutoff(f, num_timesteps)} is above the grid's first time "
                           f"{float(grid[0]):g}; allowed: a larger denoising_end (or more steps)")
    return grid[:kept + 1]


def grid_from(grid: torch.Tensor, denoising_start: float, num_timesteps: int) -> torch.Tensor:
    """The part of ``grid`` that ``denoising_start`` runs: from its first time t < c(f) to the end (the
    pipeline's ``get_timesteps(denoising_start=...)``). No such time is a one-line error."""
    f = check_fraction("denoising_start", denoising_start)
    kept = int((grid[:-1] < cutoff(f, num_timesteps)).sum())
    if kept < 1:
        raise DiffkitError(f"denoising_start={denoising_start} runs no step: no grid time is below its cut "
                           f"int(round({num_timesteps} - {f:g} * {num_timesteps})) = {cutoff(f, num_timesteps)} "
                           f"(the grid's last time is {float(grid[-2]):g}); allowed: a smaller denoising_start "
                           f"(or more steps)")
    return grid[len(grid) - 1 - kept:]


__all__ = ["check_fraction", "cutoff", "grid_until", "grid_from"]
