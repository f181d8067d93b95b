"""Consistency training (no teacher) on the demo digits: the fixed grid against CM's and iCT's curricula.

Trains the demo network (``diffkit demo``'s DEMO_CONFIG) from scratch with
``objective = "consistency-training"`` once per ``--curricula`` entry (``fixed``: LCM's grid of
N = 50 intervals, theta- = stopgrad(theta); ``cm``: CM App. C's N(k), mu(k) with an EMA target;
``ict``: iCT's N(k), lognormal pairs and 1/(sigma_{n+1} - sigma_n) weights; docs/consistency.md),
the same seed, data order and steps, and scores the ``consistency`` sampler at 1 and 2 steps as
benchmarks/consistency_digits.py does (FD in a small digit classifier's feature space against
597 held-out digits, lower is better). Writes ``consistency_training_digits.json`` under ``--out``.
A benchmark, not a CI test:

    python benchmarks/consistency_training_digits.py --steps 400 --num 300
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffkit.commands.demo import DEMO_CONFIG  # noqa: E402
from diffkit.config import TrainConfig  # noqa: E402
from diffkit.evaluation import SampleScorer, generate_samples, reference_images, write_json  # noqa: E402
from diffkit.loading import load_denoiser  # noqa: E402
from diffkit.metrics import evaluator_accuracy, train_evaluator  # noqa: E402
from diffkit.training import Trainer  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--curricula", default="fixed,ict,cm", help="comma-separated (default fixed,ict,cm)")
    p.add_argument("--steps", type=int, default=400, help="training steps per run (default 400)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--num", type=int, default=300, help="samples per row (default 300)")
    p.add_argument("--classifier-epochs", type=int, default=10)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    img = DEMO_CONFIG["img_size"]
    train_images, train_labels = reference_images("digits", train=True, img_size=img, channels=1)
    held_out, held_labels = reference_images("digits", train=False, img_size=img, channels=1)
    net = train_evaluator(train_images, train_labels, 10, epochs=args.classifier_epochs, seed=0)
    scorer = SampleScorer(["fd-classifier"], held_out, evaluator=net, device=torch.device("cpu"))
    report = {"benchmark": "consistency_training_digits", "steps": args.steps, "batch_size": args.batch_size,
              "lr": args.lr, "num": args.num, "torch_threads": torch.get_num_threads(),
              "classifier_accuracy": evaluator_accuracy(net, held_out, held_labels), "rows": []}
    for kind in args.curricula.split(","):
        run_dir = out / f"ct_{kind}"
        shutil.rmtree(run_dir, ignore_errors=True)
        cfg = TrainConfig.from_dict({**DEMO_CONFIG, "objective": "consistency-training", "consistency_curriculum": kind,
                                     "max_steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                                     "multiplier": 1.0, "sampler": "consistency", "sample_steps": 2, "device": "cpu",
                                     "save_weight_dir": str(run_dir), "sampled_dir": str(run_dir / "samples")})
        trainer = Trainer(cfg, progress=False)
        result = trainer.run()
        model = load_denoiser(result.checkpoint)
        row = {"curriculum": kind, "train_seconds": result.seconds, "final_loss": result.final_loss,
               "final_intervals": len(trainer.consistency_grid) - 1}
        for steps in (1, 2):
            start = time.perf_counter()
            samples = generate_samples(model, args.num, sampler="consistency", steps=steps, seed=0, batch_size=250,
                                       device=torch.device("cpu"))
            row[f"fd_{steps}"] = scorer.score(samples)["fd-classifier"]["value"]
            row[f"sample_seconds_{steps}"] = time.perf_counter() - start
        report["rows"].append(row)
        print(f"{kind:>6}: {result.steps} steps in {result.seconds:.0f} s, final loss {result.final_loss:.4f}, "
              f"FD-classifier 1 step {row['fd_1']:.1f}, 2 steps {row['fd_2']:.1f}", flush=True)
    real = scorer.score(train_images[:args.num])["fd-classifier"]["value"]
    report["real_digits_fd"] = real
    print(f"real digits (0..{args.num - 1}): FD-classifier {real:.1f}")
    write_json(report, out / "consistency_training_digits.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
