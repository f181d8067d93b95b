"""A HunyuanVideo FramePack diffusers folder (``HunyuanVideoFramepackPipeline``, diffusers 0.42.1): image-to-video by
next-frame-section prediction, each section sampled with any diffkit sampler.

FramePack (Zhang & Agrawala 2025, "Packing Input Frame Context in Next-Frame Prediction Models for Video
Generation") fine-tunes HunyuanVideo (:mod:`.hunyuan_video`) to generate a video window by window: each section is an
ordinary rectified-flow sampling run on a window of ``latent_window_size`` latent frames, the transformer
(``HunyuanVideoFramepackTransformer3DModel``) reading beside the noisy window the clean latents packed at three rates
(Sec. 3: 1 x, 2 x and 4 x patchified, ``history_sizes`` 1, 2 and 16 frames) with their own RoPE frame indices, and
the image's SigLIP states before the text tokens. As ``HunyuanVideoFramepackPipeline.__call__``:

* prompts, the embedded guidance (default 6.0), true CFG and the grid: text-to-video's
  (:func:`.hunyuan_video.text_to_video`; the grid the same for every section, the scheduler's ``mu`` unused by a
  fixed-shift scheduler). The image: resized to height x width (Lanczos), x / 255 * 2 - 1; SigLIP's
  ``last_hidden_state`` of (x + 1) / 2 through the folder's feature extractor (``encode_image``); z_img a **draw**
  from the VAE posterior of the image as a one-frame video times ``scaling_factor`` from video i's generator (seed +
  i), then the last image's the same way, then each section's noise (B, C, W, h, w) from it.
* ``sampling_type="inverted_anti_drifting"`` (the default; Sec. 3.3, anti-drifting in inverted order): sections
  generated from the video's end backwards, section k at frame padding p_k W (p = S - 1, ..., 0; 3, 2, ..., 2, 1, 0
  for S > 4 sections), RoPE indices [prefix 0 | padding | window | 1 x | 2 x | 4 x]; the clean 1 x latents [z_img,
  the first latent frame generated so far] (the last image's latents instead in the first section, where given), the
  2 x and 4 x the next 2 and 16 frames (zeros before any). After the last section z_img is prepended.
* ``sampling_type="vanilla"``: forwards, RoPE indices [prefix 0 | 4 x | 2 x | 1 x | window], the history
  (16 + 2 + 1 zero frames, then z_img) read from its end; no last image.
* sections: S = max(1, ceil(num_frames / ((W - 1) 4 + 1))); ``num_frames`` sets S only (the pipeline's), the video
  has S W (+ 1) latent frames. Latents (``output_type="latent"``, its last entry): the whole generated history.
  Frames (``output_type="pt"``): the first section's history decoded whole, each next one's 2 W (2 W + 1 in the
  inverted last) newest latent frames decoded and cross-faded over (W - 1) 4 + 1 frames with weights linspace(1, 0)
  (``_soft_append``), the result cut to 4 k + 1 frames.

Refused in one line before any weight is read (:func:`check_framepack_folder`, :func:`check_framepack_request`):
another pipeline class, a missing component or one of another class, a transformer with an ``image_condition_type``,
without ``has_clean_x_embedder`` / ``has_image_proj`` or whose channels are not the VAE's, a scheduler
text-to-video refuses (``use_dynamic_shifting`` included); an unknown ``sampling_type``, a ``latent_window_size``
that is no positive integer, a last image with ``vanilla``. No LoRA files (not wired here).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from . import model_dtype, require
from .hunyuan_video import HUNYUAN_VIDEO_CLASSES, MAX_SEQUENCE_LENGTH, REQUIRED, HunyuanVideo, HunyuanVideoNet

FRAMEPACK_PIPELINE = "HunyuanVideoFramepackPipeline"
KIND = "HunyuanVideo FramePack"
FRAMEPACK_REQUIRED = REQUIRED + ("image_encoder", "feature_extractor")
FRAMEPACK_CLASSES = {**HUNYUAN_VIDEO_CLASSES, "transformer": ("HunyuanVideoFramepackTransformer3DModel",),
                     "image_encoder": ("SiglipVisionModel",),
                     "feature_extractor": ("SiglipImageProcessor", "SiglipImageProcessorPil",
                                           "SiglipImageProcessorFast")}  # (Pil: transformers' without torchvision)
SAMPLING_TYPES = ("inverted_anti_drifting", "vanilla")  # FramepackSamplingType
HISTORY_SIZES = (1, 2, 16)  # the clean 1 x, 2 x, 4 x latent frames (the inverted order's; vanilla's reversed)
LATENT_WINDOW = 9  # __call__'s latent_window_size


class FramepackNet(HunyuanVideoNet):
    """``net(z, t, context, mask, pooled, image_embeds, clean, history_2x, history_4x, indices)``: a
    ``HunyuanVideoFramepackTransformer3DModel`` on a window z (B, C, W, h, w) beside the clean latents ``clean`` /
    ``history_2x`` / ``history_4x`` (B, C, n, h, w) and SigLIP states ``image_embeds``; ``indices``: the RoPE frame
    indices (window, clean, 2 x, 4 x), a tuple (one layout for the batch)."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, mask: torch.Tensor = None,
                pooled: torch.Tensor = None, image_embeds: torch.Tensor = None, clean: torch.Tensor = None,
                history_2x: torch.Tensor = None, history_4x: torch.Tensor = None, indices: tuple = None):
        if any(v is None for v in (context, mask, pooled, image_embeds, clean, history_2x, history_4x, indices)):
            raise DiffkitError("a FramePack transformer needs cond {'context', 'mask', 'pooled', 'image_embeds', "
                               "'clean', 'history_2x', 'history_4x', 'indices'} (hunyuan_framepack.image_to_video)")
        dtype, b = model_dtype(self.model), x.shape[0]
        timestep = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(b)
        guidance = None if self.guidance is None else \
            torch.full((b,), self.guidance, dtype=dtype, device=x.device) * 1000.0
        window, clean_at, at_2x, at_4x = (i.to(x.device) for i in indices)
        return self.model(hidden_states=x.to(dtype), timestep=timestep,
                          encoder_hidden_states=context.to(dtype).expand(b, -1, -1),
                          encoder_attention_mask=mask.to(dtype).expand(b, -1),
                          pooled_projections=pooled.to(dtype).expand(b, -1), guidance=guidance,
                          image_embeds=image_embeds.to(dtype), indices_latents=window,
                          latents_clean=clean.to(dtype), indices_latents_clean=clean_at,
                          latents_history_2x=history_2x.to(dtype), indices_latents_history_2x=at_2x,
                          latents_history_4x=history_4x.to(dtype), indices_latents_history_4x=at_4x,
                          return_dict=False)[0].to(x.dtype)


@dataclass
class HunyuanFramepack(HunyuanVideo):
    """The loaded components of a ``HunyuanVideoFramepackPipeline`` folder (text-to-video's, its SigLIP
    ``image_encoder`` and ``feature_extractor``; :func:`load_hunyuan_framepack`)."""

    image_encoder: object = None
    feature_extractor: object = None

    def network(self, guidance: Optional[float]) -> torch.nn.Module:
        """:class:`FramepackNet`."""
        return FramepackNet(self.transformer, guidance)

    def image_embeds(self, pixels: torch.Tensor) -> torch.Tensor:
        """SigLIP's ``last_hidden_state`` (B, N, d) of pixels (B, 3, H, W) in [-1, 1], in the transformer's dtype:
        (x + 1) / 2 through the feature extractor without rescaling (``encode_image``)."""
        features = self.feature_extractor(images=(pixels + 1) / 2, return_tensors="pt", do_rescale=False)
        encoder_dtype = next(self.image_encoder.parameters()).dtype
        with torch.no_grad():
            states = self.image_encoder(**features.to(device=self.device, dtype=encoder_dtype)).last_hidden_state
        return states.to(model_dtype(self.transformer))


def is_hunyuan_framepack_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``HunyuanVideoFramepackPipeline``."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == FRAMEPACK_PIPELINE


def check_framepack_folder(directory) -> tuple:
    """(model_index dict, scheduler config) of a ``HunyuanVideoFramepackPipeline`` folder, checked from its JSON
    alone (module docstring); a one-line DiffkitError for what diffkit does not drive."""
    from ..errors import read_json_object
    from .hunyuan_video_i2v import check_image_folder
    index, sched = check_image_folder(directory, FRAMEPACK_PIPELINE, KIND, FRAMEPACK_REQUIRED, FRAMEPACK_CLASSES,
                                      {None: lambda c: c})
    config = read_json_object(Path(directory) / "transformer" / "config.json", "transformer config")
    for key in ("has_clean_x_embedder", "has_image_proj"):
        if not config.get(key):
            raise DiffkitError(f"{directory}'s transformer has {key}={config.get(key)!r}; allowed: true "
                               f"({FRAMEPACK_PIPELINE} passes the clean history and the SigLIP states)")
    return index, sched


def check_framepack_request(sampling_type, latent_window_size, has_last_image: bool, num_frames) -> None:
    """One line for a ``sampling_type`` other than inverted_anti_drifting / vanilla, a ``latent_window_size`` or
    ``num_frames`` that is no positive integer, or a last image with ``vanilla`` (the pipeline's ``check_inputs``)."""
    from ..errors import check_choice
    check_choice("sampling_type", sampling_type, SAMPLING_TYPES)
    for name, value in (("latent_window_size", latent_window_size), ("num_frames", num_frames)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DiffkitError(f"{name}={value!r} is not allowed; give a positive integer")
    if has_last_image and sampling_type != "inverted_anti_drifting":
        raise DiffkitError(f"a last image is not allowed with sampling_type={sampling_type!r}; allowed: "
                           f"inverted_anti_drifting ({FRAMEPACK_PIPELINE}'s check_inputs)")


def load_hunyuan_framepack(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                           progress: bool = True) -> HunyuanFramepack:
    """Load a ``HunyuanVideoFramepackPipeline`` folder (never downloads, never unpickles), checked first
    (:func:`check_framepack_folder`): text-to-video's parts (:func:`.hunyuan_video.load_hunyuan_video`) and SigLIP;
    one line where the transformer's ``image_proj_dim`` is not SigLIP's width."""
    from . import from_pretrained, library_progress_bars
    from .hunyuan_video import load_hunyuan_video
    from .sd3 import _entry
    from .sd_xl import _index
    from .wan import check_widths
    diffusers, transformers = require("diffusers"), require("transformers")
    directory = Path(directory)
    model = load_hunyuan_video(directory, device, dtype, progress, check=check_framepack_folder,
                               cls=HunyuanFramepack, transformer_cls=diffusers.HunyuanVideoFramepackTransformer3DModel)
    with library_progress_bars(progress):
        model.image_encoder = from_pretrained(transformers.SiglipVisionModel, directory / "image_encoder",
                                              local_files_only=True, torch_dtype=dtype, use_safetensors=True)
        processor = getattr(transformers, _entry(_index(directory), "feature_extractor"))
        model.feature_extractor = from_pretrained(processor, directory / "feature_extractor", local_files_only=True)
    model.image_encoder.to(model.device).eval().requires_grad_(False)
    check_widths(directory, [(model.transformer.config.image_proj_dim, model.image_encoder.config.hidden_size,
                              "image_proj_dim")])
    return model


def section_layout(sampling_type: str, k: int, sections: int, window: int) -> tuple:
    """(RoPE indices (window, clean, 2 x, 4 x), the clean history's frame order) of section ``k`` of ``sections``
    (module docstring): the inverted order's padding p_k W before the window, vanilla's history first."""
    if sampling_type == "vanilla":
        sizes = [1, *reversed(HISTORY_SIZES), window]
        prefix, at_4x, at_2x, at_1x, latents = torch.arange(sum(sizes)).split(sizes)
    else:
        paddings = list(reversed(range(sections))) if sections <= 4 else [3] + [2] * (sections - 3) + [1, 0]
        sizes = [1, paddings[k] * window, window, *HISTORY_SIZES]
        prefix, _, latents, at_1x, at_2x, at_4x = torch.arange(sum(sizes)).split(sizes)
    return latents, torch.cat([prefix, at_1x]), at_2x, at_4x


def clean_history(sampling_type: str, history: torch.Tensor, image: torch.Tensor, last: Optional[torch.Tensor],
                  first: bool) -> tuple:
    """(clean 1 x latents [z_img, 1 frame], 2 x, 4 x) of the packed ``history`` (module docstring): the inverted
    order's newest frames first (the last image's latents as the 1 x frame in the ``first`` section, where given),
    vanilla's at the end."""
    total = sum(HISTORY_SIZES)
    if sampling_type == "vanilla":
        at_4x, at_2x, at_1x = history[:, :, -total:].split(list(reversed(HISTORY_SIZES)), dim=2)
    else:
        at_1x, at_2x, at_4x = history[:, :, :total].split(list(HISTORY_SIZES), dim=2)
        if last is not None and first:
            at_1x = last
    return torch.cat([image, at_1x], dim=2), at_2x, at_4x


def soft_append(before: torch.Tensor, after: torch.Tensor, overlap: int) -> torch.Tensor:
    """Videos (B, T, C, H, W) ``before`` then ``after``, their ``overlap`` shared frames cross-faded with weights
    linspace(1, 0) on ``before`` (the pipeline's ``_soft_append``)."""
    if overlap <= 0:
        return torch.cat([before, after], dim=1)
    w = torch.linspace(1, 0, overlap, dtype=before.dtype, device=before.device).view(1, -1, 1, 1, 1)
    blended = w * before[:, -overlap:] + (1 - w) * after[:, :overlap]
    return torch.cat([before[:, :-overlap], blended, after[:, overlap:]], dim=1)


def decode_sections(model: HunyuanFramepack, histories: list, sampling_type: str, window: int) -> torch.Tensor:
    """Videos (B, T, C, H, W) in [-1, 1] (not clamped) of the generated history after each section (module
    docstring): the first decoded whole, each next one's newest 2 W (+ 1) frames decoded and soft-appended."""
    factor = model.temporal_factor
    overlap = (window - 1) * factor + 1
    video = model.decode_video(histories[0])
    for k, history in enumerate(histories[1:], start=1):
        if sampling_type == "vanilla":
            video = soft_append(video, model.decode_video(history[:, :, -2 * window:]), overlap)
        else:
            newest = 2 * window + (k == len(histories) - 1)
            video = soft_append(model.decode_video(history[:, :, :newest]), video, overlap)
    return video[:, :(video.shape[1] - 1) // factor * factor + 1]


def image_to_video(model: HunyuanFramepack, images, prompts: Union[str, Sequence[str]], *, last_image=None,
                   sampling_type: str = "inverted_anti_drifting", latent_window_size: int = LATENT_WINDOW,
                   negative_prompt=None, guidance_scale: Optional[float] = None, convention: str = "diffusers",
                   true_cfg_scale: float = 1.0, steps: Optional[int] = None, sampler: Optional[str] = None,
                   nfe: Optional[int] = None, grid: Union[None, str, torch.Tensor] = None,
                   num_frames: Optional[int] = None, height: Optional[int] = None, width: Optional[int] = None,
                   seed: Optional[int] = 0, max_sequence_length: int = MAX_SEQUENCE_LENGTH, output_range: str = "-1,1",
                   return_latents: bool = False, progress: bool = False, **options) -> torch.Tensor:
    """Videos (B, T, 3, H, W) from ``images`` (PIL images or (B, 3, H, W) in [-1, 1]; one for every prompt, or one
    per video) and ``prompts`` as ``HunyuanVideoFramepackPipeline`` (module docstring), section by section.

    last_image: an end image (inverted_anti_drifting only), one or one per video. sampling_type, latent_window_size
    (default 9): the pipeline's. Other keyword arguments as :func:`.hunyuan_video.text_to_video`'s (guidance_scale:
    the embedded guidance, default 6.0; true_cfg_scale with negative_prompt; sampler / grid / steps / nfe, run on
    every section; num_frames, default 129, sets the number of sections; height / width, default 720 x 1280). The
    image's and each section's noise from video i's generator (seed + i). Returns videos in ``output_range``, or with
    ``return_latents`` the generated latents (B, C, F, h, w) (the pipeline's last ``output_type="latent"`` entry)."""
    from ..errors import check_choice
    from ..guidance import ClassifierFreeGuidance
    from ..noise import generators_from_seed, randn
    from ..sampling import sample
    from .flow_latents import pipeline_grid
    from .flux import check_true_cfg
    from .hunyuan_video import check_size
    from .hunyuan_video_i2v import paired
    from .ltx import image_posterior
    from .qwen_image_edit import _pil_images, _pixels
    from .stable_diffusion import OUTPUT_RANGES, negative_prompts
    from PIL import Image
    check_choice("output_range", output_range, OUTPUT_RANGES)
    check_choice("convention", convention, ["diffusers", "seed"])
    frames = model.default_frames if num_frames is None else num_frames
    check_framepack_request(sampling_type, latent_window_size, last_image is not None, frames)
    pil, prompts = paired(images, prompts)
    count, window = len(pil), latent_window_size
    lasts = None if last_image is None else paired(last_image, prompts)[0]
    if lasts is not None and len(lasts) != count:
        raise DiffkitError(f"{len(lasts)} last images for {count} videos; give one, or one per video")
    height, width = model.default_size[0] if height is None else height, model.default_size[1] if width is None \
        else width
    check_size(height, width, FRAMEPACK_PIPELINE)
    model.check_guidance_scale(guidance_scale)
    check_true_cfg(true_cfg_scale, negative_prompt)
    sampler, grid, steps = pipeline_grid(sampler, grid, steps, nfe, model.default_steps, model.scheduler_grid,
                                         options.get("flow_shift"))
    generators = None if seed is None else generators_from_seed(seed, count)
    context, mask, pooled = model.encode_prompts(prompts, max_sequence_length)
    sized = [image.resize((width, height), resample=Image.LANCZOS) for image in _pil_images(pil)]
    image_embeds = model.image_embeds(_pixels(sized))
    scale = model.scaling_factor
    image = image_posterior(model, pil, height, width, generators) * scale  # drawn before the last image and noise
    last = None if lasts is None else image_posterior(model, lasts, height, width, generators) * scale
    denoiser = model.denoiser(guidance_scale)
    if true_cfg_scale > 1:
        negatives = negative_prompts(negative_prompt, count)
        negatives = negatives[:1] if len(set(negatives)) == 1 else negatives  # one row serves every video
        null_context, null_mask, null_pooled = model.encode_prompts(negatives, max_sequence_length)
        denoiser = ClassifierFreeGuidance(denoiser, float(true_cfg_scale), "diffusers", null_context=null_context,
                                          null_cond={"mask": null_mask, "pooled": null_pooled})
    state, f = torch.float32, model.vae_scale_factor  # the pipeline's latents and scheduler state
    shape = (count, int(model.vae.config.latent_channels), window, height // f, width // f)
    history = torch.zeros(*shape[:2], sum(HISTORY_SIZES), *shape[3:], device=model.device, dtype=state)
    generated = 0
    if sampling_type == "vanilla":
        history, generated = torch.cat([history, image], dim=2), 1
    sections = max(1, math.ceil(frames / ((window - 1) * model.temporal_factor + 1)))
    histories = []
    for k in range(sections):
        clean, history_2x, history_4x = clean_history(sampling_type, history, image, last, k == 0)
        cond = {"context": context, "mask": mask, "pooled": pooled, "image_embeds": image_embeds, "clean": clean,
                "history_2x": history_2x, "history_4x": history_4x,
                "indices": section_layout(sampling_type, k, sections, window)}
        noise = randn(shape, generators, device=model.device)
        z = sample(denoiser, noise.to(model.device, state), sampler, steps, nfe=nfe, grid=grid, seed=seed, cond=cond,
                   progress=progress, device=model.device, dtype=state, **options)
        if sampling_type == "vanilla":
            history, generated = torch.cat([history, z], dim=2), generated + window
            histories.append(history[:, :, history.shape[2] - generated:])
        else:
            z = torch.cat([image, z], dim=2) if k == sections - 1 else z
            history, generated = torch.cat([z, history], dim=2), generated + z.shape[2]
            histories.append(history[:, :, :generated])
    if return_latents:
        return histories[-1]
    videos = decode_sections(model, histories, sampling_type, window)
    return (videos / 2 + 0.5).clamp(0, 1) if output_range == "0,1" else videos.clamp(-1, 1)


__all__ = ["HunyuanFramepack", "FramepackNet", "load_hunyuan_framepack", "is_hunyuan_framepack_folder",
           "check_framepack_folder", "check_framepack_request", "image_to_video", "section_layout", "clean_history",
           "soft_append", "decode_sections", "FRAMEPACK_PIPELINE", "SAMPLING_TYPES", "LATENT_WINDOW"]
