"""SDEdit img2img and inpainting of images through an autoencoder (docs/editing.md, "Latent
models and Stable Diffusion"): what diffusers' ``StableDiffusionImg2ImgPipeline`` and
``StableDiffusionInpaintPipeline`` (with a plain 4-channel UNet) do, for diffkit latent
checkpoints and Stable Diffusion folders.

The images are encoded, z = s * E(x) (LDM, Rombach et al. 2022, Sec. 3-4.3.2), edited in latent
space by :func:`diffkit.img2img` / :func:`diffkit.inpaint` (the one implementation of SDEdit's
noising and of replacement inpainting) and decoded, x = D(z / s). ``autoencoder`` is anything
with ``encode(images, generator, sample)``, ``decode(z)``, ``image_channels`` and
``downsampling_factor``: a :class:`~diffkit.latent.FrozenAutoencoder` (a latent checkpoint's
``denoiser.decoder``) or a :class:`~diffkit.interop.stable_diffusion.StableDiffusion`.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .denoiser import _innermost
from .editing import DATA_RANGE, _generators, check_images, check_mask, img2img, inpaint
from .errors import DiffkitError, check_choice

POSTERIORS = ("mean", "sample")


def check_pixels(denoiser, autoencoder, images: torch.Tensor) -> None:
    """Images the autoencoder takes: its channels, a side a multiple of its factor f and, where the
    checkpoint says the latent side (``meta["unet"]["img_size"]``), f times that side."""
    f, channels = autoencoder.downsampling_factor, autoencoder.image_channels
    unet = (getattr(_innermost(denoiser), "meta", None) or {}).get("unet") or {}
    side = unet.get("img_size")
    ok = images.ndim == 4 and images.shape[1] == channels and images.shape[2] % f == 0 and images.shape[3] % f == 0
    if side is not None:
        ok = ok and images.shape[2] == images.shape[3] == side * f
    if not ok:
        wanted = (f"{side * f}x{side * f}" if side is not None else f"H x W multiples of {f}")
        raise DiffkitError(f"images of shape {tuple(images.shape)} do not fit the autoencoder, which takes "
                           f"(batch, {channels}, H, W) images of {wanted} (its latents are 1/{f} of that)")


def latent_mask(mask: torch.Tensor, size, mode: str = "nearest") -> torch.Tensor:
    """A pixel mask (B, 1, H, W), 1 = repaint, at the latent size (h, w) as diffusers'
    ``StableDiffusionInpaintPipeline`` makes it: binarised at 0.5 (its ``mask_processor``,
    ``do_binarize=True``: < 0.5 -> 0, >= 0.5 -> 1), then ``F.interpolate`` to (h, w) with its default
    mode, nearest (``prepare_mask_latents``): latent cell (i, j) takes pixel (floor(i H / h), floor(j W / w)).
    ``mode="bilinear"``: ``Flux2KleinInpaintPipeline``'s (values between 0 and 1 where the binary mask's edge
    crosses a cell's two middle pixels)."""
    check_choice("mode", mode, ("nearest", "bilinear"))
    return F.interpolate((mask >= 0.5).to(mask.dtype), size=tuple(size), mode=mode)


def encode_images(autoencoder, images: torch.Tensor, posterior: str, generator) -> torch.Tensor:
    """z = s * E(x): the posterior mean (``"mean"``, diffusers' ``sample_mode="argmax"``) or a
    sample drawn from ``generator`` before the forward noise (``"sample"``, diffusers' default)."""
    check_choice("posterior", posterior, POSTERIORS)
    return autoencoder.encode(images, generator, sample=posterior == "sample")


def latent_img2img(denoiser, autoencoder, images, strength: float = 0.8, sampler: str = "ddim", steps: int = 50, *,
                   posterior: str = "mean", seed: Optional[int] = None, generator=None,
                   return_latents: bool = False, **options) -> torch.Tensor:
    """SDEdit in latent space (Meng et al. 2022, Alg. 1, on z = s E(x)): encode, then
    :func:`diffkit.img2img` of the latents (z_t0 ~ q(z_t0 | z), the reverse process over the
    strength's part of the grid), then decode. With ``posterior="sample"``, ``seed`` or a
    ``generator`` and the DDIM scheduler's grid this is diffusers' ``StableDiffusionImg2ImgPipeline``
    step for step: per image one generator draws the posterior sample, then the forward noise
    (then the sampler's). ``denoiser``: the (guided) network on latents, ``cond`` its prompts'
    contexts or classes; other ``options`` as :func:`diffkit.img2img`. Returns images in the
    decoder's scale ([-1, 1], unclamped), or the edited latents with ``return_latents``."""
    images = check_images(images, "images", DATA_RANGE, skippable=False)
    check_pixels(denoiser, autoencoder, images)
    generator = _generators(seed, generator, images.shape[0])
    z = encode_images(autoencoder, images, posterior, generator)
    z = img2img(denoiser, z, strength, sampler, steps, generator=generator, value_range=None, **options)
    return z if return_latents else autoencoder.decode(z)


def latent_inpaint(denoiser, autoencoder, images, mask, sampler: str = "ddim", steps: int = 50, *,
                   strength: float = 1.0, posterior: str = "mean", paste: bool = False, seed: Optional[int] = None,
                   generator=None, return_latents: bool = False, mask_mode: str = "nearest",
                   **options) -> torch.Tensor:
    """Inpainting in latent space with a plain (4-channel) network: the mask (B or 1, 1, H, W),
    1 = repaint, goes to the latent size by :func:`latent_mask`, and :func:`diffkit.inpaint` runs on
    the latents (replacement: the kept region's x_0 is the known latent at every step,
    :class:`~diffkit.editing.InpaintingDenoiser`; RePaint with ``jump_n_sample``; reconstruction
    guidance with ``reconstruction_weight``), whose output holds the known latents exactly where
    kept; then decoded. That decoding changes the kept pixels too (D(E(x)) != x): ``paste=True``
    pastes the known pixels back, m x_out + (1 - m) x with the binarised pixel mask; diffusers does
    not by default. Encoding and noise as :func:`latent_img2img`. With DDIM (eta 0) the states are
    those of diffusers' ``StableDiffusionInpaintPipeline`` with a 4-channel UNet (after step i it
    blends in ``add_noise(z, noise, timesteps[i + 1])``, the first noise at the next timestep,
    which is where replacing x_0 puts the kept region; after the last step z itself, as the final
    paste); at strength 1 (the default) both start from pure noise (:func:`diffkit.inpaint`'s
    ``start="noise"``, diffusers' ``is_strength_max``), below it from the noised latents. A Stable Diffusion
    folder with a 9-channel inpainting UNet (``autoencoder.inpainting_unet``) is inpainted as diffusers does
    with it instead: the mask and the masked image's latents are the UNet's input, nothing is replaced
    (:func:`~diffkit.interop.sd_inpaint.unet_inpaint`; RePaint and reconstruction guidance refused). With a
    stochastic step (LCM's, TCD's) diffusers' states need :func:`diffkit.inpaint`'s ``blend_noise`` in ``options``
    (:mod:`diffkit.interop.lcm_edit`). ``mask_mode``: :func:`latent_mask`'s resize (FLUX.2 Klein's bilinear one,
    :mod:`diffkit.interop.flux2_inpaint`)."""
    images = check_images(images, "images", DATA_RANGE, skippable=False)
    check_pixels(denoiser, autoencoder, images)
    if isinstance(mask, torch.Tensor) and mask.ndim == 4 and mask.shape[1] != 1:
        raise DiffkitError(f"mask of shape {tuple(mask.shape)} is not allowed for a latent model; give one channel "
                           f"(B or 1, 1, H, W), 1 = repaint")
    pixel_mask = check_mask(mask, images[:, :1])
    generator = _generators(seed, generator, images.shape[0])
    if getattr(autoencoder, "inpainting_unet", False):  # a 9-channel UNet: no replacement (.interop.sd_inpaint)
        from .interop.sd_inpaint import unet_inpaint
        z = unet_inpaint(denoiser, autoencoder, images, pixel_mask, sampler, steps, strength=strength,
                         posterior=posterior, generator=generator, **options)
    else:
        z = encode_images(autoencoder, images, posterior, generator)
        z = inpaint(denoiser, z, latent_mask(pixel_mask, z.shape[2:], mask_mode).expand_as(z), sampler, steps,
                    strength=strength, start="noise" if strength == 1 else "image", generator=generator,
                    value_range=None, **options)
    if return_latents:
        return z
    out = autoencoder.decode(z)
    if paste:
        repaint = (pixel_mask >= 0.5).to(out.dtype).to(out.device)
        out = repaint * out + (1 - repaint) * images.to(out.device, out.dtype)
    return out


__all__ = ["POSTERIORS", "check_pixels", "encode_images", "latent_img2img", "latent_inpaint", "latent_mask"]
