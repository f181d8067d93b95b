"""Stable Diffusion image variation folders (``StableDiffusionImageVariationPipeline``, diffusers 0.42.1).

Lambda Labs' image variation model (``lambdalabs/sd-image-variations-diffusers``) is Stable Diffusion (Rombach et
al. 2022) whose UNet was fine-tuned to cross-attend to one token instead of the 77 text states: the projected CLIP
image embedding of a picture (CLIP: Radford et al. 2021; the image tower's ``image_embeds``, the same conditioning
as the unCLIP decoder's of Ramesh et al. 2022, Sec. 2.1, given through cross-attention). A folder holds ``unet/``,
``vae/``, ``image_encoder/`` (``CLIPVisionModelWithProjection``), ``feature_extractor/`` (``CLIPImageProcessor``:
resize, centre crop, normalise) and ``scheduler/`` (and a ``safety_checker``, which diffkit does not run); no text
encoder. This module does what the pipeline's ``__call__`` does:

* the condition: each picture's pixel values from the folder's ``feature_extractor`` (given PIL images), then
  ``image_encoder(pixels).image_embeds.unsqueeze(1)``: c (B, 1, d), d the UNet's ``cross_attention_dim``;
* classifier-free guidance (Ho & Salimans 2022, eq. 6, diffusers' convention eps_u + s (eps_c - eps_u)) against
  zeros of c's shape (``negative_prompt_embeds = torch.zeros_like(image_embeddings)``), default s = 7.5; the
  pipeline guides only for s > 1 and runs one unguided pass otherwise, diffkit applies the formula as written for
  s != 1 (s = 1: one unguided call, as there);
* z_T ~ N(0, I) (B, C, H / f, W / f) from each image's generator (default size the UNet's ``sample_size`` x f),
  then the folder's scheduler: without ``sampler`` / ``grid`` its own timesteps after ``set_timesteps(steps)``
  (:meth:`ImageVariation.scheduler_grid`) and the diffkit sampler computing its step (:meth:`ImageVariation.
  folder_sampler`: ``PNDMScheduler`` -> ``pndm-skip-prk`` (F-PNDM ``pndm`` without ``skip_prk_steps``),
  ``DDIMScheduler`` -> ``ddim``, ``EulerDiscreteScheduler`` -> ``euler``, ``DPMSolverMultistepScheduler`` ->
  ``dpm-solver++-2m`` / ``-3m`` with its options); any other diffkit sampler runs on that grid too or on its own;
* x = D(z_0 / scaling_factor), (x + 1) / 2 clamped (``output_type="pt"``).

Everything else is :mod:`.stable_diffusion`'s (the UNet Denoiser, :meth:`~.stable_diffusion.StableDiffusion.guided`,
the samplers, ``freeu``); :func:`image_variation` is :func:`~.stable_diffusion.text_to_image` with the images in
place of the prompts. The pipeline has no prompt, negative prompt, guidance rescale or other add-on: those are
refused in one line, as an LCM / TCD scheduler and a folder without an image encoder are (before any weight is
read). ``diffkit sample --checkpoint FOLDER --image PNG`` (:mod:`diffkit.commands._sd_image_variation`).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, read_json_object
from .stable_diffusion import StableDiffusion

IMAGE_VARIATION_PIPELINE = "StableDiffusionImageVariationPipeline"
IMAGE_PARTS = ("unet", "vae", "image_encoder", "feature_extractor", "scheduler")


def is_image_variation_folder(path) -> bool:
    """True for a diffusers folder whose ``model_index.json`` names ``StableDiffusionImageVariationPipeline``."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == IMAGE_VARIATION_PIPELINE


def check_image_variation_folder(directory) -> dict:
    """The folder's scheduler config, after one-line checks from its JSON alone: the pipeline class, its components
    (an image encoder of the classes :data:`.stable_cascade_image.IMAGE_CLASSES` allows), a text-conditional SD
    UNet of the image embedding's width (:func:`.stable_diffusion.check_stable_diffusion_unet`), and no LCM / TCD
    scheduler (the pipeline's are diffusers' Karras schedulers)."""
    from .sd3 import _entry
    from .stable_cascade_image import IMAGE_CLASSES
    from .stable_diffusion import check_components, check_stable_diffusion_unet
    directory = Path(directory)
    if not is_image_variation_folder(directory):
        raise DiffkitError(f"{directory} is not a Stable Diffusion image variation folder (model_index.json naming "
                           f"{IMAGE_VARIATION_PIPELINE})")
    index = read_json_object(directory / "model_index.json", "diffusers index")
    check_components(directory, index, IMAGE_PARTS, "image variation")
    for part, allowed in IMAGE_CLASSES.items():
        if _entry(index, part) not in allowed:
            raise DiffkitError(f"{directory}'s {part} is {_entry(index, part)!r}; allowed: {', '.join(allowed)}")
    scheduler = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    if scheduler.get("_class_name") in ("LCMScheduler", "TCDScheduler"):
        raise DiffkitError(f"{directory}'s scheduler is a {scheduler['_class_name']}; allowed: the pipeline's "
                           f"(DDIM, PNDM, Euler, DPM-Solver, ...), as {IMAGE_VARIATION_PIPELINE} runs them")
    unet = read_json_object(directory / "unet" / "config.json", "unet config")
    check_stable_diffusion_unet(unet, directory)
    encoder = read_json_object(directory / "image_encoder" / "config.json", "image encoder config")
    width = encoder.get("projection_dim")
    if width != unet.get("cross_attention_dim", 1280):
        raise DiffkitError(f"{directory}'s image encoder has projection_dim={width!r}, its UNet "
                           f"cross_attention_dim={unet.get('cross_attention_dim', 1280)!r}; allowed: equal widths")
    return scheduler


def refuse_image_variation_folder(path) -> None:
    """One line for an image variation folder given where a text-to-image / editing folder is expected."""
    if is_image_variation_folder(path):
        raise DiffkitError(f"{path} is a Stable Diffusion image variation folder ({IMAGE_VARIATION_PIPELINE}): it "
                           f"draws variations of an image, with no prompt; use diffkit sample --checkpoint {path} "
                           f"--image PNG (library: sd_image_variation.load_image_variation and image_variation)")


@dataclass
class ImageVariation(StableDiffusion):
    """A loaded image variation folder (:func:`load_image_variation`): Stable Diffusion without a text encoder, with
    the ``image_encoder`` and ``feature_extractor`` that make its one-token condition."""

    image_encoder: object = None
    feature_extractor: object = None

    def encode_prompts(self, prompts, clip_skip=None):
        raise DiffkitError("an image variation folder has no text encoder: it is conditioned on an image (give "
                           "images to image_variation; diffkit sample --image PNG)")

    def encode_images(self, images: Sequence) -> torch.Tensor:
        """(B, 1, d): ``image_embeds`` of each of ``images`` (PIL images or paths) as the pipeline's ``_encode_image``
        (the folder's ``feature_extractor``, the encoder in its own dtype), in the UNet's dtype."""
        from .ip_adapter import open_image
        images = [open_image(image) for image in images]
        pixels = self.feature_extractor(images=images, return_tensors="pt").pixel_values
        param = next(self.image_encoder.parameters())
        with torch.no_grad():
            embeds = self.image_encoder(pixels.to(param.device, param.dtype)).image_embeds
        return embeds.unsqueeze(1).to(self.dtype)

    def prompt_guidance(self, images: list, negative_prompt, guidance_scale: float, convention: str,
                        guidance_rescale: float, image_size: tuple = None, micro_conditioning=None,
                        clip_skip=None, prompt_2=None, negative_prompt_2=None, apg: Optional[dict] = None) -> tuple:
        """(denoiser, cond) of :func:`image_variation` (via :func:`~.stable_diffusion.text_to_image`): the images'
        embeddings (or a (B, 1, d) tensor of them) guided against zeros (one unguided call for s = 1); the prompt
        options are refused (the pipeline has none)."""
        from ..guidance import guidance_weight
        for name, value in (("negative_prompt", negative_prompt), ("guidance_rescale", guidance_rescale or None),
                            ("micro_conditioning", micro_conditioning or None), ("clip_skip", clip_skip),
                            ("prompt_2", prompt_2), ("negative_prompt_2", negative_prompt_2), ("apg", apg or None)):
            if value is not None:
                raise DiffkitError(f"{name}={value!r} is not allowed: {IMAGE_VARIATION_PIPELINE} has no such option "
                                   f"(its condition is the image, its null condition zeros)")
        if all(isinstance(image, torch.Tensor) for image in images):  # image_variation's image_embeds rows
            embeds = torch.stack(images).to(self.device, self.dtype)
        else:
            embeds = self.encode_images(images)
        if guidance_weight(guidance_scale, convention) == 0:  # s = 1: the pipeline's unguided branch, one call
            return self.denoiser, {"context": embeds}
        return self.guided(guidance_scale, torch.zeros_like(embeds), convention), self.cond(embeds)

    def scheduler_grid(self, steps: int) -> torch.Tensor:
        """The folder's own scheduler's timesteps after ``set_timesteps(steps)`` as a diffkit grid."""
        from .pixart import own_scheduler_grid
        return own_scheduler_grid(self.scheduler_config, steps)

    def folder_sampler(self) -> tuple:
        """(sampler, options) computing the step of the folder's scheduler (:func:`folder_sampler`)."""
        return folder_sampler(self.scheduler_config)


def folder_sampler(config: dict) -> tuple:
    """(sampler, options) computing the step of the scheduler ``config`` (its JSON) names: ``PNDMScheduler`` ->
    :func:`.ldm.folder_sampler`'s, DDIM / Euler / DPM-Solver -> :func:`.pixart.folder_sampler`'s (one line for another
    class or option: give a sampler)."""
    from .ldm import folder_sampler as pndm_sampler
    from .pixart import folder_sampler as dpm_euler_ddim
    return (pndm_sampler(config), {}) if config.get("_class_name") == "PNDMScheduler" else dpm_euler_ddim(config)


def folder_default_sampler(directory) -> str:
    """The sampler of :func:`folder_sampler` for the folder's ``scheduler/scheduler_config.json``."""
    return folder_sampler(read_json_object(Path(directory) / "scheduler" / "scheduler_config.json",
                                           "scheduler config"))[0]


def load_image_variation(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                         progress: bool = True) -> ImageVariation:
    """Load an image variation folder (never downloads, never unpickles), checked first
    (:func:`check_image_variation_folder`)."""
    from . import from_pretrained, library_progress_bars, require
    from .stable_cascade_image import load_image_encoder
    from .stable_diffusion import _load_stable_diffusion
    transformers = require("transformers")
    directory = Path(directory)
    check_image_variation_folder(directory)
    with library_progress_bars(progress):
        sd = _load_stable_diffusion(directory, device, dtype, text_encoder=False)
        encoder = load_image_encoder(directory, "", str(directory / "image_encoder"), dtype, sd.device)
        processor = from_pretrained(transformers.CLIPImageProcessor, directory / "feature_extractor",
                                    local_files_only=True)
    return ImageVariation(**{f.name: getattr(sd, f.name) for f in fields(sd)}, image_encoder=encoder,
                          feature_extractor=processor)


def image_variation(model: ImageVariation, images, *, sampler: Optional[str] = None, steps: Optional[int] = None,
                    nfe: Optional[int] = None, guidance_scale: Optional[float] = None, convention: str = "diffusers",
                    grid: Union[None, str, torch.Tensor] = None, image_embeds: Optional[torch.Tensor] = None,
                    **options) -> torch.Tensor:
    """Variations of ``images`` (a PIL image or path, or a list: one output each) as
    ``StableDiffusionImageVariationPipeline(images, guidance_scale=s, num_inference_steps=steps)`` (module doc), or of
    precomputed ``image_embeds`` (B, 1, d) (:meth:`ImageVariation.encode_images`) instead of ``images``.

    sampler / grid None: the folder's loop (its scheduler's step on its timesteps; with ``nfe``: on the sampler's own
    grid); a sampler with ``grid=None``: its own diffkit grid (``grid="scheduler"``: the folder's timesteps). steps
    default 50 (the pipeline's). guidance_scale: in ``convention`` (default diffusers' s = 7.5). ``options``:
    :func:`~.stable_diffusion.text_to_image`'s ``seed`` (sample i from ``seed + i``), ``latents``, ``height`` /
    ``width``, ``output_range``, ``return_latents``, ``progress``, ``freeu`` (the pipeline's ``enable_freeu``), and
    :func:`diffkit.sample`'s (``eta``, ...); its other keywords (ControlNets, adapters, PAG, ...) are refused in one
    line."""
    from .stable_diffusion import text_to_image
    allowed = {"seed", "latents", "height", "width", "output_range", "return_latents", "progress", "freeu"}
    for name in inspect.signature(text_to_image).parameters:
        if name in options and name not in allowed:
            raise DiffkitError(f"{name}= is not allowed with an image variation folder ({IMAGE_VARIATION_PIPELINE} "
                               f"has no such option); allowed: {', '.join(sorted(allowed))} and the sampler's options")
    if (image_embeds is None) == (images is None):
        raise DiffkitError("give images (PIL images or paths) or image_embeds (B, 1, d), one of them")
    if image_embeds is not None:
        if image_embeds.ndim != 3 or image_embeds.shape[1] != 1:
            raise DiffkitError(f"image_embeds of shape {tuple(image_embeds.shape)} are not allowed; give (B, 1, d)")
        conditions = list(image_embeds)  # B rows (1, d): text_to_image's list, stacked in prompt_guidance
    else:
        conditions = list(images) if isinstance(images, (list, tuple)) else [images]
        if not conditions:
            raise DiffkitError("images=[] is not allowed; give at least one image")
    if sampler is None:
        sampler, own = model.folder_sampler()
        options = {**own, **options}
        grid = "scheduler" if grid is None and nfe is None else grid  # nfe: the folder's sampler on its own grid
    return text_to_image(model, conditions, sampler=sampler, steps=steps, nfe=nfe, guidance_scale=guidance_scale,
                         convention=convention, grid=grid, **options)


__all__ = ["IMAGE_VARIATION_PIPELINE", "ImageVariation", "is_image_variation_folder", "check_image_variation_folder",
           "folder_sampler", "folder_default_sampler", "load_image_variation", "image_variation",
           "refuse_image_variation_folder"]
