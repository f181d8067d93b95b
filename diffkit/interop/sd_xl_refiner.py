"""SD-XL's refiner and the base -> refiner hand-over ("ensemble of expert denoisers"), as diffusers 0.42.

SD-XL's refinement stage (Podell et al. 2023, Sec. 2.5) is a second latent diffusion model, specialised on
the low noise levels, run on the base model's latents with the same prompt. diffusers offers it two ways:

* img2img (SDEdit) of the base's output with ``StableDiffusionXLImg2ImgPipeline`` of the refiner folder
  (``strength``): :func:`diffkit.latent_editing.latent_img2img` with the refiner's
  :meth:`~.sd_xl.StableDiffusionXL.prompt_guidance` (``diffkit edit --checkpoint REFINER``);
* the hand-over (eDiff-I's ensemble of expert denoisers, Balaji et al. 2022): the base runs the high-noise
  part of the grid, ``StableDiffusionXLPipeline(denoising_end=f, output_type="latent")``
  (:func:`~.stable_diffusion.text_to_image` with ``denoising_end``), and the refiner the rest from those
  noisy latents, ``StableDiffusionXLImg2ImgPipeline(image=latents, denoising_start=f)`` (:func:`refine`);
  :func:`ensemble` runs both (``diffkit sample --checkpoint BASE --refiner REFINER``; ControlNets, IP-Adapters
  and LoRAs act on the base's half only, as diffusers' docs chain the pipelines). The cut is
  :mod:`diffkit.handover`'s. Edits hand over the same way: the base's ``latent_img2img`` / ``latent_inpaint`` with
  ``denoising_end``, then :func:`refine` (``mask=`` for inpainting: ``StableDiffusionXLInpaintPipeline`` of both
  folders; ``diffkit edit --refiner``).

The refiner folder (:func:`~.sd_xl.load_sd_xl`) has ``text_encoder_2`` alone (its penultimate states are the
context, its pooled output ``text_embeds``) and ``requires_aesthetics_score``: time ids original_size +
crops_coords_top_left + (aesthetic_score,), 6 for the prompt and 2.5 for the null half by default (the
stability-ai generative-models refiner's ``aesthetic_score`` embedder; :meth:`~.sd_xl.StableDiffusionXL
.aesthetic_time_ids`).

Latents are diffkit's sampler state, z_t = alpha_t z_0 + sigma_t eps (what diffusers' DDIM holds); diffusers'
Euler-family schedulers hold z_t / alpha_t = z_t sqrt(1 + sigma_t^2) instead, so latents handed between
diffkit and a diffusers Euler pipeline are scaled by that factor (between diffkit's two halves nothing is).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from ..handover import check_fraction

DEFAULT_HANDOVER = 0.8  # diffusers' documented high_noise_frac for the base + refiner ensemble


def check_text_to_image(sd, denoising_end, return_latents: bool) -> Optional[float]:
    """:func:`~.stable_diffusion.text_to_image`'s checks: a refiner does not start from noise
    (``StableDiffusionXLPipeline`` cannot run its 5 time ids), and ``denoising_end`` returns the noisy
    latents (``return_latents``). With ControlNets it is ``StableDiffusionXLControlNetPipeline(denoising_end=f)``:
    their guidance window counts the whole grid's steps, as there. Returns ``denoising_end``."""
    if getattr(sd, "requires_aesthetics_score", False):
        raise DiffkitError("this SD-XL refiner folder (requires_aesthetics_score) edits latents or images: use "
                           "refine() / latent_img2img (diffkit edit, or diffkit sample --refiner with a base folder), "
                           "not text to image")
    check_fraction("denoising_end", denoising_end)
    if not return_latents:
        raise DiffkitError(f"denoising_end={denoising_end!r} stops at noisy latents, which are not images: pass "
                           f"return_latents=True (diffusers' output_type='latent') and hand them to refine()")
    return denoising_end


def refine(refiner, prompts: Union[str, Sequence[str]], latents: torch.Tensor, denoising_start: float, *,
           sampler: str = "ddim", steps: int = 50, guidance_scale: Optional[float] = None,
           convention: str = "diffusers", guidance_rescale: float = 0.0, negative_prompt=None,
           micro_conditioning: Optional[dict] = None, seed: Optional[int] = None, generator=None,
           return_latents: bool = False, output_range: str = "0,1", progress: bool = False,
           mask: Optional[torch.Tensor] = None, **options) -> torch.Tensor:
    """The refiner's half of a hand-over: ``StableDiffusionXLImg2ImgPipeline(prompts, image=latents,
    denoising_start=f)`` of a refiner (or base) folder. ``latents`` (B, C, h, w): the base's state at the
    first grid time below int(round(T - f T)) (:func:`~.stable_diffusion.text_to_image` with the same
    ``sampler`` / ``steps`` / grid options and ``denoising_end=f``), not noised again; the refiner runs the
    rest of its grid for ``steps`` (:func:`diffkit.img2img` with ``denoising_start``). Guidance as
    :func:`~.stable_diffusion.text_to_image` (default: the folder's s = 5); ``micro_conditioning`` takes
    ``aesthetic_score`` / ``negative_aesthetic_score`` for a refiner; the size conditions default to the
    latents' size times the VAE factor. Returns images (as text_to_image's ``output_range``) or the latents.
    ``mask`` (B or 1, 1, H, W), 1 = repaint, H x W the images' size: the half of an inpainting hand-over,
    ``StableDiffusionXLInpaintPipeline(prompts, image=latents, mask_image=mask, denoising_start=f)`` after the base's
    inpainting with ``denoising_end=f`` (:func:`diffkit.inpaint` with ``denoising_start``: the latents' kept
    region is the known image; :func:`~diffkit.latent_editing.latent_mask`)."""
    from ..editing import img2img
    from .stable_diffusion import OUTPUT_RANGES, prompt_list
    from ..errors import check_choice
    check_choice("output_range", output_range, OUTPUT_RANGES)
    check_fraction("denoising_start", denoising_start)
    prompts = prompt_list(prompts)
    if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or latents.shape[0] != len(prompts) \
            or latents.shape[1] != refiner.unet.config.in_channels:
        shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise DiffkitError(f"latents of shape {shape} are not allowed; expected ({len(prompts)}, "
                           f"{refiner.unet.config.in_channels}, h, w) for {len(prompts)} prompts")
    if guidance_scale is None:
        guidance_scale, convention = refiner.default_guidance_scale, "diffusers"
    f = refiner.vae_scale_factor
    guided, cond = refiner.prompt_guidance(prompts, negative_prompt, guidance_scale, convention, guidance_rescale,
                                           image_size=(latents.shape[2] * f, latents.shape[3] * f),
                                           micro_conditioning=micro_conditioning, img2img=True)
    latents = latents.to(device=refiner.device, dtype=refiner.dtype)
    run = dict(denoising_start=denoising_start, seed=seed, generator=generator, cond=cond, progress=progress,
               value_range=None, **options)
    if mask is None:
        z = img2img(guided, latents, 1.0, sampler, steps, **run)
    else:
        from ..editing import check_mask, inpaint
        from ..latent_editing import latent_mask
        pixels = check_mask(mask, torch.empty(latents.shape[0], 1, latents.shape[2] * f, latents.shape[3] * f))
        z = inpaint(guided, latents, latent_mask(pixels, latents.shape[2:]).expand_as(latents).to(latents),
                    sampler, steps, **run)
    if return_latents:
        return z
    images = refiner.decode(z)
    return (images / 2 + 0.5).clamp(0, 1) if output_range == "0,1" else images.clamp(-1, 1)


def ensemble(base, refiner, prompts: Union[str, Sequence[str]], *, handover: float = DEFAULT_HANDOVER,
             sampler: str = "ddim", steps: int = 50, guidance_scale: Optional[float] = None,
             negative_prompt=None, latents: Optional[torch.Tensor] = None, seed: Optional[int] = 0,
             micro_conditioning: Optional[dict] = None, refiner_conditioning: Optional[dict] = None,
             return_latents: bool = False, output_range: str = "0,1", progress: bool = False,
             **options) -> torch.Tensor:
    """Base + refiner as diffusers' "ensemble of expert denoisers": ``base(prompts, denoising_end=handover,
    output_type="latent")`` then ``refiner(prompts, image=latents, denoising_start=handover)``, the same
    ``sampler`` / ``steps`` / grid ``options`` and guidance for both (each folder's default s, 5, when
    ``guidance_scale`` is None); ``micro_conditioning`` is the base's, ``refiner_conditioning`` the refiner's
    (e.g. aesthetic scores). ``latents``: z_T (default N(0, I) from ``seed + i``); the refiner's generators
    continue the base's (per-sample ``seed + i``), for stochastic samplers."""
    from .stable_diffusion import text_to_image
    from ..editing import _generators
    check_fraction("handover", handover)
    batch = len([prompts] if isinstance(prompts, str) else list(prompts))
    generator = _generators(seed, None, batch) if seed is not None else None
    z = text_to_image(base, prompts, sampler=sampler, steps=steps, guidance_scale=guidance_scale,
                      negative_prompt=negative_prompt, latents=latents, seed=None, generator=generator,
                      micro_conditioning=micro_conditioning, return_latents=True, progress=progress,
                      denoising_end=handover, **options)
    return refine(refiner, prompts, z, handover, sampler=sampler, steps=steps, guidance_scale=guidance_scale,
                  negative_prompt=negative_prompt, micro_conditioning=refiner_conditioning, generator=generator,
                  return_latents=return_latents, output_range=output_range, progress=progress, **options)


__all__ = ["DEFAULT_HANDOVER", "check_text_to_image", "refine", "ensemble"]
