"""The VLB in bits/dim against the analytic likelihood of Gaussian data."""
import math

import torch

from diffkit import Denoiser, NoiseSchedule
from diffkit.analytic import GaussianMixture
from diffkit.likelihood import variational_bound
from diffkit.timestep_sampling import LossAwareTimesteps, UniformTimesteps


def test_vlb_of_exact_model_equals_analytic_nll():
    """Data ~ N(0, 0.2^2 I) quantised to 8 bits. With the exact reverse kernels (eps* and the exact
    variance) q(x_{1:T}|x_0) is the model's own posterior, so for every x the expected VLB is
    -log2 P(bin of x)/D: the continuous density times the bin width 2/255, i.e.
    -log2 p(x)/D + log2(127.5), up to the prior term L_T (1.2e-5 bits/dim) and the density's
    curvature over a bin (~1e-5): below 1e-3 bits/dim. What is left is Monte Carlo noise (one x_t
    per t and image), so the bound is 4 standard errors + 1e-3. D = 48 dimensions average the
    noise per image (its variance goes as 1/D at about the same cost per image as D = 3): the
    bound is 0.05 bits/dim, where D = 3 with 1000 images allowed 4 * 0.026 + 0.01 = 0.11.
    No pixel is clamped: 5 sigma is the edge of [-1, 1]. The identity holds for any schedule, so
    T = 250 with DDPM's betas x 4 (the same total noise, prior term 1.5e-6 bits/dim) keeps it fast:
    a quarter of the network calls of T = 1000. Measured with T = 250, seeds 0-3: VLB - NLL =
    -0.005, -0.007, +0.007, -0.007 bits/dim (standard errors 0.012-0.014, bound 0.049-0.055); with
    DDPM's T = 1000 (seed 0) it was -0.004 (standard error 0.012)."""
    S = NoiseSchedule.linear(250, 4e-4, 0.08)
    D, n = 48, 250
    gm = GaussianMixture(torch.ones(1), torch.zeros(1, D), (0.04 * torch.eye(D))[None])
    g = torch.Generator().manual_seed(0)
    x, _ = gm.sample(n, g)
    assert x.abs().max() < 1 - 1 / 255  # no edge bin (the decoder integrates those to +-infinity)
    x = torch.round((x + 1) * 127.5) / 127.5 - 1
    d = Denoiser(gm.network(S, learned_variance=True), S, learned_variance=True)
    result = variational_bound(d, x, generator=g)
    nll = -gm.log_prob(x) / (D * math.log(2)) + math.log2(127.5)
    diff = result.total - nll
    stderr = diff.std().item() / math.sqrt(n)
    assert stderr < 0.015  # the noise the bound is made of: 0.012 measured
    assert abs(diff.mean().item()) < 4 * stderr + 1e-3, (diff.mean().item(), stderr)
    assert result.terms.shape == (n, 250) and result.prior.max().item() < 1e-4
    # a strided estimate (all t < 20, then every 5th, weighted by the stride: the bits concentrate
    # at low noise) on the same images, fresh noise: within 4 standard errors of the paired
    # difference (0.077 bits/dim) of the full one. Measured, seeds 0-3: +0.018, +0.014, -0.010,
    # +0.038 (0.9, 0.8, -0.5, 2.0 standard errors of 0.018-0.019); every 10th (43 t of 250) errs
    # upwards by up to 2.9 standard errors, so it would sit near the bound
    strided = variational_bound(d, x, timesteps=[*range(20), *range(20, 250, 5)], generator=g)
    paired = strided.total - result.total
    assert abs(paired.mean().item()) < 4 * paired.std().item() / math.sqrt(n), (paired.mean().item(),
                                                                                 paired.std().item())


def test_uniform_timesteps_have_unit_weights():
    t, w = UniformTimesteps(100).sample(1000, torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() <= 99 and torch.allclose(w, torch.ones_like(w))


def test_loss_aware_probabilities_follow_rms_loss_after_warmup():
    sampler = LossAwareTimesteps(4, history=10, uniform_prob=0.0)
    for _ in range(10):
        sampler.update(torch.tensor([0, 1, 2, 3]), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    p = sampler.probabilities()
    assert abs(p[3] / p[0] - 4.0) < 1e-9
    t, w = sampler.sample(20000, torch.Generator().manual_seed(0))
    # importance weights 1/(T p_t) make the weighted mean unbiased
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0])[t]
    assert abs((w * losses).mean().item() - 2.5) < 0.05


def test_float32_decoder_log_likelihood_matches_float64_normal_cdf_bins():
    """DDPM eq. 13 in float32 against Normal cdf differences in float64, with the mean on either
    side of the pixel and up to ~7 standard deviations away (bin probabilities down to ~1e-12):
    float32 must not lose the probability of bins where both CDFs are near 1."""
    from torch.distributions import Normal

    from diffkit.losses import discretized_gaussian_log_likelihood
    sd = 0.0074  # sqrt(beta-tilde_1) of DDPM's schedule: the decoder's scale
    x = (torch.arange(256, dtype=torch.float64) / 127.5 - 1).repeat(41)
    means = x + torch.linspace(-0.05, 0.05, 41, dtype=torch.float64).repeat_interleave(256)
    dist = Normal(means, sd)
    upper = torch.where(x > 0.999, torch.ones_like(x), dist.cdf(x + 1 / 255))
    lower = torch.where(x < -0.999, torch.zeros_like(x), dist.cdf(x - 1 / 255))
    want = (upper - lower).clamp(min=1e-12).log()
    got = discretized_gaussian_log_likelihood(x.float(), means.float(), torch.full_like(x, math.log(sd)).float())
    assert (want < -20).any() and (want > -1).any()
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
