"""diffkit.forecast beyond one window (rolled in chunks) and from a long history, and diffkit.impute of a
series longer than the window (window by window), on the exact Gaussian series models of
test_forecasting: independent steps (each generated value is the exact probability-flow map of its own
noise, whatever the context) and AR(1) (each chunk's exact conditional given its context follows from
the float64 affine recursion ``exact_moments``)."""
import pytest
import torch

import diffkit
import diffkit.forecasting as fc
from diffkit import Denoiser
from diffkit.analytic import gaussian_ode_solution
from diffkit.forecasting import forecast_windows, impute_windows, random_missing_mask
from diffkit.sampling import sampler_grid
from diffkit.samplers.registry import get_sampler
from test_forecasting import (C, DEN_AR, DIAG, DIAG_MEAN, DIAG_VAR, FREE, HISTORY, L, S, alpha_sigma,
                              assert_moments, exact_moments)


def ode_map(noise, steps):
    """The exact DDIM (probability-flow) output of the independent-steps model from start sigma_T noise,
    every value of the window (n, C, L), float64."""
    grid = sampler_grid(Denoiser(DIAG.network(S), S), get_sampler("ddim"), steps)
    a, s = alpha_sigma(grid[0])
    out = gaussian_ode_solution(DIAG_MEAN, torch.diag(DIAG_VAR), s * noise.reshape(len(noise), -1), a, s,
                                *alpha_sigma(grid[-1]))
    return out.reshape(-1, C, L)


def record_windows(monkeypatch):
    """The (window, repaint, output) of every window diffkit.forecasting samples."""
    calls, real = [], fc._generate

    def spy(denoiser, window, repaint, *args):
        out = real(denoiser, window, repaint, *args)
        calls.append((window.clone(), repaint.clone(), out.clone()))
        return out
    monkeypatch.setattr(fc, "_generate", spy)
    return calls


def test_the_window_plans():
    assert forecast_windows(3, 4, 3) == [(1, 3)]  # fits one window: the last L - horizon history steps
    assert forecast_windows(1, 4, 2) == [(1, 2)]  # a short history: the window's last step dropped
    assert forecast_windows(3, 4, 5, chunk=2) == [(2, 2), (2, 2), (3, 1)]  # the last chunk shorter, more context
    assert forecast_windows(3, 4, 5) == [(3, 1)] * 5  # default chunk max(L // 4, 1)
    assert forecast_windows(1, 4, 4, chunk=3) == [(1, 3), (3, 1)]
    assert forecast_windows(2, 24, 30) == [(2, 6), (8, 6), (14, 6), (18, 6), (18, 6)]  # the history, then 18
    assert forecast_windows(30, 24, 23) == [(1, 23)]  # one window: the last L - horizon history steps
    assert impute_windows(4, 4, 2) == [0] and impute_windows(3, 4, 2) == [0]
    assert impute_windows(11, 4, 2) == [0, 2, 4, 6, 7]  # the last window ends with the series
    assert impute_windows(8, 4, 2) == [0, 2, 4]
    assert impute_windows(9, 4, 3) == [0, 3, 5]


@pytest.mark.parametrize("known,horizon,chunk", [(2, 5, 2), (1, 6, None), (6, 7, 3)])
def test_a_rolled_forecast_of_independent_steps_is_the_exact_map_of_each_windows_noise(known, horizon, chunk):
    """DDIM on independent Gaussian steps: window j of the roll starts from sample i's generator (seed + i)
    continued, so its noise is the j-th randn(C, L) of that generator, and the chunk's values are the exact
    ODE map of that noise at the window positions the plan (forecast_windows) puts them."""
    n, steps = 4, 300
    den = Denoiser(DIAG.network(S), S)
    history = torch.randn(n, C, known, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = diffkit.forecast(den, history, horizon, "ddim", steps, chunk=chunk, seed=9, reconstruction_weight=0.0,
                           **FREE)
    assert out.shape == (n, C, horizon)
    generators = [torch.Generator().manual_seed(9 + i) for i in range(n)]
    expected = []
    for width, new in forecast_windows(known, L, horizon, chunk):
        noise = torch.stack([torch.randn(C, L, generator=g) for g in generators]).double()
        expected.append(ode_map(noise, steps)[..., width:width + new])
    # 300 DDIM steps are within 0.013 of the exact map; a reused noise or a wrong position is off by O(0.1-1)
    assert (out - torch.cat(expected, dim=-1)).abs().max() < 2e-2


def test_each_chunk_is_conditioned_on_the_last_values_given_or_generated(monkeypatch):
    """The windows of a rolled forecast (horizon 5 of an L = 4 model, chunk 2, a history of 6):
    each window's known part is the last L - new values of the history followed by the chunks already
    generated, the rest repainted, and the forecast is the windows' new values in order."""
    calls = record_windows(monkeypatch)
    history = torch.randn(3, 1, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = diffkit.forecast(DEN_AR, history, 5, "ddpm", 5, chunk=2, seed=0, **FREE)
    assert len(calls) == 3
    so_far = history
    for (window, repaint, generated), (width, new) in zip(calls, [(2, 2), (2, 2), (3, 1)]):
        assert torch.equal(window[..., :width], so_far[..., -width:])
        assert (repaint[..., :width] == 0).all() and (repaint[..., width:] == 1).all()
        so_far = torch.cat([so_far, generated[..., width:width + new]], dim=-1)
    assert torch.equal(out, so_far[..., 6:])


def test_the_first_chunk_is_the_one_window_forecast_and_a_long_history_uses_its_tail():
    """AR(1), ddpm with guidance: the first chunk of a rolled forecast is the one-window forecast of the
    same seed (bit for bit), and a history longer than L - horizon forecasts as its last L - horizon steps."""
    history = torch.randn(5, 1, 9, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    options = dict(sampler="ddpm", steps=10, seed=4, **FREE)
    one = diffkit.forecast(DEN_AR, history, 1, **options)
    assert torch.equal(one, diffkit.forecast(DEN_AR, history[..., -3:], 1, **options))
    rolled = diffkit.forecast(DEN_AR, history, 4, chunk=1, **options)
    assert torch.equal(rolled[..., :1], one)
    assert torch.equal(diffkit.forecast(DEN_AR, history, 2, **options),
                       diffkit.forecast(DEN_AR, history[..., -2:], 2, **options))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_the_second_chunk_has_the_exact_conditional_of_its_generated_context(sampler):
    """AR(1), history (0.1, 0.3, 0.6), horizon 2 in chunks of 1: the second value y2 is drawn from the
    window (0.3, 0.6, y1). Every step being affine on a single Gaussian, the exact output given a context c
    is N(m(c), v) with m affine in c (exact_moments, float64); so y2 - m(0.3, 0.6, y1) is N(0, v) over
    2000 series (mean and variance within 4 standard errors). A roll conditioned on the history window
    (0.1, 0.3, 0.6) instead would put the residual's mean near 0.44 - m(...) and fail."""
    n, steps, weight = 2000, 30, 1.0
    out = diffkit.forecast(DEN_AR, HISTORY.expand(n, 1, 3), 2, sampler, steps, chunk=1, reconstruction_weight=weight,
                           generator=torch.Generator().manual_seed(0), **FREE)
    base, cov = exact_moments(sampler, weight, torch.zeros(3, dtype=torch.float64), steps)
    slopes = [exact_moments(sampler, weight, torch.eye(3, dtype=torch.float64)[j], steps)[0][3] - base[3]
              for j in range(3)]
    context = torch.stack([torch.full((n,), 0.3, dtype=torch.float64), torch.full((n,), 0.6, dtype=torch.float64),
                           out[:, 0, 0].double()], dim=-1)
    mean = base[3] + context @ torch.stack(slopes)
    first_mean, first_cov = exact_moments(sampler, weight, HISTORY, steps)
    assert_moments(out[:, 0, 0], first_mean[3].item(), first_cov[3, 3].item())
    assert_moments(out[:, 0, 1].double() - mean, 0.0, cov[3, 3].item())


def test_a_long_series_is_imputed_window_by_window(monkeypatch):
    """A series of 11 steps (L = 4), half missing, chunk 2: windows start at 0, 2, 4, 6, 7; each missing
    value is repainted in exactly one window (the first that covers it), every other value of a window is
    the observed value or the one an earlier window filled (and is returned so), the observed values come
    back bit for bit and every missing one is filled."""
    calls = record_windows(monkeypatch)
    series = torch.randn(3, 1, 11, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    observed = random_missing_mask(series.shape, 0.5, seed=1)
    given = torch.where(observed, series, torch.full_like(series, float("nan")))
    out = diffkit.impute(DEN_AR, given, None, "ddpm", 5, seed=0, **FREE)
    assert torch.equal(out[observed], series[observed]) and torch.isfinite(out).all()
    starts = [0, 2, 4, 6, 7]
    assert len(calls) == len(starts)
    repainted = torch.zeros_like(series)
    for (window, repaint, generated), start in zip(calls, starts):
        part = slice(start, start + L)
        assert torch.equal(window[repaint == 0], out[..., part][repaint == 0])  # observed or filled before
        assert torch.equal(generated[repaint == 1], out[..., part][repaint == 1])  # filled here, returned so
        repainted[..., part] += repaint
    assert torch.equal(repainted, (~observed).double())  # each missing value filled once, nothing else


def test_a_long_imputation_of_independent_steps_is_the_exact_map_of_each_windows_noise():
    """DDIM on independent steps, a series of 7 (L = 4, chunk 2: windows 0, 2, 3): a value filled in window
    j is the exact ODE map of the j-th noise of its sample's generator at its window position."""
    n, steps, length = 4, 300, 7
    den = Denoiser(DIAG.network(S), S)
    series = torch.randn(n, C, length, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    observed = random_missing_mask(series.shape, 0.4, seed=5)
    out = diffkit.impute(den, series, observed, "ddim", steps, seed=3, reconstruction_weight=0.0, **FREE)
    generators = [torch.Generator().manual_seed(3 + i) for i in range(n)]
    expected, known = series.clone(), observed.clone()
    for start in impute_windows(length, L, 2):
        part = slice(start, start + L)
        assert not known[..., part].all()  # every window has something to fill here
        noise = torch.stack([torch.randn(C, L, generator=g) for g in generators]).double()
        expected[..., part] = torch.where(known[..., part], expected[..., part], ode_map(noise, steps))
        known[..., part] = True
    assert torch.equal(out[observed], series[observed])
    assert (out - expected).abs().max() < 1e-2


def test_a_long_series_with_nothing_missing_samples_nothing():
    DEN_AR.reset_nfe()
    series = torch.randn(2, 1, 9, generator=torch.Generator().manual_seed(0))
    assert torch.equal(diffkit.impute(DEN_AR, series, **FREE), series) and DEN_AR.nfe == 0
