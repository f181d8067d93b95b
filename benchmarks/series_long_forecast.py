"""Rolled forecasts past one window (``diffkit.forecast`` with horizon > seq_length - 1 or ``chunk``;
docs/editing.md, "Series: forecast and impute") on a long synthetic file, against last-value and
seasonal-naive baselines and the oracle (the true conditional mean).

Data: a 2-column CSV of 4000 rows written to a temporary folder: column c is a seasonal term plus an
AR(1) noise, x_c(t) = s_c(t) + a_c(t), s_0(t) = sin(2 pi t / 24), s_1(t) = 0.8 cos(2 pi t / 12),
a_c(t) = 0.8 a_c(t - 1) + 0.2 e(t), e ~ N(0, 1) (stationary sd 0.33). The model: ``diffkit train
--dataset series`` on it through diffkit's Trainer (``test_fraction`` 0.2: the last 800 rows held
out; seq_length L = 32, TemporalUNet(32), channel_mult 1,2,2, v-prediction, cosine T = 1000, EMA
0.999; ``--train-steps`` steps of batch 64). Forecast origins: ``--origins`` rows evenly spaced in the
held-out rows, each with the 128 rows before it as its history (the forecast uses its last ones).
Horizons H = 8 (L / 4, Diffusion-TS's forecasting window: one window), 16 and 32 (2x and 4x): with the
default chunk (a horizon of at most L - 1 = 31 in one window, else chunks of L // 4 = 8, context 24)
and with ``--chunks`` 16, 8 and 4 (every window keeps 16 / 24 / 28 rows of context; a horizon <= the
chunk is one window). Sampler: the
forecast defaults (ddpm, reconstruction guidance w = 1), ``--steps`` steps, ``--samples`` draws.

Baselines: last value (per column); seasonal naive with the true period 24 (the value 24 rows before,
repeated); the oracle: s_c(t + h) + 0.8^h a_c(t), the conditional mean given the truth's noise state
(its MSE is the noise's: 0.04 (1 - 0.64^h) / 0.36 on average over the horizon, in file units). MSE
over the H forecast rows of every origin, on the [0, 1] scale of the training rows' min-max (as the
other series benchmarks), or in file units in the JSON.

    OMP_NUM_THREADS=1 DIFFKIT_CPU_KERNELS=0 PYTHONPATH=. python benchmarks/series_long_forecast.py   # ~6-8 min
    python benchmarks/series_long_forecast.py --train-steps 100 --origins 20 --steps 10 --samples 1   # quick check
    python benchmarks/series_long_forecast.py --table benchmarks/results/series_long_forecast_2026-12-06.json
    ... series_long_forecast.py --impute-only --impute-chunks 16,8,4   # the same model; imputation (and the
        H = 8 default-chunk forecast only, to check the model is the full run's); writes *_impute_DATE.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import diffkit  # noqa: E402
from diffkit.evaluation import write_json  # noqa: E402
from diffkit.forecasting import forecast_windows  # noqa: E402

ROWS, LENGTH, PERIOD, PHI, SIGMA, TEST_FRACTION = 4000, 32, 24, 0.8, 0.2, 0.2
HORIZONS = (8, 16, 32)


def synthetic(rows: int, seed: int):
    """(values (rows, 2), seasonal part (rows, 2), AR part (rows, 2)) of the module doc's process."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    season = np.stack([np.sin(2 * np.pi * t / 24), 0.8 * np.cos(2 * np.pi * t / 12)], axis=1)
    noise = np.zeros((rows, 2))
    noise[0] = rng.normal(0, SIGMA / np.sqrt(1 - PHI ** 2), 2)
    for i in range(1, rows):
        noise[i] = PHI * noise[i - 1] + SIGMA * rng.normal(0, 1, 2)
    return season + noise, season, noise


def train(path: Path, folder: Path, steps: int, seed: int):
    from diffkit.config import TrainConfig
    from diffkit.loading import load_denoiser
    from diffkit.training import Trainer
    cfg = TrainConfig(dataset="series", data_dir=str(path), test_fraction=TEST_FRACTION, seq_length=LENGTH, channel=32,
                      channel_mult=[1, 2, 2], num_res_blocks=1, dropout=0.0, T=1000, schedule="cosine",
                      prediction_type="v_prediction", lr=1e-5, multiplier=100.0, lr_schedule="warmup-constant",
                      warmup_fraction=min((100 + 0.5) / steps, 0.999), grad_clip=1.0, weight_decay=0.0,
                      ema_decay=0.999, ema_warmup=True, batch_size=64, max_steps=steps, seed=seed, device="cpu",
                      save_every_epochs=10**9, log_every=1, save_weight_dir=str(folder / "checkpoints"),
                      sampled_dir=str(folder / "samples"))
    Trainer(cfg, progress=False, log=lambda *_: None).run()
    return load_denoiser(folder / "checkpoints" / "latest.safetensors")  # the EMA weights


def cell(row: dict) -> str:
    draws = row.get("per_draw")
    if draws is None:
        return f"{row['mse']:.4f}"
    return f"{np.mean(draws):.4f} [{min(draws):.4f}-{max(draws):.4f}] ({row['mse_of_mean']:.4f})"


def table(rows: dict) -> str:
    names = list(dict.fromkeys(name for h in rows for name in rows[h]))
    lines = ["| method | " + " | ".join(f"H = {h}" for h in rows) + " |", "| --- |" + " ---: |" * len(rows)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(cell(rows[h][name]) if name in rows[h] else "-" for h in rows) + " |")
    return "\n".join(lines)


def impute_rows(den, scaling, values, span, first_test: int, args) -> dict:
    """Long-series imputation: the held-out rows as 8 series of 100 rows (batch 8), each value missing
    with probability 0.7; MSE over the missing values (unit scale) of diffkit.impute window by window
    (each chunk of ``--impute-chunks``) and of linear interpolation (per series and column)."""
    from diffkit.forecasting import impute_plan, random_missing_mask
    truth = np.stack([values[first_test + 100 * i:first_test + 100 * (i + 1)] for i in range(8)])  # (8, 100, 2)
    observed = random_missing_mask(truth.shape, 0.7, seed=args.seed + 1).numpy()
    missing = ~observed
    rows = {}

    def score(estimate):
        return float((((estimate - truth) / span) ** 2)[missing].mean())
    steps = np.arange(truth.shape[1])
    linear = truth.copy()
    for b in range(truth.shape[0]):
        for c in range(truth.shape[2]):
            known = observed[b, :, c]
            linear[b, :, c] = np.interp(steps, steps[known], truth[b, known, c])
    rows["linear interpolation"] = {"mse": score(linear)}
    given = torch.from_numpy(np.where(observed, scaling.normalise(truth), np.nan).transpose(0, 2, 1)).float()
    import diffkit.forecasting as forecasting
    plans = [("", impute_plan)]
    if args.compare_keep_all:  # the earlier plan: every window keeps all it draws (no right-hand context)
        plans.append((", keep all", lambda n, length, chunk: [(start, min(start + length, n)) for start, _
                                                               in impute_plan(n, length, chunk)]))
    for (label, plan), chunk in [(p, c) for c in args.impute_chunks for p in plans]:
        tick = time.perf_counter()
        draws, kept = [], []
        for k in range(args.samples):
            forecasting.impute_plan = plan
            try:
                out = diffkit.impute(den, given, None, steps=args.steps, chunk=chunk, seed=args.seed + 1000 * (k + 1),
                                     progress=False)
            finally:
                forecasting.impute_plan = impute_plan
            kept.append(torch.equal(out[~torch.isnan(given)], given[~torch.isnan(given)]))  # in the model's units
            draws.append(scaling.unnormalise(out.double().numpy(), axis=1).transpose(0, 2, 1))
        kept = all(kept)
        windows = impute_plan(truth.shape[1], LENGTH, chunk)
        name = f"diffusion, chunk {chunk}{label}"
        rows[name] = {"per_draw": [score(d) for d in draws], "mse_of_mean": score(np.mean(draws, 0)),
                      "windows": len(windows), "observed_kept_exactly": kept, "seconds": time.perf_counter() - tick}
        print(f"impute chunk {chunk}{label}: {len(windows)} windows: {cell(rows[name])} (kept exactly: "
              f"{kept}; {time.perf_counter() - tick:.0f} s)", flush=True)
    return {"task": "8 series of 100 held-out rows, 70% of the values missing at random", "rows": rows}


def impute_table(imputation: dict) -> str:
    lines = [f"| method | {imputation['task']} |", "| --- | ---: |"]
    lines += [f"| {name} | {cell(row)} |" for name, row in imputation["rows"].items()]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=1500)
    parser.add_argument("--origins", type=int, default=100)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunks", type=lambda text: [int(c) for c in text.split(",")], default=[16, 8, 4],
                        help="chunk sizes compared with the default (comma-separated; default 16,8,4)")
    parser.add_argument("--impute-chunks", type=lambda text: [int(c) for c in text.split(",")], default=[16, 8],
                        help="chunk sizes of the long-series imputation (comma-separated; default 16,8)")
    parser.add_argument("--impute-only", action="store_true",
                        help="train the same model, forecast only H = 8 with the default chunk (a check that the model "
                             "is the full run's) and run the imputation; the report is named NAME_impute")
    parser.add_argument("--compare-keep-all", action="store_true",
                        help="also impute with the earlier plan (every window keeps all it draws) on the same model")
    parser.add_argument("--name", default="series_long_forecast")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--table", metavar="JSON", help="only print the table of a saved report")
    args = parser.parse_args(argv)
    if args.table:
        report = json.loads(Path(args.table).read_text())
        print(f"{table(report['rows'])}\n\n{impute_table(report['imputation'])}")
        return
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    values, season, noise = synthetic(ROWS, args.seed)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        path = folder / "long.csv"
        path.write_text("a,b\n" + "".join(f"{x!r},{y!r}\n" for x, y in values.tolist()))
        den = train(path, folder, args.train_steps, args.seed)
    train_seconds = time.perf_counter() - started
    from diffkit.series_files import SeriesScaling
    scaling = SeriesScaling.from_meta(den.meta["series_scaling"])
    span = np.asarray(den.meta["series_scaling"]["maximum"]) - np.asarray(den.meta["series_scaling"]["minimum"])
    first_test = ROWS - int(ROWS * TEST_FRACTION)
    origins = np.linspace(first_test, ROWS - max(HORIZONS), args.origins).astype(int)
    print(f"trained {args.train_steps} steps in {train_seconds:.0f} s; {len(origins)} origins in rows "
          f"{origins[0]}..{origins[-1]}", flush=True)

    def mse(estimate, h):  # estimate (origins, h, 2) in file units -> (unit-scale MSE, file-units MSE)
        truth = np.stack([values[o:o + h] for o in origins])
        err = (estimate - truth) ** 2
        return float((err / span ** 2).mean()), float(err.mean())

    history = torch.from_numpy(np.stack([scaling.normalise(values[o - 4 * LENGTH:o]).T for o in origins])).float()
    rows = {}
    for h in HORIZONS[:1] if args.impute_only else HORIZONS:
        steps_ahead = np.arange(1, h + 1)
        last = np.stack([np.repeat(values[o - 1:o], h, axis=0) for o in origins])
        seasonal = np.stack([values[o - PERIOD + (steps_ahead - 1) % PERIOD] for o in origins])
        oracle = np.stack([season[o:o + h] + PHI ** steps_ahead[:, None] * noise[o - 1] for o in origins])
        rows[h] = {}
        for name, estimate in (("last value", last), (f"seasonal naive (period {PERIOD})", seasonal),
                               ("oracle (true conditional mean)", oracle)):
            unit, file_units = mse(estimate, h)
            rows[h][name] = {"mse": unit, "mse_file_units": file_units}
        for label, chunk in [("default chunk", None)] + [(f"chunk {c}", c) for c in
                                                          ([] if args.impute_only else args.chunks)]:
            windows = forecast_windows(history.shape[-1], LENGTH, h, chunk)
            name = f"diffusion, {label}"
            tick = time.perf_counter()
            draws = []
            for k in range(args.samples):
                out = diffkit.forecast(den, history, h, steps=args.steps, chunk=chunk, seed=args.seed + 1000 * (k + 1),
                                       progress=False)
                draws.append(scaling.unnormalise(out.double().numpy(), axis=1).transpose(0, 2, 1))
            per_draw = [mse(d, h) for d in draws]
            rows[h][name] = {"per_draw": [u for u, _ in per_draw], "per_draw_file_units": [f for _, f in per_draw],
                             "mse_of_mean": mse(np.mean(draws, 0), h)[0], "windows": windows,
                             "seconds": time.perf_counter() - tick}
            print(f"H={h} {name}: {len(windows)} window(s) {windows}: {cell(rows[h][name])} "
                  f"({rows[h][name]['seconds']:.0f} s)", flush=True)
        for name in list(rows[h])[:3]:
            print(f"H={h} {name}: {cell(rows[h][name])}")
    imputation = impute_rows(den, scaling, values, span, first_test, args)
    report = {
        "benchmark": args.name, "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/series_long_forecast.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {**vars(args), "out": os.path.relpath(Path(args.out).resolve(), ROOT)},
        "train_seconds": train_seconds, "total_seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time(), "torch": torch.__version__,
        "scale": "MSE over the forecast rows on the [0, 1] min-max scale of the training rows (file units: "
                 "*_file_units)",
        "rows": {str(h): row for h, row in rows.items()},
        "imputation": imputation,
    }
    name = args.name + ("_impute" if args.impute_only else "")
    path = write_json(report, Path(args.out) / f"{name}_{report['date']}.json")
    print(f"\n{table(report['rows'])}\n\n{impute_table(imputation)}\n\n"
          f"total {report['total_seconds']:.0f} s; wrote {path}")


if __name__ == "__main__":
    main()
