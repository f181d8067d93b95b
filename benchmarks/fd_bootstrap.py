"""How much the FD-classifier cells of a sampler table move with the draw: a paired bootstrap over samples.

Reads the samples a ``diffkit experiment sampler-table ... --cache-dir DIR`` run stored (it samples nothing:
a missing batch is an error) and resamples the sample indices with replacement, the same indices for every
cell, so the spread of a difference between two cells keeps the pairing of the table (sample i of every
cell starts from the same noise). Prints each cell's FD with the bootstrap standard deviation, and each
row's difference to ``--baseline`` with its standard deviation and 2.5-97.5% percentile interval (``--out
FILE``: the same as JSON). The reference statistics (the held-out split) are held fixed: a cell's spread leaves
out the reference's own sampling noise, which the differences do not have (it is common to all cells). Give the
same flags as the table:

    PYTHONPATH=. python benchmarks/fd_bootstrap.py --checkpoint runs/demo/checkpoints/latest.safetensors \\
        --evaluator EV --cache-dir DIR --num 1000 --batch-size 500 --samplers heun,restart --nfe 21,41 \\
        --baseline heun

Limits: a bootstrap replicate repeats about 37% of the samples, which biases its FD upwards (the spread,
not the level, is what is read here); it covers the sampling noise of the cells, not that of the evaluator
or the training run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffkit.commands._common import restarts_value  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.evaluation import sample_labels, write_json  # noqa: E402
from diffkit.experiments import experiment_scorer, parse_list, row_settings  # noqa: E402
from diffkit.loading import load_denoiser  # noqa: E402
from diffkit.metrics import extract_features, feature_statistics  # noqa: E402
from diffkit.metrics.frechet import frechet_distance_of_stats  # noqa: E402
from diffkit.sample_cache import open_cache  # noqa: E402
from diffkit.sampling import steps_for_nfe  # noqa: E402


def cached_samples(cache, settings: dict, num: int, batch_size: int, seed: int, labels=None) -> torch.Tensor:
    """The ``num`` samples of one cell as the table stored them, batch by batch (an error if one is missing).
    ``labels``: the table's class labels of all ``num`` samples (:func:`diffkit.evaluation.sample_labels`;
    None for an unconditional checkpoint); each batch is looked up with its slice, as the table stored it."""
    out = []
    for start in range(0, num, batch_size):
        count = min(batch_size, num - start)
        stored = cache.load(settings, start, count, seed, None if labels is None else labels[start:start + count])
        if stored is None:
            raise DiffkitError(f"{settings} samples {start}.. are not in the cache (with batches of {batch_size}); "
                               f"run the sampler-table with the same --num, --batch-size and --seed first")
        out.append(stored[0])
    return torch.cat(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--evaluator", required=True)
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--samplers", required=True, help="rows, as sampler-table's --samplers")
    p.add_argument("--nfe", required=True, help="columns, as sampler-table's --nfe")
    p.add_argument("--restarts", type=restarts_value, help="as sampler-table's --restarts")
    p.add_argument("--baseline", help="the row the others are compared with (default: the first)")
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--replicates", type=int, default=200)
    p.add_argument("--out", help="also write the cells, spreads and intervals to this JSON file")
    args = p.parse_args(argv)
    rows, nfes = parse_list(args.samplers, "samplers", str), parse_list(args.nfe, "nfe")
    baseline = args.baseline or rows[0]
    if baseline not in rows:
        raise SystemExit(f"--baseline {baseline!r} is not one of the rows {rows}")
    denoiser = load_denoiser(args.checkpoint, device="cpu")
    scorer = experiment_scorer("fd-classifier", denoiser, evaluator=args.evaluator, batch_size=args.batch_size)
    cache = open_cache(args.cache_dir, denoiser)
    rng = np.random.default_rng(0)
    picks = [rng.integers(0, args.num, args.num) for _ in range(args.replicates)]  # the same for every cell
    labels = sample_labels(denoiser, args.num)  # the table's: sample i has class i mod K
    results = []

    def fds(features):
        return np.array([frechet_distance_of_stats(feature_statistics(features[i]), scorer.reference_classifier)
                         for i in picks])
    for nfe in nfes:
        point, boot = {}, {}
        for row in rows:
            name, options = row_settings(row, restarts=args.restarts)
            steps = steps_for_nfe(denoiser, name, nfe, **options)
            images = cached_samples(cache, {"sampler": name, "steps": steps, **options}, args.num, args.batch_size,
                                    args.seed, labels)
            # the features the scorer's fd-classifier uses, extracted once: the cell's FD and its replicates
            features = extract_features(scorer.evaluator.features_and_logits, images, args.batch_size, "cpu",
                                        progress=False)[0]
            point[row] = frechet_distance_of_stats(feature_statistics(features), scorer.reference_classifier)
            boot[row] = fds(features)
        print(f"NFE {nfe} ({args.num} samples, {args.replicates} paired bootstrap replicates)")
        for row in rows:
            line = f"  {row:24s} FD {point[row]:8.3f} +- {boot[row].std(ddof=1):.3f}"
            cell = {"nfe": nfe, "row": row, "fd": point[row], "sd": float(boot[row].std(ddof=1))}
            if row != baseline:
                diff = boot[row] - boot[baseline]
                low, high = np.percentile(diff, [2.5, 97.5])
                line += (f"   minus {baseline}: {point[row] - point[baseline]:+8.3f} +- {diff.std(ddof=1):.3f} "
                         f"[{low:+.3f}, {high:+.3f}]")
                cell.update(baseline=baseline, difference=point[row] - point[baseline],
                            difference_sd=float(diff.std(ddof=1)), interval_95=[float(low), float(high)])
            results.append(cell)
            print(line, flush=True)
    if args.out:
        write_json({"num": args.num, "replicates": args.replicates, "seed": args.seed, "cells": results}, args.out)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DiffkitError as err:
        print(f"fd_bootstrap: error: {err}", file=sys.stderr)
        sys.exit(2)
