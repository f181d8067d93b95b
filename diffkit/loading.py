"""From a checkpoint file to a ready Denoiser (the arrow "checkpoint -> Denoiser" of the design)."""
from __future__ import annotations

from pathlib import Path

from . import checkpoint as ckpt
from .denoiser import Denoiser
from .errors import DiffkitError
from .models.unet import UNet, UNetConfig
from .schedule import NoiseSchedule


def load_model(path: str | Path, use_ema: bool = True, device="cpu"):
    """(U-Net in eval mode, metadata, schedule) from a diffkit checkpoint; EMA weights by default."""
    tensors, meta = ckpt.load_checkpoint(path)
    if "unet" not in meta:
        raise DiffkitError(f"{path} has no model description; is it a diffkit training checkpoint?")
    model = UNet(UNetConfig(**meta["unet"]))
    weights = ckpt.split_prefix(tensors, "model")
    if use_ema:
        ema = ckpt.split_prefix(tensors, "ema")
        weights = {k: ema.get(k, v) for k, v in weights.items()}
    model.load_state_dict(weights)
    model.to(device).eval()
    return model, meta, NoiseSchedule(tensors["schedule.betas"])


def load_denoiser(path: str | Path, use_ema: bool = True, device="cpu") -> Denoiser:
    """A :class:`Denoiser` for a trained checkpoint; ``.model`` and ``.meta`` are attached."""
    model, meta, schedule = load_model(path, use_ema, device)
    d = Denoiser(model, schedule, prediction_type=meta.get("prediction_type", "epsilon"),
                 learned_variance=meta.get("learned_variance", False))
    d.model, d.meta = model, meta
    return d
