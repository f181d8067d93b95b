"""A Lumina-Next diffusers folder (``LuminaPipeline``), sampled with any diffkit sampler.

Lumina-Next (Zhuo et al. 2024, "Lumina-Next: Making Lumina-T2X Stronger and Faster with Next-DiT") is a Next-DiT
(``LuminaNextDiT2DModel``: 2-D RoPE, sandwich norms, zero-initialised gated cross-attention to Gemma's states, a
learned variance) on an SD-style 4-channel ``AutoencoderKL``, trained with flow matching. diffkit runs it through
:mod:`.pixart`'s masked-text-folder code (:class:`LuminaNext` is a :class:`~.lumina2.Lumina2`, whose fixed VAE factor
8, sizes and flow scheduler it shares), as a flow-prediction :class:`~diffkit.denoiser.Denoiser`. Every diffusers
0.42.1 ``LuminaPipeline`` step is reproduced:

* prompts (``_get_gemma_prompt_embeds`` with ``clean_caption=False``, what the pipeline's default ``True`` falls
  back to without bs4 / ftfy): each prompt lower-cased and stripped, the batch tokenised together, padded to its
  **longest** prompt rounded up to a multiple of 8 (``pad_to_multiple_of=8``), truncated at 256 tokens, on the
  tokenizer's own padding side; Gemma's **second-to-last** hidden states under that mask. The pipeline's
  ``max_sequence_length`` argument is not read (diffkit refuses it). The negative prompt (default "") is *not*
  lower-cased, padded to the prompts' length L under its own mask, and encoded only where guidance is on.
* the transformer's time runs the other way: it is called at 1 - sigma (Lumina: 0 noise, 1 image) and returns
  2C channels, x_0 - eps and a variance the pipeline drops (``chunk(2, dim=1)[0]``); the velocity is u = -output.
* the time-aware scaled RoPE (Lumina-Next Sec. 2.3, "Frequency- and Time-Aware Scaled RoPE", as the pipeline's
  comment cites it): the image is s = sqrt(H W) / (8 ``sample_size``) times the transformer's default side; while
  the transformer's time 1 - sigma is below ``scaling_watershed`` (default 1.0: every step) the 384 x 384 rotary
  table is linearly interpolated (``linear_factor`` s), from there on NTK-scaled (``ntk_factor`` s); s = 1 leaves
  it as trained. ``proportional_attn`` (default on; the proportional attention of Jin et al. 2023, "Training-free
  Diffusion Model Adaptation to Variable-Sized Text-to-Image Synthesis"): each attention's softmax scale
  times sqrt(log_b N) for N tokens, b = (8 ``sample_size`` / 16)^2 (the pipeline's ``base_sequence_length``).
* guidance (:class:`LuminaNextNet`), s = ``guidance_scale`` (default 4.0; s <= 1: the conditional call alone):
  one batched call of both halves, then **only the first 3 channels** are guided, e_u + s (e_c - e_u), and the
  others take the conditional output alone (the pipeline's "cfg on three channels" kept "for exact
  reproducibility" with the original Lumina code).
* the scheduler (:meth:`LuminaNext.scheduler_sigmas`): ``FlowMatchEulerDiscreteScheduler.set_timesteps(N)``
  (default N = 30, its fixed ``shift``), its sigmas on diffkit's grid at equal log-SNR
  (:func:`.flow_latents.flow_sigmas_grid`), flow Euler ``ddim`` its step.
* latents (B, C, H / 8, W / 8), H and W multiples of 16 (and whole patches); decoding x = D(z / scaling_factor) (no
  shift), images (x / 2 + 0.5).clamp(0, 1).

A folder whose ``model_index.json`` names ``LuminaText2ImgPipeline`` (the pipeline's name before diffusers renamed
it) is the same pipeline. Refused in one line before any weight is read (:func:`check_lumina_next_folder`): another
pipeline class, a missing component, a transformer / VAE / text encoder / scheduler of another class, a transformer
without ``learn_sigma`` (the pipeline would halve its C channels), a scheduler with ``use_dynamic_shifting`` (the
pipeline passes no mu) or ``stochastic_sampling``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from . import model_dtype, require
from .lumina2 import Lumina2
from .pixart import folder_sampler

LUMINA_NEXT_PIPELINE = "LuminaPipeline"
OLD_NAME = "LuminaText2ImgPipeline"  # the same pipeline's diffusers name before its rename (older folders' index)
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
LUMINA_NEXT_CLASSES = {"transformer": ("LuminaNextDiT2DModel",), "vae": ("AutoencoderKL",),
                       "text_encoder": ("GemmaModel",), "scheduler": ("FlowMatchEulerDiscreteScheduler",)}
MAX_TOKENS = 256  # LuminaPipeline.max_sequence_length (fixed; its __call__ argument is not read)
GUIDED_CHANNELS = 3  # the pipeline guides noise_pred[:, :3] only
ROPE_SIDE = 384  # the pipeline's get_2d_rotary_pos_embed_lumina(head_dim, 384, 384, ...)


def is_lumina_next_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``LuminaPipeline`` (so ``diffkit sample`` dispatches)."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) in (LUMINA_NEXT_PIPELINE, OLD_NAME)


def check_lumina_next_folder(directory) -> tuple:
    """(model_index dict, scheduler config) of a ``LuminaPipeline`` folder, checked from its JSON alone (module
    docstring); a one-line DiffkitError for what diffkit does not drive."""
    from .pixart import checked_folder, fixed_shift_scheduler
    from .sd_xl import pipeline_class
    directory = Path(directory)
    name = OLD_NAME if pipeline_class(directory) == OLD_NAME else LUMINA_NEXT_PIPELINE
    index, transformer, _ = checked_folder(directory, name, REQUIRED, "Lumina-Next",
                                           LUMINA_NEXT_CLASSES)
    if not transformer.get("learn_sigma", True):
        raise DiffkitError(f"{directory}'s transformer has learn_sigma=False; allowed: True (LuminaPipeline keeps the "
                           f"first half of its output channels, the prediction before the learned variance)")
    sched = fixed_shift_scheduler(directory, LUMINA_NEXT_PIPELINE)
    folder_sampler(sched, flow=True)  # one line for stochastic_sampling
    return index, sched


class LuminaNextNet(torch.nn.Module):
    """``net(x, t, context, mask, null_context=None, null_mask=None)`` over a ``LuminaNextDiT2DModel``: the velocity
    u = -transformer(x, 1 - t / T, ...)[:, :C] (``t``: the flow time s T) with the pipeline's scaled RoPE and
    proportional attention (module docstring); ``scale`` s > 1 with the null half given: both halves in one call,
    the first 3 channels guided, the rest conditional (``LuminaPipeline``'s CFG)."""

    def __init__(self, transformer, T: int, scale: float = 1.0, proportional_attn: bool = True,
                 scaling_watershed: float = 1.0):
        super().__init__()
        self.model, self.T, self.scale = transformer, T, scale
        self.proportional_attn, self.scaling_watershed = proportional_attn, scaling_watershed
        self._rope = {}

    def rotary(self, linear: float, ntk: float, device) -> torch.Tensor:
        """The pipeline's 384 x 384 table ``get_2d_rotary_pos_embed_lumina(head_dim, ...)`` on ``device``, kept for
        one image size (its interpolated and NTK-scaled tables: 56 MB each at head_dim 96), not rebuilt each step."""
        key = (linear, ntk, str(device))
        if key not in self._rope:
            from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina
            if len(self._rope) >= 2:
                self._rope.clear()
            self._rope[key] = get_2d_rotary_pos_embed_lumina(
                self.model.head_dim, ROPE_SIDE, ROPE_SIDE, linear_factor=linear, ntk_factor=ntk).to(device)
        return self._rope[key]

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, mask: torch.Tensor = None,
                null_context: torch.Tensor = None, null_mask: torch.Tensor = None):
        if context is None or mask is None:
            raise DiffkitError("a Lumina-Next transformer needs cond {'context', 'mask'} "
                               "(LuminaNext.prompt_guidance)")
        sigma = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0]) / self.T
        time = 1 - sigma  # Lumina's time: 0 noise, 1 image
        guided = self.scale > 1 and null_context is not None
        if guided:
            x, time = torch.cat([x, x]), torch.cat([time, time])
            context, mask = torch.cat([context, null_context]), torch.cat([mask, null_mask])
        default = int(self.model.config.sample_size) * 8  # the pipeline's default_image_size (its factor 8)
        factor = math.sqrt(x.shape[2] * 8 * x.shape[3] * 8 / default ** 2)
        linear, ntk = (factor, 1.0) if float(time[0]) < self.scaling_watershed else (1.0, factor)
        attention = {"base_sequence_length": (default // 16) ** 2} if self.proportional_attn else {}
        dtype = model_dtype(self.model)
        out = self.model(x.to(dtype), timestep=time, encoder_hidden_states=context.to(dtype), encoder_mask=mask,
                         image_rotary_emb=self.rotary(linear, ntk, x.device), cross_attention_kwargs=attention,
                         return_dict=False)[0]
        out = out.chunk(2, dim=1)[0].to(x.dtype)  # the prediction; the learned variance dropped
        if guided:
            cond, uncond = out.chunk(2)
            k = GUIDED_CHANNELS
            out = torch.cat([uncond[:, :k] + self.scale * (cond[:, :k] - uncond[:, :k]), cond[:, k:]], dim=1)
        return -out  # the velocity eps - x_0 (the pipeline's noise_pred = -noise_pred)


@dataclass
class LuminaNext(Lumina2):
    """The loaded components of a ``LuminaPipeline`` folder (:func:`load_lumina_next`): a :class:`~.lumina2.Lumina2`
    (fixed VAE factor 8, sizes multiples of 16, flow Euler on its scheduler's sigmas) whose prompts, network,
    guidance and scheduler call are Lumina-Next's."""

    net_class = LuminaNextNet

    @property
    def shift_factor(self) -> float:
        """0: the pipeline decodes z / scaling_factor with no shift."""
        return 0.0

    @property
    def max_sequence_length(self) -> int:
        return MAX_TOKENS

    def aspect_ratio_bins(self) -> dict:
        raise DiffkitError("LuminaPipeline has no resolution binning; draw without it")

    def _states(self, tokens) -> torch.Tensor:
        with torch.no_grad():
            out = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=tokens.attention_mask.to(
                self.device), output_hidden_states=True)
        return out.hidden_states[-2].to(self.text_encoder.dtype)

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: Optional[int] = None) -> tuple:
        """(Gemma second-to-last states (B, L, d), mask (B, L)) of ``prompts`` lower-cased and stripped, padded to
        the longest rounded up to a multiple of 8 (at most 256 tokens), as ``LuminaPipeline.encode_prompt``."""
        from .stable_diffusion import prompt_list
        if max_sequence_length is not None:
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} does not apply to a Lumina-Next folder "
                               f"(LuminaPipeline pads each batch to its longest prompt, at most {MAX_TOKENS} tokens)")
        texts = [text.lower().strip() for text in prompt_list(prompts)]  # _text_preprocessing(clean_caption=False)
        tokens = self.tokenizer(texts, pad_to_multiple_of=8, max_length=MAX_TOKENS, truncation=True, padding=True,
                                return_tensors="pt")
        return self._states(tokens), tokens.attention_mask.to(self.device)

    def encode_negative_prompts(self, prompts: Sequence[str], length: int) -> tuple:
        """The null half's (states, mask): ``prompts`` as given (not lower-cased), padded to the prompts' ``length``
        (the pipeline's negative branch)."""
        tokens = self.tokenizer(list(prompts), padding="max_length", max_length=length, truncation=True,
                                return_tensors="pt")
        return self._states(tokens), tokens.attention_mask.to(self.device)

    def guided_denoiser(self, scale: float = 1.0, proportional_attn: bool = True, scaling_watershed: float = 1.0):
        """The flow-prediction :class:`~diffkit.denoiser.Denoiser` of :class:`LuminaNextNet` (cond ``context``,
        ``mask``, and ``null_context`` / ``null_mask`` to guide) on ``NoiseSchedule.flow(T, shift)``."""
        return self.cached_denoiser((float(scale), bool(proportional_attn), float(scaling_watershed)))

    def scheduler_sigmas(self, steps: int) -> torch.Tensor:
        """The scheduler's sigmas (final 0 included) after the pipeline's ``set_timesteps(steps)``."""
        diffusers = require("diffusers")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise DiffkitError(f"steps={steps!r} is not allowed; give a positive integer")
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(steps)
        return scheduler.sigmas

    def prompt_guidance(self, prompts, negative_prompt=None, guidance_scale: float = 4.0,
                        convention: str = "diffusers", max_sequence_length: Optional[int] = None,
                        size: Optional[tuple] = None, denoiser=None, proportional_attn: bool = True,
                        scaling_watershed: float = 1.0) -> tuple:
        """(denoiser, cond) of ``LuminaPipeline``'s guidance (module docstring); ``denoiser`` is not used."""
        from ..guidance import guidance_weight
        from .stable_diffusion import negative_prompts
        scale = guidance_weight(guidance_scale, convention) + 1.0
        context, mask = self.encode_prompts(prompts, max_sequence_length)
        cond = {"context": context, "mask": mask}
        if scale > 1:
            null_context, null_mask = self.encode_negative_prompts(
                negative_prompts(negative_prompt, context.shape[0]), context.shape[1])
            cond.update(null_context=null_context, null_mask=null_mask)
        return self.guided_denoiser(scale, proportional_attn, scaling_watershed), cond


def load_lumina_next(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                     progress: bool = True) -> LuminaNext:
    """Load a ``LuminaPipeline`` diffusers folder (never downloads, never unpickles); what diffkit does not drive is
    refused in one line before any weight is read (:func:`check_lumina_next_folder`)."""
    from ..schedule import NoiseSchedule
    from .flow_latents import frozen_on, load_flow_parts
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_lumina_next_folder(directory)
    from .schedulers import train_timesteps
    T = train_timesteps(sched)
    parts = load_flow_parts(directory, index, diffusers.LuminaNextDiT2DModel, {"": "GemmaModel"}, dtype, progress)
    device = frozen_on(parts, device)
    return LuminaNext(pipeline=LUMINA_NEXT_PIPELINE, **parts, schedule=NoiseSchedule.flow(T, float(sched.get(
        "shift", 1.0))), prediction_type="flow_prediction", scheduler_config=sched, device=device, dtype=dtype)


def text_to_image(lumina: LuminaNext, prompts: Union[str, Sequence[str]], *, proportional_attn: bool = True,
                  scaling_watershed: float = 1.0, **options):
    """Images of a Lumina-Next folder for ``prompts``: :func:`.pixart.text_to_image` (its sampler / grid, steps
    (default 30), guidance (default s = 4.0), negative prompt, latents, size, output options), with the pipeline's
    ``proportional_attn`` and ``scaling_watershed`` (module docstring)."""
    from .pixart import text_to_image as pixart_text_to_image
    if options.get("resolution_binning"):
        lumina.aspect_ratio_bins()
    if not isinstance(proportional_attn, bool):
        raise DiffkitError(f"proportional_attn={proportional_attn!r} is not allowed; give True or False")
    if isinstance(scaling_watershed, bool) or not isinstance(scaling_watershed, (int, float)) \
            or not math.isfinite(scaling_watershed):
        raise DiffkitError(f"scaling_watershed={scaling_watershed!r} is not allowed; give a finite number (the "
                           f"transformer time 1 - sigma below which the RoPE is interpolated, default 1.0)")
    encode = {"proportional_attn": proportional_attn, "scaling_watershed": float(scaling_watershed)}
    return pixart_text_to_image(lumina, prompts, encode=encode, **options)


__all__ = ["LuminaNext", "LuminaNextNet", "load_lumina_next", "is_lumina_next_folder", "check_lumina_next_folder",
           "text_to_image", "LUMINA_NEXT_PIPELINE"]
