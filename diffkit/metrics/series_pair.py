"""The input check shared by the metrics that compare a real and a generated set of time series."""
from __future__ import annotations

import torch

from ..errors import DiffkitError


def _brief(value, limit: int = 40) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_series_pair(real, generated, metric: str, *, min_series: int = 2, min_channels: int = 1,
                      min_length: int = 1):
    """``real`` and ``generated`` as real floating tensors (N, C, L) of one C and one L (a float dtype kept,
    integers made float32), each with at least ``min_series`` series, ``min_channels`` channels and
    ``min_length`` steps, all finite; else a one-line :class:`DiffkitError` naming ``metric`` and the bad value."""
    pair = []
    for what, given in (("real", real), ("generated", generated)):
        try:
            series = torch.as_tensor(given)
        except (TypeError, ValueError, RuntimeError):  # a string, a ragged list, objects
            series = None
        if series is None or series.is_complex() or series.dtype == torch.bool:
            shown = f"{type(given).__name__} {_brief(given)}" if series is None else f"dtype {series.dtype}"
            raise DiffkitError(f"{metric}: {what} series given as {shown} are not allowed; give a tensor or array "
                               "of real numbers (num_series, channels, length)")
        if not series.is_floating_point():
            series = series.float()
        if series.ndim != 3:
            raise DiffkitError(f"{metric}: {what} series of shape {tuple(series.shape)} are not allowed; expected "
                               "(num_series, channels, length)")
        if series.shape[0] < min_series:
            raise DiffkitError(f"{metric}: {series.shape[0]} {what} series are too few; at least {min_series} "
                               "are needed")
        if series.shape[1] < min_channels:
            raise DiffkitError(f"{metric}: {what} series with {series.shape[1]} channel(s) are not allowed; it "
                               f"needs at least {min_channels}")
        if series.shape[2] < min_length:
            raise DiffkitError(f"{metric}: {what} series of length {series.shape[2]} are not allowed; it needs "
                               f"at least {min_length} steps")
        if not torch.isfinite(series).all():
            bad = int((~torch.isfinite(series)).flatten(1).any(dim=1).sum())
            raise DiffkitError(f"{metric}: {bad} of {series.shape[0]} {what} series hold NaN or infinite values; "
                               "give finite series")
        pair.append(series)
    if pair[0].shape[1:] != pair[1].shape[1:]:
        raise DiffkitError(f"{metric}: real series of {pair[0].shape[1]} channels x length {pair[0].shape[2]} and "
                           f"generated series of {pair[1].shape[1]} x {pair[1].shape[2]} do not match; give both "
                           "sets one (channels, length)")
    return pair[0], pair[1]
