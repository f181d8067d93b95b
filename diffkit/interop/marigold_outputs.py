"""What a Marigold folder's prediction becomes: decoded maps, the test-time ensemble, and pictures of them.

Marigold (Ke et al. 2024, "Repurposing Diffusion-Based Image Generators for Monocular Depth Estimation", CVPR; the
normals and intrinsic-image models: Ke et al. 2025, "Marigold: Affordable Adaptation of Diffusion-Based Image
Generators for Image Analysis") decodes its prediction latents with the Stable Diffusion VAE into three channels in
[-1, 1]. This module turns them into what diffusers 0.42.1's Marigold pipelines return, operation for operation:

* depth (``MarigoldDepthPipeline.decode_prediction``): the channel mean, clipped to [-1, 1], mapped to [0, 1];
  normals: clipped, z mapped to [0, 1] unless the folder's ``use_full_z_range``, then unit length (norms clamped at
  1e-6); intrinsics: each target's three channels clipped and mapped to [0, 1];
* the test-time ensemble of E predictions of one image (Ke et al. 2024, Sec. 3.3, "test-time ensembling"): for
  affine-invariant depth a scale s_i and shift t_i per member, found by minimising
  sum_{i<j} RMS(s_i d_i + t_i - s_j d_j - t_j) + lambda (|min m| + |1 - max m|) over them, m the members' median
  (or mean), with scipy's BFGS from the members' min-max normalisation (the pipeline's ``ensemble_depth``:
  ``regularizer_strength`` lambda = 0.02, ``max_iter`` 2, ``tol`` 1e-3, at most ``max_res`` 1024 pixels on a side,
  nearest-exact), then m renormalised to [0, 1]; the uncertainty is the median absolute deviation (the standard
  deviation for ``mean``). Normals: the member closest in angle to the normalised mean (``closest``) or that mean;
  the uncertainty the mean angle to it over pi. Intrinsics: the per-pixel median or mean;
* pictures (``MarigoldImageProcessor.visualize_depth`` / ``visualize_normals`` / ``visualize_intrinsics`` /
  ``visualize_uncertainty``): depth through a colour map (``Spectral`` by the processor's own linear interpolation of
  matplotlib's eleven colours, others through matplotlib), normals as (n + 1) / 2, bytes by truncation as diffusers'.
"""
from __future__ import annotations

from functools import partial
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DiffkitError, check_choice

RESAMPLE_METHODS = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")
REDUCTIONS = {"depth": ("median", "mean"), "normals": ("closest", "mean"), "intrinsics": ("median", "mean")}
# matplotlib's Spectral (its _cm.py), the eleven colours MarigoldImageProcessor.colormap interpolates itself
SPECTRAL = ((0.61960784313725492, 0.003921568627450980, 0.25882352941176473),
            (0.83529411764705885, 0.24313725490196078, 0.30980392156862746),
            (0.95686274509803926, 0.42745098039215684, 0.2627450980392157),
            (0.99215686274509807, 0.68235294117647061, 0.38039215686274508),
            (0.99607843137254903, 0.8784313725490196, 0.54509803921568623),
            (1.0, 1.0, 0.74901960784313726),
            (0.90196078431372551, 0.96078431372549022, 0.59607843137254901),
            (0.6705882352941176, 0.8666666666666667, 0.64313725490196083),
            (0.4, 0.76078431372549016, 0.6470588235294118),
            (0.19607843137254902, 0.53333333333333333, 0.74117647058823533),
            (0.36862745098039218, 0.30980392156862746, 0.63529411764705879))


# ---------------------------------------------------------------------------------------------------- sizes
def resized(images: torch.Tensor, size, mode: str, antialias: bool = False) -> torch.Tensor:
    """``F.interpolate`` to ``size`` with ``mode`` (antialiased only where asked and the mode is bilinear or bicubic:
    ``MarigoldImageProcessor.resize_antialias``)."""
    return F.interpolate(images, tuple(size), mode=mode, antialias=antialias and mode in ("bilinear", "bicubic"))


def resized_to_max_edge(images: torch.Tensor, max_edge: int, mode: str) -> torch.Tensor:
    """The longer side to ``max_edge``, the other h * max_edge // max(h, w) (antialiased; the processor's
    ``resize_to_max_edge``); an extreme aspect ratio that leaves a side of 0 is one line."""
    h, w = images.shape[-2:]
    new_h, new_w = h * max_edge // max(h, w), w * max_edge // max(h, w)
    if new_h == 0 or new_w == 0:
        raise DiffkitError(f"the image is {w}x{h}: at {max_edge} pixels on its longer side the other would be 0; "
                           f"give a larger processing resolution or a less elongated image")
    return resized(images, (new_h, new_w), mode, antialias=True)


def padded(images: torch.Tensor, align: int) -> tuple:
    """(images replicate-padded on the bottom and right to multiples of ``align``, (pad h, pad w))."""
    h, w = images.shape[-2:]
    ph, pw = -h % align, -w % align
    return F.pad(images, (0, pw, 0, ph), mode="replicate"), (ph, pw)


def unpadded(images: torch.Tensor, padding) -> torch.Tensor:
    """:func:`padded`'s padding cut off again."""
    ph, pw = padding
    return images[:, :, :images.shape[2] - ph, :images.shape[3] - pw]


# ---------------------------------------------------------------------------------------------------- decoding
def unit_normals(normals: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(B, 3, H, W) normals divided by their length clamped at ``eps`` (``normalize_normals``)."""
    return normals / torch.norm(normals, dim=1, keepdim=True).clamp(min=eps)


def decoded_maps(task: str, decoded: torch.Tensor, use_full_z_range: bool = True) -> torch.Tensor:
    """The VAE's output (B, 3, H, W) as the task's maps (module doc): depth (B, 1, H, W) in [0, 1], unit normals
    (B, 3, H, W), intrinsics (B, 3, H, W) in [0, 1]."""
    if task == "depth":
        return (decoded.mean(dim=1, keepdim=True).clip(-1.0, 1.0) + 1.0) / 2.0
    decoded = decoded.clip(-1.0, 1.0)
    if task == "intrinsics":
        return (decoded + 1.0) / 2.0
    if not use_full_z_range:
        decoded = torch.cat([decoded[:, :2], decoded[:, 2:] * 0.5 + 0.5], dim=1)
    return unit_normals(decoded)


# ---------------------------------------------------------------------------------------------------- ensembles
def _reduced(members: torch.Tensor, reduction: str, uncertainty: bool) -> tuple:
    """(median or mean over dim 0 keeping it, the median absolute deviation or standard deviation or None)."""
    if reduction == "mean":
        centre = members.mean(dim=0, keepdim=True)
        return centre, (members.std(dim=0, keepdim=True) if uncertainty else None)
    centre = members.median(dim=0, keepdim=True).values  # the lower of the two middle members for an even count
    return centre, ((members - centre).abs().median(dim=0, keepdim=True).values if uncertainty else None)


def ensemble_depth(depth: torch.Tensor, scale_invariant: bool = True, shift_invariant: bool = True,
                   uncertainty: bool = False, reduction: str = "median", regularizer_strength: float = 0.02,
                   max_iter: int = 2, tol: float = 1e-3, max_res: Optional[int] = 1024) -> tuple:
    """(the ensembled depth (1, 1, H, W) in [0, 1], its uncertainty or None) of E members (E, 1, H, W): the
    members aligned by a scale (and shift) each, found by BFGS on Ke et al. 2024 Sec. 3.3's pairwise cost (module
    doc), then reduced; absolute depth (neither invariance) is reduced as it is. As ``ensemble_depth`` of
    diffusers' MarigoldDepthPipeline, step for step (scipy's ``minimize(method="BFGS")``)."""
    import scipy.optimize
    check_choice("reduction", reduction, REDUCTIONS["depth"])
    if shift_invariant and not scale_invariant:
        raise DiffkitError("a shift-invariant depth model that is not scale-invariant cannot be ensembled "
                           "(MarigoldDepthPipeline refuses it too); allowed: scale_invariant, or both, or neither")
    if not scale_invariant:  # absolute depth: no alignment (and the pipeline's normalisation refuses it)
        raise DiffkitError("ensembling absolute depth (scale_invariant=False) is refused by MarigoldDepthPipeline; "
                           "use ensemble_size 1")
    size = depth.shape[0]

    def align(members: torch.Tensor, param: np.ndarray) -> torch.Tensor:
        if shift_invariant:
            scale, shift = np.split(param, 2)
            return (members * torch.from_numpy(scale).to(members).view(size, 1, 1, 1)
                    + torch.from_numpy(shift).to(members).view(size, 1, 1, 1))
        return members * torch.from_numpy(param).to(members).view(size, 1, 1, 1)

    def cost(param: np.ndarray, members: torch.Tensor) -> float:  # Sec. 3.3: pairwise RMS + the unit-range pull
        aligned = align(members, param)
        total = 0.0
        for i, j in torch.combinations(torch.arange(size)):
            total += ((aligned[i] - aligned[j]) ** 2).mean().sqrt().item()
        if regularizer_strength > 0:
            centre, _ = _reduced(aligned, reduction, False)
            total += (centre.min().abs().item() + (1.0 - centre.max()).abs().item()) * regularizer_strength
        return total

    members = depth.to(torch.float32)
    if max_res is not None and max(members.shape[2:]) > max_res:
        members = resized_to_max_edge(members, max_res, "nearest-exact")
    low = members.reshape(size, -1).min(dim=1).values
    high = members.reshape(size, -1).max(dim=1).values
    if shift_invariant:  # start: each member min-max normalised
        start_scale = 1.0 / (high - low).clamp(min=1e-6)
        start = torch.cat((start_scale, -start_scale * low))
    else:
        start = 1.0 / high.clamp(min=1e-6)
    found = scipy.optimize.minimize(partial(cost, members=members), start.cpu().numpy().astype(np.float64),
                                    method="BFGS", tol=tol, options={"maxiter": max_iter, "disp": False})
    centre, spread = _reduced(align(depth, found.x), reduction, uncertainty)
    low = centre.min() if shift_invariant else 0
    span = (centre.max() - low).clamp(min=1e-6)
    return (centre - low) / span, (None if spread is None else spread / span)


def ensemble_normals(normals: torch.Tensor, uncertainty: bool = False, reduction: str = "closest") -> tuple:
    """(the ensembled normals (1, 3, H, W), the uncertainty (1, 1, H, W) or None) of E unit-normal members
    (E, 3, H, W): the normalised mean, or per pixel the member of largest cosine to it (``closest``); the
    uncertainty is the members' mean angle to the mean over pi (MarigoldNormalsPipeline's ``ensemble_normals``)."""
    check_choice("reduction", reduction, REDUCTIONS["normals"])
    mean = unit_normals(normals.mean(dim=0, keepdim=True))
    cosine = (mean * normals).sum(dim=1, keepdim=True).clamp(-1, 1)
    spread = cosine.arccos().mean(dim=0, keepdim=True) / np.pi if uncertainty else None
    if reduction == "mean":
        return mean, spread
    closest = cosine.argmax(dim=0, keepdim=True).repeat(1, 3, 1, 1)
    return torch.gather(normals, 0, closest), spread


def ensemble_intrinsics(targets: torch.Tensor, uncertainty: bool = False, reduction: str = "median") -> tuple:
    """(the ensembled targets (T, 3, H, W), their uncertainty or None) of E members (E, T, 3, H, W): the per-pixel
    median (lower middle for even E) with the median absolute deviation, or the mean with the standard deviation
    (MarigoldIntrinsicsPipeline's ``ensemble_intrinsics``)."""
    check_choice("reduction", reduction, REDUCTIONS["intrinsics"])
    centre, spread = _reduced(targets, reduction, uncertainty)
    return centre[0], (None if spread is None else spread[0])


# ---------------------------------------------------------------------------------------------------- pictures
def colormap(values: torch.Tensor, name: str = "Spectral") -> np.ndarray:
    """uint8 RGB (..., 3) of ``values`` in [0, 1] through the colour map ``name``: ``Spectral`` as
    MarigoldImageProcessor interpolates it itself for a tensor, any other through matplotlib
    (``colormaps[name](values, bytes=True)``, as the processor when matplotlib is installed). An unknown name is one
    line naming a few allowed ones."""
    if name == "Spectral":
        colours = torch.tensor(SPECTRAL, dtype=torch.float)
        position = values.float().clamp(min=0, max=1) * (len(SPECTRAL) - 1)
        left = position.long()
        right = (left + 1).clamp(max=len(SPECTRAL) - 1)
        weight = (position - left.float()).unsqueeze(-1)
        return ((1 - weight) * colours[left] + weight * colours[right]).mul(255).to(torch.uint8).numpy()
    import matplotlib
    if name not in matplotlib.colormaps:
        raise DiffkitError(f"colour map {name!r} is not allowed; choose one of matplotlib's, e.g. Spectral, binary, "
                           f"viridis, magma, turbo")
    return np.asarray(matplotlib.colormaps[name](values.cpu().numpy(), bytes=True))[..., :3]


def depth_picture(depth: torch.Tensor, color_map: str = "Spectral") -> np.ndarray:
    """(H, W, 3) uint8 of one depth map (H, W) in [0, 1] (``visualize_depth``)."""
    return colormap(depth, color_map)


def normals_picture(normals: torch.Tensor) -> np.ndarray:
    """(H, W, 3) uint8 of one normals map (3, H, W): (n + 1) / 2 * 255 truncated (``visualize_normals``)."""
    return ((normals.permute(1, 2, 0) + 1.0) * 0.5 * 255).to(torch.uint8).cpu().numpy()


def _linear_to_srgb(image: torch.Tensor, up_to_scale: bool) -> torch.Tensor:
    if up_to_scale:
        image = image / max(image.max().item(), 1e-6)
    return image ** (1 / 2.2)


def intrinsics_pictures(targets: torch.Tensor, properties: dict, color_map="binary") -> dict:
    """{name: (H, W, 3) uint8} of one image's targets (T, 3, H, W), by the folder's ``target_properties``: sRGB
    targets as they are, linear ones (divided by their maximum if ``up_to_scale``) to the power 1/2.2, and a
    ``stack`` target split into its sub-targets, each through ``color_map`` (a name, or one per sub-target)
    (``visualize_intrinsics``)."""
    out = {}
    for name, image in zip(properties["target_names"], targets):
        image = image.permute(1, 2, 0)
        space = properties[name].get("prediction_space", "srgb")
        if space == "stack":
            for i, sub in enumerate(properties[name]["sub_target_names"]):
                if sub is None:
                    continue
                channel = image[:, :, i]
                if properties[sub].get("prediction_space", "srgb") == "linear":
                    channel = _linear_to_srgb(channel, properties[sub].get("up_to_scale", False))
                cmap = color_map if isinstance(color_map, str) else color_map.get(sub, "binary")
                out[sub] = colormap(channel, cmap)
        elif space == "linear":
            image = _linear_to_srgb(image, properties[name].get("up_to_scale", False))
        out[name] = (image * 255).to(torch.uint8).cpu().numpy()
    return out


def uncertainty_picture(uncertainty: torch.Tensor, saturation_percentile: float = 95) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8 of one uncertainty map (C, H, W): scaled so its ``saturation_percentile`` is 255
    (``visualize_uncertainty``; an all-zero map stays black)."""
    image = uncertainty.permute(1, 2, 0).squeeze(2).cpu().numpy()
    saturation = np.percentile(image, saturation_percentile)
    if not saturation > 0:
        return np.zeros(image.shape, dtype=np.uint8)
    return np.clip(image * 255 / saturation, 0, 255).astype(np.uint8)


__all__ = ["RESAMPLE_METHODS", "REDUCTIONS", "decoded_maps", "ensemble_depth", "ensemble_normals",
           "ensemble_intrinsics", "colormap", "depth_picture", "normals_picture", "intrinsics_pictures",
           "uncertainty_picture", "resized", "resized_to_max_edge", "padded", "unpadded", "unit_normals"]
