"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models"): the multistep predictor UniP-p and the corrector UniC-p, which reuses the
model evaluation at the predicted point (no extra call), in log-SNR lambda like DPM-Solver.

With h = lambda_s - lambda_t, hh = -h (data prediction) or h (noise prediction), earlier
evaluations at lambda_{t_k} (r_k = (lambda_{t_k} - lambda_t)/h) and D_k = (m_k - m_0)/r_k:

    UniP-p (Algorithm 2 / eq. 8):  x_s = [(sigma_s/sigma_t) x - alpha_s expm1(hh) m_0] - alpha_s B(h) sum_k a_k D_k
    UniC-p (Algorithm 1 / eq. 9):  x_s^c = [...] - alpha_s B(h) (sum_k a_k D_k + a_p (m_s - m_0))

(data prediction; noise prediction swaps alpha <-> sigma and uses eps). The weights solve
R a = phi (Theorem 3.1: R_{ij} = r_j^{i-1}, phi_i = i! h phi_{i+1}(hh)/B(h)); for the 2nd-order
predictor a_1 = 1/2 and for the 1st-order corrector a_p = 1/2, as in the reference code.
B(h) = hh (``bh1``) or expm1(hh) (``bh2``, Sec. 3.3).

The corrector after step i uses m_s = model(x_s, s), the evaluation the next predictor needs
anyway, and it is skipped after the last step (there is no evaluation there) and after the steps
listed in ``disable_corrector``. Orders warm up as history fills; ``lower_order_final`` caps the
order at the number of remaining steps, and a step into clean data (lambda = +inf) is first order.
"""
from __future__ import annotations

import math
import operator
from typing import Optional, Sequence

import torch

from ..errors import DiffkitError, check_choice, check_range
from .common import GridScalars, exponential_adams_weights, multistep_orders, noise_step_coefficient, report, steps

SOLVER_TYPES = ("bh1", "bh2")


def unipc_weights(rks: Sequence[float], hh: float, variant: str, predictor: bool):
    """(B(h), weights) of UniP (``predictor=True``, weights for the k-1 earlier points) or UniC
    (weights for the k-1 earlier points then the new point), for order k = len(rks) + 1 with the
    earlier points' r_k in ``rks`` (UniPC Theorem 3.1 and Appendix, as in the reference code): the
    exact order conditions (:func:`~diffkit.samplers.common.exponential_adams_weights`) except
    the reference's a_1 = 1/2 for UniP-2 and a_p = 1/2 for UniC-1."""
    b_h = hh if variant == "bh1" else math.expm1(hh)
    if predictor:
        if not rks:
            return b_h, []
        if len(rks) == 1:
            return b_h, [0.5]
        return b_h, exponential_adams_weights(rks, hh, b_h)
    if not rks:
        return b_h, [0.5]
    return b_h, exponential_adams_weights(list(rks) + [1.0], hh, b_h)


def unipc(denoiser, x: torch.Tensor, grid: torch.Tensor, *, solver_order: int = 2, solver_type: str = "bh2",
          predict_x0: bool = True, lower_order_final: bool = True, disable_corrector: Sequence[int] = (),
          cond: Optional[dict] = None, generator=None, callback=None, progress: bool = False) -> torch.Tensor:
    """UniPC with UniP-``solver_order`` and UniC (see the module docstring). One model call per
    step. Defaults follow diffusers' UniPCMultistepScheduler (bh2, data prediction, order 2)."""
    check_range("solver_order", solver_order, 1, 3, integer=True)
    check_choice("solver_type", solver_type, SOLVER_TYPES)
    cond = cond or {}
    try:
        if isinstance(disable_corrector, (str, bytes)):
            raise TypeError
        items = list(disable_corrector)  # once: a generator is read one time
        if any(isinstance(k, bool) for k in items):
            raise TypeError
        skip_corrector = set(operator.index(k) for k in items)
    except TypeError:
        raise DiffkitError(f"disable_corrector={disable_corrector!r} is not allowed; give a list of step "
                           f"indices") from None
    c = GridScalars.of(denoiser.schedule, grid)
    lam = c.log_snr
    n = len(grid) - 1
    outputs: list = []   # model outputs at grid[i], grid[i-1], ... (newest first)
    x_prev = None        # state at grid[i-1], before the step i-1 -> i (for the corrector)

    # every step's orders and weights depend only on the grid: compute them once
    orders = multistep_orders(lam, solver_order, lower_order_final)
    pred_plan, corr_plan = [], [None]
    for i in range(n):
        h = lam[i + 1] - lam[i]
        hh = -h if predict_x0 else h
        rks = [(lam[i - k] - lam[i]) / h for k in range(1, orders[i])]
        pred_plan.append(unipc_weights(rks, hh, solver_type, predictor=True) + (rks,) if orders[i] > 1 else None)
        if i + 1 < n:  # the corrector of step i, applied at the start of step i + 1
            corr_plan.append(unipc_weights(rks, hh, solver_type, predictor=False) + (rks,))

    def base(x_from, j, k, m0):
        """The first-order part from grid[j] to grid[k]."""
        h = lam[k] - lam[j]
        if predict_x0:
            return torch.add(x_from * (c.sigma[k] / c.sigma[j]), m0, alpha=-(c.alpha[k] * math.expm1(-h)))
        return torch.add(x_from * (c.alpha[k] / c.alpha[j]), m0, alpha=-noise_step_coefficient(
            c.alpha[j], c.sigma[j], c.alpha[k], c.sigma[k], h))

    def scale(k):
        return c.alpha[k] if predict_x0 else c.sigma[k]

    for i in steps(grid, progress, f"unipc-{solver_type}"):
        pred = denoiser(x, c.t[i], **cond)
        m_new = pred.x0 if predict_x0 else pred.eps
        if i > 0 and (i - 1) not in skip_corrector:
            # UniC on the step grid[i-1] -> grid[i] with the new evaluation (Algorithm 1)
            m0 = outputs[0]
            b_h, w, rks = corr_plan[i]
            x_c = base(x_prev, i - 1, i, m0)
            corr = (m_new - m0) * w[-1]
            for k, (wk, rk) in enumerate(zip(w[:-1], rks), start=1):
                corr = torch.add(corr, outputs[k] - m0, alpha=wk / rk)
            x = torch.add(x_c, corr, alpha=-(scale(i) * b_h))
        outputs.insert(0, m_new)
        del outputs[solver_order:]
        x_prev = x
        x_p = base(x, i, i + 1, outputs[0])
        if pred_plan[i] is not None:
            # UniP (Algorithm 2) with the earlier evaluations
            b_h, w, rks = pred_plan[i]
            res = None
            for k, (wk, rk) in enumerate(zip(w, rks), start=1):
                term = (outputs[k] - outputs[0]) * (wk / rk)
                res = term if res is None else res + term
            x_p = torch.add(x_p, res, alpha=-(scale(i + 1) * b_h))
        x = x_p
        report(callback, i, c.t[i], c.t[i + 1], x, pred.x0)
    return x
