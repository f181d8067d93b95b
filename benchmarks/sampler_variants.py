"""diffkit samplers on other time grids, against the diffusers best of a sampler-benchmark run.

``benchmarks/samplers.py`` runs every sampler at its one registered default. This script asks
"what would another default give?": it rebuilds the same pooled starting noise and the same
accurate ODE solution as a finished run (read from its ``samplers.json``), runs each
``NAME[@SPACING[:FINAL]]`` given, and prints the ratio to that run's diffusers best per NFE
(|excess FD| at NFE <= 10, RMS to the ODE endpoint above, as in issue 4's cells).

    PYTHONPATH=. python benchmarks/sampler_variants.py --run benchmarks/out/samplers.json \\
        --samplers unipc,unipc@logsnr,unipc@logsnr:sigma_min [--mixtures 0,1,2] [--nfes 15,20]
        [--grade-sigmas 1/0.1,2/0.1]

``--grade-sigmas`` runs every variant whose grid is ``logsnr_graded`` (its default, or named) once
per (sigma_hi, sigma_lo) pair; a variant named with another grid runs on that grid once
(docs/samplers.md, "Which sigma_hi"). Each row also has the RMS
without the worst 0.1% of trajectories and the flips (``samplers.endpoint_errors``).

Writes ``sampler_variants.json`` beside ``--run`` (or ``--out``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import torch  # noqa: E402

import samplers as bench  # noqa: E402
from diffkit import Denoiser, NoiseSchedule, sample  # noqa: E402
from diffkit.analytic import GaussianMixture  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.samplers.registry import get_sampler, split_sampler_spec  # noqa: E402
from diffkit.timesteps import make_grid, parse_grade_sigmas  # noqa: E402

FD_NFES = (5, 6, 8, 10)  # the excess-FD cells of issue 4; RMS cells above


def parse_variant(spec: str) -> tuple:
    """``NAME[@SPACING[:FINAL]]`` -> (name, spacing or None, final or None), checked."""
    name, spacing, final = split_sampler_spec(spec)
    if get_sampler(name).stochastic:
        raise DiffkitError(f"{name!r} is stochastic; the variants are compared by RMS to the ODE solution")
    return name, spacing, final


def run_variants(result: dict, variants, log=print, nfes=None, grades=None) -> list:
    """Rows (sampler, nfe, excess_fd, rms, ratio, rms_trimmed, flips) for one mixture of a finished
    benchmark run; ``grades``: run each variant on ``logsnr_graded`` with each (sigma_hi, sigma_lo)."""
    cfg = result["mixture"]
    seeds = result.get("noise_seeds") or [result["noise_seed"]]
    schedule = NoiseSchedule.linear()
    mixture = GaussianMixture.random(cfg["dim"], cfg["components"], seed=cfg["seed"])
    eps_fn = bench.MixtureEps(mixture)
    den = Denoiser(bench.diffkit_network(eps_fn, schedule), schedule, data_scale=mixture.data_scale())
    x_T = bench.starting_noise(result["n"] // len(seeds), mixture.dim, seeds)
    ref = bench.reference_ode(eps_fn, schedule, x_T)
    fd_ref = bench.sample_fd(ref, mixture)
    log(f"mixture {cfg}: {x_T.shape[0]} samples, seeds {seeds}, FD of the ODE solution {fd_ref:.5f} "
        f"(the run's: {result['fd_reference']:.5f})")
    best = {e["nfe"]: e["diffusers"] for e in bench.summarize(result, bench.NFES) if "diffusers" in e}
    ref_components = mixture.class_log_posterior(ref, 1.0, 0.0).argmax(1)

    def graded(name, spacing):
        return (spacing or get_sampler(name).default_spacing) == "logsnr_graded"

    runs = [(f"{spec}[graded {g[0]:g}/{g[1]:g}]", v, g) if g else (spec, v, None)
            for spec, v in variants for g in (grades if grades and graded(*v[:2]) else [None])]
    rows = []
    for label, (name, spacing, final), grade in runs:
        info = get_sampler(name)
        for nfe in nfes or bench.NFES:
            try:
                final_ = final or info.default_final
                steps = info.steps_for_nfe(nfe, final_)
                grid = (None if grade is None
                        else make_grid(schedule, steps, "logsnr_graded", final_, grade_sigmas=grade))
                own = grid is None  # a graded grid built here replaces the spacing and final named
                x = sample(den, x_T.clone(), sampler=name, steps=steps if own else None,
                           spacing=spacing if own else None, final=final if own else None, grid=grid,
                           progress=False)
            except DiffkitError as err:  # an NFE this sampler/grid cannot spend
                log(f"  {label} NFE {nfe}: {err}")
                continue
            fd, errors = bench.sample_fd(x, mixture), bench.endpoint_errors(x, ref, mixture, ref_components)
            d = best.get(nfe)
            ratio = None if d is None else (abs(fd - fd_ref) / d["best_excess_fd"] if nfe in FD_NFES
                                            else errors["rms"] / d["best_rms"])
            rows.append({"mixture": cfg, "sampler": label, "nfe": nfe, "excess_fd": fd - fd_ref, **errors,
                         "ratio": ratio})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="samplers.json of a benchmarks/samplers.py run")
    parser.add_argument("--samplers", required=True, help="comma-separated NAME[@SPACING[:FINAL]]")
    parser.add_argument("--mixtures", default=None, help="mixture indices within the run (default: all)")
    parser.add_argument("--nfes", default=None, help="comma-separated NFEs (default: the benchmark's)")
    parser.add_argument("--grade-sigmas", default=None, help="HI/LO,...: each variant on logsnr_graded per pair")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        variants = [(spec, parse_variant(spec)) for spec in args.samplers.split(",") if spec]
        grades = parse_grade_sigmas(args.grade_sigmas) if args.grade_sigmas else None
        nfes = [int(n) for n in args.nfes.split(",")] if args.nfes else None
        if not args.run.is_file():
            raise DiffkitError(f"--run {str(args.run)!r} is not a file (a samplers.json of benchmarks/samplers.py)")
        results = json.loads(args.run.read_text())["results"]
        picks = range(len(results)) if args.mixtures is None else [int(i) for i in args.mixtures.split(",")]
        results = [results[i] for i in picks]
    except (DiffkitError, ValueError, IndexError, KeyError) as err:
        parser.exit(2, f"error: {err}\n")
    torch.set_num_threads(1)
    rows = []
    for result in results:
        rows += run_variants(result, variants, nfes=nfes, grades=grades)
        mine = [r for r in rows if r["mixture"] == result["mixture"]]
        columns = sorted({r["nfe"] for r in mine})
        print("ratio to diffusers' best (|excess FD| at NFE <= 10, RMS above); (flips)")
        print(f"{'sampler':44s}" + "".join(f"{n:>14d}" for n in columns))
        for label in dict.fromkeys(r["sampler"] for r in mine):
            cells = {r["nfe"]: r for r in mine if r["sampler"] == label}
            print(f"{label:44s}" + "".join(
                f"{cells[n]['ratio']:8.2f} ({cells[n]['flips'] if cells[n]['flips'] is not None else '-':>3})"
                if n in cells and cells[n]["ratio"] is not None else f"{'-':>14s}" for n in columns))
    out = args.out or args.run.with_name("sampler_variants.json")
    out.write_text(json.dumps({"run": str(args.run), "samplers": args.samplers, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
