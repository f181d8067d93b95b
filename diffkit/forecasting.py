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
from .editing import _generators, inpaint
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


def _window_options(options: dict, batch: int, **settings) -> dict:
    """The options of every window of one call: ``seed`` becomes the per-sample generators (seed + i) once,
    so that window after window continues each sample's random stream (the same seed in every window would
    reuse the same noise); a caller's ``generator`` is used the same way."""
    options = dict(options, **settings)
    seed, generator = options.pop("seed", None), options.pop("generator", None)
    if seed is not None or generator is not None:
        options["generator"] = _generators(seed, generator, batch)
    return options


def default_chunk(length: int, horizon: int) -> int:
    """The default ``chunk`` of a forecast of ``horizon`` steps with windows of ``length`` L: the whole
    horizon when it fits one window (horizon <= L - 1: the one-window forecast of Diffusion-TS's task,
    Yuan & Qiao 2024, conditioned on the last L - horizon history steps), else max(L // 4, 1): every
    window generates its last quarter from the three quarters before it, Diffusion-TS's forecasting
    split. The default jumps at L: horizon L - 1 is one window with 1 step of context, horizon L rolls
    in chunks of L // 4 with 3 L / 4 of context. Not the best measured for horizons above L / 4 that fit
    one window: on benchmarks/series_long_forecast.py (L = 32, 2 draws) at 2x (horizon 16) chunk 8 =
    L // 4 scored 0.0158 against 0.0189 for the default one window (ranges disjoint), and at 4x L // 4
    scored 0.0165 against 0.0210 for L // 2; so for a horizon above L / 4 pass ``chunk=L // 4``
    (``--chunk``), at ceil(horizon / chunk) windows instead of one."""
    return horizon if horizon <= length - 1 else max(length // 4, 1)


def forecast_windows(known: int, length: int, horizon: int, chunk: Optional[int] = None) -> list:
    """The windows of :func:`forecast` with ``known`` history steps: (context, new) per window, in order:
    ``new`` = min(chunk, steps still to generate) and ``context`` = min(steps known so far, L - new),
    the last ones (history and generated)."""
    chunk = default_chunk(length, horizon) if chunk is None else chunk
    windows, done = [], 0
    while done < horizon:
        new = min(chunk, horizon - done)
        windows.append((min(known + done, length - new), new))
        done += new
    return windows


def forecast(denoiser, history, horizon: int, sampler: str = "ddpm", steps: int = 50, *,
             length: Optional[int] = None, chunk: Optional[int] = None, reconstruction_weight: float = 1.0,
             jump_length: int = 10, jump_n_sample: int = 1, **options) -> torch.Tensor:
    """The next ``horizon`` steps of each series of ``history`` (B, C, h), drawn from the model's
    windows of ``length`` L (default the checkpoint's ``seq_length``): (B, C, horizon).

    The forecast is generated ``chunk`` steps at a time (1 <= chunk <= L - 1; default
    :func:`default_chunk`: the whole horizon when horizon <= L - 1, else max(L // 4, 1); for a horizon
    above L / 4, ``chunk=L // 4`` measured better than one window, see there): each chunk of k
    steps (the last one may be shorter) is the inpainting of a window whose first steps are the last
    min(n, L - k) known values, n of them known so far (the history, then the chunks already
    generated, which count as known), and whose next k steps are generated (with fewer than L - k
    known values the window's last steps are generated too and dropped: a shorter context, the same
    model). So one window with horizon <= L - 1 uses the last L - horizon history steps; a longer
    horizon rolls window after window, each chunk conditioned on its own generated predecessors, and
    errors compound. The history must be finite; float16 / bfloat16 input is computed and returned in
    float32 (other float dtypes as given). ``seed`` / ``generator`` seed the first window and
    continue, per sample, through the next ones.

    Defaults: ``sampler="ddpm"`` and reconstruction guidance ``reconstruction_weight`` w = 1 (the
    weight of Ho et al. 2022's Gaussian approximation; one backward pass through the network per
    step, so the denoiser must be differentiable; w = 0 is plain replacement, :func:`diffkit.inpaint`'s
    default). ``jump_length`` / ``jump_n_sample`` (RePaint, ``sampler="ddpm"``) and the other options
    (``seed``, ``generator``, ``eta``, ``progress``, ...) are those of :func:`diffkit.inpaint`."""
    history = _check_series(history, "history")
    length = model_length(denoiser, length)
    check_range("horizon", horizon, 1, None, integer=True)
    chunk = default_chunk(length, horizon) if chunk is None else check_range("chunk", chunk, 1, length - 1,
                                                                              integer=True)
    _check_channels(denoiser, history, "history")
    if not bool(torch.isfinite(history).all()):
        raise DiffkitError("history holds NaN or infinite values; forecasting needs every history value")
    batch, channels, _ = history.shape
    options = _window_options(options, batch, reconstruction_weight=reconstruction_weight, jump_length=jump_length,
                              jump_n_sample=jump_n_sample)
    known, chunks = history, []
    for width, new in forecast_windows(history.shape[-1], length, horizon, chunk):
        window = torch.zeros(batch, channels, length, dtype=history.dtype, device=history.device)
        window[..., :width] = known[..., known.shape[-1] - width:]
        repaint = torch.ones_like(window)
        repaint[..., :width] = 0
        out = _generate(denoiser, window, repaint, sampler, steps, options)
        chunks.append(out[..., width:width + new])
        known = torch.cat([window[..., :width], chunks[-1]], dim=-1)  # the last L - 1 values at most are needed
    return torch.cat(chunks, dim=-1)


def _observed(series: torch.Tensor, observed_mask) -> torch.Tensor:
    """The bool mask of ``series``' observed values (True = observed): ``observed_mask`` checked, or the finite ones."""
    if observed_mask is None:
        return torch.isfinite(series)
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
    return observed


def impute_windows(steps_given: int, length: int, chunk: int) -> list:
    """The start of each window of ``length`` L that :func:`impute` runs over a series of ``steps_given`` n
    steps: 0 when n <= L; else 0, chunk, 2 chunk, ... while the window ends before n, then n - L (the
    last window ends with the series)."""
    if steps_given <= length:
        return [0]
    starts = list(range(0, steps_given - length, chunk))
    return starts + [steps_given - length]


def impute_plan(steps_given: int, length: int, chunk: int) -> list:
    """(start, end) of each window of :func:`impute`: the window starting at ``start``
    (:func:`impute_windows`) keeps the missing values it fills in ``start .. end - 1`` and nothing after.
    Every window but the last keeps the steps before start + (L + chunk) // 2, so a value it keeps has
    at least (L - chunk) // 2 steps after it in the window, and, from the second window on, as many
    before it (the earlier windows kept up to its start + (L + chunk) // 2 - chunk); the rest of the
    window is generated and dropped, left to the next windows. The last window keeps everything up to
    the end of the series. The kept ranges are consecutive and cover 0 .. n - 1 once: each keeps at least
    ``chunk`` steps, and the last regular window keeps past n - L because chunk <= L - 1."""
    starts = impute_windows(steps_given, length, chunk)
    keep = (length + chunk) // 2
    return [(start, min(start + keep, steps_given) if j < len(starts) - 1 else min(start + length, steps_given))
            for j, start in enumerate(starts)]


def _subset(options: dict, index: list, batch: int) -> dict:
    """The window options of the samples ``index`` of a batch of ``batch``: their own generators (a list
    of per-sample generators is indexed; one shared generator is passed as is) and ``cond`` tensors, so
    a sample draws the same values whichever other samples need the window."""
    if len(index) == batch:
        return options
    options = dict(options)
    if isinstance(options.get("generator"), (list, tuple)):
        options["generator"] = [options["generator"][i] for i in index]
    if isinstance(options.get("cond"), dict):
        options["cond"] = {key: value[index] if isinstance(value, torch.Tensor) and value.ndim and len(value) == batch
                           else value for key, value in options["cond"].items()}
    return options


def impute(denoiser, series, observed_mask=None, sampler: str = "ddpm", steps: int = 50, *,
           length: Optional[int] = None, chunk: Optional[int] = None, reconstruction_weight: float = 1.0,
           jump_length: int = 10, jump_n_sample: int = 1, **options) -> torch.Tensor:
    """``series`` (B, C, n) with its missing values drawn from the model given the observed ones:
    ``observed_mask`` (bool or 0/1, ``series``' shape; 1 = observed) or, by default, the finite
    values are observed and NaN marks a missing one. Windows are the model's ``length`` L
    (default the checkpoint's ``seq_length``). With n <= L one window (its last L - n steps
    generated and dropped). A longer series is imputed window by window (:func:`impute_plan`):
    windows of L steps starting at 0, ``chunk``, 2 ``chunk``, ... and the last one ending with the
    series (``chunk`` 1 .. L - 1, default L // 2, the fewest windows: on benchmarks/series_long_forecast.py
    no chunk, nor this keep rule against keeping all, measured distinguishably better at 6 draws;
    ignored when n <= L). Each window draws every
    missing value of the window not kept before, conditioned on the window's other values, observed
    or kept by an earlier window (which count as observed), and keeps only those before
    start + (L + chunk) // 2 (the last window: all), so a kept value has about (L - chunk) / 2 steps
    of context on both sides (the first window's first steps and the last window's last ones have
    less: the series' ends); the values drawn after that are dropped and drawn again by the next
    window, with their right-hand side in view. Each missing value is kept from exactly one window.
    A sample with nothing to keep in a window does not take part in it (its random stream is not
    advanced), so sample i of a batch is the same as alone with ``seed`` + i, whatever the other
    samples' masks; a window no sample needs is not sampled. The observed values are returned
    exactly; an observed value must be finite. With nothing missing the series is returned as given
    (a copy; float16 / bfloat16 as float32) and nothing is sampled. ``seed`` / ``generator`` continue
    per sample from window to window. Options and defaults as :func:`forecast`."""
    series = _check_series(series, "series")
    length = model_length(denoiser, length)
    chunk = length // 2 if chunk is None else check_range("chunk", chunk, 1, length - 1, integer=True)
    _check_channels(denoiser, series, "series")
    observed = _observed(series, observed_mask)
    if bool(observed.all()):  # nothing to impute: the sampler is not run
        return series.clone()
    batch, channels, steps_given = series.shape
    options = _window_options(options, batch, reconstruction_weight=reconstruction_weight, jump_length=jump_length,
                              jump_n_sample=jump_n_sample)
    filled = torch.where(observed, series, torch.zeros_like(series))
    known = observed.clone()
    for start, end in impute_plan(steps_given, length, chunk):
        part, kept = slice(start, min(start + length, steps_given)), slice(start, end)
        index = (~known[..., kept]).flatten(1).any(1).nonzero().flatten().tolist()  # the samples with values to keep
        if not index:
            continue  # nothing to keep from this window: it is not sampled
        width = part.stop - part.start
        window = torch.zeros(len(index), channels, length, dtype=series.dtype, device=series.device)
        window[..., :width] = filled[index][..., part]
        repaint = torch.ones_like(window)
        repaint[..., :width] = (~known[index][..., part]).to(window.dtype)
        out = _generate(denoiser, window, repaint, sampler, steps, _subset(options, index, batch))
        new = out[..., :end - start]
        filled[index, :, kept] = torch.where(known[index][..., kept], filled[index][..., kept], new)
        known[index, :, kept] = True
    return torch.where(observed, series, filled)


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


__all__ = ["default_chunk", "forecast", "forecast_mask", "forecast_windows", "impute", "impute_plan", "impute_windows",
           "model_length", "random_missing_mask"]
