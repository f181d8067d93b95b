"""Super-resolution diffusion: a U-Net conditioned on a low-resolution image (docs/super_resolution.md).

As improved-diffusion's ``SuperResModel`` (Nichol & Dhariwal 2021, the 64 -> 256 upsampler of
Sec. 6 / App. A) and SR3 (Saharia et al. 2021, Sec. 2): the training image x_0 (H x W) is
area-downsampled to the low-resolution image (:func:`downsample`, improved-diffusion's
``F.interpolate(mode="area")``); the network learns eps(x_t, t | low_res), taking the low-resolution
image upsampled bilinearly to H x W (:func:`upsample`) and concatenated to x_t on the channel axis
(``UNetConfig.low_res_size``; ``cond={"low_res": ...}``, so the Denoiser and every sampler work as
they are). :func:`upscale` samples x_0 given a low-resolution batch with any sampler.
"""
from __future__ import annotations

import numbers
from typing import Optional

import torch
import torch.nn.functional as F

from .errors import DiffkitError


def _check_factor(size: tuple, low: int, what: str) -> None:
    if any(s % low or s <= low for s in size):
        raise DiffkitError(f"{what} of size {size[0]}x{size[1]} cannot be area-downsampled to {low}x{low}: the low "
                           f"resolution must divide the image size and be smaller than it")


def downsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """The (B, C, size, size) low-resolution images of (B, C, H, W) ``images``: the mean of each
    (H / size) x (W / size) block (area downsampling, improved-diffusion's ``super_res`` data)."""
    _check_factor(tuple(images.shape[-2:]), size, "images")
    return F.interpolate(images, size=(size, size), mode="area")


def upsample(low_res: torch.Tensor, size) -> torch.Tensor:
    """``low_res`` (B, C, h, w) resized bilinearly to ``size`` (H, W) (half-pixel centres,
    ``align_corners=False``, as improved-diffusion's ``SuperResModel.forward``)."""
    return F.interpolate(low_res, size=tuple(size), mode="bilinear", align_corners=False)


def concat_low_res(x: torch.Tensor, low_res: torch.Tensor) -> torch.Tensor:
    """The U-Net's input [x_t, upsample(low_res)] (channels of x_t first, improved-diffusion's order)."""
    return torch.cat([x, upsample(low_res.to(x.dtype), x.shape[-2:])], dim=1)


def augment(low_res: torch.Tensor, levels, schedule, noise: torch.Tensor) -> torch.Tensor:
    """Conditioning augmentation (Ho et al. 2021, "Cascaded Diffusion Models", Sec. 4.1): ``low_res``
    noised to ``levels`` (per sample, integers 0..T) with the model's own schedule,
    alpha_s low_res + sigma_s noise at time s = level - 1 (level 0: unchanged; level k: DDPM's
    q(x_k | x_0), alpha_bar of k steps). Note: diffusers' upscaler adds noise of ``noise_level`` k with
    ``alphas_cumprod[k]``, alpha_bar of k + 1 steps, so diffkit's level k is diffusers' k - 1."""
    levels = torch.as_tensor(levels, dtype=torch.float64).reshape(-1).expand(low_res.shape[0])
    if bool(((levels < 0) | (levels > schedule.num_timesteps) | (levels != levels.round())).any()):
        raise DiffkitError(f"noise levels {levels.tolist()} are not allowed; give integers in "
                           f"0..{schedule.num_timesteps}")
    t = levels.cpu() - 1
    shape = (-1,) + (1,) * (low_res.ndim - 1)
    alpha = schedule.alpha(t).reshape(shape).to(low_res.device, low_res.dtype)
    sigma = schedule.sigma(t).reshape(shape).to(low_res.device, low_res.dtype)
    return alpha * low_res + sigma * noise.to(low_res.dtype)


def _super_res_config(denoiser):
    """The U-Net config of a super-resolution denoiser (inside any wrappers), or a one-line error."""
    from .denoiser import _innermost
    inner = _innermost(denoiser)
    config = getattr(getattr(inner, "net", None), "config", None)
    if config is None:  # a compiled network keeps the module in _orig_mod
        config = getattr(getattr(getattr(inner, "net", None), "_orig_mod", None), "config", None)
    if getattr(config, "low_res_size", None) is None:
        raise DiffkitError("this model is not a super-resolution model (its U-Net takes no low-resolution image); "
                           "train one with super_res_from=SIZE (docs/super_resolution.md)")
    return config


def upscale(denoiser, low_res: torch.Tensor, sampler: str = "ddim", steps: Optional[int] = None, *,
            nfe: Optional[int] = None, seed: Optional[int] = None, generator=None, progress: bool = False,
            device=None, noise_level: int = 0, **options) -> torch.Tensor:
    """Sample (B, C, img_size, img_size) images given ``low_res`` (B, C, low_res_size, low_res_size)
    in [-1, 1] (area-downsampled, as in training; other values are refused) from a super-resolution
    denoiser, with any sampler of :func:`diffkit.sample`
    (``sampler``, ``steps`` / ``nfe``, ``seed`` (image i uses seed + i), ``generator``, options such
    as ``eta``); ``device``: where the noise is drawn (default: the network's). The low-resolution
    images are the network's ``low_res`` condition at every step. A model trained with conditioning
    augmentation (``low_res_noise``) takes ``noise_level`` (an integer in 0..its training ``super_res_noise``;
    default 0, clean; diffusers' level is one less, see :func:`augment`): the low-resolution images
    are noised to it (:func:`augment`) with noise drawn first from the
    sample's own generator (image i still depends on seed + i alone), and the level is the network's
    ``noise_level`` input."""
    from .sampling import sample
    config = _super_res_config(denoiser)
    channels, low, side = config.in_channels, config.low_res_size, config.img_size
    if not isinstance(low_res, torch.Tensor) or low_res.ndim != 4 or low_res.shape[0] < 1:
        shape = tuple(low_res.shape) if isinstance(low_res, torch.Tensor) else type(low_res).__name__
        raise DiffkitError(f"low_res of shape {shape} is not allowed; give (batch, {channels}, {low}, {low})")
    if tuple(low_res.shape[1:]) != (channels, low, low):
        raise DiffkitError(f"low_res of shape {tuple(low_res.shape)} is not allowed; this model upscales "
                           f"{low}x{low} images with {channels} channel(s) to {side}x{side}: give "
                           f"(batch, {channels}, {low}, {low})")
    if not low_res.is_floating_point():
        raise DiffkitError(f"low_res of dtype {str(low_res.dtype).replace('torch.', '')} is not allowed; give float "
                           f"images in [-1, 1]")
    from .editing import check_images
    check_images(low_res, "low_res", skippable=False)  # finite, in the data range [-1, 1]
    if device is None:  # beside the network (the low-resolution images follow the samples there)
        from .denoiser import network_device
        device = network_device(denoiser)
    shape = (low_res.shape[0], channels, side, side)
    cond = {"low_res": low_res.float()}
    check_noise_level(noise_level, _trained_levels(denoiser, config))
    if getattr(config, "low_res_noise", False):
        cond.update(_augmented(denoiser, low_res.float(), noise_level, seed, generator, device))
        seed, generator = None, cond.pop("generator")
    return sample(denoiser, shape, sampler, steps, nfe=nfe, seed=seed, generator=generator, cond=cond,
                  progress=progress, device=device, **options)


def check_noise_level(noise_level, top: int, what: Optional[str] = None) -> None:
    """A one-line error unless ``noise_level`` is an integer in 0..``top``, the largest level the upscaler
    was trained on (its ``super_res_noise``; 0: trained without conditioning augmentation); ``what``
    names the value (default ``noise_level=...``)."""
    if not isinstance(noise_level, bool) and isinstance(noise_level, numbers.Integral) and 0 <= noise_level <= top:
        return
    what = what or f"noise_level={noise_level!r}"
    if not top:
        raise DiffkitError(f"{what} is not allowed: this upscaler was trained without conditioning augmentation "
                           f"(super_res_noise); give 0")
    raise DiffkitError(f"{what} is not allowed; allowed: 0..{top}, the levels this upscaler was trained on "
                       f"(super_res_noise; 0: a clean low-resolution image)")


def _trained_levels(denoiser, config) -> int:
    """The largest conditioning-augmentation level of a super-resolution denoiser: its checkpoint's
    ``super_res_noise`` (T when unknown), 0 for one trained without augmentation."""
    if not getattr(config, "low_res_noise", False):
        return 0
    top = (getattr(_innermost_meta(denoiser), "get", lambda *_: None)("config") or {}).get("super_res_noise")
    return top if isinstance(top, int) else denoiser.schedule.num_timesteps


def _augmented(denoiser, low_res, noise_level, seed, generator, device) -> dict:
    """``cond`` entries of an augmentation-trained upscaler at ``noise_level``, and the generator(s)
    the sampler goes on with (the low-resolution noise is drawn from them first)."""
    from .noise import generators_from_seed, randn
    from .sampling import check_generators
    if seed is not None and generator is not None:
        raise DiffkitError("give seed or generator, not both")
    batch = low_res.shape[0]
    if seed is not None:
        generator = generators_from_seed(seed, batch)
    check_generators(generator, batch)
    noise = randn(tuple(low_res.shape), generator, device=device)
    levels = torch.full((batch,), int(noise_level), dtype=torch.long)
    return {"low_res": augment(low_res.to(noise.device), levels, denoiser.schedule, noise),
            "noise_level": levels.to(noise.device), "generator": generator}


def _innermost_meta(denoiser):
    from .denoiser import _innermost
    return getattr(_innermost(denoiser), "meta", None) or {}


__all__ = ["downsample", "upsample", "concat_low_res", "augment", "upscale", "check_noise_level"]
