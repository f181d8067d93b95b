"""Consistency-training curricula and the EMA target network's decay (docs/consistency.md).

References:
    CM  = Song, Dhariwal, Chen & Sutskever 2023, "Consistency Models" (Alg. 3; App. C, the
          functions N(k) and mu(k) of consistency training)
    iCT = Song & Dhariwal 2023, "Improved Techniques for Training Consistency Models" (Sec. 3.2:
          mu = 0; Sec. 3.4: the discretisation curriculum; Sec. 3.5: lognormal noise schedule and
          the weighting lambda(sigma_i) = 1 / (sigma_{i+1} - sigma_i))

A curriculum says, for the optimiser step k of K (``total_steps``), which grid the consistency
loss works on, how its pairs (t_n, t_{n+1}) are drawn and weighted, and the target network's EMA
decay mu (theta- <- stopgrad(mu theta- + (1 - mu) theta), CM Alg. 2/3). Every quantity is a
function of (k, K) only, so a resumed run continues exactly.

``fixed``: LCM's grid of skipping step k (:func:`diffkit.consistency.distillation_grid`), uniform
n, weight 1, a constant mu (``consistency_target_ema``, default 0 = iCT's stopgrad(theta)).

``cm`` (CM App. C): N(k) = ceil(sqrt(k/K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1 discretisation
points, mu(k) = exp(s0 log mu0 / N(k)); uniform n, weight 1.

``ict`` (iCT Sec. 3.4/3.5): N(k) = min(s0 2^floor(k/K'), s1) + 1, K' = floor(K / (log2 floor(s1/s0)
+ 1)); mu = 0; n drawn with p(n) proportional to erf((log sigma_{n+1} - P_mean) / (sqrt 2 P_std)) -
erf((log sigma_n - P_mean) / (sqrt 2 P_std)), P_mean = -1.1, P_std = 2; weight 1/(sigma_{n+1} - sigma_n).

In both papers N counts discretisation points, so the grid has N - 1 intervals, spaced as EDM's
rho = 7 sigmas. diffkit is discrete-time VP (LCM's form): sigma_t is the VP model's EDM sigma
sqrt((1 - abar_t) / abar_t) (:meth:`diffkit.schedule.NoiseSchedule.karras_sigma`, the papers' units
for data in [-1, 1]), and the N points are EDM's spacing between sigma at t = 0 and t = T - 1, each
on the nearest training timestep (:func:`curriculum_grid`), N - 1 capped at T - 1 (every step).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .config import CONSISTENCY_CURRICULA as CURRICULA
from .errors import DiffkitError, check_choice

CM_S0, CM_S1, CM_MU0 = 2, 150, 0.9  # CM Table 3 / App. C, CIFAR-10 consistency training
ICT_S0, ICT_S1 = 10, 1280  # iCT Sec. 3.4
ICT_P_MEAN, ICT_P_STD = -1.1, 2.0  # iCT Sec. 3.5 (EDM's lognormal, Karras et al. 2022)
KARRAS_RHO = 7.0  # the discretisation's rho (EDM, CM and iCT)


def cm_points(k: int, K: int, s0: int = CM_S0, s1: int = CM_S1) -> int:
    """CM's N(k) (App. C): ceil(sqrt(k/K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1 discretisation points,
    s0 at k = 0 and s1 + 1 at k = K. The ceiling's argument is kept >= 1 (N >= 2, one interval at
    least), as the authors' ``create_ema_and_scales_fn`` does (it matters only for s0 = 1)."""
    inner = math.ceil(math.sqrt(k / K * ((s1 + 1) ** 2 - s0 ** 2) + s0 ** 2) - 1)
    return max(inner, 1) + 1


def cm_target_ema(k: int, K: int, s0: int = CM_S0, s1: int = CM_S1, mu0: float = CM_MU0) -> float:
    """CM's mu(k) = exp(s0 log mu0 / N(k)) (App. C), mu0 at k = 0 (N(0) = s0), rising towards 1 as N
    grows; mu0 = 0 gives 0. (The authors' code divides by N(k) - 1 instead; the paper's form is used.)"""
    if mu0 == 0:
        return 0.0
    return math.exp(s0 * math.log(mu0) / cm_points(k, K, s0, s1))


def ict_stage_steps(K: int, s0: int = ICT_S0, s1: int = ICT_S1) -> int:
    """iCT's K' = floor(K / (log2 floor(s1 / s0) + 1)), the steps per doubling of N (Sec. 3.4), at
    least 1 (a run shorter than its number of stages)."""
    return max(1, math.floor(K / (math.log2(s1 // s0) + 1)))


def ict_points(k: int, K: int, s0: int = ICT_S0, s1: int = ICT_S1) -> int:
    """iCT's N(k) = min(s0 2^floor(k / K'), s1) + 1 discretisation points (Sec. 3.4)."""
    return min(s0 * 2 ** (k // ict_stage_steps(K, s0, s1)), s1) + 1


def curriculum_grid(schedule, intervals: int, rho: float = KARRAS_RHO) -> torch.Tensor:
    """The increasing float64 times t_0 = 0 < ... < t_M = T - 1 of M = ``intervals`` (1..T-1)
    intervals: the N = M + 1 point discretisation of CM and iCT, EDM's (Karras et al. 2022 eq. 5;
    CM Sec. 5 / App. C, iCT Sec. 2) sigma_i = (sigma_min^(1/rho) + i/M (sigma_max^(1/rho) -
    sigma_min^(1/rho)))^rho, rho = 7, between the schedule's EDM sigmas at t = 0 and t = T - 1, each
    at the training timestep nearest in log sigma. Where neighbouring sigma_i fall on one timestep
    (near t = 0 once M is large) the times are pushed apart to the next free steps,
    t_n = min(max_{m <= n}(t_m - m), T - 1 - M) + n, so the grid always has exactly M intervals
    (M = T - 1: every training step)."""
    T = int(schedule.num_timesteps)
    if not 1 <= intervals <= T - 1:
        raise DiffkitError(f"a consistency grid of {intervals} intervals does not fit T={T} training timesteps; "
                           f"allowed: 1..{T - 1}")
    log_sigma = torch.log(schedule.karras_sigma(torch.arange(T, dtype=torch.float64)))  # increasing in t
    log_sigma = log_sigma[torch.isfinite(log_sigma)]  # a zero-terminal-SNR schedule: sigma_max at T - 2
    lo, hi = torch.exp(log_sigma[0]) ** (1 / rho), torch.exp(log_sigma[-1]) ** (1 / rho)
    want = rho * torch.log(lo + torch.arange(intervals + 1, dtype=torch.float64) / intervals * (hi - lo))
    right = torch.searchsorted(log_sigma, want).clamp(1, len(log_sigma) - 1)
    nearer_left = (want - log_sigma[right - 1]) <= (log_sigma[right] - want)
    t = torch.where(nearer_left, right - 1, right)
    t[-1] = T - 1
    n = torch.arange(intervals + 1)
    t = torch.clamp(torch.cummax(t - n, 0).values, max=T - 1 - intervals) + n
    return t.to(torch.float64)


def lognormal_pair_probabilities(sigmas: torch.Tensor, p_mean: float = ICT_P_MEAN,
                                 p_std: float = ICT_P_STD) -> torch.Tensor:
    """iCT's p(n) for the pairs (sigma_n, sigma_{n+1}) of an increasing grid (Sec. 3.5): the
    lognormal N(P_mean, P_std^2) mass of log sigma in [log sigma_n, log sigma_{n+1}], normalised,
    i.e. proportional to erf((log sigma_{n+1} - P_mean) / (sqrt 2 P_std)) - erf((log sigma_n - P_mean)
    / (sqrt 2 P_std)). float64, one entry per interval."""
    z = (torch.log(torch.as_tensor(sigmas, dtype=torch.float64)) - p_mean) / (math.sqrt(2.0) * p_std)
    mass = torch.special.erf(z[1:]) - torch.special.erf(z[:-1])
    return mass / mass.sum()


def ict_weights(sigmas: torch.Tensor) -> torch.Tensor:
    """iCT's weighting lambda(sigma_n) = 1 / (sigma_{n+1} - sigma_n) of each pair (Sec. 3.5), float64."""
    s = torch.as_tensor(sigmas, dtype=torch.float64)
    return 1.0 / (s[1:] - s[:-1])


@dataclass(frozen=True)
class CurriculumStep:
    """What step k trains on: ``grid`` (increasing float64 times t_0 .. t_M), ``probabilities`` of
    its M pairs (None: uniform), their ``weights`` (None: 1) and the target EMA decay ``mu``."""
    grid: torch.Tensor
    probabilities: Optional[torch.Tensor]
    weights: Optional[torch.Tensor]
    mu: float

    def draw(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, weights) of ``batch`` pairs: n uniform on 0..M-1 (``torch.randint``, as the fixed grid
        always drew) or from ``probabilities`` (``torch.multinomial``); float32 weights."""
        M = len(self.grid) - 1
        if self.probabilities is None:
            n = torch.randint(M, (batch,), generator=generator)
        else:
            n = torch.multinomial(self.probabilities, batch, replacement=True, generator=generator)
        w = torch.ones(batch) if self.weights is None else self.weights[n].float()
        return n, w


class Curriculum:
    """The per-step plan of a consistency run (see the module docstring): :meth:`at` (k) gives
    the grid, pair distribution, weights and target decay of step k of ``total_steps`` K.
    ``kind``: ``fixed`` (``skip``: LCM's skipping step, None = T // 50; ``mu``: the constant decay),
    ``cm`` (``s0``, ``s1``, ``mu``: mu0) or ``ict`` (``s0``, ``s1``; mu = 0)."""

    def __init__(self, kind: str, schedule, total_steps: int, *, skip: Optional[int] = None,
                 s0: Optional[int] = None, s1: Optional[int] = None, mu: Optional[float] = None):
        self.kind = check_choice("consistency_curriculum", kind, CURRICULA)
        self.schedule, self.T, self.K = schedule, int(schedule.num_timesteps), max(1, int(total_steps))
        defaults = {"fixed": (None, None, 0.0), "cm": (CM_S0, CM_S1, CM_MU0), "ict": (ICT_S0, ICT_S1, 0.0)}[kind]
        self.s0 = defaults[0] if s0 is None else int(s0)
        self.s1 = defaults[1] if s1 is None else int(s1)
        self.mu0 = defaults[2] if mu is None else float(mu)
        self._fixed = None
        if kind == "fixed":
            from .consistency import distillation_grid
            self._fixed = distillation_grid(self.T, skip)
        self._cache: dict[int, CurriculumStep] = {}

    @classmethod
    def from_config(cls, cfg, schedule, total_steps: int) -> "Curriculum":
        return cls(cfg.consistency_curriculum, schedule, total_steps, skip=cfg.consistency_skip,
                   s0=cfg.consistency_s0, s1=cfg.consistency_s1, mu=cfg.consistency_target_ema)

    @property
    def uses_target_network(self) -> bool:
        """Whether theta- is a network of its own (mu > 0 at some step), not stopgrad(theta)."""
        return self.kind != "ict" and self.mu0 > 0

    def intervals(self, k: int) -> int:
        """M(k) = N(k) - 1 intervals of step k (the fixed grid's own count), capped at T - 1."""
        if self._fixed is not None:
            return len(self._fixed) - 1
        points = (cm_points if self.kind == "cm" else ict_points)(k, self.K, self.s0, self.s1)
        return min(points - 1, self.T - 1)

    def mu(self, k: int) -> float:
        """The target EMA decay applied after step k (CM Alg. 3's update; App. C's mu(k) for ``cm``)."""
        if self.kind == "cm":
            return cm_target_ema(k, self.K, self.s0, self.s1, self.mu0)
        return self.mu0 if self.kind == "fixed" else 0.0

    def at(self, k: int) -> CurriculumStep:
        """The :class:`CurriculumStep` of optimiser step k (0-based)."""
        M = self.intervals(k)
        if M not in self._cache:
            grid = self._fixed if self._fixed is not None else curriculum_grid(self.schedule, M)
            probs = weights = None
            if self.kind == "ict":
                sigmas = self.schedule.karras_sigma(grid)
                probs, weights = lognormal_pair_probabilities(sigmas), ict_weights(sigmas)
            self._cache = {M: CurriculumStep(grid, probs, weights, 0.0)}
        step = self._cache[M]
        return CurriculumStep(step.grid, step.probabilities, step.weights, self.mu(k))

    def meta(self) -> dict:
        """The resolved fields, for the checkpoint's ``consistency`` entry."""
        return {"curriculum": self.kind, "target_ema": self.mu0, "s0": self.s0, "s1": self.s1,
                "total_steps": None if self.kind == "fixed" else self.K}


__all__ = ["Curriculum", "CurriculumStep", "CURRICULA", "cm_points", "cm_target_ema", "ict_points",
           "ict_stage_steps", "curriculum_grid", "lognormal_pair_probabilities", "ict_weights",
           "CM_S0", "CM_S1", "CM_MU0", "ICT_S0", "ICT_S1", "ICT_P_MEAN", "ICT_P_STD"]
