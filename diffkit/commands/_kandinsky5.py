"""``diffkit edit --checkpoint KANDINSKY5_I2I_FOLDER --images PNG|DIR --prompt TEXT``: each image edited as
``Kandinsky5I2IPipeline`` (:func:`diffkit.interop.kandinsky5_edit.edit_image`), dispatched from
:func:`diffkit.commands.edit` (``diffkit sample`` on a ``Kandinsky5T2IPipeline`` folder: :func:`._pixart.sample_pixart`;
on an image-to-image one: refused there, :func:`refuse_sample`)."""
from __future__ import annotations

EDIT_TAKES = ("--images, --prompt, --negative-prompt, --guidance-scale (--guidance-convention), --steps, --sampler, "
              "--posterior, --lora, --seed, --batch-size")
EDIT_FLAGS = {  # diffkit edit's dests a Kandinsky 5 image-to-image folder takes (the rest must stay at their defaults)
    "command", "func", "checkpoint", "images", "out", "prompts", "negative_prompt", "steps", "sampler", "posterior",
    "guidance_scale", "guidance_convention", "seed", "batch_size", "device", "progress", "lora"}


def refuse_sample(directory) -> None:
    """One line for ``diffkit sample`` on a ``Kandinsky5I2IPipeline`` folder (it edits images), from its JSON."""
    from ..errors import DiffkitError
    from ..interop.kandinsky5 import KANDINSKY5_I2I_PIPELINE
    from ..interop.sd_xl import pipeline_class
    if pipeline_class(directory) == KANDINSKY5_I2I_PIPELINE:
        raise DiffkitError(f"{directory} is a {KANDINSKY5_I2I_PIPELINE} folder, which diffkit sample does not take "
                           f"(it edits an image); edit with diffkit edit --images PNG --prompt TEXT")


def edit_kandinsky5(args) -> int:
    """Edit ``--images`` (one size; the pipeline's resolution nearest to theirs in aspect ratio) with ``--prompt``
    (once, or once per image) as ``Kandinsky5I2IPipeline``: from pure noise, the prompt seeing the image and the
    image's latents beside the noisy ones; 50 steps, CFG s = 3.5 by default; image i from ``--seed`` + i (its noise,
    then its posterior sample). A ``Kandinsky5T2IPipeline`` folder, and every other edit flag (``--mask``,
    ``--strength``: no SDEdit noising, ``--height``, ...): one line, before any weight is read or any folder is
    made."""
    from ..config import resolve_device
    from ..errors import DiffkitError
    from ..interop.auraflow import guided
    from ..interop.kandinsky5 import KANDINSKY5_I2I_PIPELINE, check_kandinsky5_folder, load_kandinsky5
    from ..interop.kandinsky5_edit import edit_image
    from ._common import missing_dirs
    from ._pixart import prompted_edit_inputs, save_prompted_edits

    directory = args.checkpoint
    index, _, _ = check_kandinsky5_folder(directory)  # the video folders: one line
    if index["_class_name"] != KANDINSKY5_I2I_PIPELINE:
        raise DiffkitError(f"{directory} is a {index['_class_name']} folder, which diffkit edit does not take; edit "
                           f"with a {KANDINSKY5_I2I_PIPELINE} folder, sample this one with diffkit sample")
    images, count = prompted_edit_inputs(args, EDIT_FLAGS, "Kandinsky 5 image-to-image", KANDINSKY5_I2I_PIPELINE,
                                         EDIT_TAKES)
    if args.guidance_scale is not None:  # before any weight is read
        guided(args.guidance_scale, args.guidance_convention, args.negative_prompt)
    new_dirs, device = missing_dirs(args.out), resolve_device(args.device)
    model = load_kandinsky5(directory, device, progress=args.progress, lora=args.lora)
    return save_prompted_edits(args, model, edit_image, images, count, new_dirs,
                               f"Kandinsky 5 folder {directory} as {KANDINSKY5_I2I_PIPELINE}", sampler=args.sampler,
                               posterior=args.posterior or "sample")
