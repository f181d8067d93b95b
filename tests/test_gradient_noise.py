"""The gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018) against closed forms.

Linear least squares with Gaussian inputs: x ~ N(0, C) (C diagonal), y = w*.x + eps, eps ~ N(0, s^2),
loss 0.5 (w.x - y)^2. With delta = w - w*, one example's gradient is g = x x^T delta - eps x, so
(Isserlis: E[(x.delta)^2 x x^T] = (delta^T C delta) C + 2 C delta delta^T C)
    G = C delta,   Sigma = (delta^T C delta + s^2) C + C delta delta^T C,
    tr(Sigma) = (delta^T C delta + s^2) tr C + |C delta|^2.
"""
import math

import pytest
import torch

from diffkit.errors import DiffkitError
from diffkit.gradient_noise import estimate_noise_scale, noise_scale_from_norms, per_example_noise_scale

C = torch.tensor([1.0, 0.5, 2.0, 0.25, 1.5], dtype=torch.float64)
W_STAR = torch.tensor([0.3, -0.2, 0.1, 0.5, -0.4], dtype=torch.float64)
NOISE_STD = 0.7


def linear_model(delta):
    model = torch.nn.Linear(5, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_((W_STAR + delta)[None])
    return model


def closed_form(delta):
    quad = float(delta @ (C * delta))
    grad = C * delta
    return float(grad @ grad), (quad + NOISE_STD ** 2) * float(C.sum()) + float(grad @ grad)


def gaussian_loss(model, scale=1.0):
    def loss(n, generator):
        x = torch.randn(n, 5, generator=generator, dtype=torch.float64) * C.sqrt()
        y = x @ W_STAR + NOISE_STD * torch.randn(n, generator=generator, dtype=torch.float64)
        return scale * 0.5 * (model(x)[:, 0] - y).pow(2).mean()
    return loss


def test_linear_least_squares_matches_the_closed_form():
    delta = torch.tensor([0.4, 0.3, -0.2, 0.6, 0.1], dtype=torch.float64)
    grad_sq, trace = closed_form(delta)
    model = linear_model(delta)
    est = estimate_noise_scale(model, gaussian_loss(model), batches=400, small_batch=4, big_batch=32, seed=1)
    assert abs(est.grad_sq - grad_sq) < 4 * est.grad_sq_se, (est, grad_sq)
    assert abs(est.trace - trace) < 4 * est.trace_se, (est, trace)
    assert abs(est.b_simple - trace / grad_sq) < 4 * est.b_simple_se, (est, trace / grad_sq)
    assert est.b_simple_se < 0.1 * est.b_simple  # the check has teeth: B_simple = 12.9 known to 10%


def test_standard_errors_describe_the_spread_over_seeds():
    """The delta-method error of B_simple is the seed-to-seed spread of the estimate (within 35%)."""
    delta = torch.tensor([0.4, 0.3, -0.2, 0.6, 0.1], dtype=torch.float64)
    model = linear_model(delta)
    runs = [estimate_noise_scale(model, gaussian_loss(model), batches=40, small_batch=2, big_batch=8, seed=s)
            for s in range(40)]
    values = torch.tensor([r.b_simple for r in runs], dtype=torch.float64)
    mean_se = sum(r.b_simple_se for r in runs) / len(runs)
    assert abs(float(values.std()) / mean_se - 1) < 0.35, (float(values.std()), mean_se)


def test_scaling_the_loss_leaves_b_simple_unchanged():
    delta = torch.tensor([0.4, 0.3, -0.2, 0.6, 0.1], dtype=torch.float64)
    model = linear_model(delta)
    one = estimate_noise_scale(model, gaussian_loss(model), batches=20, small_batch=2, big_batch=8, seed=3)
    big = estimate_noise_scale(model, gaussian_loss(model, 1000.0), batches=20, small_batch=2, big_batch=8, seed=3)
    assert big.b_simple == pytest.approx(one.b_simple, rel=1e-9)
    assert big.grad_sq == pytest.approx(1e6 * one.grad_sq, rel=1e-9)
    assert big.trace == pytest.approx(1e6 * one.trace, rel=1e-9)


def test_two_batch_estimator_agrees_with_per_example_gradients_on_a_tiny_network():
    """A small tanh network on 48 fixed examples: batches drawn with replacement see the examples'
    empirical distribution, whose G and Sigma the per-example gradients give exactly."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)).double()
    x = torch.randn(48, 3, dtype=torch.float64)
    y = torch.sin(2 * x[:, 0]) + 0.5 * torch.randn(48, dtype=torch.float64)

    def example_loss(forward, xi, yi):
        return 0.5 * (forward(xi[None])[0, 0] - yi) ** 2
    exact = per_example_noise_scale(model, example_loss, x, y)

    def loss(n, generator):
        i = torch.randint(48, (n,), generator=generator)
        return 0.5 * (model(x[i])[:, 0] - y[i]).pow(2).mean()
    est = estimate_noise_scale(model, loss, batches=300, small_batch=4, big_batch=16, seed=0)
    assert abs(est.b_simple - exact["b_simple"]) < 4 * est.b_simple_se, (est, exact)
    assert est.b_simple_se < 0.2 * est.b_simple
    # and the per-example values against their definition, computed one example at a time
    grads = []
    for xi, yi in zip(x, y):
        model.zero_grad()
        example_loss(model, xi, yi).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    grads = torch.stack(grads)
    mean = grads.mean(0)
    assert exact["grad_sq"] == pytest.approx(float(mean @ mean), rel=1e-10)
    assert exact["trace"] == pytest.approx(float((grads - mean).pow(2).sum(1).mean()), rel=1e-10)


def test_the_callers_gradients_are_untouched():
    delta = torch.tensor([0.4, 0.3, -0.2, 0.6, 0.1], dtype=torch.float64)
    model = linear_model(delta)
    model.weight.grad = torch.full_like(model.weight, 7.0)
    before = model.weight.grad.clone()
    estimate_noise_scale(model, gaussian_loss(model), batches=3, small_batch=2, big_batch=4)
    assert torch.equal(model.weight.grad, before)
    model.weight.grad = None
    estimate_noise_scale(model, gaussian_loss(model), batches=3, small_batch=2, big_batch=4)
    assert model.weight.grad is None


def test_pure_noise_gives_no_b_simple():
    """|G|^2 = 0 estimated at or below 0: B_simple is None rather than a negative number."""
    est = noise_scale_from_norms([1.0, 1.2, 0.9], [0.5, 0.5, 0.45], 1, 2)  # |G|^2 = 2 big - small: 0, -0.2, 0
    assert est.b_simple is None and est.grad_sq <= 0 and math.isfinite(est.trace)
    assert est.b_simple_lower == pytest.approx(est.trace / (est.grad_sq + 2 * est.grad_sq_se))


@pytest.mark.parametrize("kwargs,pattern", [
    ({"batches": 1}, "batches=1"),
    ({"small_batch": 8, "big_batch": 8}, "big_batch=8"),
    ({"small_batch": 3, "big_batch": 8}, "multiple"),
    ({"small_batch": 0}, "small_batch=0"),
])
def test_bad_settings_are_one_line_errors(kwargs, pattern):
    model = linear_model(torch.zeros(5, dtype=torch.float64))
    with pytest.raises(DiffkitError, match=pattern):
        estimate_noise_scale(model, gaussian_loss(model), **kwargs)


def test_a_non_scalar_or_non_finite_loss_is_refused():
    model = linear_model(torch.zeros(5, dtype=torch.float64))
    with pytest.raises(DiffkitError, match="scalar"):
        estimate_noise_scale(model, lambda n, g: model(torch.randn(n, 5, dtype=torch.float64))[:, 0], batches=2,
                             small_batch=1, big_batch=2)
    with pytest.raises(DiffkitError, match="finite"):
        estimate_noise_scale(model, lambda n, g: model.weight.sum() * float("nan"), batches=2, small_batch=1,
                             big_batch=2)


# ---------------------------------------------------------------------------- diffusion objectives
@pytest.fixture(scope="module")
def learned_variance_checkpoint(tmp_path_factory):
    """A 2-step tiny checkpoint with a learned variance (L_hybrid), T = 100, on 8x8 digits."""
    from diffkit.config import TrainConfig
    from diffkit.training import Trainer
    from test_evaluation import TINY
    root = tmp_path_factory.mktemp("tiny_lv")
    cfg = TrainConfig.from_dict({**TINY, "learned_variance": True, "loss": "hybrid",
                                 "save_weight_dir": str(root / "ckpt"), "sampled_dir": str(root / "s")})
    Trainer(cfg, progress=False, log=lambda *_: None).run()
    return root / "ckpt" / "latest.safetensors"


def test_importance_weights_keep_the_vlb_unbiased(learned_variance_checkpoint):
    """Improved DDPM eq. 18: E_{t~p}[L_t / p_t] = sum_t L_t, so the importance-weighted L_vlb has the
    uniform one's mean (checked within 4 standard errors of the difference)."""
    from diffkit.evaluation import reference_images
    from diffkit.gradient_noise import _training_options, diffusion_loss, measured_loss_aware_sampler
    from diffkit.loading import load_denoiser
    denoiser = load_denoiser(learned_variance_checkpoint)
    images, _ = reference_images("digits", train=True, img_size=8)
    sampler = measured_loss_aware_sampler(denoiser.model, denoiser.schedule, images, _training_options(denoiser),
                                          history=2, generator=torch.Generator().manual_seed(0))
    p = sampler.probabilities()
    assert sampler.warmed_up() and p.max() > 3 * p.min()  # not uniform: the weights are exercised
    means = []
    with torch.no_grad():
        for objective in ("vlb", "vlb-importance"):
            loss = diffusion_loss(denoiser, images, objective, sampler=sampler if objective != "vlb" else None)
            values = torch.stack([loss(25, torch.Generator().manual_seed(i)) for i in range(20)]).double()
            means.append((float(values.mean()), float(values.std() / math.sqrt(values.numel()))))
    (uniform, se_u), (weighted, se_w) = means
    assert abs(uniform - weighted) < 4 * math.hypot(se_u, se_w), means
    assert se_w < se_u  # and the variance of the loss itself is lower (Improved DDPM Sec. 3.3)


def test_noise_scale_command_prints_the_table_and_writes_four_objectives(learned_variance_checkpoint, tmp_path,
                                                                         capsys):
    import json

    from diffkit.cli import main
    out = tmp_path / "noise.json"
    code = main(["experiment", "noise-scale", "--checkpoint", str(learned_variance_checkpoint), "--batches", "3",
                 "--small-batch", "2", "--big-batch", "4", "--history", "1", "--device", "cpu", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    for row in ("L_simple", "L_hybrid", "L_vlb (uniform t)", "L_vlb (importance-sampled t)"):
        assert row in captured.out
    assert "B_simple" in captured.out and "tr(Sigma)" in captured.out
    result = json.loads(out.read_text())
    assert list(result["objectives"]) == ["simple", "hybrid", "vlb", "vlb-importance"]
    for r in result["objectives"].values():
        assert r["batches"] == 3 and r["trace"] > 0 and r["trace_se"] >= 0
    assert len(result["timestep_probabilities"]) == 100
    assert result["settings"]["learned_variance"] is True


def test_noise_scale_command_fixed_variance_and_bad_values(learned_variance_checkpoint, tiny_checkpoint, tmp_path,
                                                            capsys):
    from diffkit.cli import main
    lv, fixed = str(learned_variance_checkpoint), str(tiny_checkpoint)
    code = main(["experiment", "noise-scale", "--checkpoint", fixed, "--batches", "2", "--small-batch", "1",
                 "--big-batch", "2", "--history", "1", "--device", "cpu", "--out", str(tmp_path / "f.json")])
    out = capsys.readouterr().out
    assert code == 0 and "L_vlb (importance-sampled t)" in out and "no L_hybrid row" in out, out
    for args, pattern in (
            (["--checkpoint", lv, "--small-batch", "3", "--big-batch", "8"], "multiple"),
            (["--checkpoint", lv, "--batches", "1"], "--batches=1"),
            (["--checkpoint", lv, "--small-batch", "8", "--big-batch", "12"], "--big-batch=12 is not allowed with "
                                                                              "--small-batch=8"),
            (["--checkpoint", lv, "--objectives", "simple,bogus"], "--objectives has 'bogus'"),
            (["--checkpoint", fixed, "--objectives", "hybrid"], "learned variance"),
            (["--checkpoint", lv, "--out", str(tmp_path / "n.txt")], "must end in .json"),
            (["--checkpoint", str(tmp_path / "none.safetensors")], "none.safetensors"),
            (["--checkpoint", fixed, "--dataset", "sines"],  # not "img_size=... does not apply to dataset='sines'"
             "dataset='sines' holds time series; diffkit experiment noise-scale of an image model measures on images")):
        code = main(["experiment", "noise-scale", "--device", "cpu", "--out", str(tmp_path / "n.json"), *args])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and pattern in err, (args, err)


def test_python_api_errors_name_the_parameters():
    """The command's messages name its flags (above); the Python API's name its parameters."""
    from diffkit.gradient_noise import check_objectives
    with pytest.raises(DiffkitError, match="^big_batch=12 is not allowed with small_batch=8"):
        estimate_noise_scale(linear_model(torch.zeros(5, dtype=torch.float64)), None, small_batch=8, big_batch=12)
    with pytest.raises(DiffkitError, match="^objectives has 'foo'"):
        check_objectives(["foo"], learned_variance=True)


def make_consistency_checkpoint(root, **over):
    """A tiny consistency model: a 3-step diffusion teacher (T = 1000), distilled for 2 steps
    (tests/test_consistency_training.py's recipe); ``over``: the distillation's config."""
    from diffkit.training import Trainer
    from test_training import TINY, make_cfg, tiny_dataset
    teacher = root / "teacher"
    Trainer(make_cfg(teacher, max_steps=3), tiny_dataset(), progress=False).run()
    cfg = make_cfg(root / "cm", **{**dict(objective="consistency-distillation",
                                          teacher=str(teacher / "ckpt" / "latest.safetensors"), ema_warmup=True,
                                          max_steps=2, consistency_skip=100), **over})
    assert TINY["img_size"] == 8
    return Trainer(cfg, tiny_dataset(), progress=False).run().checkpoint


@pytest.fixture(scope="module")
def consistency_checkpoint(tmp_path_factory):
    return make_consistency_checkpoint(tmp_path_factory.mktemp("cm"))


def test_a_consistency_model_is_refused_in_one_line(consistency_checkpoint, tmp_path, capsys):
    """Its loss is the consistency loss, not the diffusion objectives measured here."""
    from diffkit.cli import main
    from diffkit.gradient_noise import diffusion_noise_scales
    from diffkit.loading import load_denoiser
    with pytest.raises(DiffkitError, match="consistency model .*measured for the diffusion objectives"):
        diffusion_noise_scales(load_denoiser(consistency_checkpoint), torch.zeros(4, 1, 8, 8), batches=2,
                               small_batch=1, big_batch=2)
    code = main(["experiment", "noise-scale", "--checkpoint", str(consistency_checkpoint), "--device", "cpu",
                 "--batches", "2", "--small-batch", "1", "--big-batch", "2", "--out", str(tmp_path / "n.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "objective='consistency-distillation'" in err and "diffusion objectives" in err, err
    assert not (tmp_path / "n.json").exists()


class ModeNet(torch.nn.Module):
    """A 1x1 convolution behind dropout, recording ``self.training`` at every call and consuming the
    global RNG (dropout's mask) in training mode; ``fail_at``: the call that raises."""

    def __init__(self, fail_at=None):
        super().__init__()
        from types import SimpleNamespace
        self.config = SimpleNamespace(in_channels=1, img_size=4, num_classes=None)
        self.conv = torch.nn.Conv2d(1, 1, 1)
        self.modes, self.fail_at = [], fail_at

    def forward(self, x, t, **cond):
        self.modes.append(self.training)
        if len(self.modes) == self.fail_at:
            raise RuntimeError("the loss failed")
        return self.conv(torch.nn.functional.dropout(x, 0.5, self.training))


@pytest.mark.parametrize("start_training", [False, True])
def test_noise_scales_run_the_network_in_training_mode_and_restore_its_mode_and_the_rng(start_training):
    """The estimate is of the training-mode network (dropout on, as in training); the network's
    mode and the global RNG (which dropout draws from) are as before, also after an error raised
    inside the loss."""
    from types import SimpleNamespace

    from diffkit import NoiseSchedule
    from diffkit.gradient_noise import diffusion_noise_scales
    images = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for fail_at in (None, 3):
        net = ModeNet(fail_at).train(start_training)
        denoiser = SimpleNamespace(model=net, schedule=NoiseSchedule.linear(10), meta={})
        torch.manual_seed(123)
        state = torch.random.get_rng_state()
        if fail_at is None:
            result = diffusion_noise_scales(denoiser, images, objectives=["simple"], batches=2, small_batch=1,
                                            big_batch=2)
            assert result["objectives"]["simple"]["trace"] > 0
        else:
            with pytest.raises(RuntimeError, match="the loss failed"):
                diffusion_noise_scales(denoiser, images, objectives=["simple"], batches=2, small_batch=1, big_batch=2)
        assert net.modes and all(net.modes), net.modes  # every call in training mode
        assert net.training is start_training
        assert torch.equal(torch.random.get_rng_state(), state)
