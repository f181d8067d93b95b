"""Kandinsky 2.2 folders (``KandinskyV22PriorPipeline`` + ``KandinskyV22Pipeline``, diffusers 0.42.1), sampled with
diffkit's samplers.

Kandinsky 2.2 (Razzhigaev et al. 2023, "Kandinsky: an Improved Text-to-Image Synthesis with Image Prior and Latent
Diffusion") follows unCLIP (Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation with CLIP Latents"):
a *prior* draws a CLIP image embedding from the prompt's CLIP text states, and a *decoder* (a latent diffusion UNet
conditioned on that embedding alone) draws the image. Two folders, chained as ``KandinskyV22CombinedPipeline``:

* the prior (:func:`prior_embeddings`): the prompt CLIP-tokenised (padded to the tokenizer's
  ``model_max_length``), its ``CLIPTextModelWithProjection`` ``text_embeds`` (``proj_embedding``), last hidden
  states and attention mask as the ``PriorTransformer``'s condition; x_T (B, d) ~ N(0, I); the transformer predicts
  x_0 (``prediction_type="sample"``); classifier-free guidance (Ho & Salimans 2022), s = 4 by default, against the
  empty prompt (or the negative prompt), x_0 = x0_u + s (x0_c - x0_u); the steps those of the folder's
  ``UnCLIPScheduler`` (25 by default): its timesteps round(i (T - 1) / (S - 1)) from T - 1 down to 0, each step the
  DDPM posterior q(x_s | x_t, x_0) (Ho et al. 2020, eq. 6-7) with the respaced beta_{t|s} = 1 - abar_t / abar_s,
  x_0 clipped to +-``clip_sample_range`` (10), and the ``fixed_small_log`` variance beta-tilde (noise only where
  t > 0): diffkit's ``ddpm`` with ``clip_sample`` on that grid (:func:`prior_sampler`), its last x_0 scaled by the
  scheduler's float32 coefficient (:func:`last_step_factor`). The result is un-normalised
  by the transformer's own CLIP statistics, e = x_0 * clip_std + clip_mean (``post_process_latents``).
  The negative embedding is the ``CLIPVisionModelWithProjection``'s ``image_embeds`` of an all-zero image
  (``get_zero_embed``), or, with a negative prompt, the prior's own sample for the negative prompt (drawn in the same
  batch after the prompts', guided against the negative prompt itself: the pipeline's ``prompt + negative_prompt``).
* the decoder (:func:`decode_embeddings`): a ``UNet2DConditionModel`` with ``addition_embed_type="image"`` and
  ``encoder_hid_dim_type="image_proj"`` (the image embedding added to the time embedding and projected to the
  cross-attention tokens; no text), x_T (B, 4, h, w) ~ N(0, I) with h = ceil(H / f^2) f for an H-pixel image and the
  MoVQ factor f = 2^(levels - 1) (``downscale_height_and_width``: the latents are H / f, decoded by the MoVQ to H);
  classifier-free guidance (s = 4) against the negative embedding, eps = eps_u + s (eps_c - eps_u), the variance half
  of the conditional output (learned variance, ``out_channels`` 2C, used where the scheduler's ``variance_type`` is
  ``learned_range``, else dropped); the folder's ``DDPMScheduler`` (diffkit's ``ddpm``, 100 steps by default) or
  ``DDIMScheduler`` (``ddim``) on its own timesteps (:func:`decoder_sampler`; a DDPMScheduler's noise on its last
  step, :func:`last_step_noise`); the images
  ``VQModel.decode(z, force_not_quantize=True)`` (the pipeline's ``output_type="pt"``: not clamped; "np" / "pil":
  (x / 2 + 0.5).clamp(0, 1), :func:`decode_embeddings`'s ``output_range="0,1"``).

Both schedules are the folders' own float32 alphas_cumprod (:func:`.deepfloyd_if.pipeline_schedule`: the last step's
beta-tilde divides by 1 - abar_0). Refused in one line before any weight is read (:func:`check_prior_folder`,
:func:`check_decoder_folder`): another pipeline class, a missing component, a prior scheduler with a learned variance,
a decoder UNet without ``addition_embed_type="image"`` (or ``"image_hint"``), a decoder scheduler other than DDPM /
DDIM. A ``KandinskyV22InpaintPipeline`` folder (a decoder whose UNet takes 9 channels) is loaded here too and inpaints
(:mod:`.kandinsky_inpaint`), and a ``KandinskyV22ControlnetPipeline`` folder (an ``"image_hint"`` UNet) samples and
edits with a ``hint`` (:mod:`.kandinsky_controlnet`). Kandinsky 3 folders (:mod:`.kandinsky3`) are this decoder with
a T5 encoder (:class:`KandinskyDecoder`, :func:`decoder_fields`, the img2img start :func:`strength_grid` /
:func:`noised_images`). Kandinsky 2.1 folders (:mod:`.kandinsky21`) run both loops: their prior folder is this
prior's, their decoder (:class:`.kandinsky21.Kandinsky21Decoder`, which :func:`load_decoder` loads) also reads the
prompt (``prompts=`` of :func:`decode_embeddings`, :func:`image_to_image`, :func:`.kandinsky_inpaint.inpaint`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, read_json_object
from . import from_pretrained, library_progress_bars, require
from .flow_latents import finish_images
from .kandinsky_controlnet import CONTROLNET_PIPELINES, check_hint_unet, hint_cond

PRIOR_PIPELINE, DECODER_PIPELINE = "KandinskyV22PriorPipeline", "KandinskyV22Pipeline"
INPAINT_PIPELINE = "KandinskyV22InpaintPipeline"  # a decoder folder whose UNet takes 9 channels (.kandinsky_inpaint)
DECODER_PIPELINES = (DECODER_PIPELINE, INPAINT_PIPELINE) + CONTROLNET_PIPELINES  # (.kandinsky_controlnet: a hint)
KANDINSKY_PIPELINES = (PRIOR_PIPELINE,) + DECODER_PIPELINES
PRIOR_DEFAULTS = (4.0, 25)  # KandinskyV22PriorPipeline.__call__'s (guidance_scale, num_inference_steps)
DECODER_DEFAULTS = (4.0, 100)  # KandinskyV22Pipeline.__call__'s
DECODER_SIZE = 512  # KandinskyV22Pipeline's default height and width
PRIOR_REQUIRED = ("prior", "image_encoder", "text_encoder", "tokenizer", "scheduler")
DECODER_REQUIRED = ("unet", "scheduler", "movq")
IMAGE_EMBEDS = "image_embeds"  # the decoder UNet's added_cond_kwargs key (.denoiser.ADDED_COND_KEYS)


def kandinsky_kind(path) -> Optional[str]:
    """``model_index.json``'s ``_class_name`` where it is a Kandinsky 2.2 (or 2.1, :mod:`.kandinsky21`) prior or
    decoder, else None."""
    from .kandinsky21 import KANDINSKY21_PIPELINES
    from .sd_xl import pipeline_class
    name = pipeline_class(path)
    return name if name in KANDINSKY_PIPELINES + KANDINSKY21_PIPELINES else None


def is_kandinsky_folder(path) -> bool:
    """True for a ``KandinskyV22Pipeline``, ``KandinskyV22InpaintPipeline`` or ``KandinskyV22Controlnet*``
    (decoder) folder, or a Kandinsky 2.1 decoder folder (:mod:`.kandinsky21`)."""
    from .kandinsky21 import DECODER21_PIPELINES
    return kandinsky_kind(path) in DECODER_PIPELINES + DECODER21_PIPELINES


def prior_sampler(config: dict) -> tuple:
    """(``"ddpm"``, its options) computing the prior's ``UnCLIPScheduler`` step (``config``: its JSON) on its own
    timesteps (module docstring): the ``fixed_small_log`` variance is beta-tilde (diffkit's ``fixed_small``;
    diffusers takes its square root as exp(log(max(v, 1e-20)) / 2)) and ``clip_sample`` clamps x_0 to
    +-``clip_sample_range``. A ``DDPMScheduler`` of ``fixed_small_log`` / ``fixed_small`` variance steps the same
    (Stable unCLIP's prior, :mod:`.stable_unclip`: Karlo's UnCLIPScheduler config as a DDPMScheduler; its own
    timesteps). A learned variance (the prior has no variance output), thresholding or another class: one line."""
    name = config.get("_class_name")
    variance = config.get("variance_type", "fixed_small_log" if name == "UnCLIPScheduler" else "fixed_small")
    allowed = ("fixed_small_log",) if name == "UnCLIPScheduler" else ("fixed_small_log", "fixed_small")
    if name not in ("UnCLIPScheduler", "DDPMScheduler") or variance not in allowed or config.get("thresholding"):
        raise DiffkitError(f"the prior folder's scheduler is a {name!r} with variance_type={variance!r}; allowed: an "
                           f"UnCLIPScheduler with variance_type 'fixed_small_log' (the PriorTransformer predicts no "
                           f"variance) or a DDPMScheduler with 'fixed_small_log' / 'fixed_small', no thresholding")
    options = {"variance_type": "fixed_small"}
    if config.get("clip_sample", True):
        options.update(clip_sample=True, clip_sample_range=float(config.get("clip_sample_range", 1.0)))
    return "ddpm", options


def last_step_factor(config: dict) -> float:
    """The factor c by which the prior's ``UnCLIPScheduler`` scales the clipped x_0 on its last step (t = 0 to
    clean data): there it takes beta = ``betas[0]`` rather than 1 - abar_0 / 1 (``prev_timestep == t - 1``), so its
    posterior coefficient of x_0, sqrt(1) beta_0 / (1 - abar_0), is 1 only up to the float32 rounding of
    abar_0 = 1 - beta_0 (c - 1 = -5.3e-4 for the cosine betas of T = 1000: 1 - abar_0 is 4.1e-5, rounded at 6e-8);
    diffkit's float64 posterior mean is x_0 itself. Computed as the scheduler computes it; a ``DDPMScheduler`` (whose
    last step divides 1 - abar_0 by itself): 1."""
    if config.get("_class_name") == "DDPMScheduler":
        return 1.0
    scheduler = require("diffusers").UnCLIPScheduler.from_config(config)
    return float(scheduler.betas[0] / (1 - scheduler.alphas_cumprod[0]))


def last_step_noise(config: dict, t_last: int, var_values, generators, like: torch.Tensor) -> torch.Tensor:
    """The noise diffusers' ``DDPMScheduler`` adds on its last step where that step starts at t_L > 0 (``leading``
    spacing with ``steps_offset=1``: t_L = 1) and ends on clean data: its ``t > 0`` test draws noise, and the
    posterior variance (1 - 1) / (1 - abar_t) beta, 0, is clamped to 1e-20, so the step's std is 1e-10
    (``fixed_small``) or exp(((1 + v) / 2 log beta + (1 - v) / 2 log 1e-20) / 2) with beta = 1 - abar_{t_L} and the
    UNet's variance output v (``learned_range``, Improved DDPM eq. 15 with the clamped beta-tilde), drawn after every
    other draw from the same generators. DDPM (Ho et al. 2020, Algorithm 2) adds no noise there; diffkit's ``ddpm``
    does not either, so :func:`decode_embeddings` adds this after it to match the pipeline."""
    from ..noise import randn
    scheduler = require("diffusers").DDPMScheduler.from_config(config)
    beta = 1 - scheduler.alphas_cumprod[t_last].double()
    floor = torch.tensor(1e-20, dtype=torch.float32).double()
    if config.get("variance_type") == "learned_range":
        frac = (var_values.double() + 1) / 2
        std = torch.exp(0.5 * (frac * torch.log(beta) + (1 - frac) * torch.log(floor)))
    else:
        std = floor.sqrt()
    return (std * randn(like.shape, generators, device=like.device, dtype=like.dtype).double()).to(like.dtype)


class _Recording:
    """A denoiser that keeps its last prediction (``last``), for :func:`last_step_noise`'s variance output."""

    def __init__(self, inner):
        self.inner, self.last = inner, None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, x, t, **cond):
        self.last = self.inner(x, t, **cond)
        return self.last


def decoder_sampler(config: dict) -> tuple:
    """(sampler, options) computing the decoder's scheduler step on its own timesteps: a ``DDPMScheduler`` ->
    ``ddpm`` with its ``variance_type`` (``learned_range``: the UNet's variance half, Improved DDPM eq. 15;
    ``fixed_small``: beta-tilde) and its x_0 treatment (:func:`.deepfloyd_if.folder_sampler`); a ``DDIMScheduler``
    -> ``ddim`` (:func:`.pixart.folder_sampler`: one line for its clip_sample / thresholding). Another class or
    variance type: one line."""
    from .deepfloyd_if import folder_sampler as ddpm_sampler
    from .pixart import folder_sampler
    name, variance = config.get("_class_name"), config.get("variance_type", "fixed_small")
    if name == "DDIMScheduler":
        return folder_sampler(config)
    if name != "DDPMScheduler" or variance not in ("fixed_small", "learned_range"):
        raise DiffkitError(f"the decoder folder's scheduler is a {name!r} with variance_type={variance!r}; allowed: "
                           f"a DDPMScheduler with variance_type 'fixed_small' or 'learned_range', or a DDIMScheduler")
    sampler, options = ddpm_sampler({**config, "variance_type": "learned_range"})  # its x_0 options
    return sampler, {**options, "variance_type": variance}


def _checked(directory, pipeline: str, required, classes: dict, same=DECODER_PIPELINES,
             version: str = "2.2") -> dict:
    """The index of ``directory`` where it is a ``pipeline`` folder (or, ``pipeline`` being ``same[0]``, one of
    ``same``: folders of the same components) with ``required`` and ``classes``, else one line (the other Kandinsky
    folder named with its flag)."""
    from .kandinsky21 import PRIOR21_PIPELINE
    from .pixart import check_classes
    from .sd_xl import _index
    directory = Path(directory)
    found = kandinsky_kind(directory)
    pipeline = found if found in same and pipeline == same[0] else pipeline
    if found != pipeline:
        flag = "--prior" if pipeline in (PRIOR_PIPELINE, PRIOR21_PIPELINE) else "--checkpoint"
        other = f" (it is a {found} folder: give it as {'--checkpoint' if flag == '--prior' else '--prior'})" \
            if found and (found in (PRIOR_PIPELINE, PRIOR21_PIPELINE)) == (flag == "--checkpoint") else \
            f" (it is a {found} folder)" if found else ""
        raise DiffkitError(f"{directory} is not a {pipeline} folder{other}; allowed for {flag}: a folder whose "
                           f"model_index.json names {pipeline}")
    index = _index(directory)
    check_classes(directory, index, required, f"Kandinsky {version} ({pipeline})", classes)
    return index


def check_prior_folder(directory, pipeline: str = PRIOR_PIPELINE) -> tuple:
    """(model_index dict, scheduler config) of a Kandinsky 2.2 prior folder (``pipeline``: Kandinsky 2.1's
    ``KandinskyPriorPipeline``, the same components and loop), checked from its JSON alone."""
    directory = Path(directory)
    index = _checked(directory, pipeline, PRIOR_REQUIRED, {
        "prior": ("PriorTransformer",), "text_encoder": ("CLIPTextModelWithProjection",),
        "image_encoder": ("CLIPVisionModelWithProjection",)}, version="2.2" if pipeline == PRIOR_PIPELINE else "2.1")
    scheduler = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    prior_sampler(scheduler)
    return index, scheduler


def check_decoder_folder(directory) -> tuple:
    """(model_index dict, UNet config, scheduler config) of a Kandinsky 2.2 decoder folder, from its JSON alone (a
    Kandinsky 2.1 one: :func:`.kandinsky21.check_decoder21_folder`)."""
    from .kandinsky21 import DECODER21_PIPELINES, check_decoder21_folder
    directory = Path(directory)
    if kandinsky_kind(directory) in DECODER21_PIPELINES:
        return check_decoder21_folder(directory)
    index = _checked(directory, DECODER_PIPELINE, DECODER_REQUIRED,
                     {"unet": ("UNet2DConditionModel",), "movq": ("VQModel",)})
    unet = read_json_object(directory / "unet" / "config.json", "unet config")
    check_hint_unet(directory, index["_class_name"], unet)  # 'image', or 'image_hint' (.kandinsky_controlnet)
    from .kandinsky_inpaint import check_inpaint_channels
    check_inpaint_channels(directory, index["_class_name"], unet)
    scheduler = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    decoder_sampler(scheduler)
    return index, unet, scheduler


class PriorNet(torch.nn.Module):
    """``net(x, t, context, proj_embedding, attention_mask)`` = the ``PriorTransformer``'s
    ``predicted_image_embedding`` of x (B, d) at t, with ``context`` its ``encoder_hidden_states`` (the CLIP text
    states), ``proj_embedding`` the projected text embedding and ``attention_mask`` the tokens' (bool)."""

    def __init__(self, prior):
        super().__init__()
        self.model = prior

    def forward(self, x, t, context=None, proj_embedding=None, attention_mask=None):
        return self.model(x, timestep=t, proj_embedding=proj_embedding, encoder_hidden_states=context,
                          attention_mask=attention_mask).predicted_image_embedding


def _schedule(config: dict):
    from .deepfloyd_if import pipeline_schedule
    return pipeline_schedule({**config, "_class_name": "DDPMScheduler"})  # UnCLIP's cosine betas: the same


def _generators(generator, seed, rows: int) -> list:
    from ..noise import generators_from_seed
    if generator is None:
        return generators_from_seed(seed or 0, rows)
    if not isinstance(generator, (list, tuple)) or len(generator) != rows:
        raise DiffkitError(f"give {rows} generators (one per row) or none")
    return list(generator)


def _own_grid(config: dict, steps: int, minimum: int = 1):
    from .pixart import own_scheduler_grid
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < minimum:
        raise DiffkitError(f"steps={steps!r} is not allowed; give an integer >= {minimum} (the folder's "
                           f"{config.get('_class_name')} timesteps)")
    return own_scheduler_grid(config, steps)


@dataclass
class KandinskyPrior:
    """The loaded components of a prior folder (:func:`load_prior`)."""

    prior: object
    text_encoder: object
    tokenizer: object
    image_encoder: object
    schedule: object
    prediction_type: str
    scheduler_config: dict
    device: torch.device
    _denoiser: object = field(default=None, repr=False)

    @property
    def denoiser(self):
        """The unguided :class:`~diffkit.denoiser.Denoiser` of the ``PriorTransformer`` (:class:`PriorNet`)."""
        if self._denoiser is None:
            from ..denoiser import Denoiser
            self._denoiser = Denoiser(PriorNet(self.prior), self.schedule, self.prediction_type)
            self._denoiser.model = self.prior
        return self._denoiser

    def encode_prompts(self, prompts: Sequence[str]) -> dict:
        """{context, proj_embedding, attention_mask} of ``prompts`` as ``_encode_prompt``."""
        tokens = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        with torch.no_grad():
            out = self.text_encoder(tokens.input_ids.to(self.device))
        return {"context": out.last_hidden_state, "proj_embedding": out.text_embeds,
                "attention_mask": tokens.attention_mask.bool().to(self.device)}

    def zero_embeds(self, batch: int) -> torch.Tensor:
        """The image encoder's embedding of an all-zero image, ``batch`` rows (``get_zero_embed``)."""
        size = int(self.image_encoder.config.image_size)
        zero = torch.zeros(1, 3, size, size, device=self.device, dtype=self.image_encoder.dtype)
        with torch.no_grad():
            return self.image_encoder(zero)["image_embeds"].repeat(batch, 1)


def load_prior(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
               progress: bool = True) -> KandinskyPrior:
    """Load a ``KandinskyV22PriorPipeline`` folder, or Kandinsky 2.1's ``KandinskyPriorPipeline`` (the same
    components and loop), never downloading nor unpickling (the image processor is not loaded: only the zero image is
    encoded), checked first (:func:`check_prior_folder`)."""
    from .kandinsky21 import PRIOR21_PIPELINE
    diffusers, transformers = require("diffusers"), require("transformers")
    directory = Path(directory)
    _, scheduler = check_prior_folder(directory, PRIOR21_PIPELINE if kandinsky_kind(directory) == PRIOR21_PIPELINE
                                      else PRIOR_PIPELINE)
    common = {"local_files_only": True, "torch_dtype": dtype, "use_safetensors": True}
    with library_progress_bars(progress):
        prior = from_pretrained(diffusers.PriorTransformer, directory / "prior", "--prior", **common)
        text = from_pretrained(transformers.CLIPTextModelWithProjection, directory / "text_encoder", "--prior",
                               **common)
        image = from_pretrained(transformers.CLIPVisionModelWithProjection, directory / "image_encoder", "--prior",
                                **common)
        tokenizer = from_pretrained(transformers.CLIPTokenizer, directory / "tokenizer", "--prior",
                                    local_files_only=True)
    device = torch.device(device)
    for module in (prior, text, image):
        module.to(device).eval().requires_grad_(False)
    return KandinskyPrior(prior=prior, text_encoder=text, tokenizer=tokenizer, image_encoder=image,
                          schedule=_schedule(scheduler), prediction_type=scheduler.get("prediction_type", "sample"),
                          scheduler_config=scheduler, device=device)


def prior_embeddings(model: KandinskyPrior, prompts: Union[str, Sequence[str]], *,
                     negative_prompt: Union[None, str, Sequence[str]] = None, guidance_scale: Optional[float] = None,
                     steps: Optional[int] = None, seed: Optional[int] = 0, generator=None,
                     latents: Optional[torch.Tensor] = None, progress: bool = False, start=None) -> tuple:
    """(image_embeds, negative_image_embeds), each (B, d), of ``prompts`` by a prior folder (module docstring), as
    ``KandinskyV22PriorPipeline(prompts, negative_prompt, guidance_scale=s, num_inference_steps=steps)``: s
    (diffusers' convention, default 4; <= 1: unguided), ``steps`` >= 2 (default 25). ``negative_prompt`` (one, or
    one per prompt): the negative embeddings are the prior's samples for it, rows B..2B-1 of the batch; None: the
    zero image's embedding. Row i draws from ``generator[i]`` (default ``torch.Generator().manual_seed(seed + i)``,
    with a negative prompt 2B generators, the negative rows again from seed + i): x_T (or ``latents``), then the
    steps' noise. ``start(grid, generators, shape)`` -> (x_t, the grid from it): another start than x_T on the
    whole grid (:func:`.kandinsky_emb2emb.prior_emb2emb`'s noised image embeddings)."""
    from ..guidance import ClassifierFreeGuidance, guidance_weight
    from ..noise import randn
    from ..sampling import sample
    from .stable_diffusion import negative_prompts, prompt_list
    prompts = prompt_list(prompts)
    scale = PRIOR_DEFAULTS[0] if guidance_scale is None else guidance_scale
    grid = _own_grid(model.scheduler_config, PRIOR_DEFAULTS[1] if steps is None else steps, minimum=2)
    rows = prompts if negative_prompt is None else prompts + negative_prompts(negative_prompt, len(prompts))
    nulls = [""] * len(rows) if negative_prompt is None else rows[len(prompts):] * 2
    copies = 1 if negative_prompt is None else 2  # the negative rows: fresh generators of the same seeds
    generators = _generators(generator, seed, len(rows)) if generator is not None else \
        [g for _ in range(copies) for g in _generators(None, seed, len(prompts))]
    cond = model.encode_prompts(rows)
    denoiser = model.denoiser
    if guidance_weight(scale, "diffusers") > 0:
        null = model.encode_prompts(nulls if negative_prompt is not None else [""])
        denoiser = ClassifierFreeGuidance(denoiser, scale, "diffusers", null_context=null.pop("context"),
                                          null_cond=null)
    shape = (len(rows), int(model.prior.config.embedding_dim))
    x_t = randn(shape, generators, device=model.device, dtype=torch.float32) if latents is None and start is None \
        else latents.to(model.device, torch.float32) if start is None else None
    if start is not None:
        x_t, grid = start(grid, generators, shape)
    if tuple(x_t.shape) != shape:
        raise DiffkitError(f"latents of shape {tuple(x_t.shape)} are not allowed; give {shape}")
    sampler, options = prior_sampler(model.scheduler_config)
    x0 = sample(denoiser, x_t, sampler, None, grid=grid, generator=generators, progress=progress, cond=cond,
                **options)
    x0 = x0 * last_step_factor(model.scheduler_config)  # the scheduler's float32 last step (last_step_factor)
    embeds = model.prior.post_process_latents(x0.to(model.prior.dtype)).float()
    if negative_prompt is None:  # (no image encoder, Stable unCLIP's prior: no negative embeddings, .stable_unclip)
        return embeds, None if model.image_encoder is None else model.zero_embeds(len(prompts)).float()
    return embeds[:len(prompts)], embeds[len(prompts):]


@dataclass
class KandinskyDecoder:
    """The loaded components of a decoder folder (:func:`load_decoder`)."""

    pipeline: str
    unet: object
    movq: object
    schedule: object
    prediction_type: str
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype = torch.float32
    _denoiser: object = field(default=None, repr=False)

    default_guidance_scale, default_steps = DECODER_DEFAULTS
    default_size = DECODER_SIZE  # the pipeline's default height and width
    downscale = None  # f of the latent size rule h = ceil(height / f^2) f; None: the MoVQ's (Kandinsky 3: 8)
    inpaint_pipeline = INPAINT_PIPELINE  # the folder class whose UNet inpaints (.kandinsky_inpaint)
    takes_prompts = False  # the UNet sees the image embedding alone (Kandinsky 2.1's: the prompt too)
    blends_inpaint = True  # the inpainting loop sets the kept region back after every step (2.1's does not)

    @property
    def embed_width(self) -> int:
        """The image embeddings' width d (the UNet's ``encoder_hid_dim``: its ``image_proj`` input)."""
        return int(self.unet.config.encoder_hid_dim)

    def decoder_text(self, prompts, negative_prompt, rows: int) -> Optional[tuple]:
        """None: the UNet sees the image embedding alone; one line for prompts given (Kandinsky 2.1's decoder
        takes them, :meth:`.kandinsky21.Kandinsky21Decoder.decoder_text`)."""
        if prompts is not None or negative_prompt is not None:
            raise DiffkitError(f"a {self.pipeline} decoder takes no prompt (its UNet sees the image embedding alone); "
                               f"give the prompt to the prior (prior_embeddings)")
        return None

    def img2img_start(self, images: torch.Tensor, grid: torch.Tensor, generators, strength: float) -> torch.Tensor:
        """z_t of img2img's first kept timestep: :func:`noised_images` (Kandinsky 2.1's pipeline noises otherwise)."""
        return noised_images(self, images, grid, generators)

    @property
    def latent_channels(self) -> int:
        return int(self.movq.config.latent_channels)

    @property
    def scale_factor(self) -> int:
        """The MoVQ's factor f = 2^(levels - 1) (``movq_scale_factor``)."""
        return 2 ** (len(self.movq.config.block_out_channels) - 1)

    def latent_shape(self, batch: int, height: Optional[int] = None, width: Optional[int] = None) -> tuple:
        """(batch, C, h, w) of z_T for height x width pixels (default :attr:`default_size`): h = ceil(height / f^2) f
        (``downscale_height_and_width``, f :attr:`downscale` or the MoVQ's)."""
        size = self.default_size
        height, width = (size if height is None else height), (size if width is None else width)
        f = self.downscale or self.scale_factor
        for value in (height, width):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise DiffkitError(f"height x width {height}x{width} is not allowed; give positive integers "
                                   f"(multiples of {f * f} are drawn as asked, others rounded up)")
        return (batch, int(self.movq.config.latent_channels), -(-height // (f * f)) * f, -(-width // (f * f)) * f)

    @property
    def denoiser(self):
        """The unguided :class:`~diffkit.denoiser.Denoiser` with the learned variance (cond: ``image_embeds``)."""
        if self._denoiser is None and self.pipeline == self.inpaint_pipeline:
            from .kandinsky_inpaint import inpaint_denoiser
            self._denoiser = inpaint_denoiser(self)
        if self._denoiser is None:
            from .denoiser import diffusers_denoiser
            # learned variance: 2C out (an image-hint UNet takes C + 4 in; Kandinsky 3's has no out_channels: in)
            out = self.unet.config.get("out_channels", self.unet.config.get("in_channels"))
            self._denoiser = diffusers_denoiser(self.unet, schedule=self.schedule,
                                                prediction_type=self.prediction_type, uses_labels=False,
                                                learned_variance=out == 2 * self.latent_channels)
        return self._denoiser

    def folder_sampler(self) -> tuple:
        return decoder_sampler(self.scheduler_config)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The MoVQ's images of latents z (``decode(z, force_not_quantize=True)``), in [-1, 1] up to overshoot."""
        with torch.no_grad():
            return self.movq.decode(z.to(self.dtype), force_not_quantize=True).sample.float()


def load_decoder(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                 progress: bool = True) -> KandinskyDecoder:
    """Load a ``KandinskyV22Pipeline`` folder (never downloading nor unpickling), checked first
    (:func:`check_decoder_folder`); a Kandinsky 2.1 decoder folder: :func:`.kandinsky21.load_decoder21`."""
    from .kandinsky21 import DECODER21_PIPELINES, load_decoder21
    directory = Path(directory)
    if kandinsky_kind(directory) in DECODER21_PIPELINES:
        return load_decoder21(directory, device, dtype, progress)
    index, _, scheduler = check_decoder_folder(directory)
    return KandinskyDecoder(**decoder_fields(directory, index, scheduler, require("diffusers").UNet2DConditionModel,
                                             device, dtype, progress))


def decoder_fields(directory: Path, index: dict, scheduler: dict, unet_class, device, dtype: torch.dtype,
                   progress: bool, **more) -> dict:
    """The :class:`KandinskyDecoder` fields of a checked folder: its ``unet`` (of ``unet_class``) and ``movq``
    loaded frozen on ``device``, with ``more`` ({field: (class, subfolder)}, e.g. Kandinsky 3's T5 encoder), its
    schedule and scheduler config."""
    common = {"local_files_only": True, "torch_dtype": dtype, "use_safetensors": True}
    parts = {"unet": (unet_class, "unet"), "movq": (require("diffusers").VQModel, "movq"), **more}
    with library_progress_bars(progress):
        modules = {name: from_pretrained(cls, directory / sub, **common) for name, (cls, sub) in parts.items()}
    device = torch.device(device)
    for module in modules.values():
        module.to(device).eval().requires_grad_(False)
    return {"pipeline": index["_class_name"], **modules, "schedule": _schedule(scheduler),
            "prediction_type": scheduler.get("prediction_type", "epsilon"), "scheduler_config": scheduler,
            "device": device, "dtype": dtype}


def decoder_guidance(model: KandinskyDecoder, image_embeds: torch.Tensor, negative_image_embeds: torch.Tensor,
                     guidance_scale: Optional[float] = None, denoiser=None, hint: Optional[dict] = None,
                     text: Optional[tuple] = None) -> tuple:
    """(denoiser, cond): the decoder's, guided against ``negative_image_embeds`` where diffusers' s > 1; ``hint``:
    an image-hint UNet's {``hint``: ...} (:func:`.kandinsky_controlnet.hint_cond`), the same in both halves;
    ``text``: Kandinsky 2.1's (prompt cond, null prompt cond) ({``context``, ``text_embeds``} each,
    :meth:`.kandinsky21.Kandinsky21Decoder.decoder_text`), the null half's prompt the empty or negative one."""
    from ..guidance import ClassifierFreeGuidance, guidance_weight
    from .stable_diffusion import NULL_LABEL
    scale = model.default_guidance_scale if guidance_scale is None else guidance_scale
    denoiser = denoiser or model.denoiser
    cond = {IMAGE_EMBEDS: image_embeds.to(model.device, model.dtype), **(hint or {}), **(text[0] if text else {})}
    if guidance_weight(scale, "diffusers") <= 0:
        return denoiser, cond
    if negative_image_embeds.shape[0] not in (1, image_embeds.shape[0]):
        raise DiffkitError(f"{negative_image_embeds.shape[0]} negative image embeddings for {image_embeds.shape[0]}; "
                           f"give one or one per image")
    null = {IMAGE_EMBEDS: negative_image_embeds.to(model.device, model.dtype)}
    if text:  # Kandinsky 2.1: the null half's prompt states (context) and pooled embedding too
        null = {**null, **text[1]}
        return ClassifierFreeGuidance(denoiser, scale, "diffusers", null_context=null.pop("context"),
                                      null_cond=null), cond
    # no text context: the halves are marked by labels (ignored by the UNet), the null half's embedding swapped
    guided = ClassifierFreeGuidance(denoiser, scale, "diffusers", null_class=NULL_LABEL, null_cond=null)
    return guided, {**cond, "y": torch.zeros(image_embeds.shape[0], dtype=torch.long, device=model.device)}


def decode_embeddings(model: KandinskyDecoder, image_embeds: torch.Tensor, negative_image_embeds: torch.Tensor, *,
                      guidance_scale: Optional[float] = None, height: Optional[int] = None,
                      width: Optional[int] = None, sampler: Optional[str] = None, steps: Optional[int] = None,
                      nfe: Optional[int] = None, grid: Optional[str] = None, seed: Optional[int] = 0,
                      generator=None, latents: Optional[torch.Tensor] = None, output_range: str = "0,1",
                      return_latents: bool = False, progress: bool = False, hint: Optional[torch.Tensor] = None,
                      prompts: Union[None, str, Sequence[str]] = None,
                      negative_prompt: Union[None, str, Sequence[str]] = None, **options) -> torch.Tensor:
    """The images of ``image_embeds`` (B, d) by a decoder folder (module docstring), as
    ``KandinskyV22Pipeline(image_embeds, negative_image_embeds, guidance_scale=s, height, width,
    num_inference_steps=steps)``: s diffusers' (default 4), height x width default 512. Row i draws from
    ``generator[i]`` (default ``torch.Generator().manual_seed(seed + i)``): z_T (or ``latents``), then the steps'
    noise. sampler None (and no ``nfe``): the pipeline's loop (:func:`decoder_sampler` on the scheduler's timesteps,
    default 100 steps); a sampler: on its own grid (``options`` to :func:`diffkit.sample`), or with
    ``grid="scheduler"`` on the scheduler's timesteps (the folder's sampler then with its options).
    ``return_latents``: z_0
    (``output_type="latent"``); else the MoVQ's images, ``output_range`` "0,1" ((x / 2 + 0.5).clamp(0, 1), the
    "np" / "pil" outputs) or "-1,1" (clamped). ``hint``: an image-hint decoder's control image, as
    ``KandinskyV22ControlnetPipeline(hint=...)`` (:mod:`.kandinsky_controlnet`; required there, refused elsewhere).
    ``prompts`` (one, or one per row) and ``negative_prompt`` (None: the empty prompt): a Kandinsky 2.1 decoder's,
    as ``KandinskyPipeline(prompt, ..., negative_prompt)`` (:mod:`.kandinsky21`; required there, refused elsewhere)."""
    from ..errors import check_choice
    from ..noise import randn
    from ..sampling import sample
    from .stable_diffusion import OUTPUT_RANGES
    check_choice("output_range", output_range, OUTPUT_RANGES)
    if image_embeds.ndim != 2 or image_embeds.shape[1] != model.embed_width:
        raise DiffkitError(f"image_embeds of shape {tuple(image_embeds.shape)} are not allowed; give (B, "
                           f"{model.embed_width}) (the prior's embedding width)")
    batch = image_embeds.shape[0]
    text = model.decoder_text(prompts, negative_prompt, batch)
    shape = model.latent_shape(batch, height, width)
    hint = hint_cond(model, hint, shape if latents is None else latents.shape)
    if grid is not None:
        check_choice("grid", grid, ["scheduler"])
    own_sampler, own = model.folder_sampler()
    if grid is not None or (sampler is None and nfe is None):
        if nfe is not None:
            raise DiffkitError("grid='scheduler' takes steps (the scheduler's own step count), not nfe")
        options = {**own, **options} if sampler in (None, own_sampler) else options
        sampler = sampler or own_sampler
        grid, steps = _own_grid(model.scheduler_config, model.default_steps if steps is None else steps), None
    sampler = sampler or own_sampler
    generators = _generators(generator, seed, batch)
    denoiser, cond = decoder_guidance(model, image_embeds, negative_image_embeds, guidance_scale, hint=hint, text=text)
    z_t = randn(shape, generators, device=model.device, dtype=torch.float32) if latents is None else \
        latents.to(model.device, torch.float32)
    noisy_last = grid is not None and sampler == "ddpm" and float(grid[-2]) > 0 and float(grid[-1]) < 0
    denoiser = _Recording(denoiser) if noisy_last else denoiser
    z0 = sample(denoiser, z_t, sampler, steps, nfe=nfe, grid=grid, generator=generators, progress=progress,
                cond=cond, **options)
    if noisy_last:  # DDPMScheduler's noise on its last step from t > 0 (last_step_noise)
        z0 = z0 + last_step_noise(model.scheduler_config, int(grid[-2]), denoiser.last.var_values, generators, z0)
    return finish_images(model, z0, return_latents, output_range)


def folder_loop(model: KandinskyDecoder, denoiser, z_t: torch.Tensor, grid, generators, cond: dict,
                progress: bool = False) -> torch.Tensor:
    """The decoder's scheduler loop from z_t over ``grid`` (its own timesteps): :func:`decoder_sampler`'s step, and
    a DDPMScheduler's last-step noise where the grid's last step starts at t > 0 (:func:`last_step_noise`)."""
    from ..sampling import sample
    sampler, options = model.folder_sampler()
    noisy_last = sampler == "ddpm" and float(grid[-2]) > 0
    denoiser = _Recording(denoiser) if noisy_last else denoiser
    z = sample(denoiser, z_t, sampler, None, grid=grid, generator=generators, progress=progress, cond=cond,
               **options)
    if noisy_last:
        z = z + last_step_noise(model.scheduler_config, int(grid[-2]), denoiser.last.var_values, generators, z)
    return z


def check_images(model: KandinskyDecoder, images: torch.Tensor) -> tuple:
    """z_T's shape for ``images`` (B, 3, H, W), H and W multiples of f^2; else one line."""
    shape = model.latent_shape(images.shape[0], images.shape[2], images.shape[3]) if images.ndim == 4 else None
    if shape is None or images.shape[1] != 3 or shape[2] * model.scale_factor != images.shape[2] \
            or shape[3] * model.scale_factor != images.shape[3]:
        raise DiffkitError(f"images of shape {tuple(images.shape)} are not allowed; give (B, 3, H, W) in [-1, 1] "
                           f"with H, W multiples of {model.scale_factor ** 2}")
    return shape


def image_to_image(model: KandinskyDecoder, images: torch.Tensor, image_embeds: torch.Tensor,
                   negative_image_embeds: torch.Tensor, *, strength: float = 0.3,
                   guidance_scale: Optional[float] = None, steps: Optional[int] = None, seed: Optional[int] = 0,
                   generator=None, output_range: str = "0,1", return_latents: bool = False,
                   progress: bool = False, hint: Optional[torch.Tensor] = None,
                   prompts: Union[None, str, Sequence[str]] = None,
                   negative_prompt: Union[None, str, Sequence[str]] = None) -> torch.Tensor:
    """``KandinskyV22Img2ImgPipeline(image=images, image_embeds, negative_image_embeds, strength, ...)``: ``images``
    (B, 3, H, W) in [-1, 1] at the output size (H, W multiples of f^2; the pipeline's preprocessing resizes first)
    encoded by the MoVQ's encoder (``movq.encode(x).latents``, not quantised, not scaled), noised to the first kept
    timestep of the scheduler's grid (SDEdit, Meng et al. 2022: the last int(steps strength) timesteps of
    ``set_timesteps(steps)``, default 100 steps, strength 0.3; z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps, eps
    from ``generator[i]``, default seed + i, which then draws the steps' noise), then the rest of the pipeline's loop
    (:func:`decoder_sampler` on those timesteps, with the last step's noise of :func:`last_step_noise`). ``hint``:
    an image-hint decoder's control image, as ``KandinskyV22ControlnetImg2ImgPipeline`` (:mod:`.kandinsky_controlnet`,
    whose loop is this one). ``prompts`` / ``negative_prompt``: a Kandinsky 2.1 decoder's, as
    ``KandinskyImg2ImgPipeline`` (:mod:`.kandinsky21`, whose start :meth:`~KandinskyDecoder.img2img_start` differs)."""
    from ..errors import check_choice
    from .stable_diffusion import OUTPUT_RANGES
    check_choice("output_range", output_range, OUTPUT_RANGES)
    grid = strength_grid(model, strength, steps)
    hint = hint_cond(model, hint, check_images(model, images))
    text = model.decoder_text(prompts, negative_prompt, images.shape[0])
    generators = _generators(generator, seed, images.shape[0])
    z_t = model.img2img_start(images, grid, generators, strength)
    denoiser, cond = decoder_guidance(model, image_embeds, negative_image_embeds, guidance_scale, hint=hint, text=text)
    z = folder_loop(model, denoiser, z_t, grid, generators, cond, progress)
    return finish_images(model, z, return_latents, output_range)


def strength_grid(model: KandinskyDecoder, strength: float, steps: Optional[int] = None) -> torch.Tensor:
    """The timesteps an img2img pipeline keeps (``get_timesteps``): the last int(steps strength) of the folder's
    scheduler after ``set_timesteps(steps)`` (default :attr:`~KandinskyDecoder.default_steps`); one line for a
    strength outside (0, 1] or one that keeps none."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise DiffkitError(f"strength={strength!r} is not allowed; give a number in (0, 1]")
    steps = model.default_steps if steps is None else steps
    grid = _own_grid(model.scheduler_config, steps)
    kept = min(int(steps * strength), steps)
    if kept < 1:
        raise DiffkitError(f"strength={strength!r} with steps={steps} keeps no timestep; give a larger strength or "
                           f"more steps")
    return grid[steps - kept:]


def noised_images(model: KandinskyDecoder, images: torch.Tensor, grid: torch.Tensor, generators) -> torch.Tensor:
    """SDEdit's start (Meng et al. 2022): ``images`` (B, 3, H, W) in [-1, 1] encoded by the MoVQ's encoder
    (``movq.encode(x).latents``, not quantised, not scaled) and noised to the grid's first timestep t,
    z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps (``scheduler.add_noise``), eps row i from ``generators[i]``."""
    from ..diffusion import q_sample
    from ..noise import randn
    with torch.no_grad():
        z0 = model.movq.encode(images.to(model.device, model.dtype)).latents.float()
    t = torch.full((images.shape[0],), float(grid[0]), dtype=torch.float64)
    return q_sample(model.schedule, z0, t, randn(z0.shape, generators, device=model.device, dtype=torch.float32))


def text_to_image(prior: KandinskyPrior, decoder: KandinskyDecoder, prompts: Union[str, Sequence[str]], *,
                  negative_prompt: Union[None, str, Sequence[str]] = None,
                  prior_guidance_scale: Optional[float] = None, prior_steps: Optional[int] = None,
                  seed: Optional[int] = 0, **decoder_options) -> torch.Tensor:
    """``KandinskyV22CombinedPipeline``'s images: :func:`prior_embeddings` (row i from seed + i) fed to
    :func:`decode_embeddings` (row i again from seed + i; ``decoder_options``: its keywords). A Kandinsky 2.1
    decoder (``KandinskyCombinedPipeline``) also gets the prompts, guided against the empty prompt: that pipeline
    gives the negative prompt to the prior alone."""
    embeds, negative = prior_embeddings(prior, prompts, negative_prompt=negative_prompt,
                                        guidance_scale=prior_guidance_scale, steps=prior_steps, seed=seed)
    text = {"prompts": prompts} if decoder.takes_prompts else {}
    return decode_embeddings(decoder, embeds, negative, seed=seed, **text, **decoder_options)


__all__ = ["KandinskyPrior", "KandinskyDecoder", "PriorNet", "load_prior", "load_decoder", "prior_embeddings",
           "decode_embeddings", "decoder_guidance", "text_to_image", "image_to_image", "prior_sampler",
           "decoder_sampler",
           "check_prior_folder", "check_decoder_folder", "last_step_factor", "last_step_noise", "kandinsky_kind",
           "is_kandinsky_folder", "check_images", "folder_loop", "strength_grid", "noised_images", "decoder_fields",
           "INPAINT_PIPELINE", "DECODER_PIPELINES",
           "PRIOR_PIPELINE", "DECODER_PIPELINE", "PRIOR_DEFAULTS", "DECODER_DEFAULTS"]
