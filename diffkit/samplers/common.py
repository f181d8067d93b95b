"""What every sampler shares: the step loop with its progress bar and callback, and the grid's
per-step schedule quantities (computed once per grid, never re-derived per sampler)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ..schedule import NoiseSchedule


@dataclass
class GridCoefficients:
    """Schedule quantities at every grid time, float64 on the CPU (index i = grid[i])."""

    t: torch.Tensor
    alpha: torch.Tensor
    sigma: torch.Tensor
    alpha_bar: torch.Tensor
    log_snr: torch.Tensor

    @classmethod
    def of(cls, schedule: NoiseSchedule, grid: torch.Tensor) -> "GridCoefficients":
        grid = torch.as_tensor(grid, dtype=torch.float64)
        return cls(t=grid, alpha=schedule.alpha(grid), sigma=schedule.sigma(grid),
                   alpha_bar=schedule.alpha_bar(grid), log_snr=schedule.log_snr(grid))


def steps(grid: torch.Tensor, progress: bool = False, desc: str = "sampling") -> Iterator[int]:
    """Indices 0..len(grid)-2 of the steps grid[i] -> grid[i+1], with an optional progress bar."""
    return iter(tqdm(range(len(grid) - 1), desc=desc, disable=not progress, leave=False))


def report(callback: Optional[Callable], i: int, t: float, s: float, x: torch.Tensor,
           x0: torch.Tensor) -> None:
    """Call the user's callback with the state after step i (t -> s)."""
    if callback is not None:
        callback({"step": i, "t": float(t), "s": float(s), "x": x, "x0": x0})


@dataclass
class GridScalars:
    """alpha, sigma and log-SNR lambda at each grid time as Python floats, computed once per grid
    (float64 on the CPU, so step coefficients cost no tensor work and no device sync). At the
    clean-data target t = -1: alpha = 1, sigma = 0, lambda = +inf."""

    t: list
    alpha: list
    sigma: list
    log_snr: list

    @classmethod
    def of(cls, schedule: NoiseSchedule, times) -> "GridScalars":
        times = torch.as_tensor(times, dtype=torch.float64)
        return cls(t=times.tolist(), alpha=schedule.alpha(times).tolist(),
                   sigma=schedule.sigma(times).tolist(), log_snr=schedule.log_snr(times).tolist())


def model_output(denoiser, x: torch.Tensor, t: float, cond: dict, data_prediction: bool) -> torch.Tensor:
    """x0_hat (data prediction, DPM-Solver++) or eps_hat (noise prediction) at (x, t)."""
    pred = denoiser(x, t, **cond)
    return pred.x0 if data_prediction else pred.eps


def expm1(v):
    """e^v - 1 of a Python float or, for per-sample step coefficients (dpm-adaptive), a tensor."""
    return torch.expm1(v) if isinstance(v, torch.Tensor) else math.expm1(v)


def noise_step_coefficient(alpha_t: float, sigma_t: float, alpha_s: float, sigma_s: float, h: float) -> float:
    """sigma_s (e^h - 1), the eps coefficient of the first-order exponential-integrator step
    t -> s (DPM-Solver eq. 4.1 / DDIM), written as alpha_s sigma_t / alpha_t when s is clean data
    (sigma_s = 0, h = inf), where the product form is 0 * inf. Per-sample tensor coefficients
    (dpm-adaptive, whose steps never reach clean data) take the product form."""
    if isinstance(h, torch.Tensor):
        return sigma_s * torch.expm1(h)
    return sigma_s * math.expm1(h) if sigma_s > 0 else alpha_s * sigma_t / alpha_t


def multistep_orders(log_snr: list, solver_order: int, lower_order_final: bool) -> list:
    """The order of each step of a multistep solver on a grid with log-SNR ``log_snr`` (one entry
    per grid time): warm-up min(solver_order, i + 1) as history fills; with ``lower_order_final``
    never more than the steps left (every step count; diffusers only below 15 steps); a step into
    clean data (lambda = +inf) is first order (no polynomial in lambda reaches infinity)."""
    n = len(log_snr) - 1
    orders = []
    for i in range(n):
        order = min(solver_order, i + 1)
        if lower_order_final:
            order = min(order, n - i)
        orders.append(1 if math.isinf(log_snr[i + 1]) else order)
    return orders


def exponential_adams_weights(r, hh: float, b_h: float = 1.0) -> list:
    """Weights a_k of D_k = (m_k - m_0)/r_k that make sum_k a_k D_k integrate the polynomial in
    lambda through m_0 (at r = 0) and the m_k (at r_k = (lambda_k - lambda_t)/h) exactly against
    the exponential weight of the step (in units of ``b_h``): the order conditions
    sum_k a_k r_k^(i-1) = i! hh phi_{i+1}(hh) / b_h, i = 1..len(r), with phi_{k+1}(z) =
    (phi_k(z) - 1/k!)/z, phi_1(z) = expm1(z)/z (UniPC, Zhao et al. 2023, Theorem 3.1; hh = -h for
    data prediction, h for noise prediction). With nodes at earlier times this is the exponential
    Adams-Bashforth step (DEIS in log rho = -lambda), with the new point r = 1 among them Adams-Moulton (UniC)."""
    rows, rhs = [], []
    h_phi_k = math.expm1(hh) / hh - 1.0
    factorial = 1
    nodes = np.asarray(r, dtype=np.float64)
    for i in range(1, len(nodes) + 1):
        rows.append(nodes ** (i - 1))
        rhs.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return np.linalg.solve(np.stack(rows), np.array(rhs)).tolist()
