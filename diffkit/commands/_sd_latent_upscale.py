"""``diffkit upscale --checkpoint LATENT_UPSCALER --images LOW_RES --prompt TEXT``: a Stable Diffusion x2 latent
upscaler folder (``StableDiffusionLatentUpscalePipeline``, :mod:`diffkit.interop.sd_latent_upscale`), dispatched from
:func:`diffkit.commands.upscale.run`: the images are encoded by the folder's VAE and upscaled 2x. ``--prompt`` once for
every image or once per image; ``--negative-prompt``, ``--guidance-scale`` (diffusers' s, default 9; 0: the empty
prompt, unguided, without ``--prompt``) and ``--steps`` (default 75) as the pipeline's; the default sampler ``euler``
on the folder's scheduler's sigmas is the pipeline's loop (any sampler; a grid option gives diffkit's grid)."""
from __future__ import annotations

from ..errors import DiffkitError
from ._sd_upscale import REFUSED

TAKES = ("--images, --prompt, --negative-prompt, --guidance-scale, the sampler flags, --seed, --batch-size, --nrow, "
         "--device")


def latent_upscale_folder(args) -> int:
    """The command on a latent upscaler folder: every check before any weight is read or any output made."""
    from ..config import resolve_device
    from ..interop.sd_latent_upscale import (DEFAULT_GUIDANCE, DEFAULT_STEPS, check_latent_guidance,
                                             check_latent_upscale_folder, latent_upscale, load_latent_upscaler)
    from ..sampling import check_eta, plan, resolve_sampler
    from ._common import tolerance_options
    from ._sd_upscale import read_low_res, write_upscales

    folder = args.checkpoint
    extra = (("noise_level", "--noise-level", None), ("lora", "--lora", None))
    for dest, flag, off in REFUSED + extra:
        if getattr(args, dest) not in (off, []):
            raise DiffkitError(f"{flag} does not apply to a Stable Diffusion x2 latent upscaler folder ({folder}); it "
                               f"takes {TAKES}")
    args.sampler = args.sampler or "euler"
    info, spacing, final = resolve_sampler(args.sampler, args.spacing, args.final)
    check_eta(info.name, args.eta)
    options = {} if args.eta is None else {"eta": args.eta}
    options.update(tolerance_options(args, info))
    check_latent_upscale_folder(folder)
    guidance = check_latent_guidance(DEFAULT_GUIDANCE if args.guidance_scale is None else args.guidance_scale,
                                     args.prompts, args.negative_prompt,
                                     ("--guidance-scale", "--negative-prompt", "--prompt"))
    images, files, prompts = read_low_res(args, folder)
    steps = args.steps if args.steps is not None or args.nfe is not None or info.adaptive else DEFAULT_STEPS
    up = load_latent_upscaler(folder, resolve_device(args.device), progress=args.progress)
    own = not info.adaptive and spacing is None and final is None and args.nfe is None
    grid = {"grid": up.scheduler_grid(steps)} if own else {"steps": steps, "nfe": args.nfe, "spacing": spacing,
                                                           "final": final}
    plan(up.denoiser, info.name, options=dict(options), **grid)  # checked now

    def draw(start: int, n: int):
        return (latent_upscale(up, images[start:start + n], None if prompts is None else prompts[start:start + n],
                               negative_prompt=args.negative_prompt, guidance_scale=guidance, sampler=info.name,
                               steps=steps, nfe=args.nfe, spacing=spacing, final=final, seed=args.seed + start,
                               progress=args.progress, **options).cpu(),)

    how = [] if info.adaptive else [f"{args.nfe} NFE" if args.nfe else f"{steps} steps"]
    return write_upscales(args, images, files, draw, how + ["the folder's sigmas" if own else "diffkit's grid",
                                                            f"guidance {guidance:g}"])
