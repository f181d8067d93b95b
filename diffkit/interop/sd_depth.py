"""Stable Diffusion 2 depth-to-image folders (``StableDiffusionDepth2ImgPipeline``): a UNet with 5 input channels.

SD 2's depth model (``stabilityai/stable-diffusion-2-depth``: the SD 2 UNet fine-tuned, as LDM's conditioning by
concatenation, Rombach et al. 2022 Sec. 3.3, on the latents and a depth map) takes ``cat([z_t, d])``: the noisy
latents (4 channels) and the image's relative depth at the latent size (1 channel), and predicts the noise of z_t
alone (``out_channels = 4``; ``in_channels = out_channels + 1``). This module does what diffusers'
``StableDiffusionDepth2ImgPipeline`` does:

* the depth: given (``depth_map``, (B, H', W') of any size and scale), or estimated from each image by the folder's
  ``depth_estimator`` (a ``DPTForDepthEstimation``, DPT: Ranftl et al. 2021, "Vision Transformers for Dense
  Prediction", the MiDaS relative inverse depth) on its ``feature_extractor``'s pixel values (a
  ``DPTImageProcessor`` given the PIL images), under ``torch.autocast`` of the folder's dtype, as
  ``prepare_depth_map``; then resized to the latents' (H / f, W / f) by ``F.interpolate`` (bicubic,
  ``align_corners=False``) and normalised per image to [-1, 1]: d = 2 (d - min d) / (max d - min d) - 1;
* the edit: SDEdit (Meng et al. 2022, Alg. 1) as ``StableDiffusionImg2ImgPipeline``
  (:func:`~diffkit.latent_editing.latent_img2img`: the image's posterior sample, then the forward noise at the
  strength's first time, default 0.8), every network call (both halves of classifier-free guidance, as the
  pipeline's ``torch.cat([depth_map] * 2)``) with the same d concatenated after the latents. diffusers scales only
  the latents (``scheduler.scale_model_input``) before the concatenation; :class:`DepthUNetNet` concatenates inside
  the network, so d is never scaled, with any diffkit sampler.

A depth UNet only edits (the pipeline takes an image): :func:`check_depth_unet` refuses it elsewhere in one line.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..denoiser import Denoiser
from ..errors import DiffkitError
from .sd_inpaint import ChannelConcatNet, check_editing_unet, concat_denoiser

DEPTH_PIPELINE = "StableDiffusionDepth2ImgPipeline"
DEPTH_KEY = "depth_map"  # the cond entry DepthUNetNet reads: (B, 1, H / f, W / f) in [-1, 1]
ESTIMATOR = ("depth_estimator", "feature_extractor")  # the folder's DPT and its image processor


def is_depth_config(config: dict) -> bool:
    """A UNet config of a depth model: in_channels = out_channels + 1 (5 for SD 2: latents 4, depth 1)."""
    in_channels, out_channels = config.get("in_channels", 4), config.get("out_channels", 4)
    return isinstance(out_channels, int) and in_channels == out_channels + 1


def is_depth_folder(path) -> bool:
    """True for a Stable Diffusion folder whose ``unet/config.json`` is a depth UNet's (read, not loaded)."""
    try:
        config = json.loads((Path(path) / "unet" / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and is_depth_config(config)


def check_depth_unet(config: dict, directory, depth: bool, lcm: bool = False) -> bool:
    """True for a depth UNet config that may be loaded (``depth``, no LCMScheduler), False for any other UNet; a
    one-line error for a depth UNet where it is not allowed (sampling from text: the pipeline takes an image)."""
    if not is_depth_config(config):
        return False
    what = f"{directory} has a depth-to-image UNet (in_channels={config.get('in_channels')}: latents + depth)"
    return check_editing_unet(what, "a depth UNet", depth, lcm,
                              f"it edits an image; use diffkit edit --images PNG --prompt TEXT [--control-image "
                              f"DEPTH.png] (as {DEPTH_PIPELINE}; library: load_stable_diffusion(..., depth=True) "
                              f"and sd_depth.depth_condition)")


class DepthUNetNet(ChannelConcatNet):
    """``net(x, t, depth_map=d, **cond)`` = ``inner(cat([x, d], 1), t, **cond)``: the UNet input of diffusers'
    depth-to-image pipeline (``torch.cat([latent_model_input, depth_mask], dim=1)``; d (B, 1, h, w),
    :class:`~.sd_inpaint.ChannelConcatNet`)."""
    KEYS = ("depth_map",)
    WHAT = "a depth-to-image UNet (latents + depth in)"
    USE = "give cond['depth_map'] (sd_depth.depth_condition; diffkit edit --images with its depth)"


def depth_denoiser(unet, schedule, prediction_type: str) -> Denoiser:
    """The :class:`~diffkit.denoiser.Denoiser` of a depth UNet (cond: ``context``, ``depth_map``;
    :func:`~.sd_inpaint.concat_denoiser`)."""
    return concat_denoiser(DepthUNetNet, unet, schedule, prediction_type)


def load_depth_estimator(directory, device, dtype: torch.dtype = torch.float32, progress: bool = True) -> tuple:
    """(DPTForDepthEstimation, DPTImageProcessor) of the folder's ``depth_estimator`` / ``feature_extractor``; one
    line when it has none (give the depth map instead)."""
    from . import from_pretrained, library_progress_bars, require
    from .stable_diffusion import check_components
    from ..errors import read_json_object
    transformers = require("transformers")
    directory = Path(directory)
    index = read_json_object(directory / "model_index.json", "diffusers index")
    try:
        check_components(directory, index, ESTIMATOR, "depth-to-image")
    except DiffkitError as err:
        raise DiffkitError(f"{err}; or give the depth map: --control-image DEPTH.png|DIR") from None
    with library_progress_bars(progress):
        model = from_pretrained(transformers.DPTForDepthEstimation, directory / "depth_estimator",
                                local_files_only=True, torch_dtype=dtype, use_safetensors=True)
        processor = from_pretrained(transformers.DPTImageProcessor, directory / "feature_extractor",
                                    local_files_only=True)
    return model.to(device).eval().requires_grad_(False), processor


def estimate_depth(estimator: tuple, images: Sequence, device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, H', W') ``predicted_depth`` of PIL ``images`` by ``estimator`` (:func:`load_depth_estimator`), as the
    pipeline's ``prepare_depth_map`` with ``depth_map=None`` (its autocast included)."""
    import warnings
    model, processor = estimator
    device = torch.device(device)
    pixel_values = processor(images=list(images), return_tensors="pt").pixel_values.to(device=device, dtype=dtype)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # autocast to float32 is "not supported": off, as in the pipeline
        with torch.autocast(device.type, dtype=dtype):
            return model(pixel_values).predicted_depth


def depth_condition(depth, height: int, width: int, factor: int) -> torch.Tensor:
    """``cond['depth_map']`` (B, 1, height / factor, width / factor) of depth maps (a (B, H', W') tensor, or a list
    of (H', W') ones, each of its own size): bicubic to the latent size, then each normalised to [-1, 1] (the
    pipeline's ``prepare_depth_map``). A constant map (max = min) is a one-line error (the pipeline divides by 0)."""
    maps = list(depth) if not isinstance(depth, torch.Tensor) or depth.ndim != 3 else [depth]
    out = []
    for d in maps:
        d = d if d.ndim == 3 else d[None]
        d = torch.nn.functional.interpolate(d[:, None].float(), size=(height // factor, width // factor),
                                            mode="bicubic", align_corners=False)
        low, high = torch.amin(d, dim=[1, 2, 3], keepdim=True), torch.amax(d, dim=[1, 2, 3], keepdim=True)
        if bool((high == low).any()):
            raise DiffkitError("a depth map is constant (its maximum is its minimum): it cannot be normalised to "
                               "[-1, 1]; give a depth map with some depth in it")
        out.append(2.0 * (d - low) / (high - low) - 1.0)
    return torch.cat(out)


def read_depth_png(path) -> torch.Tensor:
    """A depth map PNG as a float (H, W) tensor of its levels: 8-bit or 16-bit grey (``L``, ``I;16``, ``I``), or
    RGB whose channels are equal (a grey image saved in colour); one line for anything else."""
    import numpy as np
    from PIL import Image
    try:
        with Image.open(path) as image:
            mode, array = image.mode, np.array(image)
    except OSError as err:
        raise DiffkitError(f"--control-image {path} is not a readable image ({str(err).splitlines()[0][:80]})") \
            from None
    if mode in ("RGB", "RGBA"):
        if not (np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2])):
            raise DiffkitError(f"--control-image {path} is a colour image; a depth map is grey: allowed 8-bit or "
                               f"16-bit greyscale PNGs (or RGB with three equal channels)")
        array = array[..., 0]
    elif mode not in ("L", "I;16", "I"):
        raise DiffkitError(f"--control-image {path} has mode {mode}; allowed: 8-bit or 16-bit greyscale depth maps "
                           f"(L, I;16, I)")
    return torch.from_numpy(array.astype(np.float32))


def edit_depth(sd, files: Sequence, depth_files: Optional[list], estimator: Optional[tuple], height: int,
               width: int, batch_size: int = 16) -> torch.Tensor:
    """``cond['depth_map']`` of every edited image (``files``, in order): from ``depth_files`` (the depth PNGs, one
    for all or one per image, :func:`read_depth_png`) or, without them, ``estimator`` on the images themselves,
    ``batch_size`` at a time (the DPT in eval mode treats each image alone)."""
    from PIL import Image
    if depth_files:
        maps = [read_depth_png(f) for f in depth_files]
        maps = maps * len(files) if len(maps) == 1 else maps
    else:
        images = []
        for f in files:
            with Image.open(f) as image:
                images.append(image.convert("RGB"))
        maps = [d for start in range(0, len(images), batch_size)
                for d in estimate_depth(estimator, images[start:start + batch_size], sd.device, sd.dtype)]
    return depth_condition(maps, height, width, sd.vae_scale_factor).to(sd.device)


__all__ = ["DEPTH_PIPELINE", "DEPTH_KEY", "is_depth_config", "is_depth_folder", "check_depth_unet", "DepthUNetNet",
           "depth_denoiser", "load_depth_estimator", "estimate_depth", "depth_condition", "read_depth_png",
           "edit_depth"]
