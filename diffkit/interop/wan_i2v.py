"""A Wan image-to-video diffusers folder (``WanImageToVideoPipeline``, diffusers 0.42.1): a video whose first frame
is the given image, from a prompt, with any diffkit sampler.

Wan 2.1 (Wan Team 2025, "Wan: Open and Advanced Large-Scale Video Generative Models", Sec. 4: image-to-video) is a
rectified-flow video transformer (Esser et al. 2024, Sec. 2, eq. 1: x_s = (1 - s) x_0 + s eps, velocity u = eps -
x_0) over the latents of its causal video VAE (8 x 8 pixels and 4 frames a latent, the first frame alone: F = (T - 1)
/ 4 + 1 latent frames). The folder's grid, prompts, transformer, Wan 2.2 A14B experts and decoding are Wan
text-to-video's (:mod:`.wan`: :class:`.wan.WanFolder`, :class:`.wan.WanNet`, :class:`.wan.TwoExperts`); the CLIP
image states and the condition are ChronoEdit's too (:mod:`.chronoedit`, this model fine-tuned as an image editor).
As ``WanImageToVideoPipeline.__call__``:

* the condition (``prepare_latents``): the image resized to height x width (PIL's Lanczos, x / 255 * 2 - 1) followed
  by num_frames - 1 black frames, encoded by the Wan VAE as one video (posterior mean), normalised (z - mean) / std,
  after a 4-channel mask that is 1 on the first latent frame: the network input is [z_t, mask, z_cond] (2 C + 4
  channels), its velocity z_t's (:meth:`.wan.WanFolder.condition`).
* prompts: ``prompt_clean`` (ftfy where installed, html unescaped twice, whitespace collapsed), UMT5's last states of
  512 tokens, zeroed past each prompt's tokens; the negative prompt (default "") the same.
* the image condition: CLIP's vision tower on the folder's ``CLIPImageProcessor`` of the original image, its
  penultimate hidden states, the transformer's ``encoder_hidden_states_image``.
* guidance: CFG u_u + s (u_c - u_u) (Ho & Salimans 2022, eq. 6, diffusers' convention) for s > 1, default 5.0; s <= 1
  one unguided call (a negative prompt refused).
* the grid and its step: the folder's scheduler after ``set_timesteps(steps)`` (default 50), its sigmas on
  ``NoiseSchedule.flow(T, shift)``, the sampler of its step (:func:`.hidream.folder_sampler`: UniPC with flow sigmas
  -> ``unipc``, FlowMatchEuler -> ``ddim``), UniPC's transformer called at its whole timesteps floor(s T).
* defaults: 81 frames (4 k + 1; the pipeline rounds other counts down, diffkit refuses them) of 480 x 832 (multiples
  of 16); the latents and the sampler's state in float32, the transformer's inputs in its own dtype.
* output: the Wan VAE's decoding x = D(z / (1 / std) + mean) of the final latents, (B, T, 3, H, W)
  (``output_type="pt"``'s frames, here in [-1, 1] or [0, 1]); ``return_latents``: z (B, C, F, h, w).

Wan 2.2 I2V-A14B folders (``boundary_ratio``): two experts and no image encoder, ``transformer`` at the timesteps t >=
boundary_ratio T and ``transformer_2`` below, each with its CFG scale (``guidance_scale_2``; :class:`.wan.TwoExperts`).
First-last-frame to video (``last_image``): the condition video ends at the last image and its mask is 1 there; a
Wan 2.1 transformer with ``pos_embed_seq_len`` (Wan2.1-FLF2V) reads CLIP's states of [image, last image].
Wan 2.2 TI2V-5B folders (``expand_timesteps``: a text-to-video transformer, the Wan 2.2 VAE, no image encoder; named
``WanImageToVideoPipeline``, or ``WanPipeline`` as Wan2.2-TI2V-5B-Diffusers, which the pipeline's ``from_pretrained``
loads): the image's normalised latents (encoded alone, posterior mean) the kept first latent frame, its tokens at
timestep 0 (:meth:`WanI2V.kept_first_frame`), no last image.

Unlike the pipeline (one image for every prompt), each video may have its own image. Refused in one line before any
weight is read (:func:`check_wan_i2v_folder`): another pipeline class, a missing component, parts of other classes, a
transformer whose channels are not 2 C + 4 / C or whose patches are not (1, 2, 2), a one-expert folder without CLIP
image states, a two-expert one with them, a Wan 2.2 VAE (but in TI2V-5B), ``expand_timesteps`` with two experts or
on an image-to-video transformer, a ``WanPipeline`` folder other than TI2V-5B's, a scheduler diffkit's samplers do
not compute.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from .wan import WAN_FPS, WAN_FRAMES, WAN_GUIDANCE, WAN_HEIGHT, WAN_STEPS, WAN_WIDTH, Wan

WAN_I2V_PIPELINE = "WanImageToVideoPipeline"
KIND = "Wan image-to-video"
WAN_I2V_GUIDANCE = WAN_GUIDANCE  # WanImageToVideoPipeline.__call__'s guidance_scale (diffusers' convention): 5.0
WAN_I2V_STEPS = WAN_STEPS  # its num_inference_steps: 50
WAN_I2V_FRAMES = WAN_FRAMES  # its num_frames: 81
WAN_I2V_HEIGHT, WAN_I2V_WIDTH = WAN_HEIGHT, WAN_WIDTH  # its height, width: 480 x 832
WAN_I2V_FPS = WAN_FPS  # the frame rate its documentation's example exports at (export_to_video(..., fps=16))


@dataclass
class WanI2V(Wan):
    """The loaded components of a ``WanImageToVideoPipeline`` folder (:func:`load_wan_i2v`): a Wan folder's
    (:class:`.wan.Wan`, a Wan 2.2 A14B folder's ``transformer_2`` and ``boundary_ratio`` included) and CLIP's
    ``image_encoder`` / ``image_processor`` (None in a two-expert folder)."""

    image_encoder: object = None
    image_processor: object = None

    pipeline_name = WAN_I2V_PIPELINE
    prompt_module = "diffusers.pipelines.wan.pipeline_wan_i2v"

    @property
    def first_last(self) -> bool:
        """A first-last-frame transformer (Wan2.1-FLF2V: ``pos_embed_seq_len``): CLIP states of two images a video."""
        return getattr(self.transformer.condition_embedder.image_embedder, "pos_embed", None) is not None

    def image_states(self, images: Sequence, last: Optional[Sequence] = None):
        """CLIP's states (:meth:`.wan.WanFolder.encode_images`), None without an image encoder (Wan 2.2); with
        ``last`` (a first-last-frame transformer) those of [image, last image] a video, (B, 2 N, d), as the pipeline's
        ``encode_image([image, last_image])`` (:class:`.wan.WanNet` hands the transformer (2 B, N, d))."""
        if self.image_encoder is None:
            return None
        if last is None:
            return self.encode_images(images)
        states = self.encode_images([image for pair in zip(images, last) for image in pair])
        return states.reshape(len(images), 2 * states.shape[1], states.shape[2])

    def kept_first_frame(self, denoiser, latents: torch.Tensor, pixels: torch.Tensor) -> tuple:
        """(z at s = 1 with latent frame 0 the images' latents, ``denoiser`` keeping that frame, the per-frame
        timestep mask (B, F), 0 on frame 0) of Wan 2.2 TI2V-5B's image-to-video (``expand_timesteps``): images (B, 3,
        H, W) in [-1, 1] each encoded alone as a one-frame video (posterior mean), normalised (z - mean) / std
        (``prepare_latents``); the loop's input (1 - m) z_cond + m z_t, its timesteps m t and the final (1 - m) z_cond
        + m z are the frame kept by :class:`~diffkit.editing.InpaintingDenoiser` (x_0 there the image's latents: the
        flow state stays z_cond) with ``frame_mask`` m to :class:`.wan.WanNet`."""
        from ..editing import InpaintingDenoiser
        latents = torch.cat([self.encode(pixels)[:, :, None].to(latents), latents[:, :, 1:]], dim=2)
        mask = torch.ones_like(latents[:, :1])
        mask[:, :, 0] = 0
        return latents, InpaintingDenoiser(denoiser, latents.clone(), mask), mask[:, 0, :, 0, 0]


def is_wan_i2v_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``WanImageToVideoPipeline``."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == WAN_I2V_PIPELINE


def check_wan_i2v_folder(directory) -> tuple:
    """(model_index dict, scheduler config) of a ``WanImageToVideoPipeline`` folder, checked from its JSON alone
    (module docstring): Wan 2.1's with its CLIP image encoder, or Wan 2.2 A14B's two experts (``boundary_ratio``,
    :func:`.wan.check_experts`; no image encoder), or Wan 2.2 TI2V-5B's (``expand_timesteps``; also a ``WanPipeline``
    folder of it, Wan2.2-TI2V-5B-Diffusers, which ``WanImageToVideoPipeline.from_pretrained`` loads); a one-line
    DiffkitError for what diffkit does not drive."""
    from ..errors import read_json_object
    from .chronoedit import CHRONOEDIT_CLASSES, check_image_to_video_configs
    from .pixart import check_classes
    from .wan import (REQUIRED, WAN_CLASSES, check_experts, check_text_to_video_configs, check_wan_folder,
                      is_wan_folder, wan_configs, wan_scheduler_config)
    directory = Path(directory)
    if is_wan_folder(directory):
        index, sched = check_wan_folder(directory)
        if not index.get("expand_timesteps") or index.get("boundary_ratio") is not None:
            raise DiffkitError(f"{directory} is a WanPipeline folder other than Wan 2.2 TI2V-5B's (expand_timesteps, "
                               f"one transformer): text-to-video only; image-to-video takes a {WAN_I2V_PIPELINE} "
                               f"folder")
        return index, sched
    index, configs = wan_configs(directory, WAN_I2V_PIPELINE, KIND, REQUIRED, WAN_CLASSES)
    expand, experts = index.get("expand_timesteps"), check_experts(directory, index)
    if expand not in (False, True, None) or expand and experts:
        raise DiffkitError(f"{directory}'s model_index.json has expand_timesteps={expand!r} with boundary_ratio="
                           f"{index.get('boundary_ratio')!r}; allowed: true (Wan 2.2 TI2V-5B: one transformer, no "
                           f"boundary_ratio) or false")
    if expand:  # TI2V-5B: a text-to-video transformer; the image is the kept first latent frame, no CLIP states
        check_text_to_video_configs(directory, configs)
        return index, wan_scheduler_config(directory)
    if experts:
        configs["transformer_2"] = read_json_object(directory / "transformer_2" / "config.json", "transformer_2 config")
    else:
        images = ("image_encoder", "image_processor")
        check_classes(directory, index, images, KIND, {part: CHRONOEDIT_CLASSES[part] for part in images})
    check_image_to_video_configs(directory, configs, ("transformer", "transformer_2")[:1 + experts], not experts)
    return index, wan_scheduler_config(directory)


def load_wan_i2v(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                 progress: bool = True, lora=None) -> WanI2V:
    """Load a ``WanImageToVideoPipeline`` folder (never downloads, never unpickles), checked first
    (:func:`check_wan_i2v_folder`), with a Wan 2.2 A14B folder's ``transformer_2``. ``lora``: LoRA files (paths or
    (path, scale) pairs) in the layouts ``WanLoraLoaderMixin`` loads (:func:`.chronoedit_lora.read_wan_loras`:
    diffusers / PEFT, Wan's ``diffusion_model.``, musubi's ``lora_unet_``), read and checked first, fused into
    ``transformer`` as ``load_lora_weights`` + ``fuse_lora(lora_scale=scale)`` (which adapt ``transformer`` alone by
    default)."""
    from .chronoedit_lora import read_wan_loras
    from .sd_lora import merge_sd_loras
    from .wan import check_widths, load_clip, load_second_expert, load_wan_parts
    from . import require
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_wan_i2v_folder(directory)
    loras = read_wan_loras(lora, KIND, WAN_I2V_PIPELINE) if lora else []
    parts, schedule, device = load_wan_parts(directory, index, sched, diffusers.WanTransformer3DModel, device, dtype,
                                             progress)
    second, ratio = load_second_expert(directory, index, device, dtype, progress)
    expand = bool(index.get("expand_timesteps"))
    clip = second is None and not expand  # Wan 2.1's CLIP image states
    encoder, processor = load_clip(directory, device, dtype, progress) if clip else (None, None)
    model = WanI2V(**parts, scheduler_config=sched, schedule=schedule, device=device, dtype=dtype,
                   transformer_2=second, boundary_ratio=ratio, expand_timesteps=expand, image_encoder=encoder,
                   image_processor=processor)
    widths = [(t.config.text_dim, model.text_encoder.config.d_model, "text_dim")
              for t in (model.transformer, second) if t is not None]
    if encoder is not None:
        widths.append((model.transformer.config.image_dim, encoder.config.hidden_size, "image_dim"))
    check_widths(directory, widths)
    merge_sd_loras(model, loras)
    return model


def check_last_images(model: WanI2V, last_images, count: int, frames: int):
    """``last_images`` as ``count`` PIL images (None where None); one line where the folder cannot take them (a
    Wan 2.1 transformer of one image's CLIP states: the pipeline fails there) or must (a first-last-frame one), for
    fewer than 5 frames, or for a count other than 1 or ``count``."""
    from .qwen_image_edit import _pil_images
    if model.expand_timesteps and last_images is not None:
        raise DiffkitError("last_images is not allowed for a Wan 2.2 TI2V-5B folder (expand_timesteps): its pipeline "
                           "keeps the first frame alone and ignores last_image")
    if last_images is None:
        if model.image_encoder is not None and model.first_last:
            raise DiffkitError("this folder's transformer is a first-last-frame one (pos_embed_seq_len: CLIP states of "
                               "two images a video); give last_images (--last-image PNG)")
        return None
    if model.image_encoder is not None and not model.first_last:
        raise DiffkitError("last_images is not allowed for this folder: its transformer takes one image's CLIP "
                           "states (no pos_embed_seq_len); first-last-frame to video needs a Wan2.1-FLF2V or a Wan "
                           "2.2 folder")
    if frames < 5:
        raise DiffkitError(f"num_frames={frames} is not allowed with last_images; give 4 k + 1 >= 5 frames")
    last = _pil_images(last_images)
    if len(last) not in (1, count):
        raise DiffkitError(f"{len(last)} last images for {count} videos; give one, or one per video")
    return last * count if len(last) == 1 else last


def image_to_video(model: WanI2V, images, prompts: Union[str, Sequence[str]], *, negative_prompt=None,
                   guidance_scale: Optional[float] = None, guidance_scale_2: Optional[float] = None,
                   convention: str = "diffusers", steps: Optional[int] = None, sampler: Optional[str] = None,
                   num_frames: Optional[int] = None, height: Optional[int] = None, width: Optional[int] = None,
                   seed: Optional[int] = 0, latents: Optional[torch.Tensor] = None, output_range: str = "-1,1",
                   return_latents: bool = False, progress: bool = False, last_images=None,
                   **options) -> torch.Tensor:
    """Videos (B, T, 3, H, W) starting at ``images`` (PIL images or (B, 3, H, W) in [-1, 1]; one for every prompt, or
    one per video) from ``prompts`` (one, or one per video) as ``WanImageToVideoPipeline`` (module docstring).

    guidance_scale: in ``convention`` (default s = 5, diffusers'), against ``negative_prompt`` (default "");
    guidance_scale_2: a two-expert folder's low-noise expert's (default guidance_scale; :meth:`.wan.Wan
    .guided_denoiser`). steps: the scheduler's (default 50); sampler: None for the scheduler's own step, or any diffkit
    sampler on its grid. num_frames: 4 k + 1 (default 81); height / width: multiples of 16 (default 480 x 832), each
    image resized to it (Lanczos). latents: z at s = 1 (B, C, F, h, w) (the pipeline's ``latents``), default N(0, I)
    from ``seed`` + i for video i. last_images: each video's last frame (PIL images or (B, 3, H, W); one, or one per
    video), the pipeline's ``last_image`` (first-last-frame to video: on a Wan 2.2 folder, or a first-last-frame Wan
    2.1 one, :func:`check_last_images`). Returns the videos in ``output_range``, or with ``return_latents`` the final
    latents."""
    from PIL import Image

    from ..errors import check_choice
    from .qwen_image_edit import _pil_images, _pixels
    from .stable_diffusion import OUTPUT_RANGES, negative_prompts, prompt_list
    from .wan import check_frames, pipeline_guidance
    check_choice("output_range", output_range, OUTPUT_RANGES)
    frames = check_frames(num_frames)
    scale, convention, cfg = pipeline_guidance(guidance_scale, convention, negative_prompt, WAN_I2V_GUIDANCE)
    pil, prompts = _pil_images(images), prompt_list(prompts)
    count = max(len(pil), len(prompts))
    for what, given in (("images", pil), ("prompts", prompts)):
        if len(given) not in (1, count):
            raise DiffkitError(f"{len(given)} {what} for {count} videos; give one, or one per video")
    pil, prompts = (pil * count if len(pil) == 1 else pil), (prompts * count if len(prompts) == 1 else prompts)
    last = check_last_images(model, last_images, count, frames)
    height, width = WAN_I2V_HEIGHT if height is None else height, WAN_I2V_WIDTH if width is None else width
    model.check_size(height, width)
    shape = model.latent_video_shape(count, frames, height, width)
    steps, grid, sampler, options, latents = model.start_latents(steps, sampler, options, shape, latents, seed)

    def resized(batch):
        return _pixels([image.resize((width, height), resample=Image.LANCZOS) for image in batch])
    cond = {"context": model.encode_prompts(prompts)}
    null = model.encode_prompts(negative_prompts(negative_prompt, count)) if cfg else None
    denoiser = model.guided_denoiser(grid, steps, scale, convention, null, guidance_scale_2)
    if model.expand_timesteps:  # Wan 2.2 TI2V-5B: the image's latents the kept first latent frame, at timestep 0
        latents, denoiser, cond["frame_mask"] = model.kept_first_frame(denoiser, latents, resized(pil))
    else:
        cond["condition"] = model.condition(resized(pil), frames, None if last is None else resized(last))
        image = model.image_states(pil, last)
        if image is not None:
            cond["image"] = image
    z = model.sample_latents(denoiser, cond, grid, sampler, latents, seed, progress, options)
    return model.output_videos(z, output_range, return_latents)


__all__ = ["WanI2V", "load_wan_i2v", "is_wan_i2v_folder", "check_wan_i2v_folder", "check_last_images",
           "image_to_video", "WAN_I2V_PIPELINE", "WAN_I2V_GUIDANCE", "WAN_I2V_STEPS", "WAN_I2V_FRAMES", "WAN_I2V_FPS"]
