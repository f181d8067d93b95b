"""``diffkit train-autoencoder``: train the latent autoencoder of latent diffusion.

The LDM first stage (Rombach et al. 2022, Sec. 3.1): a KL-regularised (``--regularizer kl``) or
vector-quantised (``vq``) encoder-decoder that downsamples by ``--factor`` f (4, 8 or 16; or give
``--channel-mult``). Loss: L1/L2 reconstruction + ``--kl-weight`` * KL (or the VQ loss), plus a
PatchGAN hinge loss with the adaptive VQGAN weight from ``--disc-start`` on. Prints the final
losses, the reconstruction PSNR and the latent scale factor stored in the checkpoint
(see docs/latent.md).
"""
from __future__ import annotations

from pathlib import Path

from ._common import (IMAGE_DATASETS, add_progress_flag, check_output_file, dataset_arg, int_list, missing_dirs,
                      non_negative_float, path_arg, positive_int, removed_if_empty_on_failure)

# Downsampling factor f -> channel_mult (f = 2 ** (levels - 1)); f=4 and f=8 as LDM's KL-f4 / KL-f8.
FACTOR_MULTS = {1: [1], 2: [1, 2], 4: [1, 2, 2], 8: [1, 2, 2, 4], 16: [1, 2, 2, 4, 4]}


def _non_negative_int(text: str) -> int:
    from ._common import int_in, MAX_COUNT
    return int_in(0, MAX_COUNT)(text)


def register(sub) -> None:
    p = sub.add_parser("train-autoencoder", help="train the latent autoencoder (KL or VQ) for latent diffusion",
                       description=__doc__)
    p.add_argument("--dataset", type=dataset_arg(IMAGE_DATASETS),
                   default="digits", help="digits (default), mnist, fashion-mnist, cifar10, folder")
    p.add_argument("--data-dir", type=path_arg, help="folder with the data set files")
    p.add_argument("--img-size", type=positive_int, help="image side (default: the data set's own); a multiple of f")
    p.add_argument("--in-channels", type=int, choices=(1, 3),
                   help="1 (grey) or 3 (RGB): convert the images (default: the data set's own)")
    p.add_argument("--out", type=path_arg,
                   default="runs/autoencoder/autoencoder.safetensors",
                   help="checkpoint file to write (default %(default)s)")
    p.add_argument("--steps", type=positive_int, default=1000, help="optimiser steps (default 1000)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per step (default 32)")
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate (default 2e-3)")
    p.add_argument("--regularizer", default="kl", help="kl (default) or vq")
    p.add_argument("--factor", type=int, help="downsampling factor f: 4 (default), 8 or 16 (sets --channel-mult)")
    p.add_argument("--channel-mult", type=int_list, help="width multiplier per level, e.g. 1,2,2 (f=4)")
    p.add_argument("--channel", type=positive_int, default=32, help="base width (default 32)")
    p.add_argument("--num-res-blocks", type=positive_int, default=1, help="residual blocks per level (default 1)")
    p.add_argument("--latent-channels", type=positive_int, default=4, help="latent channels c (default 4)")
    p.add_argument("--no-attn-middle", dest="attn_middle", action="store_false",
                   help="no self-attention in the bottleneck")
    p.add_argument("--codebook-size", type=positive_int, help="VQ codebook entries (default 256)")
    p.add_argument("--commitment-beta", type=non_negative_float, help="VQ-VAE eq. 3 beta (default 0.25)")
    p.add_argument("--kl-weight", type=non_negative_float, help="KL weight (default 1e-6, LDM)")
    p.add_argument("--recon-loss", default="l2", help="l2 (default) or l1 (LDM's choice)")
    p.add_argument("--disc-start", type=_non_negative_int,
                   help="step from which the PatchGAN discriminator is on (default: off)")
    p.add_argument("--disc-weight", type=non_negative_float, default=0.5,
                   help="factor on the adaptive GAN weight (default 0.5)")
    p.add_argument("--eval-images", type=_non_negative_int, default=1000,
                   help="images for the final PSNR (test split where there is one; default 1000)")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="the random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, mps")
    add_progress_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    with removed_if_empty_on_failure(missing_dirs(Path(args.out).parent)):  # a failed run leaves no empty folder
        return _run(args)


def _run(args) -> int:
    from ..autoencoder_training import AutoencoderTrainConfig, load_eval_dataset, train_autoencoder
    from ..config import resolve_device
    from ..errors import DiffkitError, check_choice

    if args.factor is not None and args.channel_mult is not None:
        raise DiffkitError("give --factor or --channel-mult, not both")
    if args.factor is not None:
        check_choice("factor", args.factor, sorted(FACTOR_MULTS))
    mult = args.channel_mult if args.channel_mult is not None else FACTOR_MULTS[args.factor or 4]
    check_choice("regularizer", args.regularizer, ["kl", "vq"])
    own = {"kl": ["--kl-weight"], "vq": ["--codebook-size", "--commitment-beta"]}
    for flag, value in (("--kl-weight", args.kl_weight), ("--codebook-size", args.codebook_size),
                        ("--commitment-beta", args.commitment_beta)):
        if value is not None and flag not in own[args.regularizer]:
            raise DiffkitError(f"{flag} goes with --regularizer {'kl' if flag == '--kl-weight' else 'vq'}; this "
                               f"autoencoder is {args.regularizer}")
    args.kl_weight = 1e-6 if args.kl_weight is None else args.kl_weight
    args.codebook_size = 256 if args.codebook_size is None else args.codebook_size
    args.commitment_beta = 0.25 if args.commitment_beta is None else args.commitment_beta
    cfg = AutoencoderTrainConfig(
        dataset=args.dataset, data_dir=args.data_dir, img_size=args.img_size, in_channels=args.in_channels,
        batch_size=args.batch_size,
        steps=args.steps, lr=args.lr, kl_weight=args.kl_weight, recon_loss=args.recon_loss,
        disc_start=args.disc_start, disc_weight=args.disc_weight, seed=args.seed, device=args.device,
        out=args.out, eval_images=args.eval_images, channel=args.channel, channel_mult=mult,
        num_res_blocks=args.num_res_blocks, latent_channels=args.latent_channels, regularizer=args.regularizer,
        codebook_size=args.codebook_size, commitment_beta=args.commitment_beta, attn_middle=args.attn_middle)
    resolve_device(args.device)
    check_output_file(args.out, "--out", ".safetensors", writes="autoencoder")
    from ..data import load_dataset
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.img_size, train=True, channels=cfg.in_channels)
    model_cfg = cfg.model_config(data.channels)
    latent = model_cfg.latent_shape(data.img_size)
    print(f"training a {cfg.regularizer.upper()} autoencoder (f={model_cfg.downsampling_factor}, latent "
          f"{'x'.join(map(str, latent))}) on {cfg.dataset} ({len(data)} images, {data.img_size}x{data.img_size}) "
          f"for {cfg.steps} steps", flush=True)
    eval_data = load_eval_dataset(cfg)
    result = train_autoencoder(cfg, data, progress=args.progress, eval_dataset=eval_data)
    losses = ", ".join(f"{k} {v:.4g}" for k, v in result.losses.items())
    print(f"trained {result.steps} steps in {result.seconds:.0f} s; final losses (running mean): {losses}")
    n_eval = min(cfg.eval_images, len(eval_data if eval_data is not None else data))
    measured = (f"reconstruction PSNR {result.psnr:.2f} dB on {n_eval} {result.psnr_split} images" if n_eval
                else "no reconstruction PSNR (--eval-images 0)")
    print(f"{measured}; latent scale factor {result.scale_factor:.5f}; checkpoint {result.path}")
    if result.codebook:
        print(f"codebook: {result.codebook['used']} of {result.codebook['size']} entries used, perplexity "
              f"{result.codebook['perplexity']:.1f} (on the PSNR images; a small share means codebook collapse)")
    return 0
