"""A Kandinsky 5 image folder (``Kandinsky5T2IPipeline``, diffusers 0.42.1), sampled with any diffkit sampler.

Kandinsky 5.0 Image Lite (Kandinsky lab 2025) is a rectified-flow transformer (``Kandinsky5Transformer3DModel``,
its video model run on one frame: text blocks, then visual blocks cross-attending to the text, 3-D RoPE; Esser et
al. 2024, Sec. 2, eq. 1: x_s = (1 - s) x_0 + s eps, velocity u = eps - x_0) on FLUX.1's 16-channel ``AutoencoderKL``,
conditioned on Qwen2.5-VL's last hidden states and CLIP's pooled embedding. diffkit runs it through :mod:`.auraflow`
/ :mod:`.sana` / :mod:`.pixart`'s code (the FlowMatchEuler scheduler's sigmas as diffkit's grid with flow Euler
``ddim`` as its step, ``diffkit sample``). What is Kandinsky 5's own, as ``Kandinsky5T2IPipeline.__call__``:

* prompts (``encode_prompt``): cleaned as the pipeline's ``prompt_clean`` (its own function: html unescaped,
  whitespace collapsed, ftfy where installed), put in its system template, tokenised as a batch padded to the
  longest (at most 40 + ``max_sequence_length`` tokens, default 512, limit 1024; longer prompts cut as the
  pipeline's text-level cut), Qwen2.5-VL run **without** the attention mask, its last hidden states with the
  template's first 40 tokens dropped: every row keeps the batch's padded length (the transformer takes no mask, text
  RoPE positions 0..L-1). CLIP (``text_encoder_2``): padded to 77 tokens, its ``pooler_output`` -> the transformer's
  ``pooled_projections`` (added to the time embedding).
* the network: latents (B, C, h, w) as the pipeline's channel-last (B, 1, h, w, C) frame, visual RoPE positions
  (0, 0..h/2-1, 0..w/2-1), RoPE scale 1, no sparse attention; called at the scheduler's timestep t = s T (T = 1000,
  not divided); ``pooled_projections`` from CLIP.
* guidance: CFG u_neg + s (u_c - u_neg) (Ho & Salimans 2022, eq. 6, diffusers' convention) for s > 1, default 3.5;
  the negative prompt (default "") encoded as the prompts, at its own length; s <= 1: one unguided call (a negative
  prompt refused).
* the grid: the folder's FlowMatchEuler scheduler after ``set_timesteps(steps)`` (default 50; its fixed ``shift``),
  the sigmas at equal log-SNR (:func:`.flow_latents.flow_sigmas_grid`).
* size: the pipeline draws one of its seven resolutions: a height x width not in that list becomes the one nearest
  in aspect ratio (w / h; the pipeline warns, diffkit does the same and says so in the docs); default 1024 x 1024;
  latents at f = 8 (the pipeline's fixed factor). Decoding x = D(z / scaling_factor): **no** ``shift_factor``
  (the pipeline ignores the FLUX VAE's).
* draws: diffkit's z (B, C, h, w) from ``seed + i``; the pipeline draws channel-last (B, 1, h, w, C) from one
  generator: give ``latents`` (permuted) to match it.

An image-to-image folder (``Kandinsky5I2IPipeline``, its transformer with ``visual_cond``: the image's latents as
channels) is driven by :mod:`.kandinsky5_edit`, the video folders (``Kandinsky5T2VPipeline``,
``Kandinsky5I2VPipeline``) by :mod:`.kandinsky5_video` (loaded here). Refused in one line before any weight is read
(:func:`check_kandinsky5_folder`): a missing component or one of another class, a transformer whose
``visual_cond`` is not its pipeline's, whose channels are not the VAE's latent channels, or whose temporal patch is not
1, a VAE whose factor is not 8, a ``use_dynamic_shifting`` scheduler. LoRA files (both pipelines'
``KandinskyLoraLoaderMixin``, which converts nothing: diffusers / PEFT ``transformer.`` keys, as ``save_lora_weights``
writes them) are fused into the transformer as ``load_lora_weights`` + ``fuse_lora``
(:func:`.sana_lora.read_transformer_loras`, :func:`.sd_lora.merge_sd_loras`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..errors import DiffkitError
from . import model_dtype, require
from .auraflow import AuraFlow, guided
from .flow_latents import frozen_on, load_flow_parts
from .pixart import checked_folder, fixed_shift_scheduler

KANDINSKY5_PIPELINE = "Kandinsky5T2IPipeline"
KANDINSKY5_I2I_PIPELINE = "Kandinsky5I2IPipeline"  # driven by :mod:`.kandinsky5_edit`
KANDINSKY5_CLASSES = {"transformer": ("Kandinsky5Transformer3DModel",), "vae": ("AutoencoderKL",),
                      "text_encoder": ("Qwen2_5_VLForConditionalGeneration",), "text_encoder_2": ("CLIPTextModel",),
                      "scheduler": ("FlowMatchEulerDiscreteScheduler",)}
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")
KANDINSKY5_GUIDANCE = 3.5  # Kandinsky5T2IPipeline.__call__'s default guidance_scale
KANDINSKY5_STEPS = 50  # its default num_inference_steps
KANDINSKY5_MAX_SEQUENCE_LENGTH = 512  # its default max_sequence_length (check_inputs: at most 1024)
PROMPT_TEMPLATE = ("<|im_start|>system\nYou are a prompt engineer. Describe the image by detailing the color, shape, "
                   "size, texture, quantity, text, spatial relationships of the objects and background:<|im_end|>\n"
                   "<|im_start|>user\n{}<|im_end|>")  # the pipeline's prompt_template (set in its __init__)
TEMPLATE_DROP = 40  # its prompt_template_encode_start_idx
CLIP_LENGTH = 77  # _encode_prompt_clip's max_length
VAE_FACTOR = 8  # its vae_scale_factor_spatial (fixed)
RESOLUTIONS = ((1024, 1024), (640, 1408), (1408, 640), (768, 1280), (1280, 768), (896, 1152), (1152, 896))  # (w, h)
KANDINSKY5_T2V_PIPELINE = "Kandinsky5T2VPipeline"  # driven by :mod:`.kandinsky5_video` (diffkit video)
KANDINSKY5_I2V_PIPELINE = "Kandinsky5I2VPipeline"  # its image_to_video (diffkit video)
VIDEO_PIPELINES = (KANDINSKY5_T2V_PIPELINE, KANDINSKY5_I2V_PIPELINE)
NOT_DRIVEN = {name: "a video pipeline (diffkit.interop.kandinsky5_video, diffkit video)" for name in VIDEO_PIPELINES}


def is_kandinsky5_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names a ``Kandinsky5...`` pipeline (so ``diffkit sample``
    dispatches, and refuses the ones it does not drive in one line)."""
    from .sd_xl import pipeline_class
    return str(pipeline_class(path) or "").startswith("Kandinsky5")


def check_kandinsky5_folder(directory, video: bool = False) -> tuple:
    """(model_index dict, transformer config, scheduler config) of a ``Kandinsky5T2IPipeline`` or (its transformer
    with ``visual_cond``) ``Kandinsky5I2IPipeline`` folder, checked from its JSON alone (module docstring); a
    one-line DiffkitError for what diffkit does not drive. ``video``: a ``Kandinsky5T2VPipeline`` folder too
    (:func:`.kandinsky5_video.check_kandinsky5_video_folder`)."""
    from .schedulers import flow_shift_from_diffusers
    from .sd_xl import pipeline_class
    directory = Path(directory)
    name = pipeline_class(directory)
    if name in VIDEO_PIPELINES and video:
        from .kandinsky5_video import check_kandinsky5_video_folder
        return check_kandinsky5_video_folder(directory, name)
    if name in NOT_DRIVEN:
        raise DiffkitError(f"{directory} is a {name} folder, {NOT_DRIVEN[name]}; allowed: {KANDINSKY5_PIPELINE}, "
                           f"{KANDINSKY5_I2I_PIPELINE}")
    pipeline = KANDINSKY5_I2I_PIPELINE if name == KANDINSKY5_I2I_PIPELINE else KANDINSKY5_PIPELINE
    index, config, vae = checked_folder(directory, pipeline, REQUIRED, "Kandinsky 5", KANDINSKY5_CLASSES)
    edit = pipeline == KANDINSKY5_I2I_PIPELINE
    check_transformer(directory, config, vae, pipeline, (edit,))
    levels = len(vae.get("block_out_channels", (64,)))
    if 2 ** (levels - 1) != VAE_FACTOR:
        raise DiffkitError(f"{directory}'s VAE has {levels} levels (factor {2 ** (levels - 1)}); allowed: factor "
                           f"{VAE_FACTOR} (the pipeline's fixed vae_scale_factor_spatial)")
    sched = fixed_shift_scheduler(directory, pipeline)
    flow_shift_from_diffusers(sched)  # its other keys: one line
    return index, config, sched


def check_transformer(directory, config: dict, vae: dict, pipeline: str, visual_cond: tuple) -> None:
    """One line for a transformer config whose channels are not the VAE's latent channels, whose ``visual_cond`` is
    not one of ``visual_cond`` (the pipeline's), or whose temporal patch is not 1."""
    latents = int(vae.get("latent_channels", 4))
    channels = (config.get("in_visual_dim", 4), config.get("out_visual_dim", 4))
    if bool(config.get("visual_cond", False)) not in visual_cond or channels != (latents, latents):
        cond = " or ".join(str(v).lower() for v in visual_cond)
        raise DiffkitError(f"{directory}'s transformer has in_visual_dim, out_visual_dim, visual_cond = {channels[0]!r}"
                           f", {channels[1]!r}, {config.get('visual_cond')!r}; allowed: the VAE's latent channels "
                           f"{latents} and visual_cond {cond} (the {pipeline}'s transformer)")
    patch = list(config.get("patch_size", (1, 2, 2)))
    if len(patch) != 3 or patch[0] != 1:
        raise DiffkitError(f"{directory}'s transformer has patch_size={patch!r}; allowed: [1, p, p] (one frame)")


def pipeline_resolution(height: int, width: int) -> tuple:
    """(height, width) the pipeline draws for ``height`` x ``width``: itself where (width, height) is one of its
    :data:`RESOLUTIONS`, else the first of them nearest in aspect ratio w / h (``__call__``'s np.argmin)."""
    if (width, height) in RESOLUTIONS:
        return height, width
    w, h = RESOLUTIONS[int(np.argmin([abs(a / b - width / height) for a, b in RESOLUTIONS]))]
    return h, w


class Kandinsky5Net(torch.nn.Module):
    """``net(x, t, context, pooled)`` over a ``Kandinsky5Transformer3DModel``: x (B, C, h, w) as one channel-last
    frame (B, 1, h, w, C), ``context`` (Qwen2.5-VL states) -> ``encoder_hidden_states`` with RoPE positions
    0..L-1, ``pooled`` (CLIP) -> ``pooled_projections``, the flow time s T -> ``timestep`` (as the pipeline's
    scheduler timesteps); the velocity back as (B, C, h, w) in x's dtype. ``reference`` (1 or B, C, h, w): a
    ``visual_cond`` transformer's image latents, its input [x, reference, 1] along the channels
    (``Kandinsky5I2IPipeline.prepare_latents``; :mod:`.kandinsky5_edit`)."""

    def __init__(self, transformer):
        super().__init__()
        self.model = transformer

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, pooled: torch.Tensor = None,
                mask: torch.Tensor = None, reference: torch.Tensor = None):
        if context is None or pooled is None or (reference is None) == bool(self.model.config.visual_cond):
            raise DiffkitError("a Kandinsky 5 transformer needs cond {'context', 'pooled'} (Kandinsky5.encode_prompts)"
                               ", and 'reference' exactly where it has visual_cond (Kandinsky5I2IPipeline's)")
        batch = x.shape[0]
        frame = x.permute(0, 2, 3, 1)[:, None]  # (B, 1, h, w, C)
        if reference is not None:  # the pipeline's contiguous channel-last [z_t, z_ref, 1]
            ref = reference.to(x).expand(batch, -1, -1, -1).permute(0, 2, 3, 1)[:, None]
            frame = torch.cat([frame, ref, torch.ones_like(frame[..., :1])], dim=-1)
        out = self.velocity(frame, t, context, pooled, [1.0, 1.0, 1.0])
        return out[:, 0].permute(0, 3, 1, 2).to(x.dtype)

    def velocity(self, frames: torch.Tensor, t, context: torch.Tensor, pooled: torch.Tensor,
                 scale_factor) -> torch.Tensor:
        """The transformer's output (B, F, h, w, C) on channel-last ``frames`` (B, F, h, w, C'): visual RoPE
        positions 0..F-1, 0..h/p-1, 0..w/p-1 at RoPE ``scale_factor``, text positions 0..L-1, no sparse attention."""
        dtype, device = model_dtype(self.model), frames.device
        batch, (f, h, w) = frames.shape[0], frames.shape[1:4]
        _, ph, pw = self.model.config.patch_size
        t = torch.as_tensor(t, device=device, dtype=torch.float32).reshape(-1).expand(batch)
        rope = [torch.arange(f, device=device), torch.arange(h // ph, device=device),
                torch.arange(w // pw, device=device)]
        return self.model(hidden_states=frames.to(dtype),
                          encoder_hidden_states=context.to(dtype).expand(batch, -1, -1),
                          pooled_projections=pooled.to(dtype).expand(batch, -1), timestep=t.to(dtype),
                          visual_rope_pos=rope, text_rope_pos=torch.arange(context.shape[1], device=device),
                          scale_factor=scale_factor, sparse_params=None, return_dict=True).sample


@dataclass
class Kandinsky5(AuraFlow):
    """The loaded components of a ``Kandinsky5T2IPipeline`` folder (:func:`load_kandinsky5`): an
    :class:`~.auraflow.AuraFlow` (the flow scheduler's grid and step) whose prompts, network, sizes and defaults
    are Kandinsky 5's; ``text_encoder_2`` / ``tokenizer_2``: CLIP's."""

    text_encoder_2: object = None
    tokenizer_2: object = None

    default_guidance_scale = KANDINSKY5_GUIDANCE
    default_steps = KANDINSKY5_STEPS
    prompt_template = PROMPT_TEMPLATE  # the pipeline's (its video pipelines': their own, .kandinsky5_video)
    template_drop = TEMPLATE_DROP

    @property
    def vae_scale_factor(self) -> int:
        return VAE_FACTOR

    @property
    def max_sequence_length(self) -> int:
        return KANDINSKY5_MAX_SEQUENCE_LENGTH

    @property
    def max_length_limit(self) -> int:
        return 1024  # check_inputs: "max_sequence_length must be less than 1024" (1024 itself passes)

    def latent_shape(self, batch: int, height: Optional[int] = None, width: Optional[int] = None) -> tuple:
        """(batch, C, h / 8, w / 8) of the pipeline's resolution for height x width (:func:`pipeline_resolution`;
        default 1024 x 1024); a side that is no positive integer: one line."""
        height, width = 1024 if height is None else height, 1024 if width is None else width
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise DiffkitError(f"{name}={value!r} is not allowed; give a positive integer (the pipeline then "
                                   f"draws the nearest of its resolutions in aspect ratio)")
        height, width = pipeline_resolution(height, width)
        return (batch, int(self.transformer.config.in_visual_dim), height // VAE_FACTOR, width // VAE_FACTOR)

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: Optional[int] = None, **seen) -> tuple:
        """(Qwen2.5-VL states (B, L, d), CLIP pooled (B, d_2)) of ``prompts`` as ``encode_prompt`` (module
        docstring); ``seen``: what the Qwen2.5-VL prompt also sees (an edit's images, :meth:`qwen_states`)."""
        require("diffusers")
        from diffusers.pipelines.kandinsky5.pipeline_kandinsky_t2i import prompt_clean
        from .stable_diffusion import prompt_list
        length = self.max_sequence_length if max_sequence_length is None else max_sequence_length
        self.check_length(length)
        prompts = [prompt_clean(p) for p in prompt_list(prompts)]
        clip = self.tokenizer_2(prompts, max_length=CLIP_LENGTH, truncation=True, add_special_tokens=True,
                                padding="max_length", return_tensors="pt")
        states = self.qwen_states(prompts, length, **seen)
        with torch.no_grad():
            pooled = self.text_encoder_2(**clip.to(self.device))["pooler_output"]
        dtype = model_dtype(self.transformer)  # (the pipeline's dtype argument)
        return states.to(dtype), pooled.to(dtype)

    def qwen_states(self, prompts: list, length: int) -> torch.Tensor:
        """Qwen2.5-VL's last hidden states of the cleaned ``prompts`` in the template, less its first 40 tokens, at
        the batch's padded length (at most ``length``; longer prompts cut as the pipeline's text-level cut)."""
        drop = self.template_drop
        texts, limit = [self.prompt_template.format(p) for p in prompts], drop + length
        ids = self.tokenizer(texts, return_tensors="pt", padding="longest")["input_ids"]
        if ids.shape[-1] > limit:  # the pipeline's text-level cut of over-long prompts
            for i, text in enumerate(texts):
                removed = self.tokenizer.decode(ids[i][drop:-2][length - 2:])
                if removed:
                    texts[i] = text[:-len(removed)]
        tokens = self.tokenizer(texts, max_length=limit, truncation=True, return_tensors="pt", padding=True)
        with torch.no_grad():
            return self.text_encoder(input_ids=tokens["input_ids"].to(self.device), return_dict=True,
                                     output_hidden_states=True)["hidden_states"][-1][:, drop:]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """x = D(z / scaling_factor) (no shift) of z (B, C, h, w) laid out in memory as the pipeline hands it to the
        VAE: its channel-last frame (B, 1, h, w, C) reshaped, permuted and reshaped as in ``__call__`` (the VAE's
        convolutions pick their algorithm by the strides: on the tiny random test VAE a contiguous z alone moves the
        images by 1.7e-3)."""
        b, c, h, w = latents.shape
        frame = latents.permute(0, 2, 3, 1).contiguous().reshape(b, 1, 1, h, w, c)
        return super().decode(frame.permute(0, 1, 5, 2, 3, 4).reshape(b, c, h, w))

    def _new_denoiser(self, whole: bool):
        from ..denoiser import Denoiser
        denoiser = Denoiser(Kandinsky5Net(self.transformer), self.schedule, "flow_prediction")
        denoiser.model = self.transformer
        return denoiser

    def prompt_guidance(self, prompts, negative_prompt=None, guidance_scale: float = KANDINSKY5_GUIDANCE,
                        convention: str = "diffusers", max_sequence_length: Optional[int] = None,
                        size: Optional[tuple] = None, denoiser=None, reference: Optional[torch.Tensor] = None,
                        **seen) -> tuple:
        """(denoiser, cond {'context', 'pooled'}): CFG against ``negative_prompt`` (None: ""; one, or one per
        prompt), encoded as the prompts at its own length, for a diffusers-convention scale s > 1; else unguided
        (a negative prompt refused, :func:`.auraflow.guided`). An edit's ``reference`` (image latents, cond
        'reference' of both passes) and ``seen`` (its prompt images: each negative prompt sees its row's too)."""
        from ..guidance import ClassifierFreeGuidance
        from .stable_diffusion import negative_prompts
        plain = denoiser or self.denoiser
        on = guided(guidance_scale, convention, negative_prompt)
        context, pooled = self.encode_prompts(prompts, max_sequence_length, **seen)
        cond = {"context": context, "pooled": pooled, **({} if reference is None else {"reference": reference})}
        if not on:
            return plain, cond
        negatives = negative_prompts(negative_prompt, context.shape[0])
        if len(set(negatives)) == 1 and not seen:
            negatives = negatives[:1]  # one row, broadcast by the guidance to every sample
        null_context, null_pooled = self.encode_prompts(negatives, max_sequence_length, **seen)
        return ClassifierFreeGuidance(plain, guidance_scale, convention, null_context=null_context,
                                      null_cond={"pooled": null_pooled}), cond


def load_kandinsky5(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                    progress: bool = True, lora=None) -> Kandinsky5:
    """Load a ``Kandinsky5T2IPipeline`` (or ``Kandinsky5I2IPipeline``: a :class:`.kandinsky5_edit.Kandinsky5Edit`
    with the processor's image processor; ``Kandinsky5T2VPipeline`` or ``Kandinsky5I2VPipeline``: a
    :class:`.kandinsky5_video.Kandinsky5Video` with its ``AutoencoderKLHunyuanVideo``) diffusers folder (never
    downloads, never unpickles); what diffkit does not drive is refused in one line before any weight is read
    (:func:`check_kandinsky5_folder`). The ``tokenizer`` entry (a ``Qwen2VLProcessor``) is read as its tokenizer: the
    pipeline gives it text alone. ``lora``: LoRA files
    (paths or (path, scale) pairs) with diffusers / PEFT ``transformer.`` keys (``KandinskyLoraLoaderMixin`` converts
    nothing), read and checked first, fused as ``load_lora_weights`` + ``fuse_lora(lora_scale=scale)``
    (:func:`.sana_lora.read_transformer_loras`, :func:`.sd_lora.merge_sd_loras`)."""
    from ..schedule import NoiseSchedule
    from .sana_lora import read_transformer_loras
    from .schedulers import flow_shift_from_diffusers
    from .sd_lora import merge_sd_loras
    diffusers = require("diffusers")
    directory = Path(directory)
    index, _, sched = check_kandinsky5_folder(directory, video=True)
    edit, video = index["_class_name"] == KANDINSKY5_I2I_PIPELINE, index["_class_name"] in VIDEO_PIPELINES
    loras = read_transformer_loras(lora, "Kandinsky 5", "a Kandinsky 5 folder", index["_class_name"],
                                   flux_check=False) if lora else []
    if edit:  # the Qwen2VLProcessor's image processor too (.kandinsky5_edit), read before any weight
        from .qwen_image_edit import load_image_processor
        images = load_image_processor(directory, "tokenizer")
    schedule = NoiseSchedule.flow(int(sched.get("num_train_timesteps", 1000)), flow_shift_from_diffusers(sched))
    text = {**index, "tokenizer": ["transformers", "AutoTokenizer"]}
    parts = load_flow_parts(directory, text, diffusers.Kandinsky5Transformer3DModel,
                            {"": "Qwen2_5_VLForConditionalGeneration", "_2": "CLIPTextModel"}, dtype, progress,
                            vae_cls=diffusers.AutoencoderKLHunyuanVideo if video else None)
    device = frozen_on(parts, device)
    parts["text_encoder_2"].to(device).eval().requires_grad_(False)
    if edit:
        from .kandinsky5_edit import Kandinsky5Edit
        model = Kandinsky5Edit(pipeline=KANDINSKY5_I2I_PIPELINE, **parts, schedule=schedule, device=device,
                               prediction_type="flow_prediction", scheduler_config=sched, dtype=dtype,
                               image_processor=images)
    elif video:
        from .kandinsky5_video import Kandinsky5Video
        model = Kandinsky5Video(pipeline=index["_class_name"], **parts, schedule=schedule,
                                prediction_type="flow_prediction", scheduler_config=sched, device=device, dtype=dtype)
    else:
        model = Kandinsky5(pipeline=KANDINSKY5_PIPELINE, **parts, schedule=schedule, prediction_type="flow_prediction",
                           scheduler_config=sched, device=device, dtype=dtype)
    merge_sd_loras(model, loras)
    return model


def text_to_image(model: Kandinsky5, prompts: Union[str, Sequence[str]], **options) -> torch.Tensor:
    """Images of a Kandinsky 5 folder for ``prompts``: :func:`.pixart.text_to_image` (sampler / grid, default the
    scheduler's loop; steps (default 50); guidance (default s = 3.5); negative prompt; latents (B, C, h, w); height /
    width (default 1024; the pipeline's nearest resolution); ``max_sequence_length`` (default 512); output options).
    ``resolution_binning``: refused (the pipeline's own resolution list applies)."""
    from .pixart import text_to_image as pixart_text_to_image
    if model.pipeline != KANDINSKY5_PIPELINE:
        how = {KANDINSKY5_T2V_PIPELINE: "make videos with diffkit.interop.kandinsky5_video.text_to_video",
               KANDINSKY5_I2V_PIPELINE: "make videos with diffkit.interop.kandinsky5_video.image_to_video"}.get(
            model.pipeline, "edit an image with diffkit.interop.kandinsky5_edit.edit_image")
        raise DiffkitError(f"text_to_image needs a {KANDINSKY5_PIPELINE} folder; this one is a {model.pipeline} "
                           f"folder: {how}")
    if options.get("resolution_binning"):
        raise DiffkitError("resolution_binning is not allowed for a Kandinsky 5 folder (Kandinsky5T2IPipeline draws "
                           "one of its own seven resolutions)")
    return pixart_text_to_image(model, prompts, **options)


__all__ = ["Kandinsky5", "Kandinsky5Net", "load_kandinsky5", "is_kandinsky5_folder", "check_kandinsky5_folder",
           "pipeline_resolution", "text_to_image", "KANDINSKY5_GUIDANCE", "KANDINSKY5_STEPS", "RESOLUTIONS"]
