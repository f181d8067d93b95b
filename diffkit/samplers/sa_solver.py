"""SA-Solver (Xue et al. 2023, "SA-Solver: Stochastic Adams Solver for Fast Sampling of Diffusion
Models", NeurIPS 2023): a stochastic Adams predictor-corrector for the family of reverse SDEs

    dx = [f(t) x - (1 + tau^2)/2 g^2(t) grad log p_t(x)] dt + tau g(t) dw        (eq. 6)

which is the probability-flow ODE at tau = 0 and the reverse diffusion SDE at tau = 1. In data
prediction its variation-of-constants solution from t to s is (eq. 9, lambda = log(alpha/sigma),
h = lambda_s - lambda_t)

    x_s = e^{-tau^2 h} (sigma_s/sigma_t) x_t + (1 + tau^2) sigma_s int_{lambda_t}^{lambda_s}
          e^{-tau^2 lambda_s} e^{(1 + tau^2) lambda} x0(lambda) dlambda + sigma_s sqrt(1 - e^{-2 tau^2 h}) xi,

with the integral of the Gaussian noise exact. The SA-Predictor (eq. 13-14, Algorithm 1) replaces x0
by the Lagrange polynomial in lambda through the last ``predictor_order`` evaluations and integrates
it exactly against the exponential; the SA-Corrector (eq. 15-16) does the same with the new
evaluation at the predicted point among ``corrector_order`` nodes and reuses the predictor's xi (so
it costs no model call: the evaluation is the one the next predictor needs). The substitution
lambda = lambda_s - u turns the integral into alpha_s (1 + tau^2) int_0^h e^{-(1 + tau^2) u} x0 du:
the data-prediction exponential integrator of DPM-Solver++ / UniPC with h scaled by 1 + tau^2.
So each step is

    x_s = e^{-tau^2 h} (sigma_s/sigma_t) x_t - alpha_s expm1(hh) m_0 - alpha_s hh sum_k a_k D_k
          + sigma_s sqrt(-expm1(-2 tau^2 h)) xi,        hh = -(1 + tau^2) h,

with D_k = (m_k - m_0)/r_k, r_k = (lambda_k - lambda_t)/h, and the weights of UniPC-bh1
(:func:`~diffkit.samplers.unipc.unipc_weights`, B(h) = hh): the exact order conditions
(Theorem 3.1 of UniPC; SA-Solver's Lagrange integrals, Appendix B), except a_1 = 1/2 for a
2-node predictor and a_p = 1/2 for a 2-node corrector -- the "modification that does not influence
the convergence order, similar to UniPC" (an O(h^3) term, "used only for few steps sampling") that
diffusers' ``SASolverScheduler`` adds to its data-prediction coefficients: exactly that term
(``weights="exact"`` keeps the exact weights there: eq. 13-16 as written). At tau = 0 this is UniP-p + UniC-(c-1)
in bh1 form (no noise drawn).

Orders warm up as diffusers' do: predictor min(p, i + 1), corrector (of step i, applied at step i + 1
with the evaluation there) min(c, i + 2); with ``lower_order_final`` they never exceed n - i and
n - i + 1 (n steps). No corrector follows the last step. A step into clean data (lambda = +inf) is
x_s = x0 of the last evaluation (its limit at every tau).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from ..errors import DiffkitError, check_choice, check_range
from ..noise import randn_like
from .common import GridScalars, exponential_adams_weights, multistep_orders, report, steps
from .unipc import unipc_weights

WEIGHTS = ("diffusers", "exact")


def sa_weights(rks: Sequence[float], hh: float, predictor: bool, weights: str):
    """(B(h) = hh, weights) of the SA-Predictor (``predictor=True``: the earlier nodes ``rks``) or the
    SA-Corrector (``rks``, then the new node r = 1): ``"diffusers"``, UniPC-bh1's (a = 1/2 for two
    nodes, as diffusers' SASolverScheduler); ``"exact"``, the exact integral of the Lagrange polynomial
    through every node (eq. 13-16 as written; :func:`~diffkit.samplers.common.exponential_adams_weights`)."""
    if weights == "diffusers":
        return unipc_weights(rks, hh, "bh1", predictor)
    nodes = list(rks) if predictor else list(rks) + [1.0]
    return hh, (exponential_adams_weights(nodes, hh, hh) if nodes else [])


def _tau_schedule(grid_t: list, tau: float, tau_window: Optional[Sequence[float]]) -> list:
    """tau at each step's start time: ``tau`` inside ``tau_window`` = (t_lo, t_hi) (training-step
    units, inclusive; diffusers' default ``tau_func`` is tau = 1 on [200, 800], 0 elsewhere), or
    everywhere without a window."""
    if tau_window is None:
        return [tau] * (len(grid_t) - 1)
    try:
        lo, hi = (float(v) for v in tau_window)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ValueError
    except (TypeError, ValueError):
        raise DiffkitError(f"tau_window={tau_window!r} is not allowed; give (t_lo, t_hi), two finite times with "
                           f"t_lo <= t_hi, or None (tau at every step)") from None
    return [tau if lo <= t <= hi else 0.0 for t in grid_t[:-1]]


def sa_solver(denoiser, x: torch.Tensor, grid: torch.Tensor, *, predictor_order: int = 2, corrector_order: int = 2,
              tau: float = 1.0, tau_window: Optional[Sequence[float]] = None, lower_order_final: bool = True,
              weights: str = "diffusers", cond: Optional[dict] = None, generator=None, callback=None,
              progress: bool = False) -> torch.Tensor:
    """SA-Solver in data prediction (see the module docstring): SA-Predictor of order
    ``predictor_order`` (1-4) and SA-Corrector of order ``corrector_order`` (1-4; its node count,
    the new evaluation included), one model call per step. ``tau`` >= 0 is the stochasticity (0: the
    probability-flow ODE, deterministic, no noise drawn; 1: the reverse SDE), applied at the steps
    whose start time lies in ``tau_window`` (all when None). With tau > 0 every step that does not
    end at clean data draws one xi, as diffusers' ``SASolverScheduler`` draws one per step. Defaults
    follow diffusers (predictor 2, corrector 2, data prediction, lower_order_final) with tau = 1 at
    every step (the paper's SDE; diffusers' default ``tau_func`` is 1 on t in [200, 800] only).
    ``weights``: ``"diffusers"`` (default) or ``"exact"`` (:func:`sa_weights`; they differ only where a
    predictor or corrector has two nodes)."""
    check_range("predictor_order", predictor_order, 1, 4, integer=True)
    check_range("corrector_order", corrector_order, 1, 4, integer=True)
    check_range("tau", tau, 0.0, None)
    check_choice("weights", weights, WEIGHTS)
    cond = cond or {}
    c = GridScalars.of(denoiser.schedule, grid)
    lam = c.log_snr
    n = len(grid) - 1
    taus = _tau_schedule(c.t, float(tau), tau_window)
    draws = tau > 0

    # every step's coefficients depend only on the grid and tau: computed once, before the loop
    pred_orders = multistep_orders(lam, predictor_order, lower_order_final)
    plan, corr_plan = [], [None]
    for i in range(n):
        if math.isinf(lam[i + 1]):  # into clean data: x0 of the last evaluation
            plan.append(None)
            continue
        h = lam[i + 1] - lam[i]
        t2 = taus[i] ** 2
        hh = -(1.0 + t2) * h
        rks = [(lam[i - k] - lam[i]) / h for k in range(1, pred_orders[i])]
        b_h, w = sa_weights(rks, hh, True, weights)
        plan.append((math.exp(-t2 * h) * c.sigma[i + 1] / c.sigma[i], -c.alpha[i + 1] * math.expm1(hh),
                     c.sigma[i + 1] * math.sqrt(-math.expm1(-2.0 * t2 * h)),
                     [-c.alpha[i + 1] * b_h * a / r for a, r in zip(w, rks)]))
        if i + 1 < n:  # the corrector of step i, applied at step i + 1 with the evaluation there
            order = min(corrector_order, i + 2, n - i + 1 if lower_order_final else corrector_order)
            rks = [(lam[i - k] - lam[i]) / h for k in range(1, order - 1)]
            if order == 1:  # the new evaluation alone: its constant, integrated exactly
                b_h, w = hh, [math.expm1(hh) / hh]
            else:
                b_h, w = sa_weights(rks, hh, False, weights)
            corr_plan.append((-c.alpha[i + 1] * b_h * w[-1], [-c.alpha[i + 1] * b_h * a / r for a, r in zip(w, rks)]))

    def first_order(x_from, j, m0, xi):
        """The step's part from x and m_0 (exact for constant x0) and its noise."""
        ratio, coef_m0, coef_xi, _ = plan[j]
        out = torch.add(x_from * ratio, m0, alpha=coef_m0)
        return out if xi is None or coef_xi == 0 else torch.add(out, xi, alpha=coef_xi)

    outputs: list = []  # x0 at grid[i], grid[i-1], ... (newest first)
    x_prev = xi = None  # state at grid[i-1] and the xi of the step grid[i-1] -> grid[i] (for the corrector)
    keep = max(predictor_order, corrector_order - 1, 1)
    for i in steps(grid, progress, "sa-solver"):
        m_new = denoiser(x, c.t[i], **cond).x0
        if i > 0:
            # SA-Corrector (eq. 15-16) of the step grid[i-1] -> grid[i], with the same xi
            coef_new, coefs = corr_plan[i]
            x = first_order(x_prev, i - 1, outputs[0], xi)
            x = torch.add(x, m_new - outputs[0], alpha=coef_new)
            for k, coef in enumerate(coefs, start=1):
                x = torch.add(x, outputs[k] - outputs[0], alpha=coef)
        outputs.insert(0, m_new)
        del outputs[keep:]
        x_prev = x
        if plan[i] is None:
            x = m_new * c.alpha[i + 1]
        else:
            # SA-Predictor (eq. 13-14, Algorithm 1)
            xi = randn_like(x, generator) if draws else None
            x = first_order(x, i, m_new, xi)
            for k, coef in enumerate(plan[i][3], start=1):
                x = torch.add(x, outputs[k] - outputs[0], alpha=coef)
        report(callback, i, c.t[i], c.t[i + 1], x, m_new)
    return x
