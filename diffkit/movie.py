"""H.264 movies (.mp4, .mkv) in and out through PyAV >= 17 (FFmpeg in its wheels: ``pip install 'diffkit[video]'``).

diffusers' ``export_to_video`` writes an H.264 MP4 through imageio-ffmpeg (libx264, yuv420p, ``quality=5``: constant
rate factor 25); diffkit writes the same kind of file, with FFmpeg's libx264 encoder:

* quality: the constant rate factor ``crf`` (0 = lossless in YUV .. 51; ffmpeg's default 23; diffkit's 18, x264's
  "visually lossless", as generated videos are small);
* pixels: ``yuv420p`` (4:2:0, the one every player and browser opens; odd widths / heights get one more column / row,
  a copy of the last, as 4:2:0 needs even sizes) or ``yuv444p`` (full colour resolution, any size; High 4:4:4
  profile, which browsers and QuickTime do not play);
* colours: BT.709 (limited range), converted with it and tagged in the stream, so players decode what was written;
* the frame rate exactly: ``fps`` as a fraction (the nearest with a denominator up to 1001: 8 -> 8/1, 29.97 ->
  2997/100, 30000 / 1001 -> 30000/1001).

:func:`movie_frames` reads any video PyAV opens (the first video stream) as RGB frames. An optional ``audio``
waveform (channels, samples) in [-1, 1] becomes an AAC track at its ``sample_rate`` (LTX-2's vocoder output,
:mod:`diffkit.interop.ltx2`); :func:`wav_bytes` writes one as 16-bit PCM WAV (Python's ``wave``).
"""
from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import DiffkitError, check_range

MOVIE_CONTAINERS = {".mp4": "mp4", ".mkv": "matroska"}  # suffix -> FFmpeg's muxer (H.264 in both)
PIXEL_FORMATS = ("yuv420p", "yuv444p")
DEFAULT_CRF = 18
DEFAULT_PIXEL_FORMAT = "yuv420p"
MIN_PYAV = 17  # PyAV 17 converts a decoded frame with its stream's colour tags; 12..16 read BT.709 as BT.601


def import_av():
    """The ``av`` module (PyAV >= :data:`MIN_PYAV`); one line naming the extra that installs it where it is missing
    or older."""
    try:
        import av
    except ImportError:
        raise DiffkitError("MP4 / MKV videos need PyAV, which is not installed: pip install 'diffkit[video]' "
                           "(or write .png, .webp or .gif)") from None
    major = av.__version__.split(".")[0]
    if not major.isdecimal() or int(major) < MIN_PYAV:
        raise DiffkitError(f"MP4 / MKV videos need PyAV >= {MIN_PYAV} (older ones decode BT.709 colours as BT.601); "
                           f"PyAV {av.__version__} is installed: pip install 'diffkit[video]'")
    return av


def exact_rate(fps) -> Fraction:
    """``fps`` as the nearest fraction with a denominator up to 1001 (the NTSC rates 30000/1001 ... exactly)."""
    check_range("fps", fps, 0.0, 1000.0, low_inclusive=False)
    rate = Fraction(fps).limit_denominator(1001)
    if rate == 0:
        raise DiffkitError(f"fps={fps!r} is too low for a movie; give at least 1/1001 frames per second")
    return rate


def check_movie_options(crf: int, pixel_format: str) -> None:
    """One line for a constant rate factor outside 0..51 or a pixel format other than yuv420p / yuv444p."""
    check_range("crf", crf, 0, 51, integer=True)
    if pixel_format not in PIXEL_FORMATS:
        raise DiffkitError(f"pixel format {pixel_format!r} is not allowed; choose {' or '.join(PIXEL_FORMATS)}")


def checked_audio(audio, sample_rate) -> np.ndarray:
    """``audio`` (channels, samples) as float32 in [-1, 1] (clipped), 1 or 2 channels; one line otherwise or for a
    sample rate that is not a positive integer."""
    check_range("sample_rate", sample_rate, 1, None, integer=True)
    wave = np.asarray(audio, dtype=np.float32)
    if wave.ndim != 2 or wave.shape[0] not in (1, 2) or wave.shape[1] < 1:
        raise DiffkitError(f"an audio track of shape {wave.shape} is not allowed; give (channels, samples) with 1 or "
                           f"2 channels")
    return np.ascontiguousarray(np.clip(wave, -1.0, 1.0))


def wav_bytes(audio, sample_rate: int) -> bytes:
    """The bytes of a 16-bit PCM WAV file of ``audio`` (channels, samples) in [-1, 1] at ``sample_rate``."""
    import wave
    pcm = np.round(checked_audio(audio, sample_rate) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(pcm.shape[0])
        out.setsampwidth(2)
        out.setframerate(int(sample_rate))
        out.writeframes(pcm.T.tobytes())
    return buffer.getvalue()


def movie_bytes(frames: Sequence[np.ndarray], fps, container: str = "mp4", crf: int = DEFAULT_CRF,
                pixel_format: str = DEFAULT_PIXEL_FORMAT, audio=None, sample_rate=None) -> bytes:
    """The bytes of an H.264 movie (FFmpeg muxer ``container``: mp4 or matroska) of (H, W, C) uint8 frames (C = 1
    or 3) at ``fps``, libx264 at constant rate factor ``crf`` in ``pixel_format``, BT.709 colours (module doc); with
    ``audio`` (channels, samples) in [-1, 1] an AAC track at ``sample_rate``."""
    av = import_av()
    rate = exact_rate(fps)
    check_movie_options(crf, pixel_format)
    wave = None if audio is None else checked_audio(audio, sample_rate)
    if not frames:
        raise DiffkitError("a video needs at least one frame; got none")
    if pixel_format == "yuv420p":  # 4:2:0 halves the chroma planes: even sizes only
        frames = [np.pad(f, ((0, f.shape[0] % 2), (0, f.shape[1] % 2), (0, 0)), mode="edge") for f in frames]
    height, width = frames[0].shape[:2]
    buffer = io.BytesIO()
    try:
        with av.open(buffer, "w", format=container) as output:
            stream = output.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, pixel_format
            stream.options = {"crf": str(crf), "colorspace": "bt709", "color_primaries": "bt709",
                              "color_trc": "bt709", "color_range": "tv"}
            sound = None if wave is None else _audio_stream(output, wave, int(sample_rate))
            for index, frame in enumerate(frames):
                rgb = np.ascontiguousarray(np.repeat(frame, 3, axis=2) if frame.shape[2] == 1 else frame)
                picture = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
                    format=pixel_format, dst_colorspace="ITU709", dst_color_range="MPEG")
                picture.pts, picture.time_base = index, 1 / rate
                output.mux(stream.encode(picture))
            output.mux(stream.encode(None))
            if wave is not None:
                _mux_audio(av, output, sound, wave, int(sample_rate))
    except av.error.FFmpegError as err:
        raise DiffkitError(f"FFmpeg could not write a {width}x{height} H.264 video: {err.strerror or err}") from None
    return buffer.getvalue()


def _audio_stream(output, wave: np.ndarray, sample_rate: int):
    """An AAC stream of ``output`` for ``wave`` (channels, samples) at ``sample_rate`` (added before any muxing)."""
    return output.add_stream("aac", rate=sample_rate, layout="mono" if wave.shape[0] == 1 else "stereo")


def _mux_audio(av, output, stream, wave: np.ndarray, sample_rate: int) -> None:
    """``wave`` (channels, samples) float32 at ``sample_rate`` encoded into the AAC ``stream`` of ``output``
    (PyAV's encoder cuts it into the codec's frames)."""
    frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout=stream.layout.name)
    frame.sample_rate, frame.pts, frame.time_base = sample_rate, 0, Fraction(1, sample_rate)
    for packet in stream.encode(frame):
        output.mux(packet)
    output.mux(stream.encode(None))


def movie_audio(path: str | Path) -> tuple:
    """(waveform (channels, samples) float32, sample rate) of the first audio stream of a file PyAV opens; one
    line for a file without one."""
    av = import_av()
    with av.open(str(path)) as source:
        if not source.streams.audio:
            raise DiffkitError(f"{str(path)!r} holds no audio stream")
        stream = source.streams.audio[0]
        chunks = [f.to_ndarray() for f in source.decode(stream)]
        return np.concatenate(chunks, axis=1).astype(np.float32), int(stream.rate)


def movie_frames(path: str | Path) -> list[np.ndarray]:
    """The frames (H, W, 3) uint8 RGB of the first video stream of a file PyAV opens, converted with the colour
    matrix and range its stream is tagged with; one line for a file that is no readable video."""
    av = import_av()
    try:
        with av.open(str(path)) as source:
            if not source.streams.video:
                raise DiffkitError(f"{str(path)!r} holds no video stream")
            return [frame.to_ndarray(format="rgb24") for frame in source.decode(source.streams.video[0])]
    except av.error.FFmpegError as err:
        raise DiffkitError(f"{str(path)!r} is not a readable video: {err.strerror or err}") from None


__all__ = ["MOVIE_CONTAINERS", "PIXEL_FORMATS", "DEFAULT_CRF", "DEFAULT_PIXEL_FORMAT", "MIN_PYAV", "import_av",
           "exact_rate", "check_movie_options", "movie_bytes", "movie_frames", "movie_audio", "wav_bytes",
           "checked_audio"]
