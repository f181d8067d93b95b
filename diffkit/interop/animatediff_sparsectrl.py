"""SparseCtrl on AnimateDiff (``AnimateDiffSparseControlNetPipeline``, diffusers 0.42.1): an ``AnimateDiffPipeline``
folder (:mod:`.animatediff`) plus a ``SparseControlNetModel`` given K conditioning frames at K frame indices.

SparseCtrl (Guo et al. 2024, "SparseCtrl: Adding Sparse Controls to Text-to-Video Diffusion Models", Sec. 3.2-3.3) is
a ControlNet with motion modules that sees only the conditions, not the noisy latents (the pipeline's model zeroes
its ``sample``): the conditions c (C, F, H, W) hold the given frames at their indices and zeros elsewhere, with a mask
m (1 at the given frames) concatenated (eq. 5-6, ``concat_conditioning_mask``); its down-block and middle outputs,
times ``controlnet_conditioning_scale``, are added to the motion UNet's at every call (both halves of classifier-free
guidance; guess mode off), as ``AnimateDiffSparseControlNetPipeline.__call__``:

* the frames: RGB in [0, 1] resized to the output size as its ``control_image_processor``
  (:func:`.controlnet.prepare_control_image`); with ``use_simplified_condition_embedding`` (the RGB SparseCtrl) they
  are encoded by the folder's VAE, 2 x - 1, their posteriors **sampled** from torch's global generator (the pipeline
  calls ``retrieve_latents`` without a generator; :attr:`SparseControl.seed`: from a seeded one), x
  ``scaling_factor``; else (scribbles) the pixels themselves;
* the indices: ``controlnet_frame_indices`` (default [0]), one per given frame, each below the output's frames;
* the rest: :func:`.animatediff.text_to_video`'s loop (prompts, guidance, the folder's grid and step or any sampler,
  16 frames of 512 x 512 by default, decoding).

Refused in one line: guess mode (also ``global_pool_conditions``), a count of frames other than the indices', an
index out of range or repeated, a ControlNet of other blocks than the UNet's, video-to-video and SD-XL folders.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from . import model_dtype

SPARSECTRL_PIPELINE = "AnimateDiffSparseControlNetPipeline"
SPARSE_MATCHING = ("in_channels", "block_out_channels", "layers_per_block", "down_block_types", "cross_attention_dim")


class SparseControlledNet(torch.nn.Module):
    """``net(x, t, context=..., **extra)`` on latent videos x (B, C, F, h, w): the motion UNet (``net``, a
    :class:`.animatediff.MotionNet`) with the residuals of a ``SparseControlNetModel`` called on the same videos,
    their prompt states per frame, and the conditions ``frames`` (1, C, K, H', W') placed at ``indices`` of F frames
    with their mask."""

    def __init__(self, net, controlnet, frames: torch.Tensor, indices: Sequence[int], scale: float):
        super().__init__()
        self.net, self.controlnet, self.frames = net, controlnet, frames
        self.indices, self.scale = list(indices), float(scale)

    def conditions(self, count: int, device, dtype) -> tuple:
        """(conditions (1, C, F, H', W'), mask (1, 1, F, H', W')) of F = ``count`` frames: the frames at their
        indices, zeros elsewhere (the pipeline's ``prepare_sparse_control_conditioning``)."""
        _, c, _, h, w = self.frames.shape
        cond = torch.zeros((1, c, count, h, w), device=device, dtype=dtype)
        mask = torch.zeros((1, 1, count, h, w), device=device, dtype=dtype)
        cond[:, :, self.indices] = self.frames.to(device, dtype)
        mask[:, :, self.indices] = 1
        return cond, mask

    def forward(self, x: torch.Tensor, t, y=None, context=None, **extra) -> torch.Tensor:
        dtype = model_dtype(self.controlnet)
        cond, mask = self.conditions(x.shape[2], x.device, dtype)
        prompt = None if context is None else context.repeat_interleave(x.shape[2], dim=0).to(dtype)
        t_rows = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        down, mid = self.controlnet(x.to(dtype), t_rows, encoder_hidden_states=prompt, controlnet_cond=cond,
                                    conditioning_mask=mask, conditioning_scale=self.scale, return_dict=False)
        return self.net(x, t, y=y, context=context, down_block_additional_residuals=down,
                        mid_block_additional_residual=mid, **extra)


def check_sparse_controlnet(config: dict, unet_config, name: str = "controlnet") -> None:
    """One line for a ``SparseControlNetModel`` config of guess mode (``global_pool_conditions``) or whose blocks are
    not the motion UNet's (``unet_config``, unless None; :data:`SPARSE_MATCHING`, motion and image block names
    alike)."""
    from .animatediff_controlnet import image_blocks
    if config.get("global_pool_conditions"):
        raise DiffkitError(f"{name} has global_pool_conditions (guess mode), which diffkit does not drive with "
                           f"SparseCtrl; give a SparseControlNetModel without it")
    if unet_config is None:
        return
    ours, theirs = image_blocks(config).config, image_blocks(unet_config).config
    for key in SPARSE_MATCHING:
        a, b = ours.get(key), theirs.get(key)
        if (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
            raise DiffkitError(f"{name} has {key}={a!r} but the AnimateDiff UNet has {b!r}; a SparseCtrl model fits "
                               f"only the motion UNet it was made for")


def check_indices(indices, count: int, frames: int) -> list:
    """``controlnet_frame_indices``: ``count`` distinct integers in 0..frames-1 (one line otherwise)."""
    indices = list(indices)
    if len(indices) != count or any(isinstance(i, bool) or not isinstance(i, int) for i in indices) or \
            len(set(indices)) != count or not all(0 <= i < frames for i in indices):
        raise DiffkitError(f"controlnet_frame_indices {indices} are not allowed; give {count} distinct frame indices "
                           f"(one per conditioning frame) in 0..{frames - 1}")
    return indices


@dataclass
class SparseControl:
    """A loaded ``SparseControlNetModel`` (``model``) with its conditioning ``frames`` (PIL images, paths or (1, 3,
    H, W) tensors in [0, 1]), their ``indices`` among the output's frames (``controlnet_frame_indices``, default [0])
    and ``scale`` (``controlnet_conditioning_scale``); ``seed``: the RGB kind's posterior draw from a generator of
    this seed at every call (``diffkit video``: ``--seed``), None: torch's global generator (the pipeline's)."""

    model: object
    frames: list
    indices: Sequence[int] = (0,)
    scale: float = 1.0
    seed: Optional[int] = None

    def __post_init__(self):
        from .controlnet import open_control_image
        if type(self.model).__name__ != "SparseControlNetModel":
            raise DiffkitError(f"a {type(self.model).__name__} is not a SparseCtrl model; give a diffusers "
                               f"SparseControlNetModel (AnimateDiffSparseControlNetPipeline)")
        check_sparse_controlnet(dict(self.model.config), None, "the SparseControlNetModel")
        self.frames = [open_control_image(frame) for frame in self.frames]
        self.indices = list(self.indices)
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or self.scale < 0:
            raise DiffkitError(f"controlnet_conditioning_scale={self.scale!r} is not allowed; give a number >= 0")

    def controlling(self, model, height: int, width: int, grid=None):
        """A copy of the :class:`.animatediff.AnimateDiff` ``model`` whose network denoiser adds this SparseCtrl
        model's residuals (:class:`SparseControlledNet`); the frames prepared (and, for the simplified embedding,
        encoded by the folder's VAE, sampled from torch's global generator) here."""
        from ..denoiser import Denoiser
        from .animatediff import AnimateDiff, MotionNet
        from .animatediff_sdxl import AnimateDiffSDXL
        from .controlnet import prepare_control_image
        if not isinstance(model, AnimateDiff) or isinstance(model, AnimateDiffSDXL) or model.takes_videos:
            raise DiffkitError(f"SparseCtrl applies to AnimateDiffPipeline folders "
                               f"(AnimateDiffSparseControlNetPipeline); not to this "
                               f"{getattr(model, 'pipeline', type(model).__name__)} one")
        check_sparse_controlnet(dict(self.model.config), dict(model.unet.config))
        f = model.vae_scale_factor
        pixels = torch.cat([prepare_control_image(frame, height, width, f) for frame in self.frames])
        dtype = model_dtype(self.model)
        if self.model.config.get("use_simplified_condition_embedding", True):  # the RGB SparseCtrl: VAE latents
            with torch.no_grad():
                generator = None if self.seed is None else torch.Generator().manual_seed(self.seed)
                pixels = model.vae.encode((2 * pixels - 1).to(model.device, model.dtype)).latent_dist.sample(generator)
            pixels = pixels * model.vae.config.scaling_factor
        frames = pixels.to(model.device, dtype).permute(1, 0, 2, 3)[None]  # (1, C, K, H', W')
        inner = model.network_denoiser
        net = SparseControlledNet(MotionNet(model.unet, uses_labels=False), self.model, frames, self.indices,
                                  self.scale)
        denoiser = Denoiser(net, inner.schedule, inner.prediction_type, learned_variance=False)
        denoiser.model = model.unet
        return replace(model, _denoiser=denoiser)


def text_to_video(model, prompts: Union[str, Sequence[str]], control: SparseControl, *, num_frames=None,
                  **options) -> torch.Tensor:
    """Videos (B, T, C, H, W) of ``prompts`` as ``AnimateDiffSparseControlNetPipeline`` (module docstring): the
    :class:`.animatediff.AnimateDiff` ``model``'s :func:`.animatediff.text_to_video` (its options; ``num_frames``
    default 16) with ``control``'s residuals."""
    from .animatediff import text_to_video as motion_text_to_video
    if not isinstance(control, SparseControl):
        raise DiffkitError(f"control must be a SparseControl; got {type(control).__name__}")
    frames = model.frame_count(num_frames)
    check_indices(control.indices, len(control.frames), frames)
    return motion_text_to_video(model, prompts, num_frames=frames, controlnet=control, **options)


__all__ = ["SparseControl", "SparseControlledNet", "check_sparse_controlnet", "check_indices", "text_to_video",
           "SPARSECTRL_PIPELINE"]
