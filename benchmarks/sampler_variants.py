"""diffkit samplers on other time grids, against the diffusers best of a sampler-benchmark run.

``benchmarks/samplers.py`` runs every sampler at its one registered default. This script asks
"what would another default give?": it rebuilds the same pooled starting noise and the same
accurate ODE solution as a finished run (read from its ``samplers.json``), runs each
``NAME[@SPACING[:FINAL]]`` given, and prints the ratio to that run's diffusers best per NFE
(|excess FD| at NFE <= 10, RMS to the ODE endpoint above, as in issue 4's cells).

    PYTHONPATH=. python benchmarks/sampler_variants.py --run benchmarks/out/samplers.json \\
        --samplers unipc,unipc@logsnr,unipc@logsnr:sigma_min [--mixtures 0,1,2]

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
from diffkit.errors import DiffkitError, check_choice  # noqa: E402
from diffkit.samplers.registry import get_sampler, split_sampler_spec  # noqa: E402
from diffkit.timesteps import FINALS  # noqa: E402

FD_NFES = (5, 6, 8, 10)  # the excess-FD cells of issue 4; RMS cells above


def parse_variant(spec: str) -> tuple:
    """``NAME[@SPACING[:FINAL]]`` -> (name, spacing or None, final or None), checked."""
    head, _, final = spec.partition(":")
    name, spacing = split_sampler_spec(head)
    info = get_sampler(name)
    if info.stochastic:
        raise DiffkitError(f"{name!r} is stochastic; the variants are compared by RMS to the ODE solution")
    if final:
        check_choice("final", final, FINALS)
    return name, spacing, final or None


def run_variants(result: dict, variants, log=print) -> list:
    """Rows (sampler, nfe, excess_fd, rms, ratio) for one mixture of a finished benchmark run."""
    cfg = result["mixture"]
    seeds = result.get("noise_seeds") or [result["noise_seed"]]
    schedule = NoiseSchedule.linear()
    mixture = GaussianMixture.random(cfg["dim"], cfg["components"], seed=cfg["seed"])
    eps_fn = bench.MixtureEps(mixture)
    den = Denoiser(bench.diffkit_network(eps_fn, schedule), schedule)
    x_T = bench.starting_noise(result["n"] // len(seeds), mixture.dim, seeds)
    ref = bench.reference_ode(eps_fn, schedule, x_T)
    fd_ref = bench.sample_fd(ref, mixture)
    log(f"mixture {cfg}: {x_T.shape[0]} samples, seeds {seeds}, FD of the ODE solution {fd_ref:.5f} "
        f"(the run's: {result['fd_reference']:.5f})")
    best = {e["nfe"]: e["diffusers"] for e in bench.summarize(result, bench.NFES) if "diffusers" in e}
    rows = []
    for spec, (name, spacing, final) in variants:
        info = get_sampler(name)
        for nfe in bench.NFES:
            try:
                steps = info.steps_for_nfe(nfe, final or info.default_final)
                x = sample(den, x_T.clone(), sampler=name, steps=steps, spacing=spacing, final=final, progress=False)
            except DiffkitError as err:  # an NFE this sampler/grid cannot spend
                log(f"  {spec} NFE {nfe}: {err}")
                continue
            fd, err = bench.sample_fd(x, mixture), bench.rms(x, ref)
            d = best.get(nfe)
            ratio = None if d is None else (abs(fd - fd_ref) / d["best_excess_fd"] if nfe in FD_NFES
                                            else err / d["best_rms"])
            rows.append({"mixture": cfg, "sampler": spec, "nfe": nfe, "excess_fd": fd - fd_ref, "rms": err,
                         "ratio": ratio})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="samplers.json of a benchmarks/samplers.py run")
    parser.add_argument("--samplers", required=True, help="comma-separated NAME[@SPACING[:FINAL]]")
    parser.add_argument("--mixtures", default=None, help="mixture indices within the run (default: all)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        variants = [(spec, parse_variant(spec)) for spec in args.samplers.split(",") if spec]
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
        rows += run_variants(result, variants)
        mine = [r for r in rows if r["mixture"] == result["mixture"]]
        nfes = sorted({r["nfe"] for r in mine})
        print("ratio to diffusers' best (|excess FD| at NFE <= 10, RMS above)")
        print(f"{'sampler':34s}" + "".join(f"{n:>9d}" for n in nfes))
        for spec, _ in variants:
            cells = {r["nfe"]: r["ratio"] for r in mine if r["sampler"] == spec}
            print(f"{spec:34s}" + "".join(f"{cells[n]:9.2f}" if cells.get(n) is not None else f"{'-':>9s}"
                                         for n in nfes))
    out = args.out or args.run.with_name("sampler_variants.json")
    out.write_text(json.dumps({"run": str(args.run), "samplers": args.samplers, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
