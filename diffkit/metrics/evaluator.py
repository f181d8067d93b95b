"""A small domain classifier whose features stand in for Inception far from ImageNet.

ImageNet features say little about 28x28 digits, so for MNIST-like data diffkit trains a
small CNN on the real data in seconds on a CPU and uses its penultimate 128-d activations for a
Frechet distance ("FD-classifier": FID's construction, Heusel et al. 2017 eq. 6, on a
different network) and its logits for an IS-like score and class accuracy.

Saved as safetensors with the constructor arguments in the file's metadata (one file).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Optional
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor, nn

from ..errors import DiffkitError, check_range, first_line
from .features import extract_features
from .frechet import frechet_distance_of_features
from .scores import MeanStd, inception_score

_METADATA_KEY = "diffkit_evaluator"
_PROVENANCE_KEY = "diffkit_evaluator_trained_on"


@dataclass(frozen=True)
class EvaluatorConfig:
    """Shape of an :class:`EvaluatorNet`: input channels and size, classes, layer widths."""

    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10
    channels: tuple[int, ...] = (32, 64)
    feature_dim: int = 128


class EvaluatorNet(nn.Module):
    """[Conv 3x3 - ReLU - MaxPool 2] per entry of ``channels``, flatten, ``feature_dim``, logits.

    Inputs are square images (B, in_channels, image_size, image_size) in [-1, 1].
    """

    def __init__(self, config: EvaluatorConfig = EvaluatorConfig()):
        super().__init__()
        check_range("image_size", config.image_size, 2 ** len(config.channels), None, integer=True)
        self.config = config
        layers: list[nn.Module] = []
        width, size = config.in_channels, config.image_size
        for out in config.channels:
            layers += [nn.Conv2d(width, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            width, size = out, size // 2
        self.body = nn.Sequential(*layers)
        self.penultimate = nn.Linear(width * size * size, config.feature_dim)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def features(self, images: Tensor) -> Tensor:
        """Penultimate activations (B, feature_dim), after the ReLU."""
        c, size = self.config.in_channels, self.config.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (c, size, size):
            raise DiffkitError(f"evaluator input shape {tuple(images.shape)} is not allowed; "
                               f"expected (batch, {c}, {size}, {size}) images in [-1, 1]")
        return F.relu(self.penultimate(torch.flatten(self.body(images), 1)))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))

    def features_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        features = self.features(images)
        return features, self.head(features)


def train_evaluator(images, labels, num_classes: int, epochs: int = 1, *, batch_size: int = 32,
                    lr: float = 1e-3, seed: int = 0, device="cpu",
                    config: EvaluatorConfig | None = None) -> EvaluatorNet:
    """Train an :class:`EvaluatorNet` with Adam and cross-entropy; deterministic for a seed.

    ``images``: (N, C, H, W) floats in [-1, 1]; ``labels``: (N,) ints in 0..num_classes-1.
    """
    if torch.is_tensor(images) and images.dtype == torch.uint8:
        raise DiffkitError("images of dtype uint8 are not allowed; expected floats in [-1, 1] "
                           "(pixels p in 0..255: p / 127.5 - 1)")
    images = torch.as_tensor(images, dtype=torch.float32)
    labels = torch.as_tensor(labels, dtype=torch.long)
    if images.ndim != 4 or labels.shape != (images.shape[0],):
        raise DiffkitError(f"images {tuple(images.shape)} and labels {tuple(labels.shape)} are not "
                           "allowed; expected (N, C, H, W) images and (N,) labels")
    if images.numel() and not (images.min() >= -1 and images.max() <= 1):
        raise DiffkitError(f"images span [{float(images.min()):g}, {float(images.max()):g}]; allowed: "
                           "floats in [-1, 1] (pixels p in 0..255: p / 127.5 - 1)")
    check_range("num_classes", num_classes, 2, None, integer=True)
    check_range("epochs", epochs, 1, None, integer=True)
    check_range("batch_size", batch_size, 1, None, integer=True)
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise DiffkitError(f"labels span {int(labels.min())}..{int(labels.max())}; allowed: "
                           f"0..{num_classes - 1} for num_classes={num_classes}")
    if images.shape[2] != images.shape[3]:
        raise DiffkitError(f"images of size {images.shape[2]}x{images.shape[3]} are not allowed; "
                           "the evaluator takes square images")
    config = config or EvaluatorConfig(in_channels=images.shape[1], image_size=images.shape[2],
                                       num_classes=num_classes)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = EvaluatorNet(config)
    net.to(device).train()
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(epochs):
        order = torch.randperm(images.shape[0], generator=generator)
        for start in range(0, images.shape[0], batch_size):
            index = order[start:start + batch_size]
            loss = F.cross_entropy(net(images[index].to(device)), labels[index].to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    net.requires_grad_(False)
    return net.eval()


def save_evaluator(net: EvaluatorNet, path: str | os.PathLike, provenance: Optional[dict] = None) -> None:
    """Write the weights as safetensors, the config as JSON in the file's metadata, atomically;
    ``provenance`` (what it was trained on: data set, image size, test accuracy) goes beside it
    for the record (``evaluator_provenance``)."""
    from ..checkpoint import atomic_write_bytes
    config = asdict(net.config)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    metadata = {_METADATA_KEY: json.dumps(config)}
    if provenance:
        metadata[_PROVENANCE_KEY] = json.dumps(provenance)
    atomic_write_bytes(path, save(state, metadata=metadata))


def evaluator_provenance(path: str | os.PathLike) -> dict:
    """What :func:`save_evaluator` recorded of an evaluator's training ({} for older files)."""
    from ..checkpoint import peek_header_metadata
    try:
        value = json.loads(peek_header_metadata(path).get(_PROVENANCE_KEY, "{}"))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def load_evaluator(path: str | os.PathLike, device="cpu") -> EvaluatorNet:
    """Read an evaluator written by :func:`save_evaluator` (strict keys), in eval mode."""
    if not Path(path).is_file():
        raise DiffkitError(f"evaluator file {str(path)!r} does not exist; train one with "
                           "train_evaluator() and save it with save_evaluator()")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if _METADATA_KEY not in metadata:
                raise DiffkitError(f"{str(path)!r} is not a diffkit evaluator (no {_METADATA_KEY!r} metadata)")
            state = {key: handle.get_tensor(key) for key in handle.keys()}
        raw = json.loads(metadata[_METADATA_KEY])
        config = EvaluatorConfig(**{**raw, "channels": tuple(raw["channels"])})
    except DiffkitError:
        raise
    except Exception as err:  # safetensors' own errors, bad JSON, wrong fields: a corrupt or foreign file
        raise DiffkitError(f"evaluator file {str(path)!r} is corrupt or not an evaluator ({first_line(err)})") from None
    net = EvaluatorNet(config)
    missing, unexpected = set(net.state_dict()) - set(state), set(state) - set(net.state_dict())
    if missing or unexpected:
        raise DiffkitError(f"evaluator file {str(path)!r} has missing keys {sorted(missing)[:4]} "
                           f"and unexpected keys {sorted(unexpected)[:4]}")
    net.load_state_dict(state, strict=True)
    net.requires_grad_(False)
    return net.eval().to(device)


@torch.no_grad()
def evaluator_accuracy(net: EvaluatorNet, images, labels, batch_size: int = 500, device="cpu") -> float:
    """Fraction of ``images`` whose arg-max class equals ``labels``."""
    logits = extract_features(net, images, batch_size, device, progress=False)
    labels = np.asarray(torch.as_tensor(labels).cpu())
    return float((logits.argmax(axis=1) == labels).mean())


def classifier_frechet_distance(net: EvaluatorNet, images1, images2, batch_size: int = 500,
                                device="cpu", progress: bool = False) -> float:
    """FD-classifier: Frechet distance of the evaluator's penultimate features of two sets."""
    features1 = extract_features(net.features, images1, batch_size, device, progress)
    features2 = extract_features(net.features, images2, batch_size, device, progress)
    return frechet_distance_of_features(features1, features2)


def classifier_score(net: EvaluatorNet, images, splits: int = 10, batch_size: int = 500,
                     device="cpu", progress: bool = False) -> MeanStd:
    """IS-like score exp E KL(p(y|x) || p(y)) with the evaluator's classes (at most num_classes)."""
    logits = extract_features(net, images, batch_size, device, progress)
    return inception_score(logits, splits)
