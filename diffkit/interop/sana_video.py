"""SANA-Video diffusers folders (``SanaVideoPipeline``, ``SanaImageToVideoPipeline``, diffusers 0.42.1): videos from
prompts, or from an image and prompts, with any diffkit sampler.

SANA-Video (Chen et al. 2025, "SANA-Video: Efficient Video Generation with Block Linear Diffusion Transformer") is
Sana's linear-attention DiT made 3-D (``SanaVideoTransformer3DModel``: Wan's rotary positions and patches, a
temporal convolution in the Mix-FFN), trained with flow matching (x_s = (1 - s) x_0 + s eps, velocity eps - x_0) on
the latent video of the Wan VAE (``AutoencoderKLWan``), conditioned on Gemma-2's states under Sana's "complex human
instruction". diffkit runs it with the pieces it already has: Sana's prompts and network (:mod:`.sana`) and Wan's
latent video, grid and decoding (:class:`.wan.WanFolder`). As ``SanaVideoPipeline.__call__``:

* prompts: :meth:`.sana.Sana.encode_prompts` (lower-cased, stripped, after the instruction lines joined by newlines,
  n + L - 2 tokens, the selected [0] + last L - 1 states and mask; L = ``max_sequence_length``, default 300) with the
  video pipeline's own default instruction (:data:`VIDEO_HUMAN_INSTRUCTION`); the negative prompt (default "") at L
  tokens without the instruction, under its own mask.
* guidance: CFG u_u + s (u_c - u_u) (Ho & Salimans 2022, eq. 6, diffusers' convention) for s > 1, default 6.0;
  s <= 1 one unguided call.
* frames and size: 81 frames (4 k + 1: the Wan VAE's causal frames; the pipeline would drop the rest) of 480 x 832
  by default, sizes multiples of 32 (``check_inputs``); the latents (B, C, (frames - 1) / 4 + 1, H / 8, W / 8)
  drawn in float32, video i's from seed + i.
* the grid and its step: the folder's scheduler after ``set_timesteps(steps)`` (default 50), its sigmas at equal
  log-SNR on ``NoiseSchedule.flow(T, shift)``, the sampler of its step (:func:`.hidream.folder_sampler`: the flow
  DPM-Solver -> ``dpm-solver++-2m``, flow UniPC -> ``unipc``, FlowMatchEuler -> ``ddim``); a DPM-Solver / UniPC
  folder's transformer called at their int64 timesteps floor(s T) (:class:`.sana.SanaNet` ``whole_timesteps``).
* output: x = D(z / (1 / std) + mean) with the Wan VAE config's ``latents_mean`` / ``latents_std``
  (:meth:`.wan.WanFolder.decode_video`), frames (B, T, 3, H, W); ``return_latents``: the final latents.

Image-to-video (``SanaImageToVideoPipeline``; also a ``SanaVideoPipeline`` folder, which that pipeline's
``from_pretrained`` loads, as diffusers' example does): each image resized to height x width (Lanczos, the video
processor's), encoded alone by the Wan VAE (posterior mode), normalised (z - mean) / std, is the kept first latent
frame: the transformer sees it clean, its tokens at timestep 0 (the pipeline's ``t * (1 - conditioning_mask)`` per
patch token, :class:`SanaVideoNet`), and the scheduler steps only the other frames (diffkit:
:class:`~diffkit.editing.InpaintingDenoiser` keeping that frame, :meth:`.wan_i2v.WanI2V.kept_first_frame`). Unlike
the pipeline (one image for every prompt) each video may have its own image.

Not reproduced: ``use_resolution_binning`` (the pipeline's default maps height x width to its 480p / 720p bins and
resizes the frames back; diffkit draws the asked size, the pipeline's ``use_resolution_binning=False``).

Refused in one line before any weight is read (:func:`check_sana_video_folder`): another pipeline class, a missing
component, parts of other classes (a VAE other than ``AutoencoderKLWan``: diffusers 0.42.1's ``AutoencoderDC`` has
no temporal factor, so the pipeline cannot be built with it, and the LTX-2 video VAE is not driven), a transformer
with ``guidance_embeds`` (the pipeline passes no guidance), channels other than the VAE's z_dim or patches other
than (1, 2, 2), a scheduler diffkit's samplers do not compute, one not predicting the flow, a FlowMatchEuler one with
``use_dynamic_shifting`` (the pipeline passes no mu).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from . import model_dtype, require
from .pixart import PixArt
from .sana import SANA_MAX_SEQUENCE_LENGTH, Sana, SanaNet
from .wan import WanFolder
from .wan_i2v import WanI2V

SANA_VIDEO_PIPELINE = "SanaVideoPipeline"
SANA_I2V_PIPELINE = "SanaImageToVideoPipeline"  # its defaults are SanaVideoPipeline's
PIPELINES = (SANA_VIDEO_PIPELINE, SANA_I2V_PIPELINE)
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
SANA_VIDEO_CLASSES = {"transformer": ("SanaVideoTransformer3DModel",), "vae": ("AutoencoderKLWan",),
                      "text_encoder": ("Gemma2Model",),
                      "scheduler": ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler",
                                    "FlowMatchEulerDiscreteScheduler")}
SANA_VIDEO_GUIDANCE = 6.0  # SanaVideoPipeline.__call__'s guidance_scale
SANA_VIDEO_STEPS = 50  # its num_inference_steps
SANA_VIDEO_FRAMES = 81  # its frames
SANA_VIDEO_HEIGHT, SANA_VIDEO_WIDTH = 480, 832  # its height, width
SANA_VIDEO_FPS = 16.0  # its example's export_to_video(output, fps=16)
SIZE_MULTIPLE = 32  # its check_inputs
# SanaVideoPipeline.__call__'s default complex_human_instruction (diffusers 0.42.1), line by line
VIDEO_HUMAN_INSTRUCTION = (
    "Given a user prompt, generate an 'Enhanced prompt' that provides detailed visual descriptions suitable for "
    "video generation. Evaluate the level of detail in the user prompt:",
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, motion, and temporal "
    "relationships to create vivid and dynamic scenes.",
    "- If the prompt is already detailed, refine and enhance the existing details slightly without "
    "overcomplicating.",
    "Here are examples of how to transform or refine prompts:",
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat slowly settling into a curled position, "
    "peacefully falling asleep on a warm sunny windowsill, with gentle sunlight filtering through surrounding pots of "
    "blooming red flowers.",
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street "
    "lamps gradually lighting up, a diverse crowd of people in colorful clothing walking past, and a double-decker "
    "bus smoothly passing by towering glass skyscrapers.",
    "Please generate only the enhanced description for the prompt below and avoid including any additional "
    "commentary or evaluations:",
    "User Prompt: ",
)


class SanaVideoNet(SanaNet):
    """:class:`.sana.SanaNet` over a ``SanaVideoTransformer3DModel`` on latent videos (B, C, F, h, w); with
    ``frame_mask`` (B, F) (image-to-video) the timestep given per patch token, t times the token's frame mask
    (``SanaImageToVideoPipeline``'s ``t * (1 - conditioning_mask)``: 0 on the kept first latent frame)."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, mask: torch.Tensor = None,
                frame_mask: torch.Tensor = None):
        if frame_mask is None or context is None or mask is None:
            return super().forward(x, t, context, mask)
        tokens = x[0, 0, 0, ::2, ::2].numel()  # 2 x 2 patches a latent frame
        t = (self.timesteps(x, t)[:, None] * frame_mask.to(torch.float32)).repeat_interleave(tokens, dim=1)
        dtype = model_dtype(self.model)
        return self.model(x.to(dtype), encoder_hidden_states=context.to(dtype), encoder_attention_mask=mask,
                          timestep=t, return_dict=False)[0].to(x.dtype)


@dataclass
class SanaVideo(WanFolder):
    """The loaded components of a SANA-Video folder (:func:`load_sana_video`; ``pipeline``: its class): Wan's
    latent video, grid and decoding (:class:`.wan.WanFolder`) with Sana's Gemma-2 prompts
    (:meth:`.sana.Sana.encode_prompts`)."""

    transformer: object
    vae: object
    text_encoder: object
    tokenizer: object
    scheduler_config: dict
    schedule: object
    device: torch.device
    dtype: torch.dtype = torch.float32
    pipeline: str = SANA_VIDEO_PIPELINE
    _sigmas: dict = field(default_factory=dict, repr=False)

    pipeline_name = SANA_VIDEO_PIPELINE
    default_steps = SANA_VIDEO_STEPS
    max_sequence_length = SANA_MAX_SEQUENCE_LENGTH
    max_length_limit = Sana.max_length_limit
    check_length = PixArt.check_length
    encode_prompts = Sana.encode_prompts  # called with the video instruction (:meth:`prompt_states`)
    kept_first_frame = WanI2V.kept_first_frame  # image-to-video's first latent frame (Wan 2.2 TI2V-5B's too)

    @property
    def size_multiple(self) -> int:
        """32 (``check_inputs``), or the VAE factor times the 2 x 2 patches where larger (Wan 2.2's VAE)."""
        return max(SIZE_MULTIPLE, 2 * self.vae_scale_factor)

    def denoiser(self):
        """The unguided flow-prediction Denoiser (cond: ``context``, ``mask``) on ``NoiseSchedule.flow(T, shift)``,
        the transformer called at floor(s T) on a DPM-Solver / UniPC folder's timesteps, at s T otherwise."""
        from ..denoiser import Denoiser
        denoiser = Denoiser(SanaVideoNet(self.transformer, self.whole_timesteps), self.schedule, "flow_prediction")
        denoiser.model = self.transformer
        return denoiser

    def prompt_states(self, prompts: Sequence[str], negative_prompt, guidance: bool, max_sequence_length,
                      complex_human_instruction) -> tuple:
        """(cond {"context", "mask"}, null cond or None) as ``SanaVideoPipeline.encode_prompt``: the prompts after
        the instruction, the negative ones (one per prompt) at the same length without it where ``guidance``."""
        from .stable_diffusion import negative_prompts
        context, mask = self.encode_prompts(prompts, max_sequence_length, complex_human_instruction)
        if not guidance:
            return {"context": context, "mask": mask}, None
        null, null_mask = self.encode_prompts(negative_prompts(negative_prompt, context.shape[0]), context.shape[1],
                                              None)
        return {"context": context, "mask": mask}, {"context": null, "mask": null_mask}


def is_sana_video_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``SanaVideoPipeline`` or ``SanaImageToVideoPipeline``."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) in PIPELINES


def check_sana_video_folder(directory, pipelines=PIPELINES) -> tuple:
    """(model_index dict, scheduler config) of a folder naming one of ``pipelines`` (default ``SanaVideoPipeline``
    or ``SanaImageToVideoPipeline``), checked from its JSON alone (module docstring); a one-line DiffkitError for
    what diffkit does not drive."""
    from .pixart import named_index
    from .schedulers import FLOW_SCHEDULER
    from .wan import check_text_to_video_configs, wan_configs, wan_scheduler_config
    directory = Path(directory)
    pipeline = named_index(directory, tuple(pipelines), "SANA-Video")["_class_name"]
    index, configs = wan_configs(directory, pipeline, "SANA-Video", REQUIRED, SANA_VIDEO_CLASSES)
    if configs["transformer"].get("guidance_embeds", False):
        raise DiffkitError(f"{directory}'s transformer has guidance_embeds=True; allowed: false ({pipeline} passes "
                           f"no guidance to the transformer)")
    check_text_to_video_configs(directory, configs)
    sched = wan_scheduler_config(directory)
    if sched.get("_class_name") == FLOW_SCHEDULER:
        if sched.get("use_dynamic_shifting", False):
            raise DiffkitError(f"{directory}'s {FLOW_SCHEDULER} has use_dynamic_shifting=True, for which {pipeline} "
                               f"passes no mu (its set_timesteps fails); allowed: a fixed shift")
    elif sched.get("prediction_type", "epsilon") != "flow_prediction":
        raise DiffkitError(f"{directory}'s scheduler has prediction_type={sched.get('prediction_type', 'epsilon')!r}; "
                           f"allowed: 'flow_prediction' (SANA-Video's flow matching)")
    return index, sched


def load_sana_video(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                    progress: bool = True, lora=None) -> SanaVideo:
    """Load a ``SanaVideoPipeline`` / ``SanaImageToVideoPipeline`` folder (never downloads, never unpickles),
    checked first (:func:`check_sana_video_folder`). ``lora``: not taken (one line)."""
    from ..schedule import NoiseSchedule
    from .flow_latents import frozen_on, load_flow_parts
    from .sana import flow_shift_of
    from .schedulers import train_timesteps
    from .wan import check_widths
    if lora:
        raise DiffkitError("LoRA files are not supported on a SANA-Video folder (the pipelines' LoRA loader is not "
                           "reproduced)")
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_sana_video_folder(directory)
    schedule = NoiseSchedule.flow(train_timesteps(sched), flow_shift_of(sched))
    parts = load_flow_parts(directory, index, diffusers.SanaVideoTransformer3DModel, {"": "Gemma2Model"}, dtype,
                            progress, vae_cls=diffusers.AutoencoderKLWan)
    device = frozen_on(parts, device)
    model = SanaVideo(**parts, scheduler_config=sched, schedule=schedule, device=device, dtype=dtype,
                      pipeline=index["_class_name"])
    check_widths(directory, [(model.transformer.config.caption_channels, model.text_encoder.config.hidden_size,
                              "caption_channels")])
    return model


def check_frames(num_frames) -> int:
    """The pipeline's ``frames`` (default 81) of the form 4 k + 1 (:func:`.wan.check_frames`)."""
    from .wan import check_frames as wan_frames
    return wan_frames(num_frames, SANA_VIDEO_FRAMES)


def text_to_video(model: SanaVideo, prompts: Union[str, Sequence[str]], **options) -> torch.Tensor:
    """Videos (B, T, 3, H, W) of ``prompts`` (one string, or a list: one video each) as ``SanaVideoPipeline``
    (module docstring); ``options``: :func:`generate`'s."""
    return generate(model, prompts, None, **options)


def image_to_video(model: SanaVideo, images, prompts: Union[str, Sequence[str]], **options) -> torch.Tensor:
    """Videos (B, T, 3, H, W) starting at ``images`` (PIL images or (B, 3, H, W) in [-1, 1]; one for every prompt, or
    one per video) from ``prompts`` (one, or one per video) as ``SanaImageToVideoPipeline``: each image resized to
    height x width (Lanczos), encoded alone by the Wan VAE (posterior mean), normalised (z - mean) / std, the kept
    first latent frame at timestep 0 (:meth:`SanaVideo.kept_first_frame`); ``options``: :func:`generate`'s."""
    return generate(model, prompts, images, **options)


def generate(model: SanaVideo, prompts: Union[str, Sequence[str]], images=None, *, negative_prompt=None,
             guidance_scale: Optional[float] = None, convention: str = "diffusers", steps: Optional[int] = None,
             sampler: Optional[str] = None, num_frames: Optional[int] = None, height: Optional[int] = None,
             width: Optional[int] = None, seed: Optional[int] = 0, latents: Optional[torch.Tensor] = None,
             max_sequence_length: Optional[int] = None,
             complex_human_instruction: Optional[Sequence[str]] = VIDEO_HUMAN_INSTRUCTION,
             output_range: str = "-1,1", return_latents: bool = False, progress: bool = False,
             **options) -> torch.Tensor:
    """The SANA-Video pipelines' loop: text-to-video, or image-to-video with ``images`` (:func:`image_to_video`).

    guidance_scale: in ``convention`` (default s = 6, diffusers'), against ``negative_prompt`` (default ""; one, or one
    per video). steps: the scheduler's (default 50); sampler: None for the scheduler's own step, or any diffkit
    sampler on its grid (``options``: its options). num_frames (default 81, 4 k + 1), height x width (default 480 x
    832, multiples of 32). latents: z at the grid's first sigma (B, C, F, h, w) (the pipeline's ``latents``),
    default N(0, I) from per-video ``seed + i``. max_sequence_length (default 300), complex_human_instruction
    (default the pipelines'; None or []: none): the prompts' encoding. Returns frames in ``output_range`` ("-1,1" or
    "0,1"), or with ``return_latents`` the final latents (B, C, F, h, w)."""
    from PIL import Image

    from ..errors import check_choice
    from ..guidance import ClassifierFreeGuidance
    from .qwen_image_edit import _pil_images, _pixels
    from .stable_diffusion import OUTPUT_RANGES, prompt_list
    from .wan import pipeline_guidance
    check_choice("output_range", output_range, OUTPUT_RANGES)
    prompts = prompt_list(prompts)
    pil = None if images is None else _pil_images(images)
    count = max(len(prompts), len(pil or ()))
    for what, given in (("images", pil), ("prompts", prompts)):
        if given is not None and len(given) not in (1, count):
            raise DiffkitError(f"{len(given)} {what} for {count} videos; give one, or one per video")
    prompts = prompts * count if len(prompts) == 1 else prompts
    scale, convention, cfg = pipeline_guidance(guidance_scale, convention, negative_prompt, SANA_VIDEO_GUIDANCE)
    frames = check_frames(num_frames)
    height = SANA_VIDEO_HEIGHT if height is None else height
    width = SANA_VIDEO_WIDTH if width is None else width
    model.check_size(height, width)
    shape = model.latent_video_shape(count, frames, height, width)
    steps, grid, sampler, options, latents = model.start_latents(steps, sampler, options, shape, latents, seed)
    cond, null = model.prompt_states(prompts, negative_prompt, cfg, max_sequence_length, complex_human_instruction)
    denoiser = model.denoiser()
    if cfg:
        denoiser = ClassifierFreeGuidance(denoiser, scale, convention, null_context=null.pop("context"),
                                          null_cond=null)
    if pil is not None:  # the image's latents the kept first latent frame, at timestep 0
        pixels = _pixels([image.resize((width, height), resample=Image.LANCZOS) for image in pil * (count // len(pil))])
        latents, denoiser, cond["frame_mask"] = model.kept_first_frame(denoiser, latents, pixels)
    z = model.sample_latents(denoiser, cond, grid, sampler, latents, seed, progress, options)
    return model.output_videos(z, output_range, return_latents)


__all__ = ["SanaVideo", "SanaVideoNet", "load_sana_video", "is_sana_video_folder", "check_sana_video_folder",
           "check_frames", "text_to_video", "image_to_video", "generate", "SANA_VIDEO_PIPELINE", "SANA_I2V_PIPELINE",
           "SANA_VIDEO_GUIDANCE", "SANA_VIDEO_STEPS", "SANA_VIDEO_FRAMES", "SANA_VIDEO_FPS",
           "VIDEO_HUMAN_INSTRUCTION"]
