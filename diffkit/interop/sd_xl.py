"""An SD-XL diffusers folder (StableDiffusionXLPipeline), sampled with any diffkit sampler.

SD-XL (Podell et al. 2023, "SDXL: Improving Latent Diffusion Models for High-Resolution Image
Synthesis", Sec. 2.1-2.2) is Stable Diffusion (:mod:`.stable_diffusion`) with three more inputs,
all as diffusers 0.42's ``StableDiffusionXLPipeline`` computes them:

* two text encoders: ``text_encoder`` (CLIPTextModel) and ``text_encoder_2``
  (CLIPTextModelWithProjection), each with its own tokenizer; the cross-attention context is the
  *penultimate* hidden states of both (``hidden_states[-2]``), concatenated along the channels
  (B, L, d_1 + d_2) (``encode_prompt``);
* the pooled, projected embedding of encoder 2 alone (``text_embeds``, (B, projection_dim));
* the size and crop conditions (Sec. 2.2, "micro-conditioning"): ``time_ids`` =
  original_size + crops_coords_top_left + target_size = (h_orig, w_orig, top, left, h, w), by
  default (H, W, 0, 0, H, W) for an H x W image (``_get_add_time_ids``).

The UNet (``addition_embed_type="text_time"``) takes ``text_embeds`` and ``time_ids`` as
``added_cond_kwargs``: diffkit's :class:`~.denoiser.DiffusersNet` routes the ``cond`` keys of those
names there. Classifier-free guidance is diffkit's :class:`~diffkit.guidance.ClassifierFreeGuidance`
with the null half's context and pooled embedding (``null_context`` and ``null_cond``); with no
negative prompt and ``force_zeros_for_empty_prompt`` (model_index.json, True by default) both are
zeros, otherwise the negative (or empty) prompt's embeddings; the null half's ``time_ids`` are the
prompt's unless ``negative_original_size`` and ``negative_target_size`` are given (``prompt_guidance(img2img=True)``:
the img2img / inpainting pipelines' rule, either negative alone, with the prompt's crop). The default
guidance scale is the pipeline's s = 5. Editing (:mod:`diffkit.latent_editing` with :meth:`prompt_guidance`'s
denoiser and cond, time ids of the images' size): ``latent_img2img`` is ``StableDiffusionXLImg2ImgPipeline`` and
``latent_inpaint`` is ``StableDiffusionXLInpaintPipeline`` with the 4-channel base UNet (binarised mask, nearest
to the latent size; the kept region re-noised to the next timestep after each step; strength 1 from pure noise), and
with a 9-channel SD-XL inpainting UNet (``diffusers/stable-diffusion-xl-1.0-inpainting-0.1``, loaded with
``inpainting=True``) Stable Diffusion's 9-channel path (:mod:`.sd_inpaint`: latents, mask and masked-image latents
in, nothing replaced), the cond adding ``text_embeds`` and ``time_ids``; only in a base-style folder (no aesthetic
scores). Defaults differing from that pipeline's: strength 1 (its 0.9999), guidance 5 (its 7.5).

A refiner folder (``StableDiffusionXLImg2ImgPipeline`` of the refiner: no ``text_encoder`` / ``tokenizer``,
``requires_aesthetics_score``) loads too (:attr:`StableDiffusionXL.is_refiner`): the context and pooled embedding of
``text_encoder_2`` alone, time ids original_size + crops_coords_top_left + (aesthetic_score,)
(:meth:`StableDiffusionXL.aesthetic_time_ids`; 6 and 2.5 for the null half by default); it edits images or the
base's latents (``denoising_start``, the hand-over of :mod:`.sd_xl_refiner`), never from noise.

Latent consistency and TCD sampling (an LCMScheduler or TCDScheduler folder, a UNet with ``time_cond_proj_dim``
and an LCMScheduler as latent-consistency/lcm-sdxl's, ``scheduler="lcm"`` / ``"tcd"``) is SD 1.x's (:mod:`.lcm`,
:mod:`.sd_scheduler`): :meth:`prompt_guidance` adds the SD-XL conditioning to the guidance-input model
(:meth:`~.stable_diffusion.StableDiffusion.weight_input_guidance`) or to classifier-free guidance.

Refused in one line (:func:`load_sd_xl`): UNets with a guidance input without an LCMScheduler, a 9-channel
inpainting UNet without ``inpainting`` or in a refiner-style folder, VAEs with ``latents_mean`` / ``latents_std``,
LoRA files or textual inversions on a refiner folder, and
(after loading) a UNet whose widths do not fit the encoders. LoRA files (``unet.`` / ``text_encoder.`` /
``text_encoder_2.`` or kohya's ``lora_unet_`` / ``lora_te1_`` / ``lora_te2_``, :mod:`.sd_lora`) are merged
into the UNet and both text encoders, and SD-XL textual-inversion files (``clip_l`` and ``clip_g``,
:mod:`.sd_textual_inversion`) added to both tokenizers and text encoders, as diffusers' ``load_lora_weights``
+ ``fuse_lora`` and ``load_textual_inversion`` do. ``clip_skip`` (``hidden_states[-(N + 2)]`` of both encoders;
the prompts only) and ``prompt_2`` / ``negative_prompt_2`` (encoder 2's text) are the pipeline's
(:mod:`.sd_prompts`).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, read_json_object
from . import from_pretrained, library_progress_bars, require
from .lcm import LCM_LORA_GUIDANCE
from .stable_diffusion import (StableDiffusion, check_components, check_stable_diffusion_unet, negative_prompts,
                               prompt_list)

XL_PIPELINE_GUIDANCE = 5.0  # StableDiffusionXLPipeline's default guidance_scale s (w = 4)
XL_COMPONENTS = ("text_encoder_2", "tokenizer_2")  # besides stable_diffusion.COMPONENTS
MICRO_CONDITIONS = ("original_size", "crops_coords_top_left", "target_size", "negative_original_size",
                    "negative_crops_coords_top_left", "negative_target_size")
AESTHETIC_CONDITIONS = ("aesthetic_score", "negative_aesthetic_score")  # a refiner's (requires_aesthetics_score)
AESTHETIC_DEFAULTS = (6.0, 2.5)  # StableDiffusionXLImg2ImgPipeline's aesthetic_score, negative_aesthetic_score


@dataclass
class StableDiffusionXL(StableDiffusion):
    """The loaded components of an SD-XL folder (see :func:`load_sd_xl`): those of
    :class:`~.stable_diffusion.StableDiffusion` and the second text encoder and tokenizer. A refiner
    (:attr:`is_refiner`) has no ``text_encoder`` / ``tokenizer`` (None) and ``requires_aesthetics_score``."""

    text_encoder_2: object = None
    tokenizer_2: object = None
    force_zeros_for_empty_prompt: bool = True
    requires_aesthetics_score: bool = False  # model_index.json: time ids with aesthetic scores (a refiner's UNet)
    is_cosxl_edit: bool = False  # model_index.json: InstructPix2Pix image latents times scaling_factor

    @property
    def is_refiner(self) -> bool:
        """A refiner-style folder (StableDiffusionXLImg2ImgPipeline of the refiner): ``requires_aesthetics_score``
        or no ``text_encoder``; it edits images (img2img, ``denoising_start``), not text to image."""
        return self.requires_aesthetics_score or self.text_encoder is None

    @property
    def default_guidance_scale(self) -> float:
        """StableDiffusionXLPipeline's default s = 5 (also for an LCM UNet with a guidance input: the pipeline
        embeds s - 1); 1 (no guidance) for an LCMScheduler folder without one or a scheduler override, as for
        SD 1.x (:attr:`~.stable_diffusion.StableDiffusion.default_guidance_scale`)."""
        lcm_lora = (self.consistency is not None or self.scheduler_override) and not self.guidance_embedding_dim
        return LCM_LORA_GUIDANCE if lcm_lora else XL_PIPELINE_GUIDANCE

    # ------------------------------------------------------------------ prompts
    def encode_prompts_xl(self, prompts: Sequence[str], prompts_2=None, clip_skip: Optional[int] = None) -> tuple:
        """(context (B, L, d_1 + d_2), pooled (B, projection_dim)) as the pipeline's ``encode_prompt``:
        each tokenizer pads to its ``model_max_length`` and truncates, each encoder's penultimate hidden states
        (``clip_skip`` N: N layers lower), concatenated; the pooled, projected output of encoder 2. ``prompts_2``:
        encoder 2's texts (default ``prompts``; :func:`.sd_prompts.second_prompts`). A multi-vector
        textual-inversion token is expanded first, for each tokenizer (the pipeline's ``maybe_convert_prompt``)."""
        from .sd_prompts import check_clip_skip, layer_counts, second_prompts, xl_layer
        from .sd_textual_inversion import expand_prompt
        prompts = prompt_list(prompts)
        refiner = self.text_encoder is None  # text_encoder_2 alone, given the prompts (the pipeline's encode_prompt)
        encoders = [self.text_encoder_2] if refiner else [self.text_encoder, self.text_encoder_2]
        clip_skip = check_clip_skip(clip_skip, layer_counts(encoders))
        states = []
        for texts, tokenizer, encoder in ((prompts, self.tokenizer, self.text_encoder),
                                          (prompts if refiner else second_prompts(prompts_2, prompts), self.tokenizer_2,
                                           self.text_encoder_2)):
            if encoder is None:
                continue
            tokens = tokenizer([expand_prompt(p, tokenizer, self.prompt_expansions) for p in texts],
                               padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                               return_tensors="pt")
            with torch.no_grad():
                out = encoder(tokens.input_ids.to(self.device), output_hidden_states=True)
            states.append(out.hidden_states[xl_layer(clip_skip)])
        return torch.cat(states, dim=-1).to(self.dtype), out.text_embeds.to(self.dtype)

    def encode_prompts(self, prompts: Sequence[str], clip_skip: Optional[int] = None) -> torch.Tensor:
        """The cross-attention context of :meth:`encode_prompts_xl` alone."""
        return self.encode_prompts_xl(prompts, clip_skip=clip_skip)[0]

    def time_ids(self, original_size, crops_coords_top_left, target_size) -> torch.Tensor:
        """The size conditions (6,) = original_size + crops_coords_top_left + target_size (Podell et
        al. 2023, Sec. 2.2; the pipeline's ``_get_add_time_ids``), each a pair of integers."""
        values = []
        for name, pair in (("original_size", original_size), ("crops_coords_top_left", crops_coords_top_left),
                           ("target_size", target_size)):
            if (not isinstance(pair, (tuple, list)) or len(pair) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in pair)):
                raise DiffkitError(f"{name}={pair!r} is not allowed; give a pair of integers >= 0 "
                                   f"(height, width) or (top, left)")
            values += list(pair)
        return torch.tensor(values, dtype=self.dtype, device=self.device)

    def aesthetic_time_ids(self, original_size, crops_coords_top_left, aesthetic_score) -> torch.Tensor:
        """A refiner's conditions (5,) = original_size + crops_coords_top_left + (aesthetic_score,)
        (StableDiffusionXLImg2ImgPipeline's ``_get_add_time_ids`` with ``requires_aesthetics_score``)."""
        if isinstance(aesthetic_score, bool) or not isinstance(aesthetic_score, (int, float)) \
                or not math.isfinite(aesthetic_score):
            raise DiffkitError(f"aesthetic score {aesthetic_score!r} is not allowed; give a finite number (the "
                               f"pipeline's defaults: {AESTHETIC_DEFAULTS[0]:g}, negative {AESTHETIC_DEFAULTS[1]:g})")
        size = self.time_ids(original_size, crops_coords_top_left, (0, 0))[:4]
        return torch.cat([size, torch.tensor([float(aesthetic_score)], dtype=self.dtype, device=self.device)])

    def _time_id_pair(self, micro: dict, size: tuple, img2img: bool = False) -> tuple:
        """(time ids, the null half's) of :meth:`prompt_guidance` (``micro``: the given conditions; ``img2img``:
        the img2img / inpainting pipelines' null half, :meth:`_img2img_null_ids`)."""
        if self.requires_aesthetics_score:  # the img2img pipeline's refiner branch: no target size
            given = [key for key in ("target_size", "negative_target_size") if key in micro]
            if given:
                raise DiffkitError(f"{given[0]}={micro[given[0]]!r} is not allowed: this refiner's UNet "
                                   f"(requires_aesthetics_score) takes original_size, crops_coords_top_left and "
                                   f"{' and '.join(AESTHETIC_CONDITIONS)}, no target size")
            original = micro.get("original_size", size)
            ids = self.aesthetic_time_ids(original, micro.get("crops_coords_top_left", (0, 0)),
                                          micro.get("aesthetic_score", AESTHETIC_DEFAULTS[0]))
            null_ids = self.aesthetic_time_ids(micro.get("negative_original_size", original),
                                               micro.get("negative_crops_coords_top_left", (0, 0)),
                                               micro.get("negative_aesthetic_score", AESTHETIC_DEFAULTS[1]))
            return ids, null_ids
        scores = [key for key in AESTHETIC_CONDITIONS if key in micro]
        if scores:
            raise DiffkitError(f"{scores[0]}={micro[scores[0]]!r} is not allowed: aesthetic scores condition a "
                               f"refiner's UNet (requires_aesthetics_score in model_index.json); this folder's UNet "
                               f"takes target_size instead")
        ids = self.time_ids(micro.get("original_size", size), micro.get("crops_coords_top_left", (0, 0)),
                            micro.get("target_size", size))
        if img2img:
            return ids, self._img2img_null_ids(micro, size)
        null_ids = ids
        if micro.get("negative_original_size") is not None and micro.get("negative_target_size") is not None:
            null_ids = self.time_ids(micro["negative_original_size"],
                                     micro.get("negative_crops_coords_top_left", (0, 0)), micro["negative_target_size"])
        elif any(micro.get(key) is not None for key in MICRO_CONDITIONS[3:]):
            given = ", ".join(f"{key}={micro[key]!r}" for key in MICRO_CONDITIONS[3:] if micro.get(key) is not None)
            raise DiffkitError(f"{given} is not allowed alone: negative size conditions need both "
                               f"negative_original_size and negative_target_size (the pipeline ignores them otherwise)")
        return ids, null_ids

    def _img2img_null_ids(self, micro: dict, size: tuple) -> torch.Tensor:
        """The null half's time ids of StableDiffusionXLImg2ImgPipeline / StableDiffusionXLInpaintPipeline on a UNet
        without aesthetic scores (their ``_get_add_time_ids``): negative_original_size (default original_size) +
        the prompt's crops_coords_top_left + negative_target_size (default target_size), each negative alone too;
        ``negative_crops_coords_top_left``, which they ignore there, in one line."""
        if micro.get("negative_crops_coords_top_left") is not None:
            raise DiffkitError(f"negative_crops_coords_top_left={micro['negative_crops_coords_top_left']!r} is not "
                               f"allowed in img2img / inpainting on this folder: StableDiffusionXLImg2ImgPipeline and "
                               f"StableDiffusionXLInpaintPipeline ignore it on a UNet without aesthetic scores (the "
                               f"null half takes crops_coords_top_left)")
        original, target = micro.get("original_size", size), micro.get("target_size", size)
        return self.time_ids(micro.get("negative_original_size", original), micro.get("crops_coords_top_left", (0, 0)),
                             micro.get("negative_target_size", target))

    def prompt_guidance(self, prompts: list, negative_prompt, guidance_scale: float, convention: str,
                        guidance_rescale: float, image_size: tuple = None, micro_conditioning=None,
                        clip_skip: Optional[int] = None, prompt_2=None, negative_prompt_2=None,
                        apg: Optional[dict] = None, img2img: bool = False) -> tuple:
        """(denoiser, cond) of :func:`~.stable_diffusion.text_to_image` for SD-XL: cond holds
        ``context``, ``text_embeds`` and ``time_ids`` (and the labels marking the conditional half);
        the guided denoiser holds the null half's (see the module docstring). ``micro_conditioning``:
        a dict of the pipeline's ``original_size``, ``crops_coords_top_left``, ``target_size`` and
        their ``negative_`` forms (defaults: the image size ``image_size``, (0, 0), the image size); for a
        refiner (``requires_aesthetics_score``) ``aesthetic_score`` / ``negative_aesthetic_score`` (6, 2.5)
        instead of the target sizes (:meth:`aesthetic_time_ids`; the null half: ``negative_original_size``,
        default original_size, and ``negative_crops_coords_top_left``, default (0, 0), as the img2img pipeline).
        ``clip_skip`` (the prompts only), ``prompt_2``, ``negative_prompt_2`` (not on a refiner: its one encoder
        gets the prompts): :mod:`.sd_prompts`. ``apg``: as the base class's. ``img2img``: the null half's time ids
        of the img2img / inpainting pipelines (:meth:`_img2img_null_ids`; a refiner's are the same either way)
        instead of the text-to-image pipeline's (both negatives, or none, with their own crops)."""
        from .sd_prompts import refuse_second_prompts, second_prompts
        if self.text_encoder is None:
            refuse_second_prompts(prompt_2, negative_prompt_2)
        micro = dict(micro_conditioning or {})
        unknown = sorted(set(micro) - set(MICRO_CONDITIONS + AESTHETIC_CONDITIONS))
        if unknown:
            raise DiffkitError(f"micro_conditioning keys {unknown} are not allowed; allowed: "
                               f"{', '.join(MICRO_CONDITIONS + AESTHETIC_CONDITIONS)}")
        micro = {key: value for key, value in micro.items() if value is not None}  # None: the default, as the pipeline
        ids, null_ids = self._time_id_pair(micro, tuple(image_size), img2img)
        weighted = self.weight_input_guidance(guidance_scale, convention, negative_prompt, guidance_rescale,
                                              negative_prompt_2, apg)
        context, pooled = self.encode_prompts_xl(prompts, prompt_2, clip_skip)
        if negative_prompt is None and self.force_zeros_for_empty_prompt:  # the pipeline's zero_out_negative_prompt
            _zeroed_null_half(negative_prompt_2)
            null_context, null_pooled = torch.zeros_like(context[:1]), torch.zeros_like(pooled[:1])
        else:  # one row for a prompt shared by all: the wrapper broadcasts it to any slice (diffkit edit)
            shared = all(p is None or isinstance(p, str) for p in (negative_prompt, negative_prompt_2))
            negatives = [negative_prompt or ""] if shared else negative_prompts(negative_prompt, len(prompts))
            negatives_2 = second_prompts(negative_prompt_2, negatives, "negative_prompt_2")
            null_context, null_pooled = self.encode_prompts_xl(negatives, negatives_2)  # no clip_skip: the pipeline
            # encodes the null half from hidden_states[-2] whatever clip_skip
        denoiser = weighted if weighted is not None else self.guided(  # weighted: an LCM UNet's w input
            guidance_scale, {"context": null_context, "text_embeds": null_pooled, "time_ids": null_ids[None]},
            convention, rescale=guidance_rescale, **(apg or {}))
        batch = context.shape[0]
        return denoiser, {**self.cond(context), "text_embeds": pooled, "time_ids": ids.expand(batch, -1)}

    def guided(self, guidance_scale: float, null: dict, convention: str = "diffusers", **options):
        """Classifier-free guidance with the null half's ``null = {"context", "text_embeds",
        "time_ids"}`` (:meth:`prompt_guidance` builds both); call it with that method's cond."""
        if not isinstance(null, dict) or "context" not in null:
            raise DiffkitError("an SD-XL folder's guidance needs the null half's context, text_embeds and time_ids: "
                               "use prompt_guidance() (text_to_image does)")
        extra = {key: value for key, value in null.items() if key != "context"}
        return super().guided(guidance_scale, null["context"], convention, null_cond=extra, **options)

    # ------------------------------------------------------------------ images
    @contextlib.contextmanager
    def _upcast_vae(self):
        """The pipelines' upcast: a float16 VAE with ``force_upcast`` runs in float32 (its float16
        weights), and is float16 again afterwards."""
        upcast = self.vae.dtype == torch.float16 and self.vae.config.get("force_upcast", False)
        if upcast:
            self.vae.to(torch.float32)
        try:
            yield
        finally:
            if upcast:
                self.vae.to(torch.float16)

    def encode(self, images: torch.Tensor, generator=None, sample: bool = False) -> torch.Tensor:
        """z = scaling_factor E(x) (:meth:`~.stable_diffusion.StableDiffusion.encode`); a float16 VAE with
        ``force_upcast`` encodes in float32, as StableDiffusionXLImg2ImgPipeline's ``prepare_latents``."""
        with self._upcast_vae():
            return super().encode(images, generator, sample)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """x = D(z / scaling_factor) (0.13025 for SD-XL's VAE); a float16 VAE with ``force_upcast``
        decodes in float32, as the pipeline upcasts it."""
        with self._upcast_vae():
            return super().decode(latents)


def _zeroed_null_half(negative_prompt_2) -> None:
    """A one-line error for ``negative_prompt_2`` where the null half is zeros (no ``negative_prompt``,
    ``force_zeros_for_empty_prompt``): the pipeline ignores it there."""
    if negative_prompt_2:
        raise DiffkitError(f"negative_prompt_2={negative_prompt_2!r} is not allowed without negative_prompt on this "
                           f"folder: its null half is zeros (force_zeros_for_empty_prompt), as the pipeline's, which "
                           f"ignores negative_prompt_2 then; give negative_prompt too")


def _index(path: Union[str, Path]) -> Optional[dict]:
    index_file = Path(path) / "model_index.json"
    if not index_file.is_file():
        return None
    try:
        return read_json_object(index_file)
    except DiffkitError:
        return None


def pipeline_class(path) -> Optional[str]:
    """The pipeline class a diffusers folder's ``model_index.json`` names (``_class_name``), or None (no such file,
    not a path, not a JSON object); what the ``is_..._folder`` checks of the folder kinds read."""
    try:
        index = _index(path)
    except (TypeError, OSError):
        return None
    return None if index is None or index.get("_class_name") is None else str(index["_class_name"])


def is_sd_xl_folder(path: Union[str, Path]) -> bool:
    """True for a diffusers folder of an SD-XL pipeline: ``model_index.json`` names a
    ``StableDiffusionXL...`` class or a ``text_encoder_2`` and a ``unet`` (an SD3 folder has a ``text_encoder_2``
    and a ``transformer``: :func:`.sd3.is_sd3_folder`)."""
    index = _index(path)
    return index is not None and (str(index.get("_class_name", "")).startswith("StableDiffusionXL")
                                  or ("text_encoder_2" in index and "transformer" not in index))


def check_sd_xl_unet(config: dict, directory, lcm: bool = False, inpainting: bool = False, *,
                     instruct_pix2pix: bool = False) -> None:
    """The SD-XL UNet2DConditionModel :func:`text_to_image` drives: ``addition_embed_type="text_time"``
    and otherwise what :func:`~.stable_diffusion.check_stable_diffusion_unet` allows (an LCM's guidance input
    ``time_cond_proj_dim`` with an LCMScheduler, ``lcm``; a 9-channel SD-XL inpainting UNet with ``inpainting``,
    :mod:`.sd_inpaint`; an 8-channel InstructPix2Pix UNet with ``instruct_pix2pix``, :mod:`.sd_instruct_pix2pix`)."""
    config = required_unet_key(config, "addition_embed_type", "text_time", directory, "an SD-XL",
                               "pooled text and size conditions")
    check_stable_diffusion_unet(config, directory, lcm, inpainting, instruct_pix2pix=instruct_pix2pix)


def required_unet_key(config: dict, key: str, want: str, directory, kind: str, why: str) -> dict:
    """One line unless the UNet config's ``key`` is ``want`` (``kind``: "an SD-XL", "a Kolors"; ``why``: what it
    gives); else the config with ``key`` cleared, for the check of the UNet it extends."""
    if config.get(key) != want:
        raise DiffkitError(f"{directory} is {kind} folder whose UNet has {key}={config.get(key)!r}; allowed: "
                           f"{want!r} ({why})")
    return {**config, key: None}


def load_sd_xl(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32, progress: bool = True,
               lora=None, textual_inversion=None, scheduler: Optional[str] = None,
               inpainting: bool = False, instruct_pix2pix: bool = False, unet_class=None,
               check_unet=None) -> StableDiffusionXL:
    """Load an SD-XL diffusers folder (``StableDiffusionXLPipeline``; never downloads). What diffkit
    does not drive is refused in one line before any weight is read (module docstring). ``lora``,
    ``textual_inversion``, ``scheduler`` (``"lcm"`` / ``"tcd"``, :mod:`.sd_scheduler`): as
    :func:`~.stable_diffusion.load_stable_diffusion`'s (files read and checked before the folder loads);
    ``inpainting``: allow a 9-channel SD-XL inpainting UNet in a base-style folder (:mod:`.sd_inpaint`);
    ``instruct_pix2pix``: an 8-channel InstructPix2Pix UNet there (StableDiffusionXLInstructPix2PixPipeline,
    :mod:`.sd_instruct_pix2pix`; ``is_cosxl_edit`` read from model_index.json). ``unet_class``, ``check_unet``
    (default :func:`check_sd_xl_unet`): :func:`~.stable_diffusion._load_stable_diffusion`'s (an AnimateDiff SD-XL
    folder's UNetMotionModel, :mod:`.animatediff_sdxl`)."""
    from .sd_lora import merge_sd_loras, read_sd_loras
    from .sd_textual_inversion import add_textual_inversions, read_textual_inversions
    from .stable_diffusion import _load_stable_diffusion
    directory = Path(directory)
    index = _index(directory) or {}
    with_text_encoder = bool((index.get("text_encoder") or [None])[0])  # a refiner: text_encoder_2 alone
    aesthetics = bool(index.get("requires_aesthetics_score", False))
    if (lora or textual_inversion) and (aesthetics or not with_text_encoder):
        raise DiffkitError(f"{directory} is an SD-XL refiner-style folder (text_encoder_2 alone, "
                           f"requires_aesthetics_score={aesthetics}); --lora / --textual-inversion are offered for "
                           f"SD-XL base folders (text_encoder and text_encoder_2)")
    check_components(directory, index, XL_COMPONENTS, "SD-XL")
    if inpainting and (aesthetics or not with_text_encoder):
        _refuse_refiner_inpainting(directory, aesthetics)
    if instruct_pix2pix and (aesthetics or not with_text_encoder):
        raise DiffkitError(f"{directory} is an SD-XL refiner-style folder (text_encoder_2 alone or "
                           f"requires_aesthetics_score={aesthetics}) with an InstructPix2Pix UNet; allowed: an "
                           f"8-channel UNet in a base-style folder (text_encoder and text_encoder_2, no aesthetic "
                           f"scores)")
    loras = read_sd_loras(lora) if lora else []
    embeddings = read_textual_inversions(textual_inversion) if textual_inversion else []
    check_vae_latents(directory)
    transformers = require("transformers")
    with library_progress_bars(progress):
        sd = _load_stable_diffusion(directory, device, dtype, inpainting, check_unet=check_unet or check_sd_xl_unet,
                                    scheduler=scheduler, text_encoder=with_text_encoder,
                                    instruct_pix2pix=instruct_pix2pix, unet_class=unet_class)
        common = {"local_files_only": True, "torch_dtype": dtype, "use_safetensors": True}
        text_cls = getattr(transformers, str(index["text_encoder_2"][1]), transformers.CLIPTextModelWithProjection)
        text_encoder_2 = from_pretrained(text_cls, directory / "text_encoder_2", **common)
        tok_cls = getattr(transformers, str(index["tokenizer_2"][1]), transformers.CLIPTokenizer)
        tokenizer_2 = from_pretrained(tok_cls, directory / "tokenizer_2", local_files_only=True)
    text_encoder_2.to(sd.device).eval().requires_grad_(False)
    xl = StableDiffusionXL(**{f.name: getattr(sd, f.name) for f in fields(sd)}, text_encoder_2=text_encoder_2,
                           tokenizer_2=tokenizer_2,
                           force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", True)),
                           requires_aesthetics_score=aesthetics,
                           is_cosxl_edit=bool(index.get("is_cosxl_edit", False)))
    _check_dimensions(xl, directory)
    add_textual_inversions(xl, embeddings)  # clip_l / clip_g into both tokenizers and text encoders
    merge_sd_loras(xl, loras)  # unet., text_encoder., text_encoder_2. (kohya lora_unet_, lora_te1_, lora_te2_)
    return xl


def check_vae_latents(directory: Path) -> None:
    """One line for a VAE with ``latents_mean`` / ``latents_std`` (latents normalised per channel): diffkit decodes
    z / scaling_factor only (SD-XL's and Kolors' pipelines alike)."""
    vae_config = read_json_object(directory / "vae" / "config.json", "vae config") \
        if (directory / "vae" / "config.json").is_file() else {}
    for key in ("latents_mean", "latents_std"):
        if vae_config.get(key) is not None:
            raise DiffkitError(f"{directory} has a VAE with {key} (latents normalised per channel); diffkit decodes "
                               f"z / scaling_factor only")


def _refuse_refiner_inpainting(directory: Path, aesthetics: bool) -> None:
    """A 9-channel UNet in a refiner-style folder: refused in one line (only the base-style inpainting folder,
    ``requires_aesthetics_score`` false, is compared with StableDiffusionXLInpaintPipeline)."""
    from .sd_inpaint import is_inpainting_folder
    if is_inpainting_folder(directory):
        raise DiffkitError(f"{directory} is an SD-XL refiner-style folder (text_encoder_2 alone or "
                           f"requires_aesthetics_score={aesthetics}) with an inpainting UNet; allowed: a 9-channel "
                           f"UNet in a base-style folder (text_encoder and text_encoder_2, no aesthetic scores)")


def _check_dimensions(xl: StableDiffusionXL, directory: Path) -> None:
    """The UNet's inputs fit the encoders: cross_attention_dim = d_1 + d_2 (d_2 alone for a refiner) and the
    added embedding's input = n * addition_time_embed_dim + projection_dim, n = 6 time ids (5 with
    ``requires_aesthetics_score``; the pipelines' ``_get_add_time_ids`` check)."""
    config = xl.unet.config
    d1 = 0 if xl.text_encoder is None else xl.text_encoder.config.hidden_size
    d2 = xl.text_encoder_2.config.hidden_size
    projection = getattr(xl.text_encoder_2.config, "projection_dim", None)
    if config.cross_attention_dim != d1 + d2:
        sizes = f"{d1} + {d2}" if d1 else f"{d2} (text_encoder_2 alone)"
        raise DiffkitError(f"{directory}: the UNet's cross_attention_dim={config.cross_attention_dim} is not the text "
                           f"encoders' hidden sizes {sizes}")
    count = 5 if xl.requires_aesthetics_score else 6
    passed = count * int(config.addition_time_embed_dim or 0) + int(projection or 0)
    expected = xl.unet.add_embedding.linear_1.in_features
    if passed != expected:
        raise DiffkitError(f"{directory}: the UNet's added embedding takes {expected} inputs, not {count} * "
                           f"addition_time_embed_dim + projection_dim = {passed} (requires_aesthetics_score="
                           f"{xl.requires_aesthetics_score} in model_index.json: {count} time ids)")


__all__ = ["StableDiffusionXL", "load_sd_xl", "is_sd_xl_folder", "check_sd_xl_unet", "XL_PIPELINE_GUIDANCE"]
