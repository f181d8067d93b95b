"""Does inpainting keep its kept region a noised copy of the known pixels? (``diffkit.inpaint``;
docs/editing.md, "The kept region's noise").

With the mask all zeros every pixel is kept; after each step the state x_s should be distributed
as q(x_s | x_known) = N(alpha_s x_known, sigma_s^2 I), so the normalised variance
v_s = Var(x_s - alpha_s x_known) / sigma_s^2 (over samples and dims) should be 1. Exact Gaussian
model (:mod:`diffkit.analytic`, 2-D data, with its learned variance for ``learned_range``), linear
schedule of 1000 steps, 50 sampler steps (RePaint: 50 steps, jump_length 10, jump_n_sample 2).
Prints v at the states after steps 10, 25, 40 and the last noisy one (its time in brackets), and
the largest |v - 1| over all steps; the standard error of v is about sqrt(2/(2n)).

    python benchmarks/inpainting_kept_variance.py [--n 20000]

A run that ``inpaint`` refuses (a choice that drifts) prints its one-line error instead.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RUNS = [("ddpm", {"variance_type": "fixed_small"}), ("ddpm", {"variance_type": "fixed_large"}),
        ("ddpm", {"variance_type": "learned_range"}), ("ddpm", {}), ("ddim", {"eta": 1.0}),
        ("ddim", {"eta": "sigma_hat"}), ("euler-ancestral", {}), ("euler-ancestral", {"s_noise": 1.05}),
        ("dpm2-ancestral", {}), ("dpm-solver++-2s-ancestral", {}), ("sde-dpm-solver++-2m", {}),
        ("euler", {"s_churn": 40.0}), ("pc", {}), ("pc", {"predictor": "ancestral"}),
        ("repaint", {"variance_type": "fixed_small"}), ("repaint", {"variance_type": "fixed_large"}),
        ("repaint", {})]


def measure(den, sampler, options, n, steps=50):
    """[(t, v_t)] over the states after each step (clean data left out), or the error's text."""
    import torch

    import diffkit
    from diffkit.errors import DiffkitError
    known = torch.tensor([0.6, -0.3], dtype=torch.float64).expand(n, 2).clone()
    mask = torch.zeros(2)
    states = []

    def record(d):
        if d["s"] >= 0:
            states.append((d["s"], d["x"].clone()))
    extra = {"jump_length": 10, "jump_n_sample": 2} if sampler == "repaint" else {}
    try:
        diffkit.inpaint(den, known, mask, "ddpm" if sampler == "repaint" else sampler, steps, callback=record,
                        generator=torch.Generator().manual_seed(0), progress=False, value_range=None,
                        **extra, **options)
    except DiffkitError as error:
        return str(error)
    out = []
    for s, x in states:
        s64 = torch.tensor(s, dtype=torch.float64)
        alpha, sigma = den.schedule.alpha(s64), den.schedule.sigma(s64)
        out.append((s, float(((x - alpha * known).var() / sigma ** 2))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    args = parser.parse_args()
    import torch

    from diffkit import Denoiser, NoiseSchedule
    from diffkit.analytic import GaussianMixture

    schedule = NoiseSchedule.linear(1000)
    mixture = GaussianMixture([1.0], torch.tensor([[0.2, -0.1]]), 0.25 * torch.tensor([[[1.0, 0.9], [0.9, 1.0]]]))
    plain = Denoiser(mixture.network(schedule), schedule)
    learned = Denoiser(mixture.network(schedule, learned_variance=True), schedule, learned_variance=True)
    print(f"n = {args.n} samples x 2 dims (standard error of v ~{(1 / args.n) ** 0.5:.3f})\n")
    print("| sampler | options | v after step 10 | step 25 | step 40 | last noisy state | max abs(v - 1) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for sampler, options in RUNS:
        for label, den in (("", plain), (" (learned-variance model)", learned)):
            if (label == "") == (options.get("variance_type") == "learned_range" or
                                 (sampler in ("ddpm", "repaint") and not options)):
                continue
            shown = ", ".join(f"{k}={v}" for k, v in options.items()) or "default"
            result = measure(den, sampler, options, args.n)
            if isinstance(result, str):
                print(f"| {sampler} | {shown}{label} | refused: {result.split(';')[0]} | | | | |")
                continue
            cells = [f"{v:.3f} [t={t:g}]" for t, v in (result[9], result[24], result[39], result[-1])] \
                if len(result) >= 40 else [f"{v:.3f} [t={t:g}]" for t, v in result[:: max(1, len(result) // 4)]][:4]
            worst = max(abs(v - 1) for _, v in result)
            print(f"| {sampler} | {shown}{label} | {' | '.join(cells)} | {worst:.3f} |")


if __name__ == "__main__":
    main()
