"""A ModelScope text-to-video diffusers folder (``TextToVideoSDPipeline``, diffusers 0.42.1: damo-vilab's
text-to-video-ms-1.7b, zeroscope) and its video-to-video form (``VideoToVideoSDPipeline``: zeroscope's upscaling
pass), sampled with any diffkit sampler.

ModelScopeT2V (Wang et al. 2023, "ModelScope Text-to-Video Technical Report") factorises a Stable Diffusion UNet's
blocks into spatial and temporal parts: after each spatial convolution a temporal convolution along the frames and
after each spatial transformer a temporal one (Sec. 3.2; diffusers' ``UNet3DConditionModel``, whose temporal layers'
output projections start at zero), denoising latent videos z (B, C, F, h, w) of the SD VAE with SD's eps-prediction
loss, conditioned on OpenCLIP text states (Sec. 3.1). diffkit drives it with AnimateDiff's video parts
(:mod:`.animatediff`, themselves Stable Diffusion's, :mod:`.stable_diffusion`), as ``TextToVideoSDPipeline.__call__``:

* prompts: SD's CLIP text states (``clip_skip`` on the prompts only), the negative prompt (default "") the same; the
  UNet takes each video's states once and repeats them per frame itself (:class:`ModelScope`'s denoiser: SD's).
* guidance: classifier-free guidance eps_u + s (eps_c - eps_u) (Ho & Salimans 2022, eq. 6; diffusers' convention)
  for s > 1, default 9 (15 for ``VideoToVideoSDPipeline``); s <= 1: one unguided call (a negative prompt refused).
* the grid, its step and the start: :func:`.animatediff.text_to_video`'s (the folder's scheduler after
  ``set_timesteps(steps)``, default 50, DDIM -> ``ddim``, DPM-Solver multistep -> ``dpm-solver++-2m`` ...,
  :func:`.animatediff.folder_sampler`; z_T = ``init_noise_sigma`` n). The pipeline steps the frames as a batch of
  images ((B F, C, h, w)): the same elementwise step.
* frames and size: 16 frames (any count: the temporal layers have no frame positions), 256 x 256 (the UNet's
  ``sample_size`` x the VAE factor; multiples of the VAE factor).
* decoding: all frames in one VAE call (the pipeline's ``decode_latents``), x = D(z / scaling_factor); videos
  (B, T, C, H, W) in [-1, 1] (clamped), or in [0, 1] as ``output_type="pt"``.

Video-to-video (``VideoToVideoSDPipeline``, :func:`video_to_video`): SDEdit (Meng et al. 2022) as its
``prepare_latents`` / ``get_timesteps``: the input videos are not resized (the pipeline's ``VideoProcessor(do_resize=
False)``: their size, multiples of the VAE factor, is the output's), each video's frames encoded in one call with the
posteriors sampled from its generator, x ``scaling_factor``; eps drawn after them; noised to the first of the last
min(int(N strength), N) steps (default strength 0.6), then the folder's step. The pipeline draws a batch's
posteriors and eps from one generator (a list of them fails in its ``prepare_latents``); diffkit's video i is the
pipeline's single video with generator seed + i.

Refused in one line before any weight is read (:func:`check_modelscope_folder`): another pipeline class, a missing
component, a UNet other than ``UNet3DConditionModel``, a guidance input ``time_cond_proj_dim`` (which the pipelines
never give), a UNet SD's text-to-image driver refuses. Not driven: LoRA files. ``I2VGenXLPipeline`` (image-to-video on
the same loop): :mod:`.i2vgen_xl`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, read_json_object
from . import require
from .animatediff import REQUIRED, AnimateDiff, decode_frames, text_to_video
from .stable_diffusion import StableDiffusion

TEXT_TO_VIDEO_PIPELINE = "TextToVideoSDPipeline"
VIDEO_TO_VIDEO_PIPELINE = "VideoToVideoSDPipeline"
MODELSCOPE_PIPELINES = (TEXT_TO_VIDEO_PIPELINE, VIDEO_TO_VIDEO_PIPELINE)
MODELSCOPE_GUIDANCE = {TEXT_TO_VIDEO_PIPELINE: 9.0, VIDEO_TO_VIDEO_PIPELINE: 15.0}  # their __call__'s guidance_scale
MODELSCOPE_STRENGTH = 0.6  # VideoToVideoSDPipeline.__call__'s strength
MODELSCOPE_STEPS = 50  # their num_inference_steps (.animatediff.text_to_video's default)
MODELSCOPE_FRAMES = 16  # TextToVideoSDPipeline.__call__'s num_frames
MODELSCOPE_UNET = "UNet3DConditionModel"


@dataclass
class ModelScope(AnimateDiff):
    """The loaded components of a ``TextToVideoSDPipeline`` / ``VideoToVideoSDPipeline`` folder
    (:func:`load_modelscope`): Stable Diffusion's, its ``unet`` a ``UNet3DConditionModel``; AnimateDiff's video
    loop with the pipelines' defaults, SD's denoiser (the UNet repeats the text states per frame itself), one decoder
    call for all frames."""

    video_strength = MODELSCOPE_STRENGTH
    pipeline: str = TEXT_TO_VIDEO_PIPELINE

    @property
    def video_guidance(self) -> float:
        """The pipeline's default guidance_scale: 9 (text-to-video), 15 (video-to-video)."""
        return MODELSCOPE_GUIDANCE[self.pipeline]

    @property
    def takes_videos(self) -> bool:
        return self.pipeline == VIDEO_TO_VIDEO_PIPELINE

    @property
    def network_denoiser(self):
        """Stable Diffusion's eps (or v) denoiser of the UNet: x latent videos (B, C, F, h, w), ``context``
        (B, L, d)."""
        return StableDiffusion.network_denoiser.fget(self)

    def frame_count(self, num_frames) -> int:
        """``num_frames`` (default 16); one line unless a positive integer."""
        frames = MODELSCOPE_FRAMES if num_frames is None else num_frames
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise DiffkitError(f"num_frames={frames!r} is not allowed; give a positive integer")
        return frames

    def video_latents(self, videos: list, height: int, width: int, generators, chunk=None) -> torch.Tensor:
        """Video-to-video's z_0 (B, F, C, h, w): AnimateDiff's, each video's frames encoded in one call."""
        return super().video_latents(videos, height, width, generators, chunk or len(videos[0]))

    def decode_video(self, latents: torch.Tensor, chunk=None) -> torch.Tensor:
        """Videos (B, T, C, H, W) in [-1, 1] (not clamped) of latent videos (B, C, F, h, w): all frames in one call."""
        return decode_frames(self, latents, chunk or latents.shape[0] * latents.shape[2])


def check_modelscope_folder(directory, pipelines=MODELSCOPE_PIPELINES, kind: str = "ModelScope text-to-video",
                            required: tuple = REQUIRED, classes: Optional[dict] = None) -> tuple:
    """(model_index dict, scheduler config) of a ``TextToVideoSDPipeline`` or ``VideoToVideoSDPipeline`` folder (one
    of ``pipelines``), checked from its JSON alone (module docstring); one line for what diffkit does not drive.
    ``kind``, ``required``, ``classes``: another UNet3D pipeline's label, components and their classes
    (:mod:`.i2vgen_xl`)."""
    from .pixart import check_classes, named_index
    from .stable_diffusion import check_stable_diffusion_unet
    directory = Path(directory)
    index = named_index(directory, tuple(pipelines), kind)
    check_classes(directory, index, required, kind, classes or {"unet": (MODELSCOPE_UNET,),
                                                                "vae": ("AutoencoderKL",)})
    sched = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    unet = read_json_object(directory / "unet" / "config.json", "unet config")
    if unet.get("time_cond_proj_dim") is not None:
        raise DiffkitError(f"{directory}'s unet has time_cond_proj_dim={unet['time_cond_proj_dim']!r} (a guidance "
                           f"input {index['_class_name']} never gives); allowed: null")
    check_stable_diffusion_unet(unet, directory, lcm=sched.get("_class_name") == "LCMScheduler")
    return index, sched


def load_modelscope(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                    progress: bool = True) -> ModelScope:
    """Load a ``TextToVideoSDPipeline`` / ``VideoToVideoSDPipeline`` folder (never downloads, never unpickles),
    checked first (:func:`check_modelscope_folder`): Stable Diffusion's components
    (:func:`.stable_diffusion._load_stable_diffusion`) with the ``UNet3DConditionModel``."""
    from . import library_progress_bars
    from .stable_diffusion import _load_stable_diffusion
    directory = Path(directory)
    index, _ = check_modelscope_folder(directory)
    with library_progress_bars(progress):
        sd = _load_stable_diffusion(directory, device, dtype, check_unet=lambda *a, **k: None,
                                    unet_class=getattr(require("diffusers"), MODELSCOPE_UNET))
    return ModelScope(**{f.name: getattr(sd, f.name) for f in fields(sd)}, pipeline=index["_class_name"])


def video_to_video(model: ModelScope, videos, prompts: Union[str, Sequence[str]], **options) -> torch.Tensor:
    """Videos (B, T, C, H, W) of input ``videos`` (one per prompt: lists of PIL frames or (T, 3, H, W) in [-1, 1];
    one frame count and one size, multiples of the VAE factor: the output's) and ``prompts`` as
    ``VideoToVideoSDPipeline`` (module docstring): noised to ``strength`` (default 0.6), then the folder's loop; the
    options: :func:`.animatediff.text_to_video`'s but ``height`` / ``width`` (the input's)."""
    from .animatediff import video_to_video as animatediff_video_to_video
    from .cosmos2_video import input_videos
    videos = input_videos(list(videos))
    sizes = sorted({frame.size for video in videos for frame in video})
    for key in ("height", "width"):
        if options.get(key) is not None:
            raise DiffkitError(f"{key}={options[key]!r} is not allowed for video-to-video; the input videos' size is "
                               f"the output's (VideoToVideoSDPipeline does not resize)")
    if len(sizes) != 1:
        raise DiffkitError(f"input videos of the frame sizes {sizes} (W, H) are not allowed; give one size")
    (width, height), = sizes
    return animatediff_video_to_video(model, videos, prompts, height=height, width=width, **options)


__all__ = ["ModelScope", "load_modelscope", "check_modelscope_folder", "text_to_video", "video_to_video",
           "TEXT_TO_VIDEO_PIPELINE", "VIDEO_TO_VIDEO_PIPELINE", "MODELSCOPE_PIPELINES", "MODELSCOPE_GUIDANCE",
           "MODELSCOPE_STRENGTH", "MODELSCOPE_STEPS", "MODELSCOPE_FRAMES"]
