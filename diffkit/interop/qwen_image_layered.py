"""A Qwen-Image-Layered diffusers folder (``QwenImageLayeredPipeline``, diffusers 0.42.1): one RGBA image decomposed
into N RGBA layers with any diffkit sampler, on :mod:`.qwen_image`'s loading, prompts, network, true CFG and flow
loop.

Qwen-Image-Layered (Qwen team 2025, "Qwen-Image-Layered: Towards Inherent Editability via Layer Decomposition")
denoises N + 1 frames of latents at once, frame 0 the composite and frames 1..N the layers, beside the input image's
latents, with the Qwen-Image MMDiT given a layer-aware 3-D RoPE (``use_layer3d_rope``: frame k at layer index k, the
input image at -1) and an extra time embedding (``use_additional_t_cond``; the pipeline's ``is_rgb`` = 0). As the
pipeline's ``__call__``:

* size: the image's ratio r at the area ``resolution``^2 (640 or 1024; :func:`.qwen_image_edit.calculated_size`,
  multiples of 32), floored to 2 f; the image resized to it by PIL's Lanczos filter, as x / 255 * 2 - 1 in its own
  channels (RGBA for the folder's 4-channel VAE: diffkit converts the input to the VAE's channels), its latents
  z_ref = (mean of E(x) - mean) / std (``sample_mode="argmax"``).
* the prompt: Qwen-Image's text template (34 tokens dropped, cut to ``max_sequence_length`` 512; no image in it).
  The pipeline captions an empty prompt with the Qwen2.5-VL model's ``generate``; diffkit does not (refused).
* latents: z (B, (N + 1) C, h, w) here, the pipeline's (B, N + 1, C, h, w) draw viewed as channels (frame-major, the
  same numbers from the same generator); packed frame after frame, z_ref's tokens after them, ``img_shapes`` [(1,
  h/2, w/2)] * (N + 1) + [(1, h/2, w/2)], ``additional_t_cond`` 0, the prediction kept on the N + 1 frames
  (:class:`QwenImageLayeredNet`).
* the grid: ``set_timesteps(sigmas=linspace(1, 0, S + 1)[:-1], mu)`` (the same sigmas as Qwen-Image's linspace(1,
  1/S, S), :meth:`.flux.Flux.input_sigmas`) with mu = sqrt(z_ref's tokens / 256) (its ``base_seqlen``; not
  ``calculate_shift``), 50 steps of flow Euler by default.
* guidance: true CFG (``true_cfg_scale`` 4.0) only with a negative prompt, u = u_n + s (u_c - u_n) (Ho & Salimans
  2022, eq. 6, in the velocity), rescaled per token to u_c's norm only with ``cfg_normalize`` (default off).
* output: frames 1..N decoded one by one, x = D(z std + mean): (B, N, channels, H, W).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial
from typing import Optional

import torch

from ..errors import DiffkitError
from .flux import pack_latents, unpack_latents
from .qwen_image import LAYERED_PIPELINE, LAYERED_TRANSFORMER, QwenImage, QwenImageNet

LAYERS = 4  # __call__'s default layers
RESOLUTIONS = (640, 1024)  # the resolutions it takes (its assert), 640 its default
LAYERED_STEPS = 50
BASE_TOKENS = 256 * 256 / 16 / 16  # its base_seqlen: mu = sqrt(tokens / 256)


class QwenImageLayeredNet(QwenImageNet):
    """:class:`.qwen_image.QwenImageNet` over a Qwen-Image-Layered transformer on z (B, F C, h, w) of F frames
    (module docstring): each frame packed, frame after frame, with its own ``img_shapes`` entry, ``additional_t_cond``
    0; true CFG plain, or norm-matched with ``normalize`` (the pipeline's ``cfg_normalize``)."""

    def __init__(self, transformer, scale: float = 1.0, normalize: bool = False):
        super().__init__(transformer, scale)
        self.normalize = bool(normalize)

    def frames(self, x: torch.Tensor) -> int:
        return x.shape[1] // (int(self.model.config.in_channels) // 4)

    def packed(self, x: torch.Tensor) -> tuple:
        chunks = x.chunk(self.frames(x), dim=1)
        shape = (1, x.shape[2] // 2, x.shape[3] // 2)
        return torch.cat([pack_latents(c) for c in chunks], dim=1), [shape] * len(chunks)

    def unpacked(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([unpack_latents(o, x.shape[2], x.shape[3]) for o in out.chunk(self.frames(x), dim=1)], dim=1)

    def call_inputs(self, packed) -> dict:
        return {"additional_t_cond": torch.zeros(packed.shape[0], dtype=torch.long, device=packed.device)}

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        return super().combine(cond, uncond) if self.normalize else uncond + self.scale * (cond - uncond)


@dataclass
class QwenImageLayered(QwenImage):
    """A Qwen-Image-Layered folder's components (:func:`.qwen_image.load_qwen_image`): Qwen-Image's, with latents of
    ``layers`` + 1 frames stacked as channels, its own grid and mu, and frames 1.. decoded as layers (module
    docstring). :func:`decompose` runs it with ``layers`` and ``cfg_normalize`` set on a copy."""

    layers: int = LAYERS
    cfg_normalize: bool = False
    default_steps = LAYERED_STEPS

    @property
    def net_class(self):
        return partial(QwenImageLayeredNet, normalize=self.cfg_normalize)

    def latent_shape(self, batch: int, height: Optional[int] = None, width: Optional[int] = None) -> tuple:
        shape = super().latent_shape(batch, height, width)
        return (batch, shape[1] * (self.layers + 1), *shape[2:])

    def mu(self, h: int, w: int, steps: Optional[int] = None) -> float:
        """sqrt(tokens / 256) of the image's latents h x w (the pipeline's; not ``calculate_shift``)."""
        return math.sqrt((h // 2) * (w // 2) / BASE_TOKENS)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, N, channels, H, W) of z (B, (N + 1) C, h, w): frames 1..N each decoded (the composite frame 0 not)."""
        b, _, h, w = latents.shape
        channels = int(self.transformer.config.in_channels) // 4
        layers = super().decode(latents[:, channels:].reshape(-1, channels, h, w))
        return layers.reshape(b, -1, *layers.shape[1:])


def check_layered_transformer(directory, config: dict) -> None:
    """One line where a Layered folder's transformer ``config`` lacks the layer RoPE or the extra time embedding
    (another folder's with them: :func:`.qwen_image.check_qwen_image_folder`)."""
    for key in LAYERED_TRANSFORMER:
        if not config.get(key, False):
            raise DiffkitError(f"{directory}'s transformer has {key}={config.get(key, False)!r}; a "
                               f"{LAYERED_PIPELINE} folder's needs {key}=true (Qwen-Image-Layered's)")


def _input_image(model: QwenImageLayered, image):
    """``image`` (a PIL image, or (1, channels, H, W) in [-1, 1]) as a PIL image in the VAE's channels (RGBA for 4)."""
    from PIL import Image
    mode = {4: "RGBA", 3: "RGB"}.get(model.image_channels)
    if mode is None:
        raise DiffkitError(f"a VAE of {model.image_channels} input channels is not allowed; allowed: 3 or 4 (RGBA)")
    if isinstance(image, torch.Tensor):
        if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] not in (3, 4):
            raise DiffkitError(f"an image of shape {tuple(image.shape)} is not allowed; give one PIL image or (1, 3 "
                               f"or 4, H, W) in [-1, 1] (QwenImageLayeredPipeline decomposes one image)")
        pixels = ((image[0].detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        image = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    if not isinstance(image, Image.Image):
        raise DiffkitError(f"an image of type {type(image).__name__} is not allowed; give one PIL image or (1, 3 or "
                           f"4, H, W) in [-1, 1]")
    return image.convert(mode)


def decompose(model: QwenImageLayered, image, prompt: str, *, layers: int = LAYERS, resolution: int = 640,
              area: Optional[int] = None, cfg_normalize: bool = False, **options) -> torch.Tensor:
    """``image`` decomposed into ``layers`` layers described by ``prompt`` as ``QwenImageLayeredPipeline`` (module
    docstring) with any diffkit sampler: (1, layers, channels, H, W) in ``output_range`` (or with ``return_latents``
    z_0 (1, (layers + 1) C, h, w), the composite frame first).

    resolution: 640 or 1024 (the area resolution^2 the image is resized to at its ratio); area: another area in
    pixels (diffkit's own, e.g. a small test; the pipeline has none). cfg_normalize: the pipeline's (true CFG
    rescaled per token). options: :func:`.qwen_image.text_to_image`'s (sampler, steps (50), guidance_scale (true CFG,
    4.0 with a negative prompt), convention, negative_prompt, seed, latents (z at s = 1, (1, (layers + 1) C, h, w),
    the pipeline's unpacked draw), max_sequence_length (512), output_range, return_latents, progress, ...)."""
    from PIL import Image

    from .qwen_image import text_to_image
    from .qwen_image_edit import _pixels, calculated_size
    if not isinstance(model, QwenImageLayered):
        raise DiffkitError(f"decompose needs a Qwen-Image-Layered folder ({LAYERED_PIPELINE}); this one is not")
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise DiffkitError(f"layers={layers!r} is not allowed; give an integer >= 1 (the pipeline's default 4)")
    if area is None and resolution not in RESOLUTIONS:
        raise DiffkitError(f"resolution={resolution!r} is not allowed; allowed: 640 or 1024 (the pipeline's)")
    area = resolution * resolution if area is None else area
    if isinstance(area, bool) or not isinstance(area, int) or area < 32 * 32:
        raise DiffkitError(f"area={area!r} is not allowed; give an integer of at least 1024 pixels")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DiffkitError(f"prompt={prompt!r} is not allowed: QwenImageLayeredPipeline captions an empty prompt "
                           f"with its Qwen2.5-VL model, which diffkit does not; give the image's description")
    for key in ("height", "width", "guide", "controlnet"):
        if options.get(key) is not None:
            raise DiffkitError(f"{key} is not allowed for a Qwen-Image-Layered folder (its pipeline sizes the "
                               f"layers as the image: the ratio at resolution^2)")
    picture = _input_image(model, image)
    width, height = calculated_size(*picture.size, area)
    multiple = 2 * model.vae_scale_factor
    resized = picture.resize((width, height), resample=Image.LANCZOS)
    height, width = height // multiple * multiple, width // multiple * multiple
    layered = replace(model, layers=layers, cfg_normalize=bool(cfg_normalize))
    reference = model.encode(_pixels([resized]))
    return text_to_image(layered, [prompt], height=height, width=width, guide={"reference": reference}, **options)


__all__ = ["QwenImageLayered", "QwenImageLayeredNet", "decompose", "check_layered_transformer", "LAYERED_PIPELINE",
           "LAYERS"]
