"""``diffkit sample``: draw an image grid from a checkpoint with any sampler.

Sample i depends only on ``--seed`` + i (per-sample generators), never on ``--batch-size``; the
same command gives the same PNG bytes run after run on the CPU. A legacy plain state dict
(``ckpt_199.pt``) needs ``--config`` with the config it was trained with (the seed's modelConfig).
"""
from __future__ import annotations

from pathlib import Path

from ._common import add_progress_flag, check_writable_dir, non_negative_float, positive_int, seed_int


def register(sub) -> None:
    p = sub.add_parser("sample", help="sample images from a checkpoint", description=__doc__)
    p.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint or a run's checkpoint folder")
    p.add_argument("--config", help="for a legacy .pt state dict only: the TOML/YAML/JSON training config "
                                    "(the seed's modelConfig) that describes its U-Net and schedule")
    p.add_argument("--sampler", default="ddim", help="see 'diffkit samplers' (default ddim)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--steps", type=positive_int, help="sampling steps (default 50)")
    g.add_argument("--nfe", type=positive_int, help="network evaluations to spend (picks the step count)")
    p.add_argument("--eta", type=non_negative_float, help="DDIM eta (0 = deterministic)")
    p.add_argument("--spacing", help="time grid: linear, quadratic, leading, trailing, linspace, karras, logsnr")
    p.add_argument("--num", type=positive_int, default=64, help="number of images (default 64)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass")
    p.add_argument("--nrow", type=positive_int, help="grid columns (default: the checkpoint's nrow)")
    p.add_argument("--out", help="grid PNG (default: the checkpoint's sampled_dir/sampledImgName)")
    p.add_argument("--noise-out", help="grid PNG of the starting noise (default: beside --out, sampledNoisyImgName)")
    p.add_argument("--individual", help="also write each image as a PNG into this folder")
    p.add_argument("--seed", type=seed_int, default=0, help="sample i uses seed + i (independent of batch size)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-ema", dest="ema", action="store_false", help="use the raw weights, not the EMA")
    p.add_argument("--scale", type=positive_int, default=1, help="upscale the grid PNG by this factor")
    add_progress_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..config import resolve_device
    from ..samplers.registry import get_sampler
    info = get_sampler(args.sampler)  # validate before loading anything
    if args.nfe is not None:
        info.steps_for_nfe(args.nfe)
    options = {}
    if args.eta is not None:
        if args.sampler not in ("ddim",):
            from ..errors import DiffkitError
            raise DiffkitError(f"--eta applies to the ddim sampler, not {args.sampler!r}")
        options["eta"] = args.eta
    config = None
    if args.config:
        from ..config import TrainConfig
        config = TrainConfig.from_file(args.config)
    device = resolve_device(args.device)
    for path in (args.out, args.noise_out):
        if path:
            check_writable_dir(Path(path).parent or ".")
    if args.individual:
        check_writable_dir(args.individual)
    sample_to_files(args.checkpoint, sampler=args.sampler, steps=args.steps, nfe=args.nfe, num=args.num,
                    nrow=args.nrow, out=args.out, noise_out=args.noise_out, individual=args.individual,
                    seed=args.seed, device=str(device), use_ema=args.ema, batch_size=args.batch_size,
                    spacing=args.spacing, scale=args.scale, progress=args.progress, config=config, **options)
    return 0


def sample_to_files(checkpoint, *, sampler="ddim", steps=None, nfe=None, num=64, nrow=None, out=None,
                    noise_out=None, individual=None, seed=0, device="cpu", use_ema=True, batch_size=256,
                    spacing=None, scale=1, progress=True, config=None, **options):
    """Sample ``num`` images and write the grid, the noise grid and optionally single PNGs."""
    import torch

    from ..images import save_grid, save_images
    from ..loading import load_denoiser
    from ..noise import generators_from_seed, randn
    from ..sampling import sample

    denoiser = load_denoiser(checkpoint, use_ema=use_ema, device=device, config=config)
    cfg = denoiser.meta.get("config", {})
    nrow = nrow or cfg.get("nrow", 8)
    out = Path(out) if out else Path(cfg.get("sampled_dir", ".")) / cfg.get("sampledImgName", "samples.png")
    noise_out = Path(noise_out) if noise_out else out.parent / cfg.get("sampledNoisyImgName", "noise.png")
    unet = denoiser.meta["unet"]
    shape = (unet["in_channels"], unet["img_size"], unet["img_size"])
    noise = randn((num, *shape), generators_from_seed(seed, num), device=device)
    results = []
    for start in range(0, num, batch_size):
        chunk = noise[start:start + batch_size]
        gens = generators_from_seed(seed + 10_000_019 + start, chunk.shape[0])  # per-sample step noise
        results.append(sample(denoiser, chunk, sampler, steps, nfe=nfe, spacing=spacing, generator=gens,
                              progress=progress, **options).cpu())
    images = torch.cat(results)
    save_grid(noise.cpu().clamp(-1, 1), noise_out, nrow, scale)
    save_grid(images, out, nrow, scale)
    if individual:
        save_images(images, individual)
    print(f"wrote {out} ({num} samples, {sampler}, {denoiser.nfe} network evaluations) and {noise_out}")
    return images
