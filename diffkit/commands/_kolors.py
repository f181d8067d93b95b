"""``diffkit sample`` / ``diffkit edit`` on a Kolors folder (:mod:`diffkit.interop.kolors`): the SD-XL command path
(:func:`~.sample.sample_stable_diffusion`, edit's Stable Diffusion branch) with these two hooks."""
from __future__ import annotations

from ..errors import DiffkitError

TAKES = ("--prompt, --negative-prompt, --guidance-scale, --guidance-rescale, --apg-*, --freeu, --height / --width, "
         "--steps, --sampler and its grid options; sample: --pag-* (KolorsPAGPipeline); edit: --images, --strength")


def refuse_kolors_flags(directory, flags: dict) -> None:
    """One line for the first of ``flags`` ({flag: value}) given (not None / False / empty) on a Kolors folder: the
    SD-XL options of CLIP encoders and UNet add-ons that KolorsPipeline does not share (before anything loads)."""
    given = [flag for flag, value in flags.items() if value is not None and value is not False and value != []]
    if given:
        raise DiffkitError(f"{given[0]} does not apply to a Kolors folder ({directory}); it takes {TAKES}")


def own_scheduler_loop(sd, sampler: str, spacing, final, nfe, options: dict) -> tuple:
    """({"grid": "scheduler"} or {}, options) of ``diffkit sample`` on a folder with its own scheduler's step
    (a Kolors folder's ``folder_sampler``: :func:`._pixart.own_loop`), else ({}, options) unchanged."""
    if not hasattr(sd, "folder_sampler"):
        return {}, options
    from ._pixart import own_loop
    own_grid, options = own_loop(sd, sampler, spacing, final, nfe, options)
    return ({"grid": "scheduler"} if own_grid else {}), options
