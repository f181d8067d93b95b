"""A HunyuanVideo diffusers folder (``HunyuanVideoPipeline``, diffusers 0.42.1): text-to-video with any diffkit sampler.

HunyuanVideo (Kong et al. 2024, "HunyuanVideo: A Systematic Framework For Large Video Generative Models", Tencent) is
a rectified-flow video transformer (Esser et al. 2024, Sec. 2, eq. 1: x_s = (1 - s) x_0 + s eps, velocity
u = eps - x_0; ``HunyuanVideoTransformer3DModel``: a token refiner over the text, dual- then single-stream blocks,
3-D RoPE, 1 x 2 x 2 patches) on the latents (B, C, F, h, w) of its causal 3-D VAE (``AutoencoderKLHunyuanVideo``:
8 x spatial, 4 x temporal compression, num_frames = 4 (F - 1) + 1). As ``HunyuanVideoPipeline.__call__``:

* prompts (``encode_prompt``): each in the pipeline's ``DEFAULT_PROMPT_TEMPLATE`` (a system text describing a video,
  then the prompt), tokenised by the Llama tokenizer to ``max_sequence_length`` (default 256) + ``crop_start`` (95)
  tokens (padded, truncated), the Llama model run under that mask, its hidden state **-3**
  (``num_hidden_layers_to_skip`` 2), and the first ``crop_start`` tokens (the template's) dropped from the states and
  the mask (the transformer's ``encoder_attention_mask``); CLIP's pooled output of the prompt (77 tokens) the
  transformer's ``pooled_projections``.
* guidance: the transformer is guidance-distilled (Meng et al. 2023, "On Distillation of Guided Diffusion Models"):
  ``guidance`` = 1000 x ``guidance_scale`` (default 6.0) is an input of every call, not a second pass (diffkit's
  ``convention`` does not change it). True classifier-free guidance u_u + s (u_c - u_u) (Ho & Salimans 2022, eq. 6,
  diffusers' convention) only with ``true_cfg_scale`` s > 1 *and* a negative prompt (its own Llama and CLIP
  encodings); a lone one is refused (:func:`.flux.check_true_cfg`; the pipeline would drop it silently).
* the grid: the folder's ``FlowMatchEulerDiscreteScheduler`` after ``set_timesteps(sigmas=linspace(1, 0, N + 1)[:-1])``
  (its fixed ``shift``, 7.0 in HunyuanVideo's folder; default N = 50 steps), the sigmas at equal log-SNR on
  ``NoiseSchedule.flow(T, shift)`` (:func:`.flow_latents.flow_sigmas_grid`), flow Euler (``ddim``) as its step
  (:func:`.hidream.folder_sampler`); the transformer takes the timestep s T itself. Any other diffkit sampler runs on
  its own grid of that flow schedule (as FLUX.1's, :func:`.flow_latents.pipeline_grid`; most cannot start at the
  scheduler's first sigma 1, infinite noise), or with ``grid="scheduler"`` on the scheduler's sigmas.
* frames, size: default 129 frames of 720 x 1280 (the pipeline's); frames 4 k + 1 (the VAE's causal 1 + 4 k; the
  pipeline would round others down), height and width multiples of 16 (its ``check_inputs``).
* dtypes: the latents and the sampler's state in float32 (``prepare_latents(..., torch.float32)``), the transformer's
  inputs in its dtype. Decoding: x = D(z / scaling_factor) (no shift), the whole video at once (untiled; the
  pipeline's default too).

Refused in one line before any weight is read (:func:`check_hunyuan_video_folder`): another pipeline class, a missing
component or one of another class, a transformer with image conditioning (``image_condition_type``: the
image-to-video folders') or whose channels are not the VAE's latent channels, a scheduler with
``use_dynamic_shifting`` (the pipeline passes no mu) or a flow option diffkit's Euler loop does not take.
LoRA files: the diffusers / PEFT ``transformer.`` keys ``HunyuanVideoLoraLoaderMixin`` loads, fused as its
``fuse_lora`` (:func:`load_hunyuan_video`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, check_float32
from . import model_dtype, require
from .flow_latents import FlowLatentVAE

HUNYUAN_VIDEO_PIPELINE = "HunyuanVideoPipeline"
HUNYUAN_VIDEO_TRANSFORMER = "HunyuanVideoTransformer3DModel"
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")
HUNYUAN_VIDEO_CLASSES = {"transformer": (HUNYUAN_VIDEO_TRANSFORMER,), "vae": ("AutoencoderKLHunyuanVideo",),
                         "text_encoder": ("LlamaModel",), "text_encoder_2": ("CLIPTextModel",),
                         "scheduler": ("FlowMatchEulerDiscreteScheduler",)}
HUNYUAN_VIDEO_GUIDANCE = 6.0  # __call__'s default guidance_scale (the embedded one)
HUNYUAN_VIDEO_STEPS = 50  # its num_inference_steps
HUNYUAN_VIDEO_FRAMES = 129  # its num_frames
HUNYUAN_VIDEO_SIZE = (720, 1280)  # its height, width
MAX_SEQUENCE_LENGTH = 256  # its default Llama length (after the template's crop)
CLIP_LENGTH = 77  # _get_clip_prompt_embeds' max_sequence_length
HIDDEN_STATE = -3  # hidden_states[-(num_hidden_layers_to_skip + 1)], skip 2
SIZE_MULTIPLE = 16  # its check_inputs


def prompt_template() -> dict:
    """The pipeline's ``DEFAULT_PROMPT_TEMPLATE`` ({"template": ..., "crop_start": 95}), read from diffusers."""
    require("diffusers")
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
    return DEFAULT_PROMPT_TEMPLATE


def check_frames(frames, factor: int = 4) -> int:
    """``frames`` where it is a positive 1 + ``factor`` k (the VAE's causal frames); one line otherwise."""
    k = factor
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1 or (frames - 1) % k:
        raise DiffkitError(f"num_frames={frames!r} is not allowed; give {k} k + 1 frames (1, {k + 1}, {2 * k + 1}, "
                           f"...: the video VAE's causal 1 + {k} k; the pipeline would round others down)")
    return frames


def check_size(height, width, pipeline: str = HUNYUAN_VIDEO_PIPELINE) -> None:
    """One line unless height and width are positive multiples of 16 (``pipeline``'s ``check_inputs``; Kandinsky 5's
    video pipelines' too)."""
    for value in (height, width):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % SIZE_MULTIPLE:
            raise DiffkitError(f"height x width {height}x{width} is not allowed; give positive multiples of "
                               f"{SIZE_MULTIPLE} ({pipeline}'s check_inputs)")


def start_video(model, batch: int, channels: int, num_frames, height, width, seed, latents,
                pipeline: str = HUNYUAN_VIDEO_PIPELINE, generators=None) -> tuple:
    """(z at s = 1 (B, C, F, h, w), height, width) of a text-to-video call on an ``AutoencoderKLHunyuanVideo``
    folder (:class:`HunyuanVideoVAE`; ``model.default_frames`` / ``default_size`` where None): frames 4 k + 1 and
    ``pipeline``'s sizes checked (:func:`check_frames`, :func:`check_size`), ``latents`` checked against the shape,
    else N(0, I), video i's from ``seed + i`` (or from ``generators``, one per video, where given: ones that drew
    before, as SkyReels' image posterior)."""
    from ..noise import generators_from_seed, randn
    frames = check_frames(model.default_frames if num_frames is None else num_frames, model.temporal_factor)
    height = model.default_size[0] if height is None else height
    width = model.default_size[1] if width is None else width
    check_size(height, width, pipeline)
    f = model.vae_scale_factor
    shape = (batch, channels, (frames - 1) // model.temporal_factor + 1, height // f, width // f)
    if latents is None:
        if generators is None and seed is not None:
            generators = generators_from_seed(seed, shape[0])
        latents = randn(shape, generators, device=model.device)
    elif tuple(latents.shape) != shape:
        raise DiffkitError(f"latents of shape {tuple(latents.shape)} are not allowed; expected {shape}")
    return latents, height, width


class HunyuanVideoNet(torch.nn.Module):
    """``net(z, t, context, mask, pooled)`` over a ``HunyuanVideoTransformer3DModel`` on latent videos z (B, C, F, h,
    w): ``context`` / ``mask`` the Llama states and mask, ``pooled`` CLIP's, ``t`` the flow time s T; ``guidance``
    (the embedded scale, or None for a transformer without guidance embeds) is fixed per run and given as 1000 x it
    (module docstring)."""

    def __init__(self, transformer, guidance: Optional[float] = None):
        super().__init__()
        self.model, self.guidance = transformer, guidance

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, mask: torch.Tensor = None,
                pooled: torch.Tensor = None) -> torch.Tensor:
        if context is None or mask is None or pooled is None:
            raise DiffkitError("a HunyuanVideo transformer needs cond {'context', 'mask', 'pooled'} "
                               "(HunyuanVideo.encode_prompts)")
        dtype, b = model_dtype(self.model), x.shape[0]
        timestep = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(b)
        guidance = None if self.guidance is None else \
            torch.full((b,), self.guidance, dtype=dtype, device=x.device) * 1000.0
        return self.model(hidden_states=x.to(dtype), timestep=timestep,
                          encoder_hidden_states=context.to(dtype).expand(b, -1, -1),
                          encoder_attention_mask=mask.to(dtype).expand(b, -1),
                          pooled_projections=pooled.to(dtype).expand(b, -1), guidance=guidance,
                          return_dict=False)[0].to(x.dtype)


class HunyuanVideoVAE:
    """The factors and decoding of a folder's ``AutoencoderKLHunyuanVideo`` (``vae``; HunyuanVideo's, Kandinsky 5
    video's, :mod:`.kandinsky5_video`)."""

    @property
    def vae_scale_factor(self) -> int:
        """The pipeline's ``vae_scale_factor_spatial`` (the VAE's ``spatial_compression_ratio``, 8)."""
        return int(self.vae.config.spatial_compression_ratio)

    @property
    def temporal_factor(self) -> int:
        """The pipeline's ``vae_scale_factor_temporal`` (the VAE's ``temporal_compression_ratio``, 4)."""
        return int(self.vae.config.temporal_compression_ratio)

    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """Videos (B, T, C, H, W) in [-1, 1] (not clamped) of latents (B, C, F, h, w): x = D(z / scaling_factor)."""
        with torch.no_grad():
            z = latents.to(device=self.device, dtype=self.vae.dtype) / self.scaling_factor
            return self.vae.decode(z, return_dict=False)[0].float().permute(0, 2, 1, 3, 4)


@dataclass
class HunyuanVideo(HunyuanVideoVAE, FlowLatentVAE):
    """The loaded components of a ``HunyuanVideoPipeline`` folder (:func:`load_hunyuan_video`)."""

    transformer: object
    vae: object
    text_encoder: object
    tokenizer: object
    text_encoder_2: object
    tokenizer_2: object
    scheduler_config: dict
    schedule: object
    device: torch.device
    dtype: torch.dtype = torch.float32
    _sigmas: dict = field(default_factory=dict, repr=False)

    default_steps = HUNYUAN_VIDEO_STEPS
    default_guidance = HUNYUAN_VIDEO_GUIDANCE  # the embedded scale's default (the image-to-video pipelines': 1.0)
    default_frames = HUNYUAN_VIDEO_FRAMES
    default_size = HUNYUAN_VIDEO_SIZE

    @property
    def guidance_embeds(self) -> bool:
        """True for a guidance-distilled transformer (HunyuanVideo's)."""
        return bool(self.transformer.config.guidance_embeds)

    def check_frames(self, frames) -> int:
        """:func:`check_frames` at this VAE's temporal factor."""
        return check_frames(frames, self.temporal_factor)

    def check_guidance_scale(self, guidance_scale) -> None:
        """One line for an embedded guidance scale that is no finite float32 number, or given to a transformer
        without guidance embeds."""
        if guidance_scale is None:
            return
        if not self.guidance_embeds:
            raise DiffkitError(f"guidance_scale={guidance_scale!r} is not allowed: this HunyuanVideo transformer has "
                               f"no guidance embedding (guidance_embeds false); drop it")
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
                or not math.isfinite(guidance_scale):
            raise DiffkitError(f"guidance_scale={guidance_scale!r} is not allowed; give a finite number (the "
                               f"embedded guidance, default {self.default_guidance})")
        check_float32("guidance_scale", guidance_scale)

    def scheduler_sigmas(self, steps: int) -> torch.Tensor:
        """The folder's scheduler's sigmas (the final 0 included) after the pipeline's
        ``set_timesteps(sigmas=linspace(1, 0, steps + 1)[:-1])``."""
        import numpy as np
        diffusers = require("diffusers")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise DiffkitError(f"steps={steps!r} is not allowed; give a positive integer")
        if steps not in self._sigmas:
            scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
            scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1])
            self._sigmas[steps] = scheduler.sigmas.detach().to("cpu", torch.float64)
        return self._sigmas[steps]

    def scheduler_grid(self, steps: int) -> torch.Tensor:
        """diffkit's grid of the scheduler's sigmas (:func:`.flow_latents.flow_sigmas_grid`)."""
        from .flow_latents import flow_sigmas_grid
        return flow_sigmas_grid(self.schedule, self.scheduler_sigmas(steps), steps)

    def denoiser(self, guidance_scale: Optional[float] = None):
        """The flow-prediction Denoiser (:meth:`network`, the embedded ``guidance_scale``, default
        ``default_guidance``: 6.0, the image-to-video folders' 1.0) on ``NoiseSchedule.flow(T, shift)``."""
        from ..denoiser import Denoiser
        scale = self.default_guidance if guidance_scale is None else float(guidance_scale)
        denoiser = Denoiser(self.network(scale if self.guidance_embeds else None), self.schedule, "flow_prediction")
        denoiser.model = self.transformer
        return denoiser

    def network(self, guidance: Optional[float]) -> torch.nn.Module:
        """The transformer as the Denoiser's net (:class:`HunyuanVideoNet`; the image-to-video folders' their own)."""
        return HunyuanVideoNet(self.transformer, guidance)

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> tuple:
        """(Llama states (B, L, d), mask (B, L), CLIP pooled (B, d_2)) as the pipeline's ``encode_prompt`` (module
        docstring; L = ``max_sequence_length``), in the transformer's dtype (the mask int64)."""
        from .stable_diffusion import prompt_list
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int) \
                or max_sequence_length < 1:
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed; give a positive integer "
                               f"(the Llama tokens after the template's, default {MAX_SEQUENCE_LENGTH})")
        prompts, template = prompt_list(prompts), prompt_template()
        crop, dtype = template["crop_start"], model_dtype(self.transformer)
        tokens = self.tokenizer([template["template"].format(p) for p in prompts], max_length=max_sequence_length
                                + crop, padding="max_length", truncation=True, return_tensors="pt",
                                return_attention_mask=True).to(self.device)
        with torch.no_grad():
            states = self.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                                       output_hidden_states=True).hidden_states[HIDDEN_STATE]
        context = states.to(self.text_encoder.dtype)[:, crop:].to(dtype)
        return context, tokens.attention_mask[:, crop:], self.pooled_prompts(prompts)

    def pooled_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """CLIP's pooled output (B, d_2) of ``prompts`` (77 tokens, padded, truncated) in the transformer's dtype, as
        the HunyuanVideo pipelines' ``_get_clip_prompt_embeds``."""
        clip = self.tokenizer_2(list(prompts), padding="max_length", max_length=CLIP_LENGTH, truncation=True,
                                return_tensors="pt")
        with torch.no_grad():
            pooled = self.text_encoder_2(clip.input_ids.to(self.device), output_hidden_states=False).pooler_output
        return pooled.to(model_dtype(self.transformer))


def is_hunyuan_video_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``HunyuanVideoPipeline`` (``diffkit video`` drives it;
    ``diffkit sample`` refuses it)."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == HUNYUAN_VIDEO_PIPELINE


def check_hunyuan_video_folder(directory) -> tuple:
    """(model_index dict, scheduler config) of a ``HunyuanVideoPipeline`` folder, checked from its JSON alone (module
    docstring); a one-line DiffkitError for what diffkit does not drive."""
    from .flux import check_flux_scheduler
    from .hidream import folder_sampler
    from .pixart import checked_folder, fixed_shift_scheduler
    directory = Path(directory)
    index, config, vae = checked_folder(directory, HUNYUAN_VIDEO_PIPELINE, REQUIRED, "HunyuanVideo",
                                        HUNYUAN_VIDEO_CLASSES)
    if config.get("image_condition_type") is not None:
        raise DiffkitError(f"{directory}'s transformer has image_condition_type={config['image_condition_type']!r} "
                           f"(an image-to-video transformer); allowed: null ({HUNYUAN_VIDEO_PIPELINE})")
    latents = vae.get("latent_channels", 16)
    channels = (config.get("in_channels", 16), config.get("out_channels", 16) or config.get("in_channels", 16))
    if channels != (latents, latents):
        raise DiffkitError(f"{directory}'s transformer has in_channels, out_channels = {channels[0]!r}, "
                           f"{channels[1]!r}; allowed: the VAE's latent channels {latents!r}")
    if isinstance(vae.get("scaling_factor", 0.476986), bool) or \
            not isinstance(vae.get("scaling_factor", 0.476986), (int, float)):
        raise DiffkitError(f"{directory}'s vae has scaling_factor={vae.get('scaling_factor')!r}; allowed: a number "
                           f"({HUNYUAN_VIDEO_PIPELINE} decodes z / scaling_factor)")
    sched = fixed_shift_scheduler(directory, HUNYUAN_VIDEO_PIPELINE)
    check_flux_scheduler(directory, HUNYUAN_VIDEO_PIPELINE)
    folder_sampler(sched)  # one line for a scheduler whose step diffkit's samplers do not compute
    return index, sched


def load_hunyuan_video(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                       progress: bool = True, lora=None, check=None, cls=None,
                       transformer_cls=None) -> HunyuanVideo:
    """Load a ``HunyuanVideoPipeline`` folder (never downloads, never unpickles), checked first
    (:func:`check_hunyuan_video_folder`; ``check`` / ``cls``: another check and dataclass of the same components,
    SkyReels' :mod:`.hunyuan_skyreels`; ``transformer_cls``: another transformer class, FramePack's
    :mod:`.hunyuan_framepack`). ``lora``: LoRA files (paths or (path, scale) pairs) with the diffusers /
    PEFT ``transformer.`` keys ``HunyuanVideoLoraLoaderMixin`` loads as they are (``save_lora_weights``' layout, rank
    / alpha patterns from ``lora_adapter_metadata``), read and checked first, fused into the transformer as
    ``load_lora_weights`` + ``fuse_lora(lora_scale=scale)``, W = W0 + s (alpha / r) B A (Hu et al. 2021, eq. 3;
    :func:`.sana_lora.read_transformer_loras`, :func:`.sd_lora.merge_sd_loras`). Original-format
    (``diffusion_model.``) and kohya files, which that loader converts, are refused in one line naming the key."""
    from ..schedule import NoiseSchedule
    from .flow_latents import frozen_on, load_flow_parts
    from .sana import flow_shift_of
    from .sana_lora import read_transformer_loras
    from .schedulers import train_timesteps
    from .sd_lora import merge_sd_loras
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = (check or check_hunyuan_video_folder)(directory)
    loras = read_transformer_loras(lora, "HunyuanVideo", "a HunyuanVideo folder", HUNYUAN_VIDEO_PIPELINE,
                                   flux_check=False) if lora else []  # (its blocks are named as FLUX.1's)
    schedule = NoiseSchedule.flow(train_timesteps(sched), flow_shift_of(sched))
    parts = load_flow_parts(directory, index, transformer_cls or diffusers.HunyuanVideoTransformer3DModel,
                            {"": "LlamaModel", "_2": "CLIPTextModel"}, dtype, progress,
                            vae_cls=diffusers.AutoencoderKLHunyuanVideo)
    device = frozen_on(parts, device)
    parts["text_encoder_2"].to(device).eval().requires_grad_(False)
    model = (cls or HunyuanVideo)(**parts, scheduler_config=sched, schedule=schedule, device=device, dtype=dtype)
    config = model.transformer.config
    for have, need, what in ((config.text_embed_dim, model.text_encoder.config.hidden_size, "text_embed_dim"),
                             (config.pooled_projection_dim, model.text_encoder_2.config.hidden_size,
                              "pooled_projection_dim")):
        if have != need:
            raise DiffkitError(f"{directory}: the transformer's {what}={have} does not fit its encoder's width {need}")
    merge_sd_loras(model, loras)
    return model


def text_to_video(model: HunyuanVideo, prompts: Union[str, Sequence[str]], *, negative_prompt=None,
                  guidance_scale: Optional[float] = None, convention: str = "diffusers", true_cfg_scale: float = 1.0,
                  steps: Optional[int] = None, sampler: Optional[str] = None, nfe: Optional[int] = None,
                  grid: Union[None, str, torch.Tensor] = None, num_frames: Optional[int] = None,
                  height: Optional[int] = None, width: Optional[int] = None, seed: Optional[int] = 0,
                  latents: Optional[torch.Tensor] = None, max_sequence_length: int = MAX_SEQUENCE_LENGTH,
                  output_range: str = "-1,1", return_latents: bool = False, progress: bool = False,
                  **options) -> torch.Tensor:
    """Videos (B, T, C, H, W) of ``prompts`` (one video each) as ``HunyuanVideoPipeline`` (module docstring).

    guidance_scale: the embedded guidance (default 6.0; ``convention`` is checked but does not change it: it is no
    CFG scale). true_cfg_scale > 1 with ``negative_prompt`` (one, or one per prompt): true CFG in diffusers'
    convention. sampler / grid: both None (the default): the pipeline's loop, flow Euler (``ddim``) on the
    scheduler's sigmas (``grid="scheduler"``; ``steps``, default 50); a sampler alone: its own grid of ``steps`` /
    ``nfe`` on the folder's flow schedule (shift 7: most samplers cannot start at the scheduler's first sigma 1,
    infinite noise); ``grid``: ``"scheduler"`` or a tensor (:func:`.flow_latents.pipeline_grid`). ``options`` go to
    :func:`diffkit.sample`. num_frames (default 129, 4 k + 1), height /
    width (default 720 x 1280, multiples of 16). latents: z at s = 1 (B, C, F, h, w) (the pipeline's ``latents``),
    default N(0, I), video i's from ``seed + i``. Returns videos in ``output_range`` ("-1,1" or "0,1": the
    pipeline's ``output_type="pt"``), or with ``return_latents`` the final latents (its ``output_type="latent"``)."""
    from ..errors import check_choice
    from ..guidance import ClassifierFreeGuidance
    from ..sampling import sample
    from .flow_latents import pipeline_grid
    from .flux import check_true_cfg
    from .stable_diffusion import OUTPUT_RANGES, negative_prompts, prompt_list
    check_choice("output_range", output_range, OUTPUT_RANGES)
    check_choice("convention", convention, ["diffusers", "seed"])
    prompts = prompt_list(prompts)
    model.check_guidance_scale(guidance_scale)
    check_true_cfg(true_cfg_scale, negative_prompt)
    sampler, grid, steps = pipeline_grid(sampler, grid, steps, nfe, model.default_steps, model.scheduler_grid,
                                         options.get("flow_shift"))
    latents, _, _ = start_video(model, len(prompts), int(model.transformer.config.in_channels), num_frames, height,
                                width, seed, latents)
    context, mask, pooled = model.encode_prompts(prompts, max_sequence_length)
    cond = {"context": context, "mask": mask, "pooled": pooled}
    denoiser = model.denoiser(guidance_scale)
    if true_cfg_scale > 1:
        negatives = negative_prompts(negative_prompt, len(prompts))
        negatives = negatives[:1] if len(set(negatives)) == 1 else negatives  # one row serves every video
        null_context, null_mask, null_pooled = model.encode_prompts(negatives, max_sequence_length)
        denoiser = ClassifierFreeGuidance(denoiser, float(true_cfg_scale), "diffusers", null_context=null_context,
                                          null_cond={"mask": null_mask, "pooled": null_pooled})
    state = torch.float32  # the pipeline's latents and scheduler state, whatever the transformer's dtype
    noise = latents.to(model.device, state)  # z at s = 1: the first sigma of the scheduler's grid
    z = sample(denoiser, noise, sampler, steps, nfe=nfe, grid=grid, seed=seed, cond=cond, progress=progress,
               device=model.device, dtype=state, **options)
    if return_latents:
        return z
    videos = model.decode_video(z)
    return (videos / 2 + 0.5).clamp(0, 1) if output_range == "0,1" else videos.clamp(-1, 1)


__all__ = ["HunyuanVideo", "HunyuanVideoNet", "load_hunyuan_video", "is_hunyuan_video_folder",
           "check_hunyuan_video_folder", "text_to_video", "prompt_template", "check_frames", "check_size",
           "start_video", "HunyuanVideoVAE",
           "HUNYUAN_VIDEO_PIPELINE", "HUNYUAN_VIDEO_GUIDANCE", "HUNYUAN_VIDEO_STEPS", "HUNYUAN_VIDEO_FRAMES"]
