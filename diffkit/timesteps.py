"""Time grids for samplers: every spacing in one place.

A grid is a float64 CPU tensor of ``steps + 1`` strictly decreasing times (training-timestep
units, see :mod:`diffkit.schedule`). Step i of a sampler goes from ``grid[i]`` to ``grid[i+1]``;
the network is evaluated at times >= 0 only, and the last entry is the target: ``-1`` (clean data,
``final="zero"``) or ``0`` (the schedule's smallest noise level, ``final="sigma_min"``; diffusers'
``final_sigmas_type``).

Spacings (``T`` = training steps, ``S`` = sampling steps):
    linear      DDIM (Song et al. 2021, Sec. 5 and App. D.2): tau_i = floor(c i), i = 0..S-1, c = T/S
    quadratic   DDIM: tau_i = floor(c i^2), c = 0.8 T/(S-1)^2 (as in the DDIM reference code);
                where that repeats a time (small i when S - 1 > sqrt(0.8 T), e.g. S >= 30 at T = 1000;
                the reference code then takes zero-length steps) tau_i = tau_{i-1} + 1 instead
    leading     diffusers: tau_i = i * (T // S) + offset
    trailing    diffusers / Lin et al. 2024 Table 2: round(T - i T/S) - 1, i = 0..S-1
    strided     improved-diffusion / guided-diffusion's ``timestep_respacing="ddimS"``: tau_i = i k with
                the smallest integer stride k for which range(0, T, k) has exactly S times (k = T // S
                when S divides T, then equal to ``leading``); S that no stride gives is an error
    lcm         diffusers' LCMScheduler (Luo et al. 2023): from LCM's N source times (default
                original_inference_steps N = min(50, T): t_n = n (T // N) - 1), the ones at the
                indices floor(linspace(0, N, S, endpoint=False)), decreasing; S <= N. The
                ``consistency`` sampler's default; a consistency model samples from its own
                source times, the ones its distillation trained on (:func:`lcm_times`)
    linspace    diffusers' DPMSolver/UniPC/DEIS schedulers: round(linspace(0, T-1, S+1)) without
                its 0 (its DDIM/DDPM/PNDM schedulers' 'linspace' is round(linspace(0, T-1, S)),
                which evaluates at t = 0: pass that as a custom grid)
    karras      EDM sigmas (Karras et al. 2022, eq. 5) with rho = 7, mapped to t
    logsnr      uniform in log-SNR lambda (DPM-Solver 'logSNR' skip type)
    logsnr_skip   t_max, then uniform in lambda from sigma~ = ``skip_sigma`` (default 20) to t = 0: the
                first step is one long jump across the high-noise range where the data prediction
                changes little (for data of unit scale x0_hat = E[x0] + Cov[x0] x~/sigma~^2 + ..., which
                moves by O(1/skip_sigma) along the jump), so few steps are spent there; the jump's
                error does not shrink with the step count (an error floor, see docs/samplers.md).
                Not a default: for a trained network the floor is (jump in sigma~) x (change of
                the network's eps across it), far above the solver error (docs/samplers.md).
                With ``skip_sigma`` >= the schedule's largest sigma~ it is ``logsnr``
    logsnr_graded  uniform in a graded log-SNR coordinate (see :func:`graded_log_snr`): uniform in
                lambda between sigma~ = ``grade_sigmas[1]`` (0.1) and ``grade_sigmas[0]`` (1), with
                steps growing geometrically-in-sigma outside that band, from t_max to t = 0
    time_uniform  uniform in continuous t (DPM-Solver 'time_uniform')
    custom      (the ``custom=`` argument of :func:`make_grid`, not a spacing name) any user list of
                evaluation times
The first seven give integer evaluation times (what the network was trained on); the continuous
spacings (karras, logsnr, logsnr_skip, logsnr_graded, time_uniform) give continuous times, which the
schedule's interpolation supports.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from .diffusion import flow_time
from .errors import DiffkitError, check_choice, check_range
from .schedule import NoiseSchedule

# spacings placed by sigma / log-SNR: their first time is t_max = T - 1, where a zero-terminal-SNR
# schedule's sigma and -log SNR are infinite
SIGMA_SPACINGS = ("karras", "logsnr", "logsnr_skip", "logsnr_graded")
# timestep spacings whose last evaluation time is t = 0 (no step is left to final="sigma_min")
ENDS_AT_ZERO = ("linear", "quadratic", "leading", "strided")
SKIP_SIGMA = 20.0
GRADE_SIGMAS = (1.0, 0.1)  # (sigma~_hi, sigma~_lo) of logsnr_graded: unit-scale data
GRADE_POWER = 3.0          # q of logsnr_graded: local error ~ h^3 (second-order steps)
FINALS = ("zero", "sigma_min")
_F64 = torch.float64


def make_grid(schedule: NoiseSchedule, steps: int, spacing: str = "linear", final: str = "zero", *,
              rho: float = 7.0, offset: int = 0, t_max: Optional[float] = None,
              custom: Optional[Sequence[float]] = None, skip_sigma: float = SKIP_SIGMA,
              grade_sigmas: Sequence[float] = GRADE_SIGMAS, grade_power: float = GRADE_POWER,
              lcm_source: Optional[Sequence[float]] = None) -> torch.Tensor:
    """The ``steps + 1`` decreasing grid times for ``steps`` sampler steps (see module doc).

    ``final``: ``zero`` ends at t = -1 (clean data), ``sigma_min`` at t = 0 (the schedule's last
    sigma). ``rho``: the Karras spacing's exponent (EDM's 7). ``offset``: added to every time of
    ``leading`` (diffusers' ``steps_offset``). ``t_max``: the first time (default T - 1).
    ``custom``: the evaluation times themselves (decreasing; ``spacing`` and ``steps`` unused).
    ``skip_sigma``: where ``logsnr_skip`` starts (sigma~ at or below it). ``grade_sigmas`` (high,
    low) and ``grade_power``: the band and the growth outside it of ``logsnr_graded``. ``lcm_source``:
    the increasing source times the ``lcm`` spacing picks from (a consistency model's own; default
    :func:`lcm_times`)."""
    T = schedule.num_timesteps
    check_choice("final", final, FINALS)
    t_end = -1.0 if final == "zero" else 0.0
    if custom is not None:
        return _finish(torch.as_tensor(list(custom), dtype=_F64).flatten(), t_end, T, "custom")
    check_choice("spacing", spacing, SPACINGS)
    check_range("steps", steps, 1, T, integer=True)
    if spacing == "lcm":
        return _finish(_lcm(T, steps, lcm_source), t_end, T, spacing)
    if spacing in _TIMESTEP_SPACINGS:
        return _finish(_TIMESTEP_SPACINGS[spacing](T, steps, offset), t_end, T, spacing)
    top = float(T - 1 if t_max is None else t_max)
    n = steps + 1 if final == "sigma_min" else steps  # sigma_min: the point at t = 0 is the target
    ts = _CONTINUOUS_SPACINGS[spacing](schedule, top, n, rho=rho, skip_sigma=skip_sigma,
                                       grade_sigmas=grade_sigmas, grade_power=grade_power)
    ts[0], ts[-1] = top, 0.0  # remove round-off of the inverse maps at the ends
    return _finish(ts[:-1] if final == "sigma_min" else ts, t_end, T, spacing)


# Timestep spacings: (T, S, offset) -> the S decreasing evaluation times.
def _linear(T: int, S: int, offset: int) -> torch.Tensor:
    return torch.floor(torch.arange(S, dtype=_F64) * (T / S)).flip(0)


def _quadratic(T: int, S: int, offset: int) -> torch.Tensor:
    if S == 1:
        return torch.zeros(1, dtype=_F64)
    c = 0.8 * T / (S - 1) ** 2
    taus = torch.floor(c * torch.arange(S, dtype=_F64) ** 2)
    for i in range(1, S):  # distinct times: a repeat moves up by one (only at the small end)
        taus[i] = max(taus[i], taus[i - 1] + 1)
    return taus.flip(0)


def _leading(T: int, S: int, offset: int) -> torch.Tensor:
    check_range("offset", offset, 0, T - 1, integer=True)
    return (torch.arange(S, dtype=_F64) * (T // S) + offset).flip(0)


def _strided(T: int, S: int, offset: int) -> torch.Tensor:
    # len(range(0, T, k)) = ceil(T / k) for the strides k = 1..T-1 that improved-diffusion tries; the smallest wins
    counts = {-(-T // k): k for k in range(max(T - 1, 1), 0, -1)}
    if S not in counts:
        near = sorted(counts, key=lambda c: (abs(c - S), c))[:2]
        raise DiffkitError(f"steps={S}: no integer stride k gives exactly {S} times range(0, {T}, k) (the "
                           f"'strided' spacing, improved-diffusion's 'ddim{S}'); allowed near it: "
                           f"{', '.join(map(str, sorted(near)))}")
    return torch.arange(0, T, counts[S], dtype=_F64).flip(0)


def _trailing(T: int, S: int, offset: int) -> torch.Tensor:
    # numpy, as diffusers computes it (torch's arange rounds some ties the other way)
    return torch.from_numpy(np.round(np.arange(T, 0, -T / S)).astype(np.float64))[:S] - 1


LCM_ORIGINAL_STEPS = 50  # diffusers' LCMScheduler original_inference_steps


def lcm_original_times(T: int, original_steps: int) -> torch.Tensor:
    """diffusers' ``LCMScheduler`` source times for ``original_inference_steps`` N: t_n = n (T // N) - 1,
    n = 1 .. N, increasing float64 (LCM's training script's DDIM timesteps as well)."""
    return torch.arange(1, original_steps + 1, dtype=_F64) * (T // original_steps) - 1


def lcm_times(T: int, skip: Optional[int] = None) -> torch.Tensor:
    """LCM's increasing float64 source times (Luo et al. 2023, Sec. 4.3): the times consistency
    distillation trains on (:func:`diffkit.consistency.distillation_grid`) and the ``lcm`` spacing
    samples from. ``skip`` None: diffusers' default, :func:`lcm_original_times` with N = min(50, T)
    (k = T // N, e.g. 20 at T = 1000); a skipping step k (1..T-1): t_n = n k - 1, n = 1 .. T // k."""
    if skip is None:
        return lcm_original_times(T, min(LCM_ORIGINAL_STEPS, T))
    if isinstance(skip, bool) or not isinstance(skip, int) or not 1 <= skip <= max(T - 1, 1):
        raise DiffkitError(f"consistency_skip={skip!r} is not allowed; give an integer 1..{max(T - 1, 1)} (timesteps "
                           f"between the teacher step's ends; LCM uses T // 50 = {max(1, T // LCM_ORIGINAL_STEPS)})")
    return torch.arange(1, T // skip + 1, dtype=_F64) * skip - 1


def _lcm(T: int, S: int, origin: Optional[Sequence[float]]) -> torch.Tensor:
    own = origin is not None  # a consistency model's (or LCM folder's) own source times
    origin = (lcm_times(T) if origin is None else torch.as_tensor(origin, dtype=_F64)).flip(0)  # decreasing
    N = len(origin)
    if S > N:
        where = ("one per source time of the grid the model was trained on" if own else
                 f"diffusers' LCMScheduler picks them from its original_inference_steps={N} times")
        raise DiffkitError(f"steps={S}: the 'lcm' spacing takes at most {N} steps ({where}); use fewer steps or "
                           f"another spacing")
    return origin[torch.from_numpy(np.floor(np.linspace(0, N, S, endpoint=False)).astype(np.int64))]


def _linspace(T: int, S: int, offset: int) -> torch.Tensor:
    return torch.from_numpy(np.linspace(0, T - 1, S + 1).round()[::-1][:-1].copy())


# Continuous spacings: (schedule, t_max, n, options) -> n decreasing times from t_max to 0 (the
# ends are then set exactly).
def _karras(schedule: NoiseSchedule, top: float, n: int, *, rho: float, **_) -> torch.Tensor:
    check_range("rho", rho, 0.0, None, low_inclusive=False)
    if not math.isfinite(rho):
        raise DiffkitError(f"rho={rho} is not allowed; give a finite rho > 0 (EDM uses 7)")
    smax, smin = schedule.karras_sigma(top).item(), schedule.karras_sigma(0.0).item()
    return schedule.t_from_karras_sigma(karras_sigmas(n, smin, smax, rho))


def _logsnr(schedule: NoiseSchedule, top: float, n: int, **_) -> torch.Tensor:
    lam = torch.linspace(schedule.log_snr(top).item(), schedule.log_snr(0.0).item(), n, dtype=_F64)
    return schedule.t_from_log_snr(lam)


def _logsnr_skip(schedule: NoiseSchedule, top: float, n: int, *, skip_sigma: float, **_) -> torch.Tensor:
    check_range("skip_sigma", skip_sigma, 0.0, None, low_inclusive=False, finite=False)  # inf: no skip
    lam_top, lam_end = schedule.log_snr(top).item(), schedule.log_snr(0.0).item()
    lam_skip = -math.log(skip_sigma)
    if n < 3 or not lam_top < lam_skip < lam_end:
        lam = torch.linspace(lam_top, lam_end, n, dtype=_F64)
    else:
        lam = torch.cat([torch.tensor([lam_top], dtype=_F64),
                         torch.linspace(lam_skip, lam_end, n - 1, dtype=_F64)])
    return schedule.t_from_log_snr(lam)


def _logsnr_graded(schedule: NoiseSchedule, top: float, n: int, *, grade_sigmas: Sequence[float],
                   grade_power: float, **_) -> torch.Tensor:
    lam = graded_log_snr(n, schedule.log_snr(top).item(), schedule.log_snr(0.0).item(),
                         grade_sigmas, grade_power)
    return schedule.t_from_log_snr(lam)


def _time_uniform(schedule: NoiseSchedule, top: float, n: int, **_) -> torch.Tensor:
    return torch.linspace(top, 0.0, n, dtype=_F64)


_TIMESTEP_SPACINGS = {"linear": _linear, "quadratic": _quadratic, "leading": _leading,
                      "trailing": _trailing, "linspace": _linspace, "strided": _strided, "lcm": _lcm}
_CONTINUOUS_SPACINGS = {"karras": _karras, "logsnr": _logsnr, "logsnr_skip": _logsnr_skip,
                        "logsnr_graded": _logsnr_graded, "time_uniform": _time_uniform}
SPACINGS = tuple(_TIMESTEP_SPACINGS) + tuple(_CONTINUOUS_SPACINGS)  # the names make_grid takes


def _finish(evaluated: torch.Tensor, t_end: float, T: int, name: str) -> torch.Tensor:
    """Validate the evaluation times and append the final target."""
    if evaluated.numel() < 1:
        raise DiffkitError(f"{name} spacing produced no evaluation times")
    if not torch.isfinite(evaluated).all():
        raise DiffkitError(f"{name} timesteps must be finite; got {evaluated.tolist()[:6]}")
    if (evaluated < 0).any() or (evaluated > T - 1).any():
        raise DiffkitError(f"{name} timesteps must lie in [0, {T - 1}]; got {evaluated.tolist()[:6]}")
    if (evaluated[1:] >= evaluated[:-1]).any():
        raise DiffkitError(f"{name} spacing with {evaluated.numel()} steps repeats a timestep "
                           f"({evaluated.tolist()[:6]}...); use fewer steps or another spacing")
    if evaluated[-1] <= t_end:
        raise DiffkitError(f"{name} spacing ends at t={evaluated[-1].item():g}, which leaves no step to "
                           f"final={'sigma_min' if t_end == 0 else 'zero'}; use final='zero'")
    return torch.cat([evaluated, torch.tensor([t_end], dtype=_F64)])


def graded_log_snr(n: int, lam_top: float, lam_end: float, sigmas: Sequence[float] = GRADE_SIGMAS,
                   q: float = GRADE_POWER) -> torch.Tensor:
    """``n`` increasing log-SNR values from ``lam_top`` to ``lam_end``, equally spaced in the graded
    coordinate Phi whose density in lambda is (lambda_hi = -log sigma_hi, lambda_lo = -log sigma_lo)

        dPhi/dlambda = min(1, exp((lambda - lambda_hi)/q), exp(-2 (lambda - lambda_lo)/q)).

    Derivation (error equidistribution): a step of size h whose local error is ~ h^q |d^{q-1}D/dlambda^{q-1}|
    (D = the data prediction x0_hat along the trajectory, q = 3 for second-order steps) has equal
    error everywhere when h ~ |D-scale|^{-1/q}. For sigma~ >> the data scale, D -> E[x0] + Cov[x0] x~/sigma~^2
    (the Gaussian limit of Tweedie's formula; x~ = sigma~ u with u ~ N(0, I)), so D - E[x0] ~ exp(lambda) and
    h ~ exp(-(lambda - lambda_hi)/q): steps grow by the factor exp(1/q) per unit of log sigma~ above
    sigma_hi. For sigma~ below the data's finest scale the trajectory's D = x0 + O(sigma~^2) =
    x0 + O(exp(-2 lambda)), so h ~ exp(2 (lambda - lambda_lo)/q) below sigma_lo. In between, D changes on
    the scale of a unit of lambda and the grid is uniform in lambda (DPM-Solver's logSNR spacing).
    Defaults: unit-scale data (sigma_hi = 1), finest scale sigma_lo = 0.1, q = 3."""
    hi, lo = (float(v) for v in sigmas)
    check_range("grade_sigmas[0]", hi, 0.0, None, low_inclusive=False)
    check_range("grade_sigmas[1]", lo, 0.0, hi, low_inclusive=False, high_inclusive=False)
    check_range("grade_power", q, 0.0, None, low_inclusive=False)
    lam_hi, lam_lo = -math.log(hi), -math.log(lo)
    mid = lam_lo - lam_hi

    def phi(lam: float) -> float:
        if lam < lam_hi:
            return q * math.expm1((lam - lam_hi) / q)
        if lam <= lam_lo:
            return lam - lam_hi
        return mid - 0.5 * q * math.expm1(-2.0 * (lam - lam_lo) / q)

    def phi_inverse(p: torch.Tensor) -> torch.Tensor:
        below = lam_hi + q * torch.log1p((p / q).clamp(min=-1.0 + 1e-15))
        above = lam_lo - 0.5 * q * torch.log1p(-(2.0 * (p - mid) / q).clamp(max=1.0 - 1e-15))
        return torch.where(p < 0, below, torch.where(p <= mid, lam_hi + p, above))

    lam = phi_inverse(torch.linspace(phi(lam_top), phi(lam_end), n, dtype=_F64))
    lam[0], lam[-1] = lam_top, lam_end
    return lam


def grade_sigmas_for(data_scale: Optional[float]) -> tuple:
    """(sigma_hi, sigma_lo) of ``logsnr_graded`` for data of scale ``data_scale`` (the square root of
    the largest eigenvalue of the data's covariance, :func:`diffkit.data.data_scale`): the Gaussian
    limit of the derivation in :func:`graded_log_snr` starts where sigma~ passes the data's largest
    scale, so sigma_hi = ``data_scale``; ``None`` (unknown) keeps unit-scale data, :data:`GRADE_SIGMAS`.
    sigma_lo stays 0.1 (at most sigma_hi / 2)."""
    if data_scale is None:
        return GRADE_SIGMAS
    check_range("data_scale", data_scale, 0.0, None, low_inclusive=False)
    return float(data_scale), min(GRADE_SIGMAS[1], float(data_scale) / 2)


def parse_grade_sigmas(text: str) -> list:
    """``"HI/LO,HI/LO,..."`` -> [(sigma_hi, sigma_lo), ...] for ``logsnr_graded`` probes (checked)."""
    pairs = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        try:
            hi, lo = (float(v) for v in item.split("/"))
        except ValueError:
            raise DiffkitError(f"grade sigmas {item!r} must be HI/LO, e.g. 1/0.1") from None
        if not hi > lo > 0:
            raise DiffkitError(f"grade sigmas {item!r} need HI > LO > 0")
        pairs.append((hi, lo))
    if not pairs:
        raise DiffkitError(f"grade sigmas {text!r}: give at least one HI/LO")
    return pairs


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM's noise levels (Karras et al. 2022, eq. 5): n values from sigma_max down to sigma_min."""
    check_range("n", n, 1, None, integer=True)
    check_range("sigma_min", sigma_min, 0.0, None, low_inclusive=False)
    check_range("sigma_max", sigma_max, sigma_min, None)
    check_range("rho", rho, 0.0, None, low_inclusive=False)
    ramp = torch.linspace(0, 1, n, dtype=_F64)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def trained_flow_shift(schedule: NoiseSchedule) -> Optional[float]:
    """The shift S of a flow schedule (``NoiseSchedule.flow(T, S)``), read from its first flow time
    s_0 = S u/(1 + (S - 1) u), u = 1/T (SD3 eq. 23); None when the schedule is not a flow schedule."""
    T = schedule.num_timesteps
    if T < 2:
        return None
    zero = torch.zeros(1, dtype=_F64)
    s0 = float(flow_time(schedule.alpha(zero), schedule.sigma(zero)))
    shift = s0 * (T - 1) / (1.0 - s0)
    try:
        flow = NoiseSchedule.flow(T, shift)
    except DiffkitError:
        return None
    return shift if torch.allclose(flow.alphas_cumprod, schedule.alphas_cumprod, rtol=1e-9, atol=1e-15) else None


def reshift_flow_grid(schedule: NoiseSchedule, grid: torch.Tensor, shift: float) -> torch.Tensor:
    """A flow model's time grid moved to the sampling shift ``shift`` (SD3 eq. 23 at sampling time, as
    diffusers' ``FlowMatchEulerDiscreteScheduler(shift=S)`` applies it to its sigmas): every flow time s of
    the grid, shift_train(u) on the training schedule, becomes shift_S(u). Shifts compose
    (shift_a(shift_b(u)) = shift_ab(u): the odds s/(1 - s) are multiplied by the shift), so that is
    shift_{S/S_train}(s), the log-SNR lowered by log(S/S_train); s = 1 (t = T - 1) and clean data (t = -1)
    stay. A time moved below t = 0 (S < S_train) is held at t = 0, the schedule's smallest noise level (the
    network is evaluated at t >= 0 only); two there is a one-line DiffkitError. ``shift`` equal to the training
    shift returns ``grid`` itself. A schedule that is not ``NoiseSchedule.flow`` is a one-line DiffkitError."""
    check_range("flow shift", shift, 0.0, math.inf, low_inclusive=False, high_inclusive=False)
    trained = trained_flow_shift(schedule)
    if trained is None:
        raise DiffkitError(f"flow_shift={shift!r} re-places a flow-matching model's grid; this schedule is not a "
                           f"flow schedule (NoiseSchedule.flow: a model trained with schedule=flow)")
    if math.isclose(shift, trained, rel_tol=1e-9):
        return grid
    T = schedule.num_timesteps
    inner = (grid > -1) & (grid < T - 1)  # s = 1 and clean data are fixed points of every shift
    log_snr = schedule.log_snr(grid[inner]) - math.log(shift / trained)
    out = grid.clone()
    out[inner] = schedule.t_from_log_snr(log_snr).clamp(min=0.0)  # the network is evaluated at t >= 0 only
    if not (out[1:] < out[:-1]).all():
        below = int((schedule.t_from_log_snr(log_snr) < 0).sum())
        raise DiffkitError(f"flow_shift={shift!r} (trained with {trained:g}) moves {below} grid times below t = 0, the "
                           f"schedule's smallest noise level, where the network is not evaluated; use fewer steps or "
                           f"a shift closer to {trained:g}")
    return out


__all__ = ["SPACINGS", "FINALS", "make_grid", "karras_sigmas", "graded_log_snr", "grade_sigmas_for",
           "parse_grade_sigmas", "trained_flow_shift", "reshift_flow_grid"]
