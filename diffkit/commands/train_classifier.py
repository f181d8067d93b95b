"""``diffkit train-classifier``: train the noisy-image classifier for classifier guidance.

The classifier sees x_t ~ q(x_t | x_0) with t uniform over the diffusion model's T steps and is
trained with cross-entropy (Dhariwal & Nichol 2021, Sec. 4.1). ``--like CKPT`` copies the data
set, image size, channels and noise schedule from a diffusion checkpoint, which is what guidance needs;
without it the flags say them. Use the result with
``diffkit sample --classifier OUT --classifier-scale S``.
"""
from __future__ import annotations

from pathlib import Path

from ..config import MAX_TIMESTEPS
from ._common import (IMAGE_DATASETS, add_progress_flag, check_output_file, dataset_arg, int_in, int_list,
                      missing_dirs, path_arg, positive_int, removed_if_empty_on_failure, seed_int)


def register(sub) -> None:
    p = sub.add_parser("train-classifier", help="train a noisy-image classifier for classifier guidance",
                       description=__doc__)
    p.add_argument("--like", type=path_arg, metavar="CKPT",
                   help="diffusion checkpoint whose data set, image size, channels and schedule to use")
    p.add_argument("--dataset", type=dataset_arg(IMAGE_DATASETS),
                   help="digits (default), mnist, fashion-mnist, cifar10, folder")
    p.add_argument("--data-dir", type=path_arg, help="folder with the data set files")
    p.add_argument("--img-size", type=positive_int, help="image side (default: the data set's own)")
    p.add_argument("--in-channels", type=int, choices=(1, 3),
                   help="1 (grey) or 3 (RGB): convert the images (default: the data set's own)")
    p.add_argument("--schedule", help="noise schedule: linear (default), cosine, scaled_linear, sigmoid")
    p.add_argument("--T", dest="T", type=int_in(1, MAX_TIMESTEPS), help=f"diffusion steps, 1..{MAX_TIMESTEPS} "
                   f"(default 1000; the T of the model it will guide)")
    p.add_argument("--out", type=path_arg,
                   default="runs/classifier/classifier.safetensors",
                   help="checkpoint file to write (default %(default)s)")
    p.add_argument("--steps", type=positive_int, default=1000, help="optimiser steps (default 1000)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per step (default 64)")
    p.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (default 3e-4)")
    p.add_argument("--channel", type=positive_int, default=32, help="base width of the trunk (default 32)")
    p.add_argument("--channel-mult", type=int_list, default=[1, 2, 2], help="e.g. 1,2,2 (default)")
    p.add_argument("--attn", type=int_list, default=[1], help="levels with self-attention, e.g. 1 (default)")
    p.add_argument("--num-res-blocks", type=positive_int, default=1, help="residual blocks per level (default 1)")
    p.add_argument("--seed", type=seed_int, default=0, help="the random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, mps")
    add_progress_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    with removed_if_empty_on_failure(missing_dirs(Path(args.out).parent)):  # a failed run leaves no empty folder
        return _run(args)


def _run(args) -> int:
    from ..checkpoint import check_not_other_kind, load_checkpoint
    from ..classifier_training import HELDOUT_IMAGES, ClassifierTrainConfig, train_classifier
    from ..config import resolve_device
    from ..data import SPLIT_DATASETS, load_dataset
    from ..errors import DiffkitError
    from ..schedule import NoiseSchedule

    resolve_device(args.device)
    check_output_file(args.out, "--out", ".safetensors", writes="classifier")
    dataset, data_dir, img_size, in_channels = args.dataset, args.data_dir, args.img_size, args.in_channels
    if args.like:
        if args.schedule or args.T:
            raise DiffkitError("--like takes the schedule from the checkpoint; drop --schedule/--T")
        tensors, meta = load_checkpoint(args.like)
        check_not_other_kind(args.like, meta, "a diffusion training checkpoint")
        if "schedule.betas" not in tensors or "config" not in meta:
            raise DiffkitError(f"{args.like} is not a diffusion training checkpoint (no config/schedule)")
        from ..models.network import check_image_model
        check_image_model(meta.get("unet") or {}, "classifier guidance")
        if meta.get("latent") or meta.get("text"):
            raise DiffkitError(f"{args.like} is a latent or text-conditional model; classifier guidance is for "
                               f"class-conditional or unconditional pixel-space models")
        schedule = NoiseSchedule(tensors["schedule.betas"])
        cfg = meta["config"]
        like_size = meta.get("unet", {}).get("img_size") or cfg.get("img_size")
        like_channels = meta.get("unet", {}).get("in_channels") or cfg.get("in_channels")
        for flag, given, own in (("--dataset", dataset, cfg.get("dataset")), ("--img-size", img_size, like_size),
                                 ("--in-channels", in_channels, like_channels)):
            if given is not None and own is not None and given != own:  # the classifier must see the model's images
                raise DiffkitError(f"{flag} {given} differs from the checkpoint's {own}; --like takes it from the "
                                   f"checkpoint: drop {flag}")
        dataset = dataset or cfg.get("dataset")
        data_dir = data_dir or cfg.get("data_dir")
        img_size = img_size or like_size
        in_channels = in_channels or like_channels
    else:
        schedule = NoiseSchedule.from_name(args.schedule or "linear", args.T or 1000)
    ccfg = ClassifierTrainConfig(dataset=dataset or "digits", data_dir=data_dir, img_size=img_size,
                                 in_channels=in_channels,
                                 channel=args.channel, channel_mult=args.channel_mult, attn=args.attn,
                                 num_res_blocks=args.num_res_blocks, steps=args.steps, batch_size=args.batch_size,
                                 lr=args.lr, seed=args.seed, device=args.device)
    data = load_dataset(ccfg.dataset, ccfg.data_dir, ccfg.img_size, train=True, channels=ccfg.in_channels)
    print(f"training a noisy classifier on {ccfg.dataset} ({len(data)} images, {data.num_classes} classes, "
          f"{data.img_size}x{data.img_size}) for {ccfg.steps} steps; schedule T={schedule.num_timesteps}")
    heldout = None
    if ccfg.dataset in SPLIT_DATASETS:  # accuracy on images it never saw
        heldout = load_dataset(ccfg.dataset, ccfg.data_dir, data.img_size, train=False, channels=ccfg.in_channels)
    result = train_classifier(ccfg, schedule, data, out=args.out, progress=args.progress, heldout=heldout)
    print(f"trained in {result.seconds:.0f} s; noisy-batch loss {result.final_loss:.4f}, accuracy "
          f"{result.final_accuracy:.3f} (all t mixed); checkpoint {result.checkpoint}")
    if result.heldout_accuracy:
        print(f"held-out accuracy ({min(len(heldout), HELDOUT_IMAGES)} test images): " +
              ", ".join(f"t={t}: {a:.3f}" for t, a in result.heldout_accuracy.items()))
    return 0
