"""``diffkit sample --checkpoint IMAGE_VARIATION_FOLDER --image PNG``: a ``StableDiffusionImageVariationPipeline``
folder (:mod:`diffkit.interop.sd_image_variation`). It draws new images from noise with no strength and a size of
its own (the UNet's, or ``--height`` / ``--width``), conditioned on a picture's CLIP embedding: text-to-image's
shape with the image in the prompt's place, so ``diffkit sample`` (``--image`` repeatable: one row per image, as
``--prompt``; ``--num`` variations) rather than ``diffkit edit`` (which maps each input image to its edit, at its
size). Without a grid option (``--spacing``, ``@SPACING``, ``--final``, ``--nfe``) every sampler runs on the folder's
scheduler's timesteps, and the default sampler (the one computing its scheduler's step) is the pipeline's loop."""
from __future__ import annotations

from typing import Optional

from ..errors import DiffkitError
from ._common import path_arg

TAKES = ("--image, --guidance-scale (--guidance-convention; default diffusers' s = 7.5), --height / --width, "
         "--steps / --nfe, --eta, --sampler and its grid options, --freeu")
REFUSED_OPTIONS = ("refiner", "t2i_adapter", "redux", "thresholding", "flow_shift", "sag_scale", "panorama",
                   "view_batch_size", "circular_padding", "view_window", "view_stride", "latent_upscaler", "gligen")


def add_image_variation_flags(parser) -> None:
    parser.add_argument("--image", dest="variation_images", action="append", type=path_arg, metavar="PNG",
                        help="a Stable Diffusion image variation folder (StableDiffusionImageVariationPipeline): the "
                             "picture whose CLIP image embedding conditions the samples; repeat for one row per "
                             "image (docs/interop/sd_image_variation.md)")


def image_variation_options(args, checkpoint) -> dict:
    """``{"variation_images": [...]}`` for an image variation folder ({} for any other checkpoint without
    ``--image``); one line, before any weight is read or output made, for ``--image`` on another checkpoint, no
    ``--image``, a file that is no image, or a folder diffkit does not drive (its JSON)."""
    from ..interop.controlnet import open_control_image
    from ..interop.sd_image_variation import check_image_variation_folder, is_image_variation_folder
    from ..interop.stable_unclip import is_stable_unclip_folder
    images = list(getattr(args, "variation_images", None) or [])
    if checkpoint is not None and is_stable_unclip_folder(checkpoint):  # its --image (._stable_unclip)
        return {}
    if checkpoint is None or not is_image_variation_folder(checkpoint):
        if images:
            raise DiffkitError(f"--image applies to a Stable Diffusion image variation folder "
                               f"(StableDiffusionImageVariationPipeline); {checkpoint} is not one")
        return {}
    check_image_variation_folder(checkpoint)
    if not images:
        raise DiffkitError(f"{checkpoint} is a Stable Diffusion image variation folder: give --image PNG (the picture "
                           f"to vary; repeat for one row per image)")
    for image in images:
        open_control_image(image, "--image")
    return {"variation_images": images}


def sample_image_variation(directory, *, sampler=None, steps=None, nfe=None, num=None, nrow=None, out=None,
                           individual=None, seed=0, device="cpu", batch_size="auto", spacing=None, final=None, scale=1,
                           progress=True, guidance=None, refused: Optional[dict] = None, height=None, width=None,
                           variation_images=None, freeu=None, **options):
    """Sample an image variation folder to a grid (and single PNGs): rows of ``variation_images`` as
    :func:`~.sample.condition_rows` (each image encoded once), sample i from ``seed + i`` (z_T), classifier-free
    guidance against zeros (default diffusers' s = 7.5), 50 steps of the folder's loop by default. ``refused``:
    {flag: value} of ``diffkit sample`` flags such a folder does not take (one line for the first given, before any
    weight is read)."""
    from ..interop.sd_image_variation import IMAGE_VARIATION_PIPELINE, image_variation, load_image_variation
    from ..models.freeu import parse_freeu
    from ._pixart import given_flags, own_loop
    from .sample import GuidanceRequest, condition_rows, draw_prompted_grid
    request = guidance or GuidanceRequest()
    more = {**(refused or {}), "--prompt": request.prompts, "--negative-prompt": request.negative_prompt,
            "--clip-skip": request.clip_skip, "--prompt-2": request.prompts_2,
            "--negative-prompt-2": request.negative_prompt_2, "--max-sequence-length": request.max_sequence_length,
            "--true-cfg-scale": request.true_cfg_scale, "--original-size (size conditions)": request.sizes}
    given = given_flags(request, options, more, keys=REFUSED_OPTIONS)
    if given:
        raise DiffkitError(f"{given[0]} does not apply to a Stable Diffusion image variation folder ({directory}, "
                           f"{IMAGE_VARIATION_PIPELINE}); it takes {TAKES}")
    if not variation_images:
        raise DiffkitError(f"{directory} is a Stable Diffusion image variation folder: give --image PNG")
    freeu = None if freeu is None else parse_freeu(freeu)
    model = load_image_variation(directory, device, progress=progress)
    own_grid, options = own_loop(model, sampler, spacing, final, nfe, options)
    steps = 50 if steps is None and nfe is None else steps  # the pipeline's num_inference_steps
    grid = model.scheduler_grid(steps) if own_grid else None  # checked now
    embeds = model.encode_images(variation_images)  # each image once
    index, num, nrow = condition_rows(len(variation_images), num, nrow or 8, "images of --image")
    scale_s, convention = ((7.5, "diffusers") if request.guidance_scale is None else
                           (request.guidance_scale, request.convention))

    def draw(_, noise, sampler, run_steps, *, cond, spacing=None, final=None, nfe=None, **how):
        # the scheduler's grid; a memory probe (1 ddim step, diffkit.memory.PROBE_SAMPLING) on its own grid
        where = {"grid": grid} if grid is not None and run_steps == steps else {
            "steps": run_steps, "spacing": spacing, "final": final, "nfe": nfe}
        return image_variation(model, None, image_embeds=cond["embeds"], sampler=sampler, guidance_scale=scale_s,
                               convention=convention, latents=noise, seed=None, return_latents=True, freeu=freeu,
                               **where, **how)

    images, out = draw_prompted_grid(model.denoiser, num, model.latent_shape(1, height, width)[1:], draw,
                                     {"embeds": embeds[index]}, model.decode, out, individual, nrow, scale, seed=seed,
                                     sampler=sampler, steps=steps, nfe=nfe, spacing=spacing, final=final,
                                     batch_size=batch_size, device=device, dtype=model.dtype, progress=progress,
                                     **options)
    on = "the scheduler's timesteps" if grid is not None else "its diffkit grid"
    what = "" if freeu is None else ", " + freeu.label()
    print(f"wrote {out} ({num} samples, {sampler} on {on}, image variation folder {directory}, images "
          f"{[str(image) for image in variation_images]}, guidance {scale_s:g} ({convention}){what})")
    return images


__all__ = ["add_image_variation_flags", "image_variation_options", "sample_image_variation"]
