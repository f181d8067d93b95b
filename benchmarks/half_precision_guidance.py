"""The deviation of every guidance and editing path from its float32 result when the model's
output is rounded to float16 or bfloat16, or made under bfloat16 autocast (docs/guidance.md and
docs/editing.md, "Half precision"): the paths, data and tolerances of
tests/test_guidance_half_precision.py (exact model of Gaussian data, 20 steps, 64 samples), as
relative RMS in units of the format's unit roundoff u (2^-11 float16, 2^-8 bfloat16).

    python benchmarks/half_precision_guidance.py

Prints a markdown table (about 3 s on one core).
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main() -> None:
    from test_guidance_half_precision import PATHS, PRECISIONS, deviation
    print("| path | " + " | ".join(f"{p} (u)" for p in PRECISIONS) + " | tolerance (u) |")
    print("|---|" + "---:|" * (len(PRECISIONS) + 1))
    worst = 0.0
    for name, (run, amplification) in PATHS.items():
        values = [deviation(run, precision)[2] for precision in PRECISIONS]
        worst = max(worst, max(v / amplification for v in values))
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + f" | {amplification:g} |")
    print(f"\nlargest deviation / tolerance: {worst:.2f}")


if __name__ == "__main__":
    main()
