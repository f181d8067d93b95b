"""Super-resolution diffusion (diffkit.super_res, UNetConfig.low_res_size, super_res_from, diffkit upscale)."""
import math

import numpy as np
import pytest
import torch

from diffkit import Denoiser, DiffkitError
from diffkit.analytic import GaussianMixture, gaussian_ode_solution
from diffkit.checkpoint import tensors_digest
from diffkit.cli import main
from diffkit.config import TrainConfig
from diffkit.models.unet import UNet, UNetConfig
from diffkit.schedule import NoiseSchedule
from diffkit.super_res import augment, downsample, upsample, upscale

TINY = dict(img_size=8, channel=16, channel_mult=(1, 2), attn=(1,), num_res_blocks=1, in_channels=1)


# ------------------------------------------------------------------ resampling, by hand
def test_downsample_is_the_mean_of_each_block():
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    pixels = x.numpy()
    for low in (2, 3, 4, 6):
        k = 12 // low
        want = np.zeros((2, 3, low, low), dtype=np.float32)
        for i in range(low):
            for j in range(low):
                want[:, :, i, j] = sum(pixels[:, :, k * i + a, k * j + b] for a in range(k) for b in range(k)) / k ** 2
        torch.testing.assert_close(downsample(x, low), torch.from_numpy(want), rtol=0, atol=1e-6)
    for bad in (5, 12, 13):  # must divide 12 and be smaller
        with pytest.raises(DiffkitError, match=f"cannot be area-downsampled to {bad}x{bad}"):
            downsample(x, bad)


def test_upsample_is_bilinear_with_half_pixel_centres():
    """Output pixel i samples the input at u = (i + 1/2) h / H - 1/2, clamped to [0, h - 1], and
    interpolates linearly between its neighbours, in each axis (improved-diffusion's F.interpolate)."""
    low = torch.randn(1, 2, 3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def weights(n_in, n_out):
        w = np.zeros((n_out, n_in))
        for i in range(n_out):
            u = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1)
            lo = math.floor(u)
            hi = min(lo + 1, n_in - 1)
            w[i, lo] += 1 - (u - lo)
            w[i, hi] += u - lo
        return torch.from_numpy(w)

    want = weights(3, 9) @ low @ weights(4, 12).T
    torch.testing.assert_close(upsample(low, (9, 12)), want, rtol=0, atol=1e-12)


# ------------------------------------------------------------------ the network
def perturbed(net):
    """Deterministic non-zero weights (the output convolution starts at zero)."""
    with torch.no_grad():
        for k, p in enumerate(net.parameters()):
            p.copy_(0.1 * torch.sin(torch.arange(p.numel(), dtype=torch.float32) * 0.37 + k).reshape(p.shape))
    return net


def test_plain_unet_is_unchanged():
    """Weights and outputs of a U-Net without low_res_size, as recorded before super-resolution was
    added (diffkit at 00ff974): old checkpoints load into the same network and compute the same."""
    torch.manual_seed(0)
    net = UNet(UNetConfig(**TINY)).eval()  # no dropout: the C++ and torch kernels draw it differently
    assert tensors_digest(net.state_dict()) == "7c1b94da55b16c8ded3f4e59fac8f26f22c44266803b3ae14d3b8c45ddbca97c"
    x = torch.cos(torch.arange(2 * 64, dtype=torch.float32) * 0.21).reshape(2, 1, 8, 8)
    with torch.no_grad():
        out = perturbed(net)(x, torch.tensor([10.0, 500.0]))
    assert out.double().sum().item() == pytest.approx(11.77030023932457, rel=1e-6)
    torch.testing.assert_close(out[0, 0, 0, :4], torch.tensor([0.10952125489711761, 0.10742616653442383,
                                                                0.10824057459831238, 0.10662135481834412]))
    assert "low_res_size" not in TrainConfig().to_unet_kwargs()  # a plain run's checkpoint description
    with pytest.raises(DiffkitError, match="not a super-resolution model"):
        net(x, 10.0, low_res=torch.zeros(2, 1, 4, 4))


def test_input_is_x_then_the_upsampled_low_res():
    net = perturbed(UNet(UNetConfig(**TINY, low_res_size=4))).eval()
    assert net.input_conv.weight.shape == (16, 2, 3, 3)  # in_channels x 2 inputs, in_channels outputs
    assert net.config.output_channels == 1
    seen = {}
    net.input_conv.register_forward_hook(lambda module, inputs, output: seen.update(x=inputs[0]))
    g = torch.Generator().manual_seed(2)
    x, low = torch.randn(3, 1, 8, 8, generator=g), torch.randn(3, 1, 4, 4, generator=g)
    with torch.no_grad():
        out = net(x, 100.0, low_res=low)
    assert out.shape == x.shape and seen["x"].shape == (3, 2, 8, 8)
    torch.testing.assert_close(seen["x"][:, :1], x, rtol=0, atol=0)
    torch.testing.assert_close(seen["x"][:, 1:], upsample(low, (8, 8)), rtol=0, atol=0)
    with torch.no_grad():  # the low-resolution image is used: another one changes the output
        assert (net(x, 100.0, low_res=-low) - out).abs().max() > 1e-3
    with pytest.raises(DiffkitError, match="needs low_res"):
        net(x, 100.0)
    with pytest.raises(DiffkitError, match=r"give \(3, 1, 4, 4\)"):
        net(x, 100.0, low_res=torch.zeros(3, 1, 2, 2))
    for bad in (3, 8, 16):
        with pytest.raises(DiffkitError, match=f"low_res_size={bad}"):
            UNetConfig(**TINY, low_res_size=bad)


# ------------------------------------------------------------------ exact conditional model
class ConditionalGaussian:
    """eps*(x_t, t | low_res) for x_0 ~ N(0, I) on side x side images and low_res = A x_0 (A: the block
    means): given y, x_0 ~ N(A^+ y, I - P) with P = A^T (A A^T)^-1 A, so eps* is that of a Gaussian
    (diffkit.analytic), shifted to the mean A^+ y. A is built here entry by entry."""

    def __init__(self, schedule, side, low):
        k = side // low
        self.A = torch.zeros(low * low, side * side, dtype=torch.float64)
        for i in range(side):
            for j in range(side):
                self.A[(i // k) * low + j // k, i * side + j] = 1 / k ** 2
        self.pinv = self.A.T @ torch.linalg.inv(self.A @ self.A.T)
        self.cov = torch.eye(side * side, dtype=torch.float64) - self.pinv @ self.A
        self.centred = GaussianMixture([1.0], torch.zeros(1, side * side),
                                       (self.cov + 1e-12 * torch.eye(side * side))[None])
        self.schedule, self.side = schedule, side

    def mean(self, low_res):
        return (low_res.to(torch.float64).flatten(1) @ self.pinv.T)

    def __call__(self, x, t, low_res):
        t64 = t.to(torch.float64)
        alpha, sigma = self.schedule.alpha(t64)[:, None], self.schedule.sigma(t64)[:, None]
        shifted = x.to(torch.float64).flatten(1) - alpha * self.mean(low_res)
        return self.centred.eps(shifted, alpha[:, 0], sigma[:, 0]).reshape(x.shape).to(x.dtype)


def test_upscale_follows_the_exact_conditional_ode():
    """With the exact eps*(x_t | low_res) of Gaussian data, upscale's DDIM (eta 0) lands where the exact
    probability-flow ODE of p(x_0 | low_res) takes the same noise, and every output area-downsamples to
    its own low-resolution input."""
    schedule = NoiseSchedule.from_name("linear", 1000)
    net = ConditionalGaussian(schedule, 4, 2)
    net.config = UNetConfig(img_size=4, channel=8, channel_mult=(1,), attn=(), in_channels=1, low_res_size=2)
    denoiser = Denoiser(net, schedule)
    low = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(3)).clamp(-1, 1)  # the data range
    steps = 200
    out = upscale(denoiser, low, "ddim", steps, seed=7)
    assert out.shape == (3, 1, 4, 4) and denoiser.nfe == steps
    torch.testing.assert_close(downsample(out, 2), low, rtol=0, atol=1e-5)  # A x_0 = y exactly
    from diffkit.noise import generators_from_seed, randn
    noise = randn((3, 1, 4, 4), generators_from_seed(7, 3))
    t0 = torch.tensor(999.0, dtype=torch.float64)
    exact = torch.stack([gaussian_ode_solution(net.mean(low[b:b + 1])[0], net.cov, noise[b:b + 1],
                                               schedule.alpha(t0), schedule.sigma(t0), 1.0, 0.0)[0]
                         for b in range(3)])
    assert (out.double() - exact).abs().max() < 0.02  # DDIM's discretisation error in 200 steps
    other = upscale(denoiser, low.flip(0), "ddim", steps, seed=7)  # each output follows its own input
    torch.testing.assert_close(downsample(other, 2), low.flip(0), rtol=0, atol=1e-5)


def test_upscale_samples_the_conditional_distribution():
    """ddpm samples of the exact model, 1000 of them: mean A^+ y (each pixel its block's value) and the
    covariance's shape, I - P: pixels of one 2x2 block correlate at -(1/4) / (3/4) = -1/3, pixels of
    different blocks not at all. (The spread itself, 3/4 per pixel, comes out 0.70 on ddpm's 100-step
    respaced grid and 0.743 on all 1000 steps: the chain's fixed_small variance shrinks every
    unit-variance direction alike, which leaves the correlations as they are.)"""
    schedule = NoiseSchedule.from_name("linear", 1000)
    net = ConditionalGaussian(schedule, 4, 2)
    net.config = UNetConfig(img_size=4, channel=8, channel_mult=(1,), attn=(), in_channels=1, low_res_size=2)
    n = 1000
    low = torch.tensor([[[[0.5, -1.0], [0.0, 1.0]]]]).expand(n, 1, 2, 2)
    out = upscale(Denoiser(net, schedule), low, "ddpm", 100, seed=0).double().reshape(n, 16)
    nearest = low[0, 0].repeat_interleave(2, 0).repeat_interleave(2, 1).double().reshape(16)
    assert (out.mean(0) - nearest).abs().max() < 0.11  # 4 sigma of the mean of 1000 (sd 0.87 / sqrt(1000))
    corr = torch.corrcoef(out.T)
    block = torch.tensor([(p // 4 // 2) * 2 + p % 4 // 2 for p in range(16)])  # pixel (row-major) -> its 2x2 block
    same = (block[:, None] == block[None]) & ~torch.eye(16, dtype=torch.bool)
    other = block[:, None] != block[None]
    assert (corr[same] + 1 / 3).abs().max() < 0.11  # 4 sigma: (1 - rho^2) / sqrt(n) = 0.028
    assert corr[other].abs().max() < 0.13
    assert 0.65 < out.var(0).mean() < 0.76


def test_upscale_refuses_bad_input():
    net = UNet(UNetConfig(**TINY, low_res_size=4))
    d = Denoiser(net, NoiseSchedule.from_name("linear", 100))
    with pytest.raises(DiffkitError, match=r"give \(batch, 1, 4, 4\)"):
        upscale(d, torch.zeros(2, 1, 8, 8))
    with pytest.raises(DiffkitError, match="dtype"):
        upscale(d, torch.zeros(2, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(DiffkitError, match="not a super-resolution model"):
        upscale(Denoiser(UNet(UNetConfig(**TINY)), d.schedule), torch.zeros(2, 1, 4, 4))
    with pytest.raises(DiffkitError, match=r"trained without conditioning augmentation"):
        upscale(d, torch.zeros(2, 1, 4, 4), noise_level=5)
    with pytest.raises(DiffkitError, match=r"low_res hold values in \[255, 255\]; allowed: \[-1, 1\].*127.5 - 1\)$"):
        upscale(d, torch.full((2, 1, 4, 4), 255.0))


# ------------------------------------------------------------------ conditioning augmentation
def test_augment_is_q_sample_of_the_level():
    """Level k: sqrt(alpha_bar_k) y + sqrt(1 - alpha_bar_k) e, alpha_bar_k = prod_{i<=k} (1 - beta_i) of
    DDPM's linear betas (1e-4 .. 0.02 over T = 1000), computed here; level 0 leaves y as it is."""
    schedule = NoiseSchedule.from_name("linear", 1000)
    betas = np.linspace(1e-4, 0.02, 1000)
    g = torch.Generator().manual_seed(5)
    y, e = torch.randn(4, 1, 2, 2, generator=g, dtype=torch.float64), torch.randn(4, 1, 2, 2, generator=g,
                                                                                     dtype=torch.float64)
    levels = [0, 1, 350, 1000]
    out = augment(y, torch.tensor(levels), schedule, e)
    for b, k in enumerate(levels):
        abar = float(np.prod(1 - betas[:k]))
        torch.testing.assert_close(out[b], math.sqrt(abar) * y[b] + math.sqrt(1 - abar) * e[b], rtol=0, atol=1e-9)
    for bad in (-1, 1001, 2.5):
        with pytest.raises(DiffkitError, match="noise levels"):
            augment(y, torch.tensor([bad] * 4), schedule, e)


def test_noise_level_is_a_network_input():
    net = perturbed(UNet(UNetConfig(**TINY, low_res_size=4, low_res_noise=True))).eval()
    g = torch.Generator().manual_seed(6)
    x, low = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 4, 4, generator=g)
    with torch.no_grad():
        a, b = net(x, 100.0, low_res=low, noise_level=0), net(x, 100.0, low_res=low, noise_level=torch.tensor([0, 300]))
    torch.testing.assert_close(a[0], b[0])
    assert (a[1] - b[1]).abs().max() > 1e-3
    with pytest.raises(DiffkitError, match="takes noise_level"):
        net(x, 100.0, low_res=low)
    with pytest.raises(DiffkitError, match="not trained with conditioning augmentation"):
        UNet(UNetConfig(**TINY, low_res_size=4))(x, 100.0, low_res=low, noise_level=0)
    with pytest.raises(DiffkitError, match="needs low_res_size"):
        UNetConfig(**TINY, low_res_noise=True)


class NoisyConditionalGaussian(ConditionalGaussian):
    """eps*(x_t, t | y', k) for x_0 ~ N(0, I) and y' = a A x_0 + s e (level k: a, s of the schedule at
    k - 1): x_0 | y' ~ N(a A^T V^-1 y', I - a^2 A^T V^-1 A), V = a^2 A A^T + s^2 I."""

    def posterior(self, level):
        t = torch.tensor(float(level) - 1, dtype=torch.float64)
        a, s = self.schedule.alpha(t), self.schedule.sigma(t)
        v_inv = torch.linalg.inv(a ** 2 * self.A @ self.A.T + s ** 2 * torch.eye(self.A.shape[0], dtype=torch.float64))
        eye = torch.eye(self.A.shape[1], dtype=torch.float64)
        return a * self.A.T @ v_inv, eye - a ** 2 * self.A.T @ v_inv @ self.A

    def __call__(self, x, t, low_res, noise_level):
        gain, cov = self.posterior(int(noise_level[0]))
        t64 = t.to(torch.float64)
        alpha, sigma = self.schedule.alpha(t64)[:, None], self.schedule.sigma(t64)[:, None]
        mean = low_res.to(torch.float64).flatten(1) @ gain.T
        jitter = 1e-12 * torch.eye(cov.shape[0], dtype=torch.float64)  # level 0: I - P is singular
        gaussian = GaussianMixture([1.0], torch.zeros(1, cov.shape[0]), (cov + jitter)[None])
        return gaussian.eps(x.to(torch.float64).flatten(1) - alpha * mean, alpha[:, 0], sigma[:, 0]).reshape(
            x.shape).to(x.dtype)


def test_upscale_at_a_noise_level_follows_the_exact_ode():
    """With conditioning augmentation, upscale noises the input to the level with noise drawn first from
    each image's own generator, then samples given it: DDIM lands on the exact ODE map of p(x_0 | y')."""
    from diffkit.noise import generators_from_seed, randn
    schedule = NoiseSchedule.from_name("linear", 1000)
    net = NoisyConditionalGaussian(schedule, 4, 2)
    net.config = UNetConfig(img_size=4, channel=8, channel_mult=(1,), attn=(), in_channels=1, low_res_size=2,
                            low_res_noise=True)
    low = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(3)).clamp(-1, 1)
    out = upscale(Denoiser(net, schedule), low, "ddim", 200, seed=7, noise_level=300)
    gens = generators_from_seed(7, 3)
    noised = augment(low, torch.full((3,), 300), schedule, randn((3, 1, 2, 2), gens))
    noise = randn((3, 1, 4, 4), gens)
    gain, cov = net.posterior(300)
    t0 = torch.tensor(999.0, dtype=torch.float64)
    exact = torch.stack([gaussian_ode_solution(gain @ noised[b].double().flatten(), cov, noise[b:b + 1],
                                               schedule.alpha(t0), schedule.sigma(t0), 1.0, 0.0)[0]
                         for b in range(3)])
    error = (out.double() - exact).abs().max()
    assert error < 0.01 * exact.abs().max(), error  # DDIM's discretisation error in 200 steps (1% here)
    clean = upscale(Denoiser(net, schedule), low, "ddim", 200, seed=7)  # level 0: the clean conditional
    torch.testing.assert_close(downsample(clean, 2), low, rtol=0, atol=1e-5)
    with pytest.raises(DiffkitError, match="noise_level=1001"):
        upscale(Denoiser(net, schedule), low, "ddim", 2, seed=7, noise_level=1001)


# ------------------------------------------------------------------ config
def test_super_res_config_rules():
    cfg = TrainConfig(img_size=8, channel_mult=[1, 2], attn=[1], super_res_from=4)
    assert cfg.to_unet_kwargs()["low_res_size"] == 4
    for value, needle in ((3, "super_res_from=3 is not allowed with img_size=8"),
                          (8, "super_res_from=8 is not allowed"), (1, "super_res_from=1")):
        with pytest.raises(DiffkitError, match=needle):
            TrainConfig(img_size=8, channel_mult=[1, 2], attn=[1], super_res_from=value)
    for extra, needle in (({"conditional": True}, "conditional=True"), ({"autoencoder": "ae.safetensors"},
                                                                          "autoencoder=")):
        with pytest.raises(DiffkitError, match=f"does not combine with {needle}"):
            TrainConfig(img_size=8, channel_mult=[1, 2], attn=[1], super_res_from=4, **extra)
    with pytest.raises(DiffkitError, match="applies to images"):
        TrainConfig(dataset="sines", attn=[], super_res_from=4)


def test_training_conditions_on_the_area_downsampled_batch(tmp_path):
    """Each training step gives the network low_res = the block means of the step's own clean images."""
    from diffkit.training import Trainer
    cfg = TrainConfig(img_size=8, channel=16, channel_mult=[1, 2], attn=[1], num_res_blocks=1, batch_size=4,
                      super_res_from=2, max_steps=1, device="cpu", save_weight_dir=str(tmp_path / "c"))
    from diffkit.data import InMemoryImageDataset
    images = torch.randint(0, 256, (8, 1, 8, 8), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    trainer = Trainer(cfg, InMemoryImageDataset(images, torch.zeros(8)), progress=False, log=lambda *_: None)
    seen = []
    trainer.model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["low_res"]), with_kwargs=True)
    group = next(trainer._epoch_batches(0))
    trainer.train_step(group)
    assert len(seen) == 1
    images = group[0][0]
    want = images.reshape(4, 1, 2, 4, 2, 4).mean(dim=(3, 5))  # 4x4 blocks of the 8x8 images
    torch.testing.assert_close(seen[0], want, rtol=0, atol=1e-6)


def test_training_augments_the_low_res_input(tmp_path):
    """super_res_noise=1: each example's low_res is its block means at level 0, or noised to level 1
    (alpha_0 y + sigma_0 e, sigma_0 = sqrt(beta_1) = 0.01) at level 1, with that level as noise_level."""
    from diffkit.data import InMemoryImageDataset
    from diffkit.training import Trainer
    cfg = TrainConfig(img_size=8, channel=16, channel_mult=[1, 2], attn=[1], num_res_blocks=1, batch_size=8,
                      super_res_from=2, super_res_noise=1, max_steps=1, device="cpu",
                      save_weight_dir=str(tmp_path / "c"))
    images = torch.randint(0, 256, (8, 1, 8, 8), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    trainer = Trainer(cfg, InMemoryImageDataset(images, torch.zeros(8)), progress=False, log=lambda *_: None)
    assert trainer.model.config.low_res_noise
    seen = []
    trainer.model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs), with_kwargs=True)
    group = next(trainer._epoch_batches(0))
    trainer.train_step(group)
    clean = group[0][0].reshape(8, 1, 2, 4, 2, 4).mean(dim=(3, 5))
    levels, low = seen[0]["noise_level"], seen[0]["low_res"]
    assert set(levels.tolist()) == {0, 1}  # both levels drawn in this batch
    torch.testing.assert_close(low[levels == 0], clean[levels == 0], rtol=0, atol=1e-6)
    alpha0, sigma0 = math.sqrt(1 - 1e-4), 0.01
    residual = (low[levels == 1] - alpha0 * clean[levels == 1]) / sigma0
    assert 0.3 < residual.std() < 3 and residual.abs().max() < 6  # standard normal noise, scaled by sigma_0


# ------------------------------------------------------------------ command line
CLI_TINY = ["--set", "img_size=8", "--set", "channel=16", "--set", "channel_mult=[1,2]", "--set", "attn=[1]",
            "--set", "num_res_blocks=1", "--set", "batch_size=8", "--set", "sample_steps=2", "--device", "cpu"]


def run_cli(capsys, *args):
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def upscaler(tmp_path_factory):
    """A tiny 4 -> 8 upscaler trained 2 steps on the digits through the CLI, its end-of-run grid, one
    trained a step with conditioning augmentation (levels 0..100; lr 0.01, so that its raw weights
    already depend on the low-resolution input), and three 4x4 PNGs."""
    from diffkit.images import save_images
    root = tmp_path_factory.mktemp("super_res")
    assert main(["train", "--out", str(root / "run"), "--steps", "2", "--no-progress", *CLI_TINY,
                 "--set", "super_res_from=4"]) == 0
    assert main(["train", "--out", str(root / "noisy"), "--steps", "1", "--no-progress", "--no-sample", *CLI_TINY,
                 "--set", "super_res_from=4", "--set", "super_res_noise=100", "--set", "lr=0.01"]) == 0
    low = downsample(torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1, 4)
    save_images(low, root / "low", prefix="low")
    return root


def png(path) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.open(path))


def test_train_and_upscale_through_the_cli(upscaler, capsys):
    from PIL import Image
    root = upscaler
    grid = Image.open(root / "run" / "samples" / "SampledNoGuidanceImgs.png")  # 3 rows (bilinear, upscaled, original)
    assert grid.size == (8 * 10 + 2, 2 * 3 * 10 + 2)  # x 2 chunks of 8 of the first 16 training images
    code, out, err = run_cli(capsys, "upscale", "--checkpoint", root / "run" / "checkpoints", "--images",
                             root / "low", "--out", root / "up", "--steps", 2, "--no-progress", "--device", "cpu")
    assert code == 0, err
    assert "3 upscaled images (4x4 -> 8x8)" in out and out.rstrip().endswith("ddim, 2 steps")
    names = sorted(p.name for p in (root / "up").iterdir())
    assert names == ["upscale_grid.png", "upscaled_00000.png", "upscaled_00001.png", "upscaled_00002.png"]
    assert Image.open(root / "up" / "upscaled_00001.png").size == (8, 8)
    code, _, err = run_cli(capsys, "upscale", "--checkpoint", root / "run" / "checkpoints", "--images",
                           root / "low", "--out", root / "up1", "--steps", 2, "--no-progress", "--device", "cpu",
                           "--sampler", "ddpm")
    assert code == 0, err  # image i depends on seed + i only: in a batch of 3 as alone in a batch of 1
    code, _, err = run_cli(capsys, "upscale", "--checkpoint", root / "run" / "checkpoints", "--images",
                           root / "low" / "low_00002.png", "--out", root / "up2", "--steps", 2, "--no-progress",
                           "--device", "cpu", "--seed", 2, "--sampler", "ddpm", "--batch-size", 1)
    assert code == 0, err
    assert (root / "up1" / "upscaled_00002.png").read_bytes() == (root / "up2" / "upscaled_00000.png").read_bytes()
    assert (root / "up1" / "upscaled_00002.png").read_bytes() != (root / "up1" / "upscaled_00001.png").read_bytes()


def test_upscale_grid_rows_are_bilinear_then_upscaled(upscaler, capsys):
    """upscale_grid.png (save_grid: 2-pixel padding): row 0 the inputs upsampled bilinearly, row 1 the
    upscaled PNGs, in the order of the inputs."""
    from diffkit.commands.edit import read_pngs
    from diffkit.images import save_images
    root = upscaler
    code, _, err = run_cli(capsys, "upscale", "--checkpoint", root / "run" / "checkpoints", "--images",
                           root / "low", "--out", root / "grid", "--steps", 2, "--no-progress", "--device", "cpu")
    assert code == 0, err
    grid = png(root / "grid" / "upscale_grid.png")
    assert grid.shape[:2] == (2 * 10 + 2, 3 * 10 + 2)
    low, _ = read_pngs(root / "low", "L")
    save_images(upsample(low, (8, 8)).clamp(-1, 1), root / "bilinear", prefix="b")
    for i in range(3):
        cell = lambda row: grid[2 + 10 * row:10 + 10 * row, 2 + 10 * i:10 + 10 * i]  # noqa: E731
        bilinear, upscaled = png(root / "bilinear" / f"b_{i:05d}.png"), png(root / "grid" / f"upscaled_{i:05d}.png")
        assert not np.array_equal(bilinear, upscaled)
        assert np.array_equal(cell(0)[..., 0] if cell(0).ndim == 3 else cell(0), bilinear)
        assert np.array_equal(cell(1)[..., 0] if cell(1).ndim == 3 else cell(1), upscaled)


def test_cli_noise_level_reaches_the_sampler(upscaler, capsys):
    """--noise-level K: the CLI's PNGs are diffkit.upscale(..., noise_level=K) (clamped, to uint8), not
    those of level 0; the API refuses levels above the checkpoint's super_res_noise and takes numpy integers."""
    import diffkit
    from diffkit.commands.edit import read_pngs
    from diffkit.loading import load_denoiser
    root = upscaler
    code, out, err = run_cli(capsys, "upscale", "--checkpoint", root / "noisy" / "checkpoints", "--images",
                             root / "low", "--out", root / "up3", "--steps", 2, "--no-progress", "--device", "cpu",
                             "--noise-level", 60, "--no-ema")
    assert code == 0 and out.rstrip().endswith("ddim, 2 steps, inputs noised to level 60"), err
    den = load_denoiser(root / "noisy" / "checkpoints" / "latest.safetensors", use_ema=False)  # (the EMA: still
    # the initial weights, whose zero output convolution ignores the input)
    low, _ = read_pngs(root / "low", "L")

    def as_png(level):
        x = diffkit.upscale(den, low, "ddim", 2, seed=0, noise_level=level).clamp(-1, 1)
        return ((x + 1) * 127.5).round().to(torch.uint8)[:, 0].numpy()

    at_60 = as_png(np.int64(60))
    for i in range(3):
        assert np.array_equal(png(root / "up3" / f"upscaled_{i:05d}.png"), at_60[i])
    assert not np.array_equal(at_60, as_png(0))
    with pytest.raises(DiffkitError, match=r"noise_level=101 is not allowed; allowed: 0..100"):
        diffkit.upscale(den, low, "ddim", 2, noise_level=101)


def test_upscale_takes_adaptive_samplers_with_tolerances(upscaler, capsys):
    root = upscaler
    code, out, err = run_cli(capsys, "upscale", "--checkpoint", root / "run" / "checkpoints", "--images",
                             root / "low", "--out", root / "ode", "--sampler", "dpm-adaptive", "--rtol", "0.5",
                             "--atol", "0.5", "--no-progress", "--device", "cpu")
    assert code == 0, err
    assert out.rstrip().endswith("; dpm-adaptive") and "steps" not in out
    for spacing in ("trailing", "leading"):  # the grid reaches the sampler
        code, out, err = run_cli(capsys, "upscale", "--checkpoint", root / "run" / "checkpoints", "--images",
                                 root / "low", "--out", root / spacing, "--spacing", spacing, "--final", "zero",
                                 "--steps", 2, "--no-progress", "--device", "cpu")
        assert code == 0, err
    assert not np.array_equal(png(root / "trailing" / "upscaled_00000.png"),
                              png(root / "leading" / "upscaled_00000.png"))


def test_cli_errors_come_before_any_output(upscaler, tiny_checkpoint, capsys, tmp_path):
    root = upscaler
    ck = root / "run" / "checkpoints"
    cases = [
        (["--checkpoint", tiny_checkpoint, "--images", root / "low"],
         "not a super-resolution model"),
        (["--checkpoint", ck, "--images", root / "run" / "samples"], "give 4x4 PNGs"),
        (["--checkpoint", ck, "--images", tmp_path / "missing"], "does not exist"),
        (["--checkpoint", tmp_path / "none.safetensors", "--images", root / "low"], "does not exist"),
        (["--checkpoint", ck, "--images", root / "low", "--sampler", "nope"], "nope"),
        (["--checkpoint", ck, "--images", root / "low", "--steps", 5000], "5000"),
        (["--checkpoint", ck, "--images", root / "low", "--noise-level", 5], "trained without conditioning"),
        (["--checkpoint", root / "noisy" / "checkpoints", "--images", root / "low", "--noise-level", 101],
         "allowed: 0..100"),
        (["--checkpoint", ck, "--images", root / "low", "--rtol", "0.1"], "--rtol sets the tolerance"),
        (["--checkpoint", ck, "--images", root / "low", "--spacing", "nope"], "nope"),
    ]
    for args, needle in cases:
        code, _, err = run_cli(capsys, "upscale", *args, "--out", tmp_path / "out", "--device", "cpu")
        assert code == 2 and needle in err and err.count("\n") == 1, err
        assert not (tmp_path / "out").exists()
    code, _, err = run_cli(capsys, "sample", "--checkpoint", ck, "--out", tmp_path / "s" / "g.png", "--steps", 2,
                           "--device", "cpu")
    assert code == 2 and "use diffkit upscale" in err and not (tmp_path / "s").exists()
    code, _, err = run_cli(capsys, "train", "--resume", ck / "latest.safetensors", "--steps", "3", "--no-progress",
                           "--no-sample", "--set", "super_res_from=2")
    assert code == 2 and "super_res_from=4, this run has super_res_from=2" in err, err
    code, _, err = run_cli(capsys, "train", "--resume", root / "noisy" / "checkpoints" / "latest.safetensors",
                           "--steps", "3", "--no-progress", "--no-sample", "--set", "super_res_noise=0")
    assert code == 2 and "super_res_noise=100, this run has super_res_noise=0" in err, err
    code, _, err = run_cli(capsys, "train", "--resume", root / "noisy" / "checkpoints" / "latest.safetensors",
                           "--steps", "3", "--no-progress", "--no-sample", "--set", "super_res_noise=50")
    assert code == 2 and "super_res_noise=100, this run has super_res_noise=50" in err, err


def test_upscale_restarts_reach_the_sampler(upscaler, capsys):
    """upscale --sampler restart --restarts T_MIN:T_MAX:K:N (add_solver_flags, as sample has it) writes
    diffkit.upscale(..., "restart", restarts=[...]) from the same seeds; with another sampler it is a one-line
    error that writes nothing."""
    import diffkit
    from diffkit.commands.edit import read_pngs
    from diffkit.loading import load_denoiser
    root = upscaler
    code, out, err = run_cli(capsys, "upscale", "--checkpoint", root / "noisy" / "checkpoints", "--images",
                             root / "low", "--out", root / "restart", "--sampler", "restart", "--restarts",
                             "0.1:1:1:2", "--steps", 4, "--no-ema", "--no-progress", "--device", "cpu")
    assert code == 0, err
    den = load_denoiser(root / "noisy" / "checkpoints" / "latest.safetensors", use_ema=False)
    low, _ = read_pngs(root / "low", "L")

    def as_png(**options):
        x = diffkit.upscale(den, low, "restart", 4, seed=0, **options).clamp(-1, 1)
        return ((x + 1) * 127.5).round().to(torch.uint8)[:, 0].numpy()

    want = as_png(restarts=[(0.1, 1.0, 1, 2)])
    assert not np.array_equal(want, as_png())  # the default intervals give other images
    for i in range(3):
        assert np.array_equal(png(root / "restart" / f"upscaled_{i:05d}.png"), want[i])
    code, _, err = run_cli(capsys, "upscale", "--checkpoint", root / "noisy" / "checkpoints", "--images",
                           root / "low", "--out", root / "refused", "--sampler", "heun", "--restarts", "0.1:1:1:2",
                           "--no-progress", "--device", "cpu")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--restarts sets the intervals of the restart sampler, not of 'heun'; give --sampler restart" in err
    assert not (root / "refused").exists()


def test_upscale_compile_reaches_the_denoiser(upscaler, capsys, monkeypatch):
    """upscale takes --compile as sample, eval and edit do (recorded: compiling takes minutes on a CPU)."""
    from diffkit.denoiser import Denoiser
    modes = []
    monkeypatch.setattr(Denoiser, "compile", lambda self, mode="default", backend="inductor": modes.append(mode))
    code, _, err = run_cli(capsys, "upscale", "--checkpoint", upscaler / "run" / "checkpoints", "--images",
                           upscaler / "low", "--out", upscaler / "compiled", "--steps", 2,
                           "--compile", "reduce-overhead",
                           "--no-progress", "--device", "cpu")
    assert code == 0, err
    assert modes == ["reduce-overhead"]
