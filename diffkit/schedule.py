"""The noise schedule: one object every loss and sampler reads (README "Design"; the team's design
sketch, abstraction 1).

A discrete variance-preserving schedule is built from betas (DDPM, Ho et al. 2020, eq. 2; alpha_bar as
defined before eq. 4):
``alpha_bar_t = prod_{s<=t} (1 - beta_s)`` for training timesteps ``t = 0 .. T-1``.

Time convention (used everywhere in diffkit): time is measured in *training-timestep units*.
``t = k`` for an integer ``k`` in ``0..T-1`` is the k-th training step exactly; ``t = -1`` is
clean data (``alpha_bar = 1``, ``sigma = 0``, log-SNR ``+inf``), the target of a sampler's last
step. Between integers, ``log alpha_t = 0.5 log alpha_bar_t`` is interpolated piecewise
linearly, as DPM-Solver does for discrete-time models (Lu et al. 2022, Appendix D.1), so every
quantity is defined for any continuous ``t`` in ``[-1, T-1]`` and the maps invert exactly.

Quantities (all float64 on the CPU; callers cast to their device and dtype):
    alpha_t  = sqrt(alpha_bar_t)               (signal scale)
    sigma_t  = sqrt(1 - alpha_bar_t)           (noise scale)
    lambda_t = log(alpha_t / sigma_t)          (half the log-SNR: SNR = exp(2 lambda); DPM-Solver Sec. 3.1)
    karras_sigma_t = sigma_t / alpha_t         (EDM / k-diffusion sigma, Karras et al. 2022)
"""
from __future__ import annotations

import inspect
import math
from typing import Sequence

import torch

from .errors import DiffkitError, check_choice, check_range

SCHEDULE_NAMES = ("linear", "cosine", "scaled_linear", "sigmoid", "flow", "edm")

_F64 = torch.float64
# NoiseSchedule.edm: how closely the VP schedule (alpha_bar = 1/(1 + sigma^2), float64) must give its sigmas back
_EDM_SIGMA_RTOL = 1e-6


def as_cpu_times(t) -> torch.Tensor:
    """Any scalar / sequence / tensor of times as a float64 CPU tensor. A device tensor is copied
    to the CPU before the cast: mps has no float64 (and a list of floats is never read as float32)."""
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().to(_F64)
    return torch.as_tensor(t, dtype=_F64)


class NoiseSchedule:
    """A discrete VP noise schedule with continuous-time access and inverse maps.

    Build with :meth:`linear`, :meth:`cosine`, :meth:`scaled_linear`, :meth:`sigmoid`,
    :meth:`from_betas` or :meth:`from_name`; see the module docstring for the time convention.
    """

    def __init__(self, betas: Sequence[float] | torch.Tensor):
        try:
            betas = as_cpu_times(betas).clone()
        except (TypeError, ValueError, RuntimeError):
            raise DiffkitError(f"betas of type {type(betas).__name__} are not allowed; give a 1-D sequence of "
                               f"floats in (0, 1]") from None
        if betas.ndim != 1 or betas.numel() < 1:
            raise DiffkitError(f"betas must be a non-empty 1-D array; got shape {tuple(betas.shape)}")
        if not torch.isfinite(betas).all() or (betas <= 0).any() or (betas > 1).any():
            bad = betas[~(torch.isfinite(betas) & (betas > 0) & (betas <= 1))][0].item()
            raise DiffkitError(f"beta={bad!r} is out of range; every beta must lie in (0, 1]")
        if (betas[:-1] >= 1).any():
            raise DiffkitError("beta=1 is allowed only at the last timestep (zero terminal SNR)")
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, 0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=_F64), self.alphas_cumprod[:-1]])
        self.num_timesteps = int(betas.numel())
        # log alpha_t on the grid t = -1, 0, ..., T-1 (index t + 1); -inf where alpha_bar = 0.
        self._log_alpha_grid = 0.5 * torch.log(torch.cat([torch.ones(1, dtype=_F64), self.alphas_cumprod]))
        # the same grid as Python floats, and whether it reaches -inf (alpha_bar = 0: zero terminal SNR,
        # or an underflow), for the scalar path of log_alpha (the schedule is never changed after this)
        self._log_alpha_list = self._log_alpha_grid.tolist()
        self._grid_has_inf = bool(torch.isinf(self._log_alpha_grid).any())

    # ------------------------------------------------------------------ constructors
    @classmethod
    def linear(cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """DDPM's linear betas (Ho et al. 2020, Sec. 4: 1e-4 .. 0.02 over T = 1000)."""
        _check_T(num_timesteps)
        _check_beta_pair(beta_start, beta_end)
        return cls(torch.linspace(beta_start, beta_end, num_timesteps, dtype=_F64))

    @classmethod
    def scaled_linear(cls, num_timesteps: int = 1000, beta_start: float = 0.00085,
                      beta_end: float = 0.012) -> "NoiseSchedule":
        """Stable Diffusion's betas: linear in sqrt(beta) (Rombach et al. 2022)."""
        _check_T(num_timesteps)
        _check_beta_pair(beta_start, beta_end)
        return cls(torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_timesteps, dtype=_F64) ** 2)

    @classmethod
    def cosine(cls, num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "NoiseSchedule":
        """Improved DDPM's cosine schedule (Nichol & Dhariwal 2021, eq. 17).

        ``alpha_bar(t) = f(t)/f(0)``, ``f(t) = cos^2(((t/T) + s)/(1 + s) * pi/2)``; betas
        ``1 - alpha_bar(t+1)/alpha_bar(t)`` clipped at ``max_beta`` to avoid the singularity at t = T.
        """
        _check_T(num_timesteps)
        check_range("s", s, 0.0, None, low_inclusive=True)
        check_range("max_beta", max_beta, 0.0, 1.0, low_inclusive=False)

        def f(t):
            return math.cos((t / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2

        betas = [min(1 - f(i + 1) / f(i), max_beta) for i in range(num_timesteps)]
        return cls(torch.tensor(betas, dtype=_F64))

    @classmethod
    def sigmoid(cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """Sigmoid-shaped betas between beta_start and beta_end (GeoDiff; diffusers 'sigmoid')."""
        _check_T(num_timesteps)
        _check_beta_pair(beta_start, beta_end)
        x = torch.linspace(-6, 6, num_timesteps, dtype=_F64)
        return cls(torch.sigmoid(x) * (beta_end - beta_start) + beta_start)

    @classmethod
    def flow(cls, num_timesteps: int = 1000, shift: float = 1.0) -> "NoiseSchedule":
        """The rectified-flow path x_s = (1 - s) x_0 + s eps (Liu et al. 2023; SD3, Esser et al.
        2024, Sec. 3) as the VP schedule of the same SNR: step i is flow time
        s_i = shift(i+1)/T, with SD3's shift (eq. 23, alpha = ``shift``) s -> shift s / (1 + (shift - 1) s),
        the times of diffusers' FlowMatchEulerDiscreteScheduler (its sigmas), and
        alpha_bar_i = (1 - s_i)^2 / ((1 - s_i)^2 + s_i^2). s_{T-1} = 1: zero terminal SNR."""
        _check_T(num_timesteps)
        check_range("flow_shift", shift, 0.0, None, low_inclusive=False)
        s = flow_shift(torch.arange(1, num_timesteps + 1, dtype=_F64) / num_timesteps, shift)
        alphas_cumprod = (1 - s) ** 2 / ((1 - s) ** 2 + s ** 2)
        alphas = torch.cat([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
        return cls(1.0 - alphas)

    @classmethod
    def edm(cls, num_timesteps: int = 1000, sigma_min: float = 0.002, sigma_max: float = 80.0,
            rho: float = 7.0) -> "NoiseSchedule":
        """EDM's noise levels (Karras et al. 2022, eq. 5 and Table 1, "time steps", rho = 7) as the VP
        schedule of equal SNR: step i has Karras sigma_i = (sigma_min^(1/rho) + i/(T-1) (sigma_max^(1/rho)
        - sigma_min^(1/rho)))^rho, from sigma_min (t = 0) to sigma_max (t = T-1), and
        alpha_bar_i = 1/(1 + sigma_i^2): diffusers' EDMEulerScheduler sigmas after set_timesteps(T), reversed."""
        from .timesteps import karras_sigmas  # (timesteps imports this module)
        _check_T(num_timesteps)
        check_range("sigma_min", sigma_min, 0.0, None, low_inclusive=False)
        check_range("sigma_max", sigma_max, sigma_min, None, low_inclusive=False)
        sigmas = karras_sigmas(num_timesteps, sigma_min, sigma_max, rho).flip(0)
        alphas_cumprod = 1 / (1 + sigmas ** 2)
        betas = 1.0 - torch.cat([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
        error = math.inf
        if bool(((betas > 0) & (betas < 1)).all()):  # else 1/(1 + sigma^2) rounds to 1 (or a ratio to 0)
            schedule = cls(betas)
            error = ((schedule.karras_sigma(torch.arange(num_timesteps, dtype=_F64)) - sigmas) / sigmas).abs().max()
        if not error <= _EDM_SIGMA_RTOL:
            how = ("has a beta of 0 or 1" if math.isinf(error) else
                   f"gives its sigmas back {float(error):.1e} off (relative; allowed {_EDM_SIGMA_RTOL:g})")
            raise DiffkitError(f"EDM's sigma range sigma_min={sigma_min} .. sigma_max={sigma_max} (edm_sigma_min, "
                               f"edm_sigma_max) is not held by the VP schedule of equal SNR in float64: it {how}; "
                               f"raise sigma_min or lower sigma_max")
        return schedule

    @classmethod
    def from_betas(cls, betas) -> "NoiseSchedule":
        """Any user array of betas (each in (0, 1]; 1 only at the last step)."""
        return cls(betas)

    @classmethod
    def from_name(cls, name: str, num_timesteps: int = 1000, *, zero_terminal_snr: bool = False,
                  **kwargs) -> "NoiseSchedule":
        """Build by name: one of :data:`SCHEDULE_NAMES`."""
        check_choice("schedule", name, SCHEDULE_NAMES)
        builder = getattr(cls, name)
        accepted = [p for p in inspect.signature(builder).parameters if p != "num_timesteps"]
        unknown = [k for k in kwargs if k not in accepted]
        if unknown:
            raise DiffkitError(f"option {unknown[0]!r} is not one the {name} schedule takes; it takes "
                               f"{', '.join(accepted) or 'none'}")
        schedule = builder(num_timesteps, **kwargs)
        return schedule.rescale_zero_terminal_snr() if zero_terminal_snr else schedule

    def rescale_zero_terminal_snr(self) -> "NoiseSchedule":
        """Rescale so that alpha_bar at t = T-1 is exactly 0 (Lin et al. 2024, Algorithm 1).

        sqrt(alpha_bar) is shifted so its last value is 0 and scaled so its first is unchanged.
        """
        sqrt_ab = self.alphas_cumprod.sqrt()
        first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
        if self.num_timesteps < 2:
            raise DiffkitError("zero-terminal-SNR rescale needs at least 2 timesteps")
        sqrt_ab = (sqrt_ab - last) * first / (first - last)
        alphas_cumprod = sqrt_ab ** 2
        alphas = torch.cat([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
        return NoiseSchedule(1.0 - alphas)

    def respace(self, timesteps: Sequence[int] | torch.Tensor) -> "NoiseSchedule":
        """The schedule restricted to an increasing subsequence of integer timesteps.

        Its betas are ``1 - alpha_bar_{tau_i} / alpha_bar_{tau_{i-1}}`` (Nichol & Dhariwal 2021,
        Sec. 4; seed 002), so DDPM ancestral sampling runs on S < T steps; its step i is the
        original timestep ``timesteps[i]``.
        """
        ts = torch.as_tensor(timesteps, dtype=torch.long).flatten()
        if ts.numel() < 1 or (ts[1:] <= ts[:-1]).any() or ts[0] < 0 or ts[-1] >= self.num_timesteps:
            raise DiffkitError(
                f"respace timesteps must be strictly increasing integers in [0, {self.num_timesteps - 1}]; "
                f"got {ts.tolist()[:8]}{'...' if ts.numel() > 8 else ''}")
        abar = self.alphas_cumprod[ts]
        abar_prev = torch.cat([torch.ones(1, dtype=_F64), abar[:-1]])
        return NoiseSchedule(1.0 - abar / abar_prev)

    # ------------------------------------------------------------------ continuous time
    def log_alpha(self, t) -> torch.Tensor:
        """log alpha_t = 0.5 log alpha_bar_t, piecewise linear in t over [-1, T-1]; on the last
        interval of a zero-terminal-SNR schedule (alpha_{T-1} = 0, log alpha = -inf) alpha itself
        is linear, alpha_t = alpha_{T-2} (T - 1 - t), so it stays positive until T - 1.

        A single time (a number, or a tensor whose entries are all one time: what samplers and the
        bound ask for at every step) on a schedule without alpha_bar = 0 takes a Python-float path
        with the same IEEE operations as the tensor path (floor, then a + frac (b - a), each operation
        rounded once), so its result has the same bits, in a float64 CPU tensor of the input's shape.

        Times are detached (read as float64 CPU values): the result is not differentiable in t."""
        if not self._grid_has_inf:
            if type(t) is float or (type(t) is int and abs(t) <= 2 ** 53):
                return self._scalar_log_alpha(float(t), ())
            if isinstance(t, torch.Tensor) and t.numel() == 1 and not t.is_complex():
                return self._scalar_log_alpha(float(t.detach().cpu().to(_F64)), t.shape)
        t = as_cpu_times(t)
        if not self._grid_has_inf and t.numel() > 1:
            flat = t.flatten()
            # one time (B,)? The full pass only where the first and last entries agree (not a training batch).
            if bool(flat[0] == flat[-1]) and bool((flat == flat[0]).all()):
                return self._scalar_log_alpha(flat[0].item(), t.shape)
        if not bool(((t >= -1) & (t <= self.num_timesteps - 1)).all()):  # NaN fails both
            raise self._out_of_range(_first_bad(t, -1, self.num_timesteps - 1))
        pos = t + 1.0
        lo = pos.floor().clamp(0, self.num_timesteps - 1).long()
        frac = pos - lo.to(_F64)
        a, b = self._log_alpha_grid[lo], self._log_alpha_grid[(lo + 1).clamp(max=self.num_timesteps)]
        out = torch.where(frac == 0, a, a + frac * (b - a))
        if not self._grid_has_inf:
            return out
        to_zero = torch.isinf(b) & torch.isfinite(a) & (frac > 0)  # the zero-terminal-SNR interval
        return torch.where(to_zero, a + torch.log1p(-frac.clamp(max=1.0)), out) if to_zero.any() else out

    def _scalar_log_alpha(self, t: float, shape) -> torch.Tensor:
        """:meth:`log_alpha` at one time ``t`` on a grid without -inf, as a tensor of ``shape``."""
        T = self.num_timesteps
        if not -1 <= t <= T - 1:  # NaN fails both
            raise self._out_of_range(t)
        pos = t + 1.0
        lo = min(max(math.floor(pos), 0), T - 1)
        frac = pos - lo
        a = self._log_alpha_list[lo]
        out = a if frac == 0 else a + frac * (self._log_alpha_list[min(lo + 1, T)] - a)
        return torch.full(shape, out, dtype=_F64)

    def _out_of_range(self, t: float) -> DiffkitError:
        """The one-line error for a time ``t`` outside [-1, T-1]."""
        return DiffkitError(f"time t={t!r} is out of range; allowed: [-1, {self.num_timesteps - 1}] "
                            "(-1 = clean data)")

    def alpha(self, t) -> torch.Tensor:
        """alpha_t = sqrt(alpha_bar_t)."""
        return torch.exp(self.log_alpha(t))

    def alpha_bar(self, t) -> torch.Tensor:
        """alpha_bar_t (exactly ``alphas_cumprod[t]`` at integer t; 1 at t = -1)."""
        return torch.exp(2.0 * self.log_alpha(t))

    def sigma(self, t) -> torch.Tensor:
        """sigma_t = sqrt(1 - alpha_bar_t), computed as sqrt(-expm1(2 log alpha)) for precision."""
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def log_snr(self, t) -> torch.Tensor:
        """lambda_t = log(alpha_t / sigma_t), half the log-SNR (DPM-Solver Sec. 3.1); +inf at t = -1."""
        la = self.log_alpha(t)
        return la - 0.5 * torch.log(-torch.expm1(2.0 * la))

    def karras_sigma(self, t) -> torch.Tensor:
        """The EDM sigma = sqrt((1 - alpha_bar)/alpha_bar) = exp(-lambda); 0 at t = -1."""
        return torch.exp(-self.log_snr(t))

    # ------------------------------------------------------------------ inverse maps
    def t_from_log_alpha(self, log_alpha) -> torch.Tensor:
        """Inverse of :meth:`log_alpha` (the piecewise-linear interpolation inverted exactly)."""
        la = as_cpu_times(log_alpha)
        grid = self._log_alpha_grid  # decreasing in t, grid[0] = 0 at t = -1
        finite = torch.isfinite(grid)
        lo_bound = grid[finite][-1]
        zero_terminal = not bool(finite.all())  # alpha_{T-1} = 0: log alpha reaches -inf on the last interval
        # a round trip t -> log SNR -> log alpha may land a few ulps outside the range: clamp those
        tol = 1e-12 * max(1.0, abs(lo_bound.item()))
        outside = (la > tol) | ((la < lo_bound - tol) if not zero_terminal else torch.isnan(la))
        if outside.any():
            low = "-inf" if zero_terminal else f"{lo_bound.item():.6g}"
            raise DiffkitError(f"log_alpha={la[outside].flatten()[0].item()!r} is outside the schedule's range "
                               f"[{low}, 0]")
        last = la < lo_bound  # only on a zero-terminal-SNR schedule: alpha linear in t there (see log_alpha)
        t_last = (finite.sum() - 2).to(_F64) - torch.expm1(la - lo_bound)
        la = la.clamp(lo_bound, 0.0)
        # searchsorted needs increasing values: flip the decreasing grid.
        flipped = (-grid[finite]).contiguous()
        idx = torch.searchsorted(flipped, (-la).contiguous(), right=False).clamp(1, flipped.numel() - 1)
        x0, x1 = flipped[idx - 1], flipped[idx]
        frac = ((-la) - x0) / (x1 - x0)
        t = (idx - 1).to(_F64) + frac - 1.0
        return torch.where(last, t_last, t) if last.any() else t

    def t_from_log_snr(self, log_snr) -> torch.Tensor:
        """Inverse of :meth:`log_snr`: alpha = sigmoid(2 lambda)^(1/2), then invert log alpha."""
        lam = as_cpu_times(log_snr)
        log_alpha = -0.5 * torch.nn.functional.softplus(-2.0 * lam)
        return self.t_from_log_alpha(log_alpha)

    def t_from_karras_sigma(self, karras_sigma) -> torch.Tensor:
        """Inverse of :meth:`karras_sigma` (sigma = 0 gives t = -1)."""
        s = as_cpu_times(karras_sigma)
        if (s < 0).any():
            raise DiffkitError(f"karras sigma={s.flatten()[0].item()!r} must be >= 0")
        return self.t_from_log_snr(-torch.log(s))

    # ------------------------------------------------------------------ misc
    def __repr__(self) -> str:
        return (f"NoiseSchedule(T={self.num_timesteps}, beta[0]={self.betas[0].item():.4g}, "
                f"beta[-1]={self.betas[-1].item():.4g}, alpha_bar[-1]={self.alphas_cumprod[-1].item():.4g})")

    def state_dict(self) -> dict:
        """The betas, which define the schedule completely (for checkpoints)."""
        return {"betas": self.betas.clone()}

    @classmethod
    def from_state_dict(cls, state: dict) -> "NoiseSchedule":
        return cls(state["betas"])


def flow_shift(s, shift: float):
    """SD3's timestep shift (Esser et al. 2024, eq. 23 with alpha = ``shift``; diffusers'
    ``shift``): s -> shift s / (1 + (shift - 1) s), fixing 0 and 1; ``shift`` = 1 is the identity."""
    if shift == 1.0:
        return s
    return shift * s / (1 + (shift - 1) * s)


def _check_T(num_timesteps) -> None:
    check_range("num_timesteps (T)", num_timesteps, 1, None, integer=True)


def _check_beta_pair(beta_start, beta_end) -> None:
    check_range("beta_start (beta_1)", beta_start, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    check_range("beta_end (beta_T)", beta_end, 0.0, 1.0, low_inclusive=False)
    if beta_end < beta_start:  # the noise would fall over time; TrainConfig refuses it too
        raise DiffkitError(f"beta_end={beta_end} is below beta_start={beta_start}; the betas must not decrease")


def _first_bad(t: torch.Tensor, low: float, high: float) -> float:
    bad = t[(t < low) | (t > high) | torch.isnan(t)]
    return bad.flatten()[0].item() if bad.numel() else float("nan")
