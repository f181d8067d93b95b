"""Wall time of reconstruction guidance against plain replacement on the Sines forecasting model of
benchmarks/series_forecast_impute.py (docs/editing.md, "Series: forecast and impute"; BENCHMARKS.md).

The network is that benchmark's (benchmarks/context_fid_sines.py's recipe: TemporalUNet(32), 5 x 24,
v-prediction, cosine T = 1000) after ``--train-steps`` steps: the weights do not change the work of
a step, so a briefly trained copy times the same arithmetic. ``diffkit.forecast`` of the last 6 of 24
steps of ``--num`` Sines windows, ``--steps`` ddpm steps, w = 0 and w = 1 run alternately
(``--rounds`` each, so machine load falls on both alike); reported: the median seconds of each and
their ratio.

    OMP_NUM_THREADS=1 DIFFKIT_CPU_KERNELS=0 PYTHONPATH=. python benchmarks/reconstruction_guidance_cost.py
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import diffkit  # noqa: E402
from diffkit import Denoiser  # noqa: E402
from diffkit.evaluation import write_json  # noqa: E402
from diffkit.timeseries import SINES_SEEDS, sines  # noqa: E402

LENGTH, CHANNELS, HORIZON = 24, 5, 6


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=100, help="windows per forecast (default 100)")
    parser.add_argument("--steps", type=int, default=50, help="ddpm steps (default 50)")
    parser.add_argument("--rounds", type=int, default=5, help="timed forecasts of each weight (default 5)")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--name", default="reconstruction_guidance_cost")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    from context_fid_sines import train_diffusion
    with tempfile.TemporaryDirectory() as folder:
        net, schedule, _ = train_diffusion(args.train_steps, 64, 1e-3, 0, 32, 1000, Path(folder))
    net.eval()
    den = Denoiser(net, schedule, prediction_type="v_prediction")
    history = sines(args.num, LENGTH, CHANNELS, seed=SINES_SEEDS[False])[..., :LENGTH - HORIZON]
    seconds = {0.0: [], 1.0: []}
    for _ in range(args.rounds):
        for weight in seconds:
            tick = time.perf_counter()
            diffkit.forecast(den, history, HORIZON, "ddpm", args.steps, reconstruction_weight=weight, seed=0,
                             length=LENGTH, progress=False)
            seconds[weight].append(time.perf_counter() - tick)
            print(f"w={weight:g}: {seconds[weight][-1]:.2f} s", flush=True)
    median = {w: statistics.median(s) for w, s in seconds.items()}
    ratio = median[1.0] / median[0.0]
    print(f"median w=0 {median[0.0]:.2f} s, w=1 {median[1.0]:.2f} s: ratio {ratio:.2f}")
    report = {
        "benchmark": args.name, "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/reconstruction_guidance_cost.py "
                   + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {**vars(args), "out": os.path.relpath(Path(args.out).resolve(), ROOT)},
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "seconds": {f"w={w:g}": s for w, s in seconds.items()},
        "median_seconds": {f"w={w:g}": m for w, m in median.items()}, "ratio_w1_over_w0": ratio,
    }
    path = write_json(report, Path(args.out) / f"{args.name}_{report['date']}.json")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
