"""Training objectives and likelihood terms (DDPM, seed 001; Improved DDPM, seed 002).

    L_simple = E ||target - net(x_t, t)||^2                     (DDPM eq. 14; eps, x0 or v target)
    L_vlb    = L_0 + sum_t L_{t-1} + L_T                        (DDPM eq. 5)
    L_hybrid = L_simple + lambda L_vlb, lambda = 0.001          (Improved DDPM eq. 16)
    L_flow   = E ||(eps - x_0) - u(x_s, s T)||^2, x_s = (1 - s) x_0 + s eps
                                                               (flow matching: Lipman et al. 2023, eq. 23;
                                                                SD3 eq. 3 and eq. 19's densities of s)
    L_edm    = E lambda(sigma) ||D(x_0 + sigma eps; sigma) - x_0||^2, ln sigma ~ N(P_mean, P_std^2)
                                                               (EDM, Karras et al. 2022, eq. 8 and Table 1)
L_simple may be weighted per timestep: min-SNR-gamma (Hang et al. 2023) or P2 (Choi et al. 2022),
and x_t may be made from perturbed noise (input perturbation, Ning et al. 2023); see
:func:`training_losses`.
with L_{t-1} = KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) and L_0 the discretised Gaussian decoder
for 8-bit data scaled to [-1, 1] (DDPM eq. 13). In the hybrid loss the KL term only trains the
variance: the mean goes through a stop-gradient (Improved DDPM Sec. 3.1). L_vlb alone trains a
learned variance (Improved DDPM Sec. 3.1) or, with a fixed Sigma, only the mean (DDPM Table 2's
"L, fixed isotropic Sigma"; there L_{t-1} is eq. 8 plus a constant, for an eps network eq. 12's
weighted eps-MSE).
All per-example terms are in bits per dimension (nats / (D log 2)) unless named ``*_nats``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from . import diffusion
from .config import FIXED_VARIANCES  # sigma_t^2 = beta-tilde_t or beta_t (DDPM Sec. 3.2)
from .config import check_loss_weighting
from .errors import DiffkitError, check_choice, check_range
from .schedule import NoiseSchedule, as_cpu_times

LOSS_TYPES = ("simple", "hybrid", "vlb")


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all but the batch dimension."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Phi(x) = erfc(-x / sqrt 2) / 2: accurate in the lower tail, where 1 + erf(x / sqrt 2) cancels."""
    return 0.5 * torch.erfc(-x / math.sqrt(2.0))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log p(x) of 8-bit data in [-1, 1] under N(means, e^{2 log_scales}) integrated over each
    pixel's bin of width 2/255, with the edge bins extended to -inf / +inf (DDPM eq. 13); a bin
    probability below 1e-12 counts as 1e-12 (improved-diffusion). Every probability is taken where
    the CDFs are small (an inner bin mirrored to the mean's left, the top bin as Phi(-z)), so that
    float32 does not subtract two numbers near 1."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    half_bin = 1.0 / 255.0
    left = -centered.abs()  # P(|X - m| in the bin) is the same on the mirrored side
    mid = _standard_normal_cdf(inv_stdv * (left + half_bin)) - _standard_normal_cdf(inv_stdv * (left - half_bin))
    bottom = _standard_normal_cdf(inv_stdv * (centered + half_bin))  # x = -1: P(X < -1 + 1/255)
    top = _standard_normal_cdf(-inv_stdv * (centered - half_bin))  # x = 1: P(X > 1 - 1/255)

    def log(p):
        return torch.log(p.clamp(min=1e-12))
    return torch.where(x < -0.999, log(bottom), torch.where(x > 0.999, log(top), log(mid)))


def _bits(nats: torch.Tensor) -> torch.Tensor:
    return mean_flat(nats) / math.log(2.0)


def prior_bpd(schedule: NoiseSchedule, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) in bits/dim (DDPM eq. 5; no parameters)."""
    t = torch.full((x0.shape[0],), float(schedule.num_timesteps - 1), dtype=torch.float64)
    mean, _, log_var = diffusion.q_mean_variance(schedule, x0, t)
    return _bits(normal_kl(mean, log_var, torch.zeros_like(mean), torch.zeros_like(log_var)))


def vlb_term_bpd(schedule: NoiseSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                 x0_pred: torch.Tensor, variance_type: str, var_values=None) -> torch.Tensor:
    """The VLB term at integer t, per example in bits/dim: L_{t-1} = KL(q || p_theta) for t > 0,
    and the decoder NLL L_0 = -log p_theta(x_0 | x_1) for t = 0 (DDPM eq. 5 and 13)."""
    t = as_cpu_times(t)
    (true_mean, _, true_log_var), (mean, log_var) = diffusion.posterior_and_reverse(
        schedule, x0, x_t, x0_pred, t, variance_type, var_values)
    kl = _bits(normal_kl(true_mean, true_log_var, mean, log_var))
    nll = -_bits(discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var))
    return torch.where((t == 0).to(kl.device), nll, kl)


@dataclass
class LossOutput:
    """Per-example losses: ``loss`` (what is optimised), and its parts ``mse`` and ``vlb``."""

    loss: torch.Tensor
    mse: torch.Tensor
    vlb: Optional[torch.Tensor] = None


def min_snr_weight(schedule: NoiseSchedule, t: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma weighting (Hang et al. 2023, eq. 8), expressed for each target:
    eps: min(SNR, gamma)/SNR; x0: min(SNR, gamma); v: min(SNR, gamma)/(SNR + 1)."""
    snr = torch.exp(2 * schedule.log_snr(as_cpu_times(t)))
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "sample":
        return clipped
    return clipped / (snr + 1)


def p2_weight(schedule: NoiseSchedule, t: torch.Tensor, gamma: float, k: float = 1.0) -> torch.Tensor:
    """P2 weighting (Choi et al. 2022, eq. 8) of the eps loss L_simple: 1 / (k + SNR(t))^gamma,
    SNR(t) = abar_t / (1 - abar_t); the paper's k = 1, gamma in {0.5, 1}."""
    snr = torch.exp(2 * schedule.log_snr(as_cpu_times(t)))
    return (k + snr) ** -gamma


def training_losses(net, schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, *,
                    prediction_type: str = "epsilon", loss_type: str = "simple", learned_variance: bool = False,
                    fixed_variance: str = "fixed_small", hybrid_lambda: float = 0.001,
                    min_snr_gamma: Optional[float] = None, p2_gamma: Optional[float] = None, p2_k: float = 1.0,
                    input_noise: Optional[torch.Tensor] = None, cond: Optional[dict] = None) -> LossOutput:
    """Per-example training loss for a batch at integer timesteps ``t`` (DDPM Alg. 1, line 5).

    ``loss_type``: ``simple`` (L_simple), ``hybrid`` (L_simple + lambda L_vlb, needs a learned
    variance; the L_vlb term with a stop-gradient on the mean) or ``vlb`` (L_vlb alone: with a
    learned variance it trains the mean and the variance; otherwise Sigma is ``fixed_variance``,
    ``fixed_small`` = beta-tilde_t or ``fixed_large`` = beta_t, and it trains the mean).

    L_vlb is estimated by T times the sampled term :func:`vlb_term_bpd` in bits/dim, so lambda =
    0.001 reproduces improved-diffusion's ``vb * T/1000``. The term is the whole KL, its
    constant included (with a fixed Sigma, DDPM eq. 8: ||mu-tilde - mu_theta||^2 / (2 sigma_t^2)
    plus the part that does not depend on theta), and L_0 is the decoder NLL (eq. 13): for uniform t,
    E_t[T L_t] = L_0 + ... + L_{T-1} is the bound of DDPM eq. 5 less its parameter-free prior term
    L_T (:func:`prior_bpd`, below 1e-4 bits/dim for DDPM's T = 1000 linear schedule).

    L_simple is weighted by :func:`min_snr_weight` (``min_snr_gamma``) or, for an eps network, by
    :func:`p2_weight` (``p2_gamma``, ``p2_k``); in the hybrid loss only L_simple is, as P2's
    guided-diffusion code does. ``input_noise``: the noise x_t is made from where it is not
    ``noise``, while the target stays ``noise`` (input perturbation, Ning et al. 2023, Alg. 1:
    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) (eps + gamma xi), loss ||eps - eps_theta(x_t, t)||^2).
    """
    check_choice("loss_type", loss_type, LOSS_TYPES)
    check_choice("prediction_type", prediction_type, diffusion.PREDICTION_TYPES)
    check_choice("fixed_variance", fixed_variance, FIXED_VARIANCES)
    check_range("hybrid_lambda", hybrid_lambda, 0.0, None)
    check_loss_weighting(loss_type, prediction_type, min_snr_gamma, p2_gamma, p2_k, loss_name="loss_type")
    if prediction_type == "flow_prediction":
        raise DiffkitError("prediction_type='flow_prediction' trains at continuous flow times: use "
                           "diffkit.losses.flow_matching_losses")
    if prediction_type == "edm":
        raise DiffkitError("prediction_type='edm' trains at EDM's continuous sigma: use diffkit.losses.edm_losses")
    cond = cond or {}
    t64 = as_cpu_times(t)
    alpha, sigma = schedule.alpha(t64), schedule.sigma(t64)
    x_t = diffusion.q_sample(schedule, x0, t64, noise if input_noise is None else input_noise)
    out = net(x_t, t64.to(device=x0.device, dtype=torch.float32), **cond)
    var_values = None
    if learned_variance:
        out, var_values = out.chunk(2, dim=1)
    out = out.to(torch.promote_types(out.dtype, torch.float32))  # low-precision outputs: loss in fp32
    if var_values is not None:
        var_values = var_values.to(out.dtype)
    target = diffusion.target_for(prediction_type, x0, noise, alpha, sigma)
    mse = mean_flat((target - out) ** 2)
    if min_snr_gamma is not None:
        mse = mse * min_snr_weight(schedule, t64, min_snr_gamma, prediction_type).to(mse.device, mse.dtype)
    if p2_gamma is not None:
        mse = mse * p2_weight(schedule, t64, p2_gamma, p2_k).to(mse.device, mse.dtype)
    if loss_type == "simple":
        return LossOutput(loss=mse, mse=mse)
    if loss_type == "hybrid" and var_values is None:
        raise DiffkitError("loss_type='hybrid' needs a network with a learned variance (learned_variance=True); "
                           "with a fixed variance use 'simple' or 'vlb'")
    # In L_hybrid the VLB term trains only the variance, L_simple the mean: a stop-gradient on the
    # mean (Improved DDPM Sec. 3.1); L_vlb alone trains both.
    mean_out = out.detach() if loss_type == "hybrid" else out
    _, x0_pred = diffusion.eps_x0_from_output(mean_out, x_t, alpha, sigma, prediction_type)
    variance_type = "learned_range" if var_values is not None else fixed_variance
    vlb = vlb_term_bpd(schedule, x0, x_t, t64, x0_pred, variance_type, var_values)
    vlb = vlb * schedule.num_timesteps  # T x one term (bits/dim) estimates the full L_vlb
    if loss_type == "vlb":
        return LossOutput(loss=vlb, mse=mse, vlb=vlb)
    return LossOutput(loss=mse + hybrid_lambda * vlb, mse=mse, vlb=vlb)


def edm_losses(net, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, sigma_data: float,
               cond: Optional[dict] = None) -> LossOutput:
    """Per-example EDM loss at noise levels ``sigma`` > 0 (B,) (Karras et al. 2022, eq. 8 and Table 1): the
    network ``net(c_in x, c_noise)`` of x = x_0 + sigma eps regresses (x_0 - c_skip x)/c_out with unit weight,
    which is lambda(sigma) ||D(x; sigma) - x_0||^2 with lambda = (sigma^2 + sd^2)/(sigma sd)^2 = 1/c_out^2
    (:func:`diffkit.diffusion.edm_preconditioning`). ``sigma``'s density is the caller's
    (:class:`~diffkit.timestep_sampling.EDMSigmas`). ``mse`` is the same per-example mean."""
    sigma64 = as_cpu_times(sigma)
    if sigma64.shape != (x0.shape[0],) or not bool((sigma64 > 0).all()) or not bool(torch.isfinite(sigma64).all()):
        raise DiffkitError(f"EDM noise levels must be a ({x0.shape[0]},) tensor of finite sigma > 0; got shape "
                           f"{tuple(sigma64.shape)}")
    _, _, c_in, c_noise = diffusion.edm_preconditioning(sigma64, sigma_data)
    x = x0 + diffusion.expand(sigma64, x0) * noise
    out = net(diffusion.expand(c_in, x0) * x, c_noise.to(device=x0.device, dtype=torch.float32), **(cond or {}))
    out = out.to(torch.promote_types(out.dtype, torch.float32))  # low-precision outputs: loss in fp32
    mse = mean_flat((diffusion.edm_target(x0, noise, sigma64, sigma_data) - out) ** 2)
    return LossOutput(loss=mse, mse=mse)


def flow_matching_losses(net, x0: torch.Tensor, s: torch.Tensor, noise: torch.Tensor, num_timesteps: int,
                         cond: Optional[dict] = None) -> LossOutput:
    """Per-example conditional flow-matching loss at flow times ``s`` in [0, 1] (B,): the network
    ``net(x_s, s T)`` regresses the velocity u = eps - x_0 of the rectified-flow path
    x_s = (1 - s) x_0 + s eps (Lipman et al. 2023, eq. 23 with sigma_min = 0; Liu et al. 2023,
    eq. 1; SD3, Esser et al. 2024, eq. 3 and Sec. 3.1), its time in units of ``num_timesteps`` (T)
    as :class:`~diffkit.denoiser.Denoiser` gives it. ``s``'s density is the caller's
    (:class:`~diffkit.timestep_sampling.FlowTimes`)."""
    s64 = as_cpu_times(s)
    if s64.shape != (x0.shape[0],) or not bool(((s64 >= 0) & (s64 <= 1)).all()):
        raise DiffkitError(f"flow times must be a ({x0.shape[0]},) tensor in [0, 1]; got shape {tuple(s64.shape)}")
    coef = diffusion.expand(s64, x0)
    x_s = (1 - coef) * x0 + coef * noise
    out = net(x_s, (s64 * num_timesteps).to(device=x0.device, dtype=torch.float32), **(cond or {}))
    out = out.to(torch.promote_types(out.dtype, torch.float32))  # low-precision outputs: loss in fp32
    target = diffusion.target_for("flow_prediction", x0, noise, None, None)
    mse = mean_flat((target - out) ** 2)
    return LossOutput(loss=mse, mse=mse)
