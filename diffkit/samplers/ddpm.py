"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2; seed 001), on the full schedule or any
subsequence (respaced betas beta_{t|s} = 1 - abar_t/abar_s, Nichol & Dhariwal 2021 Sec. 4)."""
from __future__ import annotations

from typing import Optional

import torch

from .. import diffusion
from ..denoiser import model_variance_type
from ..errors import check_choice
from ..noise import randn_like
from .common import report, steps


def ddpm(denoiser, x: torch.Tensor, grid: torch.Tensor, *, variance_type: Optional[str] = None,
         cond: Optional[dict] = None, generator=None, callback=None, progress: bool = False) -> torch.Tensor:
    """x_s = mu_theta(x_t, t) + sigma z for each grid step t -> s (Algorithm 2, line 4).

    mu_theta is the posterior mean of q(x_s | x_t, x_0) at the predicted x_0 (DDPM eq. 7, 11);
    sigma^2 is beta-tilde (``fixed_small``), beta (``fixed_large``; DDIM Table 1's sigma-hat on a
    subsequence) or learned (``learned_range``, Improved DDPM eq. 15); by default the model's own
    (:func:`diffkit.denoiser.model_variance_type`: learned, the ``fixed_variance`` of a
    ``loss="vlb"`` checkpoint, else ``fixed_small``). No noise is added on the step to clean data (s = -1).
    """
    cond = cond or {}
    schedule = denoiser.schedule
    if variance_type is None:
        variance_type = model_variance_type(denoiser)
    check_choice("variance_type", variance_type, diffusion.VARIANCE_TYPES)
    if variance_type == "learned_range" and not getattr(denoiser, "learned_variance", False):
        diffusion._no_variance()  # before any network call; ReverseSteps raises it for a missing output
    plan = diffusion.ReverseSteps(schedule, grid, variance_type)  # the schedule's part, once per grid
    for i in steps(grid, progress, "ddpm"):
        t, s = grid[i], grid[i + 1]
        pred = denoiser(x, t, **cond)
        var_values = pred.var_values if variance_type == "learned_range" else None
        mean, log_var = plan.mean_log_variance(i, x, pred.x0, var_values)
        x = mean if plan.to_clean[i] else mean + torch.exp(0.5 * log_var) * randn_like(x, generator)
        report(callback, i, t, s, x, pred.x0)
    return x
