"""Training options against L_simple on the demo model: input perturbation and P2 weighting, with noise estimates.

Trains the ``diffkit demo`` configuration (``DEMO_CONFIG``: 16x16 digits, 1.11M-parameter U-Net, 1500 steps,
seed 0) once per variant, each with one option changed (``--set``-style overrides), then scores every model the
same way: ``--num`` samples with one sampler (sample i from noise seed i in every model), FD-classifier against
the 597 held-out digits 1200..1796 in the feature space of ``--evaluator`` (``diffkit train-evaluator --dataset
digits``), and optionally the strided NLL bound (bits/dim) of ``--nll-num`` training digits. The spread:

* a paired bootstrap over the sample indices (the same resampled indices in every model, as
  ``benchmarks/fd_bootstrap.py`` does over samplers): each FD's standard deviation, and each difference to the
  baseline's with its standard deviation and 2.5-97.5% interval; it covers the draw of samples only;
* the training run's own noise: variants that differ from the baseline only in ``seed`` (``--variants`` entry
  ``baseline-seed1=seed=1``) are trained with another initialisation and data order; the FD gap between the
  baseline's seeds is the noise floor an option's difference must clear, since the bootstrap does not see it.

Run (about 5 min of one CPU thread per model on the 2-core machine, plus 1-2 min of sampling per model):

    PYTHONPATH=. python benchmarks/training_options.py --evaluator EV --out-dir benchmarks/out/training_options \\
        --json benchmarks/results/training_options_demo_2026-12-06.json

``--variants``: NAME=KEY=VALUE[,KEY=VALUE...] entries joined by ';' (an empty override list: the baseline,
which is the first entry; a value may not hold a comma), or NAME=@CHECKPOINT to score a model trained elsewhere
(e.g. the Quick start's ``runs/demo/checkpoints/latest.safetensors``). A model already trained in OUT_DIR/NAME
(its ``latest.safetensors`` at the requested steps with the same options) is reused, and so are its sample
features (OUT_DIR/NAME/features_*.pt, keyed by sampler, steps and ``--num``) and NLL, so the command continues
after an interruption and a rerun with other variants scores only the new ones; the JSON is written after
every model. ``--steps`` (default the demo's 1500) and ``--num`` are the size knobs.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffkit.commands.demo import demo_config  # noqa: E402
from diffkit.config import TrainConfig, parse_overrides  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.evaluation import (generate_samples, nll_bits_per_dim, reference_images,  # noqa: E402
                                strided_timesteps, write_json)
from diffkit.experiments import experiment_scorer  # noqa: E402
from diffkit.loading import load_denoiser  # noqa: E402
from diffkit.metrics import extract_features, feature_statistics  # noqa: E402
from diffkit.metrics.frechet import frechet_distance_of_stats  # noqa: E402

DEFAULT_VARIANTS = ("baseline=;ip0.1=input_perturbation=0.1;p2-1-1=p2_gamma=1,p2_k=1;"
                    "baseline-seed1=seed=1")


def parse_variants(text: str) -> list[tuple[str, dict]]:
    """'a=;b=input_perturbation=0.1,seed=1' -> [('a', {}), ('b', {'input_perturbation': 0.1, 'seed': 1})]."""
    variants = []
    for entry in filter(None, (part.strip() for part in text.split(";"))):
        name, _, overrides = entry.partition("=")
        if not name:
            raise DiffkitError(f"--variants entry {entry!r}: give NAME=KEY=VALUE[,KEY=VALUE], "
                               f"e.g. ip=input_perturbation=0.1")
        if overrides.startswith("@"):  # a checkpoint trained elsewhere
            if not Path(overrides[1:]).is_file():
                raise DiffkitError(f"--variants entry {entry!r}: {overrides[1:]} is not a file")
            variants.append((name, {"checkpoint": overrides[1:]}))
            continue
        variants.append((name, parse_overrides([item for item in overrides.split(",") if item])))
    if not variants:
        raise DiffkitError("--variants is empty; give at least the baseline, e.g. 'baseline='")
    return variants


def variant_config(folder: Path, steps: int, options: dict):
    """The demo's TrainConfig with ``options`` changed (validated as ``--set`` is)."""
    cfg = demo_config(str(folder), steps, "cpu")
    return cfg if not options else TrainConfig.from_dict({**cfg.to_dict(), **options})


def train_variant(folder: Path, steps: int, options: dict) -> tuple[Path, float]:
    """Trains the variant into ``folder`` (or reuses a finished run there); its checkpoint and training seconds."""
    from diffkit.checkpoint import peek_metadata
    from diffkit.training import Trainer
    if "checkpoint" in options:
        return Path(options["checkpoint"]), float("nan")
    cfg = variant_config(folder, steps, options)
    latest = Path(cfg.save_weight_dir) / "latest.safetensors"
    if latest.is_file():
        meta = peek_metadata(latest) or {}
        if meta.get("step") == steps and all(meta.get("config", {}).get(k) == v for k, v in options.items()):
            return latest, float("nan")
        raise DiffkitError(f"{latest} holds another run (step {meta.get('step')}); remove {folder} "
                           f"or use another --out-dir")
    start = time.process_time()
    Trainer(cfg, progress=False).run()
    return latest, time.process_time() - start


def bootstrap_picks(num: int, replicates: int) -> list:
    """The resampled sample indices of every bootstrap replicate (seed 0): the same for every model (paired)."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, num, num) for _ in range(replicates)]


def model_features(den, scorer, folder: Path, ckpt, sampler: str, sample_steps: int, num: int,
                   batch_size: int, flow_shift=None) -> tuple[np.ndarray, float, object]:
    """The evaluator features of ``num`` samples (sample i from noise seed i), their sampling CPU seconds and
    network evaluations per sample (None when reused from a file that lacks it); kept in
    ``folder/features_SAMPLER_STEPS_NUM.pt`` (``..._NUM_shiftS.pt`` with a sampling ``flow_shift`` S, SD3 eq. 23
    at sampling time) and reused from there."""
    shift = {} if flow_shift is None else {"flow_shift": flow_shift}
    saved = folder / (f"features_{sampler}_{sample_steps}_{num}" + (f"_shift{flow_shift:g}" if shift else "") + ".pt")
    if saved.is_file():  # this model's samples were scored before (sample i from seed i: the same samples)
        kept = torch.load(saved, weights_only=False)  # this script's own file (numpy features)
        return kept["features"], kept["sample_cpu_s"], kept.get("nfe")
    start = time.process_time()
    images, nfe = generate_samples(den, num, sampler=sampler, steps=sample_steps, seed=0, batch_size=batch_size,
                                   return_nfe=True, **shift)
    sample_s = time.process_time() - start
    features = extract_features(scorer.evaluator.features_and_logits, images, batch_size, "cpu", progress=False)[0]
    saved.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"features": features, "sample_cpu_s": sample_s, "checkpoint": str(ckpt), "nfe": nfe}, saved)
    return features, sample_s, nfe


def fd_and_bootstrap(features: np.ndarray, reference, picks: list) -> tuple[float, np.ndarray]:
    """FD-classifier of ``features`` against the reference statistics, and its value on every replicate."""
    point = frechet_distance_of_stats(feature_statistics(features), reference)
    return point, np.array([frechet_distance_of_stats(feature_statistics(features[i]), reference) for i in picks])


def paired_difference(point: dict, boot: dict, name: str, baseline: str) -> dict:
    """``name`` minus ``baseline``: the FD difference, its paired-bootstrap sd and 95% interval (empty for the
    baseline itself), as the JSON rows record them."""
    if name == baseline:
        return {}
    diff = boot[name] - boot[baseline]
    low, high = np.percentile(diff, [2.5, 97.5])
    return dict(difference=point[name] - point[baseline], difference_sd=float(diff.std(ddof=1)),
                interval_95=[float(low), float(high)])


def difference_text(row: dict, baseline: str) -> str:
    """The printed "minus BASELINE: d +- sd [low, high]" of a row (empty for the baseline)."""
    if "difference" not in row:
        return ""
    low, high = row["interval_95"]
    return f"  minus {baseline}: {row['difference']:+7.2f} +- {row['difference_sd']:.2f} [{low:+.2f}, {high:+.2f}]"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--evaluator", required=True, help="diffkit train-evaluator --dataset digits's checkpoint")
    p.add_argument("--out-dir", default="benchmarks/out/training_options", help="one run folder per variant")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help="NAME=KEY=VALUE[,...] joined by ';' (first: baseline)")
    p.add_argument("--steps", type=int, default=1500, help="training steps of every variant (the demo's 1500)")
    p.add_argument("--num", type=int, default=1000, help="samples per model")
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--nll-num", type=int, default=0, help="training digits 0.. for the strided NLL bound (0: none)")
    p.add_argument("--replicates", type=int, default=200)
    p.add_argument("--json", help="also write the cells, spreads and intervals here")
    p.add_argument("--threads", type=int, default=1, help="torch threads (training, sampling, scoring)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = parse_variants(args.variants)
    for name, options in variants:  # every config checked before anything is trained
        if "checkpoint" not in options:
            variant_config(Path(args.out_dir) / name, args.steps, options)
    baseline = variants[0][0]
    picks = bootstrap_picks(args.num, args.replicates)  # the same for every model
    point, boot, rows = {}, {}, []
    for name, options in variants:
        ckpt, train_s = train_variant(Path(args.out_dir) / name, args.steps, options)
        den = load_denoiser(ckpt, device="cpu")
        scorer = experiment_scorer("fd-classifier", den, evaluator=args.evaluator, batch_size=args.batch_size)
        features, sample_s, _ = model_features(den, scorer, Path(args.out_dir) / name, ckpt, args.sampler,
                                               args.sample_steps, args.num, args.batch_size)
        point[name], boot[name] = fd_and_bootstrap(features, scorer.reference_classifier, picks)
        row = {"variant": name, "options": options, "checkpoint": str(ckpt), "train_cpu_s": train_s,
               "sample_cpu_s": sample_s, "fd": point[name], "fd_sd": float(boot[name].std(ddof=1))}
        if args.nll_num:
            saved_nll = Path(args.out_dir) / name / f"nll_{args.nll_num}.pt"
            if saved_nll.is_file():
                nll = torch.load(saved_nll, weights_only=False)
            else:
                data, _ = reference_images("digits", train=True, img_size=16, channels=1, limit=args.nll_num)
                nll = nll_bits_per_dim(den, data, timesteps=strided_timesteps(den.schedule.num_timesteps))
                torch.save(nll, saved_nll)
            row.update(nll_bpd=nll["bpd"], nll_sem=nll["sem"], nll_num=nll["num_images"])
        row.update(paired_difference(point, boot, name, baseline))
        rows.append(row)
        print(f"{name:16s} FD {row['fd']:7.2f} +- {row['fd_sd']:.2f}" + difference_text(row, baseline)
              + (f"  NLL {row['nll_bpd']:.3f} +- {row['nll_sem']:.3f} bits/dim" if args.nll_num else "")
              + (f"  (train {train_s:.0f} s, sample {sample_s:.0f} s CPU)"), flush=True)
        if args.json:  # after every model: an interrupted run keeps what it scored
            write_json({"steps": args.steps, "num": args.num, "sampler": args.sampler,
                        "sample_steps": args.sample_steps, "replicates": args.replicates,
                        "evaluator": args.evaluator, "rows": rows}, args.json)
    print(f"\n| variant | FD-classifier (+- bootstrap sd) | minus {baseline} (+- sd) [95%] |"
          + (" NLL bits/dim (+- sem) |" if args.nll_num else ""))
    print("|---|---|---|" + ("---|" if args.nll_num else ""))
    for row in rows:
        diff = (f"{row['difference']:+.2f} +- {row['difference_sd']:.2f} [{row['interval_95'][0]:+.2f}, "
                f"{row['interval_95'][1]:+.2f}]" if "difference" in row else "")
        nll = f" {row['nll_bpd']:.3f} +- {row['nll_sem']:.3f} |" if args.nll_num else ""
        print(f"| {row['variant']} | {row['fd']:.2f} +- {row['fd_sd']:.2f} | {diff} |{nll}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DiffkitError as err:
        print(f"training_options: error: {err}", file=sys.stderr)
        sys.exit(2)
