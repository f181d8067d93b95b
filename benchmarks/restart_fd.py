"""Restart sampling against heun and euler-ancestral on one Gaussian mixture of benchmarks/samplers.py: FD
of each sampler's samples to the mixture's closed-form mean and covariance, from the same starting noise
x_T (benchmarks/samplers.py's first noise seed) and, for the stochastic samplers, the same per-sample step
generators (seed 10000 + i, as benchmarks/samplers.py), at a few NFEs. The exact eps* (diffkit.analytic)
makes the solver the only error; the FD of as many true samples is the floor that sample size sets.

Run (about a minute per NFE on 2 CPU cores at 10k samples):
    PYTHONPATH=. python benchmarks/restart_fd.py                      # mixture 0, NFE 21, 41, 81
    PYTHONPATH=. python benchmarks/restart_fd.py --mixture 1 --nfes 41 --restarts "0.1,2,2,3;0.1,2,1,9"
``--restarts``: extra restart settings to compare, intervals t_min,t_max,K,n joined by '+', settings by ';'.
heun and restart spend odd NFEs on their default grid (to clean data), so the NFEs are odd.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from samplers import MIXTURES, NOISE_SEEDS, MixtureEps, diffkit_network, sample_fd, starting_noise  # noqa: E402

from diffkit import Denoiser, NoiseSchedule, sample  # noqa: E402
from diffkit.analytic import GaussianMixture  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.samplers import REGISTRY  # noqa: E402

torch.set_num_threads(1)


def parse_restarts(text: str) -> list:
    """'0.1,2,2,3+1,10,1,2;0.1,2,1,9' -> [((0.1, 2.0, 2, 3), (1.0, 10.0, 1, 2)), ((0.1, 2.0, 1, 9),)]."""
    settings = []
    for setting in filter(None, (part.strip() for part in text.split(";"))):
        intervals = []
        for interval in setting.split("+"):
            try:
                t_min, t_max, times, n = interval.split(",")
                intervals.append((float(t_min), float(t_max), int(times), int(n)))
            except ValueError:
                raise DiffkitError(f"--restarts interval {interval!r}: give t_min,t_max,K,n, e.g. 0.1,2,2,3") from None
        settings.append(tuple(intervals))
    return settings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixture", type=int, default=0, choices=range(len(MIXTURES)))
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--nfes", default="21,41,81")
    parser.add_argument("--restarts", default="", help="extra restart settings (see the module doc)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    nfes = [int(v) for v in args.nfes.split(",")]
    runs = [("heun", {}), ("euler-ancestral", {}), ("restart", {})]
    runs += [("restart", {"restarts": r}) for r in parse_restarts(args.restarts)]
    cfg = MIXTURES[args.mixture]
    schedule = NoiseSchedule.linear()
    mixture = GaussianMixture.random(cfg["dim"], cfg["components"], seed=cfg["seed"])
    den = Denoiser(diffkit_network(MixtureEps(mixture), schedule), schedule, data_scale=mixture.data_scale())
    x_T = starting_noise(args.samples, mixture.dim, NOISE_SEEDS[:1])
    floor = sample_fd(mixture.sample(args.samples, torch.Generator().manual_seed(5))[0], mixture)
    print(f"mixture {cfg}, {args.samples} samples; FD of {args.samples} true samples: {floor:.5f}")
    rows = []
    for nfe in nfes:
        for name, options in runs:
            info = REGISTRY[name].with_options(options)
            gens = [torch.Generator().manual_seed(10_000 + i) for i in range(len(x_T))] if info.stochastic else None
            den.reset_nfe()
            try:  # an NFE the sampler cannot spend, or a grid too short for the restart interval
                steps = info.steps_for_nfe(nfe)
                x = sample(den, x_T.clone(), sampler=name, steps=steps, generator=gens, progress=False, **options)
            except DiffkitError as err:
                print(f"  NFE {nfe:3d}  {name} {options}: {err}")
                continue
            assert den.nfe == nfe, (name, den.nfe, nfe)
            fd = sample_fd(x, mixture)
            label = name + (f" {options['restarts']}" if options else "")
            rows.append({"sampler": label, "nfe": nfe, "steps": steps, "fd": fd})
            print(f"  NFE {nfe:3d}  {label:40s} steps {steps:3d}  FD {fd:.5f}")
    if args.json:
        args.json.write_text(json.dumps({"mixture": cfg, "samples": args.samples, "true_fd": floor, "rows": rows},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
