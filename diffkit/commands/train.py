"""``diffkit train``: train a U-Net (DDPM Algorithm 1), then sample a grid."""
from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_progress_flag, check_writable_dir, positive_int


def register(sub) -> None:
    p = sub.add_parser("train", help="train a diffusion model", description=__doc__)
    p.add_argument("--config", help="TOML/YAML/JSON file (the seed's modelConfig keys are accepted verbatim)")
    p.add_argument("--dataset", help="digits (embedded default), mnist, fashion-mnist, cifar10, folder")
    p.add_argument("--data-dir", help="folder with the data set files")
    p.add_argument("--out", help="run folder: checkpoints in OUT/checkpoints, samples in OUT/samples")
    p.add_argument("--steps", type=positive_int, help="optimiser steps (overrides epoch)")
    p.add_argument("--epochs", type=positive_int, help="epochs (the seed's 'epoch')")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--conditional", action="store_true", help="class-conditional (label dropout p_uncond)")
    p.add_argument("--resume", help="checkpoint to resume from (the seed's training_load_weight)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any config field, e.g. --set lr=2e-4 --set channel_mult=[1,2,2]")
    p.add_argument("--no-sample", dest="sample", action="store_false", help="skip the sample grid at the end")
    p.add_argument("--nproc", type=positive_int, default=1,
                   help="processes for data-parallel training (re-runs itself under torchrun; "
                        "batch_size is per process)")
    add_progress_flag(p)
    p.set_defaults(func=run)


def config_from_args(args):
    """TrainConfig from --config plus flags plus --set overrides, validated."""
    from ..config import TrainConfig, apply_overrides
    cfg = TrainConfig.from_file(args.config) if args.config else TrainConfig()
    flags = {"dataset": args.dataset, "data_dir": args.data_dir, "max_steps": args.steps,
             "epoch": args.epochs, "batch_size": args.batch_size, "device": args.device,
             "training_load_weight": args.resume}
    if args.conditional:
        flags["conditional"] = True
    if args.out:
        flags["save_weight_dir"] = str(Path(args.out) / "checkpoints")
        flags["sampled_dir"] = str(Path(args.out) / "samples")
    data = cfg.to_dict()
    data.update({k: v for k, v in flags.items() if v is not None})
    cfg = TrainConfig.from_dict(data)
    return apply_overrides(cfg, args.overrides)


def run(args) -> int:
    from ..config import resolve_device
    cfg = config_from_args(args)
    if args.nproc > 1:
        return relaunch_with_torchrun(args.nproc)
    resolve_device(cfg.device)
    check_writable_dir(cfg.save_weight_dir, "checkpoint directory")
    if args.sample:
        check_writable_dir(cfg.sampled_dir, "sample directory")
    return train_and_sample(cfg, progress=args.progress, sample=args.sample)


def train_and_sample(cfg, progress: bool = True, sample: bool = True, num_samples: int = 64) -> int:
    from ..training import Trainer
    trainer = Trainer(cfg, progress=progress)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    trainer.log(f"training {n_params / 1e6:.2f}M-parameter U-Net on {cfg.dataset} ({len(trainer.dataset)} images, "
          f"{tuple(trainer.dataset[0][0].shape)}) for {trainer.total_steps} steps on {trainer.device}")
    result = trainer.run()
    if not trainer.dist.is_main:
        return 0
    trainer.log(f"trained {result.steps} steps in {result.seconds:.0f} s ({result.images_per_second:.0f} images/s); "
          f"final loss {result.final_loss:.4f}; checkpoint {result.checkpoint}")
    if sample:
        from .sample import sample_to_files
        sample_to_files(Path(cfg.save_weight_dir) / "latest.safetensors", sampler=cfg.sampler,
                        steps=cfg.sample_steps, num=num_samples, nrow=cfg.nrow,
                        out=Path(cfg.sampled_dir) / cfg.sampledImgName,
                        noise_out=Path(cfg.sampled_dir) / cfg.sampledNoisyImgName,
                        device=str(trainer.device), progress=progress)
    return 0


def relaunch_with_torchrun(nproc: int) -> int:
    """Run this same command under ``torchrun --standalone --nproc_per_node nproc``."""
    import subprocess
    import sys
    argv = sys.argv[1:]
    cleaned, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        cleaned.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "diffkit", *cleaned]
    print("running:", " ".join(cmd), flush=True)
    return subprocess.call(cmd)
