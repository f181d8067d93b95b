"""Time-series data for diffkit: the "Sines" benchmark, generated (nothing to download).

Series use diffkit's layout ``(N, C, L)``: channels, then time, like a one-row image, so every
sampler and loss takes them as they are (they only see "(batch, ...)").

Sines (Yoon et al. 2019, "Time-series Generative Adversarial Networks", Sec. 5.1; Diffusion-TS,
Yuan & Qiao 2024, ``Utils/Data_utils/sine_dataset.py``): each of C channels is
x_c(t) = sin(f_c t + phi_c), t = 0..L-1, with f_c, phi_c ~ U(0, 0.1) drawn per series and channel
(in the order f, phi, channel by channel, series by series). TimeGAN maps it to [0, 1] with
(x + 1) / 2 and Diffusion-TS maps that to [-1, 1] with 2 y - 1, which gives back sin(f t + phi):
the model sees the sine values themselves. Since f t + phi lies in [0, 0.1 L] (<= 2.4 < pi for
L = 24), these values lie in [0, 1], the upper half of [-1, 1].

For the Trainer and the CLI (``diffkit train --dataset sines``), :class:`SeriesDataset` holds the
series in memory and yields ``(series (C, L), label)`` like the image sets (label 0 where there are no
classes); :func:`plot_series` draws
samples as line plots (the image grid's counterpart).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DiffkitError, check_range

SERIES_DATASETS = ("sines", "series")  # series: a user's file, diffkit.series_files
SINES_SEEDS = {True: 123, False: 2024}  # train: Diffusion-TS's seed; test: an independent draw


def sines(num: int, length: int = 24, channels: int = 5, seed: int = 123) -> torch.Tensor:
    """``num`` Sines series (num, channels, length) in float32, in Diffusion-TS's [-1, 1] scaling.

    With the same ``seed`` the values are those of Diffusion-TS's generator (numpy's legacy
    ``RandomState``, seed 123 by default), transposed to (channels, length) per series."""
    check_range("num", num, 1, None, integer=True)
    check_range("length", length, 1, None, integer=True)
    check_range("channels", channels, 1, None, integer=True)
    check_range("seed", seed, 0, 2**32 - 1, integer=True)
    draws = np.random.RandomState(seed).uniform(0.0, 0.1, size=(num, channels, 2))  # (f, phi) per channel
    freq, phase = draws[..., 0:1], draws[..., 1:2]
    unit = (np.sin(freq * np.arange(length) + phase) + 1.0) * 0.5        # TimeGAN's [0, 1] scaling
    return torch.from_numpy(unit * 2.0 - 1.0).float()                    # Diffusion-TS: to [-1, 1]


def to_unit_range(series: torch.Tensor) -> torch.Tensor:
    """(x + 1) / 2: the [0, 1] scale on which TimeGAN and Diffusion-TS report their metrics."""
    return (series + 1.0) * 0.5


class SeriesDataset(Dataset):
    """Time series held as one float32 tensor ``(N, C, L)``; items are ``(series (C, L), label)``: with
    ``labels`` (N,) integers in 0..num_classes-1 (``num_classes`` default: the largest + 1) the series' class,
    else 0 (no classes, ``num_classes`` None)."""

    class_names = ()
    scaling = None  # a series file's SeriesScaling (diffkit.series_files); None: the values are the data's own
    source = None  # a series file's {"file", "sha256", "rows", "train_rows"}

    def __init__(self, series: torch.Tensor, name: str = "series", labels=None, num_classes=None):
        series = torch.as_tensor(series, dtype=torch.float32)
        if series.ndim != 3:
            raise DiffkitError(f"series of shape {tuple(series.shape)} are not allowed; expected (N, C, L)")
        self.series, self.name = series.contiguous(), name
        self.labels, self.num_classes = None, None
        if labels is not None:
            labels = torch.as_tensor(labels)
            if labels.shape != (series.shape[0],) or labels.is_floating_point() or labels.dtype == torch.bool:
                raise DiffkitError(f"labels of shape {tuple(labels.shape)} and type {labels.dtype} are not allowed; "
                                   f"give ({series.shape[0]},) integers, one class per series")
            low, high = (int(labels.min()), int(labels.max())) if len(labels) else (0, -1)
            num_classes = high + 1 if num_classes is None else num_classes
            check_range("num_classes", num_classes, 1, None, integer=True)
            if low < 0 or high >= num_classes:
                bad = low if low < 0 else high
                raise DiffkitError(f"class label {bad} is out of range; allowed: 0..{num_classes - 1}")
            self.labels, self.num_classes = labels.long(), int(num_classes)
        elif num_classes is not None:
            raise DiffkitError("num_classes was given without labels; give labels, one class per series")

    @property
    def channels(self) -> int:
        return int(self.series.shape[1])

    @property
    def seq_length(self) -> int:
        return int(self.series.shape[2])

    def __len__(self) -> int:
        return int(self.series.shape[0])

    def __getitem__(self, index: int):
        return self.series[index], 0 if self.labels is None else self.labels[index]

    def __repr__(self) -> str:
        return f"SeriesDataset({self.name}, n={len(self)}, channels={self.channels}, length={self.seq_length})"


def load_series_dataset(name: str = "sines", *, num_series: int = 10000, seq_length: int = 24,
                        channels: int = 5, train: bool = True) -> SeriesDataset:
    """A named time-series data set: ``sines`` (generated; ``train`` with Diffusion-TS's seed 123,
    otherwise an independent draw, seed 2024)."""
    if name != "sines":  # "series" needs its file: diffkit.series_files.load_file_series
        raise DiffkitError(f"dataset={name!r} is not a generated time-series data set; allowed: sines")
    return SeriesDataset(sines(num_series, seq_length, channels, seed=SINES_SEEDS[bool(train)]), name)


def plot_series(series: torch.Tensor, path, max_series: int = 16, ncol: int = 4) -> Path:
    """A PNG of the first ``max_series`` series (N, C, L): one panel per series, one line per channel
    (matplotlib, headless), written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .checkpoint import atomic_write_bytes
    series = torch.as_tensor(series).detach().float().cpu()
    shown = series[:max_series]
    ncol = min(ncol, shown.shape[0])
    nrow = -(-shown.shape[0] // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.6 * ncol, 1.8 * nrow), dpi=100, sharex=True, sharey=True,
                             squeeze=False)
    low, high = float(shown.min()), float(shown.max())
    pad = 0.05 * max(high - low, 1e-6)
    for i, ax in enumerate(axes.flat):
        if i >= shown.shape[0]:
            ax.axis("off")
            continue
        for channel in shown[i]:
            ax.plot(channel.numpy(), linewidth=1)
        ax.set_ylim(low - pad, high + pad)
        ax.set_title(f"sample {i}", fontsize=8)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
