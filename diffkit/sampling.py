"""The front door: ``diffkit.sample(denoiser, shape_or_noise, sampler="ddim", steps=50, ...)``."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .denoiser import ThresholdedDenoiser, precision_context
from .errors import DiffkitError, check_choice, check_range
from .noise import generators_from_seed, randn
from .samplers.registry import SamplerInfo, get_sampler, split_sampler_spec
from .timesteps import FINALS, SPACINGS, grade_sigmas_for, make_grid


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
            default 50 steps).
        spacing, final: the time grid (see :mod:`diffkit.timesteps`); defaults per sampler.
            ``logsnr_graded`` is graded at the denoiser's ``data_scale`` when it has one
            (:func:`diffkit.timesteps.grade_sigmas_for`; diffkit checkpoints record it).
        grid: an explicit grid of ``steps + 1`` decreasing times (overrides steps/spacing/final).
        seed: per-sample generators ``seed + i`` (sample i does not depend on the batch size);
            or pass ``generator`` (one generator or one per sample).
        cond: keyword arguments for the network (``y`` class labels, ``context``).
        thresholding: ``None``, ``"clip"`` or ``"dynamic"`` on the predicted x_0.
        options: sampler-specific options (e.g. ``eta`` for ddim).
    """
    # diffusers' grid options, accepted under their names: they choose the grid, not the update.
    karras = "karras" if options.pop("use_karras_sigmas", False) else None
    spacing = _given_once("spacing", spacing, "use_karras_sigmas=True", karras)
    final = _given_once("final", final, "final_sigmas_type", options.pop("final_sigmas_type", None))
    info, spacing, final = resolve_sampler(sampler, spacing, final)
    if grid is None:
        grid = sampler_grid(denoiser, info, steps, nfe, spacing, final)
    if seed is not None and generator is not None:
        raise DiffkitError("give seed or generator, not both")
    if isinstance(shape_or_noise, torch.Tensor):
        x = shape_or_noise
        if seed is not None:
            generator = generators_from_seed(seed, x.shape[0])
    else:
        shape = tuple(int(s) for s in shape_or_noise)
        if len(shape) < 2 or any(s < 1 for s in shape):
            raise DiffkitError(f"shape={shape} must be (batch, ...) with every size >= 1")
        if seed is not None:
            generator = generators_from_seed(seed, shape[0])
        x = randn(shape, generator, device=device, dtype=dtype)
    if thresholding is not None:
        denoiser = ThresholdedDenoiser(denoiser, thresholding)
    kwargs = {**info.options, **options}
    with torch.no_grad(), precision_context(denoiser, x.device.type):
        return info.fn(denoiser, x, grid, cond=cond, generator=generator, callback=callback,
                       progress=progress, **kwargs)


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


def _given_once(what: str, value: Optional[str], other_source: str, other: Optional[str]) -> Optional[str]:
    if value is not None and other is not None and value != other:
        raise DiffkitError(f"{what}={value!r} contradicts {other_source} ({what} {other!r}); give it once")
    return value if value is not None else other


def sampler_grid(denoiser, info: SamplerInfo, steps: Optional[int] = None, nfe: Optional[int] = None,
                 spacing: Optional[str] = None, final: Optional[str] = None) -> torch.Tensor:
    """The time grid a sampler walks: ``steps`` (default 50) or the step count that spends ``nfe``
    evaluations, on ``spacing`` / ``final`` or the sampler's defaults; ``logsnr_graded`` is graded at
    the denoiser's ``data_scale`` (:func:`diffkit.timesteps.grade_sigmas_for`)."""
    if steps is not None and nfe is not None:
        raise DiffkitError("give steps or nfe, not both")
    final = final or info.default_final
    if nfe is not None:
        steps = info.steps_for_nfe(nfe, final)
        if steps > denoiser.schedule.num_timesteps:
            raise DiffkitError(f"nfe={nfe} takes {steps} steps of {info.name!r}, more than the schedule's "
                               f"{denoiser.schedule.num_timesteps} timesteps; allowed: nfe up to "
                               f"{info.nfe(denoiser.schedule.num_timesteps, final)}")
    steps = 50 if steps is None else steps
    check_range("steps", steps, 1, denoiser.schedule.num_timesteps, integer=True)
    return make_grid(denoiser.schedule, steps, spacing or info.default_spacing, final,
                     grade_sigmas=grade_sigmas_for(getattr(denoiser, "data_scale", None)))
