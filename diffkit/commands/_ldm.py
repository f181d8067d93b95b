"""The latent-diffusion folders of Rombach et al. 2022 (:mod:`diffkit.interop.ldm`) on the command line:
``diffkit sample --checkpoint LDM_FOLDER [--prompt TEXT]`` (``LDMTextToImagePipeline``, ``LDMPipeline``;
dispatched from :func:`.sample.sample_to_files`) and ``diffkit upscale --checkpoint LDM_SR_FOLDER --images LOW_RES``
(``LDMSuperResolutionPipeline``; dispatched from :func:`.upscale.run`). Without a grid option (``--spacing``,
``@SPACING``, ``--final``, ``--nfe``) every sampler runs on the folder's scheduler's timesteps, and the default
sampler (the one computing its scheduler's step) is the pipeline's loop; sample i starts from ``--seed`` + i."""
from __future__ import annotations

from typing import Optional

from ..errors import DiffkitError

TEXT_TAKES = ("--prompt, --guidance-scale (--guidance-convention; diffusers' s, default 1: unguided), --height / "
              "--width, --steps / --nfe, --eta, --sampler and its grid options")
UNCOND_TAKES = "--num, --nrow, --steps / --nfe, --eta, --sampler and its grid options"
UPSCALE_TAKES = "--images, --sampler and its flags (--steps default 100, --eta), --seed, --batch-size, --nrow, --device"


def sample_ldm(directory, *, sampler=None, steps=None, nfe=None, num=None, nrow=None, out=None, individual=None,
               seed=0, device="cpu", batch_size="auto", spacing=None, final=None, scale=1, progress=True,
               guidance=None, refused: Optional[dict] = None, height=None, width=None, **options):
    """Sample an ``LDMTextToImagePipeline`` folder (rows of ``--prompt`` as :func:`~.sample.condition_rows`, diffusers'
    s default 1) or an ``LDMPipeline`` folder (unconditional) to a grid (and single PNGs); ``refused``: {flag: value}
    of ``diffkit sample`` flags such folders do not take (one line for the first given, before any weight is read).
    An ``LDMSuperResolutionPipeline`` folder: one line (``diffkit upscale``)."""
    from ..interop.ldm import LDM_SUPER_RES, LDM_TEXT2IM, check_ldm_folder, load_ldm, text_to_image, unconditional
    from ._pixart import checked_request, given_flags, uses_own_grid
    from ..sampling import resolve_sampler
    from .sample import GuidanceRequest, condition_rows, draw_prompted_grid
    kind, _ = check_ldm_folder(directory)
    if kind == LDM_SUPER_RES:
        raise DiffkitError(f"{directory} is an {LDM_SUPER_RES} folder, which diffkit sample does not take; upscale "
                           f"with diffkit upscale --checkpoint {directory} --images PNG|DIR")
    request = guidance or GuidanceRequest()
    more = {**(refused or {}), "--negative-prompt": request.negative_prompt,
            "--max-sequence-length": request.max_sequence_length}
    text = kind == LDM_TEXT2IM
    if text:
        guidance = checked_request(directory, f"latent-diffusion ({kind})", TEXT_TAKES, guidance, options, more)
    else:
        given = given_flags(request, options, {**more, "--prompt": request.prompts,
                                               "--guidance-scale": request.guidance_scale})
        if given:
            raise DiffkitError(f"{given[0]} does not apply to an unconditional latent-diffusion folder ({directory}, "
                               f"{kind}); it takes {UNCOND_TAKES}")
    model = load_ldm(directory, device, progress=progress, pipeline=kind)
    adaptive = resolve_sampler(sampler, spacing, final)[0].adaptive  # ode / dpm-adaptive: their own steps
    steps = model.default_steps if steps is None and nfe is None and not adaptive else steps
    own = not adaptive and uses_own_grid(sampler, spacing, final, nfe)
    grid = model.scheduler_grid(steps) if own else None  # checked now
    prompts = list(guidance.prompts) if text else [None]
    index, num, nrow = condition_rows(len(prompts), num, nrow or 8, "prompts of --prompt")
    scale_s, convention = ((1.0, "diffusers") if not text or guidance.guidance_scale is None else
                           (guidance.guidance_scale, guidance.convention))

    def draw(_, noise, sampler, run_steps, *, cond, spacing=None, final=None, nfe=None, **how):
        # the scheduler's grid; a memory probe (1 ddim step, diffkit.memory.PROBE_SAMPLING) on its own grid
        where = {"grid": grid} if grid is not None and run_steps == steps else {
            "steps": run_steps, "spacing": spacing, "final": final, "nfe": nfe}
        if text:
            return text_to_image(model, cond["prompts"], sampler=sampler, guidance_scale=scale_s,
                                 convention=convention, latents=noise, return_latents=True, **where, **how)
        return unconditional(model, noise.shape[0], sampler=sampler, latents=noise, return_latents=True, **where,
                             **how)

    shape = (model.unet.config.in_channels, *_latent_size(model, height, width, text))
    rows = {"prompts": [prompts[i] for i in index.tolist()]} if text else {}
    images, out = draw_prompted_grid(model.denoiser, num, shape, draw, rows, model.decode, out, individual, nrow,
                                     scale, seed=seed, sampler=sampler, steps=steps, nfe=nfe, spacing=spacing,
                                     final=final, batch_size=batch_size, device=device, dtype=model.dtype,
                                     progress=progress, **options)
    on = "the scheduler's timesteps" if grid is not None else "its diffkit grid"
    what = f", prompts {prompts}, guidance {scale_s:g} ({convention})" if text else ""
    print(f"wrote {out} ({num} samples, {sampler} on {on}, {kind} folder {directory}{what})")
    return images


def _latent_size(model, height, width, text: bool) -> tuple:
    """(h, w) of the latents: the text-to-image pipeline's height // 8, width // 8 (default the UNet's sample_size x
    f), the unconditional one's sample_size."""
    size = model.unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    if not text:
        return size
    from ..interop.ldm import LDM_LATENT_FACTOR
    f = model.vae_scale_factor
    height, width = size[0] * f if height is None else height, size[1] * f if width is None else width
    return height // LDM_LATENT_FACTOR, width // LDM_LATENT_FACTOR


def upscale_ldm(args) -> int:
    """``diffkit upscale`` on an ``LDMSuperResolutionPipeline`` folder: every check before any weight is read or any
    output made; image i from ``--seed`` + i (its z_T, then the sampler's draws); the folder's loop by default, 100
    steps (:func:`diffkit.interop.ldm.super_resolve`)."""
    from ..config import resolve_device
    from ..interop.ldm import LDM_STEPS, LDM_SUPER_RES, check_ldm_folder, check_low_res, folder_sampler, load_ldm
    from ..interop.ldm import super_resolve
    from ..sampling import check_eta, resolve_sampler
    from ._common import tolerance_options
    from ._pixart import uses_own_grid
    from ._sd_upscale import REFUSED, read_low_res, refuse_flags, write_upscales

    folder = args.checkpoint
    _, config = check_ldm_folder(folder, LDM_SUPER_RES)
    refuse_flags(args, REFUSED + (("noise_level", "--noise-level", None), ("lora", "--lora", None),
                                  ("prompts", "--prompt", None), ("negative_prompt", "--negative-prompt", None),
                                  ("guidance_scale", "--guidance-scale", None)),
                 f"does not apply to a latent-diffusion super-resolution folder ({folder}); it takes {UPSCALE_TAKES}")
    sampler = args.sampler or folder_sampler(config)
    info, spacing, final = resolve_sampler(sampler, args.spacing, args.final)
    check_eta(info.name, args.eta)
    options = {} if args.eta is None else {"eta": args.eta}
    options.update(tolerance_options(args, info))
    images, _, _ = read_low_res(args)
    check_low_res(images)
    model = load_ldm(folder, resolve_device(args.device), progress=args.progress, pipeline=LDM_SUPER_RES)
    steps = LDM_STEPS[LDM_SUPER_RES] if args.steps is None and args.nfe is None and not info.adaptive else args.steps
    own = not info.adaptive and uses_own_grid(sampler, args.spacing, args.final, args.nfe)
    where = {"grid": model.scheduler_grid(steps)} if own else {"steps": steps, "nfe": args.nfe, "spacing": spacing,
                                                                "final": final}

    def draw(start: int, n: int):
        return (super_resolve(model, images[start:start + n], sampler=info.name, seed=args.seed + start,
                              progress=args.progress, **where, **options).cpu(),)

    how = [] if info.adaptive else [f"{args.nfe} NFE" if args.nfe else f"{steps} steps"]
    return write_upscales(args, draw, images, [sampler] + how + [
        "the scheduler's timesteps" if own else "diffkit's grid"])


__all__ = ["sample_ldm", "upscale_ldm"]
