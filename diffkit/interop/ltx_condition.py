"""An ``LTXConditionPipeline`` folder (LTX-Video 0.9.5 on, diffusers 0.42.1): video generation conditioned on images
and videos placed at frame indices, each with a strength, with any diffkit sampler. The components and the rest are
:mod:`.ltx`'s (its loader, CFG, decoding); what this pipeline does differently (``LTXConditionPipeline.__call__``):

* prompts: T5 *with* its attention mask, 256 tokens (``max_sequence_length``).
* the grid: LTX-Video's ``linear_quadratic_schedule`` (:func:`linear_quadratic_sigmas`: N/2 steps linear from
  sigma 1 to 1 - 0.025, then quadratic to 0) given to the scheduler as timesteps 1000 s; diffkit drives schedulers
  that keep them (shift 1, no dynamic shifting, no terminal stretch: the pipeline's transformer times would differ
  from its step's sigmas otherwise). Its step is per-token flow Euler, diffkit's ``ddim``.
* the tokens: (B, S, C) with S = the extra condition tokens, then the video's F h w; RoPE at ``video_coords``, each
  latent frame f at pixel frame max(f r_t + 1 - r_t, 0) + frame_index, times 1 / frame_rate, (h r, w r) in space
  (:func:`token_coords`).
* a condition (:class:`Condition`: frames, frame index k, strength m): its frames resized to height x width (Lanczos),
  a video trimmed to min(T, num_frames - k) frames then to r_t j + 1, encoded with a posterior draw from its video's
  generator, normalised (z - mean) / std. At k = 0 its latent frames replace the first ones as lerp(z, c, m). At k > 0
  its latent frames past the first two lerp video frames k // r_t + 2 ...; its first two (one for an image) become
  extra tokens lerp(n, c, m) (n a fresh draw) at frame index k. Each token's strength m (0 elsewhere): the
  transformer is called at min(s, 1 - m) T, and a token is held while s - 1e-6 >= 1 - m (diffkit: its x_0 the
  state, :class:`HeldTokensDenoiser`, which keeps it exactly for every deterministic sampler).
* ``image_cond_noise_scale`` nu (default 0.15): before each model evaluation the tokens of strength 1 become
  c + nu n s^2 (n drawn from each video's generator, the whole token shape, whenever a condition is given).
* ``denoise_strength`` d < 1 (with ``init_latents`` z_in (B, C, F, h, w)): the last int(N d) steps, from s_0 n +
  (1 - s_0) z_in (``get_timesteps``).
* the extra tokens are dropped before decoding (:meth:`.ltx.LTX.decode`).

Noise per video from its generator (seed + i), in the pipeline's order: the latents, per condition its posterior and
(k > 0) its extra tokens' noise, per step the conditioning noise, the decode noise. The pipeline encodes a condition
once with the first generator: a batch of one video matches it draw for draw.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from ..denoiser import Wrapper
from ..errors import DiffkitError
from . import model_dtype
from .ltx import LTX, LTX_CONDITION_PIPELINE

CONDITION_NOISE = 0.15  # LTXConditionPipeline.__call__'s image_cond_noise_scale
THRESHOLD_NOISE = 0.025  # linear_quadratic_schedule's threshold_noise
PREFIX_FRAMES = 2  # prepare_latents' num_prefix_latent_frames
HELD_EPS = 1e-6  # the pipeline's tolerance in "t / 1000 - 1e-6 < 1 - mask"
IDENTITY_SCHEDULER = (("use_dynamic_shifting", False, "the pipeline passes no mu"), ("shift", 1.0, ""),
                      ("shift_terminal", None, ""), ("use_karras_sigmas", False, ""),
                      ("use_exponential_sigmas", False, ""), ("use_beta_sigmas", False, ""),
                      ("invert_sigmas", False, ""), ("num_train_timesteps", 1000, "its timesteps are 1000 s"))


@dataclass
class Condition:
    """One conditioning item (diffusers' ``LTXVideoCondition``): ``frames`` a PIL image, PIL frames or (T, 3, H, W) in
    [-1, 1] (an image is one frame), placed at pixel frame ``frame_index`` with ``strength`` in [0, 1]."""

    frames: object
    frame_index: int = 0
    strength: float = 1.0


def linear_quadratic_sigmas(steps: int, threshold: float = THRESHOLD_NOISE) -> torch.Tensor:
    """LTX-Video's ``linear_quadratic_schedule`` (ltx_video/schedulers/rf.py) as N sigmas (float32, no final 0):
    1 - s rises linearly by threshold / L over the first L = N // 2 steps, then along the quadratic a i^2 + b i + c
    through (L, threshold) that reaches 1 at i = N with slope continuity at L; one step: [1]."""
    if steps < 2:
        return torch.tensor([1.0])
    linear = steps // 2
    quadratic = steps - linear
    gap = linear - threshold * steps
    a = gap / (linear * quadratic ** 2)
    b = threshold / linear - 2 * gap / quadratic ** 2
    rise = [i * threshold / linear for i in range(linear)] + [a * i * i + b * i + a * linear ** 2
                                                              for i in range(linear, steps)]
    return torch.tensor([1.0 - r for r in rise])


def check_condition_scheduler(config: dict) -> None:
    """One line for a scheduler config whose ``set_timesteps(timesteps=...)`` would not keep the pipeline's sigmas."""
    for key, allowed, why in IDENTITY_SCHEDULER:
        value = config.get(key, allowed)
        if (value or None) != (allowed or None):
            raise DiffkitError(f"the scheduler's {key}={value!r} is not allowed for {LTX_CONDITION_PIPELINE} (allowed: "
                               f"{allowed!r}; {why or 'the pipeline calls the transformer at its unshifted timesteps'}"
                               f")")


def check_condition_folder(directory) -> tuple:
    """:func:`.ltx.check_ltx_folder` for an ``LTXConditionPipeline`` folder, and its scheduler
    (:func:`check_condition_scheduler`)."""
    from .ltx import check_ltx_folder
    index, sched = check_ltx_folder(directory, (LTX_CONDITION_PIPELINE,))
    check_condition_scheduler(sched)
    return index, sched


def load_ltx_condition(directory, device="cpu", dtype: torch.dtype = torch.float32, progress: bool = True,
                       lora=None) -> LTX:
    """:func:`.ltx.load_ltx` of an ``LTXConditionPipeline`` folder (checked first: :func:`check_condition_folder`)."""
    from .ltx import load_ltx
    check_condition_folder(directory)
    return load_ltx(directory, device, dtype, progress, lora, pipelines=(LTX_CONDITION_PIPELINE,))


def trimmed_frames(frames: int, frame_index: int, num_frames: int, temporal: int) -> int:
    """``trim_conditioning_sequence``: min(T, num_frames - k) frames, then down to r_t j + 1."""
    return (min(frames, num_frames - frame_index) - 1) // temporal * temporal + 1


def check_conditions(conditions: Sequence[Condition], num_frames: int) -> None:
    """One line for a frame index outside [0, num_frames) or a strength outside [0, 1]."""
    from ..errors import check_range
    for i, item in enumerate(conditions):
        k = item.frame_index
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < num_frames:
            raise DiffkitError(f"condition {i}'s frame_index={k!r} is not allowed; give 0 .. {num_frames - 1} (a "
                               f"frame of the {num_frames}-frame video)")
        check_range(f"condition {i}'s strength", item.strength, 0.0, 1.0)


def token_coords(frames: int, h: int, w: int, spatial: int, temporal: int, frame_index: int,
                 frame_rate: float) -> torch.Tensor:
    """(3, F h w) RoPE coordinates of latent tokens (``_prepare_video_ids`` + ``_scale_video_ids``, frame-major):
    pixel frame max(f r_t + 1 - r_t, 0) + frame_index times 1 / frame_rate, pixel rows h r and columns w r."""
    grid = torch.stack(torch.meshgrid(torch.arange(frames), torch.arange(h), torch.arange(w), indexing="ij"))
    grid = grid.flatten(1) * torch.tensor([temporal, spatial, spatial])[:, None]
    grid[0] = (grid[0] + 1 - temporal).clamp(min=0) + frame_index
    grid = grid.float()
    grid[0] = grid[0] * (1.0 / frame_rate)
    return grid


class LTXConditionNet(torch.nn.Module):
    """``net(z, t, context, mask, coords, strength)`` over an ``LTXVideoTransformer3DModel`` on tokens z (B, S, C):
    ``coords`` (B, 3, S) its ``video_coords``, each token at timestep min(t, (1 - strength) T) (``strength`` (B, S),
    None: t); the velocity (B, S, C) in z's dtype."""

    def __init__(self, transformer):
        super().__init__()
        self.model = transformer

    def forward(self, x, t, context=None, mask=None, coords=None, strength=None):
        if context is None or mask is None or coords is None:
            raise DiffkitError("an LTX-Video condition transformer needs cond {'context', 'mask', 'coords'}")
        dtype = model_dtype(self.model)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])[:, None]
        if strength is not None:
            t = torch.minimum(t, (1 - strength.float()) * 1000.0)
        out = self.model(hidden_states=x.to(dtype), encoder_hidden_states=context.to(dtype), timestep=t,
                         encoder_attention_mask=mask, video_coords=coords, return_dict=False)[0]
        return out.float().to(x.dtype)


class HeldTokensDenoiser(Wrapper):
    """The pipeline's conditioning on the sampler's state (tokens (B, S, C)): the tokens of strength 1 set to
    c + nu n s^2 before each evaluation (``add_noise_to_image_conditioning_latents``; ``noise_scale`` nu, n from
    ``generators``, drawn whenever nu > 0), and x_0 of each token held at flow time s (s - 1e-6 >= 1 - m) its flow
    state: eps = x_0 = z there, so every deterministic sampler keeps it (a held token's velocity is 0)."""

    def __init__(self, inner, strength: torch.Tensor, init: torch.Tensor, noise_scale: float, generators):
        self.inner, self.strength, self.init = inner, strength, init
        self.noise_scale, self.generators = noise_scale, generators

    def __call__(self, x, t, **cond):
        from ..denoiser import with_x0
        from ..noise import randn
        from ..schedule import as_cpu_times
        t64 = as_cpu_times(t)
        t64 = t64.expand(x.shape[0]) if t64.ndim == 0 else t64
        alpha, sigma = self.schedule.alpha(t64), self.schedule.sigma(t64)
        scale = (alpha + sigma).to(x)[:, None, None]  # VP x = (alpha + sigma) z
        s = (sigma / (alpha + sigma)).to(x)[:, None, None]
        z = x / scale
        if self.noise_scale > 0:
            noise = randn(x.shape, self.generators, device=x.device, dtype=x.dtype)
            noised = self.init.to(x) + self.noise_scale * noise * s ** 2
            z = torch.where(self.strength[..., None] > 1.0 - HELD_EPS, noised, z)
            x = z * scale
        pred = self.inner(x, t, **cond)
        held = s - HELD_EPS >= 1.0 - self.strength[..., None].to(x)
        return with_x0(self.schedule, x, t, torch.where(held, z, pred.x0), pred)


def _frames(item) -> list:
    """PIL frames of a condition's ``frames`` (a PIL image, PIL frames, or (T, 3, H, W) in [-1, 1])."""
    from .qwen_image_edit import _pil_images
    return _pil_images(item)


def condition_latents(model: LTX, frames: list, height: int, width: int, generator) -> torch.Tensor:
    """(1, C, F_c, h, w) normalised latents (z - mean) / std of PIL ``frames`` resized to height x width (Lanczos)
    and encoded as one video with a posterior draw from ``generator`` (``prepare_latents``)."""
    from PIL import Image

    from .qwen_image_edit import _pixels
    from .stable_diffusion import vae_latents
    pixels = _pixels([f.resize((width, height), resample=Image.LANCZOS) for f in frames])
    z = vae_latents(model.vae, pixels.transpose(0, 1)[None], model.device, generator, sample=True).float()
    mean, std = (model.vae.get_buffer(k).view(1, -1, 1, 1, 1).to(z) for k in ("latents_mean", "latents_std"))
    return (z - mean) / std


def conditioned_tokens(model: LTX, latents: torch.Tensor, conditions: Sequence[Condition], num_frames: int,
                       frame_rate: float, generators) -> tuple:
    """(tokens (B, S, C), strength (B, S), coords (B, 3, S), extra tokens) of video latents (B, C, F, h, w) with
    ``conditions`` (module docstring; video i's draws from ``generators[i]``)."""
    from ..noise import randn
    b, _, f, h, w = latents.shape
    r, r_t = model.spatial_ratio, model.temporal_ratio
    latents, frame_strength = latents.clone(), torch.zeros(b, f, device=latents.device)
    extra, extra_strength, extra_coords = [], [], []
    pil = [_frames(item.frames) for item in conditions]
    for item, frames in zip(conditions, pil):
        frames = frames[:trimmed_frames(len(frames), item.frame_index, num_frames, r_t)]
        c = torch.cat([condition_latents(model, frames, h * r, w * r, None if g is None else [g])
                       for g in (generators or [None] * b)]).to(latents)
        m, k = float(item.strength), item.frame_index
        if k == 0:
            n = c.shape[2]
            latents[:, :, :n] = torch.lerp(latents[:, :, :n], c, m)
            frame_strength[:, :n] = m
            continue
        if len(frames) > 1 and c.shape[2] > PREFIX_FRAMES:  # a video's frames past its prefix: in place
            start = k // r_t + PREFIX_FRAMES
            end = start + c.shape[2] - PREFIX_FRAMES
            latents[:, :, start:end] = torch.lerp(latents[:, :, start:end], c[:, :, PREFIX_FRAMES:], m)
            frame_strength[:, start:end] = m
            c = c[:, :, :PREFIX_FRAMES]
        c = torch.lerp(randn(c.shape, generators, device=c.device, dtype=c.dtype), c, m)
        extra.append(c.flatten(2).transpose(1, 2))
        extra_strength.append(torch.full(extra[-1].shape[:2], m, device=c.device))
        extra_coords.append(token_coords(c.shape[2], h, w, r, r_t, k, frame_rate))
    video = latents.flatten(2).transpose(1, 2)
    strength = frame_strength.repeat_interleave(h * w, dim=1)
    coords = torch.cat([*extra_coords, token_coords(f, h, w, r, r_t, 0, frame_rate)], dim=1)
    tokens = torch.cat([*extra, video], dim=1)
    return (tokens, torch.cat([*extra_strength, strength], dim=1),
            coords[None].expand(b, -1, -1).to(latents.device), tokens.shape[1] - video.shape[1])


def condition_denoiser(model: LTX):
    """The unguided flow-prediction Denoiser of :class:`LTXConditionNet` on the scheduler's flow schedule (shift 1)."""
    from ..denoiser import Denoiser
    from ..schedule import NoiseSchedule
    if "condition" not in model._denoisers:
        schedule = NoiseSchedule.flow(int(model.scheduler_config.get("num_train_timesteps", 1000)), 1.0)
        model._denoisers["condition"] = Denoiser(LTXConditionNet(model.transformer), schedule, "flow_prediction")
        model._denoisers["condition"].model = model.transformer
    return model._denoisers["condition"]


def condition_sigmas(model: LTX, steps: int) -> torch.Tensor:
    """The scheduler's sigmas (final 0 included) after ``set_timesteps(timesteps=1000 linear_quadratic_sigmas)``."""
    from ..errors import check_range
    from . import require
    check_range("steps", steps, 1, None, integer=True)
    scheduler = require("diffusers").FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config)
    scheduler.set_timesteps(timesteps=linear_quadratic_sigmas(steps) * 1000)
    return scheduler.sigmas


def condition_to_video(model: LTX, prompts: Union[str, Sequence[str]], conditions: Sequence = (), *,
                       denoise_strength: float = 1.0, init_latents: Optional[torch.Tensor] = None,
                       image_cond_noise_scale: float = CONDITION_NOISE, negative_prompt=None,
                       guidance_scale: Optional[float] = None, convention: str = "diffusers",
                       guidance_rescale: float = 0.0, steps: Optional[int] = None, sampler: Optional[str] = None,
                       num_frames: Optional[int] = None, height: Optional[int] = None, width: Optional[int] = None,
                       frame_rate: Optional[float] = None, decode_timestep: float = 0.0,
                       decode_noise_scale: Optional[float] = None, seed: Optional[int] = 0,
                       output_range: str = "-1,1", return_latents: bool = False, progress: bool = False,
                       **options) -> torch.Tensor:
    """Videos (B, T, C, H, W) of ``prompts`` (one per video) with ``conditions`` (:class:`Condition` items, or
    (frames, frame_index, strength) tuples; the same for every video) as ``LTXConditionPipeline`` (module docstring).
    ``denoise_strength`` d in (0, 1]: below 1 from ``init_latents`` (B, C, F, h, w) noised to the grid's int(N d)-th
    last sigma; ``image_cond_noise_scale`` nu >= 0. Other keyword arguments: :func:`.ltx.text_to_video`'s (without
    ``latents``), their defaults the pipeline's (161 frames of 512 x 704, 50 steps, CFG 3, frame rate 25)."""
    from ..editing import strength_grid
    from ..errors import check_choice, check_range
    from ..noise import generators_from_seed, randn
    from ..sampling import sample
    from .ltx import LTX_FRAME_RATE, LTX_FRAMES, LTX_HEIGHT, LTX_WIDTH, video_guidance
    from .pixart import flow_start, folder_sampler
    from .stable_diffusion import OUTPUT_RANGES, prompt_list
    check_choice("output_range", output_range, OUTPUT_RANGES)
    check_range("image_cond_noise_scale", image_cond_noise_scale, 0.0, None)
    check_range("denoise_strength", denoise_strength, 0.0, 1.0, low_inclusive=False)
    prompts = prompt_list(prompts)
    conditions = [c if isinstance(c, Condition) else Condition(*c) for c in conditions]
    num_frames = LTX_FRAMES if num_frames is None else num_frames
    height, width = LTX_HEIGHT if height is None else height, LTX_WIDTH if width is None else width
    shape = model.latent_shape(len(prompts), num_frames, height, width)
    check_conditions(conditions, num_frames)
    frame_rate = LTX_FRAME_RATE if frame_rate is None else frame_rate
    check_range("frame_rate", frame_rate, 0.0, None, low_inclusive=False)
    if (denoise_strength < 1) != (init_latents is not None):
        raise DiffkitError(f"denoise_strength={denoise_strength:g} with init_latents "
                           f"{'given' if init_latents is not None else 'None'} is not allowed; give init_latents "
                           f"(B, C, F, h, w) exactly with denoise_strength < 1")
    if init_latents is not None and tuple(init_latents.shape) != shape:
        raise DiffkitError(f"init_latents of shape {tuple(init_latents.shape)} are not allowed; expected {shape}")
    from .flow_latents import flow_sigmas_grid
    denoiser, steps = condition_denoiser(model), model.default_steps if steps is None else steps
    sigmas = condition_sigmas(model, steps)
    grid = flow_sigmas_grid(denoiser.schedule, sigmas, steps)
    if denoise_strength < 1:  # get_timesteps: the last int(N d) steps
        grid = strength_grid(grid, denoise_strength)
    if sampler is None:
        sampler, own = folder_sampler(model.scheduler_config, flow=True)
        options = {**own, **options}
    generators = None if seed is None else generators_from_seed(seed, shape[0])
    state = torch.float32
    latents = randn(shape, generators, device=model.device, dtype=state)
    if init_latents is not None:  # prepare_latents: s_0 n + (1 - s_0) z_in
        s0 = sigmas[len(sigmas) - len(grid)].to(latents)
        latents = s0 * latents + (1 - s0) * init_latents.to(latents)
    tokens, strength, coords, extra = conditioned_tokens(model, latents, conditions, num_frames, frame_rate,
                                                         generators)
    guided, cond = video_guidance(model, denoiser, prompts, negative_prompt, guidance_scale, convention,
                                  guidance_rescale)
    cond["coords"] = coords
    if conditions:
        cond["strength"] = strength
        guided = HeldTokensDenoiser(guided, strength, tokens.clone(), image_cond_noise_scale, generators)
    noise = flow_start(denoiser.schedule, tokens, grid, seed, model.device, state)
    z = sample(guided, noise, sampler, grid=grid, seed=seed, cond=cond, progress=progress, device=model.device,
               dtype=state, **options)
    b, c, f, h, w = shape
    z = z[:, extra:].transpose(1, 2).reshape(b, c, f, h, w)
    if return_latents:
        return z
    videos = model.decode(z, decode_timestep, decode_noise_scale, generators)
    return (videos / 2 + 0.5).clamp(0, 1) if output_range == "0,1" else videos.clamp(-1, 1)


__all__ = ["Condition", "condition_to_video", "load_ltx_condition", "check_condition_folder",
           "check_condition_scheduler", "check_conditions", "linear_quadratic_sigmas", "token_coords",
           "trimmed_frames", "LTXConditionNet", "HeldTokensDenoiser", "CONDITION_NOISE"]
