"""``diffkit sample --checkpoint FLUX2_FOLDER --prompt TEXT``: a FLUX.2 diffusers folder (``Flux2Pipeline`` or
``Flux2KleinPipeline``, :mod:`diffkit.interop.flux2`) with any diffkit sampler, dispatched from
:func:`diffkit.commands.sample.sample_to_files`; ``diffkit edit --checkpoint KLEIN_FOLDER --mask ...``: inpainting
as ``Flux2KleinInpaintPipeline`` (:func:`edit_flux2`, :mod:`diffkit.interop.flux2_inpaint`), dispatched from
:func:`diffkit.commands.edit.run`."""
from __future__ import annotations

from typing import Optional

from ..errors import DiffkitError
from ._chroma import NO_ADAPTER_EDIT_FLAGS

TAKES = ("--prompt, --negative-prompt (a Flux2KleinPipeline folder's CFG), --reference-image, --guidance-scale "
         "(Flux2Pipeline: the embedded guidance; Klein: CFG, --guidance-convention), --max-sequence-length, --height / "
         "--width, --lora, --steps / --nfe, --sampler and its grid options (--flow-shift with another sampler than the "
         "pipeline's loop)")


def add_reference_flags(parser) -> None:
    """``diffkit sample --reference-image PNG`` (repeatable): a FLUX.2 folder's reference images."""
    from ._common import path_arg
    parser.add_argument("--reference-image", action="append", dest="reference_images", type=path_arg, metavar="PNG",
                        help="FLUX.2 folders (Flux2Pipeline, Flux2KleinPipeline): an image in context for every sample "
                             "(the pipelines' image=; repeat for several, in order); the size defaults to the first "
                             "one's (docs/interop.md); a Z-Image Omni folder's condition images (the size: the "
                             "last one's)")


def reference_request(args, checkpoint) -> Optional[list]:
    """``--reference-image``'s files (None without it), before any weight is read: one line on a checkpoint that is
    no FLUX.2 or Z-Image Omni folder, or for a file that is no image."""
    from ..interop.flux2 import is_flux2_folder
    from ..interop.ip_adapter import open_image
    from ..interop.sd_xl import pipeline_class
    from ..interop.z_image import Z_IMAGE_OMNI_PIPELINE
    files = getattr(args, "reference_images", None)
    if not files:
        return None
    if checkpoint is None or not (is_flux2_folder(checkpoint) or pipeline_class(checkpoint) == Z_IMAGE_OMNI_PIPELINE):
        raise DiffkitError(f"--reference-image applies to a FLUX.2 folder (Flux2Pipeline, Flux2KleinPipeline) or a "
                           f"Z-Image Omni folder (ZImageOmniPipeline); {checkpoint} is not one")
    for file in files:
        try:
            open_image(file)
        except DiffkitError:
            raise DiffkitError(f"--reference-image {file}: cannot be read as an image; give a PNG or JPEG") from None
    return list(files)


def sample_flux2(directory, *, sampler="ddim", steps=None, nfe=None, num=None, nrow=None, out=None, individual=None,
                 seed=0, device="cpu", batch_size="auto", spacing=None, final=None, scale=1, progress=True,
                 guidance=None, refused: Optional[dict] = None, height=None, width=None, lora=None, **options):
    """Sample a FLUX.2 folder to a grid (and single PNGs) at ``height`` x ``width`` (default 128 f; multiples of
    2 f; the shift follows the size and the step count): rows as :func:`~.sample.condition_rows`, sample i from
    ``seed + i`` (z at s = 1 in the pipelines' patchified layout), 50 steps (Flux2KleinKVPipeline: 4, unguided);
    ``--guidance-scale``: Flux2Pipeline's embedded guidance as given (default 4.0), Flux2KleinPipeline's CFG
    (default s = 4.0 in diffusers' convention, against ``--negative-prompt``, default "", the pipeline's); ``ddim``
    without a grid option steps on the pipeline's sigmas (its loop), any other sampler on its diffkit grid of the
    size's flow schedule. ``refused``:
    {flag: value} of flags a FLUX.2 folder does not take (one line for the first given). ``reference_images`` (in
    ``options``): ``--reference-image`` files, in context for every sample as the pipelines' ``image=`` list
    (:mod:`diffkit.interop.flux2_reference`; the size defaults to the first one's processed size). ``lora``: LoRA
    files ((path, scale) pairs) fused into the transformer as the pipelines' ``load_lora_weights`` + ``fuse_lora``
    (:func:`diffkit.interop.flux2.load_flux2`)."""
    from ..interop.flux2 import load_flux2, text_to_image
    from ._chroma import _guidance
    from ._pixart import checked_request
    from ._sd3 import pipeline_loop, prompted_rows
    from .sample import draw_prompted_grid

    references = options.pop("reference_images", None)
    guidance = checked_request(directory, "FLUX.2", TAKES, guidance, options, refused,
                               keys=("refiner", "t2i_adapter", "redux", "thresholding"))
    flux2 = load_flux2(directory, device, progress=progress, lora=lora)
    if references is not None:  # processed (and refused) before sampling; their size is the default
        from ..interop.flux2_reference import reference_images
        size = reference_images(flux2, references)[1]
        height, width = size[0] if height is None else height, size[1] if width is None else width
    _, _, prompts, _, num, nrow, per_sample = prompted_rows(flux2, guidance, None, None, num, nrow, seed, device,
                                                            progress)
    own = pipeline_loop(sampler, spacing, final, nfe)
    steps = flux2.default_steps if steps is None and nfe is None else steps
    how_guided = _guidance(guidance)  # Flux2Pipeline's embedded value is a value, not a convention's scale
    if not flux2.klein:
        how_guided["convention"] = "diffusers"
    flux2.check_guidance_scale(how_guided["guidance_scale"])  # before any sampling
    h, w = flux2.latent_shape(1, height, width)[2:]
    denoiser = flux2.denoiser_for(h, w, steps if isinstance(steps, int) else flux2.default_steps)

    def prompted(_, noise, sampler, steps, *, cond, spacing=None, final=None, nfe=None, **how):
        grid = {"grid": "scheduler"} if own and pipeline_loop(sampler, spacing, final, nfe) else \
            {"spacing": spacing, "final": final, "nfe": nfe}
        return text_to_image(flux2, cond["prompts"], sampler=sampler, steps=steps, seed=None, latents=noise,
                             negative_prompt=guidance.negative_prompt, return_latents=True,
                             max_sequence_length=guidance.max_sequence_length or 512, references=references,
                             **how_guided, **grid, **how)

    images, out = draw_prompted_grid(
        denoiser, num, flux2.latent_shape(1, height, width)[1:], prompted,
        per_sample, flux2.decode, out,
        individual, nrow, scale, seed=seed, sampler=sampler, steps=steps, nfe=nfe, spacing=spacing, final=final,
        batch_size=batch_size, device=device, dtype=flux2.dtype, progress=progress, **options)
    grid = "the pipeline's sigmas" if own else "its diffkit grid"
    print(f"wrote {out} ({num} samples, {sampler} on {grid}, {flux2.pipeline} folder {directory}, prompts {prompts})")
    return images


EDIT_TAKES = ("--images, --mask (required), --prompt, --negative-prompt, --guidance-scale (--guidance-convention), "
              "--strength, --padding-mask-crop, --image-reference (one PNG), --max-sequence-length, --lora, --steps, "
              "--sampler and its grid options, --eta")
EDIT_FLAGS = (NO_ADAPTER_EDIT_FLAGS - {"posterior", "height", "width"}) | {  # a Klein folder's (the image's size,
    "lora", "image_reference", "padding_mask_crop"}                            # the posterior's mode: the pipeline's)
KLEIN_INPAINT = "Flux2KleinInpaintPipeline"


def check_klein_edit(args) -> None:
    """One line, from the JSON alone, for ``diffkit edit`` on a FLUX.2 folder it does not run: a Flux2Pipeline
    folder, no ``--mask`` (diffusers 0.42.1 has no FLUX.2 img2img), an ``--image-reference`` folder or a file that
    is no image."""
    from ..interop.flux2 import FLUX2_KLEIN_PIPELINE, flux2_kind
    from ..interop.ip_adapter import open_image
    directory = args.checkpoint
    if flux2_kind(directory) != FLUX2_KLEIN_PIPELINE:
        raise DiffkitError(f"{directory} is a FLUX.2 folder, which diffkit edit does not take as a "
                           f"{flux2_kind(directory)} one: "
                           f"diffusers 0.42.1 edits FLUX.2 only as {KLEIN_INPAINT} (a {FLUX2_KLEIN_PIPELINE} folder, "
                           f"with --mask); give its reference images to diffkit sample --reference-image")
    if args.mask is None:
        raise DiffkitError(f"{directory} is a {FLUX2_KLEIN_PIPELINE} folder: diffkit edit inpaints it as "
                           f"{KLEIN_INPAINT} and needs --mask PNG (white = repaint); diffusers 0.42.1 has no FLUX.2 "
                           f"img2img pipeline")
    from ._flux_kontext import single_reference
    single_reference(args, "FLUX.2 Klein")
    reference = args.image_reference
    if reference is not None:
        from pathlib import Path
        if Path(reference).is_dir():
            raise DiffkitError(f"--image-reference {reference} is a folder; a FLUX.2 Klein folder takes one PNG, in "
                               f"context for every image ({KLEIN_INPAINT}'s image_reference)")
        try:
            open_image(reference)
        except DiffkitError:
            raise DiffkitError(f"--image-reference {reference}: cannot be read as an image; give a PNG") from None


def edit_flux2(args) -> int:
    """``diffkit edit --checkpoint KLEIN_FOLDER --images PNG|DIR --mask PNG --prompt TEXT``: each image inpainted as
    Flux2KleinInpaintPipeline (:func:`diffkit.interop.flux2_inpaint.image_to_image`: strength 0.8, 50 steps, CFG
    s = 8.0 against ``--negative-prompt`` (default "") by default; image i's noise from ``--seed`` + i; ``ddim``
    without a grid option on the pipeline's sigmas cut by get_timesteps, another sampler on its own grid) at the
    images' size, ``--image-reference PNG`` in context for every image, ``--lora`` as in sampling; with
    ``--padding-mask-crop N`` the mask's box inpainted and pasted back as the pipeline's ``padding_mask_crop``
    (:mod:`diffkit.interop.mask_crop`; the box at the image's own size, and, as the pipeline's Flux2ImageProcessor
    does, the output centre-cropped to the box's size, not resized, where it is pasted back). Every other edit
    flag, a Flux2Pipeline folder and no ``--mask`` (:func:`check_klein_edit`): one line, before any weight is read
    or any folder is made."""
    import torch

    from ..config import resolve_device
    from ..images import check_image_folder, save_images
    from ..interop.flux2 import load_flux2
    from ..interop.flux2_inpaint import KLEIN_INPAINT_STRENGTH, image_to_image
    from ..interop.mask_crop import overlaid_edits
    from ..memory import batches_with_oom_retry
    from ._chroma import _guidance
    from ._common import check_writable_dir, missing_dirs, removed_if_empty_on_failure
    from ._pixart import prompted_edit_inputs
    from ._sd3 import edit_sampling
    from .edit import image_files

    directory = args.checkpoint
    check_klein_edit(args)
    images, count, mask = prompted_edit_inputs(args, EDIT_FLAGS, "FLUX.2 Klein", KLEIN_INPAINT, EDIT_TAKES,
                                               with_mask=True)
    info, own, options, request = edit_sampling(args, directory)
    out, device = args.out, resolve_device(args.device)
    new_dirs = missing_dirs(out)
    klein = load_flux2(directory, device, progress=args.progress, lora=args.lora)
    klein.latent_shape(1, images.shape[2], images.shape[3])  # the images' size fits the VAE and patches
    how_guided = _guidance(request)
    klein.check_guidance_scale(how_guided["guidance_scale"])
    check_writable_dir(out)
    check_image_folder(out, count, prefix="edit")

    def edit(start: int, n: int):
        prompts = args.prompts * n if len(args.prompts) == 1 else args.prompts[start:start + n]
        return (image_to_image(klein, images[start:start + n], prompts, args.strength, mask=mask,
                               image_reference=args.image_reference, sampler=None if own else info.name,
                               steps=args.steps, negative_prompt=args.negative_prompt, seed=args.seed + start,
                               max_sequence_length=args.max_sequence_length or 512, output_range="-1,1",
                               progress=args.progress, **how_guided, **({} if own else options)).cpu(),)

    with removed_if_empty_on_failure(new_dirs):  # a batch out of memory is halved and redrawn (seed + i)
        results = [edited for _, edited in batches_with_oom_retry(edit, count, args.batch_size or 16)]
        from diffusers.pipelines.flux2.image_processor import Flux2ImageProcessor  # its overlay: a centre crop
        save_images(overlaid_edits(args, image_files(args.images), torch.cat(results), Flux2ImageProcessor()), out,
                    prefix="edit")
    how = "the scheduler's sigmas" if own else f"{info.name} on its diffkit grid"
    print(f"wrote {count} inpainted images to {out} (edit_00000.png ...; {KLEIN_INPAINT}, folder {directory}, "
          f"strength {args.strength or KLEIN_INPAINT_STRENGTH}, {how}, prompts {list(args.prompts)})")
    return 0
