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
from ._sd_upscale import REFUSED


def upscale_if(args) -> int:
    """The command on an IF folder: every check before any weight is read or any output made."""
    import torch

    from ..config import resolve_device
    from ..images import check_image_folder, save_grid, save_images
    from ..interop.deepfloyd_if import (IF_DEFAULTS, IF_NOISE_LEVEL, IF_SR_PIPELINE, NOT_RUN,
                                        check_deepfloyd_if_folder, load_deepfloyd_if, super_resolve)
    from ..interop.sd_upscale import check_guidance, check_noise_level
    from ..memory import batches_with_oom_retry
    from ..sampling import check_eta, resolve_sampler
    from ..super_res import upsample
    from ._common import check_output_file, check_writable_dir, missing_dirs, removed_if_empty_on_failure
    from .edit import read_pngs
    from .upscale import GRID_NAME, comparison_grid

    folder = args.checkpoint
    check_deepfloyd_if_folder(folder, IF_SR_PIPELINE)
    for dest, flag, off in REFUSED + (("lora", "--lora", None),):
        if getattr(args, dest) != off:
            raise DiffkitError(f"{flag} does not apply to a DeepFloyd IF folder ({folder}); it takes --images, "
                               f"--prompt, --negative-prompt, --guidance-scale, --noise-level, the sampler flags, "
                               f"--seed, --batch-size, --nrow, --device")
    if args.prompts is None:
        raise DiffkitError(f"{folder} is a DeepFloyd IF stage-II folder: give --prompt TEXT (once for every image, or "
                           f"once per image)")
    own_loop = args.sampler in (None, "ddpm") and args.spacing is None and args.final is None and args.nfe is None
    info, spacing, final = resolve_sampler(args.sampler or "ddpm", args.spacing, args.final)
    check_eta(info.name, args.eta)
    options = {} if args.eta is None else {"eta": args.eta}
    if args.rtol is not None or args.atol is not None or getattr(args, "restarts", None) is not None:
        raise DiffkitError("--rtol / --atol / --restarts are not taken on a DeepFloyd IF folder; give a fixed-step "
                           "sampler")
    guidance = check_guidance(IF_DEFAULTS[IF_SR_PIPELINE][0] if args.guidance_scale is None else args.guidance_scale,
                              args.negative_prompt, ("--guidance-scale", "--negative-prompt"))
    out, images_path = Path(args.out), Path(args.images)
    if out.exists() and images_path.is_dir() and out.resolve() == images_path.resolve():
        raise DiffkitError(f"--out {args.out!r} is the --images folder; give another folder")
    images, files = read_pngs(images_path, "RGB")
    prompts = list(args.prompts)
    if len(prompts) not in (1, len(files)):
        raise DiffkitError(f"--prompt is given {len(prompts)} times for {len(files)} images; give it once (every "
                           f"image) or once per image ({len(files)}, in the files' order)")
    prompts = prompts * len(files) if len(prompts) == 1 else prompts
    steps = args.steps if args.steps is not None or args.nfe is not None else IF_DEFAULTS[IF_SR_PIPELINE][1]
    noising = read_json_object(Path(folder) / "image_noising_scheduler" / "scheduler_config.json",
                               "image_noising_scheduler config")
    level = check_noise_level(IF_NOISE_LEVEL if args.noise_level is None else args.noise_level,
                              int(noising.get("num_train_timesteps", 1000)) - 1, "--noise-level")
    model = load_deepfloyd_if(folder, resolve_device(args.device), progress=args.progress, kind=IF_SR_PIPELINE)
    new_dirs = missing_dirs(out)
    check_writable_dir(out)
    check_image_folder(out, len(files), prefix="upscaled")
    grid_file = check_output_file(out / GRID_NAME, "upscale grid", ".png")
    how = {} if own_loop else {"sampler": info.name, "spacing": spacing, "final": final, "nfe": args.nfe, **options}

    def draw(start: int, n: int):
        return (super_resolve(model, images[start:start + n], prompts[start:start + n], guidance_scale=guidance,
                              negative_prompt=args.negative_prompt, noise_level=level, steps=steps,
                              seed=args.seed + start, progress=args.progress, output_range="-1,1", **how).cpu(),)

    with removed_if_empty_on_failure(new_dirs):
        upscaled = torch.cat([x for _, x in batches_with_oom_retry(draw, len(files), args.batch_size)])
        save_images(upscaled, out, prefix="upscaled")
        size = tuple(upscaled.shape[2:])
        save_grid(comparison_grid([upsample(images, size).clamp(-1, 1), upscaled], args.nrow), grid_file,
                  nrow=min(args.nrow, len(files)))
    loop = "ddpm on the scheduler's timesteps (IFSuperResolutionPipeline's loop)" if own_loop else info.name
    print(f"wrote {len(files)} upscaled images ({images.shape[3]}x{images.shape[2]} -> {size[1]}x{size[0]}) to {out} "
          f"(upscaled_00000.png ...; {GRID_NAME}); " + ", ".join(
              [loop, f"{args.nfe} NFE" if args.nfe else f"{steps} steps", f"guidance {guidance:g}",
               f"noise level {level}", NOT_RUN]))
    return 0
