"""Videos in and out: (B, T, C, H, W) tensors in [-1, 1] <-> animated PNG / GIF / WebP files (Pillow) and H.264
MP4 / MKV movies (PyAV, the optional extra ``diffkit[video]``).

A video is a tensor (T, C, H, W) of T frames, a batch of them (B, T, C, H, W), as diffusers' video pipelines return
them with ``output_type="pt"`` ((B, T, C, H, W) in [0, 1]; diffkit's range is [-1, 1], as its images). Files:

* ``.png``: an animated PNG (APNG, lossless; a viewer without APNG shows the first frame) -- the default;
* ``.webp``: an animated WebP, lossless;
* ``.gif``: an animated GIF (256 colours per frame, Pillow's quantiser; frame durations in 10 ms steps), as
  diffusers' ``export_to_gif`` writes;
* ``.mp4`` / ``.mkv``: H.264 (libx264) in MP4 / Matroska, as diffusers' ``export_to_video`` writes: lossy, constant
  rate factor ``crf`` (default 18), ``yuv420p`` (odd sizes padded by one row / column) or ``yuv444p``
  (:mod:`diffkit.movie`); needs PyAV (``pip install 'diffkit[video]'``, refused in one line without it).

Every animation loops forever at ``fps`` frames per second (a movie plays once, at ``fps`` exactly).
:func:`save_video_grid` writes one animation whose frame t is the grid (:func:`diffkit.images.make_grid`) of frame t
of every video; :func:`save_videos` one file per video (``video_00000.png`` ...). Writes are atomic
(:func:`diffkit.checkpoint.atomic_write_bytes`): no partial file.
:func:`read_video` reads such a file (any frame count, also a still image: one frame; any video PyAV opens) or a
folder of frame PNGs.
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
from .movie import DEFAULT_CRF, DEFAULT_PIXEL_FORMAT, MOVIE_CONTAINERS, import_av, movie_bytes, movie_frames

# suffix -> Pillow's format (animated) or, for the H.264 movies, FFmpeg's muxer (diffkit.movie)
VIDEO_FORMATS = {".png": "PNG", ".webp": "WEBP", ".gif": "GIF", **MOVIE_CONTAINERS}
DEFAULT_FPS = 8.0  # diffusers' export_to_video / export_to_gif default (fps 8 / 100 ms per frame)


def video_format(path: str | Path) -> str:
    """The format of a video file by its suffix (case-insensitive; :data:`VIDEO_FORMATS`); one line for any other
    suffix, and for a movie suffix without PyAV (checked here, before any work)."""
    suffix = Path(path).suffix.lower()
    if suffix not in VIDEO_FORMATS:
        raise DiffkitError(f"video file {str(path)!r} must end in one of {', '.join(VIDEO_FORMATS)} (animated PNG, "
                           f"WebP or GIF; H.264 MP4 or MKV); got {suffix or 'no suffix'!r}")
    if suffix in MOVIE_CONTAINERS:
        import_av()
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
                    scale: int = 1, crf: int = DEFAULT_CRF, pixel_format: str = DEFAULT_PIXEL_FORMAT,
                    **audio) -> bytes:
    """The bytes of an animation (Pillow format ``fmt``: PNG = APNG, WEBP lossless, GIF) of (H, W, C) uint8 frames
    (C = 1 or 3) at ``fps`` frames per second, looping forever, optionally upscaled ``scale`` times (nearest); ``fmt``
    mp4 / matroska: an H.264 movie at constant rate factor ``crf`` in ``pixel_format`` (:func:`movie_bytes`; ``audio``:
    its ``audio`` and ``sample_rate``, an AAC track)."""
    check_range("fps", fps, 0.0, 1000.0, low_inclusive=False)
    check_range("scale", scale, 1, None, integer=True)
    if fmt not in VIDEO_FORMATS.values():
        raise DiffkitError(f"animation format {fmt!r} is not allowed; choose one of {sorted(VIDEO_FORMATS.values())}")
    if not frames:
        raise DiffkitError("an animation needs at least one frame; got none")
    frames = [frame.repeat(scale, axis=0).repeat(scale, axis=1) for frame in frames]  # nearest upscaling
    if fmt in MOVIE_CONTAINERS.values():
        return movie_bytes(frames, fps, fmt, crf, pixel_format, **audio)
    images = [Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame) for frame in frames]
    # Pillow merges a frame equal to the one before into a longer frame; an APNG's alternating blend ops (the same
    # image on opaque frames) keep every frame, so the file holds T frames (WebP, GIF: merged, see read_video)
    options = {"lossless": True} if fmt == "WEBP" else {"blend": [i % 2 for i in range(len(images))]} \
        if fmt == "PNG" else {}
    buf = io.BytesIO()
    images[0].save(buf, format=fmt, save_all=True, append_images=images[1:], duration=1000.0 / fps, loop=0,
                   **options)
    return buf.getvalue()


def save_video_grid(videos, path: str | Path, nrow: int = 8, fps: float = DEFAULT_FPS, scale: int = 1,
                    crf: int = DEFAULT_CRF, pixel_format: str = DEFAULT_PIXEL_FORMAT, audio=None,
                    sample_rate=None) -> Path:
    """Write the grid animation of ``videos`` (:func:`grid_frames`) to ``path`` (.png, .webp, .gif; .mp4, .mkv at
    ``crf`` in ``pixel_format``), atomically; ``audio`` (B, channels, samples) at ``sample_rate``: their mean as the
    movie's AAC track, or a WAV file beside an animation (:func:`save_audio`)."""
    fmt = video_format(path)
    mix = None if audio is None else audio.float().mean(0)
    sound = {} if mix is None or fmt not in MOVIE_CONTAINERS.values() else {"audio": mix.numpy(),
                                                                             "sample_rate": sample_rate}
    if mix is not None and not sound:
        save_audio(mix, Path(path).with_suffix(".wav"), sample_rate)
    return atomic_write_bytes(path, animation_bytes(grid_frames(videos, nrow), fps, fmt, scale, crf, pixel_format,
                                                    **sound))


def save_audio(audio, path: str | Path, sample_rate: int) -> Path:
    """Write ``audio`` (channels, samples) in [-1, 1] as a 16-bit WAV file ``path`` (:func:`.movie.wav_bytes`),
    atomically."""
    from .movie import wav_bytes
    return atomic_write_bytes(path, wav_bytes(audio.float().cpu().numpy(), sample_rate))


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
                fps: float = DEFAULT_FPS, crf: int = DEFAULT_CRF,
                pixel_format: str = DEFAULT_PIXEL_FORMAT, audio=None, sample_rate=None) -> list[Path]:
    """Write each video of ``videos`` (B, T, C, H, W) as its own animation ``<prefix>_00000<suffix>`` ... in
    ``directory`` (see :func:`check_video_folder`; .mp4, .mkv at ``crf`` in ``pixel_format``), atomically; ``audio``
    (B, channels, samples) at ``sample_rate``: each video's AAC track, or its WAV file beside an animation."""
    from .images import to_uint8
    videos = check_videos(videos)
    fmt = video_format(f"x{suffix}")
    check_video_folder(directory, int(videos.shape[0]), prefix, suffix)
    directory = Path(directory)
    movie = fmt in MOVIE_CONTAINERS.values()
    written = []
    for i, v in enumerate(videos):
        sound = {} if audio is None or not movie else {"audio": audio[i].float().numpy(), "sample_rate": sample_rate}
        if audio is not None and not movie:
            save_audio(audio[i], directory / f"{prefix}_{i:05d}.wav", sample_rate)
        written.append(atomic_write_bytes(directory / f"{prefix}_{i:05d}{suffix}", animation_bytes(
            list(to_uint8(v)), fps, fmt, crf=crf, pixel_format=pixel_format, **sound)))
    return written


def is_movie(path: Path) -> bool:
    """Whether :func:`read_video` reads ``path`` with PyAV: a suffix that is not one of Pillow's image suffixes."""
    suffix = path.suffix.lower()
    return bool(suffix) and suffix not in Image.registered_extensions()


def read_video(path: str | Path, mode: str = "RGB", fps: float | None = None) -> torch.Tensor:
    """The frames (T, C, H, W) in [-1, 1] of an animation (APNG, GIF, WebP; a still image is one frame), of a movie
    (a file whose suffix Pillow does not know, .mp4, .mkv, .mov, .webm ...: every frame PyAV decodes,
    :func:`diffkit.movie.movie_frames`) or of a folder of frame PNGs (in name order), in Pillow ``mode`` (``RGB``:
    C = 3, ``L``: C = 1); one line for a missing or unreadable file, an empty folder, or frames of different sizes.

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
        raise DiffkitError(f"video {str(path)!r} does not exist; give an animated PNG, WebP or GIF, a movie (.mp4 "
                           f"...) or a folder of frame PNGs")
    if fps is not None:
        check_range("fps", fps, 0.0, 1000.0, low_inclusive=False)
    frames, durations = [], []
    for file in files:
        if is_movie(file):
            frames += [image_pixels(Image.fromarray(frame), mode) for frame in movie_frames(file)]
            durations += [0] * (len(frames) - len(durations))  # every decoded frame is one frame
            continue
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
           "save_video_grid", "check_video_folder", "save_videos", "save_audio", "is_movie", "read_video"]
