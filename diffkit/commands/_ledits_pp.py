"""``diffkit edit --checkpoint SD_FOLDER --images PNG|DIR --ledits TEXT [--ledits-remove TEXT] ...``: LEDITS++ as
diffusers' ``LEditsPPPipelineStableDiffusion`` on an SD 1.x / 2.x folder and ``LEditsPPPipelineStableDiffusionXL`` on
an SD-XL one (``pipe.invert(image)`` then ``pipe(editing_prompt=[...])``; :mod:`diffkit.interop.ledits_pp`): the
flags, their checks before anything loads, and the run."""
from __future__ import annotations

import argparse

from ..errors import DiffkitError, check_float32, check_range
from ._common import non_negative_float

PIPELINE = "LEditsPPPipelineStableDiffusion"
XL_PIPELINE = "LEditsPPPipelineStableDiffusionXL"
DEFAULT_STEPS = 30  # the pipeline's num_inversion_steps
TAKES = ("--images, --ledits / --ledits-remove and the other --ledits-* flags, --mask, --steps, --negative-prompt, "
         "--clip-skip, --height / --width, --lora, --textual-inversion, --seed, --batch-size")
FLAGS = {  # diffkit edit's dests LEDITS++ takes (the rest must stay at their defaults)
    "command", "func", "checkpoint", "config", "images", "mask", "out", "seed", "batch_size", "device", "progress",
    "steps", "negative_prompt", "clip_skip", "height", "width", "lora", "textual_inversion", "ledits", "ledits_scale",
    "ledits_threshold", "ledits_skip", "ledits_mask", "ledits_warmup", "ledits_cooldown", "ledits_source_prompt",
    "ledits_source_scale", "ledits_zero_noise_steps"}
OPTIONS = (("--ledits-scale", "ledits_scale"), ("--ledits-threshold", "ledits_threshold"),
           ("--ledits-skip", "ledits_skip"), ("--ledits-mask", "ledits_mask"), ("--ledits-warmup", "ledits_warmup"),
           ("--ledits-cooldown", "ledits_cooldown"),
           ("--ledits-source-prompt", "ledits_source_prompt"), ("--ledits-source-scale", "ledits_source_scale"),
           ("--ledits-zero-noise-steps", "ledits_zero_noise_steps"))


class _Concept(argparse.Action):
    """--ledits / --ledits-remove: (text, remove) appended to one list, in the command line's order."""

    def __call__(self, parser, namespace, values, option_string=None):
        concepts = list(getattr(namespace, self.dest) or [])
        concepts.append((values, option_string == "--ledits-remove"))
        setattr(namespace, self.dest, concepts)


def _floats(text: str, kind=float, what: str = "a number") -> list:
    """S or S1,S2,...: one number for every concept or one per concept."""
    try:
        return [kind(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what} or a comma-separated list of them") from None


def _ints(text: str) -> list:
    """N or N1,N2,...: one integer for every concept or one per concept."""
    return _floats(text, int, "an integer")


def add_ledits_flags(parser) -> None:
    g = parser.add_argument_group("LEDITS++ (Stable Diffusion 1.x / 2.x and SD-XL folders; docs/interop/ledits_pp.md)")
    g.add_argument("--ledits", dest="ledits", action=_Concept, metavar="TEXT",
                   help="edit each image with LEDITS++ (Brack et al. 2024) as LEditsPPPipelineStableDiffusion (XL): "
                        "invert it (DPM-Solver++ 2M SDE with recorded noise; DDIM on a DDIMScheduler folder), then "
                        "guide towards this concept within its implicit mask; repeat for more concepts")
    g.add_argument("--ledits-remove", dest="ledits", action=_Concept, metavar="TEXT",
                   help="a concept to remove (the pipeline's reverse_editing_direction); repeatable, with or "
                        "without --ledits")
    g.add_argument("--ledits-scale", type=_floats, metavar="S[,S...]",
                   help="edit guidance scale s_e (edit_guidance_scale, >= 0; default 5): one for all concepts or one "
                        "per concept in the command line's order")
    g.add_argument("--ledits-threshold", type=_floats, metavar="T[,T...]",
                   help="mask threshold lambda in [0, 1], the quantile above which the masks are 1 (edit_threshold; "
                        "default 0.9): one for all or one per concept")
    g.add_argument("--ledits-skip", type=non_negative_float, metavar="F",
                   help="the part of the int(steps (1 + F)) timesteps left out at the noisy end (invert's skip, in "
                        "[0, 1]; default 0.15); lower changes the image more. --steps: the steps run (default 30)")
    g.add_argument("--ledits-mask", choices=("intersect", "attention", "noise"),
                   help="the implicit mask: intersect (cross-attention and noise masks, the SD pipeline's default), "
                        "attention (use_intersect_mask=False) or noise (SEGA's; use_cross_attn_mask=False; the SD-XL "
                        "pipeline's default)")
    g.add_argument("--ledits-warmup", type=_ints, metavar="N[,N...]",
                   help="the concepts count from step N on (edit_warmup_steps; default 0): one for all concepts or "
                        "one per concept")
    g.add_argument("--ledits-cooldown", type=_ints, metavar="N[,N...]",
                   help="... and before step N (edit_cooldown_steps; default: to the last step): one for all "
                        "concepts or one per concept")
    g.add_argument("--ledits-source-prompt", metavar="TEXT",
                   help="invert's source_prompt: guides the inversion (default none)")
    g.add_argument("--ledits-source-scale", type=non_negative_float, metavar="S",
                   help="invert's source_guidance_scale with --ledits-source-prompt (default 3.5; > 1 on SD-XL)")
    g.add_argument("--ledits-zero-noise-steps", type=int, metavar="K",
                   help="the edit's last K steps add no noise (invert's num_zero_noise_steps; default 3 on SD-XL as "
                        "its pipeline, 0 on SD 1.x / 2.x)")


def check_no_ledits_options(args) -> None:
    """One line for a --ledits-* option without --ledits / --ledits-remove."""
    for flag, dest in OPTIONS:
        if getattr(args, dest, None) is not None:
            raise DiffkitError(f"{flag} goes with --ledits TEXT / --ledits-remove TEXT (LEDITS++)")


def _each(flag: str, values, count: int, default) -> list:
    if values is None:
        return [default] * count
    if len(values) not in (1, count):
        raise DiffkitError(f"{flag} has {len(values)} values for {count} concepts; give one, or one per concept "
                           f"(--ledits / --ledits-remove in the command line's order)")
    return list(values) * (count if len(values) == 1 else 1)


def ledits_concepts(args) -> list:
    """The :class:`~diffkit.interop.ledits_pp.Concept` s of the flags (checked: one line for a bad value)."""
    from ..interop.ledits_pp import Concept
    count = len(args.ledits)
    scales = _each("--ledits-scale", args.ledits_scale, count, Concept.scale)
    thresholds = _each("--ledits-threshold", args.ledits_threshold, count, Concept.threshold)
    warmups = _each("--ledits-warmup", args.ledits_warmup, count, Concept.warmup)
    cooldowns = _each("--ledits-cooldown", args.ledits_cooldown, count, Concept.cooldown)
    for flag, values, low, high in (("--ledits-scale", scales, 0.0, None),
                                    ("--ledits-threshold", thresholds, 0.0, 1.0)):
        for value in values:
            check_float32(flag, check_range(flag, value, low, high))
    for flag, values in (("--ledits-warmup", warmups), ("--ledits-cooldown", cooldowns)):
        for value in values:
            if value is not None:
                check_range(flag, value, 0, None, integer=True)
    return [Concept(text, scale, threshold, remove, warmup, cooldown) for (text, remove), scale, threshold, warmup,
            cooldown in zip(args.ledits, scales, thresholds, warmups, cooldowns)]


def edit_ledits(args) -> int:
    """Edit ``--images`` with LEDITS++ on a Stable Diffusion 1.x / 2.x or SD-XL folder: each batch inverted
    (:func:`~diffkit.interop.ledits_pp.invert`, image i's forward noises from ``--seed`` + i) and edited
    (:func:`~diffkit.interop.ledits_pp.edit`) with the concepts of ``--ledits`` / ``--ledits-remove``; ``--mask``:
    the pipeline's ``user_mask`` (white = where the concepts act; binarised at 0.5 and taken to the latents' size
    nearest, :func:`~diffkit.latent_editing.latent_mask`, as diffusers' inpainting masks). Every other edit flag
    (``--prompt``, ``--strength``, ``--sampler``, ...): one line, before any weight is read or any folder is made."""
    import torch

    from ..config import resolve_device
    from ..images import check_image_folder, save_images
    from ..interop.kolors import is_kolors_folder
    from ..interop.ledits_pp import XL_MASK, MASKS, edit, invert
    from ..interop.sd_xl import is_sd_xl_folder
    from ..latent_editing import latent_mask
    from ..interop.stable_diffusion import is_stable_diffusion_folder, load_stable_diffusion
    from ..memory import batches_with_oom_retry
    from ._common import check_writable_dir, missing_dirs, removed_if_empty_on_failure
    from ._pixart import check_folder_edit_args
    from .edit import read_edit_inputs

    directory = args.checkpoint
    if not is_stable_diffusion_folder(directory) or is_kolors_folder(directory):
        raise DiffkitError(f"--ledits applies to a Stable Diffusion 1.x / 2.x or SD-XL folder (diffusers' {PIPELINE} "
                           f"/ {XL_PIPELINE}); {directory} is not one")
    xl = is_sd_xl_folder(directory)
    pipeline = XL_PIPELINE if xl else PIPELINE
    check_folder_edit_args(args, FLAGS, "SD-XL" if xl else "Stable Diffusion", TAKES,
                           f" with --ledits, which runs {pipeline}", prompted=False)
    concepts = ledits_concepts(args)
    steps = DEFAULT_STEPS if args.steps is None else args.steps
    skip = 0.15 if args.ledits_skip is None else check_range("--ledits-skip", args.ledits_skip, 0.0, 1.0)
    source_scale = 3.5 if args.ledits_source_scale is None else args.ledits_source_scale
    if args.ledits_source_scale is not None and args.ledits_source_prompt is None:
        raise DiffkitError("--ledits-source-scale goes with --ledits-source-prompt TEXT")
    check_float32("--ledits-source-scale", source_scale)
    if xl and args.ledits_source_prompt and not source_scale > 1:
        raise DiffkitError(f"--ledits-source-scale {source_scale:g} is not allowed on an SD-XL folder; allowed: > 1 "
                           f"({XL_PIPELINE} ignores the source prompt at s <= 1)")
    zero_noise = None if args.ledits_zero_noise_steps is None else \
        check_range("--ledits-zero-noise-steps", args.ledits_zero_noise_steps, 0, None, integer=True)
    images, files, mask_png = read_edit_inputs(args)  # --height / --width: resized as the pipeline's processor does
    count = len(files)
    out, device = args.out, resolve_device(args.device)
    new_dirs = missing_dirs(out)
    sd = load_stable_diffusion(directory, device, progress=args.progress, lora=args.lora,
                               textual_inversion=args.textual_inversion)
    from ..interop.ledits_pp import ledits_grid, ledits_scheduler
    ledits_grid(ledits_scheduler(sd)[1], steps, skip)  # the folder's scheduler and the step count: one line, first
    check_writable_dir(out)
    check_image_folder(out, count, prefix="edit")
    mask = args.ledits_mask or (XL_MASK if xl else MASKS[0])

    def run(start: int, n: int):
        inversion = invert(sd, images[start:start + n], steps, skip, source_prompt=args.ledits_source_prompt or "",
                           source_guidance_scale=source_scale, seed=args.seed + start, clip_skip=args.clip_skip,
                           zero_noise_steps=zero_noise, progress=args.progress)
        user_mask = None if mask_png is None else latent_mask(mask_png, inversion.latents.shape[2:])
        return (edit(sd, inversion, concepts, negative_prompt=args.negative_prompt, mask=mask,
                     clip_skip=args.clip_skip, user_mask=user_mask, progress=args.progress).clamp(-1, 1).cpu(),)

    with removed_if_empty_on_failure(new_dirs):  # a batch out of memory is halved and redrawn (seed + i)
        results = [edited for _, edited in batches_with_oom_retry(run, count, args.batch_size or 16)]
        save_images(torch.cat(results), out, prefix="edit")
    named = ", ".join(("-" if remove else "+") + repr(text) for text, remove in args.ledits)
    print(f"wrote {count} edited images to {out} (edit_00000.png ...; LEDITS++ as {pipeline} on {directory}: "
          f"{steps} steps, skip {skip:g}, {mask} masks, concepts {named})")
    return 0


__all__ = ["add_ledits_flags", "check_no_ledits_options", "edit_ledits", "ledits_concepts"]
