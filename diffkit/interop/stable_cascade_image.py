"""Image prompts of a Stable Cascade prior (``StableCascadePriorPipeline(images=[...])``, diffusers 0.42.1).

Stage C's ``StableCascadeUNet`` is conditioned on CLIP image embeddings as well as on text (``clip_img``; Pernias et
al. 2024, "Würstchen", stage C's conditioning; image variation in the Stable Cascade release): the prior folder's
``feature_extractor`` (``CLIPImageProcessor``) makes each image's pixel values, its ``image_encoder``
(``CLIPVisionModelWithProjection``) their projected embedding (``image_embeds``, d = the prior's
``clip_image_in_channels``); N images are N tokens, (1, N, d), the same for every prompt of the batch
(``encode_image``: each image encoded alone, concatenated on dim 1, repeated over the batch). The null half of CFG
takes zero image embeddings of that shape. Text-to-image (no images) is one zero token, as before.

A prior folder without an image encoder (its ``model_index.json`` entry null or missing) is refused in one line
(:func:`check_image_encoder`) before any weight is read; the encoder is loaded only when images are asked for."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..errors import DiffkitError

IMAGE_CLASSES = {"image_encoder": ("CLIPVisionModelWithProjection",),  # transformers saves its processor's backend:
                 "feature_extractor": ("CLIPImageProcessor", "CLIPImageProcessorPil", "CLIPImageProcessorFast")}


def check_image_encoder(directory, index: dict, prefix: str = "") -> None:
    """One line unless the prior folder (``prefix``: ``"prior_"`` in a combined folder) holds a
    ``CLIPVisionModelWithProjection`` image encoder and its ``CLIPImageProcessor`` (JSON and sub-folders only)."""
    from .sd3 import _entry
    for part, allowed in IMAGE_CLASSES.items():
        name = _entry(index, prefix + part)
        if name not in allowed or not (Path(directory) / (prefix + part)).is_dir():
            raise DiffkitError(f"{directory}'s {prefix + part} is {name!r}: image prompts (--prior-image) need a "
                               f"Stable Cascade prior folder with a {allowed[0]} {prefix + part}")


def load_image_encoder(directory, prefix: str, flag: str, dtype: torch.dtype, device) -> torch.nn.Module:
    """The prior folder's ``CLIPVisionModelWithProjection`` (never downloads), frozen on ``device``."""
    from . import from_pretrained, require
    encoder = from_pretrained(require("transformers").CLIPVisionModelWithProjection,
                              Path(directory) / (prefix + "image_encoder"), flag, local_files_only=True,
                              torch_dtype=dtype, use_safetensors=True)
    return encoder.to(device).eval().requires_grad_(False)


def image_prompt_embeddings(model, images: Sequence, dtype: torch.dtype) -> torch.Tensor:
    """(1, N, d): the ``image_embeds`` of each of ``images`` (paths or PIL images) by the loaded prior's image
    encoder, one image at a time as ``StableCascadePriorPipeline.encode_image``, pixel values in ``dtype`` (the
    prior's, as there)."""
    from .kandinsky_emb2emb import prior_pixels
    if model.image_encoder is None:
        raise DiffkitError("image prompts need the prior's image encoder: load the folders with images=True")
    if not len(images):
        raise DiffkitError("images=[] is not allowed; give at least one image (or None: text only)")
    folder, subfolder, flag = model.feature_extractor
    embeds = []
    with torch.no_grad():
        for image in images:
            pixels = prior_pixels(folder, image, subfolder, flag).to(model.device, dtype)
            embeds.append(model.image_encoder(pixels).image_embeds.unsqueeze(1))
    return torch.cat(embeds, dim=1)


__all__ = ["check_image_encoder", "load_image_encoder", "image_prompt_embeddings"]
