"""DEIS (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator"):
the multistep exponential integrator with the noise prediction extrapolated by a polynomial
through the last evaluations and integrated exactly: DEIS's exponential Adams-Bashforth (Sec. 4)
as diffusers' ``DEISMultistepScheduler`` implements it ("logrho": the polynomial in log rho, where
the paper's tAB interpolates in t).

With rho = sigma/alpha (the Karras sigma) the probability-flow ODE is d(x/alpha)/d rho = eps, so

    x_s = alpha_s (x_t/alpha_t + int_{rho_t}^{rho_s} eps drho),

and DEIS (logrho) replaces eps by the Lagrange polynomial in log rho through eps at the last r + 1
grid times (order r + 1). Since log rho = -lambda and drho = -e^{-lambda} dlambda, this is the
noise-prediction exponential integrator of DPM-Solver (Lu et al. 2022, eq. 3.4) with the
integrand an interpolating polynomial in lambda integrated exactly: the step is

    x_s = (alpha_s/alpha_t) x_t - sigma_s expm1(h) eps_0 - sigma_s sum_k a_k (eps_k - eps_0)/r_k,

with the weights a_k of :func:`~diffkit.samplers.common.exponential_adams_weights` (hh = h), the
order conditions UniPC's predictor solves. Order 2 equals multistep DPM-Solver-2 with
``solver_type="heun"`` in noise prediction; order 3 differs from DPM-Solver-3M, whose second
difference carries half the exact weight (docs/samplers.md).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import check_range
from .common import GridScalars, exponential_adams_weights, multistep_orders, noise_step_coefficient, report, steps


def deis(denoiser, x: torch.Tensor, grid: torch.Tensor, *, solver_order: int = 2, lower_order_final: bool = True,
         cond: Optional[dict] = None, generator=None, callback=None, progress: bool = False) -> torch.Tensor:
    """DEIS of order 1-3 (diffusers' "logrho"; one model call per step; order 1 is DDIM). Orders warm up
    as history fills; ``lower_order_final`` caps the order at the steps left (at every step count;
    diffusers' DEIS only below 15 steps); a step into clean data is first order. Defaults follow
    diffusers' ``DEISMultistepScheduler`` (solver_order=2). ``generator`` is unused."""
    check_range("solver_order", solver_order, 1, 3, integer=True)
    cond = cond or {}
    c = GridScalars.of(denoiser.schedule, grid)
    lam = c.log_snr
    orders = multistep_orders(lam, solver_order, lower_order_final)
    # every step's coefficients depend only on the grid: computed once, before the loop. Step i:
    # x <- ratio x - first eps_0 + sum_k coef_k (eps_k - eps_0), k = 1 .. order-1
    plan = []
    for i, order in enumerate(orders):
        a_t, s_t, a_s, s_s = c.alpha[i], c.sigma[i], c.alpha[i + 1], c.sigma[i + 1]
        h = lam[i + 1] - lam[i]
        rks = [(lam[i - k] - lam[i]) / h for k in range(1, order)]
        weights = exponential_adams_weights(rks, h) if rks else []
        plan.append((a_s / a_t, -noise_step_coefficient(a_t, s_t, a_s, s_s, h),
                     [-s_s * a / r for a, r in zip(weights, rks)]))
    outputs: list = []  # eps at grid[i], grid[i-1], grid[i-2] (newest first)
    for i in steps(grid, progress, "deis"):
        pred = denoiser(x, c.t[i], **cond)
        outputs.insert(0, pred.eps)
        del outputs[solver_order:]
        ratio, first, coefs = plan[i]
        x = torch.add(x * ratio, outputs[0], alpha=first)
        for k, coef in enumerate(coefs, start=1):
            x = torch.add(x, outputs[k] - outputs[0], alpha=coef)
        report(callback, i, c.t[i], c.t[i + 1], x, pred.x0)
    return x
