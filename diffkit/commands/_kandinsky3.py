"""``diffkit edit --checkpoint KANDINSKY3_FOLDER --images PNG|DIR --prompt TEXT``: each image edited as
``Kandinsky3Img2ImgPipeline`` (:func:`diffkit.interop.kandinsky3.image_to_image`), dispatched from
:func:`diffkit.commands.edit` (``diffkit sample`` on the same folder: :func:`._pixart.sample_pixart`)."""
from __future__ import annotations

EDIT_TAKES = ("--images, --prompt, --negative-prompt, --strength, --guidance-scale (--guidance-convention), --steps, "
              "--seed, --batch-size")
EDIT_FLAGS = {  # diffkit edit's dests a Kandinsky 3 folder takes (the rest must stay at their defaults)
    "command", "func", "checkpoint", "images", "out", "prompts", "negative_prompt", "strength", "steps",
    "guidance_scale", "guidance_convention", "seed", "batch_size", "device", "progress"}


def edit_kandinsky3(args) -> int:
    """Edit ``--images`` (at their own size: multiples of the MoVQ's factor) with ``--prompt`` (once, or once per
    image) as ``Kandinsky3Img2ImgPipeline``: strength 0.3, 25 steps, the pipeline's guidance g = 3 (diffkit's
    seed-convention w) by default; image i from ``--seed`` + i (its forward noise, then its steps' noise). Every
    other edit flag (``--mask``, ``--sampler``, ``--height``, ...): one line, before any weight is read or any folder
    is made."""
    import torch

    from ..config import resolve_device
    from ..images import check_image_folder, save_images
    from ..interop.kandinsky3 import K3_IMG2IMG_PIPELINE, K3_STRENGTH, check_edit_images, guidance_w, \
        image_to_image, load_kandinsky3
    from ..memory import batches_with_oom_retry
    from ._common import check_writable_dir, missing_dirs, removed_if_empty_on_failure
    from ._pixart import prompted_edit_inputs

    directory = args.checkpoint
    images, count = prompted_edit_inputs(args, EDIT_FLAGS, "Kandinsky 3", K3_IMG2IMG_PIPELINE, EDIT_TAKES)
    if args.guidance_scale is not None:  # before any weight is read
        guidance_w(args.guidance_scale, args.guidance_convention, args.negative_prompt)
    out, device = args.out, resolve_device(args.device)
    new_dirs = missing_dirs(out)
    model = load_kandinsky3(directory, device, progress=args.progress)
    check_edit_images(model, images)
    check_writable_dir(out)
    check_image_folder(out, count, prefix="edit")
    scale, convention = (None, "diffusers") if args.guidance_scale is None else \
        (args.guidance_scale, args.guidance_convention)
    strength = K3_STRENGTH if args.strength is None else args.strength

    def edit(start: int, n: int):
        prompts = args.prompts * n if len(args.prompts) == 1 else args.prompts[start:start + n]
        return (image_to_image(model, images[start:start + n], prompts, strength=strength,
                               negative_prompt=args.negative_prompt, guidance_scale=scale, convention=convention,
                               steps=args.steps, seed=args.seed + start, output_range="-1,1",
                               progress=args.progress).cpu(),)

    with removed_if_empty_on_failure(new_dirs):  # a batch out of memory is halved and redrawn (seed + i)
        results = [edited for _, edited in batches_with_oom_retry(edit, count, args.batch_size or 16)]
        save_images(torch.cat(results), out, prefix="edit")
    print(f"wrote {count} edited images to {out} (edit_00000.png ...; Kandinsky 3 folder {directory} as "
          f"{K3_IMG2IMG_PIPELINE}, strength {strength}, prompts {list(args.prompts)})")
    return 0
