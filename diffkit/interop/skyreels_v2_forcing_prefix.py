"""SkyReels-V2 diffusion forcing from clean first frames (diffusers 0.42.1), short-video mode, with diffkit
samplers: image to video (``SkyReelsV2DiffusionForcingImageToVideoPipeline``) and video extension
(``SkyReelsV2DiffusionForcingVideoToVideoPipeline``).

Both folders are a ``SkyReelsV2DiffusionForcingPipeline`` folder's (:mod:`.skyreels_v2_forcing`) and run its loop
(:func:`.skyreels_v2_forcing.text_to_video`) with the condition's normalised latents (posterior mean, (z - mean) /
std) written over the first P latent frames of the noise (``latents[:, :, :P] = condition``): the P frames form the
``num_pre_ready`` prefix, whose P // causal_block_size whole blocks stay clean at timestep 0 in every row while the
other blocks run the schedule (a prefix frame in a block that is not whole is that block's starting point, as the
pipeline has it). With a whole block clean, the run is always the rows' (each block its own sampler of one model call
a step, even at ``ar_step`` 0).

* image to video: the image resized to height x width (Lanczos, ``VideoProcessor.preprocess``) encoded alone as one
  frame: P = 1; CFG s = 5 by default; the pipeline's ``last_image`` is not offered;
* video to video: the input video's last ``overlap_history`` frames (resized likewise, ``preprocess_video``) encoded
  alone: P = 1 + (o - 1) // 4 latent frames, cut to a multiple of the block size; the ``num_frames`` window starts
  with them; the output is the input video then the window's decoded frames (the pipeline's ``torch.cat([video_
  original, video_generated])``; with ``return_latents`` the window's latents); CFG s = 6 by default.

The long-video mode (``num_frames`` > ``base_num_frames`` with ``overlap_history``: several windows) is
:mod:`.skyreels_v2_forcing_long`'s (``addnoise_condition`` not driven).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from .skyreels_v2 import SKYREELS_V2_DF_I2V_PIPELINE, SKYREELS_V2_DF_V2V_PIPELINE
from .skyreels_v2_forcing import SkyReelsV2DF
from .wan_v2v import WanV2V

DF_V2V_OVERLAP = 17  # the frames of the input video the extension starts from (the pipeline's recommended 17 / 37)


@dataclass
class SkyReelsV2DFI2V(SkyReelsV2DF):
    """A ``SkyReelsV2DiffusionForcingImageToVideoPipeline`` folder: a diffusion-forcing folder's components."""

    pipeline_name = SKYREELS_V2_DF_I2V_PIPELINE
    prompt_module = "diffusers.pipelines.skyreels_v2.pipeline_skyreels_v2_diffusion_forcing_i2v"


@dataclass
class SkyReelsV2DFV2V(SkyReelsV2DF):
    """A ``SkyReelsV2DiffusionForcingVideoToVideoPipeline`` folder: a diffusion-forcing folder's components."""

    pipeline_name = SKYREELS_V2_DF_V2V_PIPELINE
    prompt_module = "diffusers.pipelines.skyreels_v2.pipeline_skyreels_v2_diffusion_forcing_v2v"
    video_latents = WanV2V.video_latents  # each video encoded alone, posterior mean, normalised


def image_to_video(model: SkyReelsV2DFI2V, images, prompts: Union[str, Sequence[str]], *,
                   guidance_scale: Optional[float] = None, convention: str = "diffusers",
                   num_frames: Optional[int] = None, height: Optional[int] = None, width: Optional[int] = None,
                   **options) -> torch.Tensor:
    """Videos (B, T, 3, H, W) starting at ``images`` (PIL or (B, 3, H, W) in [-1, 1]; one, or one per prompt) as
    ``SkyReelsV2DiffusionForcingImageToVideoPipeline`` in its short-video mode (module docstring): CFG s = 5 by
    default; ``options`` :func:`.skyreels_v2_forcing.text_to_video`'s (ar_step, causal_block_size, fps, steps,
    sampler, seed, negative_prompt, output_range, return_latents, ...)."""
    from PIL import Image

    from .qwen_image_edit import _pil_images, _pixels
    from .skyreels_v2 import SKYREELS_V2_I2V_GUIDANCE, check_model, pipeline_defaults
    from .skyreels_v2_forcing import text_to_video
    from .stable_diffusion import prompt_list
    check_model(model, SkyReelsV2DFI2V, "skyreels_v2_forcing_prefix.image_to_video")
    pil, prompts = _pil_images(images), prompt_list(prompts)
    if len(pil) not in (1, len(prompts)):
        raise DiffkitError(f"{len(pil)} images for {len(prompts)} prompts; give one, or one per prompt")
    given = pipeline_defaults(guidance_scale, convention, SKYREELS_V2_I2V_GUIDANCE, num_frames, height, width)
    model.check_size(given["height"], given["width"])
    pixels = _pixels([image.resize((given["width"], given["height"]), resample=Image.LANCZOS) for image in pil])
    return text_to_video(model, prompts, prefix_latents=model.encode(pixels)[:, :, None], **given, **options)


def video_to_video(model: SkyReelsV2DFV2V, videos, prompts: Union[str, Sequence[str]], *,
                   overlap_history: int = DF_V2V_OVERLAP, base_num_frames: Optional[int] = None,
                   guidance_scale: Optional[float] = None,
                   convention: str = "diffusers", num_frames: Optional[int] = None, height: Optional[int] = None,
                   width: Optional[int] = None, causal_block_size: Optional[int] = None, output_range: str = "-1,1",
                   return_latents: bool = False, **options) -> torch.Tensor:
    """The input ``videos`` (lists of PIL frames or (T, 3, H, W) in [-1, 1]; one, or one per prompt) each followed by
    its ``num_frames`` window (default 97) extending its last ``overlap_history`` frames (default 17), as
    ``SkyReelsV2DiffusionForcingVideoToVideoPipeline`` in its short-video mode (module docstring): (B, T + num_frames,
    3, H, W), or the window's latents with ``return_latents``. CFG s = 6 by default; ``base_num_frames`` fewer than
    ``num_frames``: the long-video mode's windows (:mod:`.skyreels_v2_forcing_long`); ``options`` as
    :func:`image_to_video`'s."""
    from diffusers.video_processor import VideoProcessor

    from ..errors import check_choice
    from .cosmos2_video import input_videos
    from .skyreels_v2 import SKYREELS_V2_GUIDANCE, check_model, pipeline_defaults
    from .skyreels_v2_forcing import text_to_video
    from .stable_diffusion import OUTPUT_RANGES, prompt_list
    from .wan import check_frames
    check_model(model, SkyReelsV2DFV2V, "skyreels_v2_forcing_prefix.video_to_video")
    check_choice("output_range", output_range, OUTPUT_RANGES)
    frames, prompts = input_videos(list(videos)), prompt_list(prompts)
    if len(frames) not in (1, len(prompts)):
        raise DiffkitError(f"{len(frames)} input videos for {len(prompts)} prompts; give one, or one per prompt")
    given = pipeline_defaults(guidance_scale, convention, SKYREELS_V2_GUIDANCE, num_frames, height, width)
    window = (min(check_frames(given["num_frames"]), check_frames(base_num_frames or given["num_frames"])) - 1) \
        // model.temporal_factor + 1
    block = int(model.transformer.config.num_frame_per_block) if causal_block_size is None else causal_block_size
    prefix = check_overlap(overlap_history, len(frames[0]), model.temporal_factor, block, window)
    model.check_size(given["height"], given["width"])
    z = model.video_latents([video[-overlap_history:] for video in frames], given["height"], given["width"])
    z = text_to_video(model, prompts, prefix_latents=z[:, :, :prefix], causal_block_size=causal_block_size,
                      base_num_frames=base_num_frames, overlap_history=overlap_history,
                      output_range=output_range, return_latents=return_latents, **given, **options)
    if return_latents:
        return z
    pixels = VideoProcessor(vae_scale_factor=model.vae_scale_factor).preprocess_video(
        frames, height=given["height"], width=given["width"]).transpose(1, 2).to(z)
    pixels = pixels / 2 + 0.5 if output_range == "0,1" else pixels
    return torch.cat([pixels.expand(z.shape[0], *pixels.shape[1:]), z], dim=1)


def check_overlap(overlap_history, frames: int, temporal: int, block: int, window: int) -> int:
    """The prefix's latent frames 1 + (o - 1) // 4 cut to a multiple of the block size; one line unless ``o`` is a
    whole number in [1, the input videos' frames] whose prefix holds a block and leaves a block of the window to
    generate."""
    if isinstance(overlap_history, bool) or not isinstance(overlap_history, int) or not 1 <= overlap_history <= frames:
        raise DiffkitError(f"overlap_history={overlap_history!r} is not allowed; give a whole number of the input "
                           f"videos' last frames, 1 to {frames}")
    prefix = (overlap_history - 1) // temporal + 1
    prefix -= prefix % block if isinstance(block, int) and block > 0 else 0
    if not 0 < prefix < window:
        raise DiffkitError(f"overlap_history={overlap_history} is not allowed with causal_block_size={block} and "
                           f"{window} latent frames: its {(overlap_history - 1) // temporal + 1} latent frames must "
                           f"hold a whole block and leave frames to generate")
    return prefix


__all__ = ["SkyReelsV2DFI2V", "SkyReelsV2DFV2V", "image_to_video", "video_to_video", "check_overlap",
           "DF_V2V_OVERLAP"]
