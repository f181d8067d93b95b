"""Multistep consistency sampling (Song et al. 2023, "Consistency Models", Alg. 1; the step of
diffusers' ``LCMScheduler``, Luo et al. 2023)."""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..noise import randn_like
from .common import GridScalars, report, steps


def consistency(denoiser, x: torch.Tensor, grid: torch.Tensor, *, cond: Optional[dict] = None, generator=None,
                callback=None, progress: bool = False, handover: bool = False) -> torch.Tensor:
    """x0 = f(x_T, T); then for each later evaluation time t of the grid x = alpha_t x0 + sigma_t z
    (fresh noise) and x0 = f(x, t); returns the last x0 (CM Alg. 1). One network call per step;
    one step is one-step generation. f is the denoiser's x0 answer: a
    :class:`~diffkit.consistency.ConsistencyDenoiser` (what :func:`diffkit.loading.load_denoiser` gives
    for a consistency checkpoint); on a plain diffusion model this is the x0-prediction-and-renoise
    chain. The grid's last entry, the target, adds no noise: the sample is f at the last evaluation
    time (as diffusers' ``LCMScheduler``, whose last step returns its ``denoised``). ``handover``: the grid was cut
    by ``denoising_end`` (:func:`diffkit.sample`), so its last entry is the next model's first time, not the target,
    and the last step renoises to it too, as ``LCMScheduler.step`` does on every step but the full grid's last (the
    state ``StableDiffusionXLPipeline(denoising_end=f)`` hands its refiner).

    A denoiser whose f lands on the schedule's smallest noise level rather than on clean data declares that
    level's Karras sigma eps as ``consistency_boundary_sigma`` (OpenAI's consistency models: sigma_min, CM Sec. 3 /
    App. C); x0 is then the trajectory's point at eps and the renoising adds only the rest of the noise,
    x = alpha_t (x0 + sqrt(s_t^2 - eps^2) z) with s_t = sigma_t / alpha_t (CM Alg. 1, line 5;
    ``CMStochasticIterativeScheduler.step``)."""
    cond = cond or {}
    c = GridScalars.of(denoiser.schedule, grid)
    eps = getattr(denoiser, "consistency_boundary_sigma", None)
    noise = c.sigma if not eps else [math.sqrt(max(s * s - (a * eps) ** 2, 0.0)) for a, s in zip(c.alpha, c.sigma)]
    last = len(grid) - 1 if handover else len(grid) - 2
    for i in steps(grid, progress, "consistency"):
        x0 = denoiser(x, c.t[i], **cond).x0
        x = torch.add(x0 * c.alpha[i + 1], randn_like(x, generator), alpha=noise[i + 1]) if i < last else x0
        report(callback, i, c.t[i], c.t[i + 1], x, x0)
    return x
