"""``diffkit upscale --checkpoint IF_STAGE_II_FOLDER --images LOW_RES --prompt TEXT``: a DeepFloyd IF stage-II folder
(``IFSuperResolutionPipeline``, :func:`diffkit.interop.deepfloyd_if.super_resolve`), dispatched from
:func:`diffkit.commands.upscale.run` as :mod:`._sd_upscale` for the SD x4 upscaler. ``--prompt`` once for every image
or once per image (in the files' order); ``--negative-prompt``, ``--guidance-scale`` (diffusers' s, default 4),
``--noise-level`` (default 250), ``--steps`` (default 50) as the pipeline's. Without ``--sampler`` (or with the
folder's ``ddpm`` and no grid option) the pipeline's loop: ``ddpm`` with the learned variance and the scheduler's
dynamic thresholding on its timesteps; another sampler runs on its own grid (no thresholding). The output size is
the UNet's ``sample_size`` (the pipeline's default height / width). The safety checker and the watermarker are not
run."""
from __future__ import annotations

from pathlib import Path

from ..errors import DiffkitError, read_json_object
from ._sd_upscale import REFUSED, checked_folder_flags, read_low_res, write_upscales


def upscale_if(args) -> int:
    """The command on an IF folder: every check before any weight is read or any output made."""
    from ..config import resolve_device
    from ..interop.deepfloyd_if import (IF_DEFAULTS, IF_NOISE_LEVEL, IF_SR_PIPELINE, NOT_RUN,
                                        check_deepfloyd_if_folder, load_deepfloyd_if, super_resolve)
    from ..interop.sd_upscale import check_guidance, check_noise_level
    from ..sampling import check_eta, resolve_sampler

    folder = args.checkpoint
    check_deepfloyd_if_folder(folder, IF_SR_PIPELINE)
    checked_folder_flags(args, f"does not apply to a DeepFloyd IF folder ({folder}); it takes --images, --prompt, "
                               f"--negative-prompt, --guidance-scale, --noise-level, the sampler flags, --seed, "
                               f"--batch-size, --nrow, --device",
                         f"{folder} is a DeepFloyd IF stage-II folder: give --prompt TEXT (once for every image, or "
                         f"once per image)", REFUSED + (("lora", "--lora", None),))
    own_loop = args.sampler in (None, "ddpm") and args.spacing is None and args.final is None and args.nfe is None
    info, spacing, final = resolve_sampler(args.sampler or "ddpm", args.spacing, args.final)
    check_eta(info.name, args.eta)
    options = {} if args.eta is None else {"eta": args.eta}
    if args.rtol is not None or args.atol is not None or getattr(args, "restarts", None) is not None:
        raise DiffkitError("--rtol / --atol / --restarts are not taken on a DeepFloyd IF folder; give a fixed-step "
                           "sampler")
    guidance = check_guidance(IF_DEFAULTS[IF_SR_PIPELINE][0] if args.guidance_scale is None else args.guidance_scale,
                              args.negative_prompt, ("--guidance-scale", "--negative-prompt"))
    images, files, prompts = read_low_res(args)
    steps = args.steps if args.steps is not None or args.nfe is not None else IF_DEFAULTS[IF_SR_PIPELINE][1]
    noising = read_json_object(Path(folder) / "image_noising_scheduler" / "scheduler_config.json",
                               "image_noising_scheduler config")
    level = check_noise_level(IF_NOISE_LEVEL if args.noise_level is None else args.noise_level,
                              int(noising.get("num_train_timesteps", 1000)) - 1, "--noise-level")
    model = load_deepfloyd_if(folder, resolve_device(args.device), progress=args.progress, kind=IF_SR_PIPELINE)
    how = {} if own_loop else {"sampler": info.name, "spacing": spacing, "final": final, "nfe": args.nfe, **options}

    def draw(start: int, n: int):
        return (super_resolve(model, images[start:start + n], prompts[start:start + n], guidance_scale=guidance,
                              negative_prompt=args.negative_prompt, noise_level=level, steps=steps,
                              seed=args.seed + start, progress=args.progress, output_range="-1,1", **how).cpu(),)

    loop = "ddpm on the scheduler's timesteps (IFSuperResolutionPipeline's loop)" if own_loop else info.name
    return write_upscales(args, draw, images, [loop, f"{args.nfe} NFE" if args.nfe else f"{steps} steps",
                                               f"guidance {guidance:g}", f"noise level {level}", NOT_RUN])
