"""A Krea 2 diffusers folder (``Krea2Pipeline``, diffusers 0.42.1), sampled with any diffkit sampler.

Krea 2 (Krea AI 2026) is a rectified flow (Esser et al. 2024, Sec. 2, eq. 1: x_s = (1 - s) x_0 + s eps, velocity
u = eps - x_0) with a single-stream MMDiT (``Krea2Transformer2DModel``) on Qwen-Image's latents
(``AutoencoderKLQwenImage``), conditioned on a stack of hidden states of a Qwen3-VL language model
(``Qwen3VLModel``). diffkit runs it as a :class:`.qwen_image.QwenImage` (the VAE's per-channel normalisation and
one-frame decoding, f = 2^len(temperal_downsample), FLUX.1's 2 x 2 packing :func:`.flux.pack_latents` and its
random draw: the pipeline's (B, C, h, w) ``randn`` packed; the grid ``set_timesteps(sigmas=linspace(1, 1/N, N),
mu)``, :meth:`.flux.Flux.scheduler_grid`) with Chroma's CFG code (:meth:`.chroma.Chroma.prompt_guidance`). What is
Krea 2's own, as ``Krea2Pipeline`` does it:

* prompts (``get_text_hidden_states``): Qwen-Image's chat template (:data:`.qwen_image.PROMPT_TEMPLATE`) split at
  the prompt: ``prefix + prompt`` tokenised padded (right) / truncated to ``max_sequence_length`` + 34 - 5 tokens,
  then the assistant suffix's tokens appended *after* the padding; the text positions count real tokens only
  (``cumsum(mask) - 1``, the same on the three mRoPE axes); the hidden states of ``text_encoder_select_layers``
  (model_index.json; 0 = the embeddings) stacked per token (B, L, n, d); the first 34 tokens (the system part)
  dropped; the boolean mask kept (padding in the middle): the transformer's key mask.
* the transformer call: packed latents, ``timestep`` t / 1000 (the sigma), ``position_ids`` (0, 0, 0) for the text
  and (0, row, column) for the image tokens, ``encoder_attention_mask``.
* mu: FLUX.1's ``calculate_shift`` of the packed length with the scheduler's keys (:meth:`.flux.Flux.mu`), or a
  fixed 1.15 for ``is_distilled`` (model_index.json: the few-step TDM checkpoint).
* guidance: u = u_c + g (u_c - u_neg) for g > 0 (``guidance_scale``, default 4.5), i.e. diffusers' CFG with
  s = 1 + g: diffkit's ``seed`` convention (W = g); diffkit's default is s = 5.5 in diffusers' convention (the
  same). The negative prompt defaults to "" (encoded as the prompts, its own mask); g <= 0 (s <= 1): unguided.
  No normalisation, no prompt rewriting (the pipeline has none).
* defaults: 28 steps, 1024 x 1024 pixels (whatever f; sides multiples of 2 f), ``max_sequence_length`` 512.

Refused in one line before any weight is read (:func:`check_krea2_folder`): another pipeline class, a missing
component or one of another class, a ``patch_size`` other than 2, a transformer whose ``in_channels`` is not 4 x
the VAE's ``z_dim``, select layers that are not ``num_text_layers`` indices into the text encoder's hidden states,
a text width other than the transformer's ``text_hidden_dim``, a scheduler option the flow Euler loop does not take.
LoRA files: those the pipeline's ``Krea2LoraLoaderMixin`` loads (:mod:`.krea2_lora`: diffusers / PEFT keys and the
original krea-2 / ai-toolkit names it converts), fused into the transformer as ``load_lora_weights`` + ``fuse_lora``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, read_json_object
from . import model_dtype, require
from .chroma import Chroma
from .flux import Flux, latent_image_ids, pack_latents, unpack_latents
from .qwen_image import PROMPT_TEMPLATE, TEMPLATE_DROP, QwenImage

PIPELINE = "Krea2Pipeline"
TRANSFORMER = "Krea2Transformer2DModel"
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
CLASSES = {"transformer": (TRANSFORMER,), "vae": ("AutoencoderKLQwenImage",), "text_encoder": ("Qwen3VLModel",),
           "tokenizer": ("Qwen2Tokenizer", "Qwen2TokenizerFast"), "scheduler": ("FlowMatchEulerDiscreteScheduler",)}
KREA2_STEPS, KREA2_GUIDANCE, KREA2_SIZE = 28, 4.5, 1024  # the pipeline's defaults (guidance: seed convention)
SELECT_LAYERS = (2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 32, 35)  # its default text_encoder_select_layers
SUFFIX_TOKENS = 5  # its prompt_template_encode_num_suffix_tokens (the padded block is L + 34 - 5 long)
DISTILLED_MU = 1.15  # its fixed mu for is_distilled
PREFIX, SUFFIX = PROMPT_TEMPLATE.split("{}")


class Krea2Net(torch.nn.Module):
    """``net(z, t, context, mask)`` over a ``Krea2Transformer2DModel`` on unpacked latents z (B, C, h, w): packed,
    ``timestep`` t / 1000, the stacked text states ``context`` (B, L, n, d) with their boolean ``mask`` (B, L),
    ``position_ids`` (text zeros, then the patch grid's (0, row, column)); the velocity unpacked, in z's dtype."""

    def __init__(self, transformer):
        super().__init__()
        self.model = transformer

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None,
                mask: torch.Tensor = None) -> torch.Tensor:
        if context is None or mask is None:
            raise DiffkitError("a Krea 2 transformer needs cond {'context', 'mask'} (Krea2.encode_prompts)")
        dtype, (b, _, h, w) = model_dtype(self.model), x.shape
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(b)
        ids = torch.cat([torch.zeros(context.shape[1], 3, device=x.device), latent_image_ids(h, w, x.device)])
        out = self.model(hidden_states=pack_latents(x.to(dtype)), timestep=t.to(dtype) / 1000,
                         encoder_hidden_states=context.to(dtype).expand(b, -1, -1, -1), position_ids=ids,
                         encoder_attention_mask=mask.to(x.device).bool().expand(b, -1), return_dict=False)[0]
        return unpack_latents(out, h, w).to(x.dtype)


@dataclass
class Krea2(QwenImage):
    """The loaded components of a Krea 2 folder (:func:`load_krea2`): Qwen-Image's fields (the Qwen3-VL model as
    ``text_encoder``), ``layers`` (``text_encoder_select_layers``) and ``distilled`` (``is_distilled``) of
    model_index.json; Qwen-Image's VAE code, FLUX.1's packing and grid, Chroma's CFG (module docstring)."""

    layers: tuple = SELECT_LAYERS
    distilled: bool = False
    guidance_hint = f"CFG for > 1, the pipeline's default {KREA2_GUIDANCE} in the seed convention"
    default_steps = KREA2_STEPS
    default_image_size = KREA2_SIZE  # 1024 pixels whatever the VAE factor (the pipeline's height / width)
    default_guidance = 1 + KREA2_GUIDANCE  # diffusers' convention

    def mu(self, h: int, w: int, steps: Optional[int] = None) -> float:
        """1.15 for a distilled checkpoint, else FLUX.1's ``calculate_shift`` (:meth:`.flux.Flux.mu`)."""
        return DISTILLED_MU if self.distilled else Flux.mu(self, h, w, steps)

    def network(self) -> torch.nn.Module:
        return Krea2Net(self.transformer)

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: int = 512) -> tuple:
        """(context (B, L, n, d), mask (B, L) bool) as ``get_text_hidden_states`` (module docstring), L =
        ``max_sequence_length`` + the suffix's tokens - 5 (``max_sequence_length`` for Qwen's tokenizer)."""
        from .stable_diffusion import prompt_list
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int) \
                or max_sequence_length < 1:
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed; give a positive "
                               f"integer (Krea2Pipeline's fixed text length)")
        texts = [PREFIX + p for p in prompt_list(prompts)]
        tokens = self.tokenizer(texts, truncation=True, padding="max_length", return_tensors="pt",
                                max_length=max_sequence_length + TEMPLATE_DROP - SUFFIX_TOKENS)
        suffix = self.tokenizer([SUFFIX] * len(texts), return_tensors="pt")
        ids = torch.cat([tokens.input_ids, suffix.input_ids], dim=1).to(self.device)
        mask = torch.cat([tokens.attention_mask, suffix.attention_mask], dim=1).to(self.device).bool()
        positions = (mask.long().cumsum(dim=-1) - 1).clamp(min=0).unsqueeze(0).expand(3, -1, -1)
        with torch.no_grad():
            out = self.text_encoder(input_ids=ids, attention_mask=mask, position_ids=positions,
                                    output_hidden_states=True)
        states = torch.stack([out.hidden_states[i] for i in self.layers], dim=2)
        return states[:, TEMPLATE_DROP:], mask[:, TEMPLATE_DROP:]

    def prompt_guidance(self, prompts, h: int, w: int, guidance_scale: Optional[float] = None,
                        negative_prompt=None, max_sequence_length: int = 512, convention: str = "diffusers",
                        ip_adapter=None) -> tuple:
        """:meth:`.chroma.Chroma.prompt_guidance` (CFG for s > 1 against ``negative_prompt``, default "";
        s = 1 + g for Krea's g: ``convention="seed"``); ``ip_adapter``: refused (the pipeline loads none)."""
        if ip_adapter is not None:
            raise DiffkitError("an IP-Adapter is not allowed for a Krea 2 folder (Krea2Pipeline loads none)")
        return Chroma.prompt_guidance(self, prompts, h, w, guidance_scale, negative_prompt, max_sequence_length,
                                      convention)


def is_krea2_folder(path: Union[str, Path]) -> bool:
    """True for a folder whose ``model_index.json`` names a ``Krea2...`` pipeline or its transformer."""
    from .flow_latents import names_pipeline
    return names_pipeline(path, "Krea2", TRANSFORMER)


def check_krea2_folder(directory) -> tuple:
    """(index, scheduler config, select layers) of a Krea 2 folder, checked from its JSON alone (module
    docstring)."""
    from .flux import check_flux_scheduler
    from .pixart import check_classes, named_index
    directory = Path(directory)
    index = named_index(directory, (PIPELINE,), "Krea 2")
    check_classes(directory, index, REQUIRED, "Krea 2", CLASSES)
    if index.get("patch_size", 2) != 2:
        raise DiffkitError(f"{directory}'s model_index.json has patch_size={index['patch_size']!r}; allowed: 2 "
                           f"(the 2 x 2 packing)")
    config = read_json_object(directory / "transformer" / "config.json", "transformer config")
    z_dim = int(read_json_object(directory / "vae" / "config.json", "vae config").get("z_dim", 16))
    if config.get("in_channels", 64) != 4 * z_dim:
        raise DiffkitError(f"{directory}'s transformer has in_channels={config.get('in_channels', 64)!r}; allowed: "
                           f"{4 * z_dim} (4 x the VAE's z_dim)")
    text = read_json_object(directory / "text_encoder" / "config.json", "text encoder config").get("text_config", {})
    layers = tuple(index.get("text_encoder_select_layers") or SELECT_LAYERS)
    depth, count = int(text.get("num_hidden_layers", 32)), int(config.get("num_text_layers", 12))
    if len(layers) != count or not all(isinstance(k, int) and 0 <= k <= depth for k in layers):
        raise DiffkitError(f"{directory}'s text_encoder_select_layers={list(layers)!r} is not allowed; give "
                           f"{count} (the transformer's num_text_layers) indices in 0..{depth}")
    if text.get("hidden_size", 4096) != config.get("text_hidden_dim", 2560):
        raise DiffkitError(f"{directory}: the transformer's text_hidden_dim={config.get('text_hidden_dim', 2560)} "
                           f"does not fit the text encoder's hidden size {text.get('hidden_size', 4096)}")
    return index, check_flux_scheduler(directory, PIPELINE), layers


def load_krea2(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
               progress: bool = True, lora=None) -> Krea2:
    """Load a Krea 2 diffusers folder (never downloads, never unpickles); what diffkit does not drive is refused in
    one line before any weight is read (:func:`check_krea2_folder`). ``lora``: LoRA files (paths or (path, scale)
    pairs) in the layouts ``Krea2LoraLoaderMixin`` loads, read and checked first
    (:func:`.krea2_lora.read_krea2_loras`), fused as ``load_lora_weights`` + ``fuse_lora(lora_scale=scale)``
    (:func:`.sd_lora.merge_sd_loras`)."""
    from .flow_latents import frozen_on, load_flow_parts
    from .krea2_lora import read_krea2_loras
    from .sd_lora import merge_sd_loras
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched, layers = check_krea2_folder(directory)
    loras = read_krea2_loras(lora) if lora else []
    parts = load_flow_parts(directory, index, diffusers.Krea2Transformer2DModel, {"": "Qwen3VLModel"}, dtype,
                            progress, vae_cls=diffusers.AutoencoderKLQwenImage)
    device = frozen_on(parts, device)
    model = Krea2(**parts, text_encoder_2=None, tokenizer_2=None, scheduler_config=sched, device=device, dtype=dtype,
                  layers=layers, distilled=bool(index.get("is_distilled", False)))
    merge_sd_loras(model, loras)
    return model


def text_to_image(model: Krea2, prompts: Union[str, Sequence[str]], *, ip_adapter=None, **options) -> torch.Tensor:
    """Images of a Krea 2 folder for ``prompts`` as ``Krea2Pipeline`` (module docstring) with any diffkit sampler:
    :func:`.chroma.text_to_image` (sampler / grid both None: flow Euler on the pipeline's sigmas, 28 steps;
    guidance_scale (default 5.5 in diffusers' convention = the pipeline's 4.5 with ``convention="seed"``) /
    negative_prompt; latents: unpacked z (B, C, h, w), the pipeline's draw before packing; height / width: default
    1024; max_sequence_length (default 512); output_range, return_latents)."""
    from .chroma import text_to_image as flow_text_to_image
    if ip_adapter is not None:
        raise DiffkitError("an IP-Adapter is not allowed for a Krea 2 folder (Krea2Pipeline loads none)")
    return flow_text_to_image(model, prompts, **options)


__all__ = ["Krea2", "Krea2Net", "load_krea2", "is_krea2_folder", "check_krea2_folder", "text_to_image",
           "KREA2_STEPS", "KREA2_GUIDANCE"]
