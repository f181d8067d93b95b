"""Does the opt-in bf16 Winograd path change training? Loss curves on MNIST (issue 8).

The same network, data order, noise and seed trained three ways: fp32, bf16 autocast with the
direct convolutions (the default), and bf16 with ``DIFFKIT_BF16_WINOGRAD=1`` (Winograd F(2x2, 3x3),
about twice the direct bf16 convolution's rounding error per layer; docs/models.md). The network
has 128 and 256 channels on 28x28 and 14x14 maps, so that the Winograd path's rule (from 128
channels, at least 64 pixels) takes its 3x3 convolutions. Prints the mean training loss over
windows of steps for each, and the gaps between the bf16 runs and the fp32 one, and writes
``benchmarks/out/winograd_bf16_training.json``. Each run is a fresh Trainer in this process.

    PYTHONPATH=. python benchmarks/winograd_bf16_training.py [--steps 300] [--data-dir ../shared/data/mnist]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from diffkit.config import TrainConfig
from diffkit.models import winograd
from diffkit.training import Trainer

NETWORK = {"dataset": "mnist", "img_size": 28, "channel": 128, "channel_mult": [1, 2], "attn": [],
           "num_res_blocks": 1, "dropout": 0.0, "batch_size": 16, "lr": 2e-4, "grad_clip": 1.0,
           "ema_decay": 0.999, "T": 1000, "beta_1": 1e-4, "beta_T": 0.02, "save_every_epochs": 1000,
           "log_every": 10**9, "seed": 0}


def losses(data_dir: str, steps: int, precision: str, bf16_winograd: bool) -> list[float]:
    winograd.set_bf16_winograd_enabled(bf16_winograd)
    try:
        with tempfile.TemporaryDirectory() as out:
            cfg = TrainConfig.from_dict({**NETWORK, "data_dir": data_dir, "mixed_precision": precision,
                                         "max_steps": steps, "save_weight_dir": out})
            trainer = Trainer(cfg, progress=False, log=lambda *_: None)
            curve = []
            for group in trainer._epoch_batches(0):
                loss = trainer.train_step(group)
                trainer.step += 1
                curve.append(float("nan") if loss is None else loss)
                if trainer.step >= steps:
                    break
            return curve
    finally:
        winograd.set_bf16_winograd_enabled(False)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    parser.add_argument("--out", default="benchmarks/out/winograd_bf16_training.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = {"fp32": losses(args.data_dir, args.steps, "no", False),
            "bf16": losses(args.data_dir, args.steps, "bf16", False),
            "bf16 + Winograd": losses(args.data_dir, args.steps, "bf16", True)}
    windows = list(range(0, args.steps, args.window))
    print(f"mean training loss per {args.window} steps (batch {NETWORK['batch_size']}, same data, noise and seed)")
    print("| steps | " + " | ".join(runs) + " | bf16 - fp32 | bf16 + Winograd - fp32 |")
    print("|---|" + "---:|" * (len(runs) + 2))
    rows = []
    for w in windows:
        means = {name: statistics.fmean(curve[w:w + args.window]) for name, curve in runs.items()}
        rows.append({"steps": [w, w + args.window], **means})
        print(f"| {w}-{w + args.window} | " + " | ".join(f"{m:.4f}" for m in means.values())
              + f" | {means['bf16'] - means['fp32']:+.4f} | {means['bf16 + Winograd'] - means['fp32']:+.4f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"network": NETWORK, "steps": args.steps, "windows": rows, "curves": runs}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
