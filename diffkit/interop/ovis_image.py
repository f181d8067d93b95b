"""An Ovis-Image diffusers folder (``OvisImagePipeline``, diffusers 0.42.1), sampled with any diffkit sampler.

Ovis-Image (AIDC-AI 2025) is FLUX.1's rectified-flow MMDiT (:mod:`.flux`; Esser et al. 2024, Sec. 2, eq. 1:
x_s = (1 - s) x_0 + s eps, velocity u = eps - x_0) with the pooled-CLIP and guidance embedders dropped, a Qwen3 text
encoder (``Qwen3Model``) whose states pass an RMSNorm before the context projection (``context_embedder_norm``),
SwiGLU feed-forwards, and real classifier-free guidance. diffkit runs it as a :class:`.chroma.Chroma` (so FLUX.1's
2 x 2 latent packing and image ids, 16-channel VAE with ``shift_factor``, grid: sigmas linspace(1, 1/N, N) shifted
with mu = ``calculate_shift`` of the packed sequence length, :meth:`.flux.Flux.scheduler_grid`, the random draw of
z (B, C, h, w), and :func:`.chroma.text_to_image`'s loop). What is Ovis-Image's own:

* prompts (``_get_ovis_prompt_embeds``): each prompt becomes the tokenizer's chat template of **one user message**
  ``SYSTEM_PROMPT + prompt`` (``apply_chat_template(add_generation_prompt=True, enable_thinking=False)``), tokenised
  without special tokens to L + 28 tokens (L = ``max_sequence_length``, default 256, at most 256; padding as the
  tokenizer pads), encoded by Qwen3 under that mask; its **last** hidden states multiplied by the mask (padding
  states zero) and the first 28 tokens (``user_prompt_begin_id``: the template's head and the system prompt with
  Qwen's own tokenizer) dropped: (B, L, d). The transformer gets no text mask: it attends to the zeroed padding too.
* the transformer call: FLUX.1's packed latents, ``timestep`` t / 1000, ``img_ids`` (0, row, column); the text's
  ``txt_ids`` are **(0, i, i)** for token i (FLUX.1's are zeros): :func:`ovis_text_ids`.
* guidance: u = u_neg + s (u_c - u_neg) (Ho & Salimans 2022, eq. 6 in diffusers' convention) for s > 1 (default
  5.0), the negative prompt (default "") encoded as the prompt; s <= 1: the conditional call alone.
* defaults: 50 steps, 1024 x 1024 (128 f).

Not in diffusers 0.42.1, so refused in one line: img2img / inpainting (no Ovis-Image img2img pipeline), LoRA files
(the pipeline has no ``load_lora_weights``), textual inversions, IP-Adapters. Refused before any weight is read: a
transformer / VAE / scheduler of another class, a transformer whose input is not 4 x the VAE's latent channels or
whose ``patch_size`` is not 1 (the pipeline packs 2 x 2 itself), the scheduler options FLUX.1's loop refuses.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from . import require
from .chroma import Chroma
from .flux import FluxNet

OVIS_IMAGE_TRANSFORMER = "OvisImageTransformer2DModel"
OVIS_IMAGE_PIPELINE = "OvisImagePipeline"
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
OVIS_IMAGE_GUIDANCE = 5.0  # the pipeline's default guidance_scale (diffusers' CFG s)
OVIS_IMAGE_STEPS = 50  # its default num_inference_steps
MAX_SEQUENCE_LENGTH = 256  # its default max_sequence_length, and the most check_inputs takes
USER_PROMPT_BEGIN = 28  # its user_prompt_begin_id: the template tokens dropped from the front
SYSTEM_PROMPT = ("Describe the image by detailing the color, quantity, text, shape, size, texture, spatial "
                 "relationships of the objects and background: ")  # its system_prompt, prefixed to every prompt


def ovis_text_ids(length: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(length, 3) rotary ids (0, i, i) of text token i (``_prepare_prompt_embeds``'s ``text_ids``)."""
    ids = torch.zeros(length, 3)
    ids[:, 1:] = torch.arange(length, dtype=ids.dtype)[:, None]
    return ids.to(device=device, dtype=dtype)


class OvisImageNet(FluxNet):
    """``net(z, t, context, mask=None)`` over an ``OvisImageTransformer2DModel`` on unpacked latents z (B, C, h, w):
    :meth:`.flux.FluxNet.packed_inputs` with :func:`ovis_text_ids`; ``mask`` (the prompts' kept tokenizer mask, in
    cond as Chroma's guidance carries it) is not passed: the transformer takes none (the padding states are zero)."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None,
                mask: torch.Tensor = None) -> torch.Tensor:
        from .flux import unpack_latents
        if context is None:
            raise DiffkitError("an Ovis-Image transformer needs cond {'context'} (OvisImage.encode_prompts)")
        inputs = self.packed_inputs(x, t, context)
        inputs["txt_ids"] = ovis_text_ids(context.shape[1], x.device, inputs["txt_ids"].dtype)
        out = self.model(**inputs, return_dict=False)[0]
        return unpack_latents(out, *x.shape[2:]).to(x.dtype)


@dataclass
class OvisImage(Chroma):
    """The loaded components of an Ovis-Image folder (:func:`load_ovis_image`): :class:`.chroma.Chroma`'s (FLUX.1's
    shapes, grid, VAE; Chroma's CFG) with the Qwen3 model as ``text_encoder`` and Ovis-Image's prompts and ids."""

    default_steps = OVIS_IMAGE_STEPS
    max_sequence_length = MAX_SEQUENCE_LENGTH

    def network(self) -> torch.nn.Module:
        return OvisImageNet(self.transformer)

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> tuple:
        """(context (B, L, d), mask (B, L)) as ``_get_ovis_prompt_embeds`` (module docstring): the chat template of
        :data:`SYSTEM_PROMPT` + prompt, L + 28 tokens, Qwen3's last states times the mask, the first 28 dropped."""
        from .stable_diffusion import prompt_list
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int) \
                or not 1 <= max_sequence_length <= MAX_SEQUENCE_LENGTH:
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed; allowed: "
                               f"1..{MAX_SEQUENCE_LENGTH} (OvisImagePipeline's check_inputs)")
        texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": SYSTEM_PROMPT + text}],
                                                    tokenize=False, add_generation_prompt=True, enable_thinking=False)
                 for text in prompt_list(prompts)]
        tokens = self.tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt",
                                max_length=max_sequence_length + USER_PROMPT_BEGIN, add_special_tokens=False)
        mask = tokens.attention_mask.to(self.device)
        with torch.no_grad():
            states = self.text_encoder(input_ids=tokens.input_ids.to(self.device), attention_mask=mask)
        context = states.last_hidden_state * mask[..., None]
        return context[:, USER_PROMPT_BEGIN:], mask[:, USER_PROMPT_BEGIN:]

    def prompt_guidance(self, prompts, h: int, w: int, guidance_scale: Optional[float] = None,
                        negative_prompt=None, max_sequence_length: int = MAX_SEQUENCE_LENGTH,
                        convention: str = "diffusers", ip_adapter=None) -> tuple:
        """:meth:`.chroma.Chroma.prompt_guidance` (CFG s > 1, default 5.0, against ``negative_prompt``, default "")
        with Ovis-Image's prompts; ``ip_adapter``: refused (the pipeline takes none)."""
        if ip_adapter is not None:
            raise DiffkitError("OvisImagePipeline takes no IP-Adapter; drop it")
        return super().prompt_guidance(prompts, h, w, guidance_scale, negative_prompt, max_sequence_length,
                                       convention)


def is_ovis_image_folder(path: Union[str, Path]) -> bool:
    """True for a diffusers folder whose ``model_index.json`` names an ``OvisImage...`` pipeline or an
    ``OvisImageTransformer2DModel`` transformer."""
    from .flow_latents import names_pipeline
    return names_pipeline(path, "OvisImage", OVIS_IMAGE_TRANSFORMER)


def check_ovis_image_folder(directory) -> tuple:
    """(model_index dict, scheduler config) of an Ovis-Image folder that :func:`load_ovis_image` drives, from its
    JSON alone; a one-line DiffkitError for what diffkit does not drive (module docstring)."""
    from .flow_latents import check_flow_configs
    from .flux import check_flux_scheduler
    from .sd_xl import _index
    directory = Path(directory)
    index = _index(directory)
    name = None if index is None else index.get("_class_name")
    if name != OVIS_IMAGE_PIPELINE:
        raise DiffkitError(f"{directory} is a {name!r} folder, which diffkit does not drive here; allowed: "
                           f"{OVIS_IMAGE_PIPELINE}")
    vae, transformer = check_flow_configs(directory, index, REQUIRED, "Ovis-Image", OVIS_IMAGE_TRANSFORMER)
    latents = int(vae.get("latent_channels", 4))
    for key, default in (("in_channels", 64), ("out_channels", 64)):
        if transformer.get(key, default) not in ((4 * latents,) if key == "in_channels" else (None, 4 * latents)):
            raise DiffkitError(f"{directory}'s transformer has {key}={transformer.get(key, default)!r}; allowed: "
                               f"{4 * latents} (4 x the VAE's latent channels: OvisImagePipeline packs 2 x 2)")
    if transformer.get("patch_size", 1) != 1:
        raise DiffkitError(f"{directory}'s transformer has patch_size={transformer['patch_size']!r}; allowed: 1 "
                           f"(OvisImagePipeline packs the latents 2 x 2 itself)")
    return index, check_flux_scheduler(directory, OVIS_IMAGE_PIPELINE)


def load_ovis_image(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                    progress: bool = True) -> OvisImage:
    """Load an Ovis-Image diffusers folder (never downloads, never unpickles); what diffkit does not drive is refused
    in one line before any weight is read (:func:`check_ovis_image_folder`)."""
    from .flow_latents import load_one_text_folder
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_ovis_image_folder(directory)
    return load_one_text_folder(OvisImage, directory, index, sched, diffusers.OvisImageTransformer2DModel,
                                "Qwen3Model", device, dtype, progress, "joint_attention_dim")


def text_to_image(model: OvisImage, prompts: Union[str, Sequence[str]], *,
                  max_sequence_length: int = MAX_SEQUENCE_LENGTH, **options) -> torch.Tensor:
    """Images of an Ovis-Image folder for ``prompts`` as ``OvisImagePipeline``: :func:`.chroma.text_to_image`
    (sampler / grid, steps (default 50), ``guidance_scale`` (CFG s, default 5.0, diffusers' convention unless
    ``convention="seed"``), ``negative_prompt``, latents (B, C, h, w), height / width (default 128 f), output
    options) with Ovis-Image's prompts (``max_sequence_length`` default 256)."""
    from .chroma import text_to_image as chroma_text_to_image
    return chroma_text_to_image(model, prompts, max_sequence_length=max_sequence_length, **options)


def image_to_image(model, *_, **__):
    """Refused: diffusers 0.42.1 has no Ovis-Image img2img or inpainting pipeline."""
    raise DiffkitError("diffusers 0.42.1 has no img2img or inpainting pipeline for Ovis-Image (OvisImagePipeline "
                       "only samples); sample it with diffkit sample")


__all__ = ["OvisImage", "OvisImageNet", "load_ovis_image", "is_ovis_image_folder", "check_ovis_image_folder",
           "ovis_text_ids", "text_to_image", "image_to_image", "OVIS_IMAGE_GUIDANCE", "OVIS_IMAGE_STEPS",
           "SYSTEM_PROMPT"]
