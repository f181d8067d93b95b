"""Videos in and out: (B, T, C, H, W) tensors in [-1, 1] <-> animated PNG / GIF / WebP files (Pillow; no ffmpeg).

A video is a tensor (T, C, H, W) of T frames, a batch of them (B, T, C, H, W), as diffusers' video pipelines return
them with ``output_type="pt"`` ((B, T, C, H, W) in [0, 1]; diffkit's range is [-1, 1], as its images). Files:

* ``.png``: an animated PNG (APNG, lossless; a viewer without APNG shows the first frame) -- the default;
* ``.webp``: an animated WebP, lossless;
* ``.gif``: an animated GIF (256 colours per frame, Pillow's quantiser; frame durations in 10 ms steps), as
  diffusers' ``export_to_gif`` writes.

Every file loops forever at ``fps`` frames per second. :func:`save_video_grid` writes one animation whose frame t
is the grid (:func:`diffkit.images.make_grid`) of frame t of every video; :func:`save_videos` one file per video
(``video_00000.png`` ...). Writes are atomic (:func:`diffkit.checkpoint.atomic_write_bytes`): no partial file.
:func:`read_video` reads such a file (any frame count, also a still image: one frame) or a folder of frame PNGs.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageSequence

from .checkpoint import atomic_write_bytes
from .errors import DiffkitError, check_range

VIDEO_FORMATS = {".png": "PNG", ".webp": "WEBP", ".gif": "GIF"}  # suffix -> Pillow format (animated)
DEFAULT_FPS = 8.0  # diffusers' export_to_video / export_to_gif default (fps 8 / 100 ms per frame)


def video_format(path: str | Path) -> str:
    """Pillow's format of an animation file by its suffix (case-insensitive); one line for any other suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in VIDEO_FORMATS:
        raise DiffkitError(f"video file {str(path)!r} must end in one of {', '.join(VIDEO_FORMATS)} (animated PNG, "
                           f"WebP or GIF); got {suffix or 'no suffix'!r}")
    return VIDEO_FORMATS[suffix]


def check_videos(videos) -> torch.Tensor:
    """(B >= 1, T >= 1, C in {1, 3}, H, W) videos (float in [-1, 1] or uint8), or one video (T, C, H, W) as a batch
    of one; a one-line error for any other shape."""
    if isinstance(videos, torch.Tensor) and videos.ndim == 4:
        videos = videos[None]
    if not isinstance(videos, torch.Tensor) or videos.ndim != 5 or min(videos.shape[:2]) < 1 \
            or videos.shape[2] not in (1, 3):
        shape = tuple(videos.shape) if isinstance(videos, torch.Tensor) else type(videos).__name__
        raise DiffkitError(f"videos must be (batch >= 1, frames >= 1, 1 or 3 channels, height, width) or one video "
                           f"(frames, channels, height, width); got {shape}")
    return videos


def grid_frames(videos, nrow: int = 8, padding: int = 2) -> list[np.ndarray]:
    """The T frames (H', W', C) uint8 of the grid animation of ``videos`` (B, T, C, H, W): frame t tiles frame t of
    every video, ``nrow`` per row (:func:`diffkit.images.make_grid`)."""
    from .images import make_grid
    videos = check_videos(videos)
    return [make_grid(videos[:, t], nrow=nrow, padding=padding) for t in range(videos.shape[1])]


def animation_bytes(frames: Sequence[np.ndarray], fps: float = DEFAULT_FPS, fmt: str = "PNG",
                    scale: int = 1) -> bytes:
    """The bytes of an animation (Pillow format ``fmt``: PNG = APNG, WEBP lossless, GIF) of (H, W, C) uint8 frames
    (C = 1 or 3) at ``fps`` frames per second, looping forever, optionally upscaled ``scale`` times (nearest)."""
    check_range("fps", fps, 0.0, 1000.0, low_inclusive=False)
    check_range("scale", scale, 1, None, integer=True)
    if fmt not in VIDEO_FORMATS.values():
        raise DiffkitError(f"animation format {fmt!r} is not allowed; choose one of {sorted(VIDEO_FORMATS.values())}")
    if not frames:
        raise DiffkitError("an animation needs at least one frame; got none")
    images = []
    for frame in frames:
        img = Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame)
        if scale > 1:
            img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        images.append(img)
    # Pillow merges a frame equal to the one before into a longer frame; an APNG's alternating blend ops (the same
    # image on opaque frames) keep every frame, so the file holds T frames (WebP, GIF: merged, see read_video)
    options = {"lossless": True} if fmt == "WEBP" else {"blend": [i % 2 for i in range(len(images))]} \
        if fmt == "PNG" else {}
    buf = io.BytesIO()
    images[0].save(buf, format=fmt, save_all=True, append_images=images[1:], duration=1000.0 / fps, loop=0,
                   **options)
    return buf.getvalue()


def save_video_grid(videos, path: str | Path, nrow: int = 8, fps: float = DEFAULT_FPS, scale: int = 1) -> Path:
    """Write the grid animation of ``videos`` (:func:`grid_frames`) to ``path`` (.png, .webp or .gif), atomically."""
    fmt = video_format(path)
    return atomic_write_bytes(path, animation_bytes(grid_frames(videos, nrow), fps, fmt, scale))


def check_video_folder(directory: str | Path, count: int, prefix: str = "video", suffix: str = ".png") -> None:
    """Before :func:`save_videos` writes ``count`` videos: the folder must not hold ``<prefix>_NNNNN<suffix>`` files
    of an earlier run from ``count`` on, which the new ones would not replace (one line)."""
    from .images import check_image_folder
    if suffix.lower() == ".png":
        return check_image_folder(directory, count, prefix)
    directory = Path(directory)
    if not directory.is_dir():
        return
    stale = sorted(p.name for p in directory.glob(f"{prefix}_*{suffix}")
                   if p.stem[len(prefix) + 1:].isdecimal() and p.stem[len(prefix) + 1:].isascii()
                   and int(p.stem[len(prefix) + 1:]) >= count)
    if stale:
        raise DiffkitError(f"{str(directory)!r} holds {len(stale)} videos of an earlier run that {count} new videos "
                           f"would not replace ({stale[0]}, ...); give an empty folder or remove them")


def save_videos(videos, directory: str | Path, prefix: str = "video", suffix: str = ".png",
                fps: float = DEFAULT_FPS) -> list[Path]:
    """Write each video of ``videos`` (B, T, C, H, W) as its own animation ``<prefix>_00000<suffix>`` ... in
    ``directory`` (see :func:`check_video_folder`), atomically."""
    from .images import to_uint8
    videos = check_videos(videos)
    fmt = video_format(f"x{suffix}")
    check_video_folder(directory, int(videos.shape[0]), prefix, suffix)
    directory = Path(directory)
    return [atomic_write_bytes(directory / f"{prefix}_{i:05d}{suffix}", animation_bytes(list(to_uint8(v)), fps, fmt))
            for i, v in enumerate(videos)]


def read_video(path: str | Path, mode: str = "RGB", fps: float | None = None) -> torch.Tensor:
    """The frames (T, C, H, W) in [-1, 1] of an animation (APNG, GIF, WebP; a still image is one frame) or of a
    folder of frame PNGs (in name order), in Pillow ``mode`` (``RGB``: C = 3, ``L``: C = 1); one line for a missing
    or unreadable file, an empty folder, or frames of different sizes.

    WebP and GIF writers store equal consecutive frames as one longer frame: each frame is repeated round(duration /
    unit) times, the unit 1000 / ``fps`` ms where given, else the shortest frame's duration (exact unless every frame
    was merged). diffkit's APNGs keep every frame (:func:`animation_bytes`)."""
    from .images import image_pixels
    if mode not in ("RGB", "L"):
        raise DiffkitError(f"video mode {mode!r} is not allowed; choose RGB or L")
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".png")
        if not files:
            raise DiffkitError(f"video folder {str(path)!r} holds no .png frames")
    elif path.is_file():
        files = [path]
    else:
        raise DiffkitError(f"video {str(path)!r} does not exist; give an animated PNG, WebP or GIF, or a folder of "
                           f"frame PNGs")
    if fps is not None:
        check_range("fps", fps, 0.0, 1000.0, low_inclusive=False)
    frames, durations = [], []
    for file in files:
        try:
            with Image.open(file) as image:
                for frame in ImageSequence.Iterator(image):
                    frame.load()  # (a WebP frame's duration is read with its pixels)
                    frames.append(image_pixels(frame.copy(), mode))
                    durations.append(frame.info.get("duration") or 0)
        except (OSError, SyntaxError, ValueError) as err:
            raise DiffkitError(f"{str(file)!r} is not a readable image or animation: {err}") from None
    timed = [d for d in durations if d > 0]
    unit = 1000.0 / fps if fps is not None else min(timed) if timed else None
    if unit is not None and len(files) == 1:
        frames = [f for f, d in zip(frames, durations) for _ in range(max(1, round(d / unit)) if d > 0 else 1)]
    sizes = sorted({f.shape[:2] for f in frames})
    if len(sizes) > 1:
        raise DiffkitError(f"video {str(path)!r} has frames of different sizes {sizes}; all frames must have one size")
    x = torch.from_numpy(np.stack(frames)).float() / 127.5 - 1.0
    return x[:, None] if mode == "L" else x.permute(0, 3, 1, 2).contiguous()


__all__ = ["VIDEO_FORMATS", "DEFAULT_FPS", "video_format", "check_videos", "grid_frames", "animation_bytes",
           "save_video_grid", "check_video_folder", "save_videos", "read_video"]
