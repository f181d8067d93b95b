"""``diffkit edit --checkpoint LAYERED_FOLDER --images PNG|DIR --prompt TEXT --layers N``: a Qwen-Image-Layered folder
(``model_index.json`` naming ``QwenImageLayeredPipeline``) decomposes each image into N RGBA layers as that pipeline
(:func:`diffkit.interop.qwen_image_layered.decompose`), dispatched from :func:`diffkit.commands.edit.run`; ``--layers``
anywhere else is refused there in one line (:func:`check_layers_flag`)."""
from __future__ import annotations

from ..errors import DiffkitError
from ._chroma import NO_ADAPTER_EDIT_FLAGS
from ._qwen_image import QwenImageFamily

KIND = "Qwen-Image-Layered"
TAKES = ("--images, --prompt (the image's description, once or once per image; none: the image's caption), --layers, "
         "--english-caption, --max-area, "
         "--negative-prompt (true CFG), --guidance-scale (--guidance-convention), --max-sequence-length, --lora, "
         "--steps, --sampler and its grid options, --eta")
FLAGS = NO_ADAPTER_EDIT_FLAGS - {"mask", "strength", "posterior", "height", "width", "batch_size"} | {
    "lora", "layers", "max_area", "english_caption"}


class QwenImageLayeredFamily(QwenImageFamily):
    """A Qwen-Image-Layered folder's: no ``diffkit sample`` (its pipeline decomposes an image); ``diffkit edit`` runs
    :func:`edit_layered`, dispatched before the family's edit code."""

    kind, samples = KIND, False


def is_layered_folder(directory) -> bool:
    from ..interop.qwen_image import LAYERED_PIPELINE
    from ..interop.sd_xl import pipeline_class
    return pipeline_class(directory) == LAYERED_PIPELINE


def check_layers_flag(args) -> None:
    """One line for ``--layers`` or ``--english-caption`` on a checkpoint that is no Qwen-Image-Layered folder."""
    for flag, value in (("--layers", args.layers), ("--english-caption", args.english_caption)):
        if value is not None and not is_layered_folder(args.checkpoint):
            raise DiffkitError(f"{flag} applies to a {KIND} folder (QwenImageLayeredPipeline); {args.checkpoint} is "
                               f"not one")


def edit_layered(args) -> int:
    """Each ``--images`` file (image i from ``--seed`` + i, read in the VAE's channels: RGBA for the folder's
    4-channel VAE) decomposed into ``--layers`` N (default 4) layers as QwenImageLayeredPipeline: the image's ratio at
    ``--max-area`` pixels (default 640^2, the pipeline's resolution=640; 1048576: its resolution=1024), 50 steps of
    flow Euler on its sigmas, true CFG 4.0 with ``--negative-prompt``; no ``--prompt`` (or "" / " "): each image's
    caption by the folder's Qwen2.5-VL model, as the pipeline's (its default Chinese annotator prompt; with
    ``--english-caption`` its English one, ``use_en_prompt=True``; one line where every image has a prompt). Written to
    ``--out`` as ``edit_{i:05d}_layer_{k:05d}.png`` (RGBA), all at the end (no partial set). Every other flag and a
    prompt count other than 1 or one per image: one line, before any weight."""
    from ..config import resolve_device
    from ..images import check_image_folder, save_images
    from ..interop.controlnet import open_control_image
    from ..interop.qwen_image import load_qwen_image
    from ..interop.qwen_image_layered import LAYERS, decompose
    from ._chroma import _guidance
    from ._common import check_writable_dir, missing_dirs, removed_if_empty_on_failure
    from ._pixart import check_folder_edit_args
    from ._sd3 import edit_sampling
    from .edit import image_files

    directory, layers = args.checkpoint, args.layers or LAYERS
    args.prompts = args.prompts or [""]  # (no --prompt: the images' captions)
    check_folder_edit_args(args, FLAGS, KIND, TAKES)
    files = image_files(args.images)
    if args.english_caption and all(prompt not in ("", " ") for prompt in args.prompts):
        raise DiffkitError("--english-caption goes with images without a prompt (no --prompt, or \"\"), which the "
                           "folder's model captions; every image here has one")
    if len(args.prompts) not in (1, len(files)):
        raise DiffkitError(f"--prompt is given {len(args.prompts)} times for {len(files)} images; give it once (every "
                           f"image) or once per image ({len(files)}, in the files' order)")
    pictures = [open_control_image(file, "--images") for file in files]
    info, own, options, request = edit_sampling(args, directory)
    out, device = args.out, resolve_device(args.device)
    check_writable_dir(out)
    for i in range(len(files)):
        check_image_folder(out, layers, prefix=f"edit_{i:05d}_layer")
    new_dirs = missing_dirs(out)
    model = load_qwen_image(directory, device, progress=args.progress, lora=args.lora)
    how_guided = _guidance(request)
    with removed_if_empty_on_failure(new_dirs):
        results = [decompose(model, picture, args.prompts[i % len(args.prompts)], layers=layers, area=args.max_area,
                             sampler=None if own else info.name, steps=args.steps,
                             negative_prompt=args.negative_prompt, seed=args.seed + i,
                             max_sequence_length=args.max_sequence_length, output_range="-1,1",
                             use_en_prompt=bool(args.english_caption), progress=args.progress, **how_guided,
                             **({} if own else options))[0].cpu()
                   for i, picture in enumerate(pictures)]
        for i, result in enumerate(results):
            save_images(result, out, prefix=f"edit_{i:05d}_layer")
    how = "the scheduler's sigmas" if own else f"{info.name} on its diffkit grid"
    print(f"wrote {len(files)} x {layers} layers to {out} (edit_00000_layer_00000.png ...; {KIND} folder {directory}, "
          f"{how}, prompts {list(args.prompts)})")
    return 0
