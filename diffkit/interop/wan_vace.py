"""A Wan VACE diffusers folder (``WanVACEPipeline``, diffusers 0.42.1): all-in-one video creation and editing from a
prompt, a control video, a mask video and reference images, with any diffkit sampler.

VACE (Jiang et al. 2025, "VACE: All-in-One Video Creation and Editing", Sec. 3) adds to Wan 2.1's rectified-flow
video transformer (:mod:`.wan`; Esser et al. 2024, eq. 1: x_s = (1 - s) x_0 + s eps, velocity u = eps - x_0) a
context branch (``WanVACETransformer3DModel``'s ``vace_blocks``) that reads the "context frames" and adds its hints,
times ``conditioning_scale``, after the transformer blocks listed in ``vace_layers``. As ``WanVACEPipeline.__call__``:

* the context (``preprocess_conditions``, ``prepare_video_latents``, ``prepare_masks``; Sec. 3.2, "concept
  decoupling"): the control video V (T frames in [-1, 1]; without one, T black frames) and the mask M = clamp((m + 1)
  / 2, 0, 1) of the mask video m (white = regenerate; without one, all ones) give the inactive frames V (1 - [M >
  0.5]) and the reactive frames V [M > 0.5], each through the Wan VAE (posterior mean), normalised (z - mean) / std:
  [z_inactive, z_reactive] (2 C channels), then M's first channel folded 8 x 8 into 64 channels at the latent size,
  resampled to the latent frames (nearest-exact: latent frame j reads pixel frame floor((j + 1/2) T / F)): 2 C + 64
  channels (``vace_in_channels``).
* reference images (Sec. 3.2, "context reference"): each resized to multiples of 8 (PIL Lanczos), scaled
  (bilinear) to fit height x width and centred on a white canvas, encoded as one frame, [z_ref, 0]; the references are
  prepended to the context frames (the last one given first, as the pipeline's loop does), zero mask frames before
  the mask, and the latents get one frame more per reference: z (B, C, n + F, h, w), F = (T - 1) / 4 + 1; the
  reference frames are dropped before decoding.
* the network: the transformer with ``control_hidden_states`` = the context and ``control_hidden_states_scale`` =
  ``conditioning_scale`` (one number for every VACE layer, or one each), diffkit's :class:`.wan.WanNet` over
  :class:`VACEControlled` (the context travels as WanNet's channel-concatenated ``condition`` and is split off again).
* prompts, guidance, the grid and its step, Wan 2.2 A14B's two experts (``transformer_2`` with ``boundary_ratio``,
  ``guidance_scale_2``), the float32 latents and the VAE decoding: Wan text-to-video's (:mod:`.wan`,
  :class:`.wan.TwoExperts`).

Unlike the pipeline (one prompt and one video a call), several videos run in one batch, each with its own prompt and
control video, the mask and the reference images shared; video i's noise is drawn from seed + i (the pipeline's
generator of seed for the one video). The output has the control video's size and frame count (the pipeline would
resize a larger video, pad a shorter one and fail on a smaller one). Refused in one line before any weight is read
(:func:`check_wan_vace_folder`, :func:`check_context`): another pipeline class, a missing component (a folder of
``transformer_2`` alone too), parts of other classes, a transformer whose channels are not C or whose
``vace_in_channels`` is not 2 C + 64, patches other than (1, 2, 2), a Wan 2.2 VAE, a ``boundary_ratio`` outside (0, 1),
a scheduler diffkit's samplers do not compute; a mask without a control video, videos or masks of other frame counts
or sizes, a ``conditioning_scale`` of another length than ``vace_layers``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from .wan import WAN_FPS, WAN_GUIDANCE, WAN_HEIGHT, WAN_STEPS, WAN_WIDTH, Wan

WAN_VACE_PIPELINE = "WanVACEPipeline"
VACE_TRANSFORMER = "WanVACETransformer3DModel"
KIND = "Wan VACE"
WAN_VACE_GUIDANCE = WAN_GUIDANCE  # WanVACEPipeline.__call__'s guidance_scale (diffusers' convention): 5.0
WAN_VACE_STEPS = WAN_STEPS  # its num_inference_steps: 50
WAN_VACE_FPS = WAN_FPS  # its documentation's export_to_video(output, fps=16)
MASK_FOLD = 8  # prepare_masks: the mask's 8 x 8 pixels per latent pixel as 64 channels (the VAE's spatial factor)


class VACEControlled(torch.nn.Module):
    """A ``WanVACETransformer3DModel`` as a channel-concatenated network for :class:`.wan.WanNet`: its
    ``hidden_states`` [z, context] are split at ``in_channels``, the context handed over as ``control_hidden_states``
    with ``control_hidden_states_scale`` = ``scale`` (one per VACE layer; None: the transformer's default, 1 each), as
    the pipeline's loop calls it."""

    def __init__(self, transformer, scale: torch.Tensor):
        super().__init__()
        self.transformer, self.scale = transformer, scale

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def forward(self, hidden_states: torch.Tensor, **inputs):
        channels = self.transformer.config.in_channels
        scale = None if self.scale is None else self.scale.to(hidden_states.device, hidden_states.dtype)  # None: 1
        return self.transformer(hidden_states=hidden_states[:, :channels],
                                control_hidden_states=hidden_states[:, channels:],
                                control_hidden_states_scale=scale, **inputs)


@dataclass
class WanVACE(Wan):
    """The loaded components of a ``WanVACEPipeline`` folder (:func:`load_wan_vace`): a Wan folder's (:class:`.wan.Wan`,
    a Wan 2.2 A14B folder's ``transformer_2`` and ``boundary_ratio`` included) whose transformers are VACE ones;
    ``control_scale``: the per-layer ``conditioning_scale`` of a run (:func:`vace_to_video` sets it on a copy)."""

    control_scale: Optional[torch.Tensor] = None

    pipeline_name = WAN_VACE_PIPELINE
    prompt_module = "diffusers.pipelines.wan.pipeline_wan_vace"

    def denoiser(self, transformer=None):
        """Wan's flow-prediction Denoiser (:meth:`.wan.Wan.denoiser`) of ``transformer`` (default the folder's) seen
        through :class:`VACEControlled`: cond ``condition`` is the context."""
        transformer = self.transformer if transformer is None else transformer
        denoiser = super().denoiser(VACEControlled(transformer, self.control_scale))
        denoiser.model = transformer
        return denoiser

    def layer_scales(self, conditioning_scale) -> torch.Tensor:
        """``conditioning_scale`` (a number, or one per VACE layer) as the pipeline's tensor of one per layer."""
        vace_layers = list(self.transformer.config.vace_layers)
        layers = len(vace_layers)
        scales = torch.as_tensor(conditioning_scale, dtype=torch.float64).reshape(-1)
        if scales.numel() == 1:
            scales = scales.expand(layers)
        if scales.numel() != layers or not bool(torch.isfinite(scales).all()):
            raise DiffkitError(f"conditioning_scale={conditioning_scale!r} is not allowed; give one finite number or "
                               f"{layers} (one per VACE layer, vace_layers={vace_layers})")
        return scales.to(torch.float32)

    def normalised_latents(self, video: torch.Tensor) -> torch.Tensor:
        """(E(x) - mean) / std (B, C, F, h, w) of videos (B, 3, T, H, W) in [-1, 1] (posterior mean), float32."""
        from .stable_diffusion import vae_latents
        z = vae_latents(self.vae, video, self.device).float()
        mean, std = (s[:, :, None] for s in self._stats(z))
        return (z - mean) / std

    def context(self, videos: torch.Tensor, masks: torch.Tensor, references: Optional[torch.Tensor]) -> torch.Tensor:
        """The context frames (B, 2 C + 64, n + F, h, w) of control videos and masks (B, 3, T, H, W), the masks in
        [0, 1], and ``references`` (n, 3, H, W) in [-1, 1] or None (module docstring)."""
        binary = (masks > 0.5).to(videos.dtype)
        inactive, reactive = (self.normalised_latents(videos * keep) for keep in (1 - binary, binary))
        folded = self.folded_mask(masks[:, 0], inactive.shape[2])
        latents = torch.cat([inactive, reactive], dim=1)
        if references is not None:
            z = self.normalised_latents(references.flip(0)[:, :, None])[:, :, 0]  # the last reference first
            z = torch.cat([z, torch.zeros_like(z)], dim=1).transpose(0, 1)  # (2 C, n, h, w)
            latents = torch.cat([z[None].expand(len(videos), -1, -1, -1, -1), latents], dim=2)
            folded = torch.cat([folded.new_zeros(*folded.shape[:2], len(references), *folded.shape[3:]), folded], 2)
        return torch.cat([latents, folded.to(latents)], dim=1)

    def folded_mask(self, masks: torch.Tensor, frames: int) -> torch.Tensor:
        """(B, 64, F, h, w) of masks (B, T, H, W): each 8 x 8 pixel block's values as channels (row-major within the
        block), the T frames resampled to F by nearest-exact (``prepare_masks``)."""
        b, t, height, width = masks.shape
        f = MASK_FOLD
        blocks = masks.reshape(b, t, height // f, f, width // f, f).permute(0, 3, 5, 1, 2, 4)
        blocks = blocks.reshape(b, f * f, t, height // f, width // f)
        return torch.nn.functional.interpolate(blocks, size=(frames, height // f, width // f), mode="nearest-exact")


def reference_canvas(image, height: int, width: int, factor: int = MASK_FOLD) -> torch.Tensor:
    """(3, height, width) in [-1, 1] of a PIL reference image as ``preprocess_conditions`` places it: resized to its
    size rounded down to multiples of ``factor`` (PIL Lanczos, x / 255 * 2 - 1), scaled by min(height / h, width / w)
    (bilinear, sizes truncated) and centred on a white canvas."""
    from PIL import Image

    from .qwen_image_edit import _pixels
    h, w = image.height - image.height % factor, image.width - image.width % factor
    if h <= 0 or w <= 0:
        raise DiffkitError(f"a reference image of {image.width}x{image.height} is not allowed; give one of at least "
                           f"{factor}x{factor} pixels")
    pixels = _pixels([image.convert("RGB").resize((w, h), resample=Image.LANCZOS)])
    scale = min(height / h, width / w)
    new_h, new_w = int(h * scale), int(w * scale)
    pixels = torch.nn.functional.interpolate(pixels, size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
    canvas = torch.ones(3, height, width)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[:, top:top + new_h, left:left + new_w] = pixels
    return canvas


def is_wan_vace_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``WanVACEPipeline``."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == WAN_VACE_PIPELINE


def check_wan_vace_folder(directory) -> tuple:
    """(model_index dict, scheduler config) of a ``WanVACEPipeline`` folder, checked from its JSON alone (module
    docstring); a one-line DiffkitError for what diffkit does not drive."""
    from ..errors import read_json_object
    from .flow_latents import check_part_configs
    from .wan import REQUIRED, WAN_CLASSES, check_experts, wan_configs, wan_scheduler_config
    directory = Path(directory)
    classes = {**WAN_CLASSES, "transformer": (VACE_TRANSFORMER,)}
    index, configs = wan_configs(directory, WAN_VACE_PIPELINE, KIND, REQUIRED, classes)
    experts = check_experts(directory, index, VACE_TRANSFORMER)
    if experts:
        configs["transformer_2"] = read_json_object(directory / "transformer_2" / "config.json", "transformer_2 config")
    z_dim = configs["vae"].get("z_dim", 16)
    check_part_configs(directory, configs, (
        ("vae", "patch_size", None, None, "a Wan 2.1 VAE: the pipeline's factor 8"),
        *((part, key, default, allowed, why) for part in ("transformer", "transformer_2")[:1 + experts]
          for key, default, allowed, why in (
              ("in_channels", 16, z_dim, "the VAE's z_dim"), ("out_channels", 16, z_dim, "the VAE's z_dim"),
              ("patch_size", [1, 2, 2], [1, 2, 2], "sizes of 16"),
              ("vace_in_channels", 96, 2 * z_dim + MASK_FOLD ** 2, "the context: 2 z_dim latents and the 8 x 8 mask"),
              ("image_dim", None, None, "a text-to-video transformer, without CLIP image states")))))
    return index, wan_scheduler_config(directory)


def load_wan_vace(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                  progress: bool = True, lora=None) -> WanVACE:
    """Load a ``WanVACEPipeline`` folder (never downloads, never unpickles), checked first
    (:func:`check_wan_vace_folder`), with a Wan 2.2 A14B folder's ``transformer_2``. ``lora``: LoRA files (paths or
    (path, scale) pairs) in the layouts ``WanLoraLoaderMixin`` loads (:func:`.chronoedit_lora.read_wan_loras`), read
    and checked first, fused into ``transformer`` (its VACE blocks too) as the pipeline's ``load_lora_weights`` +
    ``fuse_lora(lora_scale=scale)`` (``transformer_2`` left alone, as without ``load_into_transformer_2``)."""
    from . import require
    from .chronoedit_lora import read_wan_loras
    from .sd_lora import merge_sd_loras
    from .wan import check_widths, load_second_expert, load_wan_parts
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_wan_vace_folder(directory)
    loras = read_wan_loras(lora, KIND, WAN_VACE_PIPELINE) if lora else []
    parts, schedule, device = load_wan_parts(directory, index, sched, diffusers.WanVACETransformer3DModel, device,
                                             dtype, progress)
    second, ratio = load_second_expert(directory, index, device, dtype, progress, VACE_TRANSFORMER)
    model = WanVACE(**parts, scheduler_config=sched, schedule=schedule, device=device, dtype=dtype,
                    transformer_2=second, boundary_ratio=ratio)
    check_widths(directory, [(t.config.text_dim, model.text_encoder.config.d_model, "text_dim")
                             for t in (model.transformer, second) if t is not None])
    merge_sd_loras(model, loras)
    return model


def check_context(videos, masks, num_frames, height, width) -> tuple:
    """(frames, height, width) of a run: the control videos' (T, 3, H, W) where given (``num_frames``, ``height``,
    ``width`` None or equal; T = 4 k + 1, sizes multiples of 16 checked by the caller), else the arguments (default
    81 frames of 480 x 832); one line for a mask without videos, or videos and masks of several frame counts or
    sizes."""
    from .wan import check_frames
    if videos is None:
        if masks is not None:
            raise DiffkitError("a mask without a control video is not allowed (the pipeline's check_inputs); give "
                               "videos too")
        return (check_frames(num_frames), WAN_HEIGHT if height is None else height,
                WAN_WIDTH if width is None else width)
    shapes = sorted({tuple(v.shape) for v in list(videos) + list(masks if masks is not None else [])})
    if len(shapes) > 1:
        raise DiffkitError(f"control videos and masks of shapes {shapes} (frames, channels, height, width) are not "
                           f"allowed; give them one frame count and size (the output's)")
    frames, _, video_h, video_w = shapes[0]
    for name, given, have in (("num_frames", num_frames, frames), ("height", height, video_h),
                              ("width", width, video_w)):
        if given is not None and given != have:
            raise DiffkitError(f"{name}={given} is not allowed with control videos of {frames} frames of "
                               f"{video_w}x{video_h}; the output has the control video's ({have}; leave it out)")
    return check_frames(frames), video_h, video_w


def _video_batch(videos, count: int, what: str) -> Optional[list]:
    """``videos`` (one (T, C, H, W) tensor, or a list of one or ``count``) as a list of ``count``, or None."""
    if videos is None:
        return None
    videos = [videos] if isinstance(videos, torch.Tensor) else list(videos)
    if len(videos) not in (1, count) or not all(isinstance(v, torch.Tensor) and v.ndim == 4 and v.shape[1] == 3
                                                for v in videos):
        raise DiffkitError(f"{what} must be one (frames, 3, height, width) tensor in [-1, 1], or a list of one or "
                           f"{count}; got {len(videos)} of shapes {[tuple(getattr(v, 'shape', ())) for v in videos]}")
    return videos * count if len(videos) == 1 else videos


def vace_to_video(model: WanVACE, prompts: Union[str, Sequence[str]], *, videos=None, mask=None,
                  reference_images=None, conditioning_scale=1.0, negative_prompt=None,
                  guidance_scale: Optional[float] = None, guidance_scale_2: Optional[float] = None,
                  convention: str = "diffusers", steps: Optional[int] = None, sampler: Optional[str] = None,
                  num_frames: Optional[int] = None, height: Optional[int] = None, width: Optional[int] = None,
                  seed: Optional[int] = 0, latents: Optional[torch.Tensor] = None, output_range: str = "-1,1",
                  return_latents: bool = False, progress: bool = False, **options) -> torch.Tensor:
    """Videos (B, T, 3, H, W) of ``prompts`` (one, or one per video) as ``WanVACEPipeline`` (module docstring).

    videos: the control videos (T, 3, H, W) in [-1, 1] (one for every prompt, or one per video; the pipeline's
    ``video``), setting the output's frames and size; mask: a mask video (T, 3, H, W) in [-1, 1] for every video
    (white = regenerate, black = keep; the pipeline's ``mask``), with ``videos`` only; reference_images: PIL images
    for every video (the pipeline's ``reference_images``); conditioning_scale: one number or one per VACE layer
    (default 1). Without videos: num_frames (default 81, 4 k + 1) of height x width (default 480 x 832, multiples of
    16). guidance_scale, guidance_scale_2, steps, sampler: as :func:`.wan.text_to_video`. latents: z at s = 1 (B, C,
    n + F, h, w), default N(0, I) from seed + i for video i. Returns the videos in ``output_range``, or with
    ``return_latents`` the final latents, the n reference frames first (the pipeline's ``output_type="latent"``)."""
    from ..errors import check_choice
    from .qwen_image_edit import _pil_images
    from .stable_diffusion import OUTPUT_RANGES, negative_prompts, prompt_list
    from .wan import pipeline_guidance
    check_choice("output_range", output_range, OUTPUT_RANGES)
    prompts = prompt_list(prompts)
    count = max(len(prompts), 1 if videos is None or isinstance(videos, torch.Tensor) else len(videos))
    if len(prompts) not in (1, count):
        raise DiffkitError(f"{len(prompts)} prompts for {count} videos; give one, or one per video")
    prompts = prompts * count if len(prompts) == 1 else prompts
    videos, masks = _video_batch(videos, count, "videos"), _video_batch(mask, 1, "mask")
    frames, height, width = check_context(videos, masks, num_frames, height, width)
    model.check_size(height, width)
    scale, convention, cfg = pipeline_guidance(guidance_scale, convention, negative_prompt, WAN_VACE_GUIDANCE)
    run = dataclasses.replace(model, control_scale=model.layer_scales(conditioning_scale))
    references = None if reference_images is None else _pil_images(reference_images)
    n = 0 if references is None else len(references)
    shape = model.latent_video_shape(count, frames + n * model.temporal_factor, height, width)
    steps, grid, sampler, options, latents = model.start_latents(steps, sampler, options, shape, latents, seed)
    pixels = torch.zeros(count, 3, frames, height, width) if videos is None else torch.stack(videos).transpose(1, 2)
    masks = torch.ones_like(pixels) if masks is None else ((masks[0].transpose(0, 1)[None] + 1) / 2).clamp(0, 1)
    canvases = None if references is None else torch.stack([reference_canvas(r, height, width) for r in references])
    cond = {"context": model.encode_prompts(prompts),
            "condition": run.context(pixels.to(model.device), masks.expand_as(pixels).to(model.device),
                                     None if canvases is None else canvases.to(model.device))}
    null = model.encode_prompts(negative_prompts(negative_prompt, count)) if cfg else None
    denoiser = run.guided_denoiser(grid, steps, scale, convention, null, guidance_scale_2)
    z = model.sample_latents(denoiser, cond, grid, sampler, latents, seed, progress, options)
    return z if return_latents else model.output_videos(z[:, :, n:], output_range, False)


__all__ = ["WanVACE", "VACEControlled", "load_wan_vace", "is_wan_vace_folder", "check_wan_vace_folder",
           "check_context", "reference_canvas", "vace_to_video", "WAN_VACE_PIPELINE", "WAN_VACE_GUIDANCE",
           "WAN_VACE_STEPS", "WAN_VACE_FPS"]
