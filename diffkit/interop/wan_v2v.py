"""A Wan video-to-video diffusers folder (``WanVideoToVideoPipeline``, diffusers 0.42.1): SDEdit (Meng et al. 2022,
Alg. 1) of input videos towards prompts, with any diffkit sampler.

The folder is Wan 2.1 text-to-video's (:mod:`.wan`: one ``WanTransformer3DModel``, UMT5, the Wan 2.1 VAE, a flow
UniPC or FlowMatchEuler scheduler); its grid, prompts, guidance, transformer and decoding are :class:`.wan.Wan`'s.
As ``WanVideoToVideoPipeline.__call__``:

* the input videos (one per prompt; one frame count T = 4 k + 1, the output's: the Wan VAE drops the frames past
  the last whole group of 4, so diffkit refuses other counts) resized to height x width by diffusers' own
  ``VideoProcessor.preprocess_video`` (default 480 x 832, multiples of 16), each encoded by the Wan VAE (posterior
  mean: ``sample_mode="argmax"``) and normalised, z_0 = (E(x) - mean) / std (``prepare_latents``);
* the strength's part of the scheduler's grid (``get_timesteps``: the last min(int(N strength), N) of its N steps,
  default strength 0.8, :func:`diffkit.editing.strength_grid`), the start at its first flow sigma s_0:
  (1 - s_0) z_0 + s_0 eps (UniPC's ``add_noise`` with flow sigmas, FlowMatchEuler's ``scale_noise``; eps drawn in
  float32, video i's from seed + i);
* then Wan text-to-video's loop from there: CFG u_u + s (u_c - u_u) for s > 1 (default 5, diffusers' convention),
  the folder's scheduler step (UniPC -> ``unipc``, its transformer at whole timesteps; FlowMatchEuler -> ``ddim``) or
  any diffkit sampler on the cut grid, and the Wan VAE's decoding of the final latents.

Refused in one line before any weight is read (:func:`check_wan_v2v_folder`): another pipeline class, a missing
component, parts of other classes, what the pipeline does not take (a ``transformer_2`` or ``boundary_ratio``: it
has one transformer; ``expand_timesteps``; a Wan 2.2 VAE, whose latents it would size by 8), a transformer with CLIP
image states, other channels than the VAE's z_dim or patches other than (1, 2, 2), a scheduler diffkit's samplers do
not compute.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from .wan import WAN_FPS, WAN_GUIDANCE, WAN_HEIGHT, WAN_STEPS, WAN_WIDTH, Wan

WAN_V2V_PIPELINE = "WanVideoToVideoPipeline"
KIND = "Wan video-to-video"
WAN_V2V_STRENGTH = 0.8  # WanVideoToVideoPipeline.__call__'s strength
WAN_V2V_GUIDANCE = WAN_GUIDANCE  # its guidance_scale (diffusers' convention): 5.0
WAN_V2V_STEPS = WAN_STEPS  # its num_inference_steps: 50
WAN_V2V_HEIGHT, WAN_V2V_WIDTH = WAN_HEIGHT, WAN_WIDTH  # its height, width: 480 x 832
WAN_V2V_FPS = WAN_FPS  # the frame rate of its documentation's example (export_to_video(output, fps=16))


@dataclass
class WanV2V(Wan):
    """The loaded components of a ``WanVideoToVideoPipeline`` folder (:func:`load_wan_v2v`): a Wan 2.1 folder's."""

    pipeline_name = WAN_V2V_PIPELINE
    prompt_module = "diffusers.pipelines.wan.pipeline_wan_video2video"

    def video_latents(self, videos: list, height: int, width: int) -> torch.Tensor:
        """z_0 = (E(x) - mean) / std (B, C, F, h, w) of videos (lists of PIL frames, one frame count) resized and
        normalised by diffusers' ``VideoProcessor.preprocess_video``, each video encoded alone (posterior mean), as
        ``prepare_latents``."""
        from diffusers.video_processor import VideoProcessor

        from .stable_diffusion import vae_latents
        pixels = VideoProcessor(vae_scale_factor=self.vae_scale_factor).preprocess_video(videos, height=height,
                                                                                        width=width)
        z = torch.cat([vae_latents(self.vae, pixels[i:i + 1], self.device) for i in range(len(pixels))]).float()
        mean, std = (s[:, :, None] for s in self._stats(z))
        return (z - mean) / std


def is_wan_v2v_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``WanVideoToVideoPipeline``."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == WAN_V2V_PIPELINE


def check_wan_v2v_folder(directory) -> tuple:
    """(model_index dict, scheduler config) of a ``WanVideoToVideoPipeline`` folder, checked from its JSON alone
    (module docstring); a one-line DiffkitError for what diffkit does not drive."""
    from .flow_latents import check_part_configs
    from .sd3 import _entry
    from .wan import REQUIRED, WAN_CLASSES, wan_configs, wan_scheduler_config
    directory = Path(directory)
    index, configs = wan_configs(directory, WAN_V2V_PIPELINE, KIND, REQUIRED, WAN_CLASSES)
    for key, value in (("transformer_2", _entry(index, "transformer_2")), ("boundary_ratio",
                                                                        index.get("boundary_ratio")),
                       ("expand_timesteps", index.get("expand_timesteps") or None)):
        if value is not None:
            raise DiffkitError(f"{directory}'s model_index.json has {key}={value!r}, which {WAN_V2V_PIPELINE} does not "
                               f"take (one Wan 2.1 transformer); allowed: null")
    z_dim = configs["vae"].get("z_dim", 16)
    check_part_configs(directory, configs, (
        ("vae", "patch_size", None, None, "Wan 2.1's VAE; the pipeline sizes its latents by 8, not by Wan 2.2's 16"),
        ("transformer", "in_channels", 16, z_dim, "the VAE's z_dim"),
        ("transformer", "out_channels", 16, z_dim, "the VAE's z_dim"),
        ("transformer", "patch_size", [1, 2, 2], [1, 2, 2], "sizes of 16"),
        ("transformer", "image_dim", None, None, "a transformer without CLIP image states")))
    return index, wan_scheduler_config(directory)


def load_wan_v2v(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                 progress: bool = True, lora=None) -> WanV2V:
    """Load a ``WanVideoToVideoPipeline`` folder (never downloads, never unpickles), checked first
    (:func:`check_wan_v2v_folder`). ``lora``: LoRA files (paths or (path, scale) pairs) in the layouts
    ``WanLoraLoaderMixin`` loads (:func:`.chronoedit_lora.read_wan_loras`), read and checked first, fused into
    ``transformer`` as the pipeline's ``load_lora_weights`` + ``fuse_lora(lora_scale=scale)``."""
    from . import require
    from .chronoedit_lora import read_wan_loras
    from .sd_lora import merge_sd_loras
    from .wan import check_widths, load_wan_parts
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_wan_v2v_folder(directory)
    loras = read_wan_loras(lora, KIND, WAN_V2V_PIPELINE) if lora else []
    parts, schedule, device = load_wan_parts(directory, index, sched, diffusers.WanTransformer3DModel, device, dtype,
                                             progress)
    model = WanV2V(**parts, scheduler_config=sched, schedule=schedule, device=device, dtype=dtype)
    check_widths(directory, [(model.transformer.config.text_dim, model.text_encoder.config.d_model, "text_dim")])
    merge_sd_loras(model, loras)
    return model


def check_video_frames(frames: int) -> int:
    """``frames`` of the input videos, 4 k + 1 (the Wan VAE's causal groups; the pipeline's VAE would drop the
    rest); one line otherwise."""
    if frames % 4 != 1:
        raise DiffkitError(f"input videos of {frames} frames are not allowed; give 4 k + 1 frames (1, 5, 9, ...: the "
                           f"Wan VAE encodes the first frame, then groups of 4, and would drop the rest)")
    return frames


def video_to_video(model: WanV2V, videos, prompts: Union[str, Sequence[str]], *, strength: Optional[float] = None,
                   negative_prompt=None, guidance_scale: Optional[float] = None, convention: str = "diffusers",
                   steps: Optional[int] = None, sampler: Optional[str] = None, height: Optional[int] = None,
                   width: Optional[int] = None, seed: Optional[int] = 0, output_range: str = "-1,1",
                   return_latents: bool = False, progress: bool = False, **options) -> torch.Tensor:
    """Videos (B, T, 3, H, W) of input ``videos`` (one per prompt: lists of PIL frames or (T, 3, H, W) in [-1, 1],
    :func:`diffkit.video.read_video`'s; one frame count, 4 k + 1, the output's) and ``prompts`` as
    ``WanVideoToVideoPipeline`` (module docstring).

    strength: how far the videos are noised (default 0.8: the last min(int(N strength), N) of the N steps run; at
    least one). guidance_scale: in ``convention`` (default s = 5, diffusers'), against ``negative_prompt`` (default
    ""). steps: the scheduler's (default 50); sampler: None for the scheduler's own step, or any diffkit sampler on
    its cut grid (``options``: its options). height / width: multiples of 16 (default 480 x 832), each frame resized
    to it. Video i's noise from ``seed`` + i. Returns the videos in ``output_range`` ("-1,1" or "0,1"), or with
    ``return_latents`` the final latents (B, C, F, h, w)."""
    from ..editing import strength_grid
    from ..errors import check_choice
    from .cosmos2_video import prompt_videos
    from .stable_diffusion import OUTPUT_RANGES, negative_prompts, prompt_list
    from .wan import pipeline_guidance
    check_choice("output_range", output_range, OUTPUT_RANGES)
    prompts = prompt_list(prompts)
    videos = prompt_videos(videos, prompts, None, strength)
    frames = check_video_frames(len(videos[0]))
    scale, convention, cfg = pipeline_guidance(guidance_scale, convention, negative_prompt, WAN_V2V_GUIDANCE)
    height, width = WAN_V2V_HEIGHT if height is None else height, WAN_V2V_WIDTH if width is None else width
    model.check_size(height, width)
    shape = model.latent_video_shape(len(prompts), frames, height, width)
    steps, grid, sampler, options, noise = model.start_latents(steps, sampler, options, shape, None, seed)
    grid = strength_grid(grid, WAN_V2V_STRENGTH if strength is None else strength)  # the pipeline's get_timesteps
    z0 = model.video_latents(videos, height, width)
    t0 = grid[:1].to(torch.float64)
    alpha, sigma = float(model.schedule.alpha(t0)[0]), float(model.schedule.sigma(t0)[0])
    start = (alpha * z0 + sigma * noise) / (alpha + sigma)  # (1 - s_0) z_0 + s_0 eps, s_0 = sigma / (alpha + sigma)
    cond = {"context": model.encode_prompts(prompts)}
    null = model.encode_prompts(negative_prompts(negative_prompt, len(prompts))) if cfg else None
    denoiser = model.guided_denoiser(grid, steps, scale, convention, null)
    z = model.sample_latents(denoiser, cond, grid, sampler, start, seed, progress, options)
    return model.output_videos(z, output_range, return_latents)


__all__ = ["WanV2V", "load_wan_v2v", "is_wan_v2v_folder", "check_wan_v2v_folder", "check_video_frames",
           "video_to_video", "WAN_V2V_PIPELINE", "WAN_V2V_STRENGTH", "WAN_V2V_STEPS", "WAN_V2V_FPS"]
