"""AnimateDiff with ControlNets (``AnimateDiffControlNetPipeline``, diffusers 0.42.1): an ``AnimateDiffPipeline``
folder (:mod:`.animatediff`) plus one or more Stable Diffusion 1.x ``ControlNetModel`` folders, each with a control
video whose frame f conditions frame f of every video.

ControlNet (Zhang et al. 2023, eq. 1-2, Sec. 3.2; :mod:`.controlnet`) is an image model: the pipeline gives it the
frames of the latent videos as its batch (B F, C, h, w) (its transpose + reshape), each with its video's prompt
states and time and the control video's frame f (prepared as its ``control_video_processor``: RGB in [0, 1], Lanczos
resize to the output size, frame by frame, as :func:`.controlnet.prepare_control_image`), and the motion UNet
(:class:`.animatediff.MotionNet`) adds its down-block and middle residuals, times ``controlnet_conditioning_scale``,
to those of the same frames (:class:`MotionControlledNet`). With classifier-free guidance both halves get residuals
(guess mode off); ``control_guidance_start`` / ``_end`` windows, Multi-ControlNet (their residuals summed) and the
rest as :class:`.controlnet.ControlNets` (whose checks and windows this reuses), on the folder's grid and loop
(:func:`.animatediff.text_to_video`).

* frames: the control videos' (one count: the pipeline's ``len(conditioning_frames) == num_frames``); size: the
  AnimateDiff default 512 x 512 (the UNet's sample size, not the control video's), the control frames resized to it.
* batches: diffusers 0.42.1 repeats a control video of F > 1 frames for one prompt only (more prompts fail in the
  ControlNet's batch); diffkit gives every video of the batch the same control frames.

Refused in one line: guess mode (also a ControlNet with ``global_pool_conditions``), a ControlNet of another class
(ControlNet-Union, ControlNet-XS, SD3 / FLUX ones) or of another UNet's blocks, a control video of another frame count
than ``num_frames`` or past the motion modules' frame positions, video-to-video (its ControlNet pipeline is not
driven), an SD-XL folder (no such pipeline in diffusers 0.42.1). SparseCtrl: :mod:`.animatediff_sparsectrl`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from .controlnet import ControlledNet, ControlNets, check_controlnet, prepare_control_image, step_windows

ANIMATEDIFF_CONTROLNET_PIPELINE = "AnimateDiffControlNetPipeline"


class MotionControlledNet(ControlledNet):
    """``net(x, t, context=..., **extra)`` on latent videos x (B, C, F, h, w): :class:`.controlnet.ControlledNet`'s
    residuals of the frames as rows (B F, C, h, w), row (b, f) with video b's context and time and control frame f,
    added to the motion UNet's (``self.net``, a :class:`.animatediff.MotionNet`) rows of the same frames."""

    def forward(self, x: torch.Tensor, t, y=None, context=None, control_rows=None, **extra) -> torch.Tensor:
        b, c, f, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * f, c, h, w)
        t_rows = torch.as_tensor(t, device=x.device).reshape(-1).expand(b).repeat_interleave(f)
        prompt = None if context is None else context.repeat_interleave(f, dim=0)
        total = self.residuals(frames, t_rows, None, prompt, torch.arange(f, device=x.device).repeat(b))
        if total is not None:
            extra = {**extra, "down_block_additional_residuals": total[0], "mid_block_additional_residual": total[1]}
        return self.net(x, t, y=y, context=context, **extra)


def image_blocks(config) -> object:
    """An object whose ``config`` is the motion UNet's ``config`` (a dict, or its JSON) with its motion blocks named
    as the image blocks a ControlNet copies (``CrossAttnDownBlockMotion`` -> ``CrossAttnDownBlock2D``), for
    :func:`.controlnet.check_controlnet`."""
    from types import SimpleNamespace
    config = dict(config)
    config["down_block_types"] = [name.replace("Motion", "2D") for name in config.get("down_block_types", ())]
    return SimpleNamespace(config=config)


@dataclass
class VideoControlNets(ControlNets):
    """:class:`.controlnet.ControlNets` whose ``images`` are control videos, one per ControlNet: a list of F frames
    (PIL images, paths, or (1, 3, H, W) tensors in [0, 1]) each; ``scales`` (``controlnet_conditioning_scale``),
    ``start`` / ``end`` (the window) as there; guess mode refused."""

    def __post_init__(self):
        names = sorted({type(m).__name__ for m in self.models} - {"ControlNetModel"})
        if names:
            raise DiffkitError(f"a {names[0]} is not allowed with AnimateDiff; AnimateDiffControlNetPipeline takes "
                               f"Stable Diffusion 1.x ControlNetModel folders")
        if any(not isinstance(video, (list, tuple)) for video in self.images):
            raise DiffkitError("give each ControlNet a control video: a list of frames (PIL images or (1, 3, H, W) "
                               "tensors in [0, 1])")
        super().__post_init__()
        if self.guess_mode:
            raise DiffkitError("guess mode (guess_mode, or a ControlNet with global_pool_conditions) is not driven "
                               "with AnimateDiff; give ControlNets without global_pool_conditions")
        counts = sorted({len(video) for video in self.images})
        if len(counts) > 1:
            raise DiffkitError(f"control videos of {' and '.join(map(str, counts))} frames; give every ControlNet a "
                               f"video of one frame count (the output's)")

    @property
    def frames(self) -> int:
        """The control videos' frame count (the output's)."""
        return len(self.images[0])

    def controlling(self, model, height: int, width: int, grid: Optional[torch.Tensor] = None, box=None):
        """A copy of the :class:`.animatediff.AnimateDiff` ``model`` whose network denoiser adds these ControlNets'
        residuals per frame (:class:`MotionControlledNet`; ``grid``: the sampler's time grid, for a window)."""
        from ..denoiser import Denoiser
        from .animatediff import AnimateDiff, MotionNet
        from .animatediff_sdxl import AnimateDiffSDXL
        if not isinstance(model, AnimateDiff) or isinstance(model, AnimateDiffSDXL) or model.takes_videos:
            raise DiffkitError(f"ControlNets apply to AnimateDiffPipeline folders (AnimateDiffControlNetPipeline); "
                               f"not to this {getattr(model, 'pipeline', type(model).__name__)} one")
        f = model.vae_scale_factor
        for index, controlnet in enumerate(self.models):
            check_controlnet(controlnet, image_blocks(model.unet.config), f, f"--controlnet number {index + 1}")
        videos = [torch.cat([prepare_control_image(frame, height, width, f) for frame in video])
                  for video in self.images]
        keeps = None
        if self.windowed:
            if grid is None:
                raise DiffkitError("a control guidance window needs the sampler's time grid")
            keeps = [step_windows(grid, s, e) for s, e in zip(self.start, self.end)]
        inner = model.network_denoiser
        net = MotionControlledNet(MotionNet(model.unet, uses_labels=False), self.models, videos, self.scales,
                                  grid=grid, keeps=keeps)
        denoiser = Denoiser(net, inner.schedule, inner.prediction_type, learned_variance=False)
        denoiser.model = model.unet
        return replace(model, _denoiser=denoiser)


def text_to_video(model, prompts: Union[str, Sequence[str]], controlnet: VideoControlNets, *,
                  num_frames: Optional[int] = None, **options) -> torch.Tensor:
    """Videos (B, T, C, H, W) of ``prompts`` as ``AnimateDiffControlNetPipeline`` (module docstring): the
    :class:`.animatediff.AnimateDiff` ``model``'s :func:`.animatediff.text_to_video` (its options: guidance, steps,
    sampler, size, seed, latents, output range ...) with ``controlnet``'s residuals; ``num_frames``: default the
    control videos' frames, another count refused."""
    from .animatediff import text_to_video as motion_text_to_video
    if not isinstance(controlnet, VideoControlNets):
        raise DiffkitError(f"controlnet must be a VideoControlNets (ControlNets and control videos); got "
                           f"{type(controlnet).__name__}")
    if num_frames is not None and num_frames != controlnet.frames:
        raise DiffkitError(f"num_frames={num_frames!r} is not allowed with control videos of {controlnet.frames} "
                           f"frames; give their count (the pipeline's len(conditioning_frames) == num_frames)")
    return motion_text_to_video(model, prompts, num_frames=controlnet.frames, controlnet=controlnet, **options)


__all__ = ["VideoControlNets", "MotionControlledNet", "text_to_video", "image_blocks",
           "ANIMATEDIFF_CONTROLNET_PIPELINE"]
