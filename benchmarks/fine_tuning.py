"""Fine-tuning a digits model on MNIST: full fine-tuning against LoRA (docs/fine_tuning.md).

Trains a small base U-Net on the bundled digits (16x16), then fine-tunes it on MNIST (resized to
16x16) with ``diffkit train --init-from``: every weight (full), LoRA rank 4 on the attention
projections, and LoRA rank 4 on the attention projections and the residual blocks' 3x3
convolutions. Reports each run's trainable parameters, checkpoint size (latest.safetensors: weights,
EMA, optimiser state), seconds per step (wall: the training log's images/s at the last step, noisy on a
shared machine; CPU: ``time.process_time`` over 20 steps after 3 warm-up steps of the same configuration
in this process, one thread, which other jobs on the machine barely change) and the held-out loss: the
eps-prediction MSE (L_simple, DDPM eq. 14) of the raw weights on the first 512 MNIST test images, with
the same noise and timesteps (seed 0) for every model, the base included.
Every run is a subprocess of the exact command printed. A benchmark, not a CI test (one process;
about 10 minutes on 1 thread of an idle core):

    python benchmarks/fine_tuning.py --data-dir ../shared/data/mnist
    python benchmarks/fine_tuning.py --base-steps 50 --ft-steps 20   # quick check
    python benchmarks/fine_tuning.py --reuse      # keep the finished runs in --out, measure again
"""
from __future__ import annotations

import argparse
import csv
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffkit import checkpoint as ckpt  # noqa: E402
from diffkit.cli import build_parser  # noqa: E402
from diffkit.commands.train import config_from_args  # noqa: E402
from diffkit.evaluation import reference_images  # noqa: E402
from diffkit.loading import load_model  # noqa: E402
from diffkit.losses import training_losses  # noqa: E402
from diffkit.training import Trainer  # noqa: E402

# the base network; its EMA warms up ((1 + n)/(10 + n)), so that the EMA weights --init-from starts from
# have followed a short run (the default decay 0.9999 would leave them near the initialisation)
BASE = ["--set", "img_size=16", "--set", "channel=32", "--set", "channel_mult=[1,2]", "--set", "attn=[1]",
        "--set", "num_res_blocks=1", "--set", "dropout=0.0", "--set", "ema_warmup=true"]
RUNS = [("full fine-tuning", ["--set", "lr=1e-4"]),
        ("LoRA r=4, attention", ["--set", "lr=1e-3", "--set", "lora_rank=4"]),
        ("LoRA r=4, attention+resblock", ["--set", "lr=1e-3", "--set", "lora_rank=4",
                                          "--set", "lora_targets=attention,resblock"])]


def run(argv: list[str], reuse: bool) -> None:
    """Run ``diffkit ARGV`` (``reuse``: unless its run folder holds a finished run)."""
    print("$ " + " ".join(shlex.quote(a) for a in ["python", "-m", "diffkit", *argv]), flush=True)
    out = Path(argv[argv.index("--out") + 1])
    if reuse and (out / "checkpoints" / "latest.safetensors").is_file():
        return
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "diffkit", *argv], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def cpu_seconds_per_step(argv: list[str], warmup: int = 3, steps: int = 20) -> float:
    """CPU seconds (this process, ``time.process_time``) per training step of the run ``diffkit ARGV``
    would train, its --out replaced by a temporary folder that nothing is written to."""
    argv = list(argv)
    with tempfile.TemporaryDirectory() as tmp:
        argv[argv.index("--out") + 1] = str(Path(tmp) / "run")
        trainer = Trainer(config_from_args(build_parser().parse_args(argv)), progress=False, log=lambda m: None)
        trainer.model.train()
        batches = trainer._epoch_batches(0)
        for _ in range(warmup):
            trainer.train_step(next(batches))
        start = time.process_time()
        for _ in range(steps):
            trainer.train_step(next(batches))
        return (time.process_time() - start) / steps


def seconds_per_step(run_dir: Path, batch: int) -> float:
    with open(run_dir / "checkpoints" / "train_log.csv") as f:
        rows = list(csv.reader(f))
    return batch / float(rows[-1][-1])  # the last row's images/s since the start of the run


@torch.no_grad()
def held_out_loss(path: Path, images: torch.Tensor, seed: int = 0) -> float:
    model, meta, schedule = load_model(path, use_ema=False)
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, schedule.num_timesteps, (len(images),), generator=g)
    noise = torch.randn(images.shape, generator=g)
    losses = [training_losses(model, schedule, images[i:i + 128], t[i:i + 128], noise[i:i + 128]).loss
              for i in range(0, len(images), 128)]
    return float(torch.cat(losses).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "fine_tuning")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--base-steps", type=int, default=800)
    parser.add_argument("--ft-steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--reuse", action="store_true", help="keep finished runs in --out (measure them again)")
    args = parser.parse_args()
    if not args.reuse:
        shutil.rmtree(args.out, ignore_errors=True)
    common = ["--batch-size", str(args.batch_size), "--no-sample", "--no-progress", "--device", "cpu"]
    base = args.out / "base"
    base_argv = ["train", "--out", str(base), "--steps", str(args.base_steps), *common, *BASE]
    run(base_argv, args.reuse)
    images = reference_images("mnist", args.data_dir, train=False, img_size=16, channels=1, limit=512)[0]
    rows = [{"run": f"base (digits, {args.base_steps} steps), no fine-tuning", "trainable": None,
             "checkpoint_mib": (base / "checkpoints" / "latest.safetensors").stat().st_size / 2**20,
             "s_per_step": seconds_per_step(base, args.batch_size), "cpu_s_per_step": cpu_seconds_per_step(base_argv),
             "held_out_loss": held_out_loss(base / "checkpoints", images)}]
    for i, (label, extra) in enumerate(RUNS):
        out = args.out / f"ft{i}"
        argv = ["train", "--init-from", str(base / "checkpoints"), "--out", str(out), "--dataset", "mnist",
                "--data-dir", args.data_dir, "--steps", str(args.ft_steps), *common, *extra]
        run(argv, args.reuse)
        latest = out / "checkpoints" / "latest.safetensors"
        tensors, _ = ckpt.load_checkpoint(latest)
        model = ckpt.split_prefix(tensors, "model")
        lora = [v for k, v in model.items() if ".lora_" in k]
        trainable = sum(v.numel() for v in lora) if lora else sum(
            p.numel() for p in load_model(latest)[0].parameters())
        rows.append({"run": label, "trainable": trainable, "checkpoint_mib": latest.stat().st_size / 2**20,
                     "s_per_step": seconds_per_step(out, args.batch_size), "cpu_s_per_step": cpu_seconds_per_step(argv),
                     "held_out_loss": held_out_loss(latest, images)})
    total = sum(p.numel() for p in load_model(base / "checkpoints")[0].parameters())
    print(f"\nbase network: {total:,} parameters; fine-tuning {args.ft_steps} steps on MNIST, batch {args.batch_size}")
    print(f"{'run':44s} {'trainable':>10s} {'ckpt MiB':>9s} {'wall s/step':>11s} {'CPU s/step':>10s} "
          f"{'held-out loss':>14s}")
    for r in rows:
        trainable = "-" if r["trainable"] is None else f"{r['trainable']:,}"
        print(f"{r['run']:44s} {trainable:>10s} {r['checkpoint_mib']:9.2f} {r['s_per_step']:11.3f} "
              f"{r['cpu_s_per_step']:10.3f} {r['held_out_loss']:14.4f}")
    (args.out / "fine_tuning.json").write_text(json.dumps({"parameters": total, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
