"""FreeU on the demo model: FD-classifier of samples with and without FreeU (Si et al. 2024; docs/guidance.md).

Samples ``--num`` images (sample i from seed i in every cell, clamped to [-1, 1]: ``diffkit eval``'s
``generate_samples``, as benchmarks/training_options.py) with ``--sampler``/``--steps``, plain and with each
FreeU setting of ``--settings`` (B1,B2,S1,S2 entries
joined by ';', :func:`diffkit.models.freeu.parse_freeu`; the U-Net's two lowest-resolution decoder stages),
scores each cell's FD-classifier against the 597 held-out digits (the scorer of ``diffkit experiment``:
``experiment_scorer("fd-classifier", ...)``) and a paired bootstrap of each cell's difference to the plain cell
(the same resampled indices in every cell, as benchmarks/pag_digits.py). Nothing is cached.

    PYTHONPATH=. python benchmarks/freeu_digits.py --checkpoint runs/demo/checkpoints/latest.safetensors \\
        --evaluator EV --settings "1.5,1.6,0.9,0.2;1.5,1.6,1,1;1,1,0.9,0.2" --out freeu.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from diffkit.evaluation import generate_samples, write_json  # noqa: E402
from diffkit.experiments import experiment_scorer  # noqa: E402
from diffkit.loading import load_denoiser  # noqa: E402
from diffkit.metrics import extract_features, feature_statistics  # noqa: E402
from diffkit.metrics.frechet import frechet_distance_of_stats  # noqa: E402
from diffkit.models.freeu import freeu_enabled, parse_freeu  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--evaluator", required=True)
    p.add_argument("--settings", default="1.5,1.6,0.9,0.2", help="B1,B2,S1,S2 entries joined by ';' (plain: added)")
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--replicates", type=int, default=200)
    p.add_argument("--out", help="also write the cells to this JSON file")
    args = p.parse_args(argv)
    settings = [None] + [parse_freeu(text) for text in args.settings.split(";") if text.strip()]
    den = load_denoiser(args.checkpoint, device="cpu")
    scorer = experiment_scorer("fd-classifier", den, evaluator=args.evaluator, batch_size=args.batch_size)
    rng = np.random.default_rng(0)
    picks = [rng.integers(0, args.num, args.num) for _ in range(args.replicates)]  # the same for every cell
    boot, cells = [], []
    for freeu in settings:
        start = time.perf_counter()
        with freeu_enabled(den, freeu):
            images, nfe = generate_samples(den, args.num, sampler=args.sampler, steps=args.steps, seed=0,
                                           batch_size=args.batch_size, return_nfe=True)
        seconds = time.perf_counter() - start
        features = extract_features(scorer.evaluator.features_and_logits, images, args.batch_size, "cpu",
                                    progress=False)[0]
        point = frechet_distance_of_stats(feature_statistics(features), scorer.reference_classifier)
        boot.append(np.array([frechet_distance_of_stats(feature_statistics(features[i]), scorer.reference_classifier)
                              for i in picks]))
        name = "off" if freeu is None else ",".join(f"{v:g}" for v in freeu.as_list())
        cell = {"freeu": None if freeu is None else freeu.as_list(), "fd": float(point),
                "sd": float(boot[-1].std(ddof=1)), "nfe": nfe, "seconds": round(seconds, 1)}
        line = f"{name:18s} FD {point:7.3f} +- {cell['sd']:.3f}"
        if freeu is not None:
            diff = boot[-1] - boot[0]
            low, high = np.percentile(diff, [2.5, 97.5])
            cell.update(difference=float(point - cells[0]["fd"]), difference_sd=float(diff.std(ddof=1)),
                        interval_95=[float(low), float(high)])
            line += f"   minus off: {cell['difference']:+7.3f} +- {cell['difference_sd']:.3f} [{low:+.3f}, {high:+.3f}]"
        cells.append(cell)
        print(f"{line}   ({seconds:.0f} s)", flush=True)
    if args.out:
        write_json({"checkpoint": args.checkpoint, "evaluator": args.evaluator, "sampler": args.sampler,
                    "steps": args.steps, "num": args.num, "replicates": args.replicates, "cells": cells}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
