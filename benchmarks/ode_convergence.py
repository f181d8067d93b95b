"""Do the deterministic samplers converge to the probability-flow ODE solution of a *trained*
network? The mixture benchmark (benchmarks/samplers.py) has the exact eps*; a trained network's
eps changes with t differently, and a grid that is fine for eps* can leave an error floor for it
(docs/samplers.md, `logsnr_skip`).

For a checkpoint: ``--num`` noise images, a fine reference solution (``--ref``, default UniPC-3 on
the logSNR grid, ``--ref-steps`` 400 steps) and a second one by another method (``--check``,
default DPM-Solver++ 3M, same steps) whose distance to it says how well the reference is known,
then each sampler on its default grid (or ``NAME[@SPACING][:FINAL]``) at each step count: the RMS distance
to the reference and the mean pixel value. A sampler that converges has an RMS that falls with the
steps down to about the reference's own uncertainty. (Until 3 December 2026 the reference was PLMS
with 200 steps on the uniform-t grid: on the CPU MNIST model it is 0.0054 from UniPC-3 at 400
steps, which is 0.0003 from DPM-Solver++ 3M at 400; PLMS with 400 steps 0.0031. PLMS converges
slowly there: its uniform-t grid is coarse in log sigma at the low-noise end.)

    PYTHONPATH=. python benchmarks/ode_convergence.py --checkpoint runs/mnist/checkpoints/latest.safetensors
    PYTHONPATH=. python benchmarks/ode_convergence.py --checkpoint CKPT --samplers ddim,dpm-solver++-2m@logsnr_skip
    PYTHONPATH=. python benchmarks/ode_convergence.py --checkpoint CKPT --samplers unipc,unipc:zero
    PYTHONPATH=. python benchmarks/ode_convergence.py --checkpoint CKPT --samplers unipc-3 --grade-sigmas 1/0.1,4/0.1

``--grade-sigmas HI/LO,...`` runs each sampler whose grid is ``logsnr_graded`` (its default, or named)
once per (sigma_hi, sigma_lo) pair; a sampler named with another grid runs on that grid once
(docs/samplers.md, "Which sigma_hi").

Writes benchmarks/out/ode_convergence.{json,md}. A benchmark, not a CI test.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import diffkit  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.loading import load_denoiser  # noqa: E402
from diffkit.samplers.registry import get_sampler, split_sampler_spec  # noqa: E402
from diffkit.timesteps import make_grid, parse_grade_sigmas  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
DEFAULT_SAMPLERS = ("ddim,plms,dpm-solver++-2m,dpm-solver++-3m,dpm-solver-2m,unipc,unipc-3,unipc-eps,"
                    "dpm-solver++-2m@logsnr_skip")


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).pow(2).mean().sqrt())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--num", type=int, default=200, help="noise images (default 200)")
    p.add_argument("--steps", default="10,20,40", help="step counts (default 10,20,40)")
    p.add_argument("--samplers", default=DEFAULT_SAMPLERS, help="NAME[@SPACING][:FINAL], comma-separated")
    p.add_argument("--ref", default="unipc-3@logsnr:zero",
                   help="the reference's NAME[@SPACING][:FINAL] (default unipc-3@logsnr:zero, the clean endpoint)")
    p.add_argument("--check", default="dpm-solver++-3m@logsnr:zero",
                   help="a second method for the reference's uncertainty (default dpm-solver++-3m@logsnr:zero)")
    p.add_argument("--ref-steps", type=int, default=400, help="steps of the reference and the check (default 400)")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--grade-sigmas", help="HI/LO,...: each sampler on logsnr_graded once per pair")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = [split_sampler_spec(s.strip()) for s in args.samplers.split(",") if s.strip()]  # checked first
    ref_spec, check_spec = split_sampler_spec(args.ref), split_sampler_spec(args.check)
    for name, _, _ in specs + [ref_spec, check_spec]:
        get_sampler(name)
    for flag, (name, _, _) in (("--ref", ref_spec), ("--check", check_spec)):
        if get_sampler(name).stochastic:
            raise DiffkitError(f"{flag} {name!r} is a stochastic sampler; the ODE solution needs a deterministic one")
    grades = parse_grade_sigmas(args.grade_sigmas) if args.grade_sigmas else [None]
    den = load_denoiser(args.checkpoint)
    unet = den.meta["unet"]
    noise = torch.randn(args.num, unet["in_channels"], unet["img_size"], unet["img_size"],
                        generator=torch.Generator().manual_seed(0))
    t0 = time.time()
    ref = diffkit.sample(den, noise, sampler=ref_spec[0], spacing=ref_spec[1], final=ref_spec[2],
                         steps=args.ref_steps, progress=False)
    ref2 = diffkit.sample(den, noise, sampler=check_spec[0], spacing=check_spec[1], final=check_spec[2],
                          steps=args.ref_steps, progress=False)
    report = {"checkpoint": args.checkpoint, "num": args.num, "reference": f"{args.ref}, {args.ref_steps} steps",
              "check": f"{args.check}, {args.ref_steps} steps", "data_scale": den.data_scale,
              "reference_uncertainty": rms(ref, ref2), "reference_mean": float(ref.mean()), "rows": []}
    print(f"reference: {report['reference']}; RMS to {report['check']} {report['reference_uncertainty']:.5f}; "
          f"mean pixel {report['reference_mean']:+.3f}; data scale {den.data_scale} ({time.time() - t0:.0f} s)",
          flush=True)
    steps = [int(s) for s in args.steps.split(",")]

    def graded(name, spacing, final):
        return (spacing or get_sampler(name).default_spacing) == "logsnr_graded"

    runs = [(spec, grade) for spec in specs for grade in (grades if graded(*spec) else [None])]
    for (name, spacing, final), grade in runs:
        info = get_sampler(name)
        label = spacing or info.default_spacing if grade is None else f"logsnr_graded {grade[0]:g}/{grade[1]:g}"
        label += f", {final or info.default_final}"
        row = {"sampler": name, "spacing": label, "rms": [], "mean": []}
        for n in steps:
            grid = None if grade is None else make_grid(den.schedule, n, "logsnr_graded", final or info.default_final,
                                                        grade_sigmas=grade)
            x = diffkit.sample(den, noise, sampler=name, steps=None if grid is not None else n, spacing=spacing,
                               final=final, grid=grid, progress=False)
            row["rms"].append(rms(x, ref))
            row["mean"].append(float(x.mean()))
        report["rows"].append(row)
        print(f"{name + '@' + row['spacing']:32s} RMS " + " / ".join(f"{v:.4f}" for v in row["rms"])
              + "   mean " + " / ".join(f"{v:+.3f}" for v in row["mean"]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ode_convergence.json").write_text(json.dumps(report, indent=1))
    md = [f"RMS to the reference ({report['reference']}; its RMS to {report['check']}: "
          f"{report['reference_uncertainty']:.5f}), {args.num} samples from the same noise", "",
          "| sampler @ grid | " + " | ".join(f"{n} steps" for n in steps) + " |", "|---|" + "---|" * len(steps)]
    for row in report["rows"]:
        md.append(f"| {row['sampler']} @ {row['spacing']} | " + " | ".join(f"{v:.4f}" for v in row["rms"]) + " |")
    (args.out / "ode_convergence.md").write_text("\n".join(md) + "\n")
    print(f"wrote {args.out / 'ode_convergence.md'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DiffkitError as err:  # bad input: one line, no traceback
        sys.exit(f"error: {err}")
