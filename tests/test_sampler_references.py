"""Samplers, schedules, the pooled U-Net context and the analytic ground truth against references
that are not diffkit's own code: the papers' equations written out here from the schedule's
betas (DDPM eq. 7/11, Improved DDPM eq. 15, DDIM Table 1, k-diffusion's ancestral step, EDM
Algorithm 2), diffusers (DPMSolverMultistepScheduler, DDPMScheduler's sigmoid betas), the
closed-form Gaussian posterior and torch.distributions / autograd for the mixture densities.

Noise: diffkit draws z with ``diffkit.noise.randn_like``: float32 from the (CPU) generator, cast
to x's dtype; with one generator for the batch it is ``torch.randn(x.shape, generator=g)``, so
the hand-written steps below draw the same z from a generator seeded the same way.
"""
from __future__ import annotations

import math

import pytest
import torch

import diffkit
from diffkit import Denoiser, NoiseSchedule
from diffkit.analytic import GaussianMixture
from diffkit.noise import generators_from_seed
from diffkit.samplers.ddim import ddim
from diffkit.samplers.ddpm import ddpm
from diffkit.samplers.karras import euler, euler_ancestral
from diffkit.timesteps import make_grid

F64 = torch.float64
S = NoiseSchedule.linear()
ABAR = torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, 1000, dtype=F64), 0)  # DDPM's schedule, by hand


def assert_gaussian_moments(x, mean, cov, k: float = 4.5):
    """The sample mean and covariance of ``x`` (n, D) within k standard errors of a Gaussian's: the
    mean's sqrt(C_ii / n), the covariance's sqrt((C_ii C_jj + C_ij^2) / n)."""
    n, diag = x.shape[0], torch.diagonal(cov)
    se_mean = (diag / n).sqrt()
    se_cov = ((diag[:, None] * diag[None, :] + cov ** 2) / n).sqrt()
    assert ((x.mean(0) - mean).abs() <= k * se_mean).all(), (x.mean(0), mean, se_mean)
    assert ((torch.cov(x.T) - cov).abs() <= k * se_cov).all(), (torch.cov(x.T), cov, se_cov)


def z_of(seed: int, shape) -> torch.Tensor:
    """The standard normal draw diffkit makes from one CPU generator seeded ``seed`` (float32, cast)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32).to(F64)


class LinearEps:
    """eps(x, t) = tanh(t/T) W x (and, with ``v``, the Improved DDPM variance output v next to it)."""

    def __init__(self, dim: int, seed: int = 0, v: torch.Tensor | None = None, time_dependent: bool = True):
        self.W = torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=F64) / dim
        self.v, self.time_dependent = v, time_dependent

    def eps(self, x, t):
        scale = torch.tanh(torch.as_tensor(t, dtype=F64) / 1000).reshape(-1, 1) if self.time_dependent else 1.0
        return scale * (x @ self.W.T)

    def __call__(self, x, t):
        eps = self.eps(x, t.to(F64))
        if self.v is None:
            return eps
        return torch.cat([eps, self.v.expand_as(eps)], dim=1)


def x_start(batch: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ------------------------------------------------------------------ DDPM, learned variance
V_VALUES = torch.tensor([1.0, -1.0, 0.4, -0.7], dtype=F64)  # v = +1 (beta), -1 (beta-tilde), between


@pytest.mark.parametrize("t, s", [(300, 299), (600, 400)])
def test_ddpm_learned_range_step_is_improved_ddpm_eq_15(t, s):
    """One DDPM step t -> s with a learned variance against Improved DDPM eq. 15 written out from
    the betas: x_s = mu + exp(0.5 log Sigma) z, Sigma = exp(f log beta_{t|s} + (1 - f) log beta-tilde),
    f = (v + 1)/2, so v = +1 gives sqrt(beta) z, v = -1 sqrt(beta-tilde) z; mu = DDPM eq. 11 on the
    respaced beta_{t|s} = 1 - abar_t/abar_s (Nichol & Dhariwal Sec. 4), z from the same generator."""
    net = LinearEps(4, seed=1, v=V_VALUES)
    d = Denoiser(net, S, learned_variance=True)
    x = x_start(3, 4, 2)
    out = ddpm(d, x, torch.tensor([float(t), float(s)], dtype=F64), generator=torch.Generator().manual_seed(5))
    abar_t, abar_s = ABAR[t], ABAR[s]
    beta = 1 - abar_t / abar_s
    beta_tilde = (1 - abar_s) / (1 - abar_t) * beta
    eps = net.eps(x, float(t))
    mu = (x - beta / torch.sqrt(1 - abar_t) * eps) / torch.sqrt(1 - beta)
    f = (V_VALUES + 1) / 2
    sigma2 = torch.exp(f * torch.log(beta) + (1 - f) * torch.log(beta_tilde))
    torch.testing.assert_close(sigma2[0], beta, rtol=1e-12, atol=0)          # v = +1: sigma^2 = beta
    torch.testing.assert_close(sigma2[1], beta_tilde, rtol=1e-12, atol=0)    # v = -1: sigma^2 = beta-tilde
    expected = mu + sigma2.sqrt() * z_of(5, (3, 4))
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ DDIM sigma-hat
def test_ddim_sigma_hat_is_ddpm_with_beta_and_its_step_variance_is_one_minus_abar_ratio():
    """DDIM Table 1's sigma-hat process: (a) one step t -> s against the formula written out,
    x_s = mu + sqrt(1 - abar_t/abar_s) z (the larger variance, not beta-tilde); (b) a 10-step run
    is bitwise DDPM with fixed_large (sigma^2 = beta, DDPM Sec. 3.2) under the same per-sample
    generators."""
    net = LinearEps(4, seed=3)
    d = Denoiser(net, S)
    x = x_start(3, 4, 4)
    t, s = 600, 400
    out = ddim(d, x, torch.tensor([float(t), float(s)], dtype=F64), eta="sigma_hat",
               generator=torch.Generator().manual_seed(8))
    abar_t, abar_s = ABAR[t], ABAR[s]
    eps = net.eps(x, float(t))
    x0 = (x - torch.sqrt(1 - abar_t) * eps) / torch.sqrt(abar_t)
    beta = 1 - abar_t / abar_s
    mu = torch.sqrt(abar_s) * beta / (1 - abar_t) * x0 + torch.sqrt(abar_t / abar_s) * (1 - abar_s) / (1 - abar_t) * x
    torch.testing.assert_close(out, mu + torch.sqrt(beta) * z_of(8, (3, 4)), rtol=1e-10, atol=1e-12)

    grid = make_grid(S, 10, "linear")
    a = ddim(d, x, grid, eta="sigma_hat", generator=generators_from_seed(20, 3))
    b = ddpm(d, x, grid, variance_type="fixed_large", generator=generators_from_seed(20, 3))
    small = ddpm(d, x, grid, variance_type="fixed_small", generator=generators_from_seed(20, 3))
    assert torch.equal(a, b)
    assert (a - small).abs().max() > 1e-3  # the two variances really give different samples here


def test_sigma_hat_with_clip_is_the_ddim_reference_codes_ddpm_steps():
    """The DDIM authors' sigma-hat sampler (ermongroup/ddim, functions/denoising.py, ``ddpm_steps``)
    written out: x0 = sqrt(1/a_t) x - sqrt(1/a_t - 1) e clamped to [-1, 1], mean = (sqrt(a_s) beta x0
    + sqrt(1 - beta) (1 - a_s) x) / (1 - a_t) with beta = 1 - a_t/a_s, plus sqrt(beta) z except on
    the step from t = 0 (a_{-1} = 1). diffkit's ``eta="sigma_hat"`` with ``thresholding="clip"`` (what
    ``diffkit experiment ddim-table`` runs for that row) is the same sampler."""
    net = LinearEps(4, seed=5)
    d = Denoiser(net, S)
    x = 3 * x_start(3, 4, 6)
    grid = torch.tensor([600.0, 300.0, 0.0, -1.0], dtype=F64)
    gen = torch.Generator().manual_seed(8)
    ref = x.clone()
    for t, s in ((600, 300), (300, 0), (0, -1)):
        a_t, a_s = ABAR[t], (ABAR[s] if s >= 0 else torch.tensor(1.0, dtype=F64))
        beta = 1 - a_t / a_s
        e = net.eps(ref, float(t))
        x0 = ((1 / a_t).sqrt() * ref - (1 / a_t - 1).sqrt() * e).clamp(-1, 1)
        mean = ((a_s.sqrt() * beta) * x0 + ((1 - beta).sqrt() * (1 - a_s)) * ref) / (1 - a_t)
        ref = mean if t == 0 else mean + beta.sqrt() * torch.randn(ref.shape, generator=gen).to(F64)
    ours = diffkit.sample(d, x, "ddim", grid=grid, eta="sigma_hat", thresholding="clip",
                          generator=torch.Generator().manual_seed(8), progress=False)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    unclipped = diffkit.sample(d, x, "ddim", grid=grid, eta="sigma_hat", generator=torch.Generator().manual_seed(8),
                               progress=False)
    assert (unclipped - ref).abs().max() > 1e-2  # the clamp is active here


# ------------------------------------------------------------------ sigmoid betas
@pytest.mark.parametrize("T, beta_start, beta_end", [(1000, 1e-4, 0.02), (500, 2e-4, 0.03)])
def test_sigmoid_betas_equal_diffusers(T, beta_start, beta_end):
    """NoiseSchedule.sigmoid against diffusers' DDPMScheduler(beta_schedule="sigmoid") (GeoDiff:
    sigmoid(linspace(-6, 6, T)) (beta_end - beta_start) + beta_start), with the same T, beta_start
    and beta_end; diffusers computes in float32, so the betas agree to a few float32 roundings."""
    diffusers = pytest.importorskip("diffusers")
    theirs = diffusers.DDPMScheduler(beta_schedule="sigmoid", num_train_timesteps=T, beta_start=beta_start,
                                     beta_end=beta_end).betas.to(F64)
    ours = NoiseSchedule.sigmoid(T, beta_start, beta_end).betas
    assert ours.shape == theirs.shape
    assert ((ours - theirs).abs() <= 8 * torch.finfo(torch.float32).eps * theirs).all(), (ours - theirs).abs().max()
    ours_by_name = NoiseSchedule.from_name("sigmoid", T, beta_start=beta_start, beta_end=beta_end).betas
    assert torch.equal(ours_by_name, ours)


# ------------------------------------------------------------------ DPM-Solver(++) 3M
@pytest.mark.parametrize("sampler, algorithm_type, final, end", [("dpm-solver++-3m", "dpmsolver++", "zero", -1.0),
                                                                ("dpm-solver++-3m", "dpmsolver++", "sigma_min", 0.0),
                                                                ("dpm-solver-3m", "dpmsolver", "sigma_min", 0.0)])
def test_dpm_solver_3m_equals_diffusers_third_order_multistep(sampler, algorithm_type, final, end):
    """diffkit's 3M against diffusers' DPMSolverMultistepScheduler(solver_order=3) on its own grid
    (grid_from_diffusers), both driven by the exact eps* of a Gaussian mixture: relative error
    < 1e-5 (diffusers works in float32). 10 steps with lower_order_final (diffusers applies it
    below 15 steps; diffkit at every count): orders 1, 2, 3 x 6, 2, 1, so six steps use the
    third-order term D2 (counted on diffusers' side). diffusers' noise-prediction solver ends at
    t = 0 only (final_sigmas_type="sigma_min"; its grid ends at 0 here too)."""
    diffusers = pytest.importorskip("diffusers")
    from diffkit.interop.schedulers import grid_from_diffusers, schedule_from_diffusers
    scheduler = diffusers.DPMSolverMultistepScheduler(solver_order=3, algorithm_type=algorithm_type,
                                                      lower_order_final=True, final_sigmas_type=final,
                                                      prediction_type="epsilon", thresholding=False)
    scheduler.set_timesteps(10)
    schedule, _ = schedule_from_diffusers(scheduler)
    gm = GaussianMixture.random(3, 3, seed=5, spread=1.0, scale=0.4)
    net = gm.network(schedule)
    third = {"calls": 0}
    inner = scheduler.multistep_dpm_solver_third_order_update

    def counted(*args, **kwargs):
        third["calls"] += 1
        return inner(*args, **kwargs)
    scheduler.multistep_dpm_solver_third_order_update = counted
    x_T = torch.randn(64, 3, generator=torch.Generator().manual_seed(7), dtype=F64)
    x = x_T.float()
    for t in scheduler.timesteps:
        x = scheduler.step(net(x, t.reshape(1).expand(x.shape[0])), t, x).prev_sample
    assert third["calls"] == 6
    grid = grid_from_diffusers(scheduler)
    assert grid[-1] == end and len(grid) == 11
    ours = diffkit.sample(Denoiser(net, schedule), x_T.clone(), sampler, grid=grid, progress=False)
    rel = ((ours - x.to(F64)).abs().max() / x.abs().max()).item()
    assert rel < 1e-5, rel


def test_dpm_solver_pp_2m_default_grid_is_diffusers_use_lu_lambdas():
    """``dpm-solver++-2m``'s default grid (uniform log-SNR from t = T - 1 to t = 0, then clean data) is diffusers'
    DPMSolverMultistepScheduler(use_lu_lambdas=True, final_sigmas_type="zero") at NFE 5: the same sigmas (to
    diffusers' float32 alphas_cumprod), and on those sigmas the same steps (relative error < 1e-5, exact eps* of a
    Gaussian mixture). The 85.5 FD of the demo model at NFE 5 (BENCHMARKS.md) is this method on this grid."""
    diffusers = pytest.importorskip("diffusers")
    from diffkit.interop.schedulers import schedule_from_diffusers
    from diffkit.sampling import plan
    scheduler = diffusers.DPMSolverMultistepScheduler(solver_order=2, algorithm_type="dpmsolver++",
                                                      lower_order_final=True, final_sigmas_type="zero",
                                                      use_lu_lambdas=True, thresholding=False)
    scheduler.set_timesteps(5)
    schedule, _ = schedule_from_diffusers(scheduler)
    gm = GaussianMixture.random(3, 3, seed=5, spread=1.0, scale=0.4)
    net = gm.network(schedule)
    den = Denoiser(net, schedule)
    grid = plan(den, "dpm-solver++-2m", nfe=5)[1]
    sigmas = scheduler.sigmas.to(F64)
    assert len(grid) == 6 and grid[-1] == -1.0 and sigmas[-1] == 0.0
    assert torch.allclose(schedule.karras_sigma(grid[:-1]), sigmas[:-1], rtol=2e-4, atol=0)
    times = schedule.t_from_karras_sigma(sigmas[:-1])  # diffusers' own sigmas, at continuous times
    x_T = torch.randn(64, 3, generator=torch.Generator().manual_seed(7), dtype=F64)
    x = x_T.float()
    for t, t_net in zip(scheduler.timesteps, times):
        x = scheduler.step(net(x, t_net.reshape(1).expand(x.shape[0])).float(), t, x).prev_sample
    ours = diffkit.sample(den, x_T.clone(), "dpm-solver++-2m", grid=torch.cat([times, grid[-1:]]), progress=False)
    assert ((ours - x.to(F64)).abs().max() / x.abs().max()).item() < 1e-5


# ------------------------------------------------------------------ SDE-DPM-Solver++(3M)
def test_sde_dpm_solver_3m_is_k_diffusions_dpmpp_3m_sde_with_the_same_noise():
    """``sde-dpm-solver++-3m`` against k-diffusion's ``sample_dpmpp_3m_sde`` (eta = 1, s_noise = 1)
    transcribed here in its own variables: x~ = x/alpha, sigma~ the Karras sigma, lambda = -log sigma~,
    h_eta = 2h, phi_2 = expm1(-h_eta)/h_eta + 1, phi_3 = phi_2/h_eta - 1/2, x~ += phi_2 d1 - phi_3 d2,
    noise sigma~_next sqrt(-expm1(-2h)) z, and x~ = denoised on the step to sigma~ = 0. Its Brownian
    tree is replaced by diffkit's draw, one z per step from one generator (k-diffusion takes no
    lower-order final steps, so neither does diffkit here). Its second-order warm-up step is the
    phi_2 ('heun') form, the registered solver_type (diffusers' default is 'midpoint')."""
    net = GaussianMixture.random(3, 3, seed=5, spread=1.0, scale=0.4).network(S)
    den = Denoiser(net, S)
    grid = make_grid(S, 12, "linear", "zero")  # integer times: sigma~ from the hand-made ABAR
    x_T = x_start(32, 3, 11)
    ours = diffkit.sample(den, x_T.clone(), "sde-dpm-solver++-3m", grid=grid, lower_order_final=False,
                          generator=torch.Generator().manual_seed(4), progress=False)
    g = torch.Generator().manual_seed(4)
    times = grid.tolist()
    sig = [karras_sigma(int(t)) if t >= 0 else 0.0 for t in times]
    x = x_T / math.sqrt(ABAR[int(times[0])].item())
    den_1 = den_2 = h_1 = h_2 = None
    h = None
    for i in range(len(times) - 1):
        alpha = 1 / math.sqrt(1 + sig[i] ** 2)  # the network sees x = alpha x~ and returns eps
        denoised = x - sig[i] * net(alpha * x, torch.full((x.shape[0],), times[i], dtype=torch.float32))
        if sig[i + 1] == 0:
            x = denoised
        else:
            h = -math.log(sig[i + 1]) + math.log(sig[i])
            h_eta = 2 * h
            x = math.exp(-h_eta) * x + -math.expm1(-h_eta) * denoised
            phi_2 = math.expm1(-h_eta) / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0, d1_1 = (denoised - den_1) / r0, (den_1 - den_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x = x + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
            elif h_1 is not None:
                x = x + phi_2 * (denoised - den_1) / (h_1 / h)
            z = torch.randn(x.shape, generator=g, dtype=torch.float32).to(F64)
            x = x + z * sig[i + 1] * math.sqrt(-math.expm1(-2 * h))
        den_1, den_2 = denoised, den_1
        h_1, h_2 = h, h_1
    torch.testing.assert_close(ours, x, rtol=1e-9, atol=1e-9)


def test_sde_dpm_solver_3m_equals_diffusers_up_to_its_third_order_d2_weight():
    """diffusers' DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=3) on
    its grid with the same noise (diffusers draws z from the step's generator, float32, as diffkit
    does; solver_type 'heun', the registered one): on 3 steps (orders 1, 2, 1) the two agree to 1e-5
    (float32); on 10 steps its six
    third-order steps give + alpha_s ((1 - e^{-2h} - 2h)/(2h)^2 - 1/2) D2, k-diffusion's
    - alpha_s phi_3 D2 is + alpha_s ((1 - e^{-2h} - 2h)/(2h)^2 + 1/2) D2 (an O(h) weight; diffusers'
    tends to -alpha_s, an O(1) weight on the O(h^2) D2): with alpha_s D2 added to each of its
    third-order steps it agrees with diffkit to 1e-5, without it not (0.3 relative here)."""
    diffusers = pytest.importorskip("diffusers")
    from diffkit.interop.schedulers import grid_from_diffusers, schedule_from_diffusers

    def run(steps, add_alpha_d2):
        scheduler = diffusers.DPMSolverMultistepScheduler(solver_order=3, algorithm_type="sde-dpmsolver++",
                                                          solver_type="heun", final_sigmas_type="sigma_min",
                                                          lower_order_final=True)
        scheduler.set_timesteps(steps)
        schedule, _ = schedule_from_diffusers(scheduler)
        third = scheduler.multistep_dpm_solver_third_order_update
        calls = []

        def third_order(outputs, sample=None, noise=None):
            calls.append(1)
            x = third(outputs, sample=sample, noise=noise)
            if not add_alpha_d2:
                return x
            i = scheduler.step_index
            (a_s, s_s), *rest = [scheduler._sigma_to_alpha_sigma_t(scheduler.sigmas[j])
                                 for j in (i + 1, i, i - 1, i - 2)]
            lam = [math.log(a_s / s_s)] + [math.log(a / s) for a, s in rest]
            h, r0, r1 = lam[0] - lam[1], (lam[1] - lam[2]), (lam[2] - lam[3])
            r0, r1 = r0 / h, r1 / h
            m0, m1, m2 = outputs[-1], outputs[-2], outputs[-3]
            d2 = ((m0 - m1) / r0 - (m1 - m2) / r1) / (r0 + r1)
            return x + a_s * d2
        scheduler.multistep_dpm_solver_third_order_update = third_order
        net = GaussianMixture.random(3, 3, seed=5, spread=1.0, scale=0.4).network(schedule)
        x_T = x_start(64, 3, 7)
        x, g = x_T.float(), torch.Generator().manual_seed(3)
        for t in scheduler.timesteps:
            x = scheduler.step(net(x, t.reshape(1).expand(x.shape[0])), t, x, generator=g).prev_sample
        ours = diffkit.sample(Denoiser(net, schedule), x_T.clone(), "sde-dpm-solver++-3m",
                              grid=grid_from_diffusers(scheduler), generator=torch.Generator().manual_seed(3),
                              progress=False)
        return ((ours - x.to(F64)).abs().max() / x.abs().max()).item(), len(calls)

    assert run(3, add_alpha_d2=False) == (pytest.approx(0.0, abs=1e-5), 0)
    rel, calls = run(10, add_alpha_d2=True)
    assert rel < 1e-5 and calls == 6
    rel, calls = run(10, add_alpha_d2=False)
    assert rel > 0.05 and calls == 6


def test_sde_dpm_solver_3m_many_steps_sample_the_gaussian_exactly():
    """Gaussian data: with 200 log-SNR steps the samples' mean and covariance are the data's within
    4.5 standard errors (40,000 samples: at 4000 the step noise scaled by 0.94 still passed; at
    40,000 x0.97 fails)."""
    gaussian = GaussianMixture([1.0], [[1.0, -0.5]], [[[0.25, 0.1], [0.1, 0.16]]])
    den = Denoiser(gaussian.network(S), S)
    # one generator for the batch: the same i.i.d. N(0, I) step noise as seed= (one generator per
    # sample), without 40,000 torch.randn calls per step
    x = diffkit.sample(den, x_start(40000, 2, 12), "sde-dpm-solver++-3m", steps=200,
                       generator=torch.Generator().manual_seed(0), progress=False)
    assert_gaussian_moments(x, gaussian.means[0], gaussian.covs[0])


# ------------------------------------------------------------------ DEIS
def _run_diffusers_deis(order: int, steps: int, spacing: str, float64: bool):
    """(x_T, diffusers' DEISMultistepScheduler(solver_order=order) output, its grid, schedule, network)
    on the exact eps* of a Gaussian mixture; ``float64``: its sigmas replaced by float64 ones of the
    same timesteps, so its own update formulas (ind_fn) run in float64."""
    diffusers = pytest.importorskip("diffusers")
    from diffkit.interop.schedulers import grid_from_diffusers, schedule_from_diffusers
    scheduler = diffusers.DEISMultistepScheduler(solver_order=order, timestep_spacing=spacing, lower_order_final=True)
    scheduler.set_timesteps(steps)
    schedule, _ = schedule_from_diffusers(scheduler)
    grid = grid_from_diffusers(scheduler)
    assert grid[-1] == 0.0 and len(grid) == steps + 1  # DEIS ends at t = 0's sigma
    if float64:
        abar = schedule.alpha_bar(grid)
        scheduler.sigmas = ((1 - abar) / abar).sqrt()
    net = GaussianMixture.random(3, 3, seed=5, spread=1.0, scale=0.4).network(schedule)
    x_T = torch.randn(64, 3, generator=torch.Generator().manual_seed(7), dtype=F64)
    x = x_T.clone() if float64 else x_T.float()
    for t in scheduler.timesteps:
        x = scheduler.step(net(x, t.reshape(1).expand(x.shape[0])), t, x).prev_sample
    return x_T, x.to(F64), grid, schedule, net


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_deis_equals_diffusers_deis_multistep(order, spacing):
    """``deis`` against diffusers' DEISMultistepScheduler (tAB-DEIS, logrho) on its own grid, both
    driven by a mixture's exact eps*: 10 steps (orders 1, 2, 3 x 6, 2, 1 with lower_order_final,
    which diffusers applies below 15 steps) to 1e-5 relative (diffusers' float32), and 20 steps
    without lower-order final steps to 1e-10 with its sigmas in float64 (its ind_fn coefficients,
    differences of t log t terms, lose float32 digits at third order: ~2e-5 there)."""
    x_T, theirs, grid, schedule, net = _run_diffusers_deis(order, 10, spacing, float64=False)
    ours = diffkit.sample(Denoiser(net, schedule), x_T.clone(), "deis", grid=grid, solver_order=order,
                          progress=False)
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() < 1e-5
    x_T, theirs, grid, schedule, net = _run_diffusers_deis(order, 20, spacing, float64=True)
    ours = diffkit.sample(Denoiser(net, schedule), x_T.clone(), "deis", grid=grid, solver_order=order,
                          lower_order_final=False, progress=False)
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() < 1e-10


def test_deis_2_is_multistep_dpm_solver_2_heun_in_noise_prediction():
    """The exact integral of eps's linear interpolant in lambda against e^-lambda is DPM-Solver's
    multistep second-order 'heun' update (Lu et al. 2022, reference code): the two agree to rounding."""
    net = GaussianMixture.random(3, 3, seed=5).network(S)
    den = Denoiser(net, S)
    x = x_start(16, 3, 3)
    grid = make_grid(S, 12, "logsnr", "zero")
    a = diffkit.sample(den, x.clone(), "deis", grid=grid, progress=False)
    b = diffkit.sample(den, x.clone(), "dpm-solver-2m", grid=grid, solver_type="heun", progress=False)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ Karras: ancestral and churn
def karras_sigma(t: int) -> float:
    """EDM/k-diffusion sigma of the VP time t: sqrt((1 - abar)/abar)."""
    return math.sqrt((1 - ABAR[t].item()) / ABAR[t].item())


def get_ancestral_step(sigma_from, sigma_to, eta=1.0):
    """k-diffusion's ``get_ancestral_step`` (sampling.py), transcribed."""
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


@pytest.mark.parametrize("t, s, eta, s_noise", [(600, 350, 1.0, 1.0), (300, 200, 0.6, 1.0), (500, 100, 1.0, 0.9)])
def test_euler_ancestral_step_is_k_diffusion(t, s, eta, s_noise):
    """One step of k-diffusion's sample_euler_ancestral written out, in its variables
    x~ = x_t/alpha_t, sigma = sqrt((1 - abar)/abar), with d = (x~ - D(x~; sigma))/sigma = eps(x_t, t):
    x~_s = x~ + (sigma_down - sigma_t) d + s_noise sigma_up z, mapped back as x_s = alpha_s x~_s."""
    net = LinearEps(4, seed=2)
    d = Denoiser(net, S)
    x = x_start(3, 4, 6)
    out = euler_ancestral(d, x, torch.tensor([float(t), float(s)], dtype=F64), eta=eta, s_noise=s_noise,
                          generator=torch.Generator().manual_seed(11))
    sig_t, sig_s = karras_sigma(t), karras_sigma(s)
    sigma_down, sigma_up = get_ancestral_step(sig_t, sig_s, eta)
    x_tilde = x / ABAR[t].sqrt()
    expected_tilde = x_tilde + (sigma_down - sig_t) * net.eps(x, float(t)) + s_noise * sigma_up * z_of(11, (3, 4))
    torch.testing.assert_close(out, ABAR[s].sqrt() * expected_tilde, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("s_churn, s_noise, expected_gamma", [(0.3, 1.007, 0.3), (5.0, 1.0, math.sqrt(2) - 1)])
def test_churn_step_is_edm_algorithm_2(s_churn, s_noise, expected_gamma):
    """EDM Algorithm 2 lines 4-6 and 7-8 (Euler) on one step (N = 1), written out: gamma =
    min(S_churn/N, sqrt 2 - 1), sigma_hat = sigma (1 + gamma), x~_hat = x~ + sqrt(sigma_hat^2 -
    sigma^2) S_noise z, then x~_s = x~_hat + (sigma_s - sigma_hat) d(x~_hat; sigma_hat). The network
    here does not depend on t, so d at sigma_hat is eps(alpha_hat x~_hat) with alpha_hat =
    1/sqrt(1 + sigma_hat^2). Outside [S_tmin, S_tmax] there is no churn: the step is plain Euler."""
    net = LinearEps(4, seed=4, time_dependent=False)
    d = Denoiser(net, S)
    x = x_start(3, 4, 9)
    t, s = 300, 150
    grid = torch.tensor([float(t), float(s)], dtype=F64)
    out = euler(d, x, grid, s_churn=s_churn, s_noise=s_noise, generator=torch.Generator().manual_seed(13))
    sigma, sigma_s = karras_sigma(t), karras_sigma(s)
    sigma_hat = sigma * (1 + expected_gamma)
    x_hat = x / ABAR[t].sqrt() + math.sqrt(sigma_hat ** 2 - sigma ** 2) * s_noise * z_of(13, (3, 4))
    eps = net.eps(x_hat / math.sqrt(1 + sigma_hat ** 2), None)
    expected = ABAR[s].sqrt() * (x_hat + (sigma_s - sigma_hat) * eps)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    # S_tmax below sigma: gamma = 0, the plain Euler step x~ + (sigma_s - sigma) eps(x_t)
    gated = euler(d, x, grid, s_churn=s_churn, s_noise=s_noise, s_tmax=0.5 * sigma,
                  generator=torch.Generator().manual_seed(13))
    plain = ABAR[s].sqrt() * (x / ABAR[t].sqrt() + (sigma_s - sigma) * net.eps(x, None))
    torch.testing.assert_close(gated, plain, rtol=1e-10, atol=1e-12)


def test_euler_ancestral_200_karras_steps_sample_gaussian_data():
    """With the exact eps* of Gaussian data N(m, C), euler-ancestral on 200 Karras steps samples
    N(m_N, C_N), the law of the discretised chain, computed here in closed form: in C's eigenbasis
    (eigenvalue c) the exact denoiser is linear, D(x~; sigma) = m + c/(c + sigma^2)(x~ - m), so each
    k-diffusion step (get_ancestral_step above) maps the variance v of x~ - m to
    k^2 v + sigma_up^2 with k = 1 + (sigma_down - sigma) sigma/(c + sigma^2), from v = 1 + sigma_0^2
    (x_T ~ N(0, I)). Sample mean and covariance (n = 4000) are within 4.5 standard errors of the
    Gaussian law's (SE of cov_ij = sqrt((C_ii C_jj + C_ij^2)/n)); and that law is the data's up to
    the method's first-order bias (about 6% of the variance at 200 steps, 1/N-like)."""
    gm = GaussianMixture.random(dim=2, num_components=1, seed=4, spread=0.8, scale=0.6)
    n = 4000
    grid = make_grid(S, 200, "karras")
    sig = S.karras_sigma(grid).tolist()
    assert sig[-1] == 0.0 and len(sig) == 201
    c, U = torch.linalg.eigh(gm.cov())
    v = torch.full_like(c, 1 + sig[0] ** 2)
    shrink = torch.ones_like(c)  # the mean of x~ - m: -m times the product of the k's
    for sigma, sigma_to in zip(sig[:-1], sig[1:]):
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_to) if sigma_to > 0 else (0.0, 0.0)
        k = 1 + (sigma_down - sigma) * sigma / (c + sigma ** 2)
        v, shrink = k ** 2 * v + sigma_up ** 2, k * shrink
    mean_N = gm.mean() - U @ (shrink * (U.T @ gm.mean()))
    cov_N = U @ torch.diag(v) @ U.T
    assert ((cov_N - gm.cov()).abs() <= 0.07 * c.max()).all() and ((mean_N - gm.mean()).abs() < 1e-3).all()
    d = Denoiser(gm.network(S), S)
    x = diffkit.sample(d, (n, 2), "euler-ancestral", grid=grid, generator=torch.Generator().manual_seed(3),
                       dtype=F64, progress=False)
    assert d.nfe == 200
    assert_gaussian_moments(x, mean_N, cov_N)


# ------------------------------------------------------------------ DPM2 / DPM++(2S) ancestral
def _static_eps_at(net, x_tilde, sigma):
    """eps of a time-independent network at the VP state of x~ at sigma: x = x~/sqrt(1 + sigma^2)."""
    return net.eps(x_tilde / math.sqrt(1 + sigma ** 2), None)


@pytest.mark.parametrize("t, s, eta, s_noise", [(600, 350, 1.0, 1.0), (300, 200, 0.6, 1.0), (500, 100, 1.0, 0.9)])
def test_dpm2_ancestral_step_is_k_diffusion(t, s, eta, s_noise):
    """One step of k-diffusion's sample_dpm_2_ancestral written out (x~ = x/alpha, d = eps):
    (sigma_down, sigma_up) = get_ancestral_step(sigma_t, sigma_s, eta),
    sigma_mid = exp(lerp(log sigma_t, log sigma_down, 1/2)), x~_2 = x~ + (sigma_mid - sigma_t) d,
    x~_s = x~ + (sigma_down - sigma_t) d(x~_2; sigma_mid) + s_noise sigma_up z.
    The network does not depend on t, so d at sigma_mid is eps(x~_2/sqrt(1 + sigma_mid^2))."""
    from diffkit.samplers.karras import dpm2_ancestral
    net = LinearEps(4, seed=2, time_dependent=False)
    x = x_start(3, 4, 6)
    out = dpm2_ancestral(Denoiser(net, S), x, torch.tensor([float(t), float(s)], dtype=F64), eta=eta,
                         s_noise=s_noise, generator=torch.Generator().manual_seed(11))
    sig_t, sig_s = karras_sigma(t), karras_sigma(s)
    sigma_down, sigma_up = get_ancestral_step(sig_t, sig_s, eta)
    sigma_mid = math.exp(math.log(sig_t) + 0.5 * (math.log(sigma_down) - math.log(sig_t)))
    x_tilde = x / ABAR[t].sqrt()
    x_2 = x_tilde + (sigma_mid - sig_t) * net.eps(x, None)
    expected = (x_tilde + (sigma_down - sig_t) * _static_eps_at(net, x_2, sigma_mid)
                + s_noise * sigma_up * z_of(11, (3, 4)))
    torch.testing.assert_close(out, ABAR[s].sqrt() * expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("t, s, eta, s_noise", [(600, 350, 1.0, 1.0), (300, 200, 0.6, 1.0), (500, 100, 1.0, 0.9)])
def test_dpmpp_2s_ancestral_step_is_k_diffusion(t, s, eta, s_noise):
    """One step of k-diffusion's sample_dpmpp_2s_ancestral written out, with t_fn = -log sigma:
    h = log(sigma_t/sigma_down), sigma_mid = exp(-(t + h/2)) (r = 1/2), D0 = x~ - sigma_t eps(x~),
    x~_2 = (sigma_mid/sigma_t) x~ - expm1(-h/2) D0, D2 = x~_2 - sigma_mid eps(x~_2; sigma_mid),
    x~_s = (sigma_down/sigma_t) x~ - expm1(-h) D2 + s_noise sigma_up z."""
    from diffkit.samplers.karras import dpmpp_2s_ancestral
    net = LinearEps(4, seed=3, time_dependent=False)
    x = x_start(3, 4, 8)
    out = dpmpp_2s_ancestral(Denoiser(net, S), x, torch.tensor([float(t), float(s)], dtype=F64), eta=eta,
                             s_noise=s_noise, generator=torch.Generator().manual_seed(12))
    sig_t, sig_s = karras_sigma(t), karras_sigma(s)
    sigma_down, sigma_up = get_ancestral_step(sig_t, sig_s, eta)
    lam_t, lam_next = -math.log(sig_t), -math.log(sigma_down)
    h = lam_next - lam_t
    sigma_mid = math.exp(-(lam_t + 0.5 * h))
    x_tilde = x / ABAR[t].sqrt()
    D0 = x_tilde - sig_t * net.eps(x, None)
    x_2 = (sigma_mid / sig_t) * x_tilde - math.expm1(-0.5 * h) * D0
    D2 = x_2 - sigma_mid * _static_eps_at(net, x_2, sigma_mid)
    expected = (sigma_down / sig_t) * x_tilde - math.expm1(-h) * D2 + s_noise * sigma_up * z_of(12, (3, 4))
    # the Denoiser forms x0 at the float32 time it hands the network; t(sigma_mid) is not an integer
    # (unless eta = 1, where sigma_mid = sigma_s), which moves D2 by about 1e-8 relative
    torch.testing.assert_close(out, ABAR[s].sqrt() * expected, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("sampler", ["dpm2-ancestral", "dpm-solver++-2s-ancestral"])
def test_ancestral_step_into_clean_data_is_the_denoised_sample(sampler):
    """sigma_s = 0: sigma_down = sigma_up = 0 and k-diffusion takes the Euler branch,
    x~ + (0 - sigma_t) d = D(x~; sigma_t) = x0_hat: one call, no noise."""
    net = LinearEps(4, seed=5)
    d = Denoiser(net, S)
    x = x_start(3, 4, 9)
    out = diffkit.sample(d, x, sampler, grid=[250.0, -1.0], generator=torch.Generator().manual_seed(1),
                         progress=False)
    assert d.nfe == 1
    x0 = (x - (1 - ABAR[250]).sqrt() * net.eps(x, 250.0)) / ABAR[250].sqrt()
    torch.testing.assert_close(out, x0, rtol=1e-10, atol=1e-12)


def test_dpm2_ancestral_equals_diffusers_kdpm2_ancestral_with_the_same_noise(monkeypatch):
    """diffusers' KDPM2AncestralDiscreteScheduler (use_karras_sigmas=True) driven step by step with
    the exact eps* of a 3-d mixture, evaluated at the scheduler's own sigma (its input scale
    1/sqrt(sigma^2 + 1)), against diffkit's dpm2-ancestral on its karras grid. The scheduler draws
    its noise with randn_tensor in the model output's dtype; here it draws float32 from the same
    single generator, as diffkit does, so both chains see the same z. Their sigmas agree to
    float32 rounding (diffusers casts its sigmas to float32) once the scheduler's alpha_bar table is
    the float64 one both run (its own is a float32 cumprod: sigma_min = sqrt(beta_1) 3e-4 off)."""
    import diffusers
    import diffusers.schedulers.scheduling_k_dpm_2_ancestral_discrete as kdpm2a
    gm = GaussianMixture.random(3, 3, seed=7, spread=1.0, scale=0.5)
    monkeypatch.setattr(kdpm2a, "randn_tensor", lambda shape, generator=None, device=None, dtype=None:
                        torch.randn(shape, generator=generator, dtype=torch.float32).to(dtype))
    steps = 12
    scheduler = diffusers.KDPM2AncestralDiscreteScheduler(beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                                                          use_karras_sigmas=True)
    scheduler.alphas_cumprod = S.alphas_cumprod.clone()  # its float32 table puts sigma_min 3e-4 off
    scheduler.set_timesteps(steps)
    grid = make_grid(S, steps, "karras", "zero")
    sigmas = S.karras_sigma(grid)
    torch.testing.assert_close(sigmas, scheduler.sigmas[::2].to(F64), rtol=2e-7, atol=0)  # s0, s1, ..., 0
    x_T = torch.randn(64, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    x = x_T * float(scheduler.init_noise_sigma)
    gen, one = torch.Generator().manual_seed(21), torch.ones(1, dtype=F64)
    calls = 0
    for t in scheduler.timesteps:
        alpha = float(scheduler.scale_model_input(one, t)[0])
        eps = gm.eps(scheduler.scale_model_input(x, t), torch.tensor(alpha, dtype=F64),
                     torch.tensor(math.sqrt(1 - alpha * alpha), dtype=F64))
        x = scheduler.step(eps, t, x, generator=gen).prev_sample
        calls += 1
    d = Denoiser(gm.network(S), S)
    ours = diffkit.sample(d, x_T, "dpm2-ancestral", grid=grid,
                          generator=torch.Generator().manual_seed(21), progress=False)
    assert calls == d.nfe == 2 * steps - 1
    diff = (ours - x).abs().max().item()
    assert diff < 2e-5, diff  # measured 7.4e-6
    # the noise matters: another seed moves the samples by O(1)
    other = diffkit.sample(d, x_T, "dpm2-ancestral", grid=grid,
                           generator=torch.Generator().manual_seed(22), progress=False)
    assert (other - x).abs().max() > 0.1


def _gaussian_chain_law(gm, sig, step_gain):
    """Mean and covariance of an ancestral chain on Gaussian data N(m, C) with the exact denoiser,
    in closed form: in C's eigenbasis (eigenvalue c) D(x~; sigma) = m + k(sigma)(x~ - m),
    k = c/(c + sigma^2), so a step maps y = x~ - m to K y + sigma_up z with the gain
    K = step_gain(k, sigma, sigma_down) of the method; from y ~ N(-m, 1 + sigma_0^2)."""
    c, U = torch.linalg.eigh(gm.cov())
    v = torch.full_like(c, 1 + sig[0] ** 2)
    shrink = torch.ones_like(c)
    for sigma, sigma_to in zip(sig[:-1], sig[1:]):
        if sigma_to == 0:
            gain, sigma_up = c / (c + sigma ** 2), 0.0  # the Euler step to D(x~; sigma)
        else:
            sigma_down, sigma_up = get_ancestral_step(sigma, sigma_to)
            gain = step_gain(lambda s: c / (c + s ** 2), sigma, sigma_down)
        v, shrink = gain ** 2 * v + sigma_up ** 2, gain * shrink
    return gm.mean() - U @ (shrink * (U.T @ gm.mean())), U @ torch.diag(v) @ U.T


def _dpm2_gain(k, sigma, sigma_down):
    # d = (1 - k) y / sigma; y_2 = y + (sigma_mid - sigma) d; y' = y + (sigma_down - sigma) d(y_2; sigma_mid)
    sigma_mid = math.sqrt(sigma * sigma_down)
    a = 1 + (sigma_mid - sigma) * (1 - k(sigma)) / sigma
    return 1 + (sigma_down - sigma) * (1 - k(sigma_mid)) * a / sigma_mid


def _dpmpp_2s_gain(k, sigma, sigma_down):
    # y_2 = e^{-h/2} y + (1 - e^{-h/2}) k(sigma) y; y' = e^{-h} y + (1 - e^{-h}) k(sigma_mid) y_2
    sigma_mid = math.sqrt(sigma * sigma_down)
    half, full = sigma_mid / sigma, sigma_down / sigma
    a = half + (1 - half) * k(sigma)
    return full + (1 - full) * k(sigma_mid) * a


@pytest.mark.parametrize("sampler, gain", [("dpm2-ancestral", _dpm2_gain),
                                           ("dpm-solver++-2s-ancestral", _dpmpp_2s_gain)])
def test_two_call_ancestral_samplers_sample_gaussian_data(sampler, gain):
    """With the exact eps* of Gaussian data, 4000 samples of 50 Karras steps have the mean and
    covariance of the chain's closed-form law (:func:`_gaussian_chain_law`, written from the
    k-diffusion step) within 4.5 standard errors, and that law is the data's up to the
    discretisation (within 3% of the largest variance at 50 steps; measured 2.5% for DPM2 a,
    2.1% for DPM++ 2S a, both too narrow)."""
    gm = GaussianMixture.random(dim=2, num_components=1, seed=4, spread=0.8, scale=0.6)
    n = 4000
    grid = make_grid(S, 50, "karras")
    sig = S.karras_sigma(grid).tolist()
    mean_N, cov_N = _gaussian_chain_law(gm, sig, gain)
    c_max = torch.linalg.eigvalsh(gm.cov()).max()
    assert ((cov_N - gm.cov()).abs() <= 0.03 * c_max).all() and ((mean_N - gm.mean()).abs() < 1e-3).all()
    d = Denoiser(gm.network(S), S)
    x = diffkit.sample(d, (n, 2), sampler, grid=grid, generator=torch.Generator().manual_seed(3),
                       dtype=F64, progress=False)
    assert d.nfe == 99
    assert_gaussian_moments(x, mean_N, cov_N)


# ------------------------------------------------------------------ predictor-corrector (score SDE)
@pytest.mark.parametrize("corrector_steps, predictor, snr", [(1, "reverse_diffusion", 0.16), (2, "ancestral", 0.3),
                                                             (0, "reverse_diffusion", 0.16)])
def test_pc_step_is_song_et_al_algorithms_3_and_5(corrector_steps, predictor, snr):
    """One PC step t -> s written out from Song et al. 2021, App. G with the respaced beta
    b = 1 - abar_t/abar_s, a = 1 - b, score g(x) = -eps(x, t)/sqrt(1 - abar_t): M Langevin steps
    (Algorithm 5: z ~ N(0, I), e = 2 a (r ||z||/||g||)^2 per sample, x <- x + e g + sqrt(2 e) z),
    then the reverse-diffusion predictor (Algorithm 3: x <- (2 - sqrt(1 - b)) x + b g + sqrt(b) z)
    or score_sde's ancestral predictor (x <- (x + b g)/sqrt(1 - b) + sqrt(b) z); z drawn in that
    order from one generator."""
    from diffkit.samplers.pc import pc
    net = LinearEps(4, seed=6)
    x = x_start(3, 4, 10)
    t, s = 600, 400
    out = pc(Denoiser(net, S), x, torch.tensor([float(t), float(s)], dtype=F64), snr=snr,
             corrector_steps=corrector_steps, predictor=predictor, generator=torch.Generator().manual_seed(13))
    gen = torch.Generator().manual_seed(13)
    draw = lambda: torch.randn(3, 4, generator=gen, dtype=torch.float32).to(F64)  # noqa: E731
    b = 1 - ABAR[t] / ABAR[s]
    score = lambda v: -net.eps(v, float(t)) / (1 - ABAR[t]).sqrt()  # noqa: E731
    expected = x.clone()
    for _ in range(corrector_steps):
        g, z = score(expected), draw()
        e = 2 * (1 - b) * (snr * z.norm(dim=1, keepdim=True) / g.norm(dim=1, keepdim=True)) ** 2
        expected = expected + e * g + (2 * e).sqrt() * z
    g = score(expected)
    if predictor == "reverse_diffusion":
        expected = (2 - (1 - b).sqrt()) * expected + b * g
    else:
        expected = (expected + b * g) / (1 - b).sqrt()
    expected = expected + b.sqrt() * draw()
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


def test_pc_nfe_follows_its_corrector_steps():
    """NFE = steps * (1 + corrector_steps), counted; nfe= picks the step count for the
    corrector_steps given (a one-line error names the NFEs that are possible)."""
    gm = GaussianMixture.random(3, 2, seed=1)
    d = Denoiser(gm.network(S), S)
    for m in (0, 1, 3):
        for steps in (1, 4):
            d.reset_nfe()
            diffkit.sample(d, (2, 3), "pc", steps=steps, corrector_steps=m, seed=0, progress=False)
            assert d.nfe == steps * (1 + m), (m, steps)
    d.reset_nfe()
    diffkit.sample(d, (2, 3), "pc", nfe=9, corrector_steps=2, seed=0, progress=False)
    assert d.nfe == 9
    with pytest.raises(diffkit.DiffkitError, match=r"nfe=10; it can spend 3, 6, 9, 12.*calls per step: 3\)") as err:
        diffkit.sample(d, (2, 3), "pc", nfe=10, corrector_steps=2, progress=False)
    assert "\n" not in str(err.value)
    with pytest.raises(diffkit.DiffkitError, match="corrector_steps=-1"):
        diffkit.sample(d, (2, 3), "pc", steps=3, corrector_steps=-1, progress=False)


def _gaussian_64():
    return GaussianMixture.random(dim=64, num_components=1, seed=4, spread=0.8, scale=0.6)


def test_pc_samples_gaussian_data():
    """pc with its defaults (reverse diffusion + one Langevin step, snr 0.16) on 64-d Gaussian data
    with the exact score, 150 linear steps, 2000 samples: the mean is within 4.5 standard errors
    of the data's per coordinate, and the covariance within 1.25x the relative Frobenius error
    of 2000 true samples, its trace within 8% (measured 1.05: the unadjusted Langevin step's own
    stationary bias, about r^2 per step, and its per-sample step size; docs/samplers.md)."""
    gm = _gaussian_64()
    n = 2000
    # one generator for the batch (x_T, then the step noise): the same i.i.d. N(0, I) draws as
    # seed= gives, without 2000 torch.randn calls per predictor and corrector step (6 of 9 s)
    x = diffkit.sample(Denoiser(gm.network(S), S), (n, 64), "pc", steps=150, generator=torch.Generator().manual_seed(2),
                       dtype=F64, progress=False)
    C = gm.cov()
    se_mean = (torch.diagonal(C) / n).sqrt()
    assert ((x.mean(0) - gm.mean()).abs() <= 4.5 * se_mean).all()
    true = gm.sample(n, torch.Generator().manual_seed(0))[0]
    rel = lambda v: ((torch.cov(v.T) - C).norm() / C.norm()).item()  # noqa: E731
    assert rel(x) < 1.25 * rel(true), (rel(x), rel(true))
    assert abs(torch.cov(x.T).trace() / C.trace() - 1) < 0.08


def test_pc_more_corrector_steps_pull_a_wrong_start_to_the_data():
    """The corrector's purpose (Song et al. 2021, Sec. 4.2): correct the error of the chain so far.
    Started from N(0, I) at t = 300 (far from p_300, whose mean is sqrt(abar) m), 30 steps: the
    error of the sample mean falls with every corrector step added (M = 0, 1, 2, 4), and the
    covariance is no worse than with M = 0 by more than 0.02 relative."""
    gm = _gaussian_64()
    d = Denoiser(gm.network(S), S)
    grid = torch.cat([torch.linspace(300.0, 0.0, 31, dtype=F64), torch.tensor([-1.0], dtype=F64)])
    noise = torch.randn(2000, 64, generator=torch.Generator().manual_seed(0), dtype=F64)
    C = gm.cov()
    mean_err, cov_err = [], []
    for m in (0, 1, 2, 4):
        # one generator for the batch, seeded alike for every M (as seed=1 was): the same i.i.d.
        # step noise without 2000 torch.randn calls per step (6 of the test's 10 s)
        x = diffkit.sample(d, noise, "pc", grid=grid, corrector_steps=m, generator=torch.Generator().manual_seed(1),
                           progress=False)
        mean_err.append((x.mean(0) - gm.mean()).norm().item())
        cov_err.append(((torch.cov(x.T) - C).norm() / C.norm()).item())
    assert all(a > b for a, b in zip(mean_err, mean_err[1:])) and mean_err[-1] < 0.2 * mean_err[0], mean_err
    assert max(cov_err) < cov_err[0] + 0.02, cov_err


# ------------------------------------------------------------------ pooled context in the U-Net
def test_pooled_context_embedding_is_a_linear_map_of_the_token_mean():
    """With context_pooled, the embedding that reaches the U-Net's blocks is
    silu(time_embedding + W mean_tokens(context)) (bias zeroed; Imagen Sec. 2.2 pooling), checked
    on the embedding the first down block receives; two contexts with the same token mean but
    different tokens give the same embedding."""
    from diffkit.models import UNet, UNetConfig
    torch.manual_seed(0)
    model = UNet(UNetConfig(channel=16, channel_mult=[1, 2], attn=[1], num_res_blocks=1, dropout=0.0, img_size=8,
                            context_dim=6, context_pooled=True)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.context_embed.weight.copy_(torch.randn(model.context_embed.weight.shape, generator=g))
        model.context_embed.bias.zero_()
    seen = {}
    model.time_embed.register_forward_hook(lambda m, i, out: seen.__setitem__("time", out.detach()))
    model.down[0].register_forward_pre_hook(lambda m, args: seen.__setitem__("emb", args[1].detach()))
    x = torch.randn(2, 3, 8, 8, generator=g)
    context = torch.randn(2, 5, 6, generator=g)
    with torch.no_grad():
        model(x, torch.tensor([10.0, 700.0]), context=context)
    W = model.context_embed.weight.detach()
    expected = torch.nn.functional.silu(seen["time"] + context.mean(dim=1) @ W.T)
    torch.testing.assert_close(seen["emb"], expected, rtol=1e-5, atol=1e-5)
    emb = seen["emb"]
    # same mean over the tokens, different tokens (and a different first token)
    shuffled = context.flip(1) + torch.tensor([1.0, -2.0, 0.0, 2.0, -1.0])[None, :, None]
    with torch.no_grad():
        model(x, torch.tensor([10.0, 700.0]), context=shuffled)
    torch.testing.assert_close(seen["emb"], emb, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ diffkit.analytic itself
@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture.random(3, 3, seed=7, spread=1.0, scale=0.5)


def _components(gm, alpha, sigma):
    """torch.distributions.MultivariateNormal of each component at noise level (alpha, sigma):
    N(alpha m_k, alpha^2 C_k + sigma^2 I) (the VP marginal of one Gaussian)."""
    eye = torch.eye(gm.dim, dtype=F64)
    return [torch.distributions.MultivariateNormal(alpha * gm.means[k], alpha ** 2 * gm.covs[k] + sigma ** 2 * eye)
            for k in range(gm.num_components)]


@pytest.mark.parametrize("t", [50, 400, 900])
def test_mixture_log_prob_score_and_eps_against_torch_distributions_and_autograd(mixture, t):
    """log p_t = logsumexp_k (log w_k + log N(x; alpha m_k, alpha^2 C_k + sigma^2 I)) from
    torch.distributions; score = autograd of that log density; eps* = -sigma score (seed 002);
    the class-conditional score = autograd of log N_k."""
    alpha, sigma = ABAR[t].sqrt(), (1 - ABAR[t]).sqrt()
    x = (alpha * mixture.sample(16, torch.Generator().manual_seed(t))[0]
         + sigma * torch.randn(16, 3, generator=torch.Generator().manual_seed(t + 1), dtype=F64))
    comps = _components(mixture, alpha, sigma)
    xg = x.clone().requires_grad_(True)
    log_joint = torch.stack([c.log_prob(xg) for c in comps], 1) + mixture.weights.log()
    log_p = torch.logsumexp(log_joint, 1)
    score_ref, = torch.autograd.grad(log_p.sum(), xg)
    torch.testing.assert_close(mixture.log_prob(x, alpha, sigma), log_p.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(mixture.score(x, alpha, sigma), score_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(mixture.eps(x, alpha, sigma), -sigma * score_ref, rtol=1e-9, atol=1e-9)
    y = torch.tensor([0, 1, 2, 1] * 4)
    xg = x.clone().requires_grad_(True)
    log_cond = torch.stack([comps[int(k)].log_prob(xg[i]) for i, k in enumerate(y)])
    cond_ref, = torch.autograd.grad(log_cond.sum(), xg)
    torch.testing.assert_close(mixture.score(x, alpha, sigma, y), cond_ref, rtol=1e-9, atol=1e-9)


def test_mixture_with_per_sample_noise_levels_matches_one_level_at_a_time(mixture):
    """(B,) alpha, sigma: row i equals the density/score at its own level (torch.distributions)."""
    ts = [10, 300, 650, 999]
    alpha, sigma = ABAR[ts].sqrt(), (1 - ABAR[ts]).sqrt()
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    lp, sc = mixture.log_prob(x, alpha, sigma), mixture.score(x, alpha, sigma)
    for i in range(4):
        xi = x[i:i + 1].clone().requires_grad_(True)
        comps = _components(mixture, alpha[i], sigma[i])
        ref = torch.logsumexp(torch.stack([c.log_prob(xi) for c in comps], 1) + mixture.weights.log(), 1)
        grad, = torch.autograd.grad(ref.sum(), xi)
        torch.testing.assert_close(lp[i:i + 1], ref.detach(), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(sc[i:i + 1], grad, rtol=1e-9, atol=1e-9)


def test_class_log_posterior_is_bayes_rule(mixture):
    """log p(y = k | x_t) = log w_k + log N_k(x_t) - log sum_j w_j N_j(x_t), the densities from
    torch.distributions; rows are normalised."""
    t = 500
    alpha, sigma = ABAR[t].sqrt(), (1 - ABAR[t]).sqrt()
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(4), dtype=F64) * 0.8
    comps = _components(mixture, alpha, sigma)
    joint = torch.stack([c.log_prob(x) for c in comps], 1) + mixture.weights.log()
    expected = joint - torch.logsumexp(joint, 1, keepdim=True)
    got = mixture.class_log_posterior(x, alpha, sigma)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got.exp().sum(1), torch.ones(10, dtype=F64), rtol=1e-12, atol=1e-12)


def _posterior_reference(gm, x, alpha, sigma):
    """diag Var[x0 | x_t] with explicit matrices: per component S = alpha^2 C + sigma^2 I,
    E = m + alpha C S^-1 (x - alpha m), Cov = C - alpha^2 C S^-1 C; responsibilities by Bayes'
    rule; law of total variance over the components."""
    eye = torch.eye(gm.dim, dtype=F64)
    comps = _components(gm, alpha, sigma)
    resp = torch.softmax(torch.stack([c.log_prob(x) for c in comps], 1) + gm.weights.log(), 1)
    means, variances = [], []
    for k in range(gm.num_components):
        C, m = gm.covs[k], gm.means[k]
        Sinv = torch.linalg.inv(alpha ** 2 * C + sigma ** 2 * eye)
        means.append(m + alpha * (x - alpha * m) @ (C @ Sinv).T)
        variances.append(torch.diagonal(C - alpha ** 2 * C @ Sinv @ C).expand(x.shape[0], -1))
    means, variances = torch.stack(means, 1), torch.stack(variances, 1)
    first = (resp[:, :, None] * means).sum(1)
    return (resp[:, :, None] * (variances + means ** 2)).sum(1) - first ** 2


@pytest.mark.parametrize("t", [20, 300, 800])
def test_posterior_x0_variance_is_the_gaussian_closed_form(mixture, t):
    """Var[x0 | x_t] for one Gaussian: diag(C - alpha^2 C S^-1 C), S = alpha^2 C + sigma^2 I
    (independent of x_t); for a mixture, the law of total variance over explicit per-component
    posteriors (_posterior_reference)."""
    alpha, sigma = ABAR[t].sqrt(), (1 - ABAR[t]).sqrt()
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(t), dtype=F64)
    C = torch.tensor([[0.5, 0.2, 0.0], [0.2, 0.3, -0.1], [0.0, -0.1, 0.8]], dtype=F64)
    single = GaussianMixture([1.0], [[0.3, -0.2, 0.5]], C[None])
    S_t = alpha ** 2 * C + sigma ** 2 * torch.eye(3, dtype=F64)
    closed = torch.diagonal(C - alpha ** 2 * C @ torch.linalg.solve(S_t, C))
    torch.testing.assert_close(single.posterior_x0_variance(x, alpha, sigma), closed.expand(6, 3),
                               rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(mixture.posterior_x0_variance(x, alpha, sigma),
                               _posterior_reference(mixture, x, alpha, sigma), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("t", [1, 40, 500])
def test_learned_variance_output_gives_the_exact_reverse_kernel_for_isotropic_gaussian_data(t):
    """AnalyticNetwork(learned_variance=True) for data N(m, c I): the variance its v gives through
    Improved DDPM eq. 15 (written out here) equals Var[x_{t-1} | x_t] of the joint Gaussian:
    V_{t-1} - alpha_t V_{t-1}^2 / V_t with V_s = abar_s c + 1 - abar_s (x_t = sqrt(alpha_t) x_{t-1} +
    sqrt(beta_t) noise)."""
    c = 0.3
    gm = GaussianMixture([1.0], [[0.5, -0.5]], (c * torch.eye(2, dtype=F64))[None])
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(t), dtype=F64)
    out = gm.network(S, learned_variance=True)(x, torch.full((5,), float(t), dtype=F64))
    v = out[:, 2:]
    abar_t, abar_s = ABAR[t], ABAR[t - 1]
    beta = 1 - abar_t / abar_s
    beta_tilde = (1 - abar_s) / (1 - abar_t) * beta
    f = (v + 1) / 2
    sigma2 = torch.exp(f * torch.log(beta) + (1 - f) * torch.log(beta_tilde))
    V_s, V_t = abar_s * c + 1 - abar_s, abar_t * c + 1 - abar_t
    exact = V_s - (1 - beta) * V_s ** 2 / V_t
    torch.testing.assert_close(sigma2, exact.expand(5, 2), rtol=1e-9, atol=0)
