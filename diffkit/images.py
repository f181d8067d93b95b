"""Images in and out: [-1, 1] tensors <-> uint8, grids and PNG files (Pillow; no torchvision)."""
from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .checkpoint import atomic_write_bytes
from .errors import DiffkitError, DiffkitRuntimeWarning, check_range


GREY_MODES = ("L", "1", "I;16", "I;16B", "I;16L", "I")   # Pillow's modes of grey PNGs (8, 1, 16 bit)
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I")               # 16-bit grey, read as 0..65535


def image_pixels(image: Image.Image, mode: str) -> np.ndarray:
    """An image's pixels as float32 on the 8-bit scale [0, 255], (H, W) for "L", (H, W, 3) for "RGB", (H, W, 4) for
    "RGBA".

    16-bit grey PNGs are scaled by 255 / 65535 (Pillow's own conversion to "L" clips them; RGBA: opaque)."""
    if image.mode in WIDE_MODES:
        grey = np.asarray(image, dtype=np.float32) * np.float32(255.0 / 65535.0)
        if mode == "L":
            return grey
        return np.stack([grey] * 3 + ([np.full_like(grey, 255.0)] if mode == "RGBA" else []), axis=2)
    return np.asarray(image.convert(mode), dtype=np.float32)


def as_float_images(images: torch.Tensor, what: str = "images") -> torch.Tensor:
    """Float32 images in [-1, 1]: uint8 (0..255) is scaled by x / 127.5 - 1, floats pass as they are
    (assumed in [-1, 1]); any other dtype gets a one-line error."""
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1.0
    if not images.is_floating_point():
        raise DiffkitError(f"{what} of dtype {str(images.dtype).replace('torch.', '')} are not allowed; "
                           "give float images in [-1, 1] or uint8 images in [0, 255]")
    return images.float()


def _check_images(images) -> torch.Tensor:
    """(B >= 1, C in {1, 3, 4}, H, W) float images in [-1, 1] (uint8 ones are scaled; C = 4: RGBA, as a Qwen-Image
    2.1 VAE decodes and Qwen-Image-Layered's layers are); non-finite pixels are drawn black, with a warning."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] < 1 \
            or images.shape[1] not in (1, 3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise DiffkitError(f"images must be (batch >= 1, 1 or 3 channels (4: RGBA), height, width); got {shape}")
    images = as_float_images(images.detach())
    bad = ~torch.isfinite(images).flatten(1).all(1)
    if bool(bad.any()):
        warnings.warn(f"{int(bad.sum())} of {images.shape[0]} images hold NaN or infinite values (a diverged "
                      "sampler?); those pixels are drawn black", DiffkitRuntimeWarning, stacklevel=3)
        images = torch.nan_to_num(images, nan=-1.0, posinf=1.0, neginf=-1.0)
    return images


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] (or uint8) -> (B, H, W, C) uint8, rounding (x + 1) * 127.5."""
    x = ((_check_images(images).cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def make_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """Tile (B, C, H, W) images in [-1, 1] into one (H', W', C) uint8 array, ``nrow`` per row."""
    images = _check_images(images)
    check_range("nrow", nrow, 1, None, integer=True)
    check_range("padding", padding, 0, None, integer=True)
    check_range("pad_value", pad_value, -1.0, 1.0)
    b, c, h, w = images.shape
    cols = min(nrow, b)
    rows = math.ceil(b / cols)
    fill = int(round((pad_value + 1) * 127.5))
    grid = np.full((rows * (h + padding) + padding, cols * (w + padding) + padding, c), fill, dtype=np.uint8)
    for i, img in enumerate(to_uint8(images)):
        r, col = divmod(i, cols)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y:y + h, x:x + w] = img
    return grid


def png_bytes(array: np.ndarray, scale: int = 1) -> bytes:
    """PNG bytes of an (H, W, C) uint8 array (C = 1, 3 or 4: RGBA), optionally upscaled (nearest)."""
    check_range("scale", scale, 1, None, integer=True)
    arr = array[..., 0] if array.shape[-1] == 1 else array
    img = Image.fromarray(arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, scale: int = 1) -> Path:
    """Write a grid PNG atomically (no partial file on failure)."""
    return atomic_write_bytes(path, png_bytes(make_grid(images, nrow), scale))


def check_image_folder(directory: str | Path, count: int, prefix: str = "sample") -> None:
    """Before :func:`save_images` writes ``count`` images: the folder must not hold images of an
    earlier run that they would not replace (``<prefix>_NNNNN.png`` from ``count`` on), or the
    folder would mix two runs (and score as one)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    stale = sorted(p.name for p in directory.glob(f"{prefix}_*.png")
                   if p.stem[len(prefix) + 1:].isdecimal() and p.stem[len(prefix) + 1:].isascii()
                   and int(p.stem[len(prefix) + 1:]) >= count)
    if stale:
        raise DiffkitError(f"{str(directory)!r} holds {len(stale)} images of an earlier run that {count} new images "
                           f"would not replace ({stale[0]}, ...); give an empty folder or remove them")


def save_images(images: torch.Tensor, directory: str | Path, prefix: str = "sample") -> list[Path]:
    """Write each image as its own PNG: ``<prefix>_00000.png``... (see :func:`check_image_folder`)."""
    directory = Path(directory)
    check_image_folder(directory, int(images.shape[0]), prefix)
    return [atomic_write_bytes(directory / f"{prefix}_{i:05d}.png", png_bytes(a))
            for i, a in enumerate(to_uint8(images))]
