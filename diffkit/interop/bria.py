"""A Bria 3.2 diffusers folder (``BriaPipeline``, diffusers 0.42.1), sampled with any diffkit sampler.

Bria 3.2 (BRIA AI 2025) is FLUX.1's rectified-flow transformer (:mod:`.flux`; Esser et al. 2024, Sec. 2, eq. 1:
x_s = (1 - s) x_0 + s eps, velocity u = eps - x_0) without the pooled-CLIP and guidance embedders
(``BriaTransformer2DModel``), one T5 text encoder and real classifier-free guidance; :class:`Bria` is a
:class:`.chroma.Chroma` (prompts, CFG and the loop are run by :func:`.chroma.text_to_image`). FLUX.1's and reused
from :mod:`.flux`: the 2 x 2 latent packing and image ids (0, row, column) with zero ``txt_ids``
(:class:`.flux.FluxNet`), the 16-channel VAE decoded as z / scaling_factor + shift_factor, the random draws (z in
(B, C, h, w) from sample i's generator), ``calculate_shift``'s mu of the packed sequence length. What is Bria's own:

* the pipeline's ``vae_scale_factor`` is 2^len(block_out_channels), twice the VAE's factor f, and it floors sizes to
  multiples of it: the same latents h = H / f (multiples of 2 f), default 1024 for Bria's f = 8 (128 f).
* time: the transformer gets the scheduler's timestep s T itself (FLUX.1 divides by 1000): ``BriaNet``.
* prompts (``_get_t5_prompt_embeds``): each prompt tokenised alone, *without* padding (``max_sequence_length``,
  default 128, truncates), encoded by T5 without an attention mask, then zero vectors appended up to
  ``max_sequence_length``; no text mask reaches the transformer (the zeros are attended to).
* guidance: u = u_neg + s (u_c - u_neg) for s > 1 (Ho & Salimans 2022, eq. 6 in diffusers' convention; default
  5.0) with :class:`~diffkit.guidance.ClassifierFreeGuidance`; the negative prompt's states are the *zero tensor*
  of the prompts' shape when it is empty (``is_ng_none``: None, "", or a list whose first entry is ""),
  otherwise it is encoded as the prompts.
* sigmas (:meth:`Bria.input_sigmas`): with ``use_dynamic_shifting`` FLUX.1's linspace(1, 1/N, N) and mu; without,
  ``get_original_sigmas``: the training sigmas i / T (i = T .. 1) at indices int(linspace(0, T - 1, N)), then
  ``set_timesteps(sigmas=...)`` shifts them by the scheduler's fixed ``shift``.
* defaults: 30 steps; a VAE with ``shift_factor`` null decodes with 0, in float32 (the pipeline's ``__init__``).
* the pipeline's ``normalize`` / ``clip_value`` options (off by default; :func:`text_to_image`): CFG inside
  :class:`BriaGuidedNet`.

Not driven (diffusers 0.42.1 has no img2img, inpainting, LoRA, textual-inversion, IP-Adapter or ControlNet
pipeline for Bria 3.2; ``diffkit edit`` and those flags: one line): the pipeline's DDIM / Euler-ancestral scheduler
branch. Refused in one line before any weight is
read: a transformer / VAE / scheduler of another class (the scheduler must be FlowMatchEulerDiscreteScheduler), an
``image_encoder``, a transformer of ``patch_size`` != 1 or whose input is not 4 x the VAE's latent channels.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from . import require
from .chroma import Chroma
from .flow_latents import check_flow_configs, load_one_text_folder, names_pipeline
from .flux import FluxNet, check_flux_scheduler
from .sd_xl import _index

BRIA_TRANSFORMER = "BriaTransformer2DModel"
BRIA_PIPELINE = "BriaPipeline"
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
BRIA_GUIDANCE = 5.0  # BriaPipeline's default guidance_scale (CFG)
BRIA_STEPS = 30  # its default num_inference_steps
MAX_SEQUENCE_LENGTH = 128  # its default max_sequence_length (at most 512)


class BriaNet(FluxNet):
    """``net(z, t, context)`` over a ``BriaTransformer2DModel`` on unpacked latents z (B, C, h, w):
    :meth:`.flux.FluxNet.packed_inputs` with ``timestep`` = the flow time s T itself (the pipeline's scheduler
    timestep); no pooled projections, no guidance; the velocity unpacked, in z's dtype."""

    time_divisor = 1

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None) -> torch.Tensor:
        from .flux import unpack_latents
        if context is None:
            raise DiffkitError("a Bria transformer needs cond {'context'} (Bria.encode_prompts)")
        out = self.model(**self.packed_inputs(x, t, context), return_dict=False)[0]
        return unpack_latents(out, *x.shape[2:]).to(x.dtype)


class BriaGuidedNet(BriaNet):
    """``net(z, t, context, null_context=None)``: :class:`BriaNet` with BriaPipeline's CFG inside, for its
    ``normalize`` / ``clip_value`` options: u = u_neg + s (u_c - u_neg) (``scale`` s > 1 with ``null_context``);
    ``normalize``: u <- 0.7 (std(u_c) / std(u)) u + 0.3 u, both standard deviations (unbiased) over the whole batch
    as the pipeline takes them; ``clip_value`` c: u clamped to [-c, c]."""

    def __init__(self, transformer, scale: float = 1.0, normalize: bool = False, clip_value: Optional[float] = None):
        super().__init__(transformer)
        self.scale, self.normalize, self.clip_value = scale, normalize, clip_value

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None,
                null_context: torch.Tensor = None) -> torch.Tensor:
        out = super().forward(x, t, context)
        if null_context is not None and self.scale > 1:
            uncond = super().forward(x, t, null_context.expand(x.shape[0], -1, -1))
            text_std = out.std()
            out = uncond + self.scale * (out - uncond)
            if self.normalize:
                out = out * (0.7 * (text_std / out.std())) + 0.3 * out
        return out if self.clip_value is None else out.clip(-self.clip_value, self.clip_value)


def original_sigmas(num_train_timesteps: int, steps: int):
    """BriaPipeline's ``get_original_sigmas``: the training sigmas T/T, (T-1)/T, ..., 1/T (float32) at the indices
    int(linspace(0, T - 1, steps))."""
    import numpy as np
    sigmas = np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1] / num_train_timesteps
    return sigmas[[int(i) for i in np.linspace(0, num_train_timesteps - 1, steps)]]


@dataclass
class Bria(Chroma):
    """The loaded components of a Bria 3.2 folder (:func:`load_bria`): Chroma's fields (the T5 encoder as
    ``text_encoder`` / ``tokenizer``); shapes, the shift and decoding are :class:`.flux.Flux`'s."""

    default_steps = BRIA_STEPS
    default_guidance = BRIA_GUIDANCE
    max_sequence_length = MAX_SEQUENCE_LENGTH
    img2img_defaults = inpaint_defaults = None  # no img2img / inpainting pipeline
    guidance_hint = f"CFG for > 1, the pipeline's default {BRIA_GUIDANCE}"

    @property
    def shift_factor(self) -> float:
        """The VAE's ``shift_factor``; null reads as 0 (BriaPipeline sets it so)."""
        return float(self.vae.config.shift_factor or 0.0)

    def network(self) -> torch.nn.Module:
        return BriaNet(self.transformer)

    def input_sigmas(self, steps: int):
        """The sigmas BriaPipeline gives ``set_timesteps``: FLUX.1's linspace(1, 1/steps, steps) with
        ``use_dynamic_shifting`` (and mu), otherwise :func:`original_sigmas`."""
        if self.scheduler_config.get("use_dynamic_shifting", False):
            return super().input_sigmas(steps)
        return original_sigmas(int(self.scheduler_config.get("num_train_timesteps", 1000)), steps)

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> tuple:
        """(context (B, max_sequence_length, d_T5), None: no text mask) as ``_get_t5_prompt_embeds``: each prompt
        tokenised alone without padding (truncated to ``max_sequence_length``), encoded without a mask, zero vectors
        appended; in the transformer's dtype."""
        from .stable_diffusion import prompt_list
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int) \
                or not 1 <= max_sequence_length <= 512:
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed; allowed: 1..512 "
                               f"(BriaPipeline's T5 length, default {MAX_SEQUENCE_LENGTH})")
        rows = []
        for prompt in prompt_list(prompts):
            ids = self.tokenizer(prompt, max_length=max_sequence_length, truncation=True, return_tensors="pt")
            with torch.no_grad():
                states = self.text_encoder(ids.input_ids.to(self.device))[0]
            rows.append(torch.nn.functional.pad(states, (0, 0, 0, max_sequence_length - states.shape[1])))
        return torch.cat(rows).to(self.transformer.dtype), None

    def negative_prompts(self, negatives: Sequence[str], max_sequence_length: int, context: torch.Tensor) -> tuple:
        """CFG's negative states: zeros of the prompts' shape where the first negative prompt is empty (the
        pipeline's ``is_ng_none``), else the negatives encoded as the prompts; no mask."""
        if negatives[0] == "":
            return torch.zeros_like(context[:1]).expand(len(negatives), -1, -1), None
        return self.encode_prompts(negatives, max_sequence_length)

    def prompt_guidance(self, prompts, h: int, w: int, guidance_scale: Optional[float] = None,
                        negative_prompt=None, max_sequence_length: int = MAX_SEQUENCE_LENGTH,
                        convention: str = "diffusers", ip_adapter=None, normalize: bool = False,
                        clip_value: Optional[float] = None) -> tuple:
        """(denoiser, cond) at latents h x w as :meth:`.chroma.Chroma.prompt_guidance` (CFG for a diffusers-convention
        scale s > 1, default 5.0, against ``negative_prompt``, default "": zeros) with Bria's prompts
        (:meth:`encode_prompts`, :meth:`negative_prompts`); no IP-Adapter (the pipeline takes none). ``normalize`` /
        ``clip_value``: the pipeline's options (off by default), CFG inside :class:`BriaGuidedNet`."""
        import math
        from ..guidance import ClassifierFreeGuidance
        if ip_adapter is not None:
            raise DiffkitError("an IP-Adapter is not supported for a Bria folder: BriaPipeline (diffusers 0.42.1) "
                               "has no load_ip_adapter; drop it")
        if not isinstance(normalize, bool):
            raise DiffkitError(f"normalize={normalize!r} is not allowed; give True or False")
        if clip_value is not None and (isinstance(clip_value, bool) or not isinstance(clip_value, (int, float))
                                       or not math.isfinite(clip_value) or clip_value <= 0):
            raise DiffkitError(f"clip_value={clip_value!r} is not allowed; give None (off) or a positive number "
                               f"(the velocity clamped to [-clip_value, clip_value])")
        denoiser, cond = super().prompt_guidance(prompts, h, w, guidance_scale, negative_prompt,
                                                 max_sequence_length, convention)
        if not normalize and clip_value is None:
            return denoiser, cond
        guided = isinstance(denoiser, ClassifierFreeGuidance)
        if normalize and not guided:
            raise DiffkitError("normalize=True needs CFG (a diffusers-convention scale > 1): BriaPipeline rescales "
                               "the guided velocity to the conditional one's spread (unguided it fails)")
        from ..denoiser import Denoiser
        net = BriaGuidedNet(self.transformer, 1 + denoiser.w if guided else 1.0, normalize,
                            None if clip_value is None else float(clip_value))
        inner = Denoiser(net, self.denoiser_for(h, w).schedule, "flow_prediction")
        inner.model = self.transformer
        return inner, {**cond, **({"null_context": denoiser.null_context} if guided else {})}


def is_bria_folder(path: Union[str, Path]) -> bool:
    """True for a diffusers folder whose ``model_index.json`` names a ``Bria...`` pipeline or a
    ``BriaTransformer2DModel`` transformer (Bria FIBO's ``BriaFiboPipeline`` ... too: :func:`check_bria_folder`
    refuses it in one line)."""
    return names_pipeline(path, "Bria", BRIA_TRANSFORMER)


def check_bria_folder(directory: Path) -> tuple:
    """(index, scheduler config) of a Bria 3.2 folder that :func:`load_bria` drives; anything else is a one-line
    DiffkitError (module docstring), from the JSON files alone."""
    index = _index(directory)
    if index is None or not is_bria_folder(directory):
        raise DiffkitError(f"{directory} is not a Bria folder (model_index.json naming a {BRIA_PIPELINE} with a "
                           f"{BRIA_TRANSFORMER} transformer)")
    if index.get("_class_name") != BRIA_PIPELINE:
        raise DiffkitError(f"{directory} is a {index.get('_class_name')!r} folder, which diffkit does not drive "
                           f"(a BriaFiboPipeline folder: load_bria_fibo, diffkit.interop.bria_fibo); allowed: "
                           f"{BRIA_PIPELINE}")
    vae, transformer = check_flow_configs(directory, index, REQUIRED, "Bria", BRIA_TRANSFORMER, null_shift=True)
    latents = int(vae.get("latent_channels", 4))
    for key, default, allowed, why in (("patch_size", 1, 1, "BriaPipeline unpacks the 2 x 2 packed tokens"),
                                       ("in_channels", 64, 4 * latents, "4 x the VAE's latent channels")):
        if transformer.get(key, default) != allowed:
            raise DiffkitError(f"{directory}'s transformer has {key}={transformer.get(key, default)!r}; allowed: "
                               f"{allowed} ({why})")
    return index, check_flux_scheduler(directory, BRIA_PIPELINE)


def load_bria(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
              progress: bool = True) -> Bria:
    """Load a Bria 3.2 diffusers folder (never downloads, never unpickles); what diffkit does not drive is refused
    in one line before any weight is read (:func:`check_bria_folder`). A VAE with ``shift_factor`` null runs in
    float32, as BriaPipeline's ``__init__`` puts it."""
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_bria_folder(directory)
    bria = load_one_text_folder(Bria, directory, index, sched, diffusers.BriaTransformer2DModel, "T5EncoderModel",
                                device, dtype, progress, "joint_attention_dim", "d_model", "the T5 encoder's width")
    if bria.vae.config.shift_factor is None and bria.vae.dtype != torch.float32:
        bria.vae.to(torch.float32)
    return bria


def text_to_image(bria: Bria, prompts: Union[str, Sequence[str]], *, normalize: bool = False,
                  clip_value: Optional[float] = None, **options) -> torch.Tensor:
    """Images of a Bria 3.2 folder for ``prompts`` as ``BriaPipeline`` (module docstring) with any diffkit sampler:
    :func:`.chroma.text_to_image`'s loop with Bria's prompts, network and sigmas.

    sampler / grid: both None: the pipeline's loop, flow Euler (``ddim``) on its sigmas (30 steps by default);
    otherwise as :func:`.flux.text_to_image`. guidance_scale (default 5.0, diffusers' convention unless
    ``convention="seed"``) / negative_prompt: :meth:`Bria.prompt_guidance`. latents: unpacked z at s = 1
    (B, C, h, w) (the pipeline's ``latents=`` is :func:`.flux.pack_latents` of it), default N(0, I) from per-sample
    ``seed + i``; height / width: default 128 f (1024), multiples of 2 f; max_sequence_length (default 128);
    normalize / clip_value: the pipeline's options (off by default; :class:`BriaGuidedNet`; normalize needs CFG).
    output_range, return_latents; the rest: passed to :func:`diffkit.sample`."""
    from .chroma import text_to_image as flow_text_to_image
    return flow_text_to_image(bria, prompts, guide={"normalize": normalize, "clip_value": clip_value}, **options)


__all__ = ["Bria", "BriaNet", "BriaGuidedNet", "load_bria", "is_bria_folder", "check_bria_folder", "original_sigmas",
           "text_to_image", "BRIA_GUIDANCE", "BRIA_STEPS"]
