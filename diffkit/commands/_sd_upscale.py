"""``diffkit upscale --checkpoint UPSCALER_FOLDER --images LOW_RES --prompt TEXT``: a Stable Diffusion x4 upscaler
folder (``StableDiffusionUpscalePipeline``, :mod:`diffkit.interop.sd_upscale`), dispatched from
:func:`diffkit.commands.upscale.run`. ``--prompt`` once for every image or once per image (in the files' order);
``--negative-prompt``, ``--guidance-scale`` (diffusers' s, default 9), ``--noise-level`` (default 20), ``--steps``
(default 75) as the pipeline's; any sampler."""
from __future__ import annotations

from pathlib import Path

from ..errors import DiffkitError

PROMPT_FLAGS = (("prompts", "--prompt"), ("negative_prompt", "--negative-prompt"),
                ("guidance_scale", "--guidance-scale"))  # an upscaler folder's alone
# upscale's flags of diffkit checkpoints that a folder does not take: (dest, flag, the value that means "not given")
REFUSED = (("ema", "--no-ema", True), ("mixed_precision", "--mixed-precision", "no"), ("compile", "--compile", "no"),
           ("lora_any_base", "--lora-any-base", False))


def refuse_prompt_flags(args) -> None:
    """``--prompt`` / ``--negative-prompt`` / ``--guidance-scale`` on a checkpoint that is not an upscaler folder:
    one line (before the checkpoint is read)."""
    given = next((flag for dest, flag in PROMPT_FLAGS if getattr(args, dest) is not None), None)
    if given:
        raise DiffkitError(f"{given} applies to a Stable Diffusion x4 upscaler folder (StableDiffusionUpscale"
                           f"Pipeline); {args.checkpoint} is not one")


def refuse_flags(args, refused, refusal: str) -> None:
    """One line, "{flag} {refusal}", for the first of ``refused`` ((dest, flag, the value that means "not given"; an
    empty list means it too)) that ``args`` gives (a latent upscaler folder's, a latent-diffusion one's)."""
    for dest, flag, off in refused:
        if getattr(args, dest) not in (off, []):
            raise DiffkitError(f"{flag} {refusal}")


def checked_folder_flags(args, refusal: str, missing_prompt: str, refused=REFUSED) -> None:
    """One line, "{flag} {refusal}", for the first of ``refused`` ((dest, flag, the value that means "not given"))
    given, or ``missing_prompt`` for no ``--prompt`` (an upscaler folder's and a DeepFloyd IF stage-II one's)."""
    for dest, flag, off in refused:
        if getattr(args, dest) != off:
            raise DiffkitError(f"{flag} {refusal}")
    if args.prompts is None:
        raise DiffkitError(missing_prompt)


def read_low_res(args, factor: int = 1) -> tuple:
    """(images (B, 3, h, w) in [-1, 1], files, one prompt per file or None without ``--prompt``) of ``--images`` /
    ``--prompt``: sides multiples of ``factor`` (a diffusers upscaler folder's VAE factor; 1: a pixel-space one's);
    one line for ``--out`` being the images' folder or a prompt count that is neither 1 nor the files'."""
    from ..interop.sd_upscale import check_low_res_size
    from .edit import read_pngs
    out, images_path = Path(args.out), Path(args.images)
    if out.exists() and images_path.is_dir() and out.resolve() == images_path.resolve():
        raise DiffkitError(f"--out {args.out!r} is the --images folder; give another folder")
    images, files = read_pngs(images_path, "RGB")
    if factor > 1:
        check_low_res_size(images.shape[2], images.shape[3], factor)
    prompts = None if args.prompts is None else list(args.prompts)
    if prompts is not None and len(prompts) not in (1, len(files)):
        raise DiffkitError(f"--prompt is given {len(prompts)} times for {len(files)} images; give it once (every "
                           f"image) or once per image ({len(files)}, in the files' order)")
    return images, files, prompts if prompts is None or len(prompts) > 1 else prompts * len(files)


def write_upscales(args, draw, images, how: list) -> int:
    """The outputs checked (``--out`` writable, no ``upscaled_*.png`` / grid in the way), then ``draw(start, n)``'s
    upscales in batches (halved when out of memory) written as ``upscaled_00000.png`` ... and the grid, the folders
    made removed again if the drawing fails; prints what was done (``how``: the sampler, steps, ...)."""
    import torch

    from ..images import check_image_folder, save_grid, save_images
    from ..memory import batches_with_oom_retry
    from ..super_res import upsample
    from ._common import check_output_file, check_writable_dir, missing_dirs, removed_if_empty_on_failure
    from .upscale import GRID_NAME, comparison_grid
    out, count = Path(args.out), images.shape[0]
    new_dirs = missing_dirs(out)
    check_writable_dir(out)
    check_image_folder(out, count, prefix="upscaled")
    grid_file = check_output_file(out / GRID_NAME, "upscale grid", ".png")
    with removed_if_empty_on_failure(new_dirs):
        upscaled = torch.cat([x for _, x in batches_with_oom_retry(draw, count, args.batch_size)])
        save_images(upscaled, out, prefix="upscaled")
        size = tuple(upscaled.shape[2:])
        save_grid(comparison_grid([upsample(images, size).clamp(-1, 1), upscaled], args.nrow), grid_file,
                  nrow=min(args.nrow, count))
    print(f"wrote {count} upscaled images ({images.shape[3]}x{images.shape[2]} -> {size[1]}x{size[0]}) to {out} "
          f"(upscaled_00000.png ...; {GRID_NAME}); " + ", ".join(how))
    return 0


def upscale_folder(args) -> int:
    """The command on an upscaler folder: every check before any weight is read or any output made."""
    from ..config import resolve_device
    from ..interop.sd_upscale import (DEFAULT_GUIDANCE, DEFAULT_NOISE_LEVEL, DEFAULT_STEPS, check_guidance,
                                      check_noise_level, is_upscale_folder, upscale_sd, upscale_settings)
    from ..interop.stable_diffusion import load_stable_diffusion
    from ..sampling import check_eta, plan, resolve_sampler
    from ._common import tolerance_options
    from ._image_size import vae_factor

    folder = args.checkpoint
    if not is_upscale_folder(folder):
        raise DiffkitError(f"{folder} is a Stable Diffusion folder but not an x4 upscaler (StableDiffusionUpscale"
                           f"Pipeline); diffkit upscale takes an upscaler folder or a diffkit super-resolution "
                           f"checkpoint (use diffkit sample / edit for this one)")
    checked_folder_flags(args, f"does not apply to a Stable Diffusion upscaler folder ({folder}); it takes --images, "
                               f"--prompt, --negative-prompt, --guidance-scale, --noise-level, --lora, the sampler "
                               f"flags, --seed, --batch-size, --nrow, --device",
                         f"{folder} is a Stable Diffusion x4 upscaler folder: give --prompt TEXT (once for every "
                         f"image, or once per image)")
    info, spacing, final = resolve_sampler(args.sampler, args.spacing, args.final)
    check_eta(info.name, args.eta)
    options = {} if args.eta is None else {"eta": args.eta}
    options.update(tolerance_options(args, info))
    schedule, top = upscale_settings(folder)
    level = check_noise_level(DEFAULT_NOISE_LEVEL if args.noise_level is None else args.noise_level, top,
                              "--noise-level")
    guidance = check_guidance(DEFAULT_GUIDANCE if args.guidance_scale is None else args.guidance_scale,
                              args.negative_prompt, ("--guidance-scale", "--negative-prompt"))
    images, files, prompts = read_low_res(args, vae_factor(folder)[1])
    steps = args.steps if args.steps is not None or args.nfe is not None or info.adaptive else DEFAULT_STEPS
    device = resolve_device(args.device)
    sd = load_stable_diffusion(folder, device, progress=args.progress, lora=args.lora, upscale=True)
    plan(sd.denoiser, args.sampler, steps, args.nfe, spacing, final, options=dict(options))  # checked now

    def draw(start: int, n: int):
        return (upscale_sd(sd, images[start:start + n], prompts[start:start + n], low_res_schedule=schedule,
                           negative_prompt=args.negative_prompt, guidance_scale=guidance, noise_level=level,
                           max_noise_level=top, sampler=info.name, steps=steps, nfe=args.nfe, seed=args.seed + start,
                           progress=args.progress, spacing=spacing, final=final, **options).cpu(),)

    how = [] if info.adaptive else [f"{args.nfe} NFE" if args.nfe else f"{steps} steps"]
    return write_upscales(args, draw, images, [args.sampler] + how + [f"guidance {guidance:g}", f"noise level {level}"])
