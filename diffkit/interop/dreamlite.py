"""A DreamLite diffusers folder (``DreamLitePipeline`` / ``DreamLiteMobilePipeline``, diffusers 0.42.1), sampled and
edited with any diffkit sampler.

DreamLite (ByteDance 2026) is a rectified flow (Esser et al. 2024, Sec. 2, eq. 1: x_s = (1 - s) x_0 + s eps,
velocity u = eps - x_0) with a mobile-sized UNet (``DreamLiteUNetModel``: SD's UNet2DConditionModel layout with
depthwise-separable resnets, GQA attention with RMS qk-norm, a ``text_proj_rms`` projection of the text states and a
``time`` embedding of the image size) on a tiny autoencoder (``AutoencoderTiny``, TAESD-style, deterministic),
conditioned on the last hidden state of a Qwen3-VL model (``Qwen3VLForConditionalGeneration``). One folder both draws
(text to image) and edits (an instruction edit: the input image seen by the prompt and placed beside the latents).
diffkit runs it on :mod:`.chroma`'s / :mod:`.flux`'s code (:class:`DreamLite` is a :class:`~.chroma.Chroma`: the
grid, flow Euler ``ddim`` as the pipeline's step, any other sampler, :func:`.chroma.text_to_image`'s loop); what is
DreamLite's own, as the pipelines' ``__call__``:

* the grid: sigmas linspace(1, 1/N, N) through the folder's scheduler with mu = ``calculate_shift`` of h w / 4 (the
  latents' h x w), FLUX.1's (:meth:`.flux.Flux.scheduler_grid`); 30 steps (Mobile: 4); the UNet is called at the
  scheduler's timestep s T as given (no / 1000), with ``time_ids`` = (width, height) in pixels.
* the UNet's input is [z_t, z_ref] side by side along the **width** (B, C, h, 2 w); its output's left half is the
  velocity. Text to image: z_ref = 0. Edit: z_ref = E(x) of the image resized to the output size (PIL Lanczos,
  ``VaeImageProcessor.preprocess``, x / 255 * 2 - 1), the tiny autoencoder's latents **unscaled** (the pipeline
  passes ``vae.encode(x).latents`` as they are; decoding reads x = D(z / scaling_factor + shift_factor)).
* prompts (``encode_prompt``): text to image, "[Generate]: {prompt}" in :data:`GENERATE_TEMPLATE`, the folder's
  ``tokenizer`` padded to the batch's longest and cut at ``max_sequence_length`` + 34 tokens (default 200); edit,
  "[Edit]: A diptych ... the left one has {prompt}" (:data:`EDIT_PREFIX`) in :data:`EDIT_TEMPLATE` with the image,
  resized to 512 x 512 (PIL Lanczos), through the ``processor`` (its image processor's ``pixel_values`` and
  ``image_grid_thw``, the ``<|image_pad|>`` repeated t h w / m^2 times, ``mm_token_type_ids`` 1 at the image tokens),
  no length limit. Qwen3-VL's last hidden state (``hidden_states[-1]``) under the attention mask; each row keeps its
  real tokens less the first 34 (edit: 64) and is zero-padded on the right, the UNet's ``encoder_attention_mask``
  marking the kept ones.
* guidance (``DreamLitePipeline``, always on): text to image, CFG u = u_neg + s (u_c - u_neg) (Ho & Salimans 2022,
  eq. 6 in diffusers' convention; s default 3.5) against ``negative_prompt`` (default "", encoded without the
  "[Generate]: " prefix); edit, the three-way guidance of Brooks et al. 2023, eq. 3: u = u_neg + s_I (u_img - u_neg)
  + s (u_c - u_img), u_neg the negative prompt with z_ref = 0, u_img the negative prompt with the image's z_ref (both
  prompts see the image; s_I = ``image_guidance_scale``, default 1.5; :class:`.omnigen.OmniGenGuidance`, one call on
  the three branches). ``DreamLiteMobilePipeline`` is guidance-distilled: one branch, no negative prompt (its scales
  are ignored by the pipeline; diffkit refuses them in one line).
* draws: z (B, C, h, w) at s = 1 from sample i's generator ``seed + i``, the pipeline's only random draw (the tiny
  autoencoder's encoding is deterministic); the size default 128 f (1024 pixels) for text to image and the input
  image's size floored to multiples of f for an edit (given height / width: the other one 128 f, as the pipeline),
  multiples of 2 f (the pipeline's image processor floors the edit image to 2 f; other sizes fail there).

The pipelines' ``text_pad_embedding`` (a learned filler of the padded positions) is not taken (default None: zeros).
Refused in one line before any weight is read (:func:`check_dreamlite_folder`): another pipeline class, a missing
component or one of another class, UNet channels other than the autoencoder's latent channels, a UNet text width
(``encoder_hid_dim``, or ``cross_attention_dim`` without a text projection) other than the Qwen3-VL hidden size, a
scheduler option the flow Euler loop does not take.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, read_json_object
from . import model_dtype, require
from .chroma import Chroma
from .chroma import text_to_image as chroma_text_to_image

PIPELINE, MOBILE_PIPELINE = "DreamLitePipeline", "DreamLiteMobilePipeline"
PIPELINES = (PIPELINE, MOBILE_PIPELINE)
UNET = "DreamLiteUNetModel"
REQUIRED = ("unet", "vae", "text_encoder", "tokenizer", "processor", "scheduler")
CLASSES = {"unet": (UNET,), "vae": ("AutoencoderTiny",), "text_encoder": ("Qwen3VLForConditionalGeneration",),
           "scheduler": ("FlowMatchEulerDiscreteScheduler",)}
GENERATE_TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
                     "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}"
                     "<|im_end|>\n<|im_start|>assistant\n")  # the pipelines' prompt_template_encode_generate
GENERATE_DROP = 34  # its _start_idx
EDIT_TEMPLATE = ("<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, "
                 "objects, background), then explain how the user's text instruction should alter or modify the "
                 "image. Generate a new image that meets the user's requirements while maintaining consistency with "
                 "the original input where appropriate.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|>"
                 "<|vision_end|>{}<|im_end|>\n<|im_start|>assistant\n")  # prompt_template_encode_edit
EDIT_DROP = 64  # its _start_idx
GENERATE_PREFIX = "[Generate]: {}"
EDIT_PREFIX = ("[Edit]: A diptych with two side-by-side images of the same scene. Compared to the right side, the "
               "left one has {}")
STEPS, MOBILE_STEPS, GUIDANCE, IMAGE_GUIDANCE = 30, 4, 3.5, 1.5  # __call__'s defaults
MAX_SEQUENCE_LENGTH = 200  # its default max_sequence_length (text to image)
CONDITION_SIZE = 512  # the prompt's image: resized to 512 x 512


def is_dreamlite_folder(path: Union[str, Path]) -> bool:
    """True for a folder whose ``model_index.json`` names a ``DreamLite...`` pipeline or a ``DreamLiteUNetModel``
    (so ``diffkit sample`` / ``diffkit edit`` dispatch on it)."""
    from .sd3 import _entry
    from .sd_xl import _index
    try:
        index = _index(path)
    except (TypeError, OSError):
        return False
    return index is not None and (str(index.get("_class_name", "")).startswith("DreamLite")
                                  or _entry(index, "unet") == UNET)


def check_dreamlite_folder(directory) -> tuple:
    """(model_index dict, scheduler config) of a DreamLite folder, checked from its JSON alone (module docstring)."""
    from .flux import check_flux_scheduler
    from .pixart import check_classes, named_index
    directory = Path(directory)
    index = named_index(directory, PIPELINES, "DreamLite")
    check_classes(directory, index, REQUIRED, "DreamLite", CLASSES)
    unet = read_json_object(directory / "unet" / "config.json", "unet config")
    latents = int(read_json_object(directory / "vae" / "config.json", "vae config").get("latent_channels", 4))
    channels = (unet.get("in_channels", 4), unet.get("out_channels", 4))
    if channels != (latents, latents):
        raise DiffkitError(f"{directory}'s unet has in_channels, out_channels = {channels[0]!r}, {channels[1]!r}; "
                           f"allowed: {latents}, {latents} (the autoencoder's latent channels: the image's latents "
                           f"go beside the noisy ones, not on top)")
    text = read_json_object(directory / "text_encoder" / "config.json", "text encoder config").get("text_config", {})
    key = "encoder_hid_dim" if unet.get("encoder_hid_dim_type") else "cross_attention_dim"
    width = unet.get(key, 2048 if key == "cross_attention_dim" else None)  # (one per block: each)
    if set(width if isinstance(width, list) else [width]) != {text.get("hidden_size")}:
        raise DiffkitError(f"{directory}: the unet's {key}={width!r} does not fit the text encoder's hidden "
                           f"size {text.get('hidden_size')!r}")
    return index, check_flux_scheduler(directory, index["_class_name"])


class DreamLiteNet(torch.nn.Module):
    """``net(z, t, context, mask, reference=None)`` over a ``DreamLiteUNetModel`` on latents z (B, C, h, w): the
    UNet's input [z, reference] along the width (``reference`` the image's latents, default zeros), ``timestep`` t as
    given (the scheduler's s T) in the UNet's dtype, the text ``context`` (B, L, d) under ``mask`` (B, L),
    ``time_ids`` (f w, f h); the output's left w columns are the velocity, in z's dtype."""

    def __init__(self, unet, factor: int):
        super().__init__()
        self.model, self.factor = unet, int(factor)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, mask: torch.Tensor = None,
                reference: Optional[torch.Tensor] = None) -> torch.Tensor:
        if context is None or mask is None:
            raise DiffkitError("a DreamLite UNet needs cond {'context', 'mask'} (DreamLite.encode_prompts)")
        dtype, (b, _, h, w) = model_dtype(self.model), x.shape
        reference = torch.zeros_like(x) if reference is None else reference.to(x.device, x.dtype).expand_as(x)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(b)
        time_ids = torch.tensor([[w * self.factor, h * self.factor]], device=x.device, dtype=dtype).expand(b, 2)
        out = self.model(torch.cat([x, reference], dim=3).to(dtype), timestep=t.to(dtype),
                         encoder_hidden_states=context.to(x.device, dtype), encoder_attention_mask=mask.to(x.device),
                         added_cond_kwargs={"time_ids": time_ids}, return_dict=False)[0]
        return out[..., :w].to(x.dtype)


def _padded(*pairs) -> list:
    """(context, mask) pairs zero-padded on the right to their longest length (one batched UNet call)."""
    length = max(context.shape[1] for context, _ in pairs)
    return [(torch.nn.functional.pad(context, (0, 0, 0, length - context.shape[1])),
             torch.nn.functional.pad(mask, (0, length - mask.shape[1]))) for context, mask in pairs]


@dataclass
class DreamLite(Chroma):
    """The loaded components of a DreamLite folder (:func:`load_dreamlite`): a :class:`~.chroma.Chroma` whose
    ``transformer`` is the DreamLite UNet and ``vae`` the tiny autoencoder, ``tokenizer`` the folder's (text to
    image), ``processor_tokenizer`` and ``image_processor`` its processor's (edits); ``mobile`` for a
    ``DreamLiteMobilePipeline`` folder (module docstring)."""

    processor_tokenizer: object = None
    image_processor: object = None
    mobile: bool = False
    guidance_hint = f"the pipeline's default {GUIDANCE}, always guided"
    default_guidance = GUIDANCE
    max_sequence_length = MAX_SEQUENCE_LENGTH

    @property
    def default_steps(self) -> int:
        return MOBILE_STEPS if self.mobile else STEPS

    @property
    def pipeline(self) -> str:
        return MOBILE_PIPELINE if self.mobile else PIPELINE

    @property
    def vae_scale_factor(self) -> int:
        """The tiny autoencoder's factor f = 2^(levels - 1) (the pipelines' ``encoder_block_out_channels``)."""
        return 2 ** (len(self.vae.config.encoder_block_out_channels) - 1)

    @property
    def shift_factor(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", 0.0) or 0.0)  # (the pipelines' reading)

    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    def latent_shape(self, batch: int, height: Optional[int] = None, width: Optional[int] = None) -> tuple:
        """:meth:`.flux.Flux.latent_shape` (B, C, H / f, W / f), default 128 f; sizes that are not multiples of 2 f
        refused in one line naming the pipeline's reason (its image processor floors the edit image to 2 f)."""
        f = self.vae_scale_factor
        for value in (height, width):
            if isinstance(value, int) and not isinstance(value, bool) and value > 0 and value % (2 * f):
                raise DiffkitError(f"height x width {height}x{width} is not allowed; give positive multiples of "
                                   f"{2 * f} (2 x the VAE factor {f}: {self.pipeline} floors the edited image to "
                                   f"them, the latents to f)")
        return super().latent_shape(batch, height, width)

    def network(self) -> torch.nn.Module:
        return DreamLiteNet(self.transformer, self.vae_scale_factor)

    def reference_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """E(x) of images (B, 3, H, W) in [-1, 1], unscaled (the pipelines' ``prepare_image_latents``)."""
        with torch.no_grad():
            return self.vae.encode(pixels.to(self.device, self.vae.dtype)).latents.to(self.dtype)

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH,
                       images: Optional[list] = None) -> tuple:
        """(context (B, L, d), mask (B, L)) of ``prompts`` as given (prefixes added by the caller) in the generate
        template, or with ``images`` (PIL, one per prompt) in the edit template seeing them (module docstring)."""
        from PIL import Image
        from torch.nn.utils.rnn import pad_sequence
        from .qwen_image_edit import IMAGE_TOKEN, vision_inputs
        if images is None:
            if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int) \
                    or max_sequence_length < 1:
                raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed; give a positive "
                                   f"integer ({self.pipeline}'s prompt tokens, default {MAX_SEQUENCE_LENGTH})")
            tokens = self.tokenizer([GENERATE_TEMPLATE.format(p) for p in prompts], padding=True, truncation=True,
                                    max_length=max_sequence_length + GENERATE_DROP, return_tensors="pt")
            tokens, drop, extra = tokens.to(self.device), GENERATE_DROP, {}
        else:
            square = [image.resize((CONDITION_SIZE, CONDITION_SIZE), resample=Image.LANCZOS) for image in images]
            tokens, extra = vision_inputs(self, [EDIT_TEMPLATE.format(p) for p in prompts], square,
                                          self.processor_tokenizer)
            image_token = self.processor_tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
            tokens["mm_token_type_ids"] = (tokens["input_ids"] == image_token).long()  # the processor's
            drop = EDIT_DROP
        with torch.no_grad():
            states = self.text_encoder(**tokens, **extra, output_hidden_states=True).hidden_states[-1]
        rows = [row[keep.bool()][drop:] for row, keep in zip(states, tokens["attention_mask"])]
        context = pad_sequence(rows, batch_first=True, padding_value=0).to(self.text_encoder.dtype)
        mask = torch.zeros(context.shape[:2], dtype=torch.long, device=context.device)
        for i, row in enumerate(rows):
            mask[i, :row.shape[0]] = 1
        return context, mask

    def prompt_guidance(self, prompts, h: int, w: int, guidance_scale: Optional[float] = None,
                        negative_prompt=None, max_sequence_length: int = MAX_SEQUENCE_LENGTH,
                        convention: str = "diffusers", ip_adapter=None, images: Optional[list] = None,
                        reference: Optional[torch.Tensor] = None,
                        image_guidance_scale: Optional[float] = None) -> tuple:
        """(denoiser, cond) at latents h x w (:meth:`.chroma.Chroma.prompt_guidance`'s signature, for
        :func:`.chroma.text_to_image`): the prompts with their prefix (``images``, PIL, one per prompt, and their
        ``reference`` latents: an edit), guided as the pipeline (module docstring): ``guidance_scale`` s (default 3.5;
        ``convention="seed"`` reads W, s = 1 + W) against ``negative_prompt`` (default ""), an edit's
        ``image_guidance_scale`` s_I (default 1.5); a Mobile folder: unguided, each of those refused in one line."""
        from ..errors import check_choice
        from ..guidance import ClassifierFreeGuidance, pipeline_scale
        from .omnigen import OmniGenGuidance, _scale
        from .stable_diffusion import negative_prompts, prompt_list
        if ip_adapter is not None:
            raise DiffkitError(f"an IP-Adapter is not allowed for a DreamLite folder ({self.pipeline} loads none)")
        if images is None and image_guidance_scale is not None:
            raise DiffkitError("image_guidance_scale applies to an edit (edit_image, diffkit edit); drop it")
        check_choice("convention", convention, ["diffusers", "seed"])
        prompts = prompt_list(prompts)
        edit = images is not None
        if edit and len(images) != len(prompts):
            raise DiffkitError(f"a DreamLite edit prompt sees its image: give one image per prompt ({len(prompts)}), "
                               f"not {len(images)}")
        texts = [(EDIT_PREFIX if edit else GENERATE_PREFIX).format(p) for p in prompts]
        denoiser = self.denoiser_for(h, w)
        if self.mobile:
            for name, value in (("guidance_scale", guidance_scale), ("negative_prompt", negative_prompt),
                                ("image_guidance_scale", image_guidance_scale)):
                if value is not None:
                    raise DiffkitError(f"{name}={value!r} is not allowed for a {MOBILE_PIPELINE} folder (its "
                                       f"guidance is distilled: one branch, no negative prompt); drop it")
            context, mask = self.encode_prompts(texts, max_sequence_length, images)
            cond = {"context": context, "mask": mask}
            return denoiser, (cond if not edit else {**cond, "reference": reference})
        scale = pipeline_scale(guidance_scale, _scale("guidance_scale", guidance_scale, GUIDANCE, PIPELINE),
                               convention)
        negatives = negative_prompts(negative_prompt, len(prompts))
        (context, mask), (null_context, null_mask) = _padded(self.encode_prompts(texts, max_sequence_length, images),
                                                             self.encode_prompts(negatives, max_sequence_length,
                                                                                 images))
        cond = {"context": context, "mask": mask}
        if not edit:  # [negative, prompt] in one call, as the pipeline's batch
            return ClassifierFreeGuidance(denoiser, scale, "diffusers", null_context=null_context,
                                          null_cond={"mask": null_mask}), cond
        image_scale = _scale("image_guidance_scale", image_guidance_scale, IMAGE_GUIDANCE, PIPELINE)
        cond["reference"] = reference
        negative = {"context": null_context, "mask": null_mask, "reference": torch.zeros_like(reference)}
        return OmniGenGuidance(denoiser, scale, image_scale, negative, {"context": null_context, "mask": null_mask}), \
            cond


def load_dreamlite(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                   progress: bool = True) -> DreamLite:
    """Load a DreamLite diffusers folder (never downloads, never unpickles): the UNet, the tiny autoencoder, the
    Qwen3-VL model, the tokenizer (``tokenizer/``), the processor's tokenizer and image processor (``processor/``,
    read as transformers' PIL ``Qwen2VLImageProcessorPil``: its ``Qwen3VLProcessor`` needs torchvision for its video
    processor, which no DreamLite call uses); what diffkit does not drive is refused in one line before any weight
    is read (:func:`check_dreamlite_folder`)."""
    from . import from_pretrained, library_progress_bars
    from .flow_latents import frozen_on
    from .qwen_image_edit import load_image_processor
    diffusers, transformers = require("diffusers"), require("transformers")
    directory = Path(directory)
    index, sched = check_dreamlite_folder(directory)
    common = {"local_files_only": True, "torch_dtype": dtype, "use_safetensors": True}  # never a pickle
    with library_progress_bars(progress):
        parts = {"transformer": from_pretrained(diffusers.DreamLiteUNetModel, directory / "unet", **common),
                 "vae": from_pretrained(diffusers.AutoencoderTiny, directory / "vae", **common),
                 "text_encoder": from_pretrained(transformers.Qwen3VLForConditionalGeneration,
                                                 directory / "text_encoder", **common),
                 "tokenizer": from_pretrained(transformers.AutoTokenizer, directory / "tokenizer",
                                              local_files_only=True),
                 "processor_tokenizer": from_pretrained(transformers.AutoTokenizer, directory / "processor",
                                                        local_files_only=True)}
    parts["image_processor"] = load_image_processor(directory)
    device = frozen_on(parts, device)
    return DreamLite(**parts, text_encoder_2=None, tokenizer_2=None, scheduler_config=sched, device=device,
                     dtype=dtype, mobile=index["_class_name"] == MOBILE_PIPELINE)


def text_to_image(model: DreamLite, prompts: Union[str, Sequence[str]], **options) -> torch.Tensor:
    """Images of a DreamLite folder for ``prompts`` as the pipeline without an image (module docstring):
    :func:`.chroma.text_to_image` (sampler / grid both None: flow Euler on the pipeline's sigmas, 30 steps, Mobile 4;
    guidance_scale (default 3.5) / negative_prompt (default ""), none for Mobile; latents (B, C, h, w), default from
    ``seed + i``; height / width: default 128 f, multiples of 2 f; max_sequence_length (default 200); output_range,
    return_latents, ...)."""
    if options.get("image_guidance_scale") is not None:  # (an edit's: refused by prompt_guidance in one line)
        options["guide"] = {"image_guidance_scale": options.pop("image_guidance_scale")}
    return chroma_text_to_image(model, prompts, **options)


def edit_image(model: DreamLite, images, prompts: Union[str, Sequence[str]], *, height: Optional[int] = None,
               width: Optional[int] = None, image_guidance_scale: Optional[float] = None,
               **options) -> torch.Tensor:
    """``images`` (PIL images or (B, 3, H, W) in [-1, 1]) edited by ``prompts`` (one, or one per image) as the
    pipeline with ``image=`` (module docstring) with any diffkit sampler: the output height x width (both None: the
    first image's size floored to multiples of f; one given: the other 128 f), each image resized to it for its
    latents and to 512 x 512 for its prompt; guidance ``guidance_scale`` (default 3.5) and ``image_guidance_scale``
    (default 1.5; none for Mobile). options: :func:`.chroma.text_to_image`'s (sampler, steps, negative_prompt, seed,
    latents, output_range, return_latents, ...); no ``max_sequence_length`` (the pipeline's edit applies none)."""
    from PIL import Image
    from .flow_latents import edit_prompts
    from .qwen_image_edit import _pil_images, _pixels
    if options.get("max_sequence_length") is not None:
        raise DiffkitError(f"max_sequence_length is not allowed in a DreamLite edit ({model.pipeline} encodes an "
                           f"edit's prompt whole); drop it")
    pil = _pil_images(images)
    prompts = edit_prompts(torch.empty(len(pil), 3, 1, 1), prompts)
    f = model.vae_scale_factor
    if height is None and width is None:
        width, height = (side // f * f for side in pil[0].size)
        if width % (2 * f) or height % (2 * f):  # (the pipeline fails there: its image latents of 2 f multiples)
            raise DiffkitError(f"the image's size {pil[0].size[0]}x{pil[0].size[1]} floored to multiples of {f} is "
                               f"{width}x{height}, not multiples of {2 * f}; give height / width (--height / "
                               f"--width), multiples of {2 * f}")
    shape = model.latent_shape(len(pil), height, width)  # (the other side: 128 f; multiples of 2 f)
    height, width = shape[2] * f, shape[3] * f
    reference = model.reference_latents(_pixels([image.resize((width, height), resample=Image.LANCZOS)
                                                 for image in pil]))
    guide = {"images": pil, "reference": reference, "image_guidance_scale": image_guidance_scale}
    return chroma_text_to_image(model, prompts, height=height, width=width, guide=guide, **options)


__all__ = ["DreamLite", "DreamLiteNet", "load_dreamlite", "is_dreamlite_folder", "check_dreamlite_folder",
           "text_to_image", "edit_image", "GENERATE_TEMPLATE", "EDIT_TEMPLATE", "GENERATE_DROP", "EDIT_DROP", "STEPS",
           "MOBILE_STEPS", "GUIDANCE", "IMAGE_GUIDANCE", "MAX_SEQUENCE_LENGTH"]
