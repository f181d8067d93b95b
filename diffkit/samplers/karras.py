"""Karras-style samplers (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models" (EDM); Crowson's k-diffusion): Euler, Heun, Euler-ancestral, DPM2, LMS, iPNDM,
the ancestral DPM2 and DPM-Solver++(2S), and DPM-Solver++ SDE.

They integrate the probability-flow ODE in EDM's variables: ``x~ = x_t / alpha_t`` and
``sigma~ = sqrt((1 - abar)/abar) = sigma_t/alpha_t`` (``schedule.karras_sigma``), where it reads
(EDM eq. 4 with s(t) = 1, sigma(t) = t)

    dx~/dsigma~ = (x~ - D(x~; sigma~)) / sigma~ = eps_hat(alpha x~, t),

so the derivative ``d`` is the model's eps and Euler is DDIM (eta = 0). The sampler maps the VP
state x at grid[0] to x~, steps in sigma~ between the grid times, and returns alpha x~ at grid[-1].
Churn (EDM Algorithm 2, ``s_churn, s_tmin, s_tmax, s_noise``) adds noise to raise sigma~ to
sigma_hat = sigma~ (1 + gamma) before a step; sigma_hat is capped at the schedule's largest
sigma~ (the network is defined for t <= T-1 only). Default grid: ``spacing="karras"`` (EDM eq. 5).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ..errors import DiffkitError, check_range
from ..noise import brownian_path_weights, randn_like
from .common import GridScalars, report, steps
from .dpm_solver import singlestep_chunk
from .pndm import PLMS_COEFFICIENTS


class _KarrasGrid:
    """Grid scalars in EDM variables, computed once: sigma~ and alpha at every grid time; ``x``: the
    sampling state (its dtype and device decide the form of :meth:`vp_scale`)."""

    def __init__(self, schedule, grid, x: torch.Tensor):
        g = GridScalars.of(schedule, grid)
        self.t, self.alpha = g.t, g.alpha
        self.sigma = [0.0 if a == 1.0 and s == 0.0 else s / a for a, s in zip(g.alpha, g.sigma)]
        self.schedule = schedule
        self.sigma_max = schedule.karras_sigma(schedule.num_timesteps - 1).item()
        self._times: dict = {}
        self._scales: dict = {}
        self._scale_dtype = x.dtype if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) else None
        self._know_scales(self.sigma)

    def know(self, sigmas) -> None:
        """Map the sigma~ a loop will ask :meth:`time_of` for in one vectorised call (the inverse map
        costs about 130 us per scalar call on a CPU, 0.4 us per element of a vector), and make their
        :meth:`vp_scale` tensors."""
        new = sorted({s for s in sigmas if s > 0.0 and s not in self._times})
        if new:
            ts = self.schedule.t_from_karras_sigma(torch.tensor(new, dtype=torch.float64)).tolist()
            self._times.update(zip(new, ts))
            self._know_scales(new)

    def _know_scales(self, sigmas) -> None:
        """The :meth:`vp_scale` tensors of ``sigmas``, made in one call (about 0.5 us each, against
        2.5 us for a 0-dim tensor made alone). Multiplying a state of that dtype by such a 0-dim
        CPU tensor is bitwise multiplying by the Python float (the kernel casts that scalar to the
        state's dtype as well), without wrapping a Python scalar into a tensor at every call (about
        1.5 us of a ~12 us Heun call, ``benchmarks/samplers.py --overhead-only``). Made for this run
        only, on the CPU whatever the default device, outside inference mode."""
        new = [s for s in dict.fromkeys(sigmas) if s not in self._scales]
        if self._scale_dtype is None or not new:
            return
        with torch.inference_mode(False):
            scales = torch.tensor([1.0 / math.sqrt(1.0 + s * s) for s in new], dtype=self._scale_dtype, device="cpu")
        self._scales.update(zip(new, scales.unbind(0)))

    def vp_scale(self, sigma: float):
        """alpha = 1/sqrt(1 + sigma~^2), the factor from x~ to the VP state alpha x~: for a float32
        or float64 state on the CPU, a 0-dim tensor of its dtype made once per sigma~ of the run
        (:meth:`_know_scales`); otherwise, and for a sigma~ not known ahead (churn), the float."""
        scale = self._scales.get(sigma)
        return (1.0 / math.sqrt(1.0 + sigma * sigma)) if scale is None else scale

    def time_of(self, sigma: float) -> float:
        t = self._times.get(sigma)
        return float(self.schedule.t_from_karras_sigma(sigma)) if t is None else t

    def midpoint_time(self, i: int, sigma_mid: float) -> float:
        """The time of a midpoint evaluation inside step i. sigma_mid >= sigma_{i+1} (DPM2's log-midpoint;
        the ancestral ones' sqrt(sigma sigma_down) equals sigma_{i+1} at eta = 1, since sigma_down =
        sigma_{i+1}^2/sigma there), so the max only removes rounding below the grid (t < 0 at sigma_min)."""
        return max(self.time_of(sigma_mid), self.t[i + 1])


def _eps(kg: _KarrasGrid, denoiser, x_tilde: torch.Tensor, t: float, sigma: float, cond: dict) -> torch.Tensor:
    """d = (x~ - D(x~; sigma~))/sigma~ = eps_hat at the VP state x = alpha x~ (alpha = 1/sqrt(1 + sigma~^2),
    :meth:`_KarrasGrid.vp_scale`)."""
    return denoiser(x_tilde * kg.vp_scale(sigma), t, **cond).eps


def _churn(kg: _KarrasGrid, i: int, x: torch.Tensor, n: int, s_churn: float, s_tmin: float, s_tmax: float,
           s_noise: float, generator):
    """EDM Algorithm 2 lines 4-6: gamma = min(S_churn/N, sqrt(2) - 1) on [S_tmin, S_tmax]; returns
    (x_hat, sigma_hat, t_hat)."""
    sigma = kg.sigma[i]
    if not (s_churn > 0 and s_tmin <= sigma <= s_tmax):  # gamma = 0
        return x, sigma, kg.t[i]
    gamma = min(s_churn / n, math.sqrt(2.0) - 1.0)
    sigma_hat = min(sigma * (1.0 + gamma), kg.sigma_max)
    if sigma_hat <= sigma:
        return x, sigma, kg.t[i]
    x = x + (s_noise * math.sqrt(sigma_hat ** 2 - sigma ** 2)) * randn_like(x, generator)
    return x, sigma_hat, kg.time_of(sigma_hat)


def _check_churn(s_churn, s_tmin, s_tmax, s_noise):
    check_range("s_churn", s_churn, 0.0, None, finite=False)  # inf: the largest churn, gamma = sqrt 2 - 1
    check_range("s_tmin", s_tmin, 0.0, None)
    check_range("s_tmax", s_tmax, 0.0, None, finite=False)  # inf: churn at every noise level
    check_range("s_noise", s_noise, 0.0, None)


def euler(denoiser, x: torch.Tensor, grid: torch.Tensor, *, s_churn: float = 0.0, s_tmin: float = 0.0,
          s_tmax: float = float("inf"), s_noise: float = 1.0, cond: Optional[dict] = None, generator=None,
          callback=None, progress: bool = False) -> torch.Tensor:
    """Euler (EDM Algorithm 2 without the 2nd-order correction): x~_s = x~ + (sigma_s - sigma_hat) d."""
    _check_churn(s_churn, s_tmin, s_tmax, s_noise)
    cond = cond or {}
    kg = _KarrasGrid(denoiser.schedule, grid, x)
    n = len(grid) - 1
    x = x / kg.alpha[0]
    for i in steps(grid, progress, "euler"):
        x, sigma_hat, t_hat = _churn(kg, i, x, n, s_churn, s_tmin, s_tmax, s_noise, generator)
        d = _eps(kg, denoiser, x, t_hat, sigma_hat, cond)
        x_from, sigma_from = x, sigma_hat
        x = torch.add(x, d, alpha=kg.sigma[i + 1] - sigma_hat)
        if callback is not None:
            report(callback, i, kg.t[i], kg.t[i + 1], kg.alpha[i + 1] * x, x_from - sigma_from * d)
    return kg.alpha[-1] * x


def heun(denoiser, x: torch.Tensor, grid: torch.Tensor, *, s_churn: float = 0.0, s_tmin: float = 0.0,
         s_tmax: float = float("inf"), s_noise: float = 1.0, cond: Optional[dict] = None, generator=None,
         callback=None, progress: bool = False) -> torch.Tensor:
    """Heun's 2nd-order method (EDM Algorithm 2, lines 7-11): Euler to sigma_s, then
    x~_s = x~ + (sigma_s - sigma_hat) (d + d')/2 with d' the slope at the Euler point. The step
    to sigma = 0 is plain Euler (EDM Alg. 2 line 9: no correction when sigma_{i+1} = 0)."""
    _check_churn(s_churn, s_tmin, s_tmax, s_noise)
    cond = cond or {}
    kg = _KarrasGrid(denoiser.schedule, grid, x)
    n = len(grid) - 1
    x = x / kg.alpha[0]
    for i in steps(grid, progress, "heun"):
        x, sigma_hat, t_hat = _churn(kg, i, x, n, s_churn, s_tmin, s_tmax, s_noise, generator)
        d = _eps(kg, denoiser, x, t_hat, sigma_hat, cond)
        x_from, sigma_from = x, sigma_hat
        x = heun_step(denoiser, kg, x, d, sigma_hat, kg.sigma[i + 1], kg.t[i + 1], cond)
        if callback is not None:
            report(callback, i, kg.t[i], kg.t[i + 1], kg.alpha[i + 1] * x, x_from - sigma_from * d)
    return kg.alpha[-1] * x


def heun_step(denoiser, kg: _KarrasGrid, x: torch.Tensor, d: torch.Tensor, sigma: float, sigma_next: float,
              t_next: float, cond: dict) -> torch.Tensor:
    """One Heun step in sigma~ (EDM Algorithm 2, lines 7-11) from x~ at sigma, with its slope d there, to
    sigma_next (network time t_next): x~_E = x~ + (sigma_next - sigma) d, then x~ + (sigma_next - sigma)
    (d + d(x~_E))/2; into sigma_next = 0 it is the Euler point x~_E (line 9: no correction), one call
    less. Shared by :func:`heun` and :func:`~diffkit.samplers.restart.restart`."""
    dt = sigma_next - sigma
    x_euler = torch.add(x, d, alpha=dt)
    if sigma_next == 0.0:
        return x_euler
    d_next = _eps(kg, denoiser, x_euler, t_next, sigma_next, cond)
    return torch.add(x, d + d_next, alpha=0.5 * dt)


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0):
    """(sigma_down, sigma_up) of an ancestral step (k-diffusion ``get_ancestral_step``):
    sigma_up = min(sigma_to, eta sqrt(sigma_to^2 (sigma_from^2 - sigma_to^2)/sigma_from^2)),
    sigma_down = sqrt(sigma_to^2 - sigma_up^2)."""
    if eta == 0.0 or sigma_to == 0.0:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * math.sqrt(sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2))
    return math.sqrt(sigma_to ** 2 - sigma_up ** 2), sigma_up


def euler_ancestral(denoiser, x: torch.Tensor, grid: torch.Tensor, *, eta: float = 1.0, s_noise: float = 1.0,
                    cond: Optional[dict] = None, generator=None, callback=None,
                    progress: bool = False) -> torch.Tensor:
    """Euler-ancestral (k-diffusion ``sample_euler_ancestral``): an Euler step down to sigma_down,
    then fresh noise of std sigma_up, so that the marginal variance at sigma_s matches (eta = 1)."""
    check_range("eta", eta, 0.0, None)
    return _ancestral(denoiser, x, grid, "euler-ancestral", None, eta, s_noise, cond, generator, callback, progress)


def dpm2_ancestral(denoiser, x: torch.Tensor, grid: torch.Tensor, *, eta: float = 1.0, s_noise: float = 1.0,
                   cond: Optional[dict] = None, generator=None, callback=None,
                   progress: bool = False) -> torch.Tensor:
    """DPM2-ancestral (k-diffusion ``sample_dpm_2_ancestral``; diffusers' KDPM2AncestralDiscreteScheduler):
    :func:`dpm2`'s log-midpoint step to sigma_down instead of sigma_s, then noise of std sigma_up
    (:func:`ancestral_step`). The step to sigma = 0 (sigma_down = 0) is Euler. ``eta`` <= 1: above it
    sigma_up can reach sigma_s, where k-diffusion takes a one-call Euler step (the NFE would vary)."""
    check_range("eta", eta, 0.0, 1.0)

    return _ancestral(denoiser, x, grid, "dpm2-ancestral", _dpm2_step, eta, s_noise, cond, generator, callback,
                      progress)


def dpmpp_2s_ancestral(denoiser, x: torch.Tensor, grid: torch.Tensor, *, eta: float = 1.0, s_noise: float = 1.0,
                       cond: Optional[dict] = None, generator=None, callback=None,
                       progress: bool = False) -> torch.Tensor:
    """DPM-Solver++(2S) ancestral (k-diffusion ``sample_dpmpp_2s_ancestral``, "DPM++ 2S a"): one
    DPM-Solver++(2S) step (Lu et al. 2022b, Alg. 1) from sigma to sigma_down with r = 1/2, i.e. its
    inner evaluation at the log-midpoint sigma_mid = sqrt(sigma sigma_down), then noise of std
    sigma_up (:func:`ancestral_step`). In x~ with h = log(sigma/sigma_down) that step is
    x~_mid = (sigma_mid/sigma) x~ - expm1(-h/2) D0,  x~_down = (sigma_down/sigma) x~ - expm1(-h) D(x~_mid).
    The step to sigma = 0 is Euler (x~ = D0). ``eta`` <= 1 as in :func:`dpm2_ancestral`."""
    check_range("eta", eta, 0.0, 1.0)

    return _ancestral(denoiser, x, grid, "dpm-solver++-2s-ancestral", _dpmpp_2s_step, eta, s_noise, cond, generator,
                      callback, progress)


def _ancestral(denoiser, x, grid, name, step, eta, s_noise, cond, generator, callback, progress):
    """The ancestral loop shared by the k-diffusion ancestral samplers: d = eps at sigma, then
    ``step(denoiser, kg, i, x~, d, sigma, sigma_down, cond)`` (None: Euler) to sigma_down, then s_noise sigma_up z.
    A step to sigma_down = 0 is Euler, x~ + (0 - sigma) d = D(x~; sigma), as in k-diffusion."""
    check_range("s_noise", s_noise, 0.0, None)
    cond = cond or {}
    kg = _KarrasGrid(denoiser.schedule, grid, x)
    splits = [ancestral_step(kg.sigma[i], kg.sigma[i + 1], eta) for i in range(len(grid) - 1)]
    if step is not None:
        kg.know(s for i, (down, _) in enumerate(splits) if down > 0.0 for s in step.asks(kg.sigma[i], down))
    x = x / kg.alpha[0]
    for i in steps(grid, progress, name):
        sigma = kg.sigma[i]
        d = _eps(kg, denoiser, x, kg.t[i], sigma, cond)
        x_from = x
        sigma_down, sigma_up = splits[i]
        if step is None or sigma_down == 0.0:
            x = torch.add(x, d, alpha=sigma_down - sigma)
        else:
            x = step(denoiser, kg, i, x, d, sigma, sigma_down, cond)
        if sigma_up > 0:
            x = torch.add(x, randn_like(x, generator), alpha=s_noise * sigma_up)
        if callback is not None:
            report(callback, i, kg.t[i], kg.t[i + 1], kg.alpha[i + 1] * x, x_from - sigma * d)
    return kg.alpha[-1] * x


def _dpmpp_2s_step(denoiser, kg: _KarrasGrid, i: int, x, d, sigma: float, sigma_down: float, cond: dict):
    """DPM-Solver++(2S) from sigma to sigma_down with r = 1/2: the singlestep solver's own order-2
    chunk (:func:`~diffkit.samplers.dpm_solver.singlestep_chunk`) on the three times t,
    t(sigma_mid), t(sigma_down), in VP variables, starting from the data prediction D0 = x~ - sigma d."""
    sigma_mid, _ = _dpmpp_2s_step.asks(sigma, sigma_down)
    times = [kg.t[i], kg.midpoint_time(i, sigma_mid), kg.time_of(sigma_down)]
    c = GridScalars.of(kg.schedule, times)
    x_down, _ = singlestep_chunk(denoiser, kg.alpha[i] * x, c, 0, 2, cond, True, m0=x - sigma * d)
    return x_down / c.alpha[2]


_dpmpp_2s_step.asks = lambda sigma, sigma_down: (math.sqrt(sigma * sigma_down), sigma_down)  # the sigma~ it maps


def dpmpp_sde(denoiser, x: torch.Tensor, grid: torch.Tensor, *, eta: float = 1.0, s_noise: float = 1.0,
              r: float = 0.5, cond: Optional[dict] = None, generator=None, callback=None,
              progress: bool = False) -> torch.Tensor:
    """DPM-Solver++ SDE (k-diffusion ``sample_dpmpp_sde``, "DPM++ SDE Karras"; diffusers'
    ``DPMSolverSDEScheduler``): a stochastic singlestep second-order DPM-Solver++ (Lu et al. 2022b,
    DPM-Solver++, Alg. 1 (2S) with the SDE solver of its Sec. 5), two calls per step. In x~ = x/alpha
    and sigma~ (lambda = -log sigma~), from sigma to sigma_next with sigma_mid = sigma^(1-r) sigma_next^r,
    D0 = D(x~; sigma) and (sd, su) = ancestral_step(sigma, target, eta) (:func:`ancestral_step`):

        x~_mid = (sd_1/sigma) x~ + (1 - sd_1/sigma) D0 + s_noise su_1 z_1      (target sigma_mid)
        D_r    = (1 - 1/(2r)) D0 + 1/(2r) D(x~_mid; sigma_mid)                 (= D(x~_mid; sigma_mid) at r = 1/2)
        x~'    = (sd_2/sigma) x~ + (1 - sd_2/sigma) D_r + s_noise su_2 z_2      (target sigma_next)

    Each line is the first-order DPM-Solver++ step to sd, (sd/sigma) x~ - expm1(-(lambda_sd - lambda)) D;
    at eta = 1, sd = target^2/sigma and su = target sqrt(1 - target^2/sigma^2), i.e. the first-order
    SDE-DPM-Solver++ step of log-SNR step 2h (the DDPM posterior). The noises are increments of ONE
    Brownian path W in k-diffusion's Brownian time sigma~: z_1 = (W(sigma_mid) - W(sigma))/sqrt(sigma -
    sigma_mid), z_2 = (W(sigma_next) - W(sigma))/sqrt(sigma - sigma_next), so Cov(z_1, z_2) =
    sqrt((sigma - sigma_mid)/(sigma - sigma_next)), and paths of different steps are independent.
    k-diffusion reads them from a torchsde Brownian tree; diffkit draws the path exactly at the three
    times (:func:`~diffkit.noise.brownian_path_weights`: two independent Gaussian increments per step
    from the per-sample generators, g_1 then g_2), so a seed does not give k-diffusion's bits but the
    joint law is the same. The step to sigma = 0 is Euler, x~ -> D0 (one call, no noise). As in the
    other Karras samplers the network's eps is the slope d, and D = x~ - sigma~ d. ``r`` must be in
    (0, 1] (k-diffusion also takes r > 1): the Brownian weights read the path at sigma, sigma_mid,
    sigma_next in that order and need sigma_mid between the two ends of the step (r = 1 puts it at
    sigma_next, a zero second increment); r > 1 is a one-line DiffkitError."""
    check_range("eta", eta, 0.0, None)
    check_range("s_noise", s_noise, 0.0, None)
    check_range("r", r)
    if not 0.0 < r <= 1.0:
        raise DiffkitError(f"r={r!r} is out of range; allowed: a number in (0, 1], so that sigma_mid = "
                           "sigma^(1-r) sigma_next^r lies between sigma and sigma_next, where the step's "
                           "Brownian noise reads the path (k-diffusion's tree also takes r > 1)")
    cond = cond or {}
    kg = _KarrasGrid(denoiser.schedule, grid, x)
    noisy = eta > 0.0 and s_noise > 0.0
    plan = [_dpmpp_sde_plan(kg.sigma[i], kg.sigma[i + 1], eta, s_noise, r, noisy) for i in range(len(grid) - 1)]
    kg.know(p[0] for p in plan if p is not None)
    x = x / kg.alpha[0]
    for i in steps(grid, progress, "dpm-solver++-sde"):
        sigma = kg.sigma[i]
        d0 = _eps(kg, denoiser, x, kg.t[i], sigma, cond)
        if plan[i] is None:  # sigma_next = 0: Euler, x~ + (0 - sigma) d0 = D0
            x_new = torch.add(x, d0, alpha=-sigma)
        else:
            sigma_mid, to_mid, k_x, k_d0, k_mid, k_dmid, noise = plan[i]
            g = [randn_like(x, generator), randn_like(x, generator)] if noisy else None
            x_mid = torch.add(x, d0, alpha=to_mid)  # (sd_1/sigma) x~ + (1 - sd_1/sigma) D0 = x~ + (sd_1 - sigma) d0
            if noisy:
                x_mid = torch.add(x_mid, g[0], alpha=noise[0])
            d_mid = _eps(kg, denoiser, x_mid, kg.midpoint_time(i, sigma_mid), sigma_mid, cond)
            x_new = torch.add(x * k_x, x_mid, alpha=k_mid)
            x_new = torch.add(x_new, d_mid, alpha=k_dmid)
            if k_d0 != 0.0:
                x_new = torch.add(x_new, d0, alpha=k_d0)
            if noisy:
                x_new = torch.add(torch.add(x_new, g[0], alpha=noise[1]), g[1], alpha=noise[2])
        if callback is not None:
            report(callback, i, kg.t[i], kg.t[i + 1], kg.alpha[i + 1] * x_new, x - sigma * d0)
        x = x_new
    return kg.alpha[-1] * x


def _dpmpp_sde_plan(sigma: float, sigma_next: float, eta: float, s_noise: float, r: float, noisy: bool):
    """The Python-float coefficients of one :func:`dpmpp_sde` step (None for the Euler step to sigma = 0):
    sigma_mid, sd_1 - sigma, and x~' = k_x x~ + k_d0 d0 + k_mid x~_mid + k_dmid d_mid + noise, which is
    (sd_2/sigma) x~ + (1 - sd_2/sigma) ((1 - fac) (x~ - sigma d0) + fac (x~_mid - sigma_mid d_mid)), fac = 1/(2r),
    with the noise weights (s_noise su_1, s_noise su_2 L_21, s_noise su_2 L_22) of g_1, g_2 in x~_mid and
    x~' (L: :func:`~diffkit.noise.brownian_path_weights` at sigma, sigma_mid, sigma_next)."""
    if sigma_next == 0.0:
        return None
    sigma_mid = math.exp(math.log(sigma) + r * (math.log(sigma_next) - math.log(sigma)))
    (sd_1, su_1), (sd_2, su_2) = ancestral_step(sigma, sigma_mid, eta), ancestral_step(sigma, sigma_next, eta)
    fac = 1.0 / (2.0 * r)
    keep = 1.0 - sd_2 / sigma  # the weight of D_r
    k_x = sd_2 / sigma + keep * (1.0 - fac)
    noise = None
    if noisy:
        (l_11,), (l_21, l_22) = brownian_path_weights([sigma, sigma_mid, sigma_next])
        noise = (s_noise * su_1 * l_11, s_noise * su_2 * l_21, s_noise * su_2 * l_22)
    return (sigma_mid, sd_1 - sigma, k_x, -keep * (1.0 - fac) * sigma, keep * fac, -keep * fac * sigma_mid, noise)


def _dpm2_step(denoiser, kg: _KarrasGrid, i: int, x, d, sigma: float, sigma_to: float, cond: dict) -> torch.Tensor:
    """DPM2's step from sigma to sigma_to > 0 with d at sigma: Euler to the log-midpoint
    sigma_mid = sqrt(sigma sigma_to), then x~ + (sigma_to - sigma) d(sigma_mid)."""
    sigma_mid, = _dpm2_step.asks(sigma, sigma_to)
    x_mid = torch.add(x, d, alpha=sigma_mid - sigma)
    d_mid = _eps(kg, denoiser, x_mid, kg.midpoint_time(i, sigma_mid), sigma_mid, cond)
    return torch.add(x, d_mid, alpha=sigma_to - sigma)


_dpm2_step.asks = lambda sigma, sigma_to: (math.exp(0.5 * (math.log(sigma) + math.log(sigma_to))),)  # its log-midpoint


def dpm2(denoiser, x: torch.Tensor, grid: torch.Tensor, *, s_churn: float = 0.0, s_tmin: float = 0.0,
         s_tmax: float = float("inf"), s_noise: float = 1.0, cond: Optional[dict] = None, generator=None,
         callback=None, progress: bool = False) -> torch.Tensor:
    """DPM2 (k-diffusion ``sample_dpm_2``, DPM-Solver-2's midpoint idea in sigma~): Euler to the
    log-midpoint sigma_mid = sqrt(sigma_t sigma_s), then x~_s = x~ + (sigma_s - sigma_t) d(sigma_mid).
    The step to sigma = 0 is Euler."""
    _check_churn(s_churn, s_tmin, s_tmax, s_noise)
    cond = cond or {}
    kg = _KarrasGrid(denoiser.schedule, grid, x)
    n = len(grid) - 1
    kg.know(_dpm2_step.asks(kg.sigma[i], kg.sigma[i + 1])[0] for i in range(n) if kg.sigma[i + 1] > 0.0)  # unchurned
    x = x / kg.alpha[0]
    for i in steps(grid, progress, "dpm2"):
        x, sigma_hat, t_hat = _churn(kg, i, x, n, s_churn, s_tmin, s_tmax, s_noise, generator)
        d = _eps(kg, denoiser, x, t_hat, sigma_hat, cond)
        x_from, sigma_from = x, sigma_hat
        sigma_s = kg.sigma[i + 1]
        if sigma_s == 0.0:
            x = torch.add(x, d, alpha=sigma_s - sigma_hat)
        else:
            x = _dpm2_step(denoiser, kg, i, x, d, sigma_hat, sigma_s, cond)
        if callback is not None:
            report(callback, i, kg.t[i], kg.t[i + 1], kg.alpha[i + 1] * x, x_from - sigma_from * d)
    return kg.alpha[-1] * x


def lms_coefficients(sigmas, i: int, order: int) -> list:
    """Linear-multistep weights for the step sigmas[i] -> sigmas[i+1] (k-diffusion
    ``linear_multistep_coeff``): c_j = int_{sigma_i}^{sigma_{i+1}} l_j(s) ds with l_j the Lagrange
    basis on the nodes sigma_i, sigma_{i-1}, ..., sigma_{i-order+1} (j = 0 the newest), integrated
    exactly as a polynomial."""
    nodes = [sigmas[i - k] for k in range(order)]
    if order == 1:
        return [sigmas[i + 1] - sigmas[i]]
    coeffs = []
    for j in range(order):
        others = [nodes[k] for k in range(order) if k != j]
        basis = np.polynomial.Polynomial.fromroots(others) / float(np.prod([nodes[j] - o for o in others]))
        antiderivative = basis.integ()
        coeffs.append(float(antiderivative(sigmas[i + 1]) - antiderivative(sigmas[i])))
    return coeffs


def ipndm_coefficients(sigmas, i: int, order: int) -> list:
    """iPNDM's weights for the step sigmas[i] -> sigmas[i+1] (Zhang & Chen 2023, DEIS, Sec. 4 / App.:
    PNDM's pseudo linear multistep applied to the ODE in sigma~ itself): h = sigma_{i+1} - sigma_i
    times the fixed-step Adams-Bashforth weights of PNDM eq. 13 (:data:`~diffkit.samplers.pndm.PLMS_COEFFICIENTS`,
    orders 1-4), whatever the grid's spacing. A step to sigma = 0 is Euler, x~ + (0 - sigma_i) d_i = D
    (ComfyUI's branch of its k-diffusion ``sample_ipndm``: ``x_next = denoised``)."""
    h = sigmas[i + 1] - sigmas[i]
    if sigmas[i + 1] == 0.0:
        return [h]
    return [h * w for w in PLMS_COEFFICIENTS[order]]


def lms(denoiser, x: torch.Tensor, grid: torch.Tensor, *, order: int = 4, cond: Optional[dict] = None,
        generator=None, callback=None, progress: bool = False) -> torch.Tensor:
    """K-LMS (k-diffusion ``sample_lms``; the scheduler of early Stable Diffusion examples): the Adams-Bashforth-type
    update x~_s = x~ + sum_j c_j d_{i-j}, with the weights of :func:`lms_coefficients` (order up to 4,
    lower while the history fills)."""
    return _sigma_multistep(denoiser, x, grid, "lms", lms_coefficients, order, cond, callback, progress)


def ipndm(denoiser, x: torch.Tensor, grid: torch.Tensor, *, order: int = 4, cond: Optional[dict] = None,
          generator=None, callback=None, progress: bool = False) -> torch.Tensor:
    """iPNDM (improved PNDM; Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential
    Integrator" (DEIS), iPNDM; ComfyUI's k-diffusion ``sample_ipndm``, in comfy/k_diffusion/sampling.py,
    from zju-pi/diff-sampler, not in crowsonkb/k-diffusion): x~_s = x~ + (sigma_s - sigma) sum_j w_j d_{i-j}
    with d = eps and the fixed-step Adams-Bashforth weights w of PNDM eq. 13, orders 1, 2, 3, 4 while
    the history fills (:func:`ipndm_coefficients`); one call per step. Unlike PLMS (``plms``), whose
    weights act on eps inside DDIM's transfer, these integrate dx~/dsigma~ = eps directly, as K-LMS
    does with exact variable-step weights."""
    return _sigma_multistep(denoiser, x, grid, "ipndm", ipndm_coefficients, order, cond, callback, progress)


def _sigma_multistep(denoiser, x, grid, name, weights, order, cond, callback, progress):
    """The linear-multistep loop in sigma~ shared by :func:`lms` and :func:`ipndm`:
    d_i = eps at (x~_i, sigma_i), x~_{i+1} = x~_i + sum_j c_ij d_{i-j} (newest first) with
    c_i = weights(sigmas, i, min(i + 1, order)), computed once per grid before the first call."""
    check_range("order", order, 1, 4, integer=True)
    cond = cond or {}
    kg = _KarrasGrid(denoiser.schedule, grid, x)
    coeffs = [weights(kg.sigma, i, min(i + 1, order)) for i in range(len(grid) - 1)]
    x = x / kg.alpha[0]
    history: list = []
    for i in steps(grid, progress, name):
        d = _eps(kg, denoiser, x, kg.t[i], kg.sigma[i], cond)
        history.insert(0, d)
        del history[order:]
        x_from, sigma_from = x, kg.sigma[i]
        for c_j, d_j in zip(coeffs[i], history):
            x = torch.add(x, d_j, alpha=c_j)
        if callback is not None:
            report(callback, i, kg.t[i], kg.t[i + 1], kg.alpha[i + 1] * x, x_from - sigma_from * d)
    return kg.alpha[-1] * x
