"""What the ControlNets of the rectified-flow transformer folders (SD3 :mod:`.sd3_controlnet`, FLUX.1
:mod:`.flux_controlnet`) share: the control image prepared and encoded by the folder's VAE as their diffusers
pipelines do (one posterior draw per row, sample i's from the generator seed + i), and the control guidance window
(:func:`.controlnet.step_windows`) placed on the flow network's times."""
from __future__ import annotations

from typing import Optional

import torch

from ..denoiser import Denoiser
from ..errors import check_choice
from .controlnet import ControlNets, prepare_control_image, sampler_grid, step_windows

POSTERIORS = ("sample", "mean")


def control_pixels(model, controlnets: ControlNets, height: int, width: int) -> list:
    """Per ControlNet, its control images (one, or one per prompt) as the pipelines prepare them: RGB resized to
    height x width (Lanczos for a PIL image) and mapped to [-1, 1] (``VaeImageProcessor`` with ``do_normalize``),
    (n, 3, height, width) float32."""
    return [torch.cat([prepare_control_image(image, height, width, model.vae_scale_factor) for image in entry]) * 2 - 1
            for entry in controlnets.images]


def control_latents(model, controlnets: ControlNets, height: int, width: int, batch: int, copies: int, seed: int = 0,
                    posterior: str = "sample", shift: Optional[float] = None, control_rows=None,
                    generators=None, pixels=None, scale=None, moments=None) -> torch.Tensor:
    """(copies, batch, K, C, h, w): ControlNet k's control latents of each row, (E(x) - shift) * scaling_factor of
    :func:`control_pixels` (``shift`` default the VAE's; with one control image per prompt, sample i's is image
    ``control_rows[i]``, :meth:`.controlnet.ControlNets.rows`), copy 0 the guidance's null half and copy 1 its
    conditional half (one copy: unguided); sample i's posterior draws (``posterior="sample"``) from the generator
    ``seed + i`` (null then conditional, ControlNet after ControlNet), or the posterior mean; ``generators``: one
    per sample instead (the caller's, which draw on after this: the edit pipelines' image posterior and noise);
    ``pixels``: per ControlNet, sample i's image in row i (B, 3, H, W) in [-1, 1], encoded instead of
    :func:`control_pixels` (the SD3 inpainting ControlNet's masked images). ``scale``: default the VAE's
    ``scaling_factor`` (``shift`` and ``scale`` may be per-channel (1, C, 1, 1) tensors: Qwen-Image's mean and
    1 / std); ``moments``: a function of the (n, 3, H, W) pixels giving the posterior's (mean, std), each
    (n, C, h, w) (default ``model.vae.encode``'s; Qwen-Image's one-frame video VAE,
    :meth:`.qwen_image.QwenImage.posterior`)."""
    from ..noise import randn
    check_choice("control posterior", posterior, POSTERIORS)
    shift = model.shift_factor if shift is None else shift
    scale = model.scaling_factor if scale is None else scale
    picked = controlnets.rows(batch, control_rows) if pixels is None else torch.arange(batch)  # None: one per net
    per_net = []
    for images in control_pixels(model, controlnets, height, width) if pixels is None else pixels:
        if moments is not None:
            per_net.append(moments(images))
            continue
        with torch.no_grad():
            dist = model.vae.encode(images.to(model.device, model.vae.dtype), return_dict=False)[0]
        per_net.append((dist.mean, dist.std))
    rows = []
    for i in range(batch):
        generator = torch.Generator().manual_seed(seed + i) if generators is None else generators[i]
        nets = []
        for means, stds in per_net:
            image = int(picked[i]) if picked is not None and means.shape[0] > 1 else 0
            mean, std = means[image:image + 1], stds[image:image + 1]
            z = mean.expand(copies, *mean.shape[1:])
            if posterior == "sample":
                z = z + std * randn(z.shape, generator, device=z.device, dtype=z.dtype)
            nets.append((z - shift) * scale)
        rows.append(torch.stack(nets, dim=1))  # (copies, K, C, h, w)
    return torch.stack(rows, dim=1).float()


def network_grid(denoiser: Denoiser, grid: torch.Tensor) -> torch.Tensor:
    """The flow network's time s T (float32) at each time of ``grid`` (the clean end, -1, kept as -1), as
    :class:`~diffkit.denoiser.Denoiser` computes it, so that :func:`.controlnet.steps_of` places a call."""
    from .. import diffusion
    times = []
    for g in grid.tolist():
        if g < 0:
            times.append(-1.0)
            continue
        t64 = torch.tensor(g, dtype=torch.float32).to(torch.float64)
        alpha, sigma = denoiser.schedule.alpha(t64).item(), denoiser.schedule.sigma(t64).item()
        times.append(torch.tensor(diffusion.flow_time(alpha, sigma) * denoiser.schedule.num_timesteps,
                                  dtype=torch.float32).item())
    return torch.tensor(times, dtype=torch.float32)


def control_windows(controlnets: ControlNets, denoiser: Denoiser, sampler: str, steps, nfe, grid,
                    options: dict) -> tuple:
    """(the sampler's grid as network times, per ControlNet its controlled steps) where a window is set, else
    (None, None): the steps of the grid :func:`diffkit.sample` will use (:func:`.controlnet.sampler_grid`)."""
    if not controlnets.windowed:
        return None, None
    times = sampler_grid(denoiser, sampler, steps, nfe, grid, options)
    keeps = [step_windows(times, s, e) for s, e in zip(controlnets.start, controlnets.end)]
    return network_grid(denoiser, times), keeps


def acting(scales, keeps, net_grid, t: torch.Tensor):
    """(index, scale, kept) of each ControlNet that acts on some row at the (B,) float32 network times ``t``; kept:
    (B,) 1.0 on the rows inside its window (every row without windows). A ControlNet that does not act would add
    zero (diffusers runs it at scale 0): the transformer's own output, without its call."""
    from .controlnet import steps_of
    for index, scale in enumerate(scales):
        kept = torch.ones(t.shape[0], device=t.device) if keeps is None else \
            keeps[index].to(t.device)[steps_of(net_grid, t)].to(torch.float32)
        if scale != 0 and kept.any():
            yield index, scale, kept


def added(total: Optional[list], blocks: Optional[list]) -> Optional[list]:
    """The running sum of residual lists (None: a ControlNet without such blocks), ControlNet after ControlNet as
    diffusers' multi-ControlNet models sum them."""
    if blocks is None:
        return total
    return list(blocks) if total is None else [a + b for a, b in zip(total, blocks)]


def kept_rows(blocks: Optional[list], kept: torch.Tensor) -> Optional[list]:
    """``blocks`` (a list of (B, L, D) residuals, or None) times ``kept`` per row, where some row is outside the
    window (calls at different times)."""
    if blocks is None or bool(kept.all()):
        return blocks
    return [block * kept.to(block.dtype).reshape(-1, 1, 1) for block in blocks]


__all__ = ["acting", "added", "kept_rows", "control_pixels", "control_latents", "network_grid", "control_windows",
           "POSTERIORS"]
