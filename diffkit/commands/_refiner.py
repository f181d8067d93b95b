"""The SD-XL refiner flags of ``diffkit sample`` (:mod:`diffkit.interop.sd_xl_refiner`): ``--refiner FOLDER
[--denoising-end F] [--aesthetic-score A] [--negative-aesthetic-score N]``: the base folder runs the grid's
times t >= int(round(T - F T)) (``StableDiffusionXLPipeline(denoising_end=F, output_type="latent")``), the
refiner the rest from those latents (``StableDiffusionXLImg2ImgPipeline(image=latents, denoising_start=F)``),
with the same sampler, steps, grid, prompts and guidance, and its VAE decodes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import DiffkitError
from ._common import path_arg


def add_refiner_flags(parser) -> None:
    g = parser.add_argument_group("SD-XL base + refiner (docs/interop.md)")
    g.add_argument("--refiner", type=path_arg, metavar="FOLDER",
                   help="SD-XL folders: an SD-XL refiner (or base) folder that denoises the last part of the grid "
                        "from the base's latents, diffusers' ensemble of expert denoisers; --controlnet / "
                        "--ip-adapter / --lora act on the base only")
    g.add_argument("--denoising-end", type=float, metavar="F",
                   help="with --refiner: the fraction F in (0, 1) of the denoising the base runs (its timesteps t "
                        ">= int(round(T - F T)); the refiner's denoising_start; default 0.8)")
    _add_aesthetic_flags(g)


def _add_aesthetic_flags(group) -> None:
    group.add_argument("--aesthetic-score", type=float, metavar="A",
                       help="an SD-XL refiner (requires_aesthetics_score): its aesthetic-score condition (default 6)")
    group.add_argument("--negative-aesthetic-score", type=float, metavar="N",
                       help="an SD-XL refiner: the null half's aesthetic score (default 2.5)")


def add_edit_refiner_flags(parser) -> None:
    """``diffkit edit``'s: ``--denoising-start``, ``--refiner`` / ``--denoising-end`` and the aesthetic scores
    (:func:`edit_refiner_options`, :func:`edit_refiner_request`)."""
    g = parser.add_argument_group("SD-XL refiner (docs/interop.md)")
    g.add_argument("--denoising-start", type=float, metavar="F",
                   help="Stable Diffusion / SD-XL folders, img2img: the images' latents are the state at the first "
                        "grid time below int(round(T - F T)), not noised, and the rest of the grid is run "
                        "(diffusers' denoising_start; replaces --strength)")
    g.add_argument("--refiner", type=path_arg, metavar="FOLDER",
                   help="an SD-XL base --checkpoint, img2img or --mask: an SD-XL refiner folder that edits on from "
                        "the base's latents at --denoising-end (diffusers' img2img / inpainting with the refiner)")
    g.add_argument("--denoising-end", type=float, metavar="F",
                   help="with --refiner: the fraction F in (0, 1) of the denoising the base runs (default 0.8)")
    _add_aesthetic_flags(g)


def edit_refiner_request(args) -> Optional["RefinerRequest"]:
    """``diffkit edit --refiner FOLDER [--denoising-end F]`` (None without): the base (an SD-XL base folder with a
    4-channel UNet, not an LCM one) edits the grid's times t >= int(round(T - F T)) and the refiner the rest from
    its latents, as ``StableDiffusionXLImg2ImgPipeline`` / ``StableDiffusionXLInpaintPipeline`` of each folder with
    ``denoising_end`` / ``denoising_start``; the aesthetic scores are then the refiner's. ``--ip-adapter`` and, with
    ``--mask``, ``--controlnet`` (also ControlNet-Union) act on the base only, as the base's
    ``StableDiffusionXL(Img2Img|Inpaint)Pipeline`` with ``load_ip_adapter`` / ``StableDiffusionXLControlNet(Union)
    InpaintPipeline`` with ``denoising_end`` before the refiner's plain pipeline. One line, before loading, for
    anything else and for the flags the hand-over is not compared with a pipeline for (--controlnet without --mask:
    ``StableDiffusionXLControlNetImg2ImgPipeline`` takes no ``denoising_end``; PAG, APG, RePaint...)."""
    from ..handover import check_fraction
    from ..interop.lcm import is_lcm_folder
    from ..interop.sd_inpaint import is_inpainting_folder
    from ..interop.sd_xl import _index, is_sd_xl_folder
    if args.refiner is None:
        if args.denoising_end is not None:
            raise DiffkitError("--denoising-end needs --refiner FOLDER (the base's latents at the cut, which are not "
                               "an image, go to the refiner)")
        return None
    base = args.checkpoint
    if not is_sd_xl_folder(base) or not ((_index(base) or {}).get("text_encoder") or [None])[0] \
            or is_inpainting_folder(base) or is_lcm_folder(base):
        raise DiffkitError(f"--refiner in diffkit edit applies to an SD-XL base folder (text_encoder and "
                           f"text_encoder_2, a 4-channel UNet, not LCM) as --checkpoint; {base} is not one")
    if not is_sd_xl_folder(args.refiner):
        raise DiffkitError(f"--refiner applies to SD-XL folders (diffusers format): {args.refiner} is not one")
    if getattr(args, "controlnets", None) and args.mask is None:
        raise DiffkitError("--controlnet does not go with --refiner in diffkit edit without --mask (diffusers' "
                           "StableDiffusionXLControlNetImg2ImgPipeline has no denoising_end); add --mask or drop one")
    given = {"--denoising-start": args.denoising_start, "--interpolate": args.interpolate,
             "--pag-scale": getattr(args, "pag_scale", None), "--scheduler": args.scheduler, "--freeu": args.freeu,
             "--paste-known": args.paste_known or None, "--reconstruction-weight": args.reconstruction_weight,
             "--apg-eta": args.apg_eta, "--apg-norm-threshold": args.apg_norm_threshold,
             "--apg-momentum": args.apg_momentum,
             "--jump-n-sample": None if args.jump_n_sample == 1 else args.jump_n_sample}
    for flag, value in given.items():
        if value is not None and value is not False:
            raise DiffkitError(f"{flag} does not go with --refiner in diffkit edit (the hand-over is offered for "
                               f"img2img and --mask inpainting, with --lora / --ip-adapter / (--mask) --controlnet "
                               f"on the base)")
    scores = {"aesthetic_score": args.aesthetic_score, "negative_aesthetic_score": args.negative_aesthetic_score}
    if not (_index(args.refiner) or {}).get("requires_aesthetics_score"):
        given = [flag for flag, value in zip(("--aesthetic-score", "--negative-aesthetic-score"), scores.values())
                 if value is not None]
        if given:
            raise DiffkitError(f"{given[0]} applies to a refiner whose model_index.json has requires_aesthetics_score "
                               f"true; {args.refiner} has not")
    handover = check_fraction("--denoising-end", 0.8 if args.denoising_end is None else args.denoising_end)
    return RefinerRequest(str(args.refiner), handover, {k: v for k, v in scores.items() if v is not None})


def edit_refiner_options(args) -> tuple:
    """(micro_conditioning, {"denoising_start": F} or {}) of ``diffkit edit``'s refiner flags, checked against
    ``--checkpoint``'s model_index.json before anything is loaded: one line for a flag that does not apply."""
    from ..handover import check_fraction
    from ..interop.sd_xl import _index
    from ..interop.stable_diffusion import is_stable_diffusion_folder
    scores = {"aesthetic_score": args.aesthetic_score, "negative_aesthetic_score": args.negative_aesthetic_score}
    scores = {key: value for key, value in scores.items() if value is not None}
    if getattr(args, "refiner", None) is not None:  # the scores are the refiner's (edit_refiner_request)
        return {}, {}
    index = _index(args.checkpoint) or {}
    if index.get("requires_aesthetics_score") or (index.get("text_encoder_2") and not (index.get("text_encoder")
                                                                                      or [None])[0]):
        for flag, value in (("--controlnet", getattr(args, "controlnets", None)),
                            ("--ip-adapter", getattr(args, "ip_adapter", None))):
            if value:
                raise DiffkitError(f"{flag} is not offered with an SD-XL refiner folder ({args.checkpoint}); it "
                                   f"goes with an SD-XL base folder")
    if scores and not index.get("requires_aesthetics_score"):
        raise DiffkitError(f"--{next(iter(scores)).replace('_', '-')} applies to an SD-XL refiner folder "
                           f"(requires_aesthetics_score in model_index.json); {args.checkpoint} is not one")
    if args.denoising_start is None:
        return scores, {}
    for flag, value in (("--mask", args.mask), ("--strength", args.strength), ("--interpolate", args.interpolate)):
        if value is not None:
            raise DiffkitError(f"--denoising-start does not go with {flag} (it starts img2img at its own time, "
                               f"without noise; diffusers ignores strength then)")
    if not is_stable_diffusion_folder(args.checkpoint):
        raise DiffkitError(f"--denoising-start applies to a Stable Diffusion / SD-XL folder; {args.checkpoint} is "
                           f"not one")
    return scores, {"denoising_start": check_fraction("--denoising-start", args.denoising_start)}


@dataclass
class RefinerRequest:
    """The checked refiner flags (:meth:`from_args`); :meth:`load` gives the refiner folder's StableDiffusionXL."""

    folder: str
    handover: float
    conditioning: dict
    scheduler: Optional[str] = None  # --scheduler lcm: both folders on LCMScheduler (_handover_scheduler)

    @classmethod
    def from_args(cls, args, checkpoint) -> Optional["RefinerRequest"]:
        """None without ``--refiner``; one line, before anything is loaded, for a refiner flag without it, a
        base that is not an SD-XL base folder, a refiner that is not an SD-XL folder, F outside (0, 1), and the
        flags the hand-over does not take (:func:`_handover_scheduler`). --controlnet / --ip-adapter / --lora act on
        the base only (StableDiffusionXL(ControlNet)Pipeline with them, then the refiner's img2img pipeline
        without)."""
        from ..handover import check_fraction
        from ..interop.sd_xl import _index, is_sd_xl_folder
        scores = {"aesthetic_score": args.aesthetic_score, "negative_aesthetic_score": args.negative_aesthetic_score}
        if checkpoint is not None and (_index(checkpoint) or {}).get("requires_aesthetics_score"):
            raise DiffkitError(f"{checkpoint} is an SD-XL refiner folder (requires_aesthetics_score), which edits "
                               f"latents or images: use diffkit edit, or give it as --refiner with a base "
                               f"--checkpoint")
        if args.refiner is None:
            for flag, value in (("--denoising-end", args.denoising_end), ("--aesthetic-score", args.aesthetic_score),
                                ("--negative-aesthetic-score", args.negative_aesthetic_score)):
                if value is not None:
                    raise DiffkitError(f"{flag} needs --refiner FOLDER (the base's latents at the cut, which are "
                                       f"not an image, go to the refiner)")
            return None
        if checkpoint is None or not is_sd_xl_folder(checkpoint) or not is_sd_xl_folder(args.refiner):
            bad = args.refiner if checkpoint is not None and is_sd_xl_folder(checkpoint) else checkpoint
            raise DiffkitError(f"--refiner applies to SD-XL folders (diffusers format): {bad} is not one")
        if not ((_index(checkpoint) or {}).get("text_encoder") or [None])[0]:
            raise DiffkitError(f"--checkpoint {checkpoint} is an SD-XL refiner-style folder; give the base folder "
                               f"(text_encoder and text_encoder_2) as --checkpoint and the refiner as --refiner")
        if not (_index(args.refiner) or {}).get("requires_aesthetics_score"):
            given = [flag for flag, value in zip(("--aesthetic-score", "--negative-aesthetic-score"),
                                                 scores.values()) if value is not None]
            if given:
                raise DiffkitError(f"{given[0]} applies to a refiner whose model_index.json has "
                                   f"requires_aesthetics_score true; {args.refiner} has not")
        scheduler = _handover_scheduler(args, checkpoint)
        handover = check_fraction("--denoising-end", 0.8 if args.denoising_end is None else args.denoising_end)
        return cls(str(args.refiner), handover, {key: value for key, value in scores.items() if value is not None},
                   scheduler)

    def load(self, device="cpu", progress: bool = True):
        """The refiner folder, on the base's ``--scheduler`` (``lcm``: LCMScheduler.from_config of its own config)."""
        from ..interop.sd_xl import load_sd_xl
        return load_sd_xl(self.folder, device, progress=progress, scheduler=self.scheduler)

    def check_steps(self, base, refiner, sampler: str, steps: int, options: dict) -> None:
        """Both halves run at least one step of the grid of ``sampler`` / ``steps`` / ``options``, so at least
        two steps (one line otherwise, before any sampling; :mod:`diffkit.handover`)."""
        from ..handover import cutoff, grid_until
        from ..sampling import planned_grid
        grid_until(planned_grid(base.denoiser, sampler, steps, None, None, options)[1], self.handover,
                   base.schedule.num_timesteps)
        grid = planned_grid(refiner.denoiser, sampler, steps, None, None, options)[1]
        if not bool((grid[:-1] < cutoff(self.handover, refiner.schedule.num_timesteps)).any()):
            raise DiffkitError(f"--denoising-end {self.handover:g} leaves the refiner no step of the {steps}-step "
                               f"grid (none of its times is below int(round(T - {self.handover:g} T))); give more "
                               f"--steps or a smaller --denoising-end")

    def edited(self, refiner, request, count: int, start: int, latents, sampler: str, steps: int, how: dict):
        """``diffkit edit --refiner``'s half (:meth:`refined`) for images start.. of ``count`` from the base's
        ``latents``, the prompts and guidance of ``request`` (its GuidanceRequest), decoded by the refiner's VAE."""
        prompts = request.prompts * count if len(request.prompts) == 1 else request.prompts
        guiding = dict(guidance_scale=request.guidance_scale, convention=request.convention,
                       guidance_rescale=request.rescale, negative_prompt=request.negative_prompt)
        return refiner.decode(self.refined(refiner, prompts[start:start + len(latents)], latents, sampler, steps,
                                           guiding, how))

    def refined(self, refiner, prompts, latents, sampler: str, steps: int, guidance: dict, how: dict):
        """The refiner's half of the ensemble (:func:`~diffkit.interop.sd_xl_refiner.refine`) on the base's
        ``latents``, with the base's ``guidance`` keywords and the draw's ``how`` (generators, grid options)."""
        from ..interop.sd_xl_refiner import refine
        how = {key: value for key, value in how.items() if key != "nfe"}
        return refine(refiner, prompts, latents, self.handover, sampler=sampler, steps=steps,
                      micro_conditioning=self.conditioning, return_latents=True, **guidance, **how)


def _handover_scheduler(args, checkpoint) -> Optional[str]:
    """``diffkit sample --refiner``'s ``--scheduler``: None, or ``lcm``, both folders then sampled on
    ``LCMScheduler.from_config`` of their own configs with the ``consistency`` sampler, whose last base step renoises
    to the refiner's first time as ``LCMScheduler.step`` does (``StableDiffusionXLPipeline(denoising_end=f)`` then
    ``StableDiffusionXLImg2ImgPipeline(denoising_start=f)``, both with the LCMScheduler). One line for ``--nfe``
    (diffusers' hand-over cuts the ``num_inference_steps`` grid both pipelines share: no NFE budget), ``--scheduler
    tcd`` (TCDScheduler's intermediate times s = (1 - gamma) t' count from the full grid's end, which the base's cut
    grid lacks; not compared) and LCMScheduler folders (their refiner would need LCM's boundary scalings too)."""
    from ..interop.lcm import is_lcm_folder
    from ..interop.sd_scheduler import check_scheduler_override
    if args.nfe:
        raise DiffkitError(f"--nfe is not offered with --refiner (diffusers' hand-over cuts the num_inference_steps "
                           f"grid the base and refiner share; it has no NFE budget); give --steps instead of --nfe "
                           f"{args.nfe}")
    for folder in (checkpoint, args.refiner):
        if is_lcm_folder(folder):
            raise DiffkitError(f"--refiner is not offered with an LCMScheduler folder ({folder}); give the plain "
                               f"SD-XL base and refiner folders with --scheduler lcm (both on LCMScheduler)")
    if args.scheduler not in (None, "lcm"):
        raise DiffkitError(f"--scheduler {args.scheduler} is not offered with --refiner (TCDScheduler's "
                           f"intermediate times count from the full grid's end, which the base's half does not "
                           f"reach); allowed: lcm")
    if args.scheduler is not None:
        check_scheduler_override(args.refiner, args.scheduler)
    return args.scheduler
