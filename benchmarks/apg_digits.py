"""Adaptive projected guidance (APG; Sadat, Hilliges & Weber 2025) against plain classifier-free guidance
at high scales on a class-conditional model of the embedded digits (docs/guidance.md, "Adaptive projected
guidance").

1. The model (``--model``; without it one is trained with ``diffkit demo``'s DEMO_CONFIG plus
   ``conditional = true``, label dropout p_uncond = 0.1, for ``--train-steps`` steps).
2. A probe of the guidance difference's size: the per-sample norm ||x0_c - x0_u|| of every DDIM call
   of plain guidance at the largest scale (its median and quartiles over calls and samples), the
   scale on which APG's norm threshold r acts.
3. For each scale s of ``--scales`` (diffusers' / the paper's convention, s = 1 + w; s = 1 is the
   conditional model): plain guidance, APG with eta = 0 (the projection alone), and APG with eta = 0,
   r = ``--norm-threshold`` and momentum ``--momentum`` (the paper's full method). Labels 0..9 in
   turn, sample i from seed i in every row (the same x_T and label), DDIM ``--steps`` steps.

Scores: saturation of the raw samples (before any clamping): the mean |x| over pixels, the fraction of
pixels outside [-1, 1] (clipped when written as images; the digits' background is -1, so a model's
slight overshoot there counts too), the fraction beyond 1.1 in magnitude and the mean overshoot
E max(|x| - 1, 0); then, on samples clamped to [-1, 1],
benchmarks/consistency_digits.py's digit classifier (train_evaluator, seed 0, digits 0..1199): class
accuracy (arg-max = requested label), FD-classifier against the 597 held-out digits, mean confidence.
Prints a table; writes ``apg_digits.json``, ``apg_digits.png`` (20 samples per row) and the raw samples
(``samples.pt``) under ``--out``:

    python benchmarks/apg_digits.py --model runs/cdemo/checkpoints --num 500
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from consistency_digits import digit_scorer  # noqa: E402

import diffkit  # noqa: E402
from diffkit.checkpoint import latest_checkpoint  # noqa: E402
from diffkit.commands.demo import demo_config  # noqa: E402
from diffkit.config import apply_overrides  # noqa: E402
from diffkit.evaluation import write_json  # noqa: E402
from diffkit.guidance import ClassifierFreeGuidance  # noqa: E402
from diffkit.images import save_grid  # noqa: E402
from diffkit.loading import load_denoiser  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "apg_digits"
METRICS = ["class-accuracy", "fd-classifier", "confidence"]


class NormProbe:
    """Wraps the denoiser under the guidance and records ||x0_c - x0_u|| per sample of each guided call."""

    def __init__(self, inner):
        self.inner, self.norms = inner, []

    schedule = property(lambda self: self.inner.schedule)
    nfe = property(lambda self: self.inner.nfe)

    def __call__(self, x, t, **cond):
        pred = self.inner(x, t, **cond)
        if x.shape[0] % 2 == 0 and "y" in cond and cond["y"].shape[0] == x.shape[0]:
            x0_c, x0_u = pred.x0.chunk(2)
            self.norms.append((x0_c - x0_u).flatten(1).norm(dim=1))
        return pred

    def reset_nfe(self):
        self.inner.reset_nfe()


def draw(guided, labels, steps: int, batch: int) -> tuple[torch.Tensor, float]:
    """Raw samples i = 0..N-1 from seed i (not clamped) and the seconds taken."""
    start, parts = time.perf_counter(), []
    for first in range(0, len(labels), batch):
        y = labels[first:first + batch]
        parts.append(diffkit.sample(guided, (len(y), 1, 16, 16), "ddim", steps=steps, seed=first, cond={"y": y},
                                    progress=False))
    return torch.cat(parts), time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a class-conditional digits checkpoint or run folder (default: train one)")
    p.add_argument("--train-steps", type=int, default=600, help="training steps of a new model (default 600)")
    p.add_argument("--scales", default="5,10", help="guidance scales s = 1 + w (the paper's convention)")
    p.add_argument("--norm-threshold", type=float, default=4.0, help="r of the full APG rows (default 4)")
    p.add_argument("--momentum", type=float, default=-0.5, help="beta of the full APG rows (default -0.5)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    p.add_argument("--num", type=int, default=500, help="samples per row (default 500)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--classifier-epochs", type=int, default=10)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"benchmark": "apg_digits", "torch_threads": torch.get_num_threads(), "steps": args.steps,
                    "num": args.num, "convention": "s = 1 + w (diffusers / the paper); w: diffkit's seed convention"}
    model = args.model
    if model is None:
        cfg = apply_overrides(demo_config(str(out / "model_run"), args.train_steps, "cpu"), ["conditional=true"])
        shutil.rmtree(cfg.save_weight_dir, ignore_errors=True)
        from diffkit.training import Trainer
        result = Trainer(cfg, progress=False).run()
        model = result.checkpoint
        report["training"] = {"steps": result.steps, "seconds": result.seconds}
    model = str(latest_checkpoint(model) or model)
    report["model"] = model
    den = load_denoiser(model)
    unet = den.meta["unet"]
    labels = torch.arange(args.num) % unet["num_classes"]
    scorer, train_images, train_labels, report["classifier"] = digit_scorer(unet, METRICS, args.classifier_epochs,
                                                                            "cpu")
    scales = [float(s) for s in args.scales.split(",")]
    rows, grid, raw = [], [], []

    def add(name: str, s: float, options: dict, samples: torch.Tensor, seconds: float) -> None:
        scores = scorer.score(samples.clamp(-1, 1), labels)
        row = {"guidance": name, "s": s, "w": s - 1, **options, "mean_abs": float(samples.abs().mean()),
               "clipped_fraction": float((samples.abs() > 1).float().mean()),
               "beyond_1.1_fraction": float((samples.abs() > 1.1).float().mean()),
               "mean_overshoot": float((samples.abs() - 1).clamp_min(0).mean()),
               "class_accuracy": scores["class-accuracy"]["value"], "fd_classifier": scores["fd-classifier"]["value"],
               "confidence": scores["confidence"]["value"], "seconds": seconds}
        rows.append(row)
        raw.append(samples)
        grid.append(samples[:20].clamp(-1, 1))
        print(f"  {name:<24} s={s:<4g} mean|x| {row['mean_abs']:.3f}  clipped {row['clipped_fraction']:.3f}  "
              f">1.1 {row['beyond_1.1_fraction']:.3f}  overshoot {row['mean_overshoot']:.4f}  "
              f"accuracy {row['class_accuracy']:.3f}  FD {row['fd_classifier']:.1f}  ({seconds:.0f} s)", flush=True)

    probe = NormProbe(den)
    draw(ClassifierFreeGuidance(probe, max(scales), convention="diffusers"), labels[:args.batch_size], args.steps,
         args.batch_size)
    norms = torch.cat(probe.norms)
    quartiles = torch.quantile(norms, torch.tensor([0.25, 0.5, 0.75], dtype=norms.dtype)).tolist()
    report["difference_norm_quartiles"] = quartiles
    print(f"||x0_c - x0_u|| per sample and call at s = {max(scales):g}: quartiles "
          f"{', '.join(f'{q:.2f}' for q in quartiles)}", flush=True)
    samples, seconds = draw(ClassifierFreeGuidance(den, 1.0, convention="diffusers"), labels, args.steps,
                            args.batch_size)
    add("conditional (no guidance)", 1.0, {}, samples, seconds)
    full = {"apg_eta": 0.0, "apg_norm_threshold": args.norm_threshold, "apg_momentum": args.momentum}
    for s in scales:
        for name, options in (("CFG", {}), ("APG eta=0", {"apg_eta": 0.0}),
                              (f"APG eta=0 r={args.norm_threshold:g} beta={args.momentum:g}", full)):
            samples, seconds = draw(ClassifierFreeGuidance(den, s, convention="diffusers", **options), labels,
                                    args.steps, args.batch_size)
            add(name, s, options, samples, seconds)
    real = train_images[:args.num]
    scores = scorer.score(real, train_labels[:args.num])
    report["real_training_digits"] = {"num": len(real), "mean_abs": float(real.abs().mean()),
                                      "clipped_fraction": float((real.abs() > 1).float().mean()),
                                      "class_accuracy": scores["class-accuracy"]["value"],
                                      "fd_classifier": scores["fd-classifier"]["value"]}
    print(f"  real training digits 0..{len(real) - 1}: mean|x| {report['real_training_digits']['mean_abs']:.3f}, "
          f"FD {report['real_training_digits']['fd_classifier']:.1f}")
    report["rows"] = rows
    write_json(report, out / "apg_digits.json")
    save_grid(torch.cat(grid), out / "apg_digits.png", 20, 4)
    torch.save({"rows": [(r["guidance"], r["s"]) for r in rows], "samples": raw, "labels": labels}, out / "samples.pt")
    print(f"wrote {out / 'apg_digits.json'} and {out / 'apg_digits.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
