"""diffkit.forecast / diffkit.impute (diffkit.forecasting) and reconstruction guidance
(diffkit.guidance.ReconstructionGuidance) against closed forms on Gaussian series (diffkit.analytic,
series shaped (batch, channels, length)): independent values are generated with their exact
conditional (= their marginal) and the known values are kept exactly; on correlated (AR(1)) data
reconstruction guidance moves the forecast toward the exact conditional mean E[x_b | x_a] more than
replacement does; the guidance's x_0 correction is the closed form of Ho et al. 2022, Sec. 3.1."""
import math

import pytest
import torch

import diffkit
from diffkit import Denoiser, DiffkitError, NoiseSchedule
from diffkit.analytic import GaussianMixture, gaussian_ode_solution
from diffkit.editing import repaint_walk
from diffkit.forecasting import random_missing_mask
from diffkit.guidance import ReconstructionGuidance
from diffkit.noise import generators_from_seed
from diffkit.sampling import sampler_grid
from diffkit.samplers.registry import get_sampler

S = NoiseSchedule.linear(1000)
C, L = 2, 4  # series (batch, 2 channels, 4 steps): 8 values, flattened channel-major by the analytic model
DIAG_MEAN = torch.tensor([0.3, -0.2, 0.1, 0.4, -0.3, 0.0, 0.2, -0.1], dtype=torch.float64)
DIAG_VAR = torch.tensor([0.2, 0.05, 0.1, 0.3, 0.15, 0.08, 0.25, 0.12], dtype=torch.float64)
DIAG = GaussianMixture([1.0], DIAG_MEAN[None], torch.diag(DIAG_VAR)[None])
FREE = dict(progress=False, length=L)


def alpha_sigma(t):
    t = torch.tensor([float(t)], dtype=torch.float64)
    return S.alpha(t).item(), S.sigma(t).item()


def as_series(flat):
    return flat.reshape(-1, C, L)


# ---------------------------------------------------------------- independent values: exact
@pytest.mark.parametrize("weight", [0.0, 3.0])
def test_independent_values_are_imputed_with_their_exact_marginal_and_guidance_breaks_nothing(weight):
    """Diagonal covariance: a missing value is independent of the observed ones, so its exact
    conditional is its marginal N(m_i, v_i); DDPM with the exact reverse kernel (learned variance)
    draws it (mean and variance within 4 standard errors, 3000 series) and the observed values are
    kept bit for bit. With w = 3 this is only a "nothing breaks" check: the known part's x_0 does
    not depend on the missing values' x_t, so the guidance gradient is 0 there and a wrong
    guidance (e.g. without its mask) would pass; test_reconstruction_guidance_is_the_closed_form_x0_correction
    (correlated dims) is the test that sees the guidance."""
    n = 3000
    den = Denoiser(DIAG.network(S, learned_variance=True), S, learned_variance=True)
    series = as_series(DIAG.sample(n, torch.Generator().manual_seed(1))[0])
    observed = random_missing_mask(series.shape, 0.5, seed=3)
    out = diffkit.impute(den, series, observed, "ddpm", 100, reconstruction_weight=weight, batch_size=None,
                         generator=torch.Generator().manual_seed(5), **FREE)  # None: 3000 in one call (auto: 256)
    assert torch.equal(out[observed], series[observed])  # kept exactly, bit for bit
    flat, missing = out.reshape(n, -1), (~observed).reshape(n, -1)
    for i in range(C * L):
        values = flat[missing[:, i], i]
        count = values.numel()
        assert count > 1000
        assert abs(values.mean() - DIAG_MEAN[i]) < 4 * math.sqrt(DIAG_VAR[i] / count), i
        assert abs(values.var() - DIAG_VAR[i]) < 4 * DIAG_VAR[i] * math.sqrt(2 / count), i


@pytest.mark.parametrize("known,horizon", [(2, 2), (1, 2)])
def test_forecast_of_independent_steps_is_their_exact_ode_map(known, horizon):
    """DDIM (an ODE solver) on diagonal Gaussian series: each generated value follows the exact
    probability-flow map (analytic.gaussian_ode_solution) of its own start sigma_T z, z the noise
    of per-sample generators seed + i for the whole window; the forecast is the window's steps
    known .. known + horizon - 1 (with known + horizon < L the last step is generated and dropped)."""
    n, steps = 5, 400
    den = Denoiser(DIAG.network(S), S)
    history = as_series(DIAG.sample(n, torch.Generator().manual_seed(2))[0])[..., :known]
    out = diffkit.forecast(den, history, horizon, "ddim", steps, seed=9, reconstruction_weight=0.0, **FREE)
    assert out.shape == (n, C, horizon)
    grid = sampler_grid(den, get_sampler("ddim"), steps)
    a, s = alpha_sigma(grid[0])
    noise = torch.stack([torch.randn(C, L, generator=g) for g in generators_from_seed(9, n)]).double()
    generated = torch.zeros(C, L, dtype=torch.bool)
    generated[:, known:] = True
    generated = generated.reshape(-1)
    start = s * noise.reshape(n, -1)[:, generated]
    ref = gaussian_ode_solution(DIAG_MEAN[generated], torch.diag(DIAG_VAR[generated]), start, a, s,
                                *alpha_sigma(grid[-1]))
    ref = ref.reshape(n, C, L - known)[..., :horizon]  # window positions known .. known + horizon - 1
    assert (out - ref).abs().max() < 1e-2


# ---------------------------------------------------------------- correlated: guidance
RHO, AR_VAR = 0.9, 0.25
AR_MEAN = torch.tensor([0.2, 0.1, 0.0, -0.1], dtype=torch.float64)
AR_COV = AR_VAR * RHO ** (torch.arange(L)[:, None] - torch.arange(L)[None]).abs().double()
AR = GaussianMixture([1.0], AR_MEAN[None], AR_COV[None])  # one channel, an AR(1) process of 4 steps
DEN_AR = Denoiser(AR.network(S), S)


def exact_moments(sampler, weight, history, steps, jumps=None):
    """Mean and covariance (float64) of the output window of diffkit.forecast on the single Gaussian AR,
    by an independent recursion: every step is affine in x. x0-hat(x) = a K x + (I - a^2 K) m,
    K = Sigma (a^2 Sigma + s^2 I)^-1 (the posterior mean); guidance's closed form (Ho et al. 2022,
    Sec. 3.1, on this model) x0~ = x0-hat + w a^2 M K^T (1 - M)(x_known - x0-hat); replacement
    x0 = M x0~ + (1 - M) x_known. DDPM: the posterior q(x_s | x_t, x0) (DDPM eq. 6-7 between grid
    times; no noise into s = -1); DDIM (eta 0): x_s = a_s x0 + s_s (x - a_t x0) / s_t; RePaint's jump
    back up: x_t = sqrt(abar_t / abar_s) x_s + sqrt(1 - abar_t / abar_s) z. ``jumps``: (jump_length,
    jump_n_sample). Start x_T ~ N(a_T (1 - M) x_known, s_T^2 I); output M x + (1 - M) x_known."""
    known = history.shape[-1]
    eye = torch.eye(L, dtype=torch.float64)
    M = torch.diag((torch.arange(L) >= known).double())
    xk = torch.zeros(L, dtype=torch.float64)
    xk[:known] = history
    grid = sampler_grid(DEN_AR, get_sampler(sampler), steps).double()
    abar = lambda t: 1.0 if t < 0 else S.alpha_bar(torch.tensor([float(t)], dtype=torch.float64)).item()  # noqa: E731

    def x0_map(t):  # x0 = G x + g
        a, s2 = math.sqrt(abar(t)), 1 - abar(t)
        K = AR_COV @ torch.linalg.inv(a * a * AR_COV + s2 * eye)
        G1, g1 = a * K, (eye - a * a * K) @ AR_MEAN
        G2 = G1 - weight * a * a * M @ K.T @ (eye - M) @ G1
        g2 = g1 + weight * a * a * M @ K.T @ (eye - M) @ (xk - g1)
        return M @ G2, M @ g2 + (eye - M) @ xk

    a0 = math.sqrt(abar(grid[0]))
    mean, cov = a0 * (eye - M) @ xk, (1 - abar(grid[0])) * eye
    walk = list(range(len(grid) - 2, -1, -1)) if jumps is None else repaint_walk(len(grid) - 1, *jumps)
    position, last = 0, len(grid) - 1
    for index in walk:
        if index < last:  # a denoising step grid[position] -> grid[position + 1]
            t, s = grid[position].item(), grid[position + 1].item()
            G, g = x0_map(t)
            if sampler == "ddpm":
                beta = 1 - abar(t) / abar(s)
                c0 = math.sqrt(abar(s)) * beta / (1 - abar(t))
                ct = math.sqrt(abar(t) / abar(s)) * (1 - abar(s)) / (1 - abar(t))
                noise = (1 - abar(s)) / (1 - abar(t)) * beta if s >= 0 else 0.0
            else:
                ratio = math.sqrt((1 - abar(s)) / (1 - abar(t)))
                c0, ct, noise = math.sqrt(abar(s)) - ratio * math.sqrt(abar(t)), ratio, 0.0
            A = c0 * G + ct * eye
            mean, cov = A @ mean + c0 * g, A @ cov @ A.T + noise * eye
            position += 1
        else:  # one step back up, grid[position] -> grid[position - 1]
            ratio = abar(grid[position - 1].item()) / abar(grid[position].item())
            mean, cov = math.sqrt(ratio) * mean, ratio * cov + (1 - ratio) * eye
            position -= 1
        last = index
    return M @ mean + (eye - M) @ xk, M @ cov @ M


def assert_moments(out, mean, var):
    """The sample mean within 4 standard errors of the exact mean, the variance within 4 of its own."""
    n = out.numel()
    assert abs(out.mean().item() - mean) < 4 * math.sqrt(var / n), (out.mean().item(), mean)
    assert abs(out.var().item() - var) < 4 * var * math.sqrt(2 / n), (out.var().item(), var)


HISTORY = torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64)
COND_MEAN = (AR_MEAN[3] + RHO * (0.6 - AR_MEAN[2])).item()  # 0.44; variance AR_VAR (1 - rho^2) = 0.0475


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_forecast_mean_and_variance_are_the_exact_affine_recursions(sampler):
    """AR(1) series, the first 3 steps known (x_2 = 0.6): the exact conditional of the last step is
    N(0.44, 0.0475). Every step is affine in x on a single Gaussian, so the output's exact mean and
    variance follow from :func:`exact_moments`; the sampled forecast (2000 series, 50 steps) matches
    them within 4 standard errors, with replacement (w = 0) and with reconstruction guidance (w = 4).
    The exact recursion itself shows replacement biased toward the marginal mean and w = 4 closing
    most of that gap (exact means: ddpm 0.196 -> 0.457, ddim 0.133 -> 0.384 of the conditional's 0.44)."""
    n = 2000
    means = {}
    for weight in (0.0, 4.0):
        out = diffkit.forecast(DEN_AR, HISTORY.expand(n, 1, 3), 1, sampler, 50, reconstruction_weight=weight,
                               generator=torch.Generator().manual_seed(0), **FREE)
        mean, cov = exact_moments(sampler, weight, HISTORY, 50)
        assert_moments(out, mean[3].item(), cov[3, 3].item())
        means[weight] = mean[3].item()
    assert COND_MEAN - means[0.0] > 0.2  # replacement: biased toward the marginal mean -0.1
    assert abs(COND_MEAN - means[4.0]) < 0.25 * (COND_MEAN - means[0.0])


def test_reconstruction_guidance_composes_with_repaint_resampling():
    """The AR(1) forecast with RePaint (ddpm, 50 steps, jump_length 5, jump_n_sample 3), without and with
    reconstruction guidance w = 2: the sampled mean and variance are the exact recursion's (within 4
    standard errors, 2000 series), which puts RePaint alone at 0.28 and RePaint + w = 2 at 0.42 of the
    conditional's 0.44."""
    n = 2000
    means = {}
    for weight in (0.0, 2.0):
        out = diffkit.forecast(DEN_AR, HISTORY.expand(n, 1, 3), 1, "ddpm", 50, jump_length=5, jump_n_sample=3,
                               reconstruction_weight=weight, generator=torch.Generator().manual_seed(0), **FREE)
        mean, cov = exact_moments("ddpm", weight, HISTORY, 50, jumps=(5, 3))
        assert_moments(out, mean[3].item(), cov[3, 3].item())
        means[weight] = mean[3].item()
    assert abs(COND_MEAN - means[2.0]) < 0.5 * (COND_MEAN - means[0.0]), means


def test_reconstruction_guidance_is_the_closed_form_x0_correction():
    """Gaussian data: x0-hat(x_t) = m + alpha K (x_t - alpha m), K = Sigma (alpha^2 Sigma + sigma^2 I)^-1,
    so the guided x_0 is x0-hat + w alpha^2 M K^T (1 - M) (x_known - x0-hat) (M = 1 where generated);
    eps is recomputed from it (alpha x0 + sigma eps = x_t); w = 0 is the model."""
    den = Denoiser(AR.network(S), S)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, L, generator=g, dtype=torch.float64)
    known = torch.randn(3, 1, L, generator=g, dtype=torch.float64)
    mask = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64).expand(3, 1, L)
    for t in (800.0, 300.0, 20.0):
        a, s = alpha_sigma(t)
        K = AR_COV @ torch.linalg.inv(a * a * AR_COV + s * s * torch.eye(L, dtype=torch.float64))
        x0_hat = AR_MEAN + a * (x[:, 0] - a * AR_MEAN) @ K.T
        residual = (1 - mask[:, 0]) * (known[:, 0] - x0_hat)
        for w in (0.0, 1.5):
            pred = ReconstructionGuidance(den, known, mask, w)(x, t)
            expected = x0_hat + w * a * a * mask[:, 0] * (residual @ K)
            torch.testing.assert_close(pred.x0[:, 0], expected, rtol=0, atol=1e-9)
            torch.testing.assert_close(a * pred.x0 + s * pred.eps, x, rtol=0, atol=1e-9)


def test_thresholding_clips_the_guided_x0_and_the_gradient_is_taken_unclipped():
    """Known steps far outside [-1, 1] (mean 3, var 0.05; the generated step mean 0, correlated):
    the known part's x_0 is always clipped, so a gradient taken through the clip would be 0 and
    guidance would do nothing. Thresholding acts on the guided x_0 instead: the generated value's x_0
    stays inside [-1, 1], so clip changes nothing and the guided forecast is the unclipped one."""
    cov = 0.05 * RHO ** (torch.arange(L)[:, None] - torch.arange(L)[None]).abs().double()
    den = Denoiser(GaussianMixture([1.0], torch.tensor([[3.0, 3.0, 3.0, 0.0]], dtype=torch.float64),
                                   cov[None]).network(S), S)
    history = torch.tensor([3.1, 3.2, 3.3], dtype=torch.float64).expand(50, 1, 3)
    def run(w, th):
        return diffkit.forecast(den, history, 1, "ddim", 20, reconstruction_weight=w, thresholding=th, seed=0, **FREE)
    guided = run(2.0, "clip")
    torch.testing.assert_close(guided, run(2.0, None), rtol=0, atol=1e-12)
    assert (guided - run(0.0, "clip")).mean() > 0.05  # toward the conditional mean 0.27


# ---------------------------------------------------------------- input handling
def test_impute_reads_nan_as_missing_and_a_shorter_window_is_padded():
    den = Denoiser(AR.network(S), S)
    series = torch.tensor([[[0.1, float("nan"), 0.4]]], dtype=torch.float64)
    out = diffkit.impute(den, series, None, "ddim", 10, seed=0, **FREE)
    assert out.shape == (1, 1, 3) and torch.isfinite(out).all()
    assert out[0, 0, 0] == 0.1 and out[0, 0, 2] == 0.4


def test_defaults_are_ddpm_with_reconstruction_guidance_1():
    history = HISTORY.expand(4, 1, 3)
    default = diffkit.forecast(DEN_AR, history, 1, steps=10, seed=0, **FREE)
    torch.testing.assert_close(default, diffkit.forecast(DEN_AR, history, 1, "ddpm", 10, reconstruction_weight=1.0,
                                                         seed=0, **FREE), rtol=0, atol=0)
    assert not torch.equal(default, diffkit.forecast(DEN_AR, history, 1, "ddpm", 10, reconstruction_weight=0.0,
                                                     seed=0, **FREE))


def test_nothing_to_impute_returns_the_series_without_sampling_and_half_precision_comes_back_float32():
    DEN_AR.reset_nfe()
    series = torch.tensor([[[0.1, -0.2, 0.4]]], dtype=torch.float16)
    out = diffkit.impute(DEN_AR, series, **FREE)
    assert DEN_AR.nfe == 0 and out.dtype == torch.float32 and torch.equal(out, series.float())
    out = diffkit.forecast(Denoiser(AR.network(S), S), series, 1, steps=2, seed=0, **FREE)
    assert out.dtype == torch.float32


HIST = torch.zeros(2, 1, 3, dtype=torch.float64)
BAD = [
    (lambda: diffkit.forecast(DEN_AR, HIST, 0, **FREE), r"horizon=0 is out of range"),
    (lambda: diffkit.forecast(DEN_AR, HIST, 2.5, **FREE), r"horizon=2.5 must be an integer"),
    (lambda: diffkit.forecast(DEN_AR, HIST, 6, chunk=4, **FREE), r"chunk=4 is out of range; allowed: an integer in "
                                                                 r"\[1, 3\]"),
    (lambda: diffkit.forecast(DEN_AR, HIST, 6, chunk=0, **FREE), r"chunk=0 is out of range"),
    (lambda: diffkit.forecast(DEN_AR, HIST, 6, chunk=1.5, **FREE), r"chunk=1.5 must be an integer"),
    (lambda: diffkit.forecast(DEN_AR, HIST, 6, seed=0, generator=torch.Generator(), **FREE),
     r"give seed or generator, not both"),
    (lambda: diffkit.impute(DEN_AR, torch.zeros(1, 1, 9), chunk=4, **FREE), r"chunk=4 is out of range"),
    (lambda: diffkit.forecast(DEN_AR, HIST + float("nan"), 1, **FREE), r"history holds NaN"),
    (lambda: diffkit.forecast(DEN_AR, HIST[0], 1, **FREE), r"history of shape \(1, 3\) is not allowed"),
    (lambda: diffkit.forecast(DEN_AR, HIST, 1), r"does not say its window length"),
    (lambda: diffkit.forecast(DEN_AR, HIST, 1, reconstruction_weight=-1, **FREE), r"reconstruction_weight=-1"),
    (lambda: diffkit.forecast(DEN_AR, HIST, 1, "ddim", jump_n_sample=3, **FREE), r"needs sampler='ddpm'"),
    (lambda: diffkit.impute(DEN_AR, HIST, torch.ones(2, 1, 2), **FREE), r"observed_mask of \(2, 1, 2\) is not allowed"),
    (lambda: diffkit.impute(DEN_AR, HIST, torch.full((2, 1, 3), 0.5), **FREE), r"observed_mask holds values other"),
    (lambda: diffkit.impute(DEN_AR, HIST + float("nan"), torch.ones(2, 1, 3, dtype=torch.bool), **FREE),
     r"series holds NaN or infinite values where observed_mask says observed"),
]


@pytest.mark.parametrize("call,message", BAD)
def test_bad_input_is_one_line(call, message):
    with pytest.raises(DiffkitError, match=message) as err:
        call()
    assert "\n" not in str(err.value)
