"""The variational bound in bits/dim, term by term (DDPM eq. 5; Improved DDPM Sec. 3.3).

    -log p(x_0) <= L_T + sum_{t=1}^{T-1} L_{t-1} + L_0      (all in bits/dim here)
computed with the denoiser's x_0 prediction and its (fixed or learned) variance. ``terms`` is
indexed by t so a curve of the bound over time can be plotted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from tqdm.auto import tqdm

from . import diffusion
from .denoiser import model_variance_type
from .errors import DiffkitError
from .losses import prior_bpd, vlb_term_bpd
from .noise import randn_like


@dataclass
class VLBResult:
    """Per-example bound in bits/dim: ``total`` = ``prior`` + sum_j ``weights[j]`` * ``terms[:, j]``,
    ``terms`` (B, len(timesteps)) at the evaluated ``timesteps`` (all T of them, weights 1, unless
    strided: then ``weights`` are the trapezoid rule's). ``x0_mse`` (B, len(timesteps)): the mean
    squared error per dimension of the x_0 prediction the term at each t was computed with (the
    distortion of DDPM Sec. 4.3, as the DDPM code's ``calc_bpd_loop`` records it)."""

    total: torch.Tensor
    prior: torch.Tensor
    terms: torch.Tensor
    timesteps: torch.Tensor
    weights: torch.Tensor
    x0_mse: torch.Tensor


@torch.no_grad()
def variational_bound(denoiser, x0: torch.Tensor, *, variance_type: Optional[str] = None,
                      timesteps: Optional[Sequence[int]] = None, generator=None, cond: Optional[dict] = None,
                      progress: bool = False) -> VLBResult:
    """The VLB of 8-bit data ``x0`` (scaled to [-1, 1]) in bits/dim, per example.

    ``timesteps=None`` evaluates every term (T network calls per batch). A strided subset
    (which must start at 0) keeps the decoder term L_0 and estimates the sum of the KL terms over
    t = 1..T-1 by the trapezoid rule on the evaluated t (:func:`_sum_weights`). The terms fall
    steeply at low noise, so dense small t and sparse large t (e.g. all t < 20, then every 10th)
    estimate well; the error is measured in tests/test_likelihood.py.
    """
    schedule = denoiser.schedule
    T = schedule.num_timesteps
    cond = cond or {}
    if variance_type is None:
        variance_type = model_variance_type(denoiser)
    ts = torch.arange(T) if timesteps is None else torch.as_tensor(list(timesteps), dtype=torch.long)
    if ts.numel() < 1 or (ts[1:] <= ts[:-1]).any() or ts[0] != 0 or ts[-1] > T - 1:
        raise DiffkitError(f"timesteps must increase strictly from 0 to at most {T - 1}")
    weights = _sum_weights(ts, T)
    terms = torch.zeros(x0.shape[0], ts.numel(), dtype=torch.float64)
    x0_mse = torch.zeros_like(terms)
    for j in tqdm(range(ts.numel()), desc="vlb", disable=not progress, leave=False):
        t = torch.full((x0.shape[0],), float(ts[j]), dtype=torch.float64)
        x_t = diffusion.q_sample(schedule, x0, t, randn_like(x0, generator))
        pred = denoiser(x_t, t, **cond)
        var_values = pred.var_values if variance_type == "learned_range" else None
        terms[:, j] = vlb_term_bpd(schedule, x0, x_t, t, pred.x0, variance_type, var_values).cpu().double()
        x0_mse[:, j] = (pred.x0.float() - x0.float()).square().flatten(1).mean(1).cpu().double()
    prior = prior_bpd(schedule, x0).cpu().double()  # float64 on the CPU (mps has none)
    total = prior + (terms * weights[None]).sum(1)
    return VLBResult(total=total, prior=prior, terms=terms, timesteps=ts, weights=weights,
                     x0_mse=x0_mse)


def bound_in_batches(denoiser, images: torch.Tensor, *, timesteps: Optional[Sequence[int]] = None, seed: int = 0,
                     batch_size: int = 100, cond: Optional[dict] = None, progress: bool = False) -> list[VLBResult]:
    """:func:`variational_bound` of ``images`` batch by batch (one :class:`VLBResult` each; ``cond``'s
    tensors split with them). Image i's noise comes from its own generator (seed ``seed + i``,
    :func:`diffkit.noise.generators_from_seed`), so nothing depends on ``batch_size``; one pass serves
    both the bound (:func:`diffkit.evaluation.bound_summary`) and the rate-distortion curve
    (:func:`diffkit.progressive.rate_distortion_of`)."""
    from .denoiser import network_device
    from .noise import generators_from_seed
    device = network_device(denoiser)
    generators = generators_from_seed(seed, int(images.shape[0]))
    parts = []
    for start in range(0, images.shape[0], batch_size):
        part_cond = None if cond is None else {
            k: v[start:start + batch_size].to(device) if isinstance(v, torch.Tensor) else v for k, v in cond.items()}
        parts.append(variational_bound(denoiser, images[start:start + batch_size].to(device), timesteps=timesteps,
                                       generator=generators[start:start + batch_size], cond=part_cond,
                                       progress=progress))
    return parts


def _sum_weights(ts: torch.Tensor, T: int) -> torch.Tensor:
    """Weights w_j with sum_t f(t) ~ f(0) + sum_j w_j f(t_j) over t = 1..T-1: the trapezoid rule
    between evaluated points, plus half a step at each end and constant extension to 1 and T-1.
    With every t evaluated, every weight is 1."""
    weights = torch.ones(ts.numel(), dtype=torch.float64)
    kl = ts[1:].to(torch.float64)
    if kl.numel() == 0:
        return weights
    if kl.numel() == 1:
        weights[1] = T - 1
        return weights
    gaps = kl[1:] - kl[:-1]
    w = torch.zeros_like(kl)
    w[:-1] += gaps / 2
    w[1:] += gaps / 2
    w[0] += 0.5 + (kl[0] - 1)
    w[-1] += 0.5 + (T - 1 - kl[-1])
    weights[1:] = w
    return weights


def tail_sums(terms: torch.Tensor, ts: torch.Tensor, T: int) -> torch.Tensor:
    """(B, len(ts)): sum_{k > ts[j]}^{T-1} L_k for each evaluated t, the KL terms (columns 1..;
    column 0 is L_0 at t = 0) read as the rule of :func:`_sum_weights` reads them: linear between
    evaluated t, constant below the first and above the last. Between evaluated a < b (gap g) the
    integer points a+1..b add L_a (g - 1)/2 + L_b (g + 1)/2, so the sum over every k >= 1 (the
    first column) is exactly sum_{j >= 1} w_j L(t_j); with every t evaluated, the plain sums."""
    kl, t = terms[:, 1:], ts[1:].to(terms.dtype)
    out = torch.zeros_like(terms)
    if kl.shape[1] == 0:
        return out
    gaps = t[1:] - t[:-1]
    pieces = kl[:, :-1] * ((gaps - 1) / 2) + kl[:, 1:] * ((gaps + 1) / 2)  # (a, b] for each pair
    above = kl[:, -1:] * (T - 1 - t[-1])  # constant above the last evaluated t
    tails = pieces.flip(1).cumsum(1).flip(1)
    out[:, 1:] = above + torch.cat([tails, torch.zeros_like(above)], 1)
    out[:, 0] = out[:, 1] + kl[:, 0] * t[0]  # t = 1..t_1: constant at the first KL term
    return out

