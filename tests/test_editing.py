"""diffkit.editing against closed forms: SDEdit (Meng et al. 2022) on Gaussian data is the exact
probability-flow map of the noised image; its strength picks diffusers' img2img timesteps;
inpainting by replacement keeps the known pixels, repaints independent dims with their exact
marginal and (measured) moves correlated dims part way to the exact conditional; DDPM / DDIM
interpolation reproduce their endpoints and the exact posterior of the interpolated latent."""
import math
from types import SimpleNamespace

import pytest
import torch

import diffkit
from diffkit import Denoiser, DiffkitError, NoiseSchedule
from diffkit.analytic import GaussianMixture, gaussian_ode_solution
from diffkit.diffusion import target_for
from diffkit.editing import InpaintingDenoiser, repaint_walk, slerp, strength_grid
from diffkit.noise import generators_from_seed
from diffkit.sampling import sampler_grid
from diffkit.samplers.registry import get_sampler

S = NoiseSchedule.linear(1000)
GAUSS = GaussianMixture.random(3, 1, seed=3, spread=0.5)
DEN = Denoiser(GAUSS.network(S), S)
X0 = GAUSS.sample(8, torch.Generator().manual_seed(0))[0]
FREE = dict(progress=False, value_range=None)  # analytic data is not confined to [-1, 1]


def seeded_noise(seed, n, shape):
    """The noise of per-sample generators seed + i, drawn here independently."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators_from_seed(seed, n)]).double()


def alpha_sigma(t):
    t = torch.tensor([float(t)], dtype=torch.float64)
    return S.alpha(t).item(), S.sigma(t).item()


# ---------------------------------------------------------------- img2img
@pytest.mark.parametrize("sampler,steps,tol", [("ddim", 1000, 5e-3), ("unipc", 100, 1e-3),
                                               ("dpm-solver++-2m", 100, 1e-3), ("heun", 100, 2e-3)])
@pytest.mark.parametrize("strength", [0.3, 1.0])
def test_img2img_on_gaussian_data_is_the_exact_ode_map_of_the_noised_image(sampler, steps, tol, strength):
    """x_t0 = alpha x0 + sigma z, then the exact probability-flow map t0 -> the grid's end."""
    out = diffkit.img2img(DEN, X0, strength, sampler, steps, seed=5, **FREE)
    full = sampler_grid(DEN, get_sampler(sampler), steps)
    t0, end = full[steps - int(steps * strength)], full[-1]
    a, s = alpha_sigma(t0)
    x_t0 = a * X0 + s * seeded_noise(5, 8, (3,))
    ref = gaussian_ode_solution(GAUSS.means[0], GAUSS.covs[0], x_t0, a, s, *alpha_sigma(end))
    assert (out - ref).abs().max() < tol


def test_img2img_of_data_returns_the_data_distribution():
    """SDEdit of samples of the data with the exact model: the marginal at t0 is p_t0, so the
    reverse process returns p_0 (mean and covariance within 4 standard errors, 4000 samples)."""
    mix = GaussianMixture([0.4, 0.6], [[-0.5, 0.3], [0.6, -0.2]],
                          [[[0.05, 0.02], [0.02, 0.04]], [[0.03, -0.01], [-0.01, 0.06]]])
    den = Denoiser(mix.network(S), S)
    n = 4000
    x0 = mix.sample(n, torch.Generator().manual_seed(1))[0]
    out = diffkit.img2img(den, x0, 0.6, "unipc", 20, generator=torch.Generator().manual_seed(2), **FREE)
    cov = mix.cov()
    se_mean = (cov.diagonal() / n).sqrt()
    assert ((out.mean(0) - mix.mean()).abs() < 4 * se_mean).all()
    var_se = cov.diagonal() * math.sqrt(2 / n)
    assert ((torch.cov(out.T).diagonal() - cov.diagonal()).abs() < 4 * var_se).all()


def diffusers_img2img_timesteps(scheduler, steps, strength):
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import (
        StableDiffusionImg2ImgPipeline)
    scheduler.set_timesteps(steps)
    timesteps, _ = StableDiffusionImg2ImgPipeline.get_timesteps(SimpleNamespace(scheduler=scheduler), steps,
                                                                 strength, "cpu")
    return timesteps


class Recorder:
    """A denoiser wrapper that records every (x, t) it is evaluated at."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    schedule = property(lambda self: self.inner.schedule)

    def __call__(self, x, t, **cond):
        self.calls.append((x.clone(), float(t)))
        return self.inner(x, t, **cond)


@pytest.mark.parametrize("config,spacing", [({}, None), ({"steps_offset": 1}, "leading"),
                                            ({"timestep_spacing": "trailing"}, "trailing")])
@pytest.mark.parametrize("strength", [0.3, 0.75, 0.999, 1.0])
def test_img2img_timesteps_and_noising_are_diffusers(config, spacing, strength):
    """DDIM on the same betas: the times evaluated are diffusers' img2img timesteps, and the
    first input is diffusers' ``scheduler.add_noise(image, noise, timesteps[0])``."""
    from diffusers import DDIMScheduler
    steps = 50
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                              **config)
    expected = diffusers_img2img_timesteps(scheduler, steps, strength)
    rec = Recorder(DEN)
    options = {"steps_offset": 1} if config.get("steps_offset") else {}
    diffkit.img2img(rec, X0, strength, "ddim", steps, spacing=spacing, seed=3, **FREE, **options)
    assert [t for _, t in rec.calls] == [float(t) for t in expected]
    first = scheduler.add_noise(X0, seeded_noise(3, 8, (3,)), expected[:1])
    torch.testing.assert_close(rec.calls[0][0], first, rtol=1e-6, atol=1e-6)


def test_strength_grid_counts_as_diffusers():
    grid = torch.arange(10.0, -2.0, -1.0)  # 11 intervals
    assert strength_grid(grid, 1.0).tolist() == grid.tolist()
    assert strength_grid(grid, 0.5).tolist() == grid[6:].tolist()  # int(11 * 0.5) = 5 intervals
    with pytest.raises(DiffkitError, match=r"strength=0.05 keeps int\(11 \* 0.05\) = 0"):
        strength_grid(grid, 0.05)


def test_img2img_is_batch_size_invariant_with_a_stochastic_sampler():
    batch = diffkit.img2img(DEN, X0, 0.5, "ddpm", 20, seed=11, **FREE)
    alone = diffkit.img2img(DEN, X0[3:4], 0.5, "ddpm", 20, seed=14, **FREE)
    torch.testing.assert_close(batch[3:4], alone, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- inpainting
DIAG_MEAN, DIAG_VAR = torch.tensor([0.3, -0.2, 0.1, 0.4]), torch.tensor([0.2, 0.05, 0.1, 0.3])
DIAG = GaussianMixture([1.0], DIAG_MEAN[None], torch.diag(DIAG_VAR)[None])
KEEP_01 = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)  # dims 2, 3 repainted


def network_of(kind, mixture):
    """The exact model as a network of another prediction type (its output converted from eps*)."""
    eps_net = mixture.network(S)

    def net(x, t):
        eps = eps_net(x, t)
        a, s = S.alpha(t.double())[:, None], S.sigma(t.double())[:, None]
        x0 = (x - s * eps) / a
        return target_for(kind, x0, eps, a, s)
    return net


@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction"])
def test_inpainting_denoiser_keeps_eps_and_x0_consistent(kind):
    den = Denoiser(network_of(kind, DIAG), S, prediction_type=kind)
    known = torch.tensor([[0.5, -0.5, 9.0, 9.0]], dtype=torch.float64).repeat(3, 1)
    wrapped = InpaintingDenoiser(den, known, KEEP_01.expand(3, 4))
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t in (900.0, 300.0, 0.0):
        pred, inner = wrapped(x, t), den(x, t)
        a, s = alpha_sigma(t)
        torch.testing.assert_close(a * pred.x0 + s * pred.eps, x, rtol=0, atol=1e-10)
        assert (pred.x0[:, :2] == known[:, :2]).all()
        torch.testing.assert_close(pred.x0[:, 2:], inner.x0[:, 2:], rtol=0, atol=1e-10)
        torch.testing.assert_close(pred.eps[:, 2:], inner.eps[:, 2:], rtol=0, atol=1e-8)


@pytest.mark.parametrize("sampler,steps,tol", [("ddim", 200, 1e-2), ("dpm-solver++-2m", 100, 1e-3),
                                               ("unipc", 50, 1e-3), ("heun", 100, 2e-3)])
def test_inpainting_independent_dims_follow_their_exact_ode(sampler, steps, tol):
    """Diagonal covariance: eps* of a repainted dim depends on that dim only, so its path is the
    exact ODE map of its own start sigma_T z (strength 1: the repainted region starts from noise)."""
    n = 6
    known = DIAG.sample(n, torch.Generator().manual_seed(4))[0]
    out = diffkit.inpaint(DEN_DIAG, known, KEEP_01, sampler, steps, seed=9, **FREE)
    assert torch.equal(out[:, :2], known[:, :2])
    full = sampler_grid(DEN_DIAG, get_sampler(sampler), steps)
    a, s = alpha_sigma(full[0])
    start = s * seeded_noise(9, n, (4,))[:, 2:]
    ref = gaussian_ode_solution(DIAG_MEAN[2:], torch.diag(DIAG_VAR[2:]), start, a, s, *alpha_sigma(full[-1]))
    assert (out[:, 2:] - ref).abs().max() < tol


DEN_DIAG = Denoiser(DIAG.network(S), S)


def test_inpainting_with_ddpm_repaints_independent_dims_with_the_data_marginal():
    """DDPM with the exact reverse kernel (learned variance; 100 steps of fixed-small variance
    shrink the variance by themselves, inpainting or not)."""
    n = 4000
    known = torch.full((n, 4), 0.9, dtype=torch.float64)
    den = Denoiser(DIAG.network(S, learned_variance=True), S, learned_variance=True)
    out = diffkit.inpaint(den, known, KEEP_01, "ddpm", 100, generator=torch.Generator().manual_seed(5),
                          **FREE)
    assert torch.equal(out[:, :2], known[:, :2])
    mean_se, var_se = (DIAG_VAR[2:] / n).sqrt(), DIAG_VAR[2:] * math.sqrt(2 / n)
    assert ((out[:, 2:].mean(0) - DIAG_MEAN[2:]).abs() < 4 * mean_se).all()
    assert ((out[:, 2:].var(0) - DIAG_VAR[2:]).abs() < 4 * var_se).all()


CORR_MEAN = torch.tensor([0.2, -0.1])
CORR_COV = torch.tensor([[1.0, 0.9], [0.9, 1.0]]) * 0.25
CORR = GaussianMixture([1.0], CORR_MEAN[None], CORR_COV[None])
X_KEPT = 0.6


def replacement_bias(sampler, steps, n=4000):
    """(mean, var) of the repainted dim 1 given the kept dim 0 = X_KEPT, and the exact
    conditional's: N(mu_u + S_uk/S_kk (x_k - mu_k), S_uu - S_uk^2/S_kk) (docs/editing.md)."""
    den = Denoiser(CORR.network(S), S)
    known = torch.zeros(n, 2, dtype=torch.float64)
    known[:, 0] = X_KEPT
    out = diffkit.inpaint(den, known, torch.tensor([0.0, 1.0]), sampler, steps,
                          generator=torch.Generator().manual_seed(0), **FREE)
    cond_mean = CORR_MEAN[1] + CORR_COV[0, 1] / CORR_COV[0, 0] * (X_KEPT - CORR_MEAN[0])
    cond_var = CORR_COV[1, 1] - CORR_COV[0, 1] ** 2 / CORR_COV[0, 0]
    return out[:, 1].mean().item(), out[:, 1].var().item(), cond_mean.item(), cond_var.item()


def test_replacement_inpainting_is_biased_but_moves_toward_the_conditional():
    """The measured bias of the replacement method (docs/editing.md): the repainted dim moves from
    the marginal N(-0.10, 0.25) toward the exact conditional N(0.26, 0.0475), but only part way,
    and less along the ODE (converged: unipc 20 steps = ddim 1000 steps, mean 0.077, var 0.134)
    than with ancestral sampling (ddpm 100 steps = ddpm 1000 steps: mean 0.15, var 0.085)."""
    for sampler, steps, mean_lo, mean_hi, var_lo, var_hi in [("ddpm", 100, 0.12, 0.17, 0.07, 0.10),
                                                             ("unipc", 20, 0.06, 0.10, 0.12, 0.15)]:
        mean, var, cond_mean, cond_var = replacement_bias(sampler, steps)
        assert abs(cond_mean - 0.26) < 1e-6 and abs(cond_var - 0.0475) < 1e-6
        assert CORR_MEAN[1] < mean_lo < mean < mean_hi < cond_mean, (sampler, mean)
        assert cond_var < var_lo < var < var_hi < CORR_COV[1, 1], (sampler, var)


def test_inpainting_strength_below_one_noises_the_whole_image():
    """With strength < 1 the start is the noised image (SDEdit inside the mask): a repainted dim of
    Gaussian data follows the exact ODE from alpha x + sigma z, not from sigma z."""
    known = DIAG.sample(5, torch.Generator().manual_seed(6))[0]
    out = diffkit.inpaint(DEN_DIAG, known, KEEP_01, "unipc", 50, strength=0.4, seed=2, **FREE)
    full = sampler_grid(DEN_DIAG, get_sampler("unipc"), 50)
    a, s = alpha_sigma(full[50 - 20])
    start = (a * known + s * seeded_noise(2, 5, (4,)))[:, 2:]
    ref = gaussian_ode_solution(DIAG_MEAN[2:], torch.diag(DIAG_VAR[2:]), start, a, s, *alpha_sigma(full[-1]))
    assert (out[:, 2:] - ref).abs().max() < 1e-3
    assert torch.equal(out[:, :2], known[:, :2])


def test_inpainting_from_pure_noise_starts_the_repainted_dims_at_the_noise():
    """start="noise" (diffusers' strength-1 start): a repainted dim of Gaussian data follows the exact
    ODE from n itself, not from sigma_T n (sigma_T = 0.8 here); the kept dims are the image's."""
    schedule = NoiseSchedule.linear(1000, 1e-4, 2e-3)  # alpha_T = 0.59: the two starts far apart
    den = Denoiser(DIAG.network(schedule), schedule)
    known = DIAG.sample(5, torch.Generator().manual_seed(6))[0]
    out = diffkit.inpaint(den, known, KEEP_01, "unipc", 50, start="noise", seed=2, **FREE)
    full = sampler_grid(den, get_sampler("unipc"), 50).double()
    start = seeded_noise(2, 5, (4,))[:, 2:]
    ref = gaussian_ode_solution(DIAG_MEAN[2:], torch.diag(DIAG_VAR[2:]), start, schedule.alpha(full[0]),
                                schedule.sigma(full[0]), schedule.alpha(full[-1]), schedule.sigma(full[-1]))
    assert (out[:, 2:] - ref).abs().max() < 1e-3
    assert torch.equal(out[:, :2], known[:, :2])


# ---------------------------------------------------------------- interpolation
def test_slerp_keeps_the_norm_of_orthogonal_equal_norm_latents():
    a = torch.tensor([[3.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 0.0, 3.0, 0.0]], dtype=torch.float64)
    for w in (0.0, 0.1, 0.5, 0.9, 1.0):
        z = slerp(a, b, w)
        torch.testing.assert_close(z.norm(), torch.tensor(3.0, dtype=torch.float64))
        torch.testing.assert_close(z[0, 0], 3 * torch.tensor(math.cos(w * math.pi / 2), dtype=torch.float64))
    torch.testing.assert_close(slerp(a, a, 0.3), a)  # parallel latents: linear, no 0/0


def test_ddim_interpolation_endpoints_reconstruct_the_images():
    a = GAUSS.sample(4, torch.Generator().manual_seed(1))[0]
    b = GAUSS.sample(4, torch.Generator().manual_seed(2))[0]
    out = diffkit.interpolate(DEN, a, b, [0.0, 0.5, 1.0], "ddim", steps=200, **FREE)
    assert out.shape == (12, 3)
    assert (out[0::3] - a).abs().max() < 1e-3 and (out[2::3] - b).abs().max() < 1e-3
    # the midpoint is the decoding of the slerped latents: on a Gaussian, the exact ODE map of it
    grid = sampler_grid(DEN, get_sampler("ddim"), 200)
    aT, sT = alpha_sigma(grid[0])
    za = gaussian_ode_solution(GAUSS.means[0], GAUSS.covs[0], a, 1.0, 0.0, aT, sT)
    zb = gaussian_ode_solution(GAUSS.means[0], GAUSS.covs[0], b, 1.0, 0.0, aT, sT)
    mid = gaussian_ode_solution(GAUSS.means[0], GAUSS.covs[0], slerp(za, zb, 0.5), aT, sT, 1.0, 0.0)
    assert (out[1::3] - mid).abs().max() < 1.5e-2  # DDIM's first-order error at 200 steps (lerp: 0.1)


def test_ddpm_interpolation_fixes_the_noise_across_weights_and_pairs_are_independent_of_the_batch():
    """On Gaussian data eps* is affine in x, so with the noise fixed across weights the decoded
    image is affine in the weight: out(0.3) = 0.7 out(0) + 0.3 out(1) (fresh noise per weight
    would break this by the noise's size)."""
    a = GAUSS.sample(3, torch.Generator().manual_seed(1))[0]
    b = GAUSS.sample(3, torch.Generator().manual_seed(2))[0]
    out = diffkit.interpolate(DEN, a, b, [0.0, 0.3, 1.0], "ddpm", t=50, seed=4, **FREE)
    torch.testing.assert_close(out[1::3], 0.7 * out[0::3] + 0.3 * out[2::3], rtol=0, atol=1e-9)
    alone = diffkit.interpolate(DEN, a[2:], b[2:], [0.3], "ddpm", t=50, seed=6, **FREE)
    torch.testing.assert_close(alone[0], out[7], rtol=0, atol=1e-12)


def test_ddpm_interpolation_of_a_point_mass_returns_it():
    mean = torch.tensor([0.4, -0.3, 0.1])
    tight = GaussianMixture([1.0], mean[None], (1e-8 * torch.eye(3))[None])
    den = Denoiser(tight.network(S), S)
    a = mean[None].double().repeat(2, 1)
    out = diffkit.interpolate(den, a, a + 0.0, [0.0, 0.5, 1.0], "ddpm", t=200, seed=0, **FREE)
    assert (out - mean.double()).abs().max() < 1e-3


def test_ddpm_interpolation_defaults_to_the_middle_of_any_schedule():
    """DDPM's t = 500 of T = 1000 (1-based) is t = T/2 - 1 in diffkit's time: 499, or 49 of T = 100,
    decoded over t, t-1, ..., 0 and the step to clean data: t + 1 network calls."""
    for T in (100, 1000):
        sched = NoiseSchedule.linear(T)
        den = Denoiser(GAUSS.network(sched), sched)
        a = torch.zeros(1, 3, dtype=torch.float64)
        diffkit.interpolate(den, a, a + 0.5, [0.0, 1.0], "ddpm", seed=0, **FREE)
        assert den.nfe == T // 2


def test_ddpm_interpolation_decodes_the_exact_posterior_of_the_interpolated_latent():
    """Isotropic Gaussian data N(m, c I) with the exact reverse kernel (learned variance): decoding
    x-bar_t by DDPM draws x_0 ~ q(x_0 | x-bar_t) = N(m + alpha c (x-bar_t - alpha m)/v, c sigma^2 / v),
    v = alpha^2 c + sigma^2. The latent x-bar_t is rebuilt from the pair's seeded noise."""
    m, c, t, n = torch.tensor([0.3, -0.2]), 0.2, 60, 600
    iso = GaussianMixture([1.0], m[None], (c * torch.eye(2))[None])
    den = Denoiser(iso.network(S, learned_variance=True), S, learned_variance=True)
    a = iso.sample(n, torch.Generator().manual_seed(1))[0]
    b = iso.sample(n, torch.Generator().manual_seed(2))[0]
    out = diffkit.interpolate(den, a, b, [0.5], "ddpm", t=t, seed=0, **FREE)
    al, si = alpha_sigma(t)
    gens = generators_from_seed(0, n)
    za = torch.stack([torch.randn(2, generator=g) for g in gens]).double()
    zb = torch.stack([torch.randn(2, generator=g) for g in gens]).double()
    latent = 0.5 * (al * a + si * za) + 0.5 * (al * b + si * zb)
    v = al ** 2 * c + si ** 2
    post_mean = m.double() + al * c * (latent - al * m.double()) / v
    z = (out - post_mean) / math.sqrt(c * si ** 2 / v)
    assert z.mean(0).abs().max() < 4 / math.sqrt(n)
    assert (z.var(0) - 1).abs().max() < 4 * math.sqrt(2 / n)


# ---------------------------------------------------------------- bad input
IMG = torch.zeros(2, 1, 4, 4)


BAD = [
    (lambda: diffkit.img2img(DEN, IMG, 0.0), r"strength=0.0 is out of range; allowed: a finite number in \(0.0, 1.0\]"),
    (lambda: diffkit.img2img(DEN, IMG, 1.5), r"strength=1.5 is out of range"),
    (lambda: diffkit.img2img(DEN, IMG, 0.01, steps=50), r"strength=0.01 keeps int\(50 \* 0.01\) = 0 of 50 steps"),
    (lambda: diffkit.img2img(DEN, IMG + 2, 0.5), r"images hold values in \[2, 2\]; allowed: \[-1, 1\]"),
    (lambda: diffkit.img2img(DEN, IMG.long(), 0.5), r"images of dtype int64 are not allowed"),
    (lambda: diffkit.img2img(DEN, torch.zeros(4), 0.5), r"images of shape \(4,\) are not allowed"),
    (lambda: diffkit.img2img(DEN, [1, 2], 0.5), r"images of type list is not allowed"),
    (lambda: diffkit.img2img(DEN, IMG, 0.5, "nope"), r"nope"),
    (lambda: diffkit.img2img(DEN, IMG, 0.5, eta="x"), r"eta='x' is not allowed"),
    (lambda: diffkit.img2img(DEN, IMG, 0.5, seed=1, generator=torch.Generator()), r"give seed or generator"),
    (lambda: diffkit.inpaint(DEN, IMG, torch.ones(3, 1, 4, 4)), r"mask of shape \(3, 1, 4, 4\) does not broadcast"),
    (lambda: diffkit.inpaint(DEN, IMG, torch.full((1, 1, 4, 4), 1.5)), r"mask holds values in \[1.5, 1.5\]"),
    (lambda: diffkit.inpaint(DEN, IMG, torch.ones(1, 1, 4, 4), strength=2), r"strength=2 is out of range"),
    (lambda: diffkit.inpaint(DEN, IMG, torch.ones(1, 1, 4, 4), start="zeros"),
     r"start='zeros' is not allowed; choose one of: image, noise"),
    (lambda: diffkit.inpaint(DEN, IMG, torch.ones(1, 1, 4, 4), strength=0.5, start="noise"),
     r"start='noise' \(pure noise, diffusers' inpainting at strength 1\) needs strength 1; got strength=0.5"),
    (lambda: diffkit.inpaint(DEN, IMG, torch.ones(1, 1, 4, 4), jump_n_sample=3),
     r"jump_n_sample=3 \(RePaint's resampling\) needs sampler='ddpm'; got 'ddim'"),
    (lambda: diffkit.inpaint(DEN, IMG, torch.ones(1, 1, 4, 4), "ddpm", jump_length=0, jump_n_sample=3),
     r"jump_length=0 is out of range"),
    (lambda: diffkit.interpolate(DEN, IMG, IMG, [0.5, 1.2]), r"weight=1.2 is out of range; allowed: .*\[0.0, 1.0\]"),
    (lambda: diffkit.interpolate(DEN, IMG, IMG, []), r"weights=\[\] is not allowed"),
    (lambda: diffkit.interpolate(DEN, IMG, IMG[:1], [0.5]),
     r"a of shape \(2, 1, 4, 4\) and b of shape \(1, 1, 4, 4\) differ"),
    (lambda: diffkit.interpolate(DEN, IMG, IMG, [0.5], "lerp"),
     r"method='lerp' is not allowed; choose one of: ddpm, ddim"),
    (lambda: diffkit.interpolate(DEN, IMG, IMG, [0.5], t=1000), r"t=1000 is out of range"),
    (lambda: diffkit.interpolate(DEN, IMG, IMG, [0.5], "ddim", t=5), r"t=5 applies to method='ddpm'"),
]


def test_images_that_do_not_fit_a_loaded_model_are_one_line():
    den = Denoiser(GAUSS.network(S), S)
    den.meta = {"unet": {"in_channels": 1, "img_size": 4}}  # what load_denoiser attaches
    for call in (lambda: diffkit.img2img(den, torch.zeros(2, 3, 4, 4), 0.5),
                 lambda: diffkit.inpaint(den, torch.zeros(2, 1, 8, 8), torch.ones(1, 1, 8, 8)),
                 lambda: diffkit.interpolate(den, torch.zeros(2, 1, 4, 5), torch.zeros(2, 1, 4, 5), [0.5])):
        with pytest.raises(DiffkitError, match=r"of shape \(2, \d, \d, \d\) do not fit the model, which takes "
                                               r"\(batch, 1, 4, 4\)"):
            call()


@pytest.mark.parametrize("call,message", BAD)
def test_bad_input_is_one_line(call, message):
    with pytest.raises(DiffkitError, match=message) as err:
        call()
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- RePaint resampling
@pytest.mark.parametrize("steps,jump_length,jump_n_sample", [(10, 2, 2), (50, 10, 10), (20, 5, 3), (7, 10, 4)])
def test_repaint_walk_is_diffusers_and_the_ddpm_steps_evaluate_its_times(steps, jump_length, jump_n_sample):
    from diffusers import RePaintScheduler
    scheduler = RePaintScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(steps, jump_length=jump_length, jump_n_sample=jump_n_sample)
    ratio = 1000 // steps
    walk = repaint_walk(steps, jump_length, jump_n_sample)
    assert [t * ratio for t in walk] == scheduler.timesteps.tolist()
    if len(walk) > 60:
        return
    rec = Recorder(DEN_DIAG)
    known = DIAG.sample(2, torch.Generator().manual_seed(0))[0]
    diffkit.inpaint(rec, known, KEEP_01, "ddpm@leading", steps, jump_length=jump_length,
                    jump_n_sample=jump_n_sample, seed=0, **FREE)
    last, expected = scheduler.timesteps[0].item() + 1, []
    for t in scheduler.timesteps.tolist():  # diffusers' pipeline: a time below the last is a step
        if t < last:
            expected.append(float(t))
        last = t
    assert [t for _, t in rec.calls] == expected


def test_repaint_jumps_keep_the_forward_marginal():
    """With nothing to repaint (mask 0) every state is x_t ~ q(x_t | x_known) = N(alpha_t x, sigma_t^2):
    the DDPM steps are the forward posterior and the jumps back up q(x_t | x_s); checked at every
    evaluation, after the jumps too."""
    n = 3000
    known = torch.full((n, 4), 0.5, dtype=torch.float64)
    rec = Recorder(DEN_DIAG)
    out = diffkit.inpaint(rec, known, torch.zeros(4), "ddpm", 20, jump_length=5, jump_n_sample=3,
                          generator=torch.Generator().manual_seed(1), **FREE)
    assert torch.equal(out, known)
    assert len(rec.calls) == 20 + 2 * 3 * 5  # jumps at indices 0, 5, 10 (range(0, 15, 5)), twice each
    for x, t in rec.calls:
        a, s = alpha_sigma(t)
        z = (x - a * known) / s
        assert z.mean().abs() < 5 / math.sqrt(4 * n), t
        assert (z.var() - 1).abs() < 5 * math.sqrt(2 / (4 * n)), t


def test_repaint_resampling_reduces_the_replacement_bias():
    """Correlated Gaussian of the bias test: with jump_n_sample 5 the repainted dim comes close to
    the exact conditional N(0.26, 0.0475) (ddpm, 50 steps, jump_length 5, 2000 samples: plain
    mean 0.123, var 0.076; resampled 0.215, 0.050)."""
    den = Denoiser(CORR.network(S), S)
    known = torch.zeros(2000, 2, dtype=torch.float64)
    known[:, 0] = X_KEPT
    results = {}
    for jump_n_sample in (1, 5):
        out = diffkit.inpaint(den, known, torch.tensor([0.0, 1.0]), "ddpm", 50, jump_length=5,
                              jump_n_sample=jump_n_sample, generator=torch.Generator().manual_seed(0), **FREE)
        results[jump_n_sample] = out[:, 1].mean().item(), out[:, 1].var().item()
    (mean1, var1), (mean5, var5) = results[1], results[5]
    assert mean1 + 0.06 < mean5 < 0.26 and 0.19 < mean5
    assert 0.0475 * 0.9 < var5 < var1 - 0.015 and var5 < 0.056


# ---------------------------------------------------------------- the kept region's noise
def kept_variances(den, sampler, steps, n=4000, **options):
    """[(s, v_s)] after every step into s >= 0: v_s = Var(x_s - alpha_s x_known) / sigma_s^2 over the
    kept dims 0, 1 (dims 2, 3 repainted), which q(x_s | x_known) makes 1."""
    known = torch.full((n, 4), 0.5, dtype=torch.float64)
    states = []
    diffkit.inpaint(den, known, KEEP_01, sampler, steps, generator=torch.Generator().manual_seed(2),
                    callback=lambda d: d["s"] >= 0 and states.append((d["s"], d["x"][:, :2].clone())),
                    **FREE, **options)
    assert len(states) >= steps - 1
    out = []
    for s, x in states:
        a, sig = alpha_sigma(s)
        out.append((s, ((x - a * known[:, :2]) / sig).var().item()))
    return out


DEN_LEARNED = Denoiser(DIAG.network(S, learned_variance=True), S, learned_variance=True)
DEN_VLB_LARGE = Denoiser(DIAG.network(S), S)
DEN_VLB_LARGE.meta = {"config": {"fixed_variance": "fixed_large"}}  # a loss="vlb" checkpoint trained with beta


@pytest.mark.parametrize("den,sampler,options", [
    (DEN_LEARNED, "ddpm", {}), (DEN_LEARNED, "ddpm", {"variance_type": "learned_range"}),
    (DEN_LEARNED, "ddpm", {"jump_length": 5, "jump_n_sample": 2}), (DEN_VLB_LARGE, "ddpm", {}),
    (DEN_DIAG, "ddpm", {"variance_type": "fixed_large"}),
    (DEN_VLB_LARGE, "ddpm", {"jump_length": 5, "jump_n_sample": 2}),
    (DEN_DIAG, "ddim", {"eta": "sigma_hat"}), (DEN_LEARNED, "ddpm", {"variance_type": "fixed_large"}),
    (DEN_DIAG, "ddpm", {}), (DEN_DIAG, "ddim", {"eta": 1.0}), (DEN_DIAG, "euler-ancestral", {}),
    (DEN_DIAG, "dpm2-ancestral", {}), (DEN_DIAG, "dpm-solver++-2s-ancestral", {}),
    (DEN_DIAG, "sde-dpm-solver++-2m", {}), (DEN_DIAG, "euler", {"s_churn": 40.0}), (DEN_DIAG, "unipc", {}),
    (DEN_DIAG, "dpm-solver++-2m", {}), (DEN_DIAG, "heun", {}), (DEN_DIAG, "sde-dpm-solver++-3m", {}),
    (DEN_DIAG, "deis-3", {})])
def test_the_kept_region_stays_a_noised_copy_of_the_known_pixels(den, sampler, options):
    """x_s ~ q(x_s | x_known) in the kept region after every step (docs/editing.md, "The kept
    region's noise"): the normalised variance within 5 standard errors of 1 (8000 values). Before
    the fix ddpm with fixed_large, learned_range (the defaults of a learned-variance or a fixed_large
    vlb model) and ddim's sigma_hat drifted to 40-61 at t = 0 (benchmarks/inpainting_kept_variance.py)."""
    for s, v in kept_variances(den, sampler, 20, **options):
        assert abs(v - 1) < 5 * math.sqrt(2 / 8000), (s, v)


def test_the_reverse_variance_is_the_posterior_one_in_the_kept_region_only():
    """var_values -> m v + (1 - m)(-1): beta-tilde where kept (v = -1), the model's where repainted
    (learned v; fixed_large as v = 1, which is Sigma = beta: Improved DDPM eq. 15)."""
    from diffkit.diffusion import model_log_variance
    x = DIAG.sample(3, torch.Generator().manual_seed(0))[0]
    mask = torch.tensor([0.0, 0.5, 1.0, 1.0], dtype=torch.float64).expand_as(x)
    inner = DEN_LEARNED(x, 300.0)
    pred = InpaintingDenoiser(DEN_LEARNED, torch.zeros_like(x), mask)(x, 300.0)
    assert torch.equal(pred.var_values[:, 0], torch.full((3,), -1.0, dtype=torch.float64))
    assert torch.allclose(pred.var_values[:, 1], 0.5 * inner.var_values[:, 1] - 0.5)
    assert torch.equal(pred.var_values[:, 2:], inner.var_values[:, 2:])
    large = InpaintingDenoiser(DEN_DIAG, torch.zeros_like(x), mask, fixed_large=True)
    assert large.learned_variance and not InpaintingDenoiser(DEN_DIAG, x, mask).learned_variance
    log_var = model_log_variance(S, torch.tensor(300.0), torch.tensor(280.0), "learned_range",
                                 large(x, 300.0).var_values)
    t, s = torch.tensor(300.0, dtype=torch.float64), torch.tensor(280.0, dtype=torch.float64)
    small, beta = (model_log_variance(S, t, s, kind).item() for kind in ("fixed_small", "fixed_large"))
    assert torch.allclose(log_var[:, 0], torch.tensor(small, dtype=torch.float64))
    assert torch.allclose(log_var[:, 2:], torch.tensor(beta, dtype=torch.float64))


@pytest.mark.parametrize("sampler,options,message", [
    ("pc", {}, r"sampler 'pc' .*does not keep the kept region distributed as q\(x_t \| x_known\); inpainting takes "
               r"ddpm, ddim, an ODE sampler, an ancestral one or sde-dpm-solver\+\+-2m/-3m"),
    ("pc", {"predictor": "ancestral"}, r"sampler 'pc'"),
    ("euler-ancestral", {"s_noise": 1.05}, r"s_noise=1.05 .*inpainting takes s_noise=1"),
    ("heun", {"s_churn": 10.0, "s_noise": 1.007}, r"s_noise=1.007"),
    ("ddim", {"eta": "sigma_hat", "jump_n_sample": 2},
     r"jump_n_sample=2 \(RePaint's resampling\) needs sampler='ddpm'")])
def test_choices_whose_kept_region_drifts_are_one_line_errors(sampler, options, message):
    """Measured (benchmarks/inpainting_kept_variance.py): pc reaches 61x the kept region's variance
    at t = 0 (2.8x after 10 of 50 steps), s_noise 1.05 1.1x."""
    known = torch.zeros(2, 4, dtype=torch.float64)
    with pytest.raises(DiffkitError, match=message) as err:
        diffkit.inpaint(DEN_DIAG, known, KEEP_01, sampler, 10, seed=0, **FREE, **options)
    assert "\n" not in str(err.value)
