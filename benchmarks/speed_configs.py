"""Network configurations shared by the speed benchmarks against diffusers (issue 8).

Each entry gives diffkit's U-Net settings (seed ``modelConfig`` key names); :func:`diffusers_unet`
builds diffusers' ``UNet2DModel`` of the same shape: the same channels per level, residual blocks
per level (one more on the way up), single-head self-attention at the same levels and in the
middle, stride-2 convolution downsampling, nearest x2 + convolution upsampling, the sinusoidal
time embedding (cos first) through a 2-layer MLP of width ``4 * channel``. The parameter counts
agree exactly (the benchmarks print both).

``seed``: the seed 000 configuration (32x32x3, channel 128, mult [1, 2, 3, 4], attention at
level 2 = 8x8, 2 residual blocks, dropout 0.15; 82,958,979 parameters).
``cifar10``: DDPM's CIFAR-10 network (Ho et al. 2020, App. B: channel 128, mult [1, 2, 2, 2],
attention at 16x16, 2 residual blocks, dropout 0.1; 35.7M parameters).
``mnist``: the small MNIST network of ``benchmarks/mnist_quality.py`` (28x28x1, channel 32,
mult [1, 2, 2], attention at level 1 = 14x14, dropout 0.1) with 2 residual blocks per level
instead of that script's 1 (1,623,169 parameters). diffkit's GroupNorm keeps >= 4 channels per
group (8 groups at 32 channels, 16 at 64) while diffusers has one group count for the whole
network (8 here); the parameter count and the arithmetic are the same.
"""
from __future__ import annotations

from diffkit.models.layers import norm_groups

CONFIGS = {
    "seed": {"channel": 128, "channel_mult": [1, 2, 3, 4], "attn": [2], "num_res_blocks": 2,
             "dropout": 0.15, "img_size": 32, "in_channels": 3},
    "cifar10": {"channel": 128, "channel_mult": [1, 2, 2, 2], "attn": [1], "num_res_blocks": 2,
                "dropout": 0.1, "img_size": 32, "in_channels": 3},
    "mnist": {"channel": 32, "channel_mult": [1, 2, 2], "attn": [1], "num_res_blocks": 2,
              "dropout": 0.1, "img_size": 28, "in_channels": 1},
}


def diffusers_unet(cfg: dict):
    """diffusers' ``UNet2DModel`` with the shape of diffkit config ``cfg``."""
    from diffusers import UNet2DModel

    levels = len(cfg["channel_mult"])
    widths = tuple(cfg["channel"] * m for m in cfg["channel_mult"])
    down = tuple("AttnDownBlock2D" if level in cfg["attn"] else "DownBlock2D" for level in range(levels))
    up = tuple("AttnUpBlock2D" if level in cfg["attn"] else "UpBlock2D" for level in reversed(range(levels)))
    return UNet2DModel(
        sample_size=cfg["img_size"], in_channels=cfg["in_channels"], out_channels=cfg["in_channels"],
        block_out_channels=widths, layers_per_block=cfg["num_res_blocks"], dropout=cfg["dropout"],
        attention_head_dim=None, norm_num_groups=norm_groups(cfg["channel"]),
        down_block_types=down, up_block_types=up)


def diffkit_unet(cfg: dict):
    """diffkit's ``UNet`` of config ``cfg``."""
    from diffkit.models import UNet, UNetConfig
    return UNet(UNetConfig(**cfg))
