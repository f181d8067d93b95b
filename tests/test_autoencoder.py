"""The latent autoencoder (LDM first stage): shapes, the KL closed form, VQ, the scale factor,
training, checkpoints, errors and the CLI. Tiny configurations, a few seconds in all."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffkit.autoencoder_training import (AutoencoderTrainConfig, adaptive_weight, hinge_d_loss, load_autoencoder,
                                          reconstruction_loss, reconstruction_psnr, save_autoencoder,
                                          train_autoencoder)
from diffkit.cli import main
from diffkit.data import InMemoryImageDataset
from diffkit.errors import DiffkitError
from diffkit.models.autoencoder import (Autoencoder, AutoencoderConfig, DiagonalGaussian, VectorQuantizer,
                                        estimate_scale_factor)

TINY = dict(channel=8, num_res_blocks=1, latent_channels=3, codebook_size=16)


def tiny(regularizer="kl", mult=(1, 2, 2), **kw):
    torch.manual_seed(0)
    return Autoencoder(AutoencoderConfig(channel_mult=list(mult), regularizer=regularizer, **{**TINY, **kw}))


@pytest.mark.parametrize("regularizer", ["kl", "vq"])
@pytest.mark.parametrize("mult,f", [((1, 2, 2), 4), ((1, 2, 2, 4), 8)])
def test_shapes(regularizer, mult, f):
    model = tiny(regularizer, mult, in_channels=2)
    assert model.config.downsampling_factor == f
    assert model.config.latent_shape(32) == (3, 32 // f, 32 // f)
    x = torch.rand(2, 2, 32, 32) * 2 - 1
    z = model.encode_latents(x)
    assert z.shape == (2, 3, 32 // f, 32 // f)
    encoded = model.encode(x)
    if regularizer == "kl":
        assert isinstance(encoded, DiagonalGaussian) and encoded.mean.shape == z.shape
        assert torch.equal(z, encoded.mode())
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        assert torch.equal(model.encode_latents(x, g1, sample=True), model.encode_latents(x, g2, sample=True))
    else:
        assert torch.equal(encoded, z)
    assert model.decode(z).shape == x.shape
    out = model(x, generator=torch.Generator().manual_seed(0))
    assert out.reconstruction.shape == x.shape and out.reg_loss.ndim == 0
    assert (out.codes is not None) == (regularizer == "vq") and (out.posterior is not None) == (regularizer == "kl")


def test_diagonal_gaussian_kl_closed_form_and_torch_distributions():
    torch.manual_seed(1)
    mean, logvar = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    post = DiagonalGaussian(torch.cat([mean, logvar], 1))
    var = logvar.exp()
    closed = 0.5 * (mean ** 2 + var - 1 - logvar).flatten(1).sum(1)
    torch.testing.assert_close(post.kl(), closed)
    q = torch.distributions.Normal(mean, var.sqrt())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    torch.testing.assert_close(post.kl(), torch.distributions.kl_divergence(q, p).flatten(1).sum(1),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(post.std, var.sqrt())
    # logvar is clamped to [-30, 20] as in LDM
    extreme = DiagonalGaussian(torch.cat([mean, torch.full_like(logvar, 50.0)], 1))
    assert torch.all(extreme.logvar == 20.0)
    # samples have the posterior's moments
    many = DiagonalGaussian(torch.cat([torch.full((20000, 1, 1, 1), 1.5),
                                       torch.full((20000, 1, 1, 1), math.log(0.25))], 1))
    s = many.sample(torch.Generator().manual_seed(0))
    assert abs(s.mean().item() - 1.5) < 0.02 and abs(s.std().item() - 0.5) < 0.02


def test_vq_codes_are_nearest_entries_and_straight_through_reaches_encoder():
    torch.manual_seed(2)
    vq = VectorQuantizer(16, 3, beta=0.25)
    nn.init.normal_(vq.codebook.weight)
    z_e = torch.randn(2, 3, 5, 5, requires_grad=True)
    z_q, loss, codes = vq(z_e)
    flat = z_e.detach().permute(0, 2, 3, 1).reshape(-1, 3)
    brute = torch.tensor([min(range(16), key=lambda k: ((v - vq.codebook.weight[k].detach()) ** 2).sum().item())
                          for v in flat]).reshape(2, 5, 5)
    assert torch.equal(codes, brute)
    entries = vq.codebook.weight.detach()[brute].permute(0, 3, 1, 2)
    torch.testing.assert_close(z_q, entries)
    # VQ-VAE eq. 3: codebook term + beta * commitment term (both equal ||z_e - e||^2 in value)
    torch.testing.assert_close(loss, 1.25 * ((z_e.detach() - entries) ** 2).mean())
    # straight through: d z_q / d z_e is the identity
    (z_q * torch.arange(z_q.numel()).reshape(z_q.shape)).sum().backward()
    torch.testing.assert_close(z_e.grad, torch.arange(z_q.numel(), dtype=torch.float32).reshape(z_q.shape))
    # the commitment term pulls z_e, the codebook term pulls the codebook
    vq.zero_grad()
    z_e2 = z_e.detach().clone().requires_grad_(True)
    vq(z_e2)[1].backward()
    torch.testing.assert_close(z_e2.grad, 0.25 * 2 * (z_e2.detach() - entries) / z_e2.numel())
    assert vq.codebook.weight.grad.abs().sum() > 0


def test_vq_gradient_reaches_encoder_of_the_model():
    model = tiny("vq")
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    out = model(x)
    F.l1_loss(out.reconstruction, x).backward()
    assert model.encoder.conv_in.weight.grad is not None and model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.quant_conv.weight.grad.abs().sum() > 0
    z = torch.randn(2, 3, 4, 4)
    snapped = model.quantize(z)
    assert torch.equal(model.quantizer.nearest_codes(snapped), model.quantizer.nearest_codes(z))


class _PoolEncoder(nn.Module):
    """A known linear map: mean = a * avg_pool_f(x) per channel, logvar = 0."""

    def __init__(self, a, f, c):
        super().__init__()
        self.a, self.f, self.c = a, f, c

    def forward(self, x):
        mean = self.a * F.avg_pool2d(x, self.f).repeat(1, self.c, 1, 1)
        return torch.cat([mean, torch.zeros_like(mean)], 1)


def test_scale_factor_is_one_over_latent_std():
    model = tiny("kl")
    model.encoder = _PoolEncoder(3.0, 4, 3)
    model.quant_conv = nn.Identity()
    images = torch.rand(37, 1, 16, 16) * 2 - 1
    expected = 1.0 / (3.0 * F.avg_pool2d(images, 4).repeat(1, 3, 1, 1)).flatten().std().item()
    assert estimate_scale_factor(model, images, batch_size=10) == pytest.approx(expected, rel=1e-6)
    # scaling the encoder by 2 halves the factor; a posterior sample with std 1 adds unit variance
    model.encoder.a = 6.0
    assert estimate_scale_factor(model, images, batch_size=37) == pytest.approx(expected / 2, rel=1e-6)
    big = torch.rand(4000, 1, 4, 4) * 2 - 1
    model.encoder = _PoolEncoder(1.0, 4, 3)
    var_mean = F.avg_pool2d(big, 4).var().item()
    sampled = estimate_scale_factor(model, big, sample=True, generator=torch.Generator().manual_seed(0))
    assert sampled == pytest.approx((1.0 + var_mean) ** -0.5, rel=0.03)


def test_psnr_matches_definition():
    model = tiny("kl")
    images = torch.rand(5, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        rec = model.decode(model.encode_latents(images)).clamp(-1, 1)
    mse = (((rec + 1) / 2 - (images + 1) / 2) ** 2).flatten(1).mean(1)
    expected = (10 * torch.log10(1 / mse)).mean().item()
    assert reconstruction_psnr(model, images, batch_size=2) == pytest.approx(expected, rel=1e-5)


def test_losses_closed_forms():
    x, y = torch.zeros(2, 1, 2, 2), torch.tensor([1.0, -2, 0, 0, 0, 0, 0, 3]).reshape(2, 1, 2, 2)
    assert reconstruction_loss(x, y, "l1", "sum").item() == pytest.approx((3 + 3) / 2)
    assert reconstruction_loss(x, y, "l2", "mean").item() == pytest.approx((1 + 4 + 9) / 8)
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-3.0, 0.0])
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * ((0 + 0.5) / 2 + (0 + 1) / 2))
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    lam = adaptive_weight((3 * w).sum(), (4 * w).sum(), w, 0.5)
    assert lam.item() == pytest.approx(0.5 * (3 * math.sqrt(2)) / (4 * math.sqrt(2) + 1e-4))


@pytest.mark.parametrize("regularizer", ["kl", "vq"])
def test_training_on_a_fixed_batch_reduces_reconstruction_loss(regularizer):
    model = tiny(regularizer)
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    x = F.avg_pool2d(x, 4).repeat_interleave(4, 2).repeat_interleave(4, 3)  # some structure to learn
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)

    def rec_loss():
        with torch.no_grad():
            return F.l1_loss(model.decode(model.encode_latents(x)), x).item()

    before = rec_loss()
    for _ in range(30):
        out = model(x, generator=torch.Generator().manual_seed(0))
        loss = F.l1_loss(out.reconstruction, x) + (1e-6 if regularizer == "kl" else 1.0) * out.reg_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert rec_loss() < 0.6 * before


def _digits_like(n=40, size=16):
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(n, 1, size // 4, size // 4, generator=g) * 255).to(torch.uint8)
    images = images.repeat_interleave(4, 2).repeat_interleave(4, 3).contiguous()
    return InMemoryImageDataset(images, torch.zeros(n, dtype=torch.long), num_classes=1)


@pytest.mark.parametrize("regularizer", ["kl", "vq"])
def test_train_save_load_round_trip_is_bit_exact(tmp_path, regularizer):
    cfg = AutoencoderTrainConfig(steps=3, batch_size=8, device="cpu", out=str(tmp_path / "ae.safetensors"),
                                 regularizer=regularizer, disc_start=1, eval_images=8, scale_images=16, **TINY)
    result = train_autoencoder(cfg, _digits_like(), progress=False)
    assert result.steps == 3 and result.path.exists() and result.psnr_split == "train"
    assert {"rec", "reg", "g", "d", "d_weight", "total"} <= set(result.losses)
    assert math.isfinite(result.psnr) and result.scale_factor > 0
    model, scale = load_autoencoder(result.path)
    assert scale == result.scale_factor and model.config == result.model.config
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model.decode(model.encode_latents(x)), result.model.decode(result.model.encode_latents(x)))
    path2 = save_autoencoder(tmp_path / "again.safetensors", model, 0.5, {"note": "x"})
    model2, scale2 = load_autoencoder(path2)
    assert scale2 == 0.5
    for (k, v), (k2, v2) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(DiffkitError, match="does not exist"):
        load_autoencoder(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DiffkitError) as err:
        load_autoencoder(bad)
    assert "\n" not in str(err.value)
    from diffkit.checkpoint import save_checkpoint
    other = save_checkpoint(tmp_path / "other.safetensors", {"x": torch.zeros(1)}, {"kind": "classifier"})
    with pytest.raises(DiffkitError, match="not an autoencoder checkpoint"):
        load_autoencoder(other)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(regularizer="gauss"), "regularizer"),
    (dict(channel_mult=[]), "channel_mult"),
    (dict(channel_mult=[1, 0]), "channel_mult"),
    (dict(latent_channels=0), "latent_channels"),
    (dict(codebook_size=0), "codebook_size"),
    (dict(commitment_beta=-1.0), "commitment_beta"),
    (dict(channel=2.5), "channel"),
    (dict(attn_middle="yes"), "attn_middle"),
])
def test_bad_config_values_give_one_line_errors(kwargs, pattern):
    with pytest.raises(DiffkitError, match=pattern) as err:
        AutoencoderConfig(**kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(recon_loss="l3"), "recon_loss"),
    (dict(kl_weight=-1.0), "kl_weight"),
    (dict(disc_start=-1), "disc_start"),
    (dict(dataset="fashion-mnist", channel_mult=[1, 2, 2, 4]), "img_size=28"),
    (dict(img_size=20, channel_mult=[1, 2, 2, 4]), "multiple of 8"),
    (dict(lr=0.0), "lr"),
    (dict(logvar_init=25.0), "logvar_init"),
])
def test_bad_train_config_values_give_one_line_errors(kwargs, pattern):
    with pytest.raises(DiffkitError, match=pattern) as err:
        AutoencoderTrainConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_bad_shapes_are_refused():
    model = tiny("kl")
    with pytest.raises(DiffkitError, match="multiples of f=4"):
        model.encode(torch.zeros(1, 1, 18, 18))
    with pytest.raises(DiffkitError, match="latents"):
        model.decode(torch.zeros(1, 5, 4, 4))
    with pytest.raises(DiffkitError, match="VQ"):
        model.quantize(torch.zeros(1, 3, 4, 4))


def test_cli_end_to_end_on_digits(tmp_path, capsys):
    out = tmp_path / "ae.safetensors"
    code = main(["train-autoencoder", "--steps", "2", "--batch-size", "8", "--channel", "8", "--eval-images", "16",
                 "--out", str(out), "--no-progress", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "PSNR" in captured.out and "scale factor" in captured.out
    model, scale = load_autoencoder(out)
    assert model.config.downsampling_factor == 4 and model.config.channel == 8 and scale > 0


@pytest.mark.parametrize("args,pattern", [
    (["--factor", "3"], "factor=3"),
    (["--regularizer", "vqgan"], "regularizer"),
    (["--recon-loss", "huber"], "recon_loss"),
    (["--factor", "8", "--channel-mult", "1,2"], "not both"),
    (["--dataset", "fashion-mnist", "--factor", "8"], "img_size=28"),
    (["--dataset", "mnist", "--data-dir", "/nonexistent/mnist"], "/nonexistent/mnist"),
    (["--device", "bogus"], "device"),
    (["--codebook-size", "16"], "--codebook-size goes with --regularizer vq; this autoencoder is kl"),
    (["--commitment-beta", "0.5"], "--commitment-beta goes with --regularizer vq"),
    (["--regularizer", "vq", "--kl-weight", "1e-3"], "--kl-weight goes with --regularizer kl"),
])
def test_cli_bad_flags_exit_2_with_one_line(args, pattern, tmp_path, capsys):
    code = main(["train-autoencoder", "--steps", "1", "--out", str(tmp_path / "x.safetensors"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and pattern in err, err
    assert not (tmp_path / "x.safetensors").exists()


def test_diagonal_gaussian_matches_diffusers():
    vae = pytest.importorskip("diffusers.models.autoencoders.vae")
    params = torch.randn(2, 6, 3, 3, generator=torch.Generator().manual_seed(4)) * 20  # some logvars clamp
    ours, ref = DiagonalGaussian(params), vae.DiagonalGaussianDistribution(params)
    torch.testing.assert_close(ours.kl(), ref.kl())
    torch.testing.assert_close(ours.std, ref.std)
    torch.testing.assert_close(ours.sample(torch.Generator().manual_seed(5)),
                               ref.sample(torch.Generator().manual_seed(5)))


def test_training_config_model_defaults_are_the_model_configs():
    """The training config's flat model fields take AutoencoderConfig's defaults, not copies."""
    assert AutoencoderTrainConfig().model_config(1) == AutoencoderConfig(in_channels=1)
    a, b = AutoencoderTrainConfig(), AutoencoderTrainConfig()
    a.channel_mult.append(4)
    assert list(b.channel_mult) == list(AutoencoderConfig().channel_mult)


def test_the_latent_decoder_quantises_a_vq_sample_as_ldm_does():
    """A diffusion sample is a free latent: LDM snaps it to the codebook (nearest entries) before
    decoding; the frozen decoder of a VQ latent model must do the same, a KL one decodes as given."""
    from diffkit.latent import FrozenAutoencoder
    vq = tiny("vq")
    nn.init.normal_(vq.quantizer.codebook.weight)
    frozen = FrozenAutoencoder(vq, scale_factor=0.5)
    z = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    free = z / 0.5
    flat = free.permute(0, 2, 3, 1).reshape(-1, 3)
    nearest = torch.cdist(flat, vq.quantizer.codebook.weight.detach()).argmin(1)
    snapped = vq.quantizer.codebook.weight.detach()[nearest].reshape(2, 4, 4, 3).permute(0, 3, 1, 2)
    with torch.no_grad():
        torch.testing.assert_close(frozen.decode(z), vq.decode(snapped))
        assert (frozen.decode(z) - vq.decode(free)).abs().max() > 1e-3
        kl = tiny("kl")
        torch.testing.assert_close(FrozenAutoencoder(kl, 0.5).decode(z), kl.decode(free))


def test_codebook_usage_counts_the_codes_chosen_and_their_perplexity(monkeypatch):
    """Codes 0, 0, 1, 2 over four positions: 3 of 4 entries used, p = (1/2, 1/4, 1/4, 0),
    perplexity exp(H) = exp(ln 2 / 2 + ln 4 / 2) = 2 sqrt 2."""
    from diffkit.autoencoder_training import codebook_usage
    model = Autoencoder(AutoencoderConfig(in_channels=1, regularizer="vq", **{**TINY, "codebook_size": 4}))
    with torch.no_grad():
        model.quantizer.codebook.weight.copy_(torch.eye(4, 3) * 10)  # entry k: 10 e_k (entry 3: zero)
    z_e = torch.tensor([[10.0, 0, 0], [9.0, 0, 0], [0, 10.0, 0], [0, 0, 11.0]]).T.reshape(1, 3, 2, 2)
    monkeypatch.setattr(model, "_moments", lambda x: z_e.expand(x.shape[0], -1, -1, -1))
    usage = codebook_usage(model, torch.zeros(2, 1, 8, 8))
    assert usage["used"] == 3 and usage["size"] == 4
    assert usage["perplexity"] == pytest.approx(2 * math.sqrt(2), rel=1e-12)
    with pytest.raises(DiffkitError, match="VQ"):
        codebook_usage(Autoencoder(AutoencoderConfig(in_channels=1, **TINY)), torch.zeros(1, 1, 8, 8))


def test_the_psnr_and_codebook_measurements_build_no_graph(monkeypatch):
    """They run after training, with the parameters still requiring gradients: without no_grad each
    evaluation batch kept its graph (memory growing with --eval-images)."""
    from diffkit.autoencoder_training import codebook_usage, reconstruction_psnr
    model = Autoencoder(AutoencoderConfig(in_channels=1, regularizer="vq", **TINY))
    seen = []
    decode = model.decode
    monkeypatch.setattr(model, "decode", lambda z: seen.append(torch.is_grad_enabled()) or decode(z))
    reconstruction_psnr(model, torch.zeros(3, 1, 8, 8), batch_size=1)
    assert seen == [False] * 3
    moments = model._moments
    monkeypatch.setattr(model, "_moments", lambda x: seen.append(torch.is_grad_enabled()) or moments(x))
    codebook_usage(model, torch.zeros(2, 1, 8, 8), batch_size=1)
    assert seen[3:] == [False, False]
