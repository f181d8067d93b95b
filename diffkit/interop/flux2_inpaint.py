"""FLUX.2 Klein inpainting (``Flux2KleinInpaintPipeline``, diffusers 0.42.1) on a ``Flux2KleinPipeline`` folder.

The pipeline, on :mod:`.flux2`'s latents (patchified, batch-norm normalised, :meth:`.flux2.Flux2.encode`):

* the image: its size (sides multiples of 2 f) is the output's (the pipeline's height / width are overridden by it),
  encoded to its posterior's mode z (``sample_mode="argmax"``: no draw);
* the mask (1 = repaint): binarised at 0.5 (``mask_processor``), then *bilinearly* resized to the latents' h x w
  (``prepare_mask_latents``; FLUX.1's inpainting resizes nearest): a cell whose two middle pixels straddle the
  mask's edge gets 1/4, 1/2 or 3/4 (:func:`diffkit.latent_editing.latent_mask`, ``mode="bilinear"``);
* strength: the flow Euler sigmas of ``set_timesteps(sigmas=linspace(1, 1/N, N), mu=compute_empirical_mu(h w,
  N))`` cut by ``get_timesteps`` (the last N - int(N - N s) of them, :meth:`~.flow_latents.FlowLatentVAE
  .pipeline_strength`), the start ``scale_noise(z, s_0, n) = (1 - s_0) z + s_0 n`` (at strength 1 the noise n);
* each step: SDEdit (Meng et al. 2022, Alg. 1) with the kept region blended back,
  x <- (1 - m) ((1 - s') z + s' n) + m x after the step to s' (z itself after the last one) -- the blend alone
  (:func:`diffkit.editing.inpaint`'s ``blend_noise`` with ``replace=False``; a replaced x_0 would weigh a
  fractional m twice);
* in context at every call (:mod:`.flux2_reference`'s tokens): the image's own z at T = 10, then the
  ``image_reference`` at T = 20 (processed as the Klein pipeline's reference images, without their size check);
* CFG against "" with s = 8.0 by default (``negative_prompt``: the pipeline's ``negative_prompt_embeds`` of it),
  none for a distilled folder; 50 steps, strength 0.8 by default.

The one implementation is :func:`.flow_latents.edit_latents` (:func:`diffkit.latent_editing.latent_inpaint` with
the bilinear mask and the blend). Without a mask there is nothing to run: diffusers 0.42.1 has no FLUX.2 img2img
pipeline (refused in one line)."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, check_choice

KLEIN_INPAINT_GUIDANCE = 8.0  # Flux2KleinInpaintPipeline's default guidance_scale (Flux2KleinPipeline's: 4.0)
KLEIN_INPAINT_STRENGTH = 0.8  # its default strength
KLEIN_INPAINT_AREA = 1024 * 1024  # it shrinks a larger image to this area (Lanczos) first


def check_inpaint_folder(flux2) -> None:
    """One line for a Flux2Pipeline or Flux2KleinKVPipeline folder: diffusers 0.42.1 inpaints FLUX.2 with
    Flux2KleinInpaintPipeline only."""
    from .flux2 import FLUX2_KLEIN_PIPELINE
    if flux2.pipeline != FLUX2_KLEIN_PIPELINE:
        raise DiffkitError(f"a {flux2.pipeline} folder is not inpainted: diffusers 0.42.1's FLUX.2 inpainting is "
                           f"Flux2KleinInpaintPipeline (a Flux2KleinPipeline folder); give one")


def image_to_image(flux2, images: torch.Tensor, prompts: Union[str, Sequence[str]],
                   strength: Optional[float] = None, *, mask: Optional[torch.Tensor] = None,
                   image_reference=None, sampler: Optional[str] = None, steps: Optional[int] = None,
                   guidance_scale: Optional[float] = None, convention: str = "diffusers",
                   negative_prompt: Union[None, str, Sequence[str]] = None, seed: Optional[int] = 0, generator=None,
                   max_sequence_length: int = 512, output_range: str = "0,1", return_latents: bool = False,
                   progress: bool = False, **options) -> torch.Tensor:
    """``images`` (B, 3, H, W) in [-1, 1] (sides multiples of 2 f, at most 1024^2 pixels) inpainted where ``mask``
    (B or 1, 1, H, W; 1 = repaint) is, towards ``prompts`` (one, or one per image), as ``Flux2KleinInpaintPipeline``
    (module docstring): strength 0.8, 50 steps, CFG s = 8.0 (diffusers' convention; ``convention="seed"``: W,
    s = 1 + W) by default; image i's noise from ``seed + i`` (the pipeline with one generator per image).
    ``image_reference``: one image (PIL or path) in context for every sample (the pipeline's ``image_reference``).
    ``sampler`` (or ``grid`` in ``options``) given: that sampler on its own grid of the size's flow schedule, cut as
    :func:`diffkit.inpaint`. ``return_latents``: z_0 (B, 4 C, h, w) (:meth:`.flux2.Flux2.vae_latents` gives the
    pipeline's ``output_type="latent"``)."""
    from .flow_latents import edit_latents, edit_prompts, finish_images
    from .flux2 import FLUX2_STEPS
    from .stable_diffusion import OUTPUT_RANGES
    check_choice("output_range", output_range, OUTPUT_RANGES)
    check_inpaint_folder(flux2)
    if mask is None:
        raise DiffkitError("a FLUX.2 Klein folder is edited with a mask only (Flux2KleinInpaintPipeline; diffusers "
                           "0.42.1 has no FLUX.2 img2img pipeline); give mask=")
    prompts = edit_prompts(images, prompts)
    if images.shape[2] * images.shape[3] > KLEIN_INPAINT_AREA:
        raise DiffkitError(f"images of {images.shape[3]}x{images.shape[2]} pixels are not allowed: "
                           f"Flux2KleinInpaintPipeline shrinks an image above {KLEIN_INPAINT_AREA} pixels first "
                           f"(Lanczos, then floored to multiples of {flux2.latent_scale_factor}); resize it to at "
                           f"most that area")
    h, w = flux2.latent_shape(1, images.shape[2], images.shape[3])[2:]  # sides multiples of 2 f, else one line
    steps = FLUX2_STEPS if steps is None else steps
    strength = KLEIN_INPAINT_STRENGTH if strength is None else strength
    if sampler is None and "grid" not in options:
        sampler, options["grid"] = "ddim", flux2.scheduler_grid(steps, h, w)
        strength = flux2.pipeline_strength(steps, strength)
    if guidance_scale is None and not flux2.distilled:
        guidance_scale, convention = KLEIN_INPAINT_GUIDANCE, "diffusers"
    references = [images]
    if image_reference is not None:
        from .flux2_reference import reference_images
        references += reference_images(flux2, [image_reference], check=False)[0]
    denoiser, cond = flux2.prompt_guidance(prompts, h, w, steps, guidance_scale, negative_prompt,
                                           max_sequence_length, convention)
    from .flux2_reference import reference_tokens
    tokens, ids = reference_tokens(flux2, references)  # the image's own latents at T = 10, the reference's at 20
    cond.update(reference=tokens, reference_ids=ids.expand(len(prompts), -1, -1))
    z0 = edit_latents(flux2, denoiser, images, strength, sampler, steps, mask, posterior="mean", seed=seed,
                      generator=generator, cond=cond, progress=progress, mask_mode="bilinear", blend_noise=True,
                      replace=False, **options)
    return finish_images(flux2, z0, return_latents, output_range)


__all__ = ["image_to_image", "check_inpaint_folder", "KLEIN_INPAINT_GUIDANCE", "KLEIN_INPAINT_STRENGTH",
           "KLEIN_INPAINT_AREA"]
