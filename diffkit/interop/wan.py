"""A Wan text-to-video diffusers folder (``WanPipeline``, diffusers 0.42.1): videos from prompts, with any diffkit
sampler.

Wan 2.1 (Wan Team 2025, "Wan: Open and Advanced Large-Scale Video Generative Models", Sec. 3) is a rectified-flow
video transformer (Esser et al. 2024, Sec. 2, eq. 1: x_s = (1 - s) x_0 + s eps, velocity u = eps - x_0) on the latent
video of a causal 3-D VAE (``AutoencoderKLWan``: 1 + 4 k frames -> 1 + k latent frames, H / 8 x W / 8, per-channel
``latents_mean`` / ``latents_std``). As ``WanPipeline.__call__``:

* prompts: the pipeline's ``prompt_clean`` (ftfy, html unescaped twice, whitespace collapsed; without ftfy installed
  diffkit skips that one call, :func:`.prx.ftfy_or_identity`), UMT5's last states of 512 tokens
  (``max_sequence_length``) under the mask, zeroed past each prompt's tokens (:meth:`WanFolder.encode_prompts`); the
  negative prompt (default "") the same.
* guidance: CFG u_u + s (u_c - u_u) (Ho & Salimans 2022, eq. 6, diffusers' convention) for s > 1, default 5.0; s <= 1
  one unguided call (a negative prompt refused, :func:`.auraflow.guided`).
* frames and size: 81 frames (4 k + 1; the pipeline rounds others down, diffkit refuses them) of 480 x 832 by
  default, sizes multiples of 16 (``check_inputs``; the VAE factor 8 and the transformer's 2 x 2 patches); the
  latents (B, z_dim, (frames - 1) / 4 + 1, H / f, W / f) drawn in float32, video i's from seed + i.
* the grid and its step: the folder's scheduler after ``set_timesteps(steps)`` (default 50), its sigmas at equal
  log-SNR on ``NoiseSchedule.flow(T, shift)`` (:func:`.flow_latents.flow_sigmas_grid`), the sampler of its step
  (:func:`.hidream.folder_sampler`: ``UniPCMultistepScheduler`` with flow sigmas -> ``unipc``, FlowMatchEuler ->
  ``ddim``); a UniPC folder's transformer is called at its int64 timesteps floor(s T) (:mod:`.sana`'s
  ``whole_timesteps``), a FlowMatchEuler one at s T.
* Wan 2.2 A14B (``transformer_2`` and ``boundary_ratio`` in model_index.json): two experts, ``transformer`` (guided
  by ``guidance_scale``) at the pipeline's timesteps t >= boundary_ratio T, ``transformer_2`` (``guidance_scale_2``,
  default ``guidance_scale``) below; CFG is on or off by ``guidance_scale`` alone. diffkit switches at the VP time
  between the grid's last high-noise time and the next (:class:`TwoExperts`, :func:`expert_boundary`), so any sampler
  on the grid sees the pipeline's assignment of steps. A ``transformer_2`` without ``boundary_ratio`` is never called
  (as in the pipeline) and is not loaded.
* Wan 2.2 TI2V-5B (``expand_timesteps`` and the Wan 2.2 VAE: 2 x 2 pixel patches, factor 16, 48 channels): the
  transformer's timestep given per patch token (B, F h / 2 w / 2), the pipeline's ``mask * t`` of an all-ones mask in
  text-to-video; sizes multiples of 32 (the pipeline rounds others down).
* dtypes: the latents and the sampler's state in float32, the transformer's input and text states in its own dtype
  (its output cast back to float32).
* output: the Wan VAE's decoding x = D(z / (1 / std) + mean) of the whole latent video, (B, T, 3, H, W) frames
  (``output_type="pt"`` is that in [0, 1]); ``return_latents``: the final latents (B, C, F, h, w).

The pieces a Wan image-to-video folder shares (the folder's grid and prompts, :class:`WanFolder`; the transformer as a
Denoiser, :class:`WanNet`; the image condition and CLIP states) live here; :mod:`.chronoedit` and :mod:`.wan_i2v`
build on them. Refused in one line before any weight is read
(:func:`check_wan_folder`): another pipeline class, a missing component, parts of other classes, a transformer with
CLIP image states or whose channels are not the VAE's z_dim, patches other than (1, 2, 2), a VAE patched otherwise
than Wan 2.2's, a ``boundary_ratio`` without ``transformer_2`` or outside (0, 1), a scheduler diffkit's samplers do not
compute (:func:`.hidream.folder_sampler`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..denoiser import Wrapper
from ..errors import DiffkitError
from . import model_dtype, require
from .flow_latents import FrameVAE

WAN_PIPELINE = "WanPipeline"
WAN_TRANSFORMER = "WanTransformer3DModel"
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
WAN_CLASSES = {"transformer": (WAN_TRANSFORMER,), "vae": ("AutoencoderKLWan",), "text_encoder": ("UMT5EncoderModel",),
               "scheduler": ("UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler")}
WAN_GUIDANCE = 5.0  # WanPipeline.__call__'s default guidance_scale (diffusers' convention)
WAN_STEPS = 50  # its num_inference_steps
WAN_FRAMES = 81  # its num_frames
WAN_HEIGHT, WAN_WIDTH = 480, 832  # its height, width
WAN_FPS = 16.0  # the frame rate its documentation's example exports at (export_to_video(output, fps=16))
MAX_SEQUENCE_LENGTH = 512  # its max_sequence_length (UMT5 tokens)
SIZE_MULTIPLE = 16  # its check_inputs


class WanNet(torch.nn.Module):
    """``net(z, t, context, image=None, condition=None, frame_mask=None)`` over a Wan video transformer on latent
    videos z (B, C, F, h, w): ``context`` (UMT5's states) its text states, ``image`` (CLIP's, image-to-video) its
    ``encoder_hidden_states_image`` (a first-last-frame transformer's, ``pos_embed``: those of [image, last] a video,
    (B, 2 N, d), handed over as (2 B, N, d)), ``condition`` (image-to-video) concatenated after z along the channels;
    ``t`` the flow time s T (floored with ``whole_timesteps``), with ``expand_timesteps`` (Wan 2.2 TI2V-5B) given per
    patch token, (B, F h / 2 w / 2), as the pipeline does: times ``frame_mask`` (B, F) where given (TI2V's
    image-to-video: 0 on the kept first latent frame); the velocity in z's dtype."""

    def __init__(self, transformer, whole_timesteps: bool = False, expand_timesteps: bool = False):
        super().__init__()
        self.model, self.whole_timesteps, self.expand_timesteps = transformer, whole_timesteps, expand_timesteps

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, image: torch.Tensor = None,
                condition: torch.Tensor = None, frame_mask: torch.Tensor = None) -> torch.Tensor:
        if context is None:
            raise DiffkitError("a Wan transformer needs cond {'context'} (wan.text_to_video)")
        dtype = model_dtype(self.model)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        z = x if condition is None else torch.cat([x, condition.to(x.dtype)], dim=1)
        if image is not None and getattr(self.model.condition_embedder.image_embedder, "pos_embed", None) is not None:
            image = image.reshape(-1, image.shape[1] // 2, image.shape[2])  # first-last frame: (2 B, N, d) (wan_i2v)
        extra = {} if image is None else {"encoder_hidden_states_image": image.to(dtype)}
        t = t.floor() if self.whole_timesteps else t
        if self.expand_timesteps:  # the pipeline's (mask[0][0][:, ::2, ::2] * t).flatten(), per latent frame
            frames = t[:, None].expand(-1, x.shape[2]) if frame_mask is None else t[:, None] * frame_mask.to(t)
            t = frames.repeat_interleave(x[0, 0, 0, ::2, ::2].numel(), dim=1)
        return self.model(hidden_states=z.to(dtype), timestep=t,
                          encoder_hidden_states=context.to(dtype), return_dict=False, **extra)[0].to(x.dtype)


class TwoExperts(Wrapper):
    """Wan 2.2 A14B's two experts as one denoiser: ``high`` (``transformer`` with its guidance) at VP times t >=
    ``boundary``, ``low`` (``transformer_2`` with ``guidance_scale_2``) below (``WanPipeline``'s switch at its
    timestep ``boundary_ratio`` T, placed between the grid's last high-noise time and the next,
    :func:`expert_boundary`). ``inner`` is ``high`` (the schedule and the rest of the denoiser contract, as
    :class:`diffkit.denoiser.Wrapper` forwards it); ``nfe`` counts both."""

    def __init__(self, high, low, boundary: float):
        self.inner, self.low, self.boundary = high, low, float(boundary)

    nfe = property(lambda self: self.inner.nfe + self.low.nfe,
                   lambda self, value: (setattr(self.inner, "nfe", value), setattr(self.low, "nfe", 0)))

    def reset_nfe(self) -> None:
        self.inner.reset_nfe()
        self.low.reset_nfe()

    def reset_state(self) -> None:
        """The low expert's wrappers start afresh with the run too (:func:`diffkit.denoiser.reset_states` walks
        ``inner``)."""
        from ..denoiser import reset_states
        reset_states(self.low)

    def __call__(self, x: torch.Tensor, t, **cond):
        from ..schedule import as_cpu_times
        first = float(as_cpu_times(t).reshape(-1)[0])
        return (self.inner if first >= self.boundary else self.low)(x, t, **cond)


def expert_boundary(grid: torch.Tensor, timesteps: torch.Tensor, boundary_timestep: float) -> float:
    """The VP time between the grid's last time whose pipeline timestep is >= ``boundary_timestep`` (the high-noise
    expert's steps: the first k) and the next: +inf where k = 0, -inf where every step is high-noise."""
    k = int((timesteps >= boundary_timestep).sum())
    if k == 0:
        return float("inf")
    if k >= len(timesteps):
        return float("-inf")
    return float(grid[k - 1] + grid[k]) / 2


class WanFolder(FrameVAE):
    """Mixin of a Wan folder's dataclass (``transformer``, ``vae``, ``text_encoder``, ``tokenizer``,
    ``scheduler_config``, ``schedule``, ``device``, ``_sigmas``): the VAE's factors, the size check, the scheduler's
    grid, UMT5 prompt states and the video decoding its pipelines share (:class:`Wan`, :class:`.chronoedit.ChronoEdit`).
    """

    pipeline_name = WAN_PIPELINE
    prompt_module = "diffusers.pipelines.wan.pipeline_wan"  # whose prompt_clean the pipeline runs
    size_multiple = SIZE_MULTIPLE

    @property
    def vae_scale_factor(self) -> int:
        """The pipeline's ``vae_scale_factor_spatial`` (the VAE config's ``scale_factor_spatial``, 8)."""
        return int(self.vae.config.scale_factor_spatial)

    @property
    def temporal_factor(self) -> int:
        """The pipeline's ``vae_scale_factor_temporal`` (4): frames per latent frame (ChronoEdit's mask channels)."""
        return int(self.vae.config.scale_factor_temporal)

    @property
    def whole_timesteps(self) -> bool:
        from .sana import WHOLE_TIMESTEP_SCHEDULERS
        return self.scheduler_config.get("_class_name") in WHOLE_TIMESTEP_SCHEDULERS

    def check_size(self, height, width) -> None:
        """One line unless height and width are positive multiples of :attr:`size_multiple` (``check_inputs``)."""
        for value in (height, width):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % self.size_multiple:
                raise DiffkitError(f"height x width {height}x{width} is not allowed; give positive multiples of "
                                   f"{self.size_multiple} ({self.pipeline_name}'s check_inputs)")

    def scheduler_sigmas(self, steps: int) -> torch.Tensor:
        """The folder's scheduler's sigmas after ``set_timesteps(steps)`` (the final one included)."""
        return self._scheduler_after(steps)[0]

    def scheduler_timesteps(self, steps: int) -> torch.Tensor:
        """The folder's scheduler's timesteps after ``set_timesteps(steps)`` (what the pipeline compares with a
        boundary), float64."""
        return self._scheduler_after(steps)[1]

    def _scheduler_after(self, steps: int) -> tuple:
        diffusers = require("diffusers")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise DiffkitError(f"steps={steps!r} is not allowed; give a positive integer")
        if steps not in self._sigmas:
            scheduler = getattr(diffusers, self.scheduler_config["_class_name"]).from_config(self.scheduler_config)
            scheduler.set_timesteps(steps)
            self._sigmas[steps] = (scheduler.sigmas.detach().to("cpu", torch.float64),
                                   scheduler.timesteps.detach().to("cpu", torch.float64))
        return self._sigmas[steps]

    def scheduler_grid(self, steps: int) -> torch.Tensor:
        """diffkit's grid of the scheduler's sigmas (:func:`.flow_latents.flow_sigmas_grid`)."""
        from .flow_latents import flow_sigmas_grid
        return flow_sigmas_grid(self.schedule, self.scheduler_sigmas(steps), steps)

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """UMT5's states (B, 512, d) of the cleaned prompts, zeroed past each prompt's tokens
        (``_get_t5_prompt_embeds``), in the transformer's dtype."""
        import importlib

        from .prx import ftfy_or_identity
        from .stable_diffusion import prompt_list
        require("diffusers")
        module = importlib.import_module(self.prompt_module)
        with ftfy_or_identity(module):
            texts = [module.prompt_clean(p) for p in prompt_list(prompts)]
        tokens = self.tokenizer(texts, padding="max_length", max_length=MAX_SEQUENCE_LENGTH, truncation=True,
                                add_special_tokens=True, return_tensors="pt")
        mask = tokens.attention_mask.to(self.device)
        with torch.no_grad():
            states = self.text_encoder(tokens.input_ids.to(self.device), mask).last_hidden_state
        keep = torch.arange(states.shape[1], device=self.device)[None] < mask.sum(dim=1, keepdim=True)
        return (states * keep[..., None].to(states.dtype)).to(model_dtype(self.transformer))

    def encode_images(self, images: Sequence) -> torch.Tensor:
        """CLIP's penultimate hidden states (B, N, d) of PIL ``images`` through the folder's image processor
        (``encode_image``; an image-to-video folder's ``image_encoder`` / ``image_processor``), in the transformer's
        dtype."""
        pixels = self.image_processor(images=list(images), return_tensors="pt").pixel_values
        with torch.no_grad():
            out = self.image_encoder(pixel_values=pixels.to(self.device, self.image_encoder.dtype),
                                     output_hidden_states=True)
        return out.hidden_states[-2].to(model_dtype(self.transformer))

    def condition(self, pixels: torch.Tensor, frames: int, last: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[mask, z_cond] (B, 4 + C, F, h, w) of images (B, 3, H, W) in [-1, 1] (an image-to-video pipeline's
        ``prepare_latents``): the image then ``frames`` - 1 zero frames through the Wan VAE (posterior mean),
        normalised, the mask 1 on the first latent frame. ``last`` (B, 3, H, W): the video's last frame too
        (``WanImageToVideoPipeline``'s ``last_image``: frames - 2 zero frames between, the mask 1 on the last pixel
        frame, i.e. the last latent frame's last mask channel)."""
        from .stable_diffusion import vae_latents
        between = frames - 1 if last is None else frames - 2
        video = torch.cat([pixels[:, :, None], pixels.new_zeros(*pixels.shape[:2], between, *pixels.shape[2:])]
                          + ([] if last is None else [last[:, :, None].to(pixels)]), dim=2)
        z = vae_latents(self.vae, video, self.device).float()
        mean, std = (s[:, :, None] for s in self._stats(z))
        mask = torch.zeros(z.shape[0], self.temporal_factor, *z.shape[2:], device=z.device, dtype=z.dtype)
        mask[:, :, 0] = 1
        if last is not None:
            mask[:, -1, -1] = 1
        return torch.cat([mask, (z - mean) / std], dim=1)

    def start_latents(self, steps, sampler, options: dict, shape: tuple, latents, seed) -> tuple:
        """(steps, grid, sampler, its options, z at s = 1) of a Wan pipeline's loop: ``steps`` (default
        :attr:`default_steps`) of the scheduler's grid, ``sampler`` None for the scheduler's own step
        (:func:`.hidream.folder_sampler`, its options under ``options``), ``latents`` checked against ``shape`` or
        drawn N(0, I) from per-video ``seed + i``."""
        from ..noise import generators_from_seed, randn
        from .hidream import folder_sampler
        steps = self.default_steps if steps is None else steps
        grid = self.scheduler_grid(steps)
        own, sampler_options = folder_sampler(self.scheduler_config)
        if sampler is None:
            sampler, options = own, {**sampler_options, **options}
        if latents is None:
            latents = randn(shape, None if seed is None else generators_from_seed(seed, shape[0]), device=self.device)
        elif tuple(latents.shape) != shape:
            raise DiffkitError(f"latents of shape {tuple(latents.shape)} are not allowed; expected {shape}")
        return steps, grid, sampler, options, latents

    def sample_latents(self, denoiser, cond: dict, grid, sampler: str, latents, seed, progress: bool,
                       options: dict) -> torch.Tensor:
        """The final latents of ``denoiser`` from ``latents`` (z at the grid's first sigma) on ``grid``, the
        latents and the sampler's state in float32 (the pipelines' ``prepare_latents(..., torch.float32)``), whatever
        the transformer's dtype."""
        from ..sampling import sample
        from .pixart import flow_start
        state = torch.float32
        noise = flow_start(self.schedule, latents.to(self.device, state), grid, seed, self.device, state)
        return sample(denoiser, noise, sampler, grid=grid, seed=seed, cond=cond, progress=progress, device=self.device,
                      dtype=state, **options)

    def latent_video_shape(self, batch: int, frames: int, height: int, width: int) -> tuple:
        """(B, z_dim, (frames - 1) / 4 + 1, H / 8, W / 8): the pipeline's ``prepare_latents``."""
        f = self.vae_scale_factor
        return (batch, int(self.vae.config.z_dim), (frames - 1) // self.temporal_factor + 1, height // f, width // f)

    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """Frames (B, T, 3, H, W) in [-1, 1] (not clamped) of latent videos (B, C, F, h, w): the pipeline's
        x = D(z / (1 / std) + mean)."""
        with torch.no_grad():
            z = latents.to(device=self.device, dtype=self.vae.dtype)
            mean, std = (s[:, :, None] for s in self._stats(z))
            return self.vae.decode(z / (1.0 / std) + mean, return_dict=False)[0].float().transpose(1, 2)

    def output_videos(self, latents: torch.Tensor, output_range: str, return_latents: bool) -> torch.Tensor:
        """A run's result: the final ``latents`` with ``return_latents``, else their frames (:meth:`decode_video`)
        clamped to ``output_range`` ("-1,1" or "0,1")."""
        if return_latents:
            return latents
        videos = self.decode_video(latents)
        return (videos / 2 + 0.5).clamp(0, 1) if output_range == "0,1" else videos.clamp(-1, 1)


@dataclass
class Wan(WanFolder):
    """The loaded components of a ``WanPipeline`` folder (:func:`load_wan`)."""

    transformer: object
    vae: object
    text_encoder: object
    tokenizer: object
    scheduler_config: dict
    schedule: object
    device: torch.device
    dtype: torch.dtype = torch.float32
    transformer_2: object = None  # Wan 2.2 A14B's low-noise expert (with boundary_ratio)
    boundary_ratio: Optional[float] = None
    expand_timesteps: bool = False  # Wan 2.2 TI2V-5B's timestep per patch token
    _sigmas: dict = field(default_factory=dict, repr=False)

    default_steps = WAN_STEPS

    @property
    def size_multiple(self) -> int:
        """16 (``check_inputs``), or the VAE factor times the 2 x 2 patches where larger (32 for Wan 2.2's VAE of
        factor 16, whose other sizes the pipeline rounds down)."""
        return max(SIZE_MULTIPLE, 2 * self.vae_scale_factor)

    def denoiser(self, transformer=None):
        """The unguided flow-prediction Denoiser on ``NoiseSchedule.flow(T, shift)`` (:class:`WanNet`) of
        ``transformer`` (default the folder's)."""
        from ..denoiser import Denoiser
        transformer = self.transformer if transformer is None else transformer
        denoiser = Denoiser(WanNet(transformer, self.whole_timesteps, self.expand_timesteps), self.schedule,
                            "flow_prediction")
        denoiser.model = transformer
        return denoiser

    def guided_denoiser(self, grid, steps: int, scale: float, convention: str, null, guidance_scale_2=None):
        """The denoiser of a run on ``grid`` (``steps`` of the scheduler): CFG at ``scale`` in ``convention`` against
        the negative prompt's states ``null`` (None: unguided); a Wan 2.2 A14B folder's two experts
        (:class:`TwoExperts`), ``transformer_2`` guided at ``guidance_scale_2`` (default ``scale``), switched at the
        pipeline's step (:func:`expert_boundary`); ``guidance_scale_2`` on one expert: one line."""
        from ..guidance import ClassifierFreeGuidance
        if guidance_scale_2 is not None and self.transformer_2 is None:
            raise DiffkitError(f"guidance_scale_2={guidance_scale_2!r} is not allowed: it guides Wan 2.2 A14B's "
                               f"low-noise expert (transformer_2 with boundary_ratio), which this folder does not have")
        scale_2 = scale if guidance_scale_2 is None else guidance_scale_2  # the pipeline's default

        def guide(denoiser, s: float):
            return ClassifierFreeGuidance(denoiser, s, convention, null_context=null) if null is not None else denoiser
        denoiser = guide(self.denoiser(), scale)
        if self.transformer_2 is not None:
            boundary = self.boundary_ratio * self.schedule.num_timesteps  # the pipeline's boundary_timestep
            denoiser = TwoExperts(denoiser, guide(self.denoiser(self.transformer_2), scale_2),
                                  expert_boundary(grid, self.scheduler_timesteps(steps), boundary))
        return denoiser


def is_wan_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``WanPipeline``."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == WAN_PIPELINE


def wan_configs(directory: Path, pipeline: str, kind: str, required, classes: dict) -> tuple:
    """(model_index dict, {"transformer": config, "vae": config}) of a folder whose index names ``pipeline`` and whose
    ``required`` components are of ``classes`` (one line otherwise, naming ``kind``): a Wan folder's and ChronoEdit's
    first JSON checks."""
    from ..errors import read_json_object
    from .pixart import check_classes, named_index
    index = named_index(directory, (pipeline,), kind)
    check_classes(directory, index, required, kind, classes)
    return index, {part: read_json_object(directory / part / "config.json", f"{part} config")
                   for part in ("transformer", "vae")}


def wan_scheduler_config(directory: Path) -> dict:
    """The folder's scheduler config, one line where diffkit's samplers do not compute its step
    (:func:`.hidream.folder_sampler`)."""
    from ..errors import read_json_object
    from .hidream import folder_sampler
    sched = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    folder_sampler(sched)
    return sched


def check_wan_folder(directory) -> tuple:
    """(model_index dict, scheduler config) of a ``WanPipeline`` folder, checked from its JSON alone (module
    docstring); a one-line DiffkitError for what diffkit does not drive."""
    from ..errors import read_json_object
    directory = Path(directory)
    index, configs = wan_configs(directory, WAN_PIPELINE, "Wan", REQUIRED, WAN_CLASSES)
    experts = check_experts(directory, index)
    if index.get("expand_timesteps") not in (False, True, None):
        raise DiffkitError(f"{directory}'s model_index.json has expand_timesteps={index.get('expand_timesteps')!r}; "
                           f"allowed: true (Wan 2.2 TI2V-5B) or false")
    if experts:
        configs["transformer_2"] = read_json_object(directory / "transformer_2" / "config.json", "transformer_2 config")
    check_text_to_video_configs(directory, configs, ("transformer", "transformer_2")[:1 + experts])
    return index, wan_scheduler_config(directory)


def check_text_to_video_configs(directory, configs: dict, parts=("transformer",)) -> None:
    """One line unless ``configs`` ({part: config}) are a Wan text-to-video folder's: a Wan 2.1 VAE (factor 8) or a
    Wan 2.2 one (2 x 2 pixel patches, factor 16), each of ``parts`` (the transformer; Wan 2.2 A14B's two experts)
    of z_dim channels in and out, patches (1, 2, 2) and no CLIP image states (:func:`check_wan_folder`; Wan 2.2
    TI2V-5B's ``WanImageToVideoPipeline`` folder, :mod:`.wan_i2v`)."""
    from .flow_latents import check_part_configs
    z_dim, vae_patch = configs["vae"].get("z_dim", 16), configs["vae"].get("patch_size")
    if vae_patch not in (None, 2):
        raise DiffkitError(f"{directory}'s vae has patch_size={vae_patch!r}; allowed: null (Wan 2.1's VAE) or 2 (Wan "
                           f"2.2's)")
    check_part_configs(directory, configs, (
        ("vae", "scale_factor_spatial", 8, 8 * (vae_patch or 1), "the pipeline's latents of H / 8, with the Wan 2.2 "
                                                               "VAE's 2 x 2 patches H / 16"),
        *((part, key, default, allowed, why) for part in parts for key, default, allowed, why in (
            ("in_channels", 16, z_dim, "the VAE's z_dim"), ("out_channels", 16, z_dim, "the VAE's z_dim"),
            ("patch_size", [1, 2, 2], [1, 2, 2], "sizes of 16"),
            ("image_dim", None, None, "a text-to-video transformer, without CLIP image states")))))


def check_experts(directory, index: dict, expert: str = WAN_TRANSFORMER) -> bool:
    """True for a Wan 2.2 A14B folder (an ``expert`` (default ``WanTransformer3DModel``) ``transformer_2`` and a
    ``boundary_ratio`` in (0, 1)); False for one expert (a ``transformer_2`` without ``boundary_ratio`` the pipeline
    never calls); one line for a ``boundary_ratio`` without ``transformer_2`` (the pipeline's low-noise steps would
    call None) or out of range, and a ``transformer_2`` of another class."""
    from .sd3 import _entry
    directory = Path(directory)
    ratio, second = index.get("boundary_ratio"), _entry(index, "transformer_2")
    if second not in (None, expert):
        raise DiffkitError(f"{directory}'s transformer_2 is a {second!r}; allowed: {expert} or null")
    if ratio is None:
        return False
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1 or second is None:
        raise DiffkitError(f"{directory}'s model_index.json has boundary_ratio={ratio!r} with transformer_2="
                           f"{second!r}; allowed: a number in (0, 1) with a {expert} transformer_2 (Wan 2.2 "
                           f"A14B's two experts), or null")
    if not (directory / "transformer_2").is_dir():
        raise DiffkitError(f"{directory} has no transformer_2 folder, which its model_index.json names")
    return True


def load_wan_parts(directory: Path, index: dict, sched: dict, transformer_cls, device, dtype, progress: bool) -> tuple:
    """(parts, flow schedule, torch.device) of a checked Wan folder: its transformer (``transformer_cls``), Wan VAE,
    UMT5 and tokenizer (:func:`.flow_latents.load_flow_parts`) frozen on ``device``, and ``NoiseSchedule.flow(T,
    shift)`` of its scheduler."""
    from ..schedule import NoiseSchedule
    from .flow_latents import frozen_on, load_flow_parts
    from .sana import flow_shift_of
    from .schedulers import train_timesteps
    diffusers = require("diffusers")
    schedule = NoiseSchedule.flow(train_timesteps(sched), flow_shift_of(sched))
    parts = load_flow_parts(directory, index, transformer_cls, {"": "UMT5EncoderModel"}, dtype, progress,
                            vae_cls=diffusers.AutoencoderKLWan)
    return parts, schedule, frozen_on(parts, device)


def load_second_expert(directory: Path, index: dict, device, dtype, progress: bool,
                       expert: str = WAN_TRANSFORMER) -> tuple:
    """(``transformer_2``, boundary_ratio) of a checked Wan 2.2 A14B folder (:func:`check_experts`; the diffusers
    class ``expert``), frozen on ``device``; (None, None) for one expert."""
    if not check_experts(directory, index, expert):
        return None, None
    from . import from_pretrained, library_progress_bars
    diffusers = require("diffusers")
    with library_progress_bars(progress):
        second = from_pretrained(getattr(diffusers, expert), directory / "transformer_2",
                                 local_files_only=True, torch_dtype=dtype, use_safetensors=True)
    return second.to(device).eval().requires_grad_(False), float(index["boundary_ratio"])


def load_clip(directory: Path, device, dtype, progress: bool) -> tuple:
    """(CLIPVisionModel frozen on ``device``, CLIPImageProcessor) of an image-to-video folder's ``image_encoder`` /
    ``image_processor``."""
    from . import from_pretrained, library_progress_bars
    transformers = require("transformers")
    with library_progress_bars(progress):
        encoder = from_pretrained(transformers.CLIPVisionModel, directory / "image_encoder", local_files_only=True,
                                  torch_dtype=dtype, use_safetensors=True)
        processor = from_pretrained(transformers.CLIPImageProcessor, directory / "image_processor",
                                    local_files_only=True)
    return encoder.to(device).eval().requires_grad_(False), processor


def check_widths(directory, widths) -> None:
    """One line for the first (have, need, what) of ``widths`` where the transformer's config ``what`` is not its
    encoder's width."""
    for have, need, what in widths:
        if have != need:
            raise DiffkitError(f"{directory}: the transformer's {what}={have} does not fit its encoder's width {need}")


def load_wan(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32, progress: bool = True,
             lora=None) -> Wan:
    """Load a ``WanPipeline`` folder (never downloads, never unpickles), checked first (:func:`check_wan_folder`).
    ``lora``: LoRA files (paths or (path, scale) pairs) in the layouts ``WanLoraLoaderMixin`` loads (diffusers / PEFT,
    Wan's ``diffusion_model.`` and musubi's ``lora_unet_`` names through diffusers' converters), read and checked
    first (:func:`.chronoedit_lora.read_wan_loras`), fused into ``transformer`` as the pipeline's
    ``load_lora_weights`` + ``fuse_lora(lora_scale=scale)`` (:func:`.sd_lora.merge_sd_loras`; a Wan 2.2 A14B
    folder's ``transformer_2`` is left alone, as ``load_lora_weights`` leaves it without ``load_into_transformer_2``).
    """
    from .chronoedit_lora import read_wan_loras
    from .sd_lora import merge_sd_loras
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_wan_folder(directory)
    loras = read_wan_loras(lora, "Wan", WAN_PIPELINE) if lora else []
    parts, schedule, device = load_wan_parts(directory, index, sched, diffusers.WanTransformer3DModel, device, dtype,
                                             progress)
    second, ratio = load_second_expert(directory, index, device, dtype, progress)
    model = Wan(**parts, scheduler_config=sched, schedule=schedule, device=device, dtype=dtype, transformer_2=second,
                boundary_ratio=ratio, expand_timesteps=bool(index.get("expand_timesteps")))
    check_widths(directory, [(t.config.text_dim, model.text_encoder.config.d_model, "text_dim")
                             for t in (model.transformer, second) if t is not None])
    merge_sd_loras(model, loras)
    return model


def pipeline_guidance(guidance_scale, convention: str, negative_prompt, default: float) -> tuple:
    """(scale, convention, CFG on?) of a Wan pipeline's ``guidance_scale`` (None: ``default`` in diffusers'
    convention), :func:`.auraflow.guided`'s check of ``negative_prompt`` included."""
    from .auraflow import guided
    scale = default if guidance_scale is None else guidance_scale
    convention = "diffusers" if guidance_scale is None else convention
    return scale, convention, guided(scale, convention, negative_prompt)


def check_frames(num_frames, default: int = WAN_FRAMES) -> int:
    """The pipeline's frame count: ``num_frames`` (default 81) of the form 4 k + 1 (the Wan VAE's causal frames;
    the pipeline would round others down)."""
    frames = default if num_frames is None else num_frames
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1 or frames % 4 != 1:
        raise DiffkitError(f"num_frames={frames!r} is not allowed; give 4 k + 1 frames (1, 5, 9, ..., the Wan VAE's "
                           f"1 + 4 k frames; the pipeline would round it down)")
    return frames


def text_to_video(model: Wan, prompts: Union[str, Sequence[str]], *, negative_prompt=None,
                  guidance_scale: Optional[float] = None, guidance_scale_2: Optional[float] = None,
                  convention: str = "diffusers", steps: Optional[int] = None,
                  sampler: Optional[str] = None, num_frames: Optional[int] = None, height: Optional[int] = None,
                  width: Optional[int] = None, seed: Optional[int] = 0, latents: Optional[torch.Tensor] = None,
                  output_range: str = "-1,1", return_latents: bool = False, progress: bool = False,
                  **options) -> torch.Tensor:
    """Videos (B, T, 3, H, W) of ``prompts`` (one string, or a list: one video each) as ``WanPipeline`` (module
    docstring).

    guidance_scale: in ``convention`` (default s = 5, diffusers'), against ``negative_prompt`` (default ""; one, or
    one per prompt); guidance_scale_2: a Wan 2.2 A14B folder's low-noise expert's (default ``guidance_scale``; CFG
    on or off by ``guidance_scale`` alone, as the pipeline's). steps: the scheduler's (default 50); sampler: None for
    the scheduler's own step (:func:`.hidream.folder_sampler`), or any diffkit sampler on its grid (``options``: its
    options). num_frames (default 81, 4 k + 1), height x width (default 480 x 832, multiples of 16; of 32 with Wan
    2.2's VAE). latents: z at s = 1 (B, C, F, h, w)
    (the pipeline's ``latents``), default N(0, I) from per-video ``seed + i``. Returns frames in ``output_range``
    ("-1,1" or "0,1"), or with ``return_latents`` the final latents (B, C, F, h, w)."""
    from ..errors import check_choice
    from .stable_diffusion import OUTPUT_RANGES, negative_prompts, prompt_list
    check_choice("output_range", output_range, OUTPUT_RANGES)
    prompts = prompt_list(prompts)
    scale, convention, cfg = pipeline_guidance(guidance_scale, convention, negative_prompt, WAN_GUIDANCE)
    frames = check_frames(num_frames)
    height, width = WAN_HEIGHT if height is None else height, WAN_WIDTH if width is None else width
    model.check_size(height, width)
    shape = model.latent_video_shape(len(prompts), frames, height, width)
    steps, grid, sampler, options, latents = model.start_latents(steps, sampler, options, shape, latents, seed)
    cond = {"context": model.encode_prompts(prompts)}
    null = model.encode_prompts(negative_prompts(negative_prompt, len(prompts))) if cfg else None
    denoiser = model.guided_denoiser(grid, steps, scale, convention, null, guidance_scale_2)
    z = model.sample_latents(denoiser, cond, grid, sampler, latents, seed, progress, options)
    return model.output_videos(z, output_range, return_latents)


__all__ = ["Wan", "WanFolder", "WanNet", "TwoExperts", "load_wan", "is_wan_folder", "check_wan_folder", "check_frames",
           "text_to_video", "WAN_PIPELINE", "WAN_GUIDANCE", "WAN_STEPS", "WAN_FRAMES", "WAN_FPS"]
