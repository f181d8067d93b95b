"""Kandinsky 2.2's ControlNet decoder (``KandinskyV22ControlnetPipeline`` / ``KandinskyV22ControlnetImg2ImgPipeline``,
diffusers 0.42.1): a decoder folder whose ``UNet2DConditionModel`` has ``addition_embed_type="image_hint"``
(kandinsky-2-2-controlnet-depth), sampled by :mod:`.kandinsky`'s :func:`~.kandinsky.decode_embeddings` and
:func:`~.kandinsky.image_to_image` with their ``hint`` argument.

The UNet's ``ImageHintTimeEmbedding`` adds the CLIP image embedding to the time embedding as the plain decoder's
``addition_embed_type="image"`` does, and maps the **hint** (the control image, e.g. a depth map, (B, 3, 8h, 8w) in
[0, 1]: the pipelines take it as given, no normalisation) through a small conv stack with three stride-2 convs to
4 channels at the latent size h x w, concatenated to the latents before ``conv_in`` (so ``in_channels`` = C + 4 and
``out_channels`` = 2C with the learned variance). The hint is the same in both classifier-free guidance halves
(``torch.cat([hint, hint])``): only the image embedding differs; everything else is the plain decoder's loop. For
the MoVQ's f = 8 (the released folders) 8h x 8w is the image size; the tiny test folders' f = 2 take a hint 4x the
image side. Refused in one line: a hint for a decoder without the image-hint embedding, none for one with it, a
hint of another shape (:func:`hint_cond`), a ``KandinskyV22Controlnet*`` folder whose UNet is not an image-hint one
(:func:`check_hint_unet`)."""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import DiffkitError

CONTROLNET_PIPELINE = "KandinskyV22ControlnetPipeline"
CONTROLNET_IMG2IMG_PIPELINE = "KandinskyV22ControlnetImg2ImgPipeline"  # the same folder contents, saved by that class
CONTROLNET_PIPELINES = (CONTROLNET_PIPELINE, CONTROLNET_IMG2IMG_PIPELINE)
HINT = "hint"  # the UNet's added_cond_kwargs key (.denoiser.ADDED_COND_KEYS)
HINT_FACTOR = 8  # ImageHintTimeEmbedding's input_hint_block: three stride-2 convs
EMBED_TYPES = {"image": "Kandinsky 2.2's image-embedding condition",
               "image_hint": f"its ControlNet decoder, a {CONTROLNET_PIPELINE} folder"}


def takes_hint(unet_config) -> bool:
    """True for a UNet (config dict or object) with ``addition_embed_type="image_hint"``."""
    get = unet_config.get if isinstance(unet_config, dict) else lambda key: getattr(unet_config, key, None)
    return get("addition_embed_type") == "image_hint"


def check_hint_unet(directory, pipeline: str, unet: dict) -> None:
    """One line unless the decoder UNet's ``addition_embed_type`` is ``image`` or ``image_hint``, ``image_hint`` in
    a ``KandinskyV22Controlnet*`` folder and ``image`` in an inpainting one (a ``KandinskyV22Pipeline`` folder may
    hold either: the UNet's config tells)."""
    from .kandinsky import INPAINT_PIPELINE
    kind = unet.get("addition_embed_type")
    if kind not in EMBED_TYPES:
        raise DiffkitError(f"{directory}'s UNet has addition_embed_type={kind!r}; allowed: "
                           + " or ".join(f"{k!r} ({what})" for k, what in EMBED_TYPES.items()))
    if (pipeline in CONTROLNET_PIPELINES and kind != "image_hint") or (pipeline == INPAINT_PIPELINE and
                                                                       kind != "image"):
        allowed = "'image_hint'" if pipeline in CONTROLNET_PIPELINES else "'image'"
        raise DiffkitError(f"{directory} is a {pipeline} folder whose UNet has addition_embed_type={kind!r}; "
                           f"allowed: {allowed}")


def hint_size(shape) -> tuple:
    """(8h, 8w): the hint's pixel size for latents of ``shape`` (B, C, h, w)."""
    return HINT_FACTOR * shape[-2], HINT_FACTOR * shape[-1]


def hint_cond(model, hint: Optional[torch.Tensor], shape) -> dict:
    """{``hint``: (B, 3, 8h, 8w)} for a decoder whose UNet takes one (a hint of 1 or B rows, in [0, 1] as the
    pipelines take it, for latents of ``shape``), {} for one that does not; one line for a hint given to a plain
    decoder, none to an image-hint one, or a hint of another shape."""
    wanted = takes_hint(model.unet.config)
    if hint is None and not wanted:
        return {}
    if not wanted:
        raise DiffkitError(f"a hint (control image) does not apply to a {model.pipeline} decoder whose UNet has "
                           f"addition_embed_type={model.unet.config.addition_embed_type!r}; allowed: a "
                           f"{CONTROLNET_PIPELINE} folder (addition_embed_type 'image_hint')")
    size, rows = hint_size(shape), "1" if shape[0] == 1 else f"1 or {shape[0]}"
    if hint is None:
        raise DiffkitError(f"this Kandinsky 2.2 decoder's UNet has addition_embed_type='image_hint' "
                           f"({CONTROLNET_PIPELINE}): give a hint (the control image, ({rows}, 3, {size[0]}, "
                           f"{size[1]}) in [0, 1]; diffkit sample / edit --control-image PNG)")
    if hint.ndim != 4 or hint.shape[0] not in (1, shape[0]) or hint.shape[1] != 3 or tuple(hint.shape[2:]) != size:
        raise DiffkitError(f"hint of shape {tuple(hint.shape)} is not allowed; give ({rows}, 3, {size[0]}, "
                           f"{size[1]}) in [0, 1] ({HINT_FACTOR}x the latent size {shape[-2]}x{shape[-1]})")
    return {HINT: hint.to(model.device, model.dtype).expand(shape[0], -1, -1, -1)}


def prepare_hint(image, shape) -> torch.Tensor:
    """(1, 3, 8h, 8w) in [0, 1] of a control image file for latents of ``shape``: RGB, resized as diffusers'
    ControlNet pipelines prepare theirs (:func:`.controlnet.prepare_control_image`; the Kandinsky pipelines take a
    tensor the caller made)."""
    from .controlnet import prepare_control_image
    height, width = hint_size(shape)
    return prepare_control_image(image, height, width, HINT_FACTOR)


__all__ = ["CONTROLNET_PIPELINE", "CONTROLNET_IMG2IMG_PIPELINE", "CONTROLNET_PIPELINES", "HINT", "HINT_FACTOR",
           "takes_hint", "check_hint_unet", "hint_size", "hint_cond", "prepare_hint"]
