"""Latent diffusion plumbing (Rombach et al. 2022, Sec. 3-4): the diffusion model runs on
z = s * E(x), with E the frozen autoencoder's encoder and s its scale factor (1 / std of the
latents, Sec. 4.3.2 and App. G: "we rescale the latents ... by a single scalar"); images come back
as x = D(z / s).

* :class:`FrozenAutoencoder` - a trained autoencoder and its scale factor, frozen (eval, no
  gradients), with its weights as checkpoint tensors ``autoencoder.*`` plus metadata (config,
  scale factor, source path and the source file's sha256), so that a latent diffusion
  checkpoint decodes on its own.
* :class:`LatentDataset` - a data set encoded once, at the start of training: (z, label) pairs.
  The encoder is deterministic here (the posterior mean for a KL autoencoder,
  ``sample=False``), so the latents do not change from epoch to epoch.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch.utils.data import Dataset

from . import checkpoint as ckpt
from .errors import DiffkitError
from .images import as_float_images


def file_sha256(path) -> str:
    return ckpt.hash_file(path, hashlib.sha256())[0].hexdigest()


class FrozenAutoencoder:
    """``encode(x) = s * E(x)`` and ``decode(z) = D(z / s)`` (VQ: ``D(quantize(z / s))``) with
    gradients off.

    Args:
        model: a :class:`diffkit.models.autoencoder.Autoencoder`.
        scale_factor: s (from :func:`diffkit.autoencoder_training.estimate_scale_factor`).
        source: where it was read from (for information), ``sha256``: that file's digest.
    """

    def __init__(self, model: torch.nn.Module, scale_factor: float, source: Optional[str] = None,
                 sha256: Optional[str] = None):
        self.model = model.eval().requires_grad_(False)
        self.scale_factor = float(scale_factor)
        self.source, self.sha256 = source, sha256

    @classmethod
    def from_file(cls, path, device="cpu") -> "FrozenAutoencoder":
        from .autoencoder_training import load_autoencoder
        path = Path(path)
        if path.is_dir() or not path.is_file():
            raise DiffkitError(f"autoencoder={str(path)!r} is not a file; give a checkpoint written by "
                               f"'diffkit train-autoencoder'")
        model, scale = load_autoencoder(path, device)
        return cls(model, scale, str(path), file_sha256(path))

    @property
    def device(self):
        return next(self.model.parameters()).device

    def latent_shape(self, img_size: int) -> tuple:
        return tuple(self.model.config.latent_shape(img_size))

    @property
    def image_channels(self) -> int:
        """The channels of the images E takes."""
        return int(self.model.config.in_channels)

    @property
    def downsampling_factor(self) -> int:
        """f: an H x W image has an (H / f) x (W / f) latent."""
        return int(self.model.config.downsampling_factor)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator=None, sample: bool = False) -> torch.Tensor:
        """z = s * E(x) for images in [-1, 1]: the posterior mean (default, what a latent model is
        trained on, :func:`encode_dataset`), or with ``sample`` a draw mean + std * eps from
        ``generator`` (LDM's ``DiagonalGaussianDistribution.sample``); a VQ code is deterministic."""
        return self.scale_factor * self.model.encode_latents(images.to(self.device), generator, sample=sample)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """x = D(z / s), in [-1, 1]; a VQ autoencoder first snaps z / s to its codebook, as LDM
        decodes a diffusion sample (``VQModelInterface.decode`` with ``force_not_quantize=False``)."""
        z = latents.to(self.device) / self.scale_factor
        if getattr(self.model, "quantizer", None) is not None:
            z = self.model.quantize(z)
        return self.model.decode(z)

    __call__ = decode

    # ------------------------------------------------------------ checkpoints
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"autoencoder.{k}": v for k, v in self.model.state_dict().items()}

    def meta(self) -> dict:
        return {"config": dataclasses.asdict(self.model.config), "scale_factor": self.scale_factor,
                "source": self.source, "sha256": self.sha256}

    @classmethod
    def from_checkpoint(cls, tensors: dict, meta: dict, device="cpu", what: str = "checkpoint") -> "FrozenAutoencoder":
        """Rebuild from the ``autoencoder.*`` tensors and ``meta["latent"]`` of a checkpoint."""
        from .models.autoencoder import Autoencoder, AutoencoderConfig
        from .models.layers import to_device
        info = meta["latent"]
        model = Autoencoder(AutoencoderConfig(**info["config"]))
        weights = ckpt.split_prefix(tensors, "autoencoder")
        if not weights:
            raise DiffkitError(f"{what} describes a latent model but holds no autoencoder weights")
        ckpt.load_state_dict_checked(model, weights, f"{what} (autoencoder)")
        return cls(to_device(model, device), info["scale_factor"], info.get("source"), info.get("sha256"))


class LatentDataset(Dataset):
    """(latent, label) pairs: ``latents`` (N, C, h, w) float32 on the CPU, int ``labels`` (N,).

    ``channels`` / ``img_size`` are the latent's, which the U-Net is built for."""

    is_latent = True

    def __init__(self, latents: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 class_names: Sequence[str] = ()):
        if latents.ndim != 4 or latents.shape[2] != latents.shape[3]:
            raise DiffkitError(f"latents of shape {tuple(latents.shape)} are not allowed; expected (N, C, h, h)")
        self.latents = latents.float().contiguous()
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.num_classes, self.class_names = int(num_classes), tuple(class_names)

    @property
    def channels(self) -> int:
        return int(self.latents.shape[1])

    @property
    def img_size(self) -> int:
        return int(self.latents.shape[2])

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    def __getitem__(self, index: int):
        return self.latents[index], self.labels[index]


def encode_dataset(autoencoder: FrozenAutoencoder, dataset, batch_size: int = 256) -> LatentDataset:
    """Encode every image of an in-memory data set once (images scaled to [-1, 1] as the data
    sets do, Ho et al. 2020 Sec. 3.3): z_i = s * E(x_i)."""
    if getattr(dataset, "is_latent", False):
        return dataset
    images = getattr(dataset, "images", None)
    if images is None:
        raise DiffkitError("latent training needs an in-memory image data set (diffkit.data.load_dataset)")
    parts = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size]
        x = as_float_images(x, "data set images")
        parts.append(autoencoder.encode(x).float().cpu())
    latents = torch.cat(parts)
    if not torch.isfinite(latents).all():
        raise DiffkitError(f"the autoencoder {autoencoder.source} gives non-finite latents for this data set")
    return LatentDataset(latents, dataset.labels, getattr(dataset, "num_classes", 0),
                         getattr(dataset, "class_names", ()))


__all__ = ["FrozenAutoencoder", "LatentDataset", "encode_dataset", "file_sha256"]
