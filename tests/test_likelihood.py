"""The VLB in bits/dim against the analytic likelihood of Gaussian data."""
import math

import torch

from diffkit import Denoiser, NoiseSchedule
from diffkit.analytic import GaussianMixture
from diffkit.likelihood import variational_bound
from diffkit.timestep_sampling import LossAwareTimesteps, UniformTimesteps


def test_vlb_of_exact_model_equals_analytic_nll():
    """Data ~ N(0, 0.3^2 I) quantised to 8 bits. With the exact reverse kernels (eps* and the exact
    variance), the VLB equals -log2 p(x)/D + log2(127.5) (the continuous density times the bin
    width 2/255). Tolerance: 4 Monte Carlo standard errors of the per-example difference, plus
    0.01 bits/dim for the discretisation."""
    S = NoiseSchedule.linear()
    D, n = 3, 1000
    gm = GaussianMixture(torch.ones(1), torch.zeros(1, D), (0.09 * torch.eye(D))[None])
    g = torch.Generator().manual_seed(0)
    x, _ = gm.sample(n, g)
    x = torch.round((x.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1
    d = Denoiser(gm.network(S, learned_variance=True), S, learned_variance=True)
    result = variational_bound(d, x, generator=g)
    nll = -gm.log_prob(x) / (D * math.log(2)) + math.log2(127.5)
    diff = result.total - nll
    stderr = diff.std().item() / math.sqrt(n)
    assert abs(diff.mean().item()) < 4 * stderr + 0.01, (diff.mean().item(), stderr)
    assert result.terms.shape == (n, 1000) and result.prior.max().item() < 1e-4
    # a strided estimate (all t < 20, then every 10th: the bits concentrate at low noise) is close
    strided = variational_bound(d, x[:500], timesteps=[*range(20), *range(20, 1000, 10)], generator=g)
    assert abs(strided.total.mean().item() - result.total[:500].mean().item()) < 0.1


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
