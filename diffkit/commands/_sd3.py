"""``diffkit sample --checkpoint SD3_FOLDER --prompt TEXT``: a Stable Diffusion 3 diffusers folder
(:mod:`diffkit.interop.sd3`) sampled with a diffkit sampler, dispatched from
:func:`diffkit.commands.sample.sample_to_files`."""
from __future__ import annotations

from typing import Optional

from ..errors import DiffkitError


def pipeline_loop(sampler: str, spacing, final, nfe) -> bool:
    """True where ``--sampler ddim`` is given (or defaulted) without a grid (``--spacing``, ``@SPACING``,
    ``--final``, ``--nfe``): the folder's own FlowMatchEulerDiscreteScheduler sigmas, the pipeline's loop."""
    return sampler == "ddim" and spacing is None and final is None and nfe is None


def sample_sd3(directory, *, sampler="ddim", steps=None, nfe=None, num=None, nrow=None, out=None, individual=None,
               seed=0, device="cpu", batch_size="auto", spacing=None, final=None, scale=1, progress=True,
               guidance=None, refused: Optional[dict] = None, height=None, width=None, **options):
    """Sample an SD3 folder to a grid (and single PNGs): rows as :func:`~.sample.condition_rows`, sample i from
    ``seed + i`` (z at s = 1), classifier-free guidance against ``--negative-prompt`` (default "") with the
    pipeline's s = 7.0 by default (``--guidance-scale``), 28 steps. ``ddim`` without a grid option
    (:func:`pipeline_loop`) steps on the scheduler's own sigmas, which is StableDiffusion3Pipeline's
    FlowMatchEuler loop; any other sampler (or ddim with ``--spacing``) on its diffkit grid of the flow schedule.
    ``refused``: {flag: value} of ``diffkit sample`` flags an SD3 folder does not take (a one-line error for
    any given). ``height`` / ``width``: the images' size (default the folder's), the pipeline's."""
    from ..interop.sd3 import SD3_PIPELINE_STEPS, load_sd3, text_to_image
    from .sample import GuidanceRequest, condition_rows, draw_prompted_grid

    guidance = guidance or GuidanceRequest()
    if options.get("refiner") is not None:
        raise DiffkitError(f"--refiner applies to SD-XL folders; {directory} is an SD3 folder")
    options.pop("refiner", None)
    flags = dict(refused or {})
    flags.update({"--class": guidance.classes, "--classifier": guidance.classifier,
                  "--guidance-rescale": guidance.rescale or None, "--guidance-interval": guidance.interval,
                  "--clip-guidance": guidance.clip_prompt, "--pag-scale": guidance.pag_scale,
                  "--apg-eta": guidance.apg_eta, "--apg-norm-threshold": guidance.apg_norm_threshold,
                  "--apg-momentum": guidance.apg_momentum, "--clip-skip": guidance.clip_skip,
                  "--prompt-2": guidance.prompts_2, "--negative-prompt-2": guidance.negative_prompt_2,
                  "--thresholding": options.get("thresholding")})
    given = [flag for flag, value in flags.items() if value is not None and value is not False]
    if given:
        raise DiffkitError(f"{given[0]} does not apply to an SD3 folder ({directory}); it takes --prompt, "
                           f"--negative-prompt, --guidance-scale, --steps / --nfe, --sampler and its grid options")
    if not guidance.prompts:
        raise DiffkitError(f"{directory} is an SD3 folder: give --prompt TEXT (repeat for one row per prompt)")
    sd3 = load_sd3(directory, device, progress=progress)
    prompts = list(guidance.prompts)
    index, num, nrow = condition_rows(len(prompts), num, nrow or 8, "prompts of --prompt")
    per_sample = [prompts[i] for i in index.tolist()]
    scale_w, convention = (sd3.default_guidance_scale, "diffusers") if guidance.guidance_scale is None else \
        (guidance.guidance_scale, guidance.convention)
    own = pipeline_loop(sampler, spacing, final, nfe)
    steps = SD3_PIPELINE_STEPS if steps is None and nfe is None else steps

    def prompted(_, noise, sampler, steps, *, cond, spacing=None, final=None, nfe=None, **how):
        grid = {"grid": "scheduler"} if own and pipeline_loop(sampler, spacing, final, nfe) else \
            {"spacing": spacing, "final": final, "nfe": nfe}
        return text_to_image(sd3, cond["prompts"], sampler=sampler, steps=steps, guidance_scale=scale_w,
                             convention=convention, negative_prompt=guidance.negative_prompt, seed=None,
                             latents=noise, return_latents=True, **grid, **how)

    images, out = draw_prompted_grid(
        sd3.denoiser, num, sd3.latent_shape(1, height, width)[1:], prompted,
        lambda start, n: {"prompts": per_sample[start:start + n]},
        sd3.decode, out, individual, nrow, scale, seed=seed, sampler=sampler, steps=steps, nfe=nfe, spacing=spacing,
        final=final, batch_size=batch_size, device=device, dtype=sd3.dtype, progress=progress, **options)
    grid = "the scheduler's sigmas" if own else "its diffkit grid"
    print(f"wrote {out} ({num} samples, {sampler} on {grid}, SD3 folder {directory}, prompts {prompts})")
    return images
