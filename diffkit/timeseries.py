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
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import check_range


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
