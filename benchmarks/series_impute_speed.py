"""Imputation of a long series with batching on and off (``diffkit.impute``'s ``batch_size``; docs/editing.md,
"Series: forecast and impute", "Batching").

On: ``batch_size="auto"`` (every (sample, window) pair of a level of :func:`diffkit.forecasting.impute_levels`
in as few sampler calls as fit in memory). Off: ``batch_size=1``, one window of one sample per sampler call
(the same values: per-window generators; the JSON's ``max_abs_difference`` checks it). The two run
interleaved, in alternating order, ``--repeats`` times each; the figures are the medians and their ratio.

Data: a ``--rows`` x 5 series of sines plus noise in the model's units, with two missing patterns:
``random`` (each cell missing with probability ``--missing``, 0.3: a window's overlap with the one before
almost always holds a missing value it fills, so the windows are sequential and only the ``--num`` samples
batch) and ``blocks`` (6 empty rows in every 60: most windows read only given values and batch together).
The model: a tiny TemporalUNet (seq_length 24, channel 16, channel_mult 1,2, T 100) trained ``--train-steps``
steps on 2000 clean rows (its quality does not matter here: timing only). Sampler: the imputation defaults
(ddpm, reconstruction guidance w = 1), ``--steps`` steps, default chunk (L // 2).

    OMP_NUM_THREADS=1 DIFFKIT_CPU_KERNELS=0 PYTHONPATH=. python benchmarks/series_impute_speed.py   # ~5 min
    python benchmarks/series_impute_speed.py --rows 300 --repeats 1 --steps 2   # quick check
"""
from __future__ import annotations

import argparse
import datetime
import statistics
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
from diffkit.forecasting import impute_levels  # noqa: E402

LENGTH, CHANNELS = 24, 5


def series(rows: int, seed: int) -> np.ndarray:
    t = np.arange(rows)
    rng = np.random.default_rng(seed)
    return np.stack([np.sin(t / 7 + k) + 0.1 * rng.normal(size=rows) for k in range(CHANNELS)], axis=1)


def train(folder: Path, steps: int):
    from diffkit.config import TrainConfig
    from diffkit.loading import load_denoiser
    from diffkit.training import Trainer
    path = folder / "train.csv"
    np.savetxt(path, series(2000, 0), delimiter=",", header=",".join("abcde"), comments="")
    cfg = TrainConfig(dataset="series", data_dir=str(path), seq_length=LENGTH, channel=16, channel_mult=[1, 2],
                      num_res_blocks=1, dropout=0.0, T=100, batch_size=16, max_steps=steps, seed=0, device="cpu",
                      save_every_epochs=10**9, save_weight_dir=str(folder / "checkpoints"),
                      sampled_dir=str(folder / "samples"))
    Trainer(cfg, progress=False, log=lambda *_: None).run()
    return load_denoiser(folder / "checkpoints" / "latest.safetensors")


def missing_mask(rows: int, pattern: str, missing: float, seed: int) -> torch.Tensor:
    """(1, C, rows) bool, True = missing."""
    if pattern == "random":
        mask = np.random.default_rng(seed).random((rows, CHANNELS)) < missing
    else:
        mask = np.zeros((rows, CHANNELS), dtype=bool)
        for start in range(30, rows, 60):
            mask[start:start + 6] = True
    return torch.from_numpy(mask.T.copy())[None]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--num", type=int, default=4, help="samples (the series given --num times)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--missing", type=float, default=0.3)
    p.add_argument("--train-steps", type=int, default=30)
    p.add_argument("--patterns", default="random,blocks")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/series_impute_speed_DATE.json)")
    args = p.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        den = train(Path(folder), args.train_steps)
    values = torch.from_numpy(series(args.rows, 1).T.copy()).float()[None]
    results = {}
    for pattern in args.patterns.split(","):
        missing = missing_mask(args.rows, pattern, args.missing, 2)
        given = torch.where(missing, torch.full_like(values, float("nan")), values).expand(args.num, -1, -1)
        levels = impute_levels(missing.expand(args.num, -1, -1), LENGTH, LENGTH // 2)
        times = {"on": [], "off": []}
        outs = {}
        for r in range(args.repeats):
            for mode in (("on", "off") if r % 2 == 0 else ("off", "on")):
                start = time.perf_counter()
                outs[mode] = diffkit.impute(den, given, steps=args.steps, seed=0, progress=False,
                                            batch_size="auto" if mode == "on" else 1)
                times[mode].append(time.perf_counter() - start)
        on, off = statistics.median(times["on"]), statistics.median(times["off"])
        results[pattern] = {
            "windows": int(levels.shape[1]), "pairs": int((levels >= 0).sum()), "levels": int(levels.max()) + 1,
            "missing_fraction": float(missing.float().mean()), "seconds_on": times["on"], "seconds_off": times["off"],
            "median_on": on, "median_off": off, "speedup": off / on,
            "max_abs_difference": float((outs["on"] - outs["off"]).abs().max()),
        }
        print(f"{pattern}: {results[pattern]['pairs']} (sample, window) pairs in {results[pattern]['levels']} levels; "
              f"batched {on:.2f} s, one at a time {off:.2f} s (medians of {args.repeats}): {off / on:.2f}x; "
              f"max |difference| {results[pattern]['max_abs_difference']:.1e}", flush=True)
    date = datetime.date.today().isoformat()
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"series_impute_speed_{date}.json")
    write_json({"benchmark": "series_impute_speed", "date": date, "args": vars(args), "torch": torch.__version__,
                "threads": torch.get_num_threads(), "length": LENGTH, "channels": CHANNELS, "results": results}, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
