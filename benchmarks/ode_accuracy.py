"""The ``ode`` sampler's accuracy against NFE and its cost (docs/samplers.md, "Adaptive
probability-flow ODE"): max / RMS error against the exact ODE map of the 4-d Gaussian of
tests/test_samplers_fast.py (64 samples, t = 999 -> 0, final "sigma_min", float64) per tolerance,
the fast samplers' rows beside it, and the wall time of the default solve of 1000 and 4000 2-d
benchmark-mixture samples (final "zero"); with --adaptive, the same for ``dpm-adaptive`` (DPM-Solver-23,
docs/samplers.md "Adaptive DPM-Solver"): its rows per tolerance, and on 1000 2-d mixture samples its NFE
(the batch's and, for the first 40 solved alone, the per-sample median and range) and RMS error
against ``ode`` at rtol = atol = 1e-9.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/ode_accuracy.py [--sizes 1000 4000] [--adaptive]
"""
from __future__ import annotations

import argparse
import time

import torch

import diffkit
from diffkit import Denoiser, NoiseSchedule
from diffkit.analytic import GaussianMixture, gaussian_ode_solution

F64 = torch.float64


def accuracy_rows(adaptive: bool = False):
    schedule = NoiseSchedule.linear()
    gauss = GaussianMixture.random(4, 1, seed=3)
    den = Denoiser(gauss.network(schedule), schedule)
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    end, start = torch.tensor(0.0, dtype=F64), torch.tensor(999.0, dtype=F64)
    exact = gaussian_ode_solution(gauss.means[0], gauss.covs[0], x, schedule.alpha(start), schedule.sigma(start),
                                  schedule.alpha(end), schedule.sigma(end))
    runs = [(f"ode, rtol = atol = {tol:g}", "ode", {"rtol": tol, "atol": tol})
            for tol in (1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)]
    if adaptive:
        runs = [(f"dpm-adaptive, rtol = {tol:g}, atol = {tol * 0.156:.2g}", "dpm-adaptive",
                 {"rtol": tol, "atol": tol * 0.156}) for tol in (0.05, 5e-3, 5e-4, 5e-5)]
    runs += [(f"{name}, {n} steps", name, {"steps": n})
             for name, n in (("dpm-solver++-3m", 10), ("dpm-solver++-3m", 20), ("unipc-3", 10))]
    print("| run | NFE | max error | RMS error |\n|---|---|---|---|")
    for label, name, kwargs in runs:
        den.reset_nfe()
        out = diffkit.sample(den, x, name, final="sigma_min", progress=False, **kwargs)
        err = out - exact
        print(f"| {label} | {den.nfe} | {err.abs().max().item():.1e} | {err.pow(2).mean().sqrt().item():.1e} |")


def timing(sizes):
    schedule = NoiseSchedule.linear()
    mixture = GaussianMixture.random(2, 8, seed=0)  # benchmarks/samplers.py's 2-d mixture
    den = Denoiser(mixture.network(schedule), schedule)
    for n in sizes:
        x = torch.randn(n, 2, generator=torch.Generator().manual_seed(1))
        den.reset_nfe()
        start = time.perf_counter()
        diffkit.sample(den, x, "ode", progress=False)
        print(f"{n} 2-d samples, default tolerance: {time.perf_counter() - start:.2f} s, {den.nfe} calls")


def adaptive_on_the_mixture(n: int = 1000):
    schedule = NoiseSchedule.linear()
    mixture = GaussianMixture.random(2, 8, seed=0)  # benchmarks/samplers.py's 2-d mixture
    den = Denoiser(mixture.network(schedule), schedule)
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    ref = diffkit.sample(den, x, "ode", rtol=1e-9, atol=1e-9, progress=False)
    for label, kwargs in (("default (rtol 0.05, atol 0.0078)", {}),
                          ("rtol 5e-3, atol 7.8e-4", {"rtol": 5e-3, "atol": 7.8e-4}),
                          ("order 2, default tolerance", {"order": 2})):
        den.reset_nfe()
        out = diffkit.sample(den, x, "dpm-adaptive", progress=False, **kwargs)
        batch_nfe = den.nfe
        alone = []
        for i in range(40):
            den.reset_nfe()
            diffkit.sample(den, x[i:i + 1], "dpm-adaptive", progress=False, **kwargs)
            alone.append(den.nfe)
        alone.sort()
        print(f"dpm-adaptive {label}: batch NFE {batch_nfe}, per sample median {alone[20]} (range {alone[0]}-"
              f"{alone[-1]}), RMS to the ODE {(out - ref).pow(2).mean().sqrt().item():.2e}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 4000])
    parser.add_argument("--adaptive", action="store_true", help="dpm-adaptive's rows and mixture NFE instead")
    args = parser.parse_args()
    torch.set_num_threads(1)
    accuracy_rows(args.adaptive)
    if args.adaptive:
        adaptive_on_the_mixture()
    else:
        timing(args.sizes)
