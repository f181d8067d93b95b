"""Stable unCLIP folders (``StableUnCLIPPipeline``, ``StableUnCLIPImg2ImgPipeline``, diffusers 0.42.1).

Stable unCLIP (Stability AI's Stable Diffusion 2.1 unCLIP) is Stable Diffusion (Rombach et al. 2022) whose UNet also
takes a CLIP image embedding (Radford et al. 2021) as its class label, the decoder of unCLIP (Ramesh et al. 2022,
Sec. 2.1) on SD's latents; the prompt still drives the cross-attention. The embedding e (B, d) comes

* from a CLIP prior (``StableUnCLIPPipeline``: ``prior_tokenizer``, ``prior_text_encoder``, ``prior``,
  ``prior_scheduler``): Kandinsky 2.2's prior loop (:func:`.kandinsky.prior_embeddings`: the PriorTransformer
  predicting x_0, classifier-free guidance s = 4 against the empty prompt, 25 steps of the folder's scheduler, a
  ``DDPMScheduler`` of Karlo's settings: :func:`.kandinsky.prior_sampler`), or
* from a picture (``StableUnCLIPImg2ImgPipeline``: ``feature_extractor``, ``image_encoder``): the
  ``CLIPVisionModelWithProjection``'s ``image_embeds`` of its pixel values, or given ``image_embeds``.

Then, as ``noise_image_embeddings`` (:meth:`StableUnCLIP.noised_embeddings`): normalised by the
``image_normalizer``'s statistics, (e - mean) / std, noised to level k (``noise_level``, 0..T - 1 of the
``image_noising_scheduler``) by its forward process sqrt(abar_k) e + sqrt(1 - abar_k) n (Ho et al. 2020, eq. 4;
:func:`.sd_upscale.noised_low_res`), un-normalised, and joined by k's sinusoidal embedding (cos | sin, width d):
the UNet's ``class_labels`` c (B, 2d) (``class_embed_type="projection"``). Classifier-free guidance (Ho & Salimans
2022, diffusers' eps_u + s (eps_c - eps_u), default s = 10) pairs the empty (or negative) prompt with zeros of c's
shape; the UNet loop is :func:`.stable_diffusion.text_to_image`'s (default 20 steps of the folder's own scheduler,
:func:`.sd_image_variation.folder_sampler`). Row i draws, as the pipeline with generator i: the prior's x_T and
steps' noise, then the embedding's noise n, then z_T (unless given), then the sampler's noise.

Refused in one line before any weight is read (:func:`check_stable_unclip_folder`): another pipeline, a missing
component, a UNet without the ``projection`` class embedding of width 2d, widths that disagree, an LCM / TCD
scheduler, a prior scheduler :func:`.kandinsky.prior_sampler` does not step; and the options the pipelines do not
have. ``diffkit sample --checkpoint FOLDER --prompt TEXT [--image PNG] [--noise-level N]``
(:mod:`diffkit.commands._stable_unclip`).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, read_json_object
from .sd_image_variation import ImageVariation
from .stable_diffusion import StableDiffusion

UNCLIP_PIPELINE, UNCLIP_IMG2IMG_PIPELINE = "StableUnCLIPPipeline", "StableUnCLIPImg2ImgPipeline"
UNCLIP_PIPELINES = (UNCLIP_PIPELINE, UNCLIP_IMG2IMG_PIPELINE)
COMMON_PARTS = ("image_normalizer", "image_noising_scheduler", "tokenizer", "text_encoder", "unet", "scheduler", "vae")
PRIOR_PARTS = ("prior_tokenizer", "prior_text_encoder", "prior", "prior_scheduler")
IMAGE_PARTS = ("feature_extractor", "image_encoder")
DEFAULTS = (10.0, 20)  # both pipelines' (guidance_scale, num_inference_steps)
PRIOR_DEFAULTS = (4.0, 25)  # StableUnCLIPPipeline's (prior_guidance_scale, prior_num_inference_steps)
NOISING_BOUND = "the image_noising_scheduler's num_train_timesteps - 1"  # noise_level's largest value


def stable_unclip_kind(path) -> Optional[str]:
    """``model_index.json``'s ``_class_name`` where it is one of :data:`UNCLIP_PIPELINES`, else None."""
    from .sd_xl import pipeline_class
    name = pipeline_class(path)
    return name if name in UNCLIP_PIPELINES else None


def is_stable_unclip_folder(path) -> bool:
    return stable_unclip_kind(path) is not None


def check_unclip_unet(config: dict, directory, lcm: bool = False, inpainting: bool = False, width: int = None,
                      **kinds) -> None:
    """The UNet of a Stable unCLIP folder: ``class_embed_type="projection"`` of input width 2 ``width`` (the noised
    embedding and its level's embedding), otherwise :func:`.stable_diffusion.check_stable_diffusion_unet`'s."""
    from .stable_diffusion import check_stable_diffusion_unet
    found = (config.get("class_embed_type"), config.get("projection_class_embeddings_input_dim"))
    if found != ("projection", 2 * width if width else found[1]) or not found[1]:
        raise DiffkitError(f"{directory} has a UNet with class_embed_type={found[0]!r}, projection_class_embeddings_"
                           f"input_dim={found[1]!r}; allowed: 'projection' of 2 x {width} (the image embedding "
                           f"and its noise level's embedding)")
    rest = {k: v for k, v in config.items() if k not in ("class_embed_type", "projection_class_embeddings_input_dim")}
    check_stable_diffusion_unet(rest, directory, lcm, inpainting, **kinds)


def check_stable_unclip_folder(directory) -> dict:
    """The folder's scheduler config, after one-line checks from its JSON alone (module docstring)."""
    from .kandinsky import prior_sampler
    from .pixart import check_classes
    from .sd_xl import _index
    from .stable_cascade_image import IMAGE_CLASSES
    directory = Path(directory)
    kind = stable_unclip_kind(directory)
    if kind is None:
        raise DiffkitError(f"{directory} is not a Stable unCLIP folder (model_index.json naming "
                           f"{' or '.join(UNCLIP_PIPELINES)})")
    text = kind == UNCLIP_PIPELINE
    classes = {"unet": ("UNet2DConditionModel",), "image_normalizer": ("StableUnCLIPImageNormalizer",)}
    classes.update({"prior": ("PriorTransformer",), "prior_text_encoder": ("CLIPTextModelWithProjection",)} if text
                   else IMAGE_CLASSES)
    check_classes(directory, _index(directory), COMMON_PARTS + (PRIOR_PARTS if text else IMAGE_PARTS),
                  f"Stable unCLIP ({kind})", classes)
    scheduler = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    if scheduler.get("_class_name") in ("LCMScheduler", "TCDScheduler"):
        raise DiffkitError(f"{directory}'s scheduler is a {scheduler['_class_name']}; allowed: the pipeline's "
                           f"(DDIM, PNDM, Euler, DPM-Solver, ...), as {kind} runs them")
    noising = read_json_object(directory / "image_noising_scheduler" / "scheduler_config.json",
                               "image_noising_scheduler config")
    if noising.get("_class_name") not in ("DDPMScheduler", "DDIMScheduler"):
        raise DiffkitError(f"{directory}'s image_noising_scheduler is a {noising.get('_class_name')!r}; allowed: a "
                           f"DDPMScheduler or DDIMScheduler (add_noise with its alphas_cumprod)")
    width = read_json_object(directory / "image_normalizer" / "config.json", "image_normalizer config").get(
        "embedding_dim", 768)
    if text:
        prior_sampler(read_json_object(directory / "prior_scheduler" / "scheduler_config.json",
                                       "prior_scheduler config"))
        other = ("prior", read_json_object(directory / "prior" / "config.json", "prior config").get("embedding_dim"))
    else:
        other = ("image_encoder", read_json_object(directory / "image_encoder" / "config.json",
                                                   "image encoder config").get("projection_dim"))
    if other[1] != width:
        raise DiffkitError(f"{directory}'s {other[0]} makes embeddings of width {other[1]!r}, its image_normalizer "
                           f"embedding_dim={width!r}; allowed: equal widths")
    check_unclip_unet(read_json_object(directory / "unet" / "config.json", "unet config"), directory, width=width)
    return scheduler


def refuse_stable_unclip_folder(path) -> None:
    """One line for a Stable unCLIP folder given where a plain Stable Diffusion folder is expected."""
    kind = stable_unclip_kind(path)
    if kind is not None:
        image = " --image PNG" if kind == UNCLIP_IMG2IMG_PIPELINE else ""
        raise DiffkitError(f"{path} is a Stable unCLIP folder ({kind}): its UNet takes a CLIP image embedding as its "
                           f"class label; use diffkit sample --checkpoint {path} --prompt TEXT{image} (library: "
                           f"stable_unclip.load_stable_unclip and stable_unclip)")


@dataclass
class StableUnCLIP(StableDiffusion):
    """A loaded Stable unCLIP folder (:func:`load_stable_unclip`): Stable Diffusion with the image normaliser's
    statistics, the noising schedule, and the prior (a :class:`.kandinsky.KandinskyPrior`, text-to-image) or the
    image encoder and its processor (img2img). ``class_labels``: the rows of c (B, 2d) a call is conditioned on."""

    pipeline: str = UNCLIP_PIPELINE
    normalizer: tuple = None  # (mean, std), each (1, d)
    noising_schedule: object = None
    prior: object = None
    image_encoder: object = None
    feature_extractor: object = None
    class_labels: Optional[torch.Tensor] = None

    encode_images = ImageVariation.encode_images  # (B, 1, d) of PIL images or paths, the pipeline's _encode_image
    scheduler_grid = ImageVariation.scheduler_grid  # the folder's own scheduler's timesteps
    folder_sampler = ImageVariation.folder_sampler

    @property
    def default_guidance_scale(self) -> float:
        return DEFAULTS[0]

    @property
    def width(self) -> int:
        """d, the image embedding's width (the normaliser's ``embedding_dim``)."""
        return int(self.normalizer[0].shape[-1])

    def noised_embeddings(self, embeds: torch.Tensor, noise_level: int, generator=None) -> torch.Tensor:
        """c (B, 2d) of image embeddings (B, d) as ``noise_image_embeddings`` (module docstring): the noise from
        ``generator`` (one, or one per row)."""
        from .sd_upscale import check_noise_level, noised_low_res
        from . import require
        diffusers = require("diffusers")
        level = check_noise_level(noise_level, self.noising_schedule.num_timesteps - 1, bound=NOISING_BOUND)
        mean, std = (s.to(embeds.device, torch.float32) for s in self.normalizer)
        scaled = (embeds.float() - mean) * 1.0 / std
        noised = noised_low_res(scaled, level, self.noising_schedule, generator) * std + mean
        levels = torch.full((embeds.shape[0],), level, device=embeds.device)
        embedded = diffusers.models.embeddings.get_timestep_embedding(levels, self.width, flip_sin_to_cos=True,
                                                                      downscale_freq_shift=0)
        return torch.cat([noised, embedded.to(noised.dtype)], 1)

    def guided(self, guidance_scale: float, null_context: torch.Tensor, convention: str = "diffusers", **options):
        """:meth:`.stable_diffusion.StableDiffusion.guided` with zeros as the null half's class labels."""
        return super().guided(guidance_scale, null_context, convention,
                              null_cond={"class_labels": torch.zeros(1, 2 * self.width)}, **options)

    def prompt_guidance(self, prompts: list, negative_prompt, guidance_scale: float, convention: str,
                        guidance_rescale: float, image_size: tuple = None, micro_conditioning=None, clip_skip=None,
                        prompt_2=None, negative_prompt_2=None, apg: Optional[dict] = None) -> tuple:
        """Stable Diffusion's prompt guidance with :attr:`class_labels` in the cond; the pipelines have no guidance
        rescale or APG (and the img2img one passes no ``clip_skip`` on): one line."""
        for name, value in (("guidance_rescale", guidance_rescale or None), ("apg", apg or None),
                            ("clip_skip", clip_skip if self.pipeline == UNCLIP_IMG2IMG_PIPELINE else None)):
            if value is not None:
                raise DiffkitError(f"{name}={value!r} is not allowed: {self.pipeline} has no such option")
        if self.class_labels is None:
            raise DiffkitError("a Stable unCLIP folder is sampled with stable_unclip.stable_unclip (its class labels "
                               "are the noised CLIP image embedding)")
        denoiser, cond = super().prompt_guidance(prompts, negative_prompt, guidance_scale, convention, 0.0,
                                                 image_size, micro_conditioning, clip_skip, prompt_2,
                                                 negative_prompt_2)
        return denoiser, {**cond, "class_labels": self.class_labels.to(self.device, self.dtype)}


def load_stable_unclip(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                       progress: bool = True, lora=None, textual_inversion=None) -> StableUnCLIP:
    """Load a Stable unCLIP folder (never downloads, never unpickles), checked first
    (:func:`check_stable_unclip_folder`). ``lora`` / ``textual_inversion``: as
    :func:`.stable_diffusion.load_stable_diffusion`'s (:mod:`.sd_lora`, :mod:`.sd_textual_inversion`; every file read
    and checked before a weight loads), merged into the UNet and the SD ``text_encoder`` / ``tokenizer`` only, as both
    pipelines' ``load_lora_weights`` + ``fuse_lora`` and ``load_textual_inversion`` do (the prior's text encoder and
    tokenizer are left alone: the prior reads the prompt as written)."""
    from .sd_lora import merge_sd_loras, read_sd_loras
    from .sd_textual_inversion import add_textual_inversions, read_textual_inversions
    from . import from_pretrained, library_progress_bars, require
    from .deepfloyd_if import pipeline_schedule
    from .kandinsky import KandinskyPrior, _schedule
    from .stable_cascade_image import load_image_encoder
    from .stable_diffusion import _load_stable_diffusion
    diffusers, transformers = require("diffusers"), require("transformers")
    from diffusers.pipelines.stable_diffusion import stable_unclip_image_normalizer as NORMALIZER
    directory = Path(directory)
    check_stable_unclip_folder(directory)
    kind = stable_unclip_kind(directory)
    loras = read_sd_loras(lora) if lora else []
    embeddings = read_textual_inversions(textual_inversion) if textual_inversion else []
    width = read_json_object(directory / "image_normalizer" / "config.json").get("embedding_dim", 768)
    common = {"local_files_only": True, "torch_dtype": dtype, "use_safetensors": True}
    with library_progress_bars(progress):
        sd = _load_stable_diffusion(directory, device, dtype,
                                    check_unet=lambda *a, **k: check_unclip_unet(*a, width=width, **k))
        normalizer = from_pretrained(NORMALIZER.StableUnCLIPImageNormalizer, directory / "image_normalizer", **common)
        extra = {}
        if kind == UNCLIP_PIPELINE:
            prior = from_pretrained(diffusers.PriorTransformer, directory / "prior", **common)
            text = from_pretrained(transformers.CLIPTextModelWithProjection, directory / "prior_text_encoder",
                                   **common)
            tokenizer = from_pretrained(transformers.CLIPTokenizer, directory / "prior_tokenizer",
                                        local_files_only=True)
            for module in (prior, text):
                module.to(sd.device).eval().requires_grad_(False)
            config = read_json_object(directory / "prior_scheduler" / "scheduler_config.json")
            default = "sample" if config.get("_class_name") == "UnCLIPScheduler" else "epsilon"
            extra["prior"] = KandinskyPrior(prior=prior, text_encoder=text, tokenizer=tokenizer, image_encoder=None,
                                            schedule=_schedule(config), scheduler_config=config, device=sd.device,
                                            prediction_type=config.get("prediction_type", default))
        else:
            extra["image_encoder"] = load_image_encoder(directory, "", str(directory / "image_encoder"), dtype,
                                                        sd.device)
            extra["feature_extractor"] = from_pretrained(transformers.CLIPImageProcessor,
                                                         directory / "feature_extractor", local_files_only=True)
    noising = pipeline_schedule(read_json_object(directory / "image_noising_scheduler" / "scheduler_config.json"))
    stats = tuple(p.detach().to(sd.device, torch.float32) for p in (normalizer.mean, normalizer.std))
    model = StableUnCLIP(**{f.name: getattr(sd, f.name) for f in fields(sd)}, pipeline=kind, normalizer=stats,
                         noising_schedule=noising, **extra)
    add_textual_inversions(model, embeddings)
    merge_sd_loras(model, loras)
    return model


ALLOWED = {"seed", "generator", "latents", "height", "width", "output_range", "return_latents", "progress",
           "negative_prompt", "clip_skip", "freeu"}


def stable_unclip(model: StableUnCLIP, prompts: Union[str, Sequence[str], None] = None, *, images=None,
                  image_embeds: Optional[torch.Tensor] = None, noise_level: int = 0,
                  prior_guidance_scale: Optional[float] = None, prior_steps: Optional[int] = None,
                  prior_latents: Optional[torch.Tensor] = None, sampler: Optional[str] = None,
                  steps: Optional[int] = None, nfe: Optional[int] = None, guidance_scale: Optional[float] = None,
                  convention: str = "diffusers", grid: Union[None, str, torch.Tensor] = None, seed: Optional[int] = 0,
                  generator=None, latents: Optional[torch.Tensor] = None, **options) -> torch.Tensor:
    """Images (or with ``return_latents`` z_0) of ``prompts`` as ``StableUnCLIPPipeline(prompts, noise_level=k,
    prior_guidance_scale=..., prior_num_inference_steps=..., guidance_scale=s, num_inference_steps=steps)``, or for
    an img2img folder ``StableUnCLIPImg2ImgPipeline(images | image_embeds=(B, d), prompts (default ""), ...)``
    (module docstring). ``images``: a PIL image or path (every row) or one per prompt. Row i draws from
    ``generator[i]`` (default ``torch.Generator().manual_seed(seed + i)``); ``latents``: z_T given (then not drawn).
    sampler / grid None: the folder's loop (:func:`.sd_image_variation.image_variation`'s rule); guidance in
    ``convention`` (default s = 10); steps default 20. ``options``: ``height`` / ``width``, ``negative_prompt``,
    ``clip_skip`` (text-to-image), ``freeu``, ``output_range``, ``return_latents``, ``progress`` and the sampler's
    (``eta``, ...); :func:`~.stable_diffusion.text_to_image`'s other keywords are refused in one line."""
    from .kandinsky import _generators, prior_embeddings
    from ..noise import randn
    from .stable_diffusion import prompt_list, text_to_image
    for name in inspect.signature(text_to_image).parameters:
        if name in options and name not in ALLOWED:
            raise DiffkitError(f"{name}= is not allowed with a Stable unCLIP folder ({model.pipeline} has no such "
                               f"option); allowed: {', '.join(sorted(ALLOWED))} and the sampler's options")
    text = model.pipeline == UNCLIP_PIPELINE
    given = {"images": images, "image_embeds": image_embeds} if text else {
        "prior_guidance_scale": prior_guidance_scale, "prior_steps": prior_steps, "prior_latents": prior_latents}
    for name, value in given.items():
        if value is not None:
            raise DiffkitError(f"{name}= is not allowed with a {model.pipeline} folder (its image embedding comes "
                               f"from {'the prior' if text else 'an image'})")
    if prompts is None and text:
        raise DiffkitError(f"give prompts: {UNCLIP_PIPELINE}'s prior draws the image embedding from them")
    prompts = prompt_list("" if prompts is None else prompts)
    rows = len(prompts)
    generators = _generators(generator, seed, rows)
    if text:
        embeds, _ = prior_embeddings(
            model.prior, prompts, guidance_scale=PRIOR_DEFAULTS[0] if prior_guidance_scale is None else
            prior_guidance_scale, steps=PRIOR_DEFAULTS[1] if prior_steps is None else prior_steps,
            generator=generators, latents=prior_latents)
    else:
        embeds = _image_rows(model, images, image_embeds, rows)
    labels = model.noised_embeddings(embeds, noise_level, generators)
    if latents is None:
        shape = model.latent_shape(rows, options.get("height"), options.get("width"))
        latents = randn(shape, generators, device=model.device, dtype=torch.float32)
    if sampler is None:
        sampler, own = model.folder_sampler()
        options = {**own, **options}
        grid = "scheduler" if grid is None and nfe is None else grid
    steps = DEFAULTS[1] if steps is None and nfe is None else steps
    return text_to_image(replace(model, class_labels=labels), prompts, sampler=sampler, steps=steps, nfe=nfe,
                         guidance_scale=guidance_scale, convention=convention, grid=grid, seed=None,
                         latents=latents, generator=generators, **options)


def _image_rows(model: StableUnCLIP, images, image_embeds, rows: int) -> torch.Tensor:
    """(rows, d): the images' CLIP embeddings (one image: every row), or ``image_embeds`` (B, d) of ``rows``."""
    if (images is None) == (image_embeds is None):
        raise DiffkitError("give images (PIL images or paths) or image_embeds (B, d), one of them")
    if image_embeds is not None:
        if image_embeds.ndim != 2 or image_embeds.shape != (rows, model.width):
            raise DiffkitError(f"image_embeds of shape {tuple(image_embeds.shape)} are not allowed; give "
                               f"({rows}, {model.width})")
        return image_embeds.to(model.device, torch.float32)
    images = list(images) if isinstance(images, (list, tuple)) else [images]
    if len(images) not in (1, rows):
        raise DiffkitError(f"{len(images)} images for {rows} prompts; give one (every row) or one per prompt")
    embeds = model.encode_images(images)[:, 0].float()
    return embeds.expand(rows, -1) if len(images) == 1 else embeds


__all__ = ["UNCLIP_PIPELINE", "UNCLIP_IMG2IMG_PIPELINE", "StableUnCLIP", "is_stable_unclip_folder",
           "stable_unclip_kind", "check_stable_unclip_folder", "load_stable_unclip", "stable_unclip",
           "refuse_stable_unclip_folder"]
