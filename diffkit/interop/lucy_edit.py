"""A Lucy-Edit diffusers folder (``LucyEditPipeline``, diffusers 0.42.1; decart-ai's Lucy-Edit-Dev): instruction-guided
editing of input videos, with any diffkit sampler.

Lucy-Edit is Wan 2.2 TI2V-5B's model (:mod:`.wan`: a rectified-flow ``WanTransformer3DModel``, x_s = (1 - s) x_0 +
s eps, velocity u = eps - x_0, Esser et al. 2024 eq. 1; UMT5; the Wan 2.2 VAE of 2 x 2 pixel patches, factor 16;
``expand_timesteps``) fine-tuned to read the video it edits beside its noisy latents: the transformer takes 2 C
channels, [z_t, z_video], and predicts z_t's velocity. The folder's grid, prompts, guidance, transformer and
decoding are :class:`.wan.Wan`'s; the input videos become latents as Wan video-to-video's
(:meth:`.wan_v2v.WanV2V.video_latents`). As ``LucyEditPipeline.__call__``:

* the input videos (one per prompt; one frame count T = 4 k + 1, the output's: the pipeline's latents have (T - 1) /
  4 + 1 frames whatever its ``num_frames``, and the Wan VAE would drop frames past the last whole group of 4) resized
  to height x width by diffusers' ``VideoProcessor.preprocess_video`` (default 480 x 832), each encoded alone by the
  Wan VAE (posterior mean: ``sample_mode="argmax"``) and normalised, z_video = (E(x) - mean) / std
  (``prepare_latents``), concatenated after z_t along the channels at every call (:class:`.wan.WanNet`'s
  ``condition``), the conditional and the unconditional one alike;
* the noise: N(0, I) (B, C, (T - 1) / 4 + 1, H / f, W / f) in float32, video i's from seed + i, the whole grid run
  (no strength: the edit starts from pure noise);
* prompts (the instruction): ``prompt_clean``, UMT5's last states of 512 tokens zeroed past each prompt; CFG u_u + s
  (u_c - u_u) (Ho & Salimans 2022, eq. 6, diffusers' convention) for s > 1, default 5, against the negative prompt
  (default ""); s <= 1 one unguided call;
* the grid and its step: the folder's scheduler after ``set_timesteps(steps)`` (default 50), UniPC with flow sigmas ->
  ``unipc`` (the transformer at its whole timesteps), FlowMatchEuler -> ``ddim``, or any diffkit sampler on the grid;
  ``expand_timesteps``: the timestep given per patch token (the pipeline's all-ones ``mask * t``);
* two experts (``transformer_2`` and ``boundary_ratio`` in model_index.json, the pipeline's Wan 2.2 A14B path):
  ``transformer`` at the pipeline's timesteps t >= boundary_ratio T, ``transformer_2`` (guided by
  ``guidance_scale_2``, default ``guidance_scale``) below, both reading the video's latents
  (:class:`.wan.TwoExperts`);
* output: the Wan VAE's decoding x = D(z / (1 / std) + mean), (B, T, 3, H, W); ``return_latents``: z (B, C, F, h, w).

Refused in one line before any weight is read (:func:`check_lucy_edit_folder`): another pipeline class, a missing
component, parts of other classes, a ``boundary_ratio`` without ``transformer_2`` or outside (0, 1)
(:func:`.wan.check_experts`), a transformer (or ``transformer_2``) whose channels are not 2 z_dim in and z_dim out,
patches other than (1, 2, 2), CLIP image states, a VAE patched otherwise than Wan 2.1's or 2.2's, a scheduler
diffkit's samplers do not compute; sizes not of :attr:`.wan.Wan.size_multiple` (16; 32 with the Wan 2.2 VAE, whose
other sizes the transformer's patches cannot tile), input videos not of 4 k + 1 frames.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from .wan import WAN_GUIDANCE, WAN_HEIGHT, WAN_STEPS, WAN_WIDTH
from .wan_v2v import WanV2V

LUCY_EDIT_PIPELINE = "LucyEditPipeline"
KIND = "Lucy-Edit"
LUCY_EDIT_GUIDANCE = WAN_GUIDANCE  # LucyEditPipeline.__call__'s guidance_scale (diffusers' convention): 5.0
LUCY_EDIT_STEPS = WAN_STEPS  # its num_inference_steps: 50
LUCY_EDIT_HEIGHT, LUCY_EDIT_WIDTH = WAN_HEIGHT, WAN_WIDTH  # its height, width: 480 x 832
LUCY_EDIT_FPS = 24.0  # the frame rate its documentation's example exports at (export_to_video(output, fps=24))


@dataclass
class LucyEdit(WanV2V):
    """The loaded components of a ``LucyEditPipeline`` folder (:func:`load_lucy_edit`): a Wan folder's with
    transformers of 2 C input channels (a two-expert folder's ``transformer_2`` and ``boundary_ratio`` included;
    ``expand_timesteps`` as its ``model_index.json`` says); the input videos' latents are Wan video-to-video's
    (:meth:`.wan_v2v.WanV2V.video_latents`)."""

    pipeline_name = LUCY_EDIT_PIPELINE
    prompt_module = "diffusers.pipelines.lucy.pipeline_lucy_edit"


def is_lucy_edit_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``LucyEditPipeline``."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == LUCY_EDIT_PIPELINE


def check_lucy_edit_folder(directory) -> tuple:
    """(model_index dict, scheduler config) of a ``LucyEditPipeline`` folder, checked from its JSON alone (module
    docstring); a one-line DiffkitError for what diffkit does not drive."""
    from ..errors import read_json_object
    from .flow_latents import check_part_configs
    from .wan import REQUIRED, WAN_CLASSES, check_experts, wan_configs, wan_scheduler_config
    directory = Path(directory)
    index, configs = wan_configs(directory, LUCY_EDIT_PIPELINE, KIND, REQUIRED, WAN_CLASSES)
    experts = check_experts(directory, index)
    if experts:
        configs["transformer_2"] = read_json_object(directory / "transformer_2" / "config.json", "transformer_2 config")
    if index.get("expand_timesteps") not in (False, True, None):
        raise DiffkitError(f"{directory}'s model_index.json has expand_timesteps={index.get('expand_timesteps')!r}; "
                           f"allowed: true (Wan 2.2 TI2V-5B's per-token timesteps) or false")
    z_dim, vae_patch = configs["vae"].get("z_dim", 16), configs["vae"].get("patch_size")
    if vae_patch not in (None, 2):
        raise DiffkitError(f"{directory}'s vae has patch_size={vae_patch!r}; allowed: null (Wan 2.1's VAE) or 2 (Wan "
                           f"2.2's)")
    check_part_configs(directory, configs, (
        ("vae", "scale_factor_spatial", 8, 8 * (vae_patch or 1), "Wan 2.1's factor 8, Wan 2.2's 16"),
        *((part, key, default, allowed, why) for part in ("transformer", "transformer_2")[:1 + experts]
          for key, default, allowed, why in (
              ("in_channels", 16, 2 * z_dim, "the noisy latents and the video's, 2 x the VAE's z_dim"),
              ("out_channels", 16, z_dim, "the VAE's z_dim"), ("patch_size", [1, 2, 2], [1, 2, 2], "the Wan patches"),
              ("image_dim", None, None, "a transformer without CLIP image states")))))
    return index, wan_scheduler_config(directory)


def load_lucy_edit(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                   progress: bool = True, lora=None) -> LucyEdit:
    """Load a ``LucyEditPipeline`` folder (never downloads, never unpickles), checked first
    (:func:`check_lucy_edit_folder`). ``lora``: LoRA files (paths or (path, scale) pairs) in the layouts
    ``WanLoraLoaderMixin`` loads (:func:`.chronoedit_lora.read_wan_loras`), read and checked first, fused into
    ``transformer`` as the pipeline's ``load_lora_weights`` + ``fuse_lora(lora_scale=scale)`` (``transformer_2``
    left alone, as without ``load_into_transformer_2``)."""
    from . import require
    from .chronoedit_lora import read_wan_loras
    from .sd_lora import merge_sd_loras
    from .wan import check_widths, load_second_expert, load_wan_parts
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_lucy_edit_folder(directory)
    loras = read_wan_loras(lora, KIND, LUCY_EDIT_PIPELINE) if lora else []
    parts, schedule, device = load_wan_parts(directory, index, sched, diffusers.WanTransformer3DModel, device, dtype,
                                             progress)
    second, ratio = load_second_expert(directory, index, device, dtype, progress)
    model = LucyEdit(**parts, scheduler_config=sched, schedule=schedule, device=device, dtype=dtype,
                     transformer_2=second, boundary_ratio=ratio, expand_timesteps=bool(index.get("expand_timesteps")))
    check_widths(directory, [(t.config.text_dim, model.text_encoder.config.d_model, "text_dim")
                             for t in (model.transformer, second) if t is not None])
    merge_sd_loras(model, loras)
    return model


def edit_video(model: LucyEdit, videos, prompts: Union[str, Sequence[str]], *, negative_prompt=None,
               guidance_scale: Optional[float] = None, guidance_scale_2: Optional[float] = None,
               convention: str = "diffusers", steps: Optional[int] = None,
               sampler: Optional[str] = None, height: Optional[int] = None, width: Optional[int] = None,
               seed: Optional[int] = 0, latents: Optional[torch.Tensor] = None, output_range: str = "-1,1",
               return_latents: bool = False, progress: bool = False, **options) -> torch.Tensor:
    """Videos (B, T, 3, H, W): input ``videos`` (one per prompt: lists of PIL frames or (T, 3, H, W) in [-1, 1],
    :func:`diffkit.video.read_video`'s; one frame count, 4 k + 1, the output's) edited by the instructions ``prompts``
    as ``LucyEditPipeline`` (module docstring).

    guidance_scale: in ``convention`` (default s = 5, diffusers'), against ``negative_prompt`` (default "");
    guidance_scale_2: a two-expert folder's low-noise expert's (default ``guidance_scale``). steps: the
    scheduler's (default 50); sampler: None for the scheduler's own step, or any diffkit sampler on its grid
    (``options``: its options). height / width: default 480 x 832, each frame resized to it. latents: z at s = 1 (B,
    C, F, h, w) (the pipeline's ``latents``), default N(0, I) from per-video ``seed + i``. Returns the videos in
    ``output_range`` ("-1,1" or "0,1"), or with ``return_latents`` the final latents (B, C, F, h, w)."""
    from ..errors import check_choice
    from .cosmos2_video import prompt_videos
    from .stable_diffusion import OUTPUT_RANGES, negative_prompts, prompt_list
    from .wan import pipeline_guidance
    from .wan_v2v import check_video_frames
    check_choice("output_range", output_range, OUTPUT_RANGES)
    prompts = prompt_list(prompts)
    if videos is None:
        raise DiffkitError("videos=None is not allowed; Lucy-Edit edits input videos (one per prompt)")
    videos = prompt_videos(videos, prompts, None, None)
    frames = check_video_frames(len(videos[0]))
    scale, convention, cfg = pipeline_guidance(guidance_scale, convention, negative_prompt, LUCY_EDIT_GUIDANCE)
    height = LUCY_EDIT_HEIGHT if height is None else height
    width = LUCY_EDIT_WIDTH if width is None else width
    model.check_size(height, width)
    shape = model.latent_video_shape(len(prompts), frames, height, width)
    steps, grid, sampler, options, latents = model.start_latents(steps, sampler, options, shape, latents, seed)
    null = model.encode_prompts(negative_prompts(negative_prompt, len(prompts))) if cfg else None
    denoiser = model.guided_denoiser(grid, steps, scale, convention, null, guidance_scale_2)
    cond = {"context": model.encode_prompts(prompts), "condition": model.video_latents(videos, height, width)}
    z = model.sample_latents(denoiser, cond, grid, sampler, latents, seed, progress, options)
    return model.output_videos(z, output_range, return_latents)


__all__ = ["LucyEdit", "load_lucy_edit", "is_lucy_edit_folder", "check_lucy_edit_folder", "edit_video",
           "LUCY_EDIT_PIPELINE", "LUCY_EDIT_GUIDANCE", "LUCY_EDIT_STEPS", "LUCY_EDIT_FPS"]
