"""Stable Diffusion x2 latent upscaler folders (``StableDiffusionLatentUpscalePipeline``): 2x in SD's latent space.

``stabilityai/sd-x2-latent-upscaler`` is a UNet2DConditionModel on Stable Diffusion's own latents (its folder carries
SD's VAE and a CLIP text encoder): it denoises latents twice the size of the low-resolution ones, with those
low-resolution latents (nearest-upsampled 2x) concatenated after the noisy ones. As diffusers 0.42.1's pipeline runs it:

* the low-resolution latents: given as such (4 channels: e.g. ``StableDiffusionPipeline(..., output_type="latent")``,
  the hand-over diffusers' example shows) or images in [-1, 1] encoded by the folder's VAE, a posterior *draw*
  (``retrieve_latents(vae.encode(x), generator)``) times ``scaling_factor``: that is image i's first draw from its
  generator, then z_T (``prepare_latents``);
* the text: CLIP's last hidden states *before* its final norm (``hidden_states[-1]``) as the context, and its pooled
  output in ``timestep_cond`` = [1 (64 entries), 0 (64), pooled] (the noise-level embedding of level 0: the pipeline
  never noises the low-resolution latents, so the image condition's factor (0^2 + 1)^-1/2 is 1);
* the network F gets c_in x at time c_noise and the 5th output channel is dropped; the pipeline then forms
  D = c_skip x + c_out F by hand with c_skip = 1/(sigma^2 + 1), c_out = sigma/sqrt(sigma^2 + 1),
  c_in = 1/sqrt(sigma^2 + 1), c_noise = ln(sigma)/4: EDM's preconditioning (Karras et al. 2022, "Elucidating the Design
  Space of Diffusion-Based Generative Models", Table 1 and eq. 7) at sigma_data = 1. That is a diffkit
  :class:`~diffkit.denoiser.Denoiser` with ``prediction_type="edm"``, ``sigma_data=1``
  (:func:`latent_upscale_denoiser`),
  sigma = the VE sigma~ = sigma_t/alpha_t at diffkit's time t, and the folder's ``EulerDiscreteScheduler``
  (``prediction_type="sample"``) steps with D as the predicted x_0;
* the loop: :meth:`LatentUpscaler.scheduler_grid` places the scheduler's sigmas (after ``set_timesteps``, Karras /
  exponential / beta sigmas included) at diffkit's times of equal sigma~, and diffkit's ``euler`` there is the
  scheduler's step (EDM Algorithm 1 without the correction: x~' = x~ + (sigma' - sigma) (x~ - D)/sigma); the start
  z_T = ``init_noise_sigma`` n in the VE variable x~ (sigma_max for ``linspace`` / ``trailing`` spacing,
  sqrt(sigma_max^2 + 1) for ``leading``, as diffusers) is diffkit's VP state alpha_0 z_T;
* classifier-free guidance of D (the pipeline's s, default 9; s > 1) against the empty or negative prompt's context and
  pooled embedding; s = 0 is the pipeline's "empty prompt, unguided" (its example's ``guidance_scale=0``); 0 < s < 1 is
  refused (the pipeline ignores it, as s = 1);
* the image is D(z_0 / scaling_factor), twice the input's size in latents (2 f times the latents').

Refused in one line: a folder whose UNet does not take 2 x latent channels in and latent channels + 1 out, whose
``time_cond_proj_dim`` is not 128 + the text encoder's width, whose scheduler is not an ``EulerDiscreteScheduler`` with
``prediction_type="sample"`` (the pipeline passes D as the sample), or zero-terminal-SNR betas (sigma_max = inf);
images whose sides are not multiples of the VAE factor (the pipeline resizes them); the folder in ``diffkit sample`` /
``edit`` (:func:`refuse_latent_upscale_folder`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..denoiser import Denoiser
from ..errors import DiffkitError, read_json_object
from .sd_inpaint import ChannelConcatNet
from .stable_diffusion import StableDiffusion

LATENT_UPSCALE_PIPELINE = "StableDiffusionLatentUpscalePipeline"
DEFAULT_GUIDANCE, DEFAULT_STEPS = 9.0, 75  # the pipeline's __call__ defaults
SIGMA_DATA = 1.0  # c_skip = 1/(sigma^2 + 1), c_out = sigma/sqrt(sigma^2 + 1): EDM Table 1 at sigma_data = 1
NOISE_LEVEL_WIDTH = 64  # timestep_cond = [ones(64), zeros(64), pooled]
LOW_RES_KEY = "low_res_latents"  # the cond entry LatentUpscaleNet concatenates
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SCHEDULER = "EulerDiscreteScheduler"


def is_latent_upscale_folder(path) -> bool:
    """True for a diffusers folder whose ``model_index.json`` names :data:`LATENT_UPSCALE_PIPELINE` (read only)."""
    try:
        index = json.loads((Path(path) / "model_index.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(index, dict) and index.get("_class_name") == LATENT_UPSCALE_PIPELINE


def refuse_latent_upscale_folder(path) -> None:
    """One line for a latent upscaler folder given where a text-to-image / editing folder is expected."""
    if is_latent_upscale_folder(path):
        raise DiffkitError(f"{path} is a Stable Diffusion x2 latent upscaler ({LATENT_UPSCALE_PIPELINE}): it upscales "
                           f"latents or images; use diffkit upscale --checkpoint {path} --images LOW_RES --prompt TEXT "
                           f"(library: sd_latent_upscale.load_latent_upscaler and latent_upscale)")


def check_latent_upscale_folder(directory) -> dict:
    """The folder's scheduler config, after the JSON checks of the module docstring (one line each)."""
    from .stable_diffusion import check_components
    directory = Path(directory)
    if not is_latent_upscale_folder(directory):
        raise DiffkitError(f"{directory} is not a Stable Diffusion x2 latent upscaler folder (model_index.json naming "
                           f"{LATENT_UPSCALE_PIPELINE})")
    check_components(directory, read_json_object(directory / "model_index.json", "diffusers index"), COMPONENTS,
                     "latent upscaler")
    unet = read_json_object(directory / "unet" / "config.json", "unet config")
    vae = read_json_object(directory / "vae" / "config.json", "vae config")
    text = read_json_object(directory / "text_encoder" / "config.json", "text encoder config")
    channels = vae.get("latent_channels", 4)
    want = {"in_channels": 2 * channels, "out_channels": channels + 1,
            "time_cond_proj_dim": 2 * NOISE_LEVEL_WIDTH + text.get("hidden_size", 0)}
    for key, value in want.items():
        if unet.get(key) != value:
            raise DiffkitError(f"{directory}'s UNet has {key}={unet.get(key)!r}; allowed: {value} (noisy + low-"
                               f"resolution latents in, latents + an unused channel out, timestep_cond = 128 noise-"
                               f"level entries + the pooled text)")
    config = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    fixed = {"_class_name": SCHEDULER, "prediction_type": "sample", "rescale_betas_zero_snr": False}
    for key, value in fixed.items():
        if config.get(key, value) != value:
            raise DiffkitError(f"{directory}'s scheduler has {key}={config.get(key)!r}; allowed: {value!r} (the "
                               f"pipeline passes its preconditioned D to the Euler step as the predicted sample)")
    return config


class LatentUpscaleNet(ChannelConcatNet):
    """F(x, c_noise) = ``unet(cat([x, low_res_latents], 1), c_noise, encoder_hidden_states=context, timestep_cond=
    timestep_cond)[:, :-1]``: the pipeline's UNet call (its 5th output channel, unused, dropped)."""
    KEYS = (LOW_RES_KEY,)
    WHAT = "an x2 latent upscaler UNet (noisy + low-resolution latents in)"
    USE = "give cond['low_res_latents'], cond['context'] and cond['timestep_cond'] (sd_latent_upscale.latent_upscale)"

    def forward(self, x: torch.Tensor, t, context=None, timestep_cond=None, **cond) -> torch.Tensor:
        if context is None or timestep_cond is None:
            raise DiffkitError(f"this is {self.WHAT}: {self.USE}")
        out = super().forward(x, t, encoder_hidden_states=context, timestep_cond=timestep_cond, return_dict=False,
                              **cond)
        return out[0][:, :-1]


def latent_upscale_denoiser(unet, schedule) -> Denoiser:
    """The pipeline's D(x~; sigma) = c_skip x~ + c_out F(c_in x~, ln(sigma)/4) as a diffkit Denoiser: EDM's
    preconditioning (Karras et al. 2022, Table 1) at sigma_data = 1 (module docstring)."""
    denoiser = Denoiser(LatentUpscaleNet(unet), schedule, "edm", sigma_data=SIGMA_DATA)
    denoiser.model = unet
    return denoiser


class LatentUpscaler(StableDiffusion):
    """The loaded folder (:func:`load_latent_upscaler`): Stable Diffusion's VAE helpers, its own denoiser, prompts
    and scheduler grid."""

    @property
    def network_denoiser(self):
        if self._denoiser is None:
            self._denoiser = latent_upscale_denoiser(self.unet, self.schedule)
        return self._denoiser

    def encode_text(self, prompts: Sequence[str]) -> tuple:
        """(context, timestep_cond) of ``prompts``: CLIP's ``hidden_states[-1]`` (before the final norm) and
        [1 x 64, 0 x 64, pooled output], padded to ``model_max_length`` and truncated (the pipeline's)."""
        tokens = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        with torch.no_grad():
            out = self.text_encoder(tokens.input_ids.to(self.device), output_hidden_states=True)
        pooled = out.pooler_output.float()
        level = torch.cat([torch.ones(len(prompts), NOISE_LEVEL_WIDTH), torch.zeros(len(prompts), NOISE_LEVEL_WIDTH)],
                          1).to(pooled)
        return out.hidden_states[-1].float(), torch.cat([level, pooled], 1)

    def scheduler_start(self, steps: int) -> tuple:
        """(grid, init_noise_sigma) of the folder's EulerDiscreteScheduler after ``set_timesteps(steps)``: its sigmas
        at diffkit's times of equal sigma~ (0: t = -1, clean data), and the scale of its z_T in x~
        (:func:`euler_scheduler_start`)."""
        return euler_scheduler_start(self.scheduler_config, self.schedule, steps)

    def scheduler_grid(self, steps: int) -> torch.Tensor:
        """diffkit's grid of the folder's scheduler (:meth:`scheduler_start`); ``euler`` there: the pipeline's loop."""
        return self.scheduler_start(steps)[0]


def euler_scheduler_start(config: dict, schedule, steps: int) -> tuple:
    """(grid, init_noise_sigma) of an ``EulerDiscreteScheduler`` (``config``: its JSON) after ``set_timesteps(steps)``:
    its sigmas (above ``schedule``'s largest sigma~ by float32 rounding: that one) at the times of equal sigma~ of
    ``schedule`` (0: t = -1, clean data), and the scale of its z_T in x~ (the latent upscaler's, :mod:`.svd`'s)."""
    from . import require
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise DiffkitError(f"steps={steps!r} is not allowed; give a positive integer")
    scheduler = require("diffusers").EulerDiscreteScheduler.from_config(config)
    scheduler.set_timesteps(steps)
    top = schedule.karras_sigma(schedule.num_timesteps - 1).item()
    sigmas = scheduler.sigmas.to(torch.float64).clamp(max=top)  # float32 rounding above the largest sigma~
    grid = schedule.t_from_karras_sigma(sigmas)
    if not bool((grid[1:] < grid[:-1]).all()):
        raise DiffkitError(f"the folder's scheduler gives sigmas that do not fall strictly for steps={steps} "
                           f"({[round(s, 4) for s in sigmas[:6].tolist()]}...); use fewer steps")
    return grid, float(scheduler.init_noise_sigma)


def load_latent_upscaler(directory: Union[str, Path], device="cpu", progress: bool = True) -> LatentUpscaler:
    """Load a latent upscaler folder (float32; never downloads): checked first (:func:`check_latent_upscale_folder`)."""
    from . import from_pretrained, library_progress_bars, require
    from .schedulers import schedule_from_diffusers
    directory = Path(directory)
    config = check_latent_upscale_folder(directory)
    diffusers, transformers = require("diffusers"), require("transformers")
    schedule, prediction_type = schedule_from_diffusers(config)
    device = torch.device(device)
    common = {"local_files_only": True, "torch_dtype": torch.float32, "use_safetensors": True}
    with library_progress_bars(progress):
        unet = from_pretrained(diffusers.UNet2DConditionModel, directory / "unet", low_cpu_mem_usage=False, **common)
        vae = from_pretrained(diffusers.AutoencoderKL, directory / "vae", low_cpu_mem_usage=False, **common)
        encoder = from_pretrained(transformers.CLIPTextModel, directory / "text_encoder", **common)
        tokenizer = from_pretrained(transformers.CLIPTokenizer, directory / "tokenizer", local_files_only=True)
    for module in (unet, vae, encoder):
        module.to(device).eval().requires_grad_(False)
    return LatentUpscaler(unet, vae, encoder, tokenizer, schedule, prediction_type, config, device)


def check_latent_guidance(guidance_scale, prompts, negative_prompt,
                          names: tuple = ("guidance_scale", "negative_prompt", "prompts")) -> float:
    """The pipeline's s: 0 (the empty prompt, unguided: then no ``prompts`` and no ``negative_prompt``) or a number
    >= 1 with ``prompts`` (a ``negative_prompt`` only above 1: :func:`.sd_upscale.check_guidance`); else one line
    naming ``names``."""
    from .sd_upscale import check_guidance
    number = isinstance(guidance_scale, (int, float)) and not isinstance(guidance_scale, bool)
    if number and guidance_scale == 0:
        given = names[2] if prompts is not None else names[1] if negative_prompt is not None else None
        if given:
            raise DiffkitError(f"{names[0]}=0 upscales with the empty prompt, unguided (as the pipeline); give no "
                               f"{given}")
        return 0.0
    if not number or not guidance_scale >= 1:
        raise DiffkitError(f"{names[0]}={guidance_scale!r} is not allowed; allowed: 0 (the empty prompt, unguided) or "
                           f"a number >= 1 (diffusers' s; 1 = unguided)")
    if prompts is None:
        raise DiffkitError(f"give {names[2]} (or {names[0]}=0: the empty prompt, unguided)")
    return check_guidance(guidance_scale, negative_prompt, names[:2])


def latent_upscale(up: LatentUpscaler, low_res: torch.Tensor, prompts: Union[None, str, Sequence[str]] = None, *,
                   negative_prompt: Union[None, str, Sequence[str]] = None, guidance_scale: float = DEFAULT_GUIDANCE,
                   sampler: str = "euler", steps: Optional[int] = DEFAULT_STEPS, nfe: Optional[int] = None,
                   spacing: Optional[str] = None, final: Optional[str] = None, seed: Optional[int] = 0,
                   generator=None, return_latents: bool = False, progress: bool = False, **options) -> torch.Tensor:
    """The x2 upscales of ``low_res`` by a latent upscaler folder ``up`` (:func:`load_latent_upscaler`), as
    ``StableDiffusionLatentUpscalePipeline`` (module doc): ``low_res`` (B, 3, h, w) images in [-1, 1] (encoded by the
    folder's VAE) or (B, latent channels, h, w) scaled latents (SD's ``output_type="latent"``); ``prompts`` one for
    every image or one each; ``guidance_scale`` s (:func:`check_latent_guidance`). Image i draws from
    ``generator[i]`` (default ``torch.Generator().manual_seed(seed + i)``): its VAE posterior draw (images only),
    then z_T, then the sampler's. Without ``spacing`` / ``final`` / ``nfe`` (or ``NAME@SPACING``) the grid is the
    folder's scheduler's (:meth:`LatentUpscaler.scheduler_start`; ``euler``: the pipeline's loop), else diffkit's.
    Returns the images decoded and clamped to [-1, 1] (``return_latents``: z_0). ``options``: the sampler's."""
    from ..guidance import ClassifierFreeGuidance
    from ..noise import randn
    from ..sampling import resolve_sampler, sample
    from .sd_upscale import check_low_res_size, per_image
    from .stable_diffusion import negative_prompts, prompt_list
    channels = (up.image_channels, up.vae.config.latent_channels)
    if low_res.ndim != 4 or low_res.shape[1] not in channels or not low_res.is_floating_point():
        raise DiffkitError(f"low_res of shape {tuple(low_res.shape)} is not allowed; give (B, {channels[0]}, h, w) "
                           f"images in [-1, 1] or (B, {channels[1]}, h, w) latents, floats")
    images = low_res.shape[1] == channels[0] and channels[0] != channels[1]
    if images:
        check_low_res_size(low_res.shape[2], low_res.shape[3], up.vae_scale_factor)
    guidance_scale = check_latent_guidance(guidance_scale, prompts, negative_prompt)
    batch = low_res.shape[0]
    prompts, generator = per_image([""] if guidance_scale == 0 else prompt_list(prompts), batch, generator, seed)
    low_res = low_res.to(device=up.device, dtype=torch.float32)
    latents = up.encode(low_res, generator, sample=True) if images else low_res  # the pipeline's first draw
    context, timestep_cond = up.encode_text(prompts)
    cond = {"context": context, "timestep_cond": timestep_cond,
            LOW_RES_KEY: torch.nn.functional.interpolate(latents, scale_factor=2, mode="nearest")}
    denoiser = up.network_denoiser
    if guidance_scale > 1:
        null_context, null_timestep_cond = up.encode_text(negative_prompts(negative_prompt, batch))
        denoiser = ClassifierFreeGuidance(denoiser, guidance_scale, "diffusers", null_context=null_context,
                                          null_cond={"timestep_cond": null_timestep_cond})
    noise = randn((batch, latents.shape[1], 2 * latents.shape[2], 2 * latents.shape[3]), generator,
                  device=up.device)  # prepare_latents' draw
    grid = {"steps": steps, "nfe": nfe, "spacing": spacing, "final": final}
    info, own_spacing, own_final = resolve_sampler(sampler, spacing, final)
    if not info.adaptive and nfe is None and own_spacing is None and own_final is None:
        times, init = up.scheduler_start(DEFAULT_STEPS if steps is None else steps)
        sigma = up.schedule.karras_sigma(times[0]).item()
        noise, grid = noise * (init / math.sqrt(1.0 + sigma * sigma)), {"grid": times}  # x~ = init n, VP alpha_0 x~
    z0 = sample(denoiser, noise, sampler, generator=generator, progress=progress, cond=cond, **grid, **options)
    return z0 if return_latents else up.decode(z0).clamp(-1, 1)


__all__ = ["LATENT_UPSCALE_PIPELINE", "DEFAULT_GUIDANCE", "DEFAULT_STEPS", "SIGMA_DATA", "LOW_RES_KEY",
           "is_latent_upscale_folder", "refuse_latent_upscale_folder", "check_latent_upscale_folder",
           "LatentUpscaleNet", "latent_upscale_denoiser", "LatentUpscaler", "euler_scheduler_start",
           "load_latent_upscaler", "check_latent_guidance", "latent_upscale"]
