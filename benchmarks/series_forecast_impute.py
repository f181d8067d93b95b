"""Forecasting and imputation of Sines with an unconditional series diffusion model
(``diffkit.forecast`` / ``diffkit.impute``; docs/editing.md, "Series: forecast and impute"):
replacement vs. reconstruction guidance vs. RePaint, against naive baselines.

Diffusion-TS's protocol (Yuan & Qiao 2024): forecasting = the last 25% of each window generated
from the first 75% (here 6 of 24 steps); imputation = each value missing independently with
probability 70% / 90%. MSE on the missing values only, on the [0, 1] scale of TimeGAN / Diffusion-TS
((x + 1) / 2), over ``--num`` held-out windows (Sines' test draw, seed 2024; the model never saw
them). Each method is scored on one sample per window ("one sample") and on the mean of ``--samples``
samples per window (an estimate of the conditional mean, the MSE-optimal point forecast).

The model: the recipe of benchmarks/context_fid_sines.py (TemporalUNet(32), v-prediction, cosine
T = 1000, diffkit's Trainer on 10,000 Sines series, EMA weights), ``--train-steps`` steps.
Baselines: last value (forecast: the last history value per channel), linear interpolation
(imputation: per channel between observed points, constant beyond the first / last one; the mean
where a channel has none) and the mean (of the training windows, per channel and step).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/series_forecast_impute.py     # ~10-15 min on 2 busy cores
    python benchmarks/series_forecast_impute.py --train-steps 200 --num 50 --samples 2   # quick check
    python benchmarks/series_forecast_impute.py --table benchmarks/results/series_forecast_impute_2026-12-06.json

The table (printed at the end of a run, or from a saved JSON with ``--table``; BENCHMARKS.md's) gives
per method the mean of the ``--samples`` per-draw one-sample MSEs, [their min-max], and (the MSE of
the mean of the samples).
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import diffkit  # noqa: E402
from diffkit import Denoiser  # noqa: E402
from diffkit.evaluation import write_json  # noqa: E402
from diffkit.forecasting import forecast_mask, random_missing_mask  # noqa: E402
from diffkit.timeseries import SINES_SEEDS, sines  # noqa: E402

LENGTH, CHANNELS, HORIZON = 24, 5, 6
TASKS = (("forecast, last 25%", None), ("impute, 70% missing", 0.7), ("impute, 90% missing", 0.9))


def methods(steps: int):
    """(name, sampler, options) of the diffusion rows."""
    return [
        ("replacement, ddim", "ddim", {}),
        ("replacement, ddpm", "ddpm", {}),
        ("reconstruction guidance w=1, ddpm", "ddpm", {"reconstruction_weight": 1.0}),
        ("reconstruction guidance w=4, ddpm", "ddpm", {"reconstruction_weight": 4.0}),
        ("reconstruction guidance w=4, ddim", "ddim", {"reconstruction_weight": 4.0}),
        (f"RePaint, ddpm, jump_length {max(steps // 10, 1)} x jump_n_sample 5", "ddpm",
         {"jump_length": max(steps // 10, 1), "jump_n_sample": 5}),
    ]


def linear_interpolation(series: torch.Tensor, observed: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Per series and channel np.interp over the observed steps (constant beyond the ends)."""
    out = fallback.clone().expand_as(series).clone()
    steps = np.arange(series.shape[-1])
    values, known = series.numpy(), observed.numpy()
    for b in range(series.shape[0]):
        for c in range(series.shape[1]):
            where = known[b, c]
            if where.any():
                out[b, c] = torch.from_numpy(np.interp(steps, steps[where], values[b, c, where]))
    return out


def mse_unit(estimate: torch.Tensor, truth: torch.Tensor, missing: torch.Tensor) -> float:
    """MSE over the missing values on the [0, 1] scale: ((x + 1)/2 - (y + 1)/2)^2 = (x - y)^2 / 4."""
    diff = (estimate.double() - truth.double())[missing]
    return float((diff ** 2).mean() / 4)


NAIVE = {"last value": "last value (forecast) / linear interpolation (impute)",
         "linear interpolation": "last value (forecast) / linear interpolation (impute)"}


def cell(row: dict) -> str:
    """A table cell: a baseline's MSE; a diffusion row's mean one-sample MSE over the draws [min-max]
    (the MSE of the draws' mean)."""
    draws = row.get("one_sample_per_draw")
    if draws is None:
        return f"{row['one_sample']:.5f}"
    return f"{sum(draws) / len(draws):.5f} [{min(draws):.5f}-{max(draws):.5f}] ({row['mean']:.5f})"


def table(rows: dict) -> str:
    """The markdown table of a report's ``rows`` (task -> method -> row), methods in first-seen order."""
    tasks = list(rows)
    rows = {t: {NAIVE.get(name, name): row for name, row in rows[t].items()} for t in tasks}
    methods = list(dict.fromkeys(name for task in tasks for name in rows[task]))
    lines = ["| method | NFE / sample | " + " | ".join(tasks) + " |", "| --- | ---: |" + " ---: |" * len(tasks)]
    for name in methods:
        nfe = next((rows[t][name].get("nfe_per_sample") for t in tasks if name in rows[t]), None)
        nfe = "-" if nfe is None else f"{nfe:.0f}" + (" (+ 1 backward each)" if "guidance" in name else "")
        cells = [cell(rows[t][name]) if name in rows[t] else "-" for t in tasks]
        lines.append(f"| {name} | {nfe} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=100, help="held-out windows (default 100)")
    parser.add_argument("--samples", type=int, default=3, help="samples per window for the mean (default 3)")
    parser.add_argument("--steps", type=int, default=50, help="sampler steps (default 50)")
    parser.add_argument("--train-steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="series_forecast_impute")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--table", metavar="JSON", help="only print the table of a saved report")
    args = parser.parse_args(argv)
    if args.table:
        import json
        print(table(json.loads(Path(args.table).read_text())["rows"]))
        return
    from context_fid_sines import train_diffusion
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        net, schedule, final_loss = train_diffusion(args.train_steps, args.batch_size, args.lr, args.seed, 32, 10000,
                                                    Path(folder))
    train_seconds = time.perf_counter() - started
    net.eval()
    den = Denoiser(net, schedule, prediction_type="v_prediction")
    truth = sines(args.num, LENGTH, CHANNELS, seed=SINES_SEEDS[False])
    train_mean = sines(10000, LENGTH, CHANNELS, seed=SINES_SEEDS[True]).mean(0, keepdim=True)
    print(f"trained {args.train_steps} steps in {train_seconds:.0f} s (final loss {final_loss:.4f}); "
          f"{args.num} held-out windows, {args.samples} samples each, {args.steps} steps")
    rows = {}
    for task, missing in TASKS:
        if missing is None:
            observed = forecast_mask(args.num, CHANNELS, LENGTH, HORIZON)
            last = truth[..., LENGTH - HORIZON - 1:LENGTH - HORIZON].expand_as(truth)
            baselines = {"last value": last, "mean of the training windows": train_mean.expand_as(truth)}
        else:
            observed = random_missing_mask(truth.shape, missing, seed=args.seed + 1)
            baselines = {"linear interpolation": linear_interpolation(truth, observed, train_mean),
                         "mean of the training windows": train_mean.expand_as(truth)}
        hidden = ~observed
        rows[task] = {name: {"one_sample": mse_unit(value, truth, hidden), "mean": mse_unit(value, truth, hidden)}
                      for name, value in baselines.items()}
        print(f"\n{task} ({int(hidden.sum())} missing values)")
        for name, row in rows[task].items():
            print(f"  {name:52s} {row['one_sample']:.5f}")
        for name, sampler, options in methods(args.steps):
            den.reset_nfe()
            tick = time.perf_counter()
            draws = []
            for k in range(args.samples):
                seed = args.seed + 1000 * (k + 1)  # per-window seeds seed + i within each draw
                if missing is None:
                    ahead = diffkit.forecast(den, truth[..., :LENGTH - HORIZON], HORIZON, sampler, args.steps,
                                             seed=seed, length=LENGTH, progress=False, **options)
                    draws.append(torch.cat([truth[..., :LENGTH - HORIZON], ahead], -1))
                else:
                    draws.append(diffkit.impute(den, truth, observed, sampler, args.steps, seed=seed, length=LENGTH,
                                                progress=False, **options))
            draws = torch.stack(draws)
            kept = bool((draws[:, observed.expand_as(truth)] == truth[observed].expand(args.samples, -1)).all())
            rows[task][name] = {"one_sample": mse_unit(draws[0], truth, hidden),
                                "mean": mse_unit(draws.mean(0), truth, hidden),
                                "one_sample_per_draw": [mse_unit(d, truth, hidden) for d in draws],
                                "nfe_per_sample": den.nfe / args.samples, "known_values_kept_exactly": kept,
                                "seconds": time.perf_counter() - tick}
            row = rows[task][name]
            print(f"  {name:52s} {cell(row)} (one-sample MSE: mean [min-max] of {args.samples} draws; (MSE of their "
                  f"mean); {row['nfe_per_sample']:.0f} NFE, {row['seconds']:.0f} s)", flush=True)
    report = {
        "benchmark": args.name, "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/series_forecast_impute.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {**vars(args), "out": os.path.relpath(Path(args.out).resolve(), ROOT)},
        "final_train_loss": final_loss, "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - started, "cpu_seconds": time.process_time(),
        "torch": torch.__version__, "scale": "MSE on the [0, 1] scale, missing values only", "rows": rows,
    }
    path = write_json(report, Path(args.out) / f"{args.name}_{report['date']}.json")
    print(f"\n{table(rows)}\n\ntotal {report['total_seconds']:.0f} s; wrote {path}")


if __name__ == "__main__":
    main()
