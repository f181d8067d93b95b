"""A Z-Image Omni diffusers folder (``ZImageOmniPipeline``, diffusers 0.42.1): text-to-image, or generation
conditioned on reference images, with any diffkit sampler, on :mod:`.z_image`'s loading, grid, guidance and decoding.

Z-Image Omni (Z-Image Team 2025, "Z-Image: An Efficient Image Generation Foundation Model with Single-Stream Diffusion
Transformer", the omni pre-training) runs the S3-DiT in its *omni mode*: one sequence per sample of caption segments,
image latents and SigLIP features, each token with a noise flag (clean condition images are modulated at t = 1, the
noisy target at t). As the pipeline's ``__call__``:

* prompts (``_encode_prompt``): with N condition images, each prompt becomes N + 2 segments, "<|im_start|>user\\n
  <|vision_start|>", N - 1 times "<|vision_end|><|vision_start|>", "<|vision_end|>" + prompt + "<|im_end|>\\n
  <|im_start|>assistant\\n<|vision_start|>", "<|vision_end|><|im_end|>" (no images: the one segment
  "<|im_start|>user\\n" + prompt + "<|im_end|>\\n<|im_start|>assistant\\n", no chat template), each tokenised to
  ``max_sequence_length`` tokens and encoded by Qwen3 under its mask, its second-to-last states at the real tokens.
  diffkit keeps them padded, (B, N + 2, L, d) with the mask (B, N + 2, L).
* condition images (:func:`omni_references`): each checked and resized to the area height x width (both given) or
  1024^2 where larger, its sides floored to multiples of 2 f and resized / centre-cropped there (FLUX.2's processing,
  :func:`.flux2_reference.reference_images`); its latents (E(x) mode - shift_factor) scaling_factor of the pixels
  **rounded to bfloat16** (the pipeline encodes ``image.bfloat16()``: its VAE must be bfloat16, on which diffkit's
  encoding is the same; on a float32 VAE diffusers fails there and diffkit encodes the rounded pixels in float32);
  SigLIP2's last hidden states of the resized (uncropped) image, its h x w patch grid. The size defaults to the last
  image's processed one (no images: 1024^2). The same images condition every sample and CFG's negative pass.
* the transformer call (:class:`ZImageOmniNet`): x = [condition latents..., z_t] with noise flags [0, ..., 0, 1],
  ``cap_feats`` the segments, ``siglip_feats`` [SigLIP..., None] (None without images); the rest (time (1000 - t) /
  1000, u = -output, CFG weight W > 0 with ``cfg_normalization`` / ``cfg_truncation``, the grid, the draws, decoding)
  is Z-Image's (:mod:`.z_image`). The pipeline runs the conditional and negative passes as one batch; diffkit as two
  calls (the same up to float rounding).

Refused in one line before any weight is read (:func:`.z_image.check_z_image_folder` with ``omni``): a transformer
without ``siglip_feat_dim``, missing ``siglip`` / ``siglip_processor`` entries, and what Z-Image refuses; a
ControlNet, img2img or inpainting (diffusers 0.42.1 has no Omni pipeline for them).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from . import model_dtype, require
from .z_image import MAX_SEQUENCE_LENGTH, ZImage, ZImageNet

OMNI_AREA = 1024 * 1024  # the pipeline's largest condition-image area without height and width


class ZImageOmniNet(ZImageNet):
    """:class:`.z_image.ZImageNet` in the transformer's omni mode: ``context`` (B, S, L, d) / ``mask`` (B, S, L) the
    caption segments, ``references`` ([latents (C, 1, h_i, w_i)], [SigLIP (H_i, W_i, d_s)]) the condition images
    before each sample's z_t (module docstring)."""

    def __init__(self, transformer, T: int, scale: float = 1.0, normalize: float = 0.0,
                 trunc_sigma: Optional[float] = None, references: Optional[tuple] = None):
        super().__init__(transformer, T, scale, normalize, trunc_sigma)
        self.references = references or ([], [])

    def _call(self, x, time, context, mask):
        dtype, batch = model_dtype(self.model), x.shape[0]
        latents, siglip = self.references
        segments = [[s[keep.bool()].to(dtype) for s, keep in zip(row, keeps)]
                    for row, keeps in zip(context.expand(batch, -1, -1, -1), mask.expand(batch, -1, -1))]
        xs = [[z.to(dtype) for z in latents] + [z] for z in x.to(dtype).unsqueeze(2).unbind(0)]
        feats = [[f.to(dtype) for f in siglip] + [None] if siglip else None for _ in range(batch)]
        out = self.model(x=xs, t=time, cap_feats=segments, siglip_feats=feats,
                         image_noise_mask=[[0] * len(latents) + [1]] * batch, return_dict=False)[0]
        return torch.stack([o.float() for o in out]).squeeze(2).to(x.dtype)


@dataclass
class ZImageOmni(ZImage):
    """A ``ZImageOmniPipeline`` folder's components (:func:`load_z_image_omni`): :class:`.z_image.ZImage`'s and its
    SigLIP2 vision model and image processor; prompts and network in omni mode (module docstring)."""

    siglip: object = None
    siglip_processor: object = None

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH,
                       references: Optional[tuple] = None) -> tuple:
        """(states (B, S, L, d), mask (B, S, L) bool) of the prompts' S segments (module docstring; S = 1 without
        ``references``, N + 2 with N condition images), each as :meth:`.z_image.ZImage.encode_prompts` encodes a
        text (its length checks included)."""
        from .stable_diffusion import prompt_list
        count = 0 if references is None else len(references[0])
        prompts = prompt_list(prompts)
        if count:
            head = ["<|im_start|>user\n<|vision_start|>"] + ["<|vision_end|><|vision_start|>"] * (count - 1)
            texts = [head + ["<|vision_end|>" + p + "<|im_end|>\n<|im_start|>assistant\n<|vision_start|>",
                             "<|vision_end|><|im_end|>"] for p in prompts]
        else:
            texts = [["<|im_start|>user\n" + p + "<|im_end|>\n<|im_start|>assistant\n"] for p in prompts]
        states, mask = self.encoded_texts(sum(texts, []), max_sequence_length)
        return states.unflatten(0, (len(prompts), -1)), mask.unflatten(0, (len(prompts), -1))

    def guided_denoiser(self, h: int, w: int, scale: float = 1.0, normalize: float = 0.0,
                        trunc_sigma: Optional[float] = None, references: Optional[tuple] = None):
        """The flow-prediction Denoiser of :class:`ZImageOmniNet` with ``references`` (a new one per call)."""
        from ..denoiser import Denoiser
        net = ZImageOmniNet(self.transformer, 1000, float(scale), float(normalize), trunc_sigma, references)
        denoiser = Denoiser(net, self.denoiser_for(h, w).schedule, "flow_prediction")
        denoiser.model = self.transformer
        return denoiser


def omni_references(model: ZImageOmni, images: Sequence, height: Optional[int] = None,
                    width: Optional[int] = None) -> tuple:
    """(([latents (C, 1, h_i, w_i)], [SigLIP states (H_i, W_i, d)]), (H, W) of the last image) of condition
    ``images`` (PIL images or paths) as the pipeline's ``__call__`` (module docstring); one line for an image its
    processor refuses."""
    from .flux2_reference import reference_images
    resized = []
    area = height * width if height is not None and width is not None else OMNI_AREA
    pixels, _ = reference_images(None, images, area=area, multiple=2 * model.vae_scale_factor, resized=resized)
    latents = [model.encode(p.to(torch.bfloat16).float())[0].unsqueeze(1) for p in pixels]  # image.bfloat16()
    siglip = []
    with torch.no_grad():
        for image in resized:
            inputs = model.siglip_processor(images=[image], return_tensors="pt").to(model.device)
            rows, cols = (int(n) for n in inputs["spatial_shapes"][0])
            states = model.siglip(**inputs).last_hidden_state
            siglip.append(states[:, :rows * cols].view(rows, cols, states.shape[-1]).float())
    return (latents, siglip), tuple(pixels[-1].shape[2:])


def load_z_image_omni(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                      progress: bool = True, lora=None) -> ZImageOmni:
    """Load a ``ZImageOmniPipeline`` folder (never downloads, never unpickles; :func:`.z_image.load_z_image`
    dispatches here): Z-Image's parts as :func:`.z_image.load_z_image`, ``siglip`` (``Siglip2VisionModel``) and
    ``siglip_processor`` (transformers' PIL ``Siglip2ImageProcessorPil``: no torchvision). ``lora``: refused (the
    Omni transformer's LoRA names are not checked)."""
    from .flow_latents import load_one_text_folder
    from .z_image import check_z_image_folder
    diffusers, transformers = require("diffusers"), require("transformers")
    from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil
    if lora:
        raise DiffkitError("a LoRA is not allowed for a Z-Image Omni folder (diffkit reads Z-Image LoRAs for "
                           "ZImagePipeline folders)")
    directory = Path(directory)
    index, sched = check_z_image_folder(directory, omni=True)
    processor = Siglip2ImageProcessorPil.from_pretrained(directory / "siglip_processor", local_files_only=True)
    model = load_one_text_folder(ZImageOmni, directory, index, sched, diffusers.ZImageTransformer2DModel,
                                 "Qwen3Model", device, dtype, progress, "cap_feat_dim")
    model.siglip = transformers.Siglip2VisionModel.from_pretrained(
        directory / "siglip", local_files_only=True, torch_dtype=dtype, use_safetensors=True).to(model.device)
    model.siglip.eval().requires_grad_(False)
    model.siglip_processor = processor
    if model.siglip.config.hidden_size != model.transformer.config.siglip_feat_dim:
        raise DiffkitError(f"{directory}: the transformer's siglip_feat_dim={model.transformer.config.siglip_feat_dim}"
                           f" does not fit SigLIP's hidden size {model.siglip.config.hidden_size}")
    return model


def text_to_image(model: ZImageOmni, prompts: Union[str, Sequence[str]], images: Optional[Sequence] = None, *,
                  height: Optional[int] = None, width: Optional[int] = None, **options) -> torch.Tensor:
    """Images of a Z-Image Omni folder for ``prompts`` as ``ZImageOmniPipeline``, conditioned on ``images`` (PIL
    images or paths, the same for every prompt; None: text-to-image): :func:`.z_image.text_to_image`'s options
    (sampler / grid, steps (50), guidance_scale W (5.0), negative prompt, cfg_normalization / cfg_truncation,
    latents, max_sequence_length, output options) with height / width defaulting to the last image's processed size
    (no images: 1024). ControlNets are refused."""
    from .z_image import text_to_image as z_image_text_to_image
    if not isinstance(model, ZImageOmni):
        raise DiffkitError("z_image_omni.text_to_image needs a Z-Image Omni folder (ZImageOmniPipeline)")
    if options.get("controlnets") is not None:
        raise DiffkitError("a ControlNet is not allowed for a Z-Image Omni folder (diffusers 0.42.1 has no Omni "
                           "ControlNet pipeline)")
    references = None
    if images is not None:
        references, size = omni_references(model, images, height, width)
        height, width = size[0] if height is None else height, size[1] if width is None else width
    return z_image_text_to_image(model, prompts, height=height, width=width, references=references, **options)


__all__ = ["ZImageOmni", "ZImageOmniNet", "load_z_image_omni", "omni_references", "text_to_image", "OMNI_AREA"]
