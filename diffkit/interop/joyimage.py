"""A JoyImage Edit diffusers folder (``JoyImageEditPipeline`` / ``JoyImageEditPlusPipeline``, diffusers 0.42.1): an
image edited by an instruction with any diffkit sampler.

JoyImage Edit (JD 2025) is a rectified flow (Esser et al. 2024, Sec. 2, eq. 1: x_s = (1 - s) x_0 + s eps, velocity
u = eps - x_0) of a double-stream MMDiT with Wan-style modulation tables and 3-D RoPE
(``JoyImageEditTransformer3DModel``) on the latents of the Wan VAE (``AutoencoderKLWan``: z = (E(x) - mean) / std
per channel on one frame, :class:`.flow_latents.FrameVAE`), conditioned on a Qwen3-VL model
(``Qwen3VLForConditionalGeneration``) whose prompt *sees* the input image(s). As the pipelines' ``__call__``:

* size (``JoyImageEditImageProcessor``, diffusers' own ``find_best_bucket`` / ``resize_center_crop`` called, not
  copied): the input's bucket, the (h, w) of the 1024 table (``BUCKETS[1024]``, about 1024^2 pixels, multiples of
  64) whose aspect ratio is nearest; the image scaled (PIL bilinear) to cover it and centre-cropped. Edit: every image
  to the bucket of the first (or of ``height`` x ``width`` where both are given), the output that size. Plus: each
  picture to its own bucket, the output ``height`` x ``width`` or the last picture's bucket.
* prompts: the multiple-images template (:data:`TEMPLATE`) around ``<|im_start|>user\\n``, one vision block
  (:data:`VISION`) per picture, the instruction, ``<|im_end|>\\n``; the processor's image patches and the pad token
  repeated t h w / m^2 times (:func:`.qwen_image_edit.vision_inputs`, Qwen3-VL's ``mm_token_type_ids`` 1 on those);
  the **pre-norm** output of the language model's last decoder layer (the pipelines' forward hook), the first 34
  tokens dropped (:data:`DROP`), the last ``max_sequence_length`` (default 4096) kept. The negative prompt (CFG's,
  for s > 1) sees the same pictures: default "" (Edit) / " " (Plus).
* the transformer: Edit: the items (B, 2, C, 1, h, w) [reference latents, z_t] (the transformer puts z_t first,
  RoPE frame index = item), no text mask; Plus: each item patchified (1 x 2 x 2) and concatenated, z_t first, with
  ``shape_list`` and the text mask, CFG's two passes in one batch with the text zero-padded to the longer. Timestep
  s T (the scheduler's); the prediction on z_t's slot kept.
* guidance: CFG u = u_n + s (u_c - u_n) (Ho & Salimans 2022, eq. 6, diffusers' convention, default s = 4.0) for
  s > 1, rescaled per latent pixel to the conditional prediction's norm over the channels (the guided norm clamped at
  1e-6; :func:`diffkit.guidance.norm_matched_cfg`); s <= 1: one unguided call.
* the reference latents: Edit: the posterior's **draw** (the pipeline's ``latent_dist.sample()`` from torch's global
  generator; diffkit draws it from image i's generator ``seed + i`` after that image's noise, so a seed reproduces
  it; ``posterior="mean"``: its mean); Plus: its mean (``mode()``).
* the grid: the folder's ``FlowMatchEulerDiscreteScheduler`` after ``set_timesteps(N)`` (its own fixed shift; no mu
  is passed, so ``use_dynamic_shifting`` is refused), flow Euler; 40 steps (Plus: 30).

diffkit reads ``processor/`` with transformers' PIL image processor (``Qwen2VLImageProcessorPil``:
``Qwen3VLProcessor`` imports torchvision for its video processor) and its tokenizer. Refused in one line before any
weight is read (:func:`check_joyimage_folder`): another pipeline, a missing component or one of another class, a
transformer whose input / output is not the VAE's ``z_dim`` or whose frame patch is not 1, a scheduler with
``use_dynamic_shifting`` or an option the flow Euler loop does not take. Not driven: the pipelines' text-to-image
calls without an image, batches of several images in one Plus call (the pipeline's batch 1), IP-Adapters, LoRA files.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, check_choice, read_json_object
from ..guidance import pipeline_scale
from . import model_dtype, require
from .chroma import Chroma
from .flow_latents import FrameVAE, names_pipeline

EDIT_PIPELINE, PLUS_PIPELINE = "JoyImageEditPipeline", "JoyImageEditPlusPipeline"
TRANSFORMERS = {EDIT_PIPELINE: "JoyImageEditTransformer3DModel", PLUS_PIPELINE: "JoyImageEditPlusTransformer3DModel"}
REQUIRED = ("transformer", "vae", "text_encoder", "processor", "scheduler")
CLASSES = {"vae": ("AutoencoderKLWan",), "text_encoder": ("Qwen3VLForConditionalGeneration",),
           "processor": ("Qwen3VLProcessor",), "scheduler": ("FlowMatchEulerDiscreteScheduler",)}
# the pipelines' prompt_template_encode["multiple_images"] (its "\\n": a backslash and an n, as there)
TEMPLATE = ("<|im_start|>system\n \\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
            "spatial relationships of the objects and background:<|im_end|>\n{}<|im_start|>assistant\n")
VISION = "<|vision_start|><|image_pad|><|vision_end|>"  # a picture's "<image>\n" in the prompt
DROP = 34  # prompt_template_encode_start_idx
JOY_GUIDANCE, MAX_SEQUENCE_LENGTH, BASESIZE = 4.0, 4096, 1024  # the pipelines' defaults; the bucket table's
STEPS = {EDIT_PIPELINE: 40, PLUS_PIPELINE: 30}
NEGATIVE = {EDIT_PIPELINE: "", PLUS_PIPELINE: " "}  # the negative prompt where none is given
CFG_FLOOR = 1e-6  # the guided norm's clamp_min


class JoyImageNet(torch.nn.Module):
    """``net(z, t, context, mask=None, null_context=None, null_mask=None, reference=None)`` over a JoyImage Edit
    transformer on latents z (B, C, h, w) (module docstring): ``reference`` (B or 1, C, h, w) (Edit) or a list of
    (1, C, h_k, w_k) (Plus); with ``scale`` s > 1 and ``null_context`` the pipelines' norm-rescaled CFG; the velocity
    of z's slot in z's shape and dtype."""

    def __init__(self, transformer, scale: float = 1.0, plus: bool = False):
        super().__init__()
        self.model, self.scale, self.plus = transformer, float(scale), plus

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, mask: torch.Tensor = None,
                null_context: torch.Tensor = None, null_mask: torch.Tensor = None,
                reference=None) -> torch.Tensor:
        from ..guidance import norm_matched_cfg
        if context is None:
            raise DiffkitError("a JoyImage Edit transformer needs cond {'context'} (JoyImage.prompt_guidance)")
        dtype, b = model_dtype(self.model), x.shape[0]
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(b).to(dtype)
        guided = self.scale > 1 and null_context is not None
        if self.plus:
            cond, uncond = self._plus(x.to(dtype), t, context, mask, null_context if guided else None, null_mask,
                                      reference or [])
        else:
            cond = self._edit(x.to(dtype), t, context, reference)
            uncond = self._edit(x.to(dtype), t, null_context, reference) if guided else None
        if guided:  # per latent pixel over the channels (the pipelines' torch.norm(dim=2) of (B, N, C, ...))
            cond = norm_matched_cfg(cond.movedim(1, -1), uncond.movedim(1, -1), self.scale,
                                    floor=CFG_FLOOR).movedim(-1, 1)
        return cond.to(x.dtype)

    def _edit(self, x, t, context, reference) -> torch.Tensor:
        """JoyImageEditTransformer3DModel on the items [reference, z] (B, n, C, 1, h, w); z's output (no text mask:
        the pipeline passes none)."""
        items = x[:, None, :, None]
        if reference is not None:
            items = torch.cat([reference.to(x)[:, None, :, None].expand(x.shape[0], -1, -1, -1, -1, -1), items], 1)
        context = context.to(x.dtype).expand(x.shape[0], -1, -1)
        return self.model(hidden_states=items, timestep=t, encoder_hidden_states=context,
                          return_dict=False)[0][:, -1, :, 0]

    def _plus(self, x, t, context, mask, null_context, null_mask, references) -> tuple:
        """(cond, uncond or None) of JoyImageEditPlusTransformer3DModel on [z, references...] patchified in one
        sequence with ``shape_list``; the negative and positive passes batched [negative, positive], their text and
        masks zero-padded to the longer (the pipeline's ``_pad_sequence``)."""
        _, ph, pw = self.model.config.patch_size
        b, c, h, w = x.shape
        items = [x] + [r.to(x).expand(b, -1, -1, -1) for r in references]
        patches = torch.cat([z.reshape(b, c, z.shape[2] // ph, ph, z.shape[3] // pw, pw).permute(0, 2, 4, 1, 3, 5)
                             .reshape(b, -1, c, 1, ph, pw) for z in items], dim=1)
        shapes = [[(1, z.shape[2] // ph, z.shape[3] // pw) for z in items]] * b
        mask = torch.ones(context.shape[:2], dtype=torch.long, device=x.device) if mask is None else mask
        texts, masks = [context.to(x.dtype).expand(b, -1, -1)], [mask.to(x.device).expand(b, -1)]
        if null_context is not None:
            null_mask = torch.ones(null_context.shape[:2], dtype=torch.long, device=x.device) if null_mask is None \
                else null_mask
            texts.insert(0, null_context.to(x.dtype).expand(b, -1, -1))
            masks.insert(0, null_mask.to(x.device).expand(b, -1))
        from .bria_fibo import pad_tokens
        length = max(text.shape[1] for text in texts)
        n = len(texts)
        out = self.model(hidden_states=patches.repeat(n, 1, 1, 1, 1, 1), timestep=t.repeat(n),
                         encoder_hidden_states=torch.cat([pad_tokens(text, length) for text in texts]),
                         encoder_hidden_states_mask=torch.cat([pad_tokens(m, length) for m in masks]),
                         shape_list=shapes * n, return_dict=False)[0][:, :(h // ph) * (w // pw)]
        out = out.reshape(n * b, h // ph, w // pw, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(n * b, c, h, w)
        return (out[b:], out[:b]) if n == 2 else (out, None)


@dataclass
class JoyImage(FrameVAE, Chroma):
    """The loaded components of a JoyImage Edit folder (:func:`load_joyimage`): FLUX.1's fields with the Qwen3-VL
    model as ``text_encoder`` and the processor's tokenizer as ``tokenizer``, its PIL image processor
    (``image_processor``); the Wan VAE by :class:`.flow_latents.FrameVAE`, the grid by :meth:`scheduler_sigmas`."""

    image_processor: object = None
    chat_template: Optional[str] = None  # (unused: the pipelines build their prompts without it)
    pipeline: str = EDIT_PIPELINE
    default_guidance = JOY_GUIDANCE
    guidance_hint = f"CFG for > 1 against the negative prompt, the pipelines' default {JOY_GUIDANCE}"
    max_sequence_length = MAX_SEQUENCE_LENGTH
    img2img_defaults = inpaint_defaults = None  # no img2img / inpainting pipeline

    @property
    def plus(self) -> bool:
        return self.pipeline == PLUS_PIPELINE

    @property
    def default_steps(self) -> int:
        return STEPS[self.pipeline]

    @property
    def vae_scale_factor(self) -> int:
        """The pipelines' ``vae.config.scale_factor_spatial`` (8 for the Wan 2.1 VAE)."""
        return int(self.vae.config.scale_factor_spatial)

    def latent_shape(self, batch: int, height: Optional[int] = None, width: Optional[int] = None) -> tuple:
        """(batch, in_channels, height / f, width / f); sizes multiples of f x the transformer's patch (default
        1024)."""
        multiple = self.vae_scale_factor * int(self.transformer.config.patch_size[1])
        height, width = height or BASESIZE, width or BASESIZE
        for value in (height, width):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % multiple:
                raise DiffkitError(f"height x width {height}x{width} is not allowed; give positive multiples of "
                                   f"{multiple} (the VAE factor {self.vae_scale_factor} x the transformer's patch)")
        f = self.vae_scale_factor
        return (batch, int(self.transformer.config.in_channels), height // f, width // f)

    def network(self) -> torch.nn.Module:
        return JoyImageNet(self.transformer, plus=self.plus)

    def scheduler_sigmas(self, steps: int, h: int, w: int) -> torch.Tensor:
        """The folder's scheduler's sigmas (final 0 included) after the pipelines' plain ``set_timesteps(steps)``."""
        scheduler = require("diffusers").FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(steps)
        return scheduler.sigmas

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH,
                       images=None) -> tuple:
        """(context (B, L, d), mask (B, L)) of ``prompts``, each seeing ``len(images) // len(prompts)`` of the PIL
        ``images`` (in order), as the pipelines' ``encode_prompt_multiple_images`` (module docstring)."""
        from .qwen_image_edit import vision_inputs
        from .stable_diffusion import prompt_list
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int) \
                or max_sequence_length < 1:
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed; give a positive integer "
                               f"(the pipelines keep the last so many tokens, default {MAX_SEQUENCE_LENGTH})")
        prompts = prompt_list(prompts)
        seen = VISION * (len(images) // len(prompts))
        texts = [TEMPLATE.format(f"<|im_start|>user\n{seen}{p}<|im_end|>\n") for p in prompts]
        tokens, pixels = vision_inputs(self, texts, images)
        kinds = (tokens.input_ids == self.text_encoder.config.image_token_id).long()
        captured = {}

        def hook(_module, _inputs, output):  # the last decoder layer's output, before the final norm
            captured["states"] = output[0] if isinstance(output, tuple) else output

        handle = self.text_encoder.model.language_model.layers[-1].register_forward_hook(hook)
        try:
            with torch.no_grad():
                self.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                                  mm_token_type_ids=kinds, **pixels)
        finally:
            handle.remove()
        states, mask = captured["states"][:, DROP:], tokens.attention_mask[:, DROP:]
        return states[:, -max_sequence_length:].to(self.text_encoder.dtype), mask[:, -max_sequence_length:]

    def prompt_guidance(self, prompts, h: int, w: int, guidance_scale: Optional[float] = None,
                        negative_prompt=None, max_sequence_length: int = MAX_SEQUENCE_LENGTH,
                        convention: str = "diffusers", ip_adapter=None, images=None, reference=None) -> tuple:
        """(denoiser, cond) at latents h x w: the prompts seeing ``images``, the ``reference`` latents, and for a
        diffusers-convention scale s > 1 (default 4.0; ``convention="seed"`` reads W, s = 1 + W) CFG against
        ``negative_prompt`` (default "" / Plus " ", one or one per prompt) seeing the same images, in
        :class:`JoyImageNet`; a negative prompt with s <= 1 or an IP-Adapter: one line."""
        from ..denoiser import Denoiser
        from .stable_diffusion import negative_prompts
        if ip_adapter is not None:
            raise DiffkitError("an IP-Adapter is not allowed for a JoyImage Edit folder (the pipelines load none)")
        check_choice("convention", convention, ["diffusers", "seed"])
        self.check_guidance_scale(guidance_scale)
        scale = pipeline_scale(guidance_scale, JOY_GUIDANCE, convention)
        if negative_prompt is not None and scale <= 1:
            raise DiffkitError(f"a negative prompt with guidance_scale={guidance_scale:g} ({convention} convention) "
                               f"is not allowed: it feeds only CFG (diffusers' scale > 1); raise the scale or drop it")
        context, mask = self.encode_prompts(prompts, max_sequence_length, images)
        cond = {"context": context, "mask": mask, "reference": reference}
        if scale > 1:
            negatives = negative_prompts(NEGATIVE[self.pipeline] if negative_prompt is None else negative_prompt,
                                         context.shape[0])
            cond["null_context"], cond["null_mask"] = self.encode_prompts(negatives, max_sequence_length, images)
        guided = Denoiser(JoyImageNet(self.transformer, scale, self.plus), self.denoiser_for(h, w).schedule,
                          "flow_prediction")
        guided.model = self.transformer
        return guided, cond


def is_joyimage_folder(path: Union[str, Path]) -> bool:
    """True for a folder whose ``model_index.json`` names a ``JoyImageEdit...`` pipeline or transformer."""
    return names_pipeline(path, "JoyImageEdit", TRANSFORMERS[EDIT_PIPELINE]) or \
        names_pipeline(path, "JoyImageEdit", TRANSFORMERS[PLUS_PIPELINE])


def check_joyimage_folder(directory) -> tuple:
    """(index, scheduler config) of a JoyImage Edit folder, checked from its JSON alone (module docstring)."""
    from .flux import check_flux_scheduler
    from .pixart import check_classes, fixed_shift_scheduler, named_index
    directory = Path(directory)
    index = named_index(directory, tuple(TRANSFORMERS), "JoyImage Edit")
    pipeline = index["_class_name"]
    check_classes(directory, index, REQUIRED, "JoyImage Edit", {**CLASSES, "transformer": (TRANSFORMERS[pipeline],)})
    config = read_json_object(directory / "transformer" / "config.json", "transformer config")
    z_dim = int(read_json_object(directory / "vae" / "config.json", "vae config").get("z_dim", 16))
    channels = (config.get("in_channels", 16), config.get("out_channels"))
    if channels[0] != z_dim or (channels[1] or channels[0]) != z_dim:
        raise DiffkitError(f"{directory}'s transformer has in_channels, out_channels = {channels[0]!r}, "
                           f"{channels[1]!r}; allowed: {z_dim}, {z_dim} or null (the VAE's z_dim)")
    patch = config.get("patch_size", [1, 2, 2])
    if not isinstance(patch, list) or len(patch) != 3 or patch[0] != 1:
        raise DiffkitError(f"{directory}'s transformer has patch_size={patch!r}; allowed: [1, p, p] (the pipelines' "
                           f"items are frames of one latent each)")
    fixed_shift_scheduler(directory, pipeline)
    return index, check_flux_scheduler(directory, pipeline)


def load_joyimage(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                  progress: bool = True) -> JoyImage:
    """Load a JoyImage Edit diffusers folder (never downloads, never unpickles): :func:`check_joyimage_folder`, then
    :func:`.nucleusmoe.load_qwen3_vl_folder`'s parts and the processor's PIL image processor
    (:func:`.qwen_image_edit.load_image_processor`); the transformer's ``text_dim`` must be the language model's
    width."""
    from .nucleusmoe import load_qwen3_vl_folder
    from .qwen_image_edit import load_image_processor
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_joyimage_folder(directory)
    images = load_image_processor(directory)
    transformer = getattr(diffusers, TRANSFORMERS[index["_class_name"]])
    model = load_qwen3_vl_folder(JoyImage, directory, index, sched, transformer, diffusers.AutoencoderKLWan, device,
                                 dtype, progress, needs_template=False, image_processor=images,
                                 pipeline=index["_class_name"])
    have, need = model.transformer.config.text_dim, model.text_encoder.config.text_config.hidden_size
    if have != need:
        raise DiffkitError(f"{directory}: the transformer's text_dim={have} does not fit the text encoder's hidden "
                           f"size {need}")
    return model


def _buckets(model: JoyImage):
    """diffusers' ``JoyImageEditImageProcessor`` of the model's VAE factor (its size rules, module docstring)."""
    from diffusers.pipelines.joyimage.image_processor import JoyImageEditImageProcessor
    return JoyImageEditImageProcessor(vae_scale_factor=model.vae_scale_factor)


def edit_image(model: JoyImage, images, prompts: Union[str, Sequence[str]], *, height: Optional[int] = None,
               width: Optional[int] = None, posterior: Optional[str] = None, seed: int = 0,
               latents: Optional[torch.Tensor] = None, **options) -> torch.Tensor:
    """``images`` (PIL images or (B, 3, H, W) in [-1, 1]) edited by ``prompts`` as ``JoyImageEditPipeline`` (module
    docstring) with any diffkit sampler: each image with its prompt (one, or one per image), all at the bucket of the
    first (or of ``height`` x ``width``). A Plus folder (``JoyImageEditPlusPipeline``): one edit of one prompt seeing
    all ``images`` (each at its own bucket), the output ``height`` x ``width`` (multiples of 2 f) or the last one's
    bucket.

    posterior: the reference latents, "sample" (Edit's default: drawn from image i's generator ``seed + i`` after its
    noise) or "mean" (Plus's default, its ``mode()``). latents: z at s = 1 (B, C, h, w), default N(0, I) from
    ``seed + i``. options: :func:`.chroma.text_to_image`'s (sampler, steps, guidance_scale, convention,
    negative_prompt, max_sequence_length (default 4096), output_range, return_latents, ...)."""
    import numpy as np

    from ..editing import _generators
    from ..noise import randn
    from .chroma import text_to_image
    from .flow_latents import start_latents
    from .qwen_image_edit import _pil_images
    from .stable_diffusion import prompt_list
    if not isinstance(model, JoyImage):
        raise DiffkitError("edit_image needs a JoyImage Edit folder (JoyImageEditPipeline); this one is not")
    posterior = posterior or ("mean" if model.plus else "sample")
    check_choice("posterior", posterior, ["sample", "mean"])
    pil, prompts, sizes = _pil_images(images), prompt_list(prompts), _buckets(model)
    if not pil:
        raise DiffkitError("a JoyImage Edit folder edits images; give at least one (the pipelines' text-to-image "
                           "calls without an image are not driven)")
    if model.plus:
        if len(prompts) != 1:
            raise DiffkitError(f"a JoyImage Edit Plus edit is one prompt seeing its images (the pipeline's batch 1): "
                               f"{len(prompts)} prompts are not allowed")
        seen = [sizes.resize_center_crop(im, sizes.get_default_height_width(im)) for im in pil]
        pixels = [sizes.preprocess(im) for im in seen]
        if height is None or width is None:
            height, width = sizes.get_default_height_width(pil[-1])
    else:
        if len(prompts) not in (1, len(pil)):
            raise DiffkitError(f"{len(prompts)} prompts for {len(pil)} images; give one, or one per image")
        prompts = prompts * len(pil) if len(prompts) == 1 else prompts
        height, width = sizes.get_default_height_width(pil[0], height, width)
        seen = sizes.resize_center_crop(pil, (height, width))
        pixels = [torch.stack([torch.from_numpy(np.array(im.convert("RGB"))) for im in seen]).float() / 127.5 - 1.0]
        pixels[0] = pixels[0].permute(0, 3, 1, 2)
    generators = _generators(seed, None, len(prompts))
    noise, shape = start_latents(model, latents, len(prompts), height, width)
    if latents is None:
        noise = randn(shape, generators, device=model.device, dtype=model.dtype)
    reference = [model.encode(p, generators, sample=posterior == "sample") for p in pixels]
    return text_to_image(model, prompts, height=height, width=width, latents=noise, seed=seed,
                         guide={"images": seen, "reference": reference if model.plus else reference[0]}, **options)


__all__ = ["JoyImage", "JoyImageNet", "load_joyimage", "is_joyimage_folder", "check_joyimage_folder", "edit_image",
           "EDIT_PIPELINE", "PLUS_PIPELINE"]
