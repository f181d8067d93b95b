"""Diffusion math: pure functions of a :class:`~diffkit.schedule.NoiseSchedule`.

The forward process, the posterior q(x_s | x_t, x_0) between any two times s < t, the
conversions between the eps / x0 / v / score parameterisations, and the reverse-step mean and
variance p(x_s | x_t) for fixed or learned variance. References:
    DDPM   = Ho et al. 2020 (seed 001)        Improved DDPM = Nichol & Dhariwal 2021 (seed 002)
    v-pred = Salimans & Ho 2022               DDIM          = Song et al. 2021 (seeds 000, 003)
    rectified flow = Liu et al. 2023; flow matching = Lipman et al. 2023; SD3 = Esser et al. 2024
    EDM    = Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"

Coefficients are computed in float64 on the CPU from the schedule and cast to ``x``'s device and
dtype; a coefficient of shape (B,) is broadcast over the trailing dimensions of ``x``.
"""
from __future__ import annotations

import math
from typing import NoReturn

import torch

from .errors import DiffkitError, check_choice
from .schedule import NoiseSchedule, as_cpu_times

VP_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")  # networks of the VP state x_t at time t
# "flow_prediction" (diffusers' name): a rectified-flow network u(x_s, s T) of the flow state (see flow_input)
# "edm": EDM's preconditioned network F(c_in x, c_noise), D = c_skip x + c_out F (see edm_preconditioning)
PREDICTION_TYPES = VP_PREDICTION_TYPES + ("flow_prediction", "edm")
VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned_range")


def expand(coef, x: torch.Tensor) -> torch.Tensor:
    """Cast a scalar or (B,) coefficient to ``x``'s device/dtype, shaped to broadcast over ``x``."""
    coef = torch.as_tensor(coef).to(device=x.device, dtype=x.dtype)
    if coef.ndim == 0:
        return coef
    return coef.reshape(coef.shape[0], *([1] * (x.ndim - 1)))


# ---------------------------------------------------------------- forward process
def q_sample(schedule: NoiseSchedule, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
    """Sample x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (DDPM eq. 4)."""
    t = as_cpu_times(t)
    return expand(schedule.alpha(t), x0) * x0 + expand(schedule.sigma(t), x0) * noise


def q_mean_variance(schedule: NoiseSchedule, x0: torch.Tensor, t):
    """Mean, variance and log-variance of q(x_t | x_0) (DDPM eq. 4)."""
    t = as_cpu_times(t)
    abar = schedule.alpha_bar(t)
    return expand(abar.sqrt(), x0) * x0, expand(1 - abar, x0), expand(torch.log1p(-abar), x0)


# ---------------------------------------------------------------- posterior
def posterior_coefficients(schedule: NoiseSchedule, t, s=None):
    """Coefficients of q(x_s | x_t, x_0) for s < t (s = t - 1 by default), in float64.

    With beta_{t|s} = 1 - abar_t/abar_s (the respaced beta, seed 002), DDPM eq. 6-7 generalise to
        mean = sqrt(abar_s) beta_{t|s}/(1 - abar_t) x_0 + sqrt(abar_t/abar_s) (1 - abar_s)/(1 - abar_t) x_t
        var  = beta-tilde = (1 - abar_s)/(1 - abar_t) beta_{t|s}.
    Returns ``(coef_x0, coef_xt, variance, beta_ts)``.
    """
    t = as_cpu_times(t)
    s = t - 1 if s is None else as_cpu_times(s)
    abar_t, abar_s = schedule.alpha_bar(t), schedule.alpha_bar(s)
    beta_ts = 1 - abar_t / abar_s
    one_minus_abar_t = -torch.expm1(torch.log(abar_t))
    coef_x0 = abar_s.sqrt() * beta_ts / one_minus_abar_t
    coef_xt = (abar_t / abar_s).sqrt() * (1 - abar_s) / one_minus_abar_t
    variance = (1 - abar_s) / one_minus_abar_t * beta_ts
    return coef_x0, coef_xt, variance, beta_ts


def posterior_mean_variance(schedule: NoiseSchedule, x0: torch.Tensor, x_t: torch.Tensor, t, s=None):
    """Mean, variance and clipped log-variance of q(x_s | x_t, x_0) (DDPM eq. 6-7).

    The log-variance is clipped as in Improved DDPM: at the last step (s = -1) the variance is 0,
    so its log is replaced by that of the next step's posterior variance.
    """
    t = as_cpu_times(t)
    s = t - 1 if s is None else as_cpu_times(s)
    return _posterior_mean_variance(schedule, x0, x_t, posterior_coefficients(schedule, t, s))


def _posterior_mean_variance(schedule: NoiseSchedule, x0, x_t, coefficients):
    """:func:`posterior_mean_variance` from the step's :func:`posterior_coefficients`."""
    coef_x0, coef_xt, variance, _ = coefficients
    mean = _mean(expand(coef_x0, x_t), x0, expand(coef_xt, x_t), x_t)
    return mean, expand(variance, x_t), expand(_clip_log_variance(schedule, variance), x_t)


def _mean(coef_x0, x0, coef_xt, x_t):
    """The posterior mean coef_x0 x_0 + coef_xt x_t (DDPM eq. 7), the coefficients already shaped for x_t."""
    return coef_x0 * x0 + coef_xt * x_t


def clipped_log_variance(schedule: NoiseSchedule, t, s) -> torch.Tensor:
    """log beta-tilde_{t|s}, with the zero variance at s = -1 replaced by the variance of the step
    from t=1 to t=0 (improved-diffusion's ``posterior_log_variance_clipped``)."""
    t, s = as_cpu_times(t), as_cpu_times(s)
    return _clip_log_variance(schedule, posterior_coefficients(schedule, t, s)[2])


def _clip_log_variance(schedule: NoiseSchedule, variance: torch.Tensor) -> torch.Tensor:
    """:func:`clipped_log_variance` of the posterior ``variance`` (``posterior_coefficients(...)[2]``)
    already at hand: log variance, its zeros (steps to clean data) replaced by the step 1 -> 0's."""
    if bool((variance > 0).all()):  # no step to clean data: the fallback is not needed
        return torch.log(variance)
    return torch.log(torch.where(variance > 0, variance, _first_step_variance(schedule)))


def _first_step_variance(schedule: NoiseSchedule) -> torch.Tensor:
    """beta-tilde of the step t=1 -> t=0 (beta_0 on a one-step schedule)."""
    if schedule.num_timesteps > 1:
        return posterior_coefficients(schedule, torch.tensor(1.0, dtype=torch.float64),
                                      torch.tensor(0.0, dtype=torch.float64))[2]
    return schedule.betas[0]


# ---------------------------------------------------------------- parameterisations
def x0_from_eps(x_t, eps, alpha, sigma):
    """x_0 = (x_t - sigma_t eps) / alpha_t (DDPM eq. 4 solved for x_0)."""
    return (x_t - expand(sigma, x_t) * eps) / expand(alpha, x_t)


def eps_from_x0(x_t, x0, alpha, sigma):
    """eps = (x_t - alpha_t x_0) / sigma_t."""
    return (x_t - expand(alpha, x_t) * x0) / expand(sigma, x_t)


def v_from_eps_x0(eps, x0, alpha, sigma):
    """v = alpha_t eps - sigma_t x_0 (Salimans & Ho 2022, Sec. 4)."""
    return expand(alpha, eps) * eps - expand(sigma, eps) * x0


def x0_from_v(x_t, v, alpha, sigma):
    """x_0 = alpha_t x_t - sigma_t v (Salimans & Ho 2022, with alpha^2 + sigma^2 = 1)."""
    return expand(alpha, x_t) * x_t - expand(sigma, x_t) * v


def eps_from_v(x_t, v, alpha, sigma):
    """eps = sigma_t x_t + alpha_t v."""
    return expand(sigma, x_t) * x_t + expand(alpha, x_t) * v


def flow_time(alpha, sigma):
    """The rectified-flow time s of the VP time with these (alpha_t, sigma_t): the flow path
    x_s = (1 - s) x_0 + s eps (Liu et al. 2023, eq. 1; SD3 eq. 1 with a_t = 1 - t, b_t = t) has
    SNR ((1 - s)/s)^2, equal to alpha_t^2/sigma_t^2 at s = sigma_t / (alpha_t + sigma_t)
    (1 at alpha_t = 0, zero terminal SNR). Floats or tensors."""
    return sigma / (alpha + sigma)


def flow_input(x_t, alpha, sigma):
    """The flow state x_s of the VP state x_t at equal SNR: x_s = x_t / (alpha_t + sigma_t)
    (x_t = alpha_t x_0 + sigma_t eps, and (1 - s, s) = (alpha_t, sigma_t) / (alpha_t + sigma_t))."""
    if isinstance(alpha, float) and isinstance(sigma, float):
        return x_t * (1.0 / (alpha + sigma))
    return x_t / expand(alpha + sigma, x_t)


def eps_x0_from_flow(x_t, u, alpha, sigma):
    """(eps, x_0) from a velocity u = eps - x_0 (Lipman et al. 2023, eq. 23 with sigma_min = 0;
    SD3 eq. 3) at the VP state x_t: with x_s = x_t / (alpha_t + sigma_t) and s = flow_time,
    x_0 = x_s - s u = (x_t - sigma_t u)/(alpha_t + sigma_t) and
    eps = x_s + (1 - s) u = (x_t + alpha_t u)/(alpha_t + sigma_t)."""
    if isinstance(alpha, float) and isinstance(sigma, float):
        c = 1.0 / (alpha + sigma)
        return (x_t + alpha * u) * c, (x_t - sigma * u) * c
    c = expand(alpha + sigma, x_t)
    return (x_t + expand(alpha, x_t) * u) / c, (x_t - expand(sigma, x_t) * u) / c


def edm_preconditioning(sigma, sigma_data: float):
    """EDM's preconditioning at noise level sigma (Karras et al. 2022, Table 1, "Network and
    preconditioning"; eq. 7): (c_skip, c_out, c_in, c_noise) with
    c_skip = sd^2/(sigma^2 + sd^2), c_out = sigma sd/sqrt(sigma^2 + sd^2), c_in = 1/sqrt(sigma^2 + sd^2),
    c_noise = ln(sigma)/4, sd = ``sigma_data``; the denoiser is D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)
    of the VE state x = x_0 + sigma eps. Floats or tensors."""
    lib = math if isinstance(sigma, float) else torch
    total = sigma ** 2 + sigma_data ** 2
    root = lib.sqrt(total)
    return sigma_data ** 2 / total, sigma * sigma_data / root, 1 / root, 0.25 * lib.log(sigma)


def edm_sigma(alpha, sigma):
    """EDM's sigma of the VP time with these (alpha_t, sigma_t): the VE state x_t / alpha_t = x_0 + (sigma_t /
    alpha_t) eps has the same SNR (the Karras sigma, ``NoiseSchedule.karras_sigma``). Floats or tensors."""
    return sigma / alpha


def edm_input(x_t, alpha, sigma, sigma_data: float):
    """The network's input c_in x of the VE state x = x_t / alpha_t at sigma = sigma_t / alpha_t (EDM Table 1):
    c_in x = x_t / sqrt(sigma_t^2 + alpha_t^2 sd^2) (alpha_t^2 + sigma_t^2 = 1)."""
    if isinstance(alpha, float) and isinstance(sigma, float):
        return x_t * (1.0 / math.sqrt(sigma ** 2 + alpha ** 2 * sigma_data ** 2))
    return x_t / expand(torch.sqrt(sigma ** 2 + alpha ** 2 * sigma_data ** 2), x_t)


def eps_x0_from_edm(x_t, out, alpha, sigma, sigma_data: float):
    """(eps, x_0) from EDM's network output F at the VP state x_t: x_0 = D = c_skip x + c_out F (EDM eq. 7,
    Table 1) of x = x_t / alpha_t at sigma = sigma_t / alpha_t, and eps = (x - D)/sigma. With
    r = sqrt(sigma_t^2 + alpha_t^2 sd^2): x_0 = (alpha_t sd^2 / r^2) x_t + (sigma_t sd / r) F and
    eps = (sigma_t / r^2) x_t - (alpha_t sd / r) F."""
    if isinstance(alpha, float) and isinstance(sigma, float):
        r2 = sigma ** 2 + alpha ** 2 * sigma_data ** 2
        r = math.sqrt(r2)
        return x_t * (sigma / r2) - out * (alpha * sigma_data / r), x_t * (alpha * sigma_data ** 2 / r2) + \
            out * (sigma * sigma_data / r)
    r2 = sigma ** 2 + alpha ** 2 * sigma_data ** 2
    r = torch.sqrt(r2)
    return (expand(sigma / r2, x_t) * x_t - expand(alpha * sigma_data / r, x_t) * out,
            expand(alpha * sigma_data ** 2 / r2, x_t) * x_t + expand(sigma * sigma_data / r, x_t) * out)


def edm_target(x0, noise, sigma, sigma_data: float):
    """The regression target of EDM's F at x = x_0 + sigma eps: (x_0 - c_skip x)/c_out (EDM eq. 8 and Table 1),
    ``sigma`` a (B,) tensor (EDM's, not the VP sigma_t)."""
    c_skip, c_out, _, _ = edm_preconditioning(sigma, sigma_data)
    x = x0 + expand(sigma, x0) * noise
    return (x0 - expand(c_skip, x0) * x) / expand(c_out, x0)


def score_from_eps(eps, sigma):
    """Score grad log q(x_t) = -eps / sqrt(1 - abar_t) (seed 002; Song et al. 2021)."""
    return -eps / expand(sigma, eps)


def eps_x0_from_output(output, x_t, alpha, sigma, prediction_type: str, sigma_data: float | None = None):
    """Convert a network output of the given prediction type to (eps, x0); ``sigma_data``: an ``edm`` network's."""
    if prediction_type == "edm":
        if sigma_data is None:
            raise DiffkitError("prediction_type='edm' converts its output with EDM's sigma_data; give sigma_data")
        return eps_x0_from_edm(x_t, output, alpha, sigma, sigma_data)
    if isinstance(alpha, float) and isinstance(sigma, float):  # one time for the batch: no tensors
        if prediction_type == "epsilon":
            return output, (x_t - sigma * output) / alpha
        if prediction_type == "sample":
            return (x_t - alpha * output) / sigma, output
        if prediction_type == "v_prediction":
            return sigma * x_t + alpha * output, alpha * x_t - sigma * output
    if prediction_type == "flow_prediction":
        return eps_x0_from_flow(x_t, output, alpha, sigma)
    if prediction_type == "epsilon":
        return output, x0_from_eps(x_t, output, alpha, sigma)
    if prediction_type == "sample":
        return eps_from_x0(x_t, output, alpha, sigma), output
    if prediction_type == "v_prediction":
        return eps_from_v(x_t, output, alpha, sigma), x0_from_v(x_t, output, alpha, sigma)
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    raise AssertionError("unreachable")


def target_for(prediction_type: str, x0, eps, alpha, sigma):
    """The regression target of a network of the given prediction type."""
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    if prediction_type == "edm":
        raise DiffkitError("prediction_type='edm' regresses F at EDM's sigma: use diffkit.diffusion.edm_target")
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    if prediction_type == "flow_prediction":  # u = eps - x_0 (Lipman et al. 2023, eq. 23; SD3 eq. 3)
        return eps - x0
    return v_from_eps_x0(eps, x0, alpha, sigma)


# ---------------------------------------------------------------- x0 thresholding
def clip_x0(x0: torch.Tensor, limit: float = 1.0) -> torch.Tensor:
    """Static thresholding: clip predicted x_0 to [-limit, limit] (DDPM's 'clip_denoised')."""
    return x0.clamp(-limit, limit)


def dynamic_threshold(x0: torch.Tensor, ratio: float = 0.995, max_value: float = math.inf) -> torch.Tensor:
    """Dynamic thresholding (Saharia et al. 2022, Imagen Sec. 2.3): per sample, s = the ``ratio``
    quantile of |x0|, clamped to [1, max_value] (default no cap, as Imagen); x0 is clipped to
    [-s, s] and divided by s."""
    flat = x0.reshape(x0.shape[0], -1).abs().float()
    s = torch.quantile(flat, ratio, dim=1).clamp(min=1.0, max=max_value).to(x0.dtype)
    s = expand(s, x0)
    return torch.maximum(torch.minimum(x0, s), -s) / s


# ---------------------------------------------------------------- reverse step
def model_log_variance(schedule: NoiseSchedule, t, s, variance_type: str, var_values=None,
                       like: torch.Tensor | None = None) -> torch.Tensor:
    """log Sigma of p(x_s | x_t) for a reverse step from t to s (s < t).

    ``fixed_small``: beta-tilde_{t|s} (clipped, see :func:`clipped_log_variance`);
    ``fixed_large``: beta_{t|s} (DDPM Sec. 3.2, sigma^2 = beta), with beta-tilde_1 (the posterior
    variance of the step t=1 -> 0, as improved-diffusion) at the step to clean data;
    ``learned_range``: Improved DDPM eq. 15, Sigma = exp(v log beta + (1 - v) log beta-tilde),
    with the network output ``var_values`` in [-1, 1] mapped to v = (var_values + 1)/2.
    """
    t, s = as_cpu_times(t), as_cpu_times(s)
    return _model_log_variance(schedule, s, posterior_coefficients(schedule, t, s), variance_type, var_values, like)


def _model_log_variance(schedule: NoiseSchedule, s: torch.Tensor, coefficients, variance_type: str, var_values,
                        like) -> torch.Tensor:
    """:func:`model_log_variance` from the step's :func:`posterior_coefficients` (computed once per step)."""
    check_choice("variance_type", variance_type, VARIANCE_TYPES)
    return _log_variance_of(_log_variance_parts(schedule, s, coefficients, variance_type), variance_type,
                            var_values, like)


def _log_variance_parts(schedule: NoiseSchedule, s: torch.Tensor, coefficients, variance_type: str):
    """What :func:`model_log_variance` needs of the schedule: log Sigma (fixed types) or
    (log beta_{t|s}, clipped log beta-tilde_{t|s}) (``learned_range``), float64 on the CPU."""
    _, _, variance, beta_ts = coefficients
    if variance_type == "fixed_large":
        # improved-diffusion: log(cat(posterior_variance[1], betas[1:])) -> at the first step use beta-tilde_1.
        if schedule.num_timesteps > 1 and bool((s < 0).any()):
            return torch.log(torch.where(s < 0, _first_step_variance(schedule).expand_as(beta_ts), beta_ts))
        return torch.log(beta_ts)
    log_small = _clip_log_variance(schedule, variance)
    return log_small if variance_type == "fixed_small" else (torch.log(beta_ts), log_small)


def _no_variance() -> NoReturn:
    """Raise the one-line error for ``learned_range`` without the network's variance output."""
    raise DiffkitError("variance_type='learned_range' needs a network with a learned variance "
                       "(learned_variance=True); use fixed_small or fixed_large")


def _log_variance_of(parts, variance_type: str, var_values, like) -> torch.Tensor:
    """log Sigma from :func:`_log_variance_parts` (and, for ``learned_range``, the network's ``var_values``)."""
    if variance_type != "learned_range":
        return parts if like is None else expand(parts, like)
    if var_values is None:
        _no_variance()
    log_beta, log_small = parts
    frac = (var_values + 1) / 2
    return frac * expand(log_beta, var_values) + (1 - frac) * expand(log_small, var_values)


def p_mean_variance(schedule: NoiseSchedule, x_t: torch.Tensor, x0_pred: torch.Tensor, t, s=None,
                    variance_type: str = "fixed_small", var_values=None):
    """Mean and log-variance of p_theta(x_s | x_t): the posterior mean at the predicted x_0
    (DDPM eq. 7 at the predicted x_0; eq. 11 for an eps network) and the variance of :func:`model_log_variance`."""
    t = as_cpu_times(t)
    s = t - 1 if s is None else as_cpu_times(s)
    return _p_mean_variance(schedule, x_t, x0_pred, s, posterior_coefficients(schedule, t, s), variance_type,
                            var_values)


def _p_mean_variance(schedule: NoiseSchedule, x_t, x0_pred, s, coefficients, variance_type, var_values):
    """:func:`p_mean_variance` from the step's :func:`posterior_coefficients`."""
    coef_x0, coef_xt, _, _ = coefficients
    mean = _mean(expand(coef_x0, x_t), x0_pred, expand(coef_xt, x_t), x_t)
    return mean, _model_log_variance(schedule, s, coefficients, variance_type, var_values, like=x_t)


class ReverseSteps:
    """p_theta(x_s | x_t) for every step grid[i] -> grid[i+1] of a sampler's grid, with what the
    steps take from the schedule computed once per grid: the posterior coefficients and the fixed
    parts of the log-variance (:func:`posterior_coefficients`, :func:`model_log_variance`) for all
    steps at once in float64 on the CPU, cast once to the samples' device and dtype.
    ``to_clean[i]`` says whether step i goes to clean data (s < 0; a sampler adds no noise there).
    :meth:`mean_log_variance` returns what :func:`p_mean_variance` returns at step i: the same
    operations on the same values (elementwise, so computing them for the whole grid at once
    changes no bit; ``benchmarks/bitwise_probe.py`` checks it)."""

    def __init__(self, schedule: NoiseSchedule, grid, variance_type: str = "fixed_small"):
        check_choice("variance_type", variance_type, VARIANCE_TYPES)
        times = as_cpu_times(grid)
        t, s = times[:-1], times[1:]
        coefficients = posterior_coefficients(schedule, t, s)
        self.variance_type = variance_type
        self.to_clean = (s < 0).tolist()  # per step: is it the step to clean data (s = -1)?
        self._parts = (coefficients[0], coefficients[1], _log_variance_parts(schedule, s, coefficients,
                                                                            variance_type))
        self._cast: dict = {}

    def _at(self, like: torch.Tensor):
        """(coef_x0, coef_xt, log-variance parts) in ``like``'s device and dtype (cast once each)."""
        key = (like.device, like.dtype)
        hit = self._cast.get(key)
        if hit is None:
            def cast(v):
                return v.to(device=like.device, dtype=like.dtype)
            coef_x0, coef_xt, parts = self._parts
            hit = self._cast[key] = (cast(coef_x0), cast(coef_xt),
                                     tuple(map(cast, parts)) if isinstance(parts, tuple) else cast(parts))
        return hit

    def mean_log_variance(self, i: int, x_t: torch.Tensor, x0_pred: torch.Tensor, var_values=None):
        """(mean, log-variance) of p_theta(x_s | x_t) at step i (:func:`p_mean_variance`)."""
        coef_x0, coef_xt, parts = self._at(x_t)
        mean = _mean(coef_x0[i], x0_pred, coef_xt[i], x_t)
        if self.variance_type != "learned_range":
            return mean, parts[i]
        if var_values is None:
            _no_variance()
        log_beta, log_small = self._at(var_values)[2]
        return mean, _log_variance_of((log_beta[i], log_small[i]), self.variance_type, var_values, None)


def posterior_and_reverse(schedule: NoiseSchedule, x0: torch.Tensor, x_t: torch.Tensor, x0_pred: torch.Tensor, t,
                          variance_type: str = "fixed_small", var_values=None):
    """(mean, variance, log-variance) of q(x_{t-1} | x_t, x_0) (:func:`posterior_mean_variance`) and
    (mean, log-variance) of p_theta(x_{t-1} | x_t) (:func:`p_mean_variance`), the two the VLB term
    compares, from one computation of the step's coefficients."""
    t = as_cpu_times(t)
    s = t - 1
    coefficients = posterior_coefficients(schedule, t, s)
    return (_posterior_mean_variance(schedule, x0, x_t, coefficients),
            _p_mean_variance(schedule, x_t, x0_pred, s, coefficients, variance_type, var_values))
