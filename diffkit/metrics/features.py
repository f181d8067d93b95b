"""Batched feature extraction from tensors, iterables of batches or folders of images, and
reference statistics cached on disk.

An *extractor* is any callable that maps a float batch (B, C, H, W) in [-1, 1] on ``device`` to
a tensor (B, d) or a tuple of such tensors (e.g. :class:`FIDInceptionV3` gives
(features, logits), :class:`EvaluatorNet.features_and_logits` likewise); extraction returns
float64 numpy arrays in the same structure.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..checkpoint import hash_file
from ..errors import DiffkitError, check_range, first_line
from ..images import GREY_MODES, as_float_images, image_pixels
from .frechet import GaussianStats, feature_statistics
from .inception import default_cache_dir

IMAGE_SUFFIXES = (".png",)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Sorted PNG files of ``folder`` (not recursive); a one-line error if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DiffkitError(f"image folder {str(folder)!r} does not exist or is not a directory")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DiffkitError(f"image folder {str(folder)!r} has no .png files")
    return files


def _open_image(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except (OSError, ValueError) as err:
        raise DiffkitError(f"image {str(path)!r} cannot be read: {first_line(err)}") from None


def _check_same_size(files: Sequence[Path]) -> tuple[tuple[int, int], str]:
    """All images must share one size (read from headers only); returns (size, mode)."""
    with _open_image(files[0]) as first:
        size, mode = first.size, ("L" if first.mode in GREY_MODES else "RGB")
    for path in files[1:]:
        with _open_image(path) as image:
            if image.size != size:
                raise DiffkitError(
                    f"image {path.name} is {image.size[0]}x{image.size[1]} but {files[0].name} is "
                    f"{size[0]}x{size[1]}; all images in a folder must have the same size")
            if image.mode not in GREY_MODES:
                mode = "RGB"
    return size, mode


def load_image_batch(files: Sequence[Path], mode: str) -> torch.Tensor:
    """Read PNGs as a float tensor (B, C, H, W) scaled from [0, 255] (8 bit) or [0, 65535]
    (16-bit grey) to [-1, 1]."""
    arrays = []
    for path in files:
        try:
            with _open_image(path) as image:
                array = image_pixels(image, mode)
        except DiffkitError:  # _open_image's own line (a ValueError too): not wrapped twice
            raise
        except (OSError, ValueError) as err:  # not an image, truncated (PIL's UnidentifiedImageError is an OSError)
            raise DiffkitError(f"image {str(path)!r} cannot be read: {first_line(err)}") from None
        arrays.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(arrays)) / 127.5 - 1.0


def iterate_image_folder(folder: str | os.PathLike, batch_size: int):
    """Yield batches of the folder's PNGs in [-1, 1]; mixed sizes give a one-line DiffkitError."""
    files = list_images(folder)
    _, mode = _check_same_size(files)
    for start in range(0, len(files), batch_size):
        yield load_image_batch(files[start:start + batch_size], mode)


def _batches(source, batch_size: int):
    """(iterator of batches, number of batches or None) for a tensor, folder or iterable."""
    if isinstance(source, (str, os.PathLike)):
        count = -(-len(list_images(source)) // batch_size)
        return iterate_image_folder(source, batch_size), count
    if isinstance(source, np.ndarray):
        source = torch.from_numpy(source)
    if isinstance(source, torch.Tensor):
        if source.ndim != 4:
            raise DiffkitError(f"image tensor shape {tuple(source.shape)} is not allowed; "
                               "expected (num_images, channels, height, width) in [-1, 1]")
        return (source[i:i + batch_size] for i in range(0, source.shape[0], batch_size)), \
            -(-source.shape[0] // batch_size)
    if isinstance(source, Iterable):
        return iter(source), (len(source) if hasattr(source, "__len__") else None)
    raise DiffkitError(f"image source of type {type(source).__name__} is not allowed; give a "
                       "tensor (N, C, H, W) in [-1, 1], an iterable of such batches or a folder of PNGs")


@torch.no_grad()
def extract_features(extractor: Callable, source, batch_size: int = 50, device="cpu",
                     progress: bool = True, description: str = "features"):
    """Run ``extractor`` over all images of ``source``; returns float64 array(s) (N, d).

    ``source``: a tensor (N, C, H, W) in [-1, 1] (or uint8 in [0, 255]), an iterable of such
    batches (a batch may also be an (images, labels) pair; labels are ignored) or a folder of
    same-sized PNGs.
    ``progress=False`` turns the tqdm bar off.
    """
    check_range("batch_size", batch_size, 1, None, integer=True)
    batches, total = _batches(source, batch_size)
    outputs: list[list[np.ndarray]] = []
    single = True
    for batch in tqdm(batches, total=total, disable=not progress, desc=description, unit="batch"):
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        batch = as_float_images(torch.as_tensor(batch))
        result = extractor(batch.to(device=device))
        if isinstance(result, torch.Tensor):
            result = (result,)
        else:
            single = False
        if not outputs:
            outputs = [[] for _ in result]
        for store, tensor in zip(outputs, result):
            store.append(tensor.detach().float().cpu().numpy().astype(np.float64))
    if not outputs:
        raise DiffkitError("the image source is empty; give at least 2 images")
    arrays = tuple(np.concatenate(store) for store in outputs)
    return arrays[0] if single else arrays


def fingerprint_files(paths: Sequence[str | os.PathLike]) -> str:
    """sha256 over the names and contents of ``paths`` (a folder counts as its sorted files)."""
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        if not files or not all(p.is_file() for p in files):
            raise DiffkitError(f"reference source {str(path)!r} does not exist or has no files")
        for file in files:
            digest.update((file.relative_to(path) if path.is_dir() else Path(file.name)).as_posix().encode())
            hash_file(file, digest)
    return digest.hexdigest()


def cached_reference_statistics(dataset_name: str, source_files: Sequence[str | os.PathLike],
                                compute_features: Callable[[], np.ndarray],
                                extractor_name: str = "inception-pool3",
                                cache_dir: str | os.PathLike | None = None) -> GaussianStats:
    """Reference statistics cached as ``<cache>/stats/<dataset>-<extractor>-<hash12>.npz``.

    The key is the dataset name, the extractor's name and a sha256 of the source file(s); a
    changed file gives a new key. On a miss, ``compute_features()`` is called for the (n, d)
    features, whose mean and covariance are saved.
    """
    for label, name in (("dataset name", dataset_name), ("extractor name", extractor_name)):
        if not name or any(c in name for c in "/\\") or name.startswith("."):
            raise DiffkitError(f"{label} {name!r} is not allowed; use a plain file-name-safe word")
    key = fingerprint_files(source_files)[:12]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / "stats" / f"{dataset_name}-{extractor_name}-{key}.npz"
    if path.is_file():
        return GaussianStats.load(path)
    stats = feature_statistics(compute_features(), f"{dataset_name} features")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    stats.save(tmp)
    os.replace(tmp, path)
    return stats
