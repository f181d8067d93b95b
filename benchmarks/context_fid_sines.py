"""Context-FID and the other series metrics on the Sines data set: real vs. real, a small time-series
diffusion model, crude baselines.

Context-FID (Jeha et al. 2022): TS2Vec (Yue et al. 2022) trained on the real series, embeddings
max-pooled over time, Frechet distance of the Gaussian fits (diffkit.metrics.context_fid). Data:
Sines (TimeGAN / Diffusion-TS: 5 channels, length 24, diffkit.timeseries.sines). As Diffusion-TS
does, the metric sees the series in [0, 1] ((x + 1) / 2); the model is trained on [-1, 1].

The same rows also get Diffusion-TS's correlational score (diffkit.metrics.correlational, on the
whole sets) and TimeGAN's discriminative and predictive scores (diffkit.metrics.posthoc_rnn, the
authors' 2000 / 5000 iterations of batches of 128 unless reduced; mean +- std over ``--rnn-seeds``
runs), all against the same real reference set in [0, 1]; ``--skip-rnn`` leaves the last two out.

Rows (lower is better; Context-FID the mean +- std over ``--encoder-seeds`` encoders, all trained on
the same real reference set, each scoring every row):

    real (independent draw)   another seed of the generator: the floor set by sampling noise
    diffusion <sampler>       a 1-D U-Net (diffkit.models.temporal) trained for ``--steps`` steps with
                              L_simple (v-prediction, cosine schedule) by diffkit's Trainer (as
                              ``diffkit train --dataset sines``), EMA weights, sampled with
                              diffkit.sample (DDIM 10 / 50 steps, DPM-Solver++ 2M 10 steps, and
                              the last with x0 clipped to [-1, 1] as Diffusion-TS's sampler clips)
    gaussian (full cov)       a Gaussian with the data's mean and full (C L)x(C L) covariance
    gaussian (per step)       independent in time: per time step the data's mean and C x C covariance
    shuffled time             real series with their time steps permuted (one permutation per series)

Until 6 December 2026 the training loop was written out here (batches drawn with replacement);
it now runs through the Trainer (shuffled epochs; the same optimiser, warm-up, clip and EMA).
A benchmark, not a CI test:

    python benchmarks/context_fid_sines.py                       # ~15 min of CPU time
    python benchmarks/context_fid_sines.py --steps 200 --num 600 --encoder-seeds 1 \
        --discriminative-iterations 100 --predictive-iterations 100   # quick check
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import diffkit  # noqa: E402
from diffkit import Denoiser  # noqa: E402
from diffkit.evaluation import write_json  # noqa: E402
from diffkit.metrics.context_fid import context_fid_statistics, train_context_fid_encoder  # noqa: E402
from diffkit.metrics.correlational import correlational_score  # noqa: E402
from diffkit.metrics.posthoc_rnn import discriminative_score, predictive_score  # noqa: E402
from diffkit.metrics.frechet import frechet_distance_of_stats  # noqa: E402
from diffkit.models import num_parameters  # noqa: E402
from diffkit.timeseries import sines, to_unit_range  # noqa: E402

SAMPLERS = (("ddim", 10, None), ("ddim", 50, None), ("dpm-solver++-2m", 10, None), ("dpm-solver++-2m", 10, "clip"))


def train_diffusion(steps: int, batch_size: int, lr: float, seed: int, width: int, train_num: int, folder: Path):
    """diffkit's Trainer on dataset 'sines' (the Sines set of ``train_num`` series, seed 123): L_simple
    (v target, cosine schedule, T = 1000) with uniform t, AdamW, linear warm-up over 100 steps from lr / 100
    to ``lr`` (config lr = lr / 100, multiplier 100), then constant; grad-norm clip 1, EMA 0.999 with warm-up;
    returns the EMA network, the schedule and the mean loss of the last 100 logged steps."""
    import csv

    from diffkit.config import TrainConfig
    from diffkit.loading import load_denoiser
    from diffkit.training import Trainer
    cfg = TrainConfig(dataset="sines", num_series=train_num, seq_length=24, in_channels=5, channel=width,
                      channel_mult=[1, 2, 2], num_res_blocks=1, dropout=0.0, T=1000, schedule="cosine",
                      prediction_type="v_prediction", lr=lr / 100, multiplier=100.0, lr_schedule="warmup-constant",
                      warmup_fraction=min((100 + 0.5) / steps, 0.999), grad_clip=1.0, weight_decay=0.0, ema_decay=0.999,
                      ema_warmup=True, batch_size=batch_size, max_steps=steps, seed=seed, device="cpu",
                      save_every_epochs=10**9, log_every=1, save_weight_dir=str(folder / "checkpoints"),
                      sampled_dir=str(folder / "samples"))
    Trainer(cfg, progress=False, log=lambda *_: None).run()
    with open(folder / "checkpoints" / "train_log.csv", newline="") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    denoiser = load_denoiser(folder / "checkpoints" / "latest.safetensors")  # the EMA weights
    return denoiser.model, denoiser.schedule, sum(losses[-100:]) / min(100, len(losses))


def gaussian_full(data: torch.Tensor, num: int, seed: int) -> torch.Tensor:
    flat = data.reshape(data.shape[0], -1).double()
    mean, cov = flat.mean(0), torch.cov(flat.T)
    dist = torch.distributions.MultivariateNormal(mean, cov + 1e-9 * torch.eye(cov.shape[0], dtype=cov.dtype))
    torch.manual_seed(seed)
    return dist.sample((num,)).float().reshape(num, *data.shape[1:])


def gaussian_per_step(data: torch.Tensor, num: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    out = torch.empty(num, *data.shape[1:])
    for step in range(data.shape[2]):
        values = data[:, :, step].double()
        cov = torch.cov(values.T) + 1e-9 * torch.eye(data.shape[1], dtype=torch.float64)
        out[:, :, step] = torch.distributions.MultivariateNormal(values.mean(0), cov).sample((num,)).float()
    return out


def shuffled_time(data: torch.Tensor, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    order = torch.argsort(torch.rand(data.shape[0], data.shape[2], generator=generator), dim=1)
    return torch.gather(data, 2, order[:, None, :].expand(-1, data.shape[1], -1))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=2000, help="series per evaluated set (default 2000)")
    parser.add_argument("--train-num", type=int, default=10000, help="training series (Diffusion-TS: 10000)")
    parser.add_argument("--steps", type=int, default=3000, help="diffusion training steps")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=32, help="U-Net base channels")
    parser.add_argument("--encoder-seeds", type=int, default=3)
    parser.add_argument("--encoder-iterations", type=int, default=None,
                        help="TS2Vec iterations (default: the authors' rule, 600 for 2000 x 5 x 24 values)")
    parser.add_argument("--discriminative-iterations", type=int, default=2000, help="TimeGAN: 2000")
    parser.add_argument("--predictive-iterations", type=int, default=5000, help="TimeGAN: 5000")
    parser.add_argument("--rnn-seeds", type=int, default=1, help="runs of each post-hoc GRU score (papers: 5)")
    parser.add_argument("--skip-rnn", action="store_true", help="leave out the discriminative and predictive scores")
    parser.add_argument("--name", default="context_fid_sines", help="JSON file name before the date")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()

    train = sines(args.train_num, seed=123)               # Diffusion-TS's training seed
    reference = train[:args.num]                          # the real set the encoder is trained on
    sets = {"real (independent draw)": sines(args.num, seed=2024)}

    tic = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        net, schedule, final_loss = train_diffusion(args.steps, args.batch_size, args.lr, seed=0, width=args.width,
                                                    train_num=args.train_num, folder=Path(folder))
    train_seconds = time.perf_counter() - tic
    denoiser = Denoiser(net, schedule, prediction_type="v_prediction")
    sample_seconds = {}
    for sampler, steps, thresholding in SAMPLERS:
        tic = time.perf_counter()
        name = f"diffusion {sampler} {steps}" + (f" {thresholding}" if thresholding else "")
        sets[name] = diffkit.sample(denoiser, (args.num, *train.shape[1:]), sampler=sampler, steps=steps,
                                    seed=0, thresholding=thresholding, progress=False)
        sample_seconds[name] = time.perf_counter() - tic
    sets["gaussian (full cov)"] = gaussian_full(train, args.num, seed=1)
    sets["gaussian (per step)"] = gaussian_per_step(train, args.num, seed=1)
    sets["shuffled time"] = shuffled_time(sines(args.num, seed=2025), seed=1)

    scores = {name: [] for name in sets}
    tic = time.perf_counter()
    for seed in range(args.encoder_seeds):
        encoder = train_context_fid_encoder(to_unit_range(reference), args.encoder_iterations, seed=seed)
        ref_stats = context_fid_statistics(encoder, to_unit_range(reference))
        for name, series in sets.items():
            stats = context_fid_statistics(encoder, to_unit_range(series))
            scores[name].append(frechet_distance_of_stats(ref_stats, stats))
    metric_seconds = time.perf_counter() - tic

    real = to_unit_range(reference)
    other = {name: {"correlational": [correlational_score(real, to_unit_range(series))]}
             for name, series in sets.items()}
    tic = time.perf_counter()
    for name, series in ([] if args.skip_rnn else sets.items()):
        generated = to_unit_range(series)
        other[name]["discriminative"] = [
            discriminative_score(real, generated, iterations=args.discriminative_iterations, seed=seed)
            for seed in range(args.rnn_seeds)]
        other[name]["predictive"] = [predictive_score(real, generated, iterations=args.predictive_iterations, seed=seed)
                                     for seed in range(args.rnn_seeds)]
    rnn_seconds = time.perf_counter() - tic

    def mean_std(values):
        t = torch.tensor(values, dtype=torch.float64)
        return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0

    rows = {}
    print(f"Sines (5 x 24), {args.num} series per set; Context-FID: {args.encoder_seeds} TS2Vec encoders; "
          f"post-hoc GRUs: {args.rnn_seeds} run(s) of {args.discriminative_iterations} / {args.predictive_iterations} "
          "iterations")
    print(f"{'set':34s} {'Context-FID':>20s} {'correlational':>13s} {'discriminative':>20s} {'predictive':>20s}"
          "  range of the set")
    for name, values in scores.items():
        mean, std = mean_std(values)
        rows[name] = {"context_fid_mean": mean, "context_fid_std": std, "per_encoder": values,
                      "min": float(sets[name].min()), "max": float(sets[name].max()),
                      "sample_seconds": sample_seconds.get(name)}
        cells = [f"{other[name]['correlational'][0]:13.4f}"]
        rows[name]["correlational"] = other[name]["correlational"][0]
        for metric in ("discriminative", "predictive"):
            if metric in other[name]:
                m, sd = mean_std(other[name][metric])
                rows[name].update({f"{metric}_mean": m, f"{metric}_std": sd,
                                   f"{metric}_per_seed": other[name][metric]})
                cells.append(f"{m:10.4f} +- {sd:7.4f}")
            else:
                cells.append(f"{'-':>20s}")
        print(f"{name:34s} {mean:10.4f} +- {std:7.4f} {' '.join(cells)}  [{float(sets[name].min()):.2f}, "
              f"{float(sets[name].max()):.2f}]")
    report = {
        "benchmark": "context_fid_sines", "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/context_fid_sines.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {**vars(args), "out": os.path.relpath(Path(args.out).resolve(), ROOT)},  # no machine paths
        "unet_parameters": num_parameters(net), "final_train_loss": final_loss,
        "train_seconds": train_seconds, "metric_seconds": metric_seconds, "rnn_seconds": rnn_seconds,
        "total_seconds": time.perf_counter() - started, "cpu_seconds": time.process_time(),
        "torch": torch.__version__, "rows": rows,
    }
    path = write_json(report, Path(args.out) / f"{args.name}_{report['date']}.json")
    print(f"train {train_seconds:.0f} s, Context-FID {metric_seconds:.0f} s, GRU scores {rnn_seconds:.0f} s, "
          f"total {report['total_seconds']:.0f} s; wrote {path}")


if __name__ == "__main__":
    main()
