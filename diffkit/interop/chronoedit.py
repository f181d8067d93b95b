"""A ChronoEdit diffusers folder (``ChronoEditPipeline``, diffusers 0.42.1): an image edited by an instruction, the
edit read from the last frame of a short video, with any diffkit sampler.

ChronoEdit (Wu et al. 2025, "ChronoEdit: Towards Temporal Reasoning for Image Editing and World Simulation", NVIDIA)
is Wan 2.1's image-to-video model (Wan Team 2025: a rectified-flow video transformer, Esser et al. 2024, Sec. 2,
eq. 1: x_s = (1 - s) x_0 + s eps, velocity u = eps - x_0) fine-tuned so that a video starting at the input image
ends at its edit: the edit is the video's last frame. diffkit drives only what an image edit needs (diffkit has no
video support): the latent "video" is the pair [first, last] of latent frames, and the output is the last decoded
frame. As ``ChronoEditPipeline.__call__``:

* frames: without temporal reasoning the pipeline's 5 frames, 2 latent frames (the Wan VAE's causal temporal factor
  4: 1 + 4); the transformer (``ChronoEditTransformer3DModel``, Wan's with RoPE) places a 2-frame input at temporal
  positions 0 and ``rope_temporal_skip_len`` - 1 (the input frame and the end of an 8-frame clip).
* the condition (``prepare_latents``): the image (resized to height x width by PIL's Lanczos filter, x / 255 * 2 - 1)
  followed by num_frames - 1 black (zero) frames, encoded by the Wan VAE as one video (posterior mean), normalised
  (z - mean) / std, after a 4-channel mask that is 1 on the first latent frame and 0 on the others: the network input
  is [z_t, mask, z_cond] along the channels (2 C + 4), its velocity z_t's.
* prompts: the pipeline's ``prompt_clean`` (ftfy, html unescaped twice, whitespace collapsed; without ftfy
  installed diffkit skips that one call, :func:`.prx.ftfy_or_identity`), UMT5's last states of 512 tokens under the
  mask, zeroed past each prompt's tokens (as :mod:`.cosmos2`'s T5 states); the negative prompt (default "") the same.
  The length is fixed: the transformer's attention takes all but the last 512 context tokens for the image's (its
  processor's hard-coded text length), so the pipeline's other ``max_sequence_length`` values fail there.
* the image condition: CLIP's vision tower (``CLIPVisionModel``) on the folder's ``CLIPImageProcessor`` of the
  *original* image (not the resized one), its penultimate hidden states (``hidden_states[-2]``), the transformer's
  ``encoder_hidden_states_image`` (the same for the prompt and the negative prompt).
* guidance: CFG u_u + s (u_c - u_u) (Ho & Salimans 2022, eq. 6, diffusers' convention) for s > 1, default 5.0; s <= 1
  one unguided call (a negative prompt refused, :func:`.auraflow.guided`).
* the grid and its step: the folder's scheduler after ``set_timesteps(steps)`` (default 50), its sigmas at equal
  log-SNR on ``NoiseSchedule.flow(T, shift)`` (:func:`.flow_latents.flow_sigmas_grid`), the sampler of its step
  (:func:`.hidream.folder_sampler`: ``UniPCMultistepScheduler`` with flow sigmas -> ``unipc``, FlowMatchEuler ->
  ``ddim``); a UniPC folder's transformer is called at its int64 timesteps floor(s T) (:mod:`.sana`'s
  ``whole_timesteps``), a FlowMatchEuler one at s T.
* temporal reasoning (``enable_temporal_reasoning``, ``num_temporal_reasoning_steps`` K): the video has num_frames
  frames (default 81: (num_frames - 1) / 4 + 1 latent frames) for the first K steps, then only its first and last
  latent frames (and the scheduler's history of them) go on. diffkit keeps the whole state and, from step K on
  (flow times below the midpoint of the grid's K-1-th and K-th sigmas), calls the transformer on the frames [0, -1]
  alone: the scheduler's step (``unipc`` / ``ddim``, and any deterministic fixed-grid diffkit sampler) is elementwise in
  the state with per-step scalar coefficients, so the two frames evolve exactly as the pipeline's trimmed state; the
  other frames are discarded (their velocity is set to 0). A sampler that reads the whole state (adaptive step
  control, dynamic thresholding) or draws noise of its shape runs, but is not that trimmed run. K >= steps: the whole
  video is denoised and the pipeline decodes [first, last].
* dtypes: the latents and the sampler's state in float32 (the pipeline's ``prepare_latents(..., torch.float32)``), the
  transformer's input, text and image states in its own dtype (its output cast back to float32).
* output: the last frame of the Wan VAE's decoding of the latent pair [first, last] (x = D(z std + mean), causal:
  the pair decodes to 1 + 4 frames, the last one the edit): with or without temporal reasoning that is the frame the
  pipeline's video ends with (its ``video_edit``). ``return_latents``: that pair (B, C, 2, h, w).

Sizes: multiples of 16 (``check_inputs``); the VAE factor 8 and the transformer's 2 x 2 patches. Refused in one line
before any weight is read (:func:`check_chronoedit_folder`): another pipeline class, a missing component, parts of
other classes, a transformer whose channels are not 2 C + 4 / C or whose patches are not (1, 2, 2), a Wan 2.2 VAE,
a scheduler diffkit's samplers do not compute (:func:`.hidream.folder_sampler`). Not driven: other frame counts as
output, a video output (``num_frames`` only shapes the temporal reasoning's video, and must be 4 k + 1).

LoRA files: those the pipeline's ``WanLoraLoaderMixin`` loads (:mod:`.chronoedit_lora`: diffusers / PEFT keys, and
Wan's ``diffusion_model.`` / musubi's ``lora_unet_`` files converted by diffusers' own functions), fused into the
transformer as its ``load_lora_weights`` + ``fuse_lora``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from . import model_dtype, require
from .wan import WanFolder

CHRONOEDIT_PIPELINE = "ChronoEditPipeline"
CHRONOEDIT_TRANSFORMER = "ChronoEditTransformer3DModel"
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "image_encoder", "image_processor", "scheduler")
CHRONOEDIT_CLASSES = {"transformer": (CHRONOEDIT_TRANSFORMER,), "vae": ("AutoencoderKLWan",),
                      "text_encoder": ("UMT5EncoderModel",), "image_encoder": ("CLIPVisionModel",),
                      "image_processor": ("CLIPImageProcessor", "CLIPImageProcessorPil", "CLIPImageProcessorFast"),
                      "scheduler": ("UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler")}
CHRONOEDIT_GUIDANCE = 5.0  # ChronoEditPipeline.__call__'s default guidance_scale (diffusers' convention)
CHRONOEDIT_STEPS = 50  # its num_inference_steps
EDIT_FRAMES = 5  # its num_frames without temporal reasoning: 2 latent frames
REASONING_FRAMES = 81  # its default num_frames (used with temporal reasoning)
MAX_SEQUENCE_LENGTH = 512  # its default UMT5 length (the transformer's attention takes the last 512 as the text)


class ChronoEditNet(torch.nn.Module):
    """``net(z, t, context, image, condition)`` over a ``ChronoEditTransformer3DModel`` on latent videos z (B, C, F,
    h, w): the input [z, condition] along the channels, ``context`` (UMT5's states) and ``image`` (CLIP's) the
    transformer's text and image states, ``t`` the flow time s T (floored with ``whole_timesteps``). With
    ``reason_until`` (a flow time s T), calls below it see the frames [0, -1] alone (the pipeline's trimmed video after
    its temporal reasoning steps, module docstring), the other frames' velocity 0."""

    def __init__(self, transformer, whole_timesteps: bool = False, reason_until: Optional[float] = None):
        super().__init__()
        self.model, self.whole_timesteps, self.reason_until = transformer, whole_timesteps, reason_until

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, image: torch.Tensor = None,
                condition: torch.Tensor = None) -> torch.Tensor:
        if context is None or image is None or condition is None:
            raise DiffkitError("a ChronoEdit transformer needs cond {'context', 'image', 'condition'} "
                               "(chronoedit.edit_image)")
        dtype = model_dtype(self.model)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        ends = [0, x.shape[2] - 1]
        trimmed = x.shape[2] > 2 and self.reason_until is not None and bool((t < self.reason_until).all())
        z, condition = (x[:, :, ends], condition[:, :, ends]) if trimmed else (x, condition)
        out = self.model(hidden_states=torch.cat([z, condition.to(z.dtype)], dim=1).to(dtype),
                         timestep=t.floor() if self.whole_timesteps else t, encoder_hidden_states=context.to(dtype),
                         encoder_hidden_states_image=image.to(dtype), return_dict=False)[0].to(x.dtype)
        if not trimmed:
            return out
        full = torch.zeros_like(x)
        full[:, :, ends] = out
        return full


@dataclass
class ChronoEdit(WanFolder):
    """The loaded components of a ``ChronoEditPipeline`` folder (:func:`load_chronoedit`); its grid, prompts and
    VAE factors, CLIP image states and condition are a Wan image-to-video folder's (:class:`.wan.WanFolder`)."""

    transformer: object
    vae: object
    text_encoder: object
    tokenizer: object
    image_encoder: object
    image_processor: object
    scheduler_config: dict
    schedule: object
    device: torch.device
    dtype: torch.dtype = torch.float32
    _sigmas: dict = field(default_factory=dict, repr=False)

    default_steps = CHRONOEDIT_STEPS
    max_sequence_length = MAX_SEQUENCE_LENGTH
    pipeline_name = CHRONOEDIT_PIPELINE
    prompt_module = "diffusers.pipelines.chronoedit.pipeline_chronoedit"

    def denoiser(self, reason_until: Optional[float] = None):
        """The unguided flow-prediction Denoiser on ``NoiseSchedule.flow(T, shift)`` (:class:`ChronoEditNet`)."""
        from ..denoiser import Denoiser
        denoiser = Denoiser(ChronoEditNet(self.transformer, self.whole_timesteps, reason_until), self.schedule,
                            "flow_prediction")
        denoiser.model = self.transformer
        return denoiser

    def decode_last(self, pair: torch.Tensor) -> torch.Tensor:
        """The last frame (B, 3, H, W) in [-1, 1] (not clamped) of the Wan VAE's decoding of the latent pair [first,
        last] (B, C, 2, h, w): x = D(z std + mean), the edit (module docstring)."""
        with torch.no_grad():
            z = pair.to(device=self.device, dtype=self.vae.dtype)
            mean, std = (s[:, :, None] for s in self._stats(z))
            return self.vae.decode(z * std + mean, return_dict=False)[0][:, :, -1].float()


def is_chronoedit_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``ChronoEditPipeline`` (``diffkit edit`` dispatches)."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == CHRONOEDIT_PIPELINE


def check_chronoedit_folder(directory) -> tuple:
    """(model_index dict, scheduler config) of a ``ChronoEditPipeline`` folder, checked from its JSON alone (module
    docstring); a one-line DiffkitError for what diffkit does not drive."""
    from .wan import wan_configs, wan_scheduler_config
    directory = Path(directory)
    index, configs = wan_configs(directory, CHRONOEDIT_PIPELINE, "ChronoEdit", REQUIRED, CHRONOEDIT_CLASSES)
    check_image_to_video_configs(directory, configs)
    return index, wan_scheduler_config(directory)


def check_image_to_video_configs(directory, configs: dict, parts=("transformer",), image: bool = True) -> None:
    """One line unless ``configs`` ({part: config}) are a Wan 2.1 image-to-video folder's: a Wan 2.1 VAE of factor 8,
    each of ``parts`` (the transformer; a Wan 2.2 A14B folder's two experts) of 2 z_dim + 4 channels in, z_dim out,
    patches (1, 2, 2), and with ``image`` CLIP image states (``image_dim``, ``added_kv_proj_dim``), else none
    (ChronoEdit's, :func:`check_chronoedit_folder`; ``WanImageToVideoPipeline``'s, :mod:`.wan_i2v`)."""
    from .flow_latents import check_part_configs
    z_dim, temporal = configs["vae"].get("z_dim", 16), configs["vae"].get("scale_factor_temporal", 4)
    check_part_configs(directory, configs, (
        ("vae", "patch_size", None, None, "a Wan 2.1 VAE; a Wan 2.2 one is patched"),
        ("vae", "scale_factor_spatial", 8, 8, "the pipeline's latents of H / 8"),
        *((part, key, default, allowed, why) for part in parts for key, default, allowed, why in (
            ("in_channels", 36, 2 * z_dim + temporal, "the latents, the mask and the condition: 2 z_dim + "
                                                      "scale_factor_temporal"),
            ("out_channels", 16, z_dim, "the VAE's z_dim"),
            ("patch_size", [1, 2, 2], [1, 2, 2], "sizes of 16"),
            *(() if image else (("image_dim", None, None, "a Wan 2.2 A14B expert: no CLIP image states"),))))))
    for part in parts if image else ():
        for key in ("image_dim", "added_kv_proj_dim"):
            if not configs[part].get(key):
                raise DiffkitError(f"{directory}'s {part} has {key}={configs[part].get(key)!r}; allowed: a "
                                   f"positive width (an image-to-video transformer: its CLIP image states)")


def load_chronoedit(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                    progress: bool = True, lora=None) -> ChronoEdit:
    """Load a ``ChronoEditPipeline`` folder (never downloads, never unpickles), checked first
    (:func:`check_chronoedit_folder`). ``lora``: LoRA files (paths or (path, scale) pairs) in the layouts
    ``WanLoraLoaderMixin`` loads (diffusers / PEFT, Wan's ``diffusion_model.`` and musubi's ``lora_unet_`` names
    through diffusers' converters), read and checked first (:func:`.chronoedit_lora.read_chronoedit_loras`), fused
    into the transformer as ``load_lora_weights`` + ``fuse_lora(lora_scale=scale)``
    (:func:`.sd_lora.merge_sd_loras`)."""
    from .chronoedit_lora import read_chronoedit_loras
    from .sd_lora import merge_sd_loras
    from .wan import check_widths, load_clip, load_wan_parts
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_chronoedit_folder(directory)
    loras = read_chronoedit_loras(lora) if lora else []
    parts, schedule, device = load_wan_parts(directory, index, sched, diffusers.ChronoEditTransformer3DModel, device,
                                             dtype, progress)
    encoder, processor = load_clip(directory, device, dtype, progress)
    model = ChronoEdit(**parts, image_encoder=encoder, image_processor=processor, scheduler_config=sched,
                       schedule=schedule, device=device, dtype=dtype)
    check_widths(directory, ((model.transformer.config.text_dim, model.text_encoder.config.d_model, "text_dim"),
                             (model.transformer.config.image_dim, model.image_encoder.config.hidden_size,
                              "image_dim")))
    merge_sd_loras(model, loras)
    return model


def check_frames(temporal_reasoning_steps, num_frames) -> int:
    """The pipeline's frame count: 5 for a plain edit (``num_frames`` refused there), ``num_frames`` (default 81, of
    the form 4 k + 1, at least 5) with temporal reasoning (``temporal_reasoning_steps``: an integer >= 1)."""
    if temporal_reasoning_steps is None:
        if num_frames is not None:
            raise DiffkitError(f"num_frames={num_frames!r} is not allowed without temporal reasoning: a plain "
                               f"ChronoEdit edit is the pipeline's {EDIT_FRAMES} frames; give temporal_reasoning_steps "
                               f"(--temporal-reasoning-steps) or drop it")
        return EDIT_FRAMES
    if isinstance(temporal_reasoning_steps, bool) or not isinstance(temporal_reasoning_steps, int) \
            or temporal_reasoning_steps < 1:
        raise DiffkitError(f"temporal_reasoning_steps={temporal_reasoning_steps!r} is not allowed; give an integer "
                           f">= 1 (the steps that denoise the whole reasoning video), or none for a plain edit")
    frames = REASONING_FRAMES if num_frames is None else num_frames
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < EDIT_FRAMES or frames % 4 != 1:
        raise DiffkitError(f"num_frames={frames!r} is not allowed; give 4 k + 1 frames, at least {EDIT_FRAMES} (the "
                           f"Wan VAE's 1 + 4 k frames; the pipeline would round it down)")
    return frames


def edit_image(model: ChronoEdit, images, prompts: Union[str, Sequence[str]], *, negative_prompt=None,
               guidance_scale: Optional[float] = None, convention: str = "diffusers", steps: Optional[int] = None,
               sampler: Optional[str] = None, temporal_reasoning_steps: Optional[int] = None,
               num_frames: Optional[int] = None, height: Optional[int] = None, width: Optional[int] = None,
               seed: Optional[int] = 0, latents: Optional[torch.Tensor] = None, output_range: str = "0,1",
               return_latents: bool = False, progress: bool = False, **options) -> torch.Tensor:
    """``images`` (PIL images or (B, 3, H, W) in [-1, 1]) edited by ``prompts`` (one, or one per image) as
    ``ChronoEditPipeline`` (module docstring): the last frame of the edit's video, (B, 3, H, W).

    guidance_scale: in ``convention`` (default s = 5, diffusers'), against ``negative_prompt`` (default ""). steps:
    the scheduler's (default 50); sampler: None for the scheduler's own step (:func:`.hidream.folder_sampler`), or any
    diffkit sampler on its grid. temporal_reasoning_steps: K >= 1 turns temporal reasoning on, over ``num_frames``
    (default 81, 4 k + 1); None: the plain 5-frame edit. height / width: default the first image's own (multiples of
    16), each image resized to it (Lanczos). latents: z at s = 1 (B, C, F, h, w) (the pipeline's ``latents``),
    default N(0, I) from per-image ``seed + i``. Returns images in ``output_range``, or with ``return_latents`` the
    latent pair [first, last] (B, C, 2, h, w)."""
    from PIL import Image

    from ..errors import check_choice
    from ..guidance import ClassifierFreeGuidance
    from .flow_latents import edit_prompts
    from .qwen_image_edit import _pil_images, _pixels
    from .stable_diffusion import OUTPUT_RANGES, negative_prompts
    from .wan import pipeline_guidance
    check_choice("output_range", output_range, OUTPUT_RANGES)
    frames = check_frames(temporal_reasoning_steps, num_frames)
    scale, convention, cfg = pipeline_guidance(guidance_scale, convention, negative_prompt, CHRONOEDIT_GUIDANCE)
    pil = _pil_images(images)
    prompts = edit_prompts(torch.empty(len(pil), 3, 1, 1), prompts)
    height = pil[0].size[1] if height is None else height
    width = pil[0].size[0] if width is None else width
    model.check_size(height, width)
    shape = model.latent_video_shape(len(pil), frames, height, width)
    steps, grid, sampler, options, latents = model.start_latents(steps, sampler, options, shape, latents, seed)
    T = model.schedule.num_timesteps
    sigmas = model.scheduler_sigmas(steps)
    reason_until = None  # the flow time s T between the last reasoning step's sigma and the next one's
    if temporal_reasoning_steps is not None and temporal_reasoning_steps < steps:
        k = temporal_reasoning_steps
        reason_until = float(sigmas[k - 1] + sigmas[k]) / 2 * T
    pixels = _pixels([image.resize((width, height), resample=Image.LANCZOS) for image in pil])
    cond = {"context": model.encode_prompts(prompts), "image": model.encode_images(pil),
            "condition": model.condition(pixels, frames)}
    denoiser = model.denoiser(reason_until)
    if cfg:
        null = model.encode_prompts(negative_prompts(negative_prompt, len(prompts)))
        denoiser = ClassifierFreeGuidance(denoiser, scale, convention, null_context=null)
    z = model.sample_latents(denoiser, cond, grid, sampler, latents, seed, progress, options)
    pair = z[:, :, [0, -1]]
    if return_latents:
        return pair
    images = model.decode_last(pair)
    return (images / 2 + 0.5).clamp(0, 1) if output_range == "0,1" else images.clamp(-1, 1)


__all__ = ["ChronoEdit", "ChronoEditNet", "load_chronoedit", "is_chronoedit_folder", "check_chronoedit_folder",
           "check_frames", "check_image_to_video_configs", "edit_image", "CHRONOEDIT_PIPELINE", "CHRONOEDIT_GUIDANCE",
           "CHRONOEDIT_STEPS"]
