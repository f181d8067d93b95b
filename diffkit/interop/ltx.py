"""An LTX-Video diffusers folder (``LTXPipeline``, ``LTXImageToVideoPipeline``, diffusers 0.42.1): text- and
image-to-video with any diffkit sampler.

LTX-Video (HaCohen et al. 2024, "LTX-Video: Realtime Video Latent Diffusion", Lightricks) is a rectified-flow video
transformer (Esser et al. 2024, Sec. 2, eq. 1: x_s = (1 - s) x_0 + s eps, velocity u = eps - x_0) on the latents of a
video VAE that compresses 32 x 32 x 8 pixels into one 128-channel token. As ``LTXPipeline.__call__``:

* prompts: T5's last states of 128 tokens (``max_sequence_length``), the encoder run *without* the attention mask
  (padding states kept); the mask goes to the transformer (``encoder_attention_mask``: -10000 on the padding). The
  negative prompt (default "") the same.
* the latents: N(0, I) of shape (B, C, (F - 1) / r_t + 1, H / r, W / r) (r, r_t: the VAE's spatial and temporal
  compression, 32 and 8), drawn per video from ``seed + i`` (diffusers' per-video generators), packed into tokens
  (``_pack_latents`` with the transformer's patch sizes 1: (B, F h w, C)); diffkit keeps them unpacked.
* the grid: the folder's ``FlowMatchEulerDiscreteScheduler`` after ``set_timesteps(sigmas=linspace(1, 1/N, N),
  mu)``, mu the resolution-dependent shift of the video sequence length F h w (FLUX.1's ``calculate_shift``,
  :func:`.flux.calculate_shift`, with the scheduler config's base/max shifts and lengths; exponential: shift e^mu,
  and its ``shift_terminal`` stretch), its sigmas at equal log-SNR on ``NoiseSchedule.flow(T, shift)``
  (:func:`.flow_latents.flow_sigmas_grid`); its step is flow Euler, diffkit's ``ddim``
  (:func:`.pixart.folder_sampler`). The transformer is called at the timestep s T.
* RoPE: the transformer's ``rope_interpolation_scale`` (r_t / frame_rate, r, r), frame_rate 25 by default.
* guidance: CFG u_u + s (u_c - u_u) (Ho & Salimans 2022, eq. 6, diffusers' convention), default s = 3; s <= 1 one
  unguided call. ``guidance_rescale`` phi (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
  Flawed", Sec. 3.4, eq. 15-16) on the guided velocity: phi u std(u_c) / std(u) + (1 - phi) u (``rescale_noise_cfg``;
  :class:`~diffkit.guidance.ClassifierFreeGuidance` with ``rescale_space="flow"``).
* decoding: z std / scaling_factor + mean (the VAE's ``latents_mean`` / ``latents_std`` buffers); a VAE with
  ``timestep_conditioning`` (LTX-Video 0.9.1 on) decodes at ``decode_timestep`` (default 0) from
  (1 - n) z + n noise, n = ``decode_noise_scale`` (default the decode timestep), the noise drawn from each video's
  generator after its latents (as the pipeline's ``generator``); (B, C, T, H, W) -> videos (B, T, C, H, W).
* image-to-video (``LTXImageToVideoPipeline``, :func:`image_to_video`): each image resized to height x width
  (Lanczos), x / 255 * 2 - 1, encoded as one frame with a posterior draw from its video's generator (before the
  noise), normalised (z - mean) / std without the scaling factor (``_normalize_latents``' default), is latent frame 0:
  the pipeline steps frames 1.. alone, keeps frame 0 and calls the transformer at per-token timesteps t (1 - mask),
  0 on frame 0's tokens. diffkit keeps frame 0 with :class:`~diffkit.editing.InpaintingDenoiser` (x_0 there the
  image's latents: the flow state stays them exactly, for any sampler) after CFG and the rescale, which see frame 0's
  velocity as the pipeline's do.
* dtypes: the latents and the scheduler's state in float32, the transformer's input and text states in its dtype.

Defaults: 161 frames of 512 x 704 (height x width), 50 steps, CFG 3. Sizes: multiples of 32 (``check_inputs``) and of
the VAE's r; frames: r_t k + 1 (the VAE decodes r_t (F - 1) + 1 frames, so other counts would come back shorter).
Refused in one line before any weight is read (:func:`check_ltx_folder`): another pipeline class, a missing
component, parts of other classes, transformer patch sizes other than 1 (the pipeline's RoPE grid is the latent
grid), channels other than the VAE's, a scheduler with stochastic sampling.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from . import model_dtype, require

LTX_PIPELINE = "LTXPipeline"
LTX_IMAGE_PIPELINE = "LTXImageToVideoPipeline"  # the same components; the image as the first latent frame
LTX_CONDITION_PIPELINE = "LTXConditionPipeline"  # the same components; conditions at frame indices (.ltx_condition)
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
LTX_CLASSES = {"transformer": ("LTXVideoTransformer3DModel",), "vae": ("AutoencoderKLLTXVideo",),
               "text_encoder": ("T5EncoderModel",), "scheduler": ("FlowMatchEulerDiscreteScheduler",)}
LTX_GUIDANCE = 3.0  # LTXPipeline.__call__'s default guidance_scale (diffusers' convention)
LTX_STEPS = 50  # its num_inference_steps
LTX_FRAMES = 161  # its num_frames
LTX_HEIGHT, LTX_WIDTH = 512, 704  # its height, width
LTX_FRAME_RATE = 25  # its frame_rate (RoPE's temporal interpolation scale r_t / frame_rate)
MAX_SEQUENCE_LENGTH = 128  # its T5 length
CONDITION_SEQUENCE_LENGTH = 256  # LTXConditionPipeline's, its T5 run with the attention mask
SIZE_MULTIPLE = 32  # its check_inputs


class LTXNet(torch.nn.Module):
    """``net(z, t, context, mask, rope)`` over an ``LTXVideoTransformer3DModel`` on unpacked latents z (B, C, F, h, w):
    packed into (B, F h w, C) tokens (patch sizes 1), ``t`` the flow time s T (``timestep``), ``context`` T5's states,
    ``mask`` their attention mask, ``rope`` the ``rope_interpolation_scale``, ``frame_mask`` (B, F h w) (image-to-video)
    the tokens' factor of t (0 on the image's frame); the velocity unpacked, in z's dtype."""

    def __init__(self, transformer):
        super().__init__()
        self.model = transformer

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, mask: torch.Tensor = None,
                rope: tuple = None, frame_mask: torch.Tensor = None) -> torch.Tensor:
        if context is None or mask is None or rope is None:
            raise DiffkitError("an LTX-Video transformer needs cond {'context', 'mask', 'rope'} (ltx.text_to_video)")
        b, c, f, h, w = x.shape
        dtype = model_dtype(self.model)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(b)
        if frame_mask is not None:  # image-to-video: per-token timesteps, 0 on the condition frame's tokens
            t = t[:, None] * frame_mask.to(t)
        out = self.model(hidden_states=x.flatten(2).transpose(1, 2).to(dtype), encoder_hidden_states=context.to(dtype),
                         timestep=t, encoder_attention_mask=mask, num_frames=f, height=h, width=w,
                         rope_interpolation_scale=tuple(rope), return_dict=False)[0]
        return out.float().transpose(1, 2).reshape(b, -1, f, h, w).to(x.dtype)


@dataclass
class LTX:
    """The loaded components of an ``LTXPipeline`` folder (:func:`load_ltx`)."""

    transformer: object
    vae: object
    text_encoder: object
    tokenizer: object
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype = torch.float32
    pipeline: str = LTX_PIPELINE  # model_index.json's class (either drives both functions: the same components)
    _denoisers: dict = field(default_factory=dict, repr=False)

    default_steps = LTX_STEPS

    @property
    def spatial_ratio(self) -> int:
        """The VAE's ``spatial_compression_ratio`` r (32): pixels per latent along height and width."""
        return int(self.vae.spatial_compression_ratio)

    @property
    def temporal_ratio(self) -> int:
        """The VAE's ``temporal_compression_ratio`` r_t (8): frames per latent frame after the first."""
        return int(self.vae.temporal_compression_ratio)

    def latent_shape(self, batch: int, frames: int, height: int, width: int) -> tuple:
        """(B, C, F, h, w) of ``frames`` frames of height x width (``prepare_latents``), checked first."""
        self.check_video(frames, height, width)
        r = self.spatial_ratio
        return (batch, int(self.transformer.config.in_channels), (frames - 1) // self.temporal_ratio + 1,
                height // r, width // r)

    def check_video(self, frames, height, width) -> None:
        """:func:`check_video` at this folder's VAE's ratios."""
        check_video(frames, height, width, self.spatial_ratio, self.temporal_ratio)

    def mu(self, seq: int) -> float:
        """The pipeline's mu: ``calculate_shift`` of the video sequence length F h w (:func:`.flux.calculate_shift`
        with the scheduler config's keys; LTXPipeline's defaults are FLUX.1's)."""
        from .flux import calculate_shift
        return calculate_shift(seq, self.scheduler_config)

    def denoiser_for(self, shape: tuple):
        """The unguided flow-prediction Denoiser (:class:`LTXNet`) on the flow schedule of latents ``shape`` (B, C,
        F, h, w): its shift the scheduler's at that sequence length (:func:`.flux.scheduler_shift`)."""
        from ..denoiser import Denoiser
        from ..schedule import NoiseSchedule
        from .flux import scheduler_shift
        seq = shape[2] * shape[3] * shape[4]
        shift = scheduler_shift(self.scheduler_config, lambda: self.mu(seq), shape[3], shape[4])
        if shift not in self._denoisers:
            schedule = NoiseSchedule.flow(int(self.scheduler_config.get("num_train_timesteps", 1000)), shift)
            self._denoisers[shift] = Denoiser(LTXNet(self.transformer), schedule, "flow_prediction")
            self._denoisers[shift].model = self.transformer
        return self._denoisers[shift]

    def scheduler_sigmas(self, steps: int, shape: tuple) -> torch.Tensor:
        """The folder's scheduler's sigmas (final 0 included) after the pipeline's ``set_timesteps(sigmas=
        linspace(1, 1/steps, steps), mu)`` for latents ``shape`` (mu: :meth:`mu` of F h w)."""
        from .flux import Flux
        diffusers = require("diffusers")
        Flux.check_scheduler_steps(self, steps)
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(sigmas=Flux.input_sigmas(self, steps), mu=self.mu(shape[2] * shape[3] * shape[4]))
        return scheduler.sigmas

    def scheduler_grid(self, steps: int, shape: tuple) -> torch.Tensor:
        """diffkit's grid (on :meth:`denoiser_for`'s schedule) of :meth:`scheduler_sigmas`."""
        from .flow_latents import flow_sigmas_grid
        return flow_sigmas_grid(self.denoiser_for(shape).schedule, self.scheduler_sigmas(steps, shape), steps)

    def rope_scale(self, frame_rate) -> tuple:
        """The transformer's ``rope_interpolation_scale`` (r_t / frame_rate, r, r) (one line for a bad rate)."""
        from ..errors import check_range
        check_range("frame_rate", frame_rate, 0.0, None, low_inclusive=False)
        return (self.temporal_ratio / frame_rate, self.spatial_ratio, self.spatial_ratio)

    def encode_prompts(self, prompts: Sequence[str]) -> tuple:
        """(T5's states (B, 128, d) in the transformer's dtype, their attention mask (B, 128)) of ``prompts``
        (``_get_t5_prompt_embeds``: the encoder without the mask; an ``LTXConditionPipeline`` folder's: 256 tokens,
        the encoder with the mask)."""
        from .stable_diffusion import prompt_list
        masked = self.pipeline == LTX_CONDITION_PIPELINE
        tokens = self.tokenizer(prompt_list(prompts), padding="max_length", truncation=True,
                                max_length=CONDITION_SEQUENCE_LENGTH if masked else MAX_SEQUENCE_LENGTH,
                                add_special_tokens=True, return_tensors="pt")
        with torch.no_grad():
            mask = tokens.attention_mask.bool().to(self.device) if masked else None
            states = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        return states.to(model_dtype(self.transformer)), tokens.attention_mask.bool().to(self.device)

    def decode(self, latents: torch.Tensor, decode_timestep: float = 0.0, decode_noise_scale: Optional[float] = None,
               generators=None) -> torch.Tensor:
        """Videos (B, T, C, H, W) in [-1, 1] (not clamped) of latents (B, C, F, h, w): z std / scaling_factor + mean,
        with a timestep-conditioned VAE mixed (1 - n) z + n noise (n = ``decode_noise_scale``, default the
        ``decode_timestep``; the noise from ``generators``, one per video) and decoded at ``decode_timestep``."""
        from ..errors import check_range
        from ..noise import randn
        with torch.no_grad():
            z = latents.to(self.device, torch.float32)
            view = (1, -1, 1, 1, 1)
            mean, std = (self.vae.get_buffer(k).view(view).to(z) for k in ("latents_mean", "latents_std"))
            z = (z * std / float(self.vae.config.scaling_factor) + mean).to(model_dtype(self.transformer))
            temb = None
            if self.vae.config.timestep_conditioning:
                scale = decode_timestep if decode_noise_scale is None else decode_noise_scale
                for name, value in (("decode_timestep", decode_timestep), ("decode_noise_scale", scale)):
                    check_range(name, value, 0.0, 1.0)
                noise = randn(z.shape, generators, device=z.device, dtype=z.dtype)
                z = (1 - scale) * z + scale * noise
                temb = torch.full((z.shape[0],), float(decode_timestep), device=z.device, dtype=z.dtype)
            elif decode_timestep or decode_noise_scale:
                raise DiffkitError(f"decode_timestep={decode_timestep!r} / decode_noise_scale={decode_noise_scale!r} "
                                   f"is not allowed: this folder's VAE has no timestep conditioning; drop them")
            video = self.vae.decode(z.to(self.vae.dtype), temb, return_dict=False)[0]
        return video.float().transpose(1, 2)


def vae_ratios(config: dict) -> tuple:
    """(r, r_t) of an ``AutoencoderKLLTXVideo`` config (JSON): its spatial and temporal compression ratios, as the
    model computes them (patch sizes times 2 per spatio-temporal scaling block, unless given)."""
    blocks = 2 ** sum(bool(b) for b in config.get("spatio_temporal_scaling", (True, True, True, False)))
    return (int(config.get("spatial_compression_ratio") or config.get("patch_size", 4) * blocks),
            int(config.get("temporal_compression_ratio") or config.get("patch_size_t", 1) * blocks))


def check_video(frames, height, width, spatial: int, temporal: int) -> None:
    """One line unless height and width are positive multiples of 32 and of the VAE's ``spatial`` ratio r and frames
    is ``temporal`` k + 1 (r_t k + 1: the VAE decodes r_t (F - 1) + 1 frames of F latent frames)."""
    multiple = max(SIZE_MULTIPLE, spatial)
    for value in (height, width):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % multiple:
            raise DiffkitError(f"height x width {height}x{width} is not allowed; give positive multiples of "
                               f"{multiple} ({LTX_PIPELINE}'s check_inputs and its VAE's compression)")
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1 or (frames - 1) % temporal:
        raise DiffkitError(f"num_frames={frames!r} is not allowed; give {temporal} k + 1 frames (1, {temporal + 1}, "
                           f"{2 * temporal + 1}, ...: the VAE decodes {temporal} (F - 1) + 1 frames of F latent "
                           f"frames)")


def is_ltx_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``LTXPipeline`` or ``LTXImageToVideoPipeline``."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) in (LTX_PIPELINE, LTX_IMAGE_PIPELINE)


def check_ltx_folder(directory, pipelines: tuple = (LTX_PIPELINE, LTX_IMAGE_PIPELINE)) -> tuple:
    """(model_index dict, scheduler config) of an ``LTXPipeline`` folder (or of another of ``pipelines``), checked
    from its JSON alone (module docstring); a one-line DiffkitError for what diffkit does not drive."""
    from ..errors import read_json_object
    from .flow_latents import check_part_configs
    from .pixart import check_classes, folder_sampler, named_index
    directory = Path(directory)
    index = named_index(directory, pipelines, "LTX-Video")
    check_classes(directory, index, REQUIRED, "LTX-Video", LTX_CLASSES)
    configs = {part: read_json_object(directory / part / "config.json", f"{part} config")
               for part in ("transformer", "vae")}
    latent = configs["vae"].get("latent_channels", 128)
    check_part_configs(directory, configs, (
        ("transformer", "patch_size", 1, 1, "the pipeline's RoPE grid is the latent grid"),
        ("transformer", "patch_size_t", 1, 1, "the pipeline's RoPE grid is the latent grid"),
        ("transformer", "in_channels", 128, latent, "the VAE's latent_channels"),
        ("transformer", "out_channels", 128, latent, "the VAE's latent_channels")))
    sched = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    folder_sampler(sched, flow=True)  # one line for a step diffkit's ddim does not compute
    return index, sched


def load_ltx(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32, progress: bool = True,
             lora=None, pipelines: tuple = (LTX_PIPELINE, LTX_IMAGE_PIPELINE)) -> LTX:
    """Load an ``LTXPipeline`` / ``LTXImageToVideoPipeline`` folder (never downloads, never unpickles), checked first
    (:func:`check_ltx_folder`). ``lora``: LoRA files (paths or (path, scale) pairs) in the layouts
    ``LTXVideoLoraLoaderMixin`` loads (diffusers / PEFT, LTX-Video's ``diffusion_model.`` names through diffusers'
    converter), read and checked first (:func:`.ltx_lora.read_ltx_loras`), fused into the transformer as
    ``load_lora_weights`` + ``fuse_lora(lora_scale=scale)`` (:func:`.sd_lora.merge_sd_loras`). ``pipelines``: the
    model_index.json classes accepted (:func:`.ltx_condition.load_ltx_condition` passes its own)."""
    from .flow_latents import frozen_on, load_flow_parts
    from .ltx_lora import read_ltx_loras
    from .sd_lora import merge_sd_loras
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_ltx_folder(directory, pipelines)
    loras = read_ltx_loras(lora) if lora else []
    parts = load_flow_parts(directory, index, diffusers.LTXVideoTransformer3DModel, {"": "T5EncoderModel"}, dtype,
                            progress, vae_cls=diffusers.AutoencoderKLLTXVideo)
    device = frozen_on(parts, device)
    model = LTX(**parts, scheduler_config=sched, device=device, dtype=dtype, pipeline=index["_class_name"])
    have, need = model.transformer.config.caption_channels, model.text_encoder.config.d_model
    if have != need:
        raise DiffkitError(f"{directory}: the transformer's caption_channels={have} does not fit T5's d_model {need}")
    merge_sd_loras(model, loras)
    return model


def video_guidance(model: LTX, denoiser, prompts: list, negative_prompt, guidance_scale, convention: str,
                   guidance_rescale: float) -> tuple:
    """(denoiser, cond) of the prompts' T5 states guided as the pipeline (module docstring): CFG at diffusers' s > 1
    against ``negative_prompt`` (None: "") with ``guidance_rescale`` phi on the velocity; s <= 1 the unguided
    ``denoiser`` (a rescale or negative prompt there: one line)."""
    from ..errors import check_range
    from ..guidance import ClassifierFreeGuidance
    from .auraflow import guided
    from .stable_diffusion import negative_prompts
    scale = LTX_GUIDANCE if guidance_scale is None else guidance_scale
    convention = "diffusers" if guidance_scale is None else convention
    check_range("guidance_rescale", guidance_rescale, 0.0, 1.0)
    context, mask = model.encode_prompts(prompts)
    if not guided(scale, convention, negative_prompt):
        if guidance_rescale:
            raise DiffkitError(f"guidance_rescale={guidance_rescale:g} is not allowed without CFG (guidance_scale="
                               f"{scale:g}, {convention} convention): it rescales the guided velocity; drop it")
        return denoiser, {"context": context, "mask": mask}
    null, null_mask = model.encode_prompts(negative_prompts(negative_prompt, len(prompts)))
    guided_denoiser = ClassifierFreeGuidance(denoiser, scale, convention, rescale=guidance_rescale,
                                             rescale_space="flow", null_context=null, null_cond={"mask": null_mask})
    return guided_denoiser, {"context": context, "mask": mask}


def text_to_video(model: LTX, prompts: Union[str, Sequence[str]], **options) -> torch.Tensor:
    """Videos (B, T, C, H, W) of ``prompts`` (one per video) as ``LTXPipeline`` (module docstring).

    Keyword arguments (:func:`generate_video`): negative_prompt, guidance_scale (in ``convention``, default s = 3,
    diffusers'), guidance_rescale (phi in [0, 1]), steps (the scheduler's, default 50), sampler (None for its own
    step, flow Euler ``ddim``, or any diffkit sampler on its grid; further keywords: the sampler's), num_frames /
    height / width (default 161 / 512 / 704), frame_rate (RoPE's, default 25), decode_timestep / decode_noise_scale
    (a timestep-conditioned VAE's, default 0 / the decode timestep), seed, latents (z at s = 1, (B, C, F, h, w): the
    pipeline's ``latents`` unpacked; default N(0, I) from per-video ``seed + i``, whose generators then draw the
    decode noise), output_range ("-1,1" or "0,1"), return_latents (the final latents (B, C, F, h, w)), progress."""
    return generate_video(model, prompts, None, **options)


def image_to_video(model: LTX, images, prompts: Union[str, Sequence[str]], **options) -> torch.Tensor:
    """Videos (B, T, C, H, W) starting at ``images`` (PIL images, or (B, 3, H, W) in [-1, 1]; one per video) with
    ``prompts`` (one, or one per image) as ``LTXImageToVideoPipeline`` (module docstring): each image resized to
    height x width (Lanczos; default 512 x 704, the pipeline's), its VAE latents (a posterior draw from the video's
    generator, then normalised (z - mean) / std without the scaling factor, as the pipeline's
    ``_normalize_latents``) the first latent frame, kept there by the sampler (:class:`~diffkit.editing.
    InpaintingDenoiser`), the transformer called at timestep 0 on its tokens. Keyword arguments: those of
    :func:`text_to_video` (``latents``: the noise, whose first frame the image's latents replace)."""
    from .flow_latents import edit_prompts
    from .qwen_image_edit import _pil_images
    pil = _pil_images(images)
    return generate_video(model, edit_prompts(torch.empty(len(pil), 3, 1, 1), prompts), pil, **options)


def image_posterior(model, images: list, height: int, width: int, generators) -> torch.Tensor:
    """E(x) (B, C, 1, h, w), float32, unscaled, of PIL ``images`` resized to height x width (Lanczos, as
    ``VideoProcessor.preprocess``), x / 255 * 2 - 1, encoded by ``model.vae`` as one-frame videos with a posterior
    draw from ``generators`` (``retrieve_latents``; ``vae.encode(...).latent_dist.sample(generator)``)."""
    from PIL import Image

    from .qwen_image_edit import _pixels
    from .stable_diffusion import vae_latents
    pixels = _pixels([image.resize((width, height), resample=Image.LANCZOS) for image in images])
    return vae_latents(model.vae, pixels[:, :, None], model.device, generators, sample=True).float()


def first_frame_latents(model: LTX, images: list, height: int, width: int, generators) -> torch.Tensor:
    """The image condition (B, C, 1, h, w) of ``LTXImageToVideoPipeline.prepare_latents``: :func:`image_posterior`
    of PIL ``images`` at height x width, (z - mean) / std (no scaling factor)."""
    z = image_posterior(model, images, height, width, generators)
    mean, std = (model.vae.get_buffer(k).view(1, -1, 1, 1, 1).to(z) for k in ("latents_mean", "latents_std"))
    return (z - mean) / std


def generate_video(model: LTX, prompts: Sequence[str], images=None, *, negative_prompt=None,
                   guidance_scale: Optional[float] = None, convention: str = "diffusers",
                   guidance_rescale: float = 0.0, steps: Optional[int] = None, sampler: Optional[str] = None,
                   num_frames: Optional[int] = None, height: Optional[int] = None, width: Optional[int] = None,
                   frame_rate: Optional[float] = None, decode_timestep: float = 0.0,
                   decode_noise_scale: Optional[float] = None, seed: Optional[int] = 0,
                   latents: Optional[torch.Tensor] = None, output_range: str = "-1,1", return_latents: bool = False,
                   progress: bool = False, **options) -> torch.Tensor:
    """:func:`text_to_video` (``images`` None) and :func:`image_to_video` (PIL ``images``, one per prompt)."""
    from ..editing import InpaintingDenoiser
    from ..errors import check_choice
    from ..noise import generators_from_seed, randn
    from ..sampling import sample
    from .pixart import flow_start, folder_sampler
    from .stable_diffusion import OUTPUT_RANGES, prompt_list
    check_choice("output_range", output_range, OUTPUT_RANGES)
    prompts = prompt_list(prompts)
    height, width = LTX_HEIGHT if height is None else height, LTX_WIDTH if width is None else width
    shape = model.latent_shape(len(prompts), LTX_FRAMES if num_frames is None else num_frames, height, width)
    rope = model.rope_scale(LTX_FRAME_RATE if frame_rate is None else frame_rate)
    steps = model.default_steps if steps is None else steps
    grid = model.scheduler_grid(steps, shape)
    if sampler is None:
        sampler, own = folder_sampler(model.scheduler_config, flow=True)
        options = {**own, **options}
    generators = None if seed is None else generators_from_seed(seed, shape[0])
    state = torch.float32  # the pipeline's latents and scheduler state, whatever the transformer's dtype
    first = None if images is None else first_frame_latents(model, images, height, width, generators)
    if latents is None:
        latents = randn(shape, generators, device=model.device, dtype=state)
    elif tuple(latents.shape) != shape:
        raise DiffkitError(f"latents of shape {tuple(latents.shape)} are not allowed; expected {shape}")
    denoiser, cond = video_guidance(model, model.denoiser_for(shape), prompts, negative_prompt, guidance_scale,
                                    convention, guidance_rescale)
    cond["rope"] = rope
    latents = latents.to(model.device, state)
    if first is not None:  # the image's latents on frame 0, kept; its tokens at timestep 0 (frame_mask)
        latents = torch.cat([first, latents[:, :, 1:]], dim=2)
        mask = torch.ones_like(latents[:, :1])
        mask[:, :, 0] = 0
        cond["frame_mask"] = mask.flatten(1)
        denoiser = InpaintingDenoiser(denoiser, latents.clone(), mask)
    noise = flow_start(denoiser.schedule, latents, grid, seed, model.device, state)
    z = sample(denoiser, noise, sampler, grid=grid, seed=seed, cond=cond,
               progress=progress, device=model.device, dtype=state, **options)
    if return_latents:
        return z
    videos = model.decode(z, decode_timestep, decode_noise_scale, generators)
    return (videos / 2 + 0.5).clamp(0, 1) if output_range == "0,1" else videos.clamp(-1, 1)


__all__ = ["LTX", "LTXNet", "load_ltx", "is_ltx_folder", "check_ltx_folder", "check_video", "vae_ratios",
           "text_to_video", "image_to_video", "generate_video", "first_frame_latents", "image_posterior",
           "video_guidance", "LTX_HEIGHT",
           "LTX_WIDTH",
           "LTX_PIPELINE", "LTX_IMAGE_PIPELINE", "LTX_GUIDANCE", "LTX_STEPS", "LTX_FRAMES", "LTX_FRAME_RATE"]
