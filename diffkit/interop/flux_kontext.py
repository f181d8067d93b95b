"""FLUX.1 Kontext image editing (diffusers 0.42.1 ``FluxKontextPipeline``) on a FLUX.1 folder (:mod:`.flux`).

FLUX.1 Kontext (Labs et al. 2025, "FLUX.1 Kontext: Flow Matching for In-Context Image Generation and Editing in
Latent Space", Sec. 3) is an ordinary ``FluxTransformer2DModel`` (in_channels 64) that reads a reference image in
context: the image's packed VAE latents are appended to the noisy latents' tokens, with the image ids of their own
patch grid whose first component is 1 (the noisy tokens' is 0: a constant offset of the 3-D RoPE), and the
velocity of the noisy tokens alone is kept. Everything else is :mod:`.flux`'s sampling: the flow Euler loop on the
scheduler's sigmas, mu from the noisy tokens' count only, the embedded guidance (``guidance_scale``, default 3.5)
and true CFG (``true_cfg_scale`` > 1 with a ``negative_prompt``; both passes see the image tokens).

Sizes, as the pipeline's ``__call__``:

* output (:func:`kontext_output_size`): ``height`` / ``width`` (default 128 f each) only give the aspect ratio r =
  w / h; the size is w = round(sqrt(max_area r)), h = round(sqrt(max_area / r)) (``max_area`` default 1024^2),
  each floored to a multiple of 2 f.
* the image (:func:`kontext_image_size`): its size floored to 2 f; with ``auto_resize`` (the pipeline's
  ``_auto_resize``, default on) replaced by the entry of :data:`PREFERRED_KONTEXT_RESOLUTIONS` (the resolutions
  Kontext was trained at) of the nearest aspect ratio, whatever the image's size; floored to 2 f. The image is
  resized to it as the pipeline's ``image_processor.resize`` (a tensor: nearest; the CLI's PNGs: Lanczos on the
  PIL image, as it resizes a PIL image) and encoded to its posterior mode (``sample_mode="argmax"``), z =
  (E(x) - shift_factor) scaling_factor.

``FluxKontextInpaintPipeline`` (a mask, strength, an optional separate reference image): :func:`kontext_inpaint`,
FLUX's replacement inpainting (:func:`.flux.image_to_image`) with the reference's tokens in every call.

IP-Adapters (both pipelines inherit ``FluxIPAdapterMixin``: ``load_ip_adapter`` + ``ip_adapter_image`` /
``negative_ip_adapter_image``): ``ip_adapter=`` a :class:`.flux_ip_adapter.FluxIPAdapter` or
:class:`~.flux_ip_adapter.FluxIPAdapters`, as in FLUX's other paths (:meth:`.flux.Flux.prompt_guidance`): the
decoupled cross-attention of Ye et al. 2023 (arXiv:2308.06721) eq. 5 in every double block, the reference tokens
included (they are image-stream tokens: the pipeline's transformer call is the same), the negative (default black,
of the output's size) image's embeds in the true-CFG pass. Not driven: a ControlNet with Kontext,
``padding_mask_crop`` (refused: :mod:`.mask_crop`).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, check_choice
from .flux import DEFAULT_SAMPLE_SIZE, FLUX_PIPELINE_STEPS, MAX_SEQUENCE_LENGTH, latent_image_ids, pack_latents

PREFERRED_KONTEXT_RESOLUTIONS = (  # (width, height), the pipeline's list
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184), (944, 1104),
    (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752), (1456, 720), (1504, 688),
    (1568, 672))
KONTEXT_MAX_AREA = 1024 ** 2  # the pipeline's default max_area (pixels)
KONTEXT_PIPELINES = ("FluxKontextPipeline", "FluxKontextInpaintPipeline")  # one folder layout


def kontext_tokens(inputs: dict, kontext: torch.Tensor) -> dict:
    """Append the reference latents ``kontext`` (B, C, h', w') to a :class:`.flux.FluxNet` call's ``inputs``: their
    packed tokens after ``hidden_states``, their patch grid's ids (1, row, column) after ``img_ids`` (the pipeline's
    ``prepare_latents``: "image ids are the same as latent ids with the first dimension set to 1")."""
    b = inputs["hidden_states"].shape[0]
    if kontext.ndim != 4 or kontext.shape[0] not in (1, b):
        raise DiffkitError(f"kontext latents of shape {tuple(kontext.shape)} are not allowed; give (1 or {b}, C, h, w)")
    ids = latent_image_ids(*kontext.shape[2:], device=inputs["img_ids"].device, dtype=inputs["img_ids"].dtype)
    ids[:, 0] = 1
    tokens = pack_latents(kontext).expand(b, -1, -1)
    inputs["hidden_states"] = torch.cat([inputs["hidden_states"], tokens], dim=1)
    inputs["img_ids"] = torch.cat([inputs["img_ids"], ids], dim=0)
    return inputs


def _side(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise DiffkitError(f"{name}={value!r} is not allowed; give a positive integer (pixels)")
    return value


def kontext_output_size(height: int, width: int, multiple: int, max_area: int = KONTEXT_MAX_AREA) -> tuple:
    """(height, width) of the edited image: the aspect ratio of ``height`` x ``width`` at area ``max_area``, each
    side rounded then floored to ``multiple`` (2 f), as the pipeline's ``__call__``; a side of 0: one line."""
    height, width, max_area = _side("height", height), _side("width", width), _side("max_area", max_area)
    ratio = width / height
    w, h = round((max_area * ratio) ** 0.5), round((max_area / ratio) ** 0.5)
    w, h = w // multiple * multiple, h // multiple * multiple
    if not (h and w):
        raise DiffkitError(f"max_area={max_area} at the aspect ratio of {width}x{height} gives {w}x{h}; give a larger "
                           f"max_area (each side at least {multiple}: the VAE factor x the 2 x 2 packing)")
    return h, w


def kontext_image_size(height: int, width: int, multiple: int, auto_resize: bool = True) -> tuple:
    """(height, width) the reference image of ``height`` x ``width`` pixels is resized to: floored to
    ``multiple`` (``get_default_height_width``), with ``auto_resize`` replaced by the preferred resolution of the
    nearest aspect ratio (ties: the smaller width), floored to ``multiple`` again (the pipeline's step 3)."""
    h, w = _side("height", height), _side("width", width)
    h, w = h - h % multiple, w - w % multiple
    if not (h and w):
        raise DiffkitError(f"an image of {width}x{height} pixels is not allowed; each side must be at least "
                           f"{multiple} (the VAE factor x the 2 x 2 packing)")
    if auto_resize:
        ratio = w / h
        _, w, h = min((abs(ratio - pw / ph), pw, ph) for pw, ph in PREFERRED_KONTEXT_RESOLUTIONS)
    return h // multiple * multiple, w // multiple * multiple


def kontext_edit(flux, images: torch.Tensor, prompts: Union[str, Sequence[str]], *, height: Optional[int] = None,
                 width: Optional[int] = None, max_area: int = KONTEXT_MAX_AREA, auto_resize: bool = True,
                 sampler: Optional[str] = None, steps: Optional[int] = None, nfe: Optional[int] = None,
                 grid=None, guidance_scale: Optional[float] = None, true_cfg_scale: float = 1.0,
                 negative_prompt=None, seed: Optional[int] = 0, latents: Optional[torch.Tensor] = None,
                 max_sequence_length: int = MAX_SEQUENCE_LENGTH, prompt_2=None, negative_prompt_2=None,
                 output_range: str = "0,1", return_latents: bool = False, progress: bool = False,
                 prompt_embeds: Optional[torch.Tensor] = None, pooled_prompt_embeds: Optional[torch.Tensor] = None,
                 ip_adapter=None, **options) -> torch.Tensor:
    """Edit ``images`` (B or 1, 3, H, W) in [-1, 1] towards ``prompts`` (one, or one per image; one image with
    several prompts serves them all) as ``FluxKontextPipeline`` (module docstring): the images resized
    (:func:`kontext_image_size`; nearest, as the pipeline resizes tensors; already that size: untouched) and
    encoded to their posterior mode, the edit drawn at :func:`kontext_output_size` of ``height`` / ``width``
    (default 128 f) and ``max_area`` with every step's network seeing the image's tokens. ``sampler`` / ``grid``
    / ``steps`` / ``nfe`` / ``latents`` / ``seed`` / the prompt and guidance arguments / ``output_range`` /
    ``return_latents`` / ``options``: as :func:`.flux.text_to_image` (default the pipeline's 28 flow Euler steps on
    its sigmas, the embedded guidance 3.5; ``latents``: unpacked z at s = 1 of the output size); ``prompt_embeds``
    / ``pooled_prompt_embeds`` instead of ``prompts`` (None; e.g. FLUX.1 Redux's) as its: one row serves every
    image (:func:`.flux.embedded_prompts`). ``ip_adapter``: one or several FLUX IP-Adapters with their image
    prompts (module docstring), as the pipeline's ``ip_adapter_image`` (+ ``negative_ip_adapter_image`` with true
    CFG)."""
    from ..sampling import sample
    from .flow_latents import finish_images, pipeline_grid, start_latents
    from .stable_diffusion import OUTPUT_RANGES, prompt_list
    check_choice("output_range", output_range, OUTPUT_RANGES)
    check_choice("auto_resize", auto_resize, [True, False])
    from .flux import embedded_prompts
    images = _checked(flux, images, "images")
    prompts, embeds = embedded_prompts(flux, prompts, prompt_embeds, pooled_prompt_embeds,
                                       images.shape[0] if latents is None else latents.shape[0], prompt_2=prompt_2)
    prompts = prompt_list(prompts)
    batch = max(len(prompts), images.shape[0])
    if {len(prompts), images.shape[0]} - {1, batch}:
        raise DiffkitError(f"{len(prompts)} prompts for {images.shape[0]} images; give one of either, or as many "
                           f"prompts as images")
    f = flux.vae_scale_factor
    default = DEFAULT_SAMPLE_SIZE * f
    out_h, out_w = kontext_output_size(height or default, width or default, 2 * f, max_area)
    size = kontext_image_size(images.shape[2], images.shape[3], 2 * f, auto_resize)
    if tuple(images.shape[2:]) != size:
        images = torch.nn.functional.interpolate(images.float(), size=size)  # the processor's resize of a tensor
    reference = flux.encode(images.to(flux.device, flux.dtype)).to(flux.dtype)  # the posterior mode ("argmax")
    noise, expected = start_latents(flux, latents, batch, out_h, out_w, " (unpacked: flux.unpack_latents)")
    h, w = expected[2:]
    sampler, grid, steps = pipeline_grid(sampler, grid, steps, nfe, FLUX_PIPELINE_STEPS,
                                         lambda n: flux.scheduler_grid(n, h, w), options.get("flow_shift"))
    denoiser, cond = flux.prompt_guidance(prompts * (batch // len(prompts)), h, w, guidance_scale, negative_prompt,
                                          true_cfg_scale, max_sequence_length, prompt_2,
                                          negative_prompt_2, ip_adapter, embeds=embeds)
    cond["kontext"] = reference.expand(batch, *reference.shape[1:])
    z0 = sample(denoiser, noise, sampler, steps, nfe=nfe, grid=grid, seed=seed, cond=cond, progress=progress,
                device=flux.device, dtype=flux.dtype, **options)
    return finish_images(flux, z0, return_latents, output_range)


def kontext_inpaint(flux, images: torch.Tensor, mask: torch.Tensor, prompts: Union[str, Sequence[str]],
                    strength: float = 1.0, *, image_reference: Optional[torch.Tensor] = None,
                    auto_resize: bool = True, guidance_scale: Optional[float] = None, seed: Optional[int] = 0,
                    **options) -> torch.Tensor:
    """Inpaint ``images`` (B, 3, H, W) in [-1, 1] where ``mask`` (B or 1, 1, H, W; 1 = repaint) as
    ``FluxKontextInpaintPipeline``: the images (and the mask) resized to :func:`kontext_image_size` (nearest,
    as the pipeline resizes tensors), which is also the output's size (``max_area`` plays no part there); their
    posterior mode z, the reference tokens in every call (``image_reference``'s latents, resized the same way
    to its own preferred size, else z), then FLUX's replacement inpainting (:func:`.flux.image_to_image` with
    ``mask``: SDEdit from ``strength`` of the pipeline's 28-step grid, default 1 = from pure noise, the kept
    region replaced by z noised to the next sigma), image i's noise from ``seed + i``. The embedded guidance
    defaults to the pipeline's 3.5 (not FluxInpaintPipeline's 7.0); ``options``: :func:`.flux.image_to_image`'s
    (sampler, steps, true_cfg_scale, negative_prompt, prompt_2, output_range, ``ip_adapter``: FLUX IP-Adapters, as
    the pipeline's ``ip_adapter_image``, ...); no ControlNet."""
    from .flux import FLUX_PIPELINE_GUIDANCE, image_to_image
    check_choice("auto_resize", auto_resize, [True, False])
    for key in ("controlnet", "posterior", "kontext"):
        if options.get(key) is not None:
            raise DiffkitError(f"{key} is not allowed in FLUX.1 Kontext inpainting (FluxKontextInpaintPipeline takes "
                               f"none here)")
    if not isinstance(mask, torch.Tensor) or mask.ndim != 4 or mask.shape[1] != 1:
        raise DiffkitError("mask must be a (1 or batch, 1, H, W) tensor in [0, 1] (1 = repaint)")
    f2 = 2 * flux.vae_scale_factor

    def resized(x):  # the processor's resize of a tensor (nearest), where the size changes
        size = kontext_image_size(x.shape[2], x.shape[3], f2, auto_resize)
        return x if tuple(x.shape[2:]) == size else torch.nn.functional.interpolate(x.float(), size=size)
    images = resized(_checked(flux, images, "images"))
    mask = mask if mask.shape[2:] == images.shape[2:] else torch.nn.functional.interpolate(
        mask.float(), size=tuple(images.shape[2:]))
    reference = images if image_reference is None else resized(_checked(flux, image_reference, "image_reference"))
    latents = flux.encode(reference.to(flux.device, flux.dtype)).to(flux.dtype)  # the mode ("argmax")
    if guidance_scale is None and flux.guidance_embeds:
        guidance_scale = FLUX_PIPELINE_GUIDANCE
    return image_to_image(flux, images, prompts, strength, mask=mask, guidance_scale=guidance_scale, seed=seed,
                          posterior="mean", kontext=latents, **options)


def _checked(flux, images, name: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != flux.image_channels:
        raise DiffkitError(f"{name} must be a (batch, {flux.image_channels}, H, W) tensor in [-1, 1]")
    return images


def is_kontext_folder(path) -> bool:
    """True for a diffusers folder whose ``model_index.json`` names ``FluxKontextPipeline`` (or its inpainting
    layout, :data:`KONTEXT_PIPELINES`; JSON only)."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) in KONTEXT_PIPELINES


__all__ = ["kontext_edit", "kontext_inpaint", "kontext_output_size", "kontext_image_size", "kontext_tokens",
           "is_kontext_folder", "PREFERRED_KONTEXT_RESOLUTIONS", "KONTEXT_MAX_AREA", "KONTEXT_PIPELINES"]
