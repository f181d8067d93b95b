"""A Latte diffusers folder (``LattePipeline``, diffusers 0.42.1): text-to-video with a latent video transformer on a
PixArt-α-style T5 and DDPM schedule, sampled with any diffkit sampler.

Latte (Ma et al. 2024, "Latte: Latent Diffusion Transformer for Video Generation", TMLR) patchifies the frames of a
latent video with a 2-D patch embedding and alternates spatial transformer blocks (self-attention within a frame,
cross-attention to the text) with temporal ones (self-attention along the frames at each patch), its Sec. 3.2
"variant 1" (``LatteTransformer3DModel``); it keeps PixArt-α's adaLN-single conditioning and learned variance
(Sec. 3.3; the transformer returns 2C channels). diffkit drives it as a PixArt-α folder (:mod:`.pixart`: its T5
prompt encoding, learned-variance split, scheduler mapping and guidance), as ``LattePipeline.__call__`` does:

* prompts (``encode_prompt`` with ``clean_caption=False`` and the default ``mask_feature=True``): PixArt's T5 states
  at 120 tokens (:meth:`.pixart.PixArt.encode_prompts`), the negative prompt (default "") the same; the pipeline's
  ``mask_text_embeddings`` then (:meth:`Latte.prompt_states`): for one prompt, both sides cut to the prompt's
  tokens (its mask's sum); for several, the prompts' states zeroed past their tokens (the negative ones kept whole).
  The transformer gets no attention mask. ``clean_caption=True`` (the pipeline's default) needs bs4 and ftfy, and
  without them the pipeline falls back to ``False``: diffkit does what it does then (:data:`.pixart.CLEAN_CAPTION`).
* guidance: classifier-free guidance eps_u + s (eps_c - eps_u) (Ho & Salimans 2022, eq. 6) on the first C channels
  (the variance channels dropped, as there), s > 1, default 7.5; s <= 1: one unguided call.
* the grid and its step: the folder's scheduler after ``set_timesteps(steps)`` (default 50) as diffkit's grid and
  the sampler computing its step (:func:`.pixart.folder_sampler`: DDIM, Latte-1's, -> ``ddim``; DPM-Solver
  multistep -> ``dpm-solver++-2m`` ...), or any diffkit sampler on that grid. A scheduler config with a learned
  ``variance_type`` (the pipeline then keeps all 2C channels for the step) is refused. The start z_T =
  ``init_noise_sigma`` n is diffkit's state n times :meth:`.animatediff.AnimateDiff.start_scale` (1 but for Euler on
  ``trailing`` / ``linspace`` timesteps).
* frames and size: the transformer's ``video_length`` (16, the pipeline's default, for Latte-1: its temporal position
  table has that many rows, so it takes that count or 1, a text-to-image frame), 512 x 512 (multiples of the VAE
  factor x the patch size).
* ``enable_temporal_attentions=False``: the pipeline's switch that skips every temporal block (:class:`LatteNet`).
* decoding: frame by frame, ``decode_chunk_size`` (14) frames at a time, x = D(z / scaling_factor)
  (:func:`.animatediff.decode_frames`); videos (B, T, C, H, W) in [-1, 1] (clamped), or in [0, 1] as
  ``output_type="pt"``.

Refused in one line before any weight is read (:func:`check_latte_folder`): another pipeline class, a missing
component, a transformer, VAE or text encoder of another class, a transformer whose output channels are neither C nor
2C, a learned-variance scheduler config.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, read_json_object
from . import model_dtype, require
from .pixart import PixArt

LATTE_PIPELINE = "LattePipeline"
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
LATTE_GUIDANCE = 7.5  # LattePipeline.__call__'s guidance_scale
LATTE_STEPS = 50  # its num_inference_steps
LATTE_FRAMES = 16  # its video_length
LATTE_SIDE = 512  # its height and width
LATTE_TOKENS = 120  # encode_prompt's max_length
DECODE_CHUNK_SIZE = 14  # its decode_chunk_size


class LatteNet(torch.nn.Module):
    """``net(x, t, context)`` over a ``LatteTransformer3DModel`` on latent videos x (B, C, F, h, w): ``context`` ->
    ``encoder_hidden_states`` (no attention mask, as the pipeline), ``t`` (float32 training timesteps) ->
    ``timestep``, ``temporal`` -> ``enable_temporal_attentions``; the output (2C channels with a learned variance) in
    x's dtype."""

    def __init__(self, transformer, temporal: bool = True):
        super().__init__()
        self.model, self.temporal = transformer, temporal

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None):
        if context is None or x.ndim != 5:
            raise DiffkitError(f"a Latte transformer takes latent videos (B, C, F, h, w) and cond {{'context'}}; got "
                               f"shape {tuple(x.shape)}")
        dtype = model_dtype(self.model)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        out = self.model(x.to(dtype), encoder_hidden_states=context.to(dtype), timestep=t,
                         enable_temporal_attentions=self.temporal, return_dict=False)[0]
        return out.to(x.dtype)


@dataclass
class Latte(PixArt):
    """The loaded components of a ``LattePipeline`` folder (:func:`load_latte`): PixArt-α's, the transformer a
    ``LatteTransformer3DModel``."""

    default_guidance_scale = LATTE_GUIDANCE
    default_steps = LATTE_STEPS

    @property
    def max_sequence_length(self) -> int:
        return LATTE_TOKENS

    @property
    def default_side(self) -> int:
        """The pipeline's default height and width (512, whatever the transformer's sample size)."""
        return LATTE_SIDE

    @property
    def video_length(self) -> int:
        """The transformer's ``video_length``: the rows of its temporal position table."""
        return int(self.transformer.config.video_length)

    def video_denoiser(self, temporal: bool = True):
        """The unguided :class:`~diffkit.denoiser.Denoiser` (cond: ``context``) on the scheduler's schedule and
        prediction type, with the learned variance of a 2C-channel transformer; ``temporal``: the temporal
        blocks run (the pipeline's ``enable_temporal_attentions``)."""
        if temporal and self._denoiser is not None:
            return self._denoiser
        from ..denoiser import Denoiser
        denoiser = Denoiser(LatteNet(self.transformer, temporal), self.schedule, self.prediction_type,
                            learned_variance=self.learned_variance)
        denoiser.model = self.transformer
        if temporal:
            self._denoiser = denoiser
        return denoiser

    @property
    def denoiser(self):
        return self.video_denoiser()

    def prompt_states(self, prompts: Sequence[str], negative_prompt=None, guidance: bool = True) -> tuple:
        """(context, null context or None) of ``prompts`` as ``LattePipeline.encode_prompt`` with ``mask_feature``
        (module docstring): T5 states at 120 tokens; one prompt: both cut to its tokens; several: the prompts'
        states times their masks, the negative ones whole."""
        from .stable_diffusion import negative_prompts
        context, mask = self.encode_prompts(prompts, LATTE_TOKENS)
        null = None
        if guidance:
            null = self.encode_prompts(negative_prompts(negative_prompt, context.shape[0]), LATTE_TOKENS)[0]
        if context.shape[0] == 1:  # mask_text_embeddings: keep_index = mask.sum()
            keep = int(mask.sum())
            return context[:, :keep], None if null is None else null[:, :keep]
        return context * mask[:, :, None].to(context.dtype), null


def is_latte_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``LattePipeline`` (``diffkit video`` dispatches)."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == LATTE_PIPELINE


def check_latte_folder(directory) -> tuple:
    """(model_index dict, transformer config, scheduler config) of a ``LattePipeline`` folder, checked from its JSON
    alone (module docstring); a one-line DiffkitError for what diffkit does not drive."""
    from .pixart import check_classes, named_index
    directory = Path(directory)
    index = named_index(directory, (LATTE_PIPELINE,), "Latte")
    check_classes(directory, index, REQUIRED, "Latte", {
        "transformer": ("LatteTransformer3DModel",), "vae": ("AutoencoderKL",), "text_encoder": ("T5EncoderModel",)})
    config = read_json_object(directory / "transformer" / "config.json", "transformer config")
    c_in = int(config.get("in_channels") or 4)
    c_out = config.get("out_channels")
    c_out = c_in if c_out is None else int(c_out)
    if c_out not in (c_in, 2 * c_in):
        raise DiffkitError(f"{directory}'s transformer has out_channels={c_out} for in_channels={c_in}; allowed: "
                           f"{c_in} or {2 * c_in} (the noise, then a learned variance the pipeline drops)")
    sched = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    if sched.get("variance_type") in ("learned", "learned_range"):
        raise DiffkitError(f"{directory}'s scheduler has variance_type={sched['variance_type']!r}, for which "
                           f"LattePipeline steps with the learned variance channels; allowed: a fixed variance type")
    return index, config, sched


def load_latte(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
               progress: bool = True, lora=None) -> Latte:
    """Load a ``LattePipeline`` folder (never downloads, never unpickles), checked first (:func:`check_latte_folder`).
    ``lora``: not taken (``LattePipeline`` has no LoRA loader); given, one line."""
    from .flow_latents import frozen_on, load_flow_parts
    from .schedulers import schedule_from_diffusers
    if lora:
        raise DiffkitError("LoRA files are not supported on a Latte folder (LattePipeline has no LoRA loader)")
    diffusers = require("diffusers")
    directory = Path(directory)
    index, _, sched = check_latte_folder(directory)
    schedule, prediction_type = schedule_from_diffusers(sched)
    if prediction_type == "flow_prediction":
        raise DiffkitError(f"{directory}'s scheduler is a flow-matching one; LattePipeline's steps are for a DDPM "
                           f"schedule")
    parts = load_flow_parts(directory, index, diffusers.LatteTransformer3DModel, {"": "T5EncoderModel"}, dtype,
                            progress)
    device = frozen_on(parts, device)
    return Latte(pipeline=LATTE_PIPELINE, **parts, schedule=schedule, prediction_type=prediction_type,
                 scheduler_config=sched, device=device, dtype=dtype)


def check_frames(model_or_length, num_frames) -> int:
    """``num_frames`` (default the transformer's ``video_length``: an int, or the loaded :class:`Latte`; Latte-1's
    is the pipeline's 16), one line unless that or 1."""
    length = model_or_length if isinstance(model_or_length, int) else model_or_length.video_length
    frames = length if num_frames is None else num_frames
    if isinstance(frames, bool) or not isinstance(frames, int) or frames not in (1, length):
        raise DiffkitError(f"num_frames={frames!r} is not allowed; give {length} (the transformer's video_length: "
                           f"its temporal position table) or 1 (one frame)")
    return frames


def text_to_video(model: Latte, prompts: Union[str, Sequence[str]], *, negative_prompt=None,
                  guidance_scale: Optional[float] = None, convention: str = "diffusers", steps: Optional[int] = None,
                  sampler: Optional[str] = None, num_frames: Optional[int] = None, height: Optional[int] = None,
                  width: Optional[int] = None, seed: Optional[int] = 0, latents: Optional[torch.Tensor] = None,
                  output_range: str = "-1,1", return_latents: bool = False, progress: bool = False,
                  enable_temporal_attentions: bool = True, decode_chunk_size: int = DECODE_CHUNK_SIZE,
                  **options) -> torch.Tensor:
    """Videos (B, T, C, H, W) of ``prompts`` as ``LattePipeline`` (module docstring).

    guidance_scale: in ``convention`` (default s = 7.5, diffusers'), against ``negative_prompt`` (default ""); s <= 1
    unguided. steps: the scheduler's (default 50); sampler: None for the scheduler's own step
    (:func:`.pixart.folder_sampler`), or any diffkit sampler on its grid. num_frames: the transformer's
    ``video_length`` (the default; 16, the pipeline's, for Latte-1) or 1; height / width (default 512). latents:
    z_T (B, C, F, h, w) (the pipeline's ``latents``), default N(0, I) from per-video ``seed + i``. Like the pipeline,
    several prompts at once are masked, not cut (:meth:`Latte.prompt_states`): a video depends on its batch.
    enable_temporal_attentions, decode_chunk_size: the pipeline's. Returns videos in ``output_range`` ("-1,1" or
    "0,1": ``output_type="pt"``), or with ``return_latents`` the final latents (B, C, F, h, w)."""
    from ..errors import check_choice
    from ..guidance import ClassifierFreeGuidance
    from ..noise import generators_from_seed, randn
    from ..sampling import sample
    from .animatediff import AnimateDiff, decode_frames
    from .auraflow import guided
    from .stable_diffusion import OUTPUT_RANGES, prompt_list
    check_choice("output_range", output_range, OUTPUT_RANGES)
    if isinstance(decode_chunk_size, bool) or not isinstance(decode_chunk_size, int) or decode_chunk_size < 1:
        raise DiffkitError(f"decode_chunk_size={decode_chunk_size!r} is not allowed; give a positive integer")
    prompts = prompt_list(prompts)
    frames = check_frames(model, num_frames)
    scale = LATTE_GUIDANCE if guidance_scale is None else guidance_scale
    convention = "diffusers" if guidance_scale is None else convention
    cfg = guided(scale, convention, negative_prompt)
    b, c, h, w = model.latent_shape(len(prompts), height, width)
    shape = (b, c, frames, h, w)
    if latents is not None and tuple(latents.shape) != shape:
        raise DiffkitError(f"latents of shape {tuple(latents.shape)} are not allowed; expected {shape}")
    grid = model.scheduler_grid(LATTE_STEPS if steps is None else steps)
    if sampler is None:
        sampler, own = model.folder_sampler()
        options = {**own, **options}
    context, null = model.prompt_states(prompts, negative_prompt, cfg)
    denoiser = model.video_denoiser(enable_temporal_attentions)
    if cfg:
        denoiser = ClassifierFreeGuidance(denoiser, scale, convention, null_context=null)
    generators = None if seed is None else generators_from_seed(seed, b)  # z_T's, then the steps' noise
    if latents is None:
        latents = randn(shape, generators, device=model.device)
    start = AnimateDiff.start_scale(model, LATTE_STEPS if steps is None else steps)  # init_noise_sigma, as a VP state
    z = sample(denoiser, latents.to(device=model.device, dtype=model.dtype) * start, sampler, grid=grid,
               generator=generators, cond={"context": context}, progress=progress, device=model.device,
               dtype=model.dtype, **options)
    if return_latents:
        return z
    videos = decode_frames(model, z, decode_chunk_size)
    return (videos / 2 + 0.5).clamp(0, 1) if output_range == "0,1" else videos.clamp(-1, 1)


__all__ = ["Latte", "LatteNet", "load_latte", "is_latte_folder", "check_latte_folder", "check_frames",
           "text_to_video", "LATTE_PIPELINE", "LATTE_GUIDANCE", "LATTE_STEPS", "LATTE_FRAMES"]
