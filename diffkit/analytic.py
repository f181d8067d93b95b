"""Exact denoisers for Gaussian-mixture data: the ground truth every sampler is tested against.

If x_0 ~ sum_k w_k N(m_k, C_k), then under the VP forward process x_t = alpha_t x_0 + sigma_t eps
the marginal is p_t = sum_k w_k N(alpha_t m_k, alpha_t^2 C_k + sigma_t^2 I), whose score is known
in closed form, so the optimal noise predictor is exact (seed 002: eps* = -sigma_t grad log p_t).
The probability-flow ODE and every sampler therefore have an exact target distribution, and for a
single Gaussian the ODE flow is linear with a closed-form solution.

Computations run in float64 through each component's eigendecomposition C_k = U diag(l) U^T, so
S_k(t) = U diag(alpha^2 l + sigma^2) U^T is never formed (cost O(B K D^2)).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .errors import DiffkitError
from .schedule import NoiseSchedule, as_cpu_times

_F64 = torch.float64


class GaussianMixture:
    """A mixture of K Gaussians in D dimensions with exact time-t marginals, score and eps*."""

    def __init__(self, weights, means, covs):
        self.weights = torch.as_tensor(weights, dtype=_F64)
        self.means = torch.as_tensor(means, dtype=_F64)
        self.covs = torch.as_tensor(covs, dtype=_F64)
        K, D = self.means.shape
        if self.weights.shape != (K,) or self.covs.shape != (K, D, D):
            raise DiffkitError(f"mixture shapes disagree: weights {tuple(self.weights.shape)}, "
                               f"means {tuple(self.means.shape)}, covs {tuple(self.covs.shape)}")
        if (self.weights < 0).any() or abs(self.weights.sum().item() - 1) > 1e-9:
            raise DiffkitError("mixture weights must be non-negative and sum to 1")
        self.covs = 0.5 * (self.covs + self.covs.transpose(1, 2))
        self.eigvals, self.eigvecs = torch.linalg.eigh(self.covs)
        if (self.eigvals < 0).any():
            raise DiffkitError("mixture covariances must be positive semi-definite")
        self.num_components, self.dim = K, D

    @classmethod
    def random(cls, dim: int, num_components: int, seed: int = 0, spread: float = 1.0,
               scale: float = 0.3) -> "GaussianMixture":
        """A reproducible random mixture: means ~ N(0, spread^2), random anisotropic covariances."""
        g = torch.Generator().manual_seed(seed)
        means = spread * torch.randn(num_components, dim, generator=g, dtype=_F64)
        a = torch.randn(num_components, dim, dim, generator=g, dtype=_F64) * scale / math.sqrt(dim)
        covs = a @ a.transpose(1, 2) + (scale ** 2) * 0.25 * torch.eye(dim, dtype=_F64)
        w = torch.rand(num_components, generator=g, dtype=_F64) + 0.5
        return cls(w / w.sum(), means, covs)

    # ------------------------------------------------------------ data distribution
    def mean(self) -> torch.Tensor:
        """E[x_0] = sum_k w_k m_k."""
        return self.weights @ self.means

    def cov(self) -> torch.Tensor:
        """Cov[x_0] = sum_k w_k (C_k + m_k m_k^T) - mu mu^T."""
        mu = self.mean()
        second = (self.weights[:, None, None] * (self.covs + self.means[:, :, None] * self.means[:, None, :])).sum(0)
        return second - mu[:, None] * mu[None, :]

    def data_scale(self) -> float:
        """sqrt of the largest eigenvalue of Cov[x_0]: what :func:`diffkit.data.data_scale` estimates
        from samples (a :class:`~diffkit.denoiser.Denoiser`'s ``data_scale``)."""
        return float(torch.linalg.eigvalsh(self.cov()).max().sqrt())

    def sample(self, n: int, generator: Optional[torch.Generator] = None, component: Optional[int] = None):
        """Draw n samples (float64, (n, D)) and their component labels."""
        if component is None:
            labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        else:
            labels = torch.full((n,), int(component), dtype=torch.long)
        z = torch.randn(n, self.dim, generator=generator, dtype=_F64)
        scaled = self.eigvecs[labels] @ (self.eigvals[labels].clamp(min=0).sqrt() * z)[:, :, None]
        return self.means[labels] + scaled[:, :, 0], labels

    # ------------------------------------------------------------ time-t marginal
    def _component_terms(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor):
        """Per component: log N(x; alpha m_k, S_k) (B, K) and S_k^{-1} (x - alpha m_k) (B, K, D).

        alpha, sigma: (B,) or a single value shared by the batch. Batched matmuls over K."""
        x = x.to(_F64).reshape(x.shape[0], -1)
        alpha = alpha.to(_F64).reshape(-1, 1)[None]                           # (1, B or 1, 1)
        sigma = sigma.to(_F64).reshape(-1, 1)[None]
        diff = x[None] - alpha * self.means[:, None, :]                       # (K, B, D)
        z = torch.bmm(diff, self.eigvecs)                                     # U^T diff
        var = alpha ** 2 * self.eigvals[:, None, :] + sigma ** 2              # (K, B or 1, D)
        solved = torch.bmm(z / var, self.eigvecs.transpose(1, 2))             # S^{-1} diff
        log_n = -0.5 * ((z ** 2 / var).sum(-1) + torch.log(var).sum(-1) + self.dim * math.log(2 * math.pi))
        return log_n.T, solved.transpose(0, 1)

    def log_prob(self, x: torch.Tensor, alpha=1.0, sigma=0.0) -> torch.Tensor:
        """log p_t(x) of the time-t marginal with signal scale alpha and noise scale sigma."""
        alpha, sigma = _per_sample(alpha), _per_sample(sigma)
        log_n, _ = self._component_terms(x, alpha, sigma)
        return torch.logsumexp(log_n + torch.log(self.weights)[None], dim=1)

    def class_log_posterior(self, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """log p(y = k | x_t) (B, K): the exact noisy-data classifier for guidance tests."""
        alpha, sigma = _per_sample(alpha), _per_sample(sigma)
        log_n, _ = self._component_terms(x, alpha, sigma)
        joint = log_n + torch.log(self.weights)[None]
        return joint - torch.logsumexp(joint, dim=1, keepdim=True)

    def score(self, x: torch.Tensor, alpha, sigma, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """grad_x log p_t(x) (or of p_t(x | y) when class labels ``y`` are given)."""
        alpha, sigma = _per_sample(alpha), _per_sample(sigma)
        log_n, solved = self._component_terms(x, alpha, sigma)
        if y is None:
            resp = torch.softmax(log_n + torch.log(self.weights)[None], dim=1)
        else:
            resp = torch.nn.functional.one_hot(torch.as_tensor(y).long().cpu(), self.num_components).to(_F64)
        return -(resp[:, :, None] * solved).sum(1).reshape(x.shape)

    def eps(self, x: torch.Tensor, alpha, sigma, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The exact noise predictor eps* = -sigma_t grad log p_t(x_t) (seed 002)."""
        sigma_b = _per_sample(sigma).reshape(-1, *([1] * (x.ndim - 1)))
        return -sigma_b * self.score(x, alpha, sigma, y)

    def posterior_x0_variance(self, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """diag Cov[x_0 | x_t] (B, D) by the law of total variance over components, with
        Cov_k[x_0 | x_t] = U diag(l sigma^2/(alpha^2 l + sigma^2)) U^T and
        E_k[x_0 | x_t] = m_k + alpha C_k S_k^{-1} (x_t - alpha m_k)."""
        alpha, sigma = _per_sample(alpha), _per_sample(sigma)
        log_n, solved = self._component_terms(x, alpha, sigma)
        resp = torch.softmax(log_n + torch.log(self.weights)[None], dim=1)           # (B, K)
        a = alpha.reshape(-1, 1, 1)
        s2 = (sigma ** 2).reshape(-1, 1, 1)
        post_means = self.means[None] + a * torch.bmm(solved.transpose(0, 1), self.covs).transpose(0, 1)
        shrunk = self.eigvals[None] * s2 / (a ** 2 * self.eigvals[None] + s2)          # (B, K, D)
        post_var_diag = torch.bmm(shrunk.transpose(0, 1), (self.eigvecs ** 2).transpose(1, 2)).transpose(0, 1)
        second = (resp[:, :, None] * (post_var_diag + post_means ** 2)).sum(1)
        first = (resp[:, :, None] * post_means).sum(1)
        return second - first ** 2

    def network(self, schedule: NoiseSchedule, learned_variance: bool = False) -> "AnalyticNetwork":
        """A network ``net(x, t, y=None)`` returning eps* under ``schedule`` (and, with
        ``learned_variance``, the variance output of the exact reverse kernel)."""
        return AnalyticNetwork(self, schedule, learned_variance)


class AnalyticNetwork:
    """eps*(x_t, t) for a :class:`GaussianMixture`, callable like a trained network.

    Inputs of any shape (B, ...) are flattened to (B, D); the output has x's shape (with
    ``learned_variance`` twice its channels, dim 1), dtype and device, and is differentiable in x.

    With ``learned_variance`` the output is [eps*, v] along dim 1, where v is the Improved DDPM
    variance output (eq. 15) that gives the exact reverse kernel q(x_{t-1} | x_t) of the step
    t -> t-1: Sigma = beta-tilde_t + coef_x0^2 Var[x_0 | x_t] (exact for isotropic Gaussian data,
    diagonal-approximate otherwise). v may leave [-1, 1]: it is a formula, not a network.
    """

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule, learned_variance: bool = False):
        self.mixture, self.schedule, self.learned_variance = mixture, schedule, learned_variance

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        t64 = _per_sample(t)
        alpha, sigma = self.schedule.alpha(t64), self.schedule.sigma(t64)
        x64 = x.cpu().to(_F64)  # mps has no float64: to the CPU first (differentiable: reconstruction guidance)
        eps = self.mixture.eps(x64, alpha, sigma, y)
        if self.learned_variance:
            from .diffusion import _clip_log_variance, posterior_coefficients
            t64 = t64.expand(x.shape[0])
            coef_x0, _, small, beta_ts = posterior_coefficients(self.schedule, t64, t64 - 1)
            var = small[:, None] + coef_x0[:, None] ** 2 * self.mixture.posterior_x0_variance(x64, alpha, sigma)
            log_small = _clip_log_variance(self.schedule, small)[:, None]
            frac = (torch.log(var) - log_small) / (torch.log(beta_ts)[:, None] - log_small)
            eps = torch.cat([eps.reshape(x.shape), (2 * frac - 1).reshape(x.shape)], dim=1)  # [eps, v] along dim 1
        return eps.to(device=x.device, dtype=x.dtype)


class FlowVelocity:
    """The exact rectified-flow velocity u*(x_s, s) = E[eps - x_0 | x_s] of a :class:`GaussianMixture`
    on the path x_s = (1 - s) x_0 + s eps (Liu et al. 2023; Lipman et al. 2023, eq. 23 with
    sigma_min = 0), callable like a flow network ``net(x, t)`` with ``t = s T`` (the time a
    ``flow_prediction`` :class:`~diffkit.denoiser.Denoiser` gives it).

    p_s is the mixture's marginal with signal scale 1 - s and noise scale s, so Tweedie's formula
    gives E[eps | x_s] = -s grad log p_s(x_s) and E[x_0 | x_s] = (x_s - s E[eps | x_s]) / (1 - s);
    at s = 1, x_s = eps carries nothing of x_0: E[x_0 | x_s] = E[x_0] and u* = x_s - E[x_0]."""

    def __init__(self, mixture: GaussianMixture, num_timesteps: int):
        self.mixture, self.num_timesteps = mixture, num_timesteps

    def __call__(self, x: torch.Tensor, t, **_) -> torch.Tensor:
        s = _per_sample(t) / self.num_timesteps
        x64 = x.detach().cpu().to(_F64).reshape(x.shape[0], -1)
        s_b = s.reshape(-1, 1)
        at_one = s_b == 1.0
        signal = torch.where(s == 1.0, 1.0, 1 - s)  # any value at s = 1, where the result is replaced
        eps = -s_b * self.mixture.score(x64, signal, s)
        x0 = (x64 - s_b * eps) / signal.reshape(-1, 1)
        u = torch.where(at_one, x64 - self.mixture.mean(), eps - x0)
        return u.reshape(x.shape).to(device=x.device, dtype=x.dtype)


def gaussian_ode_solution(mean, cov, x_t: torch.Tensor, alpha_t, sigma_t, alpha_s, sigma_s) -> torch.Tensor:
    """Exact probability-flow ODE map x_t -> x_s for Gaussian data N(mean, cov).

    Along the ODE the whitened residual is conserved: with S(t) = alpha^2 C + sigma^2 I,
    x_s = alpha_s m + S(s)^{1/2} S(t)^{-1/2} (x_t - alpha_t m) (all matrices commute).
    The four coefficients are numbers or (B,) tensors (one per sample).
    """
    mean, cov = torch.as_tensor(mean, dtype=_F64), torch.as_tensor(cov, dtype=_F64)
    lam, U = torch.linalg.eigh(0.5 * (cov + cov.T))
    lam = lam.clamp(min=0)
    alpha_t, sigma_t, alpha_s, sigma_s = (torch.as_tensor(v, dtype=_F64).reshape(-1, 1)
                                          for v in (alpha_t, sigma_t, alpha_s, sigma_s))
    ratio = torch.sqrt((alpha_s ** 2 * lam + sigma_s ** 2) / (alpha_t ** 2 * lam + sigma_t ** 2))
    x = x_t.to(_F64).reshape(x_t.shape[0], -1)
    resid = (x - alpha_t * mean) @ U
    return (alpha_s * mean + (resid * ratio) @ U.T).reshape(x_t.shape)


class GaussianConsistencyFunction:
    """The exact consistency function of Gaussian data N(mean, cov) (Song et al. 2023, "Consistency
    Models", Def. in Sec. 3) under ``schedule``, callable like a network ``net(x, t)`` (so
    ``Denoiser(net, schedule, prediction_type="sample")`` answers x0 = f*): the probability-flow ODE
    keeps S(t)^{-1/2} (x_t - alpha_t m) fixed (S(t) = alpha_t^2 C + sigma_t^2 I), so

        f*(x_t, t) = alpha_0 m + S(0)^{1/2} S(t)^{-1/2} (x_t - alpha_t m),

    the trajectory's point at the boundary t = 0 (:func:`gaussian_ode_solution` to t = 0);
    f*(x, 0) = x."""

    def __init__(self, mean, cov, schedule: NoiseSchedule):
        self.mean, self.cov = torch.as_tensor(mean, dtype=_F64), torch.as_tensor(cov, dtype=_F64)
        self.schedule = schedule

    def __call__(self, x: torch.Tensor, t, **_) -> torch.Tensor:
        t64 = _per_sample(t)
        zero = torch.zeros(1, dtype=_F64)
        out = gaussian_ode_solution(self.mean, self.cov, x.detach().cpu(), self.schedule.alpha(t64),
                                    self.schedule.sigma(t64), self.schedule.alpha(zero), self.schedule.sigma(zero))
        return out.to(device=x.device, dtype=x.dtype)


def _per_sample(value) -> torch.Tensor:
    """(B,) values, or a single value when the whole batch shares it (the common case)."""
    value = as_cpu_times(value).reshape(-1)
    if value.numel() > 1 and bool((value == value[0]).all()):
        return value[:1]
    return value
