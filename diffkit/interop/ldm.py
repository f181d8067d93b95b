"""The latent-diffusion folders of Rombach et al. 2022 ("High-Resolution Image Synthesis with Latent Diffusion
Models", CVPR 2022; diffusers 0.42.1 ``pipelines/latent_diffusion`` and ``deprecated/latent_diffusion_uncond``),
sampled with diffkit's samplers.

The diffusion model runs on z = s E(x) (Sec. 3.2, s the ``vqvae``'s ``scaling_factor``); images are x = D(z / s),
where a ``VQModel`` first snaps z / s to its codebook (``VQModel.decode`` with ``force_not_quantize=False``, as LDM's
``VQModelInterface.decode``), an ``AutoencoderKL`` decodes it as it is (:class:`.dit_pipeline.DiffusersVAEDecoder`
either way). Three pipelines, each reproduced step for step:

* ``LDMTextToImagePipeline`` (CompVis/ldm-text2im-large-256; Sec. 4.3.1): a ``UNet2DConditionModel`` on the
  latents, cross-attending to ``LDMBertModel``'s last states of the prompt (``BertTokenizer``, padded / truncated
  to 77 tokens, no attention mask). Guidance (Ho & Salimans 2022, eq. 6, diffusers' convention): eps_u +
  s (eps_c - eps_u) against the empty prompt "" for any s != 1 (s < 1 too), default s = 1: one unguided call. The
  pipeline draws z_T (B, C, H / 8, W / 8) (its fixed 8) and never scales it by ``init_noise_sigma`` nor its input by
  ``scale_model_input``: with a ``DDIMScheduler`` or ``PNDMScheduler`` (both identities) that is DDIM / PNDM, with an
  ``LMSDiscreteScheduler`` it is not a sampler of the model (refused as the folder's loop; give ``sampler=``).
* ``LDMPipeline`` (CompVis/ldm-celebahq-256; unconditional): a ``UNet2DModel`` on the latents of side
  ``sample_size``, z_T scaled by ``init_noise_sigma``, decoded as above.
* ``LDMSuperResolutionPipeline`` (CompVis/ldm-super-resolution-4x-openimages; Sec. 4.4): a ``UNet2DModel`` taking
  cat([z_t, y]) with y the low-resolution image in [-1, 1] (the latents have its size; the f = 4 ``VQModel``
  decodes 4x), scaled together by ``scale_model_input`` (an identity for DDIM / PNDM, so y is passed as it is:
  :class:`LowResConcatNet`); the image is D(z_0) (no scaling factor), clamped to [-1, 1]. Its ``preprocess``
  resizes a PIL image to sides that are multiples of 32: diffkit asks for such sizes instead
  (:func:`check_low_res`).

The folder's loop (``sampler=None``): its scheduler's timesteps after ``set_timesteps(steps)`` as diffkit's grid
(:meth:`LatentDiffusion.scheduler_grid`) with the sampler computing its step (:func:`folder_sampler`): ``DDIMScheduler``
-> ``ddim`` (``eta`` as the pipelines pass it), ``PNDMScheduler`` -> ``pndm-skip-prk`` (``skip_prk_steps``) or
``pndm`` (F-PNDM, its Runge-Kutta warm-up). The
pipelines draw DDIM's eta > 0 noise from torch's global generator (they pass no generator to ``step``); diffkit
draws it from each sample's own. Any other diffkit sampler runs on its own grid, or on the scheduler's with
``grid="scheduler"``. Defaults: 50 steps (text-to-image, unconditional), 100 (super-resolution), eta 0.

Refused in one line before any weight is read (:func:`check_ldm_folder`): another pipeline class, a missing
component, a component of another class, a UNet whose channels do not fit the ``vqvae``'s latents.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, read_json_object
from . import from_pretrained, library_progress_bars, require
from .sd_inpaint import ChannelConcatNet

LDM_TEXT2IM, LDM_UNCOND, LDM_SUPER_RES = "LDMTextToImagePipeline", "LDMPipeline", "LDMSuperResolutionPipeline"
_SCHEDULERS = ("DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
               "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler")
LDM_CLASSES = {  # {pipeline: {component: the classes its __init__ takes}}
    LDM_TEXT2IM: {"unet": ("UNet2DConditionModel",), "vqvae": ("VQModel", "AutoencoderKL"), "bert": ("LDMBertModel",),
                  "tokenizer": ("BertTokenizer", "BertTokenizerFast"), "scheduler": _SCHEDULERS[:3]},
    LDM_UNCOND: {"unet": ("UNet2DModel",), "vqvae": ("VQModel",), "scheduler": _SCHEDULERS},
    LDM_SUPER_RES: {"unet": ("UNet2DModel",), "vqvae": ("VQModel",), "scheduler": _SCHEDULERS},
}
LDM_STEPS = {LDM_TEXT2IM: 50, LDM_UNCOND: 50, LDM_SUPER_RES: 100}  # the __call__ defaults of num_inference_steps
LDM_GUIDANCE = 1.0  # LDMTextToImagePipeline's default guidance_scale: no guidance
LDM_MAX_LENGTH = 77  # its tokenizer call's max_length
LDM_LATENT_FACTOR = 8  # its latents' height // 8, width // 8 (and height, width multiples of 8)
SUPER_RES_MULTIPLE = 32  # LDMSuperResolutionPipeline's preprocess: sides resized to multiples of 32
LOW_RES_KEY = "low_res_image"


def ldm_kind(path) -> Optional[str]:
    """The latent-diffusion pipeline class ``path``'s ``model_index.json`` names (:data:`LDM_CLASSES`), else None."""
    from .sd_xl import pipeline_class
    name = pipeline_class(path)
    return name if name in LDM_CLASSES else None


def check_ldm_folder(directory, pipeline: Optional[str] = None) -> tuple:
    """(pipeline class, scheduler config) of a latent-diffusion folder (``pipeline``: the class it must name), checked
    from its JSON alone (module docstring); a one-line DiffkitError for what diffkit does not drive."""
    from .pixart import check_classes
    directory = Path(directory)
    kind = ldm_kind(directory)
    if kind is None or (pipeline is not None and kind != pipeline):
        allowed = pipeline or " / ".join(LDM_CLASSES)
        raise DiffkitError(f"{directory} is not an {allowed} folder (model_index.json naming it)")
    classes = LDM_CLASSES[kind]
    check_classes(directory, read_json_object(directory / "model_index.json", "diffusers index"), tuple(classes),
                  "latent diffusion", classes)
    unet = read_json_object(directory / "unet" / "config.json", "unet config")
    latents = int(read_json_object(directory / "vqvae" / "config.json", "vqvae config").get("latent_channels", 3))
    want = (2 * latents if kind == LDM_SUPER_RES else latents, latents)
    have = (unet.get("in_channels"), unet.get("out_channels"))
    if have != want:
        raise DiffkitError(f"{directory}'s unet has in_channels, out_channels = {have[0]!r}, {have[1]!r}; allowed: "
                           f"{want[0]}, {want[1]} (the vqvae's {latents} latent channels"
                           f"{' + the low-resolution image' if kind == LDM_SUPER_RES else ''})")
    for key in ("class_embed_type", "num_class_embeds", "addition_embed_type", "time_cond_proj_dim"):
        if unet.get(key) is not None:
            raise DiffkitError(f"{directory}'s unet has {key}={unet[key]!r}, an input {kind} never gives; allowed: "
                               f"null")
    return kind, read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")


def folder_sampler(config: dict) -> str:
    """The diffkit sampler computing the step of the folder's scheduler (``config``: its JSON) as the pipelines run it:
    ``DDIMScheduler`` -> ``ddim`` (:func:`.pixart.folder_sampler`'s checks), ``PNDMScheduler`` -> ``pndm-skip-prk``
    (``skip_prk_steps``) or ``pndm`` (its Runge-Kutta warm-up, F-PNDM); another class is one line."""
    from .pixart import folder_sampler as dpm_or_ddim
    name = config.get("_class_name")
    if name == "DDIMScheduler":
        return dpm_or_ddim(config)[0]
    if name == "PNDMScheduler":
        return "pndm-skip-prk" if config.get("skip_prk_steps", False) else "pndm"
    raise DiffkitError(f"the folder's {name} is not run as its pipeline runs it here (allowed: DDIMScheduler, "
                       f"PNDMScheduler; the text-to-image pipeline never scales by init_noise_sigma, the "
                       f"super-resolution one scales the low-resolution image too); give a diffkit sampler "
                       f"(--sampler NAME)")


class LowResConcatNet(ChannelConcatNet):
    """``net(x, t, low_res_image=y)`` = ``inner(cat([x, y], 1), t)``: LDMSuperResolutionPipeline's UNet input
    (``torch.cat([latents, image], dim=1)``; :class:`~.sd_inpaint.ChannelConcatNet`)."""
    KEYS = (LOW_RES_KEY,)
    WHAT = "a latent-diffusion super-resolution UNet (latents + low-resolution image in)"
    USE = "give cond['low_res_image'] (ldm.super_resolve; diffkit upscale)"


@dataclass
class LatentDiffusion:
    """The loaded components of a latent-diffusion folder (:func:`load_ldm`); ``bert`` / ``tokenizer``: None but
    for ``LDMTextToImagePipeline``."""

    pipeline: str
    unet: object
    vqvae: object
    bert: object
    tokenizer: object
    schedule: object
    prediction_type: str
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype = torch.float32
    _denoiser: object = field(default=None, repr=False)

    @property
    def vae_scale_factor(self) -> int:
        """The ``vqvae``'s factor f = 2^(levels - 1)."""
        return 2 ** (len(self.vqvae.config.block_out_channels) - 1)

    @property
    def default_steps(self) -> int:
        return LDM_STEPS[self.pipeline]

    @property
    def denoiser(self):
        """The unguided :class:`~diffkit.denoiser.Denoiser` of the UNet (cond: ``context`` for text-to-image,
        ``low_res_image`` for super-resolution, none for the unconditional UNet)."""
        if self._denoiser is None:
            from .denoiser import diffusers_denoiser
            from .sd_inpaint import concat_denoiser
            if self.pipeline == LDM_SUPER_RES:
                self._denoiser = concat_denoiser(LowResConcatNet, self.unet, self.schedule, self.prediction_type)
            else:
                self._denoiser = diffusers_denoiser(self.unet, schedule=self.schedule, learned_variance=False,
                                                    prediction_type=self.prediction_type, uses_labels=False)
        return self._denoiser

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """x = D(z / s) in [-1, 1] (not clamped; a VQModel snaps to its codebook first); super-resolution: D(z)."""
        from .dit_pipeline import DiffusersVAEDecoder
        decoder = DiffusersVAEDecoder(self.vqvae)
        if self.pipeline == LDM_SUPER_RES:
            decoder.scale_factor = 1.0  # LDMSuperResolutionPipeline decodes its latents unscaled
        return decoder(latents)

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """LDMBertModel's last states (B, 77, d) of ``prompts`` padded / truncated to 77 tokens (no mask)."""
        from .stable_diffusion import prompt_list
        tokens = self.tokenizer(prompt_list(prompts), padding="max_length", max_length=LDM_MAX_LENGTH,
                                truncation=True, return_tensors="pt")
        with torch.no_grad():
            return self.bert(tokens.input_ids.to(self.device))[0].to(self.dtype)

    def scheduler_grid(self, steps: int) -> torch.Tensor:
        """diffkit's grid of the folder's scheduler after ``set_timesteps(steps)`` (:func:`.grid_from_diffusers`).
        A DDIM / PNDM scheduler with ``set_alpha_to_one=False`` whose last timestep is 0 (``steps_offset`` 0, the
        "leading" spacing) steps from alphas_cumprod[0] to ``final_alpha_cumprod`` = alphas_cumprod[0], the identity:
        the grid ends at t = 0 instead (one network call fewer, the same samples to float rounding)."""
        from ..errors import check_range
        from .schedulers import grid_from_diffusers
        check_range("steps", steps, 1, None, integer=True)
        cls = getattr(require("diffusers"), self.scheduler_config["_class_name"])
        scheduler = cls.from_config(self.scheduler_config)
        scheduler.set_timesteps(steps)
        if scheduler.config.get("set_alpha_to_one", True) or int(scheduler.timesteps[-1]) != 0:
            return grid_from_diffusers(scheduler)
        ending = cls.from_config({**self.scheduler_config, "set_alpha_to_one": True})  # [..., 0, -1]: drop the -1
        ending.set_timesteps(steps)
        grid = grid_from_diffusers(ending)[:-1]
        if len(grid) < 2:
            raise DiffkitError(f"steps={steps} is not allowed for this folder's scheduler: its one step is the "
                               f"identity (from alphas_cumprod[0] to itself); give 2 or more")
        return grid



def load_ldm(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32, progress: bool = True,
             pipeline: Optional[str] = None) -> LatentDiffusion:
    """Load a latent-diffusion folder (never downloads, never unpickles; ``pipeline``: the class it must name),
    checked first (:func:`check_ldm_folder`)."""
    from .schedulers import schedule_from_diffusers
    diffusers, transformers = require("diffusers"), require("transformers")
    directory = Path(directory)
    kind, sched = check_ldm_folder(directory, pipeline)
    schedule, prediction_type = schedule_from_diffusers(sched)
    common = {"local_files_only": True, "torch_dtype": dtype, "use_safetensors": True}
    unet_cls = diffusers.UNet2DConditionModel if kind == LDM_TEXT2IM else diffusers.UNet2DModel
    vq_name = read_json_object(directory / "model_index.json", "diffusers index")["vqvae"][1]
    bert = tokenizer = None
    with library_progress_bars(progress):
        unet = from_pretrained(unet_cls, directory / "unet", **common)
        vqvae = from_pretrained(getattr(diffusers, vq_name), directory / "vqvae", **common)
        if kind == LDM_TEXT2IM:
            from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertModel
            bert = from_pretrained(LDMBertModel, directory / "bert", **common)
            tokenizer = from_pretrained(transformers.BertTokenizer, directory / "tokenizer", local_files_only=True)
    device = torch.device(device)
    for module in (unet, vqvae, bert):
        if module is not None:
            module.to(device).eval().requires_grad_(False)
    return LatentDiffusion(kind, unet, vqvae, bert, tokenizer, schedule, prediction_type, sched, device, dtype)


def _run(ldm: LatentDiffusion, denoiser, noise, cond: Optional[dict], sampler, steps, nfe, grid, generator,
         progress, options) -> torch.Tensor:
    """z_0 of :func:`diffkit.sample` from ``noise``: the folder's loop for ``sampler=None`` (its scheduler's grid of
    ``steps``, default the pipeline's), else ``sampler`` on its own grid or the scheduler's (``grid="scheduler"``)."""
    from ..sampling import resolve_sampler, sample
    if sampler is None:
        sampler, grid = folder_sampler(ldm.scheduler_config), "scheduler" if grid is None else grid
    if isinstance(grid, str):
        if grid != "scheduler" or nfe is not None:
            raise DiffkitError(f"grid={grid!r} with nfe={nfe!r} is not allowed; allowed: grid='scheduler' (the "
                               f"scheduler's own steps, not nfe), a grid tensor, or None")
        grid = ldm.scheduler_grid(ldm.default_steps if steps is None else steps)
    if grid is not None:
        steps = None
    elif steps is None and nfe is None and not resolve_sampler(sampler, None, None)[0].adaptive:
        steps = ldm.default_steps
    return sample(denoiser, noise, sampler, steps, nfe=nfe, grid=grid, generator=generator, cond=cond,
                  progress=progress, device=ldm.device, dtype=ldm.dtype, **options)


def _finish(ldm: LatentDiffusion, z0: torch.Tensor, output_range: str, return_latents: bool) -> torch.Tensor:
    from ..errors import check_choice
    check_choice("output_range", output_range, ("0,1", "-1,1"))
    if return_latents:
        return z0
    images = ldm.decode(z0).clamp(-1, 1)
    return images / 2 + 0.5 if output_range == "0,1" else images


def _noise(ldm: LatentDiffusion, latents, shape: tuple, generator, seed) -> tuple:
    """(z_T, the generators the sampler goes on drawing from): ``latents`` (checked against ``shape``) or drawn from
    ``generator`` (one per sample; default ``torch.Generator().manual_seed(seed + i)`` for sample i)."""
    from ..noise import randn
    generator = generator or [torch.Generator().manual_seed((seed or 0) + i) for i in range(shape[0])]
    if latents is None:
        return randn(shape, generator, device=ldm.device, dtype=ldm.dtype), generator
    if tuple(latents.shape) != tuple(shape):
        raise DiffkitError(f"latents of shape {tuple(latents.shape)} are not allowed; expected {tuple(shape)}")
    return latents.to(ldm.device, ldm.dtype), generator


def text_to_image(ldm: LatentDiffusion, prompts: Union[str, Sequence[str]], *, sampler: Optional[str] = None,
                  steps: Optional[int] = None, nfe: Optional[int] = None, guidance_scale: float = LDM_GUIDANCE,
                  convention: str = "diffusers", height: Optional[int] = None, width: Optional[int] = None,
                  latents: Optional[torch.Tensor] = None, seed: Optional[int] = 0, generator=None,
                  grid: Union[None, str, torch.Tensor] = None, output_range: str = "0,1",
                  return_latents: bool = False, progress: bool = False, **options) -> torch.Tensor:
    """Images of an ``LDMTextToImagePipeline`` folder for ``prompts`` as its ``__call__`` (module docstring):
    ``guidance_scale`` (``convention`` "diffusers": s, default 1 = unguided; "seed": w = s - 1) against "";
    height / width (default the UNet's ``sample_size`` x f; multiples of 8; latents of side // 8); ``latents``
    z_T, else sample i from ``generator[i]`` / ``seed + i``; ``options`` to :func:`diffkit.sample` (``eta``)."""
    from ..guidance import ClassifierFreeGuidance, guidance_weight
    from .stable_diffusion import NULL_LABEL, StableDiffusion, prompt_list
    if ldm.pipeline != LDM_TEXT2IM:
        raise DiffkitError(f"text_to_image takes an {LDM_TEXT2IM} folder; this is an {ldm.pipeline} one")
    prompts = prompt_list(prompts)
    default = ldm.unet.config.sample_size * ldm.vae_scale_factor
    height, width = default if height is None else height, default if width is None else width
    for value in (height, width):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % LDM_LATENT_FACTOR:
            raise DiffkitError(f"height x width {height}x{width} is not allowed; give positive multiples of 8 (the "
                               f"pipeline's latents are height // 8 x width // 8)")
    shape = (len(prompts), ldm.unet.config.in_channels, height // LDM_LATENT_FACTOR, width // LDM_LATENT_FACTOR)
    noise, generator = _noise(ldm, latents, shape, generator, seed)
    context = ldm.encode_prompts(prompts)
    if guidance_weight(guidance_scale, convention) == 0:  # s = 1: one unguided call (the pipeline's branch)
        denoiser, cond = ldm.denoiser, {"context": context}
    else:
        null = ldm.encode_prompts([""] * len(prompts))
        denoiser = ClassifierFreeGuidance(ldm.denoiser, guidance_scale, convention, null_class=NULL_LABEL,
                                          null_context=null)
        cond = StableDiffusion.cond(context)
    z0 = _run(ldm, denoiser, noise, cond, sampler, steps, nfe, grid, generator, progress, options)
    return _finish(ldm, z0, output_range, return_latents)


def unconditional(ldm: LatentDiffusion, batch: int, *, sampler: Optional[str] = None, steps: Optional[int] = None,
                  nfe: Optional[int] = None, latents: Optional[torch.Tensor] = None, seed: Optional[int] = 0,
                  generator=None, grid: Union[None, str, torch.Tensor] = None, output_range: str = "0,1",
                  return_latents: bool = False, progress: bool = False, **options) -> torch.Tensor:
    """``batch`` images of an ``LDMPipeline`` folder as its ``__call__``: z_T (B, C, sample_size, sample_size)
    (``latents``, else sample i from ``generator[i]`` / ``seed + i``; ``init_noise_sigma`` is 1 for DDIM / PNDM)."""
    if ldm.pipeline != LDM_UNCOND:
        raise DiffkitError(f"unconditional takes an {LDM_UNCOND} folder; this is an {ldm.pipeline} one")
    size = ldm.unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    noise, generator = _noise(ldm, latents, (batch, ldm.unet.config.in_channels, *size), generator, seed)
    z0 = _run(ldm, ldm.denoiser, noise, None, sampler, steps, nfe, grid, generator, progress, options)
    return _finish(ldm, z0, output_range, return_latents)


def check_low_res(low_res: torch.Tensor, channels: int = 3) -> None:
    """(B, ``channels``, h, w) floats with sides multiples of 32 (the pipeline's ``preprocess`` would resize others),
    else one line."""
    if low_res.ndim != 4 or low_res.shape[1] != channels or not low_res.is_floating_point():
        raise DiffkitError(f"low_res of shape {tuple(low_res.shape)} is not allowed; give (B, {channels}, h, w) "
                           f"floats in [-1, 1]")
    h, w = low_res.shape[2:]
    if h % SUPER_RES_MULTIPLE or w % SUPER_RES_MULTIPLE:
        raise DiffkitError(f"the low-resolution images are {w}x{h}; allowed: sides that are multiples of 32 "
                           f"({LDM_SUPER_RES}'s preprocess resizes others down to one, e.g. "
                           f"{max(32, w - w % 32)}x{max(32, h - h % 32)})")


def super_resolve(ldm: LatentDiffusion, low_res: torch.Tensor, *, sampler: Optional[str] = None,
                  steps: Optional[int] = None, nfe: Optional[int] = None, seed: Optional[int] = 0, generator=None,
                  grid: Union[None, str, torch.Tensor] = None, output_range: str = "-1,1",
                  return_latents: bool = False, progress: bool = False, **options) -> torch.Tensor:
    """The upscales (f times the size) of ``low_res`` (B, 3, h, w) in [-1, 1] by an ``LDMSuperResolutionPipeline``
    folder as its ``__call__`` (module docstring): z_T (B, C, h, w) of image i from ``generator[i]`` (default
    ``torch.Generator().manual_seed(seed + i)``; the pipeline's list of generators); default 100 steps; images clamped
    to [-1, 1] (``output_range="0,1"``: (x + 1) / 2, the pipeline's ``output_type="pt"``)."""
    if ldm.pipeline != LDM_SUPER_RES:
        raise DiffkitError(f"super_resolve takes an {LDM_SUPER_RES} folder; this is an {ldm.pipeline} one")
    check_low_res(low_res, int(ldm.unet.config.in_channels) - int(ldm.unet.config.out_channels))
    batch = low_res.shape[0]
    noise, generator = _noise(ldm, None, (batch, ldm.unet.config.out_channels, *low_res.shape[2:]), generator, seed)
    cond = {LOW_RES_KEY: low_res.to(ldm.device, ldm.dtype)}
    z0 = _run(ldm, ldm.denoiser, noise, cond, sampler, steps, nfe, grid, generator, progress, options)
    return _finish(ldm, z0, output_range, return_latents)


__all__ = ["LDM_TEXT2IM", "LDM_UNCOND", "LDM_SUPER_RES", "LDM_CLASSES", "LDM_STEPS", "LDM_GUIDANCE", "ldm_kind",
           "check_ldm_folder", "folder_sampler", "LowResConcatNet", "LatentDiffusion", "load_ldm", "text_to_image",
           "unconditional", "check_low_res", "super_resolve"]
