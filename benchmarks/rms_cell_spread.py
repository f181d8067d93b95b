"""How much an RMS cell of issue 4 moves with the draw: a bootstrap over the trajectories.

An RMS cell is (diffkit's best RMS) / (diffusers' best RMS) to the accurate ODE endpoint over the
benchmark's 30,000 pooled trajectories. On the 8-d mixture it is carried by a few flipped
trajectories (docs/samplers.md), so it is a ratio of two sums dominated by a handful of terms.
This resamples the trajectories with replacement (the same resample for every sampler), takes
each library's best over the samplers given, and prints the ratio's median and 2.5-97.5%
interval, plus how many trajectories carry half of each sampler's squared error.

    PYTHONPATH=. python benchmarks/rms_cell_spread.py --mixture 1 --nfe 20 \\
        --diffkit unipc-eps,unipc-eps-bh1,plms,unipc-3 --diffusers "PNDM-PLMS[leading];PNDM-PLMS[trailing]"

``--all`` takes each library's best over every deterministic sampler that can spend the NFE (a
subset picked after seeing the data understates how much the best moves). Limits: with 5-10
trajectories carrying half the squared error, a percentile bootstrap undercovers (its median sits
below the point ratio); read the interval as a lower bound on the cell's uncertainty.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import torch  # noqa: E402

import mixture_probe as probe  # noqa: E402
import samplers as bench  # noqa: E402
from diffkit import sample  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402


def main(argv=None):
    p = probe.Parser(description=__doc__.split("\n")[0])
    p.add_argument("--mixture", type=int, default=1, choices=range(len(bench.MIXTURES)))
    p.add_argument("--nfe", type=probe.positive_int, required=True)
    p.add_argument("--diffkit", help="comma-separated NAME[@SPACING][:FINAL]")
    p.add_argument("--diffusers", help="labels of samplers.diffusers_configs, separated by ;")
    p.add_argument("--all", action="store_true", help="every deterministic sampler of both libraries that can "
                   "spend the NFE (instead of --diffkit / --diffusers)")
    p.add_argument("--samples", type=probe.positive_int, default=10_000, help="per noise seed")
    p.add_argument("--boot", type=probe.positive_int, default=2000)
    p.add_argument("--cache", type=Path, default=None, help="file to keep the reference ODE solution in")
    args = p.parse_args(argv)
    cfg, schedule, mixture, eps_fn, den = probe.mixture_setup(args.mixture)
    configs = probe.deterministic_diffusers()
    try:
        if args.all and (args.diffkit or args.diffusers):
            raise DiffkitError("--all takes every deterministic sampler: drop --diffkit / --diffusers")
        if not args.all and not (args.diffkit and args.diffusers):
            raise DiffkitError("give --all, or both --diffkit and --diffusers")
        if args.all:
            mine, theirs = probe.all_deterministic_specs(den, args.nfe, configs)
            mine = [spec.rpartition(":")[0] for spec in mine]
        else:
            mine, theirs = args.diffkit.split(","), args.diffusers.split(";")
        for spec in mine:
            probe.check_diffkit_spec(den, f"{spec}:{args.nfe}")
        for label in theirs:
            probe.check_diffusers_label(label, args.nfe, configs)
        x_T = bench.starting_noise(args.samples, mixture.dim, bench.NOISE_SEEDS)
        ref = probe.reference(args.cache, args.mixture, args.samples, eps_fn, schedule, x_T)
    except DiffkitError as err:
        p.exit(2, f"error: {err}\n")
    err = {"diffkit": {}, "diffusers": {}}
    for spec in mine:
        name, nfe, spacing, final = bench.parse_profile(f"{spec}:{args.nfe}")
        x = sample(den, x_T.clone(), sampler=name, nfe=nfe, spacing=spacing, final=final, progress=False)
        err["diffkit"][spec] = (x.to(torch.float64) - ref).pow(2).mean(1).nan_to_num(float("inf"))
    for label in theirs:
        cls, kw = configs[label]
        x = bench.run_diffusers(cls, kw, bench.diffusers_steps_for_nfe(cls, kw, args.nfe), x_T.clone(), eps_fn)
        err["diffusers"][label] = (x.to(torch.float64) - ref).pow(2).mean(1).nan_to_num(float("inf"))
    n = x_T.shape[0]
    for lib, rows in err.items():
        for label, e in rows.items():
            srt = e.sort(descending=True).values
            half = int((srt.cumsum(0) < 0.5 * srt.sum()).sum()) + 1
            print(f"{lib:9s} {label:40s} RMS {float(e.mean().sqrt()):.3e}; {half} trajectories carry half its "
                  f"squared error")
    best = {lib: torch.stack(list(rows.values())) for lib, rows in err.items()}
    ratio0 = float(best["diffkit"].mean(1).min().sqrt() / best["diffusers"].mean(1).min().sqrt())
    gen = torch.Generator().manual_seed(0)
    ratios = []
    for _ in range(args.boot):
        idx = torch.randint(0, n, (n,), generator=gen)
        rms = {lib: best[lib][:, idx].mean(1).min().sqrt() for lib in ("diffkit", "diffusers")}
        ratios.append(float(rms["diffkit"] / rms["diffusers"]))
    r = torch.tensor(ratios)
    lo, med, hi = (float(r.quantile(q)) for q in (0.025, 0.5, 0.975))
    print(f"mixture {cfg}, NFE {args.nfe}: ratio {ratio0:.2f}; bootstrap ({args.boot} resamples of the {n} "
          f"trajectories) median {med:.2f}, 95% interval {lo:.2f} - {hi:.2f}, P(ratio <= 2/3) = "
          f"{float((r <= 2 / 3).double().mean()):.2f}")


if __name__ == "__main__":
    main()
