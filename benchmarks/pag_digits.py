"""Perturbed-Attention Guidance on the demo model: FD-classifier of samples with and without PAG.

Samples ``--num`` images (sample i from seed i in every cell, as ``diffkit sample`` draws them) with
``--sampler``/``--steps``, plain (scale 0) and with :class:`diffkit.guidance.PerturbedAttentionGuidance`
at each of ``--scales`` on ``--layers``, scores each cell's FD-classifier against the held-out digits
(the scorer of ``diffkit experiment``: ``experiment_scorer("fd-classifier", ...)``) and a paired bootstrap
of each cell's difference to scale 0 (the same resampled indices in every cell, as benchmarks/fd_bootstrap.py
does). ``--grid PNG``: the first 16 samples of every cell, one row per cell (top: scale 0). Samples nothing
it does not score; nothing is cached.

    PYTHONPATH=. python benchmarks/pag_digits.py --checkpoint runs/demo/checkpoints/latest.safetensors \\
        --evaluator EV --scales 0.5,1,2,3 --layers mid --sampler unipc --steps 20
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffkit.drawing import draw_samples  # noqa: E402
from diffkit.evaluation import write_json  # noqa: E402
from diffkit.experiments import experiment_scorer, parse_list  # noqa: E402
from diffkit.guidance import PerturbedAttentionGuidance  # noqa: E402
from diffkit.images import save_grid  # noqa: E402
from diffkit.loading import load_denoiser  # noqa: E402
from diffkit.metrics import extract_features, feature_statistics  # noqa: E402
from diffkit.metrics.frechet import frechet_distance_of_stats  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--evaluator", required=True)
    p.add_argument("--scales", default="0.5,1,2,3", help="PAG scales s besides 0 (comma-separated)")
    p.add_argument("--layers", default="mid", help="comma-separated layer names (mid, down.L, up.L)")
    p.add_argument("--sampler", default="unipc")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--replicates", type=int, default=200)
    p.add_argument("--grid", help="write a PNG of the first 16 samples of every cell, one row each")
    p.add_argument("--out", help="also write the cells to this JSON file")
    args = p.parse_args(argv)
    scales = [0.0] + [s for s in parse_list(args.scales, "scales", float) if s != 0]
    layers = args.layers.split(",")
    den = load_denoiser(args.checkpoint, device="cpu")
    unet = den.meta["unet"]
    shape = (unet["in_channels"], unet["img_size"], unet["img_size"])
    scorer = experiment_scorer("fd-classifier", den, evaluator=args.evaluator, batch_size=args.batch_size)
    rng = np.random.default_rng(0)
    picks = [rng.integers(0, args.num, args.num) for _ in range(args.replicates)]  # the same for every cell
    point, boot, rows, cells = {}, {}, [], []
    for s in scales:
        guided = PerturbedAttentionGuidance(den, s, layers) if s else den
        parts = []
        start = time.perf_counter()
        drawn = draw_samples(guided, args.num, shape, seed=0, sampler=args.sampler, steps=args.steps,
                             batch_size=args.batch_size, device="cpu", sink=lambda b: parts.append(b.images.cpu()))
        seconds = time.perf_counter() - start
        images = torch.cat(parts)
        rows.append(images[:16])
        features = extract_features(scorer.evaluator.features_and_logits, images, args.batch_size, "cpu",
                                    progress=False)[0]
        point[s] = frechet_distance_of_stats(feature_statistics(features), scorer.reference_classifier)
        boot[s] = np.array([frechet_distance_of_stats(feature_statistics(features[i]), scorer.reference_classifier)
                            for i in picks])
        line = f"s={s:<4g} FD {point[s]:7.3f} +- {boot[s].std(ddof=1):.3f}"
        cell = {"scale": s, "layers": layers, "fd": float(point[s]), "sd": float(boot[s].std(ddof=1)),
                "nfe": drawn.nfe, "seconds": round(seconds, 1)}
        if s:
            diff = boot[s] - boot[0.0]
            low, high = np.percentile(diff, [2.5, 97.5])
            line += (f"   minus s=0: {point[s] - point[0.0]:+7.3f} +- {diff.std(ddof=1):.3f} "
                     f"[{low:+.3f}, {high:+.3f}]")
            cell.update(difference=float(point[s] - point[0.0]), difference_sd=float(diff.std(ddof=1)),
                        interval_95=[float(low), float(high)])
        cells.append(cell)
        print(f"{line}   ({drawn.nfe:g} calls per sample, {seconds:.0f} s)", flush=True)
    if args.grid:
        save_grid(torch.cat(rows).clamp(-1, 1), args.grid, 16, 4)
    if args.out:
        write_json({"checkpoint": args.checkpoint, "sampler": args.sampler, "steps": args.steps, "num": args.num,
                    "replicates": args.replicates, "cells": cells}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
