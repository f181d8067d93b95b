"""Bria FIBO Edit (``BriaFiboEditPipeline``, diffusers 0.42.1) on a Bria FIBO folder's components: an image edited
from noise as an in-context reference, with any diffkit sampler (``diffkit edit``: :mod:`diffkit.commands._bria_fibo`).

The pipeline is :mod:`.bria_fibo`'s loop with reference images appended as tokens (as FLUX.1 Kontext appends its
reference, Labs 2025): each reference k = 1, 2, ... is resized to its VAE-safe size (``_vae_safe_dims``: a multiple
of 16, at most 1024^2 pixels, its own aspect ratio), encoded as one frame (the posterior's mean, normalised by the
latents mean / std: :meth:`.flow_latents.FrameVAE.encode`), flattened to one token per latent pixel with ids
(k, row, column), given to every transformer call beside the noisy tokens (unmasked, never noised) and their outputs
dropped (:class:`.bria_fibo.BriaFiboNet` ``references``). A ``mask`` (one reference only) is pasted on the reference
as mid grey (128) where it is set (``paste_mask_on_image``); the output size defaults to the first reference's
VAE-safe size snapped to the nearest aspect ratio of the pipeline's ``PREFERRED_RESOLUTION`` list. The prompts must
be JSON strings (or dicts) with an ``edit_instruction`` key (``is_valid_edit_json``). diffusers' own helpers of the
pipeline module (the size rules, the mask pasting, the JSON check, ``VaeImageProcessor``'s resize) are called, not
copied.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from .bria_fibo import VAE_SCALE_FACTOR, BriaFibo, BriaFiboNet
from .flux import latent_image_ids


def reference_tokens(fibo: BriaFibo, references: Sequence) -> tuple:
    """(tokens (1, N, C), ids (N, 3)) of PIL ``references`` as ``prepare_reference_latents``: each at its VAE-safe
    size, encoded and normalised, one token per latent pixel, ids (k, row, column) for reference k = 1, 2, ..."""
    from diffusers.image_processor import VaeImageProcessor
    from diffusers.pipelines.bria_fibo.pipeline_bria_fibo_edit import _vae_safe_dims
    processor = VaeImageProcessor(vae_scale_factor=VAE_SCALE_FACTOR)
    tokens, ids = [], []
    for k, image in enumerate(references, start=1):
        width, height = _vae_safe_dims(*image.size)
        z = fibo.encode(processor.preprocess(image.convert("RGB"), height=height, width=width))
        _, c, h, w = z.shape
        tokens.append(z.permute(0, 2, 3, 1).reshape(1, h * w, c))
        plane = latent_image_ids(2 * h, 2 * w, fibo.device)
        plane[:, 0] = k
        ids.append(plane)
    return torch.cat(tokens, dim=1).to(fibo.transformer.dtype), torch.cat(ids)


def edit_image(fibo: BriaFibo, images, prompts: Union[str, dict, Sequence], *, mask=None,
               height: Optional[int] = None, width: Optional[int] = None, auto_resize: bool = True,
               **options) -> torch.Tensor:
    """Images of ``prompts`` (edit JSON strings or dicts, one per output image) edited from the PIL reference
    ``images`` (one, or a list: several references shared by every prompt, not a batch) as ``BriaFiboEditPipeline``
    (module docstring) with :func:`.bria_fibo.text_to_image`'s options (sampler, steps, guidance_scale,
    negative_prompt, seed, latents, ...). ``mask`` (PIL, array or tensor in [0, 1], the first reference's size): the
    region to regenerate, pasted as grey; height / width: default the first reference's snapped size
    (``auto_resize``: to the pipeline's preferred resolutions), multiples of 16."""
    import json
    from diffusers.pipelines.bria_fibo import pipeline_bria_fibo_edit as edit
    from PIL import Image
    from .chroma import text_to_image as flow_text_to_image
    from .stable_diffusion import prompt_list
    references = list(images) if isinstance(images, (list, tuple)) else [images]
    if not references or not all(isinstance(r, Image.Image) for r in references):
        raise DiffkitError(f"images={images!r} is not allowed; give a PIL image or a non-empty list of them (the "
                           f"references BriaFiboEditPipeline encodes)")
    prompts = prompt_list([json.dumps(p) if isinstance(p, dict) else p
                           for p in (prompts if isinstance(prompts, (list, tuple)) else [prompts])])
    bad = [p for p in prompts if not edit.is_valid_edit_json(p)]
    if bad:
        raise DiffkitError(f"prompt {bad[0][:60]!r} is not allowed; give a JSON object with an \"edit_instruction\" "
                           f"key (BriaFiboEditPipeline's edit prompt)")
    if mask is not None:
        if len(references) != 1 or not edit.is_valid_mask(mask) \
                or tuple(edit.get_mask_size(mask)) != references[0].size[::-1]:
            raise DiffkitError("mask is not allowed here; give one mask in [0, 1] of the one reference image's size "
                               "(BriaFiboEditPipeline pastes it on a single reference)")
        references[0] = edit.paste_mask_on_image(mask, references[0])
    if height is None or width is None:
        width, height = edit._vae_safe_dims(*references[0].size)
        if auto_resize:
            width, height = min(edit.PREFERRED_RESOLUTION[1024 * 1024],
                                key=lambda size: abs(size[0] / size[1] - width / height))
    net = BriaFiboNet(fibo.transformer, reference_tokens(fibo, references))

    def with_references(denoiser, cond, *_):
        """The (denoiser, cond) of :func:`.chroma.text_to_image` with the references in the network."""
        from ..denoiser import Denoiser
        inner = getattr(denoiser, "inner", denoiser)
        edited = Denoiser(net, inner.schedule, "flow_prediction")
        edited.model = fibo.transformer
        if inner is denoiser:
            return edited, cond
        denoiser.inner = edited
        return denoiser, cond

    return flow_text_to_image(fibo, prompts, height=height, width=width, control=with_references, **options)


__all__ = ["edit_image", "reference_tokens"]
