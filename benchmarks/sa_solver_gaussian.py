"""SA-Solver's few-step accuracy on Gaussian data against the exact marginal (docs/samplers.md, SA-Solver):
the largest error of the sample covariance (and mean) at t = 0 after S steps from t = T-1, for diffusers'
2-node weights (a = 1/2) and the exact ones, tau = 1 (everywhere, or on diffusers' default window t in [200, 800])
and 0, beside sde-dpm-solver++-2m and dpm-solver++-2m.

    PYTHONPATH=. .venv/bin/python benchmarks/sa_solver_gaussian.py [--samples 20000] [--spacing logsnr]
        [--final sigma_min] [--steps 10,20,40]

With --final zero the target is the data distribution itself (t = -1).
"""
from __future__ import annotations

import argparse

import torch

import diffkit
from diffkit import Denoiser, NoiseSchedule
from diffkit.analytic import GaussianMixture

F64 = torch.float64
ROWS = [("sa-solver", {"tau": 1.0}), ("sa-solver", {"tau": 1.0, "weights": "exact"}),
        ("sa-solver", {"tau": 1.0, "tau_window": (200, 800)}),
        ("sa-solver", {"tau": 0.0}), ("sa-solver", {"tau": 0.0, "weights": "exact"}),
        ("sde-dpm-solver++-2m", {}), ("dpm-solver++-2m", {})]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--spacing", default="logsnr")
    parser.add_argument("--final", choices=("sigma_min", "zero"), default="sigma_min")
    parser.add_argument("--steps", default="10,20,40")
    args = parser.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",")]
    schedule = NoiseSchedule.linear()
    gaussian = GaussianMixture.random(4, 1, seed=3)  # the order tests' Gaussian (tests/test_samplers_fast.py)
    den = Denoiser(gaussian.network(schedule), schedule)
    t_end = -1.0 if args.final == "zero" else 0.0
    a0, s0 = schedule.alpha(t_end), schedule.sigma(t_end)
    mean = a0 * gaussian.means[0]
    cov = a0 ** 2 * gaussian.covs[0] + s0 ** 2 * torch.eye(4, dtype=F64)
    print(f"4-d Gaussian, {args.samples} samples, {args.spacing} grid to t = {t_end:g}; largest |cov error| "
          f"(|mean error|)")
    print("| sampler | " + " | ".join(f"{n} steps" for n in steps) + " |")
    print("| --- |" + " ---: |" * len(steps))
    for name, options in ROWS:
        cells = []
        for n in steps:
            x_T = torch.randn(args.samples, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
            out = diffkit.sample(den, x_T, name, steps=n, spacing=args.spacing, final=args.final,
                                 generator=torch.Generator().manual_seed(2), progress=False, **options)
            cells.append(f"{(torch.cov(out.T) - cov).abs().max().item():.2g} "
                         f"({(out.mean(0) - mean).abs().max().item():.1g})")
        label = name + "".join(f" {k}={v}" for k, v in options.items())
        print(f"| `{label}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
