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

Image-to-video (``Kandinsky5I2VPipeline``, :func:`image_to_video`; the same components, template and defaults), as
its ``prepare_latents``, loop and post-processing:

* the image resized to height x width (Lanczos, ``VideoProcessor.preprocess``), x / 255 * 2 - 1, encoded as a
  one-frame video with a posterior draw from the video's generator **after** its noise (the pipeline draws the noise
  first), times ``scaling_factor``: latent frame 0, in place of the noise's; a ``visual_cond`` transformer's mask
  channel 1 on frame 0 (its image-latent channels stay 0).
* the scheduler steps frames 1.. alone and keeps frame 0: diffkit keeps it with
  :class:`~diffkit.editing.InpaintingDenoiser` (x_0 there the image's latents, so the flow state stays them: to
  rounding for ddim, dpm-solver++-2m, heun, euler-ancestral, sde-dpm-solver++-2m, ddpm; UniPC drifts it 5e-3 relative
  over 3 steps on the test model) around CFG, and sets the final frame 0 back to them exactly.
* ``normalize_first_frame`` on the final latents (channel-last (B, F, h, w, C)): latent frames 0-3 standardised per
  video and rescaled to the mean / std (unbiased) of frames 4 .. 4 + min(5, F - 1) over the **whole batch**, clamped
  to the first frames' mean - 0.05 .. + 0.1 and std - 0.1 .. + 0.25 (:func:`normalize_first_frame`); so frames 4 k +
  1 with k >= 4 (17, 21, ...): fewer give NaN latents in the pipeline (an empty reference) and are refused.

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
from .kandinsky5 import KANDINSKY5_I2V_PIPELINE, KANDINSKY5_T2V_PIPELINE, REQUIRED, Kandinsky5, Kandinsky5Net

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
FIRST_FRAMES = 4  # Kandinsky5I2VPipeline.normalize_first_frame's nFr: latent frames normalised
REFERENCE_FRAMES = 5  # its reference_frames: at most this many frames after them give the statistics


def rope_scale(height: int, width: int) -> list:
    """The pipeline's ``_get_scale_factor``: RoPE scale (1, 2, 2) where height and width are both in [480, 854]
    (480p), else (1, 3.16, 3.16)."""
    return [1, 2, 2] if 480 <= height <= 854 and 480 <= width <= 854 else [1, 3.16, 3.16]


def is_kandinsky5_video_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``Kandinsky5T2VPipeline`` (``diffkit video`` drives it;
    ``diffkit sample`` refuses it)."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == KANDINSKY5_T2V_PIPELINE


def is_kandinsky5_i2v_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``Kandinsky5I2VPipeline`` (:func:`image_to_video`)."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == KANDINSKY5_I2V_PIPELINE


def check_kandinsky5_video_folder(directory, pipeline: str = KANDINSKY5_T2V_PIPELINE) -> tuple:
    """(model_index dict, transformer config, scheduler config) of a ``pipeline`` folder (``Kandinsky5T2VPipeline``,
    or ``Kandinsky5I2VPipeline``), checked from its JSON alone (module docstring); a one-line DiffkitError for what
    diffkit does not drive."""
    from .kandinsky5 import check_transformer
    from .pixart import checked_folder, fixed_shift_scheduler, folder_sampler
    from .schedulers import flow_shift_from_diffusers
    directory = Path(directory)
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


def check_kandinsky5_i2v_folder(directory) -> tuple:
    """:func:`check_kandinsky5_video_folder` of a ``Kandinsky5I2VPipeline`` folder."""
    return check_kandinsky5_video_folder(directory, KANDINSKY5_I2V_PIPELINE)


def check_i2v_frames(frames, factor: int = 4) -> int:
    """``frames`` where it is 1 + ``factor`` k (:func:`.hunyuan_video.check_frames`) with at least
    ``FIRST_FRAMES`` + 1 latent frames (``normalize_first_frame`` takes its statistics from the frames after the
    first four); one line otherwise."""
    from .hunyuan_video import check_frames
    check_frames(frames, factor)
    least = FIRST_FRAMES * factor + 1
    if frames < least:
        raise DiffkitError(f"num_frames={frames!r} is not allowed for {KANDINSKY5_I2V_PIPELINE}; give {factor} k + 1 "
                           f">= {least} frames (its normalize_first_frame rescales latent frames 0-{FIRST_FRAMES - 1} "
                           f"to the frames after them: fewer give NaN)")
    return frames


def normalize_first_frame(latents: torch.Tensor) -> torch.Tensor:
    """``Kandinsky5I2VPipeline.normalize_first_frame`` (``clump_values`` off) of final latents (B, C, F, h, w), F >
    ``FIRST_FRAMES``, computed channel-last (B, F, h, w, C) as the pipeline's: latent frames 0-3 x standardised per
    video, (x - mean) / std, then times std_r + mean_r, the (unbiased) std and the mean of frames 4 .. 4 + min(5,
    F - 1) over the whole batch, clamped to [mean - 0.05, mean + 0.1] and [std - 0.1, std + 0.25] of x's (its
    ``adaptive_mean_std_normalization``)."""
    x = latents.permute(0, 2, 3, 4, 1).clone()
    n = FIRST_FRAMES
    first, reference = x[:, :n].clone(), x[:, n:n + min(REFERENCE_FRAMES, x.shape[1] - 1)]
    mean, std = first.mean(dim=(1, 2, 3, 4), keepdim=True), first.std(dim=(1, 2, 3, 4), keepdim=True)
    reference_mean = torch.clamp(reference.mean(), mean - 0.05, mean + 0.1)
    reference_std = torch.clamp(reference.std(), std - 0.1, std + 0.25)
    x[:, :n] = (first - mean) / std * reference_std + reference_mean
    return x.permute(0, 4, 1, 2, 3)


class Kandinsky5VideoNet(Kandinsky5Net):
    """``net(z, t, context, pooled)`` over a ``Kandinsky5Transformer3DModel`` on latent videos z (B, C, F, h, w), at
    RoPE scale ``scale_factor`` (:func:`rope_scale`); a ``visual_cond`` transformer's input [z, 0, m] along the
    channels, the mask m 0, or with ``first_frame`` (image-to-video) 1 on latent frame 0 (module docstring)."""

    def __init__(self, transformer, scale_factor, first_frame: bool = False):
        super().__init__(transformer)
        self.scale_factor, self.first_frame = list(scale_factor), first_frame

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, pooled: torch.Tensor = None,
                mask: torch.Tensor = None):
        if context is None or pooled is None:
            raise DiffkitError("a Kandinsky 5 video transformer needs cond {'context', 'pooled'} "
                               "(Kandinsky5Video.encode_prompts)")
        frames = x.permute(0, 2, 3, 4, 1)  # (B, F, h, w, C)
        if self.model.config.visual_cond:  # the pipeline's [z, zero image latents, mask]
            mask = torch.zeros_like(frames[..., :1])
            if self.first_frame:  # Kandinsky5I2VPipeline.prepare_latents' visual_cond_mask[:, 0:1] = 1
                mask[:, :1] = 1
            frames = torch.cat([frames, torch.zeros_like(frames), mask], dim=-1)
        return self.velocity(frames, t, context, pooled, self.scale_factor).permute(0, 4, 1, 2, 3).to(x.dtype)


@dataclass
class Kandinsky5Video(HunyuanVideoVAE, Kandinsky5):
    """The loaded components of a ``Kandinsky5T2VPipeline`` or ``Kandinsky5I2VPipeline`` folder
    (:func:`load_kandinsky5_video`, ``pipeline`` says which): a
    :class:`~.kandinsky5.Kandinsky5` with the video template and defaults, and HunyuanVideo's VAE
    (:class:`~.hunyuan_video.HunyuanVideoVAE`: its factors, decoding)."""

    default_guidance_scale = KANDINSKY5_VIDEO_GUIDANCE
    default_steps = KANDINSKY5_VIDEO_STEPS
    default_frames = KANDINSKY5_VIDEO_FRAMES
    default_size = KANDINSKY5_VIDEO_SIZE
    prompt_template = VIDEO_PROMPT_TEMPLATE
    template_drop = VIDEO_TEMPLATE_DROP

    def video_denoiser(self, height: int, width: int, first_frame: bool = False):
        """The unguided flow-prediction Denoiser (:class:`Kandinsky5VideoNet` at :func:`rope_scale` of height x
        width; ``first_frame``: its mask on frame 0) on ``NoiseSchedule.flow(T, shift)``."""
        from ..denoiser import Denoiser
        denoiser = Denoiser(Kandinsky5VideoNet(self.transformer, rope_scale(height, width), first_frame),
                            self.schedule, "flow_prediction")
        denoiser.model = self.transformer
        return denoiser

    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """Videos (B, T, C, H, W) in [-1, 1] (not clamped) of latents (B, C, F, h, w): x = D(z / scaling_factor),
        z laid out channel-last in memory as the pipeline hands it to the VAE (its convolutions pick their algorithm
        by the strides, :meth:`.kandinsky5.Kandinsky5.decode`)."""
        return super().decode_video(latents.permute(0, 2, 3, 4, 1).contiguous().permute(0, 4, 1, 2, 3))


def load_kandinsky5_video(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                          progress: bool = True, lora=None) -> Kandinsky5Video:
    """Load a ``Kandinsky5T2VPipeline`` or ``Kandinsky5I2VPipeline`` folder (never downloads, never unpickles),
    checked first (:func:`check_kandinsky5_video_folder`): :func:`.kandinsky5.load_kandinsky5` (its ``lora``:
    diffusers / PEFT ``transformer.`` keys fused as ``KandinskyLoraLoaderMixin.load_lora_weights`` + ``fuse_lora``)."""
    from .kandinsky5 import load_kandinsky5
    from .sd_xl import pipeline_class
    i2v = pipeline_class(directory) == KANDINSKY5_I2V_PIPELINE
    check_kandinsky5_video_folder(directory, KANDINSKY5_I2V_PIPELINE if i2v else KANDINSKY5_T2V_PIPELINE)
    return load_kandinsky5(directory, device, dtype, progress, lora)


def text_to_video(model: Kandinsky5Video, prompts: Union[str, Sequence[str]], **options) -> torch.Tensor:
    """Videos (B, T, C, H, W) of ``prompts`` (one video each) as ``Kandinsky5T2VPipeline`` (module docstring).

    Keyword arguments (:func:`generate_video`): guidance_scale: CFG in ``convention`` (diffusers: s, default 5.0;
    off for s <= 1, where a negative prompt is refused); negative_prompt: one, or one per prompt (default the
    pipeline's). sampler / grid: both None (the default): the pipeline's loop, flow Euler (``ddim``) on the
    scheduler's sigmas (``steps``, default 50); a sampler alone: its own grid of ``steps`` / ``nfe``; ``grid``:
    ``"scheduler"`` or a tensor (:func:`.flow_latents.pipeline_grid`). Further keywords go to
    :func:`diffkit.sample`. num_frames (default 121, 4 k + 1), height / width (default 512 x 768, multiples of 16).
    latents: z at s = 1 (B, C, F, h, w), default N(0, I), video i's from ``seed + i``; max_sequence_length (default
    512). Returns videos in ``output_range`` ("-1,1" or "0,1": the pipeline's ``output_type="pt"``), or with
    ``return_latents`` the final latents (its ``output_type="latent"``, permuted)."""
    return generate_video(model, prompts, None, **options)


def image_to_video(model: Kandinsky5Video, images, prompts: Union[str, Sequence[str]], **options) -> torch.Tensor:
    """Videos (B, T, C, H, W) starting at ``images`` (PIL images, or (B, 3, H, W) in [-1, 1]; one per video) with
    ``prompts`` (one, or one per image) as ``Kandinsky5I2VPipeline`` (module docstring): each image resized to
    height x width (Lanczos; default 512 x 768), its VAE latents (a posterior draw from video i's generator, seed + i,
    after its noise) times ``scaling_factor`` the first latent frame, kept there by the sampler
    (:class:`~diffkit.editing.InpaintingDenoiser`), and the final latents' frames 0-3 renormalised
    (:func:`normalize_first_frame`). Keyword arguments: those of :func:`text_to_video` (num_frames 4 k + 1 >= 17;
    ``latents``: the noise, whose first frame the image's latents replace; the posterior is drawn after the noise
    video i's generator would draw, given or not)."""
    from .flow_latents import edit_prompts
    from .qwen_image_edit import _pil_images
    pil = _pil_images(images)
    return generate_video(model, edit_prompts(torch.empty(len(pil), 3, 1, 1), prompts), pil, **options)


def generate_video(model: Kandinsky5Video, prompts: Union[str, Sequence[str]], images=None, *, negative_prompt=None,
                   guidance_scale: Optional[float] = None, convention: str = "diffusers", steps: Optional[int] = None,
                   sampler: Optional[str] = None, nfe: Optional[int] = None,
                   grid: Union[None, str, torch.Tensor] = None, num_frames: Optional[int] = None,
                   height: Optional[int] = None, width: Optional[int] = None, seed: Optional[int] = 0,
                   latents: Optional[torch.Tensor] = None, max_sequence_length: Optional[int] = None,
                   output_range: str = "-1,1", return_latents: bool = False, progress: bool = False,
                   **options) -> torch.Tensor:
    """:func:`text_to_video` (``images`` None, a ``Kandinsky5T2VPipeline`` folder) and :func:`image_to_video` (PIL
    ``images``, one per prompt, a ``Kandinsky5I2VPipeline`` folder)."""
    from ..errors import check_choice
    from ..sampling import sample
    from .auraflow import guided
    from .flow_latents import pipeline_grid
    from .hunyuan_video import start_video
    from .stable_diffusion import OUTPUT_RANGES, prompt_list
    pipeline = KANDINSKY5_T2V_PIPELINE if images is None else KANDINSKY5_I2V_PIPELINE
    if not isinstance(model, Kandinsky5Video) or model.pipeline != pipeline:
        how = "text_to_video" if images is None else "image_to_video"
        raise DiffkitError(f"{how} needs a {pipeline} folder (load_kandinsky5_video); this one is a "
                           f"{model.pipeline} folder")
    check_choice("output_range", output_range, OUTPUT_RANGES)
    prompts = prompt_list(prompts)
    if images is not None:
        check_i2v_frames(model.default_frames if num_frames is None else num_frames, model.temporal_factor)
    scale = model.default_guidance_scale if guidance_scale is None else guidance_scale
    if guided(scale, convention, negative_prompt) and negative_prompt is None:
        negative_prompt = DEFAULT_NEGATIVE_PROMPT
    sampler, grid, steps = pipeline_grid(sampler, grid, steps, nfe, model.default_steps, model.scheduler_grid,
                                         options.get("flow_shift"))
    latents, height, width = start_video(model, len(prompts), int(model.transformer.config.in_visual_dim),
                                         num_frames, height, width, seed, latents, pipeline)
    denoiser, cond = model.prompt_guidance(prompts, negative_prompt, scale, convention, max_sequence_length,
                                           denoiser=model.video_denoiser(height, width, images is not None))
    state = model.dtype  # the pipeline's latents and scheduler state: the transformer's dtype
    latents = latents.to(model.device, state)
    if images is not None:
        latents, denoiser = first_frame(model, denoiser, latents, images, height, width, seed)
    z = sample(denoiser, latents, sampler, steps, nfe=nfe, grid=grid, seed=seed, cond=cond,
               progress=progress, device=model.device, dtype=state, **options)
    if images is not None:  # frame 0 the image's latents exactly (a multistep sampler may drift it by rounding)
        z = normalize_first_frame(torch.cat([latents[:, :, :1], z[:, :, 1:]], dim=2))
    if return_latents:
        return z
    videos = model.decode_video(z)
    return (videos / 2 + 0.5).clamp(0, 1) if output_range == "0,1" else videos.clamp(-1, 1)


def first_frame(model: Kandinsky5Video, denoiser, latents: torch.Tensor, images: list, height: int, width: int,
                seed) -> tuple:
    """(z at s = 1 with latent frame 0 the images' latents, ``denoiser`` keeping that frame) as
    ``Kandinsky5I2VPipeline.prepare_latents`` and its loop (module docstring): the posterior of PIL ``images`` at
    height x width (:func:`.ltx.image_posterior`) drawn from video i's generator (``seed + i``) after the noise it
    draws (:func:`.hunyuan_video.start_video`'s), times ``scaling_factor``; frame 0 kept by
    :class:`~diffkit.editing.InpaintingDenoiser`."""
    from ..editing import InpaintingDenoiser
    from ..noise import generators_from_seed, randn
    from .ltx import image_posterior
    if len(images) != latents.shape[0]:
        raise DiffkitError(f"{len(images)} images for {latents.shape[0]} videos; give one per video")
    generators = None if seed is None else generators_from_seed(seed, latents.shape[0])
    if generators is not None:  # the pipeline draws the noise first: the posterior comes after it
        randn(tuple(latents.shape), generators)
    image = image_posterior(model, images, height, width, generators) * model.scaling_factor
    latents = torch.cat([image.to(latents), latents[:, :, 1:]], dim=2)
    mask = torch.ones_like(latents[:, :1])
    mask[:, :, 0] = 0
    return latents, InpaintingDenoiser(denoiser, latents.clone(), mask)


__all__ = ["Kandinsky5Video", "Kandinsky5VideoNet", "load_kandinsky5_video", "is_kandinsky5_video_folder",
           "check_kandinsky5_video_folder", "text_to_video", "rope_scale", "DEFAULT_NEGATIVE_PROMPT",
           "KANDINSKY5_VIDEO_GUIDANCE", "KANDINSKY5_VIDEO_STEPS", "KANDINSKY5_VIDEO_FRAMES", "KANDINSKY5_VIDEO_SIZE",
           "image_to_video", "generate_video", "first_frame", "normalize_first_frame", "check_i2v_frames",
           "is_kandinsky5_i2v_folder", "check_kandinsky5_i2v_folder"]
