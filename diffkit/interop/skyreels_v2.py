"""SkyReels-V2 diffusers folders (``SkyReelsV2Pipeline``, ``SkyReelsV2ImageToVideoPipeline``, diffusers 0.42.1):
videos from prompts, or from an image and a prompt, with any diffkit sampler.

SkyReels-V2 (SkyReels Team 2025, "SkyReels-V2: Infinite-length Film Generative Model") fine-tunes Wan 2.1 (Wan Team
2025): a ``SkyReelsV2Transformer3DModel`` is Wan's rectified-flow video transformer (Esser et al. 2024, eq. 1: x_s =
(1 - s) x_0 + s eps, velocity u = eps - x_0) over the Wan 2.1 VAE's latents, UMT5 prompts and a flow UniPC scheduler.
Both pipelines are Wan's loops with other defaults, so diffkit drives them with Wan's code (:mod:`.wan`,
:mod:`.wan_i2v`: the folder's grid and prompts, the transformer as a Denoiser, the image condition, CLIP's states,
first-last-frame to video, the decoding):

* ``SkyReelsV2Pipeline``: ``WanPipeline.__call__``'s loop (:func:`.wan.text_to_video`); 97 frames of 544 x 960, 50
  steps, CFG s = 6 (diffusers' convention) against the negative prompt (default "").
* ``SkyReelsV2ImageToVideoPipeline``: Wan 2.1's ``WanImageToVideoPipeline`` loop (:func:`.wan_i2v.image_to_video`:
  the image, then black frames, VAE-encoded behind a first-frame mask; CLIP's penultimate states of the image, the
  folder's ``CLIPVisionModelWithProjection`` read as its vision tower; ``last_image`` with a first-last-frame
  transformer); 97 frames of 544 x 960, 50 steps, CFG s = 5.
* both are exported at 24 fps in diffusers' examples (``export_to_video(output, fps=24)``).

``SkyReelsV2DiffusionForcingPipeline`` folders load here too (:class:`.skyreels_v2_forcing.SkyReelsV2DF`); their
loop is :mod:`.skyreels_v2_forcing`'s; so do its image- and video-to-video ones
(:mod:`.skyreels_v2_forcing_prefix`).

Refused in one line before any weight is read (:func:`check_skyreels_v2_folder`): another pipeline class, a missing
component, parts of other classes, a transformer whose channels do not fit the VAE's z_dim (C; image-to-video 2 C + 4
in), patches other than (1, 2, 2), a text-to-video transformer with CLIP image states or an image-to-video one
without, a transformer with ``inject_sample_info`` (these pipelines pass it no fps: the transformer fails) or causal
blocks (``num_frame_per_block`` > 1: a diffusion-forcing transformer's), a VAE other than Wan 2.1's (patched, or
factors other than 8 and 4), a scheduler diffkit's samplers do not compute (a diffusion-forcing folder's: any but flow
UniPC).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from .wan import Wan
from .wan_i2v import WanI2V

SKYREELS_V2_PIPELINE = "SkyReelsV2Pipeline"
SKYREELS_V2_I2V_PIPELINE = "SkyReelsV2ImageToVideoPipeline"
SKYREELS_V2_DF_PIPELINE = "SkyReelsV2DiffusionForcingPipeline"  # :mod:`.skyreels_v2_forcing`
SKYREELS_V2_DF_I2V_PIPELINE = "SkyReelsV2DiffusionForcingImageToVideoPipeline"  # :mod:`.skyreels_v2_forcing_prefix`
SKYREELS_V2_DF_V2V_PIPELINE = "SkyReelsV2DiffusionForcingVideoToVideoPipeline"  # likewise
FORCING_PIPELINES = (SKYREELS_V2_DF_PIPELINE, SKYREELS_V2_DF_I2V_PIPELINE, SKYREELS_V2_DF_V2V_PIPELINE)
SKYREELS_V2_TRANSFORMER = "SkyReelsV2Transformer3DModel"
KIND, I2V_KIND, DF_KIND = "SkyReels-V2", "SkyReels-V2 image-to-video", "SkyReels-V2 diffusion forcing"
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
CLASSES = {"transformer": (SKYREELS_V2_TRANSFORMER,), "vae": ("AutoencoderKLWan",),
           "text_encoder": ("UMT5EncoderModel", "T5EncoderModel"),
           "scheduler": ("UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler")}
IMAGE_CLASSES = {"image_encoder": ("CLIPVisionModelWithProjection", "CLIPVisionModel"),
                 "image_processor": ("CLIPProcessor", "CLIPImageProcessor", "CLIPImageProcessorFast")}
SKYREELS_V2_GUIDANCE = 6.0  # SkyReelsV2Pipeline.__call__'s guidance_scale (diffusers' convention)
SKYREELS_V2_I2V_GUIDANCE = 5.0  # SkyReelsV2ImageToVideoPipeline.__call__'s
SKYREELS_V2_STEPS = 50  # both pipelines' num_inference_steps
SKYREELS_V2_FRAMES = 97  # their num_frames
SKYREELS_V2_HEIGHT, SKYREELS_V2_WIDTH = 544, 960  # their height, width
SKYREELS_V2_FPS = 24.0  # the frame rate their documentation's examples export at (export_to_video(..., fps=24))


@dataclass
class SkyReelsV2(Wan):
    """The loaded components of a ``SkyReelsV2Pipeline`` folder (:func:`load_skyreels_v2`): a Wan 2.1 folder's."""

    pipeline_name = SKYREELS_V2_PIPELINE
    prompt_module = "diffusers.pipelines.skyreels_v2.pipeline_skyreels_v2"


@dataclass
class SkyReelsV2I2V(WanI2V):
    """The loaded components of a ``SkyReelsV2ImageToVideoPipeline`` folder (:func:`load_skyreels_v2`): a Wan 2.1
    image-to-video folder's."""

    pipeline_name = SKYREELS_V2_I2V_PIPELINE
    prompt_module = "diffusers.pipelines.skyreels_v2.pipeline_skyreels_v2_i2v"


def check_skyreels_v2_folder(directory, pipelines=(SKYREELS_V2_PIPELINE, SKYREELS_V2_I2V_PIPELINE,
                                                   *FORCING_PIPELINES)) -> tuple:
    """(model_index dict, scheduler config) of a folder whose index names one of ``pipelines``, checked from its JSON
    alone (module docstring; a diffusion-forcing folder's: :mod:`.skyreels_v2_forcing`); a one-line DiffkitError for
    what diffkit does not drive."""
    from .chronoedit import check_image_to_video_configs
    from .flow_latents import check_part_configs
    from .pixart import check_classes, named_index
    from .wan import wan_configs, wan_scheduler_config
    directory = Path(directory)
    index = named_index(directory, pipelines, KIND)
    image, forcing = index["_class_name"] == SKYREELS_V2_I2V_PIPELINE, index["_class_name"] in FORCING_PIPELINES
    label = I2V_KIND if image else DF_KIND if forcing else KIND
    index, configs = wan_configs(directory, index["_class_name"], label, REQUIRED, CLASSES)
    vae = configs["vae"]
    if image:
        check_classes(directory, index, tuple(IMAGE_CLASSES), label, IMAGE_CLASSES)
        check_image_to_video_configs(directory, configs)
    z_dim, downsample = vae.get("z_dim", 16), list(vae.get("temperal_downsample", [False, True, True]))
    check_part_configs(directory, configs, (
        ("vae", "patch_size", None, None, "a Wan 2.1 VAE; a Wan 2.2 one is patched"),
        ("vae", "scale_factor_spatial", 8, 2 ** len(downsample), "the pipeline's spatial factor 2 ** "
                                                                 "len(temperal_downsample)"),
        ("vae", "scale_factor_temporal", 4, 2 ** sum(downsample), "the pipeline's temporal factor 2 ** "
                                                                  "sum(temperal_downsample)"),
        ("vae", "scale_factor_spatial", 8, 8, "the pipeline's latents of H / 8"),
        *((("transformer", key, default, allowed, why) for key, default, allowed, why in (
            ("in_channels", 16, z_dim, "the VAE's z_dim"), ("out_channels", 16, z_dim, "the VAE's z_dim"),
            ("patch_size", [1, 2, 2], [1, 2, 2], "sizes of 16"),
            ("image_dim", None, None, "a text-to-video transformer, without CLIP image states"))) if not image else ()),
        *((("transformer", "inject_sample_info", False, False, f"{label} pipelines pass the transformer no fps; "
                                                               f"{SKYREELS_V2_DF_PIPELINE}'s do"),
           ("transformer", "num_frame_per_block", 1, 1, "causal blocks are a diffusion-forcing transformer's"))
          if not forcing else ())))
    sched = wan_scheduler_config(directory)
    if forcing and sched.get("_class_name") != "UniPCMultistepScheduler":
        raise DiffkitError(f"{directory}'s scheduler is a {sched.get('_class_name')!r}; allowed: "
                           f"UniPCMultistepScheduler ({SKYREELS_V2_DF_PIPELINE}'s per-frame copies step at its whole "
                           f"timesteps)")
    return index, sched


def load_skyreels_v2(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                     progress: bool = True, lora=None):
    """Load a ``SkyReelsV2Pipeline`` (:class:`SkyReelsV2`), ``SkyReelsV2ImageToVideoPipeline``
    (:class:`SkyReelsV2I2V`, with its CLIP image encoder) or ``SkyReelsV2DiffusionForcingPipeline``
    (:class:`.skyreels_v2_forcing.SkyReelsV2DF`) folder, never downloading nor unpickling, checked first
    (:func:`check_skyreels_v2_folder`). ``lora``: LoRA files (paths or (path, scale) pairs) in the layouts
    ``SkyReelsV2LoraLoaderMixin`` loads (diffusers' copy of ``WanLoraLoaderMixin``'s reading, for the transformer
    alone: :func:`.chronoedit_lora.read_wan_loras`), read and checked first, fused into ``transformer`` as the
    pipeline's ``load_lora_weights`` + ``fuse_lora(lora_scale=scale)``."""
    from . import require
    from .chronoedit_lora import read_wan_loras
    from .sd_lora import merge_sd_loras
    from .wan import check_widths, load_clip, load_wan_parts
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_skyreels_v2_folder(directory)
    loras = read_wan_loras(lora, KIND, index["_class_name"]) if lora else []
    parts, schedule, device = load_wan_parts(directory, index, sched, diffusers.SkyReelsV2Transformer3DModel, device,
                                             dtype, progress)
    common = {**parts, "scheduler_config": sched, "schedule": schedule, "device": device, "dtype": dtype}
    widths = [(parts["transformer"].config.text_dim, parts["text_encoder"].config.d_model, "text_dim")]
    if index["_class_name"] == SKYREELS_V2_I2V_PIPELINE:
        encoder, processor = load_clip(directory, device, dtype, progress)
        model = SkyReelsV2I2V(**common, image_encoder=encoder, image_processor=processor)
        widths.append((model.transformer.config.image_dim, encoder.config.hidden_size, "image_dim"))
    elif index["_class_name"] in FORCING_PIPELINES:
        from .skyreels_v2_forcing import SkyReelsV2DF
        from .skyreels_v2_forcing_prefix import SkyReelsV2DFI2V, SkyReelsV2DFV2V
        model = {cls.pipeline_name: cls for cls in (SkyReelsV2DF, SkyReelsV2DFI2V, SkyReelsV2DFV2V)}[
            index["_class_name"]](**common)
    else:
        model = SkyReelsV2(**common)
    check_widths(directory, widths)
    merge_sd_loras(model, loras)
    return model


def pipeline_defaults(guidance_scale, convention: str, default: float, num_frames, height, width) -> dict:
    """The Wan loops' keywords with SkyReels-V2's defaults: ``guidance_scale`` None -> ``default`` in diffusers'
    convention (as the Wan loops read None), frames 97, 544 x 960."""
    if guidance_scale is None:
        guidance_scale, convention = default, "diffusers"
    return {"guidance_scale": guidance_scale, "convention": convention,
            "num_frames": SKYREELS_V2_FRAMES if num_frames is None else num_frames,
            "height": SKYREELS_V2_HEIGHT if height is None else height,
            "width": SKYREELS_V2_WIDTH if width is None else width}


def check_model(model, cls, function: str) -> None:
    """One line unless ``model`` is a loaded folder of class ``cls`` (``function`` named)."""
    if not isinstance(model, cls):
        raise DiffkitError(f"{function} takes a {cls.pipeline_name} folder; got {type(model).__name__} "
                           f"({getattr(model, 'pipeline_name', '?')})")


def text_to_video(model: SkyReelsV2, prompts: Union[str, Sequence[str]], *, guidance_scale: Optional[float] = None,
                  convention: str = "diffusers", num_frames: Optional[int] = None, height: Optional[int] = None,
                  width: Optional[int] = None, **options) -> torch.Tensor:
    """Videos (B, T, 3, H, W) of ``prompts`` as ``SkyReelsV2Pipeline`` (:func:`.wan.text_to_video` with its
    defaults: CFG s = 6 in diffusers' convention, 97 frames of 544 x 960; ``options``: its other keywords --
    negative_prompt, steps (50), sampler, seed, latents, output_range, return_latents, progress)."""
    from .wan import text_to_video as wan_text_to_video
    check_model(model, SkyReelsV2, "skyreels_v2.text_to_video")
    return wan_text_to_video(model, prompts, **pipeline_defaults(guidance_scale, convention, SKYREELS_V2_GUIDANCE,
                                                         num_frames, height, width), **options)


def image_to_video(model: SkyReelsV2I2V, images, prompts: Union[str, Sequence[str]], *,
                   guidance_scale: Optional[float] = None, convention: str = "diffusers",
                   num_frames: Optional[int] = None, height: Optional[int] = None, width: Optional[int] = None,
                   **options) -> torch.Tensor:
    """Videos (B, T, 3, H, W) starting at ``images`` from ``prompts`` as ``SkyReelsV2ImageToVideoPipeline``
    (:func:`.wan_i2v.image_to_video` with its defaults: CFG s = 5 in diffusers' convention, 97 frames of 544 x 960;
    ``options``: its other keywords -- negative_prompt, steps (50), sampler, seed, latents, last_images, output_range,
    return_latents, progress)."""
    from .wan_i2v import image_to_video as wan_image_to_video
    check_model(model, SkyReelsV2I2V, "skyreels_v2.image_to_video")
    return wan_image_to_video(model, images, prompts, **pipeline_defaults(guidance_scale, convention,
                                                                  SKYREELS_V2_I2V_GUIDANCE, num_frames, height,
                                                                  width), **options)


__all__ = ["SkyReelsV2", "SkyReelsV2I2V", "check_skyreels_v2_folder", "load_skyreels_v2", "text_to_video",
           "image_to_video", "SKYREELS_V2_PIPELINE", "SKYREELS_V2_I2V_PIPELINE", "SKYREELS_V2_FPS"]
