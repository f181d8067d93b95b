"""``diffkit edit`` on latent / trajectory consistency folders: an LCMScheduler or TCDScheduler folder, or a
Stable Diffusion / SD-XL folder with ``--scheduler lcm|tcd`` (:mod:`.lcm`, :mod:`.sd_scheduler`; the LCM-LoRA
and TCD-LoRA img2img recipes of Luo et al. 2023b and Zheng et al. 2024).

img2img is SDEdit (Meng et al. 2022, Alg. 1) with the ``consistency`` / ``tcd`` sampler on the folder's grid; only
where the strength cuts that grid differs between diffusers' pipelines:

* ``StableDiffusionImg2ImgPipeline`` / ``StableDiffusionXLImg2ImgPipeline`` with an LCMScheduler or TCDScheduler
  (``get_timesteps``): the last ``int(S * strength)`` of the S steps, as for any scheduler
  (:func:`diffkit.editing.strength_grid`); the scheduler's step index starts there, so the last step is the
  full grid's (LCM: its x0, TCD: x at t = 0).
* ``LatentConsistencyModelImg2ImgPipeline`` (an SD 1.x/2.x LCMScheduler folder whose UNet takes the guidance
  weight w, ``time_cond_proj_dim``: diffusers' image-to-image pipeline for LatentConsistencyModelPipeline)
  passes the strength to ``LCMScheduler.set_timesteps``: the S steps are all run, picked by the ``lcm``
  spacing from the first ``int(N * strength)`` of the N source times t_n = n k - 1 (LCM Sec. 4.3), so the
  image is noised to t = int(N s) k - 1 (:func:`source_times_strength`). On another spacing (diffusers' custom
  ``timesteps``) set_timesteps cuts the grid as get_timesteps does.

Inpainting with a plain 4-channel UNet is ``StableDiffusion(XL)InpaintPipeline`` with the scheduler swapped in (all
three folder kinds: that pipeline has no LCM variant, so its strength is get_timesteps'): replacement, as
:func:`diffkit.inpaint`, with diffusers' blend (``blend_noise``): before every network call the kept region is
``add_noise(z, n, t)``, the first noise n at the call's time, where the consistency and tcd steps would leave a
fresh draw (the same distribution, other numbers).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from ..denoiser import Wrapper
from ..errors import DiffkitError


def consistency_scheduler(checkpoint: Union[str, Path], scheduler: Optional[str]) -> Optional[str]:
    """``"lcm"`` / ``"tcd"`` when ``diffkit edit`` runs a consistency sampler on a Stable Diffusion folder: an
    LCMScheduler folder (``lcm``), a TCDScheduler one (``tcd``) or ``--scheduler NAME``; None otherwise
    (the command's own defaults). Reads JSON only."""
    if scheduler is not None:
        return scheduler
    from .lcm import is_lcm_folder
    from .sd_scheduler import own_override
    return "lcm" if is_lcm_folder(checkpoint) else own_override(checkpoint)


def edit_sampling(checkpoint, sampler: Optional[str], steps: Optional[int], spacing: Optional[str],
                  scheduler: Optional[str], controlled: bool = False) -> tuple:
    """(sampler, steps) of ``diffkit edit`` (``scheduler``: its ``--scheduler``, checked): for a Stable Diffusion
    folder that :func:`consistency_scheduler` names the defaults of ``diffkit sample`` (``consistency`` / ``tcd`` in
    4 steps), else ``sampler`` or ``ddim`` and ``steps`` as given. Reads JSON only. ``controlled`` (``--controlnet``)
    with an LCM UNet that takes w is a one-line error: diffusers' ControlNet img2img and inpaint pipelines give the
    UNet no w (no ``timestep_cond``), and LatentConsistencyModelImg2ImgPipeline takes no ControlNet."""
    from .stable_diffusion import is_stable_diffusion_folder
    if is_stable_diffusion_folder(checkpoint) and consistency_scheduler(checkpoint, scheduler):
        from .lcm import folder_guidance_input
        if controlled and folder_guidance_input(checkpoint):
            raise DiffkitError(f"--controlnet: {checkpoint}'s UNet takes the guidance weight w (time_cond_proj_dim="
                               f"{folder_guidance_input(checkpoint)}), which diffusers' ControlNet img2img / inpaint "
                               f"pipelines do not give it; allowed: --controlnet with an LCM-LoRA (plain UNet) folder "
                               f"or --scheduler, or this folder without --controlnet")
        from ..commands._common import default_sampling
        return default_sampling(checkpoint, sampler, steps, None, spacing, scheduler)
    return sampler or "ddim", steps


def edit_hooks(sd, spacing: str) -> tuple:
    """(``cut(denoiser, strength, steps) -> (denoiser, strength)`` for img2img, inpainting options) of ``diffkit
    edit`` on ``sd`` (a Stable Diffusion folder's, or None): for a consistency folder (LCM, TCD, an override)
    :func:`source_times_strength` on ``spacing`` where :func:`truncates_source_times`, and ``blend_noise`` with a
    4-channel UNet; else neither."""
    cut = lambda denoiser, strength, steps: (denoiser, strength)  # noqa: E731
    if sd is None or (sd.consistency is None and not sd.scheduler_override):
        return cut, {}
    if truncates_source_times(sd):
        cut = lambda denoiser, strength, steps: source_times_strength(denoiser, strength, steps, spacing)  # noqa: E731
    return cut, ({} if sd.inpainting_unet else {"blend_noise": True})


def truncates_source_times(sd) -> bool:
    """True where diffusers edits the folder with ``LatentConsistencyModelImg2ImgPipeline`` (strength as
    ``LCMScheduler.set_timesteps(strength=)``): an SD 1.x/2.x LCMScheduler folder (not an override) whose UNet
    takes w (``time_cond_proj_dim``)."""
    return (sd.consistency is not None and not sd.scheduler_override and bool(sd.guidance_embedding_dim)
            and not hasattr(sd, "encode_prompts_xl"))


class SourceTimes(Wrapper):
    """``inner`` whose ``lcm`` spacing picks from ``times`` (its ``consistency_times``), every call forwarded."""

    def __init__(self, inner, times):
        self.inner, self._times = inner, times

    consistency_times = property(lambda self: self._times)

    def __call__(self, x, t, **cond):
        return self.inner(x, t, **cond)


def source_times_strength(denoiser, strength: float, steps: int, spacing: str):
    """(denoiser, strength) for :func:`diffkit.img2img` as ``LCMScheduler.set_timesteps(steps, strength=s)``:
    on the ``lcm`` spacing the denoiser's N source times cut to their first ``int(N * s)`` and strength 1 (all
    ``steps`` run, from the largest time left); another spacing: unchanged (get_timesteps' cut). Fewer source
    times than steps is a one-line error (diffusers' ValueError)."""
    times = denoiser.consistency_times
    if spacing != "lcm" or times is None:
        return denoiser, strength
    count = int(len(times) * strength)
    if count < steps:
        raise DiffkitError(f"strength={strength} keeps int({len(times)} * {strength}) = {count} of the LCMScheduler's "
                           f"{len(times)} source times, fewer than steps={steps} (LatentConsistencyModel"
                           f"Img2ImgPipeline runs every step); allowed: strength >= {steps}/{len(times)} or fewer "
                           f"steps")
    return SourceTimes(denoiser, times[:count]), 1.0


__all__ = ["consistency_scheduler", "edit_sampling", "edit_hooks", "truncates_source_times", "SourceTimes",
           "source_times_strength"]
