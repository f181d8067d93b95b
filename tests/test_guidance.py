"""Guidance: classifier-free (Ho & Salimans 2022, seed 002) and classifier guidance (Dhariwal &
Nichol 2021, Algorithms 1 and 2, seed 000), checked against the seed formulas written out here
and against the exact class-conditional distribution of a two-component Gaussian mixture."""
import math

import pytest
import torch

import diffkit
from diffkit import Denoiser, NoiseSchedule
from diffkit.analytic import GaussianMixture
from diffkit.checkpoint import save_checkpoint
from diffkit.classifier_training import (ClassifierTrainConfig, load_classifier, noisy_batch, save_classifier,
                                         train_classifier)
from diffkit.cli import main
from diffkit.data import InMemoryImageDataset
from diffkit.errors import DiffkitError
from diffkit.guidance import (ClassifierFreeGuidance, ClassifierGuidance, classifier_guided_ddpm,
                              interval_from_karras_sigmas)
from diffkit.models.classifier import ClassifierConfig, EncoderClassifier
from diffkit.models.unet import UNet, UNetConfig
from diffkit.timesteps import make_grid

SCHEDULE = NoiseSchedule.linear(1000)


class CountingNet(torch.nn.Module):
    """A network wrapper that records the batch size of every call."""

    def __init__(self, net):
        super().__init__()
        self.net, self.batches = net, []
        self.config = net.config

    def forward(self, x, t, y=None, **cond):
        self.batches.append(x.shape[0])
        return self.net(x, t, y=y, **cond)


def tiny_unet(num_classes=3, seed=0, learned_variance=False):
    torch.manual_seed(seed)
    net = UNet(UNetConfig(channel=8, channel_mult=[1, 2], attn=[], num_res_blocks=1, dropout=0.0, img_size=8,
                          in_channels=1, num_classes=num_classes, learned_variance=learned_variance,
                          # AdaGN: with 1 channel per group an added embedding is normalised away
                          scale_shift_norm=True))
    with torch.no_grad():  # re-draw the zero-initialised layers, or eps would be 0 and ignore y
        for p in net.parameters():
            if not p.any():
                p.normal_(std=0.2)
    return net.eval()


def batch(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.tensor([0, 1, 2, 1][:n])


# ------------------------------------------------------------------ classifier-free guidance
def test_cfg_with_w0_is_the_conditional_model():
    den = Denoiser(tiny_unet(), SCHEDULE)
    x, y = batch()
    with torch.no_grad():
        plain = den(x, 600, y=y)
        assert (plain.eps - den(x, 600, y=torch.full_like(y, 3)).eps).abs().max() > 1e-2  # y matters
        guided = ClassifierFreeGuidance(den, 0.0)(x, 600, y=y)
        guided_diffusers = ClassifierFreeGuidance(den, 1.0, convention="diffusers")(x, 600, y=y)
    for pred in (guided, guided_diffusers):
        assert torch.allclose(pred.eps, plain.eps, atol=1e-6) and torch.allclose(pred.x0, plain.x0, atol=1e-5)


@pytest.mark.parametrize("t", [600, torch.tensor([10.0, 200.0, 700.0, 999.0])])
def test_cfg_one_batched_pass_equals_two_separate_passes(t):
    net = CountingNet(tiny_unet())
    den = Denoiser(net, SCHEDULE)
    x, y = batch()
    w = 2.5
    with torch.no_grad():
        eps_c = den(x, t, y=y).eps
        eps_u = den(x, t, y=torch.full_like(y, 3)).eps  # null class = num_classes
        den.reset_nfe()
        net.batches.clear()
        cfg = ClassifierFreeGuidance(den, w)
        pred = cfg(x, t, y=y)
    assert net.batches == [8] and cfg.nfe == 1  # one network call on the doubled batch
    expected = (1 + w) * eps_c - w * eps_u  # seed 002
    assert torch.allclose(pred.eps, expected, atol=1e-5)
    t64 = torch.as_tensor(t, dtype=torch.float64).expand(4)
    alpha = SCHEDULE.alpha(t64).float().reshape(-1, 1, 1, 1)
    sigma = SCHEDULE.sigma(t64).float().reshape(-1, 1, 1, 1)
    assert torch.allclose(alpha * pred.x0 + sigma * pred.eps, x, atol=1e-4)  # a consistent (eps, x0) pair
    # the diffusers convention s = 1 + w gives the same prediction
    with torch.no_grad():
        same = ClassifierFreeGuidance(den, 1 + w, convention="diffusers")(x, t, y=y)
    assert torch.allclose(same.eps, expected, atol=1e-5)


def test_cfg_learned_variance_passes_the_conditional_variance():
    den = Denoiser(tiny_unet(learned_variance=True), SCHEDULE, learned_variance=True)
    x, y = batch()
    with torch.no_grad():
        plain = den(x, 300, y=y)
        pred = ClassifierFreeGuidance(den, 3.0)(x, 300, y=y)
    assert ClassifierFreeGuidance(den, 3.0).learned_variance
    assert torch.allclose(pred.var_values, plain.var_values, atol=1e-5)


def test_cfg_rescale_matches_the_conditional_std():
    den = Denoiser(tiny_unet(), SCHEDULE)
    x, y = batch()
    t = 400
    with torch.no_grad():
        cond = den(x, t, y=y)
        guided = ClassifierFreeGuidance(den, 4.0)(x, t, y=y)
        full = ClassifierFreeGuidance(den, 4.0, rescale=1.0)(x, t, y=y)
        half = ClassifierFreeGuidance(den, 4.0, rescale=0.5)(x, t, y=y)
        on_eps = ClassifierFreeGuidance(den, 4.0, rescale=1.0, rescale_space="eps")(x, t, y=y)

    def std(v):
        return v.reshape(v.shape[0], -1).std(dim=1)

    # Lin et al. 2024 Sec. 3.4 with phi = 1: x_cfg * std(x_pos) / std(x_cfg)
    expected = guided.x0 * (std(cond.x0) / std(guided.x0)).reshape(-1, 1, 1, 1)
    assert torch.allclose(full.x0, expected, atol=1e-5)
    assert torch.allclose(std(full.x0), std(cond.x0), rtol=1e-4)
    assert torch.allclose(half.x0, 0.5 * expected + 0.5 * guided.x0, atol=1e-5)
    assert torch.allclose(std(on_eps.eps), std(cond.eps), rtol=1e-4)
    assert (std(guided.x0) - std(cond.x0)).abs().min() > 1e-2  # so the rescale is not a no-op here
    assert not torch.allclose(guided.x0, full.x0, atol=1e-4)


def test_cfg_interval_guides_only_inside():
    net = CountingNet(tiny_unet())
    den = Denoiser(net, SCHEDULE)
    x, y = batch()
    cfg = ClassifierFreeGuidance(den, 2.0, interval=(100, 500))
    with torch.no_grad():
        outside = cfg(x, 800, y=y)
        assert net.batches[-1] == 4  # outside the interval: the conditional model, one pass of batch B
        assert torch.allclose(outside.eps, den(x, 800, y=y).eps, atol=1e-6)
        inside = cfg(x, 300, y=y)
        assert net.batches[-1] == 8
        assert torch.allclose(inside.eps, ClassifierFreeGuidance(den, 2.0)(x, 300, y=y).eps, atol=1e-6)
        mixed_t = torch.tensor([50.0, 300.0, 800.0, 500.0])
        mixed = cfg(x, mixed_t, y=y)
        full = ClassifierFreeGuidance(den, 2.0)(x, mixed_t, y=y)
        plain = den(x, mixed_t, y=y)
    inside_mask = torch.tensor([False, True, False, True])
    assert torch.allclose(mixed.eps[inside_mask], full.eps[inside_mask], atol=1e-5)
    assert torch.allclose(mixed.eps[~inside_mask], plain.eps[~inside_mask], atol=1e-5)
    lo, hi = interval_from_karras_sigmas(SCHEDULE, 0.28, 5.42)
    assert 0 < lo < hi < 999
    assert math.isclose(float(SCHEDULE.karras_sigma(torch.tensor(hi, dtype=torch.float64))), 5.42, rel_tol=1e-4)


def test_cfg_works_with_every_registered_sampler():
    den = Denoiser(tiny_unet(), SCHEDULE)
    cfg = ClassifierFreeGuidance(den, 1.5)
    for name, info in diffkit.samplers.REGISTRY.items():
        if info.adaptive:  # ode takes no steps; through guidance: tests/test_samplers_ode.py
            continue
        out = diffkit.sample(cfg, (3, 1, 8, 8), name, steps=3, seed=0, cond={"y": torch.tensor([0, 1, 2])},
                             progress=False)
        assert out.shape == (3, 1, 8, 8) and torch.isfinite(out).all(), name


@pytest.mark.parametrize("kwargs,pattern", [
    ({"scale": -2.0}, "guidance scale"),
    ({"scale": -0.5, "convention": "diffusers"}, "guidance scale"),
    ({"scale": 1.0, "convention": "cfg++"}, "convention"),
    ({"scale": 1.0, "rescale": 1.5}, "rescale"),
    ({"scale": 1.0, "interval": (500, 100)}, "interval"),
    ({"scale": 1.0, "interval": (-5, 5000)}, "the times lie in"),
])
def test_cfg_bad_settings_are_one_line_errors(kwargs, pattern):
    with pytest.raises(DiffkitError, match=pattern) as err:
        ClassifierFreeGuidance(Denoiser(tiny_unet(), SCHEDULE), **kwargs)
    assert "\n" not in str(err.value)


def test_cfg_needs_a_conditional_model_and_labels():
    uncond = Denoiser(tiny_unet(num_classes=None), SCHEDULE)
    with pytest.raises(DiffkitError, match="class-conditional"):
        ClassifierFreeGuidance(uncond, 2.0)
    with pytest.raises(DiffkitError, match="labels"):
        ClassifierFreeGuidance(Denoiser(tiny_unet(), SCHEDULE), 2.0)(batch()[0], 10)


# ------------------------------------------------------------------ classifier guidance
class LinearClassifier(torch.nn.Module):
    """logits = W x + b(t): grad_x log softmax_y = W_y - sum_k p_k W_k in closed form."""

    def __init__(self, dim, classes, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(classes, dim, generator=g)
        self.b = torch.randn(classes, generator=g)

    def forward(self, x, t):
        return x.reshape(x.shape[0], -1) @ self.W.T + self.b * (t[:, None] / 1000)


def test_algorithm_2_eps_hat_is_the_seed_formula():
    den = Denoiser(tiny_unet(num_classes=None), SCHEDULE)
    clf = LinearClassifier(64, 3)
    x, y = batch()
    s, t = 3.0, 420
    with torch.no_grad():
        eps = den(x, t).eps
        guided = ClassifierGuidance(den, clf, s)(x, t, y=y)
    logits = clf(x, torch.full((4,), float(t)))
    p = torch.softmax(logits, dim=1)
    grad = (clf.W[y] - p @ clf.W).reshape(x.shape)  # grad_x log p(y | x_t), by hand
    abar = SCHEDULE.alphas_cumprod[t].item()
    expected = eps - math.sqrt(1 - abar) * s * grad  # Algorithm 2, line 3 (scaled by s)
    assert torch.allclose(guided.eps, expected, atol=1e-5)
    x0_expected = (x - math.sqrt(1 - abar) * expected) / math.sqrt(abar)
    assert torch.allclose(guided.x0, x0_expected, atol=1e-4)


def mixture():
    """Two well-separated anisotropic components in 2-D with unequal weights."""
    return GaussianMixture([0.7, 0.3], [[-1.0, 0.5], [1.0, -0.5]],
                           [[[0.09, 0.03], [0.03, 0.06]], [[0.05, -0.02], [-0.02, 0.1]]])


def exact_classifier(gm):
    """log p(y | x_t) of the mixture, as logits: the exact noisy classifier."""
    return lambda x, t: gm.class_log_posterior(x, SCHEDULE.alpha(t.double().cpu()), SCHEDULE.sigma(t.double().cpu()))


def test_exact_classifier_guidance_gives_the_exact_conditional_eps():
    """grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t), so with s = 1 eps-hat = eps*(x_t | y)."""
    gm = mixture()
    den = Denoiser(gm.network(SCHEDULE), SCHEDULE)
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(1))
    for t in (5, 250, 700, 999):
        t64 = torch.tensor(float(t), dtype=torch.float64)
        pred = ClassifierGuidance(den, exact_classifier(gm), 1.0)(x, t, y=y)
        exact = gm.eps(x, SCHEDULE.alpha(t64), SCHEDULE.sigma(t64), y)
        assert torch.allclose(pred.eps, exact, atol=1e-9, rtol=1e-7), t


class MixtureWithNullClass:
    """The exact eps* of the mixture with labels; label K (= num_classes) is the null class."""

    def __init__(self, gm):
        self.gm, self.net = gm, gm.network(SCHEDULE)

    def __call__(self, x, t, y):
        null = y == self.gm.num_components
        out = self.net(x, t, torch.where(null, 0, y))
        return torch.where(null[:, None], self.net(x, t), out)


def test_cfg_with_exact_models_equals_classifier_guidance_with_scale_1_plus_w():
    """eps(x|y) - eps(x) = -sigma grad log p(y|x_t), so
    (1+w) eps_c - w eps_u = eps_u - (1+w) sigma grad log p(y|x_t)."""
    gm = mixture()
    cond = Denoiser(MixtureWithNullClass(gm), SCHEDULE)
    uncond = Denoiser(gm.network(SCHEDULE), SCHEDULE)
    x = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = torch.arange(32) % 2
    for w, t in ((0.0, 100), (1.5, 400), (4.0, 800)):
        cfg = ClassifierFreeGuidance(cond, w, null_class=2)(x, t, y=y)
        clf = ClassifierGuidance(uncond, exact_classifier(gm), 1 + w)(x, t, y=y)
        assert torch.allclose(cfg.eps, clf.eps, atol=1e-9, rtol=1e-7), (w, t)
        assert torch.allclose(cfg.x0, clf.x0, atol=1e-8, rtol=1e-7), (w, t)


def _assert_is_component(samples, gm, k):
    """Mean and covariance of ``samples`` match component k: 5 standard errors for n samples
    (SE of a mean sqrt(C_ii/n), of a covariance sqrt((C_ii C_jj + C_ij^2)/n)) plus 0.005 for
    the samplers' own discretisation bias at 200 steps."""
    n = samples.shape[0]
    mean, cov = gm.means[k], gm.covs[k]
    d = cov.diagonal()
    se_mean = (d / n).sqrt()
    se_cov = ((d[:, None] * d[None, :] + cov ** 2) / n).sqrt()
    assert ((samples.mean(0) - mean).abs() <= 5 * se_mean).all(), (samples.mean(0), mean)
    assert ((torch.cov(samples.T) - cov).abs() <= 5 * se_cov + 0.005).all(), (torch.cov(samples.T), cov)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "algorithm-1"])
def test_classifier_guidance_samples_the_class_conditional_distribution(sampler):
    gm = mixture()
    den = Denoiser(gm.network(SCHEDULE), SCHEDULE)
    n, steps, k = 2000, 200, 1  # component 1 has weight 0.3: unguided samples would mostly be component 0
    gen = torch.Generator().manual_seed(3)
    noise = torch.randn(n, 2, dtype=torch.float64, generator=gen)
    y = torch.full((n,), k)
    if sampler == "algorithm-1":
        x = classifier_guided_ddpm(den, exact_classifier(gm), noise, make_grid(SCHEDULE, steps, "linear", "zero"),
                                   scale=1.0, y=y, generator=gen)
    else:
        guided = ClassifierGuidance(den, exact_classifier(gm), 1.0)
        x = diffkit.sample(guided, noise, sampler, steps, generator=gen, cond={"y": y}, progress=False)
    _assert_is_component(x, gm, k)


def test_unguided_samples_are_not_the_component():
    """The control for the test above: s = 0 gives the mixture, which fails the component check."""
    gm = mixture()
    den = Denoiser(gm.network(SCHEDULE), SCHEDULE)
    x = diffkit.sample(ClassifierGuidance(den, exact_classifier(gm), 0.0), (500, 2), "ddim", 20,
                       generator=torch.Generator().manual_seed(0), cond={"y": torch.ones(500, dtype=torch.long)},
                       dtype=torch.float64, progress=False)
    with pytest.raises(AssertionError):
        _assert_is_component(x, gm, 1)


def test_classifier_gradient_works_inside_no_grad_and_leaves_no_graph():
    den = Denoiser(tiny_unet(num_classes=None), SCHEDULE)
    guided = ClassifierGuidance(den, LinearClassifier(64, 3), 2.0)
    x, y = batch()
    with torch.no_grad():
        pred = guided(x, 100, y=y)
    assert not pred.eps.requires_grad and guided.classifier_calls == 1 and guided.nfe == 1
    with pytest.raises(DiffkitError, match="labels"):
        guided(x, 100)


# ------------------------------------------------------------------ classifier training
def test_noisy_batch_is_q_sample_and_training_learns_separable_classes(tmp_path):
    g = torch.Generator().manual_seed(0)
    x0 = torch.zeros(2, 1, 8, 8)
    x_t, t = noisy_batch(SCHEDULE, x0, g, torch.tensor([0.0, 999.0], dtype=torch.float64))
    assert t.tolist() == [0.0, 999.0] and x_t.shape == x0.shape
    # two classes that differ in brightness (-0.8 vs +0.8): learnable from noisy x_t at small t
    labels = torch.arange(64) % 2
    images = ((labels.float() * 2 - 1) * 0.8 * 127.5 + 127.5).round().to(torch.uint8)
    images = images.reshape(-1, 1, 1, 1).expand(64, 1, 8, 8)
    data = InMemoryImageDataset(images.contiguous(), labels, num_classes=2)
    cfg = ClassifierTrainConfig(channel=8, channel_mult=[1, 2], attn=[], steps=60, batch_size=32, lr=3e-3,
                                device="cpu")
    result = train_classifier(cfg, SCHEDULE, data, out=tmp_path / "c.safetensors", progress=False)
    model, meta, schedule = load_classifier(tmp_path / "c.safetensors")
    assert meta["num_classes"] == 2 and meta["classifier"]["channel"] == 8
    assert torch.equal(schedule.betas, SCHEDULE.betas)
    x_t, t = noisy_batch(SCHEDULE, data.images.float() / 127.5 - 1, g, torch.full((64,), 50.0, dtype=torch.float64))
    with torch.no_grad():
        accuracy = (model(x_t, t).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.95, (accuracy, result.final_loss)


# ------------------------------------------------------------------ command line
def write_model_checkpoint(path, num_classes, **config):
    net = tiny_unet(num_classes=num_classes)
    unet = {"channel": 8, "channel_mult": [1, 2], "attn": [], "num_res_blocks": 1, "dropout": 0.0, "img_size": 8,
            "in_channels": 1, "num_classes": num_classes, "scale_shift_norm": True}
    tensors = {f"model.{k}": v for k, v in net.state_dict().items()}
    tensors["schedule.betas"] = SCHEDULE.betas
    meta = {"unet": unet, "config": {"nrow": 4, **config}, "class_names": [str(i) for i in range(3)]}
    save_checkpoint(path, tensors, meta)
    return path


def write_classifier(path, num_classes, img_size=8):
    torch.manual_seed(0)
    model = EncoderClassifier(ClassifierConfig(channel=8, channel_mult=[1, 2], attn=[], num_res_blocks=1,
                                               dropout=0.0, img_size=img_size, in_channels=1, num_classes=num_classes))
    return save_classifier(path, model, SCHEDULE)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    return {"cond": write_model_checkpoint(d / "cond.safetensors", 3),
            "uncond": write_model_checkpoint(d / "uncond.safetensors", None),
            "clf3": write_classifier(d / "clf3.safetensors", 3),
            "clf5": write_classifier(d / "clf5.safetensors", 5),
            "clf16": write_classifier(d / "clf16.safetensors", 3, img_size=16),
            "dir": d}


def run_cli(capsys, *args):
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse errors
        code = exc.code
    return code, capsys.readouterr()


def test_cli_cfg_and_classifier_guidance_write_grids(checkpoints, capsys):
    d = checkpoints["dir"]
    code, out = run_cli(capsys, "sample", "--checkpoint", checkpoints["cond"], "--steps", 2, "--guidance-scale", 3,
                        "--guidance-rescale", 0.7, "--out", d / "cfg.png", "--no-progress", "--device", "cpu")
    assert code == 0, out.err
    assert (d / "cfg.png").exists() and "12 samples" in out.out and "classes [0, 1, 2]" in out.out  # 3 rows of nrow=4
    code, out = run_cli(capsys, "sample", "--checkpoint", checkpoints["uncond"], "--steps", 2, "--class", 2,
                        "--num", 3, "--classifier", checkpoints["clf3"], "--classifier-scale", 2,
                        "--out", d / "clf.png", "--no-progress", "--device", "cpu")
    assert code == 0, out.err
    assert "3 samples" in out.out and "classes [2]" in out.out
    code, out = run_cli(capsys, "sample", "--checkpoint", checkpoints["uncond"], "--sampler", "ddpm", "--steps", 2,
                        "--num", 2, "--classifier", checkpoints["clf3"], "--classifier-algorithm", 1,
                        "--out", d / "alg1.png", "--no-progress", "--device", "cpu")
    assert code == 0, out.err


@pytest.mark.parametrize("extra,pattern", [
    (["--checkpoint", "cond", "--class", "3"], "--class 3 is out of range; allowed: 0..2"),
    (["--checkpoint", "cond", "--class", "-1"], "--class -1"),
    (["--checkpoint", "uncond", "--guidance-scale", "2"], "class-conditional"),
    (["--checkpoint", "uncond", "--class", "1"], "--class needs"),
    (["--checkpoint", "cond", "--classifier", "clf5"], "5 classes but the model has 3"),
    (["--checkpoint", "uncond", "--classifier", "clf5"], "5 classes but the model has 3"),
    (["--checkpoint", "uncond", "--classifier", "clf16"], "16x16"),
    (["--checkpoint", "uncond", "--classifier", "cond"], "not a classifier checkpoint"),
    (["--checkpoint", "cond", "--guidance-scale", "-3"], "guidance scale"),
    (["--checkpoint", "cond", "--guidance-rescale", "0.5"], "--guidance-rescale needs --guidance-scale"),
    (["--checkpoint", "cond", "--guidance-scale", "1", "--guidance-rescale", "2"], "--guidance-rescale"),
    (["--checkpoint", "cond", "--classifier-scale", "2"], "--classifier-scale needs --classifier"),
    (["--checkpoint", "uncond", "--classifier", "clf3", "--classifier-algorithm", "1"], "--sampler ddpm"),
    (["--checkpoint", "cond", "--class", "0", "1", "2", "--num", "2"], "gives images to 2 of the 3 classes of --class"),
])
def test_cli_bad_guidance_input_is_one_line_exit_2(extra, pattern, checkpoints, capsys):
    args = [str(checkpoints.get(a, a)) for a in extra]
    code, out = run_cli(capsys, "sample", *args, "--steps", 1, "--num", 2, "--out",
                        checkpoints["dir"] / "bad.png", "--no-progress", "--device", "cpu")
    err = out.err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and pattern in err and "Traceback" not in err, err


def test_cli_guidance_of_a_model_trained_without_label_dropout_is_refused(checkpoints, tmp_path, capsys):
    """p_uncond = 0: the null class eps(x, K) of (1 + W) eps(x, y) - W eps(x, K) was never trained, so
    --guidance-scale is refused in one line before the --out folder is made; --class alone is sampled, and a
    checkpoint whose config does not say p_uncond (older ones: 0.1) is guided (the "cond" checkpoint above)."""
    never = write_model_checkpoint(tmp_path / "never.safetensors", 3, p_uncond=0.0)
    code, out = run_cli(capsys, "sample", "--checkpoint", never, "--class", 1, "--guidance-scale", 2, "--steps", 1,
                        "--num", 2, "--out", tmp_path / "new" / "g.png", "--no-progress", "--device", "cpu")
    assert code == 2 and out.err.strip().splitlines() == [
        "diffkit sample: error: this checkpoint was trained with p_uncond=0, so its null class is untrained; "
        "classifier-free guidance needs a model trained with label dropout (p_uncond > 0)"], out.err
    assert not (tmp_path / "new").exists()
    code, out = run_cli(capsys, "sample", "--checkpoint", never, "--class", 1, "--steps", 1, "--num", 2,
                        "--out", tmp_path / "c.png", "--no-progress", "--device", "cpu")
    assert code == 0, out.err
    dropped = write_model_checkpoint(tmp_path / "dropped.safetensors", 3, p_uncond=0.25)
    code, out = run_cli(capsys, "sample", "--checkpoint", dropped, "--class", 1, "--guidance-scale", 2, "--steps", 1,
                        "--num", 2, "--out", tmp_path / "d.png", "--no-progress", "--device", "cpu")
    assert code == 0, out.err


def test_train_classifier_command(tmp_path, capsys, monkeypatch):
    out = tmp_path / "clf.safetensors"
    code, res = run_cli(capsys, "train-classifier", "--dataset", "digits", "--img-size", 8, "--steps", 2,
                        "--channel", 8, "--channel-mult", "1,2", "--attn", "", "--batch-size", 8, "--out", out,
                        "--no-progress", "--device", "cpu")
    assert code == 0, res.err
    model, meta, schedule = load_classifier(out)
    assert meta["num_classes"] == 10 and meta["dataset"] == "digits" and schedule.num_timesteps == 1000
    code, res = run_cli(capsys, "train-classifier", "--like", tmp_path / "missing.safetensors", "--out", out)
    assert code == 2 and "missing.safetensors" in res.err
    like = write_model_checkpoint(tmp_path / "like.safetensors", 3)  # an 8x8 model
    code, res = run_cli(capsys, "train-classifier", "--like", like, "--img-size", 32, "--out", out)
    assert code == 2 and "--img-size 32 differs from the checkpoint's 8" in res.err, res.err


@pytest.mark.parametrize("prediction_type, space", [("epsilon", "eps"), ("v_prediction", "v")])
def test_cfg_rescale_in_the_network_output_space_is_diffusers_rescale_noise_cfg(prediction_type, space):
    """diffusers' StableDiffusionPipeline: noise_pred = rescale_noise_cfg(noise_cfg, noise_pred_text, phi) on the
    network's output (eps or v): std_text / std_cfg per sample over every non-batch dim, then the
    phi mix; the result is then converted to eps / x0 by the scheduler."""
    den = Denoiser(tiny_unet(), SCHEDULE, prediction_type=prediction_type)
    x, y = batch()
    t, w, phi = 400, 4.0, 0.7
    with torch.no_grad():
        out_c = den.net(x, torch.full((x.shape[0],), float(t)), y=y)
        out_u = den.net(x, torch.full((x.shape[0],), float(t)), y=torch.full_like(y, 3))  # the null class
        got = ClassifierFreeGuidance(den, w, rescale=phi, rescale_space=space)(x, t, y=y)
    out_cfg = out_u + (1 + w) * (out_c - out_u)  # diffusers' s = 1 + w
    std_c = out_c.std(dim=list(range(1, out_c.ndim)), keepdim=True)
    std_cfg = out_cfg.std(dim=list(range(1, out_cfg.ndim)), keepdim=True)
    out = phi * out_cfg * (std_c / std_cfg) + (1 - phi) * out_cfg
    alpha, sigma = SCHEDULE.alpha(torch.tensor(float(t))).item(), SCHEDULE.sigma(torch.tensor(float(t))).item()
    if prediction_type == "epsilon":
        eps, x0 = out, (x - sigma * out) / alpha
    else:
        eps, x0 = sigma * x + alpha * out, alpha * x - sigma * out
    torch.testing.assert_close(got.eps, eps, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got.x0, x0, atol=2e-5, rtol=1e-4)


def test_a_classifier_file_of_another_shape_is_one_line(tmp_path):
    """A classifier file whose config this diffkit does not know, or whose weights do not fit its
    config, or without its schedule: a one-line error (was a TypeError / RuntimeError traceback)."""
    from diffkit import checkpoint as ckpt
    model = EncoderClassifier(ClassifierConfig(channel=8, channel_mult=[1, 2], attn=[], num_res_blocks=1, img_size=8,
                                               in_channels=1, num_classes=3))
    good = save_classifier(tmp_path / "good.safetensors", model, SCHEDULE)
    tensors, meta = ckpt.load_checkpoint(good)
    cases = {"extra": (tensors, {**meta, "classifier": {**meta["classifier"], "pool": "spatial"}}),
             "missing": ({k: v for k, v in tensors.items()
                          if k != "model.out.weight" and not k.endswith("pool.positional")},
                         meta),
             "no_schedule": ({k: v for k, v in tensors.items() if k != "schedule.betas"}, meta)}
    for name, (t, m) in cases.items():
        path = ckpt.save_checkpoint(tmp_path / f"{name}.safetensors", t, m)
        with pytest.raises(DiffkitError) as err:
            load_classifier(path)
        assert "\n" not in str(err.value) and str(path) in str(err.value), (name, err.value)


def test_train_classifier_reports_its_accuracy_on_held_out_images_by_noise_level(tmp_path, capsys):
    """ADM logs its classifier's validation accuracy by noise level; train-classifier measures the
    trained classifier on 1000 MNIST test images it never saw at t = 0, T/4, T/2, 3T/4 and keeps
    the numbers in the checkpoint. Learned: far above chance (0.1) at t = 0 and falling with t."""
    import os
    from pathlib import Path
    mnist = Path(os.environ.get("DIFFKIT_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "mnist"
    if not mnist.is_dir():
        pytest.skip(f"MNIST test data not found at {mnist}")
    out = tmp_path / "clf.safetensors"
    # 8x8 MNIST: half the time of 16x16 and further above chance after 300 steps (measured at t = 0, 250, 500,
    # 750: 0.479, 0.276, 0.142, 0.103; 16x16: 0.368, 0.292, 0.137, 0.106)
    code, res = run_cli(capsys, "train-classifier", "--dataset", "mnist", "--data-dir", mnist, "--img-size", 8,
                        "--steps", 300, "--lr", "3e-3", "--channel", 16, "--channel-mult", "1,2", "--attn", "",
                        "--batch-size", 32, "--out", out, "--no-progress", "--device", "cpu")
    assert code == 0, res.err
    assert "held-out accuracy (1000 test images): t=0: " in res.out
    heldout = {int(t): a for t, a in load_classifier(out)[1]["heldout_accuracy"].items()}
    assert sorted(heldout) == [0, 250, 500, 750]
    assert heldout[0] > 0.25 and heldout[0] > heldout[750] + 0.1, heldout


def test_cli_guidance_flags_take_effect_as_their_definitions_say(checkpoints, capsys):
    """Each guidance flag changes the grid, and its identities hold on the command line:
    --guidance-convention diffusers with s = 1 + W is the seed convention's W; an interval that
    covers every sampled time is no interval; an interval that covers none is the conditional
    model (--guidance-scale 0); --guidance-rescale changes the images."""
    d = checkpoints["dir"]

    def grid(name, *flags):
        code, out = run_cli(capsys, "sample", "--checkpoint", checkpoints["cond"], "--steps", 3, "--num", 3,
                            "--out", d / f"{name}.png", "--no-progress", "--device", "cpu", *flags)
        assert code == 0, out.err
        return (d / f"{name}.png").read_bytes()
    seed_w2 = grid("w2", "--guidance-scale", 2)
    assert grid("s3", "--guidance-scale", 3, "--guidance-convention", "diffusers") == seed_w2
    assert grid("all", "--guidance-scale", 2, "--guidance-interval", -1, 999) == seed_w2
    assert grid("none", "--guidance-scale", 2, "--guidance-interval", -1, -0.5) == grid("w0", "--guidance-scale", 0)
    assert grid("w0", "--guidance-scale", 0) != seed_w2
    assert grid("rescaled", "--guidance-scale", 2, "--guidance-rescale", 0.7) != seed_w2
