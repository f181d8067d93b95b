"""A Mochi 1 diffusers folder (``MochiPipeline``, diffusers 0.42.1): text-to-video with any diffkit sampler.

Mochi 1 (Genmo 2024, "Mochi 1", github.com/genmoai/models) is a rectified-flow video model (Esser et al. 2024,
Sec. 2, eq. 1: x_s = (1 - s) x_0 + s eps, velocity u = eps - x_0): an asymmetric diffusion transformer
(``MochiTransformer3DModel``, visual and text streams of different widths, one joint attention) over the latents
of an ``AutoencoderKLMochi`` (12 channels, spatial factor 8, temporal factor 6). As ``MochiPipeline.__call__``:

* prompts: T5's last states (``T5EncoderModel``) of ``max_sequence_length`` = 256 tokens encoded under the
  tokenizer's mask, and that mask, which the transformer reads (its attention and its attention pooling of the
  caption take the prompt's tokens alone); the negative prompt (default "") the same. With the pipeline config's
  ``force_zeros_for_empty_prompt`` an empty prompt's token ids and mask are zeros (the pipeline tests the last
  prompt of its batch and zeros the whole batch; diffkit zeros each empty prompt, the same for a batch of one text).
* guidance: CFG u_u + s (u_c - u_u) (Ho & Salimans 2022, eq. 6, diffusers' convention) for s > 1, default 4.5;
  s <= 1 one unguided call (a negative prompt refused, :func:`.auraflow.guided`).
* the grid: Mochi's linear-quadratic schedule (``linear_quadratic_schedule(steps, 0.025)``: the first half of the
  steps linear in 1 - s up to 0.025, then quadratic) given to the folder's ``FlowMatchEulerDiscreteScheduler`` as its
  ``sigmas`` (default 64 steps), which shifts them as its config says; diffkit's grid places those sigmas at equal
  log-SNR on ``NoiseSchedule.flow(T, shift)`` (:func:`.flow_latents.flow_sigmas_grid`), the scheduler's step is flow
  Euler (diffkit's ``ddim``, :func:`.hidream.folder_sampler`). The grid starts at s = 1 (infinite noise, alpha_bar =
  0), where only samplers whose first step is an x-space step start (ddim, ddpm, ...:
  :func:`diffkit.sampling.check_zero_terminal_snr`); another sampler runs the first interval with the folder's own
  step and the rest of the grid itself (Karras et al.'s Euler then is the pipeline's loop: DDIM is Euler on the
  probability-flow ODE in sigma / alpha, Song et al. 2021 (DDIM), Sec. 4.3).
* the sign convention: Mochi's network runs on reversed time, 0 at noise (genmo's ``model(z, 1 - sigma)``) and
  predicts the velocity toward the data, x_0 - eps = -u. The released folder's scheduler has ``invert_sigmas``:
  it stores 1 - s, passes (1 - s) T as the timestep and appends 1 (= data), so its Euler step z + (s - s') v is
  the flow Euler step with u = -v. diffkit's network (:class:`MochiNet`) is called at T - s T and returns -v there.
  A scheduler without ``invert_sigmas`` (diffusers' test folders) passes s T and takes v as u: the same code with
  the flip off.
* latents: N(0, I) of (B, 12, (frames - 1) / 6 + 1, H / 8, W / 8) in float32 (``prepare_latents``; video i's from
  seed + i), the sampler's state in float32, the transformer's input and text states in its own dtype. (The
  pipeline casts its latents to the T5 states' dtype and back after each float32 step: in a bfloat16 run its state
  is rounded to bfloat16 every step, diffkit's is not; in float32 the two are the same.)
* output: the VAE's decoding of z std / scaling_factor + mean (the config's ``latents_mean`` / ``latents_std``),
  (frames - 1) / 6 * 6 + 1 frames, returned as videos (B, T, 3, H, W).

Defaults: 19 frames (6 k + 1 are allowed: the VAE's 1 + 6 k; the pipeline rounds other counts down) of 480 x 848
(multiples of 16: the VAE's 8 and the transformer's 2 x 2 patches). Refused in one line before any weight is read
(:func:`check_mochi_folder`): another pipeline class, a missing component, parts of other classes, a VAE or
transformer whose latent channels are not 12 or whose factors are not 8 and 6 (the pipeline hard-codes them), a
scheduler other than FlowMatchEuler or with ``use_dynamic_shifting`` (the pipeline passes no ``mu``) or
``stochastic_sampling``.

LoRA files: those the pipeline's ``Mochi1LoraLoaderMixin`` loads (diffusers / PEFT keys of the transformer; it
converts no other format), fused as its ``load_lora_weights`` + ``fuse_lora`` (:func:`load_mochi`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from . import model_dtype, require
from .flow_latents import FlowLatentVAE

MOCHI_PIPELINE = "MochiPipeline"
MOCHI_TRANSFORMER = "MochiTransformer3DModel"
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
MOCHI_CLASSES = {"transformer": (MOCHI_TRANSFORMER,), "vae": ("AutoencoderKLMochi",),
                 "text_encoder": ("T5EncoderModel",), "tokenizer": ("T5Tokenizer", "T5TokenizerFast"),
                 "scheduler": ("FlowMatchEulerDiscreteScheduler",)}
MOCHI_GUIDANCE = 4.5  # MochiPipeline.__call__'s guidance_scale (diffusers' convention)
MOCHI_STEPS = 64  # its num_inference_steps
MOCHI_FRAMES = 19  # its num_frames
MOCHI_SIZE = (480, 848)  # its default_height, default_width
MAX_SEQUENCE_LENGTH = 256  # its max_sequence_length
THRESHOLD_NOISE = 0.025  # its linear_quadratic_schedule's threshold_noise
LATENT_CHANNELS, SPATIAL, TEMPORAL = 12, 8, 6  # the pipeline's hard-coded latent channels and VAE factors
SIZE_MULTIPLE = 16  # the VAE's 8 x the transformer's 2 x 2 patches


class MochiNet(torch.nn.Module):
    """``net(z, t, context, mask)`` over a ``MochiTransformer3DModel`` on latent videos z (B, C, F, h, w):
    ``context`` (T5's states) and ``mask`` (their attention mask) -> ``encoder_hidden_states`` /
    ``encoder_attention_mask``; with ``invert`` (the scheduler's ``invert_sigmas``, module docstring) the transformer
    runs at T - t and its output is negated (Mochi's reversed time and velocity), else at ``t`` (the flow time s T)
    as it is; the velocity u in x's dtype."""

    def __init__(self, transformer, num_timesteps: int, invert: bool):
        super().__init__()
        self.model, self.num_timesteps, self.invert = transformer, num_timesteps, bool(invert)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None,
                mask: torch.Tensor = None) -> torch.Tensor:
        if context is None or mask is None:
            raise DiffkitError("a Mochi transformer needs cond {'context', 'mask'} (mochi.text_to_video)")
        dtype = model_dtype(self.model)
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0]).double()
        t = (self.num_timesteps - t if self.invert else t).to(torch.float32)
        out = self.model(hidden_states=x.to(dtype), encoder_hidden_states=context.to(dtype), timestep=t.to(dtype),
                         encoder_attention_mask=mask, return_dict=False)[0].to(x.dtype)
        return -out if self.invert else out


def linear_quadratic_sigmas(steps: int) -> list:
    """Mochi's sigmas 1 - x_k of ``steps`` (>= 2) steps (diffusers' ``linear_quadratic_schedule(steps, 0.025)``,
    genmo's ``infer.py``): x linear from 0 for steps // 2 steps up to 0.025, then quadratic."""
    require("diffusers")
    from diffusers.pipelines.mochi.pipeline_mochi import linear_quadratic_schedule
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise DiffkitError(f"steps={steps!r} is not allowed; give an integer >= 2 (Mochi's linear-quadratic "
                           f"schedule spends half of the steps on each part)")
    return linear_quadratic_schedule(steps, THRESHOLD_NOISE)


@dataclass
class Mochi(FlowLatentVAE):
    """The loaded components of a ``MochiPipeline`` folder (:func:`load_mochi`)."""

    transformer: object
    vae: object
    text_encoder: object
    tokenizer: object
    scheduler_config: dict
    schedule: object
    device: torch.device
    dtype: torch.dtype = torch.float32
    force_zeros_for_empty_prompt: bool = False
    _sigmas: dict = field(default_factory=dict, repr=False)

    default_steps = MOCHI_STEPS
    vae_scale_factor = SPATIAL
    temporal_factor = TEMPORAL

    @property
    def invert(self) -> bool:
        """The scheduler's ``invert_sigmas`` (module docstring)."""
        return bool(self.scheduler_config.get("invert_sigmas", False))

    @staticmethod
    def check_size(height, width) -> None:
        """One line unless height and width are positive multiples of 16."""
        for value in (height, width):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % SIZE_MULTIPLE:
                raise DiffkitError(f"height x width {height}x{width} is not allowed; give positive multiples of "
                                   f"{SIZE_MULTIPLE} (the VAE's factor {SPATIAL} x the transformer's 2 x 2 patches)")

    def scheduler_sigmas(self, steps: int) -> torch.Tensor:
        """The noise levels s (float64, the final 0 included) of the folder's scheduler after
        ``set_timesteps(sigmas=linear_quadratic_sigmas(steps))``, as the pipeline's ``retrieve_timesteps``: with
        ``invert_sigmas`` 1 - its stored sigmas."""
        diffusers = require("diffusers")
        if steps not in self._sigmas:
            lq = linear_quadratic_sigmas(steps)
            scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
            scheduler.set_timesteps(sigmas=lq)
            sigmas = scheduler.sigmas.detach().to("cpu", torch.float64)
            self._sigmas[steps] = 1 - sigmas if self.invert else sigmas
        return self._sigmas[steps]

    def scheduler_grid(self, steps: int) -> torch.Tensor:
        """diffkit's grid of the scheduler's sigmas (:func:`.flow_latents.flow_sigmas_grid`)."""
        from .flow_latents import flow_sigmas_grid
        return flow_sigmas_grid(self.schedule, self.scheduler_sigmas(steps), steps)

    @property
    def denoiser(self):
        """The unguided flow-prediction Denoiser on ``NoiseSchedule.flow(T, shift)`` (:class:`MochiNet`)."""
        from ..denoiser import Denoiser
        denoiser = Denoiser(MochiNet(self.transformer, self.schedule.num_timesteps, self.invert), self.schedule,
                            "flow_prediction")
        denoiser.model = self.transformer
        return denoiser

    def encode_prompts(self, prompts: Sequence[str]) -> tuple:
        """(T5 states (B, 256, d), mask (B, 256) bool) of ``prompts`` (``_get_t5_prompt_embeds``), an empty prompt's
        ids and mask zeros with ``force_zeros_for_empty_prompt`` (module docstring)."""
        from .stable_diffusion import prompt_list
        prompts = prompt_list(prompts)
        tokens = self.tokenizer(prompts, padding="max_length", max_length=MAX_SEQUENCE_LENGTH, truncation=True,
                                add_special_tokens=True, return_tensors="pt")
        ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.bool().to(self.device)
        if self.force_zeros_for_empty_prompt:
            empty = torch.tensor([p == "" for p in prompts], device=self.device)[:, None]
            ids, mask = ids.masked_fill(empty, 0), mask.masked_fill(empty, False)
        with torch.no_grad():
            states = self.text_encoder(ids, attention_mask=mask)[0]
        return states.to(self.text_encoder.dtype), mask

    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """Videos (B, T, 3, H, W) in [-1, 1] (not clamped) of latents (B, 12, F, h, w): x = D(z std / scaling_factor
        + mean), as the pipeline decodes."""
        with torch.no_grad():
            z = latents.to(device=self.device, dtype=self.vae.dtype)
            mean, std = (s[:, :, None] for s in self._stats(z))
            video = self.vae.decode(z * std / self.scaling_factor + mean, return_dict=False)[0]
        return video.float().permute(0, 2, 1, 3, 4)


def is_mochi_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``MochiPipeline``."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == MOCHI_PIPELINE


def check_mochi_folder(directory) -> tuple:
    """(model_index dict, scheduler config) of a ``MochiPipeline`` folder, checked from its JSON alone (module
    docstring); a one-line DiffkitError for what diffkit does not drive."""
    from ..errors import read_json_object
    from .flow_latents import check_part_configs
    from .hidream import folder_sampler
    from .pixart import check_classes, named_index
    directory = Path(directory)
    index = named_index(directory, (MOCHI_PIPELINE,), "Mochi")
    check_classes(directory, index, REQUIRED, "Mochi", MOCHI_CLASSES)
    configs = {part: read_json_object(directory / part / "config.json", f"{part} config")
               for part in ("transformer", "vae")}
    hard = "MochiPipeline hard-codes it"
    check_part_configs(directory, configs, (
        ("vae", "latent_channels", 12, LATENT_CHANNELS, hard),
        ("vae", "spatial_expansions", [2, 2, 2], [2, 2, 2], f"the spatial factor {SPATIAL}: {hard}"),
        ("vae", "temporal_expansions", [1, 2, 3], [1, 2, 3], f"the temporal factor {TEMPORAL}: {hard}"),
        ("transformer", "in_channels", 12, LATENT_CHANNELS, "the VAE's latent channels"),
        ("transformer", "patch_size", 2, 2, "sizes of 16")))
    if configs["transformer"].get("out_channels") not in (None, LATENT_CHANNELS):
        raise DiffkitError(f"{directory}'s transformer has out_channels={configs['transformer']['out_channels']!r}; "
                           f"allowed: {LATENT_CHANNELS} or null (the VAE's latent channels)")
    sched = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    if sched.get("use_dynamic_shifting"):
        raise DiffkitError(f"{directory}'s scheduler has use_dynamic_shifting=True, which MochiPipeline cannot run "
                           f"(it passes no mu); allowed: false (a fixed shift)")
    folder_sampler(sched)  # one line for a scheduler whose step diffkit's samplers do not compute
    return index, sched


def load_mochi(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
               progress: bool = True, lora=None) -> Mochi:
    """Load a ``MochiPipeline`` folder (never downloads, never unpickles), checked first (:func:`check_mochi_folder`).
    ``lora``: LoRA files (paths or (path, scale) pairs) as ``Mochi1LoraLoaderMixin.load_lora_weights`` loads them
    (the transformer only, diffusers / PEFT keys ``transformer.<module>.lora_A`` / ``lora_B`` (/ DoRA
    ``lora_magnitude_vector``) with the file's rank / alpha patterns, no converter: :func:`.sana_lora.
    read_transformer_loras`, read and checked before any weight), fused into the transformer as its ``fuse_lora(
    lora_scale=scale)``, W = W0 + s (alpha / r) B A (Hu et al. 2021, eq. 3; :func:`.sd_lora.merge_sd_loras`)."""
    from ..schedule import NoiseSchedule
    from .flow_latents import frozen_on, load_flow_parts
    from .sana import flow_shift_of
    from .schedulers import train_timesteps
    from .sana_lora import read_transformer_loras
    from .sd_lora import merge_sd_loras
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_mochi_folder(directory)
    loras = read_transformer_loras(lora, "Mochi", "a Mochi folder", MOCHI_PIPELINE) if lora else []
    flipped = {k: v for k, v in sched.items() if k != "invert_sigmas"}  # MochiNet flips the time (module docstring)
    schedule = NoiseSchedule.flow(train_timesteps(sched), flow_shift_of(flipped))
    parts = load_flow_parts(directory, index, diffusers.MochiTransformer3DModel, {"": "T5EncoderModel"}, dtype,
                            progress, vae_cls=diffusers.AutoencoderKLMochi)
    device = frozen_on(parts, device)
    model = Mochi(**parts, scheduler_config=sched, schedule=schedule, device=device, dtype=dtype,
                  force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", False)))
    have, need = model.transformer.config.text_embed_dim, model.text_encoder.config.d_model
    if have != need:
        raise DiffkitError(f"{directory}: the transformer's text_embed_dim={have} does not fit its T5 width {need}")
    merge_sd_loras(model, loras)
    return model


def check_frames(num_frames) -> int:
    """The frame count (default 19): 6 k + 1, at least 1 (the VAE's 1 + 6 k frames)."""
    frames = MOCHI_FRAMES if num_frames is None else num_frames
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1 or (frames - 1) % TEMPORAL:
        raise DiffkitError(f"num_frames={frames!r} is not allowed; give 6 k + 1 frames (1, 7, 13, 19, ...: the "
                           f"Mochi VAE's 1 + 6 k; the pipeline would round it down)")
    return frames


def text_to_video(model: Mochi, prompts: Union[str, Sequence[str]], *, negative_prompt=None,
                  guidance_scale: Optional[float] = None, convention: str = "diffusers", steps: Optional[int] = None,
                  sampler: Optional[str] = None, num_frames: Optional[int] = None, height: Optional[int] = None,
                  width: Optional[int] = None, seed: Optional[int] = 0, latents: Optional[torch.Tensor] = None,
                  output_range: str = "-1,1", return_latents: bool = False, progress: bool = False,
                  **options) -> torch.Tensor:
    """Videos (B, T, 3, H, W) of ``prompts`` as ``MochiPipeline`` (module docstring).

    guidance_scale: in ``convention`` (default s = 4.5, diffusers'), against ``negative_prompt`` (default ""; one, or
    one per prompt). steps: the linear-quadratic schedule's (default 64, at least 2); sampler: None for the
    scheduler's own step (flow Euler, :func:`.hidream.folder_sampler`), or any diffkit sampler on its grid.
    num_frames: 6 k + 1 (default 19); height / width: multiples of 16 (default 480 x 848). latents: z at s = 1 (B, 12,
    F, h, w) (the pipeline's ``latents``), default N(0, I) from per-video ``seed + i``. Returns videos in
    ``output_range`` ("-1,1" or "0,1"), or with ``return_latents`` the final latents (B, 12, F, h, w)."""
    from ..errors import check_choice
    from ..guidance import ClassifierFreeGuidance
    from ..noise import generators_from_seed, randn
    from ..sampling import flow_top, resolve_sampler, sample
    from .auraflow import guided
    from .hidream import folder_sampler
    from .pixart import flow_start
    from .stable_diffusion import OUTPUT_RANGES, negative_prompts, prompt_list
    check_choice("output_range", output_range, OUTPUT_RANGES)
    frames = check_frames(num_frames)
    scale = MOCHI_GUIDANCE if guidance_scale is None else guidance_scale
    convention = "diffusers" if guidance_scale is None else convention
    cfg = guided(scale, convention, negative_prompt)
    prompts = prompt_list(prompts)
    height = MOCHI_SIZE[0] if height is None else height
    width = MOCHI_SIZE[1] if width is None else width
    model.check_size(height, width)
    steps = model.default_steps if steps is None else steps
    grid = model.scheduler_grid(steps)
    own, own_options = folder_sampler(model.scheduler_config)
    if sampler is None:
        sampler, options = own, {**own_options, **options}
    f = model.vae_scale_factor
    shape = (len(prompts), LATENT_CHANNELS, (frames - 1) // model.temporal_factor + 1, height // f, width // f)
    state = torch.float32  # the pipeline's latents and scheduler state, whatever the transformer's dtype
    if latents is None:
        latents = randn(shape, None if seed is None else generators_from_seed(seed, shape[0]), device=model.device)
    elif tuple(latents.shape) != shape:
        raise DiffkitError(f"latents of shape {tuple(latents.shape)} are not allowed; expected {shape}")
    context, mask = model.encode_prompts(prompts)
    denoiser = model.denoiser
    if cfg:
        negatives = negative_prompts(negative_prompt, len(prompts))
        null, null_mask = model.encode_prompts(negatives)
        denoiser = ClassifierFreeGuidance(denoiser, scale, convention, null_context=null,
                                          null_cond={"mask": null_mask})
    noise = flow_start(model.schedule, latents.to(model.device, state), grid, seed, model.device, state)
    common = {"seed": seed, "cond": {"context": context, "mask": mask}, "progress": progress, "device": model.device,
              "dtype": state}
    top = flow_top(denoiser)
    if top is not None and float(grid[0]) > top and not resolve_sampler(sampler)[0].infinite_noise_start:
        # s = 1 (alpha_bar = 0): the sampler cannot start there; the first interval is the folder's own step
        noise = sample(denoiser, noise, own, grid=grid[:2], **common, **own_options)
        grid = grid[1:]
    z = sample(denoiser, noise, sampler, grid=grid, **common, **options)
    if return_latents:
        return z
    videos = model.decode_video(z)
    return (videos / 2 + 0.5).clamp(0, 1) if output_range == "0,1" else videos.clamp(-1, 1)


__all__ = ["Mochi", "MochiNet", "load_mochi", "is_mochi_folder", "check_mochi_folder", "check_frames",
           "linear_quadratic_sigmas", "text_to_video", "MOCHI_PIPELINE", "MOCHI_GUIDANCE", "MOCHI_STEPS",
           "MOCHI_FRAMES", "MOCHI_SIZE"]
