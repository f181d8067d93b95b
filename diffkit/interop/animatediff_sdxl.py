"""An AnimateDiff SD-XL diffusers folder (``AnimateDiffSDXLPipeline``, diffusers 0.42.1): text-to-video with an SD-XL
UNet turned into a video UNet by an SD-XL motion adapter, sampled with any diffkit sampler.

AnimateDiff (Guo et al. 2024, ICLR; :mod:`.animatediff`) on SD-XL (Podell et al. 2023, :mod:`.sd_xl`): the motion
modules (temporal self-attention along the frames at each pixel, Sec. 4.2) inserted in an SD-XL UNet, the frames of a
video its batch (eq. 3-4). diffkit drives it as SD-XL (:class:`.sd_xl.StableDiffusionXL`: both text encoders'
penultimate states concatenated, the pooled embedding of encoder 2, the size conditions ``time_ids`` = (H, W, 0, 0, H,
W) of the video's frame size, the null half zeros with ``force_zeros_for_empty_prompt`` and no negative prompt, its
float16 VAE upcast) with AnimateDiff's video parts (:class:`.animatediff.AnimateDiff`: the ``UNetMotionModel`` given
each video's context once per frame and its pooled / size embedding repeated per frame by the UNet itself, the
folder's scheduler and its step, the start), as ``AnimateDiffSDXLPipeline.__call__`` does:

* the folder: ``unet/`` a ``UNetMotionModel`` (what ``save_pretrained`` writes), or a ``UNet2DConditionModel`` with
  ``motion_adapter/`` joined as ``UNetMotionModel.from_unet2d`` (:func:`.animatediff.join_motion_adapter`) with the
  SD-XL UNet's added embedding (``add_embedding``: pooled text and size conditions) copied too, which diffusers
  0.42.1's ``from_unet2d`` leaves at its fresh random init (the pipeline's ``__init__`` on such a UNet: not
  reproducible, so not compared).
* guidance: classifier-free guidance (Ho & Salimans 2022, eq. 6) for s > 1, default s = 5 (the pipeline's); s <= 1
  one unguided call (a negative prompt refused). ``clip_skip`` on the prompts only, as SD-XL's.
* the grid and its step, the start: :func:`.animatediff.text_to_video`'s (the folder's scheduler after
  ``set_timesteps(steps)``, default 50; :func:`.animatediff.folder_sampler`).
* frames and size: 16 frames (at most the motion modules' ``motion_max_seq_length``), 1024 x 1024 (the UNet's
  ``sample_size`` x the VAE factor).
* decoding: all frames in one VAE call (the pipeline's ``decode_latents``), x = D(z / scaling_factor); videos
  (B, T, C, H, W) in [-1, 1] (clamped) or [0, 1] (``output_type="pt"``).
* LoRA files (``lora=``): SD-XL's reader and merger (:mod:`.sd_lora`: ``unet.``, ``text_encoder.``,
  ``text_encoder_2.``) on the ``UNetMotionModel``'s module names, after the join.

Refused in one line before any weight is read (:func:`check_animatediff_sdxl_folder`): another pipeline class, a
missing component, a UNet of another class, a UNet2DConditionModel without a ``MotionAdapter``, a UNet SD-XL's
text-to-image driver refuses, a guidance input ``time_cond_proj_dim``. Not driven: IP-Adapters, FreeInit,
``denoising_end``, ``prompt_2`` / ``negative_prompt_2`` and the size conditions' overrides (``original_size`` ...).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional, Union

import torch

from . import require
from .animatediff import (ANIMATEDIFF_SDXL_PIPELINE, REQUIRED, AnimateDiff, check_animatediff_folder, decode_frames,
                          text_to_video)
from .sd_xl import XL_COMPONENTS, XL_PIPELINE_GUIDANCE, StableDiffusionXL


@dataclass
class AnimateDiffSDXL(AnimateDiff, StableDiffusionXL):
    """The loaded components of an ``AnimateDiffSDXLPipeline`` folder (:func:`load_animatediff_sdxl`): SD-XL's, its
    ``unet`` a ``UNetMotionModel`` (AnimateDiff's denoiser, grid, start and frame count)."""

    video_guidance = XL_PIPELINE_GUIDANCE  # AnimateDiffSDXLPipeline.__call__'s guidance_scale (5)

    def video_conditioning(self, prompts: list, negative_prompt, scale: float, convention: str, cfg: bool,
                           clip_skip: Optional[int], size: tuple) -> tuple:
        """(denoiser, cond) of :func:`text_to_video`: SD-XL's guided denoiser and cond (``cfg``; time ids of the
        frame size ``size``), else the plain denoiser with the prompts' context, pooled embedding and time ids."""
        if cfg:
            return self.prompt_guidance(prompts, negative_prompt, scale, convention, 0.0, size, clip_skip=clip_skip)
        context, pooled = self.encode_prompts_xl(prompts, clip_skip=clip_skip)
        ids = self.time_ids(size, (0, 0), size).expand(len(prompts), -1)
        return self.denoiser, {"context": context, "text_embeds": pooled, "time_ids": ids}

    def decode_video(self, latents: torch.Tensor, chunk: Optional[int] = None) -> torch.Tensor:
        """Videos (B, T, C, H, W) in [-1, 1] (not clamped) of latent videos (B, C, F, h, w): all frames in one call
        (``chunk``: at a time), SD-XL's upcast decoder."""
        return decode_frames(self, latents, chunk or latents.shape[0] * latents.shape[2])


def is_animatediff_sdxl_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``AnimateDiffSDXLPipeline``."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == ANIMATEDIFF_SDXL_PIPELINE


def check_animatediff_sdxl_folder(directory) -> tuple:
    """(model_index dict, scheduler config) of an ``AnimateDiffSDXLPipeline`` folder from its JSON alone
    (:func:`.animatediff.check_animatediff_folder` with SD-XL's components and UNet check)."""
    from .sd_xl import check_sd_xl_unet
    return check_animatediff_folder(directory, ANIMATEDIFF_SDXL_PIPELINE, "AnimateDiff SD-XL",
                                    REQUIRED + XL_COMPONENTS, check_sd_xl_unet)


def load_animatediff_sdxl(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                          progress: bool = True, lora=None) -> AnimateDiffSDXL:
    """Load an ``AnimateDiffSDXLPipeline`` folder (never downloads, never unpickles), checked first
    (:func:`check_animatediff_sdxl_folder`): SD-XL's components (:func:`.sd_xl.load_sd_xl`) with the
    ``UNetMotionModel``, or the UNet joined with ``motion_adapter/``. ``lora``: SD-XL LoRA files (paths or (path,
    scale) pairs; :mod:`.sd_lora`) merged as the pipeline's ``load_lora_weights`` + ``fuse_lora(lora_scale=scale)``."""
    from .animatediff import join_motion_adapter
    from .sd_lora import merge_sd_loras, read_sd_loras
    from .sd_xl import load_sd_xl
    directory = Path(directory)
    index, _ = check_animatediff_sdxl_folder(directory)
    loras = read_sd_loras(lora) if lora else []
    joined = index["unet"][1] == "UNet2DConditionModel"
    xl = load_sd_xl(directory, device, dtype, progress, check_unet=lambda *a, **k: None,
                    unet_class=None if joined else require("diffusers").UNetMotionModel)
    if joined:  # from_unet2d leaves add_embedding at its fresh init (diffusers 0.42.1): the SD-XL UNet's copied
        added = xl.unet.add_embedding.state_dict()
        join_motion_adapter(xl, directory, dtype)
        xl.unet.add_embedding.load_state_dict(added)
    model = AnimateDiffSDXL(**{f.name: getattr(xl, f.name) for f in fields(xl)}, pipeline=index["_class_name"])
    merge_sd_loras(model, loras)
    return model


__all__ = ["AnimateDiffSDXL", "load_animatediff_sdxl", "is_animatediff_sdxl_folder", "check_animatediff_sdxl_folder",
           "text_to_video", "ANIMATEDIFF_SDXL_PIPELINE"]
