"""Post-hoc EMA (Karras et al. 2024, EDM2 Sec. 3) on the demo model: FD-classifier of synthesised EMA widths.

Trains the ``diffkit demo`` configuration (16x16 digits, 1.11M-parameter U-Net, 1500 steps, seed 0) once with
``posthoc_ema=0.05,0.10`` and a snapshot every ``--every`` steps (the tracked power-function EMAs do not
change training: the run's weights and its usual EMA are the demo's, bit for bit), synthesises the EMA of each
``--sigma-rels`` width from the snapshots (``diffkit.posthoc_ema.synthesize``, App. C.3's least squares) and
scores every model with ``benchmarks/training_options.py``'s helpers: ``--num`` DDIM-50 samples (sample i from
noise seed i in every model), FD-classifier against the 597 held-out digits in the feature space of ``--evaluator``
(``diffkit train-evaluator --dataset digits --epochs 10 --device cpu``, trained here into that path when it is
missing; seed 0: a fresh clone gets the same weights bit for bit), a paired bootstrap over the sample indices against
the run's own EMA (the demo's ``ema_decay=0.999`` with warm-up), which is the first row. The bootstrap covers
the draw of samples only, not the training run's noise (BENCHMARKS.md: a second training seed moved the
demo's FD by 1.3).

    PYTHONPATH=. python benchmarks/posthoc_ema_digits.py --json benchmarks/results/posthoc_ema_digits_2026-12-06.json

A finished run, synthesised checkpoints and sample features (OUT_DIR/features/MODEL/) in OUT_DIR are reused; an
interrupted run (Ctrl-C writes its checkpoint) is resumed exactly.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from diffkit.checkpoint import load_checkpoint, peek_metadata, save_checkpoint  # noqa: E402
from diffkit.commands.demo import demo_config  # noqa: E402
from diffkit.config import TrainConfig  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.evaluation import write_json  # noqa: E402
from diffkit.experiments import experiment_scorer  # noqa: E402
from diffkit.loading import load_denoiser  # noqa: E402
from diffkit.posthoc_ema import synthesize  # noqa: E402
from training_options import (bootstrap_picks, difference_text, fd_and_bootstrap, model_features,  # noqa: E402
                              paired_difference)


def trained_run(folder: Path, steps: int, every: int) -> Path:
    """The demo run with post-hoc EMA in ``folder`` (trained here, or reused when finished); its latest checkpoint."""
    from diffkit.training import Trainer
    cfg = demo_config(str(folder), steps, "cpu")
    cfg = TrainConfig.from_dict({**cfg.to_dict(), "posthoc_ema": [0.05, 0.10], "posthoc_ema_every": every})
    latest = Path(cfg.save_weight_dir) / "latest.safetensors"
    if latest.is_file():
        saved = peek_metadata(latest) or {}
        if (saved.get("config") or {}).get("posthoc_ema") != [0.05, 0.10] or saved.get("step", steps + 1) > steps:
            raise DiffkitError(f"{latest} holds another run; remove {folder}")
        if saved["step"] == steps:
            return latest
        cfg = TrainConfig.from_dict({**cfg.to_dict(), "training_load_weight": str(latest)})  # an exact resume
    start = time.process_time()
    Trainer(cfg, progress=False).run()
    print(f"trained {steps} steps in {time.process_time() - start:.0f} s CPU", flush=True)
    return latest


def evaluator(path: Path) -> Path:
    """``path``, the digit evaluator, trained there first (``diffkit train-evaluator``, seed 0) when it is missing."""
    if not path.is_file():
        from diffkit.cli import main as diffkit
        if diffkit(["train-evaluator", "--dataset", "digits", "--epochs", "10", "--device", "cpu", "--out", str(path)]):
            raise DiffkitError(f"training the evaluator {path} failed")
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--evaluator", default="benchmarks/out/posthoc_ema/digits_ev.safetensors",
                   help="diffkit train-evaluator --dataset digits's checkpoint (trained here when missing)")
    p.add_argument("--out-dir", default="benchmarks/out/posthoc_ema")
    p.add_argument("--steps", type=int, default=1500, help="training steps (the demo's 1500)")
    p.add_argument("--every", type=int, default=50, help="posthoc_ema_every: a snapshot every this many steps")
    p.add_argument("--sigma-rels", default="0.03,0.07,0.12,0.2", help="widths to synthesise")
    p.add_argument("--num", type=int, default=500, help="samples per model")
    p.add_argument("--sample-steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--replicates", type=int, default=200)
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    args.evaluator = str(evaluator(Path(args.evaluator)))
    latest = trained_run(out / "run", args.steps, args.every)
    models = [("ema_decay 0.999 (the demo's EMA)", latest, {})]
    for text in args.sigma_rels.split(","):
        sigma_rel = float(text)
        path = out / f"phema_{sigma_rel:.3f}.safetensors"
        if not path.is_file():
            save_checkpoint(path, *synthesize(out / "run", sigma_rel, max_error=1.0))
        info = load_checkpoint(path)[1]["synthesised_ema"]
        models.append((f"post-hoc sigma_rel {sigma_rel:.3f}", path,
                       {"sigma_rel": sigma_rel, "gamma": info["gamma"], "profile_error": info["profile_error"],
                        "snapshots": len(info["snapshots"])}))
    baseline = models[0][0]
    picks = bootstrap_picks(args.num, args.replicates)  # the same for every model (paired)
    rows, point, boot = [], {}, {}
    for name, path, extra in models:
        den = load_denoiser(path, device="cpu")
        scorer = experiment_scorer("fd-classifier", den, evaluator=args.evaluator, batch_size=args.batch_size)
        features, sample_s, nfe = model_features(den, scorer, out / "features" / path.stem, path, "ddim",
                                                 args.sample_steps, args.num, args.batch_size)
        point[name], boot[name] = fd_and_bootstrap(features, scorer.reference_classifier, picks)
        row = {"model": name, "checkpoint": str(path), "fd": point[name], "fd_sd": float(boot[name].std(ddof=1)),
               "sample_cpu_s": sample_s, "measured_nfe": nfe, **extra}
        row.update(paired_difference(point, boot, name, baseline))
        rows.append(row)
        print(f"{name:36s} FD {point[name]:6.2f} +- {row['fd_sd']:.2f}" + difference_text(row, "the demo's EMA")
              + (f"  profile error {extra['profile_error']:.2%}" if extra else ""), flush=True)
        if args.json:
            write_json({"steps": args.steps, "every": args.every, "num": args.num, "sample_steps": args.sample_steps,
                        "replicates": args.replicates, "evaluator": args.evaluator, "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DiffkitError as err:
        print(f"posthoc_ema_digits: error: {err}", file=sys.stderr)
        sys.exit(2)
