"""Few-step sampling of the demo model trained as eps and as flow matching: FD-classifier per sampler and NFE.

SD3 (Esser et al. 2024, Sec. 5.1 and Fig. 3) finds rectified flow ahead of eps-prediction at few sampling
steps. This scores the ``diffkit demo`` configuration trained with each objective (``--variants``, as in
``benchmarks/training_options.py``, whose training, sampling, scoring and paired bootstrap it reuses) at each
(sampler, NFE) cell of ``--samplers`` x ``--nfe``: ``--num`` samples (sample i from noise seed i in every
model), spending exactly NFE network evaluations each (:func:`diffkit.sampling.steps_for_nfe`), FD-classifier
against the 597 held-out digits 1200..1796 under ``--evaluator``, and each model's difference to the first
variant's with the same resampled indices in every model and cell (200 replicates).

    PYTHONPATH=. python benchmarks/flow_few_step.py --evaluator EV --out-dir benchmarks/out/flow_few_step \\
        --json benchmarks/results/flow_few_step_demo_2026-12-06.json

``--variants`` takes training_options.py's entries (NAME=KEY=VALUE[,...] trained into OUT_DIR/NAME, or
NAME=@CHECKPOINT); every model is trained (or reused) before any cell is sampled, and each model's sample
features are kept in its folder, so a rerun scores only the missing cells. The JSON is written after every cell.

``--flow-shifts S1,S2,...`` samples every flow-matching variant at each sampling shift (SD3 eq. 23 at sampling
time, ``diffkit sample --flow-shift``; :func:`diffkit.timesteps.reshift_flow_grid`), one column ``NAME~S`` per
shift (other variants: one column, their own grid); each column is paired against the first, so give the
training shift first to compare every shift with it. Every (column, sampler, NFE) grid is made before anything
is sampled: a shift the grid cannot take is a one-line DiffkitError.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.evaluation import write_json  # noqa: E402
from diffkit.experiments import experiment_scorer  # noqa: E402
from diffkit.loading import load_denoiser  # noqa: E402
from diffkit.sampling import plan, resolve_sampler, steps_for_nfe  # noqa: E402
from diffkit.timesteps import trained_flow_shift  # noqa: E402
from training_options import (bootstrap_picks, difference_text, fd_and_bootstrap, model_features,  # noqa: E402
                              paired_difference, parse_variants, train_variant, variant_config)

FLOW = "prediction_type=flow_prediction,schedule=flow"
DEFAULT_VARIANTS = f"baseline=;flow={FLOW};flow-ln={FLOW},timestep_sampler=logit-normal"


def parse_nfes(text: str) -> list[int]:
    """'5,10,20' -> [5, 10, 20]; anything but positive integers is a one-line DiffkitError."""
    try:
        nfes = [int(item) for item in text.split(",")]
    except ValueError:
        nfes = []
    if not nfes or any(n < 1 for n in nfes):
        raise DiffkitError(f"--nfe {text!r}: give positive integers joined by ',', e.g. 5,10,20")
    return nfes


def parse_samplers(text: str) -> list[str]:
    """'unipc,ddim@trailing' -> the sampler specs, each checked (an unknown name: a one-line DiffkitError)."""
    samplers = [item.strip() for item in text.split(",") if item.strip()]
    if not samplers:
        raise DiffkitError(f"--samplers {text!r}: give sampler specs joined by ',', e.g. unipc,ddim@trailing")
    for sampler in samplers:
        resolve_sampler(sampler)
    return samplers


def parse_shifts(text) -> list:
    """'1,0.5,3' -> [1.0, 0.5, 3.0]; None (no option) -> [None]; anything but positive numbers is a one-line
    DiffkitError."""
    if text is None:
        return [None]
    try:
        shifts = [float(item) for item in text.split(",")]
    except ValueError:
        shifts = []
    if not shifts or any(not 0 < s < float("inf") for s in shifts):
        raise DiffkitError(f"--flow-shifts {text!r}: give positive numbers joined by ',', e.g. 1,0.5,3")
    return shifts


def shift_columns(models: dict, shifts: list) -> list:
    """(column name, model name, sampling shift or None): each flow model once per shift, other models once."""
    columns = []
    for name, (ckpt, train_s, den, scorer) in models.items():
        flow = trained_flow_shift(den.schedule) is not None
        for shift in (shifts if flow else [None]):
            columns.append((name if shift is None else f"{name}~{shift:g}", name, shift))
    return columns


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--evaluator", type=str, required=True, help="diffkit train-evaluator --dataset digits's checkpoint")
    p.add_argument("--out-dir", type=str, default="benchmarks/out/flow_few_step", help="one run folder per variant")
    p.add_argument("--variants", type=str, default=DEFAULT_VARIANTS,
                   help="training_options.py's NAME=KEY=VALUE[,...] or NAME=@CHECKPOINT joined by ';' "
                        "(first: baseline)")
    p.add_argument("--samplers", type=str, default="dpm-solver++-2m,unipc,ddim@trailing",
                   help="sampler specs joined by ','")
    p.add_argument("--nfe", type=str, default="5,10,20", help="network evaluations per sample, joined by ','")
    p.add_argument("--steps", type=int, default=1500, help="training steps of every variant (the demo's 1500)")
    p.add_argument("--num", type=int, default=1000, help="samples per model and cell")
    p.add_argument("--batch-size", type=int, default=500, help="sampling and feature batch size")
    p.add_argument("--replicates", type=int, default=200, help="paired bootstrap replicates")
    p.add_argument("--json", type=str, help="also write the cells, spreads and intervals here")
    p.add_argument("--threads", type=int, default=1, help="torch threads (training, sampling, scoring)")
    p.add_argument("--flow-shifts", type=str, default=None,
                   help="sampling shifts (SD3 eq. 23) of every flow model joined by ',' (first: paired baseline)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants, samplers, nfes = parse_variants(args.variants), parse_samplers(args.samplers), parse_nfes(args.nfe)
    shifts = parse_shifts(args.flow_shifts)
    for name, options in variants:  # every config checked before anything is trained
        if "checkpoint" not in options:
            variant_config(Path(args.out_dir) / name, args.steps, options)
    models = {}
    for name, options in variants:
        ckpt, train_s = train_variant(Path(args.out_dir) / name, args.steps, options)
        den = load_denoiser(ckpt, device="cpu")
        scorer = experiment_scorer("fd-classifier", den, evaluator=args.evaluator, batch_size=args.batch_size)
        models[name] = (ckpt, train_s, den, scorer)
        print(f"{name}: {ckpt} (train {train_s:.0f} s CPU)", flush=True)
    columns = shift_columns(models, shifts)
    for column, name, shift in columns:  # every grid made (and a shift it cannot take refused) before sampling
        for sampler in samplers:
            for nfe in nfes:
                den = models[name][2]
                plan(den, sampler, steps_for_nfe(den, sampler, nfe), options={} if shift is None else
                     {"flow_shift": shift})
    baseline = columns[0][0]
    picks = bootstrap_picks(args.num, args.replicates)  # the same for every model and cell
    rows = []
    for sampler in samplers:
        for nfe in nfes:
            point, boot = {}, {}
            for column, name, shift in columns:
                ckpt, train_s, den, scorer = models[name]
                steps = steps_for_nfe(den, sampler, nfe)
                features, sample_s, measured = model_features(den, scorer, Path(args.out_dir) / name, ckpt,
                                                               sampler, steps, args.num, args.batch_size, shift)
                point[column], boot[column] = fd_and_bootstrap(features, scorer.reference_classifier, picks)
                row = {"sampler": sampler, "nfe": nfe, "steps": steps, "measured_nfe": measured, "variant": column,
                       "flow_shift": shift, "checkpoint": str(ckpt), "sample_cpu_s": sample_s, "fd": point[column],
                       "fd_sd": float(boot[column].std(ddof=1))}
                row.update(paired_difference(point, boot, column, baseline))
                rows.append(row)
                print(f"{sampler:16s} NFE {nfe:3d} {column:10s} FD {point[column]:7.2f} +- {row['fd_sd']:.2f}"
                      + difference_text(row, baseline)
                      + f"  (sample {sample_s:.0f} s CPU)", flush=True)
            if args.json:  # after every cell: an interrupted run keeps what it scored
                write_json({"steps": args.steps, "num": args.num, "replicates": args.replicates,
                            "evaluator": args.evaluator, "variants": args.variants, "flow_shifts": args.flow_shifts,
                            "rows": rows}, args.json)
    names = [column for column, name, shift in columns]
    print("\n| sampler | NFE | " + " | ".join(names[:1] + [f"{n} (minus {baseline}, 95%)" for n in names[1:]]) + " |")
    print("|---|---|" + "---|" * len(names))
    for start in range(0, len(rows), len(names)):
        cell = rows[start:start + len(names)]
        parts = [f"{r['fd']:.2f} +- {r['fd_sd']:.2f}" + (f" ({r['difference']:+.2f} [{r['interval_95'][0]:+.2f}, "
                                                          f"{r['interval_95'][1]:+.2f}])" if "difference" in r else "")
                 for r in cell]
        print(f"| {cell[0]['sampler']} | {cell[0]['nfe']} | " + " | ".join(parts) + " |")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DiffkitError as err:
        print(f"flow_few_step: error: {err}", file=sys.stderr)
        sys.exit(2)
