"""Quality of LCM's w-conditioned consistency distillation on the embedded digits (docs/consistency.md).

Does a student distilled for a range of guidance weights (``consistency_guidance_range``, LCM
Sec. 4.2 / Alg. 1) follow w as its classifier-free-guided teacher does, and how does it compare
with a student distilled at one fixed w (``consistency_guidance``)? All weights are in the seed
convention, eps-bar = (1 + w) eps(x, y) - w eps(x) (``diffkit sample --guidance-scale`` and
``consistency_guidance_range`` alike; w = 0 is the conditional model).

1. The teacher (``--teacher``; without it one is trained with ``diffkit demo``'s DEMO_CONFIG plus
   ``conditional = true``, label dropout p_uncond = 0.1).
2. Two students with ``diffkit distill``'s config and the same steps, batch and learning rate
   (``--set`` applies to both): w-conditioned on ``--w-range`` (``guidance_embedding_dim = 256``)
   and fixed at ``--fixed-w`` (default: the middle of the range). ``--w-student`` /
   ``--fixed-student`` take already distilled checkpoints instead.
3. For each w of ``--ws``: the teacher with classifier-free guidance and DDIM 50 (100 network
   calls of batch B per sample), the w-student (w as input) with the ``consistency`` sampler at
   1, 2 and 4 steps; the fixed-w student at 1, 2 and 4 steps (it has no w input: the same samples
   for every w). Labels 0..9 in turn, sample i from seed i (the same x_T and labels everywhere).

Scores (benchmarks/consistency_digits.py's digit classifier, trained on digits 0..1199):
class accuracy (the classifier's arg-max equals the requested label), FD-classifier against the
597 held-out digits (lower is better), mean max-softmax confidence, and "RMS to teacher": the
root-mean-square pixel difference (data in [-1, 1]) between a one-step sample and the teacher's
DDIM-50 sample at that w from the same x_T and label. A one-step consistency model approximates
the map x_T -> teacher ODE solution, so this is how closely it follows the guided teacher at
each w; and how far w moves the samples (the RMS between the samples at the lowest and highest
w, teacher and w-student). The real-digits row scores the first ``--num`` training digits, which the
classifier was trained on (its training accuracy, not a held-out one). The teacher's samples are kept
in OUT/teacher_cfg_samples.pt and reused by a later run with the same teacher (its loaded weights
and metadata, :func:`diffkit.sample_cache.denoiser_identity`, whatever its path) and ``--num``
(``--teacher-only`` draws just them). Prints a table; writes
``consistency_guidance_digits.json`` and a ``.png`` (one row of samples per model and w) under
``--out``, the runs under OUT/teacher_run, OUT/w_run, OUT/fixed_run:

    python benchmarks/consistency_guidance_digits.py --teacher runs/cdemo/checkpoints  # from the repository root
    python benchmarks/consistency_guidance_digits.py --distill-steps 50 --num 100 --teacher-steps 50 --out /tmp/q
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

from diffkit.checkpoint import latest_checkpoint  # noqa: E402
from diffkit.commands.demo import demo_config  # noqa: E402
from diffkit.commands.distill import distill_config  # noqa: E402
from diffkit.config import apply_overrides, resolve_device  # noqa: E402
from diffkit.evaluation import generate_samples, write_json  # noqa: E402
from diffkit.guidance import ClassifierFreeGuidance, GuidanceScaleInput  # noqa: E402
from diffkit.images import save_grid  # noqa: E402
from diffkit.loading import load_denoiser  # noqa: E402
from diffkit.sample_cache import denoiser_identity  # noqa: E402
from diffkit.training import Trainer  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
METRICS = ["class-accuracy", "fd-classifier", "confidence"]
STUDENT_STEPS = (1, 2, 4)


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def distil(teacher: str, run_dir: Path, overrides: list[str], steps: int, device: str) -> tuple[str, dict]:
    """A fresh ``diffkit distill`` run (its config and the Trainer) into ``run_dir``: (checkpoint, summary)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = distill_config(teacher, run_dir, overrides, max_steps=steps, device=device)
    result = Trainer(cfg, progress=False).run()
    print(f"distilled {run_dir.name} ({' '.join(overrides)}): {result.steps} steps in {result.seconds:.0f} s, "
          f"final loss {result.final_loss:.4f}", flush=True)
    return result.checkpoint, {"steps": result.steps, "seconds": result.seconds, "final_loss": result.final_loss,
                               "overrides": overrides, "lr": cfg.lr, "multiplier": cfg.multiplier,
                               "batch_size": cfg.batch_size, "ema_decay": cfg.ema_decay,
                               "guidance": cfg.consistency_guidance, "guidance_range": cfg.consistency_guidance_range}


def draw(denoiser, labels, sampler: str, steps: int, device) -> tuple[torch.Tensor, float]:
    """Samples i = 0..N-1 from seed i with labels ``labels`` (clamped to [-1, 1]), and the seconds taken."""
    start = time.perf_counter()
    samples = generate_samples(denoiser, len(labels), sampler=sampler, steps=steps, seed=0, batch_size=250,
                               labels=labels, device=device)
    return samples, time.perf_counter() - start


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", help="a class-conditional digits checkpoint (default: train one)")
    p.add_argument("--teacher-steps", type=int, help="training steps of a new teacher (default DEMO_CONFIG's 1500)")
    p.add_argument("--w-range", default="1,5", help="w_min,w_max of the w-conditioned student (default 1,5)")
    p.add_argument("--fixed-w", type=float, help="w of the fixed-w student (default: the middle of --w-range)")
    p.add_argument("--ws", default="1,2,3,5", help="the w values scored (default 1,2,3,5)")
    p.add_argument("--w-student", help="an already distilled w-conditioned checkpoint (skips its distillation)")
    p.add_argument("--fixed-student", help="an already distilled fixed-w checkpoint (skips its distillation)")
    p.add_argument("--teacher-only", action="store_true",
                   help="only draw the teacher's rows, kept in OUT/teacher_cfg_samples.pt for a later run (which "
                        "reuses them for a teacher with the same weights and --num), e.g. while the students distil")
    p.add_argument("--distill-steps", type=int, default=1000, help="distillation steps of each student (default 1000)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="distillation fields for both students (default batch_size=32, lr=5e-4, multiplier=1)")
    p.add_argument("--num", type=int, default=500, help="samples per model and w (default 500)")
    p.add_argument("--classifier-epochs", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    w_min, w_max = floats(args.w_range)
    fixed_w = (w_min + w_max) / 2 if args.fixed_w is None else args.fixed_w
    ws = floats(args.ws)
    report: dict = {"benchmark": "consistency_guidance_digits", "device": str(device),
                    "torch_threads": torch.get_num_threads(), "convention": "seed: eps-bar = (1 + w) eps_c - w eps_u",
                    "w_range": [w_min, w_max], "fixed_w": fixed_w, "ws": ws, "num": args.num}
    teacher = args.teacher
    if teacher is None:
        cfg = apply_overrides(demo_config(str(out / "teacher_run"), args.teacher_steps, args.device),
                              ["conditional=true"])
        shutil.rmtree(cfg.save_weight_dir, ignore_errors=True)
        result = Trainer(cfg, progress=False).run()
        teacher = result.checkpoint
        report["teacher_training"] = {"steps": result.steps, "seconds": result.seconds}
        print(f"trained the teacher for {result.steps} steps in {result.seconds:.0f} s", flush=True)
    teacher = str(latest_checkpoint(teacher) or teacher)  # a run folder: its latest.safetensors
    report["teacher"] = teacher
    common = ["batch_size=32", "lr=5e-4", "multiplier=1", *args.overrides]
    students = {"w": (args.w_student, [f"consistency_guidance_range={w_min},{w_max}", "guidance_embedding_dim=256"]),
                "fixed": (args.fixed_student, [f"consistency_guidance={fixed_w}"])}
    paths = {}
    for name, (given, extra) in ({} if args.teacher_only else students).items():
        if given:
            paths[name] = str(latest_checkpoint(given) or given)
            report[f"{name}_student"] = {"checkpoint": paths[name], "given": True}
        else:
            paths[name], report[f"{name}_student"] = distil(teacher, out / f"{name}_run", common + extra,
                                                            args.distill_steps, args.device)
    models = {"teacher": load_denoiser(teacher, device=device)}
    models.update({name: load_denoiser(path, device=device) for name, path in paths.items()})
    if not args.teacher_only:
        trained = models["w"].guidance_range
        report["w_student"]["trained_range"] = list(trained) if trained else None
        if trained is None or getattr(models["fixed"], "guidance_range", None) is not None:
            raise SystemExit("--w-student must be w-conditioned and --fixed-student not")
    unet = models["teacher"].meta["unet"]
    if not unet.get("num_classes"):
        raise SystemExit(f"the teacher {teacher} is not class-conditional")
    labels = torch.arange(args.num) % unet["num_classes"]
    scorer, train_images, train_labels, report["classifier"] = digit_scorer(unet, METRICS, args.classifier_epochs,
                                                                           device)
    rows, grid, teacher_samples, drawn = [], [], {}, {}

    def add(model: str, w, sampler: str, steps: int, nfe: int, samples, seconds, reference=None) -> None:
        scores = scorer.score(samples, labels)
        row = {"model": model, "w": w, "sampler": sampler, "steps": steps, "nfe": nfe,
               "class_accuracy": scores["class-accuracy"]["value"], "fd_classifier": scores["fd-classifier"]["value"],
               "confidence": scores["confidence"]["value"], "sampling_seconds": seconds, "num": args.num}
        if reference is not None:
            row["rms_to_teacher"] = {f"{w_ref:g}": rms(samples, ref) for w_ref, ref in reference.items()}
        rows.append(row)
        grid.append(samples[:20])
        drawn[model, steps, w] = samples
        print(f"  {model:<16} w={'' if w is None else f'{w:g}':<4} {sampler} {steps:>2}: accuracy "
              f"{row['class_accuracy']:.3f}, FD {row['fd_classifier']:.1f} ({seconds:.0f} s)", flush=True)

    saved = out / "teacher_cfg_samples.pt"  # the teacher's rows of an earlier run with the same teacher and num
    # keyed by what decides the teacher's outputs (its loaded weights, metadata, device type), not by its path:
    # a teacher retrained into the same folder draws anew, the same checkpoint by another path reuses the rows
    key = {"identity": denoiser_identity(models["teacher"]), "num": args.num}
    kept = torch.load(saved) if saved.is_file() else {}
    kept = kept if kept.get("key") == key else {"key": key, "teacher": teacher, "samples": {}}
    for w in ws:
        if w in kept["samples"]:
            samples, seconds = kept["samples"][w]
            print(f"  (the teacher's samples at w = {w:g}: kept in {saved} by an earlier run of {kept['teacher']})")
        else:
            samples, seconds = draw(ClassifierFreeGuidance(models["teacher"], w), labels, "ddim", 50, device)
            kept["samples"][w] = (samples, seconds)
            torch.save(kept, saved)
        teacher_samples[w] = samples
        add("teacher CFG", w, "ddim", 50, 100, samples, seconds)
    if args.teacher_only:
        print(f"kept the teacher's samples in {saved}")
        return 0
    for w in ws:
        for steps in STUDENT_STEPS:
            samples, seconds = draw(GuidanceScaleInput(models["w"], w), labels, "consistency", steps, device)
            add("w-student", w, "consistency", steps, steps, samples, seconds,
                reference=teacher_samples if steps == 1 else None)
    for steps in STUDENT_STEPS:
        samples, seconds = draw(models["fixed"], labels, "consistency", steps, device)
        add("fixed-w student", fixed_w, "consistency", steps, steps, samples, seconds,
            reference=teacher_samples if steps == 1 else None)
    # the classifier's own training digits: its accuracy here is training accuracy, the FD a real-data floor
    num_real = min(args.num, len(train_images))
    real = scorer.score(train_images[:num_real], train_labels[:num_real])
    rows.append({"model": f"real training digits 0..{num_real - 1}", "w": None, "sampler": "", "steps": 0, "nfe": 0,
                 "class_accuracy": real["class-accuracy"]["value"], "fd_classifier": real["fd-classifier"]["value"],
                 "confidence": real["confidence"]["value"], "num": num_real})
    report["rows"] = rows
    # how far w moves the samples from the same x_T: RMS between the samples at the lowest and highest w
    report["rms_across_w"] = {f"{model}, {steps} steps": rms(drawn[model, steps, ws[0]], drawn[model, steps, ws[-1]])
                              for model, steps in [("teacher CFG", 50)] + [("w-student", k) for k in STUDENT_STEPS]}
    print(f"\n{args.num} samples each; class accuracy under a digit classifier (held-out accuracy "
          f"{report['classifier']['held_out_accuracy']:.3f}), FD-classifier vs {scorer.num_reference} held-out "
          f"digits (lower is better), confidence; RMS to teacher: one-step sample vs the teacher's DDIM-50 sample "
          f"from the same x_T at each w ({', '.join(f'{w:g}' for w in ws)}); the real training digits are the "
          f"classifier's own (training accuracy)")
    print(f"{'model':<22} {'w':>4} {'NFE':>4} {'accuracy':>9} {'FD-classifier':>14} {'confidence':>11}  RMS to teacher")
    for row in rows:
        w = "" if row["w"] is None else f"{row['w']:g}"
        to_teacher = " ".join(f"{v:.3f}" for v in row.get("rms_to_teacher", {}).values())
        print(f"{row['model']:<22} {w:>4} {row['nfe']:>4} {row['class_accuracy']:>9.3f} {row['fd_classifier']:>14.2f} "
              f"{row['confidence']:>11.3f}  {to_teacher}")
    print(f"RMS between the samples at w = {ws[0]:g} and w = {ws[-1]:g} from the same x_T: "
          + ", ".join(f"{name} {value:.3f}" for name, value in report["rms_across_w"].items()))
    png = save_grid(torch.cat(grid), out / "consistency_guidance_digits.png", nrow=20, scale=2)
    path = write_json(report, out / "consistency_guidance_digits.json")
    print(f"\nwrote {path} and {png} (one row per table row, in its order)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
