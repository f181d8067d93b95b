"""FLUX.1 Redux (diffusers 0.42.1 ``FluxPriorReduxPipeline``, FLUX.1-Redux-dev): an image turned into extra prompt
tokens for a FLUX.1 folder (:mod:`.flux`), which then samples as ``FluxPipeline(prompt_embeds=...,
pooled_prompt_embeds=...)`` with any diffkit sampler.

The prior (Black Forest Labs 2024, "FLUX.1 Tools") encodes each image with a SigLIP vision tower
(``SiglipVisionModel``, its ``last_hidden_state`` after the ``SiglipImageProcessor``: N patch tokens of width D) and
maps every token to the T5 width with ``ReduxImageEncoder``: e = W_down silu(W_up v + b_up) + b_down. For images
k = 1..K with prompt embeddings (T_k, p_k) and scales (a_k, b_k) (``prompt_embeds_scale``,
``pooled_prompt_embeds_scale``, default 1) the pipeline returns one conditioning

    context = sum_k a_k [T_k ; e_k]   (1, 512 + N, d_T5)  (concatenated along the tokens)
    pooled  = sum_k b_k p_k           (1, d_CLIP)

where T_k, p_k are the prompt's T5 states (512 tokens: the prior's fixed ``max_sequence_length``) and CLIP pooled
output when text encoders are given (here the FLUX folder's, as diffusers' example passes
``text_encoder=pipe.text_encoder``; a prompt is one for all images or one per image), else zeros (the documented
use: FLUX.1-Redux-dev has no text encoders; diffusers' zeros are 4096 / 768 wide, FLUX.1's T5 / CLIP widths, here
the folder's transformer's ``joint_attention_dim`` / ``pooled_projection_dim``). Several images are mixed by that
weighted sum. :func:`redux_embeds` computes it; :func:`.flux.text_to_image` (true CFG, ControlNets, Depth / Canny
folders), :func:`.flux.image_to_image` (img2img, inpainting, Fill folders) and :func:`.flux_kontext.kontext_edit` /
``kontext_inpaint`` take it as ``prompt_embeds`` / ``pooled_prompt_embeds``, as every diffusers FLUX pipeline takes
the prior's output (:func:`.flux.embedded_prompts`).

Refused in one line before any weight is read: a folder that is not a ``FluxPriorReduxPipeline`` (or whose
``image_encoder`` / ``image_embedder`` / ``feature_extractor`` are of other classes), a Redux folder with its own
text encoders (diffkit encodes prompts with the FLUX folder's), an image encoder whose width is not the
embedder's ``redux_dim``, an embedder whose ``txt_in_features`` is not the transformer's ``joint_attention_dim``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import torch

from ..errors import DiffkitError, check_float32, read_json_object

REDUX_PIPELINE = "FluxPriorReduxPipeline"
REDUX_TOKENS = 512  # the prior's T5 length (its encode_prompt's fixed max_sequence_length) and its zeros' length
_PARTS = {"image_encoder": "SiglipVisionModel", "image_embedder": "ReduxImageEncoder",
          "feature_extractor": "SiglipImageProcessor"}


def check_redux_folder(directory: Union[str, Path]) -> dict:
    """The ``model_index.json`` of a FLUX.1 Redux folder; anything else is a one-line DiffkitError (module
    docstring), from the JSON files alone."""
    from .sd3 import _entry
    from .sd_xl import _index
    directory = Path(directory)
    index = _index(directory)
    kind = None if index is None else index.get("_class_name")
    if kind != REDUX_PIPELINE:
        found = "no model_index.json" if index is None else f"a {kind!r} folder"
        raise DiffkitError(f"--redux {directory} is not a FLUX.1 Redux folder ({found}); "
                           f"allowed: a {REDUX_PIPELINE} folder (FLUX.1-Redux-dev: image_encoder, image_embedder, "
                           f"feature_extractor)")
    for name, cls in _PARTS.items():
        if not str(_entry(index, name)).startswith(cls):  # SiglipImageProcessor: its Fast / Pil backends too
            raise DiffkitError(f"--redux {directory}: {name} is {_entry(index, name)!r}; allowed: {cls}")
    for name in ("text_encoder", "text_encoder_2"):
        if _entry(index, name) is not None:
            raise DiffkitError(f"--redux {directory} holds its own {name}; diffkit encodes --prompt with the FLUX "
                               f"folder's text encoders: give a Redux folder without text encoders")
    embedder = read_json_object(directory / "image_embedder" / "config.json", "image_embedder config")
    encoder = read_json_object(directory / "image_encoder" / "config.json", "image_encoder config")
    width = encoder.get("hidden_size", 768)
    if embedder.get("redux_dim", 1152) != width:
        raise DiffkitError(f"--redux {directory}: the image encoder's width {width} is not the image embedder's "
                           f"redux_dim {embedder.get('redux_dim', 1152)}")
    return index


@dataclass
class FluxRedux:
    """The loaded parts of a FLUX.1 Redux folder (:func:`load_flux_redux`)."""

    image_encoder: object
    feature_extractor: object
    image_embedder: object

    def image_embeds(self, images: Sequence) -> torch.Tensor:
        """(K, N, d_T5): ``ReduxImageEncoder`` of the SigLIP ``last_hidden_state`` of each image (PIL images or
        paths), prepared by the folder's ``SiglipImageProcessor`` (resized, RGB), as the prior's ``encode_image``."""
        from .ip_adapter import open_image
        images = [open_image(image) for image in images]
        param = next(self.image_encoder.parameters())
        pixels = self.feature_extractor.preprocess(images=images, do_resize=True, return_tensors="pt",
                                                   do_convert_rgb=True).pixel_values
        with torch.no_grad():
            states = self.image_encoder(pixel_values=pixels.to(param.device, param.dtype)).last_hidden_state
            return self.image_embedder(states).image_embeds


def load_flux_redux(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                    progress: bool = True) -> FluxRedux:
    """A :class:`FluxRedux` of a ``FluxPriorReduxPipeline`` folder (local files only, safetensors only), checked
    first from its JSON files (:func:`check_redux_folder`)."""
    from . import from_pretrained, library_progress_bars, require
    directory = Path(directory)
    check_redux_folder(directory)
    transformers = require("transformers")
    ReduxImageEncoder = require("diffusers.pipelines.flux.modeling_flux").ReduxImageEncoder
    common = {"local_files_only": True, "torch_dtype": dtype, "use_safetensors": True}
    with library_progress_bars(progress):
        encoder = from_pretrained(transformers.SiglipVisionModel, directory / "image_encoder", **common)
        embedder = from_pretrained(ReduxImageEncoder, directory / "image_embedder", **common)
        processor = from_pretrained(transformers.SiglipImageProcessor, directory / "feature_extractor",
                                    local_files_only=True)
    for module in (encoder, embedder):
        module.to(device).eval().requires_grad_(False)
    return FluxRedux(encoder, processor, embedder)


def _scales(name: str, scale, count: int) -> list:
    """One scale per image: a number for all, or a list of ``count`` finite numbers."""
    values = list(scale) if isinstance(scale, (list, tuple)) else [scale]
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DiffkitError(f"{name}={value!r} is not allowed; give a finite number (default 1.0)")
        check_float32(name, value)
    if len(values) not in (1, count):
        raise DiffkitError(f"{name} has {len(values)} values for {count} Redux image(s); give one (all images) or "
                           f"one per image")
    return [float(v) for v in values] * (count if len(values) == 1 else 1)


def redux_embeds(flux, redux: FluxRedux, images, prompts: Union[None, str, Sequence[str]] = None, prompts_2=None,
                 prompt_embeds_scale: Union[float, Sequence[float]] = 1.0,
                 pooled_prompt_embeds_scale: Union[float, Sequence[float]] = 1.0) -> tuple:
    """(context (1, 512 + N, d_T5), pooled (1, d_CLIP)): ``FluxPriorReduxPipeline``'s ``prompt_embeds`` /
    ``pooled_prompt_embeds`` of ``images`` (one, or a list mixed by the weighted sum of the module docstring) for
    the FLUX folder ``flux``. ``prompts`` (None: zeros, the prior without text encoders; one for every image, or
    one per image; ``prompts_2``: T5's, default the prompts) are encoded by the folder's text encoders at the prior's
    512 tokens; the scales: one number, or one per image."""
    images = list(images) if isinstance(images, (list, tuple)) else [images]
    if not images:
        raise DiffkitError("no Redux image; give one image (or several, mixed) as the image prompt")
    config = flux.transformer.config
    width = redux.image_embedder.config.txt_in_features
    if width != config.joint_attention_dim:
        raise DiffkitError(f"the Redux image embedder gives tokens of width {width} (txt_in_features); this FLUX "
                           f"transformer reads {config.joint_attention_dim} (joint_attention_dim): a Redux model "
                           f"fits only its FLUX.1 family")
    count = len(images)
    a, b = (_scales(name, scale, count) for name, scale in (
        ("prompt_embeds_scale", prompt_embeds_scale), ("pooled_prompt_embeds_scale", pooled_prompt_embeds_scale)))
    embeds = redux.image_embeds(images).to(flux.device, torch.float32)
    if prompts is None:
        if prompts_2 is not None:
            raise DiffkitError("prompt_2 (--prompt-2) without a prompt is not allowed with Redux; give --prompt too")
        context = torch.zeros(count, REDUX_TOKENS, width, device=flux.device)
        pooled = torch.zeros(count, config.pooled_projection_dim, device=flux.device)
    else:
        from .stable_diffusion import prompt_list
        prompts = prompt_list(prompts)
        if len(prompts) not in (1, count):
            raise DiffkitError(f"{len(prompts)} prompts for {count} Redux image(s); give one prompt (every image) "
                               f"or one per image")
        context, pooled = flux.encode_prompts(prompts * (count // len(prompts)), REDUX_TOKENS, prompts_2)
    context = torch.cat([context.float(), embeds], dim=1) * torch.tensor(a, device=flux.device)[:, None, None]
    pooled = pooled.float() * torch.tensor(b, device=flux.device)[:, None]
    return context.sum(0, keepdim=True), pooled.sum(0, keepdim=True)


__all__ = ["FluxRedux", "load_flux_redux", "check_redux_folder", "redux_embeds", "REDUX_PIPELINE", "REDUX_TOKENS"]
