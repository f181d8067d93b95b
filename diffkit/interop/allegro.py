"""An Allegro diffusers folder (``AllegroPipeline``, diffusers 0.42.1): text-to-video with rhymes-ai's Allegro,
sampled with the folder's scheduler step or any diffkit sampler.

Allegro (Zhou et al. 2024, "Allegro: Open the Black Box of Commercial-Level Video Generation Model", Sec. 4) is a
PixArt-style video transformer (``AllegroTransformer3DModel``: full 3-D attention over the latent video's patches with
3-D RoPE, cross-attention to T5 states, adaLN-single) on the latents of a 3-D VAE (``AutoencoderKLAllegro``: spatial
factor 8, temporal factor 4). diffkit drives it as a PixArt folder (:mod:`.pixart`: its T5 prompt encoding, mask,
guidance, scheduler grid and step mapping), as ``AllegroPipeline.__call__`` does:

* prompts (``encode_prompt`` with ``clean_caption=False``: without bs4 / ftfy the pipeline's default ``True`` falls
  back to it, :data:`.pixart.CLEAN_CAPTION`): PixArt's T5 states at 512 tokens under the tokenizer's mask
  (:meth:`.pixart.PixArt.encode_prompts`), the negative prompt (default "") at the same length; both masks go to the
  transformer (``encoder_attention_mask``).
* guidance: classifier-free guidance eps_u + s (eps_c - eps_u) (Ho & Salimans 2022, eq. 6) for s > 1, default 7.5;
  s <= 1 one unguided call (a negative prompt then refused, :func:`.auraflow.guided`).
* the grid and its step: the folder's scheduler after ``set_timesteps(steps)`` (default 100) as diffkit's grid, the
  step the sampler computing it (:func:`folder_sampler`: the released folder's ``EulerAncestralDiscreteScheduler`` ->
  diffkit's ``euler-ancestral``, k-diffusion's sample_euler_ancestral with eta = 1: an Euler step to sigma_down, then
  noise of std sigma_up; DDIM, Euler, DPM-Solver as :func:`.pixart.folder_sampler`), or any diffkit sampler on that
  grid. Video i's noise (z_T, then each ancestral step's) comes from its own generator seeded seed + i, drawn in the
  pipeline's order, so with ``generator=[Generator().manual_seed(seed + i) ...]`` the pipeline draws the same noise.
  The start z_T = ``init_noise_sigma`` n is diffkit's state n times :meth:`.animatediff.AnimateDiff.start_scale`.
* latents: (B, C, F', H / 8, W / 8) with F' = ceil(F / 4) for an even frame count F, ceil((F - 1) / 4) + 1 for an
  odd one (``prepare_latents``); the transformer's 3-D RoPE from the pipeline's own
  ``_prepare_rotary_positional_embeddings`` for that grid (:meth:`Allegro.rope`).
* decoding: ``AutoencoderKLAllegro`` decodes only tiled (``enable_tiling()``, as the pipeline's example does): tiles
  of 24 frames x ``sample_size``^2 pixels every (24 - 8, sample_size - 120, sample_size - 80) (the VAE's
  ``kernel`` / ``stride``; :func:`vae_tiles`), one video at a time, x = D(z / scaling_factor), then cut to F frames
  and H x W; videos (B, T, C, H, W) in [-1, 1] (clamped), or in [0, 1] as ``output_type="pt"``. The tiles cover the
  latent video only where each side is a kernel plus whole strides; elsewhere the pipeline leaves the uncovered
  frames and pixels black (zero), so diffkit refuses those sizes (:func:`video_geometry`).

Defaults (the transformer's sample size): 88 frames of 720 x 1280 (the released folder's 22 x 90 x 160 latents),
written at 15 fps (the pipeline's example exports at ``fps=15``). Refused in one line before any weight is read
(:func:`check_allegro_folder`, :func:`video_geometry`): another pipeline class, a missing component, parts of other
classes, a transformer with ``patch_size_t`` != 1 or whose output is not its input's channels, a scheduler with
no diffkit step (give a sampler), a size or frame count the pipeline rejects or the VAE's tiles do not cover.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, read_json_object
from . import model_dtype, require
from .pixart import PixArt

ALLEGRO_PIPELINE = "AllegroPipeline"
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
ALLEGRO_GUIDANCE = 7.5  # AllegroPipeline.__call__'s guidance_scale
ALLEGRO_STEPS = 100  # its num_inference_steps
ALLEGRO_TOKENS = 512  # its max_sequence_length
ALLEGRO_FPS = 15.0  # its example's export_to_video(video, fps=15)
EULER_ANCESTRAL = "EulerAncestralDiscreteScheduler"
TILE_FRAMES = 24  # AutoencoderKLAllegro.__init__'s sample_frames: a tile's frames
TILE_OVERLAP = (8, 120, 80)  # its tile_overlap_t, _h, _w (pixels)


def vae_tiles(vae_config: dict) -> tuple:
    """((frames, height, width) of a tile, (frames, height, width) of its stride), in output pixels, of an
    ``AutoencoderKLAllegro`` with this config: as its ``__init__`` sets ``kernel`` and ``stride``."""
    side = int(vae_config.get("sample_size") or 320)
    kernel = (TILE_FRAMES, side, side)
    return kernel, tuple(k - o for k, o in zip(kernel, TILE_OVERLAP))


def latent_frames(num_frames: int, temporal: int) -> int:
    """``prepare_latents``' latent frame count: ceil(F / r) for an even F, ceil((F - 1) / r) + 1 for an odd one."""
    if num_frames % 2 == 0:
        return math.ceil(num_frames / temporal)
    return math.ceil((num_frames - 1) / temporal) + 1


def video_geometry(transformer_config: dict, vae_config: dict, num_frames=None, height=None, width=None) -> tuple:
    """((F, H, W), (F', h, w)): the video's frames and size (defaults the transformer's sample size x the VAE's
    factors, as the pipeline) and its latents' (:func:`latent_frames`), from the configs alone; a one-line
    DiffkitError for a frame count or size the pipeline refuses (H, W multiples of 8), that is not whole patches, or
    whose latents the VAE's tiles do not cover (:func:`vae_tiles`; the pipeline leaves the rest black)."""
    f = 2 ** (len(vae_config.get("block_out_channels") or [0] * 4) - 1)
    r = int(vae_config.get("temporal_compression_ratio") or 4)
    patch = int(transformer_config.get("patch_size") or 2)
    sizes = {"num_frames": (num_frames, int(transformer_config.get("sample_frames") or 22) * r, 1),
             "height": (height, int(transformer_config.get("sample_height") or 90) * f, math.lcm(8, f * patch)),
             "width": (width, int(transformer_config.get("sample_width") or 160) * f, math.lcm(8, f * patch))}
    values = []
    for name, (value, default, multiple) in sizes.items():
        value = default if value is None else value
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % multiple:
            raise DiffkitError(f"{name}={value!r} is not allowed; give a positive multiple of {multiple}"
                               + ("" if name == "num_frames" else f" (the pipeline's 8, the VAE factor {f} x the "
                                                                  f"patch size {patch})"))
        values.append(value)
    frames, h, w = values
    latents = (latent_frames(frames, r), h // f, w // f)
    kernel, stride = vae_tiles(vae_config)
    for name, value, size, k, s, factor in zip(("num_frames", "height", "width"), values, latents, kernel, stride,
                                               (r, f, f)):
        lk, ls = k // factor, s // factor  # tiled_decode's latent kernel and stride
        if ls <= 0 or size < lk or (size - lk) % ls:
            unit = "latent frames" if name == "num_frames" else "latent pixels"
            raise DiffkitError(f"{name}={value} is not allowed for this VAE: its {size} {unit} are not covered by "
                               f"its decoding tiles of {lk} every {ls} (the pipeline leaves the rest black); give "
                               f"{name} whose latents are {lk} + {ls} k")
    return (frames, h, w), latents


class AllegroNet(torch.nn.Module):
    """``net(x, t, context, mask)`` over an ``AllegroTransformer3DModel`` on latent videos x (B, C, F, h, w):
    ``context`` -> ``encoder_hidden_states``, ``mask`` -> ``encoder_attention_mask``, ``t`` (float32 training
    timesteps) -> ``timestep``, ``rope(F, h, w)`` -> ``image_rotary_emb``; the noise in x's dtype."""

    def __init__(self, transformer, rope):
        super().__init__()
        self.model, self.rope = transformer, rope

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, mask: torch.Tensor = None):
        if context is None or mask is None or x.ndim != 5:
            raise DiffkitError(f"an Allegro transformer takes latent videos (B, C, F, h, w) and cond {{'context', "
                               f"'mask'}}; got shape {tuple(x.shape)}")
        dtype = model_dtype(self.model)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        out = self.model(x.to(dtype), encoder_hidden_states=context.to(dtype), encoder_attention_mask=mask,
                         timestep=t, image_rotary_emb=self.rope(*x.shape[2:]), return_dict=False)[0]
        return out.to(x.dtype)


@dataclass
class Allegro(PixArt):
    """The loaded components of an ``AllegroPipeline`` folder (:func:`load_allegro`): PixArt's, the transformer an
    ``AllegroTransformer3DModel``, the VAE an ``AutoencoderKLAllegro`` with tiling on."""

    _ropes: dict = field(default_factory=dict, repr=False)

    default_guidance_scale = ALLEGRO_GUIDANCE
    default_steps = ALLEGRO_STEPS

    @property
    def max_sequence_length(self) -> int:
        return ALLEGRO_TOKENS

    def folder_sampler(self) -> tuple:
        return folder_sampler(self.scheduler_config)

    def rope(self, frames: int, h: int, w: int):
        """The pipeline's 3-D rotary embeddings for latents of F x h x w (``_prepare_rotary_positional_embeddings``
        on a stand-in pipeline holding the transformer)."""
        if (frames, h, w) not in self._ropes:
            from types import SimpleNamespace
            require("diffusers")
            from diffusers import AllegroPipeline
            f = self.vae_scale_factor
            shim = SimpleNamespace(transformer=self.transformer, vae_scale_factor_spatial=f)
            self._ropes[frames, h, w] = AllegroPipeline._prepare_rotary_positional_embeddings(
                shim, 1, h * f, w * f, frames, self.device)
        return self._ropes[frames, h, w]

    @property
    def denoiser(self):
        """The unguided :class:`~diffkit.denoiser.Denoiser` (cond: ``context``, ``mask``) on the scheduler's schedule
        and prediction type."""
        if self._denoiser is None:
            from ..denoiser import Denoiser
            self._denoiser = Denoiser(AllegroNet(self.transformer, self.rope), self.schedule, self.prediction_type)
            self._denoiser.model = self.transformer
        return self._denoiser

    def geometry(self, num_frames=None, height=None, width=None) -> tuple:
        """:func:`video_geometry` of the loaded configs."""
        return video_geometry(dict(self.transformer.config), dict(self.vae.config), num_frames, height, width)

    def decode_videos(self, latents: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
        """Videos (B, T, C, H, W) in [-1, 1] (not clamped) of latent videos (B, C, F', h, w): each video decoded alone
        by the tiled VAE (``tiled_decode`` takes one at a time), x = D(z / scaling_factor), cut to ``frames`` x
        ``height`` x ``width`` (``decode_latents`` and the pipeline's crop)."""
        videos = []
        with torch.no_grad():
            for z in latents.split(1):
                z = z.to(device=self.device, dtype=self.vae.dtype) / self.scaling_factor
                videos.append(self.vae.decode(z).sample[:, :frames, :, :height, :width].float())
        return torch.cat(videos)


def folder_sampler(config: dict) -> tuple:
    """(diffkit sampler, options) computing the step of the folder's scheduler (``config``: its JSON):
    ``EulerAncestralDiscreteScheduler`` (the released folder's) -> ``euler-ancestral`` (eta = 1; not with
    ``rescale_betas_zero_snr``, whose infinite first sigma diffusers clips); the others as
    :func:`.pixart.folder_sampler`."""
    from .pixart import folder_sampler as pixart_sampler
    if config.get("_class_name") != EULER_ANCESTRAL:
        return pixart_sampler(config)
    if config.get("rescale_betas_zero_snr", False):
        raise DiffkitError(f"the folder's {EULER_ANCESTRAL} has rescale_betas_zero_snr=True (diffusers clips its "
                           f"infinite first sigma), which diffkit's euler-ancestral does not compute (allowed: "
                           f"False); give a diffkit sampler (--sampler NAME)")
    return "euler-ancestral", {}


def is_allegro_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``AllegroPipeline`` (``diffkit video`` dispatches)."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == ALLEGRO_PIPELINE


def check_allegro_folder(directory) -> tuple:
    """(model_index dict, transformer config, VAE config, scheduler config) of an ``AllegroPipeline`` folder, checked
    from its JSON alone (module docstring); a one-line DiffkitError for what diffkit does not drive."""
    from .pixart import check_classes, named_index
    directory = Path(directory)
    index = named_index(directory, (ALLEGRO_PIPELINE,), "Allegro")
    check_classes(directory, index, REQUIRED, "Allegro", {
        "transformer": ("AllegroTransformer3DModel",), "vae": ("AutoencoderKLAllegro",),
        "text_encoder": ("T5EncoderModel",)})
    config = read_json_object(directory / "transformer" / "config.json", "transformer config")
    for key, want in (("patch_size_t", 1), ("out_channels", int(config.get("in_channels") or 4))):
        value = config.get(key, want)
        if value != want:
            raise DiffkitError(f"{directory}'s transformer has {key}={value!r}; allowed: {want} (what "
                               f"AllegroPipeline's latents and step take)")
    vae = read_json_object(directory / "vae" / "config.json", "vae config")
    sched = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    return index, config, vae, sched


def load_allegro(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                 progress: bool = True, lora=None) -> Allegro:
    """Load an ``AllegroPipeline`` folder (never downloads, never unpickles), checked first
    (:func:`check_allegro_folder`), its VAE's tiling on (:func:`vae_tiles`). ``lora``: not taken (the pipeline has
    no LoRA loader); given, one line."""
    from .flow_latents import frozen_on, load_flow_parts
    from .schedulers import schedule_from_diffusers
    if lora:
        raise DiffkitError("LoRA files are not supported on an Allegro folder (AllegroPipeline has no LoRA loader)")
    diffusers = require("diffusers")
    directory = Path(directory)
    index, _, vae_config, sched = check_allegro_folder(directory)
    schedule, prediction_type = schedule_from_diffusers(sched)
    if prediction_type == "flow_prediction":
        raise DiffkitError(f"{directory}'s scheduler is a flow-matching one; AllegroPipeline's steps are for a DDPM "
                           f"schedule")
    parts = load_flow_parts(directory, index, diffusers.AllegroTransformer3DModel, {"": "T5EncoderModel"}, dtype,
                            progress, vae_cls=diffusers.AutoencoderKLAllegro)
    device = frozen_on(parts, device)
    parts["vae"].enable_tiling()
    parts["vae"].kernel, parts["vae"].stride = vae_tiles(vae_config)
    return Allegro(pipeline=ALLEGRO_PIPELINE, **parts, schedule=schedule, prediction_type=prediction_type,
                   scheduler_config=sched, device=device, dtype=dtype)


def text_to_video(model: Allegro, prompts: Union[str, Sequence[str]], *, negative_prompt=None,
                  guidance_scale: Optional[float] = None, convention: str = "diffusers", steps: Optional[int] = None,
                  sampler: Optional[str] = None, num_frames: Optional[int] = None, height: Optional[int] = None,
                  width: Optional[int] = None, seed: Optional[int] = 0, latents: Optional[torch.Tensor] = None,
                  output_range: str = "-1,1", return_latents: bool = False, progress: bool = False,
                  **options) -> torch.Tensor:
    """Videos (B, T, C, H, W) of ``prompts`` as ``AllegroPipeline`` (module docstring).

    guidance_scale: in ``convention`` (default s = 7.5, diffusers'), against ``negative_prompt`` (default ""); s <= 1
    unguided. steps: the scheduler's (default 100); sampler: None for the scheduler's own step
    (:func:`folder_sampler`), or any diffkit sampler on its grid (``options``: its keyword arguments). num_frames,
    height, width: default the transformer's sample size (88 frames of 720 x 1280 for the released folder;
    :func:`video_geometry`). latents: z_T (B, C, F', h, w) (the pipeline's ``latents``), default N(0, I) from
    per-video ``seed + i``, whose generators then draw the steps' noise. Returns videos in ``output_range`` ("-1,1" or
    "0,1": ``output_type="pt"``), or with ``return_latents`` the final latents (B, C, F', h, w)."""
    from ..errors import check_choice
    from ..noise import generators_from_seed, randn
    from ..sampling import sample
    from .animatediff import AnimateDiff
    from .auraflow import guided
    from .stable_diffusion import OUTPUT_RANGES, prompt_list
    check_choice("output_range", output_range, OUTPUT_RANGES)
    prompts = prompt_list(prompts)
    (frames, h, w), latent_size = model.geometry(num_frames, height, width)
    scale = ALLEGRO_GUIDANCE if guidance_scale is None else guidance_scale
    convention = "diffusers" if guidance_scale is None else convention
    cfg = guided(scale, convention, negative_prompt)
    shape = (len(prompts), int(model.transformer.config.in_channels), *latent_size)
    if latents is not None and tuple(latents.shape) != shape:
        raise DiffkitError(f"latents of shape {tuple(latents.shape)} are not allowed; expected {shape}")
    steps = ALLEGRO_STEPS if steps is None else steps
    grid = model.scheduler_grid(steps)
    if sampler is None:
        sampler, own = model.folder_sampler()
        options = {**own, **options}
    if cfg:
        denoiser, cond = model.prompt_guidance(prompts, negative_prompt, scale, convention, size=(h, w))
    else:
        context, mask = model.encode_prompts(prompts)
        denoiser, cond = model.denoiser, {"context": context, "mask": mask}
    generators = None if seed is None else generators_from_seed(seed, len(prompts))  # z_T's, then the steps' noise
    if latents is None:
        latents = randn(shape, generators, device=model.device)
    start = AnimateDiff.start_scale(model, steps)  # init_noise_sigma, as a VP state
    z = sample(denoiser, latents.to(device=model.device, dtype=model.dtype) * start, sampler, grid=grid,
               generator=generators, cond=cond, progress=progress, device=model.device, dtype=model.dtype,
               **options)
    if return_latents:
        return z
    videos = model.decode_videos(z, frames, h, w)
    return (videos / 2 + 0.5).clamp(0, 1) if output_range == "0,1" else videos.clamp(-1, 1)


__all__ = ["Allegro", "AllegroNet", "load_allegro", "is_allegro_folder", "check_allegro_folder", "folder_sampler",
           "video_geometry", "vae_tiles", "latent_frames", "text_to_video", "ALLEGRO_PIPELINE", "ALLEGRO_GUIDANCE",
           "ALLEGRO_STEPS", "ALLEGRO_FPS"]
