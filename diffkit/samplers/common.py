"""What every sampler shares: the step loop with its progress bar and callback, and the grid's
per-step schedule quantities (computed once per grid, never re-derived per sampler)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional

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
