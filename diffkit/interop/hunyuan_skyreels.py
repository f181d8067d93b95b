"""A SkyReels-V1 HunyuanVideo image-to-video diffusers folder (``HunyuanSkyreelsImageToVideoPipeline``, diffusers
0.42.1): a video from an image and a prompt, with any diffkit sampler.

SkyReels-V1 (SkyworkAI 2025) fine-tunes HunyuanVideo's transformer (:mod:`.hunyuan_video`) to read the image's
latents beside the noisy ones. The folder holds text-to-video's components (Llama, CLIP, the causal 3-D VAE,
FlowMatchEuler); its transformer has 2 C input channels and no ``image_condition_type``. As
``HunyuanSkyreelsImageToVideoPipeline.__call__``:

* prompts, the grid, the embedded guidance and decoding: text-to-video's (:func:`.hunyuan_video.text_to_video`; the
  same template and Llama state -3, CLIP pooled), the embedded ``guidance_scale`` default **1.0**.
* true CFG u_u + s (u_c - u_u) (Ho & Salimans 2022, eq. 6) with a negative prompt; ``true_cfg_scale`` default
  **6.0** here (the pipeline's: a negative prompt alone guides at 6), 1 or a scale without a negative prompt refused
  as text-to-video's (:func:`.flux.check_true_cfg`).
* the image: resized to height x width (Lanczos), x / 255 * 2 - 1, encoded as a one-frame video, a **draw** from the
  VAE posterior (``retrieve_latents``' default ``"sample"``) from video i's generator (seed + i) **before** its noise
  (``prepare_latents`` encodes first), times ``scaling_factor``: z_img; the transformer reads [z_t, z_img on frame
  0 and 0 on the others] along the channels (:class:`.hunyuan_video_i2v.HunyuanI2VNet`); the sampler starts at the
  noise itself (no image mix) and every frame is output.
* defaults: 97 frames (4 k + 1) of 544 x 960 (multiples of 16), 50 steps.

Refused in one line before any weight is read (:func:`check_hunyuan_skyreels_folder`): another pipeline class, a
missing component or one of another class, a transformer with an ``image_condition_type`` or whose channels are not
2 C / C, a scheduler text-to-video refuses. No LoRA files (not wired here).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from .hunyuan_video import HUNYUAN_VIDEO_CLASSES, MAX_SEQUENCE_LENGTH, REQUIRED, HunyuanVideo

SKYREELS_PIPELINE = "HunyuanSkyreelsImageToVideoPipeline"
KIND = "SkyReels image-to-video"
SKYREELS_GUIDANCE = 1.0  # __call__'s guidance_scale (the embedded one)
SKYREELS_TRUE_CFG = 6.0  # its true_cfg_scale (with a negative prompt)
SKYREELS_FRAMES = 97  # its num_frames
SKYREELS_SIZE = (544, 960)  # its height, width


@dataclass
class HunyuanSkyreels(HunyuanVideo):
    """The loaded components of a ``HunyuanSkyreelsImageToVideoPipeline`` folder (text-to-video's,
    :func:`load_hunyuan_skyreels`)."""

    default_guidance = SKYREELS_GUIDANCE
    default_frames = SKYREELS_FRAMES
    default_size = SKYREELS_SIZE

    def network(self, guidance: Optional[float]) -> torch.nn.Module:
        """:class:`.hunyuan_video_i2v.HunyuanI2VNet` on [z, cond['image']] (the image's latents beside the noisy)."""
        from .hunyuan_video_i2v import HunyuanI2VNet
        return HunyuanI2VNet(self.transformer, guidance, False)

    def image_condition(self, images: Sequence, height: int, width: int, frames: int, generators) -> torch.Tensor:
        """[z_img, 0 ...] (B, C, F, h, w), float32: PIL ``images`` at height x width, a posterior draw from
        ``generators`` (one per video) times ``scaling_factor`` on latent frame 0 (``prepare_latents``)."""
        from .ltx import image_posterior
        image = image_posterior(self, images, height, width, generators) * self.scaling_factor
        return torch.cat([image, image.new_zeros(*image.shape[:2], frames - 1, *image.shape[3:])], dim=2)


def is_hunyuan_skyreels_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``HunyuanSkyreelsImageToVideoPipeline``."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == SKYREELS_PIPELINE


def check_hunyuan_skyreels_folder(directory) -> tuple:
    """(model_index dict, scheduler config) of a ``HunyuanSkyreelsImageToVideoPipeline`` folder, checked from its
    JSON alone (module docstring); a one-line DiffkitError for what diffkit does not drive."""
    from .hunyuan_video_i2v import check_image_folder
    return check_image_folder(directory, SKYREELS_PIPELINE, KIND, REQUIRED, HUNYUAN_VIDEO_CLASSES,
                              {None: lambda c: 2 * c})


def load_hunyuan_skyreels(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                          progress: bool = True) -> HunyuanSkyreels:
    """Load a ``HunyuanSkyreelsImageToVideoPipeline`` folder (never downloads, never unpickles), checked first
    (:func:`check_hunyuan_skyreels_folder`), as :func:`.hunyuan_video.load_hunyuan_video` loads text-to-video's."""
    from .hunyuan_video import load_hunyuan_video
    return load_hunyuan_video(directory, device, dtype, progress, check=check_hunyuan_skyreels_folder,
                              cls=HunyuanSkyreels)


def image_to_video(model: HunyuanSkyreels, images, prompts: Union[str, Sequence[str]], *, negative_prompt=None,
                   guidance_scale: Optional[float] = None, convention: str = "diffusers",
                   true_cfg_scale: Optional[float] = None, steps: Optional[int] = None, sampler: Optional[str] = None,
                   nfe: Optional[int] = None, grid: Union[None, str, torch.Tensor] = None,
                   num_frames: Optional[int] = None, height: Optional[int] = None, width: Optional[int] = None,
                   seed: Optional[int] = 0, latents: Optional[torch.Tensor] = None,
                   max_sequence_length: int = MAX_SEQUENCE_LENGTH, output_range: str = "-1,1",
                   return_latents: bool = False, progress: bool = False, **options) -> torch.Tensor:
    """Videos (B, T, 3, H, W) from ``images`` (PIL images or (B, 3, H, W) in [-1, 1]; one for every prompt, or one
    per video) and ``prompts`` (one, or one per video) as ``HunyuanSkyreelsImageToVideoPipeline`` (module docstring).

    Keyword arguments as :func:`.hunyuan_video.text_to_video`'s, with the pipeline's defaults: guidance_scale 1.0,
    true_cfg_scale 6.0 where ``negative_prompt`` is given, 97 frames of 544 x 960. latents: the noise z at s = 1 (B,
    C, F, h, w), default N(0, I) from video i's generator (seed + i) after the image's posterior draw. Returns videos
    in ``output_range``, or with ``return_latents`` the final latents (``output_type="latent"``)."""
    from ..errors import check_choice
    from ..guidance import ClassifierFreeGuidance
    from ..noise import generators_from_seed
    from ..sampling import sample
    from .flow_latents import pipeline_grid
    from .flux import check_true_cfg
    from .hunyuan_video import check_frames, check_size, start_video
    from .hunyuan_video_i2v import paired
    from .stable_diffusion import OUTPUT_RANGES, negative_prompts
    check_choice("output_range", output_range, OUTPUT_RANGES)
    check_choice("convention", convention, ["diffusers", "seed"])
    pil, prompts = paired(images, prompts)
    frames = check_frames(model.default_frames if num_frames is None else num_frames, model.temporal_factor)
    height, width = model.default_size[0] if height is None else height, model.default_size[1] if width is None \
        else width
    check_size(height, width, SKYREELS_PIPELINE)
    model.check_guidance_scale(guidance_scale)
    if true_cfg_scale is None:
        true_cfg_scale = 1.0 if negative_prompt is None else SKYREELS_TRUE_CFG
    check_true_cfg(true_cfg_scale, negative_prompt)
    sampler, grid, steps = pipeline_grid(sampler, grid, steps, nfe, model.default_steps, model.scheduler_grid,
                                         options.get("flow_shift"))
    generators = None if seed is None else generators_from_seed(seed, len(pil))
    latent_frames = (frames - 1) // model.temporal_factor + 1
    image = model.image_condition(pil, height, width, latent_frames, generators)  # drawn before the noise
    noise, _, _ = start_video(model, len(pil), int(model.vae.config.latent_channels), frames, height, width, seed,
                              latents, SKYREELS_PIPELINE, generators)
    context, mask, pooled = model.encode_prompts(prompts, max_sequence_length)
    cond = {"context": context, "mask": mask, "pooled": pooled, "image": image}
    denoiser = model.denoiser(guidance_scale)
    if true_cfg_scale > 1:
        negatives = negative_prompts(negative_prompt, len(pil))
        negatives = negatives[:1] if len(set(negatives)) == 1 else negatives  # one row serves every video
        null_context, null_mask, null_pooled = model.encode_prompts(negatives, max_sequence_length)
        denoiser = ClassifierFreeGuidance(denoiser, float(true_cfg_scale), "diffusers", null_context=null_context,
                                          null_cond={"mask": null_mask, "pooled": null_pooled})
    state = torch.float32  # the pipeline's latents and scheduler state, whatever the transformer's dtype
    z = sample(denoiser, noise.to(model.device, state), sampler, steps, nfe=nfe, grid=grid, seed=seed, cond=cond,
               progress=progress, device=model.device, dtype=state, **options)
    if return_latents:
        return z
    videos = model.decode_video(z)
    return (videos / 2 + 0.5).clamp(0, 1) if output_range == "0,1" else videos.clamp(-1, 1)


__all__ = ["HunyuanSkyreels", "load_hunyuan_skyreels", "is_hunyuan_skyreels_folder", "check_hunyuan_skyreels_folder",
           "image_to_video", "SKYREELS_PIPELINE", "SKYREELS_GUIDANCE", "SKYREELS_TRUE_CFG"]
