"""A small DiT against the demo U-Net on the digits: equal recipe, equal steps, similar parameter count.

Trains the ``diffkit demo`` configuration (``DEMO_CONFIG``: 16x16 digits, 1.11M-parameter U-Net, 1500 steps,
batch 64, seed 0) and the same run with ``network=dit`` (DiT, Peebles & Xie 2023: patch 2, 4 blocks of 4 heads x
32 = width 128, 1.27M parameters; every other setting the demo's, lr included), timing every training step
(the median is reported), then scores both as ``benchmarks/training_options.py`` does: ``--num`` DDIM-50
samples (sample i from noise seed i), FD-classifier against the 597 held-out digits in the feature space of
``--evaluator`` (``diffkit train-evaluator --dataset digits``), with a paired bootstrap of the difference.

    OMP_NUM_THREADS=1 DIFFKIT_CPU_KERNELS=0 PYTHONPATH=. python benchmarks/dit_demo.py --evaluator EV \\
        --out-dir benchmarks/out/dit_demo --json benchmarks/results/dit_demo_2026-12-06.json
"""
from __future__ import annotations

import argparse
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
    p.add_argument("--evaluator", required=True)
    p.add_argument("--out-dir", default="benchmarks/out/dit_demo")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--replicates", type=int, default=200)
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    picks = bootstrap_picks(args.num, args.replicates)
    point, boot, rows = {}, {}, []
    for name, options in VARIANTS:
        folder = Path(args.out_dir) / name
        ckpt, params, seconds = train_timed(folder, args.steps, options)
        den = load_denoiser(ckpt, device="cpu")
        scorer = experiment_scorer("fd-classifier", den, evaluator=args.evaluator, batch_size=500)
        features, sample_s, _ = model_features(den, scorer, folder, ckpt, "ddim", 50, args.num, 500)
        point[name], boot[name] = fd_and_bootstrap(features, scorer.reference_classifier, picks)
        row = {"variant": name, "options": options, "parameters": params, "steps": len(seconds),
               "step_median_s": statistics.median(seconds), "train_wall_s": sum(seconds), "sample_cpu_s": sample_s,
               "fd": point[name], "fd_sd": float(boot[name].std(ddof=1)),
               **paired_difference(point, boot, name, "unet")}
        rows.append(row)
        print(f"{name:5s} {params:,} parameters, step median {row['step_median_s'] * 1e3:.1f} ms, FD {row['fd']:.2f} "
              f"+- {row['fd_sd']:.2f}" + difference_text(row, "unet"), flush=True)
        if args.json:
            write_json({"steps": args.steps, "num": args.num, "evaluator": args.evaluator, "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
