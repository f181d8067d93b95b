"""Training on the true variational bound, loss='vlb' (DDPM eq. 5; Table 2's "L, fixed isotropic
Sigma"), checked against the paper's closed forms computed here from the betas:

* t >= 1, fixed Sigma = sigma_t^2 I: L_{t-1} = beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t))
  ||eps - eps_theta||^2 (DDPM eq. 12, from eq. 8) plus the Gaussian KL's theta-free constant
  (log sigma_t^2 - log beta-tilde_t + beta-tilde_t / sigma_t^2 - 1) / 2, per dim, in bits.
* t = 0: the discrete decoder L_0 = -log p(x_0 | x_1) (DDPM eq. 13) from Normal cdf differences over
  bins of width 2/255.
* The training loss (T L_t, bits/dim) averaged over every t is the NLL evaluation's bound less
  its prior term L_T, per example (diffkit.likelihood, bits/dim).
* Adam steps on a tiny network lower it; settings it cannot use are one-line errors.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal

from diffkit import Denoiser, DiffkitError, NoiseSchedule
from diffkit.config import TrainConfig
from diffkit.likelihood import variational_bound
from diffkit.losses import training_losses
from diffkit.noise import randn_like

F64 = torch.float64
LN2 = math.log(2.0)


def ddpm_schedule(T):
    """DDPM Sec. 4 betas (1e-4 .. 0.02), alphas and abar; index k is the paper's t = k + 1."""
    betas = torch.linspace(1e-4, 0.02, T, dtype=F64)
    alphas = 1 - betas
    return betas, alphas, torch.cumprod(alphas, 0)


def quantised(shape, g):
    """8-bit data scaled to [-1, 1], with pixels at both edges."""
    x = (0.6 * torch.randn(*shape, generator=g, dtype=F64)).clamp(-1, 1)
    return torch.round((x + 1) * 127.5) / 127.5 - 1


def bcast(v, like):
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def _net(output):
    def net(x, t, **_):
        return output
    return net


@pytest.mark.parametrize("fixed_variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_fixed_variance_term_is_ddpm_eq12_weighted_eps_mse_plus_constant(fixed_variance, prediction_type):
    T = 1000
    betas, alphas, abar = ddpm_schedule(T)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([1, 2, 10, 300, 999])
    x0 = quantised((5, 3, 8, 8), g)
    noise = torch.randn(5, 3, 8, 8, generator=g, dtype=F64)
    eps_pred = noise + 0.1 * torch.randn(5, 3, 8, 8, generator=g, dtype=F64)
    a, s = bcast(abar[t].sqrt(), x0), bcast((1 - abar[t]).sqrt(), x0)
    x_t = a * x0 + s * noise
    x0_pred = (x_t - s * eps_pred) / a
    out = {"epsilon": eps_pred, "sample": x0_pred, "v_prediction": a * eps_pred - s * x0_pred}[prediction_type]

    beta, alpha = betas[t], alphas[t]
    beta_tilde = (1 - abar[t - 1]) / (1 - abar[t]) * beta  # DDPM eq. 7
    sigma2 = beta_tilde if fixed_variance == "fixed_small" else beta  # DDPM Sec. 3.2
    weight = beta ** 2 / (2 * sigma2 * alpha * (1 - abar[t]))  # DDPM eq. 12
    const = 0.5 * (sigma2.log() - beta_tilde.log() + beta_tilde / sigma2 - 1)
    want_nats = weight * ((noise - eps_pred) ** 2).flatten(1).mean(1) + const
    got = training_losses(_net(out), NoiseSchedule.linear(T), x0, t, noise, prediction_type=prediction_type,
                          loss_type="vlb", fixed_variance=fixed_variance)
    torch.testing.assert_close(got.loss, T * want_nats / LN2, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(got.vlb, got.loss)
    if fixed_variance == "fixed_small":  # sigma^2 = beta-tilde: no constant, eq. 12 exactly
        assert const.abs().max().item() < 1e-12


@pytest.mark.parametrize("fixed_variance", ["fixed_small", "fixed_large"])
def test_t0_term_is_the_discrete_decoder_nll_of_ddpm_eq13(fixed_variance):
    """At t = 0 (the paper's t = 1) p(x_0|x_1) = N(mu_theta(x_1, 1), sigma_1^2) integrated over
    [x - 1/255, x + 1/255], the edge bins to -inf / +inf; mu_theta = the predicted x_0 (eq. 11 at
    t = 1). sigma_1^2 is beta-tilde of the next step (both variance choices, as DDPM's own code,
    which sets the fixed-large log-variance at t = 1 to log beta-tilde_2 for a better decoder)."""
    T = 1000
    betas, _, abar = ddpm_schedule(T)
    g = torch.Generator().manual_seed(1)
    x0 = quantised((4, 3, 8, 8), g)
    noise = torch.randn(4, 3, 8, 8, generator=g, dtype=F64)
    eps_pred = noise + 0.3 * torch.randn(4, 3, 8, 8, generator=g, dtype=F64)
    x1 = abar[0].sqrt() * x0 + (1 - abar[0]).sqrt() * noise
    mu = (x1 - (1 - abar[0]).sqrt() * eps_pred) / abar[0].sqrt()
    sd = ((1 - abar[0]) / (1 - abar[1]) * betas[1]).sqrt()
    dist = Normal(mu, sd)
    upper = torch.where(x0 > 0.999, torch.ones_like(x0), dist.cdf(x0 + 1 / 255))
    lower = torch.where(x0 < -0.999, torch.zeros_like(x0), dist.cdf(x0 - 1 / 255))
    nll_bits = -(upper - lower).log().flatten(1).mean(1) / LN2
    assert (x0 == 1).any() and (x0 == -1).any()
    got = training_losses(_net(eps_pred), NoiseSchedule.linear(T), x0, torch.zeros(4, dtype=torch.long), noise,
                          loss_type="vlb", fixed_variance=fixed_variance)
    torch.testing.assert_close(got.loss, T * nll_bits, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("fixed_variance", ["fixed_small", "fixed_large"])
def test_training_loss_averaged_over_t_is_the_nll_bound_less_its_prior(fixed_variance):
    """With the noise the evaluation draws, mean_t (T L_t) = sum_t L_t = bound - L_T, per example,
    both in bits/dim; for DDPM's T = 1000 schedule L_T is below 1e-4 bits/dim."""
    T = 40
    schedule = NoiseSchedule.linear(T, 1e-4, 0.2)

    def net(x, t, **_):  # a fixed smooth eps-network, imperfect at every t
        return 0.8 * x + 0.01 * bcast(t.to(x.dtype), x)
    g = torch.Generator().manual_seed(2)
    x0 = quantised((3, 1, 6, 6), g)
    bound = variational_bound(Denoiser(net, schedule), x0, variance_type=fixed_variance,
                              generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    losses = torch.stack([training_losses(net, schedule, x0, torch.full((3,), k), randn_like(x0, g),
                                          loss_type="vlb", fixed_variance=fixed_variance).loss for k in range(T)])
    torch.testing.assert_close(losses.mean(0), bound.total - bound.prior, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(losses.T / T, bound.terms, rtol=1e-9, atol=1e-12)
    long = NoiseSchedule.linear(1000)
    prior = variational_bound(Denoiser(net, long), x0, variance_type=fixed_variance, timesteps=[0]).prior
    assert prior.max().item() < 1e-4


@pytest.mark.parametrize("fixed_variance", ["fixed_small", "fixed_large"])
def test_adam_steps_on_a_tiny_network_lower_the_vlb(fixed_variance):
    torch.manual_seed(0)
    T = 100
    schedule = NoiseSchedule.linear(T, 1e-4, 0.1)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(8, 1, 3, padding=1))
    g = torch.Generator().manual_seed(3)
    x0 = quantised((16, 1, 8, 8), g).float()
    t = torch.arange(16) * (T // 16)
    noise = torch.randn(16, 1, 8, 8, generator=g)

    def loss():
        return training_losses(lambda x, _t: net(x), schedule, x0, t, noise, loss_type="vlb",
                               fixed_variance=fixed_variance).loss.mean()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = loss().item()
    for _ in range(30):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.95 * first, (first, loss().item())


def one_line_error(func, *needles):
    with pytest.raises(DiffkitError) as excinfo:
        func()
    message = str(excinfo.value)
    assert "\n" not in message and all(n in message for n in needles), message


def test_vlb_settings_it_cannot_use_are_one_line_errors():
    from diffkit import config, losses
    assert config.LOSSES == losses.LOSS_TYPES and config.FIXED_VARIANCES == losses.FIXED_VARIANCES
    assert TrainConfig(loss="vlb").fixed_variance == "fixed_small"
    assert TrainConfig(loss="vlb", fixed_variance="fixed_large").fixed_variance == "fixed_large"
    assert TrainConfig(loss="vlb", learned_variance=True, timestep_sampler="loss-aware").loss == "vlb"
    one_line_error(lambda: TrainConfig(loss="vlb", min_snr_gamma=5.0), "min_snr_gamma=5.0", "loss='vlb'")
    one_line_error(lambda: TrainConfig(fixed_variance="fixed_large"), "fixed_variance='fixed_large'",
                   "loss='simple'")
    one_line_error(lambda: TrainConfig(loss="vlb", learned_variance=True, fixed_variance="fixed_large"),
                   "fixed_variance='fixed_large'", "learned_variance=True")
    one_line_error(lambda: TrainConfig(loss="vlb", fixed_variance="learned_range"), "'learned_range'",
                   "fixed_small", "fixed_large")
    x = torch.zeros(2, 1, 4, 4)
    t = torch.tensor([0, 5])
    one_line_error(lambda: training_losses(_net(x), NoiseSchedule.linear(10), x, t, x, loss_type="vlb",
                                           min_snr_gamma=5.0), "min_snr_gamma=5.0")
    one_line_error(lambda: training_losses(_net(x), NoiseSchedule.linear(10), x, t, x, loss_type="vlb",
                                           fixed_variance="beta"), "fixed_variance", "'beta'")
    one_line_error(lambda: training_losses(_net(x), NoiseSchedule.linear(10), x, t, x, loss_type="hybrid"),
                   "loss_type='hybrid'", "learned_variance=True")


def test_cli_trains_with_loss_vlb_and_refuses_min_snr_in_one_line(tmp_path, capsys):
    from diffkit.cli import main
    tiny = [f"--set={kv}" for kv in ("img_size=8", "channel=16", "channel_mult=[1,2]", "attn=[]", "num_res_blocks=1",
                                     "batch_size=8", "T=50", "sample_steps=3")]
    code = main(["train", "--out", str(tmp_path / "run"), "--steps", "2", "--no-progress", "--no-sample",
                 "--device", "cpu", *tiny, "--set", "loss=vlb", "--set", "fixed_variance=fixed_large"])
    out, err = capsys.readouterr()
    assert code == 0, err
    ckpt = tmp_path / "run" / "checkpoints" / "latest.safetensors"
    assert ckpt.exists()
    # the checkpoint's bound and its DDPM sampler use the Sigma it was trained with (beta, not beta-tilde)
    from diffkit.loading import load_denoiser
    from diffkit.samplers.ddpm import ddpm
    den = load_denoiser(ckpt)
    x0 = quantised((2, 1, 8, 8), torch.Generator().manual_seed(0)).float()
    bound = {v: variational_bound(den, x0, timesteps=[0, 1, 10, 49], variance_type=v,
                                  generator=torch.Generator().manual_seed(1)).total
             for v in (None, "fixed_large", "fixed_small")}
    assert torch.equal(bound[None], bound["fixed_large"]) and not torch.allclose(bound[None], bound["fixed_small"])
    grid = torch.tensor([49.0, 30.0, 10.0, -1.0])
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    drawn = {v: ddpm(den, noise, grid, variance_type=v, generator=torch.Generator().manual_seed(3))
             for v in (None, "fixed_large", "fixed_small")}
    assert torch.equal(drawn[None], drawn["fixed_large"]) and not torch.allclose(drawn[None], drawn["fixed_small"])
    code = main(["train", "--out", str(tmp_path / "bad"), "--steps", "1", *tiny, "--set", "loss=vlb",
                 "--set", "min_snr_gamma=5"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "min_snr_gamma=5.0" in err, err
