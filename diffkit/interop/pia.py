"""A PIA diffusers folder (``PIAPipeline``, diffusers 0.42.1, ``pipelines/deprecated/pia``): image-to-video with a
Stable Diffusion 1.x UNet turned into a 9-channel video UNet, sampled on AnimateDiff's parts (:mod:`.animatediff`).

PIA (Zhang et al. 2024, "PIA: Your Personalized Image Animator via Plug-and-Play Modules in Text-to-Image Models",
CVPR) conditions an AnimateDiff motion UNet on the image: its ``conv_in`` takes the latent video z (4 channels), an
*inter-frame affinity* s^i (1 channel, Sec. 3.2: how much frame i keeps of the image) and the image's latent
repeated over the frames (4 channels). diffkit drives it as ``PIAPipeline.__call__``:

* the folder: AnimateDiff's (:func:`.animatediff.check_animatediff_folder`), its UNet a ``UNetMotionModel`` (or a
  ``UNet2DConditionModel`` with ``motion_adapter/``) with ``in_channels`` 9 and ``out_channels`` 4.
* the image (one per prompt): diffusers' own ``VideoProcessor(do_resize=False)`` (its own size, in [-1, 1]), encoded
  with its posterior **sampled** from video i's generator after z_T was drawn, resized to the latent size by nearest
  interpolation, x ``scaling_factor``: the image latent c, the same at every frame.
* the affinity (``motion_scale`` 0..8, default 0): row ``motion_scale`` of PIA's table :data:`AFFINITY` (0-2 small /
  moderate / large motion, 3-5 loops, 6-8 style transfer), padded with its last value to the frame count; frame i's
  mask is entry |i - 0| (the image is frame 0).
* the network input: [z_t (the scheduler's ``scale_model_input``, diffkit's VP state), mask, c] along the channels,
  the same for the guided and unguided halves (:class:`PIANet`); guidance, prompts, grid and the folder's step as
  AnimateDiff's (CFG s = 7.5, 50 steps, 16 frames, 512 x 512 by default).
* ``strength`` (default 1): the last min(int(N strength), N) of the N steps (:func:`diffkit.editing.strength_grid`);
  below 1 the start is c noised to the first kept timestep with eps drawn after the posterior (``add_noise``); at 1
  z_T = ``init_noise_sigma`` n (:meth:`.animatediff.AnimateDiff.start_scale`). The pipeline noises every video from
  the *first* video's image latent (its ``masked_image[0]``); diffkit noises video i from its own image (the two
  agree for one video, which the tests compare).

Refused in one line before any weight is read (:func:`check_pia_folder`): another pipeline class, a missing
component, a UNet without the 9 input channels, and what AnimateDiff's check refuses; a ``motion_scale`` outside 0..8.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from . import require
from .animatediff import AnimateDiff, MotionNet

PIA_PIPELINE = "PIAPipeline"
PIA_IN_CHANNELS = 9  # z (4) + affinity mask (1) + image latent (4)
PIA_STRENGTH = 1.0  # PIAPipeline.__call__'s strength
# The inter-frame affinity rows of PIA's pipeline (diffusers' RANGE_LIST): frame i keeps row[min(i, len - 1)].
AFFINITY = (
    (1.0, 0.9, 0.85, 0.85, 0.85, 0.8),  # 0: small motion
    (1.0, 0.8, 0.8, 0.8, 0.79, 0.78, 0.75),  # 1: moderate motion
    (1.0, 0.8, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.6, 0.5, 0.5),  # 2: large motion
    (1.0, 0.9, 0.85, 0.85, 0.85, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.85, 0.85, 0.9, 1.0),  # 3: loop
    (1.0, 0.8, 0.8, 0.8, 0.79, 0.78, 0.75, 0.75, 0.75, 0.75, 0.75, 0.78, 0.79, 0.8, 0.8, 1.0),  # 4: loop
    (1.0, 0.8, 0.7, 0.7, 0.7, 0.7, 0.6, 0.5, 0.5, 0.6, 0.7, 0.7, 0.7, 0.7, 0.8, 1.0),  # 5: loop
    (0.5, 0.4, 0.4, 0.4, 0.35, 0.3),  # 6: style transfer, small motion
    (0.5, 0.4, 0.4, 0.4, 0.35, 0.35, 0.3, 0.25, 0.2),  # 7: style transfer, moderate motion
    (0.5, 0.2),  # 8: style transfer, large motion
)


def check_pia_unet(config: dict, directory, lcm: bool = False) -> None:
    """One line unless the UNet takes PIA's 9 input channels and predicts 4, then Stable Diffusion's checks."""
    from .stable_diffusion import check_stable_diffusion_unet
    ins, outs = config.get("in_channels", 4), config.get("out_channels", 4)
    if ins != PIA_IN_CHANNELS or outs != 4:
        raise DiffkitError(f"{directory}'s unet has in_channels={ins!r}, out_channels={outs!r}; a PIA UNet takes "
                           f"{PIA_IN_CHANNELS} (latents, affinity mask, image latents) and gives 4")
    check_stable_diffusion_unet({**config, "in_channels": 4}, directory, lcm)


def check_pia_folder(directory) -> tuple:
    """(model_index dict, scheduler config) of a ``PIAPipeline`` folder from its JSON alone (module docstring)."""
    from .animatediff import check_animatediff_folder
    return check_animatediff_folder(directory, PIA_PIPELINE, "PIA", check_unet=check_pia_unet)


def load_pia(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32, progress: bool = True,
             lora=None) -> AnimateDiff:
    """Load a ``PIAPipeline`` folder (checked first, :func:`check_pia_folder`) as AnimateDiff's loader does."""
    from .animatediff import load_animatediff
    return load_animatediff(directory, device, dtype, progress, lora, check=check_pia_folder)


def check_motion_scale(motion_scale) -> int:
    """``motion_scale``: an integer row of :data:`AFFINITY` (0..8), else one line."""
    if isinstance(motion_scale, bool) or not isinstance(motion_scale, int) or not 0 <= motion_scale < len(AFFINITY):
        raise DiffkitError(f"motion_scale={motion_scale!r} is not allowed; give an integer 0 to {len(AFFINITY) - 1} "
                           f"(0-2 small to large motion, 3-5 loops, 6-8 style transfer)")
    return motion_scale


def affinity(frames: int, motion_scale: int) -> torch.Tensor:
    """The mask values (F,) of ``frames`` frames, the image at frame 0: row ``motion_scale`` of :data:`AFFINITY`
    padded with its last value (the pipeline's ``prepare_mask_coef_by_statistics(frames, 0, motion_scale)``)."""
    row = AFFINITY[check_motion_scale(motion_scale)]
    return torch.tensor([row[min(i, len(row) - 1)] for i in range(frames)], dtype=torch.float64)


class PIANet(torch.nn.Module):
    """``net(x, t, context=...)`` on latent videos x (k B, 4, F, h, w): the motion UNet on [x, mask, image latent]
    along the channels, ``condition`` (B, 5, F, h, w) repeated for each of the k guidance halves."""

    def __init__(self, net: MotionNet, condition: torch.Tensor):
        super().__init__()
        self.net, self.condition = net, condition

    def forward(self, x: torch.Tensor, t, y=None, context=None, **extra) -> torch.Tensor:
        condition = self.condition.to(x.device, x.dtype).repeat(x.shape[0] // self.condition.shape[0], 1, 1, 1, 1)
        return self.net(torch.cat([x, condition], dim=1), t, y=y, context=context, **extra)


def image_latents(model: AnimateDiff, images: list, h: int, w: int, generators) -> torch.Tensor:
    """The image latents (B, 4, h, w): each image at its own size by ``VideoProcessor(do_resize=False)``, its
    posterior sampled from video i's generator, nearest-resized to (h, w), x scaling_factor."""
    require("diffusers")
    from diffusers.video_processor import VideoProcessor
    processor = VideoProcessor(do_resize=False, vae_scale_factor=model.vae_scale_factor)
    with torch.no_grad():
        z = torch.cat([model.vae.encode(processor.preprocess(image).to(model.device, model.dtype)).latent_dist.sample(
            None if generators is None else generators[b]) for b, image in enumerate(images)])
    return torch.nn.functional.interpolate(z, size=[h, w]) * model.vae.config.scaling_factor


def image_to_video(model: AnimateDiff, images, prompts: Union[str, Sequence[str]], *, motion_scale: int = 0,
                   strength: Optional[float] = None, negative_prompt=None, guidance_scale: Optional[float] = None,
                   convention: str = "diffusers", steps: Optional[int] = None, sampler: Optional[str] = None,
                   num_frames: Optional[int] = None, height: Optional[int] = None, width: Optional[int] = None,
                   seed: Optional[int] = 0, output_range: str = "-1,1", return_latents: bool = False,
                   progress: bool = False, clip_skip: Optional[int] = None, **options) -> torch.Tensor:
    """Videos (B, T, C, H, W) animating ``images`` (one per prompt, or one for all: PIL images or paths) as
    ``PIAPipeline`` (module docstring): ``motion_scale`` (0..8), ``strength`` (default 1); the other options as
    :func:`.animatediff.text_to_video` (guidance s = 7.5 against ``negative_prompt``, 50 steps of the folder's
    scheduler or ``sampler`` on its grid, 16 frames, per-video noise from ``seed + i``)."""
    from ..denoiser import Denoiser
    from ..editing import strength_grid
    from ..errors import check_choice
    from ..noise import generators_from_seed, randn
    from ..sampling import sample
    from .animatediff import ANIMATEDIFF_STEPS, folder_sampler
    from .auraflow import guided
    from .controlnet import open_control_image
    from .stable_diffusion import OUTPUT_RANGES, prompt_list
    if model.pipeline != PIA_PIPELINE:
        raise DiffkitError(f"image_to_video takes a {PIA_PIPELINE} folder; this one is a {model.pipeline}")
    check_choice("output_range", output_range, OUTPUT_RANGES)
    check_motion_scale(motion_scale)
    prompts = prompt_list(prompts)
    images = [images] if not isinstance(images, (list, tuple)) else list(images)
    images = [open_control_image(image, "--image") for image in images]
    if len(images) not in (1, len(prompts)):
        raise DiffkitError(f"{len(images)} images for {len(prompts)} prompts; give one image, or one per prompt")
    images = images * len(prompts) if len(images) == 1 else images
    frames = model.frame_count(num_frames)
    scale = model.video_guidance if guidance_scale is None else guidance_scale
    convention = "diffusers" if guidance_scale is None else convention
    cfg = guided(scale, convention, negative_prompt)
    b, _, h, w = model.latent_shape(len(prompts), height, width)
    c = model.unet.config.out_channels  # (latent_shape's are the UNet's 9 input channels)
    steps = ANIMATEDIFF_STEPS if steps is None else steps
    grid = strength_grid(model.scheduler_grid(steps), PIA_STRENGTH if strength is None else strength)
    own, own_options = folder_sampler(model.scheduler_config)
    if sampler is None:
        sampler, options = own, {**own_options, **options}
    generators = None if seed is None else generators_from_seed(seed, b)  # z_T, the posteriors, then eps
    z_t = randn((b, c, frames, h, w), generators, device=model.device) * model.start_scale(steps)
    latent = image_latents(model, images, h, w, generators).float()[:, :, None].expand(-1, -1, frames, -1, -1)
    if strength is not None and strength < 1:  # the image latent noised to the first kept timestep
        from ..diffusion import q_sample
        eps = randn(z_t.shape, generators, device=model.device)
        z_t = q_sample(model.schedule, latent, torch.full((b,), float(grid[0]), dtype=torch.float64), eps)
    mask = affinity(frames, motion_scale).to(latent)[None, None, :, None, None].expand(b, 1, -1, h, w)
    f = model.vae_scale_factor
    inner = model.network_denoiser  # the guided denoiser wraps it: PIA's network in its place
    pia = Denoiser(PIANet(MotionNet(model.unet, uses_labels=False), torch.cat([mask, latent], dim=1)),
                   inner.schedule, inner.prediction_type, learned_variance=False)
    pia.model = model.unet
    denoiser, cond = replace(model, _denoiser=pia).video_conditioning(prompts, negative_prompt, scale, convention,
                                                                      cfg, clip_skip, (h * f, w * f))
    z = sample(denoiser, z_t.to(model.device, model.dtype), sampler, grid=grid, generator=generators, cond=cond,
               progress=progress, device=model.device, dtype=model.dtype, **options)
    if return_latents:
        return z
    videos = model.decode_video(z)
    return (videos / 2 + 0.5).clamp(0, 1) if output_range == "0,1" else videos.clamp(-1, 1)


__all__ = ["PIA_PIPELINE", "AFFINITY", "PIANet", "check_pia_folder", "check_pia_unet", "check_motion_scale",
           "load_pia", "affinity", "image_latents", "image_to_video"]
