"""Latent Consistency Model (LCM) Stable Diffusion folders (Luo et al. 2023): a Stable Diffusion
folder whose scheduler is diffusers' ``LCMScheduler`` (SD 1.x/2.x, or SD-XL, :mod:`.sd_xl`, where the pipeline is
``StableDiffusionXLPipeline`` with the LCMScheduler, e.g. latent-consistency/lcm-sdxl's UNet or LCM-LoRA-SDXL: the
same code, SD-XL adding only its ``text_embeds`` / ``time_ids``).

* An LCM-distilled UNet (e.g. SimianLuo/LCM_Dreamshaper_v7, diffusers'
  ``LatentConsistencyModelPipeline``) has ``time_cond_proj_dim``: it takes the guidance weight w
  as an input (LCM Sec. 4.2), one call per step and no classifier-free pass. diffusers embeds
  its ``guidance_scale - 1``, which is diffkit's seed-convention w.
* An LCM-LoRA folder (Luo et al. 2023b; a LoRA fused into a plain SD UNet) has no such input:
  diffusers samples it with ``StableDiffusionPipeline`` and the ``LCMScheduler``, where
  ``guidance_scale > 1`` is classifier-free guidance (its docs: guidance off, or 1 to 2).

Both are consistency models: f(x, t) = c_skip(t) x + c_out(t) x0_hat(x, t) with LCM eq. 9's
scalings at sigma_data 0.5 and the scheduler's ``timestep_scaling`` (diffkit's
:class:`~diffkit.consistency.ConsistencyDenoiser`), sampled on the times t_n = n k - 1 of its
``original_inference_steps`` N (k = T // N), diffkit's ``consistency`` sampler = ``LCMScheduler.step``.
Image-to-image and inpainting (``diffkit edit``): :mod:`.lcm_edit`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional, Union

from ..errors import DiffkitError, read_json_object

LCM_SCHEDULER = "LCMScheduler"
LCM_PIPELINE_GUIDANCE = 8.5  # LatentConsistencyModelPipeline's default guidance_scale s (w = s - 1 = 7.5)
LCM_LORA_GUIDANCE = 1.0  # s = 1: no classifier-free guidance, the LCM-LoRA docs' default
LCM_STEPS = 4  # LatentConsistencyModelPipeline's default num_inference_steps


def is_lcm_scheduler(config: Mapping) -> bool:
    """True for a diffusers ``LCMScheduler`` config (its ``_class_name``)."""
    return config.get("_class_name") == LCM_SCHEDULER


def folder_scheduler_class(path: Union[str, Path]) -> Optional[str]:
    """The ``_class_name`` of a Stable Diffusion folder's (SD 1.x/2.x or SD-XL) ``scheduler/scheduler_config.json``;
    None for another checkpoint or an unreadable JSON (the loader then says why). Reads JSON only."""
    from .stable_diffusion import is_stable_diffusion_folder
    config_file = Path(path) / "scheduler" / "scheduler_config.json"
    if not is_stable_diffusion_folder(path) or not config_file.is_file():
        return None
    try:
        return read_json_object(config_file).get("_class_name")
    except DiffkitError:
        return None


def is_lcm_folder(path: Union[str, Path]) -> bool:
    """True for a Stable Diffusion folder whose ``scheduler/scheduler_config.json`` is an
    LCMScheduler (``diffkit sample`` then defaults to the ``consistency`` sampler); reads JSON only."""
    return folder_scheduler_class(path) == LCM_SCHEDULER


def folder_guidance_input(path: Union[str, Path]) -> int:
    """The ``time_cond_proj_dim`` of a Stable Diffusion folder's ``unet/config.json`` (0: none, or
    unreadable: the loader then says why), read before any weights are."""
    try:
        return int(read_json_object(Path(path) / "unet" / "config.json").get("time_cond_proj_dim") or 0)
    except (DiffkitError, TypeError, ValueError):
        return 0


def lcm_consistency(config: Mapping, num_timesteps: int, directory="the folder") -> dict:
    """The consistency entry (as a diffkit checkpoint's ``meta["consistency"]``: sigma_data 0.5,
    ``timestep_scaling``, the grid of ``original_inference_steps``) of an LCMScheduler config,
    checked: a timestep_scaling that is not a positive number, and ``clip_sample`` or
    ``thresholding`` (LCMScheduler clamps x0_hat before the boundary condition; diffkit does not)
    are one-line DiffkitErrors."""
    from .diffusers_unet import consistency_from_lcm
    scaling = config.get("timestep_scaling", 10.0)
    if isinstance(scaling, bool) or not isinstance(scaling, (int, float)) or not (
            math.isfinite(scaling) and scaling > 0):
        raise DiffkitError(f"{directory}: LCMScheduler timestep_scaling={scaling!r} is not allowed; give a positive "
                           f"number (LCM's 10)")
    for key in ("clip_sample", "thresholding"):
        if config.get(key):
            raise DiffkitError(f"{directory}: LCMScheduler {key}=True clamps x0_hat before the boundary condition, "
                               f"which diffkit's consistency models do not; allowed: {key}=false (LCM's own config)")
    return consistency_from_lcm(config, num_timesteps)


def lcm_denoiser(inner, consistency: Mapping):
    """The consistency function f = c_skip x + c_out x0_hat around ``inner`` (the UNet's
    denoiser, or classifier-free guidance of it: guidance mixes the network's output before the
    boundary condition, as ``StableDiffusionPipeline`` then ``LCMScheduler.step`` do)."""
    from ..consistency import ConsistencyDenoiser
    return ConsistencyDenoiser(inner, consistency["sigma_data"], consistency["timestep_scaling"],
                               grid=consistency["grid"])


__all__ = ["is_lcm_scheduler", "is_lcm_folder", "folder_scheduler_class", "folder_guidance_input", "lcm_consistency",
           "lcm_denoiser",
           "LCM_PIPELINE_GUIDANCE", "LCM_LORA_GUIDANCE", "LCM_STEPS"]
