"""Editing real images with any sampler (docs/editing.md): SDEdit img2img, inpainting by
replacement, and the latent interpolations of DDPM (Sec. 4.4) and DDIM (Sec. 5.3).

All three start the reverse process from a noised or inverted image and run it with
:func:`diffkit.sample` on (a part of) a sampler's own time grid; inpainting changes the denoiser,
never the sampler (:class:`InpaintingDenoiser`).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from tqdm.auto import tqdm

from . import diffusion
from .denoiser import Prediction, Wrapper, _innermost, model_variance_type, with_x0
from .errors import DiffkitError, check_choice, check_range
from .noise import generators_from_seed, randn
from .sampling import check_denoiser, check_generators, plan, sample, sampler_grid, thresholded
from .samplers.ddim import ddim_invert, parse_eta
from .samplers.registry import get_sampler

INTERPOLATIONS = ("ddpm", "ddim")
DATA_RANGE = (-1.0, 1.0)


# ---------------------------------------------------------------- inputs
def check_images(images, what: str = "images", value_range=DATA_RANGE, skippable: bool = True) -> torch.Tensor:
    """Images to edit as a floating tensor (batch >= 1, ...): uint8 (0..255) is scaled to [-1, 1]
    (x / 127.5 - 1), half precision promoted to float32; finite, and within ``value_range``
    (the network's data range, default [-1, 1]; ``None`` skips that check, e.g. for latents;
    ``skippable``: the caller takes ``value_range``, and the error says so)."""
    if not isinstance(images, torch.Tensor):
        raise DiffkitError(f"{what} of type {type(images).__name__} is not allowed; give a tensor (batch, ...)")
    images = images.detach()
    if images.dtype == torch.uint8:
        images = images.float() / 127.5 - 1.0
    elif not images.is_floating_point() or images.is_complex():
        raise DiffkitError(f"{what} of dtype {str(images.dtype).replace('torch.', '')} are not allowed; give "
                           f"float images in [-1, 1] or uint8 images in [0, 255]")
    if images.ndim < 2 or images.numel() == 0:
        raise DiffkitError(f"{what} of shape {tuple(images.shape)} are not allowed; give (batch, ...) with "
                           f"every size >= 1")
    if images.dtype in (torch.float16, torch.bfloat16):
        images = images.float()
    if not bool(torch.isfinite(images).all()):
        raise DiffkitError(f"{what} hold NaN or infinite values")
    if value_range is not None:
        low, high = value_range
        lo, hi = images.min().item(), images.max().item()
        if lo < low - 1e-6 or hi > high + 1e-6:
            how = " (from [0, 1]: 2 x - 1; from [0, 255]: x / 127.5 - 1)" if (low, high) == DATA_RANGE else ""
            raise DiffkitError(f"{what} hold values in [{lo:.4g}, {hi:.4g}]; allowed: [{low:g}, {high:g}], the "
                               f"network's data range{how}" + ("; value_range=None skips this check" if skippable
                                                                else ""))
    return images


def check_fits(denoiser, images: torch.Tensor, what: str = "images") -> None:
    """Images of the shape the network takes, where a loaded checkpoint says it (``meta["unet"]``:
    channels and side; latents for a latent model); other denoisers are not checked here."""
    unet = (getattr(_innermost(denoiser), "meta", None) or {}).get("unet") or {}
    if "in_channels" in unet and "img_size" in unet:
        expected = (unet["in_channels"], unet["img_size"], unet["img_size"])
        if tuple(images.shape[1:]) != expected:
            raise DiffkitError(f"{what} of shape {tuple(images.shape)} do not fit the model, which takes "
                               f"(batch, {', '.join(map(str, expected))})")


def check_mask(mask, images: torch.Tensor) -> torch.Tensor:
    """A mask as diffusers' inpainting takes it: 1 (white) = repaint, 0 = keep, values in [0, 1]
    (bool, or uint8 0..255 scaled by 1/255), broadcastable to the images' shape (e.g. (B or 1,
    1, H, W)). Returned expanded to the images' shape, dtype and device."""
    if not isinstance(mask, torch.Tensor):
        raise DiffkitError(f"mask of type {type(mask).__name__} is not allowed; give a tensor in [0, 1] "
                           f"(1 = repaint, 0 = keep)")
    mask = mask.detach()
    if mask.dtype == torch.bool:
        mask = mask.float()
    elif mask.dtype == torch.uint8:
        mask = mask.float() / 255.0
    elif not mask.is_floating_point() or mask.is_complex():
        raise DiffkitError(f"mask of dtype {str(mask.dtype).replace('torch.', '')} is not allowed; give a bool, "
                           f"uint8 or float mask in [0, 1]")
    try:
        shape = torch.broadcast_shapes(mask.shape, images.shape)
    except RuntimeError:
        shape = None
    if shape != images.shape:
        raise DiffkitError(f"mask of shape {tuple(mask.shape)} does not broadcast to the images' shape "
                           f"{tuple(images.shape)}; give e.g. {(images.shape[0], 1, *images.shape[2:])}")
    if not bool(torch.isfinite(mask).all()) or bool((mask < 0).any()) or bool((mask > 1).any()):
        lo, hi = torch.nan_to_num(mask).min().item(), torch.nan_to_num(mask).max().item()
        raise DiffkitError(f"mask holds values in [{lo:.4g}, {hi:.4g}] (or NaN); allowed: [0, 1], "
                           f"1 = repaint, 0 = keep")
    return mask.to(device=images.device, dtype=images.dtype).expand(images.shape)


def _generators(seed: Optional[int], generator, batch: int):
    """Per-sample generators ``seed + i`` (sample i the same alone and in a batch), or the
    caller's ``generator`` (one, or one per sample)."""
    if seed is not None and generator is not None:
        raise DiffkitError("give seed or generator, not both")
    if seed is not None:
        check_range("seed", seed, 0, 2**63 - 1, integer=True)
        return generators_from_seed(seed, batch)
    check_generators(generator, batch)
    return generator


def strength_grid(grid: torch.Tensor, strength: float) -> torch.Tensor:
    """The last ``min(int(S * strength), S)`` intervals of a grid of S intervals: the timesteps of
    diffusers' ``StableDiffusionImg2ImgPipeline.get_timesteps`` (its first time is where the image
    is noised to). Fewer than one interval is a one-line error."""
    check_range("strength", strength, 0.0, 1.0, low_inclusive=False)
    count = len(grid) - 1
    kept = min(int(count * strength), count)
    if kept < 1:
        raise DiffkitError(f"strength={strength} keeps int({count} * {strength}) = 0 of {count} steps; allowed: "
                           f"strength >= 1/{count} (or more steps)")
    return grid[count - kept:]


def _planned(denoiser, sampler, steps, spacing, final, thresholding, options, strength, wrap=None):
    """(sampler name, the strength's part of the sampler's own grid for ``steps``, the denoiser
    with thresholding, outside ``wrap(denoiser)`` if given), the sampler options checked and left
    in ``options``."""
    check_denoiser(denoiser)
    grid = options.pop("grid", None)  # a pipeline's own grid (e.g. an SD3 folder's scheduler sigmas): steps unused
    if grid is None:
        check_range("steps", steps, 1, denoiser.schedule.num_timesteps, integer=True)
    info, grid, thresholding, threshold_options = plan(denoiser, sampler, steps if grid is None else None, None,
                                                       spacing, final, grid, thresholding, options)
    inner = denoiser if wrap is None else wrap(denoiser)
    return info.name, strength_grid(grid, strength), thresholded(inner, thresholding, threshold_options)


def _check_handover(denoising_start: Optional[float], denoising_end: Optional[float]) -> Optional[float]:
    """``denoising_end`` (None or a fraction), checked with ``denoising_start``: start < end where both are given."""
    if denoising_start is not None and denoising_end is not None:
        from .handover import check_fraction
        if not check_fraction("denoising_start", denoising_start) < check_fraction("denoising_end", denoising_end):
            raise DiffkitError(f"denoising_start={denoising_start!r} is not allowed with denoising_end="
                               f"{denoising_end!r}; allowed: denoising_start < denoising_end")
    return denoising_end


def _cut(grid: torch.Tensor, denoising_start: Optional[float], denoising_end: Optional[float], num_timesteps: int,
         sampler: str = ""):
    """The part of the (strength's) ``grid`` a hand-over runs: from ``denoising_start``, then until ``denoising_end``
    (after strength / denoising_start, as the pipelines' step 9.1; :mod:`diffkit.handover`). ``denoising_end`` with a
    consistency sampler (``sampler``): one line (an edit's cut state with LCMScheduler / TCD is not compared with a
    pipeline; :func:`diffkit.sample` hands over LCM's in text to image)."""
    from .handover import grid_from, grid_until
    from .samplers.registry import CONSISTENCY_SAMPLERS
    if denoising_end is not None and sampler in CONSISTENCY_SAMPLERS:
        raise DiffkitError(f"denoising_end={denoising_end!r} is not offered in an edit with sampler {sampler!r} "
                           f"(its hand-over state is not compared with a pipeline); allowed: a deterministic sampler, "
                           f"or text to image")
    grid = grid if denoising_start is None else grid_from(grid, denoising_start, num_timesteps)
    return grid if denoising_end is None else grid_until(grid, denoising_end, num_timesteps)


# ---------------------------------------------------------------- SDEdit
def img2img(denoiser, images, strength: float = 0.8, sampler: str = "ddim", steps: int = 50, *,
            spacing: Optional[str] = None, final: Optional[str] = None, seed: Optional[int] = None,
            generator=None, cond: Optional[dict] = None, thresholding: Optional[str] = None,
            progress: bool = True, callback=None, value_range=DATA_RANGE, denoising_start: Optional[float] = None,
            **options) -> torch.Tensor:
    """SDEdit (Meng et al. 2022, Alg. 1): x_t0 ~ q(x_t0 | x_0) = N(alpha_t0 x_0, sigma_t0^2 I)
    (DDPM eq. 4), then the reverse process from t0 with any registered sampler.

    ``strength`` in (0, 1] as diffusers' ``StableDiffusionImg2ImgPipeline``: of the sampler's own
    grid for ``steps`` (``spacing`` / ``final``, or the ``NAME[@SPACING][:FINAL]`` spec), the last
    ``min(int(steps * strength), steps)`` intervals are run (:func:`strength_grid`) and t0 is
    their first time; strength 1 starts at the grid's first time. ``seed`` (per-sample
    generators ``seed + i``, drawing the forward noise and then the sampler's), ``generator``,
    ``cond``, ``thresholding``, ``progress``, ``callback`` and sampler ``options`` are those of
    :func:`diffkit.sample`. ``images``: see :func:`check_images`. Returns the edited batch. A ``grid``
    option (a full time grid, :func:`diffkit.sample`'s) replaces the sampler's own for ``steps``; strength
    cuts it the same way.

    ``denoising_start`` f in (0, 1): ``images`` are the state at the first grid time below diffusers'
    cut int(round(T - f T)) and are not noised; the grid runs on from there (``strength`` ignored), as
    ``StableDiffusionXLImg2ImgPipeline(denoising_start=f)`` (:func:`diffkit.handover.grid_from`): the second
    half of a hand-over. ``denoising_end`` (an option) cuts the grid after that (and after ``strength``), as
    the pipeline: :func:`diffkit.handover.grid_until`, the state returned; with both, start < end."""
    images = check_images(images, "images", value_range)
    check_fits(denoiser, images)
    denoising_end = _check_handover(denoising_start, options.pop("denoising_end", None))
    name, grid, denoiser = _planned(denoiser, sampler, steps, spacing, final, thresholding, options,
                                    strength if denoising_start is None else 1.0)
    generator = _generators(seed, generator, images.shape[0])
    if denoising_start is None:
        noise = randn(images.shape, generator, device=images.device, dtype=images.dtype)
        x = diffusion.q_sample(denoiser.schedule, images, grid[0], noise)
    else:  # the hand-over: the images are the state already (the pipeline's add_noise=False), no noise drawn
        x = images
    grid = _cut(grid, denoising_start, denoising_end, denoiser.schedule.num_timesteps, name)
    return sample(denoiser, x, name, grid=grid, generator=generator, cond=cond, progress=progress,
                  callback=callback, **options)


# ---------------------------------------------------------------- inpainting
class InpaintingDenoiser(Wrapper):
    """The replacement (imputation) method as a denoiser: in the kept region the predicted x_0 is
    the known image, x0 = m x0_hat + (1 - m) x_known (m = 1 repaint), and eps is recomputed from it,
    eps = (x_t - alpha_t x0) / sigma_t, so every sampler runs unchanged (Song et al. 2021, score
    SDE, App. I.2; RePaint, Lugmayr et al. 2022, eq. 8, without resampling). The repainted region
    is conditioned only through the network seeing the noised known pixels in x_t.

    The reverse variance is the posterior's, beta-tilde, in the kept region: x_0 is known there
    and beta-tilde is the reverse variance for a known x_0 (Ho et al. 2020, Sec. 3.2), so a DDPM step
    draws the kept region from q(x_s | x_t, x_known) and it stays a noised copy of the known pixels.
    As Improved DDPM's variance output v (eq. 15: Sigma = exp(f log beta + (1 - f) log beta-tilde),
    f = (v + 1)/2), v -> m v + (1 - m)(-1): a learned v is kept where repainted, and with
    ``fixed_large`` (Sigma = beta, v = 1) the wrapper gives v = 2m - 1 itself, to be sampled with
    ``variance_type="learned_range"`` (it then has ``learned_variance``).

    ``first_input``: what the network sees at its first evaluation instead of the state (then
    dropped): :func:`inpaint`'s ``start="noise"``, pure noise where the state's kept region is
    already q(x_T | x_known). ``blend``: a noise n; the kept region of every state is set to
    alpha_t x_known + sigma_t n before the call (:func:`inpaint`'s ``blend_noise``). ``replace=False`` (with
    ``blend``): x_0 is the network's everywhere, the kept region enters by the blend alone (diffusers' own
    inpainting loops: where a fractional mask value m blends, the replacement would weigh the step by m twice)."""

    def __init__(self, inner, known: torch.Tensor, mask: torch.Tensor, fixed_large: bool = False,
                 first_input: Optional[torch.Tensor] = None, blend: Optional[torch.Tensor] = None,
                 replace: bool = True):
        self.inner, self.known, self.mask, self.fixed_large = inner, known, mask, fixed_large
        self.first_input, self.blend, self.replace = first_input, blend, replace

    learned_variance = property(lambda self: self.fixed_large or getattr(self.inner, "learned_variance", False))

    def __call__(self, x: torch.Tensor, t, **cond) -> Prediction:
        mask, known = self.mask.to(x.dtype), self.known.to(x.dtype)
        if self.blend is not None:  # diffusers' blend: the kept region add_noise(x_known, n, t)
            x = mask * x + (1 - mask) * diffusion.q_sample(self.schedule, known, t, self.blend.to(x)).to(x.dtype)
        seen, self.first_input = (x if self.first_input is None else self.first_input.to(x)), None
        pred = self.inner(seen, t, **cond)
        out = with_x0(self.schedule, x, t, mask * pred.x0 + (1 - mask) * known if self.replace else pred.x0, pred)
        if self.fixed_large:
            out.var_values = torch.ones_like(x)
        if out.var_values is not None:
            out.var_values = mask * out.var_values - (1 - mask)
        return out


def kept_noise_options(name: str, options: dict, denoiser) -> tuple:
    """(sampler name, options, fixed_large) with which every step keeps the kept region of the
    state distributed as q(x_s | x_known) = N(alpha_s x_known, sigma_s^2 I) (docs/editing.md, "The
    kept region's noise"; ``benchmarks/inpainting_kept_variance.py``). A step does where it draws
    x_s from the posterior q(x_s | x_t, x_0 = x_known) or keeps x's noise: the ODE samplers, DDIM
    with a number eta, the ancestral samplers and churn with ``s_noise`` 1, SDE-DPM-Solver++ (2M, 3M), and
    DDPM through :class:`InpaintingDenoiser`'s variance: its ``variance_type`` (default the model's,
    :func:`~diffkit.denoiser.model_variance_type`) is passed as ``learned_range``, with
    ``fixed_large`` set for beta; ddim's ``eta="sigma_hat"`` (DDPM steps with beta) runs as that.
    The Euler-Maruyama and Langevin steps of ``pc`` and an ``s_noise`` other than 1 drift: one-line
    errors."""
    options = dict(options)
    if name == "ddim" and isinstance(options.get("eta"), str) and parse_eta(options["eta"]) == "sigma_hat":
        name, options = "ddpm", {"variance_type": "fixed_large"}
    fixed_large = False
    if name == "ddpm":
        variance = options.get("variance_type") or model_variance_type(denoiser)
        fixed_large = variance == "fixed_large"
        options["variance_type"] = "learned_range" if fixed_large else variance
    allowed = "ddpm, ddim, an ODE sampler, an ancestral one or sde-dpm-solver++-2m/-3m"
    if name == "pc":
        raise DiffkitError(f"sampler 'pc' (its predictor's and Langevin corrector's noise) does not keep the kept "
                           f"region distributed as q(x_t | x_known); inpainting takes {allowed}")
    adds_noise = (name.endswith("ancestral") and options.get("eta", 1.0) != 0) or options.get("s_churn", 0) > 0
    if adds_noise and options.get("s_noise", 1.0) != 1.0:
        raise DiffkitError(f"s_noise={options['s_noise']} scales the added noise away from what keeps the kept "
                           f"region distributed as q(x_t | x_known); inpainting takes s_noise=1")
    return name, options, fixed_large


def repaint_walk(steps: int, jump_length: int, jump_n_sample: int) -> list:
    """RePaint's walk over the time indices S-1 (noisiest) ... 0 of an S-step grid (Lugmayr et al.
    2022, Alg. 1 and App. B's jump schedule; diffusers' ``RePaintScheduler.set_timesteps`` before
    its scaling): an index below the previous one is a denoising step evaluated there, one above
    it a jump one step back up; every ``jump_length`` steps the walk goes ``jump_length`` steps
    back up, ``jump_n_sample - 1`` times."""
    check_range("jump_length", jump_length, 1, None, integer=True)
    check_range("jump_n_sample", jump_n_sample, 1, None, integer=True)
    jumps = {j: jump_n_sample - 1 for j in range(0, steps - jump_length, jump_length)}
    walk, t = [], steps
    while t >= 1:
        t -= 1
        walk.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                walk.append(t)
    return walk


def _resampled(denoiser, x, grid, walk, generator, cond, callback, progress, options):
    """Run ``walk`` (:func:`repaint_walk`) on ``grid``: runs of denoising steps are DDPM ancestral
    steps (:func:`diffkit.sample`, sampler ``ddpm``), runs of k steps back up one draw of the forward
    process q(x_t | x_s) = N(sqrt(abar_t/abar_s) x_s, (1 - abar_t/abar_s) I) (RePaint Alg. 1, line 10;
    diffusers' ``undo_step`` draws it beta by beta, from betas one step later than x's time)."""
    position, last, runs = 0, len(grid) - 1, []  # the state is at grid[position]
    for index in walk:
        kind = "down" if index < last else "up"
        if runs and runs[-1][0] == kind:
            runs[-1][1] += 1
        else:
            runs.append([kind, 1])
        last = index
    for kind, count in tqdm(runs, desc="repaint", disable=not progress, leave=False):
        if kind == "down":
            report = None if callback is None else (
                lambda d, offset=position: callback({**d, "step": d["step"] + offset}))
            x = sample(denoiser, x, "ddpm", grid=grid[position:position + count + 1], generator=generator,
                       cond=cond, progress=False, callback=report, **options)
            position += count
        else:
            abar = denoiser.schedule.alpha_bar(grid[[position - count, position]])
            ratio = float(abar[0] / abar[1])
            x = math.sqrt(ratio) * x + math.sqrt(1 - ratio) * randn(x.shape, generator, device=x.device,
                                                                     dtype=x.dtype)
            position -= count
    return x


STARTS = ("image", "noise")


def inpaint(denoiser, images, mask, sampler: str = "ddim", steps: int = 50, *, strength: float = 1.0,
            start: str = "image", jump_length: int = 10, jump_n_sample: int = 1, reconstruction_weight: float = 0.0,
            blend_noise: bool = False, replace: bool = True,
            spacing: Optional[str] = None, final: Optional[str] = None, seed: Optional[int] = None, generator=None,
            cond: Optional[dict] = None,
            thresholding: Optional[str] = None, progress: bool = True, callback=None, value_range=DATA_RANGE,
            denoising_start: Optional[float] = None, **options) -> torch.Tensor:
    """Repaint where ``mask`` is 1 (diffusers' convention: white = repaint, 0 = keep) with any
    sampler, through :class:`InpaintingDenoiser`; the known pixels are pasted into the output
    (m x + (1 - m) x_known, so kept pixels equal the image exactly).

    The start is x_t0 ~ q(x_t0 | x_start) at the first time of the strength's grid
    (:func:`strength_grid`, as :func:`img2img`): with ``strength`` 1 (default) x_start is the image
    with the repainted region zeroed (that region starts at sigma_T n, the noise alone); with
    ``strength`` < 1 x_start is the whole image (SDEdit inside the mask). ``start="noise"`` (strength
    1 only) starts as diffusers' ``StableDiffusionInpaintPipeline`` at strength 1
    (``is_strength_max``): the network's first input is the pure noise n everywhere, the state
    x_T = m n + (1 - m)(alpha_T x_known + sigma_T n), whose kept region is where diffusers blends it
    after the first step. ``jump_n_sample`` > 1 turns on RePaint's resampling (Lugmayr et al. 2022,
    Alg. 1, with ``jump_length``; :func:`repaint_walk`), for ``sampler="ddpm"`` only: every ``jump_length``
    steps the state is noised ``jump_length`` steps back up and denoised again,
    ``jump_n_sample - 1`` times, so the repainted region can come to agree with the kept one (the
    bias of plain replacement falls; docs/editing.md). The kept region of every state stays
    distributed as q(x_t | x_known) (:func:`kept_noise_options`: DDPM's reverse variance is the
    posterior's there; ``pc`` and ``s_noise`` != 1 are errors). ``reconstruction_weight`` w > 0
    adds reconstruction guidance (Ho et al. 2022, Sec. 3.1; :class:`~diffkit.guidance.ReconstructionGuidance`)
    to the repainted region's x_0, with any sampler and with RePaint: a gradient through the network
    each step (about 3x the work). Other arguments as :func:`img2img`; thresholding acts on the
    (guided) x_0 before the known pixels replace it: the guidance's gradient is taken through the
    network's own x_0, unclipped. ``blend_noise``: before every network call the kept region of the state is
    set to q_sample(x_known, t, n) with the first noise n, as diffusers' StableDiffusionInpaintPipeline blends
    ``add_noise(image_latents, noise, t)`` after each step (what replacing x_0 gives with DDIM at eta 0 anyway;
    with a stochastic step, e.g. LCM's or TCD's, the kept region then holds n, not that step's fresh draw), and
    each generator skips one draw of the image's shape after n (the pipeline's posterior sample of the masked
    image's latents, which a 4-channel UNet does not use), so that the steps' noise is the pipeline's.
    ``replace=False`` (needs ``blend_noise``): the kept region's x_0 is not replaced, the blend alone keeps it, as
    diffusers' loops blend ``(1 - m) scale_noise(z, next t, n) + m x`` after each step; the same where the mask is
    0 or 1, and that loop exactly where a resized mask holds values between (FLUX.2 Klein's bilinear one,
    :mod:`diffkit.interop.flux2_inpaint`).

    The hand-over to a refiner (diffusers' "inpainting with the refiner", :mod:`diffkit.handover`):
    ``denoising_end`` (an option) cuts the strength's grid at int(round(T - f T)) (:func:`~diffkit.handover
    .grid_until`) and returns m x + (1 - m) x_known at the cut, the known region clean, as
    ``StableDiffusionXLInpaintPipeline(denoising_end=f, output_type="latent")`` (its last step blends in
    the un-noised latents); ``denoising_start`` f: ``images`` are that state and x_known (the kept region
    clean), not noised: the network sees them as they are, and from the second call on the kept region is
    q_sample(x_known, t, n) with a fresh noise n, the pipeline's ``denoising_start=f`` with ``image=latents``
    (strength and ``start`` unused; no RePaint)."""
    images = check_images(images, "images", value_range)
    check_fits(denoiser, images)
    mask = check_mask(mask, images)
    denoising_end = _check_handover(denoising_start, options.pop("denoising_end", None))
    if jump_n_sample > 1 and (denoising_start is not None or denoising_end is not None):
        raise DiffkitError(f"jump_n_sample={jump_n_sample} (RePaint's resampling) does not go with denoising_start / "
                           f"denoising_end (a hand-over runs its part of the grid once); allowed: jump_n_sample=1")
    if start == "noise" and denoising_start is not None:
        raise DiffkitError(f"start='noise' does not go with denoising_start={denoising_start!r} (the images are the "
                           f"state at the cut); allowed: start='image'")
    repaint_walk(1, jump_length, jump_n_sample)  # checks the two before any work
    check_range("reconstruction_weight", reconstruction_weight, 0.0, None)
    guided = None
    if reconstruction_weight > 0:  # inside the thresholding: a clipped x_0 would pass no gradient
        from .guidance import ReconstructionGuidance
        guided = lambda inner: ReconstructionGuidance(inner, images, mask, reconstruction_weight)  # noqa: E731
    name, grid, denoiser = _planned(denoiser, sampler, steps, spacing, final, thresholding, options,
                                    strength if denoising_start is None else 1.0, guided)
    check_choice("start", start, STARTS)
    if start == "noise" and strength != 1:
        raise DiffkitError(f"start='noise' (pure noise, diffusers' inpainting at strength 1) needs strength 1; got "
                           f"strength={strength}")
    if not replace and not blend_noise:
        raise DiffkitError("replace=False (the kept region kept by the blend alone) needs blend_noise=True")
    if jump_n_sample > 1 and blend_noise:
        raise DiffkitError(f"jump_n_sample={jump_n_sample} (RePaint's resampling) does not go with blend_noise=True "
                           f"(the kept region fixed to the first noise); allowed: jump_n_sample=1")
    if jump_n_sample > 1 and name != "ddpm":
        raise DiffkitError(f"jump_n_sample={jump_n_sample} (RePaint's resampling) needs sampler='ddpm'; got "
                           f"{sampler!r}")
    name, options, fixed_large = kept_noise_options(name, options, denoiser)
    generator = _generators(seed, generator, images.shape[0])
    grid = _cut(grid, denoising_start, denoising_end, denoiser.schedule.num_timesteps, name)
    x_start = (1 - mask) * images if strength == 1 else images
    noise = randn(images.shape, generator, device=images.device, dtype=images.dtype)
    if denoising_start is not None:  # the refiner's half: the state given, seen as is first, n for the kept region
        x, wrapped = images, InpaintingDenoiser(denoiser, images, mask, fixed_large, images, noise)
    else:
        if blend_noise:  # the pipeline's next draw: the masked image's posterior sample, unused by a 4-channel UNet
            randn(images.shape, generator, device=images.device, dtype=images.dtype)
        x = diffusion.q_sample(denoiser.schedule, x_start, grid[0], noise)
        if start == "noise":  # the repainted region n itself, the kept one q(x_T | x_known) as before
            x = mask * noise + (1 - mask) * x
        wrapped = InpaintingDenoiser(denoiser, images, mask, fixed_large, noise if start == "noise" else None,
                                     noise if blend_noise else None, replace)
    if jump_n_sample > 1:
        walk = repaint_walk(len(grid) - 1, jump_length, jump_n_sample)
        out = _resampled(wrapped, x, grid, walk, generator, cond, callback, progress, options)
    else:
        out = sample(wrapped, x, name, grid=grid, generator=generator, cond=cond, progress=progress,
                     callback=callback, **options)
    return mask * out + (1 - mask) * images


# ---------------------------------------------------------------- interpolation
def slerp(a: torch.Tensor, b: torch.Tensor, weight: float) -> torch.Tensor:
    """Spherical linear interpolation per sample (Shoemake 1985; DDIM Sec. 5.3):
    sin((1 - w) theta)/sin(theta) a + sin(w theta)/sin(theta) b, theta the angle between a and b;
    linear where the two are (anti)parallel within float round-off."""
    fa, fb = a.flatten(1).double(), b.flatten(1).double()
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1)).clamp(min=1e-300)
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    sin = torch.sin(theta)
    ok = sin > 1e-6
    safe = torch.where(ok, sin, torch.ones_like(sin))
    ca = torch.where(ok, torch.sin((1 - weight) * theta) / safe, torch.full_like(sin, 1 - weight))
    cb = torch.where(ok, torch.sin(weight * theta) / safe, torch.full_like(sin, weight))
    return (ca[:, None] * fa + cb[:, None] * fb).reshape(a.shape).to(a.dtype)


def _check_weights(weights) -> list:
    if isinstance(weights, torch.Tensor):
        weights = weights.flatten().tolist()
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence) or len(weights) == 0:
        raise DiffkitError(f"weights={weights!r} is not allowed; give a non-empty list of numbers in [0, 1]")
    return [float(check_range("weight", w, 0.0, 1.0)) for w in weights]


def _pair_generators(seed: Optional[int], generator, pairs: int) -> list:
    """One generator per pair: ``seed + p``, the caller's list, or pair seeds drawn from one
    generator (or from torch's global generator when neither is given)."""
    if seed is None and (generator is None or isinstance(generator, torch.Generator)):
        device = None if generator is None else generator.device
        draw = torch.randint(0, 2**62, (pairs,), generator=generator, device=device)
        return [torch.Generator().manual_seed(int(s)) for s in draw]
    return list(_generators(seed, generator, pairs))


def _clone(generator: torch.Generator) -> torch.Generator:
    copy = torch.Generator(device=generator.device)
    copy.set_state(generator.get_state())
    return copy


def interpolate(denoiser, a, b, weights, method: str = "ddpm", *, t: Optional[int] = None,
                steps: Optional[int] = None, seed: Optional[int] = None, generator=None,
                cond: Optional[dict] = None, fixed_point_iters: int = 1, progress: bool = True,
                value_range=DATA_RANGE, **options) -> torch.Tensor:
    """Interpolate between image pairs (a_p, b_p) in latent space; returns the batch of
    ``len(a) * len(weights)`` images, pair-major (image p * W + k is pair p at ``weights[k]``),
    so an image grid with ``len(weights)`` columns shows one pair per row.

    ``ddpm`` (Ho et al. 2020, Sec. 4.4, Fig. 8): x_t, x'_t ~ q(x_t | x_0) at time ``t`` (default
    T // 2 - 1: the paper's t = 500 of T = 1000 in DDPM's 1-based time, 499 in diffkit's),
    x-bar_t = (1 - w) x_t + w x'_t, decoded by DDPM ancestral sampling over
    every timestep t, t-1, ..., 0; the noise is fixed across weights (each pair draws its forward
    and reverse noise from one generator, replayed for every weight). ``options``: those of the
    ddpm sampler (``variance_type``).
    ``ddim`` (Song et al. 2021, Sec. 5.3, which slerps sampled x_T; real images first get theirs
    by DDIM's deterministic encoding, Sec. 5.4): both images inverted
    (:func:`~diffkit.samplers.ddim.ddim_invert` on DDIM's grid of ``steps``, default 50, with
    ``fixed_point_iters``), slerped (:func:`slerp`), decoded by DDIM with eta = 0 on the same grid.
    ``cond``: network keyword arguments per pair (repeated for every weight)."""
    check_choice("method", method, INTERPOLATIONS)
    check_denoiser(denoiser)
    a, b = check_images(a, "a", value_range), check_images(b, "b", value_range)
    if a.shape != b.shape:
        raise DiffkitError(f"a of shape {tuple(a.shape)} and b of shape {tuple(b.shape)} differ; give pairs of "
                           f"images of one shape")
    b = b.to(device=a.device, dtype=a.dtype)
    check_fits(denoiser, a, "a and b")
    weights = _check_weights(weights)
    pairs, count, schedule = a.shape[0], len(weights), denoiser.schedule
    cond_pairs = None if cond is None else {
        k: v.to(a.device) if isinstance(v, torch.Tensor) else v for k, v in cond.items()}
    cond_all = None if cond is None else {
        k: v.repeat_interleave(count, 0) if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == pairs
        else v for k, v in cond_pairs.items()}
    if method == "ddpm":
        if steps is not None:
            raise DiffkitError(f"steps={steps} applies to method='ddim'; method='ddpm' decodes over every "
                               f"timestep from t")
        t = max(schedule.num_timesteps // 2 - 1, 0) if t is None else t
        check_range("t", t, 0, schedule.num_timesteps - 1, integer=True)
        gens = _pair_generators(seed, generator, pairs)
        xa = diffusion.q_sample(schedule, a, t, randn(a.shape, gens, device=a.device, dtype=a.dtype))
        xb = diffusion.q_sample(schedule, b, t, randn(b.shape, gens, device=a.device, dtype=a.dtype))
        latents = torch.stack([(1 - w) * xa + w * xb for w in weights], dim=1).flatten(0, 1)
        decoding = [_clone(g) for g in gens for _ in weights]
        grid = torch.arange(t, -2, -1, dtype=torch.float64)
        return sample(denoiser, latents, "ddpm", grid=grid, generator=decoding, cond=cond_all,
                      progress=progress, **options)
    if t is not None:
        raise DiffkitError(f"t={t} applies to method='ddpm'; method='ddim' inverts to the grid's first time")
    if seed is not None or generator is not None:
        raise DiffkitError("method='ddim' is deterministic; drop seed / generator")
    if options:
        raise DiffkitError(f"option {next(iter(options))!r} is not one method='ddim' takes; it takes steps, "
                           f"fixed_point_iters")
    grid = sampler_grid(denoiser, get_sampler("ddim"), 50 if steps is None else steps)
    with torch.no_grad():
        za = ddim_invert(denoiser, a, grid, fixed_point_iters=fixed_point_iters, cond=cond_pairs,
                         progress=progress)
        zb = ddim_invert(denoiser, b, grid, fixed_point_iters=fixed_point_iters, cond=cond_pairs,
                         progress=progress)
    latents = torch.stack([slerp(za, zb, w) for w in weights], dim=1).flatten(0, 1)
    return sample(denoiser, latents, "ddim", grid=grid, eta=0.0, cond=cond_all, progress=progress)


__all__ = ["InpaintingDenoiser", "check_fits", "check_images", "check_mask", "img2img", "inpaint", "interpolate",
           "kept_noise_options", "repaint_walk", "STARTS",
           "slerp", "strength_grid"]
