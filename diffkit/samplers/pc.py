"""Predictor-corrector sampling for VP models (Song et al. 2021, "Score-Based Generative Modeling
through Stochastic Differential Equations", ICLR 2021, Sec. 4.2; Appendix G, Algorithm 3 (PC sampling, VP SDE) and
Algorithm 5 (Langevin corrector, VP SDE);
the authors' reference code, score_sde ``sampling.py``: ReverseDiffusionPredictor,
AncestralSamplingPredictor, LangevinCorrector). The SDE/ODE view is seed 004's.

The score is s(x, t) = -eps_hat(x, t)/sigma_t. On a grid step t -> s with the respaced beta
b = 1 - abar_t/abar_s (DDPM on a subsequence, as :func:`diffkit.samplers.ddpm`; b = beta_t on the
full schedule), and a = 1 - b:

    corrector (Langevin, Algorithm 5, ``corrector_steps`` = M times at t):
        g = s(x, t), z ~ N(0, I), e = 2 a (snr ||z|| / ||g||)^2,  x <- x + e g + sqrt(2 e) z
    predictor from t to s:
        reverse diffusion (Algorithm 3):  x <- (2 - sqrt(a)) x + b s(x, t) + sqrt(b) z
        ancestral (score_sde's AncestralSamplingPredictor = DDPM with sigma^2 = beta):
                                          x <- posterior mean at x0_hat + sqrt(b) z

As in the reference code, each step corrects at t and then predicts from t (Algorithm 3 predicts,
then corrects at the new time: the same chain, except that the code's starts with a corrector at
grid[0] and ends with the predictor, which a step into clean data needs: the network is not
evaluated at t = -1), no noise is added on the step to clean
data (its ``noise_removal``), and NFE = steps * (1 + corrector_steps). One difference: the norms
||z||, ||g|| are per sample, as Algorithm 5 writes them; the reference code averages them over the
batch, which would make a sample depend on the rest of its batch.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .. import diffusion
from ..errors import check_choice, check_range
from ..noise import randn_like
from .common import GridScalars, report, steps

PREDICTORS = ("reverse_diffusion", "ancestral")


def _per_sample_norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.dim() - 1)))


def langevin_step(x: torch.Tensor, score: torch.Tensor, snr: float, a: float, generator) -> torch.Tensor:
    """One Langevin corrector step (Algorithm 5) with per-sample step size
    e = 2 a (snr ||z|| / ||score||)^2 (e = 0 where the score is 0)."""
    z = randn_like(x, generator)
    g_norm = _per_sample_norm(score)
    e = torch.where(g_norm > 0, 2.0 * a * (snr * _per_sample_norm(z) / g_norm) ** 2, torch.zeros_like(g_norm))
    return x + e * score + (2.0 * e).sqrt() * z


def pc(denoiser, x: torch.Tensor, grid: torch.Tensor, *, snr: float = 0.16, corrector_steps: int = 1,
       predictor: str = "reverse_diffusion", cond: Optional[dict] = None, generator=None, callback=None,
       progress: bool = False) -> torch.Tensor:
    """Predictor-corrector sampling (module docstring); ``snr`` is the corrector's signal-to-noise
    ratio r (default 0.16, score_sde's ``sampling.snr`` in every config), ``corrector_steps`` M its
    Langevin steps per grid step (0: the predictor alone)."""
    check_range("snr", snr, 0.0, None)
    check_range("corrector_steps", corrector_steps, 0, None, integer=True)
    check_choice("predictor", predictor, PREDICTORS)
    cond = cond or {}
    c = GridScalars.of(denoiser.schedule, grid)
    for i in steps(grid, progress, "pc"):
        t, s = c.t[i], c.t[i + 1]
        a = (c.alpha[i] / c.alpha[i + 1]) ** 2  # abar_t / abar_s = 1 - b
        b, sigma_t = 1.0 - a, c.sigma[i]
        for _ in range(corrector_steps):
            x = langevin_step(x, denoiser(x, t, **cond).eps * (-1.0 / sigma_t), snr, a, generator)
        pred = denoiser(x, t, **cond)
        if predictor == "reverse_diffusion":
            x = torch.add(x * (2.0 - math.sqrt(a)), pred.eps, alpha=-b / sigma_t)
        else:
            x = diffusion.p_mean_variance(denoiser.schedule, x, pred.x0, grid[i], grid[i + 1])[0]
        if s >= 0:
            x = torch.add(x, randn_like(x, generator), alpha=math.sqrt(b))
        report(callback, i, t, s, x, pred.x0)
    return x
