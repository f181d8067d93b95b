"""``diffkit edit --checkpoint CHRONOEDIT_FOLDER --images PNG|DIR --prompt TEXT [--temporal-reasoning-steps N]``: each
image edited as ``ChronoEditPipeline`` (:func:`diffkit.interop.chronoedit.edit_image`), the last frame of the edit's
video written as the PNG; dispatched from :func:`diffkit.commands.edit` (``diffkit sample`` on such a folder: one line,
:func:`refuse_sample`)."""
from __future__ import annotations

EDIT_TAKES = ("--images, --prompt, --negative-prompt, --guidance-scale (--guidance-convention), --steps, "
              "--temporal-reasoning-steps (--temporal-reasoning-frames), --lora, --seed, --batch-size")
EDIT_FLAGS = {  # diffkit edit's dests a ChronoEdit folder takes (the rest must stay at their defaults)
    "command", "func", "checkpoint", "images", "out", "prompts", "negative_prompt", "steps", "guidance_scale",
    "guidance_convention", "temporal_reasoning_steps", "temporal_reasoning_frames", "lora", "seed", "batch_size",
    "device", "progress"}


def add_chronoedit_flags(group) -> None:
    """``--temporal-reasoning-steps N`` and ``--temporal-reasoning-frames N`` (ChronoEdit folders) on ``diffkit edit``'s
    ``group``."""
    from ._common import positive_int
    group.add_argument("--temporal-reasoning-steps", type=positive_int, metavar="N",
                       help="ChronoEdit folders: temporal reasoning for the first N steps (ChronoEditPipeline's "
                            "enable_temporal_reasoning, then the first and last frames alone); default off (the plain "
                            "5-frame edit)")
    group.add_argument("--temporal-reasoning-frames", type=positive_int, metavar="N",
                       help="ChronoEdit folders, with --temporal-reasoning-steps: the reasoning video's frames, "
                            "4 k + 1 (ChronoEditPipeline's num_frames, default 81; ChronoEdit's own script uses 29); "
                            "only the last frame is written")


def check_chronoedit_flag(args) -> None:
    """One line for ``--temporal-reasoning-steps`` / ``-frames`` on a checkpoint that is no ChronoEdit folder."""
    from ..errors import DiffkitError
    from ..interop.chronoedit import CHRONOEDIT_PIPELINE, is_chronoedit_folder
    for flag in ("steps", "frames"):
        if getattr(args, f"temporal_reasoning_{flag}", None) is not None and not is_chronoedit_folder(args.checkpoint):
            raise DiffkitError(f"--temporal-reasoning-{flag} applies to a ChronoEdit folder ({CHRONOEDIT_PIPELINE}); "
                               f"{args.checkpoint} is not one")


def refuse_sample(directory) -> None:
    """One line for ``diffkit sample`` on a ``ChronoEditPipeline`` folder (it edits images), from its JSON."""
    from ..errors import DiffkitError
    from ..interop.chronoedit import CHRONOEDIT_PIPELINE, is_chronoedit_folder
    if is_chronoedit_folder(directory):
        raise DiffkitError(f"{directory} is a {CHRONOEDIT_PIPELINE} folder, which diffkit sample does not take (it "
                           f"edits an image); edit with diffkit edit --images PNG --prompt TEXT")


def edit_chronoedit(args) -> int:
    """Edit ``--images`` (one size, multiples of 16) with ``--prompt`` (once, or once per image) as
    ``ChronoEditPipeline``: the image is the first frame of a short video whose last frame is the edit (written as the
    PNG); 50 steps of the folder's scheduler, CFG s = 5 by default; ``--temporal-reasoning-steps N``: the pipeline's
    temporal reasoning (``--temporal-reasoning-frames``, default 81, for N steps); image i's noise from ``--seed``
    + i; ``--lora FILE[:SCALE]``: fused as the pipeline's ``load_lora_weights`` + ``fuse_lora``
    (:mod:`diffkit.interop.chronoedit_lora`). Every other edit flag: one line, before any weight is read or any
    folder is made."""
    from ..config import resolve_device
    from ..interop.auraflow import guided
    from ..interop.chronoedit import (CHRONOEDIT_PIPELINE, check_chronoedit_folder, check_frames, edit_image,
                                      load_chronoedit)
    from ._common import missing_dirs
    from ._pixart import prompted_edit_inputs, save_prompted_edits

    directory = args.checkpoint
    check_chronoedit_folder(directory)
    images, count = prompted_edit_inputs(args, EDIT_FLAGS, "ChronoEdit", CHRONOEDIT_PIPELINE, EDIT_TAKES)
    check_frames(args.temporal_reasoning_steps, args.temporal_reasoning_frames)  # before any weight is read
    if args.guidance_scale is not None:  # before any weight is read
        guided(args.guidance_scale, args.guidance_convention, args.negative_prompt)
    new_dirs, device = missing_dirs(args.out), resolve_device(args.device)
    model = load_chronoedit(directory, device, progress=args.progress, lora=args.lora)
    model.check_size(images.shape[2], images.shape[3])
    return save_prompted_edits(args, model, edit_image, images, count, new_dirs,
                               f"the last frame of each edit; ChronoEdit folder {directory} as {CHRONOEDIT_PIPELINE}",
                               temporal_reasoning_steps=args.temporal_reasoning_steps,
                               num_frames=args.temporal_reasoning_frames)
