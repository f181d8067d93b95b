"""Conditional generation of time series with an unconditional series model (docs/editing.md,
"Series: forecast and impute"): forecasting (the first rows of a window given, the rest generated)
and imputation (missing points filled in), as Diffusion-TS (Yuan & Qiao 2024) evaluates them.

Both are inpainting of a window of the model's ``seq_length`` (:func:`diffkit.inpaint`, nothing of
a sampler re-implemented): the known values are kept by replacement (every sampler), optionally with
RePaint's resampling (``jump_n_sample`` > 1, ``ddpm``) and/or reconstruction guidance
(``reconstruction_weight`` w > 0; :class:`~diffkit.guidance.ReconstructionGuidance`, Ho et al. 2022,
Sec. 3.1). Series are diffkit's ``(batch, channels, length)`` in the model's own units (a series
file's model: [-1, 1] after :class:`~diffkit.series_files.SeriesScaling`); values outside [-1, 1]
are allowed (held-out data can leave the training range).
"""
from __future__ import annotations

from typing import Optional

import torch

from .denoiser import _innermost
from .editing import inpaint
from .errors import DiffkitError, check_range


def model_length(denoiser, length: Optional[int] = None) -> int:
    """The window length: ``length`` if given, else the ``seq_length`` of a loaded series checkpoint."""
    if length is not None:
        return check_range("length", length, 2, None, integer=True)
    unet = (getattr(_innermost(denoiser), "meta", None) or {}).get("unet") or {}
    if "seq_length" not in unet:
        raise DiffkitError("this denoiser does not say its window length (no series checkpoint metadata); "
                           "pass length=")
    return int(unet["seq_length"])


def _check_series(series, what: str) -> torch.Tensor:
    if not isinstance(series, torch.Tensor) or not series.is_floating_point():
        kind = type(series).__name__ if not isinstance(series, torch.Tensor) else f"dtype {series.dtype}"
        raise DiffkitError(f"{what} of {kind} is not allowed; give a float tensor (batch, channels, length)")
    if series.ndim != 3 or series.numel() == 0:
        raise DiffkitError(f"{what} of shape {tuple(series.shape)} is not allowed; give (batch, channels, length) "
                           f"with every size >= 1")
    return series.detach().float() if series.dtype in (torch.float16, torch.bfloat16) else series.detach()


def _check_channels(denoiser, series: torch.Tensor, what: str) -> None:
    unet = (getattr(_innermost(denoiser), "meta", None) or {}).get("unet") or {}
    channels = unet.get("in_channels")
    if channels is not None and series.shape[1] != channels:
        raise DiffkitError(f"{what} has {series.shape[1]} channels; the model's series have {channels}")


def _generate(denoiser, window: torch.Tensor, repaint: torch.Tensor, sampler, steps, options) -> torch.Tensor:
    """:func:`diffkit.inpaint` of ``window`` (B, C, L) where ``repaint`` is 1, in the model's units."""
    return inpaint(denoiser, window, repaint, sampler, steps, value_range=None, **options)


def forecast(denoiser, history, horizon: int, sampler: str = "ddpm", steps: int = 50, *,
             length: Optional[int] = None, reconstruction_weight: float = 1.0, jump_length: int = 10,
             jump_n_sample: int = 1, **options) -> torch.Tensor:
    """The next ``horizon`` steps of each series of ``history`` (B, C, h), drawn from the model's
    windows of ``length`` L (default the checkpoint's ``seq_length``) whose first h steps are the
    history: (B, C, horizon). Allowed: 1 <= horizon <= L - 1 and h + horizon <= L (with h +
    horizon < L the window's last L - h - horizon steps are generated too and dropped: a shorter
    context, the same model). The history must be finite; float16 / bfloat16 input is computed and
    returned in float32 (other float dtypes as given).

    Defaults: ``sampler="ddpm"`` and reconstruction guidance ``reconstruction_weight`` w = 1 (the
    weight of Ho et al. 2022's Gaussian approximation; one backward pass through the network per
    step, so the denoiser must be differentiable; w = 0 is plain replacement, :func:`diffkit.inpaint`'s
    default). ``jump_length`` / ``jump_n_sample`` (RePaint, ``sampler="ddpm"``) and the other options
    (``seed``, ``generator``, ``eta``, ``progress``, ...) are those of :func:`diffkit.inpaint`."""
    history = _check_series(history, "history")
    length = model_length(denoiser, length)
    check_range("horizon", horizon, 1, length - 1, integer=True)
    _check_channels(denoiser, history, "history")
    batch, channels, known = history.shape
    if known + horizon > length:
        raise DiffkitError(f"history of {known} steps with horizon={horizon} does not fit the model's window of "
                           f"{length} steps; allowed: at most {length - horizon} history steps (the last ones)")
    if not bool(torch.isfinite(history).all()):
        raise DiffkitError("history holds NaN or infinite values; forecasting needs every history value")
    window = torch.zeros(batch, channels, length, dtype=history.dtype, device=history.device)
    window[..., :known] = history
    repaint = torch.ones_like(window)
    repaint[..., :known] = 0
    out = _generate(denoiser, window, repaint, sampler, steps, dict(
        options, reconstruction_weight=reconstruction_weight, jump_length=jump_length, jump_n_sample=jump_n_sample))
    return out[..., known:known + horizon]


def impute(denoiser, series, observed_mask=None, sampler: str = "ddpm", steps: int = 50, *,
           length: Optional[int] = None, reconstruction_weight: float = 1.0, jump_length: int = 10,
           jump_n_sample: int = 1, **options) -> torch.Tensor:
    """``series`` (B, C, n) with its missing values drawn from the model given the observed ones:
    ``observed_mask`` (bool or 0/1, ``series``' shape; 1 = observed) or, by default, the finite
    values are observed and NaN marks a missing one. Windows are the model's ``length`` L
    (default the checkpoint's ``seq_length``): n <= L (with n < L the window's last L - n steps
    are generated and dropped). The observed values are returned exactly; an observed value must be
    finite. With nothing missing the series is returned as given (a copy; float16 / bfloat16 as
    float32) and nothing is sampled. Options and defaults as :func:`forecast`."""
    series = _check_series(series, "series")
    length = model_length(denoiser, length)
    _check_channels(denoiser, series, "series")
    batch, channels, steps_given = series.shape
    if steps_given > length:
        raise DiffkitError(f"series of {steps_given} steps is longer than the model's window of {length}; allowed: "
                           f"at most {length} steps (impute a longer series window by window)")
    if observed_mask is None:
        observed = torch.isfinite(series)
    else:
        if not isinstance(observed_mask, torch.Tensor) or observed_mask.shape != series.shape:
            shape = tuple(observed_mask.shape) if isinstance(observed_mask, torch.Tensor) else type(observed_mask).__name__
            raise DiffkitError(f"observed_mask of {shape} is not allowed; give a bool tensor of the series' shape "
                               f"{tuple(series.shape)} (True = observed)")
        if observed_mask.dtype != torch.bool:
            if not bool(((observed_mask == 0) | (observed_mask == 1)).all()):
                raise DiffkitError("observed_mask holds values other than 0 and 1; give a bool mask (True = "
                                   "observed)")
            observed_mask = observed_mask != 0
        observed = observed_mask.to(series.device)
        if not bool(torch.isfinite(series[observed]).all()):
            raise DiffkitError("series holds NaN or infinite values where observed_mask says observed; every "
                               "observed value must be finite")
    if bool(observed.all()):  # nothing to impute: the sampler is not run
        return series.clone()
    window = torch.zeros(batch, channels, length, dtype=series.dtype, device=series.device)
    window[..., :steps_given] = torch.where(observed, series, torch.zeros_like(series))
    repaint = torch.ones_like(window)
    repaint[..., :steps_given] = (~observed).to(window.dtype)
    out = _generate(denoiser, window, repaint, sampler, steps, dict(
        options, reconstruction_weight=reconstruction_weight, jump_length=jump_length, jump_n_sample=jump_n_sample))
    return torch.where(observed, series, out[..., :steps_given])


def forecast_mask(batch: int, channels: int, length: int, horizon: int) -> torch.Tensor:
    """The observed mask (bool (B, C, L), True = observed) of forecasting the last ``horizon`` steps."""
    check_range("horizon", horizon, 1, length - 1, integer=True)
    mask = torch.ones(batch, channels, length, dtype=torch.bool)
    mask[..., length - horizon:] = False
    return mask


def random_missing_mask(shape, missing: float, seed: int = 0) -> torch.Tensor:
    """An observed mask (bool, True = observed) with each value missing independently with probability
    ``missing`` (Diffusion-TS's imputation protocol: 70 / 80 / 90% of the points missing at random)."""
    check_range("missing", missing, 0.0, 1.0, high_inclusive=False)
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(tuple(shape), generator=generator) >= missing


__all__ = ["forecast", "forecast_mask", "impute", "model_length", "random_missing_mask"]
