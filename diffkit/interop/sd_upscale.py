"""Stable Diffusion x4 upscaler folders (``StableDiffusionUpscalePipeline``): a UNet with 7 input channels.

``stabilityai/stable-diffusion-x4-upscaler`` is a text-conditioned latent diffusion model of the 4x image given a
low-resolution one (LDM, Rombach et al. 2022, Sec. 4.4 "Super-Resolution with Latent Diffusion", with the noise
conditioning augmentation of Ho et al. 2021, "Cascaded Diffusion Models", Sec. 4.1). Its VAE has three levels (f = 4,
``scaling_factor`` 0.08333), so the latents have the low-resolution image's own size, and the UNet takes
``cat([z_t, y'])``: the noisy latents (4 channels) and the low-resolution image in pixels (3 channels, [-1, 1]),
noised to a level k, with k itself as the UNet's class label (``num_class_embeds``: ``class_labels``). This module does
what diffusers' pipeline does:

* y' = sqrt(alpha_bar_k) y + sqrt(1 - alpha_bar_k) e: the folder's ``low_res_scheduler`` (a DDPMScheduler)
  ``add_noise`` at ``noise_level`` k (default 20, at most the folder's ``max_noise_level``, 350): alpha_bar of
  k + 1 steps (``alphas_cumprod[k]``), i.e. :func:`diffkit.super_res.augment` at diffkit's level k + 1;
* the draws, per image from its own generator: first e (the image's shape), then the starting latents z_T (the
  pipeline's ``randn_tensor(image.shape)`` before ``prepare_latents``);
* every network call (both halves of classifier-free guidance, the pipeline's ``torch.cat([image] * 2)`` and
  ``torch.cat([noise_level] * image.shape[0])``) gets the same y' concatenated after the latents (diffusers scales only
  the latents, ``scheduler.scale_model_input``, before the concatenation; :class:`UpscaleUNetNet` concatenates inside
  the network, so y' is never scaled, with any diffkit sampler) and the same k as ``class_labels``;
* the image is D(z_0 / 0.08333): the pipeline sets the VAE's ``scaling_factor`` to 0.08333 whatever the folder says
  (with a deprecation warning), and so does :func:`load_stable_diffusion(..., upscale=True)
  <diffkit.interop.stable_diffusion.load_stable_diffusion>`; the output is f times the input's size.

Guidance: diffusers' s (default 9, the pipeline's); the pipeline turns it off for s <= 1, so s < 1 is refused here and
s = 1 is one unguided call per step. The pipeline resizes an image whose sides are not multiples of f (bicubic, down
to the multiple); :func:`check_low_res_size` asks for such sizes instead.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..denoiser import Denoiser
from ..errors import DiffkitError, read_json_object
from .sd_inpaint import ChannelConcatNet, check_editing_unet, concat_denoiser

UPSCALE_PIPELINE = "StableDiffusionUpscalePipeline"
LOW_RES_KEY, LEVEL_KEY = "low_res_image", "noise_level"  # the cond entries UpscaleUNetNet reads
DEFAULT_NOISE_LEVEL, DEFAULT_GUIDANCE, DEFAULT_STEPS = 20, 9.0, 75  # the pipeline's __call__ defaults
DEFAULT_MAX_NOISE_LEVEL = 350  # the pipeline's __init__ default (model_index.json's max_noise_level)
SCALING_FACTOR = 0.08333  # what the pipeline sets vae.config.scaling_factor to


def is_upscale_config(config: dict) -> bool:
    """A UNet config of an x4 upscaler: in_channels = out_channels + 3 (7 for SD: latents 4, RGB image 3) and a class
    embedding for the noise level (``num_class_embeds``, 1000 in the real folder, or a ``class_embed_type``)."""
    in_channels, out_channels = config.get("in_channels", 4), config.get("out_channels", 4)
    labelled = config.get("num_class_embeds") is not None or config.get("class_embed_type") is not None
    return isinstance(out_channels, int) and in_channels == out_channels + 3 and labelled


def is_upscale_folder(path) -> bool:
    """True for a diffusers folder whose ``model_index.json`` names :data:`UPSCALE_PIPELINE` or whose
    ``unet/config.json`` is an upscaler UNet's (read, not loaded)."""
    path = Path(path)
    try:
        index = json.loads((path / "model_index.json").read_text())
        config = json.loads((path / "unet" / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(index, dict) and isinstance(config, dict) and (
        index.get("_class_name") == UPSCALE_PIPELINE or is_upscale_config(config))


def check_upscale_unet(config: dict, directory, upscale: bool, lcm: bool = False) -> bool:
    """True for an upscaler UNet config that may be loaded (``upscale``, no LCMScheduler), False for any other UNet; a
    one-line error for an upscaler UNet elsewhere (sampling from text, editing: the pipeline takes a low-res image)."""
    if not is_upscale_config(config):
        return False
    what = (f"{directory} has an x4 upscaler UNet (in_channels={config.get('in_channels')}: latents + low-resolution "
            f"image, the noise level as its class label)")
    return check_editing_unet(what, "an upscaler UNet", upscale, lcm,
                              f"it upscales images; use diffkit upscale --checkpoint {directory} --images LOW_RES "
                              f"--prompt TEXT (as {UPSCALE_PIPELINE}; library: load_stable_diffusion(..., "
                              f"upscale=True) and sd_upscale.upscale_sd)")


class UpscaleUNetNet(ChannelConcatNet):
    """``net(x, t, low_res_image=y, noise_level=k, **cond)`` = ``inner(cat([x, y], 1), t, class_labels=k, **cond)``:
    the UNet input of diffusers' upscaler (``torch.cat([latent_model_input, image], dim=1)``, ``class_labels=
    noise_level``; y (B, 3, h, w) at the latents' size, k (B,) integers; :class:`~.sd_inpaint.ChannelConcatNet`)."""
    KEYS = (LOW_RES_KEY,)
    WHAT = "an x4 upscaler UNet (latents + low-resolution image in, the noise level as class label)"
    USE = "give cond['low_res_image'] and cond['noise_level'] (sd_upscale.upscale_sd; diffkit upscale)"

    def forward(self, x: torch.Tensor, t, **cond) -> torch.Tensor:
        level = cond.pop(LEVEL_KEY, None)
        if level is None:
            raise DiffkitError(f"this is {self.WHAT}: {self.USE}")
        return super().forward(x, t, class_labels=level, **cond)


def upscale_denoiser(unet, schedule, prediction_type: str) -> Denoiser:
    """The :class:`~diffkit.denoiser.Denoiser` of an upscaler UNet (cond: ``context``, ``low_res_image``,
    ``noise_level``; :func:`~.sd_inpaint.concat_denoiser`)."""
    return concat_denoiser(UpscaleUNetNet, unet, schedule, prediction_type)


def upscale_settings(directory) -> tuple:
    """(the ``low_res_scheduler``'s :class:`~diffkit.schedule.NoiseSchedule`, ``max_noise_level``) of an upscaler
    folder, read from its JSON files (default 350, the pipeline's); one line for what is missing or wrong."""
    from .schedulers import schedule_from_diffusers
    directory = Path(directory)
    index = read_json_object(directory / "model_index.json", "diffusers index")
    config_file = directory / "low_res_scheduler" / "scheduler_config.json"
    if not config_file.is_file():
        raise DiffkitError(f"{directory} lacks low_res_scheduler/scheduler_config.json (the DDPMScheduler that noises "
                           f"the low-resolution image); allowed: a {UPSCALE_PIPELINE} folder")
    schedule, _ = schedule_from_diffusers(read_json_object(config_file, "scheduler config"))
    top = index.get("max_noise_level", DEFAULT_MAX_NOISE_LEVEL)
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top < schedule.num_timesteps:
        raise DiffkitError(f"{directory}/model_index.json has max_noise_level={top!r}; allowed: an integer in "
                           f"0..{schedule.num_timesteps - 1}")
    return schedule, top


def check_noise_level(level, top: int, name: str = "noise_level", bound: str = "the folder's max_noise_level") -> int:
    """``level`` as an int in 0..``top`` (``bound``: what ``top`` is, the folder's ``max_noise_level``), else one
    line."""
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= top:
        raise DiffkitError(f"{name}={level!r} is not allowed; allowed: an integer in 0..{top} ({bound})")
    return level


def check_guidance(guidance_scale, negative_prompt=None, names: tuple = ("guidance_scale", "negative_prompt")) -> float:
    """``guidance_scale`` (diffusers' s) as a float >= 1, and no ``negative_prompt`` at s = 1 (unguided: the pipeline
    ignores it); else one line naming ``names`` (the keywords, or the command's flags)."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not guidance_scale >= 1:
        raise DiffkitError(f"{names[0]}={guidance_scale!r} is not allowed; allowed: a number >= 1 (diffusers' s; 1 = "
                           f"no guidance, as the pipeline for any s <= 1)")
    if negative_prompt is not None and guidance_scale == 1:
        raise DiffkitError(f"{names[1]} needs {names[0]} above 1 (unguided, the pipeline ignores it)")
    return float(guidance_scale)


def check_low_res_size(height: int, width: int, factor: int) -> None:
    """Sides that are multiples of the VAE factor f (the pipeline would resize others down to one), else one line."""
    if height % factor or width % factor:
        raise DiffkitError(f"the low-resolution images are {width}x{height}; allowed: sides that are multiples of "
                           f"{factor} (the VAE factor; e.g. {max(factor, width - width % factor)}x"
                           f"{max(factor, height - height % factor)})")


def noised_low_res(low_res: torch.Tensor, level: int, schedule, generator=None) -> torch.Tensor:
    """y' of ``low_res`` (B, C, h, w) in [-1, 1] at the pipeline's ``noise_level`` ``level``: the low_res_scheduler's
    ``add_noise`` (alphas_cumprod[level]), i.e. :func:`~diffkit.super_res.augment` at level + 1, with noise drawn
    from ``generator`` (one, or one per image)."""
    from ..noise import randn
    from ..super_res import augment
    noise = randn(low_res.shape, generator, device=low_res.device, dtype=low_res.dtype)
    return augment(low_res, level + 1, schedule, noise)


def per_image(prompts: list, batch: int, generator, seed: Optional[int]) -> tuple:
    """(one prompt per image: ``prompts`` of one or ``batch``, else one line; the generators: ``generator``, or image
    i's ``torch.Generator().manual_seed(seed + i)``)."""
    if len(prompts) not in (1, batch):
        raise DiffkitError(f"{len(prompts)} prompts for {batch} images; give one (every image) or one per image")
    if generator is None:
        generator = [torch.Generator().manual_seed((seed or 0) + i) for i in range(batch)]
    return (prompts * batch if len(prompts) == 1 else prompts), generator


def upscale_sd(sd, low_res: torch.Tensor, prompts: Union[str, Sequence[str]], *, low_res_schedule,
               negative_prompt: Union[None, str, Sequence[str]] = None, guidance_scale: float = DEFAULT_GUIDANCE,
               noise_level: int = DEFAULT_NOISE_LEVEL, max_noise_level: int = DEFAULT_MAX_NOISE_LEVEL,
               sampler: str = "ddim", steps: Optional[int] = DEFAULT_STEPS, nfe: Optional[int] = None,
               seed: Optional[int] = 0, generator=None, return_latents: bool = False, progress: bool = False,
               **options) -> torch.Tensor:
    """The x4 upscales of ``low_res`` (B, 3, h, w) in [-1, 1] (decoded, clamped to [-1, 1]; ``return_latents``: z_0)
    by an upscaler folder ``sd`` (``load_stable_diffusion(..., upscale=True)``; ``low_res_schedule`` and
    ``max_noise_level``: :func:`upscale_settings`), as ``StableDiffusionUpscalePipeline`` (module doc): ``prompts``
    one for every image or one each, ``negative_prompt`` the null half's (one, or one per image), ``guidance_scale``
    diffusers' s >= 1 (1: unguided). Image i draws from ``generator[i]`` (default ``torch.Generator().manual_seed(
    seed + i)``): its noise e, then z_T, then the sampler's. ``options`` go to :func:`diffkit.sample` (``eta``,
    ``spacing``, ``final``, ``steps_offset``, ...)."""
    from ..noise import randn
    from ..sampling import sample
    from .stable_diffusion import negative_prompts, prompt_list
    if low_res.ndim != 4 or low_res.shape[1] != sd.image_channels or not low_res.is_floating_point():
        raise DiffkitError(f"low_res of shape {tuple(low_res.shape)} is not allowed; give (B, {sd.image_channels}, h, "
                           f"w) floats in [-1, 1]")
    check_low_res_size(low_res.shape[2], low_res.shape[3], sd.vae_scale_factor)
    level = check_noise_level(noise_level, max_noise_level)
    guidance_scale = check_guidance(guidance_scale, negative_prompt)
    batch = low_res.shape[0]
    prompts, generator = per_image(prompt_list(prompts), batch, generator, seed)
    low_res = low_res.to(device=sd.device, dtype=torch.float32)
    context = sd.encode_prompts(prompts)
    if guidance_scale > 1:
        denoiser = sd.guided(guidance_scale, sd.encode_prompts(negative_prompts(negative_prompt, batch)),
                             "diffusers")
        cond = sd.cond(context)
    else:
        denoiser, cond = sd.denoiser, {"context": context}
    noised = noised_low_res(low_res, level, low_res_schedule, generator)  # the pipeline's first draw
    shape = (batch, sd.vae.config.latent_channels, low_res.shape[2], low_res.shape[3])
    z_t = randn(shape, generator, device=sd.device, dtype=torch.float32)  # then prepare_latents'
    levels = torch.full((batch,), level, dtype=torch.long, device=sd.device)
    z0 = sample(denoiser, z_t, sampler, steps, nfe=nfe, generator=generator, progress=progress,
                cond={**cond, LOW_RES_KEY: noised, LEVEL_KEY: levels}, **options)
    return z0 if return_latents else sd.decode(z0).clamp(-1, 1)


__all__ = ["UPSCALE_PIPELINE", "LOW_RES_KEY", "LEVEL_KEY", "DEFAULT_NOISE_LEVEL", "DEFAULT_GUIDANCE", "DEFAULT_STEPS",
           "DEFAULT_MAX_NOISE_LEVEL", "SCALING_FACTOR", "is_upscale_config", "is_upscale_folder", "check_upscale_unet",
           "UpscaleUNetNet", "upscale_denoiser", "upscale_settings", "check_noise_level", "check_guidance",
           "check_low_res_size",
           "noised_low_res", "per_image", "upscale_sd"]
