"""The network a checkpoint's ``meta["unet"]`` describes: the image U-Net, a DiT, or the 1-D U-Net of time series.

A time-series run (``dataset = "sines"``, docs/data_and_config.md) records
``{"network": "temporal-unet", "in_channels", "model_channels", "channel_mult", "num_res_blocks",
"dropout", "seq_length"}``, plus ``"learned_variance": true`` and ``"num_classes"`` where set (a run with a
learned variance or class labels). A DiT run (``network = "dit"``, docs/models.md) records ``{"network": "dit"}``
plus the fields of :class:`~diffkit.models.dit.DiTConfig`. Every other description is the keyword arguments of
:class:`~diffkit.models.unet.UNetConfig`. These helpers are the one place that tells them apart.
"""
from __future__ import annotations

from typing import Mapping

from torch import nn

from ..errors import DiffkitError

TEMPORAL_UNET = "temporal-unet"
DIT = "dit"
_SERIES_ONLY = ("network", "seq_length")  # description entries that are not TemporalUNetConfig fields


def is_series_model(description: Mapping) -> bool:
    """True for the description of a :class:`~diffkit.models.temporal.TemporalUNet` (series (C, L))."""
    return (description or {}).get("network") == TEMPORAL_UNET


def is_dit(description: Mapping) -> bool:
    """True for the description of a :class:`~diffkit.models.dit.DiT` (images (C, H, W))."""
    return (description or {}).get("network") == DIT


def build_network(description: Mapping) -> nn.Module:
    """The (untrained) network of a description: a TemporalUNet, a DiT or a UNet."""
    if is_series_model(description):
        from .temporal import TemporalUNet, TemporalUNetConfig
        fields = {k: v for k, v in description.items() if k not in _SERIES_ONLY}
        fields["channel_mult"] = tuple(fields["channel_mult"])
        return TemporalUNet(TemporalUNetConfig(**fields))
    if is_dit(description):
        from .dit import DiT, DiTConfig
        return DiT(DiTConfig(**{k: v for k, v in description.items() if k != "network"}))
    if "network" in description:
        raise DiffkitError(f"network={description['network']!r} is not allowed; diffkit knows {TEMPORAL_UNET!r}, "
                           f"{DIT!r} and the image U-Net (no 'network' entry)")
    from .unet import UNet, UNetConfig
    return UNet(UNetConfig(**description))


def sample_shape(description: Mapping) -> tuple[int, ...]:
    """The shape of one sample: (C, L) for a series model, (C, H, W) for an image U-Net."""
    if is_series_model(description):
        return (description["in_channels"], description["seq_length"])
    return (description["in_channels"], description["img_size"], description["img_size"])


def check_image_model(description: Mapping, what: str) -> None:
    """A one-line error where ``what`` works on images and the checkpoint is a time-series model, or a
    super-resolution model (it samples only given a low-resolution image: ``diffkit upscale``)."""
    if is_series_model(description):
        raise DiffkitError(f"{what} works on image models; this checkpoint is a time-series model "
                           f"({description['in_channels']} channels x {description['seq_length']} steps)")
    low = description.get("low_res_size")
    if low is not None:
        raise DiffkitError(f"{what} works on models that sample from noise alone; this checkpoint is a "
                           f"super-resolution model ({low}x{low} -> {description['img_size']}x"
                           f"{description['img_size']}): use diffkit upscale (docs/super_resolution.md)")
