"""A small 1-D U-Net denoiser for time series ``(B, C, L)``: ``net(x, t, y=None) -> (B, C, L)`` (``(B, 2C, L)``
with a learned variance).

The DDPM U-Net (Ho et al. 2020, Appendix B) with 1-D convolutions over time: residual blocks
(GroupNorm, SiLU, conv k=3, the timestep embedding added per channel, GroupNorm, SiLU, dropout,
zero-initialised conv), stride-2 downsampling, nearest upsampling plus a conv, skip connections
between levels. No attention: time series of tens of steps need none. It fits
``diffkit.Denoiser(net, schedule, prediction_type=..., learned_variance=...)`` and so every sampler.

The two options of the image U-Net (:class:`~diffkit.models.unet.UNetConfig`), with its code:
``learned_variance`` also outputs v of Improved DDPM (Nichol & Dhariwal 2021, eq. 15), C more
channels after the prediction, for the hybrid loss (eq. 16) and the bound of learned variances;
``num_classes`` adds a class embedding of ``num_classes + 1`` rows to the timestep embedding, the
last the learned null class of classifier-free guidance (Ho & Salimans 2022), which ``y=None`` means
(:func:`~diffkit.models.unet.add_class_embedding`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import DiffkitError, check_range
from .layers import norm_groups, timestep_embedding, zero_module
from .unet import add_class_embedding, broadcast_time


@dataclass(frozen=True)
class TemporalUNetConfig:
    """Channels of the data, base width, width multiplier per level, residual blocks per level, dropout;
    ``learned_variance`` (output [eps, v], 2C channels) and ``num_classes`` (None: unconditional) as
    :class:`~diffkit.models.unet.UNetConfig`'s."""

    in_channels: int = 5
    model_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    dropout: float = 0.0
    learned_variance: bool = False
    num_classes: int | None = None

    @property
    def output_channels(self) -> int:
        """Channels the network returns (doubled with a learned variance)."""
        return 2 * self.in_channels if self.learned_variance else self.in_channels


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(norm_groups(channels), channels, eps=1e-5)


class _ResBlock1d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float):
        super().__init__()
        self.in_layers = nn.Sequential(_norm(in_channels), nn.SiLU(),
                                       nn.Conv1d(in_channels, out_channels, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))
        self.out_layers = nn.Sequential(_norm(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        zero_module(nn.Conv1d(out_channels, out_channels, 3, padding=1)))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv1d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x) + self.emb(emb)[:, :, None]
        return self.skip(x) + self.out_layers(h)


class TemporalUNet(nn.Module):
    """1-D U-Net over time; series lengths must be multiples of 2^(levels - 1)."""

    def __init__(self, config: TemporalUNetConfig = TemporalUNetConfig()):
        super().__init__()
        check_range("in_channels", config.in_channels, 1, None, integer=True)
        check_range("model_channels", config.model_channels, 1, None, integer=True)
        check_range("num_res_blocks", config.num_res_blocks, 1, None, integer=True)
        check_range("dropout", config.dropout, 0.0, 1.0, high_inclusive=False)
        if not isinstance(config.learned_variance, bool):
            raise DiffkitError(f"learned_variance={config.learned_variance!r} is not allowed; give True or False")
        if config.num_classes is not None:
            check_range("num_classes", config.num_classes, 1, None, integer=True)
        if not config.channel_mult:
            raise DiffkitError("channel_mult=() is not allowed; give at least one level, e.g. (1, 2, 2)")
        self.config = config
        mc = config.model_channels
        emb_dim = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_embed = nn.Embedding(config.num_classes + 1, emb_dim) if config.num_classes is not None else None
        self.conv_in = nn.Conv1d(config.in_channels, mc, 3, padding=1)
        self.down = nn.ModuleList()
        widths, width = [mc], mc
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                self.down.append(_ResBlock1d(width, mult * mc, emb_dim, config.dropout))
                width = mult * mc
                widths.append(width)
            if level < len(config.channel_mult) - 1:
                self.down.append(nn.Conv1d(width, width, 3, stride=2, padding=1))
                widths.append(width)
        self.middle = nn.ModuleList([_ResBlock1d(width, width, emb_dim, config.dropout) for _ in range(2)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for _ in range(config.num_res_blocks + 1):
                self.up.append(_ResBlock1d(width + widths.pop(), mult * mc, emb_dim, config.dropout))
                width = mult * mc
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
                self.up.append(nn.Conv1d(width, width, 3, padding=1))
        self.out = nn.Sequential(_norm(width), nn.SiLU(),
                                 zero_module(nn.Conv1d(width, config.output_channels, 3, padding=1)))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        factor = 2 ** (len(self.config.channel_mult) - 1)
        if x.ndim != 3 or x.shape[1] != self.config.in_channels or x.shape[2] % factor:
            raise DiffkitError(f"series of shape {tuple(x.shape)} are not allowed; expected (batch, "
                               f"{self.config.in_channels}, length) with length a multiple of {factor}")
        t = broadcast_time(t, x.shape[0], x.device)  # one shared rule (and error) with the image U-Net
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(x.dtype))
        emb = add_class_embedding(emb, self.class_embed, y, self.config.num_classes, "1-D U-Net")
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, _ResBlock1d) else layer(h)
            skips.append(h)
        for layer in self.middle:
            h = layer(h, emb)
        for layer in self.up:
            h = layer(torch.cat([h, skips.pop()], dim=1), emb) if isinstance(layer, _ResBlock1d) else layer(h)
        return self.out(h)

