"""The training rules, each checked against the papers' closed forms (never diffkit's own outputs):

* EMA: ema_n+1 = d_n ema_n + (1 - d_n) w, d_n = min(decay, (1 + n)/(10 + n)) with ``ema_warmup``.
* Classifier-free guidance label dropout (Ho & Salimans 2022; seed 002: y = null with
  probability p_uncond): the fraction of null labels the network sees is binomial(p_uncond).
* Hybrid loss (Improved DDPM eq. 16): L_simple + lambda T L_{t-1}, L_{t-1} the Gaussian KL between
  the DDPM posterior (eq. 6-7) and p_theta with the learned variance of Improved DDPM eq. 15,
  in bits/dim.
* Min-SNR-gamma (Hang et al. 2023): every prediction type's weighted loss equals
  min(SNR, gamma) ||x0 error||^2.
* Numerical guards of docs/reliability.md: the NaN streak counter resets on a good step, a NaN loss
  never enters the loss-aware history, save() refuses non-finite weights.
* The training options (conditional, learned variance, vlb loss, v / sample prediction, zero terminal SNR,
  grad_accum, min_snr_gamma, offset noise, cosine schedule) run through the Trainer, each step's
  loss equal to the closed form recomputed from what the network received and returned.
"""
from __future__ import annotations

import math
from itertools import islice

import numpy as np
import pytest
import torch

from diffkit import DiffkitError
from diffkit.config import TrainConfig
from diffkit.data import InMemoryImageDataset
from diffkit.losses import training_losses
from diffkit.schedule import NoiseSchedule
from diffkit.training import EMA, Trainer

F64 = torch.float64
TINY = {"dataset": "digits", "img_size": 8, "channel": 16, "channel_mult": [1, 2], "attn": [1],
        "num_res_blocks": 1, "dropout": 0.0, "batch_size": 8, "lr": 1e-3, "max_steps": 6,
        "ema_decay": 0.9, "log_every": 1, "device": "cpu", "num_heads": 1, "T": 100, "sample_steps": 5}


def make_cfg(root, **over) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, "save_weight_dir": str(root / "ckpt"), "sampled_dir": str(root / "samples"),
                                  **over})


def random_dataset(n=16, channels=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return InMemoryImageDataset((torch.rand(n, channels, 8, 8, generator=g) * 255).to(torch.uint8),
                                torch.arange(n) % 4, num_classes=4)


def constant_dataset(n=16, channels=1, seed=0):
    """n copies of one random image (labels 0..3): x0 of every sample is known whatever the shuffle."""
    g = torch.Generator().manual_seed(seed)
    image = (torch.rand(1, channels, 8, 8, generator=g) * 255).to(torch.uint8)
    return InMemoryImageDataset(image.repeat(n, 1, 1, 1), torch.arange(n) % 4, num_classes=4)


def quiet_trainer(cfg, dataset) -> Trainer:
    return Trainer(cfg, dataset, progress=False, log=lambda *_: None)


# ------------------------------------------------------------------ closed-form schedules
def linear_betas(T, beta_1=1e-4, beta_T=0.02) -> torch.Tensor:
    """DDPM Sec. 4: betas linear from beta_1 to beta_T."""
    return torch.linspace(beta_1, beta_T, T, dtype=F64)


def cosine_betas(T, s=0.008, max_beta=0.999) -> torch.Tensor:
    """Improved DDPM eq. 17: abar(t) = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s) pi/2); beta_t =
    1 - abar(t)/abar(t-1) clipped at 0.999 (training index k is the paper's t = k + 1)."""
    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    return torch.tensor([min(1 - f(k + 1) / f(k), max_beta) for k in range(T)], dtype=F64)


def zero_terminal_snr_abar(abar: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2024, Algorithm 1: shift sqrt(abar) to end at 0, scale to keep its first value."""
    r = abar.sqrt()
    return ((r - r[-1]) * r[0] / (r[0] - r[-1])) ** 2


def betas_from_abar(abar: torch.Tensor) -> torch.Tensor:
    return 1 - torch.cat([abar[:1], abar[1:] / abar[:-1]])


def bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def vlb_term_bits(x0, x_t, t, betas, x0_pred, var_out) -> torch.Tensor:
    """L_{t-1} (t >= 1, :func:`gaussian_kl_bits`) or L_0 (t = 0, :func:`decoder_nll_bits`) per example."""
    t0 = t == 0
    kl = gaussian_kl_bits(x0, x_t, t.clamp(min=1), betas, x0_pred, var_out)
    return torch.where(t0, decoder_nll_bits(x0, betas, x0_pred, var_out), kl)


def decoder_nll_bits(x0, betas, x0_pred, var_out) -> torch.Tensor:
    """L_0 = -log p(x_0 | x_1) (DDPM eq. 13) for 8-bit data in [-1, 1]: N(mu, Sigma) integrated over
    each pixel's bin of width 2/255, the edge bins extended to -inf / +inf. At t = 0 the posterior
    mean coefficients are (1, 0), so mu = x0_pred; Sigma is eq. 15 with beta-tilde_0 = 0 replaced by
    beta-tilde_1 (improved-diffusion's posterior_log_variance_clipped). A bin probability below
    1e-12 counts as 1e-12."""
    abar = torch.cumprod(1 - betas, 0)
    beta_tilde_1 = (1 - abar[0]) / (1 - abar[1]) * betas[1]
    v = (var_out + 1) / 2
    sd = torch.exp(0.5 * (v * betas[0].log() + (1 - v) * beta_tilde_1.log()))

    def cdf(z):
        return 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    upper, lower = cdf((x0 + 1 / 255 - x0_pred) / sd), cdf((x0 - 1 / 255 - x0_pred) / sd)
    p = torch.where(x0 < -0.999, upper, torch.where(x0 > 0.999, 1 - lower, upper - lower))
    return -(p.clamp(min=1e-12).log().flatten(1).mean(1)) / math.log(2)  # improved-diffusion's log(max(p, 1e-12))


def gaussian_kl_bits(x0, x_t, t, betas, x0_pred, var_out) -> torch.Tensor:
    """KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) per example, mean over dims, in bits (t >= 1).

    q: DDPM eq. 6-7, mean coef_0 x_0 + coef_t x_t, variance beta-tilde_t.
    p: the same mean at the predicted x_0 (DDPM eq. 11 written through x_0), variance
       exp(v log beta_t + (1 - v) log beta-tilde_t) (Improved DDPM eq. 15), v = (out + 1)/2 for a
       network output in [-1, 1] (improved-diffusion's model_var_values)."""
    abar = torch.cumprod(1 - betas, 0)
    assert (t >= 1).all()
    ab_t, ab_prev, beta_t = abar[t], abar[t - 1], betas[t]
    coef_0 = ab_prev.sqrt() * beta_t / (1 - ab_t)
    coef_t = (1 - beta_t).sqrt() * (1 - ab_prev) / (1 - ab_t)
    beta_tilde = (1 - ab_prev) / (1 - ab_t) * beta_t
    mu_q = bcast(coef_0, x0) * x0 + bcast(coef_t, x0) * x_t
    mu_p = bcast(coef_0, x0) * x0_pred + bcast(coef_t, x0) * x_t
    v = (var_out + 1) / 2
    log_var_p = v * bcast(beta_t.log(), x0) + (1 - v) * bcast(beta_tilde.log(), x0)
    log_var_q = bcast(beta_tilde.log(), x0)
    kl = 0.5 * (log_var_p - log_var_q + (log_var_q.exp() + (mu_q - mu_p) ** 2) / log_var_p.exp() - 1)
    return kl.flatten(1).mean(1) / math.log(2)


# ------------------------------------------------------------------ 1. EMA
def test_ema_update_is_d_ema_plus_one_minus_d_w():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3).double()
    ema = EMA(model, decay=0.9, warmup=False)
    prev = [p.detach().clone() for p in model.parameters()]
    for step in range(2):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p) * (step + 2))
        ema.update(model)
        want = [0.9 * e + 0.1 * w.detach() for e, w in zip(prev, model.parameters())]
        for got, exp in zip(ema.params, want):
            torch.testing.assert_close(got, exp, rtol=1e-12, atol=1e-12)
        prev = want


# the two EMA warm-ups, d_n at update n = 0, 1, ...: (1 + n)/(10 + n) (ema_warmup), and diffusers'
# EMAModel(use_ema_warmup=True, inv_gamma=g, power=p).get_decay, 1 - (1 + n/g)^-p (ema_power, ema_inv_gamma)
EMA_WARMUPS = {
    "warmup": ({"warmup": True}, lambda n: (1 + n) / (10 + n)),
    "power-2/3": ({"power": 2 / 3}, lambda n: 1 - (1 + n) ** (-2 / 3)),
    "power-3/4": ({"power": 0.75}, lambda n: 1 - (1 + n) ** -0.75),
    "power-3/4-inv-gamma-5": ({"power": 0.75, "inv_gamma": 5.0}, lambda n: 1 - (1 + n / 5.0) ** -0.75),
}


@pytest.mark.parametrize("rule,decay", [("warmup", 0.5), ("power-2/3", 0.9999), ("power-3/4", 0.6),
                                        ("power-3/4-inv-gamma-5", 0.9999)])
def test_ema_warmup_decay_is_min_decay_and_d_n(rule, decay):
    """d_n = min(decay, warm-up rule); the decays 0.5 and 0.6 are reached within the 12 updates."""
    torch.manual_seed(1)
    model = torch.nn.Linear(4, 2).double()
    options, d_n = EMA_WARMUPS[rule]
    ema = EMA(model, decay=decay, **options)
    expected = [p.detach().clone() for p in model.parameters()]
    for n in range(12):
        d = min(decay, d_n(n))
        assert ema.current_decay() == pytest.approx(d, rel=1e-14, abs=1e-15)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p))
        ema.update(model)
        expected = [d * e + (1 - d) * w.detach() for e, w in zip(expected, model.parameters())]
        for got, exp in zip(ema.params, expected):
            torch.testing.assert_close(got, exp, rtol=1e-12, atol=1e-12)
        if n == 0 and "power" in options:  # d_0 = 0: the first update copies the weights, as diffusers' EMAModel
            assert all(torch.equal(e, w) for e, w in zip(ema.params, model.parameters()))


@pytest.mark.parametrize("options,rule", [({"ema_warmup": True}, "warmup"),
                                         ({"ema_power": 0.75, "ema_inv_gamma": 5.0}, "power-3/4-inv-gamma-5")])
def test_trainer_ema_with_a_warmup_follows_the_closed_form(tmp_path, options, rule):
    """Trainer with ema_warmup or ema_power: after optimiser steps n = 0, 1, 2 the EMA is the
    recursion with d_n = min(ema_decay, warm-up rule) over the weights the optimiser produced."""
    tr = quiet_trainer(make_cfg(tmp_path, ema_decay=0.9, **options), random_dataset())
    expected = [p.detach().clone() for p in tr.model.parameters()]
    for n, group in enumerate(islice(tr._epoch_batches(0), 3)):
        assert tr.train_step(group) is not None
        d = min(0.9, EMA_WARMUPS[rule][1](n))
        expected = [d * e + (1 - d) * w.detach() for e, w in zip(expected, tr.model.parameters())]
        for got, exp in zip(tr.ema.params, expected):
            torch.testing.assert_close(got, exp, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ 2. label dropout
@pytest.mark.parametrize("p_uncond", [0.0, 0.1, 0.5, 1.0])
def test_label_dropout_fraction_is_binomial_p_uncond(tmp_path, p_uncond):
    """Each label is replaced by the null label (num_classes) with probability p_uncond,
    independently; the kept ones reach the network unchanged."""
    tr = quiet_trainer(make_cfg(tmp_path, conditional=True, p_uncond=p_uncond), random_dataset())
    null = 4
    seen = []

    def forward(x, t, y=None, **_):
        seen.append(y.clone())
        return torch.zeros_like(x)
    tr.forward = forward
    b, calls = 256, 8
    labels = torch.arange(b) % 4
    with torch.no_grad():
        for _ in range(calls):
            tr._micro_batch_loss(torch.zeros(b, 1, 8, 8), labels)
    y = torch.stack(seen)
    assert y.shape == (calls, b)
    dropped = y == null
    assert torch.equal(y[~dropped], labels.expand(calls, b)[~dropped])
    n, k = calls * b, int(dropped.sum())
    if p_uncond in (0.0, 1.0):
        assert k == n * p_uncond
    else:
        sd = math.sqrt(n * p_uncond * (1 - p_uncond))
        assert abs(k - n * p_uncond) < 5 * sd, (k, n * p_uncond, sd)


# ------------------------------------------------------------------ 3. loss scaling
def _fixed_net(output):
    def net(x, t, **_):
        return output
    return net


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("hybrid_lambda", [0.001, 0.05])
def test_hybrid_loss_is_mse_plus_lambda_T_gaussian_kl_bits(prediction_type, hybrid_lambda):
    """loss - mse = lambda T L_{t-1} (bits/dim), the sampled VLB term times T (Improved DDPM eq. 16;
    improved-diffusion's vb * T/1000 with lambda = 0.001); loss_type='vlb' is T L_{t-1} alone."""
    T = 1000
    betas = linear_betas(T)
    abar = torch.cumprod(1 - betas, 0)
    schedule = NoiseSchedule.linear(T)
    g = torch.Generator().manual_seed(3)
    t = torch.tensor([0, 1, 10, 500, 999])  # t = 0: the decoder NLL L_0, else the KL L_{t-1}
    x0 = (((0.5 * torch.randn(5, 3, 8, 8, generator=g, dtype=F64)).clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
    noise = torch.randn(5, 3, 8, 8, generator=g, dtype=F64)
    x0_pred = x0 + 0.005 * torch.randn(5, 3, 8, 8, generator=g, dtype=F64)  # one prediction, written as each type
    var_out = torch.tanh(torch.randn(5, 3, 8, 8, generator=g, dtype=F64))
    a, s = bcast(abar[t].sqrt(), x0), bcast((1 - abar[t]).sqrt(), x0)
    x_t = a * x0 + s * noise
    eps_pred = (x_t - a * x0_pred) / s  # DDPM eq. 4 solved for eps
    if prediction_type == "epsilon":
        target, mean_out = noise, eps_pred
    elif prediction_type == "sample":
        target, mean_out = x0, x0_pred
    else:  # v = alpha eps - sigma x0 (Salimans & Ho 2022)
        target, mean_out = a * noise - s * x0, a * eps_pred - s * x0_pred
    net = _fixed_net(torch.cat([mean_out, var_out], 1))
    mse = ((target - mean_out) ** 2).flatten(1).mean(1)
    kl = vlb_term_bits(x0, x_t, t, betas, x0_pred, var_out)
    out = training_losses(net, schedule, x0, t, noise, prediction_type=prediction_type, loss_type="hybrid",
                          learned_variance=True, hybrid_lambda=hybrid_lambda)
    torch.testing.assert_close(out.mse, mse, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out.loss - out.mse, hybrid_lambda * T * kl, rtol=1e-7, atol=1e-12)
    vlb = training_losses(net, schedule, x0, t, noise, prediction_type=prediction_type, loss_type="vlb",
                          learned_variance=True)
    torch.testing.assert_close(vlb.loss, T * kl, rtol=1e-7, atol=1e-12)


def test_min_snr_losses_of_all_prediction_types_equal_min_snr_gamma_times_x0_error():
    """One prediction written as x0, eps and v: with e0 = ||x0_pred - x0||^2 (mean over dims),
    ||eps err||^2 = SNR e0 and ||v err||^2 = (SNR + 1) e0, so min-SNR-gamma weights each to
    min(SNR, gamma) e0 (Hang et al. 2023, eq. 8)."""
    T = 1000
    abar = torch.cumprod(1 - linear_betas(T), 0)
    schedule = NoiseSchedule.linear(T)
    g = torch.Generator().manual_seed(4)
    t = torch.tensor([0, 50, 200, 600, 999])
    x0 = (0.5 * torch.randn(5, 3, 8, 8, generator=g, dtype=F64)).clamp(-1, 1)
    noise = torch.randn(5, 3, 8, 8, generator=g, dtype=F64)
    a, s = bcast(abar[t].sqrt(), x0), bcast((1 - abar[t]).sqrt(), x0)
    x_t = a * x0 + s * noise
    x0_pred = x0 + 0.3 * torch.randn(5, 3, 8, 8, generator=g, dtype=F64)
    eps_pred = (x_t - a * x0_pred) / s
    v_pred = a * eps_pred - s * x0_pred
    snr = abar[t] / (1 - abar[t])
    e0 = ((x0_pred - x0) ** 2).flatten(1).mean(1)
    gamma = 5.0
    assert (snr > gamma).any() and (snr < gamma).any()
    outputs = {"epsilon": eps_pred, "sample": x0_pred, "v_prediction": v_pred}
    plain = {"epsilon": snr * e0, "sample": e0, "v_prediction": (snr + 1) * e0}
    for kind, output in outputs.items():
        unweighted = training_losses(_fixed_net(output), schedule, x0, t, noise, prediction_type=kind).loss
        torch.testing.assert_close(unweighted, plain[kind], rtol=1e-8, atol=1e-12, msg=kind)
        weighted = training_losses(_fixed_net(output), schedule, x0, t, noise, prediction_type=kind,
                                   min_snr_gamma=gamma).loss
        torch.testing.assert_close(weighted, torch.clamp(snr, max=gamma) * e0, rtol=1e-8, atol=1e-12, msg=kind)


# ------------------------------------------------------------------ 4. numerical guards
def _nan_on(trainer, bad_calls: set):
    calls = {"n": 0}
    real = trainer.forward

    def forward(x, t, **cond):
        calls["n"] += 1
        out = real(x, t, **cond)
        return out * float("nan") if calls["n"] in bad_calls else out
    return forward


def test_nan_streak_counter_resets_after_a_good_step(tmp_path):
    """Only max_nonfinite_steps (10, docs/reliability.md) skipped steps *in a row* stop a run:
    9 NaN, 1 good, 9 NaN, 1 good (18 skipped in all) goes on; then 10 in a row stop it."""
    tr = quiet_trainer(make_cfg(tmp_path, max_steps=40), random_dataset())
    limit = tr.max_nonfinite_steps
    assert limit == 10
    pattern = ([True] * (limit - 1) + [False]) * 2  # True: NaN step
    tr.forward = _nan_on(tr, {i + 1 for i, bad in enumerate(pattern) if bad} | set(range(21, 40)))
    group = next(tr._epoch_batches(0))
    for bad in pattern:
        result = tr.train_step(group)
        assert (result is None) == bad
    assert tr.skipped_steps == 2 * (limit - 1) and tr.consecutive_skipped == 0
    for _ in range(limit - 1):
        assert tr.train_step(group) is None
    with pytest.raises(DiffkitError, match=f"{limit} steps in a row"):
        tr.train_step(group)


def test_nan_loss_never_enters_the_loss_aware_history(tmp_path):
    tr = quiet_trainer(make_cfg(tmp_path, timestep_sampler="loss-aware"), constant_dataset())
    calls = _record(tr)
    tr.forward = _nan_on(tr, {2})
    group = next(tr._epoch_batches(0))
    assert tr.train_step(group) is not None
    # the good step's 8 per-example losses, and nothing else, are in the history
    assert int(tr.timesteps.loss_counts.sum()) == 8
    x0 = tr.dataset[0][0].double()
    abar = torch.cumprod(1 - linear_betas(100), 0)
    want = sorted(closed_form_losses(calls[0], x0, abar, tr.cfg).tolist())
    got = sorted(tr.timesteps.loss_history[tr.timesteps.loss_history != 0].tolist())
    np.testing.assert_allclose(got, want, rtol=1e-4)
    history, counts = tr.timesteps.loss_history.copy(), tr.timesteps.loss_counts.copy()
    assert tr.train_step(group) is None  # NaN
    assert np.array_equal(tr.timesteps.loss_history, history) and np.array_equal(tr.timesteps.loss_counts, counts)


@pytest.mark.parametrize("where", ["model", "ema"])
def test_save_refuses_non_finite_weights_and_keeps_latest_byte_identical(tmp_path, where):
    tr = quiet_trainer(make_cfg(tmp_path, max_steps=4), random_dataset())
    tr.run(stop_at=1)
    folder = tmp_path / "ckpt"
    before = {p.name: p.read_bytes() for p in folder.glob("*.safetensors")}
    assert "latest.safetensors" in before
    assert tr.train_step(next(tr._epoch_batches(1))) is not None
    tr.step += 1
    with torch.no_grad():
        (next(tr.model.parameters()) if where == "model" else tr.ema.params[0]).view(-1)[0] = float("nan")
    with pytest.raises(DiffkitError, match="non-finite"):
        tr.save()
    assert {p.name: p.read_bytes() for p in folder.glob("*.safetensors")} == before
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ 5. the options through the Trainer
def _record(tr):
    calls = []
    real = tr.forward

    def forward(x, t, **cond):
        out = real(x, t, **cond)
        calls.append({"x_t": x.detach().clone(), "t": t.detach().clone(), "out": out.detach().clone(),
                      **{k: v.detach().clone() for k, v in cond.items()}})
        return out
    tr.forward = forward
    return calls


def closed_form_losses(call, x0, abar, cfg) -> torch.Tensor:
    """Per-example loss of one forward call, recomputed from x_t, t, the output and the known x0:
    noise = (x_t - alpha x0)/sigma (DDPM eq. 4 solved for eps); target eps / x0 / v; min-SNR
    weight; + lambda T KL bits for the hybrid loss; T KL bits alone for the vlb loss (a fixed
    variance is beta-tilde_t, or beta_t with beta-tilde_1 at t = 0)."""
    t = call["t"].round().long()
    x_t, out = call["x_t"].double(), call["out"].double()
    x0 = x0.expand_as(x_t)
    var_out = None
    if cfg.learned_variance:
        out, var_out = out.chunk(2, 1)
    a, s = bcast(abar[t].sqrt(), x_t), bcast((1 - abar[t]).sqrt(), x_t)
    noise = (x_t - a * x0) / s
    target = {"epsilon": noise, "sample": x0, "v_prediction": a * noise - s * x0}[cfg.prediction_type]
    mse = ((target - out) ** 2).flatten(1).mean(1)
    if cfg.min_snr_gamma is not None:
        snr = abar[t] / (1 - abar[t])
        clipped = torch.clamp(snr, max=cfg.min_snr_gamma)
        mse = mse * {"epsilon": clipped / snr, "sample": clipped,
                     "v_prediction": clipped / (snr + 1)}[cfg.prediction_type]
    if cfg.loss == "simple":
        return mse
    x0_pred = {"epsilon": (x_t - s * out) / a, "sample": out, "v_prediction": a * x_t - s * out}[cfg.prediction_type]
    if var_out is None:  # a fixed Sigma is eq. 15's end point: v = 0 beta-tilde_t, v = 1 beta_t (t >= 1)
        large = cfg.fixed_variance == "fixed_large"
        var_out = bcast(torch.where(t > 0, 1.0 if large else -1.0, -1.0).to(F64), x_t).expand_as(x_t)
    vlb = len(abar) * vlb_term_bits(x0, x_t, t, betas_from_abar(abar), x0_pred, var_out)
    return vlb if cfg.loss == "vlb" else mse + cfg.hybrid_lambda * vlb


OPTIONS = {
    "conditional": {"conditional": True, "p_uncond": 0.5},
    "learned_variance_hybrid": {"learned_variance": True, "loss": "hybrid", "hybrid_lambda": 0.01},
    "vlb_fixed_small_loss_aware": {"loss": "vlb", "timestep_sampler": "loss-aware"},
    "vlb_fixed_large_sample": {"loss": "vlb", "fixed_variance": "fixed_large", "prediction_type": "sample"},
    "vlb_learned_variance": {"loss": "vlb", "learned_variance": True},
    "v_prediction": {"prediction_type": "v_prediction"},
    "sample": {"prediction_type": "sample"},
    "zero_terminal_snr": {"zero_terminal_snr": True, "prediction_type": "v_prediction"},
    "min_snr_sample": {"min_snr_gamma": 5.0, "prediction_type": "sample"},
    "min_snr_epsilon": {"min_snr_gamma": 5.0},
    "offset_noise": {"offset_noise": 0.5},
    "cosine": {"schedule": "cosine"},
}


def expected_abar(cfg) -> torch.Tensor:
    betas = cosine_betas(cfg.T) if cfg.schedule == "cosine" else linear_betas(cfg.T, cfg.beta_1, cfg.beta_T)
    abar = torch.cumprod(1 - betas, 0)
    return zero_terminal_snr_abar(abar) if cfg.zero_terminal_snr else abar


@pytest.mark.parametrize("name", list(OPTIONS))
def test_two_training_steps_with_each_option_give_the_closed_form_loss(tmp_path, name):
    cfg = make_cfg(tmp_path, **OPTIONS[name])
    tr = quiet_trainer(cfg, constant_dataset())
    abar = expected_abar(cfg)
    torch.testing.assert_close(tr.schedule.alphas_cumprod, abar, rtol=1e-10, atol=1e-15)
    calls = _record(tr)
    x0 = tr.dataset[0][0].double()
    before = [p.detach().clone() for p in tr.model.parameters()]
    for step, group in enumerate(islice(tr._epoch_batches(0), 2)):
        loss = tr.train_step(group)
        assert loss is not None and math.isfinite(loss)
        assert len(calls) == step + 1
        want = closed_form_losses(calls[step], x0, abar, cfg).mean().item()
        assert loss == pytest.approx(want, rel=1e-4), (name, step)
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))
    if cfg.learned_variance:
        assert calls[0]["out"].shape[1] == 2
    if cfg.conditional:  # labels or the null label 4, and both occur (p_uncond = 0.5, 16 labels)
        y = torch.cat([c["y"] for c in calls])
        assert set(y.tolist()) <= {0, 1, 2, 3, 4} and (y == 4).any() and (y < 4).any()
    else:
        assert "y" not in calls[0]


def test_schedules_match_the_papers():
    """Cosine: abar_k = f(k + 1)/f(0) away from the clipped end (Improved DDPM eq. 17); zero
    terminal SNR: abar_{T-1} = 0 and abar_0 unchanged (Lin et al. 2024, Algorithm 1)."""
    T, s = 100, 0.008

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    cosine = NoiseSchedule.from_name("cosine", T).alphas_cumprod
    want = torch.tensor([f(k + 1) / f(0) for k in range(T - 1)], dtype=F64)
    torch.testing.assert_close(cosine[:-1], want, rtol=1e-10, atol=1e-13)
    zt = NoiseSchedule.from_name("linear", T, zero_terminal_snr=True).alphas_cumprod
    assert zt[-1].item() == 0.0
    assert zt[0].item() == pytest.approx(1 - 1e-4, rel=1e-12)


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_offset_noise_adds_a_per_channel_constant_of_variance_offset_squared(tmp_path, offset):
    """noise = eps + c delta, delta ~ N(0, 1) per (sample, channel) (Guttenberg 2023): the spatial
    mean of each channel of the noise has variance 1/HW + c^2, channels independent; the
    variance within a channel stays (HW - 1)/HW."""
    tr = quiet_trainer(make_cfg(tmp_path, offset_noise=offset), constant_dataset(channels=3))
    seen = []

    def forward(x, t, **_):
        seen.append((x.clone(), t.clone()))
        return torch.zeros_like(x)
    tr.forward = forward
    b = 1024
    with torch.no_grad():
        tr._micro_batch_loss(torch.zeros(b, 3, 8, 8), torch.zeros(b, dtype=torch.long))
    x_t, t = seen[0]
    abar = torch.cumprod(1 - linear_betas(100), 0)
    noise = x_t.double() / bcast((1 - abar[t.round().long()]).sqrt(), x_t)  # x0 = 0: x_t = sigma noise
    means = noise.mean(dim=(2, 3))  # (b, 3)
    n = means.numel()
    var = float((means ** 2).mean())
    want = 1 / 64 + offset ** 2
    assert abs(var - want) < 5 * want * math.sqrt(2 / n), (var, want)
    corr = np.corrcoef(means.T.numpy())
    assert np.abs(corr[np.triu_indices(3, 1)]).max() < 5 / math.sqrt(b)
    within = float((noise - means[..., None, None]).pow(2).mean())
    assert abs(within - 63 / 64) < 0.05


def test_grad_accum_2_of_batch_b_equals_grad_accum_1_of_batch_2b(tmp_path, monkeypatch):
    """With the same images, timesteps and noise per image, two micro-batches of b whose losses
    are averaged give the gradient (hence the AdamW step, the EMA and the reported loss) of one
    batch of 2b: mean over 2b = mean of the two means over b."""
    g = torch.Generator().manual_seed(7)
    n_images = 32
    t_stream = torch.randint(0, 100, (n_images,), generator=g)
    noise_stream = torch.randn(n_images, 1, 8, 8, generator=g)
    real_randn = torch.randn
    states = {}

    def fake_randn(*args, generator=None, **kwargs):
        if generator is not None and id(generator) in states:
            st = states[id(generator)]
            shape = tuple(args[0]) if len(args) == 1 else tuple(args)
            out = noise_stream[st["noise"]:st["noise"] + shape[0]].clone()
            assert out.shape == shape
            st["noise"] += shape[0]
            return out
        return real_randn(*args, generator=generator, **kwargs)
    monkeypatch.setattr(torch, "randn", fake_randn)

    runs = {}
    for name, batch, accum in (("accum", 4, 2), ("big", 8, 1)):
        tr = quiet_trainer(make_cfg(tmp_path / name, batch_size=batch, grad_accum=accum, max_steps=2),
                           random_dataset(n=16))
        st = states[id(tr.generator)] = {"noise": 0, "t": 0}

        def sample(b, generator=None, st=st):
            t = t_stream[st["t"]:st["t"] + b].clone()
            st["t"] += b
            return t, torch.ones(b)
        tr.timesteps.sample = sample
        calls = _record(tr)
        grads = []
        real_step = tr.optimizer.step

        def step(*a, real_step=real_step, grads=grads, tr=tr, **k):
            grads.append([p.grad.clone() for p in tr.model.parameters()])
            return real_step(*a, **k)
        tr.optimizer.step = step
        losses = [tr.train_step(group) for group in islice(tr._epoch_batches(0), 2)]
        runs[name] = dict(tr=tr, calls=calls, grads=grads, losses=losses)

    a, b = runs["accum"], runs["big"]
    assert len(a["calls"]) == 4 and len(b["calls"]) == 2 and len(a["grads"]) == len(b["grads"]) == 2
    for k in range(2):  # the test's premise: the same inputs, in the same order
        torch.testing.assert_close(torch.cat([a["calls"][2 * k]["x_t"], a["calls"][2 * k + 1]["x_t"]]),
                                   b["calls"][k]["x_t"], rtol=0, atol=0)
        assert a["losses"][k] == pytest.approx(b["losses"][k], rel=1e-6)
        for ga, gb in zip(a["grads"][k], b["grads"][k]):
            torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-7)
    for pa, pb in zip(a["tr"].model.parameters(), b["tr"].model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5)
    for ea, eb in zip(a["tr"].ema.params, b["tr"].ema.params):
        torch.testing.assert_close(ea, eb, rtol=1e-4, atol=1e-5)
