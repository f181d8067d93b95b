"""How much the FD-classifier cells of a sampler table move with the draw: a paired bootstrap over samples.

Reads the samples a ``diffkit experiment sampler-table ... --cache-dir DIR`` run stored (it samples nothing:
a missing batch is an error) and resamples the sample indices with replacement, the same indices for every
cell, so the spread of a difference between two cells keeps the pairing of the table (sample i of every
cell starts from the same noise). Prints each cell's FD with the bootstrap standard deviation, and each
row's difference to ``--baseline`` with its standard deviation and 2.5-97.5% interval. The reference
statistics (the test split) are held fixed: they are common to all cells. Give the same flags as the table:

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
from diffkit.evaluation import PRIMARY_FIELD  # noqa: E402
from diffkit.experiments import experiment_scorer, parse_list, row_settings  # noqa: E402
from diffkit.loading import load_denoiser  # noqa: E402
from diffkit.metrics import extract_features, feature_statistics  # noqa: E402
from diffkit.metrics.frechet import frechet_distance_of_stats  # noqa: E402
from diffkit.sample_cache import open_cache  # noqa: E402
from diffkit.sampling import steps_for_nfe  # noqa: E402


def cached_samples(cache, settings: dict, num: int, batch_size: int, seed: int) -> torch.Tensor:
    """The ``num`` samples of one cell as the table stored them, batch by batch (an error if one is missing)."""
    out = []
    for start in range(0, num, batch_size):
        stored = cache.load(settings, start, min(batch_size, num - start), seed, None)
        if stored is None:
            raise DiffkitError(f"{settings} samples {start}.. are not in the cache; run the sampler-table first")
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

    def fds(features):
        return np.array([frechet_distance_of_stats(feature_statistics(features[i]), scorer.reference_classifier)
                         for i in picks])
    for nfe in nfes:
        point, boot = {}, {}
        for row in rows:
            name, options = row_settings(row, restarts=args.restarts)
            steps = steps_for_nfe(denoiser, name, nfe, **options)
            images = cached_samples(cache, {"sampler": name, "steps": steps, **options}, args.num, args.batch_size,
                                    args.seed)
            point[row] = scorer.score(images, None)["fd-classifier"][PRIMARY_FIELD["fd-classifier"]]
            features = extract_features(scorer.evaluator.features, images, args.batch_size, "cpu", progress=False)
            boot[row] = fds(features)
        print(f"NFE {nfe} ({args.num} samples, {args.replicates} paired bootstrap replicates)")
        for row in rows:
            line = f"  {row:24s} FD {point[row]:8.3f} +- {boot[row].std(ddof=1):.3f}"
            if row != baseline:
                diff = boot[row] - boot[baseline]
                low, high = np.percentile(diff, [2.5, 97.5])
                line += (f"   minus {baseline}: {point[row] - point[baseline]:+8.3f} +- {diff.std(ddof=1):.3f} "
                         f"[{low:+.3f}, {high:+.3f}]")
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DiffkitError as err:
        print(f"fd_bootstrap: error: {err}", file=sys.stderr)
        sys.exit(2)
