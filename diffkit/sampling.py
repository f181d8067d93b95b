"""The front door: ``diffkit.sample(denoiser, shape_or_noise, sampler="ddim", steps=None (50), nfe=None, ...)``."""
from __future__ import annotations

import inspect
import operator
from typing import Mapping, Optional, Sequence, Union

import torch

from .denoiser import ThresholdedDenoiser, _innermost, precision_context, reset_states
from .errors import DiffkitError, check_choice, check_range
from .noise import generators_from_seed, randn
from .samplers.registry import REGISTRY, SamplerInfo, get_sampler, split_sampler_spec
from .timesteps import (ENDS_AT_ZERO, FINALS, SIGMA_SPACINGS, SPACINGS, grade_sigmas_for, make_grid,
                        reshift_flow_grid)


def sample(denoiser, shape_or_noise: Union[Sequence[int], torch.Tensor], sampler: str = "ddim",
           steps: Optional[int] = None, *, nfe: Optional[int] = None, spacing: Optional[str] = None,
           final: Optional[str] = None, grid: Optional[torch.Tensor] = None, seed: Optional[int] = None,
           generator=None, cond: Optional[dict] = None, thresholding: Optional[str] = None,
           progress: bool = True, callback=None, device=None, dtype=torch.float32, **options) -> torch.Tensor:
    """Draw samples with any registered sampler.

    Args:
        denoiser: a :class:`~diffkit.denoiser.Denoiser` (or a wrapper such as guidance).
        shape_or_noise: the batch shape (noise is drawn) or the starting noise x_T itself.
        sampler: a name from ``diffkit samplers`` (``diffkit.samplers.REGISTRY``), or
            ``NAME[@SPACING][:FINAL]`` with the grid in it (``"unipc:zero"``, ``"ddim@trailing"``).
        steps / nfe: the step count, or the number of network evaluations to spend (one of the two;
            default 50 steps). The adaptive ``ode`` and ``dpm-adaptive`` samplers pick their own steps and
            take neither (nor ``spacing``): their ``rtol`` / ``atol`` options set their accuracy.
        spacing, final: the time grid (see :mod:`diffkit.timesteps`); defaults per sampler.
            ``logsnr_graded`` is graded at the denoiser's ``data_scale`` when it has one
            (:func:`diffkit.timesteps.grade_sigmas_for`; diffkit checkpoints record it).
        grid: an explicit grid of ``steps + 1`` strictly decreasing times in [-1, T - 1] (-1: clean
            data), given instead of steps/nfe/spacing/final (combining them is refused).
        seed: per-sample generators ``seed + i`` (sample i does not depend on the batch size);
            or pass ``generator`` (one generator or one per sample).
        cond: keyword arguments for the network (``y`` class labels, ``context``); tensors are
            moved to the samples' device.
        device, dtype: where and in which dtype the noise is drawn; ``device`` also moves given noise.
        thresholding: ``None``, ``"clip"`` or ``"dynamic"`` on the predicted x_0
            (:class:`~diffkit.denoiser.ThresholdedDenoiser`), with diffusers' options
            ``sample_max_value`` (clip bound, default 1; cap of the dynamic threshold, default
            none, as in Imagen) and ``dynamic_thresholding_ratio`` (quantile, default 0.995).
        progress: a tqdm bar (default on here; the sampler functions default to off).
        callback: called after each step with ``{"step", "t", "s", "x", "x0"}``: the grid index
            the step starts from, its times t -> s, the new state and the x_0 prediction at t
            (singlestep DPM-Solver: once per chunk of ``order`` intervals).
        options: sampler-specific options (e.g. ``eta`` for ddim); and ``flow_shift=S``, a flow-matching
            model's grid moved to the sampling shift S (SD3 eq. 23, diffusers' FlowMatchEulerDiscreteScheduler
            ``shift``; :func:`diffkit.timesteps.reshift_flow_grid`; S = the training shift: the grid unchanged);
            and ``denoising_end=f`` in (0, 1): only the grid's times t >= int(round(T - f T)) are run and the
            state after them returned, as diffusers' ``StableDiffusionXLPipeline(denoising_end=f)``
            (:func:`diffkit.handover.grid_until`; the first half of a hand-over).

    Returns the samples at the grid's last time, shaped like the noise (float32 for half-precision
    noise: the solver state is float32).
    """
    check_denoiser(denoiser)
    handover = options.get("denoising_end") is not None  # plan() cuts the grid there: the last state is handed on
    info, grid, thresholding, threshold_options = plan(denoiser, sampler, steps, nfe, spacing, final, grid,
                                                       thresholding, options)
    check_zero_terminal_snr(denoiser, info, float(grid[0]))
    if seed is not None and generator is not None:
        raise DiffkitError("give seed or generator, not both")
    if seed is not None:
        check_range("seed", seed, 0, 2**63 - 1, integer=True)
    if device is not None:
        device = available_device(device)
    if isinstance(shape_or_noise, torch.Tensor):
        x = check_noise(shape_or_noise if device is None else shape_or_noise.to(device))
        if seed is not None:
            generator = generators_from_seed(seed, x.shape[0])
        check_generators(generator, x.shape[0])
    else:
        try:
            shape = tuple(operator.index(s) for s in shape_or_noise)
        except TypeError:
            raise DiffkitError(f"shape_or_noise={shape_or_noise!r} is not allowed; give a batch shape of integers "
                               f"such as (16, 3, 32, 32) or the noise tensor") from None
        if len(shape) < 2 or any(s < 1 for s in shape):
            raise DiffkitError(f"shape={shape} must be (batch, ...) with every size >= 1")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise DiffkitError(f"dtype={dtype!r} is not allowed; give a floating torch dtype such as torch.float32")
        if seed is not None:
            generator = generators_from_seed(seed, shape[0])
        check_generators(generator, shape[0])
        x = check_noise(randn(shape, generator, device=device, dtype=dtype))
    if cond is not None:
        check_cond(cond, x.shape[0])
        cond = {k: v.to(x.device) if isinstance(v, torch.Tensor) else v for k, v in cond.items()}  # beside x
    denoiser = thresholded(denoiser, thresholding, threshold_options)
    reset_states(denoiser)  # a new run: APG's momentum starts from zero
    kwargs = {**info.options, **options, **({"handover": True} if handover and info.name == "consistency" else {})}
    with torch.no_grad(), precision_context(denoiser, x.device.type):
        return info.fn(denoiser, x, grid, cond=cond, generator=generator, callback=callback,
                       progress=progress, **kwargs)


def thresholded(denoiser, thresholding: Optional[str], threshold_options: dict):
    """``denoiser`` wrapped in :class:`~diffkit.denoiser.ThresholdedDenoiser` for ``thresholding``
    (diffusers' option names in ``threshold_options``, as :func:`plan` returns them), or as it is."""
    if thresholding is not None:
        return ThresholdedDenoiser(denoiser, thresholding,
                                   **{_THRESHOLD_OPTIONS[k]: v for k, v in threshold_options.items()})
    if threshold_options:
        raise DiffkitError(f"{', '.join(threshold_options)} goes with thresholding='clip' or 'dynamic'")
    return denoiser


def check_denoiser(denoiser) -> None:
    """A denoiser (or a wrapper of one): callable, with the schedule it was trained on."""
    if not hasattr(denoiser, "schedule") or not callable(denoiser):
        raise DiffkitError(f"denoiser of type {type(denoiser).__name__} is not allowed; wrap the network with "
                           f"diffkit.Denoiser(net, schedule, prediction_type=...)")


def plan(denoiser, sampler: str = "ddim", steps: Optional[int] = None, nfe: Optional[int] = None,
         spacing: Optional[str] = None, final: Optional[str] = None, grid=None, thresholding=None,
         options: Optional[dict] = None) -> tuple:
    """What :func:`sample` resolves before it draws: ``(sampler info, time grid, thresholding,
    thresholding options)`` from its arguments; diffusers' names for grid and thresholding options
    (and the thresholding options themselves) are taken out of ``options``, which keeps the
    sampler's own options (checked against the sampler)."""
    options = {} if options is None else options
    # diffusers' option names, accepted where the idea is the same (docs/samplers.md, "diffusers' names")
    grid_names = {name: name for name, value in (("steps", steps), ("nfe", nfe), ("spacing", spacing),
                                                 ("final", final)) if value is not None}
    spacing, final, thresholding = _diffusers_names(options, spacing, final, thresholding, grid_names)
    offset = options.pop("steps_offset", 0)
    check_range("steps_offset", offset, 0, None, integer=True)
    shift = options.pop("flow_shift", None)
    denoising_end = options.pop("denoising_end", None)
    info, spacing, final = resolve_sampler(sampler, spacing, final)
    if offset and (spacing or info.default_spacing) != "leading":
        raise DiffkitError(f"steps_offset={offset} shifts the 'leading' spacing only; the grid here is "
                           f"{spacing or info.default_spacing!r}")
    threshold_options = {name: options.pop(name) for name in _THRESHOLD_OPTIONS if name in options}
    check_options(info, options)
    info = info.with_options(options)  # pc's corrector_steps sets its calls per step, so its NFE
    if grid is None:
        if flow_top(denoiser) is None:
            check_spacing_can_start(denoiser.schedule, spacing or info.default_spacing)
        grid = sampler_grid(denoiser, info, steps, nfe, spacing, final, offset=offset)
        if shift is not None:
            grid = sampling_flow_shift(denoiser, info, grid, shift)
    else:
        if offset:
            grid_names["steps_offset"] = "steps_offset"
        if shift is not None:
            grid_names["flow_shift"] = "flow_shift"
        if grid_names:
            raise DiffkitError(f"grid= sets the time grid itself; drop {', '.join(grid_names.values())}")
        grid = check_grid(grid, denoiser.schedule.num_timesteps)
    if denoising_end is not None:  # the first half of a hand-over (diffkit.handover)
        from .handover import grid_until
        if info.adaptive:
            raise DiffkitError(f"denoising_end={denoising_end!r} cuts a fixed time grid; sampler {info.name!r} "
                               f"picks its own steps: use a fixed-step sampler")
        if info.name == "tcd":  # its intermediate times count from the grid's target, which a cut grid lacks
            raise DiffkitError(f"denoising_end={denoising_end!r} is not offered with sampler 'tcd' (its "
                               f"intermediate times s = (1 - gamma) t' count from the full grid's target); allowed: "
                               f"'consistency' (LCMScheduler's hand-over) or a deterministic sampler")
        grid = grid_until(grid, denoising_end, denoiser.schedule.num_timesteps)
    return info, grid, thresholding, threshold_options


def planned_grid(denoiser, sampler: str, steps: Optional[int], nfe: Optional[int], grid, options: dict) -> tuple:
    """(sampler info, the time grid) :func:`sample` will use with these arguments (``grid`` itself where
    given); ``options``: :func:`sample`'s keyword options, left as they are."""
    own = inspect.signature(sample).parameters  # sample's own arguments (seed, generator...) are not plan's
    rest = {k: v for k, v in options.items() if k not in own or k in ("spacing", "final", "thresholding")}
    how = {name: rest.pop(name, None) for name in ("spacing", "final", "thresholding")}
    return plan(denoiser, sampler, steps, nfe, how["spacing"], how["final"], grid, how["thresholding"], rest)[:2]


def sampling_flow_shift(denoiser, info: SamplerInfo, grid: torch.Tensor, shift) -> torch.Tensor:
    """``grid`` moved to the sampling shift ``shift`` of a flow-matching model (SD3 eq. 23 at sampling time,
    diffusers' ``FlowMatchEulerDiscreteScheduler(shift=...)``; :func:`diffkit.timesteps.reshift_flow_grid`);
    another model, or an adaptive sampler (it picks its own steps), is a one-line DiffkitError."""
    if getattr(_innermost(denoiser), "prediction_type", None) != "flow_prediction":
        raise DiffkitError(f"flow_shift={shift!r} re-places the grid of a flow-matching model (prediction_type "
                           f"'flow_prediction'); this model predicts "
                           f"{getattr(_innermost(denoiser), 'prediction_type', None)!r}")
    info.check_fixed_steps(f"flow_shift={shift!r}")
    return reshift_flow_grid(denoiser.schedule, grid, shift)


def steps_for_nfe(denoiser, sampler: str, nfe: int, **options) -> int:
    """The step count with which ``sample(denoiser, ..., sampler, steps=..., **options)`` spends exactly
    ``nfe`` network evaluations per sample (the grid :func:`plan` makes for ``nfe``); a one-line
    DiffkitError listing the NFEs it can spend otherwise."""
    options = dict(options)
    grid_options = {name: options.pop(name, None) for name in ("spacing", "final", "thresholding")}
    return len(plan(denoiser, sampler, nfe=nfe, options=options, **grid_options)[1]) - 1


_THRESHOLD_OPTIONS = {"sample_max_value": "max_value", "dynamic_thresholding_ratio": "ratio"}
_SAMPLER_ARGUMENTS = ("denoiser", "x", "grid", "cond", "generator", "callback", "progress")


def check_options(info: SamplerInfo, options: dict) -> None:
    """Every sampler-specific option must be one the sampler takes (one line naming those it does)."""
    params = inspect.signature(info.fn).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    accepted = [name for name in params if name not in _SAMPLER_ARGUMENTS]
    unknown = [name for name in options if name not in params or name in _SAMPLER_ARGUMENTS]
    if unknown:
        raise DiffkitError(f"option {unknown[0]!r} is not one sampler {info.name!r} takes; it takes "
                           f"{', '.join(accepted) if accepted else 'none'}")
    for name, value in options.items():  # a flag given as "no" or 0 would read as True / False
        if isinstance(params[name].default, bool) and not isinstance(value, bool):
            raise DiffkitError(f"{name}={value!r} is not allowed; give True or False")


def check_grid(grid, num_timesteps: int) -> torch.Tensor:
    """An explicit time grid: 1-D, at least two finite times, strictly decreasing, in [-1, T-1]."""
    try:
        grid = torch.as_tensor(grid, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise DiffkitError(f"grid={grid!r} is not allowed; give a 1-D sequence of decreasing times") from None
    if grid.ndim != 1 or grid.numel() < 2 or not torch.isfinite(grid).all():
        raise DiffkitError(f"grid of shape {tuple(grid.shape)} is not allowed; give at least two finite times, "
                           f"the first the noisiest")
    if not (grid[1:] < grid[:-1]).all():
        raise DiffkitError(f"grid={grid.tolist()[:6]}... must decrease strictly (from noise to data)")
    if grid[0] > num_timesteps - 1 or grid[-1] < -1:
        raise DiffkitError(f"grid times must lie in [-1, {num_timesteps - 1}]; got [{grid[-1].item():g}, "
                           f"{grid[0].item():g}]")
    return grid


def _starts_at_infinite_noise(schedule, start: float) -> bool:
    return float(schedule.alpha(torch.tensor([start], dtype=torch.float64))[0]) == 0.0


def check_spacing_can_start(schedule, spacing: str) -> None:
    """The sigma / log-SNR spacings start at t = T-1; on a zero-terminal-SNR schedule (Lin et al.
    2024: alpha_bar = 0 there) their first sigma is infinite, so they cannot be built."""
    top = schedule.num_timesteps - 1
    if spacing in SIGMA_SPACINGS and _starts_at_infinite_noise(schedule, top):
        raise DiffkitError(f"spacing={spacing!r} is placed in sigma / log-SNR, which are infinite at t={top}, "
                           f"where this zero-terminal-SNR schedule has alpha_bar = 0; use one of the "
                           f"timestep spacings linear, leading, trailing, linspace or quadratic")


def flow_top(denoiser) -> Optional[float]:
    """Where a flow model's sigma / log-SNR grids and the adaptive samplers start: the last time of
    finite SNR, T - 2 (flow time shift(1 - 1/T), where diffusers' DPMSolverMultistepScheduler starts
    with ``use_flow_sigmas``), when its schedule ends at zero SNR (s = 1, where those grids cannot
    be placed); None for every other denoiser (those grids start at T - 1)."""
    schedule = denoiser.schedule
    if (getattr(_innermost(denoiser), "prediction_type", None) != "flow_prediction" or schedule.num_timesteps < 3
            or not _starts_at_infinite_noise(schedule, schedule.num_timesteps - 1)):
        return None
    return schedule.num_timesteps - 2.0


def check_zero_terminal_snr(denoiser, info: SamplerInfo, start: float) -> None:
    """A grid that starts where alpha_bar = 0 (a zero-terminal-SNR schedule's last time, reached by
    the 'trailing' and 'linspace' spacings) starts at infinite noise. Only samplers whose first step
    is an x-space step from the network's own x0 and eps prediction can take it
    (``SamplerInfo.infinite_noise_start``: ddpm, ddim), and only from a network that predicts v or
    x0 (Lin et al. 2024, Sec. 3.2): an epsilon network's x0 = (x - sigma eps)/alpha is undefined there."""
    schedule = denoiser.schedule
    if not _starts_at_infinite_noise(schedule, start):
        return
    below = "or a grid that starts below it (spacing 'linear' or 'leading')"
    if not info.infinite_noise_start:
        able = ", ".join(name for name, other in REGISTRY.items() if other.infinite_noise_start)
        raise DiffkitError(f"sampler {info.name!r} cannot start at t={start:g}, where this zero-terminal-SNR "
                           f"schedule has alpha_bar = 0 (infinite noise); start there with {able} {below}")
    if getattr(_innermost(denoiser), "prediction_type", None) == "epsilon":
        raise DiffkitError(f"an epsilon-prediction network cannot start at t={start:g}, where alpha_bar = 0: "
                           f"x0 = (x - sigma eps)/alpha is undefined there; use a v_prediction or sample "
                           f"network (Lin et al. 2024) {below}")


def available_device(device) -> torch.device:
    """``device`` (a name or ``torch.device``) as a ``torch.device``; a cpu/cuda/mps device this
    machine lacks is a one-line error (:func:`diffkit.config.resolve_device`), not torch's assertion."""
    from .config import resolve_device
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DiffkitError(f"device={device!r} is not allowed; choose cpu, cuda, cuda:N or mps") from None
    if dev.type in ("cpu", "mps"):
        return resolve_device(dev.type)
    return resolve_device(str(dev)) if dev.type == "cuda" else dev


def check_noise(x: torch.Tensor) -> torch.Tensor:
    """Starting noise: a floating tensor (batch, ...) of finite values. Half-precision noise is
    promoted to float32: the solvers' arithmetic (a difference of nearly equal terms near t = T)
    needs it; the network still runs in its own dtype (``Denoiser``, ``mixed_precision``)."""
    if not x.is_floating_point() or x.is_complex():
        raise DiffkitError(f"noise of dtype {str(x.dtype).replace('torch.', '')} is not allowed; give a floating "
                           f"tensor")
    if x.ndim < 2 or x.numel() == 0:
        raise DiffkitError(f"noise of shape {tuple(x.shape)} is not allowed; give (batch, ...) with every size >= 1")
    if not bool(torch.isfinite(x).all()):
        raise DiffkitError("the noise holds NaN or infinite values")
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def check_generators(generator, batch: int) -> None:
    """``generator``: None, one torch.Generator, or one per sample."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if not isinstance(generator, (list, tuple)) or not all(isinstance(g, torch.Generator) for g in generator):
        raise DiffkitError(f"generator of type {type(generator).__name__} is not allowed; give a torch.Generator "
                           f"or a list of one per sample")
    if len(generator) != batch:
        raise DiffkitError(f"got {len(generator)} generators for a batch of {batch}; give one per sample")


def check_cond(cond, batch: int) -> None:
    """``cond``: keyword arguments for the network; class labels ``y`` are integers, one per sample."""
    if not isinstance(cond, Mapping):
        raise DiffkitError(f"cond of type {type(cond).__name__} is not allowed; give a dict such as {{'y': labels}}")
    y = cond.get("y")
    if isinstance(y, torch.Tensor):
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise DiffkitError(f"class labels y of dtype {str(y.dtype).replace('torch.', '')} are not allowed; "
                               f"give integer labels")
        if y.shape != (batch,):
            raise DiffkitError(f"class labels y of shape {tuple(y.shape)} are not allowed; give ({batch},), one per "
                               f"sample")


def resolve_sampler(sampler: str, spacing: Optional[str] = None,
                    final: Optional[str] = None) -> tuple[SamplerInfo, Optional[str], Optional[str]]:
    """(sampler info, spacing, final) of a ``NAME[@SPACING][:FINAL]`` spec and separately given grid
    options (None = the sampler's default); a grid part given both ways, differently, is a one-line error."""
    name, spec_spacing, spec_final = split_sampler_spec(sampler)
    info = get_sampler(name)
    if spacing is not None:
        check_choice("spacing", spacing, SPACINGS)
    if final is not None:
        check_choice("final", final, FINALS)
    return (info, _given_once("spacing", spacing, f"sampler={sampler!r}", spec_spacing),
            _given_once("final", final, f"sampler={sampler!r}", spec_final))


def _diffusers_names(options: dict, spacing, final, thresholding, given: dict):
    """Take diffusers' names for diffkit's options out of ``options``: ``timestep_spacing`` and
    ``use_karras_sigmas=True`` (spacing), ``final_sigmas_type`` (final), ``clip_sample=True``
    (thresholding 'clip', bound ``clip_sample_range``) and ``thresholding=True`` (diffusers'
    dynamic thresholding: capped at ``sample_max_value`` = 1.0 unless given, and taking
    precedence over ``clip_sample`` as in diffusers' schedulers). ``given`` records each grid option under
    the name the caller used, for messages."""
    use_karras = options.pop("use_karras_sigmas", False)
    if not isinstance(use_karras, bool):
        raise DiffkitError(f"use_karras_sigmas={use_karras!r} is not allowed; give True or False")
    for name, value in (("use_karras_sigmas", "karras" if use_karras else None),
                        ("timestep_spacing", options.pop("timestep_spacing", None))):
        spacing = _given_once("spacing", spacing, name, value)
        if value is not None:
            given["spacing"] = name
    final_type = options.pop("final_sigmas_type", None)
    final = _given_once("final", final, "final_sigmas_type", final_type)
    if final_type is not None:
        given["final"] = "final_sigmas_type"
    clip = options.pop("clip_sample", False)
    if not isinstance(clip, bool):
        raise DiffkitError(f"clip_sample={clip!r} is not allowed; give True or False")
    if thresholding is True:  # diffusers' boolean: dynamic thresholding, capped at its default
        thresholding = "dynamic"  # sample_max_value = 1.0, and taking precedence over clip_sample
        options.setdefault("sample_max_value", 1.0)
        clip = False
    elif thresholding is False:
        thresholding = None
    thresholding = _given_once("thresholding", thresholding, "clip_sample=True", "clip" if clip else None)
    if "clip_sample_range" in options:
        if thresholding != "clip":
            raise DiffkitError("clip_sample_range goes with clip_sample=True (or thresholding='clip')")
        if "sample_max_value" in options:
            raise DiffkitError("give clip_sample_range or sample_max_value, not both")
        options["sample_max_value"] = options.pop("clip_sample_range")
    return spacing, final, thresholding


def _given_once(what: str, value: Optional[str], other_source: str, other: Optional[str]) -> Optional[str]:
    if value is not None and other is not None and value != other:
        raise DiffkitError(f"{what}={value!r} contradicts {other_source} ({what} {other!r}); give it once")
    return value if value is not None else other


def check_eta(sampler: str, eta) -> None:
    """An ``eta`` (DDIM's stochasticity, Song et al. 2021 eq. 16) is an option of the ddim sampler
    only: a one-line error when it is given with another sampler."""
    if eta is not None and sampler != "ddim":
        hint = ("; tcd's stochasticity (diffusers' TCDScheduler eta) is gamma: diffkit sample --gamma"
                if sampler == "tcd" else "")
        raise DiffkitError(f"eta={eta} applies to the ddim sampler, not {sampler!r}{hint}")


def final_for(info: SamplerInfo, spacing: Optional[str] = None) -> str:
    """The sampler's default final target, unless a ``spacing`` given in its place ends at t = 0
    (linear, quadratic, leading): then ``"zero"`` (``sigma_min`` would leave no step to take).
    :func:`sampler_grid` also switches when trailing / linspace end at t = 0 at the step count used."""
    if info.default_final == "sigma_min" and spacing in ENDS_AT_ZERO:
        return "zero"
    return info.default_final


def sampler_grid(denoiser, info: SamplerInfo, steps: Optional[int] = None, nfe: Optional[int] = None,
                 spacing: Optional[str] = None, final: Optional[str] = None, offset: int = 0) -> torch.Tensor:
    """The time grid a sampler walks: ``steps`` (default 50) or the step count that spends ``nfe``
    evaluations, on ``spacing`` / ``final`` or the sampler's defaults (:func:`final_for`);
    ``logsnr_graded`` is graded at the denoiser's ``data_scale``
    (:func:`diffkit.timesteps.grade_sigmas_for`)."""
    if steps is not None and nfe is not None:
        raise DiffkitError("give steps or nfe, not both")
    T, spacing_used = denoiser.schedule.num_timesteps, spacing or info.default_spacing
    if info.adaptive:  # from t = T-1 to t = 0 (and on to clean data for final 'zero'); its own steps between
        for name, value in (("steps", steps), ("nfe", nfe), ("spacing", spacing)):
            if value is not None:
                info.check_fixed_steps(f"{name}={value!r}")
        zero = (final or info.default_final) == "zero"
        if T == 1 and not zero:
            raise DiffkitError("a one-timestep schedule starts at t = 0, which leaves no ODE to solve to final="
                               "'sigma_min'; use final='zero'")
        top = flow_top(denoiser)
        return torch.tensor(([T - 1.0 if top is None else top] if T > 1 else []) + [0.0] + ([-1.0] if zero else []),
                            dtype=torch.float64)
    final_given, final = final, final or final_for(info, spacing)

    def step_count(final):
        if nfe is None:
            return 50 if steps is None else steps
        count = info.steps_for_nfe(nfe, final)
        if count > T:
            raise DiffkitError(f"nfe={nfe} takes {count} steps of {info.name!r}, more than the schedule's {T} "
                               f"timesteps; allowed: nfe up to {info.nfe(T, final)}")
        return count
    count = step_count(final)
    check_range("steps", count, 1, T, integer=True)
    if final_given is None and final == "sigma_min" and spacing_used in ("trailing", "linspace") and \
            float(make_grid(denoiser.schedule, count, spacing_used, "zero")[-2]) == 0.0:
        final = "zero"  # this many steps of that spacing end at t = 0 too (trailing from 2T/3 steps on)
        count = step_count(final)
    return make_grid(denoiser.schedule, count, spacing_used, final, offset=offset, t_max=flow_top(denoiser),
                     grade_sigmas=grade_sigmas_for(getattr(denoiser, "data_scale", None)),
                     lcm_source=getattr(denoiser, "consistency_times", None))  # a consistency model's own times
