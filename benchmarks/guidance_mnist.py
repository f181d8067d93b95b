"""Guidance on MNIST: requested-class rate, FD and classifier score versus the guidance scale (issue 5).

Not part of CI. Budget: about 25 minutes on 2 CPU cores with the defaults (the run reported in
docs/guidance.md: see there). Steps:

1. MNIST (read from ``--data-dir``, default ../shared/data/mnist beside the repository), resized 28 -> 16.
2. An independent clean-image evaluator (:func:`diffkit.metrics.evaluator.train_evaluator`);
   its arg-max gives the requested-class rate, its 128-d features the FD against test images and
   its softmax the classifier score (the Inception Score exp E_x KL(p(y|x) || p(y)) of Salimans et
   al. 2016 with the evaluator in place of Inception), the other side of guidance's FID-IS
   trade-off (Ho & Salimans 2022, Fig. 2; Dhariwal & Nichol 2021, Table 4).
3. A small class-conditional U-Net trained with label dropout p_uncond = 0.1
   (:class:`diffkit.training.Trainer`); with ``y = null`` it is also the unconditional model.
4. A small noisy-image classifier on x_t of the same schedule (:mod:`diffkit.classifier_training`).
5. DDIM sampling, ``--per-class`` images per digit: classifier-free guidance for each w (seed
   convention, w = -1 is the unconditional model) and classifier guidance (Algorithm 2) of the
   unconditional model for each s.

Writes benchmarks/out/guidance_mnist.{json,md,png} and sample grids. Example:
    PYTHONPATH=. python benchmarks/guidance_mnist.py --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from laps import Laps  # noqa: E402

from diffkit.classifier_training import ClassifierTrainConfig, noisy_accuracy, train_classifier  # noqa: E402
from diffkit.config import TrainConfig  # noqa: E402
from diffkit.data import load_dataset  # noqa: E402
from diffkit.denoiser import Denoiser  # noqa: E402
from diffkit.guidance import ClassifierFreeGuidance, ClassifierGuidance  # noqa: E402
from diffkit.images import save_grid  # noqa: E402
from diffkit.metrics.evaluator import (classifier_frechet_distance, classifier_score, evaluator_accuracy,  # noqa: E402
                                       train_evaluator)
from diffkit.sampling import sample  # noqa: E402
from diffkit.training import Trainer  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"))
    p.add_argument("--img-size", type=int, default=16)
    p.add_argument("--unet-steps", type=int, default=1000)
    p.add_argument("--classifier-steps", type=int, default=600)
    p.add_argument("--evaluator-images", type=int, default=30000)
    p.add_argument("--per-class", type=int, default=20, help="samples per digit for each setting")
    p.add_argument("--sample-steps", type=int, default=20, help="DDIM steps")
    p.add_argument("--cfg-scales", default="-1,0,0.5,1,2,4", help="w values (seed convention; -1 = unconditional)")
    p.add_argument("--classifier-scales", default="0,1,3,10,30", help="s values for classifier guidance")
    p.add_argument("--threads", type=int, default=2, help="torch threads (1 is faster on a busy machine)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lap = Laps()

    train = load_dataset("mnist", data_dir=args.data_dir, img_size=args.img_size, train=True)
    test = load_dataset("mnist", data_dir=args.data_dir, img_size=args.img_size, train=False)
    test_images = test.images.float() / 127.5 - 1
    lap("data")

    # -- 2. the evaluator: clean classifier, independent of both guided models
    n_eval = min(args.evaluator_images, len(train))
    evaluator = train_evaluator(train.images[:n_eval].float() / 127.5 - 1, train.labels[:n_eval], 10,
                                epochs=1, batch_size=64, seed=args.seed)
    evaluator_test_acc = evaluator_accuracy(evaluator, test_images, test.labels)
    print(f"evaluator test accuracy {evaluator_test_acc:.4f}")
    reference = test_images[:2000]
    real_samples = test_images[2000:2000 + 10 * args.per_class]
    fd_test_vs_test = classifier_frechet_distance(evaluator, real_samples, reference)
    score_real = {"reference_2000": _score(evaluator, reference), "same_size": _score(evaluator, real_samples)}
    print(f"classifier score of real test images: {score_real}")
    lap("evaluator")

    # -- 3. class-conditional U-Net with label dropout
    cfg = TrainConfig.from_dict({
        "dataset": "mnist", "data_dir": args.data_dir, "img_size": args.img_size, "channel": 32,
        "channel_mult": [1, 2, 2], "attn": [], "num_res_blocks": 1, "dropout": 0.0, "batch_size": 64,
        "scale_shift_norm": True,
        "lr": 1e-3, "multiplier": 2.0, "warmup_fraction": 0.05, "grad_clip": 1.0, "ema_decay": 0.999,
        "ema_warmup": True, "max_steps": args.unet_steps, "conditional": True, "p_uncond": 0.1,
        "save_weight_dir": str(out / "cond_unet"), "sampled_dir": str(out), "save_every_epochs": 1000,
        "log_every": 50, "seed": args.seed, "device": "cpu"})
    trainer = Trainer(cfg, dataset=train, progress=False)
    result = trainer.run()
    trainer.ema.copy_to(trainer.model)
    model = trainer.model.eval()
    print(f"U-Net: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"{result.steps} steps, final loss {result.final_loss:.4f}")
    denoiser = Denoiser(model, trainer.schedule)
    denoiser.model = model
    lap("unet")

    # -- 4. noisy classifier on x_t of the same schedule
    ccfg = ClassifierTrainConfig(dataset="mnist", img_size=args.img_size, channel=32, channel_mult=[1, 2, 2],
                                 attn=[], num_res_blocks=1, steps=args.classifier_steps, batch_size=64,
                                 lr=1e-3, seed=args.seed, device="cpu", log_every=100)
    clf = train_classifier(ccfg, trainer.schedule, train, out=out / "classifier.safetensors", progress=False).model
    clf.requires_grad_(False)
    clf_acc = {t: noisy_accuracy(clf, trainer.schedule, test_images[:1000], test.labels[:1000], t)
               for t in (0, 250, 500, 750)}
    print(f"noisy classifier test accuracy by t: {clf_acc}")
    lap("classifier")

    # -- 5. guided sampling
    labels = torch.arange(10).repeat_interleave(args.per_class)
    n = labels.shape[0]
    shape = (n, 1, args.img_size, args.img_size)
    rows = []

    def evaluate(kind, scale, guided_denoiser, cond):
        guided_denoiser.reset_nfe()
        start = time.perf_counter()
        images = sample(guided_denoiser, shape, "ddim", args.sample_steps, seed=args.seed, cond=cond, progress=False)
        images = images.clamp(-1, 1)
        seconds = time.perf_counter() - start
        rate = evaluator_accuracy(evaluator, images, labels)
        fd = classifier_frechet_distance(evaluator, images, reference)
        row = {"guidance": kind, "scale": scale, "requested_class_rate": round(rate, 4), "fd": round(fd, 3),
               "classifier_score": round(_score(evaluator, images), 3),
               "nfe": guided_denoiser.nfe, "seconds": round(seconds, 1)}
        rows.append(row)
        print(row, flush=True)
        pick = torch.cat([torch.nonzero(labels == k)[:8, 0] for k in range(10)])
        save_grid(images[pick], out / f"grid_{kind}_{scale:g}.png", nrow=8, scale=2)

    for w in [float(v) for v in args.cfg_scales.split(",")]:
        if w == -1:  # the unconditional model: the null class, one pass
            evaluate("cfg", w, denoiser, {"y": torch.full((n,), 10)})
        else:
            evaluate("cfg", w, ClassifierFreeGuidance(denoiser, w), {"y": labels})
    lap("cfg")
    unconditional = _NullClass(denoiser, 10)
    for s in [float(v) for v in args.classifier_scales.split(",")]:
        evaluate("classifier", s, ClassifierGuidance(unconditional, clf, s), {"y": labels})
    lap("classifier_guidance")

    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "threads": args.threads,
              "cpu_count": os.cpu_count(), "img_size": args.img_size, "samples_per_setting": n,
              "ddim_steps": args.sample_steps, "unet_steps": args.unet_steps, "unet_final_loss": result.final_loss,
              "classifier_steps": args.classifier_steps, "noisy_classifier_accuracy_by_t": clf_acc,
              "evaluator_test_accuracy": evaluator_test_acc, "fd_test_vs_test": fd_test_vs_test,
              "classifier_score_real": score_real,
              "rows": rows, "timings_s": lap.timings, "load_average": os.getloadavg()}
    (out / "guidance_mnist.json").write_text(json.dumps(report, indent=2))
    table = _markdown(report)
    (out / "guidance_mnist.md").write_text(table)
    print(table)
    _plot(rows, out / "guidance_mnist.png", fd_test_vs_test, score_real["reference_2000"])
    return 0


def _score(evaluator, images) -> float:
    """Classifier score of ``images`` in one split: the samples come ordered by class, so the usual
    10 splits would each hold one digit and score ~1; one split of 200 estimates p(y) from all of them."""
    return classifier_score(evaluator, images, splits=1).mean


class _NullClass:
    """The conditional model asked for the null class: the unconditional model of CFG training."""

    def __init__(self, inner, null_class):
        self.inner, self.null_class = inner, null_class

    schedule = property(lambda self: self.inner.schedule)
    nfe = property(lambda self: self.inner.nfe)
    learned_variance = False

    def reset_nfe(self):
        self.inner.reset_nfe()

    def __call__(self, x, t, **cond):
        return self.inner(x, t, y=torch.full((x.shape[0],), self.null_class, dtype=torch.long), **cond)


def _markdown(report) -> str:
    lines = [f"MNIST {report['img_size']}x{report['img_size']}, {report['samples_per_setting']} samples per "
             f"setting (balanced classes), DDIM {report['ddim_steps']} steps; evaluator test accuracy "
             f"{report['evaluator_test_accuracy']:.4f}; FD of {report['samples_per_setting']} real test images (no "
             f"model): {report['fd_test_vs_test']:.2f}; FD reference: 2000 test images; classifier score (IS with the "
             f"evaluator, one split, at most 10) of the 2000 reference images "
             f"{report['classifier_score_real']['reference_2000']:.3f}, of the {report['samples_per_setting']} real "
             f"images {report['classifier_score_real']['same_size']:.3f}",
             "", "| guidance | scale | requested-class rate | FD (evaluator features) | classifier score | NFE | "
             "seconds |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["rows"]:
        scale = "uncond. (null class)" if r["guidance"] == "cfg" and r["scale"] == -1 else f"{r['scale']:g}"
        lines.append(f"| {r['guidance']} | {scale} | {r['requested_class_rate']:.3f} | {r['fd']:.2f} | "
                     f"{r['classifier_score']:.3f} | {r['nfe']} | {r['seconds']} |")
    return "\n".join(lines) + "\n"


def _plot(rows, path, fd_real, score_real):
    """Rate and FD versus the scale, and FD versus classifier score: the trade-off curve of Ho &
    Salimans 2022, Fig. 2 (FID versus IS), one curve per guidance family."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6), dpi=100)
    for kind, label, marker in (("cfg", "classifier-free (w)", "o"), ("classifier", "classifier (s)", "s")):
        sel = [r for r in rows if r["guidance"] == kind]
        xs = [r["scale"] for r in sel]
        axes[0].plot(xs, [r["requested_class_rate"] for r in sel], marker=marker, label=label)
        axes[1].plot(xs, [r["fd"] for r in sel], marker=marker, label=label)
        axes[2].plot([r["classifier_score"] for r in sel], [r["fd"] for r in sel], marker=marker, label=label)
        for r in sel:
            axes[2].annotate(f"{r['scale']:g}", (r["classifier_score"], r["fd"]), fontsize=7,
                             xytext=(3, 3), textcoords="offset points")
    axes[0].axhline(0.95, color="gray", ls=":", lw=1)
    axes[0].set(xlabel="guidance scale", ylabel="requested-class rate", ylim=(0, 1.02))
    axes[1].axhline(fd_real, color="gray", ls=":", lw=1, label="real vs real")
    axes[1].set(xlabel="guidance scale", ylabel="FD (evaluator features)")
    scales = sorted({r["scale"] for r in rows})
    for ax in axes[:2]:
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xticks(scales, [f"{v:g}" for v in scales])
    axes[2].axvline(score_real, color="gray", ls=":", lw=1, label="2000 real images")
    axes[2].set(xlabel="classifier score (IS with the evaluator)", ylabel="FD (evaluator features)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
