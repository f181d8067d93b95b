"""``diffkit upscale``: upscale low-resolution PNGs with a super-resolution checkpoint (docs/super_resolution.md).

The checkpoint is a model trained with ``--set super_res_from=S`` (improved-diffusion's
``SuperResModel``; SR3): it makes img_size x img_size images given S x S ones. ``--images`` is one
PNG or a folder of PNGs of S x S pixels (grey or RGB, converted to the model's channels). Each is
upscaled by sampling with the low-resolution image as the network's condition at every step, with
any sampler (``--sampler``, ``--steps`` or ``--nfe``, ``--eta``, ``--rtol`` / ``--atol``, ``--spacing`` /
``--final``, as ``diffkit sample`` takes them); an upscaler trained with conditioning
augmentation (``super_res_noise``) takes ``--noise-level K``, the level its inputs are noised to first
(Ho et al. 2021, Sec. 4.1; diffusers' ``noise_level`` k - 1: diffusers noises its level k with
``alphas_cumprod[k]``). The results go to ``--out`` as
``upscaled_00000.png``, ... in the order of the input files, with ``upscale_grid.png``: rows of the
inputs upsampled bilinearly, each followed by the row of their diffusion upscales. Output i depends
only on ``--seed`` + i, never on ``--batch-size``.

``--checkpoint`` may also be a Stable Diffusion x4 upscaler folder (``StableDiffusionUpscalePipeline``): then
``--prompt`` is required and ``--negative-prompt``, ``--guidance-scale`` (diffusers' s, default 9) and ``--noise-level``
(default 20) are the pipeline's (:mod:`._sd_upscale`, :mod:`diffkit.interop.sd_upscale`; docs/super_resolution.md).
A DeepFloyd IF stage-II folder (``IFSuperResolutionPipeline``) likewise, with its defaults (s = 4, noise level 250, 50
steps of its scheduler's ``ddpm`` loop; :mod:`._deepfloyd_if`, :mod:`diffkit.interop.deepfloyd_if`; docs/interop.md).
A Stable Diffusion x2 latent upscaler folder (``StableDiffusionLatentUpscalePipeline``) takes the same prompt flags
(``--guidance-scale 0``: the empty prompt, unguided) and no ``--noise-level`` (:mod:`._sd_latent_upscale`,
:mod:`diffkit.interop.sd_latent_upscale`; docs/interop.md). A latent-diffusion super-resolution folder
(``LDMSuperResolutionPipeline``, Rombach et al. 2022) takes no prompt flags: 4x on its scheduler's DDIM loop (100
steps), low-resolution sides multiples of 32 (:mod:`._ldm`, :mod:`diffkit.interop.ldm`; docs/interop.md).
"""
from __future__ import annotations

from pathlib import Path

from ._common import (add_lora_flags, add_network_flags, add_progress_flag, add_solver_flags, check_lora_flags,
                      check_output_file, check_writable_dir, eta_value, int_in, missing_dirs, path_arg,
                      peek_checkpoint, positive_int, removed_if_empty_on_failure, seed_int, tolerance_options)

GRID_NAME = "upscale_grid.png"


def register(sub) -> None:
    p = sub.add_parser("upscale", help="upscale low-resolution PNGs with a super-resolution checkpoint",
                       description=__doc__)
    p.add_argument("--checkpoint", type=path_arg,
                   required=True, help="a super-resolution .safetensors checkpoint or its run's "
                   "checkpoint folder (trained with --set super_res_from=S), or a Stable Diffusion x4 upscaler folder "
                   "or x2 latent upscaler folder (diffusers format), a DeepFloyd IF stage-II folder "
                   "(IFSuperResolutionPipeline), or a latent-diffusion LDMSuperResolutionPipeline folder")
    p.add_argument("--images", type=path_arg,
                   required=True, metavar="PNG|DIR", help="a PNG or a folder of PNGs of S x S pixels")
    p.add_argument("--out", type=path_arg,
                   required=True, metavar="DIR", help=f"folder for upscaled_00000.png, ... and {GRID_NAME}")
    p.add_argument("--sampler", help="see 'diffkit samplers' (default ddim; a DeepFloyd IF folder: its scheduler's "
                   "ddpm loop; a latent upscaler folder: euler on its scheduler's sigmas; an LDM folder: its "
                   "scheduler's DDIM / PNDM loop); NAME@SPACING:FINAL also sets the grid")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--steps", type=positive_int, help="sampling steps (default 50; an SD upscaler folder: 75)")
    g.add_argument("--nfe", type=positive_int, help="network evaluations to spend (picks the step count)")
    p.add_argument("--eta", type=eta_value, help="DDIM eta: a number >= 0 (0 = deterministic) or sigma_hat")
    add_solver_flags(p)
    p.add_argument("--noise-level", type=int_in(0, 10**6), metavar="K",
                   help="an upscaler trained with conditioning augmentation (super_res_noise): noise the inputs to "
                        "level K of its schedule first (0..its super_res_noise; default 0: as they are); a Stable "
                        "Diffusion x4 upscaler folder: the pipeline's noise_level (0..its max_noise_level; default "
                        "20); a DeepFloyd IF stage-II folder: its noise_level (0..999; default 250)")
    t = p.add_argument_group("Stable Diffusion x4 upscaler folders (StableDiffusionUpscalePipeline; docs/"
                             "super_resolution.md) and DeepFloyd IF stage-II folders (IFSuperResolutionPipeline; "
                             "docs/interop.md)")
    t.add_argument("--prompt", dest="prompts", action="append", metavar="TEXT",
                   help="the text every image is upscaled with; repeat it once per image (in the files' order) for "
                        "one each (required for such a folder)")
    t.add_argument("--negative-prompt", metavar="TEXT",
                   help="the null condition of classifier-free guidance, for every image (default: the empty prompt)")
    t.add_argument("--guidance-scale", type=float, metavar="S",
                   help="classifier-free guidance, diffusers' s >= 1 (1 = none; default 9, the pipeline's; IF: 4)")
    p.add_argument("--seed", type=seed_int, default=0,
                   help="output i uses seed + i (independent of batch size; default 0)")
    p.add_argument("--batch-size", type=int_in(1, 65536), default=16, help="images per batch (default 16)")
    p.add_argument("--nrow", type=int_in(1, 1024), default=8, help="images per grid row (default 8)")
    add_network_flags(p)
    add_lora_flags(p)
    add_progress_flag(p)
    p.set_defaults(func=run)


def super_res_description(checkpoint) -> tuple[dict, int]:
    """(U-Net description, largest conditioning-augmentation level: 0 = none) of a super-resolution
    checkpoint, read from its header alone; a one-line error for any other checkpoint."""
    from ..errors import DiffkitError
    meta = peek_checkpoint(checkpoint)
    if meta is None:
        if not Path(checkpoint).exists():
            raise DiffkitError(f"--checkpoint {str(checkpoint)!r} does not exist")
        raise DiffkitError(f"--checkpoint {str(checkpoint)!r} is not a diffkit .safetensors checkpoint; diffkit "
                           f"upscale takes a super-resolution model trained with --set super_res_from=S")
    unet = meta.get("unet") or {}
    if unet.get("low_res_size") is None:
        raise DiffkitError(f"{checkpoint} is not a super-resolution model (trained without super_res_from); "
                           f"train one with --set super_res_from=S (docs/super_resolution.md)")
    return unet, (meta.get("config") or {}).get("super_res_noise") or 0


def comparison_grid(rows: list, nrow: int):
    """One tensor of the images of ``rows`` (equal-shaped batches) interleaved in chunks of ``nrow``:
    chunk k of rows[0], chunk k of rows[1], ..., so that :func:`diffkit.images.save_grid` with
    ``nrow`` shows each chunk's rows one under the other."""
    import torch
    parts = []
    for start in range(0, rows[0].shape[0], nrow):
        chunk = [r[start:start + nrow] for r in rows]
        pad = nrow - chunk[0].shape[0]  # the last chunk: padded with white so the rows stay aligned
        if pad and rows[0].shape[0] > nrow:
            chunk = [torch.cat([c, torch.ones(pad, *c.shape[1:], dtype=c.dtype)]) for c in chunk]
        parts.extend(chunk)
    return torch.cat(parts)


def upscale_images(denoiser, low_res, *, sampler="ddim", steps=None, nfe=None, seed=0, batch_size=16, device="cpu",
                   progress=False, **options):
    """(B, C, img_size, img_size) upscales of ``low_res`` in [-1, 1], clamped, on the CPU; image i
    uses seed + i; a batch out of accelerator memory is halved and redrawn."""
    import torch

    from ..memory import batches_with_oom_retry
    from ..super_res import upscale

    def draw(start: int, n: int):
        batch = low_res[start:start + n].to(device)
        return (upscale(denoiser, batch, sampler, steps, nfe=nfe, seed=seed + start, progress=progress,
                        **options).clamp(-1, 1).cpu(),)

    return torch.cat([x for _, x in batches_with_oom_retry(draw, low_res.shape[0], batch_size)])


def training_grid(trainer, out, num: int = 16, progress: bool = True):
    """The end of ``diffkit train`` for an upscaler: the first ``num`` training images area-downsampled
    and upscaled with the run's sampler and sample_steps (the latest EMA weights), written to ``out``
    as rows of: the low-resolution input upsampled bilinearly, the diffusion upscale, the original."""
    import torch

    from ..images import save_grid
    from ..loading import load_denoiser
    from ..super_res import downsample, upsample
    cfg = trainer.cfg
    originals = torch.stack([trainer.dataset[i][0] for i in range(min(num, len(trainer.dataset)))]).float()
    low_res = downsample(originals, cfg.super_res_from)
    denoiser = load_denoiser(Path(cfg.save_weight_dir) / "latest.safetensors", device=trainer.device)
    upscaled = upscale_images(denoiser, low_res, sampler=cfg.sampler, steps=cfg.sample_steps, device=trainer.device,
                              progress=progress)
    nrow = min(cfg.nrow, len(originals))
    path = save_grid(comparison_grid([upsample(low_res, originals.shape[-2:]).clamp(-1, 1), upscaled, originals],
                                     nrow), out, nrow=nrow)
    trainer.log(f"wrote {path}: rows of {len(originals)} training images area-downsampled to "
                f"{cfg.super_res_from}x{cfg.super_res_from} (shown upsampled bilinearly), upscaled ({cfg.sampler}, "
                f"{cfg.sample_steps} steps), original")
    return path


def run(args) -> int:
    from ..config import resolve_device
    from ..denoiser import autocast
    from ..errors import DiffkitError
    from ..images import check_image_folder, save_grid, save_images
    from ..loading import load_denoiser
    from ..sampling import check_eta, plan, resolve_sampler
    from ..super_res import check_noise_level, upsample
    from .edit import read_pngs

    check_lora_flags(args)
    from ..interop.deepfloyd_if import is_deepfloyd_if_folder
    if is_deepfloyd_if_folder(args.checkpoint):  # a DeepFloyd IF stage-II folder (._deepfloyd_if)
        from ._deepfloyd_if import upscale_if
        return upscale_if(args)
    from ..interop.ldm import ldm_kind
    if ldm_kind(args.checkpoint):  # a latent-diffusion folder: LDMSuperResolutionPipeline's (._ldm)
        from ._ldm import upscale_ldm
        return upscale_ldm(args)
    from ..interop.stable_diffusion import is_stable_diffusion_folder
    from ..interop.sd_latent_upscale import is_latent_upscale_folder
    from ._sd_upscale import refuse_prompt_flags, upscale_folder
    if is_latent_upscale_folder(args.checkpoint):  # a Stable Diffusion x2 latent upscaler (._sd_latent_upscale)
        from ._sd_latent_upscale import latent_upscale_folder
        return latent_upscale_folder(args)
    args.sampler = args.sampler or "ddim"
    from ..interop.marigold import refuse_marigold_folder
    refuse_marigold_folder(args.checkpoint, "upscaling")  # it predicts depth / normals / intrinsics (diffkit predict)
    if is_stable_diffusion_folder(args.checkpoint):  # a Stable Diffusion x4 upscaler (._sd_upscale)
        return upscale_folder(args)
    refuse_prompt_flags(args)
    args.noise_level = args.noise_level or 0
    info, spacing, final = resolve_sampler(args.sampler, args.spacing, args.final)  # fails before anything is read
    check_eta(info.name, args.eta)
    options = {} if args.eta is None else {"eta": args.eta}
    options.update(tolerance_options(args, info))
    unet, top_level = super_res_description(args.checkpoint)
    check_noise_level(args.noise_level, top_level, f"--noise-level {args.noise_level}")
    channels, low, side = unet["in_channels"], unet["low_res_size"], unet["img_size"]
    out, images_path = Path(args.out), Path(args.images)
    if out.exists() and images_path.is_dir() and out.resolve() == images_path.resolve():
        raise DiffkitError(f"--out {args.out!r} is the --images folder; give another folder")
    images, files = read_pngs(images_path, "L" if channels == 1 else "RGB")
    if images.shape[2:] != (low, low):
        raise DiffkitError(f"the images are {images.shape[3]}x{images.shape[2]}; this model upscales {low}x{low} "
                           f"images to {side}x{side}: give {low}x{low} PNGs")
    device = resolve_device(args.device)
    autocast(args.mixed_precision, device.type)  # fp16 off CUDA fails here, before any output folder is made
    denoiser = load_denoiser(args.checkpoint, use_ema=args.ema, device=str(device),
                             mixed_precision=args.mixed_precision, compile=args.compile, lora=args.lora,
                             lora_any_base=args.lora_any_base)
    plan(denoiser, args.sampler, args.steps, args.nfe, spacing, final, options=dict(options))  # checked now
    new_dirs = missing_dirs(out)
    check_writable_dir(out)
    check_image_folder(out, len(files), prefix="upscaled")
    grid_file = check_output_file(out / GRID_NAME, "upscale grid", ".png")
    with removed_if_empty_on_failure(new_dirs):
        upscaled = upscale_images(denoiser, images, sampler=args.sampler, steps=args.steps, nfe=args.nfe,
                                  seed=args.seed, batch_size=args.batch_size, device=device, progress=args.progress,
                                  spacing=spacing, final=final,
                                  **options, **({"noise_level": args.noise_level} if top_level else {}))
        save_images(upscaled, out, prefix="upscaled")
        save_grid(comparison_grid([upsample(images, (side, side)).clamp(-1, 1), upscaled], args.nrow), grid_file,
                  nrow=min(args.nrow, len(files)))
    how = [] if info.adaptive else [f"{args.nfe} NFE" if args.nfe else f"{args.steps or 50} steps"]
    how += [f"inputs noised to level {args.noise_level}"] if top_level else []
    print(f"wrote {len(files)} upscaled images ({low}x{low} -> {side}x{side}) to {out} (upscaled_00000.png ...; "
          f"{GRID_NAME}); " + ", ".join([args.sampler] + how))
    return 0
