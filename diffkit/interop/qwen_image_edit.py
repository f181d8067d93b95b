"""A Qwen-Image-Edit diffusers folder (``QwenImageEditPipeline`` / ``...EditPlusPipeline`` / ``...EditInpaintPipeline``,
diffusers 0.42.1):
an image edited by an instruction with any diffkit sampler, on :mod:`.qwen_image`'s loading, network, true CFG and
flow grid.

Qwen-Image-Edit (Wu et al. 2025, "Qwen-Image Technical Report", sec. 5 "image editing") conditions the Qwen-Image
MMDiT twice on the input image: its Qwen2.5-VL prompt *sees* the image (semantics), and the image's VAE latents are
fed as extra tokens beside the noisy ones (appearance). As the pipeline's ``__call__``:

* size: the input's aspect ratio r = W / H at the area A = 1024^2 (:func:`calculated_size`, ``calculate_dimensions``:
  w = sqrt(A r), h = w / r, each rounded to a multiple of 32); the output is that size floored to 2 f.
* the image, resized to that size by PIL's Lanczos filter (``VaeImageProcessor.resize``), is both the prompt image
  and (as x / 255 * 2 - 1) the VAE's input; its latents z_ref = (mean of E(x) - mean) / std (the posterior's mode,
  ``sample_mode="argmax"``).
* prompts: the edit template (:data:`EDIT_TEMPLATE`, one ``<|image_pad|>`` between the vision tokens) filled with the
  instruction; the image processor's patches (``pixel_values``, ``image_grid_thw``) and the pad token repeated
  t h w / m^2 times, as ``Qwen2VLProcessor`` expands it (:meth:`QwenImageEdit.encode_prompts`); the language
  model's last hidden states with the first 64 tokens dropped (:data:`EDIT_DROP`), zero-padded, never cut (the
  pipeline takes ``max_sequence_length`` but does not apply it). The negative prompt sees the same image.
* the transformer: [packed z_t, packed z_ref] in sequence, ``img_shapes`` [(1, h/2, w/2), (1, h'/2, w'/2)], the
  velocity kept on z_t's tokens (:class:`.qwen_image.QwenImageNet`'s ``reference``); true CFG with its norm
  rescaling and the flow grid (mu of z_t's length) as Qwen-Image's text-to-image; 50 steps, s = 4.0.

Plus (``QwenImageEditPlusPipeline``, 2509): one prompt (batch 1) sees several images, "Picture i: " and image i's
vision tokens before the prompt (its template has none), each image at its own ratio on 384^2 pixels for the prompt
and 1024^2 for its latents, all latents after z_t's with their own ``img_shapes`` entries; the last image's size.

Inpainting (``QwenImageEditInpaintPipeline``, ``mask=``): this conditioning on Qwen-Image's inpainting loop
(:func:`_inpaint`).

diffkit reads ``processor/`` with transformers' PIL image processor (``Qwen2VLImageProcessorPil``; it needs no
torchvision, which ``Qwen2VLProcessor`` itself imports for its video processor) and the folder's tokenizer. A Plus
folder's 2511 transformer (``zero_cond_t``: the pictures' tokens modulated at t = 0, all inside the transformer from
``img_shapes``) is driven as it is; elsewhere it is refused (:func:`.qwen_image.check_qwen_image_folder`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from .qwen_image import QwenImage

EDIT_TEMPLATE = ("<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, "
                 "objects, background), then explain how the user's text instruction should alter or modify the "
                 "image. Generate a new image that meets the user's requirements while maintaining consistency with "
                 "the original input where appropriate.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|>"
                 "<|vision_end|>{}<|im_end|>\n<|im_start|>assistant\n")  # QwenImageEditPipeline's
PLUS_TEMPLATE = EDIT_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "")  # ...EditPlusPipeline's
PICTURE = "Picture {}: <|vision_start|><|image_pad|><|vision_end|>"  # its img_prompt_template, before the prompt
EDIT_DROP = 64  # their prompt_template_encode_start_idx
IMAGE_TOKEN = "<|image_pad|>"
EDIT_AREA = 1024 * 1024  # calculate_dimensions' target area (the Plus pipeline's VAE_IMAGE_SIZE)
CONDITION_AREA = 384 * 384  # the Plus pipeline's CONDITION_IMAGE_SIZE: the prompt's images


def calculated_size(width: int, height: int, area: int = EDIT_AREA) -> tuple:
    """(width, height) of ratio ``width / height`` at ``area`` pixels, each rounded to a multiple of 32 (the
    pipeline's ``calculate_dimensions``)."""
    ratio = width / height
    new_width = math.sqrt(area * ratio)
    return round(new_width / 32) * 32, round(new_width / ratio / 32) * 32


def load_image_processor(directory: Union[str, Path], component: str = "processor"):
    """The folder's ``processor/`` (``component``: LongCat-Image-Edit's ``text_processor/``) image processor as
    transformers' ``Qwen2VLImageProcessorPil`` (module docstring); a missing or unreadable config is one line."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    path = Path(directory) / component
    if not (path / "preprocessor_config.json").is_file():
        raise DiffkitError(f"{path} has no preprocessor_config.json (the Qwen2-VL image processor's config)")
    try:
        return Qwen2VLImageProcessorPil.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError) as error:
        raise DiffkitError(f"{path}: the image processor's config cannot be read ({error})".splitlines()[0])


@dataclass
class QwenImageEdit(QwenImage):
    """A Qwen-Image-Edit folder's components: :class:`.qwen_image.QwenImage`'s and its image processor; prompts are
    encoded with the image they edit (:meth:`encode_prompts`)."""

    image_processor: object = None
    plus: bool = False  # QwenImageEditPlusPipeline's folder: one prompt seeing several images

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length=None, images=None) -> tuple:
        """(context, mask or None) of ``prompts`` each seeing its image of ``images`` (PIL, one per prompt; ``plus``:
        one prompt seeing all, each as "Picture i: " and its vision tokens before the prompt) as the pipeline's
        ``_get_qwen_prompt_embeds``: the edit template, the images' patches, the k-th ``<|image_pad|>`` repeated
        t h w / m^2 times of image k as ``Qwen2VLProcessor`` does, the first 64 states dropped; never cut."""
        from .stable_diffusion import prompt_list
        prompts = prompt_list(prompts)
        if self.plus and (len(prompts) != 1 or not images):
            raise DiffkitError(f"a Qwen-Image-Edit-Plus edit is one prompt seeing its images (the pipeline's batch "
                               f"1): {len(prompts)} prompts, {len(images or ())} images are not allowed")
        if not self.plus and (images is None or len(images) != len(prompts)):
            raise DiffkitError(f"a Qwen-Image-Edit prompt sees its image: give one image per prompt ({len(prompts)}), "
                               f"not {0 if images is None else len(images)}")
        pictures = "".join(PICTURE.format(i + 1) for i in range(len(images)))
        texts = [PLUS_TEMPLATE.format(pictures + p) if self.plus else EDIT_TEMPLATE.format(p) for p in prompts]
        tokens, pixels = vision_inputs(self, texts, images)
        return self.kept_states(tokens, EDIT_DROP, None, **pixels)


def vision_inputs(model, texts: Sequence[str], images, tokenizer=None, **tokenizer_options) -> tuple:
    """(tokens, {pixel_values, image_grid_thw}) of ``texts`` with ``<|image_pad|>`` tokens seeing ``images`` (PIL, in
    order over all texts) as ``Qwen2VLProcessor(text=texts, images=images, padding=True)``: the image processor's
    patches, the k-th pad repeated t h w / m^2 times of image k; on ``model``'s device (pixels in its encoder's dtype).
    The Edit prompts' and Qwen-Image-Layered's captions (:func:`.qwen_image_layered.caption`); DreamLite's edit prompts
    with its processor's ``tokenizer`` (default ``model.tokenizer``; :mod:`.dreamlite`); ``tokenizer_options``: more of
    the tokenizer's (Bria FIBO 2's truncation, :mod:`.bria_fibo2`)."""
    pixels = model.image_processor(images=list(images), return_tensors="pt")
    merge = int(model.image_processor.merge_size) ** 2
    counts = iter(int(g.prod()) // merge for g in pixels["image_grid_thw"])
    tokens = (tokenizer or model.tokenizer)([_expanded(text, counts) for text in texts], padding=True,
                                            return_tensors="pt", **tokenizer_options)
    return tokens.to(model.device), {"pixel_values": pixels["pixel_values"].to(model.device, model.text_encoder.dtype),
                                     "image_grid_thw": pixels["image_grid_thw"].to(model.device)}


def _expanded(text: str, counts) -> str:
    """``text`` with its k-th ``<|image_pad|>`` repeated by the k-th of ``counts`` (an iterator over all texts' pads in
    order), as ``Qwen2VLProcessor`` expands the image tokens."""
    first, *rest = text.split(IMAGE_TOKEN)
    return first + "".join(IMAGE_TOKEN * next(counts) + part for part in rest)


def _pil_images(images, mode: str = "RGB") -> list:
    """PIL images in ``mode`` (RGB, or RGBA: Qwen-Image 2.1's, :mod:`.qwen_image21`) of ``images``: PIL images, or
    (B, 3, H, W) in [-1, 1] (8-bit values, as diffkit reads PNGs; with RGBA (B, 3 or 4, H, W))."""
    from PIL import Image
    if isinstance(images, torch.Tensor):
        channels = (3, 4) if mode == "RGBA" else (3,)
        if images.ndim != 4 or images.shape[1] not in channels:
            raise DiffkitError(f"images of shape {tuple(images.shape)} are not allowed; give (B, "
                               f"{' or '.join(map(str, channels))}, H, W) in [-1, 1]")
        pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return [Image.fromarray(p.permute(1, 2, 0).numpy()).convert(mode) for p in pixels]
    return [image.convert(mode) for image in ([images] if isinstance(images, Image.Image) else images)]


def _pixels(images) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] of PIL images of one size, as ``VaeImageProcessor.preprocess``: x / 255 * 2 - 1."""
    import numpy as np
    pixels = torch.stack([torch.from_numpy(np.array(image).astype(np.float32) / 255.0) for image in images])
    return 2.0 * pixels.permute(0, 3, 1, 2) - 1.0


def edit_image(model: QwenImageEdit, images, prompts: Union[str, Sequence[str]], *, area: int = EDIT_AREA,
               condition_area: int = CONDITION_AREA, height: Optional[int] = None, width: Optional[int] = None,
               mask: Optional[torch.Tensor] = None, strength: Optional[float] = None, **options) -> torch.Tensor:
    """``images`` (PIL images or (B, 3, H, W) in [-1, 1]; all resized to the first one's calculated size) edited by
    ``prompts`` (one, or one per image) as ``QwenImageEditPipeline`` (module docstring) with any diffkit sampler.
    A Plus folder (``QwenImageEditPlusPipeline``): one edit of one prompt seeing all ``images``, each resized at its
    own ratio to ``condition_area`` (384^2) for the prompt and to ``area`` for its latents (in order after z_t's), the
    output of the last image's calculated size.

    area: the calculated size's target (default 1024^2); height / width: the output's, default the calculated
    size, floored to multiples of 2 f. options: :func:`.qwen_image.text_to_image`'s (sampler, steps, guidance_scale,
    convention, negative_prompt, seed, latents (unpacked z at s = 1), output_range, return_latents, ...), its
    ``max_sequence_length`` excepted (the pipeline applies none).

    mask (B or 1, 1, H, W) at the images' size, 1 = repaint (not for a Plus folder): inpainting as
    ``QwenImageEditInpaintPipeline`` (:func:`_inpaint`); strength (default 0.6) only with it."""
    from PIL import Image

    from .flow_latents import edit_prompts
    from .qwen_image import text_to_image
    if not isinstance(model, QwenImageEdit):
        raise DiffkitError("edit_image needs a Qwen-Image-Edit folder (QwenImageEditPipeline); this one is not")
    if "max_sequence_length" in options:
        raise DiffkitError("max_sequence_length is not allowed for a Qwen-Image-Edit folder "
                           "(QwenImageEditPipeline applies none)")
    for name, value in (("area", area), ("condition_area", condition_area)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 32 * 32:
            raise DiffkitError(f"{name}={value!r} is not allowed; give an integer of at least 1024 pixels")
    if mask is not None and (height, width) != (None, None):
        raise DiffkitError(f"height={height} / width={width} are not allowed with a mask: "
                           f"QwenImageEditInpaintPipeline inpaints at the images' calculated size")
    pil = _pil_images(images)
    width0, height0 = calculated_size(*pil[-1 if model.plus else 0].size, area)
    multiple = 2 * model.vae_scale_factor
    height, width = (height or height0) // multiple * multiple, (width or width0) // multiple * multiple
    if model.plus and mask is not None:
        raise DiffkitError("a mask is not allowed for a Qwen-Image-Edit-Plus folder (QwenImageEditPlusPipeline "
                           "does not inpaint; QwenImageEditInpaintPipeline is a Qwen-Image-Edit folder's)")
    if mask is None and strength is not None:
        raise DiffkitError(f"strength={strength!r} is not allowed without a mask for a Qwen-Image-Edit folder "
                           f"(QwenImageEditPipeline starts from noise; only its inpainting takes a strength)")
    if model.plus:  # each image at its own ratio: the prompt's at condition_area, the latents' at area
        seen = [im.resize(calculated_size(*im.size, condition_area), resample=Image.LANCZOS) for im in pil]
        reference = [model.encode(_pixels([im.resize(calculated_size(*im.size, area), resample=Image.LANCZOS)]))
                     for im in pil]
    else:  # VaeImageProcessor.resize: every image at the first one's size, the posterior's mode
        prompts = edit_prompts(torch.empty(len(pil), 3, 1, 1), prompts)
        seen = [image.resize((width0, height0), resample=Image.LANCZOS) for image in pil]
        if mask is not None:
            return _inpaint(model, seen, prompts, mask, strength, **options)
        reference = model.encode(_pixels(seen))
    return text_to_image(model, prompts, height=height, width=width, guide={"images": seen, "reference": reference},
                         **options)


def _inpaint(model: QwenImageEdit, seen: list, prompts: list, mask: torch.Tensor, strength: Optional[float],
             posterior: str = "sample", seed: Optional[int] = 0, generator=None, **options) -> torch.Tensor:
    """``QwenImageEditInpaintPipeline``: the Edit pipeline's conditioning (the prompt sees the resized image ``seen``,
    its latents beside z_t's) on :func:`.qwen_image.image_to_image`'s inpainting (QwenImageInpaintPipeline's loop:
    strength's ``get_timesteps`` cut, the kept region put back at ``scale_noise(z, next sigma, noise)`` after every
    step, :func:`diffkit.latent_editing.latent_inpaint`, replacement inpainting, Meng et al. 2022 / Lugmayr et al.
    2022). As there, image i's latents are the posterior's draw from its generator (``seed + i``) before its noise,
    and the same latents are the transformer's reference tokens; the mask (at the input's size) nearest-resized to
    the calculated size and binarised at 0.5 (its mask processor on a tensor)."""
    from ..editing import _generators
    from ..latent_editing import encode_images
    from .qwen_image import image_to_image
    if not isinstance(mask, torch.Tensor) or mask.ndim != 4 or mask.shape[1] != 1 or \
            mask.shape[0] not in (1, len(seen)):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise DiffkitError(f"mask {shape} is not allowed; give (1 or {len(seen)}, 1, H, W), 1 = repaint")
    pixels = _pixels(seen)
    mask = torch.nn.functional.interpolate(mask.float(), size=pixels.shape[2:])
    mask = (mask >= 0.5).float()
    generators = _generators(seed, generator, len(seen))
    states = [g.get_state() for g in generators]  # the reference is the loop's own draw: replayed there
    reference = encode_images(model, pixels, posterior, generators)
    for g, state in zip(generators, states):
        g.set_state(state)
    return image_to_image(model, pixels, prompts, strength, mask=mask, posterior=posterior, seed=None,
                          generator=generators, guide={"images": seen, "reference": reference}, **options)


__all__ = ["QwenImageEdit", "edit_image", "calculated_size", "load_image_processor", "EDIT_TEMPLATE", "PLUS_TEMPLATE",
           "EDIT_DROP", "EDIT_AREA", "CONDITION_AREA"]
