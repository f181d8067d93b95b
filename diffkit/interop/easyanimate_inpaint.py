"""An EasyAnimate inpainting folder (``EasyAnimateInpaintPipeline``, diffusers 0.42.1): image-to-video, the image the
first frame, with any diffkit sampler.

The folder is :mod:`.easyanimate`'s with an inpainting transformer: its input is the noisy latents (C channels)
followed by a mask latent (1 channel) and the masked video's latents (C channels), ``in_channels`` 2 C + 1
(``resize_inpaint_mask_directly``). diffkit reproduces the pipeline's image-to-video use (its documentation's
``get_image_to_video_latent(image, None, num_frames, (height, width))`` handed to ``video`` / ``mask_video``, strength
1), as ``__call__``:

* the video: the image resized to width x height (PIL's default filter), x / 255 * 2 - 1, repeated over the T frames;
  the mask 0 on frame 0 (kept) and 1 on the others, so the masked video is the image on frame 0 and -1 elsewhere;
* with the transformer's ``add_noise_in_inpaint_model``: n a ``noise_aug_strength`` (default 0.0563) added to the
  masked video where it is not -1 (``add_noise_to_reference_video``), n drawn from video i's generator after its
  latent noise (the pipeline draws none where ``latents`` are given);
* the masked video's latents: the VAE's posterior mode times ``scaling_factor``; the mask latent: 1 - mask resized
  trilinearly to the latent grid, frame 0 apart from the others where the VAE config's ``cache_mag_vae`` is true
  (``resize_mask``), times ``scaling_factor``; both the transformer's ``inpaint_latents`` at every call (CFG's two
  halves alike);
* the rest as :func:`.easyanimate.text_to_video`: prompts, CFG, the scheduler's mu = 1 grid, the noise, decoding.

Refused in one line before any weight is read (:func:`check_inpaint_configs`, after :mod:`.easyanimate`'s checks):
a transformer whose channels are not 2 C + 1 in and C out, or without ``resize_inpaint_mask_directly`` (a C-channel
mask latent, encoded by the VAE), a VAE config without ``cache_mag_vae`` (the pipeline reads it).
"""
from __future__ import annotations

from typing import Sequence, Union

import torch

from ..errors import DiffkitError
from .easyanimate import EASYANIMATE_INPAINT_PIPELINE, EasyAnimate, generate_video

NOISE_AUG_STRENGTH = 0.0563  # __call__'s noise_aug_strength


def check_inpaint_configs(directory, config: dict, vae: dict) -> None:
    """One line unless the transformer config's channels are 2 C + 1 in and C out (C the VAE's latent channels) with
    ``resize_inpaint_mask_directly``, and the VAE config has ``cache_mag_vae`` (module docstring)."""
    latents = vae.get("latent_channels", 16)
    channels = (config.get("in_channels"), config.get("out_channels"))
    if channels != (2 * latents + 1, latents):
        raise DiffkitError(f"{directory}'s transformer has in_channels, out_channels = {channels[0]!r}, "
                           f"{channels[1]!r}; allowed: {2 * latents + 1}, {latents} (an inpainting transformer: the "
                           f"latents, a mask latent and the masked video's latents)")
    if not config.get("resize_inpaint_mask_directly", True):
        raise DiffkitError(f"{directory}'s transformer has resize_inpaint_mask_directly=false (a VAE-encoded mask), "
                           f"which diffkit does not drive; allowed: true")
    if not isinstance(vae.get("cache_mag_vae"), bool):
        raise DiffkitError(f"{directory}'s vae config has cache_mag_vae={vae.get('cache_mag_vae')!r}, which "
                           f"{EASYANIMATE_INPAINT_PIPELINE} reads to resize its mask; allowed: true or false")


def load_easyanimate_inpaint(directory, device="cpu", dtype: torch.dtype = torch.float32,
                             progress: bool = True) -> EasyAnimate:
    """:func:`.easyanimate.load_easyanimate` of an ``EasyAnimateInpaintPipeline`` folder."""
    from .easyanimate import load_easyanimate
    return load_easyanimate(directory, device, dtype, progress, pipeline=EASYANIMATE_INPAINT_PIPELINE)


def first_frame_videos(images: list, frames: int, height: int, width: int) -> torch.Tensor:
    """The masked videos (B, 3, T, H, W) in [-1, 1]: each PIL image resized to width x height (PIL's default filter)
    on frame 0, -1 on the others (``get_image_to_video_latent`` then ``__call__``'s masking)."""
    import numpy as np
    videos = torch.full((len(images), 3, frames, height, width), -1.0)
    for i, image in enumerate(images):
        pixels = torch.from_numpy(np.array(image.convert("RGB").resize((width, height)))).permute(2, 0, 1)
        videos[i, :, 0] = pixels.float() / 255.0 * 2.0 - 1.0
    return videos


def inpaint_latents(model: EasyAnimate, videos: torch.Tensor, latents: torch.Tensor, generators,
                    noise_aug_strength: float) -> torch.Tensor:
    """[mask latent, masked-video latents] (B, 1 + C, F, h, w) of masked ``videos`` (:func:`first_frame_videos`) for
    ``latents`` (B, C, F, h, w) (module docstring); ``generators``: video i's, drawing the augmentation noise."""
    import torch.nn.functional as F
    from ..noise import randn
    if model.transformer.config.add_noise_in_inpaint_model:
        noise = randn(tuple(videos.shape), generators) * noise_aug_strength
        videos = torch.where(videos == -1, videos, videos + noise)
    dtype = model.vae.dtype
    with torch.no_grad():
        encoded = torch.cat([model.vae.encode(v[None].to(model.device, dtype))[0].mode() for v in videos])
    encoded = encoded * model.scaling_factor
    kept = torch.zeros_like(videos[:, :1])  # 1 - mask: 1 on the kept frame 0
    kept[:, :, 0] = 1
    size = tuple(encoded.shape[2:])
    if model.vae.config.cache_mag_vae:  # frame 0 resized alone, the others together (resize_mask)
        parts = [F.interpolate(kept[:, :, :1], size=(1,) + size[1:], mode="trilinear", align_corners=False)]
        if size[0] > 1:
            parts.append(F.interpolate(kept[:, :, 1:], size=(size[0] - 1,) + size[1:], mode="trilinear",
                                       align_corners=False))
        mask = torch.cat(parts, dim=2)
    else:
        mask = F.interpolate(kept, size=size, mode="trilinear", align_corners=False)
    mask = mask.to(encoded) * model.scaling_factor
    if tuple(encoded.shape[2:]) != tuple(latents.shape[2:]):
        raise DiffkitError(f"the masked video's latents {tuple(encoded.shape)} do not fit the noise "
                           f"{tuple(latents.shape)}")
    return torch.cat([mask, encoded], dim=1)


def image_to_video(model: EasyAnimate, images, prompts: Union[str, Sequence[str]], *,
                   noise_aug_strength: float = NOISE_AUG_STRENGTH, **options) -> torch.Tensor:
    """Videos (B, T, C, H, W) starting at ``images`` (PIL images, or (B, 3, H, W) in [-1, 1]; one per video) with
    ``prompts`` (one, or one per image) as ``EasyAnimateInpaintPipeline`` in its image-to-video use (module
    docstring). Keyword arguments: those of :func:`.easyanimate.text_to_video` (``latents``: the noise; given, no
    noise is drawn before the augmentation's)."""
    import math

    from ..errors import check_float32
    from ..noise import generators_from_seed, randn
    from .flow_latents import edit_prompts
    from .qwen_image_edit import _pil_images
    if model.pipeline != EASYANIMATE_INPAINT_PIPELINE:
        raise DiffkitError(f"image_to_video needs an {EASYANIMATE_INPAINT_PIPELINE} folder "
                           f"(load_easyanimate_inpaint); this one is an {model.pipeline} folder")
    if isinstance(noise_aug_strength, bool) or not isinstance(noise_aug_strength, (int, float)) \
            or not math.isfinite(noise_aug_strength) or noise_aug_strength < 0:
        raise DiffkitError(f"noise_aug_strength={noise_aug_strength!r} is not allowed; give a finite number >= 0 "
                           f"(default {NOISE_AUG_STRENGTH})")
    check_float32("noise_aug_strength", noise_aug_strength)
    pil = _pil_images(images)
    prompts = edit_prompts(torch.empty(len(pil), 3, 1, 1), prompts)
    seed = options.get("seed", 0)

    def inpaint(latents: torch.Tensor, height: int, width: int, drew_noise: bool) -> torch.Tensor:
        frames = model.temporal_factor * (latents.shape[2] - 1) + 1
        generators = None if seed is None else generators_from_seed(seed, latents.shape[0])
        if generators is not None and drew_noise:  # the pipeline draws the latents' noise first
            randn(tuple(latents.shape), generators)
        videos = first_frame_videos(pil, frames, height, width)
        return inpaint_latents(model, videos, latents, generators, float(noise_aug_strength))

    return generate_video(model, prompts, inpaint=inpaint, **options)


__all__ = ["load_easyanimate_inpaint", "image_to_video", "check_inpaint_configs", "first_frame_videos",
           "inpaint_latents", "NOISE_AUG_STRENGTH"]
