"""MNIST on a wall-clock budget: sample quality and likelihood of L_simple vs L_hybrid.

For each objective (``simple``: DDPM's L_simple with fixed variance; ``hybrid``: Improved DDPM's
L_simple + 0.001 L_vlb with a learned variance, Nichol & Dhariwal 2021 Sec. 3.1) a small U-Net
is trained on MNIST (read from ``--data-dir``, default ../shared/data/mnist beside the repository) for ``--minutes``
of wall-clock time each (default 30), then measured like benchmarks/demo_quality.py:

* FD-classifier (Frechet distance in the 128-d features of a small MNIST classifier trained here
  on the first 20000 training images) of ``--num`` samples against the 10000 test images, next
  to real training images (floor) and clipped Gaussian noise (ceiling);
* the classifier's mean max-softmax confidence on the samples;
* the test-set NLL in bits/dim, strided estimate (all t < 20, then every ``--nll-stride``-th t;
  its error against the full bound is measured in benchmarks/demo_quality.py and docs/evaluation.md).

Prints a table and writes benchmarks/out/mnist_quality.json. A benchmark, not a CI test:

    python benchmarks/mnist_quality.py                 # 2 x 30 minutes of training
    python benchmarks/mnist_quality.py --minutes 1     # quick check
    python benchmarks/mnist_quality.py --steps 1665 --device cuda   # the CPU models' step count, on a GPU
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffkit.config import TrainConfig, resolve_device  # noqa: E402
from diffkit.evaluation import (SampleScorer, nll_bits_per_dim, reference_images, strided_timesteps,  # noqa: E402
                                write_json)
from diffkit.loading import load_denoiser  # noqa: E402
from diffkit.metrics import evaluator_accuracy, train_evaluator  # noqa: E402
from diffkit.training import Trainer  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_quality import quality_rows  # noqa: E402

MNIST_CONFIG = {
    "dataset": "mnist", "img_size": 28, "channel": 32, "channel_mult": [1, 2, 2], "attn": [1],
    "num_res_blocks": 1, "dropout": 0.1, "batch_size": 64, "lr": 1e-3, "multiplier": 2.0,
    "warmup_fraction": 0.05, "grad_clip": 1.0, "ema_decay": 0.999, "ema_warmup": True, "T": 1000,
    "beta_1": 1e-4, "beta_T": 0.02, "save_every_epochs": 1000, "log_every": 50, "seed": 0,
    "max_steps": 10**7,
}
CALIBRATION_STEPS = 20


def train_for_steps(cfg: TrainConfig, steps: int) -> dict:
    """Train exactly ``steps`` steps (warm-up + cosine decay over them): a wall-clock run's model
    re-made on other hardware, e.g. the CPU models' 1665 steps on a GPU."""
    trainer = Trainer(cfg, progress=False, log=lambda *_: None)
    start = time.perf_counter()
    trainer.total_steps = steps
    result = trainer.run()
    return {"steps": result.steps, "seconds": time.perf_counter() - start, "final_loss": result.final_loss,
            "checkpoint": str(result.checkpoint)}


def train_for_minutes(cfg: TrainConfig, minutes: float) -> dict:
    """Train until ``minutes`` of wall-clock time are spent: a short calibration run measures the
    step rate, then the schedule (warm-up + cosine decay) is stretched over the steps that fit."""
    trainer = Trainer(cfg, progress=False, log=lambda *_: None)
    start = time.perf_counter()
    trainer.run(stop_at=CALIBRATION_STEPS)
    rate = CALIBRATION_STEPS / (time.perf_counter() - start)
    remaining = max(0.0, minutes * 60 - (time.perf_counter() - start))
    trainer.total_steps = CALIBRATION_STEPS + max(1, int(rate * remaining * 0.97))  # 3% for checkpoints
    result = trainer.run()
    return {"steps": result.steps, "seconds": time.perf_counter() - start, "final_loss": result.final_loss,
            "checkpoint": str(result.checkpoint)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="training time per objective (default 30)")
    p.add_argument("--steps", type=int, help="train exactly this many steps instead of --minutes")
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    p.add_argument("--losses", default="simple,hybrid", help="objectives to train (default simple,hybrid)")
    p.add_argument("--num", type=int, default=1000, help="samples per model (default 1000)")
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--nll-num", type=int, default=256, help="test images for the NLL (default 256)")
    p.add_argument("--nll-stride", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default=str(OUT / "mnist_quality.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    report: dict = {"benchmark": "mnist_quality", "device": str(device), "minutes_per_model": args.minutes,
                    "steps_per_model": args.steps,
                    "torch_threads": torch.get_num_threads(), "config": MNIST_CONFIG, "models": {}}
    train_images, train_labels = reference_images("mnist", args.data_dir, train=True, limit=20000)
    test_images, test_labels = reference_images("mnist", args.data_dir, train=False)
    start = time.perf_counter()
    net = train_evaluator(train_images, train_labels, 10, epochs=2, seed=0)
    report["classifier"] = {"train_images": len(train_images), "epochs": 2, "seconds": time.perf_counter() - start,
                            "test_accuracy": evaluator_accuracy(net, test_images, test_labels)}
    print(f"classifier: {report['classifier']['test_accuracy']:.4f} test accuracy")
    scorer = SampleScorer(["fd-classifier", "confidence"], test_images, evaluator=net, device=device)
    for loss in [s.strip() for s in args.losses.split(",") if s.strip()]:
        run_dir = OUT / f"mnist_{loss}"
        cfg = TrainConfig.from_dict({**MNIST_CONFIG, "data_dir": args.data_dir, "loss": loss,
                                     "learned_variance": loss == "hybrid", "device": str(device),
                                     "save_weight_dir": str(run_dir / "checkpoints"),
                                     "sampled_dir": str(run_dir / "samples")})
        training = train_for_steps(cfg, args.steps) if args.steps else train_for_minutes(cfg, args.minutes)
        print(f"{loss}: {training['steps']} steps in {training['seconds']:.0f} s, loss {training['final_loss']:.4f}")
        denoiser = load_denoiser(training["checkpoint"], device=device)
        quality = quality_rows(denoiser, scorer, train_images, args.num, sampler=args.sampler,
                               steps=args.sample_steps, seed=0, batch_size=250, device=device)
        ts = strided_timesteps(denoiser.schedule.num_timesteps, 20, args.nll_stride)
        nll = nll_bits_per_dim(denoiser, test_images[:args.nll_num].to(device), timesteps=ts, batch_size=256)
        nll.update(dense_below=20, stride=args.nll_stride)
        report["models"][loss] = {"training": training, "quality": quality, "nll_strided": nll}
        write_json(report, args.out)  # partial results survive an interrupted second model
    budget = f"{args.steps} steps" if args.steps else f"{args.minutes:g} min"
    print(f"\nMNIST, {budget} of training per model on {device}; FD-classifier vs "
          f"{len(test_images)} test images; confidence = mean max-softmax; NLL strided on {args.nll_num} test images")
    print(f"{'model / set':<28} {'steps':>7} {'FD-classifier':>14} {'confidence':>11} {'NLL bits/dim':>13}")
    for loss, model in report["models"].items():
        for name, row in model["quality"].items():
            label = f"L_{loss}: {name}" if name == "samples" else f"  {name}"
            steps = model["training"]["steps"] if name == "samples" else ""
            nll = f"{model['nll_strided']['bpd']:.3f}" if name == "samples" else ""
            print(f"{label:<28} {steps:>7} {row['fd_classifier']:>14.3f} {row['confidence']:>11.3f} {nll:>13}")
    path = write_json(report, args.out)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
