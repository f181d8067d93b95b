"""FLUX.2's reference images (``Flux2Pipeline(image=[...])`` / ``Flux2KleinPipeline(image=[...])``, diffusers
0.42.1): images given in context, as extra tokens after the latents' (the FLUX.1 Kontext idea, Black Forest Labs
2025, with FLUX.2's 4-D positions).

Each image, as the pipelines' ``__call__``: checked (``Flux2ImageProcessor.check_image_input``: sides >= 64 pixels,
aspect ratio <= 8), resized to 1024^2 pixels of area where larger (``_resize_to_target_area``, Lanczos), its sides
floored to multiples of 2 f and resized / centre-cropped there (``preprocess(resize_mode="crop")``, [-1, 1]); then
``_encode_vae_image``: the VAE posterior's mode, 2 x 2-patchified, normalised by the batch-norm statistics,
(z - mu_bn) / sigma_bn; its h w positions are tokens with ids (T, row, column, 0), T = 10 + 10 i for image i
(``_prepare_image_ids``). The transformer sees [latent tokens, reference tokens] with their ids and the pipelines
keep the first h w outputs; the references carry no noise and are the same at every step (and in CFG's negative
pass). Without height / width the output takes the first image's processed size."""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import DiffkitError

FLUX2_REFERENCE_AREA = 1024 * 1024  # the pipelines' largest reference area (pixels)


def reference_images(flux2, images: Sequence, check: bool = True, area: int = FLUX2_REFERENCE_AREA,
                     multiple: int = None, resized: list = None) -> tuple:
    """([(1, 3, H_i, W_i) in [-1, 1]], (H_0, W_0)) of ``images`` (PIL images or paths), processed as the pipelines
    (module docstring); a one-line DiffkitError for an image the processor refuses. ``check=False``: no
    ``check_image_input`` (``Flux2KleinInpaintPipeline``'s ``image_reference``, :mod:`.flux2_inpaint`). ``area``: the
    largest area kept, ``multiple``: the sides' (default ``flux2.latent_scale_factor``), ``resized``: a list that
    receives each image after the area's resize, before the crop (``ZImageOmniPipeline``'s, :mod:`.z_image_omni`)."""
    from PIL import Image
    from diffusers.pipelines.flux2.image_processor import Flux2ImageProcessor
    if isinstance(images, (str, Image.Image)) or not hasattr(images, "__len__") or not len(images):
        raise DiffkitError(f"reference images {images!r} are not allowed; give a list of PIL images or paths")
    multiple = multiple or flux2.latent_scale_factor
    processor = Flux2ImageProcessor(vae_scale_factor=multiple)
    out = []
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            try:
                image = Image.open(image).convert("RGB")
            except (OSError, TypeError, AttributeError) as error:
                raise DiffkitError(f"reference image {i} ({image!r}) is not allowed: {error}") from None
        try:
            if check:
                processor.check_image_input(image)
        except ValueError as error:
            raise DiffkitError(f"reference image {i} is not allowed: {error}") from None
        if image.size[0] * image.size[1] > area:
            image = processor._resize_to_target_area(image, area)
        if resized is not None:
            resized.append(image)
        width, height = (side // multiple * multiple for side in image.size)
        out.append(processor.preprocess(image, height=height, width=width, resize_mode="crop"))
    return out, tuple(out[0].shape[2:])


def reference_tokens(flux2, images: Sequence[torch.Tensor]) -> tuple:
    """(tokens (B, N, 4 C), ids (1, N, 4)) of processed reference images (:func:`reference_images`; each (1 or B,
    3, H_i, W_i), one row given to every sample): the VAE posterior's mode, patchified and batch-norm normalised
    (``_encode_vae_image``, :meth:`.flux2.Flux2.encode`), image i's ids at T = 10 + 10 i (``_prepare_image_ids``)."""
    from .flux2 import position_ids
    tokens, ids = [], []
    for i, image in enumerate(images):
        z = flux2.encode(image)
        tokens.append(z.flatten(2).transpose(1, 2))
        grid = position_ids(z.shape[2], z.shape[3], flux2.device)
        grid[:, 0] = 10 + 10 * i
        ids.append(grid)
    batch = max(t.shape[0] for t in tokens)
    return torch.cat([t.expand(batch, -1, -1) for t in tokens], dim=1), torch.cat(ids)[None]


__all__ = ["reference_images", "reference_tokens", "FLUX2_REFERENCE_AREA"]
