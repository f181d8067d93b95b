"""``diffkit sample``'s flags of one folder kind's own guidance options, routed to its library function:
a LongCat-Image folder's ``--cfg-renorm-min M`` / ``--no-cfg-renorm`` (:func:`diffkit.interop.longcat_image.
text_to_image`'s ``cfg_renorm_min``), a Bria 3.2 folder's ``--bria-normalize`` / ``--bria-clip-value C``
(:func:`diffkit.interop.bria.text_to_image`'s ``normalize`` / ``clip_value``) and an Ideogram 4 folder's
``--guidance-schedule S,S,...`` (:func:`diffkit.interop.ideogram4.text_to_image`'s ``guidance_schedule``). Each is
checked before any weight is read: one line for a bad value, or for a checkpoint whose kind
(:attr:`._chroma.Family.options`) does not take it."""
from __future__ import annotations

import math
from typing import Optional

from ..errors import DiffkitError, check_float32, check_range

# dest -> (flag, the library keyword, what it is: the refusal's words)
OPTIONS = {
    "cfg_renorm_min": ("--cfg-renorm-min", "cfg_renorm_min", "a LongCat-Image folder (LongCatImagePipeline's "
                                                             "cfg_renorm_min)"),
    "cfg_renorm": ("--no-cfg-renorm", "cfg_renorm_min", "a LongCat-Image folder (LongCatImagePipeline's "
                                                        "enable_cfg_renorm=False)"),
    "bria_normalize": ("--bria-normalize", "normalize", "a Bria 3.2 folder (BriaPipeline's normalize)"),
    "bria_clip_value": ("--bria-clip-value", "clip_value", "a Bria 3.2 folder (BriaPipeline's clip_value)"),
    "guidance_schedule": ("--guidance-schedule", "guidance_schedule", "an Ideogram 4 folder (Ideogram4Pipeline's "
                                                                      "guidance_schedule)"),
}


def add_family_option_flags(group) -> None:
    """The flags, into ``group`` (``diffkit sample``'s guidance group)."""
    group.add_argument("--cfg-renorm-min", type=float, metavar="M",
                       help="LongCat-Image folders: the guided velocity scaled per token by clamp(||u_c|| / ||u||, M, "
                            "1) (LongCatImagePipeline's cfg_renorm_min, M in [0, 1]; default 0.0)")
    group.add_argument("--no-cfg-renorm", dest="cfg_renorm", action="store_false", default=None,
                       help="LongCat-Image folders: no renormalisation (LongCatImagePipeline's enable_cfg_renorm="
                            "False)")
    group.add_argument("--bria-normalize", action="store_true", default=None,
                       help="Bria 3.2 folders: u <- 0.7 (std(u_c) / std(u)) u + 0.3 u after CFG, the standard "
                            "deviations over the whole batch (BriaPipeline's normalize; needs CFG)")
    group.add_argument("--bria-clip-value", type=float, metavar="C",
                       help="Bria 3.2 folders: the velocity clamped to [-C, C] (BriaPipeline's clip_value, C > 0)")
    group.add_argument("--guidance-schedule", metavar="S,S,...",
                       help="Ideogram 4 folders: one guidance scale per step in diffusers' convention "
                            "(Ideogram4Pipeline's guidance_schedule; default 7.0, then 3.0 for the last 3 steps; "
                            "step i's scale holds between its sigmas on the pipeline's grid of that many steps); not "
                            "with --guidance-scale")


def _schedule(text: str) -> list:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise DiffkitError(f"--guidance-schedule {text!r} is not allowed; give comma-separated finite numbers, one "
                           f"scale per step (e.g. 7,7,5,3)")
    for value in values:
        check_float32("--guidance-schedule", value)
    return values


def family_options(args, checkpoint) -> Optional[dict]:
    """The library keywords of the flags given (None: none), checked: one line for a checkpoint whose folder kind
    does not take one (:attr:`._chroma.Family.options`), a bad value, or flags that exclude each other."""
    given = [dest for dest in OPTIONS if getattr(args, dest, None) is not None]
    if not given:
        return None
    from ._chroma import folder_family
    family = None if checkpoint is None else folder_family(checkpoint)
    for dest in given:
        if family is None or dest not in family.options or not family.samples:
            flag, _, what = OPTIONS[dest]
            where = "this run has no --checkpoint" if checkpoint is None else f"{checkpoint} is not one"
            raise DiffkitError(f"{flag} applies to {what}; {where}")
    out = {}
    if args.cfg_renorm_min is not None and args.cfg_renorm is not None:
        raise DiffkitError("--cfg-renorm-min with --no-cfg-renorm is not allowed; give one")
    if args.cfg_renorm is not None:
        out["cfg_renorm_min"] = None
    if args.cfg_renorm_min is not None:
        out["cfg_renorm_min"] = check_range("--cfg-renorm-min", args.cfg_renorm_min, 0.0, 1.0)
    if args.bria_normalize:
        out["normalize"] = True
    if args.bria_clip_value is not None:
        out["clip_value"] = check_range("--bria-clip-value", args.bria_clip_value, 0.0, None, low_inclusive=False)
    if args.guidance_schedule is not None:
        if args.guidance_scale is not None:
            raise DiffkitError("--guidance-schedule with --guidance-scale is not allowed; give one (a scale per step, "
                               "or one for every step)")
        out["guidance_schedule"] = _schedule(args.guidance_schedule)
    return out


def check_schedule_length(how_guided: dict, own: bool, steps) -> None:
    """One line, before any sampling, for a ``--guidance-schedule`` that is not one scale per step of the pipeline's
    own loop (``own``; ``steps`` its count), as the library refuses it (another sampler reads it by noise level)."""
    schedule = how_guided.get("guidance_schedule")
    if own and schedule is not None and len(schedule) != steps:
        raise DiffkitError(f"--guidance-schedule has {len(schedule)} scales for {steps} steps; give one per step "
                           f"(--steps, default the pipeline's) on the pipeline's own loop")


def probe_guidance(how_guided: dict, steps: int, own: bool) -> dict:
    """``how_guided`` for one call of the library: on the pipeline's loop a one-step call with a longer schedule is
    the batch-size probe's (:func:`check_schedule_length` refused any other), given one of its scales (one not 1
    where there is one: both transformers, the same peak memory)."""
    schedule = how_guided.get("guidance_schedule")
    if schedule is None or not own or steps != 1 or len(schedule) == 1:
        return how_guided
    return {**how_guided, "guidance_schedule": [next((s for s in schedule if s != 1), schedule[0])]}


__all__ = ["OPTIONS", "add_family_option_flags", "check_schedule_length", "family_options", "probe_guidance"]
