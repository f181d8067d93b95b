"""Noisy-image classifier for classifier guidance (Dhariwal & Nichol 2021, Section 4.1).

"The downsampling trunk of the UNet model with an attention pool at the 8x8 layer to produce
the final output": the U-Net's input convolution, down path and middle block (shared with
:class:`~diffkit.models.unet.UNet` through :mod:`diffkit.models.layers`), conditioned on the
timestep, then GroupNorm + SiLU and attention pooling at the lowest resolution
(``img_size / 2**(len(channel_mult)-1)``; 8x8 for a 32x32 input with four levels).
Its log-softmax gradient w.r.t. x gives the guidance term of ADM Algorithms 1 and 2.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DiffkitError, check_range
from .layers import (AttentionPool2d, TimeEmbedding, TrunkConfig, attention_heads, build_down_path,
                     build_middle, group_norm, num_parameters, to_compute_layout,
                     use_memory_format)
from .unet import broadcast_time

__all__ = ["ClassifierConfig", "EncoderClassifier"]


@dataclass
class ClassifierConfig(TrunkConfig):
    """Settings of :class:`EncoderClassifier`: the trunk settings plus ``num_classes`` (>= 2)."""

    num_classes: int = 10

    def __post_init__(self):
        super().__post_init__()
        check_range("num_classes", self.num_classes, 2, integer=True)


class EncoderClassifier(nn.Module):
    """Timestep-conditioned classifier ``forward(x, t) -> logits (B, num_classes)`` (ADM Sec. 4.1)."""

    def __init__(self, config: ClassifierConfig | None = None, **overrides):
        super().__init__()
        if config is None:
            config = ClassifierConfig(**overrides)
        elif overrides:
            raise DiffkitError("pass either a ClassifierConfig or keyword settings, not both "
                               f"(got {sorted(overrides)})")
        self.config = cfg = config
        emb_dim = 4 * cfg.channel
        self.time_embed = TimeEmbedding(cfg.channel, emb_dim)
        self.input_conv = nn.Conv2d(cfg.in_channels, cfg.channel, 3, padding=1)
        self.down, _ = build_down_path(cfg, emb_dim)
        self.middle = build_middle(cfg, emb_dim)
        width = cfg.level_channels()[-1]
        self.out_norm = group_norm(width)
        heads = attention_heads(width, cfg.num_heads, cfg.head_channels)
        self.pool = AttentionPool2d(cfg.img_size // 2 ** (len(cfg.channel_mult) - 1), width, cfg.num_classes, heads)
        use_memory_format(self)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels or x.shape[2] != cfg.img_size or x.shape[3] != cfg.img_size:
            raise DiffkitError(f"x has shape {tuple(x.shape)}; allowed: (batch, {cfg.in_channels}, "
                               f"{cfg.img_size}, {cfg.img_size})")
        emb = F.silu(self.time_embed(broadcast_time(t, x.shape[0], x.device)))
        h = self.input_conv(to_compute_layout(x, self.memory_format))
        for block in self.down:
            h = block(h, emb)
        h = self.middle(h, emb)
        return self.pool(self.out_norm.forward_silu(h))

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of scalar parameters."""
        return num_parameters(self, trainable_only)
