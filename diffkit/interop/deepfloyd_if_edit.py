"""DeepFloyd IF's editing pipelines (diffusers 0.42.1): ``IFImg2ImgPipeline`` and ``IFInpaintingPipeline`` on a stage-I
(``IFPipeline``) folder, ``IFImg2ImgSuperResolutionPipeline`` and ``IFInpaintingSuperResolutionPipeline`` on a
stage-II (``IFSuperResolutionPipeline``) one: the same components, loaded by :func:`.deepfloyd_if.load_deepfloyd_if`
and driven by its denoiser, prompt guidance and scheduler step (dynamic thresholding, learned-range variance).

As the pipelines compute it (:func:`edit_images`):

* SDEdit (Meng et al. 2022): the scheduler's ``set_timesteps(steps)`` timesteps cut by ``get_timesteps`` to the last
  int(steps x strength) (:func:`diffkit.editing.strength_grid`); the images x (B, 3, H, W) in [-1, 1] noised to
  the first kept timestep t_0 with the scheduler's ``add_noise`` (x_t0 = sqrt(abar) x + sqrt(1 - abar) eps, eps from
  image i's generator), then the pipeline's loop on the rest (the folder's ``ddpm`` step).
* inpainting, ``mask`` (1 or B, 1, H, W) binarised at 0.5, 1 ("white") = repaint: the kept region of the state is
  the *clean* image at every step, not a noised copy of it (``prepare_intermediate_images`` blends
  (1 - m) x + m x_t0, and each step ``(1 - m) x_prev + m x_next``, which keeps x there): the UNet sees the clean
  kept pixels beside the noisy repainted ones, and the dynamic threshold's quantile is taken over its x_0 of the
  whole image (:class:`KeptImageDenoiser`); the output is (1 - m) x + m x_0.
* stage II: ``low_res`` (the stage-I output) is the UNet's condition as in ``IFSuperResolutionPipeline``
  (:func:`.deepfloyd_if.low_res_condition`: resized bilinearly to the original's size, noised to ``noise_level``
  with noise drawn after x_t0's); the original images are what is noised and denoised.
* defaults (``__call__``'s): :data:`EDIT_DEFAULTS`. The pipelines' PIL inputs are first resized to the UNet's
  ``sample_size`` (diffusers' ``pipeline_if_img2img.resize``: the short side to it, the long side to a multiple of
  8, bicubic; the mask in grey, then binarised): ``diffkit edit`` does that (:mod:`diffkit.commands._deepfloyd_if`);
  tensors, as here, are taken at their size.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from ..denoiser import Wrapper
from ..errors import DiffkitError
from .deepfloyd_if import IF_PIPELINE, IF_SR_PIPELINE, DeepFloydIF

IF_IMG2IMG, IF_INPAINT = "IFImg2ImgPipeline", "IFInpaintingPipeline"
IF_SR_IMG2IMG, IF_SR_INPAINT = "IFImg2ImgSuperResolutionPipeline", "IFInpaintingSuperResolutionPipeline"
EDIT_PIPELINES = {(IF_PIPELINE, False): IF_IMG2IMG, (IF_PIPELINE, True): IF_INPAINT,
                  (IF_SR_PIPELINE, False): IF_SR_IMG2IMG, (IF_SR_PIPELINE, True): IF_SR_INPAINT}
# __call__'s (guidance_scale, num_inference_steps, strength, noise_level)
EDIT_DEFAULTS = {IF_IMG2IMG: (10.0, 80, 0.7, None), IF_INPAINT: (7.0, 50, 1.0, None),
                 IF_SR_IMG2IMG: (4.0, 50, 0.8, 250), IF_SR_INPAINT: (4.0, 100, 0.8, 0)}


def edit_pipeline(model_or_kind, mask: bool) -> str:
    """The editing pipeline class of a stage-I / stage-II folder (its :class:`DeepFloydIF` or pipeline class name),
    with or without a mask."""
    kind = getattr(model_or_kind, "pipeline", model_or_kind)
    return EDIT_PIPELINES[(kind, bool(mask))]


class KeptImageDenoiser(Wrapper):
    """The IF inpainting pipelines' kept region: every call sees the state with the clean image ``known`` where
    ``mask`` is 0 (m x_t + (1 - m) x), as their loop's state holds it (module docstring). The prediction is the
    inner denoiser's at that input, over the whole image (the dynamic threshold's quantile with it); the state's kept
    region itself is never read back (the next call and the output take ``known`` there)."""

    def __init__(self, inner, known: torch.Tensor, mask: torch.Tensor):
        self.inner, self.known, self.mask = inner, known, mask

    def __call__(self, x: torch.Tensor, t, **cond):
        mask = self.mask.to(x)
        return self.inner(mask * x + (1 - mask) * self.known.to(x), t, **cond)


def edit_images(model: DeepFloydIF, images: torch.Tensor, prompts: Union[str, Sequence[str]], *,
                mask: Optional[torch.Tensor] = None, low_res: Optional[torch.Tensor] = None,
                strength: Optional[float] = None, negative_prompt: Union[None, str, Sequence[str]] = None,
                guidance_scale: Optional[float] = None, noise_level: Optional[int] = None,
                steps: Optional[int] = None, seed: Optional[int] = 0, generator=None, output_range: str = "0,1",
                return_latents: bool = False, progress: bool = False) -> torch.Tensor:
    """``images`` (B, 3, H, W) in [-1, 1] edited as :func:`edit_pipeline` of ``model`` (module docstring):
    ``prompts`` one for every image or one each, ``negative_prompt`` the null half's (default ""), ``guidance_scale``
    diffusers' s, ``strength`` in (0, 1], ``steps`` the scheduler's (defaults :data:`EDIT_DEFAULTS`); ``mask``
    (1 or B, 1, H, W), >= 0.5 = repaint: the inpainting pipeline. A stage-II folder takes ``low_res`` (B, 3, h, w)
    in [-1, 1] (the stage-I images) and ``noise_level`` k. Image i draws from ``generator[i]`` (default
    ``torch.Generator().manual_seed(seed + i)``): the forward noise, (stage II) the low-resolution image's, then the
    steps'. ``return_latents`` / ``output_range="-1,1"``: the final state unclamped (``output_type="pt"``) /
    clamped to [-1, 1]; else (x / 2 + 0.5) clamped to [0, 1]."""
    from ..diffusion import q_sample
    from ..editing import strength_grid
    from ..errors import check_choice
    from ..noise import randn
    from ..sampling import sample
    from .deepfloyd_if import check_low_res, low_res_condition
    from .sd_upscale import check_guidance, per_image
    from .stable_diffusion import OUTPUT_RANGES, prompt_list
    check_choice("output_range", output_range, OUTPUT_RANGES)
    pipeline = edit_pipeline(model, mask is not None)
    scale, default_steps, default_strength, default_level = EDIT_DEFAULTS[pipeline]
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise DiffkitError(f"images of shape {tuple(images.shape)} are not allowed; give (B, 3, H, W) floats in "
                           f"[-1, 1]")
    batch = images.shape[0]
    shape = model.latent_shape(batch, images.shape[2], images.shape[3])  # the UNet's multiple
    stage_two = model.pipeline == IF_SR_PIPELINE
    if stage_two != (low_res is not None):
        raise DiffkitError(f"low_res goes with a stage-II folder ({IF_SR_PIPELINE}: the stage-I images); this is "
                           f"an {model.pipeline} one" if low_res is not None else
                           f"an {IF_SR_PIPELINE} folder edits with low_res (the stage-I images, (B, 3, h, w))")
    if not stage_two and noise_level is not None:
        raise DiffkitError(f"noise_level goes with a stage-II folder ({IF_SR_PIPELINE})")
    level = check_low_res(model, low_res, default_level if noise_level is None else noise_level) if stage_two \
        else None
    if stage_two and low_res.shape[0] != batch:
        raise DiffkitError(f"{low_res.shape[0]} low_res images for {batch} images; give one per image")
    if mask is not None:
        if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] not in (1, batch) \
                or mask.shape[2:] != images.shape[2:]:
            raise DiffkitError(f"mask of shape {tuple(mask.shape)} is not allowed; give (1 or {batch}, 1, "
                               f"{images.shape[2]}, {images.shape[3]})")
        mask = (mask.to(model.device, torch.float32) >= 0.5).float()  # preprocess_mask_image's binarisation
    scale = float(guidance_scale if guidance_scale is not None else scale)
    if stage_two:
        check_guidance(scale, negative_prompt)
    prompts, generator = per_image(prompt_list(prompts), batch, generator, seed)
    grid = strength_grid(model.scheduler_grid(default_steps if steps is None else steps),
                         default_strength if strength is None else strength)
    sampler, options = model.folder_sampler()
    denoiser, cond = model.prompt_guidance(prompts, negative_prompt, scale)
    x = images.to(model.device, torch.float32)
    t0 = torch.full((batch,), float(grid[0]), dtype=torch.float64)
    x_t = q_sample(model.schedule, x, t0, randn(shape, generator, device=model.device, dtype=torch.float32))
    if stage_two:  # then the low-resolution image's noise
        cond = {**cond, **low_res_condition(model, low_res, shape[2:], level, generator)}
    if mask is not None:
        denoiser = KeptImageDenoiser(denoiser, x, mask)
    out = sample(denoiser, x_t, sampler, None, grid=grid, generator=generator, progress=progress, cond=cond,
                 **options)
    if mask is not None:
        out = (1 - mask) * x + mask * out
    if return_latents:
        return out
    return (out / 2 + 0.5).clamp(0, 1) if output_range == "0,1" else out.clamp(-1, 1)


__all__ = ["edit_images", "edit_pipeline", "KeptImageDenoiser", "EDIT_DEFAULTS", "EDIT_PIPELINES", "IF_IMG2IMG",
           "IF_INPAINT", "IF_SR_IMG2IMG", "IF_SR_INPAINT"]
