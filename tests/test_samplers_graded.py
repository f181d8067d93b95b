"""The graded log-SNR grid (diffkit.timesteps.graded_log_snr, spacing "logsnr_graded") and the
samplers that use it by default (UniPC order 3, bh2 and bh1): the grid against its defining density
(integrated numerically, independently of the closed form), its pieces against their closed forms,
convergence on the exact Gaussian ODE map, exact NFE counts and one-line errors for bad settings."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import diffkit
from diffkit import Denoiser, DiffkitError, NoiseSchedule
from diffkit.analytic import GaussianMixture, gaussian_ode_solution
from diffkit.samplers import REGISTRY
from diffkit.timesteps import GRADE_POWER, GRADE_SIGMAS, graded_log_snr, make_grid

F64 = torch.float64


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule.linear()


def _density(lam, hi=GRADE_SIGMAS[0], lo=GRADE_SIGMAS[1], q=GRADE_POWER):
    """dPhi/dlambda = min(1, exp((lambda - lambda_hi)/q), exp(-2 (lambda - lambda_lo)/q))."""
    lam_hi, lam_lo = -math.log(hi), -math.log(lo)
    return np.minimum(1.0, np.minimum(np.exp((lam - lam_hi) / q), np.exp(-2.0 * (lam - lam_lo) / q)))


@pytest.mark.parametrize("n", [5, 11, 21])
def test_graded_grid_is_equally_spaced_in_the_integrated_density(schedule, n):
    grid = make_grid(schedule, n, "logsnr_graded")
    T = schedule.num_timesteps
    assert grid[0].item() == T - 1 and grid[-2].item() == 0.0 and grid[-1].item() == -1.0
    assert len(grid) == n + 1 and bool((grid[1:] < grid[:-1]).all())
    lam = schedule.log_snr(grid[:-1]).numpy()
    # Phi(lambda_i) by the trapezoid rule on a fine lambda mesh (not the closed form)
    fine = np.linspace(lam[0], lam[-1], 400_001)
    dens = _density(fine)
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(fine))])
    phi = np.interp(lam, fine, cum)
    np.testing.assert_allclose(np.diff(phi), phi[-1] / (n - 1), rtol=1e-5)


def test_graded_grid_pieces_match_their_closed_forms():
    # above sigma_hi exp(lambda/q) is arithmetic, in the band lambda is, below sigma_lo exp(-2 lambda/q) is
    q, (hi, lo) = GRADE_POWER, GRADE_SIGMAS
    lam = graded_log_snr(41, -6.0, 5.0).numpy()
    high, low = lam[lam < -math.log(hi)], lam[lam > -math.log(lo)]
    band = lam[(lam > -math.log(hi)) & (lam < -math.log(lo))]
    assert len(high) >= 3 and len(band) >= 3 and len(low) >= 3
    np.testing.assert_allclose(np.diff(np.exp(high / q)), np.diff(np.exp(high / q))[0], rtol=1e-9)
    np.testing.assert_allclose(np.diff(band), np.diff(band)[0], rtol=1e-9)
    np.testing.assert_allclose(np.diff(np.exp(-2 * low / q)), np.diff(np.exp(-2 * low / q))[0], rtol=1e-9)
    # the uniform part's step equals the graded coordinate's step (dPhi/dlambda = 1 there)
    total = q * -math.expm1((-6.0 + math.log(hi)) / q) + math.log(hi / lo) \
        + 0.5 * q * -math.expm1(-2.0 * (5.0 + math.log(lo)) / q)
    assert np.diff(band)[0] == pytest.approx(total / 40, rel=1e-9)


def test_graded_grid_with_a_wide_band_is_logsnr(schedule):
    # a band wider than the schedule's sigma range leaves only the uniform part: DPM-Solver's logSNR
    torch.testing.assert_close(make_grid(schedule, 9, "logsnr_graded", grade_sigmas=(1e4, 1e-4)),
                               make_grid(schedule, 9, "logsnr"))


@pytest.mark.parametrize("bad", [dict(grade_sigmas=(0.1, 1.0)), dict(grade_sigmas=(1.0, 0.0)),
                                 dict(grade_sigmas=(-1.0, 0.1)), dict(grade_power=0.0)])
def test_graded_grid_bad_settings_raise_one_line(schedule, bad):
    with pytest.raises(DiffkitError) as err:
        make_grid(schedule, 8, "logsnr_graded", **bad)
    assert "\n" not in str(err.value) and "grade_" in str(err.value)


@pytest.mark.parametrize("name", ["unipc-3", "unipc-bh1"])
def test_unipc_3_converges_at_order_3_on_the_graded_grid(schedule, name):
    # exact Gaussian ODE map from t = T-1 to t = 0; global order of UniP-3 + UniC >= 3
    gaussian = GaussianMixture.random(4, 1, seed=3)
    info = REGISTRY[name]
    den = Denoiser(gaussian.network(schedule), schedule)
    x = torch.randn(32, gaussian.dim, generator=torch.Generator().manual_seed(0), dtype=F64)
    T = schedule.num_timesteps
    exact = gaussian_ode_solution(gaussian.means[0], gaussian.covs[0], x, schedule.alpha(T - 1.0),
                                  schedule.sigma(T - 1.0), schedule.alpha(0.0), schedule.sigma(0.0))
    steps_list = (16, 32, 64)
    errors = []
    for n in steps_list:
        grid = make_grid(schedule, n, "logsnr_graded", "sigma_min")
        out = info.fn(den, x.clone(), grid, **info.options, lower_order_final=False)
        errors.append((out - exact).pow(2).mean().sqrt().item())
    slope = -np.polyfit(np.log(steps_list), np.log(errors), 1)[0]
    assert errors[-1] < 1e-3 and slope >= 2.7, f"{name}: order {slope:.2f}, errors {errors}"


@pytest.mark.parametrize("name", ["unipc-3", "unipc-bh1"])
def test_graded_default_spends_exactly_the_requested_nfe(schedule, name):
    info = REGISTRY[name]
    assert info.default_spacing == "logsnr_graded" and info.default_final == "sigma_min"
    mix = GaussianMixture.random(3, 3, seed=5)
    den = Denoiser(mix.network(schedule), schedule)
    noise = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    seen = []
    for nfe in (5, 6, 8, 10, 15, 20):
        den.reset_nfe()
        out = diffkit.sample(den, noise, sampler=name, nfe=nfe, progress=False,
                             callback=lambda d: seen.append(d["t"]))
        assert den.nfe == nfe and torch.isfinite(out).all()
    # the evaluation times of the last run are the graded grid's, down to t = 0 (no evaluation there)
    assert seen[-20:] == make_grid(schedule, 20, "logsnr_graded", "sigma_min")[:-1].tolist()


def test_grade_sigmas_parse_pairs_and_refuse_bad_ones_in_one_line():
    from diffkit.errors import DiffkitError
    from diffkit.timesteps import parse_grade_sigmas
    assert parse_grade_sigmas("1/0.1, 2/0.1") == [(1.0, 0.1), (2.0, 0.1)]
    for bad, says in (("1/2", "HI > LO > 0"), ("2", "HI/LO"), ("a/b", "HI/LO"), (",", "at least one")):
        with pytest.raises(DiffkitError, match=says):
            parse_grade_sigmas(bad)


def test_data_scale_is_the_root_of_the_largest_covariance_eigenvalue():
    """Items (+-a, +-b, 0, ...) in equal numbers have covariance diag(a^2, b^2, 0, ...) exactly."""
    from diffkit.data import InMemoryImageDataset, data_scale
    from diffkit.latent import LatentDataset
    a, b = 1.5, 0.5
    signs = torch.tensor([[1, 1], [1, -1], [-1, 1], [-1, -1]], dtype=torch.float32).repeat(5, 1)
    latents = torch.zeros(20, 1, 2, 2)
    latents[:, 0, 0, 0], latents[:, 0, 0, 1] = a * signs[:, 0] + 0.25, b * signs[:, 1]  # the mean is removed
    assert data_scale(LatentDataset(latents, torch.zeros(20), 0)) == pytest.approx(a, rel=1e-9)
    # uint8 images in the network's [-1, 1]: pixel values 0 and 255 -> -1 and 1 (scale 1 per pixel)
    images = torch.zeros(20, 1, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0] = ((signs[:, 0] + 1) * 127.5).to(torch.uint8)
    assert data_scale(InMemoryImageDataset(images, torch.zeros(20, dtype=torch.long))) == pytest.approx(1.0, rel=1e-9)
    # no spread, no scale: None, which checkpoints store and samplers read as unit-scale data
    assert data_scale(LatentDataset(torch.ones(3, 1, 2, 2), torch.zeros(3), 0)) is None


def test_the_default_graded_grid_follows_the_denoisers_data_scale(schedule):
    """grade_sigmas_for: sigma_hi = the data scale (unit scale when unknown); diffkit.sample grades
    the default logsnr_graded grid with it, and a guidance wrapper passes it on."""
    from diffkit.guidance import ClassifierFreeGuidance
    from diffkit.timesteps import grade_sigmas_for
    assert grade_sigmas_for(None) == GRADE_SIGMAS
    assert grade_sigmas_for(3.0) == (3.0, 0.1) and grade_sigmas_for(0.1) == (0.1, 0.05)
    with pytest.raises(DiffkitError, match="data_scale"):
        grade_sigmas_for(-1.0)
    mixture = GaussianMixture.random(4, 3, seed=0)
    x_T = torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    scaled = Denoiser(mixture.network(schedule), schedule, data_scale=3.0)
    explicit = make_grid(schedule, 8, "logsnr_graded", "sigma_min", grade_sigmas=(3.0, 0.1))
    assert not torch.equal(explicit, make_grid(schedule, 8, "logsnr_graded", "sigma_min"))
    got = diffkit.sample(scaled, x_T.clone(), "unipc-3", 8, progress=False)
    want = diffkit.sample(Denoiser(mixture.network(schedule), schedule), x_T.clone(), "unipc-3", grid=explicit,
                          progress=False)
    assert torch.equal(got, want)
    assert ClassifierFreeGuidance(scaled, 1.0, null_class=0).data_scale == 3.0


@pytest.mark.parametrize("name", ["unipc", "unipc-3", "unipc-bh1"])
def test_graded_default_keeps_the_variance_of_gaussian_data(schedule, name):
    """Gaussian data N(0, s^2): the exact ODE maps x_T to x_0 with gain s / sqrt(alpha_T^2 s^2 +
    sigma_T^2) (analytic.gaussian_ode_solution), so the variance of the samples is s^2 only if the
    sampler gets that gain right. At NFE 10 the UniPC defaults stay within 8% for s from 0.2 to 2.
    With final = "zero" the grid's last interval before t = 0 is long in log-SNR and second order,
    its extrapolation of x0 overshoots, and the evaluation at t = 0 cannot repair it (the output is
    the x0 prediction at the *uncorrected* point, and D ~ identity there): `unipc` then inflates
    the variance by up to 22% (docs/samplers.md, "The last step of UniPC")."""
    T = schedule.num_timesteps
    x_T = torch.ones(1, 1, dtype=F64)

    def variance_errors(final):
        errors = []
        for s in (0.2, 0.35, 0.5, 1.0, 2.0):
            gaussian = GaussianMixture([1.0], [[0.0]], [[[s * s]]])
            den = Denoiser(gaussian.network(schedule), schedule)
            exact = gaussian_ode_solution(gaussian.means[0], gaussian.covs[0], x_T, schedule.alpha(T - 1.0),
                                          schedule.sigma(T - 1.0), 1.0, 0.0)
            out = diffkit.sample(den, x_T.clone(), name, nfe=10, final=final, progress=False)
            errors.append(abs((out / exact).item() ** 2 - 1))
        return errors

    assert REGISTRY[name].default_final == "sigma_min"
    assert max(variance_errors(None)) < 0.08
    if name == "unipc":
        assert max(variance_errors("zero")) > 0.15
