"""Conditional generation of time series with a series model (docs/editing.md, "Series: forecast and
impute"): forecasting (the first rows of a window given, the rest generated)
and imputation (missing points filled in), as Diffusion-TS (Yuan & Qiao 2024) evaluates them.

Both are inpainting of a window of the model's ``seq_length`` (:func:`diffkit.inpaint`, nothing of
a sampler re-implemented): the known values are kept by replacement (every sampler), optionally with
RePaint's resampling (``jump_n_sample`` > 1, ``ddpm``) and/or reconstruction guidance
(``reconstruction_weight`` w > 0; :class:`~diffkit.guidance.ReconstructionGuidance`, Ho et al. 2022,
Sec. 3.1). Series are diffkit's ``(batch, channels, length)`` in the model's own units (a series
file's model: [-1, 1] after :class:`~diffkit.series_files.SeriesScaling`); values outside [-1, 1]
are allowed (held-out data can leave the training range). A class-conditional model takes its classes
as ``cond={"y": labels (B,)}`` (sample i's class for all its windows; without it the null class), or, in
:func:`impute`, as ``labels=`` per step (each window the class its steps share: :func:`window_classes`), and
classifier-free guidance as the denoiser wrapped in :class:`~diffkit.guidance.ClassifierFreeGuidance`.
"""
from __future__ import annotations

from typing import Optional

import torch

from .denoiser import _innermost
from .editing import _generators, inpaint
from .errors import DiffkitError, check_range
from .guidance import null_class_trained


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
    (``seed``, ``generator``, ``eta``, ``progress``, ``cond``, ...) are those of :func:`diffkit.inpaint`;
    ``cond={"y": labels}`` gives a class-conditional model sample i's class (module doc); ``labels=`` (a
    class per step) is :func:`impute`'s, a one-line error here."""
    if "labels" in options:  # else the sampler's own "not an option" error, which does not say where it belongs
        given = options["labels"]
        given = (f"a tensor of shape {tuple(given.shape)}" if isinstance(given, torch.Tensor)
                 else f"{given!r}" if len(repr(given)) <= 40 else f"a {type(given).__name__}")
        raise DiffkitError(f"labels= ({given}) is an option of impute (a class per step); forecast takes one class "
                           f"per sample as cond={{'y': labels}} with labels of shape (B,)")
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


def window_classes(labels, steps_given: int, length: int, chunk: int, null_class: int) -> torch.Tensor:
    """The class of each :func:`impute_plan` window of a series of ``steps_given`` n steps whose step k has
    the class ``labels[..., k]`` (integers, (n,) or (B, n)): the label that the window's steps start ..
    start + min(L, n) - 1 share, as a training window takes the label its rows share
    (:func:`diffkit.series_files.window_labels`); ``null_class`` for a window across a change of label
    (training leaves those out: they belong to no class). Long, (W,) or (B, W), on the CPU."""
    import numpy as np

    from .series_files import window_labels
    labels = torch.as_tensor(labels)
    starts = [start for start, _ in impute_plan(steps_given, length, chunk)]
    classes = []
    for row in labels.reshape(-1, steps_given).cpu().numpy():
        kept, _ = window_labels(row, min(length, steps_given))  # stride-1 windows: kept[s] = rows s.. share one
        classes.append(np.where(kept[starts], row[starts], null_class))
    return torch.as_tensor(np.stack(classes), dtype=torch.long).reshape(*labels.shape[:-1], len(starts))


def _window_labels(denoiser, labels, options: dict, shape, length: int, chunk: int) -> torch.Tensor:
    """:func:`window_classes` of :func:`impute`'s ``labels`` as (B, W), checked: integers (n,) or (B, n) in
    0..K-1 of a class-conditional model (K its ``num_classes``, K also its null class), not with a ``cond``
    ``y`` (one-line errors)."""
    from .guidance import _num_classes_of
    batch, _, steps_given = shape
    classes = _num_classes_of(denoiser)
    if classes is None:
        raise DiffkitError("labels= needs a class-conditional model (its network has no num_classes)")
    if isinstance(options.get("cond"), dict) and "y" in options["cond"]:
        raise DiffkitError("labels= gives each window its class; cond={'y': ...} one class per sample: give one "
                           "of them")
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex() \
            or labels.shape not in ((steps_given,), (batch, steps_given)):
        raise DiffkitError(f"labels of {labels.dtype} {tuple(labels.shape)} are not allowed; give integers "
                           f"({steps_given},) or ({batch}, {steps_given}): the class of each step of the series")
    if labels.numel() and not bool(((labels >= 0) & (labels < classes)).all()):
        bad = int(labels[(labels < 0) | (labels >= classes)][0])
        raise DiffkitError(f"labels hold {bad}; the model's classes are 0..{classes - 1}")
    return window_classes(labels, steps_given, length, chunk, classes).expand(batch, -1)


def _subset(options: dict, index: list, batch: int) -> dict:
    """The window options of the rows ``index`` (sample numbers, repeats allowed) of a batch of ``batch``
    samples: their ``cond`` tensors' rows, so a row draws the same values whatever the other rows.
    Generators are given per row by the caller (:func:`_row_generators`)."""
    options = dict(options)
    if isinstance(options.get("cond"), dict):
        options["cond"] = {key: value[index] if isinstance(value, torch.Tensor) and value.ndim and len(value) == batch
                           else value for key, value in options["cond"].items()}
    return options


def impute_levels(missing: torch.Tensor, length: int, chunk: int) -> torch.Tensor:
    """When each sample's windows of :func:`impute` can be drawn: a long (B, W) tensor over the
    :func:`impute_plan` windows, -1 where the sample has nothing to keep in the window (not sampled),
    else the window's level: 0 when none of the window's known values was filled by an earlier window
    (it reads only given values), else 1 + the largest level of the earlier windows whose kept range
    holds, inside this window, a value missing for this sample (values it reads that one of them fills).
    ``missing`` (B, C, n) bool, True = missing. The windows of one level depend on no window of
    their level (nor later): each level can be drawn in one batch once the levels below are done,
    with the same result as one window after the other, provided window j does not read what a
    later window of a lower level already filled (:func:`impute` repaints those cells in window j).
    Under the keep rule a window's kept range reaches (L - chunk) // 2 steps into the next window, so
    with values missing at random windows are sequential (level j for window j); windows whose
    overlaps hold only given values (gaps in blocks, ``chunk`` L - 1 with L - chunk < 2) are
    independent."""
    batch, steps_given = missing.shape[0], missing.shape[-1]
    plan = impute_plan(steps_given, length, chunk)
    counts = torch.zeros(batch, steps_given + 1, dtype=torch.long)
    counts[:, 1:] = missing.reshape(batch, -1, steps_given).any(1).cpu().long().cumsum(1)

    def holds(a: int, b: int) -> torch.Tensor:  # per sample: a missing value in steps a .. b - 1
        return counts[:, max(b, a)] > counts[:, a]

    firsts = [0] + [end for _, end in plan[:-1]]  # window j fills the missing values of firsts[j] .. end - 1
    levels = torch.full((batch, len(plan)), -1, dtype=torch.long)
    for j, (start, end) in enumerate(plan):
        level = torch.zeros(batch, dtype=torch.long)
        for i in range(j - 1, -1, -1):
            if plan[i][1] <= start:  # kept ranges are in order: the earlier ones end before this window too
                break
            reads = holds(max(firsts[i], start), min(plan[i][1], start + length))
            level = torch.where(reads, torch.maximum(level, levels[:, i] + 1), level)
        levels[:, j] = torch.where(holds(firsts[j], end), level, torch.full_like(level, -1))
    return levels


def _row_generators(seed: Optional[int], generator, batch: int, windows: int):
    """``rng(sample, window)``: the generator of one sample's window (None: the global generator);
    ``generator``: :func:`diffkit.editing._generators` of the call's ``seed`` / ``generator``, or None.
    Window 0 uses the sample's own generator (``seed`` + i, or the caller's per-sample one), as a
    one-window imputation always did; window j >= 1 its own generator, seeded with the j-th of
    ``windows`` - 1 int64 numbers drawn at the call's start from a stream of the sample's own that
    its window-0 noise does not use: a generator seeded ``seed`` + i +
    :data:`~diffkit.noise.WINDOW_SEED_OFFSET` (as :func:`diffkit.noise.sample_generators` separates a
    sample's step noise). One shared
    ``generator`` first gives each sample a seed s_i (``batch`` numbers drawn from it), used as
    ``seed`` + i. A caller's per-sample generators have no seed to offset: their windows' seeds are
    drawn from a copy of each (the sample's generator itself is not advanced by the draw). So a
    sample's windows do not share a stream, and its values depend neither on which windows are
    drawn together nor on the batch size nor on the other samples."""
    from .noise import WINDOW_SEED_OFFSET, generators_from_seed
    if seed is None and generator is None:
        return lambda sample, window: None
    if isinstance(generator, torch.Generator):
        seeds = torch.randint(0, 2**63 - 1, (batch,), generator=generator, device=generator.device).tolist()
        generator = [torch.Generator(generator.device).manual_seed(s) for s in seeds]
        streams = [torch.Generator().manual_seed(s + WINDOW_SEED_OFFSET) for s in seeds]
    elif seed is not None:  # generator: generators_from_seed(seed, batch)
        streams = generators_from_seed(seed + WINDOW_SEED_OFFSET, batch)
    else:
        streams = []
        for own in generator:
            streams.append(torch.Generator(own.device))
            streams[-1].set_state(own.get_state())
    seeds = [torch.randint(0, 2**63 - 1, (max(windows - 1, 0),), generator=stream, device=stream.device).tolist()
             for stream in streams]

    def rng(sample: int, window: int):
        if window == 0:
            return generator[sample]
        return torch.Generator(generator[sample].device).manual_seed(seeds[sample][window - 1])
    return rng


def series_batch_size(denoiser, channels: int, length: int, limit: int, device, options: dict) -> int:
    """The memory-aware batch (windows of ``channels`` x ``length`` per sampler call, at most ``limit``):
    :func:`diffkit.memory.auto_batch_size` probed with one ddim step of :func:`diffkit.inpaint` with the
    call's reconstruction guidance, ``cond`` and thresholding (the guidance's backward pass is the
    largest part of a guided step's memory). ``cond`` tensors with a row per sample are probed with
    sample 0's row repeated; other ``cond`` values are passed as they are."""
    from .memory import PROBE_SAMPLING, auto_batch_size
    from .noise import generators_from_seed
    kept = {key: options[key] for key in ("reconstruction_weight", "thresholding") if key in options}

    cond = options.get("cond")
    rows = next((len(value) for value in cond.values() if isinstance(value, torch.Tensor) and value.ndim),
                None) if isinstance(cond, dict) else None  # the number of samples cond has rows for, if any

    def probe(n: int):
        window = torch.zeros(n, channels, length, device=device)
        extra = {} if cond is None else {"cond": cond if rows is None else _subset(options, [0] * n, rows)["cond"]}
        return inpaint(denoiser, window, torch.ones_like(window), PROBE_SAMPLING["sampler"], PROBE_SAMPLING["steps"],
                       value_range=None, progress=False, generator=generators_from_seed(0, n), **kept, **extra)
    return auto_batch_size(probe, device, limit=limit, sample_numel=channels * length)


def impute(denoiser, series, observed_mask=None, sampler: str = "ddpm", steps: int = 50, *,
           length: Optional[int] = None, chunk: Optional[int] = None, reconstruction_weight: float = 1.0,
           jump_length: int = 10, jump_n_sample: int = 1, batch_size="auto", labels=None,
           **options) -> torch.Tensor:
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
    A sample with nothing to keep in a window does not take part in it; a window no sample needs
    is not sampled. The observed values are returned
    exactly; an observed value must be finite. With nothing missing the series is returned as given
    (a copy; float16 / bfloat16 as float32) and nothing is sampled. Options and defaults as :func:`forecast`.

    Classes: ``cond={"y": y}`` (B,) gives every window of sample i the class y[i]; ``labels`` (integers,
    (n,) for every sample or (B, n)) the class of each step instead, and each window is conditioned on the
    class its steps share (:func:`window_classes`, training's rule), a window across a change of label on
    the model's null class K (its unconditional output; with classifier-free guidance, unguided: both
    passes take K). A checkpoint trained with ``p_uncond`` = 0 has no null class: a window to draw across a
    change of label is then a one-line error naming its steps, before anything is sampled.

    Batching: the (sample, window) pairs are drawn level by level (:func:`impute_levels`: a window
    waits only for the earlier windows that fill values it reads, and sees the values of no later
    window, as one window at a time), every pair of a level in batches
    of ``batch_size`` windows (``"auto"``, the default: the memory-aware :func:`series_batch_size`,
    at most the largest level; an int; None: the whole level in one call, whatever its size, with no
    memory check: a level can hold every sample's window of a long series, e.g. 64 x 1661 windows,
    where the one-window-at-a-time code drew at most the B samples per call). A batch out of
    accelerator memory is halved and drawn again (:class:`diffkit.memory.RetryingBatches`); on the CPU
    an out-of-memory is not caught, so there only ``"auto"`` (or a small int) bounds the memory.
    Randomness: window 0 of sample i draws from its generator (``seed`` + i, or the caller's), each
    later window from a generator of its own, seeded from a stream of the sample's
    (:func:`_row_generators`: with ``seed`` or one shared generator, one its window 0 does not use),
    so sample i is the same alone, with other samples, and at any ``batch_size`` (up to the float
    round-off of batched matmuls)."""
    from .memory import batches_with_oom_retry
    series = _check_series(series, "series")
    length = model_length(denoiser, length)
    chunk = length // 2 if chunk is None else check_range("chunk", chunk, 1, length - 1, integer=True)
    if batch_size is not None and batch_size != "auto":
        check_range("batch_size", batch_size, 1, None, integer=True)
    _check_channels(denoiser, series, "series")
    observed = _observed(series, observed_mask)
    # (B, W): the class of each sample's window, checked even when nothing is missing
    window_y = None if labels is None else _window_labels(denoiser, labels, options, series.shape, length, chunk)
    if bool(observed.all()):  # nothing to impute: the sampler is not run
        return series.clone()
    batch, channels, steps_given = series.shape
    options = dict(options, reconstruction_weight=reconstruction_weight, jump_length=jump_length,
                   jump_n_sample=jump_n_sample)
    seed, generator = options.pop("seed", None), options.pop("generator", None)
    plan = impute_plan(steps_given, length, chunk)
    firsts = [0] + [end for _, end in plan[:-1]]  # window j keeps the missing values of firsts[j] .. end - 1
    rng = _row_generators(seed, _generators(seed, generator, batch) if seed is not None or generator is not None
                          else None, batch, len(plan))
    levels = impute_levels(~observed, length, chunk)
    if window_y is not None:
        check_null_windows(denoiser, window_y, levels, labels, plan, length)
        window_y = window_y.to(series.device)
    filled = torch.where(observed, series, torch.zeros_like(series))
    known = observed.clone()
    largest = int(max((levels == level).sum() for level in range(int(levels.max()) + 1)))
    if batch_size == "auto":  # (labels: probed with sample 0's window 0 class, as cond's sample 0 row)
        batch_size = series_batch_size(denoiser, channels, length, largest, series.device, options if window_y is None
                                       else dict(options, cond=dict(options.get("cond") or {}, y=window_y[:, 0])))
    size = largest if batch_size is None else batch_size
    for level in range(int(levels.max()) + 1):
        pairs = (levels.T == level).nonzero().tolist()  # (window, sample), window by window

        def draw(first: int, n: int, pairs=pairs):
            rows = pairs[first:first + n]
            window = torch.zeros(n, channels, length, dtype=series.dtype, device=series.device)
            repaint = torch.ones_like(window)
            for r, (j, i) in enumerate(rows):
                start = plan[j][0]
                width = min(start + length, steps_given) - start
                # what window j sees one window at a time: the observed values and those windows < j kept
                # (before firsts[j]); a later window of a lower level may have filled values after that
                # already, which window j must draw itself, as if they were not there yet
                given = known[i, :, start:start + width].clone()
                given[:, max(firsts[j] - start, 0):] = observed[i, :, max(firsts[j], start):start + width]
                window[r, :, :width] = torch.where(given, filled[i, :, start:start + width], 0.0)
                repaint[r, :, :width] = (~given).to(window.dtype)
            row_options = _subset(options, [i for _, i in rows], batch)
            if window_y is not None:  # each (sample, window) pair its own class
                row_options["cond"] = dict(row_options.get("cond") or {},
                                           y=window_y[[i for _, i in rows], [j for j, _ in rows]])
            gens = [rng(i, j) for j, i in rows]
            if gens[0] is not None:
                row_options["generator"] = gens
            return (_generate(denoiser, window, repaint, sampler, steps, row_options),)

        batches = batches_with_oom_retry(draw, len(pairs), size)
        for first, out in batches:
            for r, (j, i) in enumerate(pairs[first:first + len(out)]):
                start, end = plan[j]
                kept = known[i, :, start:end]
                filled[i, :, start:end] = torch.where(kept, filled[i, :, start:end], out[r, :, :end - start])
                known[i, :, start:end] = True
        size = batches.batch_size
    return torch.where(observed, series, filled)


def check_null_windows(denoiser, window_y: torch.Tensor, levels: torch.Tensor, labels, plan: list, length: int,
                       cli: bool = False) -> None:
    """A window to draw (level >= 0) across a change of label takes the null class: a one-line error naming
    the first one's steps and labels when the checkpoint never trained that class (:func:`null_class_trained`),
    in the API's words, or with ``cli`` in ``diffkit edit --series``' (rows, ``--class``)."""
    from .guidance import _num_classes_of
    null = (window_y.cpu() == _num_classes_of(denoiser)) & (levels >= 0)
    if not bool(null.any()) or null_class_trained(denoiser):
        return
    sample, j = (int(k) for k in null.nonzero()[0])
    labels = torch.as_tensor(labels)
    start, steps_given = plan[j][0], labels.shape[-1]
    stop = min(start + length, steps_given)
    held = sorted(set(labels.reshape(-1, steps_given)[sample if labels.ndim == 2 else 0, start:stop].tolist()))
    where, fix = (("rows", "give --class K (one class for every window)") if cli else
                  ("steps", "give one class for every window (cond={'y': ...})"))
    raise DiffkitError(f"the window of {where} {start}..{stop - 1} (from 0) holds the labels "
                       f"{', '.join(map(str, held))}: a window across a change of label takes the null class, "
                       f"which this checkpoint never trained (p_uncond=0); {fix}")


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


__all__ = ["default_chunk", "forecast", "forecast_mask", "forecast_windows", "impute", "impute_plan", "impute_levels",
           "impute_windows", "model_length", "null_class_trained", "random_missing_mask", "window_classes"]
