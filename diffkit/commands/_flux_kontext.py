"""``diffkit edit --checkpoint KONTEXT_FOLDER --images PNG|DIR --prompt TEXT``: a FLUX.1 Kontext folder
(``model_index.json`` naming ``FluxKontextPipeline``) edits each image as that pipeline
(:func:`diffkit.interop.flux_kontext.kontext_edit`), dispatched from :func:`diffkit.commands.edit.run`."""
from __future__ import annotations

from ..errors import DiffkitError

NO_STRENGTH = ("FluxKontextPipeline edits the whole image from noise with the image in context (no strength); "
               "with --mask it is FluxKontextInpaintPipeline, which takes --strength")


def add_kontext_flags(parser) -> None:
    """``--max-area`` and ``--no-auto-resize`` (FLUX.1 Kontext folders' size rules), ``--image-reference``
    (FluxKontextInpaintPipeline's ``image_reference``)."""
    from ._common import path_arg, positive_int
    parser.add_argument("--max-area", type=positive_int, metavar="PIXELS",
                        help="FLUX.1 Kontext folders: the edit's area in pixels (FluxKontextPipeline's max_area, "
                             "default 1024^2); --height / --width (default 1024 each) then only give its aspect "
                             "ratio, as the pipeline's; Qwen-Image-Edit folders: the area each input is resized to "
                             "at its aspect ratio (QwenImageEditPipeline's calculate_dimensions target, fixed there "
                             "at 1024^2, the default); Qwen-Image-Layered folders: the layers' area (default 640^2, "
                             "the pipeline's resolution=640; 1048576: its resolution=1024); Qwen-Image 2.1 "
                             "folders: the area each condition image is resized to at its aspect ratio "
                             "(QwenImage21Pipeline's output_resolution squared, default 1024^2)")
    parser.add_argument("--no-auto-resize", action="store_true",
                        help="FLUX.1 Kontext folders: keep the image's own size (floored to a multiple of 16) instead "
                             "of the preferred Kontext resolution of its aspect ratio (the pipeline's "
                             "_auto_resize=False)")
    parser.add_argument("--image-reference", type=path_arg, metavar="PNG|DIR", action="append",
                        help="FLUX.1 Kontext folders with --mask: the image in context instead of the image being "
                             "inpainted (FluxKontextInpaintPipeline's image_reference), resized to its own "
                             "preferred Kontext resolution (or floored, --no-auto-resize); a folder: one PNG per "
                             "--images file (file-name order). Default: the image itself. FLUX.2 Klein folders with "
                             "--mask: one PNG in context beside the image (Flux2KleinInpaintPipeline's "
                             "image_reference). Qwen-Image-Edit-Plus folders: repeatable, one PNG each, seen "
                             "after every --images file as Picture 2, 3, ... (QwenImageEditPlusPipeline's image "
                             "list; the output takes the last picture's aspect ratio, as there); JoyImage Edit "
                             "Plus folders: the same (JoyImageEditPlusPipeline's images, the output at the last "
                             "one's bucket); Qwen-Image 2.1 folders: the same (QwenImage21Pipeline's image list, "
                             "read as RGBA); GLM-Image folders: repeatable, one PNG each, more condition images "
                             "after every --images file (GlmImagePipeline's image list; the output at the file's "
                             "size)")


def single_reference(args, kind: str) -> None:
    """``--image-reference`` (repeatable for a Qwen-Image-Edit-Plus folder) made the one path a ``kind`` folder takes
    (FLUX.1 Kontext's, FLUX.2 Klein's); given more than once: one line."""
    references = args.image_reference
    if references is not None and len(references) > 1:
        raise DiffkitError(f"--image-reference is given {len(references)} times; a {kind} folder takes it once "
                           f"(several only on a Qwen-Image-Edit-Plus folder)")
    args.image_reference = None if references is None else references[0]


def check_kontext_flags(args) -> None:
    """One line for ``--max-area`` / ``--no-auto-resize`` / ``--image-reference`` on a checkpoint that is no
    FLUX.1 Kontext folder."""
    for flag, value in (("--max-area", args.max_area), ("--no-auto-resize", args.no_auto_resize or None),
                        ("--image-reference", args.image_reference)):
        if value is not None:
            also = {"--max-area": " or a Qwen-Image-Edit one (diffkit's area in place of its 1024^2)",
                    "--image-reference": " or a FLUX.2 Klein one with --mask (Flux2KleinInpaintPipeline) or a "
                                         "Qwen-Image-Edit-Plus one (QwenImageEditPlusPipeline)"}.get(flag, "")
            raise DiffkitError(f"{flag} applies to a FLUX.1 Kontext folder (FluxKontextPipeline){also}; "
                               f"{args.checkpoint} is not one")


def edit_kontext(args) -> int:
    """Each ``--images`` file (image i from ``--seed`` + i; every output of one size) edited as
    FluxKontextPipeline: read and resized as the pipeline's image processor resizes a PIL image to
    :func:`~diffkit.interop.flux_kontext.kontext_image_size` (Lanczos; ``--no-auto-resize``: its own size
    floored), the edit of :func:`~diffkit.interop.flux_kontext.kontext_output_size` of ``--height`` / ``--width``
    (default 1024) and ``--max-area``; 28 steps of flow Euler on its sigmas, the embedded guidance 3.5 by default
    (``--guidance-scale``), true CFG with ``--true-cfg-scale`` and ``--negative-prompt``, ``--prompt-2``,
    ``--max-sequence-length``, ``--lora``, ``--textual-inversion``, ``--ip-adapter`` (repeatable, with
    ``--ip-adapter-image`` / ``--negative-ip-adapter-image``: both pipelines' ``ip_adapter_image`` /
    ``negative_ip_adapter_image``) as a FLUX folder's. With ``--mask`` (one grey
    PNG, white = repaint,
    resized with each image as the pipeline's mask processor does) each image is inpainted as
    FluxKontextInpaintPipeline (:func:`~diffkit.interop.flux_kontext.kontext_inpaint`; ``--strength``, default 1)
    at its own resized size, with ``--image-reference`` (one PNG, or a folder of one per image) in context instead
    of the image: resized as the pipeline's ``image_reference`` (:func:`reference_files`). ``--strength`` or
    ``--image-reference`` without ``--mask``, ``--height`` / ``--width`` / ``--max-area`` with it
    and every other edit flag a FLUX folder does not take: one line, before any weight is read or any folder is
    made. ``--redux DIR --redux-image PNG``: FLUX.1 Redux's embeddings as every image's prompt (true CFG too), as
    the pipelines given FluxPriorReduxPipeline's output."""
    from pathlib import Path

    import torch
    from PIL import Image

    from ..config import resolve_device
    from ..checkpoint import atomic_write_bytes
    from ..images import check_image_folder, png_bytes, save_images, to_uint8
    from ..interop.flux import load_flux
    from ..interop.flux_kontext import (KONTEXT_MAX_AREA, kontext_edit, kontext_image_size, kontext_inpaint,
                                        kontext_output_size)
    from ._common import check_writable_dir, missing_dirs, removed_if_empty_on_failure
    from ._image_size import resized_pngs, size_multiple
    from ._ip_adapter import IPAdapterRequest
    from ._sd3 import check_edit_ip_adapter, edit_sampling, refuse_other_edit_flags
    from ._flux_redux import ReduxRequest, redux_text
    from ._sd_prompts import flux_prompt_options
    from .edit import image_files, mask_file

    directory = args.checkpoint
    single_reference(args, "FLUX.1 Kontext")
    if args.strength is not None and args.mask is None:
        raise DiffkitError(f"--strength {args.strength} without --mask does not apply to a FLUX.1 Kontext folder "
                           f"({directory}): {NO_STRENGTH}; drop --strength or give --mask")
    if args.image_reference is not None and args.mask is None:
        raise DiffkitError(f"--image-reference {args.image_reference} without --mask does not apply to a FLUX.1 "
                           f"Kontext folder ({directory}): FluxKontextPipeline has no image_reference (the --images "
                           f"file is the reference); FluxKontextInpaintPipeline (--mask) takes it")
    given = [flag for flag, value in (("--height", args.height), ("--width", args.width),
                                      ("--max-area", args.max_area)) if value is not None]
    if args.mask is not None and given:
        raise DiffkitError(f"{given[0]} does not apply with --mask on a FLUX.1 Kontext folder: "
                           f"FluxKontextInpaintPipeline edits at the image's (resized) size")
    refuse_other_edit_flags(args, KONTEXT_EDIT_FLAGS, directory, "FLUX Kontext")
    redux = ReduxRequest.from_args(args, directory, edit=True)  # FLUX.1 Redux (._flux_redux)
    if args.images is None or not (args.prompts or redux):
        raise DiffkitError(f"{directory} is a FLUX.1 Kontext folder: give --images PNG|DIR and --prompt TEXT (once "
                           f"for every image, or once per image)")
    info, own, options, request = edit_sampling(args, directory)
    ip_adapter = IPAdapterRequest.from_args(args, directory)  # FLUX IP-Adapters (FluxIPAdapterMixin)
    check_edit_ip_adapter(ip_adapter, args, flux=True)
    files = image_files(args.images)
    count = len(files)
    for flag, rows in (("--prompt", args.prompts), ("--prompt-2", args.prompts_2)):
        if rows is not None and len(rows) not in (1, count) and redux is None:  # Redux: --redux-image's (checked)
            raise DiffkitError(f"{flag} is given {len(rows)} times for {count} images; give it once (every image) "
                               f"or once per image ({count}, in the files' order)")
    multiple = size_multiple(directory)[0]  # 2 f
    size = {"height": args.height or 64 * multiple, "width": args.width or 64 * multiple,
            "max_area": args.max_area or KONTEXT_MAX_AREA}  # the pipeline's default 128 f
    kontext_output_size(size["height"], size["width"], multiple, size["max_area"])  # a side of 0: one line, now
    sizes = []
    for file in files:
        with Image.open(file) as image:
            sizes.append(kontext_image_size(image.height, image.width, multiple, not args.no_auto_resize))
    mask = None if args.mask is None else mask_file(args.mask)
    references = reference_files(args.image_reference, count, multiple, not args.no_auto_resize)
    out, device = args.out, resolve_device(args.device)
    new_dirs = missing_dirs(out)
    flux = load_flux(directory, device, progress=args.progress, lora=args.lora,
                     textual_inversion=args.textual_inversion)
    flux.check_guidance_scale(args.guidance_scale)
    embeds = None if redux is None else redux.embeds(flux, request, device, args.progress)  # every image's prompt
    adapter = None if ip_adapter is None else ip_adapter.load(device, flux.dtype, args.progress)
    check_writable_dir(out)
    check_image_folder(out, count, prefix="edit")

    def row(values, i):  # one for every image, or image i's own
        return None if values is None else values[0] if len(values) == 1 else values[i]

    with removed_if_empty_on_failure(new_dirs):
        results = []
        for i, file in enumerate(files):
            prompts_2 = row(args.prompts_2, i) if args.prompts_2 is not None and len(args.prompts_2) > 1 else None
            text = flux_prompt_options(request, prompts_2)
            how = dict(auto_resize=not args.no_auto_resize, sampler=None if own else info.name, steps=args.steps,
                       guidance_scale=args.guidance_scale, seed=args.seed + i, output_range="-1,1",
                       progress=args.progress, ip_adapter=adapter,
                       **(text if embeds is None else redux_text(embeds, text)), **({} if own else options))
            image, prompt = resized_pngs([file], *sizes[i]), None if embeds is not None else row(args.prompts, i)
            edited = kontext_edit(flux, image, prompt, **size, **how) if mask is None else \
                kontext_inpaint(flux, image, resized_pngs([mask], *sizes[i], mask=True), prompt,
                                1.0 if args.strength is None else args.strength,
                                image_reference=None if references is None else resized_pngs(*row(references, i)),
                                **how)
            results.append(edited.cpu())
        if len({tuple(r.shape[2:]) for r in results}) > 1:  # --mask: each image at its own (resized) size
            for i, result in enumerate(results):
                atomic_write_bytes(Path(out) / f"edit_{i:05d}.png", png_bytes(to_uint8(result)[0]))
        else:
            save_images(torch.cat(results), out, prefix="edit")
    grid = "the scheduler's sigmas" if own else f"{info.name} on its diffkit grid"
    what = "edited" if mask is None else f"inpainted (strength {args.strength or 1.0:g})"
    print(f"wrote {count} {what} images to {out} (edit_00000.png ...; FLUX.1 Kontext folder {directory}, "
          f"{' / '.join(sorted({f'{r.shape[3]}x{r.shape[2]}' for r in results}))} pixels, {grid}, prompts "
          f"{list(args.prompts or [])})")
    return 0


def reference_files(path, count: int, multiple: int, auto_resize: bool):
    """``--image-reference``'s ``[(file, height, width)]``: one file (for every image) or a folder's PNGs (name
    order, one per ``--images`` file), each with the size FluxKontextInpaintPipeline resizes its
    ``image_reference`` to (:func:`~diffkit.interop.flux_kontext.kontext_image_size` of its own size, as the
    image's); ``None`` for ``None``. A missing path, a wrong count or a file that is no image: one line."""
    from pathlib import Path

    from PIL import Image, UnidentifiedImageError

    from ..interop.flux_kontext import kontext_image_size
    from ._controlnet import ControlRequest
    if path is None:
        return None
    if not Path(path).exists():
        raise DiffkitError(f"--image-reference {str(path)!r} does not exist; give a PNG (the reference of every "
                           f"image) or a folder of one PNG per --images file")
    files = ControlRequest.per_row(path, count, "--images file(s)", "image", flag="--image-reference")
    out = []
    for file in files if isinstance(files, list) else [files]:
        try:
            with Image.open(file) as image:
                size = image.height, image.width
        except (OSError, UnidentifiedImageError) as err:
            raise DiffkitError(f"--image-reference {file}: cannot be read as an image ({type(err).__name__}); give "
                               f"a PNG") from None
        out.append(([file], *kontext_image_size(*size, multiple, auto_resize)))
    return out


def _kontext_flags() -> set:
    from ._sd3 import FLUX_EDIT_FLAGS
    return FLUX_EDIT_FLAGS - {"posterior", "batch_size", "controlnets", "control_images",
                              "controlnet_scales", "control_starts", "control_ends", "guess_mode"} | {
        "max_area", "no_auto_resize", "image_reference"}


KONTEXT_EDIT_FLAGS = _kontext_flags()  # diffkit edit's dests a FLUX.1 Kontext folder takes
