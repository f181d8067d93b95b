"""Input perturbation, P2 weighting and the power EMA warm-up, each against its paper's formula
computed here (never by calling diffkit's helpers for the expected value):

* Input perturbation (Ning et al. 2023, Alg. 1; diffusers' train_text_to_image.py
  ``--input_perturbation``): x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) (eps + gamma xi), xi ~ N(0, I)
  drawn afresh, the target made from eps alone.
* P2 weighting (Choi et al. 2022, eq. 8): the eps loss times 1 / (k + SNR(t))^gamma, SNR(t) =
  abar_t / (1 - abar_t); in the hybrid loss the L_vlb term is not weighted (P2's guided-diffusion code).
* EMA warm-up of diffusers' EMAModel(use_ema_warmup=True): d_n = min(decay, 1 - (1 + n/inv_gamma)^-power)
  at update n = 0, 1, ...; the update count survives an exact resume.
"""
from __future__ import annotations

import math
from itertools import islice

import pytest
import torch

from diffkit.config import TrainConfig
from diffkit.losses import training_losses
from diffkit.schedule import NoiseSchedule
from diffkit.training import EMA, Trainer
from test_config import one_line_error
from test_training_rules import (bcast, closed_form_losses, constant_dataset, linear_betas, make_cfg, quiet_trainer,
                                 random_dataset, vlb_term_bits)

F64 = torch.float64
T = 1000


def _abar() -> torch.Tensor:
    return torch.cumprod(1 - linear_betas(T), 0)


def _batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    t = torch.tensor([0, 3, 40, 250, 600, 999])
    x0 = (((0.5 * torch.randn(6, 2, 4, 4, generator=g, dtype=F64)).clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
    eps = torch.randn(6, 2, 4, 4, generator=g, dtype=F64)
    xi = torch.randn(6, 2, 4, 4, generator=g, dtype=F64)
    return g, t, x0, eps, xi


def _net(var_out=None):
    """A fixed, non-trivial function of x_t (so a wrong x_t changes the loss), with an optional
    variance half."""
    def net(x, t, **_):
        out = 0.7 * x + 0.1 * x ** 2 - 0.05
        return out if var_out is None else torch.cat([out, var_out], 1)
    return net


@pytest.fixture
def no_loss_curve(monkeypatch):
    """Trainer.run without its loss-curve PNG (matplotlib's import and layout: most of a tiny run's time)."""
    import diffkit.training as training
    monkeypatch.setattr(training, "plot_loss_curve", lambda *_: None)


# ------------------------------------------------------------------ 1. input perturbation
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_input_perturbation_makes_x_t_from_eps_plus_gamma_xi_and_keeps_the_target(prediction_type):
    gamma = 0.1
    _, t, x0, eps, xi = _batch(1)
    abar = _abar()
    a, s = bcast(abar[t].sqrt(), x0), bcast((1 - abar[t]).sqrt(), x0)
    x_t = a * x0 + s * (eps + gamma * xi)  # Alg. 1 of Ning et al. 2023
    out = 0.7 * x_t + 0.1 * x_t ** 2 - 0.05
    target = {"epsilon": eps, "sample": x0, "v_prediction": a * eps - s * x0}[prediction_type]
    want = ((target - out) ** 2).flatten(1).mean(1)
    got = training_losses(_net(), NoiseSchedule.linear(T), x0, t, eps, prediction_type=prediction_type,
                          input_noise=eps + gamma * xi)
    torch.testing.assert_close(got.loss, want, rtol=1e-10, atol=1e-12)
    # off (no input_noise) is DDPM's x_t = a x0 + s eps, bit for bit the same as input_noise = eps
    plain = training_losses(_net(), NoiseSchedule.linear(T), x0, t, eps, prediction_type=prediction_type)
    same = training_losses(_net(), NoiseSchedule.linear(T), x0, t, eps, prediction_type=prediction_type,
                           input_noise=eps)
    assert torch.equal(plain.loss, same.loss)
    assert not torch.allclose(plain.loss, got.loss)


def test_input_perturbation_with_the_hybrid_loss_puts_the_perturbed_x_t_in_the_vlb_term():
    """DDPM-IP's code (guided-diffusion) makes the one x_t from the perturbed noise for both terms:
    the KL is that of q(x_{t-1} | x_t, x0) at the perturbed x_t; the mse target stays eps."""
    gamma, lam = 0.15, 0.01
    g, t, x0, eps, xi = _batch(2)
    var_out = torch.tanh(torch.randn(6, 2, 4, 4, generator=g, dtype=F64))
    abar = _abar()
    a, s = bcast(abar[t].sqrt(), x0), bcast((1 - abar[t]).sqrt(), x0)
    x_t = a * x0 + s * (eps + gamma * xi)
    out = 0.7 * x_t + 0.1 * x_t ** 2 - 0.05
    mse = ((eps - out) ** 2).flatten(1).mean(1)
    kl = vlb_term_bits(x0, x_t, t, linear_betas(T), (x_t - s * out) / a, var_out)
    got = training_losses(_net(var_out=var_out), NoiseSchedule.linear(T), x0, t, eps, loss_type="hybrid",
                          learned_variance=True, hybrid_lambda=lam, input_noise=eps + gamma * xi)
    torch.testing.assert_close(got.mse, mse, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.loss, mse + lam * T * kl, rtol=1e-7, atol=1e-10)


def _capture_losses(monkeypatch):
    """Record what the Trainer hands to training_losses (noise, input_noise) and what the network sees."""
    import diffkit.training as training
    seen = []
    real = training.training_losses

    def spy(net, schedule, x0, t, noise, **kw):
        seen.append({"x0": x0.clone(), "t": t.clone(), "noise": noise.clone(), "input_noise": kw["input_noise"]})
        return real(net, schedule, x0, t, noise, **kw)
    monkeypatch.setattr(training, "training_losses", spy)
    return seen


@pytest.mark.parametrize("gamma", [0.0, 0.1])
def test_trainer_draws_a_fresh_standard_normal_xi_scaled_by_gamma(tmp_path, monkeypatch, gamma):
    """input_noise - noise = gamma xi with xi ~ N(0, I), independent of eps and of the offset noise;
    the network sees a x0 + s (noise + gamma xi); gamma = 0 hands no input_noise at all."""
    tr = quiet_trainer(make_cfg(tmp_path, input_perturbation=gamma, offset_noise=0.2), constant_dataset())
    seen = _capture_losses(monkeypatch)
    x_seen = []
    real_forward = tr.forward
    tr.forward = lambda x, t, **c: (x_seen.append(x.detach().clone()), real_forward(x, t, **c))[1]
    b = 512
    images = torch.rand(b, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        tr._micro_batch_loss(images, torch.zeros(b, dtype=torch.long))
    call = seen[0]
    if gamma == 0:
        assert call["input_noise"] is None
        return
    xi = ((call["input_noise"] - call["noise"]) / gamma).double()
    n = xi.numel()
    assert abs(float(xi.mean())) < 5 / math.sqrt(n)
    assert abs(float(xi.var()) - 1) < 5 * math.sqrt(2 / n)
    assert abs(float(torch.corrcoef(torch.stack([xi.flatten(), call["noise"].double().flatten()]))[0, 1])) \
        < 5 / math.sqrt(n)
    abar = _abar_of(tr)
    t = call["t"].long()
    a, s = bcast(abar[t].sqrt(), images), bcast((1 - abar[t]).sqrt(), images)
    want = a * call["x0"].double() + s * call["input_noise"].double()
    torch.testing.assert_close(x_seen[0].double(), want, rtol=1e-5, atol=1e-6)


def _abar_of(tr) -> torch.Tensor:
    return torch.cumprod(1 - linear_betas(tr.cfg.T, tr.cfg.beta_1, tr.cfg.beta_T), 0)


# ------------------------------------------------------------------ 2. P2 weighting
@pytest.mark.parametrize("p2_gamma,p2_k", [(0.5, 1.0), (1.0, 1.0), (1.0, 2.5)])
def test_p2_weights_the_eps_loss_by_one_over_k_plus_snr_to_the_gamma(p2_gamma, p2_k):
    _, t, x0, eps, _ = _batch(3)
    abar = _abar()
    a, s = bcast(abar[t].sqrt(), x0), bcast((1 - abar[t]).sqrt(), x0)
    out = 0.7 * (a * x0 + s * eps) + 0.1 * (a * x0 + s * eps) ** 2 - 0.05
    snr = abar[t] / (1 - abar[t])
    want = ((eps - out) ** 2).flatten(1).mean(1) / (p2_k + snr) ** p2_gamma  # Choi et al. 2022, eq. 8
    got = training_losses(_net(), NoiseSchedule.linear(T), x0, t, eps, p2_gamma=p2_gamma, p2_k=p2_k)
    torch.testing.assert_close(got.loss, want, rtol=1e-9, atol=1e-14)


def test_p2_in_the_hybrid_loss_weights_only_l_simple():
    p2_gamma, lam = 1.0, 0.001
    g, t, x0, eps, _ = _batch(4)
    var_out = torch.tanh(torch.randn(6, 2, 4, 4, generator=g, dtype=F64))
    abar = _abar()
    a, s = bcast(abar[t].sqrt(), x0), bcast((1 - abar[t]).sqrt(), x0)
    x_t = a * x0 + s * eps
    out = 0.7 * x_t + 0.1 * x_t ** 2 - 0.05
    snr = abar[t] / (1 - abar[t])
    weighted = ((eps - out) ** 2).flatten(1).mean(1) / (1 + snr) ** p2_gamma
    kl = vlb_term_bits(x0, x_t, t, linear_betas(T), (x_t - s * out) / a, var_out)
    got = training_losses(_net(var_out=var_out), NoiseSchedule.linear(T), x0, t, eps, loss_type="hybrid",
                          learned_variance=True, hybrid_lambda=lam, p2_gamma=p2_gamma)
    torch.testing.assert_close(got.loss, weighted + lam * T * kl, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("options", [{"p2_gamma": 1.0}, {"p2_gamma": 0.5, "p2_k": 2.0},
                                     {"p2_gamma": 1.0, "learned_variance": True, "loss": "hybrid"}])
def test_two_trainer_steps_with_p2_give_the_closed_form_loss(tmp_path, options):
    from test_training_rules import _record
    cfg = make_cfg(tmp_path, **options)
    tr = quiet_trainer(cfg, constant_dataset())
    calls = _record(tr)
    x0 = tr.dataset[0][0].double()
    abar = _abar_of(tr)
    plain_cfg = make_cfg(tmp_path / "plain", **{k: v for k, v in options.items() if not k.startswith("p2")})
    for step, group in enumerate(islice(tr._epoch_batches(0), 2)):
        loss = tr.train_step(group)
        call = calls[step]
        t = call["t"].round().long()
        snr = abar[t] / (1 - abar[t])
        x_t, out = call["x_t"].double(), call["out"].double()
        eps_out = out.chunk(2, 1)[0] if cfg.learned_variance else out
        a, s = bcast(abar[t].sqrt(), x_t), bcast((1 - abar[t]).sqrt(), x_t)
        mse = (((x_t - a * x0) / s - eps_out) ** 2).flatten(1).mean(1)
        unweighted = closed_form_losses(call, x0, abar, plain_cfg)  # mse (+ lambda T kl)
        want = unweighted - mse + mse / (cfg.p2_k + snr) ** cfg.p2_gamma
        assert loss == pytest.approx(want.mean().item(), rel=1e-4), step


# ------------------------------------------------------------------ 3. EMA power warm-up
# d_n itself, update by update and through the Trainer: test_training_rules.py's EMA warm-up tests
@pytest.mark.parametrize("power,updates", [(2 / 3, 31_623), (3 / 4, 10_000)])
def test_ema_power_warmup_reaches_the_documented_0_999(power, updates):
    """Power 2/3 reaches 0.999 at about 31.6K updates, 3/4 at 10K (diffusers' EMAModel docstring)."""
    ema = EMA(torch.nn.Linear(1, 1), decay=0.9999, power=power)
    ema.updates = updates
    assert ema.current_decay() == pytest.approx(0.999, abs=1e-6)


# ------------------------------------------------------------------ 4. resume, checkpoints, off = today
@pytest.mark.parametrize("options", [{"ema_warmup": True},
                                     {"ema_power": 0.75, "input_perturbation": 0.1, "p2_gamma": 1.0}])
def test_resume_with_the_options_equals_uninterrupted_bitwise(tmp_path, options, assert_same_training_state,
                                                              no_loss_curve):
    """Stop at step 3 of 4 and resume: weights, EMA (its decay depends on the update count, saved
    as ema_updates) and optimiser state equal an uninterrupted run's; the config travels along."""
    from diffkit import checkpoint as ckpt
    over = {"max_steps": 4, "deterministic": True, "channel": 8, "attn": [], **options}
    quiet_trainer(make_cfg(tmp_path / "a", **over), random_dataset(n=24)).run()
    quiet_trainer(make_cfg(tmp_path / "b", **over), random_dataset(n=24)).run(stop_at=3)
    latest = tmp_path / "b" / "ckpt" / "latest.safetensors"
    _, meta = ckpt.load_checkpoint(latest)
    assert meta["ema_updates"] == 3 and all(meta["config"][k] == v for k, v in options.items())
    quiet_trainer(make_cfg(tmp_path / "b", training_load_weight=str(latest), **over), random_dataset(n=24)).run()
    assert_same_training_state(tmp_path / "a" / "ckpt" / "latest.safetensors", latest, 4)


def test_options_off_are_the_defaults_and_recorded():
    cfg = TrainConfig()
    assert (cfg.input_perturbation, cfg.p2_gamma, cfg.p2_k, cfg.ema_power, cfg.ema_inv_gamma) == (0.0, None, 1.0,
                                                                                                 None, 1.0)
    on = TrainConfig.from_dict({"input_perturbation": 0.1, "p2_gamma": 0.5, "ema_power": 2 / 3,
                                "ema_inv_gamma": 1.0})
    assert TrainConfig.from_dict(on.to_dict()) == on


# ------------------------------------------------------------------ 5. validation
@pytest.mark.parametrize("field,value,needles", [
    ("input_perturbation", -0.1, ["input_perturbation=-0.1", "[0.0, 1.0]"]),
    ("input_perturbation", 1.5, ["input_perturbation=1.5", "[0.0, 1.0]"]),
    ("p2_gamma", 0.0, ["p2_gamma=0.0", "(0.0, inf)"]),
    ("p2_k", 0.0, ["p2_k=0.0", "(0.0, inf)"]),
    ("ema_power", -1.0, ["ema_power=-1.0", "(0.0, inf)"]),
    ("ema_inv_gamma", 0.0, ["ema_inv_gamma=0.0", "(0.0, inf)"]),
    ("p2_gamma", "x", ["p2_gamma='x'"]),
])
def test_bad_values_are_one_line_errors_naming_value_and_range(field, value, needles):
    one_line_error(lambda: TrainConfig.from_dict({field: value}), *needles)


@pytest.mark.parametrize("fields,needles", [
    ({"p2_gamma": 1.0, "min_snr_gamma": 5.0}, ["p2_gamma=1.0", "min_snr_gamma=5.0", "exclude"]),
    ({"p2_gamma": 1.0, "loss": "vlb"}, ["p2_gamma=1.0", "loss='vlb'"]),
    ({"p2_gamma": 1.0, "prediction_type": "v_prediction"}, ["p2_gamma=1.0", "'v_prediction'", "epsilon"]),
    ({"p2_k": 2.0}, ["p2_k=2.0", "p2_gamma"]),
    ({"ema_power": 0.75, "ema_warmup": True}, ["ema_power=0.75", "ema_warmup=True"]),
    ({"ema_inv_gamma": 3.0}, ["ema_inv_gamma=3.0", "ema_power"]),
    ({"objective": "consistency-training", "input_perturbation": 0.1}, ["input_perturbation=0.1", "objective"]),
    ({"objective": "consistency-training", "p2_gamma": 1.0}, ["p2_gamma=1.0", "objective"]),
])
def test_cross_field_rules_are_one_line_errors(fields, needles):
    one_line_error(lambda: TrainConfig.from_dict(fields), *needles)


@pytest.mark.parametrize("ema,fields", [({"warmup": True, "power": 0.75}, {"ema_warmup": True, "ema_power": 0.75}),
                                       ({"inv_gamma": 3.0}, {"ema_inv_gamma": 3.0})])
def test_ema_refuses_what_the_config_refuses_in_the_same_words(ema, fields):
    message = one_line_error(lambda: EMA(torch.nn.Linear(1, 1), 0.9, **ema))
    assert message == one_line_error(lambda: TrainConfig.from_dict(fields))


def test_diffusers_ema_argument_names_point_to_the_fields():
    one_line_error(lambda: TrainConfig.from_dict({"use_ema_warmup": True}), "'ema_power' or 'ema_warmup'")
    one_line_error(lambda: TrainConfig.from_dict({"power": 0.75}), "did you mean 'ema_power'")
    one_line_error(lambda: TrainConfig.from_dict({"inv_gamma": 1.0}), "did you mean 'ema_inv_gamma'")
    one_line_error(lambda: TrainConfig.from_dict({"input_pertub": 0.1}), "did you mean 'input_perturbation'")


def test_training_losses_checks_p2_itself():
    x = torch.zeros(2, 1, 4, 4)
    t = torch.tensor([0, 5])
    schedule = NoiseSchedule.linear(10)
    one_line_error(lambda: training_losses(_net(), schedule, x, t, x, p2_gamma=1.0, min_snr_gamma=5.0),
                   "p2_gamma=1.0", "min_snr_gamma=5.0")
    one_line_error(lambda: training_losses(_net(), schedule, x, t, x, p2_gamma=-1.0), "p2_gamma=-1.0")
    one_line_error(lambda: training_losses(_net(), schedule, x, t, x, p2_gamma=1.0, prediction_type="sample"),
                   "p2_gamma=1.0", "'sample'")


@pytest.mark.parametrize("weighting", [{"min_snr_gamma": 5.0}, {"p2_gamma": 1.0}])
def test_a_weighting_with_the_vlb_loss_is_refused_in_the_callers_own_words(weighting):
    """TrainConfig's field is loss, training_losses' parameter loss_type: each message names its own."""
    (name, value), = weighting.items()
    x = torch.zeros(2, 1, 4, 4)
    message = one_line_error(lambda: training_losses(_net(), NoiseSchedule.linear(10), x, torch.tensor([0, 5]), x,
                                                     loss_type="vlb", **weighting),
                             f"{name}={value}", "loss_type='vlb'", "use loss_type='simple' or 'hybrid'")
    assert " loss=" not in message
    one_line_error(lambda: TrainConfig.from_dict({"loss": "vlb", **weighting}), f"{name}={value}",
                   "which loss='vlb'", "use loss='simple' or 'hybrid'")


def test_a_distillation_of_a_teacher_trained_with_the_options_resets_them():
    """diffkit distill takes the teacher's config: the diffusion-only options go back to off, and
    the EMA warm-up it turns on is the (1 + n)/(10 + n) one (ema_power would contradict it)."""
    from diffkit.commands.distill import DISTILL_DEFAULTS
    teacher = TrainConfig.from_dict({"input_perturbation": 0.1, "p2_gamma": 1.0, "p2_k": 2.0, "ema_power": 0.75,
                                     "ema_inv_gamma": 3.0})
    cfg = TrainConfig.from_dict({**teacher.to_dict(), **DISTILL_DEFAULTS, "teacher": "teacher.safetensors"})
    assert (cfg.input_perturbation, cfg.p2_gamma, cfg.ema_power, cfg.ema_warmup) == (0.0, None, None, True)


@pytest.mark.parametrize("sets,warmup,power", [([], True, None), (["ema_power=0.75"], False, 0.75),
                                               (["ema_power=0.75", "ema_warmup=false"], False, 0.75),
                                               (["ema_power=none"], True, None)])
def test_distill_with_ema_power_turns_its_default_ema_warmup_off(tmp_path, monkeypatch, sets, warmup, power):
    """diffkit distill --set ema_power=P takes the power warm-up in place of distill's ema_warmup
    (which the user did not set); asking for both is the config's one-line error."""
    from diffkit.cli import build_parser
    from diffkit.commands import distill
    monkeypatch.setattr(distill, "teacher_meta", lambda path: {"config": TrainConfig().to_dict()})

    def config(*pairs):
        args = build_parser().parse_args(["distill", "--teacher", str(tmp_path / "t.safetensors"), "--out",
                                          str(tmp_path / "cd"), *[f"--set={pair}" for pair in pairs]])
        return distill.config_from_args(args)
    cfg = config(*sets)
    assert (cfg.ema_warmup, cfg.ema_power, cfg.objective) == (warmup, power, "consistency-distillation")
    one_line_error(lambda: config(*sets, "ema_power=0.75", "ema_warmup=true"), "ema_power=0.75",
                   "ema_warmup=True")


def test_cli_sets_the_options_and_refuses_bad_ones_before_any_folder(tmp_path, capsys, no_loss_curve):
    from diffkit import checkpoint as ckpt
    from diffkit.cli import main
    tiny = [f"--set={kv}" for kv in ("img_size=8", "channel=16", "channel_mult=[1,2]", "attn=[]", "num_res_blocks=1",
                                     "batch_size=8", "T=50", "sample_steps=3")]
    code = main(["train", "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress", "--no-sample",
                 "--device", "cpu", *tiny, "--set", "input_perturbation=0.1", "--set", "p2_gamma=1",
                 "--set", "ema_power=0.75"])
    assert code == 0, capsys.readouterr().err
    _, meta = ckpt.load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.safetensors")
    assert (meta["config"]["input_perturbation"], meta["config"]["p2_gamma"], meta["config"]["ema_power"]) == \
        (0.1, 1.0, 0.75)
    capsys.readouterr()
    for bad, needle in (("input_perturbation=2", "input_perturbation=2.0"), ("p2_gamma=0", "p2_gamma=0.0"),
                        ("ema_power=abc", "ema_power='abc'")):
        code = main(["train", "--out", str(tmp_path / "bad"), "--steps", "1", *tiny, "--set", bad])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
        assert not (tmp_path / "bad").exists()


def test_a_resume_may_change_the_options_and_names_each_change(tmp_path, no_loss_curve):
    """The resume policy (training.RESUME_MAY_CHANGE, docs/reliability.md): the options weight the loss, perturb
    its inputs or average the weights, like min_snr_gamma and dropout, so a resume may change them (the schedule,
    prediction type and network it refuses). The log names each change, the new values are used (the weights
    differ from a resume without the change) and the next checkpoint's config records them."""
    import shutil

    from diffkit import checkpoint as ckpt
    over = {"max_steps": 2, "deterministic": True, "channel": 8, "attn": []}
    quiet_trainer(make_cfg(tmp_path / "a", **over), random_dataset(n=24)).run(stop_at=1)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    changes = {"p2_gamma": 1.0, "p2_k": 2.0, "input_perturbation": 0.1, "ema_power": 0.75, "ema_inv_gamma": 2.0,
               "min_snr_gamma": None}
    lines = {}
    for run, extra in (("a", {}), ("b", changes)):
        latest = tmp_path / run / "ckpt" / "latest.safetensors"
        cfg = make_cfg(tmp_path / run, training_load_weight=str(latest), **over, **extra)
        lines[run] = []
        Trainer(cfg, random_dataset(n=24), progress=False, log=lines[run].append).run()
    resumed = [line for line in lines["b"] if line.startswith("resumed from")]
    assert resumed == [f"resumed from {tmp_path / 'b' / 'ckpt' / 'latest.safetensors'} at step 1; changed: p2_gamma "
                       f"None -> 1.0, p2_k 1.0 -> 2.0, input_perturbation 0.0 -> 0.1, ema_power None -> 0.75, "
                       f"ema_inv_gamma 1.0 -> 2.0"], lines["b"]
    assert [line for line in lines["a"] if line.startswith("resumed from")][0].endswith(" at step 1")  # no change
    (a_tensors, _), (b_tensors, b_meta) = (ckpt.load_checkpoint(tmp_path / run / "ckpt" / "latest.safetensors")
                                           for run in "ab")
    assert b_meta["step"] == 2 and all(b_meta["config"][k] == v for k, v in changes.items())
    for part in ("model.", "ema."):  # the loss options moved the weights, the EMA power their average
        assert any(not torch.equal(v, b_tensors[k]) for k, v in a_tensors.items() if k.startswith(part)), part
