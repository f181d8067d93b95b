"""Does the opt-in bf16 Winograd path change training? Loss curves on MNIST (issue 8).

The same network, data order, noise and seed trained three ways: fp32, bf16 autocast with the
direct convolutions (the default), and bf16 with ``DIFFKIT_BF16_WINOGRAD=1`` (Winograd F(2x2, 3x3),
about twice the direct bf16 convolution's rounding error per layer; docs/models.md). The network
has 128 and 256 channels on 28x28 and 14x14 maps, so that the Winograd path's rule (from 128
channels, at least 64 pixels) takes its 3x3 convolutions. Prints the mean training loss over
windows of steps for each, and the gaps between the bf16 runs and the fp32 one, and writes
``benchmarks/out/winograd_bf16_training.json``. Each run is a fresh Trainer in this process.

``--seeds 0,1`` trains each way once per seed (initialisation, data order and noise) and also
reports the trained network's held-out loss: L_simple in fp32 on the first ``--heldout`` MNIST
test images, each at a fixed random timestep and noise (the same for every run), so that the
Winograd path's difference from the default bf16 path can be set against the spread between seeds.

    PYTHONPATH=. python benchmarks/winograd_bf16_training.py [--steps 300] [--seeds 0] [--heldout 1024]
        [--data-dir ../shared/data/mnist]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from diffkit.config import TrainConfig
from diffkit.data import load_dataset
from diffkit.losses import training_losses
from diffkit.models import winograd
from diffkit.training import Trainer

NETWORK = {"dataset": "mnist", "img_size": 28, "channel": 128, "channel_mult": [1, 2], "attn": [],
           "num_res_blocks": 1, "dropout": 0.0, "batch_size": 16, "lr": 2e-4, "grad_clip": 1.0,
           "ema_decay": 0.999, "T": 1000, "beta_1": 1e-4, "beta_T": 0.02, "save_every_epochs": 1000,
           "log_every": 10**9, "seed": 0}


def heldout_batches(data_dir: str, count: int, T: int, batch: int = 256):
    """(x0, t, noise) batches of the first ``count`` test images, timesteps and noise from seed 1234."""
    images = load_dataset("mnist", data_dir, img_size=NETWORK["img_size"], train=False).images[:count]
    images = images.float() / 127.5 - 1.0  # the data sets' [-1, 1] (data.InMemoryImageDataset)
    gen = torch.Generator().manual_seed(1234)
    t = torch.randint(0, T, (len(images),), generator=gen)
    noise = torch.randn(images.shape, generator=gen)
    return [(images[i:i + batch], t[i:i + batch], noise[i:i + batch]) for i in range(0, len(images), batch)]


def train(data_dir: str, steps: int, precision: str, bf16_winograd: bool, seed: int, heldout) -> tuple:
    """(training loss per step, held-out L_simple of the trained network in fp32)."""
    winograd.set_bf16_winograd_enabled(bf16_winograd)
    try:
        with tempfile.TemporaryDirectory() as out:
            cfg = TrainConfig.from_dict({**NETWORK, "data_dir": data_dir, "mixed_precision": precision,
                                         "max_steps": steps, "save_weight_dir": out, "seed": seed})
            trainer = Trainer(cfg, progress=False, log=lambda *_: None)
            curve = []
            for group in trainer._epoch_batches(0):
                loss = trainer.train_step(group)
                trainer.step += 1
                curve.append(float("nan") if loss is None else loss)
                if trainer.step >= steps:
                    break
    finally:
        winograd.set_bf16_winograd_enabled(False)
    trainer.model.eval()
    total = count = 0
    with torch.no_grad():
        for x0, t, noise in heldout:
            out = training_losses(trainer.forward, trainer.schedule, x0, t, noise)
            total += float(out.loss.sum())
            count += len(x0)
    return curve, total / count


def seed_list(text: str) -> list[int]:
    """``--seeds 0,1`` -> [0, 1]; a one-line argparse error otherwise."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}; allowed: comma-separated integers, e.g. 0,1") from None
    if any(seed < 0 for seed in seeds):
        raise argparse.ArgumentTypeError(f"{text!r}; allowed: seeds >= 0")
    return seeds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    parser.add_argument("--out", default="benchmarks/out/winograd_bf16_training.json")
    parser.add_argument("--seeds", type=seed_list, default=[0], help="comma-separated training seeds")
    parser.add_argument("--heldout", type=int, default=1024, help="MNIST test images for the held-out loss")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    heldout = heldout_batches(args.data_dir, args.heldout, NETWORK["T"])
    ways = {"fp32": ("no", False), "bf16": ("bf16", False), "bf16 + Winograd": ("bf16", True)}
    seeds = args.seeds
    results = {}
    for seed in seeds:
        for name, (precision, bf16_winograd) in ways.items():
            curve, held = train(args.data_dir, args.steps, precision, bf16_winograd, seed, heldout)
            results[(seed, name)] = {"curve": curve, "heldout": held}
            print(f"seed {seed}, {name}: held-out L_simple {held:.5f}", flush=True)
    windows = list(range(0, args.steps, args.window))
    rows = []
    for seed in seeds:
        runs = {name: results[(seed, name)]["curve"] for name in ways}
        print(f"\nseed {seed}: mean training loss per {args.window} steps (batch {NETWORK['batch_size']}, "
              "same data, noise and initialisation)")
        print("| steps | " + " | ".join(runs) + " | bf16 - fp32 | bf16 + Winograd - fp32 |")
        print("|---|" + "---:|" * (len(runs) + 2))
        for w in windows:
            means = {name: statistics.fmean(curve[w:w + args.window]) for name, curve in runs.items()}
            rows.append({"seed": seed, "steps": [w, w + args.window], **means})
            print(f"| {w}-{w + args.window} | " + " | ".join(f"{m:.4f}" for m in means.values())
                  + f" | {means['bf16'] - means['fp32']:+.4f} | {means['bf16 + Winograd'] - means['fp32']:+.4f} |")
    print(f"\nheld-out L_simple after {args.steps} steps ({args.heldout} MNIST test images, fp32 evaluation)")
    print("| seed | " + " | ".join(ways) + " |")
    print("|---|" + "---:|" * len(ways))
    for seed in seeds:
        print(f"| {seed} | " + " | ".join(f"{results[(seed, name)]['heldout']:.5f}" for name in ways) + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"network": NETWORK, "steps": args.steps, "seeds": seeds, "heldout_images": args.heldout,
                               "windows": rows,
                               "heldout": {f"{seed}/{name}": results[(seed, name)]["heldout"]
                                           for seed, name in results},
                               "curves": {f"{seed}/{name}": results[(seed, name)]["curve"] for seed, name in results}},
                              indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
