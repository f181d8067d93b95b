"""A small DiT against the demo U-Net on the digits: wall time per training step at a similar parameter count.

The ``diffkit demo`` configuration (``DEMO_CONFIG``: 16x16 digits, batch 64, the 1.11M-parameter U-Net) and the
same run with ``network=dit`` (DiT, Peebles & Xie 2023: patch 2, 4 blocks of 4 heads x 32 = width 128, 1.27M
parameters; every other setting the demo's, lr included) are trained ``--steps`` steps each, ``--rounds`` times
in turn (U-Net, DiT, U-Net, ...), timing every step; the median per network is reported. With ``--evaluator``
(``diffkit train-evaluator --dataset digits``) each model is also scored as ``benchmarks/training_options.py``
does: ``--num`` DDIM-50 samples (sample i from noise seed i), FD-classifier against the 597 held-out digits,
with a paired bootstrap of the difference (use the demo's ``--steps 1500 --rounds 1`` for that).
``--dit-lr`` sets the DiT's base lr (the demo's 1e-3, peak 2e-3 after its x2 warm-up, by default);
``--networks dit`` trains the DiT alone (no paired difference then).

    OMP_NUM_THREADS=1 DIFFKIT_CPU_KERNELS=0 PYTHONPATH=. python benchmarks/dit_demo.py --steps 30 --rounds 3 \
        --json benchmarks/results/dit_demo_step_time_2026-12-06.json
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from diffkit.evaluation import write_json  # noqa: E402
from diffkit.experiments import experiment_scorer  # noqa: E402
from diffkit.loading import load_denoiser  # noqa: E402
from diffkit.training import Trainer  # noqa: E402
from training_options import (bootstrap_picks, difference_text, fd_and_bootstrap, model_features,  # noqa: E402
                              paired_difference, variant_config)

# the U-Net's fields back at their defaults (network='dit' refuses others), the DiT's shape
DIT = {"network": "dit", "channel": 128, "channel_mult": [1, 2, 3, 4], "attn": [2], "num_res_blocks": 2,
       "patch_size": 2, "num_layers": 4, "num_heads": 4, "attention_head_dim": 32}
VARIANTS = (("unet", {}), ("dit", DIT))


def train_timed(folder: Path, steps: int, options: dict) -> tuple[Path, int, list]:
    """Trains one variant into ``folder``; its checkpoint, parameter count and the wall seconds of every step."""
    cfg = variant_config(folder, steps, options)
    trainer = Trainer(cfg, progress=False)
    seconds, step = [], trainer.train_step

    def timed(micro_batches):
        start = time.perf_counter()
        loss = step(micro_batches)
        seconds.append(time.perf_counter() - start)
        return loss

    trainer.train_step = timed
    trainer.run()
    return (Path(cfg.save_weight_dir) / "latest.safetensors", sum(p.numel() for p in trainer.model.parameters()),
            seconds)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", default="benchmarks/out/dit_demo")
    p.add_argument("--steps", type=int, default=30, help="training steps per run (the demo trains 1500)")
    p.add_argument("--rounds", type=int, default=3, help="runs per network, alternating")
    p.add_argument("--evaluator", help="also score FD-classifier (the last round's models)")
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--replicates", type=int, default=200)
    p.add_argument("--json")
    p.add_argument("--dit-lr", type=float, help="the DiT's base lr (default the demo's; the peak is twice it)")
    p.add_argument("--networks", nargs="+", choices=[name for name, _ in VARIANTS], default=["unet", "dit"])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    variants = [(name, {**options, **({"lr": args.dit_lr} if name == "dit" and args.dit_lr else {})})
                for name, options in VARIANTS if name in args.networks]
    seconds = {name: [] for name, _ in variants}
    params, checkpoints = {}, {}
    for round_ in range(args.rounds):
        for name, options in variants:
            folder = Path(args.out_dir) / f"{name}-{round_}"
            if folder.exists():
                shutil.rmtree(folder)
            checkpoints[name], params[name], times = train_timed(folder, args.steps, options)
            seconds[name] += times
            print(f"round {round_} {name:5s} step median {statistics.median(times) * 1e3:.1f} ms", flush=True)
    rows = [{"variant": name, "options": options, "parameters": params[name], "steps_timed": len(seconds[name]),
             "step_median_s": statistics.median(seconds[name]), "step_seconds": seconds[name]}
            for name, options in variants]
    if args.evaluator:
        picks = bootstrap_picks(args.num, args.replicates)
        point, boot = {}, {}
        for row in rows:
            name = row["variant"]
            den = load_denoiser(checkpoints[name], device="cpu")
            scorer = experiment_scorer("fd-classifier", den, evaluator=args.evaluator, batch_size=500)
            features, _, _ = model_features(den, scorer, checkpoints[name].parent.parent, checkpoints[name], "ddim",
                                            50, args.num, 500)
            point[name], boot[name] = fd_and_bootstrap(features, scorer.reference_classifier, picks)
            row.update(fd=point[name], fd_sd=float(boot[name].std(ddof=1)),
                       **(paired_difference(point, boot, name, "unet") if "unet" in point else {}))
            print(f"{name:5s} FD {row['fd']:.2f} +- {row['fd_sd']:.2f}" + difference_text(row, "unet"), flush=True)
    for row in rows:
        print(f"{row['variant']:5s} {row['parameters']:,} parameters: median {row['step_median_s'] * 1e3:.1f} ms per "
              f"step of batch 64 ({row['steps_timed']} steps)")
    if args.json:
        write_json({"steps": args.steps, "rounds": args.rounds, "threads": 1, "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
