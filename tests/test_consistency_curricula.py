"""Consistency-training curricula (CM App. C, iCT Sec. 3.4/3.5) and CM's EMA target network in the
Trainer (diffkit.consistency_curricula): closed forms by hand, the authors' schedule function
transcribed, the erf formula, exact resume. Tiny models, seconds on the CPU."""
import math

import numpy as np
import pytest
import torch

from diffkit import DiffkitError
from diffkit import checkpoint as ckpt
from diffkit.config import TrainConfig
from diffkit.consistency import consistency_loss, distillation_grid
from diffkit.consistency_curricula import (Curriculum, CurriculumStep, cm_points, cm_target_ema, curriculum_grid,
                                           ict_points, ict_stage_steps, ict_weights, lognormal_pair_probabilities)
from diffkit.loading import load_denoiser
from diffkit.schedule import NoiseSchedule
from diffkit.training import Trainer

from test_consistency_training import batch_loss_and_uniform_draws
from test_training import TINY, make_cfg, tiny_dataset


# ----------------------------------------------------------------------------- the schedule functions
@pytest.mark.parametrize("k,points", [
    (0, 2),      # sqrt(0 + 4) - 1 = 1 -> ceil 1 -> N = 2 = s0
    (1, 6),      # sqrt(1/1000 * (151^2 - 4) + 4) = sqrt(26.797) = 5.1766; - 1 -> ceil 5 -> 6
    (500, 107),  # sqrt(0.5 * 22797 + 4) = sqrt(11402.5) = 106.783; - 1 -> ceil 106 -> 107
    (1000, 151),  # sqrt(151^2) - 1 = 150 -> 151 = s1 + 1
])
def test_cm_points_by_hand(k, points):
    """CM App. C: N(k) = ceil(sqrt(k/K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1, CIFAR-10 CT's s0 = 2,
    s1 = 150, K = 1000 here."""
    assert cm_points(k, 1000, 2, 150) == points


def test_cm_points_equal_the_authors_schedule_function():
    """The scale part of openai/consistency_models' create_ema_and_scales_fn ("progressive"),
    transcribed in numpy: ceil(sqrt(...) - 1), at least 1, plus 1; every k of two runs."""
    def authors(step, total, start, end):
        s = np.ceil(np.sqrt((step / total) * ((end + 1) ** 2 - start ** 2) + start ** 2) - 1).astype(np.int32)
        return int(np.maximum(s, 1) + 1)
    for K, s0, s1 in ((1000, 2, 150), (777, 1, 40), (50, 10, 1280)):
        assert [cm_points(k, K, s0, s1) for k in range(K + 1)] == [authors(k, K, s0, s1) for k in range(K + 1)]


def test_cm_target_ema_by_hand():
    """CM App. C: mu(k) = exp(s0 log mu0 / N(k)): mu0 at k = 0 (N = s0), then mu0^(s0 / N(k))."""
    assert cm_target_ema(0, 1000, 2, 150, 0.9) == pytest.approx(0.9, abs=1e-15)
    assert cm_target_ema(1, 1000, 2, 150, 0.9) == pytest.approx(0.9 ** (2 / 6), abs=1e-15)  # 0.965489...
    assert cm_target_ema(500, 1000, 2, 150, 0.9) == pytest.approx(0.998032, abs=1e-6)  # 0.9^(2/107)
    assert cm_target_ema(1000, 1000, 2, 150, 0.9) == pytest.approx(0.998605, abs=1e-6)  # 0.9^(2/151)
    assert cm_target_ema(10, 1000, 2, 150, 0.0) == 0.0  # mu0 = 0: iCT's stopgrad target


@pytest.mark.parametrize("k,points", [(0, 11), (99, 11), (100, 21), (250, 41), (350, 81), (699, 641),
                                      (700, 1281), (799, 1281), (800, 1281)])
def test_ict_points_by_hand(k, points):
    """iCT Sec. 3.4: N(k) = min(s0 2^floor(k/K'), s1) + 1 with K' = floor(K / (log2 floor(s1/s0) + 1));
    s0 = 10, s1 = 1280, K = 800: K' = floor(800 / 8) = 100."""
    assert ict_stage_steps(800, 10, 1280) == 100
    assert ict_points(k, 800, 10, 1280) == points


def test_ict_stage_steps_for_a_ratio_that_is_no_power_of_two():
    # floor(150 / 10) = 15, log2 15 = 3.90689; 1000 / 4.90689 = 203.79 -> 203; a short run: at least 1
    assert ict_stage_steps(1000, 10, 150) == 203
    assert ict_stage_steps(5, 10, 1280) == 1


def _karras_grid_by_hand(M, T=1000):
    """EDM eq. 5 with rho = 7 between sigma(0) and sigma(T-1) of DDPM's linear schedule (numpy, from
    the betas), each sigma on the timestep nearest in log sigma, then pushed up / down one step at a
    time where two land on one timestep (a plain loop)."""
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, T, dtype=np.float64))
    log_s = 0.5 * np.log((1 - abar) / abar)
    lo, hi = np.exp(log_s[0]) ** (1 / 7), np.exp(log_s[-1]) ** (1 / 7)
    t = [int(np.argmin(np.abs(log_s - 7 * np.log(lo + i / M * (hi - lo))))) for i in range(M + 1)]
    for n in range(1, M + 1):
        t[n] = max(t[n], t[n - 1] + 1)
    t[M] = T - 1
    for n in range(M - 1, -1, -1):
        t[n] = min(t[n], t[n + 1] - 1)
    return t


@pytest.mark.parametrize("M", [1, 2, 10, 20, 150, 640, 998, 999])
def test_curriculum_grid_is_edms_spacing_on_the_training_timesteps(M):
    """CM / iCT's N = M + 1 points, EDM's rho = 7 sigmas, on the nearest discrete timesteps: exactly
    M increasing intervals from 0 to T - 1 (M = T - 1: every step)."""
    g = curriculum_grid(NoiseSchedule.linear(), M)
    assert g.tolist() == _karras_grid_by_hand(M)
    assert len(g) == M + 1 and g[0] == 0 and g[-1] == 999 and (g[1:] > g[:-1]).all()
    if M == 999:
        assert g.tolist() == list(range(1000))
    if M == 20:  # dense at low noise, as EDM's spacing (LCM's uniform grid: 0, 49, 99, ...)
        assert g[:4].tolist() == [0, 4, 15, 37]


def test_curriculum_grid_refuses_more_intervals_than_timesteps():
    with pytest.raises(DiffkitError, match="1000 intervals does not fit T=1000") as err:
        curriculum_grid(NoiseSchedule.linear(), 1000)
    assert "\n" not in str(err.value)
    zt = NoiseSchedule.from_name("linear", 1000, zero_terminal_snr=True)  # sigma = inf at T - 1
    g = curriculum_grid(zt, 30)
    assert g[-1] == 999 and (g[1:] > g[:-1]).all() and len(g) == 31


# ----------------------------------------------------------------------------- lognormal pairs and weights
def _vp_sigmas(times):
    """sigma_t = sqrt((1 - abar_t) / abar_t) of DDPM's linear schedule, from the betas by hand."""
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))
    return [math.sqrt((1 - abar[int(t)]) / abar[int(t)]) for t in times]


def test_lognormal_pair_probabilities_equal_the_erf_formula():
    """iCT Sec. 3.5: p(sigma_i) proportional to erf((log sigma_{i+1} - P_mean) / (sqrt 2 P_std)) -
    erf((log sigma_i - P_mean) / (sqrt 2 P_std)), P_mean = -1.1, P_std = 2, on the VP sigmas of a grid."""
    grid = curriculum_grid(NoiseSchedule.linear(), 20)
    sigmas = _vp_sigmas(grid.tolist())
    e = [math.erf((math.log(s) + 1.1) / (math.sqrt(2) * 2.0)) for s in sigmas]
    mass = [b - a for a, b in zip(e[:-1], e[1:])]
    want = torch.tensor([m / sum(mass) for m in mass], dtype=torch.float64)
    got = lognormal_pair_probabilities(NoiseSchedule.linear().karras_sigma(grid))
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    # the mode: the pair holding exp(P_mean) = 0.33 has more mass than the pairs at either end
    assert got.argmax() not in (0, len(got) - 1)


def test_ict_weights_by_hand():
    grid = curriculum_grid(NoiseSchedule.linear(), 10)
    sigmas = _vp_sigmas(grid.tolist())
    want = torch.tensor([1 / (b - a) for a, b in zip(sigmas[:-1], sigmas[1:])], dtype=torch.float64)
    torch.testing.assert_close(ict_weights(NoiseSchedule.linear().karras_sigma(grid)), want, rtol=1e-9, atol=0)


def test_drawn_pairs_follow_the_lognormal_probabilities():
    """200 000 draws of the ict plan: each pair's frequency within 5 standard errors of p(n), and the
    weight handed out is lambda of the pair drawn."""
    plan = Curriculum("ict", NoiseSchedule.linear(), 800).at(150)  # K' = 100: N = 21, 20 intervals
    assert len(plan.grid) == 21 and plan.mu == 0.0
    n, w = plan.draw(200_000, torch.Generator().manual_seed(0))
    freq = torch.bincount(n, minlength=20).double() / len(n)
    p = plan.probabilities
    se = torch.sqrt(p * (1 - p) / len(n))
    assert ((freq - p).abs() <= 5 * se + 1e-12).all(), (freq, p)
    torch.testing.assert_close(w, plan.weights[n].float())


def test_the_plans_of_the_three_curricula():
    S = NoiseSchedule.linear()
    fixed = Curriculum("fixed", S, 100, skip=100).at(37)
    assert torch.equal(fixed.grid, distillation_grid(1000, 100)) and fixed.probabilities is None
    assert fixed.weights is None and fixed.mu == 0.0
    cm = Curriculum("cm", S, 1000)  # defaults: s0 = 2, s1 = 150, mu0 = 0.9
    assert len(cm.at(500).grid) == 107 and cm.at(500).mu == pytest.approx(0.9 ** (2 / 107))
    assert cm.uses_target_network and not Curriculum("cm", S, 10, mu=0.0).uses_target_network
    ict = Curriculum("ict", S, 800)  # defaults: s0 = 10, s1 = 1280; N = 1281 is capped at T - 1 = 999 intervals
    assert len(ict.at(0).grid) == 11 and len(ict.at(799).grid) == 1000 and not ict.uses_target_network
    assert isinstance(ict.at(0), CurriculumStep)


# ----------------------------------------------------------------------------- the Trainer
def _ct(tmp_path, **over):
    return make_cfg(tmp_path, objective="consistency-training", **over)


@pytest.mark.parametrize("over", [{"consistency_target_ema": 0.5},
                                  {"consistency_curriculum": "cm", "consistency_s0": 2, "consistency_s1": 20}])
def test_the_target_update_is_mu_theta_minus_plus_one_minus_mu_theta(tmp_path, over):
    """CM Alg. 3: after the optimiser step k, theta- = mu(k) theta- + (1 - mu(k)) theta, by hand on every
    parameter over three steps (mu = 0.5 fixed; CM's mu(k) with mu0 = 0.9)."""
    tr = Trainer(_ct(tmp_path, max_steps=3, **over), tiny_dataset(), progress=False)
    names = [n for n, _ in tr.model.named_parameters()]
    for name, p in tr.target_model.named_parameters():  # theta- starts at theta
        assert torch.equal(p, dict(tr.model.named_parameters())[name]) and not p.requires_grad
    batches = list(tr._epoch_batches(0))
    for k in range(3):
        before = {n: p.detach().clone() for n, p in tr.target_model.named_parameters()}
        assert tr.train_step(batches[k]) is not None
        mu = 0.5 if "consistency_target_ema" in over else 0.9 ** (2 / cm_points(k, 3, 2, 20))
        assert tr.curriculum.mu(k) == pytest.approx(mu, abs=1e-15)
        theta = dict(tr.model.named_parameters())
        for name, p in tr.target_model.named_parameters():
            torch.testing.assert_close(p, mu * before[name] + (1 - mu) * theta[name].detach(), rtol=0, atol=5e-7)
        assert not all(torch.equal(tr.target_model.get_parameter(n), theta[n]) for n in names)
        tr.step += 1


def test_the_batch_loss_uses_the_target_network_and_the_ict_weights(tmp_path):
    """The Trainer's loss is consistency_loss with f_theta- from the target network (not theta once
    they differ), and with ict the lambda-weighted mean over lognormal-drawn pairs."""
    tr = Trainer(_ct(tmp_path, dropout=0.0, consistency_target_ema=0.5, max_steps=2), tiny_dataset(), progress=False)
    tr.train_step(next(iter(tr._epoch_batches(0))))  # theta- now differs from theta
    images = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    got, n, noise, _ = batch_loss_and_uniform_draws(tr, images, torch.zeros(8))
    g = tr.consistency_grid
    want = consistency_loss(tr.student, images, noise, g[n + 1], g[n], target=tr.target).mean()
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.equal(got, consistency_loss(tr.student, images, noise, g[n + 1], g[n]).mean())

    tr = Trainer(_ct(tmp_path / "ict", dropout=0.0, consistency_curriculum="ict", max_steps=16), tiny_dataset(),
                 progress=False)
    assert tr.target is None and len(tr.consistency_grid) == 11
    state = tr.generator.get_state()
    got = tr._micro_batch_loss(images, torch.zeros(8))
    tr.generator.set_state(state)
    sigmas = tr.schedule.karras_sigma(tr.consistency_grid)
    n = torch.multinomial(lognormal_pair_probabilities(sigmas), 8, replacement=True, generator=tr.generator)
    noise = torch.randn(images.shape, generator=tr.generator)
    g = tr.consistency_grid
    per_sample = consistency_loss(tr.student, images, noise, g[n + 1], g[n])
    torch.testing.assert_close(got, (per_sample * ict_weights(sigmas)[n].float()).mean(), rtol=0, atol=0)


def test_the_target_network_draws_the_students_dropout_masks(tmp_path):
    """With a target network equal to theta (step 0) and t_next = t_now, the loss is 0 in training
    mode with dropout on: the target call's random state is forked (consistency_loss)."""
    tr = Trainer(_ct(tmp_path, dropout=0.5, consistency_target_ema=0.9), tiny_dataset(), progress=False)
    with torch.no_grad():  # the output convolution starts at zero, which would hide the dropout
        for p in tr.model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        tr.target_model.load_state_dict(tr.model.state_dict())
    x0 = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    t = torch.full((8,), 499.0, dtype=torch.float64)
    assert tr.target_model.training and not torch.equal(tr.student(x0, t).x0, tr.student(x0, t).x0)
    assert consistency_loss(tr.student, x0, noise, t, t, target=tr.target).abs().max().item() < 1e-6


@pytest.mark.parametrize("over", [{"consistency_curriculum": "cm", "consistency_s0": 2, "consistency_s1": 20},
                                  {"consistency_curriculum": "ict", "consistency_s0": 2, "consistency_s1": 16},
                                  {"consistency_target_ema": 0.95, "consistency_skip": 100}])
def test_resume_in_the_middle_of_a_curriculum_is_bitwise(tmp_path, over, assert_same_training_state):
    """Stopped at step 3 of 7 (N(k) has grown, the target is an EMA) and resumed: weights, EMA,
    optimiser and target network equal the uninterrupted run's bit for bit."""
    def cfg(folder, **more):
        return _ct(tmp_path / folder, max_steps=7, **over, **more)
    Trainer(cfg("a"), tiny_dataset(), progress=False).run()
    Trainer(cfg("b"), tiny_dataset(), progress=False).run(stop_at=3)
    part = tmp_path / "b" / "ckpt" / "latest.safetensors"
    tensors, meta = ckpt.load_checkpoint(part)
    assert any(k.startswith("target.") for k in tensors) == ("consistency_target_ema" in over
                                                            or over["consistency_curriculum"] == "cm")
    assert meta["consistency"]["curriculum"] == over.get("consistency_curriculum", "fixed")
    Trainer(cfg("b", training_load_weight=str(part)), tiny_dataset(), progress=False).run()
    assert_same_training_state(tmp_path / "a" / "ckpt" / "latest.safetensors",
                               tmp_path / "b" / "ckpt" / "latest.safetensors", 7)
    final = ckpt.load_checkpoint(tmp_path / "a" / "ckpt" / "latest.safetensors")[1]["consistency"]
    if "consistency_curriculum" in over:  # the checkpoint's grid is the last step's (k = 6 of 7)
        points = cm_points(6, 7, 2, 20) if over["consistency_curriculum"] == "cm" else ict_points(6, 7, 2, 16)
        assert len(final["grid"]) == points == (20 if over["consistency_curriculum"] == "cm" else 17)
        assert load_denoiser(tmp_path / "a" / "ckpt" / "latest.safetensors").consistency_times.tolist() == \
            final["grid"][1:]  # a curriculum's boundary t = 0 is no source time, however fine the grid


def test_a_resume_keeps_the_curriculum_and_the_target_decay(tmp_path):
    Trainer(_ct(tmp_path, max_steps=4, consistency_curriculum="cm"), tiny_dataset(), progress=False).run(stop_at=2)
    part = str(tmp_path / "ckpt" / "latest.safetensors")
    for over, message in [({"consistency_curriculum": "ict"}, "consistency_curriculum='cm', this run has 'ict'"),
                          ({"consistency_curriculum": "cm", "consistency_target_ema": 0.5},
                           "consistency_target_ema=0.9, this run has 0.5"),
                          ({"consistency_curriculum": "cm", "consistency_s1": 40},
                           "consistency_s1=150, this run has 40"),
                          ({"consistency_curriculum": "cm", "consistency_s0": 3}, "consistency_s0=2, this run has 3"),
                          ({}, "consistency_curriculum='cm', this run has 'fixed'"),
                          ({"consistency_curriculum": "cm", "max_steps": 8},
                           r"over K=4 steps, this run has K=8; .* resume with the same total steps \(--steps 4\)")]:
        with pytest.raises(DiffkitError, match=message) as err:
            Trainer(_ct(tmp_path, **{"max_steps": 4, "training_load_weight": part, **over}), tiny_dataset(),
                    progress=False).run()
        assert "\n" not in str(err.value)


def test_bf16_training_with_an_ema_target_runs_and_exports_without_it(tmp_path, capsys):
    """Mixed precision: the target's call runs under the same autocast; the sampled weights
    (the Trainer's EMA) export without the target network, which only a resume needs."""
    from diffkit.loading import export_weights, load_denoiser
    res = Trainer(_ct(tmp_path, max_steps=2, mixed_precision="bf16", consistency_curriculum="cm"), tiny_dataset(),
                  progress=False).run()
    assert math.isfinite(res.final_loss)
    out = export_weights(res.checkpoint, tmp_path / "w.safetensors")
    assert not any(k.startswith("target.") for k in ckpt.load_checkpoint(out)[0])
    assert load_denoiser(out).meta["consistency"]["curriculum"] == "cm"
    from diffkit.cli import main
    assert main(["convert", "--checkpoint", str(out), "--to-diffusers", str(tmp_path / "hf")]) == 2
    assert "consistency_curriculum='cm' samples from its EDM-spaced grid" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()
    with pytest.raises(DiffkitError, match="its consistency curriculum ends there .* start a new run"):
        Trainer(_ct(tmp_path, max_steps=2, mixed_precision="bf16", consistency_curriculum="cm",
                    training_load_weight=str(res.checkpoint)), tiny_dataset(), progress=False).run()


@pytest.mark.parametrize("over,message", [
    ({"consistency_curriculum": "cm"}, "consistency_curriculum='cm' applies to the consistency objectives"),
    ({"objective": "consistency-training", "consistency_curriculum": "edm"},
     "consistency_curriculum='edm' is not allowed; choose one of: fixed, cm, ict"),
    ({"objective": "consistency-training", "consistency_target_ema": 1.0}, "consistency_target_ema=1.0"),
    ({"objective": "consistency-training", "consistency_target_ema": -0.1}, "consistency_target_ema=-0.1"),
    ({"objective": "consistency-training", "consistency_s0": 2}, "consistency_s0=2 belongs to consistency_curriculum"),
    ({"objective": "consistency-training", "consistency_curriculum": "cm", "consistency_s0": 0}, "consistency_s0=0"),
    ({"objective": "consistency-training", "consistency_curriculum": "cm", "consistency_s0": 20, "consistency_s1": 10},
     "consistency_s1=10 is below consistency_s0=20"),
    ({"objective": "consistency-training", "consistency_curriculum": "ict", "consistency_target_ema": 0.9},
     "consistency_target_ema=0.9 is not allowed with consistency_curriculum='ict'"),
    ({"objective": "consistency-training", "consistency_curriculum": "cm", "consistency_s0": 1},
     "consistency_s0=1 is not allowed with consistency_curriculum='cm'"),
    ({"objective": "consistency-training", "consistency_curriculum": "ict", "zero_terminal_snr": True,
      "prediction_type": "v_prediction"}, "consistency_curriculum='ict' spaces its grid in sigma up to sigma"),
    ({"objective": "consistency-training", "consistency_curriculum": "ict", "consistency_skip": 20},
     "consistency_skip=20 sets the 'fixed' grid"),
    ({"objective": "consistency-distillation", "teacher": "t.safetensors", "consistency_curriculum": "cm"},
     "consistency_curriculum='cm' is a consistency-training schedule"),
])
def test_bad_curriculum_config_is_one_line_error(over, message):
    with pytest.raises(DiffkitError, match=message) as err:
        TrainConfig.from_dict({**TINY, **over})
    assert "\n" not in str(err.value)


def test_distillation_with_an_ema_target_starts_it_at_the_teachers_weights(tmp_path):
    """CM Alg. 2: theta- starts at theta, which a distillation starts at the teacher's EMA weights."""
    Trainer(make_cfg(tmp_path / "t", max_steps=1), tiny_dataset(), progress=False).run()
    teacher = tmp_path / "t" / "ckpt" / "latest.safetensors"
    tr = Trainer(make_cfg(tmp_path / "s", objective="consistency-distillation", teacher=str(teacher), max_steps=2,
                          consistency_target_ema=0.95), tiny_dataset(), progress=False)
    weights = ckpt.split_prefix(ckpt.load_checkpoint(teacher)[0], "ema")
    for name, p in tr.target_model.named_parameters():
        assert torch.equal(p, weights[name]), name
    tensors, meta = ckpt.load_checkpoint(tr.run().checkpoint)
    assert meta["consistency"]["target_ema"] == 0.95 and any(k.startswith("target.") for k in tensors)
