"""The deviation of every guidance and editing path from its float32 result when the model's
output is rounded to float16 or bfloat16, or made under bfloat16 autocast (docs/guidance.md and
docs/editing.md, "Half precision"): the paths, data and tolerances of
tests/test_guidance_half_precision.py (exact model of Gaussian data, 20 steps, 64 samples), as
relative RMS in units of the format's unit roundoff u (2^-11 float16, 2^-8 bfloat16); each float32
run's deviation from its float64 result in float32's u (2^-24); and the figures the docs quote
beside them:

* the tiny random U-Nets of the command-line tests (tests/test_guidance.py ``tiny_unet``, 8x8, one
  channel; conditional with 3 classes and unconditional) under bfloat16 autocast: each call's
  relative RMS error against float32 at t = 20 ... 999 (16 random x_t per t), the same for the
  conditional one's classifier-free guided eps (w = 2, one batched call), and, for the
  unconditional one, reconstruction guidance's (w = 2, right half repainted) correction
  x0-tilde - x0-hat and the forward's x0-hat, each against float32, and the correction's size
  relative to x0-hat;
* a separated two-mode mixture (tests/test_guidance.py ``mixture``) sampled unguided (ddim, 20
  steps, 64 samples) with its output rounded to bfloat16: how many of the 128 coordinates move by
  more than 2 u (of the samples' RMS) and the largest move.

    python benchmarks/half_precision_guidance.py

Prints markdown tables (about 5 s of CPU on one core).
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

TIMES = (20, 100, 250, 500, 750, 999)


def paths_table() -> None:
    from test_guidance_half_precision import PATHS, PRECISIONS, deviation, float32_deviation, tolerance
    print("| path | " + " | ".join(f"{p} (u)" for p in PRECISIONS) + " | tolerance (u) | float32 vs float64 (u_fp32) |")
    print("|---|" + "---:|" * (len(PRECISIONS) + 2))
    worst, worst64 = 0.0, 0.0
    for name, (run, amplification) in PATHS.items():
        values = [deviation(run, precision)[2] for precision in PRECISIONS]
        worst = max(worst, max(v / tolerance(amplification, p) for v, p in zip(values, PRECISIONS)))
        exact = float32_deviation(name) / 2.0 ** -24
        worst64 = max(worst64, exact)
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values)
              + f" | {amplification:g} (autocast {tolerance(amplification, 'autocast'):.3g}) | {exact:.1f} |")
    print(f"\nlargest deviation / tolerance: {worst:.2f}; largest float32 vs float64: {worst64:.1f} u_fp32\n")


def relative_u(out, reference) -> float:
    return ((out - reference).pow(2).mean().sqrt() / reference.pow(2).mean().sqrt()).item() / 2.0 ** -8


def unet_table() -> None:
    import torch

    from diffkit import Denoiser
    from diffkit.guidance import ClassifierFreeGuidance, ReconstructionGuidance
    from test_guidance import SCHEDULE, tiny_unet
    g = torch.Generator().manual_seed(0)
    x, known = torch.randn(16, 1, 8, 8, generator=g), torch.rand(16, 1, 8, 8, generator=g) * 2 - 1
    y = torch.arange(16) % 3
    mask = torch.zeros(16, 1, 8, 8)
    mask[..., 4:] = 1  # repaint the right half
    cond, uncond = tiny_unet(num_classes=3), tiny_unet(num_classes=None)
    print("| t | conditional call (u) | classifier-free w=2 eps (u) | unconditional call (u) "
          "| reconstruction correction (u) | forward x0-hat (u) | correction / x0-hat |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for t in TIMES:
        tt = torch.full((16,), float(t))
        row = []
        with torch.no_grad():
            for net, cond_args in ((cond, {"y": y}), (uncond, {})):
                plain = net(x, tt, **cond_args)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    mixed = net(x, tt, **cond_args)
                row.append(relative_u(mixed.float(), plain))
            guided = ClassifierFreeGuidance(Denoiser(cond, SCHEDULE), 2.0)
            plain = guided(x, t, y=y).eps
            with torch.autocast("cpu", dtype=torch.bfloat16):
                mixed = guided(x, t, y=y).eps
            row.insert(1, relative_u(mixed.float(), plain))
        den = Denoiser(uncond, SCHEDULE)
        guided = ReconstructionGuidance(den, known, mask, 2.0)
        x0, corrected = {}, {}
        for precision in ("no", "bf16"):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                x0[precision] = den(x, t).x0.float()
                corrected[precision] = guided(x, t).x0.float()
        correction = {p: corrected[p] - x0[p] for p in x0}
        row += [relative_u(correction["bf16"], correction["no"]), relative_u(x0["bf16"], x0["no"]),
                (correction["no"].pow(2).mean().sqrt() / x0["no"].pow(2).mean().sqrt()).item()]
        print(f"| {t} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    print()


def mixture_line() -> None:
    import diffkit
    from conftest import rounded_output
    from diffkit import Denoiser
    import torch
    from test_guidance import SCHEDULE, mixture
    from test_guidance_half_precision import NOISE, STEPS
    net = mixture().network(SCHEDULE)
    reference, out = (diffkit.sample(Denoiser(n, SCHEDULE), NOISE, "ddim", STEPS, progress=False)
                      for n in (net, rounded_output(net, torch.bfloat16)))
    moved = (out - reference).abs() / reference.pow(2).mean().sqrt() / 2.0 ** -8
    print(f"two-mode mixture, unguided ddim, output rounded to bfloat16: {int((moved > 2).sum())} of {moved.numel()} "
          f"coordinates moved by more than 2 u, the largest by {moved.max().item():.1f} u; relative RMS "
          f"{relative_u(out, reference):.2f} u")


def main() -> None:
    paths_table()
    unet_table()
    mixture_line()


if __name__ == "__main__":
    main()
