"""DDIM (Song et al. 2021; seeds 000 and 003): the non-Markovian sampler with stochasticity eta,
and its deterministic inversion x_0 -> x_T."""
from __future__ import annotations

from typing import Optional, Union

import torch

from ..denoiser import reset_states
from ..errors import DiffkitError, check_range
from ..noise import randn_like
from .common import GridCoefficients, report, steps
from .ddpm import ddpm


def ddim_sigma(alpha_bar_t, alpha_bar_s, eta: float):
    """sigma_{t->s}(eta) = eta sqrt((1 - abar_s)/(1 - abar_t)) sqrt(1 - abar_t/abar_s) (DDIM eq. 16),
    i.e. sigma^2 = eta^2 beta-tilde. Seed 000 writes sigma_t^2 = eta beta-tilde (equal only at eta 0
    and 1); diffkit follows the paper, as seed 003 does (docs/samplers.md, "DDIM's eta")."""
    return eta * torch.sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t)) * torch.sqrt(1 - alpha_bar_t / alpha_bar_s)


def parse_eta(text) -> Union[float, str]:
    """A DDIM eta from user text: a finite number >= 0 or ``"sigma_hat"`` (DDIM Table 1's sigma-hat
    process; also ``sigma-hat`` / ``hat``)."""
    if isinstance(text, str) and text.strip().lower() in ("sigma_hat", "sigma-hat", "hat"):
        return "sigma_hat"
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise DiffkitError(f"eta={text!r} is not allowed; use a number >= 0 or 'sigma_hat'") from None
    if value != value or value == float("inf"):
        raise DiffkitError(f"eta={text!r} is not allowed; use a finite number >= 0 or 'sigma_hat'")
    return check_range("eta", value, 0.0, None)


def ddim(denoiser, x: torch.Tensor, grid: torch.Tensor, *, eta: Union[float, str] = 0.0,
         cond: Optional[dict] = None, generator=None, callback=None, progress: bool = False,
         noise=None) -> torch.Tensor:
    """DDIM eq. 12 for each grid step t -> s:

        x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat + sigma z.

    eta = 0 is deterministic (the probability-flow ODE discretised to first order); eta = 1 on the
    full schedule is DDPM with beta-tilde. ``eta="sigma_hat"`` is DDIM Table 1's sigma-hat
    process: DDPM ancestral steps with the larger variance sigma-hat^2 = 1 - abar_t/abar_s.
    ``noise``: ``noise(i, mean, sigma) -> z`` gives step i's z (mean: x_s without it) instead of a draw from
    ``generator`` (edit-friendly DDPM inversion's recorded noise maps, :mod:`diffkit.interop.ledits_pp`).
    """
    if isinstance(eta, bool):
        raise DiffkitError(f"eta={eta!r} is not allowed; use a finite number >= 0 or 'sigma_hat'")
    eta = parse_eta(eta)
    if eta == "sigma_hat":
        if noise is not None:
            raise DiffkitError("eta='sigma_hat' draws its own noise (DDPM's steps); give a number with noise=")
        return ddpm(denoiser, x, grid, variance_type="fixed_large", cond=cond, generator=generator,
                    callback=callback, progress=progress)
    cond = cond or {}
    c = GridCoefficients.of(denoiser.schedule, grid)
    # per-step coefficients once per grid, as Python floats (no tensor work on the step path)
    sigmas = (ddim_sigma(c.alpha_bar[:-1], c.alpha_bar[1:], eta) if eta > 0
              else torch.zeros(len(grid) - 1, dtype=torch.float64))
    room = 1 - c.alpha_bar[1:]  # the noise variance left at s: sigma_{t->s}^2 must not exceed it
    if eta > 1 and bool((sigmas ** 2 > room * (1 + 1e-9)).any()):
        a_t, a_s = c.alpha_bar[:-1][room > 0], c.alpha_bar[1:][room > 0]
        limit = float(torch.sqrt((1 - a_t) * a_s / (a_s - a_t)).min())
        raise DiffkitError(f"eta={eta:g} makes a step's noise larger than the noise its target time holds "
                           f"(sigma^2 > 1 - abar_s); allowed on this grid: eta <= {limit:.4g}")
    direction = torch.sqrt((1 - c.alpha_bar[1:] - sigmas ** 2).clamp(min=0)).tolist()
    sqrt_abar_s, sigmas, times = c.alpha_bar[1:].sqrt().tolist(), sigmas.tolist(), c.t.tolist()
    for i in steps(grid, progress, "ddim"):
        pred = denoiser(x, times[i], **cond)
        x = torch.add(pred.x0 * sqrt_abar_s[i], pred.eps, alpha=direction[i])
        if eta > 0 and times[i + 1] >= 0:
            z = randn_like(x, generator) if noise is None else noise(i, x, sigmas[i])
            x = torch.add(x, z, alpha=sigmas[i])
        report(callback, i, times[i], times[i + 1], x, pred.x0)
    return x


def ddim_invert(denoiser, x0: torch.Tensor, grid: torch.Tensor, *, fixed_point_iters: int = 1,
                cond: Optional[dict] = None, callback=None, progress: bool = False) -> torch.Tensor:
    """Deterministic DDIM inversion (eta = 0 run backwards): the grid's steps in reverse order,
    x_t = sqrt(abar_t) x0_hat + sqrt(1 - abar_t) eps_hat, with eps_hat evaluated at the step's
    destination time t on the current x and x0_hat from the current level (Song et al. 2021, DDIM
    eq. 13 run from t to t + dt, Sec. 5.4; ADM's ``ddim_reverse_sample``).
    Returns the latent x at grid[0] that DDIM with the same grid maps back to x0.

    That explicit step is only a first-order inverse of the DDIM step (which evaluates eps at
    the *destination*). ``fixed_point_iters`` > 0 solves the implicit equation
    x_dest = DDIM-step^{-1}(x_src; eps(x_dest, t_dest)) by fixed-point iteration (Pan et al. 2023,
    AIDI), each iteration costing one more network call per step; 0 is the classic inversion.
    The default 1 costs two network calls per step. Like :func:`diffkit.sample` it starts by resetting
    the state of stateful wrappers (:func:`~diffkit.denoiser.reset_states`: APG's momentum).
    """
    check_range("fixed_point_iters", fixed_point_iters, 0, None, integer=True)
    cond = cond or {}
    reset_states(denoiser)  # a new run, as in diffkit.sample (APG's momentum)
    up = torch.as_tensor(grid, dtype=torch.float64).flip(0)
    c = GridCoefficients.of(denoiser.schedule, up)
    x = x0
    for i in steps(up, progress, "ddim-invert"):
        a_src, s_src = c.alpha[i].to(x.dtype), c.sigma[i].to(x.dtype)
        a_dst, s_dst = c.alpha[i + 1].to(x.dtype), c.sigma[i + 1].to(x.dtype)
        x_dest = x
        for _ in range(1 + fixed_point_iters):
            eps = denoiser(x_dest, up[i + 1], **cond).eps
            x0_hat = (x - s_src * eps) / a_src  # x is at level up[i]
            x_dest = a_dst * x0_hat + s_dst * eps
        x = x_dest
        report(callback, i, up[i], up[i + 1], x, x0_hat)
    return x
