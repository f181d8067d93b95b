"""A Kandinsky 5 image-to-image folder (``Kandinsky5I2IPipeline``, diffusers 0.42.1): an image edited by an
instruction with any diffkit sampler, on :mod:`.kandinsky5`'s loading, network, CFG and flow grid.

Kandinsky 5.0 Image Lite's editing model is an instruction-edit model, not SDEdit: it starts from pure noise and sees
the input image twice (as Qwen-Image-Edit does, :mod:`.qwen_image_edit`): its Qwen2.5-VL prompt sees the image
(semantics) and the transformer (``visual_cond``) takes the image's VAE latents as extra input channels
(appearance). As the pipeline's ``__call__``:

* size: default the input image's own width x height, which (as any size asked) becomes the pipeline's resolution
  nearest in aspect ratio (:func:`.kandinsky5.pipeline_resolution`); the input resized to it by PIL's Lanczos filter
  (``VaeImageProcessor.preprocess``) is the VAE's input, x / 255 * 2 - 1.
* image latents z_ref = scaling_factor E(x) (no shift), the posterior's **draw** from the generator after the noise's
  (``prepare_latents``: ``latent_dist.sample(generator)``); diffkit: image i's generator ``seed + i`` draws its noise
  (unless ``latents`` are given), then its posterior sample.
* the network input is [z_t, z_ref, 1] along the channels (2 C + 1, channel-last frame), its velocity is z_t's
  (:class:`.kandinsky5.Kandinsky5Net`'s ``reference``); the scheduler steps z_t alone.
* prompts: cleaned as T2I, put in the edit template (:data:`EDIT_TEMPLATE`, the vision tokens *after* the instruction),
  the image at **half** its original size (PIL ``resize`` with its default filter) through the processor's image
  processor (``pixel_values``, ``image_grid_thw``; the ``<|image_pad|>`` repeated t h w / m^2 times as
  ``Qwen2VLProcessor`` expands it, :func:`.qwen_image_edit._expanded`), Qwen2.5-VL run **with** the attention mask, the
  image and the processor's ``mm_token_type_ids`` (1 at the image tokens: the pipeline passes all the processor's
  outputs, so its multimodal RoPE positions are on, unlike Qwen-Image-Edit's call), its last hidden states less the
  first 54 tokens (:data:`EDIT_DROP`), every row at the batch's padded length; default ``max_sequence_length`` 1024 (the
  limit too). A prompt longer than 54 + ``max_sequence_length`` tokens (image tokens included) is refused in one line:
  the pipeline's text-level cut there trims the template's vision tokens (then its processor fails on the count of image
  tokens).
* CFG as T2I (s > 1, default 3.5): the negative prompt (default "") sees the same image, encoded at its own length;
  50 steps.

diffkit reads the processor's image processor with transformers' PIL class (``Qwen2VLImageProcessorPil``,
:func:`.qwen_image_edit.load_image_processor`; no torchvision): a folder whose processor would load the fast
(torchvision) image processor in diffusers may differ there by that processor's resizing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from .flow_latents import FlowLatentVAE
from .kandinsky5 import KANDINSKY5_I2I_PIPELINE, Kandinsky5

EDIT_TEMPLATE = ("<|im_start|>system\nYou are a prompt engineer. Based on the provided source image (first image) and "
                 "target image (second image), create an interesting text prompt that can be used together with the "
                 "source image to create the target image:<|im_end|><|im_start|>user{}<|vision_start|><|image_pad|>"
                 "<|vision_end|><|im_end|>")  # Kandinsky5I2IPipeline's prompt_template
EDIT_DROP = 54  # its prompt_template_encode_start_idx
EDIT_MAX_SEQUENCE_LENGTH = 1024  # its default max_sequence_length


@dataclass
class Kandinsky5Edit(Kandinsky5):
    """A ``Kandinsky5I2IPipeline`` folder's components (:func:`.kandinsky5.load_kandinsky5`): :class:`.Kandinsky5`'s
    and the processor's image processor; its prompts see the images they edit (:meth:`qwen_states`)."""

    image_processor: object = None

    @property
    def max_sequence_length(self) -> int:
        return EDIT_MAX_SEQUENCE_LENGTH

    def encode(self, images: torch.Tensor, generator=None, sample: bool = False) -> torch.Tensor:
        """z = scaling_factor E(x) of images in [-1, 1] by the FLUX VAE (the posterior's mean, or with ``sample`` its
        draw from ``generator``), no shift: :meth:`.flow_latents.FlowLatentVAE.encode` (not Sana's DC-AE one)."""
        return FlowLatentVAE.encode(self, images, generator, sample)

    def qwen_states(self, prompts: list, length: int, images: Optional[list] = None) -> torch.Tensor:
        """Qwen2.5-VL's last hidden states of the cleaned ``prompts``, each seeing its image of ``images`` (PIL, one
        per prompt, at half its size), less the first 54 tokens (module docstring); a prompt over 54 + ``length``
        tokens: one line."""
        from .qwen_image_edit import IMAGE_TOKEN, _expanded
        if images is None or len(images) != len(prompts):
            raise DiffkitError(f"a Kandinsky 5 edit prompt sees its image: give one image per prompt ({len(prompts)}),"
                               f" not {0 if images is None else len(images)}")
        halved = [image.resize((image.size[0] // 2, image.size[1] // 2)) for image in images]  # the pipeline's
        pixels = self.image_processor(images=halved, return_tensors="pt")
        merge = int(self.image_processor.merge_size) ** 2
        counts = iter(int(g.prod()) // merge for g in pixels["image_grid_thw"])
        texts = [_expanded(EDIT_TEMPLATE.format(p), counts) for p in prompts]
        tokens = self.tokenizer(texts, padding=True, return_tensors="pt").to(self.device)
        image_token = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)  # the processor's mm_token_type_ids: 1 there
        tokens["mm_token_type_ids"] = (tokens["input_ids"] == image_token).long()  # (the multimodal RoPE on)
        if tokens["input_ids"].shape[1] > EDIT_DROP + length:
            raise DiffkitError(f"a prompt of {tokens['input_ids'].shape[1] - EDIT_DROP} tokens with its image is over "
                               f"max_sequence_length={length}; give a shorter prompt, a smaller image or a longer "
                               f"max_sequence_length (at most {self.max_length_limit})")
        with torch.no_grad():
            return self.text_encoder(**tokens, pixel_values=pixels["pixel_values"].to(self.device,
                                                                                      self.text_encoder.dtype),
                                     image_grid_thw=pixels["image_grid_thw"].to(self.device), return_dict=True,
                                     output_hidden_states=True)["hidden_states"][-1][:, EDIT_DROP:]


def edit_image(model: Kandinsky5Edit, images, prompts: Union[str, Sequence[str]], *, height: Optional[int] = None,
               width: Optional[int] = None, seed: Optional[int] = 0, generator=None,
               latents: Optional[torch.Tensor] = None, posterior: str = "sample", **options) -> torch.Tensor:
    """``images`` (PIL images or (B, 3, H, W) in [-1, 1]) edited by ``prompts`` (one, or one per image) as
    ``Kandinsky5I2IPipeline`` (module docstring) with any diffkit sampler.

    height / width: the output's, default the first image's own (each missing one from it), drawn at the pipeline's
    nearest resolution. seed / generator: per image ``seed + i`` (or the caller's generator(s)): its noise, then its
    posterior sample; latents: z at s = 1 (B, C, h, w), as the pipeline's noise (then the generators draw the posterior
    alone); posterior: ``"sample"`` (the pipeline's) or ``"mean"``. options: :func:`.kandinsky5.text_to_image`'s
    (sampler, steps, guidance_scale, convention, negative_prompt, max_sequence_length (default 1024), output_range,
    return_latents, ...)."""
    from PIL import Image

    from ..editing import _generators
    from ..latent_editing import encode_images
    from ..noise import randn
    from .flow_latents import edit_prompts
    from .pixart import text_to_image
    from .qwen_image_edit import _pil_images, _pixels
    if not isinstance(model, Kandinsky5Edit):
        raise DiffkitError(f"edit_image needs a {KANDINSKY5_I2I_PIPELINE} folder; this one is a {model.pipeline} "
                           f"folder")
    if options.get("resolution_binning"):
        raise DiffkitError("resolution_binning is not allowed for a Kandinsky 5 folder (Kandinsky5I2IPipeline draws "
                           "one of its own seven resolutions)")
    pil = _pil_images(images)
    prompts = edit_prompts(torch.empty(len(pil), 3, 1, 1), prompts)
    shape = model.latent_shape(len(pil), pil[0].size[1] if height is None else height,
                               pil[0].size[0] if width is None else width)
    f = model.vae_scale_factor
    pixels = _pixels([image.resize((shape[3] * f, shape[2] * f), resample=Image.LANCZOS) for image in pil])
    generators = _generators(seed, generator, len(pil))
    if latents is None:  # image i's noise, then its posterior, from its generator (prepare_latents' order)
        latents = randn(shape, generators, device=model.device)
    reference = encode_images(model, pixels, posterior, generators)
    return text_to_image(model, prompts, height=shape[2] * f, width=shape[3] * f, latents=latents, seed=seed,
                         encode={"images": pil, "reference": reference}, **options)


__all__ = ["Kandinsky5Edit", "edit_image", "EDIT_TEMPLATE", "EDIT_DROP", "EDIT_MAX_SEQUENCE_LENGTH"]
