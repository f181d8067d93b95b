"""A Lumina-Image 2.0 diffusers folder (``Lumina2Pipeline``), sampled with any diffkit sampler.

Lumina-Image 2.0 (Qin et al. 2025, "Lumina-Image 2.0: A Unified and Efficient Image Generative Framework") is a
unified next-DiT (``Lumina2Transformer2DModel``: text and image tokens in one sequence, Sec. 3.1) on FLUX.1's
16-channel ``AutoencoderKL`` (scaling and shift factors), conditioned on Gemma-2's states under the prompt's mask
and trained with flow matching (rectified flow). diffkit runs it through :mod:`.pixart`'s masked-text-folder code
(:class:`Lumina2` is a :class:`~.pixart.PixArt`, as :mod:`.sana`'s: prompts, grid, latents, ``diffkit sample``),
as a flow-prediction :class:`~diffkit.denoiser.Denoiser`. Every diffusers 0.42.1 ``Lumina2Pipeline`` step is
reproduced:

* prompts (``encode_prompt``; the paper's "Unified Captioner" system prompts, Sec. 3.2): each prompt becomes
  ``system_prompt + " <Prompt Start> " + prompt`` (default :data:`SYSTEM_PROMPT`, the pipeline's; not lower-cased),
  tokenised with right padding to L = ``max_sequence_length`` (default 256, at most 512) tokens, and encoded as
  Gemma-2's **second-to-last** hidden states (``hidden_states[-2]``) under that mask. The negative prompt (default
  "") is encoded **without** the system prompt, at the same L, under its own mask, and only where guidance is on.
* the transformer's time runs the other way: it is called at ``1 - sigma`` (Lumina: 0 noise, 1 image) and returns
  x_0 - eps, so the velocity is u = -output (the pipeline's ``noise_pred = -noise_pred``) (:class:`Lumina2Net`).
* guidance (:class:`Lumina2Net`), on the transformer's output, s = ``guidance_scale`` (default 4.0; s <= 1: the
  conditional call alone, the pipeline's ``do_classifier_free_guidance``): v = v_u + s (v_c - v_u), with
  ``cfg_normalization`` (default on, as there) rescaled to v ||v_c|| / ||v|| where the norms run over the **last
  axis** (image columns), as the pipeline's ``torch.norm(dim=-1)``; ``cfg_trunc_ratio`` r (default 1): step i
  (of N) is guided only while (i + 1) / N <= r, later steps take v_c alone. diffkit guides at flow times
  s >= the midpoint between the last guided and the first unguided sigma of the pipeline's N-step schedule, which
  is exactly those steps on the scheduler's grid (and the same interval of times for another sampler or grid).
* the scheduler (:meth:`Lumina2.scheduler_grid`): ``FlowMatchEulerDiscreteScheduler.set_timesteps(sigmas=
  linspace(1, 1/N, N), mu=mu)`` (default N = 30), its sigmas on diffkit's grid at equal log-SNR
  (:func:`.flow_latents.flow_sigmas_grid`), flow Euler ``ddim`` its step. The pipeline computes mu with FLUX's
  ``calculate_shift`` of ``latents.shape[1]``, which is the **channel count** (16), not the image tokens: mu is
  the same at every size (:meth:`Lumina2.mu`); it matters only with ``use_dynamic_shifting`` (the released folder
  has a fixed ``shift`` 6).
* latents (B, C, H / 8, W / 8): the pipeline's fixed VAE factor 8 (whatever the VAE's depth), H and W multiples of
  16; decoding x = D(z / scaling_factor + shift_factor), images (x / 2 + 0.5).clamp(0, 1).

Refused in one line before any weight is read (:func:`check_lumina2_folder`): another pipeline class (Lumina-Next's
``LuminaPipeline``, ``Lumina2Text2ImgPipeline`` aliases aside), a missing component, a transformer / VAE / text
encoder / scheduler of another class, a scheduler that is not flow-prediction Euler with deterministic steps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..errors import DiffkitError, read_json_object
from . import model_dtype, require
from .flow_latents import FlowLatentVAE, flow_sigmas_grid, frozen_on, load_flow_parts
from .pixart import PixArt, folder_sampler

LUMINA2_PIPELINE = "Lumina2Pipeline"
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
LUMINA2_CLASSES = {"transformer": ("Lumina2Transformer2DModel",), "vae": ("AutoencoderKL",),
                   "text_encoder": ("Gemma2Model",), "scheduler": ("FlowMatchEulerDiscreteScheduler",)}
# Lumina2Pipeline.system_prompt (diffusers 0.42.1)
SYSTEM_PROMPT = ("You are an assistant designed to generate superior images with the superior degree of image-text "
                 "alignment based on textual prompts or user prompts.")


def is_lumina2_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``Lumina2Pipeline`` (so ``diffkit sample`` dispatches)."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == LUMINA2_PIPELINE


def check_lumina2_folder(directory) -> tuple:
    """(model_index dict, scheduler config) of a ``Lumina2Pipeline`` folder, checked from its JSON alone; a one-line
    DiffkitError for what diffkit does not drive."""
    from .pixart import check_pipeline_folder
    directory = Path(directory)
    index = check_pipeline_folder(directory, LUMINA2_PIPELINE, "Lumina2", REQUIRED, LUMINA2_CLASSES)
    sched = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    folder_sampler(sched, flow=True)  # one line for stochastic_sampling
    return index, sched


def guided_from(sigmas: torch.Tensor, guided: int) -> Optional[float]:
    """The flow time from which guidance runs when the first ``guided`` steps of a scheduler's N-step ``sigmas``
    (final 0 included) are guided and the rest are not (a truncated CFG's; Lumina-Image 2.0's, Z-Image's): None
    (every step guided), 2.0 (none) or the midpoint of the last guided and the first unguided sigma, so that the
    same steps are guided on that grid (and the same interval of times on another)."""
    steps = len(sigmas) - 1
    if guided >= steps:
        return None
    if guided <= 0:
        return 2.0
    return float(sigmas[guided - 1] + sigmas[guided]) / 2


class Lumina2Net(torch.nn.Module):
    """``net(x, t, context, mask, null_context=None, null_mask=None)`` over a ``Lumina2Transformer2DModel``: the
    velocity u = -transformer(x, 1 - t / T, ...) (``t``: the flow time s T), guided as ``Lumina2Pipeline`` (module
    docstring): ``scale`` s > 1 with the null half given, at flow times s >= ``trunc_sigma`` (None: always), the
    guided output renormalised over the last axis with ``normalize``."""

    def __init__(self, transformer, T: int, scale: float = 1.0, normalize: bool = True,
                 trunc_sigma: Optional[float] = None):
        super().__init__()
        self.model, self.T, self.scale, self.normalize, self.trunc_sigma = transformer, T, scale, normalize, \
            trunc_sigma

    def _call(self, x, time, context, mask):
        dtype = model_dtype(self.model)
        out = self.model(x.to(dtype), timestep=time, encoder_hidden_states=context.to(dtype),
                         encoder_attention_mask=mask, return_dict=False)[0]
        return out.to(x.dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, mask: torch.Tensor = None,
                null_context: torch.Tensor = None, null_mask: torch.Tensor = None):
        if context is None or mask is None:
            raise DiffkitError("a Lumina2 transformer needs cond {'context', 'mask'} (Lumina2.prompt_guidance)")
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        sigma, time = t / self.T, self.model_time(t)  # the model's time: 0 noise, 1 image
        out = self._call(x, time, context, mask)
        if self.scale > 1 and null_context is not None:
            guided = sigma >= (-1.0 if self.trunc_sigma is None else self.trunc_sigma)
            if bool(guided.any()):
                pred = self.combine(out, self._call(x, time, null_context, null_mask))
                out = torch.where(guided.reshape(-1, *[1] * (x.ndim - 1)), pred, out)
        return -out  # the velocity eps - x_0 (the pipeline's noise_pred = -noise_pred)

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The transformer's time 1 - s of the flow time ``t`` = s T (float32)."""
        return 1 - t / self.T

    def combine(self, out: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        """The guided output of the conditional and unconditional ones: uncond + s (out - uncond), with
        ``normalize`` rescaled by ||out|| / ||guided|| over the last axis (the pipeline's cfg_normalization;
        :func:`diffkit.guidance.norm_matched_cfg`, Qwen-Image's true CFG too; Z-Image's caps: :mod:`.z_image`)."""
        from ..guidance import norm_matched_cfg
        return norm_matched_cfg(out, uncond, self.scale, self.normalize)


@dataclass
class Lumina2(PixArt):
    """The loaded components of a ``Lumina2Pipeline`` folder (:func:`load_lumina2`): a :class:`~.pixart.PixArt`
    whose prompts, network, guidance and scheduler are Lumina-Image 2.0's."""

    _guided: dict = field(default_factory=dict, repr=False)

    default_guidance_scale = 4.0  # Lumina2Pipeline.__call__'s defaults
    default_steps = 30
    max_length_limit = 512  # its check_inputs
    size_multiple = 16  # its check_inputs: multiples of vae_scale_factor * 2
    net_class = Lumina2Net  # the network guided_denoiser wraps (Lumina-Next's: .lumina_next.LuminaNextNet)

    @property
    def max_sequence_length(self) -> int:
        return 256

    @property
    def shift_factor(self) -> float:
        """The VAE's shift factor (FLUX.1's VAE; the pipeline decodes z / scaling_factor + shift_factor)."""
        return FlowLatentVAE.shift_factor.fget(self)

    @property
    def vae_scale_factor(self) -> int:
        """8: the pipeline's fixed factor (latents H / 8 x W / 8 whatever the VAE's depth)."""
        return 8

    @property
    def learned_variance(self) -> bool:
        return False

    def aspect_ratio_bins(self) -> dict:
        raise DiffkitError("Lumina2Pipeline has no resolution binning; draw without it")

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: Optional[int] = None,
                       system_prompt: Optional[str] = SYSTEM_PROMPT) -> tuple:
        """(Gemma-2 second-to-last states (B, L, d), mask (B, L)) of ``prompts`` after ``system_prompt +
        " <Prompt Start> "`` (None: the raw prompts, as the negative ones), as ``Lumina2Pipeline.encode_prompt``."""
        from .stable_diffusion import prompt_list
        length = self.max_sequence_length if max_sequence_length is None else max_sequence_length
        self.check_length(length)
        texts = prompt_list(prompts)
        if system_prompt is not None:
            texts = [system_prompt + " <Prompt Start> " + text for text in texts]
        self.tokenizer.padding_side = "right"  # as the pipeline sets it
        tokens = self.tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        mask = tokens.attention_mask.to(self.device)
        with torch.no_grad():
            out = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask, output_hidden_states=True)
        return out.hidden_states[-2].to(self.text_encoder.dtype), mask

    def micro_conditions(self, batch: int, height: int, width: int) -> dict:
        return {}

    def folder_sampler(self) -> tuple:
        return folder_sampler(self.scheduler_config, flow=True)

    def mu(self) -> float:
        """The pipeline's mu: FLUX's ``calculate_shift`` of ``latents.shape[1]``, the latent channels (module
        docstring), with the scheduler's base / max shift and sequence lengths."""
        from .flux import calculate_shift
        return calculate_shift(int(self.transformer.config.in_channels), self.scheduler_config)

    def guided_denoiser(self, scale: float = 1.0, normalize: bool = True, trunc_sigma: Optional[float] = None):
        """The flow-prediction :class:`~diffkit.denoiser.Denoiser` of :class:`Lumina2Net` (cond ``context``,
        ``mask``, and ``null_context`` / ``null_mask`` to guide) on ``NoiseSchedule.flow(T, shift)``."""
        return self.cached_denoiser((float(scale), bool(normalize), trunc_sigma))

    def cached_denoiser(self, key: tuple):
        """The flow-prediction Denoiser of ``net_class(transformer, T, *key)`` (built once per ``key``)."""
        if key not in self._guided:
            from ..denoiser import Denoiser
            T = int(self.scheduler_config.get("num_train_timesteps", 1000))
            self._guided[key] = Denoiser(self.net_class(self.transformer, T, *key), self.schedule, "flow_prediction")
            self._guided[key].model = self.transformer
        return self._guided[key]

    @property
    def denoiser(self):
        """The unguided denoiser (the conditional call alone)."""
        return self.guided_denoiser()

    def scheduler_sigmas(self, steps: int) -> torch.Tensor:
        """The scheduler's sigmas (final 0 included) after the pipeline's ``set_timesteps(sigmas=linspace(1, 1/N,
        N), mu=mu)``."""
        diffusers = require("diffusers")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise DiffkitError(f"steps={steps!r} is not allowed; give a positive integer")
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=self.mu())
        return scheduler.sigmas

    def scheduler_grid(self, steps: int) -> torch.Tensor:
        """diffkit's grid of :meth:`scheduler_sigmas` (:func:`.flow_latents.flow_sigmas_grid`)."""
        return flow_sigmas_grid(self.schedule, self.scheduler_sigmas(steps), steps)

    def trunc_sigma(self, cfg_trunc_ratio: float, steps: int) -> Optional[float]:
        """The flow time from which guidance runs under ``cfg_trunc_ratio`` r at ``steps`` N: steps i with (i + 1) /
        N <= r are guided (the pipeline's rule); the midpoint of the last guided and first unguided sigma (None:
        every step guided; above 1: none)."""
        if isinstance(cfg_trunc_ratio, bool) or not isinstance(cfg_trunc_ratio, (int, float)) \
                or not np.isfinite(cfg_trunc_ratio):
            raise DiffkitError(f"cfg_trunc_ratio={cfg_trunc_ratio!r} is not allowed; give a finite number (the "
                               f"fraction of steps that are guided, default 1)")
        guided = sum(not (i + 1) / steps > cfg_trunc_ratio for i in range(steps))
        return guided_from(self.scheduler_sigmas(steps), guided)

    def prompt_guidance(self, prompts, negative_prompt=None, guidance_scale: float = 4.0,
                        convention: str = "diffusers", max_sequence_length: Optional[int] = None,
                        size: Optional[tuple] = None, denoiser=None, system_prompt: Optional[str] = SYSTEM_PROMPT,
                        cfg_normalization: bool = True, trunc_sigma: Optional[float] = None) -> tuple:
        """(denoiser, cond) of ``Lumina2Pipeline``'s guidance (module docstring); ``denoiser`` is not used."""
        from ..guidance import guidance_weight
        from .stable_diffusion import negative_prompts
        scale = guidance_weight(guidance_scale, convention) + 1.0
        context, mask = self.encode_prompts(prompts, max_sequence_length, system_prompt)
        cond = {"context": context, "mask": mask}
        if scale > 1:
            null_context, null_mask = self.encode_prompts(negative_prompts(negative_prompt, context.shape[0]),
                                                          context.shape[1], None)
            cond.update(null_context=null_context, null_mask=null_mask)
        return self.guided_denoiser(scale, cfg_normalization, trunc_sigma), cond


def load_lumina2(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                 progress: bool = True, lora=None) -> Lumina2:
    """Load a ``Lumina2Pipeline`` diffusers folder (never downloads, never unpickles); what diffkit does not drive is
    refused in one line before any weight is read (:func:`check_lumina2_folder`). ``lora``: LoRA files (paths or
    (path, scale) pairs) with diffusers-format ``transformer.`` keys (``Lumina2LoraLoaderMixin``; its
    original-format ``diffusion_model.`` files mapped as it maps them, :mod:`.lumina2_lora`), read and checked first,
    fused as ``load_lora_weights`` + ``fuse_lora(lora_scale=scale)`` (:func:`.sana_lora.read_transformer_loras`,
    :func:`.sd_lora.merge_sd_loras`)."""
    from ..schedule import NoiseSchedule
    from .flux import scheduler_shift
    from .lumina2_lora import convert_lumina2_lora
    from .sana_lora import read_transformer_loras
    from .sd_lora import merge_sd_loras
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_lumina2_folder(directory)
    loras = read_transformer_loras(lora, "Lumina2", "a Lumina-Image 2.0 folder", "Lumina2Pipeline",
                                   convert_lumina2_lora) if lora else []
    from .schedulers import train_timesteps
    T = train_timesteps(sched)
    parts = load_flow_parts(directory, index, diffusers.Lumina2Transformer2DModel, {"": "Gemma2Model"}, dtype,
                            progress)
    device = frozen_on(parts, device)
    model = Lumina2(pipeline=LUMINA2_PIPELINE, **parts, schedule=None, prediction_type="flow_prediction",
                    scheduler_config=sched, device=device, dtype=dtype)
    model.schedule = NoiseSchedule.flow(T, scheduler_shift(sched, model.mu, 0, 0))
    merge_sd_loras(model, loras)
    return model


def text_to_image(lumina: Lumina2, prompts: Union[str, Sequence[str]], *, system_prompt: Optional[str] = SYSTEM_PROMPT,
                  cfg_trunc_ratio: float = 1.0, cfg_normalization: bool = True, steps: Optional[int] = None,
                  **options):
    """Images of a Lumina2 folder for ``prompts``: :func:`.pixart.text_to_image` (its sampler / grid, steps (default
    30), guidance (default s = 4.0), negative prompt, latents, size, ``max_sequence_length`` (default 256), output
    options), with the pipeline's ``system_prompt``, ``cfg_trunc_ratio`` (of the pipeline's ``steps``-step
    schedule) and ``cfg_normalization`` (module docstring)."""
    from .pixart import text_to_image as pixart_text_to_image
    if options.get("resolution_binning"):
        lumina.aspect_ratio_bins()
    trunc = lumina.trunc_sigma(cfg_trunc_ratio, steps or lumina.default_steps)
    encode = {"system_prompt": system_prompt, "cfg_normalization": bool(cfg_normalization), "trunc_sigma": trunc}
    return pixart_text_to_image(lumina, prompts, steps=steps, encode=encode, **options)


__all__ = ["Lumina2", "Lumina2Net", "load_lumina2", "is_lumina2_folder", "check_lumina2_folder", "text_to_image",
           "SYSTEM_PROMPT", "LUMINA2_PIPELINE"]
