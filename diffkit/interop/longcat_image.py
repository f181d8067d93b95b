"""A LongCat-Image diffusers folder (``LongCatImagePipeline`` / ``LongCatImageEditPipeline``, diffusers 0.42.1),
sampled and edited with any diffkit sampler.

LongCat-Image (Meituan LongCat team 2025, "LongCat-Image Technical Report") is a FLUX.1-shaped rectified-flow MMDiT
(``LongCatImageTransformer2DModel``: FLUX.1's double / single blocks, no pooled text, no guidance embedding; x_s =
(1 - s) x_0 + s eps, velocity u = eps - x_0, Esser et al. 2024, eq. 1) on FLUX.1's 16-channel VAE, conditioned on
the last hidden states of a Qwen2.5-VL language model. Everything FLUX.1-shaped is :mod:`.flux`'s, reused through
:class:`LongCatImage` (a :class:`.chroma.Chroma`, so a :class:`.flux.Flux`): the 2 x 2 packing, the VAE's
``shift_factor`` / ``scaling_factor``, the random draws (z in (B, C, h, w) from sample i's generator, packed), the
grid (``set_timesteps(sigmas=linspace(1, 1/N, N), mu)``, mu = ``calculate_shift`` of the packed length with
FLUX.1's defaults, :meth:`.flux.Flux.scheduler_grid`) and flow Euler (``ddim``) as the pipeline's step. What is
LongCat-Image's own:

* prompts (``_encode_prompt``): each split at quotation marks (the pipeline's own ``split_quotation``), quoted
  parts tokenised character by character, the rest as is; cut to 512 tokens and padded to exactly 512
  (``tokenizer.pad``); the template's prefix and suffix tokens around them (:data:`PREFIX`, :data:`SUFFIX`), the
  language model's **last** hidden states under that mask, the prefix and suffix states dropped: (B, 512, d), no
  mask to the transformer (its attention sees the padding states too).
* position ids (``prepare_pos_ids``, :func:`position_ids`): 3-axis RoPE ids (modality, row, column); text token i
  (0, i, i), the noisy latents' patch (r, c) (1, L + r, L + c) after the L text tokens; an edit's image latents
  (2, L + r, L + c).
* guidance: CFG u = u_n + s (u_c - u_n) for s > 1 (default 4.5, diffusers' convention; Ho & Salimans 2022, eq. 6)
  against the negative prompt (default ""), and for text-to-image the pipeline's ``enable_cfg_renorm`` (on by
  default): u scaled per packed token by clamp(||u_c|| / (||u|| + 1e-8), ``cfg_renorm_min``, 1)
  (:func:`diffkit.guidance.norm_matched_cfg`); the edit pipeline has no renormalisation.
* defaults: 50 steps, 1024 x 1024.

Not done: the pipeline's prompt rewriting (``enable_prompt_rewrite``, on by default there: the Qwen2.5-VL model
*generates* a longer prompt first); diffkit encodes the prompt as given, i.e. ``enable_prompt_rewrite=False``.

The edit pipeline (:func:`edit_image`): the input's aspect ratio at 1024^2 pixels, each side rounded *up* to a
multiple of 16 (``calculate_dimensions``), the image resized there by PIL's Lanczos filter; the prompt sees it at
half that size (the edit template's vision tokens, Qwen2.5-VL's patches), its states kept from ``<|vision_start|>``
on (image and text); the VAE latents of the full-size image (the posterior's mode) follow z_t's tokens, the velocity
kept on z_t's. One prompt per call (the pipeline's batch 1).

Refused in one line before any weight is read (:func:`check_longcat_folder`): another pipeline class, a missing
component or one of another class, a transformer whose input is not 4 x the VAE's 16 latent channels (the
pipelines draw 16), a scheduler option the flow Euler loop does not take.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, check_choice
from ..guidance import pipeline_scale
from . import model_dtype, require
from .chroma import Chroma
from .flow_latents import frozen_on, load_flow_parts
from .flux import FluxNet, check_flux_scheduler, latent_image_ids, pack_latents, unpack_latents

LONGCAT_PIPELINES = ("LongCatImagePipeline", "LongCatImageEditPipeline")
EDIT_PIPELINE = "LongCatImageEditPipeline"
LONGCAT_CLASSES = {"transformer": ("LongCatImageTransformer2DModel",), "vae": ("AutoencoderKL",),
                   "text_encoder": ("Qwen2_5_VLForConditionalGeneration",),
                   "tokenizer": ("Qwen2Tokenizer", "Qwen2TokenizerFast"), "text_processor": ("Qwen2VLProcessor",),
                   "scheduler": ("FlowMatchEulerDiscreteScheduler",)}
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "text_processor", "scheduler")
PREFIX = ("<|im_start|>system\nAs an image captioning expert, generate a descriptive text prompt based on an image "
          "content, suitable for input to a text-to-image model.<|im_end|>\n<|im_start|>user\n")  # the pipeline's
EDIT_PREFIX = ("<|im_start|>system\nAs an image editing expert, first analyze the content and attributes of the input "
               "image(s). Then, based on the user's editing instructions, clearly and precisely determine how to "
               "modify the given image(s), ensuring that only the specified parts are altered and all other aspects "
               "remain consistent with the original(s).<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|>"
               "<|vision_end|>")  # LongCatImageEditPipeline's prompt_template_encode_prefix
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
IMAGE_TOKEN = "<|image_pad|>"
TOKENS = 512  # tokenizer_max_length: every prompt cut and padded to it
LONGCAT_GUIDANCE = 4.5  # both pipelines' default guidance_scale
LONGCAT_STEPS = 50
EDIT_AREA = 1024 * 1024  # calculate_dimensions' target area


def position_ids(modality: int, start: int, count: Optional[int] = None, h: Optional[int] = None,
                 w: Optional[int] = None, device=None) -> torch.Tensor:
    """``prepare_pos_ids``' 3-axis RoPE ids: ``count`` text tokens (modality, start + i, start + i), or the patch grid
    of latents h x w ((h/2)(w/2) rows (modality, start + r, start + c), :func:`.flux.latent_image_ids`'s order)."""
    if count is not None:
        ids = torch.arange(count, dtype=torch.float32)[:, None].expand(count, 3) + start
    else:
        ids = latent_image_ids(h, w) + start
    ids = ids.clone()
    ids[:, 0] = modality
    return ids.to(device)


class LongCatImageNet(FluxNet):
    """``net(z, t, context, null_context=None, reference=None)`` over a ``LongCatImageTransformer2DModel`` on
    unpacked latents z (B, C, h, w): packed, ``timestep`` t / 1000, the text states with their ids
    (:func:`position_ids`); ``reference`` (B or 1, C, h, w): an edit's image latents, packed after z's tokens, the
    prediction kept on z's. With ``scale`` s > 1 and ``null_context``: CFG on the packed predictions, renormalised
    per token when ``renorm_min`` is a number (:func:`diffkit.guidance.norm_matched_cfg`); the velocity unpacked, in
    z's dtype."""

    def __init__(self, transformer, scale: float = 1.0, renorm_min: Optional[float] = None):
        super().__init__(transformer)
        self.scale, self.renorm_min = float(scale), renorm_min

    def _call(self, packed, timestep, context, image_ids):
        b = packed.shape[0]
        return self.model(hidden_states=packed, timestep=timestep,
                          encoder_hidden_states=context.to(packed.dtype).expand(b, -1, -1),
                          txt_ids=position_ids(0, 0, context.shape[1], device=packed.device), img_ids=image_ids,
                          return_dict=False)[0]

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None,
                null_context: torch.Tensor = None, reference: torch.Tensor = None) -> torch.Tensor:
        from ..guidance import norm_matched_cfg
        if context is None:
            raise DiffkitError("a LongCat-Image transformer needs cond {'context'} (LongCatImage.prompt_guidance)")
        dtype, (b, _, h, w) = model_dtype(self.model), x.shape
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(b)
        packed, timestep, length = pack_latents(x.to(dtype)), t.to(dtype) / 1000, context.shape[1]
        tokens, ids = packed.shape[1], position_ids(1, length, h=h, w=w, device=x.device)
        if reference is not None:  # the edit pipeline's image latents after the noisy ones
            packed = torch.cat([packed, pack_latents(reference.to(packed)).expand(b, -1, -1)], dim=1)
            ids = torch.cat([ids, position_ids(2, length, h=reference.shape[2], w=reference.shape[3],
                                               device=x.device)])
        out = self._call(packed, timestep, context, ids)[:, :tokens]
        if self.scale > 1 and null_context is not None:
            renorm = self.renorm_min is not None
            out = norm_matched_cfg(out, self._call(packed, timestep, null_context, ids)[:, :tokens], self.scale,
                                   normalize=renorm, bounds=(self.renorm_min, 1.0) if renorm else None, eps=1e-8)
        return unpack_latents(out, h, w).to(x.dtype)


@dataclass
class LongCatImage(Chroma):
    """The loaded components of a LongCat-Image folder (:func:`load_longcat_image`): FLUX.1's fields with the
    Qwen2.5-VL model as ``text_encoder`` (``text_encoder_2`` / ``tokenizer_2`` None); packing, shift, grid and VAE
    are :class:`.flux.Flux`'s, the CFG scale check :class:`.chroma.Chroma`'s, prompts, ids and guidance LongCat's.
    ``image_processor``: an edit folder's Qwen2-VL image processor (``text_processor/``), else None."""

    image_processor: object = None
    guidance_hint = f"CFG for > 1, the pipeline's default {LONGCAT_GUIDANCE}"
    default_steps = LONGCAT_STEPS

    @property
    def edit(self) -> bool:
        return self.image_processor is not None

    def latent_channels(self) -> int:
        """C = in_channels / 4 (the transformer's config has no out_channels: it predicts its input's)."""
        return int(self.transformer.config.in_channels) // 4

    def network(self) -> torch.nn.Module:
        return LongCatImageNet(self.transformer)

    def _tokens(self, prompt: str) -> list:
        """The prompt's token ids as ``_encode_prompt``: quoted parts character by character, cut to 512."""
        from diffusers.pipelines.longcat_image.pipeline_longcat_image import split_quotation
        ids = []
        for part, quoted in split_quotation(prompt):
            for piece in (part if quoted else [part]):
                ids.extend(self.tokenizer(piece, add_special_tokens=False)["input_ids"])
        return ids[:TOKENS]

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: int = TOKENS, images=None) -> torch.Tensor:
        """context (B, L, d) as the pipelines' ``_encode_prompt`` (module docstring): L = 512 text states, or, with
        ``images`` (an edit folder's PIL prompt images, one per prompt), the vision and text states from
        ``<|vision_start|>`` on."""
        from .stable_diffusion import prompt_list
        if max_sequence_length != TOKENS:
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed; LongCat-Image pads every "
                               f"prompt to {TOKENS} tokens (allowed: {TOKENS})")
        prompts = prompt_list(prompts)
        padded = self.tokenizer.pad({"input_ids": [self._tokens(p) for p in prompts]}, max_length=TOKENS,
                                    padding="max_length", return_attention_mask=True, return_tensors="pt")
        prefix, inputs = PREFIX, {}
        if images is not None:  # Qwen2VLProcessor's expansion of the one image token
            pixels = self.image_processor(images=list(images), return_tensors="pt")
            count = int(pixels["image_grid_thw"].prod()) // int(self.image_processor.merge_size) ** 2
            prefix = EDIT_PREFIX.replace(IMAGE_TOKEN, IMAGE_TOKEN * count)
            inputs = {"pixel_values": pixels["pixel_values"].to(self.device, self.text_encoder.dtype),
                      "image_grid_thw": pixels["image_grid_thw"].to(self.device)}
        head = self.tokenizer(prefix, add_special_tokens=False)["input_ids"]
        tail = self.tokenizer(SUFFIX, add_special_tokens=False)["input_ids"]
        drop = head.index(self.tokenizer.convert_tokens_to_ids("<|vision_start|>")) if images is not None \
            else len(head)
        b = len(prompts)
        ids = torch.cat([torch.tensor(head).expand(b, -1), padded.input_ids, torch.tensor(tail).expand(b, -1)], 1)
        mask = torch.cat([torch.ones(b, len(head), dtype=padded.attention_mask.dtype), padded.attention_mask,
                          torch.ones(b, len(tail), dtype=padded.attention_mask.dtype)], 1)
        with torch.no_grad():
            states = self.text_encoder(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                       output_hidden_states=True, **inputs).hidden_states[-1]
        return states[:, drop:-len(tail)]

    def prompt_guidance(self, prompts, h: int, w: int, guidance_scale: Optional[float] = None,
                        negative_prompt=None, max_sequence_length: int = TOKENS, convention: str = "diffusers",
                        ip_adapter=None, images=None, reference=None, cfg_renorm_min: Optional[float] = 0.0) -> tuple:
        """(denoiser, cond) at latents h x w: the prompts' states, and for a diffusers-convention scale s > 1
        (``guidance_scale``, default 4.5; ``convention="seed"`` reads W, s = 1 + W) CFG against ``negative_prompt``
        (None: ""; one, or one per prompt), renormalised per token to [``cfg_renorm_min``, 1] of the conditional
        norm (None: not, as ``enable_cfg_renorm=False``; an edit folder: never, its pipeline has none); s <= 1:
        unguided (a negative prompt is then refused). ``images`` / ``reference``: an edit's prompt images and image
        latents (:func:`edit_image`). ``ip_adapter``: refused (the pipelines load none)."""
        from ..denoiser import Denoiser
        from .stable_diffusion import negative_prompts
        if ip_adapter is not None:
            raise DiffkitError("an IP-Adapter is not allowed for a LongCat-Image folder (its pipelines load none)")
        check_choice("convention", convention, ["diffusers", "seed"])
        self.check_guidance_scale(guidance_scale)
        if cfg_renorm_min is not None and (isinstance(cfg_renorm_min, bool) or not isinstance(
                cfg_renorm_min, (int, float)) or not 0 <= cfg_renorm_min <= 1):
            raise DiffkitError(f"cfg_renorm_min={cfg_renorm_min!r} is not allowed; give a number in [0, 1] or None "
                               f"(no renormalisation)")
        scale = LONGCAT_GUIDANCE if guidance_scale is None else float(guidance_scale)
        diffusers_scale = pipeline_scale(guidance_scale, LONGCAT_GUIDANCE, convention)
        if diffusers_scale <= 1 and negative_prompt is not None:
            raise DiffkitError(f"a negative prompt with guidance_scale={scale:g} ({convention} convention) is not "
                               f"allowed: it feeds only CFG (diffusers' scale > 1); raise the scale or drop it")
        cond, denoiser = {"context": self.encode_prompts(prompts, max_sequence_length, images)}, self.denoiser_for(h, w)
        if reference is not None:
            cond["reference"] = reference
        if diffusers_scale <= 1:
            return denoiser, cond
        negatives = negative_prompts(negative_prompt, cond["context"].shape[0])
        if len(set(negatives)) == 1:
            negatives = negatives[:1]  # one row, expanded to every sample
        cond["null_context"] = self.encode_prompts(negatives, max_sequence_length, images)
        renorm = None if self.edit else None if cfg_renorm_min is None else float(cfg_renorm_min)
        guided = Denoiser(LongCatImageNet(self.transformer, diffusers_scale, renorm), denoiser.schedule,
                          "flow_prediction")
        guided.model = self.transformer
        return guided, cond


def is_longcat_folder(path: Union[str, Path]) -> bool:
    """True for a folder whose ``model_index.json`` names one of :data:`LONGCAT_PIPELINES`."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) in LONGCAT_PIPELINES


def check_longcat_folder(directory) -> tuple:
    """(index, scheduler config) of a LongCat-Image folder that :func:`load_longcat_image` drives; anything else is a
    one-line DiffkitError (module docstring), from the JSON files alone."""
    from ..errors import read_json_object
    from .pixart import check_classes, named_index
    directory = Path(directory)
    index = named_index(directory, LONGCAT_PIPELINES, "LongCat-Image")
    check_classes(directory, index, REQUIRED, "LongCat-Image", LONGCAT_CLASSES)
    config = read_json_object(directory / "transformer" / "config.json", "transformer config")
    vae = read_json_object(directory / "vae" / "config.json", "vae config")
    channels, latents = config.get("in_channels", 64), vae.get("latent_channels", 4)
    if latents != 16 or channels != 64:
        raise DiffkitError(f"{directory}'s transformer in_channels={channels!r} and vae latent_channels={latents!r} "
                           f"are not allowed; allowed: 64 and 16 (the pipelines draw 16-channel latents)")
    return index, check_flux_scheduler(directory, index["_class_name"])


def load_longcat_image(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                       progress: bool = True) -> LongCatImage:
    """Load a LongCat-Image diffusers folder (never downloads, never unpickles); what diffkit does not drive is
    refused in one line before any weight is read (:func:`check_longcat_folder`). An edit folder's
    ``text_processor/`` image processor is read too (:func:`.qwen_image_edit.load_image_processor`)."""
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_longcat_folder(directory)
    parts = load_flow_parts(directory, index, diffusers.LongCatImageTransformer2DModel,
                            {"": "Qwen2_5_VLForConditionalGeneration"}, dtype, progress)
    device = frozen_on(parts, device)
    processor = None
    if index["_class_name"] == EDIT_PIPELINE:
        from .qwen_image_edit import load_image_processor
        processor = load_image_processor(directory, "text_processor")
    model = LongCatImage(**parts, text_encoder_2=None, tokenizer_2=None, scheduler_config=sched, device=device,
                         dtype=dtype, image_processor=processor)
    width, text = model.transformer.config.joint_attention_dim, model.text_encoder.config.text_config.hidden_size
    if width != text:
        raise DiffkitError(f"{directory}: the transformer's joint_attention_dim={width} does not fit the text "
                           f"encoder's width {text}")
    return model


def text_to_image(model: LongCatImage, prompts: Union[str, Sequence[str]], *, cfg_renorm_min: Optional[float] = 0.0,
                  guide: Optional[dict] = None, **options) -> torch.Tensor:
    """Images of a LongCat-Image folder for ``prompts`` as ``LongCatImagePipeline`` with
    ``enable_prompt_rewrite=False`` (module docstring) with any diffkit sampler: :func:`.chroma.text_to_image`'s loop
    with LongCat's prompts, ids and CFG. guidance_scale (default 4.5) / negative_prompt / convention:
    :meth:`LongCatImage.prompt_guidance`; cfg_renorm_min: the pipeline's (default 0.0; None: ``enable_cfg_renorm=
    False``); latents: unpacked z at s = 1 (B, C, h, w) (the pipeline's ``latents=`` is :func:`.flux.pack_latents`
    of it); the rest as :func:`.chroma.text_to_image` (sampler / grid, steps (default 50), seed, height / width
    (default 1024), output_range, return_latents, ...)."""
    from .chroma import text_to_image as flow_text_to_image
    if model.edit and not (guide or {}).get("images"):
        raise DiffkitError("a LongCat-Image-Edit folder edits an image (diffkit edit / edit_image); it does not "
                           "sample from a prompt alone")
    return flow_text_to_image(model, prompts, guide={"cfg_renorm_min": cfg_renorm_min, **(guide or {})}, **options)


def calculated_size(width: int, height: int, area: int = EDIT_AREA) -> tuple:
    """(width, height) of ratio ``width / height`` at ``area`` pixels, each rounded **up** to a multiple of 16
    (``LongCatImageEditPipeline``'s ``calculate_dimensions``)."""
    ratio = width / height
    new_width = math.sqrt(area * ratio)
    return tuple(int(v) if v % 16 == 0 else int((v // 16 + 1) * 16) for v in (new_width, new_width / ratio))


def edit_image(model: LongCatImage, image, prompt: str, *, area: int = EDIT_AREA, **options) -> torch.Tensor:
    """One ``image`` (PIL, or (1, 3, H, W) in [-1, 1]) edited by ``prompt`` as ``LongCatImageEditPipeline`` (module
    docstring): resized to :func:`calculated_size` at ``area`` (default 1024^2) by PIL's Lanczos filter, the prompt
    seeing it at half that size, its VAE latents (the posterior's mode) beside z_t's tokens; CFG (default 4.5, no
    renormalisation) against ``negative_prompt`` (default "", seeing the same image). ``options``:
    :func:`.chroma.text_to_image`'s (sampler, steps (default 50), guidance_scale, convention, negative_prompt, seed,
    latents (unpacked z at s = 1), output_range, return_latents, ...)."""
    from PIL import Image

    from .chroma import text_to_image as flow_text_to_image
    from .qwen_image_edit import _pil_images, _pixels
    if not model.edit:
        raise DiffkitError("edit_image needs a LongCat-Image-Edit folder (LongCatImageEditPipeline); this one is a "
                           "text-to-image folder")
    if isinstance(area, bool) or not isinstance(area, int) or area < 32 * 32:
        raise DiffkitError(f"area={area!r} is not allowed; give an integer of at least 1024 pixels")
    for key in ("height", "width", "max_sequence_length", "cfg_renorm_min"):
        if key in options:
            raise DiffkitError(f"{key} is not allowed for a LongCat-Image-Edit folder (LongCatImageEditPipeline "
                               f"takes none; the size follows the image)")
    pil = _pil_images(image)
    if len(pil) != 1 or not isinstance(prompt, str):
        raise DiffkitError(f"a LongCat-Image-Edit call edits one image by one prompt (the pipeline's batch 1); got "
                           f"{len(pil)} images")
    width, height = calculated_size(*pil[0].size, area)
    resized = pil[0].resize((width, height), resample=Image.LANCZOS)
    seen = resized.resize((width // 2, height // 2), resample=Image.LANCZOS)
    multiple = 2 * model.vae_scale_factor
    reference = model.encode(_pixels([resized]))
    return flow_text_to_image(model, [prompt], height=height // multiple * multiple,
                              width=width // multiple * multiple,
                              guide={"images": [seen], "reference": reference, "cfg_renorm_min": None}, **options)


__all__ = ["LongCatImage", "LongCatImageNet", "load_longcat_image", "is_longcat_folder", "check_longcat_folder",
           "text_to_image", "edit_image", "position_ids", "calculated_size", "LONGCAT_GUIDANCE", "LONGCAT_STEPS"]
