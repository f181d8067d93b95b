"""A CogVideoX diffusers folder (``CogVideoXPipeline``, ``CogVideoXImageToVideoPipeline``,
``CogVideoXVideoToVideoPipeline``, ``CogVideoXFunControlPipeline``, diffusers 0.42.1): text-, image-, video- and
control-video-to-video with any diffkit sampler.

CogVideoX (Yang et al. 2024, "CogVideoX: Text-to-Video Diffusion Models with An Expert Transformer", THUDM) is a
``CogVideoXTransformer3DModel`` (text and video tokens in one sequence, expert adaLN; 3D RoPE where
``use_rotary_positional_embeddings``, Sec. 2.2) on the latents of a causal 3D VAE (``AutoencoderKLCogVideoX``:
spatial factor 8, temporal factor 4), conditioned on T5's states, trained as a v-prediction DDPM (Salimans & Ho 2022)
with zero terminal SNR (Lin et al. 2024) on a schedule whose every SNR is divided by ``snr_shift_scale`` (Sec. 3.1).
As ``CogVideoXPipeline.__call__``:

* prompts: T5's last states of 226 tokens as written, with **no attention mask**
  (:func:`.cogview3plus.unmasked_t5_states`); the negative prompt (default "") the same.
* the schedule: :func:`.cogview3plus.cogvideox_schedule` (``CogVideoXDDIMScheduler``'s betas, SNR / k, zero terminal
  SNR), v-prediction; the folder's step is DDIM's with eta 0, diffkit's ``ddim`` on the scheduler's ``set_timesteps``
  grid (``trailing``: the first step at t = T - 1, where alpha_bar = 0); the transformer is called at the integer t.
  A ``CogVideoXDPMScheduler`` folder's step (the same schedule and grid) is SDE-DPM-Solver++(2M) (Lu et al. 2022b,
  Sec. 5, midpoint; first order on the first and last steps), diffkit's ``sde-dpm-solver++-2m``, its z drawn from
  video i's generator after z_T in the pipeline's layout, twice at a second-order step (:class:`DPMStepNoise`).
* guidance: CFG v_u + s (v_c - v_u) (Ho & Salimans 2022, eq. 6, diffusers' convention) for s > 1, default 6.0; s <= 1
  one unguided call (a negative prompt refused, :func:`.auraflow.guided`). ``dynamic_cfg`` (the pipeline's
  ``use_dynamic_cfg``): at the step of timestep t of N steps the scale is
  s_t = 1 + s (1 - cos(pi ((N - t) / N) ^ 5)) / 2 (:func:`dynamic_scale`, the pipeline's formula as written: t is the
  training timestep, 0..T-1, so (N - t) / N is mostly far below -1), guidance on where s > 1.
* latents: (B, C, F, h, w) in diffkit (the pipeline's are (B, F, C, h, w); its noise is drawn in that layout from
  per-video generators and permuted, so the same seed draws the same noise); F = (frames - 1) / 4 + 1 latent frames,
  h = H / 8. CogVideoX 1.5 (a transformer with ``patch_size_t``): F is padded up to a multiple of ``patch_size_t``
  with frames drawn first (the pipeline's ``additional_frames``), dropped before decoding.
* 3D RoPE: the pipeline's own ``_prepare_rotary_positional_embeddings`` (1.0: crops of the base grid
  ``sample_height`` x ``sample_width``; 1.5: ``slice`` grids) for the latents' size.
* dtypes: the latents and the sampler's state in float32, the transformer's input and text states in its dtype (its
  output cast back to float32); the pipeline keeps its latents in the text encoder's dtype between steps (the same in
  float32).
* output: x = D(z / scaling_factor) (``decode_latents``), (B, T, 3, H, W), T the frames the VAE decodes F latent frames
  to (49 for 13; its decoder runs latent frames in batches of two, the odd first batch causal); ``return_latents``:
  the final latents (B, C, F, h, w), padding frames included (``output_type="latent"``, permuted).

Image-to-video (``CogVideoXImageToVideoPipeline``, :func:`image_to_video`; a transformer of 2 C input channels): the
image resized and normalised by diffusers' own ``VideoProcessor.preprocess`` (to the video's size), encoded as one
frame with its posterior **sampled** from video i's generator (before that video's noise is drawn from it), x
``scaling_factor`` (/ with the VAE's ``invert_scale_latents``), followed by F - 1 zero latent frames, and given to the
transformer beside the noisy latents along the channels (both CFG halves); ``ofs`` 2.0 where the transformer has
``ofs_embed_dim``. CogVideoX 1.5 (``patch_size_t``): the pipeline pads F before ``prepare_latents``, so the noise and
the image latents (the image, then zero frames) both have the padded count; the first padding frames are dropped
before decoding.

Control video (``CogVideoXFunControlPipeline``, :func:`control_to_video`; a transformer of 2 C input channels): each
control video resized and normalised by ``VideoProcessor.preprocess_video``, encoded, its posterior's **mode** x
``scaling_factor`` (``prepare_control_latents``, no generator), given beside the noisy latents along the channels;
its frame count (4 k + 1, whole latent patches) the output's.

Video-to-video (``CogVideoXVideoToVideoPipeline``, :func:`video_to_video`; a text-to-video transformer): SDEdit
(Meng et al. 2022) on the input videos: each resized and normalised by diffusers' own
``VideoProcessor.preprocess_video``, encoded with its posterior **sampled** from video i's generator, x
``scaling_factor`` (z_0; the video's frame count gives F, 4 k + 1 frames, and a multiple of ``patch_size_t`` latent
frames where the transformer has one: the pipeline pads none), then noised to the first kept timestep t of the
``strength`` part of the grid (the pipeline's ``get_timesteps``: the last min(int(N strength), N) of its N steps,
:func:`diffkit.editing.strength_grid`), z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps (``scheduler.add_noise``, eps
drawn after the posterior sample), and sampled from there; ``dynamic_cfg`` counts the kept steps (the pipeline's
``num_inference_steps`` after ``get_timesteps``).

Defaults: 50 steps, s = 6, ``sample_frames`` frames (49), ``sample_height`` x ``sample_width`` x 8 (480 x 720); frame
counts of the form 4 k + 1 (the pipeline would round others down), sizes multiples of 8 x ``patch_size``. Refused in
one line before any weight is read (:func:`check_cogvideox_folder`): another pipeline class, a missing component,
parts of other classes, a transformer whose channels are not the VAE's (2 C in for image-to-video and control), a
``CogVideoXDPMScheduler`` in a ``CogVideoXFunControlPipeline`` folder (whose loop calls the DDIM step's signature).

LoRA files (``lora=``): ``CogVideoXLoraLoaderMixin``'s diffusers / PEFT keys, fused as its ``fuse_lora``
(:func:`load_cogvideox`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Optional, Sequence, Union

import torch

from ..denoiser import Wrapper
from ..errors import DiffkitError, read_json_object
from . import model_dtype, require

COGVIDEOX_PIPELINE = "CogVideoXPipeline"
COGVIDEOX_I2V_PIPELINE = "CogVideoXImageToVideoPipeline"
COGVIDEOX_V2V_PIPELINE = "CogVideoXVideoToVideoPipeline"
COGVIDEOX_FUN_PIPELINE = "CogVideoXFunControlPipeline"
COGVIDEOX_PIPELINES = (COGVIDEOX_PIPELINE, COGVIDEOX_I2V_PIPELINE, COGVIDEOX_V2V_PIPELINE, COGVIDEOX_FUN_PIPELINE)
COGVIDEOX_DPM = "CogVideoXDPMScheduler"
# the pipelines whose transformer takes 2 C channels: the noisy latents, then these latents along the channels
TWO_INPUT_PIPELINES = {COGVIDEOX_I2V_PIPELINE: "image", COGVIDEOX_FUN_PIPELINE: "control video"}
COGVIDEOX_STRENGTH = 0.8  # CogVideoXVideoToVideoPipeline.__call__'s default strength
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
COGVIDEOX_CLASSES = {"transformer": ("CogVideoXTransformer3DModel",), "vae": ("AutoencoderKLCogVideoX",),
                     "text_encoder": ("T5EncoderModel",), "scheduler": ("CogVideoXDDIMScheduler", COGVIDEOX_DPM)}
COGVIDEOX_GUIDANCE = 6.0  # CogVideoXPipeline.__call__'s default guidance_scale (diffusers' convention)
COGVIDEOX_STEPS = 50  # its num_inference_steps
MAX_SEQUENCE_LENGTH = 226  # its max_sequence_length
COGVIDEOX_FPS = 8.0  # the model card's export_to_video(video, fps=8)


def dynamic_scale(scale: float, steps: int, t: float) -> float:
    """The pipeline's ``use_dynamic_cfg`` scale at timestep ``t`` of ``steps`` steps: 1 + s (1 - cos(pi ((N - t) /
    N) ^ 5)) / 2 (``CogVideoXPipeline.__call__``, as written)."""
    return 1 + scale * ((1 - math.cos(math.pi * ((steps - t) / steps) ** 5.0)) / 2)


def check_size(height, width, factor: int, config) -> None:
    """One line unless height and width are positive multiples of the VAE's ``factor`` x the transformer's patch
    size, and, for a transformer of learned positions (CogVideoX-5b-I2V's ``use_learned_positional_embeddings``, whose
    patch embedding refuses other sizes), its sample size x ``factor``; ``config``: the transformer's config (a dict
    or diffusers' config)."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    step = factor * int(get("patch_size", 2))
    for value in (height, width):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % step:
            raise DiffkitError(f"height x width {height}x{width} is not allowed; give positive multiples of {step} "
                               f"(the VAE's factor {factor} x the transformer's patches)")
    sample = (int(get("sample_height", 60)) * factor, int(get("sample_width", 90)) * factor)
    if get("use_learned_positional_embeddings", False) and (height, width) != sample:
        raise DiffkitError(f"height x width {height}x{width} is not allowed for this transformer of learned positions; "
                           f"allowed: its sample size {sample[0]}x{sample[1]}")


def latent_frames(frames, factor: int, patch_t: Optional[int]) -> tuple:
    """(latent frames F, padding frames) of ``frames`` = ``factor`` k + 1: (frames - 1) / factor + 1, padded up to
    a multiple of ``patch_t`` (CogVideoX 1.5's ``additional_frames``); one line for another frame count."""
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1 or (frames - 1) % factor:
        raise DiffkitError(f"num_frames={frames!r} is not allowed; give {factor} k + 1 frames (1, {factor + 1}, ..., "
                           f"the VAE's causal temporal factor {factor}; the pipeline would round others down)")
    latent = (frames - 1) // factor + 1
    extra = 0 if not patch_t or latent % patch_t == 0 else patch_t - latent % patch_t
    return latent + extra, extra


class DynamicGuidance(Wrapper):
    """CFG whose diffusers scale follows :func:`dynamic_scale` of the call's timestep: ``inner`` is a
    :class:`~diffkit.guidance.ClassifierFreeGuidance` with ``weight_input`` (w = s_t - 1 per call)."""

    def __init__(self, guidance, scale: float, steps: int):
        self.inner, self.scale, self.steps = guidance, float(scale), int(steps)

    def __call__(self, x: torch.Tensor, t, **cond):
        times = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        w = [dynamic_scale(self.scale, self.steps, float(ti)) - 1 for ti in times.tolist()]
        return self.inner(x, t, w=torch.tensor(w, dtype=x.dtype, device=x.device), **cond)

    def reset_state(self) -> None:
        self.inner.reset_state()


class DPMStepNoise:
    """``CogVideoXDPMScheduler.step``'s noise as diffkit's ``sde-dpm-solver++-2m`` ``noise(i, mean, std)`` option:
    video b's z drawn from its generator in the pipeline's (B, F, C, h, w) layout, twice at a second-order step (the
    step draws its first-order z, then the second-order one it uses: steps 0 < i < N - 1 of N)."""

    def __init__(self, generators, steps: int):
        self.generators, self.steps = generators, int(steps)

    def __call__(self, i: int, mean: torch.Tensor, std) -> torch.Tensor:
        from ..noise import randn
        b, c, f, h, w = mean.shape
        for _ in range(2 if 0 < i < self.steps - 1 else 1):
            z = randn((b, f, c, h, w), self.generators, device=mean.device)
        return z.permute(0, 2, 1, 3, 4).to(mean.dtype)


class CogVideoXNet(torch.nn.Module):
    """``net(z, t, context)`` over a ``CogVideoXTransformer3DModel`` on latents z (B, C, F, h, w): the transformer's
    (B, F, C, h, w) layout, ``t`` the training timestep, ``context`` T5's states, ``rope`` (F, h, w) -> the
    pipeline's rotary embeddings (or None)."""

    def __init__(self, transformer, rope):
        super().__init__()
        self.model, self.rope = transformer, rope

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None,
                image: torch.Tensor = None) -> torch.Tensor:
        if context is None:
            raise DiffkitError("a CogVideoX transformer needs cond {'context'} (cogvideox.text_to_video)")
        dtype = model_dtype(self.model)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        z = x if image is None else torch.cat([x, image.to(x.dtype)], dim=1)  # image-to-video: [z_t, image latents]
        ofs = None if self.model.config.ofs_embed_dim is None else x.new_full((1,), 2.0, dtype=dtype)
        out = self.model(hidden_states=z.permute(0, 2, 1, 3, 4).to(dtype), encoder_hidden_states=context.to(dtype),
                         timestep=t, ofs=ofs, image_rotary_emb=self.rope(*x.shape[2:]), return_dict=False)[0]
        return out.permute(0, 2, 1, 3, 4).to(x.dtype)


@dataclass
class CogVideoX:
    """The loaded components of a ``CogVideoXPipeline`` folder (:func:`load_cogvideox`)."""

    transformer: object
    vae: object
    text_encoder: object
    tokenizer: object
    scheduler_config: dict
    schedule: object
    prediction_type: str
    device: torch.device
    dtype: torch.dtype = torch.float32
    pipeline: str = COGVIDEOX_PIPELINE  # the folder's pipeline class
    _ropes: dict = field(default_factory=dict, repr=False)

    default_steps = COGVIDEOX_STEPS
    default_guidance_scale = COGVIDEOX_GUIDANCE
    max_sequence_length = MAX_SEQUENCE_LENGTH

    @property
    def vae_scale_factor(self) -> int:
        """The pipeline's ``vae_scale_factor_spatial``: 2 ^ (len(block_out_channels) - 1) (8)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def temporal_factor(self) -> int:
        """The pipeline's ``vae_scale_factor_temporal`` (the VAE's ``temporal_compression_ratio``, 4)."""
        return int(self.vae.config.temporal_compression_ratio)

    @property
    def default_size(self) -> tuple:
        """(height, width): the transformer's ``sample_height`` / ``sample_width`` x the VAE factor."""
        config, f = self.transformer.config, self.vae_scale_factor
        return int(config.sample_height) * f, int(config.sample_width) * f

    def check_size(self, height, width) -> None:
        """One line unless height and width are positive multiples of 8 x the transformer's patch size (and its
        sample size with learned positions, :func:`check_size`)."""
        check_size(height, width, self.vae_scale_factor, self.transformer.config)

    @property
    def scheduler_class(self) -> str:
        """The folder's scheduler class: ``CogVideoXDDIMScheduler`` or ``CogVideoXDPMScheduler``."""
        return self.scheduler_config.get("_class_name", COGVIDEOX_CLASSES["scheduler"][0])

    def latent_frames(self, frames) -> tuple:
        """(latent frames F, padding frames) of ``frames`` (:func:`latent_frames`)."""
        return latent_frames(frames, self.temporal_factor, self.transformer.config.patch_size_t)

    def scheduler_grid(self, steps: int) -> torch.Tensor:
        """diffkit's grid of the folder's ``CogVideoXDDIMScheduler`` after ``set_timesteps(steps)``
        (:func:`.cogview3plus.cogvideox_ddim_grid`)."""
        from .cogview3plus import cogvideox_ddim_grid
        return cogvideox_ddim_grid(self.scheduler_config, steps)

    def rope(self, frames: int, h: int, w: int):
        """The pipeline's 3D rotary embeddings (cos, sin) for latents of F x h x w (``_prepare_rotary_positional_
        embeddings``), or None without ``use_rotary_positional_embeddings``."""
        if not self.transformer.config.use_rotary_positional_embeddings:
            return None
        if (frames, h, w) not in self._ropes:
            require("diffusers")
            from diffusers.pipelines.cogvideo.pipeline_cogvideox import CogVideoXPipeline
            f = self.vae_scale_factor
            shim = SimpleNamespace(transformer=self.transformer, vae_scale_factor_spatial=f)
            self._ropes[frames, h, w] = CogVideoXPipeline._prepare_rotary_positional_embeddings(
                shim, h * f, w * f, frames, self.device)
        return self._ropes[frames, h, w]

    def denoiser(self):
        """The unguided v-prediction Denoiser on the folder's schedule (:class:`CogVideoXNet`)."""
        from ..denoiser import Denoiser
        denoiser = Denoiser(CogVideoXNet(self.transformer, self.rope), self.schedule, self.prediction_type)
        denoiser.model = self.transformer
        return denoiser

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """T5's states (B, 226, d) of the prompts as written, no mask (``_get_t5_prompt_embeds``)."""
        from .cogview3plus import unmasked_t5_states
        from .stable_diffusion import prompt_list
        return unmasked_t5_states(self.tokenizer, self.text_encoder, prompt_list(prompts), MAX_SEQUENCE_LENGTH,
                                  self.device)[0]

    @property
    def image_to_video(self) -> bool:
        """True for an image-to-video folder (``CogVideoXImageToVideoPipeline``: a transformer of 2 C input
        channels)."""
        return self.pipeline == COGVIDEOX_I2V_PIPELINE

    def image_latents(self, images, height: int, width: int, frames: int, generators) -> torch.Tensor:
        """The image-to-video condition (B, C, F, h, w) (``prepare_latents``): the images resized and normalised by
        diffusers' own ``VideoProcessor.preprocess``, each encoded as one frame and its posterior **sampled** from
        its video's generator (before that video's noise is drawn from it), x scaling_factor (/ with
        ``invert_scale_latents``), then F - 1 zero frames."""
        require("diffusers")
        from diffusers.video_processor import VideoProcessor
        pixels = VideoProcessor(vae_scale_factor=self.vae_scale_factor).preprocess(images, height=height, width=width)
        pixels = pixels.to(self.device, self.vae.dtype)[:, :, None]
        with torch.no_grad():
            z = torch.cat([self.vae.encode(pixels[i:i + 1]).latent_dist.sample(
                None if generators is None else generators[i]) for i in range(pixels.shape[0])]).float()
        factor = self.vae.config.scaling_factor
        z = z / factor if self.vae.config.invert_scale_latents else z * factor
        return torch.cat([z, z.new_zeros(z.shape[0], z.shape[1], frames - 1, *z.shape[3:])], dim=2)

    def video_latents(self, videos: list, height: int, width: int, generators, mode: bool = False) -> torch.Tensor:
        """Video-to-video's z_0 (B, C, F, h, w) (``prepare_latents``): the videos (lists of PIL frames, one frame
        count) resized and normalised by diffusers' own ``VideoProcessor.preprocess_video``, each encoded and its
        posterior **sampled** from its generator (before its noise), x scaling_factor; with ``mode`` its posterior's
        mode instead (``CogVideoXFunControlPipeline.prepare_control_latents``, no generator)."""
        require("diffusers")
        from diffusers.video_processor import VideoProcessor
        pixels = VideoProcessor(vae_scale_factor=self.vae_scale_factor).preprocess_video(videos, height=height,
                                                                                        width=width)
        pixels = pixels.to(self.device, self.vae.dtype)
        with torch.no_grad():
            posteriors = [self.vae.encode(pixels[i:i + 1]).latent_dist for i in range(pixels.shape[0])]
            z = torch.cat([p.mode() if mode else p.sample(None if generators is None else generators[i])
                           for i, p in enumerate(posteriors)]).float()
        return z * self.vae.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Videos (B, T, 3, H, W) in [-1, 1] (not clamped) of latents (B, C, F, h, w): x = D(z / scaling_factor)
        (``decode_latents``)."""
        with torch.no_grad():
            z = latents.to(device=self.device, dtype=self.vae.dtype) / self.vae.config.scaling_factor
            return self.vae.decode(z, return_dict=False)[0].permute(0, 2, 1, 3, 4).float()


def is_cogvideox_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``CogVideoXPipeline``, ``CogVideoXImageToVideoPipeline`` or
    ``CogVideoXVideoToVideoPipeline``."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) in COGVIDEOX_PIPELINES


def check_cogvideox_folder(directory) -> tuple:
    """(model_index dict, scheduler config) of a ``CogVideoXPipeline`` folder, checked from its JSON alone (module
    docstring); a one-line DiffkitError for what diffkit does not drive."""
    from .cogview3plus import check_latent_channels, cogvideox_schedule
    from .pixart import check_classes, named_index
    directory = Path(directory)
    index = named_index(directory, COGVIDEOX_PIPELINES, "CogVideoX")
    check_classes(directory, index, REQUIRED, "CogVideoX", COGVIDEOX_CLASSES)
    if index["_class_name"] not in TWO_INPUT_PIPELINES:
        check_latent_channels(directory, "both; an image-to-video transformer takes twice as many")
    else:
        config = read_json_object(directory / "transformer" / "config.json", "transformer config")
        latents = int(read_json_object(directory / "vae" / "config.json", "vae config").get("latent_channels", 16))
        if (config.get("in_channels", 16), config.get("out_channels", 16)) != (2 * latents, latents):
            raise DiffkitError(f"{directory}'s {index['_class_name']} transformer has in_channels, out_channels = "
                               f"{config.get('in_channels', 16)!r}, {config.get('out_channels', 16)!r}; allowed: "
                               f"{2 * latents}, {latents} (the noisy latents and the "
                               f"{TWO_INPUT_PIPELINES[index['_class_name']]} latents)")
    sched = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    if index["_class_name"] == COGVIDEOX_FUN_PIPELINE and sched.get("_class_name") == COGVIDEOX_DPM:
        raise DiffkitError(f"{directory}'s scheduler is a {COGVIDEOX_DPM}, which {COGVIDEOX_FUN_PIPELINE} cannot "
                           f"step (its loop calls the DDIM step's signature); allowed: CogVideoXDDIMScheduler")
    if sched.get("_class_name") not in COGVIDEOX_CLASSES["scheduler"]:
        raise DiffkitError(f"{directory}'s scheduler is a {sched.get('_class_name')!r}, which diffkit does not drive; "
                           f"allowed: {', '.join(COGVIDEOX_CLASSES['scheduler'])}")
    cogvideox_schedule(sched)  # its keys: one line
    return index, sched


def load_cogvideox(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                   progress: bool = True, lora=None) -> CogVideoX:
    """Load a ``CogVideoXPipeline`` / ``CogVideoXImageToVideoPipeline`` folder (never downloads, never unpickles),
    checked first (:func:`check_cogvideox_folder`). ``lora``: LoRA files (paths or (path, scale) pairs) as
    ``CogVideoXLoraLoaderMixin.load_lora_weights`` loads them: diffusers / PEFT ``transformer.<module>.lora_A`` /
    ``lora_B`` keys (the loader converts no other format), alpha / rank patterns from the file's metadata, read and
    checked first (:func:`.sana_lora.read_transformer_loras`), fused as ``fuse_lora(lora_scale=scale)``
    (:func:`.sd_lora.merge_sd_loras`: W = W0 + s (alpha / r) B A, Hu et al. 2021, eq. 3)."""
    from .cogview3plus import cogvideox_schedule
    from .flow_latents import frozen_on, load_flow_parts
    from .sana_lora import read_transformer_loras
    from .sd_lora import merge_sd_loras
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_cogvideox_folder(directory)
    loras = read_transformer_loras(lora, "CogVideoX", "a CogVideoX folder", index["_class_name"]) if lora else []
    schedule, prediction_type = cogvideox_schedule(sched)
    parts = load_flow_parts(directory, index, diffusers.CogVideoXTransformer3DModel, {"": "T5EncoderModel"}, dtype,
                            progress, vae_cls=diffusers.AutoencoderKLCogVideoX)
    device = frozen_on(parts, device)
    model = CogVideoX(**parts, scheduler_config=sched, schedule=schedule, prediction_type=prediction_type,
                      device=device, dtype=dtype, pipeline=index["_class_name"])
    have, need = model.transformer.config.text_embed_dim, model.text_encoder.config.d_model
    if have != need:
        raise DiffkitError(f"{directory}: the transformer's text_embed_dim={have} does not fit its T5's width {need}")
    merge_sd_loras(model, loras)
    return model


def text_to_video(model: CogVideoX, prompts: Union[str, Sequence[str]], *, negative_prompt=None,
                  guidance_scale: Optional[float] = None, convention: str = "diffusers", dynamic_cfg: bool = False,
                  steps: Optional[int] = None, sampler: Optional[str] = None, num_frames: Optional[int] = None,
                  height: Optional[int] = None, width: Optional[int] = None, seed: Optional[int] = 0,
                  latents: Optional[torch.Tensor] = None, output_range: str = "-1,1", return_latents: bool = False,
                  progress: bool = False, images=None, videos=None, strength: Optional[float] = None,
                  **options) -> torch.Tensor:
    """Videos (B, T, 3, H, W) of ``prompts`` as ``CogVideoXPipeline`` (module docstring); ``images`` (PIL, one per
    prompt) only through :func:`image_to_video` (``CogVideoXImageToVideoPipeline`` folders), ``videos`` and
    ``strength`` only through :func:`video_to_video` (``CogVideoXVideoToVideoPipeline`` folders).

    guidance_scale: in ``convention`` (default s = 6, diffusers'), against ``negative_prompt`` (default "");
    dynamic_cfg: the pipeline's ``use_dynamic_cfg`` (:func:`dynamic_scale` of s). steps: the scheduler's (default 50);
    sampler: None for the scheduler's own step (``ddim``), or any diffkit sampler on its grid. num_frames: 4 k + 1
    (default the transformer's ``sample_frames``, 49); height / width: default 480 x 720 (the transformer's sample
    size x 8). latents: z_T (B, C, F, h, w) (the pipeline's ``latents``, permuted), default N(0, I) drawn in the
    pipeline's layout from per-video ``seed + i`` (image-to-video: after that video's image latents were sampled
    from the same generator). Returns videos in ``output_range`` ("-1,1" or "0,1", the pipeline's
    ``output_type="pt"``), or with ``return_latents`` the final latents (B, C, F, h, w)."""
    from ..errors import check_choice
    from ..guidance import ClassifierFreeGuidance, pipeline_scale
    from ..noise import generators_from_seed, randn
    from ..sampling import sample
    from .auraflow import guided
    from .stable_diffusion import OUTPUT_RANGES, negative_prompts, prompt_list
    check_choice("output_range", output_range, OUTPUT_RANGES)
    if model.image_to_video != (images is not None):
        raise DiffkitError("this CogVideoX folder is image-to-video (CogVideoXImageToVideoPipeline); call "
                           "image_to_video(model, images, prompts)" if model.image_to_video else
                           "this CogVideoX folder is text-to-video (CogVideoXPipeline); call text_to_video(model, "
                           "prompts) without images")
    control = model.pipeline == COGVIDEOX_FUN_PIPELINE
    if (model.pipeline == COGVIDEOX_V2V_PIPELINE or control) != (videos is not None):
        raise DiffkitError("this CogVideoX folder is video-to-video (CogVideoXVideoToVideoPipeline); call "
                           "video_to_video(model, videos, prompts)" if model.pipeline == COGVIDEOX_V2V_PIPELINE else
                           "this CogVideoX folder is CogVideoXFunControlPipeline; call control_to_video(model, "
                           "control_videos, prompts)" if control else
                           f"this CogVideoX folder is a {model.pipeline} one; video_to_video takes a "
                           f"{COGVIDEOX_V2V_PIPELINE} folder, control_to_video a {COGVIDEOX_FUN_PIPELINE} one")
    if control and strength is not None:
        raise DiffkitError(f"strength={strength!r} is not allowed for {COGVIDEOX_FUN_PIPELINE} (it noises no video; "
                           f"the control video is a condition)")
    scale = pipeline_scale(guidance_scale, model.default_guidance_scale, convention)
    cfg = guided(scale, "diffusers", negative_prompt)
    prompts = prompt_list(prompts)
    if images is not None and len(images) != len(prompts):
        raise DiffkitError(f"{len(images)} images for {len(prompts)} prompts are not allowed; give one per prompt")
    from .cosmos2_video import prompt_videos
    videos = prompt_videos(videos, prompts, num_frames, strength)
    frames = len(videos[0]) if videos is not None else \
        int(model.transformer.config.sample_frames) if num_frames is None else num_frames
    latent_frames, extra = model.latent_frames(frames)
    if videos is not None and extra:
        raise DiffkitError(f"input videos of {frames} frames are not allowed; give a multiple of "
                           f"{model.transformer.config.patch_size_t} latent frames (the pipeline pads none)")
    default_height, default_width = model.default_size
    height = default_height if height is None else height
    width = default_width if width is None else width
    model.check_size(height, width)
    steps = model.default_steps if steps is None else steps
    grid = model.scheduler_grid(steps)
    if videos is not None and not control:  # the pipeline's get_timesteps: the strength's last steps
        from ..editing import strength_grid
        grid = strength_grid(grid, COGVIDEOX_STRENGTH if strength is None else strength)
    own = sampler is None
    if own:  # CogVideoXDDIMScheduler.step: DDIM, eta 0; CogVideoXDPMScheduler.step: SDE-DPM-Solver++(2M)
        sampler = "sde-dpm-solver++-2m" if model.scheduler_class == COGVIDEOX_DPM else "ddim"
    f = model.vae_scale_factor
    channels = int(model.transformer.config.out_channels)
    shape = (len(prompts), channels, latent_frames, height // f, width // f)
    generators = None if seed is None else generators_from_seed(seed, shape[0])
    cond = {"context": model.encode_prompts(prompts)}
    if images is not None:  # sampled from the generators before the noise (prepare_latents)
        cond["image"] = model.image_latents(images, height, width, latent_frames, generators)
    if control:  # the control video's latents, beside the noisy ones along the channels (no generator drawn)
        cond["image"] = model.video_latents(videos, height, width, None, mode=True)
    if latents is None:  # drawn in the pipeline's (B, F, C, h, w) layout
        drawn = (shape[0], shape[2], shape[1], *shape[3:])
        z0 = None if videos is None or control else model.video_latents(videos, height, width, generators)
        latents = randn(drawn, generators, device=model.device).permute(0, 2, 1, 3, 4)
        if z0 is not None:  # scheduler.add_noise at the first kept timestep
            from ..diffusion import q_sample
            t = torch.full((shape[0],), float(grid[0]), dtype=torch.float64)
            latents = q_sample(model.schedule, z0, t, latents)
    elif tuple(latents.shape) != shape:
        raise DiffkitError(f"latents of shape {tuple(latents.shape)} are not allowed; expected {shape}")
    denoiser = model.denoiser()
    if cfg:
        null = model.encode_prompts(negative_prompts(negative_prompt, len(prompts)))
        denoiser = ClassifierFreeGuidance(denoiser, scale, "diffusers", null_context=null, weight_input=dynamic_cfg)
        if dynamic_cfg:
            denoiser = DynamicGuidance(denoiser, scale, len(grid) - 1)  # the kept steps (video-to-video)
    state = torch.float32
    if own and model.scheduler_class == COGVIDEOX_DPM:  # its step's z from the videos' generators, after z_T's
        options = {"noise": DPMStepNoise(generators, len(grid) - 1), **options}
    z = sample(denoiser, latents.to(model.device, state).contiguous(), sampler, grid=grid, seed=seed, cond=cond,
               progress=progress, device=model.device, dtype=state, **options)
    if return_latents:
        return z
    videos = model.decode(z[:, :, extra:])
    return (videos / 2 + 0.5).clamp(0, 1) if output_range == "0,1" else videos.clamp(-1, 1)


def image_to_video(model: CogVideoX, images, prompts: Union[str, Sequence[str]], **options) -> torch.Tensor:
    """Videos (B, T, 3, H, W) of PIL ``images`` (one per prompt; the condition frame) and ``prompts`` as
    ``CogVideoXImageToVideoPipeline`` (:meth:`CogVideoX.image_latents`; the options: :func:`text_to_video`'s)."""
    return text_to_video(model, prompts, images=list(images), **options)


def control_to_video(model: CogVideoX, control_videos, prompts: Union[str, Sequence[str]], **options) -> torch.Tensor:
    """Videos (B, T, 3, H, W) following ``control_videos`` (one per prompt: lists of PIL frames or (T, 3, H, W) in
    [-1, 1]; one frame count, 4 k + 1, the output's; e.g. pose or depth videos) and ``prompts`` as
    ``CogVideoXFunControlPipeline`` (module docstring): the control videos' latents (posterior modes) beside the noisy
    latents along the channels at every call; the options: :func:`text_to_video`'s."""
    return text_to_video(model, prompts, videos=list(control_videos), **options)


def video_to_video(model: CogVideoX, videos, prompts: Union[str, Sequence[str]], *, strength: Optional[float] = None,
                   **options) -> torch.Tensor:
    """Videos (B, T, 3, H, W) of input ``videos`` (one per prompt: lists of PIL frames or (T, 3, H, W) in [-1, 1],
    :func:`diffkit.video.read_video`'s; one frame count, 4 k + 1, the output's) and ``prompts`` as
    ``CogVideoXVideoToVideoPipeline`` (module docstring): noised to ``strength`` (default 0.8: the last
    min(int(N strength), N) of the N steps run), then the CogVideoX loop; the options: :func:`text_to_video`'s
    (``latents``: the pipeline's, the noised start itself)."""
    return text_to_video(model, prompts, videos=list(videos), strength=strength, **options)


__all__ = ["CogVideoX", "CogVideoXNet", "DynamicGuidance", "DPMStepNoise", "load_cogvideox", "is_cogvideox_folder",
           "check_cogvideox_folder", "check_size", "latent_frames", "dynamic_scale", "text_to_video",
           "image_to_video", "video_to_video", "control_to_video", "COGVIDEOX_PIPELINE", "COGVIDEOX_I2V_PIPELINE",
           "COGVIDEOX_V2V_PIPELINE", "COGVIDEOX_FUN_PIPELINE", "COGVIDEOX_STRENGTH", "COGVIDEOX_FPS"]
