"""Consistency distillation of the demo model: digit quality at 1, 2 and 4 steps.

Takes the demo model (``--teacher``, e.g. the Quick start's ``runs/demo/checkpoints/latest.safetensors``;
without it trains one with ``diffkit demo``'s DEMO_CONFIG), distils it into a consistency model
with ``diffkit distill``'s config (consistency distillation, Song et al. 2023 Alg. 2 / Luo et al.
2023 Alg. 1; ``--set`` changes any field), and scores, as benchmarks/demo_quality.py does, with the
Frechet distance in a small digit classifier's feature space against 597 held-out digits
(FD-classifier, lower is better) and its mean max-softmax confidence:

    the teacher with DDIM at 1, 2, 4 and 50 steps, and the consistency model with the
    ``consistency`` sampler (CM Alg. 1) at 1, 2 and 4 steps, from the same x_T (seed 0).

Prints a table; writes ``consistency_digits.json`` and ``consistency_digits.png`` (one row of
samples per method, the same seeds in each column) under ``--out`` (default benchmarks/out/),
and the distillation run under ``OUT/distill_run`` (an earlier one there is replaced). A
benchmark, not a CI test:

    python benchmarks/consistency_digits.py --teacher runs/demo/checkpoints/latest.safetensors
    python benchmarks/consistency_digits.py --distill-steps 100 --num 200     # quick check
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffkit.commands.demo import demo_config  # noqa: E402
from diffkit.commands.distill import distill_config  # noqa: E402
from diffkit.config import resolve_device  # noqa: E402
from diffkit.evaluation import SampleScorer, generate_samples, reference_images, write_json  # noqa: E402
from diffkit.images import save_grid  # noqa: E402
from diffkit.loading import load_denoiser  # noqa: E402
from diffkit.metrics import evaluator_accuracy, train_evaluator  # noqa: E402
from diffkit.training import Trainer  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
# (label, which model, sampler, steps)
METHODS = [("teacher, DDIM", "teacher", "ddim", 1), ("teacher, DDIM", "teacher", "ddim", 2),
           ("teacher, DDIM", "teacher", "ddim", 4), ("teacher, DDIM", "teacher", "ddim", 50),
           ("consistency model", "student", "consistency", 1), ("consistency model", "student", "consistency", 2),
           ("consistency model", "student", "consistency", 4)]


def digit_scorer(unet: dict, metrics, epochs: int, device):
    """(a SampleScorer of ``metrics`` against the 597 held-out embedded digits, the training digits
    0..1199 and their labels, {"held_out_accuracy": ...}) for a model whose ``meta["unet"]`` is ``unet``: a digit
    classifier (diffkit.metrics.train_evaluator, seed 0) trained ``epochs`` epochs on the training digits."""
    train_images, train_labels = reference_images("digits", train=True, img_size=unet["img_size"],
                                                   channels=unet["in_channels"])
    held_out, held_labels = reference_images("digits", train=False, img_size=unet["img_size"],
                                             channels=unet["in_channels"])
    net = train_evaluator(train_images, train_labels, 10, epochs=epochs, seed=0)
    scorer = SampleScorer(metrics, held_out, evaluator=net, device=device)
    return scorer, train_images, train_labels, {"held_out_accuracy": evaluator_accuracy(net, held_out, held_labels)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", help="the demo model's checkpoint (default: train one with DEMO_CONFIG)")
    p.add_argument("--teacher-steps", type=int, help="training steps of a new teacher (default DEMO_CONFIG's 1500)")
    p.add_argument("--distill-steps", type=int, default=1500, help="distillation steps (default 1500)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="distillation config fields, e.g. --set lr=1e-4")
    p.add_argument("--num", type=int, default=1000, help="samples per method (default 1000)")
    p.add_argument("--classifier-epochs", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"benchmark": "consistency_digits", "device": str(device), "torch_threads": torch.get_num_threads()}
    teacher = args.teacher
    if teacher is None:
        cfg = demo_config(str(out / "teacher_run"), args.teacher_steps, args.device)
        shutil.rmtree(cfg.save_weight_dir, ignore_errors=True)
        result = Trainer(cfg, progress=False).run()
        teacher = result.checkpoint
        report["teacher_training"] = {"steps": result.steps, "seconds": result.seconds}
        print(f"trained the teacher for {result.steps} steps in {result.seconds:.0f} s")
    run_dir = out / "distill_run"
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = distill_config(teacher, run_dir, args.overrides, max_steps=args.distill_steps, device=args.device)
    trainer = Trainer(cfg, progress=False)
    result = trainer.run()
    report["teacher"] = str(teacher)
    report["distillation"] = {"steps": result.steps, "seconds": result.seconds, "final_loss": result.final_loss,
                              "overrides": args.overrides, "lr": cfg.lr, "multiplier": cfg.multiplier,
                              "batch_size": cfg.batch_size, "ema_decay": cfg.ema_decay,
                              "consistency_skip": cfg.consistency_skip, "distance": cfg.consistency_distance,
                              "grid_size": len(trainer.consistency_grid) - 1}
    print(f"distilled {result.steps} steps in {result.seconds:.0f} s (final loss {result.final_loss:.4f})")
    models = {"teacher": load_denoiser(teacher, device=device),
              "student": load_denoiser(result.checkpoint, device=device)}
    scorer, train_images, _, report["classifier"] = digit_scorer(models["teacher"].meta["unet"],
                                                             ["fd-classifier", "confidence"],
                                                             args.classifier_epochs, device)
    rows, grid = [], []
    for label, which, sampler, steps in METHODS:
        start = time.perf_counter()
        samples = generate_samples(models[which], args.num, sampler=sampler, steps=steps, seed=0, batch_size=250,
                                   device=device)
        seconds = time.perf_counter() - start
        scores = scorer.score(samples)
        rows.append({"method": label, "sampler": sampler, "steps": steps, "nfe": steps,
                     "fd_classifier": scores["fd-classifier"]["value"], "confidence": scores["confidence"]["value"],
                     "sampling_seconds": seconds, "num": args.num})
        grid.append(samples[:16])
    real = scorer.score(train_images[:args.num])
    rows.append({"method": "real digits (0..1199)", "sampler": "", "steps": 0, "nfe": 0,
                 "fd_classifier": real["fd-classifier"]["value"], "confidence": real["confidence"]["value"],
                 "num": min(args.num, len(train_images))})
    report["rows"] = rows
    print(f"\nFD-classifier vs {scorer.num_reference} held-out digits (lower is better), mean max-softmax confidence; "
          f"classifier accuracy {report['classifier']['held_out_accuracy']:.3f}")
    print(f"{'model, sampler':<32} {'NFE':>4} {'FD-classifier':>14} {'confidence':>11} {'seconds':>8}")
    for row in rows:
        name = f"{row['method']}" + (f" ({row['sampler']})" if row["sampler"] else "")
        print(f"{name:<32} {row['nfe']:>4} {row['fd_classifier']:>14.2f} {row['confidence']:>11.3f} "
              f"{row.get('sampling_seconds', 0.0):>8.1f}")
    png = save_grid(torch.cat(grid), out / "consistency_digits.png", nrow=16, scale=2)
    path = write_json(report, out / "consistency_digits.json")
    print(f"\nwrote {path} and {png} (rows: {', '.join(f'{m[2]} {m[3]}' for m in METHODS)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
