"""A Kandinsky 5 text-to-video folder (``Kandinsky5T2VPipeline``, diffusers 0.42.1), sampled with any diffkit sampler.

Kandinsky 5.0 Video Lite / Pro (Kandinsky lab 2025) is the rectified-flow transformer of :mod:`.kandinsky5`
(``Kandinsky5Transformer3DModel``; Esser et al. 2024, Sec. 2, eq. 1: x_s = (1 - s) x_0 + s eps, velocity
u = eps - x_0) run on the latents (B, C, F, h, w) of HunyuanVideo's causal 3-D VAE (``AutoencoderKLHunyuanVideo``:
8 x spatial, 4 x temporal compression, num_frames = 4 (F - 1) + 1). diffkit drives it with :mod:`.kandinsky5`'s
loader, prompts (Qwen2.5-VL + CLIP pooled), guidance and the FlowMatchEuler grid; what is the video pipeline's own,
as ``Kandinsky5T2VPipeline.__call__``:

* prompts: the same encoding in the video system template (its ``prompt_template``), the template's first **128**
  tokens dropped (``prompt_template_encode_start_idx``); ``max_sequence_length`` default 512 (at most 1024).
* the network: the latents as the pipeline's channel-last (B, F, h, w, C); a ``visual_cond`` transformer (Kandinsky
  5's video checkpoints share their image-to-video one) gets [z, 0, 0] (zero image latents and a zero mask channel,
  ``prepare_latents``); visual RoPE positions (0..F-1, 0..h/2-1, 0..w/2-1) at the pipeline's RoPE scale
  ``_get_scale_factor``: (1, 2, 2) where height and width are both in [480, 854], else (1, 3.16, 3.16).
* guidance: CFG u_neg + s (u_c - u_neg) (Ho & Salimans 2022, eq. 6, diffusers' convention) for s > 1, default 5.0;
  the negative prompt defaults to the pipeline's own ("Static, 2D cartoon, ...": :data:`DEFAULT_NEGATIVE_PROMPT`).
* the grid: the folder's FlowMatchEuler scheduler after ``set_timesteps(steps)`` (default 50; its fixed ``shift``),
  flow Euler (``ddim``) its step; any other diffkit sampler on its own grid or ``grid="scheduler"``
  (:func:`.flow_latents.pipeline_grid`).
* frames, size: default 121 frames of 512 x 768 (``__call__``'s); frames 4 k + 1 (the VAE's causal 1 + 4 k; the
  pipeline would round others down), height and width multiples of 16 (its ``check_inputs``; no resolution list).
* decoding: x = D(z / scaling_factor) (no shift) of z laid out channel-last as the pipeline hands it to the VAE.
* draws: diffkit's z (B, C, F, h, w) from ``seed + i``; the pipeline draws channel-last (B, F, h, w, C) from one
  generator: give ``latents`` (permuted) to match it.

Refused in one line before any weight is read (:func:`check_kandinsky5_video_folder`): another pipeline class, a
missing component or one of another class, a transformer whose channels are not the VAE's latent channels, whose
patches are not 1 x 2 x 2 (the pipeline's RoPE positions assume 2 x 2), or with sparse attention (``attention_type``
"nabla": the Pro / 10 s checkpoints' NABLA block-sparse attention, which diffkit does not reproduce), a
``use_dynamic_shifting`` scheduler. LoRA files: as the image folders' (``KandinskyLoraLoaderMixin``,
:func:`.kandinsky5.load_kandinsky5`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from .hunyuan_video import HunyuanVideoVAE
from .kandinsky5 import KANDINSKY5_T2V_PIPELINE, REQUIRED, Kandinsky5, Kandinsky5Net

KANDINSKY5_VIDEO_CLASSES = {"transformer": ("Kandinsky5Transformer3DModel",), "vae": ("AutoencoderKLHunyuanVideo",),
                            "text_encoder": ("Qwen2_5_VLForConditionalGeneration",),
                            "text_encoder_2": ("CLIPTextModel",), "scheduler": ("FlowMatchEulerDiscreteScheduler",)}
KANDINSKY5_VIDEO_GUIDANCE = 5.0  # Kandinsky5T2VPipeline.__call__'s guidance_scale
KANDINSKY5_VIDEO_STEPS = 50  # its num_inference_steps
KANDINSKY5_VIDEO_FRAMES = 121  # its num_frames
KANDINSKY5_VIDEO_SIZE = (512, 768)  # its height, width
DEFAULT_NEGATIVE_PROMPT = ("Static, 2D cartoon, cartoon, 2d animation, paintings, images, worst quality, low quality, "
                           "ugly, deformed, walking backwards")  # __call__'s negative prompt where none is given
VIDEO_PROMPT_TEMPLATE = "\n".join([  # its prompt_template (set in __init__)
    "<|im_start|>system\nYou are a prompt engineer. Describe the video in detail.",
    "Describe how the camera moves or shakes, describe the zoom and view angle, whether it follows the objects.",
    "Describe the location of the video, main characters or objects and their action.",
    "Describe the dynamism of the video and presented actions.",
    "Name the visual style of the video: whether it is a professional footage, user generated content, some kind of "
    "animation, video game or scren content.",
    "Describe the visual effects, postprocessing and transitions if they are presented in the video.",
    "Pay attention to the order of key actions shown in the scene.<|im_end|>",
    "<|im_start|>user\n{}<|im_end|>"])
VIDEO_TEMPLATE_DROP = 128  # its prompt_template_encode_start_idx


def rope_scale(height: int, width: int) -> list:
    """The pipeline's ``_get_scale_factor``: RoPE scale (1, 2, 2) where height and width are both in [480, 854]
    (480p), else (1, 3.16, 3.16)."""
    return [1, 2, 2] if 480 <= height <= 854 and 480 <= width <= 854 else [1, 3.16, 3.16]


def is_kandinsky5_video_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``Kandinsky5T2VPipeline`` (``diffkit video`` drives it;
    ``diffkit sample`` refuses it)."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == KANDINSKY5_T2V_PIPELINE


def check_kandinsky5_video_folder(directory) -> tuple:
    """(model_index dict, transformer config, scheduler config) of a ``Kandinsky5T2VPipeline`` folder, checked from
    its JSON alone (module docstring); a one-line DiffkitError for what diffkit does not drive."""
    from .kandinsky5 import check_transformer
    from .pixart import checked_folder, fixed_shift_scheduler, folder_sampler
    from .schedulers import flow_shift_from_diffusers
    directory, pipeline = Path(directory), KANDINSKY5_T2V_PIPELINE
    index, config, vae = checked_folder(directory, pipeline, REQUIRED, "Kandinsky 5 video", KANDINSKY5_VIDEO_CLASSES)
    check_transformer(directory, config, vae, pipeline, (False, True))
    patch = list(config.get("patch_size", (1, 2, 2)))
    if patch != [1, 2, 2]:
        raise DiffkitError(f"{directory}'s transformer has patch_size={patch!r}; allowed: [1, 2, 2] (the pipeline's "
                           f"RoPE positions assume 2 x 2 patches)")
    attention = config.get("attention_type", "regular")
    if attention != "regular":
        raise DiffkitError(f"{directory}'s transformer has attention_type={attention!r} (sparse attention, which "
                           f"diffkit does not reproduce); allowed: 'regular'")
    sched = fixed_shift_scheduler(directory, pipeline)
    flow_shift_from_diffusers(sched)  # its other keys: one line
    folder_sampler(sched, flow=True)  # a scheduler whose step diffkit's samplers do not compute: one line
    return index, config, sched


class Kandinsky5VideoNet(Kandinsky5Net):
    """``net(z, t, context, pooled)`` over a ``Kandinsky5Transformer3DModel`` on latent videos z (B, C, F, h, w), at
    RoPE scale ``scale_factor`` (:func:`rope_scale`); a ``visual_cond`` transformer's input [z, 0, 0] along the
    channels (module docstring)."""

    def __init__(self, transformer, scale_factor):
        super().__init__(transformer)
        self.scale_factor = list(scale_factor)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, pooled: torch.Tensor = None,
                mask: torch.Tensor = None):
        if context is None or pooled is None:
            raise DiffkitError("a Kandinsky 5 video transformer needs cond {'context', 'pooled'} "
                               "(Kandinsky5Video.encode_prompts)")
        frames = x.permute(0, 2, 3, 4, 1)  # (B, F, h, w, C)
        if self.model.config.visual_cond:  # the pipeline's [z, zero image latents, zero mask]
            frames = torch.cat([frames, torch.zeros_like(frames), torch.zeros_like(frames[..., :1])], dim=-1)
        return self.velocity(frames, t, context, pooled, self.scale_factor).permute(0, 4, 1, 2, 3).to(x.dtype)


@dataclass
class Kandinsky5Video(HunyuanVideoVAE, Kandinsky5):
    """The loaded components of a ``Kandinsky5T2VPipeline`` folder (:func:`load_kandinsky5_video`): a
    :class:`~.kandinsky5.Kandinsky5` with the video template and defaults, and HunyuanVideo's VAE
    (:class:`~.hunyuan_video.HunyuanVideoVAE`: its factors, decoding)."""

    default_guidance_scale = KANDINSKY5_VIDEO_GUIDANCE
    default_steps = KANDINSKY5_VIDEO_STEPS
    default_frames = KANDINSKY5_VIDEO_FRAMES
    default_size = KANDINSKY5_VIDEO_SIZE
    prompt_template = VIDEO_PROMPT_TEMPLATE
    template_drop = VIDEO_TEMPLATE_DROP

    def video_denoiser(self, height: int, width: int):
        """The unguided flow-prediction Denoiser (:class:`Kandinsky5VideoNet` at :func:`rope_scale` of height x
        width) on ``NoiseSchedule.flow(T, shift)``."""
        from ..denoiser import Denoiser
        denoiser = Denoiser(Kandinsky5VideoNet(self.transformer, rope_scale(height, width)), self.schedule,
                            "flow_prediction")
        denoiser.model = self.transformer
        return denoiser

    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """Videos (B, T, C, H, W) in [-1, 1] (not clamped) of latents (B, C, F, h, w): x = D(z / scaling_factor),
        z laid out channel-last in memory as the pipeline hands it to the VAE (its convolutions pick their algorithm
        by the strides, :meth:`.kandinsky5.Kandinsky5.decode`)."""
        return super().decode_video(latents.permute(0, 2, 3, 4, 1).contiguous().permute(0, 4, 1, 2, 3))


def load_kandinsky5_video(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                          progress: bool = True, lora=None) -> Kandinsky5Video:
    """Load a ``Kandinsky5T2VPipeline`` folder (never downloads, never unpickles), checked first
    (:func:`check_kandinsky5_video_folder`): :func:`.kandinsky5.load_kandinsky5` (its ``lora``: diffusers / PEFT
    ``transformer.`` keys fused as ``KandinskyLoraLoaderMixin.load_lora_weights`` + ``fuse_lora``)."""
    from .kandinsky5 import load_kandinsky5
    check_kandinsky5_video_folder(directory)  # another class: one line naming this pipeline
    return load_kandinsky5(directory, device, dtype, progress, lora)


def text_to_video(model: Kandinsky5Video, prompts: Union[str, Sequence[str]], *, negative_prompt=None,
                  guidance_scale: Optional[float] = None, convention: str = "diffusers", steps: Optional[int] = None,
                  sampler: Optional[str] = None, nfe: Optional[int] = None,
                  grid: Union[None, str, torch.Tensor] = None, num_frames: Optional[int] = None,
                  height: Optional[int] = None, width: Optional[int] = None, seed: Optional[int] = 0,
                  latents: Optional[torch.Tensor] = None, max_sequence_length: Optional[int] = None,
                  output_range: str = "-1,1", return_latents: bool = False, progress: bool = False,
                  **options) -> torch.Tensor:
    """Videos (B, T, C, H, W) of ``prompts`` (one video each) as ``Kandinsky5T2VPipeline`` (module docstring).

    guidance_scale: CFG in ``convention`` (diffusers: s, default 5.0; off for s <= 1, where a negative prompt is
    refused); negative_prompt: one, or one per prompt (default the pipeline's). sampler / grid: both None (the
    default): the pipeline's loop, flow Euler (``ddim``) on the scheduler's sigmas (``steps``, default 50); a sampler
    alone: its own grid of ``steps`` / ``nfe``; ``grid``: ``"scheduler"`` or a tensor
    (:func:`.flow_latents.pipeline_grid`). ``options`` go to :func:`diffkit.sample`. num_frames (default 121, 4 k +
    1), height / width (default 512 x 768, multiples of 16). latents: z at s = 1 (B, C, F, h, w), default N(0, I),
    video i's from ``seed + i``. Returns videos in ``output_range`` ("-1,1" or "0,1": the pipeline's
    ``output_type="pt"``), or with ``return_latents`` the final latents (its ``output_type="latent"``, permuted)."""
    from ..errors import check_choice
    from ..sampling import sample
    from .auraflow import guided
    from .flow_latents import pipeline_grid
    from .hunyuan_video import start_video
    from .stable_diffusion import OUTPUT_RANGES, prompt_list
    if not isinstance(model, Kandinsky5Video):
        raise DiffkitError(f"text_to_video needs a {KANDINSKY5_T2V_PIPELINE} folder (load_kandinsky5_video); this "
                           f"one is a {model.pipeline} folder")
    check_choice("output_range", output_range, OUTPUT_RANGES)
    prompts = prompt_list(prompts)
    scale = model.default_guidance_scale if guidance_scale is None else guidance_scale
    if guided(scale, convention, negative_prompt) and negative_prompt is None:
        negative_prompt = DEFAULT_NEGATIVE_PROMPT
    sampler, grid, steps = pipeline_grid(sampler, grid, steps, nfe, model.default_steps, model.scheduler_grid,
                                         options.get("flow_shift"))
    latents, height, width = start_video(model, len(prompts), int(model.transformer.config.in_visual_dim),
                                         num_frames, height, width, seed, latents, KANDINSKY5_T2V_PIPELINE)
    denoiser, cond = model.prompt_guidance(prompts, negative_prompt, scale, convention, max_sequence_length,
                                           denoiser=model.video_denoiser(height, width))
    state = model.dtype  # the pipeline's latents and scheduler state: the transformer's dtype
    z = sample(denoiser, latents.to(model.device, state), sampler, steps, nfe=nfe, grid=grid, seed=seed, cond=cond,
               progress=progress, device=model.device, dtype=state, **options)
    if return_latents:
        return z
    videos = model.decode_video(z)
    return (videos / 2 + 0.5).clamp(0, 1) if output_range == "0,1" else videos.clamp(-1, 1)


__all__ = ["Kandinsky5Video", "Kandinsky5VideoNet", "load_kandinsky5_video", "is_kandinsky5_video_folder",
           "check_kandinsky5_video_folder", "text_to_video", "rope_scale", "DEFAULT_NEGATIVE_PROMPT",
           "KANDINSKY5_VIDEO_GUIDANCE", "KANDINSKY5_VIDEO_STEPS", "KANDINSKY5_VIDEO_FRAMES", "KANDINSKY5_VIDEO_SIZE"]
