"""An ERNIE-Image diffusers folder (``ErnieImagePipeline``, diffusers 0.42.1), sampled with any diffkit sampler.

ERNIE-Image (Baidu 2025) is a rectified flow (Esser et al. 2024, Sec. 2, eq. 1: x_s = (1 - s) x_0 + s eps,
velocity u = eps - x_0) with a single-stream ``ErnieImageTransformer2DModel`` on FLUX.2's latents. diffkit runs it
as a :class:`.flux2.Flux2` (its latents, decoding, size rules, scheduler grid and CFG code); what is ERNIE-Image's
own, as ``ErnieImagePipeline`` does it:

* latents: FLUX.2's (:mod:`.flux2`): z is the pipeline's ``randn`` draw (B, in_channels, H / 2f, W / 2f), the
  ``AutoencoderKLFlux2``'s latents 2 x 2-patchified and normalised by its batch norm; the transformer takes that
  layout itself (image tokens h w, RoPE ids (text length, row, column); text ids (l, 0, 0)).
* decoding: :meth:`.flux2.Flux2.decode` with the batch norm's eps fixed at 1e-5 (the pipeline ignores the VAE's
  ``batch_norm_eps``), unpatchified, ``vae.decode``.
* prompts (:meth:`ErnieImage.encode_prompts`): each prompt tokenised alone (special tokens, no chat template, no
  padding, truncated to the tokenizer's ``model_max_length``; an empty one is the BOS token), the ``Mistral3Model``'s
  second-to-last hidden state (``hidden_states[-2]``) of it, the rows zero-padded to the longest with their lengths
  (``text_lens``: the transformer's attention mask and the image tokens' first RoPE id).
* schedule: the pipeline's ``set_timesteps(sigmas=linspace(1, 0, N + 1)[:-1])`` (FLUX's linspace(1, 1/N, N),
  :meth:`.flux.Flux.input_sigmas`) with no mu: the scheduler's fixed ``shift`` (a ``use_dynamic_shifting``
  scheduler is refused: the pipeline fails on it); the transformer's timestep is s T (T = 1000). A diffkit
  sampler's own grid takes the same shift.
* guidance: classifier-free, u = u_neg + s (u_c - u_neg) (Ho & Salimans 2022, eq. 6 in diffusers' convention) for
  s > 1 (default 4.0) against ``negative_prompt`` (default "", the pipeline's), unguided for s <= 1.
* defaults: 50 steps, 1024 x 1024 pixels (sides multiples of 2 f).

Not done: the pipeline's prompt enhancement (``use_pe``, on by default there when the folder has its ``pe``
``Ministral3ForCausalLM``: it *generates* a rewritten prompt by sampling); diffkit encodes the prompt as given, i.e.
``use_pe=False`` (a folder's ``pe`` / ``pe_tokenizer`` are not loaded).

LoRA files: those the pipeline's ``ErnieImageLoraLoaderMixin`` loads (:mod:`.ernie_image_lora`), fused into the
transformer as ``load_lora_weights`` + ``fuse_lora(lora_scale=scale)``.

Refused in one line before any weight is read (:func:`check_ernie_image_folder`): another pipeline class, a
missing component, a transformer / VAE / text encoder / scheduler of another class, a transformer whose channels
are not 4 x the VAE's latent channels or whose ``patch_size`` is not 1, ``invert_sigmas`` / ``stochastic_sampling``
/ ``use_dynamic_shifting`` schedulers; after loading, a text encoder whose width is not the transformer's
``text_in_dim``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from . import model_dtype, require
from .flux2 import Flux2, check_patched_channels, stacked_states

PIPELINE = "ErnieImagePipeline"
TRANSFORMER = "ErnieImageTransformer2DModel"
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
ERNIE_STEPS, ERNIE_GUIDANCE, ERNIE_SIZE = 50, 4.0, 1024  # the pipeline's defaults
BN_EPS = 1e-5  # the pipeline's batch-norm eps when decoding (not the VAE config's batch_norm_eps)


class ErnieImageNet(torch.nn.Module):
    """``net(z, t, context, lens)`` over an ``ErnieImageTransformer2DModel``: z (B, C, h, w) as it is, ``timestep``
    t (= s T) per sample, ``text_bth`` the zero-padded states ``context`` (B, L, d) and ``text_lens`` ``lens``
    (B,); the velocity back in z's dtype."""

    def __init__(self, transformer):
        super().__init__()
        self.model = transformer

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None,
                lens: torch.Tensor = None) -> torch.Tensor:
        if context is None or lens is None:
            raise DiffkitError("an ERNIE-Image transformer needs cond {'context', 'lens'} (ErnieImage.text_cond)")
        dtype, b = model_dtype(self.model), x.shape[0]
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(b)
        out = self.model(hidden_states=x.to(dtype), timestep=t.to(dtype), text_bth=context.to(dtype),
                         text_lens=lens.to(x.device), return_dict=False)[0]
        return out.to(x.dtype)


@dataclass
class ErnieImage(Flux2):
    """The loaded components of an ERNIE-Image folder (:func:`load_ernie_image`): :class:`.flux2.Flux2`'s fields;
    its CFG is Flux2KleinPipeline's (:meth:`.flux2.Flux2.prompt_guidance`), with :meth:`text_cond`'s lengths."""

    pipeline: str = PIPELINE
    bn_eps = BN_EPS
    default_image_size = ERNIE_SIZE
    default_steps = ERNIE_STEPS  # (diffkit sample's, ..commands._chroma)
    max_sequence_length = None  # no text length: the prompt's own tokens

    @property
    def klein(self) -> bool:
        """True: real CFG with a negative prompt, as Flux2KleinPipeline's (no embedded guidance)."""
        return True

    def mu(self, h: int, w: int, steps: Optional[int] = None):
        """None: the pipeline passes no mu (the scheduler's fixed shift; dynamic shifting is refused)."""
        return None

    def network(self) -> torch.nn.Module:
        return ErnieImageNet(self.transformer)

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length=None) -> list:
        """[(L_i, d)] in the transformer's dtype: each prompt's ``hidden_states[-2]`` (module docstring;
        ``ErnieImagePipeline.encode_prompt``). ``max_sequence_length``: None only (the pipeline has none)."""
        from .stable_diffusion import prompt_list
        if max_sequence_length is not None:
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed for an ERNIE-Image folder "
                               f"(ErnieImagePipeline encodes each prompt's own tokens); drop it")
        states = []
        for prompt in prompt_list(prompts):
            ids = self.tokenizer(prompt, add_special_tokens=True, truncation=True, padding=False)["input_ids"]
            ids = ids or [self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else 0]
            ids = torch.tensor([ids], device=self.device)
            hidden = stacked_states(self.text_encoder, ids, torch.ones_like(ids), (-2,))[0]
            states.append(hidden.to(model_dtype(self.transformer)))
        return states

    def text_cond(self, prompts: Sequence[str], max_sequence_length=None) -> dict:
        """{"context": (B, L, d) zero-padded :meth:`encode_prompts`, "lens": (B,) their lengths} (``_pad_text``)."""
        return padded_states(self.encode_prompts(prompts, max_sequence_length), self.device)


def padded_states(states: Sequence[torch.Tensor], device, left: bool = False) -> dict:
    """{"context": (B, L, d) the rows (L_i, d) zero-padded to the longest (``left``: the padding before them,
    Ideogram 4's), "lens": (B,) their lengths} (ErnieImagePipeline's ``_pad_text``)."""
    lens = torch.tensor([s.shape[0] for s in states], device=device)
    context = states[0].new_zeros(len(states), int(lens.max()), states[0].shape[1])
    for i, s in enumerate(states):
        context[i, slice(context.shape[1] - s.shape[0], None) if left else slice(0, s.shape[0])] = s
    return {"context": context, "lens": lens}


def is_ernie_image_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names an ``ErnieImage...`` pipeline or its transformer."""
    from .flow_latents import names_pipeline
    return names_pipeline(path, "ErnieImage", TRANSFORMER)


def check_ernie_image_folder(directory) -> tuple:
    """(index, scheduler config) of an ERNIE-Image folder, checked from its JSON alone (module docstring)."""
    from .flux import check_flux_scheduler
    from .pixart import check_classes, named_index
    directory = Path(directory)
    index = named_index(directory, (PIPELINE,), "ERNIE-Image")
    check_classes(directory, index, REQUIRED, "ERNIE-Image", {
        "transformer": (TRANSFORMER,), "vae": ("AutoencoderKLFlux2",), "text_encoder": ("Mistral3Model",),
        "scheduler": ("FlowMatchEulerDiscreteScheduler",)})
    check_patched_channels(directory)
    return index, check_flux_scheduler(directory, PIPELINE, fixed_shift=True)


def load_ernie_image(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                     progress: bool = True, lora=None) -> ErnieImage:
    """Load an ERNIE-Image diffusers folder (never downloads, never unpickles; its ``pe`` prompt enhancer is not
    loaded); what diffkit does not drive is refused in one line before any weight is read. ``lora``: LoRA files
    (paths or (path, scale) pairs) in the layouts ``ErnieImageLoraLoaderMixin`` loads, read and checked first
    (:func:`.ernie_image_lora.read_ernie_image_loras`), fused as ``load_lora_weights`` +
    ``fuse_lora(lora_scale=scale)`` (:func:`.sd_lora.merge_sd_loras`)."""
    from .ernie_image_lora import read_ernie_image_loras
    from .flow_latents import frozen_on, load_flow_parts
    from .sd_lora import merge_sd_loras
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_ernie_image_folder(directory)
    loras = read_ernie_image_loras(lora) if lora else []
    parts = load_flow_parts(directory, index, diffusers.ErnieImageTransformer2DModel, {"": "Mistral3Model"}, dtype,
                            progress, vae_cls=diffusers.AutoencoderKLFlux2)
    device = frozen_on(parts, device)
    model = ErnieImage(**parts, text_encoder_2=None, tokenizer_2=None, scheduler_config=sched, device=device,
                       dtype=dtype)
    text = parts["text_encoder"].config
    width, need = getattr(text, "text_config", text).hidden_size, model.transformer.config.text_in_dim
    if width != need:
        raise DiffkitError(f"{directory}: the transformer's text_in_dim={need} does not fit the text encoder's "
                           f"hidden size {width}")
    merge_sd_loras(model, loras)
    return model


def text_to_image(model: ErnieImage, prompts: Union[str, Sequence[str]], *, max_sequence_length=None,
                  **options) -> torch.Tensor:
    """Images of an ERNIE-Image folder for ``prompts`` as ``ErnieImagePipeline(use_pe=False)`` with any diffkit
    sampler: :func:`.flux2.text_to_image` (sampler / grid / steps, guidance_scale / negative_prompt / convention,
    seed / latents (the pipeline's (B, in_channels, H / 2f, W / 2f) draw), height / width (default 1024),
    output_range, return_latents (z_0 in that layout: ``output_type="latent"``)). ``max_sequence_length``: None
    only."""
    from .flux2 import text_to_image as flux2_text_to_image
    for name in ("references", "ip_adapter"):  # (diffkit sample passes ip_adapter=None)
        if options.pop(name, None) is not None:
            raise DiffkitError(f"{name} is not allowed for an ERNIE-Image folder (ErnieImagePipeline takes none); "
                               f"drop it")
    if max_sequence_length is not None:
        model.encode_prompts([], max_sequence_length)  # its one-line refusal
    return flux2_text_to_image(model, prompts, max_sequence_length=None, **options)


__all__ = ["ErnieImage", "ErnieImageNet", "load_ernie_image", "is_ernie_image_folder", "check_ernie_image_folder",
           "text_to_image"]
