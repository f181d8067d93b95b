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
    from ._image_size import vae_factor
    from ._sd_upscale import read_low_res, refuse_flags, write_upscales

    folder = args.checkpoint
    extra = (("noise_level", "--noise-level", None), ("lora", "--lora", None))
    refuse_flags(args, REFUSED + extra, f"does not apply to a Stable Diffusion x2 latent upscaler folder ({folder}); "
                                        f"it takes {TAKES}")
    args.sampler = args.sampler or "euler"
    info, spacing, final = resolve_sampler(args.sampler, args.spacing, args.final)
    check_eta(info.name, args.eta)
    options = {} if args.eta is None else {"eta": args.eta}
    options.update(tolerance_options(args, info))
    check_latent_upscale_folder(folder)
    guidance = check_latent_guidance(DEFAULT_GUIDANCE if args.guidance_scale is None else args.guidance_scale,
                                     args.prompts, args.negative_prompt,
                                     ("--guidance-scale", "--negative-prompt", "--prompt"))
    images, files, prompts = read_low_res(args, vae_factor(folder)[1])
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
    return write_upscales(args, draw, images, [args.sampler] + how + [
        "the folder's sigmas" if own else "diffkit's grid", f"guidance {guidance:g}"])


def add_latent_upscaler_flags(parser) -> None:
    """``diffkit sample``'s ``--latent-upscaler FOLDER`` with ``--upscaler-steps`` / ``--upscaler-guidance-scale``."""
    from ._common import path_arg, positive_int
    g = parser.add_argument_group("Stable Diffusion 1.x / 2.x + x2 latent upscaler (docs/interop.md)")
    g.add_argument("--latent-upscaler", type=path_arg, metavar="FOLDER",
                   help="a StableDiffusionLatentUpscalePipeline folder that upscales the samples' latents 2x (the "
                        "pipeline's output_type='latent' hand-over; the same prompts and per-sample generators) and "
                        "decodes them")
    g.add_argument("--upscaler-steps", type=positive_int, metavar="N",
                   help="with --latent-upscaler: its steps on its scheduler's sigmas (default 75, the pipeline's)")
    g.add_argument("--upscaler-guidance-scale", type=float, metavar="S",
                   help="with --latent-upscaler: its s (default 9; 0: the empty prompt, unguided; above 1 the null "
                        "half takes --negative-prompt)")


class LatentUpscalerRequest:
    """The checked ``--latent-upscaler`` flags (:func:`latent_upscaler_options`): :meth:`load` the folder,
    :meth:`upscaled` the base's latents of one batch."""

    def __init__(self, folder, steps: int, guidance_scale: float):
        self.folder, self.steps, self.guidance_scale = str(folder), steps, guidance_scale

    def load(self, device, progress: bool = True):
        from ..interop.sd_latent_upscale import load_latent_upscaler
        return load_latent_upscaler(self.folder, device, progress=progress)

    def upscaled(self, up, prompts, latents, negative_prompt, generator, progress: bool = False):
        """z_0 of the upscaler from the base's ``latents`` (the pipeline's loop: euler on its sigmas), each image
        drawing from its ``generator`` where the base left it (diffusers' shared generators)."""
        from ..interop.sd_latent_upscale import latent_upscale
        guided = self.guidance_scale > 1
        return latent_upscale(up, latents, None if self.guidance_scale == 0 else prompts,
                              negative_prompt=negative_prompt if guided else None, guidance_scale=self.guidance_scale,
                              steps=self.steps, generator=generator, return_latents=True, progress=progress)


def latent_upscaler_options(args, checkpoint) -> dict:
    """{"latent_upscaler": :class:`LatentUpscalerRequest`} for ``--latent-upscaler`` ({} without), one line before
    anything loads for a base that is not a Stable Diffusion 1.x / 2.x folder, a folder that is not a latent upscaler,
    an upscaler flag without it, and what the hand-over does not take (--refiner, SAG / panorama, --steps 1)."""
    from ..interop.sd_latent_upscale import (DEFAULT_GUIDANCE, DEFAULT_STEPS, check_latent_guidance,
                                             check_latent_upscale_folder)
    from ..interop.sd_xl import is_sd_xl_folder
    from ..interop.stable_diffusion import is_stable_diffusion_folder
    folder = getattr(args, "latent_upscaler", None)
    if folder is None:
        for flag, value in (("--upscaler-steps", args.upscaler_steps),
                            ("--upscaler-guidance-scale", args.upscaler_guidance_scale)):
            if value is not None:
                raise DiffkitError(f"{flag} needs --latent-upscaler FOLDER")
        return {}
    if not is_stable_diffusion_folder(checkpoint) or is_sd_xl_folder(checkpoint):
        raise DiffkitError(f"--latent-upscaler applies to a Stable Diffusion 1.x / 2.x folder (its VAE's latents); "
                           f"{checkpoint} is not one")
    check_latent_upscale_folder(folder)
    for flag, value in (("--refiner", args.refiner), ("--sag-scale", args.sag_scale), ("--panorama", args.panorama),
                        ("--steps 1", args.steps == 1 or None)):
        if value is not None and value is not False:
            raise DiffkitError(f"{flag} does not go with --latent-upscaler (the hand-over is offered after plain "
                               f"text-to-image sampling of 2 or more steps)")
    guidance = DEFAULT_GUIDANCE if args.upscaler_guidance_scale is None else args.upscaler_guidance_scale
    negative = args.negative_prompt if guidance > 1 else None
    guidance = check_latent_guidance(guidance, None if guidance == 0 else [""], negative,
                                     ("--upscaler-guidance-scale", "--negative-prompt", "--prompt"))
    steps = DEFAULT_STEPS if args.upscaler_steps is None else args.upscaler_steps
    return {"latent_upscaler": LatentUpscalerRequest(folder, steps, guidance)}
