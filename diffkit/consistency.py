"""Consistency models: the consistency function and its losses (one-step and few-step generation).

References:
    CM  = Song, Dhariwal, Chen & Sutskever 2023, "Consistency Models"
    LCM = Luo et al. 2023, "Latent Consistency Models" (the discrete-time, VP form used here)
    iCT = Song & Dhariwal 2023, "Improved Techniques for Training Consistency Models"

A consistency function f(x_t, t) maps every point of a probability-flow ODE trajectory to the
trajectory's point at the boundary time t = 0 (training step 0, diffkit's smallest noise level).
It is parameterised so that f(x, 0) = x holds exactly (CM eq. 5 / App. C; LCM eq. 9, diffusers'
``LCMScheduler.get_scalings_for_boundary_condition_discrete``)::

    f(x, t) = c_skip(t) x + c_out(t) x0_hat(x, t),
    c_skip  = sigma_data^2 / ((s t)^2 + sigma_data^2),   c_out = s t / sqrt((s t)^2 + sigma_data^2),

with t in training-timestep units, sigma_data = 0.5 and the timestep scaling s = 10 (LCM's
defaults). :class:`ConsistencyDenoiser` is that parameterisation as a denoiser wrapper: its x0
answer is f, its eps the one consistent with f, so every diffkit sampler runs on it (the
``consistency`` sampler, CM Alg. 1, is the one it is made for).

:func:`consistency_loss` is the loss of one batch of consistency distillation (CM Alg. 2 in
LCM Alg. 1's discrete-time form, with a first-order DDIM teacher step) or consistency training
(CM Alg. 3: no teacher), on the pairs of neighbouring times of :func:`distillation_grid`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from . import diffusion
from .config import CONSISTENCY_DISTANCES as DISTANCES  # one list each, validated in TrainConfig
from .config import CONSISTENCY_SIGMA_DATA as SIGMA_DATA  # LCM / diffusers' LCMScheduler (CM: 0.5 as well)
from .config import CONSISTENCY_TIMESTEP_SCALING as TIMESTEP_SCALING  # LCMScheduler's ``timestep_scaling``
from .config import OBJECTIVES
from .denoiser import Prediction, Wrapper, with_x0
from .errors import DiffkitError, check_choice, check_range
from .noise import fork_device_rng
from .schedule import as_cpu_times
from .timesteps import lcm_times



def boundary_scalings(t, sigma_data: float = SIGMA_DATA, timestep_scaling: float = TIMESTEP_SCALING):
    """(c_skip(t), c_out(t)) of the boundary-condition parameterisation (CM eq. 5 and App. C with
    the discrete-time argument of LCM eq. 9): float64 tensors shaped like ``t``; c_skip(0) = 1 and
    c_out(0) = 0 exactly."""
    st = as_cpu_times(t) * float(timestep_scaling)
    c_skip = sigma_data ** 2 / (st ** 2 + sigma_data ** 2)
    c_out = st / torch.sqrt(st ** 2 + sigma_data ** 2)
    return c_skip, c_out


class ConsistencyDenoiser(Wrapper):
    """The consistency function around a denoiser (CM eq. 5; LCM eq. 9): x0 = f(x, t) =
    c_skip(t) x + c_out(t) x0_hat(x, t), eps = (x - alpha_t f) / sigma_t (so any sampler sees a
    consistent pair, and one DDIM step from t to clean data returns f). ``inner`` is the network's
    own denoiser (its prediction type converts the output to x0_hat). Attributes that the
    wrapper does not define (``model``, ``meta``, ``decoder``, ``compile``, ...) are the inner
    denoiser's. ``grid``: the grid it was distilled on (:func:`distillation_grid`; None: the default
    one); the ``lcm`` spacing (the ``consistency`` sampler's default) samples from its source times
    (``consistency_times``, :func:`source_times`). ``guidance_range``: a w-conditioned model's
    [w_min, w_max] (LCM Sec. 4.2; seed convention): a call without ``w`` in its cond gets the
    middle of the range (``default_guidance``)."""

    guidance_range = None  # set per instance (a plain attribute over Wrapper's forwarding property)

    def __init__(self, inner, sigma_data: float = SIGMA_DATA, timestep_scaling: float = TIMESTEP_SCALING,
                 grid=None, guidance_range=None, curriculum: str = "fixed"):
        check_range("consistency_sigma_data", sigma_data, 0.0, None, low_inclusive=False)
        check_range("consistency_timestep_scaling", timestep_scaling, 0.0, None, low_inclusive=False)
        self.inner, self.sigma_data, self.timestep_scaling = inner, float(sigma_data), float(timestep_scaling)
        grid = distillation_grid(inner.schedule.num_timesteps) if grid is None else grid
        self._source_times = source_times(grid, curriculum)
        self.guidance_range = None if guidance_range is None else tuple(float(w) for w in guidance_range)
        self.default_guidance = None if guidance_range is None else sum(self.guidance_range) / 2

    consistency_times = property(lambda self: self._source_times)  # the lcm spacing's source times

    def __getattr__(self, name):
        if name == "inner":  # not set yet (copy / unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def scalings(self, t):
        """(c_skip, c_out) at ``t`` (see :func:`boundary_scalings`)."""
        return boundary_scalings(t, self.sigma_data, self.timestep_scaling)

    def __call__(self, x: torch.Tensor, t, **cond) -> Prediction:
        if self.default_guidance is not None and "w" not in cond:
            cond["w"] = self.default_guidance
        pred = self.inner(x, t, **cond)
        c_skip, c_out = self.scalings(t)
        if c_skip.ndim == 0:  # one time for the batch: Python floats, no tensor work
            f = pred.x0 * float(c_out) + x * float(c_skip) if float(c_out) else x
        else:
            f = diffusion.expand(c_skip, x) * x + diffusion.expand(c_out, x) * pred.x0
        return with_x0(self.schedule, x, t, f, pred)


def distillation_grid(num_timesteps: int, skip: Optional[int] = None) -> torch.Tensor:
    """The increasing float64 times t_0 = 0 < t_1 < ... < t_N of the consistency losses: LCM's
    source times (:func:`diffkit.timesteps.lcm_times`, the times the ``lcm`` spacing samples from:
    t_n = n k - 1 for a skipping step k = ``skip``, LCM Sec. 4.3; by default diffusers' N = min(50, T)
    times n (T // N) - 1, so t = 0, 19, 39, ..., 999 at T = 1000; for k = 1 every training step) and
    t_0 = 0, the boundary (LCM's training script clamps t_1 - k = -1 to 0)."""
    T = int(num_timesteps)
    if T < 2:
        raise DiffkitError(f"a consistency model needs a schedule of at least 2 timesteps; this one has T={T}")
    times = lcm_times(T, skip)
    return torch.cat([torch.zeros(1, dtype=torch.float64), times[times > 0]])


def source_times(grid, curriculum: str = "fixed") -> torch.Tensor:
    """LCM's source times (increasing float64) of a distillation grid (:func:`distillation_grid`):
    the grid without its boundary t_0 = 0, except for a skip of 1, where t_1 = 0 is a source time
    itself (the grid is then evenly spaced from 0). Reads grids written by any diffkit version.
    A curriculum's grid (``curriculum`` 'cm' / 'ict', EDM spacing) starts 0, 1, 2, ... once it is
    fine: its boundary is never a source time."""
    grid = torch.as_tensor(grid, dtype=torch.float64).flatten()
    if curriculum == "fixed" and len(grid) >= 3 and grid[1] - grid[0] == grid[2] - grid[1] == 1:
        return grid
    return grid[1:]


def ddim_teacher_step(teacher, x: torch.Tensor, t, s, **cond) -> torch.Tensor:
    """One deterministic DDIM step (eta = 0, DDIM eq. 12; the first-order probability-flow ODE
    step) of ``teacher`` from ``t`` to ``s`` (per-sample times allowed):
    x_s = alpha_s x0_hat + sigma_s eps_hat, i.e. :func:`diffusion.q_sample` at the teacher's pair."""
    pred = teacher(x, t, **cond)
    return diffusion.q_sample(teacher.schedule, pred.x0, s, pred.eps)


def pseudo_huber_c(sample_shape) -> float:
    """c = 0.00054 sqrt(d) of iCT's pseudo-Huber distance (Sec. 3.3), d = numbers per sample."""
    return 0.00054 * math.sqrt(math.prod(sample_shape))


def distance(a: torch.Tensor, b: torch.Tensor, kind: str = "pseudo-huber") -> torch.Tensor:
    """Per-sample distance (B,): ``pseudo-huber`` sqrt(||a - b||^2 + c^2) - c (iCT Sec. 3.3,
    c = :func:`pseudo_huber_c`) or ``l2`` the mean squared difference (CM's squared l2, per number)."""
    check_choice("consistency_distance", kind, DISTANCES)
    sq = (a - b).float().pow(2).reshape(a.shape[0], -1)
    if kind == "l2":
        return sq.mean(1)
    c = pseudo_huber_c(a.shape[1:])
    return torch.sqrt(sq.sum(1) + c * c) - c


def consistency_loss(student, x0: torch.Tensor, noise: torch.Tensor, t_next, t_now, *, teacher=None,
                     target=None, distance_kind: str = "pseudo-huber", cond: Optional[dict] = None) -> torch.Tensor:
    """Per-sample consistency loss (B,) for the time pairs t_now < t_next (per sample):

        x_{t_next} = q_sample(x0, t_next, z)
        x_hat      = one DDIM step of ``teacher`` from t_next to t_now      (distillation, CM Alg. 2 /
                     LCM Alg. 1; w fixed by the teacher denoiser given, or per example in
                     ``cond["w"]``, which a weight_input guided teacher and a w-conditioned
                     student both read)
                   = q_sample(x0, t_now, z), the same z                     (training, teacher=None, CM Alg. 3)
        loss       = d(f_theta(x_{t_next}, t_next), f_theta-(x_hat, t_now))

    ``student``: the :class:`ConsistencyDenoiser` being trained (its x0 is f_theta). ``target``:
    f_theta- evaluated without gradient; default the student itself, i.e. theta- = stopgrad(theta)
    (iCT Sec. 3.2, EMA decay mu = 0). ``distance_kind``: see :func:`distance`. The target's and
    the student's calls draw the same dropout masks (the random state is forked around the target
    call, as the authors' ``consistency_losses`` does), so equal inputs give a zero loss."""
    cond = cond or {}
    target = student if target is None else target
    schedule = student.schedule
    x_next = diffusion.q_sample(schedule, x0, t_next, noise)
    with torch.no_grad():
        if teacher is not None:
            x_hat = ddim_teacher_step(teacher, x_next, t_next, t_now, **cond).to(x0.dtype)
        else:
            x_hat = diffusion.q_sample(schedule, x0, t_now, noise)
        device = x0.device
        with fork_device_rng(device):
            f_target = target(x_hat, t_now, **cond).x0.detach()
    f_student = student(x_next, t_next, **cond).x0
    return distance(f_student, f_target, distance_kind)


__all__ = ["ConsistencyDenoiser", "boundary_scalings", "distillation_grid", "consistency_loss", "ddim_teacher_step",
           "distance", "pseudo_huber_c", "SIGMA_DATA", "TIMESTEP_SCALING", "DISTANCES", "OBJECTIVES"]
