"""GLM-Image's image-to-image mode (``GlmImagePipeline(image=...)``, diffusers 0.42.1): new images of a prompt that
see **condition images** through the DiT's key / value cache, the diffusion stage on any diffkit sampler
(:mod:`.glm_image` for the text-to-image pieces it reuses).

As ``GlmImagePipeline.__call__`` / ``generate_prior_tokens`` with ``image``:

* prior tokens (the AR stage, :func:`condition_prior_tokens`): the chat message is the condition images then the
  prompt; the processor halves each image and cuts it into its vision patches (``image_grid_thw``), the AR model's
  vision encoder and VQ tokenizer (``get_image_features`` / ``get_image_tokens``) give each image's token grid, and
  ``generate`` (sampling, torch's global generator seeded as the pipeline seeds it) writes the target's grid alone
  (no preview grid in this mode). Both grids are upsampled 2 x 2 nearest: one id per DiT patch.
* the cache (:func:`condition_cache`): each condition image, in [-1, 1] at its size (sides multiples of 32), is
  encoded to the VAE posterior's mean normalised by the latent statistics, z = (E(x) - mean) / std, and run through
  the transformer once with no text, its prior ids kept, ``timestep`` 0, ``target_size`` its own size and
  ``crop_coords`` (0, 0), every attention layer writing its keys and values (RoPE of the image's own grid); the
  images' entries are concatenated in order.
* sampling: :func:`.glm_image.text_to_image`'s loop, guidance and decoding; the conditional pass's attention reads
  the cache (its keys and values put before the text's and the latents'), the unconditional pass (the empty glyphs,
  prior tokens dropped) skips it. Every prompt of a batch sees the same condition images (one cache, expanded to the
  batch, as the pipeline's cache of one sample).
* size: ``height`` x ``width`` default the first condition image's (the pipeline's own default is that size too, but
  its AR stage then gets no target size: it fails unless given).

Not as diffusers 0.42.1's code: its ``generate_prior_tokens`` concatenates the images' features along the channel
axis before ``get_image_tokens``, which the installed transformers' ``GlmImageForConditionalGeneration`` (per-image
(C, h, w) features) rejects; here each image's features go to ``get_image_tokens`` as the model's own ``forward``
passes them (tests/test_glm_image_edit.py checks the ids against the pipeline's code with its features put back).
"""
from __future__ import annotations

import hashlib
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from . import require
from .glm_image import GlmImage


def _multiple(model: GlmImage) -> int:
    """2 p f (32): the side multiple of a condition image whose AR token grid, upsampled, tiles its DiT patches."""
    return 2 * model.patch * model.vae_scale_factor


def condition_pictures(model: GlmImage, images) -> list:
    """The condition images as PIL RGB (``images``: a PIL image, a list of them or (B, 3, H, W) in [-1, 1]), each
    checked: sides positive multiples of 32 (one line otherwise)."""
    from PIL import Image

    from .qwen_image_edit import _pil_images
    if isinstance(images, (list, tuple)) and any(isinstance(one, (list, tuple)) for one in images):
        raise DiffkitError("a list of condition-image lists is not taken; give one list (every prompt sees it): edit "
                           "each set of images apart")
    if isinstance(images, (list, tuple)) and not all(isinstance(one, Image.Image) for one in images):
        raise DiffkitError("condition images must be PIL images or one (B, 3, H, W) tensor in [-1, 1]")
    pictures, multiple = _pil_images(images), _multiple(model)
    if not pictures:
        raise DiffkitError("GLM-Image's image-to-image mode needs at least one condition image")
    for picture in pictures:
        if picture.width % multiple or picture.height % multiple:
            raise DiffkitError(f"a condition image of {picture.width}x{picture.height} is not allowed; give sides "
                               f"multiples of {multiple} (its AR prior-token grid, upsampled 2 x 2, is one id per DiT "
                               f"patch)")
    return pictures


def condition_prior_tokens(model: GlmImage, prompt: str, pictures: Sequence, height: int, width: int,
                           seed: int = 0) -> tuple:
    """((1, (H / 16)(W / 16)) prior ids of the target, (sum of the images' (h / 16)(w / 16),) ids of the condition
    images in order) from the folder's AR model for one prompt seeing ``pictures`` (module docstring; diffusers'
    chat template, ``_compute_generation_params``, ``_extract_large_image_tokens`` and ``_upsample_token_ids``);
    torch's global RNG state is restored after. Cached per (prompt, size, seed, images)."""
    from .glm_image import ar_rng
    digest = hashlib.sha256(b"".join(p.mode.encode() + repr(p.size).encode() + p.tobytes() for p in pictures))
    key = (prompt, height, width, seed, digest.hexdigest())
    if key not in model._priors:
        pipe = model.ar_pipeline()
        ar, n = pipe.vision_language_encoder, len(pictures)
        messages = [[{"role": "user", "content": [*({"type": "image", "image": p} for p in pictures),
                                                  {"type": "text", "text": prompt}]}]]
        inputs = pipe.processor.apply_chat_template(messages, tokenize=True, padding=False, target_h=height,
                                                    target_w=width, return_dict=True, return_tensors="pt")
        inputs = inputs.to(model.device)
        grids = inputs["image_grid_thw"]
        max_new, offset, token_h, token_w = pipe._compute_generation_params(grids[:n + 1], is_text_to_image=False)
        with torch.no_grad(), ar_rng(model.device, seed):
            features = ar.get_image_features(inputs["pixel_values"], grids[:n]).pooler_output
            ids = ar.get_image_tokens(list(features), grids[:n])
            images = [pipe._upsample_token_ids(one, int(g[1]), int(g[2]))[0]
                      for one, g in zip(ids.split(grids[:n].prod(-1).tolist()), grids[:n])]
            out = ar.generate(**inputs, max_new_tokens=max_new, do_sample=True)
        target = pipe._extract_large_image_tokens(out, inputs["input_ids"].shape[-1], offset, token_h * token_w)
        model._priors[key] = (pipe._upsample_token_ids(target, token_h, token_w).to(model.device),
                              torch.cat(images).to(model.device))
    return model._priors[key]


def check_condition_ids(model: GlmImage, ids, pictures: Sequence) -> list:
    """``ids`` (the images' prior ids, concatenated in order: the pipeline's ``prior_token_image_ids`` of a sample)
    split per image, each (1, (h / 16)(w / 16)) long ids in the codebook; one line otherwise."""
    side = model.patch * model.vae_scale_factor
    sizes = [(p.height // side) * (p.width // side) for p in pictures]
    codebook = int(model.transformer.config.prior_vq_quantizer_codebook_size)
    ids = torch.as_tensor(ids)
    if ids.ndim != 1 or ids.shape[0] != sum(sizes) or ids.is_floating_point() or ids.is_complex() \
            or ids.dtype == torch.bool:
        raise DiffkitError(f"condition_token_ids of shape {tuple(ids.shape)} ({ids.dtype}) are not allowed; give "
                           f"{sum(sizes)} integer ids in one row (one per DiT patch of the condition images: "
                           f"{' + '.join(map(str, sizes))}; an AR processor that resizes the images gives others)")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= codebook):
        raise DiffkitError(f"condition_token_ids in [{int(ids.min())}, {int(ids.max())}] are not allowed; give ids in "
                           f"[0, {codebook - 1}] (the transformer's prior codebook)")
    return [one[None] for one in ids.to(model.device, torch.long).split(sizes)]


def condition_cache(model: GlmImage, pictures: Sequence, ids: Sequence):
    """The ``GlmImageKVCache`` of the condition ``pictures`` (PIL, sides multiples of 32) with their (1, n) prior
    ``ids``: each image's z = (E(x) - mean) / std through the transformer in "write" mode, no text, ``timestep`` 0,
    ``target_size`` its size, ``crop_coords`` (0, 0) (module docstring)."""
    require("diffusers")
    from diffusers.models.transformers.transformer_glm_image import GlmImageKVCache

    from . import model_dtype
    from .qwen_image_edit import _pixels
    config, dtype = model.transformer.config, model_dtype(model.transformer)
    cache = GlmImageKVCache(num_layers=config.num_layers)
    cache.set_mode("write")
    empty = torch.zeros(1, 0, config.text_embed_dim, device=model.device, dtype=dtype)
    with torch.no_grad():
        for picture, prior in zip(pictures, ids):
            z = model.encode(_pixels([picture])).to(dtype)
            model.transformer(hidden_states=z, encoder_hidden_states=empty, prior_token_id=prior,
                              prior_token_drop=torch.zeros_like(prior, dtype=torch.bool),
                              timestep=torch.zeros((1,), device=model.device),
                              target_size=torch.tensor([[picture.height, picture.width]], device=model.device),
                              crop_coords=torch.zeros((1, 2), device=model.device), kv_caches=cache)
    return cache


def image_to_image(model: GlmImage, images, prompts: Union[str, Sequence[str]], *, height: Optional[int] = None,
                   width: Optional[int] = None, prior_token_ids=None, condition_token_ids=None, prior_seed: int = 0,
                   **options) -> torch.Tensor:
    """Images of ``prompts`` seeing the condition ``images`` (a PIL image, a list of them or (B, 3, H, W) in
    [-1, 1]; sides multiples of 32; every prompt sees all of them) as ``GlmImagePipeline(image=...)`` (module
    docstring) with any diffkit sampler.

    height / width: the output's, default the first image's. prior_token_ids: the target's (1 or B, (H / 16)(W / 16))
    ids, with ``condition_token_ids`` (the images' ids in order, one row: the pipeline's ``prior_token_image_ids`` of
    a sample); both None: drawn by the folder's AR model prompt by prompt with torch's generator seeded
    ``prior_seed`` (:func:`condition_prior_tokens`). options: :func:`.glm_image.text_to_image`'s (sampler, steps,
    guidance_scale, convention, seed, latents, max_sequence_length, output_range, return_latents, ...)."""
    from .glm_image import text_to_image
    from .stable_diffusion import prompt_list
    pictures, prompts = condition_pictures(model, images), prompt_list(prompts)
    multiple = _multiple(model)
    height = pictures[0].height // multiple * multiple if height is None else height
    width = pictures[0].width // multiple * multiple if width is None else width
    model.latent_shape(1, height, width)  # checked before the AR model runs
    if (prior_token_ids is None) != (condition_token_ids is None):
        raise DiffkitError("prior_token_ids and condition_token_ids go together (the pipeline's prior_token_ids and "
                           "prior_token_image_ids); give both or neither")
    if prior_token_ids is None:
        drawn = [condition_prior_tokens(model, prompt, pictures, height, width, prior_seed) for prompt in prompts]
        prior_token_ids, condition_token_ids = torch.cat([one[0] for one in drawn]), drawn[0][1]
    cache = condition_cache(model, pictures, check_condition_ids(model, condition_token_ids, pictures))
    return text_to_image(model, prompts, prior_token_ids=prior_token_ids, height=height, width=width,
                         condition=cache, **options)


__all__ = ["image_to_image", "condition_prior_tokens", "condition_cache", "condition_pictures",
           "check_condition_ids"]
