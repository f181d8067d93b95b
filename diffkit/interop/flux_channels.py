"""FLUX.1 Fill and FLUX.1 Depth / Canny folders (:mod:`.flux`): transformers that take extra image channels
concatenated after the packed latents.

Both are ``FluxTransformer2DModel`` s whose ``x_embedder`` reads more than the 4 C packed channels of the latents
(C the VAE's latent channels, 16): diffusers 0.42.1 concatenates the extra tokens after the packed latents along
the channel axis (``torch.cat((latents, extra), dim=2)``) and the transformer predicts the velocity of the latents
alone (``out_channels`` 4 C). Packing is channel-major within each 2 x 2 patch (:func:`.flux.pack_latents`), so
packing the unpacked channels concatenated after z, cat([z, e], 1), is that concatenation: :class:`ChannelConcatNet`
concatenates in diffkit's unpacked (B, C, h, w) space before :class:`~.flux.FluxNet` packs, with any sampler.

* FLUX.1 Fill (``FluxFillPipeline``, in_channels 4 (2 C + f^2): 384 for C = 16, f = 8): extra channels the masked
  image's latents (E(x (1 - m)) - shift) * scale, x (1 - m) with the binarised pixel mask m (1 = repaint), then the
  mask itself, its f x f pixels of each latent cell as f^2 channels (``prepare_mask_latents``: ``view`` / ``permute``
  to (B, f^2, h, w), channel dy f + dx: :func:`fill_mask`, ``pixel_unshuffle``). It only inpaints, and runs as the
  dedicated inpainting networks (:mod:`.sd_inpaint`, :func:`~.sd_inpaint.unet_inpaint`: nothing is replaced, the
  network keeps the known region), with the pipeline's draws per image: the image's posterior sample (even at
  strength 1, where the start is pure noise: ``scale_noise`` at sigma 1), the noise, the masked image's posterior
  sample. Its defaults: 50 steps, the embedded guidance 30, strength 1 (``strength`` < 1: SDEdit's start on
  ``get_timesteps``' cut, :meth:`~.flow_latents.FlowLatentVAE.pipeline_strength`); no true CFG, IP-Adapter or
  ControlNet (the pipeline takes none).
* FLUX.1 Depth / Canny (``FluxControlPipeline``, in_channels 8 C = 128): the extra channels are the control image's
  VAE latents, (E(c) - shift) * scale with c the control image (RGB resized to the output size, in [-1, 1]) and
  E(c) a posterior draw (the pipeline's ``latent_dist.sample(generator)``; here sample i's from the generator
  ``control_seed + i``, as diffkit's FLUX ControlNets, :func:`.flow_controlnet.control_latents`) or its mean.
  Otherwise FluxPipeline's text-to-image loop (28 steps, guidance 3.5); no true CFG, IP-Adapter or ControlNet.
  Edits (``FluxControlImg2ImgPipeline``, with a mask ``FluxControlInpaintPipeline``): FLUX img2img / inpainting
  (:func:`.flux.image_to_image`: strength 0.6, 28 steps, the embedded guidance 7.0) with the control latents
  concatenated at every step; image i's generator draws, in the pipelines' order, (inpainting only) the masked
  image's posterior, which that pipeline computes and never uses, then the control image's posterior, the image's
  posterior and the noise (:func:`control_cond` with ``generators``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import DiffkitError
from .controlnet import PerPromptImages, open_control_image

FLUX_FILL, FLUX_CONTROL = "FluxFillPipeline", "FluxControlPipeline"  # the folders' model_index.json classes
FLUX_FILL_GUIDANCE = 30.0  # FluxFillPipeline's default guidance_scale (the embedded value)
FLUX_FILL_STEPS = 50  # its default num_inference_steps
FLUX_FILL_STRENGTH = 1.0  # and strength
CONTROL_KEY = "control_latents"  # the cond entry of a FLUX.1 Depth / Canny transformer's control latents
WHAT = {FLUX_FILL: "a FLUX.1 Fill folder (FluxFillPipeline: latents + masked-image latents + mask in)",
        FLUX_CONTROL: "a FLUX.1 Depth / Canny folder (FluxControlPipeline: latents + control-image latents in)"}


def in_channels(kind: Optional[str], latent_channels: int, factor: int) -> int:
    """The transformer's in_channels a folder of pipeline class ``kind`` has, for VAE latents of C channels and
    spatial factor f: 4 (2 C + f^2) for Fill, 8 C for Depth / Canny, else 4 C (the text-to-image transformer)."""
    c = latent_channels
    return 4 * {FLUX_FILL: 2 * c + factor * factor, FLUX_CONTROL: 2 * c}.get(kind, c)


def variant(transformer_config, latent_channels: int, factor: int) -> Optional[str]:
    """:data:`FLUX_FILL` or :data:`FLUX_CONTROL` for a loaded transformer of those channels, None otherwise."""
    channels = int(transformer_config.in_channels)
    return next((kind for kind in (FLUX_FILL, FLUX_CONTROL) if channels == in_channels(kind, latent_channels, factor)),
                None)


def folder_variant(directory) -> Optional[str]:
    """The ``_class_name`` of a FLUX.1 Fill / Depth / Canny folder's ``model_index.json`` (None for any other)."""
    from .sd_xl import pipeline_class
    kind = pipeline_class(directory)
    return kind if kind in (FLUX_FILL, FLUX_CONTROL) else None


class ChannelConcatNet(torch.nn.Module):
    """``net(x, t, **cond)`` = ``inner(cat([x] + [cond[k] for k in keys], 1), t, **rest)``: the extra image channels
    of a Fill / Depth / Canny transformer after the latents (module docstring), each (B, c_k, h, w) at x's size."""

    def __init__(self, inner, keys: tuple, what: str):
        super().__init__()
        self.inner, self.keys, self.what = inner, tuple(keys), what

    def forward(self, x: torch.Tensor, t, **cond) -> torch.Tensor:
        extra = [cond.pop(key, None) for key in self.keys]
        if any(e is None for e in extra):
            raise DiffkitError(f"this is {self.what}: give cond {list(self.keys)} (image_to_image(mask=) for Fill, "
                               f"text_to_image(control_image=) for Depth / Canny)")
        extra = [e.to(x) for e in extra]
        if any(e.ndim != 4 or e.shape[0] != x.shape[0] or e.shape[2:] != x.shape[2:] for e in extra):
            raise DiffkitError(f"{[tuple(e.shape) for e in extra]} ({list(self.keys)}) do not fit the latents "
                               f"{tuple(x.shape)}")
        return self.inner(torch.cat([x, *extra], dim=1), t, **cond)


def wrap_net(net, kind: Optional[str]):
    """``net`` (a :class:`~.flux.FluxNet`) with its variant's extra channels: Fill's masked-image latents then mask,
    Depth / Canny's control latents; ``net`` itself for a text-to-image transformer."""
    from .sd_inpaint import MASK_KEY, MASKED_KEY
    if kind is None:
        return net
    return ChannelConcatNet(net, (MASKED_KEY, MASK_KEY) if kind == FLUX_FILL else (CONTROL_KEY,), WHAT[kind])


def fill_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """FluxFillPipeline's mask channels: the pixel mask (B, 1, H, W), 1 = repaint, binarised at 0.5 (its
    ``mask_processor``), each latent cell's f x f pixels as f^2 channels, channel dy f + dx (``prepare_mask_latents``'
    ``view`` / ``permute``: ``pixel_unshuffle``), (B, f^2, H / f, W / f)."""
    return F.pixel_unshuffle((mask >= 0.5).to(mask.dtype), factor)


@dataclass
class ControlImage(PerPromptImages):
    """The control image of a FLUX.1 Depth / Canny folder: ``images`` [[one image]] or [[one per prompt]] (a PIL
    image, path or (1, 3, H, W) tensor in [0, 1]), as :class:`~.controlnet.ControlNets` holds one ControlNet's."""

    images: list
    _kind = "FLUX.1 Depth / Canny transformer"

    @classmethod
    def of(cls, image) -> "ControlImage":
        entry = list(image) if isinstance(image, (list, tuple)) else [image]
        if not entry:
            raise DiffkitError("an empty list of control images; give one image, or one per prompt")
        return cls([[open_control_image(one) for one in entry]])


def control_cond(flux, image, shape: tuple, seed: int = 0, posterior: str = "sample", control_rows=None,
                 generators=None, masked_draw: bool = False) -> dict:
    """{:data:`CONTROL_KEY`: (B, C, h, w)} of latents ``shape``: the control image's latents (module docstring),
    sample i's posterior draw from ``seed + i`` (:func:`.flow_controlnet.control_latents`, shared with the FLUX
    ControlNets), the image per prompt by ``control_rows``. ``generators``: sample i's edit generator instead (one
    per sample), which draws on after this (the image's posterior, the noise); ``masked_draw``: first one standard
    normal draw of the latents' shape from each, FluxControlInpaintPipeline's unused masked-image posterior
    (``prepare_mask_latents`` before the control image)."""
    from ..noise import randn
    from .flow_controlnet import control_latents
    f, (batch, channels, h, w) = flux.vae_scale_factor, shape
    if masked_draw:
        for generator in generators:
            randn((1, channels, h, w), generator)
    latents = control_latents(flux, ControlImage.of(image), h * f, w * f, batch, 1, seed, posterior, None,
                              control_rows, generators)
    return {CONTROL_KEY: latents[0, :, 0]}


def check_variant_options(kind: Optional[str], mask=None, control_image=None, controlnet=None, ip_adapter=None,
                          negative_prompt=None, edit: bool = False) -> None:
    """One line for what a Fill / Depth / Canny folder (``kind``: ``Flux.variant`` or :func:`folder_variant`) does
    not take, or a ``control_image`` on another: Fill only inpaints (an edit with ``mask``), Depth / Canny sample
    from text or edit (img2img, inpainting with ``mask``) with ``control_image``; neither takes a ControlNet, an
    IP-Adapter or true CFG (a negative prompt), which their pipelines lack."""
    if control_image is not None and kind != FLUX_CONTROL:
        raise DiffkitError("control_image (--control-image without --controlnet) feeds a FLUX.1 Depth / Canny "
                           "transformer (FluxControlPipeline); this folder has none: use such a folder, or give "
                           "--controlnet DIR with the image")
    if kind is None:
        return
    for name, value in (("--controlnet", controlnet), ("--ip-adapter", ip_adapter),
                        ("--negative-prompt (true CFG)", negative_prompt)):
        if value is not None:
            raise DiffkitError(f"{name} does not apply to {WHAT[kind]}: {kind} takes none; drop it")
    if kind == FLUX_FILL and not (edit and mask is not None):
        raise DiffkitError(f"this is {WHAT[kind]}: it only inpaints; use diffkit edit --images PNG --mask PNG "
                           f"(white = repaint), library image_to_image(mask=)")
    if kind == FLUX_CONTROL and control_image is None:
        raise DiffkitError(f"this is {WHAT[kind]}: it samples from text with a control image (or edits with one: "
                           f"diffkit edit --images PNG --control-image PNG [--mask PNG]); use diffkit sample "
                           f"--control-image PNG, library text_to_image(control_image=) / "
                           f"image_to_image(control_image=)")


__all__ = ["FLUX_FILL", "FLUX_CONTROL", "FLUX_FILL_GUIDANCE", "FLUX_FILL_STEPS", "FLUX_FILL_STRENGTH", "CONTROL_KEY",
           "in_channels", "variant", "folder_variant", "ChannelConcatNet", "wrap_net", "fill_mask", "ControlImage",
           "control_cond", "check_variant_options"]
