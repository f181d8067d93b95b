"""The latent autoencoder of latent diffusion (Rombach et al. 2022, "LDM", Sec. 3.1 and App. G).

An encoder E maps an image x (C, H, W) to a latent z = E(x) of shape (c, H/f, W/f), with the
downsampling factor f = 2**(len(channel_mult) - 1); a decoder D maps it back, x_hat = D(z).
Diffusion then runs on z. The network follows LDM's / Stable Diffusion's first stage
(``ldm/modules/diffusionmodules/model.py``: ``Encoder`` / ``Decoder``), built from the blocks in
:mod:`diffkit.models.layers`; it is not weight-compatible with it (its stride-2 convolutions pad
1 on every side where LDM pads (0, 1, 0, 1), its GroupNorm has ``norm_groups`` groups and eps
1e-5 where LDM has 32 and 1e-6, and each residual block's second conv starts at zero). Stable
Diffusion folders use diffusers' own ``AutoencoderKL`` (:mod:`diffkit.interop.stable_diffusion`):

- encoder: 3x3 conv in; per level ``i`` ``num_res_blocks`` residual blocks (GroupNorm, SiLU,
  3x3 conv; no time embedding) at ``channel * channel_mult[i]`` channels, then a stride-2 conv
  down (not after the last level); middle ResBlock - self-attention - ResBlock (LDM's
  ``attn_middle``); GroupNorm, SiLU, 3x3 conv out to ``2 * latent_channels`` (KL) or
  ``latent_channels`` (VQ), then LDM's 1x1 ``quant_conv``;
- decoder: LDM's 1x1 ``post_quant_conv``; 3x3 conv in; middle ResBlock - attention - ResBlock;
  per level from the lowest resolution up ``num_res_blocks + 1`` residual blocks then
  nearest-x2 + 3x3 conv up; GroupNorm, SiLU, 3x3 conv out to the image channels.

Two regularisers of the latent space (LDM Sec. 3.1):

``kl``  the encoder gives a diagonal Gaussian posterior q(z|x) = N(mu, diag sigma^2) (LDM's
        ``DiagonalGaussianDistribution``, logvar clamped to [-30, 20]); the regulariser is the
        KL divergence to N(0, I) (Kingma & Welling 2014, App. B):
        KL = 0.5 * sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2), one value per sample.
``vq``  z_e = E(x) is replaced by its nearest codebook entry, z_q = e_k with
        k = argmin_j ||z_e - e_j||^2 (VQ-VAE, van den Oord et al. 2017, eq. 1-2), gradients copied
        straight through to the encoder (z_e + sg[z_q - z_e], Sec. 3.2), and the regulariser is
        VQ-VAE eq. 3 without its reconstruction term:
        ||sg[z_e] - e||^2 + beta * ||z_e - sg[e]||^2 (codebook + commitment loss, means over entries).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DiffkitError, check_choice, check_positive_int_list, check_range
from ..noise import GeneratorArg, randn_like
from .layers import (AttentionBlock, BlockChain, Downsample, ResBlock, Upsample, evaluating, group_norm,
                     to_compute_layout, use_memory_format)

__all__ = ["AutoencoderConfig", "DiagonalGaussian", "VectorQuantizer", "AutoencoderOutput", "Autoencoder",
           "estimate_scale_factor", "LOGVAR_MIN", "LOGVAR_MAX"]

REGULARIZERS = ("kl", "vq")
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # LDM's DiagonalGaussianDistribution clamp


@dataclass
class AutoencoderConfig:
    """Shape of the autoencoder (names follow LDM's ``ddconfig`` where they exist).

    in_channels: image channels. channel: base width (LDM ``ch``). channel_mult: width multiplier per
    level; the downsampling factor is ``f = 2 ** (len(channel_mult) - 1)`` ([1, 2, 2] -> f=4,
    [1, 2, 2, 4] -> f=8). num_res_blocks: residual blocks per level in the encoder (the decoder has
    one more, as LDM). latent_channels: channels c of the latent (LDM ``z_channels`` = ``embed_dim``).
    regularizer: ``kl`` or ``vq``. codebook_size: VQ codebook entries K. commitment_beta: beta of
    VQ-VAE eq. 3. attn_middle: self-attention between the two middle residual blocks.
    """

    in_channels: int = 1
    channel: int = 32
    channel_mult: Sequence[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 1
    latent_channels: int = 4
    regularizer: str = "kl"
    codebook_size: int = 256
    commitment_beta: float = 0.25
    attn_middle: bool = True

    def __post_init__(self):
        check_range("in_channels", self.in_channels, 1, integer=True)
        check_range("channel", self.channel, 1, integer=True)
        self.channel_mult = check_positive_int_list("channel_mult", self.channel_mult)
        check_range("num_res_blocks", self.num_res_blocks, 1, integer=True)
        check_range("latent_channels", self.latent_channels, 1, integer=True)
        check_choice("regularizer", self.regularizer, REGULARIZERS)
        check_range("codebook_size", self.codebook_size, 1, integer=True)
        check_range("commitment_beta", self.commitment_beta, 0.0)
        if not isinstance(self.attn_middle, bool):
            raise DiffkitError(f"attn_middle={self.attn_middle!r} must be true or false")

    @property
    def downsampling_factor(self) -> int:
        """f = 2 ** (number of levels - 1): each level but the last halves the resolution."""
        return 2 ** (len(self.channel_mult) - 1)

    def latent_shape(self, img_size: int) -> tuple[int, int, int]:
        """(latent_channels, img_size // f, img_size // f); one-line error if f does not divide it."""
        check_range("img_size", img_size, 1, integer=True)
        f = self.downsampling_factor
        if img_size % f:
            raise DiffkitError(f"img_size={img_size} is not allowed with downsampling factor f={f} "
                               f"(channel_mult={self.channel_mult}); use a multiple of {f}")
        return (self.latent_channels, img_size // f, img_size // f)


# --------------------------------------------------------------------------- the two posteriors
class DiagonalGaussian:
    """q(z | x) = N(mean, diag exp(logvar)) from ``parameters`` = cat([mean, logvar], dim=1).

    ``logvar`` is clamped to [-30, 20] (LDM). :meth:`kl` is the KL divergence to N(0, I) summed
    over all latent entries (Kingma & Welling 2014, App. B), one value per sample (shape (B,)).
    """

    def __init__(self, parameters: torch.Tensor):
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, LOGVAR_MIN, LOGVAR_MAX)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: GeneratorArg = None) -> torch.Tensor:
        """z = mean + std * eps, eps ~ N(0, I) (reparameterisation, Kingma & Welling 2014, eq. 10);
        ``generator``: None, one CPU generator or one per sample (see :mod:`diffkit.noise`)."""
        return self.mean + self.std * randn_like(self.mean, generator)

    def mode(self) -> torch.Tensor:
        """The posterior mean (its mode)."""
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)) = 0.5 * sum(mean^2 + var - 1 - logvar) per sample, shape (B,)."""
        dims = tuple(range(1, self.mean.ndim))
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=dims)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook lookup with the straight-through estimator (VQ-VAE, Sec. 3.1-3.2).

    ``forward(z_e)`` -> ``(z_q, loss, codes)``: ``codes`` (B, h, w) are argmin_k ||z_e - e_k||^2
    (eq. 2), ``z_q`` equals e_codes in value with the gradient of z_e (straight through), and
    ``loss = mean((sg[z_e] - e)^2) + beta * mean((z_e - sg[e])^2)`` (eq. 3, codebook + commitment).
    The codebook starts uniform in [-1/K, 1/K] (taming-transformers' ``VectorQuantizer``).
    """

    def __init__(self, codebook_size: int, dim: int, beta: float = 0.25):
        super().__init__()
        self.codebook_size, self.dim, self.beta = codebook_size, dim, beta
        self.codebook = nn.Embedding(codebook_size, dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    def nearest_codes(self, z_e: torch.Tensor) -> torch.Tensor:
        """argmin_k ||z_e[b, :, i, j] - e_k||^2 for every position, shape (B, h, w)."""
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, self.dim).float()
        book = self.codebook.weight.float()
        dist = flat.pow(2).sum(1, keepdim=True) - 2.0 * flat @ book.t() + book.pow(2).sum(1)[None, :]
        return dist.argmin(dim=1).reshape(z_e.shape[0], z_e.shape[2], z_e.shape[3])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codebook entries for ``codes`` (B, h, w) as a latent (B, dim, h, w)."""
        return self.codebook(codes).permute(0, 3, 1, 2).contiguous()

    def forward(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        codes = self.nearest_codes(z_e)
        e = self.lookup(codes).to(z_e.dtype)
        loss = F.mse_loss(e, z_e.detach()) + self.beta * F.mse_loss(z_e, e.detach())
        z_q = z_e + (e - z_e).detach()
        return z_q, loss, codes


# --------------------------------------------------------------------------- the network
@dataclass
class AutoencoderOutput:
    """What :meth:`Autoencoder.forward` returns.

    reconstruction: D(z) (image scale, not clamped). reg_loss: the batch mean of the KL per sample
    (KL) or the VQ loss (VQ). latents: the z that was decoded (a posterior sample for KL, z_q for
    VQ). posterior: the :class:`DiagonalGaussian` (KL only). codes: codebook indices (VQ only).
    """

    reconstruction: torch.Tensor
    reg_loss: torch.Tensor
    latents: torch.Tensor
    posterior: Optional[DiagonalGaussian] = None
    codes: Optional[torch.Tensor] = None


def _middle(ch: int, attn: bool) -> BlockChain:
    """ResBlock - self-attention - ResBlock (LDM ``mid`` block), no embedding."""
    layers = [ResBlock(ch, ch, None)]
    if attn:
        layers.append(AttentionBlock(ch, 1))
    layers.append(ResBlock(ch, ch, None))
    return BlockChain(layers)


def _output_head(ch: int, out_channels: int) -> nn.Sequential:
    """GroupNorm - SiLU - 3x3 conv (LDM ``norm_out`` / ``conv_out``)."""
    return nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))


class Encoder(nn.Module):
    """x (B, C, H, W) -> (B, out_channels, H/f, W/f) (LDM ``Encoder``, see the module docstring)."""

    def __init__(self, cfg: AutoencoderConfig, out_channels: int):
        super().__init__()
        widths = [cfg.channel * m for m in cfg.channel_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.channel, 3, padding=1)
        blocks, ch = [], cfg.channel
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(ch, width, None))
                ch = width
            if level != len(widths) - 1:
                blocks.append(Downsample(ch))
        self.down = BlockChain(blocks)
        self.middle = _middle(ch, cfg.attn_middle)
        self.out = _output_head(ch, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.middle(self.down(self.conv_in(x), None), None))


class Decoder(nn.Module):
    """z (B, latent_channels, h, w) -> (B, C, h*f, w*f) (LDM ``Decoder``, see the module docstring)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        widths = [cfg.channel * m for m in cfg.channel_mult]
        ch = widths[-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch, 3, padding=1)
        self.middle = _middle(ch, cfg.attn_middle)
        blocks = []
        for level in reversed(range(len(widths))):
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock(ch, widths[level], None))
                ch = widths[level]
            if level != 0:
                blocks.append(Upsample(ch))
        self.up = BlockChain(blocks)
        self.out = _output_head(ch, cfg.in_channels)

    @property
    def last_layer(self) -> nn.Parameter:
        """Weight of the final convolution (for the adaptive GAN weight of Esser et al. 2021, eq. 7)."""
        return self.out[-1].weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.up(self.middle(self.conv_in(z), None), None))


class Autoencoder(nn.Module):
    """LDM's first stage: ``AutoencoderKL`` (regularizer ``kl``) or ``VQModel`` (``vq``)."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        c = config.latent_channels
        moments = 2 * c if config.regularizer == "kl" else c
        self.encoder = Encoder(config, moments)
        self.quant_conv = nn.Conv2d(moments, moments, 1)
        self.quantizer = (VectorQuantizer(config.codebook_size, c, config.commitment_beta)
                          if config.regularizer == "vq" else None)
        self.post_quant_conv = nn.Conv2d(c, c, 1)
        self.decoder = Decoder(config)
        use_memory_format(self)

    @property
    def downsampling_factor(self) -> int:
        return self.config.downsampling_factor

    def _check_input(self, x: torch.Tensor) -> None:
        f = self.config.downsampling_factor
        if x.ndim != 4 or x.shape[1] != self.config.in_channels or x.shape[2] % f or x.shape[3] % f:
            raise DiffkitError(f"the autoencoder takes images (B, {self.config.in_channels}, H, W) with H and W "
                               f"multiples of f={f}; got shape {tuple(x.shape)}")

    def _moments(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.quant_conv(self.encoder(to_compute_layout(x, self.memory_format)))

    def encode(self, x: torch.Tensor) -> DiagonalGaussian | torch.Tensor:
        """KL: the posterior q(z|x) as a :class:`DiagonalGaussian`; VQ: the quantised latent z_q."""
        moments = self._moments(x)
        if self.quantizer is None:
            return DiagonalGaussian(moments)
        return self.quantizer(moments)[0]

    def encode_latents(self, x: torch.Tensor, generator: GeneratorArg = None, sample: bool = False) -> torch.Tensor:
        """The latent a diffusion model is trained on: KL: the posterior mean (or a sample if
        ``sample``); VQ: z_q (deterministic; ``generator``/``sample`` are ignored)."""
        encoded = self.encode(x)
        if isinstance(encoded, DiagonalGaussian):
            return encoded.sample(generator) if sample else encoded.mode()
        return encoded

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """VQ only: snap a latent (e.g. one a diffusion model produced) to its nearest codebook entries."""
        if self.quantizer is None:
            raise DiffkitError("quantize() needs a VQ autoencoder (regularizer='vq'); this one is 'kl'")
        return self.quantizer.lookup(self.quantizer.nearest_codes(z)).to(z.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """x_hat = D(z) in the image scale [-1, 1] (not clamped). A VQ latent is decoded as given;
        call :meth:`quantize` first to snap a free latent to the codebook, as LDM's VQ decoder does."""
        c = self.config.latent_channels
        if z.ndim != 4 or z.shape[1] != c:
            raise DiffkitError(f"decode takes latents (B, {c}, h, w); got shape {tuple(z.shape)}")
        return self.decoder(self.post_quant_conv(to_compute_layout(z, self.memory_format)))

    def forward(self, x: torch.Tensor, generator: GeneratorArg = None) -> AutoencoderOutput:
        """Encode, regularise, decode. KL: z is a posterior sample (as LDM trains), reg_loss the
        batch mean of the per-sample KL; VQ: z = z_q (straight through), reg_loss the VQ loss."""
        moments = self._moments(x)
        if self.quantizer is None:
            posterior = DiagonalGaussian(moments)
            z = posterior.sample(generator)
            return AutoencoderOutput(self.decode(z), posterior.kl().mean(), z, posterior=posterior)
        z, loss, codes = self.quantizer(moments)
        return AutoencoderOutput(self.decode(z), loss, z, codes=codes)


@torch.no_grad()
def estimate_scale_factor(autoencoder: Autoencoder, images: torch.Tensor, batch_size: int = 256,
                          sample: bool = False, generator: GeneratorArg = None) -> float:
    """1 / std of the latents over ``images`` (all entries pooled), so that scaled latents have unit
    variance: LDM's "rescaling of the latent space" (Rombach et al. 2022, Sec. 4.3.2 and App. G;
    Stable Diffusion's 0.18215 is this number for its KL-f8 autoencoder).

    Latents are :meth:`Autoencoder.encode_latents` (the KL posterior mean unless ``sample``).
    The std is the unbiased one over every latent entry, accumulated in float64 by batches.
    """
    check_range("batch_size", batch_size, 1, integer=True)
    if images.shape[0] < 1:
        raise DiffkitError("estimate_scale_factor needs at least one image")
    device = next(autoencoder.parameters()).device
    total = total_sq = 0.0
    count = 0
    with evaluating(autoencoder):
        for start in range(0, images.shape[0], batch_size):
            z = autoencoder.encode_latents(images[start:start + batch_size].to(device), generator=generator,
                                           sample=sample).detach().cpu().double()  # mps has no float64
            total += z.sum().item()
            total_sq += z.pow(2).sum().item()
            count += z.numel()
    if count < 2:
        raise DiffkitError("estimate_scale_factor needs at least two latent entries")
    mean = total / count
    var = max(total_sq - count * mean * mean, 0.0) / (count - 1)
    if var <= 0.0:
        raise DiffkitError("the latents have zero variance over these images; cannot estimate a scale factor")
    return float(var ** -0.5)
