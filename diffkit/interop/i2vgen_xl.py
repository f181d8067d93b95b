"""An I2VGen-XL diffusers folder (``I2VGenXLPipeline``, diffusers 0.42.1: ali-vilab/i2vgen-xl): image-to-video with a
text prompt on an ``I2VGenXLUNet``, sampled with any diffkit sampler.

I2VGen-XL (Zhang et al. 2023, "I2VGen-XL: High-Quality Image-to-Video Synthesis via Cascaded Diffusion Models")
conditions a ModelScope-style video UNet (spatial and temporal convolutions / transformers, :mod:`.modelscope`) on the
first frame twice (Sec. 3.2): its CLIP image embedding as an extra cross-attention token, and its VAE latents, with a
frame-position mask, through a temporal encoder concatenated to the noisy latents; the frame rate is a micro-condition
added to the time embedding. diffkit drives it with the ModelScope / AnimateDiff video loop (Stable Diffusion's prompts,
guidance, scheduler mapping), as ``I2VGenXLPipeline.__call__``:

* prompts: CLIP text states with the pipeline's ``clip_skip`` (default 1: the final norm of the penultimate layer's
  states, the negative prompt's too; ``clip_skip=0``: the last layer's).
* the image: centre-cropped "wide" (box-resized by min(W / w, H / h), floor-divided, then centre-cropped) to (W, W),
  bilinear-resized to the feature extractor's crop size, normalised, CLIP's ``image_embeds`` (B, 1, d); and cropped to
  (W, H), in [-1, 1], its VAE posterior sampled x ``scaling_factor`` (z_img), followed by frames 1 .. F - 1 of constant
  value k / (F - 1) (the pipeline's ``prepare_image_latents``). The pipeline samples the posterior from torch's global
  generator (no seed); diffkit samples video i's from the generator ``image_seed + i`` (default 0).
* guidance: CFG eps_u + s (eps_c - eps_u) (diffusers' convention), default s = 9; the null pass gets the negative
  prompt (default "") and a zero image embedding, the same image latents and frame rate.
* the grid, its step and the start: :func:`.animatediff.text_to_video`'s (the folder's DDIM scheduler, default 50
  steps); ``target_fps`` (default 16) to the UNet.
* frames and size: 16 frames of 704 x 1280 (the pipeline's defaults, not the UNet's sample size); decoding frame by
  frame (``decode_chunk_size=1``).

Refused in one line before any weight is read (:func:`check_i2vgen_xl_folder`): another pipeline class, a missing
component, a UNet other than ``I2VGenXLUNet``, an image encoder other than ``CLIPVisionModelWithProjection``. Not
driven: LoRA files, ``eta`` > 0.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from . import require
from .animatediff import REQUIRED, text_to_video
from .modelscope import ModelScope, check_modelscope_folder

I2VGENXL_PIPELINE = "I2VGenXLPipeline"
I2VGENXL_GUIDANCE = 9.0  # I2VGenXLPipeline.__call__'s guidance_scale
I2VGENXL_FPS = 16  # its target_fps
I2VGENXL_SIZE = (704, 1280)  # its height, width
I2VGENXL_CLIP_SKIP = 1  # its clip_skip
I2VGENXL_CLASSES = {"unet": ("I2VGenXLUNet",), "vae": ("AutoencoderKL",),
                    "image_encoder": ("CLIPVisionModelWithProjection",),
                    "feature_extractor": ("CLIPImageProcessor", "CLIPImageProcessorPil", "CLIPImageProcessorFast")}


@dataclass
class I2VGenXL(ModelScope):
    """The loaded components of an ``I2VGenXLPipeline`` folder (:func:`load_i2vgen_xl`): ModelScope's, its ``unet``
    an ``I2VGenXLUNet``, with the CLIP image encoder and its processor; ``condition``: the images of one
    :func:`image_to_video` call (a bound copy)."""

    image_encoder: object = None
    feature_extractor: object = None
    condition: Optional[dict] = field(default=None, repr=False)
    pipeline: str = I2VGENXL_PIPELINE

    @property
    def video_guidance(self) -> float:
        return I2VGENXL_GUIDANCE

    def latent_shape(self, batch: int, height: Optional[int] = None, width: Optional[int] = None) -> tuple:
        """Stable Diffusion's, default 704 x 1280 (the pipeline's)."""
        return super().latent_shape(batch, I2VGENXL_SIZE[0] if height is None else height,
                                    I2VGENXL_SIZE[1] if width is None else width)

    def decode_video(self, latents: torch.Tensor, chunk=None) -> torch.Tensor:
        """Videos (B, T, C, H, W) in [-1, 1] (not clamped): frame by frame (the pipeline's decode_chunk_size 1)."""
        return super().decode_video(latents, chunk or 1)

    def image_embeddings(self, images: list, width: int) -> torch.Tensor:
        """CLIP ``image_embeds`` (B, 1, d) of the images cropped wide to (W, W), bilinear-resized to the processor's
        crop size (module docstring)."""
        import numpy as np
        from PIL import Image
        crop = self.feature_extractor.crop_size
        pixels = np.stack([np.asarray(crop_wide(image, width, width).resize((crop["width"], crop["height"]),
                                                                            Image.BILINEAR)) for image in images])
        pixels = torch.from_numpy(pixels.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
        pixels = self.feature_extractor(images=pixels, do_normalize=True, do_center_crop=False, do_resize=False,
                                        do_rescale=False, return_tensors="pt").pixel_values
        with torch.no_grad():
            return self.image_encoder(pixels.to(self.device, self.dtype)).image_embeds.unsqueeze(1)

    def image_latents(self, images: list, height: int, width: int, frames: int, seed: int) -> torch.Tensor:
        """z_img (B, C, F, h, w): each image cropped wide to (W, H), its posterior sampled from ``seed + i`` x
        scaling_factor, then frames 1 .. F - 1 of value k / (F - 1) (module docstring)."""
        import numpy as np

        from ..noise import generators_from_seed
        pixels = np.stack([np.asarray(crop_wide(image, width, height)) for image in images])
        pixels = torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)
        generators = generators_from_seed(seed, len(images))
        with torch.no_grad():
            z = torch.cat([self.vae.encode(pixels[i:i + 1].to(self.device, self.dtype)).latent_dist.sample(g)
                           for i, g in enumerate(generators)]) * self.vae.config.scaling_factor
        masks = [torch.full_like(z, k / (frames - 1)) for k in range(1, frames)]
        return torch.stack([z, *masks], dim=2)

    def video_conditioning(self, prompts: list, negative_prompt, scale: float, convention: str, cfg: bool,
                           clip_skip: Optional[int], size: tuple) -> tuple:
        """(denoiser, cond) of :func:`image_to_video`: the prompts' states, the images' embedding and latents and the
        frame rate (:attr:`condition`), guided against the negative prompt and a zero image embedding (``cfg``)."""
        from .stable_diffusion import negative_prompts
        images, fps, seed, frames = (self.condition[k] for k in ("images", "fps", "image_seed", "frames"))
        embeddings = self.image_embeddings(images, size[1])
        cond = {"context": self.encode_prompts(prompts, clip_skip), "image_embeddings": embeddings,
                "image_latents": self.image_latents(images, *size, frames, seed),
                "fps": torch.full((len(prompts),), fps, device=self.device)}
        if not cfg:
            return self.denoiser, cond
        null = self.encode_prompts(negative_prompts(negative_prompt, len(prompts)), clip_skip)
        return self.guided(scale, null, convention, null_cond={"image_embeddings": torch.zeros_like(embeddings)}), \
            cond


def crop_wide(image, width: int, height: int):
    """The pipeline's ``_center_crop_wide``: ``image`` (PIL) box-resized by s = min(w / W, h / H) (each side floor
    divided by s) and centre-cropped to (W, H)."""
    from PIL import Image
    scale = min(image.width / width, image.height / height)
    image = image.resize((round(image.width // scale), round(image.height // scale)), resample=Image.BOX)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def check_i2vgen_xl_folder(directory) -> tuple:
    """(model_index dict, scheduler config) of an ``I2VGenXLPipeline`` folder from its JSON alone
    (:func:`.modelscope.check_modelscope_folder` with its classes)."""
    return check_modelscope_folder(directory, (I2VGENXL_PIPELINE,), "I2VGen-XL",
                                   REQUIRED + ("image_encoder", "feature_extractor"), I2VGENXL_CLASSES)


def load_i2vgen_xl(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                   progress: bool = True) -> I2VGenXL:
    """Load an ``I2VGenXLPipeline`` folder (never downloads, never unpickles), checked first
    (:func:`check_i2vgen_xl_folder`): Stable Diffusion's components with the ``I2VGenXLUNet``, the CLIP image encoder
    and its processor."""
    from . import from_pretrained, library_progress_bars
    from .stable_diffusion import _load_stable_diffusion
    diffusers, transformers = require("diffusers"), require("transformers")
    directory = Path(directory)
    check_i2vgen_xl_folder(directory)
    with library_progress_bars(progress):
        sd = _load_stable_diffusion(directory, device, dtype, check_unet=lambda *a, **k: None,
                                    unet_class=diffusers.I2VGenXLUNet)
        encoder = from_pretrained(transformers.CLIPVisionModelWithProjection, directory / "image_encoder",
                                  local_files_only=True, torch_dtype=dtype, use_safetensors=True)
        processor = from_pretrained(transformers.CLIPImageProcessor, directory / "feature_extractor",
                                    local_files_only=True)
    encoder.to(sd.device).eval().requires_grad_(False)
    return I2VGenXL(**{f.name: getattr(sd, f.name) for f in fields(sd)}, image_encoder=encoder,
                    feature_extractor=processor)


def image_to_video(model: I2VGenXL, images, prompts: Union[str, Sequence[str]], *, target_fps: Optional[int] = None,
                   image_seed: int = 0, clip_skip: Optional[int] = None, num_frames: Optional[int] = None,
                   **options) -> torch.Tensor:
    """Videos (B, T, C, H, W) starting from ``images`` (PIL images or (B, 3, H, W) in [-1, 1]; one for
    every prompt, or one per prompt) by ``prompts`` as ``I2VGenXLPipeline`` (module docstring). target_fps: the
    UNet's frame-rate condition (default 16); image_seed: video i's image posterior from ``image_seed + i``;
    clip_skip: default 1 (the pipeline's; 0 for the last layer). The options: :func:`.animatediff.text_to_video`'s
    (num_frames default 16, height / width default 704 x 1280, guidance_scale default 9)."""
    from .qwen_image_edit import _pil_images
    from .stable_diffusion import prompt_list
    prompts = prompt_list(prompts)
    images = _pil_images(images)
    if len(images) not in (1, len(prompts)):
        raise DiffkitError(f"{len(images)} images for {len(prompts)} prompts are not allowed; give one, or one per "
                           f"prompt")
    fps = I2VGENXL_FPS if target_fps is None else target_fps
    if isinstance(fps, bool) or not isinstance(fps, int) or fps < 1:
        raise DiffkitError(f"target_fps={fps!r} is not allowed; give a positive integer")
    frames = model.frame_count(num_frames)
    if frames < 2:
        raise DiffkitError(f"num_frames={frames!r} is not allowed; give at least 2 (the image latents' frame "
                           f"positions k / (F - 1))")
    condition = {"images": images * (len(prompts) // len(images)), "fps": fps,
                 "image_seed": image_seed, "frames": frames}
    bound = dataclasses.replace(model, condition=condition)
    return text_to_video(bound, prompts, num_frames=frames,
                         clip_skip=I2VGENXL_CLIP_SKIP if clip_skip is None else clip_skip, **options)


__all__ = ["I2VGenXL", "load_i2vgen_xl", "check_i2vgen_xl_folder", "image_to_video", "crop_wide", "I2VGENXL_PIPELINE",
           "I2VGENXL_GUIDANCE", "I2VGENXL_FPS", "I2VGENXL_SIZE", "I2VGENXL_CLIP_SKIP"]
