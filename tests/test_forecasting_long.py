"""diffkit.forecast beyond one window (rolled in chunks) and from a long history, and diffkit.impute of a
series longer than the window (window by window), on the exact Gaussian series models of
test_forecasting: independent steps (each generated value is the exact probability-flow map of its own
noise, whatever the context) and AR(1) (each chunk's exact conditional given its context follows from
the float64 affine recursion ``exact_moments``)."""
from types import SimpleNamespace

import pytest
import torch

import diffkit
import diffkit.forecasting as fc
from diffkit import Denoiser
from diffkit.denoiser import Prediction, Wrapper
from diffkit.errors import DiffkitError
from diffkit.analytic import GaussianMixture, gaussian_ode_solution
from diffkit.forecasting import forecast_windows, impute_windows, random_missing_mask
from diffkit.sampling import sampler_grid
from diffkit.samplers.registry import get_sampler
from test_forecasting import (AR, AR_VAR, C, DEN_AR, DIAG, DIAG_MEAN, DIAG_VAR, FREE, HISTORY, L, RHO, S, alpha_sigma,
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
    assert fc.impute_plan(11, 4, 2) == [(0, 3), (2, 5), (4, 7), (6, 9), (7, 11)]  # keep before start + (L + k) // 2
    assert fc.impute_plan(9, 4, 3) == [(0, 3), (3, 6), (5, 9)] and fc.impute_plan(3, 4, 2) == [(0, 3)]
    assert fc.impute_plan(100, 32, 16) == [(0, 24), (16, 40), (32, 56), (48, 72), (64, 88), (68, 100)]


@pytest.mark.parametrize("length", [2, 3, 4, 7, 8, 32])
def test_the_imputation_plan_keeps_every_step_once_with_context_on_both_sides(length):
    """For every series length n and chunk k: the kept ranges are consecutive from 0 to n (each step kept
    once), the last window keeps up to the end, and a step kept by a window other than the last has at
    least (L - k) // 2 steps after it in the window and, from the second window on, before it."""
    for chunk in range(1, length):
        for n in range(1, 4 * length):
            plan = fc.impute_plan(n, length, chunk)
            assert [start for start, _ in plan] == impute_windows(n, length, chunk)
            ends = [0] + [end for _, end in plan]
            assert all(a < b for a, b in zip(ends, ends[1:])) and ends[-1] == n
            assert plan[-1] == (max(n - length, 0), n)
            for j, (start, end) in enumerate(plan[:-1]):
                assert start + length - end >= (length - chunk) // 2
                if j:
                    assert ends[j] - start >= (length - chunk) // 2


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
    """A series of 11 steps (L = 4), half missing, chunk 2: windows start at 0, 2, 4, 6, 7 and keep the
    steps before 3, 5, 7, 9, 11; each missing value is repainted in every window that covers it until
    it is kept, and kept from exactly one window (the first whose kept range holds it), with at least
    (L - chunk) // 2 = 1 step after it in that window unless it is in the last one; every known value of
    a window is the observed value or one an earlier window kept (and is returned so), the observed
    values come back bit for bit and every missing one is filled."""
    calls = record_windows(monkeypatch)
    series = torch.randn(3, 1, 11, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    observed = random_missing_mask(series.shape, 0.5, seed=1)
    # every sample has a value to keep in every window, and one in the overlap of each window with the kept
    # range of the one before (steps 2, 4, 6, 7): the windows are sequential (impute_levels 0 1 2 3 4)
    observed[..., [1, 2, 3, 4, 5, 6, 7, 8, 10]] = False
    given = torch.where(observed, series, torch.full_like(series, float("nan")))
    out = diffkit.impute(DEN_AR, given, None, "ddpm", 5, seed=0, **FREE)
    assert torch.equal(out[observed], series[observed]) and torch.isfinite(out).all()
    plan = [(0, 3), (2, 5), (4, 7), (6, 9), (7, 11)]
    assert len(calls) == len(plan)
    kept_from = torch.zeros_like(series)
    for j, ((window, repaint, generated), (start, end)) in enumerate(zip(calls, plan)):
        part, kept = slice(start, start + L), slice(0, end - start)
        assert torch.equal(window[repaint == 0], out[..., part][repaint == 0])  # observed or kept before
        assert torch.equal(repaint, (~observed[..., part]).double() - kept_from[..., part])  # the rest drawn
        assert torch.equal(generated[..., kept][repaint[..., kept] == 1], out[..., start:end][repaint[..., kept] == 1])
        kept_from[..., start:end] += repaint[..., kept]
        if j < len(plan) - 1:
            assert end - start <= L - (L - 2) // 2  # a kept value has a step after it in its window
    assert torch.equal(kept_from, (~observed).double())  # each missing value kept once, nothing else


def window_generators(seed, windows):
    """Sample (seed) 's generators of the windows of a long imputation, as docs/editing.md states them:
    window 0 draws from torch.Generator().manual_seed(seed); window j >= 1 from a generator seeded with
    the j-th of windows - 1 int64 numbers drawn with torch.randint(0, 2**63 - 1) from a second generator
    seeded seed + 20000003 (a stream window 0's noise does not use)."""
    seeds = torch.randint(0, 2**63 - 1, (windows - 1,), generator=torch.Generator().manual_seed(seed + 20_000_003))
    seeds = seeds.tolist()
    return [torch.Generator().manual_seed(seed)] + [torch.Generator().manual_seed(s) for s in seeds]


def impute_reference(series, observed, plan, seed, steps):
    """The exact independent-steps imputation, sample by sample: sample i takes part in a window j of
    ``plan`` only when it has a missing value not kept yet in the window's kept range, and then draws the
    window's noise as randn(C, L) from its window's generator (window_generators(seed + i)); the values
    kept are the exact DDIM (ODE) map of that noise at their window positions."""
    expected = series.clone()
    for i in range(len(series)):
        generators, known = window_generators(seed + i, len(plan)), observed[i].clone()
        for (start, end), generator in zip(plan, generators):
            if known[:, start:end].all():
                continue
            noise = torch.randn(1, C, L, generator=generator).double()
            drawn = ode_map(noise, steps)[0, :, :end - start]
            expected[i, :, start:end] = torch.where(known[:, start:end], expected[i, :, start:end], drawn)
            known[:, start:end] = True
    return expected


def test_a_long_imputation_of_independent_steps_is_the_exact_map_of_each_samples_windows(monkeypatch):
    """DDIM on independent steps, 4 series of 13 (L = 4, chunk 2: windows at 0, 2, 4, 6, 8, 9 keeping up to
    3, 5, 7, 9, 11, 13), each sample with its own gaps (sample 0 at step 6 where no other sample needs that
    window, sample 3 with nothing missing after step 3): a value kept in a window is the exact ODE map of the next
    noise of its sample's own generator, drawn only in the windows where that sample has something to keep, so a sample
    is the same in the batch and alone with seed + i (the reviewer's probe: a batch-wide skip was 9e-3 off)."""
    calls = record_windows(monkeypatch)
    n, steps, length = 4, 300, 13
    den = Denoiser(DIAG.network(S), S)
    series = torch.randn(n, C, length, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    observed = torch.ones_like(series, dtype=torch.bool)
    for i, steps_missing in enumerate([[1, 3, 6, 10, 12], [0, 4, 7, 9, 12], [2, 5, 8, 11], [1, 3]]):
        observed[i, i % C, steps_missing] = False  # kept in windows 0 1 2 4 5 | 0 1 3 4 5 | 0 2 3 5 | 0 1
    out = diffkit.impute(den, series, observed, "ddim", steps, seed=3, reconstruction_weight=0.0, **FREE)
    plan = fc.impute_plan(length, L, 2)
    assert plan == [(0, 3), (2, 5), (4, 7), (6, 9), (8, 11), (9, 13)]
    # only the samples with something to keep
    assert sum(len(window) for window, _, _ in calls) == 4 + 3 + 2 + 2 + 2 + 3
    assert torch.equal(out[observed], series[observed])
    # 300 DDIM steps are within 0.013 of the exact map; another window's noise is off by O(0.1-1)
    assert (out - impute_reference(series, observed, plan, 3, steps)).abs().max() < 2e-2
    alone = diffkit.impute(den, series[:1], observed[:1], "ddim", steps, seed=3, reconstruction_weight=0.0, **FREE)
    assert (out[:1] - alone).abs().max() < 1e-12


def test_a_sample_is_the_same_in_a_batch_with_other_masks_with_guidance():
    """ddpm with reconstruction guidance (the defaults), AR(1), 13 steps: sample 0 has an extra gap at
    step 6 that samples 1 and 2 do not; each sample of the batch is that sample imputed alone with seed + i."""
    series = torch.randn(3, 1, 13, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    observed = random_missing_mask(series.shape, 0.3, seed=6)
    observed[:, :, 5:8] = True
    observed[0, :, 6] = False
    out = diffkit.impute(DEN_AR, series, observed, steps=10, seed=7, **FREE)
    for i in range(3):
        alone = diffkit.impute(DEN_AR, series[i:i + 1], observed[i:i + 1], steps=10, seed=7 + i, **FREE)
        assert (out[i:i + 1] - alone).abs().max() < 1e-12


def test_windows_with_nothing_to_keep_are_not_sampled(monkeypatch):
    """Gaps only in the first window's kept range (steps 0..2) and the last one's (11..12) of a series of
    13 (L = 4, chunk 2): only those 2 windows are sampled (6 in the plan), and the values are the per-sample
    exact maps of each sample's first two noises (a sampled middle window would have advanced the generators)."""
    calls = record_windows(monkeypatch)
    n, steps = 3, 300
    den = Denoiser(DIAG.network(S), S)
    series = torch.randn(n, C, 13, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    observed = torch.ones_like(series, dtype=torch.bool)
    observed[0, 0, 1] = observed[1, 1, 2] = observed[2, :, 0] = False
    observed[0, 1, 12] = observed[1, 0, 11] = observed[2, 0, 12] = False
    out = diffkit.impute(den, series, observed, "ddim", steps, seed=5, reconstruction_weight=0.0, **FREE)
    assert sum(len(window) for window, _, _ in calls) == 2 * n  # windows 0 and 5, independent: one call
    assert (out - impute_reference(series, observed, fc.impute_plan(13, L, 2), 5, steps)).abs().max() < 2e-2


def record_options(monkeypatch):
    """The keyword options of every diffkit.inpaint call diffkit.forecasting makes."""
    calls, real = [], fc.inpaint

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)
    monkeypatch.setattr(fc, "inpaint", spy)
    return calls


@pytest.mark.parametrize("task", ["forecast", "impute"])
def test_every_window_gets_the_callers_guidance_and_repaint_settings(monkeypatch, task):
    """Reconstruction guidance and RePaint's resampling apply to every window of a roll, not just the first."""
    calls = record_options(monkeypatch)
    settings = dict(reconstruction_weight=0.7, jump_length=2, jump_n_sample=2)
    series = torch.randn(2, 1, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    if task == "forecast":
        diffkit.forecast(DEN_AR, series, 5, "ddpm", 4, chunk=2, seed=0, **settings, **FREE)
    else:
        observed = torch.ones_like(series, dtype=torch.bool)
        observed[..., [1, 4, 6, 8]] = False  # L = 4, chunk 2: windows at 0, 2, 4, 5 keep up to 3, 5, 7, 9
        diffkit.impute(DEN_AR, series, observed, "ddpm", 4, chunk=2, seed=0, batch_size=None, **settings,
                       **FREE)  # None: no memory probe (one ddim step, its own settings) among the calls
    # impute: window 1 reads only given values (step 2 observed), windows 2 and 3 read steps 4 and 6 that
    # windows 1 and 2 fill: levels 0 0 1 2, three calls
    assert len(calls) == 3
    for options in calls:
        assert {key: options[key] for key in settings} == settings


def test_a_long_series_with_nothing_missing_samples_nothing():
    DEN_AR.reset_nfe()
    series = torch.randn(2, 1, 9, generator=torch.Generator().manual_seed(0))
    assert torch.equal(diffkit.impute(DEN_AR, series, **FREE), series) and DEN_AR.nfe == 0


def test_the_levels_of_a_long_imputation():
    """impute_levels by hand. L = 4, chunk 2, 11 steps: windows at 0, 2, 4, 6, 7 fill steps 0-2, 3-4, 5-6,
    7-8, 9-10 and read (span) 0-3, 2-5, 4-7, 6-9, 7-10. A window waits for an earlier one only when a step
    the earlier one fills, inside its span, is missing."""
    def levels(steps_missing, n=11, chunk=2):
        missing = torch.zeros(1, 2, n, dtype=torch.bool)
        missing[0, 1, steps_missing] = True
        return fc.impute_levels(missing, L, chunk)[0].tolist()
    assert levels(list(range(11))) == [0, 1, 2, 3, 4]  # all missing: each window reads its predecessor's values
    assert levels([1, 4, 6, 8, 10]) == [0, 0, 1, 2, 3]  # step 2 given: window 1 reads no filled value
    assert levels([0, 4, 9]) == [0, 0, -1, -1, 0]  # gaps apart: independent; windows 2 and 3 have nothing to fill
    assert levels([2, 3, 9]) == [0, 1, -1, -1, 0]  # step 2 filled by window 0 is in window 1's span
    assert levels([7, 8]) == [-1, -1, -1, 0, -1]  # window 3 fills both; the last window has nothing to fill
    assert levels([7, 8, 10]) == [-1, -1, -1, 0, 1]  # the last window reads steps 7-8 that window 3 fills
    # chunk L - 1 = 3 (kept ranges of 3 = the chunk): a window's span starts where the last one's kept range
    # ends, so windows 0-2 read only given values; the last one (8) reads step 8, filled by window 2 (6-8)
    assert fc.impute_plan(12, L, 3) == [(0, 3), (3, 6), (6, 9), (8, 12)]
    assert levels(list(range(12)), n=12, chunk=3) == [0, 0, 0, 1]
    two = torch.zeros(2, 1, 11, dtype=torch.bool)  # per sample: sample 1's windows wait, sample 0's do not
    two[0, 0, [0, 4, 9]] = True
    two[1, 0, :] = True
    assert fc.impute_levels(two, L, 2).tolist() == [[0, 0, -1, -1, 0], [0, 1, 2, 3, 4]]


def brute_force_levels(missing, plan, length):
    """impute_levels step by step, per sample: window j fills the missing steps of its kept range not kept by
    an earlier window; it waits for every earlier window i (any distance back) that fills a step inside
    j's span start .. start + L - 1; level -1 when it fills nothing, else 1 + the largest level it waits for
    (0 when none). Also the number of waits for a window two or more back."""
    firsts = [0] + [end for _, end in plan[:-1]]
    levels, far = [], 0
    for sample in missing.any(1).tolist():  # a step is missing when any channel is
        fills = [{t for t in range(first, end) if sample[t]} for first, (_, end) in zip(firsts, plan)]
        row = []
        for j, (start, _) in enumerate(plan):
            waits = [i for i in range(j) if fills[i] & set(range(start, start + length))]
            far += sum(i < j - 1 for i in waits)
            waits = [row[i] for i in waits]
            row.append(-1 if not fills[j] else 1 + max(waits, default=-1))
        levels.append(row)
    return levels, far


def test_the_levels_are_the_brute_force_ones_for_every_chunk():
    """impute_levels against brute_force_levels for L 2, 3, 4, 7, 12 and 24, every chunk, series lengths
    from 1 to 5 L (4 per chunk, 5 L among them), 3 samples of 2 channels with 5%, 30% and 80% of the values
    missing: with chunk < L / 3 a window's span reaches back past the previous window's kept range, so it can
    wait for a window two or more back."""
    rng = torch.Generator().manual_seed(2)
    deep = 0
    for length in (2, 3, 4, 7, 12, 24):
        for chunk in range(1, length):
            for n in [5 * length] + torch.randint(1, 5 * length, (3,), generator=rng).tolist():
                missing = torch.rand(3, 2, n, generator=rng) < torch.tensor([0.05, 0.3, 0.8])[:, None, None]
                plan = fc.impute_plan(n, length, chunk)
                levels = fc.impute_levels(missing, length, chunk).tolist()
                expected, far = brute_force_levels(missing, plan, length)
                assert levels == expected, (length, chunk, n)
                deep += far
    assert deep > 100  # windows waiting for one two or more back are exercised


def sequential_impute(den, series, observed, chunk, seed, steps, length=L, windows_of=None, window_cond=None,
                      **options):
    """One window at a time, one sample at a time, in the plan's order, with diffkit.inpaint itself: sample
    i's window j repaints the values of the window not observed and not kept before, from window_generators
    (seed + i)[j] (or windows_of(i, W)[j]), with the cond window_cond(i, j) if given, and keeps those of its
    kept range (the docs' semantics, with no levels and no batching)."""
    plan = fc.impute_plan(series.shape[-1], length, chunk)
    out = torch.where(observed, series, torch.zeros_like(series))
    windows_of = windows_of or (lambda i, windows: window_generators(seed + i, windows))
    for i in range(len(series)):
        generators, known = windows_of(i, len(plan)), observed[i].clone()
        for (start, end), generator in zip(plan, generators):
            if known[:, start:end].all():
                continue
            width = min(start + length, series.shape[-1]) - start
            window = torch.zeros(1, series.shape[1], length, dtype=series.dtype)
            window[0, :, :width] = out[i, :, start:start + width]
            repaint = torch.ones_like(window)
            repaint[0, :, :width] = (~known[:, start:start + width]).to(series.dtype)
            if window_cond is not None:
                options["cond"] = window_cond(i, plan.index((start, end)))
            drawn = diffkit.inpaint(den, window, repaint, "ddpm", steps, value_range=None, generator=[generator],
                                    progress=False, **options)
            out[i, :, start:end] = torch.where(known[:, start:end], out[i, :, start:end], drawn[0, :, :end - start])
            known[:, start:end] = True
    return out


@pytest.mark.parametrize("batch_size", [None, 1, 3])
def test_batched_imputation_is_the_one_window_at_a_time_result(batch_size):
    """AR(1) (float64 exact model), ddpm with reconstruction guidance and RePaint, 4 series of 17 steps
    (L = 4, chunk 2: 8 windows), one with gaps in blocks (independent windows drawn together), two with values
    missing at random (sequential windows), one missing steps 2, 3 and 5 (levels 0 1 0: window 2 fills step 5
    before window 1, which reads it and must draw it itself, as one window at a time it would): impute, at any
    batch_size, equals sequential_impute to 1e-12 (float64: the only difference batching can make is the
    summation order of batched matmuls, ~1e-16; window 1 seeing window 2's step 5 was 0.13 off)."""
    series = torch.randn(4, 1, 17, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    observed = random_missing_mask(series.shape, 0.4, seed=12)
    observed[0] = observed[3] = True
    observed[0, :, [1, 5, 9, 16]] = False
    observed[3, :, [2, 3, 5]] = False
    options = dict(reconstruction_weight=1.0, jump_length=2, jump_n_sample=2)
    out = diffkit.impute(DEN_AR, series, observed, "ddpm", 6, chunk=2, seed=21, batch_size=batch_size, **options,
                         **FREE)
    expected = sequential_impute(DEN_AR, series, observed, 2, 21, 6, **options)
    assert (out - expected).abs().max() < 1e-12
    levels = fc.impute_levels(~observed, L, 2)
    assert levels[0].max() == 0 and levels[1:3].max() > 0  # both kinds of plan are exercised
    assert levels[3, :3].tolist() == [0, 1, 0]  # a later window drawn first


def test_a_callers_generators_seed_the_windows_as_documented():
    """generator= instead of seed=: one shared generator gives sample i the seed s_i (the i-th of B int64
    numbers torch.randint(0, 2**63 - 1) draws from it) and the windows of window_generators(s_i); a list of
    per-sample generators g_i gives window 0 g_i itself and window j >= 1 the j-th int64 number of g_i's
    stream (the same numbers window 0's noise then uses: no seed to offset)."""
    series = torch.randn(2, 1, 11, generator=torch.Generator().manual_seed(18), dtype=torch.float64)
    observed = random_missing_mask(series.shape, 0.5, seed=19)
    args = (DEN_AR, series, observed, "ddpm", 3)
    shared = diffkit.impute(*args, generator=torch.Generator().manual_seed(4), batch_size=None, **FREE)
    seeds = torch.randint(0, 2**63 - 1, (2,), generator=torch.Generator().manual_seed(4)).tolist()
    expected = sequential_impute(*args[:3], 2, None, 3, reconstruction_weight=1.0,
                                 windows_of=lambda i, windows: window_generators(seeds[i], windows))
    assert (shared - expected).abs().max() < 1e-12
    own = diffkit.impute(*args, generator=[torch.Generator().manual_seed(7 + i) for i in range(2)], batch_size=None,
                         **FREE)

    def from_own(i, windows):
        numbers = torch.randint(0, 2**63 - 1, (windows - 1,), generator=torch.Generator().manual_seed(7 + i))
        return [torch.Generator().manual_seed(7 + i)] + [torch.Generator().manual_seed(s) for s in numbers.tolist()]
    expected = sequential_impute(*args[:3], 2, None, 3, reconstruction_weight=1.0, windows_of=from_own)
    assert (own - expected).abs().max() < 1e-12


AR_MODELS = {}


def ar_denoiser(length):
    """The exact AR(1) Gaussian model (test_forecasting's RHO, AR_VAR, zero mean) of windows of ``length``."""
    if length not in AR_MODELS:
        cov = AR_VAR * RHO ** (torch.arange(length)[:, None] - torch.arange(length)[None]).abs().double()
        model = GaussianMixture([1.0], torch.zeros(1, length, dtype=torch.float64), cov[None])
        AR_MODELS[length] = Denoiser(model.network(S), S)
    return AR_MODELS[length]


def test_batched_imputation_is_the_sequential_result_on_random_masks():
    """40 random cases (window length L 2..8, every kind of chunk, series of 1 .. 3 L steps, 2 samples, values
    missing at random with probability 0.1 .. 0.9 or in blocks): impute on the exact AR(1) model of L steps
    (ddpm, 2 steps, replacement) equals sequential_impute to 1e-12, whatever the levels put first."""
    rng = torch.Generator().manual_seed(40)
    for case in range(40):
        length = int(torch.randint(2, 9, (1,), generator=rng))
        chunk = int(torch.randint(1, length, (1,), generator=rng))
        n = int(torch.randint(1, 3 * length + 1, (1,), generator=rng))
        series = torch.randn(2, 1, n, generator=rng, dtype=torch.float64)
        observed = torch.rand(2, 1, n, generator=rng) >= 0.1 + 0.8 * torch.rand(2, 1, 1, generator=rng)
        if case % 4 == 3:  # gaps in blocks
            observed = torch.rand(2, 1, (n + 2) // 3, generator=rng).repeat_interleave(3, -1)[..., :n] >= 0.3
        den, options = ar_denoiser(length), dict(reconstruction_weight=0.0)
        out = diffkit.impute(den, series, observed, "ddpm", 2, length=length, chunk=chunk, seed=case, progress=False,
                             batch_size=None, **options)
        expected = sequential_impute(den, series, observed, chunk, case, 2, length=length, **options)
        assert (out - expected).abs().max() < 1e-12, (case, length, chunk, n, observed.int().tolist())


def test_sample_i_does_not_depend_on_num_or_batch_size():
    """The same series given 4 times with different masks: sample 2 of the batch of 4 at batch sizes 1, 2 and
    'auto' (the memory-aware one) equals the series imputed alone with seed + 2, and its first two samples
    equal a batch of 2 (--num 2)."""
    series = torch.randn(4, 1, 15, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    observed = random_missing_mask(series.shape, 0.3, seed=14)
    outs = [diffkit.impute(DEN_AR, series, observed, steps=5, seed=3, batch_size=size, **FREE)
            for size in (1, 2, "auto")]
    alone = diffkit.impute(DEN_AR, series[2:3], observed[2:3], steps=5, seed=5, **FREE)
    two = diffkit.impute(DEN_AR, series[:2], observed[:2], steps=5, seed=3, **FREE)
    for out in outs:
        assert (out[2:3] - alone).abs().max() < 1e-12 and (out[:2] - two).abs().max() < 1e-12


def test_a_batch_out_of_memory_is_halved_and_drawn_again(monkeypatch, capsys):
    """A sampler call of more than 2 windows raises CUDA's out-of-memory error: impute halves the batch
    (diffkit.memory.RetryingBatches), warns, keeps the smaller size for the next levels, and returns the
    same values as with no limit."""
    series = torch.randn(3, 1, 13, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    observed = random_missing_mask(series.shape, 0.5, seed=16)
    expected = diffkit.impute(DEN_AR, series, observed, steps=4, seed=1, **FREE)
    sizes, real = [], fc._generate

    def small_memory(denoiser, window, *args):
        sizes.append(len(window))
        if len(window) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (test)")
        return real(denoiser, window, *args)
    monkeypatch.setattr(fc, "_generate", small_memory)
    out = diffkit.impute(DEN_AR, series, observed, steps=4, seed=1, batch_size=3, **FREE)
    assert (out - expected).abs().max() < 1e-12
    assert sizes[0] == 3 and max(sizes[1:]) <= 2 and "retrying with 1" in capsys.readouterr().err


def test_the_default_batch_is_the_memory_aware_one(monkeypatch):
    """impute's default batch_size is "auto": series_batch_size is asked for the batch (at most the largest
    level: 3 samples x 2 independent windows = 6) and no sampler call draws more windows than it gives; the
    values are those of batch_size None (the whole level in one call)."""
    series = torch.randn(3, 1, 13, generator=torch.Generator().manual_seed(17), dtype=torch.float64)
    observed = torch.ones_like(series, dtype=torch.bool)
    observed[..., [1, 12]] = False  # windows 0 and 5 only, independent: one level of 6 windows
    expected = diffkit.impute(DEN_AR, series, observed, steps=4, seed=2, batch_size=None, **FREE)
    asked, sizes, real = [], [], fc._generate
    monkeypatch.setattr(fc, "series_batch_size", lambda *args: asked.append(args[3]) or 4)

    def spy(denoiser, window, *args):
        sizes.append(len(window))
        return real(denoiser, window, *args)
    monkeypatch.setattr(fc, "_generate", spy)
    out = diffkit.impute(DEN_AR, series, observed, steps=4, seed=2, **FREE)
    assert asked == [6] and sizes == [4, 2]
    assert (out - expected).abs().max() < 1e-12


def test_the_memory_probe_takes_cond_entries_that_are_not_per_sample_tensors():
    """series_batch_size with a cond whose first entry is not a tensor: the probe passes it as it is and gives
    the network sample 0's row of the per-sample tensor y, repeated."""
    seen, network = [], AR.network(S)

    def recording(x, t, y=None, scale=None):
        seen.append((y.tolist(), scale))
        return network(x, t)
    den = Denoiser(recording, S)
    options = {"cond": {"scale": 0.5, "y": torch.tensor([2, 0, 1])}, "reconstruction_weight": 1.0}
    size = fc.series_batch_size(den, 1, L, 8, "cpu", options)
    assert 1 <= size <= 8 and seen and all(scale == 0.5 and set(y) == {2} for y, scale in seen)


# ------------------------------------------------------------------ per-window classes (labels=)
class ShiftedByClass(Wrapper):
    """The exact model of the Gaussian AR(1) series shifted by a class mean: x_0 ~ N(MEANS[y] 1, Sigma_AR), so
    E[x_0 | x_t, y] = MEANS[y] + E_AR[x_0 | x_t - alpha_t MEANS[y]] (eps unchanged); y = K (the null class,
    and no y) the unshifted AR model. Its network says num_classes = K, as a diffkit U-Net does."""

    MEANS = (1.0, 3.0, -2.0)  # the null class: 0

    def __init__(self, inner):
        self.inner = inner
        self.net = SimpleNamespace(config=SimpleNamespace(num_classes=len(self.MEANS)))

    def __call__(self, x, t, y=None, **cond):
        shift = torch.zeros(len(x), dtype=x.dtype, device=x.device) if y is None else torch.tensor(
            [*self.MEANS, 0.0], dtype=x.dtype)[torch.as_tensor(y).reshape(-1).expand(len(x))]
        alpha = self.schedule.alpha(torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(len(x))).to(x.dtype)
        pred = self.inner(x - (alpha * shift)[:, None, None], t, **cond)
        return Prediction(eps=pred.eps, x0=pred.x0 + shift[:, None, None], var_values=pred.var_values)


def shared_label(labels, start, length):
    """The class of the window of ``length`` steps at ``start``: the label all its steps hold, else the null
    class 3 (written from the rule, not from diffkit's window_labels)."""
    held = set(labels[start:start + length])
    return held.pop() if len(held) == 1 else 3


def test_each_window_is_conditioned_on_the_label_its_steps_share():
    """labels= (one label per step: 7 steps of class 0, then 6 of class 1; L = 4, chunk 2: 6 windows at steps
    0, 2, 4, 6, 8, 9): impute equals sequential_impute with window j given y = the label its 4 steps share,
    and the null class for windows 4..7 and 6..9 (across the change), to 1e-12, at every batch size, with
    reconstruction guidance (batch_size None and 3); the class shows (class 0's mean is 1, class 1's 3, the
    null class's 0): one class for every window differs."""
    den = ShiftedByClass(DEN_AR)
    labels = [0] * 7 + [1] * 6
    plan = fc.impute_plan(13, L, 2)
    assert [shared_label(labels, start, L) for start, _ in plan] == [0, 0, 3, 3, 1, 1]
    series = torch.randn(2, 1, 13, generator=torch.Generator().manual_seed(31), dtype=torch.float64)
    series += 3.0 * torch.tensor(labels, dtype=torch.float64)
    observed = random_missing_mask(series.shape, 0.5, seed=32)
    options = dict(reconstruction_weight=1.0)
    expected = sequential_impute(den, series, observed, 2, 5, 3, **options, window_cond=lambda i, j: {
        "y": torch.tensor([shared_label(labels, plan[j][0], L)])})
    for batch_size in (None, 3):
        out = diffkit.impute(den, series, observed, "ddpm", 3, chunk=2, seed=5, batch_size=batch_size,
                             labels=torch.tensor(labels), **options, **FREE)
        assert (out - expected).abs().max() < 1e-12, batch_size
    one = diffkit.impute(den, series, observed, "ddpm", 3, chunk=2, seed=5, cond={"y": torch.tensor([0, 0])},
                         **options, **FREE)
    late = ~observed[..., 10:]
    assert (one[..., 10:][late] - out[..., 10:][late]).abs().mean() > 1.0  # class 0 there, not the rows' class 1


def test_labels_per_sample_and_one_label_is_bit_for_bit_cond_y():
    """labels (B, n): each sample's windows their own steps' classes (sample 0 classes 2 then 0, sample 1
    class 1 throughout); one label for every step is bit for bit cond={"y": that class} (the one-class
    path), and the class, not the batch, decides a sample's values (sample 1 alone, seed + 1)."""
    den = ShiftedByClass(DEN_AR)
    labels = torch.tensor([[2] * 5 + [0] * 8, [1] * 13])
    plan = fc.impute_plan(13, L, 3)
    series = torch.randn(2, 1, 13, generator=torch.Generator().manual_seed(33), dtype=torch.float64)
    observed = random_missing_mask(series.shape, 0.4, seed=34)
    out = diffkit.impute(den, series, observed, "ddpm", 3, chunk=3, seed=7, labels=labels, **FREE)
    expected = sequential_impute(den, series, observed, 3, 7, 3, reconstruction_weight=1.0, window_cond=lambda i, j: {
        "y": torch.tensor([shared_label(labels[i].tolist(), plan[j][0], L)])})
    assert (out - expected).abs().max() < 1e-12
    alone = diffkit.impute(den, series[1:], observed[1:], "ddpm", 3, chunk=3, seed=8, labels=labels[1], **FREE)
    as_y = diffkit.impute(den, series[1:], observed[1:], "ddpm", 3, chunk=3, seed=8, cond={"y": torch.tensor([1])},
                          **FREE)
    assert torch.equal(alone, as_y) and (alone - out[1:]).abs().max() < 1e-12
    assert fc.window_classes(labels, 13, L, 3, 3).tolist() == [[2, 3, 0, 0], [1] * 4]  # windows at 0, 3, 6, 9


def test_labels_of_a_series_shorter_than_the_window():
    """n = 3 < L = 4: one window, steps 0..2 (the rest generated and dropped); labels 0, 1, 1 change inside it,
    so it takes the null class 3 (bit for bit cond y = 3), and labels 1, 1, 1 are bit for bit cond y = 1."""
    den = ShiftedByClass(DEN_AR)
    series = torch.randn(2, 1, 3, generator=torch.Generator().manual_seed(35), dtype=torch.float64)
    series[0, 0, 1] = series[1, 0, 2] = float("nan")
    assert fc.window_classes(torch.tensor([0, 1, 1]), 3, L, 2, 3).tolist() == [3]
    for labels, y in (([0, 1, 1], 3), ([1, 1, 1], 1)):
        out = diffkit.impute(den, series, None, "ddpm", 3, seed=9, labels=torch.tensor(labels), **FREE)
        as_y = diffkit.impute(den, series, None, "ddpm", 3, seed=9, cond={"y": torch.tensor([y, y])}, **FREE)
        assert torch.equal(out, as_y), labels


def test_forecast_refuses_labels_naming_cond_y():
    with pytest.raises(DiffkitError, match=r"^labels= \(a tensor of shape \(3,\)\) is an option of impute "
                                           r"\(a class per step\); forecast takes one class per sample as "
                                           r"cond=\{'y': labels\}"):
        diffkit.forecast(ShiftedByClass(DEN_AR), HISTORY.reshape(1, 1, 3), 1, labels=torch.tensor([0, 0, 0]), **FREE)


def test_labels_mistakes_are_one_line_errors():
    den = ShiftedByClass(DEN_AR)
    series = torch.zeros(2, 1, 9, dtype=torch.float64)
    series[:, :, 4] = float("nan")
    cases = [
        (dict(labels=torch.tensor([0] * 8)), r"labels of torch.int64 \(8,\) are not allowed; give integers \(9,\) or "
                                            r"\(2, 9\)"),
        (dict(labels=torch.zeros(9)), r"labels of torch.float32 \(9,\) are not allowed"),
        (dict(labels=torch.tensor([0] * 8 + [3])), r"labels hold 3; the model's classes are 0\.\.2"),
        (dict(labels=torch.tensor([0] * 9), cond={"y": torch.tensor([1, 1])}), r"labels= gives each window its class; "
                                                                               r"cond=\{'y': \.\.\.\} one class"),
    ]
    for kwargs, message in cases:
        with pytest.raises(DiffkitError, match=message):
            diffkit.impute(den, series, seed=0, **kwargs, **FREE)
    with pytest.raises(DiffkitError, match="labels= needs a class-conditional model"):
        diffkit.impute(DEN_AR, series, seed=0, labels=torch.tensor([0] * 9), **FREE)
