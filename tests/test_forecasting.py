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
from diffkit.forecasting import forecast_mask, random_missing_mask
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
    out = diffkit.impute(den, series, observed, "ddpm", 100, reconstruction_weight=weight,
                         generator=torch.Generator().manual_seed(5), **FREE)
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


def test_reconstruction_guidance_moves_the_forecast_toward_the_exact_conditional_mean():
    """AR(1) series, the first 3 steps known (x_2 = 0.6): the exact conditional of the last step is
    N(m_3 + rho (x_2 - m_2), v (1 - rho^2)) = N(0.44, 0.0475). Replacement stops part way (the
    network sees the history only through the noisy x_t: mean 0.187 with ddpm, 0.129 with ddim, 50 steps);
    reconstruction guidance with w = 4 closes more than 3/4 of that gap (0.457, 0.386; w = 1: 0.273,
    0.206; w = 2: 0.346, 0.273), with an ancestral and an ODE sampler (2000 samples)."""
    n = 2000
    den = Denoiser(AR.network(S), S)
    history = torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64).expand(n, 1, 3)
    cond_mean = (AR_MEAN[3] + RHO * (0.6 - AR_MEAN[2])).item()
    for sampler in ("ddpm", "ddim"):
        means = {}
        for weight in (0.0, 4.0):
            out = diffkit.forecast(den, history, 1, sampler, 50, reconstruction_weight=weight,
                                   generator=torch.Generator().manual_seed(0), **FREE)
            means[weight] = out.mean().item()
        gap_replacement, gap_guided = cond_mean - means[0.0], abs(cond_mean - means[4.0])
        assert gap_replacement > 0.05, (sampler, means)  # replacement is biased toward the marginal mean
        assert gap_guided < 0.25 * gap_replacement, (sampler, means, cond_mean)


def test_reconstruction_guidance_composes_with_repaint_resampling():
    """The AR(1) forecast above with RePaint (ddpm, 50 steps, jump_length 5, jump_n_sample 3): mean 0.280;
    with reconstruction guidance w = 2 on top, 0.415 (the exact conditional mean 0.44; 2000 samples)."""
    n = 2000
    den = Denoiser(AR.network(S), S)
    history = torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64).expand(n, 1, 3)
    cond_mean = (AR_MEAN[3] + RHO * (0.6 - AR_MEAN[2])).item()
    means = {w: diffkit.forecast(den, history, 1, "ddpm", 50, jump_length=5, jump_n_sample=3, reconstruction_weight=w,
                                 generator=torch.Generator().manual_seed(0), **FREE).mean().item() for w in (0.0, 2.0)}
    assert cond_mean - means[0.0] > 0.1, means
    assert abs(cond_mean - means[2.0]) < 0.5 * (cond_mean - means[0.0]), means


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
    run = lambda w, th: diffkit.forecast(den, history, 1, "ddim", 20, reconstruction_weight=w, thresholding=th,  # noqa: E731
                                         seed=0, **FREE)
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


HIST = torch.zeros(2, 1, 3, dtype=torch.float64)
DEN_AR = Denoiser(AR.network(S), S)
BAD = [
    (lambda: diffkit.forecast(DEN_AR, HIST, 4, **FREE), r"horizon=4 is out of range; allowed: an integer in \[1, 3\]"),
    (lambda: diffkit.forecast(DEN_AR, HIST, 0, **FREE), r"horizon=0 is out of range"),
    (lambda: diffkit.forecast(DEN_AR, HIST, 2, **FREE), r"history of 3 steps with horizon=2 does not fit the model's "
                                                        r"window of 4 steps; allowed: at most 2 history steps"),
    (lambda: diffkit.forecast(DEN_AR, HIST + float("nan"), 1, **FREE), r"history holds NaN"),
    (lambda: diffkit.forecast(DEN_AR, HIST[0], 1, **FREE), r"history of shape \(1, 3\) is not allowed"),
    (lambda: diffkit.forecast(DEN_AR, HIST, 1), r"does not say its window length"),
    (lambda: diffkit.forecast(DEN_AR, HIST, 1, reconstruction_weight=-1, **FREE), r"reconstruction_weight=-1"),
    (lambda: diffkit.forecast(DEN_AR, HIST, 1, "ddim", jump_n_sample=3, **FREE), r"needs sampler='ddpm'"),
    (lambda: diffkit.impute(DEN_AR, torch.zeros(1, 1, 5), **FREE), r"series of 5 steps is longer than the model's "
                                                                   r"window of 4"),
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
