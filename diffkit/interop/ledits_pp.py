"""LEDITS++ on a Stable Diffusion 1.x / 2.x folder, as diffusers 0.42.1's ``LEditsPPPipelineStableDiffusion``, and on
an SD-XL folder, as its ``LEditsPPPipelineStableDiffusionXL`` (Brack et al. 2024, "LEDITS++: Limitless Image Editing
using Text-to-Image Models", CVPR, arXiv:2311.16711).

Two stages, :func:`invert` then :func:`edit` (the pipeline's ``invert(...)`` then ``__call__(editing_prompt=...)``):

1. **Inversion with recorded noise** (paper Sec. 3.1; the edit-friendly DDPM inversion of Huberman-Spiegelglas et al.
   2024 carried over to DPM-Solver++). The image latents z_0 = s E(x) (the posterior's mean) are noised
   *independently* to each of the last N = ``steps`` of the ``int(N (1 + skip))`` leading timesteps,
   x_{t_i} = alpha_i z_0 + sigma_i n_i (the n_i drawn from the smallest time up, as the pipeline). Then the sampler's
   step t_i -> t_{i+1} is run from x_{t_i} on the null prompt's prediction (with a ``source_prompt``, the pipeline's
   eps_src + s (eps_null - eps_src): its ``encode_prompt`` outputs are unpacked swapped), and its noise z_i is
   solved from where the step must land:

       x_{t_{i+1}} = mu_i(x_{t_i}, ...) + c_i z_i   =>   z_i = (x_{t_{i+1}} - mu_i) / c_i

   with mu_i, c_i the step's mean and noise scale: SDE-DPM-Solver++(2M) (DPM-Solver++ Sec. 5, diffusers
   ``sde-dpmsolver++``, order 2; mu_i = (sigma_s/sigma_t) e^{-h} x + alpha_s (1 - e^{-2h}) (D0 + D1/2),
   c_i = sigma_s sqrt(1 - e^{-2h})) on every folder but a DDIMScheduler one, which inverts with DDIM at eta = 1
   (DDPM; mu = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - c^2) eps_hat, c^2 = beta-tilde), as the pipeline does. Both
   are diffkit's samplers (:func:`~diffkit.samplers.dpm_solver.dpm_solver_multistep`,
   :func:`~diffkit.samplers.ddim.ddim`) with their ``noise`` hook; the chain x_{t_{i+1}} = mu_i + c_i z_i is the
   pipeline's "corrected" x_{t-1}. A step into clean data (the DPM grid's last) has no noise: z = 0.
2. **Editing with semantic guidance** (Sec. 3.2-3.3; eq. 12's s_e, lambda, M^1 and M^2 as diffusers' docstrings
   name them). The same sampler runs from x_{t_0} replaying the z_i; without concepts it retraces the inversion's
   chain (ending on z_0 where the last step has noise, DDIM's to t = 0; on the last x0 prediction where it has none).
   With concepts e_1..e_E the UNet sees the null prompt and each concept (one call of batch (1 + E) B), and the guided
   noise is

       eps = eps_u + sum_c M_c * (+-) s_c (eps_c - eps_u)

   (minus for a concept to remove, ``reverse``; s_c the ``scale``, diffusers' ``edit_guidance_scale``; a concept
   counts from step ``warmup`` until step ``cooldown``). M_c is the implicit mask:
   M^1 from the cross-attention maps: the attention probabilities of every cross-attention layer of the down and up
   blocks at 1/4 of the latent's size (the pipeline's only stored resolution), concept c's rows, averaged over
   layers and heads, summed over the tokens 1 .. L - 2 (diffusers' ``num_edit_tokens`` is the padded length minus
   2), smoothed by a 3 x 3 Gaussian (the pipeline's sigma 0.5 in exp(-(x / 2 sigma)^2): sigma sqrt(1/2) in
   diffkit's :func:`~diffkit.interop.sd_sag.gaussian_blur`, reflect-padded), then 1 where it is >= its ``threshold``
   (lambda) quantile, nearest-upsampled to the latent; M^2 from the noise: 1 where sum over channels of
   |s_c (eps_c - eps_u)| is >= its lambda quantile. ``mask="intersect"`` (the paper's and the pipeline's default)
   is M^1 M^2 at timesteps t <= 800 and M^1 above; ``"attention"`` M^1 alone (``use_intersect_mask=False,
   use_cross_attn_mask=True``); ``"noise"`` M^2 alone (SEGA's, ``use_cross_attn_mask=False,
   use_intersect_mask=False``). The maps come from diffusers' own ``LEDITSCrossAttnProcessor``, installed on the
   cross-attention layers for the call (their previous processors back after), with a store that keeps the maps of
   that size (diffusers' ``LeditsAttentionStore`` is not used).

The grids are the pipeline's: the folder's scheduler as the pipeline takes it (a DDIMScheduler, a
DPMSolverMultistepScheduler with ``sde-dpmsolver++`` order 2, or any other class as
``DPMSolverMultistepScheduler.from_config(config, algorithm_type="sde-dpmsolver++", solver_order=2)``), with
``timestep_spacing="leading"`` and ``steps_offset=1`` (what the pipeline sets), ``set_timesteps(int(N (1 + skip)))``,
the last N times. Refused in one line: a DPMSolverMultistepScheduler folder of another algorithm or order (the
pipeline raises NotImplementedError), sigma schedules (Karras, exponential, ...), thresholding, an SD-XL refiner,
Kolors, LCM, inpainting or other non-plain UNet folder.

On an SD-XL folder (``LEditsPPPipelineStableDiffusionXL``; :mod:`.sd_xl`'s two text encoders, pooled ``text_embeds``
and ``time_ids`` in every UNet call) the pipeline's own rules, each read in its code: the null half is zeros (context
and pooled) where ``negative_prompt`` is None and ``force_zeros_for_empty_prompt``; the time ids are
(W, H, 0, 0, W, H) for an H x W image (its ``self.size`` takes the latent's height for the width); the source prompt
guides as eps_null + s (eps_src - eps_null), only for s > 1 (refused at s <= 1, which the pipeline ignores); the last
``num_zero_noise_steps`` = 3 noise maps are zeroed after the inversion (``zero_noise_steps``); the default mask is
``"noise"`` and its intersect mask is M^1 M^2 at every step (no t <= 800 switch); ``num_edit_tokens`` is
``tokenizer_2``'s; the folder's ``steps_offset`` stays, and a DDIM folder with ``clip_sample`` is refused. Its
editing prompts are encoded once, not once per image (it edits one image per call); diffkit repeats them per image.

Where diffkit differs from the pipeline: with several images in one call the pipeline's attention store splits the
(images x heads) rows by the image count, mixing images and heads for B > 1 and heads > 1; diffkit takes each
image's own rows (B = 1 is the same). The pipeline's ``user_mask`` is :func:`edit`'s; ``guidance_rescale`` is not
offered (the pipeline's call of it on a tuple fails), nor ``sem_guidance`` (precomputed guidance terms). The
pipeline's ``invert`` with ``source_guidance_scale <= 1`` fails; diffkit takes any s >= 0 in its formula (0: the
source prompt's prediction, 1: the null prompt's).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .. import diffusion
from ..denoiser import Prediction, Wrapper
from ..errors import DiffkitError, check_choice, check_float32, check_range
from . import require

MASKS = ("intersect", "attention", "noise")
INTERSECT_BELOW = 800  # the pipeline's `if t <= 800`: the noise mask joins the attention mask from there down
SMOOTHING = (3, math.sqrt(0.5))  # LeditsGaussianSmoothing: 3 x 3, sigma 0.5 in exp(-(x / (2 sigma))^2)
DDIM_SAMPLER, DPM_SAMPLER = "ddim", "sde-dpm-solver++-2m"
ZERO_NOISE_STEPS = 3  # LEditsPPPipelineStableDiffusionXL.invert's num_zero_noise_steps
XL_MASK = "noise"  # LEditsPPPipelineStableDiffusionXL's default: use_cross_attn_mask = use_intersect_mask = False
_SIGMA_SCHEDULES = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas",
                    "use_flow_sigmas")


@dataclass(frozen=True)
class Concept:
    """One editing concept: its prompt, guidance scale s_e (``edit_guidance_scale``), mask threshold lambda
    (``edit_threshold``, a quantile in [0, 1]), ``reverse`` (remove it: ``reverse_editing_direction``), and the steps
    it counts in, ``warmup`` <= i < ``cooldown`` (``edit_warmup_steps`` / ``edit_cooldown_steps``; None: to the end)."""

    prompt: str
    scale: float = 5.0
    threshold: float = 0.9
    reverse: bool = False
    warmup: int = 0
    cooldown: Optional[int] = None

    def __post_init__(self):
        if not isinstance(self.prompt, str) or not self.prompt:
            raise DiffkitError(f"an editing concept's prompt of {self.prompt!r} is not allowed; give non-empty text")
        check_float32("edit scale", check_range("edit scale", self.scale, 0.0, None))
        check_range("edit threshold", self.threshold, 0.0, 1.0)
        check_range("edit warmup", self.warmup, 0, None, integer=True)
        if self.cooldown is not None:
            check_range("edit cooldown", self.cooldown, 0, None, integer=True)


@dataclass
class Inversion:
    """What :func:`invert` keeps for :func:`edit` (the pipeline's ``init_latents``, ``zs``, ``inversion_steps``):
    x at the first time, the recorded noise z_i of each step (steps, B, C, h, w), the grid (N + 1 times, the
    last the target), the sampler, the images' latents z_0 and, on an SD-XL folder, the time ids."""

    latents: torch.Tensor
    noises: torch.Tensor
    grid: torch.Tensor
    sampler: str
    image_latents: torch.Tensor
    time_ids: Optional[torch.Tensor] = None  # an SD-XL folder's size conditions (6,), the edit's too


# ---------------------------------------------------------------- the scheduler and grid
def ledits_scheduler(sd):
    """(diffkit sampler name, diffusers scheduler) of the pipeline for this folder: its DDIMScheduler (eta 1), its
    DPMSolverMultistepScheduler if ``sde-dpmsolver++`` of order 2, else DPMSolverMultistepScheduler.from_config(...,
    sde-dpmsolver++, order 2); ``timestep_spacing`` leading and ``steps_offset`` 1 as the pipeline sets them. The
    settings no diffkit grid or sampler follows are refused in one line."""
    from .kolors import Kolors
    if isinstance(sd, Kolors):
        raise DiffkitError("LEDITS++ is offered for Stable Diffusion 1.x / 2.x and SD-XL folders (diffusers' "
                           "LEditsPPPipelineStableDiffusion / ...XL); this is a Kolors folder")
    xl = is_xl(sd)
    if xl and sd.is_refiner:
        raise DiffkitError("LEDITS++ on SD-XL needs a base folder (text_encoder and text_encoder_2, no aesthetic "
                           "scores: LEditsPPPipelineStableDiffusionXL's time ids); this is a refiner-style folder")
    if sd.consistency is not None or sd.scheduler_override or sd.guidance_embedding_dim:
        raise DiffkitError("LEDITS++ is not offered with LCMScheduler / TCD sampling or an LCM UNet; allowed: a "
                           "plain Stable Diffusion folder")
    if sd.unet.config.in_channels != sd.unet.config.out_channels:
        raise DiffkitError(f"LEDITS++ needs a plain UNet (in_channels = out_channels); this folder's takes "
                           f"{sd.unet.config.in_channels} channels (inpainting, depth, InstructPix2Pix, upscaler)")
    if sd.prediction_type not in ("epsilon", "v_prediction"):
        raise DiffkitError(f"LEDITS++ needs an epsilon or v_prediction UNet; this folder's prediction_type is "
                           f"{sd.prediction_type!r}")
    diffusers = require("diffusers")
    # the SD pipeline sets steps_offset 1 and clip_sample False; the SD-XL one keeps the folder's
    fixed = {} if xl else {"steps_offset": 1, "clip_sample": False}
    config = {**sd.scheduler_config, "timestep_spacing": "leading", **fixed}
    name = config.get("_class_name")
    logs, level = diffusers.utils.logging, diffusers.utils.logging.get_verbosity()
    logs.set_verbosity_error()  # the keys one class does not take: expected, not news
    try:
        if name == "DDIMScheduler":
            scheduler, sampler = diffusers.DDIMScheduler.from_config(config), DDIM_SAMPLER
        else:
            dpm = diffusers.DPMSolverMultistepScheduler
            own = {} if name == "DPMSolverMultistepScheduler" else \
                dict(algorithm_type="sde-dpmsolver++", solver_order=2)
            scheduler, sampler = dpm.from_config(config, **own), DPM_SAMPLER
    finally:
        logs.set_verbosity(level)
    c = scheduler.config
    if sampler == DPM_SAMPLER:
        if c.algorithm_type != "sde-dpmsolver++" or c.solver_order != 2:
            raise DiffkitError(f"this folder's DPMSolverMultistepScheduler is {c.algorithm_type!r} of order "
                               f"{c.solver_order}; LEDITS++ inverts with 'sde-dpmsolver++' of order 2 (the pipeline "
                               f"raises NotImplementedError for others); allowed: that, or another scheduler class")
        for key in _SIGMA_SCHEDULES:
            if c.get(key):
                raise DiffkitError(f"this folder's scheduler sets {key}=True, which LEDITS++ here does not follow; "
                                   f"allowed: its timestep sigmas")
        if c.final_sigmas_type != "zero" or c.get("variance_type") or not math.isinf(c.lambda_min_clipped):
            raise DiffkitError("this folder's scheduler sets final_sigmas_type / variance_type / lambda_min_clipped, "
                               "which LEDITS++ here does not follow; allowed: their defaults")
    if xl and sampler == DDIM_SAMPLER and c.clip_sample:
        raise DiffkitError("this folder's DDIMScheduler sets clip_sample=True (the SD-XL pipeline clips x0_hat in "
                           "its step, diffkit's DDIM does not); allowed: a config with clip_sample false")
    if c.get("thresholding"):
        raise DiffkitError("this folder's scheduler sets thresholding=True (it clamps x0_hat in diffusers' step, not "
                           "in diffkit's samplers); allowed: a config with thresholding false")
    return sampler, scheduler


def ledits_grid(scheduler, steps: int, skip: float) -> torch.Tensor:
    """The pipeline's times: ``set_timesteps(int(steps (1 + skip)))`` on ``scheduler``, the last ``steps`` of them
    and the target of the last step (diffkit's grid of N + 1 times)."""
    from .schedulers import grid_from_diffusers
    check_range("steps", steps, 1, None, integer=True)
    check_range("skip", skip, 0.0, 1.0)
    total = int(steps * (1 + skip))
    if total > scheduler.config.num_train_timesteps:
        raise DiffkitError(f"steps={steps} with skip={skip:g} makes {total} timesteps; allowed: at most "
                           f"{scheduler.config.num_train_timesteps} (the training timesteps)")
    scheduler.set_timesteps(total)
    return grid_from_diffusers(scheduler)[-(steps + 1):]


def _run(sampler: str, denoiser, x, grid, cond, noise, progress: bool) -> torch.Tensor:
    """The inversion's / edit's sampler on ``grid`` with the ``noise`` hook (one model call per step)."""
    if sampler == DDIM_SAMPLER:
        from ..samplers.ddim import ddim
        return ddim(denoiser, x, grid, eta=1.0, cond=cond, noise=noise, progress=progress)
    from ..samplers.dpm_solver import dpm_solver_multistep
    return dpm_solver_multistep(denoiser, x, grid, solver_order=2, algorithm_type="sde-dpmsolver++", cond=cond,
                                noise=noise, progress=progress)


# ---------------------------------------------------------------- the text conditions
def is_xl(sd) -> bool:
    """True for an SD-XL folder (LEditsPPPipelineStableDiffusionXL's conditions), False for SD 1.x / 2.x."""
    from .sd_xl import StableDiffusionXL
    return isinstance(sd, StableDiffusionXL)


def _null_cond(sd, batch: int, negative_prompt: Optional[str], clip_skip, time_ids) -> dict:
    """The null prompt's UNet inputs for ``batch`` rows: SD 1.x / 2.x the context of ``negative_prompt`` (default
    ''); SD-XL (its ``encode_prompt``) zeros for the context and the pooled ``text_embeds`` where
    ``negative_prompt`` is None and ``force_zeros_for_empty_prompt``, else that text's (never ``clip_skip``:
    ``hidden_states[-2]``), and ``time_ids``."""
    if not is_xl(sd):
        return {"context": sd.encode_prompts([negative_prompt or ""] * batch, clip_skip)}
    context, pooled = sd.encode_prompts_xl([negative_prompt or ""] * batch)
    if negative_prompt is None and sd.force_zeros_for_empty_prompt:
        context, pooled = torch.zeros_like(context), torch.zeros_like(pooled)
    return {"context": context, "text_embeds": pooled, "time_ids": time_ids.expand(batch, -1)}


def _prompt_cond(sd, prompts: Sequence[str], clip_skip, time_ids) -> dict:
    """The UNet inputs of ``prompts`` (one row each): the context, and on SD-XL the pooled ``text_embeds`` of
    text_encoder_2 and ``time_ids``."""
    if not is_xl(sd):
        return {"context": sd.encode_prompts(list(prompts), clip_skip)}
    context, pooled = sd.encode_prompts_xl(list(prompts), clip_skip=clip_skip)
    return {"context": context, "text_embeds": pooled, "time_ids": time_ids.expand(len(prompts), -1)}


# ---------------------------------------------------------------- stage 1: inversion
def invert(sd, images: torch.Tensor, steps: int = 30, skip: float = 0.15, *, source_prompt: str = "",
           source_guidance_scale: float = 3.5, generator=None, seed: Optional[int] = None,
           clip_skip: Optional[int] = None, negative_prompt: Optional[str] = None,
           zero_noise_steps: Optional[int] = None, progress: bool = False) -> Inversion:
    """LEDITS++ inversion (module docstring, stage 1) of ``images`` in [-1, 1] (B, 3, H, W; H, W multiples of 32
    as the pipeline asks) on the Stable Diffusion folder ``sd``: ``steps`` (the pipeline's ``num_inversion_steps``)
    of ``int(steps (1 + skip))`` timesteps, the last ones; guided by ``source_prompt`` at ``source_guidance_scale``
    where it is not empty. The forward noises n_i come from ``generator`` (one, as the pipeline's, or one per image)
    or ``seed`` (image i from seed + i). ``negative_prompt``: the null prompt (default ''; on SD-XL None is the
    zeroed null half). ``zero_noise_steps`` k: the last k noise maps set to 0 after the inversion, so the edit's last
    k steps add no noise (the SD-XL pipeline's ``num_zero_noise_steps``, default 3 there; 0 on SD 1.x / 2.x).

    On an SD-XL folder (LEditsPPPipelineStableDiffusionXL) the guidance is eps_null + s (eps_src - eps_null), with
    s > 1 (the pipeline ignores the source prompt at s <= 1), and the time ids are (W, H, 0, 0, W, H) for H x W
    images: the pipeline's ``self.size`` takes the latent's height for the width."""
    from ..editing import DATA_RANGE, _generators, check_images
    from ..latent_editing import check_pixels, encode_images
    from ..noise import randn
    sampler, scheduler = ledits_scheduler(sd)
    grid = ledits_grid(scheduler, steps, skip)
    xl = is_xl(sd)
    zero_noise_steps = (ZERO_NOISE_STEPS if xl else 0) if zero_noise_steps is None else \
        check_range("zero_noise_steps", zero_noise_steps, 0, None, integer=True)
    images = check_images(images, "images", DATA_RANGE, skippable=False)
    check_pixels(sd.network_denoiser, sd, images)
    if images.ndim != 4 or images.shape[-2] % 32 or images.shape[-1] % 32:
        raise DiffkitError(f"images of shape {tuple(images.shape)} are not allowed; LEDITS++ takes (B, C, H, W) with "
                           f"H and W multiples of 32 (as the pipeline)")
    for name, text in (("source_prompt", source_prompt), ("negative_prompt", negative_prompt)):
        if not isinstance(text, str) and (text is not None or name == "source_prompt"):
            raise DiffkitError(f"{name}={text!r} is not allowed; give one text")
    if xl and source_prompt and not source_guidance_scale > 1:
        raise DiffkitError(f"source_guidance_scale={source_guidance_scale!r} is not allowed on an SD-XL folder; "
                           f"allowed: > 1 (LEditsPPPipelineStableDiffusionXL ignores the source prompt at s <= 1)")
    generator = _generators(seed, generator, images.shape[0])
    z0 = encode_images(sd, images, "mean", None)
    batch = z0.shape[0]
    time_ids = None
    if xl:  # the pipeline's self.size = (W, H) of an H x W image: its "height" is the latent's width x 8
        height, width = images.shape[-2:]
        time_ids = sd.time_ids((int(width), int(height)), (0, 0), (int(width), int(height)))
    null = _null_cond(sd, batch, negative_prompt, clip_skip, time_ids)
    if source_prompt and xl:  # eps_null + s (eps_src - eps_null)
        source = _prompt_cond(sd, [source_prompt] * batch, clip_skip, time_ids)
        denoiser = sd.guided(float(source_guidance_scale), null)
        cond = {**sd.cond(source.pop("context")), **source}
    elif source_prompt:  # the SD pipeline's: eps_src + s (eps_null - eps_src) (its encode_prompt's outputs swapped)
        source = _prompt_cond(sd, [source_prompt] * batch, clip_skip, time_ids)
        denoiser, cond = sd.guided(float(source_guidance_scale), source["context"]), sd.cond(null["context"])
    else:
        denoiser, cond = sd.network_denoiser, null
    # x_{t_i} = alpha_i z_0 + sigma_i n_i, each time its own noise, drawn from the smallest time up (Sec. 3.1)
    times = grid[:-1]
    drawn = [randn(z0.shape, generator, device=z0.device, dtype=z0.dtype) for _ in range(len(times))][::-1]
    targets = [diffusion.q_sample(sd.schedule, z0, float(t), n) for t, n in zip(times.tolist(), drawn)] + [z0]
    noises = torch.zeros((len(times), *z0.shape), device=z0.device, dtype=z0.dtype)

    def solved(i: int, mean: torch.Tensor, std: float) -> torch.Tensor:  # z_i from where step i lands
        noises[i] = (targets[i + 1] - mean) / std if std > 0 else 0.0
        return noises[i]
    with torch.no_grad():
        _run(sampler, denoiser, targets[0], grid, cond, solved, progress)
    if zero_noise_steps:  # after the chain: the inversion's x_{t_i} keep the solved noise
        noises[-zero_noise_steps:] = 0.0
    return Inversion(latents=targets[0], noises=noises, grid=grid, sampler=sampler, image_latents=z0,
                     time_ids=time_ids)


# ---------------------------------------------------------------- stage 2: semantic guidance
class _Maps:
    """The store diffusers' ``LEDITSCrossAttnProcessor`` calls: keeps the probabilities ((1 + E) B heads, Q, K)
    of the maps with ``pixels`` queries, by place (up, down) in call order."""

    def __init__(self, pixels: int):
        self.pixels, self.maps = pixels, {"up": [], "down": []}

    def __call__(self, probs, is_cross, place_in_unet, editing_prompts, PnP=False):
        if probs.shape[1] == self.pixels:
            self.maps[place_in_unet].append(probs)

    def concept_map(self, concept: int, count: int, batch: int, size: tuple, tokens: int) -> torch.Tensor:
        """Concept ``concept``'s map (B, h, w): its rows of every stored layer (up, then down, as the pipeline
        aggregates), averaged over layers and heads, summed over the tokens 1 .. ``tokens``."""
        maps = self.maps["up"] + self.maps["down"]
        if not maps:
            raise DiffkitError(f"LEDITS++'s attention mask needs cross-attention at 1/4 of the latent's size "
                               f"({size[0]}x{size[1]}); this UNet has none there: allowed: mask='noise'")
        rows = torch.cat([p.reshape(count, batch, -1, *p.shape[1:])[1 + concept] for p in maps], dim=1)
        mean = rows.sum(1) / rows.shape[1]
        return mean.reshape(batch, *size, -1)[..., 1:1 + tokens].sum(-1)


def _quantile_mask(values: torch.Tensor, threshold: float) -> torch.Tensor:
    """1 where ``values`` (..., n) are >= their ``threshold`` quantile over the last dimension, else 0
    (torch.quantile's linear interpolation, in float32 as the pipeline)."""
    q = torch.quantile(values.float(), threshold, dim=-1, keepdim=True).to(values.dtype)
    return (values >= q).to(values.dtype)


def attention_mask(mean_map: torch.Tensor, threshold: float, latent_shape) -> torch.Tensor:
    """M^1 (eq. 12): the map (B, h, w) smoothed (3 x 3 Gaussian), 1 at or above its ``threshold`` quantile,
    nearest-upsampled to the latent (B, C, H, W)."""
    from .sd_sag import gaussian_blur
    smooth = gaussian_blur(mean_map[:, None], *SMOOTHING)[:, 0]
    mask = _quantile_mask(smooth.flatten(1), threshold).reshape(smooth.shape)
    return F.interpolate(mask[:, None], latent_shape[-2:]).repeat(1, latent_shape[1], 1, 1)


def noise_mask(guidance: torch.Tensor, threshold: float) -> torch.Tensor:
    """M^2 (eq. 12): 1 where the channel sum of |guidance| is at or above its ``threshold`` quantile (B, C, H, W)."""
    magnitude = guidance.abs().sum(1, keepdim=True)
    mask = _quantile_mask(magnitude.flatten(2), threshold).reshape(magnitude.shape)
    return mask.expand_as(guidance)


class SemanticEditGuidance(Wrapper):
    """LEDITS++'s guided noise (module docstring, stage 2; eq. 12) over the folder's network denoiser: each call
    one UNet pass of the null prompt (``null``: its UNet inputs, a dict as :func:`_null_cond`'s, or the context
    alone) and the E concepts (``contexts``: the same of E B rows, concept-major), the masks from
    that pass's cross-attention maps (``mask="attention"`` / ``"intersect"``) and from the guidance itself. The
    i-th call is step i (one call per step: ddim, the 2M solver). ``intersect_below``: the intersect mask is M^1 M^2
    at t <= it and M^1 above (the SD pipeline's 800; None: M^1 M^2 at every step, the SD-XL pipeline's).
    ``user_mask``: the pipeline's, each concept's term multiplied by it before the implicit masks."""

    def __init__(self, inner, unet, null: torch.Tensor, contexts: torch.Tensor, concepts: Sequence[Concept],
                 tokens: Sequence[int], mask: str = "intersect", intersect_below: Optional[float] = INTERSECT_BELOW,
                 user_mask: Optional[torch.Tensor] = None):
        as_dict = (lambda c: c if isinstance(c, dict) or c is None else {"context": c})
        self.inner, self.unet, self.null, self.contexts = inner, unet, as_dict(null), as_dict(contexts)
        self.concepts, self.tokens, self.mask = list(concepts), list(tokens), check_choice("mask", mask, MASKS)
        self.intersect_below = math.inf if intersect_below is None else intersect_below  # SD-XL's: M^1 M^2 always
        self.user_mask = user_mask  # the pipeline's user_mask: times each term before its masks (None: off)
        self.step = 0

    @contextlib.contextmanager
    def _recording(self, pixels: int):
        """diffusers' LEDITSCrossAttnProcessor on the cross-attention of the down and up blocks, within the context
        (the previous processors put back after), feeding a :class:`_Maps` of ``pixels`` queries."""
        module = require("diffusers").pipelines.ledits_pp.pipeline_leditspp_stable_diffusion
        store, layers = _Maps(pixels), []
        for name, layer in self.unet.named_modules():
            place = name.split("_blocks", 1)[0]
            if name.endswith("attn2") and place in ("down", "up"):
                layers.append((layer, layer.processor))
                layer.processor = module.LEDITSCrossAttnProcessor(store, place, False, len(self.concepts))
        try:
            yield store
        finally:
            for layer, previous in layers:
                layer.processor = previous

    def __call__(self, x: torch.Tensor, t, **cond) -> Prediction:
        step, self.step = self.step, self.step + 1
        batch, count = x.shape[0], 1 + len(self.concepts)
        if count == 1:
            return self.inner(x, t, **self.null)
        size = (x.shape[-2] // 4, x.shape[-1] // 4)
        cond = {key: torch.cat([value, self.contexts[key]]).to(device=x.device, dtype=value.dtype)
                for key, value in self.null.items()}
        masks = self.mask != "noise"
        with (self._recording(size[0] * size[1]) if masks else contextlib.nullcontext()) as store:
            pred = self.inner(x.repeat(count, 1, 1, 1), t, **cond)
        eps = pred.eps.chunk(count)
        eps_u, guided = eps[0], torch.zeros_like(eps[0])
        time = float(torch.as_tensor(t, dtype=torch.float64).flatten()[0])
        for c, concept in enumerate(self.concepts):
            cooldown = step + 1 if concept.cooldown is None else concept.cooldown
            if step < concept.warmup or step >= cooldown:
                continue
            term = (eps[1 + c] - eps_u) * (-concept.scale if concept.reverse else concept.scale)
            if self.user_mask is not None:  # before the masks: M^2's quantile is the masked term's, as the pipeline's
                term = term * self.user_mask.to(device=term.device, dtype=term.dtype)
            if masks:
                m1 = attention_mask(store.concept_map(c, count, batch, size, self.tokens[c]), concept.threshold,
                                    term.shape)
                term = term * (m1 * noise_mask(term, concept.threshold)
                               if self.mask == "intersect" and time <= self.intersect_below else m1)
            else:
                term = term * noise_mask(term, concept.threshold)
            guided = guided + term
        eps = eps_u + guided
        alpha, sigma = (diffusion.expand(f(torch.as_tensor(time, dtype=torch.float64)), x)
                        for f in (self.schedule.alpha, self.schedule.sigma))
        return Prediction(eps=eps, x0=(x - sigma * eps) / alpha)


def concept_token_counts(sd, prompts: Sequence[str]) -> list:
    """diffusers' ``num_edit_tokens``: the tokenizer's ``length`` of each prompt padded to ``model_max_length``,
    minus 2 (so the padded length, L - 2, for a CLIP tokenizer); on SD-XL ``tokenizer_2``'s (the pipeline's last
    tokenizer), padded to the context's length."""
    tokenizer = sd.tokenizer_2 if is_xl(sd) else sd.tokenizer
    tokens = tokenizer(list(prompts), padding="max_length", max_length=sd.tokenizer.model_max_length,
                       truncation=True, return_tensors="pt", return_length=True)
    return [int(n) - 2 for n in tokens.length]


def concepts_from(editing_prompt: Union[str, Sequence[str]], scale=5.0, threshold=0.9, reverse=False,
                  warmup=0, cooldown=None) -> list:
    """:class:`Concept` s from the pipeline's arguments: ``editing_prompt`` (one or a list), and each of the others
    one value for all or a list of one per prompt (``edit_guidance_scale``, ``edit_threshold``,
    ``reverse_editing_direction``, ``edit_warmup_steps``, ``edit_cooldown_steps``)."""
    prompts = [editing_prompt] if isinstance(editing_prompt, str) else list(editing_prompt)

    def each(name, value):
        if isinstance(value, (list, tuple)):
            if len(value) != len(prompts):
                raise DiffkitError(f"{name} has {len(value)} entries for {len(prompts)} editing prompts; give one "
                                   f"value or one per prompt")
            return list(value)
        return [value] * len(prompts)
    columns = [each(n, v) for n, v in (("edit scale", scale), ("edit threshold", threshold), ("reverse", reverse),
                                        ("edit warmup", warmup), ("edit cooldown", cooldown))]
    return [Concept(p, *row) for p, *row in zip(prompts, *columns)]


def check_user_mask(user_mask, latent_shape) -> None:
    """One line unless ``user_mask`` is None or a finite floating tensor that broadcasts to ``latent_shape``."""
    if user_mask is None:
        return
    shape = tuple(latent_shape)
    if not isinstance(user_mask, torch.Tensor) or not user_mask.is_floating_point() or user_mask.dim() != 4 or any(
            m not in (1, n) for m, n in zip(user_mask.shape, shape)) or not torch.isfinite(user_mask).all():
        what = tuple(user_mask.shape) if isinstance(user_mask, torch.Tensor) else type(user_mask).__name__
        raise DiffkitError(f"user_mask of {what} is not allowed; give a finite float tensor that broadcasts to the "
                           f"latents {shape} (e.g. (1, 1, {shape[2]}, {shape[3]}))")


def edit(sd, inversion: Inversion, concepts: Sequence[Concept] = (), *, negative_prompt: Optional[str] = None,
         mask: Optional[str] = None, clip_skip: Optional[int] = None, user_mask: Optional[torch.Tensor] = None,
         progress: bool = False, return_latents: bool = False) -> torch.Tensor:
    """LEDITS++ editing (module docstring, stage 2) of the images :func:`invert` gave ``inversion``: the inversion's
    sampler replaying its noise from its first latents, guided by ``concepts`` (:class:`Concept`,
    :func:`concepts_from`; none: the reconstruction) against ``negative_prompt`` (default the empty prompt; the
    pipeline's ``negative_prompt``; on SD-XL None is the zeroed null half). ``mask``: intersect (default),
    attention or noise (default: the pipeline's, intersect on SD 1.x / 2.x, noise on SD-XL, whose
    ``use_cross_attn_mask`` and ``use_intersect_mask`` default to False; its intersect mask is M^1 M^2 at every
    step). ``user_mask``: the pipeline's, a tensor that broadcasts to the latents (B, C, h, w), e.g. (1, 1, h, w)
    of 0 / 1 (:func:`diffkit.latent_editing.latent_mask` of a pixel mask): each concept's guidance term times it,
    before the implicit masks (so M^2's quantile is taken of the masked term). Returns images in [-1, 1]
    (the decoder's scale, unclamped) or, with ``return_latents``, the edited latents."""
    xl = is_xl(sd)
    mask = check_choice("mask", (XL_MASK if xl else MASKS[0]) if mask is None else mask, MASKS)
    if not isinstance(inversion, Inversion):
        raise DiffkitError(f"inversion of type {type(inversion).__name__} is not allowed; give what invert() returned")
    concepts = list(concepts)
    for concept in concepts:
        if not isinstance(concept, Concept):
            raise DiffkitError(f"concept {concept!r} is not allowed; give Concept(...) (or concepts_from(...))")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise DiffkitError(f"negative_prompt={negative_prompt!r} is not allowed; give one text")
    batch = inversion.latents.shape[0]
    check_user_mask(user_mask, inversion.latents.shape)
    if xl and inversion.time_ids is None:
        raise DiffkitError("this inversion has no SD-XL time ids; give what invert() returned on this folder")
    null = _null_cond(sd, batch, negative_prompt, clip_skip, inversion.time_ids)
    prompts = [c.prompt for c in concepts]
    # each concept once per image (the SD-XL pipeline encodes each once, which fits one image only)
    contexts = _prompt_cond(sd, [p for p in prompts for _ in range(batch)], clip_skip, inversion.time_ids) \
        if concepts else None
    guidance = SemanticEditGuidance(sd.network_denoiser, sd.unet, null, contexts, concepts,
                                    concept_token_counts(sd, prompts) if concepts else [], mask,
                                    None if xl else INTERSECT_BELOW, user_mask)

    def replayed(i: int, mean: torch.Tensor, std: float) -> torch.Tensor:
        return inversion.noises[i]
    with torch.no_grad():
        z = _run(inversion.sampler, guidance, inversion.latents, inversion.grid, {}, replayed, progress)
    return z if return_latents else sd.decode(z)


__all__ = ["Concept", "Inversion", "MASKS", "SemanticEditGuidance", "attention_mask", "check_user_mask",
           "concept_token_counts",
           "concepts_from", "edit", "invert", "is_xl", "ledits_grid", "ledits_scheduler", "noise_mask"]
